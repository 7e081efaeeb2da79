/* Upgrades in place: `refpagectl upgrade` (PROTO_UPGRADE) or SIGHUP makes
 * the daemon hand every client over to a new process running the binary at
 * the path it was started from (a new version installed there, or the same
 * one again), without a client noticing.
 *
 * Why an exec helper: the seccomp filter forbids execve, and a filter can
 * be neither lifted nor left behind by an exec: it is inherited (the new
 * binary could not even load its libraries under it) and would stack up
 * with every upgrade. So before the filter goes in, while still single
 * threaded, the daemon forks a helper that keeps nothing but a socket to
 * the daemon, CAP_SYS_PTRACE, and the binary's path and command line. Asked
 * to, it forks a child that executes `PATH ARGS... --handover 3` with a
 * fresh socket to the daemon on fd 3, and reports the child's exit status
 * if it exits. A compromised daemon can make it start the real refpaged
 * binary again, nothing else.
 *
 * The handover, between the old daemon and the new one on that socket:
 *   new -> old  HELLO     handover protocol, snapshot versions it reads
 *   old -> new  SNAPSHOT  the snapshot memfd, just written; the old daemon
 *                         is still serving
 *   new -> old  CHECKED   it can read it; or REFUSE, and the new binary
 *                         exits with HANDOVER_EXIT_FORMAT (it cannot read
 *                         the format) or HANDOVER_EXIT_FAILED
 *   old:                  stops every worker between two faults, writes
 *                         the snapshot once more: the final state
 *   old -> new  FDS...    every descriptor, named as in the fd store:
 *                         "refpaged" (listener), "c<id>", "u<id>"
 *   old -> new  END
 *   new:                  rebuilds the state, checking every descriptor
 *                         (restore.c), reading nothing from any client
 *   new -> old  COMMIT    or REFUSE, or it dies: the old daemon resumes
 *   old -> new  ACK       after MAINPID= (under systemd); the old daemon
 *                         answers the requester and exits
 *   new:                  serves, wakes every thread that may wait on a
 *                         fault the old one read, says READY=1.
 * Until ACK the new daemon has read nothing, so the old one can always
 * resume; after ACK the old one never reads again. Faults raised meanwhile
 * wait in the kernel and are answered by the new daemon. */
#ifndef REFPAGED_HANDOVER_H
#define REFPAGED_HANDOVER_H

#include <stdint.h>
#include <sys/types.h>

struct rp_daemon;
struct fdset;

/* Exit status of a new binary that refuses a handover. */
#define HANDOVER_EXIT_FORMAT 3 /* it cannot read the snapshot's format */
#define HANDOVER_EXIT_FAILED 4 /* anything else: the old daemon goes on */
/* The handover socket's descriptor in the new binary. */
#define HANDOVER_FD 3

/* Fork the exec helper (single threaded, before the sandbox). argv is
 * the command line the daemon was started with. 0, or -errno (logged:
 * upgrades are then refused with -EOPNOTSUPP). */
int handover_helper_start(int argc, char *const argv[]);

/* An upgrade, asked for by a client on reply_fd (seq, uid) or by SIGHUP
 * (reply_fd -1, uid 0). Main thread; blocks until done (bounded). On
 * success the requester is answered and the process exits. */
void handover_request(struct rp_daemon *d, int reply_fd, uint32_t seq, uid_t uid);

/* The new binary: receive the snapshot and the descriptors from the old
 * daemon on sock. 0, or exits (refusing) when the snapshot cannot be read. */
int handover_receive(int sock, struct fdset *set, int *snap_fd);
/* The new binary: tell the old daemon we are ready to take over, and wait
 * for its go. 0, or -1: the old daemon went on; we must exit at once. */
int handover_commit(int sock);
/* The new binary gives up before COMMIT. */
void handover_refuse(int sock, int status, const char *why);

/* SIGTERM with the fd store: stop between two faults, write the final
 * snapshot, and exit without closing anything of a client's: the fd store
 * keeps them for the next start (systemctl restart), or releases them
 * (systemctl stop), and their pages fall back to anonymous memory. */
void handover_detach(struct rp_daemon *d, int status) __attribute__((noreturn));

#endif
