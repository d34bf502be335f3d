/*
 * test_logs.c - the log lines of engine-server and engine-client (issue 12): every line either
 * program writes to stderr, in a good transfer, failed ones, a client killed mid-way and a
 * server stop, matches one strict format (README.md, "Logs"):
 *
 *   2026-12-04T23:51:25.123+00:00 INFO engine-server[1234]: message key=value key="a b"
 *
 * with a timestamp within a minute of now in this machine's UTC offset, and the events carry
 * the fields they promise, whose values decode back to what they stand for (a name with
 * spaces, quotes, '=', a newline or a bidi control included).
 *
 * Real processes (xfer_util.h); where a name engine-client would refuse to send is needed, the
 * test process itself is the client, through the engine API, as in test_proto.c.
 */
#include "xfer_util.h"

#include <math.h>
#include <regex.h>

#include "proto.h"

#define MiB (1ull << 20)

TestSuite(logs, .init = xu_setup, .fini = xu_teardown, .timeout = 120);

/* ---- the parser ---------------------------------------------------------------------- */

#define LL_FIELDS 24

typedef struct ll_field {
        char key[32];
        char *val; /* decoded, NUL-terminated (may hold other NULs: use len) */
        size_t len;
} ll_field_t;

typedef struct ll {
        char *text; /* the whole line, for messages */
        char level[8];
        char prog[32];
        long pid;
        char *msg;
        time_t when;
        int nf;
        ll_field_t f[LL_FIELDS];
} ll_t;

/* The format as one POSIX ERE (bytes: the C locale). The message holds no '='; a bare value is
 * printable ASCII without space, '"', '=' or '\'; a quoted one knows four escapes. */
#define TS_RE                                                                                      \
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}[+-][0-9]{2}:[0-9]{2}"
#define QUOTED   "\"([^\"\\\\]|\\\\[\\\\\"]|\\\\x[0-9A-F]{2}|\\\\u[{][0-9A-F]{4,6}[}])*\""
#define BARE     "[]!#-<>-[^-~]+"
#define FIELD_RE " [a-z0-9_]+=(" QUOTED "|" BARE ")"
#define LINE_RE                                                                                    \
        "^" TS_RE                                                                                  \
        " (DEBUG|INFO|WARN|ERROR) (engine-server|engine-client)\\[[0-9]+\\]: [^=]*(" FIELD_RE      \
        ")*$"

