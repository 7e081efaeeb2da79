/* Reports: a table on stdout as cells finish, then JSON, Markdown and TSV
 * files of the whole run, and one latency CDF file per cell. Ratios are
 * always against the anon cell of the same workload and thread count in
 * the same run. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#define MIB(kib) ((double)(kib) / 1024.0)

static const char *kind_name(enum mode_kind k)
{
	static const char *const names[] = {
		[MODE_ANON] = "anon",
		[MODE_MEMSET] = "memset",
		[MODE_MEMFD] = "memfd",
		[MODE_UFFD_THREAD] = "uffd-thread",
		[MODE_REFPAGED] = "refpaged",
		[MODE_REFPAGE_FILE] = "refpage-file",
		[MODE_KERNEL_REFPAGE] = "kernel-refpage",
	};
	return names[k];
}

const struct cell_result *report_find_anon(const struct cell_result *cells, size_t n,
					   const struct cell_result *r)
{
	for (size_t i = 0; i < n; i++)
		if (cells[i].mode->kind == MODE_ANON && cells[i].wl == r->wl &&
		    cells[i].threads == r->threads && !cells[i].failed)
			return &cells[i];
	return NULL;
}

/* ns/page against anon's, NAN when there is nothing to compare with. */
static double ns_ratio(const struct cell_result *r, const struct cell_result *anon)
{
	return anon && anon->ns_med > 0 && !r->failed ? r->ns_med / anon->ns_med : NAN;
}

/* RSS against anon's; anon reading the zero page has none, so no ratio. */
static double rss_ratio(const struct cell_result *r, const struct cell_result *anon)
{
	return anon && r->has_rss && anon->rss_kib > 0 ? (double)r->rss_kib / (double)anon->rss_kib
						       : NAN;
}

/* --- stdout -------------------------------------------------------------- */

void report_skip(const struct mode *m)
{
	printf("skip %-16s %s\n", m->name, m->why);
}

void report_header(void)
{
	printf("\n%-16s %-15s %3s %9s %19s %7s %8s %8s %8s %6s %6s %7s %7s %8s %8s %4s\n", "mode",
	       "workload", "thr", "ns/page", "(min..max)", "x anon", "p50 ns", "p99 ns", "p99.9 ns",
	       "flt/pg", "csw/pg", "srvcsw", "srvflt", "srvns/pg", "RSS MiB", "bad");
}

void report_row(const struct cell_result *r, const struct cell_result *anon)
{
	char ratio[16] = "-", srv[3][16] = { "-", "-", "-" }, rss[16] = "-";
	double q = ns_ratio(r, anon);

	if (r->failed) {
		printf("%-16s %-15s %3u FAILED: %s\n", r->mode->name, r->wl->name, r->threads,
		       r->err);
		return;
	}
	if (!isnan(q))
		snprintf(ratio, sizeof(ratio), "%.2f", q);
	if (r->has_server) {
		snprintf(srv[0], sizeof(srv[0]), "%.3f", r->srv_csw_pp);
		if (r->srv_faults_pp >= 0)
			snprintf(srv[1], sizeof(srv[1]), "%.3f", r->srv_faults_pp);
		snprintf(srv[2], sizeof(srv[2]), "%.0f", r->srv_cpu_ns_pp);
	}
	if (r->has_rss)
		snprintf(rss, sizeof(rss), "%.1f", MIB(r->rss_kib));
	printf("%-16s %-15s %3u %9.0f %9.0f..%-9.0f %7s %8.0f %8.0f %8.0f %6.3f %6.3f %7s %7s %8s %8s %4llu\n",
	       r->mode->name, r->wl->name, r->threads, r->ns_med, r->ns_min, r->ns_max, ratio,
	       r->lat_p50, r->lat_p99, r->lat_p999, r->faults_pp, r->vcsw_pp + r->ivcsw_pp, srv[0],
	       srv[1], srv[2], rss, (unsigned long long)r->mismatches);
	fflush(stdout);
}

/* --- JSON ---------------------------------------------------------------- */

