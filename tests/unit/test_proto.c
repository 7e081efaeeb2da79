/* Unit tests for the wire protocol (proto/proto.c): round trips through a
 * real SOCK_SEQPACKET socketpair, and every reason proto_check rejects. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "proto.h"

#define HDR_LEN sizeof(struct proto_hdr)
#define MAP_PKT (HDR_LEN + sizeof(struct proto_map))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const uint16_t all_types[] = {
	PROTO_HELLO,       PROTO_TEMPLATE_FILL, PROTO_TEMPLATE_CREATE, PROTO_TEMPLATE_RELEASE,
	PROTO_MAP,         PROTO_UNMAP,         PROTO_STATS,           PROTO_UPGRADE,
	PROTO_USAGE,       PROTO_REPORT,        PROTO_REPLY,           PROTO_STATS_REPLY,
	PROTO_USAGE_REPLY, PROTO_REPORT_REPLY,
};

union payload {
	struct proto_hello hello;
	struct proto_template_fill fill;
	struct proto_template_create create;
	struct proto_template_release release;
	struct proto_map map;
	struct proto_usage usage;
	struct proto_usage_reply usage_reply;
	struct proto_unmap unmap;
	struct proto_upgrade upgrade;
	struct proto_reply reply;
	struct proto_stats_reply stats;
	struct proto_report report;
	struct proto_report_reply report_reply;
};

static int is_request(uint16_t type)
{
	return type < PROTO_REPLY;
}

/* A valid payload for type with every non-reserved field non-zero, so that
 * a round trip that lost or moved a field shows. Returns its length. */
static uint32_t valid_payload(uint16_t type, union payload *p)
{
	memset(p, 0, sizeof(*p));
	switch (type) {
	case PROTO_HELLO:
		p->hello.page_size = PROTO_PAGE_SIZE;
		p->hello.flags = PROTO_HELLO_USER_MODE_ONLY;
		p->hello.pid = 4321;
		break;
	case PROTO_TEMPLATE_FILL:
		p->fill.byte = 0xff;
		break;
	case PROTO_TEMPLATE_CREATE:
		for (size_t i = 0; i < sizeof(p->create.page); i++)
			p->create.page[i] = (uint8_t)(i * 7 + 1);
		break;
	case PROTO_TEMPLATE_RELEASE:
		p->release.id = 0xdeadbeef;
		break;
	case PROTO_MAP:
		p->map = (struct proto_map){ .addr = 0x7f0000001000, .len = 0x20000, .id = 3 };
		break;
	case PROTO_UNMAP:
		p->unmap = (struct proto_unmap){ .addr = 0x7f0000002000, .len = 0x1000 };
		break;
	case PROTO_REPLY:
		p->reply = (struct proto_reply){ .status = -EINVAL, .id = 9, .value = 1ull << 40 };
		break;
	case PROTO_STATS_REPLY:
		p->stats.status = -1;
		p->stats.count = PROTO_STAT_COUNT;
		for (unsigned i = 0; i < PROTO_STATS_MAX; i++)
			p->stats.counters[i] = (uint64_t)i * i + (1ull << 33);
		break;
	case PROTO_USAGE:
		p->usage = (struct proto_usage){ .uid = 65534, .flags = PROTO_USAGE_NEXT };
		break;
	case PROTO_REPORT:
		p->report.max = PROTO_REPORT_RECS;
		break;
	case PROTO_REPORT_REPLY:
		p->report_reply.count = PROTO_REPORT_RECS;
		p->report_reply.more = 1;
		p->report_reply.dropped = 1ull << 35;
		for (unsigned i = 0; i < PROTO_REPORT_RECS; i++)
			p->report_reply.rec[i] = (struct proto_report_rec){
				.addr = 0x7f0000000000 + ((uint64_t)i << 12),
				.ns = (uint64_t)i << 30,
				.tid = (int32_t)i + 1,
			};
		break;
	case PROTO_USAGE_REPLY:
		p->usage_reply.uid = 1000;
		p->usage_reply.count = PROTO_RES_COUNT;
		for (unsigned i = 0; i < PROTO_RES_MAX; i++)
			p->usage_reply.used[i] = (uint64_t)i << 40;
		break;
	}
	return (uint32_t)proto_payload_len(type);
}

