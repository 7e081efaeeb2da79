/* The fault loop's switches on refpaged's command line (--batch, --drain,
 * --coalesce, --dontwake):
 *   - every bad value exits 2, names the option and starts nothing (no
 *     socket is bound);
 *   - good values, alone and together, are logged at start-up and serve
 *     threads of a client the right bytes (template and zero pages, reads
 *     and writes);
 *   - with the daemon stopped, several threads fault on one page; once it
 *     goes on, their messages come in one batch: faults_coalesced counts
 *     all but the first with --coalesce on (none with it off: each is a
 *     fill that finds the page there), and batch_wakes counts one wake
 *     with --dontwake on (none with it off).
 * Every test starts its own daemon, so counter deltas are exact. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NPAGES 256u
#define NTHREADS 4
/* Threads faulting on one page at once: fewer than one batch. */
#define SAME_PAGE_THREADS 8

/* --- bad values ----------------------------------------------------------------------- */

struct bad {
	const char *opt, *val; /* val NULL: the option is last, without a value */
};

static const struct bad bad_values[] = {
	{ "--batch", "0" },       { "--batch", "65" },
	{ "--batch", "" },        { "--batch", "yes" },
	{ "--batch", "-1" },      { "--batch", "8x" },
	{ "--batch", "+8" },      { "--batch", " 8" },
	{ "--batch", "0x10" },    { "--batch", "18446744073709551617" },
	{ "--batch", NULL },      { "--drain", "" },
	{ "--drain", "yes" },     { "--drain", "-1" },
	{ "--drain", "onx" },     { "--drain", "ON" },
	{ "--drain", "1" },       { "--drain", "off " },
	{ "--drain", NULL },      { "--coalesce", "" },
	{ "--coalesce", "yes" },  { "--coalesce", "-1" },
	{ "--coalesce", "offx" }, { "--coalesce", "0" },
	{ "--coalesce", " on" },  { "--coalesce", NULL },
	{ "--dontwake", "" },     { "--dontwake", "yes" },
	{ "--dontwake", "-1" },   { "--dontwake", "on1" },
	{ "--dontwake", "Off" },  { "--dontwake", "true" },
	{ "--dontwake", NULL },
};

static void test_bad_values(void **state)
{
	char dir[] = "/tmp/rp-itest-cli-XXXXXX", sock[64], out[4096];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	for (size_t i = 0; i < ARRAY_LEN(bad_values); i++) {
		const struct bad *b = &bad_values[i];
		const char *argv[] = { h_daemon_prog(), "--socket", sock, b->opt, b->val, NULL };
		int st = h_run(argv, 0, H_DEADLINE_S, out, sizeof(out));
		struct stat sb;
		int named = strstr(out, b->opt) != NULL, bound = stat(sock, &sb) == 0;

		if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 2 || !named || bound)
			fprintf(stderr, "%s '%s': status %#x, %s, socket %s; said:\n%s\n", b->opt,
				b->val ? b->val : "(none)", st, named ? "named" : "not named",
				bound ? "bound" : "not bound", out);
		assert_true(st != -1 && WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 2);
		assert_true(named);
		assert_false(bound);
		assert_null(strstr(out, "ready:"));
	}
	assert_int_equal(rmdir(dir), 0);
}

/* --- good values ---------------------------------------------------------------------- */

struct run {
	uint8_t *pat, *zero; /* NPAGES each: template 0xAA and the zero template */
	int idx;
	int bad; /* first failed check, 0 if none */
};

/* Every thread reads all of both mappings (faults on the same pages as
 * the others, at once), then writes its own stripe and reads it back. */
