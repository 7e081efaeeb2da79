/* One (mode, workload, threads) cell.
 *
 * Workers are created once per cell and meet the main thread at two
 * barriers per pass. The main thread maps (timed by itself), the workers
 * touch their share (each timed by itself, from after the start barrier
 * to before the end barrier, so the barrier's own wake-up latency is not
 * charged to any mode). A pass's time is map time plus the span from the
 * first worker's start to the last worker's end. For many-small the
 * workers map and unmap themselves, all inside their timed span.
 *
 * Throughput passes time whole sweeps; latency passes stamp every first
 * touch with the cycle counter into arrays sized at setup. The two are
 * kept apart so that the stamps' own cost does not enter ns/page. */
#include "bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE BENCH_PAGE
#define LAST_WORD (PAGE / 8 - 1)
#define SEED 0x5eedf00dcafe1234ull

const struct workload bench_workloads[BENCH_NWORKLOADS] = {
	{ "seq-write", OP_WRITE, 0, 1, 0 },    { "seq-read", OP_READ, 0, 1, 0 },
	{ "rand-write-1", OP_WRITE, 1, 1, 0 }, { "rand-write-10", OP_WRITE, 10, 1, 0 },
	{ "strided", OP_WRITE, 0, 16, 0 },     { "read-then-write", OP_READ_WRITE, 0, 1, 0 },
	{ "many-small", OP_WRITE, 0, 1, 1 },
};

/* A barrier whose party count can shrink, for when fewer workers than
 * planned could be started. */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned parties, waiting;
	unsigned long gen;
};

struct cell;

struct worker {
	struct cell *c;
	pthread_t thread;
	uint32_t *idx; /* pages to touch, as indexes into the mapping */
	size_t nidx;
	size_t small_n; /* many-small: mappings to make */
	uint64_t *lat;  /* cycle-counter deltas of latency passes */
	size_t nlat, caplat;
	uint64_t t0, t1;   /* this pass, ns */
	struct ru_snap ru; /* this pass's deltas */
	uint64_t bad;
	int err;
};

struct cell {
	struct mode *mode;
	const struct workload *wl;
	unsigned nthreads;
	size_t len, npages;
	uint8_t *base;
	int latency, stop;
	struct gate start, end;
	struct worker *w;
};

/* What a pass measured, summed into the cell's result. */
struct pass {
	double ns_page;
	struct ru_snap ru;
	struct srv_snap srv;
	uint64_t served;
	int64_t rss_kib, anon_kib;
};

/* One first touch, checked: a read sees the template's bytes, a write
 * keeps what it wrote and leaves the rest of the page the template's.
 * Returns 1 for a page that is wrong. */
static inline uint64_t touch(uint8_t *page, enum touch_op op, uint64_t expect)
{
	volatile uint64_t *w = (volatile uint64_t *)page;
	uint64_t tag = (uintptr_t)page | 1, bad = 0;

	switch (op) {
	case OP_READ:
		bad |= w[0] != expect;
		bad |= w[LAST_WORD] != expect;
		break;
	case OP_WRITE:
		w[0] = tag;
		bad |= w[0] != tag;
		bad |= w[LAST_WORD] != expect;
		break;
	case OP_READ_WRITE:
		bad |= w[0] != expect;
		w[0] = tag;
		bad |= w[LAST_WORD] != expect;
		break;
	}
	return bad;
}

static uint64_t sweep(struct worker *w, uint64_t expect)
{
	uint8_t *base = w->c->base;
	enum touch_op op = w->c->wl->op;
	uint64_t bad = 0;

	for (size_t i = 0; i < w->nidx; i++)
		bad += touch(base + (size_t)w->idx[i] * PAGE, op, expect);
	return bad;
}

static uint64_t sweep_timed(struct worker *w, uint64_t expect)
{
	uint8_t *base = w->c->base;
	enum touch_op op = w->c->wl->op;
	uint64_t *lat = w->lat + w->nlat, bad = 0;

	for (size_t i = 0; i < w->nidx; i++) {
		uint64_t a = tick_start();
		bad += touch(base + (size_t)w->idx[i] * PAGE, op, expect);
		lat[i] = tick_end() - a;
	}
	w->nlat += w->nidx;
	return bad;
}

/* map + touch one page + unmap, small_n times. */
static uint64_t sweep_small(struct worker *w, uint64_t expect)
{
	struct mode *m = w->c->mode;
	uint64_t bad = 0;

	for (size_t i = 0; i < w->small_n; i++) {
		uint8_t *p = mode_map(m, BENCH_SMALL_LEN);
		if (p == MAP_FAILED) {
			w->err = errno;
			break;
		}
		if (w->c->latency) {
			uint64_t a = tick_start();
			bad += touch(p, OP_WRITE, expect);
			w->lat[w->nlat++] = tick_end() - a;
		} else {
			bad += touch(p, OP_WRITE, expect);
		}
		mode_unmap(m, p, BENCH_SMALL_LEN);
	}
	return bad;
}

