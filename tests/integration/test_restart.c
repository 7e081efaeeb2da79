/* Restarts and upgrades that clients never notice (daemon/handover.c,
 * persist.c, restore.c):
 *   - 20 upgrades (`refpagectl upgrade`, and SIGHUP) under a client with
 *     16 threads and a fork child with 4, all faulting without a pause over
 *     four refpage mappings: not one wrong byte, no fault slower than a
 *     handover, STATS going on, the same connection throughout;
 *   - an upgrade the new binary refuses (a journal format it cannot read):
 *     the old daemon goes on serving; uid 65534 may not upgrade;
 *   - the fd store, with this process standing in for systemd
 *     ($NOTIFY_SOCKET, FDSTORE=1/FDNAME=/FDSTOREREMOVE=1, LISTEN_FDS and
 *     LISTEN_FDNAMES): SIGKILL and a restart lose nothing; then each kind
 *     of damage between the kill and the restart (a torn last record, a
 *     corrupt image, a truncated journal, an unknown version, a fork child
 *     gone, a descriptor that is not a uffd) with its outcome checked;
 *   - a mapping at the very top of user space, under 128 TiB, and above
 *     it where the machine has 5-level paging (else skipped, with why),
 *     served before and after a SIGKILL and a restart.
 * Deadlines only keep a broken build from hanging. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "load.h"
#include "sdnotify.h"
#include "journal.h"

#define PAGE H_PAGE
#define RW (PROT_READ | PROT_WRITE)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

extern char **environ;

/* --- the load (tests/common/load.h), failing the test on any error ------------ */

#define LD_MAX_THREADS LOAD_MAX_THREADS
#define LD_CHILD_THREADS LOAD_CHILD_THREADS
#define ld_flowing load_flowing
#define ld_free load_free

static void ld_start(struct load *ld, rp_client *c, int nthreads, int with_child)
{
	char err[256];

	if (load_start(ld, c, nthreads, with_child, err, sizeof(err)) < 0)
		fail_msg("load: %s", err);
}

static void ld_wait_progress(struct load *ld)
{
	char err[256];

	if (load_wait_progress(ld, H_DEADLINE_S, err, sizeof(err)) < 0)
		fail_msg("%s", err);
}

static void ld_stop(struct load *ld)
{
	char err[256];

	if (load_stop(ld, H_DEADLINE_S, err, sizeof(err)) < 0)
		fail_msg("%s", err);
}

static void ld_assert_good(const struct load *ld)
{
	if (atomic_load(&ld->sh->bad))
		fail_msg("%d wrong pages, first: %s", atomic_load(&ld->sh->bad), ld->sh->why);
}

static void alive_start(struct load_alive *m, rp_client *c)
{
	assert_int_equal(load_alive_start(m, c), 0);
}

static void alive_stop(struct load_alive *m)
{
	load_alive_stop(m);
	if (atomic_load(&m->dead))
		fail_msg("rp_alive() said 0 in %lu of %lu checks", atomic_load(&m->dead),
			 atomic_load(&m->checks));
}

/* --- upgrades ---------------------------------------------------------------- */

struct fx {
	struct h_daemon d;
	rp_client *c;
	int ok;
};

static const char *const two_workers[] = { "--workers", "2", NULL };
static const char *const bad_version[] = { "--workers", "2", "--debug-snapshot-version", "999",
					   NULL };

