/* refpaged: the daemon-wide state and configuration. */
#ifndef REFPAGED_DAEMON_H
#define REFPAGED_DAEMON_H

#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "acct.h"
#include "observer.h"
#include "template.h"
#include "worker.h"

struct session;

struct rp_limits {
	uint32_t templates;       /* template handles per connection */
	uint32_t ranges;          /* ranges per address space */
	uint64_t bytes;           /* registered bytes per address space */
	uint32_t store;           /* distinct templates in the whole daemon */
	uint32_t connections;     /* connections in the whole daemon */
	uint32_t descendants;     /* processes in one client's fork tree */
	uint32_t hello_timeout_s; /* a connection must say HELLO or STATS by then */
	/* Fairness: what one uid may take of a loop per iteration, however
	 * many connections or processes it spreads it over. */
	uint32_t loop_quota;  /* requests handled, main loop */
	uint32_t fault_quota; /* uffd messages read, each worker */
	struct acct_limits per_uid;
};

struct rp_config {
	const char *socket_path; /* NULL: systemd's, else the default */
	unsigned workers;        /* fault worker threads */
	uint32_t fault_around;   /* largest fill window in pages (1 = off) */
	uint32_t poll_us;        /* busy-poll a uffd this long before sleeping (0 = off) */
	/* The fault loop's fast paths (mm.c), each switchable for the
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

/* Names of the objects the observer hears about: never 0, never reused
 * while the process (and a restarted one going on from its journal) lives. */
enum rp_id_kind { RP_ID_SESSION, RP_ID_MM, RP_ID_TREE, RP_ID_KINDS };

struct rp_daemon {
	struct rp_config cfg;
	struct ev_loop *loop;     /* listener, sessions, signals, watchdog */
	struct inbox mainq;       /* workers' completions for the main loop */
	struct park_queue parked; /* sessions over their uid's quota (session.c) */
	/* Sessions of uids whose descriptors wait for their closes
	 * (session.c: hold), and the timer that looks at them. */
	struct session *held;
	ev_timer hold_timer;
	struct tmpl_store tmpls;
	struct workers workers;
	int listen_fd;
	int listen_owned; /* we bound it (unlink on exit) */
	ev_io listen_io;
	ev_timer accept_pause;
	struct session *sessions; /* doubly linked, main loop only */
	uint32_t nsessions;
	int stopping;
	struct rp_observer obs; /* whoever listens to state changes (persist.c) */
	atomic_uint next_id[RP_ID_KINDS];
	/* The restart wing's answer to an UPGRADE request (NULL: none, the
	 * request gets -EOPNOTSUPP). Main loop; may not return. */
	void (*upgrade)(struct rp_daemon *d, int reply_fd, uint32_t seq, uid_t uid);
	void *wing;
};

/* The next id of a kind (any thread). */
static inline uint32_t rp_id_new(struct rp_daemon *d, enum rp_id_kind k)
{
	return atomic_fetch_add(&d->next_id[k], 1);
}

/* An id a restart brings back: new ones go on above it. */
static inline void rp_id_seen(struct rp_daemon *d, enum rp_id_kind k, uint32_t id)
{
	unsigned cur = atomic_load(&d->next_id[k]);

	while (id >= cur && !atomic_compare_exchange_weak(&d->next_id[k], &cur, id + 1))
		;
}

#endif
