/*
 * test_arena.c - single-process behaviour of the arena allocator (alloc/arena.h), every
 * behaviour on both kinds: TEST_BOTH_KINDS(name) registers lockfree::name and mutex::name.
 * Kind-specific guarantees (the lock-free buddy split, the mutex arena's coalescing) have
 * their own tests under the kind's suite.
 *
 * Cross-process stress and crash recovery live in test_arena_stress.c.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arena.h"

#define MIB (1024u * 1024u)

/* Registers the body for both kinds: lockfree::name and mutex::name. */
#define TEST_BOTH_KINDS(name, secs)                                                                \
        static void name(eng_arena_kind_t kind);                                                   \
        Test(lockfree, name, .timeout = (secs))                                                    \
        {                                                                                          \
                name(ENG_ARENA_LOCKFREE);                                                          \
        }                                                                                          \
        Test(mutex, name, .timeout = (secs))                                                       \
        {                                                                                          \
                name(ENG_ARENA_MUTEX);                                                             \
        }                                                                                          \
        static void name(eng_arena_kind_t kind)

#define KN(a) eng_arena_kind_name(eng_arena_kind(a))

/* eng_arena_check must pass; ctx says where we are. */
#define ASSERT_ARENA_OK(a, ctx)                                                                    \
        do {                                                                                       \
                char why_[256];                                                                    \
                int rc_ = eng_arena_check((a), why_, sizeof why_);                                 \
                cr_assert_eq(rc_, 0, "%s: %s: eng_arena_check: %s", KN(a), (ctx), why_);           \
        } while (0)

/* ---- helpers ------------------------------------------------------------------------ */

struct fx {
        eng_arena_t a;
        void *mem;
        uint64_t size;
};

static eng_arena_t *fx_make(struct fx *f, eng_arena_kind_t kind, uint64_t size, uint32_t rec_size,
                            uint32_t min_shift, uint32_t max_shift)
{
        f->size = size;
        f->mem = aligned_alloc(4096, size);
        cr_assert_not_null(f->mem);
        eng_arena_cfg_t cfg = {.kind = kind,
                               .record_size = rec_size,
                               .min_class_shift = min_shift,
                               .max_class_shift = max_shift};
        int rc = eng_arena_format(&f->a, f->mem, size, &cfg);
        cr_assert_eq(rc, 0, "%s: format: %d", eng_arena_kind_name(kind), rc);
        cr_assert_eq(eng_arena_kind(&f->a), kind);
        return &f->a;
}

static void fx_done(struct fx *f)
{
        free(f->mem);
        f->mem = NULL;
}

static eng_arena_stats_t stats_of(const eng_arena_t *a)
{
        eng_arena_stats_t st;
        eng_arena_stats(a, &st);
        return st;
}

static uint64_t pat_word(uint64_t seed, uint64_t i)
{
        uint64_t x = seed * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull + 1;
        return x ^ (x >> 29);
}

static void fill(eng_arena_t *a, uint64_t off, uint64_t len, uint64_t seed)
{
        unsigned char *p = eng_arena_ptr(a, off, len);
        cr_assert_not_null(p, "%s: ptr(%llu, %llu) is NULL", KN(a), (unsigned long long)off,
                           (unsigned long long)len);
        uint64_t i = 0;
        for (; i + 8 <= len; i += 8) {
                uint64_t w = pat_word(seed, i);
                memcpy(p + i, &w, 8);
        }
        uint64_t w = pat_word(seed, i);
        memcpy(p + i, &w, len - i);
}

/* Returns true if [off, off+len) still holds fill(seed). */
static bool intact(eng_arena_t *a, uint64_t off, uint64_t len, uint64_t seed)
{
        const unsigned char *p = eng_arena_ptr(a, off, len);
        if (p == NULL)
                return false;
        uint64_t i = 0;
        for (; i + 8 <= len; i += 8) {
                uint64_t w = pat_word(seed, i);
                if (memcmp(p + i, &w, 8) != 0)
                        return false;
        }
        uint64_t w = pat_word(seed, i);
        return memcmp(p + i, &w, len - i) == 0;
}

/* The free-list side of the stats: what a rejected free must not change. */
static void assert_lists_unchanged(const eng_arena_stats_t *x, const eng_arena_stats_t *y,
                                   const char *ctx)
{
        const char *k = eng_arena_kind_name(x->kind);
        cr_assert_eq(x->buf_used_blocks, y->buf_used_blocks, "%s: %s: used blocks", k, ctx);
        cr_assert_eq(x->buf_used_bytes, y->buf_used_bytes, "%s: %s: used bytes", k, ctx);
        cr_assert_eq(x->buf_free_blocks, y->buf_free_blocks, "%s: %s: free blocks", k, ctx);
        cr_assert_eq(x->buf_free_bytes, y->buf_free_bytes, "%s: %s: free bytes", k, ctx);
        cr_assert_eq(x->rec_top, y->rec_top, "%s: %s: rec_top", k, ctx);
        cr_assert_eq(x->buf_bottom, y->buf_bottom, "%s: %s: buf_bottom", k, ctx);
        cr_assert_eq(x->rec_used, y->rec_used, "%s: %s: rec_used", k, ctx);
        cr_assert_eq(x->rec_free, y->rec_free, "%s: %s: rec_free", k, ctx);
        cr_assert_eq(x->failed, y->failed, "%s: %s: failed", k, ctx);
        for (uint32_t c = 0; c < x->nclasses; c++) {
                cr_assert_eq(x->cls[c].used_blocks, y->cls[c].used_blocks, "%s: %s: class %u", k,
                             ctx, c);
                cr_assert_eq(x->cls[c].free_blocks, y->cls[c].free_blocks, "%s: %s: class %u", k,
                             ctx, c);
                cr_assert_eq(x->cls[c].frees, y->cls[c].frees, "%s: %s: class %u", k, ctx, c);
        }
}

static uint64_t xorshift(uint64_t *s)
{
        uint64_t x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return *s = x;
}

/* ---- format / attach ------------------------------------------------------------------ */

TEST_BOTH_KINDS(format_rejects_bad_config, 10)
{
        uint64_t size = 4 * MIB;
        unsigned char *mem = aligned_alloc(4096, size);
        cr_assert_not_null(mem);
        eng_arena_t a;
        eng_arena_cfg_t ok = {
            .kind = kind, .record_size = 256, .min_class_shift = 12, .max_class_shift = 20};
        eng_arena_cfg_t c;

        cr_assert_eq(eng_arena_format(&a, mem + 8, size - 64, &ok), -EINVAL, "misaligned base");
        cr_assert_eq(eng_arena_format(&a, NULL, size, &ok), -EINVAL);
        cr_assert_eq(eng_arena_format(&a, mem, size, NULL), -EINVAL);
        c = ok, c.kind = 3;
        cr_assert_eq(eng_arena_format(&a, mem, size, &c), -EINVAL, "bad kind");
        c = ok, c.min_class_shift = 6;
        cr_assert_eq(eng_arena_format(&a, mem, size, &c), -EINVAL, "min shift 6");
        c = ok, c.max_class_shift = 31;
        cr_assert_eq(eng_arena_format(&a, mem, size, &c), -EINVAL, "max shift 31");
        c = ok, c.min_class_shift = 14, c.max_class_shift = 13;
        cr_assert_eq(eng_arena_format(&a, mem, size, &c), -EINVAL, "min > max");
        c = ok, c.min_class_shift = 7, c.max_class_shift = 7 + ENG_ARENA_MAX_CLASSES;
        cr_assert_eq(eng_arena_format(&a, mem, size, &c), -EINVAL, "too many classes");
        cr_assert_eq(eng_arena_format(&a, mem, 1024, &ok), -EINVAL, "too small");
        if (kind == ENG_ARENA_LOCKFREE) {
                /* 512 KiB cannot hold one 1 MiB superblock. */
                cr_assert_eq(eng_arena_format(&a, mem, 512 * 1024, &ok), -ENOSPC);
        }
        cr_assert_eq(eng_arena_format(&a, mem, size, &ok), 0);
        ASSERT_ARENA_OK(&a, "formatted");
        free(mem);
}

