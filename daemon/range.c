/* Range table: a persistent, join-based AVL tree (see range.h).
 *
 * A node holds one piece, its two subtrees, and what an operation needs to
 * know of its subtree in O(1): height, piece count, byte sum, and bounds
 * (first start, last end). Its reference count counts the parents and
 * tables pointing to it. References move by ownership: a function taking
 * a tree consumes the caller's reference and returns one of its own.
 *
 * Reuse. Taking apart a node we hold the only reference to (range_open)
 * gives back the node itself to rebuild: no other table and no other
 * thread can reach it. A node with other references stays as it is and is
 * copied. So shared paths are copied and unshared ones updated in place:
 * the table of a process that never forked allocates a node per new piece
 * and nothing else, and its template references are not churned.
 *
 * Reserve, then act. Each operation runs twice over the same recursion.
 * The first pass (the *_cost functions, which must mirror the others step
 * by step) changes nothing: it follows the paths the second will take and
 * counts the nodes that can be allocated: shared nodes copied, new pieces,
 * and for each join the spine nodes it may take apart, counted one by one
 * down an unchanged subtree and bounded from heights down a rebuilt one.
 * Those nodes are allocated first, into a pool; a refusal frees them with
 * the table untouched. The second pass takes from the pool and cannot
 * fail; what is left is freed. Between the passes, counts can only drop
 * (other tables drop references; only this one could add one to a node it
 * alone reaches), so the count stays an upper bound. */
#include "range.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

/* The tallest possible tree: disjoint aligned pieces number fewer than
 * 2^52, and an AVL tree of height 75 needs more nodes than that. */
#define RANGE_MAX_HEIGHT 74

struct range_node {
	_Atomic uint32_t ref;
	uint32_t height;           /* of the subtree: 1 for a leaf */
	struct range_node *kid[2]; /* [0] below the piece, [1] above */
	uint64_t start, end;
	void *tmpl;
	uint64_t lo, hi; /* the subtree's first start, last end */
	uint64_t bytes;  /* the subtree's */
	size_t count;    /* the subtree's pieces */
};

/* Nodes reserved for one operation, linked through kid[0]. */
struct range_pool {
	const struct range_table *rt;
	struct range_node *free;
};

static unsigned range_height(const struct range_node *n)
{
	return n ? n->height : 0;
}

static size_t range_size(const struct range_node *n)
{
	return n ? n->count : 0;
}

static uint64_t range_sum(const struct range_node *n)
{
	return n ? n->bytes : 0;
}

static int range_span_ok(uint64_t start, uint64_t end)
{
	return start < end && start % RANGE_ALIGN == 0 && end % RANGE_ALIGN == 0;
}

/* Someone else holds a reference too. Acquire: when the others have just
 * dropped theirs, what they read of the node happens before we rebuild
 * it in place. */
static bool range_shared(const struct range_node *n)
{
	return atomic_load_explicit(&n->ref, memory_order_acquire) > 1;
}

struct range_node *range_node_ref(const struct range_node *n)
{
	/* The count is not the contents: the node stays immutable. */
	struct range_node *m = (struct range_node *)n;

	if (m)
		atomic_fetch_add_explicit(&m->ref, 1, memory_order_relaxed);
	return m;
}

static void range_free(const struct range_table *rt, struct range_node *n)
{
	if (rt->ops->node_free)
		rt->ops->node_free(rt->ctx, n, sizeof(*n));
	else
		free(n);
}

void range_node_put(const struct range_table *rt, struct range_node *n)
{
	/* Release: our reads of the node happen before whoever frees or
	 * rebuilds it; acquire: theirs before ours, when we are last. (One
	 * acq_rel operation rather than a fence: ThreadSanitizer follows it.)
	 * Recursing left and looping right keeps the depth to the height. */
	while (n && atomic_fetch_sub_explicit(&n->ref, 1, memory_order_acq_rel) == 1) {
		struct range_node *right = n->kid[1];

		range_node_put(rt, n->kid[0]);
		rt->ops->put(n->tmpl);
		range_free(rt, n);
		n = right;
	}
}

