/* Integration test harness: see harness.h. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define POLL_STEP_US 5000

double h_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

const char *h_client_prog(void)
{
	return RP_CLIENT_PROG_PATH;
}

const char *h_fork_prog(void)
{
	return RP_FORK_PROG_PATH;
}

const char *h_daemon_prog(void)
{
	return RP_DAEMON_PATH;
}

const char *h_ctl_prog(void)
{
	return RP_CTL_PATH;
}

/* --- environment ------------------------------------------------------ */

int h_make_uffd(void)
{
	return proto_uffd_create(NULL);
}

int h_uffd_usable(char *why, size_t n)
{
	int fd = h_make_uffd();

	if (fd >= 0) {
		close(fd);
		return 1;
	}
	snprintf(why, n,
		 "no userfaultfd for this process (/dev/userfaultfd, syscall, "
		 "user-mode-only syscall all refused: %s)",
		 strerror(-fd));
	return 0;
}

int h_find_setpriv(char *path, size_t n)
{
	static const char *const dirs[] = { "/usr/bin", "/bin", "/usr/sbin", "/sbin" };

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, n, "%s/setpriv", dirs[i]);
		if (access(path, X_OK) == 0)
			return 0;
	}
	return -1;
}

int h_can_run_as_nobody(char *why, size_t n)
{
	char sp[64];

	if (geteuid() != 0) {
		snprintf(why, n, "not root (euid %d): cannot run a client as uid %d",
			 (int)geteuid(), H_NOBODY);
		return 0;
	}
	if (h_find_setpriv(sp, sizeof(sp)) < 0) {
		snprintf(why, n, "setpriv(1) not found: cannot run a client as uid %d", H_NOBODY);
		return 0;
	}
	return 1;
}

/* --- the daemon -------------------------------------------------------- */

void h_daemon_dump_log(const struct h_daemon *d, off_t from)
{
	char buf[4096];
	int fd = open(d->log, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	fprintf(stderr, "---- refpaged log (%s, from offset %lld) ----\n", d->log, (long long)from);
	if (fd < 0) {
		fprintf(stderr, "(cannot open: %s)\n", strerror(errno));
		return;
	}
	lseek(fd, from, SEEK_SET);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)n, stderr);
	close(fd);
	fprintf(stderr, "---- end of refpaged log ----\n");
}

void h_daemon_mark_log(struct h_daemon *d)
{
	struct stat st;

	d->log_mark = stat(d->log, &st) == 0 ? st.st_size : 0;
}

int h_daemon_log_has(const struct h_daemon *d, const char *needle)
{
	const size_t max = 1 << 20;
	char *buf = malloc(max);
	int fd = open(d->log, O_RDONLY | O_CLOEXEC);
	ssize_t n = -1;

	if (buf && fd >= 0)
		n = pread(fd, buf, max - 1, d->log_mark);
	if (fd >= 0)
		close(fd);
	int found = n > 0 && (buf[n] = '\0', strstr(buf, needle) != NULL);
	free(buf);
	return found;
}

static int try_connect(const char *path)
{
	int s = h_dial(path);

	if (s < 0)
		return s;
	close(s);
	return 0;
}

/* Reap pid without blocking: 1 if it has exited (status in *st), 0 if
 * not, -1 on error. */
static int reaped(pid_t pid, int *st)
{
	pid_t r = waitpid(pid, st, WNOHANG);

	if (r == pid)
		return 1;
	return r == 0 ? 0 : -1;
}

int h_reap(pid_t pid, double timeout_s)
{
	double end = h_now() + timeout_s;
	int st;

	do {
		int r = reaped(pid, &st);
		if (r == 1)
			return st;
		if (r < 0)
			return -1;
		usleep(POLL_STEP_US);
	} while (h_now() < end);
	return -1;
}

