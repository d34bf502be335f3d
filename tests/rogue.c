/*
 * engine-rogue: a faulty process of the segment's own user, for soak tests of the failure model
 * (docs/ARCHITECTURE.md, "Failure model": issue 10).
 *
 *   engine-rogue --name /seg [--seconds S] [--seed N] [--quiet] [--only LIST] [--skip LIST]
 *
 * It attaches like a client (a session, a few streams, a few loans), maps the segment raw, and
 * then for S seconds writes random and plausible-but-wrong values into every region of it, in
 * bursts separated by short random pauses (so the machine stays usable):
 *
 *   header       every line of the segment header (line 0, the server state, the workers' wake
 *                word and sleepers, the offer words, the bootstrap and control wake words, the
 *                counters) and the ready bitmap;
 *   locks        the kernel locks: holds the bootstrap lock for short random periods, claims the
 *                offered record in other processes' names with and without its claim lock, and
 *                writes CLAIMED and other states into the offered record;
 *   records      every identity field of every record slot up to the arena's record top;
 *   sched        the scheduling word, the session wake word and waiting flag, want_space;
 *   rings        both rings' control words (p_head, p_tail, c_head, size, mask);
 *   descriptors  descriptor slots near the ring counters: client, server and reserved command
 *                codes, sequence numbers next to their neighbours', offsets of live blocks of
 *                the same and of other streams, of free blocks, of nothing; lengths up to and
 *                past a block's capacity; some of them published (a forged push);
 *   arena        the arena header: line 0 (magic, version, kind, geometry), the watermarks
 *                (insane, slightly raised, slightly lowered), the record list and class heads
 *                (garbage, at blocks in use, at self-linked blocks), the counters, the
 *                space-waiting words, and the mutex arena's words (its list head and its
 *                pthread mutex: lock word, owner, kind), which a process that believed a forged
 *                kind would use;
 *   blocks       block and record-slot headers (valid magic with a wrong state, class or owner,
 *                and garbage), free-list links (cycles, links to used blocks, garbage);
 *   payload      bytes of USED blocks: where file data in transit lives;
 *   object       the shm object itself, now and then (1 burst in 85): shrunk for up to 200 us
 *                and grown back (ftruncate, fallocate), or its mode changed for up to 20 ms
 *                and put back (fchmod).
 *
 * Shares of the bursts (weights, see cats[]): header 10, locks 6, records 10, sched 8, rings 8,
 * descriptors 12, arena 8, blocks 10, payload 12, object 1. A burst is 1..32 writes (1..4 lock
 * actions), then a pause of 50..2000 us: about 500 bursts and 6000 writes a second.
 *
 * What it never does: write anywhere but the segment, the kernel locks on the object and the
 * object's size and mode. After shrinking the object it touches nothing until it has restored
 * the size (and its own SIGBUS handler puts the size back should it ever fault on its raw
 * mapping; faults elsewhere go to the engine's guard, which its client installed).
 *
 * Every choice comes from one xorshift generator seeded by --seed, so a seed replays the same
 * sequence of decisions (what they hit depends on timing). Exit status: 0 after S seconds (or on
 * SIGINT/SIGTERM), 1 if it cannot attach, 2 on bad usage. Unless --quiet, one summary line with
 * the writes per category goes to stdout at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "arena_int.h"
#include "internal.h"

/* Command codes of proto/proto.h (the rogue speaks only the engine's layer; these are what a
 * file transfer puts in descriptors, copied so that forgeries look like the real thing). */
#define C_PING      0x0101u
#define C_FILE_OPEN 0x0110u
#define C_FILE_DATA 0x0111u
#define C_FILE_END  0x0112u
#define S_PONG      0x0201u
#define S_FILE_RDY  0x0210u
#define S_FILE_DONE 0x0211u
#define S_FILE_FAIL 0x0212u

#define MAX_BURST   32   /* writes per burst at most */
#define PAUSE_MIN   50   /* µs between bursts, at least */
#define PAUSE_SPAN  1950 /* ... plus up to this many */
#define HOLD_MAX_MS 30   /* longest hold of the bootstrap lock */
#define CENSUS_MAX  512  /* blocks remembered per kind (used, free) */
#define CENSUS_NS   (25 * 1000000ull)
#define CLAIMS_MAX  16 /* claim locks held at once */
#define OWN_STREAMS 3

enum cat {
        C_HEADER,
        C_LOCKS,
        C_RECORDS,
        C_SCHED,
        C_RINGS,
        C_DESC,
        C_ARENA,
        C_BLOCKS,
        C_PAYLOAD,
        C_OBJECT,
        NCAT
};

static const struct {
        const char *name;
        unsigned weight; /* share of the bursts */
} cats[NCAT] = {
    [C_HEADER] = {"header", 10}, [C_LOCKS] = {"locks", 6},    [C_RECORDS] = {"records", 10},
    [C_SCHED] = {"sched", 8},    [C_RINGS] = {"rings", 8},    [C_DESC] = {"descriptors", 12},
    [C_ARENA] = {"arena", 8},    [C_BLOCKS] = {"blocks", 10}, [C_PAYLOAD] = {"payload", 12},
    [C_OBJECT] = {"object", 1},
};

struct census_blk {
        uint64_t off;   /* block offset from the arena's base (its header) */
        uint32_t cls;   /* class index: the block is 2^(min_shift + cls) bytes */
        uint32_t shift; /* log2 of its size */
        uint32_t owner;
};

struct held_claim {
        uint32_t idx;
        uint64_t guid0;
        uint64_t until_ns;
};

static struct {
        struct eng_seg sg;    /* the raw mapping */
        eng_client_t *client; /* kept (reachable) until exit, never used again */
        eng_stream_t *own[OWN_STREAMS];
        uint64_t rng;
        uint32_t depth, nrec_max;
        pid_t me, parent, server;
        mode_t mode0;
        bool quiet;
        bool enabled[NCAT];
        unsigned total_weight;
        /* what the segment looked like at the last census */
        struct census_blk used[CENSUS_MAX], freeb[CENSUS_MAX];
        uint32_t nused, nfree;
        uint64_t census_ns;
        struct held_claim claims[CLAIMS_MAX];
        /* counts */
        uint64_t bursts, writes[NCAT];
        uint64_t holds, claims_made, claim_locks, pushes, truncs, chmods, own_faults;
} R;

/* The size and descriptor the SIGBUS guard restores (written before it is installed). */
static int g_fd = -1;
static off_t g_size;
static unsigned char *g_base;
static volatile sig_atomic_t g_faults, g_stop;

/* ---- small helpers ------------------------------------------------------------------- */

static void sleep_us(uint64_t us)
{
        struct timespec ts = {.tv_sec = (time_t)(us / 1000000),
                              .tv_nsec = (long)(us % 1000000) * 1000};
        nanosleep(&ts, NULL); /* a signal may cut it short: the caller's loop is bounded anyway */
}

static uint64_t rnd(void)
{
        uint64_t x = R.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return R.rng = x;
}

static uint32_t below(uint64_t n)
{
        return n ? (uint32_t)(rnd() % n) : 0;
}

