/* Daemon-wide counters: see stats.h. */
#include "stats.h"

_Atomic uint64_t rp_stats[PROTO_STAT_COUNT];
