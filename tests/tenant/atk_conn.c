/* Connection attacks: descriptors, silent connections, log lines, and a
 * main loop kept busy with well-formed requests. */
#include "atk.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define P TN_PAGE

/* fd-exhaust: connections with HELLO (each costs the daemon a socket, a
 * uffd and a pidfd) until conns=, a refusal or a daemon that no longer
 * answers within timeout=; then children= fork children of one mapping,
 * each faulting once (a uffd and a pidfd each). Held until duration=. */
int atk_fd_exhaust(const char *sock)
{
	long want = (long)tn_opt_ll("conns", 1024), kids = (long)tn_opt_ll("children", 400);
	double timeout = tn_opt_double("timeout", 1.0);
	double deadline = tn_now() + tn_opt_double("duration", 4);
	struct atk_conn *cs = calloc((size_t)want + 1, sizeof(*cs));
	unsigned long up = 0, refused = 0, stalled = 0, other = 0;
	int streak = 0, last_err = 0;

	if (!cs)
		return 1;
	for (long i = 0; i < want && streak < 3; i++) {
		int r = atk_hello(&cs[up], sock, timeout, 0);
		if (r == 0) {
			up++;
			streak = 0;
			continue;
		}
		last_err = r;
		streak++;
		if (r == -ETIMEDOUT || r == -EAGAIN)
			stalled++;
		else if (atk_refusal(r))
			refused++;
		else
			other++;
	}
	atk_out("conns=%lu refused=%lu stalled=%lu other=%lu last_error=%s", up, refused, stalled,
		other, last_err ? strerror(-last_err) : "none");
	pid_t *pid = calloc((size_t)kids + 1, sizeof(*pid));
	long nk = 0;
	unsigned long fork_failed = 0;
	int pp[2] = { -1, -1 };
	if (up && kids && pid && pipe2(pp, O_CLOEXEC) == 0) {
		uint8_t *area = atk_anon(16 * P);
		long id = atk_fill(&cs[0], 0x3C);
		int r = id > 0 ? atk_map(&cs[0], (uintptr_t)area, 16 * P, (uint32_t)id) : (int)id;
		if (r < 0)
			atk_out("map_error=%s", strerror(-r));
		for (; r == 0 && nk < kids && atk_until(deadline); nk++) {
			pid_t k = fork();
			if (k == 0) {
				char b;
				close(pp[1]);
				(void)*(volatile uint8_t *)(area + (size_t)(getpid() % 16) * P);
				while (read(pp[0], &b, 1) < 0 && errno == EINTR)
					;
				_exit(0);
			}
			if (k < 0) {
				fork_failed++;
				break;
			}
			pid[nk] = k;
		}
		close(pp[0]);
	}
	atk_out("children=%ld fork_failed=%lu", nk, fork_failed);
	while (atk_until(deadline))
		tn_sleep(0.05);
	if (pp[1] >= 0)
		close(pp[1]);
	for (long i = 0; i < nk; i++)
		waitpid(pid[i], NULL, 0);
	for (unsigned long i = 0; i < up; i++)
		atk_close(&cs[i]);
	free(cs);
	free(pid);
	return 0;
}

static int hung_up(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
	char b[PROTO_MAX_MSG];

	if (poll(&p, 1, 0) <= 0)
		return 0;
	if (p.revents & (POLLHUP | POLLRDHUP | POLLERR))
		return 1;
	/* A reply (the STATS answer): read it, still open. */
	return recv(fd, b, sizeof(b), MSG_DONTWAIT) == 0;
}

/* slowloris: conns= connections that never say HELLO: half say nothing
 * (closed at the daemon's hello timeout, and made again), half ask STATS
 * once and then say nothing (STATS stops the hello timer). Until
 * duration=; reports how many of each are still open. */
