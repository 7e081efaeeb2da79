/* Client connections: see session.h.
 *
 * Trust boundary: everything read here comes from an unprivileged
 * process. A malformed message, a protocol violation or a client that
 * does not read its replies closes that client with a logged reason; a
 * well-formed request that cannot be honoured (bad address, unknown
 * template, a limit) gets an error reply and the session goes on. */
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "log.h"
#include "handover.h"
#include "mm.h"
#include "persist.h"
#include "proto.h"
#include "stats.h"
#include "template.h"
#include "worker.h"

/* Requests handled per wake-up before the loop serves others. */
#define REQS_PER_WAKE 16
/* Highest user address on x86-64 with 5-level paging. */
#define USER_ADDR_END (1ull << 56)
/* A MAP held back for an event in flight (map_held) is tried again this
 * often, and goes ahead anyway after the cap. */
#define MAP_RETRY_S 0.001
#define MAP_WAIT_MAX_S 0.25

static void on_readable(struct ev_loop *loop, ev_io *io, int revents);
static void on_hello_timeout(struct ev_loop *loop, ev_timer *t, int revents);
static void on_map_retry(struct ev_loop *loop, ev_timer *t, int revents);

static void list_add(struct rp_daemon *d, struct session *s)
{
	s->next = d->sessions;
	if (d->sessions)
		d->sessions->prev = s;
	d->sessions = s;
	d->nsessions++;
	stat_inc(PROTO_STAT_CLIENTS);
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
	stat_add(PROTO_STAT_CLIENTS, -1);
}

/* Refuse a connection with a status the client library reports. */
static void refuse(int fd, int32_t status)
{
	struct proto_reply r = { .status = status };
	proto_send(fd, PROTO_REPLY, 0, &r, sizeof(r), -1, MSG_DONTWAIT);
	close(fd);
}

/* Serve s (acct charged, fd non-blocking) from now on. */
static void session_init(struct rp_daemon *d, struct session *s, int fd, const struct ucred *cred,
			 uint32_t id)
{
	s->d = d;
	s->fd = fd;
	s->snap_id = id;
	s->pid = cred->pid;
	s->uid = cred->uid;
	s->gid = cred->gid;
	ev_io_init(&s->io, on_readable, fd, EV_READ);
	s->io.data = s;
	ev_io_start(d->loop, &s->io);
	ev_timer_init(&s->hello_timer, on_hello_timeout, d->cfg.lim.hello_timeout_s, 0.);
	s->hello_timer.data = s;
	ev_timer_start(d->loop, &s->hello_timer);
	ev_timer_init(&s->map_timer, on_map_retry, MAP_RETRY_S, 0.);
	s->map_timer.data = s;
	list_add(d, s);
}

void session_start(struct rp_daemon *d, int fd)
{
	struct session *s = calloc(1, sizeof(*s));
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (!s || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    !(s->acct = acct_get(cred.uid))) {
		log_err("connection fd %d refused: %s", fd, s ? strerror(errno) : "out of memory");
		free(s);
		refuse(fd, -ENOMEM);
		return;
	}
	if (acct_charge(s->acct, ACCT_CONNECTIONS, 1) < 0) {
		acct_put(s->acct);
		free(s);
		refuse(fd, -EMFILE);
		return;
	}
	session_init(d, s, fd, &cred, persist_new_id(d, PERSIST_SESSION));
	persist_store(d, PERSIST_SESSION, s->snap_id, fd);
	log_debug("pid %d uid %d: connected (fd %d)", (int)s->pid, (int)s->uid, fd);
}

struct session *session_adopt(struct rp_daemon *d, int fd, const struct ucred *cred, uint32_t id)
{
	struct session *s = calloc(1, sizeof(*s));

	if (!s || !(s->acct = acct_get(cred->uid))) {
		free(s);
		return NULL;
	}
	acct_adjust(s->acct, ACCT_CONNECTIONS, 1);
	session_init(d, s, fd, cred, id);
	return s;
}

static void drop_templates(struct session *s)
{
	for (uint32_t i = 0; i < s->ntmpls; i++) {
		if (!s->tmpls[i])
			continue;
		tmpl_put(&s->d->tmpls, s->tmpls[i]);
		acct_uncharge(s->acct, ACCT_TEMPLATES, 1);
	}
	free(s->tmpls);
	free(s->tmpl_uses);
}

