/* refpaged: serves reference pages to client processes over userfaultfd.
 *
 * Start-up order: parse the command line; learn the address-space bounds;
 * take what was passed in (systemd's socket and fd store, or the previous
 * daemon's descriptors on an upgrade: the restart wing); take the listening
 * socket; drop capabilities; start the workers; rebuild the state (the
 * wing); enter the seccomp sandbox; tell systemd READY=1. Shutdown
 * (SIGTERM/SIGINT): say STOPPING=1, close every client (their pages fall
 * back to ordinary anonymous memory, no thread is left waiting), stop the
 * workers; with the fd store, the wing leaves every client to it instead. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "fdset.h"
#include "listener.h"
#include "log.h"
#include "mm.h"
#include "proto.h"
#include "sandbox.h"
#include "session.h"
#include "stats.h"
#include "template.h"
#include "uffd.h"
#include "worker.h"
#ifdef RP_RESTART_WING
#include "wing.h"
#endif

#define STATUS_EVERY_S 2.0
/* Budgets are sized so that this many uids at their full budget fit the
 * daemon's limits (docs/security.md). */
#define UIDS_PLANNED 64
/* Descriptors the daemon keeps for itself: the listener, event loops, the
 * snapshot, sd_notify's sockets. */
#define FDS_INTERNAL 64
/* The most descriptors the daemon sets out to hold: its soft limit is
 * raised to the hard one up to this, and lowered to it from above (systemd
 * sets fs.nr_open to 2^30, and LimitNOFILE=infinity passes that on): the
 * close table (worker.c) has a slot per descriptor number. */
#define FDS_MAX (1u << 20)

static int no_sandbox, debug_forbidden_syscall, debug_denied_syscall;
static int debug_stall_after = -1;
static struct rp_daemon d;
#ifdef RP_RESTART_WING
static struct wing_opts wing_o = { .version = 0 };
#endif

