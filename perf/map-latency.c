/* map-latency: what a MAP + UNMAP round trip costs, with and without the
 * fd store (--fd-store: every change appended to the state journal), as
 * the client's range table grows.
 *
 * For every size N (default 0, 1000, 20000, 100000) it starts two private
 * daemons of the same binary with the same arguments, one plain and one
 * with --fd-store, both with $NOTIFY_SOCKET pointing at a listener thread
 * of this program that stands in for systemd's fd store (it keeps every
 * descriptor it is given, the journal's memfd "snap" included). One
 * client each registers N background ranges of one page, then M pairs of
 * rp_map(16 pages) + rp_unmap are timed per (N, daemon) cell, in rounds
 * that interleave every cell, so that drift on a noisy machine hits them
 * all alike. A daemon per (N, kind) keeps each journal, and each
 * compaction, to exactly one state size.
 *
 * Reports per cell the median, p99, mean and max pair latency, the ratio
 * fd-store / plain per N and N / 0 per kind, and for the fd-store daemons
 * the journal memfd's allocated bytes and the compactions their logs
 * count ("journal compacted", --log-level debug: given to both kinds).
 * Sanity, which decides the exit status (timings never do): every pair
 * succeeded, every cell has its M samples, each daemon's "ranges" gauge
 * is N after the fill and at the end, each fd-store daemon stored its
 * journal and never failed to append or compact.
 *
 *   map-latency [--daemon PATH] [--sizes LIST] [--pairs M] [--rounds R]
 *               [--warmup W] [--max-ranges N] [--daemon-args "ARGS"]
 *               [--markdown FILE] [--json FILE] [--keep DIR] [--quick]
 * See README.md. Exit status: 0; 1 if a sanity check failed or a daemon
 * could not be used; 2 for a bad command line. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <dirent.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <refpage.h>

#include "sdnotify.h"
#include "timing.h"

#define PAGE 4096u
#define PAIR_PAGES 16u
#define MAX_SIZES 8
#define MAX_ARGS 32
#define START_S 10.0

extern char **environ;

enum kind { PLAIN, FDSTORE, NKIND };
static const char *const kind_name[NKIND] = { "plain", "fd-store" };

struct opts {
	const char *daemon;
	long sizes[MAX_SIZES];
	int nsizes;
	long pairs, warmup, max_ranges;
	int rounds, quick;
	char *extra[MAX_ARGS];
	int nextra;
	const char *markdown, *json, *keep, *samples;
};

/* One private daemon and its client. */
struct daemon {
	enum kind kind;
	long n; /* background ranges */
	pid_t pid;
	char sock[PATH_MAX], log[PATH_MAX];
	char *argv[MAX_ARGS + 16];
	rp_client *c;
	uint32_t tmpl;
	double *lat; /* ns per pair, in the order taken */
	double *at;  /* when each began (CLOCK_MONOTONIC ns), for --samples */
	long taken, errors;
	int first_err;
	double fill_s;
	uint64_t ranges_fill, ranges_end, loop_us0, loop_us1, waited0, waited1;
	double cpu_client_ns, cpu_daemon_ns; /* over the timed pairs */
	/* fd store only: the journal memfd (the listener's copy) and what
	 * the log says */
	int snap;
	uint64_t jnl_fill, jnl_end, jnl_peak;
	int compact_fill, compact_end, compact_failed;
	double compact_max_ms;
	int store_off; /* the daemon said it has no fd store */
	/* results */
	double p50, p99, mean, max, min;
};

/* --- the fd store: systemd's end of $NOTIFY_SOCKET ---------------------------------- */

struct stored {
	pid_t pid;
	char name[32];
	int fd;
};