static int fx_setup(void **state, const char *const *extra)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	if (!fx || h_session_open(&fx->d, extra, &fx->c, 0, NULL) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int setup_plain(void **state)
{
	return fx_setup(state, two_workers);
}

static int setup_bad_version(void **state)
{
	return fx_setup(state, bad_version);
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;

	if (!fx)
		return 0;
	int r = h_session_close(&fx->d, fx->c, fx->ok, 0);
	free(fx);
	*state = NULL;
	return r;
}

/* `refpagectl upgrade`: the new pid, or 0 with *status its exit status. */
static pid_t ctl_upgrade(struct fx *fx, int as_nobody, int *status, char *out, size_t n)
{
	const char *argv[] = { h_ctl_prog(), "--socket", fx->d.sock, "upgrade", NULL };
	unsigned pid = 0;

	*status = h_run(argv, as_nobody, H_DEADLINE_S * 2, out, n);
	if (*status != -1 && WIFEXITED(*status) && WEXITSTATUS(*status) == 0 &&
	    sscanf(out, "upgraded: refpaged pid %u", &pid) == 1)
		return (pid_t)pid;
	return 0;
}

/* SIGHUP: the new pid from the log ("upgrade: pid N serves now"). */
static pid_t hup_upgrade(struct fx *fx)
{
	double end = h_now() + H_DEADLINE_S * 2;
	char line[64];

	snprintf(line, sizeof(line), "upgrade: pid ");
	h_daemon_mark_log(&fx->d);
	assert_int_equal(kill(fx->d.pid, SIGHUP), 0);
	while (h_now() < end) {
		char buf[8192];
		int fd = open(fx->d.log, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, fx->d.log_mark) : -1;
		if (fd >= 0)
			close(fd);
		if (n > 0) {
			buf[n] = '\0';
			const char *p = strstr(buf, line);
			unsigned pid;
			if (p && sscanf(p, "upgrade: pid %u serves now", &pid) == 1)
				return (pid_t)pid;
		}
		usleep(5000);
	}
	return 0;
}

static double log_pause_ms(struct fx *fx)
{
	char buf[16384];
	double ms = -1;
	int fd = open(fx->d.log, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, fx->d.log_mark) : -1;

	if (fd >= 0)
		close(fd);
	if (n > 0) {
		buf[n] = '\0';
		const char *p = strstr(buf, "clients waited at most ");
		if (p)
			sscanf(p, "clients waited at most %lf ms", &ms);
	}
	return ms;
}

#define UPGRADES 20

static void test_upgrade_storm(void **state)
{
	struct fx *fx = *state;
	struct load ld;
	struct h_stats s;
	double wall_max = 0, wall_sum = 0, pause_max = 0;
	char out[1024];
	int st;

	ld_start(&ld, fx->c, LD_MAX_THREADS, 1);
	assert_int_equal(h_wait_until(ld_flowing, &ld, H_DEADLINE_S), 0);
	assert_int_equal(h_stats_read(fx->c, &s), 0);
	uint64_t faults = h_stat(&s, "faults"), procs = h_stat(&s, "processes");
	assert_int_equal(procs, 2); /* our connection's, the fork child's */
	assert_int_equal(h_stat(&s, "ev_fork"), 1);
	/* From here on, a second "client up" would be a reconnection. */
	h_daemon_mark_log(&fx->d);
	off_t mark0 = fx->d.log_mark;
	struct load_alive mon;
	alive_start(&mon, fx->c);
	for (int i = 0; i < UPGRADES; i++) {
		pid_t old = fx->d.pid, pid;
		double t0 = h_now();
		h_daemon_mark_log(&fx->d);
		if (i % 5 == 4) {
			pid = hup_upgrade(fx);
		} else {
			pid = ctl_upgrade(fx, 0, &st, out, sizeof(out));
			if (!pid)
				fail_msg("upgrade %d: refpagectl status %#x: %s", i, st, out);
		}
		if (!pid)
			fail_msg("upgrade %d by SIGHUP: no new daemon", i);
		double wall = (h_now() - t0) * 1e3, pause = log_pause_ms(fx);
		wall_max = wall > wall_max ? wall : wall_max;
		pause_max = pause > pause_max ? pause : pause_max;
		wall_sum += wall;
		st = h_reap(old, H_DEADLINE_S);
		assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
		fx->d.pid = pid;
		assert_int_equal(rp_alive(fx->c), 1);
		ld_wait_progress(&ld);
		assert_int_equal(h_stats_read(fx->c, &s), 0);
		if (h_stat(&s, "faults") < faults)
			fail_msg("upgrade %d: faults went back from %llu to %llu", i,
				 (unsigned long long)faults,
				 (unsigned long long)h_stat(&s, "faults"));
		faults = h_stat(&s, "faults");
		assert_int_equal(h_stat(&s, "processes"), procs);
		assert_int_equal(h_stat(&s, "ev_fork"), 1);
		ld_assert_good(&ld);
	}
	ld_stop(&ld);
	alive_stop(&mon);
	ld_assert_good(&ld);
	assert_int_equal(rp_alive(fx->c), 1);
	fx->d.log_mark = mark0;
	assert_false(h_daemon_log_has(&fx->d, "client up"));
	double fault_max = (double)atomic_load(&ld.sh->side[0].max_ns) / 1e6,
	       child_max = (double)atomic_load(&ld.sh->side[1].max_ns) / 1e6;
	printf("  %d upgrades: refpagectl upgrade %.1f ms average, %.1f ms at most; clients paused "
	       "%.2f ms at most (daemon's log)\n",
	       UPGRADES, wall_sum / UPGRADES, wall_max, pause_max);
	printf("  slowest first touch: %.2f ms (%lu touches, 16 threads), %.2f ms in the fork child "
	       "(%lu touches, 4 threads); %llu faults served in all\n",
	       fault_max, atomic_load(&ld.sh->side[0].touches), child_max,
	       atomic_load(&ld.sh->side[1].touches), (unsigned long long)faults);
	/* A fault waits for one handover at most; the rest is the scheduler
	 * (21 threads on this machine's CPUs). */
	if (fault_max > wall_max + 250 || child_max > wall_max + 250)
		fail_msg("a fault took %.1f ms, a handover at most %.1f ms",
			 fault_max > child_max ? fault_max : child_max, wall_max);
	ld_free(&ld);
	fx->ok = 1;
}

static void test_upgrade_refused(void **state)
{
	struct fx *fx = *state;
	struct load ld;
	char out[1024], why[160];
	int st;

	ld_start(&ld, fx->c, 4, 0);
	assert_int_equal(h_wait_until(ld_flowing, &ld, H_DEADLINE_S), 0);
	pid_t pid0 = fx->d.pid;
	h_daemon_mark_log(&fx->d);
	/* The daemon writes a format no binary reads: the new one refuses. */
	assert_int_equal(ctl_upgrade(fx, 0, &st, out, sizeof(out)), 0);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 3)
		fail_msg("refpagectl upgrade: status %#x, want exit 3: %s", st, out);
	assert_non_null(strstr(out, "cannot read the state journal"));
	assert_true(h_daemon_alive(&fx->d));
	assert_int_equal(fx->d.pid, pid0);
	assert_true(h_daemon_log_has(&fx->d, "the journal is format version 999"));
	assert_true(h_daemon_log_has(&fx->d, "(exit status 3)"));
	assert_true(h_daemon_log_has(&fx->d, "still serving"));
	ld_wait_progress(&ld);
	assert_int_equal(rp_alive(fx->c), 1);
	/* Only root and the daemon's own uid may ask. */
	if (h_can_run_as_nobody(why, sizeof(why))) {
		assert_int_equal(ctl_upgrade(fx, 1, &st, out, sizeof(out)), 0);
		assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1);
		assert_non_null(strstr(out, "Operation not permitted"));
		assert_true(h_daemon_log_has(&fx->d, "upgrade asked by uid 65534: refused"));
	} else {
		printf("  uid 65534 part skipped: %s\n", why);
	}
	ld_wait_progress(&ld);
	ld_stop(&ld);
	ld_assert_good(&ld);
	ld_free(&ld);
	fx->ok = 1;
}

