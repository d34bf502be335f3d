/*
 * engine_wl.c - the engine's workloads: round trip, one-way throughput, file transfer and
 * stream open/close, for each transport. The server runs in one child process (engine
 * server with the bench's own echo/sink hooks, or the file-transfer hooks of proto/), the
 * client in another.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "proto.h"

#define EB_C_DATA 0x0120       /* one-way data: consumed and counted by the sink */
#define EB_C_WARM 0x0121       /* one-way data before the measured phase: consumed, not counted */
#define EB_FINAL  (1ull << 63) /* PING arg flag: the last message of a stream's measured phase */

#define CALL_TIMEOUT_MS 5000 /* every blocking engine call of the bench */

const uint64_t eb_rtt_payloads[4] = {0, 64, 4096, 1u << 20};
const uint64_t eb_tput_payloads[6] = {0, 64, 1024, 4096, 65536, 1u << 20};
const uint32_t eb_tput_streams[4] = {1, 2, 8, 64};

static const char *tname(int t)
{
        return t == ENG_TRANSPORT_MUTEX ? "mutex" : "lockfree";
}

/* ---- server side: echo (PING -> PONG) and sink (DATA) hooks --------------------------- */

struct sink {
        uint64_t msgs, bytes, bad, sink;
};

static int hk_open(eng_sstream_t *s, void *ctx)
{
        (void)ctx;
        struct sink *k = calloc(1, sizeof(*k));
        if (k == NULL)
                return -ENOMEM;
        *eng_sstream_user(s) = k;
        return 0;
}

static void hk_close(eng_sstream_t *s, int err, void *ctx)
{
        (void)err;
        eb_xchg_t *x = ctx;
        struct sink *k = *eng_sstream_user(s);
        if (k) {
                __atomic_fetch_xor(&x->sink, k->sink, __ATOMIC_RELAXED);
                free(k);
        }
        *eng_sstream_user(s) = NULL;
}

static uint64_t stamp_of(const eng_msg_t *m)
{
        uint64_t v = 0;
        if (m->data && m->len >= 8)
                memcpy(&v, m->data, 8);
        return v;
}

static int hk_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        eb_xchg_t *x = ctx;
        struct sink *k = *eng_sstream_user(s);
        switch (m->cmd) {
        case EB_C_DATA:
                if (m->data) {
                        k->sink ^= eb_consume(m->data, m->len);
                        if (m->len >= 8 && stamp_of(m) != m->arg)
                                k->bad++;
                }
                k->msgs++;
                k->bytes += m->len;
                return 0; /* the engine frees the buffer after the hook */
        case EB_C_WARM:
                if (m->data)
                        k->sink ^= eb_consume(m->data, m->len);
                return 0;
        case ENG_C_PING:
                if (m->data)
                        k->sink ^= eb_consume(m->data, m->len);
                if (m->arg & EB_FINAL) {
                        /* Everything this stream sent before arrived before this (FIFO). */
                        uint64_t now = eng_now_ns();
                        __atomic_fetch_add(&x->srv_msgs, k->msgs, __ATOMIC_RELAXED);
                        __atomic_fetch_add(&x->srv_bytes, k->bytes, __ATOMIC_RELAXED);
                        __atomic_fetch_add(&x->srv_bad, k->bad, __ATOMIC_RELAXED);
                        k->msgs = k->bytes = k->bad = 0;
                        uint64_t cur = __atomic_load_n(&x->t_last_ns, __ATOMIC_RELAXED);
                        while (now > cur &&
                               !__atomic_compare_exchange_n(&x->t_last_ns, &cur, now, false,
                                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                                ;
                }
                {
                        int rc = eng_sstream_send(s, ENG_S_PONG, m->arg, m->off, m->len);
                        if (rc == 0)
                                m->off = 0; /* the buffer travels back */
                        return rc;
                }
        default:
                return -EPROTO;
        }
}

static void xfer_report(const eng_xfer_result_t *r, void *ctx)
{
        eb_xchg_t *x = ctx;
        if (r->err == 0) {
                __atomic_fetch_add(&x->xfer_ok, 1, __ATOMIC_RELAXED);
                __atomic_fetch_add(&x->srv_bytes, r->received, __ATOMIC_RELAXED);
        } else {
                __atomic_fetch_add(&x->xfer_failed, 1, __ATOMIC_RELAXED);
                snprintf(x->xfer_why, sizeof(x->xfer_why), "%.100s: %.200s", r->name, r->why);
        }
}

static void outdir_of(const eb_cell_t *c, const eb_opts_t *o, char *out, size_t n)
{
        eb_xfer_outdir(c, o, out, n);
}

/* spin: the budget (nobody sleeps); block: 1 (both sides sleep at once); default: 0, the
 * engine's own default (spin a little, then sleep). */
static uint32_t spin_of(const eb_cell_t *c, const eb_opts_t *o)
{
        if (c->defaults)
                return 0;
        if (c->spin)
                return o->spin_budget;
        return strcmp(c->mode, "default") == 0 ? 0 : 1;
}

static void engine_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_xfer_server_t *xs = NULL;
        eng_server_cfg_t cfg = {.name = c->seg,
                                .size = c->seg_bytes ? c->seg_bytes : o->seg_bytes,
                                .transport = (eng_transport_t)c->transport,
                                .workers = o->workers,
                                .spin = spin_of(c, o),
                                .min_block_shift = o->min_shift,
                                .max_block_shift = o->max_shift};
        if (c->defaults) {
                /* What eng_server_start picks for a user who sets nothing: a worker per CPU but
                 * one, the default spin, the default buffer classes. */
                cfg.workers = 0;
                cfg.min_block_shift = cfg.max_block_shift = 0;
        }
        char why[400];
        if (strcmp(c->group, "xfer") == 0) {
                char dir[600];
                outdir_of(c, o, dir, sizeof(dir));
                eng_xfer_server_cfg_t xc = {.outdir = dir, .report = xfer_report, .report_ctx = x};
                int rc = eng_xfer_server_new(&xc, &xs, why, sizeof(why));
                if (rc != 0) {
                        eb_server_ready(x, SRV_FAILED, rc, why);
                        return;
                }
                eng_xfer_server_hooks(xs, &cfg.hooks);
        } else {
                cfg.hooks = (eng_server_hooks_t){
                    .on_open = hk_open, .on_msg = hk_msg, .on_close = hk_close, .ctx = x};
        }
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        if (rc != 0) {
                eb_errf(why, sizeof(why), "eng_server_start: %s%s%s", eng_strerror(rc),
                        *eng_errmsg() ? ": " : "", eng_errmsg());
                eb_server_ready(x, rc == -ENOTSUP ? SRV_UNAVAILABLE : SRV_FAILED, rc, why);
                eng_xfer_server_free(xs);
                return;
        }
        eb_server_ready(x, SRV_READY, 0, NULL);
        eb_server_wait_stop(x);
        eng_server_stop(srv);
        eng_xfer_server_free(xs);
}

