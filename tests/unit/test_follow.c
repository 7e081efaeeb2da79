/* daemon/follow.c: records of moved sources and late events put back in
 * order, over a real range table, with the event sequences the kernel can
 * produce (docs/design.md, "Events that arrive late"). Templates are small
 * integers; page n is at P(n). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "follow.h"
#include "range.h"

#define PG 4096u
#define P(n) (0x10000000u + (uint64_t)(n)*PG)
#define CAP 0.1

/* One address space: its table, what follows it, its counts. */
struct side {
	struct range_table rt;
	struct follow f;
	struct follow_count n;
	int born;
	int refused; /* told its fork cannot give it a table (ops->fork, !ok) */
};

static void tmpl_noop(void *t)
{
	(void)t;
}

static const struct range_ops tmpl_ops = { .get = tmpl_noop, .put = tmpl_noop };

static long long t_unmap(void *ctx, uint64_t s, uint64_t e)
{
	struct side *x = ctx;
	size_t max = x->rt.max;

	x->rt.max = 0;
	long long r = range_remove(&x->rt, s, e, NULL, NULL);
	x->rt.max = max;
	return r;
}

static int t_copy(void *ctx, uint64_t from, uint64_t to, uint64_t len)
{
	struct side *x = ctx;

	return range_copy(&x->rt, from, to, len);
}

static const struct follow_ops side_ops;

static void t_fork(void *ctx, void *arg, int ok)
{
	struct side *parent = ctx, *child = arg;

	assert_false(child->born || child->refused); /* once per fork */
	if (!ok) {
		child->refused = 1;
		return;
	}
	assert_int_equal(range_clone(&child->rt, &parent->rt), 0);
	assert_int_equal(follow_forget_recorded(&parent->f, &side_ops, child, 0, UINT64_MAX), 0);
	follow_born(&child->f);
	child->born = 1;
}

static void *t_alloc(void *ctx, size_t size)
{
	(void)ctx;
	return malloc(size);
}

static void t_free(void *ctx, void *p)
{
	(void)ctx;
	free(p);
}

static const struct follow_ops side_ops = {
	.unmap = t_unmap,
	.copy = t_copy,
	.fork = t_fork,
	.alloc = t_alloc,
	.free = t_free,
};

static struct side *side_new(void)
{
	struct side *x = calloc(1, sizeof(*x));

	assert_non_null(x);
	range_table_init(&x->rt, 0, &tmpl_ops, NULL);
	follow_init(&x->f, &x->rt, &side_ops, x);
	return x;
}

static void side_free(struct side *x)
{
	follow_fini(&x->f);
	range_table_fini(&x->rt);
	free(x);
}

/* pages [n, n + len) map to template t */
static void map(struct side *x, unsigned n, unsigned len, unsigned t)
{
	assert_int_equal(range_insert(&x->rt, P(n), P(n + len), (void *)(uintptr_t)t), 0);
}

/* The template of page n, 0 if none. */
static unsigned at(const struct side *x, unsigned n)
{
	struct range_piece p;

	return range_lookup(&x->rt, P(n), &p) ? (unsigned)(uintptr_t)p.tmpl : 0;
}

static void expect_pages(const struct side *x, unsigned n, unsigned len, unsigned t)
{
	for (unsigned i = n; i < n + len; i++)
		if (at(x, i) != t)
			fail_msg("page %u: template %u, want %u", i, at(x, i), t);
}

static void remap(struct side *x, unsigned from, unsigned to, unsigned len, double t)
{
	struct follow_ev e = {
		.type = FOLLOW_REMAP, .from = P(from), .to = P(to), .len = len * PG
	};

	assert_int_equal(follow_event(&x->f, &e, t, CAP, &x->n), 0);
}

static void unmap(struct side *x, unsigned n, unsigned len, double t)
{
	struct follow_ev e = { .type = FOLLOW_UNMAP, .from = P(n), .to = P(n + len) };

	assert_int_equal(follow_event(&x->f, &e, t, CAP, &x->n), 0);
}

static void fork_ev(struct side *x, struct side *child, double t)
{
	struct follow_ev e = { .type = FOLLOW_FORK, .child = child };

	assert_int_equal(follow_event(&x->f, &e, t, CAP, &x->n), 0);
}

