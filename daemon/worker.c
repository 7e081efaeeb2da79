/* Event loops in threads, inboxes and placement: see worker.h. */
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "acct.h"
#include "log.h"

/* --- inboxes ---------------------------------------------------------------- */

static void inbox_run(struct ev_loop *loop, ev_async *a, int revents)
{
	struct inbox *q = a->data;
	struct loop_call *c;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&q->lock);
	c = q->head;
	q->head = q->tail = NULL;
	pthread_mutex_unlock(&q->lock);
	while (c) {
		/* fn may post c again (or free it): read next first. */
		struct loop_call *next = c->next;
		c->next = NULL;
		c->fn(c->arg);
		c = next;
	}
}

int inbox_init(struct inbox *q, struct ev_loop *loop)
{
	int e = pthread_mutex_init(&q->lock, NULL);

	if (e)
		return -e;
	q->loop = loop;
	q->head = q->tail = NULL;
	ev_async_init(&q->async, inbox_run);
	q->async.data = q;
	ev_async_start(loop, &q->async);
	return 0;
}

void inbox_fini(struct inbox *q)
{
	ev_async_stop(q->loop, &q->async);
	pthread_mutex_destroy(&q->lock);
}

void inbox_post(struct inbox *q, struct loop_call *c)
{
	c->next = NULL;
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
	pthread_mutex_unlock(&q->lock);
	ev_async_send(q->loop, &q->async);
}

/* --- loops' epoll sets ------------------------------------------------------ */

/* libev does not say which fd is a loop's epoll set: it is the one
 * eventpoll fd that no loop had before this one was made. */
#define MAX_LOOPS 260

static struct {
	struct ev_loop *loop;
	int epfd;
} loops[MAX_LOOPS];
static int nloops;
static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;

static int known_epfd(int fd)
{
	for (int i = 0; i < nloops; i++)
		if (loops[i].epfd == fd)
			return 1;
	return 0;
}

/* The eventpoll fd no loop had, or -1 (none, or more than one). */
static int new_epfd(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1, n = 0;

	if (!dir)
		return -1;
	while ((e = readdir(dir))) {
		char path[64], link[32];
		int fd = atoi(e->d_name);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t len = readlink(path, link, sizeof(link) - 1);
		if (len <= 0 || fd == dirfd(dir))
			continue;
		link[len] = '\0';
		if (!strcmp(link, "anon_inode:[eventpoll]") && !known_epfd(fd)) {
			found = fd;
			n++;
		}
	}
	closedir(dir);
	return n == 1 ? found : -1;
}

void loop_track(struct ev_loop *loop)
{
	if (ev_backend(loop) != EVBACKEND_EPOLL)
		return;
	pthread_mutex_lock(&loops_lock);
	int fd = nloops < MAX_LOOPS ? new_epfd() : -1;
	if (fd >= 0) {
		loops[nloops].loop = loop;
		loops[nloops++].epfd = fd;
	}
	pthread_mutex_unlock(&loops_lock);
	if (fd < 0)
		log_warn("cannot tell the epoll set of an event loop");
}

