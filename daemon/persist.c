/* Keeping what a restart would lose outside the process: see persist.h. */
#include "persist.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "log.h"
#include "mm.h"
#include "session.h"
#include "snapshot.h"
#include "stats.h"
#include "template.h"

struct persist {
	struct rp_daemon *d;
	struct persist_opts o;
	int fd;                   /* the snapshot memfd, -1 before persist_open */
	struct snap_writer w;
	struct snap_buf buf;      /* the body, rebuilt each time */
	struct {
		uint32_t tmpls, sessions, mms, uids;
	} n;                      /* records in the body being built */
	int err;                  /* of the template pages being written */
	int failing;              /* the last publish failed (logged once) */
	atomic_uint next[3];      /* ids: sessions, mms, trees */
	pthread_mutex_t reg_lock; /* mms */
	struct rp_mm *mms;
	atomic_int dirty;
	atomic_int store_warned;
	ev_async kick;            /* a worker changed something */
	struct snap_counters *counters; /* mapped from the memfd, once serving */
};

static int kind_index(enum persist_kind k)
{
	return k == PERSIST_SESSION ? 0 : k == PERSIST_MM ? 1 : 2;
}

uint32_t persist_new_id(struct rp_daemon *d, enum persist_kind k)
{
	return atomic_fetch_add(&d->persist->next[kind_index(k)], 1);
}

void persist_seen_id(struct rp_daemon *d, enum persist_kind k, uint32_t id)
{
	atomic_uint *n = &d->persist->next[kind_index(k)];
	unsigned cur = atomic_load(n);

	while (id >= cur && !atomic_compare_exchange_weak(n, &cur, id + 1))
		;
}

void persist_name(char out[PERSIST_NAME_MAX], enum persist_kind k, uint32_t id)
{
	snprintf(out, PERSIST_NAME_MAX, "%c%u", (char)k, id);
}

int persist_fd(const struct rp_daemon *d)
{
	return d->persist->fd;
}

int persist_fdstore(const struct rp_daemon *d)
{
	return d->persist->o.fdstore;
}

/* --- the fd store ---------------------------------------------------------- */

/* systemd closes a stored fd itself once it hangs up (FDPOLL); a datagram
 * it could not take is lost, and said once. */
static void notify(struct persist *p, const char *msg, int *fd)
{
	int r = sd_pid_notify_with_fds(0, 0, msg, fd, fd ? 1 : 0);

	if (r <= 0 && !atomic_exchange(&p->store_warned, 1))
		log_warn("fd store: cannot send '%s': %s; what is not stored does not survive a "
			 "restart (logged once)", msg, r < 0 ? strerror(-r) : "no $NOTIFY_SOCKET");
}

static void store_name(struct persist *p, const char *name, int fd)
{
	char msg[64];

	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	notify(p, msg, &fd);
}

void persist_store(struct rp_daemon *d, enum persist_kind k, uint32_t id, int fd)
{
	char name[PERSIST_NAME_MAX];

	if (!d->persist->o.fdstore)
		return;
	persist_name(name, k, id);
	store_name(d->persist, name, fd);
}

void persist_unstore_name(struct rp_daemon *d, const char *name)
{
	char msg[64];

	if (!d->persist->o.fdstore)
		return;
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	notify(d->persist, msg, NULL);
}

void persist_unstore(struct rp_daemon *d, enum persist_kind k, uint32_t id)
{
	char name[PERSIST_NAME_MAX];

	persist_name(name, k, id);
	persist_unstore_name(d, name);
}

/* libev does not say which fd is a loop's epoll set: it is the one
 * eventpoll fd that no loop had before this one was made. */
#define MAX_LOOPS 260

static struct {
	struct ev_loop *loop;
	int epfd;
} loops[MAX_LOOPS];
static int nloops;

static int known_epfd(int fd)
{
	for (int i = 0; i < nloops; i++)
		if (loops[i].epfd == fd)
			return 1;
	return 0;
}

