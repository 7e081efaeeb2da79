/* The restart wing's journal writer: the core's state changes, as the
 * observer hears them, into the state journal (journal.h), and the fd
 * store. See wing.h.
 *
 * With the fd store (journaling), each change is one record appended by
 * the thread that makes it, before anyone hears of it: a daemon killed at
 * any moment leaves descriptors and a journal that restore.c goes on from.
 * The journal is compacted in the background once it outgrows the last
 * image: the main thread captures sessions and templates, each worker the
 * address spaces it owns (a range tree is captured by taking a reference
 * to its root: nodes are immutable while shared), and the image is built
 * from those while everything goes on (journal.h says why that is
 * consistent). Without the fd store nothing is written until an upgrade,
 * which writes one full image with the workers paused. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "hmap.h"
#include "log.h"
#include "mm.h"
#include "observer.h"
#include "session.h"
#include "stats.h"
#include "template.h"
#include "wing_int.h"
#include "worker.h"

/* Compaction: when the journal holds more than this many times the last
 * image's bytes (and at least COMPACT_MIN), checked every COMPACT_EVERY_S;
 * a capture some worker has not answered within CAPTURE_MAX_S (it waits in
 * the kernel on a client) is given up and tried again later. */
#define COMPACT_RATIO 2
#define COMPACT_MIN (1u << 20)
#define COMPACT_EVERY_S 0.25
#define CAPTURE_MAX_S 5.0

/* --- the fd store ----------------------------------------------------------------- */

void wing_name(char out[WING_NAME_MAX], char kind, uint32_t id)
{
	snprintf(out, WING_NAME_MAX, "%c%u", kind, id);
}

/* systemd closes a stored fd itself once it hangs up (FDPOLL); a datagram
 * it could not take is lost, and said once. */
static void notify(struct wing *wg, const char *msg, int *fd)
{
	int r = sd_pid_notify_with_fds(0, 0, msg, fd, fd ? 1 : 0);

	if (r <= 0 && !atomic_exchange(&wg->store_warned, 1))
		log_warn("fd store: cannot send '%s': %s; what is not stored does not survive a "
			 "restart (logged once)",
			 msg, r < 0 ? strerror(-r) : "no $NOTIFY_SOCKET");
}

void wing_store(struct wing *wg, char kind, uint32_t id, int fd)
{
	char name[WING_NAME_MAX], msg[64];

	if (!wg->o.fdstore)
		return;
	wing_name(name, kind, id);
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	notify(wg, msg, &fd);
}

void wing_unstore(struct wing *wg, const char *name)
{
	char msg[64];

	if (!wg->o.fdstore)
		return;
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	notify(wg, msg, NULL);
}

static void unstore(struct wing *wg, char kind, uint32_t id)
{
	char name[WING_NAME_MAX];

	wing_name(name, kind, id);
	wing_unstore(wg, name);
}

/* --- records ------------------------------------------------------------------------ */

static void append(struct wing *wg, enum jnl_type type, const void *p, size_t len)
{
	int r = jnl_append(&wg->w, type, p, len, NULL);

	if (r == 0) {
		if (atomic_exchange(&wg->append_failing, 0))
			log_notice("the state journal is written again");
		return;
	}
	if (!atomic_exchange(&wg->append_failing, 1))
		log_err("cannot append to the state journal: %s; a restart now would lose what "
			"changed since",
			strerror(-r));
}

static void emit_session(struct wing *wg, const struct obs_event *ev)
{
	switch (ev->type) {
	case OBS_SESSION_NEW: {
		struct jnl_session_new r = { ev->session, ev->pid, ev->uid, ev->gid };
		wing_store(wg, 'c', ev->session, ev->fd);
		append(wg, JNL_SESSION_NEW, &r, sizeof(r));
		break;
	}
	case OBS_SESSION_END: {
		struct jnl_ended r = { .id = ev->session };
		append(wg, JNL_SESSION_END, &r, sizeof(r));
		unstore(wg, 'c', ev->session);
		break;
	}
	case OBS_SESSION_MM: {
		struct jnl_session_mm r = { ev->session, ev->mm };
		append(wg, JNL_SESSION_MM, &r, sizeof(r));
		break;
	}
	case OBS_HANDLE: {
		struct jnl_handle_set r = { ev->session, ev->handle, ev->tmpl, ev->uses };
		append(wg, JNL_HANDLE, &r, sizeof(r));
		break;
	}
	default: {
		struct jnl_reply r = { ev->session, ev->req_seq, ev->status, ev->id, ev->value };
		append(wg, JNL_REPLY, &r, sizeof(r));
		break;
	}
	}
}

