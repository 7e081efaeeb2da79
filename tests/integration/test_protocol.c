/* The wire protocol at the socket level, against a real refpaged: bad
 * input closes that client (with an error reply when the daemon can
 * parse a seq) and leaks nothing; a well-formed request the daemon cannot
 * honour gets an error reply and the session goes on. After every case a
 * well-behaved client of the same daemon still works. */
#include <errno.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define RECV_S 5.0

struct fx {
	struct h_daemon d;
	rp_client *c; /* the well-behaved client */
	uint32_t aa;
	uint8_t *live;    /* its mapping, alive across every case */
	size_t next_live; /* next page of it no case has read yet */
	int ok;
	/* Per case. */
	int fds0;
	uint64_t closed0;
};

static int group_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	*state = NULL;
	if (!fx || h_session_open(&fx->d, NULL, &fx->c, 0xAA, &fx->aa) < 0) {
		free(fx);
		return -1;
	}
	if ((fx->live = rp_map(fx->c, NULL, 64 * PAGE, RW, 0, fx->aa)) == MAP_FAILED) {
		fprintf(stderr, "setup: rp_map: %s\n", strerror(errno));
		h_session_close(&fx->d, fx->c, 0, 0);
		free(fx);
		return -1;
	}
	memset(fx->live, 0x11, PAGE);
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx)
		return 0; /* the setup failed, and said why */
	rp_unmap(fx->c, fx->live, 64 * PAGE);
	int r = h_session_close(&fx->d, fx->c, 1, 0);
	free(fx);
	return r;
}

static uint64_t closed_count(struct fx *fx)
{
	struct h_stats s;

	assert_int_equal(h_stats_read(fx->c, &s), 0);
	return h_stat(&s, "clients_closed_bad_input");
}

static int test_setup(void **state)
{
	struct fx *fx = *state;

	/* At rest: only the good client (the harness's start-up probe
	 * connection may still be closing). */
	const struct h_want idle[] = { { "clients", 1 }, { "processes", 1 } };

	fx->ok = 0;
	if (h_wait_stats(fx->c, idle, 2, H_DEADLINE_S) < 0)
		return -1;
	h_daemon_mark_log(&fx->d);
	fx->fds0 = h_count_fds(fx->d.pid);
	fx->closed0 = closed_count(fx);
	return fx->fds0 > 0 ? 0 : -1;
}

static int test_teardown(void **state)
{
	struct fx *fx = *state;

	return h_test_end(&fx->d, fx->ok);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, test_setup, test_teardown)

/* --- exchanges ------------------------------------------------------------------ */

static int dial(struct fx *fx)
{
	int s = h_dial(fx->d.sock);

	if (s < 0)
		fail_msg("connect %s: %s", fx->d.sock, strerror(-s));
	return s;
}

/* The next packet is a REPLY to seq with status want. */
static struct proto_reply expect_reply(int s, uint32_t seq, int32_t want)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	struct proto_hdr h;
	struct proto_reply r;
	long n = h_recv(s, buf, sizeof(buf), RECV_S);

	if (n < 0 || n == 0)
		fail_msg("no reply to seq %u (%s)", seq, n == 0 ? "closed" : strerror((int)-n));
	assert_int_equal(n, sizeof(h) + sizeof(r));
	memcpy(&h, buf, sizeof(h));
	memcpy(&r, buf + sizeof(h), sizeof(r));
	assert_int_equal(h.version, PROTO_VERSION);
	assert_int_equal(h.type, PROTO_REPLY);
	assert_int_equal(h.seq, seq);
	if (r.status != want)
		fail_msg("seq %u: status %d (%s), want %d (%s)", seq, r.status, strerror(-r.status),
			 want, strerror(-want));
	return r;
}

static void expect_stats(int s, uint32_t seq)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	struct proto_hdr h;
	struct proto_stats_reply r;

	assert_int_equal(h_send(s, PROTO_STATS, seq, NULL, 0, -1), 0);
	long n = h_recv(s, buf, sizeof(buf), RECV_S);
	if (n <= 0)
		fail_msg("no STATS reply (%s)", n == 0 ? "closed" : strerror((int)-n));
	assert_int_equal(n, sizeof(h) + sizeof(r));
	memcpy(&h, buf, sizeof(h));
	memcpy(&r, buf + sizeof(h), sizeof(r));
	assert_int_equal(h.type, PROTO_STATS_REPLY);
	assert_int_equal(h.seq, seq);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.count, PROTO_STAT_COUNT);
}