/* ---- client side -------------------------------------------------------------------- */

static int fail(eb_xchg_t *x, const char *what, int rc)
{
        eb_errf(x->cli_err, sizeof(x->cli_err), "%s: %s%s%s", what, eng_strerror(rc),
                *eng_errmsg() ? ": " : "", eng_errmsg());
        return rc ? rc : -1;
}

static int attach(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o, eng_client_t **cl)
{
        eng_client_cfg_t cc = {.spin = spin_of(c, o), .timeout_ms = CALL_TIMEOUT_MS};
        int rc = eng_client_attach(c->seg, &cc, cl);
        return rc ? fail(x, "eng_client_attach", rc) : 0;
}

static int one_rtt(eb_xchg_t *x, eng_stream_t *st, uint64_t i, uint32_t P, const void *src)
{
        uint64_t off = 0;
        void *p = NULL;
        int rc;
        if (P > 0) {
                rc = eng_stream_loan(st, P, &p, &off, CALL_TIMEOUT_MS);
                if (rc != 0)
                        return fail(x, "loan", rc);
                eb_fill(p, src, P, i);
        }
        rc = eng_stream_try_send(st, ENG_C_PING, i, off, P);
        if (rc == -EAGAIN)
                rc = eng_stream_send(st, ENG_C_PING, i, off, P, CALL_TIMEOUT_MS);
        if (rc != 0) {
                eng_stream_unloan(st, off);
                return fail(x, "send", rc);
        }
        eng_msg_t m;
        rc = eng_stream_recv(st, &m, CALL_TIMEOUT_MS);
        if (rc != 0)
                return fail(x, "recv", rc);
        bool ok = m.cmd == ENG_S_PONG && m.arg == i && m.len == P;
        if (m.data)
                x->sink ^= eb_consume(m.data, m.len);
        eng_stream_release(st, &m);
        if (!ok) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "unexpected reply 0x%x arg %llu len %u",
                        m.cmd, (unsigned long long)m.arg, m.len);
                return -EPROTO;
        }
        return 0;
}

static int rtt_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_client_t *cl;
        eng_stream_t *st;
        int rc = attach(x, c, o, &cl);
        if (rc)
                return rc;
        if ((rc = eng_stream_open(cl, 1, &st)) != 0)
                return fail(x, "eng_stream_open", rc);
        uint32_t P = (uint32_t)c->payload;
        const void *src = eb_src(P);
        uint64_t n = c->spin ? o->rtt_spin_n : o->rtt_block_n;
        uint64_t warm = n / 10 < 1000 ? n / 10 : 1000;
        uint64_t i = 0;
        for (; i < warm && rc == 0; i++)
                rc = one_rtt(x, st, i, P, src);
        uint64_t t = eng_now_ns(), end = t + o->rtt_ms * 1000000ull;
        x->t0_ns = t;
        uint64_t k = 0;
        for (; k < n && rc == 0 && t < end; k++, i++) {
                rc = one_rtt(x, st, i, P, src);
                uint64_t t1 = eng_now_ns();
                eb_hist_add(&x->hist, t1 - t);
                t = t1;
        }
        x->t1_ns = t;
        x->cli_iters = k;
        int crc = eng_stream_close(st);
        eng_client_detach(cl);
        if (rc == 0 && crc != 0)
                return fail(x, "eng_stream_close", crc);
        return rc;
}

