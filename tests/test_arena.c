/*
 * test_arena.c - single-process behaviour of the arena allocator (alloc/arena.h), every
 * behaviour on both kinds: TEST_BOTH_KINDS(name) registers lockfree::name and mutex::name.
 * Kind-specific guarantees (the lock-free buddy split, the mutex arena's coalescing) have
 * their own tests under the kind's suite.
 *
 * Damage (the lock-free arena under a writer that scribbles on the segment: cut lists, refused
 * carves, walks that go on, eng_arena_heal and eng_arena_rebuild) has its own suite, damage::,
 * which reaches into the shared layout through arena_int.h to do the scribbling.
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
#include "arena_int.h" /* the shared layout, for the damage suite's scribbles */

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

/*
 * Two frees of one block in flight at once (a faulty peer's duplicate): both read the header
 * USED, the first one's CAS wins, and the block is popped and stamped for a new owner before the
 * second one's CAS. That CAS then fails on the new owner's word; it must give up (-EALREADY),
 * not retry with the word it found, which would free the new owner's allocation while it is in
 * use. The interleaving, found by SPIN (docs/models/arena.pml, CODE_FREE_RETRY), is replayed
 * here deterministically: lf_release is handed the header word as the late free read it.
 */
Test(lockfree, a_late_duplicate_free_leaves_the_next_owner_alone, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        uint64_t off, blk, w_read, bytes;
        cr_assert_eq(eng_arena_alloc(a, 1000, 1, &off), 0);
        cr_assert_eq(lf_block_of(a, off, &blk, &w_read, &bytes), 0); /* the late free's read */
        cr_assert_eq(eng_arena_free(a, off), 0);                     /* the first free wins */
        uint64_t again;
        cr_assert_eq(eng_arena_alloc(a, 1000, 2, &again), 0); /* popped, stamped for owner 2 */
        cr_assert_eq(again, off, "the free list is LIFO: the same block comes back");
        fill(a, again, 1000, 7);
        eng_arena_stats_t s0 = stats_of(a);
        cr_assert_eq(lf_release(a, blk, w_read, 0), -EALREADY,
                     "the late free must see it lost the race");
        cr_assert_eq(eng_arena_owner(a, again), 2u, "owner 2's block must stay owner 2's");
        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "late duplicate free");
        /* Had it been freed, the next allocation would get owner 2's block, in use. */
        uint64_t other;
        cr_assert_eq(eng_arena_alloc(a, 1000, 3, &other), 0);
        cr_assert_neq(other, again);
        cr_assert(intact(a, again, 1000, 7));
        cr_assert_eq(eng_arena_free(a, other), 0);
        cr_assert_eq(eng_arena_free(a, again), 0);
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

/* ---- batches: bulk allocation, deferred frees ---------------------------------------- */

/*
 * arena.h: eng_arena_alloc_bulk takes up to n blocks off the free list of len's class (never
 * splits or carves; 0 on an empty list, on the mutex arena and for owner 0);
 * eng_arena_free_later makes a block FREE at once but lists it only at eng_arena_flush (the
 * mutex arena frees at once). Class-level expectations are computed from the stats'
 * block_bytes, not from eng_arena_class_bytes (which is under test too).
 */

/* Index of the class that serves len on the lock-free arena (from the stats' geometry). */
static uint32_t class_of(const eng_arena_stats_t *st, uint64_t len)
{
        for (uint32_t c = 0; c < st->nclasses; c++)
                if (st->cls[c].block_bytes >= len + ENG_ARENA_HDR_BYTES)
                        return c;
        cr_assert_fail("no class serves %llu bytes", (unsigned long long)len);
        return 0;
}

/*
 * Allocate blocks of len for owner into held[] (each filled with its own offset as seed)
 * until at least min are held and, on the lock-free arena, len's class list is empty: the
 * list then holds exactly what the test frees next.
 */
static uint64_t hold_blocks(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *held,
                            uint64_t min, uint64_t max)
{
        uint64_t n = 0;
        for (;;) {
                eng_arena_stats_t st = stats_of(a);
                if (n >= min && (st.nclasses == 0 || st.cls[class_of(&st, len)].free_blocks == 0))
                        return n;
                cr_assert_lt(n, max, "%s: hold_blocks: the class list never emptied", KN(a));
                int rc = eng_arena_alloc(a, len, owner, &held[n]);
                cr_assert_eq(rc, 0, "%s: hold_blocks: alloc %llu: %d", KN(a), (unsigned long long)n,
                             rc);
                fill(a, held[n], len, held[n]);
                n++;
        }
}

/* Expected movement of one class's counters between two snapshots. */
struct cls_delta {
        int64_t used, freeb, allocs, frees;
};

/* Lock-free: every class moved by exactly d[c] (classes not named: not at all), and nothing
 * was carved, failed or rejected. */
static void assert_class_deltas(const eng_arena_stats_t *x, const eng_arena_stats_t *y,
                                const struct cls_delta *d, const char *ctx)
{
        const char *k = eng_arena_kind_name(x->kind);
        cr_assert_eq(y->buf_bottom, x->buf_bottom, "%s: %s: nothing carved", k, ctx);
        cr_assert_eq(y->failed, x->failed, "%s: %s: failed", k, ctx);
        cr_assert_eq(y->bad_frees, x->bad_frees, "%s: %s: bad_frees", k, ctx);
        for (uint32_t c = 0; c < x->nclasses; c++) {
                const eng_arena_class_stats_t *p = &x->cls[c], *q = &y->cls[c];
                cr_assert_eq(q->used_blocks, p->used_blocks + (uint64_t)d[c].used,
                             "%s: %s: class %u used_blocks %llu -> %llu, expected %+lld", k, ctx, c,
                             (unsigned long long)p->used_blocks, (unsigned long long)q->used_blocks,
                             (long long)d[c].used);
                cr_assert_eq(q->free_blocks, p->free_blocks + (uint64_t)d[c].freeb,
                             "%s: %s: class %u free_blocks %llu -> %llu, expected %+lld", k, ctx, c,
                             (unsigned long long)p->free_blocks, (unsigned long long)q->free_blocks,
                             (long long)d[c].freeb);
                cr_assert_eq(q->allocs, p->allocs + (uint64_t)d[c].allocs,
                             "%s: %s: class %u allocs %llu -> %llu, expected %+lld", k, ctx, c,
                             (unsigned long long)p->allocs, (unsigned long long)q->allocs,
                             (long long)d[c].allocs);
                cr_assert_eq(q->frees, p->frees + (uint64_t)d[c].frees,
                             "%s: %s: class %u frees %llu -> %llu, expected %+lld", k, ctx, c,
                             (unsigned long long)p->frees, (unsigned long long)q->frees,
                             (long long)d[c].frees);
                cr_assert_eq(q->failed, p->failed, "%s: %s: class %u failed", k, ctx, c);
        }
}

/* The same for one class c. */
static void assert_class_moved(const eng_arena_stats_t *x, const eng_arena_stats_t *y, uint32_t c,
                               struct cls_delta dc, const char *ctx)
{
        struct cls_delta d[ENG_ARENA_MAX_CLASSES];
        memset(d, 0, sizeof d);
        d[c] = dc;
        assert_class_deltas(x, y, d, ctx);
}

static bool in_set(uint64_t v, const uint64_t *set, uint64_t n)
{
        for (uint64_t i = 0; i < n; i++)
                if (set[i] == v)
                        return true;
        return false;
}

/* offs[0..n) are pairwise distinct, live, owned by owner, of capacity cap (>= len), cap-class
 * aligned (lock-free), and none of them is in not[0..nnot). Each is filled (seed = offset). */
static void assert_bulk_blocks(eng_arena_t *a, const uint64_t *offs, uint32_t n, uint64_t len,
                               uint32_t owner, const uint64_t * not, uint64_t nnot, const char *ctx)
{
        uint64_t cap = eng_arena_class_bytes(a, len);
        cr_assert_geq(cap, len, "%s: %s: class_bytes(%llu) = %llu", KN(a), ctx,
                      (unsigned long long)len, (unsigned long long)cap);
        for (uint32_t i = 0; i < n; i++) {
                uint64_t o = offs[i];
                for (uint32_t j = 0; j < i; j++)
                        cr_assert_neq(offs[j], o, "%s: %s: offset %llu handed out twice", KN(a),
                                      ctx, (unsigned long long)o);
                cr_assert(!in_set(o, not, nnot), "%s: %s: offset %llu is a live block", KN(a), ctx,
                          (unsigned long long)o);
                cr_assert_eq(eng_arena_capacity(a, o), cap, "%s: %s: block %u capacity %llu", KN(a),
                             ctx, i, (unsigned long long)eng_arena_capacity(a, o));
                cr_assert_eq(eng_arena_owner(a, o), owner, "%s: %s: block %u owner %u", KN(a), ctx,
                             i, eng_arena_owner(a, o));
                cr_assert_eq((o - ENG_ARENA_HDR_BYTES) % (cap + ENG_ARENA_HDR_BYTES), 0,
                             "%s: %s: block %u not aligned to its class", KN(a), ctx, i);
                fill(a, o, cap, o);
        }
}

