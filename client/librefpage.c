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
#include <sys/stat.h>
#include <sys/uio.h>
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
	int fd;           /* file backend: the template file, -1 until first needed */
	dev_t fdev;       /* its identity: the program may close our descriptor, and */
	ino_t fino;       /* its number then name another file */
};

/* The file backend (docs/design.md, "Clients without a full userfaultfd").
 * A template's file is a memfd of this process holding the page repeated
 * over RP_FILE_CHUNK bytes, filled at its first use and then sealed
 * (nothing can write, shrink or grow it); a mapping is MAP_PRIVATE pieces
 * of it that end on RP_FILE_CHUNK boundaries of the mapping, so the kernel
 * serves every fault itself: a read maps the file's page (shared, no
 * copy), a write copies it, MADV_DONTNEED goes back to it, fork shares
 * it. The size weighs the fill every process pays once per template
 * (about 2 ms for 4 MiB) against the VMAs a mapping takes (256 a GiB, 4 to
 * 5 us each to map and unmap): perf/file-chunk. A mapping of at most this
 * size is one VMA, which plain mremap may grow to this size and move. */
#define RP_FILE_CHUNK (4u << 20)

struct rp_client {
	atomic_int owner; /* pid the connection belongs to */
	pthread_mutex_t lock;
	int sock;       /* -1: not connected (yet, or any more) */
	int lost;       /* the daemon went away */
	unsigned flags; /* RP_CONNECT_*, for every (re)connection */
	int backend;    /* RP_BACKEND_*, 0: not chosen yet (a fork child chooses again) */
	uint32_t seq;
	uint32_t next_id;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct rp_tmpl_rec tmpls[RP_MAX_TEMPLATES];
};

/* 1 if the record's template file descriptor is still the file we made. */
static int file_ours(const struct rp_tmpl_rec *t)
{
	struct stat st;

	return t->fd >= 0 && fstat(t->fd, &st) == 0 && st.st_dev == t->fdev && st.st_ino == t->fino;
}

/* Close the template file, unless the program closed it (and the number
 * may name its own file now). */
static void file_close(struct rp_tmpl_rec *t)
{
	if (file_ours(t))
		close(t->fd);
	t->fd = -1;
}

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


/* Choose the backend, and for the uffd backend connect and hand the
 * daemon a fresh uffd. Our copy of the uffd is closed right after: a dead
 * daemon then takes the last reference with it and every fault falls back
 * to the kernel instead of hanging. The file backend needs no daemon. */
/* The backend for this process, chosen once (again in a fork child), with
 * no daemon contacted. A userfaultfd that only serves user-mode faults
 * would make every system call on an untouched page fail with EFAULT:
 * unless asked for it, such a process gets the file backend, which has no
 * hole. Under c->lock. */
static void choose_backend(struct rp_client *c)
{
	int umo = 0, uffd;

	if (c->backend)
		return;
	if (c->flags & RP_CONNECT_FILE) {
		c->backend = RP_BACKEND_FILE;
		return;
	}
	if (c->flags & (RP_CONNECT_UFFD | RP_CONNECT_REPORT)) {
		c->backend = RP_BACKEND_UFFD;
		return;
	}
	uffd = proto_uffd_create(&umo);
	if (uffd >= 0)
		close(uffd);
	c->backend = uffd < 0 || umo ? RP_BACKEND_FILE : RP_BACKEND_UFFD;
}

