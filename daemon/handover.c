/* Upgrades in place: `refpagectl upgrade` (PROTO_UPGRADE) or SIGHUP makes
 * the daemon hand every client over to a new process running the binary at
 * the path it was started from (a new version installed there, or the same
 * one again), without a client noticing.
 *
 * Why an exec helper: the seccomp filter forbids execve, and a filter can
 * be neither lifted nor left behind by an exec: it is inherited (the new
 * binary could not even load its libraries under it) and would stack up
 * with every upgrade. So before the filter goes in, while still single
 * threaded, the daemon forks a helper that keeps nothing but a socket to
 * the daemon, CAP_SYS_PTRACE, and the binary's path and command line. Asked
 * to, it forks a child that executes `PATH ARGS... --handover 3` with a
 * fresh socket to the daemon on fd 3, and reports the child's exit status
 * if it exits. A compromised daemon can make it start the real refpaged
 * binary again, nothing else.
 *
 * The handover, between the old daemon and the new one on that socket:
 *   new -> old  HELLO     handover protocol, journal versions it reads
 *   old -> new  SNAPSHOT  the journal's memfd; the old daemon is still serving
 *   new -> old  CHECKED   it can read it; or REFUSE, and the new binary
 *                         exits with HANDOVER_EXIT_FORMAT (it cannot read
 *                         the format) or HANDOVER_EXIT_FAILED
 *   old:                  stops every worker between two faults, writes
 *                         the whole state once more: the final image
 *   old -> new  FDS...    every descriptor, named as in the fd store:
 *                         "refpaged" (listener), "c<id>", "u<id>"
 *   old -> new  END
 *   new:                  rebuilds the state, checking every descriptor
 *                         (restore.c), reading nothing from any client
 *   new -> old  COMMIT    or REFUSE, or it dies: the old daemon resumes
 *   old -> new  ACK       after MAINPID= (under systemd); the old daemon
 *                         answers the requester and exits
 *   new:                  serves, wakes every thread that may wait on a
 *                         fault the old one read, says READY=1.
 * Until ACK the new daemon has read nothing, so the old one can always
 * resume; after ACK the old one never reads again. Faults raised meanwhile
 * wait in the kernel and are answered by the new daemon. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "fdset.h"
#include "listener.h"
#include "log.h"
#include "mm.h"
#include "proto.h"
#include "session.h"
#include "wing_int.h"
#include "worker.h"

/* Exit status of a new binary that refuses a handover. */
#define HANDOVER_EXIT_FORMAT 3 /* it cannot read the journal's format */
#define HANDOVER_EXIT_FAILED 4 /* anything else: the old daemon goes on */
/* The handover socket's descriptor in the new binary. */
#define HANDOVER_FD 3

#define HO_PROTO 1u
/* Longest wait for the other side at each step: a new binary starting up
 * (under sanitizers too); while the old one is paused, a bound on the
 * pause should the new one hang. */
#define HO_TIMEOUT_S 20.0
/* Descriptors per HO_FDS message: part of the handover protocol (HO_PROTO). */
#define HO_MAX_FDS 128u

enum ho_type {
	HO_HELLO = 1,
	HO_SNAPSHOT,
	HO_CHECKED,
	HO_REFUSE,
	HO_FDS,
	HO_END,
	HO_COMMIT,
	HO_ACK,
	/* daemon <-> exec helper */
	HO_EXEC = 32,
	HO_SPAWNED,
	HO_EXITED,
};

/* Every message: this header, then len bytes. Both ends may be different
 * versions of refpaged: HELLO and REFUSE keep their layout for good. */
struct ho_hdr {
	uint32_t type;
	uint32_t len;
};

struct ho_hello {
	uint32_t proto;    /* HO_PROTO */
	uint32_t snap_min; /* journal versions the sender reads */
	uint32_t snap_max;
	int32_t pid;
};

