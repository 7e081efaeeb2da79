/* Writes the seed corpora of fuzz_session and fuzz_proto:
 *     mkcorpus DIR      (writes DIR/fuzz_session/ and DIR/fuzz_proto/)
 * The seeds are checked in under tests/fuzz/corpus/; scripts/fuzz.sh
 * --seeds regenerates them. Each seed is deterministic. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_input.h"
#include "proto.h"

#define PAGE PROTO_PAGE_SIZE
#define HDR sizeof(struct proto_hdr)

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (!n)
		return;
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			exit(1);
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void save(const char *dir, const char *name, const struct buf *b)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(b->p, 1, b->n, f) != b->n || fclose(f) != 0) {
		fprintf(stderr, "mkcorpus: %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

/* --- fuzz_session steps --------------------------------------------------- */

static void step(struct buf *b, uint8_t op, const void *data, size_t len)
{
	uint8_t h[3] = { op, (uint8_t)len, (uint8_t)(len >> 8) };
	put(b, h, 3);
	put(b, data, len);
}

static uint8_t op_of(unsigned slot, unsigned fd)
{
	return (uint8_t)(slot << 4 | fd);
}

static void raw(struct buf *b, unsigned slot, unsigned fd, uint16_t version, uint16_t type,
		uint32_t seq, uint32_t flags, const void *payload, uint32_t len, uint32_t hdr_len)
{
	uint8_t pkt[HDR + PAGE];
	struct proto_hdr h = {
		.version = version, .type = type, .len = hdr_len, .seq = seq, .flags = flags
	};
	memcpy(pkt, &h, HDR);
	if (len)
		memcpy(pkt + HDR, payload, len);
	step(b, op_of(slot, fd), pkt, HDR + len);
}

static void msg(struct buf *b, unsigned slot, unsigned fd, uint16_t type, uint32_t seq,
		const void *payload, uint32_t len)
{
	raw(b, slot, fd, PROTO_VERSION, type, seq, 0, payload, len, len);
}

static void action(struct buf *b, unsigned act, uint8_t arg)
{
	step(b, (uint8_t)(FZ_OP_ACTION | act), &arg, 1);
}

static void hello(struct buf *b, unsigned slot, unsigned fd, uint32_t seq)
{
	struct proto_hello h = { .page_size = PAGE,
				 .pid = 1,
				 .flags = fd == FZ_FD_UFFD_UMO ? PROTO_HELLO_USER_MODE_ONLY : 0 };
	msg(b, slot, fd, PROTO_HELLO, seq, &h, sizeof(h));
}

static void fill(struct buf *b, unsigned slot, uint32_t seq, uint8_t byte)
{
	struct proto_template_fill f = { .byte = byte };
	msg(b, slot, FZ_FD_NONE, PROTO_TEMPLATE_FILL, seq, &f, sizeof(f));
}

static void create(struct buf *b, unsigned slot, uint32_t seq, uint32_t seed)
{
	uint8_t page[PAGE];
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < PAGE; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		page[i] = (uint8_t)(x >> 11);
	}
	msg(b, slot, FZ_FD_NONE, PROTO_TEMPLATE_CREATE, seq, page, PAGE);
}

static void release(struct buf *b, unsigned slot, uint32_t seq, uint32_t id)
{
	struct proto_template_release r = { .id = id };
	msg(b, slot, FZ_FD_NONE, PROTO_TEMPLATE_RELEASE, seq, &r, sizeof(r));
}

static void map(struct buf *b, unsigned slot, uint32_t seq, uint32_t first, uint32_t pages,
		uint32_t id)
{
	struct proto_map m = { .addr = FZ_ARENA + (uint64_t)first * PAGE,
			       .len = (uint64_t)pages * PAGE,
			       .id = id };
	msg(b, slot, FZ_FD_NONE, PROTO_MAP, seq, &m, sizeof(m));
}

static void unmap(struct buf *b, unsigned slot, uint32_t seq, uint32_t first, uint32_t pages)
{
	struct proto_unmap u = { .addr = FZ_ARENA + (uint64_t)first * PAGE,
				 .len = (uint64_t)pages * PAGE };
	msg(b, slot, FZ_FD_NONE, PROTO_UNMAP, seq, &u, sizeof(u));
}

