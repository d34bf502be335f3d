/*
 * worker.c - the server's worker pool: a fixed set of threads that serve every stream (no
 * thread per stream). A worker takes a stream from the ready set (sched.c), decides it if it
 * is a fresh claim (accept_stream), drains its requests into the on_msg hook, and then either
 * lets it go idle or keeps it and polls its ring.
 *
 * Scheduling: a stream is run by at most one worker at a time. The shared sched word says
 * so to honest clients; the private per-stream `busy` flag (server_int.h) enforces it even if
 * a client writes garbage into sched (a second worker that finds the stream busy just re-posts
 * it).
 */
#include <errno.h>
#include <string.h>

#include "server_int.h"

#define RUN_BATCH 64 /* messages per turn before a stream goes to the back of the line */

/* A worker's frees are batched and pushed back once per turn (drain); elsewhere (the control
 * thread, shutdown) they are immediate. */
static _Thread_local eng_arena_batch_t *tl_frees;

#define DEFER_MAX (16u << 10) /* blocks up to this size are freed in batches */

/* srv_free's body, inlined into handle (every message's free). */
static inline __attribute__((always_inline)) void worker_free(struct eng_server *srv, uint64_t off,
                                                              uint64_t cap)
{
        /* Batching pays where the per-message cost is the free itself (small blocks); a large
         * block goes back at once, so a turn of big messages does not keep a small segment's
         * space from its clients until the turn ends. */
        if (tl_frees != NULL && cap == SRV_CAP_UNKNOWN)
                cap = eng_arena_capacity(&srv->sg.arena, off);
        if (tl_frees != NULL && cap <= DEFER_MAX)
                eng_arena_free_later(&srv->sg.arena, tl_frees, off);
        else
                eng_arena_free(&srv->sg.arena, off);
}

void srv_free(struct eng_server *srv, uint64_t off, uint64_t cap)
{
        worker_free(srv, off, cap);
}

/*
 * Decide a record a client claimed. Everything is read from the record once, here, and only
 * the copies are checked and kept. Who claimed it is what the kernel says: the holder of the
 * record's claim lock (a POSIX lock, so its pid comes with it), which must also be the pid
 * the claim names. Returns:
 *   0             accepted (OPEN);
 *   -EAGAIN       still on offer as far as the control thread knows (a stray wake-up), and
 *                 no live claim to decide: the control thread decides it once it sees it
 *                 taken;
 *   -EINPROGRESS  a stream whose session is not decided yet: run it again later;
 *   -ESRCH        nobody holds the claim (forged, or the claimer is gone): give it back now;
 *   other         refused: the claimer is told (ERROR, ENDED) and the record comes back at
 *                 its FIN, its death, or (claim not verified) CLAIM_DEADLINE_NS from now.
 */
