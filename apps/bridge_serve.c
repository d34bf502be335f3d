/*
 * bridge_serve.c - engine-bridge on the sending host: serves a local segment as engine-server
 * would (eng_server_start with our own hooks), so engine-client works unchanged, and relays
 * each stream's file protocol over one NNG pair1 connection to the receiving bridge.
 *
 * FILE_DATA chunks of a stream are coalesced into frames of up to BR_BATCH bytes (four 256 KiB
 * chunks): the cost of the path is per frame, not per byte (docs/BRIDGE.md). A frame reserves
 * its credit (a window entry and BR_BATCH bytes of memory) before its first chunk is copied,
 * and goes when full, before any other frame of its stream, or from the main thread once its
 * client has sent nothing for BATCH_AGE_NS.
 *
 * Threads: the engine's workers run the hooks, one stream at a time per worker; a request that
 * needs an answer (FILE_OPEN, FILE_END, PING) or a new frame without credit blocks its worker
 * (never longer than the timeout), which is why this server runs more workers than CPUs and
 * does not let a worker poll streams (spin below 64: see engine/worker.c may_poll), so that a
 * blocked worker holds no stream but its own. One receiver thread takes frames from the
 * network and files them under their link; NNG's own threads do the socket I/O and tell us of
 * lost connections (pipe_event).
 *
 * Every hook answers its own client inside the hook (the engine lets a server stream be
 * touched only there): a reply that came from the network while no hook ran waits in the
 * link until the next one. All link state is under one mutex, with one condition variable for
 * every change (a reply, a credit, a lost connection): a handful of workers share it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/transport/tcp/tcp.h>
#include <shmengine/proto.h>

#include "bridge.h"

#define REP_MAX                                                                                    \
        4 /* replies a link may hold: one asked for, plus one unasked FAIL; more is a              \
             protocol error */

struct link {
        uint32_t id;
        uint32_t user;     /* the client's stream id */
        pid_t pid;         /* the client */
        uint32_t epoch;    /* the connection it was opened on (0: not opened remotely yet) */
        uint32_t inflight; /* FILE_DATA frames sent and not credited yet */
        uint32_t head;     /* oldest of them in sizes[] */
        uint32_t *sizes;   /* their payload sizes, a ring of opts window entries */
        nng_msg *rep[REP_MAX];
        uint32_t nrep;
        uint64_t progress_ns; /* the last credit or reply */
        int dead;             /* errno once the link is over remotely (why says how) */
        char why[400];
        /* the file in flight, for the log and for the protocol's order */
        bool in_file, failed;
        char name[ENG_NAME_MAX + 1];
        uint64_t size, bytes, t0;
        /* FILE_DATA chunks coalesced into one frame (BR_BATCH bytes of credit reserved, the
         * newest entry of sizes[]): sent when full, before any other frame of the link, or by
         * the main thread once it is BATCH_AGE_NS old (a client that stalls mid-file) */
        nng_msg *batch;
        uint32_t blen;
        uint64_t boff, bt0;
        bool flushing; /* the main thread is sending the batch: the link's hooks wait */
        bool resv;     /* the newest entry of sizes[] is the batch's, not sent yet */
        bool filling;  /* a hook is copying a chunk into the batch: the main thread waits */
};

#define BATCH_AGE_NS 2000000u /* 2 ms */
#define BR_WORKERS   4        /* the default of the served segment's workers */

struct bserve {
        const eng_opts_t *o;
        const char *url;
        nng_socket sock;
        pthread_mutex_t mu;
        pthread_cond_t cv; /* any change to a link or to the connection */
        bool connected;
        uint32_t epoch, pipe_id;
        uint32_t window;        /* min(ours, the receiving bridge's) */
        uint64_t memory, used;  /* chunk bytes allowed / not credited, over the connection */
        uint64_t last_rx_ns;    /* the last frame from the receiving bridge (ALIVE included) */
        uint64_t next_alive_ns; /* when the main thread sends our next ALIVE */
        struct link **tab;      /* by id % ntab */
        uint32_t ntab, next_id;
        uint32_t nbatch; /* links with a batch */
        atomic_bool stopping;
        uint64_t timeout_ns;
        uint32_t early;        /* connections closed before their HELLO, since the last line */
        uint64_t early_log_ns; /* when that line was written */
};

/* ---- helpers ------------------------------------------------------------------------- */

static void deadline_ts(uint64_t ns, struct timespec *ts)
{
        ts->tv_sec = (time_t)(ns / 1000000000u);
        ts->tv_nsec = (long)(ns % 1000000000u);
}

/* Wait on cv (mu held) until the monotonic time `until` at the latest. */
static void wait_until(struct bserve *b, uint64_t until)
{
        uint64_t now = eng_now_ns();
        if (now >= until)
                return;
        /* never longer than 200 ms at once: a stop flag is looked at between waits */
        uint64_t t = until - now > 200000000u ? now + 200000000u : until;
        struct timespec ts;
        deadline_ts(t, &ts);
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
}

static struct link *find(struct bserve *b, uint32_t id)
{
        struct link *l = b->tab[id % b->ntab];
        return l != NULL && l->id == id ? l : NULL;
}

