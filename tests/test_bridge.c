/*
 * test_bridge.c - engine-bridge (issue 15) on one machine: two real engine-server processes
 * (different segments and output folders), a receiving bridge listening on TCP loopback and a
 * sending bridge serving a segment to an unchanged engine-client. Files arrive byte-identical;
 * many streams share the connection without the small ones waiting for a big one; a hostile
 * peer's frames are refused while the bridge keeps serving; a slow receiver slows the sender
 * with bounded memory; killing either bridge mid-transfer fails the streams with a reason and
 * leaves no partial file, and the bridges reconnect. As root, one transfer also crosses two
 * network namespaces joined by a veth pair. Plus the frame checks (br_decode) and the
 * <bridge> element of options.xml.
 *
 * Real processes through xfer_util.h: children are only fork+exec'd, only the parent asserts.
 */
#include "xfer_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <shmengine/proto.h>

#include "bridge.h"
#include "options.h"

#define XU_BRIDGE ENG_BIN_DIR "/engine-bridge"
#define KiB       (1024ull)
#define MiB       (1024ull * 1024ull)
#define CHUNK     (256u * 1024u - 64u) /* payload of the default 256 KiB chunk */

/* The processes of one test: server A (the sending host's own server), server B (the
 * receiving host's), bridge R (receiving), bridge S (sending). */
static struct {
        char seg_a[80], seg_b[80], seg_s[80];
        char xml_a[XU_PATH], xml_r[XU_PATH], xml_s[XU_PATH];
        char out_a[XU_PATH], out_b[XU_PATH];
        pid_t a, b, r, s;
        int port;
        char netns[2][32]; /* namespaces a test created (removed in teardown) */
} B;

/* xfer_util.h helpers this file does not need */
static const void *const unused_helpers[] __attribute__((unused)) = {
    (const void *)xu_client_v, (const void *)xu_server_stop, (const void *)xu_log_wait};

static void setup(void)
{
        xu_setup();
        memset(&B, 0, sizeof(B));
        snprintf(B.seg_a, sizeof(B.seg_a), "%sa", X.name);
        snprintf(B.seg_b, sizeof(B.seg_b), "%sb", X.name);
        snprintf(B.seg_s, sizeof(B.seg_s), "%ss", X.name);
        snprintf(B.xml_a, sizeof(B.xml_a), "%s/a.xml", X.dir);
        snprintf(B.xml_r, sizeof(B.xml_r), "%s/r.xml", X.dir);
        snprintf(B.xml_s, sizeof(B.xml_s), "%s/s.xml", X.dir);
        snprintf(B.out_a, sizeof(B.out_a), "%s/outa", X.dir);
        snprintf(B.out_b, sizeof(B.out_b), "%s/outb", X.dir);
        /* xu_temps() and friends look at X.out: the receiving server's folder */
        snprintf(X.out, sizeof(X.out), "%s", B.out_b);
}

static void teardown(void)
{
        xu_teardown();
        shm_unlink(B.seg_a);
        shm_unlink(B.seg_b);
        shm_unlink(B.seg_s);
        for (int i = 0; i < 2; i++) {
                if (B.netns[i][0]) {
                        char cmd[128];
                        snprintf(cmd, sizeof(cmd), "ip netns del %s 2>/dev/null", B.netns[i]);
                        if (system(cmd) != 0) {
                                /* already gone */
                        }
                }
        }
}

TestSuite(bridge, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ------------------------------------------------------------------------- */

/* Wait until the file at path contains needle at least n times (bounded). */
static bool log_wait_n(const char *path, const char *needle, int n, long ms)
{
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        do {
                char *s = xu_slurp(path);
                int k = xu_count(s, needle);
                free(s);
                if (k >= n)
                        return true;
                xu_sleep_ms(10);
        } while (xu_now_ms() < end);
        return false;
}

/* A program spawned with its stderr in log, returned once log says ready (within ms). */
static pid_t start_logged_ms(char *const argv[], const char *log, const char *ready, int ms)
{
        pid_t pid = xu_spawn(argv, NULL, log);
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        while (!xu_file_has(log, ready)) {
                int st;
                if (xu_wait(pid, 0, &st)) {
                        char *s = xu_slurp(log);
                        cr_assert_fail("%s exited (%d) before saying '%s':\n%s", argv[0],
                                       xu_code(st), ready, s);
                }
                if (xu_now_ms() > end) {
                        char *s = xu_slurp(log);
                        char *r = xu_slurp(xu_path("r.log"));
                        cr_assert_fail("%s did not say '%s' within %d ms:\n%s\nr.log:\n%s", argv[0],
                                       ready, ms, s, r ? r : "(none)");
                }
                xu_sleep_ms(5);
        }
        return pid;
}

static pid_t start_logged(char *const argv[], const char *log, const char *ready)
{
        return start_logged_ms(argv, log, ready, 10000);
}

/* The receiving host's options (server B and bridge R share it, as on a real host). port 0:
 * any free port, read back from R's log. server_extra replaces the default timeout="5". */
static void write_r(int port, const char *bridge_extra, const char *server_extra)
{
        char t[2048];
        snprintf(t, sizeof(t),
                 "<streams>\n  <server name=\"%s\" outputpath=\"outb\" %s/>\n"
                 "  <bridge listen=\"tcp://127.0.0.1:%d\" %s/>\n</streams>\n",
                 B.seg_b, server_extra ? server_extra : "timeout=\"5\"", port,
                 bridge_extra ? bridge_extra : "");
        xu_write_text(B.xml_r, t);
}

/* The sending host's options: the bridge's segment and the streams. */
static void write_s(const char *url, const char *extra, const xu_stream_t *st, size_t n)
{
        size_t cap = 1024 + n * (XU_PATH + 64);
        char *t = malloc(cap);
        size_t k = (size_t)snprintf(t, cap,
                                    "<streams>\n  <server name=\"%s\" timeout=\"5\"/>\n"
                                    "  <bridge connect=\"%s\" %s/>\n",
                                    B.seg_s, url, extra ? extra : "");
        for (size_t i = 0; i < n; i++)
                k += (size_t)snprintf(t + k, cap - k, "  <stream id=\"%u\" file=\"%s\"/>\n",
                                      st[i].id, st[i].file);
        snprintf(t + k, cap - k, "</streams>\n");
        xu_write_text(B.xml_s, t);
        free(t);
}

static void start_b(void)
{
        char *argv[] = {XU_SERVER, "-c", B.xml_r, NULL};
        B.b = start_logged(argv, xu_path("b.log"), "serving");
}

/* Start R on B.xml_r; returns its port. */
static int start_r(const char *log)
{
        char *argv[] = {XU_BRIDGE, "-c", B.xml_r, NULL};
        B.r = start_logged(argv, log, "attached to the engine-server");
        char *s = xu_slurp(log);
        const char *p = strstr(s, "(port ");
        cr_assert_not_null(p, "%s", s);
        int port = atoi(p + 6);
        free(s);
        cr_assert_gt(port, 0);
        return port;
}

static void start_s(const char *log)
{
        char *argv[] = {XU_BRIDGE, "-c", B.xml_s, NULL};
        B.s = start_logged(argv, log, "connected to the remote bridge");
        cr_assert(log_wait_n(log, "serving", 1, 10000), "bridge S never served");
}

static const char *url(int port)
{
        static char u[64];
        snprintf(u, sizeof(u), "tcp://127.0.0.1:%d", port);
        return u;
}

/* B, R and S up, S's streams st; returns the port. */
static int start_all(const char *s_extra, const xu_stream_t *st, size_t n)
{
        write_r(0, NULL, NULL);
        start_b();
        int port = start_r(xu_path("r.log"));
        write_s(url(port), s_extra, st, n);
        start_s(xu_path("s.log"));
        B.port = port;
        return port;
}

/* A plain TCP connection to 127.0.0.1:port (no NNG), for the hostile cases. */
static int connect_local(int port)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(0x7f000001)};
        cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