struct ho_refuse {
	int32_t status; /* -errno for the requester */
	uint32_t reserved;
	char why[120];
};

struct ho_fds {
	uint32_t n; /* names, and descriptors attached in this order */
	uint32_t reserved;
	char names[HO_MAX_FDS][WING_NAME_MAX];
};

struct ho_end {
	uint32_t total;        /* descriptors sent in all */
	uint32_t listen_owned; /* the socket path is ours to unlink at exit */
};

/* COMMIT {pid}, SPAWNED {pid, errno}, EXITED {pid, wait status} */
struct ho_pid {
	int32_t pid;
	int32_t val;
};

#define HO_MAX_MSG (sizeof(struct ho_hdr) + sizeof(struct ho_fds))

/* --- messages ---------------------------------------------------------------- */

/* deadline < 0: wait for ever (the helper). */
static int wait_for(int fd, short events, double deadline)
{
	for (;;) {
		int ms = -1;
		if (deadline >= 0) {
			double left = deadline - rp_now();
			if (left <= 0)
				return -ETIMEDOUT;
			ms = (int)(left * 1000) + 1;
		}
		struct pollfd p = { .fd = fd, .events = events };
		int r = poll(&p, 1, ms);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int ho_send(int sock, uint32_t type, const void *p, uint32_t len, const int *fds,
		   unsigned nfds, double deadline)
{
	struct ho_hdr h = { type, len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)p, len } };

	for (;;) {
		long r = proto_sendmsg_fds(sock, iov, len ? 2 : 1, fds, nfds, MSG_DONTWAIT);
		if (r >= 0)
			return 0;
		if (r != -EAGAIN)
			return (int)r;
		if ((r = wait_for(sock, POLLOUT, deadline)) < 0)
			return (int)r;
	}
}

static void close_all(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

/* One message: its payload length, or -ECONNRESET (the other end is gone),
 * -ETIMEDOUT, -EBADMSG. Up to maxfds descriptors go to fds (*nfds). buf
 * and fds may be NULL when cap and maxfds are 0 (said again at the copies:
 * gcc -O3 warns of a constant-propagated NULL the size checks rule out). */
static long ho_recv(int sock, uint32_t *type, void *buf, size_t cap, int *fds, unsigned maxfds,
		    unsigned *nfds, double deadline)
{
	_Alignas(8) uint8_t raw[HO_MAX_MSG];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(HO_MAX_FDS * sizeof(int))];
	} cm;
	struct iovec iov = { raw, sizeof(raw) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	ssize_t n;
	int got[HO_MAX_FDS];
	unsigned ngot = 0;

	*nfds = 0;
	while ((n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)) < 0) {
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		int r = wait_for(sock, POLLIN, deadline);
		if (r < 0)
			return r;
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0;
		     i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && ngot < HO_MAX_FDS; i++)
			memcpy(&got[ngot++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
	}
	struct ho_hdr h = { 0, UINT32_MAX };
	if (n == 0 && !ngot)
		return -ECONNRESET;
	if ((size_t)n >= sizeof(h))
		memcpy(&h, raw, sizeof(h));
	if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || ngot > maxfds ||
	    h.len != (size_t)n - sizeof(h) || h.len > cap) {
		close_all(got, ngot);
		return -EBADMSG;
	}
	if (h.len && buf)
		memcpy(buf, raw + sizeof(h), h.len);
	if (ngot && fds)
		memcpy(fds, got, ngot * sizeof(int));
	*nfds = ngot;
	*type = h.type;
	return h.len;
}

/* --- the exec helper --------------------------------------------------------- */

static struct {
	int sock; /* to the helper; -1: none, upgrades refused */
	char path[PATH_MAX];
} helper = { .sock = -1 };

/* Non-root (User= with AmbientCapabilities=): capabilities survive execve
 * only in the ambient set, which the daemon cleared. Root gets its
 * bounding set (CAP_SYS_PTRACE only by now) back anyway. */