struct tx {
        eng_stream_t *st;
        uint64_t pend_off; /* a filled buffer the ring had no room for */
        uint64_t seq;      /* next stamp (== messages sent on this stream) */
};

/* Send on every stream as much as fits; returns messages sent, < 0 on error. */
static int64_t tx_pass(eb_xchg_t *x, struct tx *t, uint32_t ns, uint32_t P, uint16_t cmd,
                       const void *src, bool *arena_full)
{
        int64_t moved = 0;
        for (uint32_t k = 0; k < ns; k++) {
                struct tx *s = &t[k];
                for (int b = 0; b < 64; b++) {
                        if (P > 0 && s->pend_off == 0) {
                                void *p;
                                int rc = eng_stream_try_loan(s->st, P, &p, &s->pend_off);
                                if (rc == -EAGAIN) {
                                        *arena_full = true;
                                        break;
                                }
                                if (rc != 0)
                                        return fail(x, "loan", rc);
                                eb_fill(p, src, P, s->seq);
                        }
                        /* A burst per stream, told to the server once (the flush below). */
                        int rc = eng_stream_try_send_more(s->st, cmd, s->seq, s->pend_off, P);
                        if (rc == -EAGAIN)
                                break;
                        if (rc != 0)
                                return fail(x, "try_send", rc);
                        s->pend_off = 0;
                        s->seq++;
                        moved++;
                }
                eng_stream_flush(s->st);
        }
        return moved;
}

/* Push for dur_ns (cmd DATA or WARM); waits only when nothing could move. */
static int tx_run(eb_xchg_t *x, eng_client_t *cl, struct tx *t, uint32_t ns, uint32_t P,
                  uint16_t cmd, uint64_t dur_ns, uint64_t *sent)
{
        const void *src = eb_src(P);
        uint64_t end = eng_now_ns() + dur_ns, total = 0;
        for (;;) {
                bool full = false;
                int64_t m = tx_pass(x, t, ns, P, cmd, src, &full);
                if (m < 0)
                        return (int)m;
                if (m == 0) {
                        /* Ticket, look again, then wait: a wake-up between our look and the
                         * wait is not lost (the ticket moved). */
                        uint32_t tk = eng_client_ticket(cl);
                        m = tx_pass(x, t, ns, P, cmd, src, &full);
                        if (m < 0)
                                return (int)m;
                        if (m == 0) {
                                int rc = eng_client_wait(cl, tk, CALL_TIMEOUT_MS);
                                if (rc != 0 && rc != -ETIMEDOUT)
                                        return fail(x, "eng_client_wait", rc);
                                if (rc == -ETIMEDOUT)
                                        return fail(
                                            x, full ? "arena full for 5 s" : "ring full for 5 s",
                                            rc);
                        }
                }
                total += (uint64_t)m;
                if (eng_now_ns() >= end) /* once per pass: at most 64 messages per stream */
                        break;
        }
        /* Free every buffer: a filled loan that did not fit goes back. */
        for (uint32_t k = 0; k < ns; k++)
                if (t[k].pend_off) {
                        eng_stream_unloan(t[k].st, t[k].pend_off);
                        t[k].pend_off = 0;
                }
        *sent = total;
        return 0;
}

/* A PING (flag) on every stream, then every PONG. */
static int ping_all(eb_xchg_t *x, struct tx *t, uint32_t ns, uint64_t flag)
{
        for (uint32_t k = 0; k < ns; k++) {
                int rc = eng_stream_send(t[k].st, ENG_C_PING, flag | k, 0, 0, CALL_TIMEOUT_MS);
                if (rc != 0)
                        return fail(x, "send PING", rc);
        }
        for (uint32_t k = 0; k < ns; k++) {
                eng_msg_t m;
                int rc = eng_stream_recv(t[k].st, &m, CALL_TIMEOUT_MS);
                if (rc != 0)
                        return fail(x, "recv PONG", rc);
                bool ok = m.cmd == ENG_S_PONG && m.arg == (flag | k);
                eng_stream_release(t[k].st, &m);
                if (!ok) {
                        eb_errf(x->cli_err, sizeof(x->cli_err), "unexpected reply on stream %u", k);
                        return -EPROTO;
                }
        }
        return 0;
}

/* The throughput phase of tput/ and scale/ cells on ns open streams: a warm-up (not counted),
 * then the measured phase, then a final PING per stream (its arrival is the server's last
 * receipt). */
static int tput_phase(eb_xchg_t *x, eng_client_t *cl, struct tx *t, uint32_t ns, uint32_t P,
                      const eb_opts_t *o)
{
        uint64_t sent = 0;
        int rc;
        /* Warm-up (not counted): streams accepted, buffers carved, caches hot. */
        if ((rc = ping_all(x, t, ns, 0)) != 0)
                return rc;
        uint64_t warm_ns = o->tput_ms * 1000000ull / 5;
        if ((rc = tx_run(x, cl, t, ns, P, EB_C_WARM, warm_ns, &sent)) != 0)
                return rc;
        if ((rc = ping_all(x, t, ns, 0)) != 0)
                return rc;
        for (uint32_t k = 0; k < ns; k++)
                t[k].seq = 0;
        x->t0_ns = eng_now_ns();
        rc = tx_run(x, cl, t, ns, P, EB_C_DATA, o->tput_ms * 1000000ull, &sent);
        if (rc == 0)
                rc = ping_all(x, t, ns, EB_FINAL);
        x->t1_ns = eng_now_ns();
        x->cli_msgs = sent;
        x->cli_bytes = sent * P;
        return rc;
}

