/*
 * test_service.c - the service as an operator runs it (issue 10): a server and a client
 * started at the same moment, a client that waits for a server (--wait) or is interrupted,
 * a segment of another user or with a mode others can write, more stream ids than the
 * segment has records, a segment /dev/shm cannot hold, SIGHUP, file descriptors running
 * out, the segment truncated under the server, and the --help texts. Real processes
 * (xfer_util.h): children are only fork+exec'd, only the parent asserts.
 */
#include "xfer_util.h"

#include <pwd.h>
#include <sys/statvfs.h>

#define KiB (1024ull)
#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

/* A second folder a test may need outside /dev/shm (removed by the teardown). */
static char extra_dir[PATH_MAX];

static void setup(void)
{
        extra_dir[0] = '\0';
        xu_setup();
}

static void teardown(void)
{
        xu_teardown();
        X.dir[0] = X.name[0] = '\0';
        if (extra_dir[0])
                nftw(extra_dir, xu_rm, 16, FTW_DEPTH | FTW_PHYS);
        extra_dir[0] = '\0';
}

/* cr_skip_test does not run the suite's .fini: clean up first. */
#define SKIP(...)                                                                                  \
        do {                                                                                       \
                teardown();                                                                        \
                cr_skip_test(__VA_ARGS__);                                                         \
        } while (0)

