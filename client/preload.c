/* librefpage-preload.so: pattern-initialised large allocations for
 * unmodified programs (LD_PRELOAD, set up by refpage-run).
 *
 * Requests of at least the threshold (REFPAGE_RUN_THRESHOLD, 128 KiB) get
 * a mapping of their own, whose untouched pages read as the pattern
 * (REFPAGE_RUN_PATTERN, 0xAA):
 *   refpage  a refpage mapping (librefpage, linked in statically): served
 *            by refpaged through a userfaultfd where the process can make
 *            a full one, else by the kernel from a template file of the
 *            process (the file backend, no daemon needed); memset only
 *            when neither can be had;
 *   memset   an anonymous mapping filled with the pattern at once, which is
 *            what pattern-initialising allocators do today;
 *   anon     an anonymous mapping left alone (zeros): the baseline.
 * Large calloc always gets a plain anonymous mapping: zeros, untouched.
 * Smaller requests, and pointers that are not ours, go to the next
 * allocator (libc's), found with dlsym(RTLD_NEXT).
 *
 * Our blocks are page aligned and recorded in a side table (address ->
 * length and kind), so no header page is written and free() of a foreign
 * pointer never reads memory around it. The table is guarded by one mutex,
 * held for a few dozen instructions and re-made in a fork child; the
 * daemon connection is librefpage's, which rebinds itself after fork.
 *
 * Nothing here calls malloc. dlsym may (calloc for dlerror state): while
 * the next allocator is being looked up, requests are served from a static
 * bootstrap buffer. A thread-local guard sends any request made from
 * inside the shim straight to the next allocator. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"
#include "refpage.h"
#include "runopt.h"

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define PAGE 4096u
#define likely(x) __builtin_expect(!!(x), 1)

static size_t page_round(size_t n)
{
	return (n + PAGE - 1) & ~(size_t)(PAGE - 1);
}

/* --- settings, from the environment refpage-run prepared --------------- */

struct shim_cfg {
	enum runopt_mode mode;
	uint8_t pattern;
	size_t threshold;
	int strict;    /* no refpages: exit(1) instead of falling back */
	int allow_umo; /* use refpages even with a user-mode-only uffd */
	enum runopt_backend backend;
	int stats;  /* a summary on stderr at exit */
	int report; /* --report: read-before-write pages, at exit */
	enum runopt_format format;
	const char *report_file; /* NULL: stderr */
};

static struct shim_cfg cfg = {
	.mode = RUNOPT_REFPAGE,
	.pattern = RUNOPT_DEFAULT_PATTERN,
	.threshold = RUNOPT_DEFAULT_THRESHOLD,
};

/* --- messages: write(2), no stdio (stdio allocates) -------------------- */

struct msg {
	char b[768];
	size_t n;
};

static void m_str(struct msg *m, const char *s)
{
	while (s && *s && m->n < sizeof(m->b) - 1)
		m->b[m->n++] = *s++;
}

static void m_num(struct msg *m, unsigned long long v)
{
	char d[24];
	int i = (int)sizeof(d);

	d[--i] = 0;
	do
		d[--i] = (char)('0' + v % 10);
	while ((v /= 10) && i > 0);
	m_str(m, d + i);
}

static void m_hex(struct msg *m, unsigned v)
{
	static const char x[] = "0123456789abcdef";
	char d[5] = { '0', 'x', x[(v >> 4) & 15], x[v & 15], 0 };

	m_str(m, d);
}

static void m_hex64(struct msg *m, uint64_t v)
{
	static const char x[] = "0123456789abcdef";
	char d[20];
	int i = (int)sizeof(d);

	d[--i] = 0;
	do
		d[--i] = x[v & 15];
	while ((v >>= 4) && i > 2);
	d[--i] = 'x';
	d[--i] = '0';
	m_str(m, d + i);
}

/* s as the inside of a JSON string. */
static void m_json(struct msg *m, const char *s)
{
	for (; s && *s && m->n < sizeof(m->b) - 8; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			m->b[m->n++] = '\\';
			m->b[m->n++] = (char)c;
		} else if (c < 0x20) {
			m_str(m, "\\u00");
			m->b[m->n++] = "0123456789abcdef"[c >> 4];
			m->b[m->n++] = "0123456789abcdef"[c & 15];
		} else {
			m->b[m->n++] = (char)c;
		}
	}
}

static void m_begin(struct msg *m)
{
	m->n = 0;
	m_str(m, "refpage-run[");
	m_num(m, (unsigned long long)getpid());
	m_str(m, "]: ");
}

static void m_emit_to(struct msg *m, int fd)
{
	m->b[m->n++] = '\n';
	for (size_t off = 0; off < m->n;) {
		ssize_t w = write(fd, m->b + off, m->n - off);
		if (w <= 0 && errno != EINTR)
			return;
		off += w > 0 ? (size_t)w : 0;
	}
}

static void m_emit(struct msg *m)
{
	m_emit_to(m, STDERR_FILENO);
}

static void say2(const char *a, const char *b)
{
	struct msg m;

	m_begin(&m);
	m_str(&m, a);
	m_str(&m, b);
	m_emit(&m);
}

static void load_cfg(void)
{
	const char *v;

	if ((v = getenv(RUNOPT_ENV_MODE)) && runopt_mode(v, &cfg.mode) < 0)
		say2("ignoring bad " RUNOPT_ENV_MODE " (want refpage, memset or anon): ", v);
	if ((v = getenv(RUNOPT_ENV_PATTERN)) && runopt_pattern(v, &cfg.pattern) < 0)
		say2("ignoring bad " RUNOPT_ENV_PATTERN " (want 0..255), using 0xaa: ", v);
	if ((v = getenv(RUNOPT_ENV_THRESHOLD)) && runopt_threshold(v, &cfg.threshold) < 0)
		say2("ignoring bad " RUNOPT_ENV_THRESHOLD " (want 1 byte..1 TiB), using 131072: ",
		     v);
	if ((v = getenv(RUNOPT_ENV_STRICT)) && runopt_bool(v, &cfg.strict) < 0)
		say2("ignoring bad " RUNOPT_ENV_STRICT " (want 0 or 1): ", v);
	if ((v = getenv(RUNOPT_ENV_ALLOW_UMO)) && runopt_bool(v, &cfg.allow_umo) < 0)
		say2("ignoring bad " RUNOPT_ENV_ALLOW_UMO " (want 0 or 1): ", v);
	if ((v = getenv(RUNOPT_ENV_BACKEND)) && runopt_backend(v, &cfg.backend) < 0)
		say2("ignoring bad " RUNOPT_ENV_BACKEND " (want auto, uffd or file): ", v);
	/* Allowing a user-mode-only uffd asks for the uffd backend, unless
	 * the file backend is named (refpage-run refuses the two together). */
	if (cfg.allow_umo && !(v && !strcmp(v, "file")))
		cfg.backend = RUNOPT_BACKEND_UFFD;
	if ((v = getenv(RUNOPT_ENV_STATS)) && runopt_bool(v, &cfg.stats) < 0)
		say2("ignoring bad " RUNOPT_ENV_STATS " (want 0 or 1): ", v);
	if ((v = getenv(RUNOPT_ENV_REPORT)) && runopt_bool(v, &cfg.report) < 0)
		say2("ignoring bad " RUNOPT_ENV_REPORT " (want 0 or 1): ", v);
	if ((v = getenv(RUNOPT_ENV_REPORT_FORMAT)) && runopt_format(v, &cfg.format) < 0)
		say2("ignoring bad " RUNOPT_ENV_REPORT_FORMAT " (want text or json): ", v);
	if ((v = getenv(RUNOPT_ENV_REPORT_FILE)) && *v)
		cfg.report_file = v;
}

