/* refpaged's sandbox: capabilities, no_new_privs, non-dumpable, seccomp.
 *
 * Two steps, because capability sets are per thread and a thread starts
 * with its creator's: drop the capabilities before the first worker thread
 * exists, install the seccomp filter (synchronised into every thread) once
 * everything is set up, just before READY=1. */
#ifndef REFPAGED_SANDBOX_H
#define REFPAGED_SANDBOX_H

/* Keep CAP_SYS_PTRACE (UFFD_FEATURE_EVENT_FORK needs it), drop every other
 * capability from the effective, permitted and inheritable sets and, when
 * we may (CAP_SETPCAP), from the bounding set; clear the ambient set (the
 * daemon never execve's; the exec helper of handover.c raises
 * CAP_SYS_PTRACE in it again for the binary it starts). Having fewer capabilities already, CAP_SYS_PTRACE
 * included, is not an error. Call it before starting any thread. 0 or
 * -errno. */
int sandbox_drop_caps(void);

struct sandbox_opts {
	int notify;        /* $NOTIFY_SOCKET is set: sd_notify needs a socket */
	int unlink_socket; /* we bound the socket path and unlink it at exit */
	int journal_fd;    /* the state journal (the restart wing), written to, -1: none */
};

/* PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE 0, then the seccomp allow-list in
 * every thread of the process. 0 or -errno.
 *
 * What the filter does with a system call it does not allow (the reasons
 * are in sandbox.c and docs/security.md): the calls only an attacker who
 * took over the daemon would make (execve, ptrace, process_vm_writev,
 * module loading, mount...) kill the process; any other fails with ENOSYS,
 * is counted (STATS denied_syscalls) and logged with its number, and the
 * daemon goes on serving: a library path we did not foresee (glibc's heap
 * trimming opened a file under memory pressure) must not become an outage
 * for every user. */
int sandbox_enter(const struct sandbox_opts *o);

/* Test hooks, after sandbox_enter: a call on the kill list (returns only
 * if the filter let it through), and one that is merely denied. */
void sandbox_forbidden_syscall(void);
void sandbox_denied_syscall(void);

#endif
