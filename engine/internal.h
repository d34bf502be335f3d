/*
 * internal.h - private to engine/: the shared layout of the segment and of stream records,
 * and the helpers the server and client sides share. docs/ARCHITECTURE.md explains it.
 */
#ifndef ENG_INTERNAL_H
#define ENG_INTERNAL_H

#include <ck_ring.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "arena.h"
#include "eng_atomic.h"
#include "engine.h"

#define SEG_MAGIC 0x53474e45u /* "ENGS" */
#define SEG_VERSION                                                                                \
        6u /* 4: per-stream counters, engine counters and server facts (engine-stat);              \
              5: the control thread sleeps until woken (ctl_asleep, nudges), walks counted;        \
              6: SEG_OFFERS records on offer at once (offers[]) */

/*
 * Locks the kernel holds on byte ranges of the shm object, far beyond its end (a lock may lie
 * past EOF). Nothing in the segment can forge or keep them: the kernel drops them when their
 * holder goes. See "Locks the kernel holds" in docs/ARCHITECTURE.md.
 *   SERVER  OFD write lock: the serving process owns the name while it holds it (a client
 *           tests it with F_OFD_GETLK: a server lives, or is still formatting);
 *   BOOT    OFD write lock: the bootstrap lock around the hand-out (one per open file
 *           description, so two clients in one process exclude each other);
 *   CLAIM   POSIX write lock on the byte of one claim (record i, offered with GUID g: byte
 *           CLAIM + i * 2^20 + the low 20 bits of g[0]): a client holds it from its claim until
 *           it sees the server's answer; the server learns the claimer's pid from F_OFD_GETLK
 *           (l_pid), which no write to the segment can forge. The GUID is in the byte so that
 *           a lock a process still holds from an earlier claim of the same slot cannot vouch
 *           for a claim someone else makes in its name.
 */
#define SEG_LOCK_SERVER (1ll << 44)
#define SEG_LOCK_BOOT   ((1ll << 44) + 1)
#define SEG_LOCK_CLAIM  ((1ll << 44) + 4096)
static inline long long seg_claim_byte(uint32_t idx, uint64_t guid0)
{
        return SEG_LOCK_CLAIM + ((long long)idx << 20) + (long long)(guid0 & 0xfffff);
}

/*
 * Records on offer at once: hdr->offers[SEG_OFFERS], each slot an independent hand-out of one
 * record. With one offer, every open waited for the control thread to notice the claim and
 * offer the next record (a futex round trip on a busy machine: opens ran at 30-60 k/s); with
 * several, a client opens that many streams back to back while the control thread refills
 * the taken slots together, once per wake-up.
 *
 * offers[k].state: a generation (bits 31..2, bumped at every publication by the server) and a
 * state (bits 1..0, enum offer_state). The server publishes an offer without the bootstrap
 * lock: words first (guid, idx: relaxed stores), then this word with a new generation and UP.
 * A claimer, under the lock, acquires it, reads the words (relaxed), claims, and CASes UP into
 * TAKEN of the same generation: a claim that ends after the server already published the next
 * offer of the slot cannot mark that one taken.
 *
 * Discipline: every plain write is eng_store_release_u32 (the server: publish, withdraw at
 * stop, mark spent in offer_republish), so whoever acquires the word sees the offer's words
 * written before it; the claimer writes only with eng_cas_u32 from the exact word it read;
 * every read is eng_load_acquire_u32. Words are built with offer_word_next/offer_word_with.
 */
enum offer_state {
        OFFER_NONE = 0,  /* nothing on offer (before the first, or withdrawn at stop) */
        OFFER_UP = 1,    /* the slot's idx/guid name a record to claim */
        OFFER_TAKEN = 2, /* claimed, or spent (inconsistent, or its claim lock held) */
};
static inline uint32_t offer_state_of(uint32_t w)
{
        return w & 3u;
}
/* The word of the generation after w's, in state st (the server's publications). */
static inline uint32_t offer_word_next(uint32_t w, enum offer_state st)
{
        return (((w >> 2) + 1) << 2) | (uint32_t)st;
}
/* w's generation in state st (marking an offer taken). */
static inline uint32_t offer_word_with(uint32_t w, enum offer_state st)
{
        return (w & ~3u) | (uint32_t)st;
}

