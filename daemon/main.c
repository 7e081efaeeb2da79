/* refpaged: serves reference pages to client processes over userfaultfd.
 *
 * Start-up order: parse the command line, take the listening socket, drop
 * capabilities, start the workers, enter the seccomp sandbox, then tell
 * systemd READY=1. Shutdown (SIGTERM/SIGINT): say STOPPING=1, close every
 * client (their pages fall back to ordinary anonymous memory, no thread is
 * left waiting), stop the workers. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "listener.h"
#include "log.h"
#include "proto.h"
#include "sandbox.h"
#include "session.h"
#include "stats.h"
#include "template.h"
#include "worker.h"

#define STATUS_EVERY_S 2.0

/* --no-sandbox; --debug-forbidden-syscall (tests only, not in --help). */
static int no_sandbox, debug_forbidden_syscall;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: refpaged [options]\n"
		"  --socket PATH         listen on PATH (default: systemd's socket, else %s)\n"
		"  --workers N           fault worker threads (default: online CPUs)\n"
		"  --log-level LEVEL     err|warning|notice|info|debug (default info)\n"
		"  --fault-around N      largest fill window in pages, 1 = off (default 16, max %u)\n"
		"  --poll-us N           busy-poll a client's uffd for N microseconds after a fault\n"
		"                        before sleeping; costs CPU (default 0: off)\n"
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
		"  --no-sandbox          keep capabilities, no seccomp filter: for debugging only\n"
		"  --help, --version\n",
		PROTO_DEFAULT_SOCKET, TMPL_SLAB_PAGES);
}

/* A whole decimal number in [lo, hi], or exit with a clear message. */
static unsigned long long parse_num(const char *opt, const char *s, unsigned long long lo,
				    unsigned long long hi)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
		fprintf(stderr, "refpaged: --%s: expected a number in [%llu, %llu], got '%s'\n", opt, lo,
			hi, s);
		exit(2);
	}
	return v;
}

static const struct option opts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "workers", required_argument, NULL, 'w' },
	{ "log-level", required_argument, NULL, 'l' },
	{ "fault-around", required_argument, NULL, 'f' },
	{ "poll-us", required_argument, NULL, 'P' },
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
	log_notice("signal %d: stopping; clients fall back to anonymous memory", w->signum);
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
	d->stopping = 1;
	ev_break(loop, EVBREAK_ALL);
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

static void setup_loop(struct rp_daemon *d)
{
	uint64_t usec = 0;
	double every = STATUS_EVERY_S;

	ev_signal_init(&d->sigterm, on_stop, SIGTERM);
	ev_signal_init(&d->sigint, on_stop, SIGINT);
	d->sigterm.data = d->sigint.data = d;
	ev_signal_start(d->loop, &d->sigterm);
	ev_signal_start(d->loop, &d->sigint);
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

static void shutdown_all(struct rp_daemon *d)
{
	listener_close(d);
	while (d->sessions)
		session_close(d->sessions, NULL);
	workers_stop(d);
	tmpl_store_fini(&d->tmpls);
}

int main(int argc, char **argv)
{
	struct rp_daemon d = {
		.listen_fd = -1,
		.cfg = {
			.workers = (int)sysconf(_SC_NPROCESSORS_ONLN),
			.fault_around = 16,
			.lim = { .templates = 4096, .ranges = 65536, .bytes = 1ull << 40,
				 .store = 65536, .connections = 4096, .descendants = 16384,
				 .hello_timeout_s = 10,
				 .per_uid.max = { [ACCT_CONNECTIONS] = 1024, [ACCT_TEMPLATES] = 16384,
						  [ACCT_RANGES] = 1u << 20, [ACCT_BYTES] = 1ull << 46,
						  [ACCT_PROCESSES] = 32768 } },
		},
	};
	int r;

	parse_args(argc, argv, &d.cfg);
	if (d.cfg.workers < 1)
		d.cfg.workers = 1;
	acct_init(&d.cfg.lim.per_uid);
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);
	d.loop = ev_default_loop(EVFLAG_AUTO);
	if (!d.loop || tmpl_store_init(&d.tmpls, d.cfg.lim.store) < 0) {
		log_err("cannot initialise: out of memory");
		return 1;
	}
	if (listener_open(&d) < 0)
		return 1;
	/* Before the first thread: each thread has its own capability sets. */
	if (!no_sandbox && (r = sandbox_drop_caps()) < 0) {
		log_err("cannot drop capabilities: %s", strerror(-r));
		listener_close(&d);
		return 1;
	}
	if ((r = workers_start(&d, d.cfg.workers)) < 0) {
		log_err("cannot start workers: %s", strerror(-r));
		listener_close(&d);
		return 1;
	}
	setup_loop(&d);
	if (enter_sandbox(&d) < 0) {
		shutdown_all(&d);
		return 1;
	}
	sd_notifyf(0, "READY=1\nSTATUS=serving, %d workers", d.nworkers);
	log_notice("refpaged %s ready: %d workers, fault-around %u pages, poll %u us", RP_VERSION,
		   d.nworkers, d.cfg.fault_around, d.cfg.poll_us);
	if (debug_forbidden_syscall)
		sandbox_forbidden_syscall();
	ev_run(d.loop, 0);
	shutdown_all(&d);
	log_notice("stopped");
	return 0;
}
