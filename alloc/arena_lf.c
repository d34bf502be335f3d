/*
 * arena_lf.c - the lock-free buffer allocator.
 *
 * Blocks are 2^s bytes (min_shift <= s <= max_shift), header included, and 2^s-aligned
 * relative to the region start. Fresh space is carved one superblock (2^max_shift) at a time
 * by moving buf_bottom down with a CAS on the watermarks word; a superblock is split in
 * halves down to the class wanted, the buddies going to their class lists.
 *
 * Free lists (one per class) are Treiber stacks. Head = {offset units : 32 | tag : 32}; every
 * successful CAS on a head increments the tag, so a pop whose CAS succeeds knows the head did
 * not change between its load and its CAS, hence the link it read from the head block was
 * that block's link while it was on top (the ABA argument). A tag wraps after 2^32 updates of
 * one list; a popper would have to stall across exactly that many for ABA to bite.
 *
 * Ordering: a push writes the link (relaxed) then CASes the head (full barrier: publishes the
 * link and the block header); a pop loads the head with acquire before reading the link.
 *
 * Walkability (for reclaim and check): superblocks lie at top - k*SB down to buf_bottom. A
 * superblock whose first header word is 0 is unborn (carved, not yet split: the region was
 * zeroed at format and the buffer area never shrinks). A split writes the buddies' headers
 * first, then the kept block's header with release, and only then pushes the buddies, so a
 * walker that reads a header with acquire always finds valid headers at every step after it.
 *
 * Damage (any process can write any byte): a pop validates the block it won (its header must
 * be exactly FREE of its class) and cuts the list when it is not; a carve checks that the
 * superblock it won is unborn; a walk abandons a superblock at a bad header and goes on. Bounds
 * come from the private geometry and the view's own idea of buf_bottom (lf_bottom), so nothing
 * read from the segment can send us outside the region or around a loop forever.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena_int.h"

static inline uint64_t sb_bytes(const eng_arena_t *a)
{
        return (uint64_t)1 << a->max_shift;
}

static inline uint64_t cls_bytes(const eng_arena_t *a, uint32_t c)
{
        return (uint64_t)1 << (a->min_shift + c);
}

int lf_format(eng_arena_t *a)
{
        (void)a; /* zeroed headers and lists are the empty state */
        return 0;
}

uint64_t lf_max_alloc(const eng_arena_t *a)
{
        return sb_bytes(a) - ENG_ARENA_HDR_BYTES;
}

static int class_for(const eng_arena_t *a, uint64_t len, uint32_t *c)
{
        uint64_t need = len + ENG_ARENA_HDR_BYTES;
        if (len > sb_bytes(a) - ENG_ARENA_HDR_BYTES)
                return -E2BIG;
        uint32_t k = 0;
        while (cls_bytes(a, k) < need)
                k++;
        *c = k;
        return 0;
}

/* Sane watermarks (marks_sane) with buf_bottom on a superblock boundary. */
bool lf_marks_sane(const eng_arena_t *a, uint64_t m, uint64_t *rt, uint64_t *bb)
{
        return marks_sane(a, m, rt, bb) && (*bb & (sb_bytes(a) - 1)) == 0;
}

/* Could a class-c block start at blk, by the private geometry alone? */
static bool lf_geom_ok(const eng_arena_t *a, uint64_t blk, uint32_t c)
{
        return c < a->nclasses && blk >= a->rec_base && blk < a->top &&
               (blk & (cls_bytes(a, c) - 1)) == 0 && blk + cls_bytes(a, c) <= a->top;
}

/*
 * The bottom of the buffer area as this view trusts it: the lower of the shared buf_bottom
 * (if sane) and the lowest sane one this view has seen itself (its own carves, its walks, heal,
 * attach). So a scribbled *raise* of the shared word cannot make this view refuse blocks it
 * knows exist (it would cut every list and refuse every free); a lowering to a sane value
 * cannot be told from a carve, and only exposes unborn (zero) space, which the header checks
 * refuse. Relaxed on the view's own word: a private hint, only ever lowered to values that were
 * sane when read.
 */
static uint64_t lf_bottom_of(const eng_arena_t *a, uint64_t m)
{
        uint64_t low = eng_load_relaxed_u64(&a->buf_bottom_low), rt, bb;
        if (units_to_off(marks_buf_bottom(m)) < low && lf_marks_sane(a, m, &rt, &bb))
                return bb;
        return low;
}

/* Acquire on the marks: a block we are about to check was carved (the marks CAS) before it was
 * pushed or handed out, and the caller has read that push (or hand-out) first. */
static uint64_t lf_bottom(const eng_arena_t *a)
{
        return lf_bottom_of(a, eng_load_acquire_u64(&a->hdr->marks));
}

/* lf_bottom, remembering a lower sane value in the view (the rare paths that walk or carve). */
static uint64_t lf_bottom_note(eng_arena_t *a)
{
        uint64_t bb = lf_bottom(a);
        arena_note_min(&a->buf_bottom_low, bb);
        return bb;
}

/* Out of line: blk is below the shared buf_bottom, which only a scribbled raise explains for a
 * block this view may know; accept it if it is above the bottom the view trusts. */
static __attribute__((noinline)) bool lf_below_shared_ok(const eng_arena_t *a, uint64_t m,
                                                         uint64_t blk)
{
        return blk >= lf_bottom_of(a, m);
}

/*
 * Is blk a plausible start of a class-c block in the buffer area? The common case is the old
 * single compare against the shared buf_bottom (read with acquire, as in lf_bottom); only a
 * block below it asks the view (lf_bottom). A shared value scribbled lower lets more offsets
 * through here: they are unborn or someone else's, and the header checks after it refuse them.
 * Forced inline: it is on every pop and every free (measured: ~0.4 ns per alloc+free pair).
 */
