/* Unit tests for the state journal (daemon/journal.c): round trips of
 * every record and of images whose range trees share nodes, the replay
 * filter (capture seqs, fork children, templates not alive, rejections),
 * torn tails, damaged slots, versions, deferred template-page reuse,
 * resuming, a crash after every write of a long scripted workload, and a
 * long random workload with many compactions.
 *
 * The crash simulation sees every write the writer makes: this binary is
 * linked with --wrap for pwrite, fallocate and ftruncate, and the
 * wrappers below log them while a test asks for it. Each logged write is
 * then applied, in order, to a second memfd (whole, and torn in half),
 * which must read back as the state after the operations completed by
 * then, or after the one under way. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal.h"

/* --- the logged writes ----------------------------------------------------------- */

enum { IO_WRITE, IO_PUNCH, IO_TRUNC };

struct io_op {
	int kind;
	uint64_t off, len;
	uint8_t *data; /* IO_WRITE */
	size_t done;   /* script operations completed when it was made */
};

/* The done of the writes of jnl_writer_init: no state to check yet. */
#define INIT_OP SIZE_MAX

static struct {
	int fd; /* logged: writes to this fd; -1: none */
	size_t done;
	struct io_op *v;
	size_t n, cap;
} io_log = { .fd = -1 };

ssize_t __real_pwrite(int fd, const void *buf, size_t n, off_t off);
int __real_fallocate(int fd, int mode, off_t off, off_t len);
int __real_ftruncate(int fd, off_t len);
ssize_t __wrap_pwrite(int fd, const void *buf, size_t n, off_t off);
int __wrap_fallocate(int fd, int mode, off_t off, off_t len);
int __wrap_ftruncate(int fd, off_t len);

static void io_add(int kind, uint64_t off, uint64_t len, const void *data)
{
	if (io_log.n == io_log.cap) {
		io_log.cap = io_log.cap ? io_log.cap * 2 : 1024;
		io_log.v = realloc(io_log.v, io_log.cap * sizeof(*io_log.v));
		assert_non_null(io_log.v);
	}
	struct io_op *o = &io_log.v[io_log.n++];
	*o = (struct io_op){ kind, off, len, NULL, io_log.done };
	if (data) {
		o->data = malloc(len);
		assert_non_null(o->data);
		memcpy(o->data, data, len);
	}
}

ssize_t __wrap_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	ssize_t r = __real_pwrite(fd, buf, n, off);

	if (fd == io_log.fd && r > 0)
		io_add(IO_WRITE, (uint64_t)off, (uint64_t)r, buf);
	return r;
}

int __wrap_fallocate(int fd, int mode, off_t off, off_t len)
{
	int r = __real_fallocate(fd, mode, off, len);

	if (fd == io_log.fd && r == 0)
		io_add(IO_PUNCH, (uint64_t)off, (uint64_t)len, NULL);
	return r;
}

int __wrap_ftruncate(int fd, off_t len)
{
	int r = __real_ftruncate(fd, len);

	if (fd == io_log.fd && r == 0)
		io_add(IO_TRUNC, (uint64_t)len, 0, NULL);
	return r;
}

static void io_log_reset(int fd)
{
	for (size_t i = 0; i < io_log.n; i++)
		free(io_log.v[i].data);
	free(io_log.v);
	memset(&io_log, 0, sizeof(io_log));
	io_log.fd = fd;
	io_log.done = INIT_OP;
}

/* Op o applied to fd, its first `part` bytes only for a write. */
static void io_apply(int fd, const struct io_op *o, uint64_t part)
{
	if (o->kind == IO_WRITE)
		assert_int_equal(__real_pwrite(fd, o->data, part, (off_t)o->off), (ssize_t)part);
	else if (o->kind == IO_PUNCH)
		assert_int_equal(__real_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						  (off_t)o->off, (off_t)o->len),
				 0);
	else
		assert_int_equal(__real_ftruncate(fd, (off_t)o->off), 0);
}

static int new_memfd(void)
{
	int fd = memfd_create("test-journal", MFD_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint32_t rnd(uint64_t *s, uint32_t n)
{
	return (uint32_t)(rng_next(s) % n);
}

/* --- the state, as a daemon and a restore both see it ------------------------------- */

#define MAXID 2048
#define MAXH 8
#define PG ((uint64_t)JNL_PAGE)
#define BASE 0x10000000ull
#define SPAN 48 /* pages of address space the workload maps in */

struct piece {
	uint64_t start, end;
	uint32_t tmpl;
};

struct wmm {
	int alive;
	struct jnl_mm_new m; /* parent kept 0: the image does not have it */
	struct piece *v;
	size_t n, cap;
};

struct wsess {
	int alive;
	struct jnl_session s; /* s.nhandles: used entries of h */
	struct jnl_handle h[MAXH];
};

struct wtmpl {
	int alive;
	struct jnl_tmpl t;
};

struct world {
	struct wtmpl t[MAXID];
	struct wsess s[MAXID];
	struct wmm m[MAXID];
};

static struct world *world_new(void)
{
	struct world *W = calloc(1, sizeof(*W));

	assert_non_null(W);
	return W;
}

static void world_free(struct world *W)
{
	for (int i = 0; i < MAXID; i++)
		free(W->m[i].v);
	free(W);
}

static void piece_add(struct wmm *m, uint64_t s, uint64_t e, uint32_t t)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 16;
		m->v = realloc(m->v, m->cap * sizeof(*m->v));
		assert_non_null(m->v);
	}
	size_t i = m->n++;
	while (i && m->v[i - 1].start > s) {
		m->v[i] = m->v[i - 1];
		i--;
	}
	m->v[i] = (struct piece){ s, e, t };
}

static int w_map(struct wmm *m, uint64_t s, uint64_t e, uint32_t t)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->v[i].start < e && s < m->v[i].end)
			return -1;
	piece_add(m, s, e, t);
	return 0;
}

static void w_unmap(struct wmm *m, uint64_t s, uint64_t e)
{
	struct piece *old = m->v;
	size_t n = m->n;

	m->v = NULL;
	m->n = m->cap = 0;
	for (size_t i = 0; i < n; i++) {
		struct piece p = old[i];
		if (p.end <= s || e <= p.start) {
			piece_add(m, p.start, p.end, p.tmpl);
			continue;
		}
		if (p.start < s)
			piece_add(m, p.start, s, p.tmpl);
		if (p.end > e)
			piece_add(m, e, p.end, p.tmpl);
	}
	free(old);
}

/* range_copy's semantics: the source stays, the destination is replaced. */
static void w_copy(struct wmm *m, uint64_t from, uint64_t to, uint64_t len)
{
	struct piece *c = malloc((m->n + 1) * sizeof(*c));
	size_t k = 0;

	assert_non_null(c);
	for (size_t i = 0; i < m->n; i++) {
		uint64_t s = m->v[i].start > from ? m->v[i].start : from;
		uint64_t e = m->v[i].end < from + len ? m->v[i].end : from + len;
		if (s < e)
			c[k++] = (struct piece){ s - from + to, e - from + to, m->v[i].tmpl };
	}
	w_unmap(m, to, to + len);
	for (size_t i = 0; i < k; i++)
		piece_add(m, c[i].start, c[i].end, c[i].tmpl);
	free(c);
}

static int w_mm_new(struct world *W, const struct jnl_mm_new *n)
{
	struct wmm *m = &W->m[n->id];

	if (n->id >= MAXID || m->alive || (n->parent && !W->m[n->parent].alive))
		return -1;
	m->alive = 1;
	m->m = *n;
	m->m.parent = 0;
	m->n = 0;
	for (size_t i = 0; n->parent && i < W->m[n->parent].n; i++) {
		const struct piece *p = &W->m[n->parent].v[i];
		piece_add(m, p->start, p->end, p->tmpl);
	}
	return 0;
}

static int w_session(struct world *W, const union jnl_payload *p, unsigned type)
{
	struct wsess *s = &W->s[type == JNL_HANDLE ? p->handle.session : p->reply.session];

	if (!s->alive)
		return -1;
	if (type == JNL_HANDLE) {
		if (p->handle.index >= MAXH)
			return -1;
		s->h[p->handle.index] = (struct jnl_handle){ p->handle.tmpl, p->handle.uses };
		if (p->handle.index >= s->s.nhandles)
			s->s.nhandles = p->handle.index + 1;
		return 0;
	}
	s->s.last_seq = p->reply.req_seq;
	s->s.last_status = p->reply.status;
	s->s.last_id = p->reply.id;
	s->s.last_value = p->reply.value;
	s->s.flags |= JNL_SESSION_REPLIED;
	return 0;
}

static int w_mm_op(struct world *W, const union jnl_payload *p, unsigned type)
{
	struct wmm *m = &W->m[type == JNL_MAP     ? p->map.mm
			      : type == JNL_UNMAP ? p->unmap.mm
			      : type == JNL_COPY  ? p->copy.mm
						  : p->mm_pid.id];

	if (!m->alive)
		return -1;
	if (type == JNL_MAP)
		return w_map(m, p->map.start, p->map.end, p->map.tmpl);
	if (type == JNL_UNMAP)
		w_unmap(m, p->unmap.start, p->unmap.end);
	else if (type == JNL_COPY)
		w_copy(m, p->copy.from, p->copy.to, p->copy.len);
	else
		m->m.pid = p->mm_pid.pid;
	return 0;
}

/* A record applied to the state: 0, or -1 where it makes no sense. */
static int w_apply(struct world *W, unsigned type, const union jnl_payload *p)
{
	switch (type) {
	case JNL_TMPL_NEW:
		if (p->tmpl_new.id >= MAXID || W->t[p->tmpl_new.id].alive)
			return -1;
		W->t[p->tmpl_new.id] = (struct wtmpl){ 1, p->tmpl_new };
		return 0;
	case JNL_TMPL_FREE:
	case JNL_SESSION_END:
	case JNL_MM_END: {
		int *alive = type == JNL_TMPL_FREE     ? &W->t[p->end.id].alive
			     : type == JNL_SESSION_END ? &W->s[p->end.id].alive
						       : &W->m[p->end.id].alive;
		if (!*alive)
			return -1;
		*alive = 0;
		if (type == JNL_MM_END)
			W->m[p->end.id].n = 0;
		return 0;
	}
	case JNL_SESSION_NEW: {
		const struct jnl_session_new *n = &p->session_new;
		if (n->id >= MAXID || W->s[n->id].alive)
			return -1;
		memset(&W->s[n->id], 0, sizeof(W->s[n->id]));
		W->s[n->id].alive = 1;
		W->s[n->id].s = (struct jnl_session){
			.id = n->id, .pid = n->pid, .uid = n->uid, .gid = n->gid
		};
		return 0;
	}
	case JNL_SESSION_MM:
		if (!W->s[p->session_mm.session].alive)
			return -1;
		W->s[p->session_mm.session].s.mm = p->session_mm.mm;
		return 0;
	case JNL_HANDLE:
	case JNL_REPLY:
		return w_session(W, p, type);
	case JNL_MM_NEW:
		return w_mm_new(W, &p->mm_new);
	default:
		return w_mm_op(W, p, type);
	}
}