static pid_t client_spawn(const char *tag, const char *const *args, size_t n)
{
        return xu_client_spawn_cfg(tag, B.xml_s, true, args, n);
}

static char *logs(void)
{
        char *r = xu_slurp(xu_path("r.log")), *s = xu_slurp(xu_path("s.log")),
             *b = xu_slurp(xu_path("b.log")), *out;
        if (asprintf(&out, "--- bridge S:\n%s--- bridge R:\n%s--- server B:\n%s", s, r, b) < 0)
                out = strdup("");
        free(r);
        free(s);
        free(b);
        return out;
}

/* A real sending bridge S to R on port, and one client sending src/a.bin through it: the file
 * arrives byte-identical within ms. */
static void deliver_one(int port, int ms)
{
        write_s(url(port), NULL, &(xu_stream_t){1, "src/a.bin"}, 1);
        start_s(xu_path("s.log"));
        int rc = xu_finish(client_spawn("c", XU_ARGS("1"), 1), ms, "engine-client");
        char *o = xu_output("c"), *l = logs();
        cr_assert_eq(rc, 0, "%s%s", o, l);
        free(o);
        free(l);
        xu_assert_same(xu_path("src/a.bin"), xu_path("outb/a.bin"));
}

/* Wait (bounded) until the receiving folder holds no temporary file. */
static bool temps_gone(long ms)
{
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        while (xu_temps() > 0) {
                if (xu_now_ms() > end)
                        return false;
                xu_sleep_ms(10);
        }
        return true;
}

/* ---- end to end ---------------------------------------------------------------------- */

/* The sample set `make run` sends (the sizes of options.xml, 0 B to 300 MiB), from two clients
 * at once as make run does (1-6 and 7-12), through two bridges: every file byte-identical in
 * server B's folder, nothing in server A's. */
Test(bridge, sample_set_arrives_byte_identical_through_two_bridges, .timeout = 120)
{
        static const struct {
                const char *name;
                uint64_t size;
        } f[] = {{"empty.bin", 0},
                 {"one-byte.bin", 1},
                 {"chunk-minus-1.bin", CHUNK - 1},
                 {"chunk.bin", CHUNK},
                 {"chunk-plus-1.bin", CHUNK + 1},
                 {"page.bin", 4096},
                 {"1MiB.bin", MiB},
                 {"3MiB-odd.bin", 3 * MiB + 12345},
                 {"10MiB.bin", 10 * MiB},
                 {"64MiB.bin", 64 * MiB},
                 {"100MiB.bin", 100 * MiB},
                 {"300MiB.bin", 300 * MiB}};
        enum { N = sizeof(f) / sizeof(f[0]) };
        xu_stream_t st[N];
        char paths[N][64];
        for (unsigned i = 0; i < N; i++) {
                snprintf(paths[i], sizeof(paths[i]), "src/%s", f[i].name);
                xu_make_file(xu_path("%s", paths[i]), f[i].size, i + 1);
                st[i] = (xu_stream_t){i + 1, paths[i]};
        }
        /* server A: the sending host's own server, another segment and folder, untouched */
        char t[512];
        snprintf(t, sizeof(t), "<streams><server name=\"%s\" outputpath=\"outa\"/></streams>\n",
                 B.seg_a);
        xu_write_text(B.xml_a, t);
        char *argv_a[] = {XU_SERVER, "-c", B.xml_a, NULL};
        B.a = start_logged(argv_a, xu_path("a.log"), "serving");
        start_all(NULL, st, N);
        pid_t c1 = client_spawn("c1", XU_ARGS("1", "2", "3", "4", "5", "6"), 6);
        pid_t c2 = client_spawn("c2", XU_ARGS("7", "8", "9", "10", "11", "12"), 6);
        int r1 = xu_finish(c1, 90000, "engine-client 1-6");
        int r2 = xu_finish(c2, 90000, "engine-client 7-12");
        char *o1 = xu_output("c1"), *o2 = xu_output("c2"), *l = logs();
        cr_assert(r1 == 0 && r2 == 0, "clients exited %d and %d\n%s%s%s", r1, r2, o1, o2, l);
        for (unsigned i = 0; i < N; i++)
                xu_assert_same(xu_path("%s", paths[i]), xu_path("outb/%s", f[i].name));
        cr_assert_eq(xu_count_prefix(B.out_a, ""), 2, "server A received something"); /* . .. */
        xu_assert_no_temps();
        cr_assert_eq(xu_count(l, "file relayed and verified remotely"), N, "%s", l);
        free(o1);
        free(o2);
        free(l);
}

/* One 384 MiB stream and 24 small ones on the same connection: the small ones, started once
 * the big one is in flight, all finish while it is still going (no head-of-line blocking),
 * and everything arrives intact. --ping goes through as well. */
Test(bridge, small_streams_are_not_held_up_behind_a_big_one, .timeout = 90)
{
        enum { SMALL = 24 };
        xu_stream_t st[SMALL + 1];
        char paths[SMALL + 1][32];
        char ids[SMALL][12];
        const char *args[SMALL];
        xu_make_file(xu_path("src/big.bin"), 384 * MiB, 99);
        st[0] = (xu_stream_t){1, "src/big.bin"};
        for (unsigned i = 0; i < SMALL; i++) {
                snprintf(paths[i + 1], sizeof(paths[i + 1]), "src/s%u.bin", i);
                xu_make_file(xu_path("%s", paths[i + 1]), 1000 + i * 7919ull, 200 + i);
                st[i + 1] = (xu_stream_t){i + 2, paths[i + 1]};
                snprintf(ids[i], sizeof(ids[i]), "%u", i + 2);
                args[i] = ids[i];
        }
        start_all(NULL, st, SMALL + 1);
        pid_t big = client_spawn("big", XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, big), "the big transfer never started");
        uint64_t t0 = xu_now_ms();
        pid_t small = client_spawn("small", args, SMALL);
        int rs = xu_finish(small, 30000, "engine-client (small streams)");
        uint64_t ms = xu_now_ms() - t0;
        int st_big;
        bool big_done = xu_wait(big, 0, &st_big);
        char *o = xu_output("small"), *l = logs();
        cr_assert_eq(rs, 0, "%s%s", o, l);
        cr_assert(!big_done,
                  "the big stream finished before the %d small ones (%llu ms): "
                  "they waited behind it",
                  SMALL, (unsigned long long)ms);
        cr_log_info("%d small streams took %llu ms beside a 384 MiB one", SMALL,
                    (unsigned long long)ms);
        char *argv_ping[] = {XU_CLIENT, "-c", B.xml_s, "--ping", "200", "--payload", "64", NULL};
        int rp = xu_run(20000, xu_path("ping.out"), xu_path("ping.err"), argv_ping);
        char *po = xu_slurp(xu_path("ping.out"));
        cr_assert_eq(rp, 0, "ping through the bridge: %d\n%s", rp, po);
        cr_assert_not_null(strstr(po, "p50"), "%s", po);
        free(po);
        int rb = xu_finish(big, 40000, "engine-client (big stream)");
        cr_assert_eq(rb, 0, "%s", l);
        for (unsigned i = 0; i <= SMALL; i++) {
                const char *base = strrchr(st[i].file, '/') + 1;
                xu_assert_same(xu_path("%s", st[i].file), xu_path("outb/%s", base));
        }
        free(o);
        free(l);
}

