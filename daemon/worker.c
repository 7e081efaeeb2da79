/* Fault workers: see worker.h. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "fault.h"
#include "log.h"
#include "mm.h"
#include "persist.h"
#include "stats.h"

/* Reads per wake-up of one uffd (--drain on) before the loop looks at
 * the others: a busy client cannot starve the rest. */
#define READS_PER_WAKE 8
/* Retry pace for faults that hit EAGAIN (an event in flight) or ENOMEM. */
#define RETRY_S 0.0005
#define PROBE_MIN_S 0.25
#define PROBE_MAX_S 8.0

static void mm_readable(struct ev_loop *loop, ev_io *io, int revents);

static void list_link(struct worker *w, struct rp_mm *mm)
{
	mm->prev = NULL;
	mm->next = w->mms;
	if (w->mms)
		w->mms->prev = mm;
	w->mms = mm;
	atomic_fetch_add(&w->nmms, 1);
}

static void list_unlink(struct worker *w, struct rp_mm *mm)
{
	if (mm->prev)
		mm->prev->next = mm->next;
	else
		w->mms = mm->next;
	if (mm->next)
		mm->next->prev = mm->prev;
	mm->prev = mm->next = NULL;
	atomic_fetch_sub(&w->nmms, 1);
}

static void mm_gone(struct worker *w, struct rp_mm *mm);

static void unwatch(struct worker *w, struct rp_mm *mm)
{
	if (mm->pidfd < 0)
		return;
	ev_io_stop(w->loop, &mm->pidfd_io);
	close(mm->pidfd);
	mm->pidfd = -1;
}

/* The watched process exited. The pid may not be the mm's owner (a fault's
 * thread id is in the faulting task's pid namespace, and a mm can be
 * shared), so the uffd itself has the last word. */
static void on_exit_seen(struct ev_loop *loop, ev_io *io, int revents)
{
	struct rp_mm *mm = io->data;
	struct worker *w = ev_userdata(loop);

	(void)revents;
	unwatch(w, mm);
	if (!fault_probe_alive(mm))
		mm_gone(w, mm);
}

/* Learn of the process's exit at once instead of at the next probe. */
static void watch(struct worker *w, struct rp_mm *mm, pid_t pid)
{
	if (mm->pidfd >= 0 || pid <= 0)
		return;
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return; /* not a thread group leader, or gone: the probe covers it */
	mm->pidfd = fd;
	ev_io_init(&mm->pidfd_io, on_exit_seen, fd, EV_READ);
	mm->pidfd_io.data = mm;
	ev_io_start(w->loop, &mm->pidfd_io);
}

/* mm->w is set before: by the session for a client (which reads it on
 * the main thread), by on_fork for a child. */
static void serve(struct worker *w, struct rp_mm *mm)
{
	mm->probe_every = PROBE_MIN_S;
	mm->probe_at = ev_now(w->loop) + PROBE_MIN_S;
	ev_io_init(&mm->io, mm_readable, mm->uffd, EV_READ);
	mm->io.data = mm;
	ev_io_start(w->loop, &mm->io);
	list_link(w, mm);
	watch(w, mm, mm->pid);
	if (!ev_is_active(&w->probe)) {
		ev_timer_set(&w->probe, PROBE_MIN_S, 0.);
		ev_timer_start(w->loop, &w->probe);
	}
}

/* Stop serving: close the uffd so that every fault still waiting falls
 * back to the kernel (the process sees ordinary anonymous memory), and
 * drop the worker's reference (mm may be freed on return). */
static void retire(struct worker *w, struct rp_mm *mm)
{
	if (!ev_is_active(&mm->io))
		return;
	ev_io_stop(w->loop, &mm->io);
	unwatch(w, mm);
	list_unlink(w, mm);
	atomic_store(&mm->dead, 1);
	/* The fd store's copy would keep the uffd open: it goes too. */
	persist_unstore(w->d, PERSIST_MM, mm->snap_id);
	persist_changed(w->d);
	pthread_mutex_lock(&mm->lock);
	persist_close_watched(w->loop, mm->uffd);
	mm->uffd = -1;
	pthread_mutex_unlock(&mm->lock);
	mm_put(mm);
}

