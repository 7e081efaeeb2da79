/* librefpage: the client side of refpaged. See include/refpage.h.
 *
 * Constraints: this code may run inside malloc, so it never calls
 * malloc/free or stdio (client objects come from mmap, messages live on
 * the stack); it may run in many threads (one mutex per client serialises
 * request/reply pairs); and in a fork child it must not touch the
 * parent's connection state, which another parent thread may have held
 * locked at fork time: every call compares the owner pid first and a child
 * rebinds to a connection of its own. */
#include "refpage.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"

#define RP_API __attribute__((visibility("default")))
#define PAGE PROTO_PAGE_SIZE

/* Templates the client made, kept so that a fork child can recreate them
 * on its own connection and keep using the parent's ids. */
#define RP_MAX_TEMPLATES 256

struct rp_tmpl_rec {
	uint32_t id;      /* the id handed to the caller (0: free slot) */
	uint32_t live_id; /* id on the current connection, 0: not made yet */
	uint8_t *page;    /* contents (mmap'd page) */
};

struct rp_client {
	atomic_int owner; /* pid the connection belongs to */
	pthread_mutex_t lock;
	int sock;       /* -1: not connected (yet, or any more) */
	int lost;       /* the daemon went away */
	unsigned flags; /* RP_CONNECT_*, for every (re)connection */
	uint32_t seq;
	uint32_t next_id;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct rp_tmpl_rec tmpls[RP_MAX_TEMPLATES];
};

static const char *socket_path(const char *p)
{
	if (p)
		return p;
	p = getenv("REFPAGED_SOCKET");
	return p && *p ? p : PROTO_DEFAULT_SOCKET;
}


/* Receive one packet. A daemon that closes the connection with our
 * request unread (it refused the connection: a limit) makes the first
 * receive fail with ECONNRESET, before the replies still queued: its
 * refusal among them. */
static long recv_packet(int sock, uint8_t *buf, int *nfds, int *trunc, int flags)
{
	long n = -ECONNRESET;
	int rfd;

	for (int i = 0; i < 2 && n == -ECONNRESET; i++) {
		n = proto_recv(sock, buf, &rfd, nfds, trunc, flags);
		if (rfd >= 0)
			close(rfd);
	}
	return n;
}

/* After a send found the connection closed: the daemon may have refused
 * it before reading anything, and its reason is still queued. Returns
 * that status, or -ENOTCONN. */
static int refusal(int sock)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h;
	int nfds, trunc;
	long n = recv_packet(sock, buf, &nfds, &trunc, MSG_DONTWAIT);

	if (n <= 0 || trunc || proto_check(buf, (size_t)n, nfds, 0, &h) != PROTO_OK ||
	    h->type != PROTO_REPLY || h->seq != 0)
		return -ENOTCONN;
	const struct proto_reply *pr = (const void *)(h + 1);
	return pr->status < 0 ? pr->status : -ENOTCONN;
}

/* One request, one reply, under c->lock. rep gets the payload. */
static int roundtrip(struct rp_client *c, uint16_t type, const void *payload, uint32_t len, int fd,
		     uint16_t rep_type, void *rep, uint32_t rep_len)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	const struct proto_hdr *h;
	uint32_t seq = ++c->seq;
	int nfds, trunc;
	int r = proto_send(c->sock, type, seq, payload, len, fd, 0);

	if (r < 0)
		return r == -EPIPE || r == -ECONNRESET ? refusal(c->sock) : r;
	long n;
	do {
		n = recv_packet(c->sock, buf, &nfds, &trunc, 0);
		if (n <= 0)
			return n == 0 || n == -ECONNRESET ? -ENOTCONN : (int)n;
		if (trunc || proto_check(buf, (size_t)n, nfds, 0, &h) != PROTO_OK)
			return -EPROTO;
		/* A daemon killed after answering an earlier request, but
		 * before taking it off the socket, answers it again once
		 * restarted (daemon/session.c): that reply is stale. */
		/* Any reply type: every answer is a message from the daemon. */
	} while (h->type >= PROTO_REPLY && h->seq && h->seq != seq && (int32_t)(seq - h->seq) > 0);
	if (h->seq != seq) {
		/* seq 0: the daemon refused the connection itself (a limit). */
		const struct proto_reply *pr = (const void *)(h + 1);
		return h->seq == 0 && h->type == PROTO_REPLY && pr->status < 0 ? pr->status
									       : -EPROTO;
	}
	if (h->type == PROTO_REPLY && rep_type != PROTO_REPLY) {
		/* The daemon refused the request with a plain status. */
		const struct proto_reply *pr = (const void *)(h + 1);
		return pr->status < 0 ? pr->status : -EPROTO;
	}
	if (h->type != rep_type)
		return -EPROTO;
	memcpy(rep, h + 1, rep_len);
	return 0;
}