static bool chance(unsigned one_in)
{
        return below(one_in) == 0;
}

#define PICK(arr) ((arr)[below(sizeof(arr) / sizeof((arr)[0]))])

/* Plain stores into the segment, one word each (relaxed: nobody is owed any order). */
static void w32(uint32_t *p, uint32_t v, enum cat c)
{
        eng_store_relaxed_u32(p, v);
        R.writes[c]++;
}

static void w64(uint64_t *p, uint64_t v, enum cat c)
{
        eng_store_relaxed_u64(p, v);
        R.writes[c]++;
}

/* A 32-bit value near cur, or one of the classics. */
static uint32_t near32(uint32_t cur)
{
        switch (below(10)) {
        case 0:
                return cur + 1;
        case 1:
                return cur - 1;
        case 2:
                return cur + R.depth;
        case 3:
                return cur - R.depth;
        case 4:
                return 0;
        case 5:
                return UINT32_MAX;
        case 6:
                return cur ^ (1u << below(32));
        case 7:
                return cur + 1 + below(4);
        default:
                return (uint32_t)rnd();
        }
}

static uint64_t near64(uint64_t cur)
{
        switch (below(8)) {
        case 0:
                return cur + 1;
        case 1:
                return cur - 1;
        case 2:
                return cur + 64;
        case 3:
                return cur - 4096;
        case 4:
                return 0;
        case 5:
                return UINT64_MAX;
        case 6:
                return cur ^ (1ull << below(64));
        default:
                return rnd();
        }
}

/* A pid: the server's, our parent's, our own, one a record names, or any. */
static int32_t some_pid(void)
{
        switch (below(6)) {
        case 0:
                return R.server;
        case 1:
                return R.parent;
        case 2:
                return R.me;
        case 3: {
                uint32_t n = eng_arena_rec_slots(&R.sg.arena) < R.nrec_max
                                 ? (uint32_t)eng_arena_rec_slots(&R.sg.arena)
                                 : R.nrec_max;
                struct eng_rec *r = seg_rec(&R.sg, below(n ? n : 1));
                return r ? (int32_t)eng_load_relaxed_u32((uint32_t *)&r->owner_pid) : 1;
        }
        case 4:
                return 1 + (int32_t)below(4194303);
        default:
                return (int32_t)rnd();
        }
}

/* Record slots that exist now (bounded by the private geometry). */
static uint32_t nrec(void)
{
        uint64_t n = eng_arena_rec_slots(&R.sg.arena);
        return n < R.nrec_max ? (uint32_t)n : R.nrec_max;
}

static struct eng_rec *any_rec(uint32_t *idx)
{
        uint32_t n = nrec();
        if (n == 0)
                return NULL;
        *idx = below(n);
        return seg_rec(&R.sg, *idx);
}

/* ---- census: which blocks exist right now -------------------------------------------- */

/*
 * Look at every 2^min-aligned position of the buffer area (bounded by the private geometry,
 * not by the watermarks, which the rogue itself scribbles) and remember what looks like a block
 * header: USED blocks (with their owner) and FREE blocks. Reservoir-sampled, so a large arena
 * costs nothing more to remember.
 */
static void census(void)
{
        uint64_t now = eng_now_ns();
        if (now - R.census_ns < CENSUS_NS)
                return;
        R.census_ns = now;
        const eng_arena_t *a = &R.sg.arena;
        uint64_t step = 1ull << a->min_shift;
        uint64_t lo = (a->rec_base + step - 1) & ~(step - 1);
        uint32_t seen_u = 0, seen_f = 0;
        R.nused = R.nfree = 0;
        for (uint64_t off = lo; off + step <= a->top; off += step) {
                uint64_t w = eng_load_relaxed_u64(&blk_at(a, off)->word);
                uint32_t cls = blk_class(w), st = blk_state(w), shift = a->min_shift + cls;
                if (blk_magic(w) != BLK_MAGIC || cls >= a->nclasses ||
                    (off & ((1ull << shift) - 1)) != 0 || off + (1ull << shift) > a->top)
                        continue;
                struct census_blk b = {
                    .off = off, .cls = cls, .shift = shift, .owner = blk_owner(w)};
                if (st == BLK_USED) {
                        uint32_t k = seen_u++ < CENSUS_MAX ? R.nused++ : below(seen_u);
                        if (k < CENSUS_MAX)
                                R.used[k] = b;
                } else if (st == BLK_FREE) {
                        uint32_t k = seen_f++ < CENSUS_MAX ? R.nfree++ : below(seen_f);
                        if (k < CENSUS_MAX)
                                R.freeb[k] = b;
                }
        }
}

static const struct census_blk *a_used(void)
{
        return R.nused ? &R.used[below(R.nused)] : NULL;
}

static const struct census_blk *a_free(void)
{
        return R.nfree ? &R.freeb[below(R.nfree)] : NULL;
}

/* A used block of the stream idx, if the census saw one. */
static const struct census_blk *used_of(uint32_t idx)
{
        uint32_t start = below(R.nused ? R.nused : 1);
        for (uint32_t i = 0; i < R.nused; i++) {
                const struct census_blk *b = &R.used[(start + i) % R.nused];
                if (b->owner == idx + 1)
                        return b;
        }
        return NULL;
}

/* ---- header -------------------------------------------------------------------------- */

