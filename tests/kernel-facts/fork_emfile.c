/* Fact b: read(2) of a uffd with a UFFD_EVENT_FORK queued while the
 * reader's fd table is full (RLIMIT_NOFILE). Needs root (EVENT_FORK needs
 * CAP_SYS_PTRACE).
 *   cc -O2 -Wall -pthread -o fork_emfile fork_emfile.c && ./fork_emfile */
#include "kf.h"
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/wait.h>

static atomic_int forked;
static double fork_returned;

/* The raw syscall: glibc's fork() holds its malloc and stack-cache locks
 * across the system call, so the other threads of this program would
 * block in malloc or pthread_create while the fork waits for its event. */
static void *do_fork(void *arg)
{
	(void)arg;
	pid_t p = (pid_t)syscall(SYS_fork);
	if (p == 0)
		syscall(SYS_exit_group, 0);
	fork_returned = kf_now();
	atomic_store(&forked, 1);
	waitpid(p, NULL, 0);
	return NULL;
}

static void *do_unmap(void *arg)
{
	munmap(arg, PAGE);
	return NULL;
}

static void *do_fault(void *arg)
{
	(void)*(volatile char *)arg;
	return NULL;
}

static int lowest_free(void)
{
	int fd = dup(0);
	close(fd);
	return fd;
}