static int holds(const struct side *x, unsigned n, int op)
{
	return follow_holds(&x->f, P(n), P(n + 1), op);
}

/* A (template 1) at pages 0-3, B (2) at 20-23; A moves to 40, B into A's
 * old place. */
enum { OLD = 0, B = 20, NEWA = 40, C = 60, LEN = 4 };

static struct side *two_blocks(void)
{
	struct side *x = side_new();

	map(x, OLD, LEN, 1);
	map(x, B, LEN, 2);
	return x;
}

static void expect_moved(const struct side *x)
{
	expect_pages(x, NEWA, LEN, 1);
	expect_pages(x, OLD, LEN, 2);
	expect_pages(x, B, LEN, 0);
	assert_int_equal(range_count(&x->rt), 2);
	assert_false(follow_busy(&x->f));
}

/* --- in order --------------------------------------------------------------------- */

static void test_in_order(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, OLD, NEWA, LEN, 0);
	unmap(x, OLD, LEN, 0);
	remap(x, B, OLD, LEN, 0);
	unmap(x, B, LEN, 0);
	expect_moved(x);
	assert_int_equal(x->n.reordered, 0);
	assert_int_equal(x->n.expired, 0);
	side_free(x);
}

/* B moves in between A's REMAP and A's UNMAP, over all of A's old range:
 * the UNMAP must leave B's range alone even though B took every part of
 * the record. */
static void test_move_in_before_unmap(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, OLD, NEWA, LEN, 0);
	remap(x, B, OLD, LEN, 0);
	unmap(x, OLD, LEN, 0);
	unmap(x, B, LEN, 0);
	expect_moved(x);
	assert_int_equal(x->n.reordered, 0);
	side_free(x);
}

/* MREMAP_FIXED onto a registered mapping: its UNMAP comes first (the
 * mover's own, read before its REMAP), so the destination is empty. */
static void test_fixed_onto_mapping(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	unmap(x, OLD, LEN, 0);
	remap(x, B, OLD, LEN, 0);
	unmap(x, B, LEN, 0);
	expect_pages(x, OLD, LEN, 2);
	assert_int_equal(range_count(&x->rt), 1);
	assert_false(follow_busy(&x->f));
	side_free(x);
}

/* MREMAP_DONTUNMAP: no UNMAP; the old range keeps its template until it
 * is unmapped, exactly or in part. */
static void test_dontunmap(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, OLD, NEWA, LEN, 0);
	expect_pages(x, OLD, LEN, 1);
	expect_pages(x, NEWA, LEN, 1);
	unmap(x, OLD, 1, 0);
	expect_pages(x, OLD, 1, 0);
	expect_pages(x, OLD + 1, LEN - 1, 1);
	unmap(x, OLD + 1, LEN - 1, 0);
	expect_pages(x, OLD, LEN, 0);
	/* The record went with its last part: an UNMAP of exactly its range
	 * later forgets what is there. */
	map(x, OLD, LEN, 3);
	unmap(x, OLD, LEN, 0);
	expect_pages(x, OLD, LEN, 0);
	assert_false(follow_busy(&x->f));
	side_free(x);
}

/* --- late events ------------------------------------------------------------------- */

/* A moves out, B moves in, B's events are read first. */
static void test_late_remap(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, B, OLD, LEN, 0);
	assert_true(follow_busy(&x->f));
	expect_pages(x, OLD, LEN, 1); /* nothing applied yet */
	expect_pages(x, B, LEN, 2);
	/* Faults and requests in what the waiting REMAP touches wait;
	 * elsewhere they go on. */
	assert_true(holds(x, OLD, 0));
	assert_true(holds(x, B + 1, 0));
	assert_true(holds(x, NEWA, 0)); /* no piece there: test_hold_unknown */
	assert_false(holds(x, C, 1));
	assert_true(follow_deadline(&x->f, CAP) > 0.09);
	unmap(x, B, LEN, 0.001);
	remap(x, OLD, NEWA, LEN, 0.002);
	expect_moved(x);
	unmap(x, OLD, LEN, 0.003); /* A's own UNMAP: B's range stays */
	expect_moved(x);
	assert_int_equal(x->n.reordered, 1);
	assert_int_equal(x->n.expired, 0);
	assert_true(follow_deadline(&x->f, CAP) == 0);
	side_free(x);
}