static void keep_ptrace_across_exec(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct c[2];
	const uint32_t bit = CAP_TO_MASK(CAP_SYS_PTRACE);
	const int i = CAP_TO_INDEX(CAP_SYS_PTRACE);

	if (syscall(SYS_capget, &h, c) < 0 || !(c[i].permitted & bit))
		return;
	if (!(c[i].inheritable & bit)) {
		c[i].inheritable |= bit;
		syscall(SYS_capset, &h, c);
	}
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_PTRACE, 0, 0);
}

static void helper_exec(int fd, char *const argv[])
{
	if (fd == HANDOVER_FD ? fcntl(fd, F_SETFD, 0) < 0 : dup2(fd, HANDOVER_FD) < 0)
		_exit(127);
	close_range(HANDOVER_FD + 1, ~0u, 0);
	if (getenv("WATCHDOG_USEC")) {
		char pid[16];
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		setenv("WATCHDOG_PID", pid, 1);
	}
	keep_ptrace_across_exec();
	execv(helper.path, argv);
	_exit(127);
}

/* One request: a child running the binary with the handover socket, whose
 * end goes back to the daemon; then its exit status, if it exits. */
static void helper_spawn(int sock, char *const argv[])
{
	struct ho_pid m = { 0, 0 };
	int sp[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		m.val = errno;
		ho_send(sock, HO_SPAWNED, &m, sizeof(m), NULL, 0, -1);
		return;
	}
	pid_t pid = fork();
	if (pid == 0)
		helper_exec(sp[1], argv);
	close(sp[1]);
	m.pid = pid;
	m.val = pid < 0 ? errno : 0;
	ho_send(sock, HO_SPAWNED, &m, sizeof(m), pid > 0 ? &sp[0] : NULL, pid > 0, -1);
	close(sp[0]);
	if (pid < 0)
		return;
	/* A child that took over runs until the old daemon exits, which ends
	 * this helper (PR_SET_PDEATHSIG); one that refused is reaped here. */
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return;
	m.val = st;
	ho_send(sock, HO_EXITED, &m, sizeof(m), NULL, 0, -1);
}

static void __attribute__((noreturn)) helper_main(int sock, pid_t parent, char *const argv[])
{
	static const int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGPIPE };
	sigset_t none;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	prctl(PR_SET_NAME, "refpaged-exec");
	/* Nothing of the daemon's but stdio: no client, no listener. */
	if (sock != HANDOVER_FD && dup2(sock, HANDOVER_FD) < 0)
		_exit(1);
	sock = HANDOVER_FD;
	close_range(HANDOVER_FD + 1, ~0u, 0);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (;;) {
		uint32_t type;
		unsigned nfds;
		if (ho_recv(sock, &type, NULL, 0, NULL, 0, &nfds, -1) < 0)
			_exit(0); /* the daemon is gone */
		if (type == HO_EXEC)
			helper_spawn(sock, argv);
	}
}

/* The command line again, without a previous --handover, plus ours. */
static char **new_argv(int argc, char *const argv[])
{
	char **v = calloc((size_t)argc + 3, sizeof(*v));
	int n = 0;

	if (!v)
		return NULL;
	v[n++] = helper.path;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--handover")) {
			i++;
			continue;
		}
		if (!strncmp(argv[i], "--handover=", 11))
			continue;
		v[n++] = argv[i];
	}
	v[n++] = "--handover";
	v[n++] = "3";
	v[n] = NULL;
	return v;
}

