/* Served address spaces: see mm.h.
 *
 * Everything below "on the worker" runs on the thread of the worker that
 * serves the mm, and only there: reading the uffd, faults, events, the
 * range table, ops, probes. */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "template.h"
#include "uffd.h"

#define PAGE TMPL_PAGE

/* What we ask of every uffd. REMOVE is left out on purpose: a missing page
 * after MADV_DONTNEED faults again by itself and is refilled from the
 * template, while the REMOVE event would make every madvise() wait for us
 * (docs/design.md measures it). */
#define RP_UFFD_FEATURES                                                                 \
	(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP | \
	 UFFD_FEATURE_THREAD_ID)

/* Reads per wake-up of one uffd (--drain on) before the loop looks at the
 * others: a busy client cannot starve the rest. */
#define READS_PER_WAKE 8
/* Liveness probes of address spaces that stay quiet. */
#define PROBE_MIN_S 0.25
#define PROBE_MAX_S 8.0
/* Faults that got EAGAIN (an event in flight) are tried again this soon;
 * those that got ENOMEM back off from RETRY_NOMEM_S, doubling up to
 * RETRY_NOMEM_MAX_S. A fault still failing after RETRY_GIVE_UP_S lets the
 * address space go (the fallback: the kernel answers its faults). */
#define RETRY_AGAIN_S 0.0005
#define RETRY_NOMEM_S 0.001
#define RETRY_NOMEM_MAX_S 0.064
#define RETRY_GIVE_UP_S 2.0
/* Faults in a row that fail for a reason we do not know (the thread is
 * woken and faults again): past this, the address space is let go rather
 * than spun on for ever. */
#define BUGS_MAX 1000
/* A MAP held back for an event in flight (op_try) is tried again this
 * often, and goes ahead anyway after the cap. */
#define MAP_RETRY_S 0.001
#define MAP_WAIT_MAX_S 0.25
/* An event read before an earlier change's late event (follow.h) waits
 * for it REORDER_MAX_S, then as long as the kernel says an event is still
 * in flight, up to REORDER_HARD_S, asking again every REORDER_RECHECK_S;
 * measured, the late one comes within 20 ms (docs/design.md, "Two
 * threads' moves read in the opposite order"). */
#define REORDER_MAX_S 0.1
#define REORDER_HARD_S 1.0
#define REORDER_RECHECK_S 0.01

/* --- the range table's templates and memory --------------------------------- */

/* One store per daemon; set before any table exists (again, to the same
 * value, by each new mm, on any thread: hence atomic). */
static _Atomic(struct tmpl_store *) range_store;

static void range_tmpl_get(void *t)
{
	tmpl_ref(atomic_load_explicit(&range_store, memory_order_relaxed), t);
}

static void range_tmpl_put(void *t)
{
	tmpl_put(atomic_load_explicit(&range_store, memory_order_relaxed), t);
}

/* Nodes are charged to the uid of the table's mm (a fork family shares
 * nodes, and is one uid), and may outlive the mm (a sibling shares them,
 * or a journal capture holds them): each knows its account, so any table,
 * or none, frees it (ctx may be NULL there). A refusal is remembered so
 * that the request hears EDQUOT rather than ENOMEM. */
static void *range_node_alloc(void *ctx, size_t size)
{
	struct rp_mm *mm = ctx;
	void *p = acct_alloc_ref(mm->acct, size);

	if (!p && errno == EDQUOT)
		mm->budget_hit = 1;
	return p;
}

static void range_node_free(void *ctx, void *p, size_t size)
{
	(void)ctx;
	(void)size;
	acct_free_ref(p);
}

static const struct range_ops mm_ops = {
	.get = range_tmpl_get,
	.put = range_tmpl_put,
	.node_alloc = range_node_alloc,
	.node_free = range_node_free,
};

const struct range_ops *mm_range_ops(void)
{
	return &mm_ops;
}

/* A restart builds nodes before their mm exists: ctx is the account. */
static void *range_node_alloc_acct(void *ctx, size_t size)
{
	return acct_alloc_ref(ctx, size);
}

static const struct range_ops acct_ops = {
	.get = range_tmpl_get,
	.put = range_tmpl_put,
	.node_alloc = range_node_alloc_acct,
	.node_free = range_node_free,
};

const struct range_ops *mm_range_ops_acct(struct tmpl_store *store)
{
	atomic_store_explicit(&range_store, store, memory_order_relaxed);
	return &acct_ops;
}

/* --- the observer ------------------------------------------------------------ */

static void emit_range(struct rp_mm *mm, enum obs_type type, uint64_t start, uint64_t end,
		       const struct tmpl *t, const struct mm_op *op)
{
	struct obs_event ev = {
		.type = type,
		.mm = mm->id,
		.start = start,
		.end = end,
		.tmpl = t ? t->id : 0,
		.session = op ? op->session : 0,
		.req_seq = op ? op->req_seq : 0,
	};
	obs_emit(&mm->d->obs, &ev);
}

static void emit_mm_new(struct rp_mm *mm, const struct rp_mm *parent)
{
	struct obs_event ev = {
		.type = OBS_MM_NEW,
		.mm = mm->id,
		.parent = parent ? parent->id : 0,
		.fd = mm->uffd,
		.pid = mm->pid,
		.uid = mm->uid,
		.tree = mm->tree->id,
		.features = mm->features,
		.flags = mm->is_child ? OBS_MM_CHILD : 0,
	};
	obs_emit(&mm->d->obs, &ev);
}

/* --- accounting -------------------------------------------------------------- */

/* Follow a change of the table from n0 pieces and b0 bytes: the gauges and
 * the uid's account (never refused: the change is made). */
static void account(struct rp_mm *mm, size_t n0, uint64_t b0)
{
	int64_t dn = (int64_t)range_count(&mm->ranges) - (int64_t)n0;
	int64_t db = (int64_t)range_bytes(&mm->ranges) - (int64_t)b0;

	if (!dn && !db)
		return;
	acct_stat_add(mm->acct, PROTO_STAT_RANGES, dn);
	acct_stat_add(mm->acct, PROTO_STAT_BYTES, db);
	acct_adjust(mm->acct, ACCT_RANGES, dn);
	acct_adjust(mm->acct, ACCT_BYTES, db);
}

/* --- following the kernel ------------------------------------------------------ */

/* The kernel has made the change already: the table follows it even past
 * its piece limit (a hole or a move may need pieces), or it would go on
 * charging, and standing in the way of, memory that is gone. The next MAP
 * is refused until the table is back under its limit. Emitted as made. */
