/* Range table: a sorted array of disjoint pieces, searched by bisection.
 *
 * The array has a mapping of its own, so it grows by mremap without copying
 * and stays out of the malloc heap the workers share. Every operation that
 * can fail first computes the exact number of pieces it will leave, checks
 * that against max and reserves the slots; only then does it touch the
 * table, so a failure leaves the table as it was. */
#include "range.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>

/* Pieces are bounds of mappings: aligned to the smallest page size. */
#define RANGE_ALIGN 4096u

static int range_ok(uint64_t start, uint64_t end)
{
	return start < end && start % RANGE_ALIGN == 0 && end % RANGE_ALIGN == 0;
}

/* Bytes mapped for cap slots. cap is always derived from a whole number
 * of pages, so rounding up recovers the mapping's exact length. */
static size_t map_len(size_t cap)
{
	size_t len = cap * sizeof(struct range);

	return (len + RANGE_ALIGN - 1) & ~(size_t)(RANGE_ALIGN - 1);
}

static int grow(struct range_table *rt, size_t need)
{
	size_t len = rt->cap ? map_len(rt->cap) : RANGE_ALIGN;
	void *p;

	while (len / sizeof(struct range) < need) {
		if (len > SIZE_MAX / 2)
			return -ENOMEM;
		len *= 2;
	}
	if (rt->cap)
		p = mremap(rt->v, map_len(rt->cap), len, MREMAP_MAYMOVE);
	else
		p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	rt->v = p;
	rt->cap = len / sizeof(struct range);
	return 0;
}

/* Makes sure the table can hold need pieces. As n never exceeds max or
 * cap, an operation that adds no piece never fails here. */
static int make_room(struct range_table *rt, size_t need)
{
	if (rt->max && need > rt->max)
		return -ENOSPC;
	if (need <= rt->cap)
		return 0;
	return grow(rt, need);
}

