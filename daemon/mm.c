/* Served address spaces: see mm.h. */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "log.h"
#include "persist.h"
#include "stats.h"
#include "template.h"

/* What we ask of every uffd. REMOVE is left out on purpose: a missing page
 * after MADV_DONTNEED faults again by itself and is refilled from the
 * template, while the REMOVE event would make every madvise() wait for us
 * (docs/design.md measures it). */
#define RP_UFFD_FEATURES                                                      \
	(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |                \
	 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID)

/* Set by every mm_alloc, on the main thread and on workers alike. */
static struct tmpl_store *_Atomic range_store;

static void range_tmpl_get(void *t)
{
	tmpl_ref(range_store, t);
}

static void range_tmpl_put(void *t)
{
	tmpl_put(range_store, t);
}

static const struct range_ops mm_range_ops = {
	.get = range_tmpl_get,
	.put = range_tmpl_put,
};

static struct rp_mm *mm_alloc(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			      struct rp_tree *tree, pid_t pid, uint32_t id)
{
	struct rp_mm *mm = calloc(1, sizeof(*mm));

	if (!mm)
		return NULL;
	range_store = &d->tmpls;
	mm->snap_id = id ? id : persist_new_id(d, PERSIST_MM);
	mm->uffd = uffd;
	mm->uid = a->uid;
	mm->pid = pid;
	mm->pidfd = -1;
	mm->features = features;
	mm->d = d;
	mm->acct = a;
	mm->tree = tree;
	atomic_init(&mm->refs, 1);
	atomic_init(&mm->dead, 0);
	pthread_mutex_init(&mm->lock, NULL);
	range_table_init(&mm->ranges, d->cfg.lim.ranges, &mm_range_ops);
	atomic_fetch_add(&tree->procs, 1);
	stat_inc(PROTO_STAT_PROCESSES);
	return mm;
}

/* The kernel has made the change already: the table follows it even past
 * its limit (a hole or a move may need pieces), or it would go on
 * charging, and standing in the way of, memory that is gone. The next MAP
 * is refused until the table is back under its limit. */
static long long follow_unmap(struct range_table *rt, uint64_t start, uint64_t end)
{
	size_t max = rt->max;

	rt->max = 0;
	long long r = range_remove(rt, start, end);
	rt->max = max;
	return r;
}

static int follow_copy(struct range_table *rt, uint64_t from, uint64_t to, uint64_t len)
{
	size_t max = rt->max;

	rt->max = 0;
	int r = range_copy(rt, from, to, len);
	rt->max = max;
	return r;
}

/* Sources of moves. A moving mremap sends a REMAP, and only once we have
 * read it an UNMAP of its whole old range (exactly the REMAP's source: one
 * mremap moves within one VMA). Another thread's moving mremap can put its
 * mapping into that old range in between; its REMAP, read before the
 * UNMAP, puts its pieces there, which the UNMAP must then leave alone. And
 * with MREMAP_DONTUNMAP the old mapping stays, still registered, and no
 * UNMAP comes at all: it reads the template again, like a fresh mapping.
 * So a REMAP copies the source's pieces to the destination, keeps them at
 * the source, and records the source; whatever gives addresses in it a new
 * owner (a REMAP onto them, a MAP, an UNMAP that is not the record's,
 * rp_unmap) takes them out of the record; the UNMAP naming exactly the
 * record forgets only what is left in it, and the record. */

/* Appends [s, e) to r's spans; -1 when they are full. */
static int span_add(struct remap_src *r, uint64_t s, uint64_t e)
{
	if (r->nspans == MM_SRC_SPANS)
		return -1;
	r->span[r->nspans].start = s;
	r->span[r->nspans].end = e;
	r->nspans++;
	return 0;
}

/* r without [s, e); -1 when what is left needs more spans than a record
 * has. */
