/* Range table: the refpage ranges of one address space, sorted, disjoint.
 *
 * Each piece maps [start, end) (page aligned) to a template. The table is a
 * persistent AVL tree: a fork child's table is an O(1) clone that shares
 * every node with its parent, and an operation rebuilds only the nodes it
 * has to, so parent and child then diverge independently. Every operation
 * is O(log n), plus O(k) for the k pieces it removes, copies or reports.
 *
 * Operations are all or nothing. Before changing anything, one works out
 * how many nodes it can need (O(log n)) and allocates them through
 * ops->node_alloc, which may refuse (the daemon charges nodes to the
 * user's account): a refusal gives -ENOMEM and leaves the table, its
 * template references and the allocator exactly as they were. What is not
 * used is freed before the operation returns.
 *
 * Template references: one per node, that is one per piece of one table,
 * counted once however many tables share the node. ops->get is called for
 * each node made for a piece (insert, a split, a copy, a shared node
 * rebuilt), ops->put when a node is freed; a clone takes none.
 *
 * Threads: a table is used by one thread at a time (its owner, struct
 * rp_mm, serialises every call, readers included). Tables that share nodes
 * may be used by different threads at once: node reference counts are
 * atomic, and a node is only ever changed while the operation holds its
 * only reference, that is when no other table and no other thread can
 * reach it. To read a table's nodes without its owner's serialisation
 * (e.g. to encode a snapshot elsewhere), take range_node_ref() of its root
 * under that serialisation: the nodes stay unchanged until the reference
 * is put. ops->get, put, node_alloc and node_free are called from inside
 * the operations and must not call back into the table. */
#ifndef REFPAGED_RANGE_H
#define REFPAGED_RANGE_H

#include <stddef.h>
#include <stdint.h>

/* Pieces are bounds of mappings: aligned to the smallest page size. */
#define RANGE_ALIGN 4096u

struct range_ops {
	/* A new node refers to tmpl. */
	void (*get)(void *tmpl);
	/* A node referring to tmpl was freed. */
	void (*put)(void *tmpl);
	/* size bytes for a node, or NULL to refuse (over budget or no
	 * memory). ctx is the table's (range_table_init). NULL: malloc. */
	void *(*node_alloc)(void *ctx, size_t size);
	/* Gives back what node_alloc gave, with the same size. A node made
	 * for one table may be freed through another table that shared it:
	 * tables that share nodes must be given the same accounting (the
	 * same ctx semantics). NULL: free. */
	void (*node_free)(void *ctx, void *p, size_t size);
};

/* A node of the tree: opaque, immutable while shared. */
struct range_node;

struct range_table {
	struct range_node *root;
	/* Most pieces allowed, 0 = unlimited. The owner may change it
	 * between operations, e.g. lift it to follow what the kernel did. */
	size_t max;
	const struct range_ops *ops;
	void *ctx;
};

/* A piece, as the table reports it: a copy, valid after the table
 * changes (tmpl only as long as the caller holds a reference to it). */
struct range_piece {
	uint64_t start, end;
	void *tmpl;
};

/* An empty table. ops must outlive it. */
void range_table_init(struct range_table *rt, size_t max, const struct range_ops *ops, void *ctx);
/* Drops the table's reference to its tree: the nodes no other table
 * shares are freed and put their templates. The table is then empty. */
void range_table_fini(struct range_table *rt);

/* O(1): every node caches its subtree's piece count and byte sum. */
size_t range_count(const struct range_table *rt);
uint64_t range_bytes(const struct range_table *rt);

/* Insert [start, end) -> tmpl, taking a reference to tmpl. -EINVAL if empty
 * or unaligned, -EEXIST if it overlaps a piece, -ENOSPC if the table would
 * then hold more than max pieces, -ENOMEM if nodes are refused. */
int range_insert(struct range_table *rt, uint64_t start, uint64_t end, void *tmpl);

/* Forget [start, end): pieces inside go, pieces straddling an edge are
 * trimmed, a piece straddling both is split in two. run (may be NULL) is
 * called once per maximal run of contiguous removed bytes, in address
 * order, before the table changes and only once the removal is certain:
 * pieces that touch form one run whatever their templates, so the caller
 * can unregister each run with one ioctl. Returns the bytes removed (0 when
 * nothing was there), or -EINVAL (bad or longer than LLONG_MAX), -ENOSPC (a
 * split would take the table past max: a caller following the kernel
 * lifts max around the call), -ENOMEM; the table is unchanged on error.
 * Only a split can give -ENOSPC, but any change needs nodes. */
