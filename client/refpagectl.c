/* refpagectl: talk to a running refpaged.
 *   refpagectl [--socket PATH] stats [--json]
 *   refpagectl [--socket PATH] usage [--json]
 *   refpagectl [--socket PATH] upgrade
 * None needs the handshake, so this never creates a userfaultfd. */
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
	fprintf(f,
		"usage: refpagectl [--socket PATH] stats [--json]\n"
		"       refpagectl [--socket PATH] usage [--json]\n"
		"       refpagectl [--socket PATH] upgrade\n"
		"  stats    print the daemon's counters (root and the daemon's user: the whole\n"
		"           daemon's; anyone else: their own uid's); with --json, and each uid's\n"
		"           use of its budgets\n"
		"  usage    each uid's use of its budgets (root: every uid; anyone else: their own)\n"
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

/* One request and its reply of type want (or a plain REPLY refusing it):
 * 0 with the payload in out, or -1 (said). */
static int ask(int s, uint16_t type, const void *p, uint32_t len, uint16_t want, void *out,
	       size_t outlen)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h;
	int fd, nfds, trunc;
	int r = proto_send(s, type, 1, p, len, -1, 0);

	if (r < 0) {
		fprintf(stderr, "refpagectl: send: %s\n", strerror(-r));
		return -1;
	}
	long n = proto_recv(s, buf, &fd, &nfds, &trunc, 0);
	if (fd >= 0)
		close(fd);
	if (n <= 0 || trunc || proto_check(buf, (size_t)n, nfds, 0, &h) != PROTO_OK ||
	    (h->type != want && h->type != PROTO_REPLY)) {
		fprintf(stderr, "refpagectl: bad or no reply from the daemon\n");
		return -1;
	}
	const struct proto_reply *rep = (const void *)(h + 1);
	if (h->type != want) {
		fprintf(stderr, "refpagectl: daemon refused: %s\n", strerror(-rep->status));
		return -1;
	}
	memcpy(out, h + 1, outlen);
	return 0;
}

/* Exit status: 0 upgraded; 3 the new binary cannot read the state (the
 * old daemon goes on, as for every failure); 1 otherwise. */
static int upgrade(int s)
{
	struct proto_upgrade u = { 0 };
	struct proto_reply rep;

	if (ask(s, PROTO_UPGRADE, &u, sizeof(u), PROTO_REPLY, &rep, sizeof(rep)) < 0)
		return 1;
	if (rep.status == 0) {
		printf("upgraded: refpaged pid %u serves now\n", rep.id);
		return 0;
	}
	fprintf(stderr, "refpagectl: upgrade failed: %s%s\n", strerror(-rep.status),
		rep.status == -EPROTONOSUPPORT ? " (the new binary cannot read the state journal)"
		: rep.status == -EPERM         ? " (root or the daemon's user only)"
					       : "");
	if (rep.status != -EPERM && rep.status != -EOPNOTSUPP)
		fprintf(stderr, "refpagectl: the running daemon goes on serving; see its log\n");
	return rep.status == -EPROTONOSUPPORT ? 3 : 1;
}

static void print_stats(const struct proto_stats_reply *r, int json)
{
	unsigned n = r->count < PROTO_STATS_MAX ? r->count : PROTO_STATS_MAX;

	for (unsigned i = 0; i < n; i++) {
		if (json)
			printf("%s\"%s\": %llu", i ? ", " : "", proto_stat_name(i),
			       (unsigned long long)r->counters[i]);
		else
			printf("%-26s %llu\n", proto_stat_name(i),
			       (unsigned long long)r->counters[i]);
	}
}

static void print_usage(const struct proto_usage_reply *u, int json, int first)
{
	unsigned n = u->count < PROTO_RES_MAX ? u->count : PROTO_RES_MAX;

	if (json) {
		printf("%s{\"uid\": %u", first ? "" : ", ", u->uid);
		for (unsigned i = 0; i < n; i++)
			printf(", \"%s\": {\"used\": %llu, \"budget\": %llu, \"refused\": %llu}",
			       proto_res_name(i), (unsigned long long)u->used[i],
			       (unsigned long long)u->limit[i], (unsigned long long)u->refused[i]);
		printf(", \"log_suppressed\": %llu, \"loop_us\": %llu}",
		       (unsigned long long)u->log_suppressed, (unsigned long long)u->loop_us);
		return;
	}
	printf("uid %u\n", u->uid);
	for (unsigned i = 0; i < n; i++)
		printf("  %-18s %14llu of %-14llu refused %llu\n", proto_res_name(i),
		       (unsigned long long)u->used[i], (unsigned long long)u->limit[i],
		       (unsigned long long)u->refused[i]);
	printf("  %-18s %14llu\n  %-18s %14llu\n", "log_suppressed",
	       (unsigned long long)u->log_suppressed, "loop_us", (unsigned long long)u->loop_us);
}

/* Every uid we may see: all of them for root (walking up from uid 0), our
 * own for anyone else. 0 or -1. */
static int walk_usage(int s, int json)
{
	struct proto_usage q = { .uid = 0 };
	struct proto_usage_reply u;
	int first = 1;

	if (ask(s, PROTO_USAGE, &q, sizeof(q), PROTO_USAGE_REPLY, &u, sizeof(u)) < 0)
		return -1;
	if (u.status == -EPERM) {
		q.flags = PROTO_USAGE_SELF;
		if (ask(s, PROTO_USAGE, &q, sizeof(q), PROTO_USAGE_REPLY, &u, sizeof(u)) < 0)
			return -1;
	}
	for (;;) {
		if (u.status == 0) {
			print_usage(&u, json, first);
			first = 0;
		} else if (u.status != -ENOENT) {
			fprintf(stderr, "refpagectl: usage: %s\n", strerror(-u.status));
			return -1;
		}
		if (q.flags & PROTO_USAGE_SELF)
			return 0;
		q.uid = u.status == 0 ? u.uid : q.uid;
		q.flags = PROTO_USAGE_NEXT;
		if (ask(s, PROTO_USAGE, &q, sizeof(q), PROTO_USAGE_REPLY, &u, sizeof(u)) < 0)
			return -1;
		if (u.status == -ENOENT)
			return 0;
	}
}

static int run(int s, const char *cmd, int json)
{
	struct proto_stats_reply r;
	int rc = 0;

	if (!strcmp(cmd, "upgrade"))
		return upgrade(s);
	if (!strcmp(cmd, "usage")) {
		if (json)
			printf("[");
		rc = walk_usage(s, json) < 0;
		if (json)
			printf("]\n");
		return rc;
	}
	if (ask(s, PROTO_STATS, NULL, 0, PROTO_STATS_REPLY, &r, sizeof(r)) < 0 || r.status < 0)
		return 1;
	if (json)
		printf("{");
	print_stats(&r, json);
	if (json) {
		printf(", \"uids\": [");
		rc = walk_usage(s, 1) < 0;
		printf("]}\n");
	}
	return rc;
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
		case 's':
			path = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 ||
	    (strcmp(argv[optind], "stats") && strcmp(argv[optind], "upgrade") &&
	     strcmp(argv[optind], "usage"))) {
		usage(stderr);
		return 2;
	}
	if (!path || !*path)
		path = PROTO_DEFAULT_SOCKET;
	int s = dial(path);
	if (s < 0)
		return 1;
	int rc = run(s, argv[optind], json);
	close(s);
	return rc;
}
