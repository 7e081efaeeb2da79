/* Daemon-wide counters, indexed by enum proto_stat: atomics, bumped from
 * the main loop and every worker. Once serving they live in the state
 * snapshot's memfd (persist.c), so that they outlive the process. */
#ifndef REFPAGED_STATS_H
#define REFPAGED_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "proto.h"

extern _Atomic uint64_t *rp_stats;

/* Point the counters at v (its values already set), before any thread
 * but the main one counts. */
void stats_move(_Atomic uint64_t *v);
/* The counters back in the process, with their values (at exit). */
void stats_move_home(void);

/* Gauges follow what the daemon holds; the others only ever add up. */
static inline int stat_is_gauge(unsigned s)
{
	return s == PROTO_STAT_CLIENTS || s == PROTO_STAT_PROCESSES || s == PROTO_STAT_RANGES ||
	       s == PROTO_STAT_BYTES || s == PROTO_STAT_TEMPLATES;
}

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