long long range_remove(struct range_table *rt, uint64_t start, uint64_t end,
		       void (*run)(void *arg, uint64_t s, uint64_t e), void *arg);

/* mremap: what is at [from, from+len) is also at [to, to+len) (the source
 * stays: the caller forgets it when the mapping there goes). Whatever the
 * table had at the destination is forgotten first; where source and
 * destination overlap, the copy wins. Only the final number of pieces
 * counts against max. 0 or -EINVAL, -ENOSPC, -ENOMEM (the table is
 * unchanged on error). */
int range_copy(struct range_table *rt, uint64_t from, uint64_t to, uint64_t len);

/* 1 and the piece containing addr in *out, or 0. */
int range_lookup(const struct range_table *rt, uint64_t addr, struct range_piece *out);

/* A fault at addr that no piece contains, in a VMA registered with us: the
 * only way that happens is mremap growing a mapping in place (the kernel
 * sends no event for it), so the piece that ends closest below addr, with
 * no other piece in between, grows up to the end of addr's page of
 * page_size. Returns 1 and the grown piece in *out, 0 when there is no such
 * piece (or page_size is not a power of two of at least RANGE_ALIGN), or
 * -ENOMEM (the table is then unchanged). The number of pieces stays. */
int range_extend_to(struct range_table *rt, uint64_t addr, uint64_t page_size,
		    struct range_piece *out);

/* fork: dst (initialised, empty) gets src's pieces in O(1), sharing its
 * nodes and taking no template reference. -EINVAL if dst is not empty,
 * -ENOSPC if src holds more than dst's max. */
int range_clone(struct range_table *dst, const struct range_table *src);

/* fn on every piece in address order, until it returns nonzero; returns
 * that value, or 0. fn must not change the table. */
int range_foreach(const struct range_table *rt, int (*fn)(void *arg, const struct range_piece *p),
		  void *arg);
/* The same on the pieces overlapping [start, end) (whole, not clipped),
 * in O(log n + k). */
int range_foreach_in(const struct range_table *rt, uint64_t start, uint64_t end,
		     int (*fn)(void *arg, const struct range_piece *p), void *arg);

/* Serialisation (the restart code's state snapshot). Tables share
 * subtrees, so an encoder walks nodes rather than pieces and writes each
 * distinct node once (a node's address names it while the encoder holds
 * the tables still); a decoder rebuilds the same DAG bottom-up with
 * range_node_make, which validates each node in O(1) from its children's
 * cached bounds and heights, so a whole snapshot is checked in O(distinct
 * nodes). */
const struct range_node *range_root(const struct range_table *rt);
const struct range_node *range_node_left(const struct range_node *n);
const struct range_node *range_node_right(const struct range_node *n);
uint64_t range_node_start(const struct range_node *n);
uint64_t range_node_end(const struct range_node *n);
void *range_node_tmpl(const struct range_node *n);

/* A node for [start, end) -> tmpl over left and right (each NULL or a node
 * the caller holds a reference to), allocated through rt's ops. It must
 * keep the tree valid: start < end, both aligned, every piece of left ends
 * at or before start, every piece of right starts at or after end, and
 * left's and right's heights differ by one at most (AVL). On success it
 * takes over the caller's references to left and right, takes a reference
 * to tmpl, and returns the node with one reference, the caller's. On
 * failure it returns NULL with errno EINVAL (invalid) or ENOMEM (refused)
 * and has taken nothing: the caller still holds left and right. */
struct range_node *range_node_make(const struct range_table *rt, struct range_node *left,
				   uint64_t start, uint64_t end, void *tmpl,
				   struct range_node *right);
/* Another reference to n (e.g. a child used by a second parent); returns
 * n. */
struct range_node *range_node_ref(const struct range_node *n);
/* Drops a reference; the last frees the node through rt's ops, puts its
 * template and drops its children. n may be NULL. */
void range_node_put(const struct range_table *rt, struct range_node *n);
/* rt (empty) takes over the caller's reference to root (NULL: stays
 * empty). -EINVAL if rt is not empty, -ENOSPC if root holds more than
 * max pieces; the caller then still holds root. */
int range_table_set_root(struct range_table *rt, struct range_node *root);

/* 0 if every node of the table is sound: pieces aligned, sorted and
 * disjoint, AVL balanced, and cached heights, counts, bytes and bounds
 * right; -EINVAL otherwise. O(n): for tests, and for a restorer that
 * wants to be sure. */
int range_check(const struct range_table *rt);

#endif
