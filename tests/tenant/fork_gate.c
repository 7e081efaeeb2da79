/* The fork-event gate: the facts docs/security.md ("The fork-event gate") relies on.
 *
 * The kernel lets only a CAP_SYS_PTRACE caller enable
 * UFFD_FEATURE_EVENT_FORK (userfaultfd_api(), commit 3c1c24d91ffd). refpaged
 * holds that capability and enables it on the uffd a client hands over; a
 * client that kept a duplicate can read the fork events itself and so get
 * its children's uffds. This program runs such a client as uid 65534
 * against a private refpaged and checks, on the running kernel, every
 * property the argument in docs/security.md ("The fork-event gate") stands on:
 *
 *   - the client cannot enable EVENT_FORK itself (the gate exists);
 *   - a duplicate in flight in an SCM_RIGHTS message is in no process's fd
 *     table while the daemon configures the uffd, so no scan the daemon
 *     could make (/proc/PID/fd, fdinfo, kcmp, pidfd_getfd) sees it;
 *   - the client then wins the race for a UFFD_EVENT_FORK and holds its
 *     child's uffd (the daemon never learns of that child);
 *   - what that uffd can do to the child: serve the child's faults with
 *     chosen bytes, register more of the child's memory; what it cannot:
 *     trap the child's kernel-mode accesses when the client's uffd is
 *     user-mode only (read(2) into a missing registered page fails with
 *     EFAULT instead of waiting), move pages out of the child (UFFDIO_MOVE
 *     refuses another mm), or do anything once the child has exec'd
 *     (ESRCH/ENOMEM: the uffd is bound to the old mm);
 *   - the baseline it is compared with: process_vm_writev into the child
 *     (ptrace access) works under the ptrace settings found here, stops
 *     when the child makes itself non-dumpable, while a MAP_SHARED page
 *     the client set up before fork still reaches the child.
 *
 * Run as root (it starts refpaged and drops the client to uid 65534):
 *   tenant_fork_gate            exit 0 pass, 1 fail, 77 skip
 * Prints one "ok"/"FAIL" line per property and "N passed, N failed". */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kf.h"
#include "proto.h"
#include "tutil.h"

#define NOBODY 65534
#define WAIT_MS 5000
#define RACE_TRIES 400

/* Older uapi headers (Debian 12 has 6.1's) lack UFFDIO_MOVE (6.8). A
 * kernel without it answers EINVAL too, which is what is checked. */
#ifndef UFFDIO_MOVE
struct uffdio_move {
	uint64_t dst, src, len, mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#endif

static int passed, failed;

__attribute__((format(printf, 2, 3))) static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("%s ", ok ? "ok  " : "FAIL");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	if (ok)
		passed++;
	else
		failed++;
}

__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("     ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

/* ---- small helpers ---------------------------------------------------- */

/* The "API:" line of a uffd's fdinfo: UFFD_API:features:ioctls. -1 when
 * the fd is not a uffd. */
static long long uffd_fdinfo_features(int fd)
{
	char path[64], line[256];
	long long feat = -1;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long api, ft;
		if (sscanf(line, "API:\t%llx:%llx:", &api, &ft) == 2)
			feat = (long long)ft;
	}
	fclose(f);
	return feat;
}

/* ---- the root side: daemon and system-wide scan ------------------------ */

struct scan_req {
	uint64_t dev, ino;
};
struct scan_rep {
	int32_t count;  /* fds in all processes' tables referring to that inode */
	int32_t daemon; /* of them, in the daemon's */
};

static pid_t daemon_pid;

/* Every fd of every process whose target is the inode: what a daemon
 * looking for duplicates through /proc (or kcmp, pidfd_getfd) could find
 * at best. A descriptor in flight in an SCM_RIGHTS message is in no table. */
static struct scan_rep scan_all(const struct scan_req *q)
{
	struct scan_rep r = { 0, 0 };
	DIR *proc = opendir("/proc");
	struct dirent *p;

