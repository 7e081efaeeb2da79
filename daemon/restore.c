/* Starting from what a previous daemon left: see restore.h. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "fault.h"
#include "log.h"
#include "mm.h"
#include "persist.h"
#include "session.h"
#include "snapshot.h"
#include "stats.h"
#include "template.h"
#include "worker.h"

/* The top of a 4-level x86-64 user address space (TASK_SIZE_MAX): the
 * wake-up covers every address a fault can be at. */
#define USER_TOP 0x7ffffffff000ull

/* --- named descriptors ----------------------------------------------------- */

int fdset_add(struct fdset *set, int fd, const char *name)
{
	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 64;
		struct named_fd *v = realloc(set->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		set->v = v;
		set->cap = cap;
	}
	struct named_fd *e = &set->v[set->n++];
	e->fd = fd;
	snprintf(e->name, sizeof(e->name), "%s", name);
	return 0;
}

int fdset_take(struct fdset *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0 && !strcmp(set->v[i].name, name)) {
			int fd = set->v[i].fd;
			set->v[i].fd = -1;
			return fd;
		}
	return -1;
}

int fdset_take_if(struct fdset *set, int (*pred)(int fd))
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0 && pred(set->v[i].fd)) {
			int fd = set->v[i].fd;
			set->v[i].fd = -1;
			return fd;
		}
	return -1;
}

void fdset_free(struct fdset *set)
{
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].fd >= 0)
			close(set->v[i].fd);
	free(set->v);
	set->v = NULL;
	set->n = set->cap = 0;
}

int fdset_from_systemd(struct fdset *set)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);

	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		if (fdset_add(set, fd, names && names[i] ? names[i] : "unknown") < 0) {
			close(fd);
			n = -ENOMEM;
		}
	}
	for (int i = 0; names && names[i]; i++)
		free(names[i]);
	free(names);
	return n;
}

/* --- id maps: open addressing, ids are never 0 --------------------------- */

struct idmap {
	uint32_t *k;
	void **v;
	size_t cap; /* a power of two */
};

static int idmap_init(struct idmap *m, size_t n)
{
	m->cap = 16;
	while (m->cap < 2 * n)
		m->cap *= 2;
	m->k = calloc(m->cap, sizeof(*m->k));
	m->v = calloc(m->cap, sizeof(*m->v));
	return m->k && m->v ? 0 : -ENOMEM;
}

