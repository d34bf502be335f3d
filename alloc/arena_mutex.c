/*
 * arena_mutex.c - the baseline allocator: the seed's design made robust. One process-shared
 * robust mutex guards everything; buffer blocks have any 64-byte multiple size; free blocks
 * sit on one address-ordered list, allocation is first fit (splitting off the tail of a larger
 * block), and a free coalesces with both neighbours and gives a block that touches buf_bottom
 * back to the gap. Records use the same slot code as the lock-free arena, under the mutex.
 *
 * A holder that dies leaves the lists possibly half-updated: the next locker gets EOWNERDEAD,
 * rebuilds the free list from a walk of the headers (the walk is the truth), and marks the
 * mutex consistent.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "arena_int.h"

#define MX_MIN_SPLIT 128u /* a remainder smaller than this stays with the allocation */

static uint64_t mx_bb(const eng_arena_t *a)
{
        return units_to_off(marks_buf_bottom(a->hdr->marks));
}

static void mx_set_bb(eng_arena_t *a, uint64_t bb)
{
        /* Under the mutex, but record allocation may CAS the same word: CAS here too. */
        uint64_t m = eng_load_relaxed_u64(&a->hdr->marks);
        while (!eng_cas_u64(&a->hdr->marks, m, marks_pack(marks_rec_top(m), off_to_units(bb)), &m))
                ;
}

/*
 * Rebuild the free list and counters from the headers after a holder died. Every path that
 * changes the block layout writes the new headers before it makes them reachable (a carved
 * block's header before buf_bottom moves, a split-off tail's header before the front
 * shrinks), so the walk from buf_bottom always finds valid headers; adjacent free blocks are
 * merged and a free block at buf_bottom goes back to the gap, as mx_free_locked would do.
 */
static void mx_repair(eng_arena_t *a)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t prev = 0, bb = mx_bb(a);
        h->mx_free_head = 0;
        h->mx_used_blocks = h->mx_used_bytes = h->mx_free_blocks = h->mx_free_bytes = 0;
        for (uint64_t o = bb; o < a->top;) {
                struct blk_hdr *b = blk_at(a, o);
                if (blk_magic(b->word) != BLK_MAGIC || b->bytes < MX_MIN_SPLIT ||
                    (b->bytes & 63u) || b->bytes > a->top - o) {
                        /* Only a scribbler gets here: make the rest one free block so the
                         * arena stays usable (whatever it held is lost). */
                        b->bytes = a->top - o;
                        b->word = blk_word(0, BLK_FREE, 0);
                }
                uint64_t bytes = b->bytes;
                if (blk_state(b->word) == BLK_FREE) {
                        b->next = 0;
                        h->mx_free_bytes += bytes;
                        if (prev && prev + blk_at(a, prev)->bytes == o) {
                                blk_at(a, prev)->bytes += bytes; /* merge */
                        } else {
                                if (prev)
                                        blk_at(a, prev)->next = off_to_units(o);
                                else
                                        h->mx_free_head = off_to_units(o);
                                prev = o;
                                h->mx_free_blocks++;
                        }
                } else {
                        h->mx_used_blocks++;
                        h->mx_used_bytes += bytes;
                }
                o += bytes;
        }
        /* Record slots too: rebuild their free list from the slot headers (a slot carved but
         * never stamped is free). */
        uint64_t rt = units_to_off(marks_rec_top(h->marks)), rprev = 0;
        h->rec_head = 0;
        h->rec_used = h->rec_free = 0;
        for (uint64_t s = a->rec_base; s + a->rec_stride <= rt; s += a->rec_stride) {
                struct blk_hdr *b = blk_at(a, s);
                if (blk_magic(b->word) == BLK_MAGIC && blk_state(b->word) == BLK_RUSED) {
                        h->rec_used++;
                        continue;
                }
                b->word = blk_word(0, BLK_RFREE, 0);
                b->next = 0;
                if (rprev)
                        blk_at(a, rprev)->next = off_to_units(s);
                else
                        h->rec_head = head_pack(off_to_units(s), head_tag(h->rec_head) + 1);
                rprev = s;
                h->rec_free++;
        }
        uint64_t first = units_to_off((uint32_t)h->mx_free_head);
        if (first != 0 && first == bb) {
                struct blk_hdr *b = blk_at(a, first);
                h->mx_free_head = b->next;
                h->mx_free_blocks--;
                h->mx_free_bytes -= b->bytes;
                mx_set_bb(a, first + b->bytes);
        }
}

