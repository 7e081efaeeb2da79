/* rp_tenant: the multi-tenant attack suite's driver.
 *
 *   rp_tenant [options] [ATTACK...]        (no attack named: all of them)
 *
 * For each attack: a private refpaged on a temporary socket (the
 * integration harness's, tests/integration/harness.h), two victims
 * (rp_victim) running all along, one as root and one as uid 65533, and the
 * attacker (rp_attacker) as uid 65534. The victims measure an unloaded
 * phase, the attack, and a phase after it. Then it asserts:
 *   - the daemon is alive (and, if not, says whether its seccomp filter
 *     killed it: SIGSYS);
 *   - the victims saw no error, no wrong byte and never hung;
 *   - the daemon's peak RSS (VmHWM) stayed under --rss-budget-mb;
 *   - its descriptor count came back to where it was before the victims
 *     and the attacker started, within --settle seconds of their end;
 *   - its log grew by at most --log-budget lines per second during the
 *     attack;
 *   - what the attack demonstrates is not a hole (per attack: the liveness
 *     probe writing into a client's memory, the template-dedup oracle,
 *     the daemon's CPU while it cannot fill faults (--cpu-budget)).
 * An attacker refused by the daemon (EDQUOT, EMFILE) is what a daemon with
 * per-uid budgets does, and fine; only the victims must never see an
 * error. Latencies are reported, never judged (perf/tenant.sh prints them
 * side by side: --table).
 *
 * Exit status: 0 every attack run passed, 1 one failed, 77 all skipped. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "proto.h"
#include "tenant.h"

#define VICTIM_UID 65533
#define NVICTIMS 2
#define OUT_MAX (256 * 1024)

/* --- what each attack is ------------------------------------------------------ */

enum {
	F_NOFILE = 1,  /* the daemon's RLIMIT_NOFILE lowered to --nofile first */
	F_FDSTORE = 2, /* --fd-store under a $NOTIFY_SOCKET listener */
	F_CGROUP = 4,  /* the attacker in a memory cgroup at its limit (waits for SIGUSR1) */
	F_ORACLE = 8,  /* the uid-65533 victim holds a secret template */
	F_CPU = 16,    /* judge the daemon's CPU during the attack */
	F_SERVED = 32, /* each victim must finish a loop during the attack */
};

struct attack {
	const char *name, *what;
	const char *mode;                    /* rp_attacker's attack (NULL: name) */
	const char *ci, *full;               /* attacker's key=value arguments */
	double dur_ci, dur_full;             /* the attack phase, seconds */
	const char *daemon_ci, *daemon_full; /* extra daemon options */
	const char *victim;                  /* extra victim key=value arguments */
	unsigned flags;
	unsigned nofile_ci, nofile_full; /* F_NOFILE: 0 leaves it as it is */
};

#define A(n, w, c, f, dc, df) .name = n, .what = w, .ci = c, .full = f, .dur_ci = dc, .dur_full = df
static const struct attack attacks[] = {
	{ A("fork-storm",
	    "one client keeps 600 (--full: 2000) fork children alive, each touching a "
	    "refpage now and then, released and forked again",
	    "children=600 hold=1 touch_ms=100", "children=2000 hold=3 touch_ms=100", 4, 20) },
	{ A("fork-fat",
	    "a process with 3000 one-page ranges and 300 live fork children (a table "
	    "copy each)",
	    "ranges=3000 children=300", "ranges=3000 children=300", 3, 8) },
	{ A("exec-storm",
	    "300 (--full: 1500) fork children that fault once and exec: their old "
	    "address spaces stay until the probe finds them gone",
	    "children=300 hold=1", "children=1500 hold=3", 3, 15) },
	{ A("template-flood",
	    "8 connections x 250 distinct templates (--full: 800 x 100), each "
	    "faulted so that its 256 KiB slab is built, handles released",
	    "conns=8 templates=250", "conns=800 templates=100", 3, 10) },
	{ A("template-pin",
	    "one uid pins as many templates as it can with ranges alone (its "
	    "memory budget bounds them: 16 MiB here, --full: the default 64 MiB); victims keep "
	    "making new templates",
	    "templates=60000", "conns=2 templates=40000", 2, 5),
	  .daemon_ci = "--uid-memory 16777216", .victim = "fresh_every=2" },
	{ A("fd-exhaust",
	    "connections and fork children until the daemon is at its descriptor limit "
	    "(lowered to 1024; --full: as it is); the victims HELLO and fork meanwhile",
	    "conns=1024 children=400", "conns=1024 children=12000", 3, 30),
	  .victim = "hello_every=3 fork_every=3", .flags = F_NOFILE, .nofile_ci = 1024 },
	{ A("slowloris",
	    "900 connections that never HELLO: half silent (made again at the hello "
	    "timeout, 1 s here), half silent after one STATS",
	    "conns=900", "conns=1000", 4, 15),
	  .daemon_ci = "--hello-timeout 1", .daemon_full = "--hello-timeout 1" },
	{ A("req-flood",
	    "200 (--full: 800) connections each keeping 16 MAP/UNMAP requests in flight",
	    "conns=200 depth=16 kind=map", "conns=800 depth=16 kind=map", 4, 10) },
	{ A("churn",
	    "2 (--full: 8) processes each with 20000 one-page ranges, UNMAP and MAP of "
	    "random pieces back to back",
	    "procs=2 ranges=20000", "procs=8 ranges=20000", 4, 10) },
	{ A("churn-fdstore",
	    "the same churn (1 process, 5000 ranges; --full: 2 x 20000) against a "
	    "daemon with --fd-store under a NOTIFY_SOCKET listener",
	    "procs=1 ranges=5000", "procs=2 ranges=20000", 4, 10),
	  .mode = "churn", .daemon_ci = "--fd-store", .daemon_full = "--fd-store",
	  .flags = F_FDSTORE },
	{ A("unmap-pieces",
	    "one UNMAP across 20000 pieces (a UFFDIO_UNREGISTER each on the main "
	    "loop), then every piece mapped again",
	    "ranges=20000", "ranges=20000", 4, 10) },
	{ A("mremap-storm",
	    "a region of 20000 one-page ranges moved back and forth by mremap while "
	    "the same client MAPs",
	    "pieces=20000", "pieces=20000", 4, 10) },
	{ A("mremap-dontunmap",
	    "20000 one-page ranges moved 60 times (--full: 300) with "
	    "MREMAP_DONTUNMAP: the daemon's table keeps a copy of every piece, past the range limits",
	    "pieces=20000 moves=60", "pieces=20000 moves=300", 3, 10) },
	{ A("mmap-lock",
	    "mprotect of 512 MiB (--full: 4 GiB) of populated memory in a loop while the "
	    "same process MAPs and faults",
	    "mb=512", "mb=4096", 4, 10) },
	{ A("uffd-bomb",
	    "packets of 253 of its own uffds each (a STATS, refused) while another "
	    "thread holds its mmap_lock with mprotect of 512 MiB (--full: 4 GiB) in a loop: the "
	    "last close of each uffd waits for that lock",
	    "mb=512", "mb=4096", 4, 10),
	  .flags = F_SERVED },
	{ A("fault-flood",
	    "4 processes x 4 threads faulting 32 MiB each as fast as they can (--full: "
	    "16 processes)",
	    "procs=4 threads=4 mb=32", "procs=16 threads=4 mb=64", 4, 10) },
	{ A("oracle",
	    "uid 65534 asks, for each of the 256 fill bytes, whether another uid holds that "
	    "template (STATS' template count; the time of a fill that may need a slab)",
	    "trials=5", "trials=15", 0, 0),
	  .victim = "hello_every=0 fresh_every=0", .flags = F_ORACLE },
	{ A("fork-gate",
	    "a client keeps a duplicate of the uffd it hands over and reads "
	    "UFFD_EVENT_FORK itself",
	    "forks=40", "forks=200", 0, 0) },
	{ A("cpu-hog",
	    "the control row: 4 (--full: 8) processes that only burn CPU and never talk "
	    "to the daemon, as any other user's job may",
	    "procs=4", "procs=8", 3, 10) },
	{ A("log-flood",
	    "4 (--full: 8) processes making bad connections as fast as they can (a "
	    "warning line each)",
	    "procs=4", "procs=8", 3, 10) },
	{ A("enomem",
	    "the attacker's memory cgroup at its limit with the OOM killer off: every "
	    "UFFDIO_COPY for it fails with ENOMEM",
	    "mb=256 threads=4", "mb=1024 threads=8", 4, 15),
	  .flags = F_CGROUP | F_CPU },
	{ A("probe-write",
	    "refpage ranges where the daemon's liveness probe writes (0x10000 and "
	    "0x7fffffffd000; a range grown over 0x10000)",
	    "wait=1.5", "wait=3", 0, 0) },
};
#define NATTACKS (sizeof(attacks) / sizeof(attacks[0]))

