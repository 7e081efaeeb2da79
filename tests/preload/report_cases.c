/* report_cases: programs with known reads of memory never written, for
 * refpage-run --report (tests/preload/preload-test.sh report, and
 * perf/report-vs-valgrind.sh). Each case allocates in a function of its
 * own (exported: built with -rdynamic, so the report can name it) and
 * prints what a report must find, one line "want KEY=VALUE ..." per
 * process that reads, to stdout:
 *   fresh    malloc 1 MiB, read 1 byte at offset 20487: 1 page at 20480
 *   realloc  malloc 512 KiB, all written, realloc to 1 MiB, read the grown
 *            part at 786432: 1 page at 786432, site the realloc's caller
 *   fork     malloc 1 MiB, first half written; a fork child reads pages
 *            200 and 201 of it: 2 pages at 819200, the child's pid; the
 *            parent reads nothing unwritten
 *   write    malloc 1 MiB, write(2) of pages 3..5 (never written) to a
 *            file: 3 pages at 12288 (read by the kernel, for the thread:
 *            reported like its own reads)
 *   clean    malloc 1 MiB, all written, then all read: nothing
 *   middle   malloc 1 MiB, read 1 byte of page 128 and nothing else: 1 page
 *            at 524288 (on the file backend: only with the kernel's
 *            fault-around off, else up to 16 pages)
 *   readwrite  malloc 1 MiB, page 7 read then written, page 9 read: on the
 *            uffd backend 2 pages at 28672; on the file backend 1 page at
 *            36864 (a page read and then written is anonymous there, like
 *            one only written: not seen, docs/report.md)
 *   nohandlers  malloc 1 MiB, page 0 written, page 10 read; a child made
 *            by _Fork() (no fork handlers run: it keeps its parent's
 *            descriptors) writes 0x42 to page 10 and reallocs the block to
 *            8 MiB: its data must survive (exit status 1 if not; the shim
 *            must not take its parent's pagemap for its own); the parent's
 *            report: 1 page at 40960
 *   huge     malloc 16 MiB, read 1 byte of the 8th page of its first 2 MiB-
 *            aligned part: 1 page (with shmem THP on, the file backend
 *            must keep a read from mapping a 2 MiB folio whole)
 *   report_cases CASE [BACKEND]   (BACKEND uffd, the default, or file:
 *                                  which "want" readwrite prints) */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KIB 1024u
#define PAGE 4096u

#define NOINLINE __attribute__((noinline, visibility("default")))
/* No tail call: the allocator must return into the named function. */
#define KEEP(p) __asm__ volatile("" : "+r"(p))

static volatile unsigned char sink;
static const char *backend = "uffd";

/* The allocating functions, named in the reports. */
unsigned char *case_fresh_alloc(size_t n);
unsigned char *case_realloc_grow(unsigned char *p, size_t n);
unsigned char *case_fork_alloc(size_t n);
unsigned char *case_write_alloc(size_t n);
unsigned char *case_middle_alloc(size_t n);
unsigned char *case_readwrite_alloc(size_t n);
unsigned char *case_nohandlers_alloc(size_t n);
unsigned char *case_huge_alloc(size_t n);

NOINLINE unsigned char *case_fresh_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_fresh(void)
{
	unsigned char *p = case_fresh_alloc(1024 * KIB);

	if (!p)
		return 1;
	memset(p, 1, 5 * PAGE); /* pages 0..4 written: not reported */
	sink = p[20487];        /* page 5, never written */
	printf("want pid=%d size=%u function=case_fresh_alloc pages=1 first_offset=20480\n",
	       (int)getpid(), 1024 * KIB);
	free(p);
	return 0;
}

NOINLINE unsigned char *case_realloc_grow(unsigned char *p, size_t n)
{
	unsigned char *q = realloc(p, n);
	KEEP(q);
	return q;
}

static int case_realloc(void)
{
	unsigned char *p = malloc(512 * KIB);

	if (!p)
		return 1;
	memset(p, 2, 512 * KIB);
	unsigned char *q = case_realloc_grow(p, 1024 * KIB);
	if (!q)
		return 1;
	sink = q[7];          /* written before the realloc: not reported */
	sink = q[786432 + 1]; /* the grown part, never written */
	printf("want pid=%d size=%u function=case_realloc_grow pages=1 first_offset=786432\n",
	       (int)getpid(), 1024 * KIB);
	free(q);
	return 0;
}

NOINLINE unsigned char *case_fork_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_fork(void)
{
	unsigned char *p = case_fork_alloc(1024 * KIB);

	if (!p)
		return 1;
	memset(p, 3, 512 * KIB);
	fflush(stdout);
	pid_t c = fork();
	if (c < 0)
		return 1;
	if (c == 0) {
		sink = p[200 * PAGE];
		sink = p[201 * PAGE + 99];
		sink = p[3]; /* the parent wrote it */
		printf("want pid=%d size=%u function=case_fork_alloc pages=2 "
		       "first_offset=819200\n",
		       (int)getpid(), 1024 * KIB);
		exit(0); /* exit, not _exit: the report is made at exit */
	}
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
		return 1;
	sink = p[100 * PAGE]; /* written */
	free(p);
	return 0;
}

