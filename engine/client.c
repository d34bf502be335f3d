/*
 * client.c - the client runtime: attach, a session record (the client's wake-up word), the
 * bootstrap hand-out, streams, loans, send/recv, and waiting with a way out of every wait.
 */
#include <errno.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define SLICE_NS (50 * 1000000ll) /* longest single sleep: liveness is checked between */

/* Loans of at most one smallest-class block are served from a per-stream cache refilled
 * this many blocks at a time (at most 16 x 4 KiB held per stream with the default classes). */
#define LOAN_CACHE 16

struct eng_stream {
        eng_client_t *c;
        uint32_t idx;
        uint32_t user_id; /* the caller's id for the stream, used in messages */
        uint32_t owner;
        uint64_t guid[2]; /* the record's GUID when we claimed it: ours while it matches */
        bool claim_held;  /* we hold the record's claim lock (until the server's answer) */
        struct eng_rec *rec;
        struct chan_end out; /* c2s, we produce (and count what we sent) */
        struct chan_end in;  /* s2c, we consume (and count what we received) */
        int ended; /* 0, or the error the stream ended with (-EPIPE when closed by the server) */
        /* Small loans come from blocks taken off the arena LOAN_CACHE at a time (one CAS), already
         * stamped as this stream's: a crash leaves them to the server's reclaim like any loan. */
        uint32_t ncache;
        uint64_t cache[LOAN_CACHE];
        /* Blocks of this stream in the caller's hands: loans not yet sent or given back,
         * replies received and not yet released. Told to the server in our CLOSE: 0 lets it
         * skip the arena walk when it finalises the stream (srv_finalize). Private; misuse
         * (a block given back twice) only makes it nonzero, which costs a walk. */
        int64_t held;
        eng_stream_t *prev, *next;   /* the client's streams (stuck_requests) */
        eng_stream_t *cprev, *cnext; /* while claim_held: the client's claims list */
        bool unflushed;              /* eng_stream_try_send_more queued without telling */
};

struct eng_client {
        struct eng_seg sg;
        eng_client_cfg_t cfg;
        pid_t server_pid;
        int server_pidfd;
        eng_stream_t *session;
        eng_transport_t transport; /* private copy, taken (and validated) at attach */
        uint64_t small_len;        /* loans up to this many bytes use the stream's cache */
        bool asym;                 /* registered for the server's membarrier (sched_push) */
        eng_stream_t *streams;     /* every stream of ours (the session too), for stuck_requests */
        eng_stream_t *claims;      /* streams still holding their claim lock (claims_settle) */
        /* Adaptive spin budgets (spin_budget), <= cfg.spin, one per kind of wait: for a
         * worker's answer, and for the control thread's next offer */
        struct spin_state {
                uint32_t cur, probe;
                bool peer_here; /* the last answer came from a worker on our CPU */
        } spin_ans, spin_offer;
        uint32_t offer_pos; /* the offer slot after our last claim (take_offer) */
};

/* ---- liveness ----------------------------------------------------------------------- */

int eng_client_check_server(eng_client_t *c)
{
        /* The kernel's word, not the segment's: the server holds SEG_LOCK_SERVER on this very
         * object from before formatting until it lets go of the name (stop, or death, however
         * it dies), and no write to the segment can forge or keep it. The server process's
         * pidfd (from the pid in the header at attach) is a second, cheaper sign. A new server
         * on the name never reuses this object: what we map stays the old epoch's. */
        if (seg_server_alive(&c->sg) == 0)
                return -EPIPE;
        if (eng_load_acquire_u32(&c->sg.broken)) {
                eng_set_err("the segment was shrunk by another process and cannot be restored");
                return -EPIPE;
        }
        if (c->server_pidfd >= 0) {
                struct pollfd p = {.fd = c->server_pidfd, .events = POLLIN};
                if (poll(&p, 1, 0) == 1)
                        return -EPIPE; /* the server process exited */
        } else if (kill(c->server_pid, 0) != 0 && errno == ESRCH) {
                return -EPIPE;
        }
        return 0;
}

static int64_t remaining_ns(uint64_t deadline)
{
        uint64_t now = eng_now_ns();
        return now >= deadline ? 0 : (int64_t)(deadline - now);
}

/* For spin loops: has the deadline passed? Looks at the clock once every 1024 spins (a few
 * microseconds), so that a large spin setting cannot outlast the caller's timeout. */
static bool spun_out(uint32_t i, uint64_t deadline)
{
        return (i & 1023u) == 1023u && remaining_ns(deadline) == 0;
}

/* The cheap half of eng_client_check_server (one poll of the server's pidfd), for paths that
 * run once per stream open. */
static bool server_exited(eng_client_t *c)
{
        if (c->server_pidfd < 0)
                return false;
        struct pollfd p = {.fd = c->server_pidfd, .events = POLLIN};
        return poll(&p, 1, 0) == 1;
}

static bool interrupted(const eng_client_t *c)
{
        return c->cfg.interrupt != NULL && *c->cfg.interrupt != 0;
}

/* Between wait slices: the server still there, the caller not interrupted. */
static int wait_check(eng_client_t *c)
{
        if (interrupted(c)) {
                eng_set_err("interrupted");
                return -EINTR;
        }
        return eng_client_check_server(c);
}