/* --- configuration -------------------------------------------------------------- */

static struct {
	int full, table, keep, verbose;
	double baseline, after, settle, duration; /* duration < 0: the attack's own */
	double rss_budget_mb, log_budget, cpu_budget, safety_mb;
	unsigned nofile; /* 0: the attack's default */
	long cgroup_limit_mb;
	const char *daemon_args, *victim_args, *attack_args, *log_level;
} cfg = {
	.baseline = 1.0,
	.after = 0.5,
	.settle = 12,
	.duration = -1,
	.rss_budget_mb = 256,
	.log_budget = 200,
	.cpu_budget = 0.25,
	.safety_mb = 0,
	.cgroup_limit_mb = 32,
	.log_level = "info",
};

static char victim_prog[512], attacker_prog[512], notify_prog[512];

/* --- small helpers --------------------------------------------------------------- */

static char *xstrdup(const char *s)
{
	char *d = strdup(s ? s : "");

	if (!d)
		abort();
	return d;
}

/* Split s at blanks into v (at most max-1 words, NULL terminated); the
 * words point into s, which is modified. */
static int split(char *s, const char **v, int n, int max)
{
	char *save = NULL;

	for (char *w = strtok_r(s, " \t", &save); w && n < max - 1;
	     w = strtok_r(NULL, " \t", &save))
		v[n++] = w;
	v[n] = NULL;
	return n;
}

/* A value of "key=" in text (the first), copied into out; NULL if none. */
static const char *kv(const char *text, const char *prefix, const char *key, char *out, size_t n)
{
	char pat[64];
	const char *line = text;

	snprintf(pat, sizeof(pat), " %s=", key);
	while (line && *line) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		if (!strncmp(line, prefix, strlen(prefix))) {
			const char *p = memmem(line, len, pat, strlen(pat));
			if (p) {
				p += strlen(pat);
				size_t k = 0;
				int quoted = *p == '"';
				p += quoted;
				while (p < line + len && k + 1 < n &&
				       (quoted ? *p != '"' : *p != ' '))
					out[k++] = *p++;
				out[k] = '\0';
				return out;
			}
		}
		line = eol ? eol + 1 : NULL;
	}
	return NULL;
}

static double kv_num(const char *text, const char *prefix, const char *key, double def)
{
	char b[64];

	return kv(text, prefix, key, b, sizeof(b)) ? atof(b) : def;
}

/* --- the daemon under observation ----------------------------------------------- */

struct proc_sample {
	double rss_mb, hwm_mb;
	long cpu_ticks;
	int fds;
};

static int read_sample(pid_t pid, struct proc_sample *s)
{
	char path[64], buf[4096];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (!(f = fopen(path, "re")))
		return -1;
	while (fgets(buf, sizeof(buf), f)) {
		long kb;
		if (sscanf(buf, "VmRSS: %ld", &kb) == 1)
			s->rss_mb = (double)kb / 1024;
		else if (sscanf(buf, "VmHWM: %ld", &kb) == 1)
			s->hwm_mb = (double)kb / 1024;
	}
	fclose(f);
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n > 0) {
		buf[n] = '\0';
		char *p = strrchr(buf, ')');
		unsigned long ut = 0, st = 0;
		/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
		if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
				&st) == 2)
			s->cpu_ticks = (long)(ut + st);
	}
	return 0;
}

/* STATS without HELLO on a connection of its own; 0 or -1. */
static int stats_query(const char *sock, uint64_t *v, double timeout_s)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), r = -1;

	if (s < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    proto_send(s, PROTO_STATS, 1, NULL, 0, -1, MSG_DONTWAIT) == 0) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (poll(&p, 1, (int)(timeout_s * 1000)) == 1) {
			ssize_t n = recv(s, buf, sizeof(buf), MSG_DONTWAIT);
			if (n >= (ssize_t)(sizeof(struct proto_hdr) +
					   sizeof(struct proto_stats_reply))) {
				struct proto_stats_reply sr;
				memcpy(&sr, buf + sizeof(struct proto_hdr), sizeof(sr));
				memcpy(v, sr.counters, sizeof(sr.counters));
				r = 0;
			}
		}
	}
	close(s);
	return r;
}

/* USAGE of uid on a connection of its own: its descriptors held now and
 * their budget; 0 or -1 (no answer, or no account for it yet). */
static int fds_query(const char *sock, uid_t uid, uint64_t *used, uint64_t *limit, double timeout_s)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	struct proto_usage u = { .uid = (uint32_t)uid };
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), r = -1;

	if (s < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    proto_send(s, PROTO_USAGE, 1, &u, sizeof(u), -1, MSG_DONTWAIT) == 0) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (poll(&p, 1, (int)(timeout_s * 1000)) == 1) {
			ssize_t n = recv(s, buf, sizeof(buf), MSG_DONTWAIT);
			struct proto_usage_reply ur;
			if (n >= (ssize_t)(sizeof(struct proto_hdr) + sizeof(ur))) {
				memcpy(&ur, buf + sizeof(struct proto_hdr), sizeof(ur));
				if (ur.status == 0 && ur.count > PROTO_RES_FDS) {
					*used = ur.used[PROTO_RES_FDS];
					*limit = ur.limit[PROTO_RES_FDS];
					r = 0;
				}
			}
		}
	}
	close(s);
	return r;
}

/* The sampler: the daemon's RSS, descriptors, CPU and (while allowed) its
 * STATS gauges and the attacker's descriptors (USAGE), and the safety cap
 * on its memory. */