static inline __attribute__((always_inline)) bool lf_block_ok(const eng_arena_t *a, uint64_t blk,
                                                              uint32_t c)
{
        uint64_t m = eng_load_acquire_u64(&a->hdr->marks);
        if (blk < units_to_off(marks_buf_bottom(m)) && !lf_below_shared_ok(a, m, blk))
                return false;
        return lf_geom_ok(a, blk, c);
}

/* Is blk a plausible start of a class-c block in [bb, top)? (the strict check's form) */
static bool lf_block_in(const eng_arena_t *a, uint64_t bb, uint64_t blk, uint32_t c)
{
        return blk >= bb && lf_geom_ok(a, blk, c);
}

static void lf_push(eng_arena_t *a, uint32_t c, uint64_t blk)
{
        struct arena_class *k = &a->hdr->cls[c];
        struct blk_hdr *b = blk_at(a, blk);
        uint64_t old = eng_load_relaxed_u64(&k->head);
        do {
                eng_store_relaxed_u64(&b->next, head_units(old));
                /* The CAS (full barrier) publishes the link and the header before the head. */
        } while (
            !eng_cas_u64(&k->head, old, head_pack(off_to_units(blk), head_tag(old) + 1), &old));
        eng_faa_u64(&k->free_blocks, 1);
}

/*
 * Pop one block of class c; false if the list is empty or was found corrupt (then it is cut:
 * the caller goes on as if the class were empty).
 *
 * Validation after the CAS: in honest operation the block we won is exclusively ours and reads
 * exactly FREE(c) (the pusher stored FREE before the push CAS our CAS has read through, and
 * nobody writes a listed block's header). Anything else - a forged link, a cycle, a block
 * listed twice, a scribbled header - is corruption: we do not use the block and cut the list.
 * A block listed twice is caught because its first taker stamps it USED before using it; only
 * a second pop that wins the same block inside the few instructions between the first one's
 * CAS and its stamp could take it too (the stamp stays a plain store, no CAS on the hot path).
 * That needs a forged cycle, and a writer who can forge one can write into any block anyway.
 */
static bool lf_pop(eng_arena_t *a, uint32_t c, uint64_t *blk)
{
        struct arena_class *k = &a->hdr->cls[c];
        /* Acquire: the link we read below was written before the push that published it. */
        uint64_t old = eng_load_acquire_u64(&k->head);
        for (;;) {
                uint32_t u = head_units(old);
                if (u == 0)
                        return false;
                uint64_t off = units_to_off(u);
                /* The marks are read after the head value (the acquire load or the failed
                 * CAS): a block pushed from a superblock carved since is inside them. */
                if (!lf_block_ok(a, off, c)) {
                        arena_cut(a, &k->head); /* a writer corrupted the head */
                        return false;
                }
                /* May be stale if the block was popped meanwhile; the tag makes the CAS fail then.
                 */
                uint64_t next = eng_load_relaxed_u64(&blk_at(a, off)->next);
                if (eng_cas_u64(&k->head, old, head_pack((uint32_t)next, head_tag(old) + 1),
                                &old)) {
                        eng_faa_u64(&k->free_blocks, (uint64_t)-1);
                        /* Relaxed: our CAS (a full barrier) already ordered this load after the
                         * push that published the block, hence after its FREE store. */
                        if (eng_load_relaxed_u64(&blk_at(a, off)->word) !=
                            blk_word(c, BLK_FREE, 0)) {
                                arena_cut(a, &k->head);
                                return false;
                        }
                        *blk = off;
                        return true;
                }
        }
}

/*
 * Carve a fresh superblock below buf_bottom. After the CAS the superblock must be unborn: the
 * gap is all zeros (format zeroes the region, a rebuild zeroes what it gives back, and honest
 * operation never gives space back). A header there means the watermark was scribbled upward
 * over superblocks in use: refuse it (the CAS has moved the watermark one superblock back
 * down, so repeated carves walk a raised watermark back to the real one, refusing each step).
 */
static bool lf_carve(eng_arena_t *a, uint64_t *blk)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t sb = sb_bytes(a);
        uint64_t m = eng_load_acquire_u64(&h->marks);
        uint64_t rt, bb;
        for (;;) {
                if (!lf_marks_sane(a, m, &rt, &bb)) {
                        arena_anomaly(a, 1); /* scribbled: never carve outside the region */
                        return false;
                }
                if (bb < sb || bb - sb < rt)
                        return false;
                if (eng_cas_u64(&h->marks, m, marks_pack(marks_rec_top(m), off_to_units(bb - sb)),
                                &m))
                        break;
        }
        /* Relaxed: nobody honest writes an unborn superblock; what we compare against is the
         * zero format or a quiescent rebuild left, long before. */
        if (eng_load_relaxed_u64(&blk_at(a, bb - sb)->word) != 0) {
                arena_anomaly(a, 1);
                return false;
        }
        arena_note_marks(a, rt, bb - sb);
        *blk = bb - sb;
        return true;
}

/*
 * Turn the class-j block at blk (which we own exclusively: just popped or carved) into a used
 * class-c block and free buddies of classes c..j-1.
 *
 * Crash safety: the whole block is stamped USED by the caller's owner first, the buddies'
 * headers are written USED by that owner too, and each buddy turns FREE only right before it
 * is pushed. A process killed anywhere in here leaves blocks that reclaim(owner) gives back
 * (the engine reclaims a dead client's streams); only a kill between a buddy's FREE store and
 * its push loses that one buddy.
 *
 * Walkability: the kept block's header (class c, release) is written after the buddies'
 * headers, so a walker that reads class c finds valid headers next; one that still reads the
 * stamp (class j) steps over the whole block.
 */
static void used_add(eng_arena_t *a, uint32_t c, int64_t d)
{
        eng_faa_u64(&a->hdr->cls[c].used_blocks, (uint64_t)d);
}