static void hello(int s, uint32_t seq)
{
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE, .pid = (uint32_t)getpid() };
	int uffd = h_make_uffd();

	assert_true(uffd >= 0);
	assert_int_equal(h_send(s, PROTO_HELLO, seq, &h, sizeof(h), uffd), 0);
	/* As the library does: the daemon holds the only reference. */
	close(uffd);
	struct proto_reply r = expect_reply(s, seq, 0);
	assert_int_equal(r.id, PROTO_VERSION);
}

static uint32_t template_fill(int s, uint32_t seq, uint8_t b)
{
	struct proto_template_fill f = { .byte = b };

	assert_int_equal(h_send(s, PROTO_TEMPLATE_FILL, seq, &f, sizeof(f), -1), 0);
	struct proto_reply r = expect_reply(s, seq, 0);
	assert_true(r.id != 0);
	return r.id;
}

static void map_expect(int s, uint32_t seq, uint64_t addr, uint64_t len, uint32_t id, int32_t want)
{
	struct proto_map m = { .addr = addr, .len = len, .id = id };

	assert_int_equal(h_send(s, PROTO_MAP, seq, &m, sizeof(m), -1), 0);
	expect_reply(s, seq, want);
}

/* The end of every case: the session is closed (or still open, and
 * answers STATS); once we hang up, the daemon holds no more fds than
 * before, counted the close, and the good client still works. */