static void seqpacket_pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void assert_same_file(int a, int b)
{
	struct stat sa, sb;

	assert_int_equal(fstat(a, &sa), 0);
	assert_int_equal(fstat(b, &sb), 0);
	assert_int_equal(sa.st_dev, sb.st_dev);
	assert_int_equal(sa.st_ino, sb.st_ino);
}

/* Receive one packet from sock that must pass proto_check; returns the
 * descriptor that came with it (or -1). */
static int recv_ok(int sock, uint8_t *buf, int want_request, const struct proto_hdr **hdr)
{
	int fd, nfds, trunc;
	long n = proto_recv(sock, buf, &fd, &nfds, &trunc, 0);

	assert_true(n >= (long)HDR_LEN);
	assert_false(trunc);
	assert_int_equal(nfds, fd >= 0);
	assert_int_equal(proto_check(buf, (size_t)n, nfds, want_request, hdr), PROTO_OK);
	assert_ptr_equal(*hdr, buf);
	assert_int_equal(n, HDR_LEN + (*hdr)->len);
	return fd;
}

/* The descriptor that arrived is a new one for the same file; both are
 * closed. */
static void check_passed_fd(int got, int sent)
{
	assert_true(got >= 0);
	assert_int_not_equal(got, sent);
	assert_same_file(got, sent);
	/* proto_recv promises close-on-exec: the daemon may fork helpers. */
	assert_true(fcntl(got, F_GETFD) & FD_CLOEXEC);
	close(got);
	close(sent);
}

/* Client sends type with seq; the "daemon" end validates it and answers
 * with a REPLY echoing the seq, which the client end validates in turn. */
static void round_trip(uint16_t type, uint32_t seq)
{
	static uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *hdr;
	union payload p;
	uint32_t len = valid_payload(type, &p);
	int sv[2], file = -1;

	seqpacket_pair(sv);
	if (type == PROTO_HELLO)
		file = memfd_create("proto-test", MFD_CLOEXEC);
	if (type == PROTO_HELLO)
		assert_true(file >= 0);
	assert_int_equal(proto_send(sv[0], type, seq, &p, len, file, 0), 0);
	int got = recv_ok(sv[1], buf, is_request(type), &hdr);
	assert_int_equal(hdr->type, type);
	assert_int_equal(hdr->seq, seq);
	assert_int_equal(hdr->len, len);
	assert_memory_equal(buf + HDR_LEN, &p, len);
	if (type == PROTO_HELLO)
		check_passed_fd(got, file);
	else
		assert_int_equal(got, -1);
	if (is_request(type)) {
		union payload r;
		uint32_t rlen = valid_payload(PROTO_REPLY, &r);
		assert_int_equal(proto_send(sv[1], PROTO_REPLY, hdr->seq, &r, rlen, -1, 0), 0);
		assert_int_equal(recv_ok(sv[0], buf, 0, &hdr), -1);
		assert_int_equal(hdr->type, PROTO_REPLY);
		assert_int_equal(hdr->seq, seq);
		assert_memory_equal(buf + HDR_LEN, &r, rlen);
	}
	close(sv[0]);
	close(sv[1]);
}

static void test_round_trip(void **state)
{
	static const uint32_t seqs[] = { 0, 1, 0x80000000u, UINT32_MAX };
	(void)state;

	for (size_t i = 0; i < ARRAY_LEN(all_types); i++)
		for (size_t j = 0; j < ARRAY_LEN(seqs); j++)
			round_trip(all_types[i], seqs[j]);
}

