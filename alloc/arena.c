/*
 * arena.c - what both arena implementations share: format/attach, validation of handles,
 * record slots, the space-waiting wake-up, and dispatch to arena_lf.c / arena_mutex.c.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "arena_int.h"

static uint64_t round64(uint64_t v)
{
        return (v + 63u) & ~(uint64_t)63u;
}

const char *eng_arena_kind_name(eng_arena_kind_t k)
{
        switch (k) {
        case ENG_ARENA_LOCKFREE:
                return "lockfree";
        case ENG_ARENA_MUTEX:
                return "mutex";
        }
        return "unknown";
}

/* Copy the immutable geometry into the private view (see arena.h). */
static void arena_take_geometry(eng_arena_t *a)
{
        const struct eng_arena_hdr *h = a->hdr;
        a->kind = (eng_arena_kind_t)h->kind;
        a->min_shift = h->min_shift;
        a->max_shift = h->max_shift;
        a->nclasses = h->nclasses;
        a->rec_base = h->rec_base;
        a->rec_stride = h->rec_stride;
        a->top = h->top;
        a->rec_slots_max = h->rec_slots_max;
}

int eng_arena_format(eng_arena_t *a, void *base, uint64_t size, const eng_arena_cfg_t *cfg)
{
        if (a == NULL || base == NULL || cfg == NULL || ((uintptr_t)base & 63u) != 0)
                return -EINVAL;
        if (cfg->kind != ENG_ARENA_LOCKFREE && cfg->kind != ENG_ARENA_MUTEX)
                return -EINVAL;
        if (cfg->min_class_shift < 7 || cfg->max_class_shift > 30 ||
            cfg->min_class_shift > cfg->max_class_shift ||
            cfg->max_class_shift - cfg->min_class_shift + 1 > ENG_ARENA_MAX_CLASSES)
                return -EINVAL;
        /* Units are 32 bits of 64 bytes: at most 256 GiB. */
        if (size > ((uint64_t)UINT32_MAX) * ARENA_UNIT || size < ARENA_HDR_BYTES + 4096)
                return -EINVAL;

        struct eng_arena_hdr *h = base;
        uint64_t rec_base = ARENA_HDR_BYTES;
        uint64_t stride = ENG_ARENA_HDR_BYTES + round64(cfg->record_size ? cfg->record_size : 64);
        uint64_t sb = (uint64_t)1 << cfg->max_class_shift;
        uint64_t top = cfg->kind == ENG_ARENA_LOCKFREE ? (size / sb) * sb : size & ~(uint64_t)63u;
        if (top <= rec_base)
                return -ENOSPC; /* the region cannot hold one superblock after the header */

        /* Zero everything: the walkers rely on unborn superblocks reading as 0, and the first
         * write to a fresh tmpfs page is ~10x slower than a rewrite, so this also pre-faults. */
        memset(base, 0, size);
        h->version = ARENA_VERSION;
        h->kind = cfg->kind;
        h->min_shift = cfg->min_class_shift;
        h->max_shift = cfg->max_class_shift;
        h->nclasses =
            cfg->kind == ENG_ARENA_LOCKFREE ? cfg->max_class_shift - cfg->min_class_shift + 1 : 0;
        h->size = size;
        h->rec_base = rec_base;
        h->rec_stride = stride;
        h->top = top;
        h->rec_slots_max = (top - rec_base) / stride;
        h->marks = marks_pack(off_to_units(rec_base), off_to_units(top));

        a->base = base;
        a->size = size;
        a->hdr = h;
        arena_take_geometry(a);
        int rc = cfg->kind == ENG_ARENA_LOCKFREE ? lf_format(a) : mx_format(a);
        if (rc != 0)
                return rc;
        /* Publish: everything above is visible before the magic (attachers read it first). */
        eng_store_release_u32(&h->magic, ARENA_MAGIC);
        return 0;
}