static void lf_split_claim(eng_arena_t *a, uint64_t blk, uint32_t j, uint32_t c, uint32_t owner)
{
        /* Counters follow the stamps, so that reclaiming a dead splitter's stamped blocks
         * leaves them exact. */
        struct blk_hdr *b = blk_at(a, blk);
        eng_store_relaxed_u64(&b->word, blk_word(j, BLK_USED, owner));
        used_add(a, j, 1);
        if (j == c)
                return;
        for (uint32_t s = j; s-- > c;) {
                struct blk_hdr *bd = blk_at(a, blk + cls_bytes(a, s));
                bd->bytes = cls_bytes(a, s);
                bd->next = 0;
                eng_store_relaxed_u64(&bd->word, blk_word(s, BLK_USED, owner));
                used_add(a, s, 1);
        }
        b->bytes = cls_bytes(a, c);
        b->next = 0;
        eng_store_release_u64(&b->word, blk_word(c, BLK_USED, owner));
        used_add(a, c, 1);
        used_add(a, j, -1);
        for (uint32_t s = j; s-- > c;) {
                uint64_t o = blk + cls_bytes(a, s);
                used_add(a, s, -1);
                eng_store_release_u64(&blk_at(a, o)->word, blk_word(s, BLK_FREE, 0));
                lf_push(a, s, o);
        }
}

struct frag {
        uint64_t off;
        uint32_t c;
};

static int frag_cmp(const void *x, const void *y)
{
        const struct frag *p = x, *q = y;
        return p->off < q->off ? -1 : p->off > q->off;
}

/*
 * Coalescing, on the failure path only. Pop every free block below the largest class (each
 * pop makes the block exclusively ours, exactly as an allocation would), merge buddy pairs
 * (a 2^k block at an offset that is a multiple of 2^(k+1) and the 2^k block right after it),
 * cascading upwards, then write each merged block's header (release) and push everything
 * back. Only pops and pushes touch shared state, so every invariant of the lists and of the
 * walk holds throughout: a walker that read the old, smaller header steps onto the old buddy
 * header, which we leave intact inside the merged block. Blocks freed meanwhile by others are
 * simply not merged this time. Returns true if anything merged.
 *
 * While a block sits in our private array its header says USED by the caller's owner: a
 * process killed mid-pass leaves blocks that reclaim(owner) gives back (the engine reclaims a
 * dead client's streams), instead of silently losing every small free block of the arena.
 * Merged blocks are rewritten FREE before they are pushed; a merged-away buddy's stale USED
 * header is interior to the merged block, which walkers step over.
 */
static bool lf_coalesce(eng_arena_t *a, uint32_t owner)
{
        size_t n = 0, cap = 1024;
        struct frag *v = malloc(cap * sizeof(*v));
        if (v == NULL)
                return false;
        for (uint32_t c = 0; c + 1 < a->nclasses; c++) {
                uint64_t b;
                while (lf_pop(a, c, &b)) {
                        /* Ours until pushed back: stamp it with the caller's owner, so that
                         * if this process dies mid-pass, reclaim(owner) returns it. */
                        eng_store_relaxed_u64(&blk_at(a, b)->word, blk_word(c, BLK_USED, owner));
                        used_add(a, c, 1);
                        if (n == cap) {
                                struct frag *w = realloc(v, 2 * cap * sizeof(*v));
                                if (w == NULL) {
                                        used_add(a, c, -1);
                                        eng_store_release_u64(&blk_at(a, b)->word,
                                                              blk_word(c, BLK_FREE, 0));
                                        lf_push(a, c, b);
                                        goto merge;
                                }
                                v = w;
                                cap *= 2;
                        }
                        v[n++] = (struct frag){.off = b, .c = c};
                }
        }
merge:
        qsort(v, n, sizeof(*v), frag_cmp);
        /* A forged list (a cycle, a link into a block popped already) can hand us a block twice,
         * or a piece that lies inside another: keep the first, drop the rest (they are off their
         * lists already, and their memory is the kept piece's). Merging them would run past the
         * pieces below and push one block twice. */
        size_t u = 0;
        for (size_t i = 0; i < n; i++) {
                if (u > 0 && v[i].off < v[u - 1].off + cls_bytes(a, v[u - 1].c)) {
                        used_add(a, v[i].c, -1);
                        continue;
                }
                v[u++] = v[i];
        }
        n = u;
        /* Keep the pieces: their headers end up inside merged blocks and are rewritten. */
        struct frag *orig = malloc((n ? n : 1) * sizeof(*v));
        if (orig == NULL) {
                for (size_t i = 0; i < n; i++) {
                        used_add(a, v[i].c, -1);
                        eng_store_release_u64(&blk_at(a, v[i].off)->word,
                                              blk_word(v[i].c, BLK_FREE, 0));
                        lf_push(a, v[i].c, v[i].off);
                }
                free(v);
                return false;
        }
        memcpy(orig, v, n * sizeof(*v));
        bool merged = false;
        size_t m = 0; /* v[0..m) is the merged prefix */
        for (size_t i = 0; i < n; i++) {
                v[m++] = v[i];
                while (m >= 2) {
                        struct frag *lo = &v[m - 2], *hi = &v[m - 1];
                        uint64_t sz = cls_bytes(a, lo->c);
                        if (lo->c != hi->c || lo->c + 1 >= a->nclasses ||
                            (lo->off & (2 * sz - 1)) || hi->off != lo->off + sz)
                                break;
                        lo->c++;
                        m--;
                        merged = true;
                }
        }
        size_t k = 0;
        for (size_t i = 0; i < m; i++) {
                struct blk_hdr *b = blk_at(a, v[i].off);
                uint64_t end = v[i].off + cls_bytes(a, v[i].c);
                b->bytes = cls_bytes(a, v[i].c);
                eng_store_release_u64(&b->word, blk_word(v[i].c, BLK_FREE, 0));
                if (k < n)
                        used_add(a, orig[k].c, -1); /* orig[k] is this block's first piece */
                /* The merged-away pieces' headers, now interior: stale FREE, so that a late
                 * free of an old offset is refused (-EALREADY) rather than honoured. */
                for (; k < n && orig[k].off < end; k++) {
                        if (orig[k].off == v[i].off)
                                continue;
                        eng_store_relaxed_u64(&blk_at(a, orig[k].off)->word,
                                              blk_word(orig[k].c, BLK_FREE, 0));
                        used_add(a, orig[k].c, -1);
                }
                lf_push(a, v[i].c, v[i].off);
        }
        free(orig);
        free(v);
        return merged;
}