/* A's block was unmapped, B moved in, A's UNMAP comes last. */
static void test_late_unmap(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, B, OLD, LEN, 0);
	unmap(x, B, LEN, 0);
	assert_true(follow_busy(&x->f));
	unmap(x, OLD, LEN, 0);
	expect_pages(x, OLD, LEN, 2);
	expect_pages(x, B, LEN, 0);
	assert_int_equal(range_count(&x->rt), 1);
	assert_int_equal(x->n.reordered, 1);
	side_free(x);
}

/* A partial overlap: B lands on the second half of A's old range; only
 * that half is displaced, and A's late REMAP of the whole range settles
 * it. */
static void test_late_remap_partial(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, B, OLD + 2, 2, 0);
	assert_true(follow_busy(&x->f));
	remap(x, OLD, NEWA, LEN, 0);
	expect_pages(x, NEWA, LEN, 1);
	expect_pages(x, OLD + 2, 2, 2);
	unmap(x, OLD, LEN, 0);
	expect_pages(x, OLD, 2, 0);
	expect_pages(x, OLD + 2, 2, 2);
	assert_int_equal(x->n.reordered, 1);
	side_free(x);
}

/* Three movers in a chain: A o1 -> n1, B o2 -> o1, C o3 -> o2, read in
 * the opposite order. */
static void test_chain(void **state)
{
	struct side *x = side_new();
	enum { O1 = 0, O2 = 10, O3 = 20, N1 = 30 };

	(void)state;
	map(x, O1, LEN, 1);
	map(x, O2, LEN, 2);
	map(x, O3, LEN, 3);
	remap(x, O3, O2, LEN, 0);
	unmap(x, O3, LEN, 0);
	remap(x, O2, O1, LEN, 0);
	unmap(x, O2, LEN, 0);
	assert_true(follow_busy(&x->f));
	remap(x, O1, N1, LEN, 0);
	unmap(x, O1, LEN, 0);
	expect_pages(x, N1, LEN, 1);
	expect_pages(x, O1, LEN, 2);
	expect_pages(x, O2, LEN, 3);
	expect_pages(x, O3, LEN, 0);
	assert_int_equal(range_count(&x->rt), 3);
	assert_int_equal(x->n.reordered, 2);
	assert_false(follow_busy(&x->f));
	side_free(x);
}

/* B moves into A's old place and on again (into C's, which C left for
 * B's) before A's REMAP comes: B's second move touches what came after B's
 * first, so it is not taken for A's late one, nor is its UNMAP. */
static void test_mover_moves_on(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	map(x, C, LEN, 3);
	remap(x, B, OLD, LEN, 0); /* waits: A's block is there */
	unmap(x, B, LEN, 0);
	remap(x, C, B, LEN, 0); /* C into B's old place */
	unmap(x, C, LEN, 0);
	remap(x, OLD, C, LEN, 0); /* B on, into C's */
	unmap(x, OLD, LEN, 0);
	assert_true(follow_busy(&x->f));
	remap(x, OLD, NEWA, LEN, 0); /* A's, late */
	unmap(x, OLD, LEN, 0);
	expect_pages(x, NEWA, LEN, 1);
	expect_pages(x, C, LEN, 2);
	expect_pages(x, B, LEN, 3);
	expect_pages(x, OLD, LEN, 0);
	assert_int_equal(range_count(&x->rt), 3);
	assert_int_equal(x->n.reordered, 1);
	side_free(x);
}

/* --- bounds ------------------------------------------------------------------------ */

/* No late event: at the cap, in the order they came (today's result). */
static void test_cap(void **state)
{
	struct side *x = two_blocks();
	struct follow_count n = { 0, 0 };

	(void)state;
	remap(x, B, OLD, LEN, 1.0);
	unmap(x, B, LEN, 1.05);
	assert_int_equal(follow_settle(&x->f, 1.0 + CAP / 2, CAP, &n), 0);
	assert_true(follow_busy(&x->f));
	assert_true(follow_deadline(&x->f, CAP) > 1.0 + CAP - 1e-9 &&
		    follow_deadline(&x->f, CAP) < 1.0 + CAP + 1e-9);
	assert_int_equal(follow_settle(&x->f, 1.0 + CAP, CAP, &n), 0);
	assert_false(follow_busy(&x->f));
	expect_pages(x, OLD, LEN, 2);
	expect_pages(x, B, LEN, 0);
	assert_int_equal(n.expired, 1);
	assert_int_equal(n.reordered, 0);
	side_free(x);
}