/* engine-reserved commands */
#define CMD_C_CLOSE 0x01f0u /* client: no more messages; please acknowledge */
#define CMD_S_CLOSE 0x02f0u /* server: close acknowledged */
#define CMD_S_ERROR 0x02f1u /* server: stream ended with error -arg */

/* server state (hdr->state) */
enum { SRV_STARTING = 1, SRV_READY = 2, SRV_STOPPING = 3, SRV_STOPPED = 4 };

/* record types and states (rec->state) */
enum { REC_STREAM = 1, REC_SESSION = 2 };
enum {
        ST_OFFERED = 1, /* server set it up and put it on offer */
        ST_CLAIMED = 2, /* a client took it (under the bootstrap mutex) */
        ST_OPEN = 3,    /* the server accepted it */
        ST_ENDED = 4,   /* the server ended it (close, error, shutdown, peer death) */
};

/* rec->sched: who owns the right to consume the client->server ring */
enum { RUN_IDLE = 0, RUN_QUEUED = 1, RUN_RUNNING = 2, RUN_AGAIN = 3, RUN_FIN = 4, RUN_POLLING = 5 };

/* waiting flags of a session (client). WAIT_YIELD is WAIT_SPIN (awake, no futex wake-up
 * needed) plus a hint: the client gave its CPU to the answering worker (client.c wait_slow) and
 * waits runnable behind it, so the worker hands the CPU back as soon as the answer is out. */
enum { WAIT_NONE = 0, WAIT_SPIN = 1, WAIT_SLEEP = 2, WAIT_YIELD = 3 };

/* A descriptor: 32 bytes, copied by value through ck_ring. */
struct eng_desc {
        uint16_t cmd;
        uint16_t flags;
        uint32_t len;
        uint64_t seq;
        uint64_t off;
        uint64_t arg;
};
_Static_assert(sizeof(struct eng_desc) == 32, "descriptor is 32 bytes");

CK_RING_PROTOTYPE(desc, eng_desc)

#define CL 64

/*
 * The mutex baseline's queue (transport "mutex"): the same slots and depth as the ring,
 * guarded by a process-shared robust mutex, with one condition variable signalled on every
 * push and pop (a queue cannot be full and empty at once, so its one producer and one
 * consumer never wait on it together).
 */
struct mq {
        pthread_mutex_t m;
        pthread_cond_t cv;
        uint32_t head; /* consumer counter */
        uint32_t tail; /* producer counter */
};

/* A channel's control block: a ck_ring (lock-free) or an mq (mutex), three cache lines. */
union rec_chan {
        struct ck_ring r;
        struct mq q;
        unsigned char lines[3 * 64];
};
_Static_assert(sizeof(struct mq) <= 3 * 64, "mq fits the ring's lines");

/* Counters of one direction of a stream (struct eng_rec cstat/sstat). */
struct rec_stat {
        uint64_t msgs;      /* descriptors sent (= the last sequence number) */
        uint64_t bytes;     /* their payload bytes */
        uint64_t opened_ns; /* sstat only: CLOCK_MONOTONIC when the server accepted it */
};

/*
 * A record body (the arena gives fixed-size slots; the body follows the arena's 64-byte slot
 * header). Lines are grouped by writer so that the two processes never write one cache line.
 *
 * Every word has one discipline, given with it. The server initialises the whole record
 * (plain and relaxed stores, the slot is nobody's yet) before it publishes state = OFFERED with
 * release; what it writes there is read by a claimer after its acquire of OFFERED.
 */