/* --- the fd store: this process stands in for systemd ------------------------ */

#define STORE_MAX 256

struct store {
	int sock;
	pthread_t th;
	pthread_mutex_t lock;
	struct {
		char name[32];
		int fd;
	} e[STORE_MAX];
	int n;
	atomic_int ready; /* READY=1 received */
	atomic_int stop;
};

static void store_add(struct store *st, const char *name, int fd)
{
	if (st->n == STORE_MAX) {
		close(fd);
		return;
	}
	snprintf(st->e[st->n].name, sizeof(st->e[st->n].name), "%s", name);
	st->e[st->n++].fd = fd;
}

static void store_remove(struct store *st, const char *name)
{
	int k = 0;

	for (int i = 0; i < st->n; i++) {
		if (!strcmp(st->e[i].name, name))
			close(st->e[i].fd);
		else
			st->e[k++] = st->e[i];
	}
	st->n = k;
}

/* What systemd does with a notification (sdnotify.h). */
static void store_handle(struct store *st, char *msg, int *fds, int nfds)
{
	struct sdn_msg m;

	sdn_parse(msg, &m);
	if (m.ready)
		atomic_fetch_add(&st->ready, 1);
	pthread_mutex_lock(&st->lock);
	for (int i = 0; i < nfds; i++) {
		if (m.fdstore)
			store_add(st, m.name, fds[i]);
		else
			close(fds[i]);
	}
	if (m.remove)
		store_remove(st, m.name);
	pthread_mutex_unlock(&st->lock);
}