TEST_BOTH_KINDS(fresh_arena_layout_and_stats, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 200, 12, 20);
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.kind, kind);
        cr_assert_eq(st.size, 8 * MIB);
        cr_assert_eq(st.top, 8 * MIB); /* a multiple of the superblock and of 64 */
        cr_assert(st.rec_base >= 64 && st.rec_base % 64 == 0);
        cr_assert_eq(st.rec_stride, ENG_ARENA_HDR_BYTES + 256, "record body rounded up to 64");
        cr_assert_eq(st.rec_top, st.rec_base);
        cr_assert_eq(st.buf_bottom, st.top);
        cr_assert_eq(st.rec_used + st.rec_free + st.buf_used_blocks + st.buf_free_blocks, 0);
        cr_assert_eq(st.failed + st.bad_frees, 0);
        cr_assert_eq(st.nclasses, kind == ENG_ARENA_LOCKFREE ? 9u : 0u);
        cr_assert_eq(eng_arena_rec_slots(a), 0);
        cr_assert_eq(eng_arena_rec_max_slots(a), (st.top - st.rec_base) / st.rec_stride);
        cr_assert_eq(eng_arena_max_alloc(a), kind == ENG_ARENA_LOCKFREE
                                                 ? MIB - ENG_ARENA_HDR_BYTES
                                                 : st.top - st.rec_base - ENG_ARENA_HDR_BYTES);
        cr_assert_str_eq(eng_arena_kind_name(kind),
                         kind == ENG_ARENA_LOCKFREE ? "lockfree" : "mutex");
        ASSERT_ARENA_OK(a, "fresh");
        fx_done(&f);
}

/* Map a real shm segment twice, at two addresses: one arena, two views. */
TEST_BOTH_KINDS(attach_sees_same_arena_through_second_mapping, 20)
{
        char name[96];
        snprintf(name, sizeof name, "/eng-arena-test-attach-%s-%d", eng_arena_kind_name(kind),
                 (int)getpid());
        shm_unlink(name);
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        cr_assert(fd >= 0, "shm_open %s: %s", name, strerror(errno));
        uint64_t size = 8 * MIB;
        cr_assert_eq(ftruncate(fd, (off_t)size), 0);
        unsigned char *v1 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        unsigned char *v2 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        shm_unlink(name);
        cr_assert(v1 != MAP_FAILED && v2 != MAP_FAILED);
        cr_assert_neq(v1, v2, "two mappings at two addresses");

        eng_arena_t a1, a2;
        /* Nothing formatted yet: the magic is 0. */
        cr_assert_eq(eng_arena_attach(&a2, v2, size), -EPROTO);
        eng_arena_cfg_t cfg = {
            .kind = kind, .record_size = 256, .min_class_shift = 12, .max_class_shift = 20};
        cr_assert_eq(eng_arena_format(&a1, v1, size, &cfg), 0);
        cr_assert_eq(eng_arena_attach(&a2, v2, size - 4096), -EUCLEAN, "wrong size");
        cr_assert_eq(eng_arena_attach(&a2, v2, size + 4096), -EUCLEAN, "wrong size");
        cr_assert_eq(eng_arena_attach(&a2, v2, 32), -EINVAL, "smaller than the header");
        cr_assert_eq(eng_arena_attach(&a2, NULL, size), -EINVAL);
        cr_assert_eq(eng_arena_attach(&a2, v2, size), 0);
        cr_assert_eq(eng_arena_kind(&a2), kind);

        /* Allocate in one view, see and free in the other. */
        uint64_t off[3];
        uint64_t len[3] = {100, 5000, 300000};
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(eng_arena_alloc(&a1, len[i], 40 + i, &off[i]), 0);
                fill(&a1, off[i], len[i], 77 + i);
        }
        for (int i = 0; i < 3; i++) {
                cr_assert(intact(&a2, off[i], len[i], 77 + i), "%s: view 2 sees view 1's data",
                          KN(&a2));
                cr_assert_eq(eng_arena_owner(&a2, off[i]), 40u + i);
                cr_assert_eq(eng_arena_capacity(&a2, off[i]), eng_arena_capacity(&a1, off[i]));
                cr_assert_eq((unsigned char *)eng_arena_ptr(&a2, off[i], 1) - v2,
                             (unsigned char *)eng_arena_ptr(&a1, off[i], 1) - v1);
        }
        cr_assert_eq(eng_arena_free(&a2, off[1]), 0);
        cr_assert_eq(eng_arena_free(&a1, off[1]), -EALREADY, "freed in view 2, seen in view 1");
        cr_assert_eq(eng_arena_owner(&a1, off[1]), 0);
        uint64_t r;
        cr_assert_eq(eng_arena_rec_alloc(&a2, 9, &r), 0);
        cr_assert_eq(eng_arena_rec_index(&a1, r), 0);
        cr_assert_eq(eng_arena_rec_free(&a1, r), 0);
        cr_assert_eq(eng_arena_rec_free(&a2, r), -EALREADY);
        ASSERT_ARENA_OK(&a1, "view 1");
        ASSERT_ARENA_OK(&a2, "view 2");
        eng_arena_stats_t s1 = stats_of(&a1), s2 = stats_of(&a2);
        cr_assert_eq(memcmp(&s1, &s2, sizeof s1), 0, "both views report the same stats");
        cr_assert_eq(s1.buf_used_blocks, 2);
        cr_assert_eq(eng_arena_free(&a2, off[0]), 0);
        cr_assert_eq(eng_arena_free(&a1, off[2]), 0);
        ASSERT_ARENA_OK(&a2, "all freed");

        /* A later attach still works, and a trashed magic is refused. */
        eng_arena_t a3;
        cr_assert_eq(eng_arena_attach(&a3, v1, size), 0);
        uint32_t magic;
        memcpy(&magic, v2, 4);
        uint32_t bad = magic ^ 1u;
        memcpy(v2, &bad, 4);
        cr_assert_eq(eng_arena_attach(&a3, v1, size), -EPROTO, "bad magic");
        memcpy(v2, &magic, 4);
        cr_assert_eq(eng_arena_attach(&a3, v1, size), 0);
        munmap(v1, size);
        munmap(v2, size);
}

/* ---- exhaustion, exact fit, oversized --------------------------------------------- */

