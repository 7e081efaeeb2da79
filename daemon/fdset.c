/* Descriptors passed in by name: see fdset.h. */
#include "fdset.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

int fdset_add(struct fdset *set, int fd, const char *name)
{
	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 64;
		struct named_fd *v = realloc(set->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		set->v = v;
		set->cap = cap;
	}
	struct named_fd *e = &set->v[set->n++];
	e->fd = fd;
	snprintf(e->name, sizeof(e->name), "%s", name);
	return 0;
}

int fdset_take(struct fdset *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0 && !strcmp(set->v[i].name, name)) {
			int fd = set->v[i].fd;
			set->v[i].fd = -1;
			return fd;
		}
	return -1;
}

int fdset_take_if(struct fdset *set, int (*pred)(int fd))
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0 && pred(set->v[i].fd)) {
			int fd = set->v[i].fd;
			set->v[i].fd = -1;
			return fd;
		}
	return -1;
}

void fdset_free(struct fdset *set)
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0)
			close(set->v[i].fd);
	free(set->v);
	set->v = NULL;
	set->n = set->cap = 0;
}

int fdset_from_systemd(struct fdset *set)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);

	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		if (fdset_add(set, fd, names && names[i] ? names[i] : "unknown") < 0) {
			close(fd);
			n = -ENOMEM;
		}
	}
	for (int i = 0; names && names[i]; i++)
		free(names[i]);
	free(names);
	return n;
}