/* --- the next allocator, and the bootstrap buffer ---------------------- */

static struct {
	void *(*malloc)(size_t);
	void (*free)(void *);
	void *(*calloc)(size_t, size_t);
	void *(*realloc)(void *, size_t);
	int (*posix_memalign)(void **, size_t, size_t);
	void *(*aligned_alloc)(size_t, size_t);
	void *(*memalign)(size_t, size_t);
	void *(*valloc)(size_t);
	void *(*pvalloc)(size_t);
	size_t (*malloc_usable_size)(void *);
} next;

/* Depth of shim code on this thread: a request made from inside (dlsym,
 * or anything librefpage might call one day) must not come back in. */
static TLS int in_shim;

/* dlsym's own allocations, before next.* exist. Never freed; a block
 * keeps its size just before it for realloc. */
#define BOOT_SIZE (64u << 10)
static _Alignas(PAGE) unsigned char boot_buf[BOOT_SIZE];
static atomic_size_t boot_used;

static int is_boot(const void *p)
{
	return (const unsigned char *)p >= boot_buf &&
	       (const unsigned char *)p < boot_buf + BOOT_SIZE;
}

static void *boot_alloc(size_t n, size_t align)
{
	size_t old = atomic_load(&boot_used), start, end;

	if (align < 16)
		align = 16;
	do {
		start = (old + sizeof(size_t) + align - 1) & ~(align - 1);
		if (align > PAGE || n > BOOT_SIZE || start + n > BOOT_SIZE) {
			errno = ENOMEM;
			return NULL;
		}
		end = start + n;
	} while (!atomic_compare_exchange_weak(&boot_used, &old, end));
	memcpy(boot_buf + start - sizeof(size_t), &n, sizeof(n));
	return boot_buf + start;
}

static size_t boot_size(const void *p)
{
	size_t n;

	memcpy(&n, (const unsigned char *)p - sizeof(size_t), sizeof(n));
	return n;
}

static void die(const char *what)
{
	say2("cannot find libc's ", what);
	_exit(127);
}