static void mark_lost(struct rp_client *c)
{
	c->lost = 1;
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
}

/* A round trip without a descriptor; a connection that failed it is lost. */
static int ask(struct rp_client *c, uint16_t type, const void *p, uint32_t len, uint16_t rep_type,
	       void *rep, uint32_t rep_len)
{
	int r = roundtrip(c, type, p, len, -1, rep_type, rep, rep_len);
	if (r == -ENOTCONN || r == -EPROTO)
		mark_lost(c);
	return r;
}

static int request(struct rp_client *c, uint16_t type, const void *p, uint32_t len,
		   struct proto_reply *rep)
{
	int r = ask(c, type, p, len, PROTO_REPLY, rep, sizeof(*rep));
	return r < 0 ? r : rep->status;
}


/* Connect and hand the daemon a fresh uffd. Our copy of the uffd is
 * closed right after: a dead daemon then takes the last reference with it
 * and every fault falls back to the kernel instead of hanging. */
static int do_connect(struct rp_client *c)
{
	struct proto_hello h = { .page_size = PAGE, .pid = (uint32_t)getpid() };
	struct proto_reply rep;
	int umo, uffd, r;

	if (sysconf(_SC_PAGESIZE) != PAGE)
		return -EINVAL;
	if ((c->sock = proto_dial(c->path)) < 0)
		return c->sock;
	if ((uffd = proto_uffd_create(&umo)) < 0) {
		r = uffd;
		goto fail;
	}
	h.flags = umo ? PROTO_HELLO_USER_MODE_ONLY : 0;
	if (c->flags & RP_CONNECT_REPORT)
		h.flags |= PROTO_HELLO_REPORT;
	r = roundtrip(c, PROTO_HELLO, &h, sizeof(h), uffd, PROTO_REPLY, &rep, sizeof(rep));
	close(uffd);
	if (r == 0)
		r = rep.status;
	if (r == 0)
		return 0;
	/* A daemon from before report mode refuses the flag as a bad packet. */
	if (r == -EBADMSG && (c->flags & RP_CONNECT_REPORT))
		r = -EOPNOTSUPP;
fail:
	close(c->sock);
	c->sock = -1;
	return r;
}

RP_API int rp_connect(const char *path, rp_client **out)
{
	return rp_connect_opts(path, 0, out);
}

RP_API int rp_connect_opts(const char *path, unsigned flags, rp_client **out)
{
	const char *p = socket_path(path);
	struct rp_client *c;
	int r;

	if (!out || (flags & ~(unsigned)RP_CONNECT_REPORT))
		return -EINVAL;
	if (strlen(p) >= sizeof(c->path))
		return -ENAMETOOLONG;
	c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED)
		return -ENOMEM;
	strcpy(c->path, p);
	c->flags = flags;
	pthread_mutex_init(&c->lock, NULL);
	atomic_init(&c->owner, (int)getpid());
	c->sock = -1;
	if ((r = do_connect(c)) < 0) {
		munmap(c, sizeof(*c));
		return r;
	}
	*out = c;
	return 0;
}

/* Serialises the rebinding of a client in a fork child; reset in every
 * child by an atfork handler, since a parent thread may hold it at fork. */
static atomic_flag rebind_lock = ATOMIC_FLAG_INIT;

static void atfork_child(void)
{
	atomic_flag_clear(&rebind_lock);
}

