/* The state snapshot format: see snapshot.h. */
#include "snapshot.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const err_str[SNAP_ERR_COUNT] = {
	[SNAP_OK] = "ok",
	[SNAP_EIO] = "read error",
	[SNAP_ETRUNC] = "truncated",
	[SNAP_EMAGIC] = "not a refpaged snapshot",
	[SNAP_EVERSION] = "unknown format version",
	[SNAP_ECRC] = "checksum mismatch",
	[SNAP_EFORMAT] = "malformed contents",
	[SNAP_EEMPTY] = "never written",
	[SNAP_ENOMEM] = "out of memory",
};

const char *snap_err_str(enum snap_err e)
{
	return (unsigned)e < SNAP_ERR_COUNT ? err_str[e] : "?";
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

uint32_t snap_crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&crc_once, crc_init);
	crc = ~crc;
#if defined(__x86_64__)
	if (crc_hw_ok)
		return ~crc_hw(crc, p, n);
#endif
	return ~crc_soft(crc, p, n);
}

/* --- decoding --------------------------------------------------------------- */

struct cursor {
	const uint8_t *p;
	size_t left;
};

/* n records of size bytes, or NULL when the body is shorter. */
static const void *take(struct cursor *c, uint64_t n, size_t size)
{
	if (n > c->left / size)
		return NULL;
	const void *r = c->p;
	c->p += n * size;
	c->left -= n * size;
	return r;
}

static int decode_sessions(struct snap_image *img, struct cursor *c)
{
	uint32_t n = img->hdr->nsessions, ntmpls = img->hdr->ntmpls;

	/* Bound the allocation by what the body can hold. */
	if (n > c->left / sizeof(struct snap_session))
		return -1;
	img->sessions = calloc(n ? n : 1, sizeof(*img->sessions));
	if (!img->sessions)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		const struct snap_session *s = take(c, 1, sizeof(*s));
		if (!s || (s->flags & ~SNAP_SESSION_REPLIED))
			return -1;
		const struct snap_handle *h = take(c, s->nhandles, sizeof(*h));
		if (!h)
			return -1;
		for (uint32_t k = 0; k < s->nhandles; k++)
			if (h[k].tmpl != SNAP_NO_TMPL && h[k].tmpl >= ntmpls)
				return -1;
		img->sessions[i] = (struct snap_sview){ s, h };
	}
	return 0;
}

static int decode_mms(struct snap_image *img, struct cursor *c)
{
	uint32_t n = img->hdr->nmms, ntmpls = img->hdr->ntmpls;

	if (n > c->left / sizeof(struct snap_mm))
		return -1;
	img->mms = calloc(n ? n : 1, sizeof(*img->mms));
	if (!img->mms)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		const struct snap_mm *m = take(c, 1, sizeof(*m));
		if (!m || (m->flags & ~SNAP_MM_CHILD))
			return -1;
		const struct snap_range *r = take(c, m->nranges, sizeof(*r));
		if (!r)
			return -1;
		for (uint32_t k = 0; k < m->nranges; k++)
			if (r[k].tmpl >= ntmpls)
				return -1;
		img->mms[i] = (struct snap_mview){ m, r };
	}
	return 0;
}

/* Framing and references only: what a record means (an unaligned range, a
 * session naming an mm that is not there) is for the restore to judge,
 * record by record. */
enum snap_err snap_decode(struct snap_image *img, uint8_t *body, size_t len)
{
	struct cursor c = { body, len };
	const struct snap_body *h = take(&c, 1, sizeof(*h));

	img->sessions = NULL;
	img->mms = NULL;
	if (!h || h->magic != SNAP_BODY_MAGIC || h->reserved || h->nstats > SNAP_MAX_STATS)
		return SNAP_EFORMAT;
	img->hdr = h;
	img->stats = take(&c, h->nstats, sizeof(uint64_t));
	img->tmpls = take(&c, h->ntmpls, sizeof(struct snap_tmpl));
	if (!img->stats || !img->tmpls)
		return SNAP_EFORMAT;
	for (uint32_t i = 0; i < h->ntmpls; i++)
		if (img->tmpls[i].page >= SNAP_MAX_PAGES)
			return SNAP_EFORMAT;
	if (decode_sessions(img, &c) < 0 || decode_mms(img, &c) < 0)
		goto bad;
	img->uids = take(&c, h->nuids, sizeof(struct snap_uid));
	if (!img->uids || c.left)
		goto bad;
	img->body = body;
	img->len = len;
	return SNAP_OK;
bad:
	free(img->sessions);
	free(img->mms);
	img->sessions = NULL;
	img->mms = NULL;
	return SNAP_EFORMAT;
}

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
	return (int)(got == n);
}

static enum snap_err slot_desc(const struct snap_slot *s)
{
	static const struct snap_slot never;

	if (!memcmp(s, &never, sizeof(never)))
		return SNAP_EEMPTY;
	return snap_crc32c(0, s, offsetof(struct snap_slot, crc)) == s->crc ? SNAP_OK : SNAP_ECRC;
}