int wing_exec_helper_start(int argc, char *const argv[])
{
	ssize_t n = readlink("/proc/self/exe", helper.path, sizeof(helper.path) - 1);
	int sp[2];

	if (n <= 0) {
		log_warn("upgrades disabled: cannot find our binary: %s", strerror(errno));
		return -errno;
	}
	helper.path[n] = '\0';
	/* Replaced since we started: the path is where a new version is. */
	char *del = strstr(helper.path, " (deleted)");
	if (del && !del[10])
		*del = '\0';
	char **v = new_argv(argc, argv);
	if (!v || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		log_warn("upgrades disabled: %s", strerror(v ? errno : ENOMEM));
		free(v);
		return -ENOMEM;
	}
	pid_t parent = getpid(), pid = fork();
	if (pid == 0) {
		close(sp[0]);
		helper_main(sp[1], parent, v);
	}
	free(v);
	close(sp[1]);
	if (pid < 0) {
		log_warn("upgrades disabled: cannot fork the exec helper: %s", strerror(errno));
		close(sp[0]);
		return -errno;
	}
	helper.sock = sp[0];
	log_debug("exec helper pid %d: upgrades execute %s", (int)pid, helper.path);
	return 0;
}

/* --- the old daemon ------------------------------------------------------------ */

struct up {
	int sock; /* to the new binary */
	pid_t pid;
	double paused; /* when the workers stopped, 0: not yet */
	int systemd;   /* MAINPID= was sent: no way back */
	char why[200];
};

static int spawn(struct up *u, double deadline)
{
	int r = ho_send(helper.sock, HO_EXEC, NULL, 0, NULL, 0, deadline);

	while (r == 0) {
		struct ho_pid m;
		uint32_t type;
		unsigned n;
		int fd;
		long len = ho_recv(helper.sock, &type, &m, sizeof(m), &fd, 1, &n, deadline);
		if (len < 0)
			return (int)len;
		if (type == HO_SPAWNED && len == sizeof(m) && (m.val || n == 1)) {
			if (m.val)
				return -m.val;
			u->sock = fd;
			u->pid = m.pid;
			return 0;
		}
		/* A late EXITED of an earlier attempt. */
		close_all(&fd, n);
	}
	return r;
}

/* How the new binary exited, when it did (from the helper). */
static void exit_status(struct up *u)
{
	double deadline = rp_now() + 2.0;

	for (;;) {
		struct ho_pid m;
		uint32_t type;
		unsigned n;
		int fd;
		long len = ho_recv(helper.sock, &type, &m, sizeof(m), &fd, 1, &n, deadline);
		if (len < 0)
			return;
		close_all(&fd, n);
		if (type == HO_EXITED && len == sizeof(m) && m.pid == u->pid) {
			size_t l = strlen(u->why);
			if (WIFEXITED(m.val))
				snprintf(u->why + l, sizeof(u->why) - l, " (exit status %d)",
					 WEXITSTATUS(m.val));
			else if (WIFSIGNALED(m.val))
				snprintf(u->why + l, sizeof(u->why) - l, " (killed by signal %d)",
					 WTERMSIG(m.val));
			return;
		}
	}
}

/* The new binary's next message must be want: its length, or the status
 * for the requester (its REFUSE, else -ECANCELED), with u->why. */
static long expect(struct up *u, uint32_t want, void *buf, size_t cap, double deadline)
{
	union {
		struct ho_refuse refuse;
		uint8_t any[sizeof(struct ho_refuse) + sizeof(struct ho_hello)];
	} m;
	uint32_t type;
	unsigned n;
	long len = ho_recv(u->sock, &type, &m, sizeof(m), NULL, 0, &n, deadline);

	if (len >= 0 && type == want && (size_t)len <= cap) {
		if (len)
			memcpy(buf, &m, (size_t)len);
		return len;
	}
	if (len == sizeof(m.refuse) && type == HO_REFUSE) {
		m.refuse.why[sizeof(m.refuse.why) - 1] = '\0';
		snprintf(u->why, sizeof(u->why), "the new binary refused: %s", m.refuse.why);
		exit_status(u);
		return m.refuse.status < 0 ? m.refuse.status : -ECANCELED;
	}
	snprintf(u->why, sizeof(u->why), "the new binary %s",
		 len == -ETIMEDOUT    ? "did not answer in time"
		 : len == -ECONNRESET ? "exited"
				      : "sent something unexpected");
	if (len == -ECONNRESET)
		exit_status(u);
	return -ECANCELED;
}

