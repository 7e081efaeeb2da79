/* Work attacks: requests and uffd events that cost the daemon's main loop
 * or a worker time proportional to what the attacker has built up (big
 * range tables), or that make the daemon wait on the attacker's mmap_lock;
 * and plain fault load. */
#include "atk.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <refpage.h>

#define P TN_PAGE

/* A connection and a region of n pages, each page its own range. */
static uint8_t *pieces(struct atk_conn *c, const char *sock, size_t n, uint32_t *idp,
		       unsigned long *refused)
{
	int r = atk_hello(c, sock, 10, 0);

	if (r < 0) {
		atk_out("hello_error=%s", strerror(-r));
		return NULL;
	}
	long id = atk_fill(c, 0x6B);
	uint8_t *a = atk_anon(n * P);
	if (id <= 0 || a == MAP_FAILED)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		r = atk_map(c, (uintptr_t)(a + i * P), P, (uint32_t)id);
		if (r < 0) {
			if (!atk_refusal(r)) {
				atk_out("map_error=%s at=%zu", strerror(-r), i);
				return NULL;
			}
			(*refused)++;
		}
	}
	*idp = (uint32_t)id;
	return a;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* churn: procs= processes, each with a table of ranges= one-page ranges,
 * UNMAP and MAP random pieces of it back to back until duration=. */