TEST_BOTH_KINDS(bulk_alloc_on_empty_class_returns_zero, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        const uint64_t SENT = 0x5e5e5e5e5e5e5e5eull;
        uint64_t offs[8];
        for (int i = 0; i < 8; i++)
                offs[i] = SENT;
        eng_arena_stats_t s0 = stats_of(a), s1;
        cr_assert_eq(eng_arena_alloc_bulk(a, 3000, 5, offs, 8), 0, "%s: fresh arena", KN(a));
        s1 = stats_of(a);
        cr_assert_eq(memcmp(&s0, &s1, sizeof s0), 0, "%s: nothing carved, nothing counted", KN(a));
        ASSERT_ARENA_OK(a, "bulk on a fresh arena");

        /* Free space elsewhere. Lock-free: the first allocation splits a superblock and leaves
         * one buddy on each list 0..7, the second takes class 0's. Mutex: a hole. */
        uint64_t o[3];
        cr_assert_eq(eng_arena_alloc(a, 3000, 1, &o[0]), 0);
        cr_assert_eq(eng_arena_alloc(a, 3000, 1, &o[1]), 0);
        if (kind == ENG_ARENA_MUTEX) {
                cr_assert_eq(eng_arena_alloc(a, 3000, 1, &o[2]), 0);
                cr_assert_eq(eng_arena_free(a, o[1]), 0);
                cr_assert_eq(stats_of(a).buf_free_blocks, 1, "precondition: a 3000-byte hole");
        } else {
                s0 = stats_of(a);
                cr_assert_eq(s0.cls[0].free_blocks, 0, "precondition: class 0 list empty");
                for (uint32_t c = 1; c + 1 < s0.nclasses; c++)
                        cr_assert_eq(s0.cls[c].free_blocks, 1, "precondition: class %u buddy", c);
        }
        s0 = stats_of(a);
        cr_assert_eq(eng_arena_alloc_bulk(a, 3000, 5, offs, 8), 0,
                     "%s: never splits a larger free block", KN(a));
        cr_assert_eq(eng_arena_alloc_bulk(a, 6000, 0, offs, 8), 0, "%s: owner 0", KN(a));
        cr_assert_eq(eng_arena_alloc_bulk(a, 6000, 5, offs, 0), 0, "%s: n = 0", KN(a));
        cr_assert_eq(eng_arena_alloc_bulk(a, eng_arena_max_alloc(a) + 1, 5, offs, 8), 0);
        cr_assert_eq(eng_arena_alloc_bulk(a, UINT64_MAX, 5, offs, 8), 0);
        s1 = stats_of(a);
        cr_assert_eq(memcmp(&s0, &s1, sizeof s0), 0, "%s: refused bulks change nothing", KN(a));
        for (int i = 0; i < 8; i++)
                cr_assert_eq(offs[i], SENT, "%s: offs[%d] written by a bulk that returned 0", KN(a),
                             i);
        ASSERT_ARENA_OK(a, "refused bulks");

        /* The same list, asked properly: the refusals above were not just an empty list. */
        uint32_t got = eng_arena_alloc_bulk(a, 6000, 5, offs, 8);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_eq(got, 1, "lockfree: the class 1 buddy");
                assert_bulk_blocks(a, offs, got, 6000, 5, o, 2, "class 1 buddy");
                cr_assert_eq(offs[1], SENT);
                cr_assert_eq(eng_arena_free(a, offs[0]), 0);
        } else {
                cr_assert_eq(got, 0, "mutex: bulk is always 0");
                cr_assert_eq(eng_arena_free(a, o[2]), 0);
        }
        cr_assert_eq(eng_arena_free(a, o[0]), 0);
        if (kind == ENG_ARENA_LOCKFREE)
                cr_assert_eq(eng_arena_free(a, o[1]), 0);
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(bulk_alloc_takes_exactly_the_freed_blocks, 20)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        const uint64_t len = 3000;
        uint64_t held[64];
        uint64_t n = hold_blocks(a, len, 1, held, 20, 64);
        eng_arena_stats_t s0 = stats_of(a), s1;
        uint32_t c = kind == ENG_ARENA_LOCKFREE ? class_of(&s0, len) : 0;

        /* k blocks freed: the class list holds exactly them. */
        const int idx1[] = {1, 4, 7, 10, 13};
        enum { K1 = 5 };
        uint64_t freed[16], nfreed = 0;
        for (int j = 0; j < K1; j++) {
                cr_assert_eq(eng_arena_free(a, held[idx1[j]]), 0);
                freed[nfreed++] = held[idx1[j]];
                held[idx1[j]] = 0;
        }
        s0 = stats_of(a);
        if (kind == ENG_ARENA_LOCKFREE)
                cr_assert_eq(s0.cls[c].free_blocks, K1, "precondition: the list holds k blocks");
        uint64_t offs[32];
        uint32_t got = eng_arena_alloc_bulk(a, len, 77, offs, 16);
        s1 = stats_of(a);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_eq(got, K1, "%s: bulk(16) with %d blocks listed returned %u", KN(a), K1,
                             got);
                for (uint32_t i = 0; i < got; i++)
                        cr_assert(in_set(offs[i], freed, nfreed),
                                  "%s: bulk returned %llu, which was not on the list", KN(a),
                                  (unsigned long long)offs[i]);
                assert_bulk_blocks(a, offs, got, len, 77, held, n, "bulk of k");
                assert_class_moved(&s0, &s1, c, (struct cls_delta){K1, -K1, K1, 0}, "bulk of k");
                cr_assert_eq(s1.buf_used_blocks, s0.buf_used_blocks + K1);
        } else {
                cr_assert_eq(got, 0, "mutex: bulk is always 0");
                assert_lists_unchanged(&s0, &s1, "mutex bulk");
        }
        ASSERT_ARENA_OK(a, "after bulk of k");
        for (uint64_t i = 0; i < n; i++)
                if (held[i])
                        cr_assert(intact(a, held[i], len, held[i]), "%s: held block %llu", KN(a),
                                  (unsigned long long)i);

        /* The list is empty now. */
        cr_assert_eq(eng_arena_alloc_bulk(a, len, 77, offs + got, 16), 0, "%s: drained", KN(a));
        eng_arena_stats_t s2 = stats_of(a);
        cr_assert_eq(memcmp(&s1, &s2, sizeof s1), 0);

        /* n < listed: the list gives n, then the rest; together exactly the freed blocks. */
        const int idx2[] = {2, 3, 5, 6, 8, 9};
        enum { K2 = 6 };
        uint64_t freed2[K2];
        for (int j = 0; j < K2; j++) {
                cr_assert_eq(eng_arena_free(a, held[idx2[j]]), 0);
                freed2[j] = held[idx2[j]];
                held[idx2[j]] = 0;
        }
        s0 = stats_of(a);
        uint64_t offs2[32];
        uint32_t g1 = eng_arena_alloc_bulk(a, len, 78, offs2, 2);
        uint32_t g2 = eng_arena_alloc_bulk(a, len, 78, offs2 + g1, 16);
        s1 = stats_of(a);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_eq(g1, 2, "%s: bulk(2) with %d listed", KN(a), K2);
                cr_assert_eq(g2, K2 - 2, "%s: bulk(16) with %d left", KN(a), K2 - 2);
                for (uint32_t i = 0; i < g1 + g2; i++)
                        cr_assert(in_set(offs2[i], freed2, K2), "%s: foreign block", KN(a));
                assert_bulk_blocks(a, offs2, g1 + g2, len, 78, offs, got, "bulk of 2 + rest");
                assert_class_moved(&s0, &s1, c, (struct cls_delta){K2, -K2, K2, 0},
                                   "bulk of 2 + rest");
        } else {
                cr_assert_eq(g1 + g2, 0);
                assert_lists_unchanged(&s0, &s1, "mutex bulk");
        }
        ASSERT_ARENA_OK(a, "after bulk of 2 + rest");

        /* Bulk-taken blocks are ordinary blocks: intact, and eng_arena_free takes them. */
        for (uint32_t i = 0; i < got; i++) {
                cr_assert(intact(a, offs[i], eng_arena_capacity(a, offs[i]), offs[i]));
                cr_assert_eq(eng_arena_free(a, offs[i]), 0);
        }
        for (uint32_t i = 0; i < g1 + g2; i++) {
                cr_assert(intact(a, offs2[i], eng_arena_capacity(a, offs2[i]), offs2[i]));
                cr_assert_eq(eng_arena_free(a, offs2[i]), 0);
        }
        for (uint64_t i = 0; i < n; i++)
                if (held[i])
                        cr_assert_eq(eng_arena_free(a, held[i]), 0);
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.buf_used_blocks, 0);
        cr_assert_eq(st.bad_frees, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(bulk_alloc_never_returns_other_classes, 20)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        enum { NC = 4, PER = 4 };
        /* Lengths at both ends of classes 0..3: the largest payload of even classes, the
         * smallest of odd ones (one byte over the class below). */
        uint64_t lens[NC], o[NC][PER];
        for (uint32_t c = 0; c < NC; c++)
                lens[c] = c % 2 == 0 ? ((uint64_t)4096 << c) - ENG_ARENA_HDR_BYTES
                                     : ((uint64_t)2048 << c) - ENG_ARENA_HDR_BYTES + 1;
        for (int i = 0; i < PER; i++)
                for (uint32_t c = 0; c < NC; c++)
                        cr_assert_eq(eng_arena_alloc(a, lens[c], 1, &o[c][i]), 0);
        uint64_t keep;
        cr_assert_eq(eng_arena_alloc(a, 100000, 2, &keep), 0);
        fill(a, keep, 100000, 99);
        for (int i = 0; i < PER; i++)
                for (uint32_t c = 0; c < NC; c++)
                        cr_assert_eq(eng_arena_free(a, o[c][i]), 0);
        ASSERT_ARENA_OK(a, "lists filled");

        const uint32_t order[NC] = {3, 1, 0, 2};
        uint64_t taken[NC][64];
        uint32_t ntaken[NC] = {0};
        for (int i = 0; i < NC; i++) {
                uint32_t c = order[i];
                eng_arena_stats_t s0 = stats_of(a);
                ntaken[c] = eng_arena_alloc_bulk(a, lens[c], 40 + c, taken[c], 64);
                eng_arena_stats_t s1 = stats_of(a);
                if (kind == ENG_ARENA_MUTEX) {
                        cr_assert_eq(ntaken[c], 0);
                        assert_lists_unchanged(&s0, &s1, "mutex bulk");
                        continue;
                }
                cr_assert_eq(class_of(&s0, lens[c]), c, "precondition: len %llu in class %u",
                             (unsigned long long)lens[c], c);
                uint64_t listed = s0.cls[c].free_blocks;
                cr_assert_geq(listed, PER);
                cr_assert_eq(ntaken[c], listed, "%s: class %u: %llu listed, bulk(64) took %u",
                             KN(a), c, (unsigned long long)listed, ntaken[c]);
                cr_assert_eq(eng_arena_class_bytes(a, lens[c]),
                             ((uint64_t)4096 << c) - ENG_ARENA_HDR_BYTES);
                /* assert_bulk_blocks checks capacity == this class's payload and alignment. */
                assert_bulk_blocks(a, taken[c], ntaken[c], lens[c], 40 + c, &keep, 1, "class");
                for (int j = 0; j < PER; j++)
                        cr_assert(in_set(o[c][j], taken[c], ntaken[c]),
                                  "%s: class %u: freed block %d not taken", KN(a), c, j);
                assert_class_moved(
                    &s0, &s1, c,
                    (struct cls_delta){(int64_t)listed, -(int64_t)listed, (int64_t)listed, 0},
                    "bulk of one class");
        }
        ASSERT_ARENA_OK(a, "after the bulks");
        cr_assert(intact(a, keep, 100000, 99));
        for (uint32_t c = 0; c < NC; c++)
                for (uint32_t i = 0; i < ntaken[c]; i++) {
                        cr_assert(
                            intact(a, taken[c][i], eng_arena_capacity(a, taken[c][i]), taken[c][i]),
                            "%s: class %u block %u overwritten by another bulk", KN(a), c, i);
                        cr_assert_eq(eng_arena_free(a, taken[c][i]), 0);
                }
        cr_assert_eq(eng_arena_free(a, keep), 0);
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(free_later_rejects_what_free_rejects, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t big, small, o[3], r1, r2;
        cr_assert_eq(eng_arena_alloc(a, 200000, 1, &big), 0);
        cr_assert_eq(eng_arena_alloc(a, 100, 1, &small), 0);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(eng_arena_alloc(a, 5000, 1, &o[i]), 0);
        fill(a, big, 200000, 11);
        fill(a, small, 100, 12);
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &r1), 0);
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &r2), 0);
        cr_assert_eq(eng_arena_rec_free(a, r2), 0);
        eng_arena_batch_t b = {.n = 0};
        /* o[1] sits between two used blocks: on the mutex arena it stays a block when freed. */
        cr_assert_eq(eng_arena_free_later(a, &b, o[1]), 0);
        uint32_t n0 = b.n;
        cr_assert_eq(n0, kind == ENG_ARENA_LOCKFREE ? 1u : 0u);
        eng_arena_stats_t s0 = stats_of(a);

        const uint64_t bad[] = {0,
                                8,
                                64,
                                s0.rec_base,
                                r1,
                                r1 - ENG_ARENA_HDR_BYTES,
                                r2,
                                s0.rec_top,
                                s0.buf_bottom,
                                big + 8,
                                big + 32,
                                big + 64,
                                big + 65536,
                                big - ENG_ARENA_HDR_BYTES,
                                o[1] - ENG_ARENA_HDR_BYTES,
                                o[1] + 8,
                                o[1] + 64,
                                f.size,
                                f.size + 64,
                                s0.top,
                                (uint64_t)1 << 40,
                                (uint64_t)1 << 63,
                                UINT64_MAX & ~(uint64_t)63,
                                UINT64_MAX};
        uint64_t nbad = 0;
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                int rc = eng_arena_free_later(a, &b, bad[i]);
                cr_assert_eq(rc, -EINVAL, "%s: free_later(bad[%zu] = %llu) = %d", KN(a), i,
                             (unsigned long long)bad[i], rc);
                nbad++;
                cr_assert_eq(b.n, n0, "%s: a refused offset went into the batch", KN(a));
        }
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(eng_arena_free_later(a, &b, o[1]), -EALREADY, "%s", KN(a));
                cr_assert_eq(eng_arena_free(a, o[1]), -EALREADY, "%s", KN(a));
                nbad += 2;
        }
        cr_assert_eq(b.n, n0, "%s: a double free went into the batch", KN(a));
        eng_arena_stats_t s1 = stats_of(a);
        assert_lists_unchanged(&s0, &s1, "refused free_later");
        cr_assert_eq(s1.bad_frees, s0.bad_frees + nbad, "%s: bad_frees %llu -> %llu, %llu refused",
                     KN(a), (unsigned long long)s0.bad_frees, (unsigned long long)s1.bad_frees,
                     (unsigned long long)nbad);
        eng_arena_flush(a, &b);
        cr_assert_eq(b.n, 0);
        ASSERT_ARENA_OK(a, "flushed");
        cr_assert_eq(eng_arena_free_later(a, &b, o[1]), -EALREADY, "%s: listed now", KN(a));
        cr_assert_eq(b.n, 0);
        cr_assert_eq(stats_of(a).bad_frees, s1.bad_frees + 1);
        cr_assert(intact(a, big, 200000, 11) && intact(a, small, 100, 12), "%s: data intact",
                  KN(a));
        cr_assert_eq(eng_arena_owner(a, big), 1);

        const uint64_t rest[] = {big, small, o[0], o[2]};
        for (int i = 0; i < 4; i++)
                cr_assert_eq(eng_arena_free_later(a, &b, rest[i]), 0);
        eng_arena_flush(a, &b);
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        cr_assert_eq(eng_arena_rec_free(a, r1), 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(free_later_frees_at_once_lists_at_flush, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        const uint64_t len = 3000;
        uint64_t held[64];
        uint64_t n = hold_blocks(a, len, 1, held, 8, 64);
        eng_arena_stats_t s0 = stats_of(a);
        uint32_t c = kind == ENG_ARENA_LOCKFREE ? class_of(&s0, len) : 0;
        uint64_t x = held[3];
        held[3] = 0;

        eng_arena_batch_t b = {.n = 0};
        cr_assert_eq(eng_arena_free_later(a, &b, x), 0);
        cr_assert_eq(eng_arena_owner(a, x), 0, "%s: FREE at once", KN(a));
        cr_assert_eq(eng_arena_capacity(a, x), 0, "%s: no longer a live block", KN(a));
        cr_assert_eq(b.n, kind == ENG_ARENA_LOCKFREE ? 1u : 0u);
        eng_arena_stats_t sp = stats_of(a);
        if (kind == ENG_ARENA_LOCKFREE)
                assert_class_moved(&s0, &sp, c, (struct cls_delta){0, 0, 0, 0},
                                   "pending: still counted used, not listed");
        else
                cr_assert_eq(sp.buf_used_blocks, s0.buf_used_blocks - 1);
        cr_assert_eq(eng_arena_free_later(a, &b, x), -EALREADY, "%s", KN(a));
        cr_assert_eq(eng_arena_free(a, x), -EALREADY, "%s", KN(a));
        cr_assert_eq(eng_arena_free_later(a, &b, x), -EALREADY, "%s", KN(a));
        cr_assert_eq(b.n, kind == ENG_ARENA_LOCKFREE ? 1u : 0u, "%s: double free batched", KN(a));
        eng_arena_stats_t s1 = stats_of(a);
        cr_assert_eq(s1.bad_frees, sp.bad_frees + 3);
        assert_lists_unchanged(&sp, &s1, "double free of a pending block");
        cr_assert_eq(eng_arena_owner(a, x), 0);

        if (kind == ENG_ARENA_MUTEX) {
                /* Freed at once: checked without a flush, and reused at once. */
                cr_assert_eq(b.n, 0);
                ASSERT_ARENA_OK(a, "mutex free_later, no flush");
                uint64_t z;
                cr_assert_eq(eng_arena_alloc(a, len, 2, &z), 0);
                cr_assert_eq(z, x, "mutex: the hole of exactly this size is reused at once");
                cr_assert_eq(eng_arena_owner(a, z), 2);
                cr_assert_eq(eng_arena_free(a, z), 0);
        } else {
                /* Pending: still counted used, not on the list, not handed out by anything. */
                s0 = stats_of(a);
                cr_assert_eq(s0.cls[c].free_blocks, 0, "precondition: class list empty");
                uint64_t offs[8];
                cr_assert_eq(eng_arena_alloc_bulk(a, len, 9, offs, 8), 0,
                             "lockfree: a pending block is not on the list");
                eng_arena_stats_t s2 = stats_of(a);
                assert_class_moved(&s0, &s2, c, (struct cls_delta){0, 0, 0, 0}, "pending bulk");
                uint64_t y[4];
                for (int i = 0; i < 4; i++) {
                        cr_assert_eq(eng_arena_alloc(a, len, 9, &y[i]), 0);
                        cr_assert_neq(y[i], x, "lockfree: alloc %d reused a pending block", i);
                }
                for (int i = 0; i < 4; i++)
                        cr_assert_eq(eng_arena_free(a, y[i]), 0);
                s0 = stats_of(a);
                eng_arena_flush(a, &b);
                cr_assert_eq(b.n, 0);
                s1 = stats_of(a);
                assert_class_moved(&s0, &s1, c, (struct cls_delta){-1, 1, 0, 1}, "flush of one");
                ASSERT_ARENA_OK(a, "flushed");
                /* Listed now, on top: the next allocation of the class gets it. */
                uint64_t z;
                cr_assert_eq(eng_arena_alloc(a, len, 2, &z), 0);
                cr_assert_eq(z, x, "lockfree: the flushed block is on top of its list");
                cr_assert_eq(eng_arena_owner(a, z), 2);

                /* A second round, checked against the snapshot before the free_later. */
                s0 = stats_of(a);
                cr_assert_eq(eng_arena_free_later(a, &b, z), 0);
                s1 = stats_of(a);
                assert_class_moved(&s0, &s1, c, (struct cls_delta){0, 0, 0, 0},
                                   "pending: stats still count it used");
                eng_arena_flush(a, &b);
                eng_arena_flush(a, &b); /* an empty batch: nothing */
                s1 = stats_of(a);
                assert_class_moved(&s0, &s1, c, (struct cls_delta){-1, 1, 0, 1}, "second flush");
        }
        ASSERT_ARENA_OK(a, "after flush");
        for (uint64_t i = 0; i < n; i++) {
                if (held[i] == 0)
                        continue;
                cr_assert(intact(a, held[i], len, held[i]), "%s: held block %llu", KN(a),
                          (unsigned long long)i);
                cr_assert_eq(eng_arena_free_later(a, &b, held[i]), 0);
        }
        eng_arena_flush(a, &b);
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(flush_returns_each_block_to_its_class, 20)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        enum { NC = 4, PER = 3 };
        uint64_t lens[NC], o[NC][PER];
        for (uint32_t c = 0; c < NC; c++)
                lens[c] = ((uint64_t)4096 << c) - ENG_ARENA_HDR_BYTES - 100 * (c + 1);
        for (int i = 0; i < PER; i++)
                for (uint32_t c = 0; c < NC; c++) {
                        cr_assert_eq(eng_arena_alloc(a, lens[c], 1, &o[c][i]), 0);
                        fill(a, o[c][i], lens[c], o[c][i]);
                }
        uint64_t keep;
        cr_assert_eq(eng_arena_alloc(a, 3000, 2, &keep), 0);
        fill(a, keep, 3000, 7);
        eng_arena_stats_t s0 = stats_of(a);
        eng_arena_batch_t b = {.n = 0};
        /* Interleaved: the batch holds blocks of four classes in turn. */
        for (int i = 0; i < PER; i++)
                for (uint32_t c = 0; c < NC; c++) {
                        cr_assert(intact(a, o[c][i], lens[c], o[c][i]));
                        cr_assert_eq(eng_arena_free_later(a, &b, o[c][i]), 0);
                        cr_assert_eq(eng_arena_owner(a, o[c][i]), 0);
                        if (kind == ENG_ARENA_MUTEX) {
                                cr_assert_eq(b.n, 0);
                                ASSERT_ARENA_OK(a, "mutex: freed at once");
                        }
                }
        eng_arena_stats_t s1 = stats_of(a);
        if (kind == ENG_ARENA_MUTEX) {
                cr_assert_eq(s1.buf_used_blocks, s0.buf_used_blocks - NC * PER);
        } else {
                cr_assert_eq(b.n, NC * PER);
                struct cls_delta none[ENG_ARENA_MAX_CLASSES];
                memset(none, 0, sizeof none);
                assert_class_deltas(&s0, &s1, none, "pending: nothing moves before the flush");
                for (uint32_t c = 0; c < NC; c++)
                        cr_assert_eq(class_of(&s0, lens[c]), c);
        }
        eng_arena_flush(a, &b);
        cr_assert_eq(b.n, 0);
        eng_arena_stats_t s2 = stats_of(a);
        ASSERT_ARENA_OK(a, "flushed");
        if (kind == ENG_ARENA_MUTEX) {
                cr_assert_eq(memcmp(&s1, &s2, sizeof s1), 0, "mutex: flush has nothing to do");
        } else {
                struct cls_delta d[ENG_ARENA_MAX_CLASSES];
                memset(d, 0, sizeof d);
                for (uint32_t c = 0; c < NC; c++)
                        d[c] = (struct cls_delta){-PER, PER, 0, PER};
                assert_class_deltas(&s0, &s2, d, "flush of four classes");
                /* Each block is on its own class's list: a bulk of each class gets it back. */
                for (uint32_t c = 0; c < NC; c++) {
                        uint64_t offs[64];
                        uint32_t got = eng_arena_alloc_bulk(a, lens[c], 3, offs, 64);
                        cr_assert_eq(got, s2.cls[c].free_blocks, "class %u: all listed", c);
                        for (int i = 0; i < PER; i++)
                                cr_assert(in_set(o[c][i], offs, got),
                                          "class %u: flushed block %d not on its list", c, i);
                        assert_bulk_blocks(a, offs, got, lens[c], 3, &keep, 1, "after flush");
                        for (uint32_t i = 0; i < got; i++)
                                cr_assert_eq(eng_arena_free_later(a, &b, offs[i]), 0);
                        eng_arena_flush(a, &b);
                }
                ASSERT_ARENA_OK(a, "bulk round trip");
        }
        cr_assert(intact(a, keep, 3000, 7));
        cr_assert_eq(eng_arena_free(a, keep), 0);
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

TEST_BOTH_KINDS(full_batch_flushes_itself, 20)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        enum { N = 3 * ENG_ARENA_BATCH + 5 };
        static uint64_t o[N];
        /* Two classes, so a self-flush pushes two chains. */
        for (int i = 0; i < N; i++)
                cr_assert_eq(eng_arena_alloc(a, i % 3 ? 3000 : 6000, 1, &o[i]), 0);
        eng_arena_stats_t s0 = stats_of(a);
        eng_arena_batch_t b = {.n = 0};
        uint64_t max_n = 0;
        for (int i = 0; i < N; i++) {
                cr_assert_eq(eng_arena_free_later(a, &b, o[i]), 0, "%s: free_later %d", KN(a), i);
                cr_assert_leq(b.n, ENG_ARENA_BATCH, "%s: batch overfilled after %d", KN(a), i);
                if (b.n > max_n)
                        max_n = b.n;
                eng_arena_stats_t st = stats_of(a);
                uint64_t done = (uint64_t)i + 1;
                if (kind == ENG_ARENA_MUTEX) {
                        cr_assert_eq(b.n, 0);
                        cr_assert_eq(st.buf_used_blocks, s0.buf_used_blocks - done);
                        continue;
                }
                /* Everything not in the batch has been flushed, exactly. */
                uint64_t flushed = done - b.n, frees = 0, used = 0, freeb = 0;
                for (uint32_t c = 0; c < 2; c++) {
                        frees += st.cls[c].frees - s0.cls[c].frees;
                        used += s0.cls[c].used_blocks - st.cls[c].used_blocks;
                        freeb += st.cls[c].free_blocks - s0.cls[c].free_blocks;
                }
                cr_assert_eq(frees, flushed,
                             "%s: after %llu free_later with %u pending: %llu frees", KN(a),
                             (unsigned long long)done, b.n, (unsigned long long)frees);
                cr_assert_eq(used, flushed);
                cr_assert_eq(freeb, flushed);
        }
        if (kind == ENG_ARENA_LOCKFREE) {
                /* It accumulates (not a flush per call) up to (about) a full batch. */
                cr_assert_geq(max_n, ENG_ARENA_BATCH - 1, "the batch never filled: %llu",
                              (unsigned long long)max_n);
                cr_assert_gt(b.n, 0);
        }
        eng_arena_flush(a, &b);
        cr_assert_eq(b.n, 0);
        ASSERT_ARENA_OK(a, "final flush");
        eng_arena_stats_t s1 = stats_of(a);
        cr_assert_eq(s1.buf_used_blocks, 0);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_eq(s1.cls[0].frees + s1.cls[1].frees, N);
                cr_assert_eq(s1.cls[0].frees, N - (N + 2) / 3);
        }
        fx_done(&f);
}