/* tput/ and scale/: open the streams (timed: scale/ reports the open rate), the throughput
 * phase, close them all (timed). */
static int streams_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_client_t *cl;
        int rc = attach(x, c, o, &cl);
        if (rc)
                return rc;
        uint32_t ns = c->streams, P = (uint32_t)c->payload;
        if (eng_client_max_records(cl) < ns + 1) {
                eb_errf(x->cli_err, sizeof(x->cli_err),
                        "the segment holds %u records: %u streams and the client's session do "
                        "not fit (a larger --seg-size)",
                        eng_client_max_records(cl), ns);
                eng_client_detach(cl);
                return -ENOSPC;
        }
        struct tx *t = calloc(ns, sizeof(*t));
        if (t == NULL) {
                eng_client_detach(cl);
                return fail(x, "calloc", -ENOMEM);
        }
        uint32_t opened = 0, tenth = ns - (ns / 10 > 1 ? ns / 10 : 1);
        uint64_t t_open = eng_now_ns(), t_tenth = t_open;
        for (; opened < ns; opened++) {
                if (opened == tenth)
                        t_tenth = eng_now_ns();
                if ((rc = eng_stream_open(cl, opened + 1, &t[opened].st)) != 0) {
                        fail(x, "eng_stream_open", rc);
                        eb_errf(x->cli_err + strlen(x->cli_err),
                                sizeof(x->cli_err) - strlen(x->cli_err), " (stream %u of %u)",
                                opened + 1, ns);
                        goto out;
                }
        }
        uint64_t t_opened = eng_now_ns();
        x->open_s = (double)(t_opened - t_open) / 1e9;
        x->open_last_s = (double)(t_opened - t_tenth) / 1e9;
        rc = tput_phase(x, cl, t, ns, P, o);
out:;
        uint64_t t_close = eng_now_ns();
        for (uint32_t k = 0; k < opened; k++) {
                int crc = eng_stream_close(t[k].st);
                if (rc == 0 && crc != 0)
                        rc = fail(x, "eng_stream_close", crc);
        }
        x->close_s = (double)(eng_now_ns() - t_close) / 1e9;
        free(t);
        eng_client_detach(cl);
        return rc;
}

static int xfer_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_client_t *cl;
        int rc = attach(x, c, o, &cl);
        if (rc)
                return rc;
        uint32_t ns = c->streams;
        eng_stream_t **st = calloc(ns, sizeof(*st));
        eng_xfer_send_t **xs = calloc(ns, sizeof(*xs));
        bool *done = calloc(ns, sizeof(*done));
        if (st == NULL || xs == NULL || done == NULL)
                return fail(x, "calloc", -ENOMEM);
        char why[400];
        uint32_t opened = 0;
        for (; opened < ns; opened++) {
                char path[700];
                eb_files_path(o, (int)ns, (int)opened, path, sizeof(path));
                if ((rc = eng_stream_open(cl, opened + 1, &st[opened])) != 0) {
                        fail(x, "eng_stream_open", rc);
                        goto out;
                }
                rc = eng_xfer_send_new(st[opened], path, NULL, o->xfer_chunk, &xs[opened], why,
                                       sizeof(why));
                if (rc != 0) {
                        eng_stream_close(st[opened]);
                        eb_errf(x->cli_err, sizeof(x->cli_err), "%s", why);
                        goto out;
                }
        }
        x->t0_ns = eng_now_ns();
        double cpu_srv0 = eb_proc_cpu_s(x->srv_pid), cpu_cli0 = eb_proc_cpu_s(0);
        uint32_t left = ns;
        uint64_t last_move = x->t0_ns, total = 0;
        while (left > 0) {
                uint32_t tk = eng_client_ticket(cl);
                bool moved = false;
                for (uint32_t k = 0; k < ns; k++) {
                        if (done[k])
                                continue;
                        int r = eng_xfer_send_step(xs[k]);
                        if (r > 0)
                                moved = true;
                        eng_xfer_state_t s = eng_xfer_send_state(xs[k]);
                        if (s == ENG_XFER_DONE) {
                                done[k] = true;
                                left--;
                                total += eng_xfer_send_size(xs[k]);
                        } else if (s == ENG_XFER_FAILED || r < 0) {
                                eb_errf(x->cli_err, sizeof(x->cli_err), "stream %u: %s", k,
                                        eng_xfer_send_why(xs[k]));
                                rc = -EIO;
                                goto out;
                        }
                }
                uint64_t now = eng_now_ns();
                if (moved) {
                        last_move = now;
                        continue;
                }
                if (now - last_move > (uint64_t)CALL_TIMEOUT_MS * 2000000ull) {
                        eb_errf(x->cli_err, sizeof(x->cli_err), "no progress for %d s",
                                2 * CALL_TIMEOUT_MS / 1000);
                        rc = -ETIMEDOUT;
                        goto out;
                }
                int w = eng_client_wait(cl, tk, 100);
                if (w == -EPIPE) {
                        rc = fail(x, "eng_client_wait", w);
                        goto out;
                }
        }
        x->t1_ns = eng_now_ns();
        x->cpu_s[0] = eb_proc_cpu_s(x->srv_pid) - cpu_srv0;
        x->cpu_s[1] = eb_proc_cpu_s(0) - cpu_cli0;
        x->cli_bytes = total;
