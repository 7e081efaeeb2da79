/* Descriptors passed in by name: systemd's (socket activation, the fd
 * store) or, on an upgrade, the previous daemon's. The listener takes its
 * socket out of the set; the restart wing takes the rest. */
#ifndef REFPAGED_FDSET_H
#define REFPAGED_FDSET_H

#include <stddef.h>

struct named_fd {
	int fd; /* -1 once taken */
	char name[32];
};

struct fdset {
	struct named_fd *v;
	size_t n, cap;
	const char *from; /* who passed them, for the log */
	int listen_owned; /* handover: the previous daemon bound the socket path */
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
/* Close what nobody took. */
void fdset_free(struct fdset *set);

#endif