/* The space-waiting word: free_later on the lock-free arena wakes nobody (the block is not
 * listed yet), its flush does, once; the mutex arena's free_later is a free. */
TEST_BOTH_KINDS(free_later_wakes_waiters_at_flush, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 4 * MIB, 256, 12, 20);
        uint32_t *fw = eng_arena_free_word(a), *wt = eng_arena_waiters_word(a);
        uint64_t o[3];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(eng_arena_alloc(a, 100, 1, &o[i]), 0);
        eng_arena_batch_t b = {.n = 0};
        uint32_t w0 = *fw;
        *wt = 1;
        cr_assert_eq(eng_arena_free_later(a, &b, o[0]), 0);
        cr_assert_eq(eng_arena_free_later(a, &b, o[1]), 0);
        cr_assert_eq(*fw, kind == ENG_ARENA_LOCKFREE ? w0 : w0 + 2, "%s: free_later", KN(a));
        eng_arena_flush(a, &b);
        cr_assert_eq(*fw, kind == ENG_ARENA_LOCKFREE ? w0 + 1 : w0 + 2, "%s: flush", KN(a));
        eng_arena_flush(a, &b);
        cr_assert_eq(*fw, kind == ENG_ARENA_LOCKFREE ? w0 + 1 : w0 + 2, "%s: empty flush", KN(a));
        cr_assert_eq(eng_arena_free_later(a, &b, o[1]), -EALREADY);
        eng_arena_flush(a, &b);
        cr_assert_eq(*fw, kind == ENG_ARENA_LOCKFREE ? w0 + 1 : w0 + 2, "%s: refused", KN(a));
        *wt = 0;
        cr_assert_eq(eng_arena_free(a, o[2]), 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/* A taker that dies with bulk-taken blocks it never handed out: reclaim(owner) frees them
 * (the mutex arena has no bulk: the documented fallback, eng_arena_alloc, is reclaimed). */
TEST_BOTH_KINDS(reclaim_frees_bulk_taken_blocks, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t held[64], held1[32];
        uint64_t n = hold_blocks(a, 3000, 1, held, 12, 64);
        uint64_t n1 = hold_blocks(a, 6000, 1, held1, 4, 32);
        uint64_t other[3];
        const uint64_t olen[3] = {100, 7000, 50000};
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(eng_arena_alloc(a, olen[i], 43, &other[i]), 0);
                fill(a, other[i], olen[i], 4300 + i);
        }
        for (uint64_t i = 0; i < 10; i++)
                cr_assert_eq(eng_arena_free(a, held[i]), 0);
        for (uint64_t i = 0; i < 2; i++)
                cr_assert_eq(eng_arena_free(a, held1[i]), 0);
        eng_arena_stats_t s0 = stats_of(a);

        /* Take 10 + 2 blocks for owner 42: bulk first, eng_arena_alloc for what it lacks. */
        uint64_t t[12];
        uint32_t g0 = eng_arena_alloc_bulk(a, 3000, 42, t, 10);
        uint32_t g1 = eng_arena_alloc_bulk(a, 6000, 42, t + 10, 2);
        cr_assert_eq(g0, kind == ENG_ARENA_LOCKFREE ? 10u : 0u, "%s: bulk of 10", KN(a));
        cr_assert_eq(g1, kind == ENG_ARENA_LOCKFREE ? 2u : 0u, "%s: bulk of 2", KN(a));
        for (uint32_t i = g0; i < 10; i++)
                cr_assert_eq(eng_arena_alloc(a, 3000, 42, &t[i]), 0);
        for (uint32_t i = 10 + g1; i < 12; i++)
                cr_assert_eq(eng_arena_alloc(a, 6000, 42, &t[i]), 0);
        for (int i = 0; i < 12; i++)
                cr_assert_eq(eng_arena_owner(a, t[i]), 42);
        ASSERT_ARENA_OK(a, "taken");

        int64_t r = eng_arena_reclaim(a, 42);
        cr_assert_eq(r, 12, "%s: reclaim(42) = %lld", KN(a), (long long)r);
        for (int i = 0; i < 12; i++) {
                cr_assert_eq(eng_arena_owner(a, t[i]), 0);
                /* Mutex: the reclaimed block may have merged into a neighbour (-EINVAL). */
                int rc = eng_arena_free(a, t[i]);
                cr_assert(rc == -EALREADY || (kind == ENG_ARENA_MUTEX && rc == -EINVAL),
                          "%s: free of reclaimed block %d: %d", KN(a), i, rc);
        }
        cr_assert_eq(eng_arena_reclaim(a, 42), 0);
        eng_arena_stats_t s1 = stats_of(a);
        ASSERT_ARENA_OK(a, "reclaimed");
        cr_assert_eq(s1.buf_used_blocks, s0.buf_used_blocks, "%s: back where it was", KN(a));
        cr_assert_eq(s1.bad_frees, s0.bad_frees + 12);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_eq(s1.cls[0].free_blocks, s0.cls[0].free_blocks);
                cr_assert_eq(s1.cls[1].free_blocks, s0.cls[1].free_blocks);
        }
        for (int i = 0; i < 3; i++) {
                cr_assert(intact(a, other[i], olen[i], 4300 + i), "%s: owner 43's block %d", KN(a),
                          i);
                cr_assert_eq(eng_arena_owner(a, other[i]), 43);
        }
        cr_assert_eq(eng_arena_reclaim(a, 43), 3);
        cr_assert_eq(eng_arena_reclaim(a, 1), (int64_t)(n - 10 + n1 - 2));
        cr_assert_eq(stats_of(a).buf_used_blocks, 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/*
 * A failing allocation merges buddies (lf_coalesce) out of blocks it pops off the lists. A
 * block freed with free_later and not yet flushed is on no list: it must not be merged (its
 * flush would then push a block that no longer exists), and the flush must leave an arena
 * that checks clean and merges fully later.
 */
Test(lockfree, pending_frees_are_not_merged_by_coalescing, .timeout = 30)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        enum { MAXN = 4096 };
        static uint64_t o[MAXN];
        uint64_t n = 0;
        while (eng_arena_alloc(a, 4000, 1, &o[n]) == 0)
                cr_assert_lt(++n, MAXN);
        eng_arena_stats_t st = stats_of(a);
        uint64_t nsb = (st.top - st.buf_bottom) >> 20;
        cr_assert_geq(nsb, 4);
        eng_arena_batch_t b = {.n = 0};
        for (uint64_t i = 0; i < n; i++)
                cr_assert_eq(eng_arena_free_later(a, &b, o[i]), 0);
        uint32_t pending = b.n;
        cr_assert_gt(pending, 0);
        const uint64_t *pend = &o[n - pending]; /* the last ones freed are still in the batch */

        uint64_t big;
        int rc = eng_arena_alloc(a, eng_arena_max_alloc(a), 2, &big);
        cr_assert_eq(rc, 0, "the superblocks without a pending block merge: %d", rc);
        uint64_t big_blk = big - ENG_ARENA_HDR_BYTES;
        for (uint32_t i = 0; i < pending; i++) {
                uint64_t p = pend[i] - ENG_ARENA_HDR_BYTES;
                cr_assert(p < big_blk || p >= big_blk + MIB,
                          "pending block %u (%llu) is inside the merged block at %llu", i,
                          (unsigned long long)p, (unsigned long long)big_blk);
                cr_assert_eq(eng_arena_owner(a, pend[i]), 0);
        }
        fill(a, big, eng_arena_max_alloc(a), 5);
        eng_arena_flush(a, &b);
        ASSERT_ARENA_OK(a, "flushed after a coalescing pass");
        cr_assert(intact(a, big, eng_arena_max_alloc(a), 5), "the flush wrote into a live block");
        cr_assert_eq(eng_arena_free(a, big), 0);

        /* Everything is free and listed: every superblock can be had whole again. */
        uint64_t whole[64];
        for (uint64_t i = 0; i < nsb; i++) {
                rc = eng_arena_alloc(a, eng_arena_max_alloc(a), 3, &whole[i]);
                cr_assert_eq(rc, 0, "superblock %llu of %llu: %d", (unsigned long long)i,
                             (unsigned long long)nsb, rc);
        }
        ASSERT_ARENA_OK(a, "all merged");
        cr_assert_eq(eng_arena_reclaim(a, 3), (int64_t)nsb);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/* The mutex arena has no batches: bulk is 0 even with room on its list, free_later is a free
 * (the arena checks clean without a flush), flush has nothing to do. */
Test(mutex, batch_calls_are_plain_operations, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_MUTEX, 8 * MIB, 256, 12, 20);
        uint64_t o[8];
        for (int i = 0; i < 8; i++)
                cr_assert_eq(eng_arena_alloc(a, 3000, 1, &o[i]), 0);
        for (int i = 1; i < 8; i += 2)
                cr_assert_eq(eng_arena_free(a, o[i]), 0);
        eng_arena_stats_t s0 = stats_of(a);
        /* o[7] touched buf_bottom and went back to the gap; three holes are left. */
        cr_assert_eq(s0.buf_free_blocks, 3);
        uint64_t offs[8];
        cr_assert_eq(eng_arena_alloc_bulk(a, 3000, 1, offs, 8), 0);
        cr_assert_eq(eng_arena_alloc_bulk(a, 100, 1, offs, 8), 0);
        eng_arena_stats_t s1 = stats_of(a);
        cr_assert_eq(memcmp(&s0, &s1, sizeof s0), 0);
        eng_arena_batch_t b = {.n = 0};
        for (int i = 0; i < 8; i += 2) {
                cr_assert_eq(eng_arena_free_later(a, &b, o[i]), 0);
                cr_assert_eq(b.n, 0);
                ASSERT_ARENA_OK(a, "free_later without flush");
                cr_assert_eq(stats_of(a).buf_used_blocks, 3 - (uint64_t)i / 2);
        }
        eng_arena_stats_t s2 = stats_of(a);
        cr_assert_eq(s2.buf_bottom, s2.top, "coalesced back into the gap at once");
        eng_arena_flush(a, &b);
        eng_arena_stats_t s3 = stats_of(a);
        cr_assert_eq(memcmp(&s2, &s3, sizeof s2), 0);
        fx_done(&f);
}

