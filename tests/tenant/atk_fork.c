/* Fork attacks: many live fork children, fork children of a big range
 * table, children that exec. Each child of a refpage process is an
 * address space the daemon adopts from UFFD_EVENT_FORK: a uffd, a pidfd
 * once it faults, a copy of the range table. */
#include "atk.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#define P TN_PAGE
#define FILL 0x5A

/* A refpage mapping of pages pages of FILL on a new connection. */
static uint8_t *refpage_area(const char *sock, size_t pages, rp_client **cp)
{
	rp_client *c;
	uint32_t id;
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);

	if (r < 0 || (r = rp_template_fill(c, FILL, &id)) < 0) {
		atk_out("setup=failed error=%s", strerror(-r));
		return NULL;
	}
	uint8_t *p = rp_map(c, NULL, pages * P, PROT_READ | PROT_WRITE, 0, id);
	if (p == MAP_FAILED) {
		atk_out("setup=failed error=%s", strerror(errno));
		return NULL;
	}
	*cp = c;
	return p;
}

/* A child: touch a random page now and then (reads FILL, or the 0x33 it
 * wrote itself) until the release pipe closes. Exit 1 on a wrong byte. */
static void child_loop(uint8_t *p, size_t pages, int rfd, int touch_ms)
{
	unsigned x = (unsigned)getpid() * 2654435761u;

	for (;;) {
		struct pollfd pf = { .fd = rfd, .events = POLLIN };
		x = x * 1103515245u + 12345u;
		int r = poll(&pf, 1, touch_ms ? (int)(x % (unsigned)(2 * touch_ms)) : -1);
		if (r != 0)
			_exit(0);
		uint8_t *q = p + (size_t)((x >> 8) % pages) * P;
		uint8_t v = *(volatile uint8_t *)q;
		if (v != FILL && v != 0x33)
			_exit(1);
		if (x & 0x100)
			*q = 0x33;
	}
}

struct kids {
	pid_t *pid;
	size_t n, cap;
	unsigned long fork_failed, bad, killed;
};

static void reap_all(struct kids *k)
{
	for (size_t i = 0; i < k->n; i++) {
		int st;
		while (waitpid(k->pid[i], &st, 0) < 0 && errno == EINTR)
			;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
			k->bad++;
		else if (WIFSIGNALED(st))
			k->killed++;
	}
	k->n = 0;
}

/* Fork up to want children running child_loop; they go when wfd closes. */
static void spawn(struct kids *k, size_t want, uint8_t *p, size_t pages, int pp[2], int touch_ms,
		  int touch_first, double deadline)
{
	while (k->n < want && atk_until(deadline)) {
		pid_t pid = fork();
		if (pid == 0) {
			close(pp[1]);
			if (touch_first)
				(void)*(volatile uint8_t *)(p +
							    (size_t)(getpid() % (int)pages) * P);
			child_loop(p, pages, pp[0], touch_ms);
		}
		if (pid < 0) {
			int e = errno;
			k->fork_failed++;
			if (e != EAGAIN)
				break;
			tn_sleep(0.01);
			continue;
		}
		if (k->n == k->cap) {
			k->cap = k->cap ? 2 * k->cap : 1024;
			k->pid = realloc(k->pid, k->cap * sizeof(*k->pid));
			if (!k->pid)
				abort();
		}
		k->pid[k->n++] = pid;
	}
}

/* fork-storm: children= alive at once (each touching a page every
 * ~touch_ms), held hold= seconds, released, again until duration=. */
int atk_fork_storm(const char *sock)
{
	size_t want = (size_t)tn_opt_ll("children", 600), pages = (size_t)tn_opt_ll("pages", 256);
	double hold = tn_opt_double("hold", 1.0),
	       deadline = tn_now() + tn_opt_double("duration", 4);
	int touch_ms = (int)tn_opt_ll("touch_ms", 100);
	rp_client *c;
	uint8_t *p = refpage_area(sock, pages, &c);
	struct kids k = { 0 };
	unsigned long rounds = 0, total = 0;
	size_t max_alive = 0;
	double fork_s = 0;

	if (!p)
		return 1;
	do {
		int pp[2];
		if (pipe2(pp, O_CLOEXEC) < 0)
			return 1;
		double t0 = tn_now();
		spawn(&k, want, p, pages, pp, touch_ms, 1, deadline + 5);
		fork_s += tn_now() - t0;
		total += k.n;
		if (k.n > max_alive)
			max_alive = k.n;
		close(pp[0]);
		tn_sleep(hold);
		close(pp[1]);
		reap_all(&k);
		rounds++;
	} while (atk_until(deadline));
	atk_out("rounds=%lu children_total=%lu max_alive=%zu fork_failed=%lu child_bad=%lu "
		"child_killed=%lu fork_us_avg=%.0f",
		rounds, total, max_alive, k.fork_failed, k.bad, k.killed,
		total ? fork_s * 1e6 / (double)total : 0.0);
	free(k.pid);
	rp_disconnect(c);
	return 0;
}

