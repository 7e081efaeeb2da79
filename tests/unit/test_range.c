/* Unit tests of the range table (daemon/range.c).
 *
 * Templates are fakes that count the references the table takes and drops:
 * after every operation each one must hold exactly one reference per piece
 * that uses it, and none once the table is gone. Table-driven tests run one
 * named test per row. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "range.h"

#define PG(n) ((uint64_t)(n) * 4096u)
#define NTMPL 3
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

static const struct range_ops fake_ops = { .get = fake_get, .put = fake_put };

struct fixture {
	struct range_table rt;
	struct fake_tmpl t[NTMPL];
	const void *row; /* the table row a table-driven test runs */
};

static int setup(void **state)
{
	struct fixture *f = test_calloc(1, sizeof(*f));

	f->row = *state;
	range_table_init(&f->rt, 0, &fake_ops);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	int balanced = 1;

	range_table_fini(&f->rt);
	assert_int_equal(f->rt.n, 0);
	assert_int_equal(f->rt.bytes, 0);
	for (int k = 0; k < NTMPL; k++)
		balanced &= f->t[k].gets == f->t[k].puts;
	test_free(f);
	assert_true(balanced);
	return 0;
}

/* A piece in pages; t indexes the fixture's templates. */
struct piece {
	uint64_t start, end;
	int t;
};

static void load(struct fixture *f, const struct piece *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		assert_int_equal(range_insert(&f->rt, PG(p[k].start),
					      PG(p[k].end), &f->t[p[k].t]),
				 0);
}

/* The table holds exactly want, bytes is their sum, and each template
 * holds one reference per piece using it. */
static void expect_table(const struct fixture *f, const struct piece *want,
			 size_t n)
{
	long refs[NTMPL] = { 0 };
	uint64_t bytes = 0;

	assert_int_equal(f->rt.n, n);
	for (size_t k = 0; k < n; k++) {
		assert_int_equal(f->rt.v[k].start, PG(want[k].start));
		assert_int_equal(f->rt.v[k].end, PG(want[k].end));
		assert_ptr_equal(f->rt.v[k].tmpl, &f->t[want[k].t]);
		bytes += PG(want[k].end - want[k].start);
		refs[want[k].t]++;
	}
	assert_int_equal(f->rt.bytes, bytes);
	for (int k = 0; k < NTMPL; k++)
		assert_int_equal(f->t[k].gets - f->t[k].puts, refs[k]);
}

static long total_gets(const struct fixture *f)
{
	long gets = 0;

	for (int k = 0; k < NTMPL; k++)
		gets += f->t[k].gets;
	return gets;
}

/* Everything a failed operation must leave as it was. */
struct snapshot {
	size_t n;
	uint64_t bytes;
	struct range v[64];
	struct fake_tmpl t[NTMPL];
};

static void take(const struct fixture *f, struct snapshot *s)
{
	assert_true(f->rt.n <= ARRAY_SIZE(s->v));
	s->n = f->rt.n;
	s->bytes = f->rt.bytes;
	if (s->n)
		memcpy(s->v, f->rt.v, s->n * sizeof(s->v[0]));
	memcpy(s->t, f->t, sizeof(s->t));
}

static void expect_unchanged(const struct fixture *f, const struct snapshot *s)
{
	assert_int_equal(f->rt.n, s->n);
	assert_int_equal(f->rt.bytes, s->bytes);
	if (s->n)
		assert_memory_equal(f->rt.v, s->v, s->n * sizeof(s->v[0]));
	assert_memory_equal(f->t, s->t, sizeof(s->t));
}

/* ---- insert and lookup ---- */

static void test_empty(void **state)
{
	struct fixture *f = *state;

	assert_null(range_lookup(&f->rt, 0));
	assert_null(range_lookup(&f->rt, PG(5)));
	assert_null(range_extend_to(&f->rt, PG(5), 4096));
	assert_int_equal(range_remove(&f->rt, 0, PG(10)), 0);
	assert_int_equal(range_copy(&f->rt, 0, PG(10), PG(2)), 0);
	expect_table(f, NULL, 0);
	/* Nothing to copy needs no array either. */
	assert_int_equal(f->rt.cap, 0);
}

