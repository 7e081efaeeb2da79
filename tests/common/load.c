/* The faulting load of restart tests: see load.h. */
#include "load.h"
#include "tutil.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RW (PROT_READ | PROT_WRITE)

/* Map 3 reads a created page, the others a fill byte. */
static const uint8_t fill[LOAD_MAPS - 1] = { 0xA1, 0xB2, 0xC3 };

uint64_t load_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

long load_first_not(const void *p, size_t n, uint8_t b)
{
	const volatile uint8_t *q = p;

	for (size_t i = 0; i < n; i++)
		if (q[i] != b)
			return (long)i;
	return -1;
}

long load_first_diff(const void *a, const void *b, size_t n)
{
	const volatile uint8_t *x = a;
	const uint8_t *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return (long)i;
	return -1;
}

void load_fill_page(void *page, uint32_t seed)
{
	tu_fill_bytes(page, LOAD_PAGE, seed);
}

__attribute__((format(printf, 3, 4))) static void say(char *err, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 2, 3))) static void bad(struct load_shared *sh, const char *fmt, ...)
{
	va_list ap;

	if (atomic_fetch_add(&sh->bad, 1))
		return;
	va_start(ap, fmt);
	vsnprintf(sh->why, sizeof(sh->why), fmt, ap);
	va_end(ap);
}

/* 1 if the page is the template's, 0 if zeros (and allowed), else bad. */
static int check(struct load_arg *a, int m, size_t pg, const uint8_t *p)
{
	struct load_shared *sh = a->ld->sh;
	long off = m < LOAD_MAPS - 1 ? load_first_not(p, LOAD_PAGE, fill[m])
				     : load_first_diff(p, sh->tpage, LOAD_PAGE);

	if (off < 0)
		return 1;
	if (atomic_load(&sh->lenient) && load_first_not(p, LOAD_PAGE, 0) < 0) {
		atomic_fetch_add(&sh->side[a->side].zeros, 1);
		return 0;
	}
	bad(sh, "%s thread %d: map %d page %zu byte %ld reads %#x", a->side ? "child" : "parent",
	    a->idx, m, pg, off, p[off]);
	return -1;
}

static void set_max(atomic_ulong *max, uint64_t v)
{
	uint64_t cur = atomic_load(max);

	while (v > cur && !atomic_compare_exchange_weak(max, &cur, v))
		;
}

static void round_over(struct load_arg *a, int m, unsigned round)
{
	struct load_side *sd = &a->ld->sh->side[a->side];
	size_t per = LOAD_PAGES / (size_t)a->nthreads;
	uint8_t *base = a->ld->map[m] + (size_t)a->idx * per * LOAD_PAGE;
	uint8_t mark = (uint8_t)(0x10 + a->idx + 17 * a->side);

	madvise(base, per * LOAD_PAGE, MADV_DONTNEED);
	for (size_t i = 0; i < per; i++) {
		volatile uint8_t *p = base + i * LOAD_PAGE;
		uint64_t t0 = load_now_ns();
		(void)p[0];
		uint64_t t = load_now_ns() - t0;
		atomic_fetch_add(&sd->touches, 1);
		set_max(&sd->max_ns, t);
		if (check(a, m, i, base + i * LOAD_PAGE) < 0)
			return;
		if ((i + round) % 5 == 0)
			memset(base + i * LOAD_PAGE, mark, LOAD_PAGE);
	}
	for (size_t i = 0; i < per; i++) {
		const uint8_t *p = base + i * LOAD_PAGE;
		if ((i + round) % 5 == 0) {
			long off = load_first_not(p, LOAD_PAGE, mark);
			if (off >= 0) {
				bad(a->ld->sh,
				    "%s thread %d: map %d page %zu lost its write at %ld",
				    a->side ? "child" : "parent", a->idx, m, i, off);
				return;
			}
		} else if (check(a, m, i, p) < 0) {
			return;
		}
	}
}

static void *thread_main(void *arg)
{
	struct load_arg *a = arg;
	struct load_shared *sh = a->ld->sh;

	for (unsigned round = 0; !atomic_load(&sh->stop) && !atomic_load(&sh->bad); round++) {
		for (int m = 0; m < LOAD_MAPS; m++)
			round_over(a, m, round);
		atomic_fetch_add(&sh->side[a->side].rounds, 1);
		atomic_fetch_add(&sh->side[a->side].thread_rounds[a->idx], 1);
	}
	return NULL;
}

/* The fork child: its own threads over its own copy, until told to stop.
 * It holds none of the parent's descriptors (some may be an fd store's). */