static long long table_unmap(void *ctx, uint64_t start, uint64_t end)
{
	struct rp_mm *mm = ctx;
	struct range_table *rt = &mm->ranges;
	size_t max = rt->max;

	rt->max = 0;
	long long r = range_remove(rt, start, end, NULL, NULL);
	rt->max = max;
	if (r > 0)
		emit_range(mm, OBS_UNMAP, start, end, NULL, NULL);
	return r;
}

static int table_copy(void *ctx, uint64_t from, uint64_t to, uint64_t len)
{
	struct rp_mm *mm = ctx;
	struct range_table *rt = &mm->ranges;
	size_t max = rt->max;

	rt->max = 0;
	int r = range_copy(rt, from, to, len);
	rt->max = max;
	if (r == 0)
		emit_range(mm, OBS_COPY, from, from + len, NULL, NULL);
	return r;
}

static void *follow_alloc(void *ctx, size_t size)
{
	struct rp_mm *mm = ctx;

	return acct_alloc(mm->acct, size);
}

static void follow_free(void *ctx, void *p)
{
	struct rp_mm *mm = ctx;

	acct_free(mm->acct, p);
}

static void fork_reached(void *ctx, void *child, int ok);

static const struct follow_ops follow_mm = {
	.unmap = table_unmap,
	.copy = table_copy,
	.fork = fork_reached,
	.alloc = follow_alloc,
	.free = follow_free,
};

/* --- creating and freeing ------------------------------------------------------ */

int mm_handshake(int fd, uint64_t *features)
{
	return uffd_handshake(fd, RP_UFFD_FEATURES, features);
}

static struct rp_mm *mm_alloc(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			      struct rp_tree *tree, pid_t pid, uint32_t id)
{
	struct rp_mm *mm = acct_calloc(a, 1, sizeof(*mm));

	if (!mm)
		return NULL;
	atomic_store_explicit(&range_store, &d->tmpls, memory_order_relaxed);
	acct_ref(a);
	mm->id = id ? id : rp_id_new(d, RP_ID_MM);
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
	range_table_init(&mm->ranges, d->cfg.lim.ranges, &mm_ops, mm);
	follow_init(&mm->fl, &mm->ranges, &follow_mm, mm);
	mm->accounted = 1;
	atomic_fetch_add(&tree->procs, 1);
	atomic_fetch_add(&tree->refs, 1);
	acct_stat_add(a, PROTO_STAT_PROCESSES, 1);
	return mm;
}

struct rp_mm *mm_new_client(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			    pid_t pid)
{
	struct rp_tree *tree = mm_tree_new(a, rp_id_new(d, RP_ID_TREE));
	struct rp_mm *mm = NULL;
	int e = tree ? acct_charge_fd(a, ACCT_PROCESSES) : -errno;

	if (e == 0 && !(mm = mm_alloc(d, uffd, features, a, tree, pid, 0))) {
		e = -errno;
		acct_uncharge_fd(a, ACCT_PROCESSES);
	}
	if (tree)
		mm_tree_put(tree); /* the mm's own reference is the one left */
	if (!mm) {
		errno = -e;
		return NULL;
	}
	emit_mm_new(mm, NULL);
	return mm;
}

/* The tree's descendant limit: the client itself plus max descendants
 * (procs counts both). */
static int tree_full(struct rp_mm *parent)
{
	uint32_t max = parent->d->cfg.lim.descendants;

	if (!max || atomic_load(&parent->tree->procs) <= max)
		return 0;
	acct_log(parent->acct, LOG_WARNING,
		 "a process tree reached %u descendants; further fork "
		 "children get ordinary anonymous memory",
		 max);
	acct_stat_add(parent->acct, PROTO_STAT_REFUSED, 1);
	return 1;
}

/* A fork child of parent with uffd ufd: same uid, same tree, its table
 * still empty (child_table). NULL and errno (EDQUOT past a budget,
 * ENOMEM); ufd is not closed. */
static struct rp_mm *new_child(struct rp_mm *parent, int ufd)
{
	struct rp_mm *mm;

	if (tree_full(parent) || acct_charge_fd(parent->acct, ACCT_PROCESSES) < 0) {
		errno = EDQUOT;
		return NULL;
	}
	if (!(mm = mm_alloc(parent->d, ufd, parent->features, parent->acct, parent->tree, 0, 0))) {
		acct_uncharge_fd(parent->acct, ACCT_PROCESSES);
		return NULL;
	}
	mm->is_child = 1;
	mm->report = parent->report;
	return mm;
}

/* The child's table: the parent's as it is now, shared (O(1)), but for the
 * sources of its moves still waiting for their UNMAP (the child's address
 * space has none there, unless the move kept it: docs/design.md). The
 * observer hears of the child from here on. -EDQUOT: the budget; what it
 * cannot forget it cannot follow either. */
static int child_table(struct rp_mm *parent, struct rp_mm *child)
{
	range_clone(&child->ranges, &parent->ranges);
	emit_mm_new(child, parent);
	long long r = follow_forget_recorded(&parent->fl, &follow_mm, child, 0, UINT64_MAX);
	account(child, 0, 0);
	return r < 0 ? -EDQUOT : 0;
}

struct rp_tree *mm_tree_new(struct acct *a, uint32_t id)
{
	struct rp_tree *t = acct_calloc(a, 1, sizeof(*t));

	if (t) {
		atomic_init(&t->refs, 1);
		t->id = id;
		t->acct = a;
		acct_ref(a);
	}
	return t;
}

void mm_tree_put(struct rp_tree *t)
{
	if (atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	struct acct *a = t->acct;
	acct_free(a, t);
	acct_put(a);
}

struct rp_mm *mm_restore(struct rp_daemon *d, int uffd, uint64_t features, struct acct *a,
			 pid_t pid, struct rp_tree *tree, int is_child, uint32_t id)
{
	struct rp_mm *mm = mm_alloc(d, uffd, features, a, tree, pid, id);

	if (!mm)
		return NULL;
	acct_adjust(a, ACCT_PROCESSES, 1);
	acct_adjust(a, ACCT_FDS, 1);
	mm->is_child = is_child;
	mm->accounted = 0; /* its table is charged once the replay is done */
	return mm;
}

void mm_restore_account(struct rp_mm *mm)
{
	mm->accounted = 1;
	account(mm, 0, 0);
}

void mm_ref(struct rp_mm *mm)
{
	atomic_fetch_add(&mm->refs, 1);
}

static void mm_free(struct rp_mm *mm)
{
	struct acct *a = mm->acct;
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);

	range_table_fini(&mm->ranges);
	if (mm->accounted)
		account(mm, n0, b0);
	if (mm->uffd >= 0) {
		/* Never served: nobody watches it. */
		close(mm->uffd);
		acct_uncharge(a, ACCT_FDS, 1);
	}
	follow_fini(&mm->fl);
	acct_free(a, mm->pending);
	acct_uncharge(a, ACCT_PROCESSES, 1);
	atomic_fetch_sub(&mm->tree->procs, 1);
	mm_tree_put(mm->tree);
	acct_stat_add(a, PROTO_STAT_PROCESSES, -1);
	acct_free(a, mm);
	acct_put(a);
}

