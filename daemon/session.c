/* Client connections: see session.h.
 *
 * Trust boundary: everything read here comes from an unprivileged
 * process. A malformed message, a protocol violation or a client that
 * does not read its replies closes that client with a logged reason; a
 * well-formed request that cannot be honoured (bad address, unknown
 * template, a budget) gets an error reply and the session goes on. */
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "template.h"
#include "uffd.h"
#include "worker.h"

/* Requests of one session handled per wake-up before the loop serves
 * others; a uid's requests per loop iteration are capped by
 * --loop-quota on top of that. */
#define REQS_PER_WAKE 16

/* How often the sessions held for their uid's closes (hold) are looked
 * at again, while there are any. */
#define HOLD_CHECK_S 0.01

static void on_readable(struct ev_loop *loop, ev_io *io, int revents);
static void on_hello_timeout(struct ev_loop *loop, ev_timer *t, int revents);

/* Main-loop time spent on requests, all uids. */
static _Atomic uint64_t loop_ns;

static void list_add(struct rp_daemon *d, struct session *s)
{
	s->next = d->sessions;
	if (d->sessions)
		d->sessions->prev = s;
	d->sessions = s;
	d->nsessions++;
	acct_stat_add(s->acct, PROTO_STAT_CLIENTS, 1);
}

static void list_del(struct rp_daemon *d, struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		d->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	d->nsessions--;
	acct_stat_add(s->acct, PROTO_STAT_CLIENTS, -1);
}

static void emit(struct session *s, struct obs_event ev)
{
	ev.session = s->id;
	obs_emit(&s->d->obs, &ev);
}

/* A descriptor a client gave us (a socket, or one it sent) that we do not
 * keep: its last close may take a client's mmap_lock (a uffd, or a socket
 * with uffds queued on it), so it goes to a worker of that uid. */
static void drop_fd(struct rp_daemon *d, struct acct *a, int fd)
{
	if (fd >= 0)
		workers_close_fd(&d->workers, a, fd);
}

/* --- holding a uid's sockets while its closes wait ------------------------------------ */

/* Every message read may bring descriptors (up to PROTO_RECV_FDS_MAX, and
 * twice: peeked, then taken off the socket, handle_one), and every one is
 * closed on a worker of its uid, which a client can keep waiting on its
 * own mmap_lock (uffd-bomb, tests/tenant/). Until closed they count
 * against the uid's descriptors; so a uid at its budget with closes still
 * waiting (acct_fds_held) is not read from: its sockets are held. Not
 * parked (a parked socket is watched again within an iteration or two,
 * and would be parked again at once, round and round): held ones are
 * looked at every HOLD_CHECK_S, and watched again once the closes have
 * brought their uid below its budget. Its descriptors therefore stay
 * within its budget plus what one read adds: 2 x PROTO_RECV_FDS_MAX. Its
 * other work (faults, MAP and UNMAP in flight) goes on; nobody else's
 * waits. */
/* Take s off its daemon's held list. */
static void hold_unlink(struct session *s)
{
	struct rp_daemon *d = s->d;

	if (s->hold_prev)
		s->hold_prev->hold_next = s->hold_next;
	else
		d->held = s->hold_next;
	if (s->hold_next)
		s->hold_next->hold_prev = s->hold_prev;
	s->held = 0;
}

static void on_hold_check(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct rp_daemon *d = t->data;
	struct session *s = d->held;

	(void)revents;
	while (s) {
		struct session *next = s->hold_next;
		if (!acct_fds_held(s->acct)) {
			hold_unlink(s);
			if (s->hello_held) {
				s->hello_held = 0;
				ev_timer_set(&s->hello_timer, d->cfg.lim.hello_timeout_s, 0.);
				ev_timer_start(loop, &s->hello_timer);
			}
			ev_io_start(loop, &s->io);
		}
		s = next;
	}
	if (!d->held)
		ev_timer_stop(loop, t);
}

/* Hold s (its io active) if its uid's closes keep it at its budget: 1 if
 * so. */