/* RssAnon of a process in KiB (0 if unknown): its private memory, without the pages of the
 * segments it maps. */
static uint64_t rss_kib(pid_t pid)
{
        char p[64];
        snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
        char *s = xu_slurp(p);
        const char *v = strstr(s, "RssAnon:");
        uint64_t k = v ? strtoull(v + 8, NULL, 10) : 0;
        free(s);
        return k;
}

/* Server B stopped (SIGSTOP) in the middle of a 256 MiB file: the sender stalls instead of
 * piling the file up in either bridge (window 4 chunks, 4 MiB in flight), and finishes once B
 * goes on. */
Test(bridge, a_stalled_receiver_slows_the_sender_with_bounded_memory)
{
        xu_make_file(xu_path("src/big.bin"), 256 * MiB, 5);
#if defined(__SANITIZE_ADDRESS__)
        /* ASan holds every freed block in its quarantine (256 MiB by default): each frame the
         * bridges passed would count as growth. Without it, freed frames are reused, as with
         * the normal allocator. The bridges are spawned after this (criterion forks a test). */
        {
                const char *a = getenv("ASAN_OPTIONS");
                char opts[1024];
                snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=0", a ? a : "",
                         a && *a ? ":" : "");
                setenv("ASAN_OPTIONS", opts, 1);
        }
#endif
        write_r(0, "window=\"4\" memory=\"4MiB\"", "timeout=\"20\"");
        start_b();
        int port = start_r(xu_path("r.log"));
        write_s(url(port), "window=\"4\" memory=\"4MiB\"", &(xu_stream_t){1, "src/big.bin"}, 1);
        start_s(xu_path("s.log"));
        uint64_t r0 = rss_kib(B.r), s0 = rss_kib(B.s);
        pid_t c = client_spawn("c", XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, c), "the transfer never started");
        kill(B.b, SIGSTOP);
        xu_sleep_ms(1500);
        struct stat sb;
        char tmp[XU_PATH + 300];
        DIR *d = opendir(B.out_b);
        struct dirent *e;
        tmp[0] = '\0';
        while (d && (e = readdir(d)) != NULL)
                if (strncmp(e->d_name, ".eng-", 5) == 0)
                        snprintf(tmp, sizeof(tmp), "%s/%s", B.out_b, e->d_name);
        if (d)
                closedir(d);
        off_t at_stop = tmp[0] && stat(tmp, &sb) == 0 ? sb.st_size : -1;
        uint64_t r1 = rss_kib(B.r), s1 = rss_kib(B.s);
        xu_sleep_ms(500);
        off_t later = tmp[0] && stat(tmp, &sb) == 0 ? sb.st_size : -1;
        int st;
        bool ended = xu_wait(c, 0, &st);
        kill(B.b, SIGCONT);
        cr_assert(!ended, "the client finished with the receiving server stopped");
        cr_assert_eq(at_stop, later, "the file grew while its server was stopped");
        cr_log_info("stalled: bridge R %llu -> %llu KiB, bridge S %llu -> %llu KiB",
                    (unsigned long long)r0, (unsigned long long)r1, (unsigned long long)s0,
                    (unsigned long long)s1);
        /* what a bridge may hold: its memory budget and a few frames, not the file */
        cr_assert_lt(r1, r0 + 24 * 1024, "bridge R grew from %llu to %llu KiB",
                     (unsigned long long)r0, (unsigned long long)r1);
        cr_assert_lt(s1, s0 + 24 * 1024, "bridge S grew from %llu to %llu KiB",
                     (unsigned long long)s0, (unsigned long long)s1);
        int rc = xu_finish(c, 40000, "engine-client");
        char *l = logs();
        cr_assert_eq(rc, 0, "%s", l);
        free(l);
        xu_assert_same(xu_path("src/big.bin"), xu_path("outb/big.bin"));
}

/* ---- faults -------------------------------------------------------------------------- */

/* Kill the receiving bridge in the middle of a 256 MiB file: the client fails within the
 * timeout saying the bridge connection was lost, server B removes its temporary file and no
 * big.bin appears; R restarted on the same port, S reconnects by itself and a new transfer
 * arrives. */
Test(bridge, killing_the_receiving_bridge_fails_the_stream_and_the_bridges_reconnect)
{
        xu_make_file(xu_path("src/big.bin"), 256 * MiB, 3);
        xu_make_file(xu_path("src/after.bin"), 3 * MiB + 1, 4);
        xu_stream_t st[] = {{1, "src/big.bin"}, {2, "src/after.bin"}};
        int port = start_all(NULL, st, 2);
        pid_t c = client_spawn("c", XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, c), "the transfer never started");
        xu_kill(B.r);
        uint64_t t0 = xu_now_ms();
        int rc = xu_finish(c, 10000, "engine-client after its bridge died");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c"), *l = logs();
        cr_assert_eq(rc, 1, "%s%s", o, l);
        cr_assert_not_null(strstr(o, "bridge connection lost"), "%s%s", o, l);
        cr_assert_leq(ms, 6000, "the client took %llu ms to fail", (unsigned long long)ms);
        cr_assert(temps_gone(5000), "server B kept its temporary file\n%s", l);
        cr_assert(!xu_exists(xu_path("outb/big.bin")), "a partial big.bin under its final name");
        free(o);
        free(l);
        /* the same port again: S's dialer finds it */
        write_r(port, NULL, NULL);
        start_r(xu_path("r2.log"));
        cr_assert(log_wait_n(xu_path("s.log"), "connected to the remote bridge", 2, 10000),
                  "bridge S did not reconnect");
        pid_t c2 = client_spawn("c2", XU_ARGS("2"), 1);
        rc = xu_finish(c2, 20000, "engine-client after the restart");
        o = xu_output("c2");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("src/after.bin"), xu_path("outb/after.bin"));
}

/* Kill the sending bridge in the middle of a file: the receiving bridge sees the connection
 * go, aborts the real stream, server B logs the failure and removes its temporary file; the
 * client, whose server (S) died, fails; a new S connects again and delivers. */