static void jstr(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void jnum(FILE *f, double v)
{
	if (isnan(v) || isinf(v))
		fputs("null", f);
	else
		fprintf(f, "%.6g", v);
}

static void jkey(FILE *f, const char *k)
{
	jstr(f, k);
	fputs(": ", f);
}

/* "key": value, then sep. */
static void jnum_kv(FILE *f, const char *k, double v, const char *sep)
{
	jkey(f, k);
	jnum(f, v);
	fputs(sep, f);
}

static void jstr_kv(FILE *f, const char *k, const char *v, const char *sep)
{
	jkey(f, k);
	if (v)
		jstr(f, v);
	else
		fputs("null", f);
	fputs(sep, f);
}

static void json_machine(FILE *f, const struct machine *mi)
{
	fputs("  \"machine\": {", f);
	jnum_kv(f, "nproc", (double)mi->nproc, ", ");
	jnum_kv(f, "uid", (double)mi->uid, ", ");
	jstr_kv(f, "kernel", mi->kernel, ", ");
	jstr_kv(f, "cpu", mi->cpu, ", ");
	jstr_kv(f, "date", mi->date, ",\n    ");
	jstr_kv(f, "thp", mi->thp, ", ");
	jstr_kv(f, "clocksource", mi->clocksource, ", ");
	jnum_kv(f, "tsc_ghz", mi->tick_ghz, ", ");
	jnum_kv(f, "timer_overhead_ns", mi->timer_overhead_ns, "},\n");
}

static void json_config(FILE *f, const struct bench_cfg *cfg)
{
	fprintf(f,
		"  \"config\": {\"mib\": %zu, \"reps\": %u, \"lat_reps\": %u, \"small_count\": %u, "
		"\"small_mapping_bytes\": %zu, \"page\": %u, \"pattern\": %u, \"cpus\": [",
		cfg->mib, cfg->reps, cfg->lat_reps, cfg->small_count, BENCH_SMALL_LEN, BENCH_PAGE,
		BENCH_PATTERN);
	for (unsigned i = 0; i < cfg->ncpus; i++)
		fprintf(f, "%s%d", i ? ", " : "", cfg->cpus[i]);
	fputs("], \"threads\": [", f);
	for (unsigned i = 0; i < cfg->nthreads; i++)
		fprintf(f, "%s%u", i ? ", " : "", cfg->threads[i]);
	fputs("]},\n", f);
}

static void json_mode(FILE *f, const struct mode *m)
{
	fputs("    {", f);
	jstr_kv(f, "name", m->name, ", ");
	jstr_kv(f, "kind", kind_name(m->kind), ", ");
	fprintf(f, "\"available\": %s, ", m->why[0] ? "false" : "true");
	jstr_kv(f, "skip_reason", m->why[0] ? m->why : NULL, "");
	if (m->kind == MODE_UFFD_THREAD)
		fprintf(f, ", \"handler_cpu\": %d", m->handler_cpu);
	if (m->kind == MODE_REFPAGED) {
		fputs(", ", f);
		jstr_kv(f, "socket", m->socket ? m->socket : "(default)", ", ");
		fprintf(f, "\"daemon_pid\": %d, ", (int)m->daemon_pid);
		jstr_kv(f, "daemon_cmdline", m->daemon_cmd, "");
	}
	fputs("}", f);
}

static void json_server(FILE *f, const struct cell_result *r)
{
	if (!r->has_server) {
		fputs("null", f);
		return;
	}
	fputs("{", f);
	jnum_kv(f, "faults_per_page", r->srv_faults_pp >= 0 ? r->srv_faults_pp : NAN, ", ");
	jnum_kv(f, "csw_per_page", r->srv_csw_pp, ", ");
	jnum_kv(f, "cpu_ns_per_page", r->srv_cpu_ns_pp, "}");
}

static void json_metrics(FILE *f, const struct cell_result *r, const struct cell_result *anon)
{
	fputs("     \"ns_per_page\": {", f);
	jnum_kv(f, "median", r->ns_med, ", ");
	jnum_kv(f, "min", r->ns_min, ", ");
	jnum_kv(f, "max", r->ns_max, "}, ");
	jnum_kv(f, "ratio_vs_anon", ns_ratio(r, anon), ",\n     \"latency_ns\": {");
	jnum_kv(f, "p50", r->lat_p50, ", ");
	jnum_kv(f, "p99", r->lat_p99, ", ");
	jnum_kv(f, "p99_9", r->lat_p999, ", ");
	jnum_kv(f, "max", r->lat_max, ", ");
	jnum_kv(f, "samples", (double)r->lat_n, "},\n     \"client\": {");
	jnum_kv(f, "faults_per_page", r->faults_pp, ", ");
	jnum_kv(f, "voluntary_csw_per_page", r->vcsw_pp, ", ");
	jnum_kv(f, "involuntary_csw_per_page", r->ivcsw_pp, "}, \"server\": ");
	json_server(f, r);
	fputs(",\n     ", f);
	jnum_kv(f, "rss_kib", r->has_rss ? (double)r->rss_kib : NAN, ", ");
	jnum_kv(f, "anon_kib", r->has_rss ? (double)r->anon_kib : NAN, ", ");
	jnum_kv(f, "rss_ratio_vs_anon", rss_ratio(r, anon), ", ");
}

static void json_cell(FILE *f, const struct cell_result *r, const struct cell_result *anon)
{
	fputs("    {", f);
	jstr_kv(f, "mode", r->mode->name, ", ");
	jstr_kv(f, "kind", kind_name(r->mode->kind), ", ");
	jstr_kv(f, "workload", r->wl->name, ", ");
	fprintf(f,
		"\"threads\": %u, \"mapping_bytes\": %zu, \"pages_touched\": %llu, \"reps\": %u,\n",
		r->threads, r->map_bytes, (unsigned long long)r->pages, r->reps);
	json_metrics(f, r, anon);
	fprintf(f, "\"mismatches\": %llu, ", (unsigned long long)r->mismatches);
	jstr_kv(f, "error", r->failed ? r->err : NULL, "}");
}

static FILE *open_out(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f)
		fprintf(stderr, "refpage-bench: %s: %s\n", path, strerror(errno));
	return f;
}