static struct range_node *range_alloc(const struct range_table *rt)
{
	if (rt->ops->node_alloc)
		return rt->ops->node_alloc(rt->ctx, sizeof(struct range_node));
	return malloc(sizeof(struct range_node));
}

/* n becomes a piece with one reference, the caller's; its subtree fields
 * wait for range_seal. */
static struct range_node *range_piece_init(const struct range_table *rt, struct range_node *n,
					   uint64_t start, uint64_t end, void *tmpl)
{
	atomic_init(&n->ref, 1);
	n->start = start;
	n->end = end;
	n->tmpl = tmpl;
	rt->ops->get(tmpl);
	return n;
}

static void range_unreserve(struct range_pool *p)
{
	while (p->free) {
		struct range_node *n = p->free;

		p->free = n->kid[0];
		range_free(p->rt, n);
	}
}

static int range_reserve(struct range_pool *p, const struct range_table *rt, size_t need)
{
	*p = (struct range_pool){ .rt = rt };
	while (need--) {
		struct range_node *n = range_alloc(rt);

		if (!n) {
			range_unreserve(p);
			return -ENOMEM;
		}
		n->kid[0] = p->free;
		p->free = n;
	}
	return 0;
}

/* A node for a piece, from the reservation. */
static struct range_node *range_new(struct range_pool *p, uint64_t start, uint64_t end, void *tmpl)
{
	struct range_node *n = p->free;

	/* The reservation is an upper bound: running dry is a bug in it. */
	assert(n);
	p->free = n->kid[0];
	return range_piece_init(p->rt, n, start, end, tmpl);
}

/* n over l and r: what n knows of its subtree. */
static struct range_node *range_seal(struct range_node *n, struct range_node *l,
				     struct range_node *r)
{
	unsigned hl = range_height(l), hr = range_height(r);

	n->kid[0] = l;
	n->kid[1] = r;
	n->height = 1 + (hl > hr ? hl : hr);
	n->count = 1 + range_size(l) + range_size(r);
	n->bytes = n->end - n->start + range_sum(l) + range_sum(r);
	n->lo = l ? l->lo : n->start;
	n->hi = r ? r->hi : n->end;
	return n;
}

/* range_seal with a on side !d and b on side d, so that code written for
 * one direction serves the mirror one too. */
static struct range_node *range_seal_d(struct range_node *n, int d, struct range_node *a,
				       struct range_node *b)
{
	return d ? range_seal(n, a, b) : range_seal(n, b, a);
}

/* Consumes t, giving references to its children. */
static void range_kids(const struct range_table *rt, struct range_node *t,
		       struct range_node *kids[2])
{
	kids[0] = range_node_ref(t->kid[0]);
	kids[1] = range_node_ref(t->kid[1]);
	range_node_put(rt, t);
}

/* Consumes t, giving its child on side d. */
static struct range_node *range_kid(const struct range_table *rt, struct range_node *t, int d)
{
	struct range_node *k = range_node_ref(t->kid[d]);

	range_node_put(rt, t);
	return k;
}

/* Consumes t, giving references to its children and a node with t's piece
 * to range_seal again: t itself when the reference was the only one, a
 * copy from the reservation when t is shared. */
static struct range_node *range_open(struct range_pool *p, struct range_node *t,
				     struct range_node *kids[2])
{
	struct range_node *n;

	if (!range_shared(t)) {
		kids[0] = t->kid[0];
		kids[1] = t->kid[1];
		return t;
	}
	n = range_new(p, t->start, t->end, t->tmpl);
	range_kids(p->rt, t, kids);
	return n;
}

/* n over kids, whose heights differ by two at most: a single or double
 * rotation towards the shorter side. In a join, the nodes rotated are the
 * join's own but for one, the inner one of a double rotation. */
static struct range_node *range_balance(struct range_pool *p, struct range_node *n,
					struct range_node *kids[2])
{
	unsigned h0 = range_height(kids[0]), h1 = range_height(kids[1]);
	int d = h1 > h0;
	struct range_node *hk[2], *hn, *ik[2], *in;