static void test_insert_lookup(void **state)
{
	static const struct piece in[] = {
		{ 8, 12, 0 }, { 0, 4, 1 }, { 20, 24, 2 }, { 14, 16, 0 },
	};
	static const struct piece sorted[] = {
		{ 0, 4, 1 }, { 8, 12, 0 }, { 14, 16, 0 }, { 20, 24, 2 },
	};
	static const struct {
		uint64_t addr;
		int piece; /* index in sorted, -1: none */
	} look[] = {
		{ 0, 0 }, { PG(4) - 1, 0 }, { PG(4), -1 }, { PG(8), 1 },
		{ PG(12) - 1, 1 }, { PG(13), -1 }, { PG(15) + 7, 2 },
		{ PG(24) - 1, 3 }, { PG(24), -1 }, { UINT64_MAX, -1 },
	};
	struct fixture *f = *state;

	load(f, in, ARRAY_SIZE(in));
	expect_table(f, sorted, ARRAY_SIZE(sorted));
	for (size_t k = 0; k < ARRAY_SIZE(look); k++) {
		struct range *r = range_lookup(&f->rt, look[k].addr);

		if (look[k].piece < 0)
			assert_null(r);
		else
			assert_ptr_equal(r, &f->rt.v[look[k].piece]);
	}
}

static void test_insert_adjacent(void **state)
{
	static const struct piece in[] = { { 4, 8, 0 }, { 0, 4, 1 }, { 8, 12, 2 } };
	static const struct piece want[] = { { 0, 4, 1 }, { 4, 8, 0 }, { 8, 12, 2 } };
	struct fixture *f = *state;

	load(f, in, ARRAY_SIZE(in));
	expect_table(f, want, ARRAY_SIZE(want));
	assert_ptr_equal(range_lookup(&f->rt, PG(4) - 1), &f->rt.v[0]);
	assert_ptr_equal(range_lookup(&f->rt, PG(4)), &f->rt.v[1]);
	assert_ptr_equal(range_lookup(&f->rt, PG(8)), &f->rt.v[2]);
}

/* Enough pieces to outgrow the first page of the array several times. */
static void test_growth(void **state)
{
	enum { N = 1000 };
	struct fixture *f = *state;

	for (uint64_t k = N; k-- > 0;)
		assert_int_equal(range_insert(&f->rt, PG(2 * k), PG(2 * k + 1),
					      &f->t[k % NTMPL]),
				 0);
	assert_int_equal(f->rt.n, N);
	assert_int_equal(f->rt.bytes, PG(N));
	assert_true(f->rt.cap >= N);
	/* The array is a mapping of its own. */
	assert_int_equal((uintptr_t)f->rt.v % 4096, 0);
	for (uint64_t k = 0; k < N; k++) {
		assert_ptr_equal(range_lookup(&f->rt, PG(2 * k) + 1), &f->rt.v[k]);
		assert_null(range_lookup(&f->rt, PG(2 * k + 1)));
	}
	assert_int_equal(range_remove(&f->rt, PG(1), PG(2 * N)), PG(N - 1));
	expect_table(f, (struct piece[]){ { 0, 1, 0 } }, 1);
}

/* fini gives the array's mapping back. */
static void test_fini_unmaps(void **state)
{
	struct fixture *f = *state;
	unsigned char resident;
	void *v;

	load(f, (struct piece[]){ { 0, 1, 0 } }, 1);
	v = f->rt.v;
	assert_int_equal(mincore(v, 4096, &resident), 0);
	range_table_fini(&f->rt);
	assert_int_equal(mincore(v, 4096, &resident), -1);
	assert_int_equal(errno, ENOMEM);
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
	struct snapshot s;

	load(f, base, ARRAY_SIZE(base));
	take(f, &s);
	assert_int_equal(range_insert(&f->rt, PG(row->start), PG(row->end),
				      &f->t[2]),
			 -EEXIST);
	expect_unchanged(f, &s);
}

struct span_row {
	const char *name;
	uint64_t start, end; /* bytes */
};

/* The same bad spans, refused by insert and by remove. */
#define INVALID_SPANS(op)                                   \
	{ op " invalid: unaligned start", 1, PG(8) },       \
	{ op " invalid: unaligned end", PG(1), PG(8) + 1 }, \
	{ op " invalid: empty", PG(4), PG(4) },             \
	{ op " invalid: end before start", PG(8), PG(4) },  \
	{ op " invalid: end wrapped", PG(8), 0 }

static const struct span_row insert_invalid_rows[] = { INVALID_SPANS("insert") };
static const struct span_row remove_invalid_rows[] = { INVALID_SPANS("remove") };

