/* Per-uid accounting and budgets: see acct.h. */
#include "acct.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "template.h"

/* An account nobody refers to any more stays this long: a uid that
 * connects, misbehaves and disconnects in a loop must find its rate limit
 * and its quotas where it left them, not a fresh account each time. */
#define IDLE_KEEP_S 60.0

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct acct *table; /* as many as uids with a client: a list is enough */
static struct acct_limits limits;
static unsigned nloops = 1;
static _Atomic uint64_t pool_used[ACCT_RES_COUNT];
static atomic_int enforcing = 1;

void acct_init(const struct acct_limits *lim, unsigned loops)
{
	limits = *lim;
	nloops = loops ? loops : 1;
}

void acct_enforce(int on)
{
	atomic_store(&enforcing, on);
}

const struct acct_limits *acct_limits(void)
{
	return &limits;
}

const char *acct_res_name(enum acct_res res)
{
	static const char *const n[ACCT_RES_COUNT] = {
		[ACCT_CONNECTIONS] = "connections", [ACCT_TEMPLATES] = "templates",
		[ACCT_RANGES] = "ranges",           [ACCT_BYTES] = "registered bytes",
		[ACCT_PROCESSES] = "processes",     [ACCT_FDS] = "descriptors",
		[ACCT_MEMORY] = "memory bytes",
	};
	return (unsigned)res < ACCT_RES_COUNT ? n[res] : "?";
}

/* The account itself is the daemon's, not the uid's: a uid has exactly
 * one however much it does. */
static struct acct *acct_new(uid_t uid)
{
	struct acct *a = calloc(1, sizeof(*a));

	if (!a || !(a->turns = calloc(nloops, sizeof(*a->turns))) ||
	    !(a->placed = calloc(nloops, sizeof(*a->placed)))) {
		if (a)
			free(a->turns);
		free(a);
		return NULL;
	}
	a->uid = uid;
	pthread_mutex_init(&a->rlock, NULL);
	log_rl_init(&a->rl);
	log_rl_init(&a->rl_chat);
	return a;
}

static void acct_destroy(struct acct *a)
{
	acct_free(a, a->rq);
	pthread_mutex_destroy(&a->rlock);
	log_rl_fini(&a->rl);
	log_rl_fini(&a->rl_chat);
	free(a->turns);
	free(a->placed);
	free(a);
}

/* Under the table lock: the accounts idle for long go. */
static void sweep(double now)
{
	struct acct **pp = &table;

	while (*pp) {
		struct acct *a = *pp;
		if (!atomic_load(&a->refs) && now - a->idle_since > IDLE_KEEP_S) {
			*pp = a->next;
			acct_destroy(a);
		} else {
			pp = &a->next;
		}
	}
}

struct acct *acct_get(uid_t uid)
{
	struct acct *a;

	pthread_mutex_lock(&table_lock);
	for (a = table; a; a = a->next)
		if (a->uid == uid)
			break;
	if (!a)
		sweep(rp_now());
	if (!a && (a = acct_new(uid))) {
		a->next = table;
		table = a;
	}
	if (a)
		atomic_fetch_add(&a->refs, 1);
	pthread_mutex_unlock(&table_lock);
	return a;
}

void acct_ref(struct acct *a)
{
	atomic_fetch_add(&a->refs, 1);
}

/* The last reference only marks the account idle (acct_get sweeps it
 * later, under the table lock, where it may be found again meanwhile). */
void acct_put(struct acct *a)
{
	unsigned r = atomic_load(&a->refs);

	/* Not the last reference: no lock. */
	while (r > 1)
		if (atomic_compare_exchange_weak(&a->refs, &r, r - 1))
			return;
	/* The last goes under the table's lock with the time it went idle:
	 * sweep (under that lock) never sees an account at 0 references
	 * whose idle time is not set yet, and frees none a put still uses. */
	pthread_mutex_lock(&table_lock);
	if (atomic_fetch_sub(&a->refs, 1) == 1)
		a->idle_since = rp_now();
	pthread_mutex_unlock(&table_lock);
}

struct acct *acct_find(uid_t uid, int next)
{
	struct acct *best = NULL;

	pthread_mutex_lock(&table_lock);
	for (struct acct *a = table; a; a = a->next) {
		if (!next && a->uid == uid)
			best = a;
		else if (next && a->uid > uid && (!best || a->uid < best->uid))
			best = a;
	}
	if (best)
		atomic_fetch_add(&best->refs, 1);
	pthread_mutex_unlock(&table_lock);
	return best;
}