static int span_take(struct remap_src *r, uint64_t s, uint64_t e)
{
	struct remap_src left = { .start = r->start, .end = r->end };

	for (uint32_t k = 0; k < r->nspans; k++) {
		uint64_t a = r->span[k].start, b = r->span[k].end;

		if (e <= a || b <= s) {
			if (span_add(&left, a, b) < 0)
				return -1;
			continue;
		}
		if (a < s && span_add(&left, a, s) < 0)
			return -1;
		if (e < b && span_add(&left, e, b) < 0)
			return -1;
	}
	*r = left;
	return 0;
}

/* [s, e) has a new owner: out of every record. A record left with nothing
 * goes; so does one that would need more spans than it has, and what is
 * left of it stays in the table until an UNMAP names it, as if the REMAP
 * had never been recorded. */
static void srcs_take(struct rp_mm *mm, uint64_t s, uint64_t e)
{
	uint32_t keep = 0;

	for (uint32_t i = 0; i < mm->nsrcs; i++) {
		struct remap_src *r = &mm->srcs[i];

		if (span_take(r, s, e) == 0 && r->nspans)
			mm->srcs[keep++] = *r;
	}
	mm->nsrcs = keep;
}

/* Records [s, e) as the source of a REMAP, taken out of older records
 * first. When all slots are in use the oldest record is dropped (as when
 * its spans overflow); without memory for the slots nothing is recorded:
 * the UNMAP then forgets the whole source. */
static void srcs_add(struct rp_mm *mm, uint64_t s, uint64_t e)
{
	srcs_take(mm, s, e);
	if (!mm->srcs && !(mm->srcs = malloc(MM_SRCS * sizeof(*mm->srcs))))
		return;
	if (mm->nsrcs == MM_SRCS)
		memmove(&mm->srcs[0], &mm->srcs[1], --mm->nsrcs * sizeof(*mm->srcs));
	mm->srcs[mm->nsrcs++] = (struct remap_src){
		.start = s, .end = e, .nspans = 1, .span = { { s, e } },
	};
}

/* The record an UNMAP of exactly [s, e) completes, or NULL. */
static struct remap_src *srcs_find(struct rp_mm *mm, uint64_t s, uint64_t e)
{
	for (uint32_t i = mm->nsrcs; i-- > 0;)
		if (mm->srcs[i].start == s && mm->srcs[i].end == e)
			return &mm->srcs[i];
	return NULL;
}

/* Forgets from rt what is left of mm's records in [s, e). */
static long long srcs_unmap(const struct rp_mm *mm, struct range_table *rt, uint64_t s, uint64_t e)
{
	long long err = 0;

	for (uint32_t i = 0; i < mm->nsrcs; i++) {
		const struct remap_src *r = &mm->srcs[i];

		for (uint32_t k = 0; k < r->nspans; k++) {
			uint64_t a = r->span[k].start > s ? r->span[k].start : s;
			uint64_t b = r->span[k].end < e ? r->span[k].end : e;
			long long u = a < b ? follow_unmap(rt, a, b) : 0;

			if (u < 0)
				err = u;
		}
	}
	return err;
}

struct rp_mm *mm_new_client(struct rp_daemon *d, int uffd, uint64_t features, uid_t uid, pid_t pid)
{
	struct acct *a = acct_get(uid);
	struct rp_tree *tree = calloc(1, sizeof(*tree));
	struct rp_mm *mm = NULL;
	int e = ENOMEM;

	if (a && tree && (e = -acct_charge(a, ACCT_PROCESSES, 1)) == 0) {
		atomic_init(&tree->refs, 1);
		tree->snap_id = persist_new_id(d, PERSIST_TREE);
		if (!(mm = mm_alloc(d, uffd, features, a, tree, pid, 0))) {
			acct_uncharge(a, ACCT_PROCESSES, 1);
			e = ENOMEM;
		}
	}
	if (!mm) {
		if (a)
			acct_put(a);
		free(tree);
		errno = e;
		return NULL;
	}
	persist_store(d, PERSIST_MM, mm->snap_id, uffd);
	persist_mm_link(mm);
	return mm;
}