static int hexval(char c)
{
        return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static size_t put_utf8(char *o, uint32_t cp)
{
        if (cp < 0x80) {
                o[0] = (char)cp;
                return 1;
        }
        if (cp < 0x800) {
                o[0] = (char)(0xc0 | cp >> 6);
                o[1] = (char)(0x80 | (cp & 0x3f));
                return 2;
        }
        if (cp < 0x10000) {
                o[0] = (char)(0xe0 | cp >> 12);
                o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
                o[2] = (char)(0x80 | (cp & 0x3f));
                return 3;
        }
        o[0] = (char)(0xf0 | cp >> 18);
        o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[3] = (char)(0x80 | (cp & 0x3f));
        return 4;
}

/* The first thing in a line that could forge or hide part of it (a control byte, bytes that
 * are not UTF-8, a C1, bidi or invisible character), or NULL. */
static const char *dirty(const char *s)
{
        const unsigned char *p = (const unsigned char *)s;
        for (size_t i = 0; p[i];) {
                unsigned c = p[i];
                if (c < 0x80) {
                        if (c < 0x20 || c == 0x7f)
                                return s + i;
                        i++;
                        continue;
                }
                size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
                if (len == 0 || c > 0xf4)
                        return s + i;
                uint32_t cp = c & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
                for (size_t k = 1; k < len; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                return s + i;
                        cp = cp << 6 | (p[i + k] & 0x3f);
                }
                uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
                if (cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || cp <= 0x9f ||
                    cp == 0x061c || (cp >= 0x200b && cp <= 0x200f) ||
                    (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2060 && cp <= 0x2069) ||
                    cp == 0xfeff || cp == 0x00ad || (cp >= 0xe0000 && cp <= 0xe007f))
                        return s + i;
                i += len;
        }
        return NULL;
}

/*
 * Parse one line (without its '\n') into *l; NULL, or why it is not a log line. Checks the
 * whole line against LINE_RE, the timestamp against the clock (within 60 s of now, in this
 * machine's UTC offset for that instant), then decodes every field (a key at most once).
 */
static const char *ll_parse(const char *line, ll_t *l)
{
        static regex_t re;
        static bool compiled;
        if (!compiled) {
                int rc = regcomp(&re, LINE_RE, REG_EXTENDED | REG_NOSUB);
                cr_assert_eq(rc, 0, "regcomp failed (%d)", rc);
                compiled = true;
        }
        memset(l, 0, sizeof(*l));
        if (dirty(line) != NULL)
                return "a raw control, bidi, invisible or non-UTF-8 byte";
        if (regexec(&re, line, 0, NULL, 0) != 0)
                return "does not match the format";
        l->text = strdup(line);

        struct tm tm = {0};
        int ms, oh, om, at = -1;
        char sign;
        if (sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c%2d:%2d %n", &tm.tm_year, &tm.tm_mon,
                   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms, &sign, &oh, &om,
                   &at) != 10 ||
            at < 0)
                return "timestamp";
        if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
            tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60 || oh > 14 || om > 59)
                return "timestamp out of range";
        tm.tm_year -= 1900;
        tm.tm_mon -= 1;
        long off = (sign == '-' ? -1 : 1) * (oh * 3600L + om * 60L);
        l->when = timegm(&tm) - off;
        time_t now = time(NULL);
        if (llabs((long long)(now - l->when)) > 60)
                return "timestamp more than a minute away from now";
        struct tm local;
        localtime_r(&l->when, &local);
        if (local.tm_gmtoff != off)
                return "UTC offset is not this machine's";

        const char *p = line + at;
        int n = -1;
        if (sscanf(p, "%7[A-Z] %31[a-z-][%ld]: %n", l->level, l->prog, &l->pid, &n) != 3 || n < 0)
                return "level or program";
        p += n;
        /* The message ends where the first field begins: the space before the first '='
         * one's key (the message holds no '='). */
        const char *eq = strchr(p, '=');
        const char *fs = p + strlen(p);
        if (eq != NULL) {
                fs = eq;
                while (fs > p && fs[-1] != ' ')
                        fs--;
                if (fs == p)
                        return "a field without a message before it";
                fs--; /* the space */
        }
        l->msg = strndup(p, (size_t)(fs - p));
        for (p = fs; *p;) {
                if (l->nf == LL_FIELDS)
                        return "too many fields";
                ll_field_t *f = &l->f[l->nf];
                if (*p++ != ' ')
                        return "fields are not separated by one space";
                size_t k = 0;
                while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') {
                        if (k + 1 >= sizeof(f->key))
                                return "key too long";
                        f->key[k++] = *p++;
                }
                if (k == 0 || *p++ != '=')
                        return "key=value expected";
                for (int i = 0; i < l->nf; i++)
                        if (strcmp(l->f[i].key, f->key) == 0)
                                return "a key given twice";
                f->val = malloc(strlen(p) + 1);
                if (*p == '"') {
                        p++;
                        for (;;) {
                                if (*p == '\0')
                                        return "unterminated quoted value";
                                if (*p == '"') {
                                        p++;
                                        break;
                                }
                                if (*p != '\\') {
                                        f->val[f->len++] = *p++;
                                        continue;
                                }
                                p++;
                                if (*p == '\\' || *p == '"') {
                                        f->val[f->len++] = *p++;
                                } else if (*p == 'x' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
                                        f->val[f->len++] = (char)(hexval(p[1]) * 16 + hexval(p[2]));
                                        p += 3;
                                } else if (*p == 'u' && p[1] == '{') {
                                        uint32_t cp = 0;
                                        p += 2;
                                        while (hexval(*p) >= 0)
                                                cp = cp * 16 + (uint32_t)hexval(*p++);
                                        if (*p++ != '}' || cp > 0x10ffff)
                                                return "bad \\u{} escape";
                                        f->len += put_utf8(f->val + f->len, cp);
                                } else {
                                        return "unknown escape in a quoted value";
                                }
                        }
                        if (*p != ' ' && *p != '\0')
                                return "a quoted value runs into the next field";
                } else {
                        while (*p && *p != ' ') {
                                if (*p == '"' || *p == '=' || *p == '\\')
                                        return "a bare value holds '\"', '=' or '\\'";
                                f->val[f->len++] = *p++;
                        }
                        if (f->len == 0)
                                return "empty bare value";
                }
                f->val[f->len] = '\0';
                l->nf++;
        }
        return NULL;
}

