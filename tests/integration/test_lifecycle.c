/* Clients and daemon coming and going, and clients of another uid:
 *   - uid 65534 (user-mode-only uffd) gets the basic and fork semantics;
 *   - a client SIGKILLed while faulting gives every resource back;
 *   - a SIGKILLed daemon leaves no client hanging (semantic 7), and a
 *     restarted one serves the same client again;
 *   - the daemon's exec helper (its only child) dying does not take the
 *     sandboxed daemon with it.
 * Every test starts its own daemon: baselines are exact. */
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "tutil.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct fx {
	struct h_daemon d;
	rp_client *c; /* this process's own connection, for STATS */
	int ok;
};

static int test_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	if (!fx || h_session_open(&fx->d, NULL, &fx->c, 0, NULL) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int test_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx)
		return 0;
	int r = h_session_close(&fx->d, fx->c, fx->ok, 0);
	free(fx);
	*state = NULL;
	return r;
}

/* The daemon at rest with only our own connection: what everything must
 * come back to. */
struct baseline {
	int fds;
	struct h_want w[5];
};

static void take_baseline(struct fx *fx, struct baseline *b)
{
	/* The harness's start-up probe connection may still be closing. */
	struct h_want idle[] = { { "clients", 1 },
				 { "processes", 1 },
				 { "ranges", 0 },
				 { "bytes_registered", 0 },
				 { "templates", 0 } };
	uint32_t id;

	/* A fault answered: a worker has taken our connection's uffd and
	 * whatever it opens for it (an exit watch), so the count is final. */
	assert_int_equal(rp_template_fill(fx->c, 0xAA, &id), 0);
	uint8_t *p = rp_map(fx->c, NULL, PAGE, RW, 0, id);
	assert_ptr_not_equal(p, MAP_FAILED);
	assert_int_equal(p[0], 0xAA);
	assert_int_equal(rp_unmap(fx->c, p, PAGE), 0);
	assert_int_equal(rp_template_release(fx->c, id), 0);
	assert_int_equal(h_wait_stats(fx->c, idle, 5, H_DEADLINE_S), 0);
	memcpy(b->w, idle, sizeof(idle));
	b->fds = h_count_fds(fx->d.pid);
	assert_true(b->fds > 0);
}

static void back_to_baseline(struct fx *fx, const struct baseline *b, const char *when)
{
	if (h_wait_stats(fx->c, b->w, 5, H_DEADLINE_S) < 0)
		fail_msg("daemon STATS not back to the baseline %s", when);
	if (h_wait_fds(fx->d.pid, b->fds, H_DEADLINE_S) < 0)
		fail_msg("daemon fds not back to the baseline %s", when);
}

/* --- uid 65534 ------------------------------------------------------------ */

static void run_prog(struct fx *fx, const char *cmd, int as_nobody, const char *want)
{
	const char *argv[] = { h_client_prog(), cmd, fx->d.sock, NULL };
	char out[8192];
	int st = h_run(argv, as_nobody, H_DEADLINE_S * 2, out, sizeof(out));

	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !strstr(out, want))
		fail_msg("%s %s as uid %d: status %#x, output:\n%s", argv[0], cmd,
			 as_nobody ? H_NOBODY : (int)getuid(), st, out);
}

