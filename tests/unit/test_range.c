/* Unit tests of the range table (daemon/range.c).
 *
 * Templates are fakes that count the references the tables take and drop,
 * and nodes come from a counting allocator that can refuse. After every
 * operation each template must hold exactly one reference per distinct
 * node that uses it, every node allocated must be reachable from a live
 * table, and once the tables are gone nothing is left. An operation that
 * fails must leave its table exactly as it was: same root, same pieces,
 * no template reference taken or dropped, no node kept. Table-driven tests
 * run one named test per row. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "range.h"

#define PG(n) ((uint64_t)(n)*4096u)
#define NTMPL 3
/* Most pieces a test compares one by one. */
#define PIECES_MAX 512
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct fake_tmpl {
	long gets, puts;
};

static void fake_get(void *tmpl)
{
	((struct fake_tmpl *)tmpl)->gets++;
}

static void fake_put(void *tmpl)
{
	struct fake_tmpl *t = tmpl;

	t->puts++;
	assert_true(t->puts <= t->gets);
}

/* The node allocator: counts, and lets budget more allocations through
 * (-1: any number) before it refuses. */
struct counting {
	long allocs, frees, refused;
	long budget;
	size_t size; /* every node has the same */
};

static void *count_alloc(void *ctx, size_t size)
{
	struct counting *c = ctx;

	if (c->size)
		assert_int_equal(size, c->size);
	c->size = size;
	if (c->budget == 0) {
		c->refused++;
		return NULL;
	}
	if (c->budget > 0)
		c->budget--;
	c->allocs++;
	/* Not test_malloc: cmocka counts a block still held when the test
	 * body returns as a leak, and the tables here outlive it until the
	 * teardown, which checks allocs == frees instead. */
	return malloc(size);
}

static void count_free(void *ctx, void *p, size_t size)
{
	struct counting *c = ctx;

	assert_int_equal(size, c->size);
	c->frees++;
	free(p);
}

static long live_nodes(const struct counting *c)
{
	return c->allocs - c->frees;
}

static const struct range_ops fake_ops = {
	.get = fake_get,
	.put = fake_put,
	.node_alloc = count_alloc,
	.node_free = count_free,
};

struct fixture {
	struct range_table rt;
	struct counting mem;
	struct fake_tmpl t[NTMPL];
	const void *row; /* the table row a table-driven test runs */
};

static void init_table(struct fixture *f, struct range_table *rt, size_t max)
{
	range_table_init(rt, max, &fake_ops, &f->mem);
}