TEST_BOTH_KINDS(exhaustion_then_recovery, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        const uint64_t len = 3000;
        enum { MAXN = 4096 };
        static uint64_t off[MAXN];
        eng_arena_stats_t st0 = stats_of(a);

        for (int round = 0; round < 2; round++) {
                uint64_t n = 0;
                int rc;
                while ((rc = eng_arena_alloc(a, len, 1 + round, &off[n])) == 0) {
                        cr_assert(eng_arena_capacity(a, off[n]) >= len);
                        fill(a, off[n], len, n);
                        cr_assert_lt(++n, MAXN);
                }
                cr_assert_eq(rc, -ENOMEM, "%s: round %d: rc %d", KN(a), round, rc);
                eng_arena_stats_t st = stats_of(a);
                cr_assert_eq(st.failed, 2 * (uint64_t)round + 1, "%s: failed counter", KN(a));
                cr_assert_eq(st.buf_used_blocks, n);
                /* Exhaustion means full: less than one superblock (lock-free) or one block
                 * (mutex) of the space above the records is left unused. */
                uint64_t span = st.top - st.rec_top;
                if (kind == ENG_ARENA_LOCKFREE) {
                        cr_assert_eq(n, (span >> 20) * (MIB / 4096), "%s: n %llu", KN(a),
                                     (unsigned long long)n);
                } else {
                        cr_assert_eq(n, span / (3008 + ENG_ARENA_HDR_BYTES), "%s: n %llu", KN(a),
                                     (unsigned long long)n);
                }
                cr_assert_eq(eng_arena_alloc(a, len, 1, &off[n]), -ENOMEM);
                cr_assert_eq(stats_of(a).failed, 2 * (uint64_t)round + 2);
                ASSERT_ARENA_OK(a, "exhausted");
                for (uint64_t i = 0; i < n; i++)
                        cr_assert(intact(a, off[i], len, i), "%s: block %llu overwritten", KN(a),
                                  (unsigned long long)i);

                /* Free everything (odd ones first), checking at quiescent points. */
                for (uint64_t i = 1; i < n; i += 2)
                        cr_assert_eq(eng_arena_free(a, off[i]), 0);
                ASSERT_ARENA_OK(a, "half freed");
                for (uint64_t i = 0; i < n; i += 2)
                        cr_assert_eq(eng_arena_free(a, off[i]), 0);
                ASSERT_ARENA_OK(a, "all freed");
                st = stats_of(a);
                cr_assert_eq(st.buf_used_blocks, 0);
                cr_assert_eq(st.buf_used_bytes, 0);
                if (kind == ENG_ARENA_MUTEX) {
                        /* Everything coalesced and went back to the gap. */
                        cr_assert_eq(st.buf_bottom, st.top);
                        cr_assert_eq(st.buf_free_blocks, 0);
                } else {
                        /* The blocks stay carved, on the class list. */
                        cr_assert_eq(st.cls[0].free_blocks, n);
                        cr_assert_eq(st.buf_free_bytes, st.top - st.buf_bottom);
                }
        }
        /* After recovery the largest request fits again (the mutex arena coalesced on every
         * free; the lock-free one merges buddies when an allocation would fail). */
        uint64_t big;
        cr_assert_eq(eng_arena_alloc(a, eng_arena_max_alloc(a), 5, &big), 0, "%s", KN(a));
        cr_assert_eq(eng_arena_free(a, big), 0);
        cr_assert_eq(eng_arena_alloc(a, 4096 - ENG_ARENA_HDR_BYTES, 5, &big), 0);
        cr_assert_eq(eng_arena_free(a, big), 0);
        cr_assert_eq(stats_of(a).bad_frees, st0.bad_frees);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/*
 * ENOMEM is documented as transient ("callers wait or retry"): once everything is free again,
 * the largest request fits, whatever sizes were used before. The headers of the small blocks
 * it was merged from are still inside the big block: offsets pointing at them must be refused
 * and change nothing.
 */
TEST_BOTH_KINDS(large_request_after_small_blocks_freed, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        enum { MAXN = 2048 };
        static uint64_t off[MAXN];
        uint64_t n = 0, big;
        while (eng_arena_alloc(a, 4000, 1, &off[n]) == 0) {
                fill(a, off[n], 4000, n);
                cr_assert_lt(++n, MAXN);
        }
        for (uint64_t i = 0; i < n; i++)
                cr_assert_eq(eng_arena_free(a, off[i]), 0);
        ASSERT_ARENA_OK(a, "all freed");
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.buf_used_blocks, 0);
        uint64_t max = eng_arena_max_alloc(a);
        int rc = eng_arena_alloc(a, max, 2, &big);
        cr_assert_eq(rc, 0,
                     "%s: alloc(max_alloc = %llu) = %d with the arena empty (%llu bytes free in "
                     "%llu blocks, gap %llu bytes)",
                     KN(a), (unsigned long long)max, rc, (unsigned long long)st.buf_free_bytes,
                     (unsigned long long)st.buf_free_blocks,
                     (unsigned long long)(st.buf_bottom - st.rec_top));
        ASSERT_ARENA_OK(a, "big allocated");
        st = stats_of(a);
        if (kind == ENG_ARENA_LOCKFREE) {
                /* Every superblock was merged back whole. */
                uint64_t nsb = (st.top - st.buf_bottom) >> 20;
                cr_assert_eq(st.cls[st.nclasses - 1].free_blocks, nsb - 1);
                cr_assert_eq(st.buf_free_blocks, nsb - 1, "nothing smaller is left");
        }

        /* Offsets of the old small blocks: inside the big one now. */
        eng_arena_stats_t s0 = stats_of(a);
        uint64_t inner = 0;
        for (uint64_t i = 0; i < n; i++) {
                if (off[i] <= big || off[i] >= big + max)
                        continue;
                inner++;
                rc = eng_arena_free(a, off[i]);
                cr_assert(rc == -EALREADY || rc == -EINVAL, "%s: free(old block %llu) = %d", KN(a),
                          (unsigned long long)off[i], rc);
                cr_assert_eq(eng_arena_owner(a, off[i]), 0);
                cr_assert_eq(eng_arena_capacity(a, off[i]), 0);
        }
        cr_assert_gt(inner, 100);
        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "stale inner headers");
        cr_assert_eq(eng_arena_owner(a, big), 2);
        ASSERT_ARENA_OK(a, "stale inner headers");
        fill(a, big, max, 77);
        for (uint64_t i = 0; i < n; i++)
                if (off[i] > big && off[i] < big + max)
                        cr_assert_eq(eng_arena_free(a, off[i]), -EINVAL,
                                     "%s: an offset inside a live block's payload", KN(a));
        cr_assert(intact(a, big, max, 77));
        cr_assert_eq(eng_arena_free(a, big), 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(exact_fit, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t max = eng_arena_max_alloc(a), off;

        /* The largest request, exactly. */
        cr_assert_eq(eng_arena_alloc(a, max, 1, &off), 0, "%s: alloc(max_alloc)", KN(a));
        cr_assert_eq(eng_arena_capacity(a, off), max);
        cr_assert_not_null(eng_arena_ptr(a, off, max));
        fill(a, off, max, 1);
        ASSERT_ARENA_OK(a, "max allocated");
        cr_assert(intact(a, off, max, 1));
        cr_assert_eq(eng_arena_free(a, off), 0);
        ASSERT_ARENA_OK(a, "max freed");

        /* capacity >= len for awkward lengths; the exact value each kind promises. */
        const uint64_t lens[] = {0,    1,    63,   64,    65,    127,    128,    4031,   4032,
                                 4033, 4095, 4096, 65472, 65473, 100000, 524224, 524225, 1000000};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
                uint64_t len = lens[i];
                if (len > max)
                        continue;
                cr_assert_eq(eng_arena_alloc(a, len, 2, &off), 0, "%s: len %llu", KN(a),
                             (unsigned long long)len);
                uint64_t cap = eng_arena_capacity(a, off);
                cr_assert_geq(cap, len);
                if (kind == ENG_ARENA_LOCKFREE) {
                        uint64_t blk = 4096;
                        while (blk < len + ENG_ARENA_HDR_BYTES)
                                blk <<= 1;
                        cr_assert_eq(cap, blk - ENG_ARENA_HDR_BYTES, "%s: len %llu cap %llu", KN(a),
                                     (unsigned long long)len, (unsigned long long)cap);
                } else {
                        uint64_t want = (len + 63) & ~(uint64_t)63;
                        cr_assert_eq(cap, want < 64 ? 64 : want, "%s: len %llu cap %llu", KN(a),
                                     (unsigned long long)len, (unsigned long long)cap);
                }
                fill(a, off, cap, len);
                cr_assert_eq(eng_arena_free(a, off), 0);
        }
        ASSERT_ARENA_OK(a, "sweep");

        if (kind == ENG_ARENA_LOCKFREE) {
                /* 2^k - 64 is the largest payload of class 2^k; one byte more is the next class. */
                for (uint32_t k = 12; k <= 20; k++) {
                        uint64_t len = ((uint64_t)1 << k) - ENG_ARENA_HDR_BYTES;
                        eng_arena_stats_t s0 = stats_of(a);
                        cr_assert_eq(eng_arena_alloc(a, len, 3, &off), 0);
                        eng_arena_stats_t s1 = stats_of(a);
                        cr_assert_eq(s1.cls[k - 12].used_blocks, s0.cls[k - 12].used_blocks + 1,
                                     "len 2^%u-64 must be in class 2^%u", k, k);
                        cr_assert_eq(eng_arena_capacity(a, off), len);
                        cr_assert_eq((off - ENG_ARENA_HDR_BYTES) % ((uint64_t)1 << k), 0,
                                     "class 2^%u blocks are 2^%u-aligned in the region", k, k);
                        if (k < 20) {
                                uint64_t off2;
                                cr_assert_eq(eng_arena_alloc(a, len + 1, 3, &off2), 0);
                                cr_assert_eq(stats_of(a).cls[k - 11].used_blocks,
                                             s1.cls[k - 11].used_blocks + 1,
                                             "len 2^%u-63 must be in class 2^%u", k, k + 1);
                                cr_assert_eq(eng_arena_free(a, off2), 0);
                        }
                        cr_assert_eq(eng_arena_free(a, off), 0);
                }
                ASSERT_ARENA_OK(a, "classes");
        }
        fx_done(&f);
}