static uint64_t deadline_of(eng_client_t *c, int timeout_ms)
{
        if (timeout_ms < 0)
                timeout_ms = (int)c->cfg.timeout_ms;
        return eng_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

/* ---- waiting ------------------------------------------------------------------------ */

uint32_t eng_client_ticket(eng_client_t *c)
{
        struct eng_rec *sr = c->session->rec;
        eng_store_relaxed_u32(&sr->waiting, WAIT_SPIN);
        /* Full fence: `waiting` is visible before we look at any ring (Dekker with the
         * server's publish-fence-read in srv_wake_session). */
        eng_fence_full();
        return eng_load_acquire_u32(&sr->wake);
}

static int wait_slow(eng_client_t *c, uint32_t ticket, uint64_t deadline);

/* Wait for the session's wake word to move past ticket; leaves `waiting` at NONE so the
 * server stops paying for wake-ups nobody waits for. */
static int wait_until(eng_client_t *c, uint32_t ticket, uint64_t deadline)
{
        int rc = wait_slow(c, ticket, deadline);
        eng_store_relaxed_u32(&c->session->rec->waiting, WAIT_NONE);
        return rc;
}

/*
 * Requests of ours the server has not taken for a whole slice of sleep. The server's control
 * thread sleeps without a timeout when all is calm; normally our push wakes a worker and that is
 * all it takes. But the scheduling words are writable by any process: one rewritten while the
 * server slept could leave our stream unscheduled, and nothing on the server's side would look
 * again. So a client whose requests sit in its ring while it sleeps wakes the control thread,
 * which re-posts what a writer undid (reap_tick). An idle client (nothing pushed) never does.
 */
static bool stuck_requests(eng_client_t *c)
{
        for (eng_stream_t *s = c->streams; s != NULL; s = s->next)
                if (s->ended == 0 && chan_used(&s->out) > 0)
                        return true;
        return false;
}

/*
 * How long to spin before sleeping: adaptive, between 0 and cfg.spin. Spinning pays only when
 * the answer comes while we spin: from a server running on another CPU. It costs when it cannot:
 * traffic sparser than the budget (the answer needs a worker woken from sleep), or a server
 * that needs the very CPU we spin on (same core, or more runnable threads than CPUs): then each
 * spin delays the answer by its whole length. So a spin that ends in the answer restores the
 * full budget (cfg.spin) and one that ends in sleep halves it; one wait in 256 spins the full
 * cfg.spin as a probe, so a budget driven to 0 by sparse traffic comes back once traffic is
 * dense again. (The worker's idle spin adapts the same way: worker.c.)
 *
 * One budget per kind of wait, because their peers differ: answers come from workers, offers
 * from the control thread, which may be slower (it carves and clears the next record). With
 * one shared budget, opening 10,000 streams (offer waits lost to the control thread's page
 * faults) could leave the budget at 0 for the 10,000 closes that followed, whose answers come
 * within a microsecond or two: each close slept and was woken (0.13 s instead of 0.02 s).
 */
static uint32_t spin_budget(const eng_client_t *c, struct spin_state *st)
{
        if (st->peer_here)
                return 0;
        if (st->cur < c->cfg.spin && (++st->probe & 255u) == 0)
                return c->cfg.spin;
        return st->cur;
}

static void spin_won(const eng_client_t *c, struct spin_state *st)
{
        st->cur = c->cfg.spin;
}

static void spin_lost(struct spin_state *st)
{
        st->cur /= 2;
}

/*
 * After an answer: did it come from a worker on our own CPU? Then spinning for the next one
 * can only delay it (the worker needs the CPU we would spin on), whatever the budget says: the
 * answer is waited for asleep until one comes from another CPU. The worker says where it ran
 * (srv_cpu, written when it changes); sched_getcpu reads the rseq area, no system call. This
 * is what makes one client and one server pinned to one CPU (or sharing it by chance) cost
 * what a pipe costs, not a spin per round trip.
 */
static void spin_peer(eng_client_t *c, struct spin_state *st)
{
        uint32_t cpu = (uint32_t)sched_getcpu() + 1; /* as the worker writes it: 0 unknown */
        st->peer_here = cpu != 0 && eng_load_relaxed_u32(&c->session->rec->srv_cpu) == cpu;
}

static int wait_slow(eng_client_t *c, uint32_t ticket, uint64_t deadline)
{
        struct eng_rec *sr = c->session->rec;
        uint32_t budget = spin_budget(c, &c->spin_ans);
        for (uint32_t i = 0; i < budget && !spun_out(i, deadline); i++) {
                if (eng_load_acquire_u32(&sr->wake) != ticket) {
                        spin_won(c, &c->spin_ans);
                        goto woken;
                }
                eng_cpu_relax();
        }
        if (budget != 0)
                spin_lost(&c->spin_ans);
        /* The answering worker runs on our CPU (spin_peer): give it the CPU once before going
         * to sleep. While we are SPIN (not SLEEP) its answer bumps `wake` without a futex
         * wake-up, so a round trip on one CPU costs a yield instead of a futex wait and wake
         * on the shared mapping (each looks up the page's key). If it is not there after all
         * (it moved, it is not runnable yet), the yield returns at once and we sleep. */
        if (c->spin_ans.peer_here) {
                /* Still awake as far as the wake-up goes (not NONE: the worker bumps `wake`,
                 * and no futex wake-up, as for SPIN); YIELD asks it to give the CPU back once
                 * the answer is out, rather than after the rest of its turn and its way to
                 * sleep. A hint, so a relaxed store: read as SPIN, it costs that wait only. */
                eng_store_relaxed_u32(&sr->waiting, WAIT_YIELD);
                sched_yield();
                if (eng_load_acquire_u32(&sr->wake) != ticket)
                        goto woken;
        }
        /* The server's liveness costs two system calls: look after each slice we slept, not
         * before the first (a server that died is still noticed within one slice). */
        for (bool slept = false;; slept = true) {
                eng_store_relaxed_u32(&sr->waiting, WAIT_SLEEP);
                eng_fence_full();
                if (eng_load_acquire_u32(&sr->wake) != ticket)
                        goto woken;
                int rc = slept ? wait_check(c) : interrupted(c) ? -EINTR : 0;
                if (rc != 0)
                        return rc;
                if (slept && stuck_requests(c))
                        eng_ctl_nudge(c->sg.hdr);
                int64_t left = remaining_ns(deadline);
                if (left == 0)
                        return -ETIMEDOUT;
                eng_futex_wait(&sr->wake, ticket, left < SLICE_NS ? left : SLICE_NS);
        }
woken:
        spin_peer(c, &c->spin_ans);
        return 0;
}

int eng_client_wait(eng_client_t *c, uint32_t ticket, int timeout_ms)
{
        return wait_until(c, ticket, deadline_of(c, timeout_ms));
}

/*
 * Wait until one direction of one stream may have changed. Lock-free transport: the session
 * word (ticket taken before the caller's attempt). Mutex transport: spin polling the queue,
 * then its condition variable (the baseline waits the way a mutex design would).
 */
static int stream_wait(eng_client_t *c, struct chan_end *ch, uint32_t ticket, uint64_t deadline)
{
        if (!ch->mutex)
                return wait_until(c, ticket, deadline);
        eng_store_relaxed_u32(&c->session->rec->waiting, WAIT_NONE);
        for (uint32_t i = 0; i < c->cfg.spin && !spun_out(i, deadline); i++) {
                if (ch->producer ? chan_free(ch) > 0 : chan_used(ch) > 0)
                        return 0;
                eng_cpu_relax();
        }
        int rc = wait_check(c);
        if (rc != 0)
                return rc;
        int64_t left = remaining_ns(deadline);
        if (left == 0)
                return -ETIMEDOUT;
        chan_wait(ch, eng_now_ns() + (uint64_t)(left < SLICE_NS ? left : SLICE_NS));
        return 0;
}

/* ---- the hand-out ------------------------------------------------------------------- */

static int boot_check(void *arg)
{
        return wait_check(arg);
}

/*
 * Take the record on offer as a stream (or session) of ours. Under the bootstrap lock (a lock
 * the kernel holds: a process that dies holding it lets go of it, and nothing in the segment
 * can forge a holder), we check the offer, take the record's claim lock (the kernel tells the
 * server our pid from it), write the claim and publish CLAIMED, then mark the offer taken.
 * deadline 0: do not wait (-EAGAIN if the lock is held or nothing is on offer).
 */
static int take_offer(eng_client_t *c, uint32_t type, uint32_t user_id, uint32_t session,
                      uint32_t *idx_out, uint64_t guid[2], uint64_t deadline)
{
        struct eng_seg *sg = &c->sg;
        struct eng_seg_hdr *h = sg->hdr;
        uint64_t not_ready = 0; /* since when the header has said the server is not READY */
        for (;;) {
                int rc = deadline == 0 ? seg_boot_trylock(sg)
                                       : seg_boot_lock(sg, deadline, boot_check, c);
                if (rc == -ETIMEDOUT)
                        eng_set_err("the bootstrap lock stayed held by another process");
                if (rc != 0)
                        return rc;
                /* Stopping or gone: an offer still up would never be served. The state is in the
                 * writable header, which the server puts back within a tick (50 ms): believe
                 * "not READY" once it has lasted longer than that. (The kernel lock's word,
                 * which also covers a pid forged at attach, is asked by the waits below.) */
                bool ready = eng_load_acquire_u32(&h->state) == SRV_READY;
                if (!ready && not_ready == 0)
                        not_ready = eng_now_ns();
                if (ready)
                        not_ready = 0;
                if (server_exited(c) || (!ready && eng_now_ns() - not_ready > 60 * 1000000ull)) {
                        seg_boot_unlock(sg);
                        eng_set_err("the server is stopping or gone");
                        return -EPIPE;
                }
                if (!ready) {
                        seg_boot_unlock(sg);
                        eng_ctl_nudge(h); /* a writer's state: the server puts it back */
                        if (deadline == 0)
                                return -EAGAIN;
                        if ((rc = wait_check(c)) != 0)
                                return rc;
                        if (remaining_ns(deadline) == 0)
                                return -ETIMEDOUT;
                        usleep(5000);
                        continue;
                }
                /* Any slot (from where our last claim left off, so that clients that open
                 * at the same moment spread over the slots). Acquire: a slot's words were
                 * written before the word that publishes them. */
                bool again = false, spent = false;
                uint32_t up = 0; /* slots still up besides the one we claim */
                int64_t got = -1;
                uint64_t g0 = 0, g1 = 0;
                for (uint32_t n = 0; n < SEG_OFFERS; n++) {
                        uint32_t k = (c->offer_pos + n) % SEG_OFFERS;
                        struct eng_offer *o = &h->offers[k];
                        uint32_t w = eng_load_acquire_u32(&o->state);
                        if (offer_state_of(w) != OFFER_UP)
                                continue;
                        if (got >= 0) {
                                up++;
                                continue;
                        }
                        uint32_t taken = offer_word_with(w, OFFER_TAKEN);
                        /* Read the offer once; check and use the copies. */
                        uint32_t idx = eng_load_relaxed_u32(&o->idx);
                        g0 = eng_load_relaxed_u64(&o->guid[0]);
                        g1 = eng_load_relaxed_u64(&o->guid[1]);
                        struct eng_rec *r = seg_rec(sg, idx);
                        uint32_t seen;
                        if (r != NULL && eng_load_acquire_u32(&r->state) == ST_OFFERED &&
                            eng_load_relaxed_u64(&r->guid[0]) == g0 &&
                            eng_load_relaxed_u64(&r->guid[1]) == g1 &&
                            eng_load_relaxed_u32(&r->depth) == sg->depth &&
                            seg_claim_lock(sg, idx, g0) == 0) {
                                eng_store_relaxed_u32((uint32_t *)&r->owner_pid,
                                                      (uint32_t)getpid());
                                eng_store_relaxed_u32(&r->type, type);
                                eng_store_relaxed_u32(&r->user_id, user_id);
                                eng_store_relaxed_u32(&r->session, session);
                                /* Release: the owner fields are visible before CLAIMED. */
                                eng_store_release_u32(&r->state, ST_CLAIMED);
                                /* This generation's offer is taken; if the server already saw
                                 * CLAIMED and published the next one, leave that one alone. */
                                eng_cas_u32(&o->state, w, taken, &seen);
                                got = idx;
                                c->offer_pos = k + 1;
                                continue; /* count the slots still up */
                        }
                        /* Inconsistent (the server published the next offer while we read
                         * this one: look again), or scribbled, or its claim lock is held by
                         * someone else: mark it spent so the server decides the record and
                         * offers another. */
                        if (!eng_cas_u32(&o->state, w, taken, &seen))
                                again = true;
                        else
                                spent = true;
                }
                if (got >= 0) {
                        seg_boot_unlock(sg);
                        /* Wake the control thread to decide it and refill the slot. A locked
                         * add, then the read (Dekker with ctl_sleep's store, fence and futex
                         * compare); no system call while it runs, nor while it naps with
                         * half the slots or more still up: it refills them all at
                         * its next look (a tick at most), and a claim needs no control thread
                         * to be accepted (a worker finds our claim lock). A calm sleeper
                         * (ctl_asleep 1) was woken by our bootstrap lock already. */
                        eng_faa_u32(&h->ctl_wake, 1);
                        if (spent ||
                            (eng_load_relaxed_u32(&h->ctl_asleep) != 0 && up < SEG_OFFERS / 2))
                                eng_futex_wake(&h->ctl_wake, 1);
                        *idx_out = (uint32_t)got;
                        guid[0] = g0;
                        guid[1] = g1;
                        return 0;
                }
                if (spent) {
                        eng_faa_u32(&h->ctl_wake, 1);
                        eng_futex_wake(&h->ctl_wake, 1);
                }
                if (again) {
                        seg_boot_unlock(sg);
                        continue;
                }
                /* Nothing on offer yet: sleep until the server offers (read the word while we
                 * hold the lock, so an offer made after we unlock changes it). */
                uint32_t seq = eng_load_acquire_u32(&h->boot_wake);
                seg_boot_unlock(sg);
                /* The server offers the next record as soon as it sees a claim, which wakes
                 * it; if none is up, it may be asleep with the offer's words overwritten (it
                 * republishes them when it looks) or full: wake it either way. */
                eng_ctl_nudge(h);
                if (deadline == 0)
                        return -EAGAIN;
                rc = wait_check(c);
                if (rc != 0)
                        return rc;
                int64_t left = remaining_ns(deadline);
                if (left == 0) {
                        eng_set_err("no stream record offered in time (the segment holds %u "
                                    "records: all in use?)",
                                    sg->max_streams);
                        return -ETIMEDOUT;
                }
                /* Opening streams back to back, the next offer is a few microseconds away
                 * (the control thread refills the slots at the wake-up of our last claims):
                 * spin for it as for an answer, then sleep. */
                uint32_t budget = spin_budget(c, &c->spin_offer);
                bool moved = false;
                for (uint32_t i = 0; i < budget && !moved && !spun_out(i, deadline); i++) {
                        moved = eng_load_acquire_u32(&h->boot_wake) != seq;
                        if (!moved)
                                eng_cpu_relax();
                }
                if (moved) {
                        spin_won(c, &c->spin_offer);
                        continue;
                }
                if (budget != 0)
                        spin_lost(&c->spin_offer);
                eng_faa_u32(&h->boot_sleepers, 1); /* then the kernel compares boot_wake */
                eng_futex_wait(&h->boot_wake, seq, left < SLICE_NS ? left : SLICE_NS);
                eng_faa_u32(&h->boot_sleepers, (uint32_t)-1);
        }
}

static eng_stream_t *stream_new(eng_client_t *c, uint32_t idx, const uint64_t guid[2])
{
        eng_stream_t *s = calloc(1, sizeof(*s));
        if (s == NULL)
                return NULL;
        struct eng_rec *r = seg_rec(&c->sg, idx);
        s->c = c;
        s->idx = idx;
        s->owner = idx + 1;
        s->guid[0] = guid[0];
        s->guid[1] = guid[1];
        s->claim_held = true;
        s->rec = r;
        chan_attach(&s->out, &r->c2s, rec_c2s_slots(r, c->sg.depth), c->sg.depth, c->transport,
                    true);
        s->out.stat = &r->cstat;
        chan_attach(&s->in, &r->s2c, rec_s2c_slots(r, c->sg.depth), c->sg.depth, c->transport,
                    false);
        s->next = c->streams;
        if (c->streams)
                c->streams->prev = s;
        c->streams = s;
        s->cnext = c->claims;
        if (c->claims)
                c->claims->cprev = s;
        c->claims = s;
        return s;
}

/* Let go of the stream's claim lock (the server has answered, or the stream ends). */
static void claim_release(eng_stream_t *s)
{
        if (!s->claim_held)
                return;
        seg_claim_unlock(&s->c->sg, s->idx, s->guid[0]);
        s->claim_held = false;
        if (s->cprev)
                s->cprev->cnext = s->cnext;
        else
                s->c->claims = s->cnext;
        if (s->cnext)
                s->cnext->cprev = s->cprev;
        s->cprev = s->cnext = NULL;
}

/*
 * Before each claim: let go of the claim locks the server has answered (state no longer
 * CLAIMED). The kernel keeps a process's POSIX locks on an inode in one list that every lock
 * operation on that inode walks, ours and the server's F_OFD_GETLK alike: 10,000 streams opened
 * and not yet touched again held 10,000 locks, and each further open cost ~1 ms (900 opens/s).
 * Only the claims still unanswered are held, a handful.
 */
static void claims_settle(eng_client_t *c)
{
        for (eng_stream_t *s = c->claims, *n; s != NULL; s = n) {
                n = s->cnext;
                if (eng_load_acquire_u32(&s->rec->state) != ST_CLAIMED)
                        claim_release(s);
        }
}

static void stream_free(eng_stream_t *s)
{
        if (s->prev)
                s->prev->next = s->next;
        else
                s->c->streams = s->next;
        if (s->next)
                s->next->prev = s->prev;
        free(s);
}

int eng_client_attach(const char *name, const eng_client_cfg_t *cfg, eng_client_t **out)
{
        eng_client_t *c = calloc(1, sizeof(*c));
        if (c == NULL)
                return -ENOMEM;
        if (cfg)
                c->cfg = *cfg;
        if (c->cfg.spin == 0)
                c->cfg.spin = 4096;
        c->spin_ans.cur = c->spin_offer.cur = c->cfg.spin;
        if (c->cfg.timeout_ms == 0)
                c->cfg.timeout_ms = 10000;
        c->server_pidfd = -1;
        name = name ? name : "/engine-default";
        uint64_t now = eng_now_ns();
        struct seg_trust t = {.owner = c->cfg.owner_uid != 0 ? c->cfg.owner_uid : (uid_t)-1,
                              .mode = c->cfg.mode,
                              .start_deadline = now + (uint64_t)c->cfg.timeout_ms * 1000000ull,
                              .exist_deadline =
                                  c->cfg.wait_ms ? now + (uint64_t)c->cfg.wait_ms * 1000000ull : 0,
                              .interrupt = c->cfg.interrupt};
        if (t.exist_deadline > t.start_deadline)
                t.start_deadline = t.exist_deadline;
        int rc = seg_attach_trust(&c->sg, name, &t);
        if (rc != 0) {
                free(c);
                return rc;
        }
        /* Everything below comes from the line-0 copy seg_attach validated (read once). */
        const struct eng_seg_hdr *h = &c->sg.line0;
        c->transport = (eng_transport_t)h->transport;
        c->server_pid = h->server_pid;
        c->server_pidfd = (int)syscall(SYS_pidfd_open, c->server_pid, 0);
        c->asym = h->asym == 1 && c->transport == ENG_TRANSPORT_LOCKFREE && eng_asym_register();
        /* Loans up to a page's payload use the stream's cache (its blocks all of the class of
         * the loan that last refilled it); larger ones are rarer per byte and go to the arena. */
        c->small_len = eng_arena_kind(&c->sg.arena) == ENG_ARENA_LOCKFREE
                           ? eng_arena_class_bytes(&c->sg.arena, 4096 - ENG_ARENA_HDR_BYTES)
                           : 0;
        /* Attach waited for the header; the state follows right after it (a server that just
         * wrote its magic is about to say READY): wait for that too, within the same time. */
        for (;;) {
                bool alive = eng_client_check_server(c) == 0;
                if (alive && eng_load_acquire_u32(&c->sg.hdr->state) == SRV_READY)
                        break;
                if (!alive || eng_now_ns() >= t.start_deadline) {
                        eng_set_err("segment %s exists but its server (pid %d) is not serving",
                                    name, (int)c->server_pid);
                        rc = -ECONNREFUSED;
                        goto fail;
                }
                if (interrupted(c)) {
                        eng_set_err("interrupted");
                        rc = -EINTR;
                        goto fail;
                }
                eng_ctl_nudge(c->sg.hdr); /* a state a writer changed: the server puts it back */
                usleep(2000);
        }
        uint32_t idx;
        uint64_t guid[2];
        rc = take_offer(c, REC_SESSION, 0, 0, &idx, guid, deadline_of(c, -1));
        if (rc != 0)
                goto fail;
        c->session = stream_new(c, idx, guid);
        if (c->session == NULL) {
                rc = -ENOMEM;
                goto fail;
        }
        /* Let the server accept the session now: streams refer to it. */
        sched_stream(&c->sg, c->session->rec, idx);
        *out = c;
        return 0;
fail:
        if (c->server_pidfd >= 0)
                close(c->server_pidfd);
        seg_unmap(&c->sg);
        free(c);
        return rc;
}

/* ---- streams ------------------------------------------------------------------------ */

uint32_t eng_stream_index(const eng_stream_t *s)
{
        return s->idx;
}

uint64_t eng_client_max_loan(const eng_client_t *c)
{
        return eng_arena_max_alloc(&c->sg.arena);
}

uint32_t eng_client_max_records(const eng_client_t *c)
{
        return c->sg.max_streams;
}

static int stream_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out, uint64_t deadline)
{
        uint32_t idx;
        uint64_t guid[2];
        claims_settle(c);
        int rc = take_offer(c, REC_STREAM, user_id, c->session->idx, &idx, guid, deadline);
        if (rc != 0)
                return rc;
        eng_stream_t *s = stream_new(c, idx, guid);
        if (s == NULL) {
                sched_fin(&c->sg, seg_rec(&c->sg, idx), idx); /* FIN first: see stream_end */
                seg_claim_unlock(&c->sg, idx, guid[0]);
                return -ENOMEM;
        }
        s->user_id = user_id;
        sched_stream(&c->sg, s->rec, idx);
        *out = s;
        return 0;
}

