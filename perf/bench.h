/* refpage-bench: shared types of the benchmark's parts.
 *
 *   refpage-bench.c  command line, the run plan, exit status
 *   mode.c           the ways to get pattern memory (anon ... refpaged)
 *   cell.c           one (mode, workload, threads) cell: threads, passes
 *   probe.c          clocks, rusage, /proc readers, machine description
 *   report.c         stdout table, JSON, Markdown, TSV, latency CDFs
 *
 * Nothing in here allocates inside a timed region: every buffer a pass
 * writes to is sized and allocated when its cell is set up. */
#ifndef REFPAGE_BENCH_H
#define REFPAGE_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <refpage.h>

#define BENCH_PAGE 4096u
#define BENCH_PATTERN 0xAAu
/* many-small: the kernel patch's v5 benchmark maps 4 MiB at a time. */
#define BENCH_SMALL_LEN ((size_t)4 << 20)
#define BENCH_MAX_MODES 16
#define BENCH_MAX_SOCKETS 8
#define BENCH_MAX_THREADS 256
#define BENCH_MAX_THREAD_COUNTS 16
/* MAP_REFPAGE as the kernel patch defines it on x86. */
#define BENCH_MAP_REFPAGE 0x200000

/* --- modes ----------------------------------------------------------- */

enum mode_kind {
	MODE_ANON,           /* MAP_PRIVATE|MAP_ANONYMOUS, zero page */
	MODE_MEMSET,         /* anon + memset of the pattern at map time */
	MODE_MEMFD,          /* MAP_PRIVATE of a pattern memfd: in-kernel COW */
	MODE_UFFD_THREAD,    /* userfaultfd handler thread in this process */
	MODE_REFPAGED,       /* librefpage's uffd backend + refpaged */
	MODE_REFPAGE_FILE,   /* librefpage's file backend: no daemon */
	MODE_KERNEL_REFPAGE, /* mmap(MAP_REFPAGE), patched kernels only */
};

/* Tasks whose CPU time and context switches a mode's faults cost outside
 * the faulting threads: the daemon, or the in-process handler thread. */
struct server_ref {
	pid_t pid;
	pid_t tid; /* 0: every task of pid */
};

struct mode {
	enum mode_kind kind;
	char name[64];    /* room for perf/run.sh's labels of every switch at once */
	char why[192];    /* why it is skipped; "" when available */
	uint8_t expect;   /* what an untouched page reads as */
	uint8_t *pattern; /* one page of the pattern (uffd-thread, kernel-refpage) */
	/* memfd */
	int memfd;
	size_t memfd_len;
	/* uffd-thread */
	int uffd, stopfd, handler_up;
	pthread_t handler;
	int handler_cpu; /* -1: wherever the scheduler puts it */
	_Atomic pid_t handler_tid;
	_Atomic uint64_t served;
	/* refpaged, refpage-file */
	const char *socket; /* NULL: the library's default */
	rp_client *rp;
	uint32_t tmpl;
	pid_t daemon_pid; /* 0: unknown */
	char daemon_cmd[256];
};

void mode_init(struct mode *m, enum mode_kind kind, const char *name);
/* 0, or -1 with m->why saying why the mode cannot run here. */
int mode_setup(struct mode *m, size_t max_len);
void mode_teardown(struct mode *m);
/* Timed: a fresh mapping of len bytes of pattern memory, or MAP_FAILED
 * with errno set. */
void *mode_map(struct mode *m, size_t len);
void mode_unmap(struct mode *m, void *p, size_t len);
/* 1 and *s filled if faults are served by a thread or process of its own. */
int mode_server(const struct mode *m, struct server_ref *s);
/* Faults the server has answered so far; UINT64_MAX if it cannot tell. */
uint64_t mode_served(struct mode *m);

/* --- workloads ------------------------------------------------------- */

enum touch_op { OP_READ, OP_WRITE, OP_READ_WRITE };

struct workload {
	const char *name;
	enum touch_op op;
	unsigned percent; /* of the pages, in random order; 0: all, in order */
	unsigned stride;  /* every stride-th page (1: every page) */
	int many_small;   /* small_count mappings, one page touched each */
};

