/* The state journal format: see journal.h. */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const err_str[JNL_ERR_COUNT] = {
	[JNL_OK] = "ok",
	[JNL_EIO] = "read error",
	[JNL_ETRUNC] = "truncated",
	[JNL_EMAGIC] = "not a refpaged state file",
	[JNL_EVERSION] = "unknown format version",
	[JNL_ECRC] = "checksum mismatch",
	[JNL_EFORMAT] = "malformed contents",
	[JNL_EEMPTY] = "never written",
	[JNL_ENOMEM] = "out of memory",
	[JNL_EABORT] = "stopped by the caller",
};

const char *jnl_err_str(enum jnl_err e)
{
	return (unsigned)e < JNL_ERR_COUNT ? err_str[e] : "?";
}

static const char *const end_str[JNL_END_COUNT] = {
	[JNL_END_CLEAN] = "clean",
	[JNL_END_TORN] = "torn record",
	[JNL_END_SEQ] = "seq out of order",
	[JNL_END_INVALID] = "impossible record",
	[JNL_END_AREA] = "journal area full",
	[JNL_END_IO] = "read error",
};

const char *jnl_end_str(enum jnl_end e)
{
	return (unsigned)e < JNL_END_COUNT ? end_str[e] : "?";
}

/* --- CRC32C (Castagnoli), with the SSE4.2 instruction when there is one -- */

static uint32_t crc_table[256];

static void crc_table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n)
{
	uint64_t c = crc;

	for (; n >= 8; n -= 8, p += 8) {
		uint64_t w;
		memcpy(&w, p, sizeof(w));
		c = __builtin_ia32_crc32di(c, w);
	}
	crc = (uint32_t)c;
	while (n--)
		crc = __builtin_ia32_crc32qi(crc, *p++);
	return crc;
}
#endif

static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw_ok;

static void crc_init(void)
{
	crc_table_init();
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc_hw_ok = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t jnl_crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&crc_once, crc_init);
	crc = ~crc;
#if defined(__x86_64__)
	if (crc_hw_ok)
		return ~crc_hw(crc, p, n);
#endif
	return ~crc_soft(crc, p, n);
}

/* --- records: sizes and the checks that need no state --------------------- */

static const struct {
	const char *name;
	uint16_t len;
} rec_type[JNL_TYPE_COUNT] = {
	[JNL_TMPL_NEW] = { "TMPL_NEW", sizeof(struct jnl_tmpl) },
	[JNL_TMPL_FREE] = { "TMPL_FREE", sizeof(struct jnl_ended) },
	[JNL_SESSION_NEW] = { "SESSION_NEW", sizeof(struct jnl_session_new) },
	[JNL_SESSION_END] = { "SESSION_END", sizeof(struct jnl_ended) },
	[JNL_SESSION_MM] = { "SESSION_MM", sizeof(struct jnl_session_mm) },
	[JNL_HANDLE] = { "HANDLE", sizeof(struct jnl_handle_set) },
	[JNL_REPLY] = { "REPLY", sizeof(struct jnl_reply) },
	[JNL_MM_NEW] = { "MM_NEW", sizeof(struct jnl_mm_new) },
	[JNL_MM_END] = { "MM_END", sizeof(struct jnl_ended) },
	[JNL_MM_PID] = { "MM_PID", sizeof(struct jnl_mm_pid) },
	[JNL_MAP] = { "MAP", sizeof(struct jnl_map) },
	[JNL_UNMAP] = { "UNMAP", sizeof(struct jnl_unmap) },
	[JNL_COPY] = { "COPY", sizeof(struct jnl_copy) },
};

size_t jnl_payload_len(unsigned type)
{
	return type < JNL_TYPE_COUNT ? rec_type[type].len : 0;
}

const char *jnl_type_name(unsigned type)
{
	return jnl_payload_len(type) ? rec_type[type].name : "?";
}

static int aligned(uint64_t v)
{
	return v % JNL_PAGE == 0;
}

static int range_ok(uint64_t start, uint64_t end)
{
	return aligned(start) && aligned(end) && start < end;
}

static int copy_ok(const struct jnl_copy *c)
{
	return !c->reserved && aligned(c->from) && aligned(c->to) && aligned(c->len) && c->len &&
	       c->from + c->len > c->from && c->to + c->len > c->to;
}

static int mm_new_ok(const struct jnl_mm_new *m)
{
	return m->id && m->tree && !(m->flags & ~JNL_MM_CHILD) && m->parent != m->id &&
	       !(m->flags & JNL_MM_CHILD) == !m->parent;
}

/* What a well-formed payload of its type is, whatever the state. */
static int rec_ok(unsigned type, const union jnl_payload *p)
{
	switch (type) {
	case JNL_TMPL_NEW:
		return p->tmpl_new.id && p->tmpl_new.page < JNL_MAX_PAGES;
	case JNL_TMPL_FREE:
	case JNL_SESSION_END:
	case JNL_MM_END:
		return p->end.id && !p->end.reserved;
	case JNL_SESSION_NEW:
		return p->session_new.id != 0;
	case JNL_SESSION_MM:
		return p->session_mm.session != 0;
	case JNL_HANDLE:
		return p->handle.session && p->handle.index < JNL_MAX_HANDLES &&
		       (p->handle.tmpl || !p->handle.uses);
	case JNL_REPLY:
		return p->reply.session != 0;
	case JNL_MM_NEW:
		return mm_new_ok(&p->mm_new);
	case JNL_MM_PID:
		return p->mm_pid.id != 0;
	case JNL_MAP:
		return p->map.mm && p->map.tmpl && range_ok(p->map.start, p->map.end);
	case JNL_UNMAP:
		return p->unmap.mm && !p->unmap.reserved && range_ok(p->unmap.start, p->unmap.end);
	case JNL_COPY:
		return p->copy.mm && copy_ok(&p->copy);
	}
	return 0;
}

/* --- objects the replay knows of --------------------------------------------- */

enum { K_TMPL = 1, K_SESSION, K_MM, K_PAGE };
enum { OBJ_ALIVE, OBJ_ENDED, OBJ_REJECTED };

/* An object met in the image or the journal. A K_PAGE entry says which
 * template (in page) a template page belongs to. */
struct obj {
	uint64_t key;  /* kind << 32 | id; 0: an empty entry */
	uint64_t cap;  /* capture seq, for an object of the image */
	uint32_t page; /* K_TMPL: its page; K_PAGE: its template */
	uint32_t uid, crc;
	uint8_t state; /* OBJ_* */
	uint8_t image; /* captured in the image */
};

/* Open addressing, linear probing, at most half full. */
struct objmap {
	struct obj *v;
	size_t cap, n;
};

static uint64_t obj_key(int kind, uint32_t id)
{
	return (uint64_t)kind << 32 | id;
}

