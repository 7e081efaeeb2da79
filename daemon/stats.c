/* Daemon-wide counters: see stats.h. */
#include "stats.h"

static _Atomic uint64_t home[PROTO_STAT_COUNT];
_Atomic uint64_t *rp_stats = home;

void stats_move(_Atomic uint64_t *v)
{
	rp_stats = v;
}

void stats_move_home(void)
{
	for (unsigned i = 0; i < PROTO_STAT_COUNT; i++)
		atomic_store(&home[i], atomic_load(&rp_stats[i]));
	rp_stats = home;
}
