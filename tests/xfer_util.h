/*
 * xfer_util.h - helpers for tests that run the real engine-server and engine-client:
 * a private folder and segment name per test, options files, files of pseudo-random bytes,
 * child processes with deadlines on every wait, and log inspection.
 *
 * Children are only fork+exec'd (they never return into Criterion); they die with the test
 * process (PR_SET_PDEATHSIG), and xu_teardown kills and reaps whatever is still running.
 * Every wait has a deadline. Only the parent asserts.
 */
#ifndef XFER_UTIL_H
#define XFER_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef ENG_BIN_DIR
#error "ENG_BIN_DIR must name the folder of engine-server and engine-client"
#endif

#define XU_SERVER ENG_BIN_DIR "/engine-server"
#define XU_CLIENT ENG_BIN_DIR "/engine-client"
#define XU_PATH   (2 * PATH_MAX)
#define XU_KIDS   64

typedef struct xu_env {
        char dir[PATH_MAX]; /* this test's folder */
        char name[64];      /* segment name, "/t-<pid>-<n>" */
        char shm[128];      /* /dev/shm/<name> */
        char cfg[XU_PATH];  /* options file */
        char out[XU_PATH];  /* the server's output folder */
        char slog[XU_PATH]; /* the server's stderr */
        pid_t server;
} xu_env_t;

static xu_env_t X;
static pid_t xu_kids[XU_KIDS];

static uint64_t xu_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void xu_sleep_ms(long ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

/* ---- paths and files ---------------------------------------------------------------- */

/* A static path under the test's folder (four rotating buffers). */
static const char *xu_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *xu_path(const char *fmt, ...)
{
        static char buf[4][XU_PATH];
        static int k;
        char *p = buf[k++ & 3];
        int n = snprintf(p, XU_PATH, "%s/", X.dir);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p + n, XU_PATH - (size_t)n, fmt, ap);
        va_end(ap);
        return p;
}

static void xu_mkdirs(const char *path)
{
        char tmp[XU_PATH];
        snprintf(tmp, sizeof(tmp), "%s", path);
        for (char *p = tmp + 1; *p; p++)
                if (*p == '/') {
                        *p = '\0';
                        mkdir(tmp, 0755);
                        *p = '/';
                }
        mkdir(tmp, 0755);
}

static void xu_write_text(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
        fputs(text, f);
        cr_assert_eq(fclose(f), 0);
}

/* size bytes of xorshift output seeded by seed (different seeds: different contents). */
static void xu_make_file(const char *path, uint64_t size, uint64_t seed)
{
        char dir[XU_PATH];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = '\0';
                xu_mkdirs(dir);
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0, "cannot create %s: %s", path, strerror(errno));
        enum { BUF = 1 << 20 };
        uint64_t *buf = malloc(BUF);
        cr_assert_not_null(buf);
        uint64_t s = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
        uint64_t left = size;
        while (left > 0) {
                for (size_t i = 0; i < BUF / 8; i++) {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        buf[i] = s;
                }
                size_t n = left < BUF ? (size_t)left : BUF;
                const char *p = (const char *)buf;
                size_t done = 0;
                while (done < n) {
                        ssize_t w = write(fd, p + done, n - done);
                        cr_assert_gt(w, 0, "writing %s: %s", path, strerror(errno));
                        done += (size_t)w;
                }
                left -= n;
        }
        free(buf);
        cr_assert_eq(close(fd), 0);
}

static bool xu_exists(const char *path)
{
        struct stat sb;
        return lstat(path, &sb) == 0;
}

/* Assert that b exists and has exactly a's contents. */
static void xu_assert_same(const char *a, const char *b)
{
        int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fa, 0, "%s: %s", a, strerror(errno));
        cr_assert_geq(fb, 0, "%s was not delivered: %s", b, strerror(errno));
        struct stat sa, sb;
        cr_assert_eq(fstat(fa, &sa), 0);
        cr_assert_eq(fstat(fb, &sb), 0);
        cr_assert(S_ISREG(sb.st_mode), "%s is not a regular file", b);
        cr_assert_eq(sa.st_size, sb.st_size, "%s has %lld bytes, %s has %lld", b,
                     (long long)sb.st_size, a, (long long)sa.st_size);
        if (sa.st_size > 0) {
                const unsigned char *pa =
                    mmap(NULL, (size_t)sa.st_size, PROT_READ, MAP_PRIVATE, fa, 0);
                const unsigned char *pb =
                    mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fb, 0);
                cr_assert(pa != MAP_FAILED && pb != MAP_FAILED);
                if (memcmp(pa, pb, (size_t)sa.st_size) != 0) {
                        size_t i = 0;
                        while (pa[i] == pb[i])
                                i++;
                        cr_assert_fail("%s differs from %s at byte %zu of %lld", b, a, i,
                                       (long long)sa.st_size);
                }
                munmap((void *)pa, (size_t)sa.st_size);
                munmap((void *)pb, (size_t)sb.st_size);
        }
        close(fa);
        close(fb);
}