/* The link is over remotely: its next hook tells the client why. mu held. */
static void fail_link(struct link *l, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_link(struct link *l, int err, const char *fmt, ...)
{
        if (l->dead)
                return;
        l->dead = err ? err : EIO;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->why, sizeof(l->why), fmt, ap);
        va_end(ap);
}

static void release_credit(struct bserve *b, struct link *l, uint32_t n)
{
        uint32_t w = b->o->bridge.window;
        for (uint32_t i = 0; i < n && l->inflight > 0; i++) {
                uint32_t sz = l->sizes[l->head];
                l->head = (l->head + 1) % w;
                l->inflight--;
                b->used = b->used >= sz ? b->used - sz : 0;
        }
}

/* The link's batch as a frame ready to send (NULL: none); its reserved credit shrinks to what
 * it holds. mu held. */
static nng_msg *take_batch(struct bserve *b, struct link *l)
{
        nng_msg *m = l->batch;
        if (m == NULL)
                return NULL;
        l->batch = NULL;
        l->resv = false;
        b->nbatch--;
        if (l->inflight > 0) {
                uint32_t *sz = &l->sizes[(l->head + l->inflight - 1) % b->o->bridge.window];
                uint32_t unused = *sz - l->blen;
                b->used = b->used >= unused ? b->used - unused : 0;
                *sz = l->blen;
        }
        br_hdr_t h = {.type = BR_MSG,
                      .cmd = ENG_C_FILE_DATA,
                      .link = l->id,
                      .epoch = l->epoch,
                      .arg = l->boff};
        br_put_hdr(nng_msg_body(m), &h, l->blen);
        return m;
}

/* Forget the link's batch unsent (the file failed or the client went): its reserved credit
 * is returned. mu held. */
static void drop_batch(struct bserve *b, struct link *l)
{
        if (l->batch == NULL)
                return;
        nng_msg_free(l->batch);
        l->batch = NULL;
        l->resv = false;
        b->nbatch--;
        if (l->inflight > 0) {
                uint32_t sz = l->sizes[(l->head + l->inflight - 1) % b->o->bridge.window];
                l->inflight--;
                if (l->epoch == b->epoch)
                        b->used = b->used >= sz ? b->used - sz : 0;
        }
}

/* Wait until the main thread is not sending the link's batch. mu held. */
static void wait_flushing(struct bserve *b, struct link *l)
{
        while (l->flushing) {
                struct timespec ts;
                deadline_ts(eng_now_ns() + 50000000u, &ts);
                pthread_cond_timedwait(&b->cv, &b->mu, &ts);
        }
}

/* One frame to the receiving bridge, retried until it goes, the link dies, the bridge stops
 * or nothing could be sent for the timeout. 0, or -1 (the link failed). Takes m either way. */
static int send_frame(struct bserve *b, struct link *l, nng_msg *m)
{
        uint64_t until = eng_now_ns() + b->timeout_ns;
        for (;;) {
                int rc = nng_sendmsg(b->sock, m, 0); /* NNG_OPT_SENDTIMEO: 200 ms */
                if (rc == 0)
                        return 0;
                pthread_mutex_lock(&b->mu);
                if (rc != NNG_ETIMEDOUT && rc != NNG_EAGAIN)
                        fail_link(l, EIO, "cannot send to the remote bridge: %s", nng_strerror(rc));
                else if (atomic_load(&b->stopping))
                        fail_link(l, ESHUTDOWN, "bridge shutting down");
                else if (eng_now_ns() > until)
                        fail_link(l, ETIMEDOUT,
                                  "the connection to the remote bridge took nothing for %u s",
                                  b->o->timeout_s);
                bool over = l->dead != 0;
                pthread_mutex_unlock(&b->mu);
                if (over) {
                        nng_msg_free(m);
                        return -1;
                }
        }
}

/* Send the link's batch now, if it has one (before any other frame of the link). */
static int flush_batch(struct bserve *b, struct link *l)
{
        pthread_mutex_lock(&b->mu);
        wait_flushing(b, l);
        nng_msg *m = take_batch(b, l);
        pthread_mutex_unlock(&b->mu);
        return m != NULL ? send_frame(b, l, m) : 0;
}

static int send_hdr(struct bserve *b, struct link *l, uint8_t type, uint16_t cmd, uint64_t arg,
                    const void *p, uint32_t len)
{
        br_hdr_t h = {.type = type, .cmd = cmd, .link = l->id, .epoch = l->epoch, .arg = arg};
        nng_msg *m = br_frame(&h, p, len);
        if (m == NULL) {
                pthread_mutex_lock(&b->mu);
                fail_link(l, ENOMEM, "no memory for a frame");
                pthread_mutex_unlock(&b->mu);
                return -1;
        }
        return send_frame(b, l, m);
}

/* Open the link on the receiving side if it is not yet: waits up to the timeout for a
 * connection. 0, or -1 with the link failed. */