out:
        for (uint32_t k = 0; k < opened; k++) {
                eng_xfer_send_free(xs[k]);
                eng_stream_close(st[k]);
        }
        free(st);
        free(xs);
        free(done);
        eng_client_detach(cl);
        return rc;
}

static int openclose_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_client_t *cl;
        int rc = attach(x, c, o, &cl);
        if (rc)
                return rc;
        for (int i = 0; i < 20 && rc == 0; i++) {
                eng_stream_t *st;
                if ((rc = eng_stream_open(cl, 1, &st)) != 0)
                        return fail(x, "eng_stream_open", rc);
                if ((rc = eng_stream_close(st)) != 0)
                        return fail(x, "eng_stream_close", rc);
        }
        uint64_t t = eng_now_ns(), end = t + o->misc_ms * 1000000ull;
        x->t0_ns = t;
        uint64_t k = 0;
        for (; t < end && k < 10000000; k++) {
                eng_stream_t *st;
                if ((rc = eng_stream_open(cl, (uint32_t)k + 1, &st)) != 0)
                        return fail(x, "eng_stream_open", rc);
                if ((rc = eng_stream_close(st)) != 0)
                        return fail(x, "eng_stream_close", rc);
                uint64_t t1 = eng_now_ns();
                eb_hist_add(&x->hist, t1 - t);
                t = t1;
        }
        x->t1_ns = t;
        x->cli_iters = k;
        eng_client_detach(cl);
        return 0;
}

/* ---- sparse and back-to-back round trips at the engine's defaults --------------------- */

struct trip {
        eb_xchg_t *x;
        eng_stream_t *st;
        uint32_t P;
        const void *src;
};

static int trip_one(uint64_t i, void *arg)
{
        struct trip *t = arg;
        return one_rtt(t->x, t->st, i, t->P, t->src);
}

/* sparse/lockfree/<gap>/<place> (a round trip every gap) and rtt/lockfree/b2b/<place> (back
 * to back): one stream, 64 B, the client's default waiting. */
static int sparse_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        eng_client_t *cl;
        eng_stream_t *st;
        int rc = attach(x, c, o, &cl);
        if (rc)
                return rc;
        if ((rc = eng_stream_open(cl, 1, &st)) != 0) {
                eng_client_detach(cl);
                return fail(x, "eng_stream_open", rc);
        }
        struct trip tr = {.x = x, .st = st, .P = (uint32_t)c->payload, .src = eb_src(c->payload)};
        if (c->gap_ns)
                rc = eb_sparse_loop(x, o, c->gap_ns, trip_one, &tr);
        else
                rc = eb_rtt_loop(x, o, o->rtt_block_n, trip_one, &tr);
        int crc = eng_stream_close(st);
        eng_client_detach(cl);
        if (rc == 0 && crc != 0)
                return fail(x, "eng_stream_close", crc);
        return rc;
}

/* ---- an idle server: its wake-ups ----------------------------------------------------- */

#define IDLE_SETTLE_MS 500
#define IDLE_MAX_THR   64

struct thr_sw {
        int tid;
        uint64_t sw; /* voluntary + nonvoluntary context switches */
};

static int tid_cmp(const void *a, const void *b)
{
        const struct thr_sw *x = a, *y = b;
        return x->tid < y->tid ? -1 : x->tid > y->tid;
}

/* Every thread of pid: its context switches (the first IDLE_MAX_THR, sorted by tid) and their
 * sum over all of them. Returns the number of threads, or -errno. */
static int read_switches(pid_t pid, struct thr_sw *v, uint64_t *total)
{
        char path[96];
        snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
        DIR *d = opendir(path);
        if (d == NULL)
                return -errno;
        int n = 0, all = 0;
        *total = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
                if (e->d_name[0] < '0' || e->d_name[0] > '9')
                        continue;
                int tid = atoi(e->d_name);
                snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, tid);
                FILE *f = fopen(path, "r");
                if (f == NULL)
                        continue; /* exited meanwhile */
                char line[256];
                uint64_t sw = 0;
                while (fgets(line, sizeof(line), f)) {
                        unsigned long long k;
                        if (sscanf(line, "voluntary_ctxt_switches: %llu", &k) == 1 ||
                            sscanf(line, "nonvoluntary_ctxt_switches: %llu", &k) == 1)
                                sw += k;
                }
                fclose(f);
                *total += sw;
                all++;
                if (n < IDLE_MAX_THR)
                        v[n++] = (struct thr_sw){.tid = tid, .sw = sw};
        }
        closedir(d);
        qsort(v, (size_t)n, sizeof(*v), tid_cmp);
        return all;
}

