/* libFuzzer target: jnl_read, the reader of the state file a previous
 * daemon left, on arbitrary file contents (fuzz_journal.h: the input names
 * the bytes of each part of the sparse file, with optional checksum
 * fix-ups), written into a memfd.
 *
 * Whatever it hands over must keep the promises of journal.h: nodes in
 * order with smaller children, aligned non-empty ranges and templates of
 * the image; roots among the nodes; handles naming templates of the
 * image; records in seq order, well formed, never at or below their mm's
 * capture seq, naming templates it handed over. The info must add up. A
 * file it reads must then be resumable: resuming changes nothing a reader
 * sees, a record appended is read back after it with the journal ending
 * cleanly, and a compaction to an empty image commits. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_journal.h"
#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_journal: %s:%d: %s\n", __FILE__, __LINE__, #c); \
			abort();                                                              \
		}                                                                             \
	} while (0)

/* --- the input ----------------------------------------------------------------- */

struct input {
	uint8_t flags, cb;
	uint8_t *r[FJ_NREGIONS];
	size_t len[FJ_NREGIONS];
};

static int parse(const uint8_t *data, size_t size, struct input *in)
{
	if (size < FJ_HDR_BYTES)
		return 0;
	in->flags = data[0];
	in->cb = data[1];
	size_t at = FJ_HDR_BYTES;
	for (int i = 0; i < FJ_NREGIONS; i++) {
		size_t n = (size_t)data[2 + 2 * i] | (size_t)data[3 + 2 * i] << 8;
		if (n > FJ_REGION_MAX)
			n = FJ_REGION_MAX;
		if (n > size - at)
			n = size - at;
		/* A copy of exactly its size: ASan sees any read past it. */
		in->r[i] = malloc(n ? n : 1);
		CHECK(in->r[i]);
		memcpy(in->r[i], data + at, n);
		in->len[i] = n;
		at += n;
	}
	return 1;
}

static void input_free(struct input *in)
{
	for (int i = 0; i < FJ_NREGIONS; i++)
		free(in->r[i]);
}

/* The descriptor of slot i in the header region, if it is all there. */
static struct jnl_slot *desc_at(struct input *in, int i)
{
	size_t off = offsetof(struct jnl_file_hdr, slot) + (size_t)i * sizeof(struct jnl_slot);

	return in->len[FJ_HDR] >= off + sizeof(struct jnl_slot) ? (void *)(in->r[FJ_HDR] + off)
								: NULL;
}

static void fix_records(struct input *in, int i, const struct jnl_slot *d)
{
	uint8_t *j = in->r[FJ_JOURNAL0 + 2 * i];
	size_t len = in->len[FJ_JOURNAL0 + 2 * i], o = 0;
	struct jnl_rec_hdr h;

	for (uint64_t k = 0; o + sizeof(h) <= len; k++) {
		memcpy(&h, j + o, sizeof(h));
		size_t plen = jnl_payload_len(h.type);
		if (!plen || h.len != plen || o + sizeof(h) + plen > len)
			break;
		if (in->flags & FJ_FIX_SEQS)
			h.seq = d->first_seq + k;
		memcpy(j + o, &h, sizeof(h));
		if (in->flags & FJ_FIX_RECORDS) {
			h.crc = jnl_crc32c((uint32_t)d->gen, j + o + 4, sizeof(h) - 4 + plen);
			memcpy(j + o, &h.crc, sizeof(h.crc));
		}
		o += sizeof(h) + plen;
	}
}

/* The CRC of the image as the file will have it: the region, then zeros. */
static uint32_t image_crc(const struct input *in, int i, uint64_t len)
{
	static const uint8_t zero[4096];
	size_t have = in->len[FJ_IMAGE0 + 2 * i] < len ? in->len[FJ_IMAGE0 + 2 * i] : (size_t)len;
	uint32_t crc = jnl_crc32c(0, in->r[FJ_IMAGE0 + 2 * i], have);

	for (uint64_t left = len - have; left;) {
		size_t n = left < sizeof(zero) ? (size_t)left : sizeof(zero);
		crc = jnl_crc32c(crc, zero, n);
		left -= n;
	}
	return crc;
}

