/*
 * arena.h - the public interface of alloc/: an allocator living inside a caller-provided
 * region (a shared-memory segment) that several processes map at different addresses.
 *
 * Layout of the region (offsets from its start; nothing stored in it is a pointer):
 *
 *   0            rec_base                                                   top   size
 *   | arena hdr  | record slots ->   ....free gap....   <- buffer blocks    |     |
 *                              rec_top             buf_bottom
 *
 * Both watermarks (rec_top, buf_bottom) live in one 64-bit word moved by CAS, so either side
 * grows without a lock and they can never cross.
 *
 * Two implementations behind one API, chosen when the region is formatted:
 *   ENG_ARENA_LOCKFREE - power-of-two size classes, a Treiber free list per class
 *                        ({offset, ABA tag} in one 64-bit word), records from a CAS free list;
 *   ENG_ARENA_MUTEX    - the baseline: one process-shared robust mutex around an address-ordered
 *                        first-fit free list with coalescing (the seed's allocator).
 * Nothing above alloc/ needs to know which one it got.
 *
 * Handles are payload offsets (uint64_t, from the region start); 0 is never a valid handle.
 * Every offset handed in is validated: foreign, misaligned and double frees are reported
 * (-EINVAL / -EALREADY) and never touch the free lists.
 *
 * Errors: functions return 0 or -errno. Expected outcomes: -ENOMEM when the arena is full
 * (not a fault: callers wait or retry), -E2BIG when a request is larger than the largest block.
 *
 * Ownership: every block and record carries a 32-bit owner id (0 = none). eng_arena_reclaim()
 * frees everything an owner holds; the caller guarantees the owner makes no further calls
 * (it is dead, or the stream is closed).
 *
 * Damage (lock-free arena): any process that maps the region can write any byte of it. The
 * allocator never touches memory outside the region (every bound comes from the private view),
 * never loops forever on what it reads, and contains damage: a free list found corrupt is cut
 * (emptied; what was on it leaks until a rebuild), a carve into space that is not unborn is
 * refused, a walk abandons a superblock with a bad header and goes on with the next. Each such
 * event counts in the view's anomalies (and cuts in the shared counter eng_arena_stats_t.cuts).
 * eng_arena_heal() restores the header and the watermarks from the view's private knowledge;
 * eng_arena_rebuild() makes the whole arena consistent again while nobody honest uses it.
 */
#ifndef ENG_ARENA_H
#define ENG_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the shared library exports: it is built with -fvisibility=hidden, so a symbol without
 * this mark stays inside it. */
#ifndef ENG_API
#if defined(__GNUC__)
#define ENG_API __attribute__((visibility("default")))
#else
#define ENG_API
#endif
#endif

#define ENG_ARENA_MAX_CLASSES 16
#define ENG_ARENA_HDR_BYTES   64u /* per-block and per-record header; payload follows it */

typedef enum eng_arena_kind {
        ENG_ARENA_LOCKFREE = 1,
        ENG_ARENA_MUTEX = 2,
} eng_arena_kind_t;

typedef struct eng_arena_cfg {
        eng_arena_kind_t kind;
        uint32_t record_size;     /* bytes of one record body (rounded up to 64) */
        uint32_t min_class_shift; /* smallest block 2^min (>= 12 recommended, >= 7 allowed) */
        uint32_t max_class_shift; /* largest block 2^max (<= 30); also the superblock size */
} eng_arena_cfg_t;

struct eng_arena_hdr;