static void test_insert_invalid(void **state)
{
	struct fixture *f = *state;
	const struct span_row *row = f->row;
	struct snapshot s;

	load(f, (struct piece[]){ { 20, 24, 0 } }, 1);
	take(f, &s);
	assert_int_equal(range_insert(&f->rt, row->start, row->end, &f->t[1]),
			 -EINVAL);
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
	{ "remove: whole piece", 6, 10, 4, 2,
	  { { 0, 4, 0 }, { 12, 16, 2 } } },
	{ "remove: head", 6, 8, 2, 3,
	  { { 0, 4, 0 }, { 8, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: tail", 8, 10, 2, 3,
	  { { 0, 4, 0 }, { 6, 8, 1 }, { 12, 16, 2 } } },
	{ "remove: middle splits", 7, 9, 2, 4,
	  { { 0, 4, 0 }, { 6, 7, 1 }, { 9, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: tail and gap", 3, 5, 1, 3,
	  { { 0, 3, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: gap and head", 10, 13, 1, 3,
	  { { 0, 4, 0 }, { 6, 10, 1 }, { 13, 16, 2 } } },
	{ "remove: several pieces and gaps", 2, 14, 8, 2,
	  { { 0, 2, 0 }, { 14, 16, 2 } } },
	{ "remove: gaps around one piece", 4, 12, 4, 2,
	  { { 0, 4, 0 }, { 12, 16, 2 } } },
	{ "remove: everything", 0, 100, 12, 0, { { 0 } } },
	{ "remove: nothing in a gap", 4, 6, 0, 3,
	  { { 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
	{ "remove: nothing past the end", 16, 30, 0, 3,
	  { { 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 } } },
};

static void test_remove(void **state)
{
	static const struct piece base[] = {
		{ 0, 4, 0 }, { 6, 10, 1 }, { 12, 16, 2 },
	};
	struct fixture *f = *state;
	const struct remove_row *row = f->row;

	load(f, base, ARRAY_SIZE(base));
	assert_int_equal(range_remove(&f->rt, PG(row->start), PG(row->end)),
			 PG(row->removed));
	expect_table(f, row->want, row->n);
	/* Splitting takes a reference for the new piece, nothing else does. */
	assert_int_equal(total_gets(f), ARRAY_SIZE(base) + (row->n > 3));
}

static void test_remove_invalid(void **state)
{
	struct fixture *f = *state;
	const struct span_row *row = f->row;
	struct snapshot s;

	load(f, (struct piece[]){ { 0, 24, 0 } }, 1);
	take(f, &s);
	assert_int_equal(range_remove(&f->rt, row->start, row->end), -EINVAL);
	expect_unchanged(f, &s);
}

/* The count of removed bytes must fit the return type. */
static void test_remove_huge(void **state)
{
	const uint64_t half = (uint64_t)1 << 63;
	struct fixture *f = *state;

	assert_int_equal(range_insert(&f->rt, 0, half, &f->t[0]), 0);
	assert_int_equal(range_remove(&f->rt, 0, half), -EINVAL);
	assert_int_equal(range_remove(&f->rt, 0, half - 4096),
			 (long long)(half - 4096));
	assert_int_equal(f->rt.n, 1);
	assert_int_equal(f->rt.v[0].start, half - 4096);
	assert_int_equal(f->rt.bytes, 4096);
}

/* ---- the piece limit ---- */

static void test_max_insert(void **state)
{
	struct fixture *f = *state;
	struct snapshot s;

	range_table_init(&f->rt, 2, &fake_ops);
	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, &s);
	assert_int_equal(range_insert(&f->rt, PG(20), PG(24), &f->t[2]),
			 -ENOSPC);
	expect_unchanged(f, &s);
	assert_int_equal(range_remove(&f->rt, 0, PG(4)), PG(4));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(24), &f->t[2]), 0);
	expect_table(f, (struct piece[]){ { 8, 12, 1 }, { 20, 24, 2 } }, 2);
}

static void test_max_split(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 8, 12, 1 } };
	struct fixture *f = *state;
	struct snapshot s;

	range_table_init(&f->rt, 2, &fake_ops);
	load(f, base, ARRAY_SIZE(base));
	take(f, &s);
	assert_int_equal(range_remove(&f->rt, PG(9), PG(10)), -ENOSPC);
	expect_unchanged(f, &s);
	/* Trimming an edge needs no slot. */
	assert_int_equal(range_remove(&f->rt, PG(11), PG(12)), PG(1));
	assert_int_equal(range_remove(&f->rt, PG(3), PG(9)), PG(2));
	expect_table(f, (struct piece[]){ { 0, 3, 0 }, { 9, 11, 1 } }, 2);
}

static void test_max_split_at_limit(void **state)
{
	static const struct piece base[] = { { 0, 4, 0 }, { 8, 12, 1 } };
	static const struct piece want[] = {
		{ 0, 4, 0 }, { 8, 9, 1 }, { 10, 12, 1 },
	};
	struct fixture *f = *state;

	range_table_init(&f->rt, 3, &fake_ops);
	load(f, base, ARRAY_SIZE(base));
	assert_int_equal(range_remove(&f->rt, PG(9), PG(10)), PG(1));
	expect_table(f, want, ARRAY_SIZE(want));
}

static void test_max_copy(void **state)
{
	struct fixture *f = *state;
	struct snapshot s;

	range_table_init(&f->rt, 2, &fake_ops);
	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, &s);
	/* Leaves [0, 4) [8, 12) [20, 22): one too many. */
	assert_int_equal(range_copy(&f->rt, 0, PG(20), PG(2)), -ENOSPC);
	expect_unchanged(f, &s);
	/* Onto [8, 12), which goes: two pieces. */
	assert_int_equal(range_copy(&f->rt, PG(2), PG(8), PG(4)), 0);
	expect_table(f, (struct piece[]){ { 0, 4, 0 }, { 8, 10, 0 } }, 2);
}

/* Only the final count matters, not the slots the copies wait in. */
static void test_max_copy_at_limit(void **state)
{
	struct fixture *f = *state;

	range_table_init(&f->rt, 2, &fake_ops);
	load(f, (struct piece[]){ { 0, 16, 0 } }, 1);
	assert_int_equal(range_copy(&f->rt, PG(8), PG(0), PG(8)), 0);
	expect_table(f, (struct piece[]){ { 0, 8, 0 }, { 8, 16, 0 } }, 2);
	assert_int_equal(range_copy(&f->rt, PG(8), PG(0), PG(8)), 0);
	expect_table(f, (struct piece[]){ { 0, 8, 0 }, { 8, 16, 0 } }, 2);
}

/* The daemon follows a REMAP past the limit (max 0 around the call, as
 * daemon/mm.c does): the table then holds more than max, and an insert is
 * refused until it is back under. */
static void test_max_copy_bypassed(void **state)
{
	struct fixture *f = *state;

	range_table_init(&f->rt, 1, &fake_ops);
	load(f, (struct piece[]){ { 0, 4, 0 } }, 1);
	assert_int_equal(range_copy(&f->rt, 0, PG(8), PG(4)), -ENOSPC);
	f->rt.max = 0;
	assert_int_equal(range_copy(&f->rt, 0, PG(8), PG(4)), 0);
	f->rt.max = 1;
	expect_table(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 0 } }, 2);
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), -ENOSPC);
	assert_int_equal(range_remove(&f->rt, 0, PG(4)), PG(4));
	assert_int_equal(range_insert(&f->rt, PG(20), PG(21), &f->t[1]), -ENOSPC);
	assert_int_equal(range_remove(&f->rt, PG(8), PG(12)), PG(4));
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
	{ "copy: over nothing", 0, 8, 4,
	  1, { { 0, 4, 0 } }, 2, { { 0, 4, 0 }, { 8, 12, 0 } }, 2 },
	{ "copy: below the source", 8, 0, 4,
	  1, { { 8, 12, 0 } }, 2, { { 0, 4, 0 }, { 8, 12, 0 } }, 2 },
	{ "copy: past other pieces", 0, 12, 2,
	  3, { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 } },
	  4, { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 }, { 12, 14, 0 } }, 4 },
	{ "copy: between other pieces", 8, 2, 2,
	  3, { { 0, 2, 0 }, { 4, 6, 1 }, { 8, 10, 2 } },
	  4, { { 0, 2, 0 }, { 2, 4, 2 }, { 4, 6, 1 }, { 8, 10, 2 } }, 4 },
	{ "copy: several pieces and gaps", 0, 10, 8,
	  3, { { 0, 2, 0 }, { 3, 4, 1 }, { 5, 6, 2 } },
	  6, { { 0, 2, 0 }, { 3, 4, 1 }, { 5, 6, 2 },
	       { 10, 12, 0 }, { 13, 14, 1 }, { 15, 16, 2 } }, 6 },
	{ "copy: onto pieces, which are forgotten", 0, 8, 4,
	  3, { { 0, 4, 0 }, { 8, 10, 1 }, { 11, 14, 2 } },
	  3, { { 0, 4, 0 }, { 8, 12, 0 }, { 12, 14, 2 } }, 4 },
	{ "copy: into the middle of a piece", 0, 6, 2,
	  2, { { 0, 2, 0 }, { 4, 12, 1 } },
	  4, { { 0, 2, 0 }, { 4, 6, 1 }, { 6, 8, 0 }, { 8, 12, 1 } }, 4 },
	{ "copy: part of a piece", 2, 10, 2,
	  1, { { 0, 8, 0 } }, 2, { { 0, 8, 0 }, { 10, 12, 0 } }, 2 },
	{ "copy: parts of two pieces", 2, 10, 4,
	  2, { { 0, 4, 0 }, { 4, 8, 1 } },
	  4, { { 0, 4, 0 }, { 4, 8, 1 }, { 10, 12, 0 }, { 12, 14, 1 } }, 4 },
	{ "copy: overlapping forward", 0, 4, 8,
	  1, { { 0, 8, 0 } }, 2, { { 0, 4, 0 }, { 4, 12, 0 } }, 2 },
	{ "copy: overlapping back", 4, 0, 8,
	  1, { { 4, 12, 0 } }, 2, { { 0, 8, 0 }, { 8, 12, 0 } }, 2 },
	{ "copy: overlapping forward over pieces", 0, 2, 6,
	  3, { { 0, 2, 0 }, { 3, 5, 1 }, { 6, 8, 2 } },
	  3, { { 0, 2, 0 }, { 2, 4, 0 }, { 5, 7, 1 } }, 5 },
	{ "copy: overlapping back over pieces", 2, 0, 6,
	  3, { { 0, 2, 0 }, { 3, 5, 1 }, { 6, 8, 2 } },
	  3, { { 1, 3, 1 }, { 4, 6, 2 }, { 6, 8, 2 } }, 5 },
	{ "copy: part of a piece into itself", 6, 2, 2,
	  1, { { 0, 8, 0 } },
	  3, { { 0, 2, 0 }, { 2, 4, 0 }, { 4, 8, 0 } }, 3 },
	{ "copy: part of a piece, overlapping", 4, 6, 4,
	  1, { { 0, 8, 0 } }, 2, { { 0, 6, 0 }, { 6, 10, 0 } }, 2 },
	{ "copy: empty source forgets the destination", 0, 4, 4,
	  1, { { 4, 8, 0 } }, 0, { { 0 } }, 1 },
	{ "copy: in place", 0, 0, 4,
	  1, { { 0, 4, 0 } }, 1, { { 0, 4, 0 } }, 1 },
};