static struct listener {
	int sock;
	pthread_t th;
	pthread_mutex_t lock;
	struct stored *e;
	size_t n, cap;
	pid_t ready[2 * MAX_SIZES];
	int nready;
	long datagrams;
	atomic_int stop;
} L = { .sock = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

static void store_add(pid_t pid, const char *name, int fd)
{
	if (L.n == L.cap) {
		size_t cap = L.cap ? L.cap * 2 : 64;
		struct stored *e = realloc(L.e, cap * sizeof(*e));
		if (!e) {
			close(fd);
			return;
		}
		L.e = e;
		L.cap = cap;
	}
	L.e[L.n].pid = pid;
	snprintf(L.e[L.n].name, sizeof(L.e[L.n].name), "%s", name);
	L.e[L.n++].fd = fd;
}

static void store_remove(pid_t pid, const char *name)
{
	size_t k = 0;

	for (size_t i = 0; i < L.n; i++) {
		if (L.e[i].pid == pid && !strcmp(L.e[i].name, name))
			close(L.e[i].fd);
		else
			L.e[k++] = L.e[i];
	}
	L.n = k;
}

/* What systemd does with a notification (tests/common/sdnotify.h). */
static void store_handle(pid_t pid, char *msg, const int *fds, int nfds)
{
	struct sdn_msg m;

	sdn_parse(msg, &m);
	pthread_mutex_lock(&L.lock);
	for (int i = 0; i < nfds; i++) {
		if (m.fdstore)
			store_add(pid, m.name, fds[i]);
		else
			close(fds[i]);
	}
	if (m.remove)
		store_remove(pid, m.name);
	if (m.ready && L.nready < 2 * MAX_SIZES)
		L.ready[L.nready++] = pid;
	L.datagrams++;
	pthread_mutex_unlock(&L.lock);
}

/* Drains the socket on every wake-up: the daemons' sends block when its
 * queue (net.unix.max_dgram_qlen, 10 here) is full. */
static void *listener_main(void *arg)
{
	(void)arg;
	while (!atomic_load(&L.stop)) {
		struct pollfd p = { .fd = L.sock, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		for (;;) {
			char buf[4096];
			int fds[SDN_MAX_FDS], nfds;
			pid_t pid;
			if ((nfds = sdn_recv(L.sock, buf, sizeof(buf), fds, &pid)) < 0)
				break;
			store_handle(pid, buf, fds, nfds);
		}
	}
	return NULL;
}

static int listener_start(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int one = 1;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	L.sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (L.sock < 0 || bind(L.sock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    setsockopt(L.sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
		return -errno;
	return pthread_create(&L.th, NULL, listener_main, NULL) ? -EAGAIN : 0;
}

static void listener_stop(void)
{
	if (L.sock < 0)
		return;
	atomic_store(&L.stop, 1);
	pthread_join(L.th, NULL);
	for (size_t i = 0; i < L.n; i++)
		close(L.e[i].fd);
	free(L.e);
	close(L.sock);
}

static int is_ready(pid_t pid)
{
	int r = 0;

	pthread_mutex_lock(&L.lock);
	for (int i = 0; i < L.nready; i++)
		r |= L.ready[i] == pid;
	pthread_mutex_unlock(&L.lock);
	return r;
}

/* A dup of the stored fd of pid named name, or -1. */
static int store_dup(pid_t pid, const char *name)
{
	int fd = -1;

	pthread_mutex_lock(&L.lock);
	for (size_t i = 0; i < L.n && fd < 0; i++)
		if (L.e[i].pid == pid && !strcmp(L.e[i].name, name))
			fd = fcntl(L.e[i].fd, F_DUPFD_CLOEXEC, 3);
	pthread_mutex_unlock(&L.lock);
	return fd;
}

/* --- daemons ------------------------------------------------------------------------- */

static char *env_notify;

/* Only async-signal-safe calls in the child. */
static int daemon_spawn(struct daemon *d)
{
	char **envp;
	size_t ne = 0, k = 0;

	while (environ[ne])
		ne++;
	if (!(envp = calloc(ne + 2, sizeof(*envp))))
		return -ENOMEM;
	for (size_t i = 0; i < ne; i++)
		if (strncmp(environ[i], "LISTEN_", 7) &&
		    strncmp(environ[i], "NOTIFY_SOCKET=", 14) &&
		    strncmp(environ[i], "FDSTORE=", 8) && strncmp(environ[i], "WATCHDOG_", 9))
			envp[k++] = environ[i];
	envp[k++] = env_notify;
	envp[k] = NULL;
	int logfd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (logfd < 0) {
		free(envp);
		return -errno;
	}
	pid_t parent = getpid();
	fflush(NULL);
	d->pid = fork();
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execve(d->argv[0], d->argv, envp);
		_exit(127);
	}
	int e = errno;
	close(logfd);
	free(envp);
	return d->pid < 0 ? -e : 0;
}

static void print_log(const struct daemon *d)
{
	FILE *f = fopen(d->log, "r");
	char line[1024];

	fprintf(stderr, "--- %s ---\n", d->log);
	while (f && fgets(line, sizeof(line), f))
		fputs(line, stderr);
	if (f)
		fclose(f);
}

/* READY=1 from it (and for the fd store, its journal stored), then a
 * client with a template. */
static int daemon_connect(struct daemon *d)
{
	double end = timing_now_ns() + START_S * 1e9;
	int r;

	while (!is_ready(d->pid)) {
		if (timing_now_ns() > end || waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			fprintf(stderr, "map-latency: %s daemon (%ld ranges) did not say READY=1\n",
				kind_name[d->kind], d->n);
			d->pid = d->pid > 0 && kill(d->pid, 0) == 0 ? d->pid : 0;
			print_log(d);
			return -1;
		}
		usleep(5000);
	}
	if (d->kind == FDSTORE && (d->snap = store_dup(d->pid, "snap")) < 0) {
		fprintf(stderr, "map-latency: the fd-store daemon (%ld ranges) stored no journal\n",
			d->n);
		print_log(d);
		return -1;
	}
	if ((r = rp_connect_opts(d->sock, RP_CONNECT_UFFD, &d->c)) < 0 ||
	    (r = rp_template_fill(d->c, 0xAA, &d->tmpl)) < 0) {
		fprintf(stderr, "map-latency: %s daemon (%ld ranges): %s\n", kind_name[d->kind],
			d->n, rp_strerror(r));
		return -1;
	}
	return 0;
}

static void daemon_stop(struct daemon *d)
{
	if (d->c)
		rp_disconnect(d->c);
	d->c = NULL;
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		double end = timing_now_ns() + 5e9;
		while (waitpid(d->pid, NULL, WNOHANG) == 0) {
			if (timing_now_ns() > end) {
				kill(d->pid, SIGKILL);
				waitpid(d->pid, NULL, 0);
				break;
			}
			usleep(5000);
		}
	}
	d->pid = 0;
	if (d->snap > 0)
		close(d->snap);
	d->snap = -1;
}

/* The named counter of the daemon's STATS (root sees the daemon's own). */
static int stat_get(struct daemon *d, const char *name, uint64_t *v)
{
	uint64_t vals[64];
	const char *names[64];
	int n = rp_stats(d->c, vals, names, 64);

	for (int i = 0; i < n; i++)
		if (names[i] && !strcmp(names[i], name)) {
			*v = vals[i];
			return 0;
		}
	return -1;
}

/* The counters read before and after the timed rounds: 0, or -1 (said). */
static int stats_get(struct daemon *d, uint64_t *ranges, uint64_t *loop_us, uint64_t *waited)
{
	if (stat_get(d, "ranges", ranges) < 0 || stat_get(d, "loop_us", loop_us) < 0 ||
	    stat_get(d, "maps_waited", waited) < 0) {
		fprintf(stderr, "map-latency: STATS failed\n");
		return -1;
	}
	return 0;
}

/* CPU time of every thread of pid so far, ns (schedstat: run time). */
static double proc_cpu_ns(pid_t pid)
{
	char path[64];
	double sum = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *dir = opendir(path);
	for (struct dirent *e; dir && (e = readdir(dir));) {
		char p[320];
		unsigned long long run;
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		FILE *f = fopen(p, "r");
		if (f && fscanf(f, "%llu", &run) == 1)
			sum += (double)run;
		if (f)
			fclose(f);
	}
	if (dir)
		closedir(dir);
	return sum;
}

static double thread_cpu_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static uint64_t journal_bytes(const struct daemon *d)
{
	struct stat st;

	return d->snap >= 0 && fstat(d->snap, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* What the daemon's log says so far: compactions, their longest. */
static void read_log(struct daemon *d, int *compacted)
{
	FILE *f = fopen(d->log, "r");
	char line[1024];

	*compacted = 0;
	while (f && fgets(line, sizeof(line), f)) {
		const char *p = strstr(line, "journal compacted:"), *ms;
		if (p) {
			double t;
			(*compacted)++;
			if ((ms = strstr(p, " bytes, ")) && sscanf(ms + 8, "%lf", &t) == 1 &&
			    t > d->compact_max_ms)
				d->compact_max_ms = t;
		}
		if (strstr(line, "journal compaction failed") || strstr(line, "cannot append") ||
		    strstr(line, "compaction: a worker did not answer"))
			d->compact_failed++;
		if (strstr(line, "no $NOTIFY_SOCKET") || strstr(line, "fd store: cannot send"))
			d->store_off = 1;
	}
	if (f)
		fclose(f);
}

/* --- measuring ------------------------------------------------------------------------ */

static int fill(struct daemon *d)
{
	double t0 = timing_now_ns();

	for (long i = 0; i < d->n; i++)
		if (rp_map(d->c, NULL, PAGE, PROT_READ | PROT_WRITE, 0, d->tmpl) == MAP_FAILED) {
			fprintf(stderr, "map-latency: %s daemon: background range %ld: %s\n",
				kind_name[d->kind], i, strerror(errno));
			return -1;
		}
	d->fill_s = (timing_now_ns() - t0) / 1e9;
	return 0;
}

/* count pairs; record them when lat is not NULL. */
static void pairs(struct daemon *d, long count, int record)
{
	for (long i = 0; i < count; i++) {
		double t0 = timing_now_ns();
		void *p = rp_map(d->c, NULL, PAIR_PAGES * PAGE, PROT_READ | PROT_WRITE, 0, d->tmpl);
		int r = p == MAP_FAILED ? -errno : rp_unmap(d->c, p, PAIR_PAGES * PAGE);
		double t = timing_now_ns() - t0;
		if (r < 0) {
			if (!d->errors++)
				d->first_err = -r;
			continue;
		}
		if (record) {
			if (d->at)
				d->at[d->taken] = t0;
			d->lat[d->taken++] = t;
		}
	}
}

static void summarise(struct daemon *d)
{
	double sum = 0;

	if (!d->taken)
		return;
	for (long i = 0; i < d->taken; i++)
		sum += d->lat[i];
	d->mean = sum / (double)d->taken;
	qsort(d->lat, (size_t)d->taken, sizeof(double), timing_cmp_double);
	d->min = d->lat[0];
	d->max = d->lat[d->taken - 1];
	d->p50 = d->lat[d->taken / 2];
	long k = (long)ceil(0.99 * (double)d->taken) - 1;
	d->p99 = d->lat[k < 0 ? 0 : k];
}

/* The samples as taken (before summarise sorts them). */
static int write_samples(const char *dir, const struct daemon *d)
{
	char path[PATH_MAX];
	FILE *f;

	if (snprintf(path, sizeof(path), "%s/%s-%ld.txt", dir, kind_name[d->kind], d->n) >=
		    (int)sizeof(path) ||
	    !(f = fopen(path, "w")))
		return -1;
	for (long i = 0; i < d->taken; i++)
		fprintf(f, "%.0f %.0f\n", d->at[i], d->lat[i]);
	return fclose(f) ? -1 : 0;
}

/* --- reports ---------------------------------------------------------------------------- */

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

static void iso_now(char *buf, size_t n)
{
	time_t t = time(NULL);
	struct tm tm;

	strftime(buf, n, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&t, &tm));
}

static void cmdline(const struct opts *o, char *buf, size_t n)
{
	size_t k = 0;

	buf[0] = '\0';
	for (int i = 0; i < o->nextra; i++)
		k += (size_t)snprintf(buf + k, k < n ? n - k : 0, "%s%s", i ? " " : "",
				      o->extra[i]);
}

/* Context for the reader of a noisy machine's numbers. */
struct env {
	char load0[64], load1[64]; /* /proc/loadavg before and after */
	long vmas;                 /* this process's mappings after the fill */
};

static void loadavg(char *buf, size_t n)
{
	FILE *f = fopen("/proc/loadavg", "r");

	buf[0] = '\0';
	if (f && fgets(buf, (int)n, f))
		buf[strcspn(buf, "\n")] = '\0';
	if (f)
		fclose(f);
}

static long count_vmas(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	int c;

	while (f && (c = getc(f)) != EOF)
		n += c == '\n';
	if (f)
		fclose(f);
	return n;
}

static double per_pair(double total, const struct daemon *d)
{
	return d->taken ? total / (double)d->taken : 0;
}

static void markdown(FILE *f, const struct opts *o, struct daemon (*ds)[NKIND], const char *cmd,
		     const struct env *env)
{
	char date[64], extra[512];
	struct utsname u;

	iso_now(date, sizeof(date));
	uname(&u);
	cmdline(o, extra, sizeof(extra));
	fprintf(f, "## MAP + UNMAP latency: rp_map(%u pages) + rp_unmap, plain vs --fd-store\n\n",
		PAIR_PAGES);
	fprintf(f, "%s, %s %s, %ld CPUs, load average %s before and %s after. `%s`\n\n", date,
		u.sysname, u.release, sysconf(_SC_NPROCESSORS_ONLN), env->load0, env->load1, cmd);
	fprintf(f,
		"%ld timed pairs per cell in %d interleaved rounds, after %ld warm-up pairs; a "
		"daemon per cell, each `--max-ranges %ld --log-level debug%s%s` with "
		"$NOTIFY_SOCKET, the fd-store ones with `--fd-store`. The client holds %ld "
		"mappings (`/proc/self/maps` lines) after the fill. Latencies in us; N/0 is "
		"against the %ld-range cell of the same kind.\n\n",
		o->pairs, o->rounds, o->warmup, o->max_ranges, o->nextra ? " " : "", extra,
		env->vmas, ds[0][PLAIN].n);
	fputs("| ranges | plain p50 | plain p99 | fd-store p50 | fd-store p99 | fd/plain p50 | "
	      "fd/plain p99 | plain N/0 p50 | plain N/0 p99 | fd-store N/0 p50 | fd-store N/0 p99 |\n"
	      "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
	      f);
	for (int s = 0; s < o->nsizes; s++) {
		const struct daemon *p = &ds[s][PLAIN], *q = &ds[s][FDSTORE];
		const struct daemon *p0 = &ds[0][PLAIN], *q0 = &ds[0][FDSTORE];
		fprintf(f,
			"| %ld | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
			p->n, p->p50 / 1e3, p->p99 / 1e3, q->p50 / 1e3, q->p99 / 1e3,
			ratio(q->p50, p->p50), ratio(q->p99, p->p99), ratio(p->p50, p0->p50),
			ratio(p->p99, p0->p99), ratio(q->p50, q0->p50), ratio(q->p99, q0->p99));
	}
	fputs("\nMeans, worst cases and where the time goes, us per pair: this thread's CPU "
	      "(`CLOCK_THREAD_CPUTIME_ID`), the daemon's CPU (all its threads, schedstat), its "
	      "main loop's time on requests (STATS `loop_us`).\n\n"
	      "| ranges | plain mean | plain max | fd-store mean | fd-store max | fd/plain mean | "
	      "client CPU plain | client CPU fd-store | daemon CPU plain | daemon CPU fd-store | "
	      "main loop plain | main loop fd-store |\n"
	      "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
	      f);
	for (int s = 0; s < o->nsizes; s++) {
		const struct daemon *p = &ds[s][PLAIN], *q = &ds[s][FDSTORE];
		fprintf(f,
			"| %ld | %.1f | %.0f | %.1f | %.0f | %.2f | %.1f | %.1f | %.1f | %.1f | "
			"%.1f | %.1f |\n",
			p->n, p->mean / 1e3, p->max / 1e3, q->mean / 1e3, q->max / 1e3,
			ratio(q->mean, p->mean), per_pair(p->cpu_client_ns, p) / 1e3,
			per_pair(q->cpu_client_ns, q) / 1e3, per_pair(p->cpu_daemon_ns, p) / 1e3,
			per_pair(q->cpu_daemon_ns, q) / 1e3,
			per_pair((double)(p->loop_us1 - p->loop_us0), p),
			per_pair((double)(q->loop_us1 - q->loop_us0), q));
	}
	fputs("\nFilling (seconds for the N background MAPs) and the fd-store daemon's journal: "
	      "the memfd's allocated bytes (MiB) after the fill, at the end and the most seen "
	      "between rounds; compactions its log counts during the fill and during the timed "
	      "pairs, and the longest it logged (ms).\n\n"
	      "| ranges | fill plain | fill fd-store | journal after fill | journal end | "
	      "journal peak | compactions fill | compactions timed | pairs per compaction | "
	      "longest compaction ms |\n"
	      "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
	      f);
	for (int s = 0; s < o->nsizes; s++) {
		const struct daemon *p = &ds[s][PLAIN], *q = &ds[s][FDSTORE];
		int timed = q->compact_end - q->compact_fill;
		char every[32] = "-";
		if (timed)
			snprintf(every, sizeof(every), "%.0f", (double)q->taken / timed);
		fprintf(f, "| %ld | %.2f | %.2f | %.2f | %.2f | %.2f | %d | %d | %s | %.1f |\n",
			p->n, p->fill_s, q->fill_s, q->jnl_fill / 1048576.0, q->jnl_end / 1048576.0,
			q->jnl_peak / 1048576.0, q->compact_fill, timed, every, q->compact_max_ms);
	}
	/* The goals, stated; nothing depends on them. */
	int ok_store = 1;
	for (int s = 0; s < o->nsizes; s++)
		ok_store &= ratio(ds[s][FDSTORE].p50, ds[s][PLAIN].p50) <= 1.2;
	const struct daemon *pl = &ds[o->nsizes - 1][PLAIN], *ql = &ds[o->nsizes - 1][FDSTORE];
	int ok_size = ratio(pl->p50, ds[0][PLAIN].p50) <= 2 &&
		      ratio(ql->p50, ds[0][FDSTORE].p50) <= 2;
	fprintf(f,
		"\nThe issue's goals, on medians: fd-store within 1.2x of plain at every size: "
		"%s; %ld ranges within 2x of %ld for both: %s.\n",
		ok_store ? "met" : "missed", pl->n, ds[0][PLAIN].n, ok_size ? "met" : "missed");
}

static void json_cell(FILE *f, const struct daemon *d, const struct daemon *zero,
		      const struct daemon *other)
{
	fprintf(f,
		"    {\"ranges\": %ld, \"daemon\": \"%s\", \"pid\": %d, \"pairs\": %ld, "
		"\"errors\": %ld, \"first_error\": \"%s\",\n"
		"     \"p50_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f, \"min_us\": %.2f, "
		"\"max_us\": %.2f,\n"
		"     \"ratio_vs_0_p50\": %.3f, \"ratio_vs_0_p99\": %.3f, "
		"\"ratio_vs_other_p50\": %.3f, \"ratio_vs_other_p99\": %.3f,\n"
		"     \"fill_s\": %.3f, \"ranges_after_fill\": %llu, \"ranges_at_end\": %llu, "
		"\"maps_waited\": %llu,\n"
		"     \"client_cpu_us_per_pair\": %.2f, \"daemon_cpu_us_per_pair\": %.2f, "
		"\"loop_us_per_pair\": %.2f",
		d->n, kind_name[d->kind], (int)d->pid, d->taken, d->errors,
		d->errors ? strerror(d->first_err) : "", d->p50 / 1e3, d->p99 / 1e3, d->mean / 1e3,
		d->min / 1e3, d->max / 1e3, ratio(d->p50, zero->p50), ratio(d->p99, zero->p99),
		ratio(d->p50, other->p50), ratio(d->p99, other->p99), d->fill_s,
		(unsigned long long)d->ranges_fill, (unsigned long long)d->ranges_end,
		(unsigned long long)(d->waited1 - d->waited0), per_pair(d->cpu_client_ns, d) / 1e3,
		per_pair(d->cpu_daemon_ns, d) / 1e3,
		per_pair((double)(d->loop_us1 - d->loop_us0), d));
	if (d->kind == FDSTORE)
		fprintf(f,
			",\n     \"journal\": {\"bytes_after_fill\": %llu, \"bytes_at_end\": %llu, "
			"\"bytes_peak\": %llu, \"compactions_fill\": %d, \"compactions_timed\": %d, "
			"\"compaction_max_ms\": %.1f, \"failures\": %d}",
			(unsigned long long)d->jnl_fill, (unsigned long long)d->jnl_end,
			(unsigned long long)d->jnl_peak, d->compact_fill,
			d->compact_end - d->compact_fill, d->compact_max_ms, d->compact_failed);
	fputs("}", f);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, f);
	}
	fputc('"', f);
}

static void json(FILE *f, const struct opts *o, struct daemon (*ds)[NKIND], const char *cmd,
		 const struct env *env, long errors, int sane)
{
	char date[64];
	struct utsname u;

	iso_now(date, sizeof(date));
	uname(&u);
	fprintf(f,
		"{\n  \"machine\": {\"nproc\": %ld, \"uname\": \"%s %s %s\", \"date\": \"%s\", "
		"\"loadavg_before\": \"%s\", \"loadavg_after\": \"%s\"},\n",
		sysconf(_SC_NPROCESSORS_ONLN), u.sysname, u.release, u.machine, date, env->load0,
		env->load1);
	fputs("  \"command\": ", f);
	json_str(f, cmd);
	fprintf(f,
		",\n  \"config\": {\"pair_pages\": %u, \"pairs\": %ld, \"rounds\": %d, "
		"\"warmup\": %ld, \"max_ranges\": %ld, \"quick\": %s, \"daemons\": [",
		PAIR_PAGES, o->pairs, o->rounds, o->warmup, o->max_ranges,
		o->quick ? "true" : "false");
	for (int s = 0; s < o->nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			char line[2048];
			size_t n = 0;
			for (int i = 0; ds[s][k].argv[i]; i++)
				n += (size_t)snprintf(line + n,
						      n < sizeof(line) ? sizeof(line) - n : 0,
						      "%s%s", i ? " " : "", ds[s][k].argv[i]);
			fputs(s || k ? ", " : "", f);
			json_str(f, line);
		}
	fprintf(f, "]},\n  \"client_mappings_after_fill\": %ld,\n  \"cells\": [\n", env->vmas);
	for (int s = 0; s < o->nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			json_cell(f, &ds[s][k], &ds[0][k], &ds[s][!k]);
			fputs(s == o->nsizes - 1 && k == NKIND - 1 ? "\n" : ",\n", f);
		}
	fprintf(f, "  ],\n  \"errors\": %ld,\n  \"sane\": %s\n}\n", errors,
		sane ? "true" : "false");
}

/* --- the command line --------------------------------------------------------------- */

static void usage(FILE *f)
{
	fputs("usage: map-latency [options]\n"
	      "  --daemon PATH        refpaged binary (default: the one built with this)\n"
	      "  --sizes LIST         background ranges per cell (default 0,1000,20000,100000;\n"
	      "                       the first is the base of the N/0 ratios)\n"
	      "  --pairs M            timed MAP+UNMAP pairs per cell (default 100000)\n"
	      "  --rounds R           rounds the pairs are interleaved in (default 20)\n"
	      "  --warmup W           untimed pairs per cell first (default 200)\n"
	      "  --max-ranges N       passed to every daemon (default 200000)\n"
	      "  --daemon-args ARGS   more arguments for every daemon, split at blanks\n"
	      "  --markdown FILE, --json FILE   reports (the markdown also goes to stdout)\n"
	      "  --keep DIR           the daemons' sockets and logs go to DIR and stay\n"
	      "  --samples DIR        every pair, in the order taken, to DIR/KIND-N.txt: when it\n"
	      "                       began (CLOCK_MONOTONIC ns) and its latency (ns)\n"
	      "  --quick              smoke size: sizes 0,1000, 400 pairs, 4 rounds, 20 warm-up\n",
	      f);
}

static long num(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "map-latency: --%s: expected a number in [%ld, %ld], got '%s'\n",
			opt, lo, hi, s);
		exit(2);
	}
	return v;
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "daemon", required_argument, NULL, 'd' },
		{ "sizes", required_argument, NULL, 's' },
		{ "pairs", required_argument, NULL, 'p' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "max-ranges", required_argument, NULL, 'm' },
		{ "daemon-args", required_argument, NULL, 'a' },
		{ "markdown", required_argument, NULL, 'M' },
		{ "json", required_argument, NULL, 'j' },
		{ "keep", required_argument, NULL, 'k' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ "samples", required_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	int c, sizes = 0, pairs_set = 0, rounds_set = 0, warm_set = 0;
	char *save = NULL;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			o->daemon = optarg;
			break;
		case 's':
			o->nsizes = 0;
			sizes = 1;
			for (char *t = strtok_r(optarg, ",", &save); t;
			     t = strtok_r(NULL, ",", &save)) {
				if (o->nsizes == MAX_SIZES) {
					fprintf(stderr, "map-latency: --sizes: at most %d\n",
						MAX_SIZES);
					exit(2);
				}
				o->sizes[o->nsizes++] = num("sizes", t, 0, 10000000);
			}
			break;
		case 'p':
			o->pairs = num("pairs", optarg, 1, 100000000);
			pairs_set = 1;
			break;
		case 'r':
			o->rounds = (int)num("rounds", optarg, 1, 1000);
			rounds_set = 1;
			break;
		case 'w':
			o->warmup = num("warmup", optarg, 0, 100000000);
			warm_set = 1;
			break;
		case 'm':
			o->max_ranges = num("max-ranges", optarg, 1, 100000000);
			break;
		case 'a':
			for (char *t = strtok_r(optarg, " \t", &save); t;
			     t = strtok_r(NULL, " \t", &save)) {
				if (o->nextra == MAX_ARGS) {
					fprintf(stderr, "map-latency: --daemon-args: too many\n");
					exit(2);
				}
				o->extra[o->nextra++] = t;
			}
			break;
		case 'M':
			o->markdown = optarg;
			break;
		case 'j':
			o->json = optarg;
			break;
		case 'k':
			o->keep = optarg;
			break;
		case 'S':
			o->samples = optarg;
			break;
		case 'q':
			o->quick = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc || !o->nsizes) {
		usage(stderr);
		exit(2);
	}
	if (o->quick) {
		if (!sizes) {
			o->nsizes = 2;
			o->sizes[1] = 1000;
		}
		o->pairs = pairs_set ? o->pairs : 400;
		o->rounds = rounds_set ? o->rounds : 4;
		o->warmup = warm_set ? o->warmup : 20;
	}
	if (o->rounds > o->pairs)
		o->rounds = (int)o->pairs;
	for (int i = 0; i < o->nsizes; i++)
		for (int j = 0; j < i; j++)
			if (o->sizes[i] == o->sizes[j]) {
				fprintf(stderr, "map-latency: --sizes: %ld twice\n", o->sizes[i]);
				exit(2);
			}
	for (int i = 0; i < o->nsizes; i++)
		if (o->sizes[i] + (long)PAIR_PAGES > o->max_ranges) {
			fprintf(stderr, "map-latency: %ld ranges do not fit --max-ranges %ld\n",
				o->sizes[i], o->max_ranges);
			exit(2);
		}
}