/* A process-local view of an arena. Copyable; holds no resources. */
typedef struct eng_arena {
        unsigned char *base;
        uint64_t size;
        struct eng_arena_hdr *hdr;
        /* Private copies of the immutable geometry, taken at format/attach: every bound the
         * allocator checks comes from here, never from the shared header a peer could
         * scribble on, so a corrupted header cannot make us touch memory outside the region. */
        eng_arena_kind_t kind;
        uint32_t min_shift, max_shift, nclasses;
        uint64_t rec_base, rec_stride, top, rec_slots_max;
        /*
         * What this view has seen of the shared state, for eng_arena_heal/_rebuild and for the
         * caller (each copy of a view tracks its own from the moment it is copied). Written
         * through the atomic helpers: threads may share one view. Read with the accessors.
         */
        uint64_t anomalies;      /* every anomaly this view met: list cuts, refused carves,
                                  * superblocks a walk abandoned, insane watermarks */
        uint64_t walk_skips;     /* superblocks a walk (reclaim) abandoned at a bad header */
        uint64_t rec_top_carved; /* highest record top this view carved itself (0: none) */
        uint64_t rec_top_seen;   /* highest sane record top this view has read */
        uint64_t buf_bottom_low; /* lowest sane buf_bottom this view has read or carved */
} eng_arena_t;

typedef struct eng_arena_class_stats {
        uint64_t block_bytes; /* size of one block of the class (header included) */
        uint64_t used_blocks;
        uint64_t free_blocks;
        uint64_t allocs, frees, failed;
} eng_arena_class_stats_t;

typedef struct eng_arena_stats {
        eng_arena_kind_t kind;
        uint64_t size, rec_base, top;
        uint64_t rec_top, buf_bottom; /* the two watermarks */
        uint64_t rec_stride;          /* bytes per record slot, header included */
        uint64_t rec_used, rec_free;  /* record slots in use / on the free list */
        uint64_t buf_used_blocks, buf_used_bytes;
        uint64_t buf_free_blocks, buf_free_bytes;
        uint64_t failed; /* failed buffer allocations (ENOMEM) */
        uint64_t bad_frees;
        uint64_t cuts;     /* free lists found corrupt and cut, since format or the last rebuild */
        uint32_t nclasses; /* lock-free only; 0 for the mutex arena */
        eng_arena_class_stats_t cls[ENG_ARENA_MAX_CLASSES];
} eng_arena_stats_t;

/* Format [base, base+size) as a new arena. base must be 64-byte aligned. Not concurrent. */
ENG_API int eng_arena_format(eng_arena_t *a, void *base, uint64_t size, const eng_arena_cfg_t *cfg);

/* Attach to an arena formatted by another process (validates the header). */
ENG_API int eng_arena_attach(eng_arena_t *a, void *base, uint64_t size);

ENG_API eng_arena_kind_t eng_arena_kind(const eng_arena_t *a);
ENG_API const char *eng_arena_kind_name(eng_arena_kind_t k);

/* Buffers. *off receives the payload offset; capacity is >= len. */
ENG_API int eng_arena_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off);
ENG_API int eng_arena_free(eng_arena_t *a, uint64_t off);
/* Usable bytes of a live block, 0 if off is not a live block. */
ENG_API uint64_t eng_arena_capacity(const eng_arena_t *a, uint64_t off);
/* Owner of a live block (0 if off is not a live block). */
ENG_API uint32_t eng_arena_owner(const eng_arena_t *a, uint64_t off);
/*
 * Everything a receiver needs to know about a handle, from one look at its block's header
 * (the word is read once, validated, and only the copies are returned): 0 if off is a live
 * (allocated) block, with *ptr its payload (inside the region for *cap bytes), *owner its
 * owner and *cap its usable bytes; -EINVAL otherwise (nothing written). Any of ptr, owner, cap
 * may be NULL. eng_arena_owner and eng_arena_capacity are this, one field each; a caller that
 * needs two of them (owner and capacity, then the pointer) asks once.
 */
ENG_API int eng_arena_lookup(const eng_arena_t *a, uint64_t off, void **ptr, uint32_t *owner,
                             uint64_t *cap);
/* Largest request eng_arena_alloc can ever satisfy. */
ENG_API uint64_t eng_arena_max_alloc(const eng_arena_t *a);