Test(bridge, killing_the_sending_bridge_aborts_the_real_stream)
{
        xu_make_file(xu_path("src/big.bin"), 256 * MiB, 6);
        xu_make_file(xu_path("src/after.bin"), 1 * MiB, 8);
        xu_stream_t st[] = {{1, "src/big.bin"}, {2, "src/after.bin"}};
        start_all(NULL, st, 2);
        pid_t c = client_spawn("c", XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, c), "the transfer never started");
        xu_kill(B.s);
        int rc = xu_finish(c, 10000, "engine-client after its bridge died");
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "%s", o);
        cr_assert(log_wait_n(xu_path("b.log"), "transfer FAILED", 1, 5000),
                  "server B did not fail the stream");
        cr_assert(log_wait_n(xu_path("r.log"), "stream(s) aborted", 1, 5000));
        cr_assert(temps_gone(5000), "server B kept its temporary file");
        cr_assert(!xu_exists(xu_path("outb/big.bin")), "a partial big.bin under its final name");
        free(o);
        shm_unlink(B.seg_s); /* what SIGKILL left */
        start_s(xu_path("s2.log"));
        rc = xu_finish(client_spawn("c2", XU_ARGS("2"), 1), 20000, "engine-client");
        o = xu_output("c2");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("src/after.bin"), xu_path("outb/after.bin"));
}

/* Nobody listening: the stream fails within the timeout with a reason naming the address. A
 * name the server would refuse is refused with the server's rule. */
Test(bridge, no_receiving_bridge_fails_with_a_reason)
{
        xu_make_file(xu_path("src/a.bin"), 1000, 1);
        /* a port nobody listens on: bind, read it back, close */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t sl = sizeof(sa);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        int port = ntohs(sa.sin_port);
        close(fd);
        write_s(url(port), NULL, &(xu_stream_t){1, "src/a.bin"}, 1);
        char *argv[] = {XU_BRIDGE, "-c", B.xml_s, NULL};
        B.s = start_logged(argv, xu_path("s.log"), "serving");
        uint64_t t0 = xu_now_ms();
        int rc = xu_finish(client_spawn("c", XU_ARGS("1"), 1), 15000, "engine-client");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "%s", o);
        cr_assert(strstr(o, "no connection to the remote bridge") != NULL ||
                      strstr(o, "no progress") != NULL,
                  "%s", o);
        cr_assert_leq(ms, 8000, "took %llu ms", (unsigned long long)ms);
        free(o);
}

/* ---- a hostile peer ------------------------------------------------------------------ */

static char hello_trace[1024]; /* what recv_hello got instead, for a failure message */

static nng_msg *recv_hello(nng_socket s, br_hdr_t *h)
{
        size_t k = 0;
        hello_trace[0] = 0;
        /* Bounded in time, not in tries: what comes first may be frames of the connection the
         * bridge just closed, or errors at once (a trace of them goes in the failure). */
        for (uint64_t end = xu_now_ms() + 8000; xu_now_ms() < end;) {
                nng_msg *m;
                int rc = nng_recvmsg(s, &m, 0);
                if (rc != 0) {
                        if (k < sizeof(hello_trace))
                                k += (size_t)snprintf(hello_trace + k, sizeof(hello_trace) - k,
                                                      " e%d", rc);
                        if (rc != NNG_ETIMEDOUT)
                                xu_sleep_ms(10);
                        continue; /* RECVTIMEO 100 ms */
                }
                const char *why;
                int d = br_decode(nng_msg_body(m), nng_msg_len(m), BR_AT_SENDER, h, &why);
                if (d == 0 && h->type == BR_HELLO)
                        return m;
                if (k < sizeof(hello_trace))
                        k += (size_t)snprintf(hello_trace + k, sizeof(hello_trace) - k, " t%d/%d",
                                              d == 0 ? h->type : -1, (int)nng_msg_len(m));
                nng_msg_free(m);
        }
        return NULL;
}

static void send_raw(nng_socket s, const void *p, size_t n)
{
        nng_msg *m;
        cr_assert_eq(nng_msg_alloc(&m, n), 0);
        memcpy(nng_msg_body(m), p, n);
        cr_assert_eq(nng_sendmsg(s, m, 0), 0);
}

static void send_frame(nng_socket s, br_hdr_t h, const void *p, uint32_t len)
{
        nng_msg *m = br_frame(&h, p, len);
        cr_assert_not_null(m);
        cr_assert_eq(nng_sendmsg(s, m, 0), 0);
}

/* Garbage on the TCP port, then garbage frames from a real NNG peer: each bad frame is logged
 * and its connection closed; the bridge takes the next connection (a new HELLO), answers a
 * refused name as the server would, and afterwards a real sending bridge delivers a file. */
Test(bridge, hostile_frames_are_refused_and_the_bridge_keeps_serving)
{
        xu_make_file(xu_path("src/a.bin"), 2 * MiB + 3, 11);
        write_r(0, "window=\"2\"", NULL);
        start_b();
        int port = start_r(xu_path("r.log"));
        /* 1. bytes that are not even SP: NNG refuses them */
        for (int i = 0; i < 3; i++) {
                int fd = connect_local(port);
                char junk[4096];
                for (size_t k = 0; k < sizeof(junk); k++)
                        junk[k] = (char)(k * 131 + (size_t)i);
                if (write(fd, junk, sizeof(junk)) < 0) {
                        /* refused early: fine */
                }
                close(fd);
        }
        /* 2. an NNG peer sending frames that break the rules */
        nng_socket s;
        cr_assert_eq(nng_pair1_open(&s), 0);
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 100);
        nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 2000);
        nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 50);
        nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 2 * MiB);
        cr_assert_eq(nng_dial(s, url(port), NULL, NNG_FLAG_NONBLOCK), 0);
        unsigned char junk[64] = {1, 3, 0, 0, 9, 9, 9, 9};
        unsigned char badver[BR_HDR] = {7};
        unsigned char data[4096] = {0};
        enum { CASES = 7 };
        for (int k = 0; k < CASES; k++) {
                br_hdr_t h;
                nng_msg *hello = recv_hello(s, &h);
                char *l = xu_slurp(xu_path("r.log"));
                cr_assert_not_null(hello, "case %d: no HELLO from the bridge (got:%s)\n%s", k,
                                   hello_trace, l);
                free(l);
                nng_msg_free(hello);
                uint32_t ep = h.epoch;
                switch (k) {
                case 0: /* shorter than a header */
                        send_raw(s, junk, 5);
                        break;
                case 1: /* unknown version */
                        send_raw(s, badver, sizeof(badver));
                        break;
                case 2: /* len says more than there is */
                        send_raw(s, junk, sizeof(junk));
                        break;
                case 3: /* a frame only a receiving bridge sends */
                        send_frame(s,
                                   (br_hdr_t){.type = BR_CREDIT, .link = 1, .epoch = ep, .arg = 1},
                                   NULL, 0);
                        break;
                case 4: /* an unknown command */
                        send_frame(s, (br_hdr_t){.type = BR_OPEN, .link = 5, .epoch = ep}, NULL, 0);
                        send_frame(
                            s, (br_hdr_t){.type = BR_MSG, .cmd = 0x01ee, .link = 5, .epoch = ep},
                            NULL, 0);
                        break;
                case 5: /* chunks beyond the window (2), with server B stopped so that they
                           pile up in the bridge instead of going on to the server */
                        kill(B.b, SIGSTOP);
                        send_frame(s, (br_hdr_t){.type = BR_OPEN, .link = 6, .epoch = ep}, NULL, 0);
                        for (int i = 0;
                             i < 200 && !xu_file_has(xu_path("r.log"), "than the window"); i++)
                                send_frame(s,
                                           (br_hdr_t){.type = BR_MSG,
                                                      .cmd = ENG_C_FILE_DATA,
                                                      .link = 6,
                                                      .epoch = ep,
                                                      .arg = 4096u * (unsigned)i},
                                           data, sizeof(data));
                        log_wait_n(xu_path("r.log"), "than the window", 1, 5000);
                        kill(B.b, SIGCONT);
                        break;
                case 6: { /* a name the server refuses: answered, not fatal; then the link is
                             reopened, which is */
                        send_frame(s, (br_hdr_t){.type = BR_OPEN, .link = 7, .epoch = ep}, NULL, 0);
                        send_frame(s,
                                   (br_hdr_t){.type = BR_MSG,
                                              .cmd = ENG_C_FILE_OPEN,
                                              .link = 7,
                                              .epoch = ep,
                                              .arg = 10},
                                   ".hidden", 7);
                        nng_msg *m = NULL;
                        br_hdr_t r = {0};
                        for (uint64_t end = xu_now_ms() + 8000; xu_now_ms() < end;) {
                                if (nng_recvmsg(s, &m, 0) != 0) {
                                        m = NULL;
                                        continue;
                                }
                                const char *why;
                                cr_assert_eq(br_decode(nng_msg_body(m), nng_msg_len(m),
                                                       BR_AT_SENDER, &r, &why),
                                             0, "%s", why);
                                if (r.type != BR_ALIVE)
                                        break; /* the bridge's heartbeat: not the answer */
                                nng_msg_free(m);
                                m = NULL;
                        }
                        cr_assert_not_null(m, "no answer to a refused name");
                        cr_assert_eq(r.type, BR_REPLY);
                        cr_assert_eq(r.cmd, ENG_S_FILE_FAIL);
                        cr_assert_eq(r.arg, EINVAL);
                        nng_msg_free(m);
                        send_frame(s, (br_hdr_t){.type = BR_OPEN, .link = 7, .epoch = ep}, NULL, 0);
                        break;
                }
                }
        }
        cr_assert(log_wait_n(xu_path("r.log"), "refused a frame", CASES, 5000), "%s",
                  xu_slurp(xu_path("r.log")));
        nng_close(s);
        /* the bridge still serves: a real sending bridge delivers */
        deliver_one(port, 20000);
        cr_assert_eq(xu_count_prefix(B.out_b, ".hidden"), 0);
}

