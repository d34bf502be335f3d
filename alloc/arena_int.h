/*
 * arena_int.h - private to alloc/: the shared layout and helpers both implementations use.
 */
#ifndef ENG_ARENA_INT_H
#define ENG_ARENA_INT_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "eng_atomic.h"

#define ARENA_MAGIC   0x454e4741u /* "AGNE" */
#define ARENA_VERSION 1u
#define ARENA_UNIT    64u /* watermarks and list heads count 64-byte units */

/* Block/record header word: magic(16) | class-or-0(8) | state(8) | owner(32). */
#define BLK_MAGIC 0xb10cu
#define BLK_FREE  1u
#define BLK_USED  2u
#define BLK_RFREE 3u /* record slot on the free list */
#define BLK_RUSED 4u /* record slot in use */

static inline uint64_t blk_word(uint32_t cls, uint32_t state, uint32_t owner)
{
        return ((uint64_t)BLK_MAGIC << 48) | ((uint64_t)(cls & 0xff) << 40) |
               ((uint64_t)(state & 0xff) << 32) | owner;
}
static inline uint32_t blk_magic(uint64_t w)
{
        return (uint32_t)(w >> 48);
}
static inline uint32_t blk_class(uint64_t w)
{
        return (uint32_t)(w >> 40) & 0xff;
}
static inline uint32_t blk_state(uint64_t w)
{
        return (uint32_t)(w >> 32) & 0xff;
}
static inline uint32_t blk_owner(uint64_t w)
{
        return (uint32_t)w;
}

/*
 * The 64-byte header in front of every buffer block and every record slot.
 * word:  written with release when the block changes hands, CAS'd on free (double-free check).
 * next:  free-list link (offset in units) while the block is free; unused otherwise.
 * bytes: the block's size (mutex arena: variable sizes; lock-free arena: 2^class).
 */
struct blk_hdr {
        uint64_t word;
        uint64_t next;
        uint64_t bytes;
        uint64_t pad[5];
};
_Static_assert(sizeof(struct blk_hdr) == ENG_ARENA_HDR_BYTES, "block header is one cache line");

/* A free-list head is {offset in units : 32 | ABA tag : 32}; offset 0 = empty. */
static inline uint64_t head_pack(uint32_t units, uint32_t tag)
{
        return ((uint64_t)tag << 32) | units;
}
static inline uint32_t head_units(uint64_t h)
{
        return (uint32_t)h;
}
static inline uint32_t head_tag(uint64_t h)
{
        return (uint32_t)(h >> 32);
}

/* The watermarks word: {rec_top units : 32 | buf_bottom units : 32} (rec_top in low half). */
static inline uint64_t marks_pack(uint32_t rec_top_u, uint32_t buf_bottom_u)
{
        return ((uint64_t)buf_bottom_u << 32) | rec_top_u;
}
static inline uint32_t marks_rec_top(uint64_t m)
{
        return (uint32_t)m;
}
static inline uint32_t marks_buf_bottom(uint64_t m)
{
        return (uint32_t)(m >> 32);
}

/* One cache line per size class: its list head and the counters its users touch. */
struct arena_class {
        uint64_t head;
        uint64_t used_blocks;
        uint64_t free_blocks;
        uint64_t allocs;
        uint64_t frees;
        uint64_t failed;
        uint64_t pad[2];
};
_Static_assert(sizeof(struct arena_class) == 64, "one cache line per class");