void mm_put(struct rp_mm *mm)
{
	if (atomic_fetch_sub(&mm->refs, 1) == 1)
		mm_free(mm);
}

/* --- on the worker: serving and letting go ---------------------------------------- */

static void mm_readable(struct ev_loop *loop, ev_io *io, int revents);
static void on_probe(struct ev_loop *loop, ev_timer *t, int revents);
static void on_retry(struct ev_loop *loop, ev_timer *t, int revents);
static void op_complete(struct rp_mm *mm, struct mm_op *op, int status);
static int settle_at(struct rp_mm *mm, double now, double cap);
static double reorder_cap(struct rp_mm *mm, double now);

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

static void unwatch(struct rp_mm *mm)
{
	if (mm->pidfd < 0)
		return;
	ev_io_stop(mm->w->loop, &mm->pidfd_io);
	close(mm->pidfd);
	mm->pidfd = -1;
	acct_uncharge(mm->acct, ACCT_FDS, 1);
}

/* Stop serving: close the uffd so that every fault still waiting falls
 * back to the kernel (the process sees ordinary anonymous memory), answer
 * the ops held back, and drop the worker's reference (mm may be freed on
 * return). */
static void retire(struct rp_mm *mm)
{
	struct worker *w = mm->w;

	if (atomic_exchange(&mm->dead, 1))
		return;
	/* Told to the observer yet (a fork child is once it has a table)? */
	int told = !mm->fl.unborn;
	/* Fork children still waiting for our events get the table as it is. */
	follow_fini(&mm->fl);
	park_drop(&w->parked, &mm->park);
	ev_io_stop(w->loop, &mm->io);
	ev_timer_stop(w->loop, &mm->probe);
	ev_timer_stop(w->loop, &mm->retry);
	unwatch(mm);
	list_unlink(w, mm);
	worker_leave(&mm->d->workers, w, mm->acct);
	while (mm->held) {
		struct mm_op *op = mm->held;
		mm->held = op->next;
		op_complete(mm, op, -ENOTCONN);
	}
	mm->held_tail = NULL;
	mm->npending = 0;
	if (told) {
		struct obs_event ev = { .type = OBS_MM_END, .mm = mm->id };
		obs_emit(&mm->d->obs, &ev);
	}
	if (mm->report)
		acct_report_forget(mm->acct, mm->id);
	loop_close_fd(w->loop, mm->uffd);
	mm->uffd = -1;
	acct_uncharge(mm->acct, ACCT_FDS, 1);
	mm_put(mm);
}

/* On the main loop: the session of a client's mm hears that it was let go
 * (if it is still there: only the main loop changes mm->owner). */
static void lost_call(void *arg)
{
	struct rp_mm *mm = arg;

	if (mm->owner && mm->lost)
		mm->lost(mm->owner, mm);
	mm_put(mm);
}

/* The address space is gone, or can no longer be followed (fallback: the
 * kernel answers its faults from now on, with zeros). A child is ours
 * alone; a client's mm stays referenced by its session, which is told
 * when the mm is let go while the client may still be there. */
static void mm_gone(struct rp_mm *mm, const char *why, int fallback)
{
	if (fallback) {
		acct_log(mm->acct, LOG_WARNING,
			 "pid %d: %s; its refpages fall back to ordinary "
			 "anonymous memory",
			 (int)mm->pid, why);
		acct_stat_add(mm->acct, PROTO_STAT_RELEASED, 1);
	} else {
		acct_log(mm->acct, LOG_DEBUG, "pid %d: released: %s", (int)mm->pid, why);
		if (mm->is_child)
			acct_stat_add(mm->acct, PROTO_STAT_PROCS_RECLAIMED, 1);
	}
	if (fallback && !mm->is_child && !atomic_load(&mm->dead)) {
		mm_ref(mm);
		mm->lost_call.fn = lost_call;
		mm->lost_call.arg = mm;
		inbox_post(&mm->d->mainq, &mm->lost_call);
	}
	retire(mm);
}

/* The watched process exited. The pid may not be the mm's owner (a fault's
 * thread id is in the faulting task's pid namespace, and a mm can be
 * shared), so the uffd itself has the last word. */
static void on_exit_seen(struct ev_loop *loop, ev_io *io, int revents)
{
	struct rp_mm *mm = io->data;

	(void)loop;
	(void)revents;
	unwatch(mm);
	if (uffd_probe(mm->uffd, uffd_user_bottom()) == -ESRCH)
		mm_gone(mm, "process gone", 0);
}

/* Learn of the process's exit at once instead of at the next probe. */
static void watch(struct rp_mm *mm, pid_t pid)
{
	/* Past the uid's descriptor budget, no watch: the probe covers it. */
	if (mm->pidfd >= 0 || pid <= 0 || acct_charge(mm->acct, ACCT_FDS, 1) < 0)
		return;
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0) {
		acct_uncharge(mm->acct, ACCT_FDS, 1);
		return; /* not a thread group leader, or gone: the probe covers it */
	}
	mm->pidfd = fd;
	ev_io_init(&mm->pidfd_io, on_exit_seen, fd, EV_READ);
	mm->pidfd_io.data = mm;
	ev_io_start(mm->w->loop, &mm->pidfd_io);
}

static void serve(struct rp_mm *mm)
{
	struct ev_loop *loop = mm->w->loop;

	/* Brought back by a restart: threads the previous daemon left waiting
	 * on a fault it had read are woken to fault again, and this time we
	 * read it. */
	if (mm->wake_all)
		uffd_wake(mm->uffd, uffd_user_bottom(), uffd_top_of(mm->uffd));

	mm->probe_every = PROBE_MIN_S;
	ev_io_init(&mm->io, mm_readable, mm->uffd, EV_READ);
	mm->io.data = mm;
	ev_io_start(loop, &mm->io);
	mm->park = (struct park){ .io = &mm->io, .acct = mm->acct };
	ev_timer_init(&mm->probe, on_probe, PROBE_MIN_S, 0.);
	mm->probe.data = mm;
	ev_timer_start(loop, &mm->probe);
	ev_init(&mm->retry, on_retry);
	mm->retry.data = mm;
	list_link(mm->w, mm);
	watch(mm, mm->pid);
}

