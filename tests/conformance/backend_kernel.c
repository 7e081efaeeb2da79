/* The MAP_REFPAGE kernel patch, called directly. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend.h"

static void *kernel_map(void *addr, size_t len, int prot, int flags, const void *refpage)
{
	/* No MAP_ANONYMOUS: the patch takes MAP_PRIVATE|MAP_REFPAGE with fd -1
	 * and the reference page's address as the offset. (With MAP_ANONYMOUS a
	 * stock kernel would silently ignore the unknown flag and map zeros.) */
	return mmap(addr, len, prot, flags | MAP_REFPAGE, -1, (off_t)(uintptr_t)refpage);
}

static int kernel_unmap(void *addr, size_t len)
{
	return munmap(addr, len);
}

static int kernel_available(char *why, size_t whylen)
{
	long pg = sysconf(_SC_PAGESIZE);
	unsigned char *ref = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ref == MAP_FAILED) {
		snprintf(why, whylen, "mmap: %s", strerror(errno));
		return 0;
	}
	memset(ref, 0xA5, (size_t)pg);
	unsigned char *p = kernel_map(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, ref);
	int ok = 0;
	if (p == MAP_FAILED) {
		if (errno == EBADF)
			snprintf(why, whylen,
				 "not a MAP_REFPAGE kernel: MAP_PRIVATE|MAP_REFPAGE "
				 "with fd -1 fails with EBADF (the flag is unknown, the "
				 "request is taken as a file mapping)");
		else
			snprintf(why, whylen, "MAP_REFPAGE probe failed: %s", strerror(errno));
	} else {
		ok = p[0] == 0xA5 && p[pg - 1] == 0xA5;
		if (!ok)
			snprintf(why, whylen,
				 "MAP_REFPAGE accepted but an untouched page "
				 "reads 0x%02x, not the reference page",
				 p[0]);
		munmap(p, (size_t)pg);
	}
	munmap(ref, (size_t)pg);
	return ok;
}

const struct backend backend_kernel = {
	.name = "kernel",
	.available = kernel_available,
	.map = kernel_map,
	.unmap = kernel_unmap,
};