static void drop_child(struct worker *w, struct rp_mm *mm, const char *why)
{
	log_debug("pid %d uffd %d: fork child released: %s", (int)mm->pid, mm->uffd, why);
	stat_inc(PROTO_STAT_PROCS_RECLAIMED);
	retire(w, mm);
}

/* The address space is gone. A child is ours alone; a client's mm stays
 * referenced by its session until the connection closes. */
static void mm_gone(struct worker *w, struct rp_mm *mm)
{
	if (mm->is_child)
		drop_child(w, mm, "process gone");
	else
		retire(w, mm);
}

static int pending_push(struct rp_mm *mm, uint64_t addr, uint64_t flags, uint32_t tid)
{
	if (mm->npending == mm->cappending) {
		uint32_t cap = mm->cappending ? mm->cappending * 2 : 16;
		void *p = realloc(mm->pending, cap * sizeof(*mm->pending));
		if (!p)
			return -ENOMEM;
		mm->pending = p;
		mm->cappending = cap;
	}
	mm->pending[mm->npending++] = (struct pending_fault){ addr, flags, tid, 0 };
	return 0;
}

static void retry_arm(struct worker *w, struct rp_mm *mm);

/* Retry what could not be filled, waking at once (--dontwake or not).
 * Returns 0, or -ESRCH if the mm is gone. */
static int pending_retry(struct worker *w, struct rp_mm *mm)
{
	uint32_t keep = 0;

	for (uint32_t i = 0; i < mm->npending; i++) {
		struct pending_fault *f = &mm->pending[i];
		uint64_t end;
		enum uffd_err_class c = fault_serve(mm, f->addr, f->flags, 0, &end);
		if (c == UFFD_GONE_MM)
			return -ESRCH;
		if (c == UFFD_RETRY)
			mm->pending[keep++] = *f;
	}
	mm->npending = keep;
	if (keep)
		retry_arm(w, mm);
	return 0;
}

/* Answer one fault. Returns -1 if the mm is gone; *end is set to the end
 * of what was filled (woken unless dontwake) when it was filled. */
static int on_fault(struct worker *w, struct rp_mm *mm, const struct uffd_msg *m, int dontwake,
		    uint64_t *end)
{
	uint64_t addr = m->arg.pagefault.address;
	uint64_t flags = m->arg.pagefault.flags;
	enum uffd_err_class c = fault_serve(mm, addr, flags, dontwake, end);

	if (!mm->pid && (mm->features & UFFD_FEATURE_THREAD_ID)) {
		mm->pid = (pid_t)m->arg.pagefault.feat.ptid;
		watch(w, mm, mm->pid);
	}
	mm->probe_every = PROBE_MIN_S;
	if (c == UFFD_GONE_MM)
		return -1;
	if (c != UFFD_RETRY)
		return 0;
	if (pending_push(mm, addr, flags, m->arg.pagefault.feat.ptid) == 0)
		retry_arm(w, mm);
	else
		log_err("pid %d uffd %d: no memory to queue a fault retry", (int)mm->pid, mm->uffd);
	return 0;
}

