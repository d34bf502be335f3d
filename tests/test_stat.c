/*
 * test_stat.c - engine-stat (issue 12), the real binary against real segments: a live server
 * (in a forked child, with hooks whose effect on every counter is known) holding streams in
 * known states - open and idle, mid-transfer with exact message and byte counts, closed, a
 * SIGKILLed client before and after the server reclaims it; segments full of garbage (random
 * bytes; a real image with a valid header line and scribbles); no segment; a dead server;
 * another user's segment; --interval with rates; SIGINT. The JSON output is parsed by a small
 * strict parser (below) so that a stray byte or a bad escape fails the test.
 *
 * Children: engine-stat is fork+exec'd (xfer_util.h); the server and the client that gets
 * killed are forked and only use the engine API, then _exit. Only the parent asserts.
 */
/* xfer_util.h's helpers are static; this suite does not use all of them. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "xfer_util.h"
#pragma GCC diagnostic pop

#include <grp.h>
#include <poll.h>
#include <sys/resource.h>

#include "engine.h"

#define XU_STAT ENG_BIN_DIR "/engine-stat"

#define CMD_ECHO 0x0101u /* the server replies 0x0201 with the same buffer */
#define CMD_EAT  0x0102u /* the server consumes it, no reply */

#define ID_IDLE   1u
#define ID_BUSY   2u
#define ID_CLOSED 3u
#define ID_VICTIM 77u
#define SEG_SIZE  (16u << 20)
#define DEPTH     64u

static void setup(void)
{
        xu_setup();
}

static void teardown(void)
{
        xu_teardown();
        X.dir[0] = X.name[0] = '\0';
}

#define SKIP(...)                                                                                  \
        do {                                                                                       \
                teardown();                                                                        \
                cr_skip_test(__VA_ARGS__);                                                         \
        } while (0)

TestSuite(stat, .init = setup, .fini = teardown, .timeout = 120);

/* ---- a strict JSON parser (RFC 8259), enough to hold engine-stat to its format ------------ */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype_t;

typedef struct jv {
        jtype_t t;
        bool b;
        char *s;    /* J_STR: the decoded bytes (NUL-terminated, may hold NULs); J_NUM: the text */
        size_t len; /* of s */
        struct jv *items;
        char **keys; /* J_OBJ */
        size_t n;
} jv_t;

typedef struct jp {
        const char *p, *end;
        const char *err;
        int depth;
} jp_t;

