/*
 * eng_atomic.h - the only place the project touches atomics directly.
 *
 * Every lock-free structure in alloc/ and engine/ goes through these named helpers
 * (over Concurrency Kit's ck_pr), so the ordering each access needs is spelt out at the
 * call site by the helper's name, and one file says what each name means:
 *
 *   eng_load_relaxed / eng_store_relaxed  - atomic, no ordering: statistics, hints, and
 *                                           values re-validated by a later CAS.
 *   eng_load_acquire                      - later loads/stores cannot move before it:
 *                                           reading a published index/state before the data
 *                                           it guards.
 *   eng_store_release                     - earlier loads/stores cannot move after it:
 *                                           publishing data, then the index/state.
 *   eng_cas_*                             - full barrier (lock cmpxchg on x86), returns the
 *                                           value seen so a failed CAS needs no reload.
 *   eng_fence_full                        - store->load ordering (mfence): the one order
 *                                           TSO does not give for free; used to close the
 *                                           lost-wake-up window (store flag, fence, re-check).
 *
 * On x86-64 (CK_MD_TSO) acquire/release cost nothing but a compiler barrier; the names stay
 * because they document the argument and keep the code correct on weaker machines.
 * These words live in shared memory mapped by several processes: ck_pr works on plain
 * memory, so the same code is correct across processes (the hardware does not care which
 * address space a cache line is mapped in).
 */
#ifndef ENG_ATOMIC_H
#define ENG_ATOMIC_H

#include <ck_pr.h>
#include <stdbool.h>
#include <stdint.h>

static inline uint32_t eng_load_relaxed_u32(const uint32_t *p)
{
        return ck_pr_load_32(p);
}

static inline uint64_t eng_load_relaxed_u64(const uint64_t *p)
{
        return ck_pr_load_64(p);
}

static inline void eng_store_relaxed_u32(uint32_t *p, uint32_t v)
{
        ck_pr_store_32(p, v);
}

static inline void eng_store_relaxed_u64(uint64_t *p, uint64_t v)
{
        ck_pr_store_64(p, v);
}

static inline uint32_t eng_load_acquire_u32(const uint32_t *p)
{
        uint32_t v = ck_pr_load_32(p);
        ck_pr_fence_acquire();
        return v;
}

static inline uint64_t eng_load_acquire_u64(const uint64_t *p)
{
        uint64_t v = ck_pr_load_64(p);
        ck_pr_fence_acquire();
        return v;
}

static inline void eng_store_release_u32(uint32_t *p, uint32_t v)
{
        ck_pr_fence_release();
        ck_pr_store_32(p, v);
}

static inline void eng_store_release_u64(uint64_t *p, uint64_t v)
{
        ck_pr_fence_release();
        ck_pr_store_64(p, v);
}

/* Compare-and-swap; on failure *seen holds the value found. Full barrier. */
static inline bool eng_cas_u64(uint64_t *p, uint64_t expect, uint64_t desired, uint64_t *seen)
{
        return ck_pr_cas_64_value(p, expect, desired, seen);
}

static inline bool eng_cas_u32(uint32_t *p, uint32_t expect, uint32_t desired, uint32_t *seen)
{
        return ck_pr_cas_32_value(p, expect, desired, seen);
}

/* Fetch-and-add, full barrier; returns the previous value. */
static inline uint64_t eng_faa_u64(uint64_t *p, uint64_t d)
{
        return ck_pr_faa_64(p, d);
}

static inline uint32_t eng_faa_u32(uint32_t *p, uint32_t d)
{
        return ck_pr_faa_32(p, d);
}

static inline uint32_t eng_swap_u32(uint32_t *p, uint32_t v)
{
        return ck_pr_fas_32(p, v);
}

/* Full fence: orders earlier stores before later loads (mfence on x86). */
static inline void eng_fence_full(void)
{
        ck_pr_fence_memory();
}

static inline void eng_cpu_relax(void)
{
        ck_pr_stall();
}

#endif
