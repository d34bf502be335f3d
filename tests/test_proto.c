/*
 * test_proto.c - proto/ against what another process of the same user can do, and after a
 * crash: file data rewritten in flight, names and messages built to forge a log line, reasons
 * that must be said once and truly, temporary files a killed server left behind.
 *
 * Real engine-server and engine-client processes (xfer_util.h). Where a test needs a client
 * the binary would not be (a name engine-client refuses to send), the test process itself is
 * the client, through the engine API; the tamperer maps the segment raw (internal.h,
 * arena_int.h) as any process of the user can. Children are forked before any thread exists,
 * never assert and leave with _exit; every wait has a deadline.
 */
#include "xfer_util.h"

#include <sched.h>
#include <sys/file.h>

#include "arena_int.h"
#include "internal.h"
#include "proto.h"

#define MiB (1ull << 20)

TestSuite(proto, .init = xu_setup, .fini = xu_teardown, .timeout = 120);

/* ---- helpers --------------------------------------------------------------------------- */

/* An independent check of a log text: the offset of the first thing that could forge or hide
 * part of a line (a C0 control other than '\n', DEL, bytes that are not UTF-8, a C1 control,
 * a bidi control, an invisible format character), or -1 if there is none. */
static long log_dirty(const unsigned char *s, size_t n)
{
        for (size_t i = 0; i < n;) {
                unsigned c = s[i];
                if (c < 0x80) {
                        if ((c < 0x20 && c != '\n') || c == 0x7f)
                                return (long)i;
                        i++;
                        continue;
                }
                size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
                if (len == 0 || c > 0xf4 || i + len > n)
                        return (long)i;
                uint32_t cp = c & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
                for (size_t k = 1; k < len; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return (long)i;
                        cp = cp << 6 | (s[i + k] & 0x3f);
                }
                uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
                bool bad = cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff ||
                           cp <= 0x9f || cp == 0x061c || (cp >= 0x200b && cp <= 0x200f) ||
                           (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2060 && cp <= 0x2069) ||
                           cp == 0xfeff || cp == 0x00ad || (cp >= 0xe0000 && cp <= 0xe007f);
                if (bad)
                        return (long)i;
                i += len;
        }
        return -1;
}

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

/* A sparse file of size bytes (no data blocks). */
static void make_sparse(const char *path, uint64_t size)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
        cr_assert_eq(ftruncate(fd, (off_t)size), 0, "ftruncate %s: %s", path, strerror(errno));
        close(fd);
}

/* Same size and bytes? (no assertion: the caller counts) */
static bool same_bytes(const char *a, const char *b)
{
        int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
        struct stat sa, sb;
        bool same = fa >= 0 && fb >= 0 && fstat(fa, &sa) == 0 && fstat(fb, &sb) == 0 &&
                    sa.st_size == sb.st_size;
        enum { BUF = 1 << 20 };
        char *x = malloc(BUF), *y = malloc(BUF);
        for (off_t off = 0; same && off < sa.st_size; off += BUF) {
                ssize_t n = pread(fa, x, BUF, off);
                same = n > 0 && pread(fb, y, (size_t)n, off) == n && memcmp(x, y, (size_t)n) == 0;
        }
        free(x);
        free(y);
        if (fa >= 0)
                close(fa);
        if (fb >= 0)
                close(fb);
        return same;
}

/* A child that does nothing until it is killed (its pid is alive). */
static pid_t spawn_sleeper(void)
{
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(1);
                for (int i = 0; i < 600; i++)
                        xu_sleep_ms(1000);
                _exit(0);
        }
        xu_track(pid);
        return pid;
}

/* The pid of a process that existed and is gone (reaped). */
static pid_t dead_pid(void)
{
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0)
                _exit(0);
        cr_assert_eq(waitpid(pid, NULL, 0), pid);
        cr_assert(kill(pid, 0) != 0 && errno == ESRCH, "pid %d still exists", (int)pid);
        return pid;
}

/* A regular file out/name. */
static void plant(const char *name)
{
        xu_write_text(xu_path("out/%s", name), "leftover\n");
}

/* Is out/name there (as anything, symlinks not followed)? */
static bool there(const char *name)
{
        return xu_exists(xu_path("out/%s", name));
}

/* F_OFD_GETLK: does anyone hold a lock on path that would stop a write lock? */
static bool locked(const char *path)
{
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return false;
        struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        bool held = fcntl(fd, F_OFD_GETLK, &l) == 0 && l.l_type != F_UNLCK;
        close(fd);
        return held;
}

/* The name of the (first) temporary file in X.out, "" if none. */
static const char *temp_name(void)
{
        static char name[256];
        name[0] = '\0';
        DIR *d = opendir(X.out);
        if (d == NULL)
                return name;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
                if (strncmp(e->d_name, ".eng-", 5) == 0) {
                        snprintf(name, sizeof(name), "%s", e->d_name);
                        break;
                }
        closedir(d);
        return name;
}

/* An xfer server in this process on X.out (the sweep runs in eng_xfer_server_new); returns
 * the number of temporaries it removed. */
static uint32_t sweep_in_process(void)
{
        eng_xfer_server_cfg_t xc = {.outdir = X.out};
        eng_xfer_server_t *x;
        char why[512];
        cr_assert_eq(eng_xfer_server_new(&xc, &x, why, sizeof(why)), 0, "%s", why);
        uint32_t n = eng_xfer_server_stale_removed(x);
        eng_xfer_server_free(x);
        return n;
}

/* ---- names ------------------------------------------------------------------------------ */

static void assert_refused(const char *in, size_t len, const char *needle, const char *what)
{
        char out[ENG_NAME_MAX + 1];
        const char *why = NULL;
        int rc = eng_safe_name(in, len, out, sizeof(out), &why);
        cr_assert_eq(rc, -EINVAL, "%s was accepted as '%s'", what, rc == 0 ? out : "");
        cr_assert_not_null(why, "%s: refused without a reason", what);
        cr_assert_not_null(strstr(why, needle), "%s: refused saying '%s', expected it to say '%s'",
                           what, why, needle);
}

static void assert_accepted(const char *in, size_t len, const char *expect, const char *what)
{
        char out[ENG_NAME_MAX + 1];
        const char *why = "";
        cr_assert_eq(eng_safe_name(in, len, out, sizeof(out), &why), 0, "%s refused: %s", what,
                     why);
        cr_assert_str_eq(out, expect, "%s", what);
}

#define REFUSED(lit, needle)  assert_refused(lit, sizeof(lit) - 1, needle, #lit)
#define ACCEPTED(lit, expect) assert_accepted(lit, sizeof(lit) - 1, expect, #lit)