static void jv_free(jv_t *v)
{
        if (v == NULL)
                return;
        free(v->s);
        for (size_t i = 0; i < v->n; i++) {
                jv_free(&v->items[i]);
                if (v->keys)
                        free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
        memset(v, 0, sizeof(*v));
}

static void jp_ws(jp_t *j)
{
        while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
                j->p++;
}

static bool jp_fail(jp_t *j, const char *why)
{
        if (j->err == NULL)
                j->err = why;
        return false;
}

static bool jp_value(jp_t *j, jv_t *v);

/* Append n bytes to a growing buffer. */
static void buf_put(char **b, size_t *len, size_t *cap, const void *src, size_t n)
{
        if (*len + n + 1 > *cap) {
                *cap = (*len + n + 1) * 2;
                *b = realloc(*b, *cap);
                cr_assert_not_null(*b);
        }
        memcpy(*b + *len, src, n);
        *len += n;
        (*b)[*len] = '\0';
}

static int hexval(char c)
{
        return c >= '0' && c <= '9'   ? c - '0'
               : c >= 'a' && c <= 'f' ? c - 'a' + 10
               : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                      : -1;
}

/* Length of the valid UTF-8 sequence at s, 0 if none. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
        unsigned char c = s[0], lo = 0x80, hi = 0xbf;
        size_t k;
        if (c >= 0xc2 && c <= 0xdf)
                k = 2;
        else if (c >= 0xe0 && c <= 0xef) {
                k = 3;
                lo = c == 0xe0 ? 0xa0 : 0x80;
                hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
                k = 4;
                lo = c == 0xf0 ? 0x90 : 0x80;
                hi = c == 0xf4 ? 0x8f : 0xbf;
        } else
                return 0;
        if (n < k || s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < k; i++)
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
        return k;
}

/* A string. engine-stat's rule (docs/STAT.md): \u0000..\u00ff stands for one byte (raw bytes
 * that are not UTF-8 and control characters); other escapes decode to UTF-8. */
static bool jp_string(jp_t *j, char **out, size_t *outlen)
{
        if (j->p >= j->end || *j->p != '"')
                return jp_fail(j, "expected a string");
        j->p++;
        char *b = NULL;
        size_t len = 0, cap = 0;
        buf_put(&b, &len, &cap, "", 0);
        for (;;) {
                if (j->p >= j->end) {
                        free(b);
                        return jp_fail(j, "unterminated string");
                }
                unsigned char c = (unsigned char)*j->p;
                if (c == '"') {
                        j->p++;
                        break;
                }
                if (c < 0x20) {
                        free(b);
                        return jp_fail(j, "raw control character in a string");
                }
                if (c == '\\') {
                        if (j->end - j->p < 2) {
                                free(b);
                                return jp_fail(j, "bad escape");
                        }
                        char e = j->p[1];
                        const char *simple = strchr("\"\\/bfnrt", e);
                        if (e != '\0' && simple != NULL) {
                                static const char map[] = "\"\\/\b\f\n\r\t";
                                buf_put(&b, &len, &cap, &map[simple - "\"\\/bfnrt"], 1);
                                j->p += 2;
                                continue;
                        }
                        if (e != 'u' || j->end - j->p < 6) {
                                free(b);
                                return jp_fail(j, "bad escape");
                        }
                        unsigned cp = 0;
                        for (int i = 0; i < 4; i++) {
                                int h = hexval(j->p[2 + i]);
                                if (h < 0) {
                                        free(b);
                                        return jp_fail(j, "bad \\u escape");
                                }
                                cp = cp * 16 + (unsigned)h;
                        }
                        j->p += 6;
                        if (cp >= 0xd800 && cp <= 0xdfff) {
                                free(b);
                                return jp_fail(j,
                                               "surrogate escape (engine-stat never writes one)");
                        }
                        unsigned char u[3];
                        size_t k;
                        if (cp <= 0xff) {
                                u[0] = (unsigned char)cp;
                                k = 1;
                        } else if (cp < 0x800) {
                                u[0] = (unsigned char)(0xc0 | cp >> 6);
                                u[1] = (unsigned char)(0x80 | (cp & 0x3f));
                                k = 2;
                        } else {
                                u[0] = (unsigned char)(0xe0 | cp >> 12);
                                u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
                                u[2] = (unsigned char)(0x80 | (cp & 0x3f));
                                k = 3;
                        }
                        buf_put(&b, &len, &cap, u, k);
                        continue;
                }
                size_t k =
                    c < 0x80 ? 1 : utf8_seq((const unsigned char *)j->p, (size_t)(j->end - j->p));
                if (k == 0) {
                        free(b);
                        return jp_fail(j, "invalid UTF-8 in a string");
                }
                buf_put(&b, &len, &cap, j->p, k);
                j->p += k;
        }
        *out = b;
        *outlen = len;
        return true;
}

static bool jp_number(jp_t *j, jv_t *v)
{
        const char *s = j->p;
        const char *p = s;
        if (p < j->end && *p == '-')
                p++;
        if (p >= j->end || !(*p >= '0' && *p <= '9'))
                return jp_fail(j, "bad number");
        if (*p == '0')
                p++;
        else
                while (p < j->end && *p >= '0' && *p <= '9')
                        p++;
        if (p < j->end && *p == '.') {
                p++;
                if (p >= j->end || !(*p >= '0' && *p <= '9'))
                        return jp_fail(j, "bad fraction");
                while (p < j->end && *p >= '0' && *p <= '9')
                        p++;
        }
        if (p < j->end && (*p == 'e' || *p == 'E')) {
                p++;
                if (p < j->end && (*p == '+' || *p == '-'))
                        p++;
                if (p >= j->end || !(*p >= '0' && *p <= '9'))
                        return jp_fail(j, "bad exponent");
                while (p < j->end && *p >= '0' && *p <= '9')
                        p++;
        }
        v->t = J_NUM;
        v->len = (size_t)(p - s);
        v->s = strndup(s, v->len);
        j->p = p;
        return true;
}

static bool jp_lit(jp_t *j, const char *lit)
{
        size_t n = strlen(lit);
        if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
                return jp_fail(j, "bad literal");
        j->p += n;
        return true;
}

static bool jp_value(jp_t *j, jv_t *v)
{
        memset(v, 0, sizeof(*v));
        jp_ws(j);
        if (j->p >= j->end)
                return jp_fail(j, "expected a value");
        if (++j->depth > 32)
                return jp_fail(j, "nested too deep");
        bool ok;
        char c = *j->p;
        if (c == '{' || c == '[') {
                bool obj = c == '{';
                v->t = obj ? J_OBJ : J_ARR;
                j->p++;
                jp_ws(j);
                ok = true;
                if (j->p < j->end && *j->p == (obj ? '}' : ']')) {
                        j->p++;
                } else {
                        for (;;) {
                                char *key = NULL;
                                size_t klen;
                                jp_ws(j);
                                if (obj) {
                                        if (!jp_string(j, &key, &klen)) {
                                                ok = false;
                                                break;
                                        }
                                        for (size_t i = 0; i < v->n; i++)
                                                if (strcmp(v->keys[i], key) == 0) {
                                                        free(key);
                                                        ok = jp_fail(j, "duplicate key");
                                                        break;
                                                }
                                        if (!ok)
                                                break;
                                        jp_ws(j);
                                        if (j->p >= j->end || *j->p != ':') {
                                                free(key);
                                                ok = jp_fail(j, "expected ':'");
                                                break;
                                        }
                                        j->p++;
                                }
                                v->items = realloc(v->items, (v->n + 1) * sizeof(jv_t));
                                v->keys =
                                    obj ? realloc(v->keys, (v->n + 1) * sizeof(char *)) : NULL;
                                if (obj)
                                        v->keys[v->n] = key;
                                bool got = jp_value(j, &v->items[v->n]);
                                v->n++;
                                if (!got) {
                                        ok = false;
                                        break;
                                }
                                jp_ws(j);
                                if (j->p < j->end && *j->p == ',') {
                                        j->p++;
                                        continue;
                                }
                                if (j->p < j->end && *j->p == (obj ? '}' : ']')) {
                                        j->p++;
                                        break;
                                }
                                ok = jp_fail(j, "expected ',' or the end of a container");
                                break;
                        }
                }
        } else if (c == '"') {
                v->t = J_STR;
                ok = jp_string(j, &v->s, &v->len);
        } else if (c == 't') {
                v->t = J_BOOL;
                v->b = true;
                ok = jp_lit(j, "true");
        } else if (c == 'f') {
                v->t = J_BOOL;
                ok = jp_lit(j, "false");
        } else if (c == 'n') {
                v->t = J_NULL;
                ok = jp_lit(j, "null");
        } else {
                ok = jp_number(j, v);
        }
        j->depth--;
        return ok;
}

/* Parse one whole JSON text (one line of output); fails the test with the reason if bad. */
static jv_t *json_parse(const char *text, size_t len)
{
        jv_t *v = calloc(1, sizeof(*v));
        jp_t j = {.p = text, .end = text + len};
        bool ok = jp_value(&j, v);
        jp_ws(&j);
        if (ok && j.p != j.end)
                ok = jp_fail(&j, "trailing bytes after the value");
        if (!ok) {
                size_t at = (size_t)(j.p - text);
                cr_assert_fail("invalid JSON (%s) at byte %zu of %zu: ...%.80s", j.err, at, len,
                               text + (at > 40 ? at - 40 : 0));
        }
        return v;
}

static void json_drop(jv_t *v)
{
        jv_free(v);
        free(v);
}

static const jv_t *jget(const jv_t *o, const char *key)
{
        cr_assert(o && o->t == J_OBJ, "not an object looking up '%s'", key);
        for (size_t i = 0; i < o->n; i++)
                if (strcmp(o->keys[i], key) == 0)
                        return &o->items[i];
        cr_assert_fail("no key '%s' in the object", key);
        return NULL;
}

static bool jhas(const jv_t *o, const char *key)
{
        for (size_t i = 0; o && o->t == J_OBJ && i < o->n; i++)
                if (strcmp(o->keys[i], key) == 0)
                        return true;
        return false;
}

/* A non-negative integer, exactly (uint64 range, not through a double). */
static uint64_t ju(const jv_t *o, const char *key)
{
        const jv_t *v = jget(o, key);
        cr_assert(v->t == J_NUM && strspn(v->s, "0123456789") == v->len,
                  "'%s' is not a non-negative integer: %s", key, v->s ? v->s : "(not a number)");
        return strtoull(v->s, NULL, 10);
}

static int64_t ji(const jv_t *o, const char *key)
{
        const jv_t *v = jget(o, key);
        cr_assert(v->t == J_NUM &&
                      strspn(v->s + (v->s[0] == '-'), "0123456789") == v->len - (v->s[0] == '-'),
                  "'%s' is not an integer", key);
        return strtoll(v->s, NULL, 10);
}

static double jd(const jv_t *o, const char *key)
{
        const jv_t *v = jget(o, key);
        cr_assert_eq(v->t, J_NUM, "'%s' is not a number", key);
        return strtod(v->s, NULL);
}

static const char *js(const jv_t *o, const char *key)
{
        const jv_t *v = jget(o, key);
        cr_assert_eq(v->t, J_STR, "'%s' is not a string", key);
        return v->s;
}

static const jv_t *jarr(const jv_t *o, const char *key)
{
        const jv_t *v = jget(o, key);
        cr_assert_eq(v->t, J_ARR, "'%s' is not an array", key);
        return v;
}

/* ---- running engine-stat -------------------------------------------------------------------- */

/* Run engine-stat with args (NULL-terminated) as uid (-1: as is), within 20 s; it must end by
 * itself and never by a signal. Returns the exit code; *out / *err (caller frees) its output. */
static int stat_run_as(uid_t uid, char **out, char **err, const char *const *args)
{
        char *argv[32];
        size_t k = 0;
        argv[k++] = XU_STAT;
        for (size_t i = 0; args[i] && k < 31; i++)
                argv[k++] = (char *)args[i];
        argv[k] = NULL;
        char o[XU_PATH], e[XU_PATH];
        static int n;
        snprintf(o, sizeof(o), "%s", xu_path("stat%d.out", n));
        snprintf(e, sizeof(e), "%s", xu_path("stat%d.err", n++));
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(126);
                int fo = open(o, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int fe = open(e, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int in = open("/dev/null", O_RDONLY);
                if (fo < 0 || fe < 0 || in < 0)
                        _exit(125);
                dup2(in, 0);
                dup2(fo, 1);
                dup2(fe, 2);
                if (uid != (uid_t)-1 &&
                    (setgroups(0, NULL) != 0 || setgid(uid) != 0 || setuid(uid) != 0))
                        _exit(124);
                /* No options.xml in the test folder unless a test writes one. */
                if (chdir(X.dir) != 0 && chdir("/") != 0)
                        _exit(123);
                execv(argv[0], argv);
                _exit(127);
        }
        xu_track(pid);
        int st;
        if (!xu_wait(pid, 20000, &st)) {
                xu_kill(pid);
                cr_assert_fail("engine-stat hung (killed after 20 s)");
        }
        *out = xu_slurp(o);
        *err = xu_slurp(e);
        cr_assert(!WIFSIGNALED(st), "engine-stat died of signal %d\n--- stdout:\n%s--- stderr:\n%s",
                  WIFSIGNALED(st) ? WTERMSIG(st) : 0, *out, *err);
        cr_assert_neq(WEXITSTATUS(st), 124, "could not switch to uid %u", (unsigned)uid);
        return WEXITSTATUS(st);
}

#define STAT_ARGS(...)          ((const char *const[]){__VA_ARGS__, NULL})
#define stat_run(out, err, ...) stat_run_as((uid_t)-1, out, err, STAT_ARGS(__VA_ARGS__))

/* engine-stat --name X.name --json: exit 0 and one parsed sample. */
static jv_t *snapshot(void)
{
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", X.name, "--json");
        cr_assert_eq(rc, 0, "engine-stat --json exited %d\n--- stdout:\n%s--- stderr:\n%s", rc, out,
                     err);
        size_t len = strlen(out);
        cr_assert(len > 0 && out[len - 1] == '\n' && memchr(out, '\n', len) == out + len - 1,
                  "want exactly one line, got:\n%s", out);
        jv_t *v = json_parse(out, len - 1);
        free(out);
        free(err);
        return v;
}

/* The record of (pid, user_id, kind) in a sample, or NULL. */
static const jv_t *find_rec(const jv_t *v, int64_t pid, uint64_t user_id, const char *kind)
{
        const jv_t *recs = jarr(v, "records");
        for (size_t i = 0; i < recs->n; i++) {
                const jv_t *r = &recs->items[i];
                if (ji(r, "pid") == pid && ju(r, "user_id") == user_id &&
                    strcmp(js(r, "kind"), kind) == 0)
                        return r;
        }
        return NULL;
}

static const jv_t *find_client(const jv_t *v, int64_t pid)
{
        const jv_t *cl = jarr(v, "clients");
        for (size_t i = 0; i < cl->n; i++)
                if (ji(&cl->items[i], "pid") == pid)
                        return &cl->items[i];
        return NULL;
}

static size_t sessions_of_pid(const jv_t *v, int64_t pid)
{
        const jv_t *recs = jarr(v, "records");
        size_t n = 0;
        for (size_t i = 0; i < recs->n; i++)
                n += ji(&recs->items[i], "pid") == pid &&
                     strcmp(js(&recs->items[i], "kind"), "session") == 0;
        return n;
}

static size_t recs_of_pid(const jv_t *v, int64_t pid)
{
        const jv_t *recs = jarr(v, "records");
        size_t n = 0;
        for (size_t i = 0; i < recs->n; i++)
                n += ji(&recs->items[i], "pid") == pid;
        return n;
}

/* ---- a server in a forked child --------------------------------------------------------- */

static int h_open(eng_sstream_t *s, void *ctx)
{
        (void)s;
        (void)ctx;
        return 0;
}

static int h_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        if (m->cmd != CMD_ECHO)
                return 0; /* CMD_EAT: consumed (the engine frees the buffer) */
        int rc = eng_sstream_send(s, 0x0201, m->arg, m->off, m->len);
        if (rc == 0)
                m->off = 0; /* the buffer went back to the client */
        return rc;
}

static void h_close(eng_sstream_t *s, int err, void *ctx)
{
        (void)s;
        (void)err;
        (void)ctx;
}

/* fork a process that serves name (size SEG_SIZE, DEPTH, 1 worker, mode) until SIGTERM;
 * returns once it serves. The child only uses the engine API and _exits. */
static pid_t server_fork_size(const char *name, mode_t mode, uint64_t size)
{
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(126);
                close(p[0]);
                sigset_t set;
                sigemptyset(&set);
                sigaddset(&set, SIGTERM);
                sigprocmask(SIG_BLOCK, &set, NULL); /* before the threads: they inherit it */
                eng_server_cfg_t cfg = {
                    .name = name,
                    .size = size,
                    .mode = mode,
                    .transport = ENG_TRANSPORT_LOCKFREE,
                    .workers = 1,
                    .ring_depth = DEPTH,
                    .hooks = {.on_open = h_open, .on_msg = h_msg, .on_close = h_close}};
                eng_server_t *srv;
                int rc = eng_server_start(&cfg, &srv);
                char b = rc == 0 ? 'y' : 'n';
                if (write(p[1], &b, 1) != 1 || rc != 0)
                        _exit(1);
                int sig;
                sigwait(&set, &sig);
                eng_server_stop(srv);
                _exit(0);
        }
        xu_track(pid);
        close(p[1]);
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        char b = 0;
        bool ready = poll(&pf, 1, 10000) == 1 && read(p[0], &b, 1) == 1 && b == 'y';
        close(p[0]);
        if (!ready) {
                xu_kill(pid);
                cr_assert_fail("the server on %s did not start within 10 s", name);
        }
        return pid;
}

