/* Daemon-wide counters, indexed by enum proto_stat: atomics, bumped from
 * the main loop and every worker. */
#ifndef REFPAGED_STATS_H
#define REFPAGED_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "proto.h"

extern _Atomic uint64_t rp_stats[PROTO_STAT_COUNT];

static inline void stat_add(enum proto_stat s, int64_t v)
{
	atomic_fetch_add_explicit(&rp_stats[s], (uint64_t)v, memory_order_relaxed);
}

static inline void stat_inc(enum proto_stat s)
{
	stat_add(s, 1);
}

static inline uint64_t stat_get(enum proto_stat s)
{
	return atomic_load_explicit(&rp_stats[s], memory_order_relaxed);
}

#endif
