/* Keeping what a restart would lose outside the process.
 *
 * With the fd store (--fd-store, under systemd) every connection ("c<id>")
 * and every served userfaultfd ("u<id>") is handed to the service manager
 * as it appears and taken back as it goes, and the snapshot ("snap", see
 * snapshot.h) is rewritten after every change of state, before the client
 * that asked for it hears the answer: a daemon killed at any moment leaves
 * descriptors and a snapshot that daemon/restore.c can go on from. Without
 * the store the snapshot is written only for an upgrade (handover.c), once
 * the daemon has stopped serving and nothing changes any more.
 *
 * The snapshot is built on the main thread only. Workers report changes
 * (fork children, unmap and mremap events) with persist_changed(), which
 * wakes the main loop. */
#ifndef REFPAGED_PERSIST_H
#define REFPAGED_PERSIST_H

#include <ev.h>
#include <stdint.h>

struct rp_daemon;
struct rp_mm;
struct snap_image;

struct persist_opts {
	int fdstore;      /* $NOTIFY_SOCKET's fd store holds our descriptors */
	uint32_t version; /* snapshot format written: SNAP_VERSION (tests may say otherwise) */
};

/* Names in the fd store: PERSIST_SESSION "c<id>", PERSIST_MM "u<id>". */
enum persist_kind { PERSIST_SESSION = 'c', PERSIST_MM = 'u', PERSIST_TREE = 't' };
#define PERSIST_SNAP_NAME "snap"
#define PERSIST_NAME_MAX 16

int persist_init(struct rp_daemon *d, const struct persist_opts *o);
void persist_fini(struct rp_daemon *d);
/* Write the snapshot into fd, going on from img (read from it), or, with
 * img NULL, afresh (fd -1: a new memfd, put in the fd store). 0 or -errno. */
int persist_open(struct rp_daemon *d, int fd, const struct snap_image *img);
int persist_fd(const struct rp_daemon *d);
/* From now on the counters live in the snapshot: they go on from what the
 * previous daemon counted (img: restored from, NULL: a fresh start). Main
 * thread, before serving. 0 or -errno (logged). */
int persist_counters_attach(struct rp_daemon *d, const struct snap_image *img);
int persist_fdstore(const struct rp_daemon *d);

/* A new id of a kind; persist_seen_id: ids a restore brings back. */
uint32_t persist_new_id(struct rp_daemon *d, enum persist_kind k);
void persist_seen_id(struct rp_daemon *d, enum persist_kind k, uint32_t id);
void persist_name(char out[PERSIST_NAME_MAX], enum persist_kind k, uint32_t id);

/* Every served address space is in the snapshot from link to unlink
 * (any thread). */
void persist_mm_link(struct rp_mm *mm);
void persist_mm_unlink(struct rp_mm *mm);
/* fn(mm, arg) on every served mm, under the registry lock. */
void persist_foreach_mm(struct rp_daemon *d, void (*fn)(struct rp_mm *mm, void *arg), void *arg);

/* Something in the snapshot changed (any thread). */
void persist_changed(struct rp_daemon *d);
/* Main thread, before a reply: with the fd store, the state goes to the
 * snapshot now. */
void persist_sync(struct rp_daemon *d);
/* Main thread: write the snapshot now, with or without the fd store. 0 or
 * -errno (logged). */
int persist_publish(struct rp_daemon *d);

/* Close fd, which loop watched (its watchers stopped) and which another
 * process may still hold: the fd store, or the previous daemon for a
 * moment after a handover. libev leaves a closed fd in its epoll set,
 * trusting close() to drop it, which it does not while the file is open
 * elsewhere; an event for it then makes libev rebuild its epoll set with
 * epoll_create1, which the sandbox forbids. So it goes out first. */
void persist_close_watched(struct ev_loop *loop, int fd);
/* Right after making a loop, before the sandbox: learn its epoll set. */
void persist_loop_made(struct ev_loop *loop);

/* The fd store (no-ops without it; any thread). */
void persist_store(struct rp_daemon *d, enum persist_kind k, uint32_t id, int fd);
void persist_unstore(struct rp_daemon *d, enum persist_kind k, uint32_t id);
void persist_unstore_name(struct rp_daemon *d, const char *name);

#endif