/* Index of the first piece starting at or after addr. */
static size_t first_from(const struct range_table *rt, uint64_t addr)
{
	size_t lo = 0, hi = rt->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (rt->v[mid].start < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Index of the first piece ending after addr. Pieces are disjoint, so
 * their ends are sorted too: it is the first that can overlap [addr, ...). */
static size_t first_overlap(const struct range_table *rt, uint64_t addr)
{
	size_t i = first_from(rt, addr);

	return i > 0 && rt->v[i - 1].end > addr ? i - 1 : i;
}

/* 1 when a piece has addr strictly inside: cutting there adds a piece. */
static size_t straddles(const struct range_table *rt, uint64_t addr)
{
	size_t i = first_from(rt, addr);

	return i > 0 && rt->v[i - 1].end > addr;
}

/* Pieces left after cut(rt, start, end): every piece overlapping the
 * region goes, and each edge inside a piece leaves one part outside. */
static size_t count_after_cut(const struct range_table *rt, uint64_t start,
			      uint64_t end)
{
	size_t gone = first_from(rt, end) - first_overlap(rt, start);

	return rt->n + straddles(rt, start) + straddles(rt, end) - gone;
}

/* Opens slot i; the caller has reserved it. */
static void open_slot(struct range_table *rt, size_t i)
{
	memmove(&rt->v[i + 1], &rt->v[i], (rt->n - i) * sizeof(struct range));
	rt->n++;
}

static void drop(struct range_table *rt, size_t a, size_t b)
{
	for (size_t k = a; k < b; k++) {
		rt->bytes -= rt->v[k].end - rt->v[k].start;
		rt->ops->put(rt->v[k].tmpl);
	}
	memmove(&rt->v[a], &rt->v[b], (rt->n - b) * sizeof(struct range));
	rt->n -= b - a;
}

/* Cuts the piece that has addr strictly inside in two; the caller has
 * reserved the slot. Both halves keep the fault-around state: the stream
 * goes on in whichever half holds its next fault. */
static void split_at(struct range_table *rt, uint64_t addr)
{
	size_t i = first_from(rt, addr);

	if (i == 0 || rt->v[i - 1].end <= addr)
		return;
	open_slot(rt, i);
	rt->v[i] = rt->v[i - 1];
	rt->v[i - 1].end = addr;
	rt->v[i].start = addr;
	rt->ops->get(rt->v[i].tmpl);
}

/* Forgets [start, end): pieces straddling an edge are trimmed, one that
 * straddles both is split first (the caller has reserved the slot).
 * Returns the bytes forgotten. */
static uint64_t cut(struct range_table *rt, uint64_t start, uint64_t end)
{
	uint64_t before = rt->bytes;
	size_t i = first_overlap(rt, start), j = first_from(rt, end);
	struct range *v = rt->v;

	if (i == j)
		return 0;
	/* The new upper half starts at end, so j still bounds the overlap;
	 * the slot was reserved, so v stays where it is. */
	if (v[i].start < start && v[i].end > end)
		split_at(rt, end);
	if (v[i].start < start) {
		rt->bytes -= v[i].end - start;
		v[i].end = start;
		i++;
	}
	if (i < j && v[j - 1].end > end) {
		rt->bytes -= end - v[j - 1].start;
		v[j - 1].start = end;
		j--;
	}
	drop(rt, i, j);
	return before - rt->bytes;
}

void range_table_init(struct range_table *rt, size_t max,
		      const struct range_ops *ops)
{
	*rt = (struct range_table){ .max = max, .ops = ops };
}

void range_table_fini(struct range_table *rt)
{
	for (size_t k = 0; k < rt->n; k++)
		rt->ops->put(rt->v[k].tmpl);
	if (rt->cap)
		munmap(rt->v, map_len(rt->cap));
	range_table_init(rt, rt->max, rt->ops);
}

int range_insert(struct range_table *rt, uint64_t start, uint64_t end,
		 void *tmpl)
{
	size_t i;
	int err;

	if (!range_ok(start, end))
		return -EINVAL;
	i = first_overlap(rt, start);
	if (i < rt->n && rt->v[i].start < end)
		return -EEXIST;
	err = make_room(rt, rt->n + 1);
	if (err)
		return err;
	open_slot(rt, i);
	rt->v[i] = (struct range){ .start = start, .end = end, .tmpl = tmpl };
	rt->bytes += end - start;
	rt->ops->get(tmpl);
	return 0;
}

long long range_remove(struct range_table *rt, uint64_t start, uint64_t end)
{
	int err;

	/* Longer regions could remove more bytes than the result can say. */
	if (!range_ok(start, end) || end - start > LLONG_MAX)
		return -EINVAL;
	err = make_room(rt, count_after_cut(rt, start, end));
	if (err)
		return err;
	return (long long)cut(rt, start, end);
}

static void reverse(struct range *v, size_t lo, size_t hi)
{
	for (; lo + 1 < hi; lo++, hi--) {
		struct range r = v[lo];

		v[lo] = v[hi - 1];
		v[hi - 1] = r;
	}
}

/* [lo, mid) and [mid, hi) trade places, in place. */
static void rotate(struct range *v, size_t lo, size_t mid, size_t hi)
{
	reverse(v, lo, mid);
	reverse(v, mid, hi);
	reverse(v, lo, hi);
}

/* The copies are made first, clipped to the source and shifted onto the
 * destination, in the last k slots of the array, where the cut (which
 * reaches one slot past n at most) leaves them alone; that also keeps them
 * when source and destination overlap. Then they join the table at the
 * destination, now empty. */
int range_copy(struct range_table *rt, uint64_t from, uint64_t to, uint64_t len)
{
	size_t a, k, need, p;
	struct range *c;
	uint64_t bytes = 0;
	int err;

	if (!range_ok(from, from + len) || !range_ok(to, to + len))
		return -EINVAL;
	if (from == to)
		return 0;
	a = first_overlap(rt, from);
	k = first_from(rt, from + len) - a;
	need = count_after_cut(rt, to, to + len) + k;
	err = make_room(rt, need);
	if (!err && k && rt->n + 1 + k > rt->cap)
		err = grow(rt, rt->n + 1 + k);
	if (err)
		return err;
	if (!k) {
		cut(rt, to, to + len);
		return 0;
	}
	c = &rt->v[rt->cap - k];
	for (size_t i = 0; i < k; i++) {
		struct range *r = &c[i];

		*r = rt->v[a + i];
		if (r->start < from)
			r->start = from;
		if (r->end > from + len)
			r->end = from + len;
		r->start = r->start - from + to;
		r->end = r->end - from + to;
		/* The streams it followed were at the old addresses. */
		memset(r->fs, 0, sizeof(r->fs));
		r->clock = 0;
		bytes += r->end - r->start;
		rt->ops->get(r->tmpl);
	}
	cut(rt, to, to + len);
	p = first_from(rt, to);
	memmove(&rt->v[rt->n], c, k * sizeof(struct range));
	rotate(rt->v, p, rt->n, rt->n + k);
	rt->n += k;
	rt->bytes += bytes;
	return 0;
}

struct range *range_lookup(struct range_table *rt, uint64_t addr)
{
	size_t i = first_overlap(rt, addr);

	return i < rt->n && rt->v[i].start <= addr ? &rt->v[i] : NULL;
}

struct range *range_extend_to(struct range_table *rt, uint64_t addr,
			      uint64_t page_size)
{
	size_t i = first_overlap(rt, addr);
	uint64_t end;
	struct range *p;

	if (page_size < RANGE_ALIGN || (page_size & (page_size - 1)))
		return NULL;
	end = (addr & ~(page_size - 1)) + page_size;
	/* Nothing below, or addr is inside a piece: nothing to grow. */
	if (i == 0 || (i < rt->n && rt->v[i].start <= addr))
		return NULL;
	/* end wraps to 0 in the last page; the next piece must not overlap. */
	if (end < addr || (i < rt->n && rt->v[i].start < end))
		return NULL;
	p = &rt->v[i - 1];
	rt->bytes += end - p->end;
	p->end = end;
	return p;
}

int range_clone(struct range_table *dst, const struct range_table *src)
{
	int err;

	if (dst->n)
		return -EINVAL;
	err = make_room(dst, src->n);
	if (err)
		return err;
	for (size_t k = 0; k < src->n; k++) {
		dst->v[k] = src->v[k];
		/* The child has not faulted anything yet. */
		memset(dst->v[k].fs, 0, sizeof(dst->v[k].fs));
		dst->v[k].clock = 0;
		dst->ops->get(dst->v[k].tmpl);
	}
	dst->n = src->n;
	dst->bytes = src->bytes;
	return 0;
}