static void ll_free(ll_t *l)
{
        for (int i = 0; i < l->nf; i++)
                free(l->f[i].val);
        free(l->msg);
        free(l->text);
        memset(l, 0, sizeof(*l));
}

/* The decoded value of key, or NULL. */
static const char *ll_get(const ll_t *l, const char *key)
{
        for (int i = 0; i < l->nf; i++)
                if (strcmp(l->f[i].key, key) == 0)
                        return l->f[i].val;
        return NULL;
}

/* key's value as a number (the whole value must be one). */
static double ll_num(const ll_t *l, const char *key)
{
        const char *v = ll_get(l, key);
        cr_assert_not_null(v, "no %s= in: %s", key, l->text);
        char *end;
        double d = strtod(v, &end);
        cr_assert(*v && *end == '\0' && isfinite(d) && d >= 0, "%s=%s is not a number in: %s", key,
                  v, l->text);
        return d;
}

typedef struct log {
        ll_t *l;
        int n;
} log_t;

/* Every line of a program's stderr, each parsed strictly (asserts), all from prog[pid]. */
static log_t log_read(const char *path, const char *prog, pid_t pid)
{
        char *s = xu_slurp(path);
        log_t g = {calloc(strlen(s) / 40 + 2, sizeof(ll_t)), 0};
        for (char *p = s, *e; *p; p = e + 1) {
                e = strchr(p, '\n');
                cr_assert_not_null(e, "%s: an unterminated line: %s", path, p);
                *e = '\0';
                ll_t *l = &g.l[g.n++];
                const char *why = ll_parse(p, l);
                cr_assert_null(why, "%s: %s:\n%s", path, why, p);
                cr_assert_str_eq(l->prog, prog, "%s", p);
                cr_assert_eq(l->pid, (long)pid, "%s: not pid %d: %s", path, (int)pid, p);
        }
        free(s);
        return g;
}

static void log_free(log_t *g)
{
        for (int i = 0; i < g->n; i++)
                ll_free(&g->l[i]);
        free(g->l);
}

/* The lines with this level whose message contains msg and whose field key (if given) is
 * value; asserts there is exactly one and returns it. */
static const ll_t *log_one(const log_t *g, const char *level, const char *msg, const char *key,
                           const char *value)
{
        const ll_t *hit = NULL;
        int n = 0;
        for (int i = 0; i < g->n; i++) {
                const ll_t *l = &g->l[i];
                if (strstr(l->msg, msg) == NULL)
                        continue;
                if (key != NULL && (ll_get(l, key) == NULL || strcmp(ll_get(l, key), value)))
                        continue;
                cr_assert_str_eq(l->level, level, "wrong level: %s", l->text);
                hit = l;
                n++;
        }
        cr_assert_eq(n, 1, "%d lines say '%s'%s%s%s, want 1", n, msg, key ? " with " : "",
                     key ? key : "", key ? "=" : "");
        return hit;
}

static const char *u64s(uint64_t v)
{
        static char b[4][24];
        static int k;
        char *p = b[k++ & 3];
        snprintf(p, 24, "%llu", (unsigned long long)v);
        return p;
}

/* ---- the parser itself: the format it holds lines to ------------------------------------ */