static void hash_in(uint64_t *h, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n--)
		*h = (*h ^ *b++) * 0x100000001b3ull;
}

/* Everything a restore would bring back, as one number. */
static uint64_t world_hash(const struct world *W)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < MAXID; i++) {
		if (W->t[i].alive)
			hash_in(&h, &W->t[i].t, sizeof(W->t[i].t));
		if (W->s[i].alive) {
			hash_in(&h, &W->s[i].s, sizeof(W->s[i].s));
			hash_in(&h, W->s[i].h, W->s[i].s.nhandles * sizeof(struct jnl_handle));
		}
		if (W->m[i].alive) {
			hash_in(&h, &W->m[i].m, sizeof(W->m[i].m));
			for (size_t k = 0; k < W->m[i].n; k++) {
				const struct piece *p = &W->m[i].v[k];
				hash_in(&h, &p->start, sizeof(p->start));
				hash_in(&h, &p->end, sizeof(p->end));
				hash_in(&h, &p->tmpl, sizeof(p->tmpl));
			}
		}
	}
	return h;
}

/* The content of template id's page. */
static void tmpl_page(uint32_t id, uint8_t *page)
{
	for (size_t i = 0; i < JNL_PAGE; i += 4) {
		uint32_t v = id * 0x9e3779b9u ^ (uint32_t)i;
		memcpy(page + i, &v, 4);
	}
}

/* --- reading back into a state ---------------------------------------------------- */

struct rctx {
	struct world *W;
	int fd;
	struct jnl_node *nodes; /* by index - 1 */
	uint32_t nnodes, cap;
	int fail;
	char why[160];
	/* What the record callback saw, for the tests that look. */
	uint64_t seqs[256];
	unsigned types[256];
	union jnl_payload recs[256];
	size_t nrecs;
	uint32_t reject_mm, reject_tmpl; /* reject these (0: none) */
};

__attribute__((format(printf, 2, 3))) static int rfail(struct rctx *c, const char *fmt, ...)
{
	va_list ap;

	if (!c->fail) {
		va_start(ap, fmt);
		vsnprintf(c->why, sizeof(c->why), fmt, ap);
		va_end(ap);
	}
	c->fail = 1;
	return JNL_REJECT;
}

static int check_page(struct rctx *c, const struct jnl_tmpl *t)
{
	static uint8_t want[JNL_PAGE], got[JNL_PAGE];

	tmpl_page(t->id, want);
	if (jnl_read_page(c->fd, t->page, t->crc, got) != JNL_OK || memcmp(want, got, JNL_PAGE))
		return rfail(c, "template %u: page %u is not its content", t->id, t->page);
	return 0;
}

static int cb_tmpl(void *ctx, const struct jnl_tmpl *t)
{
	struct rctx *c = ctx;
	union jnl_payload p = { .tmpl_new = *t };

	if (t->id == c->reject_tmpl)
		return JNL_REJECT;
	if (check_page(c, t) || w_apply(c->W, JNL_TMPL_NEW, &p))
		return rfail(c, "template %u", t->id);
	return 0;
}

static int cb_node(void *ctx, uint32_t index, const struct jnl_node *n)
{
	struct rctx *c = ctx;

	if (index != c->nnodes + 1 || n->left >= index || n->right >= index)
		return rfail(c, "node %u out of order", index);
	if (c->nnodes == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 64;
		c->nodes = realloc(c->nodes, c->cap * sizeof(*c->nodes));
		assert_non_null(c->nodes);
	}
	c->nodes[c->nnodes++] = *n;
	return 0;
}

/* In order: the pieces of the tree at node idx. */
static int walk(struct rctx *c, uint32_t idx, struct wmm *m)
{
	if (!idx)
		return 0;
	const struct jnl_node *n = &c->nodes[idx - 1];
	if (walk(c, n->left, m) < 0)
		return -1;
	if (m->n && m->v[m->n - 1].end > n->start)
		return -1;
	piece_add(m, n->start, n->end, n->tmpl);
	return walk(c, n->right, m);
}

static int cb_mm(void *ctx, const struct jnl_mm *im)
{
	struct rctx *c = ctx;
	struct jnl_mm_new n = { .id = im->id,
				.pid = im->pid,
				.uid = im->uid,
				.tree = im->tree,
				.flags = im->flags,
				.features = im->features };

	if (im->id == c->reject_mm)
		return JNL_REJECT;
	if (w_mm_new(c->W, &n) < 0 || walk(c, im->root, &c->W->m[im->id]) < 0)
		return rfail(c, "mm %u", im->id);
	return 0;
}

static int cb_session(void *ctx, const struct jnl_session *s, const struct jnl_handle *h)
{
	struct rctx *c = ctx;
	struct wsess *w = &c->W->s[s->id];

	if (s->id >= MAXID || w->alive || s->nhandles > MAXH)
		return rfail(c, "session %u", s->id);
	w->alive = 1;
	w->s = *s;
	memcpy(w->h, h, s->nhandles * sizeof(*h));
	return 0;
}

static int cb_record(void *ctx, uint64_t seq, enum jnl_type type, const union jnl_payload *p)
{
	struct rctx *c = ctx;

	if (c->nrecs < 256) {
		c->seqs[c->nrecs] = seq;
		c->types[c->nrecs] = type;
		c->recs[c->nrecs++] = *p;
	}
	if ((type == JNL_MM_NEW && p->mm_new.id == c->reject_mm) ||
	    (type == JNL_TMPL_NEW && p->tmpl_new.id == c->reject_tmpl))
		return JNL_REJECT;
	if (type == JNL_TMPL_NEW && check_page(c, &p->tmpl_new))
		return JNL_REJECT;
	if (w_apply(c->W, type, p) < 0)
		return rfail(c, "record %llu (%s) does not apply", (unsigned long long)seq,
			     jnl_type_name(type));
	return 0;
}

static const struct jnl_callbacks cbs = { cb_tmpl, cb_node, cb_mm, cb_session, cb_record };

static void rctx_init(struct rctx *c, int fd)
{
	memset(c, 0, sizeof(*c));
	c->W = world_new();
	c->fd = fd;
}

static void rctx_fini(struct rctx *c)
{
	world_free(c->W);
	free(c->nodes);
}

/* Read fd into c (initialised here): the jnl_read result. */
static enum jnl_err read_into(int fd, struct rctx *c, struct jnl_info *info)
{
	rctx_init(c, fd);
	return jnl_read(fd, &cbs, c, info);
}

/* Read fd into c: it must read, with no callback failing. */
static void replay(int fd, struct rctx *c, struct jnl_info *info)
{
	assert_int_equal(read_into(fd, c, info), JNL_OK);
	assert_false(c->fail);
}

/* Read fd into c rejecting mm and template tmpl (0: none). */
static void replay_rejecting(int fd, struct rctx *c, struct jnl_info *info, uint32_t mm,
			     uint32_t tmpl)
{
	rctx_init(c, fd);
	c->reject_mm = mm;
	c->reject_tmpl = tmpl;
	assert_int_equal(jnl_read(fd, &cbs, c, info), JNL_OK);
}

/* What was read back is the live state W; c and info are freed. */
static void replay_done(struct rctx *c, struct jnl_info *info, const struct world *W)
{
	assert_int_equal(world_hash(c->W), world_hash(W));
	jnl_info_free(info);
	rctx_fini(c);
}

/* The hash of what fd reads back as (0 when it cannot be read). */
static uint64_t read_hash(int fd, struct jnl_info *out)
{
	struct rctx c;
	struct jnl_info info;
	enum jnl_err e = read_into(fd, &c, &info);
	uint64_t h = e == JNL_OK && !c.fail ? world_hash(c.W) : 0;

	if (c.fail)
		print_error("replay: %s\n", c.why);
	if (out)
		*out = info;
	else
		jnl_info_free(&info);
	rctx_fini(&c);
	return h;
}

/* --- a daemon: a live state, a writer, compactions --------------------------------- */

struct drv {
	struct world *W;
	struct jnl_writer w;
	int fd;
	uint64_t rng;
	struct jnl_ids next;
	/* A compaction under way: what was captured, and when. */
	int compacting, captured[3]; /* worker 0, worker 1, main */
	uint64_t q, s_main, cap[MAXID];
	struct world *capt;
	/* The state after each script operation, for the crash check. */
	uint64_t *hashes;
	size_t nhashes;
	unsigned compactions;
};

static void drv_done(struct drv *d)
{
	d->hashes = realloc(d->hashes, (d->nhashes + 1) * sizeof(*d->hashes));
	assert_non_null(d->hashes);
	d->hashes[d->nhashes++] = world_hash(d->W);
	io_log.done = d->nhashes - 1;
}

/* log: every write to the state file is logged (io_log). */
static void drv_init(struct drv *d, uint64_t seed, int log)
{
	memset(d, 0, sizeof(*d));
	d->W = world_new();
	d->fd = new_memfd();
	d->rng = seed;
	d->next = (struct jnl_ids){ 1, 1, 1, 1 };
	if (log)
		io_log_reset(d->fd);
	assert_int_equal(jnl_writer_init(&d->w, d->fd, JNL_VERSION), 0);
	drv_done(d);
}

static void drv_fini(struct drv *d)
{
	if (d->capt)
		world_free(d->capt);
	jnl_writer_fini(&d->w);
	close(d->fd);
	world_free(d->W);
	free(d->hashes);
}

/* Append a record and apply it to the live state. */
static uint64_t drv_rec(struct drv *d, enum jnl_type type, const void *payload)
{
	union jnl_payload p;
	uint64_t seq = 0;

	memcpy(&p, payload, jnl_payload_len(type));
	assert_int_equal(jnl_append(&d->w, type, &p, jnl_payload_len(type), &seq), 0);
	assert_int_equal(w_apply(d->W, type, &p), 0);
	/* A client's MAP or UNMAP is its last reply, too. */
	uint32_t s = type == JNL_MAP ? p.map.session : type == JNL_UNMAP ? p.unmap.session : 0;
	if (s) {
		union jnl_payload r = { .reply = { .session = s,
						   .req_seq = type == JNL_MAP ? p.map.req_seq
									      : p.unmap.req_seq } };
		assert_int_equal(w_apply(d->W, JNL_REPLY, &r), 0);
	}
	return seq;
}

static uint32_t drv_tmpl_new(struct drv *d, uint32_t uid)
{
	static uint8_t page[JNL_PAGE];
	struct jnl_tmpl t = { .id = d->next.tmpl++, .uid = uid };
	long idx = jnl_page_alloc(&d->w);

	assert_true(idx >= 0);
	t.page = (uint32_t)idx;
	tmpl_page(t.id, page);
	assert_int_equal(jnl_page_write(&d->w, t.page, page, &t.crc), 0);
	drv_rec(d, JNL_TMPL_NEW, &t);
	return t.id;
}