static void limit(rlim_t n)
{
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = n;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static const char *ev(const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_FORK:
		return "FORK";
	case UFFD_EVENT_UNMAP:
		return "UNMAP";
	case UFFD_EVENT_PAGEFAULT:
		return "PAGEFAULT";
	default:
		return "?";
	}
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = kf_uffd(0, UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_UNMAP);
	if (fd < 0) {
		perror("uffd with EVENT_FORK (run as root)");
		return 77;
	}
	uint8_t *r = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	kf_register(fd, (uintptr_t)r, 3 * PAGE, UFFDIO_REGISTER_MODE_MISSING);
	struct rlimit orig;
	getrlimit(RLIMIT_NOFILE, &orig);

	/* 1. A FORK alone, the table full. */
	pthread_t f, u;
	int low = lowest_free();
	limit((rlim_t)low);
	double t0 = kf_now();
	pthread_create(&f, NULL, do_fork, NULL);
	usleep(100000);
	struct uffd_msg m[4];
	ssize_t n = read(fd, m, sizeof(m));
	int e = errno;
	ssize_t n2 = read(fd, m, sizeof(m));
	int e2 = errno;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	poll(&p, 1, 0);
	printf("fd table full (RLIMIT_NOFILE %d): read -> %zd (%s), again -> %zd (%s); poll says %s; "
	       "forking thread returned: %s\n",
	       low, n, n < 0 ? kf_err(e) : "-", n2, n2 < 0 ? kf_err(e2) : "-",
	       p.revents & POLLIN ? "readable" : "not readable",
	       atomic_load(&forked) ? "yes" : "no, still blocked in fork()");

	/* 2. An UNMAP queued behind it while it waits. */
	pthread_create(&u, NULL, do_unmap, r + 2 * PAGE);
	usleep(100000);
	limit(orig.rlim_cur);
	n = read(fd, m, sizeof(m[0]));
	printf("an UNMAP queued after the FORK; room made: first read gives %s",
	       n > 0 ? ev(&m[0]) : "error");
	if (n > 0 && m[0].event == UFFD_EVENT_FORK)
		close((int)m[0].arg.fork.ufd);
	n = read(fd, m, sizeof(m[0]));
	printf(", second gives %s\n", n > 0 ? ev(&m[0]) : "error");
	if (n > 0 && m[0].event == UFFD_EVENT_FORK)
		close((int)m[0].arg.fork.ufd);
	pthread_join(f, NULL);
	pthread_join(u, NULL);
	printf("the forking thread stayed in fork() for %.0f ms (until the event was read)\n",
	       (fork_returned - t0) * 1e3);

	/* 3. A batch read with a fault ahead of the FORK. */
	atomic_store(&forked, 0);
	pthread_t pf;
	pthread_create(&pf, NULL, do_fault, r);
	usleep(50000);
	low = lowest_free();
	limit((rlim_t)low);
	pthread_create(&f, NULL, do_fork, NULL);
	usleep(100000);
	n = read(fd, m, sizeof(m));
	e = errno;
	printf("a fault and a FORK queued, table full, read of 4 messages -> %zd bytes (%s%s)", n,
	       n > 0 ? ev(&m[0]) : kf_err(e), n > 0 ? ", the FORK's error not reported" : "");
	n = read(fd, m, sizeof(m));
	e = errno;
	printf("; next read -> %zd (%s)\n", n, n < 0 ? kf_err(e) : ev(&m[0]));
	e = kf_zeropage(fd, (uintptr_t)r, PAGE);
	printf("serving the fault while the FORK is unread: ZEROPAGE %s\n", kf_err(e));
	limit(orig.rlim_cur);
	n = read(fd, m, sizeof(m));
	printf("room made: read gives %s", n > 0 ? ev(&m[0]) : "error");
	if (n > 0 && m[0].event == UFFD_EVENT_FORK)
		close((int)m[0].arg.fork.ufd);
	/* mmap_changing drops when the forking thread wakes up after the
	 * read, not in the read itself. */
	int tries = 1;
	double t1 = kf_now();
	while ((e = kf_zeropage(fd, (uintptr_t)r, PAGE)) == EAGAIN && tries < 1000000)
		tries++;
	printf("; then ZEROPAGE %s after %d tries (%.1f us: EAGAIN until the forker has woken)\n",
	       kf_err(e), tries, (kf_now() - t1) * 1e6);
	pthread_join(pf, NULL);
	pthread_join(f, NULL);

	/* 3b. An UNMAP queued before the failed read: the FORK goes back to
	 * the head of event_wqh, behind it. */
	atomic_store(&forked, 0);
	uint8_t *r3 = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			   0);
	kf_register(fd, (uintptr_t)r3, 2 * PAGE, UFFDIO_REGISTER_MODE_MISSING);
	low = lowest_free();
	limit((rlim_t)low);
	pthread_create(&f, NULL, do_fork, NULL);
	usleep(100000);
	pthread_create(&u, NULL, do_unmap, r3 + PAGE);
	usleep(100000);
	n = read(fd, m, sizeof(m[0]));
	e = errno;
	limit(orig.rlim_cur);
	printf("FORK then UNMAP queued, then a read fails (%s); room made: reads give ",
	       n < 0 ? kf_err(e) : ev(&m[0]));
	for (int i = 0; i < 2; i++) {
		n = read(fd, m, sizeof(m[0]));
		printf("%s%s", i ? ", " : "", n > 0 ? ev(&m[0]) : "error");
		if (n > 0 && m[0].event == UFFD_EVENT_FORK)
			close((int)m[0].arg.fork.ufd);
	}
	printf("\n");
	pthread_join(f, NULL);
	pthread_join(u, NULL);

	/* 4. Nobody reads. (a) The uffd is held by another process only (as
	 * refpaged holds a client's): its close() releases the ctx and the
	 * forker goes on. (b) The forking process holds it itself: its
	 * child-to-be already has a copy of the fd table (copy_files runs
	 * before copy_mm), so closing it in the parent releases nothing. */
	close(fd);
	for (int holder_is_self = 0; holder_is_self < 2; holder_is_self++) {
		int sv[2];
		socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
		pid_t t = fork();
		if (t == 0) {
			int fd2 = kf_uffd(0, UFFD_FEATURE_EVENT_FORK);
			uint8_t *r2 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			kf_register(fd2, (uintptr_t)r2, PAGE, UFFDIO_REGISTER_MODE_MISSING);
			if (!holder_is_self) {
				kf_send_fd(sv[1], fd2);
				close(fd2);
			}
			atomic_store(&forked, 0);
			pthread_create(&f, NULL, do_fork, NULL);
			usleep(100000);
			int blocked = !atomic_load(&forked);
			if (holder_is_self)
				close(fd2);
			else
				write(sv[1], "c", 1);
			usleep(200000);
			printf("FORK pending, nobody reads, uffd held by %s: fork blocked %s; 200 ms after "
			       "close() of the only other copy: fork returned %s\n",
			       holder_is_self ? "the forking process" : "another process",
			       blocked ? "yes" : "no",
			       atomic_load(&forked) ? "yes" : "NO, still blocked");
			_exit(0);
		}
		int held = holder_is_self ? -1 : kf_recv_fd(sv[0]);
		char c;
		if (!holder_is_self && read(sv[0], &c, 1) == 1)
			close(held);
		usleep(400000);
		kill(t, SIGKILL);
		waitpid(t, NULL, 0);
		close(sv[0]);
		close(sv[1]);
	}
	return 0;
}