static void *store_main(void *arg)
{
	struct store *st = arg;

	while (!atomic_load(&st->stop)) {
		char buf[4096];
		int fds[SDN_MAX_FDS], nfds;
		pid_t pid;
		struct pollfd p = { .fd = st->sock, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		if ((nfds = sdn_recv(st->sock, buf, sizeof(buf), fds, &pid)) < 0)
			continue;
		store_handle(st, buf, fds, nfds);
	}
	return NULL;
}

/* The stored fd named name (the store keeps it), or -1. */
static int store_get(struct store *st, const char *name)
{
	int fd = -1;

	pthread_mutex_lock(&st->lock);
	for (int i = 0; i < st->n && fd < 0; i++)
		if (!strcmp(st->e[i].name, name))
			fd = st->e[i].fd;
	pthread_mutex_unlock(&st->lock);
	return fd;
}

/* The name of the stored uffd with the highest id (the last adopted: the
 * fork child), or with the lowest (the client's own). */
static int store_uffd(struct store *st, int highest, char *name, size_t n)
{
	unsigned best = 0, id;

	pthread_mutex_lock(&st->lock);
	for (int i = 0; i < st->n; i++)
		if (sscanf(st->e[i].name, "u%u", &id) == 1 &&
		    (!best || (highest ? id > best : id < best)))
			best = id;
	pthread_mutex_unlock(&st->lock);
	snprintf(name, n, "u%u", best);
	return best ? 0 : -1;
}

/* Stored descriptors whose name starts with c (connections: 'c',
 * uffds: 'u'). */
static int store_count(struct store *st, char c)
{
	int n = 0;

	pthread_mutex_lock(&st->lock);
	for (int i = 0; i < st->n; i++)
		n += st->e[i].name[0] == c && st->e[i].name[1] >= '0' && st->e[i].name[1] <= '9';
	pthread_mutex_unlock(&st->lock);
	return n;
}

static void wait_store_count(struct store *st, char c, int want)
{
	double end = h_now() + H_DEADLINE_S;

	while (store_count(st, c) != want) {
		if (h_now() > end)
			fail_msg("the fd store holds %d '%c' descriptors, want %d",
				 store_count(st, c), c, want);
		usleep(2000);
	}
}

struct sfx {
	struct h_daemon d; /* dir, sock, log, pid: started by us, not the harness */
	char notify[128];
	int listen_fd; /* the "socket unit"'s */
	struct store st;
	rp_client *c;
	struct load ld;
	int ok;
};

/* A client of a daemon that died waits for the next one, the fd store
 * holding its connection: a test that breaks the daemon must not wait
 * for ever. */
static void on_alarm(int sig)
{
	static const char msg[] = "test_restart: stuck for 120 s (a daemon died?); giving up\n";

	(void)sig;
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(2);
	_exit(1);
}

static int sfx_setup(void **state)
{
	struct sfx *f = calloc(1, sizeof(*f));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int one = 1;

	if (!f)
		return -1;
	strcpy(f->d.dir, "/tmp/rp-itest-XXXXXX");
	if (!mkdtemp(f->d.dir) || chmod(f->d.dir, 0755) < 0)
		return -1;
	snprintf(f->d.sock, sizeof(f->d.sock), "%s/sock", f->d.dir);
	snprintf(f->d.log, sizeof(f->d.log), "%s/daemon.log", f->d.dir);
	snprintf(f->notify, sizeof(f->notify), "%s/notify", f->d.dir);
	/* The socket unit: a listening socket, FileDescriptorName=refpaged. */
	f->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	strcpy(sa.sun_path, f->d.sock);
	if (f->listen_fd < 0 || bind(f->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(f->listen_fd, 128) < 0)
		return -1;
	f->st.sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	strcpy(sa.sun_path, f->notify);
	if (f->st.sock < 0 || bind(f->st.sock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    setsockopt(f->st.sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
		return -1;
	pthread_mutex_init(&f->st.lock, NULL);
	if (pthread_create(&f->st.th, NULL, store_main, &f->st))
		return -1;
	f->ld.child = -1;
	signal(SIGALRM, on_alarm);
	alarm(120);
	*state = f;
	return 0;
}

/* Start refpaged as systemd would: LISTEN_FDS = the listener and the
 * store's contents, named; $NOTIFY_SOCKET; --fd-store. Through posix_spawn
 * (no fork event: a vfork-style child shares our mm) and a shell that
 * puts its own pid in LISTEN_PID before exec'ing setpriv, which ties the
 * daemon's life to ours. Returns once READY=1 came. */
static void sfx_start_args(struct sfx *f, const char *const *extra)
{
	int high[STORE_MAX + 1], n = 0;
	char names[STORE_MAX * 33 + 16] = "refpaged", env_fds[32], env_names[sizeof(names) + 32],
				    env_notify[160], setpriv[] = "/usr/bin/setpriv";
	const char *envp[256];
	int ne = 0, ready0 = atomic_load(&f->st.ready);

	high[n++] = fcntl(f->listen_fd, F_DUPFD_CLOEXEC, 1000);
	pthread_mutex_lock(&f->st.lock);
	for (int i = 0; i < f->st.n; i++) {
		high[n++] = fcntl(f->st.e[i].fd, F_DUPFD_CLOEXEC, 1000);
		strcat(names, ":");
		strcat(names, f->st.e[i].name);
	}
	pthread_mutex_unlock(&f->st.lock);
	snprintf(env_fds, sizeof(env_fds), "LISTEN_FDS=%d", n);
	snprintf(env_names, sizeof(env_names), "LISTEN_FDNAMES=%s", names);
	snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", f->notify);
	for (char **e = environ; *e && ne < 250; e++)
		if (strncmp(*e, "LISTEN_", 7) && strncmp(*e, "NOTIFY_SOCKET=", 14))
			envp[ne++] = *e;
	envp[ne++] = env_fds;
	envp[ne++] = env_names;
	envp[ne++] = env_notify;
	envp[ne] = NULL;
	const char *argv[16] = { "/bin/sh",
				 "-c",
				 "export LISTEN_PID=$$; exec \"$0\" --pdeathsig KILL -- \"$@\"",
				 setpriv,
				 h_daemon_prog(),
				 "--fd-store",
				 "--log-level",
				 "debug",
				 "--workers",
				 "2" };
	for (int i = 0, k = 10; extra && extra[i] && k < 15; i++)
		argv[k++] = extra[i];
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, f->d.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	for (int i = 0; i < n; i++)
		posix_spawn_file_actions_adddup2(&fa, high[i], 3 + i);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3 + n);
	fflush(NULL);
	int e = posix_spawn(&f->d.pid, argv[0], &fa, NULL, (char *const *)argv,
			    (char *const *)envp);
	posix_spawn_file_actions_destroy(&fa);
	for (int i = 0; i < n; i++)
		close(high[i]);
	assert_int_equal(e, 0);
	double end = h_now() + H_DEADLINE_S * 2;
	while (atomic_load(&f->st.ready) == ready0) {
		if (h_now() > end || waitpid(f->d.pid, NULL, WNOHANG) == f->d.pid) {
			h_daemon_dump_log(&f->d, 0);
			fail_msg("refpaged with the fd store did not say READY=1");
		}
		usleep(2000);
	}
}

static void sfx_start(struct sfx *f)
{
	sfx_start_args(f, NULL);
}

static void sfx_kill(struct sfx *f)
{
	kill(f->d.pid, SIGKILL);
	h_reap(f->d.pid, H_DEADLINE_S);
	f->d.pid = 0;
}

/* A client (us: 16 threads) and a fork child faulting, served. */
static void sfx_clients(struct sfx *f, int nthreads)
{
	sfx_start(f);
	assert_int_equal(rp_connect_opts(f->d.sock, RP_CONNECT_UFFD, &f->c), 0);
	ld_start(&f->ld, f->c, nthreads, 1);
	assert_int_equal(h_wait_until(ld_flowing, &f->ld, H_DEADLINE_S), 0);
}

static int sfx_teardown(void **state)
{
	struct sfx *f = *state;

	if (!f)
		return 0;
	if (f->ld.sh) {
		/* Our threads must not wait on a uffd the store keeps once the
		 * daemon is gone. */
		atomic_store(&f->ld.sh->lenient, 1);
		ld_stop(&f->ld);
		ld_free(&f->ld);
	}
	if (f->d.pid) {
		kill(f->d.pid, SIGTERM);
		int st = h_reap(f->d.pid, H_DEADLINE_S);
		if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st))
			f->ok = 0;
	}
	if (!f->ok)
		h_daemon_dump_log(&f->d, 0);
	atomic_store(&f->st.stop, 1);
	pthread_join(f->st.th, NULL);
	for (int i = 0; i < f->st.n; i++)
		close(f->st.e[i].fd);
	close(f->st.sock);
	close(f->listen_fd);
	if (f->c)
		rp_disconnect(f->c);
	if (!getenv("RP_ITEST_KEEP")) {
		unlink(f->d.sock);
		unlink(f->notify);
		unlink(f->d.log);
		rmdir(f->d.dir);
	}
	free(f);
	*state = NULL;
	alarm(0);
	return 0;
}

static int log_has(struct sfx *f, const char *needle)
{
	return h_daemon_log_has(&f->d, needle);
}

static uint64_t stat_of(rp_client *c, const char *name)
{
	struct h_stats s;

	assert_int_equal(h_stats_read(c, &s), 0);
	return h_stat(&s, name);
}

/* SIGKILL, a pause with the threads faulting into the void, a restart:
 * nothing lost, nothing answered with zeros, no reconnection. */
static void test_store_kill(void **state)
{
	struct sfx *f = *state;

	sfx_clients(f, LD_MAX_THREADS);
	uint64_t faults = stat_of(f->c, "faults");
	assert_int_equal(stat_of(f->c, "processes"), 2);
	assert_true(store_get(&f->st, "snap") >= 0);
	assert_int_equal(store_count(&f->st, 'c'), 1);
	assert_int_equal(store_count(&f->st, 'u'), 2);
	h_daemon_mark_log(&f->d);
	struct load_alive mon;
	alive_start(&mon, f->c);
	for (int k = 0; k < 3; k++) {
		double t0 = h_now();
		sfx_kill(f);
		usleep(200000); /* faults pile up: nobody reads the uffds the store holds */
		sfx_start(f);
		double down = (h_now() - t0) * 1e3;
		ld_wait_progress(&f->ld);
		ld_assert_good(&f->ld);
		assert_int_equal(rp_alive(f->c), 1);
		uint64_t now = stat_of(f->c, "faults");
		if (now < faults)
			fail_msg("kill %d: faults went back from %llu to %llu", k,
				 (unsigned long long)faults, (unsigned long long)now);
		faults = now;
		assert_int_equal(stat_of(f->c, "processes"), 2);
		assert_int_equal(stat_of(f->c, "ev_fork"), 1);
		printf("  kill %d: down %.0f ms, slowest first touch so far %.1f ms\n", k, down,
		       (double)atomic_load(&f->ld.sh->side[0].max_ns) / 1e6);
	}
	alive_stop(&mon);
	assert_true(log_has(f, "restore: from systemd, journal generation"));
	assert_false(log_has(f, "dropped;"));
	assert_false(log_has(f, "client up"));
	/* What goes away leaves the store: a connection, a fork child. */
	int s = h_dial(f->d.sock);
	assert_true(s >= 0);
	wait_store_count(&f->st, 'c', 2);
	close(s);
	wait_store_count(&f->st, 'c', 1);
	/* A fault that came during the kill waited for the restart. */
	assert_true(atomic_load(&f->ld.sh->side[0].max_ns) > 100000000ull);
	assert_int_equal(atomic_load(&f->ld.sh->side[0].zeros), 0);
	ld_stop(&f->ld);
	ld_assert_good(&f->ld);
	wait_store_count(&f->st, 'u', 1);
	f->ok = 1;
}

struct bg_map {
	rp_client *c;
	uint32_t id;
	uint8_t *p;
};

static void *bg_map_main(void *arg)
{
	struct bg_map *b = arg;

	b->p = rp_map(b->c, NULL, 16 * PAGE, RW, 0, b->id);
	return NULL;
}

/* A request in flight when the daemon dies is neither lost nor done twice:
 * the daemon takes a request off its socket only once it has answered it,
 * and the journal keeps its last answer (daemon/session.c). */
static void test_store_in_flight(void **state)
{
	static const char *const die_answered[] = { "--debug-die-answered", "3", NULL };
	static const char *const die_peeked[] = { "--debug-die-peeked", "1", NULL };
	struct sfx *f = *state;
	uint32_t id;
	int st;

	/* Requests: HELLO, TEMPLATE_FILL, MAP; the daemon dies having answered
	 * the MAP, with the MAP still on the socket. */
	sfx_start_args(f, die_answered);
	assert_int_equal(rp_connect_opts(f->d.sock, RP_CONNECT_UFFD, &f->c), 0);
	assert_int_equal(rp_template_fill(f->c, 0xAA, &id), 0);
	uint8_t *p = rp_map(f->c, NULL, 16 * PAGE, RW, 0, id);
	assert_ptr_not_equal(p, MAP_FAILED);
	st = h_reap(f->d.pid, H_DEADLINE_S);
	assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 99);
	f->d.pid = 0;
	h_daemon_mark_log(&f->d);
	sfx_start(f);
	/* The next daemon finds the MAP again and answers it again, once. */
	double end = h_now() + H_DEADLINE_S;
	while (!log_has(f, "MAP seq") && h_now() < end)
		usleep(2000);
	assert_true(log_has(f, "was answered before the restart: answering again"));
	assert_int_equal(h_first_not(p, 16 * PAGE, 0xAA), -1);
	/* The library skips the answer it had already. */
	uint8_t *q = rp_map(f->c, NULL, 16 * PAGE, RW, 0, id);
	assert_ptr_not_equal(q, MAP_FAILED);
	assert_int_equal(h_first_not(q, 16 * PAGE, 0xAA), -1);
	assert_int_equal(stat_of(f->c, "ranges"), 2);
	assert_int_equal(rp_alive(f->c), 1);

	/* The next daemon dies having read a MAP, before doing it: the client
	 * waits, and the daemon after does it. */
	sfx_kill(f);
	sfx_start_args(f, die_peeked);
	struct bg_map b = { f->c, id, NULL };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, bg_map_main, &b), 0);
	st = h_reap(f->d.pid, H_DEADLINE_S);
	assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 99);
	f->d.pid = 0;
	usleep(100000); /* still waiting, for nobody */
	sfx_start(f);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_ptr_not_equal(b.p, MAP_FAILED);
	assert_int_equal(h_first_not(b.p, 16 * PAGE, 0xAA), -1);
	assert_int_equal(stat_of(f->c, "ranges"), 3);
	assert_int_equal(rp_alive(f->c), 1);
	f->ok = 1;
}

