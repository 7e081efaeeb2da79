/* notify_listen: a stand-in for systemd's end of $NOTIFY_SOCKET.
 *
 *   notify_listen PATH [TIMEOUT_S]
 *
 * Binds a unix datagram socket at PATH, then prints every assignment it
 * receives, one a line, as "<seconds since start> <sender pid> KEY=VALUE"
 * (the pid from SCM_CREDENTIALS, as systemd checks it), flushing each
 * line. Exits 0 after TIMEOUT_S seconds (default 60) or on SIGTERM. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int bind_at(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int one = 1;
	int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0 || strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	unlink(path);
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
		return -1;
	return s;
}

/* Print each line of one datagram. */
static void show(const char *buf, size_t n, double t, int pid)
{
	const char *p = buf, *end = buf + n;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (len)
			printf("%.3f %d %.*s\n", t, pid, (int)len, p);
		p += len + 1;
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	char buf[4096];
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(struct ucred))];
	} ctl;
	double timeout = argc > 2 ? atof(argv[2]) : 60.0;

	if (argc < 2) {
		fprintf(stderr, "usage: notify_listen PATH [TIMEOUT_S]\n");
		return 2;
	}
	signal(SIGTERM, on_term);
	int s = bind_at(argv[1]);
	if (s < 0) {
		fprintf(stderr, "notify_listen: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	double t0 = now_s();
	printf("0.000 %d LISTENING=%s\n", (int)getpid(), argv[1]);
	fflush(stdout);
	while (!stop) {
		double left = timeout - (now_s() - t0);
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (left <= 0)
			break;
		if (poll(&p, 1, (int)(left * 1000) + 1) <= 0)
			continue;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		ssize_t n = recvmsg(s, &mh, MSG_DONTWAIT);
		if (n < 0)
			continue;
		int pid = -1;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
				struct ucred u;
				memcpy(&u, CMSG_DATA(c), sizeof(u));
				pid = (int)u.pid;
			}
		show(buf, (size_t)n, now_s() - t0, pid);
	}
	unlink(argv[1]);
	return 0;
}