static void *toucher(void *arg)
{
	struct run *r = arg;

	for (unsigned k = 0; k < NPAGES; k++) {
		unsigned p = (k + (unsigned)r->idx * 37) % NPAGES;
		/* The halves no thread writes. */
		if (r->pat[p * PAGE + PAGE / 2 + 100] != 0xAA || r->zero[p * PAGE + 7] != 0) {
			r->bad = 1;
			return NULL;
		}
	}
	for (unsigned p = (unsigned)r->idx; p < NPAGES; p += NTHREADS) {
		memset(r->pat + p * PAGE, 0x10 + r->idx, PAGE / 2);
		memset(r->zero + p * PAGE + PAGE / 2, 0x20 + r->idx, PAGE / 2);
	}
	return NULL;
}

/* A thread left waiting in a fault fails the test instead of hanging it. */
static int join_within(pthread_t t)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)H_DEADLINE_S;
	int r = pthread_timedjoin_np(t, NULL, &ts);
	if (r)
		fprintf(stderr, "a faulting thread did not finish: %s\n", strerror(r));
	return r;
}

struct log_wait {
	const struct h_daemon *d;
	const char *line;
};

static int log_has(void *arg)
{
	const struct log_wait *lw = arg;
	return h_daemon_log_has(lw->d, lw->line);
}

/* A daemon with args serves NTHREADS threads right, and says at start-up
 * that it runs with the switches in line. */
static void serve_with(const char *const *args, const char *line)
{
	struct h_daemon d;
	rp_client *c = NULL;
	uint32_t pat, zero;

	assert_int_equal(h_daemon_start_args(&d, args), 0);
	struct log_wait lw = { &d, line };
	if (h_wait_until(log_has, &lw, H_DEADLINE_S) < 0) {
		fprintf(stderr, "no '%s' in the log\n", line);
		h_daemon_dump_log(&d, 0);
		fail();
	}
	assert_int_equal(rp_connect_opts(d.sock, RP_CONNECT_UFFD, &c), 0);
	assert_int_equal(rp_template_fill(c, 0xAA, &pat), 0);
	assert_int_equal(rp_template_fill(c, 0x00, &zero), 0);
	uint8_t *a = rp_map(c, NULL, NPAGES * PAGE, RW, 0, pat);
	uint8_t *z = rp_map(c, NULL, NPAGES * PAGE, RW, 0, zero);
	assert_true(a != MAP_FAILED && z != MAP_FAILED);

	pthread_t t[NTHREADS];
	struct run r[NTHREADS];
	for (int i = 0; i < NTHREADS; i++) {
		r[i] = (struct run){ a, z, i, 0 };
		assert_int_equal(pthread_create(&t[i], NULL, toucher, &r[i]), 0);
	}
	for (int i = 0; i < NTHREADS; i++) {
		assert_int_equal(join_within(t[i]), 0);
		assert_int_equal(r[i].bad, 0);
	}
	for (unsigned p = 0; p < NPAGES; p++) {
		uint8_t who = (uint8_t)(p % NTHREADS);
		assert_int_equal(h_first_not(a + p * PAGE, PAGE / 2, 0x10 + who), -1);
		assert_int_equal(h_first_not(a + p * PAGE + PAGE / 2, PAGE / 2, 0xAA), -1);
		assert_int_equal(h_first_not(z + p * PAGE, PAGE / 2, 0), -1);
		assert_int_equal(h_first_not(z + p * PAGE + PAGE / 2, PAGE / 2, 0x20 + who), -1);
	}
	struct h_stats s;
	assert_int_equal(h_stats_read(c, &s), 0);
	assert_int_equal(h_stat(&s, "unknown_faults"), 0);
	assert_int_equal(h_stat(&s, "err_other"), 0);
	if (!strstr(line, "dontwake on"))
		assert_int_equal(h_stat(&s, "batch_wakes"), 0);
	assert_int_equal(rp_unmap(c, a, NPAGES * PAGE), 0);
	assert_int_equal(rp_unmap(c, z, NPAGES * PAGE), 0);
	rp_disconnect(c);
	assert_int_equal(h_daemon_destroy(&d), 0);
}