struct eng_arena_hdr {
        /* line 0: immutable after format (magic written last) */
        uint32_t magic;
        uint32_t version;
        uint32_t kind;
        uint32_t min_shift;
        uint32_t max_shift;
        uint32_t nclasses;
        uint64_t size;
        uint64_t rec_base;
        uint64_t rec_stride;
        uint64_t top;
        /* line 1: watermarks and record list (written by every allocating process) */
        _Alignas(64) uint64_t marks;
        uint64_t rec_head;
        uint64_t rec_used;
        uint64_t rec_free;
        uint64_t rec_slots_max;
        uint64_t bad_frees;
        uint64_t mx_failed;
        uint64_t cuts; /* lists found corrupt and cut (arena_cut), since format or a rebuild */
        /* line 2: space-waiting protocol */
        _Alignas(64) uint32_t free_word;
        uint32_t waiters;
        /* lines 3..: the mutex arena's state (unused by the lock-free one) */
        _Alignas(64) pthread_mutex_t mx;
        uint64_t mx_free_head; /* address-ordered free list, block offset in units */
        uint64_t mx_used_blocks, mx_used_bytes, mx_free_blocks, mx_free_bytes;
        uint64_t mx_allocs, mx_frees;
        /* one line per class */
        _Alignas(64) struct arena_class cls[ENG_ARENA_MAX_CLASSES];
};
_Static_assert(offsetof(struct eng_arena_hdr, top) + sizeof(uint64_t) <= 64, "line 0 is one line");
_Static_assert(offsetof(struct eng_arena_hdr, marks) == 64, "watermarks on their own line");
_Static_assert(offsetof(struct eng_arena_hdr, cuts) + sizeof(uint64_t) <= 128,
               "line 1 is one line");
_Static_assert(offsetof(struct eng_arena_hdr, free_word) == 128, "waiting words on their own line");
_Static_assert(offsetof(struct eng_arena_hdr, mx) == 192, "mutex state on its own line");
_Static_assert(offsetof(struct eng_arena_hdr, cls) % 64 == 0, "classes cache-line aligned");

#define ARENA_HDR_BYTES ((sizeof(struct eng_arena_hdr) + 63u) & ~(uint64_t)63u)

static inline struct blk_hdr *blk_at(const eng_arena_t *a, uint64_t block_off)
{
        return (struct blk_hdr *)(a->base + block_off);
}

static inline uint64_t units_to_off(uint32_t u)
{
        return (uint64_t)u * ARENA_UNIT;
}
static inline uint32_t off_to_units(uint64_t off)
{
        return (uint32_t)(off / ARENA_UNIT);
}

/*
 * Read the watermarks and check them against the private geometry: rec_top on a slot boundary
 * at or above rec_base, rec_top <= buf_bottom <= top. A peer can scribble the shared word;
 * an insane value must make allocation fail, never make us carve outside the region.
 */
static inline bool marks_sane(const eng_arena_t *a, uint64_t m, uint64_t *rt, uint64_t *bb)
{
        *rt = units_to_off(marks_rec_top(m));
        *bb = units_to_off(marks_buf_bottom(m));
        return *rt >= a->rec_base && (*rt - a->rec_base) % a->rec_stride == 0 && *rt <= *bb &&
               *bb <= a->top;
}

/* ---- the view's private damage tracking (eng_arena_t) ---------------------------------- */

/* One more anomaly seen by this view. A locked add: threads may share a view; rare. */
static inline void arena_anomaly(eng_arena_t *a, uint64_t n)
{
        eng_faa_u64(&a->anomalies, n);
}

/* Lower (raise) a private watermark of the view to v. Private words, written only by this
 * process's threads: the CAS retries only when another thread moved it, each time closer to
 * v, so the loop ends. Relaxed loads: these are hints re-validated wherever they are used. */
static inline void arena_note_min(uint64_t *p, uint64_t v)
{
        uint64_t cur = eng_load_relaxed_u64(p);
        while (v < cur && !eng_cas_u64(p, cur, v, &cur))
                ;
}
static inline void arena_note_max(uint64_t *p, uint64_t v)
{
        uint64_t cur = eng_load_relaxed_u64(p);
        while (v > cur && !eng_cas_u64(p, cur, v, &cur))
                ;
}

/* Does [off, off + len) lie inside the region (and off != 0)? eng_arena_ptr's test. */
static inline bool arena_in_region(const eng_arena_t *a, uint64_t off, uint64_t len)
{
        return off != 0 && off <= a->size && len <= a->size - off;
}

/*
 * The end of eng_arena_lookup, from a block validated by lf_block_of or mx_block_of: its header
 * word w and size bytes, each read once there. Only these copies are used.
 */
