/* Unit tests for the template store (daemon/template.c). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include <cmocka.h>

#include "template.h"

#define NTHREADS 8

/* A fake owner's account: memory charged, and a budget it may hit. The
 * charge callback is called from several threads in the smoke test. */
struct owner {
	_Atomic long long charged;
	long long budget; /* 0: unlimited */
	_Atomic int refs;
};

static struct owner owner_a, owner_b;

static int fake_charge(void *o, int64_t bytes)
{
	struct owner *w = o;
	long long now = atomic_fetch_add(&w->charged, bytes) + bytes;

	if (bytes > 0 && w->budget && now > w->budget) {
		atomic_fetch_sub(&w->charged, bytes);
		return -EDQUOT;
	}
	return 0;
}

static void fake_ref(void *o)
{
	atomic_fetch_add(&((struct owner *)o)->refs, 1);
}

static void fake_put(void *o)
{
	atomic_fetch_sub(&((struct owner *)o)->refs, 1);
}

static atomic_int made, freed;

static void count_made(void *ctx, struct tmpl *t)
{
	(void)ctx;
	(void)t;
	made++;
}

static void count_freed(void *ctx, struct tmpl *t)
{
	(void)ctx;
	(void)t;
	freed++;
}

static const struct tmpl_ops fake_ops = {
	.charge = fake_charge,
	.owner_ref = fake_ref,
	.owner_put = fake_put,
	.made = count_made,
	.freed = count_freed,
};

static int store_setup(void **state)
{
	struct tmpl_store *s = calloc(1, sizeof(*s));

	if (!s || tmpl_store_init(s, 0, TMPL_SLAB_PAGES, &fake_ops) != 0)
		return -1;
	*state = s;
	return 0;
}

/* Every test must have put all its templates: a leak shows up here. */
static int store_teardown(void **state)
{
	struct tmpl_store *s = *state;

	assert_int_equal(tmpl_count(s), 0);
	tmpl_store_fini(s);
	free(s);
	/* Every template and slab was uncharged, every owner reference put. */
	assert_int_equal(atomic_load(&owner_a.charged), 0);
	assert_int_equal(atomic_load(&owner_b.charged), 0);
	assert_int_equal(atomic_load(&owner_a.refs), 0);
	assert_int_equal(atomic_load(&owner_b.refs), 0);
	owner_a.budget = owner_b.budget = 0;
	return 0;
}

/* A page that differs from every other seed's, at a varying offset, so
 * that hashing cannot get away with looking at a prefix. */
static void seed_page(uint8_t *page, uint32_t seed)
{
	memset(page, 0x5a, TMPL_PAGE);
	memcpy(page + (seed * 8) % (TMPL_PAGE - sizeof(seed)), &seed, sizeof(seed));
}

static void test_dedup(void **state)
{
	struct tmpl_store *s = *state;
	uint8_t a[TMPL_PAGE], b[TMPL_PAGE + 1];

	seed_page(a, 7);
	/* The same contents from an unaligned, distinct buffer. */
	memcpy(b + 1, a, TMPL_PAGE);
	struct tmpl *t1 = tmpl_get_page(s, &owner_a, 1, a, 0);
	struct tmpl *t2 = tmpl_get_page(s, &owner_a, 1, b + 1, 0);
	assert_non_null(t1);
	assert_ptr_equal(t1, t2);
	assert_int_equal(t1->refs, 2);
	assert_int_equal(tmpl_count(s), 1);
	assert_memory_equal(t1->page, a, TMPL_PAGE);
	assert_int_equal((uintptr_t)t1->page % TMPL_PAGE, 0);
	tmpl_put(s, t1);
	tmpl_put(s, t2);
}

static void test_fill_equals_create(void **state)
{
	struct tmpl_store *s = *state;
	static const uint8_t bytes[] = { 0x00, 0x01, 0xab, 0xff };
	uint8_t page[TMPL_PAGE];

	for (size_t i = 0; i < sizeof(bytes); i++) {
		memset(page, bytes[i], sizeof(page));
		struct tmpl *f = tmpl_get_fill(s, &owner_a, 1, bytes[i]);
		struct tmpl *c = tmpl_get_page(s, &owner_a, 1, page, 0);
		assert_non_null(f);
		assert_ptr_equal(f, c);
		assert_int_equal(f->refs, 2);
		assert_memory_equal(f->page, page, TMPL_PAGE);
		assert_int_equal(f->is_zero, bytes[i] == 0);
		tmpl_put(s, c);
		tmpl_put(s, f);
	}
}

