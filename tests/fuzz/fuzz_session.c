/* libFuzzer target: the daemon's message decoder and session state machine.
 *
 * The real daemon code (session.c, and what it calls: mm.c, template.c,
 * range.c, acct.c, fault.c, uffd.c, worker.c with two real worker threads)
 * runs in this process, set up as daemon/main.c sets it up (the main loop
 * and its inbox, parking, the template store charging its owners, the
 * placement of address spaces on workers), without the restart wing. Each
 * input (format: fuzz_input.h) is a conversation of up to three clients
 * over socketpairs handed to session_start(), as the listener would; after
 * every packet the main loop runs until the daemon has read it (a MAP or
 * UNMAP goes to a worker and comes back through the main loop's inbox).
 *
 * Every reply is checked: it passes proto_check, carries no descriptor,
 * answers the requests in order (seq echoed) with the reply type the
 * request takes, and agrees with a model the harness keeps of each session
 * (handshake, template handles, ranges): malformed input gets
 * -EBADMSG/-EPROTO and a close, a request before HELLO or a second HELLO
 * gets -EPROTO and a close, a handle is never reused for other contents, a
 * MAP never succeeds on a handle the client does not hold, or on a range it
 * already has; a template is refused only with -EDQUOT (a budget) or
 * -ENOMEM; USAGE answers for the uid asked about, with its budgets. Arena
 * pages the uffd owner touches read zeros, or the contents of a template
 * that covered them, and stay what they first read; no fault is left
 * waiting.
 *
 * After every input all clients hang up, and the daemon must be back to
 * rest: no session, no served process on any worker, no range, no template
 * in the store, nothing charged to any uid (acct's per-uid usage, as USAGE
 * reports it, and the daemon-wide pools) and no account referenced but by
 * the harness, and no more descriptors open than after the first input
 * (pipes handed to the daemon: none).
 *
 * The userfaultfds come from a separate process (uffd_helper.c) so that a
 * fuzzed MAP can only register that process's memory. Environment:
 * RP_FUZZ_LOG=debug|info|... (default: crit, i.e. quiet); RP_FUZZ_HELPER
 * overrides the helper's path. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "acct.h"
#include "daemon.h"
#include "fuzz_helper.h"
#include "fuzz_input.h"
#include "log.h"
#include "mm.h"
#include "proto.h"
#include "session.h"
#include "stats.h"
#include "template.h"
#include "uffd.h"
#include "worker.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PAGE PROTO_PAGE_SIZE
#define DEADLINE_S 5.0
/* Replies a client may leave unread; the harness reads before more. */
#define QMAX 256
/* Distinct template contents the model follows per input (0: zeros). */
#define MAX_CONTENTS 64

/* Small limits, so that inputs reach them. */
#define LIM_TEMPLATES 4 /* handles per connection */
#define LIM_RANGES 4    /* per address space */
#define LIM_BYTES (32ull * PAGE)
#define LIM_STORE 8
#define UID_CONNECTIONS 2
#define UID_TEMPLATES 6
#define UID_RANGES 6
#define UID_BYTES (48ull * PAGE)
#define UID_PROCESSES 8
/* As many as two connections and their uffds: both can be served. */
#define UID_FDS 4
/* The daemon's memory for our uid: a few templates and sessions, but not a
 * fill slab (fault_around pages) for each template, so that fills one page
 * at a time, and refusals of memory, are reached. */
#define UID_MEMORY (96u * 1024)
/* As main.c's defaults. */
#define LOOP_QUOTA 2
#define FAULT_QUOTA 128
#define NWORKERS 2

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz_session: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}

/* --- the model ------------------------------------------------------------ */

enum pend_kind { PEND_REFUSAL, PEND_INVALID, PEND_REQUEST };

struct pending {
	enum pend_kind kind;
	uint32_t seq;
	uint16_t type;
	int32_t want; /* PEND_INVALID: the status it must get */
	int content;  /* TEMPLATE_*: the content index, -1 if not followed */
	union {
		struct proto_map map;
		struct proto_unmap unmap;
		struct proto_template_release rel;
		struct proto_usage usage;
		struct proto_report report;
	} u;
};

struct mrange {
	uint64_t start, end;
	int content;
};

struct slot {
	int fd;               /* client end, -1: none */
	struct session *sess; /* the daemon's, for identity only (may be freed) */
	int eof;              /* the daemon closed the connection */
	int must_close;       /* a reply announced the close */
	int lenient;          /* replies were left unread: a close may cut them */
	int hello_ok;
	struct pending q[QMAX];
	unsigned qh, qn;
	int tcontent[LIM_TEMPLATES + 1];
	uint32_t tuses[LIM_TEMPLATES + 1];
	struct mrange r[LIM_RANGES * 2];
	unsigned nr;
};

struct arena_page {
	int seen; /* touched since the reset: content is fixed */
	int content;
	uint64_t maybe; /* contents of every range that covered it */
	int unknown;    /* a range of contents the model lost covered it */
};

static struct rp_daemon d;
static struct acct *me; /* our uid's account, held across inputs */
static int helper = -1;
static int fds_baseline = -1;
static unsigned long inputs;

static struct slot slots[FZ_SLOTS];
static struct arena_page pages[FZ_ARENA_PAGES];
static uint8_t (*contents)[PAGE]; /* [MAX_CONTENTS] */
static int ncontents;

/* The template store's ops: main.c's (acct_tmpl_ops). */
static struct tmpl_ops tmpl_ops;

