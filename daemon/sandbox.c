/* The sandbox: see sandbox.h.
 *
 * The seccomp filter is an allow-list, one line per syscall (or per
 * allowed argument value) with who needs it, found by running the daemon
 * under strace -f through the integration scenarios (clients, fork,
 * munmap, mremap, madvise, killed clients, bad input, SIGTERM), with and
 * without the sanitizers.
 *
 * What happens to anything else is a decision with two sides. Killing the
 * process on any unlisted call (what this filter did first) turns every
 * library path we did not foresee into an outage for every user of the
 * host: glibc's heap trimming, reached only under memory pressure, opens
 * /proc/sys/vm/overcommit_memory, and a fork-heavy client made that happen
 * (docs/security.md). An error instead leaves such a path to fail the way
 * it must cope with anyway (a file it cannot open, a call the kernel does
 * not have), while a denied call is still denied: a compromised daemon
 * gains nothing from an ENOSYS. So: the calls that only an attacker who
 * took the daemon over would make, never a library behind our back, kill
 * the process at once (kill_list); every other unlisted call traps into
 * our SIGSYS handler, which makes it return ENOSYS, counts it and logs its
 * number (a few times, then one line in a thousand) so that a new libc
 * path shows up in the journal and in STATS without taking the host's
 * refpages down. The kernel's audit log names the call too. */
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/userfaultfd.h>
#include <seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <stdatomic.h>
#include <ucontext.h>

#include "log.h"
#include "stats.h"

#define CAP_KEEP CAP_SYS_PTRACE

/* Capabilities, without libcap: two 32-bit words per set. */
static int caps_get(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };

	return syscall(SYS_capget, &h, d) < 0 ? -errno : 0;
}

static int caps_set(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };

	return syscall(SYS_capset, &h, d) < 0 ? -errno : 0;
}

static int cap_has(const struct __user_cap_data_struct d[2], int cap, int effective)
{
	uint32_t set = effective ? d[CAP_TO_INDEX(cap)].effective : d[CAP_TO_INDEX(cap)].permitted;

	return !!(set & CAP_TO_MASK(cap));
}

/* The bounding set limits what an execve could ever regain. Dropping from
 * it takes CAP_SETPCAP; without it (a systemd unit's
 * CapabilityBoundingSet= did the job, or we are not root) it stays. */