static pid_t server_fork(const char *name, mode_t mode)
{
        return server_fork_size(name, mode, SEG_SIZE);
}

static void server_stop(pid_t pid)
{
        kill(pid, SIGTERM);
        int rc = xu_finish(pid, 10000, "server");
        cr_assert_eq(rc, 0, "the server exited %d", rc);
}

static eng_client_t *attach(void)
{
        eng_client_cfg_t cfg = {.timeout_ms = 5000};
        eng_client_t *c = NULL;
        int rc = eng_client_attach(X.name, &cfg, &c);
        cr_assert_eq(rc, 0, "attach: %s (%s)", eng_strerror(rc), eng_errmsg());
        return c;
}

static eng_stream_t *open_stream(eng_client_t *c, uint32_t user_id)
{
        eng_stream_t *s = NULL;
        int rc = eng_stream_open(c, user_id, &s);
        cr_assert_eq(rc, 0, "open %u: %s (%s)", user_id, eng_strerror(rc), eng_errmsg());
        return s;
}

/* Send cmd with a payload of len bytes (no buffer for 0). */
static void send_len(eng_stream_t *s, uint16_t cmd, uint32_t len)
{
        uint64_t off = 0;
        if (len > 0) {
                void *p;
                int rc = eng_stream_loan(s, len, &p, &off, 5000);
                cr_assert_eq(rc, 0, "loan %u: %s", len, eng_strerror(rc));
                memset(p, 0x5a, len);
        }
        int rc = eng_stream_send(s, cmd, len, off, len, 5000);
        cr_assert_eq(rc, 0, "send %u: %s (%s)", len, eng_strerror(rc), eng_errmsg());
}