Test(logs, the_parser_takes_the_format_and_refuses_the_old_one_and_near_misses, .timeout = 30)
{
        char now[40], good[512];
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        long off = tm.tm_gmtoff / 60;
        size_t k = strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(now + k, sizeof(now) - k, ".123%c%02ld:%02ld", off < 0 ? '-' : '+', labs(off) / 60,
                 labs(off) % 60);
        snprintf(good, sizeof(good),
                 "%s WARN engine-server[42]: transfer FAILED stream=3 pid=7 "
                 "name=\"a \\\"b\\\"\\\\=c \\x0A\\u{202E}d\" bytes=0 error=\"refused: x\"",
                 now);
        ll_t l;
        const char *why = ll_parse(good, &l);
        cr_assert_null(why, "%s: %s", why, good);
        cr_assert_str_eq(l.level, "WARN");
        cr_assert_str_eq(l.prog, "engine-server");
        cr_assert_eq(l.pid, 42);
        cr_assert_str_eq(l.msg, "transfer FAILED");
        cr_assert_eq(l.nf, 5);
        cr_assert_str_eq(ll_get(&l, "name"), "a \"b\"\\=c \n\xe2\x80\xae"
                                             "d");
        cr_assert_str_eq(ll_get(&l, "error"), "refused: x");
        ll_free(&l);

        static const char *bad[] = {
            /* the format before issue 12 */
            "00:15:27.340 engine-server: stream 2 (pid 17420) a.bin: 5000 bytes in 0.001 s, "
            "5.8 MB/s, verified",
            "engine-client: stream 1: delivered and verified",
            /* near misses, after the timestamp */
            " NOTICE engine-server[1]: x",                  /* unknown level */
            " INFO engine-server: x",                       /* no pid */
            " INFO engine-server[1] x",                     /* no colon */
            " INFO engine-server[1]: a=b=c",                /* '=' in a bare value */
            " INFO engine-server[1]: m k=\"open",           /* unterminated */
            " INFO engine-server[1]: m k=\"a\\qb\"",        /* unknown escape */
            " INFO engine-server[1]: m k=\"a\"b",           /* runs on */
            " INFO engine-server[1]: m K=v",                /* key case */
            " INFO engine-server[1]: m k=v k=w",            /* key twice */
            " INFO engine-server[1]: m k=a\\b",             /* backslash bare */
            " INFO engine-server[1]: m k=",                 /* empty bare */
            " INFO engine-server[1]: m\tk=v",               /* control */
            " INFO engine-server[1]: m k=\"\xe2\x80\xae\"", /* raw bidi */
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char line[512];
                snprintf(line, sizeof(line), "%s%s", bad[i][0] == ' ' ? now : "", bad[i]);
                why = ll_parse(line, &l);
                cr_assert_not_null(why, "took: %s", line);
                ll_free(&l);
        }
        /* a date an hour away, a wrong UTC offset, no date or no offset at all */
        char line[512];
        snprintf(line, sizeof(line), "%s", good);
        line[12] = line[12] == '0' ? '5' : '0'; /* the hour's second digit */
        cr_assert_not_null(ll_parse(line, &l), "took: %s", line);
        ll_free(&l);
        snprintf(line, sizeof(line), "%s", good);
        line[25] = line[25] == '0' ? '5' : '0'; /* the offset's hour */
        cr_assert_not_null(ll_parse(line, &l), "took: %s", line);
        ll_free(&l);
        snprintf(line, sizeof(line), "%s", good + 11); /* time only */
        cr_assert_not_null(ll_parse(line, &l), "took: %s", line);
        ll_free(&l);
        snprintf(line, sizeof(line), "%.23s%s", good, good + 29); /* no offset */
        cr_assert_not_null(ll_parse(line, &l), "took: %s", line);
        ll_free(&l);
}

/* ---- a good transfer, and the stop -------------------------------------------------- */