/*
 * Batches, for hot paths (engine/ uses them per stream and per worker). On the mutex arena
 * they do the plain operations one at a time, so callers need not care which arena they have.
 *
 * eng_arena_alloc_bulk: up to n blocks of the class that serves len, taken off that class's
 * free list with one CAS and stamped USED(owner), exactly as n allocations would leave them
 * (reclaim(owner) frees them if the caller dies). Only blocks already on that list: it never
 * splits or carves, and returns 0 when the list is empty (or on the mutex arena, or for owner
 * 0): the caller then uses eng_arena_alloc. offs[] receives payload offsets.
 *
 * eng_arena_free_later: the checks and return values of eng_arena_free, and the block is
 * FREE at once (a second free is refused), but it goes back onto its free list only at
 * eng_arena_flush, with one CAS per class for the whole batch; a full batch flushes itself.
 * Until the flush, the block is free but unlisted and the statistics still count it used:
 * flush before the arena is checked or a caller waits for space. A process killed with an
 * unflushed batch loses those blocks (FREE, owner 0: reclaim cannot find them) until a
 * rebuild; use it where that is acceptable (engine/: the server's workers).
 */
#define ENG_ARENA_BATCH 64
typedef struct eng_arena_batch {
        uint32_t n;
        uint64_t blk[ENG_ARENA_BATCH]; /* block offset | class */
} eng_arena_batch_t;

ENG_API uint32_t eng_arena_alloc_bulk(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *offs,
                                      uint32_t n);
ENG_API int eng_arena_free_later(eng_arena_t *a, eng_arena_batch_t *b, uint64_t off);
ENG_API void eng_arena_flush(eng_arena_t *a, eng_arena_batch_t *b);
/* Usable bytes of the block a request of len bytes gets (0 if none can serve it). The mutex
 * arena carves to size: there it is a lower bound (len itself, 0 for len 0). */
ENG_API uint64_t eng_arena_class_bytes(const eng_arena_t *a, uint64_t len);

/* Pointer to [off, off+len) if it lies inside the region, else NULL. */
ENG_API void *eng_arena_ptr(const eng_arena_t *a, uint64_t off, uint64_t len);

/* Records: fixed-size slots; *off receives the body offset. */
ENG_API int eng_arena_rec_alloc(eng_arena_t *a, uint32_t owner, uint64_t *off);
ENG_API int eng_arena_rec_free(eng_arena_t *a, uint64_t off);
/* Slot index of a record body offset (-1 if not a record slot) and its inverse. */
ENG_API int64_t eng_arena_rec_index(const eng_arena_t *a, uint64_t off);
ENG_API uint64_t eng_arena_rec_offset(const eng_arena_t *a, uint64_t index);
/* Number of slots ever carved (slots [0, n) may be inspected). */
/* Slot index as its header says: 1 allocated, 0 free or never carved, -1 not a record's
 * header (damage) or out of range. For tools; the owner of a record knows without asking. */
ENG_API int eng_arena_rec_in_use(const eng_arena_t *a, uint64_t index);
ENG_API uint64_t eng_arena_rec_slots(const eng_arena_t *a);
/* Bytes per record slot (header included). */
ENG_API uint64_t eng_arena_rec_stride(const eng_arena_t *a);
/* Largest number of slots that could ever exist in this arena. */
ENG_API uint64_t eng_arena_rec_max_slots(const eng_arena_t *a);
/*
 * For the process that carves record slots (the server), cheaply (two shared words): how many
 * slots the record free list holds (its counter: a hint), and how many bytes would be left for
 * buffers if one more slot were carved from the gap (the buffer area plus the gap after the
 * carve; 0 if that is not possible or the watermarks are insane).
 */
ENG_API void eng_arena_rec_room(const eng_arena_t *a, uint64_t *free_slots, uint64_t *buf_room);
/* The end of the area blocks can occupy (the region's size rounded to whole superblocks). */
ENG_API uint64_t eng_arena_top(const eng_arena_t *a);