TEST_BOTH_KINDS(class_bytes_is_what_an_allocation_gets, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        uint64_t max = eng_arena_max_alloc(a);
        const uint64_t lens[] = {1,    63,    64,    65,     4031,   4032,   4033,    8128,
                                 8129, 65472, 65473, 100000, 524224, 524225, max - 1, max};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
                uint64_t len = lens[i], off;
                uint64_t cb = eng_arena_class_bytes(a, len);
                cr_assert_eq(eng_arena_alloc(a, len, 1, &off), 0);
                uint64_t cap = eng_arena_capacity(a, off);
                cr_assert_geq(cb, len, "%s: class_bytes(%llu) = %llu", KN(a),
                              (unsigned long long)len, (unsigned long long)cb);
                if (kind == ENG_ARENA_LOCKFREE)
                        cr_assert_eq(cb, cap, "%s: class_bytes(%llu) = %llu, capacity %llu", KN(a),
                                     (unsigned long long)len, (unsigned long long)cb,
                                     (unsigned long long)cap);
                else
                        cr_assert_leq(cb, cap, "%s: class_bytes(%llu) = %llu, capacity %llu", KN(a),
                                      (unsigned long long)len, (unsigned long long)cb,
                                      (unsigned long long)cap);
                cr_assert_eq(eng_arena_free(a, off), 0);
        }
        if (kind == ENG_ARENA_LOCKFREE)
                cr_assert_eq(eng_arena_class_bytes(a, 0), 4096 - ENG_ARENA_HDR_BYTES);
        cr_assert_eq(eng_arena_class_bytes(a, max + 1), 0, "%s: too big for any block", KN(a));
        cr_assert_eq(eng_arena_class_bytes(a, UINT64_MAX), 0);
        cr_assert_eq(eng_arena_class_bytes(a, UINT64_MAX - 63), 0);
        ASSERT_ARENA_OK(a, "end");
        fx_done(&f);
}

