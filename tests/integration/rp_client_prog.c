/* A refpaged client for the integration tests, run as root or as uid
 * 65534 (through setpriv), in a process of its own.
 *
 *   rp_client_prog basic SOCKET
 *       the basic semantics through the library; prints
 *       "ok basic uid=U umo=M" (M: the uffd is UFFD_USER_MODE_ONLY).
 *   rp_client_prog fork SOCKET
 *       fork semantics, a grandchild, and the library in fork children.
 *   rp_client_prog fault-forever SOCKET THREADS [fork]
 *       maps 256 MiB and faults it in THREADS threads (and in a fork child
 *       with "fork") until killed; prints "ready WHO PID ADDR" (ADDR: the
 *       mapping) once faults are flowing.
 *
 *   rp_client_prog report SOCKET
 *       report mode: nothing to take before it has read anything (no
 *       other process's records, whoever they are), then exactly its own
 *       two reads of untouched pages; prints "ok report uid=U records=2".
 *
 * Exit status 0 when every check held; 1 after a "FAIL: ..." line. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#define PAGE 4096u
#define RW (PROT_READ | PROT_WRITE)

static int failed;

#define CHECK(cond, ...)                                             \
	do {                                                         \
		if (!(cond)) {                                       \
			printf("FAIL: %s:%d: ", __FILE__, __LINE__); \
			printf(__VA_ARGS__);                         \
			printf("\n");                                \
			fflush(stdout);                              \
			failed = 1;                                  \
		}                                                    \
	} while (0)

#define REQUIRE(cond, ...)                \
	do {                              \
		CHECK(cond, __VA_ARGS__); \
		if (failed)               \
			_exit(1);         \
	} while (0)

static int page_is(const void *p, uint8_t b)
{
	const volatile uint8_t *q = p;

	for (size_t i = 0; i < PAGE; i++)
		if (q[i] != b)
			return 0;
	return 1;
}

static void fill_page(uint8_t *p, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;

	for (size_t i = 0; i < PAGE; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)(x >> 11);
	}
}

/* 1 if the only userfaultfd this process can make is user-mode-only,
 * which is what the library then hands the daemon. */
static int uffd_user_mode_only(void)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

	if (dev >= 0) {
		int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		close(dev);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
	}
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

static rp_client *connect_or_die(const char *sock)
{
	rp_client *c;
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);

	REQUIRE(r == 0, "rp_connect(%s): %s", sock, strerror(-r));
	return c;
}

static uint32_t fill_or_die(rp_client *c, uint8_t b)
{
	uint32_t id;
	int r = rp_template_fill(c, b, &id);

	REQUIRE(r == 0, "rp_template_fill(%#x): %s", b, strerror(-r));
	return id;
}

static uint8_t *map_or_die(rp_client *c, size_t pages, uint32_t id)
{
	uint8_t *p = rp_map(c, NULL, pages * PAGE, RW, 0, id);

	REQUIRE(p != MAP_FAILED, "rp_map(%zu pages, id %u): %s", pages, id, strerror(errno));
	return p;
}

/* --- basic ------------------------------------------------------------- */

