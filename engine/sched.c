/*
 * sched.c - who runs a stream: the ready set (one bit per record index in the segment) and a
 * record's scheduling word (rec->sched), as the client drives them (sched_stream, sched_fin) and
 * the workers take them (ready_take, ready_any), and the asymmetric barrier (membarrier) that
 * lets a client skip its fence while a worker polls its stream. The worker's side of the
 * sched word is in worker.c.
 */
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/*
 * The ready set is two-level: a bit per record index in the bitmap, and a summary bit per
 * bitmap word that may hold a set bit. A worker that spins looking for work reads the summary
 * (a few words even for 65,536 records) instead of the whole bitmap: with 10,000 streams a
 * scan was 157 words, so a spin iteration cost ~157 loads of lines clients write, and the
 * spin's length and the cache traffic it made grew with the number of streams.
 *
 * Order (x86-TSO, every CAS a full barrier): a poster sets the word's bit, then the summary
 * bit (a relaxed load first: one found set costs no locked instruction). A taker that finds a
 * word empty clears its summary bit (CAS) and then reads the word again; if the word is no
 * longer empty it sets the summary bit back. A poster whose summary load saw the bit set
 * before that clear set its word bit before the clear too, so the taker's second read sees it;
 * a poster that loads the summary after the clear sets it itself. Either way a set word bit
 * has its summary bit set once both are done. Both are hints that any writer can spoil: the
 * pre-sleep look (ready_any) reads the bitmap itself and sets back a summary bit it finds
 * missing, so a cleared summary bit delays a stream by one sleep decision, never for good.
 */
static void summary_set(struct eng_seg *sg, uint32_t wi)
{
        uint64_t bit = 1ull << (wi & 63);
        uint64_t *w = &sg->summary[wi >> 6];
        uint64_t old = eng_load_relaxed_u64(w);
        while ((old & bit) == 0) {
                if (eng_cas_u64(w, old, old | bit, &old))
                        return;
        }
}

/* Set the bit of idx; true if this call set it, false if it was set already. A relaxed load,
 * then a CAS loop (a CAS, not a locked OR: it returns the word it found, and a bit found set
 * costs no locked instruction); a successful CAS is a full barrier. The bit is a hint and
 * orders nothing the reader relies on: a client's ring push is ordered before it by the fence
 * and CAS of sched in sched_stream (the swap in sched_fin), and a worker that takes the bit
 * (ready_take, a CAS) then reads sched and the ring itself. A bit found set serves this call's
 * purpose too: a worker will take it and look at the stream. */
bool ready_set(struct eng_seg *sg, uint32_t idx)
{
        uint64_t bit = 1ull << (idx & 63);
        uint64_t *w = &sg->bitmap[idx >> 6];
        uint64_t old = eng_load_relaxed_u64(w);
        bool set = false;
        while ((old & bit) == 0) {
                if (eng_cas_u64(w, old, old | bit, &old)) {
                        set = true;
                        break;
                }
        }
        summary_set(sg, idx >> 6);
        return set;
}

/* Words of the bitmap that can hold a set bit: only records ever carved can be scheduled, so
 * the scan costs what the arena's record area holds, not what the segment could hold. */
static uint32_t ready_words(struct eng_seg *sg)
{
        /* The server's own count (private memory). Relaxed: the control thread raises it before
         * it publishes the offer (release), and the bit of a record claimed from that offer is
         * set by a CAS (a full barrier) after the claimer acquired it, so a worker that sees the
         * bit and then reads a stale count misses the bit for one scan only; its fenced look
         * before sleeping (ready_any after a locked add) reads the count anew. */
        uint32_t hi = eng_load_relaxed_u32(&sg->ready_hi);
        uint32_t n = ((hi < sg->max_streams ? hi : sg->max_streams) + 63) / 64;
        return n ? n : 1;
}

/* Take one bit of word wi under mask: 1 taken (*idx), 0 none there. An empty word gets its
 * summary bit cleared (and set back if a post came meanwhile: see above). */
static int take_word(struct eng_seg *sg, uint32_t wi, uint64_t mask, uint32_t *idx)
{
        uint64_t *w = &sg->bitmap[wi];
        uint64_t old = eng_load_relaxed_u64(w);
        while ((old & mask) != 0) {
                uint64_t bit = (old & mask) & (~(old & mask) + 1);
                if (eng_cas_u64(w, old, old & ~bit, &old)) {
                        *idx = wi * 64 + (uint32_t)__builtin_ctzll(bit);
                        return 1;
                }
        }
        if (old == 0) {
                uint64_t sbit = 1ull << (wi & 63);
                uint64_t *sw = &sg->summary[wi >> 6];
                uint64_t s = eng_load_relaxed_u64(sw);
                while ((s & sbit) != 0 && !eng_cas_u64(sw, s, s & ~sbit, &s))
                        ;
                if (eng_load_relaxed_u64(w) != 0)
                        summary_set(sg, wi);
        }
        return 0;
}

/* Words lo..hi-1 through the summary; word sw gets its half of the cursor's mask. */
static bool take_range(struct eng_seg *sg, uint32_t lo, uint32_t hi, uint32_t sw, uint64_t swmask,
                       uint32_t *idx)
{
        uint32_t wi = lo;
        while (wi < hi) {
                uint64_t sm = eng_load_relaxed_u64(&sg->summary[wi >> 6]) >> (wi & 63);
                if (sm == 0) {
                        wi = (wi | 63) + 1;
                        continue;
                }
                wi += (uint32_t)__builtin_ctzll(sm);
                if (wi >= hi)
                        break;
                if (take_word(sg, wi, wi == sw ? swmask : ~0ull, idx))
                        return true;
                wi++;
        }
        return false;
}