	while (proc && (p = readdir(proc))) {
		char dir[64];
		if (p->d_name[0] < '0' || p->d_name[0] > '9')
			continue;
		snprintf(dir, sizeof(dir), "/proc/%.20s/fd", p->d_name);
		DIR *fds = opendir(dir);
		struct dirent *e;
		while (fds && (e = readdir(fds))) {
			char path[320];
			struct stat st;
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%.63s/%.200s", dir, e->d_name);
			if (stat(path, &st) == 0 && st.st_ino == q->ino && st.st_dev == q->dev) {
				r.count++;
				if (atoi(p->d_name) == daemon_pid)
					r.daemon++;
			}
		}
		if (fds)
			closedir(fds);
	}
	if (proc)
		closedir(proc);
	return r;
}

static int daemon_start(const char *dir, const char *sock)
{
	char logp[256];

	snprintf(logp, sizeof(logp), "%s/daemon.log", dir);
	fflush(NULL);
	daemon_pid = fork();
	if (daemon_pid < 0)
		return -1;
	if (daemon_pid == 0) {
		int log = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
			_exit(127);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(RP_DAEMON_PATH, "refpaged", "--socket", sock, "--log-level", "debug",
		      (char *)NULL);
		_exit(127);
	}
	for (double end = kf_now() + 10; kf_now() < end; usleep(10000)) {
		int s = proto_dial(sock);
		if (s >= 0) {
			close(s);
			return 0;
		}
		if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid)
			break;
	}
	fprintf(stderr, "refpaged did not come up; log in %s\n", logp);
	return -1;
}

static void daemon_dump(const char *dir)
{
	char path[256], buf[4096];
	size_t n;

	snprintf(path, sizeof(path), "%s/daemon.log", dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	fprintf(stderr, "---- refpaged log ----\n");
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, stderr);
	fclose(f);
}

/* ---- the client (uid 65534) ------------------------------------------ */

struct conn {
	int sock;
	uint32_t seq;
};

static int request(struct conn *c, uint16_t type, const void *p, uint32_t len, int fd,
		   struct proto_reply *rep)
{
	uint8_t buf[PROTO_MAX_MSG];
	int rfd, nfds, trunc;
	uint32_t seq = ++c->seq;
	int r = proto_send(c->sock, type, seq, p, len, fd, 0);

	if (r < 0)
		return r;
	long n = proto_recv(c->sock, buf, &rfd, &nfds, &trunc, 0);
	if (rfd >= 0)
		close(rfd);
	if (n != (long)(sizeof(struct proto_hdr) + sizeof(*rep)))
		return -EPROTO;
	memcpy(rep, buf + sizeof(struct proto_hdr), sizeof(*rep));
	return rep->status;
}

/* The race: a thread of the client reads its duplicate while another
 * forks; whoever reads the UFFD_EVENT_FORK first gets the child's uffd
 * (userfaultfd_ctx_read -> resolve_userfault_fork installs it in the
 * reader's fd table). */
struct spinner {
	int fd;
	atomic_int stop;
	atomic_int child_ufd;
	const void *tmpl;
};

static void *spin(void *arg)
{
	struct spinner *sp = arg;
	struct uffd_msg m;

	while (!atomic_load(&sp->stop)) {
		if (read(sp->fd, &m, sizeof(m)) != sizeof(m))
			continue;
		if (m.event == UFFD_EVENT_FORK) {
			atomic_store(&sp->child_ufd, (int)m.arg.fork.ufd);
			break;
		}
		/* Not expected (the main thread touches no registered page
		 * meanwhile), but a stolen fault must not hang the client. */
		if (m.event == UFFD_EVENT_PAGEFAULT)
			kf_copy(sp->fd, m.arg.pagefault.address & ~(uint64_t)(PAGE - 1), sp->tmpl,
				PAGE);
	}
	return NULL;
}

/* The fork child's command loop. Every answer is a 16-byte record:
 * value, errno. */
struct answer {
	int64_t value;
	int64_t err;
};