static void test_build_matches_send(void **state)
{
	static uint8_t built[PROTO_MAX_MSG], got[PROTO_MAX_MSG];
	union payload p;
	int sv[2], fd, nfds, trunc;
	(void)state;

	seqpacket_pair(sv);
	for (size_t i = 0; i < ARRAY_LEN(all_types); i++) {
		uint32_t len = valid_payload(all_types[i], &p);
		size_t n = proto_build(built, all_types[i], 77, &p, len);
		assert_int_equal(n, HDR_LEN + len);
		assert_int_equal(proto_send(sv[0], all_types[i], 77, &p, len, -1, 0), 0);
		assert_int_equal(proto_recv(sv[1], got, &fd, &nfds, &trunc, 0), (long)n);
		assert_memory_equal(got, built, n);
	}
	close(sv[0]);
	close(sv[1]);
}

/* One rejection (or acceptance) of a packet: a valid packet of type is
 * built, one field poked, its length adjusted, then checked. */
struct check_case {
	const char *name;
	uint16_t type;
	int want_request;
	int nfds;
	size_t off;   /* where to poke val */
	size_t width; /* bytes of val to poke; 0 for none */
	uint64_t val;
	long ndelta; /* added to the valid packet length */
	enum proto_err want;
};

#define FIELD(s, f) HDR_LEN + offsetof(struct s, f), sizeof(((struct s *)0)->f)
#define HDRF(f) offsetof(struct proto_hdr, f), sizeof(((struct proto_hdr *)0)->f)
#define FILL_RES(i) HDR_LEN + offsetof(struct proto_template_fill, reserved) + (i), 1
#define NOPOKE 0, 0, 0
/* Number of descriptors each type must come with. */
#define FD(type) ((type) == PROTO_HELLO)

#define OK(t, req)                                              \
	{                                                       \
#t " valid", t, req, FD(t), NOPOKE, 0, PROTO_OK \
	}
#define POKE(name, t, req, field, v, e)             \
	{                                           \
		name, t, req, FD(t), field, v, 0, e \
	}
#define CUT(name, t, req, d, e)                   \
	{                                         \
		name, t, req, FD(t), NOPOKE, d, e \
	}
#define FDS(name, t, req, n, e)               \
	{                                     \
		name, t, req, n, NOPOKE, 0, e \
	}