TEST_BOTH_KINDS(rejects_oversized_request_with_e2big, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t max = eng_arena_max_alloc(a), off = 12345;
        const uint64_t lens[] = {max + 1, max + 64, max * 2, UINT64_MAX - 63, UINT64_MAX};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
                cr_assert_eq(eng_arena_alloc(a, lens[i], 1, &off), -E2BIG, "%s: len %llu", KN(a),
                             (unsigned long long)lens[i]);
        cr_assert_eq(off, 12345, "*off untouched on failure");
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.failed, 0, "E2BIG is not an ENOMEM failure");
        cr_assert_eq(st.buf_bottom, st.top, "nothing carved");
        ASSERT_ARENA_OK(a, "after E2BIG");
        cr_assert_eq(eng_arena_alloc(a, max, 1, &off), 0);
        fx_done(&f);
}

/* ---- lock-free split, mutex coalescing ---------------------------------------------- */

Test(lockfree, split_puts_buddies_on_free_lists, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        uint64_t off;
        cr_assert_eq(eng_arena_alloc(a, 1, 1, &off), 0);
        eng_arena_stats_t st = stats_of(a);
        uint64_t sb = st.top - st.buf_bottom;
        cr_assert_eq(sb, MIB, "one superblock carved");
        uint64_t blk = off - ENG_ARENA_HDR_BYTES;
        cr_assert_eq(blk, st.buf_bottom, "the kept block is the superblock's first");
        cr_assert_eq(st.cls[0].used_blocks, 1);
        for (uint32_t c = 0; c + 1 < st.nclasses; c++)
                cr_assert_eq(st.cls[c].free_blocks, 1, "buddy of class %u on its list", c);
        cr_assert_eq(st.cls[st.nclasses - 1].free_blocks, 0);
        cr_assert_eq(st.buf_free_bytes + st.buf_used_bytes, sb);
        ASSERT_ARENA_OK(a, "split");

        /* Each buddy sits at blk + 2^(min+c): asking for class c hands out exactly it. */
        uint64_t got[8];
        for (uint32_t c = 1; c < 8; c++) {
                uint64_t len = ((uint64_t)4096 << c) - ENG_ARENA_HDR_BYTES;
                cr_assert_eq(eng_arena_alloc(a, len, 1, &got[c]), 0);
                cr_assert_eq(got[c], blk + ((uint64_t)4096 << c) + ENG_ARENA_HDR_BYTES,
                             "class %u buddy", c);
        }
        cr_assert_eq(stats_of(a).buf_bottom, st.buf_bottom, "no new superblock");
        for (uint32_t c = 1; c < 8; c++)
                cr_assert_eq(eng_arena_free(a, got[c]), 0);

        /* Free and re-allocate: the same block comes back, nothing new is carved. */
        cr_assert_eq(eng_arena_free(a, off), 0);
        cr_assert_eq(stats_of(a).cls[0].free_blocks, 2);
        uint64_t again;
        cr_assert_eq(eng_arena_alloc(a, 100, 2, &again), 0);
        cr_assert_eq(again, off, "LIFO reuse of the freed block");
        cr_assert_eq(eng_arena_owner(a, again), 2);
        cr_assert_eq(stats_of(a).buf_bottom, st.buf_bottom);
        cr_assert_eq(eng_arena_free(a, again), 0);
        ASSERT_ARENA_OK(a, "reused");
        fx_done(&f);
}