int eng_arena_attach(eng_arena_t *a, void *base, uint64_t size)
{
        if (a == NULL || base == NULL || size < ARENA_HDR_BYTES)
                return -EINVAL;
        struct eng_arena_hdr *h = base;
        if (eng_load_acquire_u32(&h->magic) != ARENA_MAGIC)
                return -EPROTO;
        if (h->version != ARENA_VERSION)
                return -EPROTONOSUPPORT;
        /* The header is as untrusted as the rest of the segment: check what we will rely on. */
        if (h->size != size || (h->kind != ENG_ARENA_LOCKFREE && h->kind != ENG_ARENA_MUTEX) ||
            h->rec_base != ARENA_HDR_BYTES || h->top > size || h->top <= h->rec_base ||
            h->rec_stride < 128 || (h->rec_stride & 63u) || h->min_shift < 7 || h->max_shift > 30 ||
            h->min_shift > h->max_shift ||
            h->rec_slots_max != (h->top - h->rec_base) / h->rec_stride ||
            (h->kind == ENG_ARENA_LOCKFREE && (h->nclasses != h->max_shift - h->min_shift + 1 ||
                                               h->top % ((uint64_t)1 << h->max_shift) != 0)))
                return -EUCLEAN;
        a->base = base;
        a->size = size;
        a->hdr = h;
        arena_take_geometry(a);
        return 0;
}

eng_arena_kind_t eng_arena_kind(const eng_arena_t *a)
{
        return (eng_arena_kind_t)a->kind;
}

void *eng_arena_ptr(const eng_arena_t *a, uint64_t off, uint64_t len)
{
        if (off == 0 || off > a->size || len > a->size - off)
                return NULL;
        return a->base + off;
}

/* ---- waiting for space -------------------------------------------------------------- */

uint32_t *eng_arena_free_word(const eng_arena_t *a)
{
        return &a->hdr->free_word;
}

uint32_t *eng_arena_waiters_word(const eng_arena_t *a)
{
        return &a->hdr->waiters;
}

/*
 * Called after every successful free (the free's CAS is a full barrier). A sleeper first
 * increments waiters (locked RMW), then re-tries its allocation, then sleeps on free_word.
 * If we read waiters == 0 here, the sleeper's increment comes after our push in the total
 * order of locked operations, so its retry sees our block; otherwise we bump the word and
 * wake, and its futex_wait either sees the new value or is woken. No lost wake-up.
 */