static size_t obj_slot(const struct objmap *m, uint64_t key)
{
	size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (m->cap - 1);

	while (m->v[i].key && m->v[i].key != key)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static struct obj *obj_find(const struct objmap *m, int kind, uint32_t id)
{
	if (!m->cap)
		return NULL;
	struct obj *o = &m->v[obj_slot(m, obj_key(kind, id))];
	return o->key ? o : NULL;
}

static int obj_grow(struct objmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct obj *v = calloc(cap, sizeof(*v));

	if (!v)
		return -1;
	struct objmap n = { v, cap, m->n };
	for (size_t i = 0; i < m->cap; i++)
		if (m->v[i].key)
			n.v[obj_slot(&n, m->v[i].key)] = m->v[i];
	free(m->v);
	*m = n;
	return 0;
}

/* A new entry (the caller checked there is none), or NULL on ENOMEM. The
 * map grows with the objects read: bounded by the bytes present. */
static struct obj *obj_add(struct objmap *m, int kind, uint32_t id)
{
	if (2 * (m->n + 1) > m->cap && obj_grow(m) < 0)
		return NULL;
	struct obj *o = &m->v[obj_slot(m, obj_key(kind, id))];
	*o = (struct obj){ .key = obj_key(kind, id) };
	m->n++;
	return o;
}

static void obj_free(struct objmap *m)
{
	free(m->v);
	memset(m, 0, sizeof(*m));
}

/* --- the replay: image, then journal, through the filter ------------------- */

/* Outcomes of replaying one record. */
enum { REC_OK, REC_INVALID, REC_STOP };

struct replay {
	const struct jnl_callbacks *cb;
	void *ctx;
	struct jnl_info *info;
	struct objmap objs;
	uint64_t q, gen;  /* of the slot being replayed */
	enum jnl_err err; /* why it stopped: JNL_ENOMEM, JNL_EABORT */
};

/* The sections of an image that passed image_check. */
struct image {
	uint8_t *buf;
	const struct jnl_image_hdr *h;
	const struct jnl_tmpl *tmpls;
	const struct jnl_node *nodes;
	const struct jnl_mm *mms;
	const uint8_t *sessions; /* each struct jnl_session followed by its handles */
};

struct cursor {
	const uint8_t *p;
	size_t left;
};

/* n entries of size bytes, or NULL when fewer are left. */
static const void *take(struct cursor *c, uint64_t n, size_t size)
{
	if (n > c->left / size)
		return NULL;
	const void *r = c->p;
	c->p += n * size;
	c->left -= n * size;
	return r;
}

static void bump(uint32_t *next, uint32_t id)
{
	if (id >= *next)
		*next = id == UINT32_MAX ? id : id + 1;
}

/* A new object, alive; NULL when the map cannot grow. Invalidates every
 * pointer into the map. */
static struct obj *obj_new(struct replay *r, int kind, uint32_t id, int image, uint64_t cap)
{
	struct obj *o = obj_add(&r->objs, kind, id);

	if (!o)
		r->err = JNL_ENOMEM;
	else
		o->image = (uint8_t)image, o->cap = cap;
	return o;
}

/* A template and its page; NULL on ENOMEM. The page goes in first: the
 * pointer returned is the last one added, still valid. */
static struct obj *tmpl_new(struct replay *r, const struct jnl_tmpl *t, int image, uint64_t cap)
{
	struct obj *pg = obj_new(r, K_PAGE, t->page, image, cap);

	if (!pg)
		return NULL;
	pg->page = t->id;
	struct obj *o = obj_new(r, K_TMPL, t->id, image, cap);
	if (o)
		o->page = t->page, o->uid = t->uid, o->crc = t->crc;
	return o;
}

static int tmpl_alive(const struct replay *r, uint32_t id)
{
	const struct obj *o = obj_find(&r->objs, K_TMPL, id);

	return o && o->state == OBJ_ALIVE;
}

/* Templates: ids and pages each once. */
static enum jnl_err check_tmpls(struct replay *r, struct image *im, struct cursor *c)
{
	const struct jnl_tmpl *t = take(c, im->h->ntmpls, sizeof(*t));

	if (!t)
		return JNL_EFORMAT;
	im->tmpls = t;
	for (uint32_t i = 0; i < im->h->ntmpls; i++, t++) {
		if (!t->id || t->page >= JNL_MAX_PAGES || obj_find(&r->objs, K_TMPL, t->id) ||
		    obj_find(&r->objs, K_PAGE, t->page))
			return JNL_EFORMAT;
		if (!tmpl_new(r, t, 1, im->h->main_seq))
			return JNL_ENOMEM;
		bump(&r->info->next.tmpl, t->id);
	}
	return JNL_OK;
}

/* What can be checked without walking subtrees: children before parents
 * (so no cycle), page-aligned non-empty ranges, templates of the image. */
static enum jnl_err check_nodes(struct replay *r, struct image *im, struct cursor *c)
{
	const struct jnl_node *n = take(c, im->h->nnodes, sizeof(*n));

	if (!n)
		return JNL_EFORMAT;
	im->nodes = n;
	for (uint32_t i = 1; i <= im->h->nnodes; i++, n++)
		if (n->left >= i || n->right >= i || !range_ok(n->start, n->end) || n->reserved ||
		    !n->tmpl || !obj_find(&r->objs, K_TMPL, n->tmpl))
			return JNL_EFORMAT;
	return JNL_OK;
}

static enum jnl_err check_mms(struct replay *r, struct image *im, struct cursor *c)
{
	const struct jnl_mm *m = take(c, im->h->nmms, sizeof(*m));

	if (!m)
		return JNL_EFORMAT;
	im->mms = m;
	for (uint32_t i = 0; i < im->h->nmms; i++, m++) {
		if (!m->id || !m->tree || (m->flags & ~JNL_MM_CHILD) || m->root > im->h->nnodes ||
		    m->seq < r->q - 1 || obj_find(&r->objs, K_MM, m->id))
			return JNL_EFORMAT;
		if (!obj_new(r, K_MM, m->id, 1, m->seq))
			return JNL_ENOMEM;
		bump(&r->info->next.mm, m->id);
		bump(&r->info->next.tree, m->tree);
	}
	return JNL_OK;
}

static int handles_ok(const struct replay *r, const struct jnl_handle *h, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		if (h[k].tmpl ? !obj_find(&r->objs, K_TMPL, h[k].tmpl) : h[k].uses != 0)
			return 0;
	return 1;
}

static enum jnl_err check_sessions(struct replay *r, struct image *im, struct cursor *c)
{
	im->sessions = c->p;
	for (uint32_t i = 0; i < im->h->nsessions; i++) {
		const struct jnl_session *s = take(c, 1, sizeof(*s));
		if (!s || !s->id || (s->flags & ~JNL_SESSION_REPLIED) ||
		    s->nhandles > JNL_MAX_HANDLES || obj_find(&r->objs, K_SESSION, s->id))
			return JNL_EFORMAT;
		const struct jnl_handle *h = take(c, s->nhandles, sizeof(*h));
		if (!h || !handles_ok(r, h, s->nhandles))
			return JNL_EFORMAT;
		if (!obj_new(r, K_SESSION, s->id, 1, im->h->main_seq))
			return JNL_ENOMEM;
		bump(&r->info->next.session, s->id);
	}
	return JNL_OK;
}

/* Check a whole image (len bytes at buf, 8-byte aligned) and learn its
 * objects into r->objs: JNL_OK, JNL_EFORMAT or JNL_ENOMEM. */
static enum jnl_err image_check(struct replay *r, struct image *im, const uint8_t *buf, size_t len)
{
	struct cursor c = { buf, len };
	const struct jnl_image_hdr *h = take(&c, 1, sizeof(*h));
	enum jnl_err e;

	if (!h || h->magic != JNL_IMAGE_MAGIC || h->reserved || h->main_seq < r->q - 1 ||
	    !h->next.tmpl || !h->next.session || !h->next.mm || !h->next.tree)
		return JNL_EFORMAT;
	im->h = h;
	r->info->next = h->next;
	if ((e = check_tmpls(r, im, &c)) || (e = check_nodes(r, im, &c)) ||
	    (e = check_mms(r, im, &c)) || (e = check_sessions(r, im, &c)))
		return e;
	return c.left ? JNL_EFORMAT : JNL_OK;
}

/* A callback's answer about object o: REC_OK (o rejected if it said so) or
 * REC_STOP. */
static int verdict(struct replay *r, int rc, struct obj *o)
{
	if (rc < 0) {
		r->info->abort = rc;
		r->err = JNL_EABORT;
		return REC_STOP;
	}
	if (rc > 0 && o)
		o->state = OBJ_REJECTED;
	return REC_OK;
}

static int deliver_sessions(struct replay *r, const struct image *im)
{
	const uint8_t *p = im->sessions;

	for (uint32_t i = 0; i < im->h->nsessions; i++) {
		const struct jnl_session *s = (const void *)p;
		const struct jnl_handle *h = (const void *)(s + 1);
		int rc = r->cb->session ? r->cb->session(r->ctx, s, h) : 0;
		if (verdict(r, rc, obj_find(&r->objs, K_SESSION, s->id)) != REC_OK)
			return REC_STOP;
		p = (const uint8_t *)(h + s->nhandles);
	}
	return REC_OK;
}

/* The checked image, through the callbacks, in its order. */
static int deliver_image(struct replay *r, const struct image *im)
{
	const struct jnl_callbacks *cb = r->cb;

	for (uint32_t i = 0; i < im->h->ntmpls; i++) {
		int rc = cb->tmpl ? cb->tmpl(r->ctx, &im->tmpls[i]) : 0;
		if (verdict(r, rc, obj_find(&r->objs, K_TMPL, im->tmpls[i].id)) != REC_OK)
			return REC_STOP;
	}
	for (uint32_t i = 0; i < im->h->nnodes; i++) {
		int rc = cb->node ? cb->node(r->ctx, i + 1, &im->nodes[i]) : 0;
		if (verdict(r, rc, NULL) != REC_OK)
			return REC_STOP;
		r->info->rejected_nodes += rc > 0;
	}
	for (uint32_t i = 0; i < im->h->nmms; i++) {
		int rc = cb->mm ? cb->mm(r->ctx, &im->mms[i]) : 0;
		if (verdict(r, rc, obj_find(&r->objs, K_MM, im->mms[i].id)) != REC_OK)
			return REC_STOP;
	}
	return deliver_sessions(r, im);
}

/* Whether a record part for object o (NULL: unknown) applies at seq;
 * counted when it does not. */
static int applies(struct replay *r, const struct obj *o, uint64_t seq)
{
	if (o && o->image && seq <= o->cap) {
		r->info->filtered++;
		return 0;
	}
	if (!o || o->state != OBJ_ALIVE) {
		r->info->skipped++;
		return 0;
	}
	return 1;
}

static int deliver(struct replay *r, struct obj *o, uint64_t seq, unsigned type,
		   const union jnl_payload *p)
{
	int rc = r->cb->record ? r->cb->record(r->ctx, seq, type, p) : 0;

	r->info->delivered++;
	return verdict(r, rc, o);
}

/* A *_NEW for an object already known: skipped if the image captured it
 * after the record, else an id created twice. */
static int known_again(struct replay *r, const struct obj *o, uint64_t seq)
{
	if (o->image && seq <= o->cap) {
		r->info->filtered++;
		return REC_OK;
	}
	return REC_INVALID;
}

/* A template known already is the same one again, identical; a page
 * belongs to one template (see the top of journal.h). */
static int rec_tmpl_new(struct replay *r, uint64_t seq, const union jnl_payload *p)
{
	const struct jnl_tmpl *t = &p->tmpl_new;
	const struct obj *o = obj_find(&r->objs, K_TMPL, t->id);

	if (o) {
		if (o->page != t->page || o->uid != t->uid || o->crc != t->crc)
			return REC_INVALID;
		r->info->filtered++;
		return REC_OK;
	}
	if (obj_find(&r->objs, K_PAGE, t->page))
		return REC_INVALID;
	struct obj *n = tmpl_new(r, t, 0, 0);
	return n ? deliver(r, n, seq, JNL_TMPL_NEW, p) : REC_STOP;
}

static int rec_session_new(struct replay *r, uint64_t seq, const union jnl_payload *p)
{
	const struct obj *o = obj_find(&r->objs, K_SESSION, p->session_new.id);

	if (o)
		return known_again(r, o, seq);
	struct obj *n = obj_new(r, K_SESSION, p->session_new.id, 0, 0);
	return n ? deliver(r, n, seq, JNL_SESSION_NEW, p) : REC_STOP;
}

/* The state a fork child starts in, from its parent's (see journal.h):
 * OBJ_ALIVE, OBJ_REJECTED, or -1: not there at all. */
static int child_state(struct replay *r, uint32_t parent, uint64_t seq)
{
	const struct obj *par = obj_find(&r->objs, K_MM, parent);

	if (par && par->image && seq <= par->cap) {
		r->info->filtered++;
		return -1;
	}
	if (!par || par->state == OBJ_ENDED) {
		r->info->skipped++;
		return -1;
	}
	return par->state;
}

static int rec_mm_new(struct replay *r, uint64_t seq, const union jnl_payload *p)
{
	const struct jnl_mm_new *m = &p->mm_new;
	const struct obj *o = obj_find(&r->objs, K_MM, m->id);
	int state = OBJ_ALIVE;

	if (o)
		return known_again(r, o, seq);
	if (m->parent && (state = child_state(r, m->parent, seq)) < 0)
		return REC_OK;
	struct obj *n = obj_new(r, K_MM, m->id, 0, 0);
	if (!n)
		return REC_STOP;
	if (state == OBJ_ALIVE)
		return deliver(r, n, seq, JNL_MM_NEW, p);
	n->state = OBJ_REJECTED;
	r->info->skipped++;
	return REC_OK;
}

/* TMPL_FREE, SESSION_END, MM_END: whatever the callback says, the object
 * is gone for the rest of the replay. */
static int rec_end(struct replay *r, uint64_t seq, unsigned type, const union jnl_payload *p,
		   int kind)
{
	struct obj *o = obj_find(&r->objs, kind, p->end.id);

	if (!applies(r, o, seq))
		return REC_OK;
	int v = deliver(r, o, seq, type, p);
	o->state = OBJ_ENDED;
	return v;
}

/* A record changing object id of kind; tmpl: a template it names (0:
 * none), which must be alive. */
static int rec_change(struct replay *r, uint64_t seq, unsigned type, const union jnl_payload *p,
		      int kind, uint32_t id, uint32_t tmpl)
{
	struct obj *o = obj_find(&r->objs, kind, id);

	if (!applies(r, o, seq))
		return REC_OK;
	if (tmpl && !tmpl_alive(r, tmpl)) {
		r->info->skipped++;
		return REC_OK;
	}
	return deliver(r, o, seq, type, p);
}

/* The session part of a MAP or UNMAP: its last reply, by the session
 * rule, as a JNL_REPLY. */
static int reply_part(struct replay *r, uint64_t seq, uint32_t session, uint32_t req_seq)
{
	union jnl_payload rp = { .reply = { .session = session, .req_seq = req_seq } };

	if (!session)
		return REC_OK;
	return rec_change(r, seq, JNL_REPLY, &rp, K_SESSION, session, 0);
}

static int rec_mm_op(struct replay *r, uint64_t seq, unsigned type, const union jnl_payload *p)
{
	int v;

	switch (type) {
	case JNL_MAP:
		v = rec_change(r, seq, type, p, K_MM, p->map.mm, p->map.tmpl);
		return v == REC_OK ? reply_part(r, seq, p->map.session, p->map.req_seq) : v;
	case JNL_UNMAP:
		v = rec_change(r, seq, type, p, K_MM, p->unmap.mm, 0);
		return v == REC_OK ? reply_part(r, seq, p->unmap.session, p->unmap.req_seq) : v;
	case JNL_COPY:
		return rec_change(r, seq, type, p, K_MM, p->copy.mm, 0);
	default:
		return rec_change(r, seq, type, p, K_MM, p->mm_pid.id, 0);
	}
}

/* One well-formed record, in seq order: REC_OK, REC_INVALID or REC_STOP. */
static int replay_record(struct replay *r, uint64_t seq, unsigned type, const union jnl_payload *p)
{
	switch (type) {
	case JNL_TMPL_NEW:
		bump(&r->info->next.tmpl, p->tmpl_new.id);
		return rec_tmpl_new(r, seq, p);
	case JNL_SESSION_NEW:
		bump(&r->info->next.session, p->session_new.id);
		return rec_session_new(r, seq, p);
	case JNL_MM_NEW:
		bump(&r->info->next.mm, p->mm_new.id);
		bump(&r->info->next.tree, p->mm_new.tree);
		return rec_mm_new(r, seq, p);
	case JNL_TMPL_FREE:
		return rec_end(r, seq, type, p, K_TMPL);
	case JNL_SESSION_END:
		return rec_end(r, seq, type, p, K_SESSION);
	case JNL_MM_END:
		return rec_end(r, seq, type, p, K_MM);
	case JNL_SESSION_MM:
		return rec_change(r, seq, type, p, K_SESSION, p->session_mm.session, 0);
	case JNL_HANDLE:
		return rec_change(r, seq, type, p, K_SESSION, p->handle.session, p->handle.tmpl);
	case JNL_REPLY:
		return rec_change(r, seq, type, p, K_SESSION, p->reply.session, 0);
	default:
		return rec_mm_op(r, seq, type, p);
	}
}

/* --- reading the file --------------------------------------------------------- */

/* 1: all n bytes read, 0: the file ends first, -1: error. */
static int read_all(int fd, void *buf, size_t n, uint64_t off)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, (uint8_t *)buf + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return got == n;
}

