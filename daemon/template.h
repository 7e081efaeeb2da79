/* Template store: reference pages, refcounted, freed with their last user,
 * deduplicated by content within one owner (a uid) and never across
 * owners: whether another uid holds a page with given bytes must not show
 * in anything a client sees (a count, an error, a timing).
 *
 * Each template is charged to its owner: its page, and the slab of
 * consecutive copies a multi-page fill copies from (made on first use,
 * only if the owner's budget allows; else fills go one page at a time).
 *
 * Thread safe: sessions create and release templates on the main loop
 * while workers read them, build slabs and drop references from uffd
 * events. Pure: the owner's accounting and the observer come in as ops. */
#ifndef REFPAGED_TEMPLATE_H
#define REFPAGED_TEMPLATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define TMPL_PAGE 4096u
/* Most pages one UFFDIO_COPY fills from a template slab. */
#define TMPL_SLAB_PAGES 64u

struct tmpl {
	uint8_t *page;         /* TMPL_PAGE bytes, read only after creation */
	uint8_t *_Atomic slab; /* slab_pages consecutive copies, made on first use */
	uint64_t hash;         /* of the contents and the owner's key */
	void *owner;           /* charged for it (an account) */
	uint32_t key;          /* the owner's dedup domain (its uid) */
	uint32_t id;           /* unique while the store lives (the restart wing's name) */
	uint32_t refs;         /* under the store lock */
	uint8_t is_zero;       /* all zero: read faults can use UFFDIO_ZEROPAGE */
	uint8_t reserved[3];
	_Atomic uintptr_t obs; /* the observer's own (daemon/persist.c: its page) */
	struct tmpl *next;     /* hash chain */
};

struct tmpl_ops {
	/* Charge (bytes > 0) or uncharge (< 0) the owner's memory: 0 or -errno. */
	int (*charge)(void *owner, int64_t bytes);
	void (*owner_ref)(void *owner);
	void (*owner_put)(void *owner);
	/* The observer: a template came to be (main thread, outside the
	 * store's lock: it may do I/O) or goes (any thread, before its page
	 * is freed). Either may be NULL. */
	void (*made)(void *ctx, struct tmpl *t);
	void (*freed)(void *ctx, struct tmpl *t);
	void *ctx;
};

struct tmpl_store {
	pthread_mutex_t lock;
	struct tmpl **buckets; /* mmap'd */
	size_t nbuckets;
	size_t count;        /* distinct templates alive */
	size_t max;          /* most distinct templates, 0 = unlimited */
	unsigned slab_pages; /* copies in a slab (the largest fill window) */
	uint32_t next_id;
	const struct tmpl_ops *ops;
};

int tmpl_store_init(struct tmpl_store *s, size_t max, unsigned slab_pages,
		    const struct tmpl_ops *ops);
/* Every template must have been put. */
void tmpl_store_fini(struct tmpl_store *s);

/* A referenced template of owner (dedup domain key) with these contents:
 * the owner's existing one, else a new one charged to it (id 0: the next
 * free id; a restart passes the id it had). NULL and errno: ENOSPC past
 * the store's max, EDQUOT past the owner's budget, ENOMEM. */
struct tmpl *tmpl_get_page(struct tmpl_store *s, void *owner, uint32_t key, const void *page,
			   uint32_t id);
struct tmpl *tmpl_get_fill(struct tmpl_store *s, void *owner, uint32_t key, uint8_t byte);
void tmpl_ref(struct tmpl_store *s, struct tmpl *t);
void tmpl_put(struct tmpl_store *s, struct tmpl *t);
size_t tmpl_count(struct tmpl_store *s);
/* The id the next new template gets (any thread). */
uint32_t tmpl_next_id(struct tmpl_store *s);
/* fn on every live template, under the store lock: fn must not call into
 * the store. */
void tmpl_store_foreach(struct tmpl_store *s, void (*fn)(struct tmpl *t, void *arg), void *arg);

/* n (1..slab_pages) consecutive copies of the page, for one UFFDIO_COPY of
 * n pages. NULL if the slab cannot be had (the owner's budget, or no
 * memory): the caller then fills one page at a time from t->page. */
const void *tmpl_slab(struct tmpl_store *s, struct tmpl *t, unsigned n);

#endif