static void serve_call(void *arg)
{
	serve(arg);
}

static void retire_call(void *arg)
{
	struct rp_mm *mm = arg;

	retire(mm);
	mm_put(mm); /* the releaser's */
}

void mm_start(struct rp_mm *mm, struct worker *w)
{
	mm->w = w;
	mm_ref(mm); /* the worker's, until retire */
	mm->serve_call.fn = serve_call;
	mm->serve_call.arg = mm;
	inbox_post(&w->in, &mm->serve_call);
}

void mm_release(struct rp_mm *mm)
{
	if (!mm->w) {
		mm_put(mm);
		return;
	}
	mm->retire_call.fn = retire_call;
	mm->retire_call.arg = mm;
	inbox_post(&mm->w->in, &mm->retire_call);
}

void mm_foreach_on(struct worker *w, void (*fn)(struct rp_mm *mm, void *arg), void *arg)
{
	for (struct rp_mm *mm = w->mms; mm; mm = mm->next)
		if (!mm->fl.unborn)
			fn(mm, arg);
}

void mm_worker_stop(struct worker *w)
{
	while (w->mms)
		retire(w->mms);
}

/* Settling without waiting empties a queue (fork children on it get their
 * table) or lets its mm go: either way the list gets shorter in what is
 * left to do, whatever settling changes in it. */
void mm_worker_pause(struct worker *w)
{
	for (;;) {
		struct rp_mm *mm = w->mms;
		while (mm && (!follow_busy(&mm->fl) || mm->fl.unborn))
			mm = mm->next;
		if (!mm)
			return;
		settle_at(mm, ev_now(w->loop), 0);
	}
}

/* --- on the worker: probes and retries ------------------------------------------ */

/* Exit is not signalled on a uffd (DESIGN.md): a quiet address space is
 * asked now and then, less and less often, whether it is still there. */
static void on_probe(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct rp_mm *mm = t->data;

	(void)revents;
	if (uffd_probe(mm->uffd, uffd_user_bottom()) == -ESRCH) {
		mm_gone(mm, "process gone", 0);
		return;
	}
	mm->probe_every = mm->probe_every * 2 > PROBE_MAX_S ? PROBE_MAX_S : mm->probe_every * 2;
	ev_timer_set(t, mm->probe_every, 0.);
	ev_timer_start(loop, t);
}

/* A fault: the probe starts over from its shortest interval. */
static void probe_reset(struct rp_mm *mm)
{
	if (mm->probe_every == PROBE_MIN_S)
		return;
	mm->probe_every = PROBE_MIN_S;
	ev_timer_stop(mm->w->loop, &mm->probe);
	ev_timer_set(&mm->probe, PROBE_MIN_S, 0.);
	ev_timer_start(mm->w->loop, &mm->probe);
}

static void retry_arm(struct rp_mm *mm, double at)
{
	struct ev_loop *loop = mm->w->loop;
	double in = at - ev_now(loop);

	if (ev_is_active(&mm->retry) && ev_timer_remaining(loop, &mm->retry) <= in)
		return;
	ev_timer_stop(loop, &mm->retry);
	ev_timer_set(&mm->retry, in > 0 ? in : 0., 0.);
	ev_timer_start(loop, &mm->retry);
}

static int pending_push(struct rp_mm *mm, uint64_t addr, uint64_t flags, int32_t tid,
			enum uffd_class k)
{
	double now = ev_now(mm->w->loop);

	if (mm->npending == mm->cappending) {
		uint32_t cap = mm->cappending ? mm->cappending * 2 : 16;
		void *p = acct_realloc(mm->acct, mm->pending, cap * sizeof(*mm->pending));
		if (!p)
			return -ENOMEM;
		mm->pending = p;
		mm->cappending = cap;
	}
	double in = k == UFFD_NOMEM ? RETRY_NOMEM_S : RETRY_AGAIN_S;
	mm->pending[mm->npending++] = (struct pending_fault){
		.addr = addr,
		.flags = flags,
		.first = now,
		.next = now + in,
		.tries = 1,
		.tid = tid,
	};
	retry_arm(mm, now + in);
	return 0;
}

static struct fault_cfg fault_cfg(const struct rp_mm *mm, int dontwake, int32_t tid)
{
	return (struct fault_cfg){
		.fault_around = mm->d->cfg.fault_around,
		.dontwake = dontwake,
		.store = &mm->d->tmpls,
		.acct = mm->acct,
		.report = mm->report,
		.pid = (int32_t)mm->pid,
		.tid = tid,
		.mm = mm->id,
	};
}

/* The piece a fault at addr belongs to. A fault no piece contains, in a
 * VMA registered with us, comes from a mapping grown in place by mremap
 * (the kernel sends no event for it): the piece below grows up to it. */
static int lookup(struct rp_mm *mm, uint64_t addr, struct range_piece *p)
{
	if (range_lookup(&mm->ranges, addr, p))
		return 1;
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);
	int r = range_extend_to(&mm->ranges, addr, PAGE, p);
	if (r < 0)
		mm->cannot_follow = 1; /* this fault reads zeros, then the mm goes */
	if (r != 1)
		return 0;
	/* The whole piece, as it is now: a MAP the observer hears of sets
	 * what it names. */
	emit_range(mm, OBS_MAP, p->start, p->end, p->tmpl, NULL);
	account(mm, n0, b0);
	return 1;
}

/* Answer one fault (or try it again). Returns the class; *end as
 * fault_answer's. */
static enum uffd_class answer(struct rp_mm *mm, uint64_t addr, uint64_t flags, int32_t tid,
			      int dontwake, uint64_t *end)
{
	struct range_piece p;
	struct fault_cfg c = fault_cfg(mm, dontwake, tid);
	int found = lookup(mm, addr & ~(uint64_t)(PAGE - 1), &p);

	return fault_answer(mm->uffd, found ? &p : NULL, &mm->fs, addr, flags, &c, end);
}

/* Try one fault again, waking at once (dontwake or not). 1: keep it
 * (f->next says when to try next), 0: done, -1: the mm is gone
 * (retired). One where events still waiting touch it (follow.h) keeps
 * waiting without a time: it is tried once they are applied. */
