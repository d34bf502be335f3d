/*
 * arena.c - what both arena implementations share: format/attach, validation of handles,
 * record slots, the space-waiting wake-up, and dispatch to arena_lf.c / arena_mutex.c.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdarg.h>
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

/*
 * The immutable geometry: line 0 of the header plus the slot count (line 1). attach reads it
 * once into this snapshot, validates the snapshot and takes the view's private copy from it:
 * a writer changing the header between the check and the copy cannot slip anything past.
 */
struct arena_geom {
        uint32_t version, kind, min_shift, max_shift, nclasses;
        uint64_t size, rec_base, rec_stride, top, rec_slots_max;
};

/* Relaxed: words that never change after format, read after the magic (acquire); a scribbled
 * value is caught by the caller's validation, a torn snapshot across fields likewise. */
static void geom_read(const struct eng_arena_hdr *h, struct arena_geom *g)
{
        memset(g, 0, sizeof(*g));
        g->version = eng_load_relaxed_u32(&h->version);
        g->kind = eng_load_relaxed_u32(&h->kind);
        g->min_shift = eng_load_relaxed_u32(&h->min_shift);
        g->max_shift = eng_load_relaxed_u32(&h->max_shift);
        g->nclasses = eng_load_relaxed_u32(&h->nclasses);
        g->size = eng_load_relaxed_u64(&h->size);
        g->rec_base = eng_load_relaxed_u64(&h->rec_base);
        g->rec_stride = eng_load_relaxed_u64(&h->rec_stride);
        g->top = eng_load_relaxed_u64(&h->top);
        g->rec_slots_max = eng_load_relaxed_u64(&h->rec_slots_max);
}

/* What the header must say, from the view's private copy. */
static void geom_of_view(const eng_arena_t *a, struct arena_geom *g)
{
        memset(g, 0, sizeof(*g));
        g->version = ARENA_VERSION;
        g->kind = (uint32_t)a->kind;
        g->min_shift = a->min_shift;
        g->max_shift = a->max_shift;
        g->nclasses = a->nclasses;
        g->size = a->size;
        g->rec_base = a->rec_base;
        g->rec_stride = a->rec_stride;
        g->top = a->top;
        g->rec_slots_max = a->rec_slots_max;
}

/* Copy the immutable geometry into the private view (see arena.h). */
static void arena_take_geometry(eng_arena_t *a, const struct arena_geom *g)
{
        a->kind = (eng_arena_kind_t)g->kind;
        a->min_shift = g->min_shift;
        a->max_shift = g->max_shift;
        a->nclasses = g->nclasses;
        a->rec_base = g->rec_base;
        a->rec_stride = g->rec_stride;
        a->top = g->top;
        a->rec_slots_max = g->rec_slots_max;
}

/* Start the view's private tracking from the watermarks as they are now. */
static void arena_view_init(eng_arena_t *a)
{
        a->anomalies = 0;
        a->walk_skips = 0;
        a->rec_top_carved = 0;
        a->rec_top_seen = a->rec_base;
        a->buf_bottom_low = a->top;
        uint64_t rt, bb;
        /* Acquire: as every reader of the marks, the carves behind the value are visible. */
        if (a->kind == ENG_ARENA_LOCKFREE &&
            lf_marks_sane(a, eng_load_acquire_u64(&a->hdr->marks), &rt, &bb)) {
                a->rec_top_seen = rt;
                a->buf_bottom_low = bb;
        }
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
        struct arena_geom g;
        geom_read(h, &g);
        arena_take_geometry(a, &g);
        arena_view_init(a);
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
        /* Acquire: pairs with the release of the magic at format (or heal), so the geometry
         * read below is the one written before it. */
        if (eng_load_acquire_u32(&h->magic) != ARENA_MAGIC)
                return -EPROTO;
        /* The header is as untrusted as the rest of the segment: check what we will rely on,
         * in one snapshot (a writer cannot change it between the check and the copy). */
        struct arena_geom g;
        geom_read(h, &g);
        if (g.version != ARENA_VERSION)
                return -EPROTONOSUPPORT;
        if (g.size != size || (g.kind != ENG_ARENA_LOCKFREE && g.kind != ENG_ARENA_MUTEX) ||
            g.rec_base != ARENA_HDR_BYTES || g.top > size || g.top <= g.rec_base ||
            g.rec_stride < 128 || (g.rec_stride & 63u) || g.min_shift < 7 || g.max_shift > 30 ||
            g.min_shift > g.max_shift || g.rec_slots_max != (g.top - g.rec_base) / g.rec_stride ||
            (g.kind == ENG_ARENA_LOCKFREE && (g.nclasses != g.max_shift - g.min_shift + 1 ||
                                              g.top % ((uint64_t)1 << g.max_shift) != 0)))
                return -EUCLEAN;
        a->base = base;
        a->size = size;
        a->hdr = h;
        arena_take_geometry(a, &g);
        arena_view_init(a);
        return 0;
}