#define RESOLVE(f)                                                 \
	do {                                                       \
		next.f = (__typeof__(next.f))dlsym(RTLD_NEXT, #f); \
	} while (0)

static void resolve(void)
{
	RESOLVE(malloc);
	RESOLVE(free);
	RESOLVE(calloc);
	RESOLVE(realloc);
	RESOLVE(posix_memalign);
	RESOLVE(aligned_alloc);
	RESOLVE(memalign);
	RESOLVE(valloc);
	RESOLVE(pvalloc);
	RESOLVE(malloc_usable_size);
	if (!next.malloc || !next.free || !next.calloc || !next.realloc)
		die("malloc, free, calloc or realloc");
	if (!next.posix_memalign || !next.malloc_usable_size)
		die("posix_memalign or malloc_usable_size");
}

/* 0: not started, 1: one thread resolving, 2: ready. */
static atomic_int init_state;

static int init_slow(void)
{
	int expect = 0;

	if (in_shim)
		return 0; /* dlsym calling back: the bootstrap buffer */
	if (atomic_compare_exchange_strong(&init_state, &expect, 1)) {
		in_shim++;
		resolve();
		load_cfg();
		in_shim--;
		atomic_store_explicit(&init_state, 2, memory_order_release);
		return 1;
	}
	while (atomic_load_explicit(&init_state, memory_order_acquire) != 2)
		sched_yield();
	return 1;
}

/* 1 once next.* and cfg may be used. */
static inline int ready(void)
{
	if (likely(atomic_load_explicit(&init_state, memory_order_acquire) == 2))
		return 1;
	return init_slow();
}

/* --- the block table --------------------------------------------------- */

enum blk_kind { BLK_REFPAGE = 1, BLK_MEMSET = 2, BLK_ANON = 3 };

struct blk {
	uintptr_t addr; /* 0: free slot */
	uintptr_t len;  /* mapped, a page multiple; the kind in the low bits */
	size_t req;     /* the size asked for: what realloc must carry over */
};

static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk *tab;
static unsigned tab_bits;
static size_t tab_used;
/* Bounds of every address we ever handed out: most foreign frees stop
 * here without the lock. */
static atomic_uintptr_t tab_lo = UINTPTR_MAX, tab_hi;

static size_t slot_of(uintptr_t a, unsigned bits)
{
	return (size_t)(((a >> 12) * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static void tab_place(struct blk *t, unsigned bits, struct blk b)
{
	size_t mask = ((size_t)1 << bits) - 1, i = slot_of(b.addr, bits);

	while (t[i].addr)
		i = (i + 1) & mask;
	t[i] = b;
}

/* Double the table (or make the first one). -1 if mmap fails. */
static int tab_grow(void)
{
	unsigned bits = tab ? tab_bits + 1 : 8;
	size_t cap = (size_t)1 << bits, old = tab ? (size_t)1 << tab_bits : 0;
	struct blk *t = mmap(NULL, cap * sizeof(*t), PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (t == MAP_FAILED)
		return -1;
	for (size_t i = 0; i < old; i++)
		if (tab[i].addr)
			tab_place(t, bits, tab[i]);
	if (tab)
		munmap(tab, old * sizeof(*tab));
	tab = t;
	tab_bits = bits;
	return 0;
}

/* Record a block. Grows at half full; past that only a failed grow at
 * three quarters full refuses (-1). */
static int tab_put(void *p, size_t len, enum blk_kind kind, size_t req)
{
	uintptr_t a = (uintptr_t)p;
	int r = 0;

	pthread_mutex_lock(&tab_lock);
	size_t cap = tab ? (size_t)1 << tab_bits : 0;
	if ((tab_used + 1) * 2 > cap && tab_grow() < 0 && (tab_used + 1) * 4 > cap * 3)
		r = -1;
	if (r == 0) {
		tab_place(tab, tab_bits, (struct blk){ a, len | kind, req });
		tab_used++;
		if (a < atomic_load_explicit(&tab_lo, memory_order_relaxed))
			atomic_store_explicit(&tab_lo, a, memory_order_relaxed);
		if (a + len > atomic_load_explicit(&tab_hi, memory_order_relaxed))
			atomic_store_explicit(&tab_hi, a + len, memory_order_relaxed);
	}
	pthread_mutex_unlock(&tab_lock);
	return r;
}

/* Linear probing with backward-shift deletion: no tombstones. */
static void tab_delete(size_t i)
{
	size_t mask = ((size_t)1 << tab_bits) - 1, j = i;

	for (;;) {
		j = (j + 1) & mask;
		if (!tab[j].addr)
			break;
		size_t k = slot_of(tab[j].addr, tab_bits);
		/* The entry at j may move to the hole at i unless its home
		 * slot k lies cyclically in (i, j]. */
		if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
			tab[i] = tab[j];
			i = j;
		}
	}
	tab[i].addr = 0;
	tab_used--;
}

static inline int maybe_ours(const void *p)
{
	uintptr_t a = (uintptr_t)p;

	return !(a & (PAGE - 1)) && a >= atomic_load_explicit(&tab_lo, memory_order_relaxed) &&
	       a < atomic_load_explicit(&tab_hi, memory_order_relaxed);
}

/* Look p up; with take, also remove it. 1 if found (*out filled). */
static int tab_find(const void *p, struct blk *out, int take)
{
	uintptr_t a = (uintptr_t)p;
	int found = 0;

	if (!maybe_ours(p))
		return 0;
	pthread_mutex_lock(&tab_lock);
	if (tab) {
		size_t mask = ((size_t)1 << tab_bits) - 1;
		for (size_t i = slot_of(a, tab_bits); tab[i].addr; i = (i + 1) & mask) {
			if (tab[i].addr == a) {
				*out = tab[i];
				found = 1;
				if (take)
					tab_delete(i);
				break;
			}
		}
	}
	pthread_mutex_unlock(&tab_lock);
	return found;
}

static size_t blk_len(struct blk b)
{
	return b.len & ~(uintptr_t)(PAGE - 1);
}

static enum blk_kind blk_kind(struct blk b)
{
	return (enum blk_kind)(b.len & (PAGE - 1));
}

/* --- counters for --stats ---------------------------------------------- */

static atomic_ulong n_blocks[4]; /* by kind */
static atomic_ulong n_fallbacks; /* refpage wanted, memset given */
static atomic_ulong n_remaps;
/* Live refpage blocks, and on the file backend the most allowed: each is a
 * VMA of its own there (never merged), so past half vm.max_map_count new
 * blocks use memset and the program keeps room for its own mappings. */
static atomic_ulong n_live_refpage;
static unsigned long file_blocks_max;
static atomic_flag said_vma_cap = ATOMIC_FLAG_INIT;

/* --- the refpage backend ----------------------------------------------- */

enum { RP_NONE, RP_CONNECTING, RP_READY, RP_OFF };
static atomic_int rp_state;
static rp_client *rp_cl;
static uint32_t rp_tmpl;
static atomic_flag said_fallback = ATOMIC_FLAG_INIT;
static atomic_flag said_map_error = ATOMIC_FLAG_INIT;
/* Report mode asked for and the connection made in it. */
static int rp_reporting;
static int rp_report_err; /* why not, an errno for the report */
/* Report mode on the file backend: counts from /proc/self/pagemap. */
static int fb_on;
static int fb_open(void);

static const char *sock_path(void)
{
	const char *p = getenv(RUNOPT_ENV_SOCKET);

	return p && *p ? p : PROTO_DEFAULT_SOCKET;
}

/* No refpages for this request: say why (once per process), or end the
 * program under --strict. */
static void no_refpage(atomic_flag *once, const char *why, const char *detail, int err)
{
	struct msg m;

	if (!cfg.strict && atomic_flag_test_and_set(once))
		return;
	m_begin(&m);
	m_str(&m, why);
	m_str(&m, detail);
	if (err) {
		m_str(&m, ": ");
		m_str(&m, strerrordesc_np(err));
	}
	if (cfg.strict) {
		m_str(&m, "; --strict: exiting with status 1");
		m_emit(&m);
		_exit(1);
	}
	m_str(&m, "; large allocations fall back to memset of ");
	m_hex(&m, cfg.pattern);
	m_emit(&m);
}

/* vm.max_map_count (read without stdio), or the kernel's default. */
static unsigned long max_map_count(void)
{
	char b[32];
	unsigned long v = 0;
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, b, sizeof(b) - 1) : -1;

	if (fd >= 0)
		close(fd);
	for (ssize_t i = 0; i < n && b[i] >= '0' && b[i] <= '9'; i++)
		v = v * 10 + (unsigned long)(b[i] - '0');
	return v ? v : 65530;
}

static int rp_bring_up(void)
{
	unsigned flags = cfg.backend == RUNOPT_BACKEND_UFFD ? RP_CONNECT_UFFD : RP_CONNECT_FILE;
	rp_client *c;
	uint32_t id;
	int r;

	if (cfg.report && cfg.backend == RUNOPT_BACKEND_UFFD) {
		r = rp_connect_opts(NULL, flags | RP_CONNECT_REPORT, &c);
		rp_reporting = r == 0;
		if (r == -EOPNOTSUPP) {
			rp_report_err = EOPNOTSUPP;
			r = rp_connect_opts(NULL, flags, &c);
		}
	} else {
		r = rp_connect_opts(NULL, flags, &c);
	}
	if (r < 0) {
		no_refpage(&said_fallback, "cannot reach refpaged at ", sock_path(), -r);
		return 0;
	}
	if ((r = rp_template_fill(c, cfg.pattern, &id)) < 0) {
		rp_disconnect(c);
		no_refpage(&said_fallback, "refpaged refused the template at ", sock_path(), -r);
		return 0;
	}
	rp_cl = c;
	rp_tmpl = id;
	if (rp_backend(c) == RP_BACKEND_FILE) {
		file_blocks_max = max_map_count() / 2;
		/* The kernel serves the faults: count from pagemap, with
		 * fault-around off (an unavailable report if it cannot be). */
		if (cfg.report)
			rp_reporting = fb_on = fb_open() == 0;
	}
	return 1;
}

/* 1 once refpage mappings can be asked for. One thread connects, the
 * others wait for its verdict, which holds for the process's life. */
static int rp_ready(void)
{
	int s = atomic_load_explicit(&rp_state, memory_order_acquire), expect = RP_NONE;

	if (likely(s == RP_READY))
		return 1;
	if (s == RP_NONE && atomic_compare_exchange_strong(&rp_state, &expect, RP_CONNECTING)) {
		s = rp_bring_up() ? RP_READY : RP_OFF;
		atomic_store_explicit(&rp_state, s, memory_order_release);
		return s == RP_READY;
	}
	while ((s = atomic_load_explicit(&rp_state, memory_order_acquire)) == RP_CONNECTING)
		sched_yield();
	return s == RP_READY;
}

/* --- report mode: what each watched block was, and what was read -------- *
 *
 * The daemon names a read-before-write page by address and time only; an
 * address is reused once its block is gone. So every refpage block gets an
 * entry here when it is made (and when realloc makes it anew) with the time,
 * closed with the time it goes; a record belongs to the entry whose address
 * range holds it and whose life holds its time (CLOCK_MONOTONIC on both
 * sides: the daemon stamps a read before it answers it, so after the block
 * was made and before the program could free it). Guarded by tab_lock. Every
 * HIST_COLLECT entries the records are taken and the entries of blocks gone
 * with nothing read are dropped, so the history stays small. */

struct hist {
	uintptr_t addr, len; /* mapped */
	size_t req;          /* asked for */
	uintptr_t site;      /* return address into the caller of the allocator */
	uint64_t t0, t1;     /* made, gone (0: live) */
	uint64_t first;      /* offset of the first page read before written */
	uint32_t pages;      /* pages read before written */
	int32_t tid;         /* the thread of the first such read; -1: unknown (file backend) */
	const char *fn;      /* the allocator function called */
};

#define HIST_COLLECT 4096u
static struct hist *hist;
static size_t hist_n, hist_cap, hist_mark;
static uint64_t rep_unmatched, rep_dropped;
static atomic_flag collecting = ATOMIC_FLAG_INIT;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Blocks left out because the history could not grow (said in the report). */
static uint64_t rep_unwatched;

/* Under tab_lock. */
static void hist_open(uintptr_t a, size_t len, size_t req, uintptr_t site, const char *fn,
		      uint64_t t0)
{
	if (hist_n == hist_cap) {
		size_t cap = hist_cap ? hist_cap * 2 : 256;
		void *h = hist ? mremap(hist, hist_cap * sizeof(*hist), cap * sizeof(*hist),
					MREMAP_MAYMOVE)
			       : mmap(NULL, cap * sizeof(*hist), PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (h == MAP_FAILED) {
			rep_unwatched++;
			return;
		}
		hist = h;
		hist_cap = cap;
	}
	hist[hist_n++] = (struct hist){
		.addr = a, .len = len, .req = req, .site = site, .t0 = t0, .fn = fn
	};
}

/* Under tab_lock: the live entry of the block at a ends at t1. */
static void hist_close(uintptr_t a, uint64_t t1)
{
	for (size_t i = hist_n; i-- > 0;)
		if (hist[i].addr == a && !hist[i].t1) {
			hist[i].t1 = t1;
			return;
		}
}

/* The entry hist_close(a, t1) closed, live again (a realloc that failed
 * and left the block where it was). */
static void hist_reopen(uintptr_t a, uint64_t t1)
{
	for (size_t i = hist_n; i-- > 0;)
		if (hist[i].addr == a && hist[i].t1 == t1) {
			hist[i].t1 = 0;
			return;
		}
}

/* Under tab_lock: the entry record r belongs to. */
static void hist_resolve(const struct rp_report_rec *r)
{
	uintptr_t a = (uintptr_t)r->addr;

	for (size_t i = hist_n; i-- > 0;) {
		struct hist *h = &hist[i];
		if (a < h->addr || a - h->addr >= h->len || r->ns < h->t0 ||
		    (h->t1 && r->ns >= h->t1))
			continue;
		if (!h->pages++) {
			h->first = a - h->addr;
			h->tid = r->tid;
		}
		return;
	}
	rep_unmatched++;
}

/* Take this process's records from the daemon and count them into the
 * history; then (unless final) drop the entries of blocks gone before the
 * first take with nothing read: every read of theirs was queued before
 * they went, so it was in this take. One thread at a time; called without
 * tab_lock (a round trip to the daemon). */
static void report_collect(int final)
{
	struct rp_report_rec recs[64];
	uint64_t dropped = 0, start = now_ns();
	int n;

	if (atomic_flag_test_and_set(&collecting))
		return;
	/* The file backend: no records; the counts are made as blocks go. */
	while (!fb_on && (n = rp_report_read(rp_cl, recs, 64, &dropped)) > 0) {
		pthread_mutex_lock(&tab_lock);
		for (int i = 0; i < n; i++)
			hist_resolve(&recs[i]);
		pthread_mutex_unlock(&tab_lock);
	}
	pthread_mutex_lock(&tab_lock);
	if (dropped > rep_dropped)
		rep_dropped = dropped;
	if (!final) {
		size_t keep = 0;
		for (size_t i = 0; i < hist_n; i++)
			if (!hist[i].t1 || hist[i].t1 >= start || hist[i].pages)
				hist[keep++] = hist[i];
		hist_n = keep;
		hist_mark = keep;
	}
	pthread_mutex_unlock(&tab_lock);
	atomic_flag_clear(&collecting);
}

/* --- report mode on the file backend (docs/report.md) ------------------- *
 *
 * The kernel serves every fault of a file-backend block, unseen. What it
 * leaves behind says what was read: a page read and never written is
 * present and still the template file's (/proc/self/pagemap: present, and
 * file/shared set); a written page is anonymous; an untouched one is not
 * there. The kernel's fault-around would map up to 16 neighbours of each
 * page read, so every block is registered with a userfaultfd in
 * write-protect mode only, which turns fault-around off for its mappings
 * and nothing else (nothing is ever write-protected: no fault reaches the
 * uffd). mremap and fork drop that registration (no EVENT_REMAP or
 * EVENT_FORK asked for): a moved block and a fork child's blocks are
 * registered again. A block's pages are counted before it goes (free, a
 * shrink's tail, a realloc, the copy fallback) and, for live blocks, at
 * exit; before a realloc the counted pages are dropped (MADV_DONTNEED: they
 * hold only the template), so that they are not counted again in the block
 * the realloc makes. No thread and no time are known here. */

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#define FB_FD_MIN 100 /* away from the numbers programs expect open() to give */

static int fb_uffd = -1, fb_pm = -1; /* the WP-only uffd, /proc/self/pagemap */
static dev_t fb_uffd_dev, fb_pm_dev;
static ino_t fb_uffd_ino, fb_pm_ino;
/* 1 in the process that opened fb_uffd and fb_pm (set again by the fork
 * handler in a child); MADV_WIPEONFORK makes it 0 in a child made without
 * fork()'s handlers (_Fork, clone, a raw fork system call), whose
 * descriptors are still the parent's: its pagemap would describe the
 * parent's memory, and a zap made on its word could drop written pages. */
static volatile unsigned char *fb_token;
static const char *fb_what; /* the step that failed: the report is unavailable */
static int fb_err;
static atomic_flag fb_failed = ATOMIC_FLAG_INIT;

static int fb_high(int fd)
{
	int h = fd >= 0 && fd < FB_FD_MIN ? fcntl(fd, F_DUPFD_CLOEXEC, FB_FD_MIN) : -1;

	if (h < 0)
		return fd;
	close(fd);
	return h;
}

/* Said at exit instead of a report. The first failure is kept. */
static void fb_fail(const char *what, int err)
{
	if (!atomic_flag_test_and_set(&fb_failed)) {
		fb_err = err;
		fb_what = what;
	}
}

/* The uffd and the pagemap descriptor (again in a fork child: the old ones
 * are the parent's). No malloc: a fork child calls it. 0 or fb_fail. */
static int fb_open(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	struct stat st;
	int u, e;

	if (!fb_token) {
		void *t = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		if (t == MAP_FAILED || madvise(t, PAGE, MADV_WIPEONFORK) < 0) {
			e = errno;
			if (t != MAP_FAILED)
				munmap(t, PAGE);
			fb_fail("a page that tells fork children apart (MADV_WIPEONFORK)", e);
			return -1;
		}
		fb_token = t;
	}
	if ((fb_pm = fb_high(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC))) < 0 ||
	    fstat(fb_pm, &st) < 0) {
		fb_fail("/proc/self/pagemap", errno);
		return -1;
	}
	fb_pm_dev = st.st_dev;
	fb_pm_ino = st.st_ino;
	if ((u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)) < 0) {
		fb_fail("userfaultfd", errno);
		return -1;
	}
	if (ioctl(u, UFFDIO_API, &api) < 0 || fstat(u, &st) < 0) {
		e = errno;
		close(u);
		fb_fail("userfaultfd write-protect mode on shared memory (UFFDIO_API)", e);
		return -1;
	}
	fb_uffd = fb_high(u);
	fb_uffd_dev = st.st_dev;
	fb_uffd_ino = st.st_ino;
	*fb_token = 1;
	return 0;
}

static int fb_intact(void);

/* [a, a + len) registered (again: mremap and fork drop it), and kept from
 * huge pages: with shmem THP on (transparent_hugepage/shmem_enabled) a read
 * fault could map a 2 MiB folio of the template whole, before the check
 * that keeps a registered mapping to one page; MADV_NOHUGEPAGE on the
 * mapping stops that (EINVAL: a kernel without THP, nothing to stop). */
static void fb_register(uintptr_t a, size_t len)
{
	struct uffdio_register r = { .range = { a, len }, .mode = UFFDIO_REGISTER_MODE_WP };

	if (fb_uffd < 0 || !fb_intact())
		return;
	if (madvise((void *)a, len, MADV_NOHUGEPAGE) < 0 && errno != EINVAL)
		fb_fail("keeping a block from huge pages (MADV_NOHUGEPAGE)", errno);
	else if (ioctl(fb_uffd, UFFDIO_REGISTER, &r) < 0)
		fb_fail("registering a block with the userfaultfd (UFFDIO_REGISTER)", errno);
}

/* The uffd and pagemap descriptors still ours: a program that closes
 * every descriptor closes them too, and with the uffd goes the
 * registration (fault-around is back); another file under pagemap's number
 * would be read as page flags, and MADV_DONTNEED could then drop written
 * pages. */
static int fb_intact(void)
{
	struct stat st;

	if (!fb_token || !*fb_token) {
		fb_fail("this process was made without fork()'s handlers (_Fork, clone): the "
			"descriptors it has are its parent's",
			ECHILD);
		return 0;
	}
	if (fb_uffd < 0 || fstat(fb_uffd, &st) < 0 || st.st_dev != fb_uffd_dev ||
	    st.st_ino != fb_uffd_ino) {
		fb_fail("the program closed the userfaultfd that kept fault-around off", EBADF);
		return 0;
	}
	if (fb_pm < 0 || fstat(fb_pm, &st) < 0 || st.st_dev != fb_pm_dev ||
	    st.st_ino != fb_pm_ino) {
		fb_fail("the program closed the shim's /proc/self/pagemap descriptor", EBADF);
		return 0;
	}
	return 1;
}

/* The pages of [a, a + len) read and never written: counted into *n and
 * *first (the lowest offset from base), and with zap dropped. No malloc,
 * no lock: the caller owns the block. 0, or -1 (fb_fail) if pagemap
 * cannot be read. */
static int fb_scan(uintptr_t base, uintptr_t a, size_t len, int zap, uint32_t *n, uint64_t *first)
{
	uint64_t e[512];
	uintptr_t run = 0, run_end = 0;

	for (size_t off = 0; off < len;) {
		size_t k = (len - off) / PAGE < 512 ? (len - off) / PAGE : 512;
		ssize_t r = pread(fb_pm, e, k * sizeof(e[0]),
				  (off_t)((a + off) / PAGE * sizeof(e[0])));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < (ssize_t)sizeof(e[0])) {
			fb_fail("reading /proc/self/pagemap", r < 0 ? errno : EIO);
			return -1;
		}
		k = (size_t)r / sizeof(e[0]);
		for (size_t i = 0; i < k; i++) {
			uintptr_t p = a + off + i * PAGE;
			if (!((e[i] >> 63) & 1) || !((e[i] >> 61) & 1))
				continue; /* not there, or anonymous (written) */
			if (!(*n)++ || p - base < *first)
				*first = p - base;
			if (p != run_end) {
				if (zap && run_end)
					madvise((void *)run, run_end - run, MADV_DONTNEED);
				run = p;
			}
			run_end = p + PAGE;
		}
		off += k * PAGE;
	}
	if (zap && run_end)
		madvise((void *)run, run_end - run, MADV_DONTNEED);
	return 0;
}

/* Under tab_lock: the live entry of the block at a gets n more pages. */
static void hist_add(uintptr_t a, uint32_t n, uint64_t first)
{
	if (!n)
		return;
	for (size_t i = hist_n; i-- > 0;) {
		struct hist *h = &hist[i];
		if (h->addr == a && !h->t1) {
			if (!h->pages || first < h->first)
				h->first = first;
			h->pages += n;
			h->tid = -1;
			return;
		}
	}
}

/* Count [p + from, p + from + len) of the block at p into its entry,
 * with zap dropping the counted pages. Called without tab_lock. */
static void fb_count(void *p, size_t from, size_t len, int zap)
{
	uint32_t n = 0;
	uint64_t first = 0;

	if (!fb_on || !fb_intact())
		return;
	fb_scan((uintptr_t)p, (uintptr_t)p + from, len, zap, &n, &first);
	pthread_mutex_lock(&tab_lock);
	hist_add((uintptr_t)p, n, first);
	pthread_mutex_unlock(&tab_lock);
}

/* Each live refpage block's pages read and never written: at exit
 * (child 0) counted into its entry, not dropped (other threads may still
 * run); in a fork child (child 1: one thread, the table consistent)
 * dropped uncounted, since the kernel copied them with the page tables of
 * blocks with written pages and the reads are the parent's, and the block
 * registered again (the child's mappings are not). */
static void fb_scan_live(int child)
{
	for (size_t i = 0, cap = tab ? (size_t)1 << tab_bits : 0; i < cap; i++) {
		uint32_t n = 0;
		uint64_t first = 0;
		if (!tab[i].addr || blk_kind(tab[i]) != BLK_REFPAGE)
			continue;
		fb_scan(tab[i].addr, tab[i].addr, blk_len(tab[i]), child, &n, &first);
		if (child)
			fb_register(tab[i].addr, blk_len(tab[i]));
		else
			hist_add(tab[i].addr, n, first);
	}
}

static void fb_count_live(void)
{
	if (!fb_on || !fb_intact())
		return;
	pthread_mutex_lock(&tab_lock);
	fb_scan_live(0);
	pthread_mutex_unlock(&tab_lock);
}

/* A fork child: the parent's uffd and pagemap are not this process's:
 * both made anew, then the live blocks as fb_scan_live says. */
static void fb_fork_child(void)
{
	if (!fb_on)
		return;
	if (fb_pm >= 0)
		close(fb_pm);
	if (fb_uffd >= 0)
		close(fb_uffd);
	fb_pm = fb_uffd = -1;
	if (fb_open() == 0)
		fb_scan_live(1);
}

/* --- blocks ------------------------------------------------------------ */

static void *map_span(size_t len, enum blk_kind kind)
{
	void *p;

	if (kind == BLK_REFPAGE) {
		if (!rp_ready())
			return NULL;
		if (file_blocks_max && atomic_load(&n_live_refpage) >= file_blocks_max) {
			if (!atomic_flag_test_and_set(&said_vma_cap)) {
				struct msg m;
				m_begin(&m);
				m_num(&m, file_blocks_max);
				m_str(&m,
				      " refpage blocks live, each a mapping of its own on the file "
				      "backend (half of vm.max_map_count): further large blocks "
				      "use memset while that many are live");
				m_emit(&m);
			}
			return NULL;
		}
		p = rp_map(rp_cl, NULL, len, PROT_READ | PROT_WRITE, 0, rp_tmpl);
		if (p == MAP_FAILED) {
			int e = errno;
			no_refpage(&said_map_error,
				   rp_backend(rp_cl) == RP_BACKEND_FILE
					   ? "the file backend could not map a block (its template "
					     "file, or a mapping)"
					   : "refpaged did not map a block",
				   "", e);
			return NULL;
		}
		return p;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void unmap_span(void *p, size_t len, enum blk_kind kind)
{
	if (kind == BLK_REFPAGE)
		rp_unmap(rp_cl, p, len);
	else
		munmap(p, len);
}

/* len bytes (a page multiple) at an address aligned to align: larger
 * alignments over-map and trim both ends. */
static void *map_block(size_t len, size_t align, enum blk_kind kind)
{
	size_t span = len;

	if (align > PAGE) {
		if (len > SIZE_MAX - align)
			return NULL;
		span = len + align - PAGE;
	}
	char *base = map_span(span, kind);
	if (!base)
		return NULL;
	char *a = (char *)(((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1));
	if (align <= PAGE)
		a = base;
	if (a > base)
		unmap_span(base, (size_t)(a - base), kind);
	if (a + len < base + span)
		unmap_span(a + len, (size_t)(base + span - (a + len)), kind);
	if (kind == BLK_MEMSET)
		memset(a, cfg.pattern, len);
	return a;
}

static enum blk_kind mode_kind(void)
{
	return cfg.mode == RUNOPT_REFPAGE  ? BLK_REFPAGE
	       : cfg.mode == RUNOPT_MEMSET ? BLK_MEMSET
					   : BLK_ANON;
}

/* A block of at least n bytes; kind 0 follows the mode. NULL + ENOMEM.
 * site: the return address into the program's call of fn (report mode). */
static void *large_alloc(size_t n, size_t align, enum blk_kind kind, uintptr_t site, const char *fn)
{
	int e = errno;
	void *p = NULL;

	if (n > SIZE_MAX - PAGE) {
		errno = ENOMEM;
		return NULL;
	}
	size_t len = page_round(n);
	in_shim++;
	if (!kind)
		kind = mode_kind();
	if (kind == BLK_REFPAGE && !(p = map_block(len, align, kind))) {
		kind = BLK_MEMSET;
		atomic_fetch_add_explicit(&n_fallbacks, 1, memory_order_relaxed);
	}
	if (!p)
		p = map_block(len, align, kind);
	if (p && tab_put(p, len, kind, n) < 0) {
		unmap_span(p, len, kind);
		p = NULL;
	}
	if (p && kind == BLK_REFPAGE && rp_reporting) {
		if (fb_on)
			fb_register((uintptr_t)p, len); /* before the program can read it */
		pthread_mutex_lock(&tab_lock);
		hist_open((uintptr_t)p, len, n, site, fn, now_ns());
		int collect = hist_n - hist_mark >= HIST_COLLECT;
		pthread_mutex_unlock(&tab_lock);
		if (collect)
			report_collect(0);
	}
	in_shim--;
	if (!p) {
		errno = ENOMEM;
		return NULL;
	}
	atomic_fetch_add_explicit(&n_blocks[kind], 1, memory_order_relaxed);
	if (kind == BLK_REFPAGE)
		atomic_fetch_add_explicit(&n_live_refpage, 1, memory_order_relaxed);
	errno = e;
	return p;
}

/* counted: the file backend's pages were counted already (the copy
 * fallback of a realloc, whose copy reads the old block). */
static void release_counted(void *p, struct blk b, int counted)
{
	int e = errno;

	if (blk_kind(b) == BLK_REFPAGE && rp_reporting) {
		if (!counted)
			fb_count(p, 0, blk_len(b), 0); /* unmapped next: no zap */
		pthread_mutex_lock(&tab_lock);
		hist_close((uintptr_t)p, now_ns());
		pthread_mutex_unlock(&tab_lock);
	}
	in_shim++;
	unmap_span(p, blk_len(b), blk_kind(b));
	in_shim--;
	if (blk_kind(b) == BLK_REFPAGE)
		atomic_fetch_sub_explicit(&n_live_refpage, 1, memory_order_relaxed);
	errno = e;
}

static void release(void *p, struct blk b)
{
	release_counted(p, b, 0);
}

/* Shrink in place: the tail goes (through refpaged first for a refpage
 * block) once it is at least half the block; a smaller tail stays, as
 * usable size. */
static void *large_shrink(void *p, struct blk b, size_t n)
{
	size_t len = blk_len(b), nlen = page_round(n);

	if (nlen <= len / 2) {
		in_shim++;
		if (blk_kind(b) == BLK_REFPAGE && rp_reporting)
			fb_count(p, nlen, len - nlen, 0); /* the tail's reads, before it goes */
		unmap_span((char *)p + nlen, len - nlen, blk_kind(b));
		in_shim--;
		len = nlen;
	}
	tab_put(p, len, blk_kind(b), n);
	return p;
}

/* Grow a block with mremap (rp_remap for a refpage block, which the file
 * backend maps in pieces), which moves it when the addresses above are
 * taken: no copy, whatever its size. A refpage block's new part reads the
 * pattern (from refpaged, whose range grows over it at its first fault, or
 * from the template file mapped over it), a memset block's is filled here. refpaged follows a moved refpage
 * block from the REMAP and UNMAP events the move sends, and puts them back
 * in order when another thread's move into the old addresses is read first
 * (docs/preload.md, "Moving refpage blocks"). */
static void *large_grow(void *p, struct blk b, size_t n, uintptr_t site)
{
	size_t len = blk_len(b), nlen = page_round(n);
	uint64_t t = now_ns();
	int fb = blk_kind(b) == BLK_REFPAGE && fb_on;

	in_shim++;
	/* The file backend: the old block's reads are counted, and dropped so
	 * that the block made anew does not count them again (they move). */
	if (fb)
		fb_count(p, 0, len, 1);
	/* Its history entry closes now, while p is still ours: once the move
	 * unmaps p another thread's block may open an entry there. */
	if (blk_kind(b) == BLK_REFPAGE && rp_reporting) {
		pthread_mutex_lock(&tab_lock);
		hist_close((uintptr_t)p, t);
		pthread_mutex_unlock(&tab_lock);
	}
	char *q = blk_kind(b) == BLK_REFPAGE ? rp_remap(rp_cl, p, len, nlen, MREMAP_MAYMOVE,
							PROT_READ | PROT_WRITE, rp_tmpl, NULL)
					     : mremap(p, len, nlen, MREMAP_MAYMOVE);
	in_shim--;
	if (q == MAP_FAILED && blk_kind(b) == BLK_REFPAGE) {
		/* The move failed (the file backend's pieces, say, past the
		 * process's VMA limit): a new block and a copy, as any realloc. */
		void *c = large_alloc(n, 0, 0, site, "realloc");
		if (c) {
			memcpy(c, p, len);
			release_counted(p, b, fb); /* the copy's reads are not the program's */
			return c;
		}
	}
	if (q == MAP_FAILED) {
		if (fb) /* a failed move may have moved pieces back */
			fb_register((uintptr_t)p, len);
		if (blk_kind(b) == BLK_REFPAGE && rp_reporting) {
			pthread_mutex_lock(&tab_lock);
			hist_reopen((uintptr_t)p, t);
			pthread_mutex_unlock(&tab_lock);
		}
		tab_put(p, len, blk_kind(b), b.req);
		errno = ENOMEM;
		return NULL;
	}
	if (blk_kind(b) == BLK_MEMSET)
		memset(q + len, cfg.pattern, nlen - len);
	tab_put(q, nlen, blk_kind(b), n);
	if (blk_kind(b) == BLK_REFPAGE && rp_reporting) {
		/* A block made anew by this call: its reads from now on are
		 * this caller's (the grown part is untouched). */
		if (fb)
			fb_register((uintptr_t)q, nlen); /* moved or grown: not registered */
		pthread_mutex_lock(&tab_lock);
		hist_open((uintptr_t)q, nlen, n, site, "realloc", t);
		pthread_mutex_unlock(&tab_lock);
	}
	atomic_fetch_add_explicit(&n_remaps, 1, memory_order_relaxed);
	return q;
}

/* realloc of one of our blocks, already taken out of the table. */
static void *large_realloc(void *p, struct blk b, size_t n, uintptr_t site)
{
	if (n == 0) {
		release(p, b);
		return NULL;
	}
	if (n < cfg.threshold) {
		void *q = next.malloc(n);
		if (q) {
			memcpy(q, p, n);
			release(p, b);
		} else {
			tab_put(p, blk_len(b), blk_kind(b), b.req);
		}
		return q;
	}
	if (n > SIZE_MAX - PAGE) {
		tab_put(p, blk_len(b), blk_kind(b), b.req);
		errno = ENOMEM;
		return NULL;
	}
	if (page_round(n) <= blk_len(b))
		return large_shrink(p, b, n);
	return large_grow(p, b, n, site);
}

/* realloc of someone else's block to a large size: into one of ours. */
static void *grow_foreign(void *p, size_t n, uintptr_t site)
{
	size_t old = next.malloc_usable_size(p);
	void *q = large_alloc(n, 0, 0, site, "realloc");

	if (!q)
		return NULL;
	memcpy(q, p, old < n ? old : n);
	next.free(p);
	return q;
}

/* --- the interface ----------------------------------------------------- */

/* The return address into the caller of an entry point (report mode). */
#define SITE ((uintptr_t)__builtin_return_address(0))

EXPORT void *malloc(size_t n)
{
	if (!ready())
		return boot_alloc(n, 16);
	if (likely(n < cfg.threshold) || in_shim)
		return next.malloc(n);
	return large_alloc(n, 0, 0, SITE, "malloc");
}

EXPORT void free(void *p)
{
	struct blk b;

	if (!p || is_boot(p))
		return;
	if (tab_find(p, &b, 1)) {
		release(p, b);
		return;
	}
	if (ready())
		next.free(p);
}

EXPORT void *calloc(size_t a, size_t b)
{
	size_t n;

	if (__builtin_mul_overflow(a, b, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	if (!ready())
		return boot_alloc(n, 16); /* never reused: still zero */
	if (likely(n < cfg.threshold) || in_shim)
		return next.calloc(a, b);
	return large_alloc(n, 0, BLK_ANON, SITE, "calloc");
}

static void *realloc_at(void *p, size_t n, uintptr_t site)
{
	struct blk b;

	if (!p) {
		if (!ready())
			return boot_alloc(n, 16);
		if (likely(n < cfg.threshold) || in_shim)
			return next.malloc(n);
		return large_alloc(n, 0, 0, site, "realloc");
	}
	if (is_boot(p)) {
		void *q = realloc_at(NULL, n, site);
		size_t old = boot_size(p);
		if (q)
			memcpy(q, p, old < n ? old : n);
		return q;
	}
	if (tab_find(p, &b, 1))
		return large_realloc(p, b, n, site);
	if (!ready())
		return NULL;
	if (n >= cfg.threshold && !in_shim)
		return grow_foreign(p, n, site);
	return next.realloc(p, n);
}

EXPORT void *realloc(void *p, size_t n)
{
	return realloc_at(p, n, SITE);
}

EXPORT void *reallocarray(void *p, size_t a, size_t b)
{
	size_t n;

	if (__builtin_mul_overflow(a, b, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc_at(p, n, SITE);
}

static int pow2(size_t a)
{
	return a && !(a & (a - 1));
}

/* The aligned family: large requests are ours (page aligned, or
 * over-mapped for more); small ones go to the same function of libc. */
EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
	if (!pow2(align) || align % sizeof(void *))
		return EINVAL;
	if (!ready()) {
		void *p = boot_alloc(n, align);
		if (!p)
			return ENOMEM;
		*out = p;
		return 0;
	}
	if (n < cfg.threshold || in_shim)
		return next.posix_memalign(out, align, n);
	void *p = large_alloc(n, align, 0, SITE, "posix_memalign");
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

/* memalign semantics: a non-power-of-two alignment rounds up. */
static void *memalign_at(size_t align, size_t n, uintptr_t site, const char *fn)
{
	if (align > (SIZE_MAX >> 1) + 1) {
		errno = EINVAL;
		return NULL;
	}
	while (!pow2(align))
		align = align ? (align | (align >> 1)) + 1 : 1;
	if (!ready())
		return boot_alloc(n, align);
	if ((n < cfg.threshold || in_shim) && next.memalign)
		return next.memalign(align, n);
	if (n < cfg.threshold || in_shim) {
		void *p;
		int r = next.posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, n);
		errno = r ? r : errno;
		return r ? NULL : p;
	}
	return large_alloc(n, align, 0, site, fn);
}

EXPORT void *memalign(size_t align, size_t n)
{
	return memalign_at(align, n, SITE, "memalign");
}

/* Small requests keep libc's own checks on align. */
EXPORT void *aligned_alloc(size_t align, size_t n)
{
	if (ready() && (n < cfg.threshold || in_shim) && next.aligned_alloc)
		return next.aligned_alloc(align, n);
	return memalign_at(align, n, SITE, "aligned_alloc");
}

EXPORT void *valloc(size_t n)
{
	if (ready() && (n < cfg.threshold || in_shim) && next.valloc)
		return next.valloc(n);
	return memalign_at(PAGE, n, SITE, "valloc");
}

EXPORT void *pvalloc(size_t n)
{
	if (n > SIZE_MAX - PAGE) {
		errno = ENOMEM;
		return NULL;
	}
	if (ready() && (n < cfg.threshold || in_shim) && next.pvalloc)
		return next.pvalloc(n);
	return memalign_at(PAGE, n ? page_round(n) : PAGE, SITE, "pvalloc");
}

EXPORT size_t malloc_usable_size(void *p)
{
	struct blk b;

	if (!p)
		return 0;
	if (is_boot(p))
		return boot_size(p);
	if (tab_find(p, &b, 0))
		return blk_len(b);
	return ready() ? next.malloc_usable_size(p) : 0;
}

/* --- process life ------------------------------------------------------ */

static void fork_prepare(void)
{
	pthread_mutex_lock(&tab_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&tab_lock);
}

/* The table is consistent (the lock was held across fork). A connection
 * another thread was making does not exist here: make one on demand. */
static void fork_child(void)
{
	pthread_mutex_init(&tab_lock, NULL);
	/* The child reports what it reads: the parent's findings stay the
	 * parent's (its records are its own pid's). */
	for (size_t i = 0; i < hist_n; i++)
		hist[i].pages = 0;
	rep_unmatched = rep_dropped = 0;
	atomic_flag_clear(&collecting);
	fb_fork_child();
	int s = RP_CONNECTING;
	atomic_compare_exchange_strong(&rp_state, &s, RP_NONE);
}

/* --stats and --report write at exit, after programs that close stderr on
 * their way out (gnulib's close_stdout, xz) have done so: keep a copy. */
static int stats_fd = -1;

__attribute__((constructor)) static void shim_start(void)
{
	ready();
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	if (cfg.stats || cfg.report)
		stats_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
}

/* "module+0xoff (function+0xoff)" of a code address, as dladdr sees it
 * (a function only where its symbol is exported). */
static void m_site(struct msg *m, uintptr_t site, int json)
{
	Dl_info di;

	if (!site || !dladdr((void *)site, &di) || !di.dli_fname) {
		m_str(m, json ? "\"site\":\"" : "");
		m_hex64(m, site);
		m_str(m, json ? "\",\"function\":null" : "");
		return;
	}
	const char *mod = strrchr(di.dli_fname, '/');
	mod = mod ? mod + 1 : di.dli_fname;
	if (json) {
		m_str(m, "\"site\":\"");
		m_json(m, *mod ? mod : "?");
	} else {
		m_str(m, *mod ? mod : "?");
	}
	m_str(m, "+");
	m_hex64(m, site - (uintptr_t)di.dli_fbase);
	if (json)
		m_str(m, "\",\"function\":");
	if (di.dli_sname && di.dli_saddr) {
		m_str(m, json ? "\"" : " (");
		if (json)
			m_json(m, di.dli_sname);
		else
			m_str(m, di.dli_sname);
		m_str(m, "+");
		m_hex64(m, site - (uintptr_t)di.dli_saddr);
		m_str(m, json ? "\"" : ")");
	} else if (json) {
		m_str(m, "null");
	}
}

static void report_entry(const struct hist *h, int fd)
{
	struct msg m;

	if (cfg.format == RUNOPT_JSON) {
		m.n = 0;
		m_str(&m, "{\"pid\":");
		m_num(&m, (unsigned long long)getpid());
		m_str(&m, ",\"tid\":");
		if (h->tid < 0)
			m_str(&m, "null"); /* the file backend */
		else
			m_num(&m, (unsigned long long)h->tid);
		m_str(&m, ",\"size\":");
		m_num(&m, h->req);
		m_str(&m, ",\"allocator\":\"");
		m_str(&m, h->fn);
		m_str(&m, "\",");
		m_site(&m, h->site, 1);
		m_str(&m, ",\"pages\":");
		m_num(&m, h->pages);
		m_str(&m, ",\"first_offset\":");
		m_num(&m, h->first);
		/* One frame: the caller of the allocator (docs/report.md). */
		m_str(&m, ",\"backtrace\":[\"");
		m_hex64(&m, h->site);
		m_str(&m, "\"]}");
		m_emit_to(&m, fd);
		return;
	}
	m_begin(&m);
	m_str(&m, "  ");
	m_num(&m, h->req);
	m_str(&m, " bytes from ");
	m_str(&m, h->fn);
	m_str(&m, " at ");
	m_site(&m, h->site, 0);
	m_str(&m, ": ");
	m_num(&m, h->pages);
	m_str(&m, h->pages == 1 ? " page" : " pages");
	m_str(&m, " read before written, first at offset ");
	m_num(&m, h->first);
	if (h->tid < 0) {
		m_str(&m, ", thread unknown (file backend)");
	} else {
		m_str(&m, " by thread ");
		m_num(&m, (unsigned long long)h->tid);
	}
	m_emit_to(&m, fd);
}

static void report_say(int fd, const char *a, uint64_t n, const char *b)
{
	struct msg m;

	m_begin(&m);
	m_str(&m, "report: ");
	m_str(&m, a);
	if (b) {
		m_num(&m, n);
		m_str(&m, b);
	}
	m_emit_to(&m, fd);
}

/* --report: this process's summary (docs/report.md). */
static void report_print(void)
{
	int fd = stats_fd >= 0 ? stats_fd : STDERR_FILENO, own = -1;
	int s = atomic_load(&rp_state);

	if (s == RP_NONE)
		return; /* no large allocation: nothing was watched */
	if (rp_reporting && fb_on)
		fb_count_live();
	if (fb_what) {
		struct msg m;
		m_begin(&m);
		m_str(&m, "report: unavailable: on the file backend the report needs the kernel's "
			  "fault-around off (a write-protect userfaultfd), and here: ");
		m_str(&m, fb_what);
		m_str(&m, ": ");
		m_str(&m, strerrordesc_np(fb_err));
		m_emit_to(&m, fd);
		return;
	}
	if (!rp_reporting) {
		report_say(fd,
			   s != RP_READY
				   ? "unavailable: no refpages in this process (large "
				     "allocations fell back to memset), so nothing was watched"
			   : rp_report_err == EOPNOTSUPP
				   ? "unavailable: this refpaged does not know report mode"
				   : "unavailable",
			   0, NULL);
		return;
	}
	in_shim++;
	report_collect(1);
	if (cfg.report_file &&
	    (own = open(cfg.report_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0)
		say2("report: cannot open the report file, writing to stderr: ", cfg.report_file);
	int out = own >= 0 ? own : fd;
	pthread_mutex_lock(&tab_lock);
	uint64_t found = 0;
	for (size_t i = 0; i < hist_n; i++)
		found += hist[i].pages > 0;
	if (cfg.format == RUNOPT_TEXT) {
		struct msg m;
		m_begin(&m);
		m_str(&m, "report: ");
		m_num(&m, found);
		m_str(&m, " of ");
		m_num(&m, atomic_load(&n_blocks[BLK_REFPAGE]));
		m_str(&m, " large allocations had pages read before they were written "
			  "(whole pages only: docs/report.md)");
		m_emit_to(&m, out);
	}
	for (size_t i = 0; i < hist_n; i++)
		if (hist[i].pages)
			report_entry(&hist[i], out);
	uint64_t unmatched = rep_unmatched, dropped = rep_dropped, unwatched = rep_unwatched;
	pthread_mutex_unlock(&tab_lock);
	if (dropped)
		report_say(fd, "refpaged dropped ", dropped,
			   " reads of this uid (its queue was full): counts may be low");
	if (unmatched)
		report_say(fd, "", unmatched, " reads of pages of no watched block (not counted)");
	if (unwatched)
		report_say(fd, "", unwatched, " blocks not watched (no memory for the history)");
	if (own >= 0)
		close(own);
	in_shim--;
}

__attribute__((destructor)) static void shim_stop(void)
{
	struct msg m;

	if (cfg.report)
		report_print();
	if (!cfg.stats)
		return;
	m_begin(&m);
	m_str(&m, "mode ");
	m_str(&m, runopt_mode_name(cfg.mode));
	if (atomic_load(&rp_state) == RP_READY) {
		m_str(&m, " (backend ");
		m_str(&m, rp_backend_name(rp_backend(rp_cl)));
		m_str(&m, ")");
	}
	m_str(&m, ", threshold ");
	m_num(&m, cfg.threshold);
	m_str(&m, ", pattern ");
	m_hex(&m, cfg.pattern);
	m_str(&m, ": large blocks refpage ");
	m_num(&m, atomic_load(&n_blocks[BLK_REFPAGE]));
	m_str(&m, ", memset ");
	m_num(&m, atomic_load(&n_blocks[BLK_MEMSET]));
	m_str(&m, ", anon ");
	m_num(&m, atomic_load(&n_blocks[BLK_ANON]));
	m_str(&m, "; fallbacks ");
	m_num(&m, atomic_load(&n_fallbacks));
	m_str(&m, ", remaps ");
	m_num(&m, atomic_load(&n_remaps));
	m_str(&m, ", live ");
	m_num(&m, tab_used);
	m_emit_to(&m, stats_fd >= 0 ? stats_fd : STDERR_FILENO);
}
