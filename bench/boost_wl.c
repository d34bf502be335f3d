/*
 * boost_wl.c - reference rows over Boost.Interprocess message_queue (64-byte messages):
 * round trip (two queues, spinning with try_receive or blocking with receive) and one-way
 * throughput. Without ENG_BENCH_BOOST the cells exist and report "n/a (built without
 * Boost)".
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#ifdef ENG_BENCH_BOOST
#include "boost_mq.h"

#define BMQ_DEPTH 128 /* the engine's default ring depth */
#define BMQ_MSG   64

static void qname(const eb_cell_t *c, const eb_opts_t *o, const char *what, char *out, size_t n)
{
        snprintf(out, n, "%s-%d-%s", o->tag, c->seq, what);
}

static int recv_msg(eb_bmq_t *q, void *buf, size_t *got, bool spin, eb_xchg_t *x)
{
        if (!spin)
                return eb_bmq_receive(q, buf, BMQ_MSG, got);
        for (uint32_t n = 0;; n++) {
                int r = eb_bmq_try_receive(q, buf, BMQ_MSG, got);
                if (r != 0)
                        return r > 0 ? 0 : -1;
                eb_relax();
                if (n % 65536 == 65535 && x && eb_stop_requested(x))
                        return -1;
        }
}

static void rtt_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        char a[96], b[96];
        qname(c, o, "req", a, sizeof(a));
        qname(c, o, "resp", b, sizeof(b));
        eb_bmq_t *req = eb_bmq_open(a), *resp = eb_bmq_open(b);
        if (req == NULL || resp == NULL) {
                eb_server_ready(x, SRV_FAILED, -1, "cannot open the queues");
                return;
        }
        eb_server_ready(x, SRV_READY, 0, NULL);
        bool spin = strcmp(c->mode, "spin") == 0;
        unsigned char buf[BMQ_MSG];
        size_t got;
        uint64_t sink = 0;
        while (recv_msg(req, buf, &got, spin, x) == 0 && got > 0) {
                sink ^= eb_consume(buf, got);
                if (eb_bmq_send(resp, buf, got) != 0)
                        break;
        }
        x->sink ^= sink;
        eb_bmq_close(req);
        eb_bmq_close(resp);
}

struct bmq_trip {
        eb_xchg_t *x;
        eb_bmq_t *req, *resp;
        size_t P;
        bool spin;
        const void *src;
        unsigned char *buf;
};

static int bmq_one(uint64_t i, void *arg)
{
        struct bmq_trip *b = arg;
        size_t got = 0;
        if (eb_bmq_send(b->req, b->src, b->P) != 0 ||
            recv_msg(b->resp, b->buf, &got, b->spin, NULL) != 0 || got != b->P) {
                eb_errf(b->x->cli_err, sizeof(b->x->cli_err), "round trip %llu failed",
                        (unsigned long long)i);
                return 1;
        }
        b->x->sink ^= eb_consume(b->buf, got);
        return 0;
}

static int rtt_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        char a[96], b[96];
        qname(c, o, "req", a, sizeof(a));
        qname(c, o, "resp", b, sizeof(b));
        eb_bmq_t *req = eb_bmq_open(a), *resp = eb_bmq_open(b);
        if (req == NULL || resp == NULL) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "cannot open the queues");
                return 1;
        }
        bool spin = strcmp(c->mode, "spin") == 0;
        size_t P = c->payload;
        const void *src = eb_src(P);
        unsigned char buf[BMQ_MSG];
        struct bmq_trip bt = {
            .x = x, .req = req, .resp = resp, .P = P, .spin = spin, .src = src, .buf = buf};
        int rc = eb_rtt_loop(x, o, spin ? o->rtt_spin_n : o->rtt_block_n, bmq_one, &bt);
        eb_bmq_send(req, src, 0); /* stop */
        eb_bmq_close(req);
        eb_bmq_close(resp);
        return rc;
}

static void tput_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        char a[96];
        qname(c, o, "data", a, sizeof(a));
        eb_bmq_t *q = eb_bmq_open(a);
        if (q == NULL) {
                eb_server_ready(x, SRV_FAILED, -1, "cannot open the queue");
                return;
        }
        eb_server_ready(x, SRV_READY, 0, NULL);
        unsigned char buf[BMQ_MSG];
        size_t got;
        uint64_t msgs = 0, bytes = 0, sink = 0;
        while (eb_bmq_receive(q, buf, BMQ_MSG, &got) == 0 && got > 0) {
                sink ^= eb_consume(buf, got);
                msgs++;
                bytes += got;
        }
        x->t_last_ns = eng_now_ns();
        x->srv_msgs = msgs;
        x->srv_bytes = bytes;
        x->sink ^= sink;
        eb_bmq_close(q);
}