static int setup(void **state)
{
	struct fixture *f = test_calloc(1, sizeof(*f));

	f->row = *state;
	f->mem.budget = -1;
	init_table(f, &f->rt, 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	int balanced = 1;

	range_table_fini(&f->rt);
	assert_int_equal(range_count(&f->rt), 0);
	assert_int_equal(range_bytes(&f->rt), 0);
	assert_null(range_root(&f->rt));
	for (int k = 0; k < NTMPL; k++)
		balanced &= f->t[k].gets == f->t[k].puts;
	balanced &= f->mem.allocs == f->mem.frees;
	test_free(f);
	assert_true(balanced);
	return 0;
}

static int tmpl_index(const struct fixture *f, const void *tmpl)
{
	for (int k = 0; k < NTMPL; k++)
		if (tmpl == &f->t[k])
			return k;
	fail_msg("unknown template %p", tmpl);
	return -1;
}

/* ---- looking at a table ---- */

struct collect {
	struct range_piece *v;
	size_t n, cap;
};

static int collect_one(void *arg, const struct range_piece *p)
{
	struct collect *c = arg;

	assert_true(c->n < c->cap);
	c->v[c->n++] = *p;
	return 0;
}

/* The pieces in order, into v (cap of them at most). */
static size_t collect(const struct range_table *rt, struct range_piece *v, size_t cap)
{
	struct collect c = { v, 0, cap };

	assert_int_equal(range_foreach(rt, collect_one, &c), 0);
	return c.n;
}

/* The height of n's subtree, checking with the public accessors alone that
 * pieces are aligned, sorted within [lo, hi) and AVL balanced. */
static unsigned check_shape(const struct range_node *n, uint64_t lo, uint64_t hi)
{
	uint64_t s, e;
	unsigned hl, hr;

	if (!n)
		return 0;
	s = range_node_start(n);
	e = range_node_end(n);
	assert_true(s < e && s % 4096 == 0 && e % 4096 == 0);
	assert_true(s >= lo && e <= hi);
	hl = check_shape(range_node_left(n), lo, s);
	hr = check_shape(range_node_right(n), e, hi);
	assert_true(hl <= hr + 1 && hr <= hl + 1);
	return 1 + (hl > hr ? hl : hr);
}

/* Sound by range_check (cached values included) and by check_shape. */
static unsigned expect_sound(const struct range_table *rt)
{
	assert_int_equal(range_check(rt), 0);
	return check_shape(range_root(rt), 0, UINT64_MAX);
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (const void *const *)a,
		  y = (uintptr_t) * (const void *const *)b;

	return (x > y) - (x < y);
}

/* Every node reachable from the tables, each once, sorted. */
static size_t distinct_nodes(struct range_table *const *tabs, size_t ntab,
			     const struct range_node ***out)
{
	size_t cap = 0, n = 0, k = 0;
	const struct range_node **v, **stack;

	for (size_t i = 0; i < ntab; i++)
		cap += range_count(tabs[i]);
	v = test_malloc((cap + 1) * sizeof(*v));
	stack = test_malloc((cap + 1) * sizeof(*stack));
	for (size_t i = 0; i < ntab; i++) {
		size_t top = 0;

		if (range_root(tabs[i]))
			stack[top++] = range_root(tabs[i]);
		while (top) {
			const struct range_node *x = stack[--top];

			v[n++] = x;
			if (range_node_left(x))
				stack[top++] = range_node_left(x);
			if (range_node_right(x))
				stack[top++] = range_node_right(x);
		}
	}
	test_free(stack);
	qsort(v, n, sizeof(*v), cmp_ptr);
	for (size_t i = 0; i < n; i++)
		if (!k || v[k - 1] != v[i])
			v[k++] = v[i];
	*out = v;
	return k;
}

/* Each template holds one reference per distinct node using it, and the
 * allocator has given out exactly those nodes. */
static void expect_refs(const struct fixture *f, struct range_table *const *tabs, size_t ntab)
{
	const struct range_node **v;
	size_t n = distinct_nodes(tabs, ntab, &v);
	long refs[NTMPL] = { 0 };

	for (size_t i = 0; i < n; i++)
		refs[tmpl_index(f, range_node_tmpl(v[i]))]++;
	test_free(v);
	for (int k = 0; k < NTMPL; k++)
		assert_int_equal(f->t[k].gets - f->t[k].puts, refs[k]);
	assert_int_equal(live_nodes(&f->mem), (long)n);
}

/* A piece in pages; t indexes the fixture's templates. */
struct piece {
	uint64_t start, end;
	int t;
};

static void load(struct fixture *f, const struct piece *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		assert_int_equal(range_insert(&f->rt, PG(p[k].start), PG(p[k].end), &f->t[p[k].t]),
				 0);
}

/* rt holds exactly want, and its count and bytes say so. */
static void expect_pieces(const struct fixture *f, const struct range_table *rt,
			  const struct piece *want, size_t n)
{
	struct range_piece got[PIECES_MAX];
	uint64_t bytes = 0;

	assert_true(n <= ARRAY_SIZE(got));
	assert_int_equal(collect(rt, got, ARRAY_SIZE(got)), n);
	for (size_t k = 0; k < n; k++) {
		assert_int_equal(got[k].start, PG(want[k].start));
		assert_int_equal(got[k].end, PG(want[k].end));
		assert_ptr_equal(got[k].tmpl, &f->t[want[k].t]);
		bytes += PG(want[k].end - want[k].start);
	}
	assert_int_equal(range_count(rt), n);
	assert_int_equal(range_bytes(rt), bytes);
	expect_sound(rt);
}

/* The fixture's table, alone, holds exactly want. */
static void expect_table(struct fixture *f, const struct piece *want, size_t n)
{
	struct range_table *tabs[] = { &f->rt };

	expect_pieces(f, &f->rt, want, n);
	expect_refs(f, tabs, 1);
}

static long total_gets(const struct fixture *f)
{
	long gets = 0;

	for (int k = 0; k < NTMPL; k++)
		gets += f->t[k].gets;
	return gets;
}

/* Everything a failed operation must leave as it was, for some tables. */
#define SNAP_TABLES 8

struct snapshot {
	size_t ntab;
	struct range_table *tab[SNAP_TABLES];
	const struct range_node *root[SNAP_TABLES];
	size_t n[SNAP_TABLES];
	uint64_t bytes[SNAP_TABLES];
	struct range_piece *v[SNAP_TABLES];
	struct fake_tmpl t[NTMPL];
	long live;
};

static void take(const struct fixture *f, struct range_table *const *tabs, size_t ntab,
		 struct snapshot *s)
{
	assert_true(ntab <= SNAP_TABLES);
	s->ntab = ntab;
	for (size_t i = 0; i < ntab; i++) {
		s->tab[i] = tabs[i];
		s->root[i] = range_root(tabs[i]);
		s->bytes[i] = range_bytes(tabs[i]);
		s->v[i] = test_malloc((range_count(tabs[i]) + 1) * sizeof(*s->v[i]));
		s->n[i] = collect(tabs[i], s->v[i], range_count(tabs[i]));
	}
	memcpy(s->t, f->t, sizeof(s->t));
	s->live = live_nodes(&f->mem);
}

/* Not one reference taken or dropped: a failure touches no template. */
static void expect_unchanged(const struct fixture *f, struct snapshot *s)
{
	for (size_t i = 0; i < s->ntab; i++) {
		struct range_piece *now = test_malloc((s->n[i] + 1) * sizeof(*now));

		assert_ptr_equal(range_root(s->tab[i]), s->root[i]);
		assert_int_equal(range_count(s->tab[i]), s->n[i]);
		assert_int_equal(range_bytes(s->tab[i]), s->bytes[i]);
		assert_int_equal(collect(s->tab[i], now, s->n[i]), s->n[i]);
		if (s->n[i])
			assert_memory_equal(now, s->v[i], s->n[i] * sizeof(*now));
		test_free(now);
		test_free(s->v[i]);
	}
	assert_memory_equal(f->t, s->t, sizeof(s->t));
	assert_int_equal(live_nodes(&f->mem), s->live);
}

static void drop_snapshot(struct snapshot *s)
{
	for (size_t i = 0; i < s->ntab; i++)
		test_free(s->v[i]);
}

/* ---- insert and lookup ---- */

static void expect_lookup(const struct fixture *f, uint64_t addr, const struct piece *want)
{
	struct range_piece got;

	if (!want) {
		assert_int_equal(range_lookup(&f->rt, addr, &got), 0);
		return;
	}
	assert_int_equal(range_lookup(&f->rt, addr, &got), 1);
	assert_int_equal(got.start, PG(want->start));
	assert_int_equal(got.end, PG(want->end));
	assert_ptr_equal(got.tmpl, &f->t[want->t]);
}

static void test_empty(void **state)
{
	struct fixture *f = *state;
	struct range_piece p;

	expect_lookup(f, 0, NULL);
	expect_lookup(f, PG(5), NULL);
	assert_int_equal(range_extend_to(&f->rt, PG(5), 4096, &p), 0);
	assert_int_equal(range_remove(&f->rt, 0, PG(10), NULL, NULL), 0);
	assert_int_equal(range_copy(&f->rt, 0, PG(10), PG(2)), 0);
	expect_table(f, NULL, 0);
	/* Nothing to do allocates nothing. */
	assert_int_equal(f->mem.allocs, 0);
}

static void test_insert_lookup(void **state)
{
	static const struct piece in[] = {
		{ 8, 12, 0 },
		{ 0, 4, 1 },
		{ 20, 24, 2 },
		{ 14, 16, 0 },
	};
	static const struct piece sorted[] = {
		{ 0, 4, 1 },
		{ 8, 12, 0 },
		{ 14, 16, 0 },
		{ 20, 24, 2 },
	};
	static const struct {
		uint64_t addr;
		int piece; /* index in sorted, -1: none */
	} look[] = {
		{ 0, 0 },          { PG(4) - 1, 0 },   { PG(4), -1 },     { PG(8), 1 },
		{ PG(12) - 1, 1 }, { PG(13), -1 },     { PG(15) + 7, 2 }, { PG(24) - 1, 3 },
		{ PG(24), -1 },    { UINT64_MAX, -1 },
	};
	struct fixture *f = *state;

	load(f, in, ARRAY_SIZE(in));
	expect_table(f, sorted, ARRAY_SIZE(sorted));
	for (size_t k = 0; k < ARRAY_SIZE(look); k++)
		expect_lookup(f, look[k].addr, look[k].piece < 0 ? NULL : &sorted[look[k].piece]);
}

static void test_insert_adjacent(void **state)
{
	static const struct piece in[] = { { 4, 8, 0 }, { 0, 4, 1 }, { 8, 12, 2 } };
	static const struct piece want[] = { { 0, 4, 1 }, { 4, 8, 0 }, { 8, 12, 2 } };
	struct fixture *f = *state;

	load(f, in, ARRAY_SIZE(in));
	expect_table(f, want, ARRAY_SIZE(want));
	expect_lookup(f, PG(4) - 1, &want[0]);
	expect_lookup(f, PG(4), &want[1]);
	expect_lookup(f, PG(8), &want[2]);
}

/* A thousand pieces, inserted downwards, then all but one removed at once. */
static void test_growth(void **state)
{
	enum { N = 1000 };
	struct fixture *f = *state;

	for (uint64_t k = N; k-- > 0;)
		assert_int_equal(range_insert(&f->rt, PG(2 * k), PG(2 * k + 1), &f->t[k % NTMPL]),
				 0);
	assert_int_equal(range_count(&f->rt), N);
	assert_int_equal(range_bytes(&f->rt), PG(N));
	expect_sound(&f->rt);
	for (uint64_t k = 0; k < N; k++) {
		struct piece p = { 2 * k, 2 * k + 1, (int)(k % NTMPL) };

		expect_lookup(f, PG(2 * k) + 1, &p);
		expect_lookup(f, PG(2 * k + 1), NULL);
	}
	assert_int_equal(range_remove(&f->rt, PG(1), PG(2 * N), NULL, NULL), PG(N - 1));
	expect_table(f, (struct piece[]){ { 0, 1, 0 } }, 1);
}

/* Without node_alloc and node_free the table uses malloc and free (the
 * sanitizers and cmocka see any leak). */
static void test_default_allocator(void **state)
{
	static const struct range_ops ops = { .get = fake_get, .put = fake_put };
	struct fixture *f = *state;
	struct range_table rt, child;

	range_table_init(&rt, 0, &ops, NULL);
	range_table_init(&child, 0, &ops, NULL);
	for (uint64_t k = 0; k < 100; k++)
		assert_int_equal(range_insert(&rt, PG(4 * k), PG(4 * k + 3), &f->t[0]), 0);
	assert_int_equal(range_clone(&child, &rt), 0);
	assert_int_equal(range_remove(&child, PG(1), PG(2), NULL, NULL), PG(1));
	assert_int_equal(range_copy(&rt, 0, PG(1000), PG(40)), 0);
	range_table_fini(&rt);
	assert_int_equal(range_count(&child), 101);
	range_table_fini(&child);
	assert_int_equal(f->t[0].gets, f->t[0].puts);
	assert_int_equal(f->mem.allocs, 0);
}

struct overlap_row {
	const char *name;
	uint64_t start, end; /* pages */
};

/* Against [4, 8) and [12, 16). */
static const struct overlap_row overlap_rows[] = {
	{ "insert overlap: identical", 4, 8 },
	{ "insert overlap: left", 2, 5 },
	{ "insert overlap: right", 7, 10 },
	{ "insert overlap: inside", 5, 6 },
	{ "insert overlap: covering", 2, 10 },
	{ "insert overlap: same start", 4, 5 },
	{ "insert overlap: same end", 6, 8 },
	{ "insert overlap: bridging two pieces", 6, 14 },
	{ "insert overlap: covering two pieces", 0, 20 },
};

static void test_insert_overlap(void **state)
{
	static const struct piece base[] = { { 4, 8, 0 }, { 12, 16, 1 } };
	struct fixture *f = *state;
	const struct overlap_row *row = f->row;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	load(f, base, ARRAY_SIZE(base));
	take(f, tabs, 1, &s);
	assert_int_equal(range_insert(&f->rt, PG(row->start), PG(row->end), &f->t[2]), -EEXIST);
	expect_unchanged(f, &s);
}

struct span_row {
	const char *name;
	uint64_t start, end; /* bytes */
};

/* The same bad spans, refused by insert and by remove. */
#define INVALID_SPANS(op)                                           \
	{ op " invalid: unaligned start", 1, PG(8) },               \
		{ op " invalid: unaligned end", PG(1), PG(8) + 1 }, \
		{ op " invalid: empty", PG(4), PG(4) },             \
		{ op " invalid: end before start", PG(8), PG(4) },  \
	{                                                           \
		op " invalid: end wrapped", PG(8), 0                \
	}

static const struct span_row insert_invalid_rows[] = { INVALID_SPANS("insert") };
static const struct span_row remove_invalid_rows[] = { INVALID_SPANS("remove") };

static void test_insert_invalid(void **state)
{
	struct fixture *f = *state;
	const struct span_row *row = f->row;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	load(f, (struct piece[]){ { 20, 24, 0 } }, 1);
	take(f, tabs, 1, &s);
	assert_int_equal(range_insert(&f->rt, row->start, row->end, &f->t[1]), -EINVAL);
	expect_unchanged(f, &s);
}

/* ---- remove ---- */

struct remove_row {
	const char *name;
	uint64_t start, end; /* pages */
	uint64_t removed;    /* pages */
	size_t n;
	struct piece want[5];
};

/* Against [0, 4) [6, 10) [12, 16). */
static const struct remove_row remove_rows[] = {
	{ "remove: whole piece", 6, 10, 4, 2, { { 0, 4, 0 }, { 12, 16, 2 } } },
	{ "remove: head", 6, 8, 2, 3, { { 0, 4, 0 }, { 8, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: tail", 8, 10, 2, 3, { { 0, 4, 0 }, { 6, 8, 1 }, { 12, 16, 2 } } },
	{ "remove: middle splits",
	  7,
	  9,
	  2,
	  4,
	  { { 0, 4, 0 }, { 6, 7, 1 }, { 9, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: tail and gap", 3, 5, 1, 3, { { 0, 3, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: gap and head", 10, 13, 1, 3, { { 0, 4, 0 }, { 6, 10, 1 }, { 13, 16, 2 } } },
	{ "remove: several pieces and gaps", 2, 14, 8, 2, { { 0, 2, 0 }, { 14, 16, 2 } } },
	{ "remove: gaps around one piece", 4, 12, 4, 2, { { 0, 4, 0 }, { 12, 16, 2 } } },
	{ "remove: first piece", 0, 4, 4, 2, { { 6, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: last piece", 12, 16, 4, 2, { { 0, 4, 0 }, { 6, 10, 1 } } },
	{ "remove: everything", 0, 100, 12, 0, { { 0 } } },
	{ "remove: nothing in a gap", 4, 6, 0, 3, { { 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: nothing past the end",
	  16,
	  30,
	  0,
	  3,
	  { { 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
};

static void test_remove(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 } };
	struct fixture *f = *state;
	const struct remove_row *row = f->row;

	load(f, base, ARRAY_SIZE(base));
	assert_int_equal(range_remove(&f->rt, PG(row->start), PG(row->end), NULL, NULL),
			 PG(row->removed));
	expect_table(f, row->want, row->n);
	/* Splitting takes a reference for the new piece; an unshared table
	 * is changed in place, so nothing else does. */
	assert_int_equal(total_gets(f), ARRAY_SIZE(base) + (row->n > 3));
}

static void test_remove_invalid(void **state)
{
	struct fixture *f = *state;
	const struct span_row *row = f->row;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	load(f, (struct piece[]){ { 0, 24, 0 } }, 1);
	take(f, tabs, 1, &s);
	assert_int_equal(range_remove(&f->rt, row->start, row->end, NULL, NULL), -EINVAL);
	expect_unchanged(f, &s);
}

/* The count of removed bytes must fit the return type. */
static void test_remove_huge(void **state)
{
	const uint64_t half = (uint64_t)1 << 63;
	struct fixture *f = *state;
	struct range_piece p;

	assert_int_equal(range_insert(&f->rt, 0, half, &f->t[0]), 0);
	assert_int_equal(range_remove(&f->rt, 0, half, NULL, NULL), -EINVAL);
	assert_int_equal(range_remove(&f->rt, 0, half - 4096, NULL, NULL),
			 (long long)(half - 4096));
	assert_int_equal(range_count(&f->rt), 1);
	assert_int_equal(range_lookup(&f->rt, half - 1, &p), 1);
	assert_int_equal(p.start, half - 4096);
	assert_int_equal(range_bytes(&f->rt), 4096);
}

/* ---- removal runs ---- */

struct runs {
	uint64_t v[PIECES_MAX]; /* start, end, start, end... */
	size_t n;
};

static void run_add(void *arg, uint64_t s, uint64_t e)
{
	struct runs *r = arg;

	assert_true(r->n + 2 <= ARRAY_SIZE(r->v));
	assert_true(s < e);
	r->v[r->n++] = s;
	r->v[r->n++] = e;
}

struct run_row {
	const char *name;
	uint64_t start, end; /* pages */
	size_t n;            /* runs */
	uint64_t runs[8];    /* pages: start, end, ... */
};

/* Against [0, 2)a [2, 4)b [5, 6)c [6, 9)a [12, 14)b. */
static const struct run_row run_rows[] = {
	{ "runs: touching pieces of different templates are one run", 1, 8, 2, { 1, 4, 5, 8 } },
	{ "runs: everything, holes apart", 0, 20, 3, { 0, 4, 5, 9, 12, 14 } },
	{ "runs: clipped at both ends", 3, 13, 3, { 3, 4, 5, 9, 12, 13 } },
	{ "runs: inside one piece", 7, 8, 1, { 7, 8 } },
	{ "runs: nothing in a hole", 9, 12, 0, { 0 } },
};

static void test_runs(void **state)
{
	static const struct piece base[] = {
		{ 0, 2, 0 }, { 2, 4, 1 }, { 5, 6, 2 }, { 6, 9, 0 }, { 12, 14, 1 },
	};
	struct fixture *f = *state;
	const struct run_row *row = f->row;
	struct runs got = { .n = 0 };
	uint64_t bytes = 0;

	load(f, base, ARRAY_SIZE(base));
	for (size_t k = 0; k < row->n; k++)
		bytes += PG(row->runs[2 * k + 1] - row->runs[2 * k]);
	assert_int_equal(range_remove(&f->rt, PG(row->start), PG(row->end), run_add, &got), bytes);
	assert_int_equal(got.n, 2 * row->n);
	for (size_t k = 0; k < got.n; k++)
		assert_int_equal(got.v[k], PG(row->runs[k]));
	expect_sound(&f->rt);
}

/* ---- the piece limit ---- */

static void test_max_insert(void **state)
{
	struct fixture *f = *state;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	init_table(f, &f->rt, 2);
	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, tabs, 1, &s);
	assert_int_equal(range_insert(&f->rt, PG(20), PG(24), &f->t[2]), -ENOSPC);
	expect_unchanged(f, &s);
	assert_int_equal(range_remove(&f->rt, 0, PG(4), NULL, NULL), PG(4));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(24), &f->t[2]), 0);
	expect_table(f, (struct piece[]){ { 8, 12, 1 }, { 20, 24, 2 } }, 2);
}

static void test_max_split(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 8, 12, 1 } };
	struct fixture *f = *state;
	struct range_table *tabs[] = { &f->rt };
	struct runs runs = { .n = 0 };
	struct snapshot s;

	init_table(f, &f->rt, 2);
	load(f, base, ARRAY_SIZE(base));
	take(f, tabs, 1, &s);
	assert_int_equal(range_remove(&f->rt, PG(9), PG(10), run_add, &runs), -ENOSPC);
	expect_unchanged(f, &s);
	/* A refused removal reports nothing. */
	assert_int_equal(runs.n, 0);
	/* Trimming an edge needs no slot. */
	assert_int_equal(range_remove(&f->rt, PG(11), PG(12), NULL, NULL), PG(1));
	assert_int_equal(range_remove(&f->rt, PG(3), PG(9), NULL, NULL), PG(2));
	expect_table(f, (struct piece[]){ { 0, 3, 0 }, { 9, 11, 1 } }, 2);
}

static void test_max_split_at_limit(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 8, 12, 1 } };
	static const struct piece want[] = { { 0, 4, 0 }, { 8, 9, 1 }, { 10, 12, 1 } };
	struct fixture *f = *state;

	init_table(f, &f->rt, 3);
	load(f, base, ARRAY_SIZE(base));
	assert_int_equal(range_remove(&f->rt, PG(9), PG(10), NULL, NULL), PG(1));
	expect_table(f, want, ARRAY_SIZE(want));
}

static void test_max_copy(void **state)
{
	struct fixture *f = *state;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	init_table(f, &f->rt, 2);
	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, tabs, 1, &s);
	/* Leaves [0, 4) [8, 12) [20, 22): one too many. */
	assert_int_equal(range_copy(&f->rt, 0, PG(20), PG(2)), -ENOSPC);
	expect_unchanged(f, &s);
	/* Onto [8, 12), which goes: two pieces. */
	assert_int_equal(range_copy(&f->rt, PG(2), PG(8), PG(4)), 0);
	expect_table(f, (struct piece[]){ { 0, 4, 0 }, { 8, 10, 0 } }, 2);
}

/* Only the final count matters, not the pieces on the way. */
static void test_max_copy_at_limit(void **state)
{
	struct fixture *f = *state;

	init_table(f, &f->rt, 2);
	load(f, (struct piece[]){ { 0, 16, 0 } }, 1);
	assert_int_equal(range_copy(&f->rt, PG(8), PG(0), PG(8)), 0);
	expect_table(f, (struct piece[]){ { 0, 8, 0 }, { 8, 16, 0 } }, 2);
	assert_int_equal(range_copy(&f->rt, PG(8), PG(0), PG(8)), 0);
	expect_table(f, (struct piece[]){ { 0, 8, 0 }, { 8, 16, 0 } }, 2);
}

/* The daemon follows a REMAP past the limit (max 0 around the call): the
 * table then holds more than max, an insert is refused until it is back
 * under, and operations that add no piece go through meanwhile. */
static void test_max_copy_bypassed(void **state)
{
	struct fixture *f = *state;

	init_table(f, &f->rt, 1);
	load(f, (struct piece[]){ { 0, 4, 0 } }, 1);
	assert_int_equal(range_copy(&f->rt, 0, PG(8), PG(4)), -ENOSPC);
	f->rt.max = 0;
	assert_int_equal(range_copy(&f->rt, 0, PG(8), PG(4)), 0);
	assert_int_equal(range_copy(&f->rt, 0, PG(16), PG(4)), 0);
	f->rt.max = 1;
	expect_table(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 0 }, { 16, 20, 0 } }, 3);
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), -ENOSPC);
	assert_int_equal(range_copy(&f->rt, 0, PG(30), PG(1)), -ENOSPC);
	/* A copy that leaves as many pieces, a trim, a removal. */
	assert_int_equal(range_copy(&f->rt, 0, PG(16), PG(4)), 0);
	assert_int_equal(range_remove(&f->rt, PG(19), PG(20), NULL, NULL), PG(1));
	assert_int_equal(range_remove(&f->rt, 0, PG(4), NULL, NULL), PG(4));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), -ENOSPC);
	assert_int_equal(range_remove(&f->rt, PG(8), PG(12), NULL, NULL), PG(4));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), -ENOSPC);
	assert_int_equal(range_remove(&f->rt, PG(16), PG(19), NULL, NULL), PG(3));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), 0);
}