void arena_wake_space_waiters(eng_arena_t *a)
{
        struct eng_arena_hdr *h = a->hdr;
        if (eng_load_relaxed_u32(&h->waiters) == 0)
                return;
        eng_faa_u32(&h->free_word, 1);
        syscall(SYS_futex, &h->free_word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

/* ---- records ------------------------------------------------------------------------ */

/* The record watermark, clamped to the private geometry (a scribbled value cannot make a
 * slot index reach past the region). */
static uint64_t rec_top(const eng_arena_t *a)
{
        uint64_t rt = units_to_off(marks_rec_top(eng_load_acquire_u64(&a->hdr->marks)));
        uint64_t max = a->rec_base + a->rec_slots_max * a->rec_stride;
        if (rt < a->rec_base)
                return a->rec_base;
        return rt > max ? max : rt;
}

int64_t eng_arena_rec_index(const eng_arena_t *a, uint64_t off)
{
        if (off < a->rec_base + ENG_ARENA_HDR_BYTES)
                return -1;
        uint64_t slot = off - ENG_ARENA_HDR_BYTES - a->rec_base;
        uint64_t rt = rec_top(a);
        if (slot % a->rec_stride != 0 || off >= rt ||
            rt - (off - ENG_ARENA_HDR_BYTES) < a->rec_stride)
                return -1;
        return (int64_t)(slot / a->rec_stride);
}

uint64_t eng_arena_rec_offset(const eng_arena_t *a, uint64_t index)
{
        return a->rec_base + index * a->rec_stride + ENG_ARENA_HDR_BYTES;
}

uint64_t eng_arena_rec_slots(const eng_arena_t *a)
{
        return (rec_top(a) - a->rec_base) / a->rec_stride;
}

uint64_t eng_arena_rec_stride(const eng_arena_t *a)
{
        return a->rec_stride;
}

uint64_t eng_arena_rec_max_slots(const eng_arena_t *a)
{
        return a->rec_slots_max;
}

/*
 * Record slots: a Treiber stack of freed slots (head {units, tag} in rec_head, link in the
 * slot header's next), and fresh slots carved by moving rec_top up in the watermarks word.
 * Same ABA argument as the buffer lists (arena_lf.c).
 */
int arena_rec_alloc_common(eng_arena_t *a, uint32_t owner, uint64_t *off)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t slot = 0;
        uint64_t old = eng_load_acquire_u64(&h->rec_head);
        for (;;) {
                uint32_t u = head_units(old);
                if (u == 0)
                        break;
                uint64_t s = units_to_off(u);
                if (s < a->rec_base || (s - a->rec_base) % a->rec_stride ||
                    s + a->rec_stride > rec_top(a)) {
                        eng_faa_u64(&h->bad_frees, 1); /* corrupted list: stop using it */
                        break;
                }
                uint64_t next = eng_load_relaxed_u64(&blk_at(a, s)->next);
                if (eng_cas_u64(&h->rec_head, old, head_pack((uint32_t)next, head_tag(old) + 1),
                                &old)) {
                        slot = s;
                        eng_faa_u64(&h->rec_free, (uint64_t)-1);
                        break;
                }
        }
        if (slot == 0) {
                uint64_t m = eng_load_acquire_u64(&h->marks);
                for (;;) {
                        uint64_t rt, bb;
                        if (!marks_sane(a, m, &rt, &bb)) {
                                eng_faa_u64(&h->bad_frees, 1); /* scribbled watermarks */
                                return -ENOMEM;
                        }
                        if (rt + a->rec_stride > bb)
                                return -ENOMEM;
                        uint64_t nm =
                            marks_pack(off_to_units(rt + a->rec_stride), marks_buf_bottom(m));
                        if (eng_cas_u64(&h->marks, m, nm, &m)) {
                                slot = rt;
                                break;
                        }
                }
        }
        /* Release: the caller's later initialisation of the body is ordered after this, and a
         * scanner that sees RUSED (acquire) sees the slot as allocated. */
        eng_store_release_u64(&blk_at(a, slot)->word, blk_word(0, BLK_RUSED, owner));
        eng_faa_u64(&h->rec_used, 1);
        *off = slot + ENG_ARENA_HDR_BYTES;
        return 0;
}

int arena_rec_free_common(eng_arena_t *a, uint64_t off)
{
        struct eng_arena_hdr *h = a->hdr;
        if (eng_arena_rec_index(a, off) < 0) {
                eng_faa_u64(&h->bad_frees, 1);
                return -EINVAL;
        }
        uint64_t s = off - ENG_ARENA_HDR_BYTES;
        struct blk_hdr *b = blk_at(a, s);
        uint64_t w = eng_load_acquire_u64(&b->word);
        for (;;) {
                if (blk_magic(w) != BLK_MAGIC || blk_state(w) != BLK_RUSED) {
                        eng_faa_u64(&h->bad_frees, 1);
                        return blk_state(w) == BLK_RFREE ? -EALREADY : -EINVAL;
                }
                if (eng_cas_u64(&b->word, w, blk_word(0, BLK_RFREE, 0), &w))
                        break;
        }
        uint64_t old = eng_load_relaxed_u64(&h->rec_head);
        do {
                eng_store_relaxed_u64(&b->next, head_units(old));
        } while (
            !eng_cas_u64(&h->rec_head, old, head_pack(off_to_units(s), head_tag(old) + 1), &old));
        eng_faa_u64(&h->rec_used, (uint64_t)-1);
        eng_faa_u64(&h->rec_free, 1);
        return 0;
}

int eng_arena_rec_alloc(eng_arena_t *a, uint32_t owner, uint64_t *off)
{
        if (a->kind == ENG_ARENA_MUTEX)
                return mx_rec_alloc(a, owner, off);
        return arena_rec_alloc_common(a, owner, off);
}

int eng_arena_rec_free(eng_arena_t *a, uint64_t off)
{
        if (a->kind == ENG_ARENA_MUTEX)
                return mx_rec_free(a, off);
        return arena_rec_free_common(a, off);
}

/* ---- dispatch ----------------------------------------------------------------------- */

int eng_arena_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off)
{
        if (a->kind == ENG_ARENA_MUTEX)
                return mx_alloc(a, len, owner, off);
        return lf_alloc(a, len, owner, off);
}

