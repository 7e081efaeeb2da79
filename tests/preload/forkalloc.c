/* forkalloc: fork inside a program whose allocator is the shim. Worker
 * threads allocate, fill, check and free large blocks all along, while the
 * main thread forks children (and they a grandchild) that allocate and
 * free large blocks of their own and read what the parent wrote before
 * the fork.
 *   forkalloc EXPECTED-BYTE|any [FORKS]
 * EXPECTED-BYTE is what a fresh large block reads as: 0xaa under refpage-run
 * --mode refpage or memset, 0 under --mode anon; "any" for plain glibc,
 * which hands out reused heap memory once its mmap threshold has grown. Prints "forkalloc: ok" and exits
 * 0, or names the first failure and exits 1. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK (1u << 20)

static unsigned char expect;
static int any;
static atomic_int stop, bad;

static void say_bad(const char *what, const unsigned char *p, size_t off, unsigned char want)
{
	fprintf(stderr, "forkalloc: %s: byte %zu of block %p is %#x, want %#x\n", what, off,
		(const void *)p, p[off], want);
}

static int fresh_ok(const unsigned char *p, size_t n)
{
	if (any)
		return 1;
	for (size_t i = 0; i < n; i += 509)
		if (p[i] != expect)
			return say_bad("fresh block", p, i, expect), 0;
	if (p[n - 1] != expect)
		return say_bad("fresh block", p, n - 1, expect), 0;
	return 1;
}

/* Allocate, check the pattern, write, check the writes, free. */
static int churn(unsigned seed, int rounds)
{
	for (int r = 0; r < rounds; r++) {
		size_t n = BLOCK + (size_t)((seed + (unsigned)r) % 7) * 12345;
		unsigned char *p = malloc(n);
		if (!p || !fresh_ok(p, n))
			return -1;
		unsigned char v = (unsigned char)(seed * 31 + (unsigned)r);
		memset(p + n / 3, v, n / 3);
		if (p[n / 3] != v || p[2 * (n / 3) - 1] != v || (!any && p[n / 3 - 1] != expect)) {
			fprintf(stderr, "forkalloc: written block %p reads back wrong\n",
				(void *)p);
			return -1;
		}
		/* Grown in place or moved (mremap): contents kept, the new
		 * part reads like a fresh block. */
		unsigned char *q = realloc(p, 2 * n);
		if (!q || q[n / 3] != v || q[2 * (n / 3) - 1] != v) {
			fprintf(stderr, "forkalloc: realloc to %zu bytes = %p lost contents\n",
				2 * n, (void *)q);
			return -1;
		}
		if (!any && q[2 * n - 1] != expect)
			return say_bad("grown part of realloc'd block", q, 2 * n - 1, expect), -1;
		/* Page-aligned small blocks: not ours, past the table. */
		void *a = NULL;
		if (posix_memalign(&a, 4096, 64) != 0)
			return -1;
		free(a);
		free(q);
	}
	return 0;
}

static void *worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	while (!atomic_load(&stop))
		if (churn(seed++, 4) < 0) {
			atomic_store(&bad, 1);
			break;
		}
	return NULL;
}

/* In a child: the parent's block as written before the fork, then blocks
 * of our own, then (depth permitting) the same one level down. */
static int child(const unsigned char *inherited, int depth)
{
	if (inherited[0] != 0x11 || inherited[BLOCK - 1] != 0x22 ||
	    (!any && inherited[BLOCK / 2] != expect))
		return 1;
	if (churn((unsigned)getpid(), 8) < 0)
		return 2;
	if (depth > 0) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(child(inherited, depth - 1));
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
			return 3;
	}
	return 0;
}

int main(int argc, char **argv)
{
	pthread_t t[3];
	int forks = argc > 2 ? atoi(argv[2]) : 6;

	if (argc < 2)
		return 2;
	any = strcmp(argv[1], "any") == 0;
	expect = (unsigned char)strtoul(argv[1], NULL, 0);
	unsigned char *keep = malloc(BLOCK);
	if (!keep || !fresh_ok(keep, BLOCK))
		return fprintf(stderr, "forkalloc: first block does not read %#x\n", expect), 1;
	keep[0] = 0x11;
	keep[BLOCK - 1] = 0x22;
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i * 1000 + 1));
	int fail = 0;
	for (int i = 0; i < forks && !fail; i++) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(child(keep, 1));
		int st = 0;
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "forkalloc: child %d failed (status %#x)\n", i, st);
			fail = 1;
		}
		/* The parent's later writes are its own. */
		keep[BLOCK / 2 + 1 + (size_t)i] = 0x33;
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	if (atomic_load(&bad))
		fprintf(stderr, "forkalloc: a worker saw wrong bytes\n");
	free(keep);
	if (fail || atomic_load(&bad))
		return 1;
	printf("forkalloc: ok\n");
	return 0;
}