eng_arena_kind_t eng_arena_kind(const eng_arena_t *a)
{
        return (eng_arena_kind_t)a->kind;
}

void *eng_arena_ptr(const eng_arena_t *a, uint64_t off, uint64_t len)
{
        return arena_in_region(a, off, len) ? a->base + off : NULL;
}

/* ---- damage ------------------------------------------------------------------------- */

#define CUT_TRIES 64 /* a writer hammering a head must not keep a cut looping */

/*
 * A free list was found corrupt: empty it, head {0, tag+1}. Whatever was on it leaks until a
 * rebuild. The CAS (a full barrier) publishes nothing; the tag bump is what matters: every pop
 * that read the old head fails its CAS (the ABA argument holds, every change bumps the tag).
 * Bounded: if a writer keeps changing the word we give up, and the caller treats the list as
 * empty anyway.
 */
void arena_cut(eng_arena_t *a, uint64_t *head)
{
        uint64_t old = eng_load_relaxed_u64(head);
        for (int i = 0; i < CUT_TRIES; i++)
                if (eng_cas_u64(head, old, head_pack(0, head_tag(old) + 1), &old))
                        break;
        eng_faa_u64(&a->hdr->cuts, 1);
        arena_anomaly(a, 1);
}

/* This view read sane watermarks {rt, bb} (lock-free arena): remember them. */
void arena_note_marks(eng_arena_t *a, uint64_t rt, uint64_t bb)
{
        if (a->kind != ENG_ARENA_LOCKFREE)
                return;
        arena_note_max(&a->rec_top_seen, rt);
        arena_note_min(&a->buf_bottom_low, bb);
}

/* Relaxed: counters, read for reporting. */
uint64_t eng_arena_anomalies(const eng_arena_t *a)
{
        return eng_load_relaxed_u64(&a->anomalies);
}

uint64_t eng_arena_walk_skips(const eng_arena_t *a)
{
        return eng_load_relaxed_u64(&a->walk_skips);
}

/* Append to a description buffer (never past its end). */
static void say(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void say(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
        if (buf == NULL || *pos + 1 >= len)
                return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf + *pos, len - *pos, fmt, ap);
        va_end(ap);
        if (n > 0)
                *pos = *pos + (size_t)n < len ? *pos + (size_t)n : len - 1;
}