static void on_fork(struct worker *w, struct rp_mm *parent, int ufd)
{
	int fl = fcntl(ufd, F_GETFL);
	if (fl < 0 || fcntl(ufd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(ufd, F_SETFD, FD_CLOEXEC) < 0) {
		log_err("pid %d: fork child uffd %d unusable: %s", (int)parent->pid, ufd, strerror(errno));
		close(ufd);
		return;
	}
	struct rp_mm *child = mm_new_child(parent, ufd);
	if (!child) {
		/* Closing it hands the child's pages to the kernel: its faults
		 * are answered (zeros), never left waiting. */
		if (errno != EDQUOT)
			log_err("pid %d: cannot adopt a fork child: %s", (int)parent->pid, strerror(errno));
		stat_inc(PROTO_STAT_UNTRACKED);
		close(ufd);
		return;
	}
	child->w = w;
	serve(w, child);
	log_debug("pid %d uffd %d: fork child adopted as uffd %d", (int)parent->pid, parent->uffd, ufd);
}

static void on_msg(struct worker *w, struct rp_mm *mm, const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_FORK:
		stat_inc(PROTO_STAT_EV_FORK);
		on_fork(w, mm, (int)m->arg.fork.ufd);
		break;
	case UFFD_EVENT_REMAP:
		stat_inc(PROTO_STAT_EV_REMAP);
		mm_on_remap(mm, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		break;
	case UFFD_EVENT_UNMAP:
		stat_inc(PROTO_STAT_EV_UNMAP);
		mm_on_unmap(mm, m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_REMOVE:
		stat_inc(PROTO_STAT_EV_REMOVE);
		break;
	default:
		log_err("pid %d uffd %d: unknown uffd event %u", (int)mm->pid, mm->uffd, m->event);
		break;
	}
}

/* What one read(2)'s batch filled. With --coalesce a second fault message
 * for a page in it (another thread's) is already answered; with
 * --dontwake nothing in it is woken until batch_wake. At most one span per
 * message. */
struct batch {
	uint64_t lo[WORKER_MSG_BATCH], hi[WORKER_MSG_BATCH];
	unsigned n;
};

static int already_filled(const struct batch *b, uint64_t addr)
{
	for (unsigned i = 0; i < b->n; i++)
		if (addr >= b->lo[i] && addr < b->hi[i])
			return 1;
	return 0;
}

/* --dontwake: wake every thread waiting in what the batch filled, one
 * UFFDIO_WAKE per contiguous span. Called on every way out of a batch,
 * the mm's end included: a fill nobody wakes leaves its threads waiting
 * for good. Faults skipped by --coalesce are in these spans; faults that
 * filled nothing (EEXIST, ENOENT, errors) were woken by fault_serve, and
 * pending retries fill and wake at once. */
static void batch_wake(struct rp_mm *mm, struct batch *b)
{
	/* By start (insertion sort: a batch is small, and mostly in order). */
	for (unsigned i = 1; i < b->n; i++) {
		uint64_t lo = b->lo[i], hi = b->hi[i];
		unsigned j = i;
		for (; j && b->lo[j - 1] > lo; j--) {
			b->lo[j] = b->lo[j - 1];
			b->hi[j] = b->hi[j - 1];
		}
		b->lo[j] = lo;
		b->hi[j] = hi;
	}
	for (unsigned i = 0; i < b->n;) {
		uint64_t lo = b->lo[i], hi = b->hi[i];
		for (i++; i < b->n && b->lo[i] <= hi; i++)
			if (b->hi[i] > hi)
				hi = b->hi[i];
		int r = fault_wake(mm, lo, hi);
		stat_inc(PROTO_STAT_BATCH_WAKES);
		if (r < 0 && r != -ESRCH)
			log_warn("pid %d uffd %d: wake of %#llx..%#llx failed: %s", (int)mm->pid,
				 mm->uffd, (unsigned long long)lo, (unsigned long long)hi, strerror(-r));
	}
	b->n = 0;
}

/* Handle the n messages of one batch. Returns -1 if the mm is gone. */
static int batch_serve(struct worker *w, struct rp_mm *mm, const struct uffd_msg *msgs, size_t n,
		       struct batch *b)
{
	const struct rp_config *cfg = &w->d->cfg;

	for (size_t i = 0; i < n; i++) {
		const struct uffd_msg *m = &msgs[i];
		if (m->event != UFFD_EVENT_PAGEFAULT) {
			on_msg(w, mm, m);
			continue;
		}
		uint64_t page = m->arg.pagefault.address & ~(uint64_t)(TMPL_PAGE - 1);
		if (cfg->coalesce && already_filled(b, page)) {
			stat_inc(PROTO_STAT_FAULTS);
			stat_inc(PROTO_STAT_FAULTS_COALESCED);
			continue;
		}
		uint64_t end = 0;
		if (on_fault(w, mm, m, cfg->dontwake, &end) < 0)
			return -1;
		if (end) {
			b->lo[b->n] = page;
			b->hi[b->n++] = end;
		}
	}
	return 0;
}

/* Read and handle what the uffd has queued, a bounded amount: --batch
 * messages per read(2), and with --drain up to READS_PER_WAKE reads, else
 * one (the loop calls again while the uffd is readable). Returns the
 * number of messages handled, or -1 if the mm is gone (and retired). */
static int drain(struct worker *w, struct rp_mm *mm)
{
	const struct rp_config *cfg = &w->d->cfg;
	struct uffd_msg msgs[WORKER_MSG_BATCH];
	size_t want = cfg->batch * sizeof(msgs[0]);
	int rounds = cfg->drain ? READS_PER_WAKE : 1, handled = 0;

	for (int round = 0; round < rounds; round++) {
		struct batch b = { .n = 0 };
		uint64_t ticket = atomic_fetch_add(&mm->ev_started, 1) + 1;
		ssize_t n = read(mm->uffd, msgs, want);
		if (n < 0) {
			atomic_store(&mm->ev_done, ticket);
			if (errno == EAGAIN || errno == EINTR)
				break;
			log_warn("pid %d uffd %d: read: %s", (int)mm->pid, mm->uffd, strerror(errno));
			mm_gone(w, mm);
			return -1;
		}
		int r = batch_serve(w, mm, msgs, (size_t)n / sizeof(msgs[0]), &b);
		if (cfg->dontwake)
			batch_wake(mm, &b);
		if (r < 0) {
			mm_gone(w, mm);
			return -1;
		}
		atomic_store(&mm->ev_done, ticket);
		handled += (int)((size_t)n / sizeof(msgs[0]));
		if ((size_t)n < want)
			break;
	}
	if (mm->npending && pending_retry(w, mm) < 0) {
		mm_gone(w, mm);
		return -1;
	}
	return handled;
}

/* --poll-us: keep reading this uffd for a while before going back to
 * sleep, so that the next fault of a busy thread finds the worker awake
 * (one wake-up less per fault, paid for in CPU). */
static void busy_poll(struct worker *w, struct rp_mm *mm, uint32_t us)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	double now = t.tv_sec + t.tv_nsec / 1e9, end = now + us / 1e6;

	while (now < end) {
		int n = drain(w, mm);
		if (n < 0)
			return;
		clock_gettime(CLOCK_MONOTONIC, &t);
		now = t.tv_sec + t.tv_nsec / 1e9;
		if (n > 0)
			end = now + us / 1e6;
	}
}

static void mm_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct rp_mm *mm = io->data;
	struct worker *w = ev_userdata(loop);

	(void)revents;
	if (drain(w, mm) >= 0 && w->d->cfg.poll_us)
		busy_poll(w, mm, w->d->cfg.poll_us);
}