struct eng_rec {
        /* line 0: identity. Server writes before offering; client writes owner fields while it
         * holds the bootstrap lock; read-only afterwards. */
        /* ST_*: every store is eng_store_release_u32 (the words of the step it announces come
         * first: the claim's fields before CLAIMED, the server's last push before ENDED); every
         * load that goes on to read those is eng_load_acquire_u32. A relaxed load is only a hint
         * re-read with acquire before anything relies on it (the client's spin, spin_on). */
        uint32_t state;
        /* The claim: type, owner_pid, session, user_id. Relaxed stores by the claimer before its
         * release of CLAIMED; relaxed loads by the server after its acquire of CLAIMED, once
         * (accept_stream copies them). */
        uint32_t type;
        /* Written by the server before OFFERED; relaxed loads (the claimer, a client checking
         * that the record is still its own, the server comparing with its private copy). */
        uint64_t guid[2];
        uint64_t epoch; /* written before OFFERED; carries no authority (never read back) */
        int32_t owner_pid;
        uint32_t session; /* stream: record index of the client's session */
        uint32_t user_id;
        uint32_t depth; /* written before OFFERED; the claimer checks it (relaxed) */
        /* Server: "I stopped draining: wake me when you read a reply"; client clears it. Both
         * writes are rare (a full reply ring), so it shares the read-mostly identity line
         * rather than the sched line, which the client reads after every push. Relaxed stores
         * and loads, each side's store and load separated by a full fence (Dekker: the server
         * sets it, fences, re-checks its room; the client pops, fences, reads it). */
        uint32_t want_space;
        uint32_t pad0[3];
        /* line 1: scheduling word (RUN_*; client sets QUEUED/AGAIN/FIN, workers RUNNING/
         * POLLING/IDLE). Every change is eng_cas_u32 or eng_swap_u32 (full barriers: the state
         * machine in docs/ARCHITECTURE.md relies on it); loads are relaxed and only choose the
         * CAS to try, or are hints (reap_tick; sched_push under the asymmetric barrier). */
        _Alignas(CL) uint32_t sched;
        /* line 2: session wake-up (session records): server bumps, client sleeps.
         * wake: eng_faa_u32 by the server, eng_load_acquire_u32 and futex waits by the client.
         * waiting (WAIT_*): relaxed stores by the client, each followed by a full fence;
         * relaxed loads by the server, after a full fence: Dekker with the rings (see
         * eng_client_ticket and srv_wake_session). */
        _Alignas(CL) uint32_t wake;
        uint32_t waiting;
        /* Session: 1 + the CPU the worker that last answered it ran on (0: not known yet;
         * srv_wake_session, a relaxed store when it changes); the client stops spinning for answers
         * while it runs on that very CPU (spin_budget). A hint: a wrong value costs the client a
         * spin or a sleep. */
        uint32_t srv_cpu;
        /* Session: 1 while its client is inside an arena operation. Client: relaxed store of
         * 1, then a full fence (or the asymmetric barrier), then its look at the gate; release
         * store of 0 (its arena writes come first). Server: acquire loads (repair_arena). */
        uint32_t arena_op;
        /* lines 3..5 and 6..8: the two channels' control blocks (ring or mutex queue) */
        _Alignas(CL) union rec_chan c2s;
        _Alignas(CL) union rec_chan s2c;
        /* lines 9 and 10: each side's counters of what it sent on this stream, for tools
         * (engine-stat). Each has one writer: cstat the client, sstat the server (the worker
         * that holds the stream; opened_ns at accept). The writer keeps the truth privately
         * (struct chan_end) and publishes it with relaxed stores: no locked instruction on the
         * message path, and the line is nobody else's to write. Readers copy it (stat.c);
         * nothing relies on it. Zeroed with the record before it is offered. */
        _Alignas(CL) struct rec_stat cstat;
        _Alignas(CL) struct rec_stat sstat;
        /* then: struct eng_desc c2s_slots[depth], s2c_slots[depth] */
        _Alignas(CL) struct eng_desc slots[];
};
_Static_assert(offsetof(struct eng_rec, sched) == 64, "sched on its own line");
_Static_assert(offsetof(struct eng_rec, wake) == 128, "wake on its own line");
_Static_assert(offsetof(struct eng_rec, c2s) == 192, "rings after the control lines");
_Static_assert(offsetof(struct eng_rec, s2c) == 192 + 3 * CL, "rings are three lines each");
_Static_assert(offsetof(struct eng_rec, cstat) == 192 + 6 * CL, "counters after both rings");
_Static_assert(offsetof(struct eng_rec, slots) == 192 + 8 * CL, "slots after the counters");

