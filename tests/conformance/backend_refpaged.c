/* refpaged through librefpage's drop-in for the patch, refpage_mmap(). Pages
 * are unmapped with plain munmap(2), as a program written for the kernel
 * patch would do it (the daemon follows UFFD_EVENT_UNMAP). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <refpage.h>

#include "backend.h"

static void *refpaged_map(void *addr, size_t len, int prot, int flags, const void *refpage)
{
	return refpage_mmap(addr, len, prot, flags, refpage);
}

static int refpaged_unmap(void *addr, size_t len)
{
	return munmap(addr, len);
}

static int refpaged_available(char *why, size_t whylen)
{
	long pg = sysconf(_SC_PAGESIZE);
	unsigned char ref[4096];
	const char *sock = getenv("REFPAGED_SOCKET");

	memset(ref, 0x5A, sizeof(ref));
	unsigned char *p = refpage_mmap(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, ref);
	if (p == MAP_FAILED) {
		snprintf(why, whylen, "refpage_mmap failed (%s; socket %s)", strerror(errno),
			 sock ? sock : "default");
		return 0;
	}
	int ok = p[0] == 0x5A && p[pg - 1] == 0x5A;
	if (!ok)
		snprintf(why, whylen,
			 "refpage_mmap mapped, but an untouched page reads "
			 "0x%02x: the daemon does not serve it",
			 p[0]);
	munmap(p, (size_t)pg);
	return ok;
}

const struct backend backend_refpaged = {
	.name = "refpaged",
	.available = refpaged_available,
	.map = refpaged_map,
	.unmap = refpaged_unmap,
};