static void test_copy(void **state)
{
	struct fixture *f = *state;
	const struct copy_row *row = f->row;

	load(f, row->base, row->nbase);
	assert_int_equal(range_copy(&f->rt, PG(row->from), PG(row->to),
				    PG(row->len)),
			 0);
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
	struct snapshot s;

	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	take(f, &s);
	assert_int_equal(range_copy(&f->rt, row->from, row->to, row->len),
			 -EINVAL);
	expect_unchanged(f, &s);
}

static void set_stream(struct range *r, uint64_t next_fault, uint32_t window)
{
	r->fs[0].next = next_fault;
	r->fs[0].window = window;
}

/* A copy starts with no fault stream; its source keeps its own. */
static void test_copy_fault_state(void **state)
{
	struct fixture *f = *state;

	load(f, (struct piece[]){ { 0, 4, 0 }, { 8, 12, 1 } }, 2);
	set_stream(&f->rt.v[0], PG(2), 8);
	set_stream(&f->rt.v[1], PG(9), 4);
	assert_int_equal(range_copy(&f->rt, PG(8), PG(20), PG(4)), 0);
	assert_int_equal(f->rt.v[2].start, PG(20));
	assert_int_equal(f->rt.v[2].fs[0].next, 0);
	assert_int_equal(f->rt.v[2].fs[0].window, 0);
	assert_int_equal(f->rt.v[1].fs[0].next, PG(9));
	assert_int_equal(f->rt.v[1].fs[0].window, 4);
	/* The halves of a split both keep it: the stream goes on in one. */
	assert_int_equal(range_remove(&f->rt, PG(1), PG(2)), PG(1));
	assert_int_equal(f->rt.v[1].start, PG(2));
	assert_int_equal(f->rt.v[0].fs[0].next, PG(2));
	assert_int_equal(f->rt.v[1].fs[0].next, PG(2));
	assert_int_equal(f->rt.v[1].fs[0].window, 8);
	expect_table(f,
		     (struct piece[]){ { 0, 1, 0 }, { 2, 4, 0 }, { 8, 12, 1 },
				       { 20, 24, 1 } },
		     4);
}