static void test_defaults(void **state)
{
	(void)state;
	serve_with(NULL, "batch 64, drain on, coalesce on, dontwake off");
}

static void test_defaults_spelled_out(void **state)
{
	static const char *const args[] = { "--batch", "64",         "--drain", "on", "--coalesce",
					    "on",      "--dontwake", "off",     NULL };
	(void)state;
	serve_with(args, "batch 64, drain on, coalesce on, dontwake off");
}

static void test_all_switched(void **state)
{
	static const char *const args[] = { "--batch", "1",          "--drain", "off", "--coalesce",
					    "off",     "--dontwake", "on",      NULL };
	(void)state;
	serve_with(args, "batch 1, drain off, coalesce off, dontwake on");
}

static void test_batch_only(void **state)
{
	static const char *const args[] = { "--batch=3", NULL };
	(void)state;
	serve_with(args, "batch 3, drain on, coalesce on, dontwake off");
}

static void test_drain_off(void **state)
{
	static const char *const args[] = { "--drain", "off", "--batch", "2", NULL };
	(void)state;
	serve_with(args, "batch 2, drain off, coalesce on, dontwake off");
}

static void test_coalesce_off(void **state)
{
	static const char *const args[] = { "--coalesce=off", NULL };
	(void)state;
	serve_with(args, "batch 64, drain on, coalesce off, dontwake off");
}

static void test_dontwake_on(void **state)
{
	static const char *const args[] = { "--dontwake", "on", "--fault-around", "1", NULL };
	(void)state;
	serve_with(args, "batch 64, drain on, coalesce on, dontwake on");
}

static void test_dontwake_small_batches(void **state)
{
	static const char *const args[] = { "--dontwake", "on",  "--batch", "5",
					    "--drain",    "off", NULL };
	(void)state;
	serve_with(args, "batch 5, drain off, coalesce on, dontwake on");
}

/* --- counters ------------------------------------------------------------------------- */

/* The state letter of a thread (/proc/PID/task/TID/stat), or 0. */
static char task_state(pid_t pid, pid_t tid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* the name may hold anything */
	return p && p[1] == ' ' ? p[2] : 0;
}

/* Every thread of the daemon is stopped: it reads nothing meanwhile. */
static int daemon_stopped(void *arg)
{
	pid_t pid = *(pid_t *)arg;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return 0;
	int all = 1;
	for (struct dirent *e; (e = readdir(dir));) {
		if (e->d_name[0] == '.')
			continue;
		char s = task_state(pid, (pid_t)atoi(e->d_name));
		if (s != 'T' && s != 't')
			all = 0;
	}
	closedir(dir);
	return all;
}

struct same_page {
	volatile uint8_t *page;
	_Atomic pid_t tid; /* set just before the fault */
	uint8_t seen;
};

static void *fault_once(void *arg)
{
	struct same_page *s = arg;

	atomic_store(&s->tid, (pid_t)syscall(SYS_gettid));
	s->seen = *s->page;
	return NULL;
}

/* Every thread is asleep in its fault: its message is queued. */
static int all_waiting(void *arg)
{
	struct same_page *s = arg;
	for (int i = 0; i < SAME_PAGE_THREADS; i++) {
		pid_t tid = atomic_load(&s[i].tid);
		if (!tid || task_state(getpid(), tid) != 'S')
			return 0;
	}
	return 1;
}

/* SAME_PAGE_THREADS threads fault on one untouched page while the daemon
 * is stopped; the counters must move by exactly what the switches say. */