TestSuite(service, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ------------------------------------------------------------------------- */

/* Can this test switch users (root, setpriv present, a 'nobody' user)? */
static bool can_be_nobody(void)
{
        return geteuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0 && getpwnam("nobody");
}

#define AS_NOBODY "/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"

/* chown -R a folder to nobody, so a server running as nobody can use it. */
static int chown_nobody(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        struct passwd *pw = getpwnam("nobody");
        return pw ? lchown(p, pw->pw_uid, pw->pw_gid) : -1;
}

/* An options file at path (same segment name as X.cfg): xu_write_opts aimed elsewhere. */
static void opts_at(const char *path, const char *extra, const xu_stream_t *s, size_t n)
{
        char keep[XU_PATH];
        snprintf(keep, sizeof(keep), "%s", X.cfg);
        snprintf(X.cfg, sizeof(X.cfg), "%s", path);
        xu_write_opts(extra, s, n);
        snprintf(X.cfg, sizeof(X.cfg), "%s", keep);
}

/* engine-client -c cfg args... (any number of them); "<tag>.out" / "<tag>.err". */
static pid_t client_spawn_cfg(const char *tag, const char *cfg, const char *const *args, size_t n)
{
        char **argv = calloc(n + 4, sizeof(char *));
        cr_assert_not_null(argv);
        argv[0] = XU_CLIENT;
        argv[1] = "-c";
        argv[2] = (char *)cfg;
        for (size_t i = 0; i < n; i++)
                argv[3 + i] = (char *)args[i];
        char out[XU_PATH], err[XU_PATH];
        snprintf(out, sizeof(out), "%s", xu_path("%s.out", tag));
        snprintf(err, sizeof(err), "%s", xu_path("%s.err", tag));
        pid_t pid = xu_spawn(argv, out, err);
        free(argv);
        return pid;
}

/* Has pid ended (a zombie not reaped yet, or reaped already)? Never reaps. */
static bool has_ended(pid_t pid)
{
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
                return true; /* ECHILD: reaped already */
        return si.si_pid == pid;
}

/* Entries of a folder other than . and .. (0 if it does not exist). */
static int entries(const char *dir)
{
        DIR *d = opendir(dir);
        if (d == NULL)
                return 0;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                        n++;
        closedir(d);
        return n;
}

/* ---- 1. start-up: a server and a client started together, --wait ---------------------- */

/* `engine-server & engine-client 1` once failed every time ("bad magic 0x00000000": the
 * object exists some 300 ms before its header is written). A 256 MiB segment takes that
 * long to format here. */
Test(service, server_and_client_started_at_the_same_instant_always_connect, .timeout = 240)
{
        enum { ROUNDS = 10 };
        xu_stream_t st[ROUNDS];
        char names[ROUNDS][32];
        for (unsigned i = 0; i < ROUNDS; i++) {
                snprintf(names[i], sizeof(names[i]), "src/r%u.bin", i + 1);
                st[i] = (xu_stream_t){i + 1, names[i]};
                xu_make_file(xu_path("%s", names[i]), 64 * KiB + i, 40 + i);
        }
        xu_write_opts("size=\"256MiB\"", st, ROUNDS);
        char *srv[] = {XU_SERVER, "-c", X.cfg, NULL};
        for (unsigned r = 0; r < ROUNDS; r++) {
                char id[12], tag[16], log[XU_PATH];
                snprintf(id, sizeof(id), "%u", r + 1);
                snprintf(tag, sizeof(tag), "c%u", r + 1);
                snprintf(log, sizeof(log), "%s", xu_path("server%u.log", r + 1));
                bool client_first = r % 2 == 0;
                pid_t c;
                if (client_first) {
                        c = xu_client_spawn(tag, XU_ARGS(id), 1);
                        X.server = xu_spawn(srv, NULL, log);
                } else {
                        X.server = xu_spawn(srv, NULL, log);
                        c = xu_client_spawn(tag, XU_ARGS(id), 1);
                }
                uint64_t t0 = xu_now_ms();
                int rc = xu_finish(c, 30000, "engine-client started with its server");
                uint64_t ms = xu_now_ms() - t0;
                char *o = xu_output(tag), *l = xu_slurp(log);
                cr_assert_eq(rc, 0,
                             "round %u (%s spawned first): the client exited %d after %llu ms\n%s"
                             "--- server log:\n%s",
                             r + 1, client_first ? "client" : "server", rc, (unsigned long long)ms,
                             o, l);
                free(o);
                free(l);
                xu_assert_same(xu_path("%s", names[r]), xu_path("out/r%u.bin", r + 1));
                cr_assert_eq(xu_server_stop(), 0, "round %u", r + 1);
        }
}

/* No server: exit 1 saying "no server" soon (the default --wait is 1 s). --wait 10 with a
 * server that starts 1.5 s later: the client waits for it and delivers. */
Test(service, client_waits_for_a_server_as_long_as_told_and_no_longer)
{
        xu_make_file(xu_path("a.bin"), 100 * KiB, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        uint64_t t0 = xu_now_ms();
        int rc = xu_client("none", 10000, "1");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("none");
        cr_assert_eq(rc, 1, "client without a server: exit %d\n%s", rc, o);
        cr_assert_not_null(strstr(o, "no server"), "%s", o);
        cr_assert_leq(ms, 3000, "a client without a server took %llu ms to give up\n%s",
                      (unsigned long long)ms, o);
        cr_log_info("without a server the client gave up after %llu ms", (unsigned long long)ms);
        free(o);

        pid_t c = xu_client_spawn("w", XU_ARGS("--wait", "10", "1"), 3);
        xu_sleep_ms(1500);
        int st;
        if (xu_wait(c, 0, &st)) {
                o = xu_output("w");
                cr_assert_fail("engine-client --wait 10 ended (exit %d) 1.5 s in, with no server "
                               "yet\n%s",
                               xu_code(st), o);
        }
        xu_server_start();
        rc = xu_finish(c, 30000, "engine-client --wait 10");
        o = xu_output("w");
        cr_assert_eq(rc, 0, "client --wait 10 with a server started 1.5 s later: exit %d\n%s", rc,
                     o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- 2. another user's segment, a segment others can write ---------------------------- */

/* Folder "nobody" in the test folder: options (mode extra), a.bin, owned by nobody. */
static const char *nobody_setup(const char *extra, char *cfg, size_t cfglen)
{
        static char dir[XU_PATH];
        snprintf(dir, sizeof(dir), "%s", xu_path("nobody"));
        xu_mkdirs(dir);
        xu_make_file(xu_path("nobody/a.bin"), 300 * KiB, 21);
        snprintf(cfg, cfglen, "%s", xu_path("nobody/options.xml"));
        opts_at(cfg, extra, &(xu_stream_t){1, "a.bin"}, 1);
        cr_assert_eq(chmod(X.dir, 0755), 0);
        cr_assert_eq(nftw(dir, chown_nobody, 16, FTW_PHYS), 0, "chown: %s", strerror(errno));
        return dir;
}

/* SIGTERM a server that is not X.server; it must stop (bounded). */
static void stop_other_server(pid_t pid, const char *what)
{
        kill(pid, SIGTERM);
        int rc = xu_finish(pid, 12000, what);
        cr_assert(rc == 0 || rc == 1, "%s exited %d", what, rc);
}

Test(service, another_users_segment_is_refused_and_roots_server_takes_the_name)
{
        if (!can_be_nobody())
                SKIP("needs root, setpriv and a 'nobody' user (another user's segment)");
        uid_t nuid = getpwnam("nobody")->pw_uid;
        char ncfg[XU_PATH], nout[XU_PATH], nlog[XU_PATH];
        const char *ndir = nobody_setup("mode=\"0666\"", ncfg, sizeof(ncfg));
        snprintf(nout, sizeof(nout), "%s/out", ndir);
        snprintf(nlog, sizeof(nlog), "%s", xu_path("nobody.log"));
        xu_make_file(xu_path("a.bin"), 200 * KiB, 22);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);

        char *nargv[] = {AS_NOBODY, XU_SERVER, "-c", ncfg, NULL};
        pid_t nob = xu_server_start_argv(nargv, nlog);
        struct stat sb;
        cr_assert_eq(stat(X.shm, &sb), 0, "%s: %s", X.shm, strerror(errno));
        cr_assert_eq(sb.st_uid, nuid, "the segment belongs to uid %u", (unsigned)sb.st_uid);
        cr_assert_eq(sb.st_mode & 0777, 0666, "mode %o", (unsigned)(sb.st_mode & 0777));

        /* Root's client refuses nobody's segment. */
        int rc = xu_client("refused", 10000, "1");
        char *o = xu_output("refused"), *e = xu_slurp(xu_path("refused.err"));
        cr_assert_eq(rc, 1, "root's client used nobody's segment (exit %d)\n%s", rc, o);
        cr_assert_not_null(strstr(e, "nobody"), "stderr should name the owner 'nobody':\n%s", o);
        free(e);
        free(o);
        cr_assert_eq(entries(nout), 0, "something arrived in nobody's output folder %s", nout);

        /* Root's server on the name starts anyway, removing nobody's object. */
        xu_server_start();
        char *l = xu_slurp(X.slog);
        char uidstr[32];
        snprintf(uidstr, sizeof(uidstr), "uid %u", (unsigned)nuid);
        cr_assert(strstr(l, "removed") && (strstr(l, "nobody") || strstr(l, uidstr)),
                  "root's server log should say it removed nobody's segment:\n%s", l);
        free(l);
        cr_assert_eq(stat(X.shm, &sb), 0);
        cr_assert_eq(sb.st_uid, geteuid(), "the name still belongs to uid %u", (unsigned)sb.st_uid);
        rc = xu_client("c", 30000, "1");
        o = xu_output("c");
        cr_assert_eq(rc, 0, "root's client with root's server: exit %d\n%s", rc, o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(entries(nout), 0, "something arrived in nobody's output folder %s", nout);
        cr_assert_eq(xu_server_stop(), 0);
        stop_other_server(nob, "nobody's engine-server");
}

/* Any user: a segment every user may write (mode 0666) is refused unless the client's
 * options allow that mode. */
Test(service, segment_others_can_write_is_refused_unless_the_options_allow_its_mode)
{
        xu_make_file(xu_path("a.bin"), 200 * KiB, 23);
        xu_write_opts("mode=\"0666\"", &(xu_stream_t){1, "a.bin"}, 1);
        char strict[XU_PATH];
        snprintf(strict, sizeof(strict), "%s", xu_path("strict.xml"));
        opts_at(strict, NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        struct stat sb;
        cr_assert_eq(stat(X.shm, &sb), 0);
        cr_assert_eq(sb.st_mode & 0777, 0666, "mode %o", (unsigned)(sb.st_mode & 0777));

        int rc = xu_finish(client_spawn_cfg("strict", strict, XU_ARGS("1"), 1), 10000,
                           "engine-client (default mode)");
        char *o = xu_output("strict"), *e = xu_slurp(xu_path("strict.err"));
        cr_assert_eq(rc, 1, "a client whose options allow 0600 used a 0666 segment (exit %d)\n%s",
                     rc, o);
        cr_assert_not_null(strstr(e, "mode 0666"), "stderr should say 'mode 0666':\n%s", o);
        free(e);
        free(o);
        cr_assert(!xu_exists(xu_path("out/a.bin")), "the refusing client delivered its file");

        rc = xu_client("allowed", 30000, "1");
        o = xu_output("allowed");
        cr_assert_eq(rc, 0, "a client whose options say mode=\"0666\": exit %d\n%s", rc, o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(service, client_told_the_owner_accepts_that_users_segment)
{
        if (!can_be_nobody())
                SKIP("needs root, setpriv and a 'nobody' user (another user's segment)");
        char ncfg[XU_PATH], nlog[XU_PATH];
        nobody_setup(NULL, ncfg, sizeof(ncfg));
        snprintf(nlog, sizeof(nlog), "%s", xu_path("nobody.log"));
        xu_write_opts("owner=\"nobody\"", &(xu_stream_t){1, "nobody/a.bin"}, 1);
        char *nargv[] = {AS_NOBODY, XU_SERVER, "-c", ncfg, NULL};
        pid_t nob = xu_server_start_argv(nargv, nlog);
        int rc = xu_client("c", 30000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "root's client told owner=\"nobody\": exit %d\n%s", rc, o);
        free(o);
        xu_assert_same(xu_path("nobody/a.bin"), xu_path("nobody/out/a.bin"));
        stop_other_server(nob, "nobody's engine-server");
        cr_assert(!xu_exists(X.shm), "nobody's server left its segment behind");
}

/* ---- 3. more ids than records; interrupts -------------------------------------------- */

/* A 3 MiB segment (1 MiB superblocks) holds about a hundred records beside its buffers. */
Test(service, more_ids_than_the_segment_has_records_all_arrive_from_one_client)
{
        enum { N = 300 };
        static xu_stream_t st[N];
        static char names[N][32], ids[N][8];
        const char *args[N];
        for (unsigned i = 0; i < N; i++) {
                snprintf(names[i], sizeof(names[i]), "src/q%u.bin", i + 1);
                snprintf(ids[i], sizeof(ids[i]), "%u", i + 1);
                st[i] = (xu_stream_t){i + 1, names[i]};
                args[i] = ids[i];
                xu_make_file(xu_path("%s", names[i]), KiB + (i * 7919u) % (7 * KiB + 1), 1000 + i);
        }
        xu_write_opts("size=\"3MiB\"", st, N);
        xu_server_start();
        uint64_t t0 = xu_now_ms();
        int rc =
            xu_finish(client_spawn_cfg("c", X.cfg, args, N), 60000, "engine-client with 300 ids");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "300 ids on a 3 MiB segment: exit %d\n%s", rc, o);
        free(o);
        cr_log_info("300 files through a 3 MiB segment in %llu ms", (unsigned long long)ms);
        for (unsigned i = 0; i < N; i++)
                xu_assert_same(xu_path("%s", names[i]), xu_path("out/q%u.bin", i + 1));
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        char *l = xu_slurp(X.slog);
        cr_assert_eq(xu_count(l, "verified"), N, "server log:\n%s", l);
        free(l);
}

/* Client A (stopped, more ids than records) holds every record; start client B (id) and
 * return it once it has waited 500 ms. If B found a record free after all (A had not taken
 * them all yet: this machine is shared), let A run a little more and try again (bounded). */
static pid_t waiting_client(pid_t a, const char *tag, const char *id, int na)
{
        for (int tries = 0; tries < 20; tries++) {
                int held = xu_temps(), delivered = entries(X.out) - held;
                cr_log_info("client A stopped holding %d transfers (%d delivered)", held,
                            delivered);
                cr_assert_lt(held + delivered, na,
                             "client A had no ids left to queue (%d in flight, %d delivered)", held,
                             delivered);
                pid_t b = xu_client_spawn(tag, XU_ARGS(id), 1);
                xu_sleep_ms(500);
                int st;
                if (!xu_wait(b, 0, &st))
                        return b;
                char *o = xu_output(tag);
                cr_assert_eq(xu_code(st), 0,
                             "client B (%s) ended (exit %d) before it was signalled:\n%s", tag,
                             xu_code(st), o);
                free(o);
                cr_assert_eq(unlink(xu_path("out/small.bin")), 0);
                kill(a, SIGCONT);
                xu_sleep_ms(30);
                kill(a, SIGSTOP);
        }
        cr_assert_fail("client B found a free record 20 times with A stopped mid-transfer");
        return -1;
}

/* Client A takes every record of a 3 MiB segment (300 ids) and is stopped mid-transfer;
 * client B, waiting for a record, must stop at once on SIGTERM (143) and SIGINT (130). */
Test(service, client_waiting_for_records_stops_at_once_on_sigterm_and_sigint)
{
        enum { NA = 300 };
        static xu_stream_t st[NA + 2];
        static char names[NA][32], ids[NA][8];
        const char *args[NA];
        xu_make_file(xu_path("big.bin"), 2 * MiB, 31);
        xu_make_file(xu_path("small.bin"), 3000, 32);
        xu_mkdirs(xu_path("src"));
        for (unsigned i = 0; i < NA; i++) {
                snprintf(names[i], sizeof(names[i]), "src/b%u.bin", i + 1);
                snprintf(ids[i], sizeof(ids[i]), "%u", i + 1);
                cr_assert_eq(link(xu_path("big.bin"), xu_path("%s", names[i])), 0, "link: %s",
                             strerror(errno));
                st[i] = (xu_stream_t){i + 1, names[i]};
                args[i] = ids[i];
        }
        st[NA] = (xu_stream_t){1001, "small.bin"};
        st[NA + 1] = (xu_stream_t){1002, "small.bin"};
        xu_write_opts("size=\"3MiB\"", st, NA + 2);
        xu_server_start();
        pid_t a = client_spawn_cfg("a", X.cfg, args, NA);
        /* Stop A once it has been taking records for a while: its first files arrived. */
        if (!xu_wait_temp(10000, a)) {
                bool ended = has_ended(a);
                kill(a, SIGKILL);
                char *o = xu_output("a");
                cr_assert_fail("client A (300 ids) started no transfer within 10 s (%s)\n%s",
                               ended ? "it exited" : "it hung", o);
        }
        uint64_t end = xu_now_ms() + 20000;
        while (entries(X.out) - xu_temps() < 1 && !has_ended(a) && xu_now_ms() < end)
                xu_sleep_ms(1);
        kill(a, SIGSTOP);

        static const struct {
                int sig;
                const char *tag, *id;
        } runs[] = {{SIGTERM, "term", "1001"}, {SIGINT, "int", "1002"}};
        for (size_t k = 0; k < 2; k++) {
                pid_t b = waiting_client(a, runs[k].tag, runs[k].id, NA);
                uint64_t t0 = xu_now_ms();
                kill(b, runs[k].sig);
                int rc = xu_finish(b, 5000, "engine-client waiting for a record, signalled");
                uint64_t ms = xu_now_ms() - t0;
                char *o = xu_output(runs[k].tag);
                cr_assert_eq(rc, 128 + runs[k].sig, "SIG%s: exit %d (want %d)\n%s",
                             runs[k].sig == SIGTERM ? "TERM" : "INT", rc, 128 + runs[k].sig, o);
                cr_assert_leq(ms, 1000, "SIG%s: the client took %llu ms to stop\n%s",
                              runs[k].sig == SIGTERM ? "TERM" : "INT", (unsigned long long)ms, o);
                cr_assert_not_null(strstr(o, "interrupted"), "%s", o);
                free(o);
        }
        /* A goes on, and every one of its files arrives. */
        kill(a, SIGCONT);
        int rc = xu_finish(a, 90000, "client A after SIGCONT");
        char *o = xu_output("a");
        cr_assert_eq(rc, 0, "client A after SIGCONT: exit %d\n%s", rc, o);
        free(o);
        for (unsigned i = 0; i < NA; i++)
                xu_assert_same(xu_path("big.bin"), xu_path("out/b%u.bin", i + 1));
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
}

Test(service, client_waiting_for_a_server_that_does_not_exist_stops_on_sigint)
{
        xu_make_file(xu_path("a.bin"), 1000, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        pid_t c = xu_client_spawn("c", XU_ARGS("--wait", "30", "1"), 3);
        xu_sleep_ms(500);
        int st;
        if (xu_wait(c, 0, &st)) {
                char *o = xu_output("c");
                cr_assert_fail("engine-client --wait 30 ended (exit %d) 0.5 s in:\n%s", xu_code(st),
                               o);
        }
        uint64_t t0 = xu_now_ms();
        kill(c, SIGINT);
        int rc = xu_finish(c, 10000, "engine-client --wait 30 after SIGINT");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c");
        cr_assert_eq(rc, 130, "exit %d after SIGINT (want 130)\n%s", rc, o);
        cr_assert_leq(ms, 1000, "the client took %llu ms to stop after SIGINT\n%s",
                      (unsigned long long)ms, o);
        free(o);
}

/* ---- 4. /dev/shm cannot hold the segment ---------------------------------------------- */

/* Never run this against a server that formats without reserving: it would fill /dev/shm
 * (and the machine's memory) before dying of SIGBUS. */
Test(service, segment_larger_than_dev_shm_is_refused_at_start)
{
        struct statvfs vs;
        if (statvfs("/dev/shm", &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize >= 200 * GiB)
                SKIP("/dev/shm has room for 200 GiB here");
        xu_write_opts("size=\"200GiB\"", &(xu_stream_t){1, "a.bin"}, 1);
        char *srv[] = {XU_SERVER, "-c", X.cfg, NULL};
        uint64_t t0 = xu_now_ms();
        int rc = xu_run(20000, xu_path("s.out"), xu_path("s.err"), srv);
        uint64_t ms = xu_now_ms() - t0;
        char *e = xu_slurp(xu_path("s.err"));
        cr_assert_eq(rc, 1, "engine-server with a 200 GiB segment: exit %d\n%s", rc, e);
        cr_assert(strstr(e, "reserve") && strstr(e, "No space left on device"),
                  "the message should say it cannot reserve the bytes (No space left on "
                  "device):\n%s",
                  e);
        cr_assert_leq(ms, 5000, "took %llu ms to give up", (unsigned long long)ms);
        free(e);
        cr_assert(!xu_exists(X.shm), "%s left behind", X.shm);
}

Test(service, small_dev_shm_makes_the_server_exit_1_not_die_of_sigbus, .timeout = 60)
{
        if (geteuid() != 0)
                SKIP("needs root (a private mount namespace with a small /dev/shm)");
        if (access("/usr/bin/unshare", X_OK) != 0)
                SKIP("unshare is not installed here");
        char *probe[] = {"/usr/bin/unshare",
                         "-m",
                         "/bin/sh",
                         "-c",
                         "mount --make-rprivate / && mount -t tmpfs -o size=1m tmpfs /mnt",
                         NULL};
        if (xu_run(10000, NULL, NULL, probe) != 0)
                SKIP("cannot mount a tmpfs in a private mount namespace here");
        /* The test folder is on /dev/shm, which the namespace hides: use one in /tmp. */
        snprintf(extra_dir, sizeof(extra_dir), "/tmp/eng-svc-%d-XXXXXX", (int)getpid());
        cr_assert_not_null(mkdtemp(extra_dir), "mkdtemp: %s", strerror(errno));
        char cfg[XU_PATH], text[1024];
        snprintf(cfg, sizeof(cfg), "%s/options.xml", extra_dir);
        snprintf(text, sizeof(text),
                 "<?xml version=\"1.0\"?>\n<streams>\n"
                 "  <server outputpath=\"out\" name=\"%s\" size=\"64MiB\" %s/>\n"
                 "  <stream id=\"1\" file=\"a.bin\"/>\n</streams>\n",
                 X.name, xu_transport_attr());
        xu_write_text(cfg, text);
        char *argv[] = {"/usr/bin/unshare",
                        "-m",
                        "/bin/sh",
                        "-c",
                        "mount --make-rprivate / && mount -t tmpfs -o size=16m tmpfs /dev/shm && "
                        "exec \"$0\" -c \"$1\"",
                        XU_SERVER,
                        cfg,
                        NULL};
        int rc = xu_run(30000, xu_path("s.out"), xu_path("s.err"), argv);
        char *e = xu_slurp(xu_path("s.err"));
        cr_assert_eq(rc, 1,
                     "engine-server with a 64 MiB segment on a 16 MiB /dev/shm: exit %d%s\n%s", rc,
                     rc == 128 + SIGBUS ? " (SIGBUS)" : "", e);
        cr_assert(strstr(e, "reserve") && strstr(e, "No space left on device"),
                  "the message should say it cannot reserve the bytes (No space left on "
                  "device):\n%s",
                  e);
        free(e);
        cr_assert(!xu_exists(X.shm), "%s appeared in the real /dev/shm", X.shm);
}

/* ---- 5. SIGHUP ------------------------------------------------------------------------ */

static void assert_sighup_stop(void)
{
        pid_t s = X.server;
        uint64_t t0 = xu_now_ms();
        kill(s, SIGHUP);
        int rc = xu_finish(s, 15000, "engine-server after SIGHUP");
        X.server = 0;
        cr_log_info("engine-server stopped %llu ms after SIGHUP",
                    (unsigned long long)(xu_now_ms() - t0));
        char *l = xu_slurp(X.slog);
        cr_assert_eq(rc, 0, "engine-server after SIGHUP: exit %d\n%s", rc, l);
        cr_assert_not_null(strstr(l, "SIGHUP: stopping"), "%s", l);
        free(l);
        cr_assert(!xu_exists(X.shm), "segment %s left behind after SIGHUP", X.shm);
}

Test(service, sighup_stops_the_server_cleanly)
{
        xu_make_file(xu_path("a.bin"), 100 * KiB, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        int rc = xu_client("c", 30000, "1");
        cr_assert_eq(rc, 0);
        assert_sighup_stop();
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
}

Test(service, sighup_mid_transfer_delivers_the_file_or_fails_it_cleanly)
{
        pid_t c = xu_start_big_transfer(512 * MiB);
        assert_sighup_stop();
        int rc = xu_finish(c, 40000, "engine-client whose server got SIGHUP");
        char *o = xu_output("c");
        cr_assert(rc == 0 || rc == 1, "client exit %d\n%s", rc, o);
        if (rc == 0) {
                xu_assert_same(xu_path("big.bin"), xu_path("out/big.bin"));
        } else {
                cr_assert_not_null(strstr(o, "FAILED"), "%s", o);
                cr_assert(!xu_exists(xu_path("out/big.bin")),
                          "a partial file carries the final name");
        }
        cr_log_info("SIGHUP mid-transfer: the file was %s", rc == 0 ? "delivered" : "failed");
        free(o);
        xu_assert_no_temps();
}

/* ---- 6. file descriptors run out ------------------------------------------------------ */

/* The smallest RLIMIT_NOFILE that leaves `room` descriptors free in process pid. */
static unsigned nofile_leaving(pid_t pid, int room)
{
        enum { MAXFD = 4096 };
        static bool used[MAXFD];
        memset(used, 0, sizeof(used));
        char dir[64];
        snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
        DIR *d = opendir(dir);
        cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
                int fd = atoi(e->d_name);
                if (e->d_name[0] != '.' && fd >= 0 && fd < MAXFD)
                        used[fd] = true;
        }
        closedir(d);
        int free_fds = 0;
        for (unsigned n = 0; n < MAXFD; n++) {
                if (!used[n] && ++free_fds == room)
                        return n + 1;
        }
        cr_assert_fail("no room for %d descriptors below %d in pid %d", room, MAXFD, (int)pid);
        return 0;
}

/* Every line of the server log that says a process exited or is gone names (as "pid N" in
 * its message or "pid=N" in its fields) only processes that had ended when the line was read.
 * Returns the first offender's line. */
static char *live_one_called_gone(const pid_t *pids, size_t n)
{
        char *log = xu_slurp(X.slog);
        char *bad = NULL;
        for (char *l = strtok(log, "\n"); l && !bad; l = strtok(NULL, "\n")) {
                if (!strstr(l, "exited") && !strstr(l, "gone"))
                        continue;
                for (const char *p = l; (p = strstr(p, "pid")) != NULL && !bad; p += 3) {
                        if (p[3] != ' ' && p[3] != '=')
                                continue;
                        pid_t pid = (pid_t)atoi(p + 4);
                        for (size_t i = 0; i < n; i++)
                                if (pids[i] == pid && !has_ended(pid))
                                        bad = strdup(l);
                }
        }
        free(log);
        return bad;
}

Test(service, clients_beyond_the_servers_descriptors_fail_clearly_and_are_never_called_gone)
{
        enum { NC = 8, ROOM = 4 };
        if (access("/usr/bin/prlimit", X_OK) != 0)
                SKIP("prlimit is not installed here");
        xu_make_file(xu_path("src.bin"), 32 * MiB, 61);
        xu_stream_t st[NC + 1];
        char names[NC + 1][32], ids[NC + 1][8];
        for (unsigned i = 0; i <= NC; i++) {
                snprintf(names[i], sizeof(names[i]), "f%u.bin", i + 1);
                snprintf(ids[i], sizeof(ids[i]), "%u", i + 1);
                cr_assert_eq(link(xu_path("src.bin"), xu_path("%s", names[i])), 0);
                st[i] = (xu_stream_t){i + 1, names[i]};
        }
        xu_write_opts(NULL, st, NC + 1);
        xu_server_start();
        /* Room for ROOM more descriptors: a pidfd per client, a file per transfer. */
        unsigned lim = nofile_leaving(X.server, ROOM);
        char pid[32], nofile[48];
        snprintf(pid, sizeof(pid), "%d", (int)X.server);
        snprintf(nofile, sizeof(nofile), "--nofile=%u:%u", lim, lim);
        char *pl[] = {"/usr/bin/prlimit", "--pid", pid, nofile, NULL};
        cr_assert_eq(xu_run(5000, NULL, NULL, pl), 0, "prlimit --pid failed");
        cr_log_info("server RLIMIT_NOFILE %u (room for %d descriptors)", lim, ROOM);

        pid_t c[NC];
        bool ended[NC] = {false};
        int rcs[NC];
        char tags[NC][8];
        for (unsigned i = 0; i < NC; i++) {
                snprintf(tags[i], sizeof(tags[i]), "c%u", i + 1);
                c[i] = xu_client_spawn(tags[i], XU_ARGS(ids[i]), 1);
        }
        int left = NC;
        uint64_t end = xu_now_ms() + 90000;
        while (left > 0) {
                char *bad = live_one_called_gone(c, NC);
                cr_assert_null(bad, "the server called a live client gone: %s", bad);
                for (unsigned i = 0; i < NC; i++) {
                        int s;
                        if (!ended[i] && xu_wait(c[i], 0, &s)) {
                                ended[i] = true;
                                rcs[i] = xu_code(s);
                                left--;
                        }
                }
                if (xu_now_ms() > end)
                        cr_assert_fail("%d of %d clients still running after 90 s", left, NC);
                xu_sleep_ms(2);
        }
        int failed = 0;
        for (unsigned i = 0; i < NC; i++) {
                char *o = xu_output(tags[i]);
                if (rcs[i] == 0) {
                        xu_assert_same(xu_path("src.bin"), xu_path("out/f%u.bin", i + 1));
                } else {
                        failed++;
                        cr_assert_eq(rcs[i], 1, "client %u: exit %d\n%s", i + 1, rcs[i], o);
                        cr_assert_not_null(strstr(o, "Too many open files"),
                                           "client %u failed without saying 'Too many open "
                                           "files':\n%s",
                                           i + 1, o);
                }
                free(o);
        }
        cr_log_info("%d of %d clients delivered, %d failed for lack of descriptors", NC - failed,
                    NC, failed);
        cr_assert_gt(failed, 0, "all %d clients delivered: the server had descriptors to spare",
                     NC);
        /* The descriptors come back with the clients: one more client alone delivers. */
        int rc = xu_client("after", 30000, ids[NC]);
        char *o = xu_output("after");
        cr_assert_eq(rc, 0, "a client after the crowd: exit %d\n%s", rc, o);
        free(o);
        xu_assert_same(xu_path("src.bin"), xu_path("out/f%u.bin", NC + 1));
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
        char *bad = live_one_called_gone(c, NC);
        cr_assert_null(bad, "the server called a live client gone: %s", bad);
}

/* ---- 7. the segment truncated under the server ---------------------------------------- */

Test(service, segment_truncated_by_another_process_is_restored_and_serves_within_2_s)
{
        xu_make_file(xu_path("a.bin"), 1 * MiB + 17, 71);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        int fd = shm_open(X.name, O_RDWR, 0);
        cr_assert_geq(fd, 0, "shm_open(%s): %s", X.name, strerror(errno));
        uint64_t t0 = xu_now_ms();
        cr_assert_eq(ftruncate(fd, 4096), 0, "ftruncate: %s", strerror(errno));
        close(fd);
        int rc = xu_client("c", 20000, "1");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c"), *l = xu_slurp(X.slog);
        int st;
        if (xu_wait(X.server, 0, &st)) {
                X.server = 0;
                cr_assert_fail("the server died (%d) after the truncation\n%s--- server log:\n%s",
                               xu_code(st), o, l);
        }
        cr_assert_eq(rc, 0, "client after the truncation: exit %d\n%s--- server log:\n%s", rc, o,
                     l);
        cr_assert_leq(ms, 2000, "the client delivered %llu ms after the truncation\n%s",
                      (unsigned long long)ms, l);
        free(o);
        free(l);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert(xu_log_wait("resized", 2000), "the log does not say the segment was resized");
        cr_assert(xu_log_wait("arena header", 2000),
                  "the log does not say the arena header was restored");
        l = xu_slurp(X.slog);
        cr_assert_not_null(strstr(strstr(l, "arena header"), "restored"), "%s", l);
        free(l);
        struct stat sb;
        cr_assert_eq(stat(X.shm, &sb), 0);
        cr_assert_gt(sb.st_size, 4096, "the segment was not put back to its size");
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- 8. --help ------------------------------------------------------------------------ */

Test(service, help_texts_mention_wait_and_sighup)
{
        char *c[] = {XU_CLIENT, "--help", NULL}, *s[] = {XU_SERVER, "--help", NULL};
        cr_assert_eq(xu_run(5000, xu_path("c.out"), NULL, c), 0);
        cr_assert_eq(xu_run(5000, xu_path("s.out"), NULL, s), 0);
        char *co = xu_slurp(xu_path("c.out")), *so = xu_slurp(xu_path("s.out"));
        cr_assert_not_null(strstr(co, "--wait"), "engine-client --help:\n%s", co);
        cr_assert_not_null(strstr(so, "SIGHUP"), "engine-server --help:\n%s", so);
        free(co);
        free(so);
}