static int pending_one(struct rp_mm *mm, struct pending_fault *f, double now)
{
	uint64_t page = f->addr & ~(uint64_t)(PAGE - 1), end;

	if (follow_holds(&mm->fl, page, page + PAGE, 0)) {
		f->next = 0;
		return 1;
	}
	if (f->next > now)
		return 1;
	enum uffd_class k = answer(mm, f->addr, f->flags, f->tid, 0, &end);
	if (k == UFFD_GONE_MM) {
		mm_gone(mm, "process gone", 0);
		return -1;
	}
	if (k != UFFD_RETRY && k != UFFD_NOMEM)
		return 0; /* answered, or woken to fault again */
	if (now - f->first >= RETRY_GIVE_UP_S) {
		mm_gone(mm,
			k == UFFD_NOMEM ? "the kernel kept refusing its page fills "
					  "(ENOMEM: its memory limit)"
					: "a fault stayed unfillable",
			1);
		return -1;
	}
	double in = RETRY_AGAIN_S;
	if (k == UFFD_NOMEM) {
		in = RETRY_NOMEM_S * (double)(1u << (f->tries < 6 ? f->tries : 6));
		in = in > RETRY_NOMEM_MAX_S ? RETRY_NOMEM_MAX_S : in;
	}
	f->tries++;
	f->next = now + in;
	return 1;
}

/* Retry what could not be filled. 0, or -1 if the mm is gone. */
static int pending_retry(struct rp_mm *mm)
{
	double now = ev_now(mm->w->loop), next = 0;
	uint32_t keep = 0;

	for (uint32_t i = 0; i < mm->npending; i++) {
		struct pending_fault f = mm->pending[i];
		int r = pending_one(mm, &f, now);
		if (r < 0)
			return -1;
		if (!r)
			continue;
		mm->pending[keep++] = f;
		if (f.next > 0)
			next = !next || f.next < next ? f.next : next;
	}
	mm->npending = keep;
	if (next > 0)
		retry_arm(mm, next);
	return 0;
}

static void ops_run_held(struct rp_mm *mm);

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct rp_mm *mm = t->data;

	(void)revents;
	mm_ref(mm);
	/* A read that failed for want of descriptors is tried again. */
	if (!ev_is_active(&mm->io) && !mm->park.parked)
		ev_io_start(loop, &mm->io);
	/* Events that waited enough for a late one go as they came. */
	double now = ev_now(loop);
	if (follow_busy(&mm->fl) && settle_at(mm, now, reorder_cap(mm, now)) < 0) {
		mm_put(mm);
		return;
	}
	if (!mm->npending || pending_retry(mm) == 0)
		ops_run_held(mm);
	mm_put(mm);
}

/* --- on the worker: events ----------------------------------------------------- */

/* After follow.c applied what it could: the gauges and the account, the
 * counts, the timer of the cap. 0, or -1 if mm was let go (r: what the
 * follow call returned). */
static int followed(struct rp_mm *mm, int r, size_t n0, uint64_t b0, const struct follow_count *n)
{
	account(mm, n0, b0);
	if (n->reordered)
		acct_stat_add(mm->acct, PROTO_STAT_EVENTS_REORDERED, n->reordered);
	if (n->expired)
		acct_log(mm->acct, LOG_NOTICE,
			 "pid %d: %u unmap or mremap events waited for an "
			 "earlier change's event that did not come (the kernel had none in flight, "
			 "%.0f s passed, or there was no room); applied in the order they came",
			 (int)mm->pid, n->expired, REORDER_HARD_S);
	if (r == -ENOBUFS) {
		mm_gone(mm,
			"a fork child unmapped or moved too much before its parent's events "
			"let it start",
			1);
		return -1;
	}
	if (r < 0) {
		mm_gone(mm,
			"its range table cannot follow an unmap or mremap within its memory "
			"budget",
			1);
		return -1;
	}
	double at = follow_deadline(&mm->fl, REORDER_MAX_S), now = ev_now(mm->w->loop);
	if (at > 0)
		retry_arm(mm, at > now ? at : now + REORDER_RECHECK_S);
	return 0;
}

/* An event read: only the timer (reorder_cap) lets events that wait for a
 * late one go before REORDER_HARD_S. */
static int on_change(struct rp_mm *mm, const struct follow_ev *e)
{
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);
	struct follow_count n = { 0, 0 };
	int r = follow_event(&mm->fl, e, ev_now(mm->w->loop), REORDER_HARD_S, &n);

	return followed(mm, r, n0, b0, &n);
}

/* How long the events that wait for a late one may wait, asked when the
 * timer fires: REORDER_MAX_S; past that, as long as the kernel says an
 * event is in flight (most likely the late one: its thread preempted
 * between dropping mmap_lock and queueing it, or its vCPU stopped by the
 * host), up to REORDER_HARD_S; not at all once it says none is (the late
 * one is not coming: its change raised the count before the events that
 * wait were even made, and it stays raised until it is read), or cannot
 * say (a kernel without UFFDIO_WRITEPROTECT). */
static double reorder_cap(struct rp_mm *mm, double now)
{
	double due = follow_deadline(&mm->fl, REORDER_MAX_S);

	if (due == 0 || now < due)
		return REORDER_HARD_S;
	return uffd_probe(mm->uffd, uffd_user_bottom()) == -EAGAIN ? REORDER_HARD_S : 0;
}

/* Apply what waited and can go by now, waiting at most cap. 0, or -1 if
 * mm was let go. */
static int settle_at(struct rp_mm *mm, double now, double cap)
{
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);
	struct follow_count n = { 0, 0 };
	int r = follow_settle(&mm->fl, now, cap, &n);

	return followed(mm, r, n0, b0, &n);
}

/* A fork child got its table: its own events that waited for it go, then
 * its faults and requests. */
static void child_ready(struct rp_mm *child)
{
	if (settle_at(child, ev_now(child->w->loop), REORDER_HARD_S) < 0)
		return;
	if (child->npending && pending_retry(child) < 0)
		return;
	ops_run_held(child);
}

/* The parent's events reached the place of a fork read while some of
 * them waited for a late one (follow.h): the child's table is the
 * parent's now. ctx: the parent; child: a reference of the fork's. Not ok
 * (the parent is unborn itself, or could not follow its events up to the
 * fork): the child is let go while still unborn, so the observer never
 * hears of it, and its faults fall back to the kernel. */
static void fork_reached(void *ctx, void *arg, int ok)
{
	struct rp_mm *parent = ctx, *child = arg;

	if (!atomic_load(&child->dead)) {
		if (!ok) {
			acct_log(child->acct, LOG_NOTICE,
				 "pid %d: a fork child could not get its "
				 "table (its parent's events could not be followed); its pages "
				 "fall back to the kernel",
				 (int)parent->pid);
			acct_stat_add(child->acct, PROTO_STAT_UNTRACKED, 1);
			retire(child);
		} else {
			follow_born(&child->fl);
			if (child_table(parent, child) < 0) {
				acct_stat_add(child->acct, PROTO_STAT_UNTRACKED, 1);
				retire(child);
			} else {
				child_ready(child);
			}
		}
	}
	mm_put(child);
}