static const struct check_case check_cases[] = {
	OK(PROTO_HELLO, 1),
	OK(PROTO_TEMPLATE_FILL, 1),
	OK(PROTO_TEMPLATE_CREATE, 1),
	OK(PROTO_TEMPLATE_RELEASE, 1),
	OK(PROTO_MAP, 1),
	OK(PROTO_UNMAP, 1),
	OK(PROTO_STATS, 1),
	OK(PROTO_UPGRADE, 1),
	OK(PROTO_USAGE, 1),
	OK(PROTO_REPORT, 1),
	OK(PROTO_REPLY, 0),
	OK(PROTO_STATS_REPLY, 0),
	OK(PROTO_USAGE_REPLY, 0),
	OK(PROTO_REPORT_REPLY, 0),
	/* Short: below a header, or below what hdr.len says. */
	CUT("empty", PROTO_MAP, 1, -40, PROTO_ESHORT),
	CUT("half header", PROTO_STATS, 1, -8, PROTO_ESHORT),
	CUT("header minus one", PROTO_STATS, 1, -1, PROTO_ESHORT),
	CUT("header only", PROTO_MAP, 1, -24, PROTO_ESHORT),
	CUT("payload minus one", PROTO_MAP, 1, -1, PROTO_ESHORT),
	CUT("page minus one", PROTO_TEMPLATE_CREATE, 1, -1, PROTO_ESHORT),
	CUT("reply minus one", PROTO_REPLY, 0, -1, PROTO_ESHORT),
	/* Long: past hdr.len, or past PROTO_MAX_MSG. */
	CUT("payload plus one", PROTO_MAP, 1, 1, PROTO_ELONG),
	CUT("stats plus one", PROTO_STATS, 1, 1, PROTO_ELONG),
	CUT("reply plus one", PROTO_STATS_REPLY, 0, 1, PROTO_ELONG),
	CUT("past max", PROTO_TEMPLATE_CREATE, 1, 1, PROTO_ELONG),
	CUT("far past max", PROTO_STATS, 1, PROTO_MAX_MSG, PROTO_ELONG),
	POKE("version 0", PROTO_MAP, 1, HDRF(version), 0, PROTO_EVERSION),
	POKE("version 2", PROTO_MAP, 1, HDRF(version), 2, PROTO_EVERSION),
	POKE("version max", PROTO_REPLY, 0, HDRF(version), 0xffff, PROTO_EVERSION),
	POKE("type 0", PROTO_STATS, 1, HDRF(type), 0, PROTO_ETYPE),
	POKE("type 11", PROTO_STATS, 1, HDRF(type), 11, PROTO_ETYPE),
	POKE("usage flags", PROTO_USAGE, 1, FIELD(proto_usage, flags), 0x4, PROTO_ERESERVED),
	POKE("type 63", PROTO_STATS, 1, HDRF(type), 63, PROTO_ETYPE),
	POKE("type max", PROTO_STATS, 1, HDRF(type), PROTO_TYPE_MAX, PROTO_ETYPE),
	POKE("type ffff", PROTO_REPLY, 0, HDRF(type), 0xffff, PROTO_ETYPE),
	POKE("len 0 for MAP", PROTO_MAP, 1, HDRF(len), 0, PROTO_ELEN),
	POKE("len 23 for MAP", PROTO_MAP, 1, HDRF(len), 23, PROTO_ELEN),
	POKE("len 1 for STATS", PROTO_STATS, 1, HDRF(len), 1, PROTO_ELEN),
	POKE("len 0 for UPGRADE", PROTO_UPGRADE, 1, HDRF(len), 0, PROTO_ELEN),
	POKE("len huge for HELLO", PROTO_HELLO, 1, HDRF(len), UINT32_MAX, PROTO_ELEN),
	POKE("len 8 for REPLY", PROTO_REPLY, 0, HDRF(len), 8, PROTO_ELEN),
	POKE("len of MAP for UNMAP", PROTO_UNMAP, 1, HDRF(len), sizeof(struct proto_map),
	     PROTO_ELEN),
	POKE("flags bit 0", PROTO_MAP, 1, HDRF(flags), 1, PROTO_EFLAGS),
	POKE("flags bit 31", PROTO_HELLO, 1, HDRF(flags), 0x80000000u, PROTO_EFLAGS),
	POKE("reply flags", PROTO_REPLY, 0, HDRF(flags), 2, PROTO_EFLAGS),
	POKE("hello reserved", PROTO_HELLO, 1, FIELD(proto_hello, reserved), 1, PROTO_ERESERVED),
	POKE("hello flag 2", PROTO_HELLO, 1, FIELD(proto_hello, flags), 4, PROTO_ERESERVED),
	POKE("hello flag 31", PROTO_HELLO, 1, FIELD(proto_hello, flags), 0x80000001u,
	     PROTO_ERESERVED),
	POKE("hello no flags", PROTO_HELLO, 1, FIELD(proto_hello, flags), 0, PROTO_OK),
	POKE("fill reserved 0", PROTO_TEMPLATE_FILL, 1, FILL_RES(0), 1, PROTO_ERESERVED),
	POKE("fill reserved 1", PROTO_TEMPLATE_FILL, 1, FILL_RES(1), 0x80, PROTO_ERESERVED),
	POKE("fill reserved 2", PROTO_TEMPLATE_FILL, 1, FILL_RES(2), 1, PROTO_ERESERVED),
	POKE("fill reserved 3", PROTO_TEMPLATE_FILL, 1, FILL_RES(3), 1, PROTO_ERESERVED),
	POKE("fill reserved 4", PROTO_TEMPLATE_FILL, 1, FILL_RES(4), 1, PROTO_ERESERVED),
	POKE("fill reserved 5", PROTO_TEMPLATE_FILL, 1, FILL_RES(5), 1, PROTO_ERESERVED),
	POKE("fill reserved 6", PROTO_TEMPLATE_FILL, 1, FILL_RES(6), 0xff, PROTO_ERESERVED),
	POKE("fill byte 0", PROTO_TEMPLATE_FILL, 1, FIELD(proto_template_fill, byte), 0, PROTO_OK),
	POKE("release reserved", PROTO_TEMPLATE_RELEASE, 1, FIELD(proto_template_release, reserved),
	     1, PROTO_ERESERVED),
	POKE("map flags", PROTO_MAP, 1, FIELD(proto_map, flags), 1, PROTO_ERESERVED),
	POKE("map flag 31", PROTO_MAP, 1, FIELD(proto_map, flags), 0x80000000u, PROTO_ERESERVED),
	POKE("report reserved", PROTO_REPORT, 1, FIELD(proto_report, reserved), 1, PROTO_ERESERVED),
	POKE("upgrade flags", PROTO_UPGRADE, 1, FIELD(proto_upgrade, flags), 1, PROTO_ERESERVED),
	POKE("upgrade reserved", PROTO_UPGRADE, 1, FIELD(proto_upgrade, reserved), 0x100,
	     PROTO_ERESERVED),
	FDS("hello without fd", PROTO_HELLO, 1, 0, PROTO_EFD_MISSING),
	FDS("hello two fds", PROTO_HELLO, 1, 2, PROTO_EFD_MANY),
	FDS("map with fd", PROTO_MAP, 1, 1, PROTO_EFD_UNEXPECTED),
	FDS("stats with fd", PROTO_STATS, 1, 1, PROTO_EFD_UNEXPECTED),
	FDS("upgrade with fd", PROTO_UPGRADE, 1, 1, PROTO_EFD_UNEXPECTED),
	FDS("create two fds", PROTO_TEMPLATE_CREATE, 1, 2, PROTO_EFD_MANY),
	FDS("reply with fd", PROTO_REPLY, 0, 1, PROTO_EFD_UNEXPECTED),
	FDS("stats reply with fd", PROTO_STATS_REPLY, 0, 1, PROTO_EFD_UNEXPECTED),
};

