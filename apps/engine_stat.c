/*
 * engine-stat: shows what a segment holds - the server, its clients, every stream record, the
 * arena and the engine's counters - from a read-only snapshot (eng_stat_*: no mapping, no
 * lock, no write; nothing it does can block or disturb the server or a client). With
 * --interval it samples repeatedly and shows rates between consecutive snapshots; --json
 * writes one JSON object per sample per line instead of the text view (docs/STAT.md).
 *
 * Everything in a snapshot comes from memory any process of the owner can write: every
 * string is escaped before it is printed (the text view with eng_log_escape, JSON as below),
 * and every number is only printed or compared, never used as a size or an index.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "options.h"
#include <shmengine/proto.h> /* eng_log_escape */

/* Exit status: distinct per outcome (usage(), docs/STAT.md). */
enum {
        EX_SHOWN = 0,  /* every sample shown */
        EX_OTHER = 1,  /* another error (out of memory, output failed, ...) */
        EX_USAGE = 2,  /* bad command line or options file */
        EX_NOSEG = 3,  /* no such segment */
        EX_ACCESS = 4, /* the segment belongs to another user (or cannot be read) */
        EX_DEAD = 5,   /* the server is gone (the snapshot is still shown) */
        EX_BADSEG = 6, /* the image is not a segment, or reading it failed */
};

#define MAP_COLS 60 /* the arena map's bar */

/* SIGINT/SIGTERM end the interval loop after the sample being shown. */
static volatile sig_atomic_t stop_sig;

static void on_signal(int sig)
{
        stop_sig = sig;
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: engine-stat [-c FILE | --name NAME] [--interval S [--count N]] [--json]\n"
                "\n"
                "Show the state of an engine segment: the server, its clients, one row per\n"
                "stream record, the arena and the engine's counters, then one line per value\n"
                "found impossible. It reads a private copy of the segment and never writes,\n"
                "locks or maps it.\n"
                "\n"
                "  -c, --config FILE  take the segment's name and trusted owner from FILE\n"
                "                     (default ./options.xml if it exists, else /engine-default)\n"
                "  -N, --name NAME    the segment's name (overrides the options file)\n"
                "  -i, --interval S   sample every S seconds (0.01..86400, fractional ok) and\n"
                "                     show rates between samples; until SIGINT/SIGTERM unless\n"
                "                     --count is given. On a terminal the view is redrawn in\n"
                "                     place; otherwise samples are separated by a blank line\n"
                "  -n, --count N      stop after N samples (with --interval)\n"
                "  -j, --json         one JSON object per sample per line (docs/STAT.md)\n"
                "  -h, --help         this text\n"
                "  -V, --version      version\n"
                "\n"
                "Exit status:\n"
                "  0  shown (also after SIGINT/SIGTERM ended --interval)\n"
                "  1  another error (out of memory, output failed)\n"
                "  2  bad usage or options file\n"
                "  3  no such segment\n"
                "  4  the segment belongs to another user, or cannot be read\n"
                "  5  the server is gone: its snapshot is shown, then a line saying so\n"
                "  6  the object is not an engine segment, or reading it failed\n");
}

/* Seconds as a decimal number in 0.01..86400 (no sign, no hex, no inf/nan). */
static int parse_secs(const char *s, double *out)
{
        if (strspn(s, "0123456789.") != strlen(s) || *s == '\0')
                return -1;
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v < 0.01 || v > 86400)
                return -1;
        *out = v;
        return 0;
}

/* A POSIX shared-memory name: "/" and 1..254 bytes without "/" or NUL. */
static bool good_name(const char *s)
{
        size_t n = strlen(s);
        return n >= 2 && n <= 255 && s[0] == '/' && strchr(s + 1, '/') == NULL;
}

/* ---- rates between two snapshots ---------------------------------------------------------- */

typedef struct rate {
        bool have;
        double c2s_msgs, s2c_msgs; /* messages per second */
        double c2s_mbps, s2c_mbps; /* 10^6 bytes per second */
} rate_t;

typedef struct totals {
        bool have;      /* there was a previous snapshot to compare with */
        double seconds; /* between the two snapshots */
        uint32_t records;
        rate_t r;
} totals_t;

