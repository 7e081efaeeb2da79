/* The restart wing: what lets a restarted or upgraded refpaged go on
 * serving the same clients without them noticing (docs/operations.md).
 *
 *   persist.c   subscribes to the core's observer (observer.h) and keeps
 *               the state journal (journal.h) in a memfd; with the fd
 *               store, every client's descriptors go to systemd too
 *   restore.c   rebuilds the state from a journal and named descriptors
 *   handover.c  in-place upgrades: the exec helper, and the handover of
 *               every descriptor to the new binary
 *
 * The core knows nothing of it: main.c calls these, and the core only
 * sees an observer, an UPGRADE hook and template hooks. Built without it
 * (cmake -DRP_RESTART_WING=OFF), refpaged serves the same; a restart then
 * loses its clients (their pages fall back to zeros). */
#ifndef REFPAGED_WING_H
#define REFPAGED_WING_H

#include <stdint.h>

struct fdset;
struct rp_daemon;
struct tmpl_ops;

struct wing_opts {
	int fdstore;      /* --fd-store: systemd keeps our descriptors and the journal */
	int handover_fd;  /* --handover FD: the previous daemon hands over on it (0: none) */
	uint32_t version; /* journal format written (0: the current; tests write others) */
};

/* Before anything serves: take what a previous daemon left (its
 * descriptors from systemd, or from the daemon handing over) into fds, and
 * subscribe (d->obs, d->upgrade, the template hooks). argv is the command
 * line as it came (the exec helper's). 0 or -1 (logged; on a handover the
 * previous daemon goes on serving). */
int wing_init(struct rp_daemon *d, const struct wing_opts *o, struct tmpl_ops *tops, int argc,
	      char **argv, struct fdset *fds);
/* Fork the exec helper (single threaded, before the sandbox). */
void wing_helper_start(struct rp_daemon *d);
/* With the workers running, before the sandbox: rebuild the state from
 * the journal and the descriptors left in fds, and serve it; on an
 * upgrade, take over from the old daemon. 0 or -1 (logged). */
int wing_restore(struct rp_daemon *d, struct fdset *fds);
/* The journal's memfd (the sandbox lets us write it), -1 if none. */
int wing_journal_fd(const struct rp_daemon *d);
/* Shutting down: with the fd store, leave every client to it (does not
 * return); else nothing. */
void wing_stop(struct rp_daemon *d, int status);
/* Start-up failed before serving: on a handover, tell the old daemon
 * (which goes on) and exit. */
void wing_failed(struct rp_daemon *d, const char *why);
void wing_fini(struct rp_daemon *d);

#endif
