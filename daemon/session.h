/* A client connection: handshake, templates, MAP/UNMAP, STATS, USAGE.
 * Lives on the main loop.
 *
 * A MAP or UNMAP is an mm_op run on the worker that owns the client's
 * address space; meanwhile the session reads nothing more from its socket
 * (its requests stay in order behind it) and the main loop serves everyone
 * else. The main loop never makes an ioctl on a client's uffd but the
 * handshake. */
#ifndef REFPAGED_SESSION_H
#define REFPAGED_SESSION_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "mm.h"
#include "proto.h"

struct acct;
struct rp_daemon;
struct tmpl;

struct session {
	struct rp_daemon *d;
	int fd;
	uint32_t id; /* the observer's name for it */
	pid_t pid;
	uid_t uid;
	gid_t gid;
	struct acct *acct; /* charged for the connection, its templates and handles */
	unsigned refs;     /* the list's, and an op's in flight */
	int closed;
	ev_io io;
	struct park park; /* over its uid's quota: waiting to be watched again */
	/* Its uid's descriptors wait for their closes: not read (session.c). */
	struct session *hold_prev, *hold_next;
	int held;
	int hello_held; /* held before its HELLO: its timeout starts again after */
	ev_timer hello_timer;
	struct rp_mm *mm;    /* after HELLO */
	struct tmpl **tmpls; /* handle id-1 -> template */
	uint32_t *tmpl_uses; /* how many times the handle was handed out */
	uint32_t ntmpls, captmpls;
	struct mm_op op; /* the MAP or UNMAP in flight, if busy */
	int busy;
	uint32_t op_seq, op_id; /* the request's seq, and the id its reply carries */
	uint32_t op_nreq;       /* its number among all requests (--debug-die-*) */
	struct session *prev, *next;
	/* Restarts (the restart wing): the last reply sent; the request being
	 * handled is still on the socket (peeked); the first request after a
	 * restore may be the last one again. */
	uint32_t last_seq;
	struct proto_reply last;
	uint8_t replied, peeked, replay;
};

/* Takes over fd (accepted, non-blocking), charged to the peer's uid; a
 * refusal (a budget) is sent as a status before the close. */
void session_start(struct rp_daemon *d, int fd);
/* A connection brought back by a restart, with the peer's credentials
 * from then and its id: charged without budgets, its HELLO timer running.
 * NULL on ENOMEM (fd untouched). */
struct session *session_adopt(struct rp_daemon *d, int fd, const struct ucred *cred, uint32_t id);
/* Room for n template handles, the new ones empty; 0 or -errno (the
 * uid's memory budget: -EDQUOT). */
int session_reserve_handles(struct session *s, uint32_t n);
/* A restored session's address space (its HELLO was done before). */
void session_attach_mm(struct session *s, struct rp_mm *mm);
/* Take the request being handled off the socket (see handle_one). */
void session_consume(struct session *s);
/* Close with a logged reason (NULL: orderly). */
void session_close(struct session *s, const char *why);

#endif
