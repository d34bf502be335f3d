/*
 * server.c - the server runtime: the control thread (offers GUIDs, watches liveness) and a
 * fixed pool of workers that serve every stream (no thread per stream).
 *
 * Scheduling: a stream is run by at most one worker at a time. The shared sched word says
 * so to honest clients; a private per-stream `busy` flag enforces it even if a client writes
 * garbage into sched (a second worker that finds the stream busy just drops the duplicate).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RUN_BATCH 64 /* messages per turn before a stream goes to the back of the line */

struct eng_sstream {
        uint32_t busy; /* private exclusivity (server memory, not the segment) */
        uint32_t idx;
        bool live;      /* between offer and finalisation */
        uint32_t known; /* accepted; published with release: workers read other entries' */
        bool ended;     /* we sent CLOSE/ERROR; waiting for the client's FIN */
        bool pushed;    /* this turn produced something for the client */
        bool opened;    /* on_open accepted it: on_close is owed exactly once */
        uint32_t type;
        uint32_t session;
        uint32_t user_id;
        pid_t pid;
        int pidfd;
        uint64_t seq_in, seq_out;
        struct chan_end in, out;
        struct eng_rec *rec;
        struct eng_server *srv;
        void *user;
};

struct eng_server {
        struct eng_seg sg;
        eng_server_cfg_t cfg;
        struct eng_sstream *tab;
        uint32_t ntab;
        pthread_t ctl;
        pthread_t *workers;
        uint32_t nworkers;
        uint32_t stop;
        uint32_t offered; /* index currently on offer (+1), 0 if none */
        bool asym;        /* clients may skip their fence: issue the heavy barrier */
        /* What the header says, as we wrote it: any writer can overwrite it, the control
         * thread puts it back (heal_header). */
        uint32_t hstate;
        unsigned char line0[offsetof(struct eng_seg_hdr, state)];
        uint64_t heals;
};

static uint32_t owner_of(uint32_t idx)
{
        return idx + 1;
}

uint32_t eng_sstream_id(const eng_sstream_t *s)
{
        return s->user_id;
}

pid_t eng_sstream_pid(const eng_sstream_t *s)
{
        return s->pid;
}

void **eng_sstream_user(eng_sstream_t *s)
{
        return &s->user;
}

uint32_t eng_server_workers(const eng_server_t *srv)
{
        return srv->nworkers;
}

int eng_sstream_loan(eng_sstream_t *s, uint32_t len, void **p, uint64_t *off)
{
        int rc = eng_arena_alloc(&s->srv->sg.arena, len, owner_of(s->idx), off);
        if (rc == -ENOMEM)
                return -EAGAIN;
        if (rc == 0)
                *p = eng_arena_ptr(&s->srv->sg.arena, *off, len);
        return rc;
}

/* A worker's frees are batched and pushed back once per turn (drain); elsewhere (the control
 * thread, shutdown) they are immediate. */
static _Thread_local eng_arena_batch_t *tl_frees;

#define DEFER_MAX (16u << 10) /* blocks up to this size are freed in batches */

static void srv_free(struct eng_server *srv, uint64_t off)
{
        /* Batching pays where the per-message cost is the free itself (small blocks); a large
         * block goes back at once, so a turn of big messages does not keep a small segment's
         * space from its clients until the turn ends. */
        if (tl_frees != NULL && eng_arena_capacity(&srv->sg.arena, off) <= DEFER_MAX)
                eng_arena_free_later(&srv->sg.arena, tl_frees, off);
        else
                eng_arena_free(&srv->sg.arena, off);
}

void eng_sstream_free(eng_sstream_t *s, uint64_t off)
{
        if (off)
                srv_free(s->srv, off);
}