static inline uint64_t rec_bytes(uint32_t depth)
{
        return sizeof(struct eng_rec) + 2ull * depth * sizeof(struct eng_desc);
}

#define SEG_OFFERS 8

/* One offer slot of the header (see enum offer_state). */
struct eng_offer {
        uint64_t guid[2];
        uint32_t idx;   /* record index on offer */
        uint32_t state; /* generation | enum offer_state */
};

/* The segment header: offset 0 of the segment. */
struct eng_seg_hdr {
        /* line 0: immutable after creation; magic is written last and read first. Written
         * while formatting (plain stores) and published by the release store of magic; an
         * attacher loads magic with acquire, then copies the line once (seg_attach_trust) and
         * uses only the copy. The server heals it the same way (magic last). */
        uint32_t magic;
        uint32_t version;
        uint32_t transport;
        uint32_t ring_depth;
        uint64_t size;
        uint64_t arena_off;
        uint64_t epoch;
        int32_t server_pid;
        uint32_t max_streams;
        uint32_t bitmap_words;
        uint32_t hdr_bytes;
        uint32_t asym; /* 1: the server issues membarrier(GLOBAL_EXPEDITED) (see sched_push) */
        /* line 1: server state (server writes). state (SRV_*): release stores, acquire loads.
         * arena_gate: 1 while the server repairs the arena (clients stay out); release stores
         * by the server (the repair's writes come first), acquire loads; a client's load
         * follows its arena_op store and a full fence (Dekker with repair_arena). */
        _Alignas(CL) uint32_t state;
        uint32_t arena_gate;
        /* line 2: worker wake-up (clients write). srv_wake: eng_faa_u32 and futex wakes by
         * whoever posts work, acquire load and futex wait by a worker going to sleep.
         * srv_sleepers: eng_faa_u32 by workers around their sleep (a locked add before the
         * re-scan), relaxed load by a poster after its locked CAS (of the ready bit, or of
         * sched before it): Dekker, see ready_post. srv_spinners: eng_faa_u32 by workers
         * around their idle spin (the decrement before the re-scan that precedes a sleep, or
         * before running what the spin found), relaxed load by a poster beside srv_sleepers:
         * a poster that sees a spinner wakes nobody (see ready_post). A hint like
         * srv_sleepers: a writer's value costs a wake-up too many or a tick's delay. */
        _Alignas(CL) uint32_t srv_wake;
        uint32_t srv_sleepers;
        uint32_t srv_spinners;
        /* line 3: bootstrap hand-out (the lock itself is SEG_LOCK_BOOT, held by the kernel).
         * boot_wake, ctl_wake, boot_seq: wake words, eng_faa_u32 and futex wakes by the waker,
         * acquire load and futex wait by the sleeper. boot_waiters: eng_faa_u32 by a waiter
         * before its second try, relaxed load after a full fence by the holder letting go. */
        _Alignas(CL) uint32_t boot_wake; /* clients waiting for an offer sleep here */
        uint32_t ctl_wake;               /* the server's control thread sleeps here */
        uint32_t boot_seq;               /* bumped when the bootstrap lock is let go with waiters */
        uint32_t boot_waiters;           /* processes waiting for the bootstrap lock (a hint) */
        /* 1 while the control thread sleeps without a timeout, 2 while it sleeps a tick, 0
         * while it runs (relaxed stores by it, each followed by a full fence before it
         * sleeps). A new holder of the bootstrap lock wakes it if 1 (seg_boot_trylock); a
         * claimer, after its locked add of ctl_wake, wakes it if non-zero and fewer than half
         * the offer slots are up (take_offer), and saves the system call while it runs. A
         * hint: a writer that clears it delays the notice of a claim until the next client's
         * unconditional nudges (no offer up, a state other than READY) or the next tick. */
        uint32_t ctl_asleep;
        /* Clients sleeping on boot_wake for an offer (eng_faa_u32 around the futex wait); the
         * control thread wakes boot_wake after an offer only if it reads non-zero (after its
         * locked add of boot_wake: Dekker). A hint: a writer that zeroes it costs a sleeper
         * one wait slice. */
        uint32_t boot_sleepers;
        /* lines 4..6: the offers. guid, idx: relaxed stores by the server before its release
         * of state, relaxed loads after an acquire of it. state: see enum offer_state. */
        _Alignas(CL) struct eng_offer offers[SEG_OFFERS];
        /* line: counters, statistics only: eng_faa_u64 by the server (ck_pr_faa, a locked add:
         * a full barrier on x86, though nothing relies on its order), read by tools */
        _Alignas(CL) uint64_t opens; /* streams accepted */
        uint64_t closes;             /* records given back (closed, aborted, reaped) */
        uint64_t ended;              /* streams the server ended (close handshake, error, stop) */
        uint64_t aborts;             /* streams the client gave up without a close */
        uint64_t reclaims;           /* records reclaimed from dead or vanished clients */
        uint64_t heals;   /* header, arena header, object or arena put right after a writer */
        uint64_t refused; /* descriptors refused (out of sequence, bad command, bad buffer) */
        uint64_t walks;   /* arena walks to give back a finalised record's buffers */
        /* line: facts about the server for tools, written (relaxed) before the release of
         * state = READY and never after: started_ns (CLOCK_MONOTONIC), workers, spin. */
        _Alignas(CL) uint64_t started_ns;
        uint32_t workers;
        uint32_t spin;
        /* then: the ready bitmap (uint64_t[bitmap_words]), its summary
         * (uint64_t[seg_summary_words(bitmap_words)]), then the arena */
};
/* Attachers of any build read line 0 at these offsets; the server and clients write lines 1
 * and 2 respectively. */