static void emit_mm(struct wing *wg, const struct obs_event *ev)
{
	switch (ev->type) {
	case OBS_MM_NEW: {
		struct jnl_mm_new r = {
			.id = ev->mm,
			.parent = ev->parent,
			.pid = ev->pid,
			.uid = ev->uid,
			.tree = ev->tree,
			.flags = ev->flags & OBS_MM_CHILD ? JNL_MM_CHILD : 0,
			.features = ev->features,
		};
		wing_store(wg, 'u', ev->mm, ev->fd);
		append(wg, JNL_MM_NEW, &r, sizeof(r));
		break;
	}
	case OBS_MM_END: {
		struct jnl_ended r = { .id = ev->mm };
		append(wg, JNL_MM_END, &r, sizeof(r));
		unstore(wg, 'u', ev->mm);
		break;
	}
	case OBS_MM_PID: {
		struct jnl_mm_pid r = { ev->mm, ev->pid };
		append(wg, JNL_MM_PID, &r, sizeof(r));
		break;
	}
	case OBS_MAP: {
		struct jnl_map r = {
			ev->mm, ev->tmpl, ev->session, ev->req_seq, ev->start, ev->end
		};
		append(wg, JNL_MAP, &r, sizeof(r));
		break;
	}
	case OBS_UNMAP: {
		struct jnl_unmap r = { .mm = ev->mm,
				       .session = ev->session,
				       .req_seq = ev->req_seq,
				       .start = ev->start,
				       .end = ev->end };
		append(wg, JNL_UNMAP, &r, sizeof(r));
		break;
	}
	default: {
		struct jnl_copy r = {
			.mm = ev->mm, .from = ev->start, .to = ev->to, .len = ev->end - ev->start
		};
		append(wg, JNL_COPY, &r, sizeof(r));
		break;
	}
	}
}

/* The observer: any thread, in the order of each object's changes. */
static void on_event(void *ctx, const struct obs_event *ev)
{
	struct wing *wg = ctx;

	if (!wg->journaling || wg->restoring)
		return;
	if (ev->type <= OBS_REPLY)
		emit_session(wg, ev);
	else
		emit_mm(wg, ev);
}

/* A template's page in the journal file: page + 1 and its CRC in t->obs
 * (0: none yet). */
static int tmpl_page(const struct tmpl *t, uint32_t *page, uint32_t *crc)
{
	uintptr_t v = atomic_load(&t->obs);

	if (!v)
		return 0;
	*page = (uint32_t)(v & 0xffffffffu) - 1;
	*crc = (uint32_t)(v >> 32);
	return 1;
}

/* Its page into the file (once): 0 or -errno. The main loop (a template
 * made) and the compaction thread (every live template into an image) may
 * both try: the one that loses gives its page back. */
static int tmpl_write(struct wing *wg, struct tmpl *t)
{
	uintptr_t none = 0;
	uint32_t crc;
	long idx;

	if (atomic_load(&t->obs))
		return 0;
	if ((idx = jnl_page_alloc(&wg->w)) < 0)
		return (int)idx;
	int r = jnl_page_write(&wg->w, (uint32_t)idx, t->page, &crc);
	uintptr_t v = (uintptr_t)((uint64_t)crc << 32 | ((uint64_t)idx + 1));
	if (r < 0 || !atomic_compare_exchange_strong(&t->obs, &none, v))
		jnl_page_free(&wg->w, (uint32_t)idx);
	return r;
}

