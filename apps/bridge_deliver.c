/*
 * bridge_deliver.c - engine-bridge on the receiving host: listens for the sending bridge and
 * replays each of its streams as a client of this host's real engine-server, whose replies
 * (READY, DONE, FAIL with its reason, PONG) go back the same way. The real server verifies the
 * original client's XXH3 before the final name, and removes its temporary file when a stream
 * is aborted: what crosses the network can never publish a partial or a changed file.
 *
 * One thread drives everything, like engine-client: it takes frames from the network without
 * blocking, hands each link's queued frames to the engine (try_loan / try_send), relays the
 * server's replies, returns credits, and sleeps on whichever side it waits for. NNG's threads
 * do the socket I/O and tell us of connections that come and go (pipe_event), which this
 * thread handles in order at the top of its loop.
 *
 * Nothing from the network is trusted: br_decode checks every frame's shape, and here every
 * link id, every queue bound (window, memory) and every name (eng_safe_name) is checked
 * before use. A frame that breaks a rule closes the connection and aborts its streams.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/transport/tcp/tcp.h>
#include <shmengine/proto.h>

#include "bridge.h"

struct qframe {
        nng_msg *m;
        br_hdr_t h;
        struct qframe *next;
};

struct rlink {
        uint32_t id, user;
        eng_stream_t *st; /* NULL until a record of the real server was free */
        uint64_t t0;      /* when OPEN came (the wait for a record is bounded) */
        struct qframe *qh, *qt;
        uint32_t qdata, qctl; /* queued FILE_DATA frames / other frames */
        uint64_t pend_off;    /* the head frame's payload, loaned and filled, not sent yet */
        uint32_t pend_len;    /* its length (a piece of the frame, at most the largest loan) */
        uint32_t done;        /* bytes of the head frame the server has taken already */
        uint32_t credits;     /* FILE_DATA frames the server took, not yet credited */
        bool await;           /* a request is with the server: its reply is due */
        struct rlink *next;
};

enum pev_kind { PEV_PRE, PEV_ADD, PEV_REM };

struct pev {
        uint32_t pipe;
        uint8_t kind;  /* enum pev_kind */
        char peer[64]; /* PEV_PRE: the peer's address, read while the pipe exists */
};

/* Connections NNG gave us (ADD_PRE) that pair1 has not taken yet (ADD_POST). One that goes away
 * (REM_POST) without being taken was refused by pair1: another sending bridge is connected. */
#define PRE_MAX 16u
struct pre {
        uint32_t pipe;
        char peer[64];
};

struct outq {
        nng_msg *m;
        struct outq *next;
};

struct dlv {
        const eng_opts_t *o;
        nng_socket sock;
        nng_listener lst;
        eng_client_t *c;
        uint64_t next_attach_ns, next_check_ns;
        pthread_mutex_t evmu; /* pipe events, from NNG's threads */
        struct pev *ev;
        uint32_t nev, evcap;
        uint32_t pipe; /* the current connection (0: none) */
        char peer[96];
        struct pre pre[PRE_MAX]; /* connections not taken yet (ring, oldest overwritten) */
        uint32_t npre_next;
        uint32_t refused;        /* connections refused since the last line about them */
        uint64_t refused_log_ns; /* when that line was written */
        /* With no connection of ours: the first of a run of connections that NNG announced
         * (ADD_PRE) and never gave us (ADD_POST), and the latest of them. A wedged NNG refuses
         * them all and never reports them gone (its reaper runs REM_POST). */
        uint64_t unserved_ns, unserved_last_ns;
        struct rlink *links;
        uint32_t nlinks;
        uint64_t held; /* FILE_DATA bytes queued here */
        struct outq *oh, *ot;
        uint32_t nout;
        uint64_t timeout_ns;
        uint64_t max_loan; /* the largest loan of the server's segment */
        /* the current connection: when a frame last came (any frame, ALIVE included), when
         * we send our next ALIVE */
        uint64_t last_rx_ns, next_alive_ns;
};

