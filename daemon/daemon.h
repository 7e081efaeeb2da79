/* refpaged: the daemon-wide state and configuration. */
#ifndef REFPAGED_DAEMON_H
#define REFPAGED_DAEMON_H

#include <ev.h>
#include <stdint.h>
#include <sys/types.h>

#include "acct.h"
#include "template.h"

struct persist;
struct worker;
struct session;

struct rp_limits {
	uint32_t templates;      /* template handles per connection */
	uint32_t ranges;         /* ranges per address space */
	uint64_t bytes;          /* registered bytes per address space */
	uint32_t store;          /* distinct templates in the whole daemon */
	uint32_t connections;    /* connections in the whole daemon */
	uint32_t descendants;    /* processes in one client's fork tree */
	uint32_t hello_timeout_s; /* a connection must say HELLO or STATS by then */
	struct acct_limits per_uid;
};

struct rp_config {
	const char *socket_path;  /* NULL: systemd's, else the default */
	int workers;              /* fault worker threads */
	uint32_t fault_around;    /* largest fill window in pages (1 = off) */
	uint32_t poll_us;         /* busy-poll a uffd this long before sleeping (0 = off) */
	/* The fault loop's fast paths (worker.c), each switchable for the
	 * benchmarks: uffd messages per read(2); read until the uffd is empty
	 * (bounded) on each wake-up, else once; skip a fault on a page this
	 * batch already filled; fill without waking and wake each filled span
	 * once at the end of the batch. */
	uint32_t batch;
	int drain, coalesce, dontwake;
	struct rp_limits lim;
	/* Tests (--debug-die-peeked/--debug-die-answered N): die at once with
	 * the N-th request read but not handled, or handled and answered but
	 * still on its socket (session.c). 0: off. */
	uint32_t die_peeked, die_answered;
};

struct rp_daemon {
	struct rp_config cfg;
	struct ev_loop *loop;    /* listener, sessions, signals, watchdog */
	struct tmpl_store tmpls;
	struct worker *workers;
	int nworkers;
	unsigned next_worker;
	int listen_fd;
	int listen_owned;        /* we bound it (unlink on exit) */
	ev_io listen_io;
	struct session *sessions; /* doubly linked */
	uint32_t nsessions;
	ev_signal sigterm, sigint, sighup;
	ev_timer watchdog;
	int stopping;
	struct persist *persist; /* snapshot and fd store (persist.c) */
};

/* Pick the worker that gets a new address space. */
struct worker *daemon_pick_worker(struct rp_daemon *d);

#endif
