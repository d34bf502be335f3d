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
 */
#ifndef ENG_ARENA_H
#define ENG_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "eng_atomic.h"

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
        uint32_t nclasses; /* lock-free only; 0 for the mutex arena */
        eng_arena_class_stats_t cls[ENG_ARENA_MAX_CLASSES];
} eng_arena_stats_t;

/* Format [base, base+size) as a new arena. base must be 64-byte aligned. Not concurrent. */
int eng_arena_format(eng_arena_t *a, void *base, uint64_t size, const eng_arena_cfg_t *cfg);

/* Attach to an arena formatted by another process (validates the header). */
int eng_arena_attach(eng_arena_t *a, void *base, uint64_t size);

eng_arena_kind_t eng_arena_kind(const eng_arena_t *a);
const char *eng_arena_kind_name(eng_arena_kind_t k);

/* Buffers. *off receives the payload offset; capacity is >= len. */
int eng_arena_alloc(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *off);
int eng_arena_free(eng_arena_t *a, uint64_t off);
/* Usable bytes of a live block, 0 if off is not a live block. */
uint64_t eng_arena_capacity(const eng_arena_t *a, uint64_t off);
/* Owner of a live block (0 if off is not a live block). */
uint32_t eng_arena_owner(const eng_arena_t *a, uint64_t off);
/* Largest request eng_arena_alloc can ever satisfy. */
uint64_t eng_arena_max_alloc(const eng_arena_t *a);

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
 * unflushed batch loses those blocks (FREE, owner 0: reclaim cannot find them) until the
 * segment is recreated; use it where that is acceptable (engine/: the server's workers).
 */
#define ENG_ARENA_BATCH 64
typedef struct eng_arena_batch {
        uint32_t n;
        uint64_t blk[ENG_ARENA_BATCH]; /* block offset | class */
} eng_arena_batch_t;

uint32_t eng_arena_alloc_bulk(eng_arena_t *a, uint64_t len, uint32_t owner, uint64_t *offs,
                              uint32_t n);
int eng_arena_free_later(eng_arena_t *a, eng_arena_batch_t *b, uint64_t off);
void eng_arena_flush(eng_arena_t *a, eng_arena_batch_t *b);
/* Usable bytes of the block a request of len bytes gets (0 if none can serve it). The mutex
 * arena carves to size: there it is a lower bound (len itself, 0 for len 0). */
uint64_t eng_arena_class_bytes(const eng_arena_t *a, uint64_t len);

/* Pointer to [off, off+len) if it lies inside the region, else NULL. */
void *eng_arena_ptr(const eng_arena_t *a, uint64_t off, uint64_t len);

/* Records: fixed-size slots; *off receives the body offset. */
int eng_arena_rec_alloc(eng_arena_t *a, uint32_t owner, uint64_t *off);
int eng_arena_rec_free(eng_arena_t *a, uint64_t off);
/* Slot index of a record body offset (-1 if not a record slot) and its inverse. */
int64_t eng_arena_rec_index(const eng_arena_t *a, uint64_t off);
uint64_t eng_arena_rec_offset(const eng_arena_t *a, uint64_t index);
/* Number of slots ever carved (slots [0, n) may be inspected). */
uint64_t eng_arena_rec_slots(const eng_arena_t *a);
/* Bytes per record slot (header included). */
uint64_t eng_arena_rec_stride(const eng_arena_t *a);
/* Largest number of slots that could ever exist in this arena. */
uint64_t eng_arena_rec_max_slots(const eng_arena_t *a);

/* Free every buffer block owned by owner; returns the number freed (>= 0) or -errno. */
int64_t eng_arena_reclaim(eng_arena_t *a, uint32_t owner);

void eng_arena_stats(const eng_arena_t *a, eng_arena_stats_t *st);

/*
 * Quiescent consistency check (no concurrent calls): walks the records, the buffer area and
 * every free list and verifies that they account for every byte of the region exactly once.
 * Returns 0 if consistent, else -EUCLEAN with a reason in why (if non-NULL).
 */
int eng_arena_check(const eng_arena_t *a, char *why, size_t whylen);

/*
 * The same walk, tolerating what a process SIGKILLed inside an allocation can leave behind:
 * a superblock carved but not yet split, a buddy whose header was written but which was not
 * yet pushed, a record slot carved but not yet stamped, blocks a bulk allocation popped but
 * had not stamped yet, and the unflushed blocks of a free_later batch (all: nobody's, lost
 * until the segment is recreated; their bytes go to *leaked), and counters off by the
 * operations that were in flight. Any corruption of the lists still fails. The mutex arena repairs
 * itself at the next lock, so it never leaks.
 */
int eng_arena_check_leaks(const eng_arena_t *a, uint64_t *leaked, char *why, size_t whylen);

/*
 * A word that changes on every buffer free, for callers that wait for space: read it, retry
 * the allocation, and if it still fails sleep until the word changes (engine/ does that with
 * a futex). eng_arena_waiters() is the count of such sleepers; free() wakes them.
 */
uint32_t *eng_arena_free_word(const eng_arena_t *a);
uint32_t *eng_arena_waiters_word(const eng_arena_t *a);

#endif