/*
 * Free every buffer block owned by owner; returns the number freed (>= 0) or -errno. On the
 * lock-free arena a superblock whose walk meets a bad header (a scribble) is abandoned from
 * there on and counted (eng_arena_walk_skips, eng_arena_anomalies); the walk goes on with the
 * next superblock, so the owner's blocks everywhere else are still freed.
 */
ENG_API int64_t eng_arena_reclaim(eng_arena_t *a, uint32_t owner);

ENG_API void eng_arena_stats(const eng_arena_t *a, eng_arena_stats_t *st);

/*
 * Quiescent consistency check (no concurrent calls): walks the records, the buffer area and
 * every free list and verifies that they account for every byte of the region exactly once.
 * Returns 0 if consistent, else -EUCLEAN with a reason in why (if non-NULL). Strict: the first
 * bad header or link fails it. It (and eng_arena_check_leaks, eng_arena_stats) terminates
 * whatever the region holds: walks step forward by validated sizes, list walks are bounded by
 * the blocks the walk found.
 */
ENG_API int eng_arena_check(const eng_arena_t *a, char *why, size_t whylen);

/*
 * The same walk, tolerating what a process SIGKILLed inside an allocation can leave behind:
 * a superblock carved but not yet split, a buddy whose header was written but which was not
 * yet pushed, a record slot carved but not yet stamped, blocks a bulk allocation popped but
 * had not stamped yet, and the unflushed blocks of a free_later batch (all: nobody's, lost
 * until a rebuild; their bytes go to *leaked), and counters off by the operations that were in
 * flight. Any corruption of the lists still fails; the blocks a cut list left behind (free, on
 * no list) count as leaked. The mutex arena repairs itself at the next lock, so it never leaks.
 */
ENG_API int eng_arena_check_leaks(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen);

/*
 * A word that changes on every buffer free, for callers that wait for space: read it, retry
 * the allocation, and if it still fails sleep until the word changes (engine/ does that with
 * a futex). eng_arena_waiters() is the count of such sleepers; free() wakes them.
 */
ENG_API uint32_t *eng_arena_free_word(const eng_arena_t *a);
ENG_API uint32_t *eng_arena_waiters_word(const eng_arena_t *a);

/* ---- damage: counting, healing, rebuilding ------------------------------------------- */

/* This view's counters (see eng_arena_t): anomalies met, superblocks walks abandoned. */
ENG_API uint64_t eng_arena_anomalies(const eng_arena_t *a);
ENG_API uint64_t eng_arena_walk_skips(const eng_arena_t *a);

/*
 * eng_arena_heal: put back what this view knows better than the shared header. Safe to call at
 * any time, concurrently with allocations (the server calls it when it suspects damage).
 *   ENG_ARENA_HEALED_HEADER: line 0 of the arena header (magic, version, kind, class shifts,
 *     size, record base and stride, top) and the slot count, from the private geometry; the
 *     magic is written last (release), so an attacher that sees it sees the rest.
 *   ENG_ARENA_HEALED_MARKS (lock-free only): the watermarks, if they are insane, or buf_bottom
 *     is above the lowest this view has seen (honest carves only move it down) with carved
 *     superblocks in between, or - for a view that has carved record slots - rec_top differs
 *     from the top it carved. They are put back to {the record top this view carved (else the
 *     last sane one it read), the lowest buf_bottom it has seen, extended down over carved
 *     superblocks right below it (carves by other processes since this view last looked)}.
 *     A raised buf_bottom with nothing carved below it (a rebuild through another view) is
 *     adopted instead.
 * Returns the mask of what it restored (0: nothing needed), or -EINVAL; what (if non-NULL)
 * receives a description.
 *
 * Limits: a sane-looking *lower* buf_bottom (or higher rec_top) cannot be told from a real carve
 * and stays; the unborn superblocks it exposes read as unborn to carves and walks, and only a
 * rebuild gives them back. The record-top rule assumes one process (the server) carves all
 * record slots through this view: a view that carved some slots while other views carved more
 * would lower rec_top under their slots. Use it on the carving view only.
 */