int lf_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off)
{
        struct eng_arena_hdr *h = a->hdr;
        uint32_t c;
        int rc = class_for(a, len, &c);
        if (rc != 0)
                return rc;
        uint64_t blk;
        uint32_t j = c;
        /* Own class, then split a larger free block, then carve fresh space: splitting before
         * carving keeps the gap between the watermarks for records (stream opens). */
        for (; j < a->nclasses; j++) {
                if (lf_pop(a, j, &blk))
                        goto got;
        }
        if (lf_carve(a, &blk)) {
                j = a->nclasses - 1;
                goto got;
        }
        /* Enough bytes may be free in smaller pieces: merge buddies and look once more. */
        if (lf_coalesce(a, owner)) {
                for (j = c; j < a->nclasses; j++) {
                        if (lf_pop(a, j, &blk))
                                goto got;
                }
        }
        eng_faa_u64(&h->cls[c].failed, 1);
        return -ENOMEM;
got:
        lf_split_claim(a, blk, j, c, owner);
        eng_faa_u64(&h->cls[c].allocs, 1);
        *off = blk + ENG_ARENA_HDR_BYTES;
        return 0;
}

uint64_t lf_class_bytes(const eng_arena_t *a, uint64_t len)
{
        uint32_t c;
        if (class_for(a, len, &c) != 0)
                return 0;
        return cls_bytes(a, c) - ENG_ARENA_HDR_BYTES;
}

/*
 * Pop up to n blocks with one CAS: walk n links from the head we read, then swing the head
 * past them. The tag changes on every push and pop, so a successful CAS proves the list was
 * untouched between our read of the head and the CAS, hence every link we walked was the
 * list's (a block is only written by whoever popped it; a pusher writes its own block's link
 * before the CAS that publishes it). Links are bounds-checked before they are followed; one
 * that fails ends the walk and the CAS then cuts the list (head {empty, tag+1}) instead of
 * installing it. The walk reads n block headers that the consumer of those blocks is about
 * to write anyway.
 *
 * After the CAS each block is validated as in lf_pop and stamped before the next one is
 * looked at, so a block the walk met twice (a cycle) reads USED the second time. At the first
 * block that is not exactly FREE(c) we stop: neither it nor the blocks reached through its
 * link are used (they leak until a rebuild), and the list is cut.
 */
uint32_t lf_alloc_bulk(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *offs, uint32_t n)
{
        uint32_t c;
        if (n == 0 || class_for(a, len, &c) != 0)
                return 0;
        struct arena_class *k = &a->hdr->cls[c];
        uint64_t old = eng_load_acquire_u64(&k->head);
        uint32_t got;
        bool bad;
        for (;;) {
                uint32_t u = head_units(old);
                got = 0;
                bad = false;
                while (u != 0 && got < n) {
                        uint64_t off = units_to_off(u);
                        if (!lf_block_ok(a, off, c)) { /* after the head, as in lf_pop */
                                bad = true;
                                break;
                        }
                        offs[got++] = off;
                        u = (uint32_t)eng_load_relaxed_u64(&blk_at(a, off)->next);
                }
                if (got == 0 && !bad)
                        return 0;
                if (eng_cas_u64(&k->head, old, head_pack(bad ? 0 : u, head_tag(old) + 1), &old))
                        break;
        }
        if (bad) { /* the CAS was a cut */
                eng_faa_u64(&a->hdr->cuts, 1);
                arena_anomaly(a, 1);
        }
        /* Ours now (a kill right here loses them, like a kill between a pop and its stamp).
         * Counters before the stamps, as lf_split_claim: reclaiming a dead caller's stamped
         * blocks then leaves used_blocks exact. */
        eng_faa_u64(&k->free_blocks, 0 - (uint64_t)got);
        eng_faa_u64(&k->used_blocks, got);
        uint32_t kept = 0;
        for (; kept < got; kept++) {
                struct blk_hdr *b = blk_at(a, offs[kept]);
                /* Relaxed: ordered after the pushes by our CAS, as in lf_pop. */
                if (eng_load_relaxed_u64(&b->word) != blk_word(c, BLK_FREE, 0))
                        break;
                /* Release: the block changes hands; a walker that reads USED (acquire) sees it
                 * taken, and the caller's writes to the payload come after. */
                eng_store_release_u64(&b->word, blk_word(c, BLK_USED, owner));
                offs[kept] += ENG_ARENA_HDR_BYTES;
        }
        if (kept < got) {
                eng_faa_u64(&k->used_blocks, 0 - (uint64_t)(got - kept));
                arena_cut(a, &k->head);
        }
        eng_faa_u64(&k->allocs, kept);
        return kept;
}

/*
 * A free's header CAS failed: the word is no longer the USED word the free read. Nothing
 * changes a USED block's word but a free (and, after it, the next allocation's stamp), so
 * another free of this block came first: ours is a second free, whatever the word says now.
 * Retrying with the new word would free what the block has become since - the next owner's
 * allocation, if it was popped and stamped between our read and our CAS (SPIN found this:
 * docs/models/arena.pml, CODE_FREE_RETRY). -EALREADY for a block word, -EINVAL for a scribble.
 */