/* A full queue makes room by applying its oldest event as it came. */
static void test_queue_full(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	remap(x, B, OLD, LEN, 0);
	for (unsigned i = 0; i < FOLLOW_QUEUE; i++)
		unmap(x, 1000 + i, 1, 0);
	assert_int_equal(x->n.expired, 1);
	assert_false(follow_busy(&x->f)); /* the rest needed nothing */
	expect_pages(x, OLD, LEN, 2);
	side_free(x);
}

/* Events that say two blocks moved into each other's place, which no order
 * of changes gives: nothing is taken for a late event, and the cap
 * applies them as they came. */
static void test_contradiction(void **state)
{
	struct side *x = two_blocks();
	struct follow_count n = { 0, 0 };

	(void)state;
	remap(x, B, OLD, LEN, 0);
	remap(x, OLD, B, LEN, 0);
	assert_true(follow_busy(&x->f));
	assert_int_equal(follow_settle(&x->f, CAP, CAP, &n), 0);
	assert_false(follow_busy(&x->f));
	assert_true(n.expired >= 1);
	side_free(x);
}

/* --- forks ------------------------------------------------------------------------- */

/* A fork with no event waiting: the child's table at once, without what
 * the parent's records hold (the moved-from range is not the child's). */
static void test_fork_now(void **state)
{
	struct side *x = two_blocks(), *child = side_new();

	(void)state;
	remap(x, OLD, NEWA, LEN, 0);
	fork_ev(x, child, 0);
	assert_true(child->born);
	expect_pages(child, NEWA, LEN, 1);
	expect_pages(child, OLD, LEN, 0);
	expect_pages(child, B, LEN, 2);
	unmap(x, OLD, LEN, 0);
	expect_pages(x, OLD, LEN, 0);
	side_free(child);
	side_free(x);
}

/* A fork read while the parent's events wait: it takes its place among
 * them; the child's own events wait for its table; requests of the
 * parent's wait behind the fork. */
static void test_fork_in_window(void **state)
{
	struct side *x = two_blocks(), *child = side_new();

	(void)state;
	remap(x, B, OLD, LEN, 0);
	unmap(x, B, LEN, 0);
	assert_int_equal(follow_unborn(&child->f), 0);
	fork_ev(x, child, 0);
	assert_false(child->born);
	assert_true(holds(x, C, 1)); /* a request anywhere waits for the fork */
	assert_true(holds(child, C, 0));
	unmap(child, NEWA, LEN, 0);  /* the child's own: waits */
	remap(x, OLD, NEWA, LEN, 0); /* A's late one */
	assert_true(child->born);
	expect_moved(x);
	/* The child has both moves, A's record subtracted (nothing left of
	 * it: B took it all). */
	expect_pages(child, OLD, LEN, 2);
	expect_pages(child, NEWA, LEN, 1);
	assert_int_equal(follow_settle(&child->f, 0, CAP, &child->n), 0);
	expect_pages(child, NEWA, LEN, 0);
	expect_pages(child, OLD, LEN, 2);
	/* The parent's later events are its own. */
	unmap(x, OLD, LEN, 0);
	unmap(x, NEWA, LEN, 0);
	expect_pages(child, OLD, LEN, 2);
	side_free(child);
	side_free(x);
}

/* The parent goes while its fork waits: the child gets the table as it is. */
static void test_fork_parent_gone(void **state)
{
	struct side *x = two_blocks(), *child = side_new();

	(void)state;
	remap(x, B, OLD, LEN, 0);
	assert_int_equal(follow_unborn(&child->f), 0);
	fork_ev(x, child, 0);
	follow_fini(&x->f);
	assert_true(child->born);
	expect_pages(child, OLD, LEN, 1);
	expect_pages(child, B, LEN, 2);
	side_free(child);
	side_free(x);
}

