/* A faulting load for restart tests: threads that drop and re-touch their
 * share of four refpage mappings without a pause, checking every byte,
 * in this process and (optionally) in a fork child. Used by
 * tests/integration/test_restart.c (upgrades, the fd store with a stand-in
 * systemd) and tests/systemd/load_client.c (a real systemd killing and
 * restarting refpaged). libc and librefpage only: no test framework, so
 * the container can run it.
 *
 * Each round over a mapping: MADV_DONTNEED the thread's share, touch each
 * page (timed: most first touches are faults), check it is the template,
 * write a marker into every fifth page, then check the markers and the
 * rest again. A page that is neither the template nor (when `lenient`)
 * zeros is counted bad, with the first one described in `why`. */
#ifndef RP_TEST_LOAD_H
#define RP_TEST_LOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <refpage.h>

#define LOAD_PAGE 4096u
#define LOAD_MAPS 4
#define LOAD_PAGES 512
#define LOAD_MAX_THREADS 16
#define LOAD_CHILD_THREADS 4

struct load_side {
	atomic_ulong touches; /* first touches timed (mostly faults) */
	atomic_ulong max_ns;  /* the slowest */
	atomic_ulong zeros;   /* pages read as zeros (allowed when lenient) */
	atomic_ulong rounds;
	atomic_ulong thread_rounds[LOAD_MAX_THREADS];
};

/* MAP_SHARED: the fork child reports here too. */
struct load_shared {
	atomic_int stop;
	atomic_int lenient; /* the daemon let us go: zeros are right too */
	atomic_int bad;
	char why[256];
	struct load_side side[2]; /* 0: this process, 1: the fork child */
	uint8_t tpage[LOAD_PAGE]; /* map 3's template */
};

struct load;

struct load_arg {
	struct load *ld;
	int idx, nthreads, side;
};

struct load {
	struct load_shared *sh;
	uint8_t *map[LOAD_MAPS];
	int nthreads;
	pthread_t th[LOAD_MAX_THREADS];
	pid_t child;
	struct load_arg args[LOAD_MAX_THREADS + LOAD_CHILD_THREADS];
};

/* Templates and mappings through c, the fork child (with_child), then
 * nthreads (1..LOAD_MAX_THREADS) threads here. 0, or -1 with err set. */
int load_start(struct load *ld, rp_client *c, int nthreads, int with_child, char *err, size_t n);
/* Every thread has finished at least one round. */
int load_flowing(void *ld);
/* Every thread, here and in the child, finishes a round from now, within
 * timeout_s: none is left waiting on a fault. 0, or -1 with err set. */
int load_wait_progress(struct load *ld, double timeout_s, char *err, size_t n);
/* Stop and join everything, within timeout_s per thread (a stuck child is
 * killed). 0, or -1 with err set. */
int load_stop(struct load *ld, double timeout_s, char *err, size_t n);
void load_free(struct load *ld);

/* rp_alive() every millisecond: a client must never see its connection
 * go, not even for a moment. */
struct load_alive {
	rp_client *c;
	pthread_t th;
	atomic_int stop;
	atomic_ulong checks, dead;
};
int load_alive_start(struct load_alive *m, rp_client *c);
void load_alive_stop(struct load_alive *m);

/* Byte helpers: the first offset that differs, or -1. */
long load_first_not(const void *p, size_t n, uint8_t b);
long load_first_diff(const void *a, const void *b, size_t n);
/* A page of pseudo-random bytes from seed. */
void load_fill_page(void *page, uint32_t seed);
uint64_t load_now_ns(void);

#endif