Test(mutex, coalesces_adjacent_free_blocks, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_MUTEX, 8 * MIB, 256, 12, 20);
        const uint64_t len = 10000, need = 10048 + ENG_ARENA_HDR_BYTES; /* len rounded to 64 */
        uint64_t o[4];
        for (int i = 0; i < 4; i++) {
                cr_assert_eq(eng_arena_alloc(a, len, 1, &o[i]), 0);
                cr_assert_eq(eng_arena_capacity(a, o[i]) + ENG_ARENA_HDR_BYTES, need);
                if (i > 0)
                        cr_assert_eq(o[i - 1] - o[i], need, "carved downwards, adjacent");
        }
        cr_assert_eq(eng_arena_free(a, o[0]), 0);
        cr_assert_eq(eng_arena_free(a, o[2]), 0);
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.buf_free_blocks, 2, "not adjacent: two free blocks");
        ASSERT_ARENA_OK(a, "two holes");
        cr_assert_eq(eng_arena_free(a, o[1]), 0);
        st = stats_of(a);
        cr_assert_eq(st.buf_free_blocks, 1, "merged with both neighbours");
        cr_assert_eq(st.buf_free_bytes, 3 * need);
        ASSERT_ARENA_OK(a, "merged");

        /* First fit takes the tail of a larger block: a small request lands at its top. */
        uint64_t s;
        cr_assert_eq(eng_arena_alloc(a, 100, 2, &s), 0);
        /* 100 B takes 128 + a 64-byte header; the payload starts 128 below the end. */
        cr_assert_eq(s, o[0] - ENG_ARENA_HDR_BYTES + need - 128, "tail of the merged block");
        cr_assert_eq(eng_arena_free(a, s), 0);
        /* The whole merged extent serves one request of its size. */
        uint64_t m;
        cr_assert_eq(eng_arena_alloc(a, 3 * need - ENG_ARENA_HDR_BYTES, 2, &m), 0);
        cr_assert_eq(m, o[2], "the merged block starts at the lowest of the three");
        cr_assert_eq(stats_of(a).buf_free_blocks, 0);
        cr_assert_eq(eng_arena_free(a, m), 0);

        /* Freeing the block that touches buf_bottom returns it and the merged extent above. */
        cr_assert_eq(eng_arena_free(a, o[3]), 0);
        st = stats_of(a);
        cr_assert_eq(st.buf_bottom, st.top, "all back to the gap");
        cr_assert_eq(st.buf_free_blocks, 0);
        ASSERT_ARENA_OK(a, "empty");
        fx_done(&f);
}

/* ---- the two regions meeting -------------------------------------------------------- */

/* Buffers first, records fill the rest; then what freeing buffers gives back to records. */
TEST_BOTH_KINDS(records_and_buffers_meet, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        const uint64_t len = 60000;
        enum { MAXB = 128, MAXR = 16384 };
        static uint64_t b[MAXB], r[MAXR];
        uint64_t nb = 0, nr = 0;
        while (eng_arena_alloc(a, len, 1, &b[nb]) == 0) {
                fill(a, b[nb], len, nb);
                cr_assert_lt(++nb, MAXB);
        }
        while (eng_arena_rec_alloc(a, 2, &r[nr]) == 0) {
                memset(eng_arena_ptr(a, r[nr], 256), 0xa5, 256);
                cr_assert_lt(++nr, MAXR);
        }
        eng_arena_stats_t st = stats_of(a);
        cr_assert_gt(nr, 0);
        cr_assert_gt(st.rec_top + st.rec_stride, st.buf_bottom, "%s: the gap is used up", KN(a));
        cr_assert_leq(st.rec_top, st.buf_bottom);
        cr_assert_eq(eng_arena_rec_slots(a), nr);
        cr_assert_eq(eng_arena_rec_alloc(a, 2, &r[nr]), -ENOMEM);
        cr_assert_eq(eng_arena_alloc(a, len, 1, &b[nb]), -ENOMEM);
        ASSERT_ARENA_OK(a, "met");

        uint64_t more = 0;
        if (kind == ENG_ARENA_MUTEX) {
                /* b[0] is highest; freeing it leaves a hole that only buffers can use. */
                cr_assert_eq(eng_arena_free(a, b[0]), 0);
                cr_assert_eq(eng_arena_rec_alloc(a, 2, &r[nr]), -ENOMEM, "hole is not the gap");
                uint64_t again;
                cr_assert_eq(eng_arena_alloc(a, len, 1, &again), 0);
                cr_assert_eq(again, b[0], "the hole is reused for a buffer");
                fill(a, again, len, 0);
                /* b[nb-1] is lowest and touches buf_bottom: freeing it widens the gap. */
                uint64_t rt = stats_of(a).rec_top;
                uint64_t need = eng_arena_capacity(a, b[nb - 1]) + ENG_ARENA_HDR_BYTES;
                cr_assert_eq(need, 60032 + ENG_ARENA_HDR_BYTES);
                cr_assert_eq(eng_arena_free(a, b[nb - 1]), 0);
                st = stats_of(a);
                cr_assert_eq(st.buf_bottom, b[nb - 1] - ENG_ARENA_HDR_BYTES + need,
                             "the freed block went back to the gap");
                while (eng_arena_rec_alloc(a, 2, &r[nr]) == 0) {
                        cr_assert_lt(++nr, MAXR);
                        more++;
                }
                cr_assert_eq(more, (st.buf_bottom - rt) / st.rec_stride, "%s: %llu more records",
                             KN(a), (unsigned long long)more);
                cr_assert_gt(more, 100);
                nb--;
        } else {
                /* Lock-free: carved superblocks never return to the gap. */
                uint64_t bb = st.buf_bottom;
                for (uint64_t i = 0; i < nb; i++)
                        cr_assert_eq(eng_arena_free(a, b[i]), 0);
                st = stats_of(a);
                cr_assert_eq(st.buf_bottom, bb);
                cr_assert_eq(st.buf_used_blocks, 0);
                cr_assert_eq(eng_arena_rec_alloc(a, 2, &r[nr]), -ENOMEM,
                             "buffer space is not given to records");
                ASSERT_ARENA_OK(a, "buffers freed");
                /* ...but it serves buffers again, all of it. */
                for (uint64_t i = 0; i < nb; i++) {
                        cr_assert_eq(eng_arena_alloc(a, len, 1, &b[i]), 0, "i=%llu",
                                     (unsigned long long)i);
                        fill(a, b[i], len, i);
                }
        }
        ASSERT_ARENA_OK(a, "after regrowth");
        for (uint64_t i = 0; i < nb; i++)
                cr_assert(intact(a, b[i], len, i), "%s: buffer %llu", KN(a), (unsigned long long)i);
        for (uint64_t i = 0; i < nr; i++)
                cr_assert_eq(eng_arena_rec_free(a, r[i]), 0);
        for (uint64_t i = 0; i < nb; i++)
                cr_assert_eq(eng_arena_free(a, b[i]), 0);
        ASSERT_ARENA_OK(a, "all freed");
        fx_done(&f);
}

