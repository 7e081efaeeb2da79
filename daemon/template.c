/* Template store: a chained hash table keyed by page contents and owner. */
#include "template.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* One page of bucket pointers: mmap rounds up to a page anyway. */
#define TMPL_MIN_BUCKETS (TMPL_PAGE / sizeof(struct tmpl *))

#define P1 0x9e3779b185ebca87ull
#define P2 0xc2b2ae3d27d4eb4full
#define P3 0x165667b19e3779f9ull

static uint64_t rotl(uint64_t x, int r)
{
	return x << r | x >> (64 - r);
}

/* Four independent multiply-rotate lanes (the xxh64 round) keep the
 * multiplier busy; the final avalanche spreads every input bit over the
 * low bits that pick the bucket. */
static uint64_t page_hash(const uint8_t *p)
{
	uint64_t lane[4] = { P1 + P2, P2, 0, 0 - P1 };

	for (size_t i = 0; i < TMPL_PAGE; i += sizeof(lane)) {
		for (int l = 0; l < 4; l++) {
			uint64_t w;
			/* The caller's page may sit unaligned in a message buffer. */
			memcpy(&w, p + i + l * sizeof(w), sizeof(w));
			lane[l] = rotl(lane[l] + w * P2, 31) * P1;
		}
	}
	uint64_t h = rotl(lane[0], 1) + rotl(lane[1], 7) + rotl(lane[2], 12) + rotl(lane[3], 18);
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

/* Each byte equals the next and the first is zero. */
static int page_is_zero(const uint8_t *p)
{
	return p[0] == 0 && memcmp(p, p + 1, TMPL_PAGE - 1) == 0;
}

static struct tmpl **bucket_alloc(size_t n)
{
	/* Anonymous memory is zeroed: every chain starts empty. */
	void *b = mmap(NULL, n * sizeof(struct tmpl *), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return b == MAP_FAILED ? NULL : b;
}

static void bucket_free(struct tmpl **b, size_t n)
{
	munmap(b, n * sizeof(struct tmpl *));
}

/* The owner's key goes into the hash: the same page of two owners is two
 * templates in two (usually different) chains. */
static uint64_t tmpl_hash(const uint8_t *page, uint32_t key)
{
	return page_hash(page) ^ (((uint64_t)key + 1) * P3);
}

int tmpl_store_init(struct tmpl_store *s, size_t max, unsigned slab_pages,
		    const struct tmpl_ops *ops)
{
	int err;

	memset(s, 0, sizeof(*s));
	s->buckets = bucket_alloc(TMPL_MIN_BUCKETS);
	if (!s->buckets)
		return -errno;
	err = pthread_mutex_init(&s->lock, NULL);
	if (err) {
		bucket_free(s->buckets, TMPL_MIN_BUCKETS);
		return -err;
	}
	s->nbuckets = TMPL_MIN_BUCKETS;
	s->max = max;
	s->slab_pages = slab_pages < 1                 ? 1
			: slab_pages > TMPL_SLAB_PAGES ? TMPL_SLAB_PAGES
						       : slab_pages;
	s->next_id = 1;
	s->ops = ops;
	return 0;
}

void tmpl_store_fini(struct tmpl_store *s)
{
	assert(s->count == 0);
	bucket_free(s->buckets, s->nbuckets);
	pthread_mutex_destroy(&s->lock);
	s->buckets = NULL;
	s->nbuckets = 0;
}

static struct tmpl **chain(struct tmpl_store *s, uint64_t hash)
{
	/* nbuckets is a power of two. */
	return &s->buckets[hash & (s->nbuckets - 1)];
}

static struct tmpl *lookup(struct tmpl_store *s, const void *page, uint32_t key, uint64_t hash)
{
	for (struct tmpl *t = *chain(s, hash); t; t = t->next)
		if (t->hash == hash && t->key == key && memcmp(t->page, page, TMPL_PAGE) == 0)
			return t;
	return NULL;
}

/* Doubling keeps chains short on average. When the new array cannot be
 * had, the old one stays: lookups get slower, never wrong. */
static void grow(struct tmpl_store *s)
{
	size_t n = s->nbuckets * 2;
	struct tmpl **b = bucket_alloc(n);

	if (!b)
		return;
	for (size_t i = 0; i < s->nbuckets; i++) {
		struct tmpl *t = s->buckets[i];
		while (t) {
			struct tmpl *next = t->next;
			t->next = b[t->hash & (n - 1)];
			b[t->hash & (n - 1)] = t;
			t = next;
		}
	}
	bucket_free(s->buckets, s->nbuckets);
	s->buckets = b;
	s->nbuckets = n;
}

static int charge(struct tmpl_store *s, void *owner, int64_t bytes)
{
	return s->ops && s->ops->charge ? s->ops->charge(owner, bytes) : 0;
}

/* What a template costs its owner before any slab. */
#define TMPL_COST ((int64_t)(sizeof(struct tmpl) + TMPL_PAGE))

/* The page is mmap'd, not malloc'd, so that it is page aligned: it is a
 * UFFDIO_COPY source. */
static struct tmpl *tmpl_new(struct tmpl_store *s, void *owner, uint32_t key, const void *page,
			     uint64_t hash)
{
	int e = charge(s, owner, TMPL_COST);
	struct tmpl *t = e ? NULL : calloc(1, sizeof(*t));

	if (!t) {
		if (!e)
			charge(s, owner, -TMPL_COST);
		errno = e ? -e : ENOMEM;
		return NULL;
	}
	t->page = mmap(NULL, TMPL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t->page == MAP_FAILED) {
		free(t);
		charge(s, owner, -TMPL_COST);
		errno = ENOMEM;
		return NULL;
	}
	memcpy(t->page, page, TMPL_PAGE);
	atomic_init(&t->slab, NULL);
	t->hash = hash;
	t->owner = owner;
	t->key = key;
	t->refs = 1;
	t->is_zero = page_is_zero(t->page);
	if (s->ops && s->ops->owner_ref)
		s->ops->owner_ref(owner);
	return t;
}

static void tmpl_free(struct tmpl_store *s, struct tmpl *t)
{
	uint8_t *slab = atomic_load_explicit(&t->slab, memory_order_acquire);
	int64_t cost = TMPL_COST;

	if (slab) {
		munmap(slab, (size_t)s->slab_pages * TMPL_PAGE);
		cost += (int64_t)s->slab_pages * TMPL_PAGE;
	}
	munmap(t->page, TMPL_PAGE);
	charge(s, t->owner, -cost);
	if (s->ops && s->ops->owner_put)
		s->ops->owner_put(t->owner);
	free(t);
}

/* Creation happens under the lock: it is rare (a client request on the
 * main loop), and a lookup-unlock-create-relock scheme would need a second
 * lookup and a way to undo a lost race. */
static struct tmpl *insert_new(struct tmpl_store *s, void *owner, uint32_t key, const void *page,
			       uint64_t hash, uint32_t id)
{
	struct tmpl *t;

	if (s->max && s->count >= s->max) {
		errno = ENOSPC;
		return NULL;
	}
	t = tmpl_new(s, owner, key, page, hash);
	if (!t)
		return NULL;
	t->id = id ? id : s->next_id++;
	if (t->id >= s->next_id)
		s->next_id = t->id + 1;
	t->next = *chain(s, hash);
	*chain(s, hash) = t;
	if (++s->count > s->nbuckets)
		grow(s);
	return t;
}

struct tmpl *tmpl_get_page(struct tmpl_store *s, void *owner, uint32_t key, const void *page,
			   uint32_t id)
{
	uint64_t hash = tmpl_hash(page, key);
	struct tmpl *t;
	int err = 0, made = 0;

	pthread_mutex_lock(&s->lock);
	t = lookup(s, page, key, hash);
	if (t) {
		t->refs++;
	} else {
		t = insert_new(s, owner, key, page, hash, id);
		err = errno;
		made = t != NULL;
	}
	pthread_mutex_unlock(&s->lock);
	if (!t)
		errno = err;
	else if (made && s->ops && s->ops->made)
		s->ops->made(s->ops->ctx, t);
	return t;
}

struct tmpl *tmpl_get_fill(struct tmpl_store *s, void *owner, uint32_t key, uint8_t byte)
{
	uint8_t page[TMPL_PAGE];

	/* Built out in full so that a fill and an identical created page are
	 * one template. */
	memset(page, byte, sizeof(page));
	return tmpl_get_page(s, owner, key, page, 0);
}

void tmpl_ref(struct tmpl_store *s, struct tmpl *t)
{
	pthread_mutex_lock(&s->lock);
	assert(t->refs > 0);
	t->refs++;
	pthread_mutex_unlock(&s->lock);
}

static void unlink_tmpl(struct tmpl_store *s, struct tmpl *t)
{
	struct tmpl **pp = chain(s, t->hash);

	while (*pp != t)
		pp = &(*pp)->next;
	*pp = t->next;
	s->count--;
}

void tmpl_put(struct tmpl_store *s, struct tmpl *t)
{
	int last;

	pthread_mutex_lock(&s->lock);
	assert(t->refs > 0);
	last = --t->refs == 0;
	if (last)
		unlink_tmpl(s, t);
	pthread_mutex_unlock(&s->lock);
	/* Unreachable from the table now: the rest needs no lock. */
	if (!last)
		return;
	if (s->ops && s->ops->freed)
		s->ops->freed(s->ops->ctx, t);
	tmpl_free(s, t);
}

size_t tmpl_count(struct tmpl_store *s)
{
	size_t n;

	pthread_mutex_lock(&s->lock);
	n = s->count;
	pthread_mutex_unlock(&s->lock);
	return n;
}

uint32_t tmpl_next_id(struct tmpl_store *s)
{
	uint32_t n;

	pthread_mutex_lock(&s->lock);
	n = s->next_id;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void tmpl_store_foreach(struct tmpl_store *s, void (*fn)(struct tmpl *t, void *arg), void *arg)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nbuckets; i++)
		for (struct tmpl *t = s->buckets[i]; t; t = t->next)
			fn(t, arg);
	pthread_mutex_unlock(&s->lock);
}

static uint8_t *slab_make(const uint8_t *page, unsigned pages)
{
	size_t len = (size_t)pages * TMPL_PAGE;
	uint8_t *slab = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (slab == MAP_FAILED) {
		errno = ENOMEM;
		return NULL;
	}
	for (size_t off = 0; off < len; off += TMPL_PAGE)
		memcpy(slab + off, page, TMPL_PAGE);
	return slab;
}

/* Lock free: workers call this on the fault path. Two racing workers may
 * both build a slab; the loser unmaps its own and uses the winner's. */
const void *tmpl_slab(struct tmpl_store *s, struct tmpl *t, unsigned n)
{
	int64_t cost = (int64_t)s->slab_pages * TMPL_PAGE;
	uint8_t *slab, *expected = NULL;

	if (n < 1 || n > s->slab_pages) {
		errno = EINVAL;
		return NULL;
	}
	slab = atomic_load_explicit(&t->slab, memory_order_acquire);
	if (slab)
		return slab;
	if (charge(s, t->owner, cost) < 0)
		return NULL;
	slab = slab_make(t->page, s->slab_pages);
	if (!slab) {
		charge(s, t->owner, -cost);
		return NULL;
	}
	if (atomic_compare_exchange_strong_explicit(&t->slab, &expected, slab, memory_order_acq_rel,
						    memory_order_acquire))
		return slab;
	munmap(slab, (size_t)s->slab_pages * TMPL_PAGE);
	charge(s, t->owner, -cost);
	return expected;
}