void persist_loop_made(struct ev_loop *loop)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1, n = 0;

	if (ev_backend(loop) != EVBACKEND_EPOLL || !dir || nloops == MAX_LOOPS) {
		if (dir)
			closedir(dir);
		return;
	}
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
	if (n == 1)
		loops[nloops].loop = loop, loops[nloops++].epfd = found;
	else
		log_warn("cannot tell the epoll set of an event loop (%d candidates)", n);
}

void persist_close_watched(struct ev_loop *loop, int fd)
{
	for (int i = 0; i < nloops; i++)
		if (loops[i].loop == loop) {
			epoll_ctl(loops[i].epfd, EPOLL_CTL_DEL, fd, NULL);
			break;
		}
	close(fd);
}

/* --- the registry of served address spaces ---------------------------------- */

void persist_mm_link(struct rp_mm *mm)
{
	struct persist *p = mm->d->persist;

	pthread_mutex_lock(&p->reg_lock);
	mm->snap_prev = NULL;
	mm->snap_next = p->mms;
	if (p->mms)
		p->mms->snap_prev = mm;
	p->mms = mm;
	mm->snap_linked = 1;
	pthread_mutex_unlock(&p->reg_lock);
	persist_changed(mm->d);
}

void persist_mm_unlink(struct rp_mm *mm)
{
	struct persist *p = mm->d->persist;

	pthread_mutex_lock(&p->reg_lock);
	if (mm->snap_linked) {
		if (mm->snap_prev)
			mm->snap_prev->snap_next = mm->snap_next;
		else
			p->mms = mm->snap_next;
		if (mm->snap_next)
			mm->snap_next->snap_prev = mm->snap_prev;
		mm->snap_linked = 0;
	}
	pthread_mutex_unlock(&p->reg_lock);
	persist_changed(mm->d);
}

void persist_foreach_mm(struct rp_daemon *d, void (*fn)(struct rp_mm *mm, void *arg), void *arg)
{
	struct persist *p = d->persist;

	pthread_mutex_lock(&p->reg_lock);
	for (struct rp_mm *mm = p->mms; mm; mm = mm->snap_next)
		fn(mm, arg);
	pthread_mutex_unlock(&p->reg_lock);
}

/* --- building the body ------------------------------------------------------ */

/* First pass: the pages of templates already written stay theirs. */
static void tmpl_keep(struct tmpl *t, void *arg)
{
	struct persist *p = arg;

	if (t->snap_page && snap_page_keep(&p->w, t->snap_page - 1) < 0)
		p->err = -ENOMEM;
}

/* Second pass: a page for each new template, and the table. */
static void tmpl_add(struct tmpl *t, void *arg)
{
	struct persist *p = arg;

	if (p->err)
		return;
	if (!t->snap_page) {
		long idx = snap_page_alloc(&p->w);
		int r = idx < 0 ? (int)idx : snap_page_write(&p->w, (uint32_t)idx, t->page, &t->snap_crc);
		if (r < 0) {
			p->err = r;
			return;
		}
		t->snap_page = (uint32_t)idx + 1;
	}
	struct snap_tmpl *r = snap_buf_add(&p->buf, sizeof(*r));
	if (r)
		*r = (struct snap_tmpl){ .page = t->snap_page - 1, .crc = t->snap_crc };
	t->snap_pos = p->n.tmpls++;
}

static void add_session(struct persist *p, const struct session *s)
{
	struct snap_session rec = {
		.id = s->snap_id, .pid = s->pid, .uid = s->uid, .gid = s->gid,
		.mm = s->mm ? s->mm->snap_id : 0, .nhandles = s->ntmpls,
		.last_seq = s->last_seq, .last_id = s->last.id, .last_status = s->last.status,
		.last_value = s->last.value, .flags = s->replied ? SNAP_SESSION_REPLIED : 0,
	};
	uint8_t *q = snap_buf_add(&p->buf, sizeof(rec) + (size_t)s->ntmpls * sizeof(struct snap_handle));

	if (!q)
		return;
	memcpy(q, &rec, sizeof(rec));
	struct snap_handle *h = (struct snap_handle *)(q + sizeof(rec));
	for (uint32_t i = 0; i < s->ntmpls; i++)
		h[i] = (struct snap_handle){ s->tmpls[i] ? s->tmpls[i]->snap_pos : SNAP_NO_TMPL,
					     s->tmpl_uses[i] };
	p->n.sessions++;
}