static void hit_header(unsigned n)
{
        struct eng_seg_hdr *h = R.sg.hdr;
        const struct eng_seg_hdr *l0 = &R.sg.line0;
        for (unsigned i = 0; i < n; i++) {
                switch (below(22)) {
                case 0: {
                        uint32_t v[] = {SEG_MAGIC ^ 1, 0, SEG_MAGIC, (uint32_t)rnd(),
                                        0x454e4741u /* the arena's magic */};
                        w32(&h->magic, PICK(v), C_HEADER);
                        break;
                }
                case 1: {
                        uint32_t v[] = {SEG_VERSION - 1, SEG_VERSION + 1, 0, (uint32_t)rnd()};
                        w32(&h->version, PICK(v), C_HEADER);
                        break;
                }
                case 2: {
                        uint32_t v[] = {ENG_TRANSPORT_LOCKFREE, ENG_TRANSPORT_MUTEX, 0, 7,
                                        (uint32_t)rnd()};
                        w32(&h->transport, PICK(v), C_HEADER);
                        break;
                }
                case 3: {
                        uint32_t v[] = {l0->ring_depth * 2, l0->ring_depth / 2, 0, 3,
                                        (uint32_t)rnd()};
                        w32(&h->ring_depth, PICK(v), C_HEADER);
                        break;
                }
                case 4: {
                        uint64_t v[] = {l0->size + 4096, l0->size - 4096, l0->size * 2, 0, rnd()};
                        w64(&h->size, PICK(v), C_HEADER);
                        break;
                }
                case 5: {
                        uint64_t v[] = {l0->arena_off + 4096, l0->arena_off - 4096, 0, l0->size,
                                        rnd()};
                        w64(&h->arena_off, PICK(v), C_HEADER);
                        break;
                }
                case 6:
                        w64(&h->epoch, chance(2) ? rnd() : l0->epoch + 1, C_HEADER);
                        break;
                case 7:
                        w32((uint32_t *)&h->server_pid, (uint32_t)some_pid(), C_HEADER);
                        break;
                case 8: {
                        uint32_t v[] = {l0->max_streams + 1, l0->max_streams * 2, 0, 65537,
                                        (uint32_t)rnd()};
                        w32(&h->max_streams, PICK(v), C_HEADER);
                        break;
                }
                case 9:
                        w32(&h->bitmap_words, near32(l0->bitmap_words), C_HEADER);
                        break;
                case 10:
                        w32(&h->hdr_bytes, near32(l0->hdr_bytes), C_HEADER);
                        break;
                case 11:
                        w32(&h->asym, below(3) == 0 ? (uint32_t)rnd() : !l0->asym, C_HEADER);
                        break;
                case 12: {
                        uint32_t v[] = {SRV_STARTING, SRV_READY, SRV_STOPPING,
                                        SRV_STOPPED,  0,         (uint32_t)rnd()};
                        w32(&h->state, PICK(v), C_HEADER);
                        break;
                }
                case 13:
                        if (chance(2)) {
                                eng_faa_u32(&h->srv_wake, 1);
                                eng_futex_wake(&h->srv_wake, 1 + (int)below(4));
                                R.writes[C_HEADER]++;
                        } else {
                                w32(&h->srv_wake, (uint32_t)rnd(), C_HEADER);
                        }
                        break;
                case 14: {
                        uint32_t v[] = {0, 1, 2, UINT32_MAX, (uint32_t)rnd()};
                        w32(&h->srv_sleepers, PICK(v), C_HEADER);
                        break;
                }
                case 15: {
                        uint32_t v[] = {OFFER_NONE, OFFER_UP, OFFER_TAKEN, 3, (uint32_t)rnd()};
                        w32(&h->offers[below(SEG_OFFERS)].state, PICK(v), C_HEADER);
                        break;
                }
                case 16: {
                        uint32_t n0 = nrec();
                        uint32_t v[] = {below(n0 + 1), n0, l0->max_streams, UINT32_MAX,
                                        (uint32_t)rnd()};
                        w32(&h->offers[below(SEG_OFFERS)].idx, PICK(v), C_HEADER);
                        break;
                }
                case 17: {
                        /* another record's GUID, or garbage */
                        uint32_t idx;
                        struct eng_rec *r = any_rec(&idx);
                        unsigned k = below(2);
                        w64(&h->offers[below(SEG_OFFERS)].guid[k],
                            r && chance(2) ? eng_load_relaxed_u64(&r->guid[k]) : rnd(), C_HEADER);
                        break;
                }
                case 18: {
                        uint32_t *words[] = {&h->boot_wake, &h->ctl_wake, &h->boot_seq};
                        uint32_t *p = PICK(words);
                        eng_faa_u32(p, 1);
                        eng_futex_wake(p, INT32_MAX);
                        R.writes[C_HEADER]++;
                        break;
                }
                case 19: {
                        uint32_t v[] = {0, 1, 1000, UINT32_MAX, (uint32_t)rnd()};
                        w32(&h->boot_waiters, PICK(v), C_HEADER);
                        break;
                }
                case 20: {
                        uint64_t *c[] = {&h->opens, &h->closes, &h->ended};
                        uint64_t *p = PICK(c);
                        w64(p, near64(eng_load_relaxed_u64(p)), C_HEADER);
                        break;
                }
                default: {
                        /* the ready bitmap: set or clear a bit, or a whole word */
                        uint32_t words = l0->bitmap_words;
                        uint64_t *bm = R.sg.bitmap;
                        uint32_t n0 = nrec();
                        uint32_t bit = below(chance(4) ? (uint64_t)words * 64 : n0 + 1);
                        uint64_t *w = &bm[(bit / 64) % words];
                        uint64_t mask = 1ull << (bit % 64);
                        switch (below(4)) {
                        case 0:
                                __atomic_fetch_and(w, ~mask, __ATOMIC_RELAXED);
                                break;
                        case 1:
                                eng_store_relaxed_u64(w, chance(2) ? 0 : rnd());
                                break;
                        default:
                                __atomic_fetch_or(w, mask, __ATOMIC_RELAXED);
                                break;
                        }
                        R.writes[C_HEADER]++;
                        break;
                }
                }
        }
}

/* ---- locks ----------------------------------------------------------------------------- */

static void claims_expire(bool all)
{
        uint64_t now = eng_now_ns();
        for (int i = 0; i < CLAIMS_MAX; i++) {
                struct held_claim *c = &R.claims[i];
                if (c->until_ns != 0 && (all || now >= c->until_ns)) {
                        seg_claim_unlock(&R.sg, c->idx, c->guid0);
                        c->until_ns = 0;
                }
        }
}

static void claim_keep(uint32_t idx, uint64_t guid0)
{
        for (int i = 0; i < CLAIMS_MAX; i++) {
                if (R.claims[i].until_ns == 0) {
                        R.claims[i] =
                            (struct held_claim){.idx = idx,
                                                .guid0 = guid0,
                                                .until_ns = eng_now_ns() + below(500) * 1000000ull};
                        return;
                }
        }
        seg_claim_unlock(&R.sg, idx, guid0); /* full: let go at once */
}

/* Claim the record on offer in someone else's name (or our own, with a wrong type or
 * session), as a client would under the bootstrap lock (or without it). */
static void fake_claim(void)
{
        struct eng_seg_hdr *h = R.sg.hdr;
        struct eng_offer *o = &h->offers[below(SEG_OFFERS)];
        uint32_t idx = eng_load_relaxed_u32(&o->idx);
        struct eng_rec *r = seg_rec(&R.sg, idx);
        if (r == NULL)
                return;
        uint64_t g0 = chance(4) ? eng_load_relaxed_u64(&o->guid[0]) : r->guid[0];
        if (chance(2) && seg_claim_lock(&R.sg, idx, g0) == 0) {
                claim_keep(idx, g0);
                R.claim_locks++;
        }
        w32((uint32_t *)&r->owner_pid, (uint32_t)some_pid(), C_LOCKS);
        uint32_t types[] = {REC_SESSION, REC_STREAM, REC_STREAM, 0, 7};
        w32(&r->type, PICK(types), C_LOCKS);
        w32(&r->session, below(nrec() + 2), C_LOCKS);
        w32(&r->user_id, (uint32_t)rnd(), C_LOCKS);
        uint32_t states[] = {ST_CLAIMED, ST_CLAIMED, ST_CLAIMED, ST_OPEN, ST_ENDED, 0, 99};
        eng_store_release_u32(&r->state, PICK(states));
        uint32_t offers[] = {OFFER_TAKEN, OFFER_TAKEN, OFFER_NONE, OFFER_UP};
        eng_store_release_u32(&o->state, PICK(offers));
        R.writes[C_LOCKS] += 2;
        eng_faa_u32(&h->ctl_wake, 1);
        eng_futex_wake(&h->ctl_wake, 1);
        R.claims_made++;
}