/* Records first: the gap fills with slots; freed slots are reused but never become buffers. */
TEST_BOTH_KINDS(records_fill_gap_and_are_reused, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        uint64_t max = eng_arena_rec_max_slots(a), n = 0, off;
        uint64_t *r = calloc(max + 1, sizeof *r);
        while (eng_arena_rec_alloc(a, 3, &r[n]) == 0) {
                cr_assert_eq(eng_arena_rec_index(a, r[n]), (int64_t)n);
                cr_assert_eq(eng_arena_rec_offset(a, n), r[n]);
                cr_assert_leq(++n, max);
        }
        cr_assert_eq(n, max, "%s: every slot could be carved", KN(a));
        cr_assert_eq(eng_arena_rec_slots(a), max);
        cr_assert_eq(eng_arena_alloc(a, 65536, 1, &off), -ENOMEM);
        ASSERT_ARENA_OK(a, "records full");
        for (uint64_t i = 0; i < n; i++)
                cr_assert_eq(eng_arena_rec_free(a, r[i]), 0);
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.rec_used, 0);
        cr_assert_eq(st.rec_free, n);
        cr_assert_eq(eng_arena_rec_slots(a), max, "slots are never uncarved");
        cr_assert_eq(eng_arena_alloc(a, 65536, 1, &off), -ENOMEM, "record space stays records");
        ASSERT_ARENA_OK(a, "records freed");
        /* Every freed slot is handed out exactly once again, most recent first. */
        unsigned char *seen = calloc(max, 1);
        for (uint64_t i = 0; i < n; i++) {
                cr_assert_eq(eng_arena_rec_alloc(a, 4, &off), 0);
                int64_t idx = eng_arena_rec_index(a, off);
                cr_assert(idx >= 0 && (uint64_t)idx < max);
                cr_assert_eq(seen[idx], 0, "slot %lld handed out twice", (long long)idx);
                seen[idx] = 1;
                if (i == 0)
                        cr_assert_eq(off, r[n - 1], "LIFO");
        }
        cr_assert_eq(eng_arena_rec_alloc(a, 4, &off), -ENOMEM);
        ASSERT_ARENA_OK(a, "reused");
        free(seen);
        free(r);
        fx_done(&f);
}

/* ---- rejected frees ----------------------------------------------------------------- */

TEST_BOTH_KINDS(rejects_double_free, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t o[3];
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(eng_arena_alloc(a, 5000, 1, &o[i]), 0);
                fill(a, o[i], 5000, i);
        }
        cr_assert_eq(eng_arena_free(a, o[1]), 0);
        eng_arena_stats_t s0 = stats_of(a);
        cr_assert_eq(eng_arena_free(a, o[1]), -EALREADY, "%s", KN(a));
        cr_assert_eq(eng_arena_free(a, o[1]), -EALREADY, "%s", KN(a));
        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "double free");
        cr_assert_eq(s1.bad_frees, s0.bad_frees + 2);
        ASSERT_ARENA_OK(a, "double free");
        /* Had the block been pushed twice, two allocations would both get it. */
        uint64_t x, y;
        cr_assert_eq(eng_arena_alloc(a, 5000, 2, &x), 0);
        cr_assert_eq(eng_arena_alloc(a, 5000, 2, &y), 0);
        cr_assert_neq(x, y);
        cr_assert(intact(a, o[0], 5000, 0) && intact(a, o[2], 5000, 2));
        cr_assert_eq(eng_arena_free(a, x), 0);
        cr_assert_eq(eng_arena_free(a, y), 0);
        cr_assert_eq(eng_arena_free(a, o[0]), 0);
        cr_assert_eq(eng_arena_free(a, o[2]), 0);
        cr_assert_eq(eng_arena_free(a, o[2]), kind == ENG_ARENA_MUTEX ? -EINVAL : -EALREADY,
                     "mutex: the lowest block went back to the gap, so it is no block at all");
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(rejects_record_double_free, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        uint64_t r[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(eng_arena_rec_alloc(a, 5, &r[i]), 0);
        cr_assert_eq(eng_arena_rec_free(a, r[1]), 0);
        eng_arena_stats_t s0 = stats_of(a);
        cr_assert_eq(eng_arena_rec_free(a, r[1]), -EALREADY, "%s", KN(a));
        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "record double free");
        cr_assert_eq(s1.bad_frees, s0.bad_frees + 1);
        ASSERT_ARENA_OK(a, "record double free");
        uint64_t x, y;
        cr_assert_eq(eng_arena_rec_alloc(a, 6, &x), 0);
        cr_assert_eq(eng_arena_rec_alloc(a, 6, &y), 0);
        cr_assert_eq(x, r[1], "the freed slot comes back once");
        cr_assert_eq(y, eng_arena_rec_offset(a, 3), "then a fresh slot");
        cr_assert_eq(eng_arena_rec_slots(a), 4);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(rejects_invalid_offsets, 20)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t big, small, r1, r2;
        const uint64_t big_len = 200000;
        cr_assert_eq(eng_arena_alloc(a, big_len, 1, &big), 0);
        cr_assert_eq(eng_arena_alloc(a, 100, 1, &small), 0);
        fill(a, big, big_len, 11);
        fill(a, small, 100, 12);
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &r1), 0);
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &r2), 0);
        memset(eng_arena_ptr(a, r1, 256), 0x5a, 256);
        cr_assert_eq(eng_arena_rec_free(a, r2), 0);
        eng_arena_stats_t s0 = stats_of(a);

        struct {
                uint64_t off;
                const char *what;
        } bad[] = {
            {0, "zero"},
            {8, "8"},
            {64, "inside the arena header"},
            {s0.rec_base, "rec_base"},
            {r1, "a live record body"},
            {r1 - ENG_ARENA_HDR_BYTES, "a record slot header"},
            {r1 + 64, "inside a record body"},
            {r2, "a freed record"},
            {s0.rec_top, "rec_top"},
            {s0.buf_bottom, "buf_bottom (block header, not payload)"},
            {big + 8, "misaligned by 8"},
            {big + 32, "misaligned by 32"},
            {big + 64, "inside a payload, +64"},
            {big + 4096, "inside a payload, +4096"},
            {big + 65536, "inside a payload, +64 KiB"},
            {big - ENG_ARENA_HDR_BYTES, "the block header"},
            {f.size, "size"},
            {f.size + 64, "beyond size"},
            {s0.top, "top"},
            {(uint64_t)1 << 40, "far beyond size"},
            {(uint64_t)1 << 63, "2^63"},
            {UINT64_MAX & ~(uint64_t)63, "UINT64_MAX & ~63"},
            {UINT64_MAX, "UINT64_MAX"},
        };
        uint64_t nbad = 0;
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                int rc = eng_arena_free(a, bad[i].off);
                cr_assert_eq(rc, -EINVAL, "%s: free(%s = %llu) = %d", KN(a), bad[i].what,
                             (unsigned long long)bad[i].off, rc);
                nbad++;
                cr_assert_eq(eng_arena_capacity(a, bad[i].off), 0, "%s: capacity(%s)", KN(a),
                             bad[i].what);
                cr_assert_eq(eng_arena_owner(a, bad[i].off), 0, "%s: owner(%s)", KN(a),
                             bad[i].what);
        }
        /* Buffer offsets and garbage are not records either. */
        const uint64_t not_rec[] = {0, 64, big, small, big + 64, r1 + 64, r1 + 8, f.size, s0.top};
        for (size_t i = 0; i < sizeof not_rec / sizeof not_rec[0]; i++) {
                cr_assert_eq(eng_arena_rec_index(a, not_rec[i]), -1, "%s: rec_index(%llu)", KN(a),
                             (unsigned long long)not_rec[i]);
                cr_assert_eq(eng_arena_rec_free(a, not_rec[i]), -EINVAL, "%s: rec_free(%llu)",
                             KN(a), (unsigned long long)not_rec[i]);
                nbad++;
        }
        cr_assert_null(eng_arena_ptr(a, 0, 1));
        cr_assert_null(eng_arena_ptr(a, f.size, 1));
        cr_assert_null(eng_arena_ptr(a, f.size - 8, 9));
        cr_assert_null(eng_arena_ptr(a, 64, UINT64_MAX));
        cr_assert_not_null(eng_arena_ptr(a, f.size - 8, 8));

        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "invalid frees");
        cr_assert_eq(s1.bad_frees, s0.bad_frees + nbad);
        ASSERT_ARENA_OK(a, "after invalid frees");
        cr_assert(intact(a, big, big_len, 11) && intact(a, small, 100, 12), "%s: data intact",
                  KN(a));
        const unsigned char *rb = eng_arena_ptr(a, r1, 256);
        for (int i = 0; i < 256; i++)
                cr_assert_eq(rb[i], 0x5a, "%s: record body intact", KN(a));
        cr_assert_eq(eng_arena_owner(a, big), 1);
        cr_assert_eq(eng_arena_free(a, big), 0);
        cr_assert_eq(eng_arena_free(a, small), 0);
        cr_assert_eq(eng_arena_rec_free(a, r1), 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/*
 * A record offset near 2^64 that is congruent to a slot body: off + stride - 64 wraps
 * around, so a range check written as "off + stride - 64 > rec_top" passes. Such an offset
 * must still be rejected, and must not make rec_free touch memory outside the region.
 */
TEST_BOTH_KINDS(rejects_record_offset_that_wraps, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        uint64_t r;
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &r), 0);
        eng_arena_stats_t st = stats_of(a);
        uint64_t stride = st.rec_stride;
        uint64_t want = (st.rec_base + ENG_ARENA_HDR_BYTES) % stride;
        uint64_t off = UINT64_MAX - ((UINT64_MAX - want) % stride); /* largest such offset */
        cr_assert_eq(off % stride, want);
        cr_assert_gt(off, UINT64_MAX - (stride - ENG_ARENA_HDR_BYTES),
                     "precondition: off + stride - 64 wraps (stride %llu)",
                     (unsigned long long)stride);
        int64_t idx = eng_arena_rec_index(a, off);
        cr_assert_eq(idx, -1, "%s: rec_index(%#llx) = %lld: a slot index far beyond the region",
                     KN(a), (unsigned long long)off, (long long)idx);
        cr_assert_eq(eng_arena_rec_free(a, off), -EINVAL);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/* ---- reclaim ------------------------------------------------------------------------ */

