/* A client connection: handshake, templates, MAP/UNMAP, STATS. Lives on
 * the main loop. */
#ifndef REFPAGED_SESSION_H
#define REFPAGED_SESSION_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "proto.h"

struct acct;
struct rp_daemon;
struct rp_mm;
struct tmpl;

struct session {
	struct rp_daemon *d;
	int fd;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	struct acct *acct;       /* charged for the connection and its templates */
	ev_io io;
	ev_timer hello_timer;
	/* A MAP held back while an unmap or mremap event of the client is in
	 * flight (session.c: map_held): it stays on the socket, the socket is
	 * not read, and this timer tries it again. map_since: when it was
	 * first held, 0 if none is. */
	ev_timer map_timer;
	ev_tstamp map_since;
	struct rp_mm *mm;        /* after HELLO */
	struct tmpl **tmpls;     /* handle id-1 -> template */
	uint32_t *tmpl_uses;     /* how many times the handle was handed out */
	uint32_t ntmpls, captmpls;
	struct session *prev, *next;
	/* Restarts (persist.c, restore.c): "c<snap_id>" in the fd store; the
	 * last reply sent, kept in the snapshot; the request being handled is
	 * still on the socket (peeked); the first request after a restore may
	 * be the last one again. */
	uint32_t snap_id;
	uint32_t last_seq;
	struct proto_reply last;
	uint8_t replied, peeked, replay;
};

/* Takes over fd (accepted, non-blocking). */
void session_start(struct rp_daemon *d, int fd);
/* A connection brought back by a restart (restore.c), with the peer's
 * credentials from then: charged without limits, its HELLO timer running.
 * NULL on ENOMEM (fd untouched). */
struct session *session_adopt(struct rp_daemon *d, int fd, const struct ucred *cred, uint32_t id);
/* Take the request being handled off the socket (see handle_one). */
void session_consume(struct session *s);
/* Close with a logged reason (NULL: orderly). */
void session_close(struct session *s, const char *why);

#endif