int arena_mx_lock(eng_arena_t *a)
{
        struct eng_arena_hdr *h = a->hdr;
        int rc = pthread_mutex_lock(&h->mx);
        if (rc == EOWNERDEAD) {
                mx_repair(a);
                pthread_mutex_consistent(&h->mx);
                rc = 0;
        }
        return rc == 0 ? 0 : -rc;
}

void arena_mx_unlock(eng_arena_t *a)
{
        pthread_mutex_unlock(&a->hdr->mx);
}

int mx_format(eng_arena_t *a)
{
        pthread_mutexattr_t at;
        pthread_mutexattr_init(&at);
        pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
        int rc = pthread_mutex_init(&a->hdr->mx, &at);
        pthread_mutexattr_destroy(&at);
        return -rc;
}

uint64_t mx_max_alloc(const eng_arena_t *a)
{
        return a->top - a->rec_base - ENG_ARENA_HDR_BYTES;
}

static void mx_mark_used(eng_arena_t *a, uint64_t o, uint64_t bytes, uint32_t owner)
{
        struct blk_hdr *b = blk_at(a, o);
        b->bytes = bytes;
        b->next = 0;
        eng_store_release_u64(&b->word, blk_word(0, BLK_USED, owner));
        a->hdr->mx_used_blocks++;
        a->hdr->mx_used_bytes += bytes;
        a->hdr->mx_allocs++;
}

int mx_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off)
{
        struct eng_arena_hdr *h = a->hdr;
        if (len > mx_max_alloc(a))
                return -E2BIG;
        uint64_t need = ((len + 63u) & ~(uint64_t)63u) + ENG_ARENA_HDR_BYTES;
        if (need < MX_MIN_SPLIT)
                need = MX_MIN_SPLIT;
        int rc = arena_mx_lock(a);
        if (rc != 0)
                return rc;
        uint64_t prev = 0;
        for (uint64_t o = units_to_off((uint32_t)h->mx_free_head); o != 0;) {
                struct blk_hdr *b = blk_at(a, o);
                uint64_t next = units_to_off((uint32_t)b->next);
                if (b->bytes >= need) {
                        uint64_t take = o;
                        h->mx_free_blocks--;
                        h->mx_free_bytes -= b->bytes;
                        if (b->bytes - need >= MX_MIN_SPLIT) {
                                /* Keep the front on the list (its position does not change).
                                 * The tail's header is written before the front shrinks. */
                                take = o + b->bytes - need;
                                mx_mark_used(a, take, need, owner);
                                b->bytes -= need;
                                h->mx_free_blocks++;
                                h->mx_free_bytes += b->bytes;
                                arena_mx_unlock(a);
                                *off = take + ENG_ARENA_HDR_BYTES;
                                return 0;
                        } else {
                                need = b->bytes;
                                if (prev)
                                        blk_at(a, prev)->next = b->next;
                                else
                                        h->mx_free_head = b->next;
                        }
                        mx_mark_used(a, take, need, owner);
                        arena_mx_unlock(a);
                        *off = take + ENG_ARENA_HDR_BYTES;
                        return 0;
                }
                prev = o;
                o = next;
        }
        uint64_t bb, rt;
        bool sane = marks_sane(a, h->marks, &rt, &bb);
        if (sane && bb >= rt + need) {
                mx_mark_used(a, bb - need, need, owner); /* header first, then the watermark */
                mx_set_bb(a, bb - need);
                arena_mx_unlock(a);
                *off = bb - need + ENG_ARENA_HDR_BYTES;
                return 0;
        }
        h->mx_failed++;
        arena_mx_unlock(a);
        return -ENOMEM;
}