static void on_tmpl_made(void *ctx, struct tmpl *t)
{
	struct wing *wg = ctx;
	uint32_t page, crc;

	if (!wg->journaling || wg->restoring)
		return;
	int r = tmpl_write(wg, t);
	if (r < 0 || !tmpl_page(t, &page, &crc)) {
		if (!atomic_exchange(&wg->append_failing, 1))
			log_err("cannot write a template page to the state journal: %s",
				strerror(-r));
		return;
	}
	struct jnl_tmpl rec = { t->id, t->key, page, crc };
	append(wg, JNL_TMPL_NEW, &rec, sizeof(rec));
}

static void on_tmpl_freed(void *ctx, struct tmpl *t)
{
	struct wing *wg = ctx;
	uint32_t page, crc;

	if (!wg->writer_open || !tmpl_page(t, &page, &crc))
		return;
	if (wg->journaling) {
		struct jnl_ended rec = { .id = t->id };
		append(wg, JNL_TMPL_FREE, &rec, sizeof(rec));
	}
	jnl_page_free(&wg->w, page);
}

void wing_subscribe(struct wing *wg, struct tmpl_ops *tops);

void wing_subscribe(struct wing *wg, struct tmpl_ops *tops)
{
	wg->d->obs.emit = on_event;
	wg->d->obs.ctx = wg;
	tops->made = on_tmpl_made;
	tops->freed = on_tmpl_freed;
	tops->ctx = wg;
}

/* --- the journal file --------------------------------------------------------------- */

int wing_journal_open(struct wing *wg, int fd, const struct jnl_info *info)
{
	int fresh = fd < 0, r;

	if (fresh && (fd = memfd_create("refpaged-journal", MFD_CLOEXEC)) < 0)
		return -errno;
	r = info ? jnl_writer_resume(&wg->w, fd, info)
		 : jnl_writer_init(&wg->w, fd, wg->o.version ? wg->o.version : JNL_VERSION);
	if (r < 0) {
		if (fresh)
			close(fd);
		return r;
	}
	wg->fd = fd;
	wg->writer_open = 1;
	if (fresh && wg->o.fdstore) {
		char msg[64];
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", WING_SNAP_NAME);
		notify(wg, msg, &fd);
	}
	return 0;
}

void wing_counters_attach(struct wing *wg, int restored)
{
	struct jnl_counters *c = mmap(NULL, JNL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, wg->fd,
				      (off_t)JNL_COUNTERS_OFF);

	if (c == MAP_FAILED) {
		log_err("cannot map the counters: %s; they start from zero after a restart",
			strerror(errno));
		return;
	}
	/* What went on before us, if anything: cumulative counters go on,
	 * gauges follow what came back. */
	int live = restored && c->magic == JNL_COUNTERS_MAGIC && c->count <= JNL_MAX_STATS;
	if (restored && !live)
		log_warn("restore: the live counters are unusable; they start from zero");
	for (unsigned i = 0; i < PROTO_STAT_COUNT; i++) {
		uint64_t mine = stat_get(i);
		c->v[i] = live && i < c->count && !stat_is_gauge(i) ? c->v[i] + mine : mine;
	}
	c->count = PROTO_STAT_COUNT;
	c->magic = JNL_COUNTERS_MAGIC;
	stats_move((_Atomic uint64_t *)c->v);
	wg->counters = c;
}

/* --- capturing and compacting ----------------------------------------------------------- */

/* One address space as a worker captured it: its root referenced. */
struct cap_mm {
	struct jnl_mm rec;
	struct range_node *root;
};

struct cap_worker {
	struct loop_call call;
	struct capture *c;
	struct worker *w;
	struct cap_mm *v;
	size_t n, cap;
	int oom;
};

struct cap_session {
	struct jnl_session rec;
	struct tmpl **t; /* handle i's template (referenced) or NULL */
	uint32_t *uses;
};

