/* Writes the seed corpus of fuzz_journal:
 *     mkcorpus_journal DIR      (writes DIR/fuzz_journal/)
 * Each seed is a state file the writer made (fresh, with every record
 * type, compacted with shared range-tree nodes, in the middle of a
 * compaction, just after a commit with the previous slot still whole,
 * with a torn record), as the parts fuzz_journal.h names. Deterministic. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_journal.h"
#include "journal.h"

#define PG ((uint64_t)JNL_PAGE)
#define BASE 0x10000000ull

static void die(const char *what)
{
	fprintf(stderr, "mkcorpus_journal: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void ok(int r, const char *what)
{
	if (r < 0) {
		errno = -r;
		die(what);
	}
}

/* The parts of a state file, as fuzz_journal takes them. */
struct parts {
	uint8_t *r[FJ_NREGIONS];
	size_t len[FJ_NREGIONS];
};

static uint8_t *read_at(int fd, uint64_t off, size_t n)
{
	uint8_t *p = calloc(1, n ? n : 1);

	if (!p || pread(fd, p, n, (off_t)off) < 0)
		die("read");
	return p;
}

/* The bytes of journal i up to its last whole record, and `extra` more. */
static size_t journal_len(int fd, int i, size_t extra)
{
	uint64_t off = JNL_JOURNAL_OFF(i), at = 0;
	struct jnl_rec_hdr h;

	while (pread(fd, &h, sizeof(h), (off_t)(off + at)) == (ssize_t)sizeof(h) &&
	       jnl_payload_len(h.type) && h.len == jnl_payload_len(h.type))
		at += sizeof(h) + h.len;
	return (size_t)at + extra;
}

static void take(struct parts *p, int fd, unsigned npages, size_t extra)
{
	struct jnl_file_hdr h;

	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		die("header");
	p->len[FJ_HDR] = sizeof(h);
	p->len[FJ_TMPL] = npages * JNL_PAGE;
	for (int i = 0; i < 2; i++) {
		p->len[FJ_IMAGE0 + 2 * i] = h.slot[i].gen ? (size_t)h.slot[i].image_len : 0;
		p->len[FJ_JOURNAL0 + 2 * i] = journal_len(fd, i, extra);
	}
	for (int i = 0; i < FJ_NREGIONS; i++)
		p->r[i] = read_at(fd, fj_region_off[i], p->len[i]);
}

static void parts_free(struct parts *p)
{
	for (int i = 0; i < FJ_NREGIONS; i++)
		free(p->r[i]);
	memset(p, 0, sizeof(*p));
}

static void save(const char *dir, const char *name, const struct parts *p, uint8_t flags,
		 uint8_t cb)
{
	char path[512];
	uint8_t hdr[FJ_HDR_BYTES] = { flags, cb };

	for (int i = 0; i < FJ_NREGIONS; i++) {
		hdr[2 + 2 * i] = (uint8_t)p->len[i];
		hdr[3 + 2 * i] = (uint8_t)(p->len[i] >> 8);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(hdr, 1, sizeof(hdr), f) != sizeof(hdr))
		die(path);
	for (int i = 0; i < FJ_NREGIONS; i++)
		if (p->len[i] && fwrite(p->r[i], 1, p->len[i], f) != p->len[i])
			die(path);
	if (fclose(f) != 0)
		die(path);
}

/* --- states ------------------------------------------------------------------------ */

static void rec(struct jnl_writer *w, enum jnl_type type, const void *p)
{
	ok(jnl_append(w, type, p, jnl_payload_len(type), NULL), "append");
}

static struct jnl_tmpl tmpl_new(struct jnl_writer *w, uint32_t id)
{
	uint8_t page[JNL_PAGE];
	struct jnl_tmpl t = { .id = id, .uid = 1000 };
	long idx = jnl_page_alloc(w);

	ok((int)idx, "page");
	memset(page, (int)id, sizeof(page));
	t.page = (uint32_t)idx;
	ok(jnl_page_write(w, t.page, page, &t.crc), "page");
	rec(w, JNL_TMPL_NEW, &t);
	return t;
}

/* Every record type, on templates 1 and 2 (in t), sessions 1 and 2, mms
 * 1-3. */
