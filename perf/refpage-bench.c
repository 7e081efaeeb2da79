/* refpage-bench: what a reference-page mapping costs, against the
 * in-kernel ways to get pattern memory, in one run.
 *
 * For every (mode, workload, threads) cell: ns per touched page over
 * --reps fresh mappings, first-touch latency percentiles, faults and
 * context switches per page on both sides of the fault, the server's CPU
 * time per page, and the mapping's peak RSS. Every access checks what it
 * reads; a wrong byte anywhere makes the exit status 1. See README.md. */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct sock_opt {
	const char *path, *label;
	pid_t pid;
};

struct opts {
	struct bench_cfg cfg;
	const char *modes, *workloads, *threads, *cpus;
	int handler_cpu;
	struct sock_opt socks[BENCH_MAX_SOCKETS];
	int nsocks;
};

struct run {
	struct mode modes[BENCH_MAX_MODES];
	struct mode *sel[BENCH_MAX_MODES];
	int nmodes, nsel;
	const struct workload *wls[BENCH_NWORKLOADS];
	int nwls;
	struct cell_result *cells;
	size_t ncells, capcells;
	uint64_t mismatches;
	int failed;
};

static void usage(FILE *f)
{
	fputs("usage: refpage-bench [options]\n"
	      "  --socket PATH       a refpaged to measure (repeatable; default $REFPAGED_SOCKET\n"
	      "                      or the system socket)\n"
	      "  --label NAME        name of the last --socket's mode in the output (default\n"
	      "                      refpaged), e.g. refpaged-fa1 for --fault-around 1\n"
	      "  --daemon-pid PID    the last --socket's daemon pid (default: SO_PEERCRED)\n"
	      "  --modes LIST        anon,memset,memfd,uffd-thread,refpaged,refpage-file,\n"
	      "                      kernel-refpage or a label (default all; refpaged means\n"
	      "                      every --socket, on librefpage's uffd backend)\n"
	      "  --workloads LIST    seq-write,seq-read,rand-write-1,rand-write-10,strided,\n"
	      "                      read-then-write,many-small (default all)\n"
	      "  --threads LIST      thread counts, numbers or 'nproc' (default 1)\n"
	      "  --mib N             mapping size in MiB (default 256)\n"
	      "  --reps N            timed repetitions per cell (default 7)\n"
	      "  --lat-reps N        extra repetitions stamping each first touch (default 3)\n"
	      "  --small-count N     mappings in many-small (default 1000)\n"
	      "  --cpus LIST         pin worker i (and the main thread) to LIST[i % n]\n"
	      "  --handler-cpu N     pin uffd-thread's handler thread to CPU N\n"
	      "  --json FILE, --markdown FILE, --tsv FILE, --latency-dir DIR\n",
	      f);
}

static unsigned long num(const char *opt, const char *s, unsigned long lo, unsigned long hi)
{
	char *end;

	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr, "refpage-bench: --%s: expected a number in [%lu, %lu], got '%s'\n",
			opt, lo, hi, s);
		exit(2);
	}
	return v;
}

static struct sock_opt *last_sock(struct opts *o)
{
	if (!o->nsocks)
		o->nsocks = 1;
	return &o->socks[o->nsocks - 1];
}

