/*
 * test_engine_stress.c - cross-process stress of engine/ (registered SERIAL: needs both cores).
 *
 * echo_transform_many_processes: 8 client processes x 16 streams x 100,000 round trips, one
 *   thread per process driving all its streams (ticket / try_send / try_recv / wait), a window
 *   of outstanding messages per stream, sequence checks in both directions, payloads of 0 B to
 *   ~5 KiB (some without a buffer) checked word by word on both sides, replies transformed by
 *   the server (some in the request's block, some in a block the server loans). At the end the
 *   server's counters match and the arena is back to empty.
 * ten_thousand_opens_have_distinct_guids: 4 processes x 2,500 open+close; every stream's GUID
 *   (read from its record) is distinct and every record is given back.
 * polled_streams_let_go_while_clients_push_lose_nothing: workers with the smallest spin budget
 *   at which they poll let go of their streams every few microseconds while 4 clients x 4
 *   streams ping with random pauses around that budget; a lost push would time out a recv.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "engine_util.h"

TestSuite(stress, .timeout = 580);

#ifdef __SANITIZE_ADDRESS__
#define ST_MSGS 5000u
#define OP_EACH 500u
#else
#define ST_MSGS 100000u
#define OP_EACH 2500u
#endif
#define ST_PROCS   8u
#define ST_STREAMS 16u
#define ST_WINDOW  8u
#define OP_PROCS   4u
#define CMD_REQ    0x0140u

/* ---- helpers ------------------------------------------------------------------------ */

/* The binary runs its tests two at a time (--jobs 2), but each stress test wants both cores
 * to itself: they take turns on this lock (released when the test's process exits). */
static void run_alone(void)
{
        int fd = open("/tmp/engt-stress.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
                ;
}

/* Wait for n children; returns the number that did not exit 0 (and reports them). */
static int reap_children(const pid_t *pids, unsigned n, int timeout_s)
{
        int bad = 0;
        uint64_t end = eng_now_ns() + (uint64_t)timeout_s * 1000000000ull;
        for (unsigned i = 0; i < n; i++) {
                int st;
                pid_t r;
                for (;;) {
                        r = waitpid(pids[i], &st, WNOHANG);
                        if (r != 0 || eng_now_ns() > end)
                                break;
                        sleep_ms(5);
                }
                if (r == 0) {
                        fprintf(stderr, "child %u (pid %d) hung: killing it\n", i, (int)pids[i]);
                        kill(pids[i], SIGKILL);
                        waitpid(pids[i], &st, 0);
                        bad++;
                } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                        fprintf(stderr, "child %u (pid %d): %s %d\n", i, (int)pids[i],
                                WIFEXITED(st) ? "exit" : "signal",
                                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
                        bad++;
                }
        }
        return bad;
}

static bool arena_settles(const char *name, uint64_t recs, int ms, eng_arena_stats_t *st, char *why,
                          size_t whylen)
{
        struct eng_seg sg;
        cr_assert_eq(seg_attach(&sg, name), 0);
        uint64_t end = eng_now_ns() + (uint64_t)ms * 1000000ull;
        bool ok;
        for (;;) {
                eng_arena_stats(&sg.arena, st);
                ok = st->rec_used == recs && st->buf_used_blocks == 0;
                if (ok || eng_now_ns() > end)
                        break;
                sleep_ms(5);
        }
        why[0] = '\0';
        if (ok && eng_arena_check(&sg.arena, why, whylen) != 0)
                ok = false;
        seg_unmap(&sg);
        return ok;
}

/* ---- the message format ------------------------------------------------------------- */

/* user id of a stream: process << 8 | stream; arg: user id << 32 | per-stream counter. */
static uint32_t msg_len(uint32_t k)
{
        static const uint32_t lens[] = {0, 1, 7, 8, 64, 200, 511, 1500, 4000, 5000, 33, 0, 4032};
        return lens[(k * 7u + (k >> 4)) % (sizeof(lens) / sizeof(lens[0]))];
}

static uint64_t word_of(uint64_t arg, uint32_t j)
{
        return (arg * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)j * 0xbf58476d1ce4e5b9ull) ^ j;
}