static size_t idmap_slot(const struct idmap *m, uint32_t id)
{
	size_t i = (id * 0x9e3779b1u) & (m->cap - 1);

	while (m->k[i] && m->k[i] != id)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static void *idmap_get(const struct idmap *m, uint32_t id)
{
	return id ? m->v[idmap_slot(m, id)] : NULL;
}

/* At most as many entries as idmap_init was told. */
static void idmap_put(struct idmap *m, uint32_t id, void *v)
{
	size_t i = idmap_slot(m, id);

	m->k[i] = id;
	m->v[i] = v;
}

static void idmap_free(struct idmap *m)
{
	free(m->k);
	free(m->v);
}

/* --- the restore ---------------------------------------------------------- */

struct rmm {
	struct rp_mm *mm;
	int claimed; /* by its session */
};

struct restore {
	struct rp_daemon *d;
	struct fdset *set;
	struct snap_image img;
	int have_img;
	struct tmpl **tmap;    /* template records -> templates (NULL: dropped) */
	struct rmm *rmms;      /* the address spaces kept */
	size_t nrmms;
	struct idmap mms;      /* mm id -> struct rmm */
	struct idmap trees;    /* tree id -> struct rp_tree (one reference held) */
	char (*unstore)[PERSIST_NAME_MAX]; /* to take out of the fd store once ours */
	size_t nunstore, capunstore;
	uint64_t min_addr;
	unsigned kept[2], dropped[3]; /* sessions, mms; + templates */
};

/* Under systemd (NotifyAccess=main) only the main process may change the
 * store, and after a handover that is us only from the ACK on. */
static void queue_unstore(struct restore *r, const char *name)
{
	if (r->nunstore == r->capunstore) {
		size_t cap = r->capunstore ? r->capunstore * 2 : 16;
		void *p = realloc(r->unstore, cap * sizeof(*r->unstore));
		if (!p)
			return; /* left in the store: dropped again by the next restart */
		r->unstore = p;
		r->capunstore = cap;
	}
	snprintf(r->unstore[r->nunstore++], PERSIST_NAME_MAX, "%s", name);
}

__attribute__((format(printf, 4, 5))) static void drop_fd(struct restore *r, const char *name, int fd,
							   const char *fmt, ...)
{
	char why[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_warn("restore: %s: %s; dropped", name, why);
	if (fd >= 0)
		close(fd);
	queue_unstore(r, name);
}

static int set_flags(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

static void restore_templates(struct restore *r)
{
	static _Alignas(4096) uint8_t page[SNAP_PAGE];

	for (uint32_t i = 0; i < r->img.hdr->ntmpls; i++) {
		enum snap_err e = snap_read_page(persist_fd(r->d), &r->img, i, page);
		struct tmpl *t = e == SNAP_OK ? tmpl_get_page(&r->d->tmpls, page) : NULL;
		if (!t) {
			log_warn("restore: template %u (page %u): %s; what uses it is dropped", i,
				 r->img.tmpls[i].page, e ? snap_err_str(e) : strerror(errno));
			r->dropped[2]++;
			continue;
		}
		/* A duplicate of one restored already is the same template. */
		if (!t->snap_page) {
			t->snap_page = r->img.tmpls[i].page + 1;
			t->snap_crc = r->img.tmpls[i].crc;
		}
		r->tmap[i] = t;
	}
}

static void put_ranges(struct restore *r, struct rp_mm *mm, const struct snap_mview *v, const char *name)
{
	unsigned bad = 0;

	for (uint32_t k = 0; k < v->m->nranges; k++) {
		const struct snap_range *g = &v->r[k];
		struct tmpl *t = r->tmap[g->tmpl];
		if (!t || mm_restore_range(mm, g->start, g->end, t) < 0)
			bad++;
	}
	if (bad)
		log_warn("restore: %s (pid %d): %u of %u ranges dropped; their untouched pages read "
			 "zeros", name, (int)v->m->pid, bad, v->m->nranges);
}

static struct rp_tree *tree_for(struct restore *r, uint32_t id)
{
	return idmap_get(&r->trees, id);
}

/* A fresh tree from mm_restore: the map holds a reference until the end. */
static void tree_keep(struct restore *r, struct rp_tree *t, uint32_t id)
{
	t->snap_id = id;
	atomic_fetch_add(&t->refs, 1);
	idmap_put(&r->trees, id, t);
	persist_seen_id(r->d, PERSIST_TREE, id);
}

static void restore_mm(struct restore *r, const struct snap_mview *v)
{
	const struct snap_mm *m = v->m;
	char name[PERSIST_NAME_MAX];
	int fd;

	persist_name(name, PERSIST_MM, m->id);
	persist_seen_id(r->d, PERSIST_MM, m->id);
	if ((fd = fdset_take(r->set, name)) < 0) {
		log_warn("restore: %s (pid %d): its userfaultfd did not come back; dropped", name,
			 (int)m->pid);
		r->dropped[1]++;
		return;
	}
	int is_uffd = mm_is_uffd(fd);
	if (!is_uffd || set_flags(fd) < 0 || idmap_get(&r->mms, m->id)) {
		drop_fd(r, name, fd, "%s", is_uffd ? "unusable" : "not a userfaultfd");
		r->dropped[1]++;
		return;
	}
	struct rp_tree *tree = tree_for(r, m->tree);
	int fresh = !tree;
	struct rp_mm *mm = mm_restore(r->d, fd, m->features, m->uid, m->pid, &tree,
				      !!(m->flags & SNAP_MM_CHILD), m->id);
	if (fresh && tree && mm)
		tree_keep(r, tree, m->tree);
	else if (fresh && tree)
		free(tree);
	if (!mm) {
		drop_fd(r, name, fd, "out of memory");
		r->dropped[1]++;
		return;
	}
	put_ranges(r, mm, v, name);
	if (!fault_probe_alive(mm)) {
		log_info("restore: %s (pid %d): the process is gone; released", name, (int)m->pid);
		if (mm->is_child)
			stat_inc(PROTO_STAT_PROCS_RECLAIMED);
		queue_unstore(r, name);
		mm_put(mm);
		r->dropped[1]++;
		return;
	}
	mm->w = daemon_pick_worker(r->d);
	persist_mm_link(mm);
	struct rmm *rm = &r->rmms[r->nrmms++];
	*rm = (struct rmm){ .mm = mm };
	idmap_put(&r->mms, m->id, rm);
}

/* A connection fd is what it claims and still talks to the same peer. */
static int check_conn(int fd, struct ucred *cred)
{
	socklen_t len = sizeof(*cred);

	if (sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 0) <= 0)
		return -ENOTSOCK;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
		return -errno;
	return set_flags(fd);
}

static int restore_handles(struct restore *r, struct session *s, const struct snap_sview *v)
{
	uint32_t n = v->s->nhandles, bad = 0;

	if (!n)
		return 0;
	s->tmpls = calloc(n, sizeof(*s->tmpls));
	s->tmpl_uses = calloc(n, sizeof(*s->tmpl_uses));
	if (!s->tmpls || !s->tmpl_uses)
		return -ENOMEM;
	s->ntmpls = s->captmpls = n;
	for (uint32_t k = 0; k < n; k++) {
		const struct snap_handle *h = &v->h[k];
		if (h->tmpl == SNAP_NO_TMPL)
			continue;
		struct tmpl *t = r->tmap[h->tmpl];
		if (!t || !h->uses) {
			bad++;
			continue;
		}
		tmpl_ref(&r->d->tmpls, t);
		s->tmpls[k] = t;
		s->tmpl_uses[k] = h->uses;
		acct_adjust(s->acct, ACCT_TEMPLATES, 1);
	}
	if (bad)
		log_warn("restore: c%u (pid %d): %u template handles dropped; using them gets EINVAL",
			 v->s->id, (int)v->s->pid, bad);
	return 0;
}

static void restore_session(struct restore *r, const struct snap_sview *v)
{
	const struct snap_session *rec = v->s;
	char name[PERSIST_NAME_MAX];
	struct ucred cred;
	struct rmm *rm = NULL;
	int fd, e;

	persist_name(name, PERSIST_SESSION, rec->id);
	persist_seen_id(r->d, PERSIST_SESSION, rec->id);
	if ((fd = fdset_take(r->set, name)) < 0) {
		log_warn("restore: %s (pid %d uid %u): its connection did not come back; dropped", name,
			 (int)rec->pid, rec->uid);
		r->dropped[0]++;
		return;
	}
	if ((e = check_conn(fd, &cred)) < 0) {
		drop_fd(r, name, fd, "not a connected AF_UNIX SOCK_SEQPACKET socket (%s)", strerror(-e));
		r->dropped[0]++;
		return;
	}
	if (cred.uid != rec->uid || cred.pid != rec->pid) {
		drop_fd(r, name, fd, "the peer is pid %d uid %u, not pid %d uid %u as recorded",
			(int)cred.pid, (unsigned)cred.uid, (int)rec->pid, rec->uid);
		r->dropped[0]++;
		return;
	}
	if (rec->mm && (!(rm = idmap_get(&r->mms, rec->mm)) || rm->claimed || rm->mm->is_child)) {
		drop_fd(r, name, fd, "its address space (u%u) is gone", rec->mm);
		r->dropped[0]++;
		return;
	}
	struct session *s = session_adopt(r->d, fd, &cred, rec->id);
	if (!s) {
		drop_fd(r, name, fd, "out of memory");
		r->dropped[0]++;
		return;
	}
	/* Closed now, its address space is released as unclaimed. */
	if (restore_handles(r, s, v) < 0) {
		session_close(s, "out of memory restoring its templates");
		r->dropped[0]++;
		return;
	}
	if (rm) {
		rm->claimed = 1;
		mm_ref(rm->mm); /* the session's */
		s->mm = rm->mm;
		ev_timer_stop(r->d->loop, &s->hello_timer);
	}
	s->last = (struct proto_reply){ rec->last_status, rec->last_id, rec->last_value };
	s->last_seq = rec->last_seq;
	s->replied = !!(rec->flags & SNAP_SESSION_REPLIED);
	s->replay = 1;
	r->kept[0]++;
}

/* Connections accepted after the last snapshot: nothing was done on them
 * that was answered, so they start over (their request is still queued). */
static void adopt_new_connections(struct restore *r)
{
	for (size_t i = 0; i < r->set->n; i++) {
		struct named_fd *e = &r->set->v[i];
		struct ucred cred;
		unsigned id;
		char tail;
		if (e->fd < 0 || sscanf(e->name, "c%u%c", &id, &tail) != 1 || !id)
			continue;
		int fd = e->fd;
		e->fd = -1;
		persist_seen_id(r->d, PERSIST_SESSION, id);
		if (check_conn(fd, &cred) < 0 || !session_adopt(r->d, fd, &cred, id)) {
			drop_fd(r, e->name, fd, "not a usable connection");
			continue;
		}
		log_info("restore: %s (pid %d uid %d): connected since the last snapshot; adopted",
			 e->name, (int)cred.pid, (int)cred.uid);
		r->kept[0]++;
	}
}

/* Whatever nobody claimed: uffds without a record (their faults fall back
 * to the kernel once closed), connections when there is no snapshot, and
 * names we do not know. */
static void drop_rest(struct restore *r)
{
	for (size_t i = 0; i < r->set->n; i++) {
		struct named_fd *e = &r->set->v[i];
		if (e->fd >= 0) {
			drop_fd(r, e->name, e->fd, "%s",
				r->have_img ? "not in the snapshot" : "no usable snapshot");
			e->fd = -1;
		}
	}
}

/* A client's address space whose connection did not come back is what a
 * closed connection leaves: released. */
static void release_unclaimed(struct restore *r)
{
	size_t keep = 0;

	for (size_t i = 0; i < r->nrmms; i++) {
		struct rmm *rm = &r->rmms[i];
		if (rm->mm->is_child || rm->claimed) {
			r->rmms[keep++] = *rm;
			continue;
		}
		char name[PERSIST_NAME_MAX];
		persist_name(name, PERSIST_MM, rm->mm->snap_id);
		log_warn("restore: %s (pid %d): its connection is gone; released", name,
			 (int)rm->mm->pid);
		queue_unstore(r, name);
		mm_put(rm->mm);
		r->dropped[1]++;
	}
	r->nrmms = keep;
	r->kept[1] = (unsigned)keep;
}

static void check_accounts(const struct snap_image *img)
{
	for (uint32_t i = 0; i < img->hdr->nuids; i++) {
		const struct snap_uid *u = &img->uids[i];
		struct acct *a = acct_get(u->uid);
		for (unsigned k = 0; a && k < SNAP_ACCT_RES && k < ACCT_RES_COUNT; k++) {
			uint64_t now = atomic_load(&a->used[k]);
			if (now != u->used[k])
				log_info("restore: uid %u: %s %llu before the restart, %llu after", u->uid,
					 acct_res_name(k), (unsigned long long)u->used[k],
					 (unsigned long long)now);
		}
		if (a)
			acct_put(a);
	}
}

static uint64_t mmap_min_addr(void)
{
	FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
	unsigned long long v = 65536;

	if (f) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 65536;
		fclose(f);
	}
	v = (v + 4095) & ~4095ull;
	return v ? v : 4096;
}

/* The snapshot, or why there is none (logged). */
static int read_snapshot(struct restore *r, int fd, int strict)
{
	uint32_t version;
	enum snap_err e = snap_read(fd, &r->img, &version);

	if (e == SNAP_OK) {
		for (int i = 0; i < 2; i++)
			if (i != r->img.slot && r->img.slot_err[i] != SNAP_OK &&
			    r->img.slot_err[i] != SNAP_EEMPTY)
				log_warn("restore: snapshot slot %d: %s; using generation %llu from slot %d",
					 i, snap_err_str(r->img.slot_err[i]),
					 (unsigned long long)r->img.gen, r->img.slot);
		r->have_img = 1;
		return 0;
	}
	if (e == SNAP_EVERSION)
		log_err("restore: the snapshot is format version %u; this refpaged reads version %u",
			version, SNAP_VERSION);
	else
		log_err("restore: the snapshot is unusable: %s (slots: %s, %s)", snap_err_str(e),
			snap_err_str(r->img.slot_err[0]), snap_err_str(r->img.slot_err[1]));
	if (strict)
		return -1;
	log_err("restore: starting without it: every client passed back is closed and its pages "
		"fall back to ordinary anonymous memory");
	return 0;
}

static int restore_state(struct restore *r)
{
	const struct snap_image *img = &r->img;
	size_t nmms = img->hdr->nmms;

	r->tmap = calloc(img->hdr->ntmpls ? img->hdr->ntmpls : 1, sizeof(*r->tmap));
	r->rmms = calloc(nmms ? nmms : 1, sizeof(*r->rmms));
	if (!r->tmap || !r->rmms || idmap_init(&r->mms, nmms) < 0 || idmap_init(&r->trees, nmms) < 0)
		return -ENOMEM;
	restore_templates(r);
	for (size_t i = 0; i < nmms; i++)
		restore_mm(r, &img->mms[i]);
	for (uint32_t i = 0; i < img->hdr->nsessions; i++)
		restore_session(r, &img->sessions[i]);
	release_unclaimed(r);
	adopt_new_connections(r);
	persist_seen_id(r->d, PERSIST_SESSION, img->hdr->next_session - 1);
	persist_seen_id(r->d, PERSIST_MM, img->hdr->next_mm - 1);
	persist_seen_id(r->d, PERSIST_TREE, img->hdr->next_tree - 1);
	/* The map's tree references, and the restore's template ones. */
	for (size_t i = 0; i < r->trees.cap; i++) {
		struct rp_tree *t = r->trees.v[i];
		if (t && atomic_fetch_sub(&t->refs, 1) == 1)
			free(t);
	}
	for (uint32_t i = 0; i < img->hdr->ntmpls; i++)
		if (r->tmap[i])
			tmpl_put(&r->d->tmpls, r->tmap[i]);
	check_accounts(img);
	return 0;
}

static void restore_free(struct restore *r)
{
	free(r->tmap);
	free(r->rmms);
	free(r->unstore);
	idmap_free(&r->mms);
	idmap_free(&r->trees);
	snap_image_free(&r->img);
	free(r);
}

struct restore *restore_run(struct rp_daemon *d, struct fdset *set, int snap_fd, int strict)
{
	struct restore *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->d = d;
	r->set = set;
	r->img.slot = -1;
	r->min_addr = mmap_min_addr();
	if (snap_fd >= 0 && read_snapshot(r, snap_fd, strict) < 0) {
		restore_free(r);
		return NULL;
	}
	/* An unusable snapshot is written over, in the same memfd: it keeps
	 * its place in the fd store. */
	int e = persist_open(d, snap_fd, r->have_img ? &r->img : NULL);
	if (e == 0 && r->have_img)
		e = restore_state(r);
	if (e < 0) {
		log_err("restore: %s", strerror(-e));
		restore_free(r);
		return NULL;
	}
	drop_rest(r);
	if (snap_fd >= 0)
		log_notice("restore: from %s, snapshot generation %llu: %u clients and %u address "
			   "spaces back; dropped %u clients, %u address spaces, %u templates",
			   set->from, (unsigned long long)r->img.gen, r->kept[0], r->kept[1],
			   r->dropped[0], r->dropped[1], r->dropped[2]);
	return r;
}

/* Threads the previous daemon left waiting on a fault it had read are
 * woken: they fault again, and this time we read it. */
static void wake_all(struct restore *r, struct rp_mm *mm)
{
	struct uffdio_range all = { .start = r->min_addr, .len = USER_TOP - r->min_addr };

	if (ioctl(mm->uffd, UFFDIO_WAKE, &all) < 0)
		log_debug("restore: u%u: UFFDIO_WAKE: %s", mm->snap_id, strerror(errno));
}

void restore_finish(struct rp_daemon *d, struct restore *r)
{
	/* Cumulative counters go on from the previous daemon's; gauges
	 * follow what came back. */
	persist_counters_attach(d, r->have_img ? &r->img : NULL);
	for (size_t i = 0; i < r->nunstore; i++)
		persist_unstore_name(d, r->unstore[i]);
	for (size_t i = 0; i < r->nrmms; i++) {
		struct rp_mm *mm = r->rmms[i].mm;
		worker_add(mm->w, mm);
		wake_all(r, mm);
	}
	if (r->nunstore || r->nrmms)
		persist_changed(d);
	restore_free(r);
}