static void exec_daemon(const struct h_daemon *d)
{
	int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

	if (log < 0 || dup2(log, STDOUT_FILENO) < 0 || dup2(log, STDERR_FILENO) < 0)
		_exit(127);
	/* Nothing of ours (or of ctest's) leaks in: the daemon's fd count
	 * is its own. */
	close_range(3, ~0u, 0);
	/* A crashed test binary must not leave daemons behind. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		_exit(127);
	const char *argv[64] = { RP_DAEMON_PATH, "--socket", d->sock, "--log-level", "debug" };
	int n = 5;
	/* Forked from a test that may have threads: no malloc from here. */
	static char env_args[512];
	const char *env = getenv("RP_ITEST_DAEMON_ARGS");
	char *save = NULL;
	if (env && strlen(env) >= sizeof(env_args)) {
		dprintf(STDERR_FILENO, "harness: $RP_ITEST_DAEMON_ARGS is too long\n");
		_exit(127);
	}
	if (env) {
		strcpy(env_args, env);
		for (char *a = strtok_r(env_args, " \t", &save); a && n < 63;
		     a = strtok_r(NULL, " \t", &save))
			argv[n++] = a;
	}
	for (int i = 0; d->extra && d->extra[i] && n < 63; i++)
		argv[n++] = d->extra[i];
	argv[n] = NULL;
	execv(RP_DAEMON_PATH, (char *const *)argv);
	_exit(127);
}

int h_daemon_respawn(struct h_daemon *d)
{
	double end = h_now() + H_DEADLINE_S;
	int st;

	fflush(NULL);
	d->pid = fork();
	if (d->pid < 0) {
		fprintf(stderr, "harness: fork: %s\n", strerror(errno));
		d->pid = 0;
		return -1;
	}
	if (d->pid == 0)
		exec_daemon(d);
	while (h_now() < end) {
		if (reaped(d->pid, &st) != 0) {
			fprintf(stderr, "harness: refpaged exited during start-up (status %#x)\n",
				st);
			d->pid = 0;
			h_daemon_dump_log(d, 0);
			return -1;
		}
		if (try_connect(d->sock) == 0)
			return 0;
		usleep(POLL_STEP_US);
	}
	fprintf(stderr, "harness: refpaged did not accept connections on %s within %.0f s\n",
		d->sock, H_DEADLINE_S);
	h_daemon_kill(d);
	h_daemon_dump_log(d, 0);
	return -1;
}

int h_daemon_start(struct h_daemon *d)
{
	return h_daemon_start_args(d, NULL);
}

int h_daemon_start_args(struct h_daemon *d, const char *const *extra)
{
	memset(d, 0, sizeof(*d));
	d->extra = extra;
	strcpy(d->dir, "/tmp/rp-itest-XXXXXX");
	if (!mkdtemp(d->dir) || chmod(d->dir, 0755) < 0) {
		fprintf(stderr, "harness: temp dir: %s\n", strerror(errno));
		d->dir[0] = '\0';
		return -1;
	}
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
	return h_daemon_respawn(d);
}

void h_daemon_kill(struct h_daemon *d)
{
	if (!d->pid)
		return;
	kill(d->pid, SIGKILL);
	if (h_reap(d->pid, H_DEADLINE_S) == -1)
		fprintf(stderr, "harness: refpaged pid %d not reaped after SIGKILL\n", (int)d->pid);
	d->pid = 0;
}

int h_daemon_alive(struct h_daemon *d)
{
	int st;

	if (!d->pid)
		return 0;
	if (reaped(d->pid, &st) == 0)
		return 1;
	fprintf(stderr, "harness: refpaged pid %d is gone (status %#x)\n", (int)d->pid, st);
	d->pid = 0;
	return 0;
}

int h_daemon_stop(struct h_daemon *d)
{
	int st;

	if (!d->pid)
		return 0;
	if (reaped(d->pid, &st) != 0) {
		fprintf(stderr, "harness: refpaged died before it was stopped (status %#x)\n", st);
		d->pid = 0;
		h_daemon_dump_log(d, 0);
		return -1;
	}
	kill(d->pid, SIGTERM);
	st = h_reap(d->pid, H_DEADLINE_S);
	if (st == -1) {
		fprintf(stderr, "harness: refpaged ignored SIGTERM for %.0f s; killing it\n",
			H_DEADLINE_S);
		h_daemon_kill(d);
		h_daemon_dump_log(d, 0);
		return -1;
	}
	d->pid = 0;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "harness: refpaged stopped with status %#x\n", st);
		h_daemon_dump_log(d, 0);
		return -1;
	}
	return 0;
}

int h_session_open(struct h_daemon *d, const char *const *extra, rp_client **c, uint8_t fill,
		   uint32_t *id)
{
	*c = NULL;
	if (h_daemon_start_args(d, extra) < 0)
		return -1;
	int r = rp_connect_opts(d->sock, RP_CONNECT_UFFD, c);
	if (r == 0 && id)
		r = rp_template_fill(*c, fill, id);
	if (r == 0)
		return 0;
	fprintf(stderr, "harness: %s: %s\n", *c ? "rp_template_fill" : "rp_connect", strerror(-r));
	rp_disconnect(*c);
	*c = NULL;
	h_daemon_destroy(d);
	return -1;
}