static void put_payload(unsigned char *p, uint32_t len, uint64_t arg, bool inverted)
{
        uint32_t j = 0;
        for (; (j + 1) * 8 <= len; j++) {
                uint64_t w = word_of(arg, j);
                if (inverted)
                        w = ~w;
                memcpy(p + j * 8, &w, 8);
        }
        uint64_t w = word_of(arg, j);
        if (inverted)
                w = ~w;
        memcpy(p + j * 8, &w, len - j * 8);
}

static bool payload_ok(const unsigned char *p, uint32_t len, uint64_t arg, bool inverted)
{
        uint32_t j = 0;
        for (; (j + 1) * 8 <= len; j++) {
                uint64_t w = word_of(arg, j), v;
                if (inverted)
                        w = ~w;
                memcpy(&v, p + j * 8, 8);
                if (v != w)
                        return false;
        }
        uint64_t w = word_of(arg, j), v = 0;
        if (inverted)
                w = ~w;
        memcpy(&v, p + j * 8, len - j * 8);
        return memcmp(&v, &w, len - j * 8) == 0;
}

/* ---- the server --------------------------------------------------------------------- */

static struct {
        uint64_t msgs; /* counted per stream, added at close */
        uint64_t bytes;
        uint64_t opens, closes_ok, closes_err;
        uint64_t errors; /* order / payload violations the hook saw */
        uint64_t loaned; /* replies in a server-loaned block */
} S;

struct sstate {
        uint64_t next;
        uint64_t msgs, bytes;
};

static int st_open(eng_sstream_t *s, void *ctx)
{
        (void)ctx;
        struct sstate *st = calloc(1, sizeof(*st));
        if (st == NULL)
                return -ENOMEM;
        *eng_sstream_user(s) = st;
        __atomic_fetch_add(&S.opens, 1, __ATOMIC_RELAXED);
        return 0;
}

static void st_close(eng_sstream_t *s, int err, void *ctx)
{
        (void)ctx;
        struct sstate *st = *eng_sstream_user(s);
        if (st) {
                __atomic_fetch_add(&S.msgs, st->msgs, __ATOMIC_RELAXED);
                __atomic_fetch_add(&S.bytes, st->bytes, __ATOMIC_RELAXED);
                free(st);
                *eng_sstream_user(s) = NULL;
        }
        if (err == 0)
                __atomic_fetch_add(&S.closes_ok, 1, __ATOMIC_RELEASE);
        else
                __atomic_fetch_add(&S.closes_err, 1, __ATOMIC_RELEASE);
}

static int st_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        struct sstate *st = *eng_sstream_user(s);
        uint32_t k = (uint32_t)m->arg;
        if ((m->arg >> 32) != eng_sstream_id(s) || k != st->next ||
            m->cmd != (CMD_REQ | (k & 15u)) || m->len != msg_len(k) ||
            (m->len != 0) != (m->data != NULL) ||
            (m->len && !payload_ok(m->data, m->len, m->arg, false))) {
                __atomic_fetch_add(&S.errors, 1, __ATOMIC_RELAXED);
                return -EPROTO;
        }
        st->next++;
        st->msgs++;
        st->bytes += m->len;
        uint64_t off = 0;
        int rc;
        if (m->len != 0 && k % 4 == 1) {
                /* reply in a fresh block of our own; the request's block is freed by the engine */
                void *p;
                if (eng_sstream_loan(s, m->len, &p, &off) == 0) {
                        put_payload(p, m->len, m->arg, true);
                        __atomic_fetch_add(&S.loaned, 1, __ATOMIC_RELAXED);
                } else {
                        off = 0;
                }
        }
        if (m->len != 0 && off == 0) {
                /* rewrite in place and hand the block back */
                unsigned char *p = m->data;
                for (uint32_t j = 0; j < m->len; j++)
                        p[j] = (unsigned char)~p[j];
                off = m->off;
                m->off = 0;
        }
        rc = eng_sstream_send(s, (uint16_t)(0x0200u | (m->cmd & 0xffu)), m->arg + 1, off, m->len);
        if (rc != 0) {
                __atomic_fetch_add(&S.errors, 1, __ATOMIC_RELAXED);
                return rc;
        }
        return 0;
}