enum damage {
	TORN_TAIL,
	CORRUPT_IMAGE,
	TRUNCATED,
	UNKNOWN_VERSION,
	CHILD_GONE,
	NOT_A_UFFD,
	CLIENT_NOT_A_UFFD
};

struct damage_row {
	const char *name;
	enum damage what;
	const char *log; /* what the restarted daemon must say */
	int drops_all;   /* the journal is lost: every client is let go */
};

static const struct damage_row damage_rows[] = {
	{ "last record torn", TORN_TAIL, "the journal ends with torn record", 0 },
	{ "image corrupt", CORRUPT_IMAGE, "the journal is unusable", 1 },
	{ "truncated memfd", TRUNCATED, "the journal is unusable: truncated", 1 },
	{ "unknown version", UNKNOWN_VERSION, "the journal is format version 999", 1 },
	{ "fork child gone", CHILD_GONE, "the process is gone; released", 0 },
	{ "not a uffd", NOT_A_UFFD, "not a userfaultfd; dropped", 0 },
	/* The client's own: its connection is closed, and leaves the store
	 * (or it would never see the end of file). */
	{ "the client's uffd not a uffd", CLIENT_NOT_A_UFFD, "its address space (u", 1 },
};

/* Where the journal stands, as a reader sees it. */
static void journal_info(int snap, struct jnl_info *info)
{
	static const struct jnl_callbacks none;

	assert_int_equal(jnl_read(snap, &none, NULL, info), JNL_OK);
	printf("  generation %llu in slot %d: image %llu bytes, %llu records\n",
	       (unsigned long long)info->gen, info->slot, (unsigned long long)info->image_len,
	       (unsigned long long)info->records);
}