struct capture {
	struct wing *wg;
	unsigned waiting;      /* workers yet to answer */
	int aborted;           /* given up: freed when the last answers */
	int result;            /* of the commit, for the main loop */
	int committing;        /* handed to the compaction thread: no way back */
	int done;              /* committed (or failed), under wg->cap_lock */
	uint64_t image_len;    /* of the image committed */
	struct loop_call call; /* to the compaction thread and back */
	ev_tstamp started;
	uint64_t main_seq;
	struct cap_worker *workers;
	struct cap_session *sessions;
	size_t nsessions;
	int oom;
};

static void capture_free(struct capture *c)
{
	struct rp_daemon *d = c->wg->d;
	struct range_table any; /* nodes know their account: any table frees them */

	range_table_init(&any, 0, mm_range_ops(), NULL);
	for (unsigned i = 0; i < d->workers.n; i++) {
		struct cap_worker *cw = &c->workers[i];
		for (size_t k = 0; k < cw->n; k++)
			if (cw->v[k].root)
				range_node_put(&any, cw->v[k].root);
		free(cw->v);
	}
	for (size_t i = 0; i < c->nsessions; i++) {
		struct cap_session *s = &c->sessions[i];
		for (uint32_t k = 0; k < s->rec.nhandles; k++)
			if (s->t[k])
				tmpl_put(&d->tmpls, s->t[k]);
		free(s->t);
		free(s->uses);
	}
	free(c->sessions);
	free(c->workers);
	free(c);
}

static void capture_one(struct rp_mm *mm, void *arg)
{
	struct cap_worker *cw = arg;

	if (cw->n == cw->cap) {
		size_t cap = cw->cap ? cw->cap * 2 : 64;
		void *p = realloc(cw->v, cap * sizeof(*cw->v));
		if (!p) {
			cw->oom = 1;
			return;
		}
		cw->v = p;
		cw->cap = cap;
	}
	const struct range_node *root = range_root(&mm->ranges);
	cw->v[cw->n++] = (struct cap_mm){
		.rec = { .id = mm->id,
			 .pid = mm->pid,
			 .uid = mm->uid,
			 .tree = mm->tree->id,
			 .features = mm->features,
			 .flags = mm->is_child ? JNL_MM_CHILD : 0,
			 .seq = jnl_last_seq(&cw->c->wg->w) },
		.root = root ? range_node_ref(root) : NULL,
	};
}

static void capture_done(struct capture *c);

static void worker_answered(void *arg)
{
	struct cap_worker *cw = arg;
	struct capture *c = cw->c;

	if (--c->waiting)
		return;
	if (c->aborted) {
		c->wg->stale_caps--;
		capture_free(c);
	} else
		capture_done(c);
}

/* On the worker: every mm it owns, at one instant (nothing else of its
 * runs meanwhile, and only it appends their records). */
static void worker_capture(void *arg)
{
	struct cap_worker *cw = arg;

	mm_foreach_on(cw->w, capture_one, cw);
	cw->call.fn = worker_answered;
	inbox_post(&cw->c->wg->d->mainq, &cw->call);
}

/* Main thread: sessions, their handles and last replies, at one instant. */
static int capture_sessions(struct capture *c)
{
	struct rp_daemon *d = c->wg->d;

	c->main_seq = jnl_last_seq(&c->wg->w);
	c->sessions = calloc(d->nsessions ? d->nsessions : 1, sizeof(*c->sessions));
	if (!c->sessions)
		return -ENOMEM;
	for (struct session *s = d->sessions; s; s = s->next) {
		struct cap_session *cs = &c->sessions[c->nsessions];
		uint32_t n = s->ntmpls;
		cs->t = calloc(n ? n : 1, sizeof(*cs->t));
		cs->uses = calloc(n ? n : 1, sizeof(*cs->uses));
		if (!cs->t || !cs->uses) {
			free(cs->t);
			free(cs->uses);
			return -ENOMEM;
		}
		cs->rec = (struct jnl_session){
			.id = s->id,
			.pid = s->pid,
			.uid = s->uid,
			.gid = s->gid,
			.mm = s->mm ? s->mm->id : 0,
			.nhandles = n,
			.last_seq = s->last_seq,
			.last_status = s->last.status,
			.last_id = s->last.id,
			.flags = s->replied ? JNL_SESSION_REPLIED : 0,
			.last_value = s->last.value,
		};
		for (uint32_t k = 0; k < n; k++) {
			if ((cs->t[k] = s->tmpls[k]))
				tmpl_ref(&d->tmpls, cs->t[k]);
			cs->uses[k] = s->tmpl_uses[k];
		}
		c->nsessions++;
	}
	return 0;
}