static void basic_rw(uint8_t *p)
{
	for (int i = 0; i < 64; i++)
		CHECK(page_is(p + i * PAGE, 0xAA), "untouched page %d reads the template", i);
	p[3 * PAGE + 100] = 0x11; /* written before any read */
	CHECK(p[3 * PAGE + 100] == 0x11 && p[3 * PAGE + 99] == 0xAA && p[3 * PAGE + 101] == 0xAA,
	      "a write to an untouched page keeps the rest of it the template");
	CHECK(page_is(p + 2 * PAGE, 0xAA) && page_is(p + 4 * PAGE, 0xAA),
	      "the neighbours of a written page read the template");
	memset(p + 5 * PAGE, 0x22, PAGE); /* read above, written now */
	CHECK(page_is(p + 5 * PAGE, 0x22), "a read page takes a write");
	CHECK(madvise(p + 3 * PAGE, 3 * PAGE, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	CHECK(page_is(p + 3 * PAGE, 0xAA) && page_is(p + 5 * PAGE, 0xAA),
	      "MADV_DONTNEED brings the template back");
}

static void basic_templates(rp_client *c, uint8_t *p)
{
	uint8_t page[PAGE];
	uint32_t id;

	/* The source is an untouched refpage: the library must read it in
	 * user mode, which a user-mode-only uffd can serve. */
	int r = rp_template_create(c, p + 20 * PAGE, &id);
	REQUIRE(r == 0, "rp_template_create from an untouched refpage: %s", strerror(-r));
	uint8_t *q = map_or_die(c, 4, id);
	CHECK(page_is(q + PAGE, 0xAA), "a template made from an untouched refpage reads its bytes");
	rp_unmap(c, q, 4 * PAGE);

	fill_page(page, 7);
	REQUIRE(rp_template_create(c, page, &id) == 0, "rp_template_create");
	q = map_or_die(c, 8, id);
	CHECK(!memcmp(q + 6 * PAGE, page, PAGE), "an arbitrary template page reads back");
	rp_unmap(c, q, 8 * PAGE);

	fill_page(page, 9);
	q = refpage_mmap(NULL, 4 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, page);
	REQUIRE(q != MAP_FAILED, "refpage_mmap: %s", strerror(errno));
	uint8_t want[PAGE];
	memcpy(want, page, PAGE);
	page[0] ^= 0xff;
	CHECK(!memcmp(q + 2 * PAGE, want, PAGE), "refpage_mmap takes the page at the call");
	munmap(q, 4 * PAGE);
}

static int cmd_basic(const char *sock)
{
	rp_client *c = connect_or_die(sock);
	uint64_t v[32];
	const char *names[32];

	setenv("REFPAGED_SOCKET", sock, 1);
	uint32_t id = fill_or_die(c, 0xAA);
	uint8_t *p = map_or_die(c, 64, id);
	basic_rw(p);
	basic_templates(c, p);
	CHECK(rp_unmap(c, p + 30 * PAGE, 10 * PAGE) == 0, "rp_unmap of the middle");
	CHECK(page_is(p + 29 * PAGE, 0xAA) && page_is(p + 40 * PAGE, 0xAA),
	      "the rest of a partly unmapped mapping reads the template");
	CHECK(rp_stats(c, v, names, 32) > 0, "rp_stats");
	CHECK(rp_alive(c) == 1, "rp_alive");
	printf("ok basic uid=%d umo=%d\n", (int)getuid(), uffd_user_mode_only());
	return failed;
}

/* --- fork -------------------------------------------------------------- */

/* The library in a fork child: the parent's template id, and new ones. */
static void child_uses_library(rp_client *c, uint32_t parent_id)
{
	uint8_t page[PAGE];
	uint32_t id;

	uint8_t *q = map_or_die(c, 8, parent_id);
	CHECK(page_is(q + 5 * PAGE, 0xAA), "child: rp_map with the parent's template id");
	id = fill_or_die(c, 0x77);
	uint8_t *s = map_or_die(c, 4, id);
	CHECK(page_is(s + 3 * PAGE, 0x77), "child: a template of its own");
	fill_page(page, 11);
	REQUIRE(rp_template_create(c, page, &id) == 0, "child: rp_template_create");
	uint8_t *t = map_or_die(c, 2, id);
	CHECK(!memcmp(t + PAGE, page, PAGE), "child: a content template of its own");
	rp_unmap(c, q, 8 * PAGE);
	rp_unmap(c, s, 4 * PAGE);
	rp_unmap(c, t, 2 * PAGE);
}

static int grandchild(rp_client *c, uint32_t id, uint8_t *p)
{
	CHECK(page_is(p, 0x66), "grandchild: sees the child's write");
	CHECK(page_is(p + 5 * PAGE, 0x55), "grandchild: sees the child's other write");
	CHECK(page_is(p + 6 * PAGE, 0xAA), "grandchild: untouched page reads the template");
	CHECK(page_is(p + 4 * PAGE, 0xAA), "grandchild: the parent's later write is invisible");
	uint8_t *q = map_or_die(c, 4, id);
	CHECK(page_is(q + 2 * PAGE, 0xAA), "grandchild: rp_map with the first template id");
	return failed;
}

static int child(rp_client *c, uint32_t id, uint8_t *p, int go)
{
	char b;

	CHECK(page_is(p, 0x11), "child: sees the parent's write");
	CHECK(page_is(p + PAGE, 0xAA), "child: sees the parent's read page as the template");
	CHECK(page_is(p + 2 * PAGE, 0xAA), "child: untouched page reads the template");
	REQUIRE(read(go, &b, 1) == 1, "child: sync read");
	CHECK(page_is(p, 0x11) && page_is(p + 4 * PAGE, 0xAA),
	      "child: the parent's writes after fork are invisible");
	memset(p, 0x66, PAGE);
	memset(p + 5 * PAGE, 0x55, PAGE);
	CHECK(page_is(p, 0x66) && page_is(p + 5 * PAGE, 0x55), "child: its own writes");
	child_uses_library(c, id);
	pid_t g = fork();
	REQUIRE(g >= 0, "fork: %s", strerror(errno));
	if (g == 0)
		_exit(grandchild(c, id, p));
	int st = 0;
	waitpid(g, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "grandchild status %#x", st);
	return failed;
}

static int cmd_fork(const char *sock)
{
	rp_client *c = connect_or_die(sock);
	uint32_t id = fill_or_die(c, 0xAA);
	uint8_t *p = map_or_die(c, 16, id);
	int go[2];

	memset(p, 0x11, PAGE);
	CHECK(page_is(p + PAGE, 0xAA), "parent: read before fork");
	REQUIRE(pipe(go) == 0, "pipe");
	fflush(stdout);
	pid_t pid = fork();
	REQUIRE(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(go[1]);
		_exit(child(c, id, p, go[0]));
	}
	close(go[0]);
	memset(p, 0x99, PAGE);
	memset(p + 4 * PAGE, 0x44, PAGE);
	REQUIRE(write(go[1], "g", 1) == 1, "sync write");
	int st = 0;
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	CHECK(page_is(p, 0x99) && page_is(p + 4 * PAGE, 0x44), "parent: keeps its writes");
	CHECK(page_is(p + 5 * PAGE, 0xAA), "parent: the child's write is invisible");
	uint8_t *q = map_or_die(c, 4, id);
	CHECK(page_is(q, 0xAA), "parent: the library still works after the child used it");
	printf("ok fork uid=%d\n", (int)getuid());
	return failed;
}

/* --- fault-forever -------------------------------------------------------- */

#define FF_PAGES 65536u

struct ff {
	uint8_t *p;
	unsigned nthreads;
	atomic_ulong faults;
};

struct ff_arg {
	struct ff *ff;
	unsigned idx;
};

static void *ff_thread(void *arg)
{
	struct ff_arg *a = arg;
	size_t per = FF_PAGES / a->ff->nthreads;
	uint8_t *base = a->ff->p + a->idx * per * PAGE;

	for (;;) {
		for (size_t i = 0; i < per; i++) {
			uint8_t b = ((volatile uint8_t *)base)[i * PAGE];
			if (b != 0xAA) {
				printf("FAIL: page %zu reads %#x\n", i, b);
				fflush(stdout);
				_exit(1);
			}
			atomic_fetch_add(&a->ff->faults, 1);
		}
		madvise(base, per * PAGE, MADV_DONTNEED);
	}
	return NULL;
}

static void ff_run(struct ff *ff, const char *who)
{
	struct ff_arg args[64];
	pthread_t t;

	for (unsigned i = 0; i < ff->nthreads; i++) {
		args[i] = (struct ff_arg){ ff, i };
		REQUIRE(pthread_create(&t, NULL, ff_thread, &args[i]) == 0, "pthread_create");
	}
	while (atomic_load(&ff->faults) < 1024)
		usleep(1000);
	printf("ready %s %d %p\n", who, (int)getpid(), (void *)ff->p);
	fflush(stdout);
	for (;;)
		pause();
}

static int cmd_fault_forever(const char *sock, int argc, char **argv)
{
	struct ff ff = { .nthreads = argc > 0 ? (unsigned)atoi(argv[0]) : 1 };
	int do_fork = argc > 1 && !strcmp(argv[1], "fork");

	REQUIRE(ff.nthreads >= 1 && ff.nthreads <= 64, "THREADS must be 1..64");
	rp_client *c = connect_or_die(sock);
	ff.p = map_or_die(c, FF_PAGES, fill_or_die(c, 0xAA));
	if (do_fork) {
		fflush(stdout);
		pid_t pid = fork();
		REQUIRE(pid >= 0, "fork: %s", strerror(errno));
		if (pid == 0)
			ff_run(&ff, "child");
	}
	ff_run(&ff, "parent");
	return 1;
}

/* --- report mode ------------------------------------------------------ */

static int cmd_report(const char *sock)
{
	struct rp_report_rec rec[16];
	uint64_t dropped = 1;
	rp_client *c;
	int r = rp_connect_opts(sock, RP_CONNECT_REPORT, &c);

	REQUIRE(r == 0, "rp_connect_opts(%s, REPORT): %s", sock, strerror(-r));
	r = rp_report_read(c, rec, 16, &dropped);
	REQUIRE(r == 0, "before any read: %d records (or error), want none", r);
	uint8_t *p = map_or_die(c, 8, fill_or_die(c, 0xAA));
	p[0] = 1; /* written first: not a read before write */
	CHECK(page_is(p + 2 * PAGE, 0xAA) && page_is(p + 5 * PAGE, 0xAA), "untouched pages");
	CHECK(p[0] == 1, "written page");
	r = rp_report_read(c, rec, 16, &dropped);
	REQUIRE(r == 2, "after two reads: %d records, want 2", r);
	CHECK(rec[0].addr == p + 2 * PAGE && rec[1].addr == p + 5 * PAGE,
	      "records at %p and %p, want %p and %p", rec[0].addr, rec[1].addr,
	      (void *)(p + 2 * PAGE), (void *)(p + 5 * PAGE));
	CHECK(rec[0].tid == (int32_t)syscall(SYS_gettid), "tid %d", (int)rec[0].tid);
	CHECK(dropped == 0, "dropped %llu", (unsigned long long)dropped);
	rp_disconnect(c);
	if (!failed)
		printf("ok report uid=%d records=%d\n", (int)getuid(), r);
	return failed;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3) {
		fprintf(stderr,
			"usage: rp_client_prog basic|fork|report|fault-forever SOCKET [args]\n");
		return 2;
	}
	if (!strcmp(argv[1], "basic"))
		return cmd_basic(argv[2]);
	if (!strcmp(argv[1], "fork"))
		return cmd_fork(argv[2]);
	if (!strcmp(argv[1], "report"))
		return cmd_report(argv[2]);
	if (!strcmp(argv[1], "fault-forever"))
		return cmd_fault_forever(argv[2], argc - 3, argv + 3);
	fprintf(stderr, "rp_client_prog: unknown command '%s'\n", argv[1]);
	return 2;
}