static void hit_locks(unsigned n)
{
        struct eng_seg_hdr *h = R.sg.hdr;
        n = 1 + n % 4;
        for (unsigned i = 0; i < n; i++) {
                switch (below(4)) {
                case 0: /* sit on the bootstrap lock for a while, maybe claiming meanwhile */
                        if (seg_boot_trylock(&R.sg) == 0) {
                                R.holds++;
                                R.writes[C_LOCKS]++;
                                sleep_us(below(HOLD_MAX_MS * 1000u + 1));
                                if (chance(2))
                                        fake_claim();
                                seg_boot_unlock(&R.sg);
                        }
                        break;
                case 1: /* a claim under the lock */
                        if (seg_boot_trylock(&R.sg) == 0) {
                                fake_claim();
                                seg_boot_unlock(&R.sg);
                        }
                        break;
                case 2: /* a claim without it */
                        fake_claim();
                        break;
                default: { /* a state into the record on offer, nothing else */
                        struct eng_rec *r =
                            seg_rec(&R.sg, eng_load_relaxed_u32(&h->offers[below(SEG_OFFERS)].idx));
                        if (r != NULL) {
                                uint32_t states[] = {ST_CLAIMED, ST_OPEN, ST_ENDED, 0,
                                                     (uint32_t)rnd()};
                                eng_store_release_u32(&r->state, PICK(states));
                                R.writes[C_LOCKS]++;
                                eng_faa_u32(&h->ctl_wake, 1);
                                eng_futex_wake(&h->ctl_wake, 1);
                        }
                        break;
                }
                }
        }
        claims_expire(false);
}

/* ---- records --------------------------------------------------------------------------- */

static void hit_records(unsigned n)
{
        for (unsigned i = 0; i < n; i++) {
                uint32_t idx;
                struct eng_rec *r = any_rec(&idx);
                if (r == NULL)
                        return;
                uint32_t n0 = nrec();
                switch (below(10)) {
                case 0: {
                        uint32_t v[] = {ST_OFFERED, ST_CLAIMED, ST_OPEN,
                                        ST_ENDED,   0,          (uint32_t)rnd()};
                        eng_store_release_u32(&r->state, PICK(v));
                        R.writes[C_RECORDS]++;
                        break;
                }
                case 1: {
                        uint32_t v[] = {REC_STREAM, REC_SESSION, 0, 3, (uint32_t)rnd()};
                        w32(&r->type, PICK(v), C_RECORDS);
                        break;
                }
                case 2: {
                        uint32_t other;
                        struct eng_rec *o = any_rec(&other);
                        unsigned k = below(2);
                        w64(&r->guid[k], o && chance(2) ? o->guid[k] : rnd(), C_RECORDS);
                        break;
                }
                case 3:
                        w64(&r->epoch, chance(2) ? rnd() : R.sg.line0.epoch, C_RECORDS);
                        break;
                case 4:
                        w32((uint32_t *)&r->owner_pid, (uint32_t)some_pid(), C_RECORDS);
                        break;
                case 5: {
                        uint32_t v[] = {below(n0 + 1), idx, n0, UINT32_MAX, (uint32_t)rnd()};
                        w32(&r->session, PICK(v), C_RECORDS);
                        break;
                }
                case 6:
                        w32(&r->user_id, chance(2) ? below(16) : (uint32_t)rnd(), C_RECORDS);
                        break;
                case 7: {
                        uint32_t v[] = {R.depth, R.depth * 2, R.depth / 2, 0, (uint32_t)rnd()};
                        w32(&r->depth, PICK(v), C_RECORDS);
                        break;
                }
                case 8:
                        w32(&r->want_space, chance(3) ? (uint32_t)rnd() : below(2), C_RECORDS);
                        break;
                default: /* the padding too: nothing there may matter */
                        w32(&r->pad0[below(3)], (uint32_t)rnd(), C_RECORDS);
                        break;
                }
        }
}

static void hit_sched(unsigned n)
{
        for (unsigned i = 0; i < n; i++) {
                uint32_t idx;
                struct eng_rec *r = any_rec(&idx);
                if (r == NULL)
                        return;
                switch (below(5)) {
                case 0:
                case 1: {
                        uint32_t v[] = {RUN_IDLE, RUN_QUEUED,  RUN_RUNNING, RUN_AGAIN,
                                        RUN_FIN,  RUN_POLLING, 6,           (uint32_t)rnd()};
                        uint32_t want = PICK(v);
                        if (chance(2)) {
                                eng_store_relaxed_u32(&r->sched, want);
                        } else {
                                uint32_t seen = eng_load_relaxed_u32(&r->sched);
                                eng_cas_u32(&r->sched, seen, want, &seen);
                        }
                        R.writes[C_SCHED]++;
                        if (chance(2)) /* and tell the workers, as a client would */
                                ready_post(&R.sg, idx);
                        break;
                }
                case 2:
                        if (chance(2)) {
                                eng_faa_u32(&r->wake, 1);
                                eng_futex_wake(&r->wake, INT32_MAX);
                                R.writes[C_SCHED]++;
                        } else {
                                w32(&r->wake, (uint32_t)rnd(), C_SCHED);
                        }
                        break;
                case 3: {
                        uint32_t v[] = {WAIT_NONE, WAIT_SPIN, WAIT_SLEEP, 3, (uint32_t)rnd()};
                        w32(&r->waiting, PICK(v), C_SCHED);
                        break;
                }
                default:
                        w32(&r->want_space, below(2), C_SCHED);
                        break;
                }
        }
}

static void hit_rings(unsigned n)
{
        for (unsigned i = 0; i < n; i++) {
                uint32_t idx;
                struct eng_rec *r = any_rec(&idx);
                if (r == NULL)
                        return;
                struct ck_ring *g = chance(2) ? &r->c2s.r : &r->s2c.r;
                unsigned int *f[] = {&g->p_head, &g->p_tail, &g->c_head, &g->size, &g->mask};
                unsigned k = below(5);
                uint32_t cur = eng_load_relaxed_u32(f[k]);
                uint32_t v;
                if (k >= 3) {
                        uint32_t sz[] = {R.depth * 2, R.depth / 2, 0,
                                         UINT32_MAX,  R.depth - 1, (uint32_t)rnd()};
                        v = PICK(sz);
                } else if (chance(3)) {
                        /* another counter of the same ring, or of the other ring */
                        unsigned int *o[] = {&r->c2s.r.p_tail, &r->c2s.r.c_head, &r->s2c.r.p_tail,
                                             &r->s2c.r.c_head};
                        v = eng_load_relaxed_u32(PICK(o)) + below(3);
                } else {
                        v = near32(cur);
                }
                w32(f[k], v, C_RINGS);
        }
}

/* ---- descriptors ----------------------------------------------------------------------- */