static void on_fork(struct rp_mm *parent, int ufd)
{
	int fl = fcntl(ufd, F_GETFL);
	if (fl < 0 || fcntl(ufd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(ufd, F_SETFD, FD_CLOEXEC) < 0) {
		acct_log(parent->acct, LOG_ERR, "pid %d: fork child uffd %d unusable: %s",
			 (int)parent->pid, ufd, strerror(errno));
		close(ufd);
		return;
	}
	struct rp_mm *child = new_child(parent, ufd);
	if (!child) {
		/* Closing it hands the child's pages to the kernel: its faults
		 * are answered (zeros), never left waiting. */
		if (errno != EDQUOT)
			acct_log(parent->acct, LOG_ERR, "pid %d: cannot adopt a fork child: %s",
				 (int)parent->pid, strerror(errno));
		acct_stat_add(parent->acct, PROTO_STAT_UNTRACKED, 1);
		close(ufd);
		return;
	}
	child->w = parent->w;
	worker_enter(&parent->d->workers, child->w, child->acct);
	/* Served at once (the fork read, the child runs), with its table
	 * now, or where the fork falls among the parent's waiting events. A
	 * parent that is unborn itself has no table to give now: without
	 * room to wait, the child is let go unborn (the observer never hears
	 * of it). */
	int later = 0, orphan = 0;
	if (follow_busy(&parent->fl)) {
		later = follow_unborn(&child->fl) == 0;
		if (!later && parent->fl.unborn)
			orphan = child->fl.unborn = 1;
	}
	serve(child);
	acct_log(parent->acct, LOG_DEBUG, "pid %d uffd %d: fork child adopted as uffd %d%s",
		 (int)parent->pid, parent->uffd, ufd,
		 later ? ", its table after the events waiting before the fork" : "");
	if (later) {
		mm_ref(child);
		on_change(parent, &(struct follow_ev){ .type = FOLLOW_FORK, .child = child });
	} else if (orphan || child_table(parent, child) < 0) {
		acct_stat_add(child->acct, PROTO_STAT_UNTRACKED, 1);
		retire(child);
	}
}

/* 0, or -1 if mm was let go. */
static int on_event(struct rp_mm *mm, const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_FORK:
		acct_stat_add(mm->acct, PROTO_STAT_EV_FORK, 1);
		on_fork(mm, (int)m->arg.fork.ufd);
		break;
	case UFFD_EVENT_REMAP:
		acct_stat_add(mm->acct, PROTO_STAT_EV_REMAP, 1);
		on_change(mm, &(struct follow_ev){ .type = FOLLOW_REMAP,
						   .from = m->arg.remap.from,
						   .to = m->arg.remap.to,
						   .len = m->arg.remap.len });
		break;
	case UFFD_EVENT_UNMAP:
		acct_stat_add(mm->acct, PROTO_STAT_EV_UNMAP, 1);
		on_change(mm, &(struct follow_ev){ .type = FOLLOW_UNMAP,
						   .from = m->arg.remove.start,
						   .to = m->arg.remove.end });
		break;
	default:
		acct_log(mm->acct, LOG_ERR, "pid %d uffd %d: unknown uffd event %u", (int)mm->pid,
			 mm->uffd, m->event);
		break;
	}
	return atomic_load(&mm->dead) ? -1 : 0;
}

/* --- on the worker: reading the uffd --------------------------------------------- */

/* What one read(2)'s batch filled. With coalesce a second fault message
 * for a page in it (another thread's) is already answered; with dontwake
 * nothing in it is woken until batch_wake. At most one span per message. */
struct batch {
	unsigned n;
	uint64_t lo[MM_MSG_BATCH], hi[MM_MSG_BATCH];
};

static int already_filled(const struct batch *b, uint64_t page)
{
	for (unsigned i = 0; i < b->n; i++)
		if (b->lo[i] <= page && page < b->hi[i])
			return 1;
	return 0;
}

/* One UFFDIO_WAKE per contiguous run of what the batch filled. */
static void batch_wake(struct rp_mm *mm, struct batch *b)
{
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
		int r = uffd_wake(mm->uffd, lo, hi);
		acct_stat_add(mm->acct, PROTO_STAT_BATCH_WAKES, 1);
		if (r < 0 && r != -ESRCH)
			acct_log(mm->acct, LOG_WARNING, "pid %d: wake of %#llx..%#llx failed: %s",
				 (int)mm->pid, (unsigned long long)lo, (unsigned long long)hi,
				 strerror(-r));
	}
	b->n = 0;
}

/* The first fault names a thread of the process: its exit is watched. */
static void learn_pid(struct rp_mm *mm, const struct uffd_msg *m)
{
	if (mm->pid || !(mm->features & UFFD_FEATURE_THREAD_ID))
		return;
	mm->pid = (pid_t)m->arg.pagefault.feat.ptid;
	struct obs_event ev = { .type = OBS_MM_PID, .mm = mm->id, .pid = mm->pid };
	obs_emit(&mm->d->obs, &ev);
	watch(mm, mm->pid);
}

static int on_fault(struct rp_mm *mm, const struct uffd_msg *m, struct batch *b)
{
	const struct rp_config *cfg = &mm->d->cfg;
	uint64_t addr = m->arg.pagefault.address, flags = m->arg.pagefault.flags, end = 0;
	uint64_t page = addr & ~(uint64_t)(PAGE - 1);
	int32_t tid = mm->features & UFFD_FEATURE_THREAD_ID ? (int32_t)m->arg.pagefault.feat.ptid
							    : 0;

	if (cfg->coalesce && already_filled(b, page)) {
		acct_stat_add(mm->acct, PROTO_STAT_FAULTS, 1);
		acct_stat_add(mm->acct, PROTO_STAT_FAULTS_COALESCED, 1);
		return 0;
	}
	/* What it reads depends on the order of events still waiting for a
	 * late one (or, in an unborn child, on its table to come): it waits
	 * with them, and is answered once they are applied. */
	if (follow_holds(&mm->fl, page, page + PAGE, 0)) {
		if (pending_push(mm, addr, flags, tid, UFFD_RETRY) == 0)
			return 0;
		mm_gone(mm, "no memory (or budget) left to queue a fault retry", 1);
		return -1;
	}
	learn_pid(mm, m);
	probe_reset(mm);
	enum uffd_class k = answer(mm, addr, flags, tid, cfg->dontwake, &end);
	if (k == UFFD_GONE_MM) {
		mm_gone(mm, "process gone", 0);
		return -1;
	}
	if (mm->cannot_follow) {
		mm_gone(mm, "its range table cannot follow the kernel within its memory budget", 1);
		return -1;
	}
	mm->bugs = k == UFFD_BUG ? mm->bugs + 1 : 0;
	if (mm->bugs > BUGS_MAX) {
		mm_gone(mm, "its faults keep failing (see the lines above)", 1);
		return -1;
	}
	if (k == UFFD_RETRY || k == UFFD_NOMEM) {
		if (pending_push(mm, addr, flags, tid, k) < 0) {
			mm_gone(mm, "no memory (or budget) left to queue a fault retry", 1);
			return -1;
		}
	} else if (end) {
		b->lo[b->n] = page;
		b->hi[b->n++] = end;
	}
	return 0;
}