/* ---- copy (mremap) ---- */

struct copy_row {
	const char *name;
	uint64_t from, to, len; /* pages */
	size_t nbase;
	struct piece base[3];
	size_t n;
	struct piece want[6];
	long gets; /* references ever taken, base included */
};

static const struct copy_row copy_rows[] = {
	{ "copy: over nothing", 0, 8, 4, 1, { { 0, 4, 0 } }, 2, { { 0, 4, 0 }, { 8, 12, 0 } }, 2 },
	{ "copy: below the source",
	  8,
	  0,
	  4,
	  1,
	  { { 8, 12, 0 } },
	  2,
	  { { 0, 4, 0 }, { 8, 12, 0 } },
	  2 },
	{ "copy: past other pieces",
	  0,
	  12,
	  2,
	  3,
	  { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 } },
	  4,
	  { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 }, { 12, 14, 0 } },
	  4 },
	{ "copy: between other pieces",
	  8,
	  2,
	  2,
	  3,
	  { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 } },
	  4,
	  { { 0, 2, 0 }, { 2, 4, 2 }, { 4, 6, 1 }, { 8, 10, 2 } },
	  4 },
	{ "copy: several pieces and gaps",
	  0,
	  10,
	  8,
	  3,
	  { { 0, 2, 0 }, { 3, 4, 1 }, { 5, 6, 2 } },
	  6,
	  { { 0, 2, 0 }, { 3, 4, 1 }, { 5, 6, 2 }, { 10, 12, 0 }, { 13, 14, 1 }, { 15, 16, 2 } },
	  6 },
	{ "copy: onto pieces, which are forgotten",
	  0,
	  8,
	  4,
	  3,
	  { { 0, 4, 0 }, { 8, 10, 1 }, { 11, 14, 2 } },
	  3,
	  { { 0, 4, 0 }, { 8, 12, 0 }, { 12, 14, 2 } },
	  4 },
	{ "copy: into the middle of a piece",
	  0,
	  6,
	  2,
	  2,
	  { { 0, 2, 0 }, { 4, 12, 1 } },
	  4,
	  { { 0, 2, 0 }, { 4, 6, 1 }, { 6, 8, 0 }, { 8, 12, 1 } },
	  4 },
	{ "copy: part of a piece",
	  2,
	  10,
	  2,
	  1,
	  { { 0, 8, 0 } },
	  2,
	  { { 0, 8, 0 }, { 10, 12, 0 } },
	  2 },
	{ "copy: parts of two pieces",
	  2,
	  10,
	  4,
	  2,
	  { { 0, 4, 0 }, { 4, 8, 1 } },
	  4,
	  { { 0, 4, 0 }, { 4, 8, 1 }, { 10, 12, 0 }, { 12, 14, 1 } },
	  4 },
	{ "copy: overlapping forward",
	  0,
	  4,
	  8,
	  1,
	  { { 0, 8, 0 } },
	  2,
	  { { 0, 4, 0 }, { 4, 12, 0 } },
	  2 },
	{ "copy: overlapping back",
	  4,
	  0,
	  8,
	  1,
	  { { 4, 12, 0 } },
	  2,
	  { { 0, 8, 0 }, { 8, 12, 0 } },
	  2 },
	{ "copy: overlapping forward over pieces",
	  0,
	  2,
	  6,
	  3,
	  { { 0, 2, 0 }, { 3, 5, 1 }, { 6, 8, 2 } },
	  3,
	  { { 0, 2, 0 }, { 2, 4, 0 }, { 5, 7, 1 } },
	  5 },
	{ "copy: overlapping back over pieces",
	  2,
	  0,
	  6,
	  3,
	  { { 0, 2, 0 }, { 3, 5, 1 }, { 6, 8, 2 } },
	  3,
	  { { 1, 3, 1 }, { 4, 6, 2 }, { 6, 8, 2 } },
	  5 },
	{ "copy: part of a piece into itself",
	  6,
	  2,
	  2,
	  1,
	  { { 0, 8, 0 } },
	  3,
	  { { 0, 2, 0 }, { 2, 4, 0 }, { 4, 8, 0 } },
	  3 },
	{ "copy: part of a piece, overlapping",
	  4,
	  6,
	  4,
	  1,
	  { { 0, 8, 0 } },
	  2,
	  { { 0, 6, 0 }, { 6, 10, 0 } },
	  2 },
	{ "copy: empty source forgets the destination",
	  0,
	  4,
	  4,
	  1,
	  { { 4, 8, 0 } },
	  0,
	  { { 0 } },
	  1 },
	{ "copy: in place", 0, 0, 4, 1, { { 0, 4, 0 } }, 1, { { 0, 4, 0 } }, 1 },
};