static void srv_event(struct eng_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void srv_event(struct eng_server *srv, const char *fmt, ...)
{
        if (srv->cfg.hooks.on_event == NULL)
                return;
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        srv->cfg.hooks.on_event(msg, srv->cfg.hooks.ctx);
}

static int push_out(eng_sstream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        struct eng_desc d = {.cmd = cmd, .len = len, .seq = s->seq_out + 1, .off = off, .arg = arg};
        if (!chan_push(&s->out, &d))
                return -EAGAIN;
        s->seq_out++;
        s->pushed = true;
        return 0;
}

int eng_sstream_send(eng_sstream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        if (cmd < ENG_CMD_SERVER_MIN || cmd > ENG_CMD_SERVER_MAX)
                return -EINVAL;
        if (s->ended)
                return -EPIPE;
        if (off != 0 && eng_arena_capacity(&s->srv->sg.arena, off) < len)
                return -EINVAL;
        return push_out(s, cmd, arg, off, len);
}

/* Wake the client's session if it announced it is waiting. The full fence orders our ring
 * publications (stores) before the load of `waiting` (Dekker with eng_client_ticket). */
static void wake_session(struct eng_server *srv, eng_sstream_t *s)
{
        struct eng_rec *sr = seg_rec(&srv->sg, s->type == REC_SESSION ? s->idx : s->session);
        if (sr == NULL)
                return;
        eng_fence_full();
        uint32_t w = eng_load_relaxed_u32(&sr->waiting);
        if (w != WAIT_NONE) {
                eng_faa_u32(&sr->wake, 1);
                /* Read SPIN? The client may have gone to SLEEP since, having read wake before
                 * our bump. Look again after the bump (a locked RMW: a full barrier): either we
                 * see SLEEP and wake it, or its SLEEP store came later and its fenced re-read of
                 * wake sees the bump. Without this it slept a whole 50 ms slice. */
                if (w == WAIT_SLEEP || eng_load_relaxed_u32(&sr->waiting) == WAIT_SLEEP)
                        eng_futex_wake(&sr->wake, INT32_MAX);
        }
}

/* End the stream from our side: tell the client why (best effort: if its ring is full it
 * will still see state ENDED), tell the hooks once. */
static void end_stream(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (s->ended)
                return;
        s->ended = true;
        if (s->known) {
                push_out(s, err == 0 ? CMD_S_CLOSE : CMD_S_ERROR, (uint64_t)(int64_t)-err, 0, 0);
                if (s->opened && srv->cfg.hooks.on_close)
                        srv->cfg.hooks.on_close(s, err, srv->cfg.hooks.ctx);
                s->opened = false;
        }
        eng_store_release_u32(&s->rec->state, ST_ENDED);
        eng_faa_u64(&srv->sg.hdr->ended, 1);
        wake_session(srv, s);
}

/* The client is done with the record (FIN) or dead: give everything back. Returns the
 * number of buffer blocks the record's owner still held. */
static int64_t finalize(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (!s->ended) {
                s->ended = true;
                if (s->opened && srv->cfg.hooks.on_close)
                        srv->cfg.hooks.on_close(s, err, srv->cfg.hooks.ctx);
                s->opened = false;
        }
        int64_t blocks = eng_arena_reclaim(&srv->sg.arena, owner_of(s->idx));
        if (s->pidfd >= 0)
                close(s->pidfd);
        s->pidfd = -1;
        s->live = false;
        eng_store_release_u32(&s->known, 0);
        s->user = NULL;
        eng_faa_u64(&srv->sg.hdr->closes, 1);
        eng_arena_rec_free(&srv->sg.arena, eng_arena_rec_offset(&srv->sg.arena, s->idx));
        return blocks > 0 ? blocks : 0;
}

static int accept_stream(struct eng_server *srv, eng_sstream_t *s)
{
        struct eng_rec *r = s->rec;
        /* CLAIMED was published with release after the owner fields. */
        if (eng_load_acquire_u32(&r->state) != ST_CLAIMED)
                return -EAGAIN;
        uint32_t depth = srv->sg.depth;
        s->type = r->type;
        s->session = r->session;
        s->user_id = r->user_id;
        s->pid = r->owner_pid;
        s->seq_in = s->seq_out = 0;
        chan_attach(&s->in, &r->c2s, rec_c2s_slots(r, depth), depth, srv->cfg.transport, false);
        chan_attach(&s->out, &r->s2c, rec_s2c_slots(r, depth), depth, srv->cfg.transport, true);
        int rc = 0;
        if (s->type == REC_STREAM) {
                /* The stream's session must be an accepted SESSION of the same process. A
                 * client schedules its session before its streams, but workers may take them
                 * in any order: a session still being claimed means "come back later". */
                eng_sstream_t *ss = s->session < srv->ntab ? &srv->tab[s->session] : NULL;
                if (s->pid <= 0 || (kill(s->pid, 0) != 0 && errno == ESRCH))
                        return -ESRCH; /* claimed by a process that is gone: reap it now */
                if (ss == NULL || !ss->live)
                        return -EPROTO;
                if (!eng_load_acquire_u32(&ss->known)) {
                        struct eng_rec *sr = ss->rec;
                        bool pending = eng_load_acquire_u32(&sr->state) == ST_CLAIMED &&
                                       sr->type == REC_SESSION && sr->owner_pid == s->pid;
                        if (pending)
                                return -EINPROGRESS;
                        /* Not claimed any more: accepted (or refused) meanwhile? known is
                         * published before the state moves on, so look again. */
                        if (!eng_load_acquire_u32(&ss->known))
                                return -EPROTO;
                }
                if (ss->type != REC_SESSION || ss->pid != s->pid)
                        rc = -EPROTO;
        } else if (s->type != REC_SESSION) {
                rc = -EPROTO;
        }
        if (rc == 0 && s->type == REC_SESSION) {
                /* Watch the client process; if it is already gone, so is the session. */
                s->pidfd = s->pid > 0 ? (int)syscall(SYS_pidfd_open, s->pid, 0) : -1;
                if (s->pidfd < 0)
                        rc = -ESRCH;
        }
        if (rc == 0 && s->type == REC_STREAM) {
                rc = srv->cfg.hooks.on_open ? srv->cfg.hooks.on_open(s, srv->cfg.hooks.ctx) : 0;
                s->opened = rc == 0;
        }
        /* Known from here on, even if refused (end_stream must tell the client); release:
         * type and pid are visible to a worker that reads known with acquire. */
        eng_store_release_u32(&s->known, 1);
        if (rc == 0) {
                eng_store_release_u32(&r->state, ST_OPEN);
                eng_faa_u64(&srv->sg.hdr->opens, 1);
        }
        return rc;
}

/* One message from the client. Returns < 0 to end the stream. */
static int handle(struct eng_server *srv, eng_sstream_t *s, const struct eng_desc *d)
{
        if (d->seq != s->seq_in + 1)
                return -EPROTO; /* lost, duplicated or forged descriptor */
        s->seq_in++;
        if (d->cmd == CMD_C_CLOSE) {
                end_stream(srv, s, 0);
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
        if (d->off != 0) {
                /* The buffer must be a live block of this very stream, and big enough. */
                if (eng_arena_owner(&srv->sg.arena, d->off) != owner_of(s->idx) ||
                    eng_arena_capacity(&srv->sg.arena, d->off) < d->len)
                        return -EPROTO;
                m.data = eng_arena_ptr(&srv->sg.arena, d->off, d->len);
        } else if (d->len != 0) {
                return -EPROTO;
        }
        if (s->type != REC_STREAM)
                return -EPROTO;
        int rc = srv->cfg.hooks.on_msg ? srv->cfg.hooks.on_msg(s, &m, srv->cfg.hooks.ctx) : 0;
        if (m.off != 0)
                srv_free(srv, m.off);
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
                         * recv). */
                        eng_store_relaxed_u32(&s->rec->want_space, 1);
                        eng_fence_full();
                        if (!chan_room(&s->out, 2))
                                return n;
                }
                struct eng_desc d;
                if (!chan_pop(&s->in, &d))
                        return n;
                s->pushed = true; /* a consumed slot is news for a client blocked on a full ring */
                int rc = handle(srv, s, &d);
                if (rc < 0)
                        end_stream(srv, s, rc);
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
                        finalize(srv, s, s->ended ? 0 : -ECONNABORTED);
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
                wake_session(srv, s);
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
        if (!s->live)
                goto out;
        struct eng_rec *r = s->rec;
        uint32_t st = eng_load_relaxed_u32(&r->sched);
        for (;;) {
                if (st == RUN_FIN) {
                        finalize(srv, s, s->ended ? 0 : -ECONNABORTED); /* no CLOSE: aborted */
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
                                pid_t pid = s->pid;
                                int64_t n = finalize(srv, s, -EPIPE); /* claimed by the dead */
                                srv_event(srv,
                                          "record %u was claimed by pid %d, which is gone: "
                                          "reclaimed with %lld buffer(s)",
                                          idx, (int)pid, (long long)n);
                                goto out;
                        } else if (rc < 0) {
                                end_stream(srv, s, rc);
                        }
                }
                if (s->known && !s->ended)
                        drain(srv, s, &more);
                if (s->pushed)
                        wake_session(srv, s);
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
                        finalize(srv, s, s->ended ? 0 : -ECONNABORTED);
                        goto out;
                }
        }