/* Huge image lengths are cut down (a gibibyte of holes read per run would
 * only slow the fuzzer down), then the fix-ups the flags ask for. */
static void fix_up(struct input *in)
{
	for (int i = 0; i < 2; i++) {
		struct jnl_slot d, *p = desc_at(in, i);
		if (!p)
			continue;
		memcpy(&d, p, sizeof(d));
		if (d.image_len > (1u << 20))
			d.image_len &= (1u << 20) - 1;
		fix_records(in, i, &d);
		if (in->flags & FJ_FIX_SLOTS) {
			d.image_crc = image_crc(in, i, d.image_len);
			d.crc = jnl_crc32c(0, &d, offsetof(struct jnl_slot, crc));
		}
		memcpy(p, &d, sizeof(d));
	}
	if ((in->flags & FJ_FIX_HDR) && in->len[FJ_HDR] >= offsetof(struct jnl_file_hdr, slot)) {
		uint32_t crc = jnl_crc32c(0, in->r[FJ_HDR], offsetof(struct jnl_file_hdr, crc));
		memcpy(in->r[FJ_HDR] + offsetof(struct jnl_file_hdr, crc), &crc, sizeof(crc));
	}
}

static int write_file(const struct input *in)
{
	int fd = memfd_create("fuzz-journal", MFD_CLOEXEC);

	CHECK(fd >= 0);
	for (int i = 0; i < FJ_NREGIONS; i++)
		if (in->len[i])
			CHECK(pwrite(fd, in->r[i], in->len[i], (off_t)fj_region_off[i]) ==
			      (ssize_t)in->len[i]);
	return fd;
}

/* --- what the callbacks see ------------------------------------------------------- */

struct seen_mm {
	uint32_t id;
	uint64_t cap;
};

struct fz {
	int fd;
	uint8_t cb;
	unsigned calls;
	uint32_t *tmpls; /* handed over, image and journal */
	size_t nt, capt;
	uint32_t ntmpls_image, nnodes;
	struct seen_mm *mms; /* of the image */
	size_t nm, capm;
	uint64_t last_seq;
	unsigned last_type;
};

static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return p;
	*cap = *cap ? *cap * 2 : 64;
	p = realloc(p, *cap * size);
	CHECK(p);
	return p;
}

static int known_tmpl(const struct fz *z, uint32_t id, size_t upto)
{
	for (size_t i = 0; i < upto; i++)
		if (z->tmpls[i] == id)
			return 1;
	return 0;
}

/* The answer the input asks for about object id. */
static int answer(struct fz *z, uint32_t id)
{
	unsigned stop = z->cb >> 4;

	z->calls++;
	if (stop && z->calls > stop * 8)
		return -EINTR;
	return (z->cb & 7) != 7 && id % 7 == (z->cb & 7u) ? JNL_REJECT : 0;
}

static int on_tmpl(void *ctx, const struct jnl_tmpl *t)
{
	struct fz *z = ctx;
	uint8_t page[JNL_PAGE];

	CHECK(t->id && t->page < JNL_MAX_PAGES);
	CHECK(!known_tmpl(z, t->id, z->nt));
	jnl_read_page(z->fd, t->page, t->crc, page);
	z->tmpls = grow(z->tmpls, &z->capt, z->nt, sizeof(*z->tmpls));
	z->tmpls[z->nt++] = t->id;
	z->ntmpls_image = (uint32_t)z->nt;
	return answer(z, t->id);
}