/* ---- a client process ----------------------------------------------------------------- */

static uint32_t g_msgs = ST_MSGS; /* per stream; set before the clients fork */

struct cstream {
        eng_stream_t *s;
        uint32_t uid;
        uint32_t sent, got;
};

static int stress_child(const char *name, uint32_t proc)
{
        eng_client_cfg_t cfg = {.spin = 256, .timeout_ms = 20000};
        eng_client_t *c;
        int rc = eng_client_attach(name, &cfg, &c);
        if (rc != 0) {
                fprintf(stderr, "proc %u: attach: %s (%s)\n", proc, eng_strerror(rc), eng_errmsg());
                return 10;
        }

        struct cstream cs[ST_STREAMS];
        for (uint32_t i = 0; i < ST_STREAMS; i++) {
                cs[i].uid = proc << 8 | i;
                cs[i].sent = cs[i].got = 0;
                rc = eng_stream_open(c, cs[i].uid, &cs[i].s);
                if (rc != 0) {
                        fprintf(stderr, "proc %u: open: %s (%s)\n", proc, eng_strerror(rc),
                                eng_errmsg());
                        return 11;
                }
        }
        uint32_t done = 0;
        while (done < ST_STREAMS) {
                uint32_t t = eng_client_ticket(c);
                bool moved = false;
                for (uint32_t i = 0; i < ST_STREAMS; i++) {
                        struct cstream *x = &cs[i];
                        while (x->sent < g_msgs && x->sent - x->got < ST_WINDOW) {
                                uint32_t k = x->sent;
                                uint32_t len = msg_len(k);
                                uint64_t arg = (uint64_t)x->uid << 32 | k;
                                uint64_t off = 0;
                                if (len != 0) {
                                        void *p;
                                        rc = eng_stream_try_loan(x->s, len, &p, &off);
                                        if (rc == -EAGAIN)
                                                break;
                                        if (rc != 0) {
                                                fprintf(stderr, "loan: %s\n", eng_strerror(rc));
                                                return 12;
                                        }
                                        put_payload(p, len, arg, false);
                                }
                                rc = eng_stream_try_send(x->s, (uint16_t)(CMD_REQ | (k & 15u)), arg,
                                                         off, len);
                                if (rc == -EAGAIN) {
                                        eng_stream_unloan(x->s, off);
                                        break;
                                }
                                if (rc != 0) {
                                        fprintf(stderr, "proc %u stream %u msg %u: send: %s (%s)\n",
                                                proc, i, k, eng_strerror(rc), eng_errmsg());
                                        return 13;
                                }
                                x->sent++;
                                moved = true;
                        }
                        eng_msg_t m;
                        while ((rc = eng_stream_try_recv(x->s, &m)) == 0) {
                                uint32_t k = x->got;
                                uint64_t arg = (uint64_t)x->uid << 32 | k;
                                uint32_t len = msg_len(k);
                                if (m.arg != arg + 1 ||
                                    m.cmd != (0x0200u | ((CMD_REQ | (k & 15u)) & 0xffu)) ||
                                    m.len != len || (len != 0) != (m.data != NULL) ||
                                    (len && !payload_ok(m.data, len, arg, true))) {
                                        fprintf(stderr,
                                                "proc %u stream %u: reply %u wrong (arg %llx cmd "
                                                "%x len "
                                                "%u)\n",
                                                proc, i, k, (unsigned long long)m.arg, m.cmd,
                                                m.len);
                                        return 14;
                                }
                                eng_stream_release(x->s, &m);
                                if (++x->got == g_msgs)
                                        done++;
                                moved = true;
                        }
                        if (rc != -EAGAIN) {
                                fprintf(stderr,
                                        "proc %u stream %u after %u replies: recv: %s (%s)\n", proc,
                                        i, x->got, eng_strerror(rc), eng_errmsg());
                                return 15;
                        }
                }
                if (!moved) {
                        rc = eng_client_wait(c, t, 10000);
                        if (rc != 0) {
                                fprintf(stderr, "proc %u: wait: %s\n", proc, eng_strerror(rc));
                                return 16;
                        }
                }
        }
        for (uint32_t i = 0; i < ST_STREAMS; i++) {
                rc = eng_stream_close(cs[i].s);
                if (rc != 0) {
                        fprintf(stderr, "proc %u: close: %s\n", proc, eng_strerror(rc));
                        return 17;
                }
        }
        eng_client_detach(c);
        return 0;
}