static const struct option long_opts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "label", required_argument, NULL, 'L' },
	{ "daemon-pid", required_argument, NULL, 'P' },
	{ "modes", required_argument, NULL, 'm' },
	{ "workloads", required_argument, NULL, 'w' },
	{ "threads", required_argument, NULL, 't' },
	{ "mib", required_argument, NULL, 'M' },
	{ "reps", required_argument, NULL, 'r' },
	{ "lat-reps", required_argument, NULL, 'R' },
	{ "small-count", required_argument, NULL, 'n' },
	{ "json", required_argument, NULL, 'j' },
	{ "markdown", required_argument, NULL, 'k' },
	{ "tsv", required_argument, NULL, 'T' },
	{ "latency-dir", required_argument, NULL, 'l' },
	{ "cpus", required_argument, NULL, 'c' },
	{ "handler-cpu", required_argument, NULL, 'H' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void add_socket(struct opts *o, const char *path)
{
	if (o->nsocks == BENCH_MAX_SOCKETS) {
		fprintf(stderr, "refpage-bench: at most %d --socket\n", BENCH_MAX_SOCKETS);
		exit(2);
	}
	o->socks[o->nsocks++] = (struct sock_opt){ .path = path };
}

static void parse_opt(struct opts *o, int c)
{
	struct bench_cfg *cfg = &o->cfg;

	switch (c) {
	case 's':
		add_socket(o, optarg);
		break;
	case 'L':
		last_sock(o)->label = optarg;
		break;
	case 'P':
		last_sock(o)->pid = (pid_t)num("daemon-pid", optarg, 1, 1 << 30);
		break;
	case 'm':
		o->modes = optarg;
		break;
	case 'w':
		o->workloads = optarg;
		break;
	case 't':
		o->threads = optarg;
		break;
	case 'M':
		cfg->mib = num("mib", optarg, 1, 65536);
		break;
	case 'r':
		cfg->reps = (unsigned)num("reps", optarg, 1, 10000);
		break;
	case 'R':
		cfg->lat_reps = (unsigned)num("lat-reps", optarg, 0, 1000);
		break;
	case 'n':
		cfg->small_count = (unsigned)num("small-count", optarg, 1, 1000000);
		break;
	case 'j':
		cfg->json = optarg;
		break;
	case 'k':
		cfg->markdown = optarg;
		break;
	case 'T':
		cfg->tsv = optarg;
		break;
	case 'l':
		cfg->latency_dir = optarg;
		break;
	case 'c':
		o->cpus = optarg;
		break;
	case 'H':
		o->handler_cpu = (int)num("handler-cpu", optarg, 0, CPU_SETSIZE - 1);
		break;
	case 'h':
		usage(stdout);
		exit(0);
	default:
		usage(stderr);
		exit(2);
	}
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	int c;

	*o = (struct opts){
		.cfg = { .mib = 256, .reps = 7, .lat_reps = 3, .small_count = 1000 },
		.modes = "all",
		.workloads = "all",
		.threads = "1",
		.handler_cpu = -1,
	};
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1)
		parse_opt(o, c);
	if (optind < argc) {
		fprintf(stderr, "refpage-bench: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
	if (!o->nsocks)
		o->nsocks = 1;
}

/* --- selection ------------------------------------------------------------- */

/* Is name in the comma-separated list? "all" is in every list. */
static int listed(const char *list, const char *name)
{
	size_t n = strlen(name);

	if (!strcmp(list, "all"))
		return 1;
	for (const char *p = list; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
		if (strcspn(p, ",") == n && !strncmp(p, name, n))
			return 1;
	}
	return 0;
}

/* Every name in list must mean something: a typo is an error, not an
 * empty run. */
static void check_list(const char *what, const char *list,
		       int (*known)(const struct run *, const char *), const struct run *run)
{
	char buf[512];

	if (!strcmp(list, "all"))
		return;
	snprintf(buf, sizeof(buf), "%s", list);
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (!known(run, t)) {
			fprintf(stderr, "refpage-bench: unknown %s '%s'\n", what, t);
			exit(2);
		}
	}
}

static int known_mode(const struct run *run, const char *t)
{
	for (int i = 0; i < run->nmodes; i++)
		if (!strcmp(run->modes[i].name, t))
			return 1;
	return !strcmp(t, "refpaged");
}

static int known_workload(const struct run *run, const char *t)
{
	(void)run;
	for (int i = 0; i < BENCH_NWORKLOADS; i++)
		if (!strcmp(bench_workloads[i].name, t))
			return 1;
	return 0;
}

static void add_mode(struct run *run, enum mode_kind k, const char *name)
{
	mode_init(&run->modes[run->nmodes++], k, name);
}

static void make_modes(struct run *run, const struct opts *o)
{
	char name[64];

	add_mode(run, MODE_ANON, "anon");
	add_mode(run, MODE_MEMSET, "memset");
	add_mode(run, MODE_MEMFD, "memfd");
	add_mode(run, MODE_UFFD_THREAD, "uffd-thread");
	run->modes[run->nmodes - 1].handler_cpu = o->handler_cpu;
	for (int i = 0; i < o->nsocks; i++) {
		const struct sock_opt *s = &o->socks[i];
		if (s->label)
			snprintf(name, sizeof(name), "%s", s->label);
		else
			snprintf(name, sizeof(name), i ? "refpaged-%d" : "refpaged", i + 1);
		add_mode(run, MODE_REFPAGED, name);
		run->modes[run->nmodes - 1].socket = s->path;
		run->modes[run->nmodes - 1].daemon_pid = s->pid;
	}
	add_mode(run, MODE_REFPAGE_FILE, "refpage-file");
	run->modes[run->nmodes - 1].socket = o->socks[0].path;
	add_mode(run, MODE_KERNEL_REFPAGE, "kernel-refpage");
}

static void select_all(struct run *run, const struct opts *o)
{
	make_modes(run, o);
	check_list("mode", o->modes, known_mode, run);
	check_list("workload", o->workloads, known_workload, run);
	for (int i = 0; i < run->nmodes; i++) {
		struct mode *m = &run->modes[i];
		if (listed(o->modes, m->name) ||
		    (m->kind == MODE_REFPAGED && listed(o->modes, "refpaged")))
			run->sel[run->nsel++] = m;
	}
	for (int i = 0; i < BENCH_NWORKLOADS; i++)
		if (listed(o->workloads, bench_workloads[i].name))
			run->wls[run->nwls++] = &bench_workloads[i];
}

static void parse_threads(struct bench_cfg *cfg, const char *list)
{
	char buf[256];
	long nproc = sysconf(_SC_NPROCESSORS_ONLN);

	snprintf(buf, sizeof(buf), "%s", list);
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		unsigned v = !strcmp(t, "nproc")
				     ? (unsigned)(nproc > 0 ? nproc : 1)
				     : (unsigned)num("threads", t, 1, BENCH_MAX_THREADS);
		int dup = 0;
		for (unsigned i = 0; i < cfg->nthreads; i++)
			dup |= cfg->threads[i] == v;
		if (!dup && cfg->nthreads < BENCH_MAX_THREAD_COUNTS)
			cfg->threads[cfg->nthreads++] = v;
	}
	if (!cfg->nthreads) {
		fprintf(stderr, "refpage-bench: --threads: no thread count given\n");
		exit(2);
	}
}