static void test_different(void **state)
{
	struct tmpl_store *s = *state;
	uint8_t a[TMPL_PAGE], b[TMPL_PAGE];

	seed_page(a, 1);
	memcpy(b, a, TMPL_PAGE);
	b[TMPL_PAGE - 1] ^= 1; /* differ in the last byte only */
	struct tmpl *ta = tmpl_get_page(s, &owner_a, 1, a, 0);
	struct tmpl *tb = tmpl_get_page(s, &owner_a, 1, b, 0);
	struct tmpl *tf = tmpl_get_fill(s, &owner_a, 1, 0x5a);
	assert_non_null(ta);
	assert_non_null(tb);
	assert_non_null(tf);
	assert_ptr_not_equal(ta, tb);
	assert_ptr_not_equal(ta, tf);
	assert_ptr_not_equal(tb, tf);
	assert_int_equal(ta->refs, 1);
	assert_int_equal(tmpl_count(s), 3);
	assert_memory_equal(tb->page, b, TMPL_PAGE);
	tmpl_put(s, ta);
	tmpl_put(s, tb);
	tmpl_put(s, tf);
}

static void test_zero_detection(void **state)
{
	struct tmpl_store *s = *state;
	static const size_t offsets[] = { 0, 1, TMPL_PAGE / 2, TMPL_PAGE - 1 };
	uint8_t page[TMPL_PAGE] = { 0 };

	struct tmpl *z = tmpl_get_page(s, &owner_a, 1, page, 0);
	assert_non_null(z);
	assert_true(z->is_zero);
	for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
		page[offsets[i]] = 1;
		struct tmpl *t = tmpl_get_page(s, &owner_a, 1, page, 0);
		assert_non_null(t);
		assert_false(t->is_zero);
		tmpl_put(s, t);
		page[offsets[i]] = 0;
	}
	tmpl_put(s, z);
}

static void test_put_frees(void **state)
{
	struct tmpl_store *s = *state;

	struct tmpl *t = tmpl_get_fill(s, &owner_a, 1, 3);
	assert_non_null(t);
	tmpl_ref(s, t);
	assert_int_equal(t->refs, 2);
	tmpl_put(s, t);
	assert_int_equal(tmpl_count(s), 1);
	tmpl_put(s, t);
	assert_int_equal(tmpl_count(s), 0);
	/* Gone from the table: the same contents make a fresh template. */
	t = tmpl_get_fill(s, &owner_a, 1, 3);
	assert_non_null(t);
	assert_int_equal(t->refs, 1);
	assert_int_equal(tmpl_count(s), 1);
	tmpl_put(s, t);
}

static void test_max(void **state)
{
	struct tmpl_store *s;
	(void)state;

	s = calloc(1, sizeof(*s));
	assert_non_null(s);
	assert_int_equal(tmpl_store_init(s, 2, TMPL_SLAB_PAGES, &fake_ops), 0);
	struct tmpl *a = tmpl_get_fill(s, &owner_a, 1, 1);
	struct tmpl *b = tmpl_get_fill(s, &owner_a, 1, 2);
	assert_non_null(a);
	assert_non_null(b);
	errno = 0;
	assert_null(tmpl_get_fill(s, &owner_a, 1, 3));
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(tmpl_count(s), 2);
	/* At the limit, existing contents are still shared. */
	assert_ptr_equal(tmpl_get_fill(s, &owner_a, 1, 1), a);
	assert_int_equal(a->refs, 2);
	tmpl_put(s, a);
	tmpl_put(s, a);
	/* A slot freed is a slot usable. */
	struct tmpl *c = tmpl_get_fill(s, &owner_a, 1, 3);
	assert_non_null(c);
	tmpl_put(s, b);
	tmpl_put(s, c);
	assert_int_equal(tmpl_count(s), 0);
	tmpl_store_fini(s);
	free(s);
}

static void test_slab_contents(void **state)
{
	struct tmpl_store *s = *state;
	uint8_t page[TMPL_PAGE];

	seed_page(page, 42);
	struct tmpl *t = tmpl_get_page(s, &owner_a, 1, page, 0);
	assert_non_null(t);
	const uint8_t *first = tmpl_slab(s, t, 1);
	assert_non_null(first);
	assert_int_equal((uintptr_t)first % TMPL_PAGE, 0);
	for (unsigned n = 1; n <= TMPL_SLAB_PAGES; n++) {
		const uint8_t *slab = tmpl_slab(s, t, n);
		assert_ptr_equal(slab, first);
		for (unsigned i = 0; i < n; i++)
			assert_memory_equal(slab + (size_t)i * TMPL_PAGE, page, TMPL_PAGE);
	}
	tmpl_put(s, t);
}

