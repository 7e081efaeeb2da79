/* A map from nonzero 64-bit keys to 64-bit values: open addressing with
 * linear probing, grown to keep it at most half full. The restart wing's
 * bookkeeping (ids to objects on a restore, objects to image indexes on a
 * compaction); one thread at a time.
 *
 * A value of 0 reads as absent: putting 0 forgets a key (its slot stays
 * taken, which probing needs, and is reused if the key comes back). */
#ifndef REFPAGED_HMAP_H
#define REFPAGED_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hmap {
	uint64_t *k, *v;
	size_t cap, n;  /* slots (a power of two, or 0), slots taken */
	unsigned shift; /* 64 - log2(cap) */
};

/* The value of key (nonzero), 0 if none. */
uint64_t hmap_get(const struct hmap *m, uint64_t key);
/* 0, or -ENOMEM with the map as it was (a key already there: always 0). */
int hmap_put(struct hmap *m, uint64_t key, uint64_t v);
void hmap_free(struct hmap *m);

/* Each key with a nonzero value: for (size_t i = 0; hmap_next(m, &i);)
 * then m->k[i - 1], m->v[i - 1]. */
static inline int hmap_next(const struct hmap *m, size_t *i)
{
	while (*i < m->cap) {
		size_t j = (*i)++;
		if (m->k[j] && m->v[j])
			return 1;
	}
	return 0;
}

#endif