/* A record is "the same" in two snapshots if slot, user id, pid and kind are. */
static int rec_cmp(const eng_stat_rec_t *a, const eng_stat_rec_t *b)
{
        if (a->index != b->index)
                return a->index < b->index ? -1 : 1;
        if (a->user_id != b->user_id)
                return a->user_id < b->user_id ? -1 : 1;
        if (a->pid != b->pid)
                return a->pid < b->pid ? -1 : 1;
        return (int)a->session - (int)b->session;
}

static int rec_ptr_cmp(const void *a, const void *b)
{
        return rec_cmp(*(const eng_stat_rec_t *const *)a, *(const eng_stat_rec_t *const *)b);
}

/* rates[i] for cur->recs[i] (have = false if prev is NULL, the record is new, changed
 * identity - slot, user id, pid, kind or accept time - or a counter went backwards), and
 * their sum. 0, or -ENOMEM. */
static int compute_rates(const eng_stat_t *prev, const eng_stat_t *cur, rate_t *rates,
                         totals_t *tot)
{
        memset(tot, 0, sizeof(*tot));
        for (uint32_t i = 0; i < cur->nrecs; i++)
                rates[i].have = false;
        if (prev == NULL || cur->taken_ns <= prev->taken_ns)
                return 0;
        tot->have = true;
        tot->seconds = (double)(cur->taken_ns - prev->taken_ns) / 1e9;
        const eng_stat_rec_t **idx = NULL;
        if (prev->nrecs > 0) {
                idx = malloc(prev->nrecs * sizeof(*idx));
                if (idx == NULL)
                        return -ENOMEM;
                for (uint32_t i = 0; i < prev->nrecs; i++)
                        idx[i] = &prev->recs[i];
                qsort(idx, prev->nrecs, sizeof(*idx), rec_ptr_cmp);
        }
        for (uint32_t i = 0; i < cur->nrecs; i++) {
                const eng_stat_rec_t *c = &cur->recs[i], *key = c;
                const eng_stat_rec_t **hit =
                    idx ? bsearch(&key, idx, prev->nrecs, sizeof(*idx), rec_ptr_cmp) : NULL;
                if (hit == NULL)
                        continue;
                const eng_stat_rec_t *p = *hit;
                /* The server's accept time (taken_ns - age_ns, exact: both come from one clock
                 * reading) tells a slot the same client reused for the same id. */
                if (c->age_ns != 0 && p->age_ns != 0 && c->age_ns <= cur->taken_ns &&
                    p->age_ns <= prev->taken_ns &&
                    cur->taken_ns - c->age_ns != prev->taken_ns - p->age_ns)
                        continue;
                if (c->c2s_msgs < p->c2s_msgs || c->s2c_msgs < p->s2c_msgs ||
                    c->c2s_bytes < p->c2s_bytes || c->s2c_bytes < p->s2c_bytes)
                        continue; /* reused, or a counter someone scribbled: no rate */
                rate_t *r = &rates[i];
                r->have = true;
                r->c2s_msgs = (double)(c->c2s_msgs - p->c2s_msgs) / tot->seconds;
                r->s2c_msgs = (double)(c->s2c_msgs - p->s2c_msgs) / tot->seconds;
                r->c2s_mbps = (double)(c->c2s_bytes - p->c2s_bytes) / tot->seconds / 1e6;
                r->s2c_mbps = (double)(c->s2c_bytes - p->s2c_bytes) / tot->seconds / 1e6;
                tot->records++;
                tot->r.c2s_msgs += r->c2s_msgs;
                tot->r.s2c_msgs += r->s2c_msgs;
                tot->r.c2s_mbps += r->c2s_mbps;
                tot->r.s2c_mbps += r->s2c_mbps;
        }
        tot->r.have = true;
        free(idx);
        return 0;
}

/* ---- text view -------------------------------------------------------------------------- */

/* A string from the snapshot, safe for a terminal (eng_log_escape: control, bidirectional and
 * invisible characters and bytes that are not UTF-8 become escapes). */
static const char *esc(const char *s, char *buf, size_t cap)
{
        if (s == NULL)
                s = "?";
        size_t need = eng_log_escape(s, strlen(s), buf, cap);
        if (need >= cap && cap > 4)
                memcpy(buf + cap - 4, "...", 4);
        return buf;
}

/* "session", "stream", or "offer": the record on offer is nobody's yet (its type is not set). */
static const char *rec_kind(const eng_stat_rec_t *r)
{
        if (r->state != NULL && strcmp(r->state, "offered") == 0)
                return "offer";
        return r->session ? "session" : "stream";
}