Test(proto, names_that_are_not_utf8_are_refused_saying_how)
{
        REFUSED("\xc0\xaf.bin", "overlong");      /* '/' in two bytes */
        REFUSED("a\xe0\x80\xaf", "overlong");     /* '/' in three */
        REFUSED("a\xf0\x80\x80\xaf", "overlong"); /* '/' in four */
        REFUSED("\xc1\xbf", "overlong");          /* DEL in two bytes */
        REFUSED("\xed\xa0\x80x", "surrogate");    /* U+D800 */
        REFUSED("x\xed\xbf\xbf", "surrogate");    /* U+DFFF */
        REFUSED("\xf4\x90\x80\x80", "beyond U+10FFFF");
        REFUSED("\xf5\x80\x80\x80", "beyond U+10FFFF");
        REFUSED("a\xf8\x88\x80\x80\x80", "never occurs"); /* a five-byte form */
        REFUSED("a\xff", "never occurs");
        REFUSED("\x80name", "stray continuation");
        REFUSED("name\xe2\x82", "truncated");           /* the end cuts a sequence */
        REFUSED("a\xe2(b", "truncated");                /* a sequence broken by ASCII */
        REFUSED("dir\xff/fine.bin", "not valid UTF-8"); /* anywhere in the input */
}

Test(proto, names_with_c1_bidi_or_invisible_characters_are_refused_saying_which)
{
        REFUSED("next\xc2\x85line", "C1 control"); /* NEL */
        REFUSED("csi\302\23331m", "C1 control");   /* CSI */
        REFUSED("\xc2\x80", "C1 control");
        REFUSED("\xc2\x9f", "C1 control");
        static const char *const bidi[] = {
            "\xd8\x9c",     /* U+061C ALM */
            "\xe2\x80\x8e", /* U+200E LRM */
            "\xe2\x80\x8f", /* U+200F RLM */
            "\xe2\x80\xaa", /* U+202A LRE */
            "\xe2\x80\xab", /* U+202B RLE */
            "\xe2\x80\xac", /* U+202C PDF */
            "\xe2\x80\xad", /* U+202D LRO */
            "\xe2\x80\xae", /* U+202E RLO */
            "\xe2\x81\xa6", /* U+2066 LRI */
            "\xe2\x81\xa7", /* U+2067 RLI */
            "\xe2\x81\xa8", /* U+2068 FSI */
            "\xe2\x81\xa9", /* U+2069 PDI */
        };
        for (size_t i = 0; i < sizeof(bidi) / sizeof(bidi[0]); i++) {
                char n[64];
                int len = snprintf(n, sizeof(n), "invoice%sfdp.exe", bidi[i]);
                assert_refused(n, (size_t)len, "bidirectional", n);
        }
        static const char *const invisible[] = {
            "\xe2\x80\x8b",     /* U+200B zero-width space */
            "\xe2\x80\x8c",     /* U+200C ZWNJ */
            "\xe2\x80\x8d",     /* U+200D ZWJ */
            "\xe2\x81\xa0",     /* U+2060 word joiner */
            "\xe2\x81\xa4",     /* U+2064 invisible plus */
            "\xef\xbb\xbf",     /* U+FEFF BOM */
            "\xc2\xad",         /* U+00AD soft hyphen */
            "\xe2\x80\xa8",     /* U+2028 line separator */
            "\xf3\xa0\x81\x81", /* U+E0041 tag 'A' */
        };
        for (size_t i = 0; i < sizeof(invisible) / sizeof(invisible[0]); i++) {
                char n[64];
                int len = snprintf(n, sizeof(n), "pay%spal.bin", invisible[i]);
                assert_refused(n, (size_t)len, "invisible", n);
        }
}

Test(proto, names_of_whitespace_only_are_refused)
{
        REFUSED(" ", "only whitespace");
        REFUSED("   ", "only whitespace");
        REFUSED("dir/  ", "only whitespace");
        REFUSED("\xc2\xa0", "only whitespace");     /* U+00A0 */
        REFUSED("\xe1\x9a\x80", "only whitespace"); /* U+1680 */
        REFUSED("\xe2\x80\x80", "only whitespace"); /* U+2000 */
        REFUSED("\xe2\x80\x8a", "only whitespace"); /* U+200A */
        REFUSED("\xe2\x80\xaf", "only whitespace"); /* U+202F */
        REFUSED("\xe2\x81\x9f", "only whitespace"); /* U+205F */
        REFUSED("\xe3\x80\x80", "only whitespace"); /* U+3000 */
        REFUSED(" \xe3\x80\x80\xc2\xa0 ", "only whitespace");
}

Test(proto, names_in_utf8_are_accepted_as_they_are)
{
        ACCEPTED("\xc3\xa9t\xc3\xa9.txt", "\xc3\xa9t\xc3\xa9.txt");               /* été */
        ACCEPTED("\xe6\x97\xa5\xe6\x9c\xac.bin", "\xe6\x97\xa5\xe6\x9c\xac.bin"); /* 日本 */
        ACCEPTED("\xf0\x9f\x98\x80.png", "\xf0\x9f\x98\x80.png");                 /* emoji */
        ACCEPTED("up/\xc3\xa9", "\xc3\xa9");
        ACCEPTED(" leading and trailing ", " leading and trailing ");
        ACCEPTED("no\302\240break", "no\302\240break"); /* a space among others */
        ACCEPTED("\xe3\x80\x80x", "\xe3\x80\x80x");
        ACCEPTED("back\\slash", "back\\slash");
        ACCEPTED("\xef\xbf\xbd", "\xef\xbf\xbd");                 /* U+FFFD */
        ACCEPTED("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");         /* U+10FFFF, the last */
        ACCEPTED("\xdf\xbf\xe0\xa0\x80", "\xdf\xbf\xe0\xa0\x80"); /* U+07FF U+0800 */
}

/* ---- eng_log_escape ------------------------------------------------------------------- */

static void assert_escape(const char *in, size_t len, const char *expect, const char *what)
{
        char out[512];
        size_t n = eng_log_escape(in, len, out, sizeof(out));
        cr_assert_str_eq(out, expect, "%s", what);
        cr_assert_eq(n, strlen(expect), "%s: returned %zu", what, n);
}

#define ESCAPES(lit, expect) assert_escape(lit, sizeof(lit) - 1, expect, #lit)

Test(proto, log_escape_renders_controls_bidi_and_bad_bytes_visibly)
{
        ESCAPES("plain name.bin", "plain name.bin");
        ESCAPES("a\\b", "a\\\\b");
        ESCAPES("\x1b[2J\n\r\t", "\\x1B[2J\\x0A\\x0D\\x09");
        ESCAPES("a\0b", "a\\x00b");
        ESCAPES("\x7f", "\\x7F");
        ESCAPES("csi\302\2331m", "csi\\u{009B}1m");
        ESCAPES("evil\xe2\x80\xaegpj.exe", "evil\\u{202E}gpj.exe");
        ESCAPES("\xd8\x9c\xe2\x81\xa6x\xe2\x81\xa9", "\\u{061C}\\u{2066}x\\u{2069}");
        ESCAPES("zw\xe2\x80\x8bsp\xef\xbb\xbf", "zw\\u{200B}sp\\u{FEFF}");
        ESCAPES("tag\xf3\xa0\x81\x81", "tag\\u{E0041}");
        ESCAPES("\xff\xc0\xaf", "\\xFF\\xC0\\xAF");
        ESCAPES("\xed\xa0\x80", "\\xED\\xA0\\x80");
        ESCAPES("cut\xe2\x82", "cut\\xE2\\x82");
        ESCAPES("\xe6\x97\xa5\xe6\x9c\xac \xc3\xa9 \xf0\x9f\x98\x80",
                "\xe6\x97\xa5\xe6\x9c\xac \xc3\xa9 \xf0\x9f\x98\x80");
}