void loop_forget_fd(struct ev_loop *loop, int fd)
{
	int epfd = -1;

	pthread_mutex_lock(&loops_lock);
	for (int i = 0; i < nloops; i++)
		if (loops[i].loop == loop)
			epfd = loops[i].epfd;
	pthread_mutex_unlock(&loops_lock);
	if (epfd >= 0)
		epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

void loop_close_fd(struct ev_loop *loop, int fd)
{
	loop_forget_fd(loop, fd);
	close(fd);
}

/* --- parking -------------------------------------------------------------- */

static void unpark_some(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct park_queue *q = w->data;
	struct park **pp = &q->head, *last = NULL;
	uint64_t iter = ev_iteration(loop);

	(void)revents;
	while (*pp) {
		struct park *p = *pp;
		if (!acct_turn_wake(p->acct, q->id, iter, q->quota)) {
			last = p;
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		p->parked = 0;
		ev_io_start(loop, p->io);
	}
	q->tail = last;
	if (!q->head)
		ev_prepare_stop(loop, &q->prepare);
}

void park_init(struct park_queue *q, struct ev_loop *loop, unsigned id, uint32_t quota)
{
	q->loop = loop;
	q->id = id;
	q->quota = quota;
	q->head = q->tail = NULL;
	ev_prepare_init(&q->prepare, unpark_some);
	q->prepare.data = q;
}

void park(struct park_queue *q, struct park *p)
{
	ev_io_stop(q->loop, p->io);
	p->parked = 1;
	p->next = NULL;
	if (q->tail)
		q->tail->next = p;
	else
		q->head = p;
	q->tail = p;
	if (!ev_is_active(&q->prepare))
		ev_prepare_start(q->loop, &q->prepare);
}

void park_drop(struct park_queue *q, struct park *p)
{
	struct park **pp = &q->head, *last = NULL;

	if (!p->parked)
		return;
	while (*pp && *pp != p) {
		last = *pp;
		pp = &(*pp)->next;
	}
	if (*pp)
		*pp = p->next;
	if (q->tail == p)
		q->tail = last;
	p->parked = 0;
}

static void closes_run(void *arg);

/* --- threads ---------------------------------------------------------------- */

/* workers_pause: nothing of this loop runs until workers_resume; faults
 * wait in the kernel meanwhile. */
static void pause_here(struct worker *w)
{
	if (w->on_pause)
		w->on_pause(w);
	pthread_mutex_lock(&w->in.lock);
	if (w->pause) {
		w->paused = 1;
		pthread_cond_broadcast(&w->cond);
		while (w->pause)
			pthread_cond_wait(&w->cond, &w->in.lock);
		w->paused = 0;
	}
	pthread_mutex_unlock(&w->in.lock);
}

static void on_control(void *arg)
{
	struct worker *w = arg;
	int stop;

	pthread_mutex_lock(&w->in.lock);
	stop = w->stop;
	pthread_mutex_unlock(&w->in.lock);
	if (stop) {
		if (w->on_stop)
			w->on_stop(w);
		ev_break(w->loop, EVBREAK_ALL);
		return;
	}
	pause_here(w);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	ev_run(w->loop, 0);
	return NULL;
}

static int worker_init(struct worker *w, unsigned id, uint32_t quota,
		       void (*on_stop)(struct worker *w), void (*on_pause)(struct worker *w))
{
	w->id = id;
	w->on_stop = on_stop;
	w->on_pause = on_pause;
	w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!w->loop)
		return -ENOMEM;
	ev_set_userdata(w->loop, w);
	park_init(&w->parked, w->loop, id, quota);
	w->close_head = w->close_tail = -1;
	w->close_call = (struct loop_call){ .fn = closes_run, .arg = w };
	pthread_cond_init(&w->cond, NULL);
	loop_track(w->loop);
	return inbox_init(&w->in, w->loop);
}

int workers_start(struct workers *ws, unsigned n, uint32_t fault_quota,
		  void (*on_stop)(struct worker *w), void (*on_pause)(struct worker *w))
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	/* A slot per number below the soft limit, which main.c (fit_fds)
	 * keeps at most 2^20: no descriptor the daemon gets is past it. */
	ws->nslots = rl.rlim_cur < (1u << 20) ? (unsigned)rl.rlim_cur : 1u << 20;
	ws->slots = calloc(ws->nslots, sizeof(*ws->slots));
	ws->v = calloc(n, sizeof(*ws->v));
	if (!ws->v || !ws->slots)
		return -ENOMEM;
	pthread_mutex_init(&ws->place_lock, NULL);
	for (unsigned i = 0; i < n; i++) {
		ws->v[i].ws = ws;
		/* A uid's parked uffds woken per iteration: as many as one read
		 * each of its quota's messages can serve. */
		int r = worker_init(&ws->v[i], i + 1, fault_quota / 64 + 1, on_stop, on_pause);
		if (r < 0)
			return r;
		r = pthread_create(&ws->v[i].thread, NULL, worker_main, &ws->v[i]);
		if (r)
			return -r;
		ws->n = i + 1;
	}
	return 0;
}

int worker_spawn(struct worker *w)
{
	int r = worker_init(w, 0, 1, NULL, NULL);

	if (r < 0)
		return r;
	r = pthread_create(&w->thread, NULL, worker_main, w);
	return -r;
}

static void control(struct worker *w);

void worker_join(struct worker *w)
{
	pthread_mutex_lock(&w->in.lock);
	w->stop = 1;
	pthread_mutex_unlock(&w->in.lock);
	control(w);
	pthread_join(w->thread, NULL);
	inbox_fini(&w->in);
	ev_loop_destroy(w->loop);
	pthread_cond_destroy(&w->cond);
}

/* The main thread's stop or pause. Never two at once: a pause is over
 * (workers_resume) before anything else is asked. */
static void control(struct worker *w)
{
	w->ctl.fn = on_control;
	w->ctl.arg = w;
	inbox_post(&w->in, &w->ctl);
}

void workers_stop(struct workers *ws)
{
	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		pthread_mutex_lock(&w->in.lock);
		w->stop = 1;
		pthread_mutex_unlock(&w->in.lock);
		control(w);
	}
	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		pthread_join(w->thread, NULL);
		inbox_fini(&w->in);
		ev_loop_destroy(w->loop);
		pthread_cond_destroy(&w->cond);
	}
	free(ws->v);
	free(ws->slots);
	pthread_mutex_destroy(&ws->place_lock);
	ws->v = NULL;
	ws->slots = NULL;
	ws->n = ws->nslots = 0;
}

void workers_pause(struct workers *ws)
{
	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		pthread_mutex_lock(&w->in.lock);
		w->pause = 1;
		pthread_mutex_unlock(&w->in.lock);
		control(w);
	}
	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		pthread_mutex_lock(&w->in.lock);
		while (!w->paused)
			pthread_cond_wait(&w->cond, &w->in.lock);
		pthread_mutex_unlock(&w->in.lock);
	}
}