static void case_end(struct fx *fx, int s, int closes)
{
	if (closes)
		assert_true(h_wait_closed(s, RECV_S));
	else
		expect_stats(s, 999);
	close(s);
	if (h_wait_fds(fx->d.pid, fx->fds0, H_DEADLINE_S) < 0)
		fail_msg("the daemon leaked descriptors in this case");
	struct h_want w = { "clients_closed_bad_input", fx->closed0 + (uint64_t)closes };
	assert_int_equal(h_wait_stats(fx->c, &w, 1, H_DEADLINE_S), 0);
	if (closes)
		assert_true(h_daemon_log_has(&fx->d, "closing client"));
	assert_true(h_daemon_alive(&fx->d));
	/* The well-behaved client: its old mapping and a new one. */
	assert_int_equal(h_first_not(fx->live, PAGE, 0x11), -1);
	uint8_t *p = rp_map(fx->c, NULL, 8 * PAGE, RW, 0, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	assert_int_equal(h_first_not(p + 5 * PAGE, PAGE, 0xAA), -1);
	assert_int_equal(rp_unmap(fx->c, p, 8 * PAGE), 0);
	/* Its untouched pages are still served. */
	assert_true(++fx->next_live < 64);
	assert_int_equal(h_first_not(fx->live + fx->next_live * PAGE, PAGE, 0xAA), -1);
	fx->ok = 1;
}

/* --- bad input: the session is closed ---------------------------------------------- */

static void test_wrong_version(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	struct proto_hdr h = { .version = PROTO_VERSION + 1, .type = PROTO_STATS, .seq = 7 };

	assert_int_equal(h_send_raw(s, &h, NULL, 0, -1), 0);
	expect_reply(s, 7, -EPROTO);
	case_end(fx, s, 1);
}

static void test_unknown_type(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	struct proto_hdr h = { .version = PROTO_VERSION, .type = 42, .seq = 8 };

	assert_int_equal(h_send_raw(s, &h, NULL, 0, -1), 0);
	expect_reply(s, 8, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_reply_as_request(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	struct proto_reply r = { 0 };

	assert_int_equal(h_send(s, PROTO_REPLY, 9, &r, sizeof(r), -1), 0);
	expect_reply(s, 9, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_wrong_length(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	uint32_t junk = 0;

	assert_int_equal(h_send(s, PROTO_STATS, 10, &junk, sizeof(junk), -1), 0);
	expect_reply(s, 10, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_short_packet(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	uint8_t half[8] = { 1, 0, 7, 0 };

	assert_int_equal(send(s, half, sizeof(half), MSG_NOSIGNAL), (ssize_t)sizeof(half));
	case_end(fx, s, 1);
}

static void test_hello_pipe_fd(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE };
	int s = dial(fx), p[2];

	assert_int_equal(pipe(p), 0);
	assert_int_equal(h_send(s, PROTO_HELLO, 11, &h, sizeof(h), p[0]), 0);
	close(p[0]);
	expect_reply(s, 11, -EBADF);
	close(p[1]);
	case_end(fx, s, 1);
}

static void test_hello_eventfd(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE };
	int s = dial(fx), e = eventfd(0, EFD_CLOEXEC);

	/* An anonymous inode too, but not a userfaultfd. */
	assert_true(e >= 0);
	assert_int_equal(h_send(s, PROTO_HELLO, 12, &h, sizeof(h), e), 0);
	close(e);
	expect_reply(s, 12, -EBADF);
	case_end(fx, s, 1);
}

static void test_hello_configured_uffd(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE };
	struct uffdio_api api = { .api = UFFD_API };
	int s = dial(fx), u = h_make_uffd();

	/* Already through UFFDIO_API: the daemon's handshake must fail. */
	assert_true(u >= 0);
	assert_int_equal(ioctl(u, UFFDIO_API, &api), 0);
	assert_int_equal(h_send(s, PROTO_HELLO, 13, &h, sizeof(h), u), 0);
	close(u);
	struct proto_reply r;
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	long n = h_recv(s, buf, sizeof(buf), RECV_S);
	assert_int_equal(n, sizeof(struct proto_hdr) + sizeof(r));
	memcpy(&r, buf + sizeof(struct proto_hdr), sizeof(r));
	assert_true(r.status < 0);
	case_end(fx, s, 1);
}

static void test_hello_without_fd(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE };
	int s = dial(fx);

	assert_int_equal(h_send(s, PROTO_HELLO, 14, &h, sizeof(h), -1), 0);
	expect_reply(s, 14, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_hello_reserved_flags(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE, .flags = 0x80 };
	int s = dial(fx), u = h_make_uffd();

	assert_true(u >= 0);
	assert_int_equal(h_send(s, PROTO_HELLO, 15, &h, sizeof(h), u), 0);
	close(u);
	expect_reply(s, 15, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_second_hello(void **state)
{
	struct fx *fx = *state;
	struct proto_hello h = { .page_size = PROTO_PAGE_SIZE };
	int s = dial(fx);

	hello(s, 1);
	int u = h_make_uffd();
	assert_true(u >= 0);
	assert_int_equal(h_send(s, PROTO_HELLO, 2, &h, sizeof(h), u), 0);
	close(u);
	expect_reply(s, 2, -EPROTO);
	case_end(fx, s, 1);
}

static void test_fd_on_stats(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx), p[2];

	assert_int_equal(pipe(p), 0);
	assert_int_equal(h_send(s, PROTO_STATS, 16, NULL, 0, p[0]), 0);
	close(p[0]);
	close(p[1]);
	expect_reply(s, 16, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_fd_on_map(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx), p[2];

	hello(s, 1);
	uint32_t id = template_fill(s, 2, 0xAA);
	struct proto_map m = { .addr = (uintptr_t)fx->live, .len = PAGE, .id = id };
	assert_int_equal(pipe(p), 0);
	assert_int_equal(h_send(s, PROTO_MAP, 3, &m, sizeof(m), p[1]), 0);
	close(p[0]);
	close(p[1]);
	expect_reply(s, 3, -EBADMSG);
	case_end(fx, s, 1);
}

static void test_request_before_hello(void **state)
{
	struct fx *fx = *state;
	struct proto_template_fill f = { .byte = 0xAA };
	int s = dial(fx);

	assert_int_equal(h_send(s, PROTO_TEMPLATE_FILL, 17, &f, sizeof(f), -1), 0);
	expect_reply(s, 17, -EPROTO);
	case_end(fx, s, 1);
}

static void test_map_before_hello(void **state)
{
	struct fx *fx = *state;
	struct proto_map m = { .addr = (uintptr_t)fx->live, .len = PAGE, .id = 1 };
	int s = dial(fx);

	assert_int_equal(h_send(s, PROTO_MAP, 18, &m, sizeof(m), -1), 0);
	expect_reply(s, 18, -EPROTO);
	case_end(fx, s, 1);
}

/* --- refused requests: the session goes on ------------------------------------------ */

static void test_stats_before_hello(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);

	expect_stats(s, 19);
	/* And the handshake may still follow. */
	hello(s, 20);
	template_fill(s, 21, 0x5A);
	case_end(fx, s, 0);
}

struct map_case {
	const char *name;
	uint64_t addr_off; /* from the region, or absolute when absolute */
	int absolute;
	uint64_t len;
	int bad_id;
	int32_t want;
};

static const struct map_case map_cases[] = {
	{ "unaligned address", 1, 0, PAGE, 0, -EINVAL },
	{ "unaligned length", 0, 0, PAGE + 1, 0, -EINVAL },
	{ "zero length", 0, 0, 0, 0, -EINVAL },
	{ "kernel address", 0xffffffff80000000ull, 1, PAGE, 0, -EINVAL },
	{ "non-canonical address", 0x0100000000000000ull, 1, PAGE, 0, -EINVAL },
	{ "wrapping range", 0xfffffffffffff000ull, 1, 2 * PAGE, 0, -EINVAL },
	{ "unknown template", 0, 0, PAGE, 1, -EINVAL },
};

static void test_map_refused(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	uint32_t seq = 1;
	const size_t n = 16;

	hello(s, seq++);
	uint32_t id = template_fill(s, seq++, 0xAA);
	uint8_t *region = mmap(NULL, n * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(region, MAP_FAILED);
	for (size_t k = 0; k < sizeof(map_cases) / sizeof(map_cases[0]); k++) {
		const struct map_case *mc = &map_cases[k];
		uint64_t addr = mc->absolute ? mc->addr_off : (uintptr_t)region + mc->addr_off;
		printf("  MAP %s: want %d\n", mc->name, mc->want);
		map_expect(s, seq++, addr, mc->len, mc->bad_id ? id + 1000 : id, mc->want);
	}
	/* The real thing works on the same session: our region now reads
	 * the template, served through the uffd this session handed over. */
	map_expect(s, seq++, (uintptr_t)region, n * PAGE, id, 0);
	assert_int_equal(h_first_not(region + 3 * PAGE, PAGE, 0xAA), -1);
	/* Overlaps are refused, whole or partial. */
	map_expect(s, seq++, (uintptr_t)region, n * PAGE, id, -EEXIST);
	map_expect(s, seq++, (uintptr_t)region + 8 * PAGE, 4 * PAGE, id, -EEXIST);
	map_expect(s, seq++, (uintptr_t)region - 4 * PAGE, 8 * PAGE, id, -EEXIST);
	/* Other refusals that leave the session open. */
	struct proto_unmap um = { .addr = (uintptr_t)region + 1, .len = PAGE };
	assert_int_equal(h_send(s, PROTO_UNMAP, seq, &um, sizeof(um), -1), 0);
	expect_reply(s, seq++, -EINVAL);
	struct proto_template_release rel = { .id = id + 1000 };
	assert_int_equal(h_send(s, PROTO_TEMPLATE_RELEASE, seq, &rel, sizeof(rel), -1), 0);
	expect_reply(s, seq++, -EINVAL);
	/* Still served after all the refusals. */
	assert_int_equal(h_first_not(region + 12 * PAGE, PAGE, 0xAA), -1);
	case_end(fx, s, 0);
	/* The session is gone, its uffd closed: untouched pages of the region
	 * are plain anonymous memory now. */
	assert_int_equal(h_first_not(region + 14 * PAGE, PAGE, 0), -1);
	assert_int_equal(munmap(region, n * PAGE), 0);
}

/* MAP of address space that is not mapped at all: the registration
 * fails, the client hears why, the session goes on. */
static void test_map_unmapped_memory(void **state)
{
	struct fx *fx = *state;
	int s = dial(fx);
	struct proto_map m = { .len = 4 * PAGE };

	hello(s, 1);
	m.id = template_fill(s, 2, 0xAA);
	uint8_t *hole = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(hole, MAP_FAILED);
	assert_int_equal(munmap(hole, 4 * PAGE), 0);
	m.addr = (uintptr_t)hole;
	assert_int_equal(h_send(s, PROTO_MAP, 3, &m, sizeof(m), -1), 0);
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	struct proto_reply r;
	long n = h_recv(s, buf, sizeof(buf), RECV_S);
	assert_int_equal(n, sizeof(struct proto_hdr) + sizeof(r));
	memcpy(&r, buf + sizeof(struct proto_hdr), sizeof(r));
	assert_true(r.status < 0);
	/* Nothing was left in the daemon's table for it: once memory is
	 * there, the same MAP succeeds and serves it. */
	uint8_t *p = mmap(hole, 4 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			  0);
	assert_ptr_equal(p, hole);
	map_expect(s, 4, (uintptr_t)p, 4 * PAGE, m.id, 0);
	assert_int_equal(h_first_not(p + PAGE, PAGE, 0xAA), -1);
	/* Memory another uffd (the good client's) has registered: the kernel
	 * refuses a second one. */
	map_expect(s, 5, (uintptr_t)fx->live + 32 * PAGE, PAGE, m.id, -EBUSY);
	case_end(fx, s, 0);
	assert_int_equal(munmap(p, 4 * PAGE), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_wrong_version),    T(test_unknown_type),
		T(test_reply_as_request), T(test_wrong_length),
		T(test_short_packet),     T(test_hello_pipe_fd),
		T(test_hello_eventfd),    T(test_hello_configured_uffd),
		T(test_hello_without_fd), T(test_hello_reserved_flags),
		T(test_second_hello),     T(test_fd_on_stats),
		T(test_fd_on_map),        T(test_request_before_hello),
		T(test_map_before_hello), T(test_stats_before_hello),
		T(test_map_refused),      T(test_map_unmapped_memory),
	};
	char why[256];

	if (!h_uffd_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	return cmocka_run_group_tests_name("protocol", tests, group_setup, group_teardown);
}
