/* jemalloc_refpage: an allocator that links librefpage. A jemalloc arena
 * with custom extent hooks (mallctl "arenas.create" with an extent_hooks_t)
 * whose extents are refpage mappings: fresh memory, small or large, reads
 * as the pattern without being written, and purged memory reads as the
 * pattern again.
 *
 * The hooks, as jemalloc 5 defines them (false means success):
 *   alloc         rp_map, page aligned; larger alignments over-map and trim
 *                 the ends with rp_unmap; a fixed new_addr is mapped with
 *                 MAP_FIXED_NOREPLACE. *zero is set only for pattern 0.
 *   dalloc        rp_unmap (retain 0); opt out (retain 1), so jemalloc keeps
 *                 the address space and purges it instead. Unmapping needs
 *                 opt.retain false (MALLOC_CONF=retain:false): with
 *                 opt.retain true, jemalloc assumes no two arenas' extents
 *                 are ever neighbours (it only asserts it, in debug builds)
 *                 and keeps extents from merging across mappings by their
 *                 "head" mark alone. Unmapping a split-off piece leaves a
 *                 hole that the next mmap, of any arena, may fill right
 *                 before a piece that is not a head: jemalloc then merges
 *                 extents of two arenas and crashes (seen here within a few
 *                 runs of tests/preload/test_jemalloc.c).
 *   destroy       rp_unmap.
 *   commit        nothing to do: the memory is always usable.
 *   decommit,     MADV_DONTNEED for pattern 0; otherwise opt out. jemalloc
 *   purge_forced  takes a successful decommit or forced purge to mean the
 *                 pages are now zero (extent_dalloc_wrapper marks the extent
 *                 zeroed, and a later MALLOCX_ZERO or calloc from it skips
 *                 its memset). Refpage memory reads as the pattern, so for
 *                 any other pattern these must fail and leave the work to:
 *   purge_lazy    MADV_DONTNEED: contents unspecified to jemalloc, the
 *                 pattern in fact (refpaged's contract, point 3).
 *   split, merge  allowed: rp_unmap and MADV_DONTNEED work on any part of a
 *                 mapping, and on neighbouring mappings together.
 * The hooks run inside jemalloc, under its locks: librefpage never calls
 * malloc, and neither does anything here. */
#include "jemalloc_refpage.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <jemalloc/jemalloc.h>

#define PAGE 4096u

struct jrp_hooks {
	extent_hooks_t hooks; /* first: jemalloc hands us &hooks back */
	rp_client *c;
	uint32_t tmpl;
	uint8_t pattern;
	int retain;
};

static struct jrp_hooks *jrp_of(extent_hooks_t *h)
{
	return (struct jrp_hooks *)h;
}