NOINLINE unsigned char *case_write_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_write(void)
{
	unsigned char *p = case_write_alloc(1024 * KIB);
	char path[] = "/tmp/report_cases.XXXXXX";
	int fd = mkstemp(path);

	if (!p || fd < 0)
		return 1;
	unlink(path);
	memset(p, 4, 3 * PAGE);
	if (write(fd, p + 3 * PAGE, 3 * PAGE) != 3 * PAGE) {
		perror("report_cases: write");
		return 1;
	}
	close(fd);
	printf("want pid=%d size=%u function=case_write_alloc pages=3 first_offset=12288\n",
	       (int)getpid(), 1024 * KIB);
	free(p);
	return 0;
}

static int case_clean(void)
{
	unsigned char *p = malloc(1024 * KIB);
	unsigned sum = 0;

	if (!p)
		return 1;
	memset(p, 5, 1024 * KIB);
	for (size_t i = 0; i < 1024 * KIB; i += 64)
		sum += p[i];
	sink = (unsigned char)sum;
	free(p);
	return 0;
}

NOINLINE unsigned char *case_middle_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_middle(void)
{
	unsigned char *p = case_middle_alloc(1024 * KIB);

	if (!p)
		return 1;
	sink = p[128 * PAGE + 5]; /* the only access */
	printf("want pid=%d size=%u function=case_middle_alloc pages=1 first_offset=524288\n",
	       (int)getpid(), 1024 * KIB);
	free(p);
	return 0;
}

NOINLINE unsigned char *case_readwrite_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_readwrite(void)
{
	unsigned char *p = case_readwrite_alloc(1024 * KIB);

	if (!p)
		return 1;
	sink = p[7 * PAGE];                      /* read first... */
	p[7 * PAGE] = (unsigned char)(sink + 1); /* ...then written */
	sink = p[9 * PAGE + 1];                  /* read only */
	if (!strcmp(backend, "file"))
		printf("want pid=%d size=%u function=case_readwrite_alloc pages=1 "
		       "first_offset=36864\n",
		       (int)getpid(), 1024 * KIB);
	else
		printf("want pid=%d size=%u function=case_readwrite_alloc pages=2 "
		       "first_offset=28672\n",
		       (int)getpid(), 1024 * KIB);
	free(p);
	return 0;
}

NOINLINE unsigned char *case_nohandlers_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_nohandlers(void)
{
	unsigned char *p = case_nohandlers_alloc(1024 * KIB);
	int st;

	if (!p)
		return 1;
	p[0] = 1;            /* a written page: the kernel copies the block's page tables */
	sink = p[10 * PAGE]; /* read and never written, in the parent */
	pid_t c = _Fork();
	if (c == 0) {
		p[10 * PAGE] = 0x42;
		unsigned char *q = realloc(p, 8192 * KIB);
		_exit(q && q[0] == 1 && q[10 * PAGE] == 0x42 ? 0 : 1);
	}
	if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "nohandlers: the _Fork child's data did not survive its realloc\n");
		return 1;
	}
	printf("want pid=%d size=%u function=case_nohandlers_alloc pages=1 first_offset=40960\n",
	       (int)getpid(), 1024 * KIB);
	free(p);
	return 0;
}

NOINLINE unsigned char *case_huge_alloc(size_t n)
{
	unsigned char *p = malloc(n);
	KEEP(p);
	return p;
}

static int case_huge(void)
{
	const uintptr_t two_mib = 2048 * KIB;
	unsigned char *p = case_huge_alloc(16384 * KIB);

	if (!p)
		return 1;
	uintptr_t a = ((uintptr_t)p + two_mib - 1) & ~(two_mib - 1);
	sink = *(volatile unsigned char *)(a + 7 * PAGE);
	printf("want pid=%d size=%u function=case_huge_alloc pages=1 first_offset=%lu\n",
	       (int)getpid(), 16384 * KIB, (unsigned long)(a + 7 * PAGE - (uintptr_t)p));
	free(p);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(void);
	} cases[] = {
		{ "fresh", case_fresh },         { "realloc", case_realloc },
		{ "fork", case_fork },           { "write", case_write },
		{ "clean", case_clean },         { "middle", case_middle },
		{ "readwrite", case_readwrite }, { "nohandlers", case_nohandlers },
		{ "huge", case_huge },
	};

	if (argc == 3 && (!strcmp(argv[2], "uffd") || !strcmp(argv[2], "file")))
		backend = argv[2];
	for (size_t i = 0; (argc == 2 || argc == 3) && i < sizeof(cases) / sizeof(cases[0]); i++)
		if (!strcmp(argv[1], cases[i].name))
			return cases[i].fn();
	fprintf(stderr, "usage: report_cases fresh|realloc|fork|write|clean|middle|readwrite|"
			"nohandlers|huge [uffd|file]\n");
	return 2;
}
