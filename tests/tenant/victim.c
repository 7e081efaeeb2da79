/* rp_victim: a well-behaved tenant of refpaged, run while an attacker of
 * another uid does its worst. Everything it sees must be right, and it
 * reports how long it waited.
 *
 *   rp_victim sock=PATH label=NAME [pages=16] [fill=0xA5] [seed=1]
 *             [fork_every=20] [hello_every=40] [fresh_every=0] [secret=-1]
 *             [grace=8] [child_timeout=10]
 *
 * One loop, as fast as it goes, alternating two templates (a fill byte and
 * a created page of pseudo-random bytes):
 *   - MAP: rp_map of `pages` pages, timed (the request's round trip plus the
 *     mmap);
 *   - first touches in a shuffled order (so that fault-around rarely
 *     applies), each one that mincore says is missing timed as a fault, and
 *     every page compared with the template;
 *   - writes to the even pages, read back; MADV_DONTNEED of page 2, which
 *     must read the template again;
 *   - every fork_every loops a fork child that checks the parent's pages
 *     (written ones as written, the rest the template), does not see a
 *     write the parent makes after the fork, and writes its own;
 *   - rp_unmap;
 *   - every hello_every loops a new connection (HELLO, timed), a template,
 *     a mapping checked, a disconnect;
 *   - every fresh_every loops a template of new contents, mapped, checked,
 *     released (a tenant that keeps making templates);
 *   - secret=B: a template of byte B held (and mapped, touched) all along,
 *     for the cross-tenant oracle attack.
 *
 * Prints "ready" once set up. SIGUSR1 moves to the next phase (0: before
 * the attack, 1: during, 2: after); SIGTERM stops. Then it prints, per
 * phase,
 *   victim label=L phase=P iters=N map_n=.. map_p50_us=.. map_p99_us=..
 *     map_max_us=.. fault_n=.. fault_p50_us=.. fault_p99_us=.. fault_max_us=..
 *     hello_n=.. hello_p50_us=.. hello_p99_us=.. hello_max_us=..
 * and the verdict
 *   victim label=L errors=N wrong_bytes=N hung=0|1 iters=N first_error="..."
 * A loop stuck in one operation for longer than `grace` seconds after
 * SIGTERM is reported hung (with the operation) and the program exits 3.
 * Exit status 0 when there were no errors and no wrong bytes, else 1. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#include "tenant.h"

#define P TN_PAGE
#define MAX_PAGES 256
#define NPHASES 3
#define SAMPLES 40000

static atomic_int phase, stop, done, reported;
static const char *_Atomic op = "start";
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
	struct tn_lat map, fault, hello;
	unsigned long iters;
} ph[NPHASES];

static unsigned long errors, wrong, iters;
static char first_error[200];
static const char *label;

static void on_usr1(int sig)
{
	(void)sig;
	if (atomic_load(&phase) < NPHASES - 1)
		atomic_fetch_add(&phase, 1);
}

static void on_term(int sig)
{
	(void)sig;
	atomic_store(&stop, 1);
}

__attribute__((format(printf, 1, 2))) static void error(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&lock);
	if (!errors++) {
		va_start(ap, fmt);
		vsnprintf(first_error, sizeof(first_error), fmt, ap);
		va_end(ap);
		for (char *q = first_error; *q; q++)
			if (*q == '"')
				*q = '\'';
	}
	pthread_mutex_unlock(&lock);
}

static void add_wrong(size_t n, const char *where, size_t page)
{
	if (!n)
		return;
	pthread_mutex_lock(&lock);
	wrong += n;
	pthread_mutex_unlock(&lock);
	error("%zu wrong bytes in page %zu (%s)", n, page, where);
}

static void sample(struct tn_lat *l, uint64_t ns)
{
	pthread_mutex_lock(&lock);
	tn_lat_add(l, ns);
	pthread_mutex_unlock(&lock);
}

static double us(uint64_t ns)
{
	return (double)ns / 1e3;
}

static void report(int hung)
{
	if (atomic_exchange(&reported, 1))
		return;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < NPHASES; i++) {
		printf("victim label=%s phase=%d iters=%lu", label, i, ph[i].iters);
		const struct {
			const char *name;
			struct tn_lat *l;
		} k[] = { { "map", &ph[i].map },
			  { "fault", &ph[i].fault },
			  { "hello", &ph[i].hello } };
		for (size_t j = 0; j < sizeof(k) / sizeof(k[0]); j++)
			printf(" %s_n=%llu %s_p50_us=%.1f %s_p99_us=%.1f %s_max_us=%.1f", k[j].name,
			       (unsigned long long)k[j].l->seen, k[j].name,
			       us(tn_lat_pct(k[j].l, 50)), k[j].name, us(tn_lat_pct(k[j].l, 99)),
			       k[j].name, us(k[j].l->max));
		printf("\n");
	}
	if (hung && !errors)
		snprintf(first_error, sizeof(first_error), "stuck in %s", atomic_load(&op));
	printf("victim label=%s errors=%lu wrong_bytes=%lu hung=%d iters=%lu first_error=\"%s\"\n",
	       label, errors + (unsigned long)hung, wrong, hung, iters, first_error);
	fflush(stdout);
	pthread_mutex_unlock(&lock);
}

/* After SIGTERM the loop has `grace` seconds to finish its operation. */
static double grace;