static const char *alive_word(int alive)
{
        return alive == 1 ? "alive" : alive == 0 ? "DEAD" : "?";
}

static const char *human(uint64_t b, char *out, size_t n)
{
        static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        double v = (double)b;
        int i = 0;
        while (v >= 1024 && i < 6) {
                v /= 1024;
                i++;
        }
        snprintf(out, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
        return out;
}

static const char *duration(uint64_t ns, char *out, size_t n)
{
        uint64_t s = ns / 1000000000u;
        if (ns == 0)
                snprintf(out, n, "-");
        else if (s < 60)
                snprintf(out, n, "%.1f s", (double)ns / 1e9);
        else if (s < 3600)
                snprintf(out, n, "%um%02us", (unsigned)(s / 60), (unsigned)(s % 60));
        else if (s < 86400)
                snprintf(out, n, "%uh%02um", (unsigned)(s / 3600), (unsigned)(s % 3600 / 60));
        else
                snprintf(out, n, "%llud%02uh", (unsigned long long)(s / 86400),
                         (unsigned)(s % 86400 / 3600));
        return out;
}

/* The arena as one line: records growing up from rec_base to rec_top, buffers growing down
 * from arena_top to buf_bottom, the gap between; MAP_COLS columns for rec_base..arena_top. */
static void draw_map(FILE *f, const eng_stat_t *st)
{
        uint64_t b = st->rec_base, rt = st->rec_top, bb = st->buf_bottom, t = st->arena_top;
        if (!(b <= rt && rt <= bb && bb <= t && b < t)) {
                fprintf(f,
                        "  map      unknown (watermarks out of order: rec_base %llu rec_top %llu "
                        "buf_bottom %llu arena_top %llu)\n",
                        (unsigned long long)b, (unsigned long long)rt, (unsigned long long)bb,
                        (unsigned long long)t);
                return;
        }
        double span = (double)(t - b);
        unsigned recs = (unsigned)((double)(rt - b) / span * MAP_COLS + 0.5);
        unsigned bufs = (unsigned)((double)(t - bb) / span * MAP_COLS + 0.5);
        if (recs == 0 && rt > b)
                recs = 1; /* something there: at least one column */
        if (bufs == 0 && t > bb)
                bufs = 1;
        while (recs + bufs > MAP_COLS)
                recs > bufs ? recs-- : bufs--;
        if (recs + bufs == MAP_COLS && bb > rt && MAP_COLS > 2)
                recs > bufs ? recs-- : bufs--; /* a gap exists: show one column of it */
        char bar[MAP_COLS + 1];
        for (unsigned i = 0; i < MAP_COLS; i++)
                bar[i] = i < recs ? '#' : i >= MAP_COLS - bufs ? '#' : '.';
        bar[MAP_COLS] = '\0';
        char g[32];
        fprintf(f, "  map      [hdr|recs%sbufs]  gap %s\n", bar, human(bb - rt, g, sizeof(g)));
        fprintf(f, "           rec_base %llu  rec_top %llu  buf_bottom %llu  arena_top %llu\n",
                (unsigned long long)b, (unsigned long long)rt, (unsigned long long)bb,
                (unsigned long long)t);
}

static void print_text(FILE *f, const eng_stat_t *st, const rate_t *rates, const totals_t *tot,
                       const char *when)
{
        char e[1100], e2[256], a[32], b[32], c[32];
        char name[sizeof(st->name) + 1];
        memcpy(name, st->name, sizeof(st->name));
        name[sizeof(st->name)] = '\0';
        fprintf(f, "segment   %s  owner uid %lu  at %s\n", esc(name, e, sizeof(e)),
                (unsigned long)st->owner_uid, when);
        fprintf(f, "server    pid %ld %s  state %s  epoch %llu  up %s  transport %s  workers %u\n",
                (long)st->server_pid, alive_word(st->server_alive),
                esc(st->server_state, e, sizeof(e)), (unsigned long long)st->epoch,
                duration(st->uptime_ns, a, sizeof(a)), esc(st->transport, e2, sizeof(e2)),
                st->workers);
        fprintf(f, "          size %s (%llu)  ring depth %u  max streams %u\n",
                human(st->size, a, sizeof(a)), (unsigned long long)st->size, st->ring_depth,
                st->max_streams);

        fprintf(f, "clients   %u\n", st->nclients);
        if (st->nclients > 0)
                fprintf(f, "  %10s  %-5s  %7s\n", "PID", "ALIVE", "STREAMS");
        for (uint32_t i = 0; i < st->nclients; i++)
                fprintf(f, "  %10ld  %-5s  %7u\n", (long)st->clients[i].pid,
                        alive_word(st->clients[i].alive), st->clients[i].streams);

        fprintf(f,
                "records   %u in use (pairs are client->server/server->client; msgs = the last "
                "sequence number)\n",
                st->nrecs);
        /* Each direction's pair as "c2s/s2c"; the rate columns from the second sample. */
        if (st->nrecs > 0)
                fprintf(f, "  %5s %-7s %10s %8s %-5s %-7s %-7s %9s %17s %21s %7s%s\n", "IDX",
                        "KIND", "USER", "PID", "ALIVE", "STATE", "SCHED", "FILL", "MSGS", "BYTES",
                        "AGE", tot->have ? "           MSG/S          MB/S" : "");
        for (uint32_t i = 0; i < st->nrecs; i++) {
                const eng_stat_rec_t *r = &st->recs[i];
                char fill[32], msgs[48], bytes[80], rate[128] = "";
                char st_s[64], sc_s[64];
                snprintf(fill, sizeof(fill), "%u/%u", r->c2s_fill, r->s2c_fill);
                snprintf(msgs, sizeof(msgs), "%llu/%llu", (unsigned long long)r->c2s_msgs,
                         (unsigned long long)r->s2c_msgs);
                snprintf(bytes, sizeof(bytes), "%s/%s", human(r->c2s_bytes, a, sizeof(a)),
                         human(r->s2c_bytes, b, sizeof(b)));
                if (rates[i].have) {
                        char m[48], mb[48];
                        snprintf(m, sizeof(m), "%.0f/%.0f", rates[i].c2s_msgs, rates[i].s2c_msgs);
                        snprintf(mb, sizeof(mb), "%.1f/%.1f", rates[i].c2s_mbps, rates[i].s2c_mbps);
                        snprintf(rate, sizeof(rate), " %15s %13s", m, mb);
                } else if (tot->have) {
                        snprintf(rate, sizeof(rate), " %15s", "new");
                }
                fprintf(f, "  %5u %-7s %10u %8ld %-5s %-7s %-7s %9s %17s %21s %7s%s\n", r->index,
                        rec_kind(r), r->user_id, (long)r->pid, alive_word(r->alive),
                        esc(r->state, st_s, sizeof(st_s)), esc(r->sched, sc_s, sizeof(sc_s)), fill,
                        msgs, bytes, duration(r->age_ns, c, sizeof(c)), rate);
        }

        fprintf(f,
                "arena     %s  size %s  records %llu used / %llu free  buffers %s used / %s free"
                "  failed allocations %llu\n",
                esc(st->arena_kind, e, sizeof(e)), human(st->arena_size, a, sizeof(a)),
                (unsigned long long)st->rec_used, (unsigned long long)st->rec_free,
                human(st->buf_used_bytes, b, sizeof(b)), human(st->buf_free_bytes, c, sizeof(c)),
                (unsigned long long)st->alloc_failed);
        uint32_t ncls = st->nclasses <= 16 ? st->nclasses : 16;
        if (ncls > 0)
                fprintf(f, "  %5s %10s %10s %10s %10s\n", "CLASS", "BLOCK", "USED", "FREE",
                        "FAILED");
        for (uint32_t i = 0; i < ncls; i++)
                fprintf(f, "  %5u %10s %10llu %10llu %10llu\n", i,
                        human(st->cls[i].block_bytes, a, sizeof(a)),
                        (unsigned long long)st->cls[i].used, (unsigned long long)st->cls[i].free,
                        (unsigned long long)st->cls[i].failed);
        draw_map(f, st);

        fprintf(f,
                "counters  opens %llu  closes %llu  ended %llu  aborts %llu  reclaims %llu  heals "
                "%llu  refused %llu  walks %llu\n",
                (unsigned long long)st->opens, (unsigned long long)st->closes,
                (unsigned long long)st->ended, (unsigned long long)st->aborts,
                (unsigned long long)st->reclaims, (unsigned long long)st->heals,
                (unsigned long long)st->refused, (unsigned long long)st->walks);
        if (tot->have)
                fprintf(f,
                        "rates     over %.2f s, %u records: c2s %.0f msg/s %.1f MB/s  s2c %.0f "
                        "msg/s %.1f MB/s\n",
                        tot->seconds, tot->records, tot->r.c2s_msgs, tot->r.c2s_mbps,
                        tot->r.s2c_msgs, tot->r.s2c_mbps);
        fprintf(f, "problems  %u\n", st->nproblems);
        for (uint32_t i = 0; i < st->nproblems; i++)
                fprintf(f, "problem: %s\n", esc(st->problems[i], e, sizeof(e)));
}

/* ---- JSON view --------------------------------------------------------------------------- */

/* The length of the valid UTF-8 sequence at s (1..4), 0 if s[0] does not start one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
        unsigned char c = s[0];
        size_t k;
        unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
        if (c >= 0xc2 && c <= 0xdf)
                k = 2;
        else if (c >= 0xe0 && c <= 0xef) {
                k = 3;
                if (c == 0xe0)
                        lo = 0xa0; /* no overlong */
                else if (c == 0xed)
                        hi = 0x9f; /* no surrogate */
        } else if (c >= 0xf0 && c <= 0xf4) {
                k = 4;
                if (c == 0xf0)
                        lo = 0x90; /* no overlong */
                else if (c == 0xf4)
                        hi = 0x8f; /* <= U+10FFFF */
        } else
                return 0;
        if (n < k || s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < k; i++)
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
        return k;
}

