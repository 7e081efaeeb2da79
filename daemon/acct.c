/* Per-uid accounting: see acct.h. */
#include "acct.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "log.h"

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct acct *table; /* few distinct uids: a list is enough */
static struct acct_limits limits;

void acct_init(const struct acct_limits *lim)
{
	limits = *lim;
}

const char *acct_res_name(enum acct_res res)
{
	static const char *const n[ACCT_RES_COUNT] = {
		[ACCT_CONNECTIONS] = "connections", [ACCT_TEMPLATES] = "templates",
		[ACCT_RANGES] = "ranges", [ACCT_BYTES] = "registered bytes",
		[ACCT_PROCESSES] = "processes",
	};
	return (unsigned)res < ACCT_RES_COUNT ? n[res] : "?";
}

struct acct *acct_get(uid_t uid)
{
	struct acct *a;

	pthread_mutex_lock(&table_lock);
	for (a = table; a; a = a->next)
		if (a->uid == uid)
			break;
	if (!a && (a = calloc(1, sizeof(*a)))) {
		a->uid = uid;
		a->next = table;
		table = a;
	}
	if (a)
		a->refs++;
	pthread_mutex_unlock(&table_lock);
	return a;
}

void acct_put(struct acct *a)
{
	pthread_mutex_lock(&table_lock);
	if (--a->refs == 0) {
		struct acct **pp = &table;
		while (*pp != a)
			pp = &(*pp)->next;
		*pp = a->next;
		free(a);
	}
	pthread_mutex_unlock(&table_lock);
}

static int over(struct acct *a, enum acct_res res, uint64_t cur, uint64_t n)
{
	uint64_t max = limits.max[res];

	if (!max || (cur + n <= max && cur + n >= cur))
		return 0;
	if (!atomic_exchange(&a->warned[res], 1))
		log_warn("uid %d: limit of %llu %s reached; refusing more (logged once)", (int)a->uid,
			 (unsigned long long)max, acct_res_name(res));
	return 1;
}

int acct_charge(struct acct *a, enum acct_res res, uint64_t n)
{
	uint64_t cur = atomic_load(&a->used[res]);

	do {
		if (over(a, res, cur, n))
			return -EDQUOT;
	} while (!atomic_compare_exchange_weak(&a->used[res], &cur, cur + n));
	return 0;
}

int acct_check(struct acct *a, enum acct_res res, uint64_t n)
{
	return over(a, res, atomic_load(&a->used[res]), n) ? -EDQUOT : 0;
}

void acct_adjust(struct acct *a, enum acct_res res, int64_t delta)
{
	atomic_fetch_add(&a->used[res], (uint64_t)delta);
}

void acct_uncharge(struct acct *a, enum acct_res res, uint64_t n)
{
	atomic_fetch_sub(&a->used[res], n);
}

void acct_foreach(void (*fn)(const struct acct *a, void *arg), void *arg)
{
	pthread_mutex_lock(&table_lock);
	for (struct acct *a = table; a; a = a->next)
		fn(a, arg);
	pthread_mutex_unlock(&table_lock);
}
