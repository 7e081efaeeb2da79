/* Clocks, rusage and the /proc readers. All of these run outside the timed
 * regions: they may allocate and make system calls freely. */
#include "bench.h"

#include <ctype.h>
#include <sched.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static double tick_ns = 1.0;
static double timer_overhead_ns;

uint64_t probe_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The cycle counter against CLOCK_MONOTONIC over 100 ms, and what an
 * empty stamp pair costs (reported, not subtracted). */
void probe_calibrate(void)
{
	uint64_t n0 = probe_now_ns(), t0 = tick_start(), n1, t1;

	do {
		n1 = probe_now_ns();
	} while (n1 - n0 < 100000000u);
	t1 = tick_end();
	tick_ns = t1 > t0 ? (double)(n1 - n0) / (double)(t1 - t0) : 1.0;
	uint64_t best = UINT64_MAX;
	for (int i = 0; i < 10000; i++) {
		uint64_t a = tick_start(), b = tick_end();
		if (b - a < best)
			best = b - a;
	}
	timer_overhead_ns = (double)best * tick_ns;
}

double probe_tick_ns(void)
{
	return tick_ns;
}

int probe_pin(pthread_t t, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(t, sizeof(set), &set);
}

void probe_ru_thread(struct ru_snap *s)
{
	struct rusage ru;

	getrusage(RUSAGE_THREAD, &ru);
	/* A fault retried after sleeping in a userfaultfd handler may be
	 * counted as major: count both kinds. */
	s->faults = ru.ru_minflt + ru.ru_majflt;
	s->nvcsw = ru.ru_nvcsw;
	s->nivcsw = ru.ru_nivcsw;
}

/* Reads a small /proc file into buf (NUL-terminated). Bytes read or -1. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return n;
}

/* The number after "key" in a "key: value" file, 0 if absent. */
static uint64_t field(const char *buf, const char *key)
{
	const char *p = strstr(buf, key);

	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static int task_add(pid_t pid, const char *tid, struct srv_snap *out)
{
	char path[96], buf[4096];

	snprintf(path, sizeof(path), "/proc/%d/task/%s/status", (int)pid, tid);
	if (read_small(path, buf, sizeof(buf)) < 0)
		return -1;
	out->csw += field(buf, "\nvoluntary_ctxt_switches:");
	out->csw += field(buf, "\nnonvoluntary_ctxt_switches:");
	/* schedstat: ns on CPU, ns waiting, timeslices. */
	snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", (int)pid, tid);
	if (read_small(path, buf, sizeof(buf)) > 0)
		out->cpu_ns += strtoull(buf, NULL, 10);
	return 0;
}

/* Context switches and CPU time of the server's tasks, summed. A task
 * that exits between two reads takes its counts with it: the daemon's
 * threads are long-lived, so this does not matter here. */
int probe_server(const struct server_ref *s, struct srv_snap *out)
{
	char dir[64], tid[24];

	memset(out, 0, sizeof(*out));
	if (s->tid) {
		snprintf(tid, sizeof(tid), "%d", (int)s->tid);
		return task_add(s->pid, tid, out);
	}
	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)s->pid);
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d));)
		if (isdigit((unsigned char)e->d_name[0]))
			task_add(s->pid, e->d_name, out);
	closedir(d);
	return 0;
}

int probe_rss(int64_t *rss_kib, int64_t *anon_kib)
{
	char buf[4096];

	if (read_small("/proc/self/smaps_rollup", buf, sizeof(buf)) < 0)
		return -1;
	*rss_kib = (int64_t)field(buf, "\nRss:");
	*anon_kib = (int64_t)field(buf, "\nAnonymous:");
	return 0;
}

/* The daemon's pid, from the credentials of a connection of our own. */
pid_t probe_peer_pid(const char *socket_path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cr = { 0 };
	socklen_t crlen = sizeof(cr);
	const char *p = socket_path ? socket_path : getenv("REFPAGED_SOCKET");

	if (!p || !*p)
		p = "/run/refpaged/refpaged.sock";
	if (strlen(p) >= sizeof(sa.sun_path))
		return 0;
	strcpy(sa.sun_path, p);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return 0;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0)
		cr.pid = 0;
	close(s);
	return cr.pid;
}

void probe_cmdline(pid_t pid, char *buf, size_t len)
{
	char path[48];

	buf[0] = 0;
	if (pid <= 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	ssize_t n = read_small(path, buf, len);
	for (ssize_t i = 0; i + 1 < n; i++)
		if (!buf[i])
			buf[i] = ' ';
}

/* The value of the first "key<spaces>: value" line, trimmed. */
static void line_value(const char *path, const char *key, char *out, size_t len)
{
	char buf[8192];

	snprintf(out, len, "unknown");
	if (read_small(path, buf, sizeof(buf)) < 0)
		return;
	const char *p = strstr(buf, key);
	if (!p || !(p = strchr(p, ':')))
		return;
	p += strspn(p + 1, " \t") + 1;
	snprintf(out, len, "%.*s", (int)strcspn(p, "\n"), p);
}

static void first_line(const char *path, char *out, size_t len)
{
	char buf[256];

	snprintf(out, len, "unknown");
	if (read_small(path, buf, sizeof(buf)) > 0)
		snprintf(out, len, "%.*s", (int)strcspn(buf, "\n"), buf);
}

void probe_machine(struct machine *mi)
{
	struct utsname u;
	time_t now = time(NULL);
	struct tm tm;

	memset(mi, 0, sizeof(*mi));
	mi->nproc = sysconf(_SC_NPROCESSORS_ONLN);
	mi->uid = (unsigned)getuid();
	if (uname(&u) == 0)
		snprintf(mi->kernel, sizeof(mi->kernel), "%s %s %s %s", u.sysname, u.release,
			 u.version, u.machine);
	line_value("/proc/cpuinfo", "model name", mi->cpu, sizeof(mi->cpu));
	gmtime_r(&now, &tm);
	strftime(mi->date, sizeof(mi->date), "%Y-%m-%dT%H:%M:%SZ", &tm);
	first_line("/sys/kernel/mm/transparent_hugepage/enabled", mi->thp, sizeof(mi->thp));
	first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource",
		   mi->clocksource, sizeof(mi->clocksource));
	mi->tick_ghz = 1.0 / tick_ns;
	mi->timer_overhead_ns = timer_overhead_ns;
}