static int ensure_open(struct bserve *b, struct link *l)
{
        pthread_mutex_lock(&b->mu);
        uint64_t until = eng_now_ns() + b->timeout_ns;
        while (!l->dead && !b->connected && !atomic_load(&b->stopping)) {
                if (eng_now_ns() >= until) {
                        fail_link(l, ENOTCONN, "no connection to the remote bridge at %s for %u s",
                                  b->url, b->o->timeout_s);
                        break;
                }
                wait_until(b, until);
        }
        if (atomic_load(&b->stopping))
                fail_link(l, ESHUTDOWN, "bridge shutting down");
        bool need_open = false;
        if (!l->dead && l->epoch == 0) {
                l->epoch = b->epoch;
                need_open = true;
        } else if (!l->dead && l->epoch != b->epoch) {
                fail_link(l, ECONNRESET, "bridge connection lost (%s)", b->url);
        }
        int rc = l->dead ? -1 : 0;
        pthread_mutex_unlock(&b->mu);
        if (rc == 0 && need_open)
                rc = send_hdr(b, l, BR_OPEN, 0, l->user, NULL, 0);
        return rc;
}

/* The oldest reply of the link, waiting for one as long as the remote side makes progress
 * (a credit or a reply within the timeout); NULL once the link failed. */
static nng_msg *wait_reply(struct bserve *b, struct link *l)
{
        pthread_mutex_lock(&b->mu);
        nng_msg *m = NULL;
        for (;;) {
                if (l->nrep > 0) {
                        m = l->rep[0];
                        memmove(l->rep, l->rep + 1, --l->nrep * sizeof(l->rep[0]));
                        break;
                }
                if (atomic_load(&b->stopping))
                        fail_link(l, ESHUTDOWN, "bridge shutting down");
                if (l->dead)
                        break;
                uint64_t until = l->progress_ns + b->timeout_ns;
                if (eng_now_ns() >= until) {
                        fail_link(l, ETIMEDOUT, "no answer from the remote bridge for %u s",
                                  b->o->timeout_s);
                        break;
                }
                wait_until(b, until);
        }
        pthread_mutex_unlock(&b->mu);
        return m;
}

/* A message to the client, with a payload copied into a loan. */
static int to_client(eng_sstream_t *s, uint16_t cmd, uint64_t arg, const void *p, uint32_t len)
{
        uint64_t off = 0;
        if (len > 0) {
                void *q;
                if (eng_sstream_loan(s, len, &q, &off) != 0) {
                        if (cmd != ENG_S_FILE_FAIL)
                                return -ENOMEM;
                        len = 0; /* the arena is full: FAIL's code still names the reason */
                } else {
                        memcpy(q, p, len);
                }
        }
        int rc = eng_sstream_send(s, cmd, arg, off, len);
        if (rc != 0 && off != 0)
                eng_sstream_free(s, off);
        return rc;
}

static void log_file(const struct link *l, int err, const char *why)
{
        double sec = (double)(eng_now_ns() - l->t0) / 1e9;
        double mbs = sec > 0 ? (double)l->bytes / sec / 1e6 : 0;
        if (err == 0)
                eng_log(ENG_LOG_INFO,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", l->user), ENG_LF_I64("pid", l->pid),
                                       ENG_LF_STR("name", l->name), ENG_LF_U64("bytes", l->size),
                                       ENG_LF_FIX("seconds", sec, 3), ENG_LF_FIX("rate", mbs, 1)),
                        "file relayed and verified remotely");
        else
                eng_log(ENG_LOG_WARN,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", l->user), ENG_LF_I64("pid", l->pid),
                                       ENG_LF_STR("name", l->name), ENG_LF_U64("bytes", l->bytes),
                                       ENG_LF_U64("size", l->size), ENG_LF_FIX("seconds", sec, 3),
                                       ENG_LF_STR("error", why)),
                        "transfer FAILED");
}

/* Tell the client the file failed (the link's reason), log it, drop the rest of the file. */
static int fail_file(struct bserve *b, eng_sstream_t *s, struct link *l, int err, const char *why)
{
        pthread_mutex_lock(&b->mu);
        wait_flushing(b, l);
        drop_batch(b, l);
        pthread_mutex_unlock(&b->mu);
        if (l->in_file)
                log_file(l, err, why);
        l->failed = l->in_file;
        l->in_file = false;
        to_client(s, ENG_S_FILE_FAIL, (uint64_t)(uint32_t)err, why, (uint32_t)strlen(why));
        return 0;
}

static int fail_from_link(struct bserve *b, eng_sstream_t *s, struct link *l)
{
        pthread_mutex_lock(&b->mu);
        int err = l->dead;
        char why[sizeof(l->why)];
        snprintf(why, sizeof(why), "%s", l->why);
        pthread_mutex_unlock(&b->mu);
        return fail_file(b, s, l, err, why);
}

/* A reply from the receiving bridge for the client: relay it. FILE_FAIL ends the file.
 * want: the command expected (0: none; any other than FILE_FAIL is then a protocol error). */
static int relay(struct bserve *b, eng_sstream_t *s, struct link *l, nng_msg *m, uint16_t want)
{
        br_hdr_t h;
        const char *bad;
        /* decoded once already by the receiver thread; decode again for the header fields */
        br_decode(nng_msg_body(m), nng_msg_len(m), BR_AT_SENDER, &h, &bad);
        const unsigned char *p = (const unsigned char *)nng_msg_body(m) + BR_HDR;
        int rc = 0;
        if (h.cmd == ENG_S_FILE_FAIL) {
                pthread_mutex_lock(&b->mu);
                wait_flushing(b, l);
                drop_batch(b, l);
                pthread_mutex_unlock(&b->mu);
                char text[BR_TEXT_MAX + 1], esc[4 * BR_TEXT_MAX + 1];
                memcpy(text, p, h.len);
                text[h.len] = '\0';
                eng_log_escape(text, h.len, esc, sizeof(esc));
                if (l->in_file)
                        log_file(l, (int)(uint32_t)h.arg, h.len ? esc : "failed remotely");
                l->failed = l->in_file;
                l->in_file = false;
                rc = to_client(s, ENG_S_FILE_FAIL, h.arg, p, h.len);
        } else if (h.cmd != want || want == 0) {
                rc = fail_file(b, s, l, EPROTO, "unexpected reply from the remote bridge");
        } else {
                rc = to_client(s, h.cmd, h.arg, p, h.len);
        }
        nng_msg_free(m);
        return rc;
}