static void skip_unless_nobody(void)
{
	char why[160];

	if (!h_can_run_as_nobody(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		skip();
	}
}

/* With vm.unprivileged_userfaultfd = 0 and no access to /dev/userfaultfd,
 * uid 65534 can only make a user-mode-only uffd. */
static int nobody_gets_umo(void)
{
	struct stat st;
	int dev_ok = stat("/dev/userfaultfd", &st) == 0 &&
		     (st.st_mode & (S_IROTH | S_IWOTH)) == (S_IROTH | S_IWOTH);

	return tu_read_int("/proc/sys/vm/unprivileged_userfaultfd") == 0 && !dev_ok;
}

static void test_nobody_basic(void **state)
{
	struct fx *fx = *state;
	char want[64];

	struct baseline b;

	skip_unless_nobody();
	take_baseline(fx, &b);
	run_prog(fx, "basic", 0, "ok basic uid=0 ");
	back_to_baseline(fx, &b, "after the root client exited");
	int umo = nobody_gets_umo();
	snprintf(want, sizeof(want), "ok basic uid=%d umo=%s", H_NOBODY, umo ? "1" : "");
	h_daemon_mark_log(&fx->d);
	run_prog(fx, "basic", 1, want);
	back_to_baseline(fx, &b, "after the uid 65534 client exited");
	/* The daemon took the user-mode-only uffd through its handshake. */
	assert_true(h_daemon_log_has(&fx->d, "uid 65534: client up"));
	if (umo)
		assert_true(h_daemon_log_has(&fx->d, "(user-mode only)"));
	fx->ok = 1;
}

static void test_nobody_fork(void **state)
{
	struct fx *fx = *state;

	struct baseline b;

	skip_unless_nobody();
	take_baseline(fx, &b);
	/* The fork children and their own connections are reclaimed too. */
	run_prog(fx, "fork", 0, "ok fork uid=0");
	back_to_baseline(fx, &b, "after the root client and its children exited");
	run_prog(fx, "fork", 1, "ok fork uid=65534");
	back_to_baseline(fx, &b, "after the uid 65534 client and its children exited");
	fx->ok = 1;
}

/* --- a client killed mid-fault ------------------------------------------------ */

struct kill_row {
	const char *name;
	int as_nobody;
	const char *threads;
	int fork; /* the client also has a fork child faulting */
};

static const struct kill_row kill_rows[] = {
	{ "root, 4 threads", 0, "4", 0 },
	{ "root, 2 threads + fork child", 0, "2", 1 },
	{ "uid 65534, 4 threads", 1, "4", 0 },
};

static void test_client_killed(void **state)
{
	struct fx *fx = *state;
	struct baseline b;
	struct h_stats s;
	char line[128];
	int out;

	take_baseline(fx, &b);
	for (size_t k = 0; k < ARRAY_LEN(kill_rows); k++) {
		const struct kill_row *row = &kill_rows[k];
		const char *argv[] = { h_client_prog(), "fault-forever",           fx->d.sock,
				       row->threads,    row->fork ? "fork" : NULL, NULL };
		char nobody_why[160];

		if (row->as_nobody && !h_can_run_as_nobody(nobody_why, sizeof(nobody_why))) {
			printf("row '%s' skipped: %s\n", row->name, nobody_why);
			continue;
		}
		assert_int_equal(h_stats_read(fx->c, &s), 0);
		uint64_t faults0 = h_stat(&s, "faults");
		pid_t pid = h_spawn(argv, row->as_nobody, &out);
		assert_true(pid > 0);
		for (int i = 0; i < 1 + row->fork; i++)
			if (h_read_line(out, line, sizeof(line), H_DEADLINE_S) < 0 ||
			    strncmp(line, "ready", 5)) {
				kill(-pid, SIGKILL);
				h_reap(pid, H_DEADLINE_S);
				fail_msg("%s: client not faulting: '%s'", row->name, line);
			}
		assert_int_equal(h_stats_read(fx->c, &s), 0);
		assert_true(h_stat(&s, "faults") > faults0);
		assert_int_equal(h_stat(&s, "processes"), 2 + (uint64_t)row->fork);
		/* Mid-fault: its threads never stop faulting. */
		assert_int_equal(kill(-pid, SIGKILL), 0);
		int st = h_reap(pid, H_DEADLINE_S);
		assert_true(st != -1 && WIFSIGNALED(st));
		close(out);
		char when[96];
		snprintf(when, sizeof(when), "after SIGKILL of the client (%s)", row->name);
		back_to_baseline(fx, &b, when);
	}
	assert_true(h_daemon_alive(&fx->d));
	fx->ok = 1;
}

/* --- the daemon killed ---------------------------------------------------------- */

#define DK_PAGES 4096
#define DK_WRITTEN 64     /* [0, 64): written before the kill */
#define DK_FAULT_END 2048 /* [64, 2048): faulted by the threads */
#define DK_THREADS 4
/* [2048 + 64, 4096): never touched before the kill. The gap: a fill
 * window of fault-around (at most 64 pages) may run past the last page
 * the threads fault. */
#define DK_UNTOUCHED (DK_FAULT_END + 64)

struct dk {
	rp_client *c;
	uint8_t *p;
	uint8_t *other; /* a second mapping, never touched before the kill */
	atomic_int stop;
	atomic_int dead_seen; /* set once rp_alive() said 0 */
	atomic_ulong reads;
	atomic_int zero_after[DK_THREADS]; /* zero pages read after dead_seen */
	atomic_int bad;
	char why[160];
};

struct dk_arg {
	struct dk *dk;
	int idx;
};

/* Faults its share of [64, 2048) over and over: drop, read. Before the
 * kill a page reads 0xAA; after it, 0xAA (already filled) or zeros; never
 * anything else, never a mix within a page. */
static void *dk_thread(void *arg)
{
	struct dk_arg *a = arg;
	struct dk *dk = a->dk;
	size_t per = (DK_FAULT_END - DK_WRITTEN) / DK_THREADS;
	uint8_t *base = dk->p + (DK_WRITTEN + (size_t)a->idx * per) * PAGE;

	while (!atomic_load(&dk->stop)) {
		int dead = atomic_load(&dk->dead_seen);
		madvise(base, per * PAGE, MADV_DONTNEED);
		for (size_t i = 0; i < per; i++) {
			uint8_t b0 = base[i * PAGE];
			long off = h_first_not(base + i * PAGE, PAGE, b0);
			if (off >= 0 || (b0 != 0xAA && b0 != 0)) {
				if (atomic_fetch_add(&dk->bad, 1) == 0)
					snprintf(dk->why, sizeof(dk->why),
						 "thread %d page %zu: byte %ld differs from %#x",
						 a->idx, i, off, b0);
			}
			if (b0 == 0 && dead)
				atomic_fetch_add(&dk->zero_after[a->idx], 1);
			atomic_fetch_add(&dk->reads, 1);
		}
	}
	return NULL;
}

static int reads_flowing(void *arg)
{
	return atomic_load(&((struct dk *)arg)->reads) > 2 * DK_FAULT_END;
}

static int not_alive(void *arg)
{
	return rp_alive(((struct dk *)arg)->c) == 0;
}

/* Every thread has read zeros since the daemon died: none is stuck. */
static int all_see_zeros(void *arg)
{
	struct dk *dk = arg;

	for (int i = 0; i < DK_THREADS; i++)
		if (atomic_load(&dk->zero_after[i]) == 0)
			return 0;
	return 1;
}

static void join_all(pthread_t *th, int n)
{
	for (int i = 0; i < n; i++) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)H_DEADLINE_S;
		int r = pthread_timedjoin_np(th[i], NULL, &ts);
		if (r)
			fail_msg("faulting thread %d stuck after the daemon died: %s", i,
				 strerror(r));
	}
}

