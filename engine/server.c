/*
 * server.c - the server runtime: the control thread (offers GUIDs, decides and watches
 * claims, heals what clients may scribble, reaps) and a fixed pool of workers that serve
 * every stream (no thread per stream).
 *
 * Scheduling: a stream is run by at most one worker at a time. The shared sched word says
 * so to honest clients; a private per-stream `busy` flag enforces it even if a client writes
 * garbage into sched (a second worker that finds the stream busy just re-posts it).
 *
 * Trust: the segment is writable by every process of the user. What the server decides with
 * is private: who claimed a record (the kernel's claim lock, not the record's owner_pid), which
 * process it watches (a pidfd per pid), which records are live and in which phase, and every
 * field of a claim, read once at accept. A record taken off the offer is decided, refused or
 * reclaimed within CLAIM_DEADLINE_NS whatever the segment says.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RUN_BATCH 64 /* messages per turn before a stream goes to the back of the line */
#define TICK_NS   (50 * 1000000ull) /* the control thread's heal/reap period */
/* A record taken off the offer must be accepted or refused by then; a refused claim that no
 * verified process holds must be given back (FIN) by then. */
#define CLAIM_DEADLINE_NS (2000 * 1000000ull)

struct eng_sstream {
        uint32_t busy; /* private exclusivity (server memory, not the segment) */
        uint32_t idx;
        bool live;      /* between offer and finalisation */
        uint32_t known; /* decided; published with release: workers read other entries' */
        uint32_t ended; /* we sent CLOSE/ERROR; waiting for the client's FIN (ctl reads it) */
        bool pushed;    /* this turn produced something for the client */
        bool opened;    /* on_open accepted it: on_close is owed exactly once */
        bool stalled;   /* the last drain stopped for want of reply room */
        int32_t err;    /* why we ended it (0: closed in order) */
        uint32_t type;
        uint32_t session;
        uint32_t session_gen; /* the session's gen when this stream was accepted */
        uint32_t gen;         /* bumped at every offer of this slot */
        uint64_t guid0;       /* the GUID's first word as we offered it (names the claim lock) */
        uint32_t user_id;
        pid_t pid;             /* known: the claimer, as the kernel says (verified) or as claimed */
        bool verified;         /* pid is the claim lock's holder */
        int32_t pw;            /* slot in the pid watch table, -1 if none */
        uint64_t taken_ns;     /* the control thread saw it leave the offer (0: on offer) */
        uint64_t fin_deadline; /* refused without a verified claimer: reaped by then */
        uint64_t seq_in, seq_out;
        struct chan_end in, out;
        struct eng_rec *rec;
        struct eng_server *srv;
        void *user;
};

