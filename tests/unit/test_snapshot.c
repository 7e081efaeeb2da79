/* Unit tests for the state snapshot format (daemon/snapshot.c): round
 * trips through a memfd, the choice between the two slots, and every kind
 * of damage a reader must survive: truncation anywhere, wrong checksums,
 * an unknown version, malformed bodies, random corruption. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "snapshot.h"

#define NTMPLS 3

/* A state with a bit of everything: 3 templates, 2 sessions (one before
 * HELLO), 2 address spaces (a client and its fork child), 1 uid. */
struct fixture {
	int fd;
	struct snap_writer w;
	uint8_t pages[NTMPLS][SNAP_PAGE];
	uint32_t page_idx[NTMPLS], crc[NTMPLS];
};

static int new_memfd(void)
{
	int fd = memfd_create("test-snapshot", MFD_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

static void *add(struct snap_buf *b, size_t n)
{
	void *p = snap_buf_add(b, n);

	assert_non_null(p);
	return p;
}

/* Builds the fixture's body, stamped with tag (in a counter and a pid, so
 * that two bodies differ). */
static void build_body(struct fixture *f, struct snap_buf *b, uint32_t tag)
{
	memset(b, 0, sizeof(*b));
	struct snap_body *h = add(b, sizeof(*h));
	*h = (struct snap_body){ .magic = SNAP_BODY_MAGIC, .nstats = 4, .ntmpls = NTMPLS, .nsessions = 2,
				 .nmms = 2, .nuids = 1, .next_session = 3, .next_mm = 3, .next_tree = 2 };
	uint64_t *st = add(b, 4 * sizeof(*st));
	for (int i = 0; i < 4; i++)
		st[i] = 1000 * (uint64_t)i + tag;
	struct snap_tmpl *t = add(b, NTMPLS * sizeof(*t));
	for (int i = 0; i < NTMPLS; i++)
		t[i] = (struct snap_tmpl){ f->page_idx[i], f->crc[i] };
	struct snap_session *s = add(b, sizeof(*s));
	*s = (struct snap_session){ .id = 1, .pid = (int32_t)(100 + tag), .uid = 1000, .gid = 1000, .mm = 1,
				    .nhandles = 3, .last_seq = 7, .last_id = 2, .last_status = 0,
				    .flags = SNAP_SESSION_REPLIED, .last_value = 42 };
	struct snap_handle *hd = add(b, 3 * sizeof(*hd));
	hd[0] = (struct snap_handle){ 0, 1 };
	hd[1] = (struct snap_handle){ SNAP_NO_TMPL, 0 };
	hd[2] = (struct snap_handle){ 2, 3 };
	s = add(b, sizeof(*s));
	*s = (struct snap_session){ .id = 2, .pid = 200, .uid = 0 };
	struct snap_mm *m = add(b, sizeof(*m));
	*m = (struct snap_mm){ .id = 1, .pid = 100, .uid = 1000, .tree = 1, .features = 0x3f, .nranges = 2 };
	struct snap_range *r = add(b, 2 * sizeof(*r));
	r[0] = (struct snap_range){ 0x10000000, 0x10100000, 0, 0 };
	r[1] = (struct snap_range){ 0x20000000, 0x20004000, 2, 0 };
	m = add(b, sizeof(*m));
	*m = (struct snap_mm){ .id = 2, .pid = 101, .uid = 1000, .tree = 1, .features = 0x3f,
			       .flags = SNAP_MM_CHILD, .nranges = 1 };
	r = add(b, sizeof(*r));
	r[0] = (struct snap_range){ 0x10000000, 0x10100000, 1, 0 };
	struct snap_uid *u = add(b, sizeof(*u));
	*u = (struct snap_uid){ .uid = 1000, .used = { 1, 2, 3, 0x104000, 2 } };
}

static void commit_tag(struct fixture *f, uint32_t tag)
{
	struct snap_buf b;

	for (int i = 0; i < NTMPLS; i++)
		assert_int_equal(snap_page_keep(&f->w, f->page_idx[i]), 0);
	build_body(f, &b, tag);
	assert_int_equal(snap_commit(&f->w, b.p, b.len), 0);
	snap_buf_free(&b);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	f->fd = new_memfd();
	if (snap_writer_init(&f->w, f->fd, SNAP_VERSION) < 0)
		return -1;
	for (int i = 0; i < NTMPLS; i++) {
		memset(f->pages[i], 0x30 + i, SNAP_PAGE);
		f->pages[i][i * 7] = 0xee;
		long idx = snap_page_alloc(&f->w);
		if (idx < 0 || snap_page_write(&f->w, (uint32_t)idx, f->pages[i], &f->crc[i]) < 0)
			return -1;
		f->page_idx[i] = (uint32_t)idx;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	snap_writer_fini(&f->w);
	close(f->fd);
	free(f);
	return 0;
}

static enum snap_err read_snap(int fd, struct snap_image *img)
{
	uint32_t v;

	return snap_read(fd, img, &v);
}

static void test_crc32c(void **state)
{
	(void)state;
	/* The standard check value of CRC-32C (Castagnoli). */
	assert_int_equal(snap_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(snap_crc32c(0, "", 0), 0);
	/* Incremental equals one go, across the 8-byte steps. */
	uint8_t buf[100];
	for (int i = 0; i < 100; i++)
		buf[i] = (uint8_t)(i * 13 + 5);
	assert_int_equal(snap_crc32c(snap_crc32c(0, buf, 37), buf + 37, 63), snap_crc32c(0, buf, 100));
}

static void test_round_trip(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	uint8_t page[SNAP_PAGE];

	commit_tag(f, 5);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(img.version, SNAP_VERSION);
	assert_int_equal(img.gen, 1);
	assert_int_equal(img.hdr->nstats, 4);
	assert_int_equal(img.stats[3], 3005);
	assert_int_equal(img.hdr->ntmpls, NTMPLS);
	assert_int_equal(img.hdr->next_tree, 2);
	for (uint32_t i = 0; i < NTMPLS; i++) {
		assert_int_equal(snap_read_page(f->fd, &img, i, page), SNAP_OK);
		assert_memory_equal(page, f->pages[i], SNAP_PAGE);
	}
	assert_int_equal(img.hdr->nsessions, 2);
	const struct snap_sview *s = &img.sessions[0];
	assert_int_equal(s->s->pid, 105);
	assert_int_equal(s->s->nhandles, 3);
	assert_int_equal(s->h[1].tmpl, SNAP_NO_TMPL);
	assert_int_equal(s->h[2].uses, 3);
	assert_int_equal(s->s->last_value, 42);
	assert_int_equal(img.sessions[1].s->nhandles, 0);
	assert_int_equal(img.hdr->nmms, 2);
	assert_int_equal(img.mms[0].m->nranges, 2);
	assert_int_equal(img.mms[0].r[1].end, 0x20004000);
	assert_int_equal(img.mms[1].m->flags, SNAP_MM_CHILD);
	assert_int_equal(img.mms[1].r[0].tmpl, 1);
	assert_int_equal(img.hdr->nuids, 1);
	assert_int_equal(img.uids[0].used[3], 0x104000);
	snap_image_free(&img);
}

/* Each commit goes to the other slot, with the next generation; the
 * newest valid slot is the one read. */
static void test_slots_alternate(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;

	for (uint32_t tag = 1; tag <= 5; tag++) {
		commit_tag(f, tag);
		assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
		assert_int_equal(img.gen, tag);
		assert_int_equal(img.slot, (int)((tag - 1) % 2));
		assert_int_equal(img.sessions[0].s->pid, (int32_t)(100 + tag));
		snap_image_free(&img);
	}
}

static void flip(int fd, uint64_t off)
{
	uint8_t b;

	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= 0x20;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
}

/* A damaged newest slot: the previous generation is used, and the reason
 * given; both damaged: no snapshot, and the reason. */
static void test_checksum_fallback(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;

	commit_tag(f, 1);
	commit_tag(f, 2);
	/* gen 2 is in slot 1: its body, then slot 0's too. */
	flip(f->fd, SNAP_SLOT_OFF(1) + 60);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(img.gen, 1);
	assert_int_equal(img.slot, 0);
	assert_int_equal(img.slot_err[1], SNAP_ECRC);
	assert_int_equal(img.sessions[0].s->pid, 101);
	snap_image_free(&img);
	flip(f->fd, SNAP_SLOT_OFF(0) + 8);
	assert_int_equal(read_snap(f->fd, &img), SNAP_ECRC);
	assert_int_equal(img.slot_err[0], SNAP_ECRC);
	assert_int_equal(img.slot_err[1], SNAP_ECRC);
	snap_image_free(&img);
}

/* A damaged descriptor (a torn or garbled header write) is as good as
 * absent: the other slot. */
static void test_descriptor_damage(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;

	commit_tag(f, 1);
	commit_tag(f, 2);
	flip(f->fd, offsetof(struct snap_file_hdr, slot[1].len));
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(img.gen, 1);
	assert_int_equal(img.slot_err[1], SNAP_ECRC);
	snap_image_free(&img);
	/* The file header itself: no snapshot. */
	flip(f->fd, offsetof(struct snap_file_hdr, tmpl_off));
	assert_int_equal(read_snap(f->fd, &img), SNAP_ECRC);
	snap_image_free(&img);
}

/* A writer killed between the body and the descriptor left the previous
 * generation as it was: a body written but not committed is ignored. */
static void test_torn_commit(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	struct snap_buf b;

	commit_tag(f, 1);
	build_body(f, &b, 9);
	/* What snap_commit does first, without the descriptor. */
	assert_int_equal(pwrite(f->fd, b.p, b.len, (off_t)SNAP_SLOT_OFF(1)), (ssize_t)b.len);
	snap_buf_free(&b);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(img.gen, 1);
	assert_int_equal(img.sessions[0].s->pid, 101);
	snap_image_free(&img);
}

static void test_truncated(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	uint8_t page[SNAP_PAGE];

	commit_tag(f, 1);
	commit_tag(f, 2);
	/* Into the newest body (slot 1, after slot 0): the older one. */
	assert_int_equal(ftruncate(f->fd, (off_t)(SNAP_SLOT_OFF(1) + 100)), 0);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(img.gen, 1);
	assert_int_equal(img.slot_err[1], SNAP_ETRUNC);
	snap_image_free(&img);
	/* Into the template pages: bodies gone, and the pages too. */
	assert_int_equal(ftruncate(f->fd, (off_t)(SNAP_TMPL_OFF + SNAP_PAGE + 10)), 0);
	assert_int_equal(read_snap(f->fd, &img), SNAP_ETRUNC);
	snap_image_free(&img);
	/* Into the header, and to nothing. */
	assert_int_equal(ftruncate(f->fd, 50), 0);
	assert_int_equal(read_snap(f->fd, &img), SNAP_ETRUNC);
	snap_image_free(&img);
	assert_int_equal(ftruncate(f->fd, 0), 0);
	assert_int_equal(read_snap(f->fd, &img), SNAP_ETRUNC);
	snap_image_free(&img);
	(void)page;
}

/* Template pages are checked one by one. */
static void test_template_pages(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	uint8_t page[SNAP_PAGE];

	commit_tag(f, 1);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	flip(f->fd, img.tmpl_off + (uint64_t)f->page_idx[1] * SNAP_PAGE + 4000);
	assert_int_equal(snap_read_page(f->fd, &img, 0, page), SNAP_OK);
	assert_int_equal(snap_read_page(f->fd, &img, 1, page), SNAP_ECRC);
	assert_int_equal(snap_read_page(f->fd, &img, 2, page), SNAP_OK);
	assert_int_equal(ftruncate(f->fd, (off_t)(img.tmpl_off + (uint64_t)f->page_idx[2] * SNAP_PAGE + 1)), 0);
	assert_int_equal(snap_read_page(f->fd, &img, 2, page), SNAP_ETRUNC);
	snap_image_free(&img);
}

/* A version this reader does not know is refused as such, whatever
 * follows it; a file that is not a snapshot is not read at all. */
static void test_versions(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	uint32_t v = 999, got;

	commit_tag(f, 1);
	assert_int_equal(pwrite(f->fd, &v, 4, offsetof(struct snap_file_hdr, version)), 4);
	assert_int_equal(snap_read(f->fd, &img, &got), SNAP_EVERSION);
	assert_int_equal(got, 999);
	snap_image_free(&img);

	int fd = new_memfd();
	struct snap_writer w;
	assert_int_equal(snap_writer_init(&w, fd, 2), 0);
	assert_int_equal(snap_read(fd, &img, &got), SNAP_EVERSION);
	assert_int_equal(got, 2);
	snap_image_free(&img);
	snap_writer_fini(&w);
	/* Written, never committed. */
	assert_int_equal(snap_writer_init(&w, fd, SNAP_VERSION), 0);
	assert_int_equal(snap_read(fd, &img, &got), SNAP_EEMPTY);
	snap_image_free(&img);
	snap_writer_fini(&w);
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(pwrite(fd, "hello, world, this is not a snapshot at all, sorry!!", 52, 0), 52);
	assert_int_equal(ftruncate(fd, 4096), 0);
	assert_int_equal(snap_read(fd, &img, &got), SNAP_EMAGIC);
	snap_image_free(&img);
	close(fd);
}

static void test_counters(void **state)
{
	struct fixture *f = *state;
	struct snap_image img;
	struct snap_counters c;

	commit_tag(f, 1);
	assert_int_equal(read_snap(f->fd, &img), SNAP_OK);
	assert_int_equal(snap_read_counters(f->fd, &img, &c), SNAP_OK);
	assert_int_equal(c.count, 0);
	c.count = 3;
	c.v[2] = 77;
	assert_int_equal(pwrite(f->fd, &c, sizeof(c), (off_t)img.counters_off), (ssize_t)sizeof(c));
	assert_int_equal(snap_read_counters(f->fd, &img, &c), SNAP_OK);
	assert_int_equal(c.v[2], 77);
	c.magic = 0;
	assert_int_equal(pwrite(f->fd, &c, sizeof(c), (off_t)img.counters_off), (ssize_t)sizeof(c));
	assert_int_equal(snap_read_counters(f->fd, &img, &c), SNAP_EFORMAT);
	snap_image_free(&img);
}

/* A page the committed body refers to is not handed out before the next
 * commit: a writer killed mid-way leaves that body's pages intact. */
static void test_page_reuse(void **state)
{
	struct fixture *f = *state;

	commit_tag(f, 1); /* pages 0, 1, 2 committed */
	/* Template 1 is gone from the next body. */
	assert_int_equal(snap_page_keep(&f->w, f->page_idx[0]), 0);
	assert_int_equal(snap_page_keep(&f->w, f->page_idx[2]), 0);
	long a = snap_page_alloc(&f->w);
	assert_int_equal(a, 3);
	struct snap_buf b;
	build_body(f, &b, 2);
	assert_int_equal(snap_commit(&f->w, b.p, b.len), 0);
	snap_buf_free(&b);
	/* Now page 1 is free; page 3 is committed. */
	assert_int_equal(snap_page_keep(&f->w, 0), 0);
	assert_int_equal(snap_page_keep(&f->w, 2), 0);
	assert_int_equal(snap_page_keep(&f->w, 3), 0);
	assert_int_equal(snap_page_alloc(&f->w), 1);
	assert_int_equal(snap_page_alloc(&f->w), 4);
}

/* Malformed bodies with a valid checksum: the decoder refuses them. */
static void test_decode_malformed(void **state)
{
	struct fixture *f = *state;
	struct snap_buf b;
	struct snap_image img;
	/* Offsets into the fixture's body. */
	const size_t stats = sizeof(struct snap_body),
		     tmpls = stats + 4 * 8, sess = tmpls + NTMPLS * sizeof(struct snap_tmpl),
		     handles = sess + sizeof(struct snap_session),
		     sess2 = handles + 3 * sizeof(struct snap_handle), mm = sess2 + sizeof(struct snap_session),
		     ranges = mm + sizeof(struct snap_mm);
	const struct {
		const char *name;
		size_t off;
		uint32_t val;
	} pokes[] = {
		{ "body magic", offsetof(struct snap_body, magic), 0x12345678 },
		{ "too many stats", offsetof(struct snap_body, nstats), SNAP_MAX_STATS + 1 },
		{ "reserved", offsetof(struct snap_body, reserved), 1 },
		{ "templates past the end", offsetof(struct snap_body, ntmpls), 0x10000000 },
		{ "sessions past the end", offsetof(struct snap_body, nsessions), 1000000 },
		{ "mms past the end", offsetof(struct snap_body, nmms), 0xffffffff },
		{ "a uid less: trailing bytes", offsetof(struct snap_body, nuids), 0 },
		{ "template page out of the file", tmpls + offsetof(struct snap_tmpl, page), 0xffffffff },
		{ "handle count past the end", sess + offsetof(struct snap_session, nhandles), 0x7fffffff },
		{ "unknown session flag", sess + offsetof(struct snap_session, flags), 2 },
		{ "handle to no template", handles + offsetof(struct snap_handle, tmpl), NTMPLS },
		{ "range count past the end", mm + offsetof(struct snap_mm, nranges), 1000 },
		{ "unknown mm flag", mm + offsetof(struct snap_mm, flags), 4 },
		{ "range to no template", ranges + offsetof(struct snap_range, tmpl), 7 },
	};

	for (size_t i = 0; i < sizeof(pokes) / sizeof(pokes[0]); i++) {
		build_body(f, &b, 1);
		memcpy(b.p + pokes[i].off, &pokes[i].val, 4);
		uint8_t *copy = malloc(b.len);
		memcpy(copy, b.p, b.len);
		enum snap_err e = snap_decode(&img, copy, b.len);
		if (e != SNAP_EFORMAT)
			fail_msg("%s: %s, want malformed", pokes[i].name, snap_err_str(e));
		free(copy);
		snap_buf_free(&b);
	}
	/* Every prefix of a valid body is refused, none read past its end
	 * (ASan's job). */
	build_body(f, &b, 1);
	for (size_t n = 0; n < b.len; n++) {
		uint8_t *copy = malloc(n ? n : 1);
		memcpy(copy, b.p, n);
		assert_int_equal(snap_decode(&img, copy, n), SNAP_EFORMAT);
		free(copy);
	}
	snap_buf_free(&b);
}

/* Random damage to a whole file: the reader never crashes or reads out of
 * bounds, and whatever it accepts is self-consistent. */
static void test_random_damage(void **state)
{
	struct fixture *f = *state;
	uint32_t x = 12345;

	commit_tag(f, 1);
	commit_tag(f, 2);
	struct stat st;
	assert_int_equal(fstat(f->fd, &st), 0);
	for (int round = 0; round < 400; round++) {
		int fd = new_memfd();
		/* The header page and both bodies, as sparse as the original. */
		uint8_t buf[SNAP_PAGE];
		uint64_t offs[3] = { 0, SNAP_SLOT_OFF(0), SNAP_SLOT_OFF(1) };
		for (int k = 0; k < 3; k++) {
			ssize_t n = pread(f->fd, buf, sizeof(buf), (off_t)offs[k]);
			assert_true(n > 0);
			for (int m = 0; m < 1 + round % 4; m++) {
				x ^= x << 13;
				x ^= x >> 17;
				x ^= x << 5;
				buf[x % (uint32_t)(k ? 700 : 104)] ^= (uint8_t)(1u << (x % 8));
			}
			assert_int_equal(pwrite(fd, buf, (size_t)n, (off_t)offs[k]), n);
		}
		struct snap_image img;
		uint32_t v;
		if (snap_read(fd, &img, &v) == SNAP_OK) {
			for (uint32_t i = 0; i < img.hdr->nsessions; i++)
				for (uint32_t h = 0; h < img.sessions[i].s->nhandles; h++)
					assert_true(img.sessions[i].h[h].tmpl == SNAP_NO_TMPL ||
						    img.sessions[i].h[h].tmpl < img.hdr->ntmpls);
			for (uint32_t i = 0; i < img.hdr->nmms; i++)
				for (uint32_t r = 0; r < img.mms[i].m->nranges; r++)
					assert_true(img.mms[i].r[r].tmpl < img.hdr->ntmpls);
		}
		snap_image_free(&img);
		close(fd);
	}
}

/* A daemon with no client yet: a body of nothing but its header, and no
 * template page ever allocated. */
static void test_empty_state(void **state)
{
	struct snap_writer w;
	struct snap_image img;
	struct snap_body h = { .magic = SNAP_BODY_MAGIC, .next_session = 1, .next_mm = 1, .next_tree = 1 };
	int fd = new_memfd();

	(void)state;
	assert_int_equal(snap_writer_init(&w, fd, SNAP_VERSION), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(snap_commit(&w, &h, sizeof(h)), 0);
	assert_int_equal(read_snap(fd, &img), SNAP_OK);
	assert_int_equal(img.gen, 3);
	assert_int_equal(img.hdr->nsessions + img.hdr->nmms + img.hdr->ntmpls, 0);
	snap_image_free(&img);
	snap_writer_fini(&w);
	close(fd);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c),
		cmocka_unit_test(test_empty_state),
		T(test_round_trip),
		T(test_slots_alternate),
		T(test_checksum_fallback),
		T(test_descriptor_damage),
		T(test_torn_commit),
		T(test_truncated),
		T(test_template_pages),
		T(test_versions),
		T(test_counters),
		T(test_page_reuse),
		T(test_decode_malformed),
		T(test_random_damage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
