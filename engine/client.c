/*
 * client.c - the client runtime: attach, a session record (the client's wake-up word), the
 * bootstrap hand-out, streams, loans, send/recv, and waiting with a way out of every wait.
 */
#include <errno.h>
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
        struct eng_rec *rec;
        struct chan_end out; /* c2s, we produce */
        struct chan_end in;  /* s2c, we consume */
        uint64_t seq_out, seq_in;
        int ended; /* 0, or the error the stream ended with (-EPIPE when closed by the server) */
        /* Small loans come from blocks taken off the arena LOAN_CACHE at a time (one CAS), already
         * stamped as this stream's: a crash leaves them to the server's reclaim like any loan. */
        uint32_t ncache;
        uint64_t cache[LOAN_CACHE];
};

struct eng_client {
        struct eng_seg sg;
        eng_client_cfg_t cfg;
        uint64_t epoch;
        pid_t server_pid;
        int server_pidfd;
        eng_stream_t *session;
        eng_transport_t transport; /* private copy, taken (and validated) at attach */
        uint64_t small_len;        /* loans up to this many bytes use the stream's cache */
        bool asym;                 /* registered for the server's membarrier (sched_push) */
};

/* ---- liveness ----------------------------------------------------------------------- */

int eng_client_check_server(eng_client_t *c)
{
        /* The server process's pidfd (taken at attach, from the pid we copied then) is the
         * authority. The header's state only counts once it says STOPPED: during STOPPING the
         * server still serves transfers in flight (its grace period). A new server on the name
         * never reuses this object (it unlinks it and creates another): what we map stays the
         * old epoch's, so its server's pidfd is the one that matters. */
        if (eng_load_acquire_u32(&c->sg.hdr->state) == SRV_STOPPED)
                return -EPIPE;
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
         * server's publish-fence-read in wake_session). */
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

static int wait_slow(eng_client_t *c, uint32_t ticket, uint64_t deadline)
{
        struct eng_rec *sr = c->session->rec;
        for (uint32_t i = 0; i < c->cfg.spin; i++) {
                if (eng_load_acquire_u32(&sr->wake) != ticket)
                        goto woken;
                eng_cpu_relax();
        }
        for (;;) {
                eng_store_relaxed_u32(&sr->waiting, WAIT_SLEEP);
                eng_fence_full();
                if (eng_load_acquire_u32(&sr->wake) != ticket)
                        goto woken;
                int rc = eng_client_check_server(c);
                if (rc != 0)
                        return rc;
                int64_t left = remaining_ns(deadline);
                if (left == 0)
                        return -ETIMEDOUT;
                eng_futex_wait(&sr->wake, ticket, left < SLICE_NS ? left : SLICE_NS);
        }
woken:
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
        for (uint32_t i = 0; i < c->cfg.spin; i++) {
                if (ch->producer ? chan_free(ch) > 0 : chan_used(ch) > 0)
                        return 0;
                eng_cpu_relax();
        }
        int rc = eng_client_check_server(c);
        if (rc != 0)
                return rc;
        int64_t left = remaining_ns(deadline);
        if (left == 0)
                return -ETIMEDOUT;
        chan_wait(ch, eng_now_ns() + (uint64_t)(left < SLICE_NS ? left : SLICE_NS));
        return 0;
}

/* ---- the hand-out ------------------------------------------------------------------- */

/*
 * The bootstrap mutex, in slices: whoever holds it (a stopped or hostile process) cannot keep
 * us past our deadline, and we notice a server that died meanwhile.
 */
static int boot_lock(eng_client_t *c, uint64_t deadline)
{
        struct eng_seg *sg = &c->sg;
        for (;;) {
                int64_t left = remaining_ns(deadline);
                struct timespec rt = seg_realtime_in((uint64_t)(left < SLICE_NS ? left : SLICE_NS));
                int rc = pthread_mutex_timedlock(&sg->hdr->boot, &rt);
                if (rc == 0)
                        return 0;
                if (rc == EOWNERDEAD) {
                        seg_boot_repair(sg);
                        return 0;
                }
                if (rc != ETIMEDOUT)
                        return -rc;
                rc = eng_client_check_server(c);
                if (rc != 0)
                        return rc;
                if (eng_now_ns() >= deadline) {
                        eng_set_err("the bootstrap mutex stayed held by another process");
                        return -ETIMEDOUT;
                }
        }
}

/* Take the record on offer as a stream (or session) of ours. */
static int take_offer(eng_client_t *c, uint32_t type, uint32_t user_id, uint32_t session,
                      uint32_t *idx_out, uint64_t deadline)
{
        struct eng_seg *sg = &c->sg;
        struct eng_seg_hdr *h = sg->hdr;
        for (;;) {
                int rc = boot_lock(c, deadline);
                if (rc != 0)
                        return rc;
                if (eng_load_acquire_u32(&h->state) != SRV_READY ||
                    eng_client_check_server(c) != 0) {
                        /* Stopping or gone: an offer still up would never be served. */
                        pthread_mutex_unlock(&h->boot);
                        eng_set_err("the server is stopping or gone");
                        return -EPIPE;
                }
                if (h->offer_state == 1) {
                        uint32_t idx = h->offer_idx;
                        struct eng_rec *r = seg_rec(sg, idx);
                        if (r != NULL && eng_load_acquire_u32(&r->state) == ST_OFFERED &&
                            r->guid[0] == h->offer_guid[0] && r->guid[1] == h->offer_guid[1] &&
                            r->depth == sg->depth) {
                                r->owner_pid = getpid();
                                r->type = type;
                                r->user_id = user_id;
                                r->session = session;
                                /* Release: the owner fields are visible before CLAIMED. */
                                eng_store_release_u32(&r->state, ST_CLAIMED);
                                eng_store_release_u32(&h->offer_state, 2);
                                pthread_mutex_unlock(&h->boot);
                                eng_faa_u32(&h->ctl_wake, 1);
                                eng_futex_wake(&h->ctl_wake, 1);
                                *idx_out = idx;
                                return 0;
                        }
                        /* Inconsistent offer (or scribbled): mark it spent so the server re-offers.
                         */
                        h->offer_state = 2;
                        eng_faa_u32(&h->ctl_wake, 1);
                        eng_futex_wake(&h->ctl_wake, 1);
                }
                /* Nothing on offer yet: sleep until the server offers (read the word while we
                 * hold the mutex, so an offer made after we unlock changes it). */
                uint32_t seq = eng_load_acquire_u32(&h->boot_wake);
                pthread_mutex_unlock(&h->boot);
                rc = eng_client_check_server(c);
                if (rc != 0)
                        return rc;
                int64_t left = remaining_ns(deadline);
                if (left == 0) {
                        eng_set_err("no stream record offered in time (segment full?)");
                        return -ETIMEDOUT;
                }
                eng_futex_wait(&h->boot_wake, seq, left < SLICE_NS ? left : SLICE_NS);
        }
}

static eng_stream_t *stream_new(eng_client_t *c, uint32_t idx)
{
        eng_stream_t *s = calloc(1, sizeof(*s));
        if (s == NULL)
                return NULL;
        struct eng_rec *r = seg_rec(&c->sg, idx);
        s->c = c;
        s->idx = idx;
        s->owner = idx + 1;
        s->rec = r;
        chan_attach(&s->out, &r->c2s, rec_c2s_slots(r, c->sg.depth), c->sg.depth, c->transport,
                    true);
        chan_attach(&s->in, &r->s2c, rec_s2c_slots(r, c->sg.depth), c->sg.depth, c->transport,
                    false);
        return s;
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
        if (c->cfg.timeout_ms == 0)
                c->cfg.timeout_ms = 10000;
        c->server_pidfd = -1;
        int rc = seg_attach(&c->sg, name ? name : "/engine-default");
        if (rc != 0) {
                free(c);
                return rc;
        }
        struct eng_seg_hdr *h = c->sg.hdr;
        c->epoch = h->epoch;
        c->transport = (eng_transport_t)h->transport; /* seg_attach validated it */
        c->server_pid = h->server_pid;
        c->server_pidfd = (int)syscall(SYS_pidfd_open, c->server_pid, 0);
        c->asym = h->asym == 1 && c->transport == ENG_TRANSPORT_LOCKFREE && eng_asym_register();
        c->small_len = eng_arena_kind(&c->sg.arena) == ENG_ARENA_LOCKFREE
                           ? eng_arena_class_bytes(&c->sg.arena, 1)
                           : 0;
        if (eng_load_acquire_u32(&h->state) != SRV_READY || eng_client_check_server(c) != 0) {
                eng_set_err("segment %s exists but its server (pid %d) is not serving", name,
                            (int)c->server_pid);
                rc = -ECONNREFUSED;
                goto fail;
        }
        uint32_t idx;
        rc = take_offer(c, REC_SESSION, 0, 0, &idx, deadline_of(c, -1));
        if (rc != 0)
                goto fail;
        c->session = stream_new(c, idx);
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

int eng_stream_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out)
{
        uint32_t idx;
        int rc = take_offer(c, REC_STREAM, user_id, c->session->idx, &idx, deadline_of(c, -1));
        if (rc != 0)
                return rc;
        eng_stream_t *s = stream_new(c, idx);
        if (s != NULL)
                s->user_id = user_id;
        if (s == NULL) {
                sched_fin(&c->sg, seg_rec(&c->sg, idx), idx);
                return -ENOMEM;
        }
        sched_stream(&c->sg, s->rec, idx);
        *out = s;
        return 0;
}

/* For receiving: ended once the server ended the stream and every reply has been read. */
static int stream_state(eng_stream_t *s)
{
        if (s->ended)
                return s->ended;
        if (eng_load_acquire_u32(&s->rec->state) == ST_ENDED && chan_used(&s->in) == 0) {
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
        return eng_load_acquire_u32(&s->rec->state) == ST_ENDED ? -EPIPE : 0;
}

int eng_stream_try_loan(eng_stream_t *s, uint32_t len, void **p, uint64_t *off)
{
        eng_arena_t *a = &s->c->sg.arena;
        if (len <= s->c->small_len) {
                if (s->ncache == 0)
                        s->ncache = eng_arena_alloc_bulk(a, len, s->owner, s->cache, LOAN_CACHE);
                /* Each entry is still ours unless this stream sent it without loaning it
                 * (a confused caller): then the server freed it and it is dropped here. */
                while (s->ncache > 0) {
                        *off = s->cache[--s->ncache];
                        if (eng_arena_owner(a, *off) == s->owner) {
                                *p = eng_arena_ptr(a, *off, len);
                                return 0;
                        }
                }
        }
        int rc = eng_arena_alloc(a, len, s->owner, off);
        if (rc == -ENOMEM)
                return -EAGAIN;
        if (rc == 0)
                *p = eng_arena_ptr(&s->c->sg.arena, *off, len);
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
                        rc = eng_client_check_server(c);
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
        return eng_arena_owner(&s->c->sg.arena, off) == s->owner
                   ? eng_arena_capacity(&s->c->sg.arena, off)
                   : 0;
}

/*
 * A block the caller is done with (an unsent loan, a released reply): a smallest-class block
 * of this stream goes back into the loan cache, still stamped as ours, so a ping-pong of small
 * messages touches no shared allocator state at all; anything else goes back to the arena.
 */
static void give_back(eng_stream_t *s, uint64_t off)
{
        eng_arena_t *a = &s->c->sg.arena;
        if (s->ncache < LOAN_CACHE && s->c->small_len != 0 && eng_arena_owner(a, off) == s->owner &&
            eng_arena_capacity(a, off) == s->c->small_len) {
                for (uint32_t i = 0; i < s->ncache; i++)
                        if (s->cache[i] == off)
                                return; /* given back twice: keep one entry */
                s->cache[s->ncache++] = off;
                return;
        }
        eng_arena_free(a, off);
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

static int push(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        struct eng_desc d = {.cmd = cmd, .len = len, .seq = s->seq_out + 1, .off = off, .arg = arg};
        if (!chan_push(&s->out, &d))
                return -EAGAIN;
        s->seq_out++;
        sched_push(s);
        return 0;
}

int eng_stream_try_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
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
        return push(s, cmd, arg, off, len);
}

/*
 * Spin on the channel itself before falling back to the ticket/wake-word protocol: while we
 * spin, `waiting` stays NONE, so the server pays nothing for wake-ups and the only cache line
 * that crosses cores is the ring's. Returns true when the channel looks ready.
 */
static bool spin_on(eng_stream_t *s, struct chan_end *ch)
{
        for (uint32_t i = 0; i < s->c->cfg.spin; i++) {
                if (ch->producer ? chan_room(ch, 1) : chan_ready(ch))
                        return true;
                if (eng_load_relaxed_u32(&s->rec->state) == ST_ENDED)
                        return true;
                eng_cpu_relax();
        }
        return false;
}

int eng_stream_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len,
                    int timeout_ms)
{
        eng_client_t *c = s->c;
        int rc = eng_stream_try_send(s, cmd, arg, off, len);
        if (rc != -EAGAIN)
                return rc;
        if (spin_on(s, &s->out) && (rc = eng_stream_try_send(s, cmd, arg, off, len)) != -EAGAIN)
                return rc;
        uint64_t deadline = deadline_of(c, timeout_ms);
        for (;;) {
                uint32_t t = eng_client_ticket(c);
                rc = eng_stream_try_send(s, cmd, arg, off, len);
                if (rc != -EAGAIN)
                        return rc;
                rc = stream_wait(c, &s->out, t, deadline);
                if (rc != 0)
                        return rc;
        }
}

int eng_stream_try_recv(eng_stream_t *s, eng_msg_t *m)
{
        struct eng_desc d;
        if (!chan_pop(&s->in, &d)) {
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
        if (d.seq != s->seq_in + 1) {
                s->ended = -EPROTO;
                eng_set_err("stream %u: expected message %llu, got %llu", s->user_id,
                            (unsigned long long)(s->seq_in + 1), (unsigned long long)d.seq);
                return -EPROTO;
        }
        s->seq_in++;
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
                if (eng_arena_owner(&s->c->sg.arena, d.off) != s->owner ||
                    eng_arena_capacity(&s->c->sg.arena, d.off) < d.len) {
                        s->ended = -EPROTO;
                        eng_set_err("stream %u: message buffer is not ours", s->user_id);
                        return -EPROTO;
                }
                m->data = eng_arena_ptr(&s->c->sg.arena, d.off, d.len);
        } else if (d.len != 0) {
                s->ended = -EPROTO;
                return -EPROTO;
        }
        return 0;
}

int eng_stream_recv(eng_stream_t *s, eng_msg_t *m, int timeout_ms)
{
        eng_client_t *c = s->c;
        int rc = eng_stream_try_recv(s, m);
        if (rc != -EAGAIN)
                return rc;
        if (spin_on(s, &s->in) && (rc = eng_stream_try_recv(s, m)) != -EAGAIN)
                return rc;
        uint64_t deadline = deadline_of(c, timeout_ms);
        for (;;) {
                uint32_t t = eng_client_ticket(c);
                rc = eng_stream_try_recv(s, m);
                if (rc != -EAGAIN)
                        return rc;
                rc = stream_wait(c, &s->in, t, deadline);
                if (rc != 0)
                        return rc;
        }
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
                rc = push(s, CMD_C_CLOSE, 0, 0, 0);
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
                        rc = push(s, CMD_C_CLOSE, 0, 0, 0);
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
                        eng_arena_free(&c->sg.arena, off);
        }
        /* Our last touch of the record. The server reclaims whatever the stream still owns
         * (and, for a stream that was not closed in order, tells its hooks it was aborted). */
        if (eng_client_check_server(c) == 0)
                sched_fin(&c->sg, s->rec, s->idx);
        free(s);
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