static int accept_stream(struct eng_server *srv, eng_sstream_t *s)
{
        struct eng_rec *r = s->rec;
        uint64_t taken = eng_load_acquire_u64(&s->taken_ns);
        /* CLAIMED was published with release after the owner fields. Before the control thread
         * has seen the take, only a claim someone holds the kernel lock of is decided here;
         * anything else stays the control thread's to give back (it still counts the record
         * as its offer, so we must not free it under it). */
        if (eng_load_acquire_u32(&r->state) != ST_CLAIMED)
                return taken == 0 ? -EAGAIN : -ESRCH;
        uint32_t type = eng_load_relaxed_u32(&r->type);
        uint32_t session = eng_load_relaxed_u32(&r->session);
        uint32_t user_id = eng_load_relaxed_u32(&r->user_id);
        pid_t claimed = (pid_t)eng_load_relaxed_u32((uint32_t *)&r->owner_pid);
        pid_t holder = seg_claim_holder(&srv->sg, s->idx, s->guid0);
        if (holder == 0)
                return taken == 0 ? -EAGAIN : -ESRCH;
        uint32_t depth = srv->sg.depth;
        s->type = type;
        s->session = session;
        s->user_id = user_id;
        s->pid = holder > 0 ? holder : claimed;
        s->verified = holder > 0 && holder == claimed;
        chan_attach(&s->in, &r->c2s, rec_c2s_slots(r, depth), depth, srv->cfg.transport, false);
        chan_attach(&s->out, &r->s2c, rec_s2c_slots(r, depth), depth, srv->cfg.transport, true);
        s->out.stat = &r->sstat;
        int rc = 0;
        if (!s->verified) {
                rc = -EACCES; /* the claim names someone other than its lock's holder */
        } else if (type == REC_SESSION) {
                rc = srv_pw_acquire(srv, s->pid, &s->pw);
                /* The pid may have died and been reused between the lock query and the
                 * pidfd: the claim lock goes with the process, so ask once more. */
                if (rc == 0 && seg_claim_holder(&srv->sg, s->idx, s->guid0) != s->pid)
                        rc = -ESRCH;
                if (rc == -ESRCH)
                        return rc;
        } else if (type == REC_STREAM) {
                /* The stream's session must be an accepted SESSION of the same process. A
                 * client schedules its session before its streams, but workers may take them
                 * in any order: a session not decided yet means "come back later". */
                eng_sstream_t *ss = session < srv->ntab ? &srv->tab[session] : NULL;
                if (ss == NULL || !ss->live) {
                        rc = -EPROTO;
                } else if (!eng_load_acquire_u32(&ss->known)) {
                        if (taken == 0 || eng_now_ns() - taken < CLAIM_DEADLINE_NS)
                                return -EINPROGRESS; /* (not seen taken yet: just claimed) */
                        rc = -EPROTO;
                } else if (ss->type != REC_SESSION || ss->pid != s->pid || !ss->verified) {
                        rc = -EPROTO;
                } else if (eng_load_acquire_u32(&ss->ended) || ss->pw < 0) {
                        /* The session was refused or ended: say why (e.g. the server cannot
                         * watch the client: "Too many open files"). Its err was written
                         * before known (a refusal) or ended (an end) was released: it is
                         * there even when its worker has not ended it yet. */
                        int serr = srv_err_get(ss);
                        rc = serr < 0 ? serr : -EPIPE;
                } else {
                        s->session_gen = ss->gen;
                        s->pw = ss->pw;
                        srv_pw_ref(srv, s->pw);
                }
        } else {
                rc = -EPROTO;
        }
        if (rc == 0 && type == REC_STREAM) {
                rc = srv->cfg.hooks.on_open ? srv->cfg.hooks.on_open(s, srv->cfg.hooks.ctx) : 0;
                s->opened = rc == 0;
        }
        if (rc != 0)
                srv_err_set(s, rc); /* why, before known: see the session case above */
        if (rc != 0 && (!s->verified || s->pw < 0))
                s->fin_deadline = eng_now_ns() + CLAIM_DEADLINE_NS;
        /* Known from here on, even if refused (srv_end_stream must tell the client); release:
         * type and pid are visible to a thread that reads known with acquire. */
        eng_store_release_u32(&s->known, 1);
        if (rc == 0) {
                eng_store_release_u32(&r->state, ST_OPEN);
                eng_faa_u64(&srv->sg.hdr->opens, 1);
                eng_store_relaxed_u64(&r->sstat.opened_ns, eng_now_ns());
        }
        return rc;
}

/* One request, in sequence (chan_recv checked that). */
static int handle(struct eng_server *srv, eng_sstream_t *s, const struct eng_desc *d)
{
        if (d->cmd == CMD_C_CLOSE) {
                /* arg: how many of the stream's blocks the client still holds (client.c) */
                s->clean_close = !s->ended && d->arg == 0;
                srv_end_stream(srv, s, 0);
                return 0;
        }
        if (d->cmd < ENG_CMD_CLIENT_MIN || d->cmd > ENG_CMD_CLIENT_MAX)
                return -EPROTO; /* a server code, a reserved code, or garbage */
        eng_msg_t m = {.cmd = d->cmd,
                       .flags = d->flags,
                       .len = d->len,
                       .seq = d->seq,
                       .arg = d->arg,
                       .off = d->off};
        uint64_t cap = SRV_CAP_UNKNOWN;
        if (d->off != 0) {
                /* The buffer must be a live block of this very stream, and big enough: one
                 * look at its header (eng_arena_lookup), and the copies it returns decide. */
                uint32_t owner;
                if (eng_arena_lookup(&srv->sg.arena, d->off, &m.data, &owner, &cap) != 0 ||
                    owner != owner_of(s->idx) || cap < d->len)
                        return -EPROTO;
        } else if (d->len != 0) {
                return -EPROTO;
        }
        if (s->type != REC_STREAM)
                return -EPROTO;
        int rc = srv->cfg.hooks.on_msg ? srv->cfg.hooks.on_msg(s, &m, srv->cfg.hooks.ctx) : 0;
        /* The hook may have forwarded the block (m.off cleared) or named another one. */
        if (m.off != 0)
                worker_free(srv, m.off, m.off == d->off ? cap : SRV_CAP_UNKNOWN);
        return rc;
}

