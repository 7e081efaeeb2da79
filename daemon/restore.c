/* Starting from what a previous daemon left: named descriptors (from the
 * systemd fd store, or handed over on an upgrade) and the state journal
 * (journal.h), replayed through jnl_read's callbacks into live sessions,
 * address spaces, range trees (their shared nodes rebuilt shared) and
 * templates.
 *
 * Everything is checked, one entry at a time: a uffd must be a uffd (its
 * /proc/self/fd link) whose address space is alive (the ESRCH probe), a
 * connection a connected AF_UNIX SOCK_SEQPACKET socket whose peer is the
 * one recorded, a template page must match its CRC. What holds is served
 * again; what does not is closed, taken out of the fd store and logged,
 * and the client it belonged to sees what it would see if the daemon had
 * died: a closed connection, or pages that read zeros. One bad entry never
 * stops the daemon from starting. Budgets are not enforced meanwhile
 * (acct_enforce): what comes back exists already, and is charged as it was. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "fdset.h"
#include "hmap.h"
#include "log.h"
#include "mm.h"
#include "session.h"
#include "template.h"
#include "uffd.h"
#include "wing_int.h"

/* --- id maps (hmap.h): ids are never 0 ------------------------------------------- */

static void *idm_get(const struct hmap *m, uint32_t id)
{
	return (void *)(uintptr_t)hmap_get(m, id);
}

/* v NULL: forgotten. */
static int idm_put(struct hmap *m, uint32_t id, const void *v)
{
	return hmap_put(m, id, (uintptr_t)v);
}

/* --- the restore ------------------------------------------------------------------- */

struct rmm {
	struct rp_mm *mm;
	int claimed; /* by its session */
};

struct restore {
	struct wing *wg;
	struct rp_daemon *d;
	struct fdset *set;
	struct hmap tmpls;         /* template id -> struct tmpl (one reference held) */
	struct hmap mms;           /* mm id -> struct rmm */
	struct hmap sessions;      /* session id -> struct session */
	struct hmap links;         /* session id -> its mm id */
	struct hmap trees;         /* tree id -> struct rp_tree (one reference held) */
	struct range_node **nodes; /* image node index -> node (one reference held) */
	size_t nnodes, capnodes;
	struct range_table build;     /* nodes are made through it (mm_range_ops_acct) */
	unsigned kept[2], dropped[3]; /* sessions, mms; + templates */
};