/*
 * NNG 1.5.2 can hang for good while closing a connection that data is arriving on
 * (nanomsg/nng#1636, fixed in 1.6): its one reaper thread stops, no closed connection is ever
 * released again, and pair1's single slot stays taken, so every new connection is refused.
 * Seen as the rare failure of the test above under load. Simulated here with the bridge's
 * fault hook: a refused connection is left open (ENGINE_BRIDGE_FAULT=keep-refused). The
 * receiving bridge must notice (connections keep coming, none is given to it, it has none)
 * and start afresh on the same port; without that, the sending bridge is refused for ever.
 */
Test(bridge, a_receiving_bridge_that_nng_stops_giving_connections_starts_afresh, .timeout = 90)
{
        xu_make_file(xu_path("src/a.bin"), 1 * MiB + 5, 12);
        write_r(0, NULL, NULL);
        start_b();
        cr_assert_eq(setenv("ENGINE_BRIDGE_FAULT", "keep-refused", 1), 0);
        int port = start_r(xu_path("r.log"));
        unsetenv("ENGINE_BRIDGE_FAULT");
        pid_t r0 = B.r;
        /* a peer that breaks the rules: refused, and (the fault) its connection stays */
        nng_socket s;
        cr_assert_eq(nng_pair1_open(&s), 0);
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 100);
        nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 2000);
        /* no redial of its own once the restart closes it: the slot is the real sender's */
        nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 600000);
        nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 600000);
        cr_assert_eq(nng_dial(s, url(port), NULL, NNG_FLAG_NONBLOCK), 0);
        br_hdr_t h;
        nng_msg *hello = recv_hello(s, &h);
        cr_assert_not_null(hello, "no HELLO from the bridge (got:%s)", hello_trace);
        nng_msg_free(hello);
        unsigned char junk[5] = {1, 3, 0, 0, 9};
        send_raw(s, junk, sizeof(junk));
        cr_assert(log_wait_n(xu_path("r.log"), "refused a frame", 1, 5000), "%s",
                  xu_slurp(xu_path("r.log")));
        /* the real sending bridge gets in once the receiving one has started afresh (5 s
         * of refused connections, then a new process image on the same port) */
        write_s(url(port), NULL, &(xu_stream_t){1, "src/a.bin"}, 1);
        char *argv[] = {XU_BRIDGE, "-c", B.xml_s, NULL};
        B.s = start_logged_ms(argv, xu_path("s.log"), "connected to the remote bridge", 40000);
        int rc = xu_finish(client_spawn("c", XU_ARGS("1"), 1), 30000, "engine-client");
        char *o = xu_output("c"), *l = logs();
        cr_assert_eq(rc, 0, "%s%s", o, l);
        free(o);
        free(l);
        xu_assert_same(xu_path("src/a.bin"), xu_path("outb/a.bin"));
        cr_assert(xu_file_has(xu_path("r.log"), "starting afresh"), "%s",
                  xu_slurp(xu_path("r.log")));
        cr_assert_eq(B.r, r0);
        cr_assert_eq(kill(B.r, 0), 0, "the receiving bridge is gone");
        nng_close(s);
}

/*
 * A receiving bridge takes one sending bridge at a time (pair1). A second one used to dial
 * forever with nothing in either log. Now both say why: the receiving bridge that it refused a
 * connection while another sending bridge is connected, the second sending bridge that the
 * remote closed its connections before HELLO. The first keeps delivering.
 */
Test(bridge, a_second_sending_bridge_is_refused_with_a_reason_on_both_sides, .timeout = 60)
{
        xu_make_file(xu_path("src/a.bin"), 1 * MiB + 7, 13);
        int port = start_all(NULL, &(xu_stream_t){1, "src/a.bin"}, 1);
        char seg2[96], xml2[XU_PATH], log2[XU_PATH];
        snprintf(seg2, sizeof(seg2), "%s2", B.seg_s);
        snprintf(xml2, sizeof(xml2), "%s/s2.xml", X.dir);
        snprintf(log2, sizeof(log2), "%s", xu_path("s2.log"));
        char t[512];
        snprintf(t, sizeof(t),
                 "<streams>\n  <server name=\"%s\" timeout=\"5\"/>\n"
                 "  <bridge connect=\"%s\"/>\n</streams>\n",
                 seg2, url(port));
        xu_write_text(xml2, t);
        char *argv[] = {XU_BRIDGE, "-c", xml2, NULL};
        start_logged(argv, log2, "serving");
        bool said_s2 = log_wait_n(log2, "before its HELLO", 1, 10000);
        bool said_r =
            log_wait_n(xu_path("r.log"), "is connected (a receiving bridge takes one", 1, 10000);
        char *l2 = xu_slurp(log2), *l = logs();
        cr_assert(said_s2, "the second sending bridge said nothing:\n%s", l2);
        cr_assert(said_r, "the receiving bridge said nothing of the refused connection:\n%s", l);
        cr_assert_eq(xu_count(l2, "connected to the remote bridge"), 0, "%s", l2);
        free(l2);
        free(l);
        /* the first sending bridge still delivers */
        int rc = xu_finish(client_spawn("c", XU_ARGS("1"), 1), 30000, "engine-client");
        char *o = xu_output("c");
        l = logs();
        cr_assert_eq(rc, 0, "%s%s", o, l);
        free(o);
        free(l);
        xu_assert_same(xu_path("src/a.bin"), xu_path("outb/a.bin"));
        shm_unlink(seg2);
}