/* A JSON string. '"' and '\' are escaped with '\'; every C0 control and DEL become \u00XX;
 * valid UTF-8 is written as it is; a byte that is not part of valid UTF-8 becomes \u00XX of
 * the byte (0x80..0xff). Valid UTF-8 is never escaped, so every \u00XX escape stands for
 * exactly one byte XX of the original: decoding gives the exact bytes back. */
static void json_str(FILE *f, const char *str)
{
        if (str == NULL) {
                fputs("null", f);
                return;
        }
        const unsigned char *s = (const unsigned char *)str;
        size_t n = strlen(str);
        putc('"', f);
        for (size_t i = 0; i < n;) {
                unsigned char c = s[i];
                if (c == '"' || c == '\\') {
                        putc('\\', f);
                        putc(c, f);
                        i++;
                } else if (c < 0x20 || c == 0x7f) {
                        fprintf(f, "\\u%04x", c);
                        i++;
                } else if (c < 0x80) {
                        putc(c, f);
                        i++;
                } else {
                        size_t k = utf8_len(s + i, n - i);
                        if (k == 0) {
                                fprintf(f, "\\u%04x", c);
                                i++;
                        } else {
                                fwrite(s + i, 1, k, f);
                                i += k;
                        }
                }
        }
        putc('"', f);
}