TEST_BOTH_KINDS(reclaim_frees_exactly_one_owner, 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 16 * MIB, 256, 12, 20);
        enum { OWNERS = 8, PER = 12 };
        uint64_t off[OWNERS + 1][PER], len[OWNERS + 1][PER];
        bool live[OWNERS + 1][PER];
        uint64_t seed = 42;
        /* Round-robin so every owner's blocks have other owners' blocks as neighbours. */
        for (int i = 0; i < PER; i++) {
                for (uint32_t o = 1; o <= OWNERS; o++) {
                        len[o][i] = 1 + xorshift(&seed) % (i % 3 == 0 ? 200000 : 9000);
                        cr_assert_eq(eng_arena_alloc(a, len[o][i], o, &off[o][i]), 0);
                        fill(a, off[o][i], len[o][i], o * 1000 + i);
                        live[o][i] = true;
                }
        }
        /* Some holes, including two of owner 3's own blocks (freed by hand, not reclaimed). */
        const int holes[][2] = {{3, 0}, {3, 5}, {2, 4}, {4, 4}, {7, 1}, {1, 11}};
        for (size_t h = 0; h < sizeof holes / sizeof holes[0]; h++) {
                int o = holes[h][0], i = holes[h][1];
                cr_assert_eq(eng_arena_free(a, off[o][i]), 0);
                live[o][i] = false;
        }
        ASSERT_ARENA_OK(a, "before reclaim");
        uint64_t live_total = OWNERS * PER - sizeof holes / sizeof holes[0];
        cr_assert_eq(stats_of(a).buf_used_blocks, live_total);

        int64_t n = eng_arena_reclaim(a, 3);
        cr_assert_eq(n, PER - 2, "%s: reclaim(3) returned %lld", KN(a), (long long)n);
        ASSERT_ARENA_OK(a, "after reclaim");
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.buf_used_blocks, live_total - (PER - 2));
        for (int i = 0; i < PER; i++) {
                cr_assert_eq(eng_arena_owner(a, off[3][i]), 0);
                cr_assert_eq(eng_arena_capacity(a, off[3][i]), 0);
                live[3][i] = false;
        }
        for (uint32_t o = 1; o <= OWNERS; o++)
                for (int i = 0; i < PER; i++)
                        if (live[o][i]) {
                                cr_assert_eq(eng_arena_owner(a, off[o][i]), o);
                                cr_assert(intact(a, off[o][i], len[o][i], o * 1000 + i),
                                          "%s: owner %u block %d damaged", KN(a), o, i);
                        }
        cr_assert_eq(eng_arena_reclaim(a, 3), 0, "nothing left to reclaim");
        cr_assert_eq(eng_arena_reclaim(a, 99), 0);
        cr_assert_eq(eng_arena_reclaim(a, 0), -EINVAL);

        /* The reclaimed space is reused without touching anybody else. */
        for (int i = 0; i < PER; i++) {
                cr_assert_eq(eng_arena_alloc(a, len[3][i], 30, &off[0][i]), 0);
                fill(a, off[0][i], len[3][i], 999);
        }
        for (uint32_t o = 1; o <= OWNERS; o++)
                for (int i = 0; i < PER; i++)
                        if (live[o][i])
                                cr_assert(intact(a, off[o][i], len[o][i], o * 1000 + i),
                                          "%s: owner %u block %d damaged by reuse", KN(a), o, i);
        cr_assert_eq(eng_arena_reclaim(a, 30), PER);
        for (uint32_t o = 1; o <= OWNERS; o++)
                if (o != 3)
                        cr_assert_eq(eng_arena_reclaim(a, o),
                                     PER - (o == 2 || o == 4 || o == 7 || o == 1));
        st = stats_of(a);
        cr_assert_eq(st.buf_used_blocks, 0);
        if (kind == ENG_ARENA_MUTEX)
                cr_assert_eq(st.buf_bottom, st.top);
        ASSERT_ARENA_OK(a, "all reclaimed");
        fx_done(&f);
}

/* ---- stats, space-waiting word ------------------------------------------------------ */

struct live_blk {
        uint64_t off, cap, seed;
};