int eng_stream_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out)
{
        return stream_open(c, user_id, out, deadline_of(c, -1));
}

int eng_stream_try_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out)
{
        return stream_open(c, user_id, out, 0);
}

int eng_stream_open_timed(eng_client_t *c, uint32_t user_id, int timeout_ms, eng_stream_t **out)
{
        return stream_open(c, user_id, out, timeout_ms > 0 ? deadline_of(c, timeout_ms) : 0);
}

/*
 * Is the record still ours? The server answers a claim with OPEN or ENDED: from then on the
 * claim lock has done its job (the server read the claimer from it) and we let go of it. A
 * record whose GUID is no longer the one we claimed was given back and handed to someone else
 * (a writer forged our FIN, or the server reclaimed it): it is not ours to touch any more.
 */
static int rec_check(eng_stream_t *s, uint32_t state)
{
        if (s->claim_held && state != ST_CLAIMED)
                claim_release(s);
        if (eng_load_relaxed_u64(&s->rec->guid[0]) != s->guid[0] ||
            eng_load_relaxed_u64(&s->rec->guid[1]) != s->guid[1]) {
                s->ended = -EPIPE;
                eng_set_err("stream %u: its record was taken back by the server", s->user_id);
                return -EPIPE;
        }
        return 0;
}

/* For receiving: ended once the server ended the stream and every reply has been read. */
static int stream_state(eng_stream_t *s)
{
        if (s->ended)
                return s->ended;
        uint32_t state = eng_load_acquire_u32(&s->rec->state);
        if (rec_check(s, state) != 0)
                return s->ended;
        if (state == ST_ENDED && chan_used(&s->in) == 0) {
                s->ended = -EPIPE;
                eng_set_err("stream %u was ended by the server", s->user_id);
        }
        return s->ended;
}