struct sendset {
	int sock;
	double deadline;
	int err;
	unsigned total;
	int fds[HO_MAX_FDS];
	struct ho_fds msg;
};

static void ss_flush(struct sendset *s)
{
	if (s->err || !s->msg.n)
		return;
	uint32_t len = (uint32_t)(offsetof(struct ho_fds, names) + s->msg.n * WING_NAME_MAX);
	s->err = ho_send(s->sock, HO_FDS, &s->msg, len, s->fds, s->msg.n, s->deadline);
	s->msg.n = 0;
}

static void ss_add(struct sendset *s, const char *name, int fd)
{
	snprintf(s->msg.names[s->msg.n], WING_NAME_MAX, "%s", name);
	s->fds[s->msg.n++] = fd;
	s->total++;
	if (s->msg.n == HO_MAX_FDS)
		ss_flush(s);
}

static void ss_mm(struct rp_mm *mm, void *arg)
{
	char name[WING_NAME_MAX];

	if (mm->uffd < 0 || atomic_load(&mm->dead))
		return;
	wing_name(name, 'u', mm->id);
	ss_add(arg, name, mm->uffd);
}

/* Every descriptor the snapshot names, and the listener. */
static int send_fds(struct rp_daemon *d, struct up *u, double deadline)
{
	struct sendset *s = calloc(1, sizeof(*s));
	char name[WING_NAME_MAX];

	if (!s)
		return -ENOMEM;
	s->sock = u->sock;
	s->deadline = deadline;
	ss_add(s, LISTENER_NAME, d->listen_fd);
	for (struct session *x = d->sessions; x; x = x->next) {
		wing_name(name, 'c', x->id);
		ss_add(s, name, x->fd);
	}
	/* The workers are paused: their lists hold still. */
	for (unsigned i = 0; i < d->workers.n; i++)
		mm_foreach_on(&d->workers.v[i], ss_mm, s);
	ss_flush(s);
	struct ho_end end = { s->total, (uint32_t)d->listen_owned };
	int r = s->err ? s->err : ho_send(u->sock, HO_END, &end, sizeof(end), NULL, 0, deadline);
	free(s);
	return r;
}

/* The paused part: from here until COMMIT (or a failure) nobody reads a
 * client's uffd or socket. 0, or the status for the requester. */
static int take_over(struct rp_daemon *d, struct up *u)
{
	double end = rp_now() + HO_TIMEOUT_S;
	struct ho_pid commit;
	long r;
	int status = -ECANCELED;

	u->paused = rp_now();
	workers_pause(&d->workers);
	if ((r = wing_sync_image(d->wing)) < 0)
		snprintf(u->why, sizeof(u->why), "cannot write the journal: %s", strerror((int)-r));
	else if ((r = send_fds(d, u, end)) < 0)
		snprintf(u->why, sizeof(u->why), "cannot pass the descriptors: %s",
			 strerror((int)-r));
	else if ((r = expect(u, HO_COMMIT, &commit, sizeof(commit), end)) < 0)
		status = (int)r;
	else {
		/* Before ACK: the new daemon's first word to systemd must find
		 * it the main process already. */
		if (getenv("NOTIFY_SOCKET"))
			u->systemd = sd_notifyf(0, "MAINPID=%d", (int)u->pid) > 0;
		if ((r = ho_send(u->sock, HO_ACK, NULL, 0, NULL, 0, end)) < 0)
			snprintf(u->why, sizeof(u->why),
				 "the new binary went away at the last step");
	}
	if (r >= 0)
		return 0;
	if (u->systemd) {
		/* systemd now takes the new one, dead, for the service: it
		 * restarts it from the fd store, which still has everything. */
		log_err("upgrade: %s after MAINPID=%d; leaving it to systemd", u->why, (int)u->pid);
		_exit(HANDOVER_EXIT_FAILED);
	}
	workers_resume(&d->workers);
	return status;
}