/* Whole file as a NUL-terminated string ("" if it cannot be read). Caller frees. */
static char *xu_slurp(const char *path)
{
        FILE *f = fopen(path, "r");
        if (f == NULL)
                return strdup("");
        size_t cap = 4096, n = 0;
        char *s = malloc(cap);
        size_t got;
        while ((got = fread(s + n, 1, cap - n - 1, f)) > 0) {
                n += got;
                if (cap - n - 1 == 0) {
                        cap *= 2;
                        s = realloc(s, cap);
                }
        }
        s[n] = '\0';
        fclose(f);
        return s;
}

static int xu_count(const char *hay, const char *needle)
{
        int n = 0;
        for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
                n++;
        return n;
}

static bool xu_file_has(const char *path, const char *needle)
{
        char *s = xu_slurp(path);
        bool yes = strstr(s, needle) != NULL;
        free(s);
        return yes;
}

/* Entries of dir whose names start with prefix. */
static int xu_count_prefix(const char *dir, const char *prefix)
{
        DIR *d = opendir(dir);
        if (d == NULL)
                return 0;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
                if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
                        n++;
        closedir(d);
        return n;
}

static int xu_temps(void)
{
        return xu_count_prefix(X.out, ".eng-");
}

/* Wait (polling every ms) until dir holds a temporary ".eng-" file; false on timeout. */
static bool xu_wait_temp(int timeout_ms, pid_t also_watch)
{
        uint64_t end = xu_now_ms() + (uint64_t)timeout_ms;
        while (xu_now_ms() < end) {
                if (xu_temps() > 0)
                        return true;
                if (also_watch > 0) {
                        siginfo_t si;
                        memset(&si, 0, sizeof(si));
                        if (waitid(P_PID, (id_t)also_watch, &si, WEXITED | WNOHANG | WNOWAIT) ==
                                0 &&
                            si.si_pid == also_watch)
                                return false; /* it ended before a transfer showed up */
                }
                xu_sleep_ms(1);
        }
        return false;
}

/* Wait until the server log contains needle (bounded). */
static bool xu_log_wait(const char *needle, long ms)
{
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        do {
                if (xu_file_has(X.slog, needle))
                        return true;
                xu_sleep_ms(5);
        } while (xu_now_ms() < end);
        return false;
}

static void xu_assert_no_temps(void)
{
        cr_assert_eq(xu_temps(), 0, "temporary .eng-* files left in %s", X.out);
}

/* ---- options files ------------------------------------------------------------------ */

typedef struct xu_stream {
        unsigned id;
        const char *file; /* relative to the test folder, or absolute */
} xu_stream_t;

/* ENG_TEST_TRANSPORT=mutex runs the same tests on the mutex baseline (ctest registers each
 * end-to-end suite for both transports). */
static const char *xu_transport_attr(void)
{
        const char *t = getenv("ENG_TEST_TRANSPORT");
        return t && strcmp(t, "mutex") == 0 ? "transport=\"mutex\"" : "";
}

/* Write X.cfg: <server outputpath="out" name=X.name [transport] extra/> and the streams. */
static void xu_write_opts(const char *extra, const xu_stream_t *s, size_t n)
{
        size_t cap = 1024 + n * (XU_PATH + 64);
        char *t = malloc(cap);
        size_t k = (size_t)snprintf(t, cap,
                                    "<?xml version=\"1.0\"?>\n<streams>\n"
                                    "  <server outputpath=\"out\" name=\"%s\" %s %s/>\n",
                                    X.name, xu_transport_attr(), extra ? extra : "");
        for (size_t i = 0; i < n; i++)
                k += (size_t)snprintf(t + k, cap - k, "  <stream id=\"%u\" file=\"%s\"/>\n",
                                      s[i].id, s[i].file);
        snprintf(t + k, cap - k, "</streams>\n");
        xu_write_text(X.cfg, t);
        free(t);
}

/* ---- processes ---------------------------------------------------------------------- */

static void xu_track(pid_t pid)
{
        for (int i = 0; i < XU_KIDS; i++)
                if (xu_kids[i] == 0) {
                        xu_kids[i] = pid;
                        return;
                }
        cr_assert_fail("too many children");
}

