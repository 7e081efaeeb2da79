/* Event loops in threads of their own, and the inboxes that hand them work.
 *
 * A worker is a thread running a libev loop; every served address space
 * (daemon/mm.c) lives on exactly one worker, whose thread alone reads its
 * uffd, serves its faults, applies its events and changes its range table.
 * Other threads talk to a worker only by posting a call to its inbox; the
 * main loop has an inbox too, which workers post completions to.
 *
 * Placement keeps uids apart: a new fork family goes to the worker with the
 * fewest other uids on it, then the fewest address spaces, so a uid whose
 * process makes a worker wait in the kernel (uffd ioctls take the client's
 * mmap_lock) delays no other uid until there are more uids than workers. */
#ifndef REFPAGED_WORKER_H
#define REFPAGED_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

struct acct;
struct rp_mm;

/* A call for another loop's thread; the poster owns the storage until fn
 * runs (embed it in the object it is about). */
struct loop_call {
	void (*fn)(void *arg);
	void *arg;
	struct loop_call *next;
};

struct inbox {
	struct ev_loop *loop;
	ev_async async;
	pthread_mutex_t lock;
	struct loop_call *head, *tail;
};

/* On loop's thread, before the loop runs. 0 or -errno. */
int inbox_init(struct inbox *q, struct ev_loop *loop);
void inbox_fini(struct inbox *q);
/* From any thread: c->fn(c->arg) runs on q's loop. */
void inbox_post(struct inbox *q, struct loop_call *c);

/* Parking: a socket or uffd whose uid has used its share of this loop's
 * iteration stops being watched (were it left readable, epoll would hand
 * it back every iteration, and a uid with thousands of them would cost
 * every other uid that much each time) and waits in the loop's queue;
 * before each poll, at most quota of each uid's parked ones are watched
 * again, oldest first. */
struct park {
	ev_io *io;
	struct acct *acct;
	struct park *next;
	int parked;
};

struct park_queue {
	struct ev_loop *loop;
	unsigned id; /* the loop's index in the accounts' turns */
	uint32_t quota;
	struct park *head, *tail;
	ev_prepare prepare;
};

void park_init(struct park_queue *q, struct ev_loop *loop, unsigned id, uint32_t quota);
/* Stop watching p->io and queue it (it must be active). */
void park(struct park_queue *q, struct park *p);
/* Out of the queue (its io stays stopped), e.g. when it closes. */
void park_drop(struct park_queue *q, struct park *p);

struct worker {
	unsigned id; /* 1..n: index of its loop in the accounts' turns */
	pthread_t thread;
	struct ev_loop *loop;
	struct inbox in;
	int stop, pause, paused; /* under in.lock */
	pthread_cond_t cond;
	struct loop_call ctl;     /* the main thread's stop or pause */
	struct park_queue parked; /* uffds over their uid's quota (mm.c) */
	/* daemon/mm.c's: the address spaces served here, and hooks run on
	 * this thread when the worker stops, and before it pauses. */
	struct rp_mm *mms;
	void (*on_stop)(struct worker *w);
	void (*on_pause)(struct worker *w);
	atomic_uint nmms;
	atomic_uint nuids; /* distinct uids with an address space here */
	/* Descriptors waiting here for their close (workers_close_fd), in
	 * order: a list threaded through the close table by descriptor
	 * number (-1: empty), and its call, in the inbox or running while
	 * close_posted. Under in.lock. */
	int close_head, close_tail;
	int close_posted;
	struct loop_call close_call;
	struct workers *ws;
};

/* A descriptor waiting for its close on a worker: whose it is, and the
 * next in that worker's queue. */
struct close_slot {
	struct acct *acct;
	struct worker *w;
	int next;
};

struct workers {
	struct worker *v;
	unsigned n;
	pthread_mutex_t place_lock;
	/* One slot per descriptor number the daemon can ever hold (its hard
	 * RLIMIT_NOFILE at start): a close queued costs no allocation, so it
	 * can neither fail nor be refused. Only the pages of the numbers in
	 * use are ever touched. */
	struct close_slot *slots;
	unsigned nslots;
};

int workers_start(struct workers *ws, unsigned n, uint32_t fault_quota,
		  void (*on_stop)(struct worker *w), void (*on_pause)(struct worker *w));
void workers_stop(struct workers *ws);
/* One more loop thread of the same kind, for work that must not run on
 * the main loop and serves no address space (the restart wing's journal
 * compaction). Before the sandbox. 0 or -errno. */
int worker_spawn(struct worker *w);
/* Stop it and wait for it. */
void worker_join(struct worker *w);

/* A worker for a new fork family of a's uid (see above); its count of a's
 * address spaces goes up by one. worker_enter: one more on w (a fork
 * child), worker_leave: one fewer. Any thread. */
struct worker *worker_pick(struct workers *ws, struct acct *a);
void worker_enter(struct workers *ws, struct worker *w, struct acct *a);
void worker_leave(struct workers *ws, struct worker *w, struct acct *a);

/* Close fd, which loop watched (its watchers stopped) and which another
 * process may still hold: the fd store, the previous daemon for a moment
 * after a handover, or a client that kept a duplicate of the uffd it sent.
 * libev leaves a closed fd in its epoll set, trusting close() to drop it,
 * which it does not while the file is open elsewhere; an event for it then
 * makes libev rebuild its epoll set with epoll_create1, which the sandbox
 * forbids. So it goes out of the set first. */
void loop_close_fd(struct ev_loop *loop, int fd);
/* The same but the close: fd leaves loop's epoll set, and the caller
 * closes it (elsewhere: workers_close_fd). */
void loop_forget_fd(struct ev_loop *loop, int fd);
/* Right after making a loop, before the sandbox: learn its epoll set. */
void loop_track(struct ev_loop *loop);

/* Close fd, which came from a client of a's uid (NULL: unknown), on the
 * worker that uid's next fork family would go to, and charge it to a's
 * descriptors until then (ACCT_FDS, and a->closing). The last close of a
 * client's uffd takes the client's mmap_lock (userfaultfd_release), and
 * so does that of a socket with uffds queued on it: the main loop must
 * not wait for a lock a client holds, and the worker that waits is its
 * uid's own (as far as placement can make it so). The charge is not
 * checked (the descriptor is ours already, and closing it is the only way
 * to be rid of it): a uid whose closes keep it at its budget has its
 * sockets held unread meanwhile (session.c, acct_fds_held). Main loop. */
void workers_close_fd(struct workers *ws, struct acct *a, int fd);

/* Main thread: stop every worker's loop between two callbacks (no fault,
 * event or request half handled), and go on; for the handover. */
void workers_pause(struct workers *ws);
void workers_resume(struct workers *ws);

#endif