static int hold(struct session *s)
{
	struct rp_daemon *d = s->d;
	struct acct *a = s->acct;

	if (!acct_fds_held(a))
		return 0;
	ev_io_stop(d->loop, &s->io);
	/* Not read, so not timed: a new connection waits for its HELLO's
	 * turn like the uid's others. */
	s->hello_held = ev_is_active(&s->hello_timer);
	ev_timer_stop(d->loop, &s->hello_timer);
	s->held = 1;
	s->hold_prev = NULL;
	s->hold_next = d->held;
	if (d->held)
		d->held->hold_prev = s;
	d->held = s;
	if (!ev_is_active(&d->hold_timer)) {
		ev_timer_init(&d->hold_timer, on_hold_check, HOLD_CHECK_S, HOLD_CHECK_S);
		d->hold_timer.data = d;
		ev_timer_start(d->loop, &d->hold_timer);
	}
	acct_log(a, LOG_INFO,
		 "pid %d: not read while %llu of its %llu descriptors wait for their close",
		 (int)s->pid, (unsigned long long)atomic_load(&a->closing),
		 (unsigned long long)atomic_load(&a->used[ACCT_FDS]));
	return 1;
}

static void hold_drop(struct session *s)
{
	struct rp_daemon *d = s->d;

	if (!s->held)
		return;
	hold_unlink(s);
	if (!d->held)
		ev_timer_stop(d->loop, &d->hold_timer);
}

/* Refuse a connection with a status the client library reports. */
static void refuse(struct rp_daemon *d, struct acct *a, int fd, int32_t status)
{
	struct proto_reply r = { .status = status };
	proto_send(fd, PROTO_REPLY, 0, &r, sizeof(r), -1, MSG_DONTWAIT);
	drop_fd(d, a, fd);
}

/* Serve s (acct charged, fd non-blocking) from now on. */
static void session_init(struct rp_daemon *d, struct session *s, int fd, const struct ucred *cred,
			 uint32_t id)
{
	s->d = d;
	s->fd = fd;
	s->id = id;
	s->pid = cred->pid;
	s->uid = cred->uid;
	s->gid = cred->gid;
	s->refs = 1;
	ev_io_init(&s->io, on_readable, fd, EV_READ);
	s->io.data = s;
	ev_io_start(d->loop, &s->io);
	s->park = (struct park){ .io = &s->io, .acct = s->acct };
	ev_timer_init(&s->hello_timer, on_hello_timeout, d->cfg.lim.hello_timeout_s, 0.);
	s->hello_timer.data = s;
	ev_timer_start(d->loop, &s->hello_timer);
	list_add(d, s);
}

void session_start(struct rp_daemon *d, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct acct *a = NULL;
	struct session *s = NULL;
	int e = 0;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		log_err("connection fd %d refused: SO_PEERCRED: %s", fd, strerror(errno));
		refuse(d, NULL, fd, -ENOMEM);
		return;
	}
	if (!(a = acct_get(cred.uid))) {
		log_err("connection fd %d (uid %u) refused: out of memory", fd, (unsigned)cred.uid);
		refuse(d, NULL, fd, -ENOMEM);
		return;
	}
	if (d->nsessions >= d->cfg.lim.connections) {
		acct_log(a, LOG_WARNING,
			 "pid %d: connection refused: the daemon's limit of %u "
			 "connections is reached",
			 (int)cred.pid, d->cfg.lim.connections);
		e = -EMFILE;
	} else if (acct_charge_fd(a, ACCT_CONNECTIONS) < 0) {
		e = -EMFILE;
	} else if (!(s = acct_calloc(a, 1, sizeof(*s)))) {
		e = errno == EDQUOT ? -EMFILE : -ENOMEM;
		acct_uncharge_fd(a, ACCT_CONNECTIONS);
	}
	if (!s) {
		/* The budget's refusal is logged by acct. */
		if (e == -ENOMEM)
			acct_log(a, LOG_ERR, "pid %d: connection refused: out of memory",
				 (int)cred.pid);
		refuse(d, a, fd, e);
		acct_put(a);
		return;
	}
	s->acct = a;
	/* A new connection is work done for its uid this iteration: a uid
	 * that floods connections gets fewer of its requests handled, not
	 * anyone else. */
	acct_turn_left(a, 0, ev_iteration(d->loop), d->cfg.lim.loop_quota);
	acct_turn_use(a, 0, 1);
	session_init(d, s, fd, &cred, rp_id_new(d, RP_ID_SESSION));
	emit(s, (struct obs_event){ .type = OBS_SESSION_NEW,
				    .fd = fd,
				    .pid = s->pid,
				    .uid = s->uid,
				    .gid = s->gid });
	acct_log(s->acct, LOG_DEBUG, "pid %d: connected (fd %d)", (int)s->pid, fd);
}

