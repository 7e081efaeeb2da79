/* systemd's end of $NOTIFY_SOCKET, for programs that stand in for it
 * (tests/integration/test_restart.c, perf/map-latency.c): one datagram
 * with its descriptors and sender, and what its text asks. Header only,
 * libc only. */
#ifndef RP_SDNOTIFY_H
#define RP_SDNOTIFY_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The most descriptors taken from one datagram. */
#define SDN_MAX_FDS 16

/* What systemd does with a notification: FDSTORE=1 (each fd named
 * FDNAME=, "stored" without), FDSTOREREMOVE=1 (every fd of that name),
 * READY=1; the rest (STATUS=, WATCHDOG=1) is dropped. */
struct sdn_msg {
	char name[32];
	int fdstore, remove, ready;
};

/* Parse msg (modified) into m. */
static inline void sdn_parse(char *msg, struct sdn_msg *m)
{
	char *save = NULL;

	*m = (struct sdn_msg){ .name = "stored" };
	for (char *l = strtok_r(msg, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (!strcmp(l, "FDSTORE=1"))
			m->fdstore = 1;
		else if (!strcmp(l, "FDSTOREREMOVE=1"))
			m->remove = 1;
		else if (!strncmp(l, "FDNAME=", 7))
			snprintf(m->name, sizeof(m->name), "%s", l + 7);
		else if (!strcmp(l, "READY=1"))
			m->ready = 1;
	}
}

/* One datagram from sock, without waiting: its text in buf (n bytes, NUL
 * terminated), its descriptors (close-on-exec, at most SDN_MAX_FDS) in
 * fds, its sender's pid in *pid (-1 without SCM_CREDENTIALS). The number
 * of descriptors, or -1 when there was nothing to read. */
static inline int sdn_recv(int sock, char *buf, size_t n, int *fds, pid_t *pid)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * SDN_MAX_FDS) + CMSG_SPACE(sizeof(struct ucred))];
	} cm;
	struct iovec iov = { buf, n - 1 };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cm.b,
			     .msg_controllen = sizeof(cm.b) };
	ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	int nfds = 0;

	*pid = -1;
	if (r < 0)
		return -1;
	buf[r] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET)
			continue;
		if (c->cmsg_type == SCM_RIGHTS) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k && nfds < SDN_MAX_FDS; i++)
				memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		} else if (c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred u;
			memcpy(&u, CMSG_DATA(c), sizeof(u));
			*pid = u.pid;
		}
	}
	return nfds;
}

#endif