static void xu_untrack(pid_t pid)
{
        for (int i = 0; i < XU_KIDS; i++)
                if (xu_kids[i] == pid)
                        xu_kids[i] = 0;
}

/* fork+exec argv (NULL-terminated) with stdin from /dev/null and stdout/stderr into files
 * (NULL: /dev/null). The child never returns into the test. */
static pid_t xu_spawn(char *const argv[], const char *out, const char *err)
{
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(126);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                signal(SIGPIPE, SIG_DFL);
                umask(022);
                int in = open("/dev/null", O_RDONLY);
                int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int fe = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (in < 0 || fo < 0 || fe < 0)
                        _exit(125);
                dup2(in, 0);
                dup2(fo, 1);
                dup2(fe, 2);
                execv(argv[0], argv);
                _exit(127);
        }
        xu_track(pid);
        return pid;
}

/* Wait up to ms for pid; true (and *status) once it exited, false if still running. */
static bool xu_wait(pid_t pid, long ms, int *status)
{
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        for (;;) {
                int st;
                pid_t r = waitpid(pid, &st, WNOHANG);
                if (r == pid) {
                        xu_untrack(pid);
                        if (status)
                                *status = st;
                        return true;
                }
                if (r < 0 && errno != EINTR)
                        cr_assert_fail("waitpid(%d): %s", (int)pid, strerror(errno));
                if (xu_now_ms() >= end)
                        return false;
                xu_sleep_ms(2);
        }
}

/* SIGKILL and reap (bounded). */
static void xu_kill(pid_t pid)
{
        if (pid <= 0)
                return;
        kill(pid, SIGCONT);
        kill(pid, SIGKILL);
        xu_wait(pid, 5000, NULL);
}