/* A reply that came while the client was sending data (a FAIL): relay it now. */
static nng_msg *pending_reply(struct bserve *b, struct link *l)
{
        pthread_mutex_lock(&b->mu);
        nng_msg *m = NULL;
        if (l->nrep > 0) {
                m = l->rep[0];
                memmove(l->rep, l->rep + 1, --l->nrep * sizeof(l->rep[0]));
        }
        pthread_mutex_unlock(&b->mu);
        return m;
}

/* ---- the hooks ----------------------------------------------------------------------- */

static int on_open(eng_sstream_t *s, void *ctx)
{
        struct bserve *b = ctx;
        struct link *l = calloc(1, sizeof(*l));
        if (l == NULL || (l->sizes = calloc(b->o->bridge.window, sizeof(uint32_t))) == NULL) {
                free(l);
                return -ENOMEM;
        }
        l->user = eng_sstream_id(s);
        l->pid = eng_sstream_pid(s);
        pthread_mutex_lock(&b->mu);
        for (uint32_t k = 0; k < b->ntab && l->id == 0; k++) {
                uint32_t id = b->next_id++;
                if (id != 0 && b->tab[id % b->ntab] == NULL) {
                        l->id = id;
                        b->tab[id % b->ntab] = l;
                }
        }
        l->progress_ns = eng_now_ns();
        pthread_mutex_unlock(&b->mu);
        if (l->id == 0) {
                free(l->sizes);
                free(l);
                return -EBUSY; /* more streams than the bridge's `streams` */
        }
        *eng_sstream_user(s) = l;
        return 0;
}

static void on_close(eng_sstream_t *s, int err, void *ctx)
{
        struct bserve *b = ctx;
        struct link *l = *eng_sstream_user(s);
        if (l == NULL)
                return;
        *eng_sstream_user(s) = NULL;
        if (l->in_file)
                log_file(l, err ? err : ECONNABORTED,
                         err == -EPIPE ? "client went away mid-transfer"
                                       : "client ended the stream mid-transfer");
        pthread_mutex_lock(&b->mu);
        wait_flushing(b, l);
        drop_batch(b, l);
        b->tab[l->id % b->ntab] = NULL;
        bool tell = b->connected && l->epoch != 0 && l->epoch == b->epoch && !l->dead;
        if (l->epoch == b->epoch)
                release_credit(b, l, l->inflight);
        pthread_mutex_unlock(&b->mu);
        if (tell) {
                /* The receiving bridge ends the real stream: in order if ours closed in order,
                 * else aborted (the real server removes a partial file). */
                br_hdr_t h = {.type = BR_CLOSE, .link = l->id, .epoch = l->epoch};
                h.arg = err == 0 ? 0 : (uint64_t)(err < 0 ? -err : err) & BR_ERRNO_MAX;
                nng_msg *m = br_frame(&h, NULL, 0);
                if (m != NULL && nng_sendmsg(b->sock, m, 0) != 0)
                        nng_msg_free(m); /* lost: the receiving side ends it with the connection */
        }
        for (uint32_t i = 0; i < l->nrep; i++)
                nng_msg_free(l->rep[i]);
        free(l->sizes);
        free(l);
}

static int do_ping(struct bserve *b, eng_sstream_t *s, struct link *l, eng_msg_t *m)
{
        if (ensure_open(b, l) != 0 || flush_batch(b, l) != 0)
                return -ECONNRESET;
        if (send_hdr(b, l, BR_MSG, ENG_C_PING, m->arg, m->data, m->len) != 0)
                return -ECONNRESET;
        nng_msg *r = wait_reply(b, l);
        if (r == NULL)
                return -ECONNRESET;
        return relay(b, s, l, r, ENG_S_PONG);
}

static int do_open(struct bserve *b, eng_sstream_t *s, struct link *l, eng_msg_t *m)
{
        /* The name is in the segment: copy it once, check the copy (as the real server will:
         * a name it refuses need not cross the network). */
        char raw[BR_NAME_WIRE];
        const char *why = NULL;
        size_t n = m->len < sizeof(raw) ? m->len : sizeof(raw);
        if (m->data != NULL)
                memcpy(raw, m->data, n);
        l->failed = false;
        l->in_file = false;
        if (m->data == NULL || m->len > sizeof(raw) ||
            eng_safe_name(raw, n, l->name, sizeof(l->name), &why) != 0) {
                snprintf(l->name, sizeof(l->name), "(refused)");
                return fail_file(b, s, l, EINVAL, why ? why : "no usable file name");
        }
        l->in_file = true;
        l->size = m->arg;
        l->bytes = 0;
        l->t0 = eng_now_ns();
        if (ensure_open(b, l) != 0 ||
            send_hdr(b, l, BR_MSG, ENG_C_FILE_OPEN, m->arg, l->name, (uint32_t)strlen(l->name)))
                return fail_from_link(b, s, l);
        nng_msg *r = wait_reply(b, l);
        if (r == NULL)
                return fail_from_link(b, s, l);
        return relay(b, s, l, r, ENG_S_FILE_READY);
}