/* ---- damage: a writer scribbles on the segment (lock-free arena) -------------------- */

/* The header of the block whose payload is at off. */
static struct blk_hdr *hdr_of(eng_arena_t *a, uint64_t off)
{
        return (struct blk_hdr *)(a->base + off - ENG_ARENA_HDR_BYTES);
}

static uint32_t units_of(uint64_t off)
{
        return (uint32_t)(off / ARENA_UNIT);
}

/* Link the (free, listed) block at payload offset off to the block at payload offset to. */
static void link_to(eng_arena_t *a, uint64_t off, uint64_t to)
{
        hdr_of(a, off)->next = units_of(to - ENG_ARENA_HDR_BYTES);
}

/* eng_arena_check must fail (the arena is damaged), and the tolerant check must not crash. */
static void assert_check_fails(eng_arena_t *a, const char *ctx)
{
        char why[256];
        uint64_t leaked;
        cr_assert_neq(eng_arena_check(a, why, sizeof why), 0, "%s: the strict check passed", ctx);
        (void)eng_arena_check_leaks(a, &leaked, why, sizeof why);
}

/* Rebuild with nothing live: every byte must go back to the gap, and the check pass. */
static void rebuild_to_empty(eng_arena_t *a, eng_arena_rebuild_report_t *rep, const char *ctx)
{
        int rc = eng_arena_rebuild(a, NULL, rep);
        cr_assert_eq(rc, 0, "%s: rebuild: %d", ctx, rc);
        ASSERT_ARENA_OK(a, ctx);
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.buf_bottom, st.top, "%s: buffer space not all back in the gap", ctx);
        cr_assert_eq(st.rec_top, st.rec_base, "%s: record slots not all back in the gap", ctx);
        cr_assert_eq(st.buf_used_blocks + st.buf_free_blocks + st.rec_used + st.rec_free, 0, "%s",
                     ctx);
        cr_assert_eq(st.cuts, 0, "%s: the cut count restarts", ctx);
        /* And the arena works: the largest block, then a record. */
        uint64_t x;
        cr_assert_eq(eng_arena_alloc(a, eng_arena_max_alloc(a), 1, &x), 0, "%s", ctx);
        cr_assert_eq(eng_arena_free(a, x), 0);
        cr_assert_eq(eng_arena_rec_alloc(a, 1, &x), 0, "%s", ctx);
        cr_assert_eq(eng_arena_rec_free(a, x), 0);
        ASSERT_ARENA_OK(a, ctx);
}

/*
 * A class head scribbled to garbage: the next allocation still succeeds (the list is cut, the
 * class treated as empty, the request served by a split), the cut is counted, the class works
 * again at once, and a rebuild with no live owner makes the arena exact and empty.
 */
Test(damage, corrupt_class_head_is_cut_then_rebuilt, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        uint64_t rec[4], off[8], x, y;
        for (int i = 0; i < 4; i++)
                cr_assert_eq(eng_arena_rec_alloc(a, 9, &rec[i]), 0);
        for (int i = 0; i < 8; i++)
                cr_assert_eq(eng_arena_alloc(a, 3000, 1, &off[i]), 0);
        for (int i = 0; i < 8; i += 2)
                cr_assert_eq(eng_arena_free(a, off[i]), 0);
        cr_assert_eq(stats_of(a).cls[0].free_blocks, 4);
        /* Past the end of the region. */
        h->cls[0].head = head_pack(units_of(a->size) + 7, head_tag(h->cls[0].head));

        cr_assert_eq(eng_arena_alloc(a, 3000, 2, &x), 0, "the allocation after the cut");
        eng_arena_stats_t st = stats_of(a);
        cr_assert_eq(st.cuts, 1, "cuts %llu", (unsigned long long)st.cuts);
        cr_assert_eq(eng_arena_anomalies(a), 1);
        cr_assert_eq(eng_arena_owner(a, x), 2);
        /* The class list works again: a freed block comes straight back. */
        cr_assert_eq(eng_arena_free(a, x), 0);
        cr_assert_eq(eng_arena_alloc(a, 3000, 3, &y), 0);
        cr_assert_eq(y, x, "the cut list is usable");
        cr_assert_eq(stats_of(a).cuts, 1);
        /* What was on the list leaks until a rebuild. */
        assert_check_fails(a, "after the cut");

        eng_arena_rebuild_report_t rep;
        rebuild_to_empty(a, &rep, "rebuilt with no live owner");
        cr_assert_not(rep.was_consistent);
        cr_assert_eq(rep.cuts, 1);
        cr_assert_eq(rep.kept_blocks, 0);
        cr_assert_eq(rep.freed_blocks, 5, "the 4 blocks of owner 1 left and y: %llu",
                     (unsigned long long)rep.freed_blocks);
        cr_assert_eq(rep.rec_freed, 4);
        cr_assert_eq(rep.gap_bytes, MIB + 4 * stats_of(a).rec_stride);
        fx_done(&f);
}

/* Allocate class-0 blocks (single and bulk, alternately) until ENOMEM, each with its own owner;
 * no offset may come twice, and every block must still say its owner. Returns the count. */
static uint64_t alloc_until_enomem(eng_arena_t *a, uint64_t *offs, uint32_t *owners, uint64_t max)
{
        uint64_t n = 0;
        uint32_t owner = 1000;
        for (int round = 0; n < max; round++) {
                uint64_t got[4];
                uint32_t k = 0;
                if (round % 2 == 0)
                        k = eng_arena_alloc_bulk(a, 3000, owner, got, 4);
                if (k == 0) {
                        int rc = eng_arena_alloc(a, 3000, owner, &got[0]);
                        if (rc == -ENOMEM)
                                break;
                        cr_assert_eq(rc, 0, "alloc: %d", rc);
                        k = 1;
                }
                for (uint32_t i = 0; i < k && n < max; i++) {
                        offs[n] = got[i];
                        owners[n++] = owner;
                }
                owner++;
        }
        cr_assert_lt(n, max, "no ENOMEM after %llu blocks: the same blocks came round again",
                     (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++) {
                for (uint64_t j = 0; j < i; j++)
                        cr_assert_neq(offs[i], offs[j], "block %llu handed out twice",
                                      (unsigned long long)offs[i]);
                cr_assert_eq(eng_arena_owner(a, offs[i]), owners[i], "block %llu",
                             (unsigned long long)offs[i]);
        }
        return n;
}

/* 4 MiB: three superblocks of 256 class-0 blocks. */
#define CYCLE_ARENA (4 * MIB)
#define CYCLE_MAX   1024

/* A listed block linked to itself: handed out once, then the list is cut. */
Test(damage, self_linked_block_is_handed_out_once, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, CYCLE_ARENA, 256, 12, 20);
        static uint64_t offs[CYCLE_MAX];
        static uint32_t owners[CYCLE_MAX];
        uint64_t x, y;
        cr_assert_eq(eng_arena_alloc(a, 3000, 1, &x), 0);
        cr_assert_eq(eng_arena_alloc(a, 3000, 1, &y), 0);
        cr_assert_eq(eng_arena_free(a, x), 0);
        link_to(a, x, x);

        uint64_t n = alloc_until_enomem(a, offs, owners, CYCLE_MAX);
        cr_assert_eq(n, 3 * 256 - 1, "every block but y, once: %llu", (unsigned long long)n);
        cr_assert_geq(stats_of(a).cuts, 1);
        cr_assert_eq(eng_arena_owner(a, y), 1);
        fx_done(&f);
}