/* Line 0 of the header (and the slot count) back to the view's private copy. */
static int heal_header(eng_arena_t *a, char *what, size_t whatlen, size_t *pos)
{
        struct eng_arena_hdr *h = a->hdr;
        struct arena_geom want, have;
        geom_of_view(a, &want);
        geom_read(h, &have);
        /* Acquire: only a value, compared; the stores below are what matters (release). */
        bool magic_ok = eng_load_acquire_u32(&h->magic) == ARENA_MAGIC;
        bool geom_ok = memcmp(&want, &have, sizeof want) == 0;
        if (magic_ok && geom_ok)
                return 0;
        say(what, whatlen, pos, "header:");
#define HEAL_FIELD(f, bits)                                                                        \
        do {                                                                                       \
                if (have.f != want.f) {                                                            \
                        say(what, whatlen, pos, " " #f);                                           \
                        eng_store_relaxed_u##bits(&h->f, want.f);                                  \
                }                                                                                  \
        } while (0)
        if (!geom_ok) {
                /* Withdraw the magic while the line is rewritten: an attacher that sees the
                 * magic must see the whole line (it reads the magic first, with acquire). */
                eng_store_relaxed_u32(&h->magic, 0);
                HEAL_FIELD(version, 32);
                HEAL_FIELD(kind, 32);
                HEAL_FIELD(min_shift, 32);
                HEAL_FIELD(max_shift, 32);
                HEAL_FIELD(nclasses, 32);
                HEAL_FIELD(size, 64);
                HEAL_FIELD(rec_base, 64);
                HEAL_FIELD(rec_stride, 64);
                HEAL_FIELD(top, 64);
                HEAL_FIELD(rec_slots_max, 64);
        }
#undef HEAL_FIELD
        if (!magic_ok)
                say(what, whatlen, pos, " magic");
        /* Release: the fields above are visible before the magic, which is written last. */
        eng_store_release_u32(&h->magic, ARENA_MAGIC);
        say(what, whatlen, pos, "; ");
        return ENG_ARENA_HEALED_HEADER;
}

/* The watermarks back to what this view knows (see eng_arena_heal in arena.h). */
static int heal_marks(eng_arena_t *a, char *what, size_t whatlen, size_t *pos)
{
        struct eng_arena_hdr *h = a->hdr;
        /* Acquire: the carves behind the value are visible (the superblock words we probe). */
        uint64_t m = eng_load_acquire_u64(&h->marks);
        for (int tries = 0; tries < 8; tries++) {
                uint64_t rt, bb;
                bool sane = lf_marks_sane(a, m, &rt, &bb);
                if (sane)
                        arena_note_marks(a, rt, bb);
                /* Relaxed: the view's private words (see arena_note_min). */
                uint64_t carved = eng_load_relaxed_u64(&a->rec_top_carved);
                uint64_t rt_want = carved ? carved
                                   : sane ? rt
                                          : eng_load_relaxed_u64(&a->rec_top_seen);
                uint64_t known = eng_load_relaxed_u64(&a->buf_bottom_low);
                uint64_t low = lf_bottom_probe(a, known, rt_want);
                arena_note_min(&a->buf_bottom_low, low);
                if (sane && bb > low && !lf_born_between(a, low, bb)) {
                        /* Nothing carved in between: given back by a rebuild through another
                         * view (it zeroes what it gives back), or never in use. Adopt it; a
                         * failed CAS means a thread of ours noted a lower value meanwhile. */
                        uint64_t seen;
                        eng_cas_u64(&a->buf_bottom_low, low, bb, &seen);
                        low = bb;
                }
                if (sane && (carved == 0 || rt == carved) && bb <= low)
                        return 0;
                if (rt_want > low) {
                        arena_anomaly(a, 1); /* nothing this view can trust: a rebuild's job */
                        return 0;
                }
                uint64_t nm = marks_pack(off_to_units(rt_want), off_to_units(low));
                /* The CAS fails if a carve moved the word meanwhile: then look again. */
                if (eng_cas_u64(&h->marks, m, nm, &m)) {
                        say(what, whatlen, pos,
                            "watermarks: rec_top %llu buf_bottom %llu -> %llu %llu; ",
                            (unsigned long long)units_to_off(marks_rec_top(m)),
                            (unsigned long long)units_to_off(marks_buf_bottom(m)),
                            (unsigned long long)rt_want, (unsigned long long)low);
                        return ENG_ARENA_HEALED_MARKS;
                }
        }
        return 0;
}

int eng_arena_heal(eng_arena_t *a, char *what, size_t whatlen)
{
        if (a == NULL || a->hdr == NULL)
                return -EINVAL;
        size_t pos = 0;
        if (what != NULL && whatlen > 0)
                what[0] = '\0';
        int mask = heal_header(a, what, whatlen, &pos);
        if (a->kind == ENG_ARENA_LOCKFREE)
                mask |= heal_marks(a, what, whatlen, &pos);
        return mask;
}

/*
 * The record part of eng_arena_rebuild, for the slots below rt: from the top down, slots above
 * the highest live one go back to the gap (the caller zeroes them), the live ones are stamped
 * RUSED (owner 0), the others RFREE on a fresh list (lowest first). Returns the new rec_top.
 *
 * Quiescent by precondition: relaxed loads and stores (single-copy atomic, so a scribbler
 * cannot tear them); the release store of the watermarks at the end of eng_arena_rebuild
 * publishes everything written here.
 */
static uint64_t rebuild_records(eng_arena_t *a, uint64_t rt, const eng_arena_rebuild_cfg_t *cfg,
                                eng_arena_rebuild_report_t *rep)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t nslots = (rt - a->rec_base) / a->rec_stride;
        uint64_t first = 0, listed = 0, rt_new = a->rec_base;
        bool above = true; /* still above the highest live slot */
        for (uint64_t i = nslots; i-- > 0;) {
                uint64_t s = a->rec_base + i * a->rec_stride;
                struct blk_hdr *b = blk_at(a, s);
                uint64_t w = eng_load_relaxed_u64(&b->word);
                bool live = cfg != NULL && cfg->rec_live != NULL && cfg->rec_live(i, cfg->ctx);
                if (live) {
                        if (above)
                                rt_new = s + a->rec_stride;
                        above = false;
                        eng_store_relaxed_u64(&b->word, blk_word(0, BLK_RUSED, 0));
                        rep->rec_kept++;
                        continue;
                }
                if (blk_magic(w) == BLK_MAGIC && blk_state(w) == BLK_RUSED)
                        rep->rec_freed++;
                if (above) {
                        if (w != 0)
                                rep->gap_bytes += a->rec_stride;
                        continue;
                }
                eng_store_relaxed_u64(&b->next, off_to_units(first));
                eng_store_relaxed_u64(&b->word, blk_word(0, BLK_RFREE, 0));
                first = s;
                listed++;
        }
        uint64_t old = eng_load_relaxed_u64(&h->rec_head);
        eng_store_relaxed_u64(&h->rec_head, head_pack(off_to_units(first), head_tag(old) + 1));
        eng_store_relaxed_u64(&h->rec_used, rep->rec_kept);
        eng_store_relaxed_u64(&h->rec_free, listed);
        return rt_new;
}

