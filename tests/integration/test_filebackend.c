/* The file backend of librefpage (#16): refpages from a sealed memfd of
 * this process mapped MAP_PRIVATE in 4 MiB pieces, with no daemon.
 *
 * What it must do that a user-mode-only userfaultfd cannot: kernel-mode
 * accesses into untouched pages (read, write, readv, recv, mlock,
 * O_DIRECT, process_vm_readv) succeed and see the template; reads cost no
 * anonymous memory; rp_remap grows and moves mappings of many pieces;
 * fork, threads. Then the mixed cases: a root parent on the uffd backend
 * whose fork child drops to uid 65534 (new mappings on the file backend,
 * inherited ones still served by the daemon), and uid 65534 itself (auto
 * picks the file backend; forcing uffd gets EFAULT, which is why).
 *
 * Most cases need no daemon: the group's client connects with
 * RP_CONNECT_FILE to a socket that does not exist. The mixed cases start
 * a private daemon of their own. Checks that must run in a fork child
 * report through the exit status (cmocka asserts belong to the parent). */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include "harness.h"
#include "tutil.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define MIB (1024u * 1024u)
#define CHUNK (4 * MIB) /* RP_FILE_CHUNK: one piece of a mapping */

struct fx {
	rp_client *c; /* RP_CONNECT_FILE, no daemon */
	uint32_t aa;  /* every byte 0xAA */
	uint32_t arb; /* a non-uniform page: arb_page */
	uint8_t arb_page[PAGE];
	char dir[64]; /* scratch files (on the disk, for O_DIRECT) */
};

/* A check in a fork child: says which and exits 1. */
#define CK(cond)                                                                     \
	do {                                                                         \
		if (!(cond)) {                                                       \
			dprintf(STDERR_FILENO, "child %d: line %d: %s (errno %s)\n", \
				(int)getpid(), __LINE__, #cond, strerror(errno));    \
			_exit(1);                                                    \
		}                                                                    \
	} while (0)

/* The exit status of a child, 128 + signal if it died of one. */
static int child_exit(pid_t pid)
{
	int st = h_reap(pid, 60);

	if (st == -1) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		return -1;
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int is_page(const uint8_t *p, const uint8_t *want)
{
	return memcmp(p, want, PAGE) == 0;
}

static int all(const uint8_t *p, size_t n, uint8_t b)
{
	return h_first_not(p, n, b) < 0;
}

/* Every page of [p, p + n) mapped (1) or none (0): mincore's ENOMEM. */
static int is_mapped(const void *p, size_t n)
{
	unsigned char vec[64];

	if (n > sizeof(vec) * PAGE)
		n = sizeof(vec) * PAGE;
	return mincore((void *)p, n, vec) == 0;
}

/* --- fixtures ------------------------------------------------------------- */

static int group_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	int r;

	*state = NULL;
	if (!fx)
		return -1;
	tu_fill_bytes(fx->arb_page, PAGE, 16);
	/* A scratch directory on a disk filesystem: /var/tmp, not a tmpfs
	 * (no O_DIRECT there). */
	strcpy(fx->dir, "/var/tmp/rp-fbtest.XXXXXX");
	if (!mkdtemp(fx->dir)) {
		fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
		free(fx);
		return -1;
	}
	r = rp_connect_opts("/nonexistent/refpaged.sock", RP_CONNECT_FILE, &fx->c);
	if (r == 0)
		r = rp_template_fill(fx->c, 0xAA, &fx->aa);
	if (r == 0)
		r = rp_template_create(fx->c, fx->arb_page, &fx->arb);
	if (r < 0) {
		fprintf(stderr, "file backend set-up: %s\n", strerror(-r));
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx)
		return 0;
	rp_disconnect(fx->c);
	rmdir(fx->dir);
	free(fx);
	return 0;
}

/* A file in the scratch directory holding n bytes of tu_fill_bytes(seed),
 * also returned in *data (malloc'd); open for reading with extra flags. */
static int scratch_file(struct fx *fx, const char *name, size_t n, uint32_t seed, int oflags,
			uint8_t **data)
{
	char path[128];
	uint8_t *d = malloc(n);
	int fd;

	assert_non_null(d);
	tu_fill_bytes(d, n, seed);
	snprintf(path, sizeof(path), "%s/%s", fx->dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, d, n), (ssize_t)n);
	assert_int_equal(fsync(fd), 0);
	close(fd);
	fd = open(path, O_RDONLY | O_CLOEXEC | oflags);
	unlink(path);
	if (data)
		*data = d;
	else
		free(d);
	return fd; /* -1 and errno: the caller decides (O_DIRECT) */
}

/* --- no daemon: the basics -------------------------------------------------- */

