/* Fact g: two threads' moving mremaps can reach the uffd reader in the
 * opposite order of the moves; how often, how long the late event takes,
 * and what putting it back in order needs.
 *
 * Movers (threads) each own a block of LEN bytes registered with our uffd
 * (EVENT_REMAP | EVENT_UNMAP), in one of SLOTS slots. A mover claims a
 * destination slot, preferring one another mover is leaving; for such a
 * slot it waits until the leaver's move is done in the kernel (a
 * MAP_FIXED_NOREPLACE placeholder there succeeds: the leaver's mremap has
 * dropped mmap_lock, maybe not queued its REMAP yet). Then it says its own
 * slot is being left and moves there with MREMAP_FIXED | MREMAP_MAYMOVE.
 * A slot nobody claimed gets a placeholder back: PROT_NONE, or with -R a
 * registered mapping, which a move onto it unmaps first: the mover then
 * queues that UNMAP and waits for it to be read before it queues its
 * REMAP (do_mremap: userfaultfd_unmap_complete(uf_unmap_early) before
 * mremap_userfaultfd_complete), a long window after mmap_lock is dropped.
 * Everything on CPU 0 (the reader too, unless -s), with -y threads calling
 * sched_yield().
 *
 * The reader follows the events as refpaged does (docs/design.md, "Events
 * that arrive late"): a table slot -> block, a REMAP copies and records
 * its source, the UNMAP of a recorded source forgets only what nobody moved
 * in since; a REMAP whose destination still holds a block whose move away
 * has not been read is deferred with everything after it, until that late
 * event comes (a REMAP out of the slot, or an UNMAP of it), which is then
 * applied first. -n applies everything in arrival order instead. Each
 * mover logs its moves; each REMAP applied is checked against the log
 * (the block it copies must be the mover's), and the table against where
 * the blocks ended.
 *
 * With -T a mover drops its block's first page before each move and reads
 * it after: the fault is answered from the table (and checked to be the
 * mover's block), or held while a deferred event touches its slot.
 *
 *   remap_order [-t movers] [-r rounds] [-y yielders] [-s] [-R] [-n] [-T]
 */
#define _GNU_SOURCE
#include "kf.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define SLOTS 16
#define LEN (4 * PAGE)
#define MAXQ 256
#define MAXLOG (1 << 20)

/* slot_state: what the slot is (low bits) and who made it so (<< 4): the
 * mover that left a slot gives it back only if nobody claimed it since,
 * not after another mover moved in and is leaving it in turn. */
enum { FREE, OWNED, LEAVING, CLAIMED };
#define STATE(kind, who) ((kind) | (who) << 4)

static char *region;
static _Atomic int slot_state[SLOTS];
static atomic_int stop, movers_left;
static int uffd, rounds = 2000, registered, in_order, touch;
static _Atomic pid_t tids[SLOTS];
static int final_slot[SLOTS];

struct move {
	int who, from, to, seen;
};
static struct move mlog[MAXLOG];
static atomic_int nlog;

static char *slot_addr(int s)
{
	return region + (size_t)s * LEN;
}