Test(logs, a_verified_transfer_and_the_stop_are_logged_with_their_fields, .timeout = 120)
{
        static const char odd[] = "a \"b\"=c d\xc3\xa9.bin"; /* space, quotes, '=', UTF-8 */
        /* a segment name with a space and a '=': the "serving" message holds it escaped */
        size_t k = strlen(X.name);
        snprintf(X.name + k, sizeof(X.name) - k, " a=b");
        snprintf(X.shm, sizeof(X.shm), "/dev/shm%s", X.name);
        xu_make_file(xu_path("src/plain.bin"), 300 * 1024 + 7, 1);
        xu_make_file(xu_path("src/%s", odd), 64 * 1024, 2);
        xu_write_opts(
            NULL, (xu_stream_t[]){{1, "src/plain.bin"}, {2, "src/a &quot;b&quot;=c d\xc3\xa9.bin"}},
            2);
        xu_server_start();
        pid_t server = X.server;
        pid_t c = xu_client_spawn("c", XU_ARGS("1", "2"), 2);
        int rc = xu_finish(c, 60000, "engine-client");
        char *o = xu_output("c");
        cr_assert_eq(rc, 0, "exit %d\n%s", rc, o);
        free(o);
        cr_assert_eq(xu_server_stop(), 0);
        xu_assert_same(xu_path("src/plain.bin"), xu_path("out/plain.bin"));
        xu_assert_same(xu_path("src/%s", odd), xu_path("out/%s", odd));

        log_t s = log_read(X.slog, "engine-server", server);
        log_t cl = log_read(xu_path("c.err"), "engine-client", c);
        const struct {
                const char *id, *name;
                uint64_t size;
        } f[] = {{"1", "plain.bin", 300 * 1024 + 7}, {"2", odd, 64 * 1024}};
        for (int i = 0; i < 2; i++) {
                const ll_t *l =
                    log_one(&s, "INFO", "file received and verified", "stream", f[i].id);
                cr_assert_str_eq(ll_get(l, "pid"), u64s((uint64_t)c), "%s", l->text);
                cr_assert_str_eq(ll_get(l, "name"), f[i].name, "%s", l->text);
                cr_assert_str_eq(ll_get(l, "bytes"), u64s(f[i].size), "%s", l->text);
                ll_num(l, "seconds");
                ll_num(l, "rate");

                l = log_one(&cl, "INFO", "sending", "stream", f[i].id);
                cr_assert_str_eq(ll_get(l, "name"), f[i].name, "%s", l->text);
                cr_assert_str_eq(ll_get(l, "bytes"), u64s(f[i].size), "%s", l->text);
                cr_assert_not_null(strstr(ll_get(l, "file"), f[i].name), "%s", l->text);
                l = log_one(&cl, "INFO", "delivered and verified", "stream", f[i].id);
                cr_assert_str_eq(ll_get(l, "name"), f[i].name, "%s", l->text);
                cr_assert_str_eq(ll_get(l, "bytes"), u64s(f[i].size), "%s", l->text);
                ll_num(l, "seconds");
                ll_num(l, "rate");
        }
        cr_assert_eq(cl.n, 4, "the client logged more than its 4 lines");
        cr_assert_not_null(strstr(s.l[0].msg, "serving /t-"), "the first line: %s", s.l[0].text);
        cr_assert_not_null(strstr(s.l[0].msg, " a\\x3Db "), "'=' not escaped: %s", s.l[0].text);
        cr_assert_str_eq(s.l[0].level, "INFO");
        log_one(&s, "INFO", "SIGTERM: stopping", NULL, NULL);
        const ll_t *last = &s.l[s.n - 1];
        cr_assert(strstr(last->msg, "stopped; segment") && strcmp(last->level, "INFO") == 0,
                  "the last line: %s", last->text);
        log_free(&s);
        log_free(&cl);
}

/* ---- failed transfers --------------------------------------------------------------- */

/* FILE_OPEN of a raw name on a fresh stream of c, as no engine-client would send it; the
 * server's reply command. */