__attribute__((format(printf, 4, 5))) static void drop_fd(struct restore *r, const char *name,
							  int fd, const char *fmt, ...)
{
	char why[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_warn("restore: %s: %s; dropped", name, why);
	if (fd >= 0)
		close(fd);
	wing_unstore(r->wg, name);
}

/* A restored connection closed: systemd's copy goes too, or the client
 * would never see the end of file. */
static void drop_session(struct restore *r, struct session *s, uint32_t id, const char *why)
{
	char name[WING_NAME_MAX];

	session_close(s, why);
	wing_name(name, 'c', id);
	wing_unstore(r->wg, name);
}

static int set_flags(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

/* --- templates and nodes ------------------------------------------------------------- */

static int add_tmpl(struct restore *r, const struct jnl_tmpl *t)
{
	static _Alignas(4096) uint8_t page[JNL_PAGE];
	enum jnl_err e = jnl_read_page(r->wg->fd, t->page, t->crc, page);
	struct acct *a = e == JNL_OK ? acct_get(t->uid) : NULL;
	struct tmpl *tm = a ? tmpl_get_page(&r->d->tmpls, a, t->uid, page, t->id) : NULL;

	if (a)
		acct_put(a);
	if (!tm || idm_put(&r->tmpls, t->id, tm) < 0) {
		log_warn("restore: template %u (page %u): %s; what uses it is dropped", t->id,
			 t->page, e ? jnl_err_str(e) : strerror(errno));
		if (tm)
			tmpl_put(&r->d->tmpls, tm);
		r->dropped[2]++;
		return JNL_REJECT;
	}
	/* The same contents twice (one uid) are one template: the first
	 * one's page stays its page. */
	if (!tm->obs)
		tm->obs = (uintptr_t)((uint64_t)t->crc << 32 | ((uint64_t)t->page + 1));
	return 0;
}

static int cb_tmpl(void *ctx, const struct jnl_tmpl *t)
{
	return add_tmpl(ctx, t);
}

static struct range_node *node_at(struct restore *r, uint32_t index)
{
	return index && index <= r->nnodes ? r->nodes[index - 1] : NULL;
}

static int cb_node(void *ctx, uint32_t index, const struct jnl_node *n)
{
	struct restore *r = ctx;
	struct tmpl *t = idm_get(&r->tmpls, n->tmpl);
	struct range_node *l = node_at(r, n->left), *rt = node_at(r, n->right), *made = NULL;

	if (r->nnodes == r->capnodes) {
		size_t cap = r->capnodes ? r->capnodes * 2 : 1024;
		void *p = realloc(r->nodes, cap * sizeof(*r->nodes));
		if (!p)
			return -ENOMEM;
		r->nodes = p;
		r->capnodes = cap;
	}
	if (t && (!n->left || l) && (!n->right || rt)) {
		r->build.ctx = t->owner;
		made = range_node_make(&r->build, l ? range_node_ref(l) : NULL, n->start, n->end, t,
				       rt ? range_node_ref(rt) : NULL);
	}
	r->nodes[r->nnodes++] = made;
	(void)index;
	return made ? 0 : JNL_REJECT;
}

/* --- address spaces ------------------------------------------------------------------- */

/* The uffd named u<id>, checked; -1 if it is not usable (dropped). */
static int take_uffd(struct restore *r, uint32_t id, pid_t pid)
{
	char name[WING_NAME_MAX];
	int fd;

	wing_name(name, 'u', id);
	rp_id_seen(r->d, RP_ID_MM, id);
	if ((fd = fdset_take(r->set, name)) < 0) {
		log_warn("restore: %s (pid %d): its userfaultfd did not come back; dropped", name,
			 (int)pid);
		return -1;
	}
	int is_uffd = uffd_is_uffd(fd);
	if (!is_uffd || set_flags(fd) < 0 || idm_get(&r->mms, id)) {
		drop_fd(r, name, fd, "%s", is_uffd ? "unusable" : "not a userfaultfd");
		return -1;
	}
	return fd;
}

/* The fork tree of that id, made (and kept in the map) if new. */
static struct rp_tree *tree_for(struct restore *r, uint32_t id, struct acct *a)
{
	struct rp_tree *t = idm_get(&r->trees, id);

	if (t || !(t = mm_tree_new(a, id)))
		return t;
	if (idm_put(&r->trees, id, t) < 0) {
		mm_tree_put(t);
		return NULL;
	}
	rp_id_seen(r->d, RP_ID_TREE, id);
	return t;
}

/* A served address space back: its uffd, and a table with root (a
 * reference of the caller's, taken over). */
static int add_mm(struct restore *r, uint32_t id, pid_t pid, uid_t uid, uint32_t tree_id,
		  uint64_t features, int child, struct range_node *root)
{
	int fd = take_uffd(r, id, pid);
	struct acct *a = fd >= 0 ? acct_get(uid) : NULL;
	struct rp_tree *tree = a ? tree_for(r, tree_id, a) : NULL;
	struct rp_mm *mm = tree ? mm_restore(r->d, fd, features, a, pid, tree, child, id) : NULL;
	struct rmm *rm = mm ? calloc(1, sizeof(*rm)) : NULL;

	if (a)
		acct_put(a);
	if (!rm || idm_put(&r->mms, id, rm) < 0) {
		if (root)
			range_node_put(&r->build, root);
		if (mm)
			mm_put(mm);
		else if (fd >= 0)
			close(fd);
		free(rm);
		r->dropped[1]++;
		return JNL_REJECT;
	}
	rm->mm = mm;
	if (root)
		range_table_set_root(&mm->ranges, root);
	return 0;
}

static int cb_mm(void *ctx, const struct jnl_mm *m)
{
	struct restore *r = ctx;
	struct range_node *root = node_at(r, m->root);

	if (m->root && !root)
		return JNL_REJECT;
	return add_mm(r, m->id, m->pid, m->uid, m->tree, m->features, !!(m->flags & JNL_MM_CHILD),
		      root ? range_node_ref(root) : NULL);
}

/* --- sessions --------------------------------------------------------------------------- */

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

static struct session *add_session(struct restore *r, uint32_t id, pid_t pid, uid_t uid)
{
	char name[WING_NAME_MAX];
	struct ucred cred;
	int fd, e;

	wing_name(name, 'c', id);
	rp_id_seen(r->d, RP_ID_SESSION, id);
	if ((fd = fdset_take(r->set, name)) < 0) {
		log_warn("restore: %s (pid %d uid %u): its connection did not come back; dropped",
			 name, (int)pid, (unsigned)uid);
		r->dropped[0]++;
		return NULL;
	}
	if ((e = check_conn(fd, &cred)) < 0 || cred.uid != uid || cred.pid != pid) {
		drop_fd(r, name, fd,
			e < 0 ? "not a connected AF_UNIX SOCK_SEQPACKET socket"
			      : "the peer is not the one recorded");
		r->dropped[0]++;
		return NULL;
	}
	struct session *s = session_adopt(r->d, fd, &cred, id);
	if (!s || idm_put(&r->sessions, id, s) < 0) {
		if (s)
			drop_session(r, s, id, "out of memory restoring it");
		else
			drop_fd(r, name, fd, "out of memory");
		r->dropped[0]++;
		return NULL;
	}
	s->replay = 1;
	return s;
}

/* Handle index i of s names t (NULL: free), handed out uses times. */
static int set_handle(struct session *s, uint32_t i, struct tmpl *t, uint32_t uses)
{
	int r = session_reserve_handles(s, i + 1);
	if (r < 0)
		return r;
	if (i >= s->ntmpls)
		s->ntmpls = i + 1;
	if (s->tmpls[i]) {
		tmpl_put(&s->d->tmpls, s->tmpls[i]);
		acct_uncharge(s->acct, ACCT_TEMPLATES, 1);
	}
	s->tmpls[i] = t && uses ? t : NULL;
	s->tmpl_uses[i] = t && uses ? uses : 0;
	if (s->tmpls[i]) {
		tmpl_ref(&s->d->tmpls, t);
		acct_adjust(s->acct, ACCT_TEMPLATES, 1);
	}
	return 0;
}

static void set_reply(struct session *s, uint32_t seq, int32_t status, uint32_t id, uint64_t value)
{
	s->last = (struct proto_reply){ status, id, value };
	s->last_seq = seq;
	s->replied = 1;
}

static int cb_session(void *ctx, const struct jnl_session *js, const struct jnl_handle *h)
{
	struct restore *r = ctx;
	struct session *s = add_session(r, js->id, js->pid, js->uid);

	if (!s)
		return JNL_REJECT;
	for (uint32_t k = 0; k < js->nhandles; k++)
		if (h[k].tmpl && set_handle(s, k, idm_get(&r->tmpls, h[k].tmpl), h[k].uses) < 0)
			log_warn("restore: c%u: handle %u dropped", js->id, k + 1);
	if (js->flags & JNL_SESSION_REPLIED)
		set_reply(s, js->last_seq, js->last_status, js->last_id, js->last_value);
	/* Unlinked (out of memory), its address space is released as one
	 * whose connection is gone. */
	if (js->mm && hmap_put(&r->links, js->id, js->mm) < 0)
		log_warn("restore: c%u: out of memory; its address space is released", js->id);
	return 0;
}

/* --- records ------------------------------------------------------------------------------ */

static struct rp_mm *mm_of(struct restore *r, uint32_t id)
{
	struct rmm *rm = idm_get(&r->mms, id);

	return rm ? rm->mm : NULL;
}

/* What the kernel did, or a request did, applied as the live daemon did:
 * past the piece limit if need be. */
static int rec_range(struct restore *r, enum jnl_type type, const union jnl_payload *p)
{
	uint32_t id = type == JNL_MAP ? p->map.mm : type == JNL_UNMAP ? p->unmap.mm : p->copy.mm;
	struct rp_mm *mm = mm_of(r, id);
	struct range_table *rt = mm ? &mm->ranges : NULL;
	size_t max;
	int e = 0;

	if (!mm)
		return JNL_REJECT;
	max = rt->max;
	rt->max = 0;
	if (type == JNL_MAP) {
		struct tmpl *t = idm_get(&r->tmpls, p->map.tmpl);
		/* A MAP sets what it names (a grown mapping names its whole piece). */
		if (range_remove(rt, p->map.start, p->map.end, NULL, NULL) < 0 || !t ||
		    range_insert(rt, p->map.start, p->map.end, t) < 0)
			e = -1;
	} else if (type == JNL_UNMAP) {
		e = range_remove(rt, p->unmap.start, p->unmap.end, NULL, NULL) < 0 ? -1 : 0;
	} else {
		e = range_copy(rt, p->copy.from, p->copy.to, p->copy.len);
	}
	rt->max = max;
	if (e)
		log_warn("restore: u%u: a %s could not be replayed; some untouched pages may read "
			 "zeros",
			 id, jnl_type_name(type));
	return 0;
}

static int rec_mm_new(struct restore *r, const struct jnl_mm_new *m)
{
	struct rp_mm *parent = m->parent ? mm_of(r, m->parent) : NULL;
	struct range_node *root = NULL;

	if (m->parent && !parent)
		return JNL_REJECT;
	if (parent && range_root(&parent->ranges))
		root = range_node_ref(range_root(&parent->ranges));
	return add_mm(r, m->id, m->pid, m->uid, m->tree, m->features, !!(m->flags & JNL_MM_CHILD),
		      root);
}

/* unstore: systemd's copy of its uffd goes too (it ended, or is let go);
 * not when a failed restore gives up, which leaves the store as it was. */
static int rec_mm_end(struct restore *r, uint32_t id, int unstore)
{
	struct rmm *rm = idm_get(&r->mms, id);

	if (rm) {
		if (unstore) {
			char name[WING_NAME_MAX];
			wing_name(name, 'u', id);
			wing_unstore(r->wg, name);
		}
		mm_put(rm->mm);
		free(rm);
		idm_put(&r->mms, id, NULL);
	}
	return 0;
}


static int rec_session(struct restore *r, enum jnl_type type, const union jnl_payload *p)
{
	struct session *s;

	switch (type) {
	case JNL_SESSION_NEW:
		return add_session(r, p->session_new.id, p->session_new.pid, p->session_new.uid)
			       ? 0
			       : JNL_REJECT;
	case JNL_SESSION_END:
		if ((s = idm_get(&r->sessions, p->end.id))) {
			drop_session(r, s, p->end.id, NULL);
			idm_put(&r->sessions, p->end.id, NULL);
		}
		return 0;
	case JNL_SESSION_MM:
		return hmap_put(&r->links, p->session_mm.session, p->session_mm.mm);
	case JNL_HANDLE:
		if (!(s = idm_get(&r->sessions, p->handle.session)))
			return JNL_REJECT;
		return set_handle(s, p->handle.index, idm_get(&r->tmpls, p->handle.tmpl),
				  p->handle.uses) < 0
			       ? -ENOMEM
			       : 0;
	default: /* JNL_REPLY */
		if (!(s = idm_get(&r->sessions, p->reply.session)))
			return JNL_REJECT;
		set_reply(s, p->reply.req_seq, p->reply.status, p->reply.id, p->reply.value);
		return 0;
	}
}

static int cb_record(void *ctx, uint64_t seq, enum jnl_type type, const union jnl_payload *p)
{
	struct restore *r = ctx;
	struct tmpl *t;

	(void)seq;
	switch (type) {
	case JNL_TMPL_NEW:
		return idm_get(&r->tmpls, p->tmpl_new.id) ? 0 : add_tmpl(r, &p->tmpl_new);
	case JNL_TMPL_FREE:
		if ((t = idm_get(&r->tmpls, p->end.id))) {
			tmpl_put(&r->d->tmpls, t);
			idm_put(&r->tmpls, p->end.id, NULL);
		}
		return 0;
	case JNL_MM_NEW:
		return rec_mm_new(r, &p->mm_new);
	case JNL_MM_END:
		return rec_mm_end(r, p->end.id, 1);
	case JNL_MM_PID:
		if (mm_of(r, p->mm_pid.id))
			mm_of(r, p->mm_pid.id)->pid = p->mm_pid.pid;
		return 0;
	case JNL_MAP:
	case JNL_UNMAP:
	case JNL_COPY:
		return rec_range(r, type, p);
	default:
		return rec_session(r, type, p);
	}
}

/* --- after the replay ------------------------------------------------------------------ */

static void link_one(struct restore *r, uint32_t sid, uint32_t mid)
{
	struct session *s = idm_get(&r->sessions, sid);
	struct rmm *rm = idm_get(&r->mms, mid);

	if (!s)
		return;
	if (!rm || rm->claimed || rm->mm->is_child) {
		log_warn("restore: c%u (pid %d): its address space (u%u) is gone; dropped", sid,
			 (int)s->pid, mid);
		drop_session(r, s, sid, NULL);
		idm_put(&r->sessions, sid, NULL);
		r->dropped[0]++;
		return;
	}
	rm->claimed = 1;
	mm_ref(rm->mm); /* the session's */
	session_attach_mm(s, rm->mm);
}

/* Sessions to their address spaces; a client's address space whose
 * connection did not come back is what a closed connection leaves:
 * released; so is one whose process is gone. */
static void link_and_check(struct restore *r)
{
	for (size_t i = 0; hmap_next(&r->links, &i);)
		link_one(r, (uint32_t)r->links.k[i - 1], (uint32_t)r->links.v[i - 1]);
	for (size_t i = 0; hmap_next(&r->mms, &i);) {
		struct rmm *rm = idm_get(&r->mms, (uint32_t)r->mms.k[i - 1]);
		const char *why = !rm->mm->is_child && !rm->claimed ? "its connection is gone"
				  : uffd_probe(rm->mm->uffd, uffd_user_bottom()) == -ESRCH
					  ? "the process is gone"
					  : NULL;
		if (!why) {
			/* Its table is what the replay left: charged now. */
			mm_restore_account(rm->mm);
			r->kept[1]++;
			continue;
		}
		log_info("restore: u%u (pid %d): %s; released", rm->mm->id, (int)rm->mm->pid, why);
		rec_mm_end(r, (uint32_t)r->mms.k[i - 1], 1);
		r->dropped[1]++;
	}
}

/* Connections accepted after the last record: nothing was done on them
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
		if (check_conn(fd, &cred) < 0 || !session_adopt(r->d, fd, &cred, id)) {
			drop_fd(r, e->name, fd, "not a usable connection");
			continue;
		}
		log_info("restore: %s (pid %d uid %d): connected since the last record; adopted",
			 e->name, (int)cred.pid, (int)cred.uid);
		r->kept[0]++;
	}
}

/* Whatever nobody claimed: uffds without a record (their faults fall back
 * to the kernel once closed), connections when there is no journal, and
 * names we do not know. */
static void drop_rest(struct restore *r, int have)
{
	for (size_t i = 0; i < r->set->n; i++) {
		struct named_fd *e = &r->set->v[i];
		if (e->fd >= 0) {
			drop_fd(r, e->name, e->fd, "%s",
				have ? "not in the journal" : "no usable journal");
			e->fd = -1;
		}
	}
}

/* Every address space to its family's worker, woken, served. */
static void serve_all(struct restore *r)
{
	struct hmap placed = { 0 };

	for (size_t i = 0; hmap_next(&r->mms, &i);) {
		uint32_t id = (uint32_t)r->mms.k[i - 1];
		struct rmm *rm = idm_get(&r->mms, id);
		struct rp_mm *mm = rm->mm;
		struct worker *w = idm_get(&placed, mm->tree->id);
		if (w)
			worker_enter(&r->d->workers, w, mm->acct);
		else if ((w = worker_pick(&r->d->workers, mm->acct)))
			idm_put(&placed, mm->tree->id, w);
		mm->wake_all = 1;
		mm_start(mm, w);
		mm_put(mm); /* the restore's: the worker and the session hold theirs */
		free(rm);
		idm_put(&r->mms, id, NULL);
	}
	hmap_free(&placed);
}

static void restore_free(struct restore *r)
{
	for (size_t i = 0; hmap_next(&r->tmpls, &i);)
		tmpl_put(&r->d->tmpls, idm_get(&r->tmpls, (uint32_t)r->tmpls.k[i - 1]));
	for (size_t i = 0; hmap_next(&r->mms, &i);)
		rec_mm_end(r, (uint32_t)r->mms.k[i - 1], 0);
	for (size_t i = 0; hmap_next(&r->trees, &i);)
		mm_tree_put(idm_get(&r->trees, (uint32_t)r->trees.k[i - 1]));
	for (size_t i = 0; i < r->nnodes; i++)
		if (r->nodes[i])
			range_node_put(&r->build, r->nodes[i]);
	free(r->nodes);
	hmap_free(&r->tmpls);
	hmap_free(&r->mms);
	hmap_free(&r->sessions);
	hmap_free(&r->links);
	hmap_free(&r->trees);
}

static const struct jnl_callbacks callbacks = {
	.tmpl = cb_tmpl,
	.node = cb_node,
	.mm = cb_mm,
	.session = cb_session,
	.record = cb_record,
};

/* The journal, replayed; or why there is none (logged): -1 if strict. */
static int replay(struct restore *r, int fd, int strict, struct jnl_info *info)
{
	r->wg->fd = fd;
	enum jnl_err e = jnl_read(fd, &callbacks, r, info);

	if (e == JNL_OK) {
		for (int i = 0; i < 2; i++)
			if (i != info->slot && info->slot_err[i] != JNL_OK &&
			    info->slot_err[i] != JNL_EEMPTY)
				log_warn(
					"restore: journal slot %d: %s; using generation %llu from slot %d",
					i, jnl_err_str(info->slot_err[i]),
					(unsigned long long)info->gen, info->slot);
		if (info->end != JNL_END_CLEAN)
			log_notice("restore: the journal ends with %s after %llu records",
				   jnl_end_str(info->end), (unsigned long long)info->records);
		return 1;
	}
	if (e == JNL_EVERSION)
		log_err("restore: the journal is format version %u; this refpaged reads version %u",
			info->version, JNL_VERSION);
	else
		log_err("restore: the journal is unusable: %s (slots: %s, %s)", jnl_err_str(e),
			jnl_err_str(info->slot_err[0]), jnl_err_str(info->slot_err[1]));
	if (strict)
		return -1;
	log_err("restore: starting without it: every client passed back is closed and its pages "
		"fall back to ordinary anonymous memory");
	return 0;
}

static void ids_from(struct rp_daemon *d, const struct jnl_ids *next)
{
	if (next->session)
		rp_id_seen(d, RP_ID_SESSION, next->session - 1);
	if (next->mm)
		rp_id_seen(d, RP_ID_MM, next->mm - 1);
	if (next->tree)
		rp_id_seen(d, RP_ID_TREE, next->tree - 1);
	if (next->tmpl > d->tmpls.next_id)
		d->tmpls.next_id = next->tmpl;
}

/* The journal open (an unusable one is written over, in the same memfd: it
 * keeps its place in the fd store; without the fd store and without one
 * passed in, a fresh one, written only for an upgrade: the sandbox allows
 * no new file later), and the counters in it: before anything is served,
 * since the workers count from their first fault on. */
static void journal_ready(struct wing *wg, int snap_fd, const struct jnl_info *info, int have)
{
	int e = wing_journal_open(wg, snap_fd, have ? info : NULL);

	if (e < 0)
		log_err("restore: cannot write the journal: %s; restarts and upgrades will lose "
			"what changes from now on",
			strerror(-e));
	else
		wing_counters_attach(wg, have);
	/* With the fd store every change from now on is a record: set before
	 * the workers get anything to serve. */
	wg->journaling = wg->o.fdstore && e == 0;
}

int wing_rebuild(struct wing *wg, struct fdset *set, int snap_fd, int strict)
{
	struct restore r = { .wg = wg, .d = wg->d, .set = set };
	struct jnl_info info;
	int have = 0;

	memset(&info, 0, sizeof(info));
	range_table_init(&r.build, 0, mm_range_ops_acct(&wg->d->tmpls), NULL);
	acct_enforce(0);
	wg->restoring = 1;
	if (snap_fd >= 0 && (have = replay(&r, snap_fd, strict, &info)) < 0) {
		restore_free(&r);
		jnl_info_free(&info);
		wg->restoring = 0;
		acct_enforce(1);
		return -1;
	}
	if (have) {
		ids_from(wg->d, &info.next);
		link_and_check(&r);
		adopt_new_connections(&r);
	}
	drop_rest(&r, have);
	journal_ready(wg, snap_fd, &info, have);
	wg->restoring = 0;
	acct_enforce(1);
	if (snap_fd >= 0)
		log_notice(
			"restore: from %s, journal generation %llu (%llu records): %u clients and "
			"%u address spaces back; dropped %u clients, %u address spaces, %u templates",
			set->from, (unsigned long long)info.gen, (unsigned long long)info.records,
			r.kept[0], r.kept[1], r.dropped[0], r.dropped[1], r.dropped[2]);
	serve_all(&r);
	restore_free(&r);
	jnl_info_free(&info);
	return 0;
}
