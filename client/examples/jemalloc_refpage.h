/* jemalloc_refpage: a jemalloc arena whose memory comes from refpage
 * mappings, through jemalloc's extent hooks (see jemalloc_refpage.c). */
#ifndef JEMALLOC_REFPAGE_H
#define JEMALLOC_REFPAGE_H

#include <stdint.h>

#include <refpage.h>

/* Make an arena (mallctl "arenas.create") whose extents read as pattern
 * until written. retain 0: freed extents are unmapped (dalloc succeeds);
 * retain 1: jemalloc keeps their address space and purges them with
 * MADV_DONTNEED, after which they read as the pattern again. retain 0
 * needs jemalloc's opt.retain off (MALLOC_CONF=retain:false), else
 * -ENOTSUP (see jemalloc_refpage.c for why). c must stay
 * connected for the arena's life. Allocate with
 * mallocx(n, MALLOCX_ARENA(*arena) | MALLOCX_TCACHE_NONE). 0 or -errno. */
int jrp_arena_create(rp_client *c, uint8_t pattern, int retain, unsigned *arena);

#endif