static void stress_body(const char *tag, eng_transport_t transport, uint32_t msgs)
{
        run_alone();
        char name[64];
        mkname(name, sizeof(name), tag);
        g_msgs = msgs;
        eng_server_cfg_t cfg = {
            .name = name,
            .size = 64ull << 20,
            .workers = 2,
            .transport = transport,
            .hooks = {.on_open = st_open, .on_msg = st_msg, .on_close = st_close}};
        pid_t pids[ST_PROCS];
        int gates[ST_PROCS];
        for (uint32_t p = 0; p < ST_PROCS; p++) {
                pids[p] = fork_gated(&gates[p]);
                if (pids[p] == 0)
                        _exit(stress_child(name, p));
        }
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        cr_assert_eq(rc, 0, "%s (%s)", eng_strerror(rc), eng_errmsg());
        uint64_t t0 = eng_now_ns();
        for (uint32_t p = 0; p < ST_PROCS; p++)
                open_gate(gates[p]);
        int bad = reap_children(pids, ST_PROCS, 540);
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        uint64_t total = (uint64_t)ST_PROCS * ST_STREAMS * msgs;
        fprintf(stderr,
                "[stress] %s: %u procs x %u streams x %u msgs = %llu round trips in %.2f s: %.0f "
                "msgs/s (%.0f descriptors/s both ways), %llu replies in server loans\n",
                tag, ST_PROCS, ST_STREAMS, msgs, (unsigned long long)total, secs,
                (double)total / secs, 2.0 * (double)total / secs, (unsigned long long)S.loaned);
        cr_assert_eq(bad, 0, "%d client processes failed", bad);
        /* Every stream was closed cleanly, and the hook counted every message. */
        uint64_t end = eng_now_ns() + 2000000000ull;
        while (__atomic_load_n(&S.closes_ok, __ATOMIC_ACQUIRE) < ST_PROCS * ST_STREAMS &&
               eng_now_ns() < end)
                sleep_ms(5);
        cr_assert_eq(S.errors, 0, "the server saw %llu bad messages", (unsigned long long)S.errors);
        cr_assert_eq(S.opens, ST_PROCS * ST_STREAMS);
        cr_assert_eq(S.closes_ok, ST_PROCS * ST_STREAMS, "clean closes: %llu, with error: %llu",
                     (unsigned long long)S.closes_ok, (unsigned long long)S.closes_err);
        cr_assert_eq(S.msgs, total, "the server counted %llu messages of %llu",
                     (unsigned long long)S.msgs, (unsigned long long)total);
        eng_arena_stats_t st;
        char why[256];
        bool ok = arena_settles(name, SEG_OFFERS, 3000, &st, why, sizeof(why));
        cr_assert(ok, "arena not back to empty: %llu records, %llu blocks in use; check: %s",
                  (unsigned long long)st.rec_used, (unsigned long long)st.buf_used_blocks, why);
        cr_assert_eq(st.bad_frees, 0, "%llu bad frees", (unsigned long long)st.bad_frees);
        eng_server_stop(srv);
}

Test(stress, echo_transform_many_processes)
{
        stress_body("stress", ENG_TRANSPORT_LOCKFREE, ST_MSGS);
}