#define ENG_ARENA_HEALED_HEADER 0x1
#define ENG_ARENA_HEALED_MARKS  0x2
ENG_API int eng_arena_heal(eng_arena_t *a, char *what, size_t whatlen);

/* What the caller knows to be in use; NULL callbacks (or a NULL cfg) mean "nothing is". */
typedef struct eng_arena_rebuild_cfg {
        bool (*rec_live)(uint64_t slot_index, void *ctx); /* record slot still in use */
        bool (*owner_live)(uint32_t owner, void *ctx);    /* buffer owner still alive */
        void *ctx;
} eng_arena_rebuild_cfg_t;

typedef struct eng_arena_rebuild_report {
        bool was_consistent;   /* eng_arena_check passed on entry */
        int healed;            /* the header mask eng_arena_heal would return */
        uint64_t kept_blocks;  /* USED blocks of live owners, kept as they were */
        uint64_t kept_bytes;   /* their bytes, headers included */
        uint64_t freed_blocks; /* USED blocks of owners that are not live: freed */
        uint64_t freed_bytes;  /* their bytes */
        uint64_t gap_bytes;    /* bytes of carved superblocks and slots given back to the gap */
        uint64_t rec_kept;     /* live record slots */
        uint64_t rec_freed;    /* slots that said in use but are not live: freed */
        uint64_t cuts;         /* list cuts since the last rebuild (or format) */
        uint64_t rec_top, buf_bottom; /* the new watermarks */
} eng_arena_rebuild_report_t;

/*
 * eng_arena_rebuild: make the lock-free arena consistent again from what the caller says is
 * live, trusting nothing in the shared state but the live blocks' headers: the header's line
 * 0 is healed; record slots below the view's record top are rewritten used (live, owner 0) or
 * free (on a fresh list), and rec_top comes down to just above the highest live slot; every
 * superblock from top down to the records is scanned for USED headers of live owners (kept
 * untouched, header and payload, at their offsets), everything else becomes maximal free buddy
 * blocks on fresh lists; superblocks at the bottom with nothing kept, and the slots above the
 * last live one, go back to the gap (zeroed, as format left it); counters are set to what was
 * rebuilt (allocs, frees, failed are left) and the cut count restarts at 0.
 *
 * Precondition: no other honest thread or process allocates, frees or walks the arena during
 * the call (the server calls it while the segment is idle: no stream open, opens blocked). A
 * hostile writer may still scribble meanwhile: the call still terminates without touching
 * memory outside the region, and a later rebuild fixes what it spoiled. Call it on the view
 * that carves the record slots (the server's): it trusts that view's record top. A view that
 * never carved uses the shared rec_top, clamped to the geometry and below the lowest carved
 * superblock it can see.
 *
 * Afterwards eng_arena_check passes (if nobody scribbled meanwhile). Returns 0, -EINVAL, or
 * -ENOTSUP on the mutex arena (the baseline has no rebuild). rep may be NULL.
 */
/*
 * eng_arena_check (quiescent, strict), and the arena agrees with what the caller knows: a
 * record slot is in use exactly when cfg->rec_live says it is, and every USED buffer block
 * (lock-free arena) belongs to an owner cfg->owner_live calls live. 0, or -EUCLEAN with the
 * first disagreement in why. What eng_arena_rebuild would have to fix, found without changing
 * anything.
 */
ENG_API int eng_arena_check_live(const eng_arena_t *a, const eng_arena_rebuild_cfg_t *cfg,
                                 char *why, size_t whylen);
ENG_API int eng_arena_rebuild(eng_arena_t *a, const eng_arena_rebuild_cfg_t *cfg,
                              eng_arena_rebuild_report_t *rep);

#endif
