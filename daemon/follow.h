/* Following a client's address space from its uffd events: what the
 * events alone do not say, kept beside the range table.
 *
 * - Records: a moving mremap sends a REMAP and, once that is read, an
 *   UNMAP of its old range. A REMAP copies the source's pieces and records
 *   the source; whatever moves in or is mapped there meanwhile is taken
 *   out of the record, and the UNMAP forgets only what is left in it.
 * - Order: the kernel queues UNMAP and REMAP events only after the change
 *   has dropped mmap_lock, so two threads' events can come in the opposite
 *   order of their changes. A REMAP whose destination still holds pieces
 *   no record explains (a legitimate destination is always empty by then:
 *   docs/design.md, "Events that arrive late") moves into addresses whose
 *   own UNMAP or REMAP is still to come. It waits, and so does every event
 *   read after it, until that late event comes; the late one is then
 *   applied first. Past a cap, or with the queue full, events are applied
 *   in the order they came.
 *
 * Pure: no system call, no clock; the caller gives the time and applies
 * every change of the table through follow_ops (and so sees each one).
 * One thread per struct follow, the owner of the table. */
#ifndef REFPAGED_FOLLOW_H
#define REFPAGED_FOLLOW_H

#include <stddef.h>
#include <stdint.h>

#include "range.h"

/* Sources kept (past that, the oldest record goes), and parts of one
 * still left (a record that would need more goes). */
#define FOLLOW_SRCS 64
#define FOLLOW_SRC_SPANS 4
/* Events that can wait for a late one (past that, the oldest is applied). */
#define FOLLOW_QUEUE 64
/* Displaced parts of a destination told apart (more are merged). */
#define FOLLOW_DISPLACED 8

struct follow_span {
	uint64_t start, end;
};

/* The source of a REMAP, as its UNMAP will name it, and the parts of it
 * nobody has taken since. moved_in: a REMAP or a MAP took a part (so it
 * was no MREMAP_DONTUNMAP source: its UNMAP is still to come, and the
 * record stays, even empty, until then). */
struct follow_src {
	uint64_t start, end;
	uint32_t nspans, moved_in;
	struct follow_span span[FOLLOW_SRC_SPANS];
};

enum follow_type { FOLLOW_REMAP, FOLLOW_UNMAP, FOLLOW_FORK };

/* An event as read. REMAP: [from, from+len) to [to, to+len); UNMAP:
 * [from, to); FORK: child is the caller's (follow_ops.fork gets it). */
struct follow_ev {
	enum follow_type type;
	uint32_t pulled; /* ours: applied before events read earlier */
	uint64_t from, to, len;
	double at; /* ours: when it was read */
	void *child;
};

struct follow_ops {
	/* The table forgets [s, e): the bytes forgotten or -errno. */
	long long (*unmap)(void *ctx, uint64_t s, uint64_t e);
	/* The table copies [from, from+len) to [to, to+len): 0 or -errno. */
	int (*copy)(void *ctx, uint64_t from, uint64_t to, uint64_t len);
	/* A fork, in its place among the events: with ok, the child's table
	 * is a copy of this one now, without what the records hold; without,
	 * this table cannot be the child's (it is unborn itself, or could not
	 * follow an event before the fork): the child must be let go. Called
	 * exactly once per fork event given to follow_event. */
	void (*fork)(void *ctx, void *child, int ok);
	/* Memory for the records and the queue, made on first use; NULL: go
	 * without (records: an UNMAP forgets the whole source; queue: in the
	 * order they came). */
	void *(*alloc)(void *ctx, size_t size);
	void (*free)(void *ctx, void *p);
};

struct follow {
	const struct range_table *rt;
	const struct follow_ops *ops;
	void *ctx;
	struct follow_src *srcs; /* FOLLOW_SRCS, oldest first */
	uint32_t nsrcs;
	uint32_t nq;
	struct follow_ev *q; /* FOLLOW_QUEUE, in the order to apply them */
	int unborn;          /* a fork child: its table waits for its parent */
};

/* What a call did, added to the caller's counts. */
struct follow_count {
	uint32_t reordered; /* late events applied before events read earlier */
	uint32_t expired;   /* events that waited past the cap (or for room) */
};

void follow_init(struct follow *f, const struct range_table *rt, const struct follow_ops *ops,
		 void *ctx);
/* Let go: each fork still queued gets the table as it is (ops->fork; not
 * ok if this side is unborn itself), the other events are dropped, the
 * memory freed. */
void follow_fini(struct follow *f);

/* A fork child whose table comes from its parent's ops->fork: its events
 * wait until follow_born (then follow_settle). -ENOMEM: no room for them
 * (the table must come at once). */
int follow_unborn(struct follow *f);
void follow_born(struct follow *f);

/* An event read at now: applied, or queued behind earlier ones or until
 * its late one comes; then whatever can be applied is. cap: how long an
 * event may wait. 0, or -errno of the first change the table could not
 * follow (the rest stays queued), or -ENOBUFS: an unborn child's queue is
 * full. */
int follow_event(struct follow *f, const struct follow_ev *e, double now, double cap,
		 struct follow_count *n);
/* Apply what can be by now (the cap passed, a child born). Same return. */
int follow_settle(struct follow *f, double now, double cap, struct follow_count *n);
/* Events are waiting; a fork now must take its place among them. */
int follow_busy(const struct follow *f);
/* When the oldest waiting event reaches the cap; 0 if none waits. */
double follow_deadline(const struct follow *f, double cap);
/* [s, e) is touched by an event still waiting: a fault there must wait
 * (the order decides what it reads); so must a fault no piece contains
 * while any event waits (a REMAP names the old length only: a mapping
 * moved and grown at once has its new tail beyond the event's footprint,
 * and the fault must not grow the piece below into it). op: for a change
 * of the table (a MAP or UNMAP request), which a waiting fork holds back
 * too, as it must not reach the child. */
int follow_holds(const struct follow *f, uint64_t s, uint64_t e, int op);

/* [s, e) has a new owner (mapped, or unmapped on request): out of every
 * record. moved: a MAP (the record stays even if emptied). */
void follow_taken(struct follow *f, uint64_t s, uint64_t e, int moved);
/* Forget through ops/ctx (from's own table, or a fork child's) what is
 * left in from's records within [s, e). 0 or the first -errno. */
long long follow_forget_recorded(const struct follow *from, const struct follow_ops *ops, void *ctx,
				 uint64_t s, uint64_t e);

#endif