#define RD_BUF 65536u

/* Buffered sequential reading of a journal area. */
struct rd {
	int fd;
	uint64_t off, end; /* file offset of buf[0]; of the area's end */
	uint8_t *buf;
	size_t have, at; /* bytes in buf; consumed */
	int eio;
};

/* n contiguous bytes at the reading position, or NULL where the file or
 * the area ends first (or on a read error: d->eio). */
static const uint8_t *rd_get(struct rd *d, size_t n)
{
	if (d->have - d->at >= n)
		return d->buf + d->at;
	memmove(d->buf, d->buf + d->at, d->have - d->at);
	d->off += d->at;
	d->have -= d->at;
	d->at = 0;
	while (d->have < n && d->off + d->have < d->end) {
		size_t want = RD_BUF - d->have;
		if (want > d->end - (d->off + d->have))
			want = (size_t)(d->end - (d->off + d->have));
		ssize_t k = pread(d->fd, d->buf + d->have, want, (off_t)(d->off + d->have));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			d->eio = k < 0;
			return NULL;
		}
		d->have += (size_t)k;
	}
	return d->have >= n ? d->buf : NULL;
}

/* Where reading stopped short of n bytes. */
static enum jnl_end rd_end(const struct rd *d, size_t n, enum jnl_end otherwise)
{
	if (d->eio)
		return JNL_END_IO;
	return d->off + d->at + n > d->end ? JNL_END_AREA : otherwise;
}