static int raw_open(eng_client_t *c, uint32_t id, const char *name, size_t len)
{
        eng_stream_t *s;
        int rc = eng_stream_open(c, id, &s);
        cr_assert_eq(rc, 0, "stream open: %s (%s)", eng_strerror(rc), eng_errmsg());
        void *p;
        uint64_t off;
        rc = eng_stream_loan(s, (uint32_t)len, &p, &off, 5000);
        cr_assert_eq(rc, 0, "loan: %s", eng_strerror(rc));
        memcpy(p, name, len);
        rc = eng_stream_send(s, ENG_C_FILE_OPEN, 10, off, (uint32_t)len, 5000);
        cr_assert_eq(rc, 0, "send: %s (%s)", eng_strerror(rc), eng_errmsg());
        eng_msg_t m;
        rc = eng_stream_recv(s, &m, 5000);
        cr_assert_eq(rc, 0, "no reply to FILE_OPEN: %s (%s)", eng_strerror(rc), eng_errmsg());
        int cmd = m.cmd;
        eng_stream_release(s, &m);
        eng_stream_abort(s);
        return cmd;
}

Test(logs, failed_transfers_are_logged_with_the_reason_and_names_decode_back, .timeout = 120)
{
        /* engine-client: a missing source, and a file the server's disk cannot hold (sparse) */
        int fd = open(xu_path("huge.bin"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t)(1ull << 50)), 0);
        close(fd);
        xu_write_opts(NULL, (xu_stream_t[]){{1, "missing.bin"}, {2, "huge.bin"}}, 2);
        xu_server_start();
        pid_t server = X.server;
        pid_t c = xu_client_spawn("c", XU_ARGS("1", "2"), 2);
        int rc = xu_finish(c, 30000, "engine-client");
        char *o = xu_output("c");
        cr_assert_eq(rc, 1, "exit %d\n%s", rc, o);
        free(o);

        /* Names no engine-client sends, through the API: a forged line, a bidi control,
         * invalid UTF-8, a backslash before an 'x' (refused or aborted: each is a WARN). */
        static const char *names[] = {
            "fake\n2026-12-04T23:51:25.123+00:00 INFO engine-server[1]: file received and "
            "verified stream=9 name=x",
            "invoice\xe2\x80\xaegpj.exe",
            "bad\xff\xfe \"q\"",
            "back\\x41slash=1.bin",
        };
        eng_client_cfg_t cc = {.timeout_ms = 5000};
        eng_client_t *ec;
        rc = eng_client_attach(X.name, &cc, &ec);
        cr_assert_eq(rc, 0, "attach: %s (%s)", eng_strerror(rc), eng_errmsg());
        for (uint32_t i = 0; i < 4; i++)
                raw_open(ec, 40 + i, names[i], strlen(names[i]));
        eng_client_detach(ec);
        for (uint32_t i = 0; i < 4; i++) {
                char needle[32];
                snprintf(needle, sizeof(needle), "stream=%u ", 40 + i);
                cr_assert(xu_log_wait(needle, 5000), "no line for stream %u", 40 + i);
        }
        cr_assert_eq(xu_server_stop(), 0);

        log_t s = log_read(X.slog, "engine-server", server);
        log_t cl = log_read(xu_path("c.err"), "engine-client", c);
        /* the client: ERROR, with the reason */
        const ll_t *l = log_one(&cl, "ERROR", "transfer FAILED", "stream", "1");
        cr_assert_str_eq(ll_get(l, "name"), "missing.bin");
        cr_assert_not_null(strstr(ll_get(l, "error"), "No such file"), "%s", l->text);
        cr_assert_str_eq(ll_get(l, "bytes"), "0");
        ll_num(l, "seconds");
        l = log_one(&cl, "ERROR", "transfer FAILED", "stream", "2");
        cr_assert_str_eq(ll_get(l, "name"), "huge.bin");
        cr_assert_not_null(strstr(ll_get(l, "error"), "No space left"), "%s", l->text);
        /* the server: WARN (it serves on), with the client's pid, sizes and the reason */
        l = log_one(&s, "WARN", "transfer FAILED", "stream", "2");
        cr_assert_str_eq(ll_get(l, "pid"), u64s((uint64_t)c), "%s", l->text);
        cr_assert_str_eq(ll_get(l, "name"), "huge.bin");
        cr_assert_str_eq(ll_get(l, "bytes"), "0");
        cr_assert_str_eq(ll_get(l, "size"), u64s(1ull << 50));
        cr_assert_not_null(strstr(ll_get(l, "error"), "No space left"), "%s", l->text);
        ll_num(l, "seconds");
        ll_num(l, "rate");
        for (uint32_t i = 0; i < 4; i++) {
                char id[16];
                snprintf(id, sizeof(id), "%u", 40 + i);
                l = log_one(&s, "WARN", "transfer FAILED", "stream", id);
                cr_assert_str_eq(ll_get(l, "pid"), u64s((uint64_t)getpid()), "%s", l->text);
                cr_assert_str_eq(ll_get(l, "name"), names[i], "the name does not decode back: %s",
                                 l->text);
                cr_assert_not_null(ll_get(l, "error"), "%s", l->text);
        }
        /* the forged line is inside a quoted value: nothing verified, one line per failure */
        for (int i = 0; i < s.n; i++)
                cr_assert_null(strstr(s.l[i].msg, "verified"), "%s", s.l[i].text);
        char *raw = xu_slurp(X.slog);
        cr_assert_eq(xu_count(raw, "transfer FAILED"), 5, "%s", raw);
        free(raw);
        log_free(&s);
        log_free(&cl);
}