/* Pending faults are retried from the worker's retry timer. */
static void retry_arm(struct worker *w, struct rp_mm *mm)
{
	(void)mm;
	if (!ev_is_active(&w->probe) || ev_timer_remaining(w->loop, &w->probe) > RETRY_S) {
		ev_timer_stop(w->loop, &w->probe);
		ev_timer_set(&w->probe, RETRY_S, 0.);
		ev_timer_start(w->loop, &w->probe);
	}
}

/* One timer does two jobs: retrying pending faults soon, and probing
 * fork children for liveness now and then (exit is not signalled on a
 * uffd, see DESIGN.md). */
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker *w = ev_userdata(loop);
	ev_tstamp now = ev_now(loop), next = PROBE_MIN_S;
	struct rp_mm *mm = w->mms, *nx;

	(void)t;
	(void)revents;
	for (; mm; mm = nx) {
		nx = mm->next;
		if (mm->npending && pending_retry(w, mm) < 0) {
			mm_gone(w, mm);
			continue;
		}
		if (now < mm->probe_at)
			continue;
		if (!fault_probe_alive(mm)) {
			mm_gone(w, mm);
			continue;
		}
		mm->probe_every = mm->probe_every * 2 > PROBE_MAX_S ? PROBE_MAX_S : mm->probe_every * 2;
		mm->probe_at = now + mm->probe_every;
	}
	/* Sleep until the next probe is due; with nothing served, not at all. */
	if (!w->mms)
		return;
	next = PROBE_MAX_S;
	for (mm = w->mms; mm; mm = mm->next) {
		ev_tstamp in = mm->npending ? RETRY_S : mm->probe_at - now;
		if (in < next)
			next = in < RETRY_S ? RETRY_S : in;
	}
	ev_timer_set(&w->probe, next, 0.);
	ev_timer_start(loop, &w->probe);
}

static void take_inbox(struct worker *w, struct rp_mm **add, struct rp_mm **del, int *stop)
{
	pthread_mutex_lock(&w->inbox_lock);
	*add = w->inbox_add;
	*del = w->inbox_del;
	*stop = w->stop;
	w->inbox_add = w->inbox_del = NULL;
	pthread_mutex_unlock(&w->inbox_lock);
}