/* The tree's descendant limit: the client itself plus its descendants. */
static int tree_full(struct rp_mm *parent)
{
	uint32_t max = parent->d->cfg.lim.descendants;
	struct rp_tree *t = parent->tree;

	if (!max || atomic_load(&t->procs) <= max)
		return 0;
	if (!atomic_exchange(&t->warned, 1))
		log_warn("uid %d: a process tree reached %u descendants; further fork children get "
			 "ordinary anonymous memory (logged once per tree)", (int)parent->uid, max);
	return 1;
}

struct rp_mm *mm_new_child(struct rp_mm *parent, int ufd)
{
	struct rp_mm *mm;

	if (tree_full(parent) || acct_charge(parent->acct, ACCT_PROCESSES, 1) < 0) {
		errno = EDQUOT;
		return NULL;
	}
	struct acct *a = acct_get(parent->uid);
	if (!a || !(mm = mm_alloc(parent->d, ufd, parent->features, a, parent->tree, 0, 0))) {
		if (a)
			acct_put(a);
		acct_uncharge(parent->acct, ACCT_PROCESSES, 1);
		errno = ENOMEM;
		return NULL;
	}
	atomic_fetch_add(&parent->tree->refs, 1);
	mm->is_child = 1;
	pthread_mutex_lock(&parent->lock);
	long long r = range_clone(&mm->ranges, &parent->ranges);
	if (r == 0)
		r = srcs_unmap(parent, &mm->ranges, 0, UINT64_MAX);
	pthread_mutex_unlock(&parent->lock);
	mm_account(mm, 0, 0);
	if (r < 0)
		log_err("pid %d: fork child uffd %d: cannot copy ranges: %s", (int)parent->pid, ufd,
			strerror((int)-r));
	persist_store(mm->d, PERSIST_MM, mm->snap_id, ufd);
	persist_mm_link(mm);
	return mm;
}

struct rp_mm *mm_restore(struct rp_daemon *d, int uffd, uint64_t features, uid_t uid, pid_t pid,
			 struct rp_tree **tree, int is_child, uint32_t id)
{
	struct acct *a = acct_get(uid);
	struct rp_mm *mm = NULL;

	if (a && !*tree && (*tree = calloc(1, sizeof(**tree))))
		atomic_init(&(*tree)->refs, 0);
	if (a && *tree && (mm = mm_alloc(d, uffd, features, a, *tree, pid, id))) {
		acct_adjust(a, ACCT_PROCESSES, 1);
		atomic_fetch_add(&(*tree)->refs, 1);
		mm->is_child = is_child;
		return mm;
	}
	if (a)
		acct_put(a);
	return NULL;
}

int mm_restore_range(struct rp_mm *mm, uint64_t start, uint64_t end, struct tmpl *t)
{
	pthread_mutex_lock(&mm->lock);
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;
	int r = range_insert(&mm->ranges, start, end, t);
	mm_account(mm, n0, b0);
	pthread_mutex_unlock(&mm->lock);
	return r;
}

void mm_ref(struct rp_mm *mm)
{
	atomic_fetch_add(&mm->refs, 1);
}

static void mm_free(struct rp_mm *mm)
{
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;

	persist_mm_unlink(mm);
	range_table_fini(&mm->ranges);
	mm_account(mm, n0, b0);
	pthread_mutex_destroy(&mm->lock);
	if (mm->uffd >= 0)
		close(mm->uffd);
	free(mm->srcs);
	free(mm->pending);
	acct_uncharge(mm->acct, ACCT_PROCESSES, 1);
	acct_put(mm->acct);
	atomic_fetch_sub(&mm->tree->procs, 1);
	if (atomic_fetch_sub(&mm->tree->refs, 1) == 1)
		free(mm->tree);
	stat_add(PROTO_STAT_PROCESSES, -1);
	free(mm);
}

void mm_put(struct rp_mm *mm)
{
	if (atomic_fetch_sub(&mm->refs, 1) == 1)
		mm_free(mm);
}