#ifndef RP_DAEMON_PATH
#define RP_DAEMON_PATH "refpaged"
#endif

int main(int argc, char **argv)
{
	struct opts o = {
		.daemon = RP_DAEMON_PATH,
		.sizes = { 0, 1000, 20000, 100000 },
		.nsizes = 4,
		.pairs = 100000,
		.rounds = 20,
		.warmup = 200,
		.max_ranges = 200000,
	};
	static struct daemon ds[MAX_SIZES][NKIND];
	struct env env = { .vmas = 0 };
	char dir[PATH_MAX], notify[PATH_MAX + 16], maxr[32], cmd[1024];
	int rc = 1, sane = 1;
	long errors = 0;

	{
		size_t n = 0;
		cmd[0] = '\0';
		for (int i = 0; i < argc; i++)
			n += (size_t)snprintf(cmd + n, n < sizeof(cmd) ? sizeof(cmd) - n : 0,
					      "%s%s", i ? " " : "", argv[i]);
	}
	parse(argc, argv, &o);
	loadavg(env.load0, sizeof(env.load0));
	if (o.keep) {
		if (mkdir(o.keep, 0755) < 0 && errno != EEXIST) {
			fprintf(stderr, "map-latency: %s: %s\n", o.keep, strerror(errno));
			return 1;
		}
		snprintf(dir, sizeof(dir), "%s", o.keep);
	} else {
		snprintf(dir, sizeof(dir), "%s/map-latency.XXXXXX",
			 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
		if (!mkdtemp(dir)) {
			fprintf(stderr, "map-latency: mkdtemp: %s\n", strerror(errno));
			return 1;
		}
	}
	chmod(dir, 0755);
	snprintf(notify, sizeof(notify), "%s/notify", dir);
	unlink(notify);
	if (asprintf(&env_notify, "NOTIFY_SOCKET=%s", notify) < 0)
		return 1;
	snprintf(maxr, sizeof(maxr), "%ld", o.max_ranges);
	if (listener_start(notify) < 0) {
		fprintf(stderr, "map-latency: %s: %s\n", notify, strerror(errno));
		return 1;
	}

	/* Every daemon first (no fork with refpage mappings about: each fork
	 * would be a fork event for every daemon), then the clients. */
	for (int s = 0; s < o.nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			struct daemon *d = &ds[s][k];
			int a = 0;
			d->kind = (enum kind)k;
			d->n = o.sizes[s];
			d->snap = -1;
			if (snprintf(d->sock, sizeof(d->sock), "%s/%s-%ld.sock", dir, kind_name[k],
				     d->n) >= (int)sizeof(d->sock) ||
			    snprintf(d->log, sizeof(d->log), "%s/%s-%ld.log", dir, kind_name[k],
				     d->n) >= (int)sizeof(d->log)) {
				fprintf(stderr, "map-latency: %s: path too long\n", dir);
				goto out;
			}
			unlink(d->sock);
			d->argv[a++] = (char *)o.daemon;
			d->argv[a++] = "--socket";
			d->argv[a++] = d->sock;
			d->argv[a++] = "--max-ranges";
			d->argv[a++] = maxr;
			d->argv[a++] = "--log-level";
			d->argv[a++] = "debug";
			for (int i = 0; i < o.nextra; i++)
				d->argv[a++] = o.extra[i];
			if (k == FDSTORE)
				d->argv[a++] = "--fd-store";
			d->argv[a] = NULL;
			if (!(d->lat = calloc((size_t)o.pairs, sizeof(double))) ||
			    (o.samples && !(d->at = calloc((size_t)o.pairs, sizeof(double)))) ||
			    daemon_spawn(d) < 0) {
				fprintf(stderr, "map-latency: cannot start %s: %s\n", o.daemon,
					strerror(errno));
				goto out;
			}
		}
	for (int s = 0; s < o.nsizes; s++)
		for (int k = 0; k < NKIND; k++)
			if (daemon_connect(&ds[s][k]) < 0)
				goto out;

	/* The background ranges, then the warm-up. */
	for (int s = 0; s < o.nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			struct daemon *d = &ds[s][k];
			if (fill(d) < 0)
				goto out;
			pairs(d, o.warmup, 0);
			if (stats_get(d, &d->ranges_fill, &d->loop_us0, &d->waited0) < 0)
				goto out;
			if (k == FDSTORE) {
				d->jnl_fill = d->jnl_peak = journal_bytes(d);
				read_log(d, &d->compact_fill);
			}
			fprintf(stderr,
				"map-latency: %-8s %6ld ranges registered in %.2f s (%.1f us per MAP)\n",
				kind_name[k], d->n, d->fill_s,
				d->n ? d->fill_s * 1e6 / (double)d->n : 0.0);
		}

	env.vmas = count_vmas();

	/* Rounds: sizes up, then down, then up...; within a size the kind
	 * that goes first alternates. */
	for (int r = 0; r < o.rounds; r++) {
		long lo = o.pairs * r / o.rounds, hi = o.pairs * (r + 1) / o.rounds;
		for (int i = 0; i < o.nsizes; i++) {
			int s = r % 2 ? o.nsizes - 1 - i : i;
			for (int j = 0; j < NKIND; j++) {
				struct daemon *d = &ds[s][(r + i + j) % 2];
				double c0 = thread_cpu_ns(), d0 = proc_cpu_ns(d->pid);
				pairs(d, hi - lo, 1);
				d->cpu_client_ns += thread_cpu_ns() - c0;
				d->cpu_daemon_ns += proc_cpu_ns(d->pid) - d0;
				if (d->kind == FDSTORE) {
					uint64_t b = journal_bytes(d);
					d->jnl_peak = b > d->jnl_peak ? b : d->jnl_peak;
				}
			}
		}
		fprintf(stderr, "map-latency: round %d of %d done\n", r + 1, o.rounds);
	}

	for (int s = 0; s < o.nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			struct daemon *d = &ds[s][k];
			if (stats_get(d, &d->ranges_end, &d->loop_us1, &d->waited1) < 0)
				goto out;
			if (k == FDSTORE) {
				d->jnl_end = journal_bytes(d);
				d->jnl_peak = d->jnl_end > d->jnl_peak ? d->jnl_end : d->jnl_peak;
			}
			read_log(d, &d->compact_end);
			if (o.samples && ((mkdir(o.samples, 0755) < 0 && errno != EEXIST) ||
					  write_samples(o.samples, d) < 0)) {
				fprintf(stderr, "map-latency: %s: %s\n", o.samples,
					strerror(errno));
				sane = 0;
			}
			summarise(d);
			errors += d->errors;
			/* Sanity: counts add up. */
			const char *why = d->errors             ? "a pair failed"
					  : d->taken != o.pairs ? "samples missing"
					  : d->ranges_fill != (uint64_t)d->n
						  ? "ranges after the fill != N"
					  : d->ranges_end != (uint64_t)d->n
						  ? "ranges at the end != N"
					  : d->compact_failed ? "the journal failed (see its log)"
					  : d->store_off      ? "the fd store was off"
							      : NULL;
			if (why) {
				fprintf(stderr,
					"map-latency: %s daemon, %ld ranges: %s (%ld errors, "
					"first: %s; %ld samples; ranges %llu / %llu)\n",
					kind_name[k], d->n, why, d->errors,
					d->errors ? strerror(d->first_err) : "-", d->taken,
					(unsigned long long)d->ranges_fill,
					(unsigned long long)d->ranges_end);
				sane = 0;
			}
		}

	loadavg(env.load1, sizeof(env.load1));
	markdown(stdout, &o, ds, cmd, &env);
	rc = sane ? 0 : 1;
	if (o.markdown) {
		FILE *f = fopen(o.markdown, "w");
		if (f)
			markdown(f, &o, ds, cmd, &env);
		if (!f || fclose(f)) {
			fprintf(stderr, "map-latency: %s: %s\n", o.markdown, strerror(errno));
			rc = 1;
		}
	}
	if (o.json) {
		FILE *f = fopen(o.json, "w");
		if (f)
			json(f, &o, ds, cmd, &env, errors, sane);
		if (!f || fclose(f)) {
			fprintf(stderr, "map-latency: %s: %s\n", o.json, strerror(errno));
			rc = 1;
		}
	}
out:
	for (int s = 0; s < o.nsizes; s++)
		for (int k = 0; k < NKIND; k++) {
			daemon_stop(&ds[s][k]);
			free(ds[s][k].lat);
			free(ds[s][k].at);
		}
	listener_stop();
	if (rc == 0 && !o.keep) {
		for (int s = 0; s < o.nsizes; s++)
			for (int k = 0; k < NKIND; k++) {
				unlink(ds[s][k].sock);
				unlink(ds[s][k].log);
			}
		unlink(notify);
		rmdir(dir);
	} else if (rc) {
		fprintf(stderr, "map-latency: the daemons' logs are in %s\n", dir);
	}
	free(env_notify);
	return rc;
}