static void test_copy(void **state)
{
	struct fixture *f = *state;
	const struct copy_row *row = f->row;

	load(f, row->base, row->nbase);
	assert_int_equal(range_copy(&f->rt, PG(row->from), PG(row->to), PG(row->len)), 0);
	expect_table(f, row->want, row->n);
	assert_int_equal(total_gets(f), row->gets);
}

struct copy_invalid_row {
	const char *name;
	uint64_t from, to, len; /* bytes */
};

static const struct copy_invalid_row copy_invalid_rows[] = {
	{ "copy invalid: unaligned source", 1, PG(8), PG(2) },
	{ "copy invalid: unaligned destination", 0, PG(8) + 1, PG(2) },
	{ "copy invalid: unaligned length", 0, PG(8), PG(2) + 1 },
	{ "copy invalid: empty", 0, PG(8), 0 },
	{ "copy invalid: source wraps", UINT64_MAX - 4095, 0, PG(2) },
	{ "copy invalid: destination wraps", 0, UINT64_MAX - 4095, PG(2) },
};

static void test_copy_invalid(void **state)
{
	struct fixture *f = *state;
	const struct copy_invalid_row *row = f->row;
	struct range_table *tabs[] = { &f->rt };
	struct snapshot s;

	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, tabs, 1, &s);
	assert_int_equal(range_copy(&f->rt, row->from, row->to, row->len), -EINVAL);
	expect_unchanged(f, &s);
}

/* Many pieces copied into the middle of a big piece of a bigger table:
 * the copies are one balanced subtree joined between the big piece's two
 * halves. */
static void test_copy_many(void **state)
{
	enum { N = 300 };
	struct fixture *f = *state;
	const uint64_t big = 4 * N;
	struct range_piece p;

	for (uint64_t k = 0; k < N; k++)
		assert_int_equal(range_insert(&f->rt, PG(2 * k), PG(2 * k + 1), &f->t[k % NTMPL]),
				 0);
	assert_int_equal(range_insert(&f->rt, PG(big), PG(big + 3 * N), &f->t[1]), 0);
	/* [0, 1) [2, 3) ... land at big + 1 + ... */
	assert_int_equal(range_copy(&f->rt, 0, PG(big + 1), PG(2 * N - 1)), 0);
	assert_int_equal(range_count(&f->rt), 2 * N + 2);
	expect_sound(&f->rt);
	for (uint64_t k = 0; k < N; k++) {
		assert_int_equal(range_lookup(&f->rt, PG(big + 1 + 2 * k), &p), 1);
		assert_int_equal(p.start, PG(big + 1 + 2 * k));
		assert_int_equal(p.end, PG(big + 2 + 2 * k));
		assert_ptr_equal(p.tmpl, &f->t[k % NTMPL]);
		assert_int_equal(range_lookup(&f->rt, PG(big + 2 + 2 * k), &p), k + 1 < N ? 0 : 1);
	}
	assert_int_equal(range_lookup(&f->rt, PG(big), &p), 1);
	assert_int_equal(p.end, PG(big + 1));
	assert_int_equal(range_lookup(&f->rt, PG(big + 2 * N), &p), 1);
	assert_int_equal(p.start, PG(big + 2 * N));
	assert_int_equal(p.end, PG(big + 3 * N));
	/* One node per piece: no node was kept for nothing. */
	assert_int_equal(live_nodes(&f->mem), 2 * N + 2);
}

/* ---- extend_to ---- */

struct extend_row {
	const char *name;
	uint64_t addr, page_size; /* bytes */
	int piece;                /* index of the piece grown, -1: none */
	uint64_t end;             /* its new end, pages */
};

/* Against [2, 4) [6, 8) [12, 14). */
static const struct extend_row extend_rows[] = {
	{ "extend: next page", PG(4) + 123, 4096, 0, 5 },
	{ "extend: across a gap", PG(10) + 5, 4096, 1, 11 },
	{ "extend: up to the next piece", PG(5), 4096, 0, 6 },
	{ "extend: past the last piece", PG(30), 4096, 2, 31 },
	{ "extend: large page", PG(9), PG(4), 1, 12 },
	{ "extend: large page blocked by the next piece", PG(9), PG(8), -1, 0 },
	{ "extend: no piece below", PG(1), 4096, -1, 0 },
	{ "extend: inside a piece", PG(6) + 8, 4096, -1, 0 },
	{ "extend: at a piece's start", PG(12), 4096, -1, 0 },
	{ "extend: page size not a power of two", PG(5), PG(3), -1, 0 },
	{ "extend: page size too small", PG(5), 2048, -1, 0 },
	{ "extend: last page of the address space", UINT64_MAX, 4096, -1, 0 },
};

static void test_extend(void **state)
{
	static const struct piece base[] = { { 2, 4, 0 }, { 6, 8, 1 }, { 12, 14, 2 } };
	struct fixture *f = *state;
	const struct extend_row *row = f->row;
	struct piece want[ARRAY_SIZE(base)];
	struct range_piece p = { 0 };

	load(f, base, ARRAY_SIZE(base));
	memcpy(want, base, sizeof(want));
	if (row->piece < 0) {
		assert_int_equal(range_extend_to(&f->rt, row->addr, row->page_size, &p), 0);
	} else {
		assert_int_equal(range_extend_to(&f->rt, row->addr, row->page_size, &p), 1);
		want[row->piece].end = row->end;
		assert_int_equal(p.start, PG(want[row->piece].start));
		assert_int_equal(p.end, PG(row->end));
		assert_ptr_equal(p.tmpl, &f->t[want[row->piece].t]);
		expect_lookup(f, row->addr, &want[row->piece]);
	}
	expect_table(f, want, ARRAY_SIZE(want));
	assert_int_equal(total_gets(f), ARRAY_SIZE(base));
}

/* ---- clone (fork) ---- */

static void test_clone(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 6, 8, 1 }, { 10, 16, 0 } };
	struct fixture *f = *state;
	struct range_table dst;
	long live;

	load(f, base, ARRAY_SIZE(base));
	live = live_nodes(&f->mem);
	init_table(f, &dst, 0);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	expect_pieces(f, &dst, base, ARRAY_SIZE(base));
	/* The child shares the parent's nodes: no node, no reference. */
	assert_ptr_equal(range_root(&dst), range_root(&f->rt));
	assert_int_equal(live_nodes(&f->mem), live);
	assert_int_equal(f->t[0].gets, 2);
	assert_int_equal(f->t[1].gets, 1);
	/* The child lives on its own. */
	range_table_fini(&f->rt);
	expect_pieces(f, &dst, base, ARRAY_SIZE(base));
	assert_int_equal(f->t[0].gets - f->t[0].puts, 2);
	assert_int_equal(live_nodes(&f->mem), live);
	range_table_fini(&dst);
}

/* What one table does, the other does not see, both ways round. */
static void test_clone_isolation(void **state)
{
	static const struct piece base[] = {
		{ 0, 4, 0 }, { 6, 8, 1 }, { 10, 16, 0 }, { 20, 22, 2 }, { 24, 30, 1 },
	};
	static const struct piece parent[] = {
		{ 0, 4, 0 },   { 6, 8, 1 },   { 10, 12, 0 }, { 14, 16, 0 },
		{ 20, 23, 2 }, { 24, 30, 1 }, { 40, 44, 2 },
	};
	static const struct piece child[] = {
		{ 0, 2, 0 }, { 6, 8, 1 }, { 10, 16, 0 }, { 24, 26, 0 }, { 26, 30, 1 },
	};
	struct fixture *f = *state;
	struct range_table dst, *tabs[] = { &f->rt, &dst };
	struct range_piece p;

	load(f, base, ARRAY_SIZE(base));
	init_table(f, &dst, 0);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	/* The child changes... */
	assert_int_equal(range_remove(&dst, PG(2), PG(4), NULL, NULL), PG(2));
	assert_int_equal(range_copy(&dst, 0, PG(24), PG(2)), 0);
	assert_int_equal(range_remove(&dst, PG(20), PG(22), NULL, NULL), PG(2));
	expect_pieces(f, &f->rt, base, ARRAY_SIZE(base));
	/* ...then the parent. */
	assert_int_equal(range_remove(&f->rt, PG(12), PG(14), NULL, NULL), PG(2));
	assert_int_equal(range_insert(&f->rt, PG(40), PG(44), &f->t[2]), 0);
	assert_int_equal(range_extend_to(&f->rt, PG(22), 4096, &p), 1);
	expect_pieces(f, &f->rt, parent, ARRAY_SIZE(parent));
	expect_pieces(f, &dst, child, ARRAY_SIZE(child));
	expect_refs(f, tabs, 2);
	range_table_fini(&dst);
	expect_table(f, parent, ARRAY_SIZE(parent));
}