static int drop_bounding(void)
{
	for (int c = 0;; c++) {
		int r = prctl(PR_CAPBSET_READ, c, 0, 0, 0);
		if (r < 0)
			return errno == EINVAL ? 0 : -errno; /* past the last cap */
		if (r == 1 && c != CAP_KEEP && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
			return -errno;
	}
}

int sandbox_drop_caps(void)
{
	struct __user_cap_data_struct d[2];
	int r;

	if ((r = caps_get(d)) < 0)
		return r;
	if (cap_has(d, CAP_SETPCAP, 1) && (r = drop_bounding()) < 0)
		return r;
	/* Lowering the ambient set needs no privilege; EINVAL: no ambient
	 * capabilities on this kernel. We never execve, so none is needed
	 * (the exec helper, handover.c, raises what the next binary needs). */
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return -errno;
	int change = 0;
	for (int i = 0; i < 2; i++) {
		uint32_t keep = CAP_TO_INDEX(CAP_KEEP) == i ? CAP_TO_MASK(CAP_KEEP) : 0;
		struct __user_cap_data_struct old = d[i];
		d[i].permitted &= keep;
		d[i].effective = d[i].permitted; /* raise it if only permitted */
		d[i].inheritable &= keep;
		change |= memcmp(&old, &d[i], sizeof(old)) != 0;
	}
	/* Under systemd (User=, AmbientCapabilities=CAP_SYS_PTRACE) there is
	 * nothing to drop, and the unit's SystemCallFilter= denies capset. */
	if (change && (r = caps_set(d)) < 0)
		return r;
	if (!cap_has(d, CAP_KEEP, 1))
		log_warn("running without CAP_SYS_PTRACE: the kernel refuses us "
			 "UFFD_FEATURE_EVENT_FORK (EPERM)");
	return 0;
}

struct sb_rule {
	int nr;
	unsigned nargs;
	struct scmp_arg_cmp args[2];
};

#define ARG_EQ(i, v)                                                        \
	{                                                                   \
		.arg = (i), .op = SCMP_CMP_EQ, .datum_a = (scmp_datum_t)(v) \
	}
/* (arg & m) == 0 */
#define ARG_NONE_OF(i, m)                                                                        \
	{                                                                                        \
		.arg = (i), .op = SCMP_CMP_MASKED_EQ, .datum_a = (scmp_datum_t)(m), .datum_b = 0 \
	}
/* (arg & m) == m */
#define ARG_ALL_OF(i, m)                                                            \
	{                                                                           \
		.arg = (i), .op = SCMP_CMP_MASKED_EQ, .datum_a = (scmp_datum_t)(m), \
		.datum_b = (scmp_datum_t)(m)                                        \
	}
#define ALLOW(name)                  \
	{                            \
		.nr = SCMP_SYS(name) \
	}
#define ALLOW1(name, a)                                         \
	{                                                       \
		.nr = SCMP_SYS(name), .nargs = 1, .args = { a } \
	}
#define ALLOW2(name, a, b)                                         \
	{                                                          \
		.nr = SCMP_SYS(name), .nargs = 2, .args = { a, b } \
	}

/* What the daemon does once it serves, in every build. */
static const struct sb_rule rules[] = {
	/* libev's epoll backend: every loop (main, workers); persist.c takes
	 * an fd the fd store may still hold out of a loop before closing it */
	ALLOW(epoll_wait),
	ALLOW(epoll_ctl),
	/* uffd messages (worker.c); libev wake-ups: eventfd reads and the
	 * writes of ev_async_send and of its signal handler */
	ALLOW(read),
	/* log.c lines to stderr; libev wake-ups */
	ALLOW(write),
	/* clients, uffds, sd_notify's socket, libev's fds at shutdown */
	ALLOW(close),
	/* listener.c */
	ALLOW(accept4),
	/* proto.c requests and replies (SCM_RIGHTS); sd_notify */
	ALLOW(recvmsg),
	ALLOW(sendmsg),
	/* session.c: SO_PEERCRED of a new client; sd_notify: SO_SNDBUF */
	ALLOW2(getsockopt, ARG_EQ(1, SOL_SOCKET), ARG_EQ(2, SO_PEERCRED)),
	ALLOW2(getsockopt, ARG_EQ(1, SOL_SOCKET), ARG_EQ(2, SO_SNDBUF)),
	/* mm.c: is this fd a userfaultfd? (/proc/self/fd/N) */
	ALLOW(readlink),
	/* mm.c, worker.c: O_NONBLOCK and FD_CLOEXEC on received uffds */
	ALLOW1(fcntl, ARG_EQ(1, F_GETFL)),
	ALLOW1(fcntl, ARG_EQ(1, F_SETFL)),
	ALLOW1(fcntl, ARG_EQ(1, F_SETFD)),
	/* The uffd requests, exactly: mm.c handshake and (un)registration,
	 * fault.c fills, wake-ups and liveness probes, and mm.c's probe for an
	 * event in flight before a MAP (WRITEPROTECT with mode 0, on ranges
	 * never registered for write-protect: it changes nothing) */
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_API)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_REGISTER)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_UNREGISTER)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_COPY)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_ZEROPAGE)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_WAKE)),
	ALLOW1(ioctl, ARG_EQ(1, UFFDIO_WRITEPROTECT)),
	/* malloc, template.c and range.c slabs; never executable memory */
	ALLOW1(mmap, ARG_NONE_OF(2, PROT_EXEC)),
	ALLOW1(mprotect, ARG_NONE_OF(2, PROT_EXEC)), /* malloc grows arenas */
	ALLOW(munmap),
	ALLOW(mremap),  /* realloc of large blocks */
	ALLOW(madvise), /* malloc trims; glibc frees exiting threads' stacks */
	ALLOW(brk),
	/* mm.c: learn at once that a served process exited */
	ALLOW1(pidfd_open, ARG_EQ(1, 0)),
	/* pthread mutexes, pthread_join, atomics' slow paths */
	ALLOW(futex),
	/* libev's clock when the vDSO falls back to the kernel */
	ALLOW(clock_gettime),
	ALLOW(gettimeofday),
	/* libev's SIGTERM/SIGINT handler returns; a futex wait it interrupted
	 * restarts */
	ALLOW(rt_sigreturn),
	ALLOW(restart_syscall),
	/* glibc: exiting threads and abort() block signals */
	ALLOW(rt_sigprocmask),
	/* sd_notify decides whether to send credentials */
	ALLOW(getuid),
	ALLOW(geteuid),
	ALLOW(getgid),
	ALLOW(getegid),
	/* abort() (assert, session.c's unreachable default): raise(SIGABRT);
	 * tgkill itself is added for our own pid and SIGABRT only */
	ALLOW(getpid),
	ALLOW(gettid),
	/* glibc's start_thread registers these in the new thread itself,
	 * which may first run after the filter is in: pthread_create does not
	 * wait for it */
	ALLOW(rseq),
	ALLOW(set_robust_list),
	/* libev's default loop reaps children from its SIGCHLD handler
	 * (waitpid(-1, ..., WNOHANG | ...)): the exec helper dies first when
	 * systemd's stop signals the whole cgroup. Never a blocking wait. */
	ALLOW1(wait4, ARG_ALL_OF(2, WNOHANG)),
	/* workers_stop: worker threads return; main returns */
	ALLOW(exit),
	ALLOW(exit_group),
};

