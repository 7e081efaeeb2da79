/* Per-uid accounting and budgets: one uid cannot exhaust the daemon for
 * another (docs/security.md).
 *
 * Every resource a client can make the daemon spend is charged, at the
 * moment it is allocated, to the uid that caused it (a fork child to its
 * client's uid) and uncharged when it goes: connections, template handles,
 * ranges, registered bytes, served processes, the descriptors the daemon
 * holds (a connection and a uffd each) and the daemon's own memory (every
 * object it keeps for the uid: sessions, address spaces, range-tree nodes,
 * templates and their fill slabs, queued faults).
 *
 * Each resource has a per-uid budget. Descriptors and memory also come out
 * of one daemon-wide pool (its RLIMIT_NOFILE, its memory ceiling) of which
 * a reserve is kept: a uid that already holds more than its floor cannot
 * take from the reserve, so a uid the daemon has not seen yet can always
 * connect even when others have used the rest. Over budget, only the uid
 * charging is refused (-EDQUOT).
 *
 * Thread safe: sessions charge on the main loop, workers on their own
 * threads (fork children, events, fills). */
#ifndef REFPAGED_ACCT_H
#define REFPAGED_ACCT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "log.h"
#include "proto.h"

enum acct_res {
	ACCT_CONNECTIONS,
	ACCT_TEMPLATES, /* template handles */
	ACCT_RANGES,
	ACCT_BYTES,     /* registered bytes */
	ACCT_PROCESSES, /* served address spaces, fork children included */
	ACCT_FDS,       /* descriptors the daemon holds for the uid */
	ACCT_MEMORY,    /* bytes of the daemon's memory */
	ACCT_RES_COUNT
};

struct acct_limits {
	uint64_t max[ACCT_RES_COUNT];     /* per uid; 0: unlimited */
	uint64_t pool[ACCT_RES_COUNT];    /* all uids together; 0: no pool */
	uint64_t reserve[ACCT_RES_COUNT]; /* of the pool, only for uids under their floor */
	uint64_t floor[ACCT_RES_COUNT];
};

/* One loop's share per iteration (worker.c and session.c: a uid gets at
 * most a quota of a loop's work per iteration, whatever number of
 * connections or processes it spreads it over). Touched by that loop's
 * thread only. */
struct acct_turn {
	uint64_t iter;
	uint32_t used;  /* requests or messages taken this iteration */
	uint32_t woken; /* parked sockets or uffds woken this iteration */
};

/* One read-before-write fault of an address space in report mode
 * (proto_report_rec, with whose it was). */
struct acct_rrec {
	uint64_t addr, ns;
	int32_t pid, tid;
	uint32_t mm; /* the observer's name of the address space */
};

/* Most records queued per uid (32 bytes each, charged to its memory
 * budget): past it new ones are dropped and counted. */
#define ACCT_REPORT_MAX 65536u

struct acct {
	uid_t uid;
	atomic_uint refs;  /* at 0 the account stays a while (acct.c) */
	double idle_since; /* when refs went to 0, under the table lock */
	_Atomic uint64_t used[ACCT_RES_COUNT];
	_Atomic uint64_t refused[ACCT_RES_COUNT];
	/* Of used[ACCT_FDS]: descriptors of this uid waiting for their close
	 * on a worker (workers_close_fd). */
	_Atomic uint64_t closing;
	/* The STATS counters of this uid's work alone: what a client of
	 * this uid is shown (nothing of another uid's). */
	_Atomic uint64_t stat[PROTO_STATS_MAX];
	struct log_rl rl;        /* its warnings and notices */
	struct log_rl rl_chat;   /* its info and debug lines, apart: they cannot
					 * use up the budget of the lines that matter */
	struct acct_turn *turns; /* one per loop: main, then workers */
	uint32_t *placed;        /* address spaces per loop (worker.c, under its lock) */
	/* Its read-before-write records, oldest first, until a process of
	 * the uid takes its own (REPORT) or its address space goes. */
	pthread_mutex_t rlock;
	struct acct_rrec *rq; /* acct_alloc'd, NULL when empty */
	uint32_t rn, rcap;
	uint64_t rdropped;
	struct acct *next;
};

/* Limits, and the number of event loops (for the turns). */
void acct_init(const struct acct_limits *lim, unsigned nloops);
/* Budgets enforced (1, the default) or not (0: a restart brings back what
 * exists already, charged as it was). Before the workers serve. */
