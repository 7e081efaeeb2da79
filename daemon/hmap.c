/* The restart wing's map (hmap.h). */
#include "hmap.h"

#include <errno.h>
#include <stdlib.h>

/* Fibonacci hashing: the high bits of key times 2^64/phi, so that keys
 * alike in their low bits (pointers, consecutive ids) spread. */
static size_t slot(const struct hmap *m, uint64_t key)
{
	size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> m->shift);

	while (m->k[i] && m->k[i] != key)
		i = (i + 1) & (m->cap - 1);
	return i;
}

uint64_t hmap_get(const struct hmap *m, uint64_t key)
{
	return key && m->cap ? m->v[slot(m, key)] : 0;
}

static int grow(struct hmap *m)
{
	struct hmap n = { .cap = m->cap ? m->cap * 2 : 64, .shift = m->cap ? m->shift - 1 : 58 };

	n.k = calloc(n.cap, sizeof(*n.k));
	n.v = calloc(n.cap, sizeof(*n.v));
	if (!n.k || !n.v) {
		free(n.k);
		free(n.v);
		return -ENOMEM;
	}
	for (size_t i = 0; hmap_next(m, &i);) {
		size_t j = slot(&n, m->k[i - 1]);
		n.k[j] = m->k[i - 1];
		n.v[j] = m->v[i - 1];
		n.n++;
	}
	hmap_free(m);
	*m = n;
	return 0;
}

/* A key already there only changes its value: never a grow, so a walk
 * (hmap_next) may forget or change what it visits. */
int hmap_put(struct hmap *m, uint64_t key, uint64_t v)
{
	size_t i;

	if (m->cap && m->k[i = slot(m, key)] == key) {
		m->v[i] = v;
		return 0;
	}
	if ((m->n + 1) * 2 > m->cap && grow(m) < 0)
		return -ENOMEM;
	i = slot(m, key);
	m->n++;
	m->k[i] = key;
	m->v[i] = v;
	return 0;
}

void hmap_free(struct hmap *m)
{
	free(m->k);
	free(m->v);
	*m = (struct hmap){ 0 };
}