static int do_data(struct bserve *b, eng_sstream_t *s, struct link *l, eng_msg_t *m)
{
        if (l->failed)
                return 0; /* the client has been told; drop the rest of this file */
        if (!l->in_file)
                return fail_file(b, s, l, EPROTO, "data without an open file");
        nng_msg *r = pending_reply(b, l);
        if (r != NULL)
                return relay(b, s, l, r, 0);
        if (m->len > BR_BATCH)
                return fail_file(b, s, l, EMSGSIZE, "a chunk larger than a bridge frame");
        /* The chunk joins the link's batch if it follows it and fits; else the batch goes. */
        pthread_mutex_lock(&b->mu);
        wait_flushing(b, l);
        nng_msg *full = NULL;
        if (l->dead) {
                pthread_mutex_unlock(&b->mu);
                return fail_from_link(b, s, l);
        }
        if (l->batch != NULL && (m->arg != l->boff + l->blen || l->blen + m->len > BR_BATCH))
                full = take_batch(b, l);
        pthread_mutex_unlock(&b->mu);
        if (full != NULL && send_frame(b, l, full) != 0)
                return fail_from_link(b, s, l);
        pthread_mutex_lock(&b->mu);
        bool dead = false, reply = false;
        if (l->batch == NULL) {
                /* Credit for a new frame: at most `window` frames of this stream and `memory`
                 * bytes of all streams between us and the real server (a new frame reserves
                 * BR_BATCH bytes until it is sent; memory is at least 1 MiB, so one frame
                 * always fits once the others are credited). */
                for (;;) {
                        if (atomic_load(&b->stopping))
                                fail_link(l, ESHUTDOWN, "bridge shutting down");
                        if (l->dead || l->nrep > 0)
                                break;
                        if (l->epoch != b->epoch) {
                                fail_link(l, ECONNRESET, "bridge connection lost (%s)", b->url);
                                break;
                        }
                        if (l->inflight < b->window && b->used + BR_BATCH <= b->memory)
                                break;
                        uint64_t until = l->progress_ns + b->timeout_ns;
                        if (eng_now_ns() >= until) {
                                fail_link(l, ETIMEDOUT, "no credit from the remote bridge for %u s",
                                          b->o->timeout_s);
                                /* Nothing at all from the peer for that long: the connection
                                 * is dead even if TCP has not noticed; drop it so that NNG
                                 * dials afresh. */
                                if (eng_now_ns() - b->last_rx_ns >= b->timeout_ns)
                                        b->connected = false;
                                break;
                        }
                        wait_until(b, until);
                }
                dead = l->dead != 0;
                reply = l->nrep > 0;
                if (!dead && !reply) {
                        l->sizes[(l->head + l->inflight) % b->o->bridge.window] = BR_BATCH;
                        l->inflight++;
                        l->resv = true;
                        b->used += BR_BATCH;
                        pthread_mutex_unlock(&b->mu);
                        /* room for a whole frame, without nng_msg_alloc's zeroing of it: the
                         * chunks are appended, the header is filled in when it is sent */
                        static const unsigned char nohdr[BR_HDR];
                        nng_msg *nm = NULL;
                        int arc = nng_msg_alloc(&nm, 0);
                        if (arc == 0 && ((arc = nng_msg_reserve(nm, BR_HDR + BR_BATCH)) != 0 ||
                                         (arc = nng_msg_append(nm, nohdr, BR_HDR)) != 0)) {
                                nng_msg_free(nm);
                                nm = NULL;
                        }
                        pthread_mutex_lock(&b->mu);
                        l->batch = nm;
                        l->blen = 0;
                        l->boff = m->arg;
                        l->bt0 = eng_now_ns();
                        b->nbatch++;
                        if (arc != 0) {
                                l->batch = NULL;
                                b->nbatch--;
                                /* give the reservation back as drop_batch would */
                                l->inflight--;
                                l->resv = false;
                                b->used = b->used >= BR_BATCH ? b->used - BR_BATCH : 0;
                                fail_link(l, ENOMEM, "no memory for a frame");
                                dead = true;
                        }
                }
        }
        l->filling = !dead && !reply;
        pthread_mutex_unlock(&b->mu);
        if (reply)
                return relay(b, s, l, pending_reply(b, l), 0);
        if (dead)
                return fail_from_link(b, s, l);
        /* the one copy out of the segment: into the frame, outside the lock (filling keeps
         * the main thread off this batch meanwhile) */
        /* within the reserved room: no allocation, only the copy */
        nng_msg_append(l->batch, m->data, m->len);
        l->bytes += m->len;
        pthread_mutex_lock(&b->mu);
        l->blen += m->len;
        l->bt0 = eng_now_ns();
        l->filling = false;
        full = l->blen + m->len > BR_BATCH ? take_batch(b, l) : NULL;
        pthread_mutex_unlock(&b->mu);
        if (full != NULL && send_frame(b, l, full) != 0)
                return fail_from_link(b, s, l);
        return 0;
}