struct sampler {
	pid_t pid;
	const char *sock;
	pthread_t th;
	atomic_int stop, stats_on, gone;
	atomic_int attacker; /* its process group, killed past the safety cap */
	atomic_int capped;
	pthread_mutex_t lock;
	struct proc_sample last;
	double peak_rss, peak_hwm;
	int peak_fds;
	uint64_t peak[PROTO_STATS_MAX];
	int stats_ok, stats_failed;
	/* The attacker's uid: the most descriptors the daemon held for it
	 * (its USAGE) and its budget, and how many samples said so. */
	uint64_t atk_fds_peak, atk_fds_limit;
	int atk_fds_samples;
};

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	unsigned tick = 0;

	while (!atomic_load(&s->stop)) {
		struct proc_sample x = { 0 };
		if (read_sample(s->pid, &x) < 0) {
			atomic_store(&s->gone, 1);
			break;
		}
		if (tick % 5 == 0)
			x.fds = h_count_fds(s->pid);
		pthread_mutex_lock(&s->lock);
		if (!x.fds)
			x.fds = s->last.fds;
		s->last = x;
		if (x.rss_mb > s->peak_rss)
			s->peak_rss = x.rss_mb;
		if (x.hwm_mb > s->peak_hwm)
			s->peak_hwm = x.hwm_mb;
		if (x.fds > s->peak_fds)
			s->peak_fds = x.fds;
		pthread_mutex_unlock(&s->lock);
		int a = atomic_load(&s->attacker);
		if (cfg.safety_mb > 0 && x.rss_mb > cfg.safety_mb && a > 0 &&
		    !atomic_exchange(&s->capped, 1))
			kill(-a, SIGKILL);
		uint64_t used, limit;
		if (tick % 5 == 0 && atomic_load(&s->stats_on) &&
		    fds_query(s->sock, H_NOBODY, &used, &limit, 0.5) == 0) {
			pthread_mutex_lock(&s->lock);
			s->atk_fds_samples++;
			s->atk_fds_limit = limit;
			if (used > s->atk_fds_peak)
				s->atk_fds_peak = used;
			pthread_mutex_unlock(&s->lock);
		}
		if (tick % 12 == 0 && atomic_load(&s->stats_on)) {
			uint64_t v[PROTO_STATS_MAX];
			int r = stats_query(s->sock, v, 0.5);
			pthread_mutex_lock(&s->lock);
			if (r == 0) {
				s->stats_ok++;
				for (unsigned i = 0; i < PROTO_STATS_MAX; i++)
					if (v[i] > s->peak[i])
						s->peak[i] = v[i];
			} else {
				s->stats_failed++;
			}
			pthread_mutex_unlock(&s->lock);
		}
		tick++;
		tn_sleep(0.02);
	}
	return NULL;
}

static struct proc_sample sampler_now(struct sampler *s)
{
	struct proc_sample x;

	pthread_mutex_lock(&s->lock);
	x = s->last;
	pthread_mutex_unlock(&s->lock);
	if (read_sample(s->pid, &x) == 0)
		x.fds = h_count_fds(s->pid);
	return x;
}

/* Lines (and warning-or-worse lines: "<0>".."<4>") of the log in [from, to). */
static void log_lines(const char *path, off_t from, off_t to, long *lines, long *warns)
{
	char buf[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int bol = 1, lt = 0;

	*lines = *warns = 0;
	if (fd < 0)
		return;
	for (off_t off = from; off < to;) {
		size_t want = (size_t)(to - off) < sizeof(buf) ? (size_t)(to - off) : sizeof(buf);
		ssize_t n = pread(fd, buf, want, off);
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			char ch = buf[i];
			/* lt: the line began with '<' and this is the digit after it. */
			if (lt && ch >= '0' && ch <= '4')
				(*warns)++;
			lt = bol && ch == '<';
			bol = ch == '\n';
			*lines += bol;
		}
		off += n;
	}
	close(fd);
}

static off_t log_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_size : 0;
}

static void log_tail(const char *path, off_t from, int max_lines)
{
	off_t end = log_size(path), start = end > from + 8192 ? end - 8192 : from;
	char buf[8193];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	ssize_t n = pread(fd, buf, (size_t)(end - start), start);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	char *p = buf + n;
	for (int k = 0; p > buf && k <= max_lines; p--)
		if (p[-1] == '\n')
			k++;
	fprintf(stderr, "   ---- daemon log, last lines ----\n%s   ---- end ----\n", p);
}

/* --- programs --------------------------------------------------------------- */

struct prog {
	pid_t pid;
	int fd;
	char *out;
	size_t n;
	int status; /* wait status, -1 unknown */
};

static void prog_read(struct prog *p, double timeout_s)
{
	struct pollfd pf = { .fd = p->fd, .events = POLLIN };

	if (p->fd < 0 || poll(&pf, 1, (int)(timeout_s * 1000)) <= 0)
		return;
	if (!p->out && !(p->out = calloc(1, OUT_MAX)))
		abort();
	ssize_t r = read(p->fd, p->out + p->n, OUT_MAX - 1 - p->n);
	if (r > 0) {
		p->n += (size_t)r;
		p->out[p->n] = '\0';
	} else if (r == 0 || errno != EINTR) {
		close(p->fd);
		p->fd = -1;
	}
	if (p->n >= OUT_MAX - 1) {
		/* Keep the tail: the reports come last. */
		memmove(p->out, p->out + OUT_MAX / 2, p->n - OUT_MAX / 2);
		p->n -= OUT_MAX / 2;
		p->out[p->n] = '\0';
	}
}

/* Read until EOF and reap, within timeout_s; SIGKILL to its group after. */
static void prog_finish(struct prog *p, double timeout_s)
{
	double end = h_now() + timeout_s;

	while (p->fd >= 0 && h_now() < end)
		prog_read(p, end - h_now());
	int st = h_reap(p->pid, p->fd >= 0 ? 0.1 : end - h_now() > 0.1 ? end - h_now() : 0.1);
	if (st == -1) {
		kill(-p->pid, SIGKILL);
		st = h_reap(p->pid, H_DEADLINE_S);
	}
	kill(-p->pid, SIGKILL); /* whatever it left behind */
	while (p->fd >= 0)
		prog_read(p, 0.2);
	p->status = st;
}

static pid_t spawn_as(const char *const *argv, uid_t uid, int *fd)
{
	const char *v[96];
	char sp[64], ru[32], rg[32];
	int n = 0;

	if (uid != 0) {
		if (h_find_setpriv(sp, sizeof(sp)) < 0)
			return -1;
		snprintf(ru, sizeof(ru), "--reuid=%u", (unsigned)uid);
		snprintf(rg, sizeof(rg), "--regid=%u", (unsigned)uid);
		v[n++] = sp;
		v[n++] = ru;
		v[n++] = rg;
		v[n++] = "--clear-groups";
	}
	for (int i = 0; argv[i] && n < 95; i++)
		v[n++] = argv[i];
	v[n] = NULL;
	return h_spawn(v, 0, fd);
}

/* --- a memory cgroup for the attacker ------------------------------------------- */

struct cg {
	char dir[400];
	int made;
};

static int write_file(const char *dir, const char *name, const char *val)
{
	char path[600];
	int fd, r = -1;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) >= 0) {
		r = write(fd, val, strlen(val)) == (ssize_t)strlen(val) ? 0 : -1;
		close(fd);
	}
	return r;
}

/* cgroup v1's memory controller: a child of our own group with the limit
 * and the OOM killer disabled (a charge that does not fit then fails with
 * ENOMEM in the daemon's UFFDIO_COPY, instead of killing the attacker).
 * cgroup v2 has no way to disable the OOM killer. 0, or -1 with why. */
static int cg_make(struct cg *c, long limit_mb, char *why, size_t n)
{
	char line[512], own[300] = "";
	FILE *f = fopen("/proc/self/cgroup", "re");

	c->made = 0;
	while (f && fgets(line, sizeof(line), f)) {
		char *p = strstr(line, ":memory:");
		if (p) {
			snprintf(own, sizeof(own), "%s", p + 8);
			own[strcspn(own, "\n")] = '\0';
		}
	}
	if (f)
		fclose(f);
	if (!own[0] || access("/sys/fs/cgroup/memory/cgroup.procs", F_OK) < 0) {
		snprintf(why, n,
			 "no cgroup v1 memory controller here (cgroup v2 cannot disable the "
			 "OOM killer, so the daemon's UFFDIO_COPY would never see ENOMEM)");
		return -1;
	}
	snprintf(c->dir, sizeof(c->dir), "/sys/fs/cgroup/memory%s/rp-tenant-%d",
		 strcmp(own, "/") ? own : "", (int)getpid());
	if (mkdir(c->dir, 0755) < 0) {
		snprintf(why, n, "cannot make a memory cgroup (%.120s): %s", c->dir,
			 strerror(errno));
		return -1;
	}
	c->made = 1;
	snprintf(line, sizeof(line), "%ld", limit_mb << 20);
	if (write_file(c->dir, "memory.limit_in_bytes", line) < 0 ||
	    write_file(c->dir, "memory.oom_control", "1") < 0) {
		snprintf(why, n, "cannot set the cgroup's limit or oom_control: %s",
			 strerror(errno));
		return -1;
	}
	return 0;
}