static void json_num(FILE *f, double v)
{
        if (isfinite(v))
                fprintf(f, "%.3f", v);
        else
                fputs("null", f);
}

static void json_rate(FILE *f, const rate_t *r)
{
        if (!r->have) {
                fputs("null", f);
                return;
        }
        fputs("{\"c2s_msgs_per_s\":", f);
        json_num(f, r->c2s_msgs);
        fputs(",\"s2c_msgs_per_s\":", f);
        json_num(f, r->s2c_msgs);
        fputs(",\"c2s_mb_per_s\":", f);
        json_num(f, r->c2s_mbps);
        fputs(",\"s2c_mb_per_s\":", f);
        json_num(f, r->s2c_mbps);
        putc('}', f);
}

#define U(x) ((unsigned long long)(x))

static void print_json(FILE *f, const eng_stat_t *st, const rate_t *rates, const totals_t *tot,
                       uint64_t sample, const char *when)
{
        char name[sizeof(st->name) + 1];
        memcpy(name, st->name, sizeof(st->name));
        name[sizeof(st->name)] = '\0';
        fprintf(f, "{\"engine_stat\":1,\"sample\":%llu,\"time\":", U(sample));
        json_str(f, when);
        fprintf(f, ",\"taken_ns\":%llu,\"name\":", U(st->taken_ns));
        json_str(f, name);
        fprintf(f, ",\"owner_uid\":%llu", U(st->owner_uid));
        fprintf(f, ",\"server\":{\"pid\":%ld,\"alive\":%d,\"state\":", (long)st->server_pid,
                st->server_alive);
        json_str(f, st->server_state);
        fprintf(f, ",\"epoch\":%llu,\"uptime_ns\":%llu,\"transport\":", U(st->epoch),
                U(st->uptime_ns));
        json_str(f, st->transport);
        fprintf(f, ",\"workers\":%u,\"size\":%llu,\"ring_depth\":%u,\"max_streams\":%u}",
                st->workers, U(st->size), st->ring_depth, st->max_streams);

        fputs(",\"clients\":[", f);
        for (uint32_t i = 0; i < st->nclients; i++)
                fprintf(f, "%s{\"pid\":%ld,\"alive\":%d,\"streams\":%u}", i ? "," : "",
                        (long)st->clients[i].pid, st->clients[i].alive, st->clients[i].streams);
        fputs("]", f);

        fputs(",\"records\":[", f);
        for (uint32_t i = 0; i < st->nrecs; i++) {
                const eng_stat_rec_t *r = &st->recs[i];
                fprintf(f,
                        "%s{\"index\":%u,\"kind\":\"%s\",\"user_id\":%u,\"pid\":%ld,\"alive\":%d,"
                        "\"state\":",
                        i ? "," : "", r->index, rec_kind(r), r->user_id, (long)r->pid, r->alive);
                json_str(f, r->state);
                fputs(",\"sched\":", f);
                json_str(f, r->sched);
                fprintf(f,
                        ",\"c2s_fill\":%u,\"s2c_fill\":%u,\"c2s_msgs\":%llu,\"s2c_msgs\":%llu,"
                        "\"c2s_bytes\":%llu,\"s2c_bytes\":%llu,\"c2s_last_seq\":%llu,"
                        "\"s2c_last_seq\":%llu,\"age_ns\":%llu,\"rate\":",
                        r->c2s_fill, r->s2c_fill, U(r->c2s_msgs), U(r->s2c_msgs), U(r->c2s_bytes),
                        U(r->s2c_bytes), U(r->c2s_msgs), U(r->s2c_msgs), U(r->age_ns));
                json_rate(f, &rates[i]);
                putc('}', f);
        }
        fputs("]", f);

        fputs(",\"arena\":{\"kind\":", f);
        json_str(f, st->arena_kind);
        fprintf(f,
                ",\"size\":%llu,\"rec_base\":%llu,\"rec_top\":%llu,\"buf_bottom\":%llu,"
                "\"arena_top\":%llu,\"rec_used\":%llu,\"rec_free\":%llu,\"buf_used_bytes\":%llu,"
                "\"buf_free_bytes\":%llu,\"alloc_failed\":%llu,\"classes\":[",
                U(st->arena_size), U(st->rec_base), U(st->rec_top), U(st->buf_bottom),
                U(st->arena_top), U(st->rec_used), U(st->rec_free), U(st->buf_used_bytes),
                U(st->buf_free_bytes), U(st->alloc_failed));
        uint32_t ncls = st->nclasses <= 16 ? st->nclasses : 16;
        for (uint32_t i = 0; i < ncls; i++)
                fprintf(f, "%s{\"block_bytes\":%llu,\"used\":%llu,\"free\":%llu,\"failed\":%llu}",
                        i ? "," : "", U(st->cls[i].block_bytes), U(st->cls[i].used),
                        U(st->cls[i].free), U(st->cls[i].failed));
        fputs("]}", f);

        fprintf(f,
                ",\"counters\":{\"opens\":%llu,\"closes\":%llu,\"ended\":%llu,\"aborts\":%llu,"
                "\"reclaims\":%llu,\"heals\":%llu,\"refused\":%llu,\"walks\":%llu}",
                U(st->opens), U(st->closes), U(st->ended), U(st->aborts), U(st->reclaims),
                U(st->heals), U(st->refused), U(st->walks));

        fputs(",\"rates\":", f);
        if (tot->have) {
                fputs("{\"seconds\":", f);
                json_num(f, tot->seconds);
                fprintf(f, ",\"records\":%u,\"total\":", tot->records);
                json_rate(f, &tot->r);
                putc('}', f);
        } else {
                fputs("null", f);
        }

        fputs(",\"problems\":[", f);
        for (uint32_t i = 0; i < st->nproblems; i++) {
                if (i)
                        putc(',', f);
                json_str(f, st->problems[i]);
        }
        fputs("]}\n", f);
}