static int do_end(struct bserve *b, eng_sstream_t *s, struct link *l, eng_msg_t *m)
{
        if (l->failed) {
                l->failed = false;
                return 0;
        }
        if (!l->in_file)
                return fail_file(b, s, l, EPROTO, "end of file without an open file");
        nng_msg *r = pending_reply(b, l);
        if (r != NULL)
                return relay(b, s, l, r, 0);
        if (flush_batch(b, l) != 0 || send_hdr(b, l, BR_MSG, ENG_C_FILE_END, m->arg, NULL, 0) != 0)
                return fail_from_link(b, s, l);
        r = wait_reply(b, l);
        if (r == NULL)
                return fail_from_link(b, s, l);
        bool done = true;
        {
                br_hdr_t h;
                const char *bad;
                br_decode(nng_msg_body(r), nng_msg_len(r), BR_AT_SENDER, &h, &bad);
                done = h.cmd == ENG_S_FILE_DONE;
        }
        int rc = relay(b, s, l, r, ENG_S_FILE_DONE);
        if (done && l->in_file) {
                log_file(l, 0, NULL);
                l->in_file = false;
        }
        return rc;
}

static int on_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        struct bserve *b = ctx;
        struct link *l = *eng_sstream_user(s);
        if (l == NULL)
                return -EPROTO;
        switch (m->cmd) {
        case ENG_C_PING:
                return do_ping(b, s, l, m);
        case ENG_C_FILE_OPEN:
                return do_open(b, s, l, m);
        case ENG_C_FILE_DATA:
                return do_data(b, s, l, m);
        case ENG_C_FILE_END:
                return do_end(b, s, l, m);
        default:
                return -EPROTO;
        }
}

static void log_event(const char *msg, void *ctx)
{
        (void)ctx;
        eng_log(ENG_LOG_WARN, NULL, "%s", msg);
}

/* ---- the network side ---------------------------------------------------------------- */

#define EARLY_LOG_NS (10 * 1000000000ull)

/* NNG's thread: a connection went away. Every link opened on it fails; NNG dials again. */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        struct bserve *b = arg;
        if (ev != NNG_PIPE_EV_REM_POST)
                return;
        uint32_t n = 0;
        bool ours = false;
        pthread_mutex_lock(&b->mu);
        if (b->pipe_id == (uint32_t)nng_pipe_id(p)) {
                ours = true;
                b->connected = false;
                b->pipe_id = 0;
                for (uint32_t i = 0; i < b->ntab; i++) {
                        struct link *l = b->tab[i];
                        if (l != NULL && l->epoch == b->epoch && !l->dead) {
                                fail_link(l, ECONNRESET, "bridge connection lost (%s)", b->url);
                                n++;
                        }
                }
                b->used = 0;
                pthread_cond_broadcast(&b->cv);
        }
        /* Closed before its HELLO: the receiving bridge refused it (it takes one sending
         * bridge at a time) or went away meanwhile. Said once per EARLY_LOG_NS with a count,
         * or a second sending bridge would dial forever with nothing in its log. */
        uint32_t early = 0;
        if (!ours && !atomic_load(&b->stopping)) {
                b->early++;
                uint64_t now = eng_now_ns();
                if (b->early_log_ns == 0 || now - b->early_log_ns >= EARLY_LOG_NS) {
                        early = b->early;
                        b->early = 0;
                        b->early_log_ns = now;
                }
        }
        pthread_mutex_unlock(&b->mu);
        if (ours && !atomic_load(&b->stopping))
                eng_log(ENG_LOG_WARN, NULL,
                        "lost the connection to the remote bridge %s: %u stream(s) failed; "
                        "reconnecting",
                        b->url, n);
        if (early)
                eng_log(ENG_LOG_WARN, NULL,
                        "the remote bridge %s closed %u connection(s) before its HELLO: is "
                        "another sending bridge connected to it? (it takes one at a time); "
                        "dialing again",
                        b->url, early);
}

static void refuse(nng_pipe p, const char *why)
{
        char peer[96];
        br_peer(p, peer, sizeof(peer));
        eng_log(ENG_LOG_WARN, NULL,
                "refused a frame from the remote bridge %s (%s): closing the connection", peer,
                why);
        nng_pipe_close(p);
}