static void sleep_ns(uint64_t ns)
{
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                              .tv_nsec = (long)(ns % 1000000000ull)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

/* idle/lockfree/noclient and idle/lockfree/idleclient: this child watches the server (a
 * default-settings server started by the parent) over a window in which nothing happens; for
 * idleclient it first attaches and opens c->streams streams (each answered once), and keeps
 * them open and silent. */
static int idle_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        pid_t pid = x->srv_pid;
        eng_client_t *cl = NULL;
        struct tx *t = NULL;
        uint32_t ns = c->streams, opened = 0;
        int rc = 0;
        if (ns > 0) {
                if ((rc = attach(x, c, o, &cl)) != 0)
                        return rc;
                t = calloc(ns, sizeof(*t));
                if (t == NULL) {
                        rc = fail(x, "calloc", -ENOMEM);
                        goto out;
                }
                for (; opened < ns; opened++)
                        if ((rc = eng_stream_open(cl, opened + 1, &t[opened].st)) != 0) {
                                fail(x, "eng_stream_open", rc);
                                goto out;
                        }
                if ((rc = ping_all(x, t, ns, 0)) != 0)
                        goto out;
        }
        sleep_ns(IDLE_SETTLE_MS * 1000000ull);
        static struct thr_sw a[IDLE_MAX_THR], b[IDLE_MAX_THR];
        uint64_t s0, s1;
        int na = read_switches(pid, a, &s0);
        double c0 = eb_proc_cpu_s(pid);
        uint64_t t0 = eng_now_ns();
        sleep_ns(o->idle_ms * 1000000ull);
        int nb = read_switches(pid, b, &s1);
        double c1 = eb_proc_cpu_s(pid);
        uint64_t t1 = eng_now_ns();
        if (na < 0 || nb < 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "/proc/%d/task: %s", (int)pid,
                        strerror(-(na < 0 ? na : nb)));
                rc = -EIO;
                goto out;
        }
        x->t0_ns = t0;
        x->t1_ns = t1;
        x->window_s = (double)(t1 - t0) / 1e9;
        x->wakeups = s1 > s0 ? s1 - s0 : 0;
        x->threads = (uint32_t)nb;
        x->cpu_s[0] = c1 - c0;
        /* by thread, in creation order: "main 0, t1 0, t2 3 ..." (+: started in the window) */
        size_t l = 0;
        int nb_kept = nb < IDLE_MAX_THR ? nb : IDLE_MAX_THR;
        for (int i = 0; i < nb_kept && l + 1 < sizeof(x->note); i++) {
                uint64_t before = 0;
                bool seen = false;
                for (int j = 0; j < (na < IDLE_MAX_THR ? na : IDLE_MAX_THR); j++)
                        if (a[j].tid == b[i].tid) {
                                before = a[j].sw;
                                seen = true;
                        }
                char name[16];
                if (b[i].tid == pid)
                        snprintf(name, sizeof(name), "main");
                else
                        snprintf(name, sizeof(name), "t%d", i);
                int w = snprintf(x->note + l, sizeof(x->note) - l, "%s%s%s %llu", l ? ", " : "",
                                 name, seen ? "" : "+",
                                 (unsigned long long)(b[i].sw > before ? b[i].sw - before : 0));
                if (w < 0)
                        break;
                l += (size_t)w;
        }
out:
        for (uint32_t k = 0; k < opened; k++) {
                int crc = eng_stream_close(t[k].st);
                if (rc == 0 && crc != 0)
                        rc = fail(x, "eng_stream_close", crc);
        }
        free(t);
        if (cl)
                eng_client_detach(cl);
        return rc;
}

/* ---- cells -------------------------------------------------------------------------- */