static void dk_start(struct fx *fx, struct dk *dk, uint32_t *aa, uint32_t *idc, uint8_t *tp)
{
	dk->c = fx->c;
	assert_int_equal(rp_template_fill(dk->c, 0xAA, aa), 0);
	h_fill_page(tp, 12);
	assert_int_equal(rp_template_create(dk->c, tp, idc), 0);
	dk->p = rp_map(dk->c, NULL, DK_PAGES * PAGE, RW, 0, *aa);
	assert_ptr_not_equal(dk->p, MAP_FAILED);
	dk->other = rp_map(dk->c, NULL, 64 * PAGE, RW, 0, *idc);
	assert_ptr_not_equal(dk->other, MAP_FAILED);
	for (size_t i = 0; i < DK_WRITTEN; i++)
		memset(dk->p + i * PAGE, (int)(0x10 + i), PAGE);
}

static void dk_after_death(struct dk *dk)
{
	for (size_t i = 0; i < DK_WRITTEN; i++)
		if (h_first_not(dk->p + i * PAGE, PAGE, (uint8_t)(0x10 + i)) >= 0)
			fail_msg("page %zu written before the kill lost its data", i);
	for (size_t i = DK_UNTOUCHED; i < DK_PAGES; i++)
		if (h_first_not(dk->p + i * PAGE, PAGE, 0) >= 0)
			fail_msg("untouched page %zu does not read zero without the daemon", i);
	for (size_t i = 0; i < 64; i++)
		if (h_first_not(dk->other + i * PAGE, PAGE, 0) >= 0)
			fail_msg("page %zu of an untouched mapping does not read zero", i);
	/* Writes still work: it is ordinary anonymous memory now. */
	memset(dk->p + DK_UNTOUCHED * PAGE, 0x42, PAGE);
	assert_int_equal(h_first_not(dk->p + DK_UNTOUCHED * PAGE, PAGE, 0x42), -1);
}