/* The exit code, or 128 + signal. */
static int xu_code(int status)
{
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Wait for a child that must end by itself within ms; kill it and fail the test if not. */
static int xu_finish(pid_t pid, long ms, const char *what)
{
        int st;
        if (!xu_wait(pid, ms, &st)) {
                xu_kill(pid);
                cr_assert_fail("%s (pid %d) still running after %ld ms: hung", what, (int)pid, ms);
        }
        return xu_code(st);
}

/* Run a program to completion within ms; returns its exit code. */
static int xu_run(long ms, const char *out, const char *err, char *const argv[])
{
        return xu_finish(xu_spawn(argv, out, err), ms, argv[0]);
}

/* ---- the server --------------------------------------------------------------------- */

/* Start a server through argv (engine-server itself, or a wrapper such as setpriv or prlimit
 * around it), logging to log; returns once the log says "serving" (bounded: 10 s). */
static pid_t xu_server_start_argv(char *const argv[], const char *log)
{
        pid_t pid = xu_spawn(argv, xu_path("server.out"), log);
        uint64_t end = xu_now_ms() + 10000;
        for (;;) {
                if (xu_file_has(log, "serving"))
                        return pid;
                int st;
                if (xu_wait(pid, 0, &st)) {
                        char *s = xu_slurp(log);
                        cr_assert_fail("engine-server exited (%d) before serving:\n%s", xu_code(st),
                                       s);
                }
                if (xu_now_ms() > end) {
                        xu_kill(pid);
                        cr_assert_fail("engine-server did not say 'serving' within 10 s");
                }
                xu_sleep_ms(5);
        }
}

/* Start engine-server on X.cfg, logging to log; returns once it says "serving". */
static pid_t xu_server_start_log(const char *log)
{
        char *argv[] = {XU_SERVER, "-c", X.cfg, NULL};
        return xu_server_start_argv(argv, log);
}

static void xu_server_start(void)
{
        X.server = xu_server_start_log(X.slog);
}

/* SIGTERM, then a bounded wait (it gives transfers 5 s of grace); SIGKILL and fail if it
 * does not stop. Returns the exit code. Asserts the segment is gone. */
static int xu_server_stop(void)
{
        pid_t pid = X.server;
        cr_assert_gt(pid, 0);
        kill(pid, SIGTERM);
        int st;
        if (!xu_wait(pid, 12000, &st)) {
                xu_kill(pid);
                X.server = 0;
                cr_assert_fail("engine-server ignored SIGTERM for 12 s");
        }
        X.server = 0;
        cr_assert(!xu_exists(X.shm), "segment %s left behind after the server stopped", X.shm);
        return xu_code(st);
}

/* ---- the client --------------------------------------------------------------------- */

/* Run engine-client -c X.cfg with up to 30 arguments; stdout/stderr into files named
 * "<tag>.out" / "<tag>.err" in the test folder. Returns the exit code. */
static int xu_client_v(const char *tag, long ms, const char *const *args, size_t n)
{
        char *argv[40];
        size_t k = 0;
        argv[k++] = XU_CLIENT;
        argv[k++] = "-c";
        argv[k++] = X.cfg;
        for (size_t i = 0; i < n && k < 39; i++)
                argv[k++] = (char *)args[i];
        argv[k] = NULL;
        char out[XU_PATH], err[XU_PATH];
        snprintf(out, sizeof(out), "%s", xu_path("%s.out", tag));
        snprintf(err, sizeof(err), "%s", xu_path("%s.err", tag));
        return xu_finish(xu_spawn(argv, out, err), ms, "engine-client");
}

/* engine-client -c cfg [-q] args..., its stdout and stderr in <tag>.out and <tag>.err. */
static pid_t xu_client_spawn_cfg(const char *tag, const char *cfg, bool quiet,
                                 const char *const *args, size_t n)
{
        char *argv[48];
        size_t k = 0;
        argv[k++] = XU_CLIENT;
        if (quiet)
                argv[k++] = "-q";
        argv[k++] = "-c";
        argv[k++] = (char *)cfg;
        for (size_t i = 0; i < n && k < 47; i++)
                argv[k++] = (char *)args[i];
        argv[k] = NULL;
        char out[XU_PATH], err[XU_PATH];
        snprintf(out, sizeof(out), "%s", xu_path("%s.out", tag));
        snprintf(err, sizeof(err), "%s", xu_path("%s.err", tag));
        return xu_spawn(argv, out, err);
}

static pid_t xu_client_spawn(const char *tag, const char *const *args, size_t n)
{
        return xu_client_spawn_cfg(tag, X.cfg, false, args, n);
}

#define XU_ARGS(...)            ((const char *const[]){__VA_ARGS__})
#define XU_NARGS(...)           (sizeof(XU_ARGS(__VA_ARGS__)) / sizeof(const char *))
#define xu_client(tag, ms, ...) xu_client_v(tag, ms, XU_ARGS(__VA_ARGS__), XU_NARGS(__VA_ARGS__))

/* "<tag>.out" + "<tag>.err", for assertion messages. Caller frees. */
static char *xu_output(const char *tag)
{
        char *o = xu_slurp(xu_path("%s.out", tag)), *e = xu_slurp(xu_path("%s.err", tag));
        char *s;
        if (asprintf(&s, "--- stdout:\n%s--- stderr:\n%s", o, e) < 0)
                s = strdup("");
        free(o);
        free(e);
        return s;
}

/* A server, and a client sending `big.bin` (size bytes) on stream 1, returned once its
 * transfer is in flight (a temporary file exists). */
static inline pid_t xu_start_big_transfer(uint64_t size)
{
        xu_make_file(xu_path("big.bin"), size, 7);
        xu_write_opts(NULL, &(xu_stream_t){1, "big.bin"}, 1);
        xu_server_start();
        pid_t c = xu_client_spawn("c", XU_ARGS("1"), 1);
        if (!xu_wait_temp(10000, c)) {
                int rc = xu_finish(c, 5000, "engine-client");
                char *o = xu_output("c");
                cr_assert_fail("no transfer in flight within 10 s; the client exited %d:\n%s", rc,
                               o);
        }
        return c;
}

/* ---- per-test setup ----------------------------------------------------------------- */

static void xu_setup(void)
{
        static int n;
        memset(&X, 0, sizeof(X));
        memset(xu_kids, 0, sizeof(xu_kids));
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(X.dir, sizeof(X.dir), "%s/eng-xfer-%d-XXXXXX", base, (int)getpid());
        cr_assert_not_null(mkdtemp(X.dir), "mkdtemp: %s", strerror(errno));
        snprintf(X.name, sizeof(X.name), "/t-%d-%d", (int)getpid(), n++);
        snprintf(X.shm, sizeof(X.shm), "/dev/shm%s", X.name);
        snprintf(X.cfg, sizeof(X.cfg), "%s/options.xml", X.dir);
        snprintf(X.out, sizeof(X.out), "%s/out", X.dir);
        snprintf(X.slog, sizeof(X.slog), "%s/server.log", X.dir);
}

static int xu_rm(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        return remove(p);
}

static void xu_teardown(void)
{
        for (int i = 0; i < XU_KIDS; i++)
                if (xu_kids[i] > 0)
                        xu_kill(xu_kids[i]);
        if (X.name[0])
                shm_unlink(X.name);
        if (X.dir[0])
                nftw(X.dir, xu_rm, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