static uint64_t forged_off(uint32_t idx, uint64_t *cap)
{
        const eng_arena_t *a = &R.sg.arena;
        const struct census_blk *b = NULL;
        *cap = 0;
        switch (below(8)) {
        case 0:
        case 1:
                b = used_of(idx); /* the stream's own block: the most plausible forgery */
                break;
        case 2:
        case 3:
                b = a_used(); /* another stream's live block */
                break;
        case 4:
                b = a_free();
                break;
        case 5: {
                uint64_t v[] = {0, 1, 63, a->top, a->top + 4096, a->rec_base, a->size};
                return PICK(v);
        }
        case 6: {
                const struct census_blk *u = a_used();
                return u ? u->off : rnd(); /* a block's header, not its payload */
        }
        default:
                return rnd() % (a->size + 8192);
        }
        if (b == NULL)
                return rnd() & ~63ull;
        *cap = (1ull << b->shift) - ENG_ARENA_HDR_BYTES;
        return b->off + ENG_ARENA_HDR_BYTES;
}

static void forge_desc(struct eng_desc *d, const struct eng_desc *prev, uint32_t idx)
{
        uint16_t cmds[] = {C_PING,      C_FILE_OPEN, C_FILE_DATA, C_FILE_DATA, C_FILE_DATA,
                           C_FILE_END,  S_PONG,      S_FILE_RDY,  S_FILE_DONE, S_FILE_FAIL,
                           CMD_C_CLOSE, CMD_S_CLOSE, CMD_S_ERROR, 0x01f5,      0x02f5,
                           0x0100,      0x01ef,      0x0200,      0x02ef,      0};
        d->cmd = chance(8) ? (uint16_t)rnd() : PICK(cmds);
        d->flags = chance(4) ? (uint16_t)rnd() : 0;
        uint64_t pseq = prev->seq;
        uint64_t seqs[] = {pseq + 1, pseq + 1, pseq + 1, pseq, pseq + 2, pseq - 1, 0, 1, rnd()};
        d->seq = PICK(seqs);
        uint64_t cap;
        d->off = chance(6) ? 0 : forged_off(idx, &cap);
        if (d->off == 0) {
                d->len = chance(3) ? (uint32_t)rnd() : 0;
        } else {
                uint32_t c = (uint32_t)cap;
                uint32_t lens[] = {0,
                                   1,
                                   c ? c - 1 : 4000,
                                   c,
                                   c + 1,
                                   c + 64,
                                   (64u << 10) - 64,
                                   UINT32_MAX,
                                   (uint32_t)rnd()};
                d->len = PICK(lens);
        }
        uint64_t args[] = {0,     prev->arg, prev->arg + (64u << 10) - 64, (uint64_t)d->len,
                           rnd(), UINT64_MAX};
        d->arg = PICK(args);
}

static void hit_desc(unsigned n)
{
        census();
        for (unsigned i = 0; i < n; i++) {
                uint32_t idx;
                struct eng_rec *r = any_rec(&idx);
                if (r == NULL)
                        return;
                bool c2s = below(3) != 0; /* mostly what the server reads */
                struct ck_ring *g = c2s ? &r->c2s.r : &r->s2c.r;
                struct eng_desc *slots =
                    c2s ? rec_c2s_slots(r, R.depth) : rec_s2c_slots(r, R.depth);
                uint32_t mask = R.depth - 1;
                uint32_t tail = eng_load_relaxed_u32(&g->p_tail);
                uint32_t head = eng_load_relaxed_u32(&g->c_head);
                /* the next slot to be written, one already written and unread, or any */
                uint32_t at[] = {tail, tail, head, tail - 1, tail + 1, (uint32_t)rnd()};
                uint32_t pos = PICK(at);
                struct eng_desc prev;
                memcpy(&prev, &slots[(pos - 1) & mask], sizeof(prev));
                struct eng_desc d;
                forge_desc(&d, &prev, idx);
                memcpy(&slots[pos & mask], &d, sizeof(d));
                R.writes[C_DESC]++;
                if (pos == tail && chance(4)) {
                        /* publish it: a push in the stream's name */
                        eng_store_release_u32(&g->p_tail, tail + 1);
                        eng_store_relaxed_u32(&g->p_head, tail + 1);
                        R.writes[C_DESC]++;
                        R.pushes++;
                        if (c2s) {
                                sched_stream(&R.sg, r, idx);
                        } else {
                                uint32_t s = eng_load_relaxed_u32(&r->session);
                                struct eng_rec *sr = seg_rec(&R.sg, s);
                                if (sr != NULL) {
                                        eng_faa_u32(&sr->wake, 1);
                                        eng_futex_wake(&sr->wake, INT32_MAX);
                                }
                        }
                }
        }
}

/* ---- arena ------------------------------------------------------------------------------ */

static uint32_t units_of_sb(void)
{
        return (uint32_t)((1ull << R.sg.arena.max_shift) / ARENA_UNIT);
}

