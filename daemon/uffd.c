/* Every ioctl on a userfaultfd: see uffd.h. */
#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "acct.h"
#include "stats.h"

#define PAGE 4096ull

/* A 4-level x86-64 kernel's, until uffd_learn_top says otherwise. */
static uint64_t user_top = (1ull << 47) - PAGE;
static uint64_t user_bottom = 65536;

enum uffd_class uffd_classify(int err, struct acct *a)
{
	switch (err) {
	case 0:
		return UFFD_OK;
	case EEXIST:
		acct_stat_add(a, PROTO_STAT_ERR_EEXIST, 1);
		return UFFD_EXISTS;
	case EAGAIN:
		acct_stat_add(a, PROTO_STAT_ERR_EAGAIN, 1);
		return UFFD_RETRY;
	case ENOMEM:
		acct_stat_add(a, PROTO_STAT_ERR_ENOMEM, 1);
		return UFFD_NOMEM;
	case ENOENT:
		acct_stat_add(a, PROTO_STAT_ERR_ENOENT, 1);
		return UFFD_GONE_RANGE;
	case ESRCH:
		acct_stat_add(a, PROTO_STAT_ERR_ESRCH, 1);
		return UFFD_GONE_MM;
	default:
		acct_stat_add(a, PROTO_STAT_ERR_OTHER, 1);
		return UFFD_BUG;
	}
}

int uffd_is_uffd(int fd)
{
	char path[64], link[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return 0;
	link[n] = '\0';
	return !strcmp(link, "anon_inode:[userfaultfd]");
}

int uffd_handshake(int fd, uint64_t features, uint64_t *granted)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (!uffd_is_uffd(fd))
		return -EBADF;
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	*granted = api.features;
	return 0;
}

int uffd_register(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	return ioctl(fd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

int uffd_unregister(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	return ioctl(fd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

long uffd_fill(int fd, uint64_t addr, unsigned n, const void *src, int dontwake)
{
	if (src) {
		struct uffdio_copy c = {
			.dst = addr,
			.src = (uintptr_t)src,
			.len = (uint64_t)n * PAGE,
			.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};
		if (ioctl(fd, UFFDIO_COPY, &c) == 0)
			return n;
		return c.copy > 0 ? (long)(c.copy / PAGE) : -errno;
	}
	struct uffdio_zeropage z = {
		.range = { .start = addr, .len = (uint64_t)n * PAGE },
		.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
	};
	if (ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0)
		return n;
	return z.zeropage > 0 ? (long)(z.zeropage / PAGE) : -errno;
}

int uffd_wake(int fd, uint64_t start, uint64_t end)
{
	struct uffdio_range r = { .start = start, .len = end - start };

	return ioctl(fd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

int uffd_probe(int fd, uint64_t addr)
{
	struct uffdio_writeprotect wp = { .range = { .start = addr, .len = PAGE }, .mode = 0 };

	if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) == 0)
		return 0;
	return errno == EAGAIN || errno == ESRCH ? -errno : 0;
}

uint64_t uffd_user_top(void)
{
	return user_top;
}

uint64_t uffd_user_bottom(void)
{
	return user_bottom;
}

/* The highest page end a UFFDIO_WAKE of one page is accepted for:
 * validate_range (fs/userfaultfd.c) refuses what ends above the address
 * space's task_size, and nothing else of a page-aligned page at or above
 * mmap_min_addr. Bisection over page numbers. */
static uint64_t top_by_wake(int fd)
{
	uint64_t lo = user_bottom / PAGE, hi = 1ull << 52; /* lo ok, hi not */

	if (uffd_wake(fd, lo * PAGE, (lo + 1) * PAGE) < 0)
		return 0;
	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (uffd_wake(fd, mid * PAGE, (mid + 1) * PAGE) == 0)
			lo = mid;
		else
			hi = mid;
	}
	return (lo + 1) * PAGE;
}

uint64_t uffd_top_of(int fd)
{
	if (uffd_wake(fd, user_bottom, user_top) == 0)
		return user_top;
	uint64_t t = top_by_wake(fd);
	return t ? t : user_top;
}

static void learn_bottom(void)
{
	FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
	unsigned long long v = 65536;

	if (f) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 65536;
		fclose(f);
	}
	v = (v + PAGE - 1) & ~(PAGE - 1);
	user_bottom = v ? v : PAGE;
}

int uffd_learn_top(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd;

	learn_bottom();
	/* Our own address space is as large as any 64-bit client's. */
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return -errno;
	int r = ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : 0;
	uint64_t t = r ? 0 : top_by_wake(fd);
	close(fd);
	if (!t)
		return r ? r : -EINVAL;
	user_top = t;
	return 0;
}