/* size bytes at an address aligned to align (a power of two >= PAGE). */
static void *map_aligned(struct jrp_hooks *j, size_t size, size_t align)
{
	size_t span = size + align - PAGE;

	if (size > SIZE_MAX - align)
		return NULL;
	char *base = rp_map(j->c, NULL, span, PROT_READ | PROT_WRITE, 0, j->tmpl);
	if (base == MAP_FAILED)
		return NULL;
	char *a = (char *)(((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1));
	if (a > base)
		rp_unmap(j->c, base, (size_t)(a - base));
	if (a + size < base + span)
		rp_unmap(j->c, a + size, (size_t)(base + span - (a + size)));
	return a;
}

static void *map_at(struct jrp_hooks *j, void *addr, size_t size)
{
	void *p = rp_map(j->c, addr, size, PROT_READ | PROT_WRITE, MAP_FIXED_NOREPLACE, j->tmpl);

	if (p == MAP_FAILED)
		return NULL;
	if (p != addr) { /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
		rp_unmap(j->c, p, size);
		return NULL;
	}
	return p;
}

static void *jrp_alloc(extent_hooks_t *h, void *new_addr, size_t size, size_t align, bool *zero,
		       bool *commit, unsigned arena)
{
	struct jrp_hooks *j = jrp_of(h);
	void *p;

	(void)arena;
	if (align < PAGE)
		align = PAGE;
	if (new_addr)
		p = ((uintptr_t)new_addr & (align - 1)) ? NULL : map_at(j, new_addr, size);
	else
		p = map_aligned(j, size, align);
	if (!p)
		return NULL;
	/* Asked for zeros: the pattern will not do. Rare: jemalloc grows its
	 * address space with *zero false and zeroes itself when it must. */
	if (*zero && j->pattern)
		memset(p, 0, size);
	else
		*zero = j->pattern == 0;
	*commit = true;
	return p;
}

static bool jrp_dalloc(extent_hooks_t *h, void *addr, size_t size, bool committed, unsigned arena)
{
	struct jrp_hooks *j = jrp_of(h);

	(void)committed, (void)arena;
	if (j->retain)
		return true;
	return rp_unmap(j->c, addr, size) != 0;
}

static void jrp_destroy(extent_hooks_t *h, void *addr, size_t size, bool committed, unsigned arena)
{
	(void)committed, (void)arena;
	rp_unmap(jrp_of(h)->c, addr, size);
}

static bool jrp_commit(extent_hooks_t *h, void *addr, size_t size, size_t off, size_t len,
		       unsigned arena)
{
	(void)h, (void)addr, (void)size, (void)off, (void)len, (void)arena;
	return false;
}

static bool dontneed(void *addr, size_t off, size_t len)
{
	return madvise((char *)addr + off, len, MADV_DONTNEED) != 0;
}

/* decommit and purge_forced promise zeros to jemalloc: see the top. */
static bool jrp_zeroing_purge(extent_hooks_t *h, void *addr, size_t size, size_t off, size_t len,
			      unsigned arena)
{
	(void)size, (void)arena;
	return jrp_of(h)->pattern ? true : dontneed(addr, off, len);
}

static bool jrp_purge_lazy(extent_hooks_t *h, void *addr, size_t size, size_t off, size_t len,
			   unsigned arena)
{
	(void)h, (void)size, (void)arena;
	return dontneed(addr, off, len);
}

static bool jrp_split(extent_hooks_t *h, void *addr, size_t size, size_t a, size_t b,
		      bool committed, unsigned arena)
{
	(void)h, (void)addr, (void)size, (void)a, (void)b, (void)committed, (void)arena;
	return false;
}

static bool jrp_merge(extent_hooks_t *h, void *addr_a, size_t a, void *addr_b, size_t b,
		      bool committed, unsigned arena)
{
	(void)h, (void)addr_a, (void)a, (void)addr_b, (void)b, (void)committed, (void)arena;
	return false;
}

/* The hooks live as long as their arena: on pages of their own, since the
 * process's malloc may be this very jemalloc. */
int jrp_arena_create(rp_client *c, uint8_t pattern, int retain, unsigned *arena)
{
	struct jrp_hooks *j;
	uint32_t tmpl;
	int r;

	if (!c || !arena)
		return -EINVAL;
	if (!retain) {
		bool opt_retain = true;
		size_t osz = sizeof(opt_retain);
		if (mallctl("opt.retain", &opt_retain, &osz, NULL, 0) != 0 || opt_retain)
			return -ENOTSUP;
	}
	if ((r = rp_template_fill(c, pattern, &tmpl)) < 0)
		return r;
	j = mmap(NULL, sizeof(*j), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (j == MAP_FAILED)
		return -ENOMEM;
	*j = (struct jrp_hooks){
		.hooks = { jrp_alloc, jrp_dalloc, jrp_destroy, jrp_commit, jrp_zeroing_purge,
			   jrp_purge_lazy, jrp_zeroing_purge, jrp_split, jrp_merge },
		.c = c,
		.tmpl = tmpl,
		.pattern = pattern,
		.retain = retain,
	};
	extent_hooks_t *hp = &j->hooks;
	size_t sz = sizeof(*arena);
	if ((r = mallctl("arenas.create", arena, &sz, &hp, sizeof(hp))) != 0) {
		munmap(j, sizeof(*j));
		return -r;
	}
	return 0;
}