static int upgrade(struct rp_daemon *d, struct up *u)
{
	double end = rp_now() + HO_TIMEOUT_S;
	struct ho_hello hello;
	long r;

	if ((r = spawn(u, end)) < 0) {
		snprintf(u->why, sizeof(u->why), "cannot start the new binary: %s",
			 strerror((int)-r));
		return -ECANCELED;
	}
	if ((r = expect(u, HO_HELLO, &hello, sizeof(hello), end)) < 0)
		return (int)r;
	log_info("upgrade: %s started as pid %d (handover protocol %u, reads snapshot versions "
		 "%u to %u)",
		 helper.path, (int)u->pid, hello.proto, hello.snap_min, hello.snap_max);
	/* The new binary checks the journal's format while we go on serving
	 * (without the fd store there is none yet: an empty one is enough). */
	struct wing *wg = d->wing;
	if ((!wg->writer_open && (r = wing_journal_open(wg, -1, NULL)) < 0) ||
	    (r = ho_send(u->sock, HO_SNAPSHOT, NULL, 0, &wg->fd, 1, end)) < 0) {
		snprintf(u->why, sizeof(u->why), "cannot pass the journal: %s", strerror((int)-r));
		return -ECANCELED;
	}
	if ((r = expect(u, HO_CHECKED, NULL, 0, end)) < 0)
		return (int)r;
	return take_over(d, u);
}