/* Drain up to RUN_BATCH messages. Returns how many were taken; *full says the batch limit
 * was hit (more may be waiting). */
static int drain_batch(struct eng_server *srv, eng_sstream_t *s, bool *full);

static int drain(struct eng_server *srv, eng_sstream_t *s, bool *full)
{
        int n = drain_batch(srv, s, full);
        if (tl_frees != NULL)
                eng_arena_flush(&srv->sg.arena, tl_frees);
        return n;
}

static int drain_batch(struct eng_server *srv, eng_sstream_t *s, bool *full)
{
        *full = false;
        int n = 0;
        for (; n < RUN_BATCH; n++) {
                if (s->ended)
                        return n;
                if (!chan_room(&s->out, 2)) {
                        /* Room for a reply and a final CLOSE/ERROR is reserved: stop taking
                         * requests until the client reads. Flag, fence, re-check (Dekker with its
                         * recv). `stalled` is our own note of it: a client cannot erase it, and
                         * the control thread runs the stream again once there is room. */
                        eng_store_relaxed_u32(&s->rec->want_space, 1);
                        eng_fence_full();
                        if (!chan_room(&s->out, 2)) {
                                s->stalled = true;
                                return n;
                        }
                }
                s->stalled = false;
                struct eng_desc d;
                int got = chan_recv(&s->in, &d);
                if (got == 0)
                        return n;
                s->pushed = true; /* a consumed slot is news for a client blocked on a full ring */
                /* out of sequence: lost, duplicated or forged descriptor */
                int rc = got < 0 ? got : handle(srv, s, &d);
                if (rc == -EPROTO)
                        eng_faa_u64(&srv->sg.hdr->refused, 1); /* a descriptor refused */
                if (rc < 0)
                        srv_end_stream(srv, s, rc);
        }
        *full = true;
        return n;
}

/*
 * Polling. A worker that finished a turn on a lock-free stream keeps it (busy stays held) in
 * state POLLING, in a small private set, and watches its ring directly instead of the ready
 * bitmap: a client that reads POLLING after its push does nothing more (client.c sched_push),
 * so a busy stream costs one cache line per message each way (the ring's), not the sched word,
 * a bitmap word and a worker hand-off as well. A worker serves other streams from the bitmap
 * while it polls its set, so streams are not handed back and forth.
 *
 * Letting go (release_polls) happens when the worker's spin budget is spent (it is about to
 * sleep), when a polled stream is posted anyway (reap, a confused client), and at shutdown:
 *   POLLING -> IDLE by CAS; membarrier(GLOBAL_EXPEDITED) once for the whole set if a client
 *   may skip its fence; then a second look at each ring.
 * Dekker with the client's push (push; barrier; read sched): either the client read IDLE and
 * queues the stream itself, or its push is visible to our second look and we queue it. An
 * ended stream needs no barrier: nothing the client pushes any more is served, and its FIN is
 * a swap, which is totally ordered with our CAS.
 */
#define POLL_MAX 16 /* streams one worker polls at most; beyond that they go IDLE as before */

static bool may_poll(const struct eng_server *srv, const eng_sstream_t *s)
{
        return srv->cfg.transport != ENG_TRANSPORT_MUTEX && srv->cfg.spin >= 64 && s->known &&
               !s->ended && s->type == REC_STREAM;
}

/* Phase 1 of letting go of a held stream: sched -> IDLE. Returns true if the stream still
 * needs phase 2 (second look, then busy released); false if it was dealt with (finalised on
 * FIN, or posted for later) and busy is released already. */