Test(proto, log_escape_truncates_at_whole_pieces_and_always_terminates)
{
        char out[16];
        memset(out, 'Z', sizeof(out));
        /* "abc" fits, the 4-byte escape of \x01 does not (3 + 4 + NUL > 6) */
        size_t n = eng_log_escape("abc\001def", 7, out, 6);
        cr_assert_str_eq(out, "abc");
        cr_assert_eq(n, 10, "the whole rendering is 10 bytes, said %zu", n);
        /* a UTF-8 character is never cut */
        n = eng_log_escape("ab\xe6\x97\xa5", 5, out, 4);
        cr_assert_str_eq(out, "ab");
        cr_assert_eq(n, 5);
        /* a doubled backslash is never cut in half */
        n = eng_log_escape("ab\\", 3, out, 4);
        cr_assert_str_eq(out, "ab");
        cr_assert_eq(n, 4);
        n = eng_log_escape("abc", 3, out, 1);
        cr_assert_str_eq(out, "");
        cr_assert_eq(n, 3);
        n = eng_log_escape("abc", 3, NULL, 0); /* nothing written at all */
        cr_assert_eq(n, 3);
        n = eng_log_escape("abc", 3, out, 4);
        cr_assert_str_eq(out, "abc");
        cr_assert_lt(n, 4, "fits: no truncation reported");
}

Test(proto, log_escape_of_any_bytes_is_clean_and_truncation_is_a_prefix)
{
        /* Random byte strings, biased towards the dangerous lead bytes, and every single
         * byte: the rendering never holds anything a terminal or a reader would act on, and
         * every truncation is a prefix of the whole rendering. */
        static const unsigned char spice[] = {0x1b, 0x0a, 0x7f, 0xc2, 0x9b, 0xe2, 0x80, 0xae,
                                              0x81, 0xa6, 0xd8, 0x9c, 0xef, 0xbb, 0xbf, 0xf3,
                                              0xa0, 0xed, 0xff, 0x5c, 0x00, 0xf4, 0x8f, 0xc0};
        uint64_t s = 0x9e3779b97f4a7c15ull;
        for (int iter = 0; iter < 20000; iter++) {
                unsigned char in[48];
                size_t len = iter < 256 ? 1 : (size_t)(s % sizeof(in));
                for (size_t i = 0; i < len; i++) {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        in[i] = iter < 256 ? (unsigned char)iter
                                : s % 3    ? spice[(s >> 8) % sizeof(spice)]
                                           : (unsigned char)(s >> 16);
                }
                char full[48 * 10 + 1];
                size_t n = eng_log_escape(in, len, full, sizeof(full));
                cr_assert_eq(n, strlen(full));
                long bad = log_dirty((const unsigned char *)full, n);
                cr_assert_eq(bad, -1, "escaping left byte 0x%02x at %ld in '%s'",
                             bad >= 0 ? (unsigned char)full[bad] : 0, bad, full);
                cr_assert_null(memchr(full, '\n', n), "a newline survived");
                size_t cut = (size_t)(s >> 24) % (n + 2);
                char part[48 * 10 + 1];
                size_t m = eng_log_escape(in, len, part, cut);
                cr_assert_eq(m, n);
                if (cut > 0) {
                        size_t pl = strlen(part);
                        cr_assert_lt(pl, cut);
                        cr_assert_eq(memcmp(part, full, pl), 0, "truncation is not a prefix");
                        cr_assert_eq(log_dirty((const unsigned char *)part, pl), -1);
                }
        }
}

/* ---- a raw client (the test process), for names engine-client would refuse to send -------- */

/* FILE_OPEN name (len bytes, sent as they are) on stream s; the server's reply message into
 * msg. Returns the reply command. */
static int raw_open_on(eng_stream_t *s, const char *name, size_t len, char *msg, size_t msglen)
{
        void *p;
        uint64_t off;
        int rc = eng_stream_loan(s, (uint32_t)len, &p, &off, 5000);
        cr_assert_eq(rc, 0, "loan: %s", eng_strerror(rc));
        memcpy(p, name, len);
        rc = eng_stream_send(s, ENG_C_FILE_OPEN, 10, off, (uint32_t)len, 5000);
        cr_assert_eq(rc, 0, "send: %s (%s)", eng_strerror(rc), eng_errmsg());
        eng_msg_t m;
        rc = eng_stream_recv(s, &m, 5000);
        cr_assert_eq(rc, 0, "no reply to FILE_OPEN: %s (%s)", eng_strerror(rc), eng_errmsg());
        int cmd = m.cmd;
        size_t n = m.data && m.len < msglen ? m.len : 0;
        memcpy(msg, m.data ? m.data : "", n);
        msg[n] = '\0';
        eng_stream_release(s, &m);
        return cmd;
}

/* The same on a stream of its own. */
static int raw_open(eng_client_t *c, uint32_t id, const char *name, size_t len, char *msg,
                    size_t msglen)
{
        eng_stream_t *s;
        int rc = eng_stream_open(c, id, &s);
        cr_assert_eq(rc, 0, "stream open: %s (%s)", eng_strerror(rc), eng_errmsg());
        int cmd = raw_open_on(s, name, len, msg, msglen);
        eng_stream_abort(s);
        return cmd;
}

static eng_client_t *raw_attach(void)
{
        eng_client_cfg_t cc = {.timeout_ms = 5000};
        eng_client_t *c;
        int rc = eng_client_attach(X.name, &cc, &c);
        cr_assert_eq(rc, 0, "attach: %s (%s)", eng_strerror(rc), eng_errmsg());
        return c;
}