static void records(struct jnl_writer *w, struct jnl_tmpl *t)
{
	t[0] = tmpl_new(w, 1);
	t[1] = tmpl_new(w, 2);
	rec(w, JNL_SESSION_NEW,
	    &(struct jnl_session_new){ .id = 1, .pid = 10, .uid = 1000, .gid = 100 });
	rec(w, JNL_SESSION_NEW,
	    &(struct jnl_session_new){ .id = 2, .pid = 20, .uid = 1000, .gid = 100 });
	rec(w, JNL_MM_NEW,
	    &(struct jnl_mm_new){ .id = 1, .pid = 10, .uid = 1000, .tree = 1, .features = 0x3f });
	rec(w, JNL_SESSION_MM, &(struct jnl_session_mm){ .session = 1, .mm = 1 });
	rec(w, JNL_REPLY,
	    &(struct jnl_reply){ .session = 1, .req_seq = 1, .id = 3, .value = 0x3f });
	rec(w, JNL_HANDLE,
	    &(struct jnl_handle_set){ .session = 1, .index = 0, .tmpl = 1, .uses = 1 });
	rec(w, JNL_HANDLE,
	    &(struct jnl_handle_set){ .session = 1, .index = 1, .tmpl = 2, .uses = 2 });
	rec(w, JNL_MAP,
	    &(struct jnl_map){ .mm = 1,
			       .tmpl = 1,
			       .session = 1,
			       .req_seq = 2,
			       .start = BASE,
			       .end = BASE + 4 * PG });
	rec(w, JNL_MAP,
	    &(struct jnl_map){ .mm = 1, .tmpl = 2, .start = BASE + 8 * PG, .end = BASE + 9 * PG });
	rec(w, JNL_MM_NEW,
	    &(struct jnl_mm_new){ .id = 2,
				  .parent = 1,
				  .pid = 11,
				  .uid = 1000,
				  .tree = 1,
				  .flags = JNL_MM_CHILD,
				  .features = 0x3f });
	rec(w, JNL_COPY,
	    &(struct jnl_copy){ .mm = 2, .from = BASE, .to = BASE + 16 * PG, .len = 2 * PG });
	rec(w, JNL_UNMAP, &(struct jnl_unmap){ .mm = 2, .start = BASE, .end = BASE + PG });
	rec(w, JNL_MM_PID, &(struct jnl_mm_pid){ .id = 2, .pid = 12 });
	rec(w, JNL_UNMAP,
	    &(struct jnl_unmap){ .mm = 1,
				 .session = 1,
				 .req_seq = 3,
				 .start = BASE + 8 * PG,
				 .end = BASE + 9 * PG });
	rec(w, JNL_MM_NEW, &(struct jnl_mm_new){ .id = 3, .pid = 30, .uid = 1000, .tree = 2 });
	rec(w, JNL_MM_END, &(struct jnl_ended){ .id = 3 });
	rec(w, JNL_SESSION_END, &(struct jnl_ended){ .id = 2 });
	struct jnl_tmpl gone = tmpl_new(w, 3);
	rec(w, JNL_TMPL_FREE, &(struct jnl_ended){ .id = gone.id });
	ok(jnl_page_free(w, gone.page), "page");
}

/* The state records() leaves, as an image whose two trees share nodes. */
static void commit_image(struct jnl_writer *w, const struct jnl_tmpl *t)
{
	struct jnl_image_builder b;
	const void *image;
	size_t len;
	uint64_t seq = jnl_last_seq(w);

	jnl_image_init(&b);
	jnl_image_add_tmpl(&b, &t[0]);
	jnl_image_add_tmpl(&b, &t[1]);
	uint32_t a = jnl_image_add_node(
		&b, &(struct jnl_node){ .start = BASE + PG, .end = BASE + 2 * PG, .tmpl = 1 });
	uint32_t c = jnl_image_add_node(
		&b,
		&(struct jnl_node){ .start = BASE + 16 * PG, .end = BASE + 18 * PG, .tmpl = 1 });
	uint32_t r1 = jnl_image_add_node(
		&b, &(struct jnl_node){ .start = BASE, .end = BASE + PG, .tmpl = 1, .right = a });
	uint32_t r2 = jnl_image_add_node(&b, &(struct jnl_node){ .start = BASE + 2 * PG,
								 .end = BASE + 4 * PG,
								 .tmpl = 1,
								 .left = a,
								 .right = c });
	jnl_image_add_mm(&b, &(struct jnl_mm){ .id = 1,
					       .pid = 10,
					       .uid = 1000,
					       .tree = 1,
					       .features = 0x3f,
					       .root = r1,
					       .seq = seq });
	jnl_image_add_mm(&b, &(struct jnl_mm){ .id = 2,
					       .pid = 12,
					       .uid = 1000,
					       .tree = 1,
					       .features = 0x3f,
					       .flags = JNL_MM_CHILD,
					       .root = r2,
					       .seq = seq });
	struct jnl_handle h[2] = { { 1, 1 }, { 2, 2 } };
	jnl_image_add_session(&b,
			      &(struct jnl_session){ .id = 1,
						     .pid = 10,
						     .uid = 1000,
						     .gid = 100,
						     .mm = 1,
						     .nhandles = 2,
						     .last_seq = 3,
						     .flags = JNL_SESSION_REPLIED },
			      h);
	jnl_image_add_session(
		&b, &(struct jnl_session){ .id = 3, .pid = 40, .uid = 1000, .gid = 100 }, NULL);
	ok(jnl_image_finish(&b, seq, &(struct jnl_ids){ 4, 4, 5, 3 }, &image, &len), "image");
	ok(jnl_compact_commit(w, image, len), "commit");
	jnl_image_free(&b);
}

