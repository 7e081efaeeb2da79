/* Starting from what a previous daemon left: named descriptors (from the
 * systemd fd store, or handed over on an upgrade) and the state snapshot.
 *
 * Everything is checked, one entry at a time: a uffd must be a uffd
 * (its /proc/self/fd link) whose address space is alive (the ESRCH probe),
 * a connection a connected AF_UNIX SOCK_SEQPACKET socket whose peer is the
 * one recorded, a template page must match its CRC. What holds is served
 * again; what does not is closed, taken out of the fd store and logged,
 * and the client it belonged to sees what it would see if the daemon had
 * died: a closed connection, or pages that read zeros. One bad entry never
 * stops the daemon from starting. */
#ifndef REFPAGED_RESTORE_H
#define REFPAGED_RESTORE_H

#include <stddef.h>

struct rp_daemon;

struct named_fd {
	int fd;          /* -1 once taken */
	char name[32];
};

struct fdset {
	struct named_fd *v;
	size_t n, cap;
	const char *from;  /* who passed them, for the log */
	int listen_owned;  /* handover: the previous daemon bound the socket path */
};

/* systemd's LISTEN_FDS/LISTEN_FDNAMES (then unset), close-on-exec. The
 * number added, or -errno. */
int fdset_from_systemd(struct fdset *set);
/* Takes fd over (closed by fdset_free if never taken). 0 or -ENOMEM. */
int fdset_add(struct fdset *set, int fd, const char *name);
/* The first fd named name, taken out of the set; -1 if none. */
int fdset_take(struct fdset *set, const char *name);
/* The first fd for which pred(fd) holds, taken out; -1 if none. */
int fdset_take_if(struct fdset *set, int (*pred)(int fd));
void fdset_free(struct fdset *set);

struct restore;

/* Rebuild the state from set and the snapshot in snap_fd (-1: none, start
 * afresh). Nothing is served yet. strict (a handover): a snapshot that
 * cannot be read at all is an error (the previous daemon goes on serving)
 * instead of a fresh start. NULL on error (logged). */
struct restore *restore_run(struct rp_daemon *d, struct fdset *set, int snap_fd, int strict);
/* Serve what was restored: every address space goes to its worker, and
 * every thread that may be waiting on a fault the previous daemon read but
 * did not answer is woken to fault again. */
void restore_finish(struct rp_daemon *d, struct restore *r);

#endif