static int do_connect(struct rp_client *c)
{
	struct proto_hello h = { .page_size = PAGE, .pid = (uint32_t)getpid() };
	struct proto_reply rep;
	int umo = 0, uffd, r;

	if (sysconf(_SC_PAGESIZE) != PAGE)
		return -EINVAL;
	choose_backend(c);
	if (c->backend == RP_BACKEND_FILE)
		return 0;
	if ((uffd = proto_uffd_create(&umo)) < 0)
		return uffd;
	if ((c->sock = proto_dial(c->path)) < 0) {
		close(uffd);
		return c->sock;
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

	if (!out || (flags & ~(unsigned)(RP_CONNECT_REPORT | RP_CONNECT_FILE | RP_CONNECT_UFFD)) ||
	    ((flags & RP_CONNECT_FILE) && (flags & (RP_CONNECT_UFFD | RP_CONNECT_REPORT))))
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
	for (int i = 0; i < RP_MAX_TEMPLATES; i++)
		c->tmpls[i].fd = -1;
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

/* fork() waits while the file backend makes a template file or moves a
 * mapping's pieces, and those wait while a fork is under way: a fork child
 * never sees a mapping half moved (the kernel's own mremap is one step to
 * a fork), nor a template file made but not yet recorded. Two counters
 * (each side raises its own, then looks at the other's), not a lock: no
 * lock is held across fork, so none needs mending in the child. */
static atomic_uint file_ops, forks;

static void file_op_begin(void)
{
	for (;;) {
		atomic_fetch_add(&file_ops, 1);
		if (!atomic_load(&forks))
			return;
		atomic_fetch_sub(&file_ops, 1);
		while (atomic_load(&forks))
			sched_yield();
	}
}

static void file_op_end(void)
{
	atomic_fetch_sub(&file_ops, 1);
}

static void atfork_prepare(void)
{
	atomic_fetch_add(&forks, 1);
	while (atomic_load(&file_ops))
		sched_yield();
}

static void atfork_parent(void)
{
	atomic_fetch_sub(&forks, 1);
}

static void atfork_child(void)
{
	atomic_store(&forks, 0);
	atomic_store(&file_ops, 0);
	atomic_flag_clear(&rebind_lock);
}

__attribute__((constructor)) static void rp_init(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
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
		/* Chosen again: a child that gave up a privilege may have
		 * lost the full userfaultfd its parent had. Template files
		 * are inherited and stay usable. */
		c->backend = 0;
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
	if (c->sock >= 0 || c->backend == RP_BACKEND_FILE)
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
	for (int i = 0; i < RP_MAX_TEMPLATES; i++) {
		if (c->tmpls[i].page)
			munmap(c->tmpls[i].page, PAGE);
		file_close(&c->tmpls[i]);
	}
	pthread_mutex_unlock(&c->lock);
	munmap(c, sizeof(*c));
}

RP_API int rp_alive(rp_client *c)
{
	if (!c)
		return 0;
	if (c->backend == RP_BACKEND_FILE)
		return 1; /* the kernel serves it: nothing to lose */
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

	if (t->live_id || c->backend == RP_BACKEND_FILE)
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
	t->fd = -1;
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
	r = t->live_id && c->sock >= 0 ? request(c, PROTO_TEMPLATE_RELEASE, &m, sizeof(m), &rep)
				       : 0;
	munmap(t->page, PAGE);
	file_close(t); /* its mappings keep the file */
	memset(t, 0, sizeof(*t));
	t->fd = -1;
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

/* --- the file backend ----------------------------------------------- */

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u /* Linux 6.3 */
#endif

/* Template files take a descriptor number from here up, away from the low
 * numbers programs expect open() to return; below it if it cannot. */
#define RP_FILE_FD_MIN 100

/* The template's file, made and filled at its first use. Under c->lock
 * and inside file_op_begin/end. */
static int file_make(struct rp_tmpl_rec *t)
{
	struct iovec iov[64];
	struct stat st;
	size_t have = 0;
	int fd, e;

	/* Still ours? A program that closed every descriptor (closefrom)
	 * may have reused the number: mapping that would map its file. */
	if (file_ours(t))
		return 0;
	t->fd = -1; /* not ours to close any more */
	/* Not executable (a kernel with vm.memfd_noexec=2 refuses an
	 * executable one); older kernels do not know the flag. */
	fd = memfd_create("refpage", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	if (fd < 0 && errno == EINVAL)
		fd = memfd_create("refpage", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	for (unsigned i = 0; i < 64; i++)
		iov[i] = (struct iovec){ .iov_base = t->page, .iov_len = PAGE };
	while (have < RP_FILE_CHUNK) {
		ssize_t n = pwritev(fd, iov, 64, (off_t)have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || ((size_t)n & (PAGE - 1))) {
			e = n < 0 ? errno : ENOSPC; /* a short write: tmpfs is full */
			goto fail;
		}
		have += (size_t)n;
	}
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0 ||
	    fstat(fd, &st) < 0) {
		e = errno;
		goto fail;
	}
	int high = fcntl(fd, F_DUPFD_CLOEXEC, RP_FILE_FD_MIN);
	if (high >= 0) {
		close(fd);
		fd = high;
	}
	t->fd = fd;
	t->fdev = st.st_dev;
	t->fino = st.st_ino;
	return 0;
fail:
	close(fd);
	return -e;
}

static int file_ensure(struct rp_tmpl_rec *t)
{
	if (file_ours(t))
		return 0;
	file_op_begin();
	int r = file_make(t);
	file_op_end();
	return r;
}

/* Map [a + from, a + from + len) of a mapping at a with the template's
 * file, over what is there (MAP_FIXED): pieces that end on RP_FILE_CHUNK
 * boundaries of the mapping, each at the file offset of its place in its
 * chunk, so a piece grown later continues its predecessor's offsets and
 * the kernel can merge the two. */
static int file_fill(struct rp_tmpl_rec *t, char *a, size_t from, size_t len, int prot, int flags)
{
	int r = file_ensure(t);

	if (r < 0)
		return r;
	while (len) {
		size_t off = from % RP_FILE_CHUNK, n = RP_FILE_CHUNK - off;
		if (n > len)
			n = len;
		if (mmap(a + from, n, prot, flags | MAP_PRIVATE | MAP_FIXED, t->fd, (off_t)off) ==
		    MAP_FAILED)
			return -errno;
		from += n;
		len -= n;
	}
	return 0;
}

/* Flags of a caller's mmap that place a reservation, and those that pass
 * to the pieces. MAP_POPULATE never passes: it would write-fault (copy)
 * every page of a writable private mapping. */
#define PLACE_FLAGS (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_32BIT)
#define PIECE_FLAGS (MAP_NORESERVE | MAP_LOCKED | MAP_STACK)

static void *file_map(void *addr, size_t len, int prot, int flags, struct rp_tmpl_rec *t)
{
	/* The file first: a MAP_FIXED reservation replaces what the caller
	 * had there, which a failure to make the file must not cost it. */
	int r = file_ensure(t);
	if (r < 0) {
		errno = -r;
		return MAP_FAILED;
	}
	char *p = mmap(addr, len, PROT_NONE,
		       (flags & PLACE_FLAGS) | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return p;
	if ((r = file_fill(t, p, 0, len, prot, flags & PIECE_FLAGS)) < 0) {
		munmap(p, len);
		errno = -r;
		return MAP_FAILED;
	}
	return p;
}

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4 /* Linux 5.7; for file mappings 5.13 */
#endif

/* Moving a mapping of many pieces (docs/design.md, "the file backend").
 * One mremap per RP_FILE_CHUNK of the mapping: the pieces end on those
 * boundaries, so no move spans two of them (older kernels move one VMA at
 * a time, and unmap the destination before they find out that a range
 * spans two: a failed attempt would leave it free for another thread's
 * mmap). Each move leaves its source mapped (MREMAP_DONTUNMAP: it reads
 * the template again), so that no other thread's mmap can take the old
 * addresses before the move is done or undone. */
static int move_dontunmap = MREMAP_DONTUNMAP; /* 0 on a kernel without it */

static int move_piece(char *src, size_t n, char *dst)
{
	int f = MREMAP_MAYMOVE | MREMAP_FIXED;

	if (mremap(src, n, n, f | move_dontunmap, dst) != MAP_FAILED)
		return 0;
	if (errno != EINVAL || !move_dontunmap)
		return -errno;
	/* Before 5.13 no file mapping may be left behind. */
	move_dontunmap = 0;
	return mremap(src, n, n, f, dst) == MAP_FAILED ? -errno : 0;
}

/* Move [old, old + len) to to, piece by piece. 0, or -errno with every
 * piece back where it was (its data copied back if the kernel refuses to
 * move it back) and *failed the offset of the piece whose move failed:
 * its place at to may or may not still be ours; to's places after it are,
 * untouched. */
static int move_pieces(char *old, size_t len, char *to, size_t *failed)
{
	size_t done = 0;
	int r = 0;

	while (done < len) {
		size_t n = len - done < RP_FILE_CHUNK ? len - done : RP_FILE_CHUNK;
		if ((r = move_piece(old + done, n, to + done)) < 0)
			break;
		done += n;
	}
	*failed = done;
	if (r == 0)
		return move_dontunmap && munmap(old, len) < 0 ? -errno : 0;
	while (done) {
		size_t n = done % RP_FILE_CHUNK ? done % RP_FILE_CHUNK : RP_FILE_CHUNK;
		done -= n;
		if (move_dontunmap) {
			/* Over the piece left behind (ours); else its bytes. */
			if (mremap(to + done, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, old + done) ==
			    MAP_FAILED) {
				memcpy(old + done, to + done, n);
				munmap(to + done, n);
			}
		} else if (mremap(to + done, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, old + done) ==
			   MAP_FAILED) {
			/* The old addresses are not ours any more: the data
			 * stays at to, which the caller must not unmap. */
			return -EFAULT;
		}
	}
	return r;
}

/* rp_remap on the file backend, under c->lock; arguments checked. */
static void *file_remap(struct rp_tmpl_rec *t, char *old, size_t old_len, size_t new_len, int flags,
			int prot, char *dst)
{
	int r = new_len > old_len ? file_make(t) : 0; /* inside file_op_begin */

	if (r < 0) {
		errno = -r;
		return MAP_FAILED;
	}
	if (new_len < old_len) {
		if (munmap(old + new_len, old_len - new_len) < 0)
			return MAP_FAILED;
		old_len = new_len;
	}
	if (!(flags & MREMAP_FIXED)) {
		if (new_len == old_len)
			return old;
		/* In place if the addresses above are free. */
		char *q = mmap(old + old_len, new_len - old_len, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
			       -1, 0);
		if (q == old + old_len) {
			if ((r = file_fill(t, old, old_len, new_len - old_len, prot, 0)) < 0) {
				munmap(q, new_len - old_len);
				errno = -r;
				return MAP_FAILED;
			}
			return old;
		}
		if (q != MAP_FAILED)
			munmap(q, new_len - old_len); /* a kernel that took it as a hint */
		if (!(flags & MREMAP_MAYMOVE)) {
			errno = ENOMEM;
			return MAP_FAILED;
		}
	}
	/* Move: to dst (whatever is there goes, as with mremap), or to a
	 * reservation of the new size anywhere. */
	char *to = dst;
	if (!(flags & MREMAP_FIXED)) {
		to = mmap(NULL, new_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
			  0);
		if (to == MAP_FAILED)
			return MAP_FAILED;
	} else if (mmap(to, new_len, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
			0) == MAP_FAILED) {
		return MAP_FAILED;
	}
	/* The grown part first: a failure there leaves nothing moved. */
	if (new_len > old_len && (r = file_fill(t, to, old_len, new_len - old_len, prot, 0)) < 0) {
		munmap(to, new_len); /* all ours: the reservation and its pieces */
		errno = -r;
		return MAP_FAILED;
	}
	size_t failed = 0;
	if ((r = move_pieces(old, old_len, to, &failed)) < 0) {
		/* What is surely ours of the new place goes: the places after
		 * the piece whose move failed, and the grown part. */
		size_t after = failed + (old_len - failed < RP_FILE_CHUNK ? old_len - failed
									  : RP_FILE_CHUNK);
		if (r != -EFAULT && after < new_len)
			munmap(to + after, new_len - after);
		errno = -r;
		return MAP_FAILED;
	}
	return to;
}

/* mmap + register (uffd backend) or map the template's file, under c->lock. */
static void *map_locked(rp_client *c, void *addr, size_t len, int prot, int flags,
			struct rp_tmpl_rec *t)
{
	struct proto_reply rep;

	if (c->backend == RP_BACKEND_FILE)
		return file_map(addr, len, prot, flags, t);
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
	 * a lost daemon does not stop the unmap. The file backend has
	 * nothing to unregister. */
	r = enter(c);
	if (r == 0) {
		if (c->sock >= 0)
			r = request(c, PROTO_UNMAP, &m, sizeof(m), &rep);
		leave(c);
	}
	(void)r;
	return munmap(addr, m.len) < 0 ? -errno : 0;
}

/* Every page of [p, p + n) mapped: mincore says ENOMEM for a hole. One
 * call per 8 MiB (the vector is on the stack, which may be small). */
static int all_mapped(const char *p, size_t n)
{
	unsigned char vec[2048];

	for (size_t off = 0; off < n;) {
		size_t k = n - off < sizeof(vec) * PAGE ? n - off : sizeof(vec) * PAGE;
		if (mincore((void *)(p + off), k, vec) < 0)
			return 0;
		off += k;
	}
	return 1;
}

RP_API void *rp_remap(rp_client *c, void *old, size_t old_len, size_t new_len, int flags, int prot,
		      uint32_t id, void *new_addr)
{
	uintptr_t o = (uintptr_t)old, d = (uintptr_t)new_addr;
	int me = (int)getpid();

	/* As mremap checks them, before anything changes: lengths (a huge one
	 * must not round to 0), flags, alignment, overlap, and that the old
	 * range is mapped (EFAULT). */
	if (!c || !old_len || !new_len || old_len > PTRDIFF_MAX || new_len > PTRDIFF_MAX ||
	    (o & (PAGE - 1)) || (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED)) ||
	    ((flags & MREMAP_FIXED) && (!(flags & MREMAP_MAYMOVE) || (d & (PAGE - 1))))) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	old_len = page_round(old_len);
	new_len = page_round(new_len);
	if (o + old_len < o ||
	    ((flags & MREMAP_FIXED) && (d + new_len < d || (o < d + new_len && d < o + old_len)))) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (atomic_load(&c->owner) != me)
		rebind(c, me);
	pthread_mutex_lock(&c->lock);
	choose_backend(c); /* no daemon needed for this */
	struct rp_tmpl_rec *t = rec_find(c, id);
	if (!t) {
		pthread_mutex_unlock(&c->lock);
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (c->backend != RP_BACKEND_FILE) {
		/* A uffd mapping is one VMA: the kernel's mremap, which the
		 * daemon follows (or, with the daemon gone, plain memory). */
		pthread_mutex_unlock(&c->lock);
		return mremap(old, old_len, new_len, flags, new_addr);
	}
	void *p = MAP_FAILED;
	if (!all_mapped(old, old_len))
		errno = EFAULT;
	else {
		file_op_begin();
		p = file_remap(t, old, old_len, new_len, flags, prot, new_addr);
		file_op_end();
	}
	int e = errno;
	pthread_mutex_unlock(&c->lock);
	errno = e;
	return p;
}

RP_API int rp_backend(rp_client *c)
{
	int me = (int)getpid(), r;

	if (!c)
		return -EINVAL;
	if (atomic_load(&c->owner) != me)
		rebind(c, me);
	pthread_mutex_lock(&c->lock);
	choose_backend(c); /* never a connection: just the choice */
	r = c->backend;
	pthread_mutex_unlock(&c->lock);
	return r;
}

RP_API const char *rp_backend_name(int backend)
{
	switch (backend) {
	case RP_BACKEND_UFFD:
		return "uffd";
	case RP_BACKEND_FILE:
		return "file";
	default:
		return "?";
	}
}

RP_API int rp_stats(rp_client *c, uint64_t *values, const char **names, int max)
{
	struct proto_stats_reply rep;
	int r;

	if (!c || max < 0 || (max && !values))
		return -EINVAL;
	if ((r = enter(c)) < 0)
		return r;
	if (c->backend == RP_BACKEND_FILE) {
		leave(c);
		return -EOPNOTSUPP; /* no daemon involved: nothing it counted */
	}
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
		return "not on this connection: report mode needs a refpaged that knows it and "
		       "a connection made for it (rp_connect_opts); daemon counters need the "
		       "uffd backend (the file backend involves no daemon)";
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