static int zeros(const uint8_t *p, size_t n)
{
	while (n && !p[n - 1])
		n--;
	return n == 0;
}

/* The next record, checked on its own: JNL_END_COUNT when there is one
 * (in *h and *p), else why the journal ends there. */
static enum jnl_end next_record(struct replay *r, struct rd *d, uint64_t seq, struct jnl_rec_hdr *h,
				union jnl_payload *p)
{
	const uint8_t *b = rd_get(d, sizeof(*h));

	if (!b)
		return rd_end(d, sizeof(*h),
			      zeros(d->buf + d->at, d->have - d->at) ? JNL_END_CLEAN
								     : JNL_END_TORN);
	memcpy(h, b, sizeof(*h));
	if (zeros(b, sizeof(*h)))
		return JNL_END_CLEAN;
	size_t len = jnl_payload_len(h->type);
	if (!len || h->len != len)
		return JNL_END_TORN;
	if (!(b = rd_get(d, sizeof(*h) + len)))
		return rd_end(d, sizeof(*h) + len, JNL_END_TORN);
	if (jnl_crc32c((uint32_t)r->gen, b + 4, sizeof(*h) - 4 + len) != h->crc)
		return JNL_END_TORN;
	if (h->seq != seq || seq > JNL_SEQ_MAX)
		return JNL_END_SEQ;
	memcpy(p, b + sizeof(*h), len);
	return rec_ok(h->type, p) ? JNL_END_COUNT : JNL_END_INVALID;
}

/* The journal at off, from seq r->q, up to its first bad record. */
static void replay_journal(struct replay *r, int fd, uint64_t off)
{
	struct rd d = { .fd = fd, .off = off, .end = off + JNL_AREA, .buf = malloc(RD_BUF) };
	struct jnl_info *info = r->info;
	struct jnl_rec_hdr h;
	union jnl_payload p;
	uint64_t seq = r->q;

	info->tail = off;
	if (!d.buf) {
		r->err = JNL_ENOMEM;
		return;
	}
	while ((info->end = next_record(r, &d, seq, &h, &p)) == JNL_END_COUNT) {
		int v = replay_record(r, seq, h.type, &p);
		if (v == REC_INVALID)
			info->end = JNL_END_INVALID;
		if (v != REC_OK)
			break;
		info->records++;
		d.at += sizeof(h) + h.len;
		info->tail = d.off + d.at;
		seq++;
	}
	info->next_seq = seq;
	free(d.buf);
}

static enum jnl_err read_header(int fd, struct jnl_file_hdr *h, uint32_t *version)
{
	int r = read_all(fd, h, sizeof(*h), 0);