static enum snap_err read_slot(int fd, const struct snap_slot *s, uint64_t fsize,
			       struct snap_image *img)
{
	if (!s->gen)
		return SNAP_EEMPTY;
	if (s->len < sizeof(struct snap_body) || s->len > SNAP_BODY_MAX || s->len % 8 ||
	    s->off < sizeof(struct snap_file_hdr))
		return SNAP_EFORMAT;
	if (s->off > fsize || s->len > fsize - s->off)
		return SNAP_ETRUNC;
	uint8_t *body = malloc(s->len);
	if (!body)
		return SNAP_ENOMEM;
	int r = read_all(fd, body, s->len, s->off);
	enum snap_err e = r < 0 ? SNAP_EIO : r == 0 ? SNAP_ETRUNC : SNAP_OK;
	if (e == SNAP_OK && snap_crc32c(0, body, s->len) != s->body_crc)
		e = SNAP_ECRC;
	if (e == SNAP_OK)
		e = snap_decode(img, body, s->len);
	if (e != SNAP_OK)
		free(body);
	return e;
}

static enum snap_err read_header(int fd, struct snap_file_hdr *h, uint64_t *fsize, uint32_t *version)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return SNAP_EIO;
	*fsize = (uint64_t)st.st_size;
	int r = read_all(fd, h, sizeof(*h), 0);
	if (r < 0)
		return SNAP_EIO;
	if (r == 0)
		return SNAP_ETRUNC;
	if (memcmp(h->magic, SNAP_MAGIC, sizeof(h->magic)))
		return SNAP_EMAGIC;
	/* The version comes before the checksum: a newer writer may have
	 * laid out the rest differently. */
	*version = h->version;
	if (h->version != SNAP_VERSION)
		return SNAP_EVERSION;
	if (snap_crc32c(0, h, offsetof(struct snap_file_hdr, crc)) != h->crc)
		return SNAP_ECRC;
	if (h->page_size != SNAP_PAGE || h->reserved || h->tmpl_off < sizeof(*h) ||
	    h->tmpl_off % SNAP_PAGE || h->counters_off < sizeof(*h) || h->counters_off % SNAP_PAGE)
		return SNAP_EFORMAT;
	return SNAP_OK;
}

enum snap_err snap_read(int fd, struct snap_image *img, uint32_t *version)
{
	struct snap_file_hdr h;
	uint64_t fsize;
	enum snap_err e;

	memset(img, 0, sizeof(*img));
	img->slot = -1;
	*version = 0;
	if ((e = read_header(fd, &h, &fsize, version)) != SNAP_OK)
		return e;
	img->version = h.version;
	img->tmpl_off = h.tmpl_off;
	img->counters_off = h.counters_off;
	/* Newest first; the older one only if the newest is not usable. */
	for (int i = 0; i < 2; i++)
		img->slot_err[i] = slot_desc(&h.slot[i]);
	int order[2] = { 0, 1 };
	if (img->slot_err[1] == SNAP_OK &&
	    (img->slot_err[0] != SNAP_OK || h.slot[1].gen > h.slot[0].gen)) {
		order[0] = 1;
		order[1] = 0;
	}
	for (int k = 0; k < 2; k++) {
		int i = order[k];
		if (img->slot_err[i] != SNAP_OK)
			continue;
		img->slot_err[i] = read_slot(fd, &h.slot[i], fsize, img);
		if (img->slot_err[i] == SNAP_OK) {
			img->slot = i;
			img->gen = h.slot[i].gen;
			return SNAP_OK;
		}
	}
	/* Report the more telling failure: a damaged slot over an empty one. */
	e = img->slot_err[order[0]];
	return e == SNAP_EEMPTY ? img->slot_err[order[1]] : e;
}

void snap_image_free(struct snap_image *img)
{
	free(img->sessions);
	free(img->mms);
	free(img->body);
	memset(img, 0, sizeof(*img));
	img->slot = -1;
}

enum snap_err snap_read_counters(int fd, const struct snap_image *img, struct snap_counters *c)
{
	int r = read_all(fd, c, sizeof(*c), img->counters_off);

	if (r <= 0)
		return r < 0 ? SNAP_EIO : SNAP_ETRUNC;
	return c->magic == SNAP_COUNTERS_MAGIC && c->count <= SNAP_MAX_STATS ? SNAP_OK : SNAP_EFORMAT;
}

enum snap_err snap_read_page(int fd, const struct snap_image *img, uint32_t t, void *page)
{
	const struct snap_tmpl *rec = &img->tmpls[t];
	int r = read_all(fd, page, SNAP_PAGE, img->tmpl_off + (uint64_t)rec->page * SNAP_PAGE);

	if (r <= 0)
		return r < 0 ? SNAP_EIO : SNAP_ETRUNC;
	return snap_crc32c(0, page, SNAP_PAGE) == rec->crc ? SNAP_OK : SNAP_ECRC;
}

/* --- writing ------------------------------------------------------------------ */