	if (h0 <= h1 + 1 && h1 <= h0 + 1)
		return range_seal(n, kids[0], kids[1]);
	assert((d ? h1 - h0 : h0 - h1) == 2);
	hn = range_open(p, kids[d], hk);
	if (range_height(hk[!d]) <= range_height(hk[d]))
		return range_seal_d(hn, d, range_seal_d(n, d, kids[!d], hk[!d]), hk[d]);
	in = range_open(p, hk[!d], ik);
	return range_seal_d(in, d, range_seal_d(n, d, kids[!d], ik[!d]),
			    range_seal_d(hn, d, ik[d], hk[d]));
}

/* t, two or more taller than x, then k and x on t's side d: down t's spine
 * on that side to where k over x fits, rebalancing on the way back. */
static struct range_node *range_join_down(struct range_pool *p, struct range_node *t,
					  struct range_node *k, struct range_node *x, int d)
{
	struct range_node *kids[2], *n = range_open(p, t, kids);

	if (range_height(kids[d]) <= range_height(x) + 1)
		kids[d] = range_seal_d(k, d, kids[d], x);
	else
		kids[d] = range_join_down(p, kids[d], k, x, d);
	return range_balance(p, n, kids);
}

/* l, k and r in order, whatever their heights: k is a node to seal, l's
 * pieces are below k's and r's above. */
static struct range_node *range_join(struct range_pool *p, struct range_node *l,
				     struct range_node *k, struct range_node *r)
{
	unsigned hl = range_height(l), hr = range_height(r);

	if (hl > hr + 1)
		return range_join_down(p, l, k, r, 1);
	if (hr > hl + 1)
		return range_join_down(p, r, k, l, 0);
	return range_seal(k, l, r);
}

/* What is left of t on one side of a: below it (side 0) or at or above it
 * (side 1), trimming a piece across a. With hold, the piece kept nearest a
 * is held out in *hold (NULL on entry; stays NULL if nothing is kept), so
 * that the caller has a node to join with. Consumes t. */
static struct range_node *range_part(struct range_pool *p, struct range_node *t, uint64_t a,
				     int side, struct range_node **hold)
{
	struct range_node *kids[2], *n;
	bool across;

	if (!t)
		return NULL;
	if (side ? t->hi <= a : t->lo >= a) {
		range_node_put(p->rt, t);
		return NULL;
	}
	if (!hold && (side ? t->lo >= a : t->hi <= a))
		return t;
	if (side ? t->end <= a : t->start >= a)
		return range_part(p, range_kid(p->rt, t, side), a, side, hold);
	across = t->start < a && a < t->end;
	n = range_open(p, t, kids);
	if (across) {
		*(side ? &n->start : &n->end) = a;
		range_node_put(p->rt, kids[!side]);
		kids[!side] = NULL;
	} else {
		kids[!side] = range_part(p, kids[!side], a, side, hold);
	}
	if (hold && !*hold) {
		*hold = n;
		return kids[side];
	}
	return range_join(p, kids[0], n, kids[1]);
}

/* range_graft at t, the highest node whose piece overlaps [s, e): what
 * stays of t's piece, what its subtrees have outside [s, e), and src, in
 * order. A join needs a node between its trees: what stays of t's piece
 * if anything does, else the piece nearest s held out of the left part,
 * or src's last piece. */
static struct range_node *range_graft_at(struct range_pool *p, struct range_node *t, uint64_t s,
					 uint64_t e, struct range_node *src)
{
	uint64_t start = t->start, end = t->end;
	struct range_node *kids[2], *a = NULL, *b = NULL, *l, *r, *mid;

	if (start < s || end > e) {
		struct range_node *n = range_open(p, t, kids);

		if (start < s) {
			n->end = s;
			a = n;
			if (end > e)
				b = range_new(p, e, end, n->tmpl);
		} else {
			n->start = e;
			b = n;
		}
	} else {
		range_kids(p->rt, t, kids);
	}
	l = a ? kids[0] : range_part(p, kids[0], s, 0, &a);
	r = b ? kids[1] : range_part(p, kids[1], e, 1, NULL);
	if (!b && r && src)
		src = range_part(p, src, src->hi, 0, &b);
	mid = b ? range_join(p, src, b, r) : src ? src : r;
	return a ? range_join(p, l, a, mid) : mid;
}