/* Host order, as on the wire. */
static void poke(uint8_t *buf, size_t off, size_t width, uint64_t val)
{
	uint8_t u8 = (uint8_t)val;
	uint16_t u16 = (uint16_t)val;
	uint32_t u32 = (uint32_t)val;

	switch (width) {
	case 1:
		memcpy(buf + off, &u8, 1);
		break;
	case 2:
		memcpy(buf + off, &u16, 2);
		break;
	case 4:
		memcpy(buf + off, &u32, 4);
		break;
	case 8:
		memcpy(buf + off, &val, 8);
		break;
	default:
		fail_msg("bad poke width %zu", width);
	}
}

static void run_check_case(const struct check_case *c)
{
	/* Room for packets past PROTO_MAX_MSG. */
	static uint8_t buf[2 * PROTO_MAX_MSG];
	const struct proto_hdr *hdr = NULL;
	union payload p;
	uint32_t len = valid_payload(c->type, &p);

	memset(buf, 0, sizeof(buf));
	size_t n = proto_build(buf, c->type, 5, &p, len);
	if (c->width)
		poke(buf, c->off, c->width, c->val);
	n = (size_t)((long)n + c->ndelta);
	enum proto_err e = proto_check(buf, n, c->nfds, c->want_request, &hdr);
	if (e != c->want)
		fail_msg("%s: got %s, want %s", c->name, proto_err_str(e), proto_err_str(c->want));
	/* The header pointer is only handed out for a valid packet. */
	assert_ptr_equal(hdr, e == PROTO_OK ? (const void *)buf : NULL);
}

static void test_check_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(check_cases); i++)
		run_check_case(&check_cases[i]);
}

/* A reply where a request belongs and a request where a reply belongs. */
static void test_check_direction(void **state)
{
	static uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *hdr;
	union payload p;
	(void)state;

	for (size_t i = 0; i < ARRAY_LEN(all_types); i++) {
		uint16_t t = all_types[i];
		size_t n = proto_build(buf, t, 1, &p, valid_payload(t, &p));
		assert_int_equal(proto_check(buf, n, FD(t), !is_request(t), &hdr), PROTO_ETYPE);
	}
}