	if (r <= 0)
		return r < 0 ? JNL_EIO : JNL_ETRUNC;
	if (memcmp(h->magic, JNL_MAGIC, sizeof(h->magic)))
		return JNL_EMAGIC;
	/* The version comes before the checksum: another version may have
	 * laid out the rest differently. */
	*version = h->version;
	if (h->version != JNL_VERSION)
		return JNL_EVERSION;
	if (jnl_crc32c(0, h, offsetof(struct jnl_file_hdr, crc)) != h->crc)
		return JNL_ECRC;
	if (h->page_size != JNL_PAGE || h->counters_off != JNL_COUNTERS_OFF ||
	    h->tmpl_off != JNL_TMPL_OFF || h->slot_off[0] != JNL_IMAGE_OFF(0) ||
	    h->slot_off[1] != JNL_IMAGE_OFF(1) || h->area != JNL_AREA || h->reserved)
		return JNL_EFORMAT;
	return JNL_OK;
}

static enum jnl_err slot_desc(const struct jnl_slot *s, int i)
{
	static const struct jnl_slot never;

	if (!memcmp(s, &never, sizeof(never)))
		return JNL_EEMPTY;
	if (jnl_crc32c(0, s, offsetof(struct jnl_slot, crc)) != s->crc)
		return JNL_ECRC;
	if (!s->gen || s->gen > JNL_SEQ_MAX || s->image_off != JNL_IMAGE_OFF(i) ||
	    s->journal_off != JNL_JOURNAL_OFF(i) || s->image_len < sizeof(struct jnl_image_hdr) ||
	    s->image_len > JNL_IMAGE_MAX || s->image_len % 8 || !s->first_seq ||
	    s->first_seq > JNL_SEQ_MAX)
		return JNL_EFORMAT;
	return JNL_OK;
}

/* The image of a valid descriptor, checked against its CRC. The buffer
 * grows with what is read: memory is bounded by the bytes present. */
static enum jnl_err read_image(int fd, const struct jnl_slot *s, uint8_t **out)
{
	size_t len = (size_t)s->image_len, have = 0, cap = 0;
	uint8_t *buf = NULL;

	while (have < len) {
		if (have == cap) {
			cap = cap ? (cap * 2 < len ? cap * 2 : len) : (len < RD_BUF ? len : RD_BUF);
			uint8_t *p = realloc(buf, cap);
			if (!p) {
				free(buf);
				return JNL_ENOMEM;
			}
			buf = p;
		}
		ssize_t k = pread(fd, buf + have, cap - have, (off_t)(s->image_off + have));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			free(buf);
			return k < 0 ? JNL_EIO : JNL_ETRUNC;
		}
		have += (size_t)k;
	}
	if (jnl_crc32c(0, buf, len) != s->image_crc) {
		free(buf);
		return JNL_ECRC;
	}
	*out = buf;
	return JNL_OK;
}

/* Slot i's image, read and checked, its objects learnt: JNL_OK, or why
 * the slot cannot be used (r->objs emptied again). */
static enum jnl_err load_slot(struct replay *r, int fd, const struct jnl_slot *s, struct image *im)
{
	enum jnl_err e = read_image(fd, s, &im->buf);

	if (e != JNL_OK)
		return e;
	r->q = s->first_seq;
	r->gen = s->gen;
	e = image_check(r, im, im->buf, (size_t)s->image_len);
	if (e != JNL_OK) {
		free(im->buf);
		im->buf = NULL;
		obj_free(&r->objs);
		memset(&r->info->next, 0, sizeof(r->info->next));
	}
	return e;
}

/* The valid slot of the highest generation that loads, else the other. */
static enum jnl_err pick_slot(struct replay *r, int fd, const struct jnl_file_hdr *h,
			      struct image *im)
{
	struct jnl_info *info = r->info;
	int order[2] = { 0, 1 };

	for (int i = 0; i < 2; i++)
		info->slot_err[i] = slot_desc(&h->slot[i], i);
	if (info->slot_err[1] == JNL_OK &&
	    (info->slot_err[0] != JNL_OK || h->slot[1].gen > h->slot[0].gen)) {
		order[0] = 1;
		order[1] = 0;
	}
	for (int k = 0; k < 2; k++) {
		int i = order[k];
		if (info->slot_err[i] != JNL_OK)
			continue;
		info->slot_err[i] = load_slot(r, fd, &h->slot[i], im);
		if (info->slot_err[i] == JNL_OK) {
			info->slot = i;
			info->gen = h->slot[i].gen;
			info->image_len = h->slot[i].image_len;
			info->first_seq = h->slot[i].first_seq;
			info->main_seq = im->h->main_seq;
			return JNL_OK;
		}
	}
	/* The more telling failure: a damaged slot over an empty one. */
	enum jnl_err e = info->slot_err[order[0]];
	return e == JNL_EEMPTY ? info->slot_err[order[1]] : e;
}

/* Template pages for jnl_writer_resume: alive, or held by a template
 * freed or rejected. */
static enum jnl_err collect_pages(struct replay *r)
{
	struct jnl_info *info = r->info;
	size_t n = 0;

	for (size_t i = 0; i < r->objs.cap; i++)
		n += r->objs.v[i].key >> 32 == K_TMPL;
	info->pages_live = malloc((n ? n : 1) * sizeof(uint32_t));
	info->pages_dead = malloc((n ? n : 1) * sizeof(uint32_t));
	if (!info->pages_live || !info->pages_dead)
		return JNL_ENOMEM;
	for (size_t i = 0; i < r->objs.cap; i++) {
		const struct obj *o = &r->objs.v[i];
		if (o->key >> 32 != K_TMPL)
			continue;
		if (o->state == OBJ_ALIVE)
			info->pages_live[info->npages_live++] = o->page;
		else
			info->pages_dead[info->npages_dead++] = o->page;
	}
	return JNL_OK;
}

static void info_reset(struct jnl_info *info)
{
	memset(info, 0, sizeof(*info));
	info->slot = -1;
}

enum jnl_err jnl_read(int fd, const struct jnl_callbacks *cb, void *ctx, struct jnl_info *info)
{
	static const struct jnl_callbacks none;
	struct replay r = { .cb = cb ? cb : &none, .ctx = ctx, .info = info };
	struct jnl_file_hdr h;
	struct image im = { 0 };
	enum jnl_err e;

	info_reset(info);
	if ((e = read_header(fd, &h, &info->version)) != JNL_OK)
		return e;
	if ((e = pick_slot(&r, fd, &h, &im)) != JNL_OK)
		return e;
	if (deliver_image(&r, &im) == REC_OK)
		replay_journal(&r, fd, h.slot[info->slot].journal_off);
	if (r.err == JNL_OK)
		r.err = collect_pages(&r);
	free(im.buf);
	obj_free(&r.objs);
	return r.err;
}

void jnl_info_free(struct jnl_info *info)
{
	free(info->pages_live);
	free(info->pages_dead);
	info_reset(info);
}

enum jnl_err jnl_read_counters(int fd, struct jnl_counters *c)
{
	int r = read_all(fd, c, sizeof(*c), JNL_COUNTERS_OFF);

	if (r <= 0)
		return r < 0 ? JNL_EIO : JNL_ETRUNC;
	return c->magic == JNL_COUNTERS_MAGIC && c->count <= JNL_MAX_STATS ? JNL_OK : JNL_EFORMAT;
}