/* 300 children of a 3000-piece table: each costs no node until it
 * changes, and then only the path it changes. */
static void test_clone_many(void **state)
{
	enum { N = 3000, CHILDREN = 300 };
	struct fixture *f = *state;
	struct range_table *kids = test_calloc(CHILDREN, sizeof(*kids));
	unsigned height;
	long live;

	for (uint64_t k = 0; k < N; k++)
		assert_int_equal(range_insert(&f->rt, PG(2 * k), PG(2 * k + 1), &f->t[k % NTMPL]),
				 0);
	height = expect_sound(&f->rt);
	live = live_nodes(&f->mem);
	assert_int_equal(live, N);
	for (int c = 0; c < CHILDREN; c++) {
		init_table(f, &kids[c], N);
		assert_int_equal(range_clone(&kids[c], &f->rt), 0);
	}
	assert_int_equal(live_nodes(&f->mem), live);
	assert_int_equal(total_gets(f), N);
	for (int c = 0; c < CHILDREN; c++) {
		long before = live_nodes(&f->mem);
		uint64_t k = (uint64_t)c * (N / CHILDREN);

		assert_int_equal(range_remove(&kids[c], PG(2 * k), PG(2 * k + 1), NULL, NULL),
				 PG(1));
		/* The path is copied and rebalanced, the removed node stays
		 * in the parent. */
		assert_true(live_nodes(&f->mem) - before <= 2 * (long)height);
		assert_int_equal(range_count(&kids[c]), N - 1);
		assert_int_equal(range_check(&kids[c]), 0);
	}
	assert_int_equal(range_count(&f->rt), N);
	assert_int_equal(range_bytes(&f->rt), PG(N));
	for (int c = 0; c < CHILDREN; c++) {
		struct range_piece p;
		uint64_t k = (uint64_t)c * (N / CHILDREN);

		assert_int_equal(range_lookup(&kids[c], PG(2 * k), &p), 0);
		assert_int_equal(range_lookup(&f->rt, PG(2 * k), &p), 1);
		range_table_fini(&kids[c]);
	}
	assert_int_equal(live_nodes(&f->mem), live);
	assert_int_equal(range_check(&f->rt), 0);
	test_free(kids);
}

static void test_clone_refused(void **state)
{
	struct fixture *f = *state;
	struct range_table dst;

	load(f, (struct piece[]){ { 0, 4, 0 }, { 6, 8, 1 } }, 2);
	init_table(f, &dst, 1);
	assert_int_equal(range_clone(&dst, &f->rt), -ENOSPC);
	assert_int_equal(range_count(&dst), 0);
	assert_null(range_root(&dst));
	range_table_fini(&dst);
	init_table(f, &dst, 0);
	assert_int_equal(range_insert(&dst, PG(20), PG(21), &f->t[2]), 0);
	assert_int_equal(range_clone(&dst, &f->rt), -EINVAL);
	assert_int_equal(range_count(&dst), 1);
	range_table_fini(&dst);
	assert_int_equal(total_gets(f), 3);
}

static void test_clone_empty(void **state)
{
	struct fixture *f = *state;
	struct range_table dst;

	init_table(f, &dst, 0);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	assert_int_equal(range_count(&dst), 0);
	assert_int_equal(range_bytes(&dst), 0);
	range_table_fini(&dst);
}

/* ---- node reuse: an unshared table is changed in place ---- */

static void test_unshared_in_place(void **state)
{
	enum { N = 1000 };
	struct fixture *f = *state;
	struct range_table dst;
	struct range_piece p;
	long allocs, gets;

	for (uint64_t k = 0; k < N; k++)
		assert_int_equal(range_insert(&f->rt, PG(4 * k), PG(4 * k + 3), &f->t[0]), 0);
	/* One node and one reference per piece, the whole way through. */
	assert_int_equal(live_nodes(&f->mem), N);
	assert_int_equal(total_gets(f), N);
	allocs = f->mem.allocs;
	gets = total_gets(f);
	/* A piece goes, one grows, one is split: one node and one reference
	 * more, for the new half. */
	assert_int_equal(range_remove(&f->rt, PG(400), PG(403), NULL, NULL), PG(3));
	assert_int_equal(range_extend_to(&f->rt, PG(3), 4096, &p), 1);
	assert_int_equal(range_remove(&f->rt, PG(41), PG(42), NULL, NULL), PG(1));
	assert_int_equal(live_nodes(&f->mem), N);
	assert_int_equal(total_gets(f), gets + 1);
	/* Forked, the same changes copy paths, in the parent as in the child. */
	init_table(f, &dst, 0);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	assert_int_equal(range_remove(&f->rt, PG(800), PG(803), NULL, NULL), PG(3));
	assert_true(total_gets(f) > gets + 2);
	assert_true(f->mem.allocs > allocs + 2);
	range_table_fini(&dst);
	expect_sound(&f->rt);
}

/* ---- refusal: a refused operation changes nothing ---- */

/* Runs op with k allocations let through, for k = 0, 1, ... until it
 * succeeds; every refused attempt must leave the tables untouched. Returns
 * the allocations it needed. */
typedef long long (*op_fn)(struct fixture *f, struct range_table *rt);

static long sweep(struct fixture *f, struct range_table *const *tabs, size_t ntab, op_fn op,
		  long long want)
{
	for (long k = 0;; k++) {
		struct snapshot s;
		long long got;

		take(f, tabs, ntab, &s);
		f->mem.budget = k;
		got = op(f, tabs[0]);
		f->mem.budget = -1;
		if (got != -ENOMEM) {
			drop_snapshot(&s);
			assert_int_equal(got, want);
			return k;
		}
		expect_unchanged(f, &s);
		assert_true(k < 1000);
	}
}

static long long op_insert(struct fixture *f, struct range_table *rt)
{
	return range_insert(rt, PG(303), PG(304), &f->t[2]);
}

static long long op_hole(struct fixture *f, struct range_table *rt)
{
	(void)f;
	return range_remove(rt, PG(101), PG(102), NULL, NULL);
}

static long long op_remove_many(struct fixture *f, struct range_table *rt)
{
	(void)f;
	return range_remove(rt, PG(50), PG(250), NULL, NULL);
}

static long long op_copy(struct fixture *f, struct range_table *rt)
{
	(void)f;
	return range_copy(rt, PG(120), PG(161), PG(90));
}

static long long op_extend(struct fixture *f, struct range_table *rt)
{
	struct range_piece p;

	(void)f;
	return range_extend_to(rt, PG(403), 4096, &p);
}

/* Each op on 200 pieces, alone and then shared with a clone. Also checks
 * that the reservation stays close to what an op needs: alone, the pieces
 * it adds and a few nodes for joins; shared, a few paths. */
static void test_refusal_sweep(void **state)
{
	static const struct {
		op_fn op;
		long long want;
		long added; /* pieces */
	} ops[] = {
		{ op_insert, 0, 1 }, { op_hole, PG(1), 1 }, { op_remove_many, PG(150), 0 },
		{ op_copy, 0, 23 },  { op_extend, 1, 0 },
	};
	struct fixture *f = *state;
	struct range_table dst, *tabs[] = { &f->rt, &dst };

	for (int shared = 0; shared < 2; shared++) {
		for (size_t i = 0; i < ARRAY_SIZE(ops); i++) {
			unsigned height;
			long need;

			for (uint64_t k = 0; k < 200; k++)
				assert_int_equal(range_insert(&f->rt, PG(4 * k), PG(4 * k + 3),
							      &f->t[k % NTMPL]),
						 0);
			init_table(f, &dst, 0);
			if (shared)
				assert_int_equal(range_clone(&dst, &f->rt), 0);
			height = expect_sound(&f->rt);
			need = sweep(f, tabs, 1 + shared, ops[i].op, ops[i].want);
			assert_true(need >= ops[i].added);
			assert_true(need <= ops[i].added + (shared ? 3 * (long)height : 3));
			expect_sound(&f->rt);
			expect_refs(f, tabs, 2);
			range_table_fini(&dst);
			range_table_fini(&f->rt);
		}
	}
}

/* ---- depth ---- */

static double log2_of(double x)
{
	double r = 0, bit = 0.5;

	while (x >= 2) {
		x /= 2;
		r += 1;
	}
	for (int k = 0; k < 40; k++, bit /= 2) {
		x *= x;
		if (x >= 2) {
			x /= 2;
			r += bit;
		}
	}
	return r;
}

/* Ascending and descending inserts, the worst order for an unbalanced
 * tree, keep an AVL tree's height. */
static void test_depth(void **state)
{
	enum { N = 100000 };
	struct fixture *f = *state;

	for (int down = 0; down < 2; down++) {
		unsigned height;

		for (uint64_t k = 0; k < N; k++) {
			uint64_t i = down ? N - 1 - k : k;

			assert_int_equal(range_insert(&f->rt, PG(2 * i), PG(2 * i + 1), &f->t[0]),
					 0);
		}
		assert_int_equal(range_count(&f->rt), N);
		assert_int_equal(live_nodes(&f->mem), N);
		height = expect_sound(&f->rt);
		assert_true(height <= 1.45 * log2_of(N + 2.0));
		range_table_fini(&f->rt);
	}
}

/* ---- building trees node by node (snapshot restore) ---- */

static struct range_node *leaf(struct fixture *f, uint64_t s, uint64_t e, int t)
{
	struct range_node *n = range_node_make(&f->rt, NULL, PG(s), PG(e), &f->t[t], NULL);

	assert_non_null(n);
	return n;
}

static void test_build(void **state)
{
	static const struct piece want[] = { { 0, 1, 0 }, { 2, 3, 2 }, { 4, 5, 1 } };
	struct fixture *f = *state;
	struct range_node *l = leaf(f, 0, 1, 0), *r = leaf(f, 4, 5, 1), *root;
	struct range_table dst;

	root = range_node_make(&f->rt, l, PG(2), PG(3), &f->t[2], r);
	assert_non_null(root);
	init_table(f, &dst, 0);
	assert_int_equal(range_table_set_root(&dst, root), 0);
	assert_ptr_equal(range_root(&dst), root);
	assert_ptr_equal(range_node_left(root), l);
	assert_ptr_equal(range_node_right(root), r);
	expect_pieces(f, &dst, want, ARRAY_SIZE(want));
	/* A built table works like any other. */
	assert_int_equal(range_insert(&dst, PG(6), PG(8), &f->t[0]), 0);
	assert_int_equal(range_remove(&dst, PG(2), PG(3), NULL, NULL), PG(1));
	assert_int_equal(range_count(&dst), 3);
	assert_int_equal(range_check(&dst), 0);
	range_table_fini(&dst);
}