_Static_assert(offsetof(struct eng_seg_hdr, magic) == 0, "magic first");
_Static_assert(offsetof(struct eng_seg_hdr, asym) + sizeof(uint32_t) <= CL, "line 0 is one line");
_Static_assert(offsetof(struct eng_seg_hdr, state) == CL, "server state on line 1");
_Static_assert(offsetof(struct eng_seg_hdr, srv_wake) == 2 * CL, "workers' wake word on line 2");
_Static_assert(offsetof(struct eng_seg_hdr, boot_wake) == 3 * CL, "bootstrap from line 3");
_Static_assert(offsetof(struct eng_seg_hdr, offers) == 4 * CL, "offers from line 4");
_Static_assert(offsetof(struct eng_seg_hdr, opens) % CL == 0, "counters on their own line");
_Static_assert(offsetof(struct eng_seg_hdr, started_ns) == offsetof(struct eng_seg_hdr, opens) + CL,
               "server facts on the line after the counters");

/* ---- the segment (seg.c) ------------------------------------------------------------ */

/* Words of the ready set's summary: a bit per bitmap word. */
static inline uint32_t seg_summary_words(uint32_t bitmap_words)
{
        return (bitmap_words + 63) / 64;
}

struct eng_seg {
        int fd;
        unsigned char *base;
        uint64_t size;
        struct eng_seg_hdr *hdr;
        uint64_t *bitmap;
        /* One bit per bitmap word that may hold a set bit (sched.c), right after the bitmap:
         * seg_summary_words(bitmap_words) words. */
        uint64_t *summary;
        eng_arena_t arena;
        uint32_t depth;
        uint32_t max_streams;
        char name[256];
        /* private, taken once at create/attach */
        struct eng_seg_hdr line0; /* line 0 as validated (attach) or written (create) */
        dev_t dev;
        ino_t ino;
        bool serving;             /* created it: holds SEG_LOCK_SERVER on fd */
        uint32_t broken;          /* SIGBUS guard: shrunk, and the pages cannot be had again
                                   * (guard.c stores 1 with release; loads are acquire) */
        uint32_t restored;        /* SIGBUS guard: shrinks it undid (eng_faa_u32; acquire) */
        uint32_t ready_hi;        /* server: highest record index ever offered + 1 (bounds the
                                   * ready-set scan: not the shared record top, which a writer
                                   * can lower under live records). Private; written by the
                                   * control thread only, relaxed (see ready_words) */
        uid_t evicted_uid;        /* create: a foreign object under the name was removed */
        struct eng_seg *reg_next; /* every segment mapped in this process (seg.c) */
};