static volatile int ptrace_target = 1;

static void child_loop(int cs, uint8_t *R, uint8_t *Q, uint8_t *S)
{
	char cmd;

	while (read(cs, &cmd, 1) == 1) {
		struct answer a = { 0, 0 };
		switch (cmd) {
		case 'U': /* user-mode read of a registered missing page */
			a.value = *(volatile uint8_t *)(R + 2 * PAGE);
			break;
		case 'K': { /* kernel-mode write into a registered missing page */
			int p[2];
			if (pipe(p) < 0 || write(p[1], "0123456789abcdef", 16) != 16) {
				a.err = errno;
				break;
			}
			ssize_t n = read(p[0], R + PAGE, 16);
			a.value = n;
			a.err = n < 0 ? errno : 0;
			close(p[0]);
			close(p[1]);
			break;
		}
		case 'D':
			a.err = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? errno : 0;
			break;
		case 'S':
			a.value = *(volatile uint8_t *)S;
			break;
		case 'Q':
			a.value = *(volatile uint8_t *)Q;
			break;
		case 'T':
			a.value = ptrace_target;
			break;
		case 'F': { /* a grandchild: its uffd goes to whoever reads ours */
			pid_t g = fork();
			if (g == 0)
				_exit(0);
			a.value = g;
			a.err = g < 0 ? errno : 0;
			if (g > 0)
				waitpid(g, NULL, 0);
			break;
		}
		case 'E': /* a new program, same process: a new mm */
			if (dup2(cs, 3) < 0)
				_exit(120);
			execl("/bin/sh", "sh", "-c", "printf R >&3; read x <&3", (char *)NULL);
			_exit(121);
		default:
			_exit(0);
		}
		if (write(cs, &a, sizeof(a)) != sizeof(a))
			_exit(122);
	}
	_exit(0);
}

struct pump {
	int cs, cu;
	uint64_t copy_at; /* serve a fault here with copy_byte */
	const uint8_t *copy_page;
	int faults; /* fault messages read on the child's uffd */
	uint64_t last_addr;
	uint32_t last_ptid;
	int forks;             /* fork events read (grandchildren) */
	long long gc_features; /* the grandchild uffd's features */
};

/* Send cmd to the child and serve its uffd until the answer comes. */
static int ask(struct pump *pm, char cmd, struct answer *a)
{
	double end = kf_now() + WAIT_MS / 1000.0;

	if (write(pm->cs, &cmd, 1) != 1)
		return -1;
	while (kf_now() < end) {
		struct pollfd p[2] = { { .fd = pm->cs, .events = POLLIN },
				       { .fd = pm->cu, .events = POLLIN } };
		if (poll(p, 2, 100) < 0 && errno != EINTR)
			return -1;
		if (p[1].revents & POLLIN) {
			struct uffd_msg m;
			if (read(pm->cu, &m, sizeof(m)) == sizeof(m)) {
				if (m.event == UFFD_EVENT_PAGEFAULT) {
					uint64_t at = m.arg.pagefault.address &
						      ~(uint64_t)(PAGE - 1);
					pm->faults++;
					pm->last_addr = at;
					pm->last_ptid = m.arg.pagefault.feat.ptid;
					if (at == pm->copy_at && pm->copy_page)
						kf_copy(pm->cu, at, pm->copy_page, PAGE);
					else
						kf_zeropage(pm->cu, at, PAGE);
				} else if (m.event == UFFD_EVENT_FORK) {
					int g = (int)m.arg.fork.ufd;
					pm->forks++;
					pm->gc_features = uffd_fdinfo_features(g);
					close(g);
				}
			}
		}
		if (p[0].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(pm->cs, a, sizeof(*a));
			return n == sizeof(*a) ? 0 : -1;
		}
	}
	return -1;
}