/* sd_notify opens a datagram socket per message, and only when
 * $NOTIFY_SOCKET is set. */
static const struct sb_rule notify_rules[] = {
	ALLOW2(socket, ARG_EQ(0, AF_UNIX), ARG_EQ(1, SOCK_DGRAM | SOCK_CLOEXEC)),
	ALLOW2(setsockopt, ARG_EQ(1, SOL_SOCKET), ARG_EQ(2, SO_SNDBUF)),
	ALLOW2(setsockopt, ARG_EQ(1, SOL_SOCKET), ARG_EQ(2, SO_SNDBUFFORCE)),
	/* libsystemd >= 254 connects before sending; 252 uses msg_name */
	ALLOW(connect),
};

/* listener.c removes the socket file it bound (never systemd's) at exit. */
static const struct sb_rule unlink_rules[] = {
	ALLOW(getsockname),
	ALLOW(unlink),
};

/* Restarts and upgrades: handover.c waits for the new binary and the exec
 * helper with a deadline (glibc's poll() is ppoll on some builds). */
static const struct sb_rule handover_rules[] = {
	ALLOW(poll),
	ALLOW(ppoll),
};

#ifdef RP_SANITIZER
/* Sanitizer runtimes only (RP_ASAN/RP_UBSAN builds), never in a release
 * build: reports, thread teardown and LeakSanitizer's check at exit (a
 * tracer task that ptrace-stops every thread). */
static const struct sb_rule sanitizer_rules[] = {
	/* reports: /proc/self/maps, then the symbolizer reads our ELF files
	 * (libbacktrace: openat, fstat, lseek, read-only mmap) */
	ALLOW1(open, ARG_NONE_OF(1, O_ACCMODE | O_CREAT | O_TRUNC)),
	ALLOW1(openat, ARG_NONE_OF(2, O_ACCMODE | O_CREAT | O_TRUNC)),
	ALLOW(newfstatat),
	ALLOW(fstat),
	ALLOW(lseek),
	/* reports: isatty(stderr) decides on colours */
	ALLOW1(ioctl, ARG_EQ(1, TCGETS)),
	/* every thread's alternate signal stack (deadly-signal reports) */
	ALLOW(sigaltstack),
	ALLOW(rt_sigaction),
	/* the allocator counts CPUs */
	ALLOW(sched_getaffinity),
	/* LeakSanitizer: StopTheWorld makes us dumpable again for a moment,
	 * names its tracer as our ptracer and clones it; the tracer dies
	 * with us, lists /proc/PID/task and ptrace-stops every thread */
	ALLOW1(prctl, ARG_EQ(0, PR_GET_DUMPABLE)),
	ALLOW1(prctl, ARG_EQ(0, PR_SET_DUMPABLE)),
	ALLOW1(prctl, ARG_EQ(0, PR_SET_PTRACER)),
	ALLOW1(prctl, ARG_EQ(0, PR_SET_PDEATHSIG)),
	ALLOW(clone),
	ALLOW(wait4),
	ALLOW(getppid),
	ALLOW(getdents),
	ALLOW(getdents64),
	ALLOW(ptrace),
	/* ThreadSanitizer's background thread wakes up every 100 ms */
	ALLOW(nanosleep),
	ALLOW(clock_nanosleep),
	/* the runtimes' spin locks, and LeakSanitizer waiting for its tracer
	 * (the daemon itself never yields) */
	ALLOW(sched_yield),
};
#endif

