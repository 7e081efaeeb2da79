/* The jemalloc extent hooks example against a real refpaged ($REFPAGED_SOCKET),
 * for both of its arena kinds (extents unmapped when freed, or retained and
 * purged):
 *   - fresh allocations, large and small, read as the pattern;
 *   - freed and reused memory is whatever jemalloc documents: no promise of
 *     the pattern (an allocation without MALLOCX_ZERO has unspecified
 *     contents), but it is the old contents or the pattern, nothing else;
 *   - after "arena.<i>.purge" a new allocation reads as the pattern again,
 *     and MALLOCX_ZERO still gets zeros (jemalloc must not take purged
 *     refpage memory for zeroed memory);
 *   - 8 threads allocating, writing, verifying and freeing stay correct,
 *     with purges in between.
 * Run it with MALLOC_CONF=retain:false too: only then may freed extents be
 * unmapped (see client/examples/jemalloc_refpage.c).
 * Exit 0: passed, 1: failed, 77: no refpaged to test against. */
#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jemalloc/jemalloc.h>
#include <refpage.h>

#include "jemalloc_refpage.h"

#define PAT 0xAAu
#define BIG (4u << 20)

static int failures;

static void check(int ok, const char *what, unsigned arena)
{
	printf("%s arena %u: %s\n", ok ? "ok  " : "FAIL", arena, what);
	if (!ok)
		failures++;
}

/* Offset of the first byte not b, or -1. */
static long first_not(const unsigned char *p, size_t n, unsigned char b)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != b)
			return (long)i;
	return -1;
}

static void purge(unsigned arena)
{
	char name[64];

	snprintf(name, sizeof(name), "arena.%u.purge", arena);
	if (mallctl(name, NULL, NULL, NULL, 0) != 0)
		check(0, "arena.<i>.purge", arena);
}

static void fresh_and_reuse(unsigned arena)
{
	int fl = MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE;
	unsigned char *p = mallocx(BIG, fl), *s = mallocx(100, fl);

	check(p && first_not(p, BIG, PAT) < 0, "fresh large allocation reads the pattern", arena);
	check(s && first_not(s, 100, PAT) < 0, "fresh small allocation reads the pattern", arena);
	memset(p, 0x11, BIG);
	dallocx(p, fl);
	/* Reuse without a purge: jemalloc may hand back the same dirty
	 * extent. Only "old contents or pattern" may be checked. */
	unsigned char *q = mallocx(BIG, fl);
	int sane = q != NULL;
	for (size_t i = 0; q && i < BIG; i += 4096)
		sane &= q[i] == 0x11 || q[i] == PAT;
	check(sane,
	      q == p ? "reused dirty extent has its old contents or the pattern"
		     : "reallocation (new extent) has the pattern",
	      arena);
	memset(q, 0x22, BIG);
	dallocx(q, fl);
	purge(arena);
	unsigned char *r = mallocx(BIG, fl);
	check(r && first_not(r, BIG, PAT) < 0, "after arena.<i>.purge the memory reads the pattern",
	      arena);
	dallocx(r, fl);
	purge(arena);
	unsigned char *z = mallocx(BIG, fl | MALLOCX_ZERO);
	check(z && first_not(z, BIG, 0) < 0, "MALLOCX_ZERO after a purge gets zeros", arena);
	dallocx(z, fl);
	dallocx(s, fl);
}

struct stress {
	unsigned arena;
	unsigned id;
	atomic_int *bad;
};

static uint32_t lcg(uint32_t *x)
{
	*x = *x * 1103515245u + 12345u;
	return *x >> 8;
}

static void *stress_thread(void *arg)
{
	struct stress *st = arg;
	int fl = MALLOCX_ARENA(st->arena) | MALLOCX_TCACHE_NONE;
	uint32_t x = st->id * 7919u + 1;

	for (int i = 0; i < 1500 && !atomic_load(st->bad); i++) {
		size_t n = 1 + lcg(&x) % (lcg(&x) % 4 == 0 ? (2u << 20) : 16384u);
		unsigned char v = (unsigned char)(st->id * 16 + (unsigned)i % 16) | 1;
		unsigned char *p = mallocx(n, fl);
		if (!p) {
			atomic_store(st->bad, 1);
			break;
		}
		memset(p, v, n);
		sched_yield();
		if (first_not(p, n, v) >= 0)
			atomic_store(st->bad, 2);
		dallocx(p, fl);
		if (st->id == 0 && i % 100 == 99)
			purge(st->arena);
	}
	return NULL;
}

static void stress(unsigned arena)
{
	pthread_t t[8];
	struct stress st[8];
	atomic_int bad = 0;

	for (unsigned i = 0; i < 8; i++) {
		st[i] = (struct stress){ arena, i, &bad };
		pthread_create(&t[i], NULL, stress_thread, &st[i]);
	}
	for (unsigned i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	check(atomic_load(&bad) == 0, "8 threads x 1500 alloc/write/verify/free stay correct",
	      arena);
}

int main(void)
{
	rp_client *c;
	int r = rp_connect(NULL, &c);

	setvbuf(stdout, NULL, _IOLBF, 0);
	bool opt_retain;
	size_t osz = sizeof(opt_retain);
	if (mallctl("opt.retain", &opt_retain, &osz, NULL, 0) != 0)
		return printf("FAIL: mallctl opt.retain\n"), 1;
	printf("jemalloc opt.retain %s\n", opt_retain ? "true" : "false");
	for (int retain = 0; retain <= 1; retain++) {
		unsigned arena;
		r = jrp_arena_create(c, PAT, retain, &arena);
		if (r == -ENOTSUP && !retain && opt_retain) {
			printf("ok   an unmapping arena is refused while opt.retain is true\n");
			continue;
		}
		if (r < 0) {
			printf("FAIL: jrp_arena_create(retain %d): %s\n", retain, strerror(-r));
			return 1;
		}
		printf("arena %u: extents %s when freed\n", arena,
		       retain ? "retained, purged" : "unmapped");
		fresh_and_reuse(arena);
		stress(arena);
		check(rp_alive(c), "the daemon connection is still up", arena);
	}
	rp_disconnect(c);
	printf("%s\n", failures ? "jemalloc_refpage: FAILED" : "jemalloc_refpage: passed");
	return failures ? 1 : 0;
}
