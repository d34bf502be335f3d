/*
 * test_faults.c - what users meet when things go wrong around the service: the server killed
 * under its clients, output that cannot be written, the segment's permissions, names that try
 * to escape the output folder, and symlinks planted in it. Real processes (xfer_util.h).
 */
#include "xfer_util.h"

#include <grp.h>
#include <pwd.h>

#include "proto.h"

#define MiB (1024ull * 1024ull)

static void setup(void)
{
        xu_setup();
}

static void teardown(void)
{
        xu_teardown();
}

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 120);

/* chown -R the test folder to nobody, so a server running as nobody can use it. */
static int chown_nobody(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        struct passwd *pw = getpwnam("nobody");
        return pw ? lchown(p, pw->pw_uid, pw->pw_gid) : -1;
}

/* Can this test switch users (root, setpriv present, a 'nobody' user)? */
static bool can_be_nobody(void)
{
        return geteuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0 && getpwnam("nobody");
}

#define AS_NOBODY "/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"

/* Start engine-server through a wrapper command (setpriv, prlimit); wait for "serving". */
static void server_start_via(char *const argv[])
{
        X.server = xu_server_start_argv(argv, X.slog);
}

/* ---- the server dies ------------------------------------------------------------------- */

Test(faults, clients_of_a_killed_server_fail_within_a_second_saying_server_gone)
{
        xu_make_file(xu_path("a.bin"), 256 * MiB, 1);
        xu_make_file(xu_path("b.bin"), 256 * MiB, 2);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "a.bin"}, {2, "b.bin"}}, 2);
        xu_server_start();
        pid_t c = xu_client_spawn("c", XU_ARGS("1", "2"), 2);
        cr_assert(xu_wait_temp(10000, c), "no transfer in flight within 10 s");
        uint64_t t0 = xu_now_ms();
        xu_kill(X.server);
        X.server = 0;
        int rc = xu_finish(c, 10000, "engine-client whose server was killed");
        uint64_t ms = xu_now_ms() - t0;
        char *o = xu_output("c");
        (void)xu_count;
        cr_assert(rc != 0 && rc < 128, "client exit %d\n%s", rc, o);
        cr_assert_leq(ms, 1000, "the client took %llu ms to notice\n%s", (unsigned long long)ms, o);
        cr_assert_not_null(strstr(o, "server gone"), "%s", o);
        free(o);
        /* A new server on the same name starts (the segment of the dead one is stale). It
         * logs to a new file: the old log already says "serving". */
        X.server = xu_server_start_log(xu_path("server2.log"));
        int again = xu_client("again", 60000, "1");
        o = xu_output("again");
        cr_assert_eq(again, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- output faults ----------------------------------------------------------------------- */

Test(faults, file_over_the_size_limit_fails_clearly_and_the_server_keeps_serving)
{
        xu_make_file(xu_path("big.bin"), 4 * MiB, 3);
        xu_make_file(xu_path("small.bin"), 100 * 1024, 4);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "big.bin"}, {2, "small.bin"}}, 2);
        /* RLIMIT_FSIZE of 1 MiB, set on the running server (the segment it created at start
         * is bigger): writes past it fail with EFBIG (the server ignores SIGXFSZ). */
        if (access("/usr/bin/prlimit", X_OK) != 0) {
                xu_teardown(); /* a skip does not run the suite's .fini */
                cr_skip_test("prlimit is not installed here");
        }
        xu_server_start();
        char pid[32];
        snprintf(pid, sizeof(pid), "%d", (int)X.server);
        char *argv[] = {"/usr/bin/prlimit", "--pid", pid, "--fsize=1048576", NULL};
        cr_assert_eq(xu_run(5000, NULL, NULL, argv), 0, "prlimit --pid failed");
        int rc = xu_client("big", 30000, "1");
        char *o = xu_output("big");
        cr_assert_eq(rc, 1, "%s", o);
        cr_assert_not_null(strstr(o, "File too large"), "%s", o);
        free(o);
        cr_assert(!xu_exists(xu_path("out/big.bin")), "a partial file got the final name");
        xu_assert_no_temps();
        cr_assert(xu_log_wait("FAILED", 2000));
        rc = xu_client("small", 30000, "2");
        o = xu_output("small");
        cr_assert_eq(rc, 0, "the server stopped serving after a failed write\n%s", o);
        free(o);
        xu_assert_same(xu_path("small.bin"), xu_path("out/small.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(faults, output_folder_that_stops_being_writable_fails_the_file_and_serving_goes_on)
{
        /* Root ignores modes: as root the server runs as nobody; anyone else runs it as is. */
        bool root = geteuid() == 0;
        if (root && !can_be_nobody()) {
                xu_teardown(); /* a skip does not run the suite's .fini */
                cr_skip_test("as root this needs setpriv and a 'nobody' user (root ignores modes)");
        }
        xu_make_file(xu_path("a.bin"), 2 * MiB, 5);
        /* As root the segment belongs to nobody: the client must be told to trust it. */
        xu_write_opts(root ? "owner=\"nobody\"" : NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_mkdirs(X.out);
        if (root) {
                cr_assert_eq(nftw(X.dir, chown_nobody, 16, FTW_PHYS), 0, "chown: %s",
                             strerror(errno));
                char *argv[] = {AS_NOBODY, XU_SERVER, "-c", X.cfg, NULL};
                server_start_via(argv);
        } else {
                xu_server_start();
        }
        cr_assert_eq(chmod(X.out, 0500), 0);
        int rc = xu_client("denied", 30000, "1");
        char *o = xu_output("denied");
        cr_assert_eq(rc, 1, "%s", o);
        cr_assert_not_null(strstr(o, "Permission denied"), "%s", o);
        free(o);
        cr_assert(!xu_exists(xu_path("out/a.bin")));
        cr_assert_eq(chmod(X.out, 0700), 0);
        rc = xu_client("allowed", 30000, "1");
        o = xu_output("allowed");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("a.bin"), xu_path("out/a.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- permissions ------------------------------------------------------------------------- */

Test(faults, segment_is_private_to_its_user_by_default)
{
        xu_make_file(xu_path("a.bin"), 64 * 1024, 6);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        xu_server_start();
        struct stat sb;
        cr_assert_eq(stat(X.shm, &sb), 0, "%s: %s", X.shm, strerror(errno));
        cr_assert_eq(sb.st_mode & 0777, 0600, "segment mode %o", sb.st_mode & 0777);
        if (!can_be_nobody()) {
                cr_assert_eq(xu_server_stop(), 0);
                {
                        xu_teardown(); /* a skip does not run the suite's .fini */
                        cr_skip_test(
                            "mode checked; attaching as another user needs root and setpriv");
                }
        }
        /* The options file and the source must be readable by nobody, the segment not. */
        cr_assert_eq(chmod(X.dir, 0755), 0);
        cr_assert_eq(chmod(X.cfg, 0644), 0);
        char *argv[] = {AS_NOBODY, XU_CLIENT, "-c", X.cfg, "1", NULL};
        int rc = xu_run(10000, xu_path("nobody.out"), xu_path("nobody.err"), argv);
        char *o = xu_output("nobody");
        cr_assert(rc != 0 && rc < 128, "another user attached (exit %d)\n%s", rc, o);
        cr_assert_not_null(strstr(o, "Permission denied"), "%s", o);
        free(o);
        cr_assert(!xu_exists(xu_path("out/a.bin")));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- names and symlinks ------------------------------------------------------------------ */

static const char *safe(const char *in, size_t len, char *out, size_t outlen)
{
        const char *why = NULL;
        return eng_safe_name(in, len, out, outlen, &why) == 0 ? out : NULL;
}

Test(faults, hostile_names_are_reduced_to_a_basename_or_refused)
{
        char out[ENG_NAME_MAX + 1];
#define S(str) safe(str, sizeof(str) - 1, out, sizeof(out))
        cr_assert_str_eq(S("../../etc/passwd"), "passwd");
        cr_assert_str_eq(S("/etc/shadow"), "shadow");
        cr_assert_str_eq(S("dir/sub/file.bin"), "file.bin");
        cr_assert_str_eq(S("plain name.bin"), "plain name.bin");
        cr_assert_null(S(""), "empty");
        cr_assert_null(S("."), ".");
        cr_assert_null(S(".."), "..");
        cr_assert_null(S("a/.."), "a/..");
        cr_assert_null(S("dir/"), "a name ending in /");
        cr_assert_null(S(".hidden"), "hidden");
        cr_assert_null(S(".eng-1-1.part"), "our temporary names");
        cr_assert_null(S("bad\nname"), "newline");
        cr_assert_null(S("bad\x1b[2Jname"), "escape");
        cr_assert_null(S("del\x7f"), "DEL");
        cr_assert_null(safe("nul\0byte", 8, out, sizeof(out)), "NUL inside the length");
#undef S
        static char longname[4096];
        memset(longname, 'x', sizeof(longname));
        cr_assert_null(safe(longname, sizeof(longname), out, sizeof(out)), "4 KiB name");
        cr_assert_not_null(safe(longname, ENG_NAME_MAX, out, sizeof(out)), "255 bytes is fine");
        cr_assert_null(safe(longname, ENG_NAME_MAX + 1, out, sizeof(out)), "256 bytes is not");
}

Test(faults, symlink_planted_at_the_final_name_is_replaced_not_followed)
{
        xu_make_file(xu_path("data.bin"), 1 * MiB, 8);
        xu_write_text(xu_path("victim"), "precious\n");
        xu_mkdirs(X.out);
        cr_assert_eq(symlink("../victim", xu_path("out/data.bin")), 0);
        xu_write_opts(NULL, &(xu_stream_t){1, "data.bin"}, 1);
        xu_server_start();
        int rc = xu_client("c", 30000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        char *v = xu_slurp(xu_path("victim"));
        cr_assert_str_eq(v, "precious\n", "the file behind the symlink was written");
        free(v);
        struct stat sb;
        cr_assert_eq(lstat(xu_path("out/data.bin"), &sb), 0);
        cr_assert(S_ISREG(sb.st_mode), "out/data.bin is still a symlink");
        xu_assert_same(xu_path("data.bin"), xu_path("out/data.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

Test(faults, symlink_planted_at_the_temporary_name_is_not_followed)
{
        xu_make_file(xu_path("data.bin"), 1 * MiB, 9);
        xu_write_text(xu_path("victim"), "precious\n");
        xu_write_opts(NULL, &(xu_stream_t){1, "data.bin"}, 1);
        xu_server_start();
        /* The server names its first temporary file .eng-<pid>-1.part. */
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "out/.eng-%d-1.part", (int)X.server);
        cr_assert_eq(symlink("../victim", xu_path("%s", tmp)), 0);
        int rc = xu_client("c", 30000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "the transfer went through a planted symlink\n%s", o);
        cr_assert_not_null(strstr(o, "cannot create a file in the output directory"), "%s", o);
        free(o);
        char *v = xu_slurp(xu_path("victim"));
        cr_assert_str_eq(v, "precious\n", "the file behind the symlink was written");
        free(v);
        cr_assert(!xu_exists(xu_path("out/data.bin")));
        /* The next attempt uses the next temporary name and succeeds. */
        rc = xu_client("again", 30000, "1");
        o = xu_output("again");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("data.bin"), xu_path("out/data.bin"));
        cr_assert_eq(unlink(xu_path("%s", tmp)), 0, "the planted symlink was removed or replaced");
        cr_assert_eq(xu_server_stop(), 0);
}