static bool unpoll_begin(struct eng_server *srv, eng_sstream_t *s)
{
        struct eng_rec *r = s->rec;
        uint32_t st = eng_load_relaxed_u32(&r->sched);
        for (int tries = 0;; tries++) {
                if (st == RUN_FIN) {
                        srv_finalize(srv, s, s->ended ? 0 : -ECONNABORTED);
                        eng_store_release_u32(&s->busy, 0);
                        return false;
                }
                if (tries == 1000) {
                        /* Only a client rewriting sched in a loop gets here: run it later. */
                        eng_store_release_u32(&s->busy, 0);
                        ready_post(&srv->sg, s->idx);
                        return false;
                }
                /* POLLING (or garbage a client wrote) -> IDLE; a FIN swapped in is never lost. */
                if (eng_cas_u32(&r->sched, st, RUN_IDLE, &st))
                        return true;
        }
}

/* Phase 2: the second look. A push we cannot serve yet (no room for replies) is not work: the
 * client's recv sees want_space and schedules the stream. */
static void unpoll_end(struct eng_server *srv, eng_sstream_t *s)
{
        if (s->live && s->known && !s->ended && chan_ready(&s->in) && chan_room(&s->out, 2)) {
                uint32_t seen = RUN_IDLE;
                if (eng_cas_u32(&s->rec->sched, RUN_IDLE, RUN_QUEUED, &seen))
                        ready_post(&srv->sg, s->idx);
                /* else the client queued it (QUEUED, bit set) or finished it (FIN, posted) */
        }
        eng_store_release_u32(&s->busy, 0);
}

static void release_polls(struct eng_server *srv, eng_sstream_t **set, uint32_t n)
{
        bool heavy = false;
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
                bool live = set[i]->known && !set[i]->ended;
                if (unpoll_begin(srv, set[i])) {
                        heavy |= live;
                        set[k++] = set[i];
                }
        }
        if (heavy && srv->asym)
                eng_asym_heavy();
        for (uint32_t i = 0; i < k; i++)
                unpoll_end(srv, set[i]);
}

/* One look at a polled stream: 1 if messages moved, 0 if not, -1 if it is no longer ours. */
static int poll_once(struct eng_server *srv, eng_sstream_t *s)
{
        if (eng_load_relaxed_u32(&s->rec->sched) != RUN_POLLING || s->ended) {
                release_polls(srv, &s, 1); /* FIN, a client that wrote something else, ended */
                return -1;
        }
        if (!chan_ready(&s->in))
                return 0;
        s->pushed = false;
        bool full;
        int n = drain(srv, s, &full);
        if (s->pushed)
                srv_wake_session(srv, s);
        if (s->ended) {
                release_polls(srv, &s, 1);
                return -1;
        }
        return n > 0;
}

