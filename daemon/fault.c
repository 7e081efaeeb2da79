/* Answering page faults: see fault.h. */
#include "fault.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <time.h>

#include "acct.h"
#include "log.h"
#include "range.h"
#include "template.h"

#define PAGE TMPL_PAGE

/* Adaptive fault-around: a fault where one of the streams expects it
 * continues that stream and doubles its window; any other fault starts a
 * stream at one page in the least recently used slot, so random access
 * never fills pages it did not touch, and threads sweeping different
 * parts of a mapping do not reset each other. The window never leaves
 * the piece. */
static unsigned window_for(struct fault_streams *fs, const struct range_piece *p, uint64_t addr,
			   uint32_t cap)
{
	struct fault_stream *s = NULL, *lru = &fs->s[0];
	unsigned w = 1;

	for (int i = 0; i < FAULT_STREAMS; i++) {
		struct fault_stream *f = &fs->s[i];
		if (f->window && f->next == addr) {
			s = f;
			break;
		}
		if (!f->window ? lru->window != 0 : lru->window && f->stamp < lru->stamp)
			lru = f; /* an empty slot first, else the oldest */
	}
	if (s && cap > 1)
		w = s->window * 2 > cap ? cap : s->window * 2;
	else if (!s)
		s = lru;
	uint64_t left = (p->end - addr) / PAGE;
	if (w > left)
		w = (unsigned)left;
	s->window = w;
	s->next = addr + (uint64_t)w * PAGE;
	s->stamp = ++fs->clock;
	return w;
}

static long fill_piece(int uffd, const struct range_piece *p, struct fault_streams *fs,
		       uint64_t addr, uint64_t flags, const struct fault_cfg *c)
{
	struct tmpl *t = p->tmpl;
	/* Report mode: a page filled ahead of its own first access would not
	 * fault when it is read, and its read would go unseen. */
	unsigned n = c->report ? 1 : window_for(fs, p, addr, c->fault_around);
	const void *src = t->page;

	/* A zero template reads through the shared zero page: no RSS. */
	if (t->is_zero && !(flags & UFFD_PAGEFAULT_FLAG_WRITE))
		src = NULL;
	else if (n > 1 && !(src = tmpl_slab(c->store, t, n))) {
		src = t->page;
		n = 1;
	}
	long got = uffd_fill(uffd, addr, n, src, c->dontwake);
	if (got > 0)
		acct_stat_add(c->acct, src ? PROTO_STAT_PAGES_COPIED : PROTO_STAT_PAGES_ZERO, got);
	return got;
}

/* Report mode: a read fault is a read of a page never written since it
 * was mapped (or dropped), by the program or by the kernel in one of its
 * system calls: the message does not say which, and the daemon has no
 * other way to tell (docs/report.md, "Precision"). Stamped before the fill:
 * after it the thread runs on (and its program may free the block). Queued
 * once the fill is done. */
static void report_see(uint64_t addr, const struct fault_cfg *c, struct acct_rrec *r)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	*r = (struct acct_rrec){
		.addr = addr,
		.ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
		.pid = c->pid,
		.tid = c->tid,
		.mm = c->mm,
	};
}

enum uffd_class fault_answer(int uffd, const struct range_piece *p, struct fault_streams *fs,
			     uint64_t addr, uint64_t flags, const struct fault_cfg *c,
			     uint64_t *end)
{
	long got;

	*end = 0;
	addr &= ~(uint64_t)(PAGE - 1);
	if (p) {
		int rep = c->report && !(flags & UFFD_PAGEFAULT_FLAG_WRITE);
		struct acct_rrec r;
		if (rep) {
			/* Queued before the thread is woken: a REPORT its
			 * process sends once the read is done must find it. */
			struct fault_cfg quiet = *c;
			quiet.dontwake = 1;
			report_see(addr, c, &r);
			got = fill_piece(uffd, p, fs, addr, flags, &quiet);
			if (got > 0) {
				acct_report_push(c->acct, &r);
				acct_stat_add(c->acct, PROTO_STAT_REPORT_READS, 1);
				if (!c->dontwake)
					(void)uffd_wake(uffd, addr, addr + (uint64_t)got * PAGE);
			}
		} else {
			got = fill_piece(uffd, p, fs, addr, flags, c);
		}
	} else {
		acct_stat_add(c->acct, PROTO_STAT_UNKNOWN_FAULTS, 1);
		got = uffd_fill(uffd, addr, 1, NULL, c->dontwake);
		if (got > 0)
			acct_stat_add(c->acct, PROTO_STAT_PAGES_ZERO, 1);
	}
	if (got > 0) {
		*end = addr + (uint64_t)got * PAGE;
		acct_stat_add(c->acct, PROTO_STAT_FAULTS, 1);
		return UFFD_OK;
	}
	enum uffd_class k = uffd_classify((int)-got, c->acct);
	if (k == UFFD_RETRY || k == UFFD_NOMEM || k == UFFD_GONE_MM)
		return k;
	if (k == UFFD_BUG)
		acct_log(c->acct, LOG_WARNING, "fill at %#llx failed: %s; waking the thread",
			 (unsigned long long)addr, strerror((int)-got));
	/* EEXIST, ENOENT or a bug: the thread retries the access and gets
	 * whatever the kernel has there now. Woken at once, dontwake or not:
	 * an EEXIST page may have been filled by a fill of this batch whose
	 * wake is still to come, or long ago, and nothing else wakes it. */
	if (uffd_wake(uffd, addr, addr + PAGE) == -ESRCH)
		return UFFD_GONE_MM;
	acct_stat_add(c->acct, PROTO_STAT_FAULTS, 1);
	return k == UFFD_BUG ? UFFD_BUG : UFFD_OK;
}
