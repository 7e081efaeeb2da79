/* The listening socket: from systemd (sd_listen_fds) or bound ourselves. */
#ifndef REFPAGED_LISTENER_H
#define REFPAGED_LISTENER_H

struct rp_daemon;

/* 0 or -errno (logged). */
int listener_open(struct rp_daemon *d);
void listener_close(struct rp_daemon *d);

#endif