__attribute__((constructor)) static void rp_init(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

/* In a fork child, the struct is a copy of the parent's: its mutex may be
 * held by a thread that does not exist here, and its socket is the
 * parent's connection. Forget both; connect anew on first use. */
static void rebind(struct rp_client *c, int me)
{
	while (atomic_flag_test_and_set(&rebind_lock))
		sched_yield();
	if (atomic_load(&c->owner) != me) {
		pthread_mutex_init(&c->lock, NULL);
		if (c->sock >= 0)
			close(c->sock);
		c->sock = -1;
		c->lost = 0;
		for (int i = 0; i < RP_MAX_TEMPLATES; i++)
			c->tmpls[i].live_id = 0;
		atomic_store(&c->owner, me);
	}
	atomic_flag_clear(&rebind_lock);
}

/* Take the client for one operation: rebind after fork, reconnect after
 * a lost or not yet made connection. 0 with c->lock held, or -errno. */
static int enter(struct rp_client *c)
{
	int me = (int)getpid();

	if (atomic_load(&c->owner) != me)
		rebind(c, me);
	pthread_mutex_lock(&c->lock);
	if (c->sock >= 0)
		return 0;
	for (int i = 0; i < RP_MAX_TEMPLATES; i++)
		c->tmpls[i].live_id = 0;
	int r = do_connect(c);
	if (r == 0) {
		c->lost = 0;
		return 0;
	}
	pthread_mutex_unlock(&c->lock);
	/* refpage.h: once the daemon is gone, calls fail with -ENOTCONN
	 * until one finds it back, not with connect(2)'s errno. */
	if (c->lost && (r == -ECONNREFUSED || r == -ENOENT))
		r = -ENOTCONN;
	return r;
}

static void leave(struct rp_client *c)
{
	pthread_mutex_unlock(&c->lock);
}

RP_API void rp_disconnect(rp_client *c)
{
	if (!c)
		return;
	int me = (int)getpid();
	if (atomic_load(&c->owner) != me)
		rebind(c, me);
	pthread_mutex_lock(&c->lock);
	if (c->sock >= 0)
		close(c->sock);
	for (int i = 0; i < RP_MAX_TEMPLATES; i++)
		if (c->tmpls[i].page)
			munmap(c->tmpls[i].page, PAGE);
	pthread_mutex_unlock(&c->lock);
	munmap(c, sizeof(*c));
}

RP_API int rp_alive(rp_client *c)
{
	if (!c)
		return 0;
	if (atomic_load(&c->owner) != (int)getpid())
		return !c->lost;
	int s = c->sock;
	if (s < 0)
		return 0;
	struct pollfd p = { .fd = s, .events = POLLIN | POLLRDHUP };
	if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)))
		return 0;
	return !c->lost;
}

/* --- templates ------------------------------------------------------- */

/* 1 if every page of [p, p + PAGE) is mapped. mincore() asks without
 * touching: a copy from an unmapped address would kill the caller where
 * the kernel patch's mmap() returns an error. */
static int mapped(const void *p)
{
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)(PAGE - 1);
	uintptr_t end = (uintptr_t)p + PAGE;
	unsigned char vec[2];

	return mincore((void *)a, end - a, vec) == 0;
}

static struct rp_tmpl_rec *rec_find(struct rp_client *c, uint32_t id)
{
	for (int i = 0; i < RP_MAX_TEMPLATES; i++)
		if (id && c->tmpls[i].id == id)
			return &c->tmpls[i];
	return NULL;
}

/* Each byte of the page equals the first: a TEMPLATE_FILL of 8 bytes says
 * as much as a TEMPLATE_CREATE of a whole page. */
static int uniform(const uint8_t *p)
{
	return memcmp(p, p + 1, PAGE - 1) == 0;
}

/* Make the template on the current connection if it is not there yet. */
static int rec_live(struct rp_client *c, struct rp_tmpl_rec *t)
{
	struct proto_template_fill f = { .byte = t->page[0] };
	struct proto_reply rep;

	if (t->live_id)
		return 0;
	int r = uniform(t->page) ? request(c, PROTO_TEMPLATE_FILL, &f, sizeof(f), &rep)
				 : request(c, PROTO_TEMPLATE_CREATE, t->page, PAGE, &rep);
	if (r == 0)
		t->live_id = rep.id;
	return r;
}

static int rec_add(struct rp_client *c, const uint8_t *page, uint32_t *id)
{
	struct rp_tmpl_rec *t = NULL;
	int r;

	for (int i = 0; !t && i < RP_MAX_TEMPLATES; i++)
		if (!c->tmpls[i].id)
			t = &c->tmpls[i];
	if (!t)
		return -EDQUOT;
	t->page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t->page == MAP_FAILED) {
		t->page = NULL;
		return -ENOMEM;
	}
	memcpy(t->page, page, PAGE);
	t->live_id = 0;
	if ((r = rec_live(c, t)) < 0) {
		munmap(t->page, PAGE);
		t->page = NULL;
		return r;
	}
	t->id = ++c->next_id;
	*id = t->id;
	return 0;
}

static int template_add(rp_client *c, const uint8_t *page, uint32_t *id)
{
	int r;

	if (!c || !id)
		return -EINVAL;
	if ((r = enter(c)) < 0)
		return r;
	r = rec_add(c, page, id);
	leave(c);
	return r;
}

