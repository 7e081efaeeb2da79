/* Shared by the multi-tenant attack suite's programs (the driver, the
 * victim, the attacker): clocks, latency reservoirs and percentiles, and
 * key=value command-line options. libc only. */
#ifndef RP_TENANT_H
#define RP_TENANT_H

#include <stddef.h>
#include <stdint.h>

#define TN_PAGE 4096u

uint64_t tn_now_ns(void);
double tn_now(void);
void tn_sleep(double s);

/* Latency samples in ns: every value is counted (n_seen, max), a uniform
 * reservoir of at most cap of them is kept for the percentiles. Not
 * thread safe. */
struct tn_lat {
	uint64_t *v;
	size_t n, cap;
	uint64_t seen, max, rng;
};
void tn_lat_init(struct tn_lat *l, size_t cap);
void tn_lat_add(struct tn_lat *l, uint64_t ns);
/* The p-th percentile (0..100) in ns, 0 when empty. */
uint64_t tn_lat_pct(const struct tn_lat *l, double p);
void tn_lat_free(struct tn_lat *l);

/* key=value arguments: tn_opts(argc, argv) once, then look them up. A
 * key given that nobody looked up is reported by tn_opts_unused. Numbers
 * take C prefixes (0x..) and the suffixes k, M, G (x1024). */
void tn_opts(int argc, char **argv);
const char *tn_opt_str(const char *key, const char *def);
long long tn_opt_ll(const char *key, long long def);
double tn_opt_double(const char *key, double def);
/* The first key nobody asked for, or NULL. */
const char *tn_opts_unused(void);
/* A number with an optional k/M/G suffix; -1 on a malformed one. */
long long tn_parse_size(const char *s);

/* A page of pseudo-random bytes from seed (xorshift). */
void tn_fill_page(void *page, uint32_t seed);
/* Bytes of n that differ between a and b. */
size_t tn_count_diff(const void *a, const void *b, size_t n);

#endif
