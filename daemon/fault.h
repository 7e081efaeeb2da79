/* Answering one page fault: the fill window (adaptive fault-around) and the
 * fill itself, with what each outcome means for the faulting thread.
 *
 * Every fault read from a uffd ends in exactly one of: a fill (UFFDIO_COPY
 * or UFFDIO_ZEROPAGE, which wakes the thread, or with dontwake a fill the
 * caller wakes at the end of its batch), a UFFDIO_WAKE (the page was
 * already there or the range went away: the thread retries and sees what
 * the kernel has), or a retry later (EAGAIN, ENOMEM: the caller keeps it).
 * Nothing is dropped. */
#ifndef REFPAGED_FAULT_H
#define REFPAGED_FAULT_H

#include <stdint.h>

#include "uffd.h"

struct acct;
struct range_piece;
struct tmpl_store;

/* Sequential streams followed per address space: threads sweeping
 * different parts of its mappings each keep their own window. */
#define FAULT_STREAMS 8

/* Where a stream's next fault is expected, its fill window in pages (0:
 * unused slot), and when it was last seen. */
struct fault_stream {
	uint64_t next;
	uint32_t window;
	uint32_t stamp;
};

struct fault_streams {
	struct fault_stream s[FAULT_STREAMS];
	uint32_t clock;
};

struct fault_cfg {
	uint32_t fault_around; /* largest window, pages */
	int dontwake;
	struct tmpl_store *store;
	struct acct *acct; /* counted for */
	/* Report mode (PROTO_HELLO_REPORT): every fault fills its own page
	 * alone, and a read fault filled is queued in acct's records as
	 * pid's, read by thread tid, of address space mm. */
	int report;
	int32_t pid, tid;
	uint32_t mm;
};

/* Answer the fault at addr (flags from the uffd message) in piece p, or
 * with the zero page when p is NULL (an address no range knows: answered
 * all the same, never left waiting). Returns UFFD_OK when the thread was
 * answered (*end: the end of the pages filled, else 0; with dontwake the
 * caller must uffd_wake [page, *end) itself), UFFD_BUG when the fill
 * failed for a reason we do not know and the thread was woken to fault
 * again (the caller bounds how often), UFFD_RETRY or UFFD_NOMEM when it
 * must be tried again later, UFFD_GONE_MM when the process is gone. */
enum uffd_class fault_answer(int uffd, const struct range_piece *p, struct fault_streams *fs,
			     uint64_t addr, uint64_t flags, const struct fault_cfg *c,
			     uint64_t *end);

#endif