/* Run a stream taken from the ready set. Returns true if the worker keeps it, polling. */
static bool run_stream(struct eng_server *srv, uint32_t idx, bool poll)
{
        if (idx >= srv->ntab)
                return false;
        eng_sstream_t *s = &srv->tab[idx];
        uint32_t seen;
        if (!eng_cas_u32(&s->busy, 0, 1, &seen)) {
                /* Another worker is just finishing this stream (it set IDLE, the client queued it
                 * again, and the first worker has not released busy yet), or polls it and is
                 * about to let go. Put the bit back so the work is not lost; it is taken again
                 * once the other worker lets go. */
                ready_post(&srv->sg, idx);
                return false;
        }
        /* A record on offer is nobody's yet: a stray bit (a writer) must not make us touch it
         * (its snapshot would no longer match: see offer_intact). One a client has claimed is
         * decided at once (accept_stream), without waiting for the control thread to notice
         * the take: that wake-up was on the path of every stream's first message. */
        if (!s->live || (!s->known && eng_load_acquire_u64(&s->taken_ns) == 0 &&
                         eng_load_acquire_u32(&s->rec->state) != ST_CLAIMED))
                goto out;
        struct eng_rec *r = s->rec;
        uint32_t st = eng_load_relaxed_u32(&r->sched);
        for (;;) {
                if (st == RUN_FIN) {
                        srv_finalize(srv, s, s->ended ? 0 : -ECONNABORTED); /* no CLOSE: aborted */
                        goto out;
                }
                if (eng_cas_u32(&r->sched, st, RUN_RUNNING, &st))
                        break;
        }
        for (;;) {
                s->pushed = false;
                bool more = false;
                if (!s->known) {
                        int rc = accept_stream(srv, s);
                        if (rc == -EAGAIN) {
                                /* still on offer (a stray wake-up): leave it idle */
                        } else if (rc == -EINPROGRESS) {
                                more = true; /* its session is not accepted yet: requeue */
                        } else if (rc == -ESRCH) {
                                /* Nobody holds the claim: forged, or the claimer died. Nobody
                                 * honest can think the record is theirs: give it back now. */
                                srv_finalize(srv, s, -EPIPE);
                                eng_faa_u32(&srv->ev_unclaimed, 1);
                                goto out;
                        } else if (rc < 0) {
                                if (!s->verified)
                                        eng_faa_u32(&srv->ev_unverified, 1);
                                else if (s->type == REC_SESSION && s->pw < 0)
                                        srv_event(srv,
                                                  "cannot watch client pid %d (%s): its session "
                                                  "is refused",
                                                  (int)s->pid, strerror(-rc));
                                srv_end_stream(srv, s, rc);
                        }
                }
                if (s->known && !s->ended)
                        drain(srv, s, &more);
                if (s->pushed)
                        srv_wake_session(srv, s);
                if (more) {
                        /* Fairness: back of the line. RUNNING -> QUEUED unless the client already
                         * finished (FIN); AGAIN -> QUEUED too (the bit covers both). */
                        st = RUN_RUNNING;
                        while (!eng_cas_u32(&r->sched, st, RUN_QUEUED, &st)) {
                                if (st == RUN_FIN)
                                        break;
                        }
                        if (st == RUN_FIN)
                                continue;
                        ready_post(&srv->sg, idx);
                        goto out;
                }
                /* Go idle (or keep polling): RUNNING -> IDLE/POLLING. If the client pushed
                 * meanwhile (AGAIN, or garbage) take it back to RUNNING with a CAS too, so that a
                 * FIN swapped in at any point is never overwritten, and run again. */
                uint32_t rest = poll && may_poll(srv, s) ? RUN_POLLING : RUN_IDLE;
                st = RUN_RUNNING;
                bool idle = false;
                for (;;) {
                        if (st == RUN_FIN)
                                break;
                        uint32_t want = st == RUN_RUNNING ? rest : RUN_RUNNING;
                        if (eng_cas_u32(&r->sched, st, want, &st)) {
                                idle = want == rest;
                                break;
                        }
                }
                if (idle && rest == RUN_POLLING)
                        return true; /* busy stays ours */
                if (idle)
                        goto out;
                if (st == RUN_FIN) {
                        srv_finalize(srv, s, s->ended ? 0 : -ECONNABORTED);
                        goto out;
                }
        }
out:
        eng_store_release_u32(&s->busy, 0);
        return false;
}

/* Stop counting as an idle spinner (srv_spinners, see ready_post); true if we were one. The
 * decrement is locked (a full barrier): whatever we look at next sees the bit of a poster that
 * saw us still counted. */
static bool spin_stop(struct eng_seg *sg, bool *spinning)
{
        if (!*spinning)
                return false;
        *spinning = false;
        eng_faa_u32(&sg->hdr->srv_spinners, (uint32_t)-1);
        return true;
}

/* Leave the idle spin to run what it found. A poster that saw us spinning woke nobody for its
 * bit: if other bits are queued, a sleeper takes them while we run ours. */
static void spin_leave(struct eng_seg *sg, bool *spinning)
{
        if (spin_stop(sg, spinning) && eng_load_relaxed_u32(&sg->hdr->srv_sleepers) != 0 &&
            ready_queued(sg))
                ready_wake(sg);
}