static void placeholder(int s, int flags)
{
	void *p = mmap(slot_addr(s), LEN, registered ? PROT_READ | PROT_WRITE : PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
	if (p != MAP_FAILED && registered &&
	    kf_register(uffd, (uint64_t)(uintptr_t)p, LEN, UFFDIO_REGISTER_MODE_MISSING)) {
		perror("register");
		exit(1);
	}
}

/* --- movers -------------------------------------------------------------- */

/* A slot to move to (| 0x100 if it is being left), taken. */
static int claim(int who, unsigned *seed)
{
	for (;;) {
		int start = (int)(rand_r(seed) % SLOTS);
		for (int want = LEAVING; want >= FREE; want -= LEAVING - FREE)
			for (int k = 0; k < SLOTS; k++) {
				int s = (start + k) % SLOTS, st = atomic_load(&slot_state[s]);
				if ((st & 15) == want &&
				    atomic_compare_exchange_strong(&slot_state[s], &st,
								   STATE(CLAIMED, who)))
					return (want == LEAVING ? 0x100 : 0) | s;
			}
		sched_yield();
	}
}

static void *mover(void *arg)
{
	int who = (int)(intptr_t)arg, own = who;
	unsigned seed = (unsigned)who * 7919u + 1;

	atomic_store(&tids[who], gettid());
	for (int r = 0; r < rounds; r++) {
		int c = claim(who, &seed), dst = c & 0xff;
		if (c & 0x100)
			while (mmap(slot_addr(dst), LEN, PROT_NONE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
				    0) == MAP_FAILED)
				;
		atomic_store(&slot_state[own], STATE(LEAVING, who));
		if (touch) /* its first page faults again after the move */
			madvise(slot_addr(own), PAGE, MADV_DONTNEED);
		int i = atomic_fetch_add(&nlog, 1);
		if (i < MAXLOG)
			mlog[i] = (struct move){ who, own, dst, 0 };
		if (mremap(slot_addr(own), LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED,
			   slot_addr(dst)) == MAP_FAILED) {
			perror("mremap");
			exit(1);
		}
		atomic_store(&slot_state[dst], STATE(OWNED, who));
		if (touch)
			(void)*(volatile char *)slot_addr(dst);
		int st = STATE(LEAVING, who);
		if (atomic_compare_exchange_strong(&slot_state[own], &st, STATE(CLAIMED, who))) {
			placeholder(own, MAP_FIXED_NOREPLACE);
			atomic_store(&slot_state[own], FREE);
		}
		own = dst;
	}
	final_slot[who] = own;
	atomic_fetch_sub(&movers_left, 1);
	return NULL;
}

static void *yielder(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		sched_yield();
	return NULL;
}

/* --- the reader ---------------------------------------------------------- */

struct ev {
	int remap, from, to; /* slots; an UNMAP has from only */
};

static int tab[SLOTS];  /* block in the slot, as the events tell; -1: none */
static int nrec[SLOTS]; /* REMAPs out of the slot read, their UNMAP not yet */
static int has[SLOTS];  /* the newest of those still holds the slot's block */
static struct ev q[MAXQ];
static int nq, depth;
static double t0;
static long n0, nread;
static long moves, windows, by_remap, by_unmap, qmax, carried_wrong, cycles;
static long faults, held, served_wrong;
static struct uffd_msg waiting[MAXQ];
static int nwaiting;
static double dmax, dsum;

static int slot_of(uint64_t a)
{
	return (int)((a - (uint64_t)(uintptr_t)region) / LEN);
}

static int blocked(const struct ev *e)
{
	return e->remap && tab[e->to] >= 0 && !has[e->to];
}

/* The REMAP must copy the block of the mover that made it; a wrong one
 * is counted and put right, so that each mistake counts once. */
static void check(const struct ev *e)
{
	int n = atomic_load(&nlog) < MAXLOG ? atomic_load(&nlog) : MAXLOG;

	for (int i = 0; i < n; i++)
		if (!mlog[i].seen && mlog[i].from == e->from && mlog[i].to == e->to) {
			mlog[i].seen = 1;
			carried_wrong += tab[e->from] != mlog[i].who;
			tab[e->from] = mlog[i].who;
			return;
		}
}

static void apply(const struct ev *e)
{
	if (e->remap) {
		check(e);
		has[e->to] = 0;
		tab[e->to] = tab[e->from];
		has[e->from] = 1;
		nrec[e->from]++;
		return;
	}
	if (nrec[e->from] && !has[e->from]) {
		nrec[e->from]--;
		return;
	}
	nrec[e->from] -= nrec[e->from] > 0;
	has[e->from] = 0;
	tab[e->from] = -1;
}

/* Does e touch slot, other than the displaced slot d? */
static int touches(const struct ev *e, int slot, int d)
{
	return slot != d && (e->from == slot || (e->remap && e->to == slot));
}

/* Does q[i] come after an event in set: it touches a slot that one
 * touched (but d), or it is the UNMAP a move in set sends of its source? */
static int after_any(int i, const char *set, int d)
{
	for (int k = 0; k < i; k++) {
		const struct ev *a = &q[k], *b = &q[i];
		if (set[k] && (touches(b, a->from, d) || (a->remap && touches(b, a->to, d)) ||
			       (a->remap && !b->remap && b->from == a->from)))
			return 1;
	}
	return 0;
}

/* The head is blocked: its destination d still holds a block whose move
 * away has not been read. The first later event that frees d and does not
 * come after the head (the head's block moving on, and that move's UNMAP)
 * is that late event, and goes first. Touching d itself says nothing:
 * the late event's place there is what is in question. If it is blocked in
 * turn (its own destination not freed yet), the same finds its late one. */
static int explain(void)
{
	char after[MAXQ] = { 1 };
	int d = q[0].to, j = 0;

	for (int i = 1; i < nq && !j; i++) {
		after[i] = after_any(i, after, d);
		if (!after[i] && q[i].from == d)
			j = i;
	}
	if (!j || ++depth > nq) {
		cycles += j != 0;
		return 0;
	}
	struct ev l = q[j];
	memmove(&q[1], &q[0], (size_t)j * sizeof(q[0]));
	q[0] = l;
	l.remap ? by_remap++ : by_unmap++;
	return 1;
}

static void settle(int force)
{
	depth = 0;
	while (nq) {
		if (!force && blocked(&q[0])) {
			if (!explain())
				return;
			continue;
		}
		depth = 0;
		apply(&q[0]);
		memmove(&q[0], &q[1], (size_t)--nq * sizeof(q[0]));
	}
	double d = kf_now() - t0;
	dmax = d > dmax ? d : dmax;
	dsum += d;
	qmax = nread - n0 > qmax ? nread - n0 : qmax;
}

static void on_event(const struct uffd_msg *m)
{
	struct ev e;

	if (m->event == UFFD_EVENT_REMAP) {
		e = (struct ev){ 1, slot_of(m->arg.remap.from), slot_of(m->arg.remap.to) };
		moves++;
	} else if (m->event == UFFD_EVENT_UNMAP) {
		e = (struct ev){ 0, slot_of(m->arg.remove.start), -1 };
	} else {
		return;
	}
	if (!nq && (in_order || !blocked(&e))) {
		windows += blocked(&e);
		apply(&e);
		return;
	}
	if (!nq) {
		windows++;
		t0 = kf_now();
		n0 = nread;
	}
	q[nq++] = e;
	settle(nq == MAXQ);
}

/* A fault at slot s is answered with what the table has there, which must
 * be the faulting mover's block; one in a slot a deferred event touches
 * waits until the order is settled. */
static int in_window(int slot)
{
	for (int i = 0; i < nq; i++)
		if (q[i].from == slot || (q[i].remap && q[i].to == slot))
			return 1;
	return 0;
}

static void answer(const struct uffd_msg *m)
{
	uint64_t page = m->arg.pagefault.address & ~(PAGE - 1);
	int slot = slot_of(page), who = -1;

	for (int i = 0; i < SLOTS; i++)
		if (atomic_load(&tids[i]) == (pid_t)m->arg.pagefault.feat.ptid)
			who = i;
	served_wrong += tab[slot] != who;
	if (kf_zeropage(uffd, page, PAGE) == EAGAIN) /* an event in flight */
		waiting[nwaiting++] = *m;
}

static void on_fault(const struct uffd_msg *m)
{
	faults++;
	if (nwaiting < MAXQ && in_window(slot_of(m->arg.pagefault.address))) {
		held++;
		waiting[nwaiting++] = *m;
		return;
	}
	answer(m);
}

static void retry_faults(void)
{
	int n = nwaiting;
	struct uffd_msg w[MAXQ];

	memcpy(w, waiting, (size_t)n * sizeof(w[0]));
	nwaiting = 0;
	for (int i = 0; i < n; i++) {
		if (in_window(slot_of(w[i].arg.pagefault.address)))
			waiting[nwaiting++] = w[i];
		else
			answer(&w[i]);
	}
}

static void handle(void)
{
	struct uffd_msg m[16];
	struct pollfd p = { .fd = uffd, .events = POLLIN };

	while (atomic_load(&movers_left) > 0) {
		if (poll(&p, 1, 10) < 0)
			continue;
		ssize_t n = read(uffd, m, sizeof(m));
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(m[0]); i++) {
			nread++;
			if (m[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(&m[i]);
			else
				on_event(&m[i]);
		}
		retry_faults();
		if (nq && kf_now() - t0 > 1.0) {
			fprintf(stderr, "a late event did not come within 1 s\n");
			settle(1);
		}
	}
	if (nq)
		settle(1);
	retry_faults();
}

/* --- main ---------------------------------------------------------------- */

static void pin(int cpu)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	sched_setaffinity(0, sizeof(one), &one);
}

static int wrong_at_end(int nmovers)
{
	int wrong = 0;

	for (int s = 0; s < SLOTS; s++) {
		int want = -1;
		for (int m = 0; m < nmovers; m++)
			if (final_slot[m] == s)
				want = m;
		wrong += tab[s] != want;
	}
	return wrong;
}

int main(int argc, char **argv)
{
	int nmovers = 2, nyield = 1, apart = 0, o;

	while ((o = getopt(argc, argv, "t:r:y:sRnT")) != -1) {
		if (o == 't')
			nmovers = atoi(optarg);
		else if (o == 'r')
			rounds = atoi(optarg);
		else if (o == 'y')
			nyield = atoi(optarg);
		else if (o == 's')
			apart = 1;
		else if (o == 'R')
			registered = 1;
		else if (o == 'n')
			in_order = 1;
		else if (o == 'T')
			touch = 1;
		else
			return 2;
	}
	if (nmovers < 1 || nmovers > SLOTS / 2 || nyield < 0 || nyield > 32)
		return 2;
	uffd = kf_uffd(0, UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP |
				  UFFD_FEATURE_THREAD_ID);
	region = mmap(NULL, SLOTS * LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (uffd < 0 || region == MAP_FAILED)
		return perror("uffd or mmap"), 1;
	for (int s = 0; s < SLOTS; s++) {
		tab[s] = s < nmovers ? s : -1;
		slot_state[s] = s < nmovers ? STATE(OWNED, s) : FREE;
		if (s >= nmovers) {
			placeholder(s, MAP_FIXED);
			continue;
		}
		mmap(slot_addr(s), LEN, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (kf_register(uffd, (uint64_t)(uintptr_t)slot_addr(s), LEN,
				UFFDIO_REGISTER_MODE_MISSING))
			return perror("register"), 1;
	}
	pin(0);
	pthread_t th[SLOTS + 32];
	int nth = 0;
	atomic_store(&movers_left, nmovers);
	for (int i = 0; i < nmovers; i++)
		pthread_create(&th[nth++], NULL, mover, (void *)(intptr_t)i);
	for (int i = 0; i < nyield; i++)
		pthread_create(&th[nth++], NULL, yielder, NULL);
	if (apart)
		pin(1);
	handle();
	atomic_store(&stop, 1);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	printf("movers %d, yielders %d, placeholders %s, reader %s, %s: %ld moves; %ld REMAPs "
	       "read before the event that freed their destination (explained by %ld REMAPs, %ld "
	       "UNMAPs; %ld circles); wait: mean %.1f us, max %.1f us; most events read in a "
	       "wait: %ld; REMAPs that copied the wrong block: %ld; slots wrong at the end: %d; "
	       "faults %ld (held %ld), answered from another block: %ld\n",
	       nmovers, nyield, registered ? "registered" : "PROT_NONE",
	       apart ? "on CPU 1" : "on CPU 0", in_order ? "arrival order" : "reordered", moves,
	       windows, by_remap, by_unmap, cycles, windows ? dsum / (double)windows * 1e6 : 0.0,
	       dmax * 1e6, qmax, carried_wrong, wrong_at_end(nmovers), faults, held, served_wrong);
	return 0;
}