static void flip(int snap, uint64_t off)
{
	uint8_t b;

	assert_int_equal(pread(snap, &b, 1, (off_t)off), 1);
	b ^= 0x40;
	assert_int_equal(pwrite(snap, &b, 1, (off_t)off), 1);
}

/* The last record (the reply of the last request: nothing served depends
 * on it) is torn, as a crash in its pwrite would leave it. */
static void tear_tail(int snap)
{
	struct jnl_info info;

	journal_info(snap, &info);
	assert_true(info.records > 0);
	flip(snap, info.tail - 1);
	jnl_info_free(&info);
}

static void corrupt_image(int snap)
{
	struct jnl_info info;

	journal_info(snap, &info);
	flip(snap, JNL_IMAGE_OFF(info.slot) + info.image_len / 2);
	jnl_info_free(&info);
}

static void do_damage(struct sfx *f, const struct damage_row *row)
{
	int snap = store_get(&f->st, "snap");
	uint32_t v = 999;
	char name[32];

	assert_true(snap >= 0);
	switch (row->what) {
	case TORN_TAIL:
		tear_tail(snap);
		break;
	case CORRUPT_IMAGE:
		corrupt_image(snap);
		break;
	case TRUNCATED:
		assert_int_equal(ftruncate(snap, JNL_PAGE), 0);
		break;
	case UNKNOWN_VERSION:
		assert_int_equal(
			pwrite(snap, &v, sizeof(v), offsetof(struct jnl_file_hdr, version)), 4);
		break;
	case CHILD_GONE:
		kill(f->ld.child, SIGKILL);
		assert_true(h_reap(f->ld.child, H_DEADLINE_S) != -1);
		f->ld.child = -1;
		break;
	case NOT_A_UFFD:
	case CLIENT_NOT_A_UFFD:
		/* The child's (or the client's) uffd goes (its faults fall
		 * back to the kernel), an eventfd takes its name. */
		assert_int_equal(store_uffd(&f->st, row->what == NOT_A_UFFD, name, sizeof(name)),
				 0);
		pthread_mutex_lock(&f->st.lock);
		store_remove(&f->st, name);
		store_add(&f->st, name, eventfd(0, EFD_CLOEXEC));
		pthread_mutex_unlock(&f->st.lock);
		break;
	}
}

