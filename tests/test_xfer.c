/*
 * test_xfer.c - the file-transfer service end to end: the real engine-server and
 * engine-client binaries, fork+exec'd with a per-test options file, folder and segment name.
 *
 * What a user relies on: every file arrives byte-identical (sizes around the chunk payload,
 * a large one, many streams from two processes at once); the command lines fail clearly
 * and with the documented status; shutdown (SIGTERM, grace period, a second SIGTERM) and a
 * client's death never leave a partial file under a final name, a temporary file, or the
 * segment behind; two streams sending one name at once are refused, not interleaved; a later
 * transfer replaces a file atomically; ping prints its percentiles; output is plain when it
 * is not a terminal.
 */
#include <poll.h>
#include <pty.h>
#include <sys/ioctl.h>

#include "arena_int.h"
#include "internal.h"
#include "xfer_int.h"
#include "xfer_util.h"

#define CHUNK ((256u << 10) - 64) /* payload of the default 256 KiB chunk block */
#define MiB   (1ull << 20)

TestSuite(xfer, .init = xu_setup, .fini = xu_teardown, .timeout = 120);

/* ---- helpers ------------------------------------------------------------------------ */

/* The line of text starting with prefix, as a new string (NULL if none). */
static char *line_of(const char *text, const char *prefix)
{
        size_t n = strlen(prefix);
        for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                if (strncmp(p, prefix, n) == 0) {
                        const char *e = strchr(p, '\n');
                        return strndup(p, e ? (size_t)(e - p) : strlen(p));
                }
        }
        return NULL;
}

/* The client's stdout line for stream id (asserts there is one). Caller frees. */
static char *client_line(const char *tag, unsigned id)
{
        char *out = xu_slurp(xu_path("%s.out", tag));
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "stream %u ", id);
        char *l = line_of(out, prefix);
        cr_assert_not_null(l, "no line for stream %u in the client's output:\n%s", id, out);
        free(out);
        return l;
}

/* The client's stdout line for stream id says "delivered and verified". */
static void assert_client_delivered(const char *tag, unsigned id)
{
        char *l = client_line(tag, id);
        cr_assert_not_null(strstr(l, "delivered and verified"), "stream %u: %s", id, l);
        free(l);
}

/* Lines of the server log about stream id (its fields begin "stream=<id> pid="), and with
 * also anywhere in the line if also is not NULL. */
static int log_lines(const char *log, unsigned id, const char *also)
{
        char needle[48];
        snprintf(needle, sizeof(needle), " stream=%u pid=", id);
        int n = 0;
        for (const char *p = log; (p = strstr(p, needle)) != NULL; p++) {
                const char *b = p, *e = strchr(p, '\n');
                while (b > log && b[-1] != '\n')
                        b--;
                char *l = strndup(b, e ? (size_t)(e - b) : strlen(b));
                if (also == NULL || strstr(l, also))
                        n++;
                free(l);
        }
        return n;
}

/* Each stream id has exactly one "verified" line in the server log, and no other line. */
static void assert_log_one_line_each(const unsigned *ids, size_t n)
{
        char *log = xu_slurp(X.slog);
        for (size_t i = 0; i < n; i++) {
                cr_assert_eq(log_lines(log, ids[i], NULL), 1,
                             "stream %u: want exactly one line in the server log:\n%s", ids[i],
                             log);
                cr_assert_eq(log_lines(log, ids[i], "verified"), 1,
                             "stream %u not verified in the server log:\n%s", ids[i], log);
        }
        cr_assert_eq(xu_count(log, "verified"), (int)n, "server log:\n%s", log);
        free(log);
}

/* Send the given sizes as streams 1..n (files src/f<id>.bin), one client run per stream
 * or all in one run, and check everything a user would. */
static void send_sizes(const char *extra, const uint64_t *sizes, size_t n, bool one_run)
{
        xu_stream_t st[16];
        char names[16][64];
        unsigned ids[16];
        cr_assert_leq(n, 16);
        for (size_t i = 0; i < n; i++) {
                ids[i] = (unsigned)i + 1;
                snprintf(names[i], sizeof(names[i]), "src/f%u.bin", ids[i]);
                st[i] = (xu_stream_t){ids[i], names[i]};
                xu_make_file(xu_path("%s", names[i]), sizes[i], i + 1);
        }
        xu_write_opts(extra, st, n);
        xu_server_start();
        if (one_run) {
                const char *args[16];
                char num[16][12];
                for (size_t i = 0; i < n; i++) {
                        snprintf(num[i], sizeof(num[i]), "%u", ids[i]);
                        args[i] = num[i];
                }
                int rc = xu_client_v("c", 60000, args, n);
                char *o = xu_output("c");
                cr_assert_eq(rc, 0, "client exit %d\n%s", rc, o);
                free(o);
                for (size_t i = 0; i < n; i++)
                        assert_client_delivered("c", ids[i]);
        } else {
                for (size_t i = 0; i < n; i++) {
                        char tag[16], num[12];
                        snprintf(tag, sizeof(tag), "c%u", ids[i]);
                        snprintf(num, sizeof(num), "%u", ids[i]);
                        int rc = xu_client(tag, 60000, num);
                        char *o = xu_output(tag);
                        cr_assert_eq(rc, 0, "%llu-byte file: client exit %d\n%s",
                                     (unsigned long long)sizes[i], rc, o);
                        free(o);
                        assert_client_delivered(tag, ids[i]);
                }
        }
        for (size_t i = 0; i < n; i++)
                xu_assert_same(xu_path("%s", names[i]), xu_path("out/f%u.bin", ids[i]));
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        assert_log_one_line_each(ids, n);
}

/* ---- delivery ----------------------------------------------------------------------- */

Test(xfer, files_at_the_chunk_boundaries_each_arrive_byte_identical)
{
        const uint64_t sizes[] = {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1};
        send_sizes(NULL, sizes, sizeof(sizes) / sizeof(sizes[0]), false);
}

Test(xfer, file_over_100_MiB_arrives_byte_identical)
{
        const uint64_t sizes[] = {100 * MiB + 12345};
        send_sizes(NULL, sizes, 1, false);
}

Test(xfer, small_chunk_setting_splits_files_at_its_own_boundaries)
{
        const uint32_t c = 4096 - 64;
        const uint64_t sizes[] = {c - 1, c, c + 1, 3 * c, MiB + 1};
        send_sizes("chunk=\"4KiB\"", sizes, sizeof(sizes) / sizeof(sizes[0]), true);
}