static int add_rules(scmp_filter_ctx ctx, const struct sb_rule *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (r[i].nr < 0)
			continue; /* not a syscall on this architecture */
		int e = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, r[i].nr, r[i].nargs, r[i].args);
		if (e < 0) {
			char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, r[i].nr);
			log_err("seccomp: cannot allow %s: %s", name ? name : "?", strerror(-e));
			free(name);
			return e;
		}
	}
	return 0;
}

#define ADD(ctx, table) add_rules((ctx), (table), sizeof(table) / sizeof((table)[0]))

/* What an attacker who runs code in the daemon would reach for, and
 * nothing in the daemon or its libraries ever calls once serving: these
 * kill the process at once instead of failing. */
static const int kill_list[] = {
	SCMP_SYS(execve),
	SCMP_SYS(execveat),
	SCMP_SYS(ptrace),
	SCMP_SYS(process_vm_readv),
	SCMP_SYS(process_vm_writev),
	SCMP_SYS(userfaultfd),
	SCMP_SYS(init_module),
	SCMP_SYS(finit_module),
	SCMP_SYS(delete_module),
	SCMP_SYS(kexec_load),
	SCMP_SYS(kexec_file_load),
	SCMP_SYS(mount),
	SCMP_SYS(umount2),
	SCMP_SYS(pivot_root),
	SCMP_SYS(chroot),
	SCMP_SYS(setns),
	SCMP_SYS(unshare),
	SCMP_SYS(bpf),
	SCMP_SYS(perf_event_open),
	SCMP_SYS(open_by_handle_at),
	SCMP_SYS(name_to_handle_at),
	SCMP_SYS(keyctl),
	SCMP_SYS(add_key),
	SCMP_SYS(request_key),
	SCMP_SYS(setuid),
	SCMP_SYS(setgid),
	SCMP_SYS(setreuid),
	SCMP_SYS(setregid),
	SCMP_SYS(setresuid),
	SCMP_SYS(setresgid),
	SCMP_SYS(setgroups),
	SCMP_SYS(capset),
	SCMP_SYS(pidfd_getfd),
};

static int add_kill_list(scmp_filter_ctx ctx)
{
	for (size_t i = 0; i < sizeof(kill_list) / sizeof(kill_list[0]); i++) {
		if (kill_list[i] < 0)
			continue;
#ifdef RP_SANITIZER
		/* LeakSanitizer's tracer ptrace-stops our threads at exit. */
		if (kill_list[i] == SCMP_SYS(ptrace))
			continue;
#endif
		int e = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, kill_list[i], 0);
		if (e < 0)
			return e;
	}
	return 0;
}

/* --- denied calls: ENOSYS, counted, logged ------------------------------------- */

static atomic_ulong denied;

/* n in decimal at p; the end. Async-signal safe. */
static char *put_num(char *p, unsigned long n)
{
	char tmp[24];
	int k = 0;

	do
		tmp[k++] = (char)('0' + n % 10);
	while ((n /= 10) && k < (int)sizeof(tmp));
	while (k)
		*p++ = tmp[--k];
	return p;
}

/* A signal handler: only async-signal-safe work (an atomic add, one
 * write). */
static void on_sigsys(int sig, siginfo_t *si, void *uc_)
{
	ucontext_t *uc = uc_;
	unsigned long n = atomic_fetch_add(&denied, 1) + 1;
	static const char a[] = "<4>sandbox: system call ", b[] = " denied (ENOSYS), count ";

	(void)sig;
#if defined(__x86_64__)
	uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
#elif defined(__aarch64__)
	uc->uc_mcontext.regs[0] = (unsigned long long)-ENOSYS;
#endif
	stat_inc(PROTO_STAT_DENIED_SYSCALLS);
	if (n > 10 && n % 1000)
		return;
	char line[96], *p = line;
	memcpy(p, a, sizeof(a) - 1);
	p = put_num(p + sizeof(a) - 1, (unsigned long)si->si_syscall);
	memcpy(p, b, sizeof(b) - 1);
	p = put_num(p + sizeof(b) - 1, n);
	*p++ = '\n';
	if (write(STDERR_FILENO, line, (size_t)(p - line)) < 0)
		return;
}