enum jnl_err jnl_read_page(int fd, uint32_t page, uint32_t crc, void *buf)
{
	if (page >= JNL_MAX_PAGES)
		return JNL_ETRUNC;
	int r = read_all(fd, buf, JNL_PAGE, JNL_TMPL_OFF + (uint64_t)page * JNL_PAGE);
	if (r <= 0)
		return r < 0 ? JNL_EIO : JNL_ETRUNC;
	return jnl_crc32c(0, buf, JNL_PAGE) == crc ? JNL_OK : JNL_ECRC;
}

/* --- the image encoder ---------------------------------------------------------- */

/* n more bytes at the end of b (which stays below JNL_IMAGE_MAX), or
 * NULL. Earlier pointers may move. */
static void *bytes_add(struct jnl_bytes *b, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p)
			return NULL;
		b->p = p;
		b->cap = cap;
	}
	void *r = b->p + b->len;
	b->len += n;
	return r;
}

static int builder_fail(struct jnl_image_builder *b, int err)
{
	if (!b->err)
		b->err = err;
	return b->err;
}

static int builder_put(struct jnl_image_builder *b, struct jnl_bytes *sec, const void *p, size_t n)
{
	if (b->err || !n)
		return b->err;
	if (n > JNL_IMAGE_MAX - sec->len)
		return builder_fail(b, -EFBIG);
	void *q = bytes_add(sec, n);
	if (!q)
		return builder_fail(b, -ENOMEM);
	memcpy(q, p, n);
	return 0;
}

void jnl_image_init(struct jnl_image_builder *b)
{
	memset(b, 0, sizeof(*b));
}

int jnl_image_add_tmpl(struct jnl_image_builder *b, const struct jnl_tmpl *t)
{
	if (!t->id || t->page >= JNL_MAX_PAGES)
		return builder_fail(b, -EINVAL);
	int r = builder_put(b, &b->tmpls, t, sizeof(*t));
	b->ntmpls += r == 0;
	return r;
}

uint32_t jnl_image_add_node(struct jnl_image_builder *b, const struct jnl_node *n)
{
	struct jnl_node rec = *n;
	uint32_t idx = b->nnodes + 1;

	rec.reserved = 0;
	if (n->left >= idx || n->right >= idx || !range_ok(n->start, n->end) || !n->tmpl) {
		builder_fail(b, -EINVAL);
		return 0;
	}
	if (builder_put(b, &b->nodes, &rec, sizeof(rec)) < 0)
		return 0;
	return ++b->nnodes;
}

int jnl_image_add_mm(struct jnl_image_builder *b, const struct jnl_mm *m)
{
	if (!m->id || !m->tree || (m->flags & ~JNL_MM_CHILD))
		return builder_fail(b, -EINVAL);
	int r = builder_put(b, &b->mms, m, sizeof(*m));
	b->nmms += r == 0;
	return r;
}

int jnl_image_add_session(struct jnl_image_builder *b, const struct jnl_session *s,
			  const struct jnl_handle *h)
{
	if (!s->id || (s->flags & ~JNL_SESSION_REPLIED) || s->nhandles > JNL_MAX_HANDLES)
		return builder_fail(b, -EINVAL);
	for (uint32_t k = 0; k < s->nhandles; k++)
		if (!h[k].tmpl && h[k].uses)
			return builder_fail(b, -EINVAL);
	if (builder_put(b, &b->sessions, s, sizeof(*s)) < 0 ||
	    builder_put(b, &b->sessions, h, (size_t)s->nhandles * sizeof(*h)) < 0)
		return b->err;
	b->nsessions++;
	return 0;
}

int jnl_image_finish(struct jnl_image_builder *b, uint64_t main_seq, const struct jnl_ids *next,
		     const void **image, size_t *len)
{
	struct jnl_image_hdr h = {
		.magic = JNL_IMAGE_MAGIC,
		.ntmpls = b->ntmpls,
		.nnodes = b->nnodes,
		.nmms = b->nmms,
		.nsessions = b->nsessions,
		.main_seq = main_seq,
		.next = *next,
	};
	const struct jnl_bytes *sec[] = { &b->tmpls, &b->nodes, &b->mms, &b->sessions };
	uint64_t total = sizeof(h);

	for (size_t i = 0; i < sizeof(sec) / sizeof(sec[0]); i++)
		total += sec[i]->len;
	if (total > JNL_IMAGE_MAX)
		builder_fail(b, -EFBIG);
	b->out.len = 0;
	builder_put(b, &b->out, &h, sizeof(h));
	for (size_t i = 0; i < sizeof(sec) / sizeof(sec[0]); i++)
		if (sec[i]->len)
			builder_put(b, &b->out, sec[i]->p, sec[i]->len);
	if (b->err)
		return b->err;
	*image = b->out.p;
	*len = b->out.len;
	return 0;
}

void jnl_image_free(struct jnl_image_builder *b)
{
	free(b->tmpls.p);
	free(b->nodes.p);
	free(b->mms.p);
	free(b->sessions.p);
	free(b->out.p);
	memset(b, 0, sizeof(*b));
}

/* --- writing: plumbing -------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n, uint64_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, (const uint8_t *)buf + done, n - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

/* Give the memory of [off, off + len) back, reading as zeros. */
static int punch(int fd, uint64_t off, uint64_t len)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
		return -errno;
	return 0;
}

/* Slot i's areas, image and journal: nothing any reader takes. */
static void punch_slot(struct jnl_writer *w, int i)
{
	punch(w->fd, JNL_IMAGE_OFF(i), 2 * JNL_AREA);
}

static int write_desc(struct jnl_writer *w, int i, const struct jnl_slot *d)
{
	return write_all(w->fd, d, sizeof(*d),
			 offsetof(struct jnl_file_hdr, slot) + (size_t)i * sizeof(*d));
}

static int u32s_push(struct jnl_u32s *a, uint32_t v)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		uint32_t *p = realloc(a->v, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		a->v = p;
		a->cap = cap;
	}
	a->v[a->n++] = v;
	return 0;
}

/* --- template pages ------------------------------------------------------------- */

static int page_mark(struct jnl_writer *w, uint32_t idx)
{
	size_t word = idx / 64;

	if (word >= w->nwords) {
		size_t n = w->nwords ? w->nwords : 16;
		while (n <= word)
			n *= 2;
		uint64_t *b = realloc(w->busy, n * sizeof(*b));
		if (!b)
			return -ENOMEM;
		memset(b + w->nwords, 0, (n - w->nwords) * sizeof(*b));
		w->busy = b;
		w->nwords = n;
	}
	w->busy[word] |= 1ull << (idx % 64);
	return 0;
}

long jnl_page_alloc(struct jnl_writer *w)
{
	uint64_t idx;
	long r;

	pthread_mutex_lock(&w->lock);
	while (w->hint < w->nwords && w->busy[w->hint] == UINT64_MAX)
		w->hint++;
	idx = w->hint < w->nwords ? w->hint * 64 + (uint64_t)__builtin_ctzll(~w->busy[w->hint])
				  : w->nwords * 64;
	if (idx >= JNL_MAX_PAGES)
		r = -ENOSPC;
	else
		r = page_mark(w, (uint32_t)idx) < 0 ? -ENOMEM : (long)idx;
	pthread_mutex_unlock(&w->lock);
	return r;
}

