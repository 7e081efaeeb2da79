/* A client connection: handshake, templates, MAP/UNMAP, STATS. Lives on
 * the main loop. */
#ifndef REFPAGED_SESSION_H
#define REFPAGED_SESSION_H

#include <ev.h>
#include <stdint.h>
#include <sys/types.h>

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
	struct rp_mm *mm;        /* after HELLO */
	struct tmpl **tmpls;     /* handle id-1 -> template */
	uint32_t *tmpl_uses;     /* how many times the handle was handed out */
	uint32_t ntmpls, captmpls;
	struct session *prev, *next;
};

/* Takes over fd (accepted, non-blocking). */
void session_start(struct rp_daemon *d, int fd);
/* Close with a logged reason (NULL: orderly). */
void session_close(struct session *s, const char *why);

#endif