/* For sending: nothing more may go to a stream the server ended, read or not. */
static int send_state(eng_stream_t *s)
{
        if (s->ended)
                return s->ended;
        uint32_t state = eng_load_acquire_u32(&s->rec->state);
        if (rec_check(s, state) != 0)
                return s->ended;
        return state == ST_ENDED ? -EPIPE : 0;
}

/*
 * The arena gate. The server repairs the arena while streams are open only when no honest
 * party is inside an arena operation (a block popped and not yet stamped would otherwise be
 * listed twice). So every allocation and free of a client is bracketed: arena_op := 1 in its
 * session record, then a look at the gate; if the server has closed it, arena_op := 0 and wait.
 * Dekker with repair_arena: it closes the gate and then reads every session's arena_op; a
 * store followed by a load on each side needs store->load order: a full fence here, or, for a
 * client registered for membarrier, only a compiler barrier, the server issuing the heavy side
 * (as in sched_push). Either our load sees the gate closed, or our arena_op = 1 is visible to
 * the server, which waits for it to go back to 0.
 *
 * wait_ns: how long to wait for the gate to open (0: do not wait, -EAGAIN). A gate that stays
 * closed longer than any repair takes is a writer's (the server puts it back within a tick).
 */
static int arena_enter(eng_client_t *c, uint64_t wait_ns)
{
        uint32_t *op = &c->session->rec->arena_op;
        uint32_t *gate = &c->sg.hdr->arena_gate;
        uint64_t end = wait_ns ? eng_now_ns() + wait_ns : 0;
        for (;;) {
                eng_store_relaxed_u32(op, 1);
                if (c->asym)
                        __atomic_signal_fence(__ATOMIC_SEQ_CST);
                else
                        eng_fence_full();
                /* Acquire: a repair's writes to the arena come before the server opens it. */
                uint32_t g = eng_load_acquire_u32(gate);
                if (g == 0)
                        return 0;
                eng_store_release_u32(op, 0);
                /* Shut by the server's repair (it is awake then, and opens it within
                 * milliseconds) or by a writer of the segment: the control thread heals that
                 * at its next tick, but one asleep without a timeout (nothing due) has no next
                 * tick. Wake it: a refused loan is something amiss. */
                eng_ctl_nudge(c->sg.hdr);
                if (end == 0 || eng_now_ns() >= end)
                        return -EAGAIN;
                eng_futex_wait(gate, g, 2 * 1000000ll);
        }
}