/* ---- a client killed mid-way -------------------------------------------------------- */

Test(logs, a_client_killed_mid_transfer_is_logged_as_warnings_naming_it, .timeout = 120)
{
        pid_t c = xu_start_big_transfer(256 * MiB);
        pid_t server = X.server;
        xu_kill(c);
        cr_assert(xu_log_wait("transfer FAILED", 5000), "the failure was not logged");
        char needle[64];
        snprintf(needle, sizeof(needle), "client pid %d exited", (int)c);
        cr_assert(xu_log_wait(needle, 5000), "the reclaim was not logged");
        cr_assert_eq(xu_server_stop(), 0);
        xu_assert_no_temps();

        log_t s = log_read(X.slog, "engine-server", server);
        const ll_t *l = log_one(&s, "WARN", "transfer FAILED", "stream", "1");
        cr_assert_str_eq(ll_get(l, "pid"), u64s((uint64_t)c), "%s", l->text);
        cr_assert_str_eq(ll_get(l, "name"), "big.bin");
        cr_assert_str_eq(ll_get(l, "size"), u64s(256 * MiB));
        cr_assert_lt(ll_num(l, "bytes"), (double)(256 * MiB), "%s", l->text);
        cr_assert_not_null(strstr(ll_get(l, "error"), "client went away"), "%s", l->text);
        log_one(&s, "WARN", needle, NULL, NULL);
        log_free(&s);
        /* what the killed client had written parses too */
        log_t cl = log_read(xu_path("c.err"), "engine-client", c);
        log_one(&cl, "INFO", "sending", "stream", "1");
        log_free(&cl);
}

/* ---- SIGUSR1: a summary for those who only have the log --------------------------------- */