/* t without [s, e), and with src (NULL, or a tree of this operation's
 * pieces, all inside [s, e)) in its place. Consumes t and src. */
static struct range_node *range_graft(struct range_pool *p, struct range_node *t, uint64_t s,
				      uint64_t e, struct range_node *src)
{
	struct range_node *kids[2], *n;
	int d;

	if (!t)
		return src;
	if (t->lo >= s && t->hi <= e) {
		range_node_put(p->rt, t);
		return src;
	}
	if (t->start < e && t->end > s)
		return range_graft_at(p, t, s, e, src);
	d = t->end <= s;
	n = range_open(p, t, kids);
	kids[d] = range_graft(p, kids[d], s, e, src);
	return range_join(p, kids[0], n, kids[1]);
}

/* The piece starting at start ends at end instead: the path to it is
 * rebuilt, the shape stays. */
static struct range_node *range_stretch(struct range_pool *p, struct range_node *t, uint64_t start,
					uint64_t end)
{
	struct range_node *kids[2], *n;
	bool here = t->start == start;
	int d = start > t->start;

	n = range_open(p, t, kids);
	if (here)
		n->end = end;
	else
		kids[d] = range_stretch(p, kids[d], start, end);
	return range_seal(n, kids[0], kids[1]);
}

/* ---- first pass: the nodes the second can take from the reservation ---- */

/* A tree the second pass will have at some point: its exact piece count,
 * bounds of its height, and either the unchanged subtree it is (old, and
 * whether a node above it is shared, which shares it too) or whether every
 * node of it is new (fresh: an empty tree is). Otherwise it was built by a
 * join, whose root is new. */
struct range_est {
	const struct range_node *old;
	bool above;
	bool fresh;
	unsigned lo, hi;
	size_t count;
};

static struct range_est range_est_old(const struct range_node *n, bool above)
{
	unsigned h = range_height(n);

	return (struct range_est){
		.old = n,
		.above = above,
		.fresh = !n,
		.lo = h,
		.hi = h,
		.count = range_size(n),
	};
}

/* Nodes a join can copy down x's spine on side d, the other tree being at
 * least lo tall: it takes apart the spine nodes more than one taller than
 * the other tree, then, for a double rotation, the spine node just one
 * taller: all taller than lo. Counted one by one in an unchanged subtree;
 * in a built one, all but its root (the join's own), hi - lo - 1 at
 * most. */
static size_t range_spine_cost(const struct range_est *x, int d, unsigned lo)
{
	const struct range_node *n = x->old;
	bool shared = x->above;
	size_t c = 0;

	if (x->fresh || x->hi <= lo + 1)
		return 0;
	if (!n)
		return x->hi - lo - 1;
	for (; n && n->height > lo; n = n->kid[d]) {
		shared = shared || range_shared(n);
		c += shared;
	}
	return c;
}

/* range_join's cost and result. */
static size_t range_join_cost(const struct range_est *l, const struct range_est *r,
			      struct range_est *out)
{
	size_t c = range_spine_cost(l, 1, r->lo) + range_spine_cost(r, 0, l->lo);

	*out = (struct range_est){
		.fresh = l->fresh && r->fresh,
		.lo = l->lo > r->lo ? l->lo : r->lo,
		.hi = (l->hi > r->hi ? l->hi : r->hi) + 1,
		.count = l->count + r->count + 1,
	};
	return c;
}