int h_session_close(struct h_daemon *d, rp_client *c, int ok, off_t from)
{
	if (!ok)
		h_daemon_dump_log(d, from);
	rp_disconnect(c);
	return h_daemon_destroy(d);
}

int h_test_end(struct h_daemon *d, int ok)
{
	if (!ok)
		h_daemon_dump_log(d, d->log_mark);
	return h_daemon_alive(d) ? 0 : -1;
}

int h_daemon_destroy(struct h_daemon *d)
{
	int r = h_daemon_stop(d);

	if (d->dir[0] && getenv("RP_ITEST_KEEP")) {
		fprintf(stderr, "harness: RP_ITEST_KEEP: leaving %s\n", d->dir);
		d->dir[0] = '\0';
	}
	if (d->dir[0]) {
		unlink(d->sock);
		unlink(d->log);
		rmdir(d->dir);
		d->dir[0] = '\0';
	}
	return r;
}

/* --- observing the daemon ---------------------------------------------- */

int h_count_fds(pid_t pid)
{
	char path[64];
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

void h_print_fds(pid_t pid)
{
	char path[64], link[384], target[256];
	struct dirent *e;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
		ssize_t n = readlink(link, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
	}
	closedir(dir);
}

int h_stats_read(rp_client *c, struct h_stats *s)
{
	memset(s, 0, sizeof(*s));
	int n = rp_stats(c, s->v, s->name, (int)PROTO_STATS_MAX);
	if (n < 0)
		return n;
	s->n = n;
	return 0;
}

static int stat_index(const struct h_stats *s, const char *name)
{
	for (int i = 0; i < s->n; i++)
		if (s->name[i] && !strcmp(s->name[i], name))
			return i;
	return -1;
}

uint64_t h_stat(const struct h_stats *s, const char *name)
{
	int i = stat_index(s, name);

	if (i < 0)
		fail_msg("daemon STATS has no counter named '%s'", name);
	return s->v[i];
}

static int stats_hold(const struct h_stats *s, const struct h_want *w, int n, int print)
{
	int ok = 1;

	for (int k = 0; k < n; k++) {
		int i = stat_index(s, w[k].name);
		if (i >= 0 && s->v[i] == w[k].value)
			continue;
		ok = 0;
		if (print)
			fprintf(stderr, "harness: STATS %s = %lld, want %llu\n", w[k].name,
				i < 0 ? -1LL : (long long)s->v[i], (unsigned long long)w[k].value);
	}
	return ok;
}

int h_wait_stats(rp_client *c, const struct h_want *w, int n, double timeout_s)
{
	double end = h_now() + timeout_s;
	struct h_stats s;
	int r;

	do {
		if ((r = h_stats_read(c, &s)) < 0) {
			fprintf(stderr, "harness: rp_stats: %s\n", strerror(-r));
			return -1;
		}
		if (stats_hold(&s, w, n, 0))
			return 0;
		usleep(POLL_STEP_US * 4);
	} while (h_now() < end);
	fprintf(stderr, "harness: STATS did not settle within %.0f s:\n", timeout_s);
	stats_hold(&s, w, n, 1);
	return -1;
}

int h_wait_fds(pid_t pid, int want, double timeout_s)
{
	double end = h_now() + timeout_s;
	int n;

	do {
		if ((n = h_count_fds(pid)) >= 0 && n <= want)
			return 0;
		usleep(POLL_STEP_US * 4);
	} while (h_now() < end);
	fprintf(stderr, "harness: pid %d has %d open fds after %.0f s, want at most %d:\n",
		(int)pid, n, timeout_s, want);
	h_print_fds(pid);
	return -1;
}

int h_wait_until(int (*pred)(void *), void *arg, double timeout_s)
{
	double end = h_now() + timeout_s;

	do {
		if (pred(arg))
			return 0;
		usleep(POLL_STEP_US);
	} while (h_now() < end);
	return pred(arg) ? 0 : -1;
}

/* --- programs ------------------------------------------------------------ */

/* posix_spawn, not fork: a vfork-style child shares our mm for the moment
 * before exec, so the daemon gets no fork event for it even while this
 * process has refpage ranges. */
pid_t h_spawn(const char *const argv[], int as_nobody, int *out_fd)
{
	static const char *const pre[] = { "--reuid=65534", "--regid=65534", "--clear-groups" };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	int p[2] = { -1, -1 };
	const char *v[64];
	char sp[64];
	int n = 0;
	pid_t pid;

	if (as_nobody) {
		if (h_find_setpriv(sp, sizeof(sp)) < 0)
			return -1;
		v[n++] = sp;
		for (size_t i = 0; i < sizeof(pre) / sizeof(pre[0]); i++)
			v[n++] = pre[i];
	}
	for (int i = 0; argv[i] && n < 63; i++)
		v[n++] = argv[i];
	v[n] = NULL;
	if (out_fd && pipe2(p, O_CLOEXEC) < 0)
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	if (out_fd) {
		posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
		posix_spawn_file_actions_adddup2(&fa, p[1], STDERR_FILENO);
	}
	/* Its own process group: kill(-pid) ends it and its children. */
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
	fflush(NULL);
	int e = posix_spawn(&pid, v[0], &fa, &at, (char *const *)v, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (out_fd)
		close(p[1]);
	if (e) {
		fprintf(stderr, "harness: spawn %s: %s\n", v[0], strerror(e));
		if (out_fd)
			close(p[0]);
		return -1;
	}
	if (out_fd)
		*out_fd = p[0];
	return pid;
}

int h_run(const char *const argv[], int as_nobody, double timeout_s, char *out, size_t n)
{
	double end = h_now() + timeout_s;
	size_t got = 0;
	int fd;
	pid_t pid = h_spawn(argv, as_nobody, &fd);

	if (pid < 0)
		return -1;
	for (;;) {
		double left = end - h_now();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (left <= 0)
			break;
		if (poll(&p, 1, (int)(left * 1000) + 1) <= 0)
			continue;
		char tmp[1024];
		ssize_t r = read(fd, tmp, sizeof(tmp));
		if (r <= 0)
			break;
		size_t k = (size_t)r < n - 1 - got ? (size_t)r : n - 1 - got;
		memcpy(out + got, tmp, k);
		got += k;
	}
	out[got] = '\0';
	close(fd);
	int st = h_reap(pid, end - h_now() > 1 ? end - h_now() : 1);
	if (st == -1) {
		fprintf(stderr, "harness: %s did not finish within %.0f s; killed\n", argv[0],
			timeout_s);
		kill(-pid, SIGKILL);
		h_reap(pid, H_DEADLINE_S);
	}
	return st;
}

int h_read_line(int fd, char *buf, size_t n, double timeout_s)
{
	double end = h_now() + timeout_s;
	size_t got = 0;

	while (got + 1 < n) {
		double left = end - h_now();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) <= 0)
			break;
		char ch;
		if (read(fd, &ch, 1) != 1)
			break;
		if (ch == '\n') {
			buf[got] = '\0';
			return 0;
		}
		buf[got++] = ch;
	}
	buf[got] = '\0';
	return -1;
}