static void test_slab_bad_n(void **state)
{
	struct tmpl_store *s = *state;
	static const unsigned bad[] = { 0, TMPL_SLAB_PAGES + 1, ~0u };

	struct tmpl *t = tmpl_get_fill(s, &owner_a, 1, 9);
	assert_non_null(t);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 0;
		assert_null(tmpl_slab(s, t, bad[i]));
		assert_int_equal(errno, EINVAL);
	}
	tmpl_put(s, t);
}

struct slab_race {
	pthread_barrier_t start;
	struct tmpl_store *s;
	struct tmpl *t;
	const void *got[NTHREADS];
};

struct slab_arg {
	struct slab_race *race;
	int i;
};

static void *slab_thread(void *p)
{
	struct slab_arg *a = p;

	pthread_barrier_wait(&a->race->start);
	a->race->got[a->i] = tmpl_slab(a->race->s, a->race->t, TMPL_SLAB_PAGES);
	return NULL;
}

/* Every racer sees the one published slab; losers' copies are unmapped
 * (ASan/LSan would not see a leaked mmap, but the pointer check does). */
static void test_slab_race(void **state)
{
	struct tmpl_store *s = *state;
	struct slab_race race;
	struct slab_arg args[NTHREADS];
	pthread_t th[NTHREADS];

	for (int round = 0; round < 20; round++) {
		race.s = s;
		race.t = tmpl_get_fill(s, &owner_a, 1, (uint8_t)round);
		assert_non_null(race.t);
		assert_int_equal(pthread_barrier_init(&race.start, NULL, NTHREADS), 0);
		for (int i = 0; i < NTHREADS; i++) {
			args[i] = (struct slab_arg){ .race = &race, .i = i };
			assert_int_equal(pthread_create(&th[i], NULL, slab_thread, &args[i]), 0);
		}
		for (int i = 0; i < NTHREADS; i++)
			pthread_join(th[i], NULL);
		pthread_barrier_destroy(&race.start);
		assert_non_null(race.got[0]);
		for (int i = 1; i < NTHREADS; i++)
			assert_ptr_equal(race.got[i], race.got[0]);
		assert_ptr_equal(tmpl_slab(s, race.t, 1), race.got[0]);
		tmpl_put(s, race.t);
	}
}

#define MANY 5000

static void test_rehash(void **state)
{
	struct tmpl_store *s = *state;
	struct tmpl **all = calloc(MANY, sizeof(*all));
	uint8_t page[TMPL_PAGE];
	size_t nb0 = s->nbuckets;

	assert_non_null(all);
	for (uint32_t i = 0; i < MANY; i++) {
		seed_page(page, i);
		all[i] = tmpl_get_page(s, &owner_a, 1, page, 0);
		assert_non_null(all[i]);
	}
	assert_int_equal(tmpl_count(s), MANY);
	assert_true(s->nbuckets > nb0);
	assert_true(s->nbuckets >= MANY);
	for (uint32_t i = 0; i < MANY; i++) {
		seed_page(page, i);
		assert_ptr_equal(tmpl_get_page(s, &owner_a, 1, page, 0), all[i]);
		assert_int_equal(all[i]->refs, 2);
		tmpl_put(s, all[i]);
		tmpl_put(s, all[i]);
	}
	free(all);
}

struct smoke_arg {
	struct tmpl_store *s;
	unsigned seed;
};

/* Few distinct contents, so that threads share templates and race on the
 * last reference; fills and created pages hit the same entries. */
static void *smoke_thread(void *p)
{
	struct smoke_arg *a = p;
	uint8_t page[TMPL_PAGE];

	for (int i = 0; i < 2000; i++) {
		uint8_t byte = (uint8_t)(rand_r(&a->seed) % 8);
		struct tmpl *t;
		if (i & 1) {
			t = tmpl_get_fill(a->s, &owner_a, 1, byte);
		} else {
			memset(page, byte, sizeof(page));
			t = tmpl_get_page(a->s, &owner_a, 1, page, 0);
		}
		if (!t || t->page[TMPL_PAGE - 1] != byte || t->is_zero != (byte == 0))
			return (void *)1;
		if (i % 3 == 0) {
			tmpl_ref(a->s, t);
			tmpl_put(a->s, t);
		}
		if (i % 5 == 0 && !tmpl_slab(a->s, t, TMPL_SLAB_PAGES))
			return (void *)1;
		tmpl_put(a->s, t);
	}
	return NULL;
}

static void test_thread_smoke(void **state)
{
	struct tmpl_store *s = *state;
	struct smoke_arg args[NTHREADS];
	pthread_t th[NTHREADS];

	for (int i = 0; i < NTHREADS; i++) {
		args[i] = (struct smoke_arg){ .s = s, .seed = (unsigned)i + 1 };
		assert_int_equal(pthread_create(&th[i], NULL, smoke_thread, &args[i]), 0);
	}
	for (int i = 0; i < NTHREADS; i++) {
		void *ret;
		pthread_join(th[i], &ret);
		assert_null(ret);
	}
}

