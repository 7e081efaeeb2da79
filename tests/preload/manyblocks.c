/* rp_preload_manyblocks N SIZE: N live blocks of SIZE bytes from malloc,
 * every one's first and last byte read (the pattern expected: 0xAA), then
 * a mapping of the program's own, which must still be possible; prints
 * "manyblocks: ok N" or what went wrong. Under the file backend each block
 * is a mapping of its own: the shim must leave the program room below
 * vm.max_map_count. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return fprintf(stderr, "usage: manyblocks N SIZE\n"), 2;
	long n = atol(argv[1]);
	size_t size = (size_t)atol(argv[2]);
	unsigned char **b = calloc((size_t)n, sizeof(*b));
	long bad = 0;

	if (!b || n <= 0 || size < 2)
		return fprintf(stderr, "manyblocks: bad arguments\n"), 2;
	for (long i = 0; i < n; i++) {
		if (!(b[i] = malloc(size)))
			return printf("manyblocks: malloc %ld of %ld failed\n", i, n), 1;
		/* Read as memory, not as C values never written: the compiler
		 * is told the block may have been written behind its back. */
		__asm__ volatile("" : : "r"(b[i]) : "memory");
		const volatile unsigned char *v = b[i];
		bad += v[0] != 0xAA || v[size - 1] != 0xAA;
	}
	/* Many small mappings of the program's own, each a VMA. */
	for (int i = 0; i < 1000; i++) {
		void *p = mmap(NULL, 4096, i & 1 ? PROT_READ : PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return printf("manyblocks: the program's own mmap %d failed\n", i), 1;
	}
	for (long i = 0; i < n; i++)
		free(b[i]);
	if (bad)
		return printf("manyblocks: %ld blocks not 0xAA\n", bad), 1;
	printf("manyblocks: ok %ld\n", n);
	return 0;
}