void session_close(struct session *s, const char *why)
{
	struct rp_daemon *d = s->d;

	/* A request left unread makes the kernel reset the connection,
	 * and the client would not see our last reply. */
	session_consume(s);
	if (why) {
		log_warn("pid %d uid %d fd %d: closing client: %s", (int)s->pid, (int)s->uid, s->fd, why);
		stat_inc(PROTO_STAT_CLIENTS_CLOSED);
	} else {
		log_debug("pid %d uid %d fd %d: disconnected", (int)s->pid, (int)s->uid, s->fd);
	}
	ev_io_stop(d->loop, &s->io);
	ev_timer_stop(d->loop, &s->hello_timer);
	ev_timer_stop(d->loop, &s->map_timer);
	/* The worker closes the uffd: any fault still waiting falls back to
	 * the kernel, so the client can never hang on us. */
	if (s->mm)
		worker_del(s->mm->w, s->mm);
	drop_templates(s);
	acct_uncharge(s->acct, ACCT_CONNECTIONS, 1);
	acct_put(s->acct);
	/* The fd store's copy would keep the connection open. */
	persist_unstore(d, PERSIST_SESSION, s->snap_id);
	persist_close_watched(d->loop, s->fd);
	list_del(d, s);
	free(s);
	persist_changed(d);
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

	/* Kept, with the state it answers, before the client sees it: a
	 * mapping the client was told about is in the snapshot before its
	 * first fault, and a request a killed daemon answered but did not
	 * consume is answered again, not done twice (handle_one). */
	s->last = r;
	s->last_seq = seq;
	s->replied = 1;
	persist_sync(s->d);
	int e = proto_send(s->fd, PROTO_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);

	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
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

static int grow_handles(struct session *s)
{
	if (s->ntmpls >= s->d->cfg.lim.templates)
		return -EDQUOT;
	if (s->ntmpls < s->captmpls)
		return 0;
	uint32_t cap = s->captmpls ? s->captmpls * 2 : 8;
	struct tmpl **t2 = realloc(s->tmpls, cap * sizeof(*t2));
	if (!t2)
		return -ENOMEM;
	s->tmpls = t2;
	uint32_t *u2 = realloc(s->tmpl_uses, cap * sizeof(*u2));
	if (!u2)
		return -ENOMEM;
	s->tmpl_uses = u2;
	s->captmpls = cap;
	return 0;
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
		r = errno == ENOSPC ? -EDQUOT : -ENOMEM;
	else if ((r = tmpl_handle(s, t, &id)) < 0)
		tmpl_put(&s->d->tmpls, t);
	return reply(s, seq, r, r ? 0 : id, 0);
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
	return reply(s, seq, 0, m->id, 0);
}

static int range_ok(uint64_t addr, uint64_t len)
{
	return len && !(addr & (TMPL_PAGE - 1)) && !(len & (TMPL_PAGE - 1)) &&
	       addr + len > addr && addr + len <= USER_ADDR_END;
}

static int do_map(struct session *s, uint32_t seq, const struct proto_map *m)
{
	struct tmpl *t = tmpl_lookup(s, m->id);

	if (!range_ok(m->addr, m->len) || !t)
		return reply(s, seq, -EINVAL, m->id, 0);
	int r = mm_map(s->mm, m->addr, m->len, t);
	if (r < 0)
		log_debug("pid %d: MAP [%#llx, +%#llx) refused: %s", (int)s->pid,
			  (unsigned long long)m->addr, (unsigned long long)m->len, strerror(-r));
	return reply(s, seq, r, m->id, 0);
}

/* munmap(2) and mremap(2) free the old address range before their event is
 * queued, and the kernel lets the client go on only once we have read it:
 * another thread of the client can map the freed address and send its MAP
 * before the event is even in the uffd. Done at once, the MAP would find
 * the old range still in the table (EEXIST), or the late event would
 * remove or move the new range (its untouched pages would read zeros).
 * So while the kernel says an event is in flight (mm_event_in_flight), the
 * MAP stays on the socket and the socket is not read (what the client
 * sends next stays behind it, in order); the worker reads the event
 * meanwhile, and mm_map waits for it to be applied. Tried again every
 * MAP_RETRY_S, it goes ahead after MAP_WAIT_MAX_S whatever the kernel says
 * (a client that munmaps without end from another thread must not stall
 * its MAPs for ever). Other sessions are served all along. 1 if m is held
 * (the retry timer armed), 0 to handle it now. */
static int map_held(struct session *s, const struct proto_map *m)
{
	struct ev_loop *loop = s->d->loop;
	ev_tstamp now = ev_now(loop);

	if (!s->mm || !range_ok(m->addr, m->len) || !tmpl_lookup(s, m->id) ||
	    !mm_event_in_flight(s->mm, m->addr)) {
		if (s->map_since)
			log_debug("pid %d: MAP [%#llx, +%#llx) held back %.1f ms", (int)s->pid,
				  (unsigned long long)m->addr, (unsigned long long)m->len,
				  (now - s->map_since) * 1e3);
		s->map_since = 0;
		return 0;
	}
	if (!s->map_since) {
		s->map_since = now;
		stat_inc(PROTO_STAT_MAPS_WAITED);
	} else if (now - s->map_since >= MAP_WAIT_MAX_S) {
		log_notice("pid %d: MAP [%#llx, +%#llx): an unmap, mremap or fork event is still "
			   "in flight after %.0f ms; mapping anyway", (int)s->pid,
			   (unsigned long long)m->addr, (unsigned long long)m->len,
			   (now - s->map_since) * 1e3);
		stat_inc(PROTO_STAT_MAPS_WAIT_EXPIRED);
		s->map_since = 0;
		return 0;
	}
	ev_io_stop(loop, &s->io);
	ev_timer_set(&s->map_timer, MAP_RETRY_S, 0.);
	ev_timer_start(loop, &s->map_timer);
	return 1;
}

static void on_map_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)revents;
	ev_io_start(loop, &s->io);
	on_readable(loop, &s->io, EV_READ);
}