static void run_engine_cell(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        if (c->disk && o->disk_why[0]) {
                r->status = EB_NA;
                snprintf(r->reason, sizeof(r->reason), "%s", o->disk_why);
                return;
        }
        snprintf(c->seg, sizeof(c->seg), "/%s-%d", o->tag, c->seq);
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        eb_client_fn cf = NULL;
        uint64_t timeout_ms = 60000;
        bool xfer = strcmp(c->group, "xfer") == 0;
        char dir[600];
        if (strcmp(c->group, "rtt") == 0) {
                cf = c->defaults ? sparse_client : rtt_client;
                timeout_ms = o->rtt_ms + 60000;
        } else if (strcmp(c->group, "sparse") == 0) {
                cf = sparse_client;
                timeout_ms = 2 * o->sparse_budget_ms + 60000;
        } else if (strcmp(c->group, "tput") == 0) {
                cf = streams_client;
                timeout_ms = 2 * o->tput_ms + 60000;
        } else if (strcmp(c->group, "scale") == 0) {
                /* opening, pinging and closing 10 000 streams, each call bounded by 5 s */
                cf = streams_client;
                timeout_ms = 2 * o->tput_ms + 180000;
        } else if (strcmp(c->group, "idle") == 0) {
                cf = idle_client;
                timeout_ms = IDLE_SETTLE_MS + o->idle_ms + 60000;
        } else if (xfer) {
                cf = xfer_client;
                timeout_ms = 300000;
                outdir_of(c, o, dir, sizeof(dir));
                eb_rmdir_files(dir);
                eb_files_warm(o, (int)c->streams);
                eb_memory_warm(o->file_bytes + (o->file_bytes >> 2));
        } else {
                cf = openclose_client;
                timeout_ms = o->misc_ms + 60000;
        }
        r->status = eb_run_children(c, o, x, engine_server, cf, timeout_ms, r);
        shm_unlink(c->seg); /* in case a child was killed before it could */
        double secs = x->t1_ns > x->t0_ns ? (double)(x->t1_ns - x->t0_ns) / 1e9 : 0;
        if (r->status == EB_OK) {
                if (strcmp(c->group, "rtt") == 0 || strcmp(c->group, "openclose") == 0) {
                        eb_result_set_hist(r, &x->hist);
                        eb_metric_set(r, "ops_per_s", secs > 0 ? (double)x->cli_iters / secs : 0);
                } else if (strcmp(c->group, "sparse") == 0) {
                        eb_result_set_hist(r, &x->hist);
                        eb_metric_set(r, "gap_ns", (double)c->gap_ns);
                        eb_metric_set(r, "late", (double)x->late);
                } else if (strcmp(c->group, "tput") == 0 || strcmp(c->group, "scale") == 0) {
                        double s =
                            x->t_last_ns > x->t0_ns ? (double)(x->t_last_ns - x->t0_ns) / 1e9 : 0;
                        eb_metric_set(r, "msgs", (double)x->srv_msgs);
                        eb_metric_set(r, "bytes", (double)x->srv_bytes);
                        eb_metric_set(r, "secs", s);
                        eb_metric_set(r, "client_secs", secs);
                        eb_metric_set(r, "msgs_per_s", s > 0 ? (double)x->srv_msgs / s : 0);
                        eb_metric_set(r, "gb_per_s", s > 0 ? (double)x->srv_bytes / s / 1e9 : 0);
                        if (strcmp(c->group, "scale") == 0) {
                                uint32_t last = c->streams / 10 > 1 ? c->streams / 10 : 1;
                                eb_metric_set(r, "open_secs", x->open_s);
                                eb_metric_set(r, "open_per_s",
                                              x->open_s > 0 ? c->streams / x->open_s : NAN);
                                eb_metric_set(r, "open_last_per_s",
                                              x->open_last_s > 0 ? last / x->open_last_s : NAN);
                                eb_metric_set(r, "close_secs", x->close_s);
                                eb_metric_set(r, "close_per_s",
                                              x->close_s > 0 ? c->streams / x->close_s : NAN);
                                eb_metric_set(r, "segment_bytes", (double)c->seg_bytes);
                        }
                        if (x->srv_msgs != x->cli_msgs || x->srv_bad != 0) {
                                r->status = EB_FAIL;
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server counted %llu messages (%llu bad stamps), client "
                                        "sent %llu",
                                        (unsigned long long)x->srv_msgs,
                                        (unsigned long long)x->srv_bad,
                                        (unsigned long long)x->cli_msgs);
                        }
                } else if (strcmp(c->group, "idle") == 0) {
                        eb_metric_set(r, "window_s", x->window_s);
                        eb_metric_set(r, "wakeups", (double)x->wakeups);
                        eb_metric_set(r, "wakeups_per_s",
                                      x->window_s > 0 ? (double)x->wakeups / x->window_s : NAN);
                        eb_metric_set(r, "cpu_s", x->cpu_s[0]);
                        eb_metric_set(r, "threads", (double)x->threads);
                        snprintf(r->note, sizeof(r->note), "%s", x->note);
                } else if (xfer) {
                        double cpu = x->cpu_s[0] + x->cpu_s[1];
                        eb_metric_set(r, "bytes", (double)x->cli_bytes);
                        eb_metric_set(r, "secs", secs);
                        eb_metric_set(r, "gb_per_s",
                                      secs > 0 ? (double)x->cli_bytes / secs / 1e9 : 0);
                        eb_metric_set(r, "cpu_s", cpu);
                        eb_metric_set(r, "cpu_server_s", x->cpu_s[0]);
                        eb_metric_set(r, "cpu_client_s", x->cpu_s[1]);
                        eb_metric_set(r, "cpu_s_per_gb",
                                      x->cli_bytes ? cpu / ((double)x->cli_bytes / 1e9) : NAN);
                        if (x->xfer_ok != c->streams || x->srv_bytes != x->cli_bytes) {
                                r->status = EB_FAIL;
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server verified %u of %u files: %s", x->xfer_ok,
                                        c->streams, x->xfer_why);
                        }
                }
        } else if (xfer && x->xfer_why[0] && r->status == EB_FAIL) {
                size_t l = strlen(r->reason);
                snprintf(r->reason + l, sizeof(r->reason) - l, " [server: %s]", x->xfer_why);
        }
        if (xfer && c->disk)
                eb_disk_settle(o, dir);
        else if (xfer)
                eb_rmdir_files(dir);
        eb_xchg_free(x);
}

/* A lock-free cell at the engine's defaults (sparse, b2b, scale, idle). */
static eb_cell_t *defaults_cell(eb_cells_t *cs, const char *group, uint64_t payload,
                                uint32_t streams)
{
        eb_cell_t *c = eb_cell_add(cs, group, "lockfree", "default", payload, streams);
        c->transport = ENG_TRANSPORT_LOCKFREE;
        c->defaults = true;
        c->run = run_engine_cell;
        return c;
}