/* The copies wait at the far end of the array while the cut works below
 * them: a full table grows for them first, and a cut that splits a piece
 * leaves them intact. */
static void test_copy_full_array(void **state)
{
	struct fixture *f = *state;
	size_t n, big;

	/* Pieces [2k, 2k+1) until the first page of slots is one short of
	 * full, so copying two pieces into the middle of one has to grow it. */
	assert_int_equal(range_insert(&f->rt, 0, PG(1), &f->t[0]), 0);
	for (n = 1; n < f->rt.cap - 1; n++)
		assert_int_equal(range_insert(&f->rt, PG(2 * n), PG(2 * n + 1),
					      &f->t[n % NTMPL]),
				 0);
	big = 4 * n;
	assert_int_equal(range_insert(&f->rt, PG(big), PG(big + 8), &f->t[1]), 0);
	n++;
	assert_int_equal(f->rt.n, f->rt.cap);
	/* [0, 1) and [2, 3) land inside the big piece, which splits. */
	assert_int_equal(range_copy(&f->rt, 0, PG(big + 2), PG(3)), 0);
	assert_int_equal(f->rt.n, n + 3);
	struct range *r = range_lookup(&f->rt, PG(big + 2));
	assert_non_null(r);
	assert_int_equal(r->start, PG(big + 2));
	assert_int_equal(r->end, PG(big + 3));
	assert_ptr_equal(r->tmpl, &f->t[0]);
	assert_null(range_lookup(&f->rt, PG(big + 3)));
	r = range_lookup(&f->rt, PG(big + 4));
	assert_non_null(r);
	assert_int_equal(r->start, PG(big + 4));
	assert_int_equal(r->end, PG(big + 5));
	assert_ptr_equal(r->tmpl, &f->t[1]);
	r = range_lookup(&f->rt, PG(big + 5));
	assert_non_null(r);
	assert_int_equal(r->start, PG(big + 5));
	assert_int_equal(r->end, PG(big + 8));
	assert_int_equal(range_lookup(&f->rt, PG(big + 1))->start, PG(big));
	assert_int_equal(range_lookup(&f->rt, PG(big + 1))->end, PG(big + 2));
	for (size_t k = 1; k < f->rt.n; k++)
		assert_true(f->rt.v[k - 1].end <= f->rt.v[k].start);
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
	static const struct piece base[] = {
		{ 2, 4, 0 }, { 6, 8, 1 }, { 12, 14, 2 },
	};
	struct fixture *f = *state;
	const struct extend_row *row = f->row;
	struct piece want[ARRAY_SIZE(base)];
	struct range *r;

	load(f, base, ARRAY_SIZE(base));
	memcpy(want, base, sizeof(want));
	r = range_extend_to(&f->rt, row->addr, row->page_size);
	if (row->piece < 0) {
		assert_null(r);
	} else {
		assert_ptr_equal(r, &f->rt.v[row->piece]);
		want[row->piece].end = row->end;
		assert_ptr_equal(range_lookup(&f->rt, row->addr), r);
	}
	expect_table(f, want, ARRAY_SIZE(want));
}