static int lf_lost_race(const eng_arena_t *a, uint64_t b, uint64_t w)
{
        return blk_magic(w) == BLK_MAGIC && lf_block_ok(a, b, blk_class(w)) ? -EALREADY : -EINVAL;
}

/* USED -> FREE by CAS as lf_release, but the push waits for lf_flush. */
int lf_free_later(eng_arena_t *a, eng_arena_batch_t *bt, uint64_t off)
{
        uint64_t b, w, bytes;
        int rc = lf_block_of(a, off, &b, &w, &bytes);
        if (rc != 0)
                return rc;
        if (blk_state(w) == BLK_FREE)
                return -EALREADY;
        if (blk_state(w) != BLK_USED)
                return -EINVAL;
        uint32_t c = blk_class(w);
        if (!eng_cas_u64(&blk_at(a, b)->word, w, blk_word(c, BLK_FREE, 0), &w))
                return lf_lost_race(a, b, w); /* no retry, as lf_release */
        bt->blk[bt->n++] = b | c;             /* blocks are 64-byte aligned */
        return 0;
}

/* Link each class's blocks of the batch privately (they are FREE and on no list: nobody else
 * writes them), then push each chain with one CAS, and the counters with one add each. */
void lf_flush(eng_arena_t *a, eng_arena_batch_t *bt)
{
        uint64_t first[ENG_ARENA_MAX_CLASSES] = {0}, last[ENG_ARENA_MAX_CLASSES] = {0};
        uint64_t cnt[ENG_ARENA_MAX_CLASSES] = {0};
        for (uint32_t i = 0; i < bt->n; i++) {
                uint32_t c = (uint32_t)(bt->blk[i] & 63u);
                uint64_t b = bt->blk[i] & ~(uint64_t)63u;
                if (!lf_geom_ok(a, b, c))
                        continue; /* cannot happen: lf_free_later stored it (batches are private) */
                if (cnt[c]++ == 0)
                        first[c] = b;
                else
                        eng_store_relaxed_u64(&blk_at(a, last[c])->next, off_to_units(b));
                last[c] = b;
        }
        bt->n = 0;
        for (uint32_t c = 0; c < a->nclasses; c++) {
                if (cnt[c] == 0)
                        continue;
                struct arena_class *k = &a->hdr->cls[c];
                uint64_t old = eng_load_relaxed_u64(&k->head);
                do {
                        eng_store_relaxed_u64(&blk_at(a, last[c])->next, head_units(old));
                        /* The CAS (full barrier) publishes the links and headers first. */
                } while (!eng_cas_u64(&k->head, old,
                                      head_pack(off_to_units(first[c]), head_tag(old) + 1), &old));
                eng_faa_u64(&k->used_blocks, (uint64_t) - (int64_t)cnt[c]);
                eng_faa_u64(&k->frees, cnt[c]);
                eng_faa_u64(&k->free_blocks, cnt[c]);
        }
}

/* lf_block_of, inlined where it is on every message's path (lf_lookup). */
static inline __attribute__((always_inline)) int
lf_block_get(const eng_arena_t *a, uint64_t off, uint64_t *blk, uint64_t *word, uint64_t *bytes)
{
        if (off < ENG_ARENA_HDR_BYTES || (off & 63u))
                return -EINVAL;
        uint64_t b = off - ENG_ARENA_HDR_BYTES;
        if (b < a->rec_base || b >= a->top)
                return -EINVAL;
        uint64_t w = eng_load_acquire_u64(&blk_at(a, b)->word);
        if (blk_magic(w) != BLK_MAGIC || !lf_block_ok(a, b, blk_class(w)))
                return -EINVAL;
        *blk = b;
        *word = w;
        *bytes = cls_bytes(a, blk_class(w)); /* of the class just validated, from the same word */
        return 0;
}

int lf_block_of(const eng_arena_t *a, uint64_t off, uint64_t *blk, uint64_t *word, uint64_t *bytes)
{
        return lf_block_get(a, off, blk, word, bytes);
}

int lf_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner, uint64_t *cap)
{
        uint64_t b, w, bytes;
        if (lf_block_get(a, off, &b, &w, &bytes) != 0)
                return -EINVAL;
        return arena_lookup_copy(a, off, w, bytes, ptr, owner, cap);
}

/* USED -> FREE by CAS (a second free of the same block finds FREE and is refused). One CAS
 * from the word the caller read, never a retry: see lf_lost_race. */
int lf_release(eng_arena_t *a, uint64_t b, uint64_t w, uint32_t owner_must)
{
        if (blk_state(w) == BLK_FREE)
                return -EALREADY;
        if (blk_state(w) != BLK_USED || (owner_must && blk_owner(w) != owner_must))
                return -EINVAL;
        uint32_t c = blk_class(w);
        if (!eng_cas_u64(&blk_at(a, b)->word, w, blk_word(c, BLK_FREE, 0), &w))
                return lf_lost_race(a, b, w);
        eng_faa_u64(&a->hdr->cls[c].used_blocks, (uint64_t)-1);
        eng_faa_u64(&a->hdr->cls[c].frees, 1);
        lf_push(a, c, b);
        return 0;
}

int lf_free(eng_arena_t *a, uint64_t off)
{
        uint64_t b, w, bytes;
        int rc = lf_block_of(a, off, &b, &w, &bytes);
        if (rc != 0)
                return rc;
        return lf_release(a, b, w, 0);
}

/* Visit every block header of the buffer area (see walkability above). */
typedef int (*lf_visit_fn)(eng_arena_t *a, uint64_t blk, uint64_t word, void *arg);

#define WALK_LOOKS 3 /* fresh looks at a superblock before a tolerant walk abandons it */