/* A client in a forked child: attaches once the gate opens, opens stream user_id, sends one
 * CMD_EAT of 10 bytes, says 'r' on ready, and waits to be killed. */
static pid_t victim_fork(uint32_t user_id, int *gate, int *ready)
{
        int g[2], r[2];
        cr_assert_eq(pipe(g), 0);
        cr_assert_eq(pipe(r), 0);
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(126);
                close(g[1]);
                close(r[0]);
                char b;
                if (read(g[0], &b, 1) != 1)
                        _exit(99);
                eng_client_cfg_t cfg = {.timeout_ms = 5000};
                eng_client_t *c;
                eng_stream_t *s;
                void *p;
                uint64_t off;
                if (eng_client_attach(X.name, &cfg, &c) != 0 || eng_stream_open(c, user_id, &s) ||
                    eng_stream_loan(s, 10, &p, &off, 5000) ||
                    eng_stream_send(s, CMD_EAT, 0, off, 10, 5000))
                        _exit(2);
                b = 'r';
                if (write(r[1], &b, 1) != 1)
                        _exit(3);
                for (;;)
                        pause();
        }
        xu_track(pid);
        close(g[0]);
        close(r[1]);
        *gate = g[1];
        *ready = r[0];
        return pid;
}

/* Poll engine-stat until pred(sample) holds (bounded); returns that sample or fails. */
static jv_t *wait_for(bool (*pred)(const jv_t *, const void *), const void *arg, long ms,
                      const char *what)
{
        uint64_t end = xu_now_ms() + (uint64_t)ms;
        for (;;) {
                jv_t *v = snapshot();
                if (pred(v, arg))
                        return v;
                json_drop(v);
                if (xu_now_ms() > end)
                        cr_assert_fail("engine-stat never showed %s within %ld ms", what, ms);
                xu_sleep_ms(50);
        }
}

static bool busy_drained(const jv_t *v, const void *arg)
{
        const jv_t *r = find_rec(v, getpid(), *(const uint32_t *)arg, "stream");
        /* ... and the closed stream's record given back */
        return r && ju(r, "s2c_msgs") == 5 && ju(r, "c2s_fill") == 0 &&
               ju(jget(v, "counters"), "closes") >= 1;
}

static bool victim_open(const jv_t *v, const void *arg)
{
        const jv_t *r = find_rec(v, *(const pid_t *)arg, ID_VICTIM, "stream");
        return r && strcmp(js(r, "state"), "open") == 0 && ju(r, "c2s_fill") == 0;
}

static bool pid_gone(const jv_t *v, const void *arg)
{
        return recs_of_pid(v, *(const pid_t *)arg) == 0;
}

static bool valid_state(const char *s)
{
        static const char *ok[] = {"offered", "claimed", "open", "ended", "?"};
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
                if (strcmp(s, ok[i]) == 0)
                        return true;
        return false;
}

static bool valid_sched(const char *s)
{
        static const char *ok[] = {"idle", "queued", "running", "again", "fin", "polling", "?"};
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
                if (strcmp(s, ok[i]) == 0)
                        return true;
        return false;
}