/* Raw packet that proto_recv must report as truncated: it is bigger than
 * any message, so the daemon cannot have seen all of it. */
static void test_recv_truncated(void **state)
{
	static uint8_t big[PROTO_MAX_MSG + 1], buf[PROTO_MAX_MSG];
	int sv[2], fd, nfds, trunc;
	union payload p;
	(void)state;

	seqpacket_pair(sv);
	proto_build(big, PROTO_TEMPLATE_CREATE, 1, &p, valid_payload(PROTO_TEMPLATE_CREATE, &p));
	assert_int_equal(send(sv[0], big, sizeof(big), 0), (ssize_t)sizeof(big));
	assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0), PROTO_MAX_MSG);
	assert_true(trunc);
	assert_int_equal(fd, -1);
	/* Exactly PROTO_MAX_MSG is not truncated. */
	assert_int_equal(send(sv[0], big, PROTO_MAX_MSG, 0), PROTO_MAX_MSG);
	assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0), PROTO_MAX_MSG);
	assert_false(trunc);
	close(sv[0]);
	close(sv[1]);
}

/* Packets malformed by a raw sender survive the socket as they are, and
 * proto_check rejects what proto_recv got. */
static void test_recv_malformed(void **state)
{
	static uint8_t pkt[PROTO_MAX_MSG], buf[PROTO_MAX_MSG];
	static const struct {
		size_t len;
		enum proto_err want;
	} cases[] = {
		{ 3, PROTO_ESHORT },
		{ MAP_PKT - 1, PROTO_ESHORT },
		{ MAP_PKT + 1, PROTO_ELONG },
	};
	const struct proto_hdr *hdr;
	int sv[2], fd, nfds, trunc;
	union payload p;
	(void)state;

	seqpacket_pair(sv);
	assert_int_equal(proto_build(pkt, PROTO_MAP, 1, &p, valid_payload(PROTO_MAP, &p)), MAP_PKT);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		size_t m = cases[i].len;
		assert_int_equal(send(sv[0], pkt, m, 0), (ssize_t)m);
		assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0), (long)m);
		assert_false(trunc);
		assert_int_equal(proto_check(buf, m, nfds, 1, &hdr), cases[i].want);
	}
	close(sv[0]);
	close(sv[1]);
}

static void test_recv_fd_rules(void **state)
{
	static uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *hdr;
	int sv[2], fd, nfds, trunc;
	union payload p;
	(void)state;

	seqpacket_pair(sv);
	uint32_t len = valid_payload(PROTO_HELLO, &p);
	assert_int_equal(proto_send(sv[0], PROTO_HELLO, 1, &p, len, -1, 0), 0);
	long n = proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0);
	assert_int_equal(nfds, 0);
	assert_int_equal(fd, -1);
	assert_int_equal(proto_check(buf, (size_t)n, nfds, 1, &hdr), PROTO_EFD_MISSING);

	len = valid_payload(PROTO_MAP, &p);
	assert_int_equal(proto_send(sv[0], PROTO_MAP, 2, &p, len, sv[0], 0), 0);
	n = proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0);
	assert_int_equal(nfds, 1);
	assert_true(fd >= 0);
	assert_same_file(fd, sv[0]);
	assert_int_equal(proto_check(buf, (size_t)n, nfds, 1, &hdr), PROTO_EFD_UNEXPECTED);
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

/* sendmsg a HELLO with nfds copies of fd in one SCM_RIGHTS message. */
static void send_fds(int sock, int fd, int nfds)
{
	static uint8_t pkt[PROTO_MAX_MSG];
	int fds[PROTO_SEND_FDS_MAX];
	union payload p;
	size_t n = proto_build(pkt, PROTO_HELLO, 1, &p, valid_payload(PROTO_HELLO, &p));
	struct iovec iov = { .iov_base = pkt, .iov_len = n };

	assert_true(nfds <= (int)PROTO_SEND_FDS_MAX);
	for (int i = 0; i < nfds; i++)
		fds[i] = fd;
	assert_int_equal(proto_sendmsg_fds(sock, &iov, 1, fds, (unsigned)nfds, 0), (long)n);
}