static void drv_tmpl_free(struct drv *d, uint32_t id)
{
	struct jnl_ended e = { .id = id };
	uint32_t page = d->W->t[id].t.page;

	drv_rec(d, JNL_TMPL_FREE, &e);
	assert_int_equal(jnl_page_free(&d->w, page), 0);
}

static int uses_tmpl(const struct world *W, uint32_t id, int mms_only)
{
	for (int i = 0; i < MAXID; i++) {
		for (size_t k = 0; W->m[i].alive && k < W->m[i].n; k++)
			if (W->m[i].v[k].tmpl == id)
				return 1;
		for (uint32_t k = 0; !mms_only && W->s[i].alive && k < W->s[i].s.nhandles; k++)
			if (W->s[i].h[k].tmpl == id)
				return 1;
	}
	return 0;
}

/* A template nothing refers to: not the live state, nor a capture of
 * the compaction under way (its trees hold their templates, as the
 * daemon's captured roots do). */
static int tmpl_unused(const struct drv *d, uint32_t id)
{
	return !uses_tmpl(d->W, id, 0) && !(d->capt && uses_tmpl(d->capt, id, 0));
}

/* A random id of a live object of one kind (0: none). */
static uint32_t pick(struct drv *d, int kind)
{
	uint32_t start = rnd(&d->rng, MAXID);

	for (uint32_t k = 0; k < MAXID; k++) {
		uint32_t i = (start + k) % MAXID;
		int alive = kind == 0   ? d->W->t[i].alive
			    : kind == 1 ? d->W->s[i].alive
					: d->W->m[i].alive;
		if (i && alive)
			return i;
	}
	return 0;
}

/* --- compaction: capture, build the image, commit ----------------------------------- */

static void capture_mms(struct drv *d, int worker)
{
	uint64_t seq = jnl_last_seq(&d->w);

	for (int i = 1; i < MAXID; i++) {
		struct wmm *m = &d->W->m[i];
		if (!m->alive || (int)(m->m.tree % 2) != worker)
			continue;
		struct wmm *c = &d->capt->m[i];
		*c = *m;
		c->v = NULL;
		c->n = c->cap = 0;
		for (size_t k = 0; k < m->n; k++)
			piece_add(c, m->v[k].start, m->v[k].end, m->v[k].tmpl);
		d->cap[i] = seq;
	}
	d->captured[worker] = 1;
}

static void capture_main(struct drv *d)
{
	d->s_main = jnl_last_seq(&d->w);
	memcpy(d->capt->t, d->W->t, sizeof(d->W->t));
	memcpy(d->capt->s, d->W->s, sizeof(d->W->s));
	d->captured[2] = 1;
}

/* Nodes built bottom-up, each distinct one once (shared between trees). */
struct nodes {
	struct jnl_node *v;
	uint32_t n, cap;
};

static uint32_t node_get(struct jnl_image_builder *b, struct nodes *ns, const struct jnl_node *n)
{
	for (uint32_t i = 0; i < ns->n; i++)
		if (!memcmp(&ns->v[i], n, sizeof(*n)))
			return i + 1;
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? ns->cap * 2 : 64;
		ns->v = realloc(ns->v, ns->cap * sizeof(*ns->v));
		assert_non_null(ns->v);
	}
	ns->v[ns->n++] = *n;
	uint32_t idx = jnl_image_add_node(b, n);
	assert_int_equal(idx, ns->n);
	return idx;
}

/* A balanced tree over pieces [lo, hi): its root index. */
static uint32_t tree_build(struct jnl_image_builder *b, struct nodes *ns, const struct piece *v,
			   size_t lo, size_t hi)
{
	if (lo >= hi)
		return 0;
	size_t mid = lo + (hi - lo) / 2;
	struct jnl_node n = { .start = v[mid].start, .end = v[mid].end, .tmpl = v[mid].tmpl };
	n.left = tree_build(b, ns, v, lo, mid);
	n.right = tree_build(b, ns, v, mid + 1, hi);
	return node_get(b, ns, &n);
}

static void image_tmpls(struct drv *d, struct jnl_image_builder *b)
{
	for (uint32_t i = 1; i < MAXID; i++) {
		/* Alive at S_main, or named by a captured tree or handle (and
		 * then alive now: held). */
		const struct jnl_tmpl *t = d->capt->t[i].alive        ? &d->capt->t[i].t
					   : uses_tmpl(d->capt, i, 0) ? &d->W->t[i].t
								      : NULL;
		if (t)
			assert_int_equal(jnl_image_add_tmpl(b, t), 0);
	}
}

static void image_objects(struct drv *d, struct jnl_image_builder *b)
{
	struct nodes ns = { 0 };

	for (uint32_t i = 1; i < MAXID; i++) {
		const struct wmm *m = &d->capt->m[i];
		if (!m->alive)
			continue;
		struct jnl_mm rec = { .id = i,
				      .pid = m->m.pid,
				      .uid = m->m.uid,
				      .tree = m->m.tree,
				      .features = m->m.features,
				      .flags = m->m.flags,
				      .seq = d->cap[i] };
		rec.root = tree_build(b, &ns, m->v, 0, m->n);
		assert_int_equal(jnl_image_add_mm(b, &rec), 0);
	}
	for (uint32_t i = 1; i < MAXID; i++)
		if (d->capt->s[i].alive)
			assert_int_equal(
				jnl_image_add_session(b, &d->capt->s[i].s, d->capt->s[i].h), 0);
	free(ns.v);
}

static void drv_begin(struct drv *d)
{
	assert_int_equal(jnl_compact_begin(&d->w, &d->q), 0);
	d->compacting = 1;
	memset(d->captured, 0, sizeof(d->captured));
	memset(d->cap, 0, sizeof(d->cap));
	d->capt = world_new();
}

static void drv_end(struct drv *d)
{
	world_free(d->capt);
	d->capt = NULL;
	d->compacting = 0;
}

static void drv_commit(struct drv *d)
{
	struct jnl_image_builder b;
	const void *image;
	size_t len;

	jnl_image_init(&b);
	image_tmpls(d, &b);
	image_objects(d, &b);
	assert_int_equal(jnl_image_finish(&b, d->s_main, &d->next, &image, &len), 0);
	assert_int_equal(jnl_compact_commit(&d->w, image, len), 0);
	jnl_image_free(&b);
	drv_end(d);
	d->compactions++;
}

/* A whole compaction, with `mixed` random operations between its steps. */
static void drv_step(struct drv *d);

static void drv_compact(struct drv *d, int mixed)
{
	drv_begin(d);
	int order = (int)rnd(&d->rng, 3);
	for (int k = 0; k < 3; k++) {
		for (int i = 0; i < mixed; i++)
			drv_step(d);
		int what = (order + k) % 3;
		if (what == 2)
			capture_main(d);
		else
			capture_mms(d, what);
	}
	for (int i = 0; i < mixed; i++)
		drv_step(d);
	drv_commit(d);
}

/* --- the random workload: one record per step ---------------------------------------- */

static void step_tmpl(struct drv *d, int make)
{
	uint32_t t = pick(d, 0);

	if (make || !t) {
		if (d->next.tmpl < MAXID)
			drv_tmpl_new(d, 1000 + rnd(&d->rng, 3));
		return;
	}
	for (int tries = 0; tries < 8 && t; tries++, t = pick(d, 0))
		if (tmpl_unused(d, t)) {
			drv_tmpl_free(d, t);
			return;
		}
}

static void step_session(struct drv *d, int what)
{
	uint32_t s = pick(d, 1), t = pick(d, 0), m = pick(d, 2);

	if (what == 0 || !s) {
		struct jnl_session_new n = { .id = d->next.session++,
					     .pid = (int32_t)rnd(&d->rng, 1000),
					     .uid = 1000,
					     .gid = 100 };
		if (n.id < MAXID)
			drv_rec(d, JNL_SESSION_NEW, &n);
	} else if (what == 1) {
		struct jnl_ended e = { .id = s };
		drv_rec(d, JNL_SESSION_END, &e);
	} else if (what == 2) {
		struct jnl_session_mm sm = { .session = s, .mm = m };
		drv_rec(d, JNL_SESSION_MM, &sm);
	} else if (what == 3) {
		struct jnl_handle_set h = { .session = s, .index = rnd(&d->rng, MAXH), .tmpl = t };
		h.uses = t ? 1 + rnd(&d->rng, 5) : 0;
		drv_rec(d, JNL_HANDLE, &h);
	} else {
		struct jnl_reply r = { .session = s,
				       .req_seq = (uint32_t)rng_next(&d->rng),
				       .status = -(int32_t)rnd(&d->rng, 3),
				       .id = t,
				       .value = rng_next(&d->rng) };
		drv_rec(d, JNL_REPLY, &r);
	}
}

static void step_mm_life(struct drv *d, int what)
{
	uint32_t m = pick(d, 2);

	if (what == 0 || !m) {
		struct jnl_mm_new n = { .id = d->next.mm++,
					.pid = (int32_t)rnd(&d->rng, 1000),
					.uid = 1000,
					.tree = d->next.tree++,
					.features = 0x3f };
		if (n.id < MAXID)
			drv_rec(d, JNL_MM_NEW, &n);
	} else if (what == 1) {
		struct jnl_mm_new n = { .id = d->next.mm++,
					.parent = m,
					.pid = (int32_t)rnd(&d->rng, 1000),
					.uid = 1000,
					.tree = d->W->m[m].m.tree,
					.flags = JNL_MM_CHILD,
					.features = 0x3f };
		if (n.id < MAXID)
			drv_rec(d, JNL_MM_NEW, &n);
	} else if (what == 2) {
		struct jnl_ended e = { .id = m };
		drv_rec(d, JNL_MM_END, &e);
	} else {
		struct jnl_mm_pid p = { .id = m, .pid = (int32_t)rnd(&d->rng, 1000) };
		drv_rec(d, JNL_MM_PID, &p);
	}
}

static void step_mm_op(struct drv *d, int what)
{
	uint32_t m = pick(d, 2), t = pick(d, 0), s = rnd(&d->rng, 2) ? pick(d, 1) : 0;
	uint64_t a = BASE + rnd(&d->rng, SPAN) * PG, len = (1 + rnd(&d->rng, 4)) * PG;

	if (!m)
		return;
	if (what == 0 && t) {
		struct jnl_map r = { .mm = m,
				     .tmpl = t,
				     .session = s,
				     .req_seq = rnd(&d->rng, 100),
				     .start = a,
				     .end = a + len };
		for (size_t i = 0; i < d->W->m[m].n; i++)
			if (d->W->m[m].v[i].start < r.end && r.start < d->W->m[m].v[i].end)
				return;
		drv_rec(d, JNL_MAP, &r);
	} else if (what == 1) {
		struct jnl_unmap r = { .mm = m,
				       .session = s,
				       .req_seq = rnd(&d->rng, 100),
				       .start = a,
				       .end = a + len };
		drv_rec(d, JNL_UNMAP, &r);
	} else if (what == 2) {
		struct jnl_copy r = {
			.mm = m, .from = a, .to = BASE + rnd(&d->rng, SPAN) * PG, .len = len
		};
		drv_rec(d, JNL_COPY, &r);
	}
}