Test(logs, sigusr1_logs_a_line_per_open_stream_one_for_the_arena_and_the_counters, .timeout = 120)
{
        /* A client that holds its stream open mid-transfer: SIGSTOP once data has reached the
         * temporary file (then the server has answered FILE_BEGIN: it does so before it takes
         * the data that follows). */
        pid_t c = xu_start_big_transfer(256 * MiB);
        pid_t server = X.server;
        uint64_t end = eng_now_ns() + 10000000000ull;
        bool data = false;
        while (!data && eng_now_ns() < end) {
                DIR *d = opendir(X.out);
                struct dirent *e;
                while (d != NULL && (e = readdir(d)) != NULL) {
                        struct stat sb;
                        if (strncmp(e->d_name, ".eng-", 5) == 0 &&
                            fstatat(dirfd(d), e->d_name, &sb, 0) == 0 && sb.st_size > 0)
                                data = true;
                }
                if (d != NULL)
                        closedir(d);
                if (!data)
                        xu_sleep_ms(1);
        }
        cr_assert(data, "no data reached the temporary file within 10 s");
        cr_assert_eq(kill(c, SIGSTOP), 0);
        cr_assert_eq(kill(server, SIGUSR1), 0);
        cr_assert(xu_log_wait("summary: engine", 5000), "no summary after SIGUSR1");
        kill(c, SIGCONT);
        xu_kill(c);
        cr_assert_eq(xu_server_stop(), 0);

        log_t s = log_read(X.slog, "engine-server", server);
        const ll_t *l = log_one(&s, "INFO", "summary: open stream", "stream", "1");
        cr_assert_str_eq(ll_get(l, "pid"), u64s((uint64_t)c), "%s", l->text);
        cr_assert_gt(ll_num(l, "c2s_msgs"), 1, "FILE_BEGIN and data: %s", l->text);
        cr_assert_gt(ll_num(l, "c2s_bytes"), strlen("big.bin"), "%s", l->text);
        cr_assert_lt(ll_num(l, "c2s_bytes"), (double)(256 * MiB) + 4096, "%s", l->text);
        cr_assert_geq(ll_num(l, "s2c_msgs"), 1, "the server's answer to FILE_BEGIN: %s", l->text);
        cr_assert_gt(ll_num(l, "age"), 0, "%s", l->text);
        for (const char *k = "sched\0c2s_fill\0s2c_fill\0s2c_bytes\0record\0"; *k;
             k += strlen(k) + 1)
                cr_assert_not_null(ll_get(l, k), "no %s: %s", k, l->text);
        l = log_one(&s, "INFO", "summary: arena", NULL, NULL);
        cr_assert_str_eq(ll_get(l, "kind"),
                         getenv("ENG_TEST_TRANSPORT") &&
                                 strcmp(getenv("ENG_TEST_TRANSPORT"), "mutex") == 0
                             ? "mutex"
                             : "lockfree",
                         "%s", l->text);
        cr_assert_geq(ll_num(l, "records_used"), 2, "a session and a stream at least: %s", l->text);
        cr_assert_lt(ll_num(l, "rec_top"), ll_num(l, "buf_bottom"), "%s", l->text);
        cr_assert_eq(ll_num(l, "problems"), 0, "%s", l->text);
        l = log_one(&s, "INFO", "summary: engine", NULL, NULL);
        cr_assert_eq(ll_num(l, "streams"), 1, "%s", l->text);
        cr_assert_eq(ll_num(l, "clients"), 1, "%s", l->text);
        cr_assert_geq(ll_num(l, "opens"), 2, "the session and the stream: %s", l->text);
        cr_assert_gt(ll_num(l, "uptime"), 0, "%s", l->text);
        for (const char *k = "closes\0ended\0aborts\0reclaims\0heals\0refused\0"; *k;
             k += strlen(k) + 1)
                cr_assert_not_null(ll_get(l, k), "no %s: %s", k, l->text);
        log_free(&s);
}

/* ---- errors before and after start-up ------------------------------------------------ */

Test(logs, start_up_failures_are_log_lines_but_usage_errors_stay_plain, .timeout = 60)
{
        xu_make_file(xu_path("a.bin"), 10, 1);
        xu_write_opts(NULL, &(xu_stream_t){1, "a.bin"}, 1);
        /* no server: an ERROR line */
        pid_t c = xu_client_spawn("none", XU_ARGS("--wait", "0", "1"), 3);
        cr_assert_eq(xu_finish(c, 10000, "engine-client"), 1);
        log_t cl = log_read(xu_path("none.err"), "engine-client", c);
        cr_assert_eq(cl.n, 1);
        log_one(&cl, "ERROR", "cannot reach the server", NULL, NULL);
        log_free(&cl);
        /* bad usage (exit 2): plain "program: message", as the README says */
        cr_assert_eq(xu_client("usage", 10000, "x"), 2);
        char *e = xu_slurp(xu_path("usage.err"));
        cr_assert_eq(strncmp(e, "engine-client: 'x' is not a stream id\n", 38), 0, "%s", e);
        free(e);
        char *sv[] = {XU_SERVER, "-c", X.cfg, "extra", NULL};
        cr_assert_eq(xu_run(10000, NULL, xu_path("s.err"), sv), 2);
        e = xu_slurp(xu_path("s.err"));
        cr_assert_eq(strncmp(e, "engine-server: unexpected argument 'extra'\n", 43), 0, "%s", e);
        free(e);
}