static void add_mm(struct rp_mm *mm, void *arg)
{
	struct persist *p = arg;

	pthread_mutex_lock(&mm->lock);
	if (mm->uffd < 0 || atomic_load(&mm->dead)) {
		pthread_mutex_unlock(&mm->lock);
		return;
	}
	struct snap_mm rec = {
		.id = mm->snap_id, .pid = mm->pid, .uid = mm->uid, .tree = mm->tree->snap_id,
		.features = mm->features, .flags = mm->is_child ? SNAP_MM_CHILD : 0,
		.nranges = (uint32_t)mm->ranges.n,
	};
	/* The sources of REMAPs waiting for their UNMAP (mm->srcs) are left
	 * out: restored, such an UNMAP forgets all it names, as any. */
	uint8_t *q = snap_buf_add(&p->buf, sizeof(rec) + mm->ranges.n * sizeof(struct snap_range));
	if (q) {
		memcpy(q, &rec, sizeof(rec));
		struct snap_range *v = (struct snap_range *)(q + sizeof(rec));
		for (size_t i = 0; i < mm->ranges.n; i++) {
			const struct range *g = &mm->ranges.v[i];
			v[i] = (struct snap_range){ g->start, g->end, ((struct tmpl *)g->tmpl)->snap_pos, 0 };
		}
		p->n.mms++;
	}
	pthread_mutex_unlock(&mm->lock);
}

static void add_uid(const struct acct *a, void *arg)
{
	struct persist *p = arg;
	struct snap_uid *u = snap_buf_add(&p->buf, sizeof(*u));

	if (!u)
		return;
	u->uid = a->uid;
	for (unsigned i = 0; i < SNAP_ACCT_RES && i < ACCT_RES_COUNT; i++)
		u->used[i] = atomic_load(&a->used[i]);
	p->n.uids++;
}

/* Header, counters, templates (writing new pages), sessions, address
 * spaces, uids: see snapshot.h. */
static int build(struct persist *p, struct rp_daemon *d)
{
	p->buf.len = 0;
	p->buf.oom = 0;
	memset(&p->n, 0, sizeof(p->n));
	p->err = 0;
	if (!snap_buf_add(&p->buf, sizeof(struct snap_body)))
		return -ENOMEM;
	uint64_t *st = snap_buf_add(&p->buf, PROTO_STAT_COUNT * sizeof(uint64_t));
	for (unsigned i = 0; st && i < PROTO_STAT_COUNT; i++)
		st[i] = stat_get(i);
	tmpl_store_foreach(&d->tmpls, tmpl_keep, p);
	tmpl_store_foreach(&d->tmpls, tmpl_add, p);
	if (p->err)
		return p->err;
	for (struct session *s = d->sessions; s; s = s->next)
		add_session(p, s);
	persist_foreach_mm(d, add_mm, p);
	acct_foreach(add_uid, p);
	if (p->buf.oom)
		return -ENOMEM;
	*(struct snap_body *)p->buf.p = (struct snap_body){
		.magic = SNAP_BODY_MAGIC, .nstats = PROTO_STAT_COUNT, .ntmpls = p->n.tmpls,
		.nsessions = p->n.sessions, .nmms = p->n.mms, .nuids = p->n.uids,
		.next_session = atomic_load(&p->next[0]), .next_mm = atomic_load(&p->next[1]),
		.next_tree = atomic_load(&p->next[2]),
	};
	return 0;
}