/*
 * What a client accepts (seg_attach_trust). The owner of the shm object must be the caller's
 * own uid, root, or `owner`; its permission bits must lie within `mode` (0: 0600), so that no
 * other user can read or write what goes through it. A segment that exists but is not ready
 * (its server is still formatting it, or healing a scribbled header) is waited for until
 * start_deadline if a server holds it; a segment that does not exist is waited for until
 * exist_deadline (0: fail at once). Deadlines are CLOCK_MONOTONIC ns.
 */
struct seg_trust {
        uid_t owner; /* (uid_t)-1: nobody besides ourselves and root */
        mode_t mode;
        uint64_t start_deadline;
        uint64_t exist_deadline;
        const volatile sig_atomic_t *interrupt; /* non-zero: stop waiting (-EINTR) */
};

int seg_create(struct eng_seg *sg, const char *name, uint64_t size, mode_t mode,
               eng_transport_t transport, uint32_t depth, uint32_t max_streams, uint32_t min_shift,
               uint32_t max_shift);
int seg_attach_trust(struct eng_seg *sg, const char *name, const struct seg_trust *t);
/* For inspection (tests, tools): the owner must be us or root, any mode, a 2 s wait for a
 * starting server. */
int seg_attach(struct eng_seg *sg, const char *name);
void seg_unmap(struct eng_seg *sg);
/* 1 while a server holds the name's object (SEG_LOCK_SERVER), 0 if none, -errno. The server
 * itself cannot ask (its own lock does not conflict with itself). */
int seg_server_alive(const struct eng_seg *sg);
/* 1 if another open file description holds the bootstrap lock, 0 if not, -errno. */
int seg_boot_held(const struct eng_seg *sg);

/* Record index -> record (NULL if the index is out of range). */
struct eng_rec *seg_rec(const struct eng_seg *sg, uint32_t idx);

/*
 * The bootstrap lock (SEG_LOCK_BOOT, an OFD lock on sg->fd). trylock: 0 or -EAGAIN. lock:
 * waits in slices until deadline (CLOCK_MONOTONIC ns): 0, -ETIMEDOUT, or whatever check(arg)
 * returns when it is not 0 (checked between slices: server gone, interrupted). Threads of one
 * process that share sg->fd do not exclude each other: the server serialises its own.
 */
int seg_boot_trylock(struct eng_seg *sg);
int seg_boot_lock(struct eng_seg *sg, uint64_t deadline, int (*check)(void *), void *arg);
void seg_boot_unlock(struct eng_seg *sg);
/* The claim lock of record idx offered with GUID guid0 (a POSIX lock: owned by this process).
 * 0 or -EAGAIN. */
