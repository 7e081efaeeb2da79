/* rp_attacker: hostile tenants of refpaged, one attack per run.
 *
 *   rp_attacker SOCKET ATTACK [key=value...]
 *
 * The driver (driver.c) runs it as uid 65534 next to victims of other
 * uids; see atk.h for what it prints. */
#include "atk.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int atk_dial(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (s < 0)
		return -errno;
	if (strlen(sock) >= sizeof(sa.sun_path)) {
		close(s);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, sock);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(s);
		return -e;
	}
	return s;
}

static int wait_fd(int fd, short ev, double timeout_s)
{
	struct pollfd p = { .fd = fd, .events = ev };
	int r = poll(&p, 1, timeout_s < 0 ? -1 : (int)(timeout_s * 1000));

	if (r < 0)
		return -errno;
	return r == 0 ? -ETIMEDOUT : 0;
}

int atk_send(struct atk_conn *c, uint16_t type, const void *p, uint32_t len, int passfd,
	     double timeout_s)
{
	c->seq++;
	for (;;) {
		int r = proto_send(c->fd, type, c->seq, p, len, passfd, MSG_DONTWAIT);
		if (r != -EAGAIN)
			return r;
		if ((r = wait_fd(c->fd, POLLOUT, timeout_s)) < 0)
			return r;
	}
}

long atk_recv(struct atk_conn *c, void *buf, double timeout_s)
{
	int fd, nfds, trunc;
	long r = wait_fd(c->fd, POLLIN, timeout_s);

	if (r < 0)
		return r;
	r = proto_recv(c->fd, buf, &fd, &nfds, &trunc, MSG_DONTWAIT);
	if (fd >= 0)
		close(fd);
	if (r == -ECONNRESET)
		return 0;
	return r;
}

int atk_req(struct atk_conn *c, uint16_t type, const void *p, uint32_t len, double timeout_s,
	    struct proto_reply *rep)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int r = atk_send(c, type, p, len, -1, timeout_s);

	if (r == -EPIPE || r == -ECONNRESET)
		return -ENOTCONN;
	if (r < 0)
		return r;
	for (;;) {
		long n = atk_recv(c, buf, timeout_s);
		if (n == 0)
			return -ENOTCONN;
		if (n < 0)
			return (int)n;
		if (n < (long)sizeof(struct proto_hdr))
			return -EPROTO;
		const struct proto_hdr *h = (const void *)buf;
		if (h->seq != c->seq && h->seq != 0)
			continue; /* a late answer to an earlier request */
		if (h->type == PROTO_REPLY &&
		    n >= (long)(sizeof(*h) + sizeof(struct proto_reply))) {
			struct proto_reply pr;
			memcpy(&pr, buf + sizeof(*h), sizeof(pr));
			if (rep)
				*rep = pr;
			return pr.status;
		}
		return 0;
	}
}

int atk_hello(struct atk_conn *c, const char *sock, double timeout_s, int keep_dup)
{
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE, .pid = (uint32_t)getpid() };
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int umo, uffd;

	c->fd = -1;
	c->uffd = -1;
	c->seq = 0;
	if ((c->fd = atk_dial(sock)) < 0) {
		int e = c->fd;
		c->fd = -1;
		return e;
	}
	if ((uffd = proto_uffd_create(&umo)) < 0) {
		atk_close(c);
		return uffd;
	}
	h.flags = umo ? PROTO_HELLO_USER_MODE_ONLY : 0;
	int r = atk_send(c, PROTO_HELLO, &h, sizeof(h), uffd, timeout_s);
	if (keep_dup)
		c->uffd = uffd;
	else
		close(uffd);
	if (r == 0) {
		long n = atk_recv(c, buf, timeout_s);
		if (n == 0)
			r = -ENOTCONN;
		else if (n < 0)
			r = (int)n;
		else if (n >= (long)(sizeof(struct proto_hdr) + sizeof(struct proto_reply))) {
			struct proto_reply pr;
			memcpy(&pr, buf + sizeof(struct proto_hdr), sizeof(pr));
			r = pr.status;
		} else {
			r = -EPROTO;
		}
	}
	if (r < 0)
		atk_close(c);
	return r;
}

void atk_close(struct atk_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	if (c->uffd >= 0)
		close(c->uffd);
	c->fd = c->uffd = -1;
}

long atk_template(struct atk_conn *c, const void *page)
{
	struct proto_reply rep;
	int r = atk_req(c, PROTO_TEMPLATE_CREATE, page, PROTO_PAGE_SIZE, 10, &rep);

	return r < 0 ? r : (long)rep.id;
}

