/* Template store: reference pages, deduplicated by content across every
 * client, refcounted, freed with their last user. Thread safe: sessions
 * create and release templates on the main loop while workers read them
 * and drop references from uffd events. */
#ifndef REFPAGED_TEMPLATE_H
#define REFPAGED_TEMPLATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define TMPL_PAGE 4096u
/* Most pages one UFFDIO_COPY fills from a template slab. */
#define TMPL_SLAB_PAGES 64u

struct tmpl {
	uint8_t *page;       /* TMPL_PAGE bytes, read only after creation */
	uint8_t *_Atomic slab; /* TMPL_SLAB_PAGES consecutive copies, made on first use */
	uint64_t hash;
	uint32_t refs;       /* under the store lock */
	uint8_t is_zero;     /* all zero: read faults can use UFFDIO_ZEROPAGE */
	uint8_t reserved[3];
	struct tmpl *next;   /* hash chain */
	/* daemon/persist.c's: where the page is in the snapshot (page + 1,
	 * 0: not written yet), its CRC32C, and its position in the body being
	 * built. Only the main thread touches them. */
	uint32_t snap_page, snap_crc, snap_pos;
};

struct tmpl_store {
	pthread_mutex_t lock;
	struct tmpl **buckets; /* mmap'd */
	size_t nbuckets;
	size_t count;        /* distinct templates alive */
	size_t max;          /* most distinct templates, 0 = unlimited */
};

int tmpl_store_init(struct tmpl_store *s, size_t max);
/* Every template must have been put. */
void tmpl_store_fini(struct tmpl_store *s);

/* A referenced template with these contents: an existing one when the
 * store has it, else a new one. NULL and errno (ENOSPC past max, ENOMEM). */
struct tmpl *tmpl_get_page(struct tmpl_store *s, const void *page);
struct tmpl *tmpl_get_fill(struct tmpl_store *s, uint8_t byte);
void tmpl_ref(struct tmpl_store *s, struct tmpl *t);
void tmpl_put(struct tmpl_store *s, struct tmpl *t);
size_t tmpl_count(struct tmpl_store *s);
/* fn on every live template, under the store lock: fn must not call into
 * the store. */
void tmpl_store_foreach(struct tmpl_store *s, void (*fn)(struct tmpl *t, void *arg), void *arg);

/* n (1..TMPL_SLAB_PAGES) consecutive copies of the page, for one
 * UFFDIO_COPY of n pages. NULL and errno ENOMEM if the slab cannot be made
 * (the caller then fills one page at a time from t->page). */
const void *tmpl_slab(struct tmpl *t, unsigned n);

#endif