/* A listed block linked to a block in use: the block in use is never handed out. */
Test(damage, link_to_block_in_use_is_refused, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, CYCLE_ARENA, 256, 12, 20);
        static uint64_t offs[CYCLE_MAX];
        static uint32_t owners[CYCLE_MAX];
        uint64_t x, y;
        cr_assert_eq(eng_arena_alloc(a, 3000, 1, &x), 0);
        cr_assert_eq(eng_arena_alloc(a, 3000, 2, &y), 0);
        fill(a, y, 3000, 22);
        cr_assert_eq(eng_arena_free(a, x), 0);
        link_to(a, x, y);

        uint64_t n = alloc_until_enomem(a, offs, owners, CYCLE_MAX);
        for (uint64_t i = 0; i < n; i++)
                cr_assert_neq(offs[i], y, "the block in use was handed out");
        cr_assert_eq(eng_arena_owner(a, y), 2);
        cr_assert(intact(a, y, 3000, 22));
        cr_assert_eq(stats_of(a).cuts, 1);
        fx_done(&f);
}

/* A listed free block whose header was scribbled: refused by the pop, the list cut. */
Test(damage, scribbled_header_of_listed_block_is_refused, .timeout = 10)
{
        const uint64_t bad[] = {0,
                                0x0123456789abcdefull,
                                blk_word(0, BLK_USED, 5),
                                blk_word(1, BLK_FREE, 0),
                                blk_word(0, BLK_FREE, 7),
                                blk_word(0, BLK_RFREE, 0)};
        for (size_t v = 0; v < sizeof bad / sizeof bad[0]; v++) {
                struct fx f;
                eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
                uint64_t x, y, z;
                cr_assert_eq(eng_arena_alloc(a, 3000, 1, &x), 0);
                cr_assert_eq(eng_arena_alloc(a, 3000, 1, &y), 0);
                cr_assert_eq(eng_arena_free(a, x), 0);
                hdr_of(a, x)->word = bad[v];

                cr_assert_eq(eng_arena_alloc(a, 3000, 2, &z), 0);
                cr_assert_neq(z, x, "variant %zu: the scribbled block was handed out", v);
                cr_assert_eq(stats_of(a).cuts, 1, "variant %zu", v);
                cr_assert_eq(hdr_of(a, x)->word, bad[v], "variant %zu: the pop wrote it", v);
                uint64_t bulk[4];
                uint32_t k = eng_arena_alloc_bulk(a, 3000, 3, bulk, 4);
                for (uint32_t i = 0; i < k; i++)
                        cr_assert_neq(bulk[i], x, "variant %zu", v);
                fx_done(&f);
        }
}

/*
 * A bad header in the middle of a superblock: reclaim abandons the rest of that superblock,
 * counts it, and still frees the owner's blocks in every other superblock.
 */
Test(damage, reclaim_goes_on_past_a_bad_header, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        enum { N = 700 }; /* 2.7 superblocks of 256 blocks, owners 5 and 6 alternating */
        static uint64_t off[N];
        for (int i = 0; i < N; i++)
                cr_assert_eq(eng_arena_alloc(a, 3000, 5 + (i % 2), &off[i]), 0);
        uint64_t top_sb = a->top - MIB; /* walked first */
        cr_assert_eq(off[0] - ENG_ARENA_HDR_BYTES, top_sb);
        hdr_of(a, off[129])->word = 0x5ca1ab1e; /* owner 6's, mid superblock */

        int64_t n = eng_arena_reclaim(a, 5);
        uint64_t elsewhere = 0, freed_elsewhere = 0;
        for (int i = 0; i < N; i += 2) {
                if (off[i] - ENG_ARENA_HDR_BYTES >= top_sb)
                        continue;
                elsewhere++;
                freed_elsewhere += eng_arena_owner(a, off[i]) == 0;
        }
        cr_assert_eq(freed_elsewhere, elsewhere,
                     "%llu of owner 5's %llu blocks in the other "
                     "superblocks freed",
                     (unsigned long long)freed_elsewhere, (unsigned long long)elsewhere);
        /* Before the bad header: 65 of owner 5's blocks (0, 2, ..., 128). */
        cr_assert_eq(n, (int64_t)(elsewhere + 65), "reclaim returned %lld", (long long)n);
        for (int i = 130; i < 256; i += 2)
                cr_assert_eq(eng_arena_owner(a, off[i]), 5, "abandoned: left as it was");
        cr_assert_eq(eng_arena_walk_skips(a), 1);
        cr_assert_geq(eng_arena_anomalies(a), 1);
        for (int i = 1; i < N; i += 2)
                if (i != 129)
                        cr_assert_eq(eng_arena_owner(a, off[i]), 6);
        fx_done(&f);
}

/* Line 0 of the header scribbled (the magic, the geometry): heal puts it back and new attaches
 * work again. Both kinds: the header is theirs alike. */
TEST_BOTH_KINDS(heal_restores_header_line0, 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, kind, 8 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        eng_arena_t b;
        char what[256];
        uint64_t x;
        cr_assert_eq(eng_arena_alloc(a, 5000, 1, &x), 0);
        cr_assert_eq(eng_arena_heal(a, what, sizeof what), 0, "nothing to heal: %s", what);

        h->magic = 0;
        cr_assert_eq(eng_arena_attach(&b, f.mem, f.size), -EPROTO);
        cr_assert_eq(eng_arena_heal(a, what, sizeof what), ENG_ARENA_HEALED_HEADER, "%s", KN(a));
        cr_assert(strstr(what, "magic") != NULL, "%s", what);
        cr_assert_eq(eng_arena_attach(&b, f.mem, f.size), 0);

        struct eng_arena_hdr saved = *h;
        memset(h, 0xa5, 64); /* all of line 0 */
        h->rec_slots_max = 3;
        cr_assert_neq(eng_arena_attach(&b, f.mem, f.size), 0);
        cr_assert_eq(eng_arena_heal(a, what, sizeof what), ENG_ARENA_HEALED_HEADER);
        cr_assert(strstr(what, "top") != NULL && strstr(what, "rec_slots_max") != NULL, "%s", what);
        cr_assert_eq(memcmp(h, &saved, offsetof(struct eng_arena_hdr, top) + 8), 0,
                     "line 0 as format wrote it");
        cr_assert_eq(h->rec_slots_max, saved.rec_slots_max);
        cr_assert_eq(eng_arena_attach(&b, f.mem, f.size), 0);
        cr_assert_eq(b.top, a->top);
        cr_assert_eq(b.rec_stride, a->rec_stride);
        cr_assert_eq(eng_arena_owner(&b, x), 1);
        cr_assert_eq(eng_arena_heal(a, NULL, 0), 0, "healed once is enough");
        cr_assert_eq(eng_arena_free(&b, x), 0);
        ASSERT_ARENA_OK(a, "healed");
        fx_done(&f);
}

/* Scribbled watermarks: garbage, buf_bottom raised, rec_top moved. heal puts them back (this
 * view carved the records and saw every carve). */
Test(damage, heal_restores_watermarks, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        uint64_t r[3], off[300];
        for (int i = 0; i < 3; i++)
                cr_assert_eq(eng_arena_rec_alloc(a, 1, &r[i]), 0);
        for (int i = 0; i < 300; i++)
                cr_assert_eq(eng_arena_alloc(a, 4000, 2, &off[i]), 0);
        const uint64_t m0 = h->marks, sb = MIB;
        const uint32_t rt = marks_rec_top(m0), bb = marks_buf_bottom(m0);
        const uint32_t st = units_of(a->rec_stride), su = units_of(sb);
        cr_assert_eq(units_to_off(bb), a->top - 2 * sb);
        const uint64_t bad[] = {
            0xdeadbeefcafef00dull,            /* garbage */
            0,                                /* zero */
            marks_pack(rt, bb + su),          /* buf_bottom up a superblock */
            marks_pack(rt, units_of(a->top)), /* buf_bottom at top */
            marks_pack(rt, bb + 1),           /* buf_bottom off a superblock boundary */
            marks_pack(rt + st, bb),          /* rec_top up a slot */
            marks_pack(rt - st, bb),          /* rec_top down a slot */
            marks_pack(rt + 1, bb),           /* rec_top off a slot boundary */
            marks_pack(bb + su, bb),          /* crossed */
        };
        char what[256];
        for (size_t v = 0; v < sizeof bad / sizeof bad[0]; v++) {
                h->marks = bad[v];
                int rc = eng_arena_heal(a, what, sizeof what);
                cr_assert_eq(rc, ENG_ARENA_HEALED_MARKS, "variant %zu: %d", v, rc);
                cr_assert_eq(h->marks, m0, "variant %zu: %#llx (%s)", v,
                             (unsigned long long)h->marks, what);
                ASSERT_ARENA_OK(a, "healed");
        }
        /* A sane-looking lower buf_bottom cannot be told from a carve: it stays (its unborn
         * superblock fails the strict check) until a rebuild gives it back. */
        h->marks = marks_pack(rt, bb - su);
        cr_assert_eq(eng_arena_heal(a, NULL, 0), 0);
        assert_check_fails(a, "a superblock exposed");
        uint64_t leaked;
        cr_assert_eq(eng_arena_check_leaks(a, &leaked, NULL, 0), 0);
        cr_assert_eq(leaked, sb);
        eng_arena_rebuild_cfg_t cfg = {.rec_live = NULL, .owner_live = NULL};
        (void)cfg;
        for (int i = 0; i < 300; i++)
                cr_assert_eq(eng_arena_free(a, off[i]), 0);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(eng_arena_rec_free(a, r[i]), 0);
        eng_arena_rebuild_report_t rep;
        rebuild_to_empty(a, &rep, "after the lowered watermark");
        fx_done(&f);
}

/* A rebuild through one view raises buf_bottom (and zeroes what it gives back); heal through
 * another view, which saw the old, lower buf_bottom, adopts it instead of pushing it back. */