static int uffd_register(int uffd, uint64_t addr, uint64_t len)
{
	struct uffdio_register reg = {
		.range = { .start = addr, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	return 0;
}

static int uffd_unregister(int uffd, uint64_t addr, uint64_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };
	if (ioctl(uffd, UFFDIO_UNREGISTER, &r) < 0)
		return -errno;
	return 0;
}

void mm_account(struct rp_mm *mm, size_t n0, uint64_t b0)
{
	int64_t dn = (int64_t)mm->ranges.n - (int64_t)n0;
	int64_t db = (int64_t)mm->ranges.bytes - (int64_t)b0;

	stat_add(PROTO_STAT_RANGES, dn);
	stat_add(PROTO_STAT_BYTES, db);
	acct_adjust(mm->acct, ACCT_RANGES, dn);
	acct_adjust(mm->acct, ACCT_BYTES, db);
	if (dn || db)
		persist_changed(mm->d);
}

/* munmap() and mremap() return once their event is read, not applied: a
 * client may reuse the address in its next MAP before the worker has
 * dropped the old range. Wait until every batch read so far is applied
 * (at most one batch of work on the worker). An event not read yet is
 * mm_event_in_flight's, and the session's, business. */
static void wait_events_applied(struct rp_mm *mm)
{
	uint64_t t = atomic_load(&mm->ev_started);

	while (atomic_load(&mm->ev_done) < t && !atomic_load(&mm->dead))
		sched_yield();
}

/* The kernel raises the uffd's mmap_changing in the prep step of munmap,
 * mremap and fork (under the client's mmap_lock, before the address range
 * is freed) and drops it only once we have read the event, queued after
 * mmap_lock is dropped (fs/userfaultfd.c: userfaultfd_unmap_prep,
 * mremap_userfaultfd_prep, dup_userfaultfd; userfaultfd_event_wait_completion).
 * UFFDIO_WRITEPROTECT tests it first (userfaultfd_writeprotect, again under
 * map_changing_lock in mwriteprotect_range), so mode 0 on one page is a
 * probe that changes nothing on our ranges:
 *   EAGAIN        mmap_changing is up: an event is in flight, not read yet;
 *   ENOENT        it is not: the vma is not registered for write-protect
 *                 (ours never are), or nothing is mapped there;
 *   EINVAL/ENOTTY a kernel without the ioctl (before 5.7) or an address it
 *                 refuses: no answer, the caller goes on as if none;
 *   anything else (0, ESRCH for an exited mm): no event to wait for. */
int mm_event_in_flight(struct rp_mm *mm, uint64_t addr)
{
	struct uffdio_writeprotect wp = { .range = { .start = addr, .len = TMPL_PAGE }, .mode = 0 };
	int fd, e = 0;

	/* Under the lock: the worker closes a dead mm's uffd under it. */
	pthread_mutex_lock(&mm->lock);
	fd = mm->uffd;
	if (fd >= 0 && ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0)
		e = errno;
	pthread_mutex_unlock(&mm->lock);
	if (e && e != EAGAIN && e != ENOENT)
		log_debug("pid %d uffd %d: UFFDIO_WRITEPROTECT probe at %#llx: %s; not waiting",
			  (int)mm->pid, fd, (unsigned long long)addr, strerror(e));
	return e == EAGAIN;
}

int mm_map(struct rp_mm *mm, uint64_t addr, uint64_t len, struct tmpl *t)
{
	int r;

	wait_events_applied(mm);
	pthread_mutex_lock(&mm->lock);
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;
	if ((mm->d->cfg.lim.bytes && b0 + len > mm->d->cfg.lim.bytes) ||
	    acct_check(mm->acct, ACCT_BYTES, len) < 0 || acct_check(mm->acct, ACCT_RANGES, 1) < 0) {
		r = -EDQUOT;
		goto out;
	}
	if (mm->uffd < 0) {
		r = -ENOTCONN;
		goto out;
	}
	/* What is left there of a moved mapping has gone: the client has a
	 * new one there. */
	srcs_unmap(mm, &mm->ranges, addr, addr + len);
	srcs_take(mm, addr, addr + len);
	/* Into the table first: the first fault may arrive on the worker
	 * before the ioctl even returns. */
	r = range_insert(&mm->ranges, addr, addr + len, t);
	if (r == -ENOSPC)
		r = -EDQUOT;
	if (r < 0)
		goto out;
	r = uffd_register(mm->uffd, addr, len);
	if (r < 0)
		range_remove(&mm->ranges, addr, addr + len);
out:
	mm_account(mm, n0, b0);
	pthread_mutex_unlock(&mm->lock);
	return r;
}

int mm_unmap(struct rp_mm *mm, uint64_t addr, uint64_t len)
{
	uint64_t end = addr + len;
	long long removed;

	pthread_mutex_lock(&mm->lock);
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;
	struct range *in = range_lookup(&mm->ranges, addr);
	if (in && in->start < addr && end < in->end) {
		/* A hole in one piece: the only cut that needs a table slot,
		 * which the limit may refuse. The table goes first, so that a
		 * refusal leaves the range registered and served. */
		removed = range_remove(&mm->ranges, addr, end);
		if (removed >= 0)
			uffd_unregister(mm->uffd, addr, len);
	} else {
		/* Only what we registered, piece by piece: parts already
		 * unmapped by the process leave holes the kernel would refuse
		 * in one call. This cut frees slots and cannot fail. */
		for (size_t i = 0; i < mm->ranges.n; i++) {
			struct range *p = &mm->ranges.v[i];
			uint64_t s = p->start > addr ? p->start : addr;
			uint64_t e = p->end < end ? p->end : end;
			if (s < e)
				uffd_unregister(mm->uffd, s, e - s);
		}
		removed = range_remove(&mm->ranges, addr, end);
	}
	if (removed >= 0)
		srcs_take(mm, addr, end);
	mm_account(mm, n0, b0);
	pthread_mutex_unlock(&mm->lock);
	/* As for MAP: a full table is the client's limit. */
	if (removed == -ENOSPC)
		return -EDQUOT;
	return removed < 0 ? (int)removed : 0;
}

void mm_on_unmap(struct rp_mm *mm, uint64_t start, uint64_t end)
{
	pthread_mutex_lock(&mm->lock);
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;
	struct remap_src *src = srcs_find(mm, start, end);
	long long r;
	if (src) {
		/* The mremap that moved it away: what nobody took since. */
		r = srcs_unmap(mm, &mm->ranges, start, end);
		size_t i = (size_t)(src - mm->srcs);
		memmove(src, src + 1, (--mm->nsrcs - i) * sizeof(*src));
	} else {
		r = follow_unmap(&mm->ranges, start, end);
		srcs_take(mm, start, end);
	}
	mm_account(mm, n0, b0);
	pthread_mutex_unlock(&mm->lock);
	if (r < 0)
		log_warn("pid %d uffd %d: cannot split range at unmap [%#llx, %#llx): %s",
			 (int)mm->pid, mm->uffd, (unsigned long long)start,
			 (unsigned long long)end, strerror((int)-r));
}

void mm_on_remap(struct rp_mm *mm, uint64_t from, uint64_t to, uint64_t len)
{
	pthread_mutex_lock(&mm->lock);
	size_t n0 = mm->ranges.n;
	uint64_t b0 = mm->ranges.bytes;
	int r = follow_copy(&mm->ranges, from, to, len);
	/* The destination has a new owner whether or not we could follow. */
	srcs_take(mm, to, to + len);
	if (r == 0 && from != to)
		srcs_add(mm, from, from + len);
	mm_account(mm, n0, b0);
	pthread_mutex_unlock(&mm->lock);
	if (r < 0)
		log_warn("pid %d uffd %d: cannot follow mremap %#llx -> %#llx: %s",
			 (int)mm->pid, mm->uffd, (unsigned long long)from,
			 (unsigned long long)to, strerror(-r));
}

/* An anonymous inode's link reads "anon_inode:[name]": the only way to
 * tell a uffd from an eventfd or a pipe before trusting it with ioctls. */
int mm_is_uffd(int fd)
{
	char path[64], link[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return 0;
	link[n] = '\0';
	return !strcmp(link, "anon_inode:[userfaultfd]");
}

long long mm_uffd_handshake(int fd, uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = RP_UFFD_FEATURES };

	if (!mm_is_uffd(fd))
		return -EBADF;
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	*features = api.features;
	return 0;
}