static int close_out(FILE *f, const char *path)
{
	int bad = ferror(f);

	if (fclose(f) != 0 || bad) {
		fprintf(stderr, "refpage-bench: writing %s failed\n", path);
		return -1;
	}
	return 0;
}

int report_json(const char *path, const struct machine *mi, const struct bench_cfg *cfg,
		struct mode *const *modes, int nmodes, const struct cell_result *cells, size_t n)
{
	FILE *f = open_out(path);

	if (!f)
		return -1;
	fputs("{\n", f);
	json_machine(f, mi);
	json_config(f, cfg);
	fputs("  \"modes\": [\n", f);
	for (int i = 0; i < nmodes; i++) {
		json_mode(f, modes[i]);
		fputs(i + 1 < nmodes ? ",\n" : "\n", f);
	}
	fputs("  ],\n  \"cells\": [\n", f);
	for (size_t i = 0; i < n; i++) {
		json_cell(f, &cells[i], report_find_anon(cells, n, &cells[i]));
		fputs(i + 1 < n ? ",\n" : "\n", f);
	}
	fputs("  ]\n}\n", f);
	return close_out(f, path);
}

/* --- Markdown -------------------------------------------------------------- */

static void md_ratio(FILE *f, double q)
{
	if (isnan(q))
		fputs(" n/a |", f);
	else
		fprintf(f, " %.2f |", q);
}

static void md_row(FILE *f, const struct cell_result *r, const struct cell_result *anon)
{
	if (r->failed) {
		fprintf(f, "| %s | %s | failed: %s |||||||||||\n", r->wl->name, r->mode->name,
			r->err);
		return;
	}
	fprintf(f, "| %s | %s | %.0f |", r->wl->name, r->mode->name, r->ns_med);
	md_ratio(f, ns_ratio(r, anon));
	fprintf(f, " %.0f / %.0f / %.0f | %.3f | %.3f |", r->lat_p50, r->lat_p99, r->lat_p999,
		r->faults_pp, r->vcsw_pp + r->ivcsw_pp);
	if (r->has_server && r->srv_faults_pp >= 0)
		fprintf(f, " %.3f |", r->srv_faults_pp);
	else
		fputs(" - |", f);
	if (r->has_server)
		fprintf(f, " %.3f | %.0f |", r->srv_csw_pp, r->srv_cpu_ns_pp);
	else
		fputs(" - | - |", f);
	if (r->has_rss)
		fprintf(f, " %.1f | %.1f |", MIB(r->rss_kib), MIB(r->anon_kib));
	else
		fputs(" - | - |", f);
	md_ratio(f, rss_ratio(r, anon));
	fprintf(f, " %llu |\n", (unsigned long long)r->mismatches);
}