/* range_part's: hold NULL, or set when a piece is held out. */
static size_t range_part_cost(const struct range_node *t, bool above, uint64_t a, int side,
			      bool *hold, struct range_est *out)
{
	struct range_est e[2];
	bool shared;
	size_t c;

	if (!t || (side ? t->hi <= a : t->lo >= a)) {
		*out = range_est_old(NULL, false);
		return 0;
	}
	if (!hold && (side ? t->lo >= a : t->hi <= a)) {
		*out = range_est_old(t, above);
		return 0;
	}
	shared = above || range_shared(t);
	if (side ? t->end <= a : t->start >= a)
		return range_part_cost(t->kid[side], shared, a, side, hold, out);
	c = shared;
	if (t->start < a && a < t->end)
		e[!side] = range_est_old(NULL, false);
	else
		c += range_part_cost(t->kid[!side], shared, a, side, hold, &e[!side]);
	if (hold && !*hold) {
		*hold = true;
		*out = range_est_old(t->kid[side], shared);
		return c;
	}
	e[side] = range_est_old(t->kid[side], shared);
	return c + range_join_cost(&e[0], &e[1], out);
}

/* range_graft_at's. Taking src's last piece out touches only new nodes. */
static size_t range_graft_at_cost(const struct range_node *t, bool above, uint64_t s, uint64_t e,
				  const struct range_est *src, struct range_est *out)
{
	bool shared = above || range_shared(t), a = t->start<s, b = t->end> e;
	struct range_est l, r, mid, x = *src;
	size_t c = (a || b) && shared;

	c += a && b;
	if (a)
		l = range_est_old(t->kid[0], shared);
	else
		c += range_part_cost(t->kid[0], shared, s, 0, &a, &l);
	if (b)
		r = range_est_old(t->kid[1], shared);
	else
		c += range_part_cost(t->kid[1], shared, e, 1, NULL, &r);
	if (!b && r.count && x.count) {
		x.count--;
		x.lo -= x.lo > 0;
		b = true;
	}
	if (b)
		c += range_join_cost(&x, &r, &mid);
	else
		mid = x.count ? x : r;
	if (!a) {
		*out = mid;
		return c;
	}
	return c + range_join_cost(&l, &mid, out);
}

/* range_graft's. */
static size_t range_graft_cost(const struct range_node *t, bool above, uint64_t s, uint64_t e,
			       const struct range_est *src, struct range_est *out)
{
	struct range_est g[2];
	bool shared;
	size_t c;
	int d;

	if (!t || (t->lo >= s && t->hi <= e)) {
		*out = *src;
		return 0;
	}
	if (t->start < e && t->end > s)
		return range_graft_at_cost(t, above, s, e, src, out);
	shared = above || range_shared(t);
	d = t->end <= s;
	c = shared + range_graft_cost(t->kid[d], shared, s, e, src, &g[d]);
	g[!d] = range_est_old(t->kid[!d], shared);
	return c + range_join_cost(&g[0], &g[1], out);
}

/* range_stretch's: the shared nodes on the path. */
static size_t range_path_cost(const struct range_node *t, uint64_t start)
{
	bool shared = false;
	size_t c = 0;

	for (;;) {
		shared = shared || range_shared(t);
		c += shared;
		if (t->start == start)
			return c;
		t = t->kid[start > t->start];
	}
}

/* ---- reading ---- */

/* The pieces around addr: the last ending at or before it, and the first
 * ending after it (which holds addr if it starts at or before it). */
static void range_around(const struct range_node *t, uint64_t addr, const struct range_node **below,
			 const struct range_node **above)
{
	*below = *above = NULL;
	while (t) {
		if (t->end <= addr) {
			*below = t;
			t = t->kid[1];
		} else {
			*above = t;
			t = t->kid[0];
		}
	}
}

static bool range_overlaps(const struct range_node *t, uint64_t start, uint64_t end)
{
	const struct range_node *below, *above;

	range_around(t, start, &below, &above);
	return above && above->start < end;
}