Test(proto, refused_names_reach_the_server_log_escaped)
{
        xu_write_opts(NULL, NULL, 0);
        xu_server_start();
        eng_client_t *c = raw_attach();
        static const struct {
                const char *name;
                const char *escaped; /* how the log must show it */
                const char *why;
        } cases[] = {
            {"invoice\xe2\x80\xaegpj.exe", "invoice\\u{202E}gpj.exe", "bidirectional"},
            {"clear\x1b[2J\x1b[H", "clear\\x1B[2J\\x1B[H", "control character"},
            {"fake\nstream 9 (pid 1) x: 1 bytes, verified", "fake\\x0Astream 9", "control"},
            {"csi\302\23331mred", "csi\\u{009B}31mred", "C1 control"},
            {"bad\xff\xfe", "bad\\xFF\\xFE", "not valid UTF-8"},
            {"zero\xe2\x80\x8bwidth", "zero\\u{200B}width", "invisible"},
        };
        for (uint32_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char msg[512];
                int cmd =
                    raw_open(c, 40 + i, cases[i].name, strlen(cases[i].name), msg, sizeof(msg));
                cr_assert_eq(cmd, ENG_S_FILE_FAIL, "'%s' was not refused", cases[i].escaped);
                cr_assert_not_null(strstr(msg, cases[i].why), "refused saying '%s'", msg);
                cr_assert(xu_log_wait(cases[i].escaped, 2000),
                          "the server log does not show the refused name as '%s'",
                          cases[i].escaped);
        }
        eng_client_detach(c);
        pid_t server = X.server;
        cr_assert_eq(xu_server_stop(), 0);
        char *log = xu_slurp(X.slog);
        long bad = log_dirty((const unsigned char *)log, strlen(log));
        cr_assert_eq(bad, -1, "the server log holds a raw byte 0x%02x at %ld:\n%s",
                     bad >= 0 ? (unsigned char)log[bad] : 0, bad, log);
        cr_assert_eq(xu_count(log, "FAILED"), (int)(sizeof(cases) / sizeof(cases[0])),
                     "one FAILED line per refused name, and no forged line:\n%s", log);
        /* Every line is one of the server's own: a timestamp, a level, then
         * "engine-server[<its pid>]: " (test_logs.c holds lines to the whole format). */
        for (char *p = log, *e; *p; p = e + 1) {
                e = strchr(p, '\n');
                cr_assert_not_null(e, "an unterminated line: %s", p);
                int y, mo, d, hh, mm, ss, ms, oh, om, pid = -1, at = -1;
                char sign, level[8];
                sscanf(p, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c%2d:%2d %7[A-Z] engine-server[%d]: %n", &y,
                       &mo, &d, &hh, &mm, &ss, &ms, &sign, &oh, &om, level, &pid, &at);
                cr_assert(at > 0 && pid == (int)server && (sign == '+' || sign == '-'),
                          "a line the server did not start:\n%.*s", (int)(e - p), p);
        }
        free(log);
        xu_assert_no_temps();
}

/* Send path on a fresh stream of c through the API (NULL: its basename), until DONE or
 * FAILED or 30 s; the final state, why into why. */
static eng_xfer_state_t api_send(eng_client_t *c, uint32_t id, const char *path, char *why,
                                 size_t n)
{
        eng_stream_t *s;
        int rc = eng_stream_open(c, id, &s);
        cr_assert_eq(rc, 0, "stream open: %s (%s)", eng_strerror(rc), eng_errmsg());
        eng_xfer_send_t *x;
        rc = eng_xfer_send_new(s, path, NULL, 0, &x, why, n);
        cr_assert_eq(rc, 0, "eng_xfer_send_new: %s", why);
        uint64_t end = xu_now_ms() + 30000;
        eng_xfer_state_t st;
        while ((st = eng_xfer_send_state(x)) != ENG_XFER_DONE && st != ENG_XFER_FAILED &&
               xu_now_ms() < end) {
                uint32_t t = eng_client_ticket(c);
                if (eng_xfer_send_step(x) == 0)
                        eng_client_wait(c, t, 100);
        }
        snprintf(why, n, "%s", eng_xfer_send_why(x));
        eng_xfer_send_free(x);
        if (st == ENG_XFER_DONE)
                eng_stream_close(s);
        else
                eng_stream_abort(s);
        return st;
}

