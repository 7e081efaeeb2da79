/* The conformance suite's view of an implementation of reference pages.
 *
 * A backend makes mappings with the semantics of the MAP_REFPAGE kernel
 * patch: private, untouched pages read as the 4 KiB page at refpage, the
 * first write to a page makes a private copy. Everything else a case does
 * (munmap, mremap, mprotect, madvise, fork, threads, read(2)) is plain
 * system calls on the mapping, as a program would do them.
 *
 *   backend_kernel    mmap(addr, len, prot, flags | MAP_REFPAGE, -1, refpage)
 *                     on a kernel carrying tests/kernel/0001-...patch;
 *   backend_refpaged  refpage_mmap() from librefpage, served by refpaged
 *                     ($REFPAGED_SOCKET or the default socket). */
#ifndef CONFORMANCE_BACKEND_H
#define CONFORMANCE_BACKEND_H

#include <stddef.h>

/* The patch's flag (include/uapi/asm-generic/mman-common.h in the port). */
#ifndef MAP_REFPAGE
#define MAP_REFPAGE 0x200000
#endif

struct backend {
	const char *name;
	/* 1 when usable here; else 0 and a reason in why. */
	int (*available)(char *why, size_t whylen);
	/* Like mmap(addr, len, prot, flags, ...): flags carry the mapping type
	 * (MAP_PRIVATE normally) and modifiers such as MAP_FIXED. MAP_FAILED
	 * and errno on error. */
	void *(*map)(void *addr, size_t len, int prot, int flags, const void *refpage);
	int (*unmap)(void *addr, size_t len);
};

extern const struct backend backend_refpaged;
extern const struct backend backend_kernel;

#endif