static int cg_enter(struct cg *c, pid_t pid)
{
	char b[32];

	snprintf(b, sizeof(b), "%d", (int)pid);
	return write_file(c->dir, "cgroup.procs", b);
}

static void cg_remove(struct cg *c)
{
	if (!c->made)
		return;
	write_file(c->dir, "memory.oom_control", "0");
	for (int i = 0; i < 100 && rmdir(c->dir) < 0 && errno == EBUSY; i++)
		tn_sleep(0.05);
	c->made = 0;
}

/* The daemon's CPU (of one CPU) over window_s with the victims stopped:
 * what the daemon spends on its own (or on the attacker alone). */
static double quiet_cpu(struct sampler *smp, const pid_t *vic, int n, double window_s)
{
	for (int i = 0; i < n; i++)
		if (vic[i] > 0)
			kill(vic[i], SIGSTOP);
	tn_sleep(0.1);
	struct proc_sample a = sampler_now(smp);
	double t = h_now();
	tn_sleep(window_s);
	struct proc_sample b = sampler_now(smp);
	t = h_now() - t;
	for (int i = 0; i < n; i++)
		if (vic[i] > 0)
			kill(vic[i], SIGCONT);
	return (double)(b.cpu_ticks - a.cpu_ticks) / (double)sysconf(_SC_CLK_TCK) / t;
}

/* The daemon's limit for one uid: the last --uid-NAME N in its options, or def. */
static double uid_limit(const char *const *extra, const char *name, double def)
{
	char opt[48];

	snprintf(opt, sizeof(opt), "--uid-%s", name);
	for (int i = 0; extra[i]; i++)
		if (!strcmp(extra[i], opt) && extra[i + 1])
			def = atof(extra[i + 1]);
	return def;
}

/* --- one attack ----------------------------------------------------------------- */

struct vres {
	int ok; /* its verdict line was read */
	long errors, wrong, hung;
	char first_error[256];
	double map_p50[3], map_p99[3], fault_p50[3], fault_p99[3], iters[3], map_max[3],
		fault_max[3];
};

struct result {
	const struct attack *a;
	int skipped, failed;
	char reasons[1024], skip_why[256];
	struct vres v[NVICTIMS];
};

static struct result results[NATTACKS];
static const char *const vlabel[NVICTIMS] = { "root", "uid65533" };

__attribute__((format(printf, 2, 3))) static void fail(struct result *r, const char *fmt, ...)
{
	va_list ap;
	size_t n = strlen(r->reasons);

	if (n && n + 3 < sizeof(r->reasons))
		strcat(r->reasons, "; "), n += 2;
	va_start(ap, fmt);
	vsnprintf(r->reasons + n, sizeof(r->reasons) - n, fmt, ap);
	va_end(ap);
	r->failed = 1;
}

static void parse_victim(const char *out, const char *label, struct vres *v)
{
	char pre[64], b[256];

	memset(v, 0, sizeof(*v));
	snprintf(pre, sizeof(pre), "victim label=%s errors=", label);
	const char *line = out ? strstr(out, pre) : NULL;
	if (!line)
		return;
	v->ok = 1;
	snprintf(pre, sizeof(pre), "victim label=%s", label);
	v->errors = (long)kv_num(line, pre, "errors", 0);
	v->wrong = (long)kv_num(line, pre, "wrong_bytes", 0);
	v->hung = (long)kv_num(line, pre, "hung", 0);
	if (kv(line, pre, "first_error", b, sizeof(b)))
		snprintf(v->first_error, sizeof(v->first_error), "%s", b);
	for (int ph = 0; ph < 3; ph++) {
		snprintf(pre, sizeof(pre), "victim label=%s phase=%d ", label, ph);
		const char *l = strstr(out, pre);
		if (!l)
			continue;
		v->map_p50[ph] = kv_num(l, pre, "map_p50_us", 0);
		v->map_p99[ph] = kv_num(l, pre, "map_p99_us", 0);
		v->fault_p50[ph] = kv_num(l, pre, "fault_p50_us", 0);
		v->fault_p99[ph] = kv_num(l, pre, "fault_p99_us", 0);
		v->map_max[ph] = kv_num(l, pre, "map_max_us", 0);
		v->fault_max[ph] = kv_num(l, pre, "fault_max_us", 0);
		v->iters[ph] = kv_num(l, pre, "iters", 0);
	}
}

static void print_prefixed(const char *out, const char *prefix, const char *indent)
{
	for (const char *l = out; l && *l;) {
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) : strlen(l);
		if (!prefix || !strncmp(l, prefix, strlen(prefix)))
			printf("%s%.*s\n", indent, (int)len, l);
		l = e ? e + 1 : NULL;
	}
}

/* Is b (0..255) in a list "0xa5,0x5c"? */
static int in_list(const char *list, int b)
{
	char want[8];

	snprintf(want, sizeof(want), "0x%02x", b);
	return strstr(list, want) != NULL;
}

static void judge_findings(struct result *r, const char *out, int secret)
{
	char b[1200];
	const char *name = r->a->name;

	if (!strcmp(name, "probe-write") && kv(out, "finding", "probe_write", b, sizeof(b)) &&
	    atoi(b) == 1)
		fail(r,
		     "the daemon's liveness probe wrote into a client's refpage mapping: a page read "
		     "zeros where the template belongs");
	if (!strcmp(name, "oracle") && kv(out, "finding", "oracle_stats_hits", b, sizeof(b))) {
		if (in_list(b, secret))
			fail(r,
			     "uid 65534 learned that another uid holds a template of byte 0x%02x "
			     "(STATS' template count did not grow when it made one)",
			     secret);
		char t[1200];
		if (kv(out, "finding", "oracle_timing_fastest", t, sizeof(t)))
			printf("   oracle: secret 0x%02x %s the 8 fastest 2-page fills (%s): slab timing oracle "
			       "%s (reported, not judged)\n",
			       secret, in_list(t, secret) ? "IS among" : "is not among", t,
			       in_list(t, secret) ? "works" : "not shown");
	}
}

/* The kernel's audit line for a seccomp kill of pid ("type=1326 ...
 * pid=N ... syscall=M"), as ", syscall M (name)" in out, or "". */
static const char *seccomp_culprit(pid_t pid, char *out, size_t n)
{
	int len = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf = len > 0 ? malloc((size_t)len + 1) : NULL, pat[32];

	out[0] = '\0';
	if (!buf)
		return out;
	len = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, len);
	buf[len > 0 ? len : 0] = '\0';
	snprintf(pat, sizeof(pat), " pid=%d ", (int)pid);
	for (char *l = buf; (l = strstr(l, "type=1326"));) {
		char *e = strchr(l, '\n'), *p, *sc;
		if (e)
			*e = '\0';
		if ((p = strstr(l, pat)) && (sc = strstr(l, " syscall="))) {
			int nr = atoi(sc + 9);
			snprintf(out, n, ", syscall %d%s", nr, nr == 257 ? " openat" : "");
		}
		if (!e)
			break;
		l = e + 1;
	}
	free(buf);
	return out;
}