static struct capture *capture_new(struct wing *wg)
{
	struct rp_daemon *d = wg->d;
	struct capture *c = calloc(1, sizeof(*c));

	if (!c || !(c->workers = calloc(d->workers.n ? d->workers.n : 1, sizeof(*c->workers)))) {
		free(c);
		return NULL;
	}
	c->wg = wg;
	for (unsigned i = 0; i < d->workers.n; i++) {
		c->workers[i].c = c;
		c->workers[i].w = &d->workers.v[i];
	}
	return c;
}

/* --- encoding ------------------------------------------------------------------------ */

struct encoder {
	struct wing *wg;
	struct jnl_image_builder b;
	struct hmap nodes, tmpls; /* pointer -> image index (tmpls: 1, written) */
	int err;
};

/* The template into the image once; 0 or -errno. */
static int enc_tmpl(struct encoder *e, struct tmpl *t)
{
	uint32_t page, crc;

	if (hmap_get(&e->tmpls, (uintptr_t)t))
		return 0;
	if (!tmpl_page(t, &page, &crc)) {
		int r = tmpl_write(e->wg, t);
		if (r < 0 || !tmpl_page(t, &page, &crc))
			return r < 0 ? r : -EIO;
	}
	struct jnl_tmpl rec = { t->id, t->key, page, crc };
	int r = jnl_image_add_tmpl(&e->b, &rec);
	return r < 0 ? r : hmap_put(&e->tmpls, (uintptr_t)t, 1);
}

/* The node's index, its subtrees first (each distinct node once); 0 and
 * e->err on error. The depth is the AVL height: no deep recursion. */
static uint32_t enc_node(struct encoder *e, const struct range_node *n)
{
	uint32_t idx;

	if (!n || e->err)
		return 0;
	if ((idx = (uint32_t)hmap_get(&e->nodes, (uintptr_t)n)))
		return idx;
	uint32_t l = enc_node(e, range_node_left(n)), r = enc_node(e, range_node_right(n));
	struct tmpl *t = range_node_tmpl(n);
	if (e->err || (e->err = enc_tmpl(e, t)) < 0)
		return 0;
	struct jnl_node rec = { .start = range_node_start(n),
				.end = range_node_end(n),
				.left = l,
				.right = r,
				.tmpl = t->id };
	if (!(idx = jnl_image_add_node(&e->b, &rec)) ||
	    (e->err = hmap_put(&e->nodes, (uintptr_t)n, idx)) < 0) {
		e->err = e->err ? e->err : -ENOMEM;
		return 0;
	}
	return idx;
}

static int enc_sessions(struct encoder *e, const struct capture *c)
{
	for (size_t i = 0; i < c->nsessions && !e->err; i++) {
		const struct cap_session *s = &c->sessions[i];
		struct jnl_handle *h = calloc(s->rec.nhandles ? s->rec.nhandles : 1, sizeof(*h));
		if (!h)
			return -ENOMEM;
		for (uint32_t k = 0; k < s->rec.nhandles && !e->err; k++) {
			if (s->t[k] && (e->err = enc_tmpl(e, s->t[k])) == 0)
				h[k] = (struct jnl_handle){ s->t[k]->id, s->uses[k] };
		}
		if (!e->err)
			e->err = jnl_image_add_session(&e->b, &s->rec, h);
		free(h);
	}
	return e->err;
}

/* Every template alive (journal.h: the image has each template alive at
 * its capture, and any a captured node or handle names). Under the
 * store's lock: a template's page is written when it is made, so this
 * only adds entries. */
static void enc_live(struct tmpl *t, void *arg)
{
	struct encoder *e = arg;
	uint32_t page, crc;

	if (!e->err && tmpl_page(t, &page, &crc))
		e->err = enc_tmpl(e, t);
}

