/* Unit tests of the restart wing's map (daemon/hmap.c): what a restore
 * and a compaction rely on. Keys alike in their low bits (pointers) and
 * consecutive ids all come back through many grows; a forgotten key reads
 * as absent and can come back; a walk sees each live key once and may
 * forget what it visits without a grow moving the rest under it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "hmap.h"

#define N 100000u
/* Pointer-like keys: 64-byte aligned, above every id. */
#define PTR(i) (0x7f0000000000ull + (uint64_t)(i)*64)

static void test_many_keys_through_grows(void **state)
{
	struct hmap m = { 0 };

	(void)state;
	for (uint64_t i = 1; i <= N; i++) {
		assert_int_equal(hmap_put(&m, PTR(i), i), 0);
		assert_int_equal(hmap_put(&m, i, ~i), 0);
	}
	assert_int_equal(m.n, 2 * N);
	assert_true(m.cap >= 4 * N);
	for (uint64_t i = 1; i <= N; i++) {
		assert_int_equal(hmap_get(&m, PTR(i)), i);
		assert_int_equal(hmap_get(&m, i), ~i);
	}
	assert_int_equal(hmap_get(&m, PTR(N + 1)), 0);
	assert_int_equal(hmap_get(&m, 0), 0);
	hmap_free(&m);
	assert_int_equal(m.cap, 0);
	assert_int_equal(hmap_get(&m, 1), 0);
}

static void test_forget_and_come_back(void **state)
{
	struct hmap m = { 0 };

	(void)state;
	assert_int_equal(hmap_put(&m, 7, 70), 0);
	assert_int_equal(hmap_put(&m, 7, 0), 0);
	assert_int_equal(hmap_get(&m, 7), 0);
	assert_int_equal(hmap_put(&m, 7, 71), 0);
	assert_int_equal(hmap_get(&m, 7), 71);
	assert_int_equal(m.n, 1);
	hmap_free(&m);
}

static void test_walk_may_forget(void **state)
{
	struct hmap m = { 0 };
	uint64_t sum = 0, seen = 0;

	(void)state;
	for (uint64_t i = 1; i <= 31; i++) /* 31 of 64 slots: the next new key grows */
		assert_int_equal(hmap_put(&m, i, i), 0);
	assert_int_equal(hmap_put(&m, 5, 0), 0); /* forgotten: not walked */
	size_t cap = m.cap;
	for (size_t i = 0; hmap_next(&m, &i);) {
		sum += m.v[i - 1];
		seen++;
		assert_int_equal(hmap_put(&m, m.k[i - 1], 0), 0);
		assert_int_equal(m.cap, cap);
	}
	assert_int_equal(seen, 30);
	assert_int_equal(sum, 31 * 32 / 2 - 5);
	for (size_t i = 0; hmap_next(&m, &i);)
		fail_msg("key %llu still walked", (unsigned long long)m.k[i - 1]);
	hmap_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many_keys_through_grows),
		cmocka_unit_test(test_forget_and_come_back),
		cmocka_unit_test(test_walk_may_forget),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