int eng_arena_rebuild(eng_arena_t *a, const eng_arena_rebuild_cfg_t *cfg,
                      eng_arena_rebuild_report_t *rep)
{
        eng_arena_rebuild_report_t tmp;
        if (a == NULL || a->hdr == NULL)
                return -EINVAL;
        if (a->kind != ENG_ARENA_LOCKFREE)
                return -ENOTSUP;
        if (rep == NULL)
                rep = &tmp;
        memset(rep, 0, sizeof(*rep));
        struct eng_arena_hdr *h = a->hdr;
        rep->was_consistent = eng_arena_check(a, NULL, 0) == 0;
        size_t pos = 0;
        rep->healed = heal_header(a, NULL, 0, &pos);

        /* The record top: the one this view carved, else the shared one clamped to the
         * geometry and below the lowest carved superblock this view can see (so records never
         * reach into buffer superblocks). */
        uint64_t max_rt = a->rec_base + a->rec_slots_max * a->rec_stride;
        uint64_t rt = eng_load_relaxed_u64(&a->rec_top_carved); /* private word */
        if (rt == 0) {
                uint64_t m = eng_load_acquire_u64(&h->marks), srt, sbb;
                uint64_t low = eng_load_relaxed_u64(&a->buf_bottom_low);
                if (lf_marks_sane(a, m, &srt, &sbb) && sbb < low)
                        low = sbb;
                low = lf_bottom_probe(a, low, a->rec_base);
                rt = units_to_off(marks_rec_top(m));
                if (rt > low)
                        rt = low;
        }
        if (rt > max_rt)
                rt = max_rt;
        if (rt < a->rec_base)
                rt = a->rec_base;
        rt -= (rt - a->rec_base) % a->rec_stride;

        uint64_t rt_new = rebuild_records(a, rt, cfg, rep);
        uint64_t bb_new;
        lf_rebuild_buffers(a, rt, cfg, rep, &bb_new);
        /* Everything between the new watermarks is gap again: zero it, as format left it (the
         * carve checks rely on the gap reading unborn). Nothing live is in there. */
        memset(a->base + rt_new, 0, bb_new - rt_new);

        rep->cuts = eng_load_relaxed_u64(&h->cuts); /* a counter: relaxed, as everywhere */
        eng_store_relaxed_u64(&h->cuts, 0);
        /* Release: every header, link, head and counter written above is visible before the
         * new watermarks (walkers and attachers read them first, with acquire). */
        eng_store_release_u64(&h->marks, marks_pack(off_to_units(rt_new), off_to_units(bb_new)));
        /* The view's private words: what it knows now (relaxed: no other honest user). */
        if (eng_load_relaxed_u64(&a->rec_top_carved) != 0)
                eng_store_relaxed_u64(&a->rec_top_carved, rt_new);
        eng_store_relaxed_u64(&a->rec_top_seen, rt_new);
        eng_store_relaxed_u64(&a->buf_bottom_low, bb_new);
        rep->rec_top = rt_new;
        rep->buf_bottom = bb_new;
        arena_wake_space_waiters(a);
        return 0;
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
 * slot index reach past the region), and never below the slots this view carved itself (a
 * scribbled lower value cannot make our own records invalid). */