/* Every descriptor a message can carry (SCM_MAX_FD) is received: the
 * kernel never drops one for lack of room (its last close would then run
 * in the receiving thread: a uffd's takes its owner's mmap_lock).
 * proto_recv_fds hands them all over; proto_recv keeps the first and
 * closes the others, and none stays open. */
static void test_recv_many_fds(void **state)
{
	static uint8_t buf[PROTO_MAX_MSG];
	static const int cases[] = { 2, 3, 8, 9, 16, (int)PROTO_RECV_FDS_MAX };
	const struct proto_hdr *hdr;
	int sv[2], fd, fds[PROTO_RECV_FDS_MAX], nfds, trunc;
	(void)state;

	seqpacket_pair(sv);
	int file = memfd_create("proto-test", MFD_CLOEXEC);
	assert_true(file >= 0);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		int before = count_fds();
		send_fds(sv[0], file, cases[i]);
		long n = proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0);
		assert_true(n > 0);
		assert_int_equal(nfds, cases[i]);
		assert_int_equal(trunc, 0);
		assert_same_file(fd, file);
		assert_int_equal(count_fds(), before + 1);
		assert_int_equal(proto_check(buf, (size_t)n, nfds, 1, &hdr), PROTO_EFD_MANY);
		close(fd);
		assert_int_equal(count_fds(), before);

		send_fds(sv[0], file, cases[i]);
		assert_int_equal(proto_recv_fds(sv[1], buf, fds, &nfds, &trunc, 0), n);
		assert_int_equal(nfds, cases[i]);
		assert_int_equal(trunc, 0);
		assert_int_equal(count_fds(), before + cases[i]);
		for (int k = 0; k < nfds; k++) {
			assert_same_file(fds[k], file);
			close(fds[k]);
		}
	}
	close(file);
	close(sv[0]);
	close(sv[1]);
}

static void test_send_too_big(void **state)
{
	static uint8_t payload[PROTO_MAX_MSG + 1];
	static uint8_t buf[PROTO_MAX_MSG];
	int sv[2], fd, nfds, trunc;
	(void)state;

	seqpacket_pair(sv);
	assert_int_equal(proto_send(sv[0], PROTO_TEMPLATE_CREATE, 1, payload,
				    PROTO_MAX_MSG - HDR_LEN + 1, -1, 0),
			 -EMSGSIZE);
	assert_int_equal(proto_send(sv[0], PROTO_TEMPLATE_CREATE, 1, payload, PROTO_MAX_MSG, -1, 0),
			 -EMSGSIZE);
	assert_int_equal(proto_send(sv[0], PROTO_TEMPLATE_CREATE, 1, payload, UINT32_MAX, -1, 0),
			 -EMSGSIZE);
	/* Nothing went out; the largest legal payload does. */
	assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, MSG_DONTWAIT), -EAGAIN);
	assert_int_equal(proto_send(sv[0], PROTO_TEMPLATE_CREATE, 1, payload,
				    PROTO_MAX_MSG - HDR_LEN, -1, 0),
			 0);
	assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0), PROTO_MAX_MSG);
	close(sv[0]);
	close(sv[1]);
}

/* SIGPIPE is blocked rather than caught, so that a raised one stays
 * pending where the test can see it, without a global flag. Linux raises
 * it only for stream sockets, so the SOCK_STREAM case is the one that
 * proves MSG_NOSIGNAL; the SOCK_SEQPACKET one is what the daemon uses. */