/* Restarts run with the budgets off (acct_enforce): what comes back exists
 * already, and is charged as it was. */
struct session *session_adopt(struct rp_daemon *d, int fd, const struct ucred *cred, uint32_t id)
{
	struct acct *a = acct_get(cred->uid);
	struct session *s = NULL;

	if (a && acct_charge_fd(a, ACCT_CONNECTIONS) == 0 && !(s = acct_calloc(a, 1, sizeof(*s))))
		acct_uncharge_fd(a, ACCT_CONNECTIONS);
	if (!s) {
		if (a)
			acct_put(a);
		return NULL;
	}
	s->acct = a;
	rp_id_seen(d, RP_ID_SESSION, id);
	session_init(d, s, fd, cred, id);
	return s;
}

static void session_lost(void *owner, struct rp_mm *mm)
{
	struct session *s = owner;

	(void)mm;
	session_close(s, "its address space was let go (see the lines above)");
}

void session_attach_mm(struct session *s, struct rp_mm *mm)
{
	s->mm = mm;
	mm->owner = s;
	mm->lost = session_lost;
	ev_timer_stop(s->d->loop, &s->hello_timer);
}

static void drop_templates(struct session *s)
{
	for (uint32_t i = 0; i < s->ntmpls; i++) {
		if (!s->tmpls[i])
			continue;
		tmpl_put(&s->d->tmpls, s->tmpls[i]);
		acct_uncharge(s->acct, ACCT_TEMPLATES, 1);
	}
	acct_free(s->acct, s->tmpls);
	acct_free(s->acct, s->tmpl_uses);
	s->tmpls = NULL;
	s->tmpl_uses = NULL;
	s->ntmpls = s->captmpls = 0;
}

static void session_put(struct session *s)
{
	if (--s->refs)
		return;
	struct acct *a = s->acct;
	acct_free(a, s);
	acct_put(a);
}

void session_close(struct session *s, const char *why)
{
	struct rp_daemon *d = s->d;

	if (s->closed)
		return;
	s->closed = 1;
	/* A request left unread makes the kernel reset the connection,
	 * and the client would not see our last reply. */
	session_consume(s);
	if (why) {
		acct_log(s->acct, LOG_WARNING, "pid %d fd %d: closing client: %s", (int)s->pid,
			 s->fd, why);
		acct_stat_add(s->acct, PROTO_STAT_CLIENTS_CLOSED, 1);
	} else {
		acct_log(s->acct, LOG_DEBUG, "pid %d fd %d: disconnected", (int)s->pid, s->fd);
	}
	park_drop(&d->parked, &s->park);
	hold_drop(s);
	ev_io_stop(d->loop, &s->io);
	ev_timer_stop(d->loop, &s->hello_timer);
	/* The worker closes the uffd: any fault still waiting falls back to
	 * the kernel, so the client can never hang on us. */
	if (s->mm) {
		s->mm->owner = NULL;
		mm_release(s->mm);
		s->mm = NULL;
	}
	drop_templates(s);
	emit(s, (struct obs_event){ .type = OBS_SESSION_END });
	acct_uncharge_fd(s->acct, ACCT_CONNECTIONS);
	/* Messages still queued on the socket may carry uffds: its last
	 * close may wait for their owners' mmap_lock. */
	loop_forget_fd(d->loop, s->fd);
	drop_fd(d, s->acct, s->fd);
	s->fd = -1;
	list_del(d, s);
	session_put(s);
}

static void on_hello_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	session_close(t->data, "no request before the handshake timeout");
}

/* Send a reply; a client whose socket is full is not reading its replies
 * and is closed (returns -1). */
static int reply(struct session *s, uint32_t seq, int32_t status, uint32_t id, uint64_t value)
{
	struct proto_reply r = { .status = status, .id = id, .value = value };

	/* Kept, so that a request a killed daemon answered but did not
	 * consume is answered again, not done twice (handle_one). */
	s->last = r;
	s->last_seq = seq;
	s->replied = 1;
	int e = proto_send(s->fd, PROTO_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);

	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
}

/* A request that changed the state, answered: the observer hears of the
 * answer first (a restart then answers it again rather than do it twice). */