out:
        eng_store_release_u32(&s->busy, 0);
        return false;
}

static void *worker_main(void *arg)
{
        struct eng_server *srv = arg;
        struct eng_seg *sg = &srv->sg;
        uint32_t cursor = (uint32_t)(uintptr_t)pthread_self();
        uint32_t spins = 0;
        eng_sstream_t *set[POLL_MAX]; /* held (busy), sched POLLING */
        uint32_t np = 0;
        eng_arena_batch_t frees = {.n = 0};
        tl_frees = &frees;
        while (!eng_load_relaxed_u32(&srv->stop)) {
                uint32_t idx;
                if (ready_take(sg, &cursor, &idx)) {
                        /* One of ours posted (reap, or a client that writes sched): let go
                         * first, or run_stream would find it busy and post it forever. */
                        for (uint32_t i = 0; i < np; i++) {
                                if (set[i]->idx == idx) {
                                        release_polls(srv, &set[i], 1);
                                        set[i] = set[--np];
                                        break;
                                }
                        }
                        if (run_stream(srv, idx, np < POLL_MAX))
                                set[np++] = &srv->tab[idx];
                        spins = 0;
                        continue;
                }
                bool moved = false;
                for (uint32_t i = 0; i < np; i++) {
                        int rc = poll_once(srv, set[i]);
                        if (rc < 0)
                                set[i--] = set[--np];
                        else if (rc > 0)
                                moved = true;
                }
                /* Frees made outside a drain (on_close hooks, finalize) go back before we idle. */
                if (frees.n != 0)
                        eng_arena_flush(&srv->sg.arena, &frees);
                if (moved) {
                        spins = 0;
                        continue;
                }
                if (++spins < srv->cfg.spin) {
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
                /* Announce, then re-check (Dekker with ready_post), then sleep. */
                eng_faa_u32(&sg->hdr->srv_sleepers, 1);
                uint32_t seq = eng_load_acquire_u32(&sg->hdr->srv_wake);
                if (!ready_any(sg) && !eng_load_relaxed_u32(&srv->stop))
                        eng_futex_wait(&sg->hdr->srv_wake, seq, 200 * 1000000ll);
                eng_faa_u32(&sg->hdr->srv_sleepers, (uint32_t)-1);
                spins = 0;
        }
        release_polls(srv, set, np);
        eng_arena_flush(&srv->sg.arena, &frees);
        tl_frees = NULL;
        return NULL;
}

/* ---- control thread: the GUID hand-out and liveness ---------------------------------- */

/* We got the bootstrap mutex with EOWNERDEAD: a client died inside it. */
static void boot_repair(struct eng_server *srv)
{
        bool spent = seg_boot_repair(&srv->sg);
        eng_faa_u32(&srv->sg.hdr->ctl_wake, 1);
        srv_event(srv, "a client died holding the bootstrap mutex: repaired%s",
                  spent ? "; the record it had claimed is reclaimed" : "");
}

/*
 * The bootstrap mutex, with a deadline: a client may hold it (alive, stopped or hostile) for
 * as long as it likes, and the control thread must go on reaping, and shutdown must finish.
 */
static int boot_lock_timed(struct eng_server *srv, uint64_t ms)
{
        struct timespec ts = seg_realtime_in(ms * 1000000ull);
        int rc = pthread_mutex_timedlock(&srv->sg.hdr->boot, &ts);
        if (rc == EOWNERDEAD) {
                boot_repair(srv);
                rc = 0;
        }
        return -rc;
}

/*
 * Do not leave a dead holder's mutex for the next client to find: every reap tick, try the
 * mutex (never blocks) and repair it if its holder died. Without this a record the dead
 * holder claimed stayed allocated until some other client opened a stream.
 */
static void boot_check(struct eng_server *srv)
{
        struct eng_seg_hdr *h = srv->sg.hdr;
        int rc = pthread_mutex_trylock(&h->boot);
        if (rc == EOWNERDEAD)
                boot_repair(srv);
        else if (rc != 0)
                return; /* EBUSY: held by a live client (or one not yet seen dead) */
        pthread_mutex_unlock(&h->boot);
}

static int offer_new(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        uint64_t off;
        int rc = eng_arena_rec_alloc(&sg->arena, 0, &off);
        if (rc != 0)
                return rc;
        int64_t idx = eng_arena_rec_index(&sg->arena, off);
        if (idx < 0 || (uint64_t)idx >= sg->max_streams || (uint64_t)idx >= srv->ntab) {
                eng_arena_rec_free(&sg->arena, off);
                return -ENOMEM;
        }
        eng_sstream_t *s = &srv->tab[idx];
        /* A stray ready bit may have a worker glance at the entry: own it while resetting. */
        uint32_t seen;
        while (!eng_cas_u32(&s->busy, 0, 1, &seen))
                eng_cpu_relax();
        struct eng_rec *r = (struct eng_rec *)(sg->arena.base + off);
        memset(r, 0, sizeof(*r));
        r->type = 0;
        if (getrandom(r->guid, sizeof(r->guid), 0) != sizeof(r->guid)) {
                r->guid[0] = eng_now_ns();
                r->guid[1] = (uint64_t)idx << 32 | (uint32_t)getpid();
        }
        memcpy(&r->epoch, srv->line0 + offsetof(struct eng_seg_hdr, epoch), sizeof(r->epoch));
        r->depth = sg->depth;
        chan_init_shared(&r->c2s, srv->cfg.transport, sg->depth, UINT32_MAX - 3 * sg->depth);
        chan_init_shared(&r->s2c, srv->cfg.transport, sg->depth, UINT32_MAX - 5 * sg->depth);
        r->sched = RUN_IDLE;
        memset((char *)s + sizeof(s->busy), 0, sizeof(*s) - sizeof(s->busy));
        s->idx = (uint32_t)idx;
        s->rec = r;
        s->srv = srv;
        s->pidfd = -1;
        s->live = true;
        eng_store_release_u32(&s->busy, 0);
        eng_store_release_u32(&r->state, ST_OFFERED);

        if (boot_lock_timed(srv, 100) != 0) {
                /* Held by a client for 100 ms: give the slot back and try again later (the
                 * control thread keeps reaping meanwhile). */
                s->live = false;
                eng_arena_rec_free(&sg->arena, off);
                return -EAGAIN;
        }
        sg->hdr->offer_guid[0] = r->guid[0];
        sg->hdr->offer_guid[1] = r->guid[1];
        sg->hdr->offer_idx = (uint32_t)idx;
        sg->hdr->offer_state = 1;
        pthread_mutex_unlock(&sg->hdr->boot);
        srv->offered = (uint32_t)idx + 1;
        eng_faa_u32(&sg->hdr->boot_wake, 1);
        eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        return 0;
}

/* Take a stream away from the workers and give everything back. */
static int64_t reap(struct eng_server *srv, eng_sstream_t *t)
{
        uint32_t seen;
        /* A worker polling the stream lets go when anything is posted: post it. */
        if (!eng_cas_u32(&t->busy, 0, 1, &seen)) {
                ready_post(&srv->sg, t->idx);
                while (!eng_cas_u32(&t->busy, 0, 1, &seen))
                        eng_cpu_relax();
        }
        int64_t blocks = t->live ? finalize(srv, t, -EPIPE) : 0;
        eng_store_release_u32(&t->busy, 0);
        return blocks;
}

static bool pid_gone(pid_t pid)
{
        return pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH);
}