int seg_claim_lock(struct eng_seg *sg, uint32_t idx, uint64_t guid0);
void seg_claim_unlock(struct eng_seg *sg, uint32_t idx, uint64_t guid0);
/* Who holds that claim lock: its pid (> 0), 0 if nobody, -1 if it is not a process's POSIX
 * lock (an OFD lock: no claim) or cannot be told. */
pid_t seg_claim_holder(const struct eng_seg *sg, uint32_t idx, uint64_t guid0);
/* Close a descriptor of a shm object. A POSIX lock belongs to the process and goes with the
 * close of ANY of its descriptors of that object: while a segment of the same object is mapped
 * in this process, the descriptor is kept open instead (closed with the last one). */
void seg_fd_close(int fd);
static inline struct eng_desc *rec_c2s_slots(struct eng_rec *r, uint32_t depth)
{
        (void)depth;
        return r->slots;
}
static inline struct eng_desc *rec_s2c_slots(struct eng_rec *r, uint32_t depth)
{
        return r->slots + depth;
}

/* Clock and futexes (wait.c). Shared (not FUTEX_PRIVATE_FLAG): they work across processes. */
int eng_futex_wait(uint32_t *word, uint32_t expect, int64_t timeout_ns);
void eng_futex_wake(uint32_t *word, int n);
/* eng_now_ns() is public (engine.h). */

/*
 * Rings (ring.c). Each endpoint keeps its own counter privately (the truth) and publishes it;
 * it reads the peer's counter from the segment. ck_ring does the slot arithmetic on a private
 * mirror whose size/mask come from our own configuration, so a peer that scribbles over the
 * shared ring header can make us read garbage descriptors (which are validated) but never
 * index outside the slots.
 */
struct ring_end {
        struct ck_ring *shared;
        struct eng_desc *slots;
        uint32_t mine; /* producer: p_tail; consumer: c_head */
        uint32_t peer; /* the peer's counter as last read (a bound that only grows stale) */
        uint32_t mask;
};
void ring_init_shared(struct ck_ring *r, uint32_t depth, uint32_t start);
void ring_attach(struct ring_end *e, struct ck_ring *shared, struct eng_desc *slots, uint32_t depth,
                 bool producer);
bool ring_push_spsc(struct ring_end *e, const struct eng_desc *d);
bool ring_pop_spsc(struct ring_end *e, struct eng_desc *d);
uint32_t ring_used(const struct ring_end *e); /* slots holding descriptors */
uint32_t ring_free(const struct ring_end *e); /* slots a producer can still fill */
/* Cheap checks from the cached peer counter, re-reading the shared one only when the cache
 * says no: "is there a descriptor to pop" (consumer) and "are n slots free" (producer). */
bool ring_ready(struct ring_end *e);
bool ring_room(struct ring_end *e, uint32_t n);

/*
 * Channels (chan.c): the one interface the server and client use for a direction of a
 * stream, whatever the transport. Lock-free: the ring_* functions above. Mutex: struct mq.
 * chan_send and chan_recv are the protocol's view (sequence-numbered descriptors); chan_push
 * and chan_pop move a descriptor as it is.
 */
struct chan_end {
        struct ring_end ring;
        struct rec_stat *stat; /* producer: the counters it publishes (NULL: none) */
        uint64_t bytes;        /* producer: payload bytes sent (the truth behind stat->bytes) */
        struct mq *q;
        struct eng_desc *slots;
        uint64_t seq; /* sequence number of the last descriptor sent (producer) or received */
        uint32_t mask;
        bool mutex;
        bool producer;
};
void chan_init_shared(union rec_chan *c, eng_transport_t t, uint32_t depth, uint32_t start);
void chan_attach(struct chan_end *e, union rec_chan *c, struct eng_desc *slots, uint32_t depth,
                 eng_transport_t t, bool producer);
bool chan_push(struct chan_end *e, const struct eng_desc *d);
bool chan_pop(struct chan_end *e, struct eng_desc *d);
/* Producer: push the descriptor {cmd, len, arg, off} with the next sequence number. true: sent
 * (the sequence advances); false: the channel is full (nothing changed). */
