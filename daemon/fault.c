/* Answering page faults: see fault.h.
 *
 * Every fault read from a uffd ends in exactly one of: a fill (UFFDIO_COPY
 * or UFFDIO_ZEROPAGE, which wakes the thread, or with --dontwake a fill
 * the caller wakes at the end of its batch), a UFFDIO_WAKE (the page was
 * already there or the range went away: the thread retries and sees what
 * the kernel has), or a retry later (EAGAIN/ENOMEM). Nothing is dropped. */
#include "fault.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>

#include "daemon.h"
#include "log.h"
#include "mm.h"
#include "range.h"
#include "stats.h"
#include "template.h"

#define PAGE TMPL_PAGE

enum uffd_err_class uffd_classify(int err)
{
	switch (err) {
	case 0:
		return UFFD_OK;
	case EEXIST:
		stat_inc(PROTO_STAT_ERR_EEXIST);
		return UFFD_EXISTS;
	case EAGAIN:
		stat_inc(PROTO_STAT_ERR_EAGAIN);
		return UFFD_RETRY;
	case ENOMEM:
		stat_inc(PROTO_STAT_ERR_ENOMEM);
		return UFFD_RETRY;
	case ENOENT:
		stat_inc(PROTO_STAT_ERR_ENOENT);
		return UFFD_GONE_RANGE;
	case ESRCH:
		stat_inc(PROTO_STAT_ERR_ESRCH);
		return UFFD_GONE_MM;
	default:
		stat_inc(PROTO_STAT_ERR_OTHER);
		return UFFD_BUG;
	}
}

static int uffd_wake(int uffd, uint64_t addr, uint64_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };
	return ioctl(uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

int fault_wake(struct rp_mm *mm, uint64_t start, uint64_t end)
{
	return uffd_wake(mm->uffd, start, end - start);
}

/* Fill [addr, addr + n pages) from src (n consecutive template copies) or
 * with zero pages (src NULL), waking the threads waiting there unless
 * dontwake. Returns pages filled (> 0) or -errno. A partial fill stops at
 * the first page that is already present. */
static long fill(int uffd, uint64_t addr, unsigned n, const void *src, int dontwake)
{
	if (src) {
		struct uffdio_copy c = {
			.dst = addr, .src = (uintptr_t)src, .len = (uint64_t)n * PAGE,
			.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};
		if (ioctl(uffd, UFFDIO_COPY, &c) == 0)
			return n;
		return c.copy > 0 ? (long)(c.copy / PAGE) : -errno;
	}
	struct uffdio_zeropage z = {
		.range = { .start = addr, .len = (uint64_t)n * PAGE },
		.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
	};
	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0)
		return n;
	return z.zeropage > 0 ? (long)(z.zeropage / PAGE) : -errno;
}

/* Adaptive fault-around: a fault where one of the range's streams expects
 * it continues that stream and doubles its window; any other fault starts
 * a stream at one page in the least recently used slot, so random access
 * never fills pages it did not touch, and threads sweeping different
 * parts of one mapping do not reset each other. */
static unsigned window_for(struct range *r, uint64_t addr, uint32_t cap)
{
	struct fault_stream *s = NULL, *lru = &r->fs[0];
	unsigned w = 1;

	for (int i = 0; i < RANGE_STREAMS; i++) {
		struct fault_stream *f = &r->fs[i];
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
	uint64_t left = (r->end - addr) / PAGE;
	if (w > left)
		w = (unsigned)left;
	s->window = w;
	s->next = addr + (uint64_t)w * PAGE;
	s->stamp = ++r->clock;
	return w;
}

static long fill_from_range(struct rp_mm *mm, struct range *r, uint64_t addr, uint64_t flags,
			    int dontwake)
{
	struct tmpl *t = r->tmpl;
	unsigned n = window_for(r, addr, mm->d->cfg.fault_around);
	int write = !!(flags & UFFD_PAGEFAULT_FLAG_WRITE);
	const void *src = t->page;

	/* A zero template reads through the shared zero page: no RSS. */
	if (t->is_zero && !write)
		src = NULL;
	else if (n > 1 && !(src = tmpl_slab(t, n))) {
		src = t->page;
		n = 1;
	}
	long got = fill(mm->uffd, addr, n, src, dontwake);
	if (got > 0)
		stat_add(src ? PROTO_STAT_PAGES_COPIED : PROTO_STAT_PAGES_ZERO, got);
	return got;
}

enum uffd_err_class fault_serve(struct rp_mm *mm, uint64_t addr, uint64_t flags, int dontwake,
				uint64_t *end)
{
	long got;

	*end = 0;
	addr &= ~(uint64_t)(PAGE - 1);
	pthread_mutex_lock(&mm->lock);
	struct range *r = range_lookup(&mm->ranges, addr);
	if (!r) {
		/* The gauges and the uid's account follow the table. */
		uint64_t b0 = mm->ranges.bytes;
		r = range_extend_to(&mm->ranges, addr, PAGE);
		mm_account(mm, mm->ranges.n, b0);
	}
	if (r) {
		got = fill_from_range(mm, r, addr, flags, dontwake);
	} else {
		/* Not ours to know: answer it anyway, never leave it hanging. */
		stat_inc(PROTO_STAT_UNKNOWN_FAULTS);
		got = fill(mm->uffd, addr, 1, NULL, dontwake);
		if (got > 0)
			stat_inc(PROTO_STAT_PAGES_ZERO);
	}
	pthread_mutex_unlock(&mm->lock);
	if (got > 0) {
		*end = addr + (uint64_t)got * PAGE;
		stat_inc(PROTO_STAT_FAULTS);
		return UFFD_OK;
	}
	enum uffd_err_class c = uffd_classify((int)-got);
	switch (c) {
	case UFFD_RETRY:
	case UFFD_GONE_MM:
		return c;
	case UFFD_BUG:
		log_warn("pid %d uffd %d: fill at %#llx failed: %s; waking the thread",
			 (int)mm->pid, mm->uffd, (unsigned long long)addr, strerror((int)-got));
		break;
	default:
		break;
	}
	/* EEXIST, ENOENT or a bug: the thread retries the access and gets
	 * whatever the kernel has there now. Woken at once, dontwake or not:
	 * an EEXIST page may have been filled by a fill of this batch whose
	 * wake is still to come, or long ago, and nothing else wakes it. */
	int w = uffd_wake(mm->uffd, addr, PAGE);
	if (w == -ESRCH)
		return UFFD_GONE_MM;
	stat_inc(PROTO_STAT_FAULTS);
	return UFFD_OK;
}

int fault_probe_alive(struct rp_mm *mm)
{
	static _Alignas(4096) const uint8_t zero[PAGE];
	/* mmap_min_addr keeps this page out of every mapping we could have
	 * registered; unless the table says otherwise, ENOENT means alive. */
	uint64_t probe = 0x10000;

	pthread_mutex_lock(&mm->lock);
	if (range_lookup(&mm->ranges, probe))
		probe = 0x7fffffffe000ull - PAGE;
	pthread_mutex_unlock(&mm->lock);
	struct uffdio_copy c = { .dst = probe, .src = (uintptr_t)zero, .len = PAGE };
	if (ioctl(mm->uffd, UFFDIO_COPY, &c) == 0)
		return 1;
	return errno != ESRCH;
}