/* The end of the bracket: what we did to the arena is visible before arena_op reads 0. */
static void arena_leave(eng_client_t *c)
{
        eng_store_release_u32(&c->session->rec->arena_op, 0);
}

/* A free must happen: wait for a repair to finish (it takes milliseconds), but not for a gate a
 * writer holds shut: after 200 ms free anyway. */
static void arena_free(eng_client_t *c, uint64_t off)
{
        int rc = arena_enter(c, 200 * 1000000ull);
        eng_arena_free(&c->sg.arena, off);
        if (rc == 0)
                arena_leave(c);
}

int eng_stream_try_loan(eng_stream_t *s, uint32_t len, void **p, uint64_t *off)
{
        eng_arena_t *a = &s->c->sg.arena;
        if (len <= s->c->small_len && s->ncache == 0) {
                if (arena_enter(s->c, 0) != 0)
                        return -EAGAIN; /* the server is repairing the arena: a moment */
                s->ncache = eng_arena_alloc_bulk(a, len, s->owner, s->cache, LOAN_CACHE);
                arena_leave(s->c);
        }
        if (len <= s->c->small_len) {
                /* Each entry is still ours unless this stream sent it without loaning it
                 * (a confused caller): then the server freed it and it is dropped here. An
                 * entry of another class than this loan's (the loan size changed) goes back
                 * to the arena: a 64-B loan must not pin a 4-KiB block. */
                uint64_t want = eng_arena_class_bytes(a, len);
                while (s->ncache > 0) {
                        uint32_t owner;
                        uint64_t cap;
                        void *q;
                        *off = s->cache[--s->ncache];
                        if (eng_arena_lookup(a, *off, &q, &owner, &cap) != 0 || owner != s->owner)
                                continue;
                        if (cap == want) {
                                *p = q;
                                s->held++;
                                return 0;
                        }
                        arena_free(s->c, *off);
                }
        }
        if (arena_enter(s->c, 0) != 0)
                return -EAGAIN;
        int rc = eng_arena_alloc(a, len, s->owner, off);
        arena_leave(s->c);
        if (rc == -ENOMEM)
                return -EAGAIN;
        if (rc == -E2BIG)
                return eng_err_msgsize(len, eng_arena_max_alloc(a));
        if (rc == 0) {
                *p = eng_arena_ptr(&s->c->sg.arena, *off, len);
                s->held++;
        }
        return rc;
}