static void *receiver(void *arg)
{
        struct bserve *b = arg;
        while (!atomic_load(&b->stopping)) {
                nng_msg *m;
                int rc = nng_recvmsg(b->sock, &m, 0); /* NNG_OPT_RECVTIMEO: 200 ms */
                if (rc == NNG_ECLOSED)
                        break;
                if (rc != 0)
                        continue;
                nng_pipe p = nng_msg_get_pipe(m);
                br_hdr_t h;
                const char *why = NULL;
                if (br_decode(nng_msg_body(m), nng_msg_len(m), BR_AT_SENDER, &h, &why) != 0) {
                        refuse(p, why);
                        nng_msg_free(m);
                        continue;
                }
                const unsigned char *pl = (const unsigned char *)nng_msg_body(m) + BR_HDR;
                bool bad = false, hello = false;
                uint64_t now = eng_now_ns();
                pthread_mutex_lock(&b->mu);
                if (h.type == BR_HELLO) {
                        uint32_t w;
                        uint64_t mem;
                        if (br_hello_get(pl, &w, &mem) != 0) {
                                bad = true;
                                why = "HELLO with a wrong magic, window or memory";
                        } else {
                                hello = true;
                                b->connected = true;
                                b->epoch = h.epoch;
                                b->pipe_id = (uint32_t)nng_pipe_id(p);
                                b->window = w < b->o->bridge.window ? w : b->o->bridge.window;
                                b->memory = mem < b->o->bridge.memory ? mem : b->o->bridge.memory;
                                b->used = 0;
                                b->last_rx_ns = now;
                                b->next_alive_ns = now;
                        }
                } else if (b->connected && h.epoch == b->epoch &&
                           (uint32_t)nng_pipe_id(p) == b->pipe_id) {
                        b->last_rx_ns = now;
                        struct link *l = h.type == BR_ALIVE ? NULL : find(b, h.link);
                        if (l != NULL && l->epoch == h.epoch) { /* else: a link closed since */
                                l->progress_ns = now;
                                if (h.type == BR_REPLY) {
                                        if (l->nrep == REP_MAX)
                                                fail_link(l, EPROTO,
                                                          "the remote bridge sent replies nobody "
                                                          "asked for");
                                        else {
                                                l->rep[l->nrep++] = m;
                                                m = NULL;
                                        }
                                } else if (h.type == BR_CREDIT) {
                                        if (h.arg > l->inflight - (l->resv ? 1u : 0u)) {
                                                bad = true;
                                                why = "credit for chunks never sent";
                                        } else {
                                                release_credit(b, l, (uint32_t)h.arg);
                                        }
                                } else if (h.type == BR_END) {
                                        char text[BR_TEXT_MAX + 1], esc[4 * BR_TEXT_MAX + 1];
                                        memcpy(text, pl, h.len);
                                        eng_log_escape(text, h.len, esc, sizeof(esc));
                                        fail_link(l, (int)h.arg, "remote: %s",
                                                  h.len ? esc : "stream ended");
                                }
                        }
                }
                /* else a leftover of an older connection: dropped */
                pthread_cond_broadcast(&b->cv);
                uint32_t w = b->window;
                uint64_t mem = b->memory;
                pthread_mutex_unlock(&b->mu);
                if (bad)
                        refuse(p, why);
                if (hello) {
                        char peer[96];
                        br_peer(p, peer, sizeof(peer));
                        eng_log(ENG_LOG_INFO, NULL,
                                "connected to the remote bridge %s (%s): window %u chunks per "
                                "stream, %llu MiB in flight",
                                b->url, peer, w, (unsigned long long)(mem >> 20));
                }
                if (m != NULL)
                        nng_msg_free(m);
        }
        return NULL;
}

/*
 * The connection's heartbeat, from the main thread: an ALIVE every timeout / BR_ALIVE_DIV, and
 * a connection that brought nothing at all (not even the peer's ALIVE) for the whole timeout
 * is dead even if TCP has not noticed (a link down, a blocked port: no RST, no FIN). It is
 * marked so; the main loop closes it, its streams fail ("bridge connection lost") and NNG
 * dials afresh.
 */
static void heartbeat(struct bserve *b)
{
        uint64_t t = b->timeout_ns / BR_ALIVE_DIV, period = t < 50000000u ? 50000000u : t;
        pthread_mutex_lock(&b->mu);
        uint64_t now = eng_now_ns();
        bool silent = false, alive = false;
        uint32_t epoch = b->epoch;
        if (b->connected && now - b->last_rx_ns >= b->timeout_ns) {
                b->connected = false;
                silent = true;
        } else if (b->connected && now >= b->next_alive_ns) {
                alive = true;
                b->next_alive_ns = now + period;
        }
        pthread_mutex_unlock(&b->mu);
        if (silent)
                eng_log(ENG_LOG_WARN, NULL,
                        "nothing from the remote bridge %s for %u s: closing the connection",
                        b->url, b->o->timeout_s);
        if (alive) {
                br_hdr_t h = {.type = BR_ALIVE, .epoch = epoch};
                nng_msg *m = br_frame(&h, NULL, 0);
                if (m != NULL && nng_sendmsg(b->sock, m, NNG_FLAG_NONBLOCK) != 0)
                        nng_msg_free(m); /* the socket is full of data: that says as much */
        }
}

/* The main thread: send the batches of links whose client stopped sending mid-file for
 * BATCH_AGE_NS, so that a chunk never waits for the next one longer than that. */
static void flush_old(struct bserve *b)
{
        pthread_mutex_lock(&b->mu);
        uint64_t now = eng_now_ns();
        for (uint32_t i = 0; i < b->ntab && b->nbatch > 0; i++) {
                struct link *l = b->tab[i];
                if (l == NULL || l->batch == NULL || l->filling || l->flushing ||
                    now - l->bt0 < BATCH_AGE_NS)
                        continue;
                nng_msg *m = take_batch(b, l);
                l->flushing = true; /* the link's hooks (and on_close) wait for us */
                pthread_mutex_unlock(&b->mu);
                int rc = nng_sendmsg(b->sock, m, 0); /* NNG_OPT_SENDTIMEO: 200 ms */
                pthread_mutex_lock(&b->mu);
                if (rc != 0) {
                        nng_msg_free(m);
                        fail_link(l, EIO, "cannot send to the remote bridge: %s", nng_strerror(rc));
                }
                l->flushing = false;
                pthread_cond_broadcast(&b->cv);
                now = eng_now_ns();
        }
        pthread_mutex_unlock(&b->mu);
}