int atk_slowloris(const char *sock)
{
	long n = (long)tn_opt_ll("conns", 900);
	double deadline = tn_now() + tn_opt_double("duration", 4);
	struct atk_conn *cs = calloc((size_t)n, sizeof(*cs));
	unsigned long reconnects = 0, dial_failed = 0;

	if (!cs)
		return 1;
	for (long i = 0; i < n; i++) {
		cs[i].fd = atk_dial(sock);
		if (cs[i].fd < 0) {
			dial_failed++;
			continue;
		}
		if (i % 2)
			atk_send(&cs[i], PROTO_STATS, NULL, 0, -1, 1);
	}
	while (atk_until(deadline)) {
		for (long i = 0; i < n; i++) {
			if (cs[i].fd >= 0 && !hung_up(cs[i].fd))
				continue;
			if (cs[i].fd >= 0)
				close(cs[i].fd);
			/* The daemon's backlog may be full: a later round tries again. */
			if ((cs[i].fd = atk_dial(sock)) >= 0 && i % 2)
				atk_send(&cs[i], PROTO_STATS, NULL, 0, -1, 1);
			reconnects += i % 2 == 0;
		}
		tn_sleep(0.1);
	}
	long silent = 0, idle = 0;
	for (long i = 0; i < n; i++)
		if (cs[i].fd >= 0 && !hung_up(cs[i].fd)) {
			if (i % 2)
				idle++;
			else
				silent++;
		}
	atk_out("conns=%ld dial_failed=%lu silent_reconnects=%lu silent_open=%ld stats_idle_open=%ld",
		n, dial_failed, reconnects, silent, idle);
	atk_finding("stats_then_silent_open=%ld of %ld", idle, n / 2);
	for (long i = 0; i < n; i++)
		if (cs[i].fd >= 0)
			close(cs[i].fd);
	free(cs);
	return 0;
}

/* One bad connection: a bad header, a request before HELLO, or an empty
 * packet carrying a descriptor; each makes the daemon log a warning as
 * it closes us. */