int eng_stream_loan(eng_stream_t *s, uint32_t len, void **p, uint64_t *off, int timeout_ms)
{
        eng_client_t *c = s->c;
        uint64_t deadline = deadline_of(c, timeout_ms);
        uint32_t *waiters = eng_arena_waiters_word(&c->sg.arena);
        uint32_t *word = eng_arena_free_word(&c->sg.arena);
        for (;;) {
                int rc = eng_stream_try_loan(s, len, p, off);
                if (rc != -EAGAIN)
                        return rc;
                /* Announce (locked add), read the word, retry, sleep: see arena.h. */
                eng_faa_u32(waiters, 1);
                uint32_t seq = eng_load_acquire_u32(word);
                rc = eng_stream_try_loan(s, len, p, off);
                if (rc == -EAGAIN) {
                        rc = wait_check(c);
                        if (rc == 0 && (rc = stream_state(s)) == 0) {
                                int64_t left = remaining_ns(deadline);
                                if (left == 0)
                                        rc = -ETIMEDOUT;
                                else
                                        eng_futex_wait(word, seq,
                                                       left < SLICE_NS ? left : SLICE_NS);
                        }
                        if (rc == 0)
                                rc = -EAGAIN;
                }
                eng_faa_u32(waiters, (uint32_t)-1);
                if (rc != -EAGAIN)
                        return rc;
        }
}

uint64_t eng_stream_loan_capacity(eng_stream_t *s, uint64_t off)
{
        uint32_t owner;
        uint64_t cap;
        if (eng_arena_lookup(&s->c->sg.arena, off, NULL, &owner, &cap) != 0 || owner != s->owner)
                return 0;
        return cap;
}

/*
 * A block the caller is done with (an unsent loan, a released reply): a smallest-class block
 * of this stream goes back into the loan cache, still stamped as ours, so a ping-pong of small
 * messages touches no shared allocator state at all; anything else goes back to the arena.
 */
static void give_back(eng_stream_t *s, uint64_t off)
{
        uint32_t owner;
        uint64_t cap;
        s->held--;
        if (s->ncache < LOAN_CACHE && s->c->small_len != 0 &&
            eng_arena_lookup(&s->c->sg.arena, off, NULL, &owner, &cap) == 0 && owner == s->owner &&
            cap <= s->c->small_len) {
                for (uint32_t i = 0; i < s->ncache; i++)
                        if (s->cache[i] == off)
                                return; /* given back twice: keep one entry */
                s->cache[s->ncache++] = off;
                return;
        }
        arena_free(s->c, off);
}

void eng_stream_unloan(eng_stream_t *s, uint64_t off)
{
        if (off)
                give_back(s, off);
}