/* Every record of a sample has the fields of docs/STAT.md with sane values. */
static void check_shape(const jv_t *v)
{
        cr_assert_eq(ju(v, "engine_stat"), 1);
        (void)ju(v, "sample");
        (void)js(v, "time");
        (void)ju(v, "taken_ns");
        (void)js(v, "name");
        (void)ju(v, "owner_uid");
        const jv_t *srv = jget(v, "server");
        (void)ji(srv, "pid");
        int64_t a = ji(srv, "alive");
        cr_assert(a >= -1 && a <= 1);
        (void)js(srv, "state");
        const char *keys[] = {"epoch", "uptime_ns", "workers", "size", "ring_depth", "max_streams"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                (void)ju(srv, keys[i]);
        (void)js(srv, "transport");
        const jv_t *recs = jarr(v, "records");
        for (size_t i = 0; i < recs->n; i++) {
                const jv_t *r = &recs->items[i];
                const char *k = js(r, "kind");
                cr_assert(strcmp(k, "stream") == 0 || strcmp(k, "session") == 0 ||
                              strcmp(k, "offer") == 0,
                          "kind %s", k);
                cr_assert_eq(strcmp(k, "offer") == 0, strcmp(js(r, "state"), "offered") == 0,
                             "kind %s in state %s", k, js(r, "state"));
                cr_assert(valid_state(js(r, "state")), "state %s", js(r, "state"));
                cr_assert(valid_sched(js(r, "sched")), "sched %s", js(r, "sched"));
                cr_assert_eq(ju(r, "c2s_last_seq"), ju(r, "c2s_msgs"));
                cr_assert_eq(ju(r, "s2c_last_seq"), ju(r, "s2c_msgs"));
                const char *rk[] = {"index",    "user_id",   "c2s_fill",  "s2c_fill", "c2s_msgs",
                                    "s2c_msgs", "c2s_bytes", "s2c_bytes", "age_ns"};
                for (size_t j = 0; j < sizeof(rk) / sizeof(rk[0]); j++)
                        (void)ju(r, rk[j]);
                (void)ji(r, "pid");
                cr_assert(jhas(r, "rate"));
        }
        const jv_t *ar = jget(v, "arena");
        const char *ak[] = {"size",           "rec_base",    "rec_top",  "buf_bottom",
                            "arena_top",      "rec_used",    "rec_free", "buf_used_bytes",
                            "buf_free_bytes", "alloc_failed"};
        for (size_t i = 0; i < sizeof(ak) / sizeof(ak[0]); i++)
                (void)ju(ar, ak[i]);
        (void)js(ar, "kind");
        const jv_t *cls = jarr(ar, "classes");
        for (size_t i = 0; i < cls->n; i++) {
                (void)ju(&cls->items[i], "block_bytes");
                (void)ju(&cls->items[i], "used");
                (void)ju(&cls->items[i], "free");
                (void)ju(&cls->items[i], "failed");
        }
        const jv_t *co = jget(v, "counters");
        const char *ck[] = {"opens", "closes", "ended", "aborts", "reclaims", "heals", "refused"};
        for (size_t i = 0; i < sizeof(ck) / sizeof(ck[0]); i++)
                (void)ju(co, ck[i]);
        (void)jget(v, "rates");
        const jv_t *pr = jarr(v, "problems");
        for (size_t i = 0; i < pr->n; i++)
                cr_assert_eq(pr->items[i].t, J_STR);
}

static char *problems_of(const jv_t *v)
{
        const jv_t *pr = jarr(v, "problems");
        char *s = strdup("");
        for (size_t i = 0; i < pr->n; i++) {
                char *t;
                if (asprintf(&t, "%s  %s\n", s, pr->items[i].s) < 0)
                        break;
                free(s);
                s = t;
        }
        return s;
}

/* ---- 1. a live server with streams in known states ------------------------------------ */

Test(stat, live_server_rows_states_counts_and_counters_are_exact, .timeout = 180)
{
        pid_t srv = server_fork(X.name, 0600);
        int gate, ready;
        pid_t victim = victim_fork(ID_VICTIM, &gate, &ready); /* before this process attaches */
        eng_client_t *c = attach();
        pid_t me = getpid();

        eng_stream_t *idle = open_stream(c, ID_IDLE);
        eng_stream_t *busy = open_stream(c, ID_BUSY);
        const uint32_t sizes[] = {0, 1, 100, 4000, 65536};
        uint64_t bytes = 0;
        for (size_t i = 0; i < 5; i++) {
                send_len(busy, CMD_ECHO, sizes[i]);
                bytes += sizes[i];
        }
        eng_stream_t *closed = open_stream(c, ID_CLOSED);
        send_len(closed, CMD_EAT, 10);
        send_len(closed, CMD_EAT, 20);
        cr_assert_eq(eng_stream_close(closed), 0);

        /* The echoes sit unread in busy's s2c ring: 5 replies, the same bytes. */
        uint32_t busy_id = ID_BUSY;
        jv_t *v = wait_for(busy_drained, &busy_id, 10000, "the 5 echoes of the busy stream");
        check_shape(v);
        char *pr = problems_of(v);
        cr_assert_eq(jarr(v, "problems")->n, 0, "problems on a healthy segment:\n%s", pr);
        free(pr);

        const jv_t *s = jget(v, "server");
        cr_assert_eq(ji(s, "pid"), srv);
        cr_assert_eq(ji(s, "alive"), 1);
        cr_assert_str_eq(js(s, "state"), "ready");
        cr_assert_str_eq(js(s, "transport"), "lockfree");
        cr_assert_eq(ju(s, "workers"), 1);
        cr_assert_eq(ju(s, "size"), SEG_SIZE);
        cr_assert_eq(ju(s, "ring_depth"), DEPTH);
        cr_assert_gt(ju(s, "max_streams"), 3);
        cr_assert_gt(ju(s, "uptime_ns"), 0);
        cr_assert_eq(ju(v, "owner_uid"), getuid());
        cr_assert(jget(v, "rates")->t == J_NULL, "one sample: no rates");

        const jv_t *r = find_rec(v, me, ID_IDLE, "stream");
        cr_assert_not_null(r, "no row for the idle stream");
        cr_assert_str_eq(js(r, "state"), "open");
        cr_assert_eq(ji(r, "alive"), 1);
        cr_assert_eq(ju(r, "index"), eng_stream_index(idle));
        cr_assert_eq(ju(r, "c2s_msgs"), 0);
        cr_assert_eq(ju(r, "s2c_msgs"), 0);
        cr_assert_eq(ju(r, "c2s_bytes"), 0);
        cr_assert_eq(ju(r, "s2c_bytes"), 0);
        cr_assert_eq(ju(r, "c2s_fill"), 0);
        cr_assert_eq(ju(r, "s2c_fill"), 0);
        cr_assert_gt(ju(r, "age_ns"), 0);

        r = find_rec(v, me, ID_BUSY, "stream");
        cr_assert_not_null(r, "no row for the busy stream");
        cr_assert_str_eq(js(r, "state"), "open");
        cr_assert_eq(ju(r, "index"), eng_stream_index(busy));
        cr_assert_eq(ju(r, "c2s_msgs"), 5);
        cr_assert_eq(ju(r, "c2s_last_seq"), 5);
        cr_assert_eq(ju(r, "c2s_bytes"), bytes);
        cr_assert_eq(ju(r, "s2c_msgs"), 5);
        cr_assert_eq(ju(r, "s2c_bytes"), bytes, "the echoes carry the same bytes");
        cr_assert_eq(ju(r, "c2s_fill"), 0);
        cr_assert_eq(ju(r, "s2c_fill"), 5, "5 replies unread");

        const jv_t *recs = jarr(v, "records");
        for (size_t i = 0; i < recs->n; i++) {
                const jv_t *x = &recs->items[i];
                if (ju(x, "user_id") == ID_CLOSED && ji(x, "pid") == me &&
                    strcmp(js(x, "kind"), "stream") == 0)
                        cr_assert(strcmp(js(x, "state"), "open") != 0 &&
                                      strcmp(js(x, "state"), "claimed") != 0,
                                  "the closed stream still shows as %s", js(x, "state"));
        }
        cr_assert_eq(sessions_of_pid(v, me), 1, "one session record for this client");
        const jv_t *cl = find_client(v, me);
        cr_assert_not_null(cl, "this process is not among the clients");
        cr_assert_eq(ji(cl, "alive"), 1);
        cr_assert_eq(ju(cl, "streams"), 2, "idle and busy");

        /* A fresh server: every counter is exact. */
        const jv_t *co = jget(v, "counters");
        cr_assert_eq(ju(co, "opens"), 4, "this client's session, idle, busy, closed");
        cr_assert_eq(ju(co, "closes"), 1, "the closed stream's record given back");
        cr_assert_eq(ju(co, "ended"), 1, "the closed stream, ended by the server's close ack");
        cr_assert_eq(ju(co, "aborts"), 0);
        cr_assert_eq(ju(co, "reclaims"), 0, "nobody died yet");
        cr_assert_eq(ju(co, "refused"), 0);
        cr_assert_eq(ju(co, "heals"), 0);

        const jv_t *ar = jget(v, "arena");
        cr_assert_leq(ju(ar, "rec_base"), ju(ar, "rec_top"));
        cr_assert_leq(ju(ar, "rec_top"), ju(ar, "buf_bottom"));
        cr_assert_leq(ju(ar, "buf_bottom"), ju(ar, "arena_top"));
        cr_assert_geq(ju(ar, "rec_used"), 4, "offered + session + idle + busy");
        cr_assert_gt(ju(ar, "buf_used_bytes"), 0, "busy's echoed buffers are held");
        cr_assert_gt(jarr(ar, "classes")->n, 0);
        json_drop(v);

        /* The text view of the same segment. */
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 0, "engine-stat exited %d\n%s%s", rc, out, err);
        char want[128];
        snprintf(want, sizeof(want), "pid %d alive", (int)srv);
        cr_assert_not_null(strstr(out, want), "no '%s' in:\n%s", want, out);
        cr_assert_not_null(strstr(out, "[hdr|recs"), "no arena map in:\n%s", out);
        cr_assert_not_null(strstr(out, "counters  opens"), "%s", out);
        cr_assert_not_null(strstr(out, "problems  0"), "%s", out);
        free(out);
        free(err);

        /* A client killed with its stream open: shown dead until the server reclaims it. The
         * server is stopped meanwhile, so "before" cannot race with its reclaim. */
        char b = 'g';
        cr_assert_eq(write(gate, &b, 1), 1);
        close(gate);
        struct pollfd pf = {.fd = ready, .events = POLLIN};
        cr_assert(poll(&pf, 1, 10000) == 1 && read(ready, &b, 1) == 1 && b == 'r',
                  "the victim client did not open its stream");
        close(ready);
        /* Accepted and its message consumed, so that what follows is exact. */
        v = wait_for(victim_open, &victim, 10000, "the victim's stream open");
        json_drop(v);
        cr_assert_eq(kill(srv, SIGSTOP), 0);
        xu_kill(victim); /* SIGKILL and reap: its pid no longer exists */
        v = snapshot();
        check_shape(v);
        r = find_rec(v, victim, ID_VICTIM, "stream");
        cr_assert_not_null(r, "no row for the killed client's stream before its reclaim");
        cr_assert_eq(ji(r, "alive"), 0, "a killed client shows alive 0");
        cr_assert_eq(ju(r, "c2s_msgs"), 1);
        cr_assert_eq(ju(r, "c2s_bytes"), 10);
        cl = find_client(v, victim);
        cr_assert_not_null(cl);
        cr_assert_eq(ji(cl, "alive"), 0);
        cr_assert_eq(ju(cl, "streams"), 1);
        cr_assert_eq(ji(jget(v, "server"), "alive"), 1, "a stopped server still holds its name");
        json_drop(v);
        cr_assert_eq(kill(srv, SIGCONT), 0);
        v = wait_for(pid_gone, &victim, 10000, "the killed client's records reclaimed");
        cr_assert_null(find_client(v, victim));
        co = jget(v, "counters");
        cr_assert_eq(ju(co, "opens"), 6, "+ the victim's session and stream: %llu",
                     (unsigned long long)ju(co, "opens"));
        cr_assert_eq(ju(co, "reclaims"), 2, "the victim's session and stream reclaimed");
        cr_assert_eq(ju(co, "closes"), 3, "the closed stream, the victim's two records");
        cr_assert_not_null(find_rec(v, me, ID_IDLE, "stream"), "the idle stream is untouched");
        json_drop(v);

        eng_stream_close(idle);
        eng_stream_close(busy);
        eng_client_detach(c);
        server_stop(srv);
}