void acct_enforce(int on);
const struct acct_limits *acct_limits(void);
/* The uid's account, referenced; NULL on ENOMEM. */
struct acct *acct_get(uid_t uid);
void acct_ref(struct acct *a);
void acct_put(struct acct *a);

/* Charge n units of res: 0, or -EDQUOT past the uid's budget or the
 * pool's (nothing charged; counted in refused[], logged through the uid's
 * rate limit). */
int acct_charge(struct acct *a, enum acct_res res, uint64_t n);
void acct_uncharge(struct acct *a, enum acct_res res, uint64_t n);
/* One unit of res that holds a descriptor (a connection, a process's
 * uffd) and that descriptor (ACCT_FDS), both or neither: 0 or -EDQUOT. */
int acct_charge_fd(struct acct *a, enum acct_res res);
void acct_uncharge_fd(struct acct *a, enum acct_res res);
/* Would n more units fit? 0 or -EDQUOT (counted and logged), nothing charged. */
int acct_check(struct acct *a, enum acct_res res, uint64_t n);
/* Follow a change the kernel already made, or a restart brings back:
 * never refused. */
void acct_adjust(struct acct *a, enum acct_res res, int64_t delta);
/* Are this uid's descriptors at or over its budget while some of them
 * wait for their close (a->closing)? Then reading its sockets (each
 * message may bring descriptors that must be closed on a worker) waits
 * until those closes bring it below (session.c): its descriptors stay
 * within its budget and what one read can add (docs/security.md). 0 with
 * the budgets off or no descriptor budget. */
int acct_fds_held(struct acct *a);
/* The pool's use of res, all uids together. */
uint64_t acct_pool_used(enum acct_res res);

/* Memory charged to a: malloc'd blocks that remember their size. NULL
 * when refused (errno EDQUOT) or out of memory (ENOMEM). */
void *acct_alloc(struct acct *a, size_t size);
void *acct_calloc(struct acct *a, size_t n, size_t size);
/* Grow or shrink a block of acct_alloc; on failure the old one stays. */
void *acct_realloc(struct acct *a, void *p, size_t size);
void acct_free(struct acct *a, void *p);
/* The same for blocks that may outlive every object of the uid that
 * refers to them (range-tree nodes shared by a fork family, held by a
 * journal capture): the block references the account itself, and is
 * freed without knowing whose it is. */
void *acct_alloc_ref(struct acct *a, size_t size);
void acct_free_ref(void *p);

/* Report mode: queue r (its memory charged to a; over ACCT_REPORT_MAX or
 * the memory budget it is dropped and counted, never waited for). Any
 * thread. */
void acct_report_push(struct acct *a, const struct acct_rrec *r);
/* Take (remove) up to max of pid's records, oldest first, into out: how
 * many; *more: whether some of pid's are left; *dropped: a's dropped so
 * far. O(queue), bounded by ACCT_REPORT_MAX. */
unsigned acct_report_take(struct acct *a, int32_t pid, struct acct_rrec *out, unsigned max,
			  int *more, uint64_t *dropped);
/* Forget the records of address space mm (it went away). */
void acct_report_forget(struct acct *a, uint32_t mm);

const char *acct_res_name(enum acct_res res);
/* fn on every uid's account, under the table lock. */
void acct_foreach(void (*fn)(const struct acct *a, void *arg), void *arg);
/* The account of uid, or the first one with a uid above after (after + 1
 * > uid), referenced; NULL if none (USAGE requests walk the table). */
struct acct *acct_find(uid_t uid, int next);

/* Count one of this uid's STATS events (and the daemon-wide one). */
void acct_stat_add(struct acct *a, unsigned s, int64_t v);

/* The loop's quota for this uid: how many units it may still take this
 * iteration, then take some. */
uint32_t acct_turn_left(struct acct *a, unsigned loop, uint64_t iter, uint32_t quota);
void acct_turn_use(struct acct *a, unsigned loop, uint32_t n);
/* May one more of this uid's parked sockets or uffds be woken this
 * iteration (at most quota)? 1 (counted) or 0. */
int acct_turn_wake(struct acct *a, unsigned loop, uint64_t iter, uint32_t quota);

/* A line about this uid, through its rate limit ("uid N: ...": one for
 * warnings and notices, one for info and debug lines). */
void acct_log(struct acct *a, int prio, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

struct tmpl_ops;
/* The template store's hooks for accounts as owners: each template's
 * memory charged to its owner's ACCT_MEMORY, and counted in its STATS
 * (template.h). The other hooks are left as they are. */
void acct_tmpl_ops(struct tmpl_ops *ops);

#endif