/* Pieces ending at or before addr (by_end), or starting before it. */
static size_t range_rank(const struct range_node *t, uint64_t addr, bool by_end)
{
	size_t n = 0;

	while (t) {
		if (by_end ? t->end <= addr : t->start < addr) {
			n += range_size(t->kid[0]) + 1;
			t = t->kid[1];
		} else {
			t = t->kid[0];
		}
	}
	return n;
}

static struct range_piece range_piece_of(const struct range_node *n)
{
	return (struct range_piece){ n->start, n->end, n->tmpl };
}

/* In-order walk from the first piece ending after a bound, on a stack as
 * deep as the tree: no allocation. */
struct range_iter {
	const struct range_node *stack[RANGE_MAX_HEIGHT];
	unsigned n;
};

static void range_iter_down(struct range_iter *it, const struct range_node *t, uint64_t after)
{
	while (t) {
		if (t->end > after) {
			assert(it->n < RANGE_MAX_HEIGHT);
			it->stack[it->n++] = t;
			t = t->kid[0];
		} else {
			t = t->kid[1];
		}
	}
}

static const struct range_node *range_iter_next(struct range_iter *it, uint64_t after)
{
	const struct range_node *t = it->stack[--it->n];

	range_iter_down(it, t->kid[1], after);
	return t;
}

static int range_walk(const struct range_node *t, uint64_t start, uint64_t end,
		      int (*fn)(void *arg, const struct range_piece *p), void *arg)
{
	int r;

	while (t && t->hi > start && t->lo < end) {
		struct range_piece pc = range_piece_of(t);

		r = range_walk(t->kid[0], start, end, fn, arg);
		if (r)
			return r;
		if (t->start < end && t->end > start && (r = fn(arg, &pc)))
			return r;
		t = t->kid[1];
	}
	return 0;
}

/* ---- operations ---- */

void range_table_init(struct range_table *rt, size_t max, const struct range_ops *ops, void *ctx)
{
	*rt = (struct range_table){ .max = max, .ops = ops, .ctx = ctx };
}

void range_table_fini(struct range_table *rt)
{
	range_node_put(rt, rt->root);
	rt->root = NULL;
}

size_t range_count(const struct range_table *rt)
{
	return range_size(rt->root);
}

uint64_t range_bytes(const struct range_table *rt)
{
	return range_sum(rt->root);
}

/* Reserves need nodes for an operation leaving after pieces. The limit
 * refuses growth only: an operation adding no piece passes even when the
 * table is past max (the owner may have lifted it for a while). */
static int range_begin(struct range_pool *p, const struct range_table *rt, size_t after,
		       size_t need)
{
	if (rt->max && after > rt->max && after > range_count(rt))
		return -ENOSPC;
	return range_reserve(p, rt, need);
}

/* The second pass: [s, e) replaced by src. */
static void range_commit(struct range_table *rt, struct range_pool *p, uint64_t s, uint64_t e,
			 struct range_node *src)
{
	rt->root = range_graft(p, rt->root, s, e, src);
	range_unreserve(p);
}

int range_insert(struct range_table *rt, uint64_t start, uint64_t end, void *tmpl)
{
	struct range_est leaf = { .fresh = true, .lo = 1, .hi = 1, .count = 1 }, after;
	struct range_pool p;
	size_t need;
	int err;

	if (!range_span_ok(start, end))
		return -EINVAL;
	if (range_overlaps(rt->root, start, end))
		return -EEXIST;
	need = 1 + range_graft_cost(rt->root, false, start, end, &leaf, &after);
	err = range_begin(&p, rt, after.count, need);
	if (err)
		return err;
	range_commit(rt, &p, start, end, range_seal(range_new(&p, start, end, tmpl), NULL, NULL));
	return 0;
}

/* The removal under way, and the run found so far (s == e: none yet). */
struct range_runs {
	void (*run)(void *arg, uint64_t s, uint64_t e);
	void *arg;
	uint64_t start, end;
	uint64_t s, e;
};