int eng_arena_free(eng_arena_t *a, uint64_t off)
{
        int rc = a->kind == ENG_ARENA_MUTEX ? mx_free(a, off) : lf_free(a, off);
        if (rc == 0)
                arena_wake_space_waiters(a);
        else
                eng_faa_u64(&a->hdr->bad_frees, 1);
        return rc;
}

uint32_t eng_arena_alloc_bulk(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *offs,
                              uint32_t n)
{
        if (a->kind == ENG_ARENA_MUTEX || owner == 0)
                return 0;
        return lf_alloc_bulk(a, len, owner, offs, n);
}

int eng_arena_free_later(eng_arena_t *a, eng_arena_batch_t *b, uint64_t off)
{
        if (a->kind == ENG_ARENA_MUTEX)
                return eng_arena_free(a, off);
        if (b->n >= ENG_ARENA_BATCH)
                eng_arena_flush(a, b);
        int rc = lf_free_later(a, b, off);
        if (rc != 0)
                eng_faa_u64(&a->hdr->bad_frees, 1);
        return rc;
}

void eng_arena_flush(eng_arena_t *a, eng_arena_batch_t *b)
{
        if (b->n == 0)
                return;
        if (b->n > ENG_ARENA_BATCH)
                b->n = ENG_ARENA_BATCH; /* a corrupt batch: never index past it */
        lf_flush(a, b);
        arena_wake_space_waiters(a);
}

uint64_t eng_arena_class_bytes(const eng_arena_t *a, uint64_t len)
{
        if (a->kind == ENG_ARENA_MUTEX)
                return len <= mx_max_alloc(a) ? len : 0;
        return lf_class_bytes(a, len);
}

uint64_t eng_arena_capacity(const eng_arena_t *a, uint64_t off)
{
        return a->kind == ENG_ARENA_MUTEX ? mx_capacity(a, off) : lf_capacity(a, off);
}

uint32_t eng_arena_owner(const eng_arena_t *a, uint64_t off)
{
        uint64_t blk, w;
        int rc = a->kind == ENG_ARENA_MUTEX ? mx_block_of(a, off, &blk, &w)
                                            : lf_block_of(a, off, &blk, &w);
        if (rc != 0 || blk_state(w) != BLK_USED)
                return 0;
        return blk_owner(w);
}

uint64_t eng_arena_max_alloc(const eng_arena_t *a)
{
        return a->kind == ENG_ARENA_MUTEX ? mx_max_alloc(a) : lf_max_alloc(a);
}

int64_t eng_arena_reclaim(eng_arena_t *a, uint32_t owner)
{
        if (owner == 0)
                return -EINVAL;
        int64_t n = a->kind == ENG_ARENA_MUTEX ? mx_reclaim(a, owner) : lf_reclaim(a, owner);
        if (n > 0)
                arena_wake_space_waiters(a);
        return n;
}

