/* Every ioctl the daemon makes on a userfaultfd, and the one place their
 * errors are classified.
 *
 * All of these act on the uffd's own address space (the client's), from
 * whichever daemon thread calls them. Most take that address space's
 * mmap_lock or a VMA lock, so a client holding its own mmap_lock for a long
 * time (a fork of a large process, an mprotect of a large populated range)
 * can make them wait: the main loop never calls any of them but the
 * handshake (UFFDIO_API takes no lock of the client's); the worker that
 * owns the address space does (docs/design.md). */
#ifndef REFPAGED_UFFD_H
#define REFPAGED_UFFD_H

#include <stdint.h>

struct acct;

/* What a failed ioctl means for the caller. */
enum uffd_class {
	UFFD_OK,         /* done */
	UFFD_EXISTS,     /* EEXIST: already there: wake the thread, move on */
	UFFD_RETRY,      /* EAGAIN: the mm is changing under an event not read yet:
			  * read the uffd, then try again */
	UFFD_NOMEM,      /* ENOMEM: the kernel could not allocate (the client's
			  * memory limit): back off, bounded */
	UFFD_GONE_RANGE, /* ENOENT: not registered (any more) there */
	UFFD_GONE_MM,    /* ESRCH: the process is gone */
	UFFD_BUG,        /* anything else */
};

/* err (a positive errno, or 0) classified and counted in STATS (for a's
 * uid too, a may be NULL). */
enum uffd_class uffd_classify(int err, struct acct *a);

/* 1 if fd is a userfaultfd (its /proc/self/fd link): the only way to tell
 * one from an eventfd or a pipe before trusting it with ioctls. */
int uffd_is_uffd(int fd);
/* Check that fd is a uffd, do the API handshake asking for features, make
 * it non-blocking. Returns 0 and the features granted, or -errno (-EBADF:
 * not a uffd; -EINVAL: refused, e.g. already done). */
int uffd_handshake(int fd, uint64_t features, uint64_t *granted);

int uffd_register(int fd, uint64_t start, uint64_t len);
int uffd_unregister(int fd, uint64_t start, uint64_t len);
/* Fill n pages at addr from src (n consecutive copies of a template page),
 * or with the shared zero page (src NULL), waking the threads waiting there
 * unless dontwake. Pages filled (> 0; a partial fill stops at the first
 * page already present) or -errno. */
long uffd_fill(int fd, uint64_t addr, unsigned n, const void *src, int dontwake);
/* Wake every thread waiting in [start, end). 0 or -errno. */
int uffd_wake(int fd, uint64_t start, uint64_t end);

/* UFFDIO_WRITEPROTECT with mode 0 on the page at addr, on ranges we never
 * register for write-protect: a question to the kernel that changes
 * nothing (fs/userfaultfd.c userfaultfd_writeprotect: mmap_changing is
 * tested first, then the mm's liveness with mmget_not_zero, then the VMA,
 * which is never write-protect registered by us). Returns
 *   -EAGAIN  an UNMAP, REMAP or FORK event is in flight (not read yet),
 *   -ESRCH   the address space is gone,
 *   0        anything else (ENOENT, EINVAL...): alive, no event pending.
 * The liveness probe of fork children and exited processes, and the
 * question a MAP asks before it reuses a freed address. */
int uffd_probe(int fd, uint64_t addr);

/* The top of user space (exclusive), taken from the kernel at start
 * (uffd_learn_top): 2^47 - 4096 with 4-level paging, 2^56 - 4096 with
 * 5-level. Every address check and wake-up uses this one bound. */
uint64_t uffd_user_top(void);
/* The lowest address a mapping can have (vm.mmap_min_addr, page aligned). */
uint64_t uffd_user_bottom(void);
/* Learn both (before the sandbox: it reads /proc and makes a uffd of our
 * own). 0 or -errno (the defaults of a 4-level kernel stay). */
int uffd_learn_top(void);
/* The top of fd's address space, which may be lower (a 32-bit process):
 * the highest page end a wake-up is accepted for, found by asking the
 * kernel; uffd_user_top() if it cannot say. */
uint64_t uffd_top_of(int fd);

#endif