static int range_run_add(void *arg, const struct range_piece *pc)
{
	struct range_runs *r = arg;
	uint64_t s = pc->start > r->start ? pc->start : r->start;

	if (s != r->e) {
		if (r->s != r->e)
			r->run(r->arg, r->s, r->e);
		r->s = s;
	}
	r->e = pc->end < r->end ? pc->end : r->end;
	return 0;
}

long long range_remove(struct range_table *rt, uint64_t start, uint64_t end,
		       void (*run)(void *arg, uint64_t s, uint64_t e), void *arg)
{
	struct range_runs runs = { run, arg, start, end, 0, 0 };
	struct range_est none = range_est_old(NULL, false), after;
	uint64_t before = range_bytes(rt);
	struct range_pool p;
	size_t need;
	int err;

	/* Longer regions could remove more bytes than the result can say. */
	if (!range_span_ok(start, end) || end - start > LLONG_MAX)
		return -EINVAL;
	if (!range_overlaps(rt->root, start, end))
		return 0;
	need = range_graft_cost(rt->root, false, start, end, &none, &after);
	err = range_begin(&p, rt, after.count, need);
	if (err)
		return err;
	if (run) {
		range_walk(rt->root, start, end, range_run_add, &runs);
		/* Something overlaps: there is a last run to report. */
		run(arg, runs.s, runs.e);
	}
	range_commit(rt, &p, start, end, NULL);
	return (long long)(before - range_bytes(rt));
}

/* Copies being made: the source walk, the region, where it goes. */
struct range_copying {
	struct range_pool *p;
	struct range_iter it;
	uint64_t from, end, to;
};

/* The next k copies, as a tree whose halves differ by one piece at most:
 * as tall as k has bits. */
static struct range_node *range_copies(struct range_copying *c, size_t k)
{
	const struct range_node *t;
	struct range_node *l, *n;
	uint64_t s, e;

	if (!k)
		return NULL;
	l = range_copies(c, (k - 1) / 2);
	t = range_iter_next(&c->it, c->from);
	s = t->start > c->from ? t->start : c->from;
	e = t->end < c->end ? t->end : c->end;
	n = range_new(c->p, s - c->from + c->to, e - c->from + c->to, t->tmpl);
	return range_seal(n, l, range_copies(c, k / 2));
}

static unsigned range_bits(size_t k)
{
	unsigned h = 0;

	for (; k; k >>= 1)
		h++;
	return h;
}

int range_copy(struct range_table *rt, uint64_t from, uint64_t to, uint64_t len)
{
	struct range_est src = { .fresh = true }, after;
	struct range_copying c = { .from = from, .end = from + len, .to = to };
	struct range_node *copies;
	struct range_pool p;
	size_t need;
	int err;

	if (!range_span_ok(from, from + len) || !range_span_ok(to, to + len))
		return -EINVAL;
	if (from == to)
		return 0;
	src.count = range_rank(rt->root, c.end, false) - range_rank(rt->root, from, true);
	if (!src.count && !range_overlaps(rt->root, to, to + len))
		return 0;
	src.lo = src.hi = range_bits(src.count);
	need = src.count + range_graft_cost(rt->root, false, to, to + len, &src, &after);
	err = range_begin(&p, rt, after.count, need);
	if (err)
		return err;
	/* From the table as it is, before the graft takes it apart. */
	c.p = &p;
	range_iter_down(&c.it, rt->root, from);
	copies = range_copies(&c, src.count);
	range_commit(rt, &p, to, to + len, copies);
	return 0;
}

int range_lookup(const struct range_table *rt, uint64_t addr, struct range_piece *out)
{
	const struct range_node *t = rt->root;

	while (t) {
		if (addr < t->start) {
			t = t->kid[0];
		} else if (addr >= t->end) {
			t = t->kid[1];
		} else {
			*out = range_piece_of(t);
			return 1;
		}
	}
	return 0;
}

int range_extend_to(struct range_table *rt, uint64_t addr, uint64_t page_size,
		    struct range_piece *out)
{
	const struct range_node *below, *above;
	struct range_pool p;
	uint64_t start, end;
	void *tmpl;
	int err;