/* ---- clone (fork) ---- */

static void test_clone(void **state)
{
	static const struct piece base[] = {
		{ 0, 4, 0 }, { 6, 8, 1 }, { 10, 16, 0 },
	};
	struct fixture *f = *state;
	struct range_table dst;

	load(f, base, ARRAY_SIZE(base));
	set_stream(&f->rt.v[0], PG(1), 16);
	range_table_init(&dst, 0, &fake_ops);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	assert_int_equal(dst.n, ARRAY_SIZE(base));
	assert_int_equal(dst.bytes, f->rt.bytes);
	for (size_t k = 0; k < dst.n; k++) {
		assert_int_equal(dst.v[k].start, f->rt.v[k].start);
		assert_int_equal(dst.v[k].end, f->rt.v[k].end);
		assert_ptr_equal(dst.v[k].tmpl, f->rt.v[k].tmpl);
		assert_int_equal(dst.v[k].fs[0].next, 0);
		assert_int_equal(dst.v[k].fs[0].window, 0);
	}
	assert_int_equal(f->rt.v[0].fs[0].window, 16);
	assert_int_equal(f->t[0].gets, 4);
	assert_int_equal(f->t[1].gets, 2);
	/* The copy lives on its own. */
	range_table_fini(&f->rt);
	assert_ptr_equal(range_lookup(&dst, PG(11)), &dst.v[2]);
	assert_int_equal(f->t[0].gets - f->t[0].puts, 2);
	range_table_fini(&dst);
}

static void test_clone_refused(void **state)
{
	struct fixture *f = *state;
	struct range_table dst;

	load(f, (struct piece[]){ { 0, 4, 0 }, { 6, 8, 1 } }, 2);
	range_table_init(&dst, 1, &fake_ops);
	assert_int_equal(range_clone(&dst, &f->rt), -ENOSPC);
	assert_int_equal(dst.n, 0);
	assert_int_equal(dst.bytes, 0);
	assert_int_equal(total_gets(f), 2);
	range_table_fini(&dst);
	range_table_init(&dst, 0, &fake_ops);
	assert_int_equal(range_insert(&dst, PG(20), PG(21), &f->t[2]), 0);
	assert_int_equal(range_clone(&dst, &f->rt), -EINVAL);
	assert_int_equal(dst.n, 1);
	range_table_fini(&dst);
	assert_int_equal(total_gets(f), 3);
}

