/* One conformance suite for reference pages, run against every backend that
 * is available here (backend.h): refpaged (librefpage) and the MAP_REFPAGE
 * kernel patch (tests/kernel/).
 *
 *   conformance [--backend NAME] [--case NAME] [--timeout S] [--socket PATH]
 *   conformance --list
 *   conformance --bench PAGES     fault micro-benchmark (see bench_case()):
 *       BENCH<TAB>backend<TAB>op<TAB>pages<TAB>median<TAB>min<TAB>max (ns/page)
 *   --uid N: drop to uid/gid N with no supplementary groups first (what
 *   setpriv --reuid=N --regid=N --clear-groups does; busybox's setpriv in the
 *   kernel test's initramfs cannot).
 *
 * Every case runs in a forked child of its own (a crash or a hang is a FAIL
 * of that case only) and prints one line per case and backend:
 *
 *   RESULT<TAB>case<TAB>backend<TAB>STATUS<TAB>detail
 *
 * STATUS is PASS, FAIL, DIFF (a difference from the kernel patch that is
 * by design and explained in detail) or SKIP (why in detail). The reference
 * semantics are the kernel patch's; a case's detail says what was observed.
 * Exit status: 1 when some case FAILed, 2 on bad usage, else 0. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"

#define PG 4096UL
#define RW (PROT_READ | PROT_WRITE)

enum status { ST_PASS, ST_FAIL, ST_DIFF, ST_SKIP };
static const char *const status_name[] = { "PASS", "FAIL", "DIFF", "SKIP" };

struct result {
	enum status st;
	char why[600];
};

/* The result of the running case (in its child process). */
static struct result *res;
static const struct backend *be;

__attribute__((format(printf, 2, 3))) static void set(enum status st, const char *fmt, ...)
{
	va_list ap;

	/* A FAIL is never overwritten; a later note never hides an earlier one. */
	if (res->st == ST_FAIL)
		return;
	res->st = st;
	va_start(ap, fmt);
	vsnprintf(res->why, sizeof(res->why), fmt, ap);
	va_end(ap);
}

#define FAIL(...) set(ST_FAIL, __VA_ARGS__)
#define CHECK(cond, ...)                           \
	do {                                       \
		if (!(cond)) {                     \
			set(ST_FAIL, __VA_ARGS__); \
			return;                    \
		}                                  \
	} while (0)

static int is_kernel(void)
{
	return be == &backend_kernel;
}

/* --- helpers ----------------------------------------------------------- */

/* A reference page in a single-page anonymous mapping of its own (never a
 * THP subpage), written so that it is a real page and not the zero page. */
