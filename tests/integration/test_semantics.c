/* Semantics 1-6 of DESIGN.md against a real refpaged, through librefpage,
 * in this process: template reads, private writes, MADV_DONTNEED, partial
 * unmap (rp_unmap and plain munmap), mremap, several templates,
 * refpage_mmap, many threads, fork.
 *
 * One daemon for the group. Tests that check the daemon's range gauges
 * compare against the value at their own start, and wait for the daemon
 * to follow uffd events within a deadline. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct fx {
	struct h_daemon d;
	rp_client *c;
	uint32_t aa; /* template: every byte 0xAA */
	int ok;      /* set by a test that ran to its end */
	int pinned;  /* a test pinned us to one CPU: cpus is what we had */
	cpu_set_t cpus;
};

/* --- fixtures ------------------------------------------------------------- */

static int group_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	*state = NULL;
	if (!fx || h_session_open(&fx->d, NULL, &fx->c, 0xAA, &fx->aa) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx)
		return 0; /* the setup failed, and said why */
	int r = h_session_close(&fx->d, fx->c, 1, 0);
	free(fx);
	return r;
}

static int test_setup(void **state)
{
	struct fx *fx = *state;

	fx->ok = 0;
	h_daemon_mark_log(&fx->d);
	return 0;
}

/* A test that did not reach its end failed: show what the daemon said. */
static int test_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx->ok)
		h_daemon_dump_log(&fx->d, fx->d.log_mark);
	if (fx->pinned && sched_setaffinity(0, sizeof(fx->cpus), &fx->cpus) == 0)
		fx->pinned = 0;
	if (!h_daemon_alive(&fx->d)) {
		h_daemon_dump_log(&fx->d, 0);
		return -1;
	}
	return 0;
}

/* munmap() returns as soon as the daemon has read its UNMAP event, maybe
 * before it has dropped the range: an allocator that maps again at the
 * same address at once must still get a working mapping (no EEXIST). */
static void test_munmap_then_map_same_address(void **state)
{
	struct fx *fx = *state;
	size_t len = 16 * PAGE;
	uint8_t *p = rp_map(fx->c, NULL, len, PROT_READ | PROT_WRITE, 0, fx->aa);

	assert_true(p != MAP_FAILED);
	for (int i = 0; i < 2000; i++) {
		p[(size_t)(i % 16) * PAGE] = 1; /* a fault, so the worker is busy too */
		assert_int_equal(munmap(p, len), 0);
		uint8_t *q = rp_map(fx->c, p, len, PROT_READ | PROT_WRITE, MAP_FIXED_NOREPLACE,
				    fx->aa);
		if (q == MAP_FAILED)
			fail_msg("round %d: rp_map at the address just unmapped: %s", i,
				 strerror(errno));
		assert_ptr_equal(q, p);
		assert_int_equal(q[PAGE], 0xAA);
	}
	assert_int_equal(rp_unmap(fx->c, p, len), 0);
	fx->ok = 1;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, test_setup, test_teardown)

/* --- helpers --------------------------------------------------------------- */

static uint8_t *map(struct fx *fx, size_t pages, uint32_t id)
{
	uint8_t *p = rp_map(fx->c, NULL, pages * PAGE, RW, 0, id);

	if (p == MAP_FAILED)
		fail_msg("rp_map(%zu pages, template %u): %s", pages, id, strerror(errno));
	return p;
}

static uint32_t fill_template(struct fx *fx, uint8_t b)
{
	uint32_t id;
	int r = rp_template_fill(fx->c, b, &id);

	if (r < 0)
		fail_msg("rp_template_fill(%#x): %s", b, strerror(-r));
	return id;
}

static uint32_t content_template(struct fx *fx, const void *page)
{
	uint32_t id;
	int r = rp_template_create(fx->c, page, &id);

	if (r < 0)
		fail_msg("rp_template_create: %s", strerror(-r));
	return id;
}

/* Page i of p is all b. */
static void page_is(const uint8_t *p, size_t i, uint8_t b, const char *what)
{
	long off = h_first_not(p + i * PAGE, PAGE, b);

	if (off >= 0)
		fail_msg("%s: page %zu byte %ld reads %#x, want %#x", what, i, off,
			 p[i * PAGE + (size_t)off], b);
}

/* Page i of p equals want. */
static void page_eq(const uint8_t *p, size_t i, const uint8_t *want, const char *what)
{
	long off = h_first_diff(p + i * PAGE, want, PAGE);

	if (off >= 0)
		fail_msg("%s: page %zu byte %ld reads %#x, want %#x", what, i, off,
			 p[i * PAGE + (size_t)off], want[off]);
}

/* A page written by the tests: every byte the same, distinct per page. */
static uint8_t mark_of(size_t i)
{
	return (uint8_t)(0x10 + i % 0x80);
}

static void read_gauges(struct fx *fx, uint64_t *ranges, uint64_t *bytes)
{
	struct h_stats s;

	assert_int_equal(h_stats_read(fx->c, &s), 0);
	*ranges = h_stat(&s, "ranges");
	*bytes = h_stat(&s, "bytes_registered");
}

/* The daemon's gauges reach ranges/bytes (it follows UNMAP and REMAP
 * events on its own time). */
static void expect_gauges(struct fx *fx, uint64_t ranges, uint64_t bytes, const char *when)
{
	const struct h_want w[] = { { "ranges", ranges }, { "bytes_registered", bytes } };

	if (h_wait_stats(fx->c, w, 2, H_DEADLINE_S) < 0)
		fail_msg("daemon range gauges wrong %s", when);
}

/* Everything a process tree holds in the daemon: after its fork children
 * and their connections are gone, all of it is given back. */
static const char *const held[] = { "clients", "processes", "ranges", "bytes_registered",
				    "templates" };

static void snapshot(struct fx *fx, struct h_want *w)
{
	struct h_stats s;

	assert_int_equal(h_stats_read(fx->c, &s), 0);
	for (size_t i = 0; i < ARRAY_LEN(held); i++)
		w[i] = (struct h_want){ held[i], h_stat(&s, held[i]) };
}

static void expect_snapshot(struct fx *fx, const struct h_want *w, const char *when)
{
	if (h_wait_stats(fx->c, w, (int)ARRAY_LEN(held), H_DEADLINE_S) < 0)
		fail_msg("the daemon did not reclaim everything %s", when);
}

/* --- 1. reads of untouched pages --------------------------------------------- */

static void test_read_fill_pattern(void **state)
{
	static const uint8_t bytes[] = { 0xAA, 0x00, 0xFF, 0x01 };
	struct fx *fx = *state;
	const size_t n = 48;

	for (size_t k = 0; k < ARRAY_LEN(bytes); k++) {
		uint32_t id = bytes[k] == 0xAA ? fx->aa : fill_template(fx, bytes[k]);
		uint8_t *p = map(fx, n, id);
		/* The upper half backwards (single-page fills), then the
		 * lower half forwards (a sequential stream: fault-around
		 * fills several pages at once). */
		for (size_t i = n; i-- > n / 2;)
			page_is(p, i, bytes[k], "untouched page, backwards");
		for (size_t i = 0; i < n / 2; i++)
			page_is(p, i, bytes[k], "untouched page, forwards");
		/* A zero template reads through the zero page; a write must
		 * still get a private page. */
		p[7 * PAGE + 1] = 0x5C;
		assert_int_equal(p[7 * PAGE + 1], 0x5C);
		assert_int_equal(p[7 * PAGE], bytes[k]);
		assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	}
	fx->ok = 1;
}

static void test_read_content_template(void **state)
{
	struct fx *fx = *state;
	uint8_t a[PAGE], b[PAGE];
	const size_t n = 64;

	h_fill_page(a, 1);
	h_fill_page(b, 2);
	uint32_t ida = content_template(fx, a), idb = content_template(fx, b);
	uint8_t *p = map(fx, n, ida), *q = map(fx, n, idb);
	for (size_t i = 0; i < n; i++) {
		page_eq(p, i, a, "content template a");
		page_eq(q, n - 1 - i, b, "content template b, backwards");
	}
	assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, q, n * PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, ida), 0);
	assert_int_equal(rp_template_release(fx->c, idb), 0);
	fx->ok = 1;
}

/* --- 2. writes are private ------------------------------------------------------ */