static inline int arena_lookup_copy(const eng_arena_t *a, uint64_t off, uint64_t w, uint64_t bytes,
                                    void **ptr, uint32_t *owner, uint64_t *cap)
{
        if (blk_state(w) != BLK_USED || bytes < ENG_ARENA_HDR_BYTES)
                return -EINVAL;
        uint64_t c = bytes - ENG_ARENA_HDR_BYTES;
        if (!arena_in_region(a, off, c)) /* implied by the validation: checked anyway */
                return -EINVAL;
        if (ptr != NULL)
                *ptr = a->base + off;
        if (owner != NULL)
                *owner = blk_owner(w);
        if (cap != NULL)
                *cap = c;
        return 0;
}

/* Shared by both implementations (arena.c). */
void arena_cut(eng_arena_t *a, uint64_t *head);
void arena_note_marks(eng_arena_t *a, uint64_t rt, uint64_t bb);
void arena_wake_space_waiters(eng_arena_t *a);
int arena_rec_alloc_common(eng_arena_t *a, uint32_t owner, uint64_t *off);
int arena_rec_free_common(eng_arena_t *a, uint64_t off);

/* arena_lf.c */
int lf_format(eng_arena_t *a);
int lf_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off);
int lf_free(eng_arena_t *a, uint64_t off);
/* Free block b (its start) whose header the caller read as w: one CAS from w; -EALREADY if the
 * word is FREE or another free changed it first, -EINVAL if it is not a USED block (of
 * owner_must, if non-zero). lf_free is lf_block_of + this. */
int lf_release(eng_arena_t *a, uint64_t b, uint64_t w, uint32_t owner_must);
int64_t lf_reclaim(eng_arena_t *a, uint32_t owner);
void lf_stats(const eng_arena_t *a, eng_arena_stats_t *st);
int lf_check(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen);
int lf_check_owners(const eng_arena_t *a, bool (*owner_live)(uint32_t, void *), void *ctx,
                    char *why, size_t whylen);
uint64_t lf_max_alloc(const eng_arena_t *a);
uint32_t lf_alloc_bulk(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *offs, uint32_t n);
int lf_free_later(eng_arena_t *a, eng_arena_batch_t *b, uint64_t off);
void lf_flush(eng_arena_t *a, eng_arena_batch_t *b);
uint64_t lf_class_bytes(const eng_arena_t *a, uint64_t len);
/* The block whose payload is at off, validated: its offset, its header word and its size in
 * bytes (header included), each read once. 0 or -EINVAL. */
int lf_block_of(const eng_arena_t *a, uint64_t off, uint64_t *blk, uint64_t *word, uint64_t *bytes);
int lf_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner, uint64_t *cap);
bool lf_marks_sane(const eng_arena_t *a, uint64_t m, uint64_t *rt, uint64_t *bb);
uint64_t lf_bottom_probe(const eng_arena_t *a, uint64_t low, uint64_t floor);
bool lf_born_between(const eng_arena_t *a, uint64_t lo, uint64_t hi);
void lf_rebuild_buffers(eng_arena_t *a, uint64_t rt, const eng_arena_rebuild_cfg_t *cfg,
                        eng_arena_rebuild_report_t *rep, uint64_t *bb_new);

/* arena_mutex.c */
int mx_format(eng_arena_t *a);
int mx_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off);
int mx_free(eng_arena_t *a, uint64_t off);
int64_t mx_reclaim(eng_arena_t *a, uint32_t owner);
void mx_stats(const eng_arena_t *a, eng_arena_stats_t *st);
int mx_check(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen);
uint64_t mx_max_alloc(const eng_arena_t *a);
int mx_block_of(const eng_arena_t *a, uint64_t off, uint64_t *blk, uint64_t *word, uint64_t *bytes);
int mx_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner, uint64_t *cap);
int mx_rec_alloc(eng_arena_t *a, uint32_t owner, uint64_t *off);
int mx_rec_free(eng_arena_t *a, uint64_t off);
int arena_mx_lock(eng_arena_t *a);
void arena_mx_unlock(eng_arena_t *a);

#endif
