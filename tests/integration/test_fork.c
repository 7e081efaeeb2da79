/* Fork trees (DESIGN.md semantic 5) against a real refpaged:
 *   - a child sees its parent's written pages and the template elsewhere,
 *     and neither side sees the other's later writes;
 *   - three generations, each checking what it inherited;
 *   - 8 threads faulting in a child while the parent forks again;
 *   - a child that execs, and a parent that exits before its child: the
 *     daemon releases the one and keeps serving the other;
 *   - a fork storm of 2,000 short-lived children, as root and as uid
 *     65534, after which the daemon's descriptors, STATS and memory come
 *     back to where they were.
 * Every test starts its own daemon, so baselines are exact. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define NPAGES 256u

struct fx {
	struct h_daemon d;
	rp_client *c;
	uint32_t id;
	uint8_t *p; /* NPAGES of 0xAA */
	int ok;
};

static int test_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	if (!fx || h_session_open(&fx->d, NULL, &fx->c, 0xAA, &fx->id) < 0) {
		free(fx);
		return -1;
	}
	if ((fx->p = rp_map(fx->c, NULL, NPAGES * PAGE, RW, 0, fx->id)) == MAP_FAILED) {
		fprintf(stderr, "setup: rp_map: %s\n", strerror(errno));
		h_session_close(&fx->d, fx->c, 0, 0);
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int test_teardown(void **state)
{
	struct fx *fx = *state;

	int r = h_session_close(&fx->d, fx->c, fx->ok, 0);
	free(fx);
	return r;
}

static int page_is(const uint8_t *p, uint8_t b)
{
	return h_first_not(p, PAGE, b) < 0;
}

/* Run fn(arg) in a child; its exit status (0 = all checks held). */
static int in_child(int (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	if (pid == 0)
		_exit(fn(arg));
	return WEXITSTATUS(h_reap(pid, H_DEADLINE_S));
}

struct gen {
	uint8_t *p;
	int depth;   /* generation: 1 = child */
	int pipe_rd; /* parent writes after the fork, then says so */
};

/* Every generation sees pages 0..depth-1 as its ancestors wrote them,
 * writes its own page, and hides it from the ancestors. */
static int generation(void *arg)
{
	struct gen *g = arg;
	for (int i = 0; i < g->depth; i++)
		if (!page_is(g->p + i * PAGE, (uint8_t)(0x10 + i)))
			return 10 + i;
	if (!page_is(g->p + 100 * PAGE, 0xAA))
		return 2;
	memset(g->p + g->depth * PAGE, 0x10 + g->depth, PAGE);
	if (g->depth < 3) {
		struct gen next = { g->p, g->depth + 1, -1 };
		int r = in_child(generation, &next);
		if (r)
			return r;
	}
	/* The descendants' pages stay ours. */
	return page_is(g->p + (g->depth + 1) * PAGE, 0xAA) ? 0 : 3;
}

static void test_three_generations(void **state)
{
	struct fx *fx = *state;
	memset(fx->p, 0x10, PAGE);
	struct gen g = { fx->p, 1, -1 };
	assert_int_equal(in_child(generation, &g), 0);
	assert_true(page_is(fx->p + PAGE, 0xAA));
	fx->ok = 1;
}

static int child_after_parent_write(void *arg)
{
	struct gen *g = arg;
	char c;
	/* Wait for the parent's post-fork writes. */
	if (read(g->pipe_rd, &c, 1) != 1)
		return 9;
	if (!page_is(g->p, 0x11) || !page_is(g->p + PAGE, 0xAA))
		return 1; /* written before: ours; the parent's later write: not */
	if (!page_is(g->p + 2 * PAGE, 0xAA))
		return 2; /* never touched by anyone */
	memset(g->p + 3 * PAGE, 0x33, PAGE);
	return 0;
}

static void test_cow_both_ways(void **state)
{
	struct fx *fx = *state;
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	memset(fx->p, 0x11, PAGE);
	struct gen g = { fx->p, 1, fds[0] };
	pid_t pid = fork();
	if (pid == 0)
		_exit(child_after_parent_write(&g));
	memset(fx->p + PAGE, 0x22, PAGE); /* after the fork: the child must not see it */
	assert_int_equal(write(fds[1], "x", 1), 1);
	int st = h_reap(pid, H_DEADLINE_S);
	close(fds[0]);
	close(fds[1]);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_true(page_is(fx->p + 3 * PAGE, 0xAA)); /* the child's write */
	assert_true(page_is(fx->p + PAGE, 0x22));
	fx->ok = 1;
}

struct thr {
	uint8_t *p;
	int idx;
	int bad;
};

static void *fault_loop(void *arg)
{
	struct thr *t = arg;
	uint8_t *base = t->p + (size_t)t->idx * 16 * PAGE;
	for (int round = 0; round < 200; round++) {
		for (int i = 0; i < 16; i++) {
			if (base[i * PAGE] != 0xAA)
				t->bad++;
			base[i * PAGE] = (uint8_t)round;
		}
		madvise(base, 16 * PAGE, MADV_DONTNEED);
	}
	return NULL;
}

/* The child's 8 threads fault over pages 16..143 again and again. */
static int threaded_child(void *arg)
{
	struct thr t[8];
	pthread_t th[8];
	uint8_t *p = arg;
	int bad = 0;
	for (int i = 0; i < 8; i++) {
		t[i] = (struct thr){ p + 16 * PAGE, i, 0 };
		pthread_create(&th[i], NULL, fault_loop, &t[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		bad += t[i].bad;
	}
	return bad ? 1 : 0;
}

static int quick_child(void *arg)
{
	uint8_t *p = arg;
	return page_is(p, 0x44) && page_is(p + 200 * PAGE, 0xAA) ? 0 : 1;
}

static void test_threads_in_child_while_parent_forks(void **state)
{
	struct fx *fx = *state;
	memset(fx->p, 0x44, PAGE);
	pid_t busy = fork();
	if (busy == 0)
		_exit(threaded_child(fx->p));
	for (int i = 0; i < 50; i++)
		assert_int_equal(in_child(quick_child, fx->p), 0);
	int st = h_reap(busy, H_DEADLINE_S);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	fx->ok = 1;
}

/* The daemon at rest with just this test's own mapping. */
static const struct h_want at_rest[] = {
	{ "clients", 1 },
	{ "processes", 1 },
	{ "ranges", 1 },
	{ "bytes_registered", NPAGES *PAGE },
};

static void test_exec_releases(void **state)
{
	struct fx *fx = *state;
	const char *argv[] = { h_fork_prog(), "exec", fx->d.sock, NULL };
	char line[64];
	int out;

	assert_int_equal(h_wait_stats(fx->c, at_rest, 4, H_DEADLINE_S), 0);
	pid_t prog = h_spawn(argv, 0, &out);
	assert_true(prog > 0);
	assert_int_equal(h_read_line(out, line, sizeof(line), H_DEADLINE_S), 0);
	pid_t sleeper = (pid_t)atoi(line);
	/* The program (a client) still runs; its exec'd child holds nothing. */
	struct h_want busy[] = { { "clients", 2 }, { "processes", 2 } };
	assert_int_equal(h_wait_stats(fx->c, busy, 2, H_DEADLINE_S), 0);
	kill(sleeper, SIGKILL);
	h_reap(prog, H_DEADLINE_S);
	close(out);
	assert_int_equal(h_wait_stats(fx->c, at_rest, 4, H_DEADLINE_S), 0);
	fx->ok = 1;
}

static void orphan(struct fx *fx, int as_nobody)
{
	const char *argv[] = { h_fork_prog(), "orphan", fx->d.sock, NULL };
	char line[128];
	int out;
	pid_t prog = h_spawn(argv, as_nobody, &out);

	assert_true(prog > 0);
	h_reap(prog, H_DEADLINE_S); /* the parent exits at once */
	assert_int_equal(h_read_line(out, line, sizeof(line), H_DEADLINE_S), 0);
	close(out);
	if (strncmp(line, "orphan ok", 9))
		fail_msg("orphaned child: %s", line);
	assert_int_equal(h_wait_stats(fx->c, at_rest, 4, H_DEADLINE_S), 0);
}

static void test_parent_exits_first(void **state)
{
	struct fx *fx = *state;
	orphan(fx, 0);
	fx->ok = 1;
}

static long daemon_rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kib = atol(line + 6);
	if (f)
		fclose(f);
	return kib;
}

/* RSS may grow with the storm (malloc keeps freed memory for reuse) but
 * must not keep what 2,000 children held: one child's state is well
 * under a page, so 16 MiB would be a leak of several KiB per child. */
#define STORM_RSS_SLACK_KIB (16 * 1024)

static void storm(struct fx *fx, int as_nobody)
{
	char children[16], out[256];
	snprintf(children, sizeof(children), "%d", 2000);
	const char *argv[] = { h_fork_prog(), "storm", fx->d.sock, children, "8", NULL };

	assert_int_equal(h_wait_stats(fx->c, at_rest, 4, H_DEADLINE_S), 0);
	/* A fault answered means the worker serves our mm, exit watch and
	 * all: the descriptor count is settled. */
	assert_int_equal(*(volatile uint8_t *)(fx->p + 200 * PAGE), 0xAA);
	int fds = h_count_fds(fx->d.pid);
	long rss = daemon_rss_kib(fx->d.pid);
	int st = h_run(argv, as_nobody, 120, out, sizeof(out));
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("storm program failed (status %d): %s", st, out);
	assert_int_equal(h_wait_stats(fx->c, at_rest, 4, H_DEADLINE_S), 0);
	assert_int_equal(h_wait_fds(fx->d.pid, fds, H_DEADLINE_S), 0);
	struct h_stats s;
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	assert_true(h_stat(&s, "ev_fork") >= 2000);
	assert_true(h_stat(&s, "processes_reclaimed") >= 2000);
	assert_int_equal(h_stat(&s, "forks_untracked"), 0);
	long rss2 = daemon_rss_kib(fx->d.pid);
	if (rss2 > rss + STORM_RSS_SLACK_KIB)
		fail_msg("daemon RSS grew from %ld to %ld KiB over the storm", rss, rss2);
}

static void test_fork_storm(void **state)
{
	struct fx *fx = *state;
	storm(fx, 0);
	fx->ok = 1;
}

static void test_fork_storm_nobody(void **state)
{
	struct fx *fx = *state;
	char why[256];
	if (!h_can_run_as_nobody(why, sizeof(why))) {
		fx->ok = 1;
		printf("skipped: %s\n", why);
		skip();
	}
	storm(fx, 1);
	orphan(fx, 1);
	fx->ok = 1;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, test_setup, test_teardown)

int main(void)
{
	char why[256];
	if (!h_uffd_usable(why, sizeof(why))) {
		printf("skipped: %s\n", why);
		return H_EXIT_SKIP;
	}
	const struct CMUnitTest tests[] = {
		T(test_cow_both_ways),
		T(test_three_generations),
		T(test_threads_in_child_while_parent_forks),
		T(test_exec_releases),
		T(test_parent_exits_first),
		T(test_fork_storm),
		T(test_fork_storm_nobody),
	};
	return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