/* Every thread of ours has read zeros since: none is stuck on a uffd. */
static int parent_sees_zeros(void *arg)
{
	return atomic_load(&((struct sfx *)arg)->ld.sh->side[0].zeros) >= LD_MAX_THREADS;
}

static int not_alive(void *arg)
{
	return rp_alive(((struct sfx *)arg)->c) == 0;
}

static void check_dropped_all(struct sfx *f)
{
	assert_int_equal(h_wait_until(not_alive, f, H_DEADLINE_S), 0);
	assert_int_equal(h_wait_until(parent_sees_zeros, f, H_DEADLINE_S), 0);
	ld_wait_progress(&f->ld);
	/* The library connects again on the next calls; the daemon serves. */
	uint32_t id;
	int r = rp_template_fill(f->c, 0x5A, &id);
	if (r == -ENOTCONN)
		r = rp_template_fill(f->c, 0x5A, &id);
	assert_int_equal(r, 0);
	uint8_t *p = rp_map(f->c, NULL, 8 * PAGE, RW, 0, id);
	assert_ptr_not_equal(p, MAP_FAILED);
	assert_int_equal(h_first_not(p, 8 * PAGE, 0x5A), -1);
	assert_int_equal(rp_unmap(f->c, p, 8 * PAGE), 0);
	assert_int_equal(rp_alive(f->c), 1);
}

static void test_store_damage(void **state)
{
	struct sfx *f = *state;

	for (size_t k = 0; k < ARRAY_LEN(damage_rows); k++) {
		const struct damage_row *row = &damage_rows[k];
		printf("  case: %s\n", row->name);
		if (k) {
			/* A fresh start: no daemon, an empty store. */
			sfx_teardown(state);
			assert_int_equal(sfx_setup(state), 0);
			f = *state;
		}
		sfx_clients(f, 4);
		if (row->what == TORN_TAIL) {
			/* One more request, whose records come last. */
			uint32_t id;
			assert_int_equal(rp_template_fill(f->c, 0x77, &id), 0);
		}
		h_daemon_mark_log(&f->d);
		sfx_kill(f);
		if (row->drops_all || row->what == NOT_A_UFFD)
			atomic_store(&f->ld.sh->lenient, 1);
		do_damage(f, row);
		sfx_start(f);
		if (!log_has(f, row->log))
			fail_msg("%s: the log does not say '%s'", row->name, row->log);
		if (row->drops_all) {
			if (row->what == CLIENT_NOT_A_UFFD)
				wait_store_count(&f->st, 'c', 0);
			check_dropped_all(f);
		} else {
			ld_wait_progress(&f->ld);
			assert_int_equal(rp_alive(f->c), 1);
			/* Our own pages were served throughout. */
			assert_int_equal(atomic_load(&f->ld.sh->side[0].zeros), 0);
			assert_int_equal(stat_of(f->c, "processes"),
					 row->what == TORN_TAIL ? 2 : 1);
		}
		ld_assert_good(&f->ld);
		f->ok = 1;
	}
}

/* --- what the fd store costs a request ---------------------------------------- */

#define COST_PAIRS 300

/* Microseconds per MAP + UNMAP of 16 pages, with n other ranges registered
 * (each change is appended to the journal before its reply). */
static double map_cost_us(rp_client *c, int n)
{
	uint8_t **keep = calloc((size_t)n, sizeof(*keep));
	uint32_t id;

	assert_non_null(keep);
	assert_int_equal(rp_template_fill(c, 0xAA, &id), 0);
	for (int i = 0; i < n; i++) {
		keep[i] = rp_map(c, NULL, PAGE, RW, 0, id);
		assert_ptr_not_equal(keep[i], MAP_FAILED);
	}
	double t0 = h_now();
	for (int i = 0; i < COST_PAIRS; i++) {
		uint8_t *p = rp_map(c, NULL, 16 * PAGE, RW, 0, id);
		assert_ptr_not_equal(p, MAP_FAILED);
		assert_int_equal(rp_unmap(c, p, 16 * PAGE), 0);
	}
	double us = (h_now() - t0) * 1e6 / COST_PAIRS;
	for (int i = 0; i < n; i++)
		assert_int_equal(rp_unmap(c, keep[i], PAGE), 0);
	free(keep);
	return us;
}

/* Informational; RP_COST_RANGES=N for another state size (default 1000). */
static void test_store_cost(void **state)
{
	struct sfx *f = *state;
	struct h_daemon plain;
	const char *env = getenv("RP_COST_RANGES");
	int n = env ? atoi(env) : 1000;
	rp_client *c;

	assert_int_equal(h_daemon_start_args(&plain, two_workers), 0);
	assert_int_equal(rp_connect_opts(plain.sock, RP_CONNECT_UFFD, &c), 0);
	double without = map_cost_us(c, n);
	rp_disconnect(c);
	assert_int_equal(h_daemon_destroy(&plain), 0);
	sfx_start(f);
	assert_int_equal(rp_connect_opts(f->d.sock, RP_CONNECT_UFFD, &f->c), 0);
	double with = map_cost_us(f->c, n);
	printf("  MAP + UNMAP (16 pages) with %d other ranges: %.1f us without the fd store, %.1f us "
	       "with it\n",
	       n, without, with);
	f->ok = 1;
}

/* --- the top of user space ------------------------------------------------------- */

/* The kernel's top of user space (exclusive: TASK_SIZE, one guard page
 * under 2^47 or 2^56), the one the daemon takes from it (daemon/uffd.c). */