/*
 * Connections cut short during NNG's SP handshake (a FIN or a RST, with or without half a
 * header) must not keep the receiving bridge from taking the next one: anyone who can reach
 * the port can make them. NNG 1.5.2 (Debian 12's) stops a listener for good when its transport
 * reports NNG_ECLOSED during the handshake (nanomsg/nng#1518, fixed in 1.6; over TCP that is an
 * EPIPE on the send of its header). These cases end in other errors (a 100 ms back-off, then
 * NNG accepts again); the test keeps that so.
 */
Test(bridge, connections_closed_during_the_handshake_do_not_stop_the_listener, .timeout = 60)
{
        xu_make_file(xu_path("src/a.bin"), 1 * MiB + 5, 12);
        write_r(0, NULL, NULL);
        start_b();
        int port = start_r(xu_path("r.log"));
        for (int i = 0; i < 20; i++) {
                int fd = connect_local(port);
                if (i % 2) { /* half of them send half an SP header first */
                        const unsigned char part[4] = {0, 'S', 'P', 0};
                        if (write(fd, part, sizeof(part)) < 0) {
                                /* refused early: fine */
                        }
                }
                if (i % 4 >= 2) { /* half of them reset the connection (RST, not FIN) */
                        struct linger lg = {.l_onoff = 1, .l_linger = 0};
                        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                }
                close(fd);
                usleep(20000);
        }
        deliver_one(port, 30000);
}

/* ---- two network namespaces ---------------------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
        char cmd[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        return system(cmd);
}

/* As root with ip netns: two fresh namespaces joined by a veth pair, 10.77.n.1 (B.netns[0],
 * where S runs; its end of the pair is va) and 10.77.n.2 (B.netns[1], where R runs). Returns
 * n, or skips the test where namespaces cannot be made. */
static int netns_pair(char va[16])
{
        if (geteuid() != 0 || sh("ip netns list >/dev/null 2>&1") != 0) {
                teardown();
                cr_skip_test("needs root and ip netns: the namespace variant is skipped");
        }
        int n = (int)(getpid() % 200) + 20;
        snprintf(B.netns[0], sizeof(B.netns[0]), "engbr%da", (int)getpid());
        snprintf(B.netns[1], sizeof(B.netns[1]), "engbr%db", (int)getpid());
        char vb[16];
        snprintf(va, 16, "ebr%da", (int)getpid() % 100000);
        snprintf(vb, sizeof(vb), "ebr%db", (int)getpid() % 100000);
        if (sh("ip netns add %s && ip netns add %s", B.netns[0], B.netns[1]) != 0 ||
            sh("ip link add %s type veth peer name %s", va, vb) != 0) {
                teardown();
                cr_skip_test("cannot create namespaces or a veth pair here (a container without "
                             "CAP_NET_ADMIN?): the namespace variant is skipped");
        }
        cr_assert_eq(sh("ip link set %s netns %s && ip link set %s netns %s", va, B.netns[0], vb,
                        B.netns[1]),
                     0);
        cr_assert_eq(sh("ip -n %s addr add 10.77.%d.1/30 dev %s && ip -n %s link set %s up && "
                        "ip -n %s link set lo up",
                        B.netns[0], n, va, B.netns[0], va, B.netns[0]),
                     0);
        cr_assert_eq(sh("ip -n %s addr add 10.77.%d.2/30 dev %s && ip -n %s link set %s up && "
                        "ip -n %s link set lo up",
                        B.netns[1], n, vb, B.netns[1], vb, B.netns[1]),
                     0);
        return n;
}

/* Server B and bridge R (in B.netns[1], listening on 10.77.n.2), then bridge S (in
 * B.netns[0]) with the streams st; server_extra as in write_r. */
static void start_netns(int n, const char *server_extra, const xu_stream_t *st, size_t ns)
{
        char t[1024];
        snprintf(t, sizeof(t),
                 "<streams>\n  <server name=\"%s\" outputpath=\"outb\" %s/>\n"
                 "  <bridge listen=\"tcp://10.77.%d.2:0\"/>\n</streams>\n",
                 B.seg_b, server_extra ? server_extra : "timeout=\"5\"", n);
        xu_write_text(B.xml_r, t);
        start_b();
        char *argv_r[] = {"/usr/sbin/ip", "netns", "exec",  B.netns[1],
                          XU_BRIDGE,      "-c",    B.xml_r, NULL};
        B.r = start_logged(argv_r, xu_path("r.log"), "attached to the engine-server");
        char *s = xu_slurp(xu_path("r.log"));
        int port = atoi(strstr(s, "(port ") + 6);
        free(s);
        char u[64];
        snprintf(u, sizeof(u), "tcp://10.77.%d.2:%d", n, port);
        write_s(u, NULL, st, ns);
        if (server_extra != NULL) { /* the same timeout on the sending host */
                char *x = xu_slurp(B.xml_s);
                char *p = strstr(x, "timeout=\"5\"");
                cr_assert_not_null(p);
                char out[4096];
                snprintf(out, sizeof(out), "%.*s%s%s", (int)(p - x), x, server_extra,
                         p + strlen("timeout=\"5\""));
                xu_write_text(B.xml_s, out);
                free(x);
        }
        char *argv_s[] = {"/usr/sbin/ip", "netns", "exec",  B.netns[0],
                          XU_BRIDGE,      "-c",    B.xml_s, NULL};
        B.s = start_logged(argv_s, xu_path("s.log"), "connected to the remote bridge");
        cr_assert(log_wait_n(xu_path("s.log"), "serving", 1, 10000));
}

/* As root: S and R in two namespaces; a 10 MiB file crosses the veth pair. */
Test(bridge, a_transfer_crosses_two_network_namespaces)
{
        char va[16];
        int n = netns_pair(va);
        xu_make_file(xu_path("src/ns.bin"), 10 * MiB + 17, 21);
        start_netns(n, NULL, &(xu_stream_t){1, "src/ns.bin"}, 1);
        int rc = xu_finish(client_spawn("c", XU_ARGS("1"), 1), 20000, "engine-client");
        char *o = xu_output("c"), *l = logs();
        cr_assert_eq(rc, 0, "%s%s", o, l);
        cr_assert_not_null(strstr(l, "sending bridge connected from 10.77."), "%s", l);
        free(o);
        free(l);
        xu_assert_same(xu_path("src/ns.bin"), xu_path("outb/ns.bin"));
}

/*
 * As root: the network goes silent mid-transfer (the sending host's link goes down: no RST,
 * no FIN, nothing). The stream fails with a reason within the timeout (2 s here), nothing is
 * published under the final name, the receiving side gives the real stream up (its temporary
 * file goes), and once the link is back the bridges find each other again by themselves: a
 * new transfer succeeds. Server B is stopped (SIGSTOP) while the link goes down, so that the
 * transfer is certainly in flight, with frames queued and credits owed.
 */