/*
 * Peers that are gone. A session's pidfd says when its process exits: then every record that
 * process holds goes — accepted streams (by pid), and records it claimed but the server never
 * accepted, whatever their state now says (by the owner pid in the record; never the record on
 * offer). Streams whose session was closed while they stayed open (a client that detached
 * without closing them) have no pidfd watching them any more: they are checked by pid.
 */
static void reap_dead(struct eng_server *srv)
{
        uint32_t offered = srv->offered ? srv->offered - 1 : UINT32_MAX;
        for (uint32_t i = 0; i < srv->ntab; i++) {
                eng_sstream_t *s = &srv->tab[i];
                if (!s->live || !eng_load_acquire_u32(&s->known) || s->type != REC_SESSION ||
                    s->pidfd < 0)
                        continue;
                struct pollfd p = {.fd = s->pidfd, .events = POLLIN};
                if (poll(&p, 1, 0) != 1)
                        continue;
                pid_t dead = s->pid;
                uint32_t recs = 0;
                int64_t blocks = 0;
                for (uint32_t j = 0; j < srv->ntab; j++) {
                        eng_sstream_t *t = &srv->tab[j];
                        if (!t->live || j == offered)
                                continue;
                        bool mine = eng_load_acquire_u32(&t->known) ? t->pid == dead
                                                                    : t->rec->owner_pid == dead;
                        if (mine) {
                                blocks += reap(srv, t);
                                recs++;
                        }
                }
                srv_event(srv, "client pid %d exited: reclaimed %u record(s), %lld buffer(s)",
                          (int)dead, recs, (long long)blocks);
        }
        for (uint32_t j = 0; j < srv->ntab; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live || !eng_load_acquire_u32(&t->known) || t->type != REC_STREAM)
                        continue;
                eng_sstream_t *ss = t->session < srv->ntab ? &srv->tab[t->session] : NULL;
                bool watched = ss != NULL && ss->live && ss->type == REC_SESSION &&
                               ss->pid == t->pid && ss->pidfd >= 0;
                if (!watched && pid_gone(t->pid)) {
                        pid_t pid = t->pid;
                        int64_t blocks = reap(srv, t);
                        srv_event(srv,
                                  "pid %d is gone: reclaimed its stream record %u, %lld "
                                  "buffer(s)",
                                  (int)pid, j, (long long)blocks);
                }
        }
}