struct build_row {
	const char *name;
	int left, right;     /* 0: none, 1: a leaf, 2: two levels, 3: one leaf on both sides */
	uint64_t start, end; /* bytes */
	int err;
};

/* The left subtree is [2, 3) (two levels: and [4, 5)), the right one
 * [10, 11) (and [12, 13)); the same leaf on both sides is [8, 9). */
static const struct build_row build_rows[] = {
	{ "build: valid", 1, 1, PG(6), PG(8), 0 },
	{ "build: touching both sides", 1, 1, PG(3), PG(10), 0 },
	{ "build: one level of difference", 2, 1, PG(6), PG(8), 0 },
	{ "build: unaligned start", 1, 1, PG(6) + 1, PG(8), EINVAL },
	{ "build: unaligned end", 1, 1, PG(6), PG(8) - 1, EINVAL },
	{ "build: empty", 1, 1, PG(6), PG(6), EINVAL },
	{ "build: end before start", 1, 1, PG(8), PG(6), EINVAL },
	{ "build: overlapping the left", 1, 1, PG(2), PG(8), EINVAL },
	{ "build: before the left", 1, 0, 0, PG(1), EINVAL },
	{ "build: overlapping the right", 1, 1, PG(6), PG(11), EINVAL },
	{ "build: after the right", 0, 1, PG(14), PG(16), EINVAL },
	{ "build: left too tall", 2, 0, PG(6), PG(8), EINVAL },
	{ "build: right too tall", 0, 2, PG(6), PG(8), EINVAL },
	{ "build: same node on both sides", 3, 3, PG(6), PG(8), EINVAL },
};

/* The subtree for one side of a build_row. */
static struct range_node *make_side(struct fixture *f, int kind, int side)
{
	uint64_t base = side ? 10 : 2;

	if (!kind)
		return NULL;
	if (kind == 1)
		return leaf(f, base, base + 1, side);
	return range_node_make(&f->rt, leaf(f, base, base + 1, 0), PG(base + 2), PG(base + 3),
			       &f->t[side], NULL);
}

static void test_build_invalid(void **state)
{
	struct fixture *f = *state;
	const struct build_row *row = f->row;
	struct range_node *l, *r, *n;
	long allocs, gets;

	if (row->left == 3) {
		l = r = leaf(f, 8, 9, 0);
		range_node_ref(r);
	} else {
		l = make_side(f, row->left, 0);
		r = make_side(f, row->right, 1);
	}
	allocs = f->mem.allocs;
	gets = total_gets(f);
	errno = 0;
	n = range_node_make(&f->rt, l, row->start, row->end, &f->t[2], r);
	if (!row->err) {
		assert_non_null(n);
		assert_int_equal(range_table_set_root(&f->rt, n), 0);
		assert_int_equal(range_check(&f->rt), 0);
		return;
	}
	assert_null(n);
	assert_int_equal(errno, row->err);
	/* Nothing taken: no node, no reference, the children still ours. */
	assert_int_equal(f->mem.allocs, allocs);
	assert_int_equal(total_gets(f), gets);
	range_node_put(&f->rt, l);
	range_node_put(&f->rt, r);
}

static void test_build_refused(void **state)
{
	struct fixture *f = *state;
	struct range_node *l = leaf(f, 0, 1, 0), *n;
	long gets = total_gets(f);

	f->mem.budget = 0;
	errno = 0;
	n = range_node_make(&f->rt, l, PG(2), PG(3), &f->t[1], NULL);
	f->mem.budget = -1;
	assert_null(n);
	assert_int_equal(errno, ENOMEM);
	assert_int_equal(total_gets(f), gets);
	n = range_node_make(&f->rt, l, PG(2), PG(3), &f->t[1], NULL);
	assert_non_null(n);
	assert_int_equal(range_table_set_root(&f->rt, n), 0);
	expect_table(f, (struct piece[]){ { 0, 1, 0 }, { 2, 3, 1 } }, 2);
}

/* Two roots over one subtree, as a snapshot of a parent and its fork
 * child decodes: each table sees its own pieces, the subtree is counted
 * once, and the tables then diverge as clones do. */
static void test_build_dag(void **state)
{
	static const struct piece one[] = {
		{ 0, 1, 0 }, { 2, 3, 0 }, { 4, 5, 1 }, { 6, 7, 2 }, { 8, 9, 1 },
	};
	static const struct piece two[] = {
		{ 4, 5, 1 }, { 6, 7, 2 }, { 8, 9, 1 }, { 10, 11, 0 }, { 12, 13, 2 },
	};
	static const struct piece one_after[] = {
		{ 0, 1, 0 },
		{ 2, 3, 0 },
		{ 4, 5, 1 },
		{ 8, 9, 1 },
	};
	struct fixture *f = *state;
	struct range_table a, b, *tabs[] = { &a, &b };
	struct range_node *shared, *r1, *r2;
	const struct range_node **nodes;

	shared = range_node_make(&f->rt, leaf(f, 4, 5, 1), PG(6), PG(7), &f->t[2],
				 leaf(f, 8, 9, 1));
	assert_non_null(shared);
	r1 = range_node_make(&f->rt, leaf(f, 0, 1, 0), PG(2), PG(3), &f->t[0], shared);
	assert_non_null(r1);
	r2 = range_node_make(&f->rt, range_node_ref(shared), PG(10), PG(11), &f->t[0],
			     leaf(f, 12, 13, 2));
	assert_non_null(r2);
	init_table(f, &a, 0);
	init_table(f, &b, 0);
	assert_int_equal(range_table_set_root(&a, r1), 0);
	assert_int_equal(range_table_set_root(&b, r2), 0);
	expect_pieces(f, &a, one, ARRAY_SIZE(one));
	expect_pieces(f, &b, two, ARRAY_SIZE(two));
	/* An encoder walking both finds seven distinct nodes. */
	assert_int_equal(distinct_nodes(tabs, 2, &nodes), 7);
	test_free(nodes);
	expect_refs(f, tabs, 2);
	assert_int_equal(range_remove(&a, PG(6), PG(7), NULL, NULL), PG(1));
	expect_pieces(f, &a, one_after, ARRAY_SIZE(one_after));
	expect_pieces(f, &b, two, ARRAY_SIZE(two));
	expect_refs(f, tabs, 2);
	range_table_fini(&b);
	range_table_fini(&a);
}

static void test_set_root_refused(void **state)
{
	struct fixture *f = *state;
	struct range_node *n = range_node_make(&f->rt, leaf(f, 0, 1, 0), PG(2), PG(3), &f->t[1],
					       NULL);

	assert_non_null(n);
	load(f, (struct piece[]){ { 10, 11, 2 } }, 1);
	assert_int_equal(range_table_set_root(&f->rt, n), -EINVAL);
	range_table_fini(&f->rt);
	init_table(f, &f->rt, 1);
	assert_int_equal(range_table_set_root(&f->rt, n), -ENOSPC);
	assert_null(range_root(&f->rt));
	/* Still the caller's. */
	range_node_put(&f->rt, n);
	assert_int_equal(range_table_set_root(&f->rt, NULL), 0);
}

/* ---- random operations on several tables against a page-by-page model ---- */

#define MODEL_PAGES PIECES_MAX
#define MODEL_TABLES 6

/* What each page maps to, and where pieces begin: a piece starts at a
 * taken page whose predecessor is free or marked head. */
struct model {
	int t[MODEL_PAGES]; /* template, -1: nothing */
	unsigned char head[MODEL_PAGES + 1];
};

struct world {
	struct fixture *f;
	size_t max;
	size_t pages, len; /* the window used, the longest removal or copy */
	struct range_table rt[MODEL_TABLES];
	struct model m[MODEL_TABLES];
	bool live[MODEL_TABLES];
};

static size_t model_pieces(const struct model *m, struct piece *out)
{
	size_t n = 0;

	for (int p = 0; p < MODEL_PAGES; p++) {
		if (m->t[p] < 0)
			continue;
		if (p == 0 || m->t[p - 1] < 0 || m->head[p])
			out[n++] = (struct piece){ p, p, m->t[p] };
		out[n - 1].end++;
	}
	return n;
}

static void model_fill(struct model *m, size_t s, size_t e, int t)
{
	for (size_t p = s; p < e; p++) {
		m->t[p] = t;
		m->head[p] = 0;
	}
	m->head[s] = 1;
	m->head[e] = 1;
}

/* -ENOSPC when going from m to next grows a table past max. */
static int model_limit(const struct world *w, const struct model *m, const struct model *next)
{
	struct piece scratch[MODEL_PAGES];
	size_t before = model_pieces(m, scratch), after = model_pieces(next, scratch);

	return w->max && after > w->max && after > before ? -ENOSPC : 0;
}

enum op_kind { OP_INSERT, OP_REMOVE, OP_COPY, OP_EXTEND, OP_CLONE, OP_FINI };

struct op {
	enum op_kind kind;
	int i, j;         /* the table; for clone, the new one */
	size_t a, b, len; /* pages */
	int t;
};

/* What the model says op returns, the model after it, the piece an
 * extension grows and the runs a removal reports. */
struct outcome {
	long long ret;
	struct model next;
	struct piece grown;
	struct runs runs;
};

static void expect_remove(const struct world *w, const struct op *op, struct outcome *o)
{
	const struct model *m = &w->m[op->i];
	size_t removed = 0;

	for (size_t p = op->a; p < op->a + op->len; p++) {
		if (m->t[p] < 0)
			continue;
		removed++;
		o->next.t[p] = -1;
		if (p == op->a || m->t[p - 1] < 0)
			run_add(&o->runs, PG(p), PG(p + 1));
		else
			o->runs.v[o->runs.n - 1] = PG(p + 1);
	}
	o->ret = removed ? model_limit(w, m, &o->next) : 0;
	if (!o->ret)
		o->ret = (long long)PG(removed);
	else
		o->runs.n = 0; /* a refused removal reports nothing */
}

static void expect_copy(const struct world *w, const struct op *op, struct outcome *o)
{
	const struct model *m = &w->m[op->i];

	if (op->a == op->b)
		return;
	for (size_t p = 0; p < op->len; p++) {
		o->next.t[op->b + p] = m->t[op->a + p];
		o->next.head[op->b + p] = m->head[op->a + p];
	}
	o->next.head[op->b] = 1;
	o->next.head[op->b + op->len] = 1;
	o->ret = model_limit(w, m, &o->next);
}