/*
 * After a push: make sure a worker will look. If a worker polls the stream (POLLING), it will;
 * reading that without the full fence sched_stream pays is safe only because the worker, before
 * it stops polling, sets IDLE and then runs membarrier(GLOBAL_EXPEDITED), which makes every
 * registered thread pass a full barrier: either our push (program-ordered before this read)
 * is visible to its second look at the ring, or this read comes after the barrier and sees
 * IDLE (or later), and we take the full path. The compiler must not hoist the read above the
 * push: the signal fence keeps program order.
 */
static void sched_push(eng_stream_t *s)
{
        if (s->c->asym) {
                __atomic_signal_fence(__ATOMIC_SEQ_CST);
                if (eng_load_relaxed_u32(&s->rec->sched) == RUN_POLLING)
                        return;
        }
        sched_stream(&s->c->sg, s->rec, s->idx);
}

/* Send to the server: the channel's send (sequence numbered), then make sure it is seen (this
 * also covers whatever eng_stream_try_send_more queued before). */
static int push(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        if (!chan_send(&s->out, cmd, arg, off, len)) {
                eng_stream_flush(s); /* a full ring must be drained: tell the server */
                return -EAGAIN;
        }
        s->unflushed = false;
        sched_push(s);
        return 0;
}

void eng_stream_flush(eng_stream_t *s)
{
        if (s != NULL && s->unflushed) {
                s->unflushed = false;
                sched_push(s);
        }
}

/* One message onto the ring: checked, queued and, if tell, made sure a worker looks (push);
 * otherwise left for eng_stream_flush. A full ring flushes what is queued: it must be drained. */
static int send_one(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len,
                    bool tell)
{
        if (cmd < ENG_CMD_CLIENT_MIN || cmd > ENG_CMD_CLIENT_MAX)
                return -EINVAL;
        int rc = send_state(s);
        if (rc != 0)
                return rc;
        if (off != 0 && eng_stream_loan_capacity(s, off) < len)
                return -EINVAL;
        if (off == 0 && len != 0)
                return -EINVAL;
        if (tell) {
                if ((rc = push(s, cmd, arg, off, len)) != 0)
                        return rc;
        } else {
                if (!chan_send(&s->out, cmd, arg, off, len)) {
                        eng_stream_flush(s);
                        return -EAGAIN;
                }
                s->unflushed = true;
        }
        if (off != 0)
                s->held--; /* the server's now */
        return 0;
}

int eng_stream_try_send_more(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off,
                             uint32_t len)
{
        return send_one(s, cmd, arg, off, len, false);
}

int eng_stream_try_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        return send_one(s, cmd, arg, off, len, true);
}

/*
 * Spin on the channel itself before falling back to the ticket/wake-word protocol: while we
 * spin, `waiting` stays NONE, so the server pays nothing for wake-ups and the only cache line
 * that crosses cores is the ring's. Returns true when the channel looks ready.
 */
static bool spin_on(eng_stream_t *s, struct chan_end *ch, uint64_t deadline)
{
        uint32_t budget = spin_budget(s->c, &s->c->spin_ans);
        for (uint32_t i = 0; i < budget && !spun_out(i, deadline); i++) {
                if ((ch->producer ? chan_room(ch, 1) : chan_ready(ch)) ||
                    eng_load_relaxed_u32(&s->rec->state) == ST_ENDED) {
                        spin_won(s->c, &s->c->spin_ans);
                        spin_peer(s->c, &s->c->spin_ans);
                        return true;
                }
                eng_cpu_relax();
        }
        if (budget != 0)
                spin_lost(&s->c->spin_ans);
        return false;
}

/* One non-blocking attempt of a blocking call, with its arguments: try_send or try_recv. */
struct stream_try {
        int (*fn)(eng_stream_t *s, const struct stream_try *t);
        uint16_t cmd; /* send */
        uint32_t len;
        uint64_t arg, off;
        eng_msg_t *m; /* recv */
};

/*
 * The blocking calls' loop, for either direction (ch: s->out to send, s->in to receive): the
 * caller's first try said -EAGAIN; spin on the channel, then take a ticket before each try
 * (so a change after the try moves the wake word) and wait on it, until the try says
 * something else or the wait fails (deadline, server gone, interrupted).
 */
static int stream_retry(eng_stream_t *s, struct chan_end *ch, const struct stream_try *t,
                        int timeout_ms)
{
        eng_client_t *c = s->c;
        uint64_t deadline = deadline_of(c, timeout_ms);
        int rc;
        if (spin_on(s, ch, deadline) && (rc = t->fn(s, t)) != -EAGAIN)
                return rc;
        for (;;) {
                uint32_t ticket = eng_client_ticket(c);
                rc = t->fn(s, t);
                if (rc != -EAGAIN)
                        return rc;
                rc = stream_wait(c, ch, ticket, deadline);
                if (rc != 0)
                        return rc;
        }
}

static int try_send(eng_stream_t *s, const struct stream_try *t)
{
        return eng_stream_try_send(s, t->cmd, t->arg, t->off, t->len);
}

int eng_stream_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len,
                    int timeout_ms)
{
        int rc = eng_stream_try_send(s, cmd, arg, off, len);
        if (rc != -EAGAIN)
                return rc;
        struct stream_try t = {.fn = try_send, .cmd = cmd, .len = len, .arg = arg, .off = off};
        return stream_retry(s, &s->out, &t, timeout_ms);
}