RP_API int rp_template_fill(rp_client *c, uint8_t byte, uint32_t *id)
{
	uint8_t page[PAGE];

	memset(page, byte, sizeof(page));
	return template_add(c, page, id);
}

RP_API int rp_template_create(rp_client *c, const void *page, uint32_t *id)
{
	uint8_t copy[PAGE];

	if (!page)
		return -EINVAL;
	if (!mapped(page))
		return -EFAULT;
	/* Copied in user mode first: the page may itself be an untouched
	 * refpage, which a user-mode-only uffd cannot fault in for sendmsg. */
	memcpy(copy, page, sizeof(copy));
	return template_add(c, copy, id);
}

RP_API int rp_template_release(rp_client *c, uint32_t id)
{
	struct proto_template_release m = { 0 };
	struct proto_reply rep;
	int r;

	if (!c)
		return -EINVAL;
	if ((r = enter(c)) < 0)
		return r;
	struct rp_tmpl_rec *t = rec_find(c, id);
	if (!t) {
		leave(c);
		return -EINVAL;
	}
	m.id = t->live_id;
	r = t->live_id ? request(c, PROTO_TEMPLATE_RELEASE, &m, sizeof(m), &rep) : 0;
	munmap(t->page, PAGE);
	memset(t, 0, sizeof(*t));
	leave(c);
	return r == -ENOTCONN ? 0 : r;
}

/* --- mappings -------------------------------------------------------- */

static size_t page_round(size_t len)
{
	return (len + PAGE - 1) & ~(size_t)(PAGE - 1);
}

/* MAP_SHARED_VALIDATE (3) contains MAP_PRIVATE's bit: compare the type. */
static int map_flags_ok(int flags)
{
	int type = flags & MAP_TYPE;

	return type != MAP_SHARED && type != MAP_SHARED_VALIDATE && !(flags & MAP_HUGETLB);
}

/* mmap + register, under c->lock. */
static void *map_locked(rp_client *c, void *addr, size_t len, int prot, int flags,
			struct rp_tmpl_rec *t)
{
	struct proto_reply rep;
	int r = rec_live(c, t);

	if (r < 0) {
		errno = -r;
		return MAP_FAILED;
	}
	flags = (flags & ~MAP_POPULATE) | MAP_PRIVATE | MAP_ANONYMOUS;
	void *p = mmap(addr, len, prot, flags, -1, 0);
	if (p == MAP_FAILED)
		return p;
	struct proto_map m = { .addr = (uintptr_t)p, .len = len, .id = t->live_id };
	if ((r = request(c, PROTO_MAP, &m, sizeof(m), &rep)) < 0) {
		munmap(p, len);
		errno = -r;
		return MAP_FAILED;
	}
	return p;
}

RP_API void *rp_map(rp_client *c, void *addr, size_t len, int prot, int flags, uint32_t id)
{
	int r;

	if (!c || !len || !map_flags_ok(flags)) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	if ((r = enter(c)) < 0) {
		errno = -r;
		return MAP_FAILED;
	}
	struct rp_tmpl_rec *t = rec_find(c, id);
	void *p = MAP_FAILED;
	if (t)
		p = map_locked(c, addr, page_round(len), prot, flags, t);
	else
		errno = EINVAL;
	int e = errno;
	leave(c);
	errno = e;
	return p;
}

RP_API int rp_unmap(rp_client *c, void *addr, size_t len)
{
	struct proto_unmap m = { .addr = (uintptr_t)addr, .len = page_round(len) };
	struct proto_reply rep;
	int r;

	if (!c || !len || ((uintptr_t)addr & (PAGE - 1)))
		return -EINVAL;
	/* Unregister first so that munmap need not wait on an UNMAP event;
	 * a lost daemon does not stop the unmap. */
	r = enter(c);
	if (r == 0) {
		r = request(c, PROTO_UNMAP, &m, sizeof(m), &rep);
		leave(c);
	}
	(void)r;
	return munmap(addr, m.len) < 0 ? -errno : 0;
}