int atk_churn(const char *sock)
{
	long procs = (long)tn_opt_ll("procs", 2);
	size_t n = (size_t)tn_opt_ll("ranges", 20000);
	double dur = tn_opt_double("duration", 4);
	atomic_ulong *sh = mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (sh == MAP_FAILED)
		return 1;
	for (long k = 0; k < procs; k++) {
		if (fork())
			continue;
		struct atk_conn c;
		uint32_t id;
		unsigned long refused = 0;
		double t0 = tn_now();
		uint8_t *a = pieces(&c, sock, n, &id, &refused);
		if (!a)
			_exit(1);
		atomic_fetch_add(&sh[0], (unsigned long)((tn_now() - t0) * 1e3));
		atomic_fetch_add(&sh[1], refused);
		struct tn_lat l;
		tn_lat_init(&l, 20000);
		uint64_t s = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
		double deadline = tn_now() + dur;
		while (atk_until(deadline)) {
			uint64_t addr = (uintptr_t)(a + (rnd(&s) % n) * P);
			uint64_t t = tn_now_ns();
			int r1 = atk_unmap(&c, addr, P), r2 = atk_map(&c, addr, P, id);
			tn_lat_add(&l, tn_now_ns() - t);
			atomic_fetch_add(&sh[2], 2);
			if (r1 < 0 || r2 < 0)
				atomic_fetch_add(&sh[3], 1);
		}
		uint64_t p99 = tn_lat_pct(&l, 99);
		atomic_fetch_add(&sh[4], p99 / 1000);
		_exit(0);
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	atk_out("procs=%ld ranges=%zu setup_ms_sum=%lu refused=%lu requests=%lu errors=%lu "
		"pair_p99_us_avg=%lu",
		procs, n, atomic_load(&sh[0]), atomic_load(&sh[1]), atomic_load(&sh[2]),
		atomic_load(&sh[3]), atomic_load(&sh[4]) / (unsigned long)(procs ? procs : 1));
	return 0;
}

/* unmap-pieces: a table of ranges= one-page ranges in one region; one
 * UNMAP of the whole region (one request, a UFFDIO_UNREGISTER per piece on
 * the main loop), MAP every piece again; until duration=. */
int atk_unmap_pieces(const char *sock)
{
	size_t n = (size_t)tn_opt_ll("ranges", 20000);
	double deadline = tn_now() + tn_opt_double("duration", 4);
	struct atk_conn c;
	uint32_t id;
	unsigned long refused = 0, cycles = 0, errors = 0;
	uint8_t *a = pieces(&c, sock, n, &id, &refused);
	uint64_t worst = 0, total = 0;

	if (!a)
		return 1;
	while (atk_until(deadline)) {
		uint64_t t = tn_now_ns();
		if (atk_unmap(&c, (uintptr_t)a, n * P) < 0)
			errors++;
		t = tn_now_ns() - t;
		total += t;
		if (t > worst)
			worst = t;
		for (size_t i = 0; i < n && atk_until(deadline + 10); i++)
			errors += atk_map(&c, (uintptr_t)(a + i * P), P, id) < 0;
		cycles++;
	}
	atk_out("ranges=%zu cycles=%lu big_unmap_ms_avg=%.1f big_unmap_ms_max=%.1f errors=%lu", n,
		cycles, cycles ? (double)total / 1e6 / (double)cycles : 0.0, (double)worst / 1e6,
		errors);
	atk_close(&c);
	return 0;
}

struct mover {
	uint8_t *a, *b;
	size_t len;
	double deadline;
	atomic_ulong moves, failed;
};

static void *mover(void *arg)
{
	struct mover *m = arg;
	uint8_t *from = m->a, *to = m->b;

	while (atk_until(m->deadline)) {
		void *r = mremap(from, m->len, m->len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (r == MAP_FAILED) {
			atomic_fetch_add(&m->failed, 1);
			tn_sleep(0.001);
			continue;
		}
		atomic_fetch_add(&m->moves, 1);
		uint8_t *x = from;
		from = to;
		to = x;
	}
	return NULL;
}

/* mremap-storm: a region of pieces= one-page ranges moved back and forth
 * by mremap in one thread (each move: a REMAP the worker follows by
 * copying every piece, then an UNMAP of the old place), while another
 * thread MAPs and UNMAPs one page on the same connection (a MAP waits for
 * the worker to apply the events it has read). Until duration=. */
int atk_mremap_storm(const char *sock)
{
	size_t n = (size_t)tn_opt_ll("pieces", 20000);
	struct mover m = { .len = n * P, .deadline = tn_now() + tn_opt_double("duration", 4) };
	struct atk_conn c;
	uint32_t id;
	unsigned long refused = 0, maps = 0, errors = 0;
	pthread_t th;

	m.a = pieces(&c, sock, n, &id, &refused);
	m.b = mmap(NULL, m.len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint8_t *one = atk_anon(P);
	if (!m.a || m.b == MAP_FAILED || one == MAP_FAILED)
		return 1;
	struct tn_lat l;
	tn_lat_init(&l, 50000);
	pthread_create(&th, NULL, mover, &m);
	while (atk_until(m.deadline)) {
		uint64_t t = tn_now_ns();
		errors += atk_map(&c, (uintptr_t)one, P, id) < 0;
		tn_lat_add(&l, tn_now_ns() - t);
		errors += atk_unmap(&c, (uintptr_t)one, P) < 0;
		maps++;
	}
	pthread_join(th, NULL);
	atk_out("pieces=%zu moves=%lu move_failed=%lu maps=%lu map_p50_us=%.0f map_p99_us=%.0f "
		"map_max_us=%.0f errors=%lu",
		n, atomic_load(&m.moves), atomic_load(&m.failed), maps,
		(double)tn_lat_pct(&l, 50) / 1e3, (double)tn_lat_pct(&l, 99) / 1e3,
		(double)l.max / 1e3, errors);
	tn_lat_free(&l);
	atk_close(&c);
	return 0;
}

/* mremap-dontunmap: a region of pieces= one-page ranges moved moves= times
 * with MREMAP_DONTUNMAP: every move leaves the old (empty, still
 * registered) mapping behind, and the daemon's table gains a copy of every
 * piece, past its range limit. Held until duration=. */
int atk_mremap_dontunmap(const char *sock)
{
	size_t n = (size_t)tn_opt_ll("pieces", 2000);
	long moves = (long)tn_opt_ll("moves", 500);
	double dur = tn_opt_double("duration", 4), deadline = tn_now() + dur;
	struct atk_conn c;
	uint32_t id;
	unsigned long refused = 0, failed = 0;
	long done = 0;
	uint8_t *a = pieces(&c, sock, n, &id, &refused);
	int last = 0;

	if (!a)
		return 1;
	double t0 = tn_now();
	for (; done < moves && atk_until(deadline + 30); done++) {
		void *r = mremap(a, n * P, n * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
		if (r == MAP_FAILED) {
			failed++;
			last = errno;
			break;
		}
		a = r;
	}
	double ms = (tn_now() - t0) * 1e3;
	/* The table after the moves: a MAP past the limit is refused. */
	uint8_t *one = atk_anon(P);
	int probe = atk_map(&c, (uintptr_t)one, P, id);
	atk_out("pieces=%zu moves=%ld failed=%lu last_error=%s moves_ms=%.0f "
		"pieces_followed=%zu map_after=%s",
		n, done, failed, last ? strerror(last) : "none", ms, n * (size_t)(done + 1),
		probe ? strerror(-probe) : "ok");
	/* Held a while, however long the moves took. */
	deadline = tn_now() + (dur < 1 ? dur : 1);
	while (atk_until(deadline))
		tn_sleep(0.05);
	atk_close(&c);
	return 0;
}

struct locker {
	uint8_t *buf, *ref;
	size_t len, refpages;
	double deadline;
	atomic_ulong toggles, touches;
};

static void *toggler(void *arg)
{
	struct locker *k = arg;

	while (atk_until(k->deadline)) {
		mprotect(k->buf, k->len, PROT_READ);
		mprotect(k->buf, k->len, PROT_READ | PROT_WRITE);
		atomic_fetch_add(&k->toggles, 2);
	}
	return NULL;
}

static void *toucher(void *arg)
{
	struct locker *k = arg;

	while (atk_until(k->deadline)) {
		madvise(k->ref, k->refpages * P, MADV_DONTNEED);
		for (size_t i = 0; i < k->refpages; i += 3)
			(void)*(volatile uint8_t *)(k->ref + i * P);
		atomic_fetch_add(&k->touches, 1);
	}
	return NULL;
}

/* mmap-lock: one thread flips the protection of mb= MiB of populated memory
 * (each mprotect holds the process's mmap_lock for writing while it walks
 * the page tables); another faults refpages (the worker's UFFDIO_COPY
 * waits for that lock); the main thread MAPs and UNMAPs (the main loop's
 * UFFDIO_WRITEPROTECT probe and UFFDIO_REGISTER wait for it). Until
 * duration=. */
int atk_mmap_lock(const char *sock)
{
	struct locker k = { .len = (size_t)tn_opt_ll("mb", 512) << 20, .refpages = 64 };
	double dur = tn_opt_double("duration", 4);
	struct atk_conn c;
	unsigned long errors = 0, maps = 0;
	pthread_t t1, t2;
	int r = atk_hello(&c, sock, 10, 0);

	if (r < 0) {
		atk_out("hello_error=%s", strerror(-r));
		return 1;
	}
	long id = atk_fill(&c, 0x4D);
	k.buf = atk_anon(k.len);
	k.ref = atk_anon(k.refpages * P);
	if (id <= 0 || k.buf == MAP_FAILED || k.ref == MAP_FAILED)
		return 1;
	madvise(k.buf, k.len, MADV_NOHUGEPAGE);
	memset(k.buf, 1, k.len);
	if ((r = atk_map(&c, (uintptr_t)k.ref, k.refpages * P, (uint32_t)id)) < 0) {
		atk_out("map_error=%s", strerror(-r));
		return 1;
	}
	struct tn_lat l;
	tn_lat_init(&l, 50000);
	/* From here: populating gigabytes takes a while. */
	k.deadline = tn_now() + dur;
	pthread_create(&t1, NULL, toggler, &k);
	pthread_create(&t2, NULL, toucher, &k);
	while (atk_until(k.deadline)) {
		uint8_t *q = atk_anon(P);
		if (q == MAP_FAILED)
			break;
		uint64_t t = tn_now_ns();
		errors += atk_map(&c, (uintptr_t)q, P, (uint32_t)id) < 0;
		tn_lat_add(&l, tn_now_ns() - t);
		errors += atk_unmap(&c, (uintptr_t)q, P) < 0;
		munmap(q, P);
		maps++;
	}
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	atk_out("mb=%zu mprotects=%lu refpage_rounds=%lu maps=%lu map_p50_us=%.0f map_p99_us=%.0f "
		"errors=%lu",
		k.len >> 20, atomic_load(&k.toggles), atomic_load(&k.touches), maps,
		(double)tn_lat_pct(&l, 50) / 1e3, (double)tn_lat_pct(&l, 99) / 1e3, errors);
	tn_lat_free(&l);
	atk_close(&c);
	return 0;
}

/* uffd-bomb: packets carrying PROTO_SEND_FDS_MAX userfaultfds of this
 * process each (on a STATS, which takes none: refused and closed), sent by
 * senders= threads at once, while another thread flips the protection of
 * mb= MiB of populated memory in a loop, holding the process's mmap_lock
 * for writing most of the time. The last close of each of those uffds
 * takes that lock (userfaultfd_release), and the daemon makes it: half
 * the packets are read and refused, the other half are left on a
 * connection hung up at once (closing that socket drops them). Until
 * duration=. */
struct bomber {
	double deadline;
	atomic_ulong packets, uffds, answered, dial_failed, uffd_failed;
	const char *sock;
};

static void *bomb_thread(void *arg)
{
	struct bomber *b = arg;
	int fds[PROTO_SEND_FDS_MAX], umo;
	unsigned long packets = 0;

	while (atk_until(b->deadline)) {
		int n = 0;
		while (n < (int)PROTO_SEND_FDS_MAX && (fds[n] = proto_uffd_create(&umo)) >= 0)
			n++;
		atomic_fetch_add(&b->uffd_failed, n < (int)PROTO_SEND_FDS_MAX);
		int s = n ? atk_dial(b->sock) : -1;
		if (s < 0) {
			atomic_fetch_add(&b->dial_failed, 1);
		} else {
			_Alignas(8) uint8_t pkt[PROTO_MAX_MSG];
			struct iovec iov = { .iov_base = pkt,
					     .iov_len = proto_build(pkt, PROTO_STATS, 1, NULL, 0) };
			if (proto_sendmsg_fds(s, &iov, 1, fds, (unsigned)n, MSG_DONTWAIT) > 0) {
				packets++;
				atomic_fetch_add(&b->packets, 1);
				atomic_fetch_add(&b->uffds, (unsigned long)n);
				struct atk_conn c = { .fd = s, .uffd = -1 };
				if (packets % 2 && atk_recv(&c, pkt, 5) >= 0)
					atomic_fetch_add(&b->answered, 1);
			}
			close(s);
		}
		for (int i = 0; i < n; i++)
			close(fds[i]);
	}
	return NULL;
}

int atk_uffd_bomb(const char *sock)
{
	struct locker k = { .len = (size_t)tn_opt_ll("mb", 512) << 20 };
	long nsend = (long)tn_opt_ll("senders", 1);
	struct bomber b = { .sock = sock };
	pthread_t t, th[16];

	if (nsend < 1 || nsend > 16)
		return 1;
	k.buf = atk_anon(k.len);
	if (k.buf == MAP_FAILED)
		return 1;
	madvise(k.buf, k.len, MADV_NOHUGEPAGE);
	memset(k.buf, 1, k.len);
	k.deadline = b.deadline = tn_now() + tn_opt_double("duration", 4);
	pthread_create(&t, NULL, toggler, &k);
	for (long i = 0; i < nsend; i++)
		pthread_create(&th[i], NULL, bomb_thread, &b);
	for (long i = 0; i < nsend; i++)
		pthread_join(th[i], NULL);
	pthread_join(t, NULL);
	atk_out("mb=%zu senders=%ld mprotects=%lu packets=%lu uffds_sent=%lu answered=%lu "
		"dial_failed=%lu uffd_failed=%lu",
		k.len >> 20, nsend, atomic_load(&k.toggles), atomic_load(&b.packets),
		atomic_load(&b.uffds), atomic_load(&b.answered), atomic_load(&b.dial_failed),
		atomic_load(&b.uffd_failed));
	return atomic_load(&b.packets) ? 0 : 1;
}

struct flooder {
	uint8_t *p;
	size_t pages;
	int random;
	double deadline;
	atomic_ulong *touches;
};

static void *flood_thread(void *arg)
{
	struct flooder *f = arg;
	uint64_t s = (uint64_t)(uintptr_t)f * 0x9E3779B97F4A7C15ull | 1;
	unsigned long n = 0;

	while (atk_until(f->deadline)) {
		for (size_t i = 0; i < f->pages; i++) {
			size_t pg = f->random ? (size_t)(rnd(&s) % f->pages) : i;
			(void)*(volatile uint8_t *)(f->p + pg * P);
		}
		n += f->pages;
		madvise(f->p, f->pages * P, MADV_DONTNEED);
	}
	atomic_fetch_add(f->touches, n);
	return NULL;
}

/* fault-flood: procs= processes of threads= threads, each sweeping (even
 * threads) or randomly touching (odd ones) its share of mb= MiB of
 * refpages, dropping them and again, until duration=: as many faults as
 * one uid can make. */
int atk_fault_flood(const char *sock)
{
	long procs = (long)tn_opt_ll("procs", 4), threads = (long)tn_opt_ll("threads", 4);
	size_t len = (size_t)tn_opt_ll("mb", 32) << 20;
	double deadline = tn_now() + tn_opt_double("duration", 4);
	atomic_ulong *sh = mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (sh == MAP_FAILED || threads < 1 || threads > 64)
		return 1;
	for (long k = 0; k < procs; k++) {
		if (fork())
			continue;
		rp_client *c;
		uint32_t id;
		int r = rp_connect_opts(sock, RP_CONNECT_UFFD, &c);
		if (r < 0 || (r = rp_template_fill(c, 0xF1, &id)) < 0)
			_exit(1);
		uint8_t *p = rp_map(c, NULL, len, PROT_READ | PROT_WRITE, 0, id);
		if (p == MAP_FAILED)
			_exit(1);
		pthread_t th[64];
		struct flooder f[64];
		size_t share = len / P / (size_t)threads;
		for (long t = 0; t < threads; t++) {
			f[t] = (struct flooder){ p + (size_t)t * share * P, share, (int)(t & 1),
						 deadline, &sh[0] };
			pthread_create(&th[t], NULL, flood_thread, &f[t]);
		}
		for (long t = 0; t < threads; t++)
			pthread_join(th[t], NULL);
		_exit(0);
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	atk_out("procs=%ld threads=%ld touches=%lu", procs, threads, atomic_load(&sh[0]));
	return 0;
}
