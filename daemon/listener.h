/* The listening socket: passed in (by systemd, or by the previous daemon
 * on an upgrade) or bound ourselves. */
#ifndef REFPAGED_LISTENER_H
#define REFPAGED_LISTENER_H

struct rp_daemon;
struct fdset;

/* refpaged.socket's FileDescriptorName=, and the name on a handover. */
#define LISTENER_NAME "refpaged"

/* A listening socket passed in fds (taken out of it), else the socket path
 * bound: --socket, or the default. 0 or -errno (logged). */
int listener_open(struct rp_daemon *d, struct fdset *fds);
void listener_close(struct rp_daemon *d);

#endif