Test(damage, heal_adopts_a_rebuild_through_another_view, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 8 * MIB, 256, 12, 20);
        eng_arena_t b;
        cr_assert_eq(eng_arena_attach(&b, f.mem, f.size), 0);
        uint64_t off[600];
        for (int i = 0; i < 600; i++)
                cr_assert_eq(eng_arena_alloc(a, 4000, 1, &off[i]), 0);
        for (int i = 0; i < 600; i++)
                cr_assert_eq(eng_arena_free(a, off[i]), 0);
        eng_arena_rebuild_report_t rep;
        cr_assert_eq(eng_arena_rebuild(&b, NULL, &rep), 0);
        cr_assert_eq(rep.gap_bytes, 3 * MIB);
        uint64_t m = a->hdr->marks;
        cr_assert_eq(eng_arena_heal(a, NULL, 0), 0);
        cr_assert_eq(a->hdr->marks, m, "heal undid the rebuild");
        ASSERT_ARENA_OK(a, "healed after the rebuild");
        uint64_t x;
        cr_assert_eq(eng_arena_alloc(a, 4000, 1, &x), 0);
        cr_assert_eq(eng_arena_free(a, x), 0);
        ASSERT_ARENA_OK(a, "and used");
        fx_done(&f);
}

/* buf_bottom raised over superblocks in use: the carve that wins one refuses it (it is born),
 * and the watermark walks back down one superblock per refusal. */
Test(damage, carve_into_born_superblock_is_refused, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 4 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        const uint64_t sb = MIB, max = eng_arena_max_alloc(a);
        uint64_t b1, b2, b3;
        cr_assert_eq(eng_arena_alloc(a, max, 1, &b1), 0);
        cr_assert_eq(eng_arena_alloc(a, max, 2, &b2), 0);
        fill(a, b1, max, 1);
        fill(a, b2, max, 2);
        uint64_t m0 = h->marks;
        cr_assert_eq(units_to_off(marks_buf_bottom(m0)), a->top - 2 * sb);
        h->marks = marks_pack(marks_rec_top(m0), units_of(a->top - sb)); /* sane, but raised */

        int rc = eng_arena_alloc(a, max, 3, &b3);
        cr_assert_eq(rc, -ENOMEM, "the carve handed out %llu (b1 %llu, b2 %llu)",
                     (unsigned long long)b3, (unsigned long long)b1, (unsigned long long)b2);
        cr_assert_geq(eng_arena_anomalies(a), 1);
        cr_assert_eq(h->marks, m0, "the refused carve moved the watermark back down");
        cr_assert_eq(eng_arena_owner(a, b2), 2);
        cr_assert(intact(a, b1, max, 1) && intact(a, b2, max, 2));
        /* The next carve takes the unborn superblock below. */
        cr_assert_eq(eng_arena_alloc(a, max, 3, &b3), 0);
        cr_assert_eq(b3, a->top - 3 * sb + ENG_ARENA_HDR_BYTES);
        cr_assert(intact(a, b1, max, 1) && intact(a, b2, max, 2));
        ASSERT_ARENA_OK(a, "after the walk down");
        fx_done(&f);
}

/* The same for records: rec_top moved down under slots in use; a slot carve refuses them, and
 * heal puts rec_top back. A scribbled slot on the record list is refused by the pop. */
Test(damage, record_carve_and_pop_refuse_slots_in_use, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 4 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        enum { R = 6 };
        uint64_t r[R], x;
        for (int i = 0; i < R; i++) {
                cr_assert_eq(eng_arena_rec_alloc(a, 10 + i, &r[i]), 0);
                fill(a, r[i], 256, 100 + i);
        }
        uint64_t m0 = h->marks;
        uint32_t st = units_of(a->rec_stride);
        h->marks = marks_pack(marks_rec_top(m0) - 2 * st, marks_buf_bottom(m0));
        for (int t = 0; t < 2; t++) {
                int rc = eng_arena_rec_alloc(a, 99, &x);
                cr_assert_eq(rc, -ENOMEM, "try %d: slot %lld in use handed out", t,
                             (long long)eng_arena_rec_index(a, x));
        }
        cr_assert_eq(eng_arena_anomalies(a), 2);
        cr_assert_eq(h->marks, m0, "walked back up");
        h->marks = marks_pack(marks_rec_top(m0) - 3 * st, marks_buf_bottom(m0));
        cr_assert_eq(eng_arena_heal(a, NULL, 0), ENG_ARENA_HEALED_MARKS);
        cr_assert_eq(h->marks, m0);
        cr_assert_eq(eng_arena_rec_alloc(a, 99, &x), 0);
        cr_assert_eq(eng_arena_rec_index(a, x), R);
        for (int i = 0; i < R; i++)
                cr_assert(intact(a, r[i], 256, 100 + i), "record %d", i);

        /* The record list: a listed slot scribbled, then a head off the slots. */
        cr_assert_eq(eng_arena_rec_free(a, r[1]), 0);
        cr_assert_eq(eng_arena_rec_free(a, r[2]), 0);
        hdr_of(a, r[2])->word = blk_word(0, BLK_RUSED, 4);
        cr_assert_eq(eng_arena_rec_alloc(a, 98, &x), 0);
        cr_assert_neq(x, r[2], "the scribbled slot was handed out");
        cr_assert_eq(stats_of(a).cuts, 1);
        cr_assert_eq(eng_arena_rec_index(a, x), R + 1, "carved (r[1] leaked with the cut)");
        cr_assert_eq(eng_arena_rec_free(a, x), 0);
        h->rec_head = head_pack(units_of(a->rec_base) + 1, 5); /* not a slot boundary */
        cr_assert_eq(eng_arena_rec_alloc(a, 97, &x), 0);
        cr_assert_eq(stats_of(a).cuts, 2);
        cr_assert_eq(eng_arena_rec_index(a, x), R + 2, "carved");
        fx_done(&f);
}

/* ---- rebuild ---- */

#define RB_OWNERS 16
#define RB_RECS   24

static bool rb_owner_odd(uint32_t owner, void *ctx)
{
        (void)ctx;
        return owner % 2 == 1 && owner <= RB_OWNERS;
}

static bool rb_rec_even(uint64_t slot, void *ctx)
{
        (void)ctx;
        return slot % 2 == 0 && slot < RB_RECS;
}

struct rb_blk {
        uint64_t off, len;
        uint32_t owner;
        bool live;
};

/* Is [o, o+n) clear of every live block and live record? */
static bool rb_clear(eng_arena_t *a, const struct rb_blk *b, int nb, const uint64_t *rec,
                     uint64_t o, uint64_t n)
{
        for (int i = 0; i < nb; i++) {
                if (!b[i].live)
                        continue;
                uint64_t s = b[i].off - ENG_ARENA_HDR_BYTES;
                uint64_t e = s + ENG_ARENA_HDR_BYTES + eng_arena_capacity(a, b[i].off);
                if (o < e && s < o + n)
                        return false;
        }
        for (int i = 0; i < RB_RECS; i += 2) {
                uint64_t s = rec[i] - ENG_ARENA_HDR_BYTES;
                if (o < s + a->rec_stride && s < o + n)
                        return false;
        }
        return true;
}

/* A random word that is not a block header (random scribbles must not forge a live block). */
static uint64_t rb_noise(uint64_t *rng)
{
        uint64_t w = xorshift(rng);
        if (blk_magic(w) == BLK_MAGIC)
                w ^= (uint64_t)1 << 63;
        return w;
}

/*
 * Owners 1..16 allocate blocks of random sizes, some are freed; the odd owners stay live, and
 * so do the even record slots. Then random scribbles everywhere else: free-list heads, class
 * and record counters, the cut count, the record head, the watermarks, line 0, and random words
 * anywhere in the region that is not a live block or a live record (dead owners' headers, the
 * links and headers of listed blocks, free space, dead records, the gap). A rebuild must keep
 * exactly the live blocks (same offsets, owners, classes, payloads) and live records, free
 * everything else, pass the strict check and serve a long alloc/free run; a second rebuild with
 * nothing live gives every byte back.
 */