Test(bridge, a_silent_network_fails_the_stream_in_time_and_the_bridges_recover, .timeout = 120)
{
        char va[16];
        int n = netns_pair(va);
        xu_make_file(xu_path("src/big.bin"), 160 * MiB + 5, 23);
        xu_make_file(xu_path("src/after.bin"), 1 * MiB + 3, 24);
        xu_stream_t st[] = {{1, "src/big.bin"}, {2, "src/after.bin"}};
        start_netns(n, "timeout=\"2\"", st, 2);
        pid_t c = client_spawn("c", XU_ARGS("1"), 1);
        /* In flight once server B has its temporary file: stop B there, so that R holds
         * frames it cannot deliver and S waits for credit, then cut the link. */
        uint64_t until = xu_now_ms() + 20000;
        while (xu_temps() == 0 && xu_now_ms() < until)
                xu_sleep_ms(1);
        cr_assert_eq(kill(B.b, SIGSTOP), 0);
        char *l0 = logs();
        cr_assert_gt(xu_temps(), 0, "the transfer never started:\n%s", l0);
        free(l0);
        xu_sleep_ms(300);
        cr_assert_eq(sh("ip -n %s link set %s down", B.netns[0], va), 0);
        uint64_t t0 = xu_now_ms();
        cr_assert_eq(kill(B.b, SIGCONT), 0);
        int rc = xu_finish(c, 30000, "engine-client");
        uint64_t took = xu_now_ms() - t0;
        char *o = xu_output("c"), *l = logs();
        cr_assert_eq(rc, 1, "the client should fail (exit 1), got %d:\n%s%s", rc, o, l);
        cr_assert_not_null(strstr(o, "bridge"), "the client's reason names the bridge:\n%s", o);
        /* the timeout is 2 s; allow for a loaded machine */
        cr_assert_lt(took, 12000, "the client failed after %llu ms (timeout 2 s):\n%s",
                     (unsigned long long)took, o);
        cr_log_info("silent network: the client failed %llu ms after the link went down",
                    (unsigned long long)took);
        free(o);
        free(l);
        cr_assert_eq(access(xu_path("outb/big.bin"), F_OK), -1, "a partial file was published");
        l = logs();
        cr_assert(temps_gone(20000), "server B kept the temporary file:\n%s", l);
        free(l);
        /* The link comes back: the bridges find each other again by themselves. */
        cr_assert_eq(sh("ip -n %s link set %s up", B.netns[0], va), 0);
        uint64_t end = xu_now_ms() + 40000;
        int tries = 0;
        for (;;) {
                char tag[16];
                snprintf(tag, sizeof(tag), "a%d", tries++);
                rc = xu_finish(client_spawn(tag, XU_ARGS("2"), 1), 20000, "engine-client");
                if (rc == 0 || xu_now_ms() > end)
                        break;
                xu_sleep_ms(500);
        }
        l = logs();
        cr_assert_eq(rc, 0,
                     "no transfer succeeded within 40 s of the link coming back (%d tries):\n%s",
                     tries, l);
        free(l);
        cr_log_info("link back: a transfer succeeded after %d tries", tries);
        xu_assert_same(xu_path("src/after.bin"), xu_path("outb/after.bin"));
        cr_assert_eq(access(xu_path("outb/big.bin"), F_OK), -1);
}

/* ---- frames -------------------------------------------------------------------------- */

static int decode(const br_hdr_t *h, const void *p, uint32_t len, br_side_t side, const char **why)
{
        nng_msg *m = br_frame(h, p, len);
        cr_assert_not_null(m);
        br_hdr_t out;
        int rc = br_decode(nng_msg_body(m), nng_msg_len(m), side, &out, why);
        if (rc == 0)
                cr_assert(out.type == h->type && out.cmd == h->cmd && out.link == h->link &&
                          out.epoch == h->epoch && out.arg == h->arg && out.len == len);
        nng_msg_free(m);
        return rc;
}

Test(bridge_wire, every_rule_of_a_frame_is_checked, .timeout = 10)
{
        const char *why = NULL;
        unsigned char hello[BR_HELLO_LEN];
        br_hello_put(hello, 8, 64 * MiB);
        static unsigned char big[BR_MAX_PAYLOAD + 1];
        struct {
                br_hdr_t h;
                const void *p;
                uint32_t len;
                br_side_t side;
                bool ok;
        } c[] = {
            {{.type = BR_OPEN, .link = 1, .epoch = 9, .arg = 42}, NULL, 0, BR_AT_RECEIVER, true},
            /* ALIVE: both ways, link 0 and nothing else */
            {{.type = BR_ALIVE, .epoch = 9}, NULL, 0, BR_AT_RECEIVER, true},
            {{.type = BR_ALIVE, .epoch = 9}, NULL, 0, BR_AT_SENDER, true},
            {{.type = BR_ALIVE, .link = 1, .epoch = 9}, NULL, 0, BR_AT_RECEIVER, false},
            {{.type = BR_ALIVE, .link = 1, .epoch = 9}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_ALIVE, .epoch = 9, .arg = 1}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_ALIVE, .epoch = 9, .cmd = 1}, NULL, 0, BR_AT_RECEIVER, false},
            {{.type = BR_ALIVE, .epoch = 9}, "x", 1, BR_AT_RECEIVER, false},
            {{.type = BR_ALIVE, .epoch = 0}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_OPEN, .link = 0, .epoch = 9}, NULL, 0, BR_AT_RECEIVER, false},
            {{.type = BR_OPEN, .link = 1, .epoch = 0}, NULL, 0, BR_AT_RECEIVER, false},
            {{.type = BR_OPEN, .link = 1, .epoch = 9, .arg = 1ull << 32},
             NULL,
             0,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_OPEN, .link = 1, .epoch = 9}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_OPEN, .link = 1, .epoch = 9},
             "a.bin",
             5,
             BR_AT_RECEIVER,
             true},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_OPEN, .link = 1, .epoch = 9},
             NULL,
             0,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_OPEN, .link = 1, .epoch = 9},
             big,
             BR_NAME_WIRE + 1,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_DATA, .link = 1, .epoch = 9},
             big,
             BR_MAX_PAYLOAD,
             BR_AT_RECEIVER,
             true},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_DATA, .link = 1, .epoch = 9},
             big,
             BR_MAX_PAYLOAD + 1,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_DATA, .link = 1, .epoch = 9},
             NULL,
             0,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_MSG, .cmd = ENG_C_FILE_END, .link = 1, .epoch = 9},
             "x",
             1,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_MSG, .cmd = ENG_S_FILE_DONE, .link = 1, .epoch = 9},
             NULL,
             0,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_CLOSE, .link = 1, .epoch = 9, .arg = 4096},
             NULL,
             0,
             BR_AT_RECEIVER,
             false},
            {{.type = BR_HELLO, .epoch = 9}, hello, BR_HELLO_LEN, BR_AT_SENDER, true},
            {{.type = BR_HELLO, .epoch = 9}, hello, 8, BR_AT_SENDER, false},
            {{.type = BR_HELLO, .link = 3, .epoch = 9}, hello, BR_HELLO_LEN, BR_AT_SENDER, false},
            {{.type = BR_REPLY, .cmd = ENG_S_FILE_FAIL, .link = 1, .epoch = 9, .arg = 5},
             "no",
             2,
             BR_AT_SENDER,
             true},
            {{.type = BR_REPLY, .cmd = ENG_S_FILE_FAIL, .link = 1, .epoch = 9, .arg = 5},
             big,
             BR_TEXT_MAX + 1,
             BR_AT_SENDER,
             false},
            {{.type = BR_REPLY, .cmd = ENG_S_FILE_FAIL, .link = 1, .epoch = 9, .arg = 1ull << 40},
             NULL,
             0,
             BR_AT_SENDER,
             false},
            {{.type = BR_REPLY, .cmd = ENG_S_FILE_READY, .link = 1, .epoch = 9},
             "x",
             1,
             BR_AT_SENDER,
             false},
            {{.type = BR_REPLY, .cmd = ENG_C_PING, .link = 1, .epoch = 9},
             NULL,
             0,
             BR_AT_SENDER,
             false},
            {{.type = BR_CREDIT, .link = 1, .epoch = 9, .arg = 0}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_CREDIT, .link = 1, .epoch = 9, .arg = 1025}, NULL, 0, BR_AT_SENDER, false},
            {{.type = BR_END, .link = 1, .epoch = 9, .arg = 5}, "gone", 4, BR_AT_SENDER, true},
            {{.type = BR_END, .link = 1, .epoch = 9, .arg = 5000}, NULL, 0, BR_AT_SENDER, false},
            {{.type = 99, .link = 1, .epoch = 9}, NULL, 0, BR_AT_RECEIVER, false},
        };
        for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
                why = NULL;
                int rc = decode(&c[i].h, c[i].p, c[i].len, c[i].side, &why);
                cr_assert_eq(rc == 0, c[i].ok, "case %zu: %s", i, why ? why : "accepted");
                if (!c[i].ok)
                        cr_assert_not_null(why, "case %zu refused without a reason", i);
        }
        /* a header whose len disagrees with the message, and a message shorter than a header */
        nng_msg *m = br_frame(&(br_hdr_t){.type = BR_OPEN, .link = 1, .epoch = 9}, NULL, 0);
        br_hdr_t h;
        cr_assert_neq(br_decode(nng_msg_body(m), BR_HDR - 1, BR_AT_RECEIVER, &h, &why), 0);
        cr_assert_eq(nng_msg_append(m, "z", 1), 0);
        cr_assert_neq(br_decode(nng_msg_body(m), nng_msg_len(m), BR_AT_RECEIVER, &h, &why), 0);
        cr_assert_str_eq(why, "length field does not match the message");
        nng_msg_free(m);
        uint32_t w;
        uint64_t mem;
        cr_assert_eq(br_hello_get(hello, &w, &mem), 0);
        cr_assert(w == 8 && mem == 64 * MiB);
        hello[0] ^= 1;
        cr_assert_neq(br_hello_get(hello, &w, &mem), 0);
}