static void *watch(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		tn_sleep(0.05);
	double end = tn_now() + grace;
	while (tn_now() < end) {
		if (atomic_load(&done))
			return NULL;
		tn_sleep(0.02);
	}
	report(1);
	_exit(3);
}

static int resident(const uint8_t *p)
{
	unsigned char v = 0;

	return mincore((void *)p, P, &v) == 0 && (v & 1);
}

/* A fork child's view: parent pages as they were at the fork. */
static int child_check(uint8_t *p, size_t pages, const uint8_t *expect, int rfd)
{
	char b;
	size_t bad = 0;

	alarm((unsigned)tn_opt_ll("child_timeout", 10));
	/* The parent writes page 4 after the fork, then tells us. */
	if (read(rfd, &b, 1) != 1)
		return 2;
	for (size_t i = 0; i < pages; i++)
		bad += tn_count_diff(p + i * P, expect + i * P, P);
	memset(p + 3 * P, 0x77, 64);
	for (size_t i = 0; i < 64; i++)
		bad += p[3 * P + i] != 0x77;
	return bad ? 1 : 0;
}

static void fork_check(uint8_t *p, size_t pages, uint8_t *expect)
{
	int pp[2];

	atomic_store(&op, "fork");
	if (pipe2(pp, O_CLOEXEC) < 0) {
		error("pipe: %s", strerror(errno));
		return;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(pp[1]);
		_exit(child_check(p, pages, expect, pp[0]));
	}
	close(pp[0]);
	if (pid < 0) {
		close(pp[1]);
		error("fork: %s", strerror(errno));
		return;
	}
	/* Invisible to the child. */
	memset(p + 4 * P + 100, 0x99, 100);
	memset(expect + 4 * P + 100, 0x99, 100);
	if (write(pp[1], "g", 1) != 1)
		error("pipe write: %s", strerror(errno));
	close(pp[1]);
	atomic_store(&op, "waiting for the fork child");
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(st))
		error("fork child killed by signal %d (%s)", WTERMSIG(st),
		      WTERMSIG(st) == SIGALRM ? "stuck" : "crashed");
	else if (WEXITSTATUS(st) == 1)
		error("fork child saw wrong bytes");
	else if (WEXITSTATUS(st))
		error("fork child failed (%d)", WEXITSTATUS(st));
}