static int do_unmap(struct session *s, uint32_t seq, const struct proto_unmap *m)
{
	if (!range_ok(m->addr, m->len))
		return reply(s, seq, -EINVAL, 0, 0);
	return reply(s, seq, mm_unmap(s->mm, m->addr, m->len), 0, 0);
}

static int do_stats(struct session *s, uint32_t seq)
{
	struct proto_stats_reply r = { .status = 0, .count = PROTO_STAT_COUNT };

	for (unsigned i = 0; i < PROTO_STAT_COUNT; i++)
		r.counters[i] = stat_get(i);
	/* The store knows; ranges drop references from worker threads. */
	r.counters[PROTO_STAT_TEMPLATES] = tmpl_count(&s->d->tmpls);
	int e = proto_send(s->fd, PROTO_STATS_REPLY, seq, &r, sizeof(r), -1, MSG_DONTWAIT);
	if (e == 0)
		return 0;
	session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
	return -1;
}

/* HELLO: the client's unconfigured uffd. Returns -1 if s was closed. */
static int do_hello(struct session *s, uint32_t seq, const struct proto_hello *h, int fd)
{
	uint64_t features = 0;
	long long r;

	if (s->mm) {
		close(fd);
		reply_and_close(s, seq, -EPROTO, 0, "second HELLO");
		return -1;
	}
	if (h->page_size != TMPL_PAGE) {
		close(fd);
		reply_and_close(s, seq, -EINVAL, PROTO_VERSION, "page size mismatch");
		return -1;
	}
	r = mm_uffd_handshake(fd, &features);
	if (r < 0) {
		close(fd);
		reply_and_close(s, seq, (int32_t)r, PROTO_VERSION,
				r == -EBADF ? "HELLO fd is not a userfaultfd"
					    : "userfaultfd handshake refused");
		return -1;
	}
	s->mm = mm_new_client(s->d, fd, features, s->uid, s->pid);
	if (!s->mm) {
		int e = errno;
		close(fd);
		reply_and_close(s, seq, -e, PROTO_VERSION,
				e == EDQUOT ? "process limit of its uid reached" : "out of memory");
		return -1;
	}
	s->mm->w = daemon_pick_worker(s->d);
	mm_ref(s->mm); /* the worker's */
	worker_add(s->mm->w, s->mm);
	ev_timer_stop(s->d->loop, &s->hello_timer);
	log_info("pid %d uid %d: client up, uffd %d on worker %d%s", (int)s->pid, (int)s->uid, fd,
		 s->mm->w->id, (h->flags & PROTO_HELLO_USER_MODE_ONLY) ? " (user-mode only)" : "");
	return reply(s, seq, 0, PROTO_VERSION, features);
}

/* One valid request. Returns -1 if the session was closed. */
static int dispatch(struct session *s, const struct proto_hdr *h, int fd)
{
	const void *p = h + 1;

	if (h->type == PROTO_HELLO)
		return do_hello(s, h->seq, p, fd);
	if (h->type == PROTO_STATS) {
		ev_timer_stop(s->d->loop, &s->hello_timer);
		return do_stats(s, h->seq);
	}
	if (h->type == PROTO_UPGRADE) {
		ev_timer_stop(s->d->loop, &s->hello_timer);
		/* Gone from the socket first: the next daemon must not upgrade again. */
		session_consume(s);
		handover_request(s->d, s->fd, h->seq, s->uid);
		return 0;
	}
	if (!s->mm) {
		reply_and_close(s, h->seq, -EPROTO, 0, "request before HELLO");
		return -1;
	}
	switch (h->type) {
	case PROTO_TEMPLATE_FILL: {
		const struct proto_template_fill *f = p;
		return do_template(s, h->seq, tmpl_get_fill(&s->d->tmpls, f->byte));
	}
	case PROTO_TEMPLATE_CREATE:
		return do_template(s, h->seq, tmpl_get_page(&s->d->tmpls, p));
	case PROTO_TEMPLATE_RELEASE:
		return do_release(s, h->seq, p);
	case PROTO_MAP:
		return do_map(s, h->seq, p);
	case PROTO_UNMAP:
		return do_unmap(s, h->seq, p);
	default:
		/* proto_check admits only the types above. */
		abort();
	}
}