static void __attribute__((noreturn)) child_main(struct load *ld)
{
	pthread_t th[LOAD_CHILD_THREADS];

	close_range(3, ~0u, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (int i = 0; i < LOAD_CHILD_THREADS; i++) {
		ld->args[LOAD_MAX_THREADS + i] = (struct load_arg){ ld, i, LOAD_CHILD_THREADS, 1 };
		if (pthread_create(&th[i], NULL, thread_main, &ld->args[LOAD_MAX_THREADS + i]))
			_exit(2);
	}
	for (int i = 0; i < LOAD_CHILD_THREADS; i++)
		pthread_join(th[i], NULL);
	_exit(0);
}

int load_start(struct load *ld, rp_client *c, int nthreads, int with_child, char *err, size_t n)
{
	uint32_t id[LOAD_MAPS];
	int r;

	memset(ld, 0, sizeof(*ld));
	ld->child = -1;
	if (nthreads < 1 || nthreads > LOAD_MAX_THREADS) {
		say(err, n, "threads: %d is not in 1..%d", nthreads, LOAD_MAX_THREADS);
		return -1;
	}
	ld->sh = mmap(NULL, sizeof(*ld->sh), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ld->sh == MAP_FAILED) {
		ld->sh = NULL;
		say(err, n, "mmap: %s", strerror(errno));
		return -1;
	}
	load_fill_page(ld->sh->tpage, 77);
	for (int m = 0; m < LOAD_MAPS - 1; m++)
		if ((r = rp_template_fill(c, fill[m], &id[m])) < 0) {
			say(err, n, "rp_template_fill: %s", strerror(-r));
			return -1;
		}
	if ((r = rp_template_create(c, ld->sh->tpage, &id[LOAD_MAPS - 1])) < 0) {
		say(err, n, "rp_template_create: %s", strerror(-r));
		return -1;
	}
	for (int m = 0; m < LOAD_MAPS; m++) {
		ld->map[m] = rp_map(c, NULL, LOAD_PAGES * LOAD_PAGE, RW, 0, id[m]);
		if (ld->map[m] == MAP_FAILED) {
			ld->map[m] = NULL;
			say(err, n, "rp_map: %s", strerror(errno));
			return -1;
		}
	}
	if (with_child) {
		fflush(NULL);
		ld->child = fork();
		if (ld->child < 0) {
			say(err, n, "fork: %s", strerror(errno));
			return -1;
		}
		if (ld->child == 0)
			child_main(ld);
	}
	for (int i = 0; i < nthreads; i++) {
		ld->args[i] = (struct load_arg){ ld, i, nthreads, 0 };
		if ((r = pthread_create(&ld->th[i], NULL, thread_main, &ld->args[i]))) {
			say(err, n, "pthread_create: %s", strerror(r));
			atomic_store(&ld->sh->stop, 1);
			return -1;
		}
		ld->nthreads = i + 1;
	}
	return 0;
}

int load_flowing(void *arg)
{
	struct load *ld = arg;

	return atomic_load(&ld->sh->side[0].rounds) >= (unsigned)ld->nthreads &&
	       (ld->child < 0 || atomic_load(&ld->sh->side[1].rounds) >= LOAD_CHILD_THREADS);
}

int load_wait_progress(struct load *ld, double timeout_s, char *err, size_t n)
{
	unsigned long was[2][LOAD_MAX_THREADS];
	int count[2] = { ld->nthreads, ld->child > 0 ? LOAD_CHILD_THREADS : 0 };
	uint64_t end = load_now_ns() + (uint64_t)(timeout_s * 1e9);

	for (int side = 0; side < 2; side++)
		for (int i = 0; i < count[side]; i++)
			was[side][i] = atomic_load(&ld->sh->side[side].thread_rounds[i]);
	for (int side = 0; side < 2; side++)
		for (int i = 0; i < count[side]; i++)
			while (atomic_load(&ld->sh->side[side].thread_rounds[i]) == was[side][i]) {
				if (atomic_load(&ld->sh->bad)) {
					say(err, n, "%d wrong pages, first: %s",
					    atomic_load(&ld->sh->bad), ld->sh->why);
					return -1;
				}
				if (load_now_ns() > end) {
					say(err, n, "%s thread %d made no progress in %.0f s",
					    side ? "child" : "parent", i, timeout_s);
					return -1;
				}
				usleep(2000);
			}
	return 0;
}

static int reap(pid_t pid, double timeout_s)
{
	uint64_t end = load_now_ns() + (uint64_t)(timeout_s * 1e9);
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		if (r < 0 && errno != EINTR)
			return -1;
		if (load_now_ns() > end)
			return -1;
		usleep(2000);
	}
}

int load_stop(struct load *ld, double timeout_s, char *err, size_t n)
{
	int ret = 0;

	atomic_store(&ld->sh->stop, 1);
	for (int i = 0; i < ld->nthreads; i++) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)timeout_s;
		if (pthread_timedjoin_np(ld->th[i], NULL, &ts)) {
			say(err, n, "faulting thread %d is stuck", i);
			return -1;
		}
	}
	ld->nthreads = 0;
	if (ld->child > 0) {
		int st = reap(ld->child, timeout_s);
		if (st == -1) {
			kill(ld->child, SIGKILL);
			reap(ld->child, timeout_s);
			say(err, n, "the fork child's faulting threads are stuck");
			ret = -1;
		} else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			say(err, n, "the fork child ended with status %#x", st);
			ret = -1;
		}
		ld->child = -1;
	}
	return ret;
}

void load_free(struct load *ld)
{
	for (int m = 0; m < LOAD_MAPS; m++)
		if (ld->map[m])
			munmap(ld->map[m], LOAD_PAGES * LOAD_PAGE);
	if (ld->sh)
		munmap(ld->sh, sizeof(*ld->sh));
	ld->sh = NULL;
}

static void *alive_main(void *arg)
{
	struct load_alive *m = arg;

	while (!atomic_load(&m->stop)) {
		if (!rp_alive(m->c))
			atomic_fetch_add(&m->dead, 1);
		atomic_fetch_add(&m->checks, 1);
		usleep(1000);
	}
	return NULL;
}

int load_alive_start(struct load_alive *m, rp_client *c)
{
	memset(m, 0, sizeof(*m));
	m->c = c;
	return -pthread_create(&m->th, NULL, alive_main, m);
}

void load_alive_stop(struct load_alive *m)
{
	atomic_store(&m->stop, 1);
	pthread_join(m->th, NULL);
}