int jnl_page_write(struct jnl_writer *w, uint32_t idx, const void *page, uint32_t *crc)
{
	if (idx >= JNL_MAX_PAGES)
		return -EINVAL;
	*crc = jnl_crc32c(0, page, JNL_PAGE);
	return write_all(w->fd, page, JNL_PAGE, JNL_TMPL_OFF + (uint64_t)idx * JNL_PAGE);
}

static int page_busy(const struct jnl_writer *w, uint32_t idx)
{
	return idx / 64 < w->nwords && (w->busy[idx / 64] >> (idx % 64) & 1);
}

int jnl_page_free(struct jnl_writer *w, uint32_t idx)
{
	pthread_mutex_lock(&w->lock);
	int r = page_busy(w, idx) ? u32s_push(&w->freed, idx) : -EINVAL;
	pthread_mutex_unlock(&w->lock);
	return r;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Punch pages that nothing refers to any more, by runs of neighbours. */
static void punch_pages(struct jnl_writer *w, struct jnl_u32s *pages)
{
	if (!pages->n)
		return;
	qsort(pages->v, pages->n, sizeof(*pages->v), cmp_u32);
	for (size_t i = 0, j; i < pages->n; i = j) {
		for (j = i + 1; j < pages->n && pages->v[j] == pages->v[j - 1] + 1; j++)
			;
		punch(w->fd, JNL_TMPL_OFF + (uint64_t)pages->v[i] * JNL_PAGE,
		      (uint64_t)(j - i) * JNL_PAGE);
	}
}

/* Under the lock: the pages become reusable. */
static void pages_release(struct jnl_writer *w, const struct jnl_u32s *pages)
{
	for (size_t i = 0; i < pages->n; i++) {
		uint32_t idx = pages->v[i];
		w->busy[idx / 64] &= ~(1ull << (idx % 64));
		if (idx / 64 < w->hint)
			w->hint = idx / 64;
	}
}

/* Under the lock: pages held for the running compaction wait for the
 * next one. One that cannot be queued stays used: a leak, not a reuse. */
static void pages_requeue(struct jnl_writer *w)
{
	for (size_t i = 0; i < w->held.n; i++)
		u32s_push(&w->freed, w->held.v[i]);
	w->held.n = 0;
}

/* --- writing: set-up --------------------------------------------------------------- */

static void writer_reset(struct jnl_writer *w, int fd, uint32_t version)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->lock, NULL);
	w->fd = fd;
	w->version = version;
}

/* Write image into slot i, then its descriptor (the commit point):
 * generation gen, journal from seq q. 0 or -errno. */
static int slot_write_image(struct jnl_writer *w, int i, const void *image, size_t len,
			    struct jnl_slot *d, uint64_t gen, uint64_t q)
{
	*d = (struct jnl_slot){
		.gen = gen,
		.image_off = JNL_IMAGE_OFF(i),
		.image_len = len,
		.journal_off = JNL_JOURNAL_OFF(i),
		.first_seq = q,
		.image_crc = jnl_crc32c(0, image, len),
	};
	d->crc = jnl_crc32c(0, d, offsetof(struct jnl_slot, crc));
	return write_all(w->fd, image, len, d->image_off);
}

static int write_file_hdr(struct jnl_writer *w)
{
	struct jnl_file_hdr h = {
		.version = w->version,
		.page_size = JNL_PAGE,
		.counters_off = JNL_COUNTERS_OFF,
		.tmpl_off = JNL_TMPL_OFF,
		.slot_off = { JNL_IMAGE_OFF(0), JNL_IMAGE_OFF(1) },
		.area = JNL_AREA,
	};
	struct jnl_counters c = { .magic = JNL_COUNTERS_MAGIC };
	int r;

	memcpy(h.magic, JNL_MAGIC, sizeof(h.magic));
	h.crc = jnl_crc32c(0, &h, offsetof(struct jnl_file_hdr, crc));
	if ((r = write_all(w->fd, &c, sizeof(c), JNL_COUNTERS_OFF)) < 0)
		return r;
	return write_all(w->fd, &h, sizeof(h), 0);
}

int jnl_writer_init(struct jnl_writer *w, int fd, uint32_t version)
{
	static const struct jnl_ids first = { 1, 1, 1, 1 };
	struct jnl_image_builder b;
	struct jnl_slot d;
	const void *image;
	size_t len;
	int r;

	writer_reset(w, fd, version);
	if (ftruncate(fd, 0) < 0)
		return -errno;
	if ((r = write_file_hdr(w)) < 0)
		return r;
	jnl_image_init(&b);
	r = jnl_image_finish(&b, 0, &first, &image, &len);
	if (r == 0)
		r = slot_write_image(w, 0, image, len, &d, 1, 1);
	if (r == 0)
		r = write_desc(w, 0, &d);
	jnl_image_free(&b);
	w->gen = 1;
	return r;
}

static int resume_pages(struct jnl_writer *w, const struct jnl_info *info)
{
	for (size_t i = 0; i < info->npages_live; i++)
		if (page_mark(w, info->pages_live[i]) < 0)
			return -ENOMEM;
	for (size_t i = 0; i < info->npages_dead; i++)
		if (page_mark(w, info->pages_dead[i]) < 0 ||
		    u32s_push(&w->freed, info->pages_dead[i]) < 0)
			return -ENOMEM;
	return 0;
}

/* What follows the last record (a torn one, at most JNL_REC_MAX bytes, as
 * records are written one at a time) must not pass for the next one
 * once a shorter record is written over its start. */
static int clear_tail(struct jnl_writer *w)
{
	static const uint8_t zero[JNL_REC_MAX];
	uint64_t off = JNL_JOURNAL_OFF(w->cur) + w->pos;

	if (punch(w->fd, off, JNL_AREA - w->pos) == 0)
		return 0;
	return write_all(w->fd, zero,
			 sizeof(zero) < JNL_AREA - w->pos ? sizeof(zero) : JNL_AREA - w->pos, off);
}

int jnl_writer_resume(struct jnl_writer *w, int fd, const struct jnl_info *info)
{
	static const struct jnl_slot zero;
	int r;

	writer_reset(w, fd, info->version);
	if (info->slot < 0 || info->slot > 1 || !info->next_seq ||
	    info->tail < JNL_JOURNAL_OFF(info->slot) ||
	    info->tail > JNL_JOURNAL_OFF(info->slot) + JNL_AREA)
		return -EINVAL;
	w->cur = info->slot;
	w->gen = info->gen;
	w->seq = info->next_seq - 1;
	w->pos = info->tail - JNL_JOURNAL_OFF(w->cur);
	if ((r = resume_pages(w, info)) < 0 || (r = clear_tail(w)) < 0)
		return r;
	/* The other slot: an older generation, or a compaction the crash cut
	 * short. Its pages are about to be reused. */
	if ((r = write_desc(w, 1 - w->cur, &zero)) < 0)
		return r;
	punch_slot(w, 1 - w->cur);
	return 0;
}