Test(xfer, two_clients_with_six_streams_each_deliver_every_file_at_once)
{
        const uint64_t sizes[12] = {0,       1,           4096,     CHUNK - 1,
                                    CHUNK,   CHUNK + 1,   MiB,      3 * MiB + 12345,
                                    5 * MiB, 8 * MiB + 1, 10 * MiB, 16 * MiB - 1};
        xu_stream_t st[12];
        char names[12][32];
        unsigned ids[12];
        for (unsigned i = 0; i < 12; i++) {
                ids[i] = i + 1;
                snprintf(names[i], sizeof(names[i]), "src/s%u.bin", i + 1);
                st[i] = (xu_stream_t){i + 1, names[i]};
                xu_make_file(xu_path("%s", names[i]), sizes[i], 100 + i);
        }
        xu_write_opts(NULL, st, 12);
        xu_server_start();
        pid_t a = xu_client_spawn("a", XU_ARGS("1", "2", "3", "4", "5", "6"), 6);
        pid_t b = xu_client_spawn("b", XU_ARGS("7", "8", "9", "10", "11", "12"), 6);
        int ra = xu_finish(a, 60000, "client a"), rb = xu_finish(b, 60000, "client b");
        char *oa = xu_output("a"), *ob = xu_output("b");
        cr_assert(ra == 0 && rb == 0, "clients exited %d and %d\n%s\n%s", ra, rb, oa, ob);
        free(oa);
        free(ob);
        for (unsigned i = 0; i < 12; i++) {
                assert_client_delivered(i < 6 ? "a" : "b", i + 1);
                xu_assert_same(xu_path("%s", names[i]), xu_path("out/s%u.bin", i + 1));
        }
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        assert_log_one_line_each(ids, 12);
}

/* The seconds a client's stdout line reports for stream id ("... bytes in S s ..."). */
static double client_secs(const char *tag, unsigned id)
{
        char *l = client_line(tag, id);
        const char *in = strstr(l, " bytes in ");
        cr_assert_not_null(in, "stream %u: %s", id, l);
        double v = strtod(in + strlen(" bytes in "), NULL);
        free(l);
        return v;
}

/* One client thread drives every stream: a big file must not keep a small one that started
 * with it from finishing (each step of a stream sends a bounded burst, then the next stream
 * gets its turn). */