/* workers_pause: nothing of this loop runs until workers_resume; faults
 * wait in the kernel meanwhile. */
static void pause_here(struct worker *w)
{
	pthread_mutex_lock(&w->inbox_lock);
	if (w->pause) {
		w->paused = 1;
		pthread_cond_broadcast(&w->cond);
		while (w->pause)
			pthread_cond_wait(&w->cond, &w->inbox_lock);
		w->paused = 0;
	}
	pthread_mutex_unlock(&w->inbox_lock);
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
	struct worker *w = ev_userdata(loop);
	struct rp_mm *add, *del, *nx;
	int stop;

	(void)a;
	(void)revents;
	take_inbox(w, &add, &del, &stop);
	for (; add; add = nx) {
		nx = add->add_next;
		serve(w, add);
	}
	for (; del; del = nx) {
		nx = del->del_next;
		retire(w, del);
		mm_put(del);
	}
	if (stop) {
		while (w->mms)
			retire(w, w->mms);
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	pause_here(w);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	ev_run(w->loop, 0);
	return NULL;
}

static int worker_init(struct rp_daemon *d, struct worker *w, int id)
{
	w->id = id;
	w->d = d;
	w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!w->loop)
		return -ENOMEM;
	persist_loop_made(w->loop);
	ev_set_userdata(w->loop, w);
	pthread_mutex_init(&w->inbox_lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	ev_async_init(&w->wake, on_wake);
	ev_async_start(w->loop, &w->wake);
	ev_timer_init(&w->probe, on_timer, PROBE_MIN_S, 0.);
	ev_timer_start(w->loop, &w->probe);
	return 0;
}

int workers_start(struct rp_daemon *d, int n)
{
	d->workers = calloc(n, sizeof(*d->workers));
	if (!d->workers)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		int r = worker_init(d, &d->workers[i], i);
		if (r < 0)
			return r;
		r = pthread_create(&d->workers[i].thread, NULL, worker_main, &d->workers[i]);
		if (r)
			return -r;
		d->nworkers = i + 1;
	}
	return 0;
}

void workers_stop(struct rp_daemon *d)
{
	for (int i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->workers[i];
		pthread_mutex_lock(&w->inbox_lock);
		w->stop = 1;
		pthread_mutex_unlock(&w->inbox_lock);
		ev_async_send(w->loop, &w->wake);
	}
	for (int i = 0; i < d->nworkers; i++) {
		pthread_join(d->workers[i].thread, NULL);
		ev_loop_destroy(d->workers[i].loop);
		pthread_mutex_destroy(&d->workers[i].inbox_lock);
		pthread_cond_destroy(&d->workers[i].cond);
	}
	free(d->workers);
	d->workers = NULL;
	d->nworkers = 0;
}

void worker_add(struct worker *w, struct rp_mm *mm)
{
	pthread_mutex_lock(&w->inbox_lock);
	mm->add_next = w->inbox_add;
	w->inbox_add = mm;
	pthread_mutex_unlock(&w->inbox_lock);
	ev_async_send(w->loop, &w->wake);
}

void worker_del(struct worker *w, struct rp_mm *mm)
{
	pthread_mutex_lock(&w->inbox_lock);
	mm->del_next = w->inbox_del;
	w->inbox_del = mm;
	pthread_mutex_unlock(&w->inbox_lock);
	ev_async_send(w->loop, &w->wake);
}

void workers_pause(struct rp_daemon *d)
{
	for (int i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->workers[i];
		pthread_mutex_lock(&w->inbox_lock);
		w->pause = 1;
		pthread_mutex_unlock(&w->inbox_lock);
		ev_async_send(w->loop, &w->wake);
	}
	for (int i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->workers[i];
		pthread_mutex_lock(&w->inbox_lock);
		while (!w->paused)
			pthread_cond_wait(&w->cond, &w->inbox_lock);
		pthread_mutex_unlock(&w->inbox_lock);
	}
}

void workers_resume(struct rp_daemon *d)
{
	for (int i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->workers[i];
		pthread_mutex_lock(&w->inbox_lock);
		w->pause = 0;
		pthread_cond_broadcast(&w->cond);
		pthread_mutex_unlock(&w->inbox_lock);
	}
}
