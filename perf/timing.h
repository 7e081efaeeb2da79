/* Clock and sort helpers shared by the stand-alone perf programs
 * (event-cost, fork-latency); refpage-bench keeps its own in probe.c and
 * cell.c. */
#ifndef RP_PERF_TIMING_H
#define RP_PERF_TIMING_H

#include <time.h>

static inline double timing_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* qsort comparator for doubles, ascending. */
static inline int timing_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

#endif