static void hit_arena(unsigned n)
{
        census();
        const eng_arena_t *a = &R.sg.arena;
        struct eng_arena_hdr *ah = a->hdr;
        for (unsigned i = 0; i < n; i++) {
                switch (below(12)) {
                case 0: { /* line 0: magic and geometry */
                        switch (below(9)) {
                        case 0:
                                w32(&ah->magic, chance(2) ? ARENA_MAGIC ^ 4 : (uint32_t)rnd(),
                                    C_ARENA);
                                break;
                        case 1:
                                w32(&ah->version, near32(ARENA_VERSION), C_ARENA);
                                break;
                        case 2:
                                w32(&ah->kind, chance(2) ? ENG_ARENA_MUTEX : (uint32_t)rnd(),
                                    C_ARENA);
                                break;
                        case 3:
                                w32(&ah->min_shift, a->min_shift + 1 - below(3), C_ARENA);
                                break;
                        case 4:
                                w32(&ah->max_shift, a->max_shift + 1 - below(3), C_ARENA);
                                break;
                        case 5:
                                w32(&ah->nclasses, near32(a->nclasses), C_ARENA);
                                break;
                        case 6:
                                w64(&ah->size, near64(a->size), C_ARENA);
                                break;
                        case 7:
                                w64(chance(2) ? &ah->rec_base : &ah->rec_stride,
                                    near64(chance(2) ? a->rec_base : a->rec_stride), C_ARENA);
                                break;
                        default:
                                w64(&ah->top, near64(a->top), C_ARENA);
                                break;
                        }
                        break;
                }
                case 1:
                case 2:
                case 3: { /* the watermarks */
                        uint64_t m = eng_load_relaxed_u64(&ah->marks);
                        uint32_t rt = marks_rec_top(m), bb = marks_buf_bottom(m);
                        uint32_t sb = units_of_sb(), st = (uint32_t)(a->rec_stride / ARENA_UNIT);
                        uint32_t topu = (uint32_t)(a->top / ARENA_UNIT);
                        uint64_t v[] = {marks_pack(bb + 1, rt),    /* crossed */
                                        marks_pack(rt, topu + sb), /* past the top */
                                        marks_pack(rt, bb + sb),   /* slightly raised */
                                        marks_pack(rt, bb - sb),   /* slightly lowered */
                                        marks_pack(rt + st, bb),   /* a record too many */
                                        marks_pack(rt - st, bb),   /* a record too few */
                                        marks_pack(rt + 1, bb),    /* off the slot grid */
                                        marks_pack(rt, bb + 1),    /* off the superblock grid */
                                        marks_pack(0, 0),          rnd(), marks_pack(rt, topu)};
                        w64(&ah->marks, PICK(v), C_ARENA);
                        break;
                }
                case 4: { /* the record list's head */
                        uint64_t h = eng_load_relaxed_u64(&ah->rec_head);
                        uint32_t k = below(nrec() + 1);
                        uint64_t slot = a->rec_base + (uint64_t)k * a->rec_stride;
                        uint64_t v[] = {head_pack(off_to_units(slot), head_tag(h) + 1),
                                        head_pack(head_units(h) + 1, head_tag(h)),
                                        head_pack((uint32_t)rnd(), head_tag(h) + 1), 0, rnd()};
                        w64(&ah->rec_head, PICK(v), C_ARENA);
                        break;
                }
                case 5:
                case 6:
                case 7: { /* a class head */
                        uint32_t c = below(a->nclasses);
                        uint64_t h = eng_load_relaxed_u64(&ah->cls[c].head);
                        const struct census_blk *u = a_used(), *f = a_free();
                        uint32_t tag = head_tag(h) + 1;
                        switch (below(6)) {
                        case 0: /* at a block in use */
                                if (u)
                                        w64(&ah->cls[c].head, head_pack(off_to_units(u->off), tag),
                                            C_ARENA);
                                break;
                        case 1: /* at a free block that links to itself */
                                if (f) {
                                        struct blk_hdr *b = blk_at(a, f->off);
                                        w64(&b->next, off_to_units(f->off), C_ARENA);
                                        w64(&ah->cls[c].head, head_pack(off_to_units(f->off), tag),
                                            C_ARENA);
                                }
                                break;
                        case 2: /* at a free block of another class */
                                if (f)
                                        w64(&ah->cls[c].head, head_pack(off_to_units(f->off), tag),
                                            C_ARENA);
                                break;
                        case 3: /* at the arena header itself */
                                w64(&ah->cls[c].head, head_pack(0 + below(4), tag), C_ARENA);
                                break;
                        case 4:
                                w64(&ah->cls[c].head, head_pack(0, tag), C_ARENA);
                                break;
                        default:
                                w64(&ah->cls[c].head, rnd(), C_ARENA);
                                break;
                        }
                        break;
                }
                case 8:
                case 9: { /* counters */
                        uint32_t c = below(a->nclasses);
                        uint64_t *p[] = {&ah->cls[c].used_blocks, &ah->cls[c].free_blocks,
                                         &ah->cls[c].allocs,      &ah->cls[c].frees,
                                         &ah->cls[c].failed,      &ah->rec_used,
                                         &ah->rec_free,           &ah->rec_slots_max,
                                         &ah->bad_frees,          &ah->cuts,
                                         &ah->mx_failed};
                        uint64_t *q = PICK(p);
                        w64(q, near64(eng_load_relaxed_u64(q)), C_ARENA);
                        break;
                }
                case 10: /* space waiters */
                        if (chance(2)) {
                                eng_faa_u32(&ah->free_word, 1);
                                eng_futex_wake(&ah->free_word, INT32_MAX);
                                R.writes[C_ARENA]++;
                        } else {
                                w32(&ah->waiters, chance(2) ? 0 : (uint32_t)rnd(), C_ARENA);
                        }
                        break;
                default: { /* the mutex arena's words, unused by the lock-free arena: its free
                            * list head, and the pthread mutex (lock word, owner, kind) */
                        unsigned char *mx = (unsigned char *)&ah->mx;
                        uint32_t v[] = {0,
                                        1,
                                        2,
                                        0x40 /* PRIO_PROTECT */,
                                        0x10 /* ROBUST */,
                                        (uint32_t)R.server,
                                        (uint32_t)rnd()};
                        switch (below(3)) {
                        case 0:
                                w64(&ah->mx_free_head, chance(2) ? rnd() : below(1u << 20),
                                    C_ARENA);
                                break;
                        case 1: /* lock word, owner or kind (glibc x86-64: bytes 0, 8, 16) */
                                w32((uint32_t *)(mx + 8 * below(3)), PICK(v), C_ARENA);
                                break;
                        default:
                                w32((uint32_t *)(mx + 4 * below(sizeof(ah->mx) / 4)),
                                    (uint32_t)rnd(), C_ARENA);
                                break;
                        }
                        break;
                }
                }
        }
}

static void hit_blocks(unsigned n)
{
        census();
        const eng_arena_t *a = &R.sg.arena;
        for (unsigned i = 0; i < n; i++) {
                const struct census_blk *u = a_used(), *f = a_free();
                switch (below(8)) {
                case 0:
                case 1: { /* a used block: valid magic, wrong state, class or owner */
                        if (u == NULL)
                                break;
                        struct blk_hdr *b = blk_at(a, u->off);
                        uint32_t idx;
                        struct eng_rec *r = any_rec(&idx);
                        uint32_t owners[] = {u->owner, u->owner + 1, 0, r ? idx + 1 : 1,
                                             (uint32_t)rnd()};
                        uint32_t states[] = {BLK_FREE, BLK_USED, BLK_RFREE, BLK_RUSED, 0, 9};
                        uint32_t cls = chance(3) ? u->cls + 1 - below(3) : u->cls;
                        w64(&b->word, blk_word(cls, PICK(states), PICK(owners)), C_BLOCKS);
                        break;
                }
                case 2: { /* a free block: the same */
                        if (f == NULL)
                                break;
                        struct blk_hdr *b = blk_at(a, f->off);
                        uint32_t states[] = {BLK_USED, BLK_USED, BLK_RFREE, 0};
                        w64(&b->word,
                            blk_word(f->cls, PICK(states), chance(2) ? 0 : 1 + below(nrec() + 1)),
                            C_BLOCKS);
                        break;
                }
                case 3: { /* a free-list link: a cycle, a used block, garbage */
                        if (f == NULL)
                                break;
                        struct blk_hdr *b = blk_at(a, f->off);
                        const struct census_blk *g = a_free();
                        uint64_t v[] = {off_to_units(f->off),
                                        u ? off_to_units(u->off) : 1,
                                        g ? off_to_units(g->off) : 2,
                                        0,
                                        rnd(),
                                        (uint32_t)rnd()};
                        w64(&b->next, PICK(v), C_BLOCKS);
                        if (g != NULL && chance(3)) /* f -> g -> f */
                                w64(&blk_at(a, g->off)->next, off_to_units(f->off), C_BLOCKS);
                        break;
                }
                case 4: { /* garbage headers */
                        const struct census_blk *x = chance(2) ? u : f;
                        if (x == NULL)
                                break;
                        struct blk_hdr *b = blk_at(a, x->off);
                        uint64_t *p[] = {&b->word, &b->bytes, &b->pad[below(5)]};
                        w64(PICK(p), rnd(), C_BLOCKS);
                        break;
                }
                case 5: { /* a header forged where there is none (inside a live payload) */
                        if (u == NULL || u->cls == 0)
                                break;
                        uint64_t half = u->off + (1ull << (u->shift - 1));
                        w64(&blk_at(a, half)->word,
                            blk_word(u->cls - 1, chance(2) ? BLK_USED : BLK_FREE, u->owner),
                            C_BLOCKS);
                        break;
                }
                default: { /* a record slot's header */
                        uint32_t idx;
                        if (any_rec(&idx) == NULL)
                                break;
                        struct blk_hdr *b = blk_at(a, a->rec_base + (uint64_t)idx * a->rec_stride);
                        uint32_t states[] = {BLK_RFREE, BLK_RUSED, BLK_USED, 0};
                        switch (below(3)) {
                        case 0:
                                w64(&b->word, blk_word(0, PICK(states), below(3)), C_BLOCKS);
                                break;
                        case 1: {
                                uint32_t k = below(nrec() + 1);
                                w64(&b->next,
                                    chance(2)
                                        ? off_to_units(a->rec_base + (uint64_t)k * a->rec_stride)
                                        : rnd(),
                                    C_BLOCKS);
                                break;
                        }
                        default:
                                w64(&b->word, rnd(), C_BLOCKS);
                                break;
                        }
                        break;
                }
                }
        }
}