static int on_node(void *ctx, uint32_t index, const struct jnl_node *n)
{
	struct fz *z = ctx;

	CHECK(index == ++z->nnodes);
	CHECK(n->left < index && n->right < index);
	CHECK(n->start % JNL_PAGE == 0 && n->end % JNL_PAGE == 0 && n->start < n->end);
	CHECK(n->tmpl && known_tmpl(z, n->tmpl, z->ntmpls_image));
	if ((z->cb & 8) && index % 16 == 0)
		return JNL_REJECT;
	return answer(z, 0) < 0 ? -EINTR : 0;
}

static int on_mm(void *ctx, const struct jnl_mm *m)
{
	struct fz *z = ctx;

	CHECK(m->id && m->tree && m->root <= z->nnodes && !(m->flags & ~JNL_MM_CHILD));
	for (size_t i = 0; i < z->nm; i++)
		CHECK(z->mms[i].id != m->id);
	z->mms = grow(z->mms, &z->capm, z->nm, sizeof(*z->mms));
	z->mms[z->nm++] = (struct seen_mm){ m->id, m->seq };
	return answer(z, m->id);
}

static int on_session(void *ctx, const struct jnl_session *s, const struct jnl_handle *h)
{
	struct fz *z = ctx;

	CHECK(s->id && s->nhandles <= JNL_MAX_HANDLES && !(s->flags & ~JNL_SESSION_REPLIED));
	for (uint32_t k = 0; k < s->nhandles; k++)
		CHECK(h[k].tmpl ? known_tmpl(z, h[k].tmpl, z->ntmpls_image) : h[k].uses == 0);
	return answer(z, s->id);
}

/* The mm a record targets, 0: none. */
static uint32_t rec_mm(enum jnl_type type, const union jnl_payload *p)
{
	switch (type) {
	case JNL_MM_NEW:
		return p->mm_new.id;
	case JNL_MM_END:
		return p->end.id;
	case JNL_MM_PID:
		return p->mm_pid.id;
	case JNL_MAP:
		return p->map.mm;
	case JNL_UNMAP:
		return p->unmap.mm;
	case JNL_COPY:
		return p->copy.mm;
	default:
		return 0;
	}
}

static void check_payload(struct fz *z, enum jnl_type type, const union jnl_payload *p)
{
	if (type == JNL_MAP) {
		CHECK(p->map.start % JNL_PAGE == 0 && p->map.end % JNL_PAGE == 0 &&
		      p->map.start < p->map.end);
		CHECK(known_tmpl(z, p->map.tmpl, z->nt));
	} else if (type == JNL_UNMAP) {
		CHECK(p->unmap.start < p->unmap.end && !p->unmap.reserved);
	} else if (type == JNL_COPY) {
		CHECK(p->copy.len && p->copy.from + p->copy.len > p->copy.from &&
		      !p->copy.reserved);
	} else if (type == JNL_HANDLE) {
		CHECK(p->handle.index < JNL_MAX_HANDLES);
		CHECK(p->handle.tmpl ? known_tmpl(z, p->handle.tmpl, z->nt) : !p->handle.uses);
	} else if (type == JNL_MM_NEW) {
		CHECK(!(p->mm_new.flags & JNL_MM_CHILD) == !p->mm_new.parent);
	}
}

static int on_record(void *ctx, uint64_t seq, enum jnl_type type, const union jnl_payload *p)
{
	struct fz *z = ctx;
	uint32_t mm = rec_mm(type, p);

	CHECK(jnl_payload_len(type) != 0);
	/* The same seq twice only for the reply part of a MAP or UNMAP. */
	CHECK(seq > z->last_seq || (seq == z->last_seq && type == JNL_REPLY &&
				    (z->last_type == JNL_MAP || z->last_type == JNL_UNMAP)));
	z->last_seq = seq;
	z->last_type = type;
	check_payload(z, type, p);
	for (size_t i = 0; mm && i < z->nm; i++)
		if (z->mms[i].id == mm)
			CHECK(seq > z->mms[i].cap);
	if (type == JNL_TMPL_NEW) {
		CHECK(!known_tmpl(z, p->tmpl_new.id, z->nt));
		z->tmpls = grow(z->tmpls, &z->capt, z->nt, sizeof(*z->tmpls));
		z->tmpls[z->nt++] = p->tmpl_new.id;
	}
	return answer(z, mm ? mm : p->end.id);
}