static void test_daemon_killed(void **state)
{
	struct fx *fx = *state;
	/* Leaked if a thread is stuck: it still uses dk then. */
	struct dk *dk = calloc(1, sizeof(*dk));
	struct dk_arg *args = calloc(DK_THREADS, sizeof(*args));
	pthread_t th[DK_THREADS];
	uint8_t tp[PAGE];
	uint32_t aa, idc, id;

	assert_non_null(dk);
	assert_non_null(args);
	dk_start(fx, dk, &aa, &idc, tp);
	for (int i = 0; i < DK_THREADS; i++) {
		args[i] = (struct dk_arg){ dk, i };
		assert_int_equal(pthread_create(&th[i], NULL, dk_thread, &args[i]), 0);
	}
	assert_int_equal(h_wait_until(reads_flowing, dk, H_DEADLINE_S), 0);
	assert_int_equal(rp_alive(dk->c), 1);

	h_daemon_kill(&fx->d);
	/* The library notices by itself, without a call failing first. */
	if (h_wait_until(not_alive, dk, H_DEADLINE_S) < 0) {
		atomic_store(&dk->stop, 1);
		join_all(th, DK_THREADS);
		fail_msg("rp_alive() still 1 after the daemon was killed");
	}
	atomic_store(&dk->dead_seen, 1);
	int zeros = h_wait_until(all_see_zeros, dk, H_DEADLINE_S);
	atomic_store(&dk->stop, 1);
	join_all(th, DK_THREADS);
	if (zeros < 0)
		fail_msg("some faulting thread read no zero page after the daemon died");
	if (atomic_load(&dk->bad))
		fail_msg("%d bad pages, first: %s", atomic_load(&dk->bad), dk->why);
	dk_after_death(dk);

	/* Calls fail with -ENOTCONN while no daemon is there. */
	errno = 0;
	assert_ptr_equal(rp_map(dk->c, NULL, 4 * PAGE, RW, 0, aa), MAP_FAILED);
	assert_int_equal(errno, ENOTCONN);
	assert_int_equal(rp_template_fill(dk->c, 0x5A, &id), -ENOTCONN);
	uint64_t v[PROTO_STATS_MAX];
	assert_int_equal(rp_stats(dk->c, v, NULL, (int)PROTO_STATS_MAX), -ENOTCONN);
	assert_int_equal(rp_alive(dk->c), 0);

	/* A new daemon on the same path: the same client, the same template
	 * ids, without reconnecting by hand. */
	assert_int_equal(h_daemon_respawn(&fx->d), 0);
	uint8_t *q = rp_map(dk->c, NULL, 16 * PAGE, RW, 0, aa);
	if (q == MAP_FAILED)
		fail_msg("rp_map after the daemon restarted: %s", strerror(errno));
	assert_int_equal(rp_alive(dk->c), 1);
	uint8_t *r = rp_map(dk->c, NULL, 16 * PAGE, RW, 0, idc);
	assert_ptr_not_equal(r, MAP_FAILED);
	assert_int_equal(rp_template_fill(dk->c, 0x5A, &id), 0);
	uint8_t *s = rp_map(dk->c, NULL, 16 * PAGE, RW, 0, id);
	assert_ptr_not_equal(s, MAP_FAILED);
	for (size_t i = 0; i < 16; i++) {
		assert_int_equal(h_first_not(q + i * PAGE, PAGE, 0xAA), -1);
		assert_int_equal(h_first_diff(r + i * PAGE, tp, PAGE), -1);
		assert_int_equal(h_first_not(s + i * PAGE, PAGE, 0x5A), -1);
	}
	/* The old mapping is not the new daemon's: it stays anonymous. */
	assert_int_equal(h_first_not(dk->p + (DK_PAGES - 1) * PAGE, PAGE, 0), -1);
	assert_int_equal(rp_stats(dk->c, v, NULL, (int)PROTO_STATS_MAX), (int)PROTO_STAT_COUNT);
	assert_int_equal(rp_unmap(dk->c, q, 16 * PAGE), 0);
	assert_int_equal(rp_unmap(dk->c, r, 16 * PAGE), 0);
	assert_int_equal(rp_unmap(dk->c, s, 16 * PAGE), 0);
	munmap(dk->p, DK_PAGES * PAGE);
	munmap(dk->other, 64 * PAGE);
	free(dk);
	free(args);
	fx->ok = 1;
}