static void hit_payload(unsigned n)
{
        census();
        const eng_arena_t *a = &R.sg.arena;
        for (unsigned i = 0; i < n; i++) {
                const struct census_blk *u = a_used();
                if (u == NULL)
                        return;
                uint64_t cap = (1ull << u->shift) - ENG_ARENA_HDR_BYTES;
                volatile unsigned char *p =
                    (volatile unsigned char *)(a->base + u->off + ENG_ARENA_HDR_BYTES);
                switch (below(4)) {
                case 0: /* one bit */
                        p[below(cap)] ^= (unsigned char)(1u << below(8));
                        break;
                case 1: { /* a run of bytes */
                        uint64_t at = below(cap), len = 1 + below(256);
                        if (at + len > cap)
                                len = cap - at;
                        unsigned char v = (unsigned char)rnd();
                        for (uint64_t k = 0; k < len; k++)
                                p[at + k] = v;
                        break;
                }
                case 2: /* the first bytes (a name, a small message) */
                        p[below(cap < 64 ? cap : 64)] = (unsigned char)rnd();
                        break;
                default: /* a few random bytes anywhere in it */
                        for (unsigned k = 0; k < 8; k++)
                                p[below(cap)] = (unsigned char)rnd();
                        break;
                }
                R.writes[C_PAYLOAD]++;
        }
}

/* ---- the object ------------------------------------------------------------------------- */

static void hit_object(void)
{
        int fd = R.sg.fd;
        if (chance(2)) {
                uint64_t size = R.sg.size;
                uint64_t pages = size / 4096;
                off_t v[] = {0,
                             4096,
                             (off_t)R.sg.line0.arena_off,
                             (off_t)(size / 2),
                             (off_t)(below(pages) * 4096ull),
                             (off_t)(size - 4096)};
                off_t small = PICK(v);
                uint64_t hold = below(200); /* µs: decided before, nothing touched after */
                if (ftruncate(fd, small) == 0) {
                        /* From here until the size is back, the mapping past `small` faults:
                         * no access to it (the summary counters are private memory). */
                        sleep_us(hold);
                        while (ftruncate(fd, (off_t)size) != 0 && errno == EINTR)
                                ;
                        /* give the pages back their reservation, as the server would */
                        (void)!fallocate(fd, 0, 0, (off_t)size);
                        R.truncs++;
                        R.writes[C_OBJECT]++;
                }
        } else {
                mode_t v[] = {0666, 0644, 0660, 0604, 0700, 0400, 0000};
                if (fchmod(fd, PICK(v)) == 0) {
                        sleep_us(below(20000));
                        fchmod(fd, R.mode0);
                        R.chmods++;
                        R.writes[C_OBJECT]++;
                }
        }
}

/* ---- our own faults -------------------------------------------------------------------- */

/* A fault in our mapping means the object is shorter than it was (our own truncation, should
 * we ever touch it in the window, or anyone else's): put the size back and retry the access. */
static struct sigaction g_prev_bus; /* the engine's guard (our client's mapping), if any */

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
        unsigned char *addr = si->si_addr;
        if (g_base != NULL && addr >= g_base && addr < g_base + g_size && g_faults < 1000) {
                g_faults++;
                (void)!ftruncate(g_fd, g_size);
                return;
        }
        if (g_prev_bus.sa_flags & SA_SIGINFO)
                g_prev_bus.sa_sigaction(sig, si, uc);
        else if (g_prev_bus.sa_handler != SIG_DFL && g_prev_bus.sa_handler != SIG_IGN)
                g_prev_bus.sa_handler(sig);
        else
                signal(sig, SIG_DFL); /* the access faults again and ends us */
}

static void on_stop(int sig)
{
        (void)sig;
        g_stop = 1;
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
        fprintf(
            f,
            "usage: engine-rogue --name /SEG [--seconds S] [--seed N] [--quiet]\n"
            "                    [--only CATS] [--skip CATS]\n"
            "\n"
            "A faulty process of the segment's own user: attaches like a client (a session, %d\n"
            "streams, a few loans), then for S seconds (default 4) writes random and plausible\n"
            "but wrong values into every region of the segment, the kernel locks and the shm\n"
            "object, in bursts with short random pauses. For soak tests of the failure model.\n"
            "\n"
            "  -n, --name /SEG    the segment (required)\n"
            "  -s, --seconds S    how long (default 4; 0..86400)\n"
            "  -r, --seed N       the generator's seed (default 1): a seed replays the same\n"
            "                     choices (what they hit depends on timing)\n"
            "  -q, --quiet        no summary line at exit\n"
            "      --only CATS    only these categories (comma-separated)\n"
            "      --skip CATS    all but these\n"
            "  -h, --help         this text\n"
            "\n"
            "Categories: header locks records sched rings descriptors arena blocks payload\n"
            "object. Exit status 0 after S seconds (or SIGINT/SIGTERM), 1 if it cannot\n"
            "attach, 2 on bad usage.\n",
            OWN_STREAMS);
}

static int parse_u64(const char *s, uint64_t hi, uint64_t *out)
{
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 0);
        if (errno || end == s || *end || *s == '-' || v > hi)
                return -1;
        *out = v;
        return 0;
}

/* "a,b,c" -> mask of categories; -1 on an unknown name. */
static int parse_cats(const char *s, bool set[NCAT])
{
        memset(set, 0, sizeof(bool) * NCAT);
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", s);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int k = -1;
                for (int c = 0; c < NCAT; c++)
                        if (strcmp(t, cats[c].name) == 0)
                                k = c;
                if (k < 0) {
                        fprintf(stderr, "engine-rogue: unknown category '%s'\n", t);
                        return -1;
                }
                set[k] = true;
        }
        return 0;
}