/*
 * Take one set bit, scanning from bit *cursor onwards and wrapping around (the cursor is a bit
 * index, so a stream that is re-queued is not taken again before the other set bits of its
 * word: a stream waiting for its session must let the session's bit be seen).
 */
bool ready_take(struct eng_seg *sg, uint32_t *cursor, uint32_t *idx)
{
        uint32_t nw = ready_words(sg);
        uint32_t start = *cursor % (nw * 64);
        uint32_t sw = start / 64, sb = start % 64;
        uint64_t hi_mask = ~0ull << sb, lo_mask = sb ? (1ull << sb) - 1 : 0;
        if (take_range(sg, sw, nw, sw, hi_mask, idx) ||
            take_range(sg, 0, sw + 1, sw, lo_mask, idx)) {
                *cursor = *idx + 1;
                return *idx < sg->max_streams;
        }
        return false;
}

/* Other streams are queued? The words the summary names (a summary bit outlives the last bit
 * of its word until a taker finds the word empty, so the word itself is asked). */
bool ready_queued(struct eng_seg *sg)
{
        uint32_t ns = seg_summary_words(ready_words(sg));
        for (uint32_t i = 0; i < ns; i++) {
                uint64_t sm = eng_load_relaxed_u64(&sg->summary[i]);
                while (sm != 0) {
                        uint32_t wi = i * 64 + (uint32_t)__builtin_ctzll(sm);
                        if (eng_load_relaxed_u64(&sg->bitmap[wi]) != 0)
                                return true;
                        sm &= sm - 1;
                }
        }
        return false;
}

/* Any bit set? Reads the bitmap itself (once per sleep decision, not per spin), and sets back
 * the summary bit of a non-empty word that lacks it (a writer's doing), so ready_take finds it
 * on the next look instead of a worker spinning on work it cannot see. */
bool ready_any(struct eng_seg *sg)
{
        uint32_t nw = ready_words(sg);
        bool any = false;
        for (uint32_t i = 0; i < nw; i++) {
                if (eng_load_relaxed_u64(&sg->bitmap[i])) {
                        any = true;
                        summary_set(sg, i);
                }
        }
        return any;
}

/*
 * Client side, after pushing to the c2s ring: make sure a worker will look at the stream.
 * IDLE -> QUEUED (and set the ready bit, and wake a worker if one sleeps); RUNNING -> AGAIN
 * (the worker running it will go round again). All CAS: full barriers, so the push is
 * visible before the worker can observe the transition.
 */
void sched_stream(struct eng_seg *sg, struct eng_rec *r, uint32_t idx)
{
        /* Full fence: our ring publication (a store) must be visible before we read sched.
         * Without it a worker could see QUEUED -> RUNNING, drain a ring that does not yet show
         * our descriptor, and go IDLE, while we read the stale QUEUED and return: the message
         * would sit there until the next push (store->load is the one order TSO does not keep). */
        eng_fence_full();
        uint32_t s = eng_load_relaxed_u32(&r->sched);
        for (;;) {
                uint32_t want;
                if (s == RUN_IDLE)
                        want = RUN_QUEUED;
                else if (s == RUN_RUNNING)
                        want = RUN_AGAIN;
                else
                        return; /* QUEUED or AGAIN: someone will look; POLLING: a worker is
                                   watching the ring and re-checks it after leaving (worker.c) */
                if (eng_cas_u32(&r->sched, s, want, &s)) {
                        if (want == RUN_AGAIN)
                                return;
                        break;
                }
        }
        ready_post(sg, idx);
}

bool eng_asym_supported(void)
{
        long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (q < 0 || !(q & MEMBARRIER_CMD_GLOBAL_EXPEDITED))
                return false;
        /* Seccomp may allow the query and refuse the command: try it once. */
        return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}

bool eng_asym_register(void)
{
        return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

void eng_asym_heavy(void)
{
        syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0);
}

/* Set idx's ready bit and wake a worker if one sleeps. */
void ready_post(struct eng_seg *sg, uint32_t idx)
{
        ready_set(sg, idx);
        /* Dekker with the worker: we set the bit (a CAS: locked) or found it set, then read
         * sleepers; a worker increments sleepers (locked), then re-scans the bits. One of us
         * sees the other: it finds the bit, or we see it asleep and wake it.
         * A worker spinning idle finds the bit by itself: it leaves the spin with a locked
         * decrement of srv_spinners and then either re-scans (before sleeping) or, when it
         * leaves to run a stream, looks for other queued bits and wakes a sleeper for them
         * (spin_leave). So a poster that still sees it spinning need not wake anyone: on two
         * CPUs, a woken sleeper mostly finds the bit gone and preempts the poster (each open
         * of a stream cost a futex wake and a context switch). */
        const struct eng_seg_hdr *h = sg->hdr;
        if (eng_load_relaxed_u32(&h->srv_sleepers) != 0 &&
            eng_load_relaxed_u32(&h->srv_spinners) == 0)
                ready_wake(sg);
}

/* Wake one sleeping worker. */
void ready_wake(struct eng_seg *sg)
{
        eng_faa_u32(&sg->hdr->srv_wake, 1);
        eng_futex_wake(&sg->hdr->srv_wake, 1);
}

/*
 * The client's last write to a record: sched := FIN. If the stream was idle nobody would look
 * at it, so post it; if it was queued or running, the worker will see FIN when it tries to go
 * idle. After this the record may be freed and reused at any moment.
 */
void sched_fin(struct eng_seg *sg, struct eng_rec *r, uint32_t idx)
{
        uint32_t prev = eng_swap_u32(&r->sched, RUN_FIN);
        if (prev == RUN_IDLE)
                ready_post(sg, idx);
}