/*
 * The header's immutable line and the server state are ours; clients only read them, but any
 * process that maps the segment can write them. Put them back (each tick): a forged magic or
 * size must not keep the next client from attaching. The magic goes last, as at creation.
 * Stop changes hstate and then the header: after writing, look at hstate again, so a heal that
 * raced with stop cannot leave the old state behind.
 */
static void heal_header(struct eng_server *srv)
{
        struct eng_seg_hdr *h = srv->sg.hdr;
        unsigned char *raw = (unsigned char *)h;
        bool bad = false;
        if (memcmp(raw, srv->line0, sizeof(srv->line0)) != 0) {
                size_t m = sizeof(h->magic); /* magic is the first word */
                memcpy(raw + m, srv->line0 + m, sizeof(srv->line0) - m);
                uint32_t magic;
                memcpy(&magic, srv->line0, sizeof(magic));
                eng_store_release_u32(&h->magic, magic);
                bad = true;
        }
        uint32_t want = eng_load_acquire_u32(&srv->hstate);
        if (eng_load_acquire_u32(&h->state) != want) {
                eng_store_release_u32(&h->state, want);
                /* Our header store before the re-read of hstate; stop stores hstate before
                 * the header: one of us sees the other's store. */
                eng_fence_full();
                uint32_t now = eng_load_acquire_u32(&srv->hstate);
                if (now != want)
                        eng_store_release_u32(&h->state, now);
                bad = true;
        }
        if (bad && (srv->heals++ % 1000) == 0)
                srv_event(srv,
                          "the segment header was overwritten by a client: restored (%llu "
                          "time(s) so far)",
                          (unsigned long long)srv->heals);
}

