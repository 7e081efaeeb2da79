/* Small helpers several test programs share, header only: the tests that
 * link rp_test_load, the tenant suite and tests/tenant/fork_gate.c (which
 * links none of the test libraries). libc only. */
#ifndef RP_TUTIL_H
#define RP_TUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* n pseudo-random bytes from seed (xorshift32): the same bytes for the
 * same seed in every program that makes them. */
static inline void tu_fill_bytes(void *p, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	uint8_t *b = p;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)(x >> 11);
	}
}

/* The integer a file (a sysctl under /proc/sys) starts with, or -1. */
static inline int tu_read_int(const char *path)
{
	FILE *f = fopen(path, "r");
	int v = -1;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

#endif
