/* Range table: the refpage ranges of one address space, sorted, disjoint.
 *
 * Each range maps [start, end) to a template. The table holds one template
 * reference per range piece: ops->get is called when a piece is created
 * (insert, split, copy, clone), ops->put when one disappears. The table is not
 * locked: its owner (struct rp_mm) serialises access. */
#ifndef REFPAGED_RANGE_H
#define REFPAGED_RANGE_H

#include <stddef.h>
#include <stdint.h>

struct range_ops {
	void (*get)(void *tmpl);
	void (*put)(void *tmpl);
};

/* Fault-around state of one sequential stream (daemon/fault.c): where its
 * next fault is expected, its current fill window in pages (0: unused
 * slot), and when it was last seen. */
struct fault_stream {
	uint64_t next;
	uint32_t window;
	uint32_t stamp;
};

/* Streams followed per range: threads sweeping different parts of one
 * mapping each keep their own window. */
#define RANGE_STREAMS 4

struct range {
	uint64_t start, end; /* page aligned, start < end */
	void *tmpl;
	struct fault_stream fs[RANGE_STREAMS];
	uint32_t clock;      /* stamps for fs */
	uint32_t reserved;
};

struct range_table {
	struct range *v; /* sorted by start; mmap'd array */
	size_t n, cap;
	size_t max;      /* most pieces allowed (limit), 0 = unlimited */
	uint64_t bytes;  /* sum of end - start */
	const struct range_ops *ops;
};

void range_table_init(struct range_table *rt, size_t max, const struct range_ops *ops);
/* Drops every piece (ops->put each) and frees the array. */
void range_table_fini(struct range_table *rt);

/* Insert [start, end) -> tmpl. -EINVAL if empty or unaligned, -EEXIST if it
 * overlaps a piece, -ENOSPC past max, -ENOMEM. Takes a reference. */
int range_insert(struct range_table *rt, uint64_t start, uint64_t end, void *tmpl);

/* Forget [start, end), splitting pieces that straddle it. Returns the
 * number of bytes removed (0 when nothing was there), or -ENOSPC/-ENOMEM
 * when a split needs a slot it cannot get (the table is then unchanged). */
long long range_remove(struct range_table *rt, uint64_t start, uint64_t end);

/* mremap: what is at [from, from+len) is also at [to, to+len) (the source
 * stays: the caller forgets it when the mapping there goes). Whatever the
 * table had at the destination is forgotten first; where source and
 * destination overlap, the copy wins. The copies start with no fault
 * streams. Only the final number of pieces counts against max. 0 or
 * -errno (the table is unchanged on error). */
int range_copy(struct range_table *rt, uint64_t from, uint64_t to, uint64_t len);

/* The piece containing addr, or NULL. */
struct range *range_lookup(struct range_table *rt, uint64_t addr);

/* A fault at addr that no piece contains, in a VMA registered with us: the
 * only way that happens is mremap growing a mapping in place (the kernel
 * sends no event for it), so the piece that ends closest below addr with no
 * other piece in between grows up to addr's page. Returns it, or NULL when
 * there is no such piece. */
struct range *range_extend_to(struct range_table *rt, uint64_t addr, uint64_t page_size);

/* dst (empty, initialised) gets a copy of every piece of src (fork). */
int range_clone(struct range_table *dst, const struct range_table *src);

#endif