/* One random operation, completed (drv_done). */
static void drv_step(struct drv *d)
{
	uint32_t k = rnd(&d->rng, 20);

	if (k < 3)
		step_tmpl(d, k == 0);
	else if (k < 7)
		step_session(d,
			     (int)(k - 3) == 0 ? (int)rnd(&d->rng, 2) * 2 : (int)rnd(&d->rng, 5));
	else if (k < 10)
		step_mm_life(d, (int)(k - 7) == 2 ? (int)rnd(&d->rng, 4) : (int)rnd(&d->rng, 2));
	else
		step_mm_op(d, (int)rnd(&d->rng, 4) % 3);
	drv_done(d);
}

/* --- helpers for hand-made cases ------------------------------------------------------- */

static struct jnl_slot slot_of(int fd, int i)
{
	struct jnl_slot s;

	assert_int_equal(pread(fd, &s, sizeof(s),
			       (off_t)(offsetof(struct jnl_file_hdr, slot) + i * sizeof(s))),
			 (ssize_t)sizeof(s));
	return s;
}

static void flip(int fd, uint64_t off)
{
	uint8_t b;

	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= 0x5a;
	assert_int_equal(__real_pwrite(fd, &b, 1, (off_t)off), 1);
}

/* A record with a right CRC for a journal of generation gen, at off. */
static void put_raw(int fd, uint64_t off, unsigned type, uint64_t seq, const void *payload,
		    uint64_t gen)
{
	uint8_t rec[JNL_REC_MAX];
	size_t len = jnl_payload_len(type);
	struct jnl_rec_hdr h = { .type = (uint16_t)type, .len = (uint16_t)len, .seq = seq };

	memcpy(rec, &h, sizeof(h));
	memcpy(rec + sizeof(h), payload, len);
	h.crc = jnl_crc32c((uint32_t)gen, rec + 4, sizeof(h) - 4 + len);
	memcpy(rec, &h.crc, 4);
	assert_int_equal(
		__real_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, 4096),
		0);
	assert_int_equal(__real_pwrite(fd, rec, sizeof(h) + len, (off_t)off),
			 (ssize_t)(sizeof(h) + len));
}

static void expect_state(struct drv *d)
{
	struct jnl_info info;

	assert_int_equal(read_hash(d->fd, &info), world_hash(d->W));
	assert_int_equal(info.end, JNL_END_CLEAN);
	assert_int_equal(info.next_seq, jnl_last_seq(&d->w) + 1);
	jnl_info_free(&info);
}

/* An empty image as the new slot of a compaction begun at q. */
static void commit_empty(struct jnl_writer *w, uint64_t q)
{
	struct jnl_image_builder b;
	struct jnl_ids next = { 1, 1, 1, 1 };
	const void *image;
	size_t len;

	jnl_image_init(&b);
	assert_int_equal(jnl_image_finish(&b, q - 1, &next, &image, &len), 0);
	assert_int_equal(jnl_compact_commit(w, image, len), 0);
	jnl_image_free(&b);
}

/* --- tests ----------------------------------------------------------------------------- */

