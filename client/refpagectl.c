/* refpagectl: talk to a running refpaged.
 *   refpagectl [--socket PATH] stats [--json]
 *   refpagectl [--socket PATH] upgrade
 * Neither needs the handshake, so this never creates a userfaultfd. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: refpagectl [--socket PATH] stats [--json]\n"
		   "       refpagectl [--socket PATH] upgrade\n"
		   "  stats    print the daemon's counters\n"
		   "  upgrade  make the daemon re-execute its binary (a new version installed at its\n"
		   "           path) without its clients noticing; prints the new daemon's pid\n"
		   "  PATH defaults to $REFPAGED_SOCKET, else %s\n",
		PROTO_DEFAULT_SOCKET);
}

static int dial(const char *path)
{
	int s = proto_dial(path);

	if (s < 0)
		fprintf(stderr, "refpagectl: cannot connect to %s: %s\n", path, strerror(-s));
	return s < 0 ? -1 : s;
}

static int fetch_stats(int s, struct proto_stats_reply *out)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h;
	int fd, nfds, trunc;
	int r = proto_send(s, PROTO_STATS, 1, NULL, 0, -1, 0);

	if (r < 0) {
		fprintf(stderr, "refpagectl: send: %s\n", strerror(-r));
		return -1;
	}
	long n = proto_recv(s, buf, &fd, &nfds, &trunc, 0);
	if (fd >= 0)
		close(fd);
	if (n <= 0 || trunc || proto_check(buf, (size_t)n, nfds, 0, &h) != PROTO_OK ||
	    h->type != PROTO_STATS_REPLY) {
		fprintf(stderr, "refpagectl: bad or no reply from the daemon\n");
		return -1;
	}
	memcpy(out, h + 1, sizeof(*out));
	if (out->status < 0) {
		fprintf(stderr, "refpagectl: daemon refused: %s\n", strerror(-out->status));
		return -1;
	}
	return 0;
}

/* Exit status: 0 upgraded; 3 the new binary cannot read the state (the
 * old daemon goes on, as for every failure); 1 otherwise. */
static int upgrade(int s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	struct proto_upgrade u = { 0 };
	const struct proto_hdr *h;
	int fd, nfds, trunc;
	int r = proto_send(s, PROTO_UPGRADE, 1, &u, sizeof(u), -1, 0);

	if (r < 0) {
		fprintf(stderr, "refpagectl: send: %s\n", strerror(-r));
		return 1;
	}
	long n = proto_recv(s, buf, &fd, &nfds, &trunc, 0);
	if (fd >= 0)
		close(fd);
	if (n <= 0 || trunc || proto_check(buf, (size_t)n, nfds, 0, &h) != PROTO_OK ||
	    h->type != PROTO_REPLY) {
		fprintf(stderr, "refpagectl: bad or no reply from the daemon\n");
		return 1;
	}
	const struct proto_reply *rep = (const void *)(h + 1);
	if (rep->status == 0) {
		printf("upgraded: refpaged pid %u serves now\n", rep->id);
		return 0;
	}
	fprintf(stderr, "refpagectl: upgrade failed: %s%s\n", strerror(-rep->status),
		rep->status == -EPROTONOSUPPORT ? " (the new binary cannot read the state snapshot)"
		: rep->status == -EPERM ? " (root or the daemon's user only)" : "");
	if (rep->status != -EPERM && rep->status != -EOPNOTSUPP)
		fprintf(stderr, "refpagectl: the running daemon goes on serving; see its log\n");
	return rep->status == -EPROTONOSUPPORT ? 3 : 1;
}

static void print_stats(const struct proto_stats_reply *r, int json)
{
	unsigned n = r->count < PROTO_STATS_MAX ? r->count : PROTO_STATS_MAX;

	if (json)
		printf("{");
	for (unsigned i = 0; i < n; i++) {
		if (json)
			printf("%s\"%s\": %llu", i ? ", " : "", proto_stat_name(i),
			       (unsigned long long)r->counters[i]);
		else
			printf("%-26s %llu\n", proto_stat_name(i), (unsigned long long)r->counters[i]);
	}
	if (json)
		printf("}\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = getenv("REFPAGED_SOCKET");
	int json = 0, o;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': path = optarg; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1 ||
	    (strcmp(argv[optind], "stats") && strcmp(argv[optind], "upgrade"))) {
		usage(stderr);
		return 2;
	}
	if (!path || !*path)
		path = PROTO_DEFAULT_SOCKET;
	struct proto_stats_reply r;
	int s = dial(path);
	if (s >= 0 && !strcmp(argv[optind], "upgrade")) {
		int rc = upgrade(s);
		close(s);
		return rc;
	}
	if (s < 0 || fetch_stats(s, &r) < 0)
		return 1;
	close(s);
	print_stats(&r, json);
	return 0;
}