Test(proto, a_file_in_a_folder_named_in_another_encoding_is_sent_under_its_basename)
{
        /* Only the basename travels: a Latin-1 folder name must not stop the file. */
        xu_make_file(xu_path("l\xe9gacy/ok.bin"), 300 * 1024, 21);
        xu_write_opts(NULL, NULL, 0);
        xu_server_start();
        eng_client_t *c = raw_attach();
        char why[640];
        eng_xfer_state_t st = api_send(c, 1, xu_path("l\xe9gacy/ok.bin"), why, sizeof(why));
        cr_assert_eq(st, ENG_XFER_DONE, "not delivered: %s", why);
        eng_client_detach(c);
        xu_assert_same(xu_path("l\xe9gacy/ok.bin"), xu_path("out/ok.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- reasons ------------------------------------------------------------------------------ */

Test(proto, reason_from_the_server_is_said_once)
{
        /* A file bigger than the output file system can hold (sparse: it costs nothing): the
         * server refuses it at FILE_OPEN with ENOSPC and a message that already says "No
         * space left on device"; the client must not say it a second time. */
        make_sparse(xu_path("huge.bin"), 1ull << 50);
        xu_write_opts(NULL, &(xu_stream_t){1, "huge.bin"}, 1);
        xu_server_start();
        int rc = xu_client("c", 30000, "1");
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "%s", o);
        char *out = xu_slurp(xu_path("c.out"));
        char *l = line_of(out, "stream 1 ");
        cr_assert_not_null(l, "%s", o);
        cr_assert_not_null(strstr(l, "FAILED"), "%s", l);
        cr_assert_eq(xu_count(l, "No space left on device"), 1,
                     "the reason should say 'No space left on device' exactly once: %s", l);
        free(l);
        free(out);
        free(o);
        cr_assert(xu_log_wait("FAILED", 2000));
        char *log = xu_slurp(X.slog);
        l = strstr(log, "FAILED");
        char *e = strchr(l, '\n');
        if (e)
                *e = '\0';
        cr_assert_eq(xu_count(l, "No space left on device"), 1, "server log: %s", l);
        free(log);
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
}

/* A checksum mismatch is named even when the server has no buffer left for its text, the
 * client's own loans filling the arena (CI once showed a tampered file as "server refused the
 * file (Input/output error)"): the reason also travels in the FAIL's arg. */
Test(proto, checksum_mismatch_is_named_when_the_arena_is_full)
{
        xu_write_opts("size=\"4MiB\"", NULL, 0);
        xu_server_start();
        eng_client_t *c = raw_attach();
        eng_stream_t *s;
        cr_assert_eq(eng_stream_open(c, 1, &s), 0);
        void *p;
        uint64_t off;
        cr_assert_eq(eng_stream_loan(s, 5, &p, &off, 5000), 0);
        memcpy(p, "a.bin", 5);
        cr_assert_eq(eng_stream_send(s, ENG_C_FILE_OPEN, 4, off, 5, 5000), 0);
        eng_msg_t m;
        cr_assert_eq(eng_stream_recv(s, &m, 5000), 0);
        cr_assert_eq(m.cmd, ENG_S_FILE_READY);
        eng_stream_release(s, &m);
        cr_assert_eq(eng_stream_loan(s, 4, &p, &off, 5000), 0);
        memcpy(p, "abcd", 4);
        cr_assert_eq(eng_stream_send(s, ENG_C_FILE_DATA, 0, off, 4, 5000), 0);
        xu_sleep_ms(200); /* the server has written the chunk and freed its block */
        /* Take every block the arena has left, and keep them. */
        enum { HELD_MAX = 65536 }; /* 4 MiB of 128-B blocks: 32,768 at most */
        uint64_t *held = calloc(HELD_MAX, sizeof(*held));
        cr_assert_not_null(held);
        int n = 0;
        while (n < HELD_MAX && eng_stream_try_loan(s, 64, &p, &held[n]) == 0)
                n++;
        cr_assert_lt(n, HELD_MAX, "the arena never ran out");
        cr_assert_eq(eng_stream_send(s, ENG_C_FILE_END, 12345, 0, 0, 5000), 0);
        cr_assert_eq(eng_stream_recv(s, &m, 5000), 0);
        cr_assert_eq(m.cmd, ENG_S_FILE_FAIL);
        cr_assert_eq(m.len, 0u, "the server still had a buffer for its text: the case is not made");
        char why[512];
        int err = eng_xfer_fail_reason(&m, "server failed the file", why, sizeof(why));
        eng_stream_release(s, &m);
        cr_assert_eq(err, EIO);
        cr_assert_str_eq(why, "checksum mismatch");
        for (int i = 0; i < n; i++)
                eng_stream_unloan(s, held[i]);
        free(held);
        eng_stream_abort(s);
        eng_client_detach(c);
        cr_assert_eq(xu_server_stop(), 0);
}

Test(proto, file_creation_under_fd_exhaustion_says_too_many_open_files)
{
        if (access("/usr/bin/prlimit", X_OK) != 0) {
                xu_teardown(); /* a skipped test's .fini does not run */
                cr_skip_test("prlimit is not installed here");
        }
        xu_write_opts(NULL, NULL, 0);
        xu_server_start();
        eng_client_t *c = raw_attach();
        eng_stream_t *s;
        cr_assert_eq(eng_stream_open(c, 1, &s), 0);
        /* A first round trip: the server has accepted the session and the stream (and opened
         * what it keeps open for them) before the limit comes. */
        char msg[512];
        cr_assert_eq(raw_open_on(s, ".refused", 8, msg, sizeof(msg)), ENG_S_FILE_FAIL);
        /* Every fd the server has is in use; a limit at the lowest free number makes the next
         * open (the temporary file's) fail with EMFILE. */
        int lowest = 0;
        for (; lowest < 4096; lowest++) {
                char p[64];
                snprintf(p, sizeof(p), "/proc/%d/fd/%d", (int)X.server, lowest);
                struct stat sb;
                if (lstat(p, &sb) != 0)
                        break;
        }
        char pid[32], lim[64];
        snprintf(pid, sizeof(pid), "%d", (int)X.server);
        snprintf(lim, sizeof(lim), "--nofile=%d:%d", lowest, lowest);
        char *argv[] = {"/usr/bin/prlimit", "--pid", pid, lim, NULL};
        cr_assert_eq(xu_run(5000, NULL, NULL, argv), 0, "prlimit failed");
        int cmd = raw_open_on(s, "a.bin", 5, msg, sizeof(msg));
        cr_assert_eq(cmd, ENG_S_FILE_FAIL, "the file was accepted with no fd to spare");
        cr_assert_not_null(strstr(msg, "Too many open files"), "the server said: %s", msg);
        cr_assert(xu_log_wait("Too many open files", 2000), "the server log does not say it");
        eng_stream_abort(s);
        eng_client_detach(c);
        xu_assert_no_temps();
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- leftover temporary files --------------------------------------------------------------- */

Test(proto, only_dead_predecessors_temporaries_are_removed_at_start)
{
        xu_mkdirs(X.out);
        pid_t dead = dead_pid(), live = spawn_sleeper(), me = getpid();
        char n[64];
#define NAME(...) (snprintf(n, sizeof(n), __VA_ARGS__), n)
        /* gone: */
        plant(NAME(".eng-%d-1.part", (int)dead));
        char gone_dead[64];
        snprintf(gone_dead, sizeof(gone_dead), "%s", n);
        /* abandoned: its pid lives (reused), nobody holds it, untouched for two hours */
        plant(NAME(".eng-%d-2.part", (int)live));
        char gone_old[64];
        snprintf(gone_old, sizeof(gone_old), "%s", n);
        struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
        cr_assert_eq(utimensat(AT_FDCWD, xu_path("out/%s", n), old, AT_SYMLINK_NOFOLLOW), 0);
        /* stay: */
        const char *stay[32];
        char names[32][64];
        int ns = 0;
#define STAY(...) (snprintf(names[ns], 64, __VA_ARGS__), stay[ns] = names[ns], names[ns++])
        plant(STAY(".eng-%d-1.part", (int)live)); /* a live writer, mid-create */
        plant(STAY(".eng-%d-1.part", (int)me));   /* a live process, not the server */
        /* held by a live process (this one) with an OFD lock: being written */
        plant(STAY(".eng-%d-2.part", (int)dead));
        int lfd = open(xu_path("out/%s", stay[ns - 1]), O_RDWR | O_CLOEXEC);
        struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        cr_assert(lfd >= 0 && fcntl(lfd, F_OFD_SETLK, &l) == 0, "lock: %s", strerror(errno));
        /* a symlink named like a temporary, to a file that must survive */
        xu_write_text(xu_path("victim"), "precious\n");
        cr_assert_eq(symlink("../victim", xu_path("out/%s", STAY(".eng-%d-3.part", (int)dead))), 0);
        /* a directory and a fifo named like temporaries */
        cr_assert_eq(mkdir(xu_path("out/%s", STAY(".eng-%d-4.part", (int)dead)), 0755), 0);
        cr_assert_eq(mkfifo(xu_path("out/%s", STAY(".eng-%d-5.part", (int)dead)), 0644), 0);
        /* names that are not exactly ours */
        plant(STAY(".eng-12x-1.part"));
        plant(STAY("eng-%d-1.part", (int)dead));
        plant(STAY(".eng-%d-1.part.keep", (int)dead));
        plant(STAY(".eng-0%d-1.part", (int)dead));
        plant(STAY(".eng-%d-01.part", (int)dead));
        plant(STAY(".eng-%d-.part", (int)dead));
        plant(STAY(".eng--%d-1.part", (int)dead));
        plant(STAY(".eng-+%d-1.part", (int)dead));
        plant(STAY(".eng-%d-1.PART", (int)dead));
        plant(STAY("x.eng-%d-1.part", (int)dead));
        plant(STAY(".eng-99999999999-1.part"));
        plant(STAY("precious.bin"));
#undef STAY
#undef NAME
        xu_write_opts(NULL, NULL, 0);
        xu_server_start();
        cr_assert_eq(xu_server_stop(), 0);
        cr_assert(!there(gone_dead), "%s (its pid %d is dead) was left", gone_dead, (int)dead);
        cr_assert(!there(gone_old), "%s (unlocked, two hours old) was left", gone_old);
        for (int i = 0; i < ns; i++)
                cr_assert(there(stay[i]), "%s was removed", stay[i]);
        char *v = xu_slurp(xu_path("victim"));
        cr_assert_str_eq(v, "precious\n", "the file behind the symlink changed");
        free(v);
        close(lfd);
}

Test(proto, own_pid_temporary_is_a_predecessors_unless_another_server_here_runs)
{
        xu_mkdirs(X.out);
        char mine[64];
        snprintf(mine, sizeof(mine), ".eng-%d-77.part", (int)getpid());
        plant(mine);
        /* Another xfer server of this process is alive (elsewhere): it could be writing a
         * file named with our pid, so ours is left... */
        char other[XU_PATH];
        snprintf(other, sizeof(other), "%s/other", X.dir);
        eng_xfer_server_cfg_t xc = {.outdir = other};
        eng_xfer_server_t *x;
        char why[512];
        cr_assert_eq(eng_xfer_server_new(&xc, &x, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(sweep_in_process(), 0);
        cr_assert(there(mine), "removed while another server of this pid was running");
        eng_xfer_server_free(x);
        /* ...and once we are alone, a file with our pid is a dead predecessor's. */
        cr_assert_eq(sweep_in_process(), 1);
        cr_assert(!there(mine), "a predecessor's temporary with our pid was left");
}

/* Start a transfer of stream 1 on the running server, SIGKILL the server while the file is in
 * flight, and return the name of the temporary file it leaves (asserting it was locked while
 * it was written, and no longer is). tag names the client's output files. */
static const char *kill_mid_transfer(const char *tag)
{
        static char tmp[256];
        pid_t c = xu_client_spawn(tag, XU_ARGS("1"), 1);
        cr_assert(xu_wait_temp(10000, c), "no transfer in flight within 10 s");
        snprintf(tmp, sizeof(tmp), "%s", temp_name());
        /* The server creates the file, then locks it (tmp_create): the file can show up a
         * moment before its lock (a window the sweep covers by the writer's live pid). */
        bool held = false;
        for (uint64_t end = xu_now_ms() + 2000;
             !(held = locked(xu_path("out/%s", tmp))) && xu_now_ms() < end;)
                xu_sleep_ms(1);
        cr_assert(held, "%s is not locked while it is written (2 s)", tmp);
        /* A server starting beside a live one leaves the live one's temporary alone. */
        cr_assert_eq(sweep_in_process(), 0);
        cr_assert(there(tmp), "a live server's temporary was removed");
        xu_kill(X.server); /* SIGKILL, reaped */
        X.server = 0;
        xu_finish(c, 10000, "engine-client whose server was killed");
        cr_assert(there(tmp), "the killed server left no temporary (nothing to test)");
        cr_assert(!locked(xu_path("out/%s", tmp)), "the lock outlived its process");
        return tmp;
}

Test(proto, killed_server_leaves_a_temporary_the_next_server_removes, .timeout = 90)
{
        xu_make_file(xu_path("big.bin"), 256 * MiB, 11);
        xu_write_opts(NULL, &(xu_stream_t){1, "big.bin"}, 1);
        xu_server_start();
        const char *tmp = kill_mid_transfer("c1");
        /* The library's count, as a server's start sees it. */
        cr_assert_eq(sweep_in_process(), 1, "the restarted server did not count the leftover");
        cr_assert(!there(tmp), "%s is still there", tmp);
        xu_assert_no_temps();
        cr_assert(!xu_exists(xu_path("out/big.bin")));
        /* And through the real binary: killed again, restarted, it removes the leftover, says
         * so, and serves. */
        X.server = xu_server_start_log(xu_path("server2.log"));
        tmp = kill_mid_transfer("c2");
        X.server = xu_server_start_log(xu_path("server3.log"));
        cr_assert(!there(tmp), "the restarted engine-server left %s", tmp);
        xu_assert_no_temps();
        /* (it says so right after "serving") */
        uint64_t end = xu_now_ms() + 2000;
        while (!xu_file_has(xu_path("server3.log"), "removed 1 temporary file") &&
               xu_now_ms() < end)
                xu_sleep_ms(5);
        cr_assert(xu_file_has(xu_path("server3.log"), "removed 1 temporary file"),
                  "the restarted engine-server does not say it removed the leftover");
        int rc = xu_client("again", 60000, "1");
        char *o = xu_output("again");
        cr_assert_eq(rc, 0, "%s", o);
        free(o);
        xu_assert_same(xu_path("big.bin"), xu_path("out/big.bin"));
        cr_assert_eq(xu_server_stop(), 0);
}

/* ---- file data rewritten in flight ------------------------------------------------------- */

#define NFILES 8
#define SPOT   64 /* bytes rewritten at the start of a block's payload */

/*
 * Two tamperers, one per side of the transfer:
 *
 * FILL rewrites a block while its sender fills it. A block in use whose payload started with
 * other bytes a moment ago (FILL_FRESH_NS) is being filled right now: its first SPOT bytes
 * get the pattern at once. A sender that preads into the loan and hashes the loan (a pread
 * fills from the start, the hash follows) hashes the pattern, and the receiver writes it:
 * both agree on bytes the source does not hold. A sender that hashes its own copy before it
 * fills the loan is immune: the receiver then sees bytes that disagree with the hash.
 *
 * FLICKER rewrites a block while its receiver reads it. One filled block at a time (in use,
 * its payload unchanged for FLICKER_STABLE_NS: the sender is done with it), then a pause of
 * FLICKER_GAP_NS: its first SPOT bytes alternate between the pattern and what the sender put
 * there, every pass (about a microsecond), until the receiver frees it. A receiver that writes
 * the bytes from shared memory and hashes them there in a second read can write the pattern and
 * hash the sender's bytes: a corrupt file with agreeing hashes. A receiver that copies once
 * writes and hashes the same bytes.
 */
enum tamper_mode { TAMPER_FILL, TAMPER_FLICKER };

#define FILL_FRESH_NS     20000ull
#define FLICKER_STABLE_NS 20000ull
#define FLICKER_GAP_NS    4000000ull

struct tamper_ctl {
        uint32_t up, stop;
        enum tamper_mode mode;
        uint64_t events; /* FILL: bytes changed; FLICKER: blocks flickered until freed */
        uint64_t passes;
        uint64_t ms; /* how long it ran */
        char msg[256];
};

/* What the tamperer saw at each 64 KiB slot of the arena, and its FLICKER target. */
struct tamper_seen {
        uint64_t *at;    /* last look */
        uint64_t *since; /* the head has held its value since */
        uint64_t *head;  /* the first 8 bytes of the payload */
        size_t n;
        bool on;       /* flickering target */
        uint64_t off;  /* its block */
        bool phase;    /* the pattern is in (else the original) */
        uint64_t next; /* no new target before */
        unsigned char orig[SPOT];
};

static uint64_t mono_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* FLICKER, for the block at o (state w, payload t, head now): start, flip or end. */
static uint64_t flicker(struct tamper_seen *ts, uint64_t o, uint64_t w, unsigned char *t,
                        uint64_t head, uint64_t now, const unsigned char *pat, size_t k)
{
        uint64_t pat8, orig8;
        memcpy(&pat8, pat, 8);
        if (ts->on && ts->off == o) {
                memcpy(&orig8, ts->orig, 8);
                if (blk_state(w) != BLK_USED || (head != pat8 && head != orig8)) {
                        ts->on = false; /* freed (or refilled): the receiver is done */
                        ts->next = now + FLICKER_GAP_NS;
                        return 1;
                }
                memcpy(t, ts->phase ? ts->orig : pat, SPOT);
                ts->phase = !ts->phase;
                return 0;
        }
        if (!ts->on && now >= ts->next && blk_state(w) == BLK_USED && head != pat8 &&
            head == ts->head[k] && now - ts->since[k] >= FLICKER_STABLE_NS) {
                memcpy(ts->orig, t, SPOT);
                ts->on = true;
                ts->off = o;
                ts->phase = false;
        }
        return 0;
}

/* One pass over the lock-free arena's buffer area, walked like lf_walk (superblocks down from
 * the top, blocks of one class each, stopping at anything that is not a header), over the
 * blocks of 64 KiB and more (file chunks). Returns the events of the pass. */
static uint64_t tamper_pass(eng_arena_t *a, enum tamper_mode mode, const unsigned char *pat,
                            struct tamper_seen *ts)
{
        uint64_t sb = 1ull << a->max_shift, events = 0, pat8;
        memcpy(&pat8, pat, 8);
        uint64_t m = __atomic_load_n(&a->hdr->marks, __ATOMIC_ACQUIRE);
        uint64_t bb = units_to_off(marks_buf_bottom(m));
        if (bb < a->rec_base || bb > a->top)
                bb = a->top;
        bool target_seen = false;
        for (uint64_t s = a->top; s >= bb + sb; s -= sb) {
                for (uint64_t o = s - sb; o < s;) {
                        uint64_t w = __atomic_load_n(&blk_at(a, o)->word, __ATOMIC_ACQUIRE);
                        uint32_t c = blk_class(w);
                        if (blk_magic(w) != BLK_MAGIC || c >= a->nclasses)
                                break;
                        uint64_t cb = 1ull << (a->min_shift + c);
                        if ((o & (cb - 1)) || o + cb > s)
                                break;
                        size_t k = (size_t)(o >> 16);
                        if (cb >= (64u << 10) && k < ts->n) {
                                /* free blocks are watched too: a loan is filled at once */
                                unsigned char *t = a->base + o + ENG_ARENA_HDR_BYTES;
                                uint64_t now = mono_ns();
                                uint64_t head = __atomic_load_n((uint64_t *)t, __ATOMIC_RELAXED);
                                if (mode == TAMPER_FILL && blk_state(w) == BLK_USED &&
                                    head != ts->head[k] && head != pat8 &&
                                    now - ts->at[k] < FILL_FRESH_NS) {
                                        for (int i = 0; i < SPOT; i++)
                                                events += t[i] != pat[i];
                                        memcpy(t, pat, SPOT);
                                        head = pat8;
                                } else if (mode == TAMPER_FLICKER) {
                                        events += flicker(ts, o, w, t, head, now, pat, k);
                                        target_seen |= ts->on && ts->off == o;
                                }
                                if (head != ts->head[k])
                                        ts->since[k] = now;
                                ts->head[k] = head;
                                ts->at[k] = now;
                        }
                        o += cb;
                }
        }
        if (mode == TAMPER_FLICKER && ts->on && !target_seen)
                ts->on = false; /* its superblock was split or merged: give it up */
        return events;
}

static void tamper_main(struct tamper_ctl *k)
{
        uint64_t end = xu_now_ms() + 90000;
        struct eng_seg sg;
        int rc;
        while ((rc = seg_attach(&sg, X.name)) != 0) {
                if (xu_now_ms() > end) {
                        snprintf(k->msg, sizeof(k->msg), "seg_attach: %s", eng_strerror(rc));
                        _exit(2);
                }
                xu_sleep_ms(5);
        }
        if (sg.arena.kind != ENG_ARENA_LOCKFREE) {
                snprintf(k->msg, sizeof(k->msg), "the tamperer walks only the lock-free arena");
                _exit(3);
        }
        unsigned char pat[SPOT];
        for (int i = 0; i < SPOT; i++)
                pat[i] = (unsigned char)(0xa5 ^ i);
        struct tamper_seen ts = {.n = (size_t)(sg.arena.top >> 16) + 1};
        ts.at = calloc(ts.n, sizeof(*ts.at));
        ts.since = calloc(ts.n, sizeof(*ts.since));
        ts.head = calloc(ts.n, sizeof(*ts.head));
        if (ts.at == NULL || ts.since == NULL || ts.head == NULL)
                _exit(4);
        __atomic_store_n(&k->up, 1, __ATOMIC_RELEASE);
        uint64_t t0 = xu_now_ms();
        while (!__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE) && xu_now_ms() < end) {
                uint64_t n = tamper_pass(&sg.arena, k->mode, pat, &ts);
                __atomic_fetch_add(&k->events, n, __ATOMIC_RELAXED);
                __atomic_fetch_add(&k->passes, 1, __ATOMIC_RELAXED);
        }
        k->ms = xu_now_ms() - t0;
        seg_unmap(&sg);
        _exit(0);
}

/* This process and the children it forks from now on run on cpu only (-1: on every cpu). */
static void pin_children(int cpu)
{
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < CPU_SETSIZE && i < 1024; i++)
                if (cpu < 0 || i == cpu)
                        CPU_SET(i, &set);
        sched_setaffinity(0, sizeof(set), &set);
}

#define ROUNDS_MAX 16

/* One round: engine-client sends the NFILES files; counts what arrived, what arrived
 * different from its source, and checks that every failure is a checksum mismatch. */
static void tamper_round(int round, char files[][32], int *delivered, int *corrupt, int *failed,
                         char *bad, size_t badlen)
{
        char tag[16];
        snprintf(tag, sizeof(tag), "c%d", round);
        for (int i = 0; i < NFILES; i++)
                unlink(xu_path("out/%s", files[i]));
        int rc = xu_client(tag, 180000, "1", "2", "3", "4", "5", "6", "7", "8");
        char *o = xu_output(tag);
        cr_assert(rc == 0 || rc == 1, "client exit %d\n%s", rc, o);
        char *out = xu_slurp(xu_path("%s.out", tag));
        for (int i = 0; i < NFILES; i++) {
                if (xu_exists(xu_path("out/%s", files[i]))) {
                        ++*delivered;
                        if (!same_bytes(xu_path("%s", files[i]), xu_path("out/%s", files[i]))) {
                                ++*corrupt;
                                size_t u = strlen(bad);
                                snprintf(bad + u, badlen - u, " %s (round %d)", files[i], round);
                        }
                        continue;
                }
                ++*failed;
                char prefix[32];
                snprintf(prefix, sizeof(prefix), "stream %d ", i + 1);
                char *l = line_of(out, prefix);
                cr_assert_not_null(l, "no line for %s:\n%s", files[i], o);
                cr_assert_not_null(strstr(l, "FAILED"), "%s is missing but: %s", files[i], l);
                cr_assert_not_null(strstr(l, "checksum mismatch"),
                                   "%s failed for another reason than a checksum mismatch: %s",
                                   files[i], l);
                free(l);
        }
        free(out);
        free(o);
}

/* NFILES files of 8..32 MiB in rounds through a real server and client while a tamperer in
 * mode rewrites blocks in flight, until it has made `enough` events (at most ROUNDS_MAX
 * rounds): every file under its final name must be its source, every other one must have
 * failed with a checksum mismatch. */
static void tamper_test(enum tamper_mode mode, uint64_t enough, const char *what)
{
        if (getenv("ENG_TEST_TRANSPORT") && strcmp(getenv("ENG_TEST_TRANSPORT"), "mutex") == 0) {
                xu_teardown(); /* a skipped test's .fini does not run */
                cr_skip_test("the tamperer walks the lock-free arena only");
        }
        xu_stream_t st[NFILES];
        char files[NFILES][32];
        for (int i = 0; i < NFILES; i++) {
                snprintf(files[i], sizeof(files[i]), "f%d.bin", i);
                /* 8..32 MiB, most ending in a partial chunk */
                uint64_t size = 8 * MiB + (uint64_t)i * 24 * MiB / (NFILES - 1) + 4099u * i;
                xu_make_file(xu_path("%s", files[i]), size, 100 + (uint64_t)i);
                st[i] = (xu_stream_t){(unsigned)i + 1, files[i]};
        }
        xu_write_opts("chunk=\"256KiB\"", st, NFILES);
        xu_server_start();
        struct tamper_ctl *k =
            mmap(NULL, sizeof(*k), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(k, MAP_FAILED);
        memset(k, 0, sizeof(*k));
        k->mode = mode;
        /* With two cpus or more, the tamperer and the client run on different ones, so the
         * tamperer sees the client's fills while they happen. */
        bool pin = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
        pid_t parent = getpid();
        if (pin)
                pin_children(1);
        pid_t t = fork();
        cr_assert_geq(t, 0, "fork: %s", strerror(errno));
        if (t == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(1);
                tamper_main(k);
        }
        xu_track(t);
        if (pin)
                pin_children(0); /* the clients, spawned by this process from here on */
        uint64_t end = xu_now_ms() + 10000;
        while (!__atomic_load_n(&k->up, __ATOMIC_ACQUIRE) && xu_now_ms() < end) {
                int stt;
                if (xu_wait(t, 0, &stt))
                        cr_assert_fail("the tamperer left (%d): %s", xu_code(stt), k->msg);
                xu_sleep_ms(2);
        }
        cr_assert(__atomic_load_n(&k->up, __ATOMIC_ACQUIRE), "the tamperer did not attach");
        /* Scheduling decides how often the tamperer catches its moment: rounds until it has
         * made enough events, at most ROUNDS_MAX. */
        int delivered = 0, corrupt = 0, failed = 0, rounds = 0;
        char bad[2048] = "";
        while (rounds < ROUNDS_MAX &&
               (rounds == 0 || __atomic_load_n(&k->events, __ATOMIC_RELAXED) < enough))
                tamper_round(rounds++, files, &delivered, &corrupt, &failed, bad, sizeof(bad));
        if (pin)
                pin_children(-1);
        __atomic_store_n(&k->stop, 1, __ATOMIC_RELEASE);
        int ts = xu_finish(t, 10000, "tamperer");
        cr_assert_eq(ts, 0, "tamperer: exit %d: %s", ts, k->msg);
        cr_log_info("%s tamperer: %llu events in %llu passes over %llu ms; %d rounds of %d "
                    "files: %d delivered, %d failed",
                    mode == TAMPER_FILL ? "fill" : "flicker", (unsigned long long)k->events,
                    (unsigned long long)k->passes, (unsigned long long)k->ms, rounds, NFILES,
                    delivered, failed);
        cr_assert_gt(k->events, 0, "the tamperer changed nothing: the test proves nothing");
        cr_assert_eq(corrupt, 0,
                     "%d of %d files under their final name differ from their source:%s. %s "
                     "(%llu tamperer events in %d rounds)",
                     corrupt, delivered, bad, what, (unsigned long long)k->events, rounds);
        munmap(k, sizeof(*k));
        cr_assert_eq(xu_server_stop(), 0);
        xu_assert_no_temps();
}

Test(proto, payload_rewritten_while_the_sender_fills_it_never_reaches_a_final_name, .timeout = 300)
{
        tamper_test(TAMPER_FILL, 1024,
                    "The sender hashed bytes another process wrote into its loan, and the "
                    "receiver wrote them: both hashes agreed on bytes the source does not hold");
}

Test(proto, payload_flickering_while_the_receiver_reads_it_never_reaches_a_final_name,
     .timeout = 300)
{
        tamper_test(TAMPER_FLICKER, 128,
                    "The receiver wrote bytes another process put in shared memory and hashed "
                    "what it read there a moment later: the hash agreed, the file did not");
}

/*
 * proto/ hashes file data with libxxhash's run-time dispatched XXH3 (AVX2 or AVX-512 where the
 * CPU has them; see xfer_int.h), while a peer on another CPU, and every other XXH3 user, may
 * use the plain one. They must agree on every length, whatever pieces the data is fed in.
 */
#if defined(__x86_64__) || defined(__i386__)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>

Test(proto, dispatched_hash_is_the_plain_hash)
{
        enum { N = 3 * (1 << 20) + 77 };
        unsigned char *b = malloc(N);
        cr_assert_not_null(b);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < N; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                b[i] = (unsigned char)x;
        }
        XXH3_state_t *s = XXH3_createState();
        cr_assert_not_null(s);
        /* every length up to 300 (the short-input paths), then large ones fed in odd pieces */
        for (size_t len = 0; len < N; len = len < 300 ? len + 1 : len * 3 + 1009) {
                uint64_t plain = XXH3_64bits(b, len);
                cr_assert_eq(XXH3_64bits_dispatch(b, len), plain, "one-shot, %zu bytes", len);
                cr_assert_eq(XXH3_64bits_reset(s), XXH_OK);
                size_t piece = 1 + (size_t)(x % 70000);
                for (size_t k = 0; k < len; k += piece) {
                        size_t n = len - k < piece ? len - k : piece;
                        cr_assert_eq(XXH3_64bits_update_dispatch(s, b + k, n), XXH_OK);
                }
                cr_assert_eq(XXH3_64bits_digest(s), plain, "streamed in %zu-byte pieces, %zu bytes",
                             piece, len);
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        }
        XXH3_freeState(s);
        free(b);
}
#endif