/* The blocks of the superblock [start, end), by their headers; -EUCLEAN at a bad one. Every
 * step moves at least 2^min forward and stays inside the superblock: it ends. */
static int lf_walk_sb(const eng_arena_t *a, uint64_t start, uint64_t end, lf_visit_fn fn, void *arg)
{
        for (uint64_t o = start; o < end;) {
                /* Acquire: pairs with the release that wrote this header (a split, a stamp), so
                 * the headers it implies further on are visible too (see walkability). */
                uint64_t w = eng_load_acquire_u64(&blk_at(a, o)->word);
                uint32_t c = blk_class(w);
                if (blk_magic(w) != BLK_MAGIC || c >= a->nclasses || (o & (cls_bytes(a, c) - 1)) ||
                    o + cls_bytes(a, c) > end)
                        return -EUCLEAN; /* corrupted header: never step blindly */
                int rc = fn((eng_arena_t *)a, o, w, arg);
                if (rc != 0)
                        return rc;
                o += cls_bytes(a, c);
        }
        return 0;
}

/*
 * Walk the superblocks of [bb, top), top down. skipped == NULL: strict, the first bad header
 * ends the walk with -EUCLEAN (the consistency check). Otherwise tolerant: a superblock with a
 * bad header is looked at afresh a few times (a walk concurrent with coalescing can step onto a
 * merged-away header that the merged block's new owner has since overwritten), then abandoned
 * and counted in *skipped, and the walk goes on with the next one. fn must then be idempotent
 * (reclaim's is: a block it freed is no longer USED by the owner).
 */
static int lf_walk(const eng_arena_t *a, uint64_t bb, lf_visit_fn fn, void *arg, uint64_t *unborn,
                   uint64_t *skipped)
{
        uint64_t sb = sb_bytes(a);
        if (bb < a->rec_base || bb > a->top)
                bb = a->top; /* scribbled: walk nothing rather than the records or beyond */
        for (uint64_t s = a->top; s >= bb + sb; s -= sb) {
                uint64_t start = s - sb;
                uint64_t w = eng_load_acquire_u64(&blk_at(a, start)->word);
                if (w == 0) {
                        if (unborn)
                                (*unborn)++;
                        continue;
                }
                for (int look = 0;; look++) {
                        int rc = lf_walk_sb(a, start, s, fn, arg);
                        if (rc == 0)
                                break;
                        if (skipped == NULL || rc != -EUCLEAN)
                                return rc;
                        if (look + 1 == WALK_LOOKS) {
                                (*skipped)++;
                                break;
                        }
                }
        }
        return 0;
}

struct owners_arg {
        bool (*owner_live)(uint32_t owner, void *ctx);
        void *ctx;
        uint64_t blk;
        uint32_t owner;
};

static int owner_one(eng_arena_t *a, uint64_t blk, uint64_t w, void *arg)
{
        (void)a;
        struct owners_arg *o = arg;
        if (blk_state(w) != BLK_USED ||
            (o->owner_live != NULL && o->owner_live(blk_owner(w), o->ctx)))
                return 0;
        o->blk = blk;
        o->owner = blk_owner(w);
        return -ESRCH;
}

/* Every USED block belongs to an owner the caller says is live (strict walk). */
int lf_check_owners(const eng_arena_t *a, bool (*owner_live)(uint32_t, void *), void *ctx,
                    char *why, size_t whylen)
{
        struct owners_arg o = {.owner_live = owner_live, .ctx = ctx};
        uint64_t bb = units_to_off(marks_buf_bottom(eng_load_acquire_u64(&a->hdr->marks)));
        int rc = lf_walk(a, bb, owner_one, &o, NULL, NULL);
        if (rc == -ESRCH)
                snprintf(why, whylen, "block at %llu is used by owner %u, which is not live",
                         (unsigned long long)o.blk, o.owner);
        else if (rc != 0)
                snprintf(why, whylen, "buffer area walk hit a bad header");
        return rc == 0 ? 0 : -EUCLEAN;
}

struct reclaim_arg {
        uint32_t owner;
        int64_t n;
};

static int reclaim_one(eng_arena_t *a, uint64_t blk, uint64_t w, void *arg)
{
        struct reclaim_arg *r = arg;
        if (blk_state(w) == BLK_USED && blk_owner(w) == r->owner &&
            lf_release(a, blk, w, r->owner) == 0)
                r->n++;
        return 0;
}

/* Tolerant walk from this view's idea of buf_bottom (a raised shared watermark cannot hide
 * superblocks from it); superblocks abandoned at a bad header count in the view. */
int64_t lf_reclaim(eng_arena_t *a, uint32_t owner)
{
        struct reclaim_arg r = {.owner = owner, .n = 0};
        uint64_t skipped = 0;
        lf_walk(a, lf_bottom_note(a), reclaim_one, &r, NULL, &skipped);
        if (skipped != 0) {
                eng_faa_u64(&a->walk_skips, skipped); /* a counter of the view */
                arena_anomaly(a, skipped);
        }
        return r.n;
}

void lf_stats(const eng_arena_t *a, eng_arena_stats_t *st)
{
        const struct eng_arena_hdr *h = a->hdr;
        st->nclasses = a->nclasses;
        for (uint32_t c = 0; c < a->nclasses; c++) {
                struct arena_class *k = (struct arena_class *)&h->cls[c];
                eng_arena_class_stats_t *cs = &st->cls[c];
                cs->block_bytes = cls_bytes(a, c);
                cs->used_blocks = eng_load_relaxed_u64(&k->used_blocks);
                cs->free_blocks = eng_load_relaxed_u64(&k->free_blocks);
                cs->allocs = eng_load_relaxed_u64(&k->allocs);
                cs->frees = eng_load_relaxed_u64(&k->frees);
                cs->failed = eng_load_relaxed_u64(&k->failed);
                st->buf_used_blocks += cs->used_blocks;
                st->buf_used_bytes += cs->used_blocks * cs->block_bytes;
                st->buf_free_blocks += cs->free_blocks;
                st->buf_free_bytes += cs->free_blocks * cs->block_bytes;
                st->failed += cs->failed;
        }
}