static void test_no_daemon_semantics(void **state)
{
	struct fx *fx = *state;
	uint64_t v[4];

	assert_int_equal(rp_backend(fx->c), RP_BACKEND_FILE);
	assert_string_equal(rp_backend_name(rp_backend(fx->c)), "file");
	assert_int_equal(rp_alive(fx->c), 1);
	assert_int_equal(rp_stats(fx->c, v, NULL, 4), -EOPNOTSUPP);

	/* Template reads: the fill and the arbitrary page. */
	uint8_t *a = rp_map(fx->c, NULL, 16 * PAGE, RW, MAP_PRIVATE, fx->aa);
	uint8_t *b = rp_map(fx->c, NULL, 8 * PAGE, RW, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(a, MAP_FAILED);
	assert_ptr_not_equal(b, MAP_FAILED);
	assert_true(all(a, 16 * PAGE, 0xAA));
	for (int i = 0; i < 8; i++)
		assert_true(is_page(b + i * PAGE, fx->arb_page));

	/* Write, read back; the neighbours stay the template. */
	memset(a + 3 * PAGE, 0x33, PAGE);
	memset(a + 7 * PAGE + 100, 0x77, 10);
	b[2 * PAGE + 5] = 0x5A;
	assert_true(all(a + 3 * PAGE, PAGE, 0x33));
	assert_true(all(a + 2 * PAGE, PAGE, 0xAA));
	assert_true(all(a + 4 * PAGE, PAGE, 0xAA));
	assert_true(all(a + 7 * PAGE + 100, 10, 0x77));
	assert_true(all(a + 7 * PAGE, 100, 0xAA));
	assert_int_equal(b[2 * PAGE + 5], 0x5A);
	assert_int_equal(memcmp(b + 2 * PAGE, fx->arb_page, 5), 0);
	assert_true(is_page(b + PAGE, fx->arb_page));
	assert_true(is_page(b + 3 * PAGE, fx->arb_page));

	/* MADV_DONTNEED returns the template. */
	assert_int_equal(madvise(a + 3 * PAGE, PAGE, MADV_DONTNEED), 0);
	assert_int_equal(madvise(b, 8 * PAGE, MADV_DONTNEED), 0);
	assert_true(all(a + 3 * PAGE, PAGE, 0xAA));
	assert_true(is_page(b + 2 * PAGE, fx->arb_page));

	/* Partial unmap: the hole is gone, the neighbours keep their bytes. */
	memset(a + 4 * PAGE, 0x44, PAGE);
	assert_int_equal(rp_unmap(fx->c, a + 5 * PAGE, 2 * PAGE), 0);
	assert_false(is_mapped(a + 5 * PAGE, PAGE));
	assert_false(is_mapped(a + 6 * PAGE, PAGE));
	assert_true(all(a + 4 * PAGE, PAGE, 0x44));
	assert_true(all(a + 7 * PAGE + 100, 10, 0x77));
	assert_true(all(a + 8 * PAGE, 8 * PAGE, 0xAA));
	/* and plain munmap of the first page */
	assert_int_equal(munmap(a, PAGE), 0);
	assert_true(all(a + PAGE, 3 * PAGE, 0xAA));

	assert_int_equal(rp_unmap(fx->c, a + PAGE, 4 * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, a + 7 * PAGE, 9 * PAGE), 0);
	assert_int_equal(rp_unmap(fx->c, b, 8 * PAGE), 0);
}

/* --- kernel-mode accesses into untouched pages ---------------------------- */

static void test_read_write_syscalls(void **state)
{
	struct fx *fx = *state;
	const size_t len = 2 * CHUNK;
	const size_t at = CHUNK - 8 * PAGE - 100, n = 16 * PAGE; /* across two pieces */
	uint8_t *data, *back = malloc(n);

	assert_non_null(back);
	uint8_t *p = rp_map(fx->c, NULL, len, RW, MAP_PRIVATE, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);

	/* read(2) from a file into untouched pages */
	int fd = scratch_file(fx, "read", n, 1, 0, &data);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, p + at, n), (ssize_t)n);
	assert_int_equal(memcmp(p + at, data, n), 0);
	assert_true(all(p + at - PAGE, PAGE, 0xAA));
	assert_true(all(p + at + n, PAGE, 0xAA));
	close(fd);
	free(data);

	/* write(2) out of untouched pages (of the arbitrary template): the
	 * other end gets the template */
	uint8_t *q = rp_map(fx->c, NULL, len, PROT_READ, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(q, MAP_FAILED);
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	fd = memfd_create("out", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, q + CHUNK - 2 * PAGE, 4 * PAGE), (ssize_t)(4 * PAGE));
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pread(fd, back, PAGE, (off_t)i * PAGE), (ssize_t)PAGE);
		assert_true(is_page(back, fx->arb_page));
	}
	close(fd);

	/* readv into two untouched pages far apart */
	assert_int_equal(write(pfd[1], "readv-one|readv-two", 19), 19);
	struct iovec iov[2] = {
		{ .iov_base = p + 40 * PAGE + 10, .iov_len = 10 },
		{ .iov_base = p + CHUNK + 40 * PAGE, .iov_len = 9 },
	};
	assert_int_equal(readv(pfd[0], iov, 2), 19);
	assert_memory_equal(p + 40 * PAGE + 10, "readv-one|", 10);
	assert_memory_equal(p + CHUNK + 40 * PAGE, "readv-two", 9);
	assert_true(all(p + 40 * PAGE, 10, 0xAA));
	assert_true(all(p + 40 * PAGE + 20, PAGE - 20, 0xAA));
	assert_true(all(p + CHUNK + 40 * PAGE + 9, PAGE - 9, 0xAA));
	close(pfd[0]);
	close(pfd[1]);

	/* recv from a socketpair into an untouched page */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	tu_fill_bytes(back, PAGE, 7);
	assert_int_equal(send(sv[0], back, PAGE, 0), (ssize_t)PAGE);
	assert_int_equal(recv(sv[1], p + 60 * PAGE, PAGE, MSG_WAITALL), (ssize_t)PAGE);
	assert_true(is_page(p + 60 * PAGE, back));
	assert_true(all(p + 61 * PAGE, PAGE, 0xAA));
	close(sv[0]);
	close(sv[1]);

	free(back);
	assert_int_equal(rp_unmap(fx->c, p, len), 0);
	assert_int_equal(rp_unmap(fx->c, q, len), 0);
}

