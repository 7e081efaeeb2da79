/* refpaged: serves reference pages to client processes over userfaultfd.
 *
 * Start-up order: parse the command line; take what a previous daemon left
 * (systemd's stored descriptors, or those of the daemon handing over on an
 * upgrade); take the listening socket; drop capabilities; fork the exec
 * helper (handover.c); start the workers; rebuild the state (restore.c)
 * and, on an upgrade, take over; enter the seccomp sandbox; tell systemd
 * READY=1. Shutdown (SIGTERM/SIGINT): say STOPPING=1, close every client
 * (their pages fall back to ordinary anonymous memory, no thread is left
 * waiting), stop the workers; with the fd store, leave every client to it
 * instead (handover_detach). SIGHUP: upgrade in place. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "handover.h"
#include "listener.h"
#include "log.h"
#include "persist.h"
#include "proto.h"
#include "restore.h"
#include "sandbox.h"
#include "session.h"
#include "snapshot.h"
#include "stats.h"
#include "template.h"
#include "worker.h"

#define STATUS_EVERY_S 2.0

/* --no-sandbox; --debug-forbidden-syscall and --debug-stall-after (tests
 * only, not in --help). */
static int no_sandbox, debug_forbidden_syscall;
static int debug_stall_after = -1;
/* --fd-store; --handover FD (the exec helper passes it); for tests:
 * --debug-snapshot-version N (write a format no binary reads) and
 * --debug-die-peeked/--debug-die-answered N (daemon.h). */
static int fd_store, handover_fd = -1;
static uint32_t snapshot_version = SNAP_VERSION;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: refpaged [options]\n"
		"  --socket PATH         listen on PATH when no socket is passed in (by systemd, or by\n"
		"                        the previous daemon on an upgrade); default %s\n"
		"  --workers N           fault worker threads (default: online CPUs)\n"
		"  --log-level LEVEL     err|warning|notice|info|debug (default info)\n"
		"  --fault-around N      largest fill window in pages, 1 = off (default 16, max %u)\n"
		"  --poll-us N           busy-poll a client's uffd for N microseconds after a fault\n"
		"                        before sleeping; costs CPU (default 0: off)\n"
		"  --batch N             uffd messages taken per read (1 to %u, default %u)\n"
		"  --drain on|off        on each wake-up, read a uffd until it is empty (bounded) or\n"
		"                        once (default on)\n"
		"  --coalesce on|off     skip a fault on a page its batch already filled (default on)\n"
		"  --dontwake on|off     fill without waking, then wake each filled span once at the\n"
		"                        end of the batch (default off)\n"
		"  --max-connections N   connections in all (default 4096)\n"
		"  --max-templates N     template handles per connection (default 4096)\n"
		"  --max-store N         distinct templates in all (default 65536)\n"
		"  --max-ranges N        ranges per process (default 65536)\n"
		"  --max-bytes N         registered bytes per process (default 1 TiB)\n"
		"  --max-descendants N   processes in one client's fork tree (default 16384)\n"
		"  --uid-connections N   connections per uid (default 1024)\n"
		"  --uid-templates N     template handles per uid (default 16384)\n"
		"  --uid-ranges N        ranges per uid (default 1048576)\n"
		"  --uid-bytes N         registered bytes per uid (default 64 TiB)\n"
		"  --uid-processes N     served processes per uid, fork children included (default 32768)\n"
		"  --hello-timeout S     seconds a new connection may stay silent (default 10)\n"
		"  --fd-store            keep every client's descriptors and the state snapshot in systemd's\n"
		"                        fd store (FileDescriptorStoreMax=): a restart, even after SIGKILL,\n"
		"                        goes on serving the same clients\n"
		"  --no-sandbox          keep capabilities, no seccomp filter: for debugging only\n"
		"  --help, --version\n",
		PROTO_DEFAULT_SOCKET, TMPL_SLAB_PAGES, WORKER_MSG_BATCH, WORKER_MSG_BATCH);
}

/* A whole decimal number in [lo, hi] (digits only: no sign, no blank), or
 * exit with a clear message. */