static void assert_stats_coherent(eng_arena_t *a, const struct live_blk *blk, uint64_t nblk,
                                  uint64_t nrec, uint64_t nfailed, uint64_t nbad, uint64_t nallocs,
                                  uint64_t nfrees, int step)
{
        ASSERT_ARENA_OK(a, "checkpoint");
        eng_arena_stats_t st = stats_of(a);
        uint64_t bytes = 0;
        for (uint64_t i = 0; i < nblk; i++) {
                bytes += blk[i].cap + ENG_ARENA_HDR_BYTES;
                cr_assert(intact(a, blk[i].off, blk[i].cap, blk[i].seed), "%s: step %d block %llu",
                          KN(a), step, (unsigned long long)i);
        }
        const char *k = KN(a);
        cr_assert_eq(st.buf_used_blocks, nblk, "%s: step %d", k, step);
        cr_assert_eq(st.buf_used_bytes, bytes, "%s: step %d", k, step);
        cr_assert_eq(st.buf_used_bytes + st.buf_free_bytes, st.top - st.buf_bottom, "%s: step %d",
                     k, step);
        cr_assert_eq(st.rec_used, nrec, "%s: step %d", k, step);
        cr_assert_eq(st.rec_used + st.rec_free, eng_arena_rec_slots(a), "%s: step %d", k, step);
        cr_assert_eq(st.rec_top, st.rec_base + eng_arena_rec_slots(a) * st.rec_stride);
        cr_assert_eq(st.failed, nfailed, "%s: step %d", k, step);
        cr_assert_eq(st.bad_frees, nbad, "%s: step %d", k, step);
        if (st.nclasses) {
                uint64_t al = 0, fr = 0, fb = 0;
                for (uint32_t c = 0; c < st.nclasses; c++) {
                        cr_assert_eq(st.cls[c].allocs - st.cls[c].frees, st.cls[c].used_blocks,
                                     "%s: step %d class %u", k, step, c);
                        cr_assert_eq(st.cls[c].block_bytes, (uint64_t)4096 << c);
                        al += st.cls[c].allocs;
                        fr += st.cls[c].frees;
                        fb += st.cls[c].free_blocks;
                }
                cr_assert_eq(al, nallocs, "%s: step %d", k, step);
                cr_assert_eq(fr, nfrees, "%s: step %d", k, step);
                cr_assert_eq(fb, st.buf_free_blocks);
        }
}

TEST_BOTH_KINDS(stats_coherent_after_mixed_operations, 60)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        enum { MAXL = 256, MAXR = 512 };
        static struct live_blk blk[MAXL];
        static uint64_t rec[MAXR];
        uint64_t nblk = 0, nrec = 0, nfailed = 0, nbad = 0, nallocs = 0, nfrees = 0;
        uint64_t seed = 0x1234567;
        for (int step = 1; step <= 6000; step++) {
                uint64_t x = xorshift(&seed), op = x % 100;
                if (op < 40 && nblk < MAXL) {
                        /* log-uniform 1 B .. 512 KiB */
                        uint64_t len = 1 + (xorshift(&seed) & (((uint64_t)1 << (x >> 8) % 20) - 1));
                        uint64_t off;
                        int rc = eng_arena_alloc(a, len, 1 + (uint32_t)(x >> 40) % 5, &off);
                        if (rc == -ENOMEM) {
                                nfailed++;
                        } else {
                                cr_assert_eq(rc, 0);
                                nallocs++;
                                uint64_t cap = eng_arena_capacity(a, off);
                                cr_assert_geq(cap, len);
                                blk[nblk] = (struct live_blk){off, cap, (uint64_t)step};
                                fill(a, off, cap, (uint64_t)step);
                                nblk++;
                        }
                } else if (op < 75 && nblk > 0) {
                        uint64_t i = xorshift(&seed) % nblk;
                        cr_assert(intact(a, blk[i].off, blk[i].cap, blk[i].seed));
                        cr_assert_eq(eng_arena_free(a, blk[i].off), 0);
                        nfrees++;
                        blk[i] = blk[--nblk];
                } else if (op < 85 && nrec < MAXR) {
                        int rc = eng_arena_rec_alloc(a, 7, &rec[nrec]);
                        if (rc == 0)
                                nrec++;
                        else
                                cr_assert_eq(rc, -ENOMEM);
                } else if (op < 95 && nrec > 0) {
                        uint64_t i = xorshift(&seed) % nrec;
                        cr_assert_eq(eng_arena_rec_free(a, rec[i]), 0);
                        rec[i] = rec[--nrec];
                } else if (op < 97 && nblk > 0) {
                        /* a rejected free: misaligned offset into a live block */
                        cr_assert_eq(eng_arena_free(a, blk[0].off + 8), -EINVAL);
                        nbad++;
                } else if (op < 98) {
                        uint64_t off;
                        cr_assert_eq(eng_arena_alloc(a, eng_arena_max_alloc(a) + 1, 1, &off),
                                     -E2BIG);
                } else if (nrec > 0) {
                        cr_assert_eq(eng_arena_rec_free(a, rec[0] + 64), -EINVAL);
                        nbad++;
                }
                if (step % 500 == 0)
                        assert_stats_coherent(a, blk, nblk, nrec, nfailed, nbad, nallocs, nfrees,
                                              step);
        }
        cr_assert_gt(nfailed, 0, "the sequence should also hit ENOMEM");
        while (nblk > 0) {
                cr_assert_eq(eng_arena_free(a, blk[--nblk].off), 0);
                nfrees++;
        }
        while (nrec > 0)
                cr_assert_eq(eng_arena_rec_free(a, rec[--nrec]), 0);
        assert_stats_coherent(a, blk, 0, 0, nfailed, nbad, nallocs, nfrees, 0);
        fx_done(&f);
}

TEST_BOTH_KINDS(free_bumps_word_only_with_waiters, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        uint32_t *fw = eng_arena_free_word(a), *wt = eng_arena_waiters_word(a);
        uint64_t o1, o2, o3;
        cr_assert_eq(eng_arena_alloc(a, 100, 1, &o1), 0);
        cr_assert_eq(eng_arena_alloc(a, 100, 1, &o2), 0);
        cr_assert_eq(eng_arena_alloc(a, 100, 2, &o3), 0);
        uint32_t w0 = *fw;
        cr_assert_eq(eng_arena_free(a, o1), 0);
        cr_assert_eq(*fw, w0, "no waiters, no bump");
        *wt = 1;
        cr_assert_eq(eng_arena_free(a, o2), 0);
        cr_assert_eq(*fw, w0 + 1, "a free with a waiter bumps the word");
        cr_assert_eq(eng_arena_free(a, o2), -EALREADY);
        cr_assert_eq(*fw, w0 + 1, "a rejected free does not");
        cr_assert_eq(eng_arena_reclaim(a, 2), 1);
        cr_assert_eq(*fw, w0 + 2, "reclaim bumps it");
        cr_assert_eq(eng_arena_reclaim(a, 2), 0);
        cr_assert_eq(*fw, w0 + 2, "an empty reclaim does not");
        *wt = 0;
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/*
 * Under AddressSanitizer, run the tests one at a time whatever --jobs says: Criterion 2.4.1's
 * runner leaks a few 48-byte callocs (inside libcriterion) when it runs tests in parallel, and
 * LeakSanitizer would fail the binary for it. Without ASan, --jobs is honoured.
 */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_TEST_SERIAL 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_TEST_SERIAL 1
#endif
#endif

int main(int argc, char *argv[])
{
        struct criterion_test_set *tests = criterion_initialize();
        int result = 0;
        if (criterion_handle_args(argc, argv, true)) {
#ifdef ARENA_TEST_SERIAL
                criterion_options.jobs = 1;
#endif
                result = !criterion_run_all_tests(tests);
        }
        criterion_finalize(tests);
        return result;
}