Test(xfer, small_file_finishes_long_before_a_big_one_sent_beside_it)
{
        xu_make_file(xu_path("src/big.bin"), 256 * MiB, 7);
        xu_make_file(xu_path("src/small.bin"), 4096, 8);
        xu_stream_t st[2] = {{1, "src/big.bin"}, {2, "src/small.bin"}};
        xu_write_opts(NULL, st, 2);
        xu_server_start();
        int rc = xu_client("c", 60000, "1", "2");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "client exited %d\n%s", rc, o);
        free(o);
        double big = client_secs("c", 1), small = client_secs("c", 2);
        cr_log_info("big file %.3f s, small file beside it %.3f s", big, small);
        cr_assert_lt(small, big / 4, "the 4 KiB file took %.3f s next to a 256 MiB one (%.3f s)",
                     small, big);
        xu_assert_same(xu_path("src/small.bin"), xu_path("out/small.bin"));
        xu_assert_same(xu_path("src/big.bin"), xu_path("out/big.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, received_files_get_the_configured_file_mode)
{
        xu_make_file(xu_path("a.bin"), 1000, 1);
        xu_write_opts("filemode=\"0640\"", &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        int rc = xu_client("c", 30000, "1");
        cr_assert_eq(rc, 0);
        struct stat sb;
        cr_assert_eq(stat(xu_path("out/a.bin"), &sb), 0);
        cr_assert_eq(sb.st_mode & 07777, 0640, "mode %o", (unsigned)(sb.st_mode & 07777));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, missing_source_file_fails_only_its_own_stream)
{
        xu_make_file(xu_path("a.bin"), 5000, 1);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a.bin"}, {2, "not-there.bin"}}, 2);
        xu_server_start();
        int rc = xu_client("c", 30000, "1", "2");
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "exit %d\n%s", rc, o);
        assert_client_delivered("c", 1);
        char *out = xu_slurp(xu_path("c.out"));
        char *l = line_of(out, "stream 2 ");
        cr_assert_not_null(l, "%s", o);
        cr_assert_not_null(strstr(l, "FAILED"), "%s", l);
        cr_assert_not_null(strstr(l, "not-there.bin"), "the message should name the file: %s", l);
        cr_assert_not_null(strstr(l, "No such file"), "%s", l);
        free(l);
        free(out);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert(!xu_exists(xu_path("out/not-there.bin")));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- command lines ------------------------------------------------------------------ */

Test(xfer, client_without_ids_prints_usage_on_stderr_and_exits_2)
{
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        cr_assert_eq(xu_client("c", 5000), 2);
        char *e = xu_slurp(xu_path("c.err")), *o = xu_slurp(xu_path("c.out"));
        cr_assert_not_null(strstr(e, "usage: engine-client"), "stderr:\n%s", e);
        cr_assert_str_empty(o, "stdout should stay empty:\n%s", o);
        free(e);
        free(o);
        char *argv[] = {XU_CLIENT, NULL};
        cr_assert_eq(xu_run(5000, NULL, xu_path("bare.err"), argv), 2);
        cr_assert(xu_file_has(xu_path("bare.err"), "usage: engine-client"));
}

Test(xfer, client_with_an_unknown_id_exits_2_and_names_it)
{
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        cr_assert_eq(xu_client("c", 5000, "1", "99"), 2);
        char *e = xu_slurp(xu_path("c.err"));
        cr_assert_not_null(strstr(e, "99"), "stderr should name the id:\n%s", e);
        free(e);
        cr_assert_eq(xu_client("d", 5000, "abc"), 2);
        cr_assert(xu_file_has(xu_path("d.err"), "'abc'"));
        cr_assert_eq(xu_client("z", 5000, "0"), 2);
        cr_assert(xu_file_has(xu_path("z.err"), "'0'"));
        cr_assert_eq(xu_client("t", 5000, "1", "1"), 2);
        cr_assert(xu_file_has(xu_path("t.err"), "twice"));
}

Test(xfer, help_goes_to_stdout_with_status_0_for_both_programs)
{
        char *c[] = {XU_CLIENT, "--help", NULL}, *s[] = {XU_SERVER, "--help", NULL};
        cr_assert_eq(xu_run(5000, xu_path("c.out"), xu_path("c.err"), c), 0);
        cr_assert_eq(xu_run(5000, xu_path("s.out"), xu_path("s.err"), s), 0);
        cr_assert(xu_file_has(xu_path("c.out"), "usage: engine-client"));
        cr_assert(xu_file_has(xu_path("s.out"), "usage: engine-server"));
        char *ce = xu_slurp(xu_path("c.err")), *se = xu_slurp(xu_path("s.err"));
        cr_assert_str_empty(ce);
        cr_assert_str_empty(se);
        free(ce);
        free(se);
}

Test(xfer, unknown_option_or_argument_exits_2)
{
        char *c[] = {XU_CLIENT, "--frobnicate", NULL}, *s[] = {XU_SERVER, "--frobnicate", NULL};
        char *s2[] = {XU_SERVER, "extra", NULL};
        cr_assert_eq(xu_run(5000, NULL, xu_path("c.err"), c), 2);
        cr_assert_eq(xu_run(5000, NULL, xu_path("s.err"), s), 2);
        cr_assert_eq(xu_run(5000, NULL, xu_path("s2.err"), s2), 2);
        cr_assert(xu_file_has(xu_path("c.err"), "usage:"));
        cr_assert(xu_file_has(xu_path("s.err"), "usage:"));
        cr_assert(xu_file_has(xu_path("s2.err"), "extra"));
}

Test(xfer, bad_config_makes_both_programs_exit_2_with_file_and_line)
{
        static const struct {
                const char *what, *xml, *line, *says;
        } bad[] = {
            {"id out of range",
             "<streams>\n  <server outputpath=\"out\"/>\n  <stream id=\"1\" file=\"a.bin\"/>\n"
             "  <stream id=\"0\" file=\"b.bin\"/>\n</streams>\n",
             "4", "id"},
            {"malformed XML",
             "<streams>\n  <server outputpath=\"out\"/>\n  <stream id=\"1\" file=\"a.bin\">\n"
             "</streams>\n",
             "4", "tag mismatch"},
            {"missing attribute",
             "<streams>\n  <server outputpath=\"out\"/>\n  <stream id=\"1\"/>\n</streams>\n", "3",
             "'file'"},
            {"duplicate id",
             "<streams>\n  <server outputpath=\"out\"/>\n  <stream id=\"1\" file=\"a.bin\"/>\n"
             "  <stream id=\"1\" file=\"b.bin\"/>\n</streams>\n",
             "4", "already used on line 3"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                xu_write_text(X.cfg, bad[i].xml);
                char at[XU_PATH + 8];
                snprintf(at, sizeof(at), "%s:%s:", X.cfg, bad[i].line);
                char *s[] = {XU_SERVER, "-c", X.cfg, NULL};
                cr_assert_eq(xu_run(5000, NULL, xu_path("s.err"), s), 2, "%s", bad[i].what);
                char *e = xu_slurp(xu_path("s.err"));
                cr_assert(strstr(e, at) && strstr(e, bad[i].says),
                          "%s: server stderr should contain '%s' and '%s':\n%s", bad[i].what, at,
                          bad[i].says, e);
                free(e);
                cr_assert_eq(xu_client("c", 5000, "1"), 2, "%s", bad[i].what);
                e = xu_slurp(xu_path("c.err"));
                cr_assert(strstr(e, at) && strstr(e, bad[i].says),
                          "%s: client stderr should contain '%s' and '%s':\n%s", bad[i].what, at,
                          bad[i].says, e);
                free(e);
                cr_assert(!xu_exists(X.shm), "%s: a refused config must not create the segment",
                          bad[i].what);
        }
}

Test(xfer, missing_config_file_makes_both_programs_exit_2_saying_so)
{
        char *s[] = {XU_SERVER, "-c", X.cfg, NULL};
        cr_assert_eq(xu_run(5000, NULL, xu_path("s.err"), s), 2);
        cr_assert_eq(xu_client("c", 5000, "1"), 2);
        char *se = xu_slurp(xu_path("s.err")), *ce = xu_slurp(xu_path("c.err"));
        cr_assert(strstr(se, X.cfg) && strstr(se, "No such file"), "%s", se);
        cr_assert(strstr(ce, X.cfg) && strstr(ce, "No such file"), "%s", ce);
        free(se);
        free(ce);
}

Test(xfer, malformed_ping_count_or_payload_is_refused_with_exit_2)
{
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        static const char *const bad[][4] = {
            {"--ping", "-1", NULL},
            {"--ping", "1x", NULL},
            {"--ping", "4294967297", NULL},
            {"--ping", "10", "--payload", "abc"},
            {"--ping", "10", "--payload", "-5"},
            {"--ping", "abc", NULL},
        };
        char problems[4096] = "";
        size_t k = 0;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                size_t n = bad[i][2] ? 4 : 2;
                int rc = xu_client_v("c", 10000, bad[i], n);
                char *e = xu_slurp(xu_path("c.err"));
                char *nl = strchr(e, '\n');
                if (nl)
                        *nl = '\0';
                if (rc != 2 || strstr(e, bad[i][n - 1]) == NULL)
                        k += (size_t)snprintf(problems + k, sizeof(problems) - k,
                                              "  %s %s%s%s: exit %d, '%s'\n", bad[i][0], bad[i][1],
                                              n > 2 ? " --payload " : "", n > 2 ? bad[i][3] : "",
                                              rc, e);
                free(e);
                if (k >= sizeof(problems))
                        break;
        }
        cr_assert_eq(k, 0,
                     "want exit 2 and a message quoting the bad value; these were accepted or "
                     "unclear:\n%s",
                     problems);
}

Test(xfer, unusable_output_folder_stops_the_server_at_start_naming_it)
{
        xu_write_text(xu_path("blocker"), "a file, not a folder\n");
        char extra[XU_PATH + 32];
        snprintf(extra, sizeof(extra), "outputpath=\"blocker/out\"");
        /* xu_write_opts writes outputpath="out" first; write this one by hand */
        char text[2 * XU_PATH];
        snprintf(text, sizeof(text),
                 "<streams>\n  <server %s name=\"%s\"/>\n"
                 "  <stream id=\"1\" file=\"a.bin\"/>\n</streams>\n",
                 extra, X.name);
        xu_write_text(X.cfg, text);
        char *s[] = {XU_SERVER, "-c", X.cfg, NULL};
        int rc = xu_run(10000, NULL, xu_path("s.err"), s);
        char *e = xu_slurp(xu_path("s.err"));
        cr_assert(rc != 0 && rc < 128, "exit %d:\n%s", rc, e);
        cr_assert_not_null(strstr(e, "blocker/out"), "the message should name the folder:\n%s", e);
        free(e);
        cr_assert(!xu_exists(X.shm), "segment left behind");
}

/* ---- no server, a dead server, two servers ------------------------------------------ */

Test(xfer, client_without_a_server_fails_fast_and_clearly)
{
        xu_make_file(xu_path("a.bin"), 10, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        uint64_t t0 = xu_now_ms();
        int rc = xu_client("c", 10000, "1");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c");
        cr_assert_neq(rc, 0, "%s", o);
        cr_assert_lt(rc, 128, "the client crashed:\n%s", o);
        cr_assert_lt(ms, 5000, "took %llu ms", (unsigned long long)ms);
        char *e = xu_slurp(xu_path("c.err"));
        cr_assert_not_null(strstr(e, "server"), "%s", o);
        cr_assert_not_null(strstr(e, X.name), "the message should name the segment:\n%s", o);
        free(e);
        free(o);
        cr_assert_neq(xu_client("p", 10000, "--ping", "10"), 0);
}

Test(xfer, segment_of_a_killed_server_is_refused_by_clients_and_reclaimed_by_a_new_server)
{
        xu_make_file(xu_path("a.bin"), 300000, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        xu_kill(X.server);
        X.server = 0;
        cr_assert(xu_exists(X.shm), "expected the killed server's segment to stay behind");
        uint64_t t0 = xu_now_ms();
        int rc = xu_client("dead", 15000, "1");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("dead");
        cr_assert(rc != 0 && rc < 128, "exit %d\n%s", rc, o);
        cr_assert_lt(ms, 5000, "took %llu ms", (unsigned long long)ms);
        cr_assert_not_null(strstr(o, "server"), "%s", o);
        free(o);

        X.server = xu_server_start_log(xu_path("server2.log"));
        rc = xu_client("c", 30000, "1");
        o = xu_output("c");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, second_server_on_a_live_segment_refuses_and_the_first_keeps_serving)
{
        xu_make_file(xu_path("a.bin"), 300000, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        char *s[] = {XU_SERVER, "-c", X.cfg, NULL};
        int rc = xu_run(10000, NULL, xu_path("s2.err"), s);
        char *e = xu_slurp(xu_path("s2.err"));
        cr_assert(rc != 0 && rc < 128, "second server exit %d:\n%s", rc, e);
        cr_assert_not_null(strstr(e, "live server"), "%s", e);
        free(e);
        cr_assert(xu_exists(X.shm), "the refused server removed the live server's segment");
        rc = xu_client("c", 30000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- shutdown ----------------------------------------------------------------------- */

/* A server with one big stream; returns the client's pid once the server holds the
 * transfer's temporary file (the transfer is in flight). */
/*
 * SIGSTOP pid at a moment none of its threads holds a mutex of the segment. On the lock-free
 * transport nothing a stopped process holds blocks anyone, and one SIGSTOP is all. The mutex
 * baseline's arena lock and its streams' queue locks stall every process that needs them for
 * as long as their holder is stopped (robust mutexes cover death, not a stop: arena_mutex.c,
 * chan.c). That is the weakness the baseline is there to show, not what these tests are
 * about, so on it the process is let go and stopped again until it holds none (the kernel's
 * robust-futex protocol keeps the holder's TID in a held lock word).
 */
static bool tid_of(pid_t pid, uint32_t tid)
{
        char p[64];
        snprintf(p, sizeof(p), "/proc/%d/task/%u", (int)pid, tid);
        return tid != 0 && access(p, F_OK) == 0;
}

static bool holds(const pthread_mutex_t *m, pid_t pid)
{
        return tid_of(pid, (uint32_t)__atomic_load_n(&m->__data.__lock, __ATOMIC_ACQUIRE) &
                               0x3fffffffu); /* FUTEX_TID_MASK */
}

static bool holds_a_segment_lock(const struct eng_seg *sg, pid_t pid)
{
        if (holds(&sg->arena.hdr->mx, pid))
                return true;
        for (uint32_t i = 0; i < sg->max_streams; i++) {
                const struct eng_rec *r = seg_rec(sg, i);
                if (r != NULL && (holds(&r->c2s.q.m, pid) || holds(&r->s2c.q.m, pid)))
                        return true;
        }
        return false;
}

static bool is_stopped(pid_t pid)
{
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        char *st = xu_slurp(path);
        const char *e = st ? strrchr(st, ')') : NULL;
        bool t = e != NULL && e[1] == ' ' && e[2] == 'T';
        free(st);
        return t;
}

static void stop_outside_locks(pid_t pid)
{
        cr_assert_eq(kill(pid, SIGSTOP), 0);
        if (getenv("ENG_TEST_TRANSPORT") == NULL || strcmp(getenv("ENG_TEST_TRANSPORT"), "mutex"))
                return;
        struct eng_seg sg;
        cr_assert_eq(seg_attach(&sg, X.name), 0, "%s", eng_errmsg());
        int tries = 0;
        for (;; tries++) {
                uint64_t t0 = xu_now_ms();
                while (!is_stopped(pid) && xu_now_ms() - t0 < 2000)
                        usleep(200);
                cr_assert(is_stopped(pid), "pid %d did not stop", (int)pid);
                if (!holds_a_segment_lock(&sg, pid))
                        break;
                cr_assert_lt(tries, 1000, "pid %d held a segment mutex at each of 1000 stops",
                             (int)pid);
                kill(pid, SIGCONT);
                usleep(1000);
                kill(pid, SIGSTOP);
        }
        if (tries > 0)
                cr_log_info("stopped pid %d outside the segment's mutexes after %d retries",
                            (int)pid, tries);
        seg_unmap(&sg);
}

/* The check above can fail: a mutex a child holds is seen as held by it, and only by it. */
Test(xfer, a_mutex_held_by_a_stopped_process_is_seen_as_held)
{
        pthread_mutex_t *m =
            mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(m, MAP_FAILED);
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(m, &a);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = fork();
        cr_assert_geq(c, 0);
        if (c == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion leaves no child behind */
                pthread_mutex_lock(m);
                if (write(p[1], "l", 1) != 1)
                        _exit(1);
                pause();
                _exit(0);
        }
        char b;
        cr_assert_eq(read(p[0], &b, 1), 1);
        cr_assert(!holds(m, getpid()), "held by the wrong process");
        kill(c, SIGSTOP);
        cr_assert(holds(m, c), "a mutex the child holds is not seen as held");
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        cr_assert_eq(pthread_mutex_lock(m), EOWNERDEAD);
        pthread_mutex_consistent(m);
        pthread_mutex_unlock(m);
        cr_assert(!holds(m, c), "an unlocked mutex is seen as held");
        munmap(m, 4096);
        close(p[0]);
        close(p[1]);
}

/* The transfer failed: the client says so (mentioning the server), nothing is left. */
static void assert_failed_cleanly(pid_t c)
{
        int rc = xu_finish(c, 40000, "engine-client");
        char *o = xu_output("c");
        cr_assert(rc != 0 && rc < 128, "client exit %d:\n%s", rc, o);
        char *out = xu_slurp(xu_path("c.out"));
        char *l = line_of(out, "stream 1 ");
        cr_assert_not_null(l, "no report for stream 1:\n%s", o);
        cr_assert_not_null(strstr(l, "FAILED"), "%s", l);
        cr_assert_not_null(strstr(l, "server"), "the reason should mention the server: %s", l);
        free(l);
        free(out);
        free(o);
        cr_assert(!xu_exists(xu_path("out/big.bin")), "a partial file carries the final name");
        xu_assert_no_temps();
}

Test(xfer, sigterm_mid_transfer_completes_it_or_fails_it_cleanly)
{
        pid_t c = xu_start_big_transfer(512 * MiB);
        cr_assert_eq(xu_server_stop(), 0); /* also asserts the segment is gone */
        int rc = xu_finish(c, 40000, "engine-client");
        char *o = xu_output("c");
        cr_assert_lt(rc, 128, "the client crashed:\n%s", o);
        cr_log_info("the transfer %s before the server stopped", rc == 0 ? "completed" : "failed");
        if (rc == 0) {
                xu_assert_same(xu_path("big.bin"), xu_path("out/big.bin"));
        } else {
                cr_assert_not_null(strstr(o, "FAILED"), "%s", o);
                cr_assert(!xu_exists(xu_path("out/big.bin")),
                          "a partial file carries the final name");
        }
        free(o);
        xu_assert_no_temps();
        char *log = xu_slurp(X.slog);
        cr_assert_not_null(strstr(log, "SIGTERM: stopping"), "%s", log);
        cr_assert_not_null(strstr(log, "stopped; segment"), "%s", log);
        free(log);
}

Test(xfer, shutdown_refuses_new_files_and_fails_a_transfer_outliving_the_grace_period)
{
        pid_t c = xu_start_big_transfer(256 * MiB);
        stop_outside_locks(c); /* the client makes no progress: the grace period must run out */
        cr_assert_eq(xu_temps(), 1, "the transfer ended before the client could be paused");
        uint64_t t0 = xu_now_ms();
        kill(X.server, SIGTERM);
        cr_assert(xu_log_wait("waiting up to", 4000), "the server did not start its grace period");
        /* during the grace period new files are refused, promptly and clearly */
        xu_make_file(xu_path("late.bin"), 10, 3);
        char late[XU_PATH];
        snprintf(late, sizeof(late), "%s", xu_path("late.xml"));
        {
                char text[XU_PATH + 256];
                snprintf(text, sizeof(text),
                         "<streams><server outputpath=\"out\" name=\"%s\"/>"
                         "<stream id=\"2\" file=\"late.bin\"/></streams>\n",
                         X.name);
                xu_write_text(late, text);
        }
        char *lc[] = {XU_CLIENT, "-c", late, "2", NULL};
        int lrc = xu_run(4000, xu_path("late.out"), xu_path("late.err"), lc);
        char *lo = xu_output("late");
        cr_assert(lrc != 0 && lrc < 128, "a new file during shutdown: exit %d\n%s", lrc, lo);
        cr_assert_not_null(strstr(lo, "shutting down"), "%s", lo);
        free(lo);
        cr_assert(!xu_exists(xu_path("out/late.bin")));
        int st;
        bool ended = xu_wait(X.server, 12000, &st);
        uint64_t ms = xu_now_ms() - t0;
        cr_assert(ended, "server still running 12 s after SIGTERM");
        X.server = 0;
        cr_assert_eq(xu_code(st), 0);
        cr_assert_geq(ms, 4000, "the server stopped after %llu ms: no grace period",
                      (unsigned long long)ms);
        char *log = xu_slurp(X.slog);
        cr_assert_not_null(strstr(log, "waiting up to 5 s for 1 transfer"), "%s", log);
        cr_assert_eq(log_lines(log, 1, "FAILED"), 1, "server log:\n%s", log);
        free(log);
        cr_assert(!xu_exists(X.shm), "segment left behind");
        xu_assert_no_temps(); /* even before the client runs again */
        kill(c, SIGCONT);
        assert_failed_cleanly(c);
}

Test(xfer, second_sigterm_stops_at_once_and_the_transfer_fails_cleanly)
{
        pid_t c = xu_start_big_transfer(256 * MiB);
        stop_outside_locks(c);
        cr_assert_eq(xu_temps(), 1, "the transfer ended before the client could be paused");
        kill(X.server, SIGTERM);
        cr_assert(xu_log_wait("waiting up to", 5000), "the server did not start its grace period");
        uint64_t t0 = xu_now_ms();
        kill(X.server, SIGTERM);
        int st;
        bool ended = xu_wait(X.server, 10000, &st);
        uint64_t ms = xu_now_ms() - t0;
        cr_assert(ended, "server still running 10 s after the second SIGTERM");
        X.server = 0;
        cr_assert_eq(xu_code(st), 0);
        cr_assert_lt(ms, 2000, "second SIGTERM took %llu ms", (unsigned long long)ms);
        cr_assert(!xu_exists(X.shm), "segment left behind");
        xu_assert_no_temps();
        kill(c, SIGCONT);
        assert_failed_cleanly(c);
}

Test(xfer, client_killed_mid_transfer_leaves_nothing_and_the_server_keeps_serving)
{
        pid_t c = xu_start_big_transfer(256 * MiB);
        stop_outside_locks(c);
        cr_assert_eq(xu_temps(), 1, "the transfer ended before the client could be paused");
        uint64_t t0 = xu_now_ms();
        xu_kill(c);
        /* Noticed, logged and cleaned up within 1 s (the reap tick is 50 ms). */
        cr_assert(xu_log_wait("FAILED", 5000), "the server did not notice the client's death");
        cr_assert(xu_log_wait("exited: reclaimed", 5000), "the reclaim was not logged");
        while (xu_temps() != 0 && xu_now_ms() - t0 < 5000)
                usleep(2000);
        uint64_t ms = xu_now_ms() - t0;
        cr_log_info("client SIGKILLed: failure logged, records reclaimed, temporary file gone "
                    "after %llu ms",
                    (unsigned long long)ms);
        cr_assert_lt(ms, 1000, "the server took %llu ms to clean up after a dead client",
                     (unsigned long long)ms);
        char *log = xu_slurp(X.slog);
        cr_assert_not_null(strstr(log, "client went away"), "%s", log);
        free(log);
        xu_assert_no_temps();
        cr_assert(!xu_exists(xu_path("out/big.bin")));
        int rc = xu_client("again", 60000, "1");
        char *o = xu_output("again");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("big.bin"), xu_path("out/big.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, interrupted_client_reports_it_and_leaves_no_temporary_file)
{
        pid_t c = xu_start_big_transfer(256 * MiB);
        stop_outside_locks(c);
        cr_assert_eq(xu_temps(), 1, "the transfer ended before the client could be paused");
        kill(c, SIGINT);
        kill(c, SIGCONT);
        int rc = xu_finish(c, 15000, "engine-client");
        char *o = xu_output("c");
        /* It handled the signal (128 + SIGINT, as a shell reports an interrupted command; not
         * killed by it: xu_code would say 128 + SIGINT too, so the output must say why). */
        cr_assert_eq(rc, 128 + SIGINT, "exit %d\n%s", rc, o);
        cr_assert_not_null(strstr(o, "interrupted"), "%s", o);
        free(o);
        cr_assert(xu_log_wait("FAILED", 5000), "the server did not report the failed transfer");
        xu_assert_no_temps();
        cr_assert(!xu_exists(xu_path("out/big.bin")));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, stalled_server_makes_the_client_give_up_after_the_configured_timeout)
{
        xu_make_file(xu_path("big.bin"), 256 * MiB, 7);
        xu_write_opts("timeout=\"2\"", &(xu_stream_t){1, "big.bin"}, 1);
        xu_server_start();
        pid_t c = xu_client_spawn("c", XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, c), "no transfer in flight within 10 s");
        stop_outside_locks(X.server);
        cr_assert_eq(xu_temps(), 1, "the transfer ended before the server could be paused");
        uint64_t t0 = xu_now_ms();
        int rc = xu_finish(c, 20000, "engine-client with a stalled server");
        uint64_t ms = xu_now_ms() - t0;
        kill(X.server, SIGCONT);
        char *o = xu_output("c");
        cr_assert(rc != 0 && rc < 128, "exit %d\n%s", rc, o);
        cr_assert_geq(ms, 1500, "gave up after %llu ms, before the 2 s timeout\n%s",
                      (unsigned long long)ms, o);
        cr_assert_not_null(strstr(o, "FAILED"), "%s", o);
        free(o);
        cr_assert(xu_log_wait("FAILED", 5000), "the server did not end the abandoned transfer");
        xu_assert_no_temps();
        cr_assert(!xu_exists(xu_path("out/big.bin")));
        cr_assert_eq(xu_server_stop(), 0);
}

/* Ctrl-Z then fg: SIGSTOP + SIGCONT make sigwaitinfo fail with EINTR (signal(7)), which the
 * server once took for a stop signal and shut down. */
Test(xfer, server_paused_and_resumed_keeps_serving)
{
        xu_make_file(xu_path("f.bin"), 3 * MiB + 7, 11);
        xu_write_opts(NULL, &(xu_stream_t){1, "f.bin"}, 1);
        xu_server_start();
        for (int i = 0; i < 3; i++) {
                kill(X.server, SIGSTOP);
                xu_sleep_ms(50);
                kill(X.server, SIGCONT);
                xu_sleep_ms(50);
        }
        cr_assert(!xu_log_wait("stopping", 300), "the server stopped after SIGSTOP + SIGCONT:\n%s",
                  xu_slurp(X.slog));
        int rc = xu_client_v("c", 20000, XU_ARGS("1"), 1);
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "exit %d after the server was paused and resumed\n%s", rc, o);
        free(o);
        xu_assert_same(xu_path("f.bin"), xu_path("out/f.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- one name on two streams -------------------------------------------------------- */

Test(xfer, same_name_on_two_streams_at_once_is_delivered_once_or_refused)
{
        xu_make_file(xu_path("a/data.bin"), 64 * MiB, 1);
        xu_make_file(xu_path("b/data.bin"), 64 * MiB, 2);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a/data.bin"}, {2, "b/data.bin"}}, 2);
        xu_server_start();
        int rc = xu_client("c", 60000, "1", "2");
        char *o = xu_output("c");
        cr_assert(rc == 0 || rc == 1, "exit %d\n%s", rc, o);
        char *out = xu_slurp(xu_path("c.out"));
        bool delivered[2];
        for (unsigned id = 1; id <= 2; id++) {
                char prefix[16];
                snprintf(prefix, sizeof(prefix), "stream %u ", id);
                char *l = line_of(out, prefix);
                cr_assert_not_null(l, "no line for stream %u\n%s", id, o);
                delivered[id - 1] = strstr(l, "delivered and verified") != NULL;
                cr_assert(delivered[id - 1] ||
                              strstr(l, "being received on another stream") != NULL,
                          "stream %u: neither delivered nor refused as a duplicate: %s", id, l);
                free(l);
        }
        cr_assert(delivered[0] || delivered[1], "neither stream delivered\n%s", o);
        cr_assert_eq(rc, delivered[0] && delivered[1] ? 0 : 1, "exit %d\n%s", rc, o);
        free(out);
        free(o);
        if (delivered[0] && !delivered[1])
                xu_assert_same(xu_path("a/data.bin"), xu_path("out/data.bin"));
        else if (delivered[1] && !delivered[0])
                xu_assert_same(xu_path("b/data.bin"), xu_path("out/data.bin"));
        else {
                /* both went through one after the other: the file is one of them, whole */
                struct stat sb;
                cr_assert_eq(stat(xu_path("out/data.bin"), &sb), 0);
                cr_assert_eq((uint64_t)sb.st_size, 64 * MiB);
        }
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
}

/* Both halves (first and last 64 KiB) of the file at path come from one source. */
static int whole_version(const char *path, const unsigned char *a, const unsigned char *b,
                         uint64_t size)
{
        enum { PIECE = 64 << 10 };
        static unsigned char head[PIECE], tail[PIECE];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -1; /* the final name vanished */
        struct stat sb;
        fstat(fd, &sb);
        int v = -2; /* wrong size */
        if ((uint64_t)sb.st_size == size && pread(fd, head, PIECE, 0) == PIECE &&
            pread(fd, tail, PIECE, (off_t)(size - PIECE)) == PIECE) {
                if (memcmp(head, a, PIECE) == 0 && memcmp(tail, a + size - PIECE, PIECE) == 0)
                        v = 1;
                else if (memcmp(head, b, PIECE) == 0 && memcmp(tail, b + size - PIECE, PIECE) == 0)
                        v = 2;
                else
                        v = -3; /* mixed or garbage */
        }
        close(fd);
        return v;
}

static const unsigned char *map_file(const char *path, uint64_t size)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        cr_assert(p != MAP_FAILED);
        close(fd);
        return p;
}

Test(xfer, later_transfer_of_the_same_name_replaces_the_file_atomically)
{
        const uint64_t size = 64 * MiB;
        xu_make_file(xu_path("a/data.bin"), size, 1);
        xu_make_file(xu_path("b/data.bin"), size, 2);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a/data.bin"}, {2, "b/data.bin"}}, 2);
        xu_server_start();
        int rc = xu_client("first", 60000, "1");
        cr_assert_eq(rc, 0);
        xu_assert_same(xu_path("a/data.bin"), xu_path("out/data.bin"));

        const unsigned char *a = map_file(xu_path("a/data.bin"), size);
        const unsigned char *b = map_file(xu_path("b/data.bin"), size);
        char final[XU_PATH];
        snprintf(final, sizeof(final), "%s", xu_path("out/data.bin"));
        pid_t c = xu_client_spawn("second", XU_ARGS("2"), 1);
        int looks = 0, st = 0;
        uint64_t end = xu_now_ms() + 60000;
        bool ended = false;
        while (!ended && xu_now_ms() < end) {
                ended = xu_wait(c, 0, &st);
                int v = whole_version(final, a, b, size);
                looks++;
                cr_assert(v > 0, "look %d at %s during the replacement saw %s", looks, final,
                          v == -1   ? "no file"
                          : v == -2 ? "a file of the wrong size"
                                    : "a mix of both versions");
        }
        if (!ended)
                xu_kill(c);
        cr_assert(ended, "the second client hung");
        char *o = xu_output("second");
        cr_assert_eq(xu_code(st), 0, "%s", o);
        free(o);
        cr_assert_gt(looks, 1);
        xu_assert_same(xu_path("b/data.bin"), final);
        munmap((void *)a, size);
        munmap((void *)b, size);
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        char *log = xu_slurp(X.slog);
        cr_assert_eq(log_lines(log, 1, "verified"), 1, "%s", log);
        cr_assert_eq(log_lines(log, 2, "verified"), 1, "%s", log);
        free(log);
}

/* ---- ping, repeated clients, output ------------------------------------------------- */

Test(xfer, ping_prints_latency_percentiles)
{
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        int rc = xu_client("p", 30000, "--ping", "2000");
        char *o = xu_output("p");
        cr_assert_eq(rc, 0, "%s", o);
        char *out = xu_slurp(xu_path("p.out"));
        for (const char *w = "p50 \0p99 \0p99.9 \0max \0"; *w; w += strlen(w) + 1)
                cr_assert_not_null(strstr(out, w), "'%s' missing:\n%s", w, o);
        cr_assert_not_null(strstr(out, "2000 round trips"), "%s", o);
        free(out);
        rc = xu_client("q", 30000, "--ping", "500", "--payload", "4096");
        free(o);
        o = xu_output("q");
        cr_assert_eq(rc, 0, "%s", o);
        cr_assert(xu_file_has(xu_path("q.out"), "4096-byte payload"), "%s", o);
        free(o);
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, ping_payload_too_large_for_a_buffer_is_refused_clearly)
{
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        int rc = xu_client("p", 30000, "--ping", "10", "--payload", "100000000");
        char *o = xu_output("p");
        cr_assert(rc != 0 && rc < 128, "exit %d\n%s", rc, o);
        cr_assert_not_null(strstr(o, "payload"),
                           "the message should say the payload is too big:\n%s", o);
        free(o);
        cr_assert_eq(xu_server_stop(), 0);
}

/* Short-lived clients one after another: each attaches, opens a stream at once and uses it.
 * Every one of them must succeed. */
Test(xfer, many_short_lived_clients_in_a_row_all_succeed)
{
        xu_make_file(xu_path("one.bin"), 1, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "one.bin"}, 1);
        xu_server_start();
        int bad = 0;
        char first[4096] = "";
        for (int i = 0; i < 30; i++) {
                int rc = xu_client("p", 10000, "--ping", "10");
                if (rc != 0 && bad++ == 0) {
                        char *o = xu_output("p");
                        snprintf(first, sizeof(first), "run %d (--ping 10) exit %d:\n%s", i, rc, o);
                        free(o);
                }
                rc = xu_client("c", 10000, "1");
                if (rc != 0 && bad++ == 0) {
                        char *o = xu_output("c");
                        snprintf(first, sizeof(first), "run %d (send) exit %d:\n%s", i, rc, o);
                        free(o);
                }
        }
        cr_assert_eq(bad, 0, "%d of 60 client runs failed; the first:\n%s", bad, first);
        cr_assert_eq(xu_server_stop(), 0);
}

/* On a terminal: one live progress row per stream, redrawn in place, each row clipped to the
 * terminal's width (a wrapped row would make the redraw overwrite the wrong rows). */
Test(xfer, client_progress_on_a_narrow_terminal_stays_one_row_per_stream)
{
        xu_make_file(xu_path("a-file-with-a-long-name.bin"), 64 * MiB, 1);
        xu_make_file(xu_path("b.bin"), 10, 2);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a-file-with-a-long-name.bin"}, {2, "b.bin"}}, 2);
        xu_server_start();
        enum { COLS = 60 };
        struct winsize ws = {.ws_row = 24, .ws_col = COLS};
        int fd;
        pid_t pid = forkpty(&fd, NULL, NULL, &ws);
        cr_assert_geq(pid, 0, "forkpty: %s", strerror(errno));
        if (pid == 0) {
                execl(XU_CLIENT, XU_CLIENT, "-c", X.cfg, "1", "2", (char *)NULL);
                _exit(127);
        }
        xu_track(pid);
        size_t cap = 1 << 20, len = 0;
        char *o = malloc(cap);
        uint64_t end = xu_now_ms() + 30000;
        for (;;) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                cr_assert_lt(xu_now_ms(), end, "engine-client on a terminal ran for 30 s");
                if (poll(&p, 1, 100) <= 0)
                        continue;
                ssize_t r = read(fd, o + len, cap - 1 - len);
                if (r <= 0)
                        break; /* EIO: the client closed the terminal (exited) */
                len += (size_t)r;
                cr_assert_lt(len, cap - 1, "too much output");
        }
        o[len] = '\0';
        close(fd);
        int st;
        cr_assert(xu_wait(pid, 5000, &st), "engine-client did not exit");
        cr_assert_eq(xu_code(st), 0, "%s", o);
        cr_assert_not_null(strstr(o, "\033[2A"), "no redraw of the 2 progress rows in:\n%s", o);
        cr_assert_not_null(strstr(o, "verified"), "%s", o);
        /* Every progress row (they start by clearing the row), without its escape sequences,
         * fits the terminal. The final result lines on stdout are not redrawn: they may wrap. */
        int rows = 0;
        for (char *l = strtok(o, "\n"); l; l = strtok(NULL, "\n")) {
                if (strstr(l, "\033[2K") == NULL)
                        continue;
                rows++;
                size_t w = 0;
                for (const char *c = l; *c; c++) {
                        if (*c == '\033') {
                                while (c[1] && !((c[1] >= 'A' && c[1] <= 'Z') ||
                                                 (c[1] >= 'a' && c[1] <= 'z')))
                                        c++;
                                if (c[1])
                                        c++;
                        } else if (*c != '\r') {
                                w++;
                        }
                }
                cr_assert_lt(w, COLS, "a row of %zu columns on a %d-column terminal: '%s'", w, COLS,
                             l);
        }
        cr_assert_geq(rows, 4, "%d progress rows: expected a first draw and a redraw", rows);
        free(o);
        cr_assert_eq(xu_server_stop(), 0);
}

Test(xfer, client_output_without_a_terminal_is_plain_lines)
{
        xu_make_file(xu_path("a.bin"), 3 * MiB, 1);
        xu_make_file(xu_path("b.bin"), 10, 2);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a.bin"}, {2, "b.bin"}}, 2);
        xu_server_start();
        int rc = xu_client("c", 30000, "1", "2");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "%s", o);
        cr_assert_null(strchr(o, '\033'), "ANSI escape sequence in:\n%s", o);
        cr_assert_null(strchr(o, '\r'), "carriage return in:\n%s", o);
        free(o);
        char *out = xu_slurp(xu_path("c.out")), *err = xu_slurp(xu_path("c.err"));
        for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
                cr_assert(strncmp(l, "stream ", 7) == 0 || strncmp(l, "total: ", 7) == 0,
                          "unexpected stdout line: '%s'", l);
        /* stderr: log lines (test_logs.c holds them to the whole format) */
        for (char *l = strtok(err, "\n"); l; l = strtok(NULL, "\n")) {
                int y, mo, d, hh, mm, ss, ms, oh, om, pid = -1, at = -1;
                char sign, level[8];
                sscanf(l, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c%2d:%2d %7[A-Z] engine-client[%d]: %n", &y,
                       &mo, &d, &hh, &mm, &ss, &ms, &sign, &oh, &om, level, &pid, &at);
                cr_assert(at > 0 && pid > 0, "unexpected stderr line: '%s'", l);
        }
        free(out);
        free(err);
        cr_assert_eq(xu_server_stop(), 0);
        char *log = xu_slurp(X.slog);
        cr_assert_null(strchr(log, '\033'), "ANSI escape sequence in the server log:\n%s", log);
        free(log);
}

/* ---- writeback while a file is received (proto/xfer_server.c) ---------------------------- */

Test(xfer, writeback_plan_starts_whole_steps_on_page_boundaries_and_waits_behind_the_lag)
{
        const uint64_t step = 16 * MiB, lag = 128 * MiB;
        xfer_wb_t wb = {0};
        /* less than a step: nothing, the final fsync writes it */
        xfer_wb_plan_t p = xfer_wb_plan(&wb, step - 1, step, lag);
        cr_assert_eq(p.start_len + p.wait_len, 0);
        /* a step, not on a page boundary: up to the page below, not beyond */
        p = xfer_wb_plan(&wb, step + XFER_WB_PAGE + 1, step, lag);
        cr_assert_eq(p.start_off, 0);
        cr_assert_eq(p.start_len, step + XFER_WB_PAGE);
        cr_assert_eq(p.wait_len, 0);
        /* the rest of that page and less than a step more: nothing */
        p = xfer_wb_plan(&wb, 2 * step, step, lag);
        cr_assert_eq(p.start_len + p.wait_len, 0);
        /* exactly a step past the last start */
        p = xfer_wb_plan(&wb, 2 * step + XFER_WB_PAGE, step, lag);
        cr_assert_eq(p.start_off, step + XFER_WB_PAGE);
        cr_assert_eq(p.start_len, step);
        /* a file system that cannot: nothing more for this file */
        xfer_wb_t off = {.off = true};
        p = xfer_wb_plan(&off, 10 * lag, step, lag);
        cr_assert_eq(p.start_len + p.wait_len, 0);

        /* 1 GiB + odd in chunks that are not page multiples (1 MiB - 64): the started ranges
         * tile the file from 0, each ends on a page and is at least a step (the last one
         * too); the waits tile it from 0 too, each at least a step, and never come nearer
         * than lag to what was started */
        wb = (xfer_wb_t){0};
        const uint64_t size = 1024 * MiB + 12345, chunk = MiB - 64;
        uint64_t started = 0, waited = 0, written = 0;
        int starts = 0, waits = 0;
        while (written < size) {
                written = written + chunk < size ? written + chunk : size;
                p = xfer_wb_plan(&wb, written, step, lag);
                if (p.start_len) {
                        cr_assert_eq(p.start_off, started, "start at %llu",
                                     (unsigned long long)written);
                        cr_assert_geq(p.start_len, step);
                        cr_assert_eq((p.start_off + p.start_len) % XFER_WB_PAGE, 0);
                        cr_assert_leq(p.start_off + p.start_len, written);
                        started += p.start_len;
                        starts++;
                }
                if (p.wait_len) {
                        cr_assert_eq(p.wait_off, waited);
                        cr_assert_geq(p.wait_len, step);
                        cr_assert_leq(p.wait_off + p.wait_len + lag, started);
                        waited += p.wait_len;
                        waits++;
                }
                cr_assert_eq(wb.started, started);
                cr_assert_eq(wb.waited, waited);
        }
        cr_assert_gt(started + step + XFER_WB_PAGE, size,
                     "writeback started for %llu of %llu bytes", (unsigned long long)started,
                     (unsigned long long)size);
        cr_assert_geq(waited + lag + step, started);
        cr_assert_geq(starts, 60);
        cr_assert_geq(waits, 50);
}

Test(xfer, writeback_errors_fail_the_file_unless_they_only_say_unsupported)
{
        /* not supported here: fsync does it all */
        const int hint[] = {EINVAL, ENOSYS, EOPNOTSUPP, ESPIPE};
        for (size_t i = 0; i < sizeof(hint) / sizeof(hint[0]); i++) {
                cr_assert(xfer_wb_unsupported(hint[i]), "%s", strerror(hint[i]));
                cr_assert(xfer_wb_unsupported(-hint[i]), "-%s", strerror(hint[i]));
        }
        /* what the disk said about the data: the kernel says it once per descriptor, so the
         * fsync before the rename would not see it again */
        const int data[] = {EIO, ENOSPC, EDQUOT, EROFS, ENOMEM, EINTR, EBADF};
        for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
                cr_assert_not(xfer_wb_unsupported(data[i]), "%s", strerror(data[i]));
                cr_assert_not(xfer_wb_unsupported(-data[i]), "-%s", strerror(data[i]));
        }
        cr_assert_not(xfer_wb_unsupported(0));

        /* a descriptor sync_file_range refuses (a pipe: ESPIPE): not an error, and no more
         * asking for this file */
        int pfd[2];
        cr_assert_eq(pipe(pfd), 0);
        xfer_wb_t wb = {0};
        cr_assert_eq(xfer_wb_written(pfd[1], &wb, XFER_WB_STEP), 0);
        cr_assert(wb.off);
        cr_assert_eq(xfer_wb_written(pfd[1], &wb, 2 * XFER_WB_STEP), 0);
        close(pfd[0]);
        close(pfd[1]);
        /* a closed descriptor is an error of the file, not a hint */
        wb = (xfer_wb_t){0};
        cr_assert_eq(xfer_wb_written(pfd[1], &wb, XFER_WB_STEP), -EBADF);
        /* a regular file: writeback starts and is waited for without error */
        int fd = open(xu_path("wb.bin"), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0, "%s", strerror(errno));
        cr_assert_eq(ftruncate(fd, 2 * XFER_WB_LAG), 0);
        wb = (xfer_wb_t){0};
        for (uint64_t w = XFER_WB_STEP; w <= 2 * XFER_WB_LAG; w += XFER_WB_STEP)
                cr_assert_eq(xfer_wb_written(fd, &wb, w), 0);
        cr_assert_not(wb.off);
        cr_assert_eq(wb.started, 2 * XFER_WB_LAG);
        cr_assert_eq(wb.waited, XFER_WB_LAG);
        close(fd);
}

/* The output folder on a disk (/var/tmp, through a symlink at out/): a file large enough that
 * the server starts writeback many times and waits for it arrives byte-identical. */
Test(xfer, file_received_on_a_disk_with_writeback_arrives_byte_identical)
{
        char disk[] = "/var/tmp/eng-xfer-disk-XXXXXX";
        cr_assert_not_null(mkdtemp(disk), "mkdtemp %s: %s", disk, strerror(errno));
        cr_assert_eq(symlink(disk, xu_path("out")), 0, "%s", strerror(errno));
        const uint64_t size = XFER_WB_LAG + 5 * XFER_WB_STEP + 12345;
        xu_make_file(xu_path("src/disk.bin"), size, 9);
        xu_write_opts(NULL, &(xu_stream_t){1, "src/disk.bin"}, 1);
        xu_server_start();
        int rc = xu_client("c", 60000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "client exit %d\n%s", rc, o);
        free(o);
        assert_client_delivered("c", 1);
        xu_assert_same(xu_path("src/disk.bin"), xu_path("out/disk.bin"));
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        char p[sizeof(disk) + 16];
        snprintf(p, sizeof(p), "%s/disk.bin", disk);
        cr_assert_eq(unlink(p), 0, "%s: %s", p, strerror(errno));
        cr_assert_eq(rmdir(disk), 0, "%s: %s", disk, strerror(errno));
}