	if (page_size < RANGE_ALIGN || (page_size & (page_size - 1)))
		return 0;
	end = (addr & ~(page_size - 1)) + page_size;
	range_around(rt->root, addr, &below, &above);
	/* Nothing below; addr in a piece or the next one starting before end;
	 * or end wrapped (addr in the last page). */
	if (!below || end < addr || (above && above->start < end))
		return 0;
	start = below->start;
	tmpl = below->tmpl;
	err = range_reserve(&p, rt, range_path_cost(rt->root, start));
	if (err)
		return err;
	rt->root = range_stretch(&p, rt->root, start, end);
	range_unreserve(&p);
	*out = (struct range_piece){ start, end, tmpl };
	return 1;
}

int range_clone(struct range_table *dst, const struct range_table *src)
{
	if (dst->root)
		return -EINVAL;
	if (dst->max && range_count(src) > dst->max)
		return -ENOSPC;
	dst->root = range_node_ref(src->root);
	return 0;
}

int range_foreach(const struct range_table *rt, int (*fn)(void *arg, const struct range_piece *p),
		  void *arg)
{
	return range_walk(rt->root, 0, UINT64_MAX, fn, arg);
}

int range_foreach_in(const struct range_table *rt, uint64_t start, uint64_t end,
		     int (*fn)(void *arg, const struct range_piece *p), void *arg)
{
	return range_walk(rt->root, start, end, fn, arg);
}

/* ---- serialisation ---- */

const struct range_node *range_root(const struct range_table *rt)
{
	return rt->root;
}

const struct range_node *range_node_left(const struct range_node *n)
{
	return n->kid[0];
}

const struct range_node *range_node_right(const struct range_node *n)
{
	return n->kid[1];
}

uint64_t range_node_start(const struct range_node *n)
{
	return n->start;
}

uint64_t range_node_end(const struct range_node *n)
{
	return n->end;
}

void *range_node_tmpl(const struct range_node *n)
{
	return n->tmpl;
}

struct range_node *range_node_make(const struct range_table *rt, struct range_node *left,
				   uint64_t start, uint64_t end, void *tmpl,
				   struct range_node *right)
{
	unsigned hl = range_height(left), hr = range_height(right);
	struct range_node *n;

	if (!range_span_ok(start, end) || (left && left->hi > start) ||
	    (right && right->lo < end) || hl > hr + 1 || hr > hl + 1) {
		errno = EINVAL;
		return NULL;
	}
	n = range_alloc(rt);
	if (!n) {
		errno = ENOMEM;
		return NULL;
	}
	return range_seal(range_piece_init(rt, n, start, end, tmpl), left, right);
}

int range_table_set_root(struct range_table *rt, struct range_node *root)
{
	if (rt->root)
		return -EINVAL;
	if (rt->max && range_size(root) > rt->max)
		return -ENOSPC;
	rt->root = root;
	return 0;
}

/* t's subtree is sound and lies within [lo, hi). */
static bool range_sound(const struct range_node *t, uint64_t lo, uint64_t hi)
{
	const struct range_node *l, *r;
	unsigned hl, hr;

	if (!t)
		return true;
	l = t->kid[0];
	r = t->kid[1];
	if (!range_span_ok(t->start, t->end) || t->start < lo || t->end > hi ||
	    !atomic_load_explicit(&t->ref, memory_order_relaxed) || !range_sound(l, lo, t->start) ||
	    !range_sound(r, t->end, hi))
		return false;
	hl = range_height(l);
	hr = range_height(r);
	return hl <= hr + 1 && hr <= hl + 1 && t->height == 1 + (hl > hr ? hl : hr) &&
	       t->count == 1 + range_size(l) + range_size(r) &&
	       t->bytes == t->end - t->start + range_sum(l) + range_sum(r) &&
	       t->lo == (l ? l->lo : t->start) && t->hi == (r ? r->hi : t->end);
}

int range_check(const struct range_table *rt)
{
	return range_sound(rt->root, 0, UINT64_MAX) ? 0 : -EINVAL;
}