static enum cat pick_cat(void)
{
        uint32_t x = below(R.total_weight);
        for (int c = 0; c < NCAT; c++) {
                if (!R.enabled[c])
                        continue;
                if (x < cats[c].weight)
                        return (enum cat)c;
                x -= cats[c].weight;
        }
        return C_HEADER; /* not reached: total_weight is the sum of the enabled weights */
}

/* Be a client: a session, a few streams, loans we keep. */
static int be_a_client(const char *name)
{
        eng_client_cfg_t cc = {.timeout_ms = 5000, .wait_ms = 2000};
        eng_client_t *c = NULL;
        int rc = eng_client_attach(name, &cc, &c);
        R.client = c;
        if (rc != 0) {
                fprintf(stderr, "engine-rogue: cannot attach to %s: %s\n", name,
                        *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                return 1;
        }
        for (int i = 0; i < OWN_STREAMS; i++) {
                eng_stream_t *s = NULL;
                rc = eng_stream_open(c, 9000 + (uint32_t)i, &s);
                R.own[i] = s;
                if (rc != 0) {
                        fprintf(stderr, "engine-rogue: cannot open a stream on %s: %s\n", name,
                                *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                        return 1;
                }
                uint32_t lens[] = {100, 4000, (64u << 10) - 64};
                for (int k = 0; k < 3; k++) {
                        void *p;
                        uint64_t off;
                        if (eng_stream_loan(s, lens[k], &p, &off, 1000) == 0)
                                memset(p, 0x5a, lens[k]);
                }
        }
        /* Kept as they are: the client is never used again, and nothing is closed at exit. */
        return 0;
}

int main(int argc, char **argv)
{
        const char *name = NULL;
        uint64_t seconds = 4, seed = 1;
        bool only[NCAT], skip[NCAT];
        bool have_only = false, have_skip = false;
        static const struct option lo[] = {
            {"name", required_argument, NULL, 'n'}, {"seconds", required_argument, NULL, 's'},
            {"seed", required_argument, NULL, 'r'}, {"quiet", no_argument, NULL, 'q'},
            {"only", required_argument, NULL, 'O'}, {"skip", required_argument, NULL, 'S'},
            {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "n:s:r:qh", lo, NULL)) != -1) {
                switch (ch) {
                case 'n':
                        name = optarg;
                        break;
                case 's':
                        if (parse_u64(optarg, 86400, &seconds) != 0) {
                                fprintf(stderr,
                                        "engine-rogue: --seconds wants 0..86400, not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'r':
                        if (parse_u64(optarg, UINT64_MAX, &seed) != 0) {
                                fprintf(stderr, "engine-rogue: --seed wants a number, not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'q':
                        R.quiet = true;
                        break;
                case 'O':
                        if (parse_cats(optarg, only) != 0)
                                return 2;
                        have_only = true;
                        break;
                case 'S':
                        if (parse_cats(optarg, skip) != 0)
                                return 2;
                        have_skip = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "engine-rogue: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        if (name == NULL) {
                fprintf(stderr, "engine-rogue: --name is required\n");
                usage(stderr);
                return 2;
        }
        for (int c = 0; c < NCAT; c++) {
                R.enabled[c] = (!have_only || only[c]) && !(have_skip && skip[c]);
                R.total_weight += R.enabled[c] ? cats[c].weight : 0;
        }
        if (R.total_weight == 0) {
                fprintf(stderr, "engine-rogue: no category left to run\n");
                return 2;
        }
        /* splitmix64 of the seed: nearby seeds give unrelated streams, and never 0 */
        uint64_t z = seed + 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        R.rng = (z ^ (z >> 31)) | 1;

        struct sigaction sa = {.sa_handler = on_stop};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        if (be_a_client(name) != 0)
                return 1;
        int rc = seg_attach(&R.sg, name);
        if (rc != 0) {
                fprintf(stderr, "engine-rogue: cannot map %s: %s\n", name, eng_errmsg());
                return 1;
        }
        struct stat st;
        if (fstat(R.sg.fd, &st) != 0) {
                fprintf(stderr, "engine-rogue: fstat %s: %s\n", name, strerror(errno));
                return 1;
        }
        R.mode0 = st.st_mode & 07777;
        R.depth = R.sg.depth;
        R.nrec_max = R.sg.max_streams;
        R.me = getpid();
        R.parent = getppid();
        R.server = R.sg.line0.server_pid;
        g_fd = R.sg.fd;
        g_size = (off_t)R.sg.size;
        g_base = R.sg.base;
        struct sigaction bus = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO};
        sigaction(SIGBUS, &bus, &g_prev_bus);

        uint64_t t0 = eng_now_ns(), end = t0 + seconds * 1000000000ull;
        while (!g_stop && eng_now_ns() < end) {
                enum cat c = pick_cat();
                unsigned n = 1 + below(MAX_BURST);
                switch (c) {
                case C_HEADER:
                        hit_header(n);
                        break;
                case C_LOCKS:
                        hit_locks(n);
                        break;
                case C_RECORDS:
                        hit_records(n);
                        break;
                case C_SCHED:
                        hit_sched(n);
                        break;
                case C_RINGS:
                        hit_rings(n);
                        break;
                case C_DESC:
                        hit_desc(n);
                        break;
                case C_ARENA:
                        hit_arena(n);
                        break;
                case C_BLOCKS:
                        hit_blocks(n);
                        break;
                case C_PAYLOAD:
                        hit_payload(n);
                        break;
                default:
                        hit_object();
                        break;
                }
                R.bursts++;
                claims_expire(false);
                sleep_us(PAUSE_MIN + below(PAUSE_SPAN + 1));
        }
        claims_expire(true);
        R.own_faults = (uint64_t)g_faults;
        if (!R.quiet) {
                uint64_t total = 0;
                for (int c = 0; c < NCAT; c++)
                        total += R.writes[c];
                char line[1024];
                int k = snprintf(line, sizeof(line),
                                 "engine-rogue: seed %llu, %.1f s, %llu bursts, %llu writes:",
                                 (unsigned long long)seed, (double)(eng_now_ns() - t0) / 1e9,
                                 (unsigned long long)R.bursts, (unsigned long long)total);
                for (int c = 0; c < NCAT && k > 0 && (size_t)k < sizeof(line); c++)
                        if (R.enabled[c])
                                k += snprintf(line + k, sizeof(line) - (size_t)k, " %s %llu",
                                              cats[c].name, (unsigned long long)R.writes[c]);
                if (k > 0 && (size_t)k < sizeof(line))
                        snprintf(line + k, sizeof(line) - (size_t)k,
                                 " (lock holds %llu, claims %llu with %llu claim locks, forged "
                                 "pushes %llu, truncations %llu, chmods %llu, own faults %llu)",
                                 (unsigned long long)R.holds, (unsigned long long)R.claims_made,
                                 (unsigned long long)R.claim_locks, (unsigned long long)R.pushes,
                                 (unsigned long long)R.truncs, (unsigned long long)R.chmods,
                                 (unsigned long long)R.own_faults);
                printf("%s\n", line);
        }
        return 0; /* the kernel lets go of our locks; the server reaps our records */
}
