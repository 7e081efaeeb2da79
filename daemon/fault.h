/* Answering page faults and classifying uffd ioctl errors. */
#ifndef REFPAGED_FAULT_H
#define REFPAGED_FAULT_H

#include <stdint.h>

struct rp_mm;

enum uffd_err_class {
	UFFD_OK,       /* done */
	UFFD_EXISTS,   /* EEXIST: already there, wake the thread and move on */
	UFFD_RETRY,    /* EAGAIN: mm changing under a pending event; ENOMEM: later */
	UFFD_GONE_RANGE, /* ENOENT: range no longer registered */
	UFFD_GONE_MM,  /* ESRCH: the process is gone */
	UFFD_BUG,      /* anything else */
};

/* One place that turns an ioctl errno into what to do (and counts it). */
enum uffd_err_class uffd_classify(int err);

/* Answer one fault. Returns UFFD_OK when the thread was answered (filled
 * or woken), UFFD_RETRY when it must be retried later (the caller keeps it
 * pending), UFFD_GONE_MM when the address space is gone. *end gets the end
 * of the pages filled, else 0: every thread waiting in them is woken, or
 * with dontwake none is, and the caller must fault_wake the page-aligned
 * [addr, *end) itself. Paths that fill nothing always wake at once. */
enum uffd_err_class fault_serve(struct rp_mm *mm, uint64_t addr, uint64_t flags, int dontwake,
				uint64_t *end);

/* UFFDIO_WAKE every thread waiting in [start, end): 0 or -errno. */
int fault_wake(struct rp_mm *mm, uint64_t start, uint64_t end);

/* 1 if the mm is still alive, 0 if gone (the ESRCH probe of DESIGN.md). */
int fault_probe_alive(struct rp_mm *mm);

#endif
