#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "arena.h"

TestSuite(arena, .timeout = 30);

Test(arena, smoke)
{
	for (int kind = 1; kind <= 2; kind++) {
		uint64_t size = 32u << 20;
		void *mem = aligned_alloc(4096, size);
		eng_arena_t a;
		eng_arena_cfg_t cfg = {.kind = kind, .record_size = 256, .min_class_shift = 12, .max_class_shift = 20};
		cr_assert_eq(eng_arena_format(&a, mem, size, &cfg), 0);
		uint64_t offs[100];
		for (int i = 0; i < 100; i++) {
			cr_assert_eq(eng_arena_alloc(&a, 1000 + i * 1000, 7, &offs[i]), 0, "i=%d", i);
			memset(eng_arena_ptr(&a, offs[i], 1000 + i * 1000), i, 1000 + i * 1000);
		}
		char why[256];
		cr_assert_eq(eng_arena_check(&a, why, sizeof why), 0, "%s", why);
		for (int i = 0; i < 100; i += 2)
			cr_assert_eq(eng_arena_free(&a, offs[i]), 0);
		cr_assert_eq(eng_arena_free(&a, offs[0]), -EALREADY);
		cr_assert_eq(eng_arena_check(&a, why, sizeof why), 0, "%s", why);
		cr_assert_eq(eng_arena_reclaim(&a, 7), 50);
		cr_assert_eq(eng_arena_check(&a, why, sizeof why), 0, "%s", why);
		uint64_t r;
		cr_assert_eq(eng_arena_rec_alloc(&a, 3, &r), 0);
		cr_assert_eq(eng_arena_rec_index(&a, r), 0);
		cr_assert_eq(eng_arena_rec_free(&a, r), 0);
		cr_assert_eq(eng_arena_check(&a, why, sizeof why), 0, "%s", why);
		free(mem);
	}
}