#undef U

/* ---- main ------------------------------------------------------------------------------- */

/* Local wall-clock time, ISO 8601 with milliseconds and UTC offset. */
static void wall_time(char *out, size_t n)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        char base[32], off[8];
        strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
        strftime(off, sizeof(off), "%z", &tm); /* +hhmm */
        snprintf(out, n, "%s.%03ld%.3s:%.2s", base, ts.tv_nsec / 1000000, off, off + 3);
}

/* Sleep until the CLOCK_MONOTONIC instant `until` (ns) or a stop signal. */
static void sleep_until(uint64_t until)
{
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                              .tv_nsec = (long)(until % 1000000000u)};
        /* Each call returns at the deadline or on a signal: the loop ends at the deadline. */
        while (!stop_sig && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
}

/* Say why an eng_stat_* call failed (name: escaped already); returns the exit status for it.
 * The library's message (eng_errmsg) names the segment and says why; it is escaped too (it
 * holds the name, and a read error's text). */
static int fail(const char *name, const char *what, int rc)
{
        char d[1100];
        const char *msg = eng_errmsg();
        bool have = *msg != '\0';
        eng_log_escape(msg, strlen(msg), d, sizeof(d));
        switch (rc) {
        case -ENOENT:
                if (have)
                        fprintf(stderr, "engine-stat: %s\n", d);
                else
                        fprintf(stderr,
                                "engine-stat: no segment %s (no server created it, or it "
                                "was removed)\n",
                                name);
                return EX_NOSEG;
        case -EACCES:
        case -EPERM:
                if (have)
                        fprintf(stderr, "engine-stat: %s\n", d);
                else
                        fprintf(stderr,
                                "engine-stat: segment %s belongs to another user or cannot be "
                                "read: %s\n",
                                name, eng_strerror(rc));
                return EX_ACCESS;
        case -EPROTO:
                fprintf(stderr, "engine-stat: %s: %s\n", name, have ? d : "not an engine segment");
                return EX_BADSEG;
        default:
                if (have)
                        fprintf(stderr, "engine-stat: %s\n", d);
                else
                        fprintf(stderr, "engine-stat: cannot %s %s: %s\n", what, name,
                                eng_strerror(rc));
                /* Reading failed: 6; out of memory, or the open failed otherwise: 1. */
                return strcmp(what, "read") == 0 && rc != -ENOMEM ? EX_BADSEG : EX_OTHER;
        }
}

