/* The fork-gate argument, setuid without exec: a root parent holding its
 * child's uffd (from a UFFD_EVENT_FORK) keeps it working after the child
 * drops to another uid, while ptrace access to that child then needs
 * CAP_SYS_PTRACE (uids differ, and the credential change made it
 * non-dumpable). Run as root.
 *   cc -O2 -Wall -pthread -o setuid_child setuid_child.c && ./setuid_child */
#include "kf.h"
#include <linux/capability.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>

static volatile int target = 1;
static int sv[2];
static uint8_t *R;

static void child(void)
{
	char c;
	int r = setresgid(65534, 65534, 65534) | setresuid(65534, 65534, 65534);
	int d = prctl(PR_GET_DUMPABLE);
	write(sv[1], &r, sizeof(r));
	write(sv[1], &d, sizeof(d));
	read(sv[1], &c, 1);
	int v = R[0]; /* a fault on the inherited registration */
	write(sv[1], &v, sizeof(v));
	read(sv[1], &c, 1);
	v = target;
	write(sv[1], &v, sizeof(v));
	read(sv[1], &c, 1);
	_exit(0);
}

static void *forker(void *arg)
{
	pid_t p = (pid_t)syscall(SYS_fork);
	if (p == 0)
		child();
	*(pid_t *)arg = p;
	return NULL;
}

static int poke(pid_t pid, int v)
{
	struct iovec l = { .iov_base = &v, .iov_len = sizeof(v) };
	struct iovec r = { .iov_base = (void *)&target, .iov_len = sizeof(v) };
	return process_vm_writev(pid, &l, 1, &r, 1, 0) == sizeof(v) ? 0 : errno;
}

static int drop_ptrace_cap(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) < 0)
		return errno;
	d[0].effective &= ~(1u << CAP_SYS_PTRACE);
	d[0].permitted &= ~(1u << CAP_SYS_PTRACE);
	return syscall(SYS_capset, &h, d) < 0 ? errno : 0;
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = kf_uffd(0, UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_THREAD_ID);
	if (fd < 0) {
		perror("uffd with EVENT_FORK (run as root)");
		return 77;
	}
	R = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	kf_register(fd, (uintptr_t)R, PAGE, UFFDIO_REGISTER_MODE_MISSING);
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	pid_t pid = 0;
	pthread_t t;
	pthread_create(&t, NULL, forker, &pid);
	struct uffd_msg m;
	while (read(fd, &m, sizeof(m)) != sizeof(m))
		usleep(1000);
	int cu = (int)m.arg.fork.ufd;
	pthread_join(t, NULL);
	int r, d, v;
	read(sv[0], &r, sizeof(r));
	read(sv[0], &d, sizeof(d));
	printf("child %d: setresuid(65534) %s, now dumpable %d\n", (int)pid, r ? "failed" : "ok",
	       d);
	printf("root parent with CAP_SYS_PTRACE: process_vm_writev into the child %s\n",
	       poke(pid, 5) ? "refused" : "works");
	int dr = drop_ptrace_cap();
	int pe = poke(pid, 6); /* after the drop: arguments are evaluated in any order */
	printf("parent drops CAP_SYS_PTRACE: %s; process_vm_writev now %s\n", dr ? "failed" : "ok",
	       pe ? "refused (EPERM)" : "works");
	write(sv[0], "f", 1);
	static uint8_t page[PAGE] __attribute__((aligned(4096)));
	memset(page, 0x77, PAGE);
	struct uffd_msg f;
	for (double end = kf_now() + 5; kf_now() < end; usleep(1000))
		if (read(cu, &f, sizeof(f)) == sizeof(f))
			break;
	printf("the child's fault arrives on its uffd (ptid %u); UFFDIO_COPY: %s\n",
	       f.arg.pagefault.feat.ptid, kf_err(kf_copy(cu, (uintptr_t)R, page, PAGE)));
	read(sv[0], &v, sizeof(v));
	printf("the child (uid 65534, non-dumpable) reads %#x: the uffd outlives the uid change, "
	       "it follows the mm\n",
	       v);
	write(sv[0], "t", 1);
	read(sv[0], &v, sizeof(v));
	write(sv[0], "x", 1);
	waitpid(pid, NULL, 0);
	return 0;
}