/* x unborn, with as many of its own events waiting as its queue holds. */
static void fill_unborn(struct side *x)
{
	assert_int_equal(follow_unborn(&x->f), 0);
	for (unsigned i = 0; i < FOLLOW_QUEUE; i++)
		unmap(x, i, 1, 0);
}

/* While events wait, a fault no piece contains waits too: a REMAP names
 * the old length only, so a block moved and grown at once has its new
 * tail outside the event's footprint, and growing the piece below into
 * that tail (what a fault in no piece does otherwise) would be wrong. */
static void test_hold_unknown(void **state)
{
	struct side *x = two_blocks();

	(void)state;
	map(x, C + 20, 1, 3);
	remap(x, B, OLD, LEN, 0); /* waits for A's late REMAP out of OLD */
	assert_true(follow_busy(&x->f));
	assert_true(holds(x, NEWA + LEN, 0)); /* A's grown tail, no piece yet */
	assert_true(holds(x, C, 0));
	assert_false(holds(x, C + 20, 0)); /* a piece no event touches goes on */
	remap(x, OLD, NEWA, LEN, 0);       /* the late one */
	assert_false(follow_busy(&x->f));
	assert_false(holds(x, NEWA + LEN, 0));
	assert_false(holds(x, C, 0));
	side_free(x);
}

/* A fork read by a child that is unborn itself, with its queue full: the
 * grandchild is told at once that there is no table for it (and the
 * caller hears -ENOBUFS); nothing is left waiting for a table that
 * cannot come. */
static void test_unborn_parent_full_fork(void **state)
{
	struct side *child = side_new(), *grandchild = side_new();
	struct follow_ev f = { .type = FOLLOW_FORK, .child = grandchild };

	(void)state;
	fill_unborn(child);
	assert_int_equal(follow_unborn(&grandchild->f), 0);
	assert_int_equal(follow_event(&child->f, &f, 0, CAP, &child->n), -ENOBUFS);
	assert_true(grandchild->refused);
	assert_false(grandchild->born);
	side_free(grandchild);
	side_free(child);
}

/* An unborn child goes with a fork queued: its own table never came, so
 * the grandchild is refused, not given an empty table. */
static void test_unborn_parent_gone(void **state)
{
	struct side *child = side_new(), *grandchild = side_new();

	(void)state;
	assert_int_equal(follow_unborn(&child->f), 0);
	assert_int_equal(follow_unborn(&grandchild->f), 0);
	fork_ev(child, grandchild, 0);
	assert_false(grandchild->born || grandchild->refused);
	follow_fini(&child->f);
	assert_true(grandchild->refused);
	assert_false(grandchild->born);
	side_free(grandchild);
	side_free(child);
}

/* An unborn child that fills its queue is told so. */
static void test_unborn_full(void **state)
{
	struct side *child = side_new();
	struct follow_ev e = { .type = FOLLOW_UNMAP, .from = P(0), .to = P(1) };

	(void)state;
	fill_unborn(child);
	assert_int_equal(follow_event(&child->f, &e, 0, CAP, &child->n), -ENOBUFS);
	assert_true(follow_deadline(&child->f, CAP) == 0);
	side_free(child);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_in_order),
		cmocka_unit_test(test_move_in_before_unmap),
		cmocka_unit_test(test_fixed_onto_mapping),
		cmocka_unit_test(test_dontunmap),
		cmocka_unit_test(test_late_remap),
		cmocka_unit_test(test_late_unmap),
		cmocka_unit_test(test_late_remap_partial),
		cmocka_unit_test(test_chain),
		cmocka_unit_test(test_mover_moves_on),
		cmocka_unit_test(test_cap),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_contradiction),
		cmocka_unit_test(test_fork_now),
		cmocka_unit_test(test_fork_in_window),
		cmocka_unit_test(test_fork_parent_gone),
		cmocka_unit_test(test_unborn_full),
		cmocka_unit_test(test_hold_unknown),
		cmocka_unit_test(test_unborn_parent_full_fork),
		cmocka_unit_test(test_unborn_parent_gone),
	};

	return cmocka_run_group_tests_name("follow", tests, NULL, NULL);
}
