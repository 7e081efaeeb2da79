/* Following an address space from its uffd events: see follow.h, and
 * docs/design.md ("Events that arrive late", "A moving mremap") for why. */
#include "follow.h"

#include <errno.h>
#include <string.h>

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

void follow_init(struct follow *f, const struct range_table *rt, const struct follow_ops *ops,
		 void *ctx)
{
	memset(f, 0, sizeof(*f));
	f->rt = rt;
	f->ops = ops;
	f->ctx = ctx;
}

/* --- records ------------------------------------------------------------------ */

/* Appends [s, e) to r's spans; -1 when they are full. */
static int span_add(struct follow_src *r, uint64_t s, uint64_t e)
{
	if (r->nspans == FOLLOW_SRC_SPANS)
		return -1;
	r->span[r->nspans].start = s;
	r->span[r->nspans].end = e;
	r->nspans++;
	return 0;
}

/* r without [s, e): 1 if that took something from it, 0 if not, -1 when
 * what is left needs more spans than a record has. */
static int span_take(struct follow_src *r, uint64_t s, uint64_t e)
{
	struct follow_src left = { .start = r->start, .end = r->end, .moved_in = r->moved_in };
	int took = 0;

	for (uint32_t k = 0; k < r->nspans; k++) {
		uint64_t a = r->span[k].start, b = r->span[k].end;

		if (e <= a || b <= s) {
			if (span_add(&left, a, b) < 0)
				return -1;
			continue;
		}
		took = 1;
		if ((a < s && span_add(&left, a, s) < 0) || (e < b && span_add(&left, e, b) < 0))
			return -1;
	}
	*r = left;
	return took;
}

/* [s, e) has a new owner: out of every record. A record left with nothing
 * goes, unless something moved in (its UNMAP is still to come, and must
 * forget nothing); one that would need more spans than it has goes too,
 * and what is left of it stays in the table until an UNMAP names it, as if
 * the REMAP had never been recorded. */
static void srcs_take(struct follow *f, uint64_t s, uint64_t e, int moved)
{
	uint32_t keep = 0;

	for (uint32_t i = 0; i < f->nsrcs; i++) {
		struct follow_src *r = &f->srcs[i];
		int took = span_take(r, s, e);

		if (took < 0)
			continue;
		r->moved_in |= took && moved;
		if (r->nspans || r->moved_in)
			f->srcs[keep++] = *r;
	}
	f->nsrcs = keep;
}

void follow_taken(struct follow *f, uint64_t s, uint64_t e, int moved)
{
	srcs_take(f, s, e, moved);
}

/* Records [s, e) as the source of a REMAP, taken out of older records
 * first. When all slots are in use the oldest record is dropped; without
 * memory for the slots nothing is recorded: the UNMAP then forgets the
 * whole source. */
static void srcs_add(struct follow *f, uint64_t s, uint64_t e)
{
	srcs_take(f, s, e, 0);
	if (!f->srcs && !(f->srcs = f->ops->alloc(f->ctx, FOLLOW_SRCS * sizeof(*f->srcs))))
		return;
	if (f->nsrcs == FOLLOW_SRCS)
		memmove(&f->srcs[0], &f->srcs[1], --f->nsrcs * sizeof(*f->srcs));
	f->srcs[f->nsrcs++] = (struct follow_src){
		.start = s,
		.end = e,
		.nspans = 1,
		.span = { { s, e } },
	};
}

/* The record an UNMAP of exactly [s, e) completes (the newest), or -1. */
static int srcs_find(const struct follow *f, uint64_t s, uint64_t e)
{
	for (uint32_t i = f->nsrcs; i-- > 0;)
		if (f->srcs[i].start == s && f->srcs[i].end == e)
			return (int)i;
	return -1;
}