#define OUT_MAX 65536u /* frames waiting for the network: more means the peer does not read */

/* ---- output -------------------------------------------------------------------------- */

static void out_push(struct dlv *d, nng_msg *m)
{
        struct outq *q = m ? malloc(sizeof(*q)) : NULL;
        if (q == NULL) {
                if (m != NULL)
                        nng_msg_free(m);
                return; /* no memory: the frame is lost; the peer times the link out */
        }
        q->m = m;
        q->next = NULL;
        if (d->ot)
                d->ot->next = q;
        else
                d->oh = q;
        d->ot = q;
        d->nout++;
}

static void out_clear(struct dlv *d)
{
        while (d->oh) {
                struct outq *q = d->oh;
                d->oh = q->next;
                nng_msg_free(q->m);
                free(q);
        }
        d->ot = NULL;
        d->nout = 0;
}

static void send_hdr(struct dlv *d, uint8_t type, uint16_t cmd, uint32_t link, uint64_t arg,
                     const void *p, uint32_t len)
{
        if (d->pipe == 0)
                return;
        br_hdr_t h = {.type = type, .cmd = cmd, .link = link, .epoch = d->pipe, .arg = arg};
        out_push(d, br_frame(&h, p, len));
}

/* As much of the output as NNG takes now. 1 if something went. */
static int out_flush(struct dlv *d)
{
        int moved = 0;
        while (d->oh) {
                int rc = nng_sendmsg(d->sock, d->oh->m, NNG_FLAG_NONBLOCK);
                if (rc == NNG_EAGAIN)
                        break;
                if (rc != 0)
                        nng_msg_free(d->oh->m);
                struct outq *q = d->oh;
                d->oh = q->next;
                free(q);
                d->nout--;
                moved = 1;
        }
        if (d->oh == NULL)
                d->ot = NULL;
        return moved;
}

/* ---- links --------------------------------------------------------------------------- */

static struct rlink *find(struct dlv *d, uint32_t id)
{
        for (struct rlink *l = d->links; l; l = l->next)
                if (l->id == id)
                        return l;
        return NULL;
}

/* Forget a link: its real stream closed in order (orderly, nothing left to send) or aborted
 * (the real server removes the file's temporary). */
static void link_free(struct dlv *d, struct rlink *l, bool orderly)
{
        if (l->st != NULL) {
                if (l->pend_off != 0)
                        eng_stream_unloan(l->st, l->pend_off);
                if (orderly && l->qh == NULL && l->pend_off == 0 && !l->await)
                        eng_stream_close(l->st);
                else
                        eng_stream_abort(l->st);
        }
        while (l->qh) {
                struct qframe *f = l->qh;
                l->qh = f->next;
                if (f->h.cmd == ENG_C_FILE_DATA && f->h.type == BR_MSG)
                        d->held -= f->h.len;
                nng_msg_free(f->m);
                free(f);
        }
        for (struct rlink **pp = &d->links; *pp; pp = &(*pp)->next) {
                if (*pp == l) {
                        *pp = l->next;
                        break;
                }
        }
        d->nlinks--;
        free(l);
}