/* fork-fat: ranges= one-page ranges, then children= live children, each
 * holding its copy of the table in the daemon, until duration=. */
int atk_fork_fat(const char *sock)
{
	size_t nranges = (size_t)tn_opt_ll("ranges", 3000),
	       want = (size_t)tn_opt_ll("children", 300);
	double deadline = tn_now() + tn_opt_double("duration", 4);
	rp_client *c;
	uint32_t ids[2];
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);
	unsigned long refused = 0, failed = 0;
	uint8_t *first = NULL;

	if (r < 0 || (r = rp_template_fill(c, FILL, &ids[0])) < 0 ||
	    (r = rp_template_fill(c, FILL ^ 0xFF, &ids[1])) < 0) {
		atk_out("setup=failed error=%s", strerror(-r));
		return 1;
	}
	double t0 = tn_now();
	size_t made = 0;
	for (size_t i = 0; i < nranges; i++) {
		uint8_t *q = rp_map(c, NULL, P, PROT_READ | PROT_WRITE, 0, ids[i & 1]);
		if (q == MAP_FAILED) {
			if (atk_refusal(-errno))
				refused++;
			else
				failed++;
			if (refused + failed > 100)
				break;
			continue;
		}
		if (!first)
			first = q;
		made++;
	}
	double map_s = tn_now() - t0;
	if (!first)
		return 1;
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) < 0)
		return 1;
	struct kids k = { 0 };
	t0 = tn_now();
	/* Every child faults the first range once: a pidfd too. */
	spawn(&k, want, first, 1, pp, 0, 1, deadline);
	double fork_s = tn_now() - t0;
	size_t alive = k.n;
	close(pp[0]);
	while (atk_until(deadline))
		tn_sleep(0.05);
	close(pp[1]);
	reap_all(&k);
	atk_out("ranges=%zu map_refused=%lu map_failed=%lu map_s=%.2f children=%zu fork_failed=%lu "
		"fork_ms_avg=%.2f child_bad=%lu",
		made, refused, failed, map_s, alive, k.fork_failed,
		alive ? fork_s * 1e3 / (double)alive : 0.0, k.bad);
	free(k.pid);
	rp_disconnect(c);
	return 0;
}

/* exec-storm: children= live children that fault once and exec a sleeper:
 * the process lives on, its old address space is gone, and nothing tells
 * the daemon but its liveness probe. Released and redone until duration=. */
int atk_exec_storm(const char *sock)
{
	size_t want = (size_t)tn_opt_ll("children", 300), pages = 64;
	double hold = tn_opt_double("hold", 1.5),
	       deadline = tn_now() + tn_opt_double("duration", 4);
	rp_client *c;
	uint8_t *p = refpage_area(sock, pages, &c);
	struct kids k = { 0 };
	unsigned long rounds = 0, total = 0, exec_failed = 0;
	char self[64], sockarg[256], fdarg[32];

	if (!p)
		return 1;
	snprintf(self, sizeof(self), "/proc/self/exe");
	do {
		int pp[2];
		if (pipe2(pp, O_CLOEXEC) < 0)
			return 1;
		while (k.n < want && atk_until(deadline + 5)) {
			pid_t pid = fork();
			if (pid == 0) {
				close(pp[1]);
				(void)*(volatile uint8_t *)(p +
							    (size_t)(getpid() % (int)pages) * P);
				int fd = dup(pp[0]); /* without O_CLOEXEC: the sleeper's */
				snprintf(fdarg, sizeof(fdarg), "fd=%d", fd);
				snprintf(sockarg, sizeof(sockarg), "%s", sock);
				char *const av[] = { self, sockarg, "sleeper", fdarg, NULL };
				execv(self, av);
				_exit(2);
			}
			if (pid < 0) {
				k.fork_failed++;
				break;
			}
			if (k.n == k.cap) {
				k.cap = k.cap ? 2 * k.cap : 1024;
				k.pid = realloc(k.pid, k.cap * sizeof(*k.pid));
				if (!k.pid)
					abort();
			}
			k.pid[k.n++] = pid;
		}
		total += k.n;
		close(pp[0]);
		tn_sleep(hold);
		close(pp[1]);
		for (size_t i = 0; i < k.n; i++) {
			int st;
			while (waitpid(k.pid[i], &st, 0) < 0 && errno == EINTR)
				;
			exec_failed += WIFEXITED(st) && WEXITSTATUS(st) == 2;
		}
		k.n = 0;
		rounds++;
	} while (atk_until(deadline));
	atk_out("rounds=%lu children_total=%lu fork_failed=%lu exec_failed=%lu", rounds, total,
		k.fork_failed, exec_failed);
	free(k.pid);
	rp_disconnect(c);
	return 0;
}

int atk_sleeper(const char *sock)
{
	int fd = (int)tn_opt_ll("fd", -1);
	char b;

	(void)sock;
	for (;;) {
		ssize_t n = read(fd, &b, 1);
		if (n == 0 || (n < 0 && errno != EINTR))
			return 0;
	}
}
