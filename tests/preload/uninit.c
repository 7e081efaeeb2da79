/* uninit: reads heap memory it never wrote, as a buggy program would, and
 * prints what it saw. Under refpage-run --mode refpage or memset the large
 * blocks read as the pattern; run plainly they read as zeros (fresh
 * mappings). Also checks what must hold in every mode: calloc zeros,
 * realloc keeping contents, alignment, malloc_usable_size.
 *   uninit [BYTES]   (default 4 MiB)
 * Prints one line "uninit: XX XX XX XX" (bytes at offsets 0, 4097, the
 * middle and the end) and exits 1 if a mode-independent check failed. */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed;

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "uninit: FAIL %s\n", what);
		failed = 1;
	}
}

static int all(const unsigned char *p, size_t n, unsigned char b)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != b)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoull(argv[1], NULL, 0) : 4u << 20;
	volatile unsigned char *p = malloc(n);

	if (!p || n < 8192)
		return 2;
	printf("uninit: %02x %02x %02x %02x\n", p[0], p[4097], p[n / 2], p[n - 1]);
	unsigned char first = p[0];

	/* The same pattern everywhere in a fresh block. */
	check(all((const unsigned char *)p, n, first), "fresh block not uniform");
	check(malloc_usable_size((void *)p) >= n, "malloc_usable_size too small");

	/* calloc: zeros whatever the mode. */
	unsigned char *z = calloc(1, n);
	check(z && all(z, n, 0), "large calloc not zero");
	free(z);

	/* realloc keeps the contents, and the grown part of a block reads
	 * like a fresh one. */
	memset((void *)p, 0x5c, n);
	unsigned char *q = realloc((void *)p, 3 * n);
	check(q && all(q, n, 0x5c), "realloc lost contents");
	check(q && all(q + n, 2 * n, first), "grown part differs from a fresh block");
	q = realloc(q, 100);
	check(q && all(q, 100, 0x5c), "shrinking realloc lost contents");
	free(q);

	/* Alignment, large and small. */
	void *a = NULL;
	check(posix_memalign(&a, 1 << 21, n) == 0 && ((uintptr_t)a & ((1 << 21) - 1)) == 0,
	      "posix_memalign 2 MiB");
	check(a && all(a, n, first), "aligned block differs from a fresh block");
	free(a);
	a = aligned_alloc(64, 1000);
	check(a && ((uintptr_t)a & 63) == 0, "aligned_alloc 64");
	free(a);
	a = memalign(8192, n);
	check(a && ((uintptr_t)a & 8191) == 0, "memalign 8192");
	free(a);
	a = valloc(n);
	check(a && ((uintptr_t)a & 4095) == 0, "valloc");
	free(a);
	a = pvalloc(n + 1);
	check(a && ((uintptr_t)a & 4095) == 0 && malloc_usable_size(a) >= n + 1, "pvalloc");
	free(a);
	/* Small blocks grown past the threshold keep their contents. */
	char *s = malloc(64);
	strcpy(s, "small to large");
	s = reallocarray(s, 2, n);
	check(s && strcmp(s, "small to large") == 0, "small block grown to large");
	free(s);
	volatile size_t huge = SIZE_MAX / 2;
	check(reallocarray(NULL, huge, 3) == NULL, "reallocarray overflow");
	check(calloc(huge, 3) == NULL, "calloc overflow");
	return failed;
}