void jnl_writer_fini(struct jnl_writer *w)
{
	pthread_mutex_destroy(&w->lock);
	free(w->busy);
	free(w->freed.v);
	free(w->held.v);
	memset(w, 0, sizeof(*w));
	w->fd = -1;
}

/* --- writing: records ---------------------------------------------------------------- */

/* Set the CRC of record rec (n bytes, header first) for a journal of
 * generation gen. */
static void rec_seal(uint8_t *rec, size_t n, uint64_t gen)
{
	uint32_t crc = jnl_crc32c((uint32_t)gen, rec + 4, n - 4);

	memcpy(rec, &crc, sizeof(crc));
}

/* Under the lock: the record (seq set) at the end of the current journal,
 * and of the new one in dual mode. 0 or -errno: then the current journal
 * is as it was (the bytes written are overwritten by the next record). */
static int put_record(struct jnl_writer *w, uint8_t *rec, size_t n)
{
	int r;

	if (w->pos + n > JNL_AREA)
		return -ENOSPC;
	rec_seal(rec, n, w->gen);
	if ((r = write_all(w->fd, rec, n, JNL_JOURNAL_OFF(w->cur) + w->pos)) < 0)
		return r;
	w->pos += n;
	if (w->dual && !w->dual_err) {
		rec_seal(rec, n, w->gen + 1);
		r = w->dual_pos + n > JNL_AREA
			    ? -ENOSPC
			    : write_all(w->fd, rec, n, JNL_JOURNAL_OFF(1 - w->cur) + w->dual_pos);
		if (r < 0)
			w->dual_err = r;
		else
			w->dual_pos += n;
	}
	return 0;
}

int jnl_append(struct jnl_writer *w, enum jnl_type type, const void *payload, size_t len,
	       uint64_t *seq_out)
{
	uint8_t rec[JNL_REC_MAX];
	struct jnl_rec_hdr h = { .type = (uint16_t)type, .len = (uint16_t)len };
	union jnl_payload p;
	int r;

	if (!jnl_payload_len(type) || len != jnl_payload_len(type))
		return -EINVAL;
	memcpy(&p, payload, len);
	if (!rec_ok(type, &p))
		return -EINVAL;
	memcpy(rec + sizeof(h), payload, len);
	pthread_mutex_lock(&w->lock);
	h.seq = w->seq + 1;
	memcpy(rec, &h, sizeof(h));
	r = h.seq > JNL_SEQ_MAX ? -EOVERFLOW : put_record(w, rec, sizeof(h) + len);
	if (r == 0) {
		w->seq = h.seq;
		if (seq_out)
			*seq_out = h.seq;
	}
	pthread_mutex_unlock(&w->lock);
	return r;
}

uint64_t jnl_last_seq(struct jnl_writer *w)
{
	pthread_mutex_lock(&w->lock);
	uint64_t s = w->seq;
	pthread_mutex_unlock(&w->lock);
	return s;
}

uint64_t jnl_journal_bytes(struct jnl_writer *w)
{
	pthread_mutex_lock(&w->lock);
	uint64_t n = w->pos;
	pthread_mutex_unlock(&w->lock);
	return n;
}

/* --- writing: compaction --------------------------------------------------------- */

int jnl_compact_begin(struct jnl_writer *w, uint64_t *q)
{
	static const struct jnl_slot zero;
	int r = -EBUSY;

	pthread_mutex_lock(&w->lock);
	if (w->seq >= JNL_SEQ_MAX || w->gen >= JNL_SEQ_MAX)
		r = -EOVERFLOW;
	/* The slot to write must be one no reader takes before it is whole. */
	else if (!w->compacting && (r = write_desc(w, 1 - w->cur, &zero)) == 0) {
		w->compacting = w->dual = 1;
		w->dual_err = 0;
		w->dual_pos = 0;
		*q = w->q = w->seq + 1;
		/* Pages freed until now are reusable once this compaction
		 * commits: its image and journal come after their frees. */
		struct jnl_u32s t = w->held;
		w->held = w->freed;
		w->freed = t;
	}
	pthread_mutex_unlock(&w->lock);
	return r;
}

/* Whether image can be committed as the slot whose journal starts at q:
 * well formed and resolved, as a reader will check it. */
static int image_valid(const void *image, size_t len, uint64_t q)
{
	struct jnl_info info = { 0 };
	struct replay r = { .info = &info, .q = q };
	struct image im;

	if ((uintptr_t)image % 8 || len < sizeof(struct jnl_image_hdr) || len > JNL_IMAGE_MAX ||
	    len % 8)
		return -EINVAL;
	enum jnl_err e = image_check(&r, &im, image, len);
	obj_free(&r.objs);
	return e == JNL_OK ? 0 : e == JNL_ENOMEM ? -ENOMEM : -EINVAL;
}

/* Under the lock, the image written: the commit point, then the old slot
 * zeroed. 0 or -errno; *release gets the pages now reusable. */
static int switch_slot(struct jnl_writer *w, const struct jnl_slot *d, struct jnl_u32s *release)
{
	static const struct jnl_slot zero;
	int t = 1 - w->cur, r;

	if ((r = w->dual_err) < 0 || (r = write_desc(w, t, d)) < 0)
		return r;
	int old = w->cur;
	w->cur = t;
	w->gen = d->gen;
	w->pos = w->dual_pos;
	w->dual = 0;
	/* If the old slot cannot be zeroed, a reader could still take it
	 * (were this one to fail): its pages wait for the next commit. */
	if (write_desc(w, old, &zero) < 0)
		pages_requeue(w);
	*release = w->held;
	memset(&w->held, 0, sizeof(w->held));
	return 0;
}

/* The end of a compaction: the slot nobody reads punched, released pages
 * punched and made reusable. */
static void compact_end(struct jnl_writer *w, int unused_slot, struct jnl_u32s *release)
{
	punch_slot(w, unused_slot);
	punch_pages(w, release);
	pthread_mutex_lock(&w->lock);
	pages_release(w, release);
	w->compacting = 0;
	pthread_mutex_unlock(&w->lock);
	free(release->v);
}

int jnl_compact_commit(struct jnl_writer *w, const void *image, size_t len)
{
	struct jnl_u32s release = { 0 };
	struct jnl_slot d;

	pthread_mutex_lock(&w->lock);
	int t = 1 - w->cur, ok = w->compacting && w->dual;
	uint64_t q = w->q, gen = w->gen + 1;
	pthread_mutex_unlock(&w->lock);
	if (!ok)
		return -EINVAL;
	int r = image_valid(image, len, q);
	if (r == 0)
		r = slot_write_image(w, t, image, len, &d, gen, q);
	pthread_mutex_lock(&w->lock);
	if (r == 0)
		r = switch_slot(w, &d, &release);
	if (r < 0) {
		w->dual = 0;
		pages_requeue(w);
	}
	pthread_mutex_unlock(&w->lock);
	compact_end(w, r == 0 ? 1 - t : t, &release);
	return r;
}

void jnl_compact_abort(struct jnl_writer *w)
{
	struct jnl_u32s none = { 0 };

	pthread_mutex_lock(&w->lock);
	int running = w->compacting, t = 1 - w->cur;
	w->dual = 0;
	if (running)
		pages_requeue(w);
	pthread_mutex_unlock(&w->lock);
	if (running)
		compact_end(w, t, &none);
}