int eng_stream_try_recv(eng_stream_t *s, eng_msg_t *m)
{
        if (s->unflushed)
                eng_stream_flush(s); /* replies come only to what the server was told of */
        struct eng_desc d;
        int got = chan_recv(&s->in, &d);
        if (got == 0) {
                int rc = stream_state(s);
                return rc != 0 ? rc : -EAGAIN;
        }
        /* The server may have stopped draining because our ring was full: it flagged
         * want_space, fenced and re-checked; we published c_head, fence, read the flag. */
        eng_fence_full();
        if (eng_load_relaxed_u32(&s->rec->want_space)) {
                eng_store_relaxed_u32(&s->rec->want_space, 0);
                sched_stream(&s->c->sg, s->rec, s->idx);
        }
        if (got < 0) {
                s->ended = -EPROTO;
                eng_set_err("stream %u: expected message %llu, got %llu", s->user_id,
                            (unsigned long long)(s->in.seq + 1), (unsigned long long)d.seq);
                return -EPROTO;
        }
        if (d.cmd == CMD_S_CLOSE || d.cmd == CMD_S_ERROR) {
                int err = d.cmd == CMD_S_CLOSE ? -EPIPE : -(int)(int64_t)d.arg;
                if (err >= 0 || err == -ESHUTDOWN)
                        err = -EPIPE; /* the server stopped: "peer gone", as engine.h promises */
                s->ended = err;
                if (d.cmd == CMD_S_ERROR)
                        eng_set_err("stream %u ended by the server: %s", s->user_id,
                                    (int64_t)d.arg == ESHUTDOWN ? "server shutting down"
                                                                : eng_strerror(err));
                return s->ended;
        }
        if (d.cmd < ENG_CMD_SERVER_MIN || d.cmd > ENG_CMD_SERVER_MAX) {
                s->ended = -EPROTO;
                eng_set_err("stream %u: command 0x%04x is not a server command", s->user_id, d.cmd);
                return -EPROTO;
        }
        m->cmd = d.cmd;
        m->flags = d.flags;
        m->len = d.len;
        m->seq = d.seq;
        m->arg = d.arg;
        m->off = d.off;
        m->data = NULL;
        if (d.off != 0) {
                /* One look at the block's header; its copies decide, and give the pointer. */
                uint32_t owner;
                uint64_t cap;
                void *p;
                if (eng_arena_lookup(&s->c->sg.arena, d.off, &p, &owner, &cap) != 0 ||
                    owner != s->owner || cap < d.len) {
                        s->ended = -EPROTO;
                        eng_set_err("stream %u: message buffer is not ours", s->user_id);
                        return -EPROTO;
                }
                m->data = p;
                s->held++;
        } else if (d.len != 0) {
                s->ended = -EPROTO;
                eng_set_err("stream %u: a message of %u bytes without a buffer", s->user_id, d.len);
                return -EPROTO;
        }
        return 0;
}

static int try_recv(eng_stream_t *s, const struct stream_try *t)
{
        return eng_stream_try_recv(s, t->m);
}

int eng_stream_recv(eng_stream_t *s, eng_msg_t *m, int timeout_ms)
{
        int rc = eng_stream_try_recv(s, m);
        if (rc != -EAGAIN)
                return rc;
        struct stream_try t = {.fn = try_recv, .m = m};
        return stream_retry(s, &s->in, &t, timeout_ms);
}

void eng_stream_release(eng_stream_t *s, eng_msg_t *m)
{
        if (m->off != 0)
                give_back(s, m->off);
        m->off = 0;
        m->data = NULL;
}

static int stream_end(eng_stream_t *s, int timeout_ms)
{
        eng_client_t *c = s->c;
        int rc = 0;
        if (s->ended == 0 && timeout_ms != 0) {
                /* One deadline for the whole handshake, however many steps it takes. */
                uint64_t deadline = deadline_of(c, timeout_ms);
                rc = push(s, CMD_C_CLOSE, (uint64_t)s->held, 0, 0);
                while (rc == -EAGAIN) {
                        /* Ring full: the server drains it only while it has room for replies,
                         * so read (and drop) replies while we wait for room. */
                        uint32_t t = eng_client_ticket(c);
                        eng_msg_t m;
                        int r;
                        while ((r = eng_stream_try_recv(s, &m)) == 0)
                                eng_stream_release(s, &m);
                        if (r != -EAGAIN) {
                                rc = r == -EPIPE ? 0 : r; /* ended meanwhile: nothing to close */
                                goto fin;
                        }
                        rc = push(s, CMD_C_CLOSE, (uint64_t)s->held, 0, 0);
                        if (rc == -EAGAIN && (rc = stream_wait(c, &s->out, t, deadline)) == 0)
                                rc = -EAGAIN;
                }
                /* Wait for the acknowledgement, dropping replies still in flight. */
                while (rc == 0) {
                        eng_msg_t m;
                        int64_t left = remaining_ns(deadline);
                        int r = left == 0
                                    ? -ETIMEDOUT
                                    : eng_stream_recv(s, &m, (int)((left + 999999) / 1000000));
                        if (r == 0) {
                                eng_stream_release(s, &m);
                                continue;
                        }
                        rc = r == -EPIPE ? 0 : r;
                        break;
                }
        }
fin:
        /* Unused cached loans go back one by one (not a batch: a kill in the middle must
         * leave them stamped as ours, for the server's reclaim). */
        while (s->ncache > 0) {
                uint64_t off = s->cache[--s->ncache];
                if (eng_arena_owner(&c->sg.arena, off) == s->owner) /* see try_loan */
                        arena_free(c, off);
        }
        /* Our last touch of the record. The server reclaims whatever the stream still owns
         * (and, for a stream that was not closed in order, tells its hooks it was aborted).
         * Not if it is no longer ours: a FIN there would end somebody else's stream. The claim
         * lock goes last, after the FIN: while we hold it, a claim the server has not decided
         * yet is ours in its eyes (accept_stream finds us as the holder), so the record cannot
         * be freed and offered again between our GUID check and our FIN. Letting go first
         * opened that window: the server found no holder, freed the record, offered it again,
         * and our FIN spoiled the new offer or ended another client's stream (found by the SPIN
         * model docs/models/stream_life.pml, mutation MUT_UNLOCK_BEFORE_FIN). The next offer of
         * the slot has a new GUID, hence another claim-lock byte: holding ours blocks nobody. */
        if (eng_load_relaxed_u64(&s->rec->guid[0]) == s->guid[0] &&
            eng_load_relaxed_u64(&s->rec->guid[1]) == s->guid[1])
                sched_fin(&c->sg, s->rec, s->idx);
        claim_release(s);
        stream_free(s);
        return rc;
}

int eng_stream_close(eng_stream_t *s)
{
        if (s == NULL)
                return 0;
        return stream_end(s, -1);
}

int eng_stream_abort(eng_stream_t *s)
{
        if (s == NULL)
                return 0;
        return stream_end(s, 0);
}

void eng_client_detach(eng_client_t *c)
{
        if (c == NULL)
                return;
        if (c->session)
                stream_end(c->session, -1);
        if (c->server_pidfd >= 0)
                close(c->server_pidfd);
        seg_unmap(&c->sg);
        free(c);
}