#define BENCH_NWORKLOADS 7
extern const struct workload bench_workloads[BENCH_NWORKLOADS];

/* --- configuration and results --------------------------------------- */

struct bench_cfg {
	size_t mib;
	unsigned reps, lat_reps, small_count;
	unsigned threads[BENCH_MAX_THREAD_COUNTS];
	unsigned nthreads;
	int cpus[BENCH_MAX_THREADS]; /* --cpus: worker i runs on cpus[i % ncpus] */
	unsigned ncpus;
	const char *json, *markdown, *tsv, *latency_dir;
};

struct cell_result {
	const struct mode *mode;
	const struct workload *wl;
	unsigned threads;
	size_t map_bytes; /* bytes of one mapping */
	uint64_t pages;   /* pages touched per repetition */
	unsigned reps;
	double ns_med, ns_min, ns_max;              /* ns per touched page */
	double lat_p50, lat_p99, lat_p999, lat_max; /* first-touch latency, ns */
	uint64_t lat_n;
	double faults_pp;         /* client page faults per page */
	double vcsw_pp, ivcsw_pp; /* client context switches per page */
	int has_server;
	double srv_faults_pp, srv_csw_pp, srv_cpu_ns_pp;
	int has_rss;
	int64_t rss_kib, anon_kib; /* peak Rss/Anonymous growth */
	uint64_t mismatches;
	int failed;
	char err[160];
};

/* Runs one cell. 0, or -1 with r->failed and r->err set. lat_ns gets the
 * cell's sorted first-touch latencies (caller frees), *nlat their count. */
int cell_run(const struct bench_cfg *cfg, struct mode *m, const struct workload *wl,
	     unsigned threads, struct cell_result *r, uint64_t **lat_ns, size_t *nlat);

/* --- probes ---------------------------------------------------------- */

struct ru_snap {
	long faults, nvcsw, nivcsw; /* faults: minor + major */
};

struct srv_snap {
	uint64_t csw, cpu_ns;
};

struct machine {
	long nproc;
	unsigned uid; /* who ran it: the backends a process gets depend on it */
	char kernel[300], cpu[128], date[32], thp[64], clocksource[32];
	double tick_ghz, timer_overhead_ns;
};

uint64_t probe_now_ns(void);
int probe_pin(pthread_t t, int cpu);
void probe_calibrate(void);
double probe_tick_ns(void);
void probe_ru_thread(struct ru_snap *s);
int probe_server(const struct server_ref *s, struct srv_snap *out);
int probe_rss(int64_t *rss_kib, int64_t *anon_kib);
pid_t probe_peer_pid(const char *socket_path);
void probe_cmdline(pid_t pid, char *buf, size_t len);
void probe_machine(struct machine *mi);

/* Cycle-counter stamps for the per-access latencies: lfence orders the
 * first stamp after earlier loads, rdtscp waits for the access. */
#if defined(__x86_64__)
static inline uint64_t tick_start(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence\n\trdtsc" : "=a"(lo), "=d"(hi)::"memory");
	return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t tick_end(void)
{
	uint32_t lo, hi, aux;
	__asm__ volatile("rdtscp\n\tlfence" : "=a"(lo), "=d"(hi), "=c"(aux)::"memory");
	return ((uint64_t)hi << 32) | lo;
}
#else
static inline uint64_t tick_start(void)
{
	return probe_now_ns();
}

static inline uint64_t tick_end(void)
{
	return probe_now_ns();
}
#endif

/* --- reports --------------------------------------------------------- */

void report_skip(const struct mode *m);
void report_header(void);
void report_row(const struct cell_result *r, const struct cell_result *anon);
int report_json(const char *path, const struct machine *mi, const struct bench_cfg *cfg,
		struct mode *const *modes, int nmodes, const struct cell_result *cells, size_t n);
int report_markdown(const char *path, const struct machine *mi, const struct bench_cfg *cfg,
		    const struct cell_result *cells, size_t n);
int report_tsv(const char *path, const struct cell_result *cells, size_t n);
int report_latency(const char *dir, const struct cell_result *r, const uint64_t *ns, size_t n);
const struct cell_result *report_find_anon(const struct cell_result *cells, size_t n,
					   const struct cell_result *r);

#endif