/* The mutex baseline transport, shorter: it is the slow reference, not the product. */
Test(stress, mutex_transport_echo_transform_many_processes)
{
        stress_body("mstress", ENG_TRANSPORT_MUTEX, ST_MSGS / 10);
}

/* ---- many opens ----------------------------------------------------------------------- */

struct guid_rec {
        uint64_t g[2];
        uint32_t idx;
        int32_t pid;
};

static int opens_child(const char *name, uint32_t proc, struct guid_rec *tab)
{
        eng_client_t *c;
        int rc = eng_client_attach(name, NULL, &c);
        if (rc != 0)
                return 10;

        struct eng_seg view;
        if (seg_attach(&view, name) != 0)
                return 11;
        for (uint32_t i = 0; i < OP_EACH; i++) {
                eng_stream_t *s;
                rc = eng_stream_open(c, proc << 16 | i, &s);
                if (rc != 0) {
                        fprintf(stderr, "proc %u open %u: %s (%s)\n", proc, i, eng_strerror(rc),
                                eng_errmsg());
                        return 12;
                }
                uint32_t idx = eng_stream_index(s);
                struct eng_rec *r = seg_rec(&view, idx);
                if (r == NULL || r->owner_pid != getpid())
                        return 13;
                struct guid_rec *g = &tab[proc * OP_EACH + i];
                g->g[0] = r->guid[0];
                g->g[1] = r->guid[1];
                g->idx = idx;
                g->pid = getpid();
                if (i % 50 == 0) {
                        /* now and then a message, so that streams are really live */
                        if (eng_stream_send(s, 0x0101, i, 0, 0, 5000) != 0)
                                return 14;
                        eng_msg_t m;
                        if (eng_stream_recv(s, &m, 5000) != 0 || m.arg != i + 1)
                                return 15;
                }
                rc = eng_stream_close(s);
                if (rc != 0) {
                        fprintf(stderr, "proc %u close %u: %s\n", proc, i, eng_strerror(rc));
                        return 16;
                }
        }
        seg_unmap(&view);
        eng_client_detach(c);
        return 0;
}

static int op_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        return eng_sstream_send(s, 0x0201, m->arg + 1, 0, 0);
}

static int cmp_guid(const void *a, const void *b)
{
        const struct guid_rec *x = a, *y = b;
        if (x->g[0] != y->g[0])
                return x->g[0] < y->g[0] ? -1 : 1;
        if (x->g[1] != y->g[1])
                return x->g[1] < y->g[1] ? -1 : 1;
        return 0;
}

