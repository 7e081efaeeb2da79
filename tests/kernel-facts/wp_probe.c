/* Fact a: UFFDIO_WRITEPROTECT with mode 0 (or DONTWAKE) as a probe.
 * Run as root for the FORK case (EVENT_FORK needs CAP_SYS_PTRACE).
 *   cc -O2 -Wall -pthread -o wp_probe wp_probe.c && ./wp_probe */
#include "kf.h"
#include <pthread.h>
#include <sys/wait.h>

#define DW UFFDIO_WRITEPROTECT_MODE_DONTWAKE

static uint64_t pagemap(void *p)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	pread(fd, &e, 8, (off_t)((uintptr_t)p / PAGE * 8));
	close(fd);
	return e;
}

static int resident(void *p)
{
	unsigned char v = 0;
	mincore(p, PAGE, &v);
	return v & 1;
}

static void no_effect(void)
{
	int fd = kf_uffd(1, 0);
	uint8_t *r = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	r[0] = 0x11;
	printf("API with features 0 (no WP feature), user-mode only: fd %d\n", fd);
	printf("REGISTER MISSING on 4 pages: %s\n",
	       kf_err(kf_register(fd, (uintptr_t)r, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING)));
	uint64_t pm0 = pagemap(r), pm1 = pagemap(r + PAGE);
	int e0 = kf_wp(fd, (uintptr_t)r, 4 * PAGE, 0);
	int e1 = kf_wp(fd, (uintptr_t)r, 4 * PAGE, DW);
	int e2 = kf_wp(fd, (uintptr_t)r + PAGE, PAGE, DW);
	printf("WRITEPROTECT mode 0 over the range: %s; mode DONTWAKE: %s; on a missing page: %s\n",
	       kf_err(e0), kf_err(e1), kf_err(e2));
	struct uffd_msg m;
	ssize_t n = read(fd, &m, sizeof(m));
	printf("after: page 0 holds %#x, pagemap flag bits %s (before %#llx after %#llx), page 1 "
	       "resident %d (still missing), pagemap %s, queued messages: %s\n",
	       r[0], (pm0 >> 55) == (pagemap(r) >> 55) ? "unchanged" : "CHANGED",
	       (unsigned long long)(pm0 >> 55), (unsigned long long)(pagemap(r) >> 55),
	       resident(r + PAGE), pm1 == pagemap(r + PAGE) ? "unchanged" : "CHANGED",
	       n < 0 && errno == EAGAIN ? "none" : "SOME");
	r[0] = 0x22; /* still writable, no fault */
	printf("a write to page 0 afterwards: no fault, reads %#x\n", r[0]);

	/* Where nothing is registered, or nothing is mapped. */
	uint8_t *h = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	munmap(h + PAGE, PAGE);
	printf("WRITEPROTECT DONTWAKE on: an unregistered mapping %s, an unmapped hole %s, "
	       "0x10000 (nothing mapped) %s\n",
	       kf_err(kf_wp(fd, (uintptr_t)h, PAGE, DW)),
	       kf_err(kf_wp(fd, (uintptr_t)h + PAGE, PAGE, DW)),
	       kf_err(kf_wp(fd, 0x10000, PAGE, DW)));
	printf("  a range from a registered page into an unregistered one %s\n",
	       kf_err(kf_wp(fd, (uintptr_t)r + 3 * PAGE, 2 * PAGE, DW)));
	printf("  0x7ffffffff000 - 4096 (last page below TASK_SIZE) %s, 0x7ffffffff000 %s, "
	       "0 (below vm.mmap_min_addr: no such check) %s, unaligned %s, mode WP|DONTWAKE %s\n",
	       kf_err(kf_wp(fd, 0x7ffffffff000ull - PAGE, PAGE, DW)),
	       kf_err(kf_wp(fd, 0x7ffffffff000ull, PAGE, DW)), kf_err(kf_wp(fd, 0, PAGE, DW)),
	       kf_err(kf_wp(fd, (uintptr_t)r + 1, PAGE, DW)),
	       kf_err(kf_wp(fd, (uintptr_t)r, PAGE, DW | UFFDIO_WRITEPROTECT_MODE_WP)));

	/* The one case with an effect: a range the uffd's holder registered
	 * for WP itself (the daemon never does; a client keeping a duplicate
	 * could, on its own memory). */
	uint8_t *w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w[0] = 1;
	int er = kf_register(fd, (uintptr_t)w, PAGE,
			     UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	int ew = kf_wp(fd, (uintptr_t)w, PAGE, UFFDIO_WRITEPROTECT_MODE_WP);
	uint64_t a = pagemap(w);
	int e3 = kf_wp(fd, (uintptr_t)w, PAGE, DW);
	printf("WP-registered page (register %s, protect %s): uffd-wp bit %d -> mode 0 %s -> bit %d "
	       "(content %#x untouched)\n",
	       kf_err(er), kf_err(ew), (int)(a >> 57 & 1), kf_err(e3), (int)(pagemap(w) >> 57 & 1),
	       w[0]);
	close(fd);
}

static void gone(void)
{
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = kf_uffd(1, 0);
		void *r = mmap((void *)0x600000000000, PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		kf_register(fd, (uintptr_t)r, PAGE, UFFDIO_REGISTER_MODE_MISSING);
		kf_send_fd(sv[1], fd);
		char c;
		read(sv[1], &c, 1);
		_exit(0);
	}
	int fd = kf_recv_fd(sv[0]);
	printf("live other mm, registered MISSING: WRITEPROTECT %s\n",
	       kf_err(kf_wp(fd, 0x600000000000, PAGE, DW)));
	write(sv[0], "x", 1);
	/* exit_mm() releases the mm before the task becomes a zombie */
	usleep(100000);
	static char src[PAGE];
	printf("mm gone (process exited, not yet reaped): WRITEPROTECT %s, COPY %s, ZEROPAGE %s, "
	       "REGISTER %s, UNREGISTER %s, WAKE %s\n",
	       kf_err(kf_wp(fd, 0x600000000000, PAGE, DW)),
	       kf_err(kf_copy(fd, 0x600000000000, src, PAGE)),
	       kf_err(kf_zeropage(fd, 0x600000000000, PAGE)),
	       kf_err(kf_register(fd, 0x600000000000, PAGE, UFFDIO_REGISTER_MODE_MISSING)),
	       kf_err(kf_unregister(fd, 0x600000000000, PAGE)),
	       kf_err(kf_wake(fd, 0x600000000000, PAGE)));
	waitpid(pid, NULL, 0);
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

struct ev {
	int kind;
	uint8_t *p;
};

static void *trigger(void *arg)
{
	struct ev *e = arg;
	switch (e->kind) {
	case UFFD_EVENT_UNMAP:
		munmap(e->p, PAGE);
		break;
	case UFFD_EVENT_REMAP:
		mremap(e->p, PAGE, 2 * PAGE, MREMAP_MAYMOVE);
		break;
	case UFFD_EVENT_REMOVE:
		madvise(e->p, PAGE, MADV_DONTNEED);
		break;
	case UFFD_EVENT_FORK: {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		waitpid(p, NULL, 0);
		break;
	}
	}
	return NULL;
}

static void in_flight(const char *name, int kind, uint64_t feature)
{
	int fd = kf_uffd(0, feature);
	if (fd < 0) {
		printf("%s in flight: cannot enable the event (%s)\n", name, strerror(errno));
		return;
	}
	uint8_t *r = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	r[0] = 1;
	kf_register(fd, (uintptr_t)r, PAGE, UFFDIO_REGISTER_MODE_MISSING);
	struct ev e = { kind, r };
	pthread_t t;
	pthread_create(&t, NULL, trigger, &e);
	usleep(100000);
	int probe = kf_wp(fd, 0x10000, PAGE, DW); /* nowhere near the event */
	static char src[PAGE];
	int copy = kf_copy(fd, 0x10000, src, PAGE);
	struct uffd_msg m;
	ssize_t n = read(fd, &m, sizeof(m));
	if (n == sizeof(m) && m.event == UFFD_EVENT_FORK)
		close((int)m.arg.fork.ufd);
	pthread_join(t, NULL);
	int after = kf_wp(fd, 0x10000, PAGE, DW);
	printf("%s in flight (event not read yet): WRITEPROTECT at an unrelated address %s, COPY %s; "
	       "event read (%s); after: %s\n",
	       name, kf_err(probe), kf_err(copy), n == sizeof(m) && m.event == kind ? "yes" : "NO",
	       kf_err(after));
	close(fd);
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	no_effect();
	gone();
	in_flight("UNMAP", UFFD_EVENT_UNMAP, UFFD_FEATURE_EVENT_UNMAP);
	in_flight("REMAP", UFFD_EVENT_REMAP, UFFD_FEATURE_EVENT_REMAP);
	in_flight("REMOVE", UFFD_EVENT_REMOVE, UFFD_FEATURE_EVENT_REMOVE);
	in_flight("FORK", UFFD_EVENT_FORK, UFFD_FEATURE_EVENT_FORK);
	return 0;
}