static int run_attack(const struct attack *a, struct result *res)
{
	struct h_daemon d;
	char why[200], tmp[] = "/tmp/rp-tenant-XXXXXX", sock[160], notify[160], nlog[200];
	const char *extra[64];
	char *dargs = NULL, *uargs = NULL, *aargs = NULL, *vargs = NULL, *uvargs = NULL,
	     *xargs = NULL;
	int ne = 0;
	pid_t notify_pid = 0;
	struct cg cg = { .made = 0 };
	double dur = cfg.duration >= 0 ? cfg.duration : cfg.full ? a->dur_full : a->dur_ci;
	int secret = -1, dead = 0, fds_after = -1;
	double hwm = 0, cpu = 0, wall = 1, bcpu = 0, brate = 0;
	long lines = 0, warns = 0;
	struct proc_sample base = { 0 };

	memset(res, 0, sizeof(*res));
	res->a = a;
	printf("== tenant %s: %s\n", a->name, a->what);
	fflush(stdout);
	if (!h_uffd_usable(why, sizeof(why)) || !h_can_run_as_nobody(why, sizeof(why))) {
		res->skipped = 1;
		snprintf(res->skip_why, sizeof(res->skip_why), "%s", why);
		return 77;
	}
	if ((a->flags & F_CGROUP) && cg_make(&cg, cfg.cgroup_limit_mb, why, sizeof(why)) < 0) {
		cg_remove(&cg);
		res->skipped = 1;
		snprintf(res->skip_why, sizeof(res->skip_why), "%s", why);
		return 77;
	}
	if (!mkdtemp(tmp) || chmod(tmp, 0755) < 0)
		return -1;

	/* The daemon. */
	extra[ne++] = "--log-level";
	extra[ne++] = cfg.log_level;
	dargs = xstrdup(cfg.full ? a->daemon_full : a->daemon_ci);
	ne = split(dargs, extra, ne, 32);
	uargs = xstrdup(cfg.daemon_args);
	ne = split(uargs, extra, ne, 64);
	if (a->flags & F_FDSTORE) {
		snprintf(notify, sizeof(notify), "%s/notify", tmp);
		snprintf(nlog, sizeof(nlog), "%s/notify.log", tmp);
		notify_pid = fork();
		if (notify_pid == 0) {
			int o = open(nlog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			if (o < 0 || dup2(o, 1) < 0 || dup2(o, 2) < 0)
				_exit(127);
			execl(notify_prog, notify_prog, notify, "3600", (char *)NULL);
			_exit(127);
		}
		for (int i = 0; i < 200 && access(notify, F_OK) < 0; i++)
			tn_sleep(0.01);
		setenv("NOTIFY_SOCKET", notify, 1);
	}
	int started = h_daemon_start_args(&d, extra);
	unsetenv("NOTIFY_SOCKET");
	if (started < 0) {
		fail(res, "the daemon did not start");
		goto out_tmp;
	}
	snprintf(sock, sizeof(sock), "%s", d.sock);
	pid_t pid0 = d.pid;
	tn_sleep(0.2);
	struct sampler smp = { .pid = d.pid, .sock = sock };
	pthread_mutex_init(&smp.lock, NULL);
	base = sampler_now(&smp);
	unsigned nofile = cfg.nofile ? cfg.nofile : cfg.full ? a->nofile_full : a->nofile_ci;
	if ((a->flags & F_NOFILE) && nofile) {
		struct rlimit rl = { nofile, nofile };
		if (prlimit(d.pid, RLIMIT_NOFILE, &rl, NULL) < 0)
			printf("   (cannot lower the daemon's RLIMIT_NOFILE: %s)\n",
			       strerror(errno));
		else
			printf("   daemon RLIMIT_NOFILE lowered to %u\n", nofile);
	}
	atomic_store(&smp.stats_on, 1);
	pthread_create(&smp.th, NULL, sampler_main, &smp);

	/* The victims. */
	struct prog vic[NVICTIMS] = { 0 };
	if (a->flags & F_ORACLE) {
		/* Not a byte anyone else uses here (victims: 0xa5, 0x5c; the
		 * attacker's warm-up: 0x00..0x1f). */
		secret = 0x60 + (int)(getpid() % 0x40);
		if (secret == 0x5c || secret == (0x5c ^ 0x5a) || secret == (0xa5 ^ 0x5a))
			secret++;
	}
	for (int i = 0; i < NVICTIMS; i++) {
		const char *argv[48];
		char s1[200], s2[64], s3[32], s4[32], s5[32];
		int n = 0;
		argv[n++] = victim_prog;
		snprintf(s1, sizeof(s1), "sock=%s", sock);
		snprintf(s2, sizeof(s2), "label=%s", vlabel[i]);
		snprintf(s3, sizeof(s3), "fill=%#x", i ? 0x5c : 0xa5);
		snprintf(s4, sizeof(s4), "seed=%d", i + 1);
		argv[n++] = s1;
		argv[n++] = s2;
		argv[n++] = s3;
		argv[n++] = s4;
		if (i == 1 && secret >= 0) {
			snprintf(s5, sizeof(s5), "secret=%#x", secret);
			argv[n++] = s5;
		}
		free(vargs);
		vargs = xstrdup(a->victim);
		n = split(vargs, argv, n, 36);
		char *u = xstrdup(cfg.victim_args);
		n = split(u, argv, n, 47);
		vic[i].pid = spawn_as(argv, i ? VICTIM_UID : 0, &vic[i].fd);
		vic[i].status = -1;
		free(uvargs);
		uvargs = u;
		if (vic[i].pid < 0) {
			fail(res, "victim %s did not start", vlabel[i]);
			vic[i].fd = -1;
		}
	}
	for (int i = 0; i < NVICTIMS; i++) {
		char line[256];
		if (vic[i].pid > 0 &&
		    h_read_line(vic[i].fd, line, sizeof(line), H_DEADLINE_S) < 0) {
			fail(res, "victim %s did not get ready: %s", vlabel[i], line);
		} else if (vic[i].pid > 0 && strcmp(line, "ready")) {
			fail(res, "victim %s: %s", vlabel[i], line);
		}
	}
	pid_t vpid[NVICTIMS];
	for (int i = 0; i < NVICTIMS; i++)
		vpid[i] = vic[i].pid;
	double qbase = -1, qatk = -1;
	if (a->flags & F_CPU)
		qbase = quiet_cpu(&smp, vpid, NVICTIMS, 1.0);
	off_t logb = log_size(d.log);
	struct proc_sample sb = sampler_now(&smp);
	double tb = h_now();
	tn_sleep(cfg.baseline);

	/* The attack. */
	off_t log0 = log_size(d.log);
	struct proc_sample s0 = sampler_now(&smp);
	double t0 = h_now();
	long blines, bwarns;
	log_lines(d.log, logb, log0, &blines, &bwarns);
	double bwall = t0 - tb > 0.001 ? t0 - tb : 0.001;
	bcpu = (double)(s0.cpu_ticks - sb.cpu_ticks) / (double)sysconf(_SC_CLK_TCK) / bwall;
	brate = (double)blines / bwall;
	for (int i = 0; i < NVICTIMS; i++)
		if (vic[i].pid > 0)
			kill(vic[i].pid, SIGUSR1);
	const char *argv[48];
	int n = 0;
	char durarg[48];
	argv[n++] = attacker_prog;
	argv[n++] = sock;
	argv[n++] = a->mode ? a->mode : a->name;
	aargs = xstrdup(cfg.full ? a->full : a->ci);
	n = split(aargs, argv, n, 30);
	xargs = xstrdup(cfg.attack_args);
	n = split(xargs, argv, n, 44);
	if (dur > 0) {
		snprintf(durarg, sizeof(durarg), "duration=%g", dur);
		argv[n++] = durarg;
		argv[n] = NULL;
	}
	struct prog atk = { .status = -1 };
	atk.pid = spawn_as(argv, H_NOBODY, &atk.fd);
	if (atk.pid < 0) {
		fail(res, "the attacker did not start");
	} else {
		atomic_store(&smp.attacker, atk.pid);
		if (a->flags & F_CGROUP) {
			char line[256];
			if (h_read_line(atk.fd, line, sizeof(line), 60) < 0 ||
			    strcmp(line, "ready")) {
				fail(res, "the attacker did not get ready: %s", line);
			} else if (cg_enter(&cg, atk.pid) < 0) {
				fail(res, "cannot put the attacker into %s: %s", cg.dir,
				     strerror(errno));
			} else {
				printf("   attacker in memory cgroup %s (limit %ld MiB, OOM killer off)\n",
				       cg.dir, cfg.cgroup_limit_mb);
				s0 = sampler_now(&smp);
				t0 = h_now();
				kill(atk.pid, SIGUSR1);
			}
		}
		if (a->flags & F_CPU) {
			tn_sleep(dur > 3 ? 1.5 : dur / 2);
			qatk = quiet_cpu(&smp, vpid, NVICTIMS, 1.0);
		}
		double limit = (cfg.full ? 10 : 3) * (dur > 0 ? dur : 10) + 60;
		prog_finish(&atk, limit);
		atomic_store(&smp.attacker, 0);
		if (h_now() - t0 > limit - 1)
			printf("   attacker still running after %.0f s: killed\n", limit);
	}
	double t1 = h_now();
	struct proc_sample s1 = sampler_now(&smp);
	off_t log1 = log_size(d.log);
	atomic_store(&smp.stats_on, 0);
	for (int i = 0; i < NVICTIMS; i++)
		if (vic[i].pid > 0)
			kill(vic[i].pid, SIGUSR1);
	tn_sleep(cfg.after);
	for (int i = 0; i < NVICTIMS; i++)
		if (vic[i].pid > 0)
			kill(vic[i].pid, SIGTERM);
	for (int i = 0; i < NVICTIMS; i++)
		if (vic[i].pid > 0)
			prog_finish(&vic[i], 20);
	cg_remove(&cg);

	/* Back to rest? */
	double settle_t0 = h_now();
	int st = 0;
	for (;;) {
		pid_t w = waitpid(d.pid, &st, WNOHANG);
		if (w == d.pid) {
			dead = 1;
			break;
		}
		fds_after = h_count_fds(d.pid);
		if (fds_after == base.fds || h_now() - settle_t0 > cfg.settle)
			break;
		tn_sleep(0.05);
	}
	double settle_s = h_now() - settle_t0;
	atomic_store(&smp.stop, 1);
	pthread_join(smp.th, NULL);
	/* Stopped here rather than by the harness: how it ends counts too (a
	 * daemon that frees what an attack made can die of it). */
	int stop_st = -1;
	if (!dead) {
		kill(d.pid, SIGTERM);
		if ((stop_st = h_reap(d.pid, H_DEADLINE_S)) == -1) {
			kill(d.pid, SIGKILL);
			h_reap(d.pid, H_DEADLINE_S);
		}
		d.pid = 0;
	}

	/* What happened. */
	const char *aout = atk.out ? atk.out : "";
	if (atk.status != -1 && WIFEXITED(atk.status) && WEXITSTATUS(atk.status) == 77) {
		res->skipped = 1;
		snprintf(res->skip_why, sizeof(res->skip_why), "the attack cannot be set up here");
	}
	print_prefixed(aout, "attacker", "   ");
	print_prefixed(aout, "finding", "   ");
	if (atk.status != -1 && !(WIFEXITED(atk.status) &&
				  (WEXITSTATUS(atk.status) == 0 || WEXITSTATUS(atk.status) == 77)))
		printf("   attacker exit status %#x%s\n", atk.status,
		       atomic_load(&smp.capped) ? " (killed: the daemon passed the safety cap)"
						: "");
	if (cfg.verbose)
		print_prefixed(aout, NULL, "   | ");
	wall = t1 - t0 > 0.001 ? t1 - t0 : 0.001;
	log_lines(d.log, log0, log1, &lines, &warns);
	cpu = (double)(s1.cpu_ticks - s0.cpu_ticks) / (double)sysconf(_SC_CLK_TCK) / wall;
	hwm = smp.peak_hwm > s1.hwm_mb ? smp.peak_hwm : s1.hwm_mb;
	if (dead) {
		printf("   daemon: DEAD (%s %d)\n", WIFSIGNALED(st) ? "signal" : "exit status",
		       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		d.pid = 0;
	}
	printf("   daemon: peak VmRSS %.1f MiB, VmHWM %.1f MiB (before %.1f MiB); fds %d before, peak %d, "
	       "%d after (%.1f s after the end)\n",
	       smp.peak_rss, hwm, base.rss_mb, base.fds, smp.peak_fds, fds_after, settle_s);
	printf("   daemon: %ld log lines (%ld warnings or worse) in the %.1f s of the attack: %.0f lines/s "
	       "(%.0f/s before it); CPU %.2f of one CPU (%.2f before it)\n",
	       lines, warns, wall, (double)lines / wall, brate, cpu, bcpu);
	printf("   daemon STATS peaks: %llu clients, %llu processes, %llu ranges, %llu templates "
	       "(%d of %d queries answered)\n",
	       (unsigned long long)smp.peak[PROTO_STAT_CLIENTS],
	       (unsigned long long)smp.peak[PROTO_STAT_PROCESSES],
	       (unsigned long long)smp.peak[PROTO_STAT_RANGES],
	       (unsigned long long)smp.peak[PROTO_STAT_TEMPLATES], smp.stats_ok,
	       smp.stats_ok + smp.stats_failed);
	for (int i = 0; i < NVICTIMS; i++) {
		struct vres *v = &res->v[i];
		parse_victim(vic[i].out, vlabel[i], v);
		printf("   victim %-8s: %serrors %ld, wrong bytes %ld%s%s%s\n"
		       "      MAP p50/p99/max %.0f/%.0f/%.0f us unloaded, %.0f/%.0f/%.0f us attacked; "
		       "fault p50/p99/max %.1f/%.1f/%.0f us unloaded, %.1f/%.1f/%.0f us attacked; "
		       "loops %.0f before, %.0f during, %.0f after\n",
		       vlabel[i], v->ok ? "" : "(no report) ", v->errors, v->wrong,
		       v->hung ? ", HUNG" : "", v->first_error[0] ? ": " : "", v->first_error,
		       v->map_p50[0], v->map_p99[0], v->map_max[0], v->map_p50[1], v->map_p99[1],
		       v->map_max[1], v->fault_p50[0], v->fault_p99[0], v->fault_max[0],
		       v->fault_p50[1], v->fault_p99[1], v->fault_max[1], v->iters[0], v->iters[1],
		       v->iters[2]);
		if (!v->ok)
			fail(res, "victim %s gave no report (exit status %#x)", vlabel[i],
			     vic[i].status);
		else if (v->errors || v->wrong || v->hung)
			fail(res, "victim %s: %ld errors, %ld wrong bytes%s (first: %s)", vlabel[i],
			     v->errors, v->wrong, v->hung ? ", hung" : "", v->first_error);
	}
	char sys[96];
	if (dead) {
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)
			fail(res,
			     "the daemon was killed by its own seccomp filter (SIGSYS%s) during the test",
			     seccomp_culprit(pid0, sys, sizeof(sys)));
		else
			fail(res, "the daemon died (%s %d) during the test",
			     WIFSIGNALED(st) ? "signal" : "exit status",
			     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	} else if (stop_st == -1) {
		fail(res, "the daemon did not stop within %.0f s of SIGTERM", H_DEADLINE_S);
	} else if (WIFSIGNALED(stop_st) && WTERMSIG(stop_st) == SIGSYS) {
		fail(res,
		     "the daemon was killed by its own seccomp filter (SIGSYS%s) when stopped "
		     "after the attack",
		     seccomp_culprit(pid0, sys, sizeof(sys)));
	} else if (!WIFEXITED(stop_st) || WEXITSTATUS(stop_st)) {
		fail(res, "the daemon, stopped after the attack, ended with %s %d",
		     WIFSIGNALED(stop_st) ? "signal" : "exit status",
		     WIFSIGNALED(stop_st) ? WTERMSIG(stop_st) : WEXITSTATUS(stop_st));
	}
	/* Every path the attack drove the daemon down, under its filter: a
	 * call the filter does not know is denied (ENOSYS) and logged, and
	 * must not happen. */
	if (h_daemon_log_has(&d, "denied (ENOSYS)"))
		fail(res, "the sandbox denied a system call the daemon made (its log names it): a "
			  "path under this load that the filter does not know");
	if (hwm > cfg.rss_budget_mb)
		fail(res, "daemon peak RSS %.0f MiB is over the budget of %.0f MiB%s", hwm,
		     cfg.rss_budget_mb,
		     atomic_load(&smp.capped) ? " (and passed the safety cap)" : "");
	if (!dead && fds_after != base.fds)
		fail(res, "daemon holds %d descriptors %.0f s after everything ended, %d before",
		     fds_after, cfg.settle, base.fds);
	/* The victims' own lines and CPU (their HELLOs, their faults) are
	 * in both phases: what the attack adds is judged. */
	if ((double)lines / wall - brate > cfg.log_budget)
		fail(res,
		     "daemon logged %.0f lines/s more during the attack than before it (budget %.0f)",
		     (double)lines / wall - brate, cfg.log_budget);
	if (a->flags & F_CPU) {
		printf("   daemon CPU with the victims stopped: %.2f before the attack, %.2f during it\n",
		       qbase, qatk);
		if (qatk - qbase > cfg.cpu_budget)
			fail(res,
			     "daemon used %.2f of a CPU, with the victims stopped, while it could not "
			     "fill the attacker's faults (budget %.2f)",
			     qatk - qbase, cfg.cpu_budget);
	}
	printf("   attacker's descriptors (USAGE, %d samples): peak %llu, budget %llu\n",
	       smp.atk_fds_samples, (unsigned long long)smp.atk_fds_peak,
	       (unsigned long long)smp.atk_fds_limit);
	/* Its descriptors are reported, not judged yet: over its budget a
	 * uid's sockets are not read while its closes wait, but a connection
	 * it opens meanwhile is accepted before its uid is known, and holds a
	 * descriptor until its close (docs/security.md, "What is left"). */
	if (a->flags & F_SERVED)
		for (int i = 0; i < NVICTIMS; i++)
			if (res->v[i].ok && res->v[i].iters[1] < 1)
				fail(res, "victim %s was not served during the attack", vlabel[i]);
	double rlim = uid_limit(extra, "ranges", 1 << 20),
	       plim = uid_limit(extra, "processes", 32768);
	/* The victims hold a few dozen of each at most. */
	if ((double)smp.peak[PROTO_STAT_RANGES] > rlim + 1000)
		fail(res,
		     "the daemon served %llu ranges at once, past the per-uid limit of %.0f: the "
		     "attacker's uid got past it",
		     (unsigned long long)smp.peak[PROTO_STAT_RANGES], rlim);
	if ((double)smp.peak[PROTO_STAT_PROCESSES] > plim + 200)
		fail(res,
		     "the daemon served %llu processes at once, past the per-uid limit of %.0f",
		     (unsigned long long)smp.peak[PROTO_STAT_PROCESSES], plim);
	judge_findings(res, aout, secret);
	if (res->failed)
		log_tail(d.log, log0, 25);
	if (cfg.keep) {
		printf("   kept: %s (daemon log %s)\n", tmp, d.log);
		d.dir[0] = '\0';
	}
	h_daemon_destroy(&d);
	free(atk.out);
	for (int i = 0; i < NVICTIMS; i++)
		free(vic[i].out);
out_tmp:
	if (notify_pid > 0) {
		kill(notify_pid, SIGTERM);
		h_reap(notify_pid, 5);
	}
	if (!cfg.keep) {
		if (a->flags & F_FDSTORE) {
			unlink(notify);
			unlink(nlog);
		}
		rmdir(tmp);
	}
	cg_remove(&cg);
	free(dargs);
	free(uargs);
	free(aargs);
	free(xargs);
	free(vargs);
	free(uvargs);
	if (res->skipped) {
		printf("RESULT attack=%s verdict=SKIP reason=\"%s\"\n", a->name, res->skip_why);
		return 77;
	}
	printf("RESULT attack=%s verdict=%s alive=%d peak_rss_mb=%.1f fds_before=%d fds_after=%d "
	       "log_lines_per_s=%.0f cpu=%.2f reasons=\"%s\"\n",
	       a->name, res->failed ? "FAIL" : "PASS", !dead, hwm, base.fds, fds_after,
	       (double)lines / wall - brate, cpu - bcpu, res->reasons);
	for (int i = 0; i < NVICTIMS; i++)
		printf("LATENCY attack=%s victim=%s map_p50_us=%.0f,%.0f map_p99_us=%.0f,%.0f "
		       "map_max_us=%.0f,%.0f fault_p50_us=%.1f,%.1f fault_p99_us=%.1f,%.1f "
		       "fault_max_us=%.0f,%.0f\n",
		       a->name, vlabel[i], res->v[i].map_p50[0], res->v[i].map_p50[1],
		       res->v[i].map_p99[0], res->v[i].map_p99[1], res->v[i].map_max[0],
		       res->v[i].map_max[1], res->v[i].fault_p50[0], res->v[i].fault_p50[1],
		       res->v[i].fault_p99[0], res->v[i].fault_p99[1], res->v[i].fault_max[0],
		       res->v[i].fault_max[1]);
	fflush(stdout);
	return res->failed ? 1 : 0;
}

/* --- the latency table ----------------------------------------------------------- */

/* The worst of the four p99 ratios (attacked / unloaded) of a row. */
static double worst_p99_ratio(const struct result *r)
{
	double w = 0;

	for (int i = 0; i < NVICTIMS; i++) {
		const struct vres *v = &r->v[i];
		if (v->map_p99[0] > 0 && v->map_p99[1] / v->map_p99[0] > w)
			w = v->map_p99[1] / v->map_p99[0];
		if (v->fault_p99[0] > 0 && v->fault_p99[1] / v->fault_p99[0] > w)
			w = v->fault_p99[1] / v->fault_p99[0];
	}
	return w;
}

/* md: a Markdown table (docs/security.md), with the worst p99 ratio. */
static void print_table(size_t n, int md)
{
	printf("\nVictim latency in microseconds, p50/p99, unloaded -> under attack (MAP: the rp_map round "
	       "trip; fault: a first touch of a missing page)\n");
	if (md)
		printf("\n| attack | result | root MAP | root fault | uid 65533 MAP | uid 65533 fault | "
		       "worst p99 ratio |\n|---|---|--:|--:|--:|--:|--:|\n");
	else {
		printf("%-17s %-6s", "attack", "result");
		for (int i = 0; i < NVICTIMS; i++)
			printf("  %-22s  %-22s", i ? "uid65533 MAP" : "root MAP",
			       i ? "uid65533 fault" : "root fault");
		printf("\n");
	}
	for (size_t k = 0; k < n; k++) {
		const struct result *r = &results[k];
		if (!r->a)
			continue;
		const char *verdict = r->skipped ? "SKIP" : r->failed ? "FAIL" : "PASS";
		if (md)
			printf("| %s | %s |", r->a->name, verdict);
		else
			printf("%-17s %-6s", r->a->name, verdict);
		for (int i = 0; i < NVICTIMS; i++) {
			const struct vres *v = &r->v[i];
			char m[64], f[64];
			snprintf(m, sizeof(m), "%.0f/%.0f -> %.0f/%.0f", v->map_p50[0],
				 v->map_p99[0], v->map_p50[1], v->map_p99[1]);
			snprintf(f, sizeof(f), "%.0f/%.0f -> %.0f/%.0f", v->fault_p50[0],
				 v->fault_p99[0], v->fault_p50[1], v->fault_p99[1]);
			if (md)
				printf(" %s | %s |", m, f);
			else
				printf("  %-22s  %-22s", m, f);
		}
		if (md)
			printf(" %.1fx |", worst_p99_ratio(r));
		printf("\n");
	}
}

/* --- main -------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: rp_tenant [options] [ATTACK...]   (default: every attack)\n"
		"  --full                the sizes of the issue (slow; RSS up to the safety cap)\n"
		"  --list                the attacks, and what each does\n"
		"  --daemon-args \"...\"   more refpaged options for every daemon (also\n"
		"                        $RP_TENANT_DAEMON_ARGS; e.g. the per-uid budgets)\n"
		"  --victim-args \"...\"   more rp_victim key=value options\n"
		"  --attack-args \"...\"   more rp_attacker key=value options (they win over the attack's)\n"
		"  --rss-budget-mb N     daemon peak VmHWM allowed (default %.0f)\n"
		"  --log-budget N        daemon log lines per second allowed during an attack (default %.0f)\n"
		"  --cpu-budget F        daemon CPU (of one CPU) allowed while it cannot fill faults\n"
		"                        (enomem; default %.2f)\n"
		"  --safety-mb N         kill the attacker when the daemon's RSS passes N MiB\n"
		"                        (default: half the machine's memory, at most 4096)\n"
		"  --nofile N            fd-exhaust: the daemon's RLIMIT_NOFILE (default 1024; --full: as is)\n"
		"  --cgroup-limit-mb N   enomem: the attacker's memory cgroup limit (default %ld)\n"
		"  --baseline S --after S --settle S   phases (defaults %.1f, %.1f, %.0f)\n"
		"  --duration S          every attack's length (default: its own)\n"
		"  --log-level LEVEL     the daemons' (default info)\n"
		"  --table               print the victims' latency table at the end (perf/tenant.sh)\n"
		"  --markdown            the same as a Markdown table (docs/security.md)\n"
		"  --keep                keep each daemon's directory and log\n"
		"  --verbose             print everything the attacker said\n",
		cfg.rss_budget_mb, cfg.log_budget, cfg.cpu_budget, cfg.cgroup_limit_mb,
		cfg.baseline, cfg.after, cfg.settle);
}

static void locate(char *out, size_t n, const char *self_dir, const char *name, const char *def)
{
	snprintf(out, n, "%s/%s", self_dir, name);
	if (access(out, X_OK) < 0)
		snprintf(out, n, "%s", def);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "full", no_argument, NULL, 'f' },
		{ "list", no_argument, NULL, 'L' },
		{ "daemon-args", required_argument, NULL, 'd' },
		{ "victim-args", required_argument, NULL, 'v' },
		{ "attack-args", required_argument, NULL, 'A' },
		{ "rss-budget-mb", required_argument, NULL, 'r' },
		{ "log-budget", required_argument, NULL, 'l' },
		{ "cpu-budget", required_argument, NULL, 'c' },
		{ "safety-mb", required_argument, NULL, 's' },
		{ "nofile", required_argument, NULL, 'n' },
		{ "cgroup-limit-mb", required_argument, NULL, 'g' },
		{ "baseline", required_argument, NULL, 'b' },
		{ "after", required_argument, NULL, 'a' },
		{ "settle", required_argument, NULL, 'S' },
		{ "duration", required_argument, NULL, 'D' },
		{ "log-level", required_argument, NULL, 'V' },
		{ "table", no_argument, NULL, 't' },
		{ "markdown", no_argument, NULL, 'M' },
		{ "keep", no_argument, NULL, 'k' },
		{ "verbose", no_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int o;

	cfg.daemon_args = getenv("RP_TENANT_DAEMON_ARGS");
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'f':
			cfg.full = 1;
			break;
		case 'L':
			for (size_t i = 0; i < NATTACKS; i++)
				printf("%-17s %s\n", attacks[i].name, attacks[i].what);
			return 0;
		case 'd':
			cfg.daemon_args = optarg;
			break;
		case 'v':
			cfg.victim_args = optarg;
			break;
		case 'A':
			cfg.attack_args = optarg;
			break;
		case 'r':
			cfg.rss_budget_mb = atof(optarg);
			break;
		case 'l':
			cfg.log_budget = atof(optarg);
			break;
		case 'c':
			cfg.cpu_budget = atof(optarg);
			break;
		case 's':
			cfg.safety_mb = atof(optarg);
			break;
		case 'n':
			cfg.nofile = (unsigned)atol(optarg);
			break;
		case 'g':
			cfg.cgroup_limit_mb = atol(optarg);
			break;
		case 'b':
			cfg.baseline = atof(optarg);
			break;
		case 'a':
			cfg.after = atof(optarg);
			break;
		case 'S':
			cfg.settle = atof(optarg);
			break;
		case 'D':
			cfg.duration = atof(optarg);
			break;
		case 'V':
			cfg.log_level = optarg;
			break;
		case 't':
			cfg.table = 1;
			break;
		case 'M':
			cfg.table = 2;
			break;
		case 'k':
			cfg.keep = 1;
			break;
		case 'x':
			cfg.verbose = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (cfg.safety_mb <= 0) {
		long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
		cfg.safety_mb = pages > 0 ? (double)pages * (double)psz / 2 / (1 << 20) : 4096;
		if (cfg.safety_mb > 4096)
			cfg.safety_mb = 4096; /* a shared machine: others need memory too */
	}
	char self[512], *slash;
	ssize_t sn = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[sn > 0 ? sn : 0] = '\0';
	if ((slash = strrchr(self, '/')))
		*slash = '\0';
	locate(victim_prog, sizeof(victim_prog), self, "rp_victim", RP_VICTIM_PATH);
	locate(attacker_prog, sizeof(attacker_prog), self, "rp_attacker", RP_ATTACKER_PATH);
	snprintf(notify_prog, sizeof(notify_prog), "%s", RP_NOTIFY_LISTEN_PATH);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	const struct attack *todo[NATTACKS];
	size_t n = 0;
	if (optind == argc) {
		for (size_t i = 0; i < NATTACKS; i++)
			todo[n++] = &attacks[i];
	}
	for (int i = optind; i < argc; i++) {
		size_t k;
		for (k = 0; k < NATTACKS && strcmp(attacks[k].name, argv[i]); k++)
			;
		if (k == NATTACKS) {
			fprintf(stderr, "rp_tenant: no attack named '%s' (--list)\n", argv[i]);
			return 2;
		}
		if (n < NATTACKS)
			todo[n++] = &attacks[k];
	}
	int failed = 0, passed = 0, skipped = 0;
	for (size_t i = 0; i < n; i++) {
		int r = run_attack(todo[i], &results[i]);
		if (r == 77) {
			skipped++;
			printf("   SKIPPED: %s\n", results[i].skip_why);
		} else if (r != 0) {
			failed++;
		} else {
			passed++;
		}
	}
	if (cfg.table)
		print_table(n, cfg.table == 2);
	printf("\ntenant: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	for (size_t i = 0; i < n; i++)
		if (results[i].failed)
			printf("  FAIL %-17s %s\n", results[i].a->name, results[i].reasons);
	if (failed)
		return 1;
	return passed ? 0 : 77;
}