static void answer(int fd, uint32_t seq, int32_t status, pid_t pid)
{
	struct proto_reply r = { .status = status, .id = (uint32_t)pid };

	if (fd >= 0)
		proto_send(fd, PROTO_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
}

void wing_upgrade(struct rp_daemon *d, int reply_fd, uint32_t seq, uid_t uid)
{
	struct up u = { .sock = -1 };
	double t0 = rp_now();
	int status;

	if (uid != 0 && uid != geteuid()) {
		log_warn("upgrade asked by uid %d: refused (root and uid %d only)", (int)uid,
			 (int)geteuid());
		answer(reply_fd, seq, -EPERM, 0);
		return;
	}
	if (helper.sock < 0) {
		log_warn("upgrade: no exec helper; restart the daemon to upgrade");
		answer(reply_fd, seq, -EOPNOTSUPP, 0);
		return;
	}
	log_notice("upgrade: %s", reply_fd >= 0 ? "asked by a client" : "SIGHUP");
	status = upgrade(d, &u);
	if (status == 0) {
		double t = rp_now();
		log_notice(
			"upgrade: pid %d serves now; clients waited at most %.1f ms (%.1f ms in all)",
			(int)u.pid, (t - u.paused) * 1e3, (t - t0) * 1e3);
		answer(reply_fd, seq, 0, u.pid);
		_exit(0);
	}
	if (u.sock >= 0)
		close(u.sock);
	log_warn("upgrade failed: %s; still serving%s", u.why,
		 u.paused ? " (clients waited meanwhile)" : "");
	answer(reply_fd, seq, status, 0);
}

/* --- the new daemon ------------------------------------------------------------ */

void wing_handover_refuse(int sock, int status, const char *why)
{
	struct ho_refuse r = { .status = status };

	snprintf(r.why, sizeof(r.why), "%s", why);
	ho_send(sock, HO_REFUSE, &r, sizeof(r), NULL, 0, rp_now() + HO_TIMEOUT_S);
}

/* Check the journal the old daemon passed: can we read it at all? */
static void check_journal(int sock, int fd)
{
	static const struct jnl_callbacks none;
	struct jnl_info info;
	enum jnl_err e = jnl_read(fd, &none, NULL, &info);
	uint32_t version = info.version;
	char why[120];

	jnl_info_free(&info);
	if (e == JNL_OK)
		return;
	if (e == JNL_EVERSION)
		snprintf(why, sizeof(why), "the journal is format version %u; this binary reads %u",
			 version, JNL_VERSION);
	else
		snprintf(why, sizeof(why), "the journal is unusable: %s", jnl_err_str(e));
	log_err("handover: %s: refusing; the running daemon goes on serving", why);
	wing_handover_refuse(sock, e == JNL_EVERSION ? -EPROTONOSUPPORT : -ECANCELED, why);
	exit(e == JNL_EVERSION ? HANDOVER_EXIT_FORMAT : HANDOVER_EXIT_FAILED);
}

static int receive_fds(int sock, struct fdset *set)
{
	struct ho_fds *m = malloc(sizeof(*m));
	int fds[HO_MAX_FDS];
	unsigned total = 0;

	while (m) {
		uint32_t type;
		unsigned n;
		long len = ho_recv(sock, &type, m, sizeof(*m), fds, HO_MAX_FDS, &n,
				   rp_now() + HO_TIMEOUT_S);
		if (len >= 0 && type == HO_END && len == sizeof(struct ho_end) && !n) {
			const struct ho_end *e = (const void *)m;
			set->listen_owned = (int)e->listen_owned;
			int ok = e->total == total;
			free(m);
			return ok ? 0 : -EBADMSG;
		}
		if (len < 0 || type != HO_FDS || m->n != n ||
		    (size_t)len != offsetof(struct ho_fds, names) + (size_t)n * WING_NAME_MAX) {
			close_all(fds, n);
			break;
		}
		for (unsigned i = 0; i < n; i++) {
			m->names[i][WING_NAME_MAX - 1] = '\0';
			if (fdset_add(set, fds[i], m->names[i]) < 0)
				close(fds[i]);
		}
		total += n;
	}
	free(m);
	return -EBADMSG;
}

int wing_handover_receive(struct wing *wg, int sock, struct fdset *set, int *snap_fd)
{
	struct ho_hello h = { HO_PROTO, JNL_VERSION, JNL_VERSION, (int32_t)getpid() };
	double end = rp_now() + HO_TIMEOUT_S;
	uint32_t type;
	unsigned n = 0;
	int fd = -1;

	if (ho_send(sock, HO_HELLO, &h, sizeof(h), NULL, 0, end) < 0 ||
	    ho_recv(sock, &type, NULL, 0, &fd, 1, &n, end) < 0 || type != HO_SNAPSHOT || n != 1) {
		close_all(&fd, n);
		log_err("handover: the running daemon did not pass its journal");
		return -1;
	}
	(void)wg;
	check_journal(sock, fd);
	if (ho_send(sock, HO_CHECKED, NULL, 0, NULL, 0, end) < 0 || receive_fds(sock, set) < 0) {
		close(fd);
		log_err("handover: the running daemon did not pass its descriptors");
		return -1;
	}
	*snap_fd = fd;
	return 0;
}

int wing_handover_commit(int sock)
{
	struct ho_pid c = { (int32_t)getpid(), 0 };
	uint32_t type;
	unsigned n;
	double end = rp_now() + HO_TIMEOUT_S;

	if (ho_send(sock, HO_COMMIT, &c, sizeof(c), NULL, 0, end) < 0 ||
	    ho_recv(sock, &type, NULL, 0, NULL, 0, &n, end) < 0 || type != HO_ACK) {
		log_err("handover: the running daemon did not let go; exiting without serving");
		return -1;
	}
	close(sock);
	return 0;
}

/* --- stopping with the fd store ---------------------------------------------------- */

void wing_detach(struct wing *wg, int status)
{
	workers_pause(&wg->d->workers);
	wing_sync_image(wg);
	log_notice("stopped; the fd store keeps every client for the next start");
	_exit(status);
}
