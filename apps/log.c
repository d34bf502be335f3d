/*
 * log.c - the one formatter of engine-server's and engine-client's log lines (options.h says
 * what a line looks like). A line is built whole in the caller's stack and written with one
 * write(2) under a mutex, so lines of the server's threads never interleave.
 *
 * Everything that reaches a line goes through eng_log_escape (proto.h) first: no control
 * character, bidirectional control or invisible format character ever reaches stderr raw,
 * whatever a message or a value holds, so nobody can forge a line through a name.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "options.h"
#include <shmengine/proto.h>

/* The rendering of a message or of one value is cut (ending in "...") past PART_MAX bytes; a
 * whole line never exceeds LINE_MAX_BYTES (fields that do not fit are left out and the line
 * ends with truncated=true). */
#define PART_MAX       2048
#define LINE_MAX_BYTES 16384
#define FIELD_MAX      16

static const char *log_prog = "engine";
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void eng_log_init(const char *prog)
{
        log_prog = prog;
        tzset(); /* the UTC offset: read TZ now rather than in the first thread that logs */
}

/* ---- renderings --------------------------------------------------------------------- */

struct buf {
        char *p;
        size_t n, cap;
        bool cut; /* something did not fit */
};

/* Append n bytes, all or nothing. */
static bool put(struct buf *b, const char *s, size_t n)
{
        if (b->n + n > b->cap) {
                b->cut = true;
                return false;
        }
        memcpy(b->p + b->n, s, n);
        b->n += n;
        return true;
}

/* Append the eng_log_escape rendering of n raw bytes: whole pieces only. */
static void put_escaped(struct buf *b, const char *s, size_t n)
{
        if (b->cut)
                return;
        size_t room = b->cap - b->n + 1; /* eng_log_escape counts the NUL it writes */
        char tmp[PART_MAX + 1];
        if (room > sizeof(tmp))
                room = sizeof(tmp);
        size_t need = eng_log_escape(s, n, tmp, room);
        size_t got = strlen(tmp);
        memcpy(b->p + b->n, tmp, got);
        b->n += got;
        if (need > got)
                b->cut = true;
}

/* The digits eng_log_escape writes. */
static bool is_hex(char c)
{
        return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* The length of the eng_log_escape escape at s ("\\", "\xNN", "\u{NNNN}" with 4 to 6
 * digits), or 0. */
static size_t escape_len(const char *s, size_t n)
{
        if (n >= 2 && s[1] == '\\')
                return 2;
        if (n >= 4 && s[1] == 'x' && is_hex(s[2]) && is_hex(s[3]))
                return 4;
        if (n >= 8 && s[1] == 'u' && s[2] == '{') {
                size_t k = 3;
                unsigned long cp = 0;
                for (; k < n && k < 9 && is_hex(s[k]); k++)
                        cp = cp * 16 + (unsigned long)(s[k] <= '9' ? s[k] - '0' : s[k] - 'A' + 10);
                if (k >= 7 && k < n && s[k] == '}' && cp <= 0x10ffff)
                        return k + 1;
        }
        return 0;
}

/*
 * Render a value or a message into b (b->cap at most PART_MAX - 3): raw text through
 * eng_log_escape; text that already is an eng_log_escape rendering keeps its escapes, and
 * anything else in it (a stray backslash, a control byte) is escaped as raw text would be. A
 * rendering that does not fit is cut at a whole piece and ends in "...".
 */
static void render(struct buf *b, const char *s, size_t n, bool pre_escaped)
{
        if (!pre_escaped) {
                put_escaped(b, s, n);
        } else {
                for (size_t i = 0; i < n && !b->cut;) {
                        size_t k = s[i] == '\\' ? escape_len(s + i, n - i) : 0;
                        if (k > 0) {
                                put(b, s + i, k);
                                i += k;
                                continue;
                        }
                        size_t j = i + 1; /* up to the next backslash: never inside UTF-8 */
                        while (j < n && s[j] != '\\')
                                j++;
                        put_escaped(b, s + i, j - i);
                        i = j;
                }
        }
        if (b->cut) {
                b->cut = false;
                b->cap += 3; /* the room render's callers kept for this */
                put(b, "...", 3);
        }
}

/* Bare only when non-empty printable ASCII without space, '"', '=' or '\'. */
static bool needs_quotes(const char *s, size_t n)
{
        if (n == 0)
                return true;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\')
                        return true;
        }
        return false;
}

