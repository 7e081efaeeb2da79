/* One served address space: a client's userfaultfd (or a fork child's,
 * adopted from UFFD_EVENT_FORK), its range table, and the worker whose loop
 * reads it.
 *
 * Ownership: the worker owns the uffd and its watcher; a session that
 * created the mm holds a reference until it ends. The range table is under
 * mm->lock: the session thread registers and unregisters ranges while the
 * worker looks them up and applies uffd events. The lock is also held
 * across a fill so that a template cannot be released under a copy. */
#ifndef REFPAGED_MM_H
#define REFPAGED_MM_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "range.h"

struct acct;
struct rp_daemon;
struct tmpl;
struct worker;

/* A client and every descendant adopted from its fork events. */
struct rp_tree {
	atomic_uint procs;  /* live mms in the tree */
	atomic_uint refs;
	atomic_int warned;  /* descendant limit hit logged once */
	uint32_t snap_id;   /* in the snapshot (persist.c) */
};

struct pending_fault {
	uint64_t addr;
	uint64_t flags;
	uint32_t tid;
	uint32_t tries;
};

/* The source of a moving mremap, kept in the table after its REMAP until
 * the UNMAP the mremap sends for it (mm.c): what it spans, as that UNMAP
 * will name it, and the parts of it nobody has taken since. */
#define MM_SRC_SPANS 4
struct remap_src {
	uint64_t start, end;
	uint32_t nspans;
	struct {
		uint64_t start, end;
	} span[MM_SRC_SPANS];
};

/* Sources kept per mm: past that, the oldest record is dropped. */
#define MM_SRCS 64

struct rp_mm {
	int uffd;
	uid_t uid;
	pid_t pid;              /* from SO_PEERCRED or the first fault; 0 unknown */
	uint64_t features;      /* granted by UFFDIO_API */
	atomic_int refs;
	atomic_int dead;        /* closed or found gone: no more work */
	int is_child;           /* adopted from a fork event */
	struct acct *acct;      /* the uid's account, charged for all below */
	struct rp_tree *tree;
	int pidfd;              /* process exit watch (worker.c), -1 if none */
	ev_io pidfd_io;
	pthread_mutex_t lock;   /* ranges */
	struct range_table ranges;
	struct rp_daemon *d;
	struct worker *w;
	ev_io io;               /* on w's loop */
	/* Batches of uffd messages the worker has started to read and has
	 * finished applying: a munmap() returns as soon as its UNMAP event is
	 * read, so a MAP that finds the old range still in the table waits
	 * until every batch read before it is applied (mm_map). */
	_Atomic uint64_t ev_started, ev_done;
	/* Sources of REMAPs, oldest first (MM_SRCS slots once the first
	 * comes), under lock. Not in the snapshot: after a restart an UNMAP
	 * forgets all it names, as before REMAPs were followed this way. */
	struct remap_src *srcs;
	uint32_t nsrcs;
	/* Faults that could not be filled yet (EAGAIN, ENOMEM), retried. */
	struct pending_fault *pending;
	uint32_t npending, cappending;
	/* Liveness probe of fork children (worker.c). */
	ev_tstamp probe_at, probe_every;
	struct rp_mm *prev, *next; /* worker's list */
	struct rp_mm *add_next, *del_next; /* worker inboxes */
	/* The snapshot (persist.c): "u<snap_id>" in the fd store, and the
	 * registry of everything served, under its lock. */
	uint32_t snap_id;
	int snap_linked;
	struct rp_mm *snap_prev, *snap_next;
};

/* A client's mm for uffd (already through UFFDIO_API), one reference
 * held, charged to uid. NULL and errno (EDQUOT past a limit, ENOMEM). */
struct rp_mm *mm_new_client(struct rp_daemon *d, int uffd, uint64_t features, uid_t uid, pid_t pid);
/* A fork child of parent with uffd ufd: same uid, same tree, a copy of
 * the parent's ranges but for the sources of its moves still waiting for
 * their UNMAP (the child's address space has none there, unless the move
 * kept it: docs/design.md). NULL and errno (EDQUOT past the uid's process limit
 * or the tree's descendant limit, ENOMEM); ufd is not closed. */
struct rp_mm *mm_new_child(struct rp_mm *parent, int ufd);
void mm_ref(struct rp_mm *mm);
void mm_put(struct rp_mm *mm);

/* 1 if an UNMAP, REMAP or FORK event of mm's process is in flight
 * (the kernel has started the change but we have not read its event), 0 if
 * not or if the kernel cannot say (mm.c says how it is asked). A MAP of an
 * address that munmap or mremap has just freed must wait for that event. */
int mm_event_in_flight(struct rp_mm *mm, uint64_t addr);
/* Register [addr, addr+len) with template t (a reference is taken). 0 or -errno. */
int mm_map(struct rp_mm *mm, uint64_t addr, uint64_t len, struct tmpl *t);
/* Unregister and forget what we serve in [addr, addr+len). 0 or -errno. */
int mm_unmap(struct rp_mm *mm, uint64_t addr, uint64_t len);

/* Follow a change of mm->ranges (made under mm->lock) from n0 pieces and
 * b0 bytes in the gauges and the uid's account. */
void mm_account(struct rp_mm *mm, size_t n0, uint64_t b0);

/* Apply range bookkeeping of uffd events (called by the worker). */
void mm_on_unmap(struct rp_mm *mm, uint64_t start, uint64_t end);
void mm_on_remap(struct rp_mm *mm, uint64_t from, uint64_t to, uint64_t len);

/* A served address space brought back by a restart (restore.c): uffd is
 * past UFFDIO_API and its ranges are registered already; *tree is made if
 * NULL. Charged to uid without limits (the kernel side exists already).
 * One reference held; not served and not in the snapshot until
 * persist_mm_link. NULL on ENOMEM. */
struct rp_mm *mm_restore(struct rp_daemon *d, int uffd, uint64_t features, uid_t uid, pid_t pid,
			 struct rp_tree **tree, int is_child, uint32_t id);
/* Put back one range of a restored mm, without registering it again. 0 or
 * -errno (range_insert's). */
int mm_restore_range(struct rp_mm *mm, uint64_t start, uint64_t end, struct tmpl *t);

/* 1 if fd is a userfaultfd (its /proc/self/fd link). */
int mm_is_uffd(int fd);

/* Check that fd is a userfaultfd and do the API handshake on it. Returns
 * the features granted or -errno (-EBADF: not a uffd; -EINVAL: handshake
 * refused, e.g. already done). */
long long mm_uffd_handshake(int fd, uint64_t *features);

#endif