void eb_engine_cells(eb_cells_t *cs, const eb_opts_t *o)
{
        static const int tr[2] = {ENG_TRANSPORT_LOCKFREE, ENG_TRANSPORT_MUTEX};
        char sz[16];
        /* back-to-back and sparse round trips, pinned or not (the pipe's are in refs.c) */
        for (int p = 1; p < 3; p++) {
                eb_cell_t *c = defaults_cell(cs, "rtt", 64, 1);
                eb_cell_place(c, p);
                c->sub = p;
                snprintf(c->name, sizeof(c->name), "rtt/lockfree/b2b/%s", c->place);
        }
        for (int g = 0; g < 3; g++)
                for (int p = 0; p < 3; p++) {
                        eb_cell_t *c = defaults_cell(cs, "sparse", 64, 1);
                        eb_cell_place(c, p);
                        c->gap_ns = eb_sparse_gaps[g];
                        c->sub = 3 * g + p;
                        eb_gap_name(c->gap_ns, sz, sizeof(sz));
                        snprintf(c->name, sizeof(c->name), "sparse/lockfree/%s/%s", sz, c->place);
                }
        /* many streams on one client: room for the records (about 8.7 KiB each at ring depth
         * 128) and for buffers in flight */
        for (int i = 0; i < o->nscale; i++) {
                uint32_t n = o->scale_streams[i];
                eb_cell_t *c = defaults_cell(cs, "scale", 64, n);
                uint64_t seg = (uint64_t)n * (16u << 10);
                if (seg < (64ull << 20))
                        seg = 64ull << 20;
                c->seg_bytes = seg > o->seg_bytes ? seg : o->seg_bytes;
                snprintf(c->name, sizeof(c->name), "scale/lockfree/%us", n);
        }
        for (int k = 0; k < 2; k++) {
                /* a server alone, and one with a client holding 4 silent streams */
                eb_cell_t *c = defaults_cell(cs, "idle", 0, k ? 4 : 0);
                snprintf(c->name, sizeof(c->name), "idle/lockfree/%s",
                         k ? "idleclient" : "noclient");
                c->sub = k;
        }

        for (int m = 0; m < 2; m++)
                for (int p = 0; p < 4; p++)
                        for (int t = 0; t < 2; t++) {
                                const char *mode = m == 0 ? "spin" : "block";
                                eb_cell_t *c = eb_cell_add(cs, "rtt", tname(tr[t]), mode,
                                                           eb_rtt_payloads[p], 1);
                                eb_size_name(c->payload, sz, sizeof(sz));
                                snprintf(c->name, sizeof(c->name), "rtt/%s/%s/%s", c->impl, mode,
                                         sz);
                                c->transport = tr[t];
                                c->spin = m == 0;
                                c->run = run_engine_cell;
                        }
        for (int s = 0; s < 4; s++)
                for (int p = 0; p < 6; p++)
                        for (int t = 0; t < 2; t++) {
                                eb_cell_t *c = eb_cell_add(cs, "tput", tname(tr[t]), "spin",
                                                           eb_tput_payloads[p], eb_tput_streams[s]);
                                eb_size_name(c->payload, sz, sizeof(sz));
                                snprintf(c->name, sizeof(c->name), "tput/%s/%us/%s", c->impl,
                                         c->streams, sz);
                                c->transport = tr[t];
                                c->spin = true;
                                c->run = run_engine_cell;
                        }
        for (int s = 0; s < 2; s++)
                for (int t = 0; t < 2; t++) {
                        /* Files at the engine's defaults (a worker per CPU but one, adaptive spin):
                         * what a user of engine-server gets, and CPU per GB is only meaningful
                         * if nobody spins for the sake of the benchmark. */
                        eb_cell_t *c =
                            eb_cell_add(cs, "xfer", tname(tr[t]), "default", 0, s ? 8 : 1);
                        snprintf(c->name, sizeof(c->name), "xfer/%s/%us", c->impl, c->streams);
                        c->transport = tr[t];
                        c->defaults = true;
                        c->run = run_engine_cell;
                }
        {
                /* The same one-file transfer, tmpfs -> a directory on a disk, in alternating
                 * rounds with cp + fsync (refs.c): the server fsyncs before it renames. */
                eb_cell_t *c = defaults_cell(cs, "xfer", 0, 1);
                snprintf(c->name, sizeof(c->name), "xfer/disk/lockfree/1s");
                c->disk = true;
                c->alt = 1;
                c->sub = 1;
        }
        for (int t = 0; t < 2; t++) {
                /* Opening needs the server's control thread (it offers the next record): with
                 * a spinning worker and a spinning client on two cores it would wait for a
                 * time slice, so this runs with the engine's default spin-then-sleep. */
                eb_cell_t *c = eb_cell_add(cs, "openclose", tname(tr[t]), "default", 0, 1);
                snprintf(c->name, sizeof(c->name), "openclose/%s", c->impl);
                c->transport = tr[t];
                c->spin = false;
                c->run = run_engine_cell;
        }
}