long long follow_forget_recorded(const struct follow *from, const struct follow_ops *ops, void *ctx,
				 uint64_t s, uint64_t e)
{
	long long err = 0;

	for (uint32_t i = 0; i < from->nsrcs; i++) {
		const struct follow_src *r = &from->srcs[i];

		for (uint32_t k = 0; k < r->nspans; k++) {
			uint64_t a = max_u64(r->span[k].start, s), b = min_u64(r->span[k].end, e);
			long long u = a < b ? ops->unmap(ctx, a, b) : 0;

			if (u < 0)
				err = u;
		}
	}
	return err;
}

/* Whether any record span covers a, and up to where that stays so (at
 * most hi): the end of the covering span, or the start of the next span
 * above a. */
static uint64_t recorded_to(const struct follow *f, uint64_t a, uint64_t hi, int *covered)
{
	uint64_t next = hi;

	for (uint32_t i = 0; i < f->nsrcs; i++)
		for (uint32_t k = 0; k < f->srcs[i].nspans; k++) {
			const struct follow_span *sp = &f->srcs[i].span[k];

			if (sp->start <= a && a < sp->end) {
				*covered = 1;
				return min_u64(sp->end, hi);
			}
			if (a < sp->start && sp->start < next)
				next = sp->start;
		}
	*covered = 0;
	return next;
}

/* --- applying events ------------------------------------------------------------ */

static long long apply_unmap(struct follow *f, uint64_t s, uint64_t e)
{
	int i = srcs_find(f, s, e);
	long long r;

	if (i >= 0) {
		/* The mremap that moved it away: what nobody took since. */
		r = follow_forget_recorded(f, f->ops, f->ctx, s, e);
		memmove(&f->srcs[i], &f->srcs[i + 1],
			(--f->nsrcs - (uint32_t)i) * sizeof(*f->srcs));
	} else {
		r = f->ops->unmap(f->ctx, s, e);
		srcs_take(f, s, e, 0);
	}
	return r < 0 ? r : 0;
}

static int apply_remap(struct follow *f, uint64_t from, uint64_t to, uint64_t len)
{
	int r = f->ops->copy(f->ctx, from, to, len);

	/* The destination has a new owner whether or not we could follow. */
	srcs_take(f, to, to + len, 1);
	if (r == 0 && from != to)
		srcs_add(f, from, from + len);
	return r;
}

static int apply(struct follow *f, const struct follow_ev *e)
{
	switch (e->type) {
	case FOLLOW_REMAP:
		return apply_remap(f, e->from, e->to, e->len);
	case FOLLOW_UNMAP:
		return (int)apply_unmap(f, e->from, e->to);
	default:
		f->ops->fork(f->ctx, e->child, 1);
		return 0;
	}
}

/* --- late events ----------------------------------------------------------------- */

struct displaced {
	const struct follow *f;
	uint64_t lo, hi;
	struct follow_span d[FOLLOW_DISPLACED]; /* sorted, disjoint */
	uint32_t n;
};

static void displaced_add(struct displaced *x, uint64_t a, uint64_t b)
{
	if (x->n && x->d[x->n - 1].end == a) {
		x->d[x->n - 1].end = b;
		return;
	}
	if (x->n == FOLLOW_DISPLACED) { /* the last one grows over the rest */
		x->d[x->n - 1].end = b;
		return;
	}
	x->d[x->n++] = (struct follow_span){ a, b };
}

static int displaced_piece(void *arg, const struct range_piece *p)
{
	struct displaced *x = arg;
	uint64_t a = max_u64(p->start, x->lo), b = min_u64(p->end, x->hi);

	while (a < b) {
		int covered;
		uint64_t next = recorded_to(x->f, a, b, &covered);
		if (!covered)
			displaced_add(x, a, next);
		a = next;
	}
	return 0;
}

/* The parts of a REMAP's destination that hold pieces no record explains:
 * a mapping there was unmapped or moved away by a change whose event is
 * still to come. Their number (0: the REMAP can be applied). */
static uint32_t displaced(const struct follow *f, const struct follow_ev *e, struct displaced *x)
{
	x->f = f;
	x->lo = e->to;
	x->hi = e->to + e->len;
	x->n = 0;
	if (e->type == FOLLOW_REMAP)
		range_foreach_in(f->rt, x->lo, x->hi, displaced_piece, x);
	return x->n;
}