/* process_vm_writev: ptrace access (PTRACE_MODE_ATTACH_REALCREDS). */
static int poke_child(pid_t pid, int v)
{
	struct iovec l = { .iov_base = &v, .iov_len = sizeof(v) };
	struct iovec r = { .iov_base = (void *)&ptrace_target, .iov_len = sizeof(v) };
	return process_vm_writev(pid, &l, 1, &r, 1, 0) == sizeof(v) ? 0 : errno;
}

static int scan_via_root(int ctl, const struct stat *st, struct scan_rep *rep)
{
	struct scan_req q = { .dev = st->st_dev, .ino = st->st_ino };
	if (write(ctl, &q, sizeof(q)) != sizeof(q) || read(ctl, rep, sizeof(*rep)) != sizeof(*rep))
		return -1;
	return 0;
}

/* Win a UFFD_EVENT_FORK race; returns the child's pid, its uffd in *cu
 * and the command socket in *cs, or -1. */
static pid_t fork_and_steal(int stolen, const uint8_t *tmpl, uint8_t *R, uint8_t *Q, uint8_t *S,
			    int *cu, int *cs, int *tries)
{
	for (*tries = 1; *tries <= RACE_TRIES; (*tries)++) {
		int sv[2];
		struct spinner sp = { .fd = stolen, .tmpl = tmpl };
		pthread_t t;

		atomic_init(&sp.stop, 0);
		atomic_init(&sp.child_ufd, -1);
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
			return -1;
		if (pthread_create(&t, NULL, spin, &sp))
			return -1;
		usleep(1000);
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0) {
			close(sv[0]);
			close(stolen);
			child_loop(sv[1], R, Q, S);
		}
		close(sv[1]);
		for (double end = kf_now() + 0.05;
		     kf_now() < end && atomic_load(&sp.child_ufd) < 0;)
			usleep(100);
		atomic_store(&sp.stop, 1);
		pthread_join(t, NULL);
		*cu = atomic_load(&sp.child_ufd);
		if (*cu >= 0) {
			*cs = sv[0];
			return pid;
		}
		/* The daemon read it: an ordinary, served child. */
		if (write(sv[0], "X", 1) < 0)
			note("could not tell child %d to exit", (int)pid);
		close(sv[0]);
		waitpid(pid, NULL, 0);
	}
	return -1;
}