static void test_write_private(void **state)
{
	struct fx *fx = *state;
	uint8_t tp[PAGE], want[PAGE];
	const size_t n = 16;

	uint8_t *p = map(fx, n, fx->aa), *other = map(fx, n, fx->aa);
	/* Written before ever read: the rest of the page is the template. */
	p[3 * PAGE + 100] = 0x11;
	assert_int_equal(p[3 * PAGE + 100], 0x11);
	assert_int_equal(h_first_not(p + 3 * PAGE, 100, 0xAA), -1);
	assert_int_equal(h_first_not(p + 3 * PAGE + 101, PAGE - 101, 0xAA), -1);
	/* Read, then written. */
	page_is(p, 6, 0xAA, "read before the write");
	memset(p + 6 * PAGE, 0x66, PAGE / 2);
	assert_int_equal(h_first_not(p + 6 * PAGE, PAGE / 2, 0x66), -1);
	assert_int_equal(h_first_not(p + 6 * PAGE + PAGE / 2, PAGE / 2, 0xAA), -1);
	/* Every neighbour, and another mapping of the same template. */
	for (size_t i = 0; i < n; i++) {
		if (i != 3 && i != 6)
			page_is(p, i, 0xAA, "neighbour of a written page");
		page_is(other, i, 0xAA, "another mapping of the same template");
	}
	/* A content template: the unwritten part of the page keeps it. */
	h_fill_page(tp, 3);
	uint32_t id = content_template(fx, tp);
	uint8_t *q = map(fx, n, id);
	q[5 * PAGE + 7] ^= 0xFF;
	memcpy(want, tp, PAGE);
	want[7] ^= 0xFF;
	page_eq(q, 5, want, "written content-template page");
	page_eq(q, 4, tp, "its neighbour");
	page_eq(q, 6, tp, "its other neighbour");
	assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, other, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, q, n * PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, id), 0);
	fx->ok = 1;
}

/* --- 3. MADV_DONTNEED -------------------------------------------------------------- */

static void test_madvise_dontneed(void **state)
{
	struct fx *fx = *state;
	const size_t n = 32;
	uint8_t *p = map(fx, n, fx->aa);

	for (size_t i = 0; i < n; i++)
		memset(p + i * PAGE, mark_of(i), PAGE);
	assert_int_equal(madvise(p + 8 * PAGE, 8 * PAGE, MADV_DONTNEED), 0);
	for (size_t i = 0; i < n; i++)
		page_is(p, i, i >= 8 && i < 16 ? 0xAA : mark_of(i), "after DONTNEED of [8, 16)");
	/* Dropped again after being refilled, and across the whole mapping. */
	memset(p + 9 * PAGE, 0x99, PAGE);
	assert_int_equal(madvise(p, n * PAGE, MADV_DONTNEED), 0);
	for (size_t i = 0; i < n; i++)
		page_is(p, i, 0xAA, "after DONTNEED of everything");
	memset(p + 9 * PAGE, 0x99, PAGE);
	page_is(p, 9, 0x99, "written again");
	page_is(p, 10, 0xAA, "its neighbour");
	assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	fx->ok = 1;
}

/* --- 4. partial unmap ---------------------------------------------------------------- */

/* Pages [0, n) of p where live[i]: written pages (every third) keep their
 * mark, the others read the template. */
static void check_live(const uint8_t *p, size_t n, const int *live, const char *when)
{
	for (size_t i = 0; i < n; i++) {
		if (!live[i])
			continue;
		page_is(p, i, i % 3 == 0 ? mark_of(i) : 0xAA, when);
	}
}

static uint8_t *map_marked(struct fx *fx, size_t n)
{
	uint8_t *p = map(fx, n, fx->aa);

	for (size_t i = 0; i < n; i += 3)
		memset(p + i * PAGE, mark_of(i), PAGE);
	return p;
}

struct cut {
	const char *name;
	size_t from, to; /* pages */
	int ranges;      /* pieces after the cut, relative to before the map */
};

/* Middle, head, tail: the mapping ends as two pieces. */
static const struct cut cuts[] = {
	{ "middle", 24, 32, 2 },
	{ "head", 0, 8, 2 },
	{ "tail", 56, 64, 2 },
};