int mx_block_of(const eng_arena_t *a, uint64_t off, uint64_t *blk, uint64_t *word,
                uint64_t *bytes_out)
{
        const struct eng_arena_hdr *h = a->hdr;
        if (off < ENG_ARENA_HDR_BYTES || (off & 63u))
                return -EINVAL;
        uint64_t b = off - ENG_ARENA_HDR_BYTES;
        uint64_t bb = units_to_off(marks_buf_bottom(eng_load_acquire_u64((uint64_t *)&h->marks)));
        if (b < bb || b < a->rec_base || b >= a->top)
                return -EINVAL;
        const struct blk_hdr *bh = blk_at(a, b);
        uint64_t w = eng_load_acquire_u64((uint64_t *)&bh->word);
        uint64_t bytes = bh->bytes;
        if (blk_magic(w) != BLK_MAGIC || bytes < MX_MIN_SPLIT || (bytes & 63u) ||
            bytes > a->top - b)
                return -EINVAL;
        *blk = b;
        *word = w;
        *bytes_out = bytes; /* the value just validated: never read again */
        return 0;
}

int mx_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner, uint64_t *cap)
{
        uint64_t b, w, bytes;
        if (mx_block_of(a, off, &b, &w, &bytes) != 0)
                return -EINVAL;
        return arena_lookup_copy(a, off, w, bytes, ptr, owner, cap);
}

/* Free block o (already validated, USED) under the mutex; returns the start of the free
 * extent it ended up in (0 if it went back to the gap). */
static uint64_t mx_free_locked(eng_arena_t *a, uint64_t o)
{
        struct eng_arena_hdr *h = a->hdr;
        struct blk_hdr *b = blk_at(a, o);
        h->mx_used_blocks--;
        h->mx_used_bytes -= b->bytes;
        h->mx_frees++;
        eng_store_release_u64(&b->word, blk_word(0, BLK_FREE, 0));

        uint64_t prev = 0, cur = units_to_off((uint32_t)h->mx_free_head);
        while (cur != 0 && cur < o) {
                prev = cur;
                cur = units_to_off((uint32_t)blk_at(a, cur)->next);
        }
        b->next = off_to_units(cur);
        if (prev)
                blk_at(a, prev)->next = off_to_units(o);
        else
                h->mx_free_head = off_to_units(o);
        h->mx_free_blocks++;
        h->mx_free_bytes += b->bytes;

        if (cur != 0 && o + b->bytes == cur) { /* merge with the next */
                struct blk_hdr *n = blk_at(a, cur);
                b->bytes += n->bytes;
                b->next = n->next;
                h->mx_free_blocks--;
        }
        if (prev != 0 && prev + blk_at(a, prev)->bytes == o) { /* merge into the previous */
                struct blk_hdr *p = blk_at(a, prev);
                p->bytes += b->bytes;
                p->next = b->next;
                h->mx_free_blocks--;
                o = prev;
                b = p;
        }
        if (o == mx_bb(a) && h->mx_free_head == off_to_units(o)) {
                /* The lowest free block touches the gap: give it back to the watermark. */
                h->mx_free_head = b->next;
                h->mx_free_blocks--;
                h->mx_free_bytes -= b->bytes;
                mx_set_bb(a, o + b->bytes);
                return 0;
        }
        return o;
}

int mx_free(eng_arena_t *a, uint64_t off)
{
        int rc = arena_mx_lock(a);
        if (rc != 0)
                return rc;
        uint64_t b, w, bytes;
        rc = mx_block_of(a, off, &b, &w, &bytes);
        if (rc == 0 && blk_state(w) != BLK_USED)
                rc = blk_state(w) == BLK_FREE ? -EALREADY : -EINVAL;
        if (rc == 0)
                mx_free_locked(a, b);
        arena_mx_unlock(a);
        return rc;
}