static void test_clone_empty(void **state)
{
	struct fixture *f = *state;
	struct range_table dst;

	range_table_init(&dst, 0, &fake_ops);
	assert_int_equal(range_clone(&dst, &f->rt), 0);
	assert_int_equal(dst.n, 0);
	assert_int_equal(dst.bytes, 0);
	range_table_fini(&dst);
}

/* ---- random operations against a page-by-page model ---- */

#define MODEL_PAGES 48

/* What each page maps to, and where pieces begin: a piece starts at a
 * taken page whose predecessor is free or marked head. */
struct model {
	int t[MODEL_PAGES];               /* template, -1: nothing */
	unsigned char head[MODEL_PAGES + 1];
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

static void expect_model(struct fixture *f, const struct model *m)
{
	struct piece want[MODEL_PAGES];
	size_t n = model_pieces(m, want);

	expect_table(f, want, n);
	for (int p = 0; p < MODEL_PAGES; p++) {
		struct range *r = range_lookup(&f->rt, PG(p) + 17);

		if (m->t[p] < 0)
			assert_null(r);
		else
			assert_ptr_equal(r->tmpl, &f->t[m->t[p]]);
	}
}

/* The error an operation turning m into next must give: none, or
 * -ENOSPC when next has more pieces than allowed. */
static int expected(const struct fixture *f, const struct model *next)
{
	struct piece scratch[MODEL_PAGES];
	size_t max = f->rt.max;

	return max && model_pieces(next, scratch) > max ? -ENOSPC : 0;
}

static int step_insert(struct fixture *f, struct model *m, size_t s,
		       size_t e, int t)
{
	struct model next = *m;
	int want = 0, got;

	for (size_t p = s; p < e; p++)
		if (m->t[p] >= 0)
			want = -EEXIST;
	model_fill(&next, s, e, t);
	if (!want)
		want = expected(f, &next);
	got = range_insert(&f->rt, PG(s), PG(e), &f->t[t]);
	assert_int_equal(got, want);
	if (!got)
		*m = next;
	return got;
}

static int step_remove(struct fixture *f, struct model *m, size_t s,
		       size_t e)
{
	struct model next = *m;
	long long removed = 0, got;
	int want;

	for (size_t p = s; p < e; p++) {
		removed += m->t[p] >= 0;
		next.t[p] = -1;
	}
	want = expected(f, &next);
	got = range_remove(&f->rt, PG(s), PG(e));
	assert_int_equal(got, want ? want : (long long)PG(removed));
	if (!want)
		*m = next;
	return want;
}

static int step_copy(struct fixture *f, struct model *m, size_t from,
		     size_t to, size_t len)
{
	struct model next = *m;
	int want;

	/* The kernel never moves a mapping onto itself; nothing happens. */
	if (from == to) {
		assert_int_equal(range_copy(&f->rt, PG(from), PG(to), PG(len)), 0);
		return 0;
	}
	for (size_t p = 0; p < len; p++) {
		next.t[to + p] = m->t[from + p];
		next.head[to + p] = m->head[from + p];
	}
	next.head[to] = 1;
	next.head[to + len] = 1;
	want = expected(f, &next);
	assert_int_equal(range_copy(&f->rt, PG(from), PG(to), PG(len)), want);
	if (!want)
		*m = next;
	return want;
}

static void step_extend(struct fixture *f, struct model *m, size_t page)
{
	struct range *r = range_extend_to(&f->rt, PG(page) + 99, 4096);
	int below = (int)page - 1;

	while (below >= 0 && m->t[below] < 0)
		below--;
	if (m->t[page] >= 0 || below < 0) {
		assert_null(r);
		return;
	}
	assert_non_null(r);
	for (size_t p = below + 1; p <= page; p++) {
		m->t[p] = m->t[below];
		m->head[p] = 0;
	}
	m->head[page + 1] = 1;
}

static uint64_t next_rand(uint64_t *seed)
{
	*seed ^= *seed << 13;
	*seed ^= *seed >> 7;
	*seed ^= *seed << 17;
	return *seed;
}

/* One random operation; returns its error. */
static int model_step(struct fixture *f, struct model *m, uint64_t *seed)
{
	uint64_t r = next_rand(seed);
	size_t len = 1 + r % 8;
	size_t a = (r >> 8) % (MODEL_PAGES - len + 1);
	size_t b = (r >> 16) % (MODEL_PAGES - len + 1);

	switch ((r >> 24) % 8) {
	case 0:
	case 1:
	case 2:
		return step_insert(f, m, a, a + len, (r >> 32) % NTMPL);
	case 3:
		return step_remove(f, m, a, a + len);
	case 4:
	case 5:
		return step_copy(f, m, a, b, len);
	default:
		step_extend(f, m, (r >> 32) % MODEL_PAGES);
		return 0;
	}
}

struct model_row {
	const char *name;
	size_t max;
};

static const struct model_row model_rows[] = {
	{ "model: unlimited", 0 },
	{ "model: max 4", 4 },
	{ "model: max 12", 12 },
};

static void test_model(void **state)
{
	struct fixture *f = *state;
	const struct model_row *row = f->row;
	uint64_t seed = 0x9e3779b97f4a7c15u ^ row->max;
	struct model m;
	int enospc = 0;

	range_table_init(&f->rt, row->max, &fake_ops);
	memset(&m, 0, sizeof(m));
	for (int p = 0; p < MODEL_PAGES; p++)
		m.t[p] = -1;
	for (int k = 0; k < 5000; k++) {
		struct snapshot s;
		int err;

		take(f, &s);
		err = model_step(f, &m, &seed);
		if (err)
			expect_unchanged(f, &s);
		enospc += err == -ENOSPC;
		expect_model(f, &m);
	}
	/* The limited runs did run into their limit. */
	assert_true(row->max ? enospc > 0 : enospc == 0);
}

#define ROW_TESTS(tests, n, fn, rows)                                       \
	for (size_t k = 0; k < ARRAY_SIZE(rows); k++)                        \
		(tests)[(n)++] = (struct CMUnitTest){ (rows)[k].name, fn, setup, \
						      teardown,              \
						      (void *)&(rows)[k] }

static const struct CMUnitTest plain_tests[] = {
	cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
	cmocka_unit_test_setup_teardown(test_insert_lookup, setup, teardown),
	cmocka_unit_test_setup_teardown(test_insert_adjacent, setup, teardown),
	cmocka_unit_test_setup_teardown(test_growth, setup, teardown),
	cmocka_unit_test_setup_teardown(test_fini_unmaps, setup, teardown),
	cmocka_unit_test_setup_teardown(test_remove_huge, setup, teardown),
	cmocka_unit_test_setup_teardown(test_max_insert, setup, teardown),
	cmocka_unit_test_setup_teardown(test_max_split, setup, teardown),
	cmocka_unit_test_setup_teardown(test_max_split_at_limit, setup,
					teardown),
	cmocka_unit_test_setup_teardown(test_max_copy, setup, teardown),
	cmocka_unit_test_setup_teardown(test_max_copy_at_limit, setup,
					teardown),
	cmocka_unit_test_setup_teardown(test_max_copy_bypassed, setup,
					teardown),
	cmocka_unit_test_setup_teardown(test_copy_fault_state, setup,
					teardown),
	cmocka_unit_test_setup_teardown(test_copy_full_array, setup,
					teardown),
	cmocka_unit_test_setup_teardown(test_clone, setup, teardown),
	cmocka_unit_test_setup_teardown(test_clone_refused, setup, teardown),
	cmocka_unit_test_setup_teardown(test_clone_empty, setup, teardown),
};

int main(void)
{
	struct CMUnitTest tests[ARRAY_SIZE(plain_tests) +
				ARRAY_SIZE(overlap_rows) +
				ARRAY_SIZE(insert_invalid_rows) +
				ARRAY_SIZE(remove_invalid_rows) +
				ARRAY_SIZE(remove_rows) + ARRAY_SIZE(copy_rows) +
				ARRAY_SIZE(copy_invalid_rows) +
				ARRAY_SIZE(extend_rows) + ARRAY_SIZE(model_rows)];
	size_t n = ARRAY_SIZE(plain_tests);

	memcpy(tests, plain_tests, sizeof(plain_tests));
	ROW_TESTS(tests, n, test_insert_overlap, overlap_rows);
	ROW_TESTS(tests, n, test_insert_invalid, insert_invalid_rows);
	ROW_TESTS(tests, n, test_remove_invalid, remove_invalid_rows);
	ROW_TESTS(tests, n, test_remove, remove_rows);
	ROW_TESTS(tests, n, test_copy, copy_rows);
	ROW_TESTS(tests, n, test_copy_invalid, copy_invalid_rows);
	ROW_TESTS(tests, n, test_extend, extend_rows);
	ROW_TESTS(tests, n, test_model, model_rows);
	assert_int_equal(n, ARRAY_SIZE(tests));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