struct check_arg {
        uint64_t used[ENG_ARENA_MAX_CLASSES], freed[ENG_ARENA_MAX_CLASSES];
        uint64_t bytes;
};

static int check_one(eng_arena_t *a, uint64_t blk, uint64_t w, void *arg)
{
        (void)a;
        (void)blk;
        struct check_arg *ck = arg;
        uint32_t c = blk_class(w);
        if (blk_state(w) == BLK_USED)
                ck->used[c]++;
        else if (blk_state(w) == BLK_FREE)
                ck->freed[c]++;
        else
                return -EUCLEAN;
        ck->bytes += cls_bytes(a, c);
        return 0;
}

int lf_check(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen)
{
        const struct eng_arena_hdr *h = a->hdr;
        struct check_arg ck;
        memset(&ck, 0, sizeof(ck));
        uint64_t unborn = 0;
        uint64_t bb = units_to_off(marks_buf_bottom(eng_load_acquire_u64(&h->marks)));
        if (lf_walk(a, bb, check_one, &ck, &unborn, NULL) != 0) {
                snprintf(why, whylen, "buffer area walk hit a bad header");
                return -EUCLEAN;
        }
        if (ck.bytes + unborn * sb_bytes(a) != a->top - bb || (leaked == NULL && unborn != 0)) {
                snprintf(why, whylen, "walked %llu bytes of %llu (%llu unborn superblocks)",
                         (unsigned long long)ck.bytes, (unsigned long long)(a->top - bb),
                         (unsigned long long)unborn);
                return -EUCLEAN;
        }
        if (leaked)
                *leaked += unborn * sb_bytes(a);
        /* Each list walk is bounded by the free blocks the walk found (at most the blocks
         * that fit in the region), whatever the links say. */
        for (uint32_t c = 0; c < a->nclasses; c++) {
                uint64_t listed = 0;
                for (uint32_t u = head_units(h->cls[c].head); u != 0;
                     u = (uint32_t)blk_at(a, units_to_off(u))->next) {
                        uint64_t o = units_to_off(u);
                        if (!lf_block_in(a, bb, o, c) ||
                            blk_at(a, o)->word != blk_word(c, BLK_FREE, 0) ||
                            ++listed > ck.freed[c]) {
                                snprintf(why, whylen, "class %u free list is corrupt", c);
                                return -EUCLEAN;
                        }
                }
                /* A free block on no list can only come from a process killed between
                 * writing a buddy's header and pushing it: nobody's, lost, not corrupt. */
                bool exact = listed == ck.freed[c] && listed == h->cls[c].free_blocks &&
                             ck.used[c] == h->cls[c].used_blocks;
                if (leaked != NULL && listed <= ck.freed[c]) {
                        *leaked += (ck.freed[c] - listed) * cls_bytes(a, c);
                        exact = true;
                }
                if (!exact) {
                        snprintf(why, whylen,
                                 "class %u: walked %llu used/%llu free, listed %llu, counters "
                                 "%llu/%llu",
                                 c, (unsigned long long)ck.used[c], (unsigned long long)ck.freed[c],
                                 (unsigned long long)listed,
                                 (unsigned long long)h->cls[c].used_blocks,
                                 (unsigned long long)h->cls[c].free_blocks);
                        return -EUCLEAN;
                }
        }
        return 0;
}

/* ---- healing and rebuilding --------------------------------------------------------- */

/* Does the first header word of a superblock say it was carved (a block header)? Relaxed: a
 * hint for heal and rebuild; a superblock carved but not yet stamped reads unborn, which only
 * makes a probe stop early. */
static bool lf_sb_born(const eng_arena_t *a, uint64_t start)
{
        uint64_t w = eng_load_relaxed_u64(&blk_at(a, start)->word);
        uint32_t st = blk_state(w);
        return blk_magic(w) == BLK_MAGIC && (st == BLK_FREE || st == BLK_USED) &&
               blk_class(w) < a->nclasses;
}

/* Is any superblock in [lo, hi) carved? */
bool lf_born_between(const eng_arena_t *a, uint64_t lo, uint64_t hi)
{
        uint64_t sb = sb_bytes(a);
        if (hi > a->top)
                hi = a->top;
        for (uint64_t s = lo; s + sb <= hi; s += sb)
                if (lf_sb_born(a, s))
                        return true;
        return false;
}

/*
 * Extend a buf_bottom this view knows down over superblocks right below it that were carved
 * (by other processes since this view last looked): the gap below the real buf_bottom is all
 * zeros, so the first unborn superblock ends the run. Never below floor (the record top).
 */
uint64_t lf_bottom_probe(const eng_arena_t *a, uint64_t low, uint64_t floor)
{
        uint64_t sb = sb_bytes(a);
        if (low > a->top || (low & (sb - 1)) != 0)
                return low;
        if (floor < a->rec_base)
                floor = a->rec_base;
        while (low >= sb && low - sb >= floor && lf_sb_born(a, low - sb))
                low -= sb;
        return low;
}

struct rb_state {
        const eng_arena_rebuild_cfg_t *cfg;
        eng_arena_rebuild_report_t *rep;
        uint64_t head[ENG_ARENA_MAX_CLASSES]; /* fresh chains, block offsets (0: empty) */
        uint64_t nfree[ENG_ARENA_MAX_CLASSES], nused[ENG_ARENA_MAX_CLASSES];
};

static bool rb_owner_live(const struct rb_state *r, uint32_t owner)
{
        return r->cfg != NULL && r->cfg->owner_live != NULL &&
               r->cfg->owner_live(owner, r->cfg->ctx);
}