static void md_table(FILE *f, unsigned threads, const struct cell_result *cells, size_t n)
{
	fprintf(f, "\n### %u thread%s\n\n", threads, threads == 1 ? "" : "s");
	fputs("| workload | mode | ns/page | × anon | first touch p50 / p99 / p99.9 ns | "
	      "faults/page | csw/page | server faults/page | server csw/page | server CPU ns/page | "
	      "RSS MiB | of it anonymous MiB | RSS × anon | bad |\n",
	      f);
	fputs("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n", f);
	for (size_t i = 0; i < n; i++)
		if (cells[i].threads == threads)
			md_row(f, &cells[i], report_find_anon(cells, n, &cells[i]));
}

int report_markdown(const char *path, const struct machine *mi, const struct bench_cfg *cfg,
		    const struct cell_result *cells, size_t n)
{
	FILE *f = open_out(path);

	if (!f)
		return -1;
	fprintf(f, "# refpage-bench, %s\n\n", mi->date);
	fprintf(f, "%ld CPUs, %s; kernel %s; THP %s; uid %u.  \n", mi->nproc, mi->cpu, mi->kernel,
		mi->thp, mi->uid);
	fprintf(f,
		"Mapping %zu MiB (many-small: %u x 4 MiB), %u reps (median; fresh mapping each), "
		"%u latency reps. ns/page is per *touched* page, map time included; "
		"ratios are against `anon` in the same run.\n",
		cfg->mib, cfg->small_count, cfg->reps, cfg->lat_reps);
	for (unsigned t = 0; t < cfg->nthreads; t++)
		md_table(f, cfg->threads[t], cells, n);
	return close_out(f, path);
}

/* --- TSV, for plotting --------------------------------------------------- */

int report_tsv(const char *path, const struct cell_result *cells, size_t n)
{
	FILE *f = open_out(path);

	if (!f)
		return -1;
	fputs("mode\tworkload\tthreads\tns_med\tns_min\tns_max\tratio\tp50\tp99\tp999\tfaults_pp\t"
	      "csw_pp\tsrv_faults_pp\tsrv_csw_pp\tsrv_cpu_ns_pp\trss_mib\tanon_mib\tmismatches\n",
	      f);
	for (size_t i = 0; i < n; i++) {
		const struct cell_result *r = &cells[i];
		if (r->failed)
			continue;
		fprintf(f,
			"%s\t%s\t%u\t%.1f\t%.1f\t%.1f\t%.4f\t%.0f\t%.0f\t%.0f\t%.4f\t%.4f\t%.4f\t%.4f\t%.1f\t%.2f\t%.2f\t%llu\n",
			r->mode->name, r->wl->name, r->threads, r->ns_med, r->ns_min, r->ns_max,
			ns_ratio(r, report_find_anon(cells, n, r)), r->lat_p50, r->lat_p99,
			r->lat_p999, r->faults_pp, r->vcsw_pp + r->ivcsw_pp,
			r->has_server ? r->srv_faults_pp : NAN, r->has_server ? r->srv_csw_pp : NAN,
			r->has_server ? r->srv_cpu_ns_pp : NAN, r->has_rss ? MIB(r->rss_kib) : NAN,
			r->has_rss ? MIB(r->anon_kib) : NAN, (unsigned long long)r->mismatches);
	}
	return close_out(f, path);
}

/* --- latency CDFs ---------------------------------------------------------- */

/* Sorted samples, thinned for plotting: 1,000 evenly spaced ranks, and
 * finer steps through the tail (p99 .. p99.99) where the curves differ. */
static void cdf_points(FILE *f, const uint64_t *ns, size_t n)
{
	size_t last = SIZE_MAX;

	for (int j = 0; j <= 1200; j++) {
		double q = j <= 990 ? j / 1000.0 : 1.0 - pow(10.0, -2.0 - (j - 990) / 100.0);
		if (j == 1200)
			q = 1.0;
		size_t i = (size_t)(q * (double)(n - 1));
		if (i == last)
			continue;
		fprintf(f, "%llu\t%.6f\n", (unsigned long long)ns[i], (double)(i + 1) / (double)n);
		last = i;
	}
}

int report_latency(const char *dir, const struct cell_result *r, const uint64_t *ns, size_t n)
{
	char path[4096];

	if (!n)
		return 0;
	snprintf(path, sizeof(path), "%s/%s.%s.t%u.cdf", dir, r->mode->name, r->wl->name,
		 r->threads);
	FILE *f = open_out(path);
	if (!f)
		return -1;
	fprintf(f, "# first-touch latency CDF: %s %s, %u thread(s), %zu samples\n# ns\tfraction\n",
		r->mode->name, r->wl->name, r->threads, n);
	cdf_points(f, ns, n);
	return close_out(f, path);
}