/*
 * The offer as published in the header, checked against the record we offered. If the
 * record is still OFFERED (nobody claimed it) but the header says otherwise (offer_state,
 * offer_idx or the GUID overwritten), publish it again rather than leaking it: a worker
 * leaves an OFFERED record alone. Under the bootstrap mutex, as claims are. True if the
 * offer was published again (or stands as it is).
 */
static bool offer_republish(struct eng_server *srv)
{
        if (srv->offered == 0)
                return false;
        if (eng_load_acquire_u32(&srv->hstate) != SRV_READY)
                return true; /* stopping withdrew the offer: leave it withdrawn */
        struct eng_seg *sg = &srv->sg;
        struct eng_seg_hdr *h = sg->hdr;
        uint32_t idx = srv->offered - 1;
        struct eng_rec *r = seg_rec(sg, idx);
        if (r == NULL)
                return false;
        if (eng_load_acquire_u32(&h->offer_state) == 1 && h->offer_idx == idx &&
            h->offer_guid[0] == r->guid[0] && h->offer_guid[1] == r->guid[1])
                return eng_load_acquire_u32(&r->state) == ST_OFFERED; /* as published */
        if (boot_lock_timed(srv, 100) != 0)
                return false;
        bool still = eng_load_acquire_u32(&r->state) == ST_OFFERED;
        bool changed = false;
        if (still && (h->offer_state != 1 || h->offer_idx != idx ||
                      h->offer_guid[0] != r->guid[0] || h->offer_guid[1] != r->guid[1])) {
                h->offer_guid[0] = r->guid[0];
                h->offer_guid[1] = r->guid[1];
                h->offer_idx = idx;
                eng_store_release_u32(&h->offer_state, 1);
                changed = true;
        }
        pthread_mutex_unlock(&h->boot);
        if (changed) {
                eng_faa_u32(&h->boot_wake, 1);
                eng_futex_wake(&h->boot_wake, INT32_MAX);
        }
        return still;
}