/* Is w, read at p, a well-formed USED header of a block that fits in the superblock? */
static bool rb_used_block(const eng_arena_t *a, uint64_t p, uint64_t end, uint64_t w, uint32_t *c)
{
        uint32_t k = blk_class(w);
        if (blk_magic(w) != BLK_MAGIC || blk_state(w) != BLK_USED || k >= a->nclasses ||
            (p & (cls_bytes(a, k) - 1)) || p + cls_bytes(a, k) > end)
                return false;
        *c = k;
        return true;
}

/*
 * [q, end) is free: cut it into maximal aligned buddy blocks, low to high (the largest class
 * whose alignment q has and that fits), each written FREE with a header and chained on its
 * class's fresh list. The header words at the other 2^min steps inside each block are zeroed,
 * so no stale header (a freed owner's USED one) is left for a later rebuild to find.
 */
static void rb_free_run(eng_arena_t *a, struct rb_state *r, uint64_t q, uint64_t end)
{
        uint64_t step = cls_bytes(a, 0);
        while (q < end) {
                uint32_t k = a->nclasses - 1;
                while (k > 0 && ((q & (cls_bytes(a, k) - 1)) || q + cls_bytes(a, k) > end))
                        k--;
                uint64_t n = cls_bytes(a, k);
                for (uint64_t p = q + step; p < q + n; p += step)
                        eng_store_relaxed_u64(&blk_at(a, p)->word, 0);
                struct blk_hdr *b = blk_at(a, q);
                eng_store_relaxed_u64(&b->next, off_to_units(r->head[k]));
                eng_store_relaxed_u64(&b->bytes, n);
                eng_store_relaxed_u64(&b->word, blk_word(k, BLK_FREE, 0));
                r->head[k] = q;
                r->nfree[k]++;
                q += n;
        }
}

/*
 * Scan the superblock at start: at every 2^min step a well-formed USED header of a live owner
 * is a kept block (left untouched, header and payload; the scan resumes after it), anything
 * else is free space. USED headers of owners that are not live are counted as freed (once per
 * block: headers inside a block already counted are not). write: rebuild the free space (see
 * rb_free_run) and count what is kept. Returns whether anything is kept.
 */
static bool rb_scan_sb(eng_arena_t *a, struct rb_state *r, uint64_t start, bool write)
{
        uint64_t end = start + sb_bytes(a), step = cls_bytes(a, 0);
        uint64_t run = start, counted_to = start;
        bool kept = false;
        for (uint64_t p = start; p < end;) {
                uint64_t w = eng_load_relaxed_u64(&blk_at(a, p)->word);
                uint32_t c;
                if (rb_used_block(a, p, end, w, &c)) {
                        if (rb_owner_live(r, blk_owner(w))) {
                                kept = true;
                                if (write) {
                                        rb_free_run(a, r, run, p);
                                        r->nused[c]++;
                                        r->rep->kept_blocks++;
                                        r->rep->kept_bytes += cls_bytes(a, c);
                                }
                                p += cls_bytes(a, c);
                                run = p;
                                continue;
                        }
                        if (p >= counted_to) {
                                r->rep->freed_blocks++;
                                r->rep->freed_bytes += cls_bytes(a, c);
                                counted_to = p + cls_bytes(a, c);
                        }
                }
                p += step;
        }
        if (write)
                rb_free_run(a, r, run, end);
        return kept;
}

/*
 * The buffer part of eng_arena_rebuild (see arena.h), for records below rt. buf_bottom is not
 * trusted: every superblock from top down to the first boundary at or above rt is scanned.
 * Quiescent by precondition: here and in rb_*, relaxed loads and stores (single-copy atomic, so
 * a scribbler cannot tear them), published by eng_arena_rebuild's release of the watermarks.
 * Pass 1, from the bottom up, finds the lowest superblock with a kept block (*bb_new; top if
 * none): those below it go back to the gap (the caller zeroes them) and their freed blocks are
 * counted. Pass 2 rebuilds every superblock from there to top. Then the heads and counters.
 * Bounded by the geometry whatever the segment holds; writes only inside [*bb_new, top).
 */
void lf_rebuild_buffers(eng_arena_t *a, uint64_t rt, const eng_arena_rebuild_cfg_t *cfg,
                        eng_arena_rebuild_report_t *rep, uint64_t *bb_new)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t sb = sb_bytes(a);
        struct rb_state r;
        memset(&r, 0, sizeof r);
        r.cfg = cfg;
        r.rep = rep;
        uint64_t lo = (rt + sb - 1) & ~(sb - 1), bottom = a->top;
        for (uint64_t s = lo; s + sb <= a->top; s += sb) {
                bool born = eng_load_relaxed_u64(&blk_at(a, s)->word) != 0;
                uint64_t fb = rep->freed_blocks, fy = rep->freed_bytes;
                if (rb_scan_sb(a, &r, s, false)) {
                        rep->freed_blocks = fb; /* pass 2 counts this one */
                        rep->freed_bytes = fy;
                        bottom = s;
                        break;
                }
                if (born)
                        rep->gap_bytes += sb;
        }
        for (uint64_t s = bottom; s + sb <= a->top; s += sb)
                rb_scan_sb(a, &r, s, true);
        for (uint32_t c = 0; c < a->nclasses; c++) {
                struct arena_class *k = &h->cls[c];
                uint64_t old = eng_load_relaxed_u64(&k->head);
                eng_store_relaxed_u64(&k->head,
                                      head_pack(off_to_units(r.head[c]), head_tag(old) + 1));
                eng_store_relaxed_u64(&k->used_blocks, r.nused[c]);
                eng_store_relaxed_u64(&k->free_blocks, r.nfree[c]);
        }
        *bb_new = bottom;
}