/* --interval 0.2 --count 3 --json: three lines, rates from the second; and a stream moving
 * data between samples gets a non-zero rate. */
Test(stat, interval_count_json_gives_that_many_samples_with_rates, .timeout = 120)
{
        pid_t srv = server_fork(X.name, 0600);
        eng_client_t *c = attach();
        eng_stream_t *s = open_stream(c, 5);
        char *argv[] = {XU_STAT,   "--name", X.name,   "--interval", "0.2",
                        "--count", "3",      "--json", NULL};
        pid_t st = xu_spawn(argv, xu_path("iv.out"), xu_path("iv.err"));
        /* Keep stream 5 busy while it samples: consumed messages of 1000 bytes. */
        uint64_t t0 = xu_now_ms(), sent = 0;
        int status;
        while (!xu_wait(st, 0, &status)) {
                cr_assert_lt(xu_now_ms() - t0, 20000, "engine-stat --count 3 did not end");
                send_len(s, CMD_EAT, 1000);
                sent++;
                xu_sleep_ms(1);
        }
        uint64_t ms = xu_now_ms() - t0;
        char *out = xu_slurp(xu_path("iv.out")), *err = xu_slurp(xu_path("iv.err"));
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit %d\n%s%s", xu_code(status),
                  out, err);
        cr_assert_geq(ms, 350, "3 samples 0.2 s apart took only %llu ms", (unsigned long long)ms);
        cr_assert_eq(xu_count(out, "\n"), 3, "want 3 lines:\n%s", out);
        char *line = out;
        for (int k = 1; k <= 3; k++) {
                char *nl = strchr(line, '\n');
                jv_t *v = json_parse(line, (size_t)(nl - line));
                check_shape(v);
                cr_assert_eq(ju(v, "sample"), (uint64_t)k);
                const jv_t *rates = jget(v, "rates");
                const jv_t *r = find_rec(v, getpid(), 5, "stream");
                cr_assert_not_null(r);
                if (k == 1) {
                        cr_assert_eq(rates->t, J_NULL, "no rates in the first sample");
                        cr_assert_eq(jget(r, "rate")->t, J_NULL);
                } else {
                        cr_assert_eq(rates->t, J_OBJ, "rates in sample %d", k);
                        double secs = jd(rates, "seconds");
                        cr_assert(secs >= 0.2 && secs < 10, "%f s between samples", secs);
                        cr_assert_geq(ju(rates, "records"), 1);
                        const jv_t *tot = jget(rates, "total");
                        cr_assert_gt(jd(tot, "c2s_msgs_per_s"), 0, "stream 5 was sending");
                        const jv_t *rr = jget(r, "rate");
                        cr_assert_eq(rr->t, J_OBJ, "a record present in both samples has a rate");
                        cr_assert_gt(jd(rr, "c2s_msgs_per_s"), 0);
                        cr_assert_gt(jd(rr, "c2s_mb_per_s"), 0);
                        cr_assert_geq(jd(rr, "s2c_msgs_per_s"), 0);
                }
                json_drop(v);
                line = nl + 1;
        }
        cr_log_info("%llu messages sent while sampling", (unsigned long long)sent);
        free(out);
        free(err);
        eng_stream_close(s);
        eng_client_detach(c);
        server_stop(srv);
}

/* SIGINT ends an unbounded --interval cleanly: exit 0 after what it had shown; text blocks
 * separated by a blank line when stdout is not a terminal. */
Test(stat, sigint_ends_the_interval_loop_with_exit_0)
{
        pid_t srv = server_fork(X.name, 0600);
        char *argv[] = {XU_STAT, "--name", X.name, "--interval", "0.1", NULL};
        pid_t st = xu_spawn(argv, xu_path("loop.out"), xu_path("loop.err"));
        xu_sleep_ms(600);
        int status;
        cr_assert(!xu_wait(st, 0, &status), "engine-stat --interval ended by itself");
        kill(st, SIGINT);
        int rc = xu_finish(st, 3000, "engine-stat after SIGINT");
        char *out = xu_slurp(xu_path("loop.out")), *err = xu_slurp(xu_path("loop.err"));
        cr_assert_eq(rc, 0, "exit %d after SIGINT\n%s", rc, err);
        int blocks = xu_count(out, "segment   ");
        cr_assert_geq(blocks, 2, "%d samples in 0.6 s", blocks);
        cr_assert_eq(xu_count(out, "\n\nsegment   "), blocks - 1,
                     "blocks separated by one blank line");
        cr_assert_null(strstr(out, "\033["), "no terminal control codes when not on a terminal");
        free(out);
        free(err);
        server_stop(srv);
}

/* ---- 2. garbage --------------------------------------------------------------------------- */

static uint64_t rnd_state;

static uint64_t rnd(void)
{
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return rnd_state;
}

/* Create shm object name (0600, this user) holding len bytes of img. */
static void shm_put(const char *name, const void *img, size_t len, mode_t mode)
{
        shm_unlink(name);
        int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, mode);
        cr_assert_geq(fd, 0, "shm_open(%s): %s", name, strerror(errno));
        fchmod(fd, mode);
        cr_assert_eq(ftruncate(fd, (off_t)len), 0);
        size_t done = 0;
        while (done < len) {
                ssize_t w = pwrite(fd, (const char *)img + done, len - done, (off_t)done);
                cr_assert_gt(w, 0, "pwrite: %s", strerror(errno));
                done += (size_t)w;
        }
        close(fd);
}