Test(stress, ten_thousand_opens_have_distinct_guids)
{
        run_alone();
        char name[64];
        mkname(name, sizeof(name), "opens");
        eng_server_cfg_t cfg = {
            .name = name,
            .size = 32ull << 20,
            .workers = 2,
            .hooks = {.on_open = st_open, .on_msg = op_msg, .on_close = st_close}};
        const uint32_t n = OP_PROCS * OP_EACH;
        struct guid_rec *tab = shared_mem(n * sizeof(*tab));
        pid_t pids[OP_PROCS];
        int gates[OP_PROCS];
        for (uint32_t p = 0; p < OP_PROCS; p++) {
                pids[p] = fork_gated(&gates[p]);
                if (pids[p] == 0)
                        _exit(opens_child(name, p, tab));
        }
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        cr_assert_eq(rc, 0, "%s (%s)", eng_strerror(rc), eng_errmsg());
        uint64_t t0 = eng_now_ns();
        for (uint32_t p = 0; p < OP_PROCS; p++)
                open_gate(gates[p]);
        int bad = reap_children(pids, OP_PROCS, 300);
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        fprintf(stderr, "[stress] %u opens+closes from %u processes in %.2f s: %.0f/s\n", n,
                OP_PROCS, secs, n / secs);
        cr_assert_eq(bad, 0, "%d client processes failed", bad);
        for (uint32_t i = 0; i < n; i++)
                cr_assert(tab[i].g[0] != 0 || tab[i].g[1] != 0, "stream %u has no GUID", i);
        qsort(tab, n, sizeof(*tab), cmp_guid);
        for (uint32_t i = 1; i < n; i++)
                cr_assert_neq(cmp_guid(&tab[i - 1], &tab[i]), 0,
                              "GUID %016llx%016llx given twice (records %u and %u)",
                              (unsigned long long)tab[i].g[0], (unsigned long long)tab[i].g[1],
                              tab[i - 1].idx, tab[i].idx);
        uint64_t end = eng_now_ns() + 2000000000ull;
        while (__atomic_load_n(&S.closes_ok, __ATOMIC_ACQUIRE) < n && eng_now_ns() < end)
                sleep_ms(5);
        cr_assert_eq(S.opens, n);
        cr_assert_eq(S.closes_ok, n, "clean closes %llu, with error %llu",
                     (unsigned long long)S.closes_ok, (unsigned long long)S.closes_err);
        eng_arena_stats_t st;
        char why[256];
        bool ok = arena_settles(name, SEG_OFFERS, 3000, &st, why, sizeof(why));
        cr_assert(ok, "records not reclaimed: %llu in use (want the offers), %llu blocks; %s",
                  (unsigned long long)st.rec_used, (unsigned long long)st.buf_used_blocks, why);
        uint64_t carved = (st.rec_top - st.rec_base) / st.rec_stride;
        fprintf(stderr, "[stress] record slots ever carved: %llu\n", (unsigned long long)carved);
        cr_assert_leq(carved, 64, "%llu record slots carved for %u concurrent streams",
                      (unsigned long long)carved, OP_PROCS);
        /* The segment's own counters: every stream and session opened and finalised. */
        struct eng_seg sg;
        cr_assert_eq(seg_attach(&sg, name), 0);
        uint64_t opens = sg.hdr->opens, closes = sg.hdr->closes;
        seg_unmap(&sg);
        cr_assert_eq(opens, n + OP_PROCS, "segment counted %llu opens", (unsigned long long)opens);
        cr_assert_eq(closes, n + OP_PROCS, "segment counted %llu closes",
                     (unsigned long long)closes);
        eng_server_stop(srv);
}

/* ---- a worker letting go of polled streams while clients push ------------------------- */

/*
 * A worker keeps the streams it ran in POLLING and lets go of them after cfg.spin idle spins:
 * POLLING -> IDLE, membarrier, second look (server.c). A client that read POLLING after its
 * push skips its fence and does nothing more. If that hand-over lost a push, the message
 * would sit in the ring with nobody scheduled to read it and the client's recv would time out.
 * So: a tiny server spin budget (the workers let go every few microseconds of quiet), clients
 * that pause for random times around that budget between messages (sometimes spinning,
 * sometimes sleeping), several streams per client, sequence-checked replies.
 */
#define PR_PROCS   4u
#define PR_STREAMS 4u
#ifdef __SANITIZE_ADDRESS__
#define PR_MSGS 2000u
#else
#define PR_MSGS 50000u
#endif

static int pr_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        struct sstate *st = *eng_sstream_user(s);
        if (m->arg != st->next) {
                __atomic_fetch_add(&S.errors, 1, __ATOMIC_RELAXED);
                return -EPROTO;
        }
        st->next++;
        st->msgs++;
        return eng_sstream_send(s, 0x0201, m->arg, 0, 0);
}

static uint64_t pr_rand(uint64_t *x)
{
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        return *x;
}