static void put_field(struct buf *line, const eng_log_field_t *f)
{
        char part[PART_MAX];
        struct buf v = {part, 0, sizeof(part) - 3, false};
        switch (f->kind) {
        case ENG_LOG_STR:
        case ENG_LOG_ESC: {
                const char *s = f->s ? f->s : "";
                render(&v, s, strlen(s), f->kind == ENG_LOG_ESC);
                break;
        }
        case ENG_LOG_U64:
                v.n = (size_t)snprintf(part, sizeof(part), "%llu", (unsigned long long)f->u);
                break;
        case ENG_LOG_I64:
                v.n = (size_t)snprintf(part, sizeof(part), "%lld", (long long)f->i);
                break;
        case ENG_LOG_FIX:
                v.n = (size_t)snprintf(part, sizeof(part), "%.*f", f->prec, f->d);
                break;
        }
        /* key: [a-z0-9_]; anything else becomes '_' (keys are the program's own words) */
        char field[2 * PART_MAX + 64];
        size_t w = 0;
        field[w++] = ' ';
        for (const char *k = f->key; *k && w < 40; k++)
                field[w++] = (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ? *k : '_';
        if (w == 1)
                field[w++] = '_'; /* never an empty key */
        field[w++] = '=';
        if (needs_quotes(part, v.n)) {
                field[w++] = '"';
                for (size_t i = 0; i < v.n; i++) {
                        if (part[i] == '"')
                                field[w++] = '\\';
                        field[w++] = part[i];
                }
                field[w++] = '"';
        } else {
                memcpy(field + w, part, v.n);
                w += v.n;
        }
        put(line, field, w);
}

/* ---- the line ----------------------------------------------------------------------- */

static void write_line(const char *s, size_t n)
{
        int saved = errno;
        pthread_mutex_lock(&log_mu);
        while (n > 0) {
                ssize_t k = write(STDERR_FILENO, s, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break; /* nowhere to log to: nothing to do about it */
                s += k;
                n -= (size_t)k;
        }
        pthread_mutex_unlock(&log_mu);
        errno = saved;
}

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void eng_log(eng_log_level_t level, const eng_log_field_t *fields, const char *fmt, ...)
{
        char line[LINE_MAX_BYTES];
        /* the end of every line: a possible " truncated=true" and the newline */
        static const char trunc[] = " truncated=true";
        struct buf b = {line, 0, sizeof(line) - sizeof(trunc), false};

        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        long off = tm.tm_gmtoff / 60; /* minutes east of UTC */
        char head[160];
        size_t hn = strftime(head, sizeof(head), "%Y-%m-%dT%H:%M:%S", &tm);
        const char *lv = (unsigned)level < 4 ? level_names[level] : "INFO";
        hn += (size_t)snprintf(head + hn, sizeof(head) - hn,
                               ".%03ld%c%02ld:%02ld %s %.40s[%ld]: ", ts.tv_nsec / 1000000,
                               off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60, lv, log_prog,
                               (long)getpid());
        put(&b, head, hn < sizeof(head) ? hn : sizeof(head) - 1);

        /* The message: escaped, and without '=' (written \x3D) so that the fields begin at the
         * first word holding one. */
        char raw[PART_MAX], part[PART_MAX];
        va_list ap;
        va_start(ap, fmt);
        int rn = vsnprintf(raw, sizeof(raw), fmt, ap);
        va_end(ap);
        size_t rlen = rn < 0 ? 0 : (size_t)rn < sizeof(raw) ? (size_t)rn : sizeof(raw) - 1;
        struct buf m = {part, 0, sizeof(part) - 3, false};
        render(&m, raw, rlen, false);
        for (size_t i = 0; i < m.n; i++) {
                if (part[i] == '=')
                        put(&b, "\\x3D", 4);
                else
                        put(&b, part + i, 1);
        }

        for (int i = 0; fields != NULL && i < FIELD_MAX && fields[i].key != NULL; i++)
                if (!b.cut)
                        put_field(&b, &fields[i]);
        if (b.cut) {
                b.cap = sizeof(line);
                b.cut = false;
                put(&b, trunc, sizeof(trunc) - 1);
        } else {
                b.cap = sizeof(line);
        }
        put(&b, "\n", 1);
        write_line(line, b.n);
}
