/*
 * test_ring.c - the SPSC descriptor rings of engine/ (ring_* in internal.h): capacity, empty,
 * slot-index and 32-bit counter wrap, FIFO order (also across threads), and that a peer which
 * scribbles over the shared ring header can never make an endpoint touch memory outside its
 * slots (the slots sit in the middle of a large PROT_NONE reservation: a stray access faults).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

TestSuite(ring, .timeout = 60);

/* A ring whose slots are surrounded by GUARD bytes of PROT_NONE on either side. */
#define GUARD (64ul << 20)

struct gring {
        struct ck_ring shared;
        unsigned char *resv;
        size_t resv_len;
        struct eng_desc *slots;
        uint32_t depth;
        struct ring_end prod, cons;
};

/* Slots end exactly at the upper guard if at_end, else start exactly at the lower guard. */
static void gring_init(struct gring *g, uint32_t depth, uint32_t start, bool at_end)
{
        memset(g, 0, sizeof(*g));
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t bytes = (size_t)depth * sizeof(struct eng_desc);
        size_t span = (bytes + page - 1) / page * page;
        g->resv_len = 2 * GUARD + span;
        g->resv =
            mmap(NULL, g->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        cr_assert_neq(g->resv, MAP_FAILED);
        cr_assert_eq(mprotect(g->resv + GUARD, span, PROT_READ | PROT_WRITE), 0);
        unsigned char *lo = g->resv + GUARD;
        g->slots = (struct eng_desc *)(at_end ? lo + span - bytes : lo);
        g->depth = depth;
        ring_init_shared(&g->shared, depth, start);
        ring_attach(&g->prod, &g->shared, g->slots, depth, true);
        ring_attach(&g->cons, &g->shared, g->slots, depth, false);
}

static void gring_fini(struct gring *g)
{
        munmap(g->resv, g->resv_len);
}

static struct eng_desc mk(uint64_t i)
{
        struct eng_desc d = {.cmd = (uint16_t)(0x100 + (i & 0xff)),
                             .flags = (uint16_t)(i >> 8),
                             .len = (uint32_t)(i * 7),
                             .seq = i,
                             .off = ~i,
                             .arg = i * 0x9e3779b97f4a7c15ull};
        return d;
}

static void expect_desc(const struct eng_desc *d, uint64_t i)
{
        struct eng_desc e = mk(i);
        cr_assert_eq(d->seq, i, "expected descriptor %llu, got seq %llu", (unsigned long long)i,
                     (unsigned long long)d->seq);
        cr_assert(memcmp(d, &e, sizeof(e)) == 0, "descriptor %llu corrupted",
                  (unsigned long long)i);
}

Test(ring, empty_ring_pops_nothing)
{
        struct gring g;
        gring_init(&g, 8, 0, false);
        struct eng_desc d;
        cr_assert_not(ring_pop_spsc(&g.cons, &d));
        cr_assert_eq(ring_used(&g.cons), 0);
        cr_assert_eq(ring_free(&g.prod), 7);
        struct eng_desc x = mk(1);
        cr_assert(ring_push_spsc(&g.prod, &x));
        cr_assert(ring_pop_spsc(&g.cons, &d));
        expect_desc(&d, 1);
        cr_assert_not(ring_pop_spsc(&g.cons, &d), "a drained ring must be empty again");
        cr_assert_eq(ring_used(&g.cons), 0);
        cr_assert_eq(ring_free(&g.prod), 7);
        gring_fini(&g);
}

Test(ring, full_ring_holds_depth_minus_one)
{
        for (uint32_t depth = 2; depth <= 256; depth *= 2) {
                struct gring g;
                gring_init(&g, depth, 0, depth % 2 == 0);
                for (uint32_t i = 0; i < depth - 1; i++) {
                        struct eng_desc x = mk(i);
                        cr_assert_eq(ring_free(&g.prod), depth - 1 - i);
                        cr_assert(ring_push_spsc(&g.prod, &x), "depth %u: push %u of %u failed",
                                  depth, i, depth - 1);
                }
                struct eng_desc x = mk(999);
                cr_assert_not(ring_push_spsc(&g.prod, &x), "depth %u: a full ring took one more",
                              depth);
                cr_assert_eq(ring_used(&g.cons), depth - 1);
                cr_assert_eq(ring_free(&g.prod), 0);
                struct eng_desc d;
                cr_assert(ring_pop_spsc(&g.cons, &d));
                expect_desc(&d, 0);
                cr_assert_eq(ring_free(&g.prod), 1);
                x = mk(depth - 1);
                cr_assert(ring_push_spsc(&g.prod, &x), "depth %u: no room after a pop", depth);
                cr_assert_not(ring_push_spsc(&g.prod, &x));
                for (uint32_t i = 1; i < depth; i++) {
                        cr_assert(ring_pop_spsc(&g.cons, &d));
                        expect_desc(&d, i);
                }
                cr_assert_not(ring_pop_spsc(&g.cons, &d));
                gring_fini(&g);
        }
}

/* Fill levels vary so that the slot index wraps at every possible position. */
Test(ring, slot_index_wraps_preserving_fifo)
{
        struct gring g;
        gring_init(&g, 4, 0, true);
        uint64_t next_in = 0, next_out = 0;
        for (int round = 0; round < 5000; round++) {
                int burst = 1 + round % 3;
                for (int k = 0; k < burst; k++) {
                        struct eng_desc x = mk(next_in);
                        if (!ring_push_spsc(&g.prod, &x))
                                break;
                        next_in++;
                }
                cr_assert_eq(ring_used(&g.cons), next_in - next_out);
                int take = 1 + (round * 7) % 3;
                for (int k = 0; k < take; k++) {
                        struct eng_desc d;
                        if (!ring_pop_spsc(&g.cons, &d))
                                break;
                        expect_desc(&d, next_out);
                        next_out++;
                }
        }
        cr_assert_gt(next_out, 5000);
        gring_fini(&g);
}

/* Counters start just below 2^32: push and pop across the wrap, full and empty at the wrap. */
Test(ring, counters_wrap_at_32_bits)
{
        const uint32_t depth = 16;
        const uint32_t starts[] = {UINT32_MAX, UINT32_MAX - 1, UINT32_MAX - depth / 2,
                                   UINT32_MAX - depth + 1, UINT32_MAX - 3 * depth};
        for (size_t si = 0; si < sizeof(starts) / sizeof(starts[0]); si++) {
                uint32_t start = starts[si];
                struct gring g;
                gring_init(&g, depth, start, si % 2 == 1);
                cr_assert_eq(ring_used(&g.cons), 0);
                cr_assert_eq(ring_free(&g.prod), depth - 1);
                uint64_t in = 0, out = 0;
                /* Fill completely across the wrap, check full, drain, repeat a few times. */
                for (int cycle = 0; cycle < 6; cycle++) {
                        for (uint32_t k = 0; k < depth - 1; k++) {
                                struct eng_desc x = mk(in);
                                cr_assert(ring_push_spsc(&g.prod, &x),
                                          "start %u: push %llu failed at used %u", start,
                                          (unsigned long long)in, ring_used(&g.cons));
                                in++;
                        }
                        struct eng_desc x = mk(in);
                        cr_assert_not(ring_push_spsc(&g.prod, &x), "start %u: over-full", start);
                        cr_assert_eq(ring_used(&g.cons), depth - 1, "start %u", start);
                        cr_assert_eq(ring_free(&g.prod), 0, "start %u", start);
                        for (uint32_t k = 0; k < depth - 1; k++) {
                                struct eng_desc d;
                                cr_assert(ring_pop_spsc(&g.cons, &d), "start %u: pop %llu failed",
                                          start, (unsigned long long)out);
                                expect_desc(&d, out);
                                out++;
                        }
                        struct eng_desc d;
                        cr_assert_not(ring_pop_spsc(&g.cons, &d), "start %u: not empty", start);
                        cr_assert_eq(ring_used(&g.cons), 0);
                        cr_assert_eq(ring_free(&g.prod), depth - 1);
                }
                /* The shared counters really went across 2^32. */
                uint32_t p = g.shared.p_tail;
                cr_assert_eq(p, (uint32_t)(start + in));
                cr_assert_lt(p, start, "start %u: the counter never wrapped (p_tail %u)", start, p);
                gring_fini(&g);
        }
}

struct spsc_arg {
        struct gring *g;
        uint64_t n;
        uint64_t bad; /* first out-of-order index + 1, 0 if none */
};

static void *producer(void *p)
{
        struct spsc_arg *a = p;
        for (uint64_t i = 0; i < a->n;) {
                struct eng_desc x = mk(i);
                if (ring_push_spsc(&a->g->prod, &x))
                        i++;
                else
                        sched_yield();
        }
        return NULL;
}

static void *consumer(void *p)
{
        struct spsc_arg *a = p;
        for (uint64_t i = 0; i < a->n;) {
                struct eng_desc d;
                if (!ring_pop_spsc(&a->g->cons, &d)) {
                        sched_yield();
                        continue;
                }
                struct eng_desc e = mk(i);
                if (a->bad == 0 && memcmp(&d, &e, sizeof(e)) != 0)
                        a->bad = i + 1;
                i++;
        }
        return NULL;
}

/* Two threads, a small ring and the counters starting near the wrap: order and contents. */
Test(ring, fifo_order_between_threads)
{
        struct gring g;
        gring_init(&g, 8, UINT32_MAX - 100, true);
#ifdef __SANITIZE_ADDRESS__
        const uint64_t n = 200000;
#else
        const uint64_t n = 2000000;
#endif
        struct spsc_arg a = {.g = &g, .n = n};
        pthread_t tp, tc;
        cr_assert_eq(pthread_create(&tc, NULL, consumer, &a), 0);
        cr_assert_eq(pthread_create(&tp, NULL, producer, &a), 0);
        pthread_join(tp, NULL);
        pthread_join(tc, NULL);
        cr_assert_eq(a.bad, 0, "descriptor %llu arrived out of order or corrupted",
                     (unsigned long long)(a.bad - 1));
        cr_assert_eq(ring_used(&g.cons), 0);
        gring_fini(&g);
}

/*
 * The consumer's view: the producer (an untrusted peer) scribbles mask/size to huge values
 * and p_tail far ahead. Pops may return garbage (the engine validates descriptors) but every
 * slot read must stay inside the slots. The private counter starts at 2^16 so that an index
 * taken with the scribbled mask would land 2 MiB away, inside the PROT_NONE guard.
 */
Test(ring, scribbled_header_never_moves_pop_outside_slots)
{
        const uint32_t depth = 128; /* 4 KiB of slots: guard pages touch both ends */
        const uint32_t scribble_mask[] = {UINT32_MAX, 0x7fffffffu, 0xfffffu, 255};
        for (size_t k = 0; k < sizeof(scribble_mask) / sizeof(scribble_mask[0]); k++) {
                struct gring g;
                gring_init(&g, depth, 1u << 16, k % 2 == 0);
                for (uint32_t i = 0; i < 10; i++) {
                        struct eng_desc x = mk(i);
                        cr_assert(ring_push_spsc(&g.prod, &x));
                }
                g.shared.mask = scribble_mask[k];
                g.shared.size = scribble_mask[k] + 1u;
                g.shared.p_tail = g.cons.mine + 0x40000000u;
                g.shared.p_head = 0xdeadbeefu;
                uint32_t used = ring_used(&g.cons);
                cr_assert_leq(used, depth - 1, "ring_used claims %u slots of %u", used, depth);
                struct eng_desc d;
                for (uint32_t i = 0; i < 10; i++) {
                        cr_assert(ring_pop_spsc(&g.cons, &d));
                        expect_desc(&d, i); /* the real descriptors still come first, in order */
                }
                /* Far more pops than slots: garbage, but never outside the slots. */
                for (uint32_t i = 0; i < 20 * depth; i++)
                        cr_assert(ring_pop_spsc(&g.cons, &d));
                /* p_tail behind c_head (a "negative" fill): also garbage, also in bounds. */
                g.shared.p_tail = g.cons.mine - 5;
                for (uint32_t i = 0; i < 3 * depth; i++)
                        cr_assert(ring_pop_spsc(&g.cons, &d));
                cr_assert_leq(ring_used(&g.cons), depth - 1);
                gring_fini(&g);
        }
}

/* The producer's view: the consumer scribbles the header. Pushes stay inside the slots. */
Test(ring, scribbled_header_never_moves_push_outside_slots)
{
        const uint32_t depth = 128;
        struct gring g;
        gring_init(&g, depth, 1u << 16, true);
        g.shared.mask = UINT32_MAX;
        g.shared.size = 0;
        /* c_head far away in every direction: each push that is accepted must land in a slot. */
        const uint32_t heads[] = {0, 0x80000000u, g.prod.mine + 1, g.prod.mine - 1,
                                  g.prod.mine + 12345};
        for (size_t k = 0; k < sizeof(heads) / sizeof(heads[0]); k++) {
                g.shared.c_head = heads[k];
                for (uint32_t i = 0; i < 3 * depth; i++) {
                        struct eng_desc x = mk(i);
                        (void)ring_push_spsc(&g.prod, &x);
                }
                cr_assert_leq(ring_free(&g.prod), depth - 1);
                cr_assert_leq(ring_used(&g.prod), depth - 1);
        }
        gring_fini(&g);
}

/* Both ends keep their own counter: a scribbled shared counter does not desynchronise them. */
Test(ring, private_counters_survive_scribbled_shared_counters)
{
        struct gring g;
        gring_init(&g, 16, 0, false);
        for (uint32_t i = 0; i < 5; i++) {
                struct eng_desc x = mk(i);
                cr_assert(ring_push_spsc(&g.prod, &x));
        }
        /* The producer scribbles c_head (the consumer's published counter). */
        g.shared.c_head = 0x12345678u;
        struct eng_desc d;
        for (uint32_t i = 0; i < 5; i++) {
                cr_assert(ring_pop_spsc(&g.cons, &d));
                expect_desc(&d, i);
        }
        cr_assert_not(ring_pop_spsc(&g.cons, &d), "the consumer followed a scribbled c_head");
        cr_assert_eq(g.shared.c_head, 5, "the consumer republishes its own counter");
        /* The consumer scribbles p_head (unused by the protocol) and the producer carries on. */
        g.shared.p_head = 0xffff0000u;
        for (uint32_t i = 5; i < 10; i++) {
                struct eng_desc x = mk(i);
                cr_assert(ring_push_spsc(&g.prod, &x));
        }
        for (uint32_t i = 5; i < 10; i++) {
                cr_assert(ring_pop_spsc(&g.cons, &d));
                expect_desc(&d, i);
        }
        gring_fini(&g);
}

/* A consumer that attaches to a ring already in use starts at the published counter. */
Test(ring, attach_resumes_at_published_counters)
{
        struct gring g;
        gring_init(&g, 8, UINT32_MAX - 2, false);
        for (uint32_t i = 0; i < 6; i++) {
                struct eng_desc x = mk(i);
                cr_assert(ring_push_spsc(&g.prod, &x));
        }
        struct eng_desc d;
        for (uint32_t i = 0; i < 4; i++)
                cr_assert(ring_pop_spsc(&g.cons, &d));
        struct ring_end cons2, prod2;
        ring_attach(&cons2, &g.shared, g.slots, 8, false);
        ring_attach(&prod2, &g.shared, g.slots, 8, true);
        cr_assert_eq(ring_used(&cons2), 2);
        cr_assert_eq(ring_free(&prod2), 5);
        for (uint32_t i = 4; i < 6; i++) {
                cr_assert(ring_pop_spsc(&cons2, &d));
                expect_desc(&d, i);
        }
        struct eng_desc x = mk(6);
        cr_assert(ring_push_spsc(&prod2, &x));
        cr_assert(ring_pop_spsc(&cons2, &d));
        expect_desc(&d, 6);
        gring_fini(&g);
}