Test(damage, rebuild_keeps_exactly_the_live_blocks, .timeout = 60)
{
        for (uint64_t seed = 1; seed <= 8; seed++) {
                struct fx f;
                eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 16 * MIB, 256, 12, 20);
                struct eng_arena_hdr *h = a->hdr;
                enum { NB = 400 };
                static struct rb_blk b[NB];
                uint64_t rec[RB_RECS], rng = 0x9e3779b97f4a7c15ull * seed;
                int nb = 0;
                for (int i = 0; i < RB_RECS; i++) {
                        cr_assert_eq(eng_arena_rec_alloc(a, 7, &rec[i]), 0);
                        fill(a, rec[i], 256, 5000 + (uint64_t)i);
                }
                for (int i = 0; i < NB; i++) {
                        uint64_t r = xorshift(&rng);
                        uint64_t len = 1 + (r >> 8) % (r % 8 == 0 ? 300000 : 12000);
                        uint32_t owner = 1 + (uint32_t)(xorshift(&rng) % RB_OWNERS);
                        if (eng_arena_alloc(a, len, owner, &b[nb].off) != 0)
                                break;
                        b[nb].len = len;
                        b[nb].owner = owner;
                        b[nb].live = true;
                        fill(a, b[nb].off, len, seed * 100000 + (uint64_t)nb);
                        nb++;
                }
                cr_assert_gt(nb, 100);
                for (int i = 0; i < nb; i++)
                        if (xorshift(&rng) % 3 == 0) {
                                cr_assert_eq(eng_arena_free(a, b[i].off), 0);
                                b[i].live = false;
                        }
                uint64_t live_blocks = 0, live_bytes = 0, dead_blocks = 0;
                for (int i = 0; i < nb; i++) {
                        if (b[i].live && rb_owner_odd(b[i].owner, NULL)) {
                                live_blocks++;
                                live_bytes += eng_arena_capacity(a, b[i].off) + ENG_ARENA_HDR_BYTES;
                        } else {
                                dead_blocks += b[i].live;
                                b[i].live = false;
                        }
                }
                ASSERT_ARENA_OK(a, "before the scribbles");

                /* The scribbles. */
                for (int k = 0; k < 400; k++) {
                        uint64_t r = xorshift(&rng);
                        switch (r % 8) {
                        case 0:
                                h->cls[(r >> 8) % a->nclasses].head = xorshift(&rng);
                                break;
                        case 1: {
                                struct arena_class *c = &h->cls[(r >> 8) % a->nclasses];
                                ((uint64_t *)c)[1 + (r >> 16) % 5] = xorshift(&rng);
                                break;
                        }
                        case 2:
                                if (r & 0x100)
                                        h->marks = xorshift(&rng);
                                else
                                        h->rec_head = xorshift(&rng);
                                break;
                        case 3: {
                                uint64_t *w = &h->rec_used;
                                w[(r >> 8) % 6] = xorshift(&rng); /* rec_used .. cuts */
                                break;
                        }
                        case 4:
                                ((uint64_t *)h)[(r >> 8) % 8] = xorshift(&rng); /* line 0 */
                                break;
                        default: {
                                /* A word anywhere off the live data; often a 2^min-aligned
                                 * one (where headers are), often a header's link. */
                                uint64_t o =
                                    a->rec_base + (xorshift(&rng) % (a->top - a->rec_base));
                                o &= (r & 0x100) ? ~(uint64_t)4095 : ~(uint64_t)7;
                                if (r & 0x200)
                                        o += 8;
                                if (rb_clear(a, b, nb, rec, o, 8))
                                        *(uint64_t *)(a->base + o) = rb_noise(&rng);
                                break;
                        }
                        }
                }
                /* The live blocks' and records' headers were not touched: reads as before. */
                eng_arena_rebuild_cfg_t cfg = {
                    .rec_live = rb_rec_even, .owner_live = rb_owner_odd, .ctx = NULL};
                eng_arena_rebuild_report_t rep;
                int rc = eng_arena_rebuild(a, &cfg, &rep);
                cr_assert_eq(rc, 0, "seed %llu: rebuild %d", (unsigned long long)seed, rc);
                ASSERT_ARENA_OK(a, "rebuilt");
                cr_assert_eq(rep.kept_blocks, live_blocks, "seed %llu: kept %llu of %llu",
                             (unsigned long long)seed, (unsigned long long)rep.kept_blocks,
                             (unsigned long long)live_blocks);
                cr_assert_eq(rep.kept_bytes, live_bytes);
                cr_assert_leq(rep.freed_blocks, dead_blocks + 8, "seed %llu: freed %llu, dead %llu",
                              (unsigned long long)seed, (unsigned long long)rep.freed_blocks,
                              (unsigned long long)dead_blocks);
                cr_assert_eq(rep.rec_kept, RB_RECS / 2);
                eng_arena_stats_t st = stats_of(a);
                cr_assert_eq(st.buf_used_blocks, live_blocks);
                cr_assert_eq(st.buf_used_bytes, live_bytes);
                cr_assert_eq(st.rec_used, RB_RECS / 2);
                cr_assert_leq(st.rec_top, rec[RB_RECS - 2] - ENG_ARENA_HDR_BYTES + st.rec_stride,
                              "slots above the last live one went back to the gap");
                for (int i = 0; i < nb; i++) {
                        if (b[i].live) {
                                cr_assert_eq(eng_arena_owner(a, b[i].off), b[i].owner);
                                cr_assert_geq(eng_arena_capacity(a, b[i].off), b[i].len);
                                cr_assert(
                                    intact(a, b[i].off, b[i].len, seed * 100000 + (uint64_t)i),
                                    "seed %llu: live block %d damaged", (unsigned long long)seed,
                                    i);
                        } else {
                                cr_assert_eq(eng_arena_owner(a, b[i].off), 0);
                        }
                }
                for (int i = 0; i < RB_RECS; i += 2) {
                        cr_assert_eq(eng_arena_rec_index(a, rec[i]), i);
                        cr_assert(intact(a, rec[i], 256, 5000 + (uint64_t)i));
                }

                /* A long alloc/free run on the rebuilt arena. */
                enum { W = 64 };
                uint64_t wo[W] = {0}, wl[W] = {0};
                for (int k = 0; k < 30000; k++) {
                        int i = (int)(xorshift(&rng) % W);
                        if (wo[i]) {
                                cr_assert(intact(a, wo[i], wl[i], 77000 + (uint64_t)i));
                                cr_assert_eq(eng_arena_free(a, wo[i]), 0);
                                wo[i] = 0;
                        }
                        uint64_t len = 1 + xorshift(&rng) % (k % 16 == 0 ? 200000 : 10000);
                        rc = eng_arena_alloc(a, len, 100, &wo[i]);
                        if (rc == -ENOMEM) {
                                wo[i] = 0;
                                continue;
                        }
                        cr_assert_eq(rc, 0);
                        wl[i] = len;
                        fill(a, wo[i], len, 77000 + (uint64_t)i);
                        if (k % 512 == 0) {
                                uint64_t x;
                                cr_assert_eq(eng_arena_rec_alloc(a, 8, &x), 0);
                                cr_assert_eq(rb_rec_even((uint64_t)eng_arena_rec_index(a, x), NULL),
                                             false, "a live record slot handed out");
                                cr_assert_eq(eng_arena_rec_free(a, x), 0);
                        }
                }
                for (int i = 0; i < W; i++)
                        if (wo[i])
                                cr_assert_eq(eng_arena_free(a, wo[i]), 0);
                for (int i = 0; i < nb; i++)
                        if (b[i].live)
                                cr_assert(
                                    intact(a, b[i].off, b[i].len, seed * 100000 + (uint64_t)i),
                                    "live block %d damaged by the run", i);
                ASSERT_ARENA_OK(a, "after the run");
                cr_assert_eq(stats_of(a).cuts, 0);

                /* Nothing live any more: everything back to the gap. */
                rebuild_to_empty(a, &rep, "second rebuild");
                cr_assert(rep.was_consistent);
                cr_assert_eq(rep.freed_blocks, live_blocks);
                cr_assert_eq(rep.rec_freed, RB_RECS / 2);
                fx_done(&f);
        }
}

/* The whole region, header included, overwritten with random bytes, again and again: every
 * call terminates and stays inside the region (ASan would see it), and a rebuild with nothing
 * live brings the arena back. */
Test(damage, every_call_survives_a_region_of_garbage, .timeout = 60)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 4 * MIB, 256, 12, 18);
        uint64_t rng = 0xfeedfacecafebeefull;
        for (int round = 0; round < 12; round++) {
                uint64_t x, offs[8];
                for (int i = 0; i < 40; i++)
                        if (eng_arena_alloc(a, 1 + xorshift(&rng) % 100000, 3, &x) == 0 &&
                            i % 3 == 0)
                                eng_arena_free(a, x);
                cr_assert_eq(eng_arena_rec_alloc(a, 3, &x), 0);
                /* Garbage: everywhere (even rounds), or on block-header positions only. */
                uint64_t *w = (uint64_t *)a->base;
                for (uint64_t i = 0; i < f.size / 8; i++) {
                        if (round % 2 == 0 || i % 512 < 2 || i < 1024)
                                w[i] = xorshift(&rng);
                        if (round % 4 == 3 && i % 512 == 0 && i >= 1024)
                                w[i] = blk_word((uint32_t)(xorshift(&rng) % 8),
                                                1 + (uint32_t)(xorshift(&rng) % 2),
                                                (uint32_t)(xorshift(&rng) % 4)),
                                w[i + 1] = xorshift(&rng) % (f.size / 64);
                }
                eng_arena_stats_t st;
                char why[128];
                uint64_t leaked;
                eng_arena_stats(a, &st);
                (void)eng_arena_check(a, why, sizeof why);
                (void)eng_arena_check_leaks(a, &leaked, why, sizeof why);
                cr_assert_geq(eng_arena_reclaim(a, 3), 0);
                for (int i = 0; i < 64; i++) {
                        uint64_t o = xorshift(&rng) % f.size;
                        (void)eng_arena_owner(a, o);
                        (void)eng_arena_capacity(a, o);
                        if (eng_arena_alloc(a, 1 + xorshift(&rng) % 200000, 4, &x) == 0) {
                                cr_assert_not_null(eng_arena_ptr(a, x, eng_arena_capacity(a, x)));
                                cr_assert_geq(x, a->rec_base + ENG_ARENA_HDR_BYTES);
                        }
                        uint32_t k = eng_arena_alloc_bulk(a, 3000, 4, offs, 8);
                        for (uint32_t j = 0; j < k; j++)
                                cr_assert_not_null(eng_arena_ptr(a, offs[j], 4032));
                        (void)eng_arena_free(a, o & ~(uint64_t)63);
                        if (eng_arena_rec_alloc(a, 4, &x) == 0)
                                cr_assert_not_null(eng_arena_ptr(a, x, 256));
                        (void)eng_arena_rec_free(a, o & ~(uint64_t)63);
                }
                cr_assert_geq(eng_arena_heal(a, why, sizeof why), 0);
                eng_arena_rebuild_report_t rep;
                rebuild_to_empty(a, &rep, "after the garbage");
        }
        fx_done(&f);
}

Test(mutex, rebuild_is_not_supported, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_MUTEX, 4 * MIB, 256, 12, 20);
        eng_arena_rebuild_report_t rep;
        cr_assert_eq(eng_arena_rebuild(a, NULL, &rep), -ENOTSUP);
        cr_assert_eq(eng_arena_rebuild(NULL, NULL, &rep), -EINVAL);
        cr_assert_eq(eng_arena_heal(NULL, NULL, 0), -EINVAL);
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

/*
 * Coalescing pops every free block below the largest class. Forged lists can hand it a block and
 * a smaller one lying inside it (each header valid for its class): the merge then read past its
 * array of pieces (ASan: heap-buffer-overflow in lf_coalesce, seen in CI under the scribbler
 * stress) and pushed the inner piece too, so the same memory was listed twice and handed out to
 * two owners. Now a piece inside another is dropped.
 */
Test(damage, coalescing_drops_a_piece_inside_another, .timeout = 10)
{
        struct fx f;
        eng_arena_t *a = fx_make(&f, ENG_ARENA_LOCKFREE, 4 * MIB, 256, 12, 20);
        struct eng_arena_hdr *h = a->hdr;
        /* Fill the arena with 8 KiB blocks (class 1). */
        static uint64_t offs[1024];
        uint64_t n = 0;
        while (n < 1024 && eng_arena_alloc(a, 8000, 1, &offs[n]) == 0)
                n++;
        cr_assert_gt(n, 8);
        /* One of them goes back: the class-1 list is {X}. */
        uint64_t x = offs[n / 2] - ENG_ARENA_HDR_BYTES;
        cr_assert_eq(eng_arena_free(a, offs[n / 2]), 0);
        /* A forged 4 KiB free block inside X on the class-0 list. */
        uint64_t y = x + 4096;
        struct blk_hdr *b = (struct blk_hdr *)(a->base + y);
        b->next = 0;
        b->bytes = 4096;
        b->word = blk_word(0, BLK_FREE, 0);
        h->cls[0].head = head_pack(units_of(y), head_tag(h->cls[0].head) + 1);
        /* A 16 KiB allocation finds no list, no gap: it coalesces (and fails: X's buddy is in
         * use). */
        uint64_t big;
        cr_assert_eq(eng_arena_alloc(a, 16000, 2, &big), -ENOMEM);
        /* X comes back once; no 4 KiB block inside it may be handed out besides. */
        uint64_t got8, got4;
        cr_assert_eq(eng_arena_alloc(a, 8000, 3, &got8), 0);
        cr_assert_eq(got8, x + ENG_ARENA_HDR_BYTES);
        int rc = eng_arena_alloc(a, 3000, 4, &got4);
        cr_assert(rc == -ENOMEM || got4 < x || got4 >= x + 8192,
                  "a 4 KiB block at %llu was handed out inside the 8 KiB block at %llu",
                  (unsigned long long)got4, (unsigned long long)x);
        fx_done(&f);
}