void *snap_buf_add(struct snap_buf *b, size_t n)
{
	if (b->oom || n > SNAP_BODY_MAX - b->len) {
		b->oom = 1;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	void *r = b->p + b->len;
	memset(r, 0, n);
	b->len += n;
	return r;
}

void snap_buf_free(struct snap_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

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

int snap_writer_init(struct snap_writer *w, int fd, uint32_t version)
{
	struct snap_file_hdr h = { .version = version, .page_size = SNAP_PAGE,
				   .tmpl_off = SNAP_TMPL_OFF, .counters_off = SNAP_COUNTERS_OFF };
	struct snap_counters c = { .magic = SNAP_COUNTERS_MAGIC };
	int r;

	memset(w, 0, sizeof(*w));
	w->fd = fd;
	w->version = version;
	w->last = -1;
	memcpy(h.magic, SNAP_MAGIC, sizeof(h.magic));
	h.crc = snap_crc32c(0, &h, offsetof(struct snap_file_hdr, crc));
	if (ftruncate(fd, 0) < 0)
		return -errno;
	if ((r = write_all(fd, &c, sizeof(c), SNAP_COUNTERS_OFF)) < 0)
		return r;
	return write_all(fd, &h, sizeof(h), 0);
}

static int bit_set(struct snap_writer *w, uint64_t **set, uint32_t idx)
{
	size_t word = idx / 64;

	if (word >= w->nwords) {
		size_t n = w->nwords ? w->nwords : 16;
		while (n <= word)
			n *= 2;
		uint64_t *a = realloc(w->pages_committed, n * sizeof(*a));
		if (!a)
			return -ENOMEM;
		w->pages_committed = a;
		uint64_t *b = realloc(w->pages_now, n * sizeof(*b));
		if (!b)
			return -ENOMEM;
		w->pages_now = b;
		memset(a + w->nwords, 0, (n - w->nwords) * sizeof(*a));
		memset(b + w->nwords, 0, (n - w->nwords) * sizeof(*b));
		w->nwords = n;
	}
	(*set)[word] |= 1ull << (idx % 64);
	return 0;
}

int snap_writer_resume(struct snap_writer *w, int fd, const struct snap_image *img)
{
	memset(w, 0, sizeof(*w));
	w->fd = fd;
	w->version = img->version;
	w->gen = img->gen;
	w->last = img->slot;
	/* The body read is the fallback until the next commit: its pages stay. */
	for (uint32_t i = 0; i < img->hdr->ntmpls; i++)
		if (bit_set(w, &w->pages_committed, img->tmpls[i].page) < 0)
			return -ENOMEM;
	return 0;
}

void snap_writer_fini(struct snap_writer *w)
{
	free(w->pages_committed);
	free(w->pages_now);
	memset(w, 0, sizeof(*w));
	w->fd = -1;
	w->last = -1;
}

long snap_page_alloc(struct snap_writer *w)
{
	for (size_t i = 0; i < w->nwords; i++) {
		uint64_t busy = w->pages_committed[i] | w->pages_now[i];
		if (busy != UINT64_MAX) {
			uint64_t idx = i * 64 + (uint64_t)__builtin_ctzll(~busy);
			if (idx >= SNAP_MAX_PAGES)
				return -ENOSPC;
			w->pages_now[i] |= 1ull << (idx % 64);
			return (long)idx;
		}
	}
	uint64_t idx = w->nwords * 64;
	if (idx >= SNAP_MAX_PAGES)
		return -ENOSPC;
	return bit_set(w, &w->pages_now, (uint32_t)idx) < 0 ? -ENOMEM : (long)idx;
}

int snap_page_keep(struct snap_writer *w, uint32_t idx)
{
	return bit_set(w, &w->pages_now, idx);
}

int snap_page_write(struct snap_writer *w, uint32_t idx, const void *page, uint32_t *crc)
{
	*crc = snap_crc32c(0, page, SNAP_PAGE);
	return write_all(w->fd, page, SNAP_PAGE, SNAP_TMPL_OFF + (uint64_t)idx * SNAP_PAGE);
}

int snap_commit(struct snap_writer *w, const void *body, size_t len)
{
	int slot = w->last == 0 ? 1 : 0;
	struct snap_slot d = {
		.gen = w->gen + 1, .off = SNAP_SLOT_OFF(slot), .len = len,
		.body_crc = snap_crc32c(0, body, len),
	};
	int r = len > SNAP_BODY_MAX ? -EFBIG : write_all(w->fd, body, len, d.off);

	/* The descriptor last, in one write: until it lands, the last
	 * committed slot is the valid one. */
	d.crc = snap_crc32c(0, &d, offsetof(struct snap_slot, crc));
	if (r == 0)
		r = write_all(w->fd, &d, sizeof(d), offsetof(struct snap_file_hdr, slot) + slot * sizeof(d));
	if (r == 0) {
		w->gen = d.gen;
		w->last = slot;
		uint64_t *t = w->pages_committed;
		w->pages_committed = w->pages_now;
		w->pages_now = t;
	}
	/* Built afresh for the next body, on success or not. */
	if (w->nwords)
		memset(w->pages_now, 0, w->nwords * sizeof(*w->pages_now));
	return r;
}