static void gate_init(struct gate *g, unsigned parties)
{
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->parties = parties;
	g->waiting = 0;
	g->gen = 0;
}

static void gate_open_locked(struct gate *g)
{
	g->waiting = 0;
	g->gen++;
	pthread_cond_broadcast(&g->cv);
}

static void gate_wait(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	unsigned long gen = g->gen;
	if (++g->waiting >= g->parties)
		gate_open_locked(g);
	else
		while (gen == g->gen)
			pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
}

static void gate_shrink(struct gate *g, unsigned parties)
{
	pthread_mutex_lock(&g->mu);
	g->parties = parties;
	if (g->waiting && g->waiting >= parties)
		gate_open_locked(g);
	pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(struct gate *g)
{
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
}

static void worker_pass(struct worker *w)
{
	struct cell *c = w->c;
	uint64_t expect = 0x0101010101010101ull * c->mode->expect;
	struct ru_snap r0, r1;

	probe_ru_thread(&r0);
	w->t0 = probe_now_ns();
	if (c->wl->many_small)
		w->bad += sweep_small(w, expect);
	else
		w->bad += c->latency ? sweep_timed(w, expect) : sweep(w, expect);
	w->t1 = probe_now_ns();
	probe_ru_thread(&r1);
	w->ru = (struct ru_snap){ r1.faults - r0.faults, r1.nvcsw - r0.nvcsw,
				  r1.nivcsw - r0.nivcsw };
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (;;) {
		gate_wait(&w->c->start);
		if (w->c->stop)
			break;
		worker_pass(w);
		gate_wait(&w->c->end);
	}
	return NULL;
}

/* --- plans: which pages each worker touches ------------------------- */

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Pages [first, first + n) of the mapping: every stride-th, or a fixed
 * pseudo-random percent of them in random order (partial Fisher-Yates). */
static int plan_chunk(struct worker *w, const struct workload *wl, size_t first, size_t n,
		      uint64_t seed)
{
	size_t k = wl->percent ? (n * wl->percent + 99) / 100 : (n + wl->stride - 1) / wl->stride;

	w->idx = malloc((wl->percent ? n : k) * sizeof(*w->idx) + 1);
	if (!w->idx)
		return -1;
	if (!wl->percent) {
		for (size_t i = 0; i < k; i++)
			w->idx[i] = (uint32_t)(first + i * wl->stride);
	} else {
		for (size_t i = 0; i < n; i++)
			w->idx[i] = (uint32_t)(first + i);
		for (size_t i = 0; i < k; i++) {
			size_t j = i + (size_t)(xorshift(&seed) % (n - i));
			uint32_t t = w->idx[i];
			w->idx[i] = w->idx[j];
			w->idx[j] = t;
		}
	}
	w->nidx = k;
	return 0;
}

static int plan(struct cell *c, const struct bench_cfg *cfg)
{
	unsigned t = c->nthreads;

	for (unsigned i = 0; i < t; i++) {
		struct worker *w = &c->w[i];
		size_t share = c->wl->many_small ? cfg->small_count : c->npages;
		size_t first = share / t * i, n = i + 1 == t ? share - first : share / t;
		if (c->wl->many_small)
			w->small_n = n;
		else if (plan_chunk(w, c->wl, first, n, SEED + i) < 0)
			return -1;
		w->caplat = (c->wl->many_small ? w->small_n : w->nidx) * cfg->lat_reps;
		if (!(w->lat = malloc(w->caplat * sizeof(*w->lat) + 1)))
			return -1;
	}
	return 0;
}

/* --- the cell's life ---------------------------------------------------- */

static void cell_fini(struct cell *c, unsigned started)
{
	c->stop = 1;
	if (started)
		gate_wait(&c->start);
	for (unsigned i = 0; i < started; i++)
		pthread_join(c->w[i].thread, NULL);
	for (unsigned i = 0; c->w && i < c->nthreads; i++) {
		free(c->w[i].idx);
		free(c->w[i].lat);
	}
	free(c->w);
	gate_destroy(&c->start);
	gate_destroy(&c->end);
}

/* Returns the number of workers started; all of them on success. */
static unsigned cell_init(struct cell *c, const struct bench_cfg *cfg)
{
	unsigned i;

	c->len = c->wl->many_small ? BENCH_SMALL_LEN : cfg->mib << 20;
	c->npages = c->len / PAGE;
	gate_init(&c->start, c->nthreads + 1);
	gate_init(&c->end, c->nthreads + 1);
	if (!(c->w = calloc(c->nthreads, sizeof(*c->w))))
		return 0;
	for (i = 0; i < c->nthreads; i++)
		c->w[i].c = c;
	if (plan(c, cfg) < 0)
		return 0;
	for (i = 0; i < c->nthreads; i++) {
		if (pthread_create(&c->w[i].thread, NULL, worker_main, &c->w[i]))
			break;
		/* main() checked that every CPU listed is ours to use. */
		if (cfg->ncpus)
			(void)probe_pin(c->w[i].thread, cfg->cpus[i % cfg->ncpus]);
	}
	if (i < c->nthreads) {
		gate_shrink(&c->start, i + 1);
		gate_shrink(&c->end, i + 1);
	}
	return i;
}

/* --- passes ------------------------------------------------------------- */

static int map_phase(struct cell *c, uint64_t *ns, struct ru_snap *ru)
{
	struct ru_snap r0, r1;

	probe_ru_thread(&r0);
	uint64_t t0 = probe_now_ns();
	if (!c->wl->many_small && (c->base = mode_map(c->mode, c->len)) == MAP_FAILED)
		return -errno;
	*ns = probe_now_ns() - t0;
	probe_ru_thread(&r1);
	*ru = (struct ru_snap){ r1.faults - r0.faults, r1.nvcsw - r0.nvcsw, r1.nivcsw - r0.nivcsw };
	return 0;
}

/* Workers run one pass; their time span and counts are folded into p. */
static int workers_phase(struct cell *c, uint64_t map_ns, struct pass *p)
{
	uint64_t first = UINT64_MAX, last = 0, pages = 0;
	int err = 0;

	gate_wait(&c->start);
	gate_wait(&c->end);
	for (unsigned i = 0; i < c->nthreads; i++) {
		struct worker *w = &c->w[i];
		first = w->t0 < first ? w->t0 : first;
		last = w->t1 > last ? w->t1 : last;
		pages += c->wl->many_small ? w->small_n : w->nidx;
		p->ru.faults += w->ru.faults;
		p->ru.nvcsw += w->ru.nvcsw;
		p->ru.nivcsw += w->ru.nivcsw;
		err = w->err ? w->err : err;
	}
	p->ns_page = (double)(map_ns + last - first) / (double)(pages ? pages : 1);
	return err ? -err : 0;
}

/* One pass. Server counters bracket map and touch (so the daemon's MAP
 * work is charged) but not the stats round trips themselves. */
static int run_pass(struct cell *c, int latency, struct pass *p)
{
	struct server_ref s;
	struct srv_snap s0 = { 0 };
	int64_t rss0 = 0, anon0 = 0;
	uint64_t map_ns = 0, served0 = mode_served(c->mode);
	int srv = mode_server(c->mode, &s) && probe_server(&s, &s0) == 0, r;

	memset(p, 0, sizeof(*p));
	probe_rss(&rss0, &anon0);
	c->latency = latency;
	if ((r = map_phase(c, &map_ns, &p->ru)) < 0)
		return r;
	r = workers_phase(c, map_ns, p);
	if (srv && probe_server(&s, &p->srv) == 0) {
		p->srv.csw -= s0.csw;
		p->srv.cpu_ns -= s0.cpu_ns;
	}
	if (!c->wl->many_small) {
		probe_rss(&p->rss_kib, &p->anon_kib);
		p->rss_kib -= rss0;
		p->anon_kib -= anon0;
		mode_unmap(c->mode, c->base, c->len);
	}
	uint64_t served1 = mode_served(c->mode);
	p->served = served0 == UINT64_MAX || served1 == UINT64_MAX ? UINT64_MAX : served1 - served0;
	return r;
}

/* --- results -------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Nearest rank: the smallest sample with at least q of them at or below. */
static double rank(const uint64_t *v, size_t n, double q)
{
	size_t i = (size_t)(q * (double)n + 0.999999);
	return n ? (double)v[i ? i - 1 : 0] : 0;
}

/* Merges the workers' latency samples, in ns, sorted. */
static uint64_t *latencies(struct cell *c, size_t *n)
{
	size_t total = 0, k = 0;
	double tns = probe_tick_ns();

	for (unsigned i = 0; i < c->nthreads; i++)
		total += c->w[i].nlat;
	uint64_t *v = malloc(total * sizeof(*v) + 1);
	if (!v)
		return NULL;
	for (unsigned i = 0; i < c->nthreads; i++)
		for (size_t j = 0; j < c->w[i].nlat; j++)
			v[k++] = (uint64_t)((double)c->w[i].lat[j] * tns + 0.5);
	qsort(v, total, sizeof(*v), cmp_u64);
	*n = total;
	return v;
}

static void fill_latency(struct cell_result *r, const uint64_t *v, size_t n)
{
	r->lat_n = n;
	r->lat_p50 = rank(v, n, 0.50);
	r->lat_p99 = rank(v, n, 0.99);
	r->lat_p999 = rank(v, n, 0.999);
	r->lat_max = n ? (double)v[n - 1] : 0;
}

/* Sums of the throughput passes, turned into per-page figures. */
struct totals {
	struct ru_snap ru;
	struct srv_snap srv;
	uint64_t served;
	int served_ok;
	int64_t rss_kib, anon_kib;
};

static void add_pass(struct totals *t, const struct pass *p)
{
	t->ru.faults += p->ru.faults;
	t->ru.nvcsw += p->ru.nvcsw;
	t->ru.nivcsw += p->ru.nivcsw;
	t->srv.csw += p->srv.csw;
	t->srv.cpu_ns += p->srv.cpu_ns;
	if (p->served == UINT64_MAX)
		t->served_ok = 0;
	else
		t->served += p->served;
	t->rss_kib = p->rss_kib > t->rss_kib ? p->rss_kib : t->rss_kib;
	t->anon_kib = p->anon_kib > t->anon_kib ? p->anon_kib : t->anon_kib;
}

static void fill_totals(struct cell_result *r, struct cell *c, const struct totals *t)
{
	double pages = (double)r->pages * r->reps;
	struct server_ref s;

	r->faults_pp = (double)t->ru.faults / pages;
	r->vcsw_pp = (double)t->ru.nvcsw / pages;
	r->ivcsw_pp = (double)t->ru.nivcsw / pages;
	r->has_server = mode_server(c->mode, &s);
	r->srv_csw_pp = (double)t->srv.csw / pages;
	r->srv_cpu_ns_pp = (double)t->srv.cpu_ns / pages;
	r->srv_faults_pp = t->served_ok ? (double)t->served / pages : -1;
	r->has_rss = !c->wl->many_small;
	r->rss_kib = t->rss_kib;
	r->anon_kib = t->anon_kib;
	for (unsigned i = 0; i < c->nthreads; i++)
		r->mismatches += c->w[i].bad;
}

static void result_init(struct cell_result *r, struct cell *c, const struct bench_cfg *cfg)
{
	memset(r, 0, sizeof(*r));
	r->mode = c->mode;
	r->wl = c->wl;
	r->threads = c->nthreads;
	r->map_bytes = c->len;
	r->reps = cfg->reps;
	for (unsigned i = 0; c->w && i < c->nthreads; i++)
		r->pages += c->wl->many_small ? c->w[i].small_n : c->w[i].nidx;
}

static int fail(struct cell_result *r, const char *what, int err)
{
	r->failed = 1;
	snprintf(r->err, sizeof(r->err), "%s: %s", what, strerror(err));
	return -1;
}

static int passes(struct cell *c, const struct bench_cfg *cfg, struct cell_result *r, double *ns)
{
	struct totals t = { .served_ok = 1 };
	struct pass p;
	int e;

	for (unsigned i = 0; i < cfg->reps; i++) {
		if ((e = run_pass(c, 0, &p)) < 0)
			return fail(r, "mapping", -e);
		ns[i] = p.ns_page;
		add_pass(&t, &p);
	}
	for (unsigned i = 0; i < cfg->lat_reps; i++)
		if ((e = run_pass(c, 1, &p)) < 0)
			return fail(r, "mapping", -e);
	r->ns_min = r->ns_max = ns[0];
	for (unsigned i = 1; i < cfg->reps; i++) {
		r->ns_min = ns[i] < r->ns_min ? ns[i] : r->ns_min;
		r->ns_max = ns[i] > r->ns_max ? ns[i] : r->ns_max;
	}
	r->ns_med = median(ns, cfg->reps);
	fill_totals(r, c, &t);
	return 0;
}

int cell_run(const struct bench_cfg *cfg, struct mode *m, const struct workload *wl,
	     unsigned threads, struct cell_result *r, uint64_t **lat_ns, size_t *nlat)
{
	struct cell c = { .mode = m, .wl = wl, .nthreads = threads };
	double *ns = malloc(cfg->reps * sizeof(*ns));
	unsigned started = cell_init(&c, cfg);
	int ret = -1;

	*lat_ns = NULL;
	*nlat = 0;
	result_init(r, &c, cfg);
	if (!ns || started < threads)
		fail(r, "cell setup", ENOMEM);
	else if ((ret = passes(&c, cfg, r, ns)) == 0 && !(*lat_ns = latencies(&c, nlat)))
		ret = fail(r, "latency samples", ENOMEM);
	else if (ret == 0)
		fill_latency(r, *lat_ns, *nlat);
	cell_fini(&c, started);
	free(ns);
	return ret;
}