static int encode(struct encoder *e, const struct capture *c)
{
	struct rp_daemon *d = e->wg->d;

	tmpl_store_foreach(&d->tmpls, enc_live, e);
	for (unsigned i = 0; i < d->workers.n && !e->err; i++) {
		const struct cap_worker *cw = &c->workers[i];
		if (cw->oom)
			return -ENOMEM;
		for (size_t k = 0; k < cw->n && !e->err; k++) {
			struct jnl_mm rec = cw->v[k].rec;
			rec.root = enc_node(e, cw->v[k].root);
			if (!e->err)
				e->err = jnl_image_add_mm(&e->b, &rec);
		}
	}
	return e->err ? e->err : enc_sessions(e, c);
}

/* Build the image of c and commit it. 0 or -errno. */
static int commit(struct wing *wg, struct capture *c)
{
	struct rp_daemon *d = wg->d;
	struct encoder e = { .wg = wg };
	struct jnl_ids next = {
		.tmpl = tmpl_next_id(&d->tmpls),
		.session = atomic_load(&d->next_id[RP_ID_SESSION]),
		.mm = atomic_load(&d->next_id[RP_ID_MM]),
		.tree = atomic_load(&d->next_id[RP_ID_TREE]),
	};
	const void *image;
	size_t len = 0;

	jnl_image_init(&e.b);
	int r = c->oom ? -ENOMEM : encode(&e, c);
	if (r == 0)
		r = jnl_image_finish(&e.b, c->main_seq, &next, &image, &len);
	if (r == 0)
		r = jnl_compact_commit(&wg->w, image, len);
	else
		jnl_compact_abort(&wg->w);
	if (r == 0)
		c->image_len = len;
	jnl_image_free(&e.b);
	hmap_free(&e.nodes);
	hmap_free(&e.tmpls);
	return r;
}

/* On the main loop, the compaction thread done. */
static void committed(void *arg)
{
	struct capture *c = arg;
	struct wing *wg = c->wg;

	if (c->result < 0)
		log_err("journal compaction failed: %s; the journal goes on growing",
			strerror(-c->result));
	else
		wg->image_len = c->image_len;
	if (c->result == 0)
		log_debug("journal compacted: image %llu bytes, %.1f ms",
			  (unsigned long long)wg->image_len, (ev_time() - c->started) * 1e3);
	if (wg->cap == c)
		wg->cap = NULL;
	capture_free(c);
}

/* On the compaction thread: the image is encoded from what the capture
 * holds (nodes are immutable while referenced) and committed, as long as
 * it takes, while the main loop and the workers go on. */
static void commit_off_loop(void *arg)
{
	struct capture *c = arg;
	struct wing *wg = c->wg;

	c->result = commit(wg, c);
	pthread_mutex_lock(&wg->cap_lock);
	c->done = 1;
	pthread_cond_broadcast(&wg->cap_done);
	pthread_mutex_unlock(&wg->cap_lock);
	c->call.fn = committed;
	inbox_post(&c->wg->d->mainq, &c->call);
}

static void capture_done(struct capture *c)
{
	c->call.fn = commit_off_loop;
	c->call.arg = c;
	c->committing = 1;
	inbox_post(&c->wg->compactor.in, &c->call);
}

static void compact_start(struct wing *wg)
{
	struct rp_daemon *d = wg->d;
	struct capture *c = capture_new(wg);
	uint64_t q;

	if (!c)
		return;
	if (jnl_compact_begin(&wg->w, &q) < 0) {
		free(c->workers);
		free(c);
		return;
	}
	c->started = ev_time();
	if (capture_sessions(c) < 0)
		c->oom = 1;
	wg->cap = c;
	c->waiting = d->workers.n;
	for (unsigned i = 0; i < d->workers.n; i++) {
		struct cap_worker *cw = &c->workers[i];
		cw->call.fn = worker_capture;
		cw->call.arg = cw;
		inbox_post(&cw->w->in, &cw->call);
	}
	if (!d->workers.n)
		capture_done(c);
}