/* --- raw protocol -------------------------------------------------------- */

int h_dial(const char *path)
{
	return proto_dial(path);
}

int h_send_raw(int s, const struct proto_hdr *h, const void *payload, size_t len, int fd)
{
	struct iovec iov[2] = {
		{ .iov_base = (void *)h, .iov_len = sizeof(*h) },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	long r = proto_sendmsg_fds(s, iov, len ? 2 : 1, &fd, fd >= 0 ? 1 : 0, 0);

	return r < 0 ? (int)r : 0;
}

int h_send(int s, uint16_t type, uint32_t seq, const void *payload, uint32_t len, int fd)
{
	struct proto_hdr h = { .version = PROTO_VERSION, .type = type, .len = len, .seq = seq };

	return h_send_raw(s, &h, payload, len, fd);
}

long h_recv(int s, void *buf, size_t n, double timeout_s)
{
	struct pollfd p = { .fd = s, .events = POLLIN };
	int r = poll(&p, 1, (int)(timeout_s * 1000));

	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	ssize_t got = recv(s, buf, n, MSG_DONTWAIT);
	if (got < 0)
		return errno == ECONNRESET ? 0 : -errno;
	return got;
}

int h_wait_closed(int s, double timeout_s)
{
	double end = h_now() + timeout_s;
	char buf[PROTO_MAX_MSG];

	while (h_now() < end) {
		long r = h_recv(s, buf, sizeof(buf), end - h_now());
		if (r == 0)
			return 1;
		if (r < 0 && r != -EAGAIN && r != -EINTR)
			return r == -ETIMEDOUT ? 0 : 1;
	}
	return 0;
}