static void stats(struct buf *b, unsigned slot, uint32_t seq)
{
	msg(b, slot, FZ_FD_NONE, PROTO_STATS, seq, NULL, 0);
}

static void touch(struct buf *b, uint8_t page)
{
	action(b, FZ_ACT_TOUCH, page);
}

static void session_seeds(const char *dir)
{
	struct buf b = { 0 };

	/* The library's conversation, and faults served from it. */
	hello(&b, 0, FZ_FD_UFFD, 1);
	fill(&b, 0, 2, 0xAA);
	map(&b, 0, 3, 0, 16, 1);
	stats(&b, 0, 4);
	touch(&b, 0);
	touch(&b, 1);
	touch(&b, 5);
	unmap(&b, 0, 5, 2, 2);
	touch(&b, 2);
	touch(&b, 15);
	release(&b, 0, 6, 1);
	touch(&b, 12);
	save(dir, "hello-fill-map-stats-touch", &b);

	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD_UMO, 1);
	create(&b, 0, 2, 7);
	fill(&b, 0, 3, 0);
	map(&b, 0, 4, 0, 8, 1);
	map(&b, 0, 5, 8, 8, 2);
	touch(&b, 3);
	touch(&b, 9);
	create(&b, 0, 6, 7); /* the same contents: the same handle */
	release(&b, 0, 7, 1);
	release(&b, 0, 8, 1);
	release(&b, 0, 9, 1); /* no longer held */
	touch(&b, 4);
	save(dir, "user-mode-only-create-zero", &b);

	/* Each message type alone. */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	save(dir, "type-hello", &b);
	b.n = 0;
	stats(&b, 0, 1);
	save(dir, "type-stats", &b);
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	fill(&b, 0, 2, 0x5A);
	save(dir, "type-fill", &b);
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	create(&b, 0, 2, 1);
	save(dir, "type-create", &b);
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	release(&b, 0, 2, 1);
	save(dir, "type-release", &b);
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	map(&b, 0, 2, 0, 1, 1);
	save(dir, "type-map", &b);
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	unmap(&b, 0, 2, 0, 1);
	save(dir, "type-unmap", &b);
	b.n = 0;
	struct proto_upgrade up = { 0 };
	msg(&b, 0, FZ_FD_NONE, PROTO_UPGRADE, 1, &up, sizeof(up));
	stats(&b, 0, 2);
	save(dir, "type-upgrade", &b);
	/* USAGE, allowed before HELLO like STATS: our own uid (by name and
	 * as PROTO_USAGE_SELF), the next uid above ours and another uid (no
	 * account: -ENOENT), then ours again once served. */
	b.n = 0;
	struct proto_usage us = { .flags = PROTO_USAGE_SELF };
	msg(&b, 0, FZ_FD_NONE, PROTO_USAGE, 1, &us, sizeof(us));
	us = (struct proto_usage){ .uid = 0 };
	msg(&b, 0, FZ_FD_NONE, PROTO_USAGE, 2, &us, sizeof(us));
	us = (struct proto_usage){ .uid = 0, .flags = PROTO_USAGE_NEXT };
	msg(&b, 0, FZ_FD_NONE, PROTO_USAGE, 3, &us, sizeof(us));
	us = (struct proto_usage){ .uid = 12345 };
	msg(&b, 0, FZ_FD_NONE, PROTO_USAGE, 4, &us, sizeof(us));
	hello(&b, 0, FZ_FD_UFFD, 5);
	fill(&b, 0, 6, 0xA5);
	map(&b, 0, 7, 0, 4, 1);
	us = (struct proto_usage){ .flags = PROTO_USAGE_SELF };
	msg(&b, 0, FZ_FD_NONE, PROTO_USAGE, 8, &us, sizeof(us));
	save(dir, "type-usage", &b);

	/* Two clients of one address space, and a third refused (2 per uid). */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	hello(&b, 1, FZ_FD_UFFD, 1);
	fill(&b, 0, 2, 0x11);
	fill(&b, 1, 2, 0x11);
	map(&b, 0, 3, 0, 8, 1);
	map(&b, 1, 3, 4, 8, 1); /* overlaps slot 0's: EBUSY */
	map(&b, 1, 4, 8, 8, 1);
	stats(&b, 2, 1);
	touch(&b, 6);
	touch(&b, 10);
	action(&b, FZ_ACT_HANGUP, 0);
	touch(&b, 7);
	stats(&b, 2, 2);
	save(dir, "two-clients-third-refused", &b);

	/* Limits: handles, the store, ranges, bytes. */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	for (uint32_t i = 0; i < 6; i++)
		fill(&b, 0, 2 + i, (uint8_t)(0x30 + i));
	for (uint32_t i = 0; i < 5; i++)
		map(&b, 0, 10 + i, i * 4, 2, 1 + i % 4);
	map(&b, 0, 20, 24, 24, 1);
	save(dir, "limits", &b);

	/* The memory budget (fuzz_session's is one fill slab and a few
	 * templates): a second template's slab is refused, its fills go one
	 * page at a time; then templates of a second client are refused. */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	fill(&b, 0, 2, 0xAA);
	fill(&b, 0, 3, 0xBB);
	map(&b, 0, 4, 0, 8, 1);
	map(&b, 0, 5, 8, 8, 2);
	for (uint8_t i = 0; i < 4; i++)
		touch(&b, i);
	for (uint8_t i = 8; i < 12; i++)
		touch(&b, i);
	hello(&b, 1, FZ_FD_UFFD, 1);
	for (uint32_t i = 0; i < 4; i++)
		create(&b, 1, 2 + i, 100 + i);
	save(dir, "budget-memory", &b);

	/* Splits: UNMAP in the middle with the range table full (mm.c
	 * unregistered the hole, then refused to split its table). */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	fill(&b, 0, 2, 0xAA);
	for (uint32_t i = 0; i < 4; i++)
		map(&b, 0, 3 + i, i * 8, 6, 1);
	unmap(&b, 0, 10, 2, 2);
	touch(&b, 2);
	touch(&b, 1);
	touch(&b, 4);
	save(dir, "regress-unmap-split-table-full", &b);

	/* A client that does not read its replies. */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	for (uint32_t i = 0; i < 24; i++) {
		struct proto_hdr h = { .version = PROTO_VERSION,
				       .type = PROTO_STATS,
				       .seq = 2 + i };
		step(&b, op_of(0, FZ_FD_NONE) | FZ_OP_NOREAD, &h, sizeof(h));
	}
	stats(&b, 0, 99);
	save(dir, "not-reading-replies", &b);

	/* A connection that never speaks; one that speaks before HELLO. */
	b.n = 0;
	action(&b, FZ_ACT_CONNECT, 0);
	action(&b, FZ_ACT_HELLO_TIMEOUT, 0);
	stats(&b, 1, 1);
	action(&b, FZ_ACT_HELLO_TIMEOUT, 1);
	save(dir, "hello-timeout", &b);

	/* Regressions. The daemon's reply socket is small here (fuzz_session
	 * shrinks it): n replies left unread, then a request the daemon
	 * answers and hangs up on, for n = 0..11, so that one of them finds
	 * the socket full (session.c closed the session twice then). */
	b.n = 0;
	for (uint32_t n = 0; n < 12; n++) {
		for (uint32_t i = 0; i < n; i++) {
			struct proto_hdr h = { .version = PROTO_VERSION,
					       .type = PROTO_STATS,
					       .seq = 10 + i };
			step(&b, op_of(0, FZ_FD_NONE) | FZ_OP_NOREAD, &h, sizeof(h));
		}
		struct proto_template_fill f = { .byte = 0xAA };
		raw(&b, 0, FZ_FD_NONE, PROTO_VERSION, PROTO_TEMPLATE_FILL, 99, 0, &f, sizeof(f),
		    sizeof(f));
	}
	save(dir, "regress-full-socket-request-before-hello", &b);
	b.n = 0;
	for (uint32_t n = 0; n < 12; n++) {
		hello(&b, 0, FZ_FD_UFFD, 1);
		for (uint32_t i = 0; i < n; i++) {
			struct proto_hdr h = { .version = PROTO_VERSION,
					       .type = PROTO_STATS,
					       .seq = 10 + i };
			step(&b, op_of(0, FZ_FD_NONE) | FZ_OP_NOREAD, &h, sizeof(h));
		}
		hello(&b, 0, FZ_FD_UFFD, 99);
	}
	save(dir, "regress-full-socket-second-hello", &b);
	/* An empty packet carrying a descriptor (it leaked in the daemon). */
	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	step(&b, op_of(0, FZ_FD_UFFD), NULL, 0);
	step(&b, op_of(1, FZ_FD_PIPE), NULL, 0);
	step(&b, op_of(1, FZ_FD_TWO), NULL, 0);
	save(dir, "regress-empty-packet-with-fd", &b);

	/* Malformed: each closes the client. */
	struct proto_hello hh = { .page_size = PAGE };
	struct proto_map mm = { .addr = FZ_ARENA, .len = PAGE, .id = 1 };
	static uint8_t big[PROTO_MAX_MSG + 64];
	b.n = 0;
	raw(&b, 0, FZ_FD_NONE, PROTO_VERSION + 1, PROTO_STATS, 1, 0, NULL, 0, 0);
	raw(&b, 1, FZ_FD_NONE, PROTO_VERSION, 42, 2, 0, NULL, 0, 0);
	raw(&b, 2, FZ_FD_NONE, PROTO_VERSION, PROTO_STATS, 3, 1, NULL, 0, 0);
	raw(&b, 0, FZ_FD_NONE, PROTO_VERSION, PROTO_STATS, 4, 0, &hh, 4, 4);
	raw(&b, 1, FZ_FD_NONE, PROTO_VERSION, PROTO_MAP, 5, 0, &mm, sizeof(mm), 8);
	step(&b, op_of(2, FZ_FD_NONE), "\x01\x00\x07\x00", 4);
	save(dir, "bad-header", &b);

	b.n = 0;
	struct proto_hdr bh = { .version = PROTO_VERSION,
				.type = PROTO_TEMPLATE_CREATE,
				.len = sizeof(big) - HDR,
				.seq = 9 };
	memset(big, 0x42, sizeof(big));
	memcpy(big, &bh, HDR);
	step(&b, op_of(0, FZ_FD_NONE), big, sizeof(big));
	save(dir, "bad-oversized", &b);
	/* An oversized HELLO without a descriptor: a bad message (-EBADMSG),
	 * which the daemon took for a descriptor lost on its side (-EMFILE). */
	b.n = 0;
	struct proto_hdr oh = {
		.version = PROTO_VERSION, .type = PROTO_HELLO, .len = sizeof(hh), .seq = 1
	};
	memset(big, 0, sizeof(big));
	memcpy(big, &oh, HDR);
	memcpy(big + HDR, &hh, sizeof(hh));
	step(&b, op_of(0, FZ_FD_NONE), big, sizeof(big));
	save(dir, "regress-oversized-hello-no-fd", &b);

	b.n = 0;
	hello(&b, 0, FZ_FD_TWO, 1);
	hello(&b, 1, FZ_FD_FILE, 1);
	hello(&b, 2, FZ_FD_PIPE, 1);
	hello(&b, 0, FZ_FD_EVENTFD, 2);
	hello(&b, 1, FZ_FD_UFFD_CONFIGURED, 2);
	hello(&b, 2, FZ_FD_NONE, 2);
	save(dir, "bad-hello-fds", &b);

	b.n = 0;
	hello(&b, 0, FZ_FD_UFFD, 1);
	hello(&b, 0, FZ_FD_UFFD, 2);
	fill(&b, 1, 1, 0xAA);
	struct proto_hello hr = { .page_size = PAGE, .reserved = 1 };
	msg(&b, 2, FZ_FD_UFFD, PROTO_HELLO, 1, &hr, sizeof(hr));
	struct proto_hello hp = { .page_size = 8192 };
	msg(&b, 0, FZ_FD_UFFD, PROTO_HELLO, 3, &hp, sizeof(hp));
	stats(&b, 1, 2);
	msg(&b, 1, FZ_FD_PIPE, PROTO_STATS, 3, NULL, 0);
	save(dir, "bad-sequence", &b);
	free(b.p);
}