static void expect_extend(const struct world *w, const struct op *op, struct outcome *o)
{
	const struct model *m = &w->m[op->i];
	int below = (int)op->a - 1;

	while (below >= 0 && m->t[below] < 0)
		below--;
	if (m->t[op->a] >= 0 || below < 0)
		return;
	o->ret = 1;
	for (size_t p = below + 1; p <= op->a; p++) {
		o->next.t[p] = m->t[below];
		o->next.head[p] = 0;
	}
	o->next.head[op->a + 1] = 1;
	while (below > 0 && m->t[below - 1] >= 0 && !m->head[below])
		below--;
	o->grown = (struct piece){ below, op->a + 1, m->t[below] };
}

static void expect_op(const struct world *w, const struct op *op, struct outcome *o)
{
	const struct model *m = &w->m[op->i];
	struct piece scratch[MODEL_PAGES];

	memset(o, 0, sizeof(*o));
	o->next = *m;
	switch (op->kind) {
	case OP_INSERT:
		for (size_t p = op->a; p < op->a + op->len; p++)
			if (m->t[p] >= 0)
				o->ret = -EEXIST;
		model_fill(&o->next, op->a, op->a + op->len, op->t);
		if (!o->ret)
			o->ret = model_limit(w, m, &o->next);
		break;
	case OP_REMOVE:
		expect_remove(w, op, o);
		break;
	case OP_COPY:
		expect_copy(w, op, o);
		break;
	case OP_EXTEND:
		expect_extend(w, op, o);
		break;
	case OP_CLONE:
		o->ret = w->max && model_pieces(m, scratch) > w->max ? -ENOSPC : 0;
		break;
	case OP_FINI:
		break;
	}
}

static long long run_op(struct world *w, const struct op *op, struct range_piece *grown,
			struct runs *runs)
{
	struct range_table *rt = &w->rt[op->i];
	void *t = &w->f->t[op->t];

	switch (op->kind) {
	case OP_INSERT:
		return range_insert(rt, PG(op->a), PG(op->a + op->len), t);
	case OP_REMOVE:
		return range_remove(rt, PG(op->a), PG(op->a + op->len), run_add, runs);
	case OP_COPY:
		return range_copy(rt, PG(op->a), PG(op->b), PG(op->len));
	case OP_EXTEND:
		return range_extend_to(rt, PG(op->a) + 99, 4096, grown);
	case OP_CLONE:
		return range_clone(&w->rt[op->j], rt);
	case OP_FINI:
		range_table_fini(rt);
		return 0;
	}
	return -1;
}

/* After a successful run: the reported piece and runs are the model's, and
 * the model moves on. */
static void apply(struct world *w, const struct op *op, struct outcome *o,
		  const struct range_piece *grown, const struct runs *runs)
{
	if (op->kind == OP_EXTEND && o->ret == 1) {
		assert_int_equal(grown->start, PG(o->grown.start));
		assert_int_equal(grown->end, PG(o->grown.end));
		assert_ptr_equal(grown->tmpl, &w->f->t[o->grown.t]);
	}
	if (op->kind == OP_REMOVE) {
		assert_int_equal(runs->n, o->runs.n);
		assert_memory_equal(runs->v, o->runs.v, runs->n * sizeof(runs->v[0]));
	}
	if (o->ret < 0)
		return;
	w->m[op->i] = o->next;
	if (op->kind == OP_CLONE) {
		w->m[op->j] = o->next;
		w->live[op->j] = true;
	}
	if (op->kind == OP_FINI)
		w->live[op->i] = false;
}

static size_t live_tables(struct world *w, struct range_table **tabs)
{
	size_t n = 0;

	for (int i = 0; i < MODEL_TABLES; i++)
		if (w->live[i])
			tabs[n++] = &w->rt[i];
	return n;
}

/* Every live table is its model, and the references and nodes add up. */
static void expect_world(struct world *w)
{
	struct range_table *tabs[MODEL_TABLES];
	size_t ntab = live_tables(w, tabs);

	for (int i = 0; i < MODEL_TABLES; i++) {
		struct piece want[MODEL_PAGES];

		if (!w->live[i])
			continue;
		expect_pieces(w->f, &w->rt[i], want, model_pieces(&w->m[i], want));
		for (size_t p = 0; p < w->pages; p++) {
			struct range_piece got;
			int found = range_lookup(&w->rt[i], PG(p) + 17, &got);

			assert_int_equal(found, w->m[i].t[p] >= 0);
			if (found)
				assert_ptr_equal(got.tmpl, &w->f->t[w->m[i].t[p]]);
		}
	}
	expect_refs(w->f, tabs, ntab);
}

static uint64_t next_rand(uint64_t *seed)
{
	*seed ^= *seed << 13;
	*seed ^= *seed >> 7;
	*seed ^= *seed << 17;
	return *seed;
}

static void pick_op(const struct world *w, uint64_t *seed, struct op *op)
{
	uint64_t r = next_rand(seed);
	unsigned kind = (r >> 24) % 12;
	int nlive = 0;
	size_t n;

	memset(op, 0, sizeof(*op));
	op->i = (int)((r >> 40) % MODEL_TABLES);
	while (!w->live[op->i])
		op->i = (op->i + 1) % MODEL_TABLES;
	/* Long removals and copies thin the table out: a thin one gets
	 * inserts, short ones, which make many pieces. */
	n = range_count(&w->rt[op->i]);
	if (n < w->pages / 8 && (!w->max || n < w->max))
		kind = 0;
	op->len = 1 + r % (kind < 3 ? 8 : w->len);
	op->a = (r >> 8) % (w->pages - op->len + 1);
	op->b = (r >> 16) % (w->pages - op->len + 1);
	op->t = (int)((r >> 32) % NTMPL);
	op->j = -1;
	for (int i = 0; i < MODEL_TABLES; i++) {
		nlive += w->live[i];
		if (!w->live[i] && op->j < 0)
			op->j = i;
	}
	switch (kind) {
	case 0:
	case 1:
	case 2:
		op->kind = OP_INSERT;
		break;
	case 3:
	case 4:
		op->kind = OP_REMOVE;
		break;
	case 5:
	case 6:
	case 7:
		op->kind = OP_COPY;
		break;
	case 8:
		op->kind = OP_EXTEND;
		op->a = (r >> 48) % w->pages;
		break;
	case 9:
	case 10:
		op->kind = op->j >= 0 ? OP_CLONE : OP_INSERT;
		break;
	default:
		op->kind = nlive > 1 ? OP_FINI : OP_REMOVE;
		break;
	}
}

/* One op, first refused at each of its allocations when sweeping. */
static long long step(struct world *w, const struct op *op, bool sweeping)
{
	struct range_table *tabs[MODEL_TABLES];
	size_t ntab = live_tables(w, tabs);
	struct outcome o;

	expect_op(w, op, &o);
	for (long k = sweeping && op->kind != OP_FINI ? 0 : -1;; k++) {
		struct range_piece grown = { 0 };
		struct runs runs = { .n = 0 };
		struct snapshot s;
		long long got;

		take(w->f, tabs, ntab, &s);
		w->f->mem.budget = k;
		got = run_op(w, op, &grown, &runs);
		w->f->mem.budget = -1;
		if (got == -ENOMEM && k >= 0) {
			expect_unchanged(w->f, &s);
			assert_int_equal(runs.n, 0);
			continue;
		}
		drop_snapshot(&s);
		assert_int_equal(got, o.ret);
		apply(w, op, &o, &grown, &runs);
		return got;
	}
}

struct model_row {
	const char *name;
	size_t max;
	size_t pages, len;
	int steps;
	bool sweep; /* refuse each allocation of each op in turn first */
};

static const struct model_row model_rows[] = {
	{ "model: unlimited", 0, 64, 8, 6000, false },
	{ "model: max 4", 4, 64, 8, 4000, false },
	{ "model: max 12", 12, 64, 8, 4000, false },
	{ "model: wide", 0, 512, 96, 4000, false },
	{ "model: wide, max 60", 60, 512, 96, 3000, false },
	{ "model: every allocation refused in turn", 0, 64, 8, 1500, true },
	{ "model: refusals, max 8", 8, 64, 8, 1000, true },
	{ "model: wide, every allocation refused in turn", 0, 512, 96, 800, true },
};

static void test_model(void **state)
{
	struct fixture *f = *state;
	const struct model_row *row = f->row;
	uint64_t seed = 0x9e3779b97f4a7c15u ^ row->max ^ ((uint64_t)row->sweep << 20) ^
			(row->pages << 32);
	struct world *w = test_calloc(1, sizeof(*w));
	int enospc = 0, clones = 0;

	w->f = f;
	w->max = row->max;
	w->pages = row->pages;
	w->len = row->len;
	for (int i = 0; i < MODEL_TABLES; i++) {
		init_table(f, &w->rt[i], row->max);
		for (int p = 0; p < MODEL_PAGES; p++)
			w->m[i].t[p] = -1;
	}
	w->live[0] = true;
	for (int k = 0; k < row->steps; k++) {
		struct op op;

		pick_op(w, &seed, &op);
		enospc += step(w, &op, row->sweep) == -ENOSPC;
		clones += op.kind == OP_CLONE;
		expect_world(w);
	}
	for (int i = 0; i < MODEL_TABLES; i++)
		range_table_fini(&w->rt[i]);
	assert_int_equal(f->mem.allocs, f->mem.frees);
	/* The limited runs did run into their limit, and tables did share. */
	assert_true(row->max ? enospc > 0 : enospc == 0);
	assert_true(clones > 0);
	test_free(w);
}

/* Thousands of pieces in tables forked from one another at random
 * points, removals and copies spanning hundreds of pieces: every
 * reservation suffices (range.c asserts it in debug builds), the trees
 * stay sound, references and nodes add up. */