static void *ctl_main(void *arg)
{
        struct eng_server *srv = arg;
        struct eng_seg *sg = &srv->sg;
        uint64_t last_tick = 0;
        while (!eng_load_relaxed_u32(&srv->stop)) {
                uint32_t seq = eng_load_acquire_u32(&sg->hdr->ctl_wake);
                /* Every 50 ms whatever else happens (a full segment included: that is when a
                 * dead client's records matter most). */
                uint64_t now = eng_now_ns();
                if (now - last_tick > 50 * 1000000ull) {
                        heal_header(srv);
                        boot_check(srv);
                        reap_dead(srv);
                        last_tick = now;
                }
                /* Still on offer? (the header's copy put right if it was overwritten) */
                if (offer_republish(srv)) {
                        eng_futex_wait(&sg->hdr->ctl_wake, seq, 50 * 1000000ll);
                        continue;
                }
                if (srv->offered) {
                        /* Taken: let a worker accept it promptly, even if the client stays
                         * silent. */
                        uint32_t idx = srv->offered - 1;
                        srv->offered = 0;
                        ready_post(sg, idx);
                }
                if (offer_new(srv) != 0) /* full: again when something is freed (or soon) */
                        eng_futex_wait(&sg->hdr->ctl_wake, seq, 20 * 1000000ll);
        }
        return NULL;
}