/* Handle the n messages of one batch. -1 if the mm was let go. */
static int batch_serve(struct rp_mm *mm, const struct uffd_msg *msgs, size_t n, struct batch *b)
{
	for (size_t i = 0; i < n; i++) {
		int r = msgs[i].event == UFFD_EVENT_PAGEFAULT ? on_fault(mm, &msgs[i], b)
							      : on_event(mm, &msgs[i]);
		if (r < 0) {
			/* Let go mid-batch: the fork events read but not
			 * handled carry children's uffds, which the read put in
			 * our table. Closed, they hand those children to the
			 * kernel (zeros), never left waiting, never leaked. */
			for (size_t j = i + 1; j < n; j++)
				if (msgs[j].event == UFFD_EVENT_FORK) {
					acct_stat_add(mm->acct, PROTO_STAT_UNTRACKED, 1);
					close((int)msgs[j].arg.fork.ufd);
				}
			return -1;
		}
	}
	return 0;
}

/* read(2) failed with err. A full descriptor table (a fork event brings
 * the child's uffd into ours) leaves the event queued: the kernel puts it
 * back, and the forking parent waits until we read it, so it is read
 * again later rather than the parent let go. -1 if the mm was let go. */
static int read_failed(struct rp_mm *mm, int err)
{
	if (err == EAGAIN || err == EINTR)
		return 0;
	if (err == EMFILE || err == ENFILE || err == ENOMEM) {
		acct_log(mm->acct, LOG_ERR, "pid %d: cannot read its uffd: %s; trying again",
			 (int)mm->pid, strerror(err));
		retry_arm(mm, ev_now(mm->w->loop) + RETRY_NOMEM_MAX_S);
		ev_io_stop(mm->w->loop, &mm->io);
		return 0;
	}
	acct_log(mm->acct, LOG_WARNING, "pid %d uffd %d: read: %s", (int)mm->pid, mm->uffd,
		 strerror(err));
	mm_gone(mm, "its uffd cannot be read", 0);
	return -1;
}

/* Read and handle what the uffd has queued, at most max messages: --batch
 * messages per read(2), and with --drain up to READS_PER_WAKE reads, else
 * one (the loop calls again while the uffd is readable). Returns the
 * number of messages handled, or -1 if the mm was let go. */
static int drain(struct rp_mm *mm, uint32_t max)
{
	const struct rp_config *cfg = &mm->d->cfg;
	struct uffd_msg msgs[MM_MSG_BATCH];
	int rounds = cfg->drain ? READS_PER_WAKE : 1, handled = 0;

	for (int round = 0; round < rounds && (uint32_t)handled < max; round++) {
		uint32_t want = cfg->batch < max - (uint32_t)handled ? cfg->batch
								     : max - (uint32_t)handled;
		struct batch b = { .n = 0 };
		ssize_t n = read(mm->uffd, msgs, want * sizeof(msgs[0]));
		if (n < 0)
			return read_failed(mm, errno) < 0 ? -1 : handled;
		int r = batch_serve(mm, msgs, (size_t)n / sizeof(msgs[0]), &b);
		if (cfg->dontwake && !atomic_load(&mm->dead))
			batch_wake(mm, &b);
		if (r < 0)
			return -1;
		handled += (int)((size_t)n / sizeof(msgs[0]));
		if ((size_t)n < want * sizeof(msgs[0]))
			break;
	}
	if (mm->npending && pending_retry(mm) < 0)
		return -1;
	if (mm->held)
		ops_run_held(mm);
	return atomic_load(&mm->dead) ? -1 : handled;
}

/* --poll-us: keep reading this uffd for a while before going back to
 * sleep, so that the next fault of a busy thread finds the worker awake
 * (one wake-up less per fault, paid for in CPU). */
static void busy_poll(struct rp_mm *mm, uint32_t us)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	double now = t.tv_sec + t.tv_nsec / 1e9, end = now + us / 1e6;

	while (now < end) {
		int n = drain(mm, mm->d->cfg.lim.fault_quota);
		if (n < 0)
			return;
		clock_gettime(CLOCK_MONOTONIC, &t);
		now = t.tv_sec + t.tv_nsec / 1e9;
		if (n > 0)
			end = now + us / 1e6;
	}
}

/* A uid takes at most its quota of messages per loop iteration, whatever
 * number of processes it spreads them over: past it, its uffds are parked
 * and woken a few at a time (worker.h), and every other uid gets its turn
 * first. */
static void mm_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct rp_mm *mm = io->data;
	uint32_t left = acct_turn_left(mm->acct, mm->w->id, ev_iteration(loop),
				       mm->d->cfg.lim.fault_quota);

	(void)revents;
	if (!left) {
		park(&mm->w->parked, &mm->park);
		return;
	}
	mm_ref(mm);
	int n = drain(mm, left);
	if (n > 0)
		acct_turn_use(mm->acct, mm->w->id, (uint32_t)n);
	if (n >= 0 && mm->d->cfg.poll_us)
		busy_poll(mm, mm->d->cfg.poll_us);
	mm_put(mm);
}

/* --- on the worker: ops ------------------------------------------------------------ */

static void op_done_call(void *arg)
{
	struct mm_op *op = arg;

	op->done(op);
}

static void op_complete(struct rp_mm *mm, struct mm_op *op, int status)
{
	if (op->t) {
		tmpl_put(&mm->d->tmpls, op->t);
		op->t = NULL;
	}
	op->status = status;
	op->call.fn = op_done_call;
	op->call.arg = op;
	inbox_post(&mm->d->mainq, &op->call);
}