int main(int argc, char **argv)
{
        const char *config = NULL, *name = NULL;
        double interval = 0;
        uint32_t count = 0;
        bool json = false;
        static const struct option lo[] = {
            {"config", required_argument, NULL, 'c'},   {"name", required_argument, NULL, 'N'},
            {"interval", required_argument, NULL, 'i'}, {"count", required_argument, NULL, 'n'},
            {"json", no_argument, NULL, 'j'},           {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},        {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "c:N:i:n:jhV", lo, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        config = optarg;
                        break;
                case 'N':
                        name = optarg;
                        if (!good_name(name)) {
                                char e[1100];
                                fprintf(stderr,
                                        "engine-stat: --name wants a shared-memory name such as "
                                        "/engine-default (a '/' and up to 254 bytes without "
                                        "'/'), not '%s'\n",
                                        esc(optarg, e, sizeof(e)));
                                return EX_USAGE;
                        }
                        break;
                case 'i':
                        if (parse_secs(optarg, &interval) != 0) {
                                fprintf(stderr,
                                        "engine-stat: --interval wants seconds in 0.01..86400, "
                                        "not '%s'\n",
                                        optarg);
                                return EX_USAGE;
                        }
                        break;
                case 'n':
                        if (eng_parse_u32(optarg, 1, UINT32_MAX, &count) != 0) {
                                fprintf(stderr,
                                        "engine-stat: --count wants a number of samples >= 1, "
                                        "not '%s'\n",
                                        optarg);
                                return EX_USAGE;
                        }
                        break;
                case 'j':
                        json = true;
                        break;
                case 'h':
                        usage(stdout);
                        return EX_SHOWN;
                case 'V':
                        printf("engine-stat (shmengine) %s\n", eng_version());
                        return EX_SHOWN;
                default:
                        usage(stderr);
                        return EX_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "engine-stat: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return EX_USAGE;
        }
        if (count > 0 && interval == 0) {
                fprintf(stderr, "engine-stat: --count needs --interval\n");
                return EX_USAGE;
        }

        /* The segment: --name, else the options file's (-c, or ./options.xml if there is
         * one, as engine-server and engine-client read by default), else the default name. */
        eng_opts_t o;
        bool have_opts = false;
        if (config == NULL && name == NULL && access("options.xml", F_OK) == 0)
                config = "options.xml";
        if (config != NULL) {
                char err[1024];
                if (eng_opts_load(config, &o, err, sizeof(err)) != 0) {
                        fprintf(stderr, "engine-stat: %s\n", err);
                        return EX_USAGE;
                }
                have_opts = true;
        }
        if (name == NULL)
                name = have_opts ? o.name : "/engine-default";
        uid_t trust = have_opts && o.owner_uid != (uid_t)-1 ? o.owner_uid : 0;
        int status = EX_SHOWN;
        char ename[1100]; /* the name as it may be printed */
        esc(name, ename, sizeof(ename));
        if (!good_name(name)) {
                fprintf(stderr, "engine-stat: '%s' is not a shared-memory name\n", ename);
                status = EX_USAGE;
                goto out_opts;
        }

        struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: sleeps end */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN); /* a closed pipe is a write error, seen below */

        eng_stat_view_t *v;
        int rc = eng_stat_open(name, trust, &v);
        if (rc != 0) {
                status = fail(ename, "open", rc);
                goto out_opts;
        }
        bool repeat = interval > 0;
        bool redraw = repeat && !json && isatty(STDOUT_FILENO);
        uint64_t period = (uint64_t)(interval * 1e9);
        eng_stat_t prev, cur;
        bool have_prev = false;
        /* One pass per sample: count bounds it, or (unbounded by request) a stop signal. */
        for (uint64_t k = 1;; k++) {
                memset(&cur, 0, sizeof(cur));
                rc = eng_stat_take(v, &cur);
                /* The next read starts a whole period after this one ended: the window a
                 * rate is measured over is never shorter than asked, however slow a read. */
                uint64_t t_read = eng_now_ns();
                if (rc != 0) {
                        status = fail(ename, "read", rc);
                        break;
                }
                char when[96];
                wall_time(when, sizeof(when));
                rate_t *rates = calloc(cur.nrecs ? cur.nrecs : 1, sizeof(*rates));
                totals_t tot;
                if (rates == NULL || compute_rates(have_prev ? &prev : NULL, &cur, rates, &tot)) {
                        fprintf(stderr, "engine-stat: out of memory\n");
                        free(rates);
                        eng_stat_free(&cur);
                        status = EX_OTHER;
                        break;
                }
                if (redraw)
                        fputs("\033[H\033[J", stdout);
                else if (k > 1 && !json)
                        putc('\n', stdout);
                if (json)
                        print_json(stdout, &cur, rates, &tot, k, when);
                else
                        print_text(stdout, &cur, rates, &tot, when);
                free(rates);
                if (fflush(stdout) != 0 || ferror(stdout)) {
                        int e = errno;
                        eng_stat_free(&cur);
                        if (e != EPIPE) { /* a reader that went away is not an error */
                                fprintf(stderr, "engine-stat: writing the output: %s\n",
                                        strerror(e));
                                status = EX_OTHER;
                        }
                        break;
                }
                if (cur.server_alive == 0) {
                        bool stopped = cur.server_state && strcmp(cur.server_state, "stopped") == 0;
                        fprintf(stderr, "engine-stat: the server of %s (pid %ld) is gone%s\n",
                                ename, (long)cur.server_pid,
                                stopped ? " (it stopped)"
                                        : ": it died and left its segment behind (the next "
                                          "server on this name replaces it)");
                        eng_stat_free(&cur);
                        status = EX_DEAD;
                        break;
                }
                if (have_prev)
                        eng_stat_free(&prev);
                prev = cur;
                have_prev = true;
                if (!repeat || (count > 0 && k >= count) || stop_sig)
                        break;
                sleep_until(t_read + period);
                if (stop_sig)
                        break;
        }
        if (have_prev)
                eng_stat_free(&prev);
        eng_stat_close(v);
out_opts:
        if (have_opts)
                eng_opts_free(&o);
        return status;
}