/* ---- options ------------------------------------------------------------------------- */

static const char *opts_file(const char *body)
{
        static char p[XU_PATH];
        snprintf(p, sizeof(p), "%s/o.xml", X.dir);
        char t[2048];
        snprintf(t, sizeof(t), "<streams>\n%s</streams>\n", body);
        xu_write_text(p, t);
        return p;
}

Test(bridge, the_bridge_element_is_validated_with_line_numbers, .timeout = 10)
{
        eng_opts_t o;
        char err[1024];
        cr_assert_eq(eng_opts_load(opts_file("<server name=\"/x\"/>\n<bridge connect=\"tcp://h:1\" "
                                             "window=\"3\" memory=\"8MiB\" streams=\"9\"/>\n"),
                                   &o, err, sizeof(err)),
                     0, "%s", err);
        cr_assert_str_eq(o.bridge.connect, "tcp://h:1");
        cr_assert_null(o.bridge.listen);
        cr_assert_str_eq(o.bridge.segment, "/x"); /* the <server> name by default */
        cr_assert(o.bridge.window == 3 && o.bridge.memory == 8 * MiB && o.bridge.streams == 9);
        cr_assert_eq(o.bridge.line, 3);
        eng_opts_free(&o);
        cr_assert_eq(eng_opts_load(opts_file("<bridge listen=\"tcp://0.0.0.0:7450\" "
                                             "segment=\"/engine-b\"/>\n"),
                                   &o, err, sizeof(err)),
                     0, "%s", err);
        cr_assert_str_eq(o.bridge.listen, "tcp://0.0.0.0:7450");
        cr_assert_str_eq(o.bridge.segment, "/engine-b");
        cr_assert(o.bridge.window == 8 && o.bridge.memory == 64 * MiB && o.bridge.streams == 256);
        eng_opts_free(&o);
        static const struct {
                const char *body, *want;
        } bad[] = {
            {"\n<bridge/>\n", ":3: <bridge> needs exactly one of 'listen'"},
            {"<bridge listen=\"tcp://a:1\" connect=\"tcp://b:2\"/>\n",
             ":2: <bridge> needs exactly"},
            {"<bridge connect=\"http://a:1\"/>\n", ":2: attribute 'connect': 'http://a:1' is not"},
            {"<bridge connect=\"tcp://a b:1\"/>\n", ":2: attribute 'connect'"},
            {"<bridge listen=\"tcp://a:70000\"/>\n", ":2: attribute 'listen'"},
            {"<bridge listen=\"tcp://:1\"/>\n", ":2: attribute 'listen'"},
            {"<bridge listen=\"tcp://a:1\" window=\"0\"/>\n", ":2: attribute 'window'"},
            {"<bridge listen=\"tcp://a:1\" memory=\"1KiB\"/>\n", ":2: attribute 'memory'"},
            {"<bridge listen=\"tcp://a:1\" segment=\"x\"/>\n", ":2: attribute 'segment'"},
            {"<bridge listen=\"tcp://a:1\" port=\"1\"/>\n",
             ":2: <bridge>: unknown attribute 'port'"},
            {"<bridge listen=\"tcp://a:1\"/>\n<bridge listen=\"tcp://a:2\"/>\n",
             ":3: a second <bridge> element (the first is on line 2)"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                cr_assert_neq(eng_opts_load(opts_file(bad[i].body), &o, err, sizeof(err)), 0,
                              "case %zu accepted", i);
                cr_assert_not_null(strstr(err, bad[i].want), "case %zu: '%s' lacks '%s'", i, err,
                                   bad[i].want);
        }
        /* engine-bridge without a <bridge>: a usage error naming what is missing */
        opts_file("<server name=\"/x\"/>\n");
        char *argv[] = {XU_BRIDGE, "-c", (char *)opts_file("<server name=\"/x\"/>\n"), NULL};
        int rc = xu_run(5000, xu_path("nb.out"), xu_path("nb.err"), argv);
        char *e = xu_slurp(xu_path("nb.err"));
        cr_assert_eq(rc, 2, "%s", e);
        cr_assert_not_null(strstr(e, "no <bridge> element"), "%s", e);
        free(e);
        char *hv[] = {XU_BRIDGE, "--help", NULL};
        cr_assert_eq(xu_run(5000, xu_path("h.out"), NULL, hv), 0);
        cr_assert(xu_file_has(xu_path("h.out"), "usage: engine-bridge"));
}