int persist_publish(struct rp_daemon *d)
{
	struct persist *p = d->persist;
	int r;

	if (p->fd < 0)
		return -EBADF;
	atomic_store(&p->dirty, 0);
	r = build(p, d);
	if (r == 0)
		r = snap_commit(&p->w, p->buf.p, p->buf.len);
	if (r < 0 && !p->failing)
		log_err("cannot write the state snapshot: %s; a restart now would lose what changed "
			"since the last one", strerror(-r));
	else if (r == 0 && p->failing)
		log_notice("the state snapshot is written again");
	p->failing = r < 0;
	return r;
}

void persist_sync(struct rp_daemon *d)
{
	if (d->persist->o.fdstore)
		persist_publish(d);
}

void persist_changed(struct rp_daemon *d)
{
	struct persist *p = d->persist;

	atomic_store(&p->dirty, 1);
	if (p->o.fdstore)
		ev_async_send(d->loop, &p->kick);
}

static void on_kick(struct ev_loop *loop, ev_async *a, int revents)
{
	struct persist *p = a->data;

	(void)loop;
	(void)revents;
	if (atomic_load(&p->dirty))
		persist_publish(p->d);
}

/* --- setup ----------------------------------------------------------------- */

int persist_init(struct rp_daemon *d, const struct persist_opts *o)
{
	struct persist *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->d = d;
	p->o = *o;
	p->fd = -1;
	p->w.fd = -1;
	for (int i = 0; i < 3; i++)
		atomic_init(&p->next[i], 1);
	pthread_mutex_init(&p->reg_lock, NULL);
	ev_async_init(&p->kick, on_kick);
	p->kick.data = p;
	if (o->fdstore)
		ev_async_start(d->loop, &p->kick);
	d->persist = p;
	return 0;
}

int persist_open(struct rp_daemon *d, int fd, const struct snap_image *img)
{
	struct persist *p = d->persist;
	int fresh = fd < 0, r;

	if (fresh && (fd = memfd_create("refpaged-snapshot", MFD_CLOEXEC)) < 0)
		return -errno;
	r = img ? snap_writer_resume(&p->w, fd, img) : snap_writer_init(&p->w, fd, p->o.version);
	if (r < 0) {
		if (fresh)
			close(fd);
		return r;
	}
	p->fd = fd;
	if (fresh && p->o.fdstore)
		store_name(p, PERSIST_SNAP_NAME, fd);
	return 0;
}

int persist_counters_attach(struct rp_daemon *d, const struct snap_image *img)
{
	struct persist *p = d->persist;
	uint64_t off = img ? img->counters_off : SNAP_COUNTERS_OFF;
	struct snap_counters *c = mmap(NULL, SNAP_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd,
				       (off_t)off);

	if (c == MAP_FAILED) {
		log_err("cannot map the counters: %s; they start from zero after a restart", strerror(errno));
		return -errno;
	}
	/* What went on before us: the page, else the last snapshot's copy. */
	int live = img && c->magic == SNAP_COUNTERS_MAGIC && c->count <= SNAP_MAX_STATS;
	unsigned before = !img ? 0 : live ? c->count : img->hdr->nstats;
	const uint64_t *was = live ? c->v : img ? img->stats : NULL;
	if (img && !live)
		log_warn("restore: the live counters are unusable; going on from the snapshot's copy");
	for (unsigned i = 0; i < PROTO_STAT_COUNT; i++) {
		uint64_t mine = stat_get(i);
		c->v[i] = i < before && !stat_is_gauge(i) ? was[i] + mine : mine;
	}
	c->count = PROTO_STAT_COUNT;
	c->magic = SNAP_COUNTERS_MAGIC;
	stats_move((_Atomic uint64_t *)c->v);
	p->counters = c;
	return 0;
}

void persist_fini(struct rp_daemon *d)
{
	struct persist *p = d->persist;

	if (!p)
		return;
	ev_async_stop(d->loop, &p->kick);
	if (p->counters) {
		stats_move_home();
		munmap(p->counters, SNAP_PAGE);
	}
	snap_writer_fini(&p->w);
	snap_buf_free(&p->buf);
	if (p->fd >= 0)
		close(p->fd);
	pthread_mutex_destroy(&p->reg_lock);
	free(p);
	d->persist = NULL;
}