static void same_page(const char *const *args, uint64_t coalesced, uint64_t eexist, uint64_t wakes)
{
	struct h_daemon d;
	rp_client *c = NULL;
	uint32_t id;
	struct h_stats s0;

	assert_int_equal(h_daemon_start_args(&d, args), 0);
	assert_int_equal(rp_connect_opts(d.sock, RP_CONNECT_UFFD, &c), 0);
	assert_int_equal(rp_template_fill(c, 0xAA, &id), 0);
	uint8_t *a = rp_map(c, NULL, 16 * PAGE, RW, 0, id);
	assert_true(a != MAP_FAILED);
	assert_int_equal(h_stats_read(c, &s0), 0);

	assert_int_equal(kill(d.pid, SIGSTOP), 0);
	if (h_wait_until(daemon_stopped, &d.pid, H_DEADLINE_S) < 0) {
		kill(d.pid, SIGCONT);
		fail_msg("refpaged did not stop");
	}
	pthread_t t[SAME_PAGE_THREADS];
	struct same_page sp[SAME_PAGE_THREADS];
	for (int i = 0; i < SAME_PAGE_THREADS; i++) {
		sp[i].page = a + 5 * PAGE + 64 * (unsigned)i;
		atomic_store(&sp[i].tid, 0);
		sp[i].seen = 0;
		assert_int_equal(pthread_create(&t[i], NULL, fault_once, &sp[i]), 0);
	}
	int queued = h_wait_until(all_waiting, sp, H_DEADLINE_S);
	assert_int_equal(kill(d.pid, SIGCONT), 0);
	for (int i = 0; i < SAME_PAGE_THREADS; i++) {
		assert_int_equal(join_within(t[i]), 0);
		assert_int_equal(sp[i].seen, 0xAA);
	}
	assert_int_equal(queued, 0);
	struct h_want w[] = {
		{ "faults", h_stat(&s0, "faults") + SAME_PAGE_THREADS },
		{ "faults_coalesced", h_stat(&s0, "faults_coalesced") + coalesced },
		{ "err_eexist", h_stat(&s0, "err_eexist") + eexist },
		{ "batch_wakes", h_stat(&s0, "batch_wakes") + wakes },
		{ "pages_copied", h_stat(&s0, "pages_copied") + 1 },
	};
	if (h_wait_stats(c, w, (int)ARRAY_LEN(w), H_DEADLINE_S) < 0) {
		h_daemon_dump_log(&d, 0);
		fail();
	}
	assert_int_equal(h_first_not(a + 5 * PAGE, PAGE, 0xAA), -1);
	assert_int_equal(rp_unmap(c, a, 16 * PAGE), 0);
	rp_disconnect(c);
	assert_int_equal(h_daemon_destroy(&d), 0);
}

static void test_coalesced(void **state)
{
	static const char *const args[] = { "--workers", "1", NULL };
	(void)state;
	same_page(args, SAME_PAGE_THREADS - 1, 0, 0);
}

static void test_coalesced_dontwake(void **state)
{
	static const char *const args[] = { "--workers", "1", "--dontwake", "on", NULL };
	(void)state;
	same_page(args, SAME_PAGE_THREADS - 1, 0, 1);
}

static void test_not_coalesced(void **state)
{
	static const char *const args[] = { "--workers", "1", "--coalesce", "off", NULL };
	(void)state;
	same_page(args, 0, SAME_PAGE_THREADS - 1, 0);
}

static void test_not_coalesced_dontwake(void **state)
{
	static const char *const args[] = { "--workers",  "1",  "--coalesce", "off",
					    "--dontwake", "on", NULL };
	(void)state;
	same_page(args, 0, SAME_PAGE_THREADS - 1, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_defaults_spelled_out),
		cmocka_unit_test(test_all_switched),
		cmocka_unit_test(test_batch_only),
		cmocka_unit_test(test_drain_off),
		cmocka_unit_test(test_coalesce_off),
		cmocka_unit_test(test_dontwake_on),
		cmocka_unit_test(test_dontwake_small_batches),
		cmocka_unit_test(test_coalesced),
		cmocka_unit_test(test_coalesced_dontwake),
		cmocka_unit_test(test_not_coalesced),
		cmocka_unit_test(test_not_coalesced_dontwake),
	};
	char why[256];

	if (!h_uffd_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