/* The daemon's child: the exec helper it forks before the sandbox for
 * upgrades (daemon/handover.c). 0 if there is none. */
static pid_t daemon_child(pid_t daemon)
{
	char path[64], buf[256];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)daemon, (int)daemon);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	long pid = 0;
	if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "%ld", &pid) != 1)
		pid = 0;
	fclose(f);
	return (pid_t)pid;
}

static int child_gone(void *arg)
{
	const pid_t *p = arg;
	char path[64];
	FILE *f;
	char state = 'Z';

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)*p);
	if (!(f = fopen(path, "r")))
		return 1;
	/* "pid (comm) S ...": a zombie or a reaped child is gone for us */
	if (fscanf(f, "%*d (%*[^)]) %c", &state) != 1)
		state = 'Z';
	fclose(f);
	return state == 'Z' || state == 'X';
}

static int upgrade_failed(void *arg)
{
	return h_daemon_log_has(arg, "upgrade failed: cannot start the new binary");
}

/* systemd's stop signals the whole cgroup, the exec helper included, and
 * the daemon may see SIGCHLD before its own SIGTERM. The helper's death
 * must neither kill the daemon (libev reaps it from its SIGCHLD handler:
 * the sandbox must allow that) nor stop it from serving and exiting 0. */
static void test_exec_helper_dies(void **state)
{
	struct fx *fx = *state;
	uint32_t aa;
	char path[64];

#ifdef RP_NO_RESTART_WING
	printf("SKIP: refpaged built without the restart wing (-DRP_RESTART_WING=OFF): no exec "
	       "helper\n");
	fx->ok = 1;
	skip();
#endif
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)fx->d.pid, (int)fx->d.pid);
	if (access(path, R_OK) < 0) {
		printf("SKIP: no %s (CONFIG_PROC_CHILDREN): cannot find the exec helper\n", path);
		fx->ok = 1;
		skip();
	}
	pid_t helper = daemon_child(fx->d.pid);
	if (!helper)
		fail_msg("refpaged %d has no child: where is its exec helper?", (int)fx->d.pid);
	assert_int_equal(kill(helper, SIGTERM), 0);
	assert_int_equal(h_wait_until(child_gone, &helper, H_DEADLINE_S), 0);
	/* A round trip lets the main loop handle the SIGCHLD first; then the
	 * daemon must be alive and serving. */
	assert_int_equal(rp_template_fill(fx->c, 0xAA, &aa), 0);
	assert_int_equal(h_daemon_alive(&fx->d), 1);
	uint8_t *p = rp_map(fx->c, NULL, 16 * PAGE, RW, 0, aa);
	if (p == MAP_FAILED)
		fail_msg("rp_map after the exec helper died: %s", strerror(errno));
	for (size_t i = 0; i < 16; i++)
		assert_int_equal(h_first_not(p + i * PAGE, PAGE, 0xAA), -1);
	/* An upgrade now fails, and says so; the daemon goes on. */
	assert_int_equal(kill(fx->d.pid, SIGHUP), 0);
	assert_int_equal(rp_template_fill(fx->c, 0x5A, &aa), 0);
	for (size_t i = 0; i < 16; i++)
		assert_int_equal(h_first_not(p + i * PAGE, PAGE, 0xAA), -1);
	assert_int_equal(rp_unmap(fx->c, p, 16 * PAGE), 0);
	assert_int_equal(h_wait_until(upgrade_failed, &fx->d, H_DEADLINE_S), 0);
	assert_int_equal(h_daemon_alive(&fx->d), 1);
	/* And it still stops cleanly on SIGTERM (exit status 0). */
	assert_int_equal(h_daemon_stop(&fx->d), 0);
	fx->ok = 1;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, test_setup, test_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_nobody_basic),  T(test_nobody_fork),      T(test_client_killed),
		T(test_daemon_killed), T(test_exec_helper_dies),
	};
	char why[256];

	if (!h_uffd_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