/* One watched client process: its pidfd and the records that belong to it. */
struct pidwatch {
        pid_t pid;
        int pidfd;
        uint32_t refs;
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
        uint32_t offered;    /* index currently on offer (+1), 0 if none */
        uint32_t offer_word; /* hdr->offer_state as we published it (generation | UP) */
        /* The offered record as we wrote it: lines 0..8 (identity, sched, wake, both channels'
         * control blocks). While it is OFFERED nobody honest writes there but the claim. */
        unsigned char offer_snap[9 * CL];
        bool asym; /* clients may skip their fence: issue the heavy barrier */
        /* The bootstrap lock is an OFD lock on sg.fd, which all our threads share: they
         * serialise among themselves here. */
        pthread_mutex_t boot_mu;
        /* Watched processes (accept on workers, reap on the control thread). */
        pthread_mutex_t pw_mu;
        struct pidwatch *pw;
        uint32_t npw, cappw;
        /* What the header says, as we wrote it: any writer can overwrite it, the control
         * thread puts it back (heal_header). */
        uint32_t hstate;
        uint64_t heals;
        /* Events counted by workers, logged once per tick by the control thread. */
        uint32_t ev_unclaimed, ev_unverified;         /* counted by workers */
        uint32_t ev_unclaimed_log, ev_unverified_log; /* logged so far (control thread) */
        bool name_gone_logged;
        uint32_t restored_logged; /* sg.restored: shrinks the SIGBUS guard undid */
        bool broken_logged;
        /* Workers park while the control thread repairs the arena (repair_arena). */
        uint32_t park, parked;
        /* What may have left the arena inconsistent since the last check at idle: records
         * finalised (a dead client's crash windows), anomalies this process met, cuts others
         * met (the shared count), heals. */
        uint32_t finals;
        uint32_t finals_seen;
        uint64_t anomalies_seen, cuts_seen, failed_seen, frees_seen;
        uint32_t gate; /* hdr->arena_gate as it should be (heal_header puts it back) */
        bool dirty;
        uint64_t last_repair_ns;
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

bool eng_server_failed(const eng_server_t *srv)
{
        return eng_load_acquire_u32((uint32_t *)&srv->sg.broken) != 0;
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

/* An event counted where it happens (on workers), logged once per tick by the control thread
 * ("N what"), so that a writer that provokes it in a loop gets one line a tick, not a flood. */
static void log_counted(struct eng_server *srv, uint32_t *count, uint32_t *logged, const char *what)
{
        uint32_t n = eng_load_relaxed_u32(count);
        if (n != *logged) {
                srv_event(srv, "%u %s", n - *logged, what);
                *logged = n;
        }
}

/* ---- watched processes ---------------------------------------------------------------- */

/* Watch pid (a verified claimer): share its entry or open a pidfd. 0, or -errno of
 * pidfd_open (ESRCH: it is gone; EMFILE/ENFILE: we cannot watch it). */
static int pw_acquire(struct eng_server *srv, pid_t pid, int32_t *slot)
{
        pthread_mutex_lock(&srv->pw_mu);
        int32_t free_slot = -1;
        for (uint32_t i = 0; i < srv->npw; i++) {
                if (srv->pw[i].refs != 0 && srv->pw[i].pid == pid) {
                        srv->pw[i].refs++;
                        *slot = (int32_t)i;
                        pthread_mutex_unlock(&srv->pw_mu);
                        return 0;
                }
                if (srv->pw[i].refs == 0 && free_slot < 0)
                        free_slot = (int32_t)i;
        }
        int fd = (int)syscall(SYS_pidfd_open, pid, 0);
        int rc = fd < 0 ? -errno : 0;
        if (rc == 0 && free_slot < 0) {
                if (srv->npw == srv->cappw) {
                        uint32_t cap = srv->cappw ? 2 * srv->cappw : 16;
                        struct pidwatch *p = realloc(srv->pw, cap * sizeof(*p));
                        if (p == NULL) {
                                close(fd);
                                rc = -ENOMEM;
                        } else {
                                srv->pw = p;
                                srv->cappw = cap;
                        }
                }
                if (rc == 0)
                        free_slot = (int32_t)srv->npw++;
        }
        if (rc == 0) {
                srv->pw[free_slot] = (struct pidwatch){.pid = pid, .pidfd = fd, .refs = 1};
                *slot = free_slot;
        }
        pthread_mutex_unlock(&srv->pw_mu);
        return rc;
}

static void pw_ref(struct eng_server *srv, int32_t slot)
{
        pthread_mutex_lock(&srv->pw_mu);
        srv->pw[slot].refs++;
        pthread_mutex_unlock(&srv->pw_mu);
}

static void pw_release(struct eng_server *srv, int32_t slot)
{
        if (slot < 0)
                return;
        pthread_mutex_lock(&srv->pw_mu);
        if (--srv->pw[slot].refs == 0) {
                close(srv->pw[slot].pidfd);
                srv->pw[slot].pidfd = -1;
                srv->pw[slot].pid = 0;
        }
        pthread_mutex_unlock(&srv->pw_mu);
}

static bool pid_gone(pid_t pid)
{
        return pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH);
}

/* ---- streams ------------------------------------------------------------------------ */

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

/* The arena gate is open again (a repair ended, or a gate a writer shut was put back). A
 * client refused a loan at the shut gate waits as it would for space: on its session's wake
 * word (try_loan callers) or on the free word (eng_stream_loan). Nothing else would wake it,
 * since no free made the refusal: wake every session and the free word's sleepers. At most
 * once per repair (a second) or per healed gate. Ordering (Dekker with eng_client_ticket):
 * the gate's release store comes first, then wake_session's full fence and its read of
 * `waiting`; the client stores `waiting`, fences, then reads the gate in try_loan. Either it
 * sees the gate open or we see it waiting and move its wake word. */
static void gate_opened(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        eng_futex_wake(&sg->hdr->arena_gate, INT32_MAX);
        eng_faa_u32(eng_arena_free_word(&sg->arena), 1);
        eng_futex_wake(eng_arena_free_word(&sg->arena), INT32_MAX);
        for (uint32_t j = 0; j < srv->ntab; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (t->live && eng_load_acquire_u32(&t->known) && t->type == REC_SESSION)
                        wake_session(srv, t);
        }
}

/* End the stream from our side: tell the client why (best effort: if its ring is full it
 * will still see state ENDED), tell the hooks once. */
static void end_stream(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (s->ended)
                return;
        eng_store_relaxed_u32(&s->ended, 1);
        s->err = err;
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

/* The client is done with the record (FIN) or dead, or the claim was never real: give
 * everything back. Returns the number of buffer blocks the record's owner still held. */
static int64_t finalize(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (!s->ended) {
                eng_store_relaxed_u32(&s->ended, 1);
                if (s->opened && srv->cfg.hooks.on_close)
                        srv->cfg.hooks.on_close(s, err, srv->cfg.hooks.ctx);
                s->opened = false;
        }
        int64_t blocks = eng_arena_reclaim(&srv->sg.arena, owner_of(s->idx));
        pw_release(srv, s->pw);
        s->pw = -1;
        s->live = false;
        eng_store_relaxed_u64(&s->taken_ns, 0);
        eng_store_release_u32(&s->known, 0);
        s->user = NULL;
        eng_faa_u32(&srv->finals, 1);
        eng_faa_u64(&srv->sg.hdr->closes, 1);
        eng_arena_rec_free(&srv->sg.arena, eng_arena_rec_offset(&srv->sg.arena, s->idx));
        return blocks > 0 ? blocks : 0;
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
        s->seq_in = s->seq_out = 0;
        chan_attach(&s->in, &r->c2s, rec_c2s_slots(r, depth), depth, srv->cfg.transport, false);
        chan_attach(&s->out, &r->s2c, rec_s2c_slots(r, depth), depth, srv->cfg.transport, true);
        int rc = 0;
        if (!s->verified) {
                rc = -EACCES; /* the claim names someone other than its lock's holder */
        } else if (type == REC_SESSION) {
                rc = pw_acquire(srv, s->pid, &s->pw);
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
                } else if (eng_load_relaxed_u32(&ss->ended) || ss->pw < 0) {
                        /* the session was refused or ended: say why (e.g. the server cannot
                         * watch the client: "Too many open files") */
                        rc = ss->err < 0 ? ss->err : -EPIPE;
                } else {
                        s->session_gen = ss->gen;
                        s->pw = ss->pw;
                        pw_ref(srv, s->pw);
                }
        } else {
                rc = -EPROTO;
        }
        if (rc == 0 && type == REC_STREAM) {
                rc = srv->cfg.hooks.on_open ? srv->cfg.hooks.on_open(s, srv->cfg.hooks.ctx) : 0;
                s->opened = rc == 0;
        }
        if (rc != 0 && (!s->verified || s->pw < 0))
                s->fin_deadline = eng_now_ns() + CLAIM_DEADLINE_NS;
        /* Known from here on, even if refused (end_stream must tell the client); release:
         * type and pid are visible to a thread that reads known with acquire. */
        eng_store_release_u32(&s->known, 1);
        if (rc == 0) {
                eng_store_release_u32(&r->state, ST_OPEN);
                eng_faa_u64(&srv->sg.hdr->opens, 1);
        }
        return rc;
}

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
                                /* Nobody holds the claim: forged, or the claimer died. Nobody
                                 * honest can think the record is theirs: give it back now. */
                                finalize(srv, s, -EPIPE);
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
                if (eng_load_acquire_u32(&srv->park)) {
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

/* ---- control thread: the hand-out, claims, healing, reaping ------------------------- */

/* The bootstrap lock with a deadline: a client may hold it (alive, stopped or hostile) as long
 * as it likes; the control thread must go on reaping and shutdown must finish. */
static int srv_boot_lock(struct eng_server *srv, uint64_t ms)
{
        pthread_mutex_lock(&srv->boot_mu);
        int rc = seg_boot_lock(&srv->sg, eng_now_ns() + ms * 1000000ull, NULL, NULL);
        if (rc != 0)
                pthread_mutex_unlock(&srv->boot_mu);
        return rc;
}

static void srv_boot_unlock(struct eng_server *srv)
{
        seg_boot_unlock(&srv->sg);
        pthread_mutex_unlock(&srv->boot_mu);
}

/* Publish the offer of record idx: words first, then the state word with a new generation
 * (release: a claimer that acquires it sees the words). No lock: see offer_state in
 * internal.h. */
static void offer_publish(struct eng_server *srv, uint32_t idx, const uint64_t guid[2])
{
        struct eng_seg_hdr *h = srv->sg.hdr;
        uint32_t w = (((srv->offer_word >> 2) + 1) << 2) | OFFER_UP;
        eng_store_relaxed_u64(&h->offer_guid[0], guid[0]);
        eng_store_relaxed_u64(&h->offer_guid[1], guid[1]);
        eng_store_relaxed_u32(&h->offer_idx, idx);
        eng_store_release_u32(&h->offer_state, w);
        srv->offer_word = w;
}

/*
 * Records grow up and buffers down into one gap. A record without a buffer can do nothing:
 * a client with hundreds of queued streams would take every record and leave no room for a
 * superblock, and nothing would move. So a record is carved from the gap only while what is
 * left for buffers (the buffer area plus the gap after the carve) is at least two superblocks
 * (one in an arena of fewer than four: the buffer area grows by whole superblocks; the mutex
 * baseline's first-fit arena keeps a quarter, at most 1 MiB). Freed record slots are always
 * reused.
 */
static bool record_fits(struct eng_seg *sg)
{
        uint64_t free_slots, room, top = eng_arena_top(&sg->arena);
        eng_arena_rec_room(&sg->arena, &free_slots, &room);
        if (free_slots > 0)
                return true;
        uint64_t reserve;
        if (eng_arena_kind(&sg->arena) == ENG_ARENA_LOCKFREE) {
                uint64_t sb = eng_arena_max_alloc(&sg->arena) + ENG_ARENA_HDR_BYTES;
                reserve = top >= 4 * sb ? 2 * sb : sb;
        } else { /* the first-fit baseline carves any size: keep a quarter, at most 1 MiB */
                reserve = top / 4 < (1u << 20) ? top / 4 : (1u << 20);
        }
        return room >= reserve;
}

static int offer_new(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        uint64_t off;
        if (!record_fits(sg))
                return -ENOMEM;
        int rc = eng_arena_rec_alloc(&sg->arena, 0, &off);
        if (rc != 0)
                return rc;
        int64_t idx = eng_arena_rec_index(&sg->arena, off);
        if (idx < 0 || (uint64_t)idx >= sg->max_streams || (uint64_t)idx >= srv->ntab ||
            srv->tab[idx].live) {
                /* Not a slot we can offer (a live one: the record list was forged): keep it
                 * out of circulation; the idle rebuild gives back whatever is not live. */
                if (idx < 0 || (uint64_t)idx >= srv->ntab || !srv->tab[idx].live)
                        eng_arena_rec_free(&sg->arena, off);
                return -ENOMEM;
        }
        eng_sstream_t *s = &srv->tab[idx];
        if ((uint32_t)idx + 1 > eng_load_relaxed_u32(&sg->ready_hi))
                eng_store_relaxed_u32(&sg->ready_hi, (uint32_t)idx + 1); /* (ctl only writes) */
        /* A stray ready bit may have a worker glance at the entry: own it while resetting. */
        uint32_t seen;
        while (!eng_cas_u32(&s->busy, 0, 1, &seen))
                eng_cpu_relax();
        struct eng_rec *r = (struct eng_rec *)(sg->arena.base + off);
        memset(r, 0, sizeof(*r));
        if (getrandom(r->guid, sizeof(r->guid), 0) != sizeof(r->guid)) {
                r->guid[0] = eng_now_ns();
                r->guid[1] = (uint64_t)idx << 32 | (uint32_t)getpid();
        }
        r->epoch = sg->line0.epoch;
        r->depth = sg->depth;
        chan_init_shared(&r->c2s, srv->cfg.transport, sg->depth, UINT32_MAX - 3 * sg->depth);
        chan_init_shared(&r->s2c, srv->cfg.transport, sg->depth, UINT32_MAX - 5 * sg->depth);
        r->sched = RUN_IDLE;
        uint32_t gen = s->gen + 1;
        memset((char *)s + sizeof(s->busy), 0, sizeof(*s) - sizeof(s->busy));
        s->gen = gen;
        s->guid0 = r->guid[0];
        s->idx = (uint32_t)idx;
        s->rec = r;
        s->srv = srv;
        s->pw = -1;
        s->live = true;
        eng_store_release_u32(&s->busy, 0);
        eng_store_release_u32(&r->state, ST_OFFERED);
        uint64_t guid[2] = {r->guid[0], r->guid[1]};
        memcpy(srv->offer_snap, r, sizeof(srv->offer_snap));
        offer_publish(srv, (uint32_t)idx, guid);
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

static bool bit_set(const struct eng_seg *sg, uint32_t idx)
{
        return (eng_load_relaxed_u64(&sg->bitmap[idx >> 6]) >> (idx & 63)) & 1;
}

#define DEAD_MAX 64 /* processes noticed dead per tick (the rest: next tick) */

/*
 * Every tick, over every live record except the one on offer:
 *   - a process we watch exited (one poll over all pidfds): every record it holds goes;
 *   - a verified claimer we could not watch (no pidfd) is gone: its records go;
 *   - a claim refused without a verified claimer was not given back by its deadline: it goes;
 *   - a record taken off the offer was not decided by its deadline: it goes;
 *   - a stream whose session ended (the client detached) is an orphan: it goes;
 *   - scheduling that a writer undid: a stream that should be run (QUEUED, AGAIN, FIN, a
 *     stalled one, an undecided claim) but whose ready bit is clear, and that no worker holds,
 *     is posted again. So no scribble of sched, the bitmap or want_space stalls a stream for
 *     more than a tick once the writer stops.
 */
static bool reap_tick(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        struct {
                pid_t pid;
                uint32_t recs;
                int64_t blocks;
        } dead[DEAD_MAX];
        uint32_t nd = 0;
        pthread_mutex_lock(&srv->pw_mu);
        if (srv->npw > 0) {
                struct pollfd *pf = calloc(srv->npw, sizeof(*pf));
                if (pf != NULL) {
                        for (uint32_t i = 0; i < srv->npw; i++) {
                                pf[i].fd = srv->pw[i].refs ? srv->pw[i].pidfd : -1;
                                pf[i].events = POLLIN;
                        }
                        if (poll(pf, srv->npw, 0) > 0) {
                                for (uint32_t i = 0; i < srv->npw && nd < DEAD_MAX; i++)
                                        if (pf[i].revents & POLLIN)
                                                dead[nd++].pid = srv->pw[i].pid;
                        }
                        free(pf);
                }
        }
        pthread_mutex_unlock(&srv->pw_mu);
        for (uint32_t i = 0; i < nd; i++)
                dead[i].recs = 0, dead[i].blocks = 0;

        uint64_t now = eng_now_ns();
        uint32_t offered = srv->offered ? srv->offered - 1 : UINT32_MAX;
        /* Every slot we ever offered: the shared record top could hide live ones. */
        uint32_t hi = eng_load_relaxed_u32(&sg->ready_hi);
        uint32_t n = hi < srv->ntab ? hi : srv->ntab;
        uint32_t orphans = 0, late = 0, undecided = 0;
        int64_t orphan_blocks = 0;
        bool idle = true; /* nothing live but the offer and sessions: nobody holds buffers */
        for (uint32_t j = 0; j < n; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live || j == offered)
                        continue;
                if (!eng_load_acquire_u32(&t->known) || t->type != REC_SESSION)
                        idle = false;
                if (!eng_load_acquire_u32(&t->known)) {
                        uint64_t taken = eng_load_acquire_u64(&t->taken_ns);
                        if (taken != 0 && now - taken > CLAIM_DEADLINE_NS) {
                                reap(srv, t);
                                undecided++;
                        } else if (taken != 0 && !eng_load_relaxed_u32(&t->busy) &&
                                   !bit_set(sg, j)) {
                                ready_post(sg, j);
                        }
                        continue;
                }
                bool gone = false;
                for (uint32_t i = 0; i < nd && t->pw >= 0; i++) {
                        if (dead[i].pid == t->pid) {
                                dead[i].blocks += reap(srv, t);
                                dead[i].recs++;
                                gone = true;
                                break;
                        }
                }
                if (gone)
                        continue;
                if (t->pw < 0 && t->verified && pid_gone(t->pid)) {
                        pid_t pid = t->pid;
                        int64_t b = reap(srv, t);
                        srv_event(srv, "pid %d is gone: reclaimed its record %u, %lld buffer(s)",
                                  (int)pid, j, (long long)b);
                        continue;
                }
                if (t->fin_deadline != 0 && now > t->fin_deadline) {
                        reap(srv, t);
                        late++;
                        continue;
                }
                if (t->type == REC_STREAM && t->pw >= 0) {
                        eng_sstream_t *ss = &srv->tab[t->session < srv->ntab ? t->session : 0];
                        if (!ss->live || ss->gen != t->session_gen) {
                                orphan_blocks += reap(srv, t);
                                orphans++;
                                continue;
                        }
                }
                if (!eng_load_relaxed_u32(&t->busy) && !bit_set(sg, j)) {
                        uint32_t st = eng_load_relaxed_u32(&t->rec->sched);
                        if (st == RUN_QUEUED || st == RUN_AGAIN || st == RUN_FIN || t->stalled)
                                ready_post(sg, j);
                }
        }
        for (uint32_t i = 0; i < nd; i++)
                srv_event(srv, "client pid %d exited: reclaimed %u record(s), %lld buffer(s)",
                          (int)dead[i].pid, dead[i].recs, (long long)dead[i].blocks);
        if (orphans)
                srv_event(srv,
                          "%u stream(s) outlived their client's session (it detached without "
                          "closing them): reclaimed with %lld buffer(s)",
                          orphans, (long long)orphan_blocks);
        if (late)
                srv_event(srv, "%u refused claim(s) were not given back within %llu ms: reclaimed",
                          late, (unsigned long long)(CLAIM_DEADLINE_NS / 1000000));
        if (undecided)
                srv_event(srv,
                          "%u record(s) taken off the offer were never completed within %llu ms: "
                          "reclaimed",
                          undecided, (unsigned long long)(CLAIM_DEADLINE_NS / 1000000));
        log_counted(srv, &srv->ev_unclaimed, &srv->ev_unclaimed_log,
                    "record(s) left the offer without a claim any live process holds (forged or "
                    "abandoned): reclaimed");
        log_counted(srv, &srv->ev_unverified, &srv->ev_unverified_log,
                    "claim(s) named a process other than the one holding the claim: refused");
        return idle;
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
        const unsigned char *want0 = (const unsigned char *)&srv->sg.line0;
        size_t n0 = offsetof(struct eng_seg_hdr, state);
        bool bad = false;
        if (memcmp(raw, want0, n0) != 0) {
                size_t m = sizeof(h->magic); /* magic is the first word */
                memcpy(raw + m, want0 + m, n0 - m);
                eng_store_release_u32(&h->magic, srv->sg.line0.magic);
                bad = true;
        }
        if (eng_load_relaxed_u32(&h->arena_gate) != srv->gate) {
                eng_store_release_u32(&h->arena_gate, srv->gate);
                if (srv->gate == 0)
                        gate_opened(srv);
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
 * The object itself: any process of the user may resize it (a shrink makes every access past
 * the new end fault: see the SIGBUS guard), change its mode (letting other users in) or unlink
 * its name. Size and mode are put back; a name taken away cannot be (a shm object has no way
 * back to a name): say so once.
 */
static void heal_object(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        struct stat st;
        if (fstat(sg->fd, &st) != 0)
                return;
        uint32_t restored = eng_load_acquire_u32(&srv->sg.restored);
        if (restored != srv->restored_logged) {
                srv_event(srv,
                          "the segment was shrunk by another process: resized back to %llu "
                          "bytes at our next access (%u time(s))",
                          (unsigned long long)sg->size, restored - srv->restored_logged);
                srv->restored_logged = restored;
        }
        if ((uint64_t)st.st_size != sg->size) {
                if (ftruncate(sg->fd, (off_t)sg->size) == 0)
                        posix_fallocate(sg->fd, 0, (off_t)sg->size);
                srv_event(srv,
                          "the segment was resized to %lld bytes by another process: put "
                          "back to %llu",
                          (long long)st.st_size, (unsigned long long)sg->size);
        }
        if ((st.st_mode & 07777) != srv->cfg.mode) {
                fchmod(sg->fd, srv->cfg.mode);
                srv_event(srv,
                          "the segment's mode was changed to %04o by another process: put "
                          "back to %04o",
                          (unsigned)(st.st_mode & 07777), (unsigned)srv->cfg.mode);
        }
        if (st.st_nlink == 0 && !srv->name_gone_logged) {
                srv->name_gone_logged = true;
                srv_event(srv,
                          "the segment's name %s was removed by another process: clients "
                          "already attached go on, new ones cannot find it (restart the "
                          "server to serve the name again)",
                          sg->name);
        }
}

/*
 * The offer as published in the header, checked against the record we offered. If the
 * record is still OFFERED (nobody claimed it) but the header says otherwise (offer_state,
 * offer_idx or the GUID overwritten), publish it again (a new generation) rather than leaking
 * it. True if the offer stands (published again or as it was).
 */
/*
 * Is the record on offer still as we wrote it? A claimer writes only state, type, owner_pid,
 * session and user_id (and touches nothing else before CLAIMED); everything else of lines
 * 0..8 must match the snapshot. A writer that changed a ring counter, sched or the wake words
 * of the record on offer would otherwise spoil the first honest stream that claims it.
 */
static bool offer_intact(const struct eng_server *srv, const struct eng_rec *r)
{
        const unsigned char *now = (const unsigned char *)r, *was = srv->offer_snap;
        size_t claim_lo = offsetof(struct eng_rec, guid);
        size_t epoch_end = offsetof(struct eng_rec, owner_pid);
        size_t depth = offsetof(struct eng_rec, depth);
        return memcmp(now + claim_lo, was + claim_lo, epoch_end - claim_lo) == 0 &&
               memcmp(now + depth, was + depth, sizeof(srv->offer_snap) - depth) == 0;
}

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
        eng_sstream_t *s = &srv->tab[idx];
        bool still = eng_load_acquire_u32(&r->state) == ST_OFFERED &&
                     eng_load_relaxed_u64(&r->guid[0]) == s->guid0;
        if (still && !offer_intact(srv, r)) {
                /* Written by someone: withdraw it under the bootstrap lock (no claim under
                 * way), and if it is still OFFERED there, treat it as taken: the worker finds
                 * no claim and gives it back, and a fresh record goes on offer. */
                if (srv_boot_lock(srv, 50) != 0)
                        return true; /* a claimer holds the lock: look again next time */
                still = eng_load_acquire_u32(&r->state) == ST_OFFERED;
                if (still && !offer_intact(srv, r)) {
                        eng_store_release_u32(&h->offer_state,
                                              (srv->offer_word & ~3u) | OFFER_TAKEN);
                        still = false; /* logged as a record left without a claim */
                }
                srv_boot_unlock(srv);
                if (!still)
                        return false;
        }
        if (eng_load_acquire_u32(&h->offer_state) == srv->offer_word && h->offer_idx == idx &&
            h->offer_guid[0] == s->guid0)
                return still; /* as published: taken once the record is no longer OFFERED */
        bool changed = false;
        if (still) {
                uint64_t guid[2] = {s->guid0, eng_load_relaxed_u64(&r->guid[1])};
                offer_publish(srv, idx, guid);
                changed = true;
        }
        if (changed) {
                eng_faa_u32(&h->boot_wake, 1);
                eng_futex_wake(&h->boot_wake, INT32_MAX);
        }
        return still;
}

/* ---- repair at idle ------------------------------------------------------------------ */

static bool park_workers(struct eng_server *srv)
{
        eng_store_release_u32(&srv->park, 1);
        /* Sleeping workers look at park within their 200 ms slice; wake them now. */
        eng_faa_u32(&srv->sg.hdr->srv_wake, 1);
        eng_futex_wake(&srv->sg.hdr->srv_wake, INT32_MAX);
        for (uint64_t end = eng_now_ns() + 300 * 1000000ull; eng_now_ns() < end;) {
                if (eng_load_acquire_u32(&srv->parked) == srv->nworkers)
                        return true;
                usleep(500);
        }
        return false; /* a worker is busy in a hook (a slow disk): another time */
}

static void unpark_workers(struct eng_server *srv)
{
        eng_store_release_u32(&srv->park, 0);
        eng_futex_wake(&srv->park, INT32_MAX);
}

static bool rec_live(uint64_t idx, void *ctx)
{
        struct eng_server *srv = ctx;
        return idx < srv->ntab && srv->tab[idx].live;
}

/* A block's owner is a record we hold live (a stream, or one claimed and not yet decided: its
 * client may already have loaned buffers). At idle only sessions and the offer are live. */
static bool owner_live(uint32_t owner, void *ctx)
{
        struct eng_server *srv = ctx;
        return owner >= 1 && owner - 1 < srv->ntab && srv->tab[owner - 1].live;
}

/* Every client is out of the arena (arena_op 0 in every live record: a client brackets with
 * its session's, and a session we have not decided yet may already have a stream that
 * allocates), or deadline_ns passed (a writer can hold a flag up: its streams are what the
 * repair may then spoil). */
static uint32_t wait_arena_quiet(struct eng_server *srv, uint64_t deadline_ns)
{
        uint32_t busy = 0;
        uint32_t offered = srv->offered ? srv->offered - 1 : UINT32_MAX;
        for (uint32_t j = 0; j < srv->ntab; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live || j == offered)
                        continue;
                while (eng_load_acquire_u32(&t->rec->arena_op) != 0) {
                        if (eng_now_ns() >= deadline_ns) {
                                busy++;
                                break;
                        }
                        eng_cpu_relax();
                }
        }
        return busy;
}

/*
 * Repair the arena: check it against what the server knows is live, and rebuild it if they
 * disagree. That gives back what scribbles and crash windows cost: blocks on cut lists, blocks
 * of dead owners a walk could not reach, superblocks a shrink zeroed, a gap a forged watermark
 * hid, record slots. It needs every honest party out of the arena:
 *   - claims held off: the bootstrap lock (and the offer, if there is one, untouched);
 *   - the workers parked (they flush their free batches first);
 *   - clients: the arena gate closed, then (asymmetric barrier, see arena_enter in client.c)
 *     every live session's arena_op seen 0.
 * When: while idle (nothing but sessions and the offer live), once something happened since
 * the last check (a record finalised, an anomaly, a cut, no offer possible); while streams are
 * open, only on evidence that the arena is damaged (allocations failing while nothing was
 * freed for a tick, anomalies, cuts, no offer possible). At most once a second; the check costs a
 * walk (~1 ms per 64 MiB here), the clients wait that long for their next allocation.
 */
static void repair_arena(struct eng_server *srv, bool idle)
{
        struct eng_seg *sg = &srv->sg;
        uint64_t now = eng_now_ns();
        uint32_t finals = eng_load_relaxed_u32(&srv->finals);
        uint64_t anomalies = eng_arena_anomalies(&sg->arena);
        eng_arena_stats_t st;
        eng_arena_stats(&sg->arena, &st);
        /* Failed allocations are evidence only if nothing was freed meanwhile: a transfer
         * that fills the arena fails allocations all the time while the server frees behind
         * it (back-pressure, not damage), and a repair stops the world for a moment. The
         * counters are shared (a writer can move them): a hint for when to look, never what
         * the repair decides with, and the idle repair does not need it. */
        uint64_t frees = 0;
        for (uint32_t c = 0; c < st.nclasses; c++)
                frees += st.cls[c].frees;
        bool starved = st.failed != srv->failed_seen && frees == srv->frees_seen;
        bool evidence = anomalies != srv->anomalies_seen || st.cuts != srv->cuts_seen || starved ||
                        srv->offered == 0;
        srv->failed_seen = st.failed;
        srv->frees_seen = frees;
        if (evidence || (idle && finals != srv->finals_seen))
                srv->dirty = true;
        if (!srv->dirty || (!idle && !evidence) || now - srv->last_repair_ns < 1000 * 1000000ull ||
            srv->cfg.transport == ENG_TRANSPORT_MUTEX)
                return;
        srv->last_repair_ns = now;
        if (srv_boot_lock(srv, 50) != 0)
                return;
        /* Under the lock no claim can happen; is the offer (if there is one) untouched? */
        uint32_t off = srv->offered;
        struct eng_rec *r = off ? seg_rec(sg, off - 1) : NULL;
        bool quiet = off == 0 || (r != NULL && eng_load_acquire_u32(&r->state) == ST_OFFERED &&
                                  eng_load_acquire_u32(&sg->hdr->offer_state) == srv->offer_word);
        if (!quiet) {
                srv_boot_unlock(srv);
                return;
        }
        /* Close the gate, then make sure every client thread sees it before we read the
         * arena_op words (the heavy side of the asymmetric barrier; clients that did not
         * register fence themselves). */
        srv->gate = 1;
        eng_store_release_u32(&sg->hdr->arena_gate, 1);
        if (srv->asym)
                eng_asym_heavy();
        else
                eng_fence_full();
        bool parked = park_workers(srv);
        uint32_t busy = parked ? wait_arena_quiet(srv, eng_now_ns() + 200 * 1000000ull) : 0;
        eng_arena_rebuild_report_t rep = {0};
        char why[160] = "";
        bool ok = true;
        if (parked) {
                eng_arena_rebuild_cfg_t cfg = {
                    .rec_live = rec_live, .owner_live = owner_live, .ctx = srv};
                /* Consistent, and in agreement with what we know is live? */
                ok = eng_arena_check_live(&sg->arena, &cfg, why, sizeof(why)) == 0;
                if (!ok)
                        eng_arena_rebuild(&sg->arena, &cfg, &rep);
                srv->finals_seen = eng_load_relaxed_u32(&srv->finals);
                srv->anomalies_seen = eng_arena_anomalies(&sg->arena);
                eng_arena_stats(&sg->arena, &st);
                srv->cuts_seen = st.cuts;
                srv->failed_seen = st.failed;
                srv->dirty = false;
        }
        srv->gate = 0;
        eng_store_release_u32(&sg->hdr->arena_gate, 0);
        unpark_workers(srv);
        srv_boot_unlock(srv);
        gate_opened(srv); /* and space may have come back */
        if (!ok) {
                srv_event(srv,
                          "arena repaired %s (%s): %llu buffer block(s) of %llu bytes and %llu "
                          "record slot(s) given back, %llu byte(s) back in the gap%s",
                          idle ? "while idle" : "with streams open", why,
                          (unsigned long long)rep.freed_blocks, (unsigned long long)rep.freed_bytes,
                          (unsigned long long)rep.rec_freed, (unsigned long long)rep.gap_bytes,
                          busy ? "; some clients stayed inside the arena" : "");
        }
}

static void *ctl_main(void *arg)
{
        struct eng_server *srv = arg;
        struct eng_seg *sg = &srv->sg;
        uint64_t last_tick = 0;
        while (!eng_load_relaxed_u32(&srv->stop)) {
                uint32_t seq = eng_load_acquire_u32(&sg->hdr->ctl_wake);
                /* Every tick whatever else happens (a full segment included: that is when a
                 * dead client's records matter most). */
                uint64_t now = eng_now_ns();
                if (now - last_tick > TICK_NS) {
                        heal_header(srv);
                        heal_object(srv);
                        char what[200];
                        if (eng_arena_heal(&sg->arena, what, sizeof(what)) > 0) {
                                size_t n = strlen(what);
                                while (n > 0 && (what[n - 1] == ' ' || what[n - 1] == ';'))
                                        what[--n] = '\0';
                                srv->dirty = true;
                                if ((srv->heals++ % 1000) == 0)
                                        srv_event(srv,
                                                  "the arena header was overwritten by another "
                                                  "process: restored (%s)",
                                                  what);
                        }
                        if (eng_load_acquire_u32(&sg->broken) && !srv->broken_logged) {
                                srv->broken_logged = true;
                                srv_event(srv, "the segment was shrunk by another process and "
                                               "/dev/shm has no room to restore it: the server "
                                               "must stop");
                        }
                        repair_arena(srv, reap_tick(srv));
                        last_tick = now;
                }
                /* Still on offer? (the header's copy put right if it was overwritten) */
                if (offer_republish(srv)) {
                        eng_futex_wait(&sg->hdr->ctl_wake, seq, 50 * 1000000ll);
                        continue;
                }
                if (srv->offered) {
                        /* Taken (or made to look taken): a worker decides it now, even if the
                         * client stays silent; it must be decided by the claim deadline. */
                        uint32_t idx = srv->offered - 1;
                        srv->offered = 0;
                        eng_store_release_u64(&srv->tab[idx].taken_ns, eng_now_ns());
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
        pthread_mutex_init(&srv->boot_mu, NULL);
        pthread_mutex_init(&srv->pw_mu, NULL);
        int rc =
            seg_create(&srv->sg, cfg->name, cfg->size, cfg->mode, cfg->transport, cfg->ring_depth,
                       cfg->max_streams, cfg->min_block_shift, cfg->max_block_shift);
        if (rc != 0) {
                free(srv);
                return rc;
        }
        srv->hstate = SRV_STARTING;
        srv->ntab = srv->sg.max_streams;
        srv->asym = srv->sg.line0.asym == 1;
        srv->tab = calloc(srv->ntab, sizeof(*srv->tab));
        srv->workers = calloc(cfg->workers, sizeof(pthread_t));
        if (srv->tab == NULL || srv->workers == NULL) {
                rc = -ENOMEM;
                goto fail;
        }
        for (uint32_t i = 0; i < srv->ntab; i++)
                srv->tab[i].pw = -1;
        if (srv->sg.evicted_uid != (uid_t)-1)
                srv_event(srv,
                          "removed %s, which uid %u had created under our name: new clients "
                          "attach to this server",
                          cfg->name, (unsigned)srv->sg.evicted_uid);
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
        /* Withdraw the offer: nobody may claim a record that no worker will serve (a claim
         * already under way ends in a record the stop below ends). */
        eng_store_release_u32(&sg->hdr->offer_state,
                              (((srv->offer_word >> 2) + 1) << 2) | OFFER_NONE);
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
        }
        for (uint32_t i = 0; i < srv->npw; i++)
                if (srv->pw[i].refs != 0)
                        close(srv->pw[i].pidfd);
        eng_store_release_u32(&srv->hstate, SRV_STOPPED);
        eng_store_release_u32(&sg->hdr->state, SRV_STOPPED);
        eng_faa_u32(&sg->hdr->boot_wake, 1);
        eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        shm_unlink(sg->name);
        seg_unmap(sg);
        pthread_mutex_destroy(&srv->boot_mu);
        pthread_mutex_destroy(&srv->pw_mu);
        free(srv->pw);
        free(srv->tab);
        free(srv->workers);
        free(srv);
}
