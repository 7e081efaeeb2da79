/* Per-uid accounting and limits: one uid cannot exhaust the daemon for
 * another. Every connection, template handle, range, registered byte and
 * served process (fork children included) is charged to the uid that made
 * it and uncharged when it goes. Thread safe: sessions charge on the main
 * loop, workers on their own threads (fork children, unmap events). */
#ifndef REFPAGED_ACCT_H
#define REFPAGED_ACCT_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

enum acct_res {
	ACCT_CONNECTIONS,
	ACCT_TEMPLATES,
	ACCT_RANGES,
	ACCT_BYTES,
	ACCT_PROCESSES,
	ACCT_RES_COUNT
};

struct acct {
	uid_t uid;
	atomic_uint refs;        /* under the table lock */
	_Atomic uint64_t used[ACCT_RES_COUNT];
	atomic_int warned[ACCT_RES_COUNT]; /* limit hit logged once */
	struct acct *next;
};

/* Limits per uid; 0 means unlimited. */
struct acct_limits {
	uint64_t max[ACCT_RES_COUNT];
};

void acct_init(const struct acct_limits *lim);
/* The uid's account, referenced; NULL on ENOMEM. */
struct acct *acct_get(uid_t uid);
void acct_put(struct acct *a);

/* Charge n units of res. 0, or -EDQUOT past the limit (nothing charged;
 * the first refusal per uid and resource is logged). */
int acct_charge(struct acct *a, enum acct_res res, uint64_t n);
void acct_uncharge(struct acct *a, enum acct_res res, uint64_t n);
/* Would n more units fit? 0 or -EDQUOT (logged once), nothing charged. */
int acct_check(struct acct *a, enum acct_res res, uint64_t n);
/* Follow a change the kernel already made (an unmap, a fork's copy of the
 * ranges): never refused. */
void acct_adjust(struct acct *a, enum acct_res res, int64_t delta);

const char *acct_res_name(enum acct_res res);
/* fn on every uid's account, under the table lock (the snapshot). */
void acct_foreach(void (*fn)(const struct acct *a, void *arg), void *arg);

#endif