void acct_log(struct acct *a, int prio, const char *fmt, ...)
{
	char line[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	rp_log_rl(prio >= LOG_INFO ? &a->rl_chat : &a->rl, prio, "uid %d: %s", (int)a->uid, line);
}

static void refuse(struct acct *a, enum acct_res res, int pool)
{
	atomic_fetch_add(&a->refused[res], 1);
	acct_stat_add(a, PROTO_STAT_REFUSED, 1);
	acct_log(a, LOG_WARNING, "%s budget reached (%s %llu); refusing more", acct_res_name(res),
		 pool ? "daemon-wide pool" : "per uid",
		 (unsigned long long)(pool ? limits.pool[res] : limits.max[res]));
}

/* Would cur + n of this uid, and total + n of everyone's, fit? 0, 1 (the
 * uid's budget), 2 (the pool). */
static int over(enum acct_res res, uint64_t cur, uint64_t total, uint64_t n)
{
	uint64_t max = limits.max[res], pool = limits.pool[res];

	if (!atomic_load(&enforcing))
		return 0;
	if (cur + n < cur || (max && cur + n > max))
		return 1;
	if (!pool)
		return 0;
	if (total + n > pool)
		return 2;
	/* The reserve is for uids that hold little. */
	if (total + n > pool - limits.reserve[res] && cur + n > limits.floor[res])
		return 2;
	return 0;
}

int acct_check(struct acct *a, enum acct_res res, uint64_t n)
{
	int o = over(res, atomic_load(&a->used[res]), atomic_load(&pool_used[res]), n);

	if (o)
		refuse(a, res, o == 2);
	return o ? -EDQUOT : 0;
}

/* Added first, taken back if it does not fit: a racing charge may be
 * refused that would have fitted, never the other way round. */
int acct_charge(struct acct *a, enum acct_res res, uint64_t n)
{
	uint64_t cur = atomic_fetch_add(&a->used[res], n);
	uint64_t total = atomic_fetch_add(&pool_used[res], n);
	int o = over(res, cur, total, n);

	if (!o)
		return 0;
	atomic_fetch_sub(&a->used[res], n);
	atomic_fetch_sub(&pool_used[res], n);
	refuse(a, res, o == 2);
	return -EDQUOT;
}

void acct_uncharge(struct acct *a, enum acct_res res, uint64_t n)
{
	atomic_fetch_sub(&a->used[res], n);
	atomic_fetch_sub(&pool_used[res], n);
}

int acct_charge_fd(struct acct *a, enum acct_res res)
{
	if (acct_charge(a, res, 1) < 0)
		return -EDQUOT;
	if (acct_charge(a, ACCT_FDS, 1) < 0) {
		acct_uncharge(a, res, 1);
		return -EDQUOT;
	}
	return 0;
}

void acct_uncharge_fd(struct acct *a, enum acct_res res)
{
	acct_uncharge(a, res, 1);
	acct_uncharge(a, ACCT_FDS, 1);
}

void acct_adjust(struct acct *a, enum acct_res res, int64_t delta)
{
	atomic_fetch_add(&a->used[res], (uint64_t)delta);
	atomic_fetch_add(&pool_used[res], (uint64_t)delta);
}

int acct_fds_held(struct acct *a)
{
	uint64_t max = limits.max[ACCT_FDS];

	return atomic_load(&enforcing) && max && atomic_load(&a->closing) &&
	       atomic_load(&a->used[ACCT_FDS]) >= max;
}

uint64_t acct_pool_used(enum acct_res res)
{
	return atomic_load(&pool_used[res]);
}

/* --- memory ---------------------------------------------------------------- */

/* Each block starts with its size, kept in a header that keeps malloc's
 * alignment, and with acct_alloc_ref its account. */
struct block {
	size_t size;
	struct acct *owner;
};

void *acct_alloc(struct acct *a, size_t size)
{
	struct block *b;

	if (size > SIZE_MAX - sizeof(*b)) {
		errno = ENOMEM;
		return NULL;
	}
	if (acct_charge(a, ACCT_MEMORY, size + sizeof(*b)) < 0) {
		errno = EDQUOT;
		return NULL;
	}
	if (!(b = malloc(size + sizeof(*b)))) {
		acct_uncharge(a, ACCT_MEMORY, size + sizeof(*b));
		errno = ENOMEM;
		return NULL;
	}
	b->size = size;
	b->owner = NULL;
	return b + 1;
}

void *acct_alloc_ref(struct acct *a, size_t size)
{
	void *p = acct_alloc(a, size);

	if (p) {
		((struct block *)p - 1)->owner = a;
		acct_ref(a);
	}
	return p;
}

void acct_free_ref(void *p)
{
	if (!p)
		return;
	struct acct *a = ((struct block *)p - 1)->owner;
	acct_free(a, p);
	acct_put(a);
}

void *acct_calloc(struct acct *a, size_t n, size_t size)
{
	void *p;

	if (size && n > SIZE_MAX / size) {
		errno = ENOMEM;
		return NULL;
	}
	if ((p = acct_alloc(a, n * size)))
		memset(p, 0, n * size);
	return p;
}

void *acct_realloc(struct acct *a, void *p, size_t size)
{
	if (!p)
		return acct_alloc(a, size);
	struct block *b = (struct block *)p - 1;
	size_t old = b->size;
	if (size > old && acct_charge(a, ACCT_MEMORY, size - old) < 0) {
		errno = EDQUOT;
		return NULL;
	}
	struct block *nb = size <= SIZE_MAX - sizeof(*b) ? realloc(b, size + sizeof(*b)) : NULL;
	if (!nb) {
		if (size > old)
			acct_uncharge(a, ACCT_MEMORY, size - old);
		errno = ENOMEM;
		return NULL;
	}
	if (size < old)
		acct_uncharge(a, ACCT_MEMORY, old - size);
	nb->size = size;
	return nb + 1;
}

void acct_free(struct acct *a, void *p)
{
	if (!p)
		return;
	struct block *b = (struct block *)p - 1;
	acct_uncharge(a, ACCT_MEMORY, b->size + sizeof(*b));
	free(b);
}

/* --- read-before-write records (report mode) ----------------------------------- */

void acct_report_push(struct acct *a, const struct acct_rrec *r)
{
	pthread_mutex_lock(&a->rlock);
	if (a->rn == a->rcap) {
		uint32_t cap = a->rcap ? a->rcap * 2 : 64;
		void *q = cap <= ACCT_REPORT_MAX ? acct_realloc(a, a->rq, cap * sizeof(*a->rq))
						 : NULL;
		if (!q) {
			a->rdropped++;
			pthread_mutex_unlock(&a->rlock);
			return;
		}
		a->rq = q;
		a->rcap = cap;
	}
	a->rq[a->rn++] = *r;
	pthread_mutex_unlock(&a->rlock);
}

/* Under rlock: an empty queue holds no memory. */
static void report_shrink(struct acct *a)
{
	if (a->rn)
		return;
	acct_free(a, a->rq);
	a->rq = NULL;
	a->rcap = 0;
}

unsigned acct_report_take(struct acct *a, int32_t pid, struct acct_rrec *out, unsigned max,
			  int *more, uint64_t *dropped)
{
	unsigned got = 0;
	uint32_t keep = 0;

	*more = 0;
	pthread_mutex_lock(&a->rlock);
	for (uint32_t i = 0; i < a->rn; i++) {
		if (a->rq[i].pid == pid && got < max) {
			out[got++] = a->rq[i];
			continue;
		}
		if (a->rq[i].pid == pid)
			*more = 1;
		a->rq[keep++] = a->rq[i];
	}
	a->rn = keep;
	report_shrink(a);
	*dropped = a->rdropped;
	pthread_mutex_unlock(&a->rlock);
	return got;
}

void acct_report_forget(struct acct *a, uint32_t mm)
{
	uint32_t keep = 0;

	pthread_mutex_lock(&a->rlock);
	for (uint32_t i = 0; i < a->rn; i++)
		if (a->rq[i].mm != mm)
			a->rq[keep++] = a->rq[i];
	a->rn = keep;
	report_shrink(a);
	pthread_mutex_unlock(&a->rlock);
}

/* --- the rest ---------------------------------------------------------------- */

void acct_foreach(void (*fn)(const struct acct *a, void *arg), void *arg)
{
	pthread_mutex_lock(&table_lock);
	for (struct acct *a = table; a; a = a->next)
		fn(a, arg);
	pthread_mutex_unlock(&table_lock);
}

void acct_stat_add(struct acct *a, unsigned s, int64_t v)
{
	stat_add(s, v);
	if (a && s < PROTO_STATS_MAX)
		atomic_fetch_add_explicit(&a->stat[s], (uint64_t)v, memory_order_relaxed);
}

static struct acct_turn *turn(struct acct *a, unsigned loop, uint64_t iter)
{
	struct acct_turn *t = &a->turns[loop < nloops ? loop : 0];

	if (t->iter != iter) {
		t->iter = iter;
		t->used = t->woken = 0;
	}
	return t;
}

uint32_t acct_turn_left(struct acct *a, unsigned loop, uint64_t iter, uint32_t quota)
{
	struct acct_turn *t = turn(a, loop, iter);

	return t->used < quota ? quota - t->used : 0;
}

int acct_turn_wake(struct acct *a, unsigned loop, uint64_t iter, uint32_t quota)
{
	struct acct_turn *t = turn(a, loop, iter);

	if (t->woken >= quota)
		return 0;
	t->woken++;
	return 1;
}

void acct_turn_use(struct acct *a, unsigned loop, uint32_t n)
{
	a->turns[loop < nloops ? loop : 0].used += n;
}

/* --- templates' owners ---------------------------------------------------- */

static int tmpl_charge(void *owner, int64_t bytes)
{
	if (bytes < 0) {
		acct_uncharge(owner, ACCT_MEMORY, (uint64_t)-bytes);
		return 0;
	}
	return acct_charge(owner, ACCT_MEMORY, (uint64_t)bytes);
}

static void tmpl_owner_ref(void *owner)
{
	acct_ref(owner);
	acct_stat_add(owner, PROTO_STAT_TEMPLATES, 1);
}

static void tmpl_owner_put(void *owner)
{
	acct_stat_add(owner, PROTO_STAT_TEMPLATES, -1);
	acct_put(owner);
}

void acct_tmpl_ops(struct tmpl_ops *ops)
{
	ops->charge = tmpl_charge;
	ops->owner_ref = tmpl_owner_ref;
	ops->owner_put = tmpl_owner_put;
}