static int map_apply(struct rp_mm *mm, struct mm_op *op)
{
	const struct rp_limits *lim = &mm->d->cfg.lim;
	uint64_t end = op->addr + op->len;
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);

	if ((lim->bytes && b0 + op->len > lim->bytes) ||
	    acct_check(mm->acct, ACCT_BYTES, op->len) < 0 ||
	    acct_check(mm->acct, ACCT_RANGES, 1) < 0)
		return -EDQUOT;
	/* What is left there of a moved mapping has gone: the client has a
	 * new one there. */
	follow_forget_recorded(&mm->fl, &follow_mm, mm, op->addr, end);
	follow_taken(&mm->fl, op->addr, end, 1);
	mm->budget_hit = 0;
	int r = range_insert(&mm->ranges, op->addr, end, op->t);
	if (r == -ENOSPC || (r == -ENOMEM && mm->budget_hit))
		r = -EDQUOT;
	if (r == -EEXIST)
		acct_log(mm->acct, LOG_DEBUG,
			 "pid %d: MAP [%#llx, +%#llx) refused: the table has a range there",
			 (int)mm->pid, (unsigned long long)op->addr, (unsigned long long)op->len);
	/* Taking back the piece may need nodes too (a path shared with a
	 * fork child): refused, the table keeps a piece the kernel does not
	 * have, so this address space is let go at its next fault. */
	if (r == 0 && (r = uffd_register(mm->uffd, op->addr, op->len)) < 0 &&
	    range_remove(&mm->ranges, op->addr, end, NULL, NULL) < 0)
		mm->cannot_follow = 1;
	if (r == 0)
		emit_range(mm, OBS_MAP, op->addr, end, op->t, op);
	account(mm, n0, b0);
	return r;
}

static void unregister_run(void *arg, uint64_t s, uint64_t e)
{
	struct rp_mm *mm = arg;
	int r = uffd_unregister(mm->uffd, s, e - s);

	/* A hole the process unmapped before its event reached us: what
	 * is still registered there goes with its munmap. */
	if (r < 0 && r != -EINVAL && r != -ENOMEM)
		acct_log(mm->acct, LOG_WARNING, "pid %d: unregister %#llx..%#llx: %s", (int)mm->pid,
			 (unsigned long long)s, (unsigned long long)e, strerror(-r));
}

static int unmap_apply(struct rp_mm *mm, struct mm_op *op)
{
	uint64_t end = op->addr + op->len;
	size_t n0 = range_count(&mm->ranges);
	uint64_t b0 = range_bytes(&mm->ranges);

	mm->budget_hit = 0;
	long long r = range_remove(&mm->ranges, op->addr, end, unregister_run, mm);
	if (r >= 0) {
		follow_taken(&mm->fl, op->addr, end, 0);
		if (r > 0)
			emit_range(mm, OBS_UNMAP, op->addr, end, NULL, op);
	}
	account(mm, n0, b0);
	/* A hole in a piece needs a slot: a full table or budget is the
	 * client's limit. */
	if (r == -ENOSPC || (r == -ENOMEM && mm->budget_hit))
		return -EDQUOT;
	return r < 0 ? (int)r : 0;
}

/* munmap(2) and mremap(2) free the old address range before their event is
 * queued, and the kernel lets the client go on only once we have read it:
 * another thread of the client can map the freed address and send its MAP
 * before the event is even in the uffd. Done at once, the MAP would find
 * the old range still in the table (EEXIST), or the late event would
 * remove or move the new range (its untouched pages would read zeros).
 * So while the kernel says an event is in flight (uffd_probe), the MAP is
 * held back (its session reads nothing more meanwhile), tried again after
 * every read of the uffd and every MAP_RETRY_S, and goes ahead after
 * MAP_WAIT_MAX_S whatever the kernel says (a client that munmaps without
 * end from another thread must not stall its MAPs for ever). 1 if op was
 * answered, 0 if it is held. */
static int op_try(struct rp_mm *mm, struct mm_op *op)
{
	double now = ev_now(mm->w->loop);

	/* It must not overtake events still waiting for a late one that
	 * touch its range (or a fork among them: the child must not get it):
	 * ops_run_held tries it again once they are applied. */
	if (follow_holds(&mm->fl, op->addr, op->addr + op->len, 1))
		return 0;
	if (op->type == MM_OP_MAP && uffd_probe(mm->uffd, op->addr) == -EAGAIN) {
		if (!op->since) {
			op->since = now;
			acct_stat_add(mm->acct, PROTO_STAT_MAPS_WAITED, 1);
		}
		if (now - op->since < MAP_WAIT_MAX_S) {
			retry_arm(mm, now + MAP_RETRY_S);
			return 0;
		}
		acct_log(mm->acct, LOG_NOTICE,
			 "pid %d: MAP [%#llx, +%#llx): an unmap, mremap or fork "
			 "event is still in flight after %.0f ms; mapping anyway",
			 (int)mm->pid, (unsigned long long)op->addr, (unsigned long long)op->len,
			 (now - op->since) * 1e3);
		acct_stat_add(mm->acct, PROTO_STAT_MAPS_WAIT_EXPIRED, 1);
	}
	op_complete(mm, op, op->type == MM_OP_MAP ? map_apply(mm, op) : unmap_apply(mm, op));
	return 1;
}

static void ops_run_held(struct rp_mm *mm)
{
	while (mm->held && !atomic_load(&mm->dead)) {
		/* Once answered, op is its session's again: read next first. */
		struct mm_op *op = mm->held, *next = op->next;
		if (!op_try(mm, op))
			return;
		if (!(mm->held = next))
			mm->held_tail = NULL;
	}
}

/* On the worker: read what the uffd has first (the events before the op
 * are applied before it), then the op, or hold it behind those held. */
static void op_run(void *arg)
{
	struct mm_op *op = arg;
	struct rp_mm *mm = op->mm;

	if (atomic_load(&mm->dead)) {
		op_complete(mm, op, -ENOTCONN);
		return;
	}
	if (drain(mm, mm->d->cfg.batch) < 0) {
		op_complete(mm, op, -ENOTCONN);
		return;
	}
	op->next = NULL;
	if (!mm->held && op_try(mm, op))
		return;
	if (mm->held_tail)
		mm->held_tail->next = op;
	else
		mm->held = op;
	mm->held_tail = op;
}

void mm_submit(struct rp_mm *mm, struct mm_op *op)
{
	op->mm = mm;
	op->since = 0;
	op->call.fn = op_run;
	op->call.arg = op;
	inbox_post(&mm->w->in, &op->call);
}
