/* fork-latency: what refpaged adds to fork().
 *
 * The parent's fork() blocks until the daemon has read the UFFD_EVENT_FORK
 * message for the child (DESIGN.md), so a busy or slow daemon shows up
 * directly in fork latency. This times fork() in a process holding MIB of
 * refpage mappings against the same process holding as much plain
 * anonymous memory, in one run, and prints the medians and their ratio.
 *
 *   fork-latency [--socket PATH] [--mib N] [--reps N] [--touch none|half|all]
 *                [--busy N] [--json]
 * --busy N: N extra threads keep faulting in the mapping while we fork, so
 * the daemon is busy serving them when the fork event arrives. */

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <refpage.h>

#include "timing.h"

#define PAGE 4096u

struct opts {
	const char *sock;
	size_t mib;
	int reps;
	int touch_pct;
	int busy;
	int json;
};

struct busy {
	pthread_t th;
	uint8_t *p;
	size_t len;
	atomic_int *stop;
	int idx;
};

/* Fault pages over and over: write then MADV_DONTNEED so they fault again. */
static void *busy_main(void *arg)
{
	struct busy *b = arg;
	size_t chunk = 64 * PAGE, off = (size_t)b->idx * chunk * 16 % (b->len - chunk);

	while (!atomic_load(b->stop)) {
		for (size_t i = 0; i < chunk; i += PAGE)
			b->p[off + i] = 1;
		madvise(b->p + off, chunk, MADV_DONTNEED);
	}
	return NULL;
}

/* Median fork() latency in ns over o->reps forks of a process holding p. */
static double time_forks(const struct opts *o, uint8_t *p, size_t len)
{
	double *t = calloc((size_t)o->reps, sizeof(*t));
	atomic_int stop = 0;
	struct busy b[64];
	int nb = o->busy > 64 ? 64 : o->busy;

	for (int i = 0; i < nb; i++) {
		b[i] = (struct busy){ .p = p, .len = len, .stop = &stop, .idx = i };
		pthread_create(&b[i].th, NULL, busy_main, &b[i]);
	}
	for (int i = 0; i < o->reps; i++) {
		double t0 = timing_now_ns();
		pid_t pid = fork();
		if (pid == 0)
			_exit(0);
		t[i] = timing_now_ns() - t0;
		waitpid(pid, NULL, 0);
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < nb; i++)
		pthread_join(b[i].th, NULL);
	qsort(t, (size_t)o->reps, sizeof(*t), timing_cmp_double);
	double med = t[o->reps / 2];
	free(t);
	return med;
}

static void touch(uint8_t *p, size_t len, int pct)
{
	size_t n = len / 100 * (size_t)pct;
	for (size_t i = 0; i < n; i += PAGE)
		p[i] = 0x11;
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "reps", required_argument, NULL, 'r' },
		{ "touch", required_argument, NULL, 't' },
		{ "busy", required_argument, NULL, 'b' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			o->sock = optarg;
			break;
		case 'm':
			o->mib = strtoul(optarg, NULL, 10);
			break;
		case 'r':
			o->reps = atoi(optarg);
			break;
		case 'b':
			o->busy = atoi(optarg);
			break;
		case 'j':
			o->json = 1;
			break;
		case 't':
			o->touch_pct = !strcmp(optarg, "all")    ? 100
				       : !strcmp(optarg, "half") ? 50
				       : !strcmp(optarg, "none") ? 0
								 : -1;
			break;
		default:
			exit(2);
		}
	}
	if (!o->mib || o->reps < 1 || o->touch_pct < 0 || o->busy < 0) {
		fprintf(stderr, "fork-latency: bad arguments (see the comment at the top of "
				"perf/fork-latency.c)\n");
		exit(2);
	}
}

/* In a fresh process holding only this one mapping (a refpage VMA
 * anywhere in the process makes every fork send an event): map, touch,
 * time forks, report the median through a pipe. */
static double subject(const struct opts *o, int refpaged)
{
	int fds[2];
	double med = -1;

	if (pipe(fds) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		size_t len = o->mib << 20;
		rp_client *c = NULL;
		uint32_t id;
		uint8_t *p;
		if (refpaged) {
			int r = rp_connect_opts(o->sock, RP_CONNECT_UFFD, &c);
			if (r < 0 || (r = rp_template_fill(c, 0xAA, &id)) < 0) {
				fprintf(stderr, "fork-latency: refpaged: %s\n", strerror(-r));
				_exit(1);
			}
			p = rp_map(c, NULL, len, PROT_READ | PROT_WRITE, 0, id);
		} else {
			p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
				 0);
		}
		if (p == MAP_FAILED)
			_exit(1);
		touch(p, len, o->touch_pct);
		med = time_forks(o, p, len);
		_exit(write(fds[1], &med, sizeof(med)) == sizeof(med) ? 0 : 1);
	}
	close(fds[1]);
	if (pid < 0 || read(fds[0], &med, sizeof(med)) != sizeof(med))
		med = -1;
	close(fds[0]);
	waitpid(pid, NULL, 0);
	return med;
}

#define ROUNDS 5

int main(int argc, char **argv)
{
	struct opts o = { .mib = 1024, .reps = 101, .touch_pct = 0 };
	double a[ROUNDS], r[ROUNDS];

	parse(argc, argv, &o);
	/* Alternate the two, so that drift on a noisy machine hits both. */
	for (int i = 0; i < ROUNDS; i++) {
		a[i] = subject(&o, 0);
		r[i] = subject(&o, 1);
		if (a[i] < 0 || r[i] < 0) {
			fprintf(stderr, "fork-latency: a measurement failed\n");
			return 1;
		}
	}
	qsort(a, ROUNDS, sizeof(double), timing_cmp_double);
	qsort(r, ROUNDS, sizeof(double), timing_cmp_double);
	double a1 = a[ROUNDS / 2], r1 = r[ROUNDS / 2];
	if (o.json)
		printf("{\"mib\": %zu, \"touch_pct\": %d, \"busy_threads\": %d, \"reps\": %d, "
		       "\"rounds\": %d, \"anon_fork_ns\": %.0f, \"refpaged_fork_ns\": %.0f, "
		       "\"ratio\": %.3f}\n",
		       o.mib, o.touch_pct, o.busy, o.reps, ROUNDS, a1, r1, r1 / a1);
	else
		printf("fork() with %zu MiB mapped (%d%% touched, %d busy threads),\n"
		       "median of %d rounds of %d forks each:\n"
		       "  anonymous  %10.0f ns\n  refpaged   %10.0f ns\n  ratio      %10.2f\n",
		       o.mib, o.touch_pct, o.busy, ROUNDS, o.reps, a1, r1, r1 / a1);
	return 0;
}