static void test_mlock(void **state)
{
	struct fx *fx = *state;
	struct rlimit rl;
	const size_t n = 64 * PAGE;

	assert_int_equal(getrlimit(RLIMIT_MEMLOCK, &rl), 0);
	if (geteuid() != 0 && rl.rlim_cur < n) {
		print_message("skipped: RLIMIT_MEMLOCK %llu < %zu\n",
			      (unsigned long long)rl.rlim_cur, n);
		skip();
	}
	uint8_t *p = rp_map(fx->c, NULL, 2 * CHUNK, RW, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(p, MAP_FAILED);
	/* Across the two pieces, none touched before. */
	assert_int_equal(mlock(p + CHUNK - n / 2, n), 0);
	for (size_t i = 0; i < n / PAGE; i++)
		assert_true(is_page(p + CHUNK - n / 2 + i * PAGE, fx->arb_page));
	assert_int_equal(munlock(p + CHUNK - n / 2, n), 0);
	assert_int_equal(rp_unmap(fx->c, p, 2 * CHUNK), 0);
}

static void test_o_direct_read(void **state)
{
	struct fx *fx = *state;
	const size_t n = 64 * PAGE;
	uint8_t *data;

	int fd = scratch_file(fx, "direct", n, 3, O_DIRECT, &data);
	if (fd < 0) {
		int e = errno;
		free(data);
		print_message("skipped: O_DIRECT open in %s: %s\n", fx->dir, strerror(e));
		skip();
	}
	uint8_t *p = rp_map(fx->c, NULL, 2 * CHUNK, RW, MAP_PRIVATE, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	ssize_t r = read(fd, p + CHUNK - n / 2, n); /* page aligned, across two pieces */
	if (r < 0 && errno == EINVAL) {
		close(fd);
		free(data);
		rp_unmap(fx->c, p, 2 * CHUNK);
		print_message("skipped: O_DIRECT read in %s: EINVAL (not supported there)\n",
			      fx->dir);
		skip();
	}
	assert_int_equal(r, (ssize_t)n);
	assert_int_equal(memcmp(p + CHUNK - n / 2, data, n), 0);
	assert_true(all(p + CHUNK - n / 2 - PAGE, PAGE, 0xAA));
	assert_true(all(p + CHUNK + n / 2, PAGE, 0xAA));
	close(fd);
	free(data);
	assert_int_equal(rp_unmap(fx->c, p, 2 * CHUNK), 0);
}

static void test_process_vm_readv(void **state)
{
	struct fx *fx = *state;
	uint8_t *p = rp_map(fx->c, NULL, 8 * PAGE, RW, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p + 5 * PAGE, 0x55, PAGE);
	pid_t parent = getpid();

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The child reads its parent's pages: two untouched, one written. */
		uint8_t *buf = mmap(NULL, 3 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CK(buf != MAP_FAILED);
		struct iovec local = { .iov_base = buf, .iov_len = 3 * PAGE };
		struct iovec remote = { .iov_base = p + 3 * PAGE, .iov_len = 3 * PAGE };
		CK(process_vm_readv(parent, &local, 1, &remote, 1, 0) == (ssize_t)(3 * PAGE));
		CK(is_page(buf, fx->arb_page));
		CK(is_page(buf + PAGE, fx->arb_page));
		CK(all(buf + 2 * PAGE, PAGE, 0x55));
		_exit(0);
	}
	assert_int_equal(child_exit(pid), 0);
	/* The parent's pages are still as they were. */
	assert_true(is_page(p + 3 * PAGE, fx->arb_page));
	assert_true(all(p + 5 * PAGE, PAGE, 0x55));
	assert_int_equal(rp_unmap(fx->c, p, 8 * PAGE), 0);
}

/* --- memory cost --------------------------------------------------------------- */

/* The sum of field (kB) over the VMAs inside [p, p + len), from
 * /proc/self/smaps: the mapping's own, whatever else the process (a
 * sanitizer's runtime, say) allocates meanwhile. */
static long range_kb(const void *p, size_t len, const char *field)
{
	char line[256];
	size_t fl = strlen(field);
	uintptr_t lo = (uintptr_t)p, hi = lo + len;
	long v = 0;
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a >= lo && b <= hi;
		else if (in && !strncmp(line, field, fl) && line[fl] == ':')
			v += strtol(line + fl + 1, NULL, 10);
	}
	fclose(f);
	return v;
}

static void test_rss_read_is_not_anonymous(void **state)
{
	struct fx *fx = *state;
	const int n = 512;                    /* pages: 2 MiB */
	const long slack = 8 * (PAGE / 1024); /* kB: a few pages of anything else */
	uint8_t *p = rp_map(fx->c, NULL, (size_t)n * PAGE, RW, MAP_PRIVATE, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	volatile uint8_t sum = 0;

	long a0 = range_kb(p, (size_t)n * PAGE, "Anonymous");
	assert_true(a0 >= 0);
	for (int i = 0; i < n; i++)
		sum += p[(size_t)i * PAGE];
	long a1 = range_kb(p, (size_t)n * PAGE, "Anonymous");
	print_message("Anonymous %ld -> %ld kB after reading %d pages\n", a0, a1, n);
	assert_true(a1 - a0 <= slack);
	for (int i = 0; i < n; i++)
		p[(size_t)i * PAGE] = (uint8_t)i;
	long a2 = range_kb(p, (size_t)n * PAGE, "Anonymous");
	print_message("Anonymous %ld -> %ld kB after writing them\n", a1, a2);
	assert_true(a2 - a1 >= (long)n * (PAGE / 1024) - slack);
	assert_true(a2 - a1 <= (long)n * (PAGE / 1024) + slack);
	(void)sum;
	assert_int_equal(rp_unmap(fx->c, p, (size_t)n * PAGE), 0);
}

/* --- rp_remap -------------------------------------------------------------------- */

static void test_remap_shrink(void **state)
{
	struct fx *fx = *state;
	uint8_t *p = rp_map(fx->c, NULL, 16 * PAGE, RW, MAP_PRIVATE, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p, 0x01, PAGE);
	memset(p + 15 * PAGE, 0x0F, PAGE);
	assert_ptr_equal(rp_remap(fx->c, p, 16 * PAGE, 8 * PAGE, 0, RW, fx->aa, NULL), p);
	assert_true(all(p, PAGE, 0x01));
	assert_true(all(p + PAGE, 7 * PAGE, 0xAA));
	assert_false(is_mapped(p + 8 * PAGE, PAGE));
	assert_false(is_mapped(p + 15 * PAGE, PAGE));
	assert_int_equal(rp_unmap(fx->c, p, 8 * PAGE), 0);
}

/* A free range of n bytes, with nothing mapped above it for another n. */
static uint8_t *free_range(size_t n)
{
	uint8_t *r = mmap(NULL, 2 * n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_ptr_not_equal(r, MAP_FAILED);
	munmap(r, 2 * n);
	return r;
}

static void test_remap_grow_in_place(void **state)
{
	struct fx *fx = *state;
	uint8_t *at = free_range(32 * PAGE);
	uint8_t *p = rp_map(fx->c, at, 16 * PAGE, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fx->arb);
	assert_ptr_equal(p, at);
	memset(p + PAGE, 0x11, PAGE);
	/* No MREMAP_MAYMOVE: must stay. */
	assert_ptr_equal(rp_remap(fx->c, p, 16 * PAGE, 32 * PAGE, 0, RW, fx->arb, NULL), p);
	assert_true(all(p + PAGE, PAGE, 0x11));
	for (int i = 2; i < 32; i++)
		assert_true(is_page(p + i * PAGE, fx->arb_page));
	memset(p + 31 * PAGE, 0x31, PAGE); /* the grown part is writable */
	assert_true(all(p + 31 * PAGE, PAGE, 0x31));
	assert_int_equal(rp_unmap(fx->c, p, 32 * PAGE), 0);
}

static void test_remap_grow_moves(void **state)
{
	struct fx *fx = *state;
	uint8_t *at = free_range(32 * PAGE);
	uint8_t *p = rp_map(fx->c, at, 16 * PAGE, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fx->aa);
	assert_ptr_equal(p, at);
	/* A mapping right above blocks growth in place. */
	uint8_t *block = mmap(p + 16 * PAGE, PAGE, RW,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	assert_ptr_equal(block, p + 16 * PAGE);
	block[0] = 0xB0;
	memset(p + 2 * PAGE, 0x22, PAGE);

	errno = 0;
	assert_ptr_equal(rp_remap(fx->c, p, 16 * PAGE, 32 * PAGE, 0, RW, fx->aa, NULL), MAP_FAILED);
	assert_int_equal(errno, ENOMEM);
	assert_true(all(p + 2 * PAGE, PAGE, 0x22)); /* the refusal changed nothing */

	uint8_t *q = rp_remap(fx->c, p, 16 * PAGE, 32 * PAGE, MREMAP_MAYMOVE, RW, fx->aa, NULL);
	assert_ptr_not_equal(q, MAP_FAILED);
	assert_ptr_not_equal(q, p);
	assert_true(all(q, 2 * PAGE, 0xAA));
	assert_true(all(q + 2 * PAGE, PAGE, 0x22));
	assert_true(all(q + 3 * PAGE, 29 * PAGE, 0xAA));
	assert_false(is_mapped(p, PAGE));
	assert_false(is_mapped(p + 15 * PAGE, PAGE));
	assert_int_equal(block[0], 0xB0);
	if (block != MAP_FAILED)
		munmap(block, PAGE);
	assert_int_equal(rp_unmap(fx->c, q, 32 * PAGE), 0);
}

static void test_remap_fixed(void **state)
{
	struct fx *fx = *state;
	uint8_t *p = rp_map(fx->c, NULL, 8 * PAGE, RW, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(p, MAP_FAILED);
	/* The chosen address: something mapped there already is replaced. */
	uint8_t *to = mmap(NULL, 12 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_ptr_not_equal(to, MAP_FAILED);
	memset(to, 0xEE, 12 * PAGE);
	memset(p + 7 * PAGE, 0x77, PAGE);
	uint8_t *q = rp_remap(fx->c, p, 8 * PAGE, 12 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, RW,
			      fx->arb, to);
	assert_ptr_equal(q, to);
	for (int i = 0; i < 12; i++)
		if (i == 7)
			assert_true(all(q + i * PAGE, PAGE, 0x77));
		else
			assert_true(is_page(q + i * PAGE, fx->arb_page));
	assert_false(is_mapped(p, PAGE));
	assert_int_equal(rp_unmap(fx->c, q, 12 * PAGE), 0);
}

/* 40 MiB (10 pieces) with data in several of them, moved and grown to
 * 100 MiB: the data moves with its pages, the new part reads the
 * template, the old range is gone. */
static void test_remap_many_pieces(void **state)
{
	struct fx *fx = *state;
	const size_t old_len = 40 * MIB, new_len = 100 * MIB;
	const size_t marks[] = { 0,
				 CHUNK - PAGE,
				 CHUNK,
				 CHUNK + PAGE,
				 3 * CHUNK - PAGE,
				 13 * MIB + 5 * PAGE,
				 9 * CHUNK,
				 old_len - PAGE }; /* in order */
	const size_t nmarks = sizeof(marks) / sizeof(marks[0]);

	uint8_t *p = rp_map(fx->c, NULL, old_len, RW, MAP_PRIVATE, fx->aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	for (size_t i = 0; i < nmarks; i++)
		memset(p + marks[i], (int)(0x10 + i), PAGE);
	/* Block growth in place. */
	uint8_t *block = mmap(p + old_len, PAGE, PROT_NONE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	/* (EEXIST: something is there already, which blocks it as well.) */
	if (block == MAP_FAILED)
		assert_int_equal(errno, EEXIST);
	else
		assert_ptr_equal(block, p + old_len);

	uint8_t *q = rp_remap(fx->c, p, old_len, new_len, MREMAP_MAYMOVE, RW, fx->aa, NULL);
	assert_ptr_not_equal(q, MAP_FAILED);
	assert_ptr_not_equal(q, p);
	/* Every page: its mark or the template. */
	for (size_t off = 0, m = 0; off < new_len; off += PAGE) {
		if (m < nmarks && off == marks[m]) {
			assert_true(all(q + off, PAGE, (uint8_t)(0x10 + m)));
			m++;
		} else if (!all(q + off, PAGE, 0xAA)) {
			fail_msg("page at offset %zu of the moved mapping: 0x%02x", off,
				 q[off + (size_t)h_first_not(q + off, PAGE, 0xAA)]);
		}
	}
	assert_false(is_mapped(p, PAGE));
	assert_false(is_mapped(p + CHUNK, PAGE));
	assert_false(is_mapped(p + old_len - PAGE, PAGE));
	/* The grown part is ordinary refpage memory. */
	memset(q + new_len - PAGE, 0x99, PAGE);
	assert_int_equal(madvise(q + new_len - PAGE, PAGE, MADV_DONTNEED), 0);
	assert_true(all(q + new_len - PAGE, PAGE, 0xAA));
	if (block != MAP_FAILED)
		munmap(block, PAGE);
	assert_int_equal(rp_unmap(fx->c, q, new_len), 0);
}

/* A mapping of one piece may be grown by plain mremap up to 4 MiB: the
 * file under it is that long, so no access raises SIGBUS. In a child, so
 * that a SIGBUS fails the case rather than the group. */
static void test_plain_mremap_within_piece(void **state)
{
	struct fx *fx = *state;

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint8_t *p = rp_map(fx->c, NULL, MIB, RW, MAP_PRIVATE, fx->arb);
		CK(p != MAP_FAILED);
		memset(p + PAGE, 0x42, PAGE);
		uint8_t *q = mremap(p, MIB, CHUNK, MREMAP_MAYMOVE);
		CK(q != MAP_FAILED);
		CK(all(q + PAGE, PAGE, 0x42));
		for (size_t off = 0; off < CHUNK; off += PAGE)
			if (off != PAGE)
				CK(is_page(q + off, fx->arb_page));
		q[CHUNK - 1] = 1;
		CK(q[CHUNK - 1] == 1);
		_exit(0);
	}
	assert_int_equal(child_exit(pid), 0);
}

/* --- fork ----------------------------------------------------------------------------- */

/* Generations 1..3 of a fork chain over p (8 pages of arb), in the
 * child of the test: generation gen sees pages 0..gen-1 holding the writes
 * of the generations before (0x50 + g) and the template elsewhere (the
 * parent's write after the fork, to page 7, is not seen); it writes its
 * own page, forks the next and, once that one is done, checks that the
 * next one's write stayed there. Never returns. */
static void fork_chain(struct fx *fx, uint8_t *p, int go)
{
	char ch;

	for (int gen = 1;; gen++) {
		CK(read(go, &ch, 1) == 1); /* the parent has written page 7 */
		close(go);
		CK(rp_backend(fx->c) == RP_BACKEND_FILE);
		for (int g = 0; g < gen; g++)
			CK(all(p + g * PAGE, PAGE, (uint8_t)(0x50 + g)));
		for (int i = gen; i < 8; i++)
			CK(is_page(p + i * PAGE, fx->arb_page));
		memset(p + gen * PAGE, 0x50 + gen, PAGE);
		/* New mappings work in every generation. */
		uint8_t *n = rp_map(fx->c, NULL, 4 * PAGE, RW, MAP_PRIVATE, fx->aa);
		CK(n != MAP_FAILED);
		CK(all(n, 4 * PAGE, 0xAA));
		if (gen == 3)
			_exit(0);
		int pg[2];
		CK(pipe(pg) == 0);
		pid_t pid = fork();
		CK(pid >= 0);
		if (pid == 0) {
			close(pg[1]);
			go = pg[0];
			continue; /* the next generation */
		}
		close(pg[0]);
		memset(p + 7 * PAGE, 0x70 + gen, PAGE);
		CK(write(pg[1], "g", 1) == 1);
		close(pg[1]);
		CK(child_exit(pid) == 0);
		/* the child's write to page gen + 1 stayed its own */
		CK(is_page(p + (gen + 1) * PAGE, fx->arb_page));
		_exit(0);
	}
}

static void test_fork_three_generations(void **state)
{
	struct fx *fx = *state;
	uint8_t *p = rp_map(fx->c, NULL, 8 * PAGE, RW, MAP_PRIVATE, fx->arb);
	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p, 0x50, PAGE);
	int pg[2];
	assert_int_equal(pipe(pg), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pg[1]);
		fork_chain(fx, p, pg[0]);
	}
	close(pg[0]);
	memset(p + 7 * PAGE, 0x7F, PAGE);
	assert_int_equal(write(pg[1], "g", 1), 1);
	close(pg[1]);
	assert_int_equal(child_exit(pid), 0);
	assert_true(all(p, PAGE, 0x50));
	for (int i = 1; i < 7; i++)
		assert_true(is_page(p + i * PAGE, fx->arb_page));
	assert_true(all(p + 7 * PAGE, PAGE, 0x7F));
	assert_int_equal(rp_unmap(fx->c, p, 8 * PAGE), 0);
}

/* --- threads ----------------------------------------------------------------------------- */

#define NTHREADS 16
#define ROUNDS 24

struct th_arg {
	struct fx *fx;
	int idx;
	atomic_int *bad;
	char why[160];
};

static void *thread_main(void *v)
{
	struct th_arg *a = v;
	struct fx *fx = a->fx;

	for (int r = 0; r < ROUNDS && !atomic_load(a->bad); r++) {
		/* 1 page to 6 MiB: some mappings have two pieces */
		size_t pages = 1 + (size_t)((a->idx * 131 + r * 977) % 1536);
		int arb = (r + a->idx) & 1;
		uint8_t mark = (uint8_t)(a->idx * 16 + r);
		uint8_t *p = rp_map(fx->c, NULL, pages * PAGE, RW, MAP_PRIVATE,
				    arb ? fx->arb : fx->aa);
		const char *bad = NULL;
		if (p == MAP_FAILED) {
			snprintf(a->why, sizeof(a->why), "rp_map: %s", strerror(errno));
			atomic_store(a->bad, 1);
			break;
		}
		for (size_t i = 0; i < pages && !bad; i += 7)
			if (arb ? !is_page(p + i * PAGE, fx->arb_page)
				: !all(p + i * PAGE, PAGE, 0xAA))
				bad = "an untouched page is not the template";
		for (size_t i = 0; i < pages; i += 3)
			memset(p + i * PAGE, mark, PAGE);
		for (size_t i = 0; i < pages && !bad; i++) {
			int mine = i % 3 == 0;
			if (mine  ? !all(p + i * PAGE, PAGE, mark)
			    : arb ? !is_page(p + i * PAGE, fx->arb_page)
				  : !all(p + i * PAGE, PAGE, 0xAA))
				bad = mine ? "a written page lost its bytes"
					   : "a page next to a written one changed";
		}
		if (!bad && madvise(p, pages * PAGE, MADV_DONTNEED) == 0 &&
		    (arb ? !is_page(p, fx->arb_page) : !all(p, PAGE, 0xAA)))
			bad = "MADV_DONTNEED did not bring the template back";
		if (bad) {
			snprintf(a->why, sizeof(a->why), "thread %d round %d (%zu pages): %s",
				 a->idx, r, pages, bad);
			atomic_store(a->bad, 1);
		}
		if (rp_unmap(fx->c, p, pages * PAGE) < 0 && !bad) {
			snprintf(a->why, sizeof(a->why), "rp_unmap failed");
			atomic_store(a->bad, 1);
		}
	}
	return NULL;
}

static void test_threads16(void **state)
{
	struct fx *fx = *state;
	struct th_arg a[NTHREADS];
	pthread_t th[NTHREADS];
	atomic_int bad = 0;

	for (int i = 0; i < NTHREADS; i++) {
		a[i] = (struct th_arg){ .fx = fx, .idx = i, .bad = &bad };
		assert_int_equal(pthread_create(&th[i], NULL, thread_main, &a[i]), 0);
	}
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < NTHREADS; i++)
		if (a[i].why[0])
			print_error("%s\n", a[i].why);
	assert_int_equal(atomic_load(&bad), 0);
}

/* --- uid 65534 ------------------------------------------------------------------------------ */

/* Become uid/gid 65534 with no supplementary groups, for good. */
static void drop_to_nobody(void)
{
	CK(setgroups(0, NULL) == 0);
	CK(setresgid(H_NOBODY, H_NOBODY, H_NOBODY) == 0);
	CK(setresuid(H_NOBODY, H_NOBODY, H_NOBODY) == 0);
	CK(geteuid() == H_NOBODY);
}

/* 1 if uid 65534 would get a full userfaultfd here (then the cases about
 * the user-mode-only one do not apply), with the reason. */
static int nobody_has_full_uffd(char *why, size_t n)
{
	struct stat st;

	if (tu_read_int("/proc/sys/vm/unprivileged_userfaultfd") == 1) {
		snprintf(why, n, "vm.unprivileged_userfaultfd=1: uid %d gets a full userfaultfd",
			 H_NOBODY);
		return 1;
	}
	if (stat("/dev/userfaultfd", &st) == 0 && (st.st_mode & S_IROTH) &&
	    (st.st_mode & S_IWOTH)) {
		snprintf(why, n, "/dev/userfaultfd is open to others: uid %d gets a full one",
			 H_NOBODY);
		return 1;
	}
	return 0;
}

static void skip_unless_root(void)
{
	char why[256];

	if (!h_can_run_as_nobody(why, sizeof(why))) {
		print_message("skipped: %s\n", why);
		skip();
	}
}

/* A pipe holding n bytes of tu_fill_bytes(seed), read end returned. */
static int pipe_with(size_t n, uint32_t seed, uint8_t *data)
{
	int pfd[2];

	CK(pipe(pfd) == 0);
	tu_fill_bytes(data, n, seed);
	CK(write(pfd[1], data, n) == (ssize_t)n);
	close(pfd[1]);
	return pfd[0];
}

/* Root parent on the uffd backend, served by a private daemon; its fork
 * child drops to uid 65534: its new mappings come from the file backend
 * (read(2) into them works), its inherited uffd mapping is still served
 * by the daemon (the template where untouched, the parent's bytes where
 * written). */
static void test_mixed_uffd_parent_nobody_child(void **state)
{
	(void)state;
	struct h_daemon d = { 0 };
	rp_client *c;
	uint32_t aa;
	char why[256];

	skip_unless_root();
	if (!h_uffd_usable(why, sizeof(why))) {
		print_message("skipped: %s\n", why);
		skip();
	}
	if (nobody_has_full_uffd(why, sizeof(why))) {
		print_message("skipped: %s\n", why);
		skip();
	}
	/* Auto, not h_session_open's RP_CONNECT_UFFD: a child keeps a
	 * forced choice, and this one is about the child choosing again. */
	assert_int_equal(h_daemon_start(&d), 0);
	assert_int_equal(rp_connect_opts(d.sock, 0, &c), 0);
	assert_int_equal(rp_template_fill(c, 0xAA, &aa), 0);
	assert_int_equal(rp_backend(c), RP_BACKEND_UFFD);
	uint8_t *p = rp_map(c, NULL, 16 * PAGE, RW, MAP_PRIVATE, aa);
	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p + 2 * PAGE, 0x22, PAGE);
	assert_true(all(p + 3 * PAGE, PAGE, 0xAA)); /* the daemon serves */

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint8_t data[3000];
		drop_to_nobody();
		CK(rp_backend(c) == RP_BACKEND_FILE);
		uint8_t *n = rp_map(c, NULL, 4 * PAGE, RW, MAP_PRIVATE, aa);
		CK(n != MAP_FAILED);
		int fd = pipe_with(sizeof(data), 9, data);
		CK(read(fd, n + PAGE + 500, sizeof(data)) == (ssize_t)sizeof(data));
		CK(memcmp(n + PAGE + 500, data, sizeof(data)) == 0);
		CK(all(n + PAGE, 500, 0xAA));
		CK(all(n + 2 * PAGE, 2 * PAGE, 0xAA));
		/* The inherited mapping: the parent's write, the template
		 * (also through a system call: this child's uffd from the
		 * fork is a full one, made by root). */
		CK(all(p + 2 * PAGE, PAGE, 0x22));
		CK(all(p + 5 * PAGE, PAGE, 0xAA));
		fd = pipe_with(100, 10, data);
		CK(read(fd, p + 9 * PAGE, 100) == 100);
		CK(memcmp(p + 9 * PAGE, data, 100) == 0);
		CK(all(p + 9 * PAGE + 100, PAGE - 100, 0xAA));
		_exit(0);
	}
	assert_int_equal(child_exit(pid), 0);
	assert_true(all(p + 2 * PAGE, PAGE, 0x22));
	assert_true(all(p + 9 * PAGE, PAGE, 0xAA)); /* the child's write stayed there */
	assert_int_equal(rp_unmap(c, p, 16 * PAGE), 0);
	assert_int_equal(h_session_close(&d, c, 1, 0), 0);
}

/* As uid 65534: auto picks the file backend and kernel-mode accesses work;
 * forcing the uffd backend gets a user-mode-only userfaultfd, and read(2)
 * into an untouched page then fails with EFAULT: why auto does not pick it. */
static void test_nobody_auto_and_forced_uffd(void **state)
{
	(void)state;
	struct h_daemon d = { 0 };
	char why[256];

	skip_unless_root();
	if (nobody_has_full_uffd(why, sizeof(why))) {
		print_message("skipped: %s\n", why);
		skip();
	}
	int have_uffd = h_uffd_usable(why, sizeof(why));
	if (have_uffd)
		assert_int_equal(h_daemon_start(&d), 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint8_t data[2000];
		rp_client *c;
		uint32_t id;
		drop_to_nobody();
		/* auto, even with a daemon listening */
		CK(rp_connect_opts(have_uffd ? d.sock : "/nonexistent/sock", 0, &c) == 0);
		CK(rp_backend(c) == RP_BACKEND_FILE);
		CK(rp_template_fill(c, 0x5C, &id) == 0);
		uint8_t *p = rp_map(c, NULL, 8 * PAGE, RW, MAP_PRIVATE, id);
		CK(p != MAP_FAILED);
		int fd = pipe_with(sizeof(data), 11, data);
		CK(read(fd, p + 100, sizeof(data)) == (ssize_t)sizeof(data));
		CK(memcmp(p + 100, data, sizeof(data)) == 0);
		CK(all(p, 100, 0x5C));
		close(fd);
		/* The limits are root's, inherited: mlock is allowed up to
		 * RLIMIT_MEMLOCK. */
		struct rlimit rl;
		CK(getrlimit(RLIMIT_MEMLOCK, &rl) == 0);
		if (rl.rlim_cur >= 2 * PAGE)
			CK(mlock(p + 4 * PAGE, 2 * PAGE) == 0);
		CK(all(p + 4 * PAGE, 2 * PAGE, 0x5C));
		rp_disconnect(c);
		if (!have_uffd)
			_exit(0);
		/* forced uffd: user-mode-only */
		CK(rp_connect_opts(d.sock, RP_CONNECT_UFFD, &c) == 0);
		CK(rp_backend(c) == RP_BACKEND_UFFD);
		CK(rp_template_fill(c, 0x5D, &id) == 0);
		p = rp_map(c, NULL, 4 * PAGE, RW, MAP_PRIVATE, id);
		CK(p != MAP_FAILED);
		fd = pipe_with(100, 12, data);
		errno = 0;
		CK(read(fd, p + PAGE, 100) == -1 && errno == EFAULT);
		CK(all(p + PAGE, PAGE, 0x5D));      /* user mode: the daemon serves it */
		CK(read(fd, p + PAGE, 100) == 100); /* now present */
		CK(memcmp(p + PAGE, data, 100) == 0);
		rp_disconnect(c);
		_exit(0);
	}
	int st = child_exit(pid);
	if (have_uffd)
		assert_int_equal(h_daemon_destroy(&d), 0);
	assert_int_equal(st, 0);
	if (!have_uffd) {
		print_message("skipped the forced-uffd half: %s\n", why);
		skip();
	}
}

/* A program that closes every descriptor (closefrom) and reuses the
 * number of our template file: the library must neither map the program's
 * file as a template nor close it. */
static void test_program_closed_our_descriptor(void **state)
{
	struct fx *fx = *state;
	char path[128];
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		rp_client *c = NULL;
		uint32_t id = 0;
		uint8_t *p = NULL;
		int num = -1;
		char link[64], to[128];
		char before[1024] = { 0 };
		/* The group's client has template files too: find ours, the
		 * one that is new after our first map. */
		for (int pass = 0; pass < 2; pass++) {
			if (pass == 1) {
				CK(rp_connect_opts("/nonexistent/refpaged.sock", RP_CONNECT_FILE,
						   &c) == 0);
				CK(rp_template_fill(c, 0xAA, &id) == 0);
			}
			for (int fd = 3; fd < 1024; fd++) {
				snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
				ssize_t n = readlink(link, to, sizeof(to) - 1);
				if (n <= 0 || (to[n] = 0, !strstr(to, "memfd:refpage")))
					continue;
				if (pass == 0)
					before[fd] = 1;
				else if (!before[fd])
					num = fd;
			}
			if (pass == 0)
				continue;
			CK(num < 0); /* no file before the first map */
			uint8_t *m = rp_map(c, NULL, 2 * PAGE, RW, MAP_PRIVATE, id);
			CK(m != MAP_FAILED && all(m, 2 * PAGE, 0xAA));
			p = m;
			for (int fd = 3; fd < 1024; fd++) {
				snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
				ssize_t n = readlink(link, to, sizeof(to) - 1);
				if (n > 0 && (to[n] = 0, strstr(to, "memfd:refpage")) &&
				    !before[fd])
					num = fd;
			}
		}
		CK(num >= 100); /* away from the numbers programs expect */
		CK(close(num) == 0);
		snprintf(path, sizeof(path), "%s/not-a-template", fx->dir);
		int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		uint8_t page[PAGE];
		memset(page, 0x11, PAGE);
		CK(f >= 0 && write(f, page, PAGE) == PAGE && write(f, page, PAGE) == PAGE);
		CK(dup2(f, num) == num);
		close(f);
		uint8_t *q = rp_map(c, NULL, 2 * PAGE, RW, MAP_PRIVATE, id);
		CK(q != MAP_FAILED && all(q, 2 * PAGE, 0xAA)); /* a new template file */
		CK(all(p, 2 * PAGE, 0xAA));                    /* the old mapping kept its file */
		CK(rp_template_release(c, id) == 0);
		rp_disconnect(c);
		CK(fcntl(num, F_GETFD) >= 0); /* the program's file stays open */
		CK(pread(num, page, 1, 0) == 1 && page[0] == 0x11);
		unlink(path);
		_exit(0);
	}
	assert_int_equal(child_exit(pid), 0);
}

/* rp_remap checks its arguments as mremap does, before anything changes. */
static void test_remap_bad_arguments(void **state)
{
	struct fx *fx = *state;
	uint8_t *p = rp_map(fx->c, NULL, 8 * PAGE, RW, MAP_PRIVATE, fx->aa);

	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p, 0x5C, 8 * PAGE);
	/* A length that would round to 0 (or past the address space). */
	errno = 0;
	assert_ptr_equal(rp_remap(fx->c, p, 8 * PAGE, SIZE_MAX, MREMAP_MAYMOVE, RW, fx->aa, NULL),
			 MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	assert_ptr_equal(rp_remap(fx->c, p, SIZE_MAX - 10, PAGE, MREMAP_MAYMOVE, RW, fx->aa, NULL),
			 MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	/* A shrink to an overlapping fixed place: EINVAL, the tail kept. */
	assert_ptr_equal(rp_remap(fx->c, p, 8 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, RW,
				  fx->aa, p + 2 * PAGE),
			 MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	assert_true(all(p, 8 * PAGE, 0x5C));
	/* An old range with a hole: EFAULT, nothing mapped over the hole. */
	assert_int_equal(munmap(p + 6 * PAGE, PAGE), 0);
	assert_ptr_equal(rp_remap(fx->c, p, 8 * PAGE, 16 * PAGE, MREMAP_MAYMOVE, RW, fx->aa, NULL),
			 MAP_FAILED);
	assert_int_equal(errno, EFAULT);
	assert_false(is_mapped(p + 6 * PAGE, PAGE));
	assert_true(all(p, 6 * PAGE, 0x5C));
	assert_int_equal(rp_unmap(fx->c, p, 8 * PAGE), 0);
}

/* The uffd backend's rp_remap is the kernel's mremap, which needs no
 * daemon: after the daemon died, a grown mapping keeps its bytes (and,
 * as the contract's point 7 says, reads zeros where untouched). */
static void test_uffd_remap_after_daemon_died(void **state)
{
	struct h_daemon d;
	rp_client *c = NULL;
	uint32_t id = 0;

	(void)state;
	assert_int_equal(h_session_open(&d, NULL, &c, 0xAA, &id), 0);
	assert_int_equal(rp_backend(c), RP_BACKEND_UFFD);
	uint8_t *p = rp_map(c, NULL, 8 * PAGE, RW, MAP_PRIVATE, id);
	assert_ptr_not_equal(p, MAP_FAILED);
	memset(p, 0x3C, 2 * PAGE);
	assert_int_equal(p[3 * PAGE], 0xAA);
	h_daemon_kill(&d);
	uint64_t v;
	assert_int_equal(rp_stats(c, &v, NULL, 1), -ENOTCONN); /* the loss noticed */
	assert_int_equal(rp_alive(c), 0);
	uint8_t *q = rp_remap(c, p, 8 * PAGE, 64 * PAGE, MREMAP_MAYMOVE, RW, id, NULL);
	assert_ptr_not_equal(q, MAP_FAILED);
	assert_true(all(q, 2 * PAGE, 0x3C));
	assert_int_equal(q[3 * PAGE], 0xAA);
	assert_int_equal(q[40 * PAGE], 0); /* no daemon: plain memory */
	munmap(q, 64 * PAGE);
	rp_disconnect(c);
	h_daemon_destroy(&d);
}

/* A move the kernel stops half way: the process's VMA table is filled up
 * (vm.max_map_count), then freed one entry at a time, and rp_remap of a
 * five-piece mapping is tried at each step. Every try that fails must
 * leave the mapping whole where it was (ENOMEM, bytes and template in
 * place), whichever piece the kernel refused; the first that succeeds must
 * have moved it all. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define RP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define RP_SANITIZED 1
#endif
#endif

static void test_remap_move_stopped_half_way(void **state)
{
	struct fx *fx = *state;
#ifdef RP_SANITIZED
	/* A full VMA table starves the sanitizer's runtime, which maps its
	 * own memory as it goes: it aborts before the case can judge. */
	print_message("skipped: a sanitizer build cannot run with its VMA table full\n");
	skip();
#endif
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		const size_t len = 5 * CHUNK, nlen = 6 * CHUNK;
		uint8_t *p = rp_map(fx->c, NULL, len, RW, MAP_PRIVATE, fx->aa);
		CK(p != MAP_FAILED);
		for (size_t i = 0; i < 5; i++)
			memset(p + i * CHUNK + PAGE, (int)(0x20 + i), PAGE);
		uint8_t *blk = mmap(p + len, PAGE, PROT_READ,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		CK(blk != MAP_FAILED || errno == EEXIST); /* no growth in place */
		/* Fill the VMA table: single pages of alternating protection
		 * (no two merge), kept in a list to free one by one. */
		static void *fill[70000];
		size_t nfill = 0;
		while (nfill < sizeof(fill) / sizeof(fill[0])) {
			void *f = mmap(NULL, PAGE, nfill & 1 ? PROT_READ : PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (f == MAP_FAILED)
				break;
			fill[nfill++] = f;
		}
		CK(nfill < sizeof(fill) / sizeof(fill[0])); /* the table did fill up */
		int failures = 0;
		for (int freed = 0; freed < 64; freed++) {
			errno = 0;
			uint8_t *q = rp_remap(fx->c, p, len, nlen, MREMAP_MAYMOVE, RW, fx->aa,
					      NULL);
			uint8_t *at = q == MAP_FAILED ? p : q;
			if (q == MAP_FAILED) {
				CK(errno == ENOMEM);
				failures++;
			}
			for (size_t i = 0; i < 5; i++) {
				CK(all(at + i * CHUNK + PAGE, PAGE, (uint8_t)(0x20 + i)));
				CK(all(at + i * CHUNK, PAGE, 0xAA));
				CK(all(at + i * CHUNK + 2 * PAGE, PAGE, 0xAA));
			}
			if (q != MAP_FAILED) {
				CK(all(q + len, PAGE, 0xAA) && all(q + nlen - PAGE, PAGE, 0xAA));
				CK(failures > 0); /* it did fail before it could */
				_exit(0);
			}
			/* Two a try: a failed try may keep one entry (the place
			 * of the piece whose move failed, which it cannot tell
			 * from another thread's mapping and so leaves). */
			munmap(fill[--nfill], PAGE);
			munmap(fill[--nfill], PAGE);
		}
		CK(!"rp_remap never succeeded with 128 entries freed");
	}
	assert_int_equal(child_exit(pid), 0);
}

#define T(f) cmocka_unit_test(f)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_no_daemon_semantics),
		T(test_read_write_syscalls),
		T(test_mlock),
		T(test_o_direct_read),
		T(test_process_vm_readv),
		T(test_rss_read_is_not_anonymous),
		T(test_remap_shrink),
		T(test_remap_grow_in_place),
		T(test_remap_grow_moves),
		T(test_remap_fixed),
		T(test_remap_many_pieces),
		T(test_plain_mremap_within_piece),
		T(test_program_closed_our_descriptor),
		T(test_remap_bad_arguments),
		T(test_remap_move_stopped_half_way),
		T(test_uffd_remap_after_daemon_died),
		T(test_fork_three_generations),
		T(test_threads16),
		T(test_mixed_uffd_parent_nobody_child),
		T(test_nobody_auto_and_forced_uffd),
	};
	return cmocka_run_group_tests_name("filebackend", tests, group_setup, group_teardown);
}