static int pr_child(const char *name, uint32_t proc)
{
        eng_client_cfg_t cfg = {.spin = 64, .timeout_ms = 5000};
        eng_client_t *c;
        if (eng_client_attach(name, &cfg, &c) != 0)
                return 10;
        eng_stream_t *s[PR_STREAMS];
        uint64_t next[PR_STREAMS] = {0};
        for (uint32_t i = 0; i < PR_STREAMS; i++)
                if (eng_stream_open(c, proc << 8 | i, &s[i]) != 0)
                        return 11;
        uint64_t x = 0x9e3779b97f4a7c15ull * (proc + 1);
        for (uint32_t k = 0; k < PR_MSGS; k++) {
                uint32_t i = (uint32_t)(pr_rand(&x) % PR_STREAMS);
                int rc = eng_stream_send(s[i], 0x0101, next[i], 0, 0, 5000);
                if (rc != 0) {
                        fprintf(stderr, "proc %u stream %u msg %llu: send: %s (%s)\n", proc, i,
                                (unsigned long long)next[i], eng_strerror(rc), eng_errmsg());
                        return 12;
                }
                eng_msg_t m;
                rc = eng_stream_recv(s[i], &m, 5000);
                if (rc != 0 || m.arg != next[i]) {
                        fprintf(stderr, "proc %u stream %u msg %llu: recv: %s (%s), arg %llu\n",
                                proc, i, (unsigned long long)next[i], eng_strerror(rc),
                                eng_errmsg(), rc == 0 ? (unsigned long long)m.arg : 0ull);
                        return 13;
                }
                next[i]++;
                /* A pause around the workers' spin budget: busy (up to ~20 us), or asleep. */
                uint64_t r = pr_rand(&x);
                if (r % 8 == 0) {
                        usleep((useconds_t)(r >> 8) % 200);
                } else {
                        uint64_t until = eng_now_ns() + (r >> 8) % 20000;
                        while (eng_now_ns() < until)
                                eng_cpu_relax();
                }
        }
        for (uint32_t i = 0; i < PR_STREAMS; i++)
                if (eng_stream_close(s[i]) != 0)
                        return 14;
        eng_client_detach(c);
        return 0;
}

Test(stress, polled_streams_let_go_while_clients_push_lose_nothing)
{
        run_alone();
        char name[64];
        mkname(name, sizeof(name), "pollrel");
        eng_server_cfg_t cfg = {
            .name = name,
            .size = 16ull << 20,
            .workers = 2,
            .spin = 64, /* the smallest budget at which workers poll: they let go constantly */
            .hooks = {.on_open = st_open, .on_msg = pr_msg, .on_close = st_close}};
        pid_t pids[PR_PROCS];
        int gates[PR_PROCS];
        for (uint32_t p = 0; p < PR_PROCS; p++) {
                pids[p] = fork_gated(&gates[p]);
                if (pids[p] == 0)
                        _exit(pr_child(name, p));
        }
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        cr_assert_eq(rc, 0, "%s (%s)", eng_strerror(rc), eng_errmsg());
        /* On a kernel with membarrier the clients really skip their fence (the case to test). */
        struct eng_seg sg;
        cr_assert_eq(seg_attach(&sg, name), 0);
        bool asym = sg.hdr->asym == 1;
        seg_unmap(&sg);
        if (eng_asym_supported())
                cr_assert(asym, "membarrier works here but the segment does not offer it");
        else
                cr_log_warn("membarrier(GLOBAL_EXPEDITED) unavailable: clients always fence");
        uint64_t t0 = eng_now_ns();
        for (uint32_t p = 0; p < PR_PROCS; p++)
                open_gate(gates[p]);
        int bad = reap_children(pids, PR_PROCS, 300);
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        fprintf(stderr, "[stress] poll release: %u procs x %u round trips in %.2f s (asym %d)\n",
                PR_PROCS, PR_MSGS, secs, asym);
        cr_assert_eq(bad, 0, "%d client processes failed (a lost wake-up times out a recv)", bad);
        uint64_t end = eng_now_ns() + 2000000000ull;
        while (__atomic_load_n(&S.closes_ok, __ATOMIC_ACQUIRE) < PR_PROCS * PR_STREAMS &&
               eng_now_ns() < end)
                sleep_ms(5);
        cr_assert_eq(S.errors, 0, "the server saw %llu messages out of order",
                     (unsigned long long)S.errors);
        cr_assert_eq(S.msgs, (uint64_t)PR_PROCS * PR_MSGS, "the server counted %llu messages",
                     (unsigned long long)S.msgs);
        eng_server_stop(srv);
}
