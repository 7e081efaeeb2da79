/* The listening socket: see listener.h. */
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "fdset.h"
#include "log.h"
#include "proto.h"
#include "session.h"

/* Out of descriptors: stop accepting for a moment instead of spinning on
 * a listener that stays readable. */
#define ACCEPT_PAUSE_S 0.1

static void on_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct rp_daemon *d = t->data;

	(void)revents;
	ev_io_start(loop, &d->listen_io);
}

/* Connections accepted per loop iteration: a flood of them must not keep
 * the loop from everyone's requests (the listener stays readable: the rest
 * come in the next iteration). Each is also taken out of its uid's share
 * of the iteration (session_start). */
#define ACCEPTS_PER_WAKE 4

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
	struct rp_daemon *d = io->data;

	(void)revents;
	for (int i = 0; i < ACCEPTS_PER_WAKE; i++) {
		int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				log_err("accept: %s; pausing new connections", strerror(errno));
				ev_io_stop(loop, io);
				ev_timer_set(&d->accept_pause, ACCEPT_PAUSE_S, 0.);
				ev_timer_start(loop, &d->accept_pause);
			} else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
				log_err("accept: %s", strerror(errno));
			}
			return;
		}
		if (d->stopping) {
			close(fd);
			continue;
		}
		session_start(d, fd);
	}
}

static int is_listener(int fd)
{
	return sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 1) > 0;
}

/* The socket unit's, by its FileDescriptorName=, else whichever passed
 * descriptor is a listening socket: the others are the restart wing's. */
static int from_fds(struct rp_daemon *d, struct fdset *fds)
{
	int fd = fdset_take(fds, LISTENER_NAME);

	if (fd < 0)
		fd = fdset_take_if(fds, is_listener);
	if (fd < 0)
		return 0;
	if (!is_listener(fd)) {
		log_err("the socket named '%s' is not a listening AF_UNIX SOCK_SEQPACKET socket",
			LISTENER_NAME);
		close(fd);
		return -EINVAL;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	d->listen_fd = fd;
	d->listen_owned = fds->listen_owned;
	log_info("listening on the socket %s passed", fds->from);
	return 1;
}

/* A socket file left by a dead daemon is removed; a live one is not. */
static int clear_stale(const struct sockaddr_un *sa)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	int r = connect(s, (const struct sockaddr *)sa, sizeof(*sa));
	int e = errno;
	close(s);
	if (r == 0)
		return -EADDRINUSE;
	if (e == ECONNREFUSED && unlink(sa->sun_path) < 0)
		return -errno;
	return 0;
}

static int bind_path(struct rp_daemon *d, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("socket path too long (max %zu bytes): %s", sizeof(sa.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	if (!strcmp(path, PROTO_DEFAULT_SOCKET))
		mkdir("/run/refpaged", 0755);
	if ((r = clear_stale(&sa)) < 0) {
		log_err("%s: %s", path,
			r == -EADDRINUSE ? "another refpaged is listening" : strerror(-r));
		return r;
	}
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* Any local user may connect: access control is per uid, in the
	 * daemon, with limits. */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0666) < 0 ||
	    listen(fd, 128) < 0) {
		r = -errno;
		log_err("%s: %s", path, strerror(-r));
		close(fd);
		return r;
	}
	d->listen_fd = fd;
	d->listen_owned = 1;
	log_info("listening on %s", path);
	return 0;
}

int listener_open(struct rp_daemon *d, struct fdset *fds)
{
	int r = from_fds(d, fds);

	if (r < 0)
		return r;
	if (r == 0 &&
	    (r = bind_path(d, d->cfg.socket_path ? d->cfg.socket_path : PROTO_DEFAULT_SOCKET)) < 0)
		return r;
	ev_io_init(&d->listen_io, on_accept, d->listen_fd, EV_READ);
	d->listen_io.data = d;
	ev_io_start(d->loop, &d->listen_io);
	ev_timer_init(&d->accept_pause, on_resume, ACCEPT_PAUSE_S, 0.);
	d->accept_pause.data = d;
	return 0;
}

void listener_close(struct rp_daemon *d)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);

	if (d->listen_fd < 0)
		return;
	ev_io_stop(d->loop, &d->listen_io);
	ev_timer_stop(d->loop, &d->accept_pause);
	if (d->listen_owned && getsockname(d->listen_fd, (struct sockaddr *)&sa, &len) == 0 &&
	    len > sizeof(sa_family_t))
		unlink(sa.sun_path);
	close(d->listen_fd);
	d->listen_fd = -1;
}