static int reply_changed(struct session *s, uint32_t seq, uint32_t id, uint64_t value)
{
	emit(s, (struct obs_event){ .type = OBS_REPLY, .req_seq = seq, .id = id, .value = value });
	return reply(s, seq, 0, id, value);
}

/* The last word to a client being closed: the reply is best effort (its
 * socket may be full), and the session is closed exactly once. */
static void reply_and_close(struct session *s, uint32_t seq, int32_t status, uint32_t id,
			    const char *why)
{
	struct proto_reply r = { .status = status, .id = id };

	proto_send(s->fd, PROTO_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
	session_close(s, why);
}

/* --- templates ------------------------------------------------------------------ */

int session_reserve_handles(struct session *s, uint32_t n)
{
	if (n <= s->captmpls)
		return 0;
	uint32_t cap = s->captmpls ? s->captmpls : 8;
	while (cap < n)
		cap *= 2;
	struct tmpl **t2 = acct_realloc(s->acct, s->tmpls, cap * sizeof(*t2));
	if (!t2)
		return -errno;
	s->tmpls = t2;
	uint32_t *u2 = acct_realloc(s->acct, s->tmpl_uses, cap * sizeof(*u2));
	if (!u2)
		return -errno;
	s->tmpl_uses = u2;
	memset(s->tmpls + s->captmpls, 0, (cap - s->captmpls) * sizeof(*t2));
	memset(s->tmpl_uses + s->captmpls, 0, (cap - s->captmpls) * sizeof(*u2));
	s->captmpls = cap;
	return 0;
}

static int grow_handles(struct session *s)
{
	if (s->ntmpls >= s->d->cfg.lim.templates)
		return -EDQUOT;
	return session_reserve_handles(s, s->ntmpls + 1);
}

static void emit_handle(struct session *s, uint32_t i)
{
	emit(s, (struct obs_event){ .type = OBS_HANDLE,
				    .handle = i,
				    .tmpl = s->tmpls[i] ? s->tmpls[i]->id : 0,
				    .uses = s->tmpl_uses[i] });
}

/* A template handle for t: the same id again if this session already has
 * one for it, so repeated identical creates cost one slot. */
static int tmpl_handle(struct session *s, struct tmpl *t, uint32_t *id)
{
	uint32_t free_slot = UINT32_MAX;

	for (uint32_t i = 0; i < s->ntmpls; i++) {
		if (s->tmpls[i] == t) {
			s->tmpl_uses[i]++;
			tmpl_put(&s->d->tmpls, t);
			emit_handle(s, i);
			*id = i + 1;
			return 0;
		}
		if (!s->tmpls[i] && free_slot == UINT32_MAX)
			free_slot = i;
	}
	if (acct_charge(s->acct, ACCT_TEMPLATES, 1) < 0)
		return -EDQUOT;
	if (free_slot == UINT32_MAX) {
		int r = grow_handles(s);
		if (r < 0) {
			acct_uncharge(s->acct, ACCT_TEMPLATES, 1);
			return r;
		}
		free_slot = s->ntmpls++;
	}
	s->tmpls[free_slot] = t;
	s->tmpl_uses[free_slot] = 1;
	emit_handle(s, free_slot);
	*id = free_slot + 1;
	return 0;
}

static struct tmpl *tmpl_lookup(struct session *s, uint32_t id)
{
	if (id == 0 || id > s->ntmpls)
		return NULL;
	return s->tmpls[id - 1];
}

static int do_template(struct session *s, uint32_t seq, struct tmpl *t)
{
	uint32_t id = 0;
	int r;

	if (!t)
		r = errno == ENOSPC || errno == EDQUOT ? -EDQUOT : -ENOMEM;
	else if ((r = tmpl_handle(s, t, &id)) < 0)
		tmpl_put(&s->d->tmpls, t);
	return r ? reply(s, seq, r, 0, 0) : reply_changed(s, seq, id, 0);
}

static int do_release(struct session *s, uint32_t seq, const struct proto_template_release *m)
{
	struct tmpl *t = tmpl_lookup(s, m->id);

	if (!t)
		return reply(s, seq, -EINVAL, m->id, 0);
	if (--s->tmpl_uses[m->id - 1] == 0) {
		s->tmpls[m->id - 1] = NULL;
		tmpl_put(&s->d->tmpls, t);
		acct_uncharge(s->acct, ACCT_TEMPLATES, 1);
	}
	emit_handle(s, m->id - 1);
	return reply_changed(s, seq, m->id, 0);
}

/* --- MAP and UNMAP: ops on the worker ----------------------------------------------- */

static int range_ok(uint64_t addr, uint64_t len)
{
	return len && !(addr & (TMPL_PAGE - 1)) && !(len & (TMPL_PAGE - 1)) && addr + len > addr &&
	       addr >= uffd_user_bottom() && addr + len <= uffd_user_top();
}

static void on_op_done(struct mm_op *op);

/* --debug-die-peeked/--debug-die-answered N: the N-th request handled. */
static uint32_t nrequests;

static void debug_die(uint32_t at, uint32_t n, const char *when)
{
	if (at && at == n) {
		log_warn("--debug-die-%s %u: dying here", when, at);
		_exit(99);
	}
}

/* The op runs on the worker; the socket is not read until it is answered
 * (the request stays peeked on it: a restart finds it there). */
static int submit(struct session *s, uint32_t seq, enum mm_op_type type, uint64_t addr,
		  uint64_t len, struct tmpl *t, uint32_t id)
{
	if (t)
		tmpl_ref(&s->d->tmpls, t);
	s->op = (struct mm_op){ .type = type,
				.addr = addr,
				.len = len,
				.t = t,
				.session = s->id,
				.req_seq = seq,
				.done = on_op_done };
	s->op_seq = seq;
	s->op_id = id;
	s->busy = 1;
	s->refs++;
	ev_io_stop(s->d->loop, &s->io);
	mm_submit(s->mm, &s->op);
	return 0;
}

static void on_op_done(struct mm_op *op)
{
	struct session *s = (struct session *)((char *)op - offsetof(struct session, op));

	s->busy = 0;
	if (s->closed) {
		session_put(s);
		return;
	}
	/* Not the last reference: the list holds one while not closed. */
	session_put(s);
	if (op->status < 0)
		acct_log(s->acct, LOG_DEBUG, "pid %d: %s [%#llx, +%#llx) refused: %s", (int)s->pid,
			 op->type == MM_OP_MAP ? "MAP" : "UNMAP", (unsigned long long)op->addr,
			 (unsigned long long)op->len, strerror(-op->status));
	if (reply(s, s->op_seq, op->status, s->op_id, 0) < 0)
		return;
	debug_die(s->d->cfg.die_answered, s->op_nreq, "answered");
	session_consume(s);
	ev_io_start(s->d->loop, &s->io);
}

static int do_map(struct session *s, uint32_t seq, const struct proto_map *m)
{
	struct tmpl *t = tmpl_lookup(s, m->id);

	if (!range_ok(m->addr, m->len) || !t)
		return reply(s, seq, -EINVAL, m->id, 0);
	return submit(s, seq, MM_OP_MAP, m->addr, m->len, t, m->id);
}

static int do_unmap(struct session *s, uint32_t seq, const struct proto_unmap *m)
{
	if (!range_ok(m->addr, m->len))
		return reply(s, seq, -EINVAL, 0, 0);
	return submit(s, seq, MM_OP_UNMAP, m->addr, m->len, NULL, 0);
}

/* --- STATS and USAGE ---------------------------------------------------------------- */

/* Root and the daemon's own uid see the daemon; any other uid its own. */
static int sees_all(const struct session *s)
{
	return s->uid == 0 || s->uid == geteuid();
}

static int do_stats(struct session *s, uint32_t seq)
{
	struct proto_stats_reply r = { .status = 0, .count = PROTO_STAT_COUNT };
	int all = sees_all(s);

	for (unsigned i = 0; i < PROTO_STAT_COUNT; i++)
		r.counters[i] = all ? stat_get(i) : atomic_load(&s->acct->stat[i]);
	if (all) {
		r.counters[PROTO_STAT_TEMPLATES] = tmpl_count(&s->d->tmpls);
		r.counters[PROTO_STAT_LOOP_US] = atomic_load(&loop_ns) / 1000;
	} else {
		r.counters[PROTO_STAT_DENIED_SYSCALLS] = 0;
		r.counters[PROTO_STAT_LOG_SUPPRESSED] = log_rl_dropped(&s->acct->rl);
		r.counters[PROTO_STAT_LOOP_US] = atomic_load(&s->acct->stat[PROTO_STAT_LOOP_US]) /
						 1000;
	}
	int e = proto_send(s->fd, PROTO_STATS_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
}

static void usage_of(const struct acct *a, struct proto_usage_reply *r)
{
	const struct acct_limits *lim = acct_limits();

	r->uid = a->uid;
	r->count = ACCT_RES_COUNT;
	for (unsigned i = 0; i < ACCT_RES_COUNT; i++) {
		r->used[i] = atomic_load(&a->used[i]);
		r->limit[i] = lim->max[i];
		r->refused[i] = atomic_load(&a->refused[i]);
	}
	r->log_suppressed = log_rl_dropped((struct log_rl *)&a->rl);
	r->loop_us = atomic_load(&a->stat[PROTO_STAT_LOOP_US]) / 1000;
}

static int do_usage(struct session *s, uint32_t seq, const struct proto_usage *u)
{
	struct proto_usage_reply r = { .status = 0 };
	struct acct *a = NULL;

	if (u->flags & PROTO_USAGE_SELF)
		a = s->acct, acct_ref(a);
	else if (!sees_all(s) && (u->uid != s->uid || (u->flags & PROTO_USAGE_NEXT)))
		r.status = -EPERM;
	else if (!(a = acct_find(u->uid, !!(u->flags & PROTO_USAGE_NEXT))))
		r.status = -ENOENT;
	if (a) {
		usage_of(a, &r);
		acct_put(a);
	}
	int e = proto_send(s->fd, PROTO_USAGE_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
}

/* REPORT: the records of the caller's own process (its SO_PEERCRED pid),
 * whichever of its address spaces made them: the one its HELLO made, or
 * one adopted from a fork (a child reconnects: docs/report.md). */
static int do_report(struct session *s, uint32_t seq, const struct proto_report *q)
{
	struct proto_report_reply r = { .status = 0 };
	struct acct_rrec recs[PROTO_REPORT_RECS];
	int more;

	if (q->max < 1 || q->max > PROTO_REPORT_RECS)
		return reply(s, seq, -EINVAL, 0, 0);
	r.count = acct_report_take(s->acct, (int32_t)s->pid, recs, q->max, &more, &r.dropped);
	r.more = (uint32_t)more;
	for (uint32_t i = 0; i < r.count; i++)
		r.rec[i] = (struct proto_report_rec){
			.addr = recs[i].addr,
			.ns = recs[i].ns,
			.tid = recs[i].tid,
		};
	int e = proto_send(s->fd, PROTO_REPORT_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
}

/* --- HELLO ---------------------------------------------------------------------------- */

/* A HELLO refused: the client's uffd is closed off the main loop (its
 * last close waits for the client's mmap_lock), the client told why. */
static int hello_refused(struct session *s, uint32_t seq, int fd, int32_t status, const char *why)
{
	drop_fd(s->d, s->acct, fd);
	reply_and_close(s, seq, status, PROTO_VERSION, why);
	return -1;
}

/* HELLO: the client's unconfigured uffd. Returns -1 if s was closed. */
static int do_hello(struct session *s, uint32_t seq, const struct proto_hello *h, int fd)
{
	uint64_t features = 0;
	int r;

	if (s->mm)
		return hello_refused(s, seq, fd, -EPROTO, "second HELLO");
	if (h->page_size != TMPL_PAGE)
		return hello_refused(s, seq, fd, -EINVAL, "page size mismatch");
	if ((r = mm_handshake(fd, &features)) < 0)
		return hello_refused(s, seq, fd, r,
				     r == -EBADF ? "HELLO fd is not a userfaultfd"
						 : "userfaultfd handshake refused");
	/* A 32-bit process's uffd refuses every copy from our (64-bit)
	 * template addresses: it would fault for ever. UFFDIO_WAKE takes no
	 * lock of the client's and checks the range against its top. */
	if (uffd_wake(fd, uffd_user_bottom(), uffd_user_top()) == -EINVAL)
		return hello_refused(
			s, seq, fd, -EOPNOTSUPP,
			"a 32-bit process: its address space ends below our templates");
	struct rp_mm *mm = mm_new_client(s->d, fd, features, s->acct, s->pid);
	if (!mm) {
		int e = errno;
		return hello_refused(s, seq, fd, -e,
				     e == EDQUOT ? "a budget of its uid is used up"
						 : "out of memory");
	}
	mm->report = !!(h->flags & PROTO_HELLO_REPORT);
	session_attach_mm(s, mm);
	emit(s, (struct obs_event){ .type = OBS_SESSION_MM, .mm = mm->id });
	mm_start(mm, worker_pick(&s->d->workers, s->acct));
	acct_log(s->acct, LOG_INFO, "client up: pid %d, uffd %d on worker %u%s%s", (int)s->pid, fd,
		 mm->w->id, (h->flags & PROTO_HELLO_USER_MODE_ONLY) ? " (user-mode only)" : "",
		 mm->report ? " (report mode)" : "");
	return reply_changed(s, seq, PROTO_VERSION, features);
}

/* One valid request. Returns -1 if the session was closed, 1 if it waits
 * for an op, else 0. */
static int dispatch(struct session *s, const struct proto_hdr *h, int fd)
{
	const void *p = h + 1;

	switch (h->type) {
	case PROTO_HELLO:
		return do_hello(s, h->seq, p, fd);
	case PROTO_STATS:
		ev_timer_stop(s->d->loop, &s->hello_timer);
		return do_stats(s, h->seq);
	case PROTO_USAGE:
		ev_timer_stop(s->d->loop, &s->hello_timer);
		return do_usage(s, h->seq, p);
	case PROTO_UPGRADE:
		ev_timer_stop(s->d->loop, &s->hello_timer);
		if (!s->d->upgrade)
			return reply(s, h->seq, -EOPNOTSUPP, 0, 0);
		/* Gone from the socket first: the next daemon must not upgrade again. */
		session_consume(s);
		s->d->upgrade(s->d, s->fd, h->seq, s->uid);
		return 0;
	default:
		break;
	}
	if (!s->mm) {
		reply_and_close(s, h->seq, -EPROTO, 0, "request before HELLO");
		return -1;
	}
	switch (h->type) {
	case PROTO_TEMPLATE_FILL: {
		const struct proto_template_fill *f = p;
		return do_template(s, h->seq,
				   tmpl_get_fill(&s->d->tmpls, s->acct, s->uid, f->byte));
	}
	case PROTO_TEMPLATE_CREATE:
		return do_template(s, h->seq, tmpl_get_page(&s->d->tmpls, s->acct, s->uid, p, 0));
	case PROTO_TEMPLATE_RELEASE:
		return do_release(s, h->seq, p);
	case PROTO_MAP:
		return do_map(s, h->seq, p) < 0 ? -1 : s->busy;
	case PROTO_UNMAP:
		return do_unmap(s, h->seq, p) < 0 ? -1 : s->busy;
	case PROTO_REPORT:
		return do_report(s, h->seq, p);
	default:
		/* proto_check admits only the types above. */
		abort();
	}
}

void session_consume(struct session *s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int fds[PROTO_RECV_FDS_MAX], nfds, trunc;

	if (!s->peeked)
		return;
	s->peeked = 0;
	if (proto_recv_fds(s->fd, buf, fds, &nfds, &trunc, MSG_DONTWAIT) < 0)
		return;
	for (int i = 0; i < nfds; i++)
		drop_fd(s->d, s->acct, fds[i]);
}

/* A restored session's first request may be the one the previous daemon
 * answered (the answer is in the journal) but had not taken off the
 * socket yet: it is answered again, not done twice. A client that already
 * had the answer skips it as stale. 1 if so, 0 if not, -1 if s was closed. */
static int replayed(struct session *s, const struct proto_hdr *h, int fd)
{
	int first = s->replay;

	s->replay = 0;
	if (!first || !s->replied || h->seq != s->last_seq || h->type == PROTO_STATS ||
	    h->type == PROTO_UPGRADE || h->type == PROTO_USAGE)
		return 0;
	drop_fd(s->d, s->acct, fd);
	acct_log(s->acct, LOG_INFO,
		 "pid %d: %s seq %u was answered before the restart: answering again", (int)s->pid,
		 proto_type_name(h->type), h->seq);
	int e = proto_send(s->fd, PROTO_REPLY, h->seq, &s->last, sizeof(s->last), -1, MSG_DONTWAIT);
	if (e) {
		session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
		return -1;
	}
	session_consume(s);
	return 1;
}

/* Why a packet is refused, as the client is told before the close. */
static void bad_packet(struct session *s, const uint8_t *buf, long n, enum proto_err e)
{
	char why[96];
	uint32_t seq = 0;

	/* Tell the client why before hanging up, when we can parse a seq. */
	if (n >= (long)sizeof(struct proto_hdr))
		seq = ((const struct proto_hdr *)buf)->seq;
	snprintf(why, sizeof(why), "bad message: %s", proto_err_str(e));
	reply_and_close(s, seq, e == PROTO_EVERSION ? -EPROTO : -EBADMSG, 0, why);
}

/* A request is peeked at, handled, answered and only then taken off the
 * socket: a daemon killed in between leaves it there for the next one.
 * Returns 1 to go on, 0 when drained or waiting for an op, -1 if s was
 * closed. */
static int handle_one(struct session *s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h = NULL;
	int fds[PROTO_RECV_FDS_MAX], nfds, trunc;
	long n = proto_recv_fds(s->fd, buf, fds, &nfds, &trunc, MSG_DONTWAIT | MSG_PEEK);
	int fd = n >= 0 && nfds ? fds[0] : -1;

	s->peeked = n >= 0;
	/* Only a HELLO's one descriptor is ever kept (proto_check refuses
	 * the rest); these copies of the others go now, off the main loop. */
	for (int i = 1; n >= 0 && i < nfds; i++)
		drop_fd(s->d, s->acct, fds[i]);
	if (n == -EAGAIN)
		return 0;
	if (n <= 0) {
		/* An empty packet reads as end of file, but may still carry
		 * descriptors: each one would leak. */
		drop_fd(s->d, s->acct, fd);
		session_close(s, nfds ? "bad message: empty, with a file descriptor"
				 : n == 0 || n == -ECONNRESET ? NULL
							      : "receive failed");
		return -1;
	}
	enum proto_err e = trunc ? PROTO_ETRUNC : proto_check(buf, (size_t)n, nfds, 1, &h);
	/* proto_recv reports MSG_TRUNC and MSG_CTRUNC alike: only a HELLO
	 * that is whole and valid but for its missing descriptor lost that
	 * descriptor on our side. An oversized packet (data cut: MSG_TRUNC)
	 * that merely says HELLO is the client's fault (found by
	 * fuzz_session: it was told EMFILE). */
	if (trunc && !nfds && proto_check(buf, (size_t)n, 1, 1, &h) == PROTO_OK &&
	    h->type == PROTO_HELLO) {
		/* A HELLO's descriptor could not be installed: our own table
		 * is full (the budgets keep a reserve, but not for ever). The
		 * client is not to blame: it hears EMFILE, not EBADMSG. (One
		 * that sends more descriptors than we take gets some, and
		 * EBADMSG.) */
		drop_fd(s->d, s->acct, fd);
		reply_and_close(s, ((const struct proto_hdr *)buf)->seq, -EMFILE, 0,
				"its HELLO's descriptor could not be taken: out of descriptors");
		return -1;
	}
	if (e != PROTO_OK) {
		drop_fd(s->d, s->acct, fd);
		bad_packet(s, buf, n, e);
		return -1;
	}
	int r = replayed(s, h, fd);
	if (r)
		return r;
	s->op_nreq = ++nrequests;
	debug_die(s->d->cfg.die_peeked, s->op_nreq, "peeked");
	if ((r = dispatch(s, h, fd)) != 0)
		return r > 0 ? 0 : -1;
	debug_die(s->d->cfg.die_answered, s->op_nreq, "answered");
	session_consume(s);
	return 1;
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* A uid gets at most --loop-quota requests per loop iteration, whatever
 * number of connections it spreads them over: past it, its sockets are
 * parked and woken a few at a time (worker.h), and every other uid gets
 * its turn first. */
static void on_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct session *s = io->data;
	struct acct *a = s->acct;
	uint32_t left = acct_turn_left(a, 0, ev_iteration(loop), s->d->cfg.lim.loop_quota);
	uint32_t done = 0;
	uint64_t t0;

	(void)revents;
	if (!left) {
		park(&s->d->parked, &s->park);
		return;
	}
	t0 = now_ns();
	acct_ref(a);
	while (done < left && done < REQS_PER_WAKE) {
		if (hold(s))
			break;
		done++;
		if (handle_one(s) <= 0)
			break;
	}
	acct_turn_use(a, 0, done);
	uint64_t dt = now_ns() - t0;
	atomic_fetch_add(&loop_ns, dt);
	/* Nanoseconds in the account; STATS and USAGE show microseconds. */
	atomic_fetch_add(&a->stat[PROTO_STAT_LOOP_US], dt);
	acct_put(a);
}
