/* Fact f: which system calls glibc's malloc/free make at run time in a
 * multi-threaded process. 12 threads (more than the 8 arenas glibc makes
 * before it asks for the CPU count) allocate and free a mix of sizes, with
 * bursts that grow and then empty their arenas' heaps, and some blocks
 * above the mmap threshold. close(-1) and close(-2) mark the measured part
 * in an strace log; the thread creation before them is not malloc's.
 *   cc -O2 -Wall -pthread -o malloc_syscalls malloc_syscalls.c
 *   strace -f -o log ./malloc_syscalls [arena1] [trim]; see README.md
 * arena1: mallopt(M_ARENA_MAX, 1); trim: mallopt(M_TRIM_THRESHOLD, 1 GiB). */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 12
#define ROUNDS 40
#define LIVE 2000

static pthread_barrier_t start, done;

static void *work(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	static __thread void *live[LIVE];

	pthread_barrier_wait(&start);
	for (int r = 0; r < ROUNDS; r++) {
		/* grow: many blocks up to 64 KiB, a few of 2 MiB (mmap) */
		for (int i = 0; i < LIVE; i++) {
			size_t sz = (size_t)(rand_r(&seed) % 65536) + 16;
			if (i % 500 == 0)
				sz = 2u << 20;
			live[i] = malloc(sz);
			memset(live[i], 1, sz < 4096 ? sz : 4096);
		}
		/* shrink: free all, the heap's top becomes free */
		for (int i = LIVE; i-- > 0;)
			free(live[i]);
	}
	pthread_barrier_wait(&done);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[THREADS];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "arena1"))
			mallopt(M_ARENA_MAX, 1);
		if (!strcmp(argv[i], "trim"))
			mallopt(M_TRIM_THRESHOLD, 1 << 30);
	}
	pthread_barrier_init(&start, NULL, THREADS + 1);
	pthread_barrier_init(&done, NULL, THREADS + 1);
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, work, (void *)(uintptr_t)(i + 1));
	close(-1); /* marker: malloc's part starts */
	pthread_barrier_wait(&start);
	pthread_barrier_wait(&done);
	close(-2); /* marker: it ends */
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	return 0;
}