/* Read and handle one packet. Returns 1 to go on, 0 when drained, -1 if s
 * was closed. */
/* --debug-die-peeked/--debug-die-answered N: the N-th request handled. */
static uint32_t nrequests;

static void debug_die(uint32_t at, const char *when)
{
	if (at && at == nrequests) {
		log_warn("--debug-die-%s %u: dying here", when, at);
		_exit(99);
	}
}

void session_consume(struct session *s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int fd, nfds, trunc;

	if (!s->peeked)
		return;
	s->peeked = 0;
	proto_recv(s->fd, buf, &fd, &nfds, &trunc, MSG_DONTWAIT);
	if (fd >= 0)
		close(fd);
}

/* A restored session's first request may be the one the previous daemon
 * answered (the answer is in the snapshot) but had not taken off the
 * socket yet: it is answered again, not done twice. A client that already
 * had the answer skips it as stale. 1 if so, 0 if not, -1 if s was closed. */
static int replayed(struct session *s, const struct proto_hdr *h, int fd)
{
	int first = s->replay;

	s->replay = 0;
	if (!first || !s->replied || h->seq != s->last_seq || h->type == PROTO_STATS ||
	    h->type == PROTO_UPGRADE)
		return 0;
	if (fd >= 0)
		close(fd);
	log_info("pid %d uid %d: %s seq %u was answered before the restart: answering again",
		 (int)s->pid, (int)s->uid, proto_type_name(h->type), h->seq);
	int e = proto_send(s->fd, PROTO_REPLY, h->seq, &s->last, sizeof(s->last), -1, MSG_DONTWAIT);
	if (e) {
		session_close(s, e == -EAGAIN ? "not reading its replies" : "reply failed");
		return -1;
	}
	session_consume(s);
	return 1;
}

/* A request is peeked at, handled, answered and only then taken off the
 * socket: a daemon killed in between leaves it there for the next one. */
static int handle_one(struct session *s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h = NULL;
	int fd, nfds, trunc;
	long n = proto_recv(s->fd, buf, &fd, &nfds, &trunc, MSG_DONTWAIT | MSG_PEEK);

	s->peeked = n >= 0;

	if (n == -EAGAIN)
		return 0;
	if (n <= 0) {
		/* An empty packet reads as end of file, but may still carry
		 * descriptors: each one would leak. */
		if (fd >= 0)
			close(fd);
		session_close(s, nfds ? "bad message: empty, with a file descriptor"
			      : n == 0 || n == -ECONNRESET ? NULL : "receive failed");
		return -1;
	}
	enum proto_err e = trunc ? PROTO_ETRUNC : proto_check(buf, (size_t)n, nfds, 1, &h);
	if (e != PROTO_OK) {
		char why[96];
		if (fd >= 0)
			close(fd);
		/* Tell the client why before hanging up, when we can parse a seq. */
		uint32_t seq = 0;
		if (n >= (long)sizeof(struct proto_hdr))
			seq = ((const struct proto_hdr *)buf)->seq;
		snprintf(why, sizeof(why), "bad message: %s", proto_err_str(e));
		reply_and_close(s, seq, e == PROTO_EVERSION ? -EPROTO : -EBADMSG, 0, why);
		return -1;
	}
	int r = replayed(s, h, fd);
	if (r)
		return r;
	/* Still on the socket, and still peeked: see map_held. */
	if (h->type == PROTO_MAP && map_held(s, (const struct proto_map *)(h + 1)))
		return 0;
	nrequests++;
	debug_die(s->d->cfg.die_peeked, "peeked");
	if (dispatch(s, h, fd) < 0)
		return -1;
	debug_die(s->d->cfg.die_answered, "answered");
	session_consume(s);
	return 1;
}

static void on_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct session *s = io->data;

	(void)loop;
	(void)revents;
	for (int i = 0; i < REQS_PER_WAKE; i++)
		if (handle_one(s) <= 0)
			return;
}