/* The same bytes of two owners are two templates: nothing one uid does
 * with a template (its count, its creation time, an error) depends on
 * whether another uid has the same bytes. One owner's are one. */
static void test_owner_isolation(void **state)
{
	struct tmpl_store *s = *state;
	uint8_t page[TMPL_PAGE];

	seed_page(page, 77);
	struct tmpl *a1 = tmpl_get_page(s, &owner_a, 1, page, 0);
	struct tmpl *b1 = tmpl_get_page(s, &owner_b, 2, page, 0);
	struct tmpl *a2 = tmpl_get_page(s, &owner_a, 1, page, 0);
	assert_non_null(a1);
	assert_non_null(b1);
	assert_ptr_equal(a1, a2);
	assert_ptr_not_equal(a1, b1);
	assert_int_not_equal(a1->id, b1->id);
	assert_ptr_equal(a1->owner, &owner_a);
	assert_ptr_equal(b1->owner, &owner_b);
	assert_int_equal(tmpl_count(s), 2);
	/* Each owner pays for its own, once. */
	assert_int_equal(atomic_load(&owner_a.charged), atomic_load(&owner_b.charged));
	assert_true(atomic_load(&owner_a.charged) >= TMPL_PAGE);
	tmpl_put(s, a1);
	tmpl_put(s, a2);
	tmpl_put(s, b1);
}

/* Over its budget, an owner is refused (EDQUOT) and nothing is left
 * charged; another owner is not affected; an existing template of the
 * refused owner is still handed out (it costs nothing more). */
static void test_owner_budget(void **state)
{
	struct tmpl_store *s = *state;
	struct tmpl *t = tmpl_get_fill(s, &owner_a, 1, 1);

	assert_non_null(t);
	owner_a.budget = atomic_load(&owner_a.charged);
	errno = 0;
	assert_null(tmpl_get_fill(s, &owner_a, 1, 2));
	assert_int_equal(errno, EDQUOT);
	assert_int_equal(atomic_load(&owner_a.charged), owner_a.budget);
	struct tmpl *again = tmpl_get_fill(s, &owner_a, 1, 1);
	assert_ptr_equal(again, t);
	struct tmpl *b = tmpl_get_fill(s, &owner_b, 2, 2);
	assert_non_null(b);
	/* No budget left for a slab: fills go one page at a time. */
	assert_null(tmpl_slab(s, t, 4));
	assert_int_equal(atomic_load(&owner_a.charged), owner_a.budget);
	assert_non_null(tmpl_slab(s, b, 4));
	assert_int_equal(atomic_load(&owner_b.charged),
			 owner_a.budget + TMPL_SLAB_PAGES * TMPL_PAGE);
	tmpl_put(s, t);
	tmpl_put(s, again);
	tmpl_put(s, b);
}

/* Ids are unique while the store lives, a restart's id is kept, and the
 * observer hears of every template made and freed. */
static void test_ids_and_hooks(void **state)
{
	struct tmpl_store *s = *state;
	uint8_t page[TMPL_PAGE];
	int m0 = made, f0 = freed;

	seed_page(page, 5);
	struct tmpl *kept = tmpl_get_page(s, &owner_a, 1, page, 1000);
	assert_non_null(kept);
	assert_int_equal(kept->id, 1000);
	struct tmpl *next = tmpl_get_fill(s, &owner_a, 1, 0x11);
	assert_true(next->id > 1000);
	assert_int_equal(made - m0, 2);
	tmpl_put(s, kept);
	tmpl_put(s, next);
	assert_int_equal(freed - f0, 2);
}

int main(void)
{
#define WITH_STORE(f) cmocka_unit_test_setup_teardown(f, store_setup, store_teardown)
	const struct CMUnitTest tests[] = {
		WITH_STORE(test_dedup),
		WITH_STORE(test_fill_equals_create),
		WITH_STORE(test_different),
		WITH_STORE(test_zero_detection),
		WITH_STORE(test_put_frees),
		cmocka_unit_test(test_max), /* its own store, with a limit */
		WITH_STORE(test_slab_contents),
		WITH_STORE(test_slab_bad_n),
		WITH_STORE(test_slab_race),
		WITH_STORE(test_rehash),
		WITH_STORE(test_thread_smoke),
		WITH_STORE(test_owner_isolation),
		WITH_STORE(test_owner_budget),
		WITH_STORE(test_ids_and_hooks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