static void test_send_closed_peer(void **state)
{
	static const int types[] = { SOCK_SEQPACKET, SOCK_STREAM };
	sigset_t sigpipe, old, pending;
	int rc[ARRAY_LEN(types)], raised = 0, sig;
	(void)state;

	sigemptyset(&sigpipe);
	sigaddset(&sigpipe, SIGPIPE);
	assert_int_equal(sigprocmask(SIG_BLOCK, &sigpipe, &old), 0);
	for (size_t i = 0; i < ARRAY_LEN(types); i++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, types[i] | SOCK_CLOEXEC, 0, sv), 0);
		close(sv[1]);
		rc[i] = proto_send(sv[0], PROTO_STATS, 1, NULL, 0, -1, 0);
		close(sv[0]);
		sigpending(&pending);
		/* Consumed, so that unblocking cannot kill the test run. */
		if (sigismember(&pending, SIGPIPE) && sigwait(&sigpipe, &sig) == 0)
			raised++;
	}
	assert_int_equal(sigprocmask(SIG_SETMASK, &old, NULL), 0);
	assert_int_equal(raised, 0);
	for (size_t i = 0; i < ARRAY_LEN(types); i++)
		assert_int_equal(rc[i], -EPIPE);
}

static void test_recv_shutdown(void **state)
{
	static uint8_t buf[PROTO_MAX_MSG];
	int sv[2], fd, nfds, trunc;
	(void)state;

	seqpacket_pair(sv);
	close(sv[0]);
	assert_int_equal(proto_recv(sv[1], buf, &fd, &nfds, &trunc, 0), 0);
	assert_int_equal(fd, -1);
	assert_int_equal(nfds, 0);
	close(sv[1]);
}

static void test_names(void **state)
{
	(void)state;
	for (int e = 0; e < PROTO_ERR_COUNT; e++)
		assert_string_not_equal(proto_err_str((enum proto_err)e), "unknown error");
	assert_string_equal(proto_err_str(PROTO_ERR_COUNT), "unknown error");
	assert_string_equal(proto_err_str((enum proto_err) - 1), "unknown error");
	for (size_t i = 0; i < ARRAY_LEN(all_types); i++)
		assert_string_not_equal(proto_type_name(all_types[i]), "?");
	assert_string_equal(proto_type_name(0), "?");
	assert_string_equal(proto_type_name(PROTO_TYPE_MAX), "?");
	assert_int_equal(proto_payload_len(0), -1);
	assert_int_equal(proto_payload_len(PROTO_TYPE_MAX), -1);
}

/* UPGRADE and USAGE were appended: every older type keeps its number and
 * its payload length, so that old clients and old daemons still understand
 * each other. */
static void test_type_numbers(void **state)
{
	static const struct {
		uint16_t type;
		long len;
	} wire[] = {
		{ PROTO_HELLO, 16 },
		{ PROTO_TEMPLATE_FILL, 8 },
		{ PROTO_TEMPLATE_CREATE, 4096 },
		{ PROTO_TEMPLATE_RELEASE, 8 },
		{ PROTO_MAP, 24 },
		{ PROTO_UNMAP, 16 },
		{ PROTO_STATS, 0 },
		{ PROTO_UPGRADE, 8 },
		{ PROTO_USAGE, 8 },
		{ PROTO_REPORT, 8 },
		{ PROTO_REPLY, 16 },
		{ PROTO_STATS_REPLY, 8 + 8 * PROTO_STATS_MAX },
		{ PROTO_USAGE_REPLY, 416 },
		{ PROTO_REPORT_REPLY, 4080 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(wire); i++) {
		assert_int_equal(wire[i].type, i < 10 ? i + 1 : 64 + (i - 10));
		assert_int_equal(proto_payload_len(wire[i].type), wire[i].len);
	}
	assert_int_equal(PROTO_VERSION, 1);
	assert_string_equal(proto_type_name(PROTO_UPGRADE), "UPGRADE");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),     cmocka_unit_test(test_build_matches_send),
		cmocka_unit_test(test_check_table),    cmocka_unit_test(test_check_direction),
		cmocka_unit_test(test_recv_truncated), cmocka_unit_test(test_recv_malformed),
		cmocka_unit_test(test_recv_fd_rules),  cmocka_unit_test(test_recv_many_fds),
		cmocka_unit_test(test_send_too_big),   cmocka_unit_test(test_send_closed_peer),
		cmocka_unit_test(test_recv_shutdown),  cmocka_unit_test(test_names),
		cmocka_unit_test(test_type_numbers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
