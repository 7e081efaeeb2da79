/* One served address space: a client's userfaultfd (or a fork child's,
 * adopted from UFFD_EVENT_FORK), its range table, the faults waiting for a
 * retry, and the worker whose loop owns it.
 *
 * Ownership: the worker's thread alone reads the uffd, serves faults,
 * applies events and changes the range table; nobody else touches them, so
 * nothing here is locked. Other threads ask for changes with an mm_op
 * (MAP, UNMAP), run on the worker in order with the uffd's events, and
 * answered on the main loop. A session that created the mm holds a
 * reference until it ends; the worker holds one while it serves it. */
#ifndef REFPAGED_MM_H
#define REFPAGED_MM_H

#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "fault.h"
#include "follow.h"
#include "range.h"
#include "worker.h"

struct acct;
struct rp_daemon;
struct tmpl;
struct tmpl_store;

/* A client and every descendant adopted from its fork events. */
struct rp_tree {
	atomic_uint procs; /* live mms in the tree */
	atomic_uint refs;
	uint32_t id;       /* the observer's name for it */
	struct acct *acct; /* charged for it (referenced) */
};

struct pending_fault {
	uint64_t addr, flags;
	double first, next; /* when it first failed, when it is tried again */
	uint32_t tries;
	int32_t tid; /* the faulting thread (report mode) */
};

/* A change of the range table asked for by a session (main loop), done on
 * the worker in order with the uffd's events, answered back on the main
 * loop through done. The session owns it (one in flight at a time). */
enum mm_op_type { MM_OP_MAP, MM_OP_UNMAP };

struct mm_op {
	enum mm_op_type type;
	uint64_t addr, len;
	struct tmpl *t;            /* MAP: a reference of the op's own */
	uint32_t session, req_seq; /* for the observer */
	int32_t status;            /* the result, for done */
	double since;              /* first held back for an event in flight, 0: not */
	struct rp_mm *mm;
	struct loop_call call;
	void (*done)(struct mm_op *op); /* on the main loop */
	struct mm_op *next;             /* the mm's ops held back */
};

struct rp_mm {
	int uffd;
	uid_t uid;
	pid_t pid;         /* from SO_PEERCRED or the first fault; 0 unknown */
	uint32_t id;       /* the observer's name for it */
	uint64_t features; /* granted by UFFDIO_API */
	atomic_int refs;
	atomic_int dead;   /* retired: no more work */
	int is_child;      /* adopted from a fork event */
	int budget_hit;    /* a range node was refused for the budget */
	int wake_all;      /* restored: wake every waiting thread when served */
	int accounted;     /* its table is in the gauges and the uid's account */
	uint32_t bugs;     /* faults in a row that failed for an unknown reason */
	int cannot_follow; /* a grown mapping could not be followed: let go */
	int report;        /* report mode (PROTO_HELLO_REPORT; inherited by fork
			    * children): one page per fill, read faults recorded */
	struct acct *acct; /* the uid's account, charged for all below */
	struct rp_tree *tree;
	struct rp_daemon *d;
	struct worker *w;
	ev_io io;         /* the uffd, on w's loop */
	struct park park; /* over its uid's quota: waiting to be watched again */
	int pidfd;        /* process exit watch, -1 if none */
	ev_io pidfd_io;
	ev_timer probe; /* liveness, at doubling intervals */
	ev_tstamp probe_every;
	ev_timer retry; /* pending faults and held ops */
	struct range_table ranges;
	struct follow fl; /* records of moves, events waiting for a late one */
	struct fault_streams fs;
	struct pending_fault *pending;
	uint32_t npending, cappending;
	struct mm_op *held, *held_tail;
	struct rp_mm *prev, *next; /* w->mms */
	struct loop_call serve_call, retire_call, lost_call;
	/* The session of a client's mm, told through lost (on the main loop)
	 * when the mm is let go while the client may still be there (the
	 * fallback). Main loop only. */
	void *owner;
	void (*lost)(void *owner, struct rp_mm *mm);
};

/* Most uffd messages taken per read(2) (--batch). */
#define MM_MSG_BATCH 64

/* Check that fd is a userfaultfd and do the API handshake on it, asking for
 * what we follow (fork, mremap, munmap events, thread ids). 0 and the
 * features granted, or -errno (-EBADF: not a uffd; -EINVAL: refused, e.g.
 * already done; -EPERM: no CAP_SYS_PTRACE for fork events). */
int mm_handshake(int fd, uint64_t *features);

/* A client's mm for uffd (through UFFDIO_API already), one reference held,
 * charged to a's uid (a process, a descriptor, its memory). NULL and errno
 * (EDQUOT past a budget, ENOMEM). Main loop. */
struct rp_mm *mm_new_client(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			    pid_t pid);
/* Serve mm on w from now on (takes a reference for the worker). */
void mm_start(struct rp_mm *mm, struct worker *w);
/* The session is done with mm: the worker stops serving it (its uffd is
 * closed: every fault still waiting falls back to the kernel) and the
 * caller's reference is dropped. Any thread. */
void mm_release(struct rp_mm *mm);
void mm_ref(struct rp_mm *mm);
void mm_put(struct rp_mm *mm);

/* Run op on mm's worker; op->done(op) runs on the main loop afterwards
 * with op->status: 0 or -errno (-ENOTCONN once mm is no longer served). */
void mm_submit(struct rp_mm *mm, struct mm_op *op);

/* A fork tree (one reference, the caller's), charged to a. */
struct rp_tree *mm_tree_new(struct acct *a, uint32_t id);
void mm_tree_put(struct rp_tree *t);
/* Restarts (the restart wing): an address space brought back, its uffd
 * past UFFDIO_API and its ranges registered already, in tree (a reference
 * is taken). Charged as a process with its descriptor (budgets are off
 * meanwhile: acct_enforce). One reference held; its table is filled by the
 * caller (range_table_set_root, then mm_restore_account); served from
 * mm_start. NULL on ENOMEM. */
struct rp_mm *mm_restore(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			 pid_t pid, struct rp_tree *tree, int is_child, uint32_t id);
/* The range ops of an mm's table (ctx: the mm; nodes charged to its uid),
 * and those a restart builds shared nodes with before any mm exists (ctx:
 * the account the nodes are charged to). */
const struct range_ops *mm_range_ops(void);
const struct range_ops *mm_range_ops_acct(struct tmpl_store *store);
/* Charge what a restored table holds to mm's uid and the gauges. */
void mm_restore_account(struct rp_mm *mm);

/* Every served mm of w the observer has been told of (a fork child whose
 * table still waits for its parent's events is not; on w's thread, or
 * with w paused). */
void mm_foreach_on(struct worker *w, void (*fn)(struct rp_mm *mm, void *arg), void *arg);
/* The hooks workers_start is given: retire every mm when a worker stops;
 * before it pauses (a handover, a stop with the fd store), apply the
 * events waiting for a late one as they came, so that the journal has
 * them. */
void mm_worker_stop(struct worker *w);
void mm_worker_pause(struct worker *w);

#endif