static void usage(FILE *f)
{
	fprintf(f,
		"usage: refpaged [options]\n"
		"  --socket PATH         listen on PATH when no socket is passed in (by systemd, or by\n"
		"                        the previous daemon on an upgrade); default %s\n"
		"  --workers N           fault worker threads (default: online CPUs, at least 4)\n"
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
		"Limits of the whole daemon:\n"
		"  --max-connections N   connections (default 4096)\n"
		"  --max-templates N     template handles per connection (default 4096)\n"
		"  --max-store N         distinct templates (default 0: no count, the memory budgets\n"
		"                        bound them; a count would be a pool one uid could fill)\n"
		"  --max-ranges N        ranges per process (default 65536)\n"
		"  --max-bytes N         registered bytes per process (default 1 TiB)\n"
		"  --max-descendants N   processes in one client's fork tree (default 4096)\n"
		"  --memory-max BYTES    memory all uids together may make the daemon spend\n"
		"                        (default: 64 uids at --uid-memory, plus the reserve)\n"
		"Budgets of each uid (docs/security.md; past one, only that uid is refused):\n"
		"  --uid-connections N   connections (default 1024)\n"
		"  --uid-templates N     template handles (default 16384)\n"
		"  --uid-ranges N        ranges (default 1048576)\n"
		"  --uid-bytes N         registered bytes (default 64 TiB)\n"
		"  --uid-processes N     served processes, fork children included (default 4096)\n"
		"  --uid-fds N           descriptors held for the uid (default 4096, lowered to fit\n"
		"                        64 uids in the descriptor limit)\n"
		"  --uid-memory BYTES    the daemon's memory spent for the uid (default 64 MiB)\n"
		"  --loop-quota N        requests per uid per main-loop iteration (default 2)\n"
		"  --fault-quota N       uffd messages per uid per worker iteration (default 128)\n"
		"  --log-burst N, --log-rate N\n"
		"                        log lines a uid can cause: N at once, then N a second\n"
		"                        (default 20 and 5)\n"
		"  --hello-timeout S     seconds a new connection may stay silent (default 10)\n"
#ifdef RP_RESTART_WING
		"  --fd-store            keep every client's descriptors and the state journal in systemd's\n"
		"                        fd store (FileDescriptorStoreMax=): a restart, even after SIGKILL,\n"
		"                        goes on serving the same clients\n"
#endif
		"  --no-sandbox          keep capabilities, no seccomp filter: for debugging only\n"
		"  --help, --version\n",
		PROTO_DEFAULT_SOCKET, TMPL_SLAB_PAGES, MM_MSG_BATCH, MM_MSG_BATCH);
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
		fprintf(stderr, "refpaged: --%s: expected a number in [%llu, %llu], got '%s'\n",
			opt, lo, hi, s);
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

enum {
	O_SOCKET = 256,
	O_WORKERS,
	O_LOGLEVEL,
	O_FAULTAROUND,
	O_POLL,
	O_BATCH,
	O_DRAIN,
	O_COALESCE,
	O_DONTWAKE,
	O_MAXCONN,
	O_MAXTMPL,
	O_MAXSTORE,
	O_MAXRANGES,
	O_MAXBYTES,
	O_MAXDESC,
	O_MEMMAX,
	O_UIDCONN,
	O_UIDTMPL,
	O_UIDRANGES,
	O_UIDBYTES,
	O_UIDPROCS,
	O_UIDFDS,
	O_UIDMEM,
	O_LOOPQ,
	O_FAULTQ,
	O_LOGBURST,
	O_LOGRATE,
	O_HELLO,
	O_NOSANDBOX,
	O_DBG_FORBIDDEN,
	O_DBG_DENIED,
	O_DBG_STALL,
	O_FDSTORE,
	O_HANDOVER,
	O_DBG_SNAPVER,
	O_DBG_DIEPEEK,
	O_DBG_DIEANS,
	O_HELP,
	O_VERSION,
};

static const struct option opts[] = {
	{ "socket", required_argument, NULL, O_SOCKET },
	{ "workers", required_argument, NULL, O_WORKERS },
	{ "log-level", required_argument, NULL, O_LOGLEVEL },
	{ "fault-around", required_argument, NULL, O_FAULTAROUND },
	{ "poll-us", required_argument, NULL, O_POLL },
	{ "batch", required_argument, NULL, O_BATCH },
	{ "drain", required_argument, NULL, O_DRAIN },
	{ "coalesce", required_argument, NULL, O_COALESCE },
	{ "dontwake", required_argument, NULL, O_DONTWAKE },
	{ "max-connections", required_argument, NULL, O_MAXCONN },
	{ "max-templates", required_argument, NULL, O_MAXTMPL },
	{ "max-store", required_argument, NULL, O_MAXSTORE },
	{ "max-ranges", required_argument, NULL, O_MAXRANGES },
	{ "max-bytes", required_argument, NULL, O_MAXBYTES },
	{ "max-descendants", required_argument, NULL, O_MAXDESC },
	{ "memory-max", required_argument, NULL, O_MEMMAX },
	{ "uid-connections", required_argument, NULL, O_UIDCONN },
	{ "uid-templates", required_argument, NULL, O_UIDTMPL },
	{ "uid-ranges", required_argument, NULL, O_UIDRANGES },
	{ "uid-bytes", required_argument, NULL, O_UIDBYTES },
	{ "uid-processes", required_argument, NULL, O_UIDPROCS },
	{ "uid-fds", required_argument, NULL, O_UIDFDS },
	{ "uid-memory", required_argument, NULL, O_UIDMEM },
	{ "loop-quota", required_argument, NULL, O_LOOPQ },
	{ "fault-quota", required_argument, NULL, O_FAULTQ },
	{ "log-burst", required_argument, NULL, O_LOGBURST },
	{ "log-rate", required_argument, NULL, O_LOGRATE },
	{ "hello-timeout", required_argument, NULL, O_HELLO },
	{ "no-sandbox", no_argument, NULL, O_NOSANDBOX },
	/* Tests only, not in --help. */
	{ "debug-forbidden-syscall", no_argument, NULL, O_DBG_FORBIDDEN },
	{ "debug-denied-syscall", no_argument, NULL, O_DBG_DENIED },
	{ "debug-stall-after", required_argument, NULL, O_DBG_STALL },
	{ "debug-die-peeked", required_argument, NULL, O_DBG_DIEPEEK },
	{ "debug-die-answered", required_argument, NULL, O_DBG_DIEANS },
#ifdef RP_RESTART_WING
	{ "fd-store", no_argument, NULL, O_FDSTORE },
	{ "handover", required_argument, NULL, O_HANDOVER },
	{ "debug-snapshot-version", required_argument, NULL, O_DBG_SNAPVER },
#endif
	{ "help", no_argument, NULL, O_HELP },
	{ "version", no_argument, NULL, O_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* Which budgets were given on the command line (the others get defaults
 * fitted to the daemon's limits). */
static int uid_fds_given, mem_max_given;
static unsigned log_burst = 20, log_rate = 5;

static const char *opt_name(int o)
{
	for (const struct option *p = opts; p->name; p++)
		if (p->val == o)
			return p->name;
	return "?";
}

/* Options of the daemon's own behaviour. 1 if o was one of them. */
static int parse_serving(int o, const char *name, struct rp_config *c)
{
	int lvl;

	switch (o) {
	case O_SOCKET:
		c->socket_path = optarg;
		break;
	case O_WORKERS:
		c->workers = (unsigned)parse_num(name, optarg, 1, 256);
		break;
	case O_LOGLEVEL:
		if ((lvl = log_parse_level(optarg)) < 0) {
			fprintf(stderr, "refpaged: --log-level: unknown level '%s'\n", optarg);
			exit(2);
		}
		log_set_level(lvl);
		break;
	case O_FAULTAROUND:
		c->fault_around = (uint32_t)parse_num(name, optarg, 1, TMPL_SLAB_PAGES);
		break;
	case O_POLL:
		c->poll_us = (uint32_t)parse_num(name, optarg, 0, 100000);
		break;
	case O_BATCH:
		c->batch = (uint32_t)parse_num(name, optarg, 1, MM_MSG_BATCH);
		break;
	case O_DRAIN:
		c->drain = parse_onoff(name, optarg);
		break;
	case O_COALESCE:
		c->coalesce = parse_onoff(name, optarg);
		break;
	case O_DONTWAKE:
		c->dontwake = parse_onoff(name, optarg);
		break;
	case O_HELLO:
		c->lim.hello_timeout_s = (uint32_t)parse_num(name, optarg, 1, 3600);
		break;
	case O_NOSANDBOX:
		no_sandbox = 1;
		break;
	case O_DBG_FORBIDDEN:
		debug_forbidden_syscall = 1;
		break;
	case O_DBG_DENIED:
		debug_denied_syscall = 1;
		break;
	case O_DBG_STALL:
		debug_stall_after = (int)parse_num(name, optarg, 0, 3600);
		break;
	case O_DBG_DIEPEEK:
		c->die_peeked = (uint32_t)parse_num(name, optarg, 1, UINT32_MAX);
		break;
	case O_DBG_DIEANS:
		c->die_answered = (uint32_t)parse_num(name, optarg, 1, UINT32_MAX);
		break;
	default:
		return 0;
	}
	return 1;
}

/* Limits and budgets. 1 if o was one of them. */
static int parse_limit(int o, const char *name, struct rp_limits *l)
{
	uint64_t *u = l->per_uid.max;

	switch (o) {
	case O_MAXCONN:
		l->connections = (uint32_t)parse_num(name, optarg, 1, 1u << 20);
		break;
	case O_MAXTMPL:
		l->templates = (uint32_t)parse_num(name, optarg, 1, 1u << 20);
		break;
	case O_MAXSTORE:
		l->store = (uint32_t)parse_num(name, optarg, 0, 1u << 24);
		break;
	case O_MAXRANGES:
		l->ranges = (uint32_t)parse_num(name, optarg, 1, 1u << 24);
		break;
	case O_MAXBYTES:
		l->bytes = parse_num(name, optarg, 4096, 1ull << 56);
		break;
	case O_MAXDESC:
		l->descendants = (uint32_t)parse_num(name, optarg, 1, 1u << 24);
		break;
	case O_MEMMAX:
		l->per_uid.pool[ACCT_MEMORY] = parse_num(name, optarg, 1u << 20, 1ull << 50);
		mem_max_given = 1;
		break;
	case O_UIDCONN:
		u[ACCT_CONNECTIONS] = parse_num(name, optarg, 1, 1u << 20);
		break;
	case O_UIDTMPL:
		u[ACCT_TEMPLATES] = parse_num(name, optarg, 1, 1u << 24);
		break;
	case O_UIDRANGES:
		u[ACCT_RANGES] = parse_num(name, optarg, 1, 1u << 30);
		break;
	case O_UIDBYTES:
		u[ACCT_BYTES] = parse_num(name, optarg, 4096, 1ull << 56);
		break;
	case O_UIDPROCS:
		u[ACCT_PROCESSES] = parse_num(name, optarg, 1, 1u << 24);
		break;
	case O_UIDFDS:
		u[ACCT_FDS] = parse_num(name, optarg, 2, 1u << 24);
		uid_fds_given = 1;
		break;
	case O_UIDMEM:
		u[ACCT_MEMORY] = parse_num(name, optarg, 1u << 20, 1ull << 48);
		break;
	case O_LOOPQ:
		l->loop_quota = (uint32_t)parse_num(name, optarg, 1, 1u << 16);
		break;
	case O_FAULTQ:
		l->fault_quota = (uint32_t)parse_num(name, optarg, 1, 1u << 20);
		break;
	case O_LOGBURST:
		log_burst = (unsigned)parse_num(name, optarg, 1, 1u << 20);
		break;
	case O_LOGRATE:
		log_rate = (unsigned)parse_num(name, optarg, 1, 1u << 20);
		break;
	default:
		return 0;
	}
	return 1;
}

#ifdef RP_RESTART_WING
static int parse_wing(int o, const char *name)
{
	switch (o) {
	case O_FDSTORE:
		wing_o.fdstore = 1;
		break;
	case O_HANDOVER:
		wing_o.handover_fd = (int)parse_num(name, optarg, 3, INT_MAX);
		break;
	case O_DBG_SNAPVER:
		wing_o.version = (uint32_t)parse_num(name, optarg, 0, UINT32_MAX);
		break;
	default:
		return 0;
	}
	return 1;
}
#endif

static void parse_args(int argc, char **argv, struct rp_config *c)
{
	int o;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		const char *name = opt_name(o);
		if (parse_serving(o, name, c) || parse_limit(o, name, &c->lim))
			continue;
#ifdef RP_RESTART_WING
		if (parse_wing(o, name))
			continue;
#endif
		switch (o) {
		case O_HELP:
			usage(stdout);
			exit(0);
		case O_VERSION:
			printf("refpaged %s (protocol %u)\n", RP_VERSION, PROTO_VERSION);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "refpaged: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
}

/* Every served process costs descriptors: take all the hard limit allows,
 * and size the descriptor pool and the per-uid default from what we got. */
static void fit_fds(struct acct_limits *l)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rlim_t want = rl.rlim_max < FDS_MAX ? rl.rlim_max : FDS_MAX;
		if (rl.rlim_cur != want) {
			rl.rlim_cur = want;
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
				log_warn("cannot set the descriptor limit to %llu: %s",
					 (unsigned long long)want, strerror(errno));
		}
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur > FDS_MAX)
		rl.rlim_cur = FDS_MAX;
	uint64_t pool = rl.rlim_cur > 2 * FDS_INTERNAL ? rl.rlim_cur - FDS_INTERNAL : FDS_INTERNAL;
	l->pool[ACCT_FDS] = pool;
	l->reserve[ACCT_FDS] = pool / 16 > 64 ? pool / 16 : 64;
	l->floor[ACCT_FDS] = 16;
	uint64_t fit = (pool - l->reserve[ACCT_FDS]) / UIDS_PLANNED;
	if (!uid_fds_given && l->max[ACCT_FDS] > fit) {
		log_notice(
			"descriptor limit %llu: each uid's descriptor budget is %llu (%d uids fit)",
			(unsigned long long)rl.rlim_cur, (unsigned long long)fit, UIDS_PLANNED);
		l->max[ACCT_FDS] = fit < 8 ? 8 : fit;
	}
}

static void fit_memory(struct acct_limits *l)
{
	uint64_t per_uid = l->max[ACCT_MEMORY];

	l->floor[ACCT_MEMORY] = 4u << 20;
	l->reserve[ACCT_MEMORY] = 256u << 20;
	if (!mem_max_given)
		l->pool[ACCT_MEMORY] = per_uid * UIDS_PLANNED + l->reserve[ACCT_MEMORY];
	else if (l->reserve[ACCT_MEMORY] > l->pool[ACCT_MEMORY] / 4)
		l->reserve[ACCT_MEMORY] = l->pool[ACCT_MEMORY] / 4;
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	log_notice("signal %d: stopping", w->signum);
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
	d.stopping = 1;
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
		sd_notifyf(0,
			   "STATUS=%llu clients, %llu processes, %llu faults served (refpaged %s)",
			   (unsigned long long)clients,
			   (unsigned long long)stat_get(PROTO_STAT_PROCESSES),
			   (unsigned long long)faults, RP_VERSION);
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

static ev_signal sigterm, sigint;
static ev_timer watchdog, stall;

static void setup_loop(void)
{
	uint64_t usec = 0;
	double every = STATUS_EVERY_S;

	ev_signal_init(&sigterm, on_stop, SIGTERM);
	ev_signal_init(&sigint, on_stop, SIGINT);
	ev_signal_start(d.loop, &sigterm);
	ev_signal_start(d.loop, &sigint);
	if (sd_watchdog_enabled(0, &usec) > 0 && usec / 2e6 < every)
		every = usec / 2e6;
	ev_timer_init(&watchdog, on_tick, 0., every);
	ev_timer_again(d.loop, &watchdog);
	if (debug_stall_after >= 0) {
		ev_timer_init(&stall, on_debug_stall, debug_stall_after, 0.);
		ev_timer_start(d.loop, &stall);
	}
}

/* Everything is set up: from here on only the syscalls of serving. */
static int enter_sandbox(void)
{
	struct sandbox_opts o = {
		.notify = getenv("NOTIFY_SOCKET") != NULL,
		.unlink_socket = d.listen_owned,
		.journal_fd = -1,
	};
	int r;

#ifdef RP_RESTART_WING
	o.journal_fd = wing_journal_fd(&d);
#endif
	if (no_sandbox) {
		log_warn("--no-sandbox: running without the seccomp filter");
		return 0;
	}
	if ((r = sandbox_enter(&o)) < 0)
		log_err("cannot enter the sandbox: %s", strerror(-r));
	return r;
}

/* Each template charged to its owner's account (acct_tmpl_ops); the
 * restart wing adds its hooks (wing_init). */
static struct tmpl_ops tmpl_ops;

static void set_defaults(struct rp_config *c)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	*c = (struct rp_config){
		/* A worker waiting in the kernel on one client's mmap_lock
		 * holds up only the uids placed on it (worker.h): at least a
		 * few, however few CPUs. */
		.workers = cpus > 4 ? (unsigned)cpus : 4,
		.fault_around = 16,
		.batch = MM_MSG_BATCH,
		.drain = 1,
		.coalesce = 1,
		.lim = { .templates = 4096,
			 .ranges = 65536,
			 .bytes = 1ull << 40,
			 .store = 0,
			 .connections = 4096,
			 .descendants = 4096,
			 .hello_timeout_s = 10,
			 .loop_quota = 2,
			 .fault_quota = 128,
			 .per_uid.max = { [ACCT_CONNECTIONS] = 1024,
					  [ACCT_TEMPLATES] = 16384,
					  [ACCT_RANGES] = 1u << 20,
					  [ACCT_BYTES] = 1ull << 46,
					  [ACCT_PROCESSES] = 4096,
					  [ACCT_FDS] = 4096,
					  [ACCT_MEMORY] = 64u << 20 } },
	};
}

/* Set up everything that does not serve yet. 0 or -1 (logged). */
static int init(int argc, char **argv, char **args, struct fdset *fds)
{
	set_defaults(&d.cfg);
	parse_args(argc, argv, &d.cfg);
	log_rl_defaults(log_burst, log_rate);
	fit_fds(&d.cfg.lim.per_uid);
	fit_memory(&d.cfg.lim.per_uid);
	acct_init(&d.cfg.lim.per_uid, 1 + d.cfg.workers);
	if (uffd_learn_top() < 0)
		log_warn(
			"cannot learn the top of user space from the kernel; assuming 4-level paging");
	for (int k = 0; k < RP_ID_KINDS; k++)
		atomic_init(&d.next_id[k], 1);
	signal(SIGPIPE, SIG_IGN);
	d.listen_fd = -1;
	acct_tmpl_ops(&tmpl_ops);
	d.loop = ev_default_loop(EVFLAG_AUTO);
	if (!d.loop || inbox_init(&d.mainq, d.loop) < 0 ||
	    tmpl_store_init(&d.tmpls, d.cfg.lim.store, d.cfg.fault_around, &tmpl_ops) < 0) {
		log_err("cannot initialise: out of memory");
		return -1;
	}
	loop_track(d.loop);
	park_init(&d.parked, d.loop, 0, d.cfg.lim.loop_quota);
#ifdef RP_RESTART_WING
	if (wing_init(&d, &wing_o, &tmpl_ops, argc, args, fds) < 0)
		return -1;
#else
	(void)args;
	if (fdset_from_systemd(fds) < 0)
		log_err("cannot take the descriptors systemd passed");
	fds->from = "systemd";
#endif
	return 0;
}

#ifndef RP_RESTART_WING
/* The core alone (no restart wing): a start passes nothing on. */
static void drop_passed(struct fdset *fds)
{
	for (size_t i = 0; i < fds->n; i++)
		if (fds->v[i].fd >= 0)
			log_warn("descriptor '%s' passed in: not used (no restart wing); closed",
				 fds->v[i].name);
	fdset_free(fds);
}
#endif

static void shutdown_all(int status)
{
#ifdef RP_RESTART_WING
	/* With the fd store, nothing of a client's is closed: see wing.h. */
	wing_stop(&d, status);
#else
	(void)status;
#endif
	listener_close(&d);
	while (d.sessions)
		session_close(d.sessions, NULL);
	workers_stop(&d.workers);
#ifdef RP_RESTART_WING
	wing_fini(&d);
#endif
	inbox_fini(&d.mainq);
	tmpl_store_fini(&d.tmpls);
}

static int serve_from(struct fdset *fds)
{
	int r;

	if (listener_open(&d, fds) < 0)
		return -1;
	/* Before the first thread: each thread has its own capability sets. */
	if (!no_sandbox && (r = sandbox_drop_caps()) < 0) {
		log_err("cannot drop capabilities: %s", strerror(-r));
		return -1;
	}
#ifdef RP_RESTART_WING
	wing_helper_start(&d);
#endif
	/* glibc's per-thread arenas would trim with a file read the sandbox
	 * forbids (sandbox.h): one arena, trimmed with brk. */
	mallopt(M_ARENA_MAX, 1);
	if ((r = workers_start(&d.workers, d.cfg.workers, d.cfg.lim.fault_quota, mm_worker_stop,
			       mm_worker_pause)) < 0) {
		log_err("cannot start workers: %s", strerror(-r));
		return -1;
	}
#ifdef RP_RESTART_WING
	if (wing_restore(&d, fds) < 0)
		return -1;
#else
	drop_passed(fds);
#endif
	return 0;
}

int main(int argc, char **argv)
{
	struct fdset fds = { 0 };
	/* getopt permutes argv: the restart wing's exec helper gets it as it came. */
	char **args = calloc((size_t)argc + 1, sizeof(*args));

	for (int i = 0; args && i < argc; i++)
		args[i] = argv[i];
	if (!args || init(argc, argv, args, &fds) < 0)
		return 1;
	free(args);
	if (serve_from(&fds) < 0) {
		fdset_free(&fds);
#ifdef RP_RESTART_WING
		wing_failed(&d, "cannot start serving");
#endif
		return 1;
	}
	setup_loop();
	if (enter_sandbox() < 0) {
		shutdown_all(1);
		return 1;
	}
	sd_notifyf(0, "READY=1\nSTATUS=serving, %u workers (refpaged %s)", d.workers.n, RP_VERSION);
	log_notice("refpaged %s ready: %u workers, fault-around %u pages, poll %u us, batch %u, "
		   "drain %s, coalesce %s, dontwake %s; per uid: %llu descriptors, %llu MiB",
		   RP_VERSION, d.workers.n, d.cfg.fault_around, d.cfg.poll_us, d.cfg.batch,
		   onoff(d.cfg.drain), onoff(d.cfg.coalesce), onoff(d.cfg.dontwake),
		   (unsigned long long)d.cfg.lim.per_uid.max[ACCT_FDS],
		   (unsigned long long)(d.cfg.lim.per_uid.max[ACCT_MEMORY] >> 20));
	if (debug_forbidden_syscall)
		sandbox_forbidden_syscall();
	if (debug_denied_syscall)
		sandbox_denied_syscall();
	ev_run(d.loop, 0);
	shutdown_all(0);
	log_notice("stopped");
	return 0;
}