void eng_arena_stats(const eng_arena_t *a, eng_arena_stats_t *st)
{
        const struct eng_arena_hdr *h = a->hdr;
        memset(st, 0, sizeof(*st));
        uint64_t m = eng_load_acquire_u64((uint64_t *)&h->marks);
        st->kind = (eng_arena_kind_t)a->kind;
        st->size = h->size;
        st->rec_base = a->rec_base;
        st->top = a->top;
        st->rec_top = units_to_off(marks_rec_top(m));
        st->buf_bottom = units_to_off(marks_buf_bottom(m));
        st->rec_stride = a->rec_stride;
        st->rec_used = eng_load_relaxed_u64((uint64_t *)&h->rec_used);
        st->rec_free = eng_load_relaxed_u64((uint64_t *)&h->rec_free);
        st->bad_frees = eng_load_relaxed_u64((uint64_t *)&h->bad_frees);
        if (a->kind == ENG_ARENA_MUTEX)
                mx_stats(a, st);
        else
                lf_stats(a, st);
}

static int arena_check(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen)
{
        char tmp[8];
        if (why == NULL) {
                why = tmp;
                whylen = sizeof(tmp);
        }
        why[0] = '\0';
        const struct eng_arena_hdr *h = a->hdr;
        uint64_t m = h->marks;
        uint64_t rt = units_to_off(marks_rec_top(m)), bb = units_to_off(marks_buf_bottom(m));
        if (rt < a->rec_base || rt > bb || bb > a->top || (rt - a->rec_base) % a->rec_stride) {
                snprintf(why, whylen, "watermarks out of order: rec_top %llu buf_bottom %llu",
                         (unsigned long long)rt, (unsigned long long)bb);
                return -EUCLEAN;
        }
        /* Records: every carved slot is used or on the free list, and the list is exact. */
        uint64_t nslots = (rt - a->rec_base) / a->rec_stride, used = 0, freed = 0;
        for (uint64_t i = 0; i < nslots; i++) {
                uint64_t w = blk_at(a, a->rec_base + i * a->rec_stride)->word;
                if (blk_magic(w) == BLK_MAGIC && blk_state(w) == BLK_RUSED)
                        used++;
                else if (blk_magic(w) == BLK_MAGIC && blk_state(w) == BLK_RFREE)
                        freed++;
                else if (leaked != NULL && w == 0)
                        *leaked += a->rec_stride; /* carved by a process killed at once */
                else {
                        snprintf(why, whylen, "record slot %llu has a bad header",
                                 (unsigned long long)i);
                        return -EUCLEAN;
                }
        }
        uint64_t listed = 0;
        for (uint32_t u = head_units(h->rec_head); u != 0;
             u = (uint32_t)blk_at(a, units_to_off(u))->next) {
                uint64_t s = units_to_off(u);
                if (s < a->rec_base || s >= rt || (s - a->rec_base) % a->rec_stride ||
                    blk_state(blk_at(a, s)->word) != BLK_RFREE || ++listed > freed) {
                        snprintf(why, whylen, "record free list is corrupt");
                        return -EUCLEAN;
                }
        }
        /* Tolerant: a slot freed (or popped) by a process killed before it pushed (or
         * stamped) it is on no list: nobody's, lost. */
        if (leaked != NULL && listed <= freed) {
                *leaked += (freed - listed) * a->rec_stride;
                listed = freed;
        }
        if (listed != freed || (leaked == NULL && (used != h->rec_used || freed != h->rec_free))) {
                snprintf(why, whylen,
                         "records: %llu used, %llu free, %llu listed; counters say %llu/%llu",
                         (unsigned long long)used, (unsigned long long)freed,
                         (unsigned long long)listed, (unsigned long long)h->rec_used,
                         (unsigned long long)h->rec_free);
                return -EUCLEAN;
        }
        return a->kind == ENG_ARENA_MUTEX ? mx_check(a, leaked, why, whylen)
                                          : lf_check(a, leaked, why, whylen);
}

int eng_arena_check(const eng_arena_t *a, char *why, size_t whylen)
{
        return arena_check(a, NULL, why, whylen);
}

int eng_arena_check_leaks(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen)
{
        *leaked = 0;
        return arena_check(a, leaked, why, whylen);
}