static int tput_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        char a[96];
        qname(c, o, "data", a, sizeof(a));
        eb_bmq_t *q = eb_bmq_open(a);
        if (q == NULL) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "cannot open the queue");
                return 1;
        }
        size_t P = c->payload;
        const void *src = eb_src(P);
        /* Warm-up for 1/5 of the time (not counted: the parent subtracts cli_iters). */
        uint64_t n = 0;
        for (int phase = 0; phase < 2; phase++) {
                uint64_t t0 = eng_now_ns();
                uint64_t end = t0 + o->tput_ms * 1000000ull / (phase ? 1 : 5);
                if (phase == 1) {
                        x->t0_ns = t0;
                        x->cli_iters = n;
                        n = 0;
                }
                for (;;) {
                        if (eb_bmq_send(q, src, P) != 0) {
                                eb_errf(x->cli_err, sizeof(x->cli_err), "send failed");
                                return 1;
                        }
                        if (++n % 64 == 0 && eng_now_ns() >= end)
                                break;
                }
        }
        eb_bmq_send(q, src, 0); /* end of data: the server's receipt of it is the last */
        x->t1_ns = eng_now_ns();
        x->cli_msgs = n;
        eb_bmq_close(q);
        return 0;
}

static void run_boost(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        bool rtt = strcmp(c->group, "rtt") == 0;
        char a[96], b[96];
        qname(c, o, rtt ? "req" : "data", a, sizeof(a));
        qname(c, o, "resp", b, sizeof(b));
        if (eb_bmq_create(a, BMQ_DEPTH, BMQ_MSG) != 0 ||
            (rtt && eb_bmq_create(b, BMQ_DEPTH, BMQ_MSG) != 0)) {
                r->status = EB_FAIL;
                eb_errf(r->reason, sizeof(r->reason), "cannot create message queues");
        } else if (rtt) {
                r->status = eb_run_children(c, o, x, rtt_server, rtt_client, o->rtt_ms + 60000, r);
                if (r->status == EB_OK)
                        eb_result_set_hist(r, &x->hist);
        } else {
                r->status =
                    eb_run_children(c, o, x, tput_server, tput_client, 2 * o->tput_ms + 60000, r);
                if (r->status == EB_OK) {
                        double s =
                            x->t_last_ns > x->t0_ns ? (double)(x->t_last_ns - x->t0_ns) / 1e9 : 0;
                        uint64_t msgs = x->srv_msgs - x->cli_iters;
                        uint64_t bytes = msgs * c->payload;
                        eb_metric_set(r, "msgs", (double)msgs);
                        eb_metric_set(r, "bytes", (double)bytes);
                        eb_metric_set(r, "secs", s);
                        eb_metric_set(r, "msgs_per_s", s > 0 ? (double)msgs / s : 0);
                        eb_metric_set(r, "gb_per_s", s > 0 ? (double)bytes / s / 1e9 : 0);
                        if (msgs != x->cli_msgs) {
                                r->status = EB_FAIL;
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server got %llu messages, client sent %llu",
                                        (unsigned long long)x->srv_msgs,
                                        (unsigned long long)x->cli_msgs);
                        }
                }
        }
        eb_bmq_remove(a);
        if (rtt)
                eb_bmq_remove(b);
        eb_xchg_free(x);
}
#else
static void run_boost(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        (void)c;
        (void)o;
        r->status = EB_NA;
        eb_errf(r->reason, sizeof(r->reason), "built without Boost (ENG_BENCH_BOOST=OFF)");
}
#endif

void eb_boost_cells(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        for (int m = 0; m < 2; m++) {
                const char *mode = m == 0 ? "spin" : "block";
                eb_cell_t *c = eb_cell_add(cs, "rtt", "boost", mode, 64, 1);
                snprintf(c->name, sizeof(c->name), "rtt/boost/%s/64B", mode);
                c->spin = m == 0;
                c->run = run_boost;
        }
        eb_cell_t *c = eb_cell_add(cs, "tput", "boost", "block", 64, 1);
        snprintf(c->name, sizeof(c->name), "tput/boost/1s/64B");
        c->run = run_boost;
}