static int content_index(const uint8_t *page)
{
	for (int i = 0; i < ncontents; i++)
		if (!memcmp(contents[i], page, PAGE))
			return i;
	if (ncontents == MAX_CONTENTS)
		return -1; /* not followed: pages it may fill are not checked */
	memcpy(contents[ncontents], page, PAGE);
	return ncontents++;
}

/* --- the uffd owner ---------------------------------------------------------- */

static void helper_start(void)
{
	const char *path = getenv("RP_FUZZ_HELPER");
	int sv[2];

	if (!path)
		path = RP_FUZZ_HELPER_PATH;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		/* dup2 clears close-on-exec, unless it is already fd 3. */
		if (sv[1] == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(sv[1], 3) < 0)
			_exit(127);
		execl(path, path, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	helper = sv[0];
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void helper_req(uint8_t op, uint8_t arg, uint32_t page)
{
	struct fz_helper_req r = { .op = op, .arg = arg, .page = page };
	ssize_t n;

	while ((n = send(helper, &r, sizeof(r), MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (n != (ssize_t)sizeof(r))
		die("uffd helper gone: %s", strerror(errno));
}

/* Wait for the helper's answer: a fault it takes must be answered.
 * (libFuzzer's timers interrupt system calls.) */
static void helper_wait(const char *what)
{
	double end = now() + DEADLINE_S;
	struct pollfd p = { .fd = helper, .events = POLLIN };

	for (;;) {
		double left = end - now();
		if (left <= 0)
			die("%s: no answer within %.0f s (a fault left waiting?)", what,
			    DEADLINE_S);
		int r = poll(&p, 1, (int)(left * 1000) + 1);
		if (r > 0)
			return;
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
	}
}

static ssize_t helper_recv(void *buf, size_t n)
{
	ssize_t r;

	while ((r = recv(helper, buf, n, 0)) < 0 && errno == EINTR)
		;
	return r;
}

static int helper_uffd(uint8_t kind)
{
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	char b;
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	struct msghdr m = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	int fd = -1;

	helper_req(FZ_HELPER_UFFD, kind, 0);
	helper_wait("uffd");
	ssize_t n;
	while ((n = recvmsg(helper, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n != 1)
		die("uffd helper gone");
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(fd));
	if (fd < 0)
		die("the helper cannot make a userfaultfd (kind %u)", kind);
	return fd;
}

static void helper_touch(uint32_t page, uint8_t *out)
{
	helper_req(FZ_HELPER_TOUCH, 0, page);
	helper_wait("touch");
	if (helper_recv(out, PAGE) != (ssize_t)PAGE)
		die("uffd helper gone");
}

static void helper_reset(void)
{
	char b;

	helper_req(FZ_HELPER_RESET, 0, 0);
	helper_wait("reset");
	if (helper_recv(&b, 1) != 1)
		die("uffd helper gone");
}

/* --- set-up -------------------------------------------------------------------- */

/* Open descriptors but pipes: the sanitizer runtime starts its symbolizer
 * (when libFuzzer first prints a NEW_FUNC line) with pipes of its own. The
 * pipes the harness hands the daemon are followed by inode instead. */
static int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	char path[300], target[64];
	int n = 0;

	if (!dir)
		die("/proc/self/fd: %s", strerror(errno));
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t k = readlink(path, target, sizeof(target) - 1);
		target[k > 0 ? k : 0] = '\0';
		n += strncmp(target, "pipe:", 5) != 0;
	}
	closedir(dir);
	return n - 1; /* the directory's own */
}

/* Pipes made for this input (st_ino), which must all be closed after it. */
#define MAX_PIPES 256
static unsigned long pipes_made[MAX_PIPES];
static int npipes;

static void check_pipes(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	char path[300], target[64], want[64];

	while (dir && (e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t k = readlink(path, target, sizeof(target) - 1);
		target[k > 0 ? k : 0] = '\0';
		for (int i = 0; i < npipes; i++) {
			snprintf(want, sizeof(want), "pipe:[%lu]", pipes_made[i]);
			if (!strcmp(target, want))
				die("fd %s: a pipe handed to the daemon is still open", e->d_name);
		}
	}
	if (dir)
		closedir(dir);
	npipes = 0;
}

static void print_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	char path[300], target[256];

	while (dir && (e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
	}
	if (dir)
		closedir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *lvl = getenv("RP_FUZZ_LOG");

	(void)argc;
	(void)argv;
	log_set_level(lvl && log_parse_level(lvl) >= 0 ? log_parse_level(lvl) : LOG_CRIT);
	signal(SIGPIPE, SIG_IGN);
	contents = calloc(MAX_CONTENTS, PAGE);
	if (!contents)
		die("out of memory");
	/* Before any thread. */
	helper_start();
	/* As main.c's init() and serve_from(), without the restart wing,
	 * the listener and the sandbox. */
	d.cfg = (struct rp_config){
		.workers = NWORKERS,
		.fault_around = 16,
		/* The fault loop's switches as main.c's defaults. */
		.batch = MM_MSG_BATCH,
		.drain = 1,
		.coalesce = 1,
		.lim = {
			.templates = LIM_TEMPLATES,
			.ranges = LIM_RANGES,
			.bytes = LIM_BYTES,
			.store = LIM_STORE,
			.connections = 64,
			.descendants = 4,
			.hello_timeout_s = 3600,
			.loop_quota = LOOP_QUOTA,
			.fault_quota = FAULT_QUOTA,
			.per_uid.max = { [ACCT_CONNECTIONS] = UID_CONNECTIONS,
					 [ACCT_TEMPLATES] = UID_TEMPLATES,
					 [ACCT_RANGES] = UID_RANGES,
					 [ACCT_BYTES] = UID_BYTES,
					 [ACCT_PROCESSES] = UID_PROCESSES,
					 [ACCT_FDS] = UID_FDS,
					 [ACCT_MEMORY] = UID_MEMORY },
		},
	};
	acct_init(&d.cfg.lim.per_uid, 1 + d.cfg.workers);
	if (uffd_learn_top() < 0)
		die("cannot learn the top of user space");
	for (int k = 0; k < RP_ID_KINDS; k++)
		atomic_init(&d.next_id[k], 1);
	d.listen_fd = -1;
	acct_tmpl_ops(&tmpl_ops);
	/* Not the default loop: that one would take SIGCHLD (the helper's). */
	d.loop = ev_loop_new(EVFLAG_AUTO);
	if (!d.loop || inbox_init(&d.mainq, d.loop) < 0 ||
	    tmpl_store_init(&d.tmpls, d.cfg.lim.store, d.cfg.fault_around, &tmpl_ops) < 0)
		die("cannot initialise the daemon state");
	loop_track(d.loop);
	park_init(&d.parked, d.loop, 0, d.cfg.lim.loop_quota);
	int r = workers_start(&d.workers, d.cfg.workers, d.cfg.lim.fault_quota, mm_worker_stop,
			      mm_worker_pause);
	if (r < 0)
		die("workers_start: %s", strerror(-r));
	if (!(me = acct_get(getuid())))
		die("acct_get: out of memory");
	for (int i = 0; i < FZ_SLOTS; i++)
		slots[i].fd = -1;
	return 0;
}

/* --- replies --------------------------------------------------------------------- */

static int session_alive(const struct session *s)
{
	for (struct session *x = d.sessions; x; x = x->next)
		if (x == s)
			return 1;
	return 0;
}

static int overlaps(uint64_t a, uint64_t b, const struct mrange *r)
{
	return a < r->end && r->start < b;
}

static void model_map(struct slot *s, const struct proto_map *m, int32_t status)
{
	uint64_t end = m->addr + m->len;
	int aligned = !(m->addr % PAGE) && !(m->len % PAGE) && m->len && end > m->addr;

	if (status != 0)
		return;
	if (!aligned)
		die("MAP [%#llx, +%#llx) succeeded though not page aligned",
		    (unsigned long long)m->addr, (unsigned long long)m->len);
	if (m->id == 0 || m->id > LIM_TEMPLATES || !s->tuses[m->id])
		die("MAP succeeded with template id %u, which the client does not hold", m->id);
	for (int k = 0; k < FZ_SLOTS; k++)
		for (unsigned i = 0; i < slots[k].nr; i++)
			if (overlaps(m->addr, end, &slots[k].r[i]))
				die("MAP [%#llx, %#llx) succeeded over a live range of slot %d",
				    (unsigned long long)m->addr, (unsigned long long)end, k);
	if (s->nr == sizeof(s->r) / sizeof(s->r[0]))
		die("MAP succeeded past the range limit");
	int c = s->tcontent[m->id];
	s->r[s->nr++] = (struct mrange){ m->addr, end, c };
	for (uint32_t p = 0; p < FZ_ARENA_PAGES; p++) {
		uint64_t a = FZ_ARENA + (uint64_t)p * PAGE;
		if (a >= m->addr && a < end) {
			if (c >= 0)
				pages[p].maybe |= 1ull << c;
			else
				pages[p].unknown = 1;
		}
	}
}

static void model_unmap(struct slot *s, const struct proto_unmap *m, int32_t status)
{
	uint64_t a = m->addr, b = m->addr + m->len;
	struct mrange keep[LIM_RANGES * 2 + 2];
	unsigned n = 0;

	if (status != 0)
		return;
	for (unsigned i = 0; i < s->nr; i++) {
		struct mrange r = s->r[i];
		if (!overlaps(a, b, &r)) {
			keep[n++] = r;
			continue;
		}
		if (r.start < a)
			keep[n++] = (struct mrange){ r.start, a, r.content };
		if (b < r.end)
			keep[n++] = (struct mrange){ b, r.end, r.content };
	}
	if (n > sizeof(s->r) / sizeof(s->r[0]))
		die("UNMAP succeeded with more pieces than the range limit allows");
	memcpy(s->r, keep, n * sizeof(keep[0]));
	s->nr = n;
}

static void model_template(struct slot *s, const struct pending *p, const struct proto_reply *r)
{
	if (r->status != 0) {
		if (r->status != -EDQUOT && r->status != -ENOMEM)
			die("%s refused with %d", proto_type_name(p->type), r->status);
		return;
	}
	if (r->id == 0 || r->id > LIM_TEMPLATES)
		die("%s gave handle %u, limit %d", proto_type_name(p->type), r->id, LIM_TEMPLATES);
	for (uint32_t i = 1; i <= LIM_TEMPLATES; i++)
		if (p->content >= 0 && s->tuses[i] && s->tcontent[i] == p->content && i != r->id)
			die("%s gave handle %u; the client holds %u for the same contents",
			    proto_type_name(p->type), r->id, i);
	if (s->tuses[r->id] && s->tcontent[r->id] != p->content && p->content >= 0 &&
	    s->tcontent[r->id] >= 0)
		die("%s gave handle %u, which still names other contents", proto_type_name(p->type),
		    r->id);
	s->tcontent[r->id] = p->content;
	s->tuses[r->id]++;
}

static void model_release(struct slot *s, const struct proto_template_release *m, int32_t status)
{
	int held = m->id >= 1 && m->id <= LIM_TEMPLATES && s->tuses[m->id];

	if (status == 0 && !held)
		die("RELEASE of handle %u succeeded; the client does not hold it", m->id);
	if (status != 0 && held)
		die("RELEASE of held handle %u refused with %d", m->id, status);
	if (status == 0)
		s->tuses[m->id]--;
}

/* A valid request's reply, against the model. */
static void check_request(struct slot *s, const struct pending *p, const struct proto_reply *r)
{
	if (r->status > 0 || r->status < -4095 || r->status == -EBADMSG)
		die("%s: status %d", proto_type_name(p->type), r->status);
	if (p->type == PROTO_HELLO) {
		if (r->status == 0 && s->hello_ok)
			die("a second HELLO succeeded");
		if (r->status == 0 && r->id != PROTO_VERSION)
			die("HELLO reply id %u, want the version", r->id);
		if (r->status)
			s->must_close = 1;
		s->hello_ok |= r->status == 0;
		return;
	}
	if (p->type == PROTO_UPGRADE) {
		/* Allowed before HELLO; without the restart wing there is no
		 * upgrade at all (d.upgrade is NULL), whoever asks. */
		if (r->status != -EOPNOTSUPP)
			die("UPGRADE: status %d, want -EOPNOTSUPP", r->status);
		return;
	}
	if (p->type == PROTO_REPORT && s->hello_ok) {
		/* After HELLO a plain REPLY answers only a max out of range. */
		if (r->status != -EINVAL)
			die("REPORT (max %u): REPLY status %d, want -EINVAL", p->u.report.max,
			    r->status);
		return;
	}
	if (!s->hello_ok) {
		if (r->status != -EPROTO)
			die("%s before HELLO: status %d, want -EPROTO", proto_type_name(p->type),
			    r->status);
		s->must_close = 1;
		return;
	}
	if (r->status == -EPROTO)
		die("%s after HELLO: -EPROTO", proto_type_name(p->type));
	switch (p->type) {
	case PROTO_TEMPLATE_FILL:
	case PROTO_TEMPLATE_CREATE:
		model_template(s, p, r);
		break;
	case PROTO_TEMPLATE_RELEASE:
		model_release(s, &p->u.rel, r->status);
		break;
	case PROTO_MAP:
		model_map(s, &p->u.map, r->status);
		break;
	case PROTO_UNMAP:
		model_unmap(s, &p->u.unmap, r->status);
		break;
	default:
		die("REPLY to %s", proto_type_name(p->type));
	}
}

/* USAGE: every connection is ours, and we are root or the daemon's uid
 * (both are one here), so any uid may be asked about; the only account is
 * ours (proto.h: PROTO_USAGE_*). */
static void check_usage(const struct pending *p, const struct proto_usage_reply *u)
{
	const struct proto_usage *q = &p->u.usage;
	uid_t uid = getuid();
	int found = (q->flags & PROTO_USAGE_SELF) ||
		    ((q->flags & PROTO_USAGE_NEXT) ? q->uid < uid : q->uid == uid);

	if (u->status != (found ? 0 : -ENOENT))
		die("USAGE uid %u flags %#x: status %d, want %d", q->uid, q->flags, u->status,
		    found ? 0 : -ENOENT);
	if (u->reserved)
		die("USAGE reply: reserved %u", u->reserved);
	if (!found) {
		static const struct proto_usage_reply none = { .status = -ENOENT };
		if (memcmp(u, &none, sizeof(none)))
			die("USAGE refused, with contents");
		return;
	}
	if (u->uid != uid || u->count != ACCT_RES_COUNT || ACCT_RES_COUNT != PROTO_RES_COUNT)
		die("USAGE reply: uid %u count %u, want %u and %u", u->uid, u->count, (unsigned)uid,
		    (unsigned)ACCT_RES_COUNT);
	for (unsigned i = 0; i < PROTO_RES_MAX; i++) {
		uint64_t lim = i < ACCT_RES_COUNT ? d.cfg.lim.per_uid.max[i] : 0;
		if (u->limit[i] != lim)
			die("USAGE %s: limit %llu, want %llu", proto_res_name(i),
			    (unsigned long long)u->limit[i], (unsigned long long)lim);
		if (i >= ACCT_RES_COUNT && (u->used[i] || u->refused[i]))
			die("USAGE: entry %u past the count", i);
	}
	/* Charged on the main loop only (no fork children here), so never
	 * past the budget even for a moment; the session asking holds a
	 * connection. Ranges and bytes follow the kernel and may pass theirs
	 * (an UNMAP's hole); memory is charged on workers too, added first
	 * and taken back when refused (acct.c), so a read can see it over. */
	static const enum acct_res exact[] = { ACCT_CONNECTIONS, ACCT_TEMPLATES, ACCT_PROCESSES };
	for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
		if (u->used[exact[i]] > u->limit[exact[i]])
			die("USAGE %s: %llu used, budget %llu", acct_res_name(exact[i]),
			    (unsigned long long)u->used[exact[i]],
			    (unsigned long long)u->limit[exact[i]]);
	if (!u->used[ACCT_CONNECTIONS])
		die("USAGE: no connection charged, from a connection");
}

static void check_reply(struct slot *s, const uint8_t *buf, long n)
{
	const struct proto_hdr *h;
	enum proto_err e = proto_check(buf, (size_t)n, 0, 0, &h);

	if (e != PROTO_OK)
		die("the daemon sent a bad message: %s", proto_err_str(e));
	if (s->must_close)
		die("a reply after the one that announced the close");
	if (!s->qn)
		die("a reply (seq %u) to no request", h->seq);
	const struct pending *p = &s->q[s->qh];
	s->qh = (s->qh + 1) % QMAX;
	s->qn--;
	if (h->seq != p->seq)
		die("reply seq %u, want %u", h->seq, p->seq);
	uint16_t want = PROTO_REPLY;
	if (p->kind == PEND_REQUEST && p->type == PROTO_STATS)
		want = PROTO_STATS_REPLY;
	else if (p->kind == PEND_REQUEST && p->type == PROTO_USAGE)
		want = PROTO_USAGE_REPLY;
	/* REPORT's records after HELLO; EINVAL for a max out of range, and
	 * EPROTO before HELLO (REPLYs). */
	else if (p->kind == PEND_REQUEST && p->type == PROTO_REPORT && s->hello_ok &&
		 p->u.report.max >= 1 && p->u.report.max <= PROTO_REPORT_RECS)
		want = PROTO_REPORT_REPLY;
	if (h->type != want)
		die("%s answered with %s",
		    p->kind == PEND_REQUEST ? proto_type_name(p->type) : "a refusal or bad message",
		    proto_type_name(h->type));
	if (h->type == PROTO_REPORT_REPLY) {
		const struct proto_report_reply *rr = (const void *)(h + 1);
		if (rr->status || rr->count > p->u.report.max)
			die("REPORT_REPLY status %d count %u for max %u", rr->status, rr->count,
			    p->u.report.max);
		return;
	}
	if (h->type == PROTO_STATS_REPLY) {
		const struct proto_stats_reply *sr = (const void *)(h + 1);
		if (sr->status || sr->count != PROTO_STAT_COUNT)
			die("STATS_REPLY status %d count %u", sr->status, sr->count);
		for (unsigned i = PROTO_STAT_COUNT; i < PROTO_STATS_MAX; i++)
			if (sr->counters[i])
				die("STATS_REPLY: counter %u past the count", i);
		return;
	}
	if (h->type == PROTO_USAGE_REPLY) {
		check_usage(p, (const void *)(h + 1));
		return;
	}
	const struct proto_reply *r = (const void *)(h + 1);
	if (r->value && !(p->kind == PEND_REQUEST && p->type == PROTO_HELLO))
		die("reply value %#llx", (unsigned long long)r->value);
	switch (p->kind) {
	case PEND_REFUSAL:
		if (r->status != -EMFILE && r->status != -ENOMEM)
			die("connection refused with %d", r->status);
		s->must_close = 1;
		break;
	case PEND_INVALID:
		if (r->status != p->want)
			die("malformed message: status %d, want %d", r->status, p->want);
		s->must_close = 1;
		break;
	case PEND_REQUEST:
		check_request(s, p, r);
		break;
	}
}

static void on_eof(struct slot *s)
{
	/* After a reply that announced the close (a refused HELLO, say: a
	 * descriptor budget can be held for a moment by descriptors still
	 * closing on a worker), what was sent behind it is never read. */
	if (s->qn && !s->lenient && !s->must_close)
		die("closed with %u request(s) unanswered", s->qn);
	s->eof = 1;
	s->qn = 0;
	s->nr = 0; /* the worker drops the ranges with the uffd */
}

static void read_queued(struct slot *s)
{
	_Alignas(8) uint8_t buf[PROTO_MAX_MSG];
	int fd, nfds, trunc;

	while (s->fd >= 0 && !s->eof) {
		long n = proto_recv(s->fd, buf, &fd, &nfds, &trunc, MSG_DONTWAIT);
		if (n == -EAGAIN)
			break;
		/* The daemon hung up with our packets unread: reported once,
		 * before the replies still queued. */
		if (n == -ECONNRESET)
			continue;
		if (n == 0) {
			on_eof(s);
			break;
		}
		if (n < 0)
			die("recv: %s", strerror((int)-n));
		if (fd >= 0 || nfds || trunc)
			die("a reply with a descriptor or truncated (nfds %d trunc %d)", nfds,
			    trunc);
		check_reply(s, buf, n);
	}
}

/* The daemon closes a connection's socket on its uid's worker, not on the
 * main loop (descriptors still queued on it may be uffds, whose last close
 * can wait for their process's mmap_lock): after a reply that announced
 * the close, the hang-up comes when that thread gets to it. */
#define FZ_CLOSE_WAIT_MS 5000

static void read_replies(struct slot *s)
{
	struct pollfd p = { .fd = s->fd, .events = POLLIN };
	int waited = 0;

	read_queued(s);
	while (s->must_close && !s->eof && s->fd >= 0 && waited < FZ_CLOSE_WAIT_MS) {
		if (poll(&p, 1, 10) > 0)
			read_queued(s);
		waited += 10;
	}
	if (s->must_close && !s->eof)
		die("a reply announced the close, the connection stays open %d ms later",
		    FZ_CLOSE_WAIT_MS);
}

static void read_all(void)
{
	for (int i = 0; i < FZ_SLOTS; i++)
		read_replies(&slots[i]);
}

/* --- driving the daemon -------------------------------------------------------------- */

/* One iteration of the main loop. Past the first few, a short sleep in
 * between: a MAP or UNMAP is done on a worker's thread and answered
 * through the main loop's inbox, and address spaces are let go there too. */
static void turn(int i)
{
	static const struct timespec t = { 0, 20000 };

	ev_run(d.loop, EVRUN_NOWAIT);
	if (i >= 64)
		nanosleep(&t, NULL);
}

/* Run the loop until the daemon has read everything s sent (a request is
 * taken off the socket once it is answered). */
static void drive(struct slot *s)
{
	double end = now() + DEADLINE_S;

	for (int i = 0;; i++) {
		int out = 0;
		turn(i);
		if (ioctl(s->fd, SIOCOUTQ, &out) < 0)
			die("SIOCOUTQ: %s", strerror(errno));
		if (out == 0)
			return;
		if (now() > end)
			die("the daemon does not read a client (%d bytes waiting)", out);
	}
}

static void push(struct slot *s, struct pending p)
{
	if (s->qn == QMAX)
		die("pending queue full");
	s->q[(s->qh + s->qn++) % QMAX] = p;
}

static void slot_reset(struct slot *s)
{
	if (s->fd >= 0)
		close(s->fd);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

static void conn_open(struct slot *s)
{
	int sv[2], small = 1;

	slot_reset(s);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	/* The daemon's end gets the smallest send buffer, so that a client
	 * leaving a few replies unread reaches "not reading its replies". */
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	uint32_t n0 = d.nsessions;
	session_start(&d, sv[1]);
	s->fd = sv[0];
	if (d.nsessions == n0 + 1)
		s->sess = d.sessions;
	else
		push(s, (struct pending){ .kind = PEND_REFUSAL });
}

static void hang_up(struct slot *s)
{
	if (s->fd < 0)
		return;
	read_replies(s);
	struct session *sess = s->eof ? NULL : s->sess;
	slot_reset(s);
	double end = now() + DEADLINE_S;
	for (int i = 0; sess && session_alive(sess); i++) {
		if (now() > end)
			die("the daemon keeps a session whose client hung up");
		turn(i);
	}
}

static int take_fds(unsigned kind, int fds[2])
{
	int p[2];

	fds[0] = fds[1] = -1;
	switch (kind) {
	case FZ_FD_NONE:
		return 0;
	case FZ_FD_UFFD:
		fds[0] = helper_uffd(FZ_HELPER_UFFD_PLAIN);
		return 1;
	case FZ_FD_UFFD_UMO:
		fds[0] = helper_uffd(FZ_HELPER_UFFD_UMO);
		return 1;
	case FZ_FD_UFFD_CONFIGURED:
		fds[0] = helper_uffd(FZ_HELPER_UFFD_CONFIGURED);
		return 1;
	case FZ_FD_PIPE: {
		struct stat st;
		if (pipe2(p, O_CLOEXEC) < 0 || fstat(p[0], &st) < 0)
			die("pipe: %s", strerror(errno));
		if (npipes < MAX_PIPES)
			pipes_made[npipes++] = (unsigned long)st.st_ino;
		close(p[1]);
		fds[0] = p[0];
		return 1;
	}
	case FZ_FD_EVENTFD:
		fds[0] = eventfd(0, EFD_CLOEXEC);
		return 1;
	case FZ_FD_FILE:
		fds[0] = open("/etc/passwd", O_RDONLY | O_CLOEXEC);
		return 1;
	default:
		fds[0] = helper_uffd(FZ_HELPER_UFFD_PLAIN);
		fds[1] = eventfd(0, EFD_CLOEXEC);
		return 2;
	}
}

static int send_pkt(int sock, const uint8_t *pkt, size_t len, const int *fds, int nfds)
{
	struct iovec iov = { .iov_base = (void *)pkt, .iov_len = len };
	long r = proto_sendmsg_fds(sock, &iov, 1, fds, (unsigned)nfds, MSG_DONTWAIT);

	return r < 0 ? (int)r : 0;
}

/* What the daemon must make of pkt, as a pending reply. */
static struct pending expect(const uint8_t *pkt, size_t len, int nfds)
{
	struct pending p = { .kind = PEND_REQUEST, .content = -1 };
	const struct proto_hdr *h;
	struct proto_hdr hh;

	if (len >= sizeof(hh)) {
		memcpy(&hh, pkt, sizeof(hh));
		p.seq = hh.seq;
	}
	enum proto_err e = len > PROTO_MAX_MSG ? PROTO_ETRUNC : proto_check(pkt, len, nfds, 1, &h);
	if (e != PROTO_OK) {
		p.kind = PEND_INVALID;
		p.want = e == PROTO_EVERSION ? -EPROTO : -EBADMSG;
		return p;
	}
	p.type = h->type;
	const uint8_t *body = pkt + sizeof(*h);
	switch (h->type) {
	case PROTO_TEMPLATE_FILL: {
		static uint8_t page[PAGE];
		memset(page, body[0], PAGE);
		p.content = content_index(page);
		break;
	}
	case PROTO_TEMPLATE_CREATE:
		p.content = content_index(body);
		break;
	case PROTO_TEMPLATE_RELEASE:
		memcpy(&p.u.rel, body, sizeof(p.u.rel));
		break;
	case PROTO_MAP:
		memcpy(&p.u.map, body, sizeof(p.u.map));
		break;
	case PROTO_UNMAP:
		memcpy(&p.u.unmap, body, sizeof(p.u.unmap));
		break;
	case PROTO_REPORT:
		memcpy(&p.u.report, body, sizeof(p.u.report));
		break;
	case PROTO_USAGE:
		memcpy(&p.u.usage, body, sizeof(p.u.usage));
		break;
	default:
		break;
	}
	return p;
}

static void step_packet(uint8_t op, const uint8_t *data, size_t len)
{
	struct slot *s = &slots[FZ_OP_SLOT(op)];
	_Alignas(8) static uint8_t pkt[UINT16_MAX + 1];
	int fds[2];

	memcpy(pkt, data, len);
	if (len >= sizeof(struct proto_hdr)) {
		struct proto_hdr h;
		memcpy(&h, pkt, sizeof(h));
		if (op & FZ_OP_FIXLEN)
			h.len = (uint32_t)(len - sizeof(h));
		if (op & FZ_OP_FIXHDR) {
			h.version = PROTO_VERSION;
			h.flags = 0;
		}
		memcpy(pkt, &h, sizeof(h));
	}
	if (s->fd < 0 || s->eof || s->must_close) {
		read_replies(s);
		conn_open(s);
	}
	if (s->qn > QMAX - 8)
		read_replies(s);
	int nfds = take_fds(FZ_OP_FD(op), fds);
	struct pending p = expect(pkt, len, nfds);
	int r = send_pkt(s->fd, pkt, len, fds, nfds);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (r == 0 && len == 0) {
		/* recvmsg() reads an empty SEQPACKET record as end of file: the
		 * daemon takes it for a hang-up, without a reply, and closes
		 * (on a worker: step_touch waits for that). */
		s->lenient = 1;
		drive(s);
	} else if (r == 0) {
		push(s, p);
		drive(s);
	} else if (r != -EPIPE && r != -ECONNRESET) {
		die("send %zu bytes: %s", len, strerror(-r));
	}
	if (op & FZ_OP_NOREAD)
		s->lenient = 1;
	else
		read_replies(s);
}

/* --- the uffd owner's view ------------------------------------------------------------ */

static unsigned live_mms(void)
{
	unsigned n = 0;

	for (int i = 0; i < FZ_SLOTS; i++)
		n += slots[i].fd >= 0 && !slots[i].eof && slots[i].hello_ok;
	return n;
}

/* A closed session's address space is let go on its worker's thread (and
 * one let go for a budget tells its session through the main loop). */
static void wait_processes(uint64_t want)
{
	double end = now() + DEADLINE_S;

	for (int i = 0; stat_get(PROTO_STAT_PROCESSES) != want; i++) {
		if (now() > end)
			die("%llu processes served, want %llu",
			    (unsigned long long)stat_get(PROTO_STAT_PROCESSES),
			    (unsigned long long)want);
		turn(i);
	}
}

static void workers_settle(void);

static const struct mrange *covering(uint64_t a)
{
	for (int k = 0; k < FZ_SLOTS; k++)
		for (unsigned i = 0; i < slots[k].nr; i++)
			if (a >= slots[k].r[i].start && a < slots[k].r[i].end)
				return &slots[k].r[i];
	return NULL;
}

static void step_touch(uint8_t arg)
{
	static uint8_t got[PAGE];
	uint32_t page = arg % FZ_ARENA_PAGES;
	struct arena_page *ap = &pages[page];

	if (page >= FZ_HOLE && page < FZ_HOLE + FZ_HOLE_PAGES)
		return;
	/* Connections the daemon closed are closed by now (on workers), so
	 * that every end of file is read before the model is asked. */
	workers_settle();
	read_all();
	wait_processes(live_mms());
	helper_touch(page, got);
	int c = content_index(got);
	if (c < 0 || ap->unknown)
		return;
	if (ap->seen) {
		if (c != ap->content)
			die("arena page %u changed from contents %d to %d", page, ap->content, c);
		return;
	}
	/* Filled by fault-around of any range that covered it, else served
	 * from the range covering it now, else the kernel's zeros. */
	uint64_t ok = ap->maybe;
	if (!covering(FZ_ARENA + (uint64_t)page * PAGE))
		ok |= 1ull << 0;
	if (!(ok & (1ull << c)))
		die("arena page %u reads contents %d (first byte %#x); possible set %#llx", page, c,
		    got[0], (unsigned long long)ok);
	ap->seen = 1;
	ap->content = c;
}

static void step_action(uint8_t op, const uint8_t *data, size_t len)
{
	uint8_t arg = len ? data[0] : 0;
	struct slot *s = &slots[arg % FZ_SLOTS];

	switch (FZ_OP_FD(op)) {
	case FZ_ACT_HANGUP:
		hang_up(s);
		break;
	case FZ_ACT_TOUCH:
		step_touch(arg);
		break;
	case FZ_ACT_HELLO_TIMEOUT:
		/* As if the timer expired: only an armed one can. */
		read_replies(s);
		if (s->fd >= 0 && !s->eof && session_alive(s->sess) &&
		    ev_is_active(&s->sess->hello_timer)) {
			ev_feed_event(d.loop, &s->sess->hello_timer, EV_TIMER);
			ev_run(d.loop, EVRUN_NOWAIT);
			if (session_alive(s->sess))
				die("the handshake timeout left the session open");
			s->lenient = 1;
		}
		break;
	case FZ_ACT_READ:
		read_all();
		break;
	case FZ_ACT_CONNECT:
		read_replies(s);
		if (s->fd < 0 || s->eof || s->must_close)
			conn_open(s);
		break;
	default:
		break;
	}
}

/* --- one input ----------------------------------------------------------------------- */

/* Every worker has run what was posted to it before (its inbox is in
 * order): closes of refused HELLOs' uffds (workers_close_fd), releases. */
struct barrier {
	struct loop_call call;
	atomic_int done;
};

static void barrier_run(void *arg)
{
	atomic_store(&((struct barrier *)arg)->done, 1);
}

static void workers_settle(void)
{
	struct barrier b[NWORKERS];
	double end = now() + DEADLINE_S;

	for (unsigned w = 0; w < d.workers.n; w++) {
		b[w].call = (struct loop_call){ .fn = barrier_run, .arg = &b[w] };
		atomic_init(&b[w].done, 0);
		inbox_post(&d.workers.v[w].in, &b[w].call);
	}
	for (unsigned w = 0; w < d.workers.n; w++)
		for (int i = 0; !atomic_load(&b[w].done); i++) {
			if (now() > end)
				die("worker %u does not run its inbox", w + 1);
			turn(i);
		}
}

static void check_account(const struct acct *a, void *arg)
{
	static const enum proto_stat gauges[] = { PROTO_STAT_CLIENTS, PROTO_STAT_PROCESSES,
						  PROTO_STAT_RANGES, PROTO_STAT_BYTES,
						  PROTO_STAT_TEMPLATES };
	unsigned refs = atomic_load(&a->refs);

	(void)arg;
	/* USAGE's view of the account: every budget back to nothing. */
	for (int r = 0; r < ACCT_RES_COUNT; r++)
		if (atomic_load(&a->used[r]))
			die("at rest, uid %d still charged %llu %s", (int)a->uid,
			    (unsigned long long)atomic_load(&a->used[r]), acct_res_name(r));
	for (size_t i = 0; i < sizeof(gauges) / sizeof(gauges[0]); i++)
		if (atomic_load(&a->stat[gauges[i]]))
			die("at rest, uid %d's STATS %s = %llu", (int)a->uid,
			    proto_stat_name(gauges[i]),
			    (unsigned long long)atomic_load(&a->stat[gauges[i]]));
	/* Placement: none of its address spaces left on any worker. */
	for (unsigned w = 0; w <= d.workers.n; w++)
		if (a->placed[w])
			die("at rest, uid %d still placed %u times on loop %u", (int)a->uid,
			    a->placed[w], w);
	/* Sessions, address spaces, trees, templates and range nodes each
	 * hold the account: only the harness's reference is left. */
	if (refs != (a == me ? 1u : 0u))
		die("at rest, uid %d's account has %u references", (int)a->uid, refs);
}

static void check_rest(void)
{
	if (d.nsessions || d.sessions)
		die("%u sessions left", d.nsessions);
	wait_processes(0);
	workers_settle();
	static const enum proto_stat zero[] = { PROTO_STAT_CLIENTS, PROTO_STAT_RANGES,
						PROTO_STAT_BYTES, PROTO_STAT_TEMPLATES };
	for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
		if (stat_get(zero[i]))
			die("at rest, STATS %s = %llu", proto_stat_name(zero[i]),
			    (unsigned long long)stat_get(zero[i]));
	if (tmpl_count(&d.tmpls))
		die("at rest, %zu templates left in the store", tmpl_count(&d.tmpls));
	for (unsigned w = 0; w < d.workers.n; w++)
		if (atomic_load(&d.workers.v[w].nmms) || atomic_load(&d.workers.v[w].nuids) ||
		    d.workers.v[w].mms)
			die("at rest, worker %u serves %u address spaces of %u uids", w + 1,
			    atomic_load(&d.workers.v[w].nmms), atomic_load(&d.workers.v[w].nuids));
	acct_foreach(check_account, NULL);
	for (int r = 0; r < ACCT_RES_COUNT; r++)
		if (acct_pool_used(r))
			die("at rest, the daemon-wide pool of %s is at %llu", acct_res_name(r),
			    (unsigned long long)acct_pool_used(r));
}

static void check_fds(void)
{
	int n = count_fds();

	if (fds_baseline < 0) {
		fds_baseline = n;
		return;
	}
	if (n > fds_baseline) {
		print_fds();
		die("%d descriptors open after input %lu, %d after the first", n, inputs,
		    fds_baseline);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t i = 0;

	ncontents = 0;
	static const uint8_t zeros[PAGE];
	content_index(zeros);
	memset(pages, 0, sizeof(pages));
	while (i < size) {
		uint8_t op = data[i++];
		size_t len = 0;
		if (i + 2 <= size) {
			len = (size_t)data[i] | (size_t)data[i + 1] << 8;
			i += 2;
		} else {
			i = size;
		}
		if (len > size - i)
			len = size - i;
		if ((op & FZ_OP_ACTION) == FZ_OP_ACTION)
			step_action(op, data + i, len);
		else
			step_packet(op, data + i, len);
		i += len;
	}
	for (int k = 0; k < FZ_SLOTS; k++)
		hang_up(&slots[k]);
	check_rest();
	helper_reset();
	inputs++;
	check_fds();
	check_pipes();
	return 0;
}