static const struct jnl_callbacks fz_cbs = { on_tmpl, on_node, on_mm, on_session, on_record };

static enum jnl_err read_checked(int fd, uint8_t cb, struct jnl_info *info)
{
	struct fz z = { .fd = fd, .cb = cb };
	enum jnl_err e = jnl_read(fd, &fz_cbs, &z, info);

	CHECK((unsigned)e < JNL_ERR_COUNT);
	CHECK(e != JNL_EABORT || (info->abort < 0 && (cb >> 4)));
	if (e == JNL_OK) {
		CHECK(info->slot == 0 || info->slot == 1);
		CHECK(info->slot_err[info->slot] == JNL_OK && info->gen);
		CHECK(info->first_seq && info->next_seq - info->first_seq == info->records);
		CHECK(info->main_seq >= info->first_seq - 1);
		CHECK(info->tail >= JNL_JOURNAL_OFF(info->slot) &&
		      info->tail <= JNL_JOURNAL_OFF(info->slot) + JNL_AREA);
		CHECK(info->end < JNL_END_COUNT);
		CHECK(info->npages_live + info->npages_dead <= z.nt);
		CHECK(info->next.tmpl && info->next.session && info->next.mm && info->next.tree);
	}
	free(z.tmpls);
	free(z.mms);
	return e;
}

/* --- going on with a file that reads ------------------------------------------------ */

static void resume_checked(int fd, uint8_t cb, const struct jnl_info *first)
{
	struct jnl_writer w;
	struct jnl_info again;
	uint64_t q;

	CHECK(jnl_writer_resume(&w, fd, first) == 0);
	CHECK(read_checked(fd, cb, &again) == JNL_OK);
	CHECK(again.slot == first->slot && again.next_seq == first->next_seq &&
	      again.records == first->records && again.delivered == first->delivered);
	jnl_info_free(&again);
	/* Seqs or generations at their end: the writer refuses to go on. */
	if (first->next_seq >= JNL_SEQ_MAX || first->gen >= JNL_SEQ_MAX) {
		jnl_writer_fini(&w);
		return;
	}
	/* One callback more than the first read made: no stopping now. */
	cb &= 0x0f;
	struct jnl_ended e = { .id = 1 };
	CHECK(jnl_append(&w, JNL_MM_END, &e, sizeof(e), NULL) == 0);
	CHECK(read_checked(fd, cb, &again) == JNL_OK);
	CHECK(again.records == first->records + 1 && again.end == JNL_END_CLEAN);
	jnl_info_free(&again);

	struct jnl_image_builder b;
	const void *image;
	size_t len;
	jnl_image_init(&b);
	CHECK(jnl_compact_begin(&w, &q) == 0);
	CHECK(jnl_image_finish(&b, q - 1, &first->next, &image, &len) == 0);
	CHECK(jnl_compact_commit(&w, image, len) == 0);
	jnl_image_free(&b);
	CHECK(read_checked(fd, cb, &again) == JNL_OK);
	CHECK(again.slot == 1 - first->slot && again.records == 0 && again.first_seq == q);
	jnl_info_free(&again);
	jnl_writer_fini(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in;
	struct jnl_info info;

	if (!parse(data, size, &in))
		return 0;
	fix_up(&in);
	int fd = write_file(&in);
	enum jnl_err e = read_checked(fd, in.cb, &info);
	if (e == JNL_OK)
		resume_checked(fd, in.cb, &info);
	jnl_info_free(&info);
	close(fd);
	input_free(&in);
	return 0;
}
