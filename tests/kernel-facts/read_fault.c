/* Fact h: what a userfaultfd tells of a read fault: a read the kernel
 * makes on a thread's behalf (write(2) out of a page never touched) comes
 * as the same message as a load in user mode (docs/report.md).
 *
 * A thread write(2)s a missing registered page to a file, reads another and
 * writes a third; the handler prints each fault's flags and thread:
 *   write(2)'s read: flags 0 (no UFFD_PAGEFAULT_FLAG_WRITE), the thread
 *   a load:          flags 0, the thread
 *   a store:         flags 1 (UFFD_PAGEFAULT_FLAG_WRITE)
 * Seen on 6.18.44 as root with a full uffd (a user-mode-only one never
 * sees the kernel's read: write(2) fails with EFAULT). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static char *area;

static void *toucher(void *arg)
{
	char path[] = "/tmp/read_fault.XXXXXX";
	int fd = mkstemp(path);

	(void)arg;
	unlink(path);
	printf("write(2) of page 0: %zd\n", write(fd, area, 4096));
	volatile char c = area[4096];
	(void)c;
	area[8192] = 1;
	close(fd);
	return NULL;
}

int main(void)
{
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_THREAD_ID };
	static char page[4096];
	pthread_t t;

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		perror("userfaultfd");
		return 1;
	}
	area = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register r = { .range = { (unsigned long)area, 3 * 4096 },
				     .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (area == MAP_FAILED || ioctl(uffd, UFFDIO_REGISTER, &r)) {
		perror("register");
		return 1;
	}
	memset(page, 0xaa, sizeof(page));
	pthread_create(&t, NULL, toucher, NULL);
	for (int i = 0; i < 3; i++) {
		struct uffd_msg m;
		struct pollfd p = { uffd, POLLIN, 0 };

		poll(&p, 1, -1);
		if (read(uffd, &m, sizeof(m)) != sizeof(m))
			return 1;
		printf("fault at page %lu: flags %llu, thread %u\n",
		       (unsigned long)(m.arg.pagefault.address - (unsigned long)area) / 4096,
		       (unsigned long long)m.arg.pagefault.flags, m.arg.pagefault.feat.ptid);
		struct uffdio_copy c = { .dst = m.arg.pagefault.address & ~4095ul,
					 .src = (unsigned long)page,
					 .len = 4096 };
		ioctl(uffd, UFFDIO_COPY, &c);
	}
	pthread_join(t, NULL);
	return 0;
}