static int cpu_allowed(int cpu)
{
	cpu_set_t set;

	return sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_ISSET(cpu, &set);
}

static void parse_cpus(struct opts *o)
{
	char buf[512];
	struct bench_cfg *cfg = &o->cfg;

	if (o->handler_cpu >= 0 && !cpu_allowed(o->handler_cpu)) {
		fprintf(stderr, "refpage-bench: --handler-cpu: CPU %d is not ours to use\n",
			o->handler_cpu);
		exit(2);
	}
	if (!o->cpus)
		return;
	snprintf(buf, sizeof(buf), "%s", o->cpus);
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int cpu = (int)num("cpus", t, 0, CPU_SETSIZE - 1);
		if (!cpu_allowed(cpu)) {
			fprintf(stderr, "refpage-bench: --cpus: CPU %d is not ours to use\n", cpu);
			exit(2);
		}
		if (cfg->ncpus < BENCH_MAX_THREADS)
			cfg->cpus[cfg->ncpus++] = cpu;
	}
	if (cfg->ncpus)
		(void)probe_pin(pthread_self(), cfg->cpus[0]);
}

/* --- the run ----------------------------------------------------------------- */

static int setup_modes(struct run *run, const struct bench_cfg *cfg)
{
	size_t max_len = cfg->mib << 20;
	int n = 0;

	if (max_len < BENCH_SMALL_LEN)
		max_len = BENCH_SMALL_LEN;
	for (int i = 0; i < run->nsel; i++) {
		if (mode_setup(run->sel[i], max_len) < 0)
			report_skip(run->sel[i]);
		else
			n++;
	}
	return n;
}