bool chan_send(struct chan_end *e, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len);
/* Consumer: pop a descriptor into *d. 1: the next in sequence (the sequence advances); 0:
 * nothing to receive; -EPROTO: out of sequence (lost, duplicated or forged; *d holds it, and
 * the descriptor expected was e->seq + 1). */
int chan_recv(struct chan_end *e, struct eng_desc *d);
uint32_t chan_used(const struct chan_end *e);
uint32_t chan_free(const struct chan_end *e);
bool chan_ready(struct chan_end *e);            /* consumer: chan_used() > 0, cheaply */
bool chan_room(struct chan_end *e, uint32_t n); /* producer: chan_free() >= n, cheaply */

/* Wake the server's control thread. It sleeps on ctl_wake, without a timeout when nothing is
 * due (ctl.c ctl_sleep): whoever needs it (a claim, a client that finds the header, the offer or
 * its requests not attended to) moves the word and wakes it. Anyone may; at worst the server
 * looks once for nothing. */
static inline void eng_ctl_nudge(struct eng_seg_hdr *h)
{
        eng_faa_u32(&h->ctl_wake, 1);
        eng_futex_wake(&h->ctl_wake, 1);
}
/* Mutex transport only: if the queue is full (producer) or empty (consumer), sleep on its
 * condition variable once, at most until deadline (CLOCK_MONOTONIC ns). The lock-free
 * transport waits on the session word instead (client.c); this returns at once for it. */
void chan_wait(struct chan_end *e, uint64_t deadline);

/* Ready set (sched.c): one bit per record index, in the segment after the header. Bits are
 * set and cleared only by CAS (full barriers) and read relaxed; a bit is a hint (a worker
 * validates the stream against its private table). */
bool ready_set(struct eng_seg *sg, uint32_t idx); /* true if the bit was clear */
bool ready_take(struct eng_seg *sg, uint32_t *cursor, uint32_t *idx);
bool ready_any(struct eng_seg *sg);
bool ready_queued(struct eng_seg *sg); /* the summary says some bit may be set (a hint) */
void ready_post(struct eng_seg *sg, uint32_t idx);
void ready_wake(struct eng_seg *sg);

/* Schedule a stream for the server's workers (client side, after publishing work; sched.c). */
void sched_stream(struct eng_seg *sg, struct eng_rec *r, uint32_t idx);
/*
 * The asymmetric barrier (membarrier(2), sched.c): a client registered for it skips the full
 * fence between its ring publication and its read of sched when that read says POLLING; a worker
 * that takes a stream out of POLLING calls eng_asym_heavy() between its CAS and its second
 * look at the ring. The arena gate uses it the same way (the client's arena_op store and gate
 * load; repair_arena's gate store and arena_op loads). Both return false / do nothing where
 * the kernel cannot.
 */
bool eng_asym_supported(void); /* server: can issue the heavy side (checked once) */
bool eng_asym_register(void);  /* client: register this process for it */
void eng_asym_heavy(void);     /* server: every registered thread passes a full barrier */
/* Client's last touch of a record: sched := FIN (and schedule it if it was idle). */
void sched_fin(struct eng_seg *sg, struct eng_rec *r, uint32_t idx);

/* The calling thread's message for the user, read back by eng_errmsg() (err.c). */
void eng_set_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* -EMSGSIZE for a loan of len bytes over max (the arena's largest), with a message that names
 * the limit and what raises it. */
int eng_err_msgsize(uint32_t len, uint64_t max);

/* The SIGBUS guard of a mapped segment (guard.c): a shrink of the object by another process
 * is undone in the fault handler (*restored counts it); *broken is set if it cannot be.
 * seg.c guards every segment it maps from the moment it is mapped until it is unmapped. */
void eng_guard_add(void *base, uint64_t size, int fd, uint32_t *broken, uint32_t *restored);
void eng_guard_remove(void *base);

#endif