/* The ranges an event touches: none for a fork, which keeps its place. */
static uint32_t footprint(const struct follow_ev *e, struct follow_span fp[2])
{
	if (e->type == FOLLOW_REMAP) {
		fp[0] = (struct follow_span){ e->from, e->from + e->len };
		fp[1] = (struct follow_span){ e->to, e->to + e->len };
		return 2;
	}
	if (e->type == FOLLOW_UNMAP) {
		fp[0] = (struct follow_span){ e->from, e->to };
		return 1;
	}
	return 0;
}

/* p and q share an address outside the displaced parts. */
static int meet_outside(const struct displaced *x, struct follow_span p, struct follow_span q)
{
	uint64_t lo = max_u64(p.start, q.start), hi = min_u64(p.end, q.end);

	for (uint32_t i = 0; i < x->n && lo < hi; i++) {
		if (x->d[i].end <= lo)
			continue;
		if (x->d[i].start > lo)
			return 1;
		lo = x->d[i].end;
	}
	return lo < hi;
}

static int conflict(const struct displaced *x, const struct follow_ev *a, const struct follow_ev *b)
{
	struct follow_span fa[2], fb[2];
	uint32_t na = footprint(a, fa), nb = footprint(b, fb);

	for (uint32_t i = 0; i < na; i++)
		for (uint32_t k = 0; k < nb; k++)
			if (meet_outside(x, fa[i], fb[k]))
				return 1;
	return 0;
}

/* Does e free (move away or unmap) a displaced part? */
static int frees_displaced(const struct displaced *x, const struct follow_ev *e)
{
	uint64_t s = e->from, end = e->type == FOLLOW_REMAP ? e->from + e->len : e->to;

	if (e->type == FOLLOW_FORK)
		return 0;
	for (uint32_t i = 0; i < x->n; i++)
		if (s < x->d[i].end && x->d[i].start < end)
			return 1;
	return 0;
}

/* b is the UNMAP a's mremap sends once a is read: it comes after a. */
static int unmap_of_source(const struct follow_ev *a, const struct follow_ev *b)
{
	return a->type == FOLLOW_REMAP && b->type == FOLLOW_UNMAP && b->from == a->from &&
	       b->to == a->from + a->len;
}

/* The head of the queue is blocked by its displaced parts x. The first
 * later event that frees one of them is the late one, unless it comes
 * after the head by what else it touches: an event that touches an
 * address the head, or an event after the head, touched before it (the
 * head's mapping moving on, say) cannot have preceded it, nor can the
 * UNMAP of such a move's source. Addresses in the displaced parts tell
 * nothing else: the late event's place there is what is in question.
 * The late event goes to the front (it may be blocked in its turn, and
 * its own late event is found the same way). 1 if one was found. */
static int pull_late(struct follow *f, const struct displaced *x)
{
	uint8_t after[FOLLOW_QUEUE] = { 1 };

	for (uint32_t i = 1; i < f->nq; i++) {
		for (uint32_t k = 0; k < i && !after[i]; k++)
			after[i] = after[k] && (conflict(x, &f->q[k], &f->q[i]) ||
						unmap_of_source(&f->q[k], &f->q[i]));
		if (after[i] || !frees_displaced(x, &f->q[i]))
			continue;
		struct follow_ev late = f->q[i];
		memmove(&f->q[1], &f->q[0], i * sizeof(f->q[0]));
		f->q[0] = late;
		f->q[0].pulled = 1;
		return 1;
	}
	return 0;
}

static double oldest(const struct follow *f)
{
	double t = f->q[0].at;

	for (uint32_t i = 1; i < f->nq; i++)
		t = f->q[i].at < t ? f->q[i].at : t;
	return t;
}

/* Apply from the front of the queue what can be: the head if nothing
 * blocks it, else its late event if it came, else nothing until the cap.
 * force: the head goes whatever blocks it (room is needed). Pulling stops
 * after as many pulls in a row as there are events (a circle: the table
 * does not match what the events say; the cap settles it). */