int br_serve_run(const eng_opts_t *o, volatile int *stop)
{
        struct bserve *b = calloc(1, sizeof(*b));
        if (b == NULL)
                return 1;
        b->o = o;
        b->url = o->bridge.connect;
        b->ntab = o->bridge.streams;
        b->next_id = 1;
        b->timeout_ns = (uint64_t)o->timeout_s * 1000000000u;
        b->tab = calloc(b->ntab, sizeof(*b->tab));
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&b->cv, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_init(&b->mu, NULL);
        int status = 1;
        eng_server_t *srv = NULL;
        pthread_t rx;
        bool rx_started = false;
        int rc = b->tab ? nng_pair1_open(&b->sock) : NNG_ENOMEM;
        if (rc == 0) {
                nng_socket_set_size(b->sock, NNG_OPT_RECVMAXSZ, BR_HDR + BR_MAX_PAYLOAD);
                nng_socket_set_ms(b->sock, NNG_OPT_RECONNMINT, 100);
                nng_socket_set_ms(b->sock, NNG_OPT_RECONNMAXT, 1000);
                nng_socket_set_ms(b->sock, NNG_OPT_SENDTIMEO, 200);
                nng_socket_set_ms(b->sock, NNG_OPT_RECVTIMEO, 200);
                nng_socket_set_bool(b->sock, NNG_OPT_TCP_NODELAY, true);
                nng_socket_set_bool(b->sock, NNG_OPT_TCP_KEEPALIVE, true);
                nng_pipe_notify(b->sock, NNG_PIPE_EV_REM_POST, pipe_event, b);
                /* non-blocking: the first attempt may fail; NNG keeps dialing */
                rc = nng_dial(b->sock, b->url, NULL, NNG_FLAG_NONBLOCK);
        }
        if (rc != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot dial %s: %s", b->url, nng_strerror(rc));
                goto out;
        }
        if (pthread_create(&rx, NULL, receiver, b) != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot start the receiver thread");
                goto out;
        }
        rx_started = true;
        eng_server_cfg_t sc = {.name = o->bridge.segment,
                               .size = o->size,
                               .mode = o->seg_mode,
                               .transport = o->transport,
                               /* few workers: 16 cost 2-6x the CPU of 4 (idle workers woken
                                * per chunk, docs/BRIDGE.md); a hook blocks only while its
                                * stream's window is full, for one credit's round trip */
                               .workers = o->workers ? o->workers : BR_WORKERS,
                               .ring_depth = o->ring_depth,
                               /* below 64: no worker polls streams (a blocked one would hold
                                * them) */
                               .spin = 32,
                               .hooks = {.on_open = on_open,
                                         .on_msg = on_msg,
                                         .on_close = on_close,
                                         .on_event = log_event,
                                         .ctx = b}};
        rc = eng_server_start(&sc, &srv);
        if (rc != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot serve %s: %s%s%s", sc.name, eng_strerror(rc),
                        *eng_errmsg() ? ": " : "", eng_errmsg());
                goto out;
        }
        eng_log(ENG_LOG_INFO, NULL,
                "serving %s (%llu MiB, %u workers) for local clients, forwarding to %s", sc.name,
                (unsigned long long)(o->size >> 20), eng_server_workers(srv), b->url);
        status = 0;
        while (!*stop) {
                pthread_mutex_lock(&b->mu);
                bool batches = b->nbatch > 0;
                pthread_mutex_unlock(&b->mu);
                /* 1 ms while a batch waits for more chunks, else 100 ms */
                struct timespec t = {.tv_sec = 0, .tv_nsec = (batches ? 1 : 100) * 1000000};
                nanosleep(&t, NULL);
                if (batches)
                        flush_old(b);
                heartbeat(b);
                if (eng_server_failed(srv)) {
                        eng_log(ENG_LOG_ERROR, NULL, "the segment cannot be served any more");
                        status = 1;
                        break;
                }
                /* a connection do_data found dead (nothing received for the timeout) */
                pthread_mutex_lock(&b->mu);
                uint32_t drop = !b->connected && b->pipe_id != 0 ? b->pipe_id : 0;
                pthread_mutex_unlock(&b->mu);
                if (drop != 0) {
                        nng_pipe p = NNG_PIPE_INITIALIZER;
                        p.id = drop;
                        nng_pipe_close(p);
                }
        }
        if (*stop)
                eng_log(ENG_LOG_INFO, NULL, "signal %d: stopping", *stop);
out:
        atomic_store(&b->stopping, true);
        pthread_mutex_lock(&b->mu);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        if (srv != NULL)
                eng_server_stop(srv); /* ends every stream: on_close tells the remote side */
        nng_close(b->sock);
        if (rx_started)
                pthread_join(rx, NULL);
        if (srv != NULL)
                eng_log(ENG_LOG_INFO, NULL, "stopped; segment %s removed", o->bridge.segment);
        pthread_cond_destroy(&b->cv);
        pthread_mutex_destroy(&b->mu);
        free(b->tab);
        free(b);
        return status;
}