static void unmap_parts(void **state, int plain)
{
	struct fx *fx = *state;
	const size_t n = 64;
	int live[64];
	uint64_t r0, b0;
	size_t left = n;
	char when[96];

	read_gauges(fx, &r0, &b0);
	uint8_t *p = map_marked(fx, n);
	for (size_t i = 0; i < n; i++)
		live[i] = 1;
	expect_gauges(fx, r0 + 1, b0 + n * PAGE, "after the map");
	for (size_t k = 0; k < ARRAY_LEN(cuts); k++) {
		const struct cut *ct = &cuts[k];
		size_t len = (ct->to - ct->from) * PAGE;
		if (plain)
			assert_int_equal(munmap(p + ct->from * PAGE, len), 0);
		else
			assert_int_equal(rp_unmap(fx->c, p + ct->from * PAGE, len), 0);
		for (size_t i = ct->from; i < ct->to; i++)
			live[i] = 0;
		left -= ct->to - ct->from;
		snprintf(when, sizeof(when), "after %s of the %s", plain ? "munmap" : "rp_unmap",
			 ct->name);
		check_live(p, n, live, when);
		expect_gauges(fx, r0 + (uint64_t)ct->ranges, b0 + left * PAGE, when);
	}
	/* The hole is ordinary address space again: a new anonymous mapping
	 * there reads zeros, not the template. */
	uint8_t *hole = mmap(p + 24 * PAGE, 8 * PAGE, RW,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	assert_ptr_equal(hole, p + 24 * PAGE);
	page_is(hole, 3, 0x00, "a plain mapping in the hole");
	assert_int_equal(munmap(hole, 8 * PAGE), 0);
	check_live(p, n, live, "after mapping the hole");
	/* All of it at once, holes included. */
	if (plain)
		assert_int_equal(munmap(p, n * PAGE), 0);
	else
		assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	expect_gauges(fx, r0, b0, "after unmapping everything");
	fx->ok = 1;
}

static void test_rp_unmap_partial(void **state)
{
	unmap_parts(state, 0);
}

static void test_munmap_partial(void **state)
{
	unmap_parts(state, 1);
}

/* --- 4. mremap ----------------------------------------------------------------------- */

static void test_mremap_fixed(void **state)
{
	struct fx *fx = *state;
	const size_t n = 32;
	uint64_t r0, b0;

	read_gauges(fx, &r0, &b0);
	uint8_t *p = map_marked(fx, n);
	page_is(p, 10, 0xAA, "read before the move");
	page_is(p, 11, 0xAA, "read before the move");
	/* Somewhere to move to: a reservation of our own. */
	uint8_t *dst = mmap(NULL, 32 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(dst, MAP_FAILED);
	/* The middle [8, 24) moves to dst. */
	uint8_t *q = mremap(p + 8 * PAGE, 16 * PAGE, 16 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_ptr_equal(q, dst);
	for (size_t i = 8; i < 24; i++)
		page_is(q, i - 8, i % 3 == 0 ? mark_of(i) : 0xAA, "moved page");
	int live[32];
	for (size_t i = 0; i < n; i++)
		live[i] = i < 8 || i >= 24;
	check_live(p, n, live, "the rest after moving the middle out");
	expect_gauges(fx, r0 + 3, b0 + n * PAGE, "after moving the middle");
	/* The moved piece moves again, to the reservation's upper half. */
	uint8_t *q2 = mremap(q, 16 * PAGE, 16 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED,
			     dst + 16 * PAGE);
	assert_ptr_equal(q2, dst + 16 * PAGE);
	for (size_t i = 8; i < 24; i++)
		page_is(q2, i - 8, i % 3 == 0 ? mark_of(i) : 0xAA, "page moved twice");
	/* Written after the move, dropped after the move: still right. */
	memset(q2 + 5 * PAGE, 0x5E, PAGE);
	page_is(q2, 5, 0x5E, "written after the move");
	assert_int_equal(madvise(q2, 16 * PAGE, MADV_DONTNEED), 0);
	for (size_t i = 0; i < 16; i++)
		page_is(q2, i, 0xAA, "moved, then dropped");
	expect_gauges(fx, r0 + 3, b0 + n * PAGE, "after moving it again");
	assert_int_equal(munmap(dst, 32 * PAGE), 0);
	assert_int_equal(munmap(p, n * PAGE), 0);
	expect_gauges(fx, r0, b0, "after unmapping everything");
	fx->ok = 1;
}

/* Moved onto the middle of another refpage mapping: the moved pages keep
 * their own template, what is left of the other mapping keeps its. */
static void test_mremap_onto_refpage(void **state)
{
	struct fx *fx = *state;
	const size_t n = 16;
	uint64_t r0, b0;

	read_gauges(fx, &r0, &b0);
	uint32_t id55 = fill_template(fx, 0x55);
	uint8_t *a = map_marked(fx, n), *b = map(fx, n, id55);
	memset(b + 2 * PAGE, 0x22, PAGE);
	memset(b + 6 * PAGE, 0x26, PAGE);
	page_is(b, 7, 0x55, "read before the move");
	/* a's [3, 9) lands on b's [4, 10). */
	uint8_t *q = mremap(a + 3 * PAGE, 6 * PAGE, 6 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED,
			    b + 4 * PAGE);
	assert_ptr_equal(q, b + 4 * PAGE);
	for (size_t i = 0; i < n; i++) {
		uint8_t want = 0x55;
		if (i >= 4 && i < 10)
			want = (i - 1) % 3 == 0 ? mark_of(i - 1) : 0xAA;
		else if (i == 2)
			want = 0x22;
		page_is(b, i, want, "the mapping moved onto");
	}
	int live[16];
	for (size_t i = 0; i < n; i++)
		live[i] = i < 3 || i >= 9;
	check_live(a, n, live, "the rest of the moved mapping");
	/* a: [0,3) [9,16); b: [0,4) [4,10) [10,16) */
	expect_gauges(fx, r0 + 5, b0 + (2 * n - 6) * PAGE, "after the move");
	assert_int_equal(munmap(a, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, b, n * PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, id55), 0);
	expect_gauges(fx, r0, b0, "after unmapping everything");
	fx->ok = 1;
}

/* Grow without moving: the kernel sends no event for it; the grown part
 * still belongs to the mapping and reads the template. */
static void test_mremap_grow_in_place(void **state)
{
	struct fx *fx = *state;
	uint64_t r0, b0;

	read_gauges(fx, &r0, &b0);
	uint8_t *res = mmap(NULL, 32 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(res, MAP_FAILED);
	uint8_t *p = rp_map(fx->c, res, 8 * PAGE, RW, MAP_FIXED, fx->aa);
	assert_ptr_equal(p, res);
	assert_int_equal(munmap(res + 8 * PAGE, 24 * PAGE), 0);
	memset(p + 1 * PAGE, 0x21, PAGE);
	page_is(p, 2, 0xAA, "read before the grow");
	uint8_t *q = mremap(p, 8 * PAGE, 32 * PAGE, 0);
	if (q == MAP_FAILED)
		fail_msg("mremap in place: %s (the hole was taken?)", strerror(errno));
	assert_ptr_equal(q, p);
	/* The far end first, then the rest. */
	page_is(q, 31, 0xAA, "grown part, last page");
	page_is(q, 20, 0xAA, "grown part, middle");
	for (size_t i = 0; i < 32; i++)
		page_is(q, i, i == 1 ? 0x21 : 0xAA, "after the grow");
	memset(q + 9 * PAGE, 0x29, PAGE);
	page_is(q, 9, 0x29, "grown part takes writes");
	page_is(q, 10, 0xAA, "its neighbour");
	assert_int_equal(munmap(q, 32 * PAGE), 0);
	expect_gauges(fx, r0, b0, "after unmapping the grown mapping");
	fx->ok = 1;
}

/* Grow with MREMAP_MAYMOVE where the mapping cannot grow in place. */
static void test_mremap_grow_moving(void **state)
{
	struct fx *fx = *state;
	uint64_t r0, b0;

	read_gauges(fx, &r0, &b0);
	uint8_t *p = map_marked(fx, 8);
	page_is(p, 4, 0xAA, "read before the grow");
	/* A guard right after it (or something already there) forces a move. */
	uint8_t *guard = mmap(p + 8 * PAGE, PAGE, PROT_NONE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (guard == MAP_FAILED)
		guard = NULL;
	uint8_t *q = mremap(p, 8 * PAGE, 40 * PAGE, MREMAP_MAYMOVE);
	assert_ptr_not_equal(q, MAP_FAILED);
	assert_ptr_not_equal(q, p);
	for (size_t i = 0; i < 8; i++)
		page_is(q, i, i % 3 == 0 ? mark_of(i) : 0xAA, "moved page");
	page_is(q, 39, 0xAA, "grown part, last page");
	for (size_t i = 8; i < 40; i++)
		page_is(q, i, 0xAA, "grown part");
	memset(q + 30 * PAGE, 0x30, PAGE);
	page_is(q, 30, 0x30, "grown part takes writes");
	page_is(q, 31, 0xAA, "its neighbour");
	/* Shrinking unmaps the tail: the daemon forgets it. */
	uint8_t *s = mremap(q, 40 * PAGE, 4 * PAGE, 0);
	assert_ptr_equal(s, q);
	page_is(s, 0, mark_of(0), "after the shrink");
	page_is(s, 2, 0xAA, "after the shrink");
	expect_gauges(fx, r0 + 1, b0 + 4 * PAGE, "after the shrink");
	assert_int_equal(munmap(s, 4 * PAGE), 0);
	if (guard)
		munmap(guard, PAGE);
	expect_gauges(fx, r0, b0, "after unmapping everything");
	fx->ok = 1;
}

/* --- a late event: another thread unmaps or moves while we map ---------------------- */

/* munmap() and a moving mremap() free the address range before their
 * event is even queued, and return only once the daemon has read it. A
 * thread that maps at once gets the address just freed, and its MAP can
 * reach the daemon before the other thread's event: the daemon must not
 * let that late event remove or move the new range. Pinned to one CPU, the
 * other thread's call runs up to its wait for the daemon, then we run and
 * map into the hole while its event is still in flight. */

#define RACE_ROUNDS 1000
#define RACE_PAGES 16

enum race_op { RACE_MUNMAP, RACE_MREMAP };

struct racer {
	sem_t go, done;
	enum race_op op;
	uint8_t *p; /* the mapping to take away */
	size_t len;
	uint8_t *moved; /* RACE_MREMAP: where it went (twice the length) */
	int err;        /* errno of the call, 0 if it worked */
	int stop;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;

	for (;;) {
		while (sem_wait(&r->go) < 0)
			;
		if (r->stop)
			return NULL;
		r->err = 0;
		if (r->op == RACE_MUNMAP) {
			if (munmap(r->p, r->len) < 0)
				r->err = errno;
		} else {
			/* The page after it is taken: growing has to move. */
			r->moved = mremap(r->p, r->len, 2 * r->len, MREMAP_MAYMOVE);
			if (r->moved == MAP_FAILED)
				r->err = errno;
		}
		sem_post(&r->done);
	}
}

static void racer_wait(struct racer *r, int round)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)H_DEADLINE_S;
	while (sem_timedwait(&r->done, &ts) < 0)
		if (errno != EINTR)
			fail_msg("round %d: the other thread's call did not return: %s", round,
				 strerror(errno));
}

/* Pin this thread (and the one it starts next) to the first CPU it may use. */
static void pin_one_cpu(struct fx *fx)
{
	cpu_set_t one;

	assert_int_equal(sched_getaffinity(0, sizeof(fx->cpus), &fx->cpus), 0);
	CPU_ZERO(&one);
	for (int i = 0; i < CPU_SETSIZE; i++) {
		if (CPU_ISSET(i, &fx->cpus)) {
			CPU_SET(i, &one);
			break;
		}
	}
	assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
	fx->pinned = 1;
}

/* A MAP waits until the worker has applied every event it has read
 * (mm.c): after one, a late event would have hit the range already. */
static void settle(struct fx *fx)
{
	uint8_t *s = map(fx, 1, fx->aa);

	assert_int_equal(rp_unmap(fx->c, s, PAGE), 0);
}

static void map_while_other_thread_unmaps(void **state, enum race_op op)
{
	struct fx *fx = *state;
	const size_t len = RACE_PAGES * PAGE;
	const char *what = op == RACE_MUNMAP ? "munmap" : "mremap";
	struct racer *r = calloc(1, sizeof(*r));
	pthread_t th;
	struct h_stats s;
	uint64_t r0, b0, waited0, expired0;
	int same = 0;
	char when[128];

	assert_non_null(r);
	read_gauges(fx, &r0, &b0);
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	waited0 = h_stat(&s, "maps_waited");
	expired0 = h_stat(&s, "maps_wait_expired");
	pin_one_cpu(fx);
	r->op = op;
	r->len = len;
	assert_int_equal(sem_init(&r->go, 0, 0), 0);
	assert_int_equal(sem_init(&r->done, 0, 0), 0);
	assert_int_equal(pthread_create(&th, NULL, racer_main, r), 0);
	for (int i = 0; i < RACE_ROUNDS; i++) {
		uint8_t *p = map(fx, RACE_PAGES, fx->aa), *guard = NULL;
		if (op == RACE_MREMAP) {
			guard = mmap(p + len, PAGE, PROT_NONE,
				     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (guard == MAP_FAILED)
				guard = NULL; /* something is there already */
		}
		r->p = p;
		sem_post(&r->go);
		sched_yield();
		uint8_t *q = rp_map(fx->c, NULL, len, RW, 0, fx->aa);
		int e = errno;
		racer_wait(r, i);
		if (r->err)
			fail_msg("round %d: %s: %s", i, what, strerror(r->err));
		if (q == MAP_FAILED)
			fail_msg("round %d: rp_map while another thread ran %s: %s", i, what,
				 strerror(e));
		same += q == p;
		settle(fx);
		snprintf(when, sizeof(when), "round %d: mapped while another thread ran %s%s", i,
			 what, q == p ? ", at the address it freed" : "");
		for (size_t k = 0; k < RACE_PAGES; k++)
			page_is(q, k, 0xAA, when);
		if (op == RACE_MREMAP) {
			snprintf(when, sizeof(when), "round %d: the mapping moved by mremap", i);
			for (size_t k = 0; k < 2 * RACE_PAGES; k++)
				page_is(r->moved, k, 0xAA, when);
			assert_int_equal(rp_unmap(fx->c, r->moved, 2 * len), 0);
			if (guard)
				assert_int_equal(munmap(guard, PAGE), 0);
		}
		assert_int_equal(rp_unmap(fx->c, q, len), 0);
	}
	r->stop = 1;
	sem_post(&r->go);
	assert_int_equal(pthread_join(th, NULL), 0);
	sem_destroy(&r->go);
	sem_destroy(&r->done);
	free(r);
	assert_int_equal(sched_setaffinity(0, sizeof(fx->cpus), &fx->cpus), 0);
	fx->pinned = 0;

	/* How often the daemon had to hold a MAP back depends on the
	 * scheduler: said, not checked. */
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	printf("  %d of %d rounds mapped at the address just freed; MAPs held back for the "
	       "event: %llu, of which went ahead at the cap: %llu\n",
	       same, RACE_ROUNDS, (unsigned long long)(h_stat(&s, "maps_waited") - waited0),
	       (unsigned long long)(h_stat(&s, "maps_wait_expired") - expired0));
	expect_gauges(fx, r0, b0, "after the last round");
	fx->ok = 1;
}

static void test_map_while_other_thread_munmaps(void **state)
{
	map_while_other_thread_unmaps(state, RACE_MUNMAP);
}

static void test_map_while_other_thread_mremaps(void **state)
{
	map_while_other_thread_unmaps(state, RACE_MREMAP);
}

/* --- moving mremaps in two threads ------------------------------------------------------ */

/* A moving mremap() sends a REMAP and, once that is read, an UNMAP of its
 * old range. Another thread's moving mremap can put its mapping into that
 * old range in between: the late UNMAP must not take the daemon's range
 * for it away. Two threads on one CPU each grow their own block by a move,
 * round after round (each call waits for the daemon twice, so they
 * interleave there), and check every page after each move. */

#define MOVE_ROUNDS 1000

struct mover {
	int idx;
	uint8_t tmpl; /* what its template reads */
	size_t pages; /* the block's length between rounds */
	uint8_t *p;
	_Atomic uintptr_t leaving; /* where its mremap in progress moves from */
	struct mover *peer;
	int landed;    /* moves onto the address the peer's was leaving */
	char why[256]; /* the first thing found wrong; empty if none */
};

/* Page k of a block just grown by a move: the mark written before the
 * move on page w, the template everywhere else. */
static int mover_check(struct mover *m, const uint8_t *q, size_t w, uint8_t mark, int round)
{
	for (size_t k = 0; k < 2 * m->pages; k++) {
		uint8_t want = k == w ? mark : m->tmpl;
		long off = h_first_not(q + k * PAGE, PAGE, want);
		if (off >= 0) {
			snprintf(
				m->why, sizeof(m->why),
				"thread %d round %d: page %zu of the moved block reads %#x, want "
				"%#x%s",
				m->idx, round, k, q[k * PAGE + (size_t)off], want,
				m->landed
					? " (it had landed where the other thread's block was leaving)"
					: "");
			return -1;
		}
	}
	return 0;
}

static void *mover_main(void *arg)
{
	struct mover *m = arg;
	const size_t len = m->pages * PAGE;

	for (int i = 0; i < MOVE_ROUNDS; i++) {
		size_t w = (size_t)i % m->pages;
		uint8_t mark = (uint8_t)(0x10 + (size_t)m->idx * 0x40 + (size_t)i % 0x40);
		/* Something right after the block: growing it has to move it. */
		uint8_t *guard = mmap(m->p + len, PAGE, PROT_NONE,
				      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		memset(m->p + w * PAGE, mark, PAGE);
		atomic_store(&m->leaving, (uintptr_t)m->p);
		uint8_t *q = mremap(m->p, len, 2 * len, MREMAP_MAYMOVE);
		int e = errno;
		uintptr_t peer = atomic_load(&m->peer->leaving);
		atomic_store(&m->leaving, 0);
		if (guard != MAP_FAILED)
			munmap(guard, PAGE);
		if (q == MAP_FAILED) {
			snprintf(m->why, sizeof(m->why), "thread %d round %d: mremap: %s", m->idx,
				 i, strerror(e));
			return NULL;
		}
		m->landed += peer && peer + len > (uintptr_t)q && peer < (uintptr_t)q + 2 * len;
		if (mover_check(m, q, w, mark, i) < 0)
			return NULL;
		/* Back to its size (the kernel sends an UNMAP of the tail), and
		 * every page fetched from the daemon again in the next round. */
		m->p = mremap(q, 2 * len, len, 0);
		if (m->p != q || madvise(q, len, MADV_DONTNEED) < 0) {
			snprintf(m->why, sizeof(m->why), "thread %d round %d: shrink: %s", m->idx,
				 i, strerror(errno));
			return NULL;
		}
	}
	return NULL;
}

/* Every thread of the daemon onto the CPUs in set (threads that end
 * meanwhile are no matter). */
static void pin_daemon(struct fx *fx, const cpu_set_t *set)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/task", (int)fx->d.pid);
	DIR *dir = opendir(path);
	assert_non_null(dir);
	for (struct dirent *e; (e = readdir(dir));) {
		pid_t tid = (pid_t)atoi(e->d_name);
		if (tid > 0)
			sched_setaffinity(tid, sizeof(*set), set);
	}
	closedir(dir);
}

static void test_two_threads_move_blocks(void **state)
{
	struct fx *fx = *state;
	struct mover *m = calloc(2, sizeof(*m));
	pthread_t th[2];
	uint64_t r0, b0;

	assert_non_null(m);
	read_gauges(fx, &r0, &b0);
	uint32_t idcc = fill_template(fx, 0xCC);
	for (int t = 0; t < 2; t++) {
		m[t].idx = t;
		m[t].tmpl = t ? 0xCC : 0xAA;
		/* Grown, the second fits exactly where the first was. */
		m[t].pages = t ? 4 : 8;
		m[t].p = map(fx, m[t].pages, t ? idcc : fx->aa);
		m[t].peer = &m[1 - t];
	}
	pin_one_cpu(fx);
	/* The daemon too: it reads one thread's REMAP only once the other
	 * has run up to its own wait. */
	cpu_set_t one;
	assert_int_equal(sched_getaffinity(0, sizeof(one), &one), 0);
	pin_daemon(fx, &one);
	for (int t = 0; t < 2; t++)
		assert_int_equal(pthread_create(&th[t], NULL, mover_main, &m[t]), 0);
	for (int t = 0; t < 2; t++)
		assert_int_equal(pthread_join(th[t], NULL), 0);
	pin_daemon(fx, &fx->cpus);
	assert_int_equal(sched_setaffinity(0, sizeof(fx->cpus), &fx->cpus), 0);
	fx->pinned = 0;
	for (int t = 0; t < 2; t++)
		if (m[t].why[0])
			fail_msg("%s", m[t].why);
	/* How often a block landed where the other was leaving depends on
	 * the scheduler: said, not checked. */
	printf("  moves onto the address the other thread's mremap was moving from, before it "
	       "returned: %d and %d of %d\n",
	       m[0].landed, m[1].landed, MOVE_ROUNDS);
	for (int t = 0; t < 2; t++)
		assert_int_equal(rp_unmap(fx->c, m[t].p, m[t].pages * PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, idcc), 0);
	expect_gauges(fx, r0, b0, "after unmapping both blocks");
	free(m);
	fx->ok = 1;
}

/* mremap(MREMAP_DONTUNMAP) moves the pages but keeps the old mapping,
 * still registered with the daemon, and sends a REMAP but no UNMAP: the
 * new address has the moved pages, the old one reads the template again
 * like a fresh mapping. Munmapping the old one later forgets it. */
static void test_mremap_dontunmap(void **state)
{
	struct fx *fx = *state;
	const size_t len = 4 * PAGE;
	uint64_t r0, b0;

	read_gauges(fx, &r0, &b0);
	/* The old mapping low in a reservation, the new one high: nothing of
	 * the test's right below the old one. */
	uint8_t *res = mmap(NULL, 32 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(res, MAP_FAILED);
	uint8_t *p = rp_map(fx->c, res + 4 * PAGE, len, RW, MAP_FIXED, fx->aa);
	assert_ptr_equal(p, res + 4 * PAGE);
	memset(p, 0x01, PAGE);
	/* glibc's mremap takes the new address only as a fifth argument. */
	uint8_t *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP | MREMAP_FIXED,
			    res + 24 * PAGE);
	if (q == MAP_FAILED && errno == EINVAL) {
		assert_int_equal(rp_unmap(fx->c, p, len), 0);
		assert_int_equal(munmap(res, 32 * PAGE), 0);
		printf("  SKIP: the kernel refuses mremap(MREMAP_DONTUNMAP) of this mapping "
		       "(EINVAL)\n");
		fx->ok = 1;
		skip();
	}
	assert_ptr_equal(q, res + 24 * PAGE);
	page_is(q, 0, 0x01, "moved page");
	for (size_t i = 1; i < 4; i++)
		page_is(q, i, 0xAA, "moved mapping, untouched page");
	for (size_t i = 0; i < 4; i++)
		page_is(p, i, 0xAA, "the old mapping kept by MREMAP_DONTUNMAP");
	expect_gauges(fx, r0 + 2, b0 + 2 * len, "after the move");
	/* Exactly the old mapping: its range goes. */
	assert_int_equal(munmap(p, len), 0);
	expect_gauges(fx, r0 + 1, b0 + len, "after unmapping the old mapping");
	uint8_t *p2 = rp_map(fx->c, p, len, RW, MAP_FIXED_NOREPLACE, fx->aa);
	if (p2 == MAP_FAILED)
		fail_msg("rp_map at the old address: %s", strerror(errno));
	assert_ptr_equal(p2, p);
	for (size_t i = 0; i < 4; i++)
		page_is(p2, i, 0xAA, "mapped again at the old address");
	page_is(q, 0, 0x01, "moved page, after the old address was mapped again");
	assert_int_equal(rp_unmap(fx->c, p2, len), 0);
	assert_int_equal(rp_unmap(fx->c, q, len), 0);
	assert_int_equal(munmap(res, 32 * PAGE), 0);
	expect_gauges(fx, r0, b0, "after unmapping everything");
	fx->ok = 1;
}

/* --- moves into places other threads are leaving ---------------------------------- */

/* Threads move their blocks (MREMAP_FIXED | MREMAP_MAYMOVE) into places
 * other threads are leaving. The kernel queues a move's events only after
 * it has dropped mmap_lock, so a REMAP into a place can be read before the
 * REMAP of the move that left it: the daemon must wait for that late one,
 * apply it first, and hold the faults there meanwhile. A free place holds
 * a refpage mapping of its own, which a move onto it unmaps first: the
 * mover then waits for that UNMAP to be read before it queues its REMAP,
 * time enough for another thread to move into the place it left (with free
 * places unmapped the window is too short to hit: tests/kernel-facts,
 * fact g). Everything on one CPU, the daemon too, with a thread that only
 * yields. Every page of a block is checked after each move: one written
 * before the move, the others dropped before it and read from the template
 * after. */

#define SLOTS 12
#define SLOT_PAGES 4
#define LEAVERS 3
#define LEAVE_ROUNDS 1500
#define ABOVE_PLACES ((size_t)256 << 20)

/* What a place is (low bits) and who made it so: the thread that left a
 * place gives it back only if nobody took it since. */
enum { SLOT_FREE, SLOT_OWNED, SLOT_LEAVING, SLOT_TAKEN };
#define SLOT_STATE(kind, who) ((kind) | (who) << 4)

struct places {
	struct fx *fx;
	uint8_t *base;
	uint32_t free_id; /* a free place's template */
	_Atomic int state[SLOTS];
	atomic_int go, stop;
	uint8_t *still; /* a block of the free template nobody moves */
	int forks;
	char fork_why[128];
};

struct leaver {
	struct places *pl;
	int who, own;
	uint8_t tmpl;
	uint32_t id;
	char why[256];
};

static uint8_t *place(const struct places *pl, int s)
{
	return pl->base + (size_t)s * SLOT_PAGES * PAGE;
}

/* A place to move to, taken: one being left if any (| 0x100), else a
 * free one. */
static int place_take(struct places *pl, int who, unsigned *seed)
{
	for (;;) {
		int start = (int)(rand_r(seed) % SLOTS);
		for (int want = SLOT_LEAVING; want >= SLOT_FREE; want -= SLOT_LEAVING - SLOT_FREE)
			for (int k = 0; k < SLOTS; k++) {
				int s = (start + k) % SLOTS, st = atomic_load(&pl->state[s]);
				if ((st & 15) == want &&
				    atomic_compare_exchange_strong(&pl->state[s], &st,
								   SLOT_STATE(SLOT_TAKEN, who)))
					return (want == SLOT_LEAVING ? 0x100 : 0) | s;
			}
		sched_yield();
	}
}

/* Until the move leaving place s is done in the kernel (maybe not yet
 * read by the daemon): an unregistered placeholder there succeeds. */
static int place_wait_left(const struct places *pl, int s)
{
	double end = h_now() + H_DEADLINE_S;

	while (mmap(place(pl, s), SLOT_PAGES * PAGE, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED)
		if (errno != EEXIST || h_now() > end)
			return -1;
	return 0;
}

/* The block just moved to q: page w holds mark, the others the template. */
static int leaver_check(struct leaver *l, const uint8_t *q, size_t w, uint8_t mark, int round)
{
	for (size_t k = 0; k < SLOT_PAGES; k++) {
		uint8_t want = k == w ? mark : l->tmpl;
		long off = h_first_not(q + k * PAGE, PAGE, want);
		if (off >= 0) {
			snprintf(l->why, sizeof(l->why),
				 "thread %d round %d: page %zu of the block "
				 "it moved reads %#x, want %#x",
				 l->who, round, k, q[k * PAGE + (size_t)off], want);
			return -1;
		}
	}
	return 0;
}

static uint8_t leaver_mark(const struct leaver *l, int round)
{
	return (uint8_t)(0x10 + l->who * 0x20 + round % 0x20);
}

/* Before a move (and before it takes a place, so that the move follows
 * the wait for the place at once): every page of l's block dropped but
 * one, written. */
static void leaver_prepare(struct leaver *l, int round)
{
	uint8_t *p = place(l->pl, l->own);

	madvise(p, SLOT_PAGES * PAGE, MADV_DONTNEED);
	memset(p + (size_t)round % SLOT_PAGES * PAGE, leaver_mark(l, round), PAGE);
}

/* What the kernel has at place s, as /proc/self/maps says it ("nothing" if
 * no mapping): tells a place a mapping not ours took from one the daemon's
 * table still holds. */
static void place_occupant(const struct places *pl, int s, char *buf, size_t n)
{
	uintptr_t a = (uintptr_t)place(pl, s), lo, hi;
	char line[256];
	FILE *f = fopen("/proc/self/maps", "re");

	snprintf(buf, n, "nothing");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &lo, &hi) == 2 &&
		    lo < a + SLOT_PAGES * PAGE && hi > a) {
			line[strcspn(line, "\n")] = 0;
			snprintf(buf, n, "%.100s", line);
			break;
		}
	if (f)
		fclose(f);
}

/* One move of l's block into place dst. */
static int leaver_move(struct leaver *l, int dst, int round)
{
	struct places *pl = l->pl;
	const size_t len = SLOT_PAGES * PAGE, w = (size_t)round % SLOT_PAGES;
	uint8_t *p = place(pl, l->own), mark = leaver_mark(l, round);

	atomic_store(&pl->state[l->own], SLOT_STATE(SLOT_LEAVING, l->who));
	uint8_t *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, place(pl, dst));
	if (q == MAP_FAILED) {
		snprintf(l->why, sizeof(l->why), "thread %d round %d: mremap: %s", l->who, round,
			 strerror(errno));
		return -1;
	}
	atomic_store(&pl->state[dst], SLOT_STATE(SLOT_OWNED, l->who));
	if (leaver_check(l, q, w, mark, round) < 0)
		return -1;
	/* Nobody took the place it left: a free place again. */
	int st = SLOT_STATE(SLOT_LEAVING, l->who);
	if (atomic_compare_exchange_strong(&pl->state[l->own], &st,
					   SLOT_STATE(SLOT_TAKEN, l->who))) {
		if (rp_map(pl->fx->c, p, len, RW, MAP_FIXED_NOREPLACE, pl->free_id) == MAP_FAILED) {
			int e = errno;
			char there[128];
			place_occupant(pl, l->own, there, sizeof(there));
			snprintf(l->why, sizeof(l->why),
				 "thread %d round %d: rp_map of the place it "
				 "left: %s; the kernel has there: %.100s",
				 l->who, round, strerror(e), there);
			return -1;
		}
		atomic_store(&pl->state[l->own], SLOT_FREE);
	}
	l->own = dst;
	return 0;
}

static void *leaver_main(void *arg)
{
	struct leaver *l = arg;
	unsigned seed = (unsigned)l->who * 7919u + 1;

	/* Every thread's stack is mapped before a place is left: one made
	 * later would take it. */
	while (!atomic_load(&l->pl->go))
		sched_yield();
	for (int i = 0; i < LEAVE_ROUNDS; i++) {
		leaver_prepare(l, i);
		int t = place_take(l->pl, l->who, &seed), dst = t & 0xff;
		if ((t & 0x100) && place_wait_left(l->pl, dst) < 0) {
			char there[128];
			place_occupant(l->pl, dst, there, sizeof(there));
			snprintf(
				l->why, sizeof(l->why),
				"thread %d round %d: place %d was never left; the kernel has there: %.100s",
				l->who, i, dst, there);
			break;
		}
		if (leaver_move(l, dst, i) < 0)
			break;
	}
	return NULL;
}

static void *yielder_main(void *arg)
{
	struct places *pl = arg;

	while (!atomic_load(&pl->stop))
		sched_yield();
	return NULL;
}

/* Forks all along: a fork read while events wait for a late one takes its
 * place among them (the child's table comes when they reach it). The
 * child reads a block nobody moves and is gone. */
static void *forker_main(void *arg)
{
	struct places *pl = arg;

	while (!atomic_load(&pl->go))
		sched_yield();
	while (!atomic_load(&pl->stop) && !pl->fork_why[0]) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(h_first_not(pl->still, SLOT_PAGES * PAGE, 0xEE) >= 0);
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
			snprintf(pl->fork_why, sizeof(pl->fork_why),
				 "a fork child read the still "
				 "block wrong, or did not end well (status %#x)",
				 pid < 0 ? 0 : st);
		pl->forks++;
	}
	return NULL;
}

/* Blocks in the first LEAVERS places, free places' mappings in the rest. */
static void places_map(struct places *pl, struct leaver *l)
{
	const size_t len = SLOT_PAGES * PAGE;

	/* A hole a move leaves may be the highest free gap, where the
	 * process's next mmap(NULL) goes (a thread stack, a sanitizer
	 * runtime's own allocator): a free gap above the places takes those
	 * instead. (Once, under TSan in CI, an rp_map of a place just left
	 * said EEXIST; the failure now says whether the kernel had a mapping
	 * there or the daemon's table a range.) */
	uint8_t *r = mmap(NULL, ABOVE_PLACES + SLOTS * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	assert_ptr_not_equal(r, MAP_FAILED);
	assert_int_equal(munmap(r + SLOTS * len, ABOVE_PLACES), 0);
	pl->base = r;
	for (int s = 0; s < SLOTS; s++) {
		uint32_t id = s < LEAVERS ? l[s].id : pl->free_id;
		uint8_t *p = rp_map(pl->fx->c, place(pl, s), len, RW, MAP_FIXED, id);
		if (p != place(pl, s))
			fail_msg("rp_map of place %d: %s", s, strerror(errno));
		atomic_init(&pl->state[s], s < LEAVERS ? SLOT_STATE(SLOT_OWNED, s) : SLOT_FREE);
	}
}

static void run_leavers(struct fx *fx, struct places *pl, struct leaver *l)
{
	pthread_t th[LEAVERS + 2];

	pin_one_cpu(fx);
	cpu_set_t one;
	assert_int_equal(sched_getaffinity(0, sizeof(one), &one), 0);
	pin_daemon(fx, &one);
	for (int t = 0; t < LEAVERS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, leaver_main, &l[t]), 0);
	assert_int_equal(pthread_create(&th[LEAVERS], NULL, yielder_main, pl), 0);
	assert_int_equal(pthread_create(&th[LEAVERS + 1], NULL, forker_main, pl), 0);
	atomic_store(&pl->go, 1);
	for (int t = 0; t < LEAVERS; t++)
		assert_int_equal(pthread_join(th[t], NULL), 0);
	atomic_store(&pl->stop, 1);
	for (int t = LEAVERS; t < LEAVERS + 2; t++)
		assert_int_equal(pthread_join(th[t], NULL), 0);
	pin_daemon(fx, &fx->cpus);
	assert_int_equal(sched_setaffinity(0, sizeof(fx->cpus), &fx->cpus), 0);
	fx->pinned = 0;
}

static void test_moves_into_places_being_left(void **state)
{
	struct fx *fx = *state;
	struct places *pl = calloc(1, sizeof(*pl));
	struct leaver *l = calloc(LEAVERS, sizeof(*l));
	struct h_stats s;
	uint64_t r0, b0;

	assert_non_null(pl);
	assert_non_null(l);
	read_gauges(fx, &r0, &b0);
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	uint64_t reordered0 = h_stat(&s, "events_reordered");
	pl->fx = fx;
	pl->free_id = fill_template(fx, 0xEE);
	for (int t = 0; t < LEAVERS; t++) {
		l[t] = (struct leaver){
			.pl = pl, .who = t, .own = t, .tmpl = (uint8_t)(0xA1 + t * 0x11)
		};
		l[t].id = fill_template(fx, l[t].tmpl);
	}
	places_map(pl, l);
	pl->still = map(fx, SLOT_PAGES, pl->free_id);
	run_leavers(fx, pl, l);
	for (int t = 0; t < LEAVERS; t++)
		if (l[t].why[0])
			fail_msg("%s", l[t].why);
	if (pl->fork_why[0])
		fail_msg("%s", pl->fork_why);
	/* How often the order had to be put right depends on the scheduler:
	 * said, not checked. */
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	printf("  %d moves; late events applied before events read earlier: %llu; events that "
	       "waited for one past the cap: %s; forks: %d, %s read while events waited\n",
	       LEAVERS * LEAVE_ROUNDS,
	       (unsigned long long)(h_stat(&s, "events_reordered") - reordered0),
	       h_daemon_log_has(&fx->d, "applied in the order they came") ? "some (see the log)"
									  : "none",
	       pl->forks,
	       h_daemon_log_has(&fx->d, "its table after the events waiting") ? "some" : "none");
	assert_int_equal(rp_unmap(fx->c, pl->base, SLOTS * SLOT_PAGES * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, pl->still, SLOT_PAGES * PAGE), 0);
	for (int t = 0; t < LEAVERS; t++)
		assert_int_equal(rp_template_release(fx->c, l[t].id), 0);
	assert_int_equal(rp_template_release(fx->c, pl->free_id), 0);
	expect_gauges(fx, r0, b0, "after unmapping every place");
	free(l);
	free(pl);
	fx->ok = 1;
}

/* --- templates ----------------------------------------------------------------------- */

static void test_two_templates(void **state)
{
	struct fx *fx = *state;
	uint8_t tp[PAGE];
	const size_t n = 32;
	struct h_stats s;

	assert_int_equal(h_stats_read(fx->c, &s), 0);
	uint64_t t0 = h_stat(&s, "templates");
	h_fill_page(tp, 4);
	uint32_t id55 = fill_template(fx, 0x55), idc = content_template(fx, tp);
	uint8_t *a = map(fx, n, fx->aa), *b = map(fx, n, id55), *c = map(fx, n, idc);
	/* Interleaved faults on all three. */
	for (size_t i = 0; i < n; i += 2) {
		page_is(a, i, 0xAA, "template 0xAA");
		page_is(b, i, 0x55, "template 0x55");
		page_eq(c, i, tp, "content template");
	}
	memset(b + 2 * PAGE, 0x22, PAGE);
	page_is(a, 2, 0xAA, "a write in another template's mapping");
	/* Releasing a template leaves mappings that use it working, but
	 * takes its id away. */
	assert_int_equal(rp_template_release(fx->c, id55), 0);
	assert_int_equal(rp_template_release(fx->c, idc), 0);
	for (size_t i = 1; i < n; i += 2) {
		page_is(b, i, 0x55, "released template, live mapping");
		page_eq(c, i, tp, "released content template, live mapping");
		page_is(a, i, 0xAA, "template 0xAA");
	}
	page_is(b, 2, 0x22, "written page");
	errno = 0;
	assert_ptr_equal(rp_map(fx->c, NULL, PAGE, RW, 0, id55), MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(rp_unmap(fx->c, a, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, b, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, c, n * PAGE), 0);
	/* The last user gone, the store forgets them. */
	struct h_want w = { "templates", t0 };
	assert_int_equal(h_wait_stats(fx->c, &w, 1, H_DEADLINE_S), 0);
	fx->ok = 1;
}

static void test_refpage_mmap(void **state)
{
	struct fx *fx = *state;
	const size_t n = 16;
	uint8_t want[PAGE];

	/* refpage_mmap's process-wide connection finds the daemon here. */
	setenv("REFPAGED_SOCKET", fx->d.sock, 1);
	uint8_t *src = mmap(NULL, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(src, MAP_FAILED);
	h_fill_page(src, 5);
	memcpy(want, src, PAGE);
	uint8_t *p = refpage_mmap(NULL, n * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, src);
	if (p == MAP_FAILED)
		fail_msg("refpage_mmap: %s", strerror(errno));
	/* The contents were taken at the call. */
	memset(src, 0, PAGE);
	for (size_t i = 0; i < n; i++)
		page_eq(p, i, want, "refpage_mmap page");
	/* A pattern page, and a source that is itself an untouched refpage. */
	memset(src, 0x3C, PAGE);
	uint8_t *q = refpage_mmap(NULL, n * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, src);
	assert_ptr_not_equal(q, MAP_FAILED);
	uint8_t *r = map(fx, 4, fx->aa);
	uint8_t *t = refpage_mmap(NULL, n * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, r + 2 * PAGE);
	assert_ptr_not_equal(t, MAP_FAILED);
	memset(q + 3 * PAGE, 0x33, PAGE);
	for (size_t i = 0; i < n; i++) {
		page_is(q, i, i == 3 ? 0x33 : 0x3C, "refpage_mmap of a pattern page");
		page_is(t, i, 0xAA, "refpage_mmap of an untouched refpage");
		page_eq(p, i, want, "the first mapping, unchanged");
	}
	errno = 0;
	assert_ptr_equal(refpage_mmap(NULL, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS, src), MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	/* Plain munmap: the daemon follows. */
	assert_int_equal(munmap(p, n * PAGE), 0);
	assert_int_equal(munmap(q, n * PAGE), 0);
	assert_int_equal(munmap(t, n * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, r, 4 * PAGE), 0);
	munmap(src, PAGE);
	fx->ok = 1;
}

/* rp_map takes mmap's flags: private ones are fine whether or not the
 * caller spells out MAP_PRIVATE|MAP_ANONYMOUS; shared and huge are not. */
static void test_map_flags(void **state)
{
	static const int good[] = { 0, MAP_PRIVATE, MAP_PRIVATE | MAP_ANONYMOUS, MAP_NORESERVE,
				    MAP_POPULATE };
	static const int bad[] = { MAP_SHARED, MAP_SHARED | MAP_ANONYMOUS, MAP_SHARED_VALIDATE,
				   MAP_PRIVATE | MAP_HUGETLB };
	struct fx *fx = *state;

	for (size_t k = 0; k < ARRAY_LEN(good); k++) {
		uint8_t *p = rp_map(fx->c, NULL, 4 * PAGE, RW, good[k], fx->aa);
		if (p == MAP_FAILED)
			fail_msg("rp_map flags %#x: %s", good[k], strerror(errno));
		page_is(p, 2, 0xAA, "rp_map with private flags");
		assert_int_equal(rp_unmap(fx->c, p, 4 * PAGE), 0);
	}
	for (size_t k = 0; k < ARRAY_LEN(bad); k++) {
		errno = 0;
		assert_ptr_equal(rp_map(fx->c, NULL, 4 * PAGE, RW, bad[k], fx->aa), MAP_FAILED);
		assert_int_equal(errno, EINVAL);
	}
	fx->ok = 1;
}

/* --- 6. threads ------------------------------------------------------------------------ */

#define NTHREADS 16
#define TPAGES 256 /* per shared mapping */
#define OWN_PAGES 16

struct tshared;

struct targ {
	struct tshared *sh;
	int idx;
};

struct tshared {
	pthread_barrier_t bar;
	uint8_t *same; /* TPAGES pages, content template */
	uint8_t *own;  /* NTHREADS * OWN_PAGES pages, 0xAA */
	uint8_t tp[PAGE];
	atomic_int bad;
	char why[256];
	struct targ args[NTHREADS];
};

static void tbad(struct tshared *sh, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tbad(struct tshared *sh, const char *fmt, ...)
{
	if (atomic_fetch_add(&sh->bad, 1) == 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(sh->why, sizeof(sh->why), fmt, ap);
		va_end(ap);
	}
}

/* Everyone reads every page of the shared mapping, in the same order or
 * starting at their own offset. */
static void t_read_same(struct tshared *sh, int idx, int stagger)
{
	for (size_t k = 0; k < TPAGES; k++) {
		size_t i = stagger ? (k + (size_t)idx * 16) % TPAGES : k;
		long off = h_first_diff(sh->same + i * PAGE, sh->tp, PAGE);
		if (off >= 0)
			tbad(sh, "thread %d: shared page %zu byte %ld wrong", idx, i, off);
	}
}

/* Everyone writes its own byte of every shared page, racing the first
 * fault of each; then every page must hold all the writes. */
static void t_write_same(struct tshared *sh, int idx)
{
	for (size_t i = 0; i < TPAGES; i++)
		sh->same[i * PAGE + (size_t)idx * 8] = (uint8_t)(idx + 1);
}

static void t_check_same(struct tshared *sh, int idx)
{
	uint8_t want[PAGE];

	memcpy(want, sh->tp, PAGE);
	for (int t = 0; t < NTHREADS; t++)
		want[t * 8] = (uint8_t)(t + 1);
	for (size_t k = 0; k < TPAGES; k++) {
		size_t i = (k + (size_t)idx * 16) % TPAGES;
		long off = h_first_diff(sh->same + i * PAGE, want, PAGE);
		if (off >= 0)
			tbad(sh, "thread %d: shared page %zu byte %ld lost a write", idx, i, off);
	}
}

/* Different pages: each thread reads half its pages and writes the rest. */
static void t_own(struct tshared *sh, int idx)
{
	uint8_t *p = sh->own + (size_t)idx * OWN_PAGES * PAGE;

	for (size_t i = 0; i < OWN_PAGES; i++) {
		if (i % 2)
			memset(p + i * PAGE, idx + 1, PAGE);
		else if (h_first_not(p + i * PAGE, PAGE, 0xAA) >= 0)
			tbad(sh, "thread %d: own page %zu not the template", idx, i);
	}
	for (size_t i = 0; i < OWN_PAGES; i++)
		if (h_first_not(p + i * PAGE, PAGE, i % 2 ? (uint8_t)(idx + 1) : 0xAA) >= 0)
			tbad(sh, "thread %d: own page %zu wrong after writes", idx, i);
}

static void *tmain(void *arg)
{
	struct targ *a = arg;
	struct tshared *sh = a->sh;

	pthread_barrier_wait(&sh->bar);
	t_read_same(sh, a->idx, 0);
	pthread_barrier_wait(&sh->bar); /* main drops the pages */
	pthread_barrier_wait(&sh->bar);
	t_read_same(sh, a->idx, 1);
	pthread_barrier_wait(&sh->bar); /* main drops the pages */
	pthread_barrier_wait(&sh->bar);
	t_write_same(sh, a->idx);
	pthread_barrier_wait(&sh->bar);
	t_check_same(sh, a->idx);
	t_own(sh, a->idx);
	return NULL;
}

static void drop(struct tshared *sh)
{
	pthread_barrier_wait(&sh->bar);
	assert_int_equal(madvise(sh->same, TPAGES * PAGE, MADV_DONTNEED), 0);
	pthread_barrier_wait(&sh->bar);
}

static void test_threads(void **state)
{
	struct fx *fx = *state;
	pthread_t th[NTHREADS];
	/* On the heap, and leaked if a thread is stuck: the threads use it
	 * after this frame is gone then. */
	struct tshared *sh = calloc(1, sizeof(*sh));

	assert_non_null(sh);
	h_fill_page(sh->tp, 6);
	uint32_t id = content_template(fx, sh->tp);
	sh->same = map(fx, TPAGES, id);
	sh->own = map(fx, NTHREADS * OWN_PAGES, fx->aa);
	pthread_barrier_init(&sh->bar, NULL, NTHREADS + 1);
	for (int i = 0; i < NTHREADS; i++) {
		sh->args[i] = (struct targ){ sh, i };
		assert_int_equal(pthread_create(&th[i], NULL, tmain, &sh->args[i]), 0);
	}
	pthread_barrier_wait(&sh->bar); /* go: same order */
	drop(sh);                       /* go: staggered */
	drop(sh);                       /* go: writes */
	pthread_barrier_wait(&sh->bar); /* go: checks */
	/* Nobody may wait forever: join against a deadline. */
	for (int i = 0; i < NTHREADS; i++) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)H_DEADLINE_S;
		int r = pthread_timedjoin_np(th[i], NULL, &ts);
		if (r)
			fail_msg("thread %d still running after %.0f s: %s", i, H_DEADLINE_S,
				 strerror(r));
	}
	if (atomic_load(&sh->bad))
		fail_msg("%d wrong reads, first: %s", atomic_load(&sh->bad), sh->why);
	pthread_barrier_destroy(&sh->bar);
	assert_int_equal(rp_unmap(fx->c, sh->same, TPAGES * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, sh->own, NTHREADS * OWN_PAGES * PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, id), 0);
	free(sh);
	fx->ok = 1;
}

/* --- 5. fork ----------------------------------------------------------------------------- */

/* Checks in a fork child: no cmocka there, a failure is a message and
 * a non-zero exit status. */
#define CHILD_CHECK(cond, what)                                                      \
	do {                                                                         \
		if (!(cond)) {                                                       \
			fprintf(stderr, "fork child %d: %s\n", (int)getpid(), what); \
			bad++;                                                       \
		}                                                                    \
	} while (0)

static int cpage(const uint8_t *p, size_t i, uint8_t b)
{
	return h_first_not(p + i * PAGE, PAGE, b) < 0;
}

static int wait_child(pid_t pid)
{
	int st = h_reap(pid, H_DEADLINE_S);

	if (st == -1) {
		kill(pid, SIGKILL);
		h_reap(pid, H_DEADLINE_S);
		return -1;
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int grandchild(const uint8_t *p)
{
	int bad = 0;

	CHILD_CHECK(cpage(p, 0, 0x66), "grandchild: the child's write");
	CHILD_CHECK(cpage(p, 1, 0xAA), "grandchild: a page the parent read");
	CHILD_CHECK(cpage(p, 7, 0xAA), "grandchild: a page nobody touched");
	CHILD_CHECK(cpage(p, 8, 0xAA), "grandchild: a page the child dropped");
	return bad;
}

static int fork_child(uint8_t *p, int go)
{
	int bad = 0;
	char ch;

	CHILD_CHECK(cpage(p, 0, 0x11), "the parent's write before fork");
	CHILD_CHECK(cpage(p, 1, 0xAA), "a page the parent read");
	CHILD_CHECK(cpage(p, 2, 0xAA), "a page nobody touched");
	CHILD_CHECK(read(go, &ch, 1) == 1, "sync");
	CHILD_CHECK(cpage(p, 0, 0x11) && cpage(p, 4, 0xAA), "the parent's writes after fork");
	memset(p, 0x66, PAGE);
	memset(p + 5 * PAGE, 0x55, PAGE);
	CHILD_CHECK(cpage(p, 0, 0x66) && cpage(p, 5, 0x55), "its own writes");
	/* Dropped in the child: the template again, served on the child's
	 * own uffd. */
	memset(p + 8 * PAGE, 0x88, PAGE);
	CHILD_CHECK(madvise(p + 8 * PAGE, PAGE, MADV_DONTNEED) == 0, "madvise");
	CHILD_CHECK(cpage(p, 8, 0xAA), "MADV_DONTNEED in the child");
	fflush(NULL);
	pid_t g = fork();
	if (g == 0)
		_exit(grandchild(p));
	CHILD_CHECK(g > 0 && wait_child(g) == 0, "grandchild");
	return bad;
}

static void test_fork(void **state)
{
	struct fx *fx = *state;
	const size_t n = 16;
	struct h_want before[ARRAY_LEN(held)];
	int go[2];

	snapshot(fx, before);
	uint8_t *p = map(fx, n, fx->aa);
	memset(p, 0x11, PAGE);
	page_is(p, 1, 0xAA, "read before fork");
	assert_int_equal(pipe(go), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(go[1]);
		_exit(fork_child(p, go[0]));
	}
	close(go[0]);
	memset(p, 0x99, PAGE);
	memset(p + 4 * PAGE, 0x44, PAGE);
	assert_int_equal(write(go[1], "g", 1), 1);
	close(go[1]);
	assert_int_equal(wait_child(pid), 0);
	page_is(p, 0, 0x99, "the parent's own write");
	page_is(p, 4, 0x44, "the parent's own write");
	page_is(p, 5, 0xAA, "a page only the child wrote");
	page_is(p, 7, 0xAA, "a page nobody touched");
	assert_int_equal(rp_unmap(fx->c, p, n * PAGE), 0);
	expect_snapshot(fx, before, "after the child and grandchild exited");
	fx->ok = 1;
}

/* The library from a fork child: the parent's template id works on the
 * child's own connection, and so do new templates. */
static int lib_child(rp_client *c, uint32_t aa)
{
	int bad = 0;
	uint8_t tp[PAGE];
	uint32_t id77, idc;

	uint8_t *q = rp_map(c, NULL, 8 * PAGE, RW, 0, aa);
	CHILD_CHECK(q != MAP_FAILED, "rp_map with the parent's template id");
	if (q != MAP_FAILED)
		CHILD_CHECK(cpage(q, 5, 0xAA), "a mapping of the parent's template");
	CHILD_CHECK(rp_template_fill(c, 0x77, &id77) == 0, "rp_template_fill in the child");
	h_fill_page(tp, 8);
	CHILD_CHECK(rp_template_create(c, tp, &idc) == 0, "rp_template_create in the child");
	uint8_t *r = rp_map(c, NULL, 4 * PAGE, RW, 0, id77);
	uint8_t *s = rp_map(c, NULL, 4 * PAGE, RW, 0, idc);
	CHILD_CHECK(r != MAP_FAILED && s != MAP_FAILED, "rp_map of the child's templates");
	if (r != MAP_FAILED && s != MAP_FAILED) {
		CHILD_CHECK(cpage(r, 3, 0x77), "the child's pattern template");
		CHILD_CHECK(h_first_diff(s + 2 * PAGE, tp, PAGE) < 0,
			    "the child's content template");
	}
	uint64_t v[PROTO_STATS_MAX];
	CHILD_CHECK(rp_stats(c, v, NULL, (int)PROTO_STATS_MAX) > 0, "rp_stats in the child");
	CHILD_CHECK(rp_alive(c) == 1, "rp_alive in the child");
	/* And in a grandchild, from a client the child already used. */
	fflush(NULL);
	pid_t g = fork();
	if (g == 0) {
		uint8_t *t = rp_map(c, NULL, 4 * PAGE, RW, 0, id77);
		_exit(t != MAP_FAILED && cpage(t, 1, 0x77) ? 0 : 1);
	}
	CHILD_CHECK(g > 0 && wait_child(g) == 0, "rp_map in a grandchild");
	return bad;
}

static void test_fork_library(void **state)
{
	struct fx *fx = *state;
	struct h_want before[ARRAY_LEN(held)];

	snapshot(fx, before);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(lib_child(fx->c, fx->aa));
	assert_int_equal(wait_child(pid), 0);
	/* The parent's connection was not disturbed. */
	uint8_t *p = map(fx, 4, fx->aa);
	page_is(p, 2, 0xAA, "the parent after its child used the library");
	assert_int_equal(rp_unmap(fx->c, p, 4 * PAGE), 0);
	assert_int_equal(rp_alive(fx->c), 1);
	expect_snapshot(fx, before, "after the children's connections closed");
	fx->ok = 1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_read_fill_pattern),
		T(test_read_content_template),
		T(test_write_private),
		T(test_madvise_dontneed),
		T(test_rp_unmap_partial),
		T(test_munmap_partial),
		T(test_munmap_then_map_same_address),
		T(test_map_while_other_thread_munmaps),
		T(test_map_while_other_thread_mremaps),
		T(test_two_threads_move_blocks),
		T(test_mremap_dontunmap),
		T(test_moves_into_places_being_left),
		T(test_mremap_fixed),
		T(test_mremap_onto_refpage),
		T(test_mremap_grow_in_place),
		T(test_mremap_grow_moving),
		T(test_two_templates),
		T(test_map_flags),
		T(test_refpage_mmap),
		T(test_threads),
		T(test_fork),
		T(test_fork_library),
	};
	char why[256];

	if (!h_uffd_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	return cmocka_run_group_tests_name("semantics", tests, group_setup, group_teardown);
}