static uint64_t rec_top(const eng_arena_t *a)
{
        uint64_t rt = units_to_off(marks_rec_top(eng_load_acquire_u64(&a->hdr->marks)));
        uint64_t mine = eng_load_relaxed_u64(&a->rec_top_carved);
        uint64_t max = a->rec_base + a->rec_slots_max * a->rec_stride;
        if (rt < mine)
                rt = mine;
        if (rt < a->rec_base)
                return a->rec_base;
        return rt > max ? max : rt;
}

/* Is s the start of a record slot below the record top? */
static bool rec_slot_ok(const eng_arena_t *a, uint64_t s)
{
        return s >= a->rec_base && (s - a->rec_base) % a->rec_stride == 0 &&
               s + a->rec_stride <= rec_top(a);
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

int eng_arena_rec_in_use(const eng_arena_t *a, uint64_t index)
{
        if (index >= a->rec_slots_max)
                return -1;
        uint64_t w = eng_load_relaxed_u64(&blk_at(a, a->rec_base + index * a->rec_stride)->word);
        if (w == 0)
                return 0; /* never carved */
        if (blk_magic(w) != BLK_MAGIC)
                return -1;
        return blk_state(w) == BLK_RUSED ? 1 : blk_state(w) == BLK_RFREE ? 0 : -1;
}

uint64_t eng_arena_rec_slots(const eng_arena_t *a)
{
        return (rec_top(a) - a->rec_base) / a->rec_stride;
}

uint64_t eng_arena_rec_stride(const eng_arena_t *a)
{
        return a->rec_stride;
}

void eng_arena_rec_room(const eng_arena_t *a, uint64_t *free_slots, uint64_t *buf_room)
{
        uint64_t rt, bb;
        *free_slots = eng_load_relaxed_u64(&a->hdr->rec_free);
        if (!marks_sane(a, eng_load_acquire_u64(&a->hdr->marks), &rt, &bb) ||
            rt + a->rec_stride > bb)
                *buf_room = 0;
        else
                *buf_room = a->top - (rt + a->rec_stride);
}

uint64_t eng_arena_top(const eng_arena_t *a)
{
        return a->top;
}

uint64_t eng_arena_rec_max_slots(const eng_arena_t *a)
{
        return a->rec_slots_max;
}

/*
 * Record slots: a Treiber stack of freed slots (head {units, tag} in rec_head, link in the
 * slot header's next), and fresh slots carved by moving rec_top up in the watermarks word.
 * Same ABA argument as the buffer lists (arena_lf.c), and the same damage rules: a popped slot
 * must read exactly RFREE, else the list is cut; on the lock-free arena a carved slot must be
 * unborn (its gap is all zeros), else rec_top was moved down under slots in use and the carve
 * is refused (the mutex arena gives buffer space back to the gap unzeroed: no such check).
 */
int arena_rec_alloc_common(eng_arena_t *a, uint32_t owner, uint64_t *off)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t slot = 0;
        /* Acquire: the link we read below was written before the push that published it. */
        uint64_t old = eng_load_acquire_u64(&h->rec_head);
        for (;;) {
                uint32_t u = head_units(old);
                if (u == 0)
                        break;
                uint64_t s = units_to_off(u);
                if (!rec_slot_ok(a, s)) {
                        arena_cut(a, &h->rec_head); /* a writer corrupted the head */
                        break;
                }
                uint64_t next = eng_load_relaxed_u64(&blk_at(a, s)->next);
                if (eng_cas_u64(&h->rec_head, old, head_pack((uint32_t)next, head_tag(old) + 1),
                                &old)) {
                        eng_faa_u64(&h->rec_free, (uint64_t)-1);
                        /* Relaxed: our CAS (a full barrier) ordered this load after the push
                         * that published the slot, hence after the freer's RFREE CAS; nobody
                         * writes a listed slot's header. Anything else: forged, cycle, scribble. */
                        if (eng_load_relaxed_u64(&blk_at(a, s)->word) == blk_word(0, BLK_RFREE, 0))
                                slot = s;
                        else
                                arena_cut(a, &h->rec_head);
                        break;
                }
        }
        if (slot == 0) {
                uint64_t m = eng_load_acquire_u64(&h->marks);
                uint64_t rt, bb;
                for (;;) {
                        if (!marks_sane(a, m, &rt, &bb)) {
                                arena_anomaly(a, 1); /* scribbled watermarks: carve nothing */
                                return -ENOMEM;
                        }
                        if (rt + a->rec_stride > bb)
                                return -ENOMEM;
                        uint64_t nm =
                            marks_pack(off_to_units(rt + a->rec_stride), marks_buf_bottom(m));
                        if (eng_cas_u64(&h->marks, m, nm, &m))
                                break;
                }
                if (a->kind == ENG_ARENA_LOCKFREE) {
                        arena_note_max(&a->rec_top_carved, rt + a->rec_stride);
                        arena_note_marks(a, rt + a->rec_stride, bb);
                        /* Relaxed: nothing honest writes the gap (see lf_carve). */
                        if (eng_load_relaxed_u64(&blk_at(a, rt)->word) != 0) {
                                arena_anomaly(a, 1);
                                return -ENOMEM;
                        }
                }
                slot = rt;
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
        if (blk_magic(w) != BLK_MAGIC || blk_state(w) != BLK_RUSED) {
                eng_faa_u64(&h->bad_frees, 1);
                return blk_state(w) == BLK_RFREE ? -EALREADY : -EINVAL;
        }
        /* One CAS, no retry: a failed one means another free of this slot came first (nothing
         * else changes an RUSED word), and a retry would free the slot's next owner (as
         * lf_release). */
        if (!eng_cas_u64(&b->word, w, blk_word(0, BLK_RFREE, 0), &w)) {
                eng_faa_u64(&h->bad_frees, 1);
                return blk_magic(w) == BLK_MAGIC ? -EALREADY : -EINVAL;
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

/*
 * The header word is read once (acquire, in *_block_of: it pairs with the release that stamped
 * the block), validated with the size it implies against the private geometry, and only that
 * copy is used (arena_lookup_copy): a writer that changes the header meanwhile cannot make
 * owner and capacity disagree, or the capacity reach past the block's validated bounds. Each
 * implementation does it in its own file, where its block_of is inlined: this is on every
 * message's path, both sides.
 */
int eng_arena_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner, uint64_t *cap)
{
        return a->kind == ENG_ARENA_MUTEX ? mx_lookup(a, off, ptr, owner, cap)
                                          : lf_lookup(a, off, ptr, owner, cap);
}

uint64_t eng_arena_capacity(const eng_arena_t *a, uint64_t off)
{
        uint64_t cap;
        return eng_arena_lookup(a, off, NULL, NULL, &cap) == 0 ? cap : 0;
}

uint32_t eng_arena_owner(const eng_arena_t *a, uint64_t off)
{
        uint32_t owner;
        return eng_arena_lookup(a, off, NULL, &owner, NULL) == 0 ? owner : 0;
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
        st->size = a->size;
        st->rec_base = a->rec_base;
        st->top = a->top;
        st->rec_top = units_to_off(marks_rec_top(m));
        st->buf_bottom = units_to_off(marks_buf_bottom(m));
        st->rec_stride = a->rec_stride;
        st->rec_used = eng_load_relaxed_u64((uint64_t *)&h->rec_used);
        st->rec_free = eng_load_relaxed_u64((uint64_t *)&h->rec_free);
        st->bad_frees = eng_load_relaxed_u64((uint64_t *)&h->bad_frees);
        st->cuts = eng_load_relaxed_u64(&h->cuts);
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

int eng_arena_check_live(const eng_arena_t *a, const eng_arena_rebuild_cfg_t *cfg, char *why,
                         size_t whylen)
{
        char tmp[8];
        if (why == NULL) {
                why = tmp;
                whylen = sizeof(tmp);
        }
        int rc = arena_check(a, NULL, why, whylen);
        if (rc != 0)
                return rc;
        uint64_t rt = units_to_off(marks_rec_top(eng_load_acquire_u64(&a->hdr->marks)));
        uint64_t nslots = (rt - a->rec_base) / a->rec_stride; /* arena_check checked rt */
        for (uint64_t i = 0; i < nslots; i++) {
                uint64_t w = blk_at(a, a->rec_base + i * a->rec_stride)->word;
                bool used = blk_state(w) == BLK_RUSED;
                bool live = cfg != NULL && cfg->rec_live != NULL && cfg->rec_live(i, cfg->ctx);
                if (used != live) {
                        snprintf(why, whylen, "record slot %llu is %s but %s",
                                 (unsigned long long)i, used ? "in use" : "free",
                                 live ? "live" : "not live");
                        return -EUCLEAN;
                }
        }
        if (a->kind == ENG_ARENA_MUTEX)
                return 0;
        return lf_check_owners(a, cfg != NULL ? cfg->owner_live : NULL,
                               cfg != NULL ? cfg->ctx : NULL, why, whylen);
}

int eng_arena_check_leaks(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen)
{
        *leaked = 0;
        return arena_check(a, leaked, why, whylen);
}