int eng_server_start(const eng_server_cfg_t *cfg_in, eng_server_t **out)
{
        eng_server_t *srv = calloc(1, sizeof(*srv));
        if (srv == NULL)
                return -ENOMEM;
        srv->cfg = *cfg_in;
        eng_server_cfg_t *cfg = &srv->cfg;
        if (cfg->name == NULL)
                cfg->name = "/engine-default";
        if (cfg->size == 0)
                cfg->size = 64ull << 20;
        if (cfg->mode == 0)
                cfg->mode = 0600;
        if (cfg->transport == 0)
                cfg->transport = ENG_TRANSPORT_LOCKFREE;
        if (cfg->workers == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                cfg->workers = n > 0 ? (uint32_t)n : 1;
        }
        if (cfg->ring_depth == 0)
                cfg->ring_depth = 128;
        if (cfg->spin == 0)
                cfg->spin = 4096;
        if (cfg->min_block_shift == 0)
                cfg->min_block_shift = 12;
        if (cfg->max_block_shift == 0)
                cfg->max_block_shift = 20;
        int rc =
            seg_create(&srv->sg, cfg->name, cfg->size, cfg->mode, cfg->transport, cfg->ring_depth,
                       cfg->max_streams, cfg->min_block_shift, cfg->max_block_shift);
        if (rc != 0) {
                free(srv);
                return rc;
        }
        /* Before any thread: the control thread heals the header from this copy. */
        memcpy(srv->line0, srv->sg.hdr, sizeof(srv->line0));
        srv->hstate = SRV_STARTING;
        srv->ntab = srv->sg.max_streams;
        srv->asym = srv->sg.hdr->asym == 1;
        srv->tab = calloc(srv->ntab, sizeof(*srv->tab));
        srv->workers = calloc(cfg->workers, sizeof(pthread_t));
        if (srv->tab == NULL || srv->workers == NULL) {
                rc = -ENOMEM;
                goto fail;
        }
        for (uint32_t i = 0; i < srv->ntab; i++)
                srv->tab[i].pidfd = -1;
        rc = offer_new(srv);
        if (rc != 0) {
                eng_set_err("segment too small for a single stream record");
                goto fail;
        }
        for (uint32_t i = 0; i < cfg->workers; i++) {
                if ((rc = -pthread_create(&srv->workers[i], NULL, worker_main, srv)) != 0)
                        goto fail_threads;
                srv->nworkers++;
        }
        if ((rc = -pthread_create(&srv->ctl, NULL, ctl_main, srv)) != 0)
                goto fail_threads;
        eng_store_release_u32(&srv->hstate, SRV_READY);
        eng_store_release_u32(&srv->sg.hdr->state, SRV_READY);
        *out = srv;
        return 0;
fail_threads:
        eng_store_relaxed_u32(&srv->stop, 1);
        eng_faa_u32(&srv->sg.hdr->srv_wake, 1);
        eng_futex_wake(&srv->sg.hdr->srv_wake, INT32_MAX);
        for (uint32_t i = 0; i < srv->nworkers; i++)
                pthread_join(srv->workers[i], NULL);
        eng_set_err("cannot start server threads: %s", strerror(-rc));
fail:
        shm_unlink(srv->sg.name);
        seg_unmap(&srv->sg);
        free(srv->tab);
        free(srv->workers);
        free(srv);
        return rc;
}

void eng_server_stop(eng_server_t *srv)
{
        if (srv == NULL)
                return;
        struct eng_seg *sg = &srv->sg;
        eng_store_release_u32(&srv->hstate, SRV_STOPPING);
        eng_store_release_u32(&sg->hdr->state, SRV_STOPPING);
        /* Withdraw the offer: nobody may claim a record that no worker will serve. */
        bool locked = boot_lock_timed(srv, 1000) == 0;
        sg->hdr->offer_state = 0; /* without the lock if a client sits on it: we are stopping */
        if (locked)
                pthread_mutex_unlock(&sg->hdr->boot);
        eng_store_relaxed_u32(&srv->stop, 1);
        eng_faa_u32(&sg->hdr->srv_wake, 1);
        eng_futex_wake(&sg->hdr->srv_wake, INT32_MAX);
        eng_faa_u32(&sg->hdr->ctl_wake, 1);
        eng_futex_wake(&sg->hdr->ctl_wake, INT32_MAX);
        for (uint32_t i = 0; i < srv->nworkers; i++)
                pthread_join(srv->workers[i], NULL);
        pthread_join(srv->ctl, NULL);
        /* Workers are gone: end what is still open so every client learns it (-EPIPE). */
        for (uint32_t i = 0; i < srv->ntab; i++) {
                eng_sstream_t *s = &srv->tab[i];
                if (s->live && s->known && !s->ended)
                        end_stream(srv, s, -ESHUTDOWN);
                if (s->pidfd >= 0)
                        close(s->pidfd);
        }
        eng_store_release_u32(&srv->hstate, SRV_STOPPED);
        eng_store_release_u32(&sg->hdr->state, SRV_STOPPED);
        eng_faa_u32(&sg->hdr->boot_wake, 1);
        eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        shm_unlink(sg->name);
        seg_unmap(sg);
        free(srv->tab);
        free(srv->workers);
        free(srv);
}