static void test_stress(void **state)
{
	enum { TABLES = 4, STEPS = 30000, SPAN = 1 << 16, WIDE = 2048 };
	struct fixture *f = *state;
	struct range_table rt[TABLES], *tabs[TABLES];
	uint64_t seed = 0x5eedf00dcafe;
	unsigned height = 0;

	for (int i = 0; i < TABLES; i++) {
		init_table(f, &rt[i], 0);
		tabs[i] = &rt[i];
	}
	for (int k = 0; k < 6000; k++) {
		uint64_t r = next_rand(&seed), a = r % SPAN, len = 1 + (r >> 20) % 8;
		int err = range_insert(&rt[0], PG(a), PG(a + len), &f->t[(r >> 40) % NTMPL]);

		assert_true(err == 0 || err == -EEXIST);
	}
	for (int k = 0; k < STEPS; k++) {
		uint64_t r = next_rand(&seed), a = r % SPAN, b = (r >> 16) % SPAN;
		uint64_t len = 1 + (r >> 32) % WIDE;
		struct range_table *t = &rt[(r >> 52) % TABLES];
		struct range_piece p;
		int err;

		/* Long removals and copies from sparse parts thin the tables:
		 * a thin one gets inserts until it is tall again. */
		switch (range_count(t) < 4000 ? 0 : (r >> 56) % 8) {
		case 0:
		case 1:
		case 2:
			err = range_insert(t, PG(a), PG(a + 1 + len % 16), &f->t[b % NTMPL]);
			assert_true(err == 0 || err == -EEXIST);
			break;
		case 3:
			assert_true(range_remove(t, PG(a), PG(a + len), NULL, NULL) >= 0);
			break;
		case 4:
		case 5:
			assert_int_equal(range_copy(t, PG(a), PG(b), PG(len)), 0);
			break;
		case 6:
			assert_true(range_extend_to(t, PG(a), 4096, &p) >= 0);
			break;
		default:
			range_table_fini(&rt[b % TABLES]);
			assert_int_equal(range_clone(&rt[b % TABLES], t), 0);
			break;
		}
		if (k % 3000 == 2999) {
			for (int i = 0; i < TABLES; i++) {
				unsigned h = expect_sound(&rt[i]);

				height = h > height ? h : height;
			}
			expect_refs(f, tabs, TABLES);
		}
	}
	assert_true(height >= 13);
	for (int i = 0; i < TABLES; i++)
		range_table_fini(&rt[i]);
}

/* ---- two threads, two tables sharing nodes ---- */

/* Templates and an allocator that two threads may use at once. */
struct shared_tmpl {
	atomic_long gets, puts;
};

static atomic_long shared_allocs, shared_frees;

static void shared_get(void *tmpl)
{
	atomic_fetch_add(&((struct shared_tmpl *)tmpl)->gets, 1);
}

static void shared_put(void *tmpl)
{
	atomic_fetch_add(&((struct shared_tmpl *)tmpl)->puts, 1);
}

static void *shared_alloc(void *ctx, size_t size)
{
	(void)ctx;
	atomic_fetch_add(&shared_allocs, 1);
	return malloc(size);
}

static void shared_free(void *ctx, void *p, size_t size)
{
	(void)ctx;
	(void)size;
	atomic_fetch_add(&shared_frees, 1);
	free(p);
}

static const struct range_ops shared_ops = {
	.get = shared_get,
	.put = shared_put,
	.node_alloc = shared_alloc,
	.node_free = shared_free,
};

#define THREAD_PAGES 16384

/* One thread's table and its page model (template index, -1: none). */
struct worker {
	struct range_table rt;
	struct shared_tmpl *t;
	int m[THREAD_PAGES];
	uint64_t seed;
};

static void worker_extend(struct worker *w, size_t a)
{
	struct range_piece p;
	int below = (int)a - 1;

	while (below >= 0 && w->m[below] < 0)
		below--;
	assert_int_equal(range_extend_to(&w->rt, PG(a), 4096, &p), w->m[a] < 0 && below >= 0);
	for (size_t k = below + 1; w->m[a] < 0 && below >= 0 && k <= a; k++)
		w->m[k] = w->m[below];
}

/* One random op on the worker's table, its model following. */
static void worker_step(struct worker *w)
{
	uint64_t r = next_rand(&w->seed), len = 1 + (r >> 32) % 64;
	size_t a = r % (THREAD_PAGES - len), b = (r >> 16) % (THREAD_PAGES - len);
	int taken = 0, t = (int)((r >> 48) % NTMPL), tmp[64];
	struct range_table tmp_rt;

	for (size_t k = a; k < a + len; k++)
		taken += w->m[k] >= 0;
	switch ((r >> 56) % 5) {
	case 0:
		assert_int_equal(range_insert(&w->rt, PG(a), PG(a + len), &w->t[t]),
				 taken ? -EEXIST : 0);
		for (size_t k = a; !taken && k < a + len; k++)
			w->m[k] = t;
		break;
	case 1:
		assert_int_equal(range_remove(&w->rt, PG(a), PG(a + len), NULL, NULL), PG(taken));
		for (size_t k = a; k < a + len; k++)
			w->m[k] = -1;
		break;
	case 2:
		assert_int_equal(range_copy(&w->rt, PG(a), PG(b), PG(len)), 0);
		memcpy(tmp, &w->m[a], len * sizeof(int));
		memcpy(&w->m[b], tmp, len * sizeof(int));
		break;
	case 3:
		worker_extend(w, a);
		break;
	default:
		/* A fork that exits at once: references come and go on nodes
		 * the other thread's table shares. */
		range_table_init(&tmp_rt, 0, &shared_ops, NULL);
		assert_int_equal(range_clone(&tmp_rt, &w->rt), 0);
		assert_int_equal(range_remove(&tmp_rt, PG(a), PG(a + len), NULL, NULL), PG(taken));
		range_table_fini(&tmp_rt);
		break;
	}
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;

	for (int k = 0; k < 20000; k++)
		worker_step(w);
	return NULL;
}

/* Two tables cloned from one and changed at once by two threads (as two
 * fork children served by different workers): each ends up as its own
 * model says, and nothing leaks. Run it under RP_TSAN as well. */
static void test_threads(void **state)
{
	struct shared_tmpl *t = test_calloc(NTMPL, sizeof(*t));
	struct worker *w = test_calloc(2, sizeof(*w));
	struct range_table parent;
	pthread_t th[2];

	(void)state;
	range_table_init(&parent, 0, &shared_ops, NULL);
	for (int k = 0; k < THREAD_PAGES; k++)
		w[0].m[k] = -1;
	for (int k = 0; k < THREAD_PAGES / 8; k++) {
		assert_int_equal(range_insert(&parent, PG(8 * k), PG(8 * k + 5), &t[k % NTMPL]), 0);
		for (int p = 8 * k; p < 8 * k + 5; p++)
			w[0].m[p] = k % NTMPL;
	}
	for (int i = 0; i < 2; i++) {
		memcpy(w[i].m, w[0].m, sizeof(w[i].m));
		w[i].t = t;
		w[i].seed = 0xabcdef12345 + (uint64_t)i * 7919;
		range_table_init(&w[i].rt, 0, &shared_ops, NULL);
		assert_int_equal(range_clone(&w[i].rt, &parent), 0);
	}
	range_table_fini(&parent);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(range_check(&w[i].rt), 0);
		for (int p = 0; p < THREAD_PAGES; p++) {
			struct range_piece got;

			assert_int_equal(range_lookup(&w[i].rt, PG(p), &got), w[i].m[p] >= 0);
			if (w[i].m[p] >= 0)
				assert_ptr_equal(got.tmpl, &t[w[i].m[p]]);
		}
		range_table_fini(&w[i].rt);
	}
	for (int k = 0; k < NTMPL; k++)
		assert_int_equal(atomic_load(&t[k].gets), atomic_load(&t[k].puts));
	assert_int_equal(atomic_load(&shared_allocs), atomic_load(&shared_frees));
	test_free(w);
	test_free(t);
}

#define ROW_TESTS(tests, n, fn, rows)                                           \
	for (size_t k = 0; k < ARRAY_SIZE(rows); k++)                           \
		(tests)[(n)++] = (struct CMUnitTest)                            \
		{                                                               \
			(rows)[k].name, fn, setup, teardown, (void *)&(rows)[k] \
		}

#define PLAIN(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static const struct CMUnitTest plain_tests[] = {
	PLAIN(test_empty),
	PLAIN(test_insert_lookup),
	PLAIN(test_insert_adjacent),
	PLAIN(test_growth),
	PLAIN(test_default_allocator),
	PLAIN(test_remove_huge),
	PLAIN(test_max_insert),
	PLAIN(test_max_split),
	PLAIN(test_max_split_at_limit),
	PLAIN(test_max_copy),
	PLAIN(test_max_copy_at_limit),
	PLAIN(test_max_copy_bypassed),
	PLAIN(test_copy_many),
	PLAIN(test_clone),
	PLAIN(test_clone_isolation),
	PLAIN(test_clone_many),
	PLAIN(test_clone_refused),
	PLAIN(test_clone_empty),
	PLAIN(test_unshared_in_place),
	PLAIN(test_refusal_sweep),
	PLAIN(test_depth),
	PLAIN(test_build),
	PLAIN(test_build_refused),
	PLAIN(test_build_dag),
	PLAIN(test_set_root_refused),
	PLAIN(test_stress),
	cmocka_unit_test(test_threads),
};

int main(void)
{
	struct CMUnitTest tests[ARRAY_SIZE(plain_tests) + ARRAY_SIZE(overlap_rows) +
				ARRAY_SIZE(insert_invalid_rows) + ARRAY_SIZE(remove_invalid_rows) +
				ARRAY_SIZE(remove_rows) + ARRAY_SIZE(run_rows) +
				ARRAY_SIZE(copy_rows) + ARRAY_SIZE(copy_invalid_rows) +
				ARRAY_SIZE(extend_rows) + ARRAY_SIZE(build_rows) +
				ARRAY_SIZE(model_rows)];
	size_t n = ARRAY_SIZE(plain_tests);

	memcpy(tests, plain_tests, sizeof(plain_tests));
	ROW_TESTS(tests, n, test_insert_overlap, overlap_rows);
	ROW_TESTS(tests, n, test_insert_invalid, insert_invalid_rows);
	ROW_TESTS(tests, n, test_remove_invalid, remove_invalid_rows);
	ROW_TESTS(tests, n, test_remove, remove_rows);
	ROW_TESTS(tests, n, test_runs, run_rows);
	ROW_TESTS(tests, n, test_copy, copy_rows);
	ROW_TESTS(tests, n, test_copy_invalid, copy_invalid_rows);
	ROW_TESTS(tests, n, test_extend, extend_rows);
	ROW_TESTS(tests, n, test_build_invalid, build_rows);
	ROW_TESTS(tests, n, test_model, model_rows);
	assert_int_equal(n, ARRAY_SIZE(tests));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