static void after_exec(int cu, uint64_t at, const uint8_t *page, uint64_t rstart, uint64_t rlen)
{
	int e = 0;
	struct uffd_msg m;

	/* The old mm goes when its last user does; something holding it
	 * for a moment (mmget_not_zero elsewhere) delays that briefly. */
	for (double end = kf_now() + 2; kf_now() < end; usleep(10000))
		if ((e = kf_copy(cu, at, page, PAGE)) == ESRCH)
			break;
	check(e == ESRCH, "after exec: UFFDIO_COPY on the child's uffd fails with ESRCH (got %s)",
	      strerror(e));
	e = kf_zeropage(cu, at, PAGE);
	check(e == ESRCH, "after exec: UFFDIO_ZEROPAGE fails with ESRCH (got %s)", strerror(e));
	e = kf_wp(cu, rstart, rlen, UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
	check(e == ESRCH, "after exec: UFFDIO_WRITEPROTECT fails with ESRCH (got %s)", strerror(e));
	e = kf_register(cu, rstart, rlen, UFFDIO_REGISTER_MODE_MISSING);
	check(e == ENOMEM, "after exec: UFFDIO_REGISTER fails with ENOMEM (mmget_not_zero; got %s)",
	      strerror(e));
	e = kf_unregister(cu, rstart, rlen);
	check(e == ENOMEM, "after exec: UFFDIO_UNREGISTER fails with ENOMEM (got %s)", strerror(e));
	e = kf_wake(cu, rstart, rlen);
	check(e == 0, "after exec: UFFDIO_WAKE still answers 0 (it touches no mm; got %s)",
	      strerror(e));
	ssize_t n = read(cu, &m, sizeof(m));
	check(n < 0 && errno == EAGAIN, "after exec: nothing to read on the child's uffd");
}

static void child_checks(int cu, int cs, pid_t pid, int umo, uint8_t *R, uint8_t *Q, uint8_t *S,
			 const uint8_t *p5a, const uint8_t *p3c)
{
	struct pump pm = { .cs = cs, .cu = cu };
	struct answer a;
	long long cf = uffd_fdinfo_features(cu);

	check(kf_is_uffd(cu) && cf >= 0 && (cf & UFFD_FEATURE_EVENT_FORK),
	      "the stolen child uffd is a userfaultfd that inherited EVENT_FORK (features %#llx)",
	      cf);

	/* 1. It serves the child's user-mode faults: the daemon is out. */
	pm.copy_at = (uintptr_t)(R + 2 * PAGE);
	pm.copy_page = p5a;
	int r = ask(&pm, 'U', &a);
	check(r == 0 && a.value == 0x5a && pm.faults == 1 && pm.last_addr == pm.copy_at,
	      "the child's user-mode fault on a registered page comes to the stolen uffd and reads "
	      "the client's bytes (0x%02llx, faults %d)",
	      (long long)a.value, pm.faults);
	check(pm.last_ptid == (uint32_t)pid, "the fault names the child's thread (ptid %u, pid %d)",
	      pm.last_ptid, (int)pid);

	/* 2. User-mode only is inherited (dup_userfaultfd copies ctx->flags). */
	pm.faults = 0;
	r = ask(&pm, 'K', &a);
	if (umo)
		check(r == 0 && a.value < 0 && a.err == EFAULT && pm.faults == 0,
		      "user-mode-only is inherited: the child's read(2) into a missing registered "
		      "page fails with EFAULT at once, not trapped (%lld, %s, faults %d)",
		      (long long)a.value, strerror((int)a.err), pm.faults);
	else
		check(r == 0 && a.value == 16 && pm.faults == 1,
		      "a full uffd (not user-mode only) traps the child's kernel-mode access too, as "
		      "the client's own uffd would (faults %d)",
		      pm.faults);

	/* 3. More of the child's memory, as the client's own code could. */
	int e = kf_register(cu, (uintptr_t)Q, PAGE, UFFDIO_REGISTER_MODE_MISSING);
	check(e == 0, "UFFDIO_REGISTER of another child mapping through the stolen uffd works (%s)",
	      strerror(e));
	e = kf_wp(cu, (uintptr_t)R, 4 * PAGE, UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
	check(e == ENOENT, "UFFDIO_WRITEPROTECT mode 0 on the MISSING-only range: ENOENT (%s)",
	      strerror(e));

	/* 4. Nothing reads the child's memory: UFFDIO_MOVE refuses another mm. */
	struct uffdio_move mv = { .dst = (uintptr_t)(R + 3 * PAGE),
				  .src = (uintptr_t)p5a,
				  .len = PAGE };
	e = kf_ioctl(cu, UFFDIO_MOVE, &mv);
	check(e == EINVAL,
	      "UFFDIO_MOVE through the child's uffd is refused (EINVAL: mm != "
	      "current->mm, or no MOVE at all): %s",
	      strerror(e));

	/* 5. The baseline: ptrace access to the child, then a non-dumpable
	 *    child, which the client's own pre-fork arrangements still reach. */
	int scope = tu_read_int("/proc/sys/kernel/yama/ptrace_scope");
	int want_ok = scope < 2; /* no Yama, or scope 0/1: a parent may attach */
	e = poke_child(pid, 41);
	r = ask(&pm, 'T', &a);
	check(want_ok ? e == 0 && a.value == 41 : e == EPERM,
	      "ptrace access (process_vm_writev) to the dumpable child under Yama scope %d%s: %s",
	      scope, scope < 0 ? " (no Yama: commoncap only)" : "", e ? strerror(e) : "allowed");
	r = ask(&pm, 'D', &a);
	e = poke_child(pid, 42);
	check(r == 0 && a.err == 0 && e == EPERM,
	      "after prctl(PR_SET_DUMPABLE, 0) in the child, ptrace access is refused (%s)",
	      strerror(e));
	S[0] = 0x77;
	r = ask(&pm, 'S', &a);
	check(r == 0 && a.value == 0x77,
	      "a MAP_SHARED page set up before fork still reaches the non-dumpable child (0x%02llx)",
	      (long long)a.value);
	pm.copy_at = (uintptr_t)Q;
	pm.copy_page = p3c;
	pm.faults = 0;
	r = ask(&pm, 'Q', &a);
	check(r == 0 && a.value == 0x3c && pm.faults == 1,
	      "so does the stolen uffd: the child's fault in the newly registered mapping reads "
	      "0x%02llx",
	      (long long)a.value);

	/* 6. Its own forks: the grandchild's uffd comes to us too. */
	pm.forks = 0;
	r = ask(&pm, 'F', &a);
	check(r == 0 && a.err == 0 && pm.forks == 1 && (pm.gc_features & UFFD_FEATURE_EVENT_FORK),
	      "the child's fork sends its UFFD_EVENT_FORK to the stolen uffd's reader (forks %d)",
	      pm.forks);

	/* 7. exec: a new mm; the stolen uffd is bound to the old one. */
	char cmd = 'E', c = 0;
	if (write(cs, &cmd, 1) != 1 || read(cs, &c, 1) != 1 || c != 'R') {
		check(0, "the child exec'd /bin/sh");
		return;
	}
	check(kill(pid, 0) == 0, "the child process lives on after exec (pid %d)", (int)pid);
	after_exec(cu, (uintptr_t)(R + 3 * PAGE), p5a, (uintptr_t)R, 4 * PAGE);
}

static int client_main(const char *sockpath, int ctl)
{
	struct conn c = { .sock = -1 };
	struct proto_reply rep;
	int umo = 0, hide[2], e;

	setvbuf(stdout, NULL, _IOLBF, 0);

	/* The gate: EVENT_FORK needs CAP_SYS_PTRACE of the UFFDIO_API caller. */
	int g = proto_uffd_create(&umo);
	if (g < 0) {
		printf("SKIP no userfaultfd for uid %d: %s\n", NOBODY, strerror(-g));
		return 77;
	}
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK };
	e = kf_ioctl(g, UFFDIO_API, &api);
	check(e == EPERM, "the client's own UFFDIO_API with EVENT_FORK is refused (EPERM): %s",
	      strerror(e));
	close(g);

	int u = proto_uffd_create(&umo);
	check(u >= 0, "the client makes its uffd (%s)",
	      umo ? "user-mode only: vm.unprivileged_userfaultfd=0, no /dev/userfaultfd access"
		  : "not user-mode only");

	/* The duplicate goes in flight: in no fd table from here on. */
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, hide) < 0 ||
	    kf_send_fd(hide[0], u) < 0)
		return 1;

	c.sock = proto_dial(sockpath);
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE,
				 .flags = umo ? PROTO_HELLO_USER_MODE_ONLY : 0,
				 .pid = (uint32_t)getpid() };
	struct stat ust;
	fstat(u, &ust);
	int r = request(&c, PROTO_HELLO, &h, sizeof(h), u, &rep);
	struct scan_rep sr = { -1, -1 };
	int eventfd_fd = eventfd(0, EFD_CLOEXEC);
	struct stat est;
	fstat(eventfd_fd, &est);
	int own_inode = est.st_ino != ust.st_ino;
	close(eventfd_fd);
	/* As librefpage does: the client's own copy goes after HELLO. */
	close(u);
	scan_via_root(ctl, &ust, &sr);
	check(r == 0 && (rep.value & UFFD_FEATURE_EVENT_FORK),
	      "HELLO: the daemon did UFFDIO_API with EVENT_FORK (features %#llx)",
	      (unsigned long long)rep.value);
	if (own_inode)
		check(sr.daemon >= 1 && sr.count == sr.daemon,
		      "once configured, the uffd is in the daemon's fd table and in no other: the "
		      "duplicate in flight is invisible to any scan (%d fds, %d in the daemon)",
		      sr.count, sr.daemon);
	else
		note("uffds share one anon inode on this kernel: no system-wide scan");

	int stolen = kf_recv_fd(hide[1]);
	close(hide[0]);
	close(hide[1]);
	long long f = uffd_fdinfo_features(stolen);
	check(stolen >= 0 && fstat(stolen, &ust) == 0 && f >= 0 && (f & UFFD_FEATURE_EVENT_FORK),
	      "the duplicate comes back out of flight and carries EVENT_FORK (features %#llx)", f);

	/* A served range, two plain mappings. */
	struct proto_template_fill tf = { .byte = 0xab };
	r = request(&c, PROTO_TEMPLATE_FILL, &tf, sizeof(tf), -1, &rep);
	uint32_t id = rep.id;
	uint8_t *R = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	uint8_t *Q = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *S = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	static _Alignas(PAGE) uint8_t tmpl[PAGE], p5a[PAGE], p3c[PAGE];
	memset(tmpl, 0xab, PAGE);
	memset(p5a, 0x5a, PAGE);
	memset(p3c, 0x3c, PAGE);
	S[0] = 0;
	struct proto_map m = { .addr = (uintptr_t)R, .len = 4 * PAGE, .id = id };
	if (r == 0)
		r = request(&c, PROTO_MAP, &m, sizeof(m), -1, &rep);
	check(r == 0 && R[0] == 0xab, "MAP: the daemon serves the client's range (reads 0x%02x)",
	      r == 0 ? R[0] : 0);

	int cu = -1, cs = -1, tries = 0;
	pid_t pid = fork_and_steal(stolen, tmpl, R, Q, S, &cu, &cs, &tries);
	check(pid > 0,
	      "the client reads a UFFD_EVENT_FORK itself and holds its child's uffd (try %d "
	      "of %d)",
	      tries, RACE_TRIES);
	if (pid > 0) {
		child_checks(cu, cs, pid, umo, R, Q, S, p5a, p3c);
		close(cs);
		int st = 0;
		waitpid(pid, &st, 0);
		close(cu);
	}
	close(stolen);
	close(c.sock);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