static void shuffle(size_t *v, size_t n, uint64_t *rng)
{
	for (size_t i = 0; i < n; i++)
		v[i] = i;
	for (size_t i = n; i > 1; i--) {
		*rng ^= *rng << 13;
		*rng ^= *rng >> 7;
		*rng ^= *rng << 17;
		size_t j = (size_t)(*rng % i);
		size_t t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* Map len bytes of template id (contents tpl) through c, touch and check
 * every page, unmap. For the HELLO and fresh-template checks. */
static void map_check(rp_client *c, uint32_t id, const uint8_t *tpl, size_t npages,
		      const char *what)
{
	uint8_t *q = rp_map(c, NULL, npages * P, PROT_READ | PROT_WRITE, 0, id);

	if (q == MAP_FAILED) {
		error("%s: rp_map: %s", what, strerror(errno));
		return;
	}
	for (size_t i = 0; i < npages; i++)
		add_wrong(tn_count_diff(q + i * P, tpl, P), what, i);
	int r = rp_unmap(c, q, npages * P);
	if (r < 0)
		error("%s: rp_unmap: %s", what, strerror(-r));
}

static void hello_check(const char *sock, uint8_t fill, struct tn_lat *l)
{
	rp_client *c2 = NULL;
	uint8_t tpl[P];
	uint32_t id;

	atomic_store(&op, "HELLO (rp_connect)");
	uint64_t t0 = tn_now_ns();
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c2);
	sample(l, tn_now_ns() - t0);
	if (r < 0) {
		error("rp_connect: %s", strerror(-r));
		return;
	}
	atomic_store(&op, "template on a new connection");
	if ((r = rp_template_fill(c2, fill, &id)) < 0) {
		error("rp_template_fill on a new connection: %s", strerror(-r));
	} else {
		memset(tpl, fill, P);
		map_check(c2, id, tpl, 2, "new connection");
	}
	rp_disconnect(c2);
}

static void fresh_check(rp_client *c, uint32_t seed)
{
	uint8_t tpl[P];
	uint32_t id;

	atomic_store(&op, "fresh template");
	tn_fill_page(tpl, seed);
	int r = rp_template_create(c, tpl, &id);
	if (r < 0) {
		error("rp_template_create (fresh contents): %s", strerror(-r));
		return;
	}
	map_check(c, id, tpl, 2, "fresh template");
	if ((r = rp_template_release(c, id)) < 0)
		error("rp_template_release: %s", strerror(-r));
}

int main(int argc, char **argv)
{
	tn_opts(argc - 1, argv + 1);
	const char *sock = tn_opt_str("sock", NULL);
	label = tn_opt_str("label", "victim");
	size_t pages = (size_t)tn_opt_ll("pages", 16);
	uint8_t fill = (uint8_t)tn_opt_ll("fill", 0xA5);
	uint32_t seed = (uint32_t)tn_opt_ll("seed", 1);
	long fork_every = (long)tn_opt_ll("fork_every", 20);
	long hello_every = (long)tn_opt_ll("hello_every", 40);
	long fresh_every = (long)tn_opt_ll("fresh_every", 0);
	long long secret = tn_opt_ll("secret", -1);
	grace = tn_opt_double("grace", 8);
	tn_opt_ll("child_timeout", 10);
	const char *bad = tn_opts_unused();
	if (!sock || bad || pages < 8 || pages > MAX_PAGES) {
		fprintf(stderr, "rp_victim: %s\n",
			bad ? bad : "usage: rp_victim sock=PATH [label=...] (pages 8..256)");
		return 2;
	}

	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < NPHASES; i++) {
		tn_lat_init(&ph[i].map, SAMPLES);
		tn_lat_init(&ph[i].fault, SAMPLES * 4);
		tn_lat_init(&ph[i].hello, SAMPLES / 8);
	}
	pthread_t wt;
	pthread_create(&wt, NULL, watch, NULL);

	rp_client *c;
	uint32_t ids[2], sid = 0;
	static uint8_t tpl[2][P];
	int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);
	memset(tpl[0], fill, P);
	tn_fill_page(tpl[1], seed);
	if (r < 0 || (r = rp_template_fill(c, fill, &ids[0])) < 0 ||
	    (r = rp_template_create(c, tpl[1], &ids[1])) < 0) {
		printf("victim label=%s setup failed: %s\n", label, strerror(-r));
		return 2;
	}
	if (secret >= 0) {
		uint8_t spage[P];
		memset(spage, (int)secret, P);
		if ((r = rp_template_fill(c, (uint8_t)secret, &sid)) < 0) {
			printf("victim label=%s setup failed: secret template: %s\n", label,
			       strerror(-r));
			return 2;
		}
		uint8_t *s = rp_map(c, NULL, 8 * P, PROT_READ | PROT_WRITE, 0, sid);
		if (s == MAP_FAILED) {
			printf("victim label=%s setup failed: secret map: %s\n", label,
			       strerror(errno));
			return 2;
		}
		for (size_t i = 0; i < 8; i++)
			add_wrong(tn_count_diff(s + i * P, spage, P), "secret", i);
	}
	uint8_t *expect = mmap(NULL, MAX_PAGES * P, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (expect == MAP_FAILED)
		return 2;
	printf("ready\n");
	fflush(stdout);

	uint64_t rng = 0x2545F4914F6CDD1Dull ^ seed;
	size_t order[MAX_PAGES];
	while (!atomic_load(&stop)) {
		int k = (int)(iters & 1), phs = atomic_load(&phase);
		const uint8_t *t = tpl[k];

		atomic_store(&op, "MAP (rp_map)");
		uint64_t t0 = tn_now_ns();
		uint8_t *p = rp_map(c, NULL, pages * P, PROT_READ | PROT_WRITE, 0, ids[k]);
		sample(&ph[phs].map, tn_now_ns() - t0);
		if (p == MAP_FAILED) {
			error("rp_map: %s", strerror(errno));
			tn_sleep(0.001);
			iters++;
			continue;
		}
		atomic_store(&op, "first touches");
		shuffle(order, pages, &rng);
		for (size_t j = 0; j < pages; j++) {
			uint8_t *pg = p + order[j] * P;
			int missing = !resident(pg);
			t0 = tn_now_ns();
			(void)*(volatile uint8_t *)pg;
			uint64_t dt = tn_now_ns() - t0;
			if (missing)
				sample(&ph[phs].fault, dt);
			add_wrong(tn_count_diff(pg, t, P), "first read", order[j]);
		}
		atomic_store(&op, "writes");
		for (size_t i = 0; i < pages; i++) {
			memcpy(expect + i * P, t, P);
			if (i % 2 == 0) {
				memset(p + i * P + 8, (int)(iters * 31 + i) | 1, 512);
				memset(expect + i * P + 8, (int)(iters * 31 + i) | 1, 512);
			}
		}
		for (size_t i = 0; i < pages; i++)
			add_wrong(tn_count_diff(p + i * P, expect + i * P, P), "read after write",
				  i);
		atomic_store(&op, "MADV_DONTNEED");
		if (madvise(p + 2 * P, P, MADV_DONTNEED) < 0)
			error("madvise: %s", strerror(errno));
		memcpy(expect + 2 * P, t, P);
		add_wrong(tn_count_diff(p + 2 * P, t, P), "after MADV_DONTNEED", 2);
		if (fork_every &&
		    iters % (unsigned long)fork_every == (unsigned long)fork_every - 1) {
			fork_check(p, pages, expect);
			add_wrong(tn_count_diff(p + 4 * P, expect + 4 * P, P), "parent after fork",
				  4);
		}
		atomic_store(&op, "UNMAP (rp_unmap)");
		if ((r = rp_unmap(c, p, pages * P)) < 0)
			error("rp_unmap: %s", strerror(-r));
		if (hello_every &&
		    iters % (unsigned long)hello_every == (unsigned long)hello_every / 2)
			hello_check(sock, (uint8_t)(fill ^ 0x5A), &ph[phs].hello);
		if (fresh_every && iters % (unsigned long)fresh_every == 0)
			fresh_check(c, seed * 7919u + (uint32_t)iters);
		if (!rp_alive(c))
			error("rp_alive: the daemon connection is gone");
		pthread_mutex_lock(&lock);
		ph[phs].iters++;
		iters++;
		pthread_mutex_unlock(&lock);
	}
	atomic_store(&op, "disconnect");
	rp_disconnect(c);
	atomic_store(&done, 1);
	report(0);
	return errors || wrong ? 1 : 0;
}