int64_t mx_reclaim(eng_arena_t *a, uint32_t owner)
{
        int rc = arena_mx_lock(a);
        if (rc != 0)
                return rc;
        int64_t n = 0;
        for (uint64_t o = mx_bb(a); o < a->top;) {
                struct blk_hdr *b = blk_at(a, o);
                if (blk_magic(b->word) != BLK_MAGIC || b->bytes < MX_MIN_SPLIT ||
                    b->bytes > a->top - o)
                        break;
                if (blk_state(b->word) == BLK_USED && blk_owner(b->word) == owner) {
                        n++;
                        uint64_t start = mx_free_locked(a, o);
                        o = start ? start : mx_bb(a);
                        continue; /* re-read the (possibly merged) block at o */
                }
                o += b->bytes;
        }
        arena_mx_unlock(a);
        return n;
}

void mx_stats(const eng_arena_t *a, eng_arena_stats_t *st)
{
        const struct eng_arena_hdr *h = a->hdr;
        st->buf_used_blocks = eng_load_relaxed_u64((uint64_t *)&h->mx_used_blocks);
        st->buf_used_bytes = eng_load_relaxed_u64((uint64_t *)&h->mx_used_bytes);
        st->buf_free_blocks = eng_load_relaxed_u64((uint64_t *)&h->mx_free_blocks);
        st->buf_free_bytes = eng_load_relaxed_u64((uint64_t *)&h->mx_free_bytes);
        st->failed = eng_load_relaxed_u64((uint64_t *)&h->mx_failed);
}

int mx_check(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen)
{
        const struct eng_arena_hdr *h = a->hdr;
        uint64_t used = 0, used_bytes = 0, freed = 0, free_bytes = 0, bytes = 0;
        uint64_t bb = mx_bb(a);
        for (uint64_t o = bb; o < a->top;) {
                const struct blk_hdr *b = blk_at(a, o);
                if (blk_magic(b->word) != BLK_MAGIC || b->bytes < MX_MIN_SPLIT ||
                    (b->bytes & 63u) || b->bytes > a->top - o) {
                        snprintf(why, whylen, "bad block header at %llu", (unsigned long long)o);
                        return -EUCLEAN;
                }
                if (blk_state(b->word) == BLK_USED) {
                        used++;
                        used_bytes += b->bytes;
                } else {
                        freed++;
                        free_bytes += b->bytes;
                }
                bytes += b->bytes;
                o += b->bytes;
        }
        uint64_t listed = 0, last = 0;
        for (uint64_t o = units_to_off((uint32_t)h->mx_free_head); o != 0;
             o = units_to_off((uint32_t)blk_at(a, o)->next)) {
                if (o < bb || o >= a->top || o <= last ||
                    blk_state(blk_at(a, o)->word) != BLK_FREE || ++listed > freed) {
                        snprintf(why, whylen, "free list is corrupt or out of order");
                        return -EUCLEAN;
                }
                if (last && last + blk_at(a, last)->bytes == o) {
                        snprintf(why, whylen, "adjacent free blocks were not coalesced");
                        return -EUCLEAN;
                }
                last = o;
        }
        (void)leaked; /* the mutex arena repairs itself: nothing is ever leaked */
        if (bytes != a->top - bb || listed != freed || used != h->mx_used_blocks ||
            used_bytes != h->mx_used_bytes || freed != h->mx_free_blocks ||
            free_bytes != h->mx_free_bytes) {
                snprintf(why, whylen,
                         "walked %llu used/%llu free blocks (%llu bytes of %llu), listed %llu; "
                         "counters %llu/%llu",
                         (unsigned long long)used, (unsigned long long)freed,
                         (unsigned long long)bytes, (unsigned long long)(a->top - bb),
                         (unsigned long long)listed, (unsigned long long)h->mx_used_blocks,
                         (unsigned long long)h->mx_free_blocks);
                return -EUCLEAN;
        }
        return 0;
}

int mx_rec_alloc(eng_arena_t *a, uint32_t owner, uint64_t *off)
{
        int rc = arena_mx_lock(a);
        if (rc != 0)
                return rc;
        rc = arena_rec_alloc_common(a, owner, off);
        arena_mx_unlock(a);
        return rc;
}

int mx_rec_free(eng_arena_t *a, uint64_t off)
{
        int rc = arena_mx_lock(a);
        if (rc != 0)
                return rc;
        rc = arena_rec_free_common(a, off);
        arena_mx_unlock(a);
        return rc;
}