static void on_compact_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct wing *wg = t->data;
	uint64_t bytes = jnl_journal_bytes(&wg->w);
	uint64_t want = wg->image_len * COMPACT_RATIO;

	(void)loop;
	(void)revents;
	if (wg->cap && !wg->cap->committing && ev_time() - wg->cap->started > CAPTURE_MAX_S) {
		log_warn("journal compaction: a worker did not answer within %.0f s (it waits in "
			 "the kernel on a client); trying again later",
			 CAPTURE_MAX_S);
		jnl_compact_abort(&wg->w);
		wg->cap->aborted = 1;
		wg->stale_caps++;
		wg->cap = NULL;
		return;
	}
	/* Not while a capture given up still waits for a worker: each one
	 * holds every template and range tree it captured, and a worker
	 * stuck on one client would otherwise make them pile up. */
	if (!wg->cap && !wg->stale_caps && bytes > (want > COMPACT_MIN ? want : COMPACT_MIN))
		compact_start(wg);
}

/* A compaction the compaction thread is committing, waited for (at most
 * the time of one image: the main loop stops or upgrades). Its clean-up
 * comes later, on the main loop (committed). */
static void wait_committed(struct wing *wg)
{
	struct capture *c = wg->cap;

	if (!c || !c->committing)
		return;
	pthread_mutex_lock(&wg->cap_lock);
	while (!c->done)
		pthread_cond_wait(&wg->cap_done, &wg->cap_lock);
	pthread_mutex_unlock(&wg->cap_lock);
}

void wing_compaction_drop(struct wing *wg)
{
	/* The workers and the compaction thread are stopped: what they were
	 * asked will never answer, or its answer will not be run. */
	if (!wg->cap)
		return;
	if (!wg->cap->committing)
		jnl_compact_abort(&wg->w);
	capture_free(wg->cap);
	wg->cap = NULL;
}

void wing_journal_start(struct wing *wg)
{
	ev_timer_init(&wg->compact_timer, on_compact_timer, COMPACT_EVERY_S, COMPACT_EVERY_S);
	wg->compact_timer.data = wg;
	ev_timer_start(wg->d->loop, &wg->compact_timer);
}

/* --- the whole state, workers paused ---------------------------------------------------- */

int wing_sync_image(struct wing *wg)
{
	struct rp_daemon *d = wg->d;
	uint64_t q;
	int r;

	if (!wg->writer_open && (r = wing_journal_open(wg, -1, NULL)) < 0)
		return r;
	if (wg->cap && !wg->cap->committing) {
		/* Its workers are paused: it cannot finish now. */
		jnl_compact_abort(&wg->w);
		wg->cap->aborted = 1;
		wg->stale_caps++;
		wg->cap = NULL;
	}
	wait_committed(wg);
	struct capture *c = capture_new(wg);
	if (!c)
		return -ENOMEM;
	if ((r = jnl_compact_begin(&wg->w, &q)) < 0) {
		capture_free(c);
		return r;
	}
	if (capture_sessions(c) < 0)
		c->oom = 1;
	for (unsigned i = 0; i < d->workers.n; i++)
		mm_foreach_on(c->workers[i].w, capture_one, &c->workers[i]);
	r = commit(wg, c);
	if (r == 0)
		wg->image_len = c->image_len;
	capture_free(c);
	if (r < 0)
		log_err("cannot write the state journal: %s", strerror(-r));
	if (wg->counters == NULL && r == 0) {
		/* Without the fd store the counters lived in the process: the
		 * next daemon finds them in the file. */
		struct jnl_counters *cp = mmap(NULL, JNL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
					       wg->fd, (off_t)JNL_COUNTERS_OFF);
		if (cp != MAP_FAILED) {
			for (unsigned i = 0; i < PROTO_STAT_COUNT; i++)
				cp->v[i] = stat_get(i);
			cp->count = PROTO_STAT_COUNT;
			cp->magic = JNL_COUNTERS_MAGIC;
			munmap(cp, JNL_PAGE);
		}
	}
	return r;
}
