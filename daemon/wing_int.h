/* The restart wing's own state, shared by persist.c, restore.c and
 * handover.c (wing.h is what main.c sees). */
#ifndef REFPAGED_WING_INT_H
#define REFPAGED_WING_INT_H

#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>

#include "journal.h"
#include "wing.h"
#include "worker.h"

struct capture;
struct rp_daemon;

/* Names in the fd store (and on a handover): "c<id>" a connection,
 * "u<id>" a served uffd, "snap" the journal's memfd, "refpaged" the
 * listener. */
#define WING_SNAP_NAME "snap"
#define WING_NAME_MAX 16

struct wing {
	struct rp_daemon *d;
	struct wing_opts o;
	int fd; /* the journal's memfd, -1 before one is open */
	struct jnl_writer w;
	int writer_open;
	/* fd store mode: every change is appended as it happens. Otherwise
	 * the journal is written only for an upgrade, from a full image. */
	int journaling;
	int restoring;                 /* restore.c replays: the observer is quiet */
	struct jnl_counters *counters; /* mapped from the memfd, once serving */
	uint64_t image_len;            /* of the last commit */
	struct capture *cap;           /* a compaction under way */
	unsigned stale_caps;           /* given up, a worker still to answer: none new meanwhile */
	struct worker compactor;       /* encodes and commits images off the main loop */
	int compactor_up;
	pthread_mutex_t cap_lock; /* a capture's done, with cap_done */
	pthread_cond_t cap_done;
	ev_timer compact_timer;
	ev_signal sighup;
	atomic_int append_failing, store_warned;
};

/* persist.c */
void wing_name(char out[WING_NAME_MAX], char kind, uint32_t id);
/* The fd store (no-ops without it; any thread). */
void wing_store(struct wing *wg, char kind, uint32_t id, int fd);
void wing_unstore(struct wing *wg, const char *name);
/* Open the journal: fd -1 a fresh memfd (put in the fd store), else go on
 * in fd after info (restored from, may be NULL: written afresh). 0 or
 * -errno. */
int wing_journal_open(struct wing *wg, int fd, const struct jnl_info *info);
/* The counters live in the memfd from now on, going on from what it has
 * (restored: 1) or from zero. */
void wing_counters_attach(struct wing *wg, int restored);
/* Write the whole state now, workers paused (an upgrade, a stop with the
 * fd store): an image of everything, committed. 0 or -errno (logged). */
int wing_sync_image(struct wing *wg);
/* The compaction timer (journaling itself starts with the restore). */
void wing_journal_start(struct wing *wg);
/* At exit, the workers stopped: a compaction under way is given up. */
void wing_compaction_drop(struct wing *wg);
/* The UPGRADE hook (handover.c). */
void wing_upgrade(struct rp_daemon *d, int reply_fd, uint32_t seq, uid_t uid);

/* restore.c: rebuild from the journal in snap_fd (-1: none) and fds. 0 or
 * -1 (strict: a journal that cannot be read at all is an error rather
 * than a fresh start). */
int wing_rebuild(struct wing *wg, struct fdset *fds, int snap_fd, int strict);

/* handover.c */
int wing_handover_receive(struct wing *wg, int sock, struct fdset *fds, int *snap_fd);
int wing_handover_commit(int sock);
void wing_handover_refuse(int sock, int status, const char *why);
int wing_exec_helper_start(int argc, char *const argv[]);
void wing_detach(struct wing *wg, int status) __attribute__((noreturn));

#endif