static void test_crc32c(void **state)
{
	(void)state;
	assert_int_equal(jnl_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(jnl_crc32c(0, "", 0), 0);
}

static void test_fresh(void **state)
{
	struct drv d;
	struct jnl_info info;

	(void)state;
	drv_init(&d, 0, 0);
	assert_int_equal(read_hash(d.fd, &info), world_hash(d.W));
	assert_int_equal(info.slot, 0);
	assert_int_equal(info.gen, 1);
	assert_int_equal(info.first_seq, 1);
	assert_int_equal(info.next_seq, 1);
	assert_int_equal(info.tail, JNL_JOURNAL_OFF(0));
	assert_int_equal(info.end, JNL_END_CLEAN);
	assert_int_equal(info.slot_err[1], JNL_EEMPTY);
	assert_int_equal(info.next.tmpl, 1);
	assert_int_equal(info.next.tree, 1);
	assert_int_equal(info.version, JNL_VERSION);
	jnl_info_free(&info);
	drv_fini(&d);
}

struct expect {
	unsigned type;
	union jnl_payload p;
};

/* Every record type, then what a reader hands back, in order. */
static void test_record_round_trip(void **state)
{
	struct drv d;
	struct rctx c;
	struct jnl_info info;
	struct expect e[24];
	size_t n = 0;

	(void)state;
	drv_init(&d, 0, 0);
	uint32_t t = drv_tmpl_new(&d, 1000);
	e[n++] = (struct expect){ JNL_TMPL_NEW, { .tmpl_new = d.W->t[t].t } };
#define REC(ty, member, ...)                                                 \
	do {                                                                 \
		e[n] = (struct expect){ ty, { .member = { __VA_ARGS__ } } }; \
		drv_rec(&d, ty, &e[n++].p);                                  \
	} while (0)
	REC(JNL_SESSION_NEW, session_new, .id = 1, .pid = 42, .uid = 1000, .gid = 100);
	REC(JNL_MM_NEW, mm_new, .id = 1, .pid = 42, .uid = 1000, .tree = 1, .features = 0x3f);
	REC(JNL_SESSION_MM, session_mm, .session = 1, .mm = 1);
	REC(JNL_HANDLE, handle, .session = 1, .index = 0, .tmpl = t, .uses = 2);
	REC(JNL_REPLY, reply, .session = 1, .req_seq = 5, .status = 0, .id = t, .value = 7);
	REC(JNL_MAP, map, .mm = 1, .tmpl = t, .session = 1, .req_seq = 6, .start = BASE,
	    .end = BASE + 2 * PG);
	e[n++] = (struct expect){ JNL_REPLY, { .reply = { .session = 1, .req_seq = 6 } } };
	REC(JNL_MM_NEW, mm_new, .id = 2, .parent = 1, .pid = 43, .uid = 1000, .tree = 1,
	    .flags = JNL_MM_CHILD, .features = 0x3f);
	REC(JNL_COPY, copy, .mm = 2, .from = BASE, .to = BASE + 8 * PG, .len = 2 * PG);
	REC(JNL_UNMAP, unmap, .mm = 2, .start = BASE, .end = BASE + PG);
	REC(JNL_UNMAP, unmap, .mm = 1, .session = 1, .req_seq = 8, .start = BASE,
	    .end = BASE + 2 * PG);
	e[n++] = (struct expect){ JNL_REPLY, { .reply = { .session = 1, .req_seq = 8 } } };
	REC(JNL_MM_PID, mm_pid, .id = 2, .pid = 77);
	REC(JNL_MM_END, end, .id = 2);
	REC(JNL_HANDLE, handle, .session = 1, .index = 0);
	REC(JNL_TMPL_FREE, end, .id = t);
	REC(JNL_SESSION_END, end, .id = 1);
	REC(JNL_MM_END, end, .id = 1);
#undef REC
	replay(d.fd, &c, &info);
	assert_int_equal(c.nrecs, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(c.types[i], e[i].type);
		assert_memory_equal(&c.recs[i], &e[i].p, jnl_payload_len(e[i].type));
	}
	assert_int_equal(info.records, n - 2);
	assert_int_equal(info.delivered, n);
	assert_int_equal(info.next_seq, n - 1);
	assert_int_equal(info.next.mm, 3);
	assert_int_equal(info.next.tmpl, 2);
	replay_done(&c, &info, d.W);
	drv_fini(&d);
}

static void test_append_rejects_malformed(void **state)
{
	struct drv d;
	union jnl_payload p;

	(void)state;
	drv_init(&d, 0, 0);
	memset(&p, 0, sizeof(p));
	for (unsigned t = 0; t < JNL_TYPE_COUNT + 2; t++) {
		/* Zeroed payloads name object 0: malformed for every type. */
		assert_int_equal(jnl_append(&d.w, t, &p, jnl_payload_len(t), NULL), -EINVAL);
		assert_int_equal(jnl_append(&d.w, t, &p, jnl_payload_len(t) + 8, NULL), -EINVAL);
	}
	p.map = (struct jnl_map){ .mm = 1, .tmpl = 1, .start = BASE + 1, .end = BASE + PG };
	assert_int_equal(jnl_append(&d.w, JNL_MAP, &p, sizeof(p.map), NULL), -EINVAL);
	p.map = (struct jnl_map){ .mm = 1, .tmpl = 1, .start = BASE, .end = BASE };
	assert_int_equal(jnl_append(&d.w, JNL_MAP, &p, sizeof(p.map), NULL), -EINVAL);
	p.copy = (struct jnl_copy){ .mm = 1, .from = -PG, .to = 0, .len = 2 * PG };
	assert_int_equal(jnl_append(&d.w, JNL_COPY, &p, sizeof(p.copy), NULL), -EINVAL);
	p.handle = (struct jnl_handle_set){ .session = 1, .uses = 1 };
	assert_int_equal(jnl_append(&d.w, JNL_HANDLE, &p, sizeof(p.handle), NULL), -EINVAL);
	p.handle = (struct jnl_handle_set){
		.session = 1, .index = JNL_MAX_HANDLES, .tmpl = 1, .uses = 1
	};
	assert_int_equal(jnl_append(&d.w, JNL_HANDLE, &p, sizeof(p.handle), NULL), -EINVAL);
	p.mm_new = (struct jnl_mm_new){ .id = 2, .tree = 1, .flags = JNL_MM_CHILD };
	assert_int_equal(jnl_append(&d.w, JNL_MM_NEW, &p, sizeof(p.mm_new), NULL), -EINVAL);
	p.mm_new = (struct jnl_mm_new){ .id = 2, .parent = 1, .tree = 1 };
	assert_int_equal(jnl_append(&d.w, JNL_MM_NEW, &p, sizeof(p.mm_new), NULL), -EINVAL);
	p.tmpl_new = (struct jnl_tmpl){ .id = 1, .page = (uint32_t)JNL_MAX_PAGES };
	assert_int_equal(jnl_append(&d.w, JNL_TMPL_NEW, &p, sizeof(p.tmpl_new), NULL), -EINVAL);
	p.end = (struct jnl_ended){ .id = 1, .reserved = 1 };
	assert_int_equal(jnl_append(&d.w, JNL_MM_END, &p, sizeof(p.end), NULL), -EINVAL);
	assert_int_equal(jnl_last_seq(&d.w), 0);
	assert_int_equal(jnl_journal_bytes(&d.w), 0);
	/* Seqs never wrap. */
	uint64_t q;
	d.w.seq = JNL_SEQ_MAX;
	p.mm_pid = (struct jnl_mm_pid){ .id = 1 };
	assert_int_equal(jnl_append(&d.w, JNL_MM_PID, &p, sizeof(p.mm_pid), NULL), -EOVERFLOW);
	assert_int_equal(jnl_compact_begin(&d.w, &q), -EOVERFLOW);
	drv_fini(&d);
}

struct seen {
	struct jnl_tmpl t[8];
	struct jnl_node n[8];
	struct jnl_mm m[8];
	struct jnl_session s[8];
	struct jnl_handle h[8][4];
	unsigned nt, nn, nm, ns;
};

static int seen_tmpl(void *ctx, const struct jnl_tmpl *t)
{
	struct seen *s = ctx;

	s->t[s->nt++ % 8] = *t;
	return 0;
}

static int seen_node(void *ctx, uint32_t index, const struct jnl_node *n)
{
	struct seen *s = ctx;

	assert_int_equal(index, s->nn + 1);
	s->n[s->nn++ % 8] = *n;
	return 0;
}

static int seen_mm(void *ctx, const struct jnl_mm *m)
{
	struct seen *s = ctx;

	s->m[s->nm++ % 8] = *m;
	return 0;
}

static int seen_session(void *ctx, const struct jnl_session *se, const struct jnl_handle *h)
{
	struct seen *s = ctx;

	s->s[s->ns % 8] = *se;
	memcpy(s->h[s->ns++ % 8], h, (se->nhandles < 4 ? se->nhandles : 4) * sizeof(*h));
	return 0;
}

/* An image whose two trees share a subtree, stored once. */
struct dag {
	struct jnl_node n[4];
	struct jnl_mm m[2];
	struct jnl_session se;
	struct jnl_handle h[3];
	struct jnl_ids next;
};

static void dag_commit(struct drv *d, struct dag *g, uint32_t t1, uint32_t t2)
{
	struct jnl_image_builder b;
	const void *image;
	size_t len;
	uint64_t q;

	*g = (struct dag){
		.n = { { .start = BASE, .end = BASE + PG, .tmpl = t1 },
		       { .start = BASE + 8 * PG, .end = BASE + 9 * PG, .tmpl = t2 },
		       { .start = BASE + 4 * PG,
			 .end = BASE + 6 * PG,
			 .tmpl = t1,
			 .left = 1,
			 .right = 2 },
		       { .start = BASE + 2 * PG, .end = BASE + 3 * PG, .tmpl = t2, .left = 1 } },
		.m = { { .id = 1,
			 .pid = 10,
			 .uid = 1000,
			 .tree = 1,
			 .features = 0x3f,
			 .root = 3,
			 .seq = 2 },
		       { .id = 2,
			 .pid = 11,
			 .uid = 1000,
			 .tree = 1,
			 .features = 0x3f,
			 .flags = JNL_MM_CHILD,
			 .root = 4,
			 .seq = 2 } },
		.se = { .id = 1,
			.pid = 10,
			.uid = 1000,
			.gid = 100,
			.mm = 1,
			.nhandles = 3,
			.last_seq = 9,
			.last_status = -22,
			.last_id = 4,
			.flags = JNL_SESSION_REPLIED,
			.last_value = 1ull << 40 },
		.h = { { t1, 1 }, { 0, 0 }, { t2, 5 } },
		.next = { 3, 2, 3, 2 },
	};
	assert_int_equal(jnl_compact_begin(&d->w, &q), 0);
	assert_int_equal(q, 3);
	jnl_image_init(&b);
	assert_int_equal(jnl_image_add_tmpl(&b, &d->W->t[t1].t), 0);
	assert_int_equal(jnl_image_add_tmpl(&b, &d->W->t[t2].t), 0);
	for (uint32_t i = 0; i < 4; i++)
		assert_int_equal(jnl_image_add_node(&b, &g->n[i]), i + 1);
	assert_int_equal(jnl_image_add_mm(&b, &g->m[0]), 0);
	assert_int_equal(jnl_image_add_session(&b, &g->se, g->h), 0);
	assert_int_equal(jnl_image_add_mm(&b, &g->m[1]), 0);
	assert_int_equal(jnl_image_finish(&b, 2, &g->next, &image, &len), 0);
	assert_int_equal(len, sizeof(struct jnl_image_hdr) + 2 * 16 + 4 * 32 + 2 * 40 + 48 + 3 * 8);
	assert_int_equal(jnl_compact_commit(&d->w, image, len), 0);
	jnl_image_free(&b);
}

/* Every entry back as it went in, each node once, children first. */
static void test_image_dag(void **state)
{
	static const struct jnl_callbacks seen_cbs = { seen_tmpl, seen_node, seen_mm, seen_session,
						       NULL };
	struct drv d;
	struct dag g;
	struct seen s = { 0 };
	struct jnl_info info;

	(void)state;
	drv_init(&d, 0, 0);
	uint32_t t1 = drv_tmpl_new(&d, 1000), t2 = drv_tmpl_new(&d, 1001);
	dag_commit(&d, &g, t1, t2);
	assert_int_equal(jnl_read(d.fd, &seen_cbs, &s, &info), JNL_OK);
	assert_int_equal(info.slot, 1);
	assert_int_equal(info.gen, 2);
	assert_int_equal(info.first_seq, 3);
	assert_int_equal(info.main_seq, 2);
	assert_int_equal(info.slot_err[0], JNL_EEMPTY);
	assert_int_equal(s.nt, 2);
	assert_int_equal(s.nn, 4);
	assert_int_equal(s.nm, 2);
	assert_int_equal(s.ns, 1);
	assert_memory_equal(s.t[0].id == t1 ? &s.t[0] : &s.t[1], &d.W->t[t1].t,
			    sizeof(struct jnl_tmpl));
	assert_memory_equal(s.n, g.n, sizeof(g.n));
	assert_memory_equal(s.m, g.m, sizeof(g.m));
	assert_memory_equal(&s.s[0], &g.se, sizeof(g.se));
	assert_memory_equal(s.h[0], g.h, sizeof(g.h));
	assert_memory_equal(&info.next, &g.next, sizeof(g.next));
	jnl_info_free(&info);
	drv_fini(&d);
}

/* Through the state model: both trees, in order, pages checked. */
static void test_image_dag_trees(void **state)
{
	struct drv d;
	struct dag g;
	struct rctx c;
	struct jnl_info info;

	(void)state;
	drv_init(&d, 0, 0);
	uint32_t t1 = drv_tmpl_new(&d, 1000), t2 = drv_tmpl_new(&d, 1001);
	dag_commit(&d, &g, t1, t2);
	replay(d.fd, &c, &info);
	assert_int_equal(c.W->m[1].n, 3);
	assert_int_equal(c.W->m[1].v[1].start, BASE + 4 * PG);
	assert_int_equal(c.W->m[2].n, 2);
	assert_int_equal(c.W->m[2].v[1].start, BASE + 2 * PG);
	jnl_info_free(&info);
	rctx_fini(&c);
	drv_fini(&d);
}

/* An image the reader would refuse is not committed, and the
 * compaction is over: the state is the one before, and another one can
 * begin. */
static void expect_refused(struct drv *d, struct jnl_image_builder *b, uint64_t main_seq)
{
	struct jnl_ids next = { 9, 9, 9, 9 };
	const void *image;
	size_t len;
	uint64_t q;

	assert_int_equal(jnl_image_finish(b, main_seq, &next, &image, &len), 0);
	assert_int_equal(jnl_compact_commit(&d->w, image, len), -EINVAL);
	jnl_image_free(b);
	expect_state(d);
	assert_int_equal(jnl_compact_begin(&d->w, &q), 0);
	jnl_image_init(b);
}

/* The builder's own checks. */
static void test_builder_checks(void **state)
{
	struct drv d;
	struct jnl_image_builder b;

	(void)state;
	drv_init(&d, 0, 0);
	uint32_t t = drv_tmpl_new(&d, 1000);
	struct jnl_node leaf = { .start = BASE, .end = BASE + PG, .tmpl = t };

	jnl_image_init(&b);
	struct jnl_node bad = leaf;
	bad.left = 1;
	assert_int_equal(jnl_image_add_node(&b, &bad), 0);
	assert_int_equal(b.err, -EINVAL);
	jnl_image_free(&b);
	jnl_image_init(&b);
	bad = leaf;
	bad.end = BASE + 1;
	assert_int_equal(jnl_image_add_node(&b, &bad), 0);
	jnl_image_free(&b);
	jnl_image_init(&b);
	struct jnl_session se = { .id = 1, .nhandles = 1 };
	struct jnl_handle h = { 0, 1 };
	assert_int_equal(jnl_image_add_session(&b, &se, &h), -EINVAL);
	jnl_image_free(&b);

	drv_fini(&d);
}

/* The commit's checks: references and capture seqs. */
static void test_commit_checks(void **state)
{
	struct drv d;
	struct jnl_image_builder b;
	uint64_t q;

	(void)state;
	drv_init(&d, 0, 0);
	uint32_t t = drv_tmpl_new(&d, 1000);
	struct jnl_tmpl tr = d.W->t[t].t;
	struct jnl_node leaf = { .start = BASE, .end = BASE + PG, .tmpl = t };
	struct jnl_mm mm = { .id = 1, .tree = 1, .seq = 1 };
	assert_int_equal(jnl_compact_commit(&d.w, "", 0), -EINVAL); /* none begun */
	assert_int_equal(jnl_compact_begin(&d.w, &q), 0);
	assert_int_equal(jnl_compact_begin(&d.w, &q), -EBUSY);
	jnl_image_init(&b);
	jnl_image_add_node(&b, &leaf); /* its template is not in the image */
	expect_refused(&d, &b, q - 1);
	jnl_image_add_tmpl(&b, &tr);
	jnl_image_add_tmpl(&b, &tr); /* twice */
	expect_refused(&d, &b, q - 1);
	jnl_image_add_tmpl(&b, &tr);
	mm.seq = q - 2; /* captured before the compaction began */
	jnl_image_add_mm(&b, &mm);
	expect_refused(&d, &b, q - 1);
	jnl_image_add_tmpl(&b, &tr);
	expect_refused(&d, &b, q - 2);
	mm.seq = q;
	mm.root = 1; /* no such node */
	jnl_image_add_mm(&b, &mm);
	expect_refused(&d, &b, q);
	mm.root = 0;
	jnl_image_add_mm(&b, &mm);
	jnl_image_add_mm(&b, &mm); /* twice */
	expect_refused(&d, &b, q);
	struct jnl_tmpl other = tr;
	other.id = t + 1; /* the same page as t */
	jnl_image_add_tmpl(&b, &tr);
	jnl_image_add_tmpl(&b, &other);
	expect_refused(&d, &b, q);
	jnl_image_free(&b);
	jnl_compact_abort(&d.w);
	expect_state(&d);
	drv_fini(&d);
}

/* The delivered records, as (seq - q, type) pairs. */
static void expect_records(const struct rctx *c, uint64_t q, const uint64_t *seqs,
			   const unsigned *types, size_t n)
{
	assert_int_equal(c->nrecs, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(c->seqs[i] - q, seqs[i]);
		assert_int_equal(c->types[i], types[i]);
	}
}

/* Commit d's compaction and read it back: the records delivered are
 * (seqs[i] - q, types[i]), q the seq the compaction began at. */
static void commit_replay(struct drv *d, struct rctx *c, struct jnl_info *info,
			  const uint64_t *seqs, const unsigned *types, size_t n)
{
	uint64_t q = d->q;

	drv_commit(d);
	replay(d->fd, c, info);
	expect_records(c, q, seqs, types, n);
}

/* A template, a session, two mms on different workers. */
static void filter_setup(struct drv *d, uint32_t *t)
{
	drv_init(d, 0, 0);
	*t = drv_tmpl_new(d, 1000);
	step_session(d, 0);
	struct jnl_mm_new m = { .id = 1, .uid = 1000, .tree = 1 };
	drv_rec(d, JNL_MM_NEW, &m);
	m = (struct jnl_mm_new){ .id = 2, .uid = 1000, .tree = 2 };
	drv_rec(d, JNL_MM_NEW, &m);
	d->next.mm = 3;
	d->next.tree = 3;
}

/* Records at or below their object's capture seq are skipped for that
 * object only; the session part of a MAP goes by the session's. */
static void test_filter(void **state)
{
	struct drv d;
	struct rctx c;
	struct jnl_info info;
	uint32_t t;

	(void)state;
	filter_setup(&d, &t);
	drv_begin(&d);
	struct jnl_map map = {
		.mm = 1, .tmpl = t, .session = 1, .req_seq = 1, .start = BASE, .end = BASE + PG
	};
	drv_rec(&d, JNL_MAP, &map); /* q: before mm 1's capture and S_main */
	capture_mms(&d, 1);         /* mm 1 at q */
	map.start += PG, map.end += PG, map.req_seq = 2;
	drv_rec(&d, JNL_MAP, &map); /* q+1: after mm 1's, before S_main */
	map = (struct jnl_map){ .mm = 2, .tmpl = t, .start = BASE, .end = BASE + PG };
	drv_rec(&d, JNL_MAP, &map); /* q+2 */
	capture_main(&d);           /* S_main = q+2 */
	struct jnl_mm_pid pid = { .id = 2, .pid = 5 };
	drv_rec(&d, JNL_MM_PID, &pid); /* q+3 */
	capture_mms(&d, 0);            /* mm 2 at q+3 */
	struct jnl_reply r = { .session = 1, .req_seq = 3, .value = 9 };
	drv_rec(&d, JNL_REPLY, &r); /* q+4 */
	struct jnl_unmap u = {
		.mm = 2, .session = 1, .req_seq = 4, .start = BASE, .end = BASE + PG
	};
	drv_rec(&d, JNL_UNMAP, &u); /* q+5 */

	static const uint64_t seqs[] = { 1, 4, 5, 5 };
	static const unsigned types[] = { JNL_MAP, JNL_REPLY, JNL_UNMAP, JNL_REPLY };
	commit_replay(&d, &c, &info, seqs, types, 4);
	assert_int_equal(info.records, 6);
	assert_int_equal(info.filtered, 5);
	assert_int_equal(info.skipped, 0);
	replay_done(&c, &info, d.W);
	drv_fini(&d);
}

/* A fork child born and gone before its family's capture is skipped with
 * all its records; one born after is a clone of its parent as replayed;
 * a rejected parent's child is rejected unseen. */
static void test_filter_fork(void **state)
{
	struct drv d;
	struct rctx c;
	struct jnl_info info;
	uint32_t t;

	(void)state;
	filter_setup(&d, &t);
	struct jnl_map map = { .mm = 1, .tmpl = t, .start = BASE, .end = BASE + 2 * PG };
	drv_rec(&d, JNL_MAP, &map);
	drv_begin(&d);
	struct jnl_mm_new child = { .id = 3, .parent = 1, .tree = 1, .flags = JNL_MM_CHILD };
	drv_rec(&d, JNL_MM_NEW, &child); /* q */
	map = (struct jnl_map){ .mm = 3, .tmpl = t, .start = BASE + 4 * PG, .end = BASE + 5 * PG };
	drv_rec(&d, JNL_MAP, &map); /* q+1 */
	struct jnl_ended end = { .id = 3 };
	drv_rec(&d, JNL_MM_END, &end); /* q+2 */
	capture_mms(&d, 1);
	capture_mms(&d, 0);
	capture_main(&d);
	child.id = 4;
	drv_rec(&d, JNL_MM_NEW, &child); /* q+3 */
	struct jnl_unmap u = { .mm = 4, .start = BASE, .end = BASE + PG };
	drv_rec(&d, JNL_UNMAP, &u); /* q+4 */

	static const uint64_t seqs[] = { 3, 4 };
	static const unsigned types[] = { JNL_MM_NEW, JNL_UNMAP };
	commit_replay(&d, &c, &info, seqs, types, 2);
	assert_int_equal(info.filtered, 1);
	assert_int_equal(info.skipped, 2);
	assert_int_equal(c.W->m[4].n, 1);
	replay_done(&c, &info, d.W);

	replay_rejecting(d.fd, &c, &info, 1, 0);
	assert_int_equal(c.nrecs, 0);
	assert_int_equal(info.skipped, 4);
	assert_false(c.W->m[4].alive);
	jnl_info_free(&info);
	rctx_fini(&c);
	drv_fini(&d);
}

/* A template made before Q, mapped after an mm's capture and freed
 * before S_main: not in the image, its MAP skipped, the state right. */
static void test_filter_unresolved(void **state)
{
	struct drv d;
	struct rctx c;
	struct jnl_info info;
	uint32_t t;

	(void)state;
	filter_setup(&d, &t);
	uint32_t t2 = drv_tmpl_new(&d, 1000);
	drv_begin(&d);
	capture_mms(&d, 1); /* mm 1 at q-1 */
	struct jnl_map map = {
		.mm = 1, .tmpl = t2, .session = 1, .req_seq = 3, .start = BASE, .end = BASE + PG
	};
	drv_rec(&d, JNL_MAP, &map); /* q */
	struct jnl_unmap u = { .mm = 1, .start = BASE, .end = BASE + PG };
	drv_rec(&d, JNL_UNMAP, &u); /* q+1 */
	drv_tmpl_free(&d, t2);      /* q+2 */
	capture_main(&d);
	capture_mms(&d, 0);

	static const uint64_t seqs[] = { 1 };
	static const unsigned types[] = { JNL_UNMAP };
	commit_replay(&d, &c, &info, seqs, types, 1);
	assert_int_equal(info.skipped, 2);  /* the MAP, the TMPL_FREE */
	assert_int_equal(info.filtered, 1); /* the MAP's reply */
	replay_done(&c, &info, d.W);
	drv_fini(&d);
}

/* Rejecting an object skips every later record targeting it, and MAPs
 * and HANDLEs naming a rejected template; records merely naming a
 * rejected mm still come. */
static void test_reject(void **state)
{
	struct drv d;
	struct rctx c;
	struct jnl_info info;
	uint32_t t;

	(void)state;
	filter_setup(&d, &t);
	drv_compact(&d, 0);
	struct jnl_map map = { .mm = 1, .tmpl = t, .start = BASE, .end = BASE + PG };
	drv_rec(&d, JNL_MAP, &map);
	map.mm = 2;
	drv_rec(&d, JNL_MAP, &map);
	struct jnl_session_mm sm = { .session = 1, .mm = 1 };
	drv_rec(&d, JNL_SESSION_MM, &sm);
	struct jnl_handle_set h = { .session = 1, .index = 1, .tmpl = t, .uses = 1 };
	drv_rec(&d, JNL_HANDLE, &h);
	struct jnl_ended end = { .id = 1 };
	drv_rec(&d, JNL_MM_END, &end);

	replay_rejecting(d.fd, &c, &info, 1, 0);
	static const uint64_t seqs1[] = { 1, 2, 3 };
	static const unsigned types1[] = { JNL_MAP, JNL_SESSION_MM, JNL_HANDLE };
	expect_records(&c, info.first_seq, seqs1, types1, 3);
	assert_int_equal(info.skipped, 2);
	jnl_info_free(&info);
	rctx_fini(&c);

	replay_rejecting(d.fd, &c, &info, 0, t);
	static const uint64_t seqs2[] = { 2, 4 };
	static const unsigned types2[] = { JNL_SESSION_MM, JNL_MM_END };
	expect_records(&c, info.first_seq, seqs2, types2, 2);
	assert_int_equal(info.npages_dead, 1);
	assert_int_equal(info.npages_live, 0);
	jnl_info_free(&info);
	rctx_fini(&c);
	drv_fini(&d);
}

/* A few records, the last one a MAP: its offset and length. */
static void torn_setup(struct drv *d, uint64_t *last, size_t *len)
{
	uint32_t t;

	filter_setup(d, &t);
	*last = JNL_JOURNAL_OFF(0) + jnl_journal_bytes(&d->w);
	struct jnl_map map = { .mm = 1, .tmpl = t, .start = BASE, .end = BASE + PG };
	drv_rec(d, JNL_MAP, &map);
	*len = sizeof(struct jnl_rec_hdr) + sizeof(map);
}

/* Cut anywhere in the last record: the replay stops before it. */
static void test_torn_truncate(void **state)
{
	struct drv d;
	uint64_t last;
	size_t len;
	uint8_t rec[JNL_REC_MAX];

	(void)state;
	torn_setup(&d, &last, &len);
	assert_int_equal(pread(d.fd, rec, len, (off_t)last), (ssize_t)len);
	for (size_t k = 0; k <= len; k++) {
		struct jnl_info info;
		struct rctx c;
		assert_int_equal(__real_pwrite(d.fd, rec, len, (off_t)last), (ssize_t)len);
		assert_int_equal(__real_ftruncate(d.fd, (off_t)(last + k)), 0);
		replay(d.fd, &c, &info);
		assert_int_equal(info.records, k == len ? 5 : 4);
		assert_int_equal(info.end, k == 0 || k == len ? JNL_END_CLEAN : JNL_END_TORN);
		assert_int_equal(info.tail, k == len ? last + len : last);
		jnl_info_free(&info);
		rctx_fini(&c);
	}
	drv_fini(&d);
}

/* Any byte of the last record changed: the replay stops before it. */
static void test_torn_flip(void **state)
{
	struct drv d;
	uint64_t last;
	size_t len;

	(void)state;
	torn_setup(&d, &last, &len);
	for (size_t k = 0; k < len; k++) {
		struct jnl_info info;
		flip(d.fd, last + k);
		assert_int_not_equal(read_hash(d.fd, &info), 0);
		assert_int_equal(info.records, 4);
		assert_int_equal(info.end, JNL_END_TORN);
		jnl_info_free(&info);
		flip(d.fd, last + k);
	}
	expect_state(&d);
	drv_fini(&d);
}

/* Records with right CRCs that still end the replay: a seq that is not
 * the next, contents that cannot be, a record of another generation. */
static void test_tail_invalid(void **state)
{
	struct drv d;
	uint64_t last;
	size_t len;
	struct jnl_info info;

	(void)state;
	torn_setup(&d, &last, &len);
	uint64_t off = last + len, seq = jnl_last_seq(&d.w) + 1;
	struct jnl_mm_pid pid = { .id = 1, .pid = 3 };
	struct jnl_session_new sn = { .id = 1 };
	const struct {
		unsigned type;
		uint64_t seq, gen;
		const void *p;
		enum jnl_end end;
	} cases[] = {
		{ JNL_MM_PID, seq + 1, 1, &pid, JNL_END_SEQ },
		{ JNL_MM_PID, seq - 1, 1, &pid, JNL_END_SEQ },
		{ JNL_MM_PID, seq, 2, &pid, JNL_END_TORN },
		{ JNL_SESSION_NEW, seq, 1, &sn, JNL_END_INVALID }, /* session 1 exists */
		{ JNL_MM_PID, seq, 1, &pid, JNL_END_CLEAN },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		put_raw(d.fd, off, cases[i].type, cases[i].seq, cases[i].p, cases[i].gen);
		assert_int_not_equal(read_hash(d.fd, &info), 0);
		assert_int_equal(info.end, cases[i].end);
		assert_int_equal(info.records, cases[i].end == JNL_END_CLEAN ? 6 : 5);
		jnl_info_free(&info);
	}
	/* Malformed contents: unaligned. */
	struct jnl_map map = { .mm = 1, .tmpl = 1, .start = BASE + 1, .end = BASE + PG };
	put_raw(d.fd, off, JNL_MAP, seq, &map, 1);
	assert_int_not_equal(read_hash(d.fd, &info), 0);
	assert_int_equal(info.end, JNL_END_INVALID);
	assert_int_equal(info.records, 5);
	jnl_info_free(&info);
	drv_fini(&d);
}

static void test_slot_damage(void **state)
{
	struct drv d;
	struct jnl_info info;
	uint32_t t;

	(void)state;
	filter_setup(&d, &t);
	drv_compact(&d, 0);
	struct jnl_slot s = slot_of(d.fd, 1);
	uint64_t desc = offsetof(struct jnl_file_hdr, slot) + sizeof(s);

	/* The descriptor, the image, the file header. */
	flip(d.fd, desc + 9);
	assert_int_equal(jnl_read(d.fd, NULL, NULL, &info), JNL_ECRC);
	assert_int_equal(info.slot, -1);
	assert_int_equal(info.slot_err[1], JNL_ECRC);
	assert_int_equal(info.slot_err[0], JNL_EEMPTY);
	jnl_info_free(&info);
	flip(d.fd, desc + 9);
	flip(d.fd, s.image_off + s.image_len - 1);
	assert_int_equal(jnl_read(d.fd, NULL, NULL, &info), JNL_ECRC);
	assert_int_equal(info.slot_err[1], JNL_ECRC);
	jnl_info_free(&info);
	flip(d.fd, s.image_off + s.image_len - 1);
	flip(d.fd, 20);
	assert_int_equal(jnl_read(d.fd, NULL, NULL, &info), JNL_ECRC);
	jnl_info_free(&info);
	flip(d.fd, 20);

	/* A malformed image with right checksums. */
	uint32_t magic = 0;
	assert_int_equal(__real_pwrite(d.fd, &magic, 4, (off_t)s.image_off), 4);
	uint8_t *img = malloc(s.image_len);
	assert_int_equal(pread(d.fd, img, s.image_len, (off_t)s.image_off), (ssize_t)s.image_len);
	struct jnl_slot bad = s;
	bad.image_crc = jnl_crc32c(0, img, s.image_len);
	bad.crc = jnl_crc32c(0, &bad, offsetof(struct jnl_slot, crc));
	assert_int_equal(__real_pwrite(d.fd, &bad, sizeof(bad), (off_t)desc), (ssize_t)sizeof(bad));
	assert_int_equal(jnl_read(d.fd, NULL, NULL, &info), JNL_EFORMAT);
	assert_int_equal(info.slot_err[1], JNL_EFORMAT);
	jnl_info_free(&info);
	/* A descriptor pointing at the other slot's area. */
	bad.image_off = JNL_IMAGE_OFF(0);
	bad.crc = jnl_crc32c(0, &bad, offsetof(struct jnl_slot, crc));
	assert_int_equal(__real_pwrite(d.fd, &bad, sizeof(bad), (off_t)desc), (ssize_t)sizeof(bad));
	assert_int_equal(jnl_read(d.fd, NULL, NULL, &info), JNL_EFORMAT);
	jnl_info_free(&info);
	free(img);
	drv_fini(&d);
}

static void test_versions(void **state)
{
	struct jnl_writer w;
	struct jnl_info info;
	int fd = new_memfd();

	(void)state;
	assert_int_equal(jnl_writer_init(&w, fd, JNL_VERSION + 1), 0);
	jnl_writer_fini(&w);
	assert_int_equal(jnl_read(fd, NULL, NULL, &info), JNL_EVERSION);
	assert_int_equal(info.version, JNL_VERSION + 1);
	jnl_info_free(&info);

	/* The format before this one (the whole-state snapshot, version 1):
	 * the same magic, its version at the same offset, refused as a
	 * version, not as garbage. */
	static const uint8_t v1[12] = { 'R', 'P', 'S', 'N', 'A', 'P', '\n', 0, 1, 0, 0, 0 };
	assert_int_equal(__real_ftruncate(fd, 0), 0);
	assert_int_equal(__real_pwrite(fd, v1, sizeof(v1), 0), (ssize_t)sizeof(v1));
	assert_int_equal(__real_ftruncate(fd, 4096), 0);
	assert_int_equal(jnl_read(fd, NULL, NULL, &info), JNL_EVERSION);
	assert_int_equal(info.version, 1);
	jnl_info_free(&info);

	assert_int_equal(__real_pwrite(fd, "X", 1, 0), 1);
	assert_int_equal(jnl_read(fd, NULL, NULL, &info), JNL_EMAGIC);
	jnl_info_free(&info);
	assert_int_equal(__real_ftruncate(fd, 100), 0);
	assert_int_equal(jnl_read(fd, NULL, NULL, &info), JNL_ETRUNC);
	jnl_info_free(&info);
	close(fd);
}

static void test_counters(void **state)
{
	struct drv d;
	struct jnl_counters c;

	(void)state;
	drv_init(&d, 0, 0);
	assert_int_equal(jnl_read_counters(d.fd, &c), JNL_OK);
	assert_int_equal(c.count, 0);
	struct jnl_counters *live = mmap(NULL, JNL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.fd,
					 (off_t)JNL_COUNTERS_OFF);
	assert_true(live != MAP_FAILED);
	live->v[3] = 12345;
	live->count = 4;
	assert_int_equal(jnl_read_counters(d.fd, &c), JNL_OK);
	assert_int_equal(c.v[3], 12345);
	drv_compact(&d, 0); /* compaction leaves them alone */
	assert_int_equal(jnl_read_counters(d.fd, &c), JNL_OK);
	assert_int_equal(c.count, 4);
	live->count = JNL_MAX_STATS + 1;
	assert_int_equal(jnl_read_counters(d.fd, &c), JNL_EFORMAT);
	munmap(live, JNL_PAGE);
	drv_fini(&d);
}

/* A freed page is handed out again only after the commit of a
 * compaction begun after the free, and is punched by then. */
static void test_deferred_pages(void **state)
{
	struct drv d;
	uint64_t q;
	uint8_t page[JNL_PAGE];
	uint32_t crc;

	(void)state;
	drv_init(&d, 0, 0);
	memset(page, 0xab, sizeof(page));
	assert_int_equal(jnl_page_alloc(&d.w), 0);
	assert_int_equal(jnl_page_alloc(&d.w), 1);
	assert_int_equal(jnl_page_write(&d.w, 0, page, &crc), 0);
	assert_int_equal(jnl_page_free(&d.w, 0), 0);
	assert_int_equal(jnl_page_free(&d.w, 7), -EINVAL); /* never allocated */
	assert_int_equal(jnl_page_alloc(&d.w), 2);
	assert_int_equal(jnl_compact_begin(&d.w, &q), 0);
	assert_int_equal(jnl_page_free(&d.w, 1), 0); /* during the compaction */
	assert_int_equal(jnl_page_alloc(&d.w), 3);
	commit_empty(&d.w, q);
	assert_int_equal(
		jnl_read_page(d.fd, 0, jnl_crc32c(0, (uint8_t[JNL_PAGE]){ 0 }, JNL_PAGE), page),
		JNL_OK);
	assert_int_equal(jnl_page_alloc(&d.w), 0);
	assert_int_equal(jnl_page_alloc(&d.w), 4);
	/* An abort keeps them waiting. */
	assert_int_equal(jnl_page_free(&d.w, 2), 0);
	assert_int_equal(jnl_compact_begin(&d.w, &q), 0);
	jnl_compact_abort(&d.w);
	assert_int_equal(jnl_page_alloc(&d.w), 5);
	assert_int_equal(jnl_compact_begin(&d.w, &q), 0);
	commit_empty(&d.w, q);
	assert_int_equal(jnl_page_alloc(&d.w), 1);
	assert_int_equal(jnl_page_alloc(&d.w), 2);
	assert_int_equal(jnl_page_alloc(&d.w), 6);
	drv_fini(&d);
}

/* A driver going on with the state fd reads back as: what a restarted
 * daemon does. */
static void drv_adopt(struct drv *d, int fd, uint64_t seed)
{
	struct rctx c;
	struct jnl_info info;

	memset(d, 0, sizeof(*d));
	replay(fd, &c, &info);
	d->W = c.W;
	free(c.nodes);
	d->fd = fd;
	d->rng = seed;
	d->next = info.next;
	assert_int_equal(jnl_writer_resume(&d->w, fd, &info), 0);
	for (size_t i = 0; i < info.npages_live; i++) {
		long p = jnl_page_alloc(&d->w);
		assert_true(p >= 0);
		for (size_t k = 0; k < info.npages_live; k++)
			assert_int_not_equal(p, info.pages_live[k]);
		for (size_t k = 0; k < info.npages_dead; k++)
			assert_int_not_equal(p, info.pages_dead[k]);
	}
	jnl_info_free(&info);
	drv_done(d);
}

/* Go on after a read, over a torn record left at the end. */
static void test_resume(void **state)
{
	struct drv d, e;
	uint64_t last;
	size_t len;
	struct jnl_info info;

	(void)state;
	torn_setup(&d, &last, &len);
	d.rng = 12345;
	for (int i = 0; i < 50; i++)
		drv_step(&d);
	uint64_t tail = JNL_JOURNAL_OFF(0) + jnl_journal_bytes(&d.w), h = world_hash(d.W);
	/* A record of the next seq, torn after its first 40 bytes. */
	struct jnl_map map = { .mm = 1, .tmpl = 1, .start = BASE + 60 * PG, .end = BASE + 61 * PG };
	put_raw(d.fd, tail, JNL_MAP, jnl_last_seq(&d.w) + 1, &map, 1);
	assert_int_equal(__real_pwrite(d.fd, &(uint64_t){ 0 }, 8, (off_t)tail + 40), 8);
	jnl_writer_fini(&d.w);
	assert_int_equal(read_hash(d.fd, &info), h);
	assert_int_equal(info.end, JNL_END_TORN);
	jnl_info_free(&info);

	drv_adopt(&e, d.fd, 7);
	assert_int_equal(world_hash(e.W), h);
	struct jnl_mm_pid pid = { .id = 1, .pid = 99 }; /* shorter than the torn one */
	drv_rec(&e, JNL_MM_PID, &pid);
	expect_state(&e);
	for (int i = 0; i < 200; i++)
		drv_step(&e);
	drv_compact(&e, 10);
	for (int i = 0; i < 50; i++)
		drv_step(&e);
	expect_state(&e);
	world_free(d.W);
	free(d.hashes);
	drv_fini(&e);
}

/* A copy of fd's data, holes left out. */
static int clone_fd(int src)
{
	static uint8_t buf[1 << 16];
	int fd = new_memfd();
	struct stat st;
	off_t off = 0, end;

	assert_int_equal(fstat(src, &st), 0);
	assert_int_equal(__real_ftruncate(fd, st.st_size), 0);
	while ((off = lseek(src, off, SEEK_DATA)) >= 0) {
		end = lseek(src, off, SEEK_HOLE);
		for (; off < end;) {
			size_t n = (size_t)(end - off) < sizeof(buf) ? (size_t)(end - off)
								     : sizeof(buf);
			assert_int_equal(pread(src, buf, n, off), (ssize_t)n);
			assert_int_equal(__real_pwrite(fd, buf, n, off), (ssize_t)n);
			off += (off_t)n;
		}
	}
	return fd;
}

/* The op was a slot's commit: a descriptor with a generation. */
static int is_commit(const struct io_op *o)
{
	uint64_t gen;

	if (o->kind != IO_WRITE || o->len != sizeof(struct jnl_slot) ||
	    o->off < offsetof(struct jnl_file_hdr, slot) || o->off >= sizeof(struct jnl_file_hdr))
		return 0;
	memcpy(&gen, o->data, sizeof(gen));
	return gen > 1;
}

/* Just after a commit the previous slot is still whole: with the new
 * one damaged, a reader takes it, to the same state. */
static void check_fallback(int sh, const struct io_op *o, uint64_t want)
{
	int slot = (int)((o->off - offsetof(struct jnl_file_hdr, slot)) / sizeof(struct jnl_slot));

	for (int what = 0; what < 2; what++) {
		int fd = clone_fd(sh);
		struct jnl_slot s = slot_of(fd, slot);
		struct jnl_info info;
		flip(fd, what ? s.image_off + s.image_len / 2 : o->off + 3);
		assert_int_equal(read_hash(fd, &info), want);
		assert_int_equal(info.slot, 1 - slot);
		assert_int_equal(info.slot_err[slot], JNL_ECRC);
		jnl_info_free(&info);
		close(fd);
	}
}

/* From a crash point: a restarted daemon goes on, and compacts. */
static void check_resume(int sh, uint64_t seed)
{
	struct drv e;

	drv_adopt(&e, clone_fd(sh), seed);
	for (int i = 0; i < 20; i++)
		drv_step(&e);
	drv_compact(&e, 3);
	for (int i = 0; i < 10; i++)
		drv_step(&e);
	expect_state(&e);
	drv_fini(&e);
}

/* The index of the state sh reads as: that after the operations done, or
 * after the one under way; never an earlier one than last time. */
static size_t check_crash(const struct drv *d, int sh, size_t done, size_t last)
{
	uint64_t h = read_hash(sh, NULL);
	size_t idx = done + 1 < d->nhashes && d->hashes[done + 1] == h ? done + 1
		     : d->hashes[done] == h                            ? done
								       : SIZE_MAX;

	if (idx == SIZE_MAX || idx < last)
		fail_msg(
			"after op %zu: the state read is not the state after it or the one under way "
			"(or went back)",
			done);
	return idx;
}

/* A long scripted workload with compactions (and an abort); then a crash
 * after each of its writes, and in the middle of each. */
static void test_crash_simulation(void **state)
{
	struct drv d;
	size_t last = 0, checks = 0;

	(void)state;
	drv_init(&d, 0x9e3779b97f4a7c15ull, 1);
	for (int round = 0; round < 8; round++) {
		for (int i = 0; i < 40; i++)
			drv_step(&d);
		if (round != 3) {
			drv_compact(&d, 5);
			continue;
		}
		drv_begin(&d);
		capture_mms(&d, 0);
		for (int i = 0; i < 5; i++)
			drv_step(&d);
		jnl_compact_abort(&d.w);
		drv_end(&d);
	}
	io_log.fd = -1;
	assert_true(io_log.n > 500);
	int sh = new_memfd();
	for (size_t i = 0; i < io_log.n; i++) {
		const struct io_op *o = &io_log.v[i];
		if (o->kind == IO_WRITE && o->len > 1 && o->done != INIT_OP) {
			io_apply(sh, o, o->len / 2);
			last = check_crash(&d, sh, o->done, last);
		}
		io_apply(sh, o, o->len);
		if (o->done == INIT_OP)
			continue;
		last = check_crash(&d, sh, o->done, last);
		if (is_commit(o))
			check_fallback(sh, o, d.hashes[o->done]);
		if (i % 5 == 0)
			check_resume(sh, i);
		checks++;
	}
	assert_int_equal(last, d.nhashes - 1);
	assert_int_equal(d.compactions, 7);
	print_message("crash simulation: %zu writes, %zu states checked\n", io_log.n, checks);
	close(sh);
	io_log_reset(-1);
	drv_fini(&d);
}

/* Many compactions: the state always reads back, and the file holds no
 * more than the live pages, one image and one journal. */
static void test_random_workload(void **state)
{
	struct drv d;

	(void)state;
	drv_init(&d, 0xfeedface12345ull, 0);
	for (int round = 0; round < 60; round++) {
		int n = 20 + (int)rnd(&d.rng, 100);
		for (int i = 0; i < n; i++)
			drv_step(&d);
		drv_compact(&d, (int)rnd(&d.rng, 10));
		struct jnl_info info;
		struct stat st;
		assert_int_equal(read_hash(d.fd, &info), world_hash(d.W));
		assert_int_equal(info.slot_err[1 - info.slot], JNL_EEMPTY);
		uint64_t journal = jnl_journal_bytes(&d.w);
		assert_true(journal <= (info.next_seq - info.first_seq) * JNL_REC_MAX);
		uint32_t tmpls = 0;
		for (int i = 0; i < MAXID; i++)
			tmpls += d.W->t[i].alive;
		uint64_t bound = 4 * PG + PG * (tmpls + d.w.freed.n + d.w.held.n) + info.image_len +
				 journal + 2 * PG;
		assert_int_equal(fstat(d.fd, &st), 0);
		assert_true((uint64_t)st.st_blocks * 512 <= bound);
		jnl_info_free(&info);
	}
	assert_int_equal(d.compactions, 60);
	expect_state(&d);
	drv_fini(&d);
}

/* Appends from threads while compactions run; each capture taken under
 * the lock that orders its object's appends, as the daemon will. */
struct thr {
	struct jnl_writer *w;
	pthread_mutex_t lock;
	uint32_t mm;
	int32_t pid;
	int n;
};

static void *thr_run(void *arg)
{
	struct thr *t = arg;

	for (int i = 1; i <= t->n; i++) {
		struct jnl_mm_pid p = { .id = t->mm, .pid = i };
		pthread_mutex_lock(&t->lock);
		if (jnl_append(t->w, JNL_MM_PID, &p, sizeof(p), NULL) == 0)
			t->pid = i;
		pthread_mutex_unlock(&t->lock);
	}
	return NULL;
}

static void compact_threads(struct drv *d, struct thr *t, int n)
{
	struct jnl_image_builder b;
	const void *image;
	size_t len;
	uint64_t q;

	assert_int_equal(jnl_compact_begin(&d->w, &q), 0);
	jnl_image_init(&b);
	for (int i = 0; i < n; i++) {
		pthread_mutex_lock(&t[i].lock);
		struct jnl_mm m = { .id = t[i].mm,
				    .pid = t[i].pid,
				    .uid = 1000,
				    .tree = t[i].mm,
				    .seq = jnl_last_seq(&d->w) };
		pthread_mutex_unlock(&t[i].lock);
		assert_int_equal(jnl_image_add_mm(&b, &m), 0);
	}
	assert_int_equal(jnl_image_finish(&b, jnl_last_seq(&d->w), &d->next, &image, &len), 0);
	assert_int_equal(jnl_compact_commit(&d->w, image, len), 0);
	jnl_image_free(&b);
}

static void test_concurrent_appends(void **state)
{
	enum { N = 4 };
	struct drv d;
	struct thr t[N];
	pthread_t th[N];
	struct rctx c;
	struct jnl_info info;

	(void)state;
	drv_init(&d, 0, 0);
	for (int i = 0; i < N; i++) {
		step_mm_life(&d, 0);
		t[i] = (struct thr){ .w = &d.w, .mm = (uint32_t)i + 1, .n = 3000 };
		pthread_mutex_init(&t[i].lock, NULL);
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(pthread_create(&th[i], NULL, thr_run, &t[i]), 0);
	for (int k = 0; k < 30; k++)
		compact_threads(&d, t, N);
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	compact_threads(&d, t, N);
	replay(d.fd, &c, &info);
	for (int i = 0; i < N; i++) {
		assert_int_equal(c.W->m[i + 1].m.pid, 3000);
		pthread_mutex_destroy(&t[i].lock);
	}
	assert_int_equal(info.next_seq, N * 3000 + N + 1);
	jnl_info_free(&info);
	rctx_fini(&c);
	drv_fini(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c),
		cmocka_unit_test(test_fresh),
		cmocka_unit_test(test_record_round_trip),
		cmocka_unit_test(test_append_rejects_malformed),
		cmocka_unit_test(test_image_dag),
		cmocka_unit_test(test_image_dag_trees),
		cmocka_unit_test(test_builder_checks),
		cmocka_unit_test(test_commit_checks),
		cmocka_unit_test(test_filter),
		cmocka_unit_test(test_filter_fork),
		cmocka_unit_test(test_filter_unresolved),
		cmocka_unit_test(test_reject),
		cmocka_unit_test(test_torn_truncate),
		cmocka_unit_test(test_torn_flip),
		cmocka_unit_test(test_tail_invalid),
		cmocka_unit_test(test_slot_damage),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_counters),
		cmocka_unit_test(test_deferred_pages),
		cmocka_unit_test(test_resume),
		cmocka_unit_test(test_crash_simulation),
		cmocka_unit_test(test_random_workload),
		cmocka_unit_test(test_concurrent_appends),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