static int bad_packet(int s, int kind, int devnull)
{
	struct proto_hdr h = { .version = PROTO_VERSION,
			       .type = PROTO_MAP,
			       .len = sizeof(struct proto_map) };
	uint8_t buf[sizeof(h) + sizeof(struct proto_map)] = { 0 };

	if (kind == 0) {
		h.version = 99;
		memcpy(buf, &h, sizeof(h));
		return (int)send(s, buf, sizeof(h), MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	if (kind == 1) {
		memcpy(buf, &h, sizeof(h));
		return (int)send(s, buf, sizeof(buf), MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	struct iovec iov = { .iov_base = buf, .iov_len = 0 };
	return (int)proto_sendmsg_fds(s, &iov, 1, &devnull, 1, MSG_DONTWAIT);
}

/* log-flood: procs= processes each making bad connections as fast as the
 * daemon takes them, until duration=. The driver counts the lines. */
int atk_log_flood(const char *sock)
{
	long procs = (long)tn_opt_ll("procs", 4);
	double deadline = tn_now() + tn_opt_double("duration", 4);
	atomic_ulong *cnt = mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
				 0);

	if (cnt == MAP_FAILED)
		return 1;
	for (long i = 0; i < procs; i++) {
		if (fork() != 0)
			continue;
		int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
		for (unsigned long k = (unsigned long)i; atk_until(deadline); k++) {
			int s = atk_dial(sock);
			if (s < 0) {
				atomic_fetch_add(&cnt[1], 1);
				tn_sleep(0.0005);
				continue;
			}
			if (bad_packet(s, (int)(k % 3), devnull) >= 0)
				atomic_fetch_add(&cnt[0], 1);
			close(s);
		}
		_exit(0);
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	atk_out("bad_connections=%lu dial_refused=%lu", atomic_load(&cnt[0]), atomic_load(&cnt[1]));
	return 0;
}

/* req-flood: conns= connections each keeping depth= well-formed requests in
 * flight (kind=map: MAP and UNMAP of one page; kind=create: TEMPLATE_CREATE
 * and RELEASE of one page of contents; kind=stats) until duration=. */
int atk_req_flood(const char *sock)
{
	long n = (long)tn_opt_ll("conns", 200), depth = (long)tn_opt_ll("depth", 16);
	const char *kind = tn_opt_str("kind", "map");
	double dur = tn_opt_double("duration", 4), deadline = tn_now() + dur;
	struct atk_conn *cs = calloc((size_t)n, sizeof(*cs));
	long *id = calloc((size_t)n, sizeof(*id)), *owed = calloc((size_t)n, sizeof(*owed));
	unsigned long *flip = calloc((size_t)n, sizeof(*flip));
	uint8_t *area = atk_anon((size_t)n * P), page[P];
	unsigned long replies = 0, up = 0, closed = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int mode = !strcmp(kind, "create") ? 1 : !strcmp(kind, "stats") ? 2 : 0;

	if (!cs || !id || !owed || !flip || area == MAP_FAILED || ep < 0)
		return 1;
	tn_fill_page(page, 4242);
	for (long i = 0; i < n; i++) {
		if (atk_hello(&cs[i], sock, 5, 0) < 0)
			continue;
		id[i] = mode == 1 ? atk_template(&cs[i], page) : atk_fill(&cs[i], 0x42);
		if (id[i] <= 0) {
			atk_close(&cs[i]);
			continue;
		}
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)i };
		epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
		owed[i] = depth;
		up++;
	}
	while (atk_until(deadline)) {
		/* Top every connection up to depth requests in flight. */
		for (long i = 0; i < n; i++) {
			while (cs[i].fd >= 0 && owed[i] > 0) {
				int r;
				uint64_t a = (uintptr_t)(area + (size_t)i * P);
				struct proto_map m = { .addr = a, .len = P, .id = (uint32_t)id[i] };
				struct proto_unmap u = { .addr = a, .len = P };
				struct proto_template_release rl = { .id = (uint32_t)id[i] };
				int odd = (int)(flip[i]++ & 1);
				if (mode == 2)
					r = proto_send(cs[i].fd, PROTO_STATS, ++cs[i].seq, NULL, 0,
						       -1, MSG_DONTWAIT);
				else if (mode == 1)
					r = odd ? proto_send(cs[i].fd, PROTO_TEMPLATE_RELEASE,
							     ++cs[i].seq, &rl, sizeof(rl), -1,
							     MSG_DONTWAIT)
						: proto_send(cs[i].fd, PROTO_TEMPLATE_CREATE,
							     ++cs[i].seq, page, P, -1,
							     MSG_DONTWAIT);
				else
					r = odd ? proto_send(cs[i].fd, PROTO_UNMAP, ++cs[i].seq, &u,
							     sizeof(u), -1, MSG_DONTWAIT)
						: proto_send(cs[i].fd, PROTO_MAP, ++cs[i].seq, &m,
							     sizeof(m), -1, MSG_DONTWAIT);
				if (r == -EAGAIN) {
					flip[i]--;
					break;
				}
				if (r < 0) {
					atk_close(&cs[i]);
					closed++;
					break;
				}
				owed[i]--;
			}
		}
		struct epoll_event evs[64];
		int k = epoll_wait(ep, evs, 64, 100);
		for (int j = 0; j < k; j++) {
			long i = (long)evs[j].data.u64;
			char b[PROTO_MAX_MSG];
			for (;;) {
				ssize_t got = recv(cs[i].fd, b, sizeof(b), MSG_DONTWAIT);
				if (got > 0) {
					replies++;
					owed[i]++;
					continue;
				}
				if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
					epoll_ctl(ep, EPOLL_CTL_DEL, cs[i].fd, NULL);
					atk_close(&cs[i]);
					closed++;
				}
				break;
			}
		}
	}
	atk_out("conns=%lu kind=%s replies=%lu replies_per_s=%.0f closed_by_daemon=%lu", up, kind,
		replies, (double)replies / dur, closed);
	for (long i = 0; i < n; i++)
		atk_close(&cs[i]);
	free(cs);
	free(id);
	free(owed);
	free(flip);
	return 0;
}

/* cpu-hog: the control row. procs= processes that only spin until
 * duration=, never talking to the daemon: what any CPU hog of another
 * user costs the victims on this machine, so that an attack's latency can
 * be told apart from the CPU its processes take. */
int atk_cpu_hog(const char *sock)
{
	long procs = (long)tn_opt_ll("procs", 4);
	double deadline = tn_now() + tn_opt_double("duration", 4);

	(void)sock;
	for (long i = 0; i < procs; i++) {
		if (fork() != 0)
			continue;
		volatile unsigned long spin = 0;
		while (tn_now() < deadline)
			for (int k = 0; k < 100000; k++)
				spin++;
		_exit(0);
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	atk_out("procs=%ld", procs);
	return 0;
}