static int fresh(struct jnl_writer *w)
{
	int fd = memfd_create("mkcorpus-journal", MFD_CLOEXEC);

	if (fd < 0)
		die("memfd_create");
	ok(jnl_writer_init(w, fd, JNL_VERSION), "init");
	return fd;
}

/* Fresh, then with every record type (also read with rejections, with a
 * stop, without fix-ups), then with a torn record after them. */
static void seeds_records(const char *dir, struct jnl_writer *w, int fd, struct jnl_tmpl *t)
{
	struct parts p = { 0 };

	take(&p, fd, 0, 0);
	save(dir, "fresh", &p, FJ_FIX_ALL, FJ_CB_NONE);
	parts_free(&p);
	records(w, t);
	take(&p, fd, 0, 0);
	save(dir, "records", &p, FJ_FIX_ALL, FJ_CB_NONE);
	save(dir, "records-reject", &p, FJ_FIX_ALL, 0x03);
	save(dir, "records-stop", &p, FJ_FIX_ALL, 0x20 | FJ_CB_NONE);
	save(dir, "records-nofix", &p, 0, FJ_CB_NONE);
	parts_free(&p);
	rec(w, JNL_MM_PID, &(struct jnl_mm_pid){ .id = 1, .pid = 13 });
	take(&p, fd, 0, 20);
	save(dir, "torn", &p, FJ_FIX_ALL, FJ_CB_NONE);
	parts_free(&p);
}

/* The state of p just after its commit, with the previous slot (from
 * before) still whole: a crash before the commit zeroes it. */
static void both_slots(struct parts *p, struct parts *before)
{
	const struct jnl_file_hdr *h = (const void *)p->r[FJ_HDR];
	int old = h->slot[0].gen ? 1 : 0; /* the one the commit zeroed */
	size_t desc = offsetof(struct jnl_file_hdr, slot) + (size_t)old * sizeof(struct jnl_slot);

	memcpy(p->r[FJ_HDR] + desc, before->r[FJ_HDR] + desc, sizeof(struct jnl_slot));
	for (int k = FJ_IMAGE0 + 2 * old; k <= FJ_JOURNAL0 + 2 * old; k++) {
		free(p->r[k]);
		p->r[k] = before->r[k];
		p->len[k] = before->len[k];
		before->r[k] = NULL;
	}
}

/* A compaction under way (records in both journals), committed, and
 * just committed. */
static void seeds_compaction(const char *dir, struct jnl_writer *w, int fd,
			     const struct jnl_tmpl *t)
{
	struct parts p = { 0 }, before = { 0 };
	uint64_t q;

	ok(jnl_compact_begin(w, &q), "begin");
	rec(w, JNL_MM_PID, &(struct jnl_mm_pid){ .id = 2, .pid = 14 });
	/* Before the captures: a fork child born and gone, a session the
	 * image has. */
	rec(w, JNL_MM_NEW,
	    &(struct jnl_mm_new){ .id = 4,
				  .parent = 1,
				  .pid = 41,
				  .uid = 1000,
				  .tree = 1,
				  .flags = JNL_MM_CHILD });
	rec(w, JNL_MM_END, &(struct jnl_ended){ .id = 4 });
	rec(w, JNL_SESSION_NEW,
	    &(struct jnl_session_new){ .id = 3, .pid = 40, .uid = 1000, .gid = 100 });
	take(&before, fd, 0, 0);
	save(dir, "compacting", &before, FJ_FIX_ALL, FJ_CB_NONE);
	commit_image(w, t);
	rec(w, JNL_MM_PID, &(struct jnl_mm_pid){ .id = 1, .pid = 15 });
	rec(w, JNL_MAP,
	    &(struct jnl_map){
		    .mm = 2, .tmpl = 2, .start = BASE + 30 * PG, .end = BASE + 31 * PG });
	take(&p, fd, 0, 0);
	save(dir, "compacted", &p, FJ_FIX_ALL, FJ_CB_NONE);
	save(dir, "compacted-reject", &p, FJ_FIX_ALL, 0x01 | 0x08);
	both_slots(&p, &before);
	save(dir, "both-slots", &p, FJ_FIX_ALL, FJ_CB_NONE);
	parts_free(&p);
	parts_free(&before);
}

int main(int argc, char **argv)
{
	char sub[512];

	if (argc != 2) {
		fprintf(stderr, "usage: mkcorpus_journal DIR\n");
		return 2;
	}
	snprintf(sub, sizeof(sub), "%s/fuzz_journal", argv[1]);
	if (mkdir(sub, 0755) < 0 && errno != EEXIST)
		die(sub);
	struct jnl_writer w;
	struct jnl_tmpl t[2];
	int fd = fresh(&w);
	seeds_records(sub, &w, fd, t);
	seeds_compaction(sub, &w, fd, t);
	jnl_writer_fini(&w);
	close(fd);
	return 0;
}