#define TOP_4LEVEL ((1ull << 47) - PAGE)
#define TOP_5LEVEL ((1ull << 56) - PAGE)
#define TOP_PAGES 4

#if defined(__SANITIZE_THREAD__)
#define RP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RP_TEST_TSAN 1
#endif
#endif

/* Whether this machine maps above 128 TiB (5-level paging: an la57 CPU
 * and kernel); if not, why. */
static int la57_usable(char *why, size_t n)
{
#ifdef RP_TEST_TSAN
	snprintf(why, n, "ThreadSanitizer's shadow layout has no application memory above 2^47");
	return 0;
#else
	void *want = (void *)(1ull << 48);
	void *p = mmap(want, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == want) {
		munmap(p, PAGE);
		return 1;
	}
	if (p != MAP_FAILED)
		munmap(p, PAGE);
	snprintf(why, n, "no 5-level paging here (mmap at 2^48: %s): nothing maps above 128 TiB",
		 p == MAP_FAILED ? strerror(errno) : "placed elsewhere");
	return 0;
#endif
}

/* TOP_PAGES refpage pages as high as they fit under top (the stack or
 * the vdso may hold the very last ones). */
static uint8_t *map_at_top(rp_client *c, uint32_t id, uint64_t top)
{
	size_t len = TOP_PAGES * PAGE;

	for (uint64_t end = top; end > top - 4096 * PAGE; end -= PAGE) {
		void *want = (void *)(uintptr_t)(end - len);
		void *p = rp_map(c, want, len, RW, MAP_FIXED_NOREPLACE, id);
		if (p == want)
			return p;
		if (p != MAP_FAILED)
			rp_unmap(c, p, len);
	}
	fail_msg("nothing could be mapped in the last 16 MiB under 0x%llx",
		 (unsigned long long)top);
	return NULL;
}

/* A mapping ending at the top of user space: pages touched before a
 * SIGKILL keep what was written, the others read the template after the
 * restart, first touched then (a fault there is answered and woken: the
 * restored daemon has the same top as the kernel). */
static void top_across_restart(struct sfx *f, uint64_t top)
{
	uint32_t id;

	sfx_start(f);
	assert_int_equal(rp_connect_opts(f->d.sock, RP_CONNECT_UFFD, &f->c), 0);
	assert_int_equal(rp_template_fill(f->c, 0xa5, &id), 0);
	uint8_t *p = map_at_top(f->c, id, top);
	printf("  %d pages at 0x%llx-0x%llx (top 0x%llx)\n", TOP_PAGES,
	       (unsigned long long)(uintptr_t)p,
	       (unsigned long long)(uintptr_t)p + TOP_PAGES * PAGE, (unsigned long long)top);
	assert_int_equal(p[0], 0xa5);
	p[PAGE] = 0x11; /* page 1: filled, then written */
	sfx_kill(f);
	sfx_start(f);
	assert_true(log_has(f, "restore: from systemd, journal generation"));
	for (int i = 1; i < TOP_PAGES; i++) {
		uint8_t *pg = p + (size_t)i * PAGE;
		assert_int_equal(pg[PAGE - 1], 0xa5);
		assert_int_equal(pg[0], i == 1 ? 0x11 : 0xa5);
	}
	assert_int_equal(rp_alive(f->c), 1);
	assert_int_equal(rp_unmap(f->c, p, TOP_PAGES * PAGE), 0);
	assert_int_equal(stat_of(f->c, "unknown_faults"), 0);
	f->ok = 1;
}

static void test_store_top_4level(void **state)
{
	top_across_restart(*state, TOP_4LEVEL);
}

static void test_store_top_5level(void **state)
{
	char why[160];

	if (!la57_usable(why, sizeof(why))) {
		((struct sfx *)*state)->ok = 1;
		printf("skipped: %s\n", why);
		skip();
	}
	top_across_restart(*state, TOP_5LEVEL);
}

/* itest_restart [TEST]: one test (a cmocka filter, e.g. test_store_kill). */
int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_upgrade_storm, setup_plain, fx_teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_refused, setup_bad_version,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_store_kill, sfx_setup, sfx_teardown),
		cmocka_unit_test_setup_teardown(test_store_damage, sfx_setup, sfx_teardown),
		cmocka_unit_test_setup_teardown(test_store_in_flight, sfx_setup, sfx_teardown),
		cmocka_unit_test_setup_teardown(test_store_cost, sfx_setup, sfx_teardown),
		cmocka_unit_test_setup_teardown(test_store_top_4level, sfx_setup, sfx_teardown),
		cmocka_unit_test_setup_teardown(test_store_top_5level, sfx_setup, sfx_teardown),
	};
	char why[256];

	if (!h_uffd_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	if (geteuid() != 0) {
		printf("SKIP: not root: the daemon needs CAP_SYS_PTRACE for fork events\n");
		return H_EXIT_SKIP;
	}
	/* Upgraded daemons are children of their exec helper; when it goes,
	 * they come back to us, to be reaped. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	/* Run alone (its own ctest), the 5-level test says "skipped" to ctest
	 * too where the machine has no 5-level paging. */
	if (argc > 1 && !strcmp(argv[1], "test_store_top_5level") &&
	    !la57_usable(why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		return H_EXIT_SKIP;
	}
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests_name("restart", tests, NULL, NULL);
}