static int settle(struct follow *f, double now, double cap, int force, struct follow_count *n)
{
	uint32_t pulls = 0;

	while (f->nq && !f->unborn) {
		struct displaced x;
		int blocked = displaced(f, &f->q[0], &x) > 0;

		if (blocked && !force) {
			if (pulls < f->nq && pull_late(f, &x)) {
				pulls++;
				continue;
			}
			if (now - oldest(f) < cap)
				return 0;
		}
		struct follow_ev e = f->q[0];
		memmove(&f->q[0], &f->q[1], --f->nq * sizeof(f->q[0]));
		n->expired += (uint32_t)blocked;
		n->reordered += e.pulled;
		force = 0;
		pulls = 0;
		int r = apply(f, &e);
		if (r < 0)
			return r;
	}
	return 0;
}

int follow_settle(struct follow *f, double now, double cap, struct follow_count *n)
{
	return settle(f, now, cap, 0, n);
}

/* An event that could not be queued behind the others: a fork's child
 * still hears of it (ops->fork), without a table. Returns err. */
static int not_queued(struct follow *f, const struct follow_ev *e, int err)
{
	if (e->type == FOLLOW_FORK)
		f->ops->fork(f->ctx, e->child, 0);
	return err;
}

int follow_event(struct follow *f, const struct follow_ev *e, double now, double cap,
		 struct follow_count *n)
{
	struct follow_ev ev = *e;
	struct displaced x;

	ev.at = now;
	ev.pulled = 0;
	if (!f->nq && !f->unborn && !displaced(f, &ev, &x))
		return apply(f, &ev);
	if (!f->q && !(f->q = f->ops->alloc(f->ctx, FOLLOW_QUEUE * sizeof(*f->q)))) {
		n->expired++; /* nowhere to wait: as it came */
		return apply(f, &ev);
	}
	if (f->nq == FOLLOW_QUEUE) {
		if (f->unborn)
			return not_queued(f, &ev, -ENOBUFS); /* nothing can go before the table */
		int r = settle(f, now, cap, 1, n);
		if (r < 0)
			return not_queued(f, &ev, r);
	}
	f->q[f->nq++] = ev;
	return settle(f, now, cap, 0, n);
}

int follow_busy(const struct follow *f)
{
	return f->nq || f->unborn;
}

double follow_deadline(const struct follow *f, double cap)
{
	return f->nq && !f->unborn ? oldest(f) + cap : 0;
}

int follow_holds(const struct follow *f, uint64_t s, uint64_t e, int op)
{
	struct range_piece p;

	if (f->unborn)
		return 1;
	if (f->nq && !op && !range_lookup(f->rt, s, &p))
		return 1;
	for (uint32_t i = 0; i < f->nq; i++) {
		struct follow_span fp[2];
		uint32_t k = footprint(&f->q[i], fp);

		if (f->q[i].type == FOLLOW_FORK && op)
			return 1;
		while (k-- > 0)
			if (s < fp[k].end && fp[k].start < e)
				return 1;
	}
	return 0;
}

/* --- children and the end ------------------------------------------------------------ */

int follow_unborn(struct follow *f)
{
	if (!f->q && !(f->q = f->ops->alloc(f->ctx, FOLLOW_QUEUE * sizeof(*f->q))))
		return -ENOMEM;
	f->unborn = 1;
	return 0;
}

void follow_born(struct follow *f)
{
	f->unborn = 0;
}

void follow_fini(struct follow *f)
{
	for (uint32_t i = 0; i < f->nq; i++)
		if (f->q[i].type == FOLLOW_FORK)
			f->ops->fork(f->ctx, f->q[i].child, !f->unborn);
	f->nq = 0;
	f->nsrcs = 0;
	if (f->q)
		f->ops->free(f->ctx, f->q);
	if (f->srcs)
		f->ops->free(f->ctx, f->srcs);
	f->q = NULL;
	f->srcs = NULL;
}