long atk_fill(struct atk_conn *c, uint8_t byte)
{
	struct proto_template_fill f = { .byte = byte };
	struct proto_reply rep;
	int r = atk_req(c, PROTO_TEMPLATE_FILL, &f, sizeof(f), 10, &rep);

	return r < 0 ? r : (long)rep.id;
}

int atk_release(struct atk_conn *c, uint32_t id)
{
	struct proto_template_release m = { .id = id };

	return atk_req(c, PROTO_TEMPLATE_RELEASE, &m, sizeof(m), 10, NULL);
}

int atk_map(struct atk_conn *c, uint64_t addr, uint64_t len, uint32_t id)
{
	struct proto_map m = { .addr = addr, .len = len, .id = id };

	return atk_req(c, PROTO_MAP, &m, sizeof(m), 10, NULL);
}

int atk_unmap(struct atk_conn *c, uint64_t addr, uint64_t len)
{
	struct proto_unmap m = { .addr = addr, .len = len };

	return atk_req(c, PROTO_UNMAP, &m, sizeof(m), 10, NULL);
}

int atk_stats(struct atk_conn *c, uint64_t *v)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int r = atk_send(c, PROTO_STATS, NULL, 0, -1, 10);

	if (r < 0)
		return r;
	for (;;) {
		long n = atk_recv(c, buf, 10);
		if (n <= 0)
			return n == 0 ? -ENOTCONN : (int)n;
		const struct proto_hdr *h = (const void *)buf;
		if (h->seq != c->seq)
			continue;
		if (h->type != PROTO_STATS_REPLY ||
		    n < (long)(sizeof(*h) + sizeof(struct proto_stats_reply)))
			return -EPROTO;
		struct proto_stats_reply sr;
		memcpy(&sr, buf + sizeof(*h), sizeof(sr));
		if (sr.status < 0)
			return sr.status;
		memcpy(v, sr.counters, sizeof(sr.counters));
		return (int)sr.count;
	}
}

void *atk_anon(size_t len)
{
	return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		    -1, 0);
}

int atk_until(double deadline)
{
	return tn_now() < deadline;
}

int atk_refusal(int err)
{
	return err == -EDQUOT || err == -EMFILE || err == -ENOSPC || err == -EAGAIN ||
	       err == -EBUSY || err == -ENOBUFS;
}

void atk_out(const char *fmt, ...)
{
	va_list ap;

	printf("attacker ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void atk_finding(const char *fmt, ...)
{
	va_list ap;

	printf("finding ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static const struct {
	const char *name;
	atk_fn fn;
} attacks[] = {
	{ "fork-storm", atk_fork_storm },
	{ "fork-fat", atk_fork_fat },
	{ "exec-storm", atk_exec_storm },
	{ "template-flood", atk_template_flood },
	{ "template-pin", atk_template_pin },
	{ "oracle", atk_oracle },
	{ "fd-exhaust", atk_fd_exhaust },
	{ "slowloris", atk_slowloris },
	{ "log-flood", atk_log_flood },
	{ "cpu-hog", atk_cpu_hog },
	{ "req-flood", atk_req_flood },
	{ "churn", atk_churn },
	{ "unmap-pieces", atk_unmap_pieces },
	{ "mremap-storm", atk_mremap_storm },
	{ "mremap-dontunmap", atk_mremap_dontunmap },
	{ "mmap-lock", atk_mmap_lock },
	{ "uffd-bomb", atk_uffd_bomb },
	{ "fault-flood", atk_fault_flood },
	{ "fork-gate", atk_fork_gate },
	{ "enomem", atk_enomem },
	{ "probe-write", atk_probe_write },
	{ "sleeper", atk_sleeper },
};

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: rp_attacker SOCKET ATTACK [key=value...]\nattacks:");
		for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++)
			fprintf(stderr, " %s", attacks[i].name);
		fprintf(stderr, "\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	tn_opts(argc - 3, argv + 3);
	for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
		if (strcmp(argv[2], attacks[i].name))
			continue;
		int r = attacks[i].fn(argv[1]);
		const char *bad = tn_opts_unused();
		if (bad)
			fprintf(stderr, "rp_attacker %s: option not used: %s\n", argv[2], bad);
		return r;
	}
	fprintf(stderr, "rp_attacker: unknown attack '%s'\n", argv[2]);
	return 2;
}