void *srv_worker_main(void *arg)
{
        struct eng_server *srv = arg;
        struct eng_seg *sg = &srv->sg;
        uint32_t cursor = (uint32_t)(uintptr_t)pthread_self();
        uint32_t spins = 0;
        /* The idle spin adapts as the client's does (client.c spin_budget): work that came
         * while we spun restores the full budget, a spin that ended in sleep halves it, and one
         * idle period in 256 spins the full cfg.spin. Sparse traffic (or a client on our CPU)
         * thus stops paying for a spin that cannot succeed and delays whoever needs the CPU. */
        uint32_t budget = srv->cfg.spin, probe = 0;
        eng_sstream_t *set[POLL_MAX]; /* held (busy), sched POLLING */
        uint32_t np = 0;
        bool spinning = false; /* counted in srv_spinners */
        eng_arena_batch_t frees = {.n = 0};
        tl_frees = &frees;
        while (!eng_load_relaxed_u32(&srv->stop)) {
                if (eng_load_acquire_u32(&srv->park)) {
                        spin_leave(sg, &spinning);
                        /* The control thread repairs the arena: touch nothing of it until it
                         * is done (our polled streams let go, our batch flushed). */
                        release_polls(srv, set, np);
                        np = 0;
                        eng_arena_flush(&srv->sg.arena, &frees);
                        eng_faa_u32(&srv->parked, 1);
                        while (eng_load_acquire_u32(&srv->park) &&
                               !eng_load_relaxed_u32(&srv->stop))
                                eng_futex_wait(&srv->park, 1, 50 * 1000000ll);
                        eng_faa_u32(&srv->parked, (uint32_t)-1);
                        spins = 0;
                        continue;
                }
                uint32_t idx;
                bool moved = false;
                if (ready_take(sg, &cursor, &idx)) {
                        spin_leave(sg, &spinning);
                        /* One of ours posted (reap, or a client that writes sched): let go
                         * first, or run_stream would find it busy and post it forever. */
                        for (uint32_t i = 0; i < np; i++) {
                                if (set[i]->idx == idx) {
                                        release_polls(srv, &set[i], 1);
                                        set[i] = set[--np];
                                        break;
                                }
                        }
                        /* Polling pays only while spinning does: letting go of a polled
                         * stream costs a membarrier, on the path of the next request once
                         * we sleep right after each turn. */
                        /* Nor while other streams are queued: with many streams taking turns
                         * (1,000 senders round-robin), a polled stream gets its next message
                         * only after all the others, and looking at up to POLL_MAX rings
                         * between turns is a cache miss each for nothing. */
                        if (run_stream(srv, idx,
                                       np < POLL_MAX && budget >= 64 && !ready_queued(sg)))
                                set[np++] = &srv->tab[idx];
                        moved = true;
                        /* No `continue`: a stream that always has more goes straight back to
                         * the ready set, and the streams we hold would never be looked at.
                         * One turn from the ready set, one look at each held ring. */
                }
                for (uint32_t i = 0; i < np; i++) {
                        int rc = poll_once(srv, set[i]);
                        if (rc < 0)
                                set[i--] = set[--np];
                        else if (rc > 0)
                                moved = true;
                }
                /* Frees made outside a drain (on_close hooks, srv_finalize) go back before we idle.
                 */
                if (frees.n != 0)
                        eng_arena_flush(&srv->sg.arena, &frees);
                if (moved) {
                        spin_leave(sg, &spinning); /* after a polled stream's turn */
                        if (spins != 0)
                                budget = srv->cfg.spin; /* spinning pays: all of it again */
                        spins = 0;
                        continue;
                }
                if (!spinning) {
                        eng_faa_u32(&sg->hdr->srv_spinners, 1);
                        spinning = true;
                }
                if (++spins < budget) {
                        eng_cpu_relax();
                        continue;
                }
                if (np != 0) {
                        /* Spin budget spent: let go of everything (which may queue some of it
                         * again), then look once more before sleeping. */
                        release_polls(srv, set, np);
                        np = 0;
                        continue;
                }
                budget /= 2;
                if (budget < srv->cfg.spin && (++probe & 255u) == 0)
                        budget = srv->cfg.spin;
                /* Announce, then re-check (Dekker with ready_post), then sleep until woken: no
                 * timeout, so an idle server does not wake at all. Everything that needs a
                 * worker moves srv_wake after setting what it wants seen: a client's post
                 * (ready_post), stop, park; a write to srv_wake by anyone else is at worst a
                 * spurious wake-up. The control thread re-posts scheduling a writer undid. */
                eng_faa_u32(&sg->hdr->srv_sleepers, 1);
                /* A poster that saw us spinning did not wake anyone: the decrement (locked)
                 * comes before the re-scan, so its bit is seen there. */
                spin_stop(sg, &spinning);
                uint32_t seq = eng_load_acquire_u32(&sg->hdr->srv_wake);
                if (!ready_any(sg) && !eng_load_relaxed_u32(&srv->stop) &&
                    !eng_load_acquire_u32(&srv->park))
                        eng_futex_wait(&sg->hdr->srv_wake, seq, -1);
                eng_faa_u32(&sg->hdr->srv_sleepers, (uint32_t)-1);
                spins = 0;
        }
        spin_leave(sg, &spinning);
        release_polls(srv, set, np);
        eng_arena_flush(&srv->sg.arena, &frees);
        tl_frees = NULL;
        return NULL;
}