/* Tell the sending side the link is over here (why), and forget it. */
static void link_end(struct dlv *d, struct rlink *l, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void link_end(struct dlv *d, struct rlink *l, int err, const char *fmt, ...)
{
        char why[BR_TEXT_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        err = err < 0 ? -err : err;
        send_hdr(d, BR_END, 0, l->id, (uint64_t)(err > 0 && err <= (int)BR_ERRNO_MAX ? err : EIO),
                 why, (uint32_t)strlen(why));
        link_free(d, l, false);
}

/* The connection is gone (closed by the peer, by the network, or by us): abort its streams. */
static void drop_connection(struct dlv *d, const char *why)
{
        uint32_t n = d->nlinks;
        while (d->links)
                link_free(d, d->links, false);
        out_clear(d);
        d->held = 0;
        if (d->pipe != 0)
                eng_log(ENG_LOG_WARN, NULL,
                        "connection from the sending bridge %s %s: %u stream(s) aborted", d->peer,
                        why, n);
        d->pipe = 0;
}

/* Fault injection for the tests (docs/BRIDGE.md, Faults): ENGINE_BRIDGE_FAULT=keep-refused
 * leaves a refused connection open, as NNG 1.5.2 does when its reaper hangs (pair1's one slot
 * stays taken while the connection is no longer ours). */
static bool fault_keep_refused;

/* A frame that breaks a rule: log it, close the connection. */
static void refuse(struct dlv *d, nng_pipe p, const char *why)
{
        char peer[96];
        br_peer(p, peer, sizeof(peer));
        eng_log(ENG_LOG_WARN, NULL,
                "refused a frame from %s (%s): closing the connection and aborting its streams",
                peer, why);
        if ((uint32_t)nng_pipe_id(p) == d->pipe)
                drop_connection(d, "closed");
        if (!fault_keep_refused)
                nng_pipe_close(p);
}

/* ---- the real server ----------------------------------------------------------------- */

static void server_gone(struct dlv *d)
{
        while (d->links)
                link_end(d, d->links, ECONNRESET, "the engine-server on %s stopped",
                         d->o->bridge.segment);
        eng_client_detach(d->c);
        d->c = NULL;
        eng_log(ENG_LOG_WARN, NULL,
                "the engine-server on %s is gone; attaching again when it is back",
                d->o->bridge.segment);
}

static void try_attach(struct dlv *d, bool first)
{
        uint64_t now = eng_now_ns();
        if (d->c != NULL || now < d->next_attach_ns)
                return;
        d->next_attach_ns = now + 1000000000u;
        eng_client_cfg_t cc = {.spin = d->o->spin,
                               .timeout_ms = d->o->timeout_s * 1000,
                               .wait_ms = 0,
                               .owner_uid = d->o->owner_uid == (uid_t)-1 ? 0 : d->o->owner_uid,
                               .mode = d->o->seg_mode};
        int rc = eng_client_attach(d->o->bridge.segment, &cc, &d->c);
        if (rc == 0) {
                d->max_loan = eng_client_max_loan(d->c);
                if (d->max_loan == 0 || d->max_loan > BR_MAX_PAYLOAD)
                        d->max_loan = BR_MAX_PAYLOAD;
        }
        if (rc == 0)
                eng_log(ENG_LOG_INFO, NULL, "attached to the engine-server on %s",
                        d->o->bridge.segment);
        else if (first)
                eng_log(ENG_LOG_WARN, NULL,
                        "no engine-server on %s yet (%s): trying again every second",
                        d->o->bridge.segment, *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
        if (rc != 0)
                d->c = NULL;
}

/* ---- frames from the network --------------------------------------------------------- */

static void on_frame(struct dlv *d, nng_msg *m)
{
        nng_pipe p = nng_msg_get_pipe(m);
        if ((uint32_t)nng_pipe_id(p) != d->pipe) {
                nng_msg_free(m); /* a connection we no longer serve */
                return;
        }
        br_hdr_t h;
        const char *why = NULL;
        if (br_decode(nng_msg_body(m), nng_msg_len(m), BR_AT_RECEIVER, &h, &why) != 0) {
                nng_msg_free(m);
                refuse(d, p, why);
                return;
        }
        if (h.epoch != d->pipe) {
                nng_msg_free(m); /* a leftover of an older connection */
                return;
        }
        d->last_rx_ns = eng_now_ns();
        if (h.type == BR_ALIVE) {
                nng_msg_free(m);
                return;
        }
        struct rlink *l = find(d, h.link);
        if (h.type == BR_OPEN) {
                nng_msg_free(m);
                if (l != NULL) {
                        refuse(d, p, "OPEN of a link that is open");
                        return;
                }
                if (d->nlinks >= d->o->bridge.streams) {
                        br_hdr_t e = {
                            .type = BR_END, .link = h.link, .epoch = d->pipe, .arg = EBUSY};
                        const char *t = "too many streams on the receiving bridge";
                        out_push(d, br_frame(&e, t, (uint32_t)strlen(t)));
                        return;
                }
                l = calloc(1, sizeof(*l));
                if (l == NULL)
                        return; /* the sender times out */
                l->id = h.link;
                l->user = (uint32_t)h.arg;
                l->t0 = eng_now_ns();
                l->next = d->links;
                d->links = l;
                d->nlinks++;
                if (d->c == NULL)
                        link_end(d, l, ECONNREFUSED, "no engine-server on %s on the receiving host",
                                 d->o->bridge.segment);
                return;
        }
        if (l == NULL) {
                nng_msg_free(m); /* a link that ended here; the sender has its END */
                return;
        }
        if (h.type == BR_CLOSE) {
                nng_msg_free(m);
                link_free(d, l, h.arg == 0);
                return;
        }
        /* BR_MSG: bounded queues. A sender keeps to the window and the memory HELLO gave it,
         * and has at most one request (open, end, ping) out per stream. */
        bool data = h.cmd == ENG_C_FILE_DATA;
        if (data ? (l->qdata >= d->o->bridge.window || d->held + h.len > d->o->bridge.memory)
                 : l->qctl >= 2) {
                nng_msg_free(m);
                refuse(d, p,
                       data ? "more chunks in flight than the window or memory allows"
                            : "requests beyond the one in flight");
                return;
        }
        if (h.cmd == ENG_C_FILE_OPEN) {
                char raw[BR_NAME_WIRE], name[ENG_NAME_MAX + 1];
                memcpy(raw, (const char *)nng_msg_body(m) + BR_HDR, h.len);
                if (eng_safe_name(raw, h.len, name, sizeof(name), &why) != 0) {
                        nng_msg_free(m);
                        /* as the real server would answer it */
                        send_hdr(d, BR_REPLY, ENG_S_FILE_FAIL, l->id, EINVAL, why,
                                 (uint32_t)strlen(why));
                        return;
                }
        }
        struct qframe *f = malloc(sizeof(*f));
        if (f == NULL) {
                nng_msg_free(m);
                link_end(d, l, ENOMEM, "no memory on the receiving bridge");
                return;
        }
        f->m = m;
        f->h = h;
        f->next = NULL;
        if (l->qt)
                l->qt->next = f;
        else
                l->qh = f;
        l->qt = f;
        if (data) {
                l->qdata++;
                d->held += h.len;
        } else {
                l->qctl++;
        }
}

/* ---- driving a link ------------------------------------------------------------------ */

/* Replies of the real server, to the sending side. -1 if the link ended. */
static int relay_replies(struct dlv *d, struct rlink *l, int *moved)
{
        eng_msg_t m;
        for (int k = 0; k < 16; k++) {
                int rc = eng_stream_try_recv(l->st, &m);
                if (rc == -EAGAIN)
                        return 0;
                if (rc != 0) {
                        const char *em = eng_errmsg();
                        link_end(d, l, rc, "the engine-server on %s ended the stream: %s",
                                 d->o->bridge.segment, *em ? em : eng_strerror(rc));
                        return -1;
                }
                *moved = 1;
                uint32_t len = m.data != NULL ? m.len : 0;
                bool ok = m.cmd == ENG_S_PONG || m.cmd == ENG_S_FILE_READY ||
                          m.cmd == ENG_S_FILE_DONE || m.cmd == ENG_S_FILE_FAIL;
                if (m.cmd == ENG_S_FILE_FAIL && len > BR_TEXT_MAX)
                        len = BR_TEXT_MAX;
                if (m.cmd == ENG_S_FILE_READY || m.cmd == ENG_S_FILE_DONE)
                        len = 0;
                if (ok)
                        /* the one copy out of this segment: into the frame */
                        send_hdr(d, BR_REPLY, m.cmd, l->id,
                                 m.cmd == ENG_S_FILE_FAIL ? m.arg & 0xff00000fffull : m.arg, m.data,
                                 len);
                eng_stream_release(l->st, &m);
                if (!ok) {
                        link_end(d, l, EPROTO, "unexpected reply 0x%04x from the engine-server",
                                 m.cmd);
                        return -1;
                }
                l->await = false;
        }
        return 0;
}

static int drive(struct dlv *d, struct rlink *l)
{
        int moved = 0;
        if (l->st == NULL) {
                int rc = eng_stream_try_open(d->c, l->user, &l->st);
                if (rc == -EAGAIN) {
                        l->st = NULL;
                        if (eng_now_ns() - l->t0 > d->timeout_ns)
                                link_end(d, l, ETIMEDOUT,
                                         "no stream record of the engine-server on %s became "
                                         "free for %u s",
                                         d->o->bridge.segment, d->o->timeout_s);
                        return 0;
                }
                if (rc != 0) {
                        l->st = NULL;
                        link_end(d, l, rc, "cannot open a stream on %s: %s", d->o->bridge.segment,
                                 *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                        return 1;
                }
                moved = 1;
        }
        while (l->qh != NULL) {
                struct qframe *f = l->qh;
                /* A frame may hold several of the client's chunks (the sending bridge
                 * coalesces them): it goes to the server in pieces of at most the largest
                 * loan of its segment, each a FILE_DATA at its own offset. */
                uint32_t len = f->h.len - l->done;
                if (l->pend_off != 0)
                        len = l->pend_len;
                else if (f->h.cmd == ENG_C_FILE_DATA && len > d->max_loan)
                        len = (uint32_t)d->max_loan;
                if (l->pend_off == 0 && len > 0) {
                        void *p;
                        int rc = eng_stream_try_loan(l->st, len, &p, &l->pend_off);
                        if (rc == -EAGAIN) {
                                l->pend_off = 0;
                                break; /* the server's arena is full: it frees as it writes */
                        }
                        if (rc != 0) {
                                l->pend_off = 0;
                                link_end(d, l, rc, "cannot loan %u bytes on %s: %s", len,
                                         d->o->bridge.segment,
                                         *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                                return 1;
                        }
                        memcpy(p, (const char *)nng_msg_body(f->m) + BR_HDR + l->done, len);
                        l->pend_len = len;
                }
                int rc = eng_stream_try_send(l->st, f->h.cmd, f->h.arg + l->done, l->pend_off, len);
                if (rc == -EAGAIN)
                        break; /* ring full: keep the filled loan */
                if (rc != 0) {
                        /* ended by the server: its reason may be in the ring */
                        if (relay_replies(d, l, &moved) < 0)
                                return 1;
                        link_end(d, l, rc, "the engine-server on %s ended the stream: %s",
                                 d->o->bridge.segment, eng_strerror(rc));
                        return 1;
                }
                l->pend_off = 0;
                l->done += len;
                moved = 1;
                if (l->done < f->h.len)
                        continue; /* the next piece of the same frame */
                l->done = 0;
                l->qh = f->next;
                if (l->qh == NULL)
                        l->qt = NULL;
                if (f->h.cmd == ENG_C_FILE_DATA) {
                        l->qdata--;
                        l->credits++;
                        d->held -= f->h.len;
                } else {
                        l->qctl--;
                        l->await = true;
                }
                nng_msg_free(f->m);
                free(f);
                moved = 1;
        }
        if (l->credits > 0) {
                send_hdr(d, BR_CREDIT, 0, l->id, l->credits, NULL, 0);
                l->credits = 0;
        }
        if (relay_replies(d, l, &moved) < 0)
                return 1;
        return moved;
}

/* ---- connections --------------------------------------------------------------------- */

static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        struct dlv *d = arg;
        pthread_mutex_lock(&d->evmu);
        if (d->nev == d->evcap) {
                uint32_t cap = d->evcap ? 2 * d->evcap : 16;
                struct pev *n = cap <= 65536 ? realloc(d->ev, cap * sizeof(*n)) : NULL;
                if (n != NULL) {
                        d->ev = n;
                        d->evcap = cap;
                }
        }
        if (d->nev < d->evcap) {
                struct pev *e = &d->ev[d->nev++];
                e->pipe = (uint32_t)nng_pipe_id(p);
                e->kind = ev == NNG_PIPE_EV_ADD_PRE    ? PEV_PRE
                          : ev == NNG_PIPE_EV_ADD_POST ? PEV_ADD
                                                       : PEV_REM;
                e->peer[0] = '\0';
                if (e->kind == PEV_PRE)
                        br_peer(p, e->peer, sizeof(e->peer));
        }
        pthread_mutex_unlock(&d->evmu);
}

static uint64_t alive_period(const struct dlv *d)
{
        uint64_t t = d->timeout_ns / BR_ALIVE_DIV;
        return t < 50000000u ? 50000000u : t;
}

/*
 * The connection's heartbeat: an ALIVE every timeout / BR_ALIVE_DIV, and a connection that
 * brought nothing for the whole timeout is dead even if TCP has not noticed (a link down, a
 * blocked port: no RST, no FIN; keepalive would take hours). Its streams are aborted (the real
 * server deletes their temporary files) and it is closed, so that the sending bridge's next
 * connection is taken (pair1 serves one at a time).
 */
static void heartbeat(struct dlv *d)
{
        if (d->pipe == 0)
                return;
        uint64_t now = eng_now_ns();
        if (now - d->last_rx_ns >= d->timeout_ns) {
                nng_pipe p = NNG_PIPE_INITIALIZER;
                p.id = d->pipe;
                char why[96];
                snprintf(why, sizeof(why), "went silent (nothing for %u s): closed",
                         d->o->timeout_s);
                drop_connection(d, why);
                nng_pipe_close(p);
                return;
        }
        if (now >= d->next_alive_ns) {
                send_hdr(d, BR_ALIVE, 0, 0, 0, NULL, 0);
                d->next_alive_ns = now + alive_period(d);
        }
}

/* A connection pair1 refused: say so (one line at most every REFUSED_LOG_NS, with a count),
 * or a second sending bridge would just never connect, with nothing in either log. */
#define REFUSED_LOG_NS (10 * 1000000000ull)
static void pre_gone(struct dlv *d, uint32_t pipe)
{
        for (uint32_t i = 0; i < PRE_MAX && pipe != 0; i++) {
                if (d->pre[i].pipe != pipe)
                        continue;
                d->pre[i].pipe = 0;
                d->refused++;
                uint64_t now = eng_now_ns();
                if (d->refused_log_ns != 0 && now - d->refused_log_ns < REFUSED_LOG_NS)
                        return;
                char why[160];
                if (d->pipe != 0)
                        snprintf(why, sizeof(why), "the sending bridge from %s is connected",
                                 d->peer);
                else
                        snprintf(why, sizeof(why), "the previous connection was still closing");
                eng_log(ENG_LOG_WARN, NULL,
                        "refused %u connection(s), the last from %s: %s (a receiving bridge takes "
                        "one sending bridge at a time: give each its own receiving bridge and "
                        "port)",
                        d->refused, d->pre[i].peer, why);
                d->refused = 0;
                d->refused_log_ns = now;
                return;
        }
}

static void pipe_events(struct dlv *d)
{
        pthread_mutex_lock(&d->evmu);
        uint32_t n = d->nev;
        struct pev ev[64];
        if (n > 64)
                n = 64;
        if (n > 0) { /* d->ev is NULL until the first event (memcpy of NULL is undefined) */
                memcpy(ev, d->ev, n * sizeof(ev[0]));
                memmove(d->ev, d->ev + n, (d->nev - n) * sizeof(ev[0]));
                d->nev -= n;
        }
        pthread_mutex_unlock(&d->evmu);
        for (uint32_t i = 0; i < n; i++) {
                nng_pipe p = NNG_PIPE_INITIALIZER;
                p.id = ev[i].pipe;
                if (ev[i].kind == PEV_PRE) {
                        if (d->pipe == 0) {
                                /* A run of them: each within BR_WEDGE_GAP_NS of the last (a
                                 * sending bridge redials at least every second). */
                                uint64_t now = eng_now_ns();
                                if (d->unserved_ns == 0 ||
                                    now - d->unserved_last_ns > BR_WEDGE_GAP_NS)
                                        d->unserved_ns = now;
                                d->unserved_last_ns = now;
                        }
                        struct pre *q = &d->pre[d->npre_next++ % PRE_MAX];
                        q->pipe = ev[i].pipe;
                        snprintf(q->peer, sizeof(q->peer), "%s", ev[i].peer);
                        continue;
                }
                if (ev[i].kind == PEV_ADD) {
                        for (uint32_t k = 0; k < PRE_MAX; k++)
                                if (d->pre[k].pipe == ev[i].pipe)
                                        d->pre[k].pipe = 0;
                        if (d->pipe != 0)
                                drop_connection(d, "replaced by a new one");
                        d->pipe = ev[i].pipe;
                        d->unserved_ns = 0;
                        d->last_rx_ns = eng_now_ns();
                        d->next_alive_ns = d->last_rx_ns + alive_period(d);
                        br_peer(p, d->peer, sizeof(d->peer));
                        unsigned char hello[BR_HELLO_LEN];
                        br_hello_put(hello, d->o->bridge.window, d->o->bridge.memory);
                        send_hdr(d, BR_HELLO, 0, 0, 0, hello, BR_HELLO_LEN);
                        eng_log(ENG_LOG_INFO, NULL, "sending bridge connected from %s", d->peer);
                } else if (ev[i].pipe == d->pipe) {
                        drop_connection(d, "lost");
                } else {
                        pre_gone(d, ev[i].pipe);
                }
        }
}

int br_deliver_run(const eng_opts_t *o, volatile int *stop, int *port_out)
{
        struct dlv *d = calloc(1, sizeof(*d));
        if (d == NULL)
                return 1;
        d->o = o;
        d->timeout_ns = (uint64_t)o->timeout_s * 1000000000u;
        const char *fault = getenv("ENGINE_BRIDGE_FAULT");
        fault_keep_refused = fault != NULL && strcmp(fault, "keep-refused") == 0;
        pthread_mutex_init(&d->evmu, NULL);
        int status = 1, fd = -1;
        int rc = nng_pair1_open(&d->sock);
        if (rc == 0) {
                nng_socket_set_size(d->sock, NNG_OPT_RECVMAXSZ, BR_HDR + BR_MAX_PAYLOAD);
                nng_socket_set_bool(d->sock, NNG_OPT_TCP_NODELAY, true);
                nng_socket_set_bool(d->sock, NNG_OPT_TCP_KEEPALIVE, true);
                nng_pipe_notify(d->sock, NNG_PIPE_EV_ADD_PRE, pipe_event, d);
                nng_pipe_notify(d->sock, NNG_PIPE_EV_ADD_POST, pipe_event, d);
                nng_pipe_notify(d->sock, NNG_PIPE_EV_REM_POST, pipe_event, d);
                rc = nng_listener_create(&d->lst, d->sock, o->bridge.listen);
        }
        if (rc == 0)
                rc = nng_listener_start(d->lst, 0);
        if (rc == 0)
                rc = nng_socket_get_int(d->sock, NNG_OPT_RECVFD, &fd);
        if (rc != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot listen on %s: %s", o->bridge.listen,
                        nng_strerror(rc));
                goto out;
        }
        int port = 0;
        nng_listener_get_int(d->lst, NNG_OPT_TCP_BOUND_PORT, &port);
        if (port_out != NULL)
                *port_out = port;
        eng_log(ENG_LOG_INFO, NULL,
                "listening on %s (port %d) for a sending bridge, delivering to %s",
                o->bridge.listen, port, o->bridge.segment);
        try_attach(d, true);
        status = 0;
        uint32_t idle = 0;
        while (!*stop) {
                pipe_events(d);
                heartbeat(d);
                /* Connections keep coming for BR_WEDGE_NS and none is served although none is
                 * ours: NNG is stuck (a single one that never completes is not enough). */
                if (d->pipe == 0 && d->unserved_ns != 0 &&
                    d->unserved_last_ns - d->unserved_ns >= BR_WEDGE_NS) {
                        eng_log(ENG_LOG_ERROR, NULL,
                                "every connection refused for %llu s although none is ours: "
                                "NNG never finished closing the last one (NNG 1.5.2 can hang "
                                "for good closing a connection while data arrives, "
                                "nanomsg/nng#1636, fixed in 1.6): starting afresh",
                                (unsigned long long)(BR_WEDGE_NS / 1000000000ull));
                        status = BR_EXIT_WEDGED;
                        break;
                }
                try_attach(d, false);
                uint32_t ticket = d->c ? eng_client_ticket(d->c) : 0;
                int moved = 0;
                for (int k = 0; k < 256; k++) {
                        nng_msg *m;
                        if (nng_recvmsg(d->sock, &m, NNG_FLAG_NONBLOCK) != 0)
                                break;
                        on_frame(d, m);
                        moved = 1;
                }
                bool wait_engine = false;
                for (struct rlink *l = d->links, *next; l; l = next) {
                        next = l->next; /* drive may free l */
                        if (d->c == NULL)
                                break;
                        wait_engine |= l->qh != NULL || l->await || l->st == NULL;
                        moved |= drive(d, l) > 0;
                }
                moved |= out_flush(d);
                if (d->nout > OUT_MAX) {
                        nng_pipe p = NNG_PIPE_INITIALIZER;
                        p.id = d->pipe;
                        refuse(d, p, "the sending bridge reads nothing");
                }
                uint64_t now = eng_now_ns();
                if (d->c != NULL && now >= d->next_check_ns) {
                        d->next_check_ns = now + 200000000u;
                        if (eng_client_check_server(d->c) != 0)
                                server_gone(d);
                }
                if (moved) {
                        idle = 0;
                        continue;
                }
                if (++idle < 64) {
                        sched_yield();
                        continue;
                }
                if (d->oh != NULL) {
                        struct timespec t = {.tv_sec = 0, .tv_nsec = 200000};
                        nanosleep(&t, NULL);
                } else if (wait_engine && d->c != NULL) {
                        if (eng_client_wait(d->c, ticket, 1) == -EPIPE)
                                server_gone(d);
                        struct pollfd pf = {.fd = fd, .events = POLLIN};
                        poll(&pf, 1, 0);
                } else {
                        struct pollfd pf = {.fd = fd, .events = POLLIN};
                        poll(&pf, 1, d->links ? 5 : 100);
                }
        }
        if (*stop)
                eng_log(ENG_LOG_INFO, NULL, "signal %d: stopping", *stop);
out:
        if (d->pipe != 0)
                drop_connection(d, "closed: stopping");
        while (d->links)
                link_free(d, d->links, false);
        out_clear(d);
        if (status == BR_EXIT_WEDGED) {
                /* nng_close would wait for NNG's reaper, which is stuck, and NNG's threads
                 * may still call pipe_event: leave d to them; the process starts afresh. */
                if (d->c)
                        eng_client_detach(d->c);
                return status;
        }
        nng_close(d->sock);
        if (d->c)
                eng_client_detach(d->c);
        pthread_mutex_destroy(&d->evmu);
        free(d->ev);
        free(d);
        return status;
}