static int drop_to_nobody(void)
{
	if (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
	    setresuid(NOBODY, NOBODY, NOBODY) < 0)
		return -1;
	/* A credential change clears the death signal and makes the process
	 * non-dumpable (commit_creds: suid_dumpable); a user's own program,
	 * started by exec, is dumpable: so is this client. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
	return getppid() == 1 ? -1 : 0;
}

int main(void)
{
	char dir[] = "/tmp/rp-forkgate-XXXXXX", sock[64];
	int ctl[2], st = 0, rc = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (geteuid() != 0) {
		printf("SKIP needs root: it starts refpaged and runs the client as uid %d\n",
		       NOBODY);
		return 77;
	}
	if (!mkdtemp(dir) || chmod(dir, 0755) < 0)
		return 1;
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	if (daemon_start(dir, sock) < 0) {
		daemon_dump(dir);
		return 1;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) < 0)
		return 1;
	fflush(NULL);
	pid_t client = fork();
	if (client == 0) {
		close(ctl[0]);
		if (drop_to_nobody() < 0)
			_exit(1);
		_exit(client_main(sock, ctl[1]));
	}
	close(ctl[1]);
	struct scan_req q;
	while (read(ctl[0], &q, sizeof(q)) == sizeof(q)) {
		struct scan_rep r = scan_all(&q);
		if (write(ctl[0], &r, sizeof(r)) != sizeof(r))
			break;
	}
	waitpid(client, &st, 0);
	rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
	kill(daemon_pid, SIGTERM);
	waitpid(daemon_pid, NULL, 0);
	if (rc != 0 && rc != 77)
		daemon_dump(dir);
	char path[128];
	snprintf(path, sizeof(path), "%s/daemon.log", dir);
	unlink(path);
	unlink(sock);
	rmdir(dir);
	return rc;
}