/* A copy of a real segment: a server's image, read while it serves, the server then stopped. */
static unsigned char *real_image(size_t *len)
{
        pid_t srv = server_fork(X.name, 0600);
        eng_client_t *c = attach();
        eng_stream_t *s = open_stream(c, 9);
        send_len(s, CMD_ECHO, 3000);
        int fd = shm_open(X.name, O_RDONLY, 0);
        cr_assert_geq(fd, 0);
        struct stat sb;
        cr_assert_eq(fstat(fd, &sb), 0);
        unsigned char *img = malloc((size_t)sb.st_size);
        cr_assert_not_null(img);
        size_t done = 0;
        while (done < (size_t)sb.st_size) {
                ssize_t r = pread(fd, img + done, (size_t)sb.st_size - done, (off_t)done);
                cr_assert_gt(r, 0);
                done += (size_t)r;
        }
        close(fd);
        eng_stream_close(s);
        eng_client_detach(c);
        server_stop(srv);
        *len = done;
        return img;
}

/* engine-stat on a garbage segment, text and JSON: never crashes or hangs (stat_run fails the
 * test on either), exits with one of the codes allowed, and what it prints parses. */
static int run_on_garbage(const char *name, const char *what, bool want_problems)
{
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", name);
        cr_assert(rc == 0 || rc == 5 || rc == 6, "%s: exit %d\n%s%s", what, rc, out, err);
        if (rc == 6)
                cr_assert_not_null(strstr(err, "engine-stat: "), "%s: no message:\n%s", what, err);
        else if (want_problems)
                cr_assert_not_null(strstr(out, "problem: "),
                                   "%s: exit %d without a problem "
                                   "line:\n%s%s",
                                   what, rc, out, err);
        free(out);
        free(err);
        int rj = stat_run(&out, &err, "--name", name, "--json");
        cr_assert_eq(rj, rc, "%s: --json exit %d, text exit %d", what, rj, rc);
        if (rj != 6) {
                size_t len = strlen(out);
                cr_assert(len > 0 && out[len - 1] == '\n', "%s: no JSON line:\n%s", what, out);
                jv_t *v = json_parse(out, len - 1);
                check_shape(v);
                if (want_problems)
                        cr_assert_gt(jarr(v, "problems")->n, 0, "%s: no problems in JSON", what);
                json_drop(v);
        }
        free(out);
        free(err);
        return rc;
}

Test(stat, random_bytes_are_not_a_segment_exit_6)
{
        rnd_state = 0x1234567;
        size_t len = 1u << 20;
        uint64_t *img = malloc(len);
        for (size_t i = 0; i < len / 8; i++)
                img[i] = rnd();
        shm_put(X.name, img, len, 0600);
        free(img);
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 6, "exit %d\n%s%s", rc, out, err);
        cr_assert_not_null(strstr(err, "not an engine segment"), "%s", err);
        free(out);
        free(err);
        /* Empty and tiny objects too. */
        shm_put(X.name, "", 0, 0600);
        rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 6, "empty object: exit %d\n%s%s", rc, out, err);
        free(out);
        free(err);
        shm_put(X.name, "ENGS", 4, 0600);
        rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 6, "4-byte object: exit %d\n%s%s", rc, out, err);
        free(out);
        free(err);
}

/* A real image whose first line (magic, version, geometry) is intact and whose next bytes are
 * scribbled - a little, a lot, everything - at several seeds. */
Test(stat, valid_magic_with_garbage_never_crashes_or_hangs, .timeout = 240)
{
        size_t len;
        unsigned char *real = real_image(&len);
        unsigned char *img = malloc(len);
        const size_t spans[] = {64, 4096, 64 << 10, 1 << 20, 0 /* all */};
        int codes[7] = {0};
        for (uint64_t seed = 1; seed <= 3; seed++) {
                for (size_t k = 0; k < sizeof(spans) / sizeof(spans[0]); k++) {
                        rnd_state = seed * 0x9e3779b97f4a7c15ull + k;
                        memcpy(img, real, len);
                        size_t end = spans[k] && 64 + spans[k] < len ? 64 + spans[k] : len;
                        for (size_t i = 64; i < end; i++)
                                img[i] = (unsigned char)rnd();
                        shm_put(X.name, img, len, 0600);
                        char what[64];
                        snprintf(what, sizeof(what), "seed %llu, %zu bytes scribbled",
                                 (unsigned long long)seed, end - 64);
                        codes[run_on_garbage(X.name, what, true)]++;
                }
                /* Sparse: 256 random words anywhere past the first line. */
                memcpy(img, real, len);
                for (int i = 0; i < 256; i++) {
                        size_t at = 64 + (size_t)(rnd() % (len - 72));
                        uint64_t w = rnd();
                        memcpy(img + at, &w, 8);
                }
                shm_put(X.name, img, len, 0600);
                codes[run_on_garbage(X.name, "sparse scribbles", false)]++;
        }
        /* Truncated: the header says 16 MiB, the object has 64 KiB. */
        shm_put(X.name, real, 64 << 10, 0600);
        codes[run_on_garbage(X.name, "truncated image", true)]++;
        cr_log_info("exit codes on garbage: 0 x%d, 5 x%d, 6 x%d", codes[0], codes[5], codes[6]);
        free(img);
        free(real);
}

/* Names are bytes: control characters, quotes, bytes that are not UTF-8. The JSON "name"
 * decodes back to exactly those bytes; the text view shows them escaped. */
Test(stat, odd_segment_names_are_escaped_and_round_trip)
{
        size_t len;
        unsigned char *real = real_image(&len);
        char name[96];
        snprintf(name, sizeof(name), "/t-%d-\x01\x1b[2J\"\\\xff\xc3\xa9\xe2\x80\xae-x",
                 (int)getpid());
        shm_put(name, real, len, 0600);
        free(real);
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", name, "--json");
        shm_unlink(name);
        cr_assert(rc == 5 || rc == 0, "exit %d\n%s%s", rc, out, err);
        size_t n = strlen(out);
        cr_assert(n > 0 && out[n - 1] == '\n');
        jv_t *v = json_parse(out, n - 1);
        const jv_t *nm = jget(v, "name");
        cr_assert_eq(nm->t, J_STR);
        cr_assert(nm->len == strlen(name) && memcmp(nm->s, name, nm->len) == 0,
                  "the JSON name does not decode to the segment's name");
        json_drop(v);
        free(out);
        free(err);
        shm_put(name, "", 0, 0600);
        rc = stat_run(&out, &err, "--name", name);
        shm_unlink(name);
        cr_assert_eq(rc, 6);
        cr_assert_null(strchr(err, '\x1b'), "a raw ESC reached the terminal:\n%s", err);
        free(out);
        free(err);
}

/* ---- 3. no segment, a dead server, another user's segment, usage ------------------------ */