/* The default action: a trap into on_sigsys where we can set the return
 * value, else a plain ENOSYS (the kernel's audit log still names it). */
static uint32_t default_action(void)
{
#if defined(__x86_64__) || defined(__aarch64__)
	struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, NULL) == 0)
		return SCMP_ACT_TRAP;
#endif
	return SCMP_ACT_ERRNO(ENOSYS);
}

static int build_filter(scmp_filter_ctx ctx, const struct sandbox_opts *o)
{
	int r;

	if ((r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0 ||
	    (r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) < 0 ||
	    (r = seccomp_attr_set(ctx, SCMP_FLTATR_API_SYSRAWRC, 1)) < 0 ||
	    (r = ADD(ctx, rules)) < 0)
		return r;
	if (o->notify && (r = ADD(ctx, notify_rules)) < 0)
		return r;
	if (o->unlink_socket && (r = ADD(ctx, unlink_rules)) < 0)
		return r;
	if ((r = ADD(ctx, handover_rules)) < 0)
		return r;
	/* The restart wing writes the state journal: into that memfd and no
	 * other file (records, images, template pages), and punches what a
	 * compaction leaves behind. */
	const struct sb_rule journal_rules[] = {
		ALLOW1(pwrite64, ARG_EQ(0, o->journal_fd)),
		ALLOW1(fallocate, ARG_EQ(0, o->journal_fd)),
	};
	if (o->journal_fd >= 0 && (r = ADD(ctx, journal_rules)) < 0)
		return r;
	if ((r = add_kill_list(ctx)) < 0)
		return r;
#ifdef RP_SANITIZER
	if ((r = ADD(ctx, sanitizer_rules)) < 0)
		return r;
#endif
	/* abort(): SIGABRT to one of our own threads, nothing else */
	const struct sb_rule self_abort[] = {
		ALLOW2(tgkill, ARG_EQ(0, getpid()), ARG_EQ(2, SIGABRT)),
	};
	return ADD(ctx, self_abort);
}

int sandbox_enter(const struct sandbox_opts *o)
{
	/* Set here rather than by seccomp_load, and first: TSYNC carries it
	 * into every thread with the filter. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	/* No core dumps of client pages and templates, and no ptrace or
	 * /proc/PID access by other processes of our uid. /proc/self/fd
	 * still works: a task may always look at its own fds. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		return -errno;
	scmp_filter_ctx ctx = seccomp_init(default_action());
	if (!ctx)
		return -ENOMEM;
	int r = build_filter(ctx, o);
	if (r == 0)
		r = seccomp_load(ctx); /* the kernel's errno (SYSRAWRC) */
	seccomp_release(ctx);
	if (r < 0)
		return r;
	log_info("sandbox: seccomp filter installed in every thread");
	return 0;
}

void sandbox_forbidden_syscall(void)
{
	static char *const argv[] = { "true", NULL };

	/* What an exploit would do first; nothing in the daemon execs. If the
	 * filter let it through, /bin/true replaces us and exits 0. */
	execve("/bin/true", argv, NULL);
}

void sandbox_denied_syscall(void)
{
	struct utsname u;

	/* Nothing in the daemon asks for the kernel's name. */
	if (syscall(SYS_uname, &u) < 0 && errno == ENOSYS)
		log_notice("--debug-denied-syscall: uname(2) got ENOSYS; serving on");
	else
		log_err("--debug-denied-syscall: uname(2) was allowed");
	/* Nor opens a file, even read-only (only a sanitizer build's runtime
	 * may): with CAP_SYS_PTRACE that would reach /proc/PID/mem of every
	 * process on the host (docs/security.md). */
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOSYS)
		log_notice("--debug-denied-syscall: a read-only open(2) got ENOSYS; serving on");
	else
		log_err("--debug-denied-syscall: a read-only open(2) was allowed");
	if (fd >= 0)
		close(fd);
}