void workers_resume(struct workers *ws)
{
	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		pthread_mutex_lock(&w->in.lock);
		w->pause = 0;
		pthread_cond_broadcast(&w->cond);
		pthread_mutex_unlock(&w->in.lock);
	}
}

/* --- closing off the main loop --------------------------------------------- */

/* The closes queued on w, oldest first, until none is left: one call runs
 * them all, so that whatever is posted to w after a close runs after it
 * (the inbox's order). */
static void closes_run(void *arg)
{
	struct worker *w = arg;
	struct close_slot *slots = w->ws->slots;

	for (;;) {
		pthread_mutex_lock(&w->in.lock);
		int fd = w->close_head;
		if (fd < 0) {
			w->close_posted = 0;
			pthread_mutex_unlock(&w->in.lock);
			return;
		}
		/* Read before the close: the number may be reused at once. */
		struct acct *a = atomic_load_explicit(&slots[fd].acct, memory_order_relaxed);
		w->close_head = atomic_load_explicit(&slots[fd].next, memory_order_relaxed);
		if (w->close_head < 0)
			w->close_tail = -1;
		pthread_mutex_unlock(&w->in.lock);
		close(fd);
		if (a) {
			worker_leave(w->ws, w, a);
			atomic_fetch_sub(&a->closing, 1);
			acct_adjust(a, ACCT_FDS, -1);
			acct_put(a);
		}
	}
}

/* The worker a new fork family of a's uid would go to: the fewest other
 * uids, then the fewest address spaces. Under place_lock. */
static struct worker *pick_locked(struct workers *ws, struct acct *a)
{
	struct worker *best = NULL;
	uint64_t best_score = UINT64_MAX;

	for (unsigned i = 0; i < ws->n; i++) {
		struct worker *w = &ws->v[i];
		uint64_t others = atomic_load(&w->nuids) - (a && a->placed[w->id] ? 1 : 0);
		uint64_t score = others << 32 | atomic_load(&w->nmms);
		if (score < best_score) {
			best = w;
			best_score = score;
		}
	}
	return best;
}

void workers_close_fd(struct workers *ws, struct acct *a, int fd)
{
	/* No worker (a test's daemon without them), or a number past the
	 * table: the limit was raised from outside since the start. */
	if (!ws->n || fd < 0 || (unsigned)fd >= ws->nslots) {
		if (ws->n && fd >= 0)
			log_err("descriptor %d is past the %u the daemon started with: closed "
				"in place",
				fd, ws->nslots);
		close(fd);
		return;
	}
	struct close_slot *c = &ws->slots[fd];
	atomic_store_explicit(&c->acct, a, memory_order_relaxed);
	atomic_store_explicit(&c->next, -1, memory_order_relaxed);
	/* Until it is closed, the uid counts as placed on that worker: new
	 * clients of other uids go elsewhere while it may wait there. */
	pthread_mutex_lock(&ws->place_lock);
	c->w = pick_locked(ws, a);
	if (a && a->placed[c->w->id]++ == 0)
		atomic_fetch_add(&c->w->nuids, 1);
	pthread_mutex_unlock(&ws->place_lock);
	if (a) {
		acct_ref(a);
		acct_adjust(a, ACCT_FDS, 1);
		atomic_fetch_add(&a->closing, 1);
	}
	struct worker *w = c->w;
	pthread_mutex_lock(&w->in.lock);
	if (w->close_tail >= 0)
		atomic_store_explicit(&ws->slots[w->close_tail].next, fd, memory_order_relaxed);
	else
		w->close_head = fd;
	w->close_tail = fd;
	int post = !w->close_posted;
	w->close_posted = 1;
	pthread_mutex_unlock(&w->in.lock);
	if (post)
		inbox_post(&w->in, &w->close_call);
}

/* --- placement ------------------------------------------------------------- */

struct worker *worker_pick(struct workers *ws, struct acct *a)
{
	pthread_mutex_lock(&ws->place_lock);
	struct worker *best = pick_locked(ws, a);
	if (a->placed[best->id]++ == 0)
		atomic_fetch_add(&best->nuids, 1);
	pthread_mutex_unlock(&ws->place_lock);
	return best;
}

void worker_enter(struct workers *ws, struct worker *w, struct acct *a)
{
	pthread_mutex_lock(&ws->place_lock);
	if (a->placed[w->id]++ == 0)
		atomic_fetch_add(&w->nuids, 1);
	pthread_mutex_unlock(&ws->place_lock);
}

void worker_leave(struct workers *ws, struct worker *w, struct acct *a)
{
	pthread_mutex_lock(&ws->place_lock);
	if (--a->placed[w->id] == 0)
		atomic_fetch_sub(&w->nuids, 1);
	pthread_mutex_unlock(&ws->place_lock);
}