RP_API int rp_stats(rp_client *c, uint64_t *values, const char **names, int max)
{
	struct proto_stats_reply rep;
	int r;

	if (!c || max < 0 || (max && !values))
		return -EINVAL;
	if ((r = enter(c)) < 0)
		return r;
	r = ask(c, PROTO_STATS, NULL, 0, PROTO_STATS_REPLY, &rep, sizeof(rep));
	leave(c);
	if (r < 0)
		return r;
	if (rep.status < 0)
		return rep.status;
	int n = rep.count < PROTO_STATS_MAX ? (int)rep.count : (int)PROTO_STATS_MAX;
	if (n > max)
		n = max;
	for (int i = 0; i < n; i++) {
		values[i] = rep.counters[i];
		if (names)
			names[i] = proto_stat_name((unsigned)i);
	}
	return n;
}

RP_API int rp_report_read(rp_client *c, struct rp_report_rec *out, int max, uint64_t *dropped)
{
	struct proto_report q = { .max = PROTO_REPORT_RECS };
	struct proto_report_reply rep;
	int r;

	if (!c || max <= 0 || !out)
		return -EINVAL;
	if (!(c->flags & RP_CONNECT_REPORT))
		return -EOPNOTSUPP;
	if ((unsigned)max < q.max)
		q.max = (uint32_t)max;
	if ((r = enter(c)) < 0)
		return r;
	r = ask(c, PROTO_REPORT, &q, sizeof(q), PROTO_REPORT_REPLY, &rep, sizeof(rep));
	leave(c);
	if (r < 0)
		return r;
	if (rep.status < 0)
		return rep.status;
	if (rep.count > q.max)
		return -EPROTO;
	for (uint32_t i = 0; i < rep.count; i++)
		out[i] = (struct rp_report_rec){
			.addr = (void *)(uintptr_t)rep.rec[i].addr,
			.ns = rep.rec[i].ns,
			.tid = rep.rec[i].tid,
		};
	if (dropped)
		*dropped = rep.dropped;
	return (int)rep.count;
}

RP_API const char *rp_strerror(int err)
{
	switch (err < 0 ? -err : err) {
	case EDQUOT:
		return "refpaged: a budget of this uid is used up (refpagectl usage shows which); "
		       "only this uid is refused";
	case EMFILE:
		return "refpaged refused the connection: this uid's connection or descriptor budget "
		       "is used up, or the daemon's";
	case ENOTCONN:
		return "refpaged went away: refpage mappings read zeros where untouched";
	case EPROTO:
		return "refpaged speaks another protocol version";
	case ENOENT:
	case ECONNREFUSED:
		return "no refpaged listens on the socket";
	case EPERM:
		return "this process cannot create a userfaultfd";
	case EOPNOTSUPP:
		return "this refpaged does not know report mode (a newer one does), "
		       "or the connection was not made for it (rp_connect_opts)";
	default:
		return strerrordesc_np(err < 0 ? -err : err);
	}
}

/* --- the kernel patch's interface ------------------------------------- */

static rp_client *_Atomic default_client;

static rp_client *get_default(void)
{
	rp_client *c = atomic_load(&default_client), *mine = NULL;

	if (c)
		return c;
	int r = rp_connect(NULL, &mine);
	if (r < 0) {
		errno = -r;
		return NULL;
	}
	if (!atomic_compare_exchange_strong(&default_client, &c, mine)) {
		rp_disconnect(mine);
		return c;
	}
	return mine;
}

/* A record with these contents, made if needed, under c->lock. */
static struct rp_tmpl_rec *rec_for_page(rp_client *c, const uint8_t *page, int *err)
{
	uint32_t id;

	for (int i = 0; i < RP_MAX_TEMPLATES; i++)
		if (c->tmpls[i].id && !memcmp(c->tmpls[i].page, page, PAGE))
			return &c->tmpls[i];
	*err = rec_add(c, page, &id);
	return *err < 0 ? NULL : rec_find(c, id);
}

RP_API void *refpage_mmap(void *addr, size_t len, int prot, int flags, const void *refpage)
{
	uint8_t copy[PAGE];
	rp_client *c;
	int r;

	if (!refpage || !len || !map_flags_ok(flags)) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (!mapped(refpage)) {
		errno = EINVAL; /* as the kernel patch answers an unmapped refpage */
		return MAP_FAILED;
	}
	memcpy(copy, refpage, sizeof(copy));
	if (!(c = get_default()))
		return MAP_FAILED;
	if ((r = enter(c)) < 0) {
		errno = -r;
		return MAP_FAILED;
	}
	struct rp_tmpl_rec *t = rec_for_page(c, copy, &r);
	void *p = MAP_FAILED;
	if (t)
		p = map_locked(c, addr, page_round(len), prot, flags, t);
	else
		errno = -r;
	int e = errno;
	leave(c);
	errno = e;
	return p;
}
