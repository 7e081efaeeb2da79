/* Helpers of the multi-tenant attack suite: see tenant.h. */
#include "tenant.h"
#include "tutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t tn_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

double tn_now(void)
{
	return (double)tn_now_ns() / 1e9;
}

void tn_sleep(double s)
{
	struct timespec t;

	if (s <= 0)
		return;
	t.tv_sec = (time_t)s;
	t.tv_nsec = (long)((s - (double)t.tv_sec) * 1e9);
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

void tn_lat_init(struct tn_lat *l, size_t cap)
{
	memset(l, 0, sizeof(*l));
	l->v = calloc(cap ? cap : 1, sizeof(*l->v));
	l->cap = l->v ? cap : 0;
	l->rng = 0x9e3779b97f4a7c15ull;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

void tn_lat_add(struct tn_lat *l, uint64_t ns)
{
	l->seen++;
	if (ns > l->max)
		l->max = ns;
	if (l->n < l->cap) {
		l->v[l->n++] = ns;
		return;
	}
	if (!l->cap)
		return;
	uint64_t j = xorshift(&l->rng) % l->seen;
	if (j < l->cap)
		l->v[j] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t tn_lat_pct(const struct tn_lat *l, double p)
{
	if (!l->n)
		return 0;
	uint64_t *c = malloc(l->n * sizeof(*c));
	if (!c)
		return 0;
	memcpy(c, l->v, l->n * sizeof(*c));
	qsort(c, l->n, sizeof(*c), cmp_u64);
	size_t i = (size_t)(p / 100.0 * (double)(l->n - 1) + 0.5);
	uint64_t r = c[i < l->n ? i : l->n - 1];
	free(c);
	return r;
}

void tn_lat_free(struct tn_lat *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* --- key=value options ---------------------------------------------------- */

#define TN_MAX_OPTS 64

static struct {
	const char *key, *val;
	size_t klen;
	int used;
} opts[TN_MAX_OPTS];
static int nopts;

void tn_opts(int argc, char **argv)
{
	for (int i = 0; i < argc && nopts < TN_MAX_OPTS; i++) {
		const char *eq = strchr(argv[i], '=');
		if (!eq)
			continue;
		opts[nopts].key = argv[i];
		opts[nopts].klen = (size_t)(eq - argv[i]);
		opts[nopts].val = eq + 1;
		nopts++;
	}
}

const char *tn_opt_str(const char *key, const char *def)
{
	size_t k = strlen(key);

	/* The last one given wins. */
	for (int i = nopts; i-- > 0;)
		if (opts[i].klen == k && !strncmp(opts[i].key, key, k)) {
			for (int j = 0; j < nopts; j++)
				if (opts[j].klen == k && !strncmp(opts[j].key, key, k))
					opts[j].used = 1;
			return opts[i].val;
		}
	return def;
}

long long tn_parse_size(const char *s)
{
	char *end;

	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (errno || end == s || v < 0)
		return -1;
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'G':
		v <<= 30;
		end++;
		break;
	default:
		break;
	}
	return *end ? -1 : v;
}

long long tn_opt_ll(const char *key, long long def)
{
	const char *s = tn_opt_str(key, NULL);
	long long v;

	if (!s)
		return def;
	v = tn_parse_size(s);
	return v < 0 ? def : v;
}

double tn_opt_double(const char *key, double def)
{
	const char *s = tn_opt_str(key, NULL);
	char *end;

	if (!s)
		return def;
	double v = strtod(s, &end);
	return end == s ? def : v;
}

const char *tn_opts_unused(void)
{
	for (int i = 0; i < nopts; i++)
		if (!opts[i].used)
			return opts[i].key;
	return NULL;
}

void tn_fill_page(void *page, uint32_t seed)
{
	tu_fill_bytes(page, TN_PAGE, seed);
}

size_t tn_count_diff(const void *a, const void *b, size_t n)
{
	const volatile uint8_t *x = a;
	const uint8_t *y = b;
	size_t d = 0;

	for (size_t i = 0; i < n; i++)
		d += x[i] != y[i];
	return d;
}