static struct cell_result *next_cell(struct run *run)
{
	if (run->ncells == run->capcells) {
		size_t cap = run->capcells ? run->capcells * 2 : 64;
		void *p = realloc(run->cells, cap * sizeof(*run->cells));
		if (!p) {
			fprintf(stderr, "refpage-bench: out of memory\n");
			exit(1);
		}
		run->cells = p;
		run->capcells = cap;
	}
	return &run->cells[run->ncells++];
}

static void one_cell(struct run *run, const struct bench_cfg *cfg, struct mode *m,
		     const struct workload *wl, unsigned threads)
{
	struct cell_result *r = next_cell(run);
	uint64_t *lat;
	size_t nlat;

	if (cell_run(cfg, m, wl, threads, r, &lat, &nlat) < 0)
		run->failed = 1;
	run->mismatches += r->mismatches;
	report_row(r, report_find_anon(run->cells, run->ncells, r));
	if (cfg->latency_dir && report_latency(cfg->latency_dir, r, lat, nlat) < 0)
		run->failed = 1;
	free(lat);
}

static void run_cells(struct run *run, const struct bench_cfg *cfg)
{
	report_header();
	for (unsigned t = 0; t < cfg->nthreads; t++)
		for (int w = 0; w < run->nwls; w++)
			for (int i = 0; i < run->nsel; i++)
				if (!run->sel[i]->why[0])
					one_cell(run, cfg, run->sel[i], run->wls[w],
						 cfg->threads[t]);
}

static int write_reports(struct run *run, const struct bench_cfg *cfg, const struct machine *mi)
{
	int r = 0;

	if (cfg->json)
		r |= report_json(cfg->json, mi, cfg, run->sel, run->nsel, run->cells, run->ncells);
	if (cfg->markdown)
		r |= report_markdown(cfg->markdown, mi, cfg, run->cells, run->ncells);
	if (cfg->tsv)
		r |= report_tsv(cfg->tsv, run->cells, run->ncells);
	return r;
}

static void check_sizes(const struct bench_cfg *cfg)
{
	size_t pages = (cfg->mib << 20) / BENCH_PAGE;

	for (unsigned i = 0; i < cfg->nthreads; i++) {
		if (cfg->threads[i] > pages) {
			fprintf(stderr, "refpage-bench: %u threads need at least %u pages\n",
				cfg->threads[i], cfg->threads[i]);
			exit(2);
		}
	}
}

int main(int argc, char **argv)
{
	static struct run run;
	struct opts o;
	struct machine mi;

	parse_args(argc, argv, &o);
	parse_threads(&o.cfg, o.threads);
	parse_cpus(&o);
	check_sizes(&o.cfg);
	select_all(&run, &o);
	if (o.cfg.latency_dir && mkdir(o.cfg.latency_dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "refpage-bench: %s: %s\n", o.cfg.latency_dir, strerror(errno));
		return 2;
	}
	probe_calibrate();
	int avail = setup_modes(&run, &o.cfg);
	probe_machine(&mi);
	printf("%ld CPUs, %s, %s; uid %u; %zu MiB, %u reps, %u latency reps, %d of %d modes\n",
	       mi.nproc, mi.cpu, mi.kernel, mi.uid, o.cfg.mib, o.cfg.reps, o.cfg.lat_reps, avail,
	       run.nsel);
	run_cells(&run, &o.cfg);
	for (int i = 0; i < run.nsel; i++)
		mode_teardown(run.sel[i]);
	if (write_reports(&run, &o.cfg, &mi) < 0)
		run.failed = 1;
	printf("\n%zu cells, %llu mismatches%s\n", run.ncells, (unsigned long long)run.mismatches,
	       run.failed ? ", some cells FAILED" : "");
	free(run.cells);
	return run.failed || run.mismatches ? 1 : 0;
}