static unsigned long long parse_num(const char *opt, const char *s, unsigned long long lo,
				    unsigned long long hi)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || !isdigit((unsigned char)s[0]) || *end || v < lo || v > hi) {
		fprintf(stderr, "refpaged: --%s: expected a number in [%llu, %llu], got '%s'\n", opt, lo,
			hi, s);
		exit(2);
	}
	return v;
}

/* "on" or "off", or exit with a clear message. */
static int parse_onoff(const char *opt, const char *s)
{
	if (strcmp(s, "on") == 0)
		return 1;
	if (strcmp(s, "off") == 0)
		return 0;
	fprintf(stderr, "refpaged: --%s: expected on or off, got '%s'\n", opt, s);
	exit(2);
}

static const char *onoff(int v)
{
	return v ? "on" : "off";
}

static const struct option opts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "workers", required_argument, NULL, 'w' },
	{ "log-level", required_argument, NULL, 'l' },
	{ "fault-around", required_argument, NULL, 'f' },
	{ "poll-us", required_argument, NULL, 'P' },
	{ "batch", required_argument, NULL, 'm' },
	{ "drain", required_argument, NULL, 'd' },
	{ "coalesce", required_argument, NULL, 'o' },
	{ "dontwake", required_argument, NULL, 'W' },
	{ "max-connections", required_argument, NULL, 'C' },
	{ "max-templates", required_argument, NULL, 'T' },
	{ "max-store", required_argument, NULL, 'S' },
	{ "max-ranges", required_argument, NULL, 'R' },
	{ "max-bytes", required_argument, NULL, 'B' },
	{ "max-descendants", required_argument, NULL, 'D' },
	{ "uid-connections", required_argument, NULL, 'c' },
	{ "uid-templates", required_argument, NULL, 't' },
	{ "uid-ranges", required_argument, NULL, 'r' },
	{ "uid-bytes", required_argument, NULL, 'b' },
	{ "uid-processes", required_argument, NULL, 'p' },
	{ "hello-timeout", required_argument, NULL, 'H' },
	{ "no-sandbox", no_argument, NULL, 'N' },
	{ "debug-forbidden-syscall", no_argument, NULL, 'X' },
	{ "debug-stall-after", required_argument, NULL, 'Y' },
	{ "fd-store", no_argument, NULL, 'F' },
	{ "handover", required_argument, NULL, 'O' },
	{ "debug-snapshot-version", required_argument, NULL, 'Z' },
	{ "debug-die-peeked", required_argument, NULL, 'K' },
	{ "debug-die-answered", required_argument, NULL, 'A' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

static void parse_args(int argc, char **argv, struct rp_config *c)
{
	int o, lvl;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		const char *name = opts[0].name;
		for (const struct option *p = opts; p->name; p++)
			if (p->val == o)
				name = p->name;
		switch (o) {
		case 's': c->socket_path = optarg; break;
		case 'w': c->workers = (int)parse_num(name, optarg, 1, 256); break;
		case 'l':
			if ((lvl = log_parse_level(optarg)) < 0) {
				fprintf(stderr, "refpaged: --log-level: unknown level '%s'\n", optarg);
				exit(2);
			}
			log_set_level(lvl);
			break;
		case 'f': c->fault_around = (uint32_t)parse_num(name, optarg, 1, TMPL_SLAB_PAGES); break;
		case 'P': c->poll_us = (uint32_t)parse_num(name, optarg, 0, 100000); break;
		case 'm': c->batch = (uint32_t)parse_num(name, optarg, 1, WORKER_MSG_BATCH); break;
		case 'd': c->drain = parse_onoff(name, optarg); break;
		case 'o': c->coalesce = parse_onoff(name, optarg); break;
		case 'W': c->dontwake = parse_onoff(name, optarg); break;
		case 'C': c->lim.connections = (uint32_t)parse_num(name, optarg, 1, 1u << 20); break;
		case 'T': c->lim.templates = (uint32_t)parse_num(name, optarg, 1, 1u << 20); break;
		case 'S': c->lim.store = (uint32_t)parse_num(name, optarg, 1, 1u << 24); break;
		case 'R': c->lim.ranges = (uint32_t)parse_num(name, optarg, 1, 1u << 24); break;
		case 'B': c->lim.bytes = parse_num(name, optarg, 4096, 1ull << 56); break;
		case 'D': c->lim.descendants = (uint32_t)parse_num(name, optarg, 1, 1u << 24); break;
		case 'c': c->lim.per_uid.max[ACCT_CONNECTIONS] = parse_num(name, optarg, 1, 1u << 20); break;
		case 't': c->lim.per_uid.max[ACCT_TEMPLATES] = parse_num(name, optarg, 1, 1u << 24); break;
		case 'r': c->lim.per_uid.max[ACCT_RANGES] = parse_num(name, optarg, 1, 1u << 30); break;
		case 'b': c->lim.per_uid.max[ACCT_BYTES] = parse_num(name, optarg, 4096, 1ull << 56); break;
		case 'p': c->lim.per_uid.max[ACCT_PROCESSES] = parse_num(name, optarg, 1, 1u << 24); break;
		case 'H': c->lim.hello_timeout_s = (uint32_t)parse_num(name, optarg, 1, 3600); break;
		case 'N': no_sandbox = 1; break;
		case 'X': debug_forbidden_syscall = 1; break;
		case 'Y': debug_stall_after = (int)parse_num(name, optarg, 0, 3600); break;
		case 'F': fd_store = 1; break;
		case 'O': handover_fd = (int)parse_num(name, optarg, 3, INT_MAX); break;
		case 'Z': snapshot_version = (uint32_t)parse_num(name, optarg, 0, UINT32_MAX); break;
		case 'K': c->die_peeked = (uint32_t)parse_num(name, optarg, 1, UINT32_MAX); break;
		case 'A': c->die_answered = (uint32_t)parse_num(name, optarg, 1, UINT32_MAX); break;
		case 'h': usage(stdout); exit(0);
		case 'V': printf("refpaged %s (protocol %u)\n", RP_VERSION, PROTO_VERSION); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "refpaged: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
}

struct worker *daemon_pick_worker(struct rp_daemon *d)
{
	struct worker *best = &d->workers[d->next_worker++ % (unsigned)d->nworkers];

	for (int i = 0; i < d->nworkers; i++)
		if (atomic_load(&d->workers[i].nmms) < atomic_load(&best->nmms))
			best = &d->workers[i];
	return best;
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct rp_daemon *d = w->data;

	(void)revents;
	unsigned long clients = (unsigned long)stat_get(PROTO_STAT_CLIENTS),
		      procs = (unsigned long)stat_get(PROTO_STAT_PROCESSES);
	if (persist_fdstore(d))
		log_notice("signal %d: stopping; %lu clients (%lu processes) stay in the fd store: "
			   "a restart resumes them, a stop (systemctl stop) releases them and "
			   "their untouched refpages read zeros from then on",
			   w->signum, clients, procs);
	else
		log_notice("signal %d: stopping; %lu clients (%lu processes) released: their "
			   "untouched refpages read zeros from now on",
			   w->signum, clients, procs);
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
	d->stopping = 1;
	ev_break(loop, EVBREAK_ALL);
}

static void on_upgrade(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop;
	(void)revents;
	handover_request(w->data, -1, 0, 0);
}

/* Watchdog pings and STATUS= come from the main loop itself: a wedged
 * loop stops both. */
static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	static uint64_t last_clients = UINT64_MAX, last_faults = UINT64_MAX;
	uint64_t clients = stat_get(PROTO_STAT_CLIENTS), faults = stat_get(PROTO_STAT_FAULTS);

	(void)loop;
	(void)t;
	(void)revents;
	if (clients != last_clients || faults != last_faults) {
		sd_notifyf(0, "STATUS=%llu clients, %llu processes, %llu faults served",
			   (unsigned long long)clients,
			   (unsigned long long)stat_get(PROTO_STAT_PROCESSES),
			   (unsigned long long)faults);
		last_clients = clients;
		last_faults = faults;
	}
	sd_notify(0, "WATCHDOG=1");
}

/* --debug-stall-after: the main loop deadlocks for good (a wait on a
 * condition nobody signals: futex, which the sandbox allows), as a bug
 * would wedge it; watchdog pings stop, and tests/systemd checks that
 * systemd restarts us. */
static void on_debug_stall(struct ev_loop *loop, ev_timer *t, int revents)
{
	static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
	static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

	(void)loop;
	(void)t;
	(void)revents;
	log_warn("--debug-stall-after: stalling the main loop");
	pthread_mutex_lock(&m);
	for (;;)
		pthread_cond_wait(&never, &m);
}

static void setup_loop(struct rp_daemon *d)
{
	uint64_t usec = 0;
	double every = STATUS_EVERY_S;

	ev_signal_init(&d->sigterm, on_stop, SIGTERM);
	ev_signal_init(&d->sigint, on_stop, SIGINT);
	ev_signal_init(&d->sighup, on_upgrade, SIGHUP);
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	ev_signal_start(d->loop, &d->sigterm);
	ev_signal_start(d->loop, &d->sigint);
	ev_signal_start(d->loop, &d->sighup);
	if (sd_watchdog_enabled(0, &usec) > 0 && usec / 2e6 < every)
		every = usec / 2e6;
	ev_timer_init(&d->watchdog, on_tick, 0., every);
	ev_timer_again(d->loop, &d->watchdog);
}

/* Every served process costs a descriptor (its uffd): take all the
 * descriptors the hard limit allows. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("cannot raise the descriptor limit: %s", strerror(errno));
	}
}

/* Everything is set up: from here on only the syscalls of serving. */
static int enter_sandbox(struct rp_daemon *d)
{
	struct sandbox_opts o = {
		.notify = getenv("NOTIFY_SOCKET") != NULL,
		.unlink_socket = d->listen_owned,
		.snapshot_fd = persist_fd(d),
	};
	int r;

	if (no_sandbox) {
		log_warn("--no-sandbox: running without the seccomp filter");
		return 0;
	}
	if ((r = sandbox_enter(&o)) < 0)
		log_err("cannot enter the sandbox: %s", strerror(-r));
	return r;
}

static void shutdown_all(struct rp_daemon *d, int status)
{
	/* With the fd store, nothing of a client's is closed: see handover.h. */
	if (persist_fdstore(d))
		handover_detach(d, status);
	listener_close(d);
	while (d->sessions)
		session_close(d->sessions, NULL);
	workers_stop(d);
	persist_fini(d);
	tmpl_store_fini(&d->tmpls);
}

static int init_persist(struct rp_daemon *d)
{
	const char *env = getenv("FDSTORE"); /* systemd >= 254: FileDescriptorStoreMax= */
	struct persist_opts o = { .version = snapshot_version };

	o.fdstore = fd_store || (env && atoi(env) > 0);
	if (o.fdstore && !getenv("NOTIFY_SOCKET")) {
		log_warn("--fd-store: no $NOTIFY_SOCKET, so no fd store: a restart loses every client");
		o.fdstore = 0;
	}
	return persist_init(d, &o);
}

/* What a previous daemon left: the old daemon's on an upgrade, else
 * whatever systemd passes (its socket, and the fd store's contents). */
static int inherit(struct fdset *fds, int *snap_fd)
{
	if (handover_fd >= 0) {
		fds->from = "the previous daemon";
		return handover_receive(handover_fd, fds, snap_fd);
	}
	fds->from = "systemd";
	int r = fdset_from_systemd(fds);
	if (r < 0)
		log_err("cannot take the descriptors systemd passed: %s", strerror(-r));
	*snap_fd = fdset_take(fds, PERSIST_SNAP_NAME);
	return 0;
}

/* Rebuild the state, and on an upgrade take over from the old daemon. */
static int take_over(struct rp_daemon *d, struct fdset *fds, int snap_fd)
{
	struct restore *rs = restore_run(d, fds, snap_fd, handover_fd >= 0);

	fdset_free(fds);
	if (handover_fd >= 0 && !rs)
		handover_refuse(handover_fd, -ECANCELED, "cannot rebuild the state");
	if (handover_fd >= 0 && (!rs || handover_commit(handover_fd) < 0))
		_exit(HANDOVER_EXIT_FAILED); /* the old daemon goes on: touch nothing */
	if (!rs)
		return -1;
	restore_finish(d, rs);
	return 0;
}

/* A handover can be refused until COMMIT; after, we are the daemon. */
static int fail_early(const char *why)
{
	if (handover_fd >= 0) {
		handover_refuse(handover_fd, -ECANCELED, why);
		_exit(HANDOVER_EXIT_FAILED);
	}
	return 1;
}

int main(int argc, char **argv)
{
	struct rp_daemon d = {
		.listen_fd = -1,
		.cfg = {
			.workers = (int)sysconf(_SC_NPROCESSORS_ONLN),
			.fault_around = 16,
			.batch = WORKER_MSG_BATCH,
			.drain = 1,
			.coalesce = 1,
			.lim = { .templates = 4096, .ranges = 65536, .bytes = 1ull << 40,
				 .store = 65536, .connections = 4096, .descendants = 16384,
				 .hello_timeout_s = 10,
				 .per_uid.max = { [ACCT_CONNECTIONS] = 1024, [ACCT_TEMPLATES] = 16384,
						  [ACCT_RANGES] = 1u << 20, [ACCT_BYTES] = 1ull << 46,
						  [ACCT_PROCESSES] = 32768 } },
		},
	};
	struct fdset fds = { 0 };
	int r, snap_fd = -1;
	/* getopt permutes argv: the exec helper gets it as it came. */
	char **args = calloc((size_t)argc + 1, sizeof(*args));

	for (int i = 0; args && i < argc; i++)
		args[i] = argv[i];
	parse_args(argc, argv, &d.cfg);
	if (d.cfg.workers < 1)
		d.cfg.workers = 1;
	acct_init(&d.cfg.lim.per_uid);
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);
	d.loop = ev_default_loop(EVFLAG_AUTO);
	if (!args || !d.loop || tmpl_store_init(&d.tmpls, d.cfg.lim.store) < 0 ||
	    init_persist(&d) < 0) {
		log_err("cannot initialise: out of memory");
		return fail_early("out of memory");
	}
	persist_loop_made(d.loop);
	if (inherit(&fds, &snap_fd) < 0)
		_exit(HANDOVER_EXIT_FAILED); /* the old daemon goes on */
	if (listener_open(&d, &fds) < 0)
		return fail_early("no listening socket");
	/* Before the first thread: each thread has its own capability sets. */
	if (!no_sandbox && (r = sandbox_drop_caps()) < 0) {
		log_err("cannot drop capabilities: %s", strerror(-r));
		listener_close(&d);
		return fail_early("cannot drop capabilities");
	}
	/* Single threaded still, and not yet in the sandbox. */
	handover_helper_start(argc, args);
	free(args);
	if ((r = workers_start(&d, d.cfg.workers)) < 0) {
		log_err("cannot start workers: %s", strerror(-r));
		listener_close(&d);
		return fail_early("cannot start workers");
	}
	if (take_over(&d, &fds, snap_fd) < 0) {
		shutdown_all(&d, 1);
		return 1;
	}
	setup_loop(&d);
	if (enter_sandbox(&d) < 0) {
		shutdown_all(&d, 1);
		return 1;
	}
	sd_notifyf(0, "READY=1\nSTATUS=serving, %d workers", d.nworkers);
	log_notice("refpaged %s ready: %d workers, fault-around %u pages, poll %u us, batch %u, "
		   "drain %s, coalesce %s, dontwake %s",
		   RP_VERSION, d.nworkers, d.cfg.fault_around, d.cfg.poll_us, d.cfg.batch,
		   onoff(d.cfg.drain), onoff(d.cfg.coalesce), onoff(d.cfg.dontwake));
	if (debug_forbidden_syscall)
		sandbox_forbidden_syscall();
	ev_timer stall;
	if (debug_stall_after >= 0) {
		ev_timer_init(&stall, on_debug_stall, debug_stall_after, 0.);
		ev_timer_start(d.loop, &stall);
	}
	ev_run(d.loop, 0);
	shutdown_all(&d, 0);
	log_notice("stopped");
	return 0;
}
