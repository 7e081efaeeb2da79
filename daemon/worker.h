/* Fault workers: one thread and one libev loop each. Every served address
 * space lives on exactly one worker, which reads its uffd, answers its
 * faults and applies its events. */
#ifndef REFPAGED_WORKER_H
#define REFPAGED_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>

struct rp_daemon;
struct rp_mm;

/* Most uffd messages taken per read(2) (--batch). */
#define WORKER_MSG_BATCH 64

struct worker {
	int id;
	struct rp_daemon *d;
	pthread_t thread;
	struct ev_loop *loop;
	ev_async wake;           /* inbox has work, or stop */
	ev_timer probe;          /* liveness of fork children */
	pthread_mutex_t inbox_lock;
	struct rp_mm *inbox_add; /* through ->add_next */
	struct rp_mm *inbox_del; /* through ->del_next */
	int stop;
	int pause, paused;       /* workers_pause, under inbox_lock */
	pthread_cond_t cond;     /* paused or resumed */
	struct rp_mm *mms;       /* served here, doubly linked */
	atomic_uint nmms;
};

int workers_start(struct rp_daemon *d, int n);
void workers_stop(struct rp_daemon *d);

/* Main thread: stop every worker's loop (between two callbacks: no fault,
 * event or probe half handled), and go on. For the handover. */
void workers_pause(struct rp_daemon *d);
void workers_resume(struct rp_daemon *d);

/* From any thread: serve mm on w (takes over the caller's reference). */
void worker_add(struct worker *w, struct rp_mm *mm);
/* From any thread: stop serving mm and close its uffd (the caller's
 * reference is dropped once the worker has let go). */
void worker_del(struct worker *w, struct rp_mm *mm);

#endif