/* --- fuzz_proto ----------------------------------------------------------- */

static void proto_seed(const char *dir, const char *name, uint8_t params, uint16_t type,
		       const void *payload, uint32_t len)
{
	struct buf b = { 0 };
	uint8_t pkt[PROTO_MAX_MSG];
	size_t n = proto_build(pkt, type, 7, payload, len);
	put(&b, &params, 1);
	put(&b, pkt, n);
	save(dir, name, &b);
	free(b.p);
}

static void proto_seeds(const char *dir)
{
	static uint8_t page[PAGE];
	struct proto_hello h = { .page_size = PAGE, .flags = PROTO_HELLO_USER_MODE_ONLY };
	struct proto_template_fill f = { .byte = 0xAA };
	struct proto_template_release r = { .id = 1 };
	struct proto_map m = { .addr = 0x7f0000000000, .len = 4 * PAGE, .id = 1 };
	struct proto_unmap u = { .addr = 0x7f0000000000, .len = PAGE };
	struct proto_reply rep = { .status = -22, .id = 1 };
	struct proto_stats_reply sr = { .count = PROTO_STAT_COUNT };

	memset(page, 0x5A, sizeof(page));
	/* params: bits 0-1 descriptors, bit 2 want_request */
	proto_seed(dir, "hello", 4 | 1, PROTO_HELLO, &h, sizeof(h));
	proto_seed(dir, "fill", 4, PROTO_TEMPLATE_FILL, &f, sizeof(f));
	proto_seed(dir, "create", 4, PROTO_TEMPLATE_CREATE, page, PAGE);
	proto_seed(dir, "release", 4, PROTO_TEMPLATE_RELEASE, &r, sizeof(r));
	proto_seed(dir, "map", 4, PROTO_MAP, &m, sizeof(m));
	proto_seed(dir, "unmap", 4, PROTO_UNMAP, &u, sizeof(u));
	proto_seed(dir, "stats", 4, PROTO_STATS, NULL, 0);
	struct proto_upgrade up = { 0 };
	proto_seed(dir, "upgrade", 4, PROTO_UPGRADE, &up, sizeof(up));
	struct proto_usage us = { .uid = 1000, .flags = PROTO_USAGE_NEXT };
	proto_seed(dir, "usage", 4, PROTO_USAGE, &us, sizeof(us));
	static struct proto_usage_reply ur = { .uid = 1000, .count = PROTO_RES_COUNT };
	proto_seed(dir, "usage-reply", 0, PROTO_USAGE_REPLY, &ur, sizeof(ur));
	proto_seed(dir, "reply", 0, PROTO_REPLY, &rep, sizeof(rep));
	proto_seed(dir, "stats-reply", 0, PROTO_STATS_REPLY, &sr, sizeof(sr));
	proto_seed(dir, "bad-hello-no-fd", 4, PROTO_HELLO, &h, sizeof(h));
	proto_seed(dir, "bad-hello-two-fds", 4 | 2, PROTO_HELLO, &h, sizeof(h));
	proto_seed(dir, "bad-reply-as-request", 4, PROTO_REPLY, &rep, sizeof(rep));
	proto_seed(dir, "bad-request-as-reply", 0, PROTO_MAP, &m, sizeof(m));
	m.flags = 1;
	proto_seed(dir, "bad-map-flags", 4, PROTO_MAP, &m, sizeof(m));
	proto_seed(dir, "bad-short-len", 4, PROTO_MAP, &m, 8);
}

int main(int argc, char **argv)
{
	char sub[512];

	if (argc != 2) {
		fprintf(stderr, "usage: mkcorpus DIR\n");
		return 2;
	}
	const char *names[] = { "fuzz_session", "fuzz_proto" };
	for (int i = 0; i < 2; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", argv[1], names[i]);
		if (mkdir(sub, 0755) < 0 && errno != EEXIST) {
			fprintf(stderr, "mkcorpus: %s: %s\n", sub, strerror(errno));
			return 1;
		}
	}
	snprintf(sub, sizeof(sub), "%s/fuzz_session", argv[1]);
	session_seeds(sub);
	snprintf(sub, sizeof(sub), "%s/fuzz_proto", argv[1]);
	proto_seeds(sub);
	return 0;
}