static unsigned char *new_ref(unsigned seed)
{
	unsigned char *r = mmap(NULL, PG, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return NULL;
	if (seed < 256) {
		memset(r, (int)seed, PG);
	} else {
		uint32_t x = seed;
		for (size_t i = 0; i < PG; i++) {
			x = x * 1103515245u + 12345u;
			r[i] = (unsigned char)(x >> 16);
		}
	}
	return r;
}

static void *map(size_t npages, int prot, const unsigned char *ref)
{
	return be->map(NULL, npages * PG, prot, MAP_PRIVATE, ref);
}

static int page_is(const unsigned char *p, const unsigned char *ref)
{
	return memcmp(p, ref, PG) == 0;
}

static int page_all(const unsigned char *p, unsigned char v)
{
	for (size_t i = 0; i < PG; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

/* The first differing offset, for messages. */
static long first_diff(const unsigned char *p, const unsigned char *ref)
{
	for (size_t i = 0; i < PG; i++)
		if (p[i] != ref[i])
			return (long)i;
	return -1;
}

static sigjmp_buf segv_jmp;
static volatile sig_atomic_t segv_armed;

static void on_segv(int sig)
{
	if (segv_armed)
		siglongjmp(segv_jmp, sig);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void catch_segv(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_segv;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

/* Reads *p; returns -1 when that raised SIGSEGV/SIGBUS, else the byte. */
static int probe_read(const volatile unsigned char *p)
{
	int v;

	catch_segv();
	if (sigsetjmp(segv_jmp, 1)) {
		segv_armed = 0;
		return -1;
	}
	segv_armed = 1;
	v = *p;
	segv_armed = 0;
	return v;
}

/* Writes v to *p; 0 or -1 when that raised SIGSEGV/SIGBUS. */
static int probe_write(volatile unsigned char *p, unsigned char v)
{
	catch_segv();
	if (sigsetjmp(segv_jmp, 1)) {
		segv_armed = 0;
		return -1;
	}
	segv_armed = 1;
	*p = v;
	segv_armed = 0;
	return 0;
}

/* Sum of Rss (kB) of the /proc/self/smaps entries that overlap [p, p+len). */
static long smaps_kb(const void *p, size_t len, const char *field)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	uintptr_t lo = (uintptr_t)p, hi = lo + len;
	int in = 0;
	long kb = 0, v;
	size_t flen = strlen(field);

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t s, e;
		/* a header line "start-end perms ..."; field lines are "Name: value kB" */
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &s, &e) == 2) {
			in = s < hi && e > lo;
			continue;
		}
		if (in && !strncmp(line, field, flen) && line[flen] == ':' &&
		    sscanf(line + flen + 1, "%ld", &v) == 1)
			kb += v;
	}
	fclose(f);
	return kb;
}

/* --- cases ------------------------------------------------------------- */

static void c_read_pattern(void)
{
	unsigned char *ref = new_ref(0xAA);
	unsigned char *p = map(16, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	for (int i = 0; i < 16; i++)
		CHECK(page_all(p + i * PG, 0xAA), "page %d: byte %ld is 0x%02x, not 0xaa", i,
		      first_diff(p + i * PG, ref), p[i * PG + first_diff(p + i * PG, ref)]);
	be->unmap(p, 16 * PG);
}

static void c_read_arbitrary(void)
{
	unsigned char *ref = new_ref(12345);
	unsigned char *p = map(16, PROT_READ, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	for (int i = 15; i >= 0; i--)
		CHECK(page_is(p + i * PG, ref), "page %d differs from the reference at %ld", i,
		      first_diff(p + i * PG, ref));
	be->unmap(p, 16 * PG);
}

static void c_write_before_read(void)
{
	unsigned char *ref = new_ref(777), saved[PG], exp[PG];
	memcpy(saved, ref, PG);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	p[PG + 100] = 0x42; /* first access to page 1 is a write */
	memcpy(exp, ref, PG);
	exp[100] = 0x42;
	CHECK(!memcmp(p + PG, exp, PG), "written page: offset %ld wrong", first_diff(p + PG, exp));
	CHECK(page_is(p, ref) && page_is(p + 2 * PG, ref), "neighbours changed");
	CHECK(page_is(ref, saved), "the reference page changed (offset %ld)",
	      first_diff(ref, saved));
	be->unmap(p, 4 * PG);
}

static void c_write_after_read(void)
{
	unsigned char *ref = new_ref(778), saved[PG], exp[PG];
	memcpy(saved, ref, PG);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	CHECK(page_is(p + PG, ref), "read before write: not the reference");
	p[PG + 7] ^= 0xFF; /* read fault first, then a write(-protect) fault */
	memcpy(exp, ref, PG);
	exp[7] ^= 0xFF;
	CHECK(!memcmp(p + PG, exp, PG), "written page: offset %ld wrong", first_diff(p + PG, exp));
	CHECK(page_is(p, ref) && page_is(p + 3 * PG, ref), "neighbours changed");
	CHECK(page_is(ref, saved), "the reference page changed (offset %ld)",
	      first_diff(ref, saved));
	be->unmap(p, 4 * PG);
}

static void c_refpage_unchanged(void)
{
	unsigned char *ref = new_ref(0x3C), saved[PG];
	memcpy(saved, ref, PG);
	unsigned char *p = map(32, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	for (int i = 0; i < 32; i++) {
		if (i % 2)
			(void)*(volatile unsigned char *)(p + i * PG); /* read first */
		memset(p + i * PG, i, PG);
	}
	CHECK(page_is(ref, saved), "the reference page changed after writes to every page");
	for (int i = 0; i < 32; i++)
		CHECK(page_all(p + i * PG, (unsigned char)i), "page %d lost its write", i);
	/* A second mapping of the same page still reads the original. */
	unsigned char *q = map(2, PROT_READ, ref);
	CHECK(q != MAP_FAILED, "second map: %s", strerror(errno));
	CHECK(page_all(q, 0x3C) && page_all(q + PG, 0x3C), "a new mapping reads the writes");
	be->unmap(q, 2 * PG);
	be->unmap(p, 32 * PG);
}

static void c_madv_dontneed(void)
{
	unsigned char *ref = new_ref(4242);
	unsigned char *p = map(8, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	for (int i = 0; i < 8; i++) {
		if (i & 1)
			(void)*(volatile unsigned char *)(p + i * PG);
		else
			memset(p + i * PG, 0xEE, PG);
	}
	CHECK(madvise(p + 2 * PG, 4 * PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	for (int i = 2; i < 6; i++)
		CHECK(page_is(p + i * PG, ref), "page %d after MADV_DONTNEED: not the reference",
		      i);
	CHECK(page_all(p, 0xEE) && page_all(p + 6 * PG, 0xEE),
	      "pages outside the range lost writes");
	memset(p + 2 * PG, 0x11, PG);
	CHECK(page_all(p + 2 * PG, 0x11), "write after MADV_DONTNEED lost");
	CHECK(madvise(p, 8 * PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	for (int i = 0; i < 8; i++)
		CHECK(page_is(p + i * PG, ref), "page %d after the second MADV_DONTNEED", i);
	be->unmap(p, 8 * PG);
}

static void c_munmap_partial(void)
{
	unsigned char *ref = new_ref(99);
	unsigned char *p = map(10, RW, ref);
	unsigned char vec;
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p + 1 * PG, 1, PG);
	memset(p + 4 * PG, 4, PG);
	memset(p + 8 * PG, 8, PG);
	/* A hole in the middle, and the head and tail pages. */
	CHECK(munmap(p + 3 * PG, 2 * PG) == 0, "munmap middle: %s", strerror(errno));
	CHECK(munmap(p, PG) == 0, "munmap head: %s", strerror(errno));
	CHECK(munmap(p + 9 * PG, PG) == 0, "munmap tail: %s", strerror(errno));
	CHECK(mincore(p + 3 * PG, PG, &vec) == -1 && errno == ENOMEM, "hole still mapped");
	CHECK(probe_read(p + 4 * PG) == -1, "a read in the hole did not fault");
	CHECK(page_all(p + PG, 1) && page_all(p + 8 * PG, 8), "written pages changed");
	CHECK(page_is(p + 2 * PG, ref) && page_is(p + 5 * PG, ref) && page_is(p + 7 * PG, ref),
	      "untouched pages next to the holes are not the reference");
	memset(p + 6 * PG, 6, PG);
	CHECK(page_all(p + 6 * PG, 6), "write after the unmap lost");
	/* Something else mapped into the hole is ordinary memory. */
	unsigned char *a = mmap(p + 3 * PG, 2 * PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				0);
	CHECK(a == p + 3 * PG, "mmap into the hole: %s", strerror(errno));
	CHECK(page_all(a, 0) && page_all(a + PG, 0), "anonymous memory in the hole is not zero");
	munmap(a, 2 * PG);
	be->unmap(p + PG, 2 * PG);
	be->unmap(p + 5 * PG, 4 * PG);
}

static void c_mremap_move(void)
{
	unsigned char *ref = new_ref(5150);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p + PG, 0x77, PG);
	(void)*(volatile unsigned char *)(p + 2 * PG);
	unsigned char *dst = mmap(NULL, 4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED, "reserve: %s", strerror(errno));
	unsigned char *q = mremap(p, 4 * PG, 4 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(q == dst, "mremap: %s", strerror(errno));
	CHECK(probe_read(p) == -1, "the old address is still mapped");
	CHECK(page_all(q + PG, 0x77), "the written page did not move");
	CHECK(page_is(q, ref) && page_is(q + 2 * PG, ref) && page_is(q + 3 * PG, ref),
	      "untouched pages at the new address are not the reference");
	memset(q + 3 * PG, 0x33, PG);
	CHECK(page_all(q + 3 * PG, 0x33), "write after the move lost");
	be->unmap(q, 4 * PG);
}

static void c_mremap_grow(void)
{
	unsigned char *ref = new_ref(6160);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p, 0x55, PG);
	unsigned char *q = mremap(p, 4 * PG, 16 * PG, MREMAP_MAYMOVE);
	CHECK(q != MAP_FAILED, "mremap grow: %s", strerror(errno));
	CHECK(page_all(q, 0x55), "the written page did not follow");
	for (int i = 1; i < 16; i++)
		CHECK(page_is(q + i * PG, ref), "page %d (%s part) is not the reference", i,
		      i < 4 ? "old" : "grown");
	memset(q + 12 * PG, 0x12, PG);
	CHECK(page_all(q + 12 * PG, 0x12), "write in the grown part lost");
	/* Shrink, then grow in place if the kernel can. */
	q = mremap(q, 16 * PG, 8 * PG, 0);
	CHECK(q != MAP_FAILED, "mremap shrink: %s", strerror(errno));
	unsigned char *r = mremap(q, 8 * PG, 12 * PG, MREMAP_MAYMOVE);
	CHECK(r != MAP_FAILED, "mremap regrow: %s", strerror(errno));
	for (int i = 8; i < 12; i++)
		CHECK(page_is(r + i * PG, ref), "regrown page %d is not the reference", i);
	be->unmap(r, 12 * PG);
}

static void c_mprotect(void)
{
	unsigned char *ref = new_ref(0x61);
	unsigned char *p = map(3, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p + 2 * PG, 0x62, PG);
	CHECK(mprotect(p, 3 * PG, PROT_READ) == 0, "mprotect ro: %s", strerror(errno));
	CHECK(page_is(p, ref), "read-only: untouched page is not the reference");
	CHECK(probe_write(p, 1) == -1, "a write to a read-only untouched page did not fault");
	CHECK(probe_write(p + 2 * PG, 1) == -1,
	      "a write to a read-only written page did not fault");
	CHECK(page_is(p, ref) && page_all(p + 2 * PG, 0x62), "failed writes changed memory");
	CHECK(mprotect(p, 3 * PG, RW) == 0, "mprotect rw: %s", strerror(errno));
	CHECK(probe_write(p, 0x63) == 0, "write after mprotect(rw) faulted");
	CHECK(p[0] == 0x63 && !memcmp(p + 1, ref + 1, PG - 1), "page 0 after the write");
	CHECK(probe_write(p + PG, 0x64) == 0, "write to page 1 faulted");
	CHECK(p[PG] == 0x64 && page_all(p + 2 * PG, 0x62), "pages after the writes");
	/* Half the mapping read-only: the VMA splits. */
	CHECK(mprotect(p + PG, PG, PROT_NONE) == 0, "mprotect none: %s", strerror(errno));
	CHECK(probe_read(p + PG) == -1, "PROT_NONE page readable");
	CHECK(mprotect(p + PG, PG, RW) == 0, "mprotect back: %s", strerror(errno));
	CHECK(p[PG] == 0x64, "page 1 lost its write across PROT_NONE");
	CHECK(ref[0] == 0x61 && page_all(ref, 0x61), "the reference page changed");
	be->unmap(p, 3 * PG);
}

/* fork, three generations. In every process, page k reads exp[k] (a byte
 * value, 0 = the reference). Each generation writes before its fork, lets
 * the child look, and writes after the fork; each child overwrites an
 * inherited page and writes a new one, then forks on. */
#define FK_PAGES 12
struct fork_shared {
	char why[400];
};

static int fork_check(const char *who, const unsigned char *p, const unsigned char *ref,
		      const unsigned char *exp, struct fork_shared *sh)
{
	for (int k = 0; k < FK_PAGES; k++) {
		int ok = exp[k] ? page_all(p + k * PG, exp[k]) : page_is(p + k * PG, ref);
		if (!ok) {
			if (!sh->why[0])
				snprintf(sh->why, sizeof(sh->why),
					 "%s: page %d reads 0x%02x, expected %s0x%02x", who, k,
					 p[k * PG], exp[k] ? "" : "the reference ",
					 exp[k] ? exp[k] : ref[0]);
			return 0;
		}
	}
	return 1;
}

static int fork_gen(int g, unsigned char *p, const unsigned char *ref, unsigned char *exp,
		    struct fork_shared *sh)
{
	char who[48];
	int go[2], ok = 1;

	snprintf(who, sizeof(who), "generation %d", g);
	if (g == 3) {
		if (!fork_check(who, p, ref, exp, sh))
			return 0;
		/* the great-grandchild drops its pages: the reference again */
		madvise(p, FK_PAGES * PG, MADV_DONTNEED);
		memset(exp, 0, FK_PAGES);
		snprintf(who, sizeof(who), "generation 3 after MADV_DONTNEED");
		return fork_check(who, p, ref, exp, sh);
	}
	/* before the fork */
	memset(p + (2 * g) * PG, 'A' + g, PG);
	exp[2 * g] = (unsigned char)('A' + g);
	if (pipe(go) < 0)
		return 0;
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(sh->why, sizeof(sh->why), "fork: %s", strerror(errno));
		return 0;
	}
	if (pid == 0) {
		char c;
		unsigned char mine[FK_PAGES];
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		memcpy(mine, exp, sizeof(mine));
		snprintf(who, sizeof(who), "child of generation %d", g);
		if (!fork_check(who, p, ref, mine, sh))
			_exit(1);
		/* both sides write after the fork: overwrite an inherited page */
		memset(p + (2 * g) * PG, 'a' + g, PG);
		mine[2 * g] = (unsigned char)('a' + g);
		_exit(fork_gen(g + 1, p, ref, mine, sh) ? 0 : 1);
	}
	close(go[0]);
	/* the parent writes after the fork, before the child looks */
	memset(p + (2 * g + 1) * PG, 'P' + g, PG);
	if (write(go[1], "x", 1) != 1)
		ok = 0;
	close(go[1]);
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		if (!sh->why[0])
			snprintf(sh->why, sizeof(sh->why), "child of generation %d: status 0x%x", g,
				 st);
		ok = 0;
	}
	exp[2 * g + 1] = (unsigned char)('P' + g);
	return fork_check(who, p, ref, exp, sh) && ok;
}

static void c_fork_3gen(void)
{
	unsigned char *ref = new_ref(31337), exp[FK_PAGES] = { 0 };
	struct fork_shared *sh = mmap(NULL, sizeof(*sh), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED, "mmap shared: %s", strerror(errno));
	unsigned char *p = map(FK_PAGES, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	(void)*(volatile unsigned char *)(p + 11 * PG); /* one page read before any fork */
	int ok = fork_gen(0, p, ref, exp, sh);
	CHECK(ok, "%s", sh->why[0] ? sh->why : "failed");
	be->unmap(p, FK_PAGES * PG);
}

#define TH_N 16
#define TH_PAGES 512
struct th_arg {
	int idx;
	unsigned char *p;
	const unsigned char *ref;
	pthread_barrier_t *bar;
	char why[160];
};

static void *th_main(void *a_)
{
	struct th_arg *a = a_;
	pthread_barrier_wait(a->bar);
	/* everybody reads every page, in a different order, while the owner of
	 * a slice writes into it: a page reads the reference or its owner's
	 * bytes, never anything else */
	for (int n = 0; n < TH_PAGES; n++) {
		int k = (n * 37 + a->idx * 101) % TH_PAGES;
		int owner = k % TH_N;
		unsigned char *pg = a->p + (size_t)k * PG;
		if (owner == a->idx && (k / TH_N) % 2 == 0)
			memset(pg, 0x80 + owner, PG);
		unsigned char b = pg[PG / 2];
		if (b != a->ref[PG / 2] && b != 0x80 + owner) {
			snprintf(a->why, sizeof(a->why), "thread %d: page %d reads 0x%02x", a->idx,
				 k, b);
			return NULL;
		}
	}
	return NULL;
}

static void c_threads16(void)
{
	unsigned char *ref = new_ref(0x16);
	unsigned char *p = map(TH_PAGES, RW, ref);
	pthread_t t[TH_N];
	struct th_arg a[TH_N];
	pthread_barrier_t bar;
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	pthread_barrier_init(&bar, NULL, TH_N);
	for (int i = 0; i < TH_N; i++) {
		a[i] = (struct th_arg){ .idx = i, .p = p, .ref = ref, .bar = &bar };
		CHECK(pthread_create(&t[i], NULL, th_main, &a[i]) == 0, "pthread_create");
	}
	for (int i = 0; i < TH_N; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < TH_N; i++)
		CHECK(!a[i].why[0], "%s", a[i].why);
	for (int k = 0; k < TH_PAGES; k++) {
		int owner = k % TH_N;
		int written = (k / TH_N) % 2 == 0;
		CHECK(written ? page_all(p + (size_t)k * PG, (unsigned char)(0x80 + owner))
			      : page_is(p + (size_t)k * PG, ref),
		      "after the threads: page %d wrong", k);
	}
	be->unmap(p, TH_PAGES * PG);
}

/* Kernel-mode access: the kernel writes into an untouched page (read(2) from
 * a file) or reads from one (write(2) to a file). */
static int memfd_with(unsigned char v, size_t len)
{
	int fd = memfd_create("conformance", 0);
	unsigned char buf[PG];
	if (fd < 0)
		return -1;
	memset(buf, v, sizeof(buf));
	for (size_t o = 0; o < len; o += PG)
		if (write(fd, buf, PG) != (ssize_t)PG)
			return -1;
	lseek(fd, 0, SEEK_SET);
	return fd;
}

/* Seen only where librefpage serves refpages through a user-mode-only
 * userfaultfd: on request (RP_CONNECT_UFFD, refpage-run --backend uffd), or
 * before #16, when that was the only backend. Its auto choice now takes the
 * file backend there (a memfd mapped MAP_PRIVATE: the kernel serves every
 * fault). */
static const char umo_reason[] =
	"kernel-mode access to an untouched page fails with EFAULT: this unprivileged "
	"client is on librefpage's uffd backend with a UFFD_USER_MODE_ONLY userfaultfd "
	"(vm.unprivileged_userfaultfd=0), so faults taken in the kernel are not delivered "
	"to refpaged; the kernel patch serves them, and so does librefpage's file backend, "
	"its choice for such a client since #16";

/* The EFAULT a user-mode-only userfaultfd gives a kernel-mode access. */
static int umo_efault(ssize_t n, int e)
{
	return n < 0 && e == EFAULT && !is_kernel() && geteuid() != 0;
}

static void c_read_syscall(void)
{
	unsigned char *ref = new_ref(0x9D);
	int fd = memfd_with(0xC3, PG);
	CHECK(fd >= 0, "memfd: %s", strerror(errno));
	unsigned char *p = map(2, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	ssize_t n = read(fd, p + 1000, 2000); /* into an untouched page */
	if (umo_efault(n, errno)) {
		set(ST_DIFF, "read(2): %s", umo_reason);
		return;
	}
	CHECK(n == 2000, "read(2) into an untouched page: %zd (%s)", n,
	      n < 0 ? strerror(errno) : "short");
	for (int i = 0; i < (int)PG; i++) {
		unsigned char want = i >= 1000 && i < 3000 ? 0xC3 : 0x9D;
		CHECK(p[i] == want, "after read(2): byte %d is 0x%02x, expected 0x%02x", i, p[i],
		      want);
	}
	CHECK(page_is(p + PG, ref), "the other page changed");
	CHECK(page_all(ref, 0x9D), "the reference page changed");
	close(fd);
	be->unmap(p, 2 * PG);
}

static void c_write_syscall(void)
{
	unsigned char *ref = new_ref(2468), back[PG];
	int fd = memfd_create("conformance", 0);
	CHECK(fd >= 0, "memfd: %s", strerror(errno));
	unsigned char *p = map(2, PROT_READ, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	ssize_t n = write(fd, p + PG, PG); /* from an untouched page */
	if (umo_efault(n, errno)) {
		set(ST_DIFF, "write(2): %s", umo_reason);
		return;
	}
	CHECK(n == (ssize_t)PG, "write(2) from an untouched page: %zd (%s)", n,
	      n < 0 ? strerror(errno) : "short");
	CHECK(pread(fd, back, PG, 0) == (ssize_t)PG, "pread: %s", strerror(errno));
	CHECK(page_is(back, ref), "the file got other bytes than the reference (offset %ld)",
	      first_diff(back, ref));
	close(fd);
	be->unmap(p, 2 * PG);
}

/* readv(2) into two untouched pages, the second iovec across a page end. */
static void c_readv_syscall(void)
{
	unsigned char *ref = new_ref(0x9E);
	int fd = memfd_with(0xC4, PG);
	CHECK(fd >= 0, "memfd: %s", strerror(errno));
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	struct iovec iov[2] = {
		{ .iov_base = p + 100, .iov_len = 50 },
		{ .iov_base = p + 2 * PG + 4000, .iov_len = 200 },
	};
	ssize_t n = readv(fd, iov, 2);
	if (umo_efault(n, errno)) {
		set(ST_DIFF, "readv(2): %s", umo_reason);
		return;
	}
	CHECK(n == 250, "readv(2) into untouched pages: %zd (%s)", n,
	      n < 0 ? strerror(errno) : "short");
	for (size_t i = 0; i < 4 * PG; i++) {
		int in = (i >= 100 && i < 150) || (i >= 2 * PG + 4000 && i < 2 * PG + 4200);
		unsigned char want = in ? 0xC4 : 0x9E;
		CHECK(p[i] == want, "after readv(2): byte %zu is 0x%02x, expected 0x%02x", i, p[i],
		      want);
	}
	close(fd);
	be->unmap(p, 4 * PG);
}

/* recv(2) from a socket into an untouched page. */
static void c_recv_syscall(void)
{
	unsigned char *ref = new_ref(1357), msg[3000];
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %s", strerror(errno));
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (unsigned char)(i * 7 + 1);
	CHECK(send(sv[0], msg, sizeof(msg), 0) == (ssize_t)sizeof(msg), "send: %s",
	      strerror(errno));
	unsigned char *p = map(3, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	ssize_t n = recv(sv[1], p + PG + 500, sizeof(msg), MSG_WAITALL);
	if (umo_efault(n, errno)) {
		set(ST_DIFF, "recv(2): %s", umo_reason);
		return;
	}
	CHECK(n == (ssize_t)sizeof(msg), "recv(2) into an untouched page: %zd (%s)", n,
	      n < 0 ? strerror(errno) : "short");
	CHECK(!memcmp(p + PG + 500, msg, sizeof(msg)), "recv(2) delivered other bytes");
	CHECK(!memcmp(p + PG, ref, 500), "the bytes before the received ones changed");
	CHECK(!memcmp(p + PG + 3500, ref + 3500, PG - 3500),
	      "the bytes after the received ones changed");
	CHECK(page_is(p, ref) && page_is(p + 2 * PG, ref), "a neighbouring page changed");
	close(sv[0]);
	close(sv[1]);
	be->unmap(p, 3 * PG);
}

/* A file of n bytes of v opened with O_DIRECT, in the first directory
 * whose filesystem takes it (a tmpfs does not), or -1 with why. */
static int direct_file(unsigned char v, size_t n, char *why, size_t whylen)
{
	const char *dirs[] = { getenv("TMPDIR"), "/var/tmp", "/tmp", "." };
	unsigned char buf[PG];
	size_t w = 0;

	memset(buf, v, sizeof(buf));
	w += (size_t)snprintf(why, whylen, "no filesystem here takes O_DIRECT:");
	for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
		char path[256];
		if (!dirs[d])
			continue;
		snprintf(path, sizeof(path), "%s/conformance-direct.XXXXXX", dirs[d]);
		int fd = mkstemp(path);
		if (fd < 0)
			continue;
		int ok = 1;
		for (size_t o = 0; o < n && ok; o += PG)
			ok = write(fd, buf, PG) == (ssize_t)PG;
		ok = ok && fsync(fd) == 0;
		close(fd);
		fd = ok ? open(path, O_RDONLY | O_DIRECT) : -1;
		int e = errno;
		unlink(path);
		if (fd >= 0)
			return fd;
		if (w < whylen)
			w += (size_t)snprintf(why + w, whylen - w, " %s (%s)", dirs[d],
					      strerror(e));
	}
	return -1;
}

/* read(2) with O_DIRECT into untouched pages: the kernel pins the pages
 * (get_user_pages with FOLL_WRITE) and the device writes into them. */
static void c_o_direct_read(void)
{
	unsigned char *ref = new_ref(0x9F);
	char why[400];
	int fd = direct_file(0xC5, 4 * PG, why, sizeof(why));
	if (fd < 0) {
		set(ST_SKIP, "%s", why);
		return;
	}
	unsigned char *p = map(6, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	ssize_t n = read(fd, p + PG, 4 * PG);
	if (umo_efault(n, errno)) {
		set(ST_DIFF, "O_DIRECT read(2): %s", umo_reason);
		return;
	}
	if (n < 0 && errno == EINVAL) {
		set(ST_SKIP, "O_DIRECT read(2): EINVAL (this filesystem's O_DIRECT wants "
			     "other alignment)");
		return;
	}
	CHECK(n == (ssize_t)(4 * PG), "O_DIRECT read(2) into untouched pages: %zd (%s)", n,
	      n < 0 ? strerror(errno) : "short");
	for (int i = 1; i < 5; i++)
		CHECK(page_all(p + i * PG, 0xC5), "page %d after the read: 0x%02x", i, p[i * PG]);
	CHECK(page_is(p, ref) && page_is(p + 5 * PG, ref), "a neighbouring page changed");
	CHECK(page_all(ref, 0x9F), "the reference page changed");
	close(fd);
	be->unmap(p, 6 * PG);
}

/* Another process of the same uid reads untouched pages of this one with
 * process_vm_readv(2) (the kernel faults them in through this mm). */
static void c_process_vm_readv(void)
{
	unsigned char *ref = new_ref(2469);
	unsigned char *p = map(3, PROT_READ, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	/* A process that changed its uid (--uid) is not dumpable: then only
	 * CAP_SYS_PTRACE could read it. Yama's scope 1 wants a declared
	 * tracer for a reader that is not an ancestor. */
	prctl(PR_SET_DUMPABLE, 1);
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY);
	struct result *sh = mmap(NULL, 2 * PG + sizeof(int) * 2, RW, MAP_SHARED | MAP_ANONYMOUS, -1,
				 0);
	CHECK(sh != MAP_FAILED, "mmap: %s", strerror(errno));
	unsigned char *got = (unsigned char *)sh;
	int *rv = (int *)(got + 2 * PG);
	pid_t me = getpid(), pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct iovec l = { .iov_base = got, .iov_len = 2 * PG };
		struct iovec r = { .iov_base = p + PG, .iov_len = 2 * PG };
		ssize_t n = process_vm_readv(me, &l, 1, &r, 1, 0);
		rv[0] = (int)n;
		rv[1] = n < 0 ? errno : 0;
		_exit(0);
	}
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "the reader died (status %#x)", st);
	if (rv[0] < 0 && (rv[1] == EPERM || rv[1] == ENOSYS)) {
		set(ST_SKIP, "process_vm_readv: %s (not allowed or not built here)",
		    strerror(rv[1]));
		return;
	}
	/* The kernel patch (the reference) answers EFAULT here, a limit its
	 * description states: get_user_pages() without FOLL_WRITE finds the
	 * special pte of an untouched page (no struct page to hand out). */
	if (is_kernel() && rv[0] < 0 && rv[1] == EFAULT) {
		set(ST_PASS,
		    "process_vm_readv of 2 untouched pages by another process: EFAULT "
		    "(the patch's known limit: get_user_pages() without FOLL_WRITE finds a "
		    "special pte)");
		munmap(sh, 2 * PG + sizeof(int) * 2);
		be->unmap(p, 3 * PG);
		return;
	}
	if (umo_efault(rv[0], rv[1])) {
		set(ST_DIFF, "process_vm_readv(2): %s", umo_reason);
		return;
	}
	CHECK(rv[0] == (int)(2 * PG), "process_vm_readv of 2 untouched pages: %d (%s)", rv[0],
	      rv[0] < 0 ? strerror(rv[1]) : "short");
	if (!is_kernel()) {
		/* Where the kernel patch fails with EFAULT (above), refpaged's
		 * pages are read: a difference, in the reader's favour. */
		CHECK(page_is(got, ref) && page_is(got + PG, ref),
		      "the other process read other bytes than the reference (offset %ld)",
		      first_diff(got, ref));
		set(ST_DIFF, "another process's process_vm_readv of 2 untouched pages reads the "
			     "reference page, where the kernel patch answers EFAULT");
		munmap(sh, 2 * PG + sizeof(int) * 2);
		be->unmap(p, 3 * PG);
		return;
	}
	CHECK(page_is(got, ref) && page_is(got + PG, ref),
	      "the other process read other bytes than the reference (offset %ld)",
	      first_diff(got, ref));
	CHECK(page_is(p, ref) && page_is(p + PG, ref), "this process's pages changed");
	munmap(sh, 2 * PG + sizeof(int) * 2);
	be->unmap(p, 3 * PG);
}

#define RSS_N 64
static void c_smaps_rss_read(void)
{
	unsigned char *ref = new_ref(0xAB);
	unsigned char *p = map(RSS_N, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	long before = smaps_kb(p, RSS_N * PG, "Rss");
	long anon0 = smaps_kb(p, RSS_N * PG, "Anonymous");
	for (int i = 0; i < RSS_N; i++)
		(void)*(volatile unsigned char *)(p + i * PG);
	long after = smaps_kb(p, RSS_N * PG, "Rss");
	long anon = smaps_kb(p, RSS_N * PG, "Anonymous") - anon0;
	CHECK(before >= 0 && after >= 0, "cannot read /proc/self/smaps");
	long d = after - before, full = (long)(RSS_N * PG / 1024);
	if (d == 0) {
		set(ST_PASS,
		    "Rss +0 kB after reading %d untouched pages (the reference page is "
		    "mapped shared, not counted)",
		    RSS_N);
	} else if (!is_kernel() && d == full && anon == 0) {
		set(ST_DIFF,
		    "Rss +%ld kB but Anonymous +0 kB after reading %d untouched pages: "
		    "librefpage's file backend maps pages of the template's file (a memfd "
		    "MAP_PRIVATE), shared and counted as RssShmem: one 4 MiB file per "
		    "template and process, however many mappings and pages read it; the "
		    "kernel maps its one reference page without counting it",
		    d, RSS_N);
	} else if (!is_kernel() && d == full) {
		set(ST_DIFF,
		    "Rss +%ld kB after reading %d untouched pages: refpaged answers a read "
		    "fault with UFFDIO_COPY, a private copy per page; the kernel maps the "
		    "one shared reference page read-only (no RSS) and copies on write only",
		    d, RSS_N);
	} else {
		FAIL("Rss +%ld kB after reading %d untouched pages (expected 0%s)", d, RSS_N,
		     is_kernel() ? "" : " or, for refpaged, one page each");
	}
	be->unmap(p, RSS_N * PG);
}

static void c_smaps_rss_write(void)
{
	unsigned char *ref = new_ref(0xAC);
	unsigned char *p = map(RSS_N, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	long before = smaps_kb(p, RSS_N * PG, "Rss");
	for (int i = 0; i < RSS_N; i++)
		p[i * PG + 1] = 1;
	long after = smaps_kb(p, RSS_N * PG, "Rss");
	long d = after - before, full = (long)(RSS_N * PG / 1024);
	CHECK(before >= 0 && after >= 0, "cannot read /proc/self/smaps");
	CHECK(d == full, "Rss +%ld kB after writing %d pages, expected +%ld", d, RSS_N, full);
	set(ST_PASS, "Rss +%ld kB after writing %d untouched pages", d, RSS_N);
	CHECK(madvise(p, RSS_N * PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	long freed = smaps_kb(p, RSS_N * PG, "Rss");
	CHECK(freed == before, "Rss %ld kB after MADV_DONTNEED, expected %ld", freed, before);
	be->unmap(p, RSS_N * PG);
}

/* The reference page's owner changes it after the map. */
static void c_owner_changed(void)
{
	unsigned char *ref = new_ref(0x11);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	CHECK(page_all(p, 0x11), "before the change: not the reference");
	memset(p + 3 * PG, 0x33, PG);
	memset(ref, 0x22, PG); /* the owner writes its page */
	int r0 = p[0], r1 = p[PG], w3 = p[3 * PG];
	madvise(p, PG, MADV_DONTNEED);
	int r0b = p[0];
	char obs[200];
	snprintf(obs, sizeof(obs),
		 "after the owner wrote 0x22 over 0x11: a page read before reads "
		 "0x%02x, an untouched page 0x%02x, a page dropped by MADV_DONTNEED 0x%02x",
		 r0, r1, r0b);
	CHECK(w3 == 0x33, "a written page changed: 0x%02x", w3);
	if (is_kernel()) {
		/* The port pins the page at mmap and maps it shared: the owner's
		 * in-place writes show through everywhere. */
		CHECK(r0 == 0x22 && r1 == 0x22 && r0b == 0x22,
		      "%s (expected 0x22 everywhere: the "
		      "pinned reference page is mapped shared)",
		      obs);
		set(ST_PASS,
		    "%s: the pinned page is mapped shared, so the owner's changes show in "
		    "every page not yet written",
		    obs);
	} else {
		CHECK(r0 == 0x11 && r1 == 0x11 && r0b == 0x11, "%s (expected the snapshot 0x11)",
		      obs);
		set(ST_DIFF,
		    "%s: refpage_mmap snapshots the contents at map time; the kernel shares "
		    "the live page, whose later changes show in every page not yet written",
		    obs);
	}
	be->unmap(p, 4 * PG);
}

/* The reference page's owner unmaps it after the map. */
static void c_owner_unmapped(void)
{
	unsigned char *ref = new_ref(0x44);
	unsigned char *p = map(4, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	CHECK(page_all(p, 0x44), "before the unmap: not the reference");
	CHECK(munmap(ref, PG) == 0, "munmap ref: %s", strerror(errno));
	/* Something else at the same address must not become the reference. */
	unsigned char *other = mmap(ref, PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (other != MAP_FAILED)
		memset(other, 0x99, PG);
	int r0 = probe_read(p), r1 = probe_read(p + PG);
	madvise(p, PG, MADV_DONTNEED);
	int r0b = probe_read(p);
	memset(p + 2 * PG, 0x66, PG);
	CHECK(r0 == 0x44 && r1 == 0x44 && r0b == 0x44 && page_all(p + PG, 0x44),
	      "after the owner unmapped the reference page: %d, %d, %d (-1: SIGSEGV), expected 0x44",
	      r0, r1, r0b);
	CHECK(page_all(p + 2 * PG, 0x66), "write after the unmap lost");
	set(ST_PASS, "%s",
	    is_kernel() ? "the mapping keeps reading the old reference page after its owner "
			  "unmapped it (the port pins the page at mmap; v1 looked it up on every "
			  "fault and raised SIGSEGV here)"
			: "the mapping keeps reading the snapshot taken at map time");
	be->unmap(p, 4 * PG);
}

/* A refpage mapping next to anonymous memory: no merge either way. */
static void c_neighbours(void)
{
	unsigned char *ref = new_ref(0xD0);
	unsigned char *r = mmap(NULL, 8 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(r != MAP_FAILED, "reserve: %s", strerror(errno));
	CHECK(mmap(r, 2 * PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == r,
	      "anon below");
	unsigned char *p = be->map(r + 2 * PG, 4 * PG, RW, MAP_PRIVATE | MAP_FIXED, ref);
	CHECK(p == r + 2 * PG, "map at a fixed address: %s",
	      p == MAP_FAILED ? strerror(errno) : "moved");
	CHECK(mmap(r + 6 * PG, 2 * PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
		      r + 6 * PG,
	      "anon above");
	/* mprotect across all three asks the kernel to merge what it can */
	CHECK(mprotect(r, 8 * PG, PROT_READ) == 0 && mprotect(r, 8 * PG, RW) == 0, "mprotect");
	for (int i = 0; i < 8; i++) {
		int inside = i >= 2 && i < 6;
		CHECK(inside ? page_is(r + i * PG, ref) : page_all(r + i * PG, 0),
		      "page %d (%s) reads 0x%02x", i, inside ? "refpage" : "anonymous neighbour",
		      r[i * PG]);
	}
	/* a new anonymous mapping right after the refpage one reads zeros */
	munmap(r + 6 * PG, 2 * PG);
	unsigned char *n = mmap(r + 6 * PG, 2 * PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				0);
	CHECK(n == r + 6 * PG && page_all(n, 0) && page_all(n + PG, 0), "new neighbour not zero");
	munmap(r, 8 * PG);
}

/* MAP_FIXED over parts of a refpage mapping: anonymous memory there reads
 * zeros, another refpage mapping its own reference page. */
static void c_map_fixed_over(void)
{
	unsigned char *ref = new_ref(0xF1), *ref2 = new_ref(0xF2);
	unsigned char *p = map(8, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p + 2 * PG, 0x22, PG);
	(void)*(volatile unsigned char *)(p + 5 * PG);
	unsigned char *a = mmap(p + 1 * PG, 2 * PG, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				0);
	CHECK(a == p + PG, "anonymous MAP_FIXED: %s", strerror(errno));
	unsigned char *b = be->map(p + 4 * PG, 2 * PG, RW, MAP_PRIVATE | MAP_FIXED, ref2);
	CHECK(b == p + 4 * PG, "refpage MAP_FIXED: %s",
	      b == MAP_FAILED ? strerror(errno) : "moved");
	CHECK(page_all(p + PG, 0) && page_all(p + 2 * PG, 0),
	      "anonymous pages over the mapping not zero");
	CHECK(page_all(p + 4 * PG, 0xF2) && page_all(p + 5 * PG, 0xF2),
	      "the second refpage mapping does not read its own reference page");
	for (int i = 0; i < 8; i++)
		if (i == 0 || i == 3 || i >= 6)
			CHECK(page_all(p + i * PG, 0xF1), "page %d of the first mapping: 0x%02x", i,
			      p[i * PG]);
	munmap(p, 8 * PG);
}

/* MAP_POPULATE and mlock: whatever they do up front, the pages read the
 * reference page and stay private. */
static void c_map_populate(void)
{
	unsigned char *ref = new_ref(0xB0);
	unsigned char *p = be->map(NULL, 16 * PG, RW, MAP_PRIVATE | MAP_POPULATE, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	for (int i = 0; i < 16; i++)
		CHECK(page_all(p + i * PG, 0xB0), "page %d: 0x%02x", i, p[i * PG]);
	memset(p, 1, PG);
	CHECK(page_all(ref, 0xB0), "the reference page changed");
	be->unmap(p, 16 * PG);
}

static void c_mlock(void)
{
	unsigned char *ref = new_ref(0xB1);
	unsigned char *p = map(16, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	memset(p, 2, PG);
	int r = mlock(p, 16 * PG), e = errno;
	if (r < 0 && (e == EPERM || e == EAGAIN)) {
		set(ST_SKIP, "mlock: %s (RLIMIT_MEMLOCK)", strerror(e));
		return;
	}
	if (r < 0 && !is_kernel() && geteuid() != 0 && (e == EFAULT || e == ENOMEM)) {
		set(ST_DIFF,
		    "mlock(2) fails with %s: it populates through get_user_pages(), a "
		    "kernel-mode fault that librefpage's uffd backend with a "
		    "UFFD_USER_MODE_ONLY userfaultfd does not deliver; on the kernel patch "
		    "mlock succeeds, and on librefpage's file backend (its choice for such "
		    "a client since #16)",
		    strerror(e));
		return;
	}
	CHECK(r == 0, "mlock: %s", strerror(e));
	CHECK(page_all(p, 2), "the written page changed");
	for (int i = 1; i < 16; i++)
		CHECK(page_all(p + i * PG, 0xB1), "page %d after mlock: 0x%02x", i, p[i * PG]);
	munlock(p, 16 * PG);
	be->unmap(p, 16 * PG);
}

/* --- what the kernel patch rejects ------------------------------------ */

static void expect_einval(void *p, const char *what, const char *refpaged_diff)
{
	int e = errno;
	if (p == MAP_FAILED && e == EINVAL) {
		set(ST_PASS, "%s: EINVAL", what);
		return;
	}
	if (p == MAP_FAILED) {
		FAIL("%s: %s, expected EINVAL", what, strerror(e));
		return;
	}
	if (!is_kernel() && refpaged_diff)
		set(ST_DIFF, "%s: accepted (%s)", what, refpaged_diff);
	else
		FAIL("%s: accepted, expected EINVAL", what);
}

static void c_reject_shared(void)
{
	unsigned char *ref = new_ref(1);
	expect_einval(be->map(NULL, PG, RW, MAP_SHARED, ref), "MAP_SHARED", NULL);
	expect_einval(be->map(NULL, PG, RW, MAP_SHARED_VALIDATE, ref), "MAP_SHARED_VALIDATE", NULL);
}

static void c_reject_hugetlb(void)
{
	unsigned char *ref = new_ref(2);
	expect_einval(be->map(NULL, 2 << 20, RW, MAP_PRIVATE | MAP_HUGETLB, ref), "MAP_HUGETLB",
		      NULL);
}

static void c_reject_file(void)
{
	unsigned char *ref = new_ref(3);
	if (!is_kernel()) {
		set(ST_SKIP, "refpage_mmap() takes no file descriptor");
		return;
	}
	int fd = memfd_with(0, PG);
	CHECK(fd >= 0, "memfd: %s", strerror(errno));
	void *p = mmap(NULL, PG, RW, MAP_PRIVATE | MAP_REFPAGE, fd, (off_t)(uintptr_t)ref);
	expect_einval(p, "MAP_REFPAGE with a file descriptor", NULL);
	close(fd);
}

static void c_reject_refpage_in_refpage(void)
{
	unsigned char *ref = new_ref(4);
	unsigned char *p = map(2, RW, ref);
	CHECK(p != MAP_FAILED, "map: %s", strerror(errno));
	(void)*(volatile unsigned char *)(p + PG);
	void *q = be->map(NULL, PG, RW, MAP_PRIVATE, p + PG);
	expect_einval(q, "a reference page inside another refpage mapping",
		      "refpage_mmap copies the page's contents at the call, so any readable page "
		      "will do, here the reference bytes it reads through the first mapping");
	if (q != MAP_FAILED) {
		if (!page_all(q, 4))
			FAIL("the chained mapping does not read the reference bytes");
		be->unmap(q, PG);
	}
	be->unmap(p, 2 * PG);
}

static void c_reject_zero_page(void)
{
	unsigned char *z = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(z != MAP_FAILED, "mmap: %s", strerror(errno));
	(void)*(volatile unsigned char *)z; /* maps the zero page */
	void *q = be->map(NULL, PG, RW, MAP_PRIVATE, z);
	expect_einval(q, "the zero page as reference page",
		      "refpage_mmap copies the contents, 4096 zero bytes: the mapping is "
		      "ordinary zero-filled memory");
}

static void c_reject_unmapped(void)
{
	unsigned char *z = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(z != MAP_FAILED, "mmap: %s", strerror(errno));
	munmap(z, PG);
	void *q;
	catch_segv();
	if (sigsetjmp(segv_jmp, 1)) {
		segv_armed = 0;
		if (is_kernel())
			FAIL("mmap raised SIGSEGV");
		else
			set(ST_DIFF,
			    "an unmapped reference page address: refpage_mmap raises SIGSEGV "
			    "(it memcpy()s the page in the caller) where the kernel returns "
			    "EINVAL");
		return;
	}
	segv_armed = 1;
	q = be->map(NULL, PG, RW, MAP_PRIVATE, z);
	segv_armed = 0;
	expect_einval(q, "an unmapped reference page address", NULL);
}

static void c_reject_thp_subpage(void)
{
	size_t len = 4UL << 20;
	char buf[64] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (!f || !fgets(buf, sizeof(buf), f) || strstr(buf, "[never]")) {
		if (f)
			fclose(f);
		set(ST_SKIP, "transparent hugepages are not enabled here");
		return;
	}
	fclose(f);
	unsigned char *m = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap: %s", strerror(errno));
	unsigned char *h = (unsigned char *)(((uintptr_t)m + (2UL << 20) - 1) & ~((2UL << 20) - 1));
	madvise(h, 2UL << 20, MADV_HUGEPAGE);
	memset(h, 0x5E, 2UL << 20);
	long thp = smaps_kb(h, 2UL << 20, "AnonHugePages");
	if (thp < 2048) {
		set(ST_SKIP, "could not get a transparent hugepage (AnonHugePages %ld kB)", thp);
		return;
	}
	void *q = be->map(NULL, PG, RW, MAP_PRIVATE, h + 3 * PG);
	expect_einval(q, "a subpage of a transparent hugepage as reference page",
		      "refpage_mmap copies the contents; the kernel would have to pin the whole "
		      "THP and keep it from being split");
}

/* --- driver ------------------------------------------------------------ */

struct tcase {
	const char *name;
	void (*fn)(void);
};

static const struct tcase cases[] = {
	{ "read_pattern", c_read_pattern },
	{ "read_arbitrary", c_read_arbitrary },
	{ "write_before_read", c_write_before_read },
	{ "write_after_read", c_write_after_read },
	{ "refpage_unchanged", c_refpage_unchanged },
	{ "madv_dontneed", c_madv_dontneed },
	{ "munmap_partial", c_munmap_partial },
	{ "mremap_move", c_mremap_move },
	{ "mremap_grow", c_mremap_grow },
	{ "mprotect", c_mprotect },
	{ "fork_3gen", c_fork_3gen },
	{ "threads16", c_threads16 },
	{ "read_syscall", c_read_syscall },
	{ "write_syscall", c_write_syscall },
	{ "readv_syscall", c_readv_syscall },
	{ "recv_syscall", c_recv_syscall },
	{ "o_direct_read", c_o_direct_read },
	{ "process_vm_readv", c_process_vm_readv },
	{ "smaps_rss_read", c_smaps_rss_read },
	{ "smaps_rss_write", c_smaps_rss_write },
	{ "owner_changed", c_owner_changed },
	{ "owner_unmapped", c_owner_unmapped },
	{ "neighbours", c_neighbours },
	{ "map_fixed_over", c_map_fixed_over },
	{ "map_populate", c_map_populate },
	{ "mlock", c_mlock },
	{ "reject_shared", c_reject_shared },
	{ "reject_hugetlb", c_reject_hugetlb },
	{ "reject_file", c_reject_file },
	{ "reject_refpage_in_refpage", c_reject_refpage_in_refpage },
	{ "reject_zero_page", c_reject_zero_page },
	{ "reject_unmapped", c_reject_unmapped },
	{ "reject_thp_subpage", c_reject_thp_subpage },
};

static const struct backend *const backends[] = { &backend_refpaged, &backend_kernel };
#define NBACKENDS (sizeof(backends) / sizeof(backends[0]))

static int timeout_s = 60;

/* Runs fn in a child; its result comes back through a shared page. */
static void run_child(void (*fn)(void), struct result *out)
{
	struct result *sh = mmap(NULL, sizeof(*sh), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		out->st = ST_FAIL;
		snprintf(out->why, sizeof(out->why), "mmap: %s", strerror(errno));
		return;
	}
	sh->st = ST_FAIL;
	snprintf(sh->why, sizeof(sh->why), "the case did not finish");
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		alarm((unsigned)timeout_s);
		res = sh;
		res->st = ST_PASS;
		res->why[0] = 0;
		fn();
		_exit(0);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid) {
		out->st = ST_FAIL;
		snprintf(out->why, sizeof(out->why), "fork/wait: %s", strerror(errno));
	} else if (WIFSIGNALED(st)) {
		out->st = ST_FAIL;
		snprintf(out->why, sizeof(out->why), "killed by signal %d%s (%.400s)", WTERMSIG(st),
			 WTERMSIG(st) == SIGALRM ? ", timeout" : "", sh->why);
	} else {
		*out = *sh;
	}
	munmap(sh, sizeof(*sh));
}

static char avail_why[600];
static int avail_ok;
static void avail_case(void)
{
	avail_ok = be->available(avail_why, sizeof(avail_why));
	if (avail_ok)
		set(ST_PASS, "available");
	else
		set(ST_SKIP, "%s", avail_why);
}

static void print_result(const char *cname, const char *bname, const struct result *r)
{
	/* one line, no tabs or newlines in the detail */
	char d[sizeof(r->why)];
	snprintf(d, sizeof(d), "%s", r->why);
	for (char *c = d; *c; c++)
		if (*c == '\t' || *c == '\n')
			*c = ' ';
	printf("RESULT\t%s\t%s\t%s\t%s\n", cname, bname, status_name[r->st], d);
	fflush(stdout);
}

/* --- fault micro-benchmark --------------------------------------------- */

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static size_t bench_pages;
static const char *bench_mode;
#define BENCH_REPS 5

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* First touch of bench_pages pages, one byte each, in order: read, write,
 * or read then write. The median of BENCH_REPS fresh mappings, ns/page. */
static void bench_case(void)
{
	static const char *const ops[] = { "read", "write", "read-then-write" };
	unsigned char *ref = new_ref(0xAA);
	for (int o = 0; o < 3; o++) {
		double t[BENCH_REPS];
		size_t len = bench_pages * PG;
		for (int rep = 0; rep < BENCH_REPS; rep++) {
			unsigned char *p;
			if (!strcmp(bench_mode, "anon"))
				p = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			else
				p = be->map(NULL, len, RW, MAP_PRIVATE, ref);
			if (p == MAP_FAILED) {
				FAIL("map: %s", strerror(errno));
				return;
			}
			double t0 = now_ns();
			for (size_t i = 0; i < bench_pages; i++) {
				if (o != 1)
					(void)*(volatile unsigned char *)(p + i * PG);
				if (o != 0)
					p[i * PG] = 1;
			}
			t[rep] = (now_ns() - t0) / (double)bench_pages;
			if (p[0] != (o ? 1 : 0xAA) && strcmp(bench_mode, "anon"))
				FAIL("%s: wrong contents", ops[o]);
			munmap(p, len);
		}
		qsort(t, BENCH_REPS, sizeof(t[0]), cmp_double);
		printf("BENCH\t%s\t%s\t%zu\t%.0f\t%.0f\t%.0f\n", bench_mode, ops[o], bench_pages,
		       t[BENCH_REPS / 2], t[0], t[BENCH_REPS - 1]);
		fflush(stdout);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: conformance [--backend refpaged|kernel] [--case NAME] "
			"[--timeout S] [--socket PATH] [--uid N] [--list] [--bench PAGES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *only_b = NULL, *only_c = NULL;
	long bench = 0;
	struct utsname u;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			only_b = argv[++i];
		else if (!strcmp(argv[i], "--case") && i + 1 < argc)
			only_c = argv[++i];
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			setenv("REFPAGED_SOCKET", argv[++i], 1);
		else if (!strcmp(argv[i], "--bench") && i + 1 < argc)
			bench = atol(argv[++i]);
		else if (!strcmp(argv[i], "--uid") && i + 1 < argc) {
			int id = atoi(argv[++i]);
			if (setgroups(0, NULL) < 0 || setgid((gid_t)id) < 0 ||
			    setuid((uid_t)id) < 0) {
				perror("conformance: dropping privileges");
				return 2;
			}
			/* as after an exec by that uid: /proc/self/smaps readable */
			prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
		} else if (!strcmp(argv[i], "--list")) {
			for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
				printf("%s\n", cases[c].name);
			return 0;
		} else
			usage();
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	uname(&u);
	printf("# conformance: kernel %s %s, uid %d\n", u.release, u.machine, (int)geteuid());

	int fails = 0, counts[4] = { 0 };
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct result r;
		be = backends[b];
		if (only_b && strcmp(only_b, be->name))
			continue;
		run_child(avail_case, &r);
		if (r.st != ST_PASS) {
			/* every case of this backend is skipped, for this reason */
			for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
				if (only_c && strcmp(only_c, cases[c].name))
					continue;
				struct result s = { .st = ST_SKIP };
				snprintf(s.why, sizeof(s.why), "backend unavailable: %.500s",
					 r.why);
				if (bench)
					break;
				print_result(cases[c].name, be->name, &s);
				counts[ST_SKIP]++;
			}
			if (bench)
				printf("# bench: %s unavailable: %s\n", be->name, r.why);
			continue;
		}
		if (bench) {
			bench_pages = (size_t)bench;
			bench_mode = be->name;
			run_child(bench_case, &r);
			if (r.st == ST_FAIL)
				printf("# bench %s: %s\n", be->name, r.why);
			continue;
		}
		for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
			if (only_c && strcmp(only_c, cases[c].name))
				continue;
			run_child(cases[c].fn, &r);
			print_result(cases[c].name, be->name, &r);
			counts[r.st]++;
			fails += r.st == ST_FAIL;
		}
	}
	if (bench) {
		struct result r;
		bench_pages = (size_t)bench;
		bench_mode = "anon";
		run_child(bench_case, &r);
		return 0;
	}
	printf("SUMMARY\tpass=%d\tfail=%d\tdiff=%d\tskip=%d\n", counts[ST_PASS], counts[ST_FAIL],
	       counts[ST_DIFF], counts[ST_SKIP]);
	return fails ? 1 : 0;
}