Test(stat, no_segment_exits_3_with_a_clear_message)
{
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 3, "exit %d\n%s%s", rc, out, err);
        cr_assert_not_null(strstr(err, "engine-stat: no segment"), "%s", err);
        cr_assert_not_null(strstr(err, X.name), "%s", err);
        cr_assert_eq(out[0], '\0', "nothing on stdout:\n%s", out);
        free(out);
        free(err);
        /* The name from an options file (-c), and the same through --json. */
        xu_write_opts(NULL, NULL, 0);
        rc = stat_run(&out, &err, "-c", X.cfg, "--json");
        cr_assert_eq(rc, 3, "exit %d\n%s%s", rc, out, err);
        cr_assert_not_null(strstr(err, X.name), "%s", err);
        free(out);
        free(err);
        /* Without -c or --name: ./options.xml (the test folder holds one). */
        rc = stat_run(&out, &err, "--json");
        cr_assert_eq(rc, 3, "exit %d\n%s%s", rc, out, err);
        cr_assert_not_null(strstr(err, X.name), "./options.xml's name: %s", err);
        free(out);
        free(err);
}

Test(stat, dead_server_shows_its_snapshot_and_exits_5)
{
        pid_t srv = server_fork(X.name, 0600);
        xu_kill(srv); /* SIGKILL: the segment stays behind */
        char *out, *err;
        int rc = stat_run(&out, &err, "--name", X.name);
        cr_assert_eq(rc, 5, "exit %d\n%s%s", rc, out, err);
        char want[64];
        snprintf(want, sizeof(want), "pid %d DEAD", (int)srv);
        cr_assert_not_null(strstr(out, want), "no '%s' in:\n%s", want, out);
        cr_assert_not_null(strstr(err, "is gone"), "%s", err);
        free(out);
        free(err);
        rc = stat_run(&out, &err, "--name", X.name, "--json");
        cr_assert_eq(rc, 5);
        size_t n = strlen(out);
        cr_assert(n > 0 && out[n - 1] == '\n');
        jv_t *v = json_parse(out, n - 1);
        check_shape(v);
        cr_assert_eq(ji(jget(v, "server"), "alive"), 0);
        cr_assert_eq(ji(jget(v, "server"), "pid"), srv);
        json_drop(v);
        free(out);
        free(err);
        /* --interval stops at the first sample that finds the server dead. */
        rc = stat_run(&out, &err, "--name", X.name, "--interval", "0.1", "--json");
        cr_assert_eq(rc, 5);
        cr_assert_eq(xu_count(out, "\n"), 1, "%s", out);
        free(out);
        free(err);
}

/* As root: a segment of a third user (mode 0644, so it can be opened) read by 'nobody' is
 * refused (4), unless the options file names that owner. */
Test(stat, another_users_segment_exits_4)
{
        if (geteuid() != 0)
                SKIP("needs root to make a segment of another user and to run as nobody");
        size_t len;
        unsigned char *real = real_image(&len);
        shm_put(X.name, real, len, 0644);
        free(real);
        int fd = shm_open(X.name, O_RDWR, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(fchown(fd, 12345, 12345), 0, "fchown: %s", strerror(errno));
        close(fd);
        char *out, *err;
        int rc = stat_run_as(65534, &out, &err, STAT_ARGS("--name", X.name));
        cr_assert_eq(rc, 4, "exit %d\n%s%s", rc, out, err);
        cr_assert_not_null(strstr(err, "belongs to"), "%s", err);
        free(out);
        free(err);
        /* Trusted through options.xml's owner: read (the image's server is gone: 5). */
        xu_write_opts("owner=\"12345\"", NULL, 0);
        chmod(X.dir, 0755);
        chmod(X.cfg, 0644);
        rc = stat_run_as(65534, &out, &err, STAT_ARGS("-c", X.cfg));
        cr_assert(rc == 5 || rc == 0, "owner=12345 trusted: exit %d\n%s%s", rc, out, err);
        free(out);
        free(err);
        /* Root reads anyone's. */
        rc = stat_run(&out, &err, "--name", X.name);
        cr_assert(rc == 5 || rc == 0, "as root: exit %d\n%s%s", rc, out, err);
        free(out);
        free(err);
}

Test(stat, bad_usage_exits_2)
{
        const char *const cases[][6] = {
            {"--interval", "0", NULL},
            {"--interval", "-1", NULL},
            {"--interval", "nan", NULL},
            {"--interval", "1x", NULL},
            {"--count", "3", NULL},
            {"--interval", "1", "--count", "0", NULL},
            {"--name", "no-slash", NULL},
            {"--name", "/a/b", NULL},
            {"--bogus", NULL},
            {"extra", NULL},
            {"-c", "/nonexistent/options.xml", NULL},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *out, *err;
                int rc = stat_run_as((uid_t)-1, &out, &err, cases[i]);
                cr_assert_eq(rc, 2, "case %zu (%s %s): exit %d\n%s", i, cases[i][0],
                             cases[i][1] ? cases[i][1] : "", rc, err);
                cr_assert_not_null(strstr(err, "engine-stat"), "case %zu: %s", i, err);
                free(out);
                free(err);
        }
        char *out, *err;
        int rc = stat_run(&out, &err, "--help");
        cr_assert_eq(rc, 0);
        for (int code = 0; code <= 6; code++) {
                char want[8];
                snprintf(want, sizeof(want), "  %d  ", code);
                cr_assert_not_null(strstr(out, want), "--help does not document exit %d", code);
        }
        free(out);
        free(err);
}

/*
 * A snapshot reads the headers and the records, not the buffers: engine-stat (and a server
 * answering SIGUSR1) must not need memory the size of the segment. A 1 GiB segment with two
 * records: engine-stat's peak RSS stays far below it (it read the whole object before).
 */
Test(stat, a_snapshot_of_a_large_segment_reads_its_records_not_its_buffers, .timeout = 120)
{
        pid_t srv = server_fork_size(X.name, 0600, 1ull << 30);
        eng_client_t *c = attach();
        eng_stream_t *s = open_stream(c, 1);
        pid_t parent = getpid();
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(126);
                int fd = open("/dev/null", O_WRONLY);
                if (fd < 0)
                        _exit(125);
                dup2(fd, 1);
                execl(XU_STAT, XU_STAT, "--name", X.name, "--json", (char *)NULL);
                _exit(127);
        }
        xu_track(pid);
        int st = 0;
        struct rusage ru;
        memset(&ru, 0, sizeof(ru));
        uint64_t end = eng_now_ns() + 20000000000ull;
        pid_t w = 0;
        while ((w = wait4(pid, &st, WNOHANG, &ru)) == 0 && eng_now_ns() < end)
                xu_sleep_ms(5);
        if (w != pid) {
                xu_kill(pid);
                cr_assert_fail("engine-stat hung (killed after 20 s)");
        }
        xu_untrack(pid); /* reaped here */
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "engine-stat exited %d",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
        cr_log_info("engine-stat on a 1 GiB segment: peak RSS %ld KiB", ru.ru_maxrss);
        cr_assert_lt(ru.ru_maxrss, 128 * 1024, "peak RSS %ld KiB for a 1 GiB segment",
                     ru.ru_maxrss);
        cr_assert_eq(eng_stream_close(s), 0);
        eng_client_detach(c);
        server_stop(srv);
}
