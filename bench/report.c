/*
 * report.c - what engine-bench prints and writes: the tables with their ratios and the
 * targets (stdout), the JSON file (schema in docs/BENCH.md) and the HTML latency report with
 * gnuplot plots.
 *
 * Every ratio is computed here from cells of the same run; nothing is hard-coded but the
 * targets' thresholds.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

static const char *rtt_impls[] = {"lockfree", "mutex", "pipe", "unix", "tcp", "boost"};
static const char *os_peers[] = {"pipe", "unix", "tcp"};

const eb_result_t *eb_find(const eb_run_t *run, const char *name)
{
        for (int i = 0; i < run->n; i++)
                if (strcmp(run->r[i].name, name) == 0)
                        return &run->r[i];
        return NULL;
}

static const eb_result_t *findf(const eb_run_t *run, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const eb_result_t *findf(const eb_run_t *run, const char *fmt, ...)
{
        char name[128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        return eb_find(run, name);
}

static double mval(const eb_run_t *run, const char *metric, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static double mval(const eb_run_t *run, const char *metric, const char *fmt, ...)
{
        char name[128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        return eb_metric(eb_find(run, name), metric);
}

static double ratio(double a, double b)
{
        return (isnan(a) || isnan(b) || b == 0) ? NAN : a / b;
}

static const char *fx(double r, char *buf, size_t n)
{
        if (isnan(r))
                snprintf(buf, n, "n/a");
        else if (r >= 100)
                snprintf(buf, n, "%.0fx", r);
        else if (r >= 10)
                snprintf(buf, n, "%.1fx", r);
        else
                snprintf(buf, n, "%.2fx", r);
        return buf;
}

static const char *fus(double ns, char *buf, size_t n)
{
        double us = ns / 1e3;
        if (isnan(ns))
                snprintf(buf, n, "-");
        else if (us < 10)
                snprintf(buf, n, "%.2f", us);
        else if (us < 1000)
                snprintf(buf, n, "%.1f", us);
        else
                snprintf(buf, n, "%.0f", us);
        return buf;
}

static const char *frate(double v, char *buf, size_t n)
{
        if (isnan(v))
                snprintf(buf, n, "-");
        else if (v >= 1e9)
                snprintf(buf, n, "%.2f G", v / 1e9);
        else if (v >= 1e6)
                snprintf(buf, n, "%.2f M", v / 1e6);
        else if (v >= 1e3)
                snprintf(buf, n, "%.1f k", v / 1e3);
        else
                snprintf(buf, n, "%.0f", v);
        return buf;
}

static const char *fnum(double v, const char *f, char *buf, size_t n)
{
        if (isnan(v))
                snprintf(buf, n, "-");
        else
                snprintf(buf, n, f, v);
        return buf;
}

/* "n/a (why)" / "FAILED: why" for a cell that did not produce figures, else NULL. */
static const char *not_ok(const eb_result_t *r, char *buf, size_t n)
{
        if (r == NULL)
                return NULL;
        if (r->status == EB_NA)
                snprintf(buf, n, "n/a (%.200s)", r->reason);
        else if (r->status == EB_FAIL)
                snprintf(buf, n, "FAILED: %.*s", 200, r->reason);
        else
                return NULL;
        return buf;
}

/* ---- the comparisons ---------------------------------------------------------------- */

/* Best OS peer round trip at this mode/payload: smallest p50 (or the given metric). */
static const eb_result_t *best_os_rtt(const eb_run_t *run, const char *mode, const char *sz)
{
        const eb_result_t *best = NULL;
        for (int i = 0; i < 3; i++) {
                const eb_result_t *r = findf(run, "rtt/%s/%s/%s", os_peers[i], mode, sz);
                double v = eb_metric(r, "p50_ns");
                if (!isnan(v) && (best == NULL || v < eb_metric(best, "p50_ns")))
                        best = r;
        }
        return best;
}

static const eb_result_t *best_os_tput(const eb_run_t *run, const char *sz)
{
        const eb_result_t *best = NULL;
        for (int i = 0; i < 3; i++) {
                const eb_result_t *r = findf(run, "tput/%s/1s/%s", os_peers[i], sz);
                double v = eb_metric(r, "msgs_per_s");
                if (!isnan(v) && (best == NULL || v > eb_metric(best, "msgs_per_s")))
                        best = r;
        }
        return best;
}

/* The spin floor: mean p50 of the measurements just before and just after the lock-free
 * 0-byte round trip (whichever exist); *drift = larger / smaller (1 if only one). */
static double floor_p50(const eb_run_t *run, double *drift)
{
        double a = mval(run, "p50_ns", "floor/spinword");
        double b = mval(run, "p50_ns", "floor/spinword-after");
        *drift = 1;
        if (isnan(a))
                return b;
        if (isnan(b))
                return a;
        *drift = a > b ? a / b : b / a;
        return (a + b) / 2;
}

typedef struct target {
        const char *id;
        char what[160];
        char detail[256];
        double value; /* the measured ratio (or value / threshold) */
        double need;
        bool at_most; /* value <= need passes (else >=) */
        const char *verdict;
} target_t;

static int targets(const eb_run_t *run, target_t *t)
{
        int n = 0;
        double a, b;
        char x[32], y[32];

        double drift;
        a = mval(run, "p50_ns", "rtt/lockfree/spin/0B");
        b = floor_p50(run, &drift);
        t[n] = (target_t){.id = "rtt_p50_vs_floor", .need = 1.5, .at_most = true};
        snprintf(t[n].what, sizeof(t[n].what), "round trip p50 (spinning, 0 B) / spin floor p50");
        {
                char z[32], w[32];
                double ck = mval(run, "p50_ns", "floor/ckring");
                snprintf(t[n].detail, sizeof(t[n].detail),
                         "%s us / %s us (floor before and after%s); a bare ck_ring ping-pong: %s "
                         "us, engine/that %s",
                         fus(a, x, sizeof(x)), fus(b, y, sizeof(y)),
                         drift > 1.3 ? "; they differ: the machine changed speed, rerun" : "",
                         fus(ck, z, sizeof(z)), fx(ratio(a, ck), w, sizeof(w)));
        }
        t[n++].value = ratio(a, b);

        a = mval(run, "msgs_per_s", "tput/lockfree/1s/64B");
        t[n] = (target_t){.id = "tput_64B_1s", .need = 1.0, .at_most = false};
        snprintf(t[n].what, sizeof(t[n].what),
                 "64-B loaned messages, one stream, >= 10 M/s (measured / 10 M)");
        snprintf(t[n].detail, sizeof(t[n].detail), "%s msg/s", frate(a, x, sizeof(x)));
        t[n++].value = ratio(a, 10e6);

        a = mval(run, "msgs_per_s", "tput/lockfree/1s/64B");
        b = mval(run, "msgs_per_s", "tput/mutex/1s/64B");
        t[n] = (target_t){.id = "tput_64B_lf_vs_mutex", .need = 5.0, .at_most = false};
        snprintf(t[n].what, sizeof(t[n].what), "64-B throughput, one stream: lock-free / mutex");
        snprintf(t[n].detail, sizeof(t[n].detail), "%s / %s msg/s", frate(a, x, sizeof(x)),
                 frate(b, y, sizeof(y)));
        t[n++].value = ratio(a, b);

        a = mval(run, "p99_ns", "rtt/lockfree/spin/64B");
        b = mval(run, "p99_ns", "rtt/mutex/spin/64B");
        t[n] = (target_t){.id = "rtt_p99_lf_vs_mutex", .need = 0.2, .at_most = true};
        snprintf(t[n].what, sizeof(t[n].what),
                 "round trip p99 (spinning, 64 B): lock-free / mutex");
        snprintf(t[n].detail, sizeof(t[n].detail), "%s us / %s us", fus(a, x, sizeof(x)),
                 fus(b, y, sizeof(y)));
        t[n++].value = ratio(a, b);

        a = mval(run, "gb_per_s", "tput/lockfree/1s/1MiB");
        b = mval(run, "gb_per_s", "tput/unix/1s/1MiB");
        t[n] = (target_t){.id = "tput_1MiB_vs_unix", .need = 3.0, .at_most = false};
        snprintf(t[n].what, sizeof(t[n].what),
                 "1-MiB loaned messages, one stream / UNIX socket bulk (1 MiB writes)");
        snprintf(t[n].detail, sizeof(t[n].detail), "%s / %s GB/s", fnum(a, "%.2f", x, sizeof(x)),
                 fnum(b, "%.2f", y, sizeof(y)));
        t[n++].value = ratio(a, b);

        a = mval(run, "gb_per_s", "xfer/lockfree/1s");
        b = mval(run, "gb_per_s", "xfer/rwcopy/1s");
        t[n] = (target_t){.id = "xfer_vs_rwcopy", .need = 1.0, .at_most = false};
        snprintf(t[n].what, sizeof(t[n].what),
                 "file transfer, one stream / read-write copy (1 MiB buffer)");
        snprintf(t[n].detail, sizeof(t[n].detail), "%s / %s GB/s", fnum(a, "%.2f", x, sizeof(x)),
                 fnum(b, "%.2f", y, sizeof(y)));
        t[n++].value = ratio(a, b);

        for (int i = 0; i < n; i++)
                t[i].verdict = isnan(t[i].value) ? "n/a"
                               : (t[i].at_most ? t[i].value <= t[i].need : t[i].value >= t[i].need)
                                   ? "PASS"
                                   : "MISS";
        return n;
}

/* ---- text tables -------------------------------------------------------------------- */

static bool any_group(const eb_run_t *run, const char *g)
{
        for (int i = 0; i < run->n; i++)
                if (strcmp(run->r[i].group, g) == 0)
                        return true;
        return false;
}

static void rtt_row(FILE *f, const char *mode, const char *sz, const eb_result_t *r,
                    const char *label)
{
        char b[6][16], why[300];
        const char *bad = not_ok(r, why, sizeof(why));
        fprintf(f, "  %-5s %-6s %-9s", mode, sz, label ? label : r->impl);
        if (bad) {
                fprintf(f, " %s\n", bad);
                return;
        }
        fprintf(f, " %8s %8s %8s %8s %8s %8s %9.0f\n", fus(eb_metric(r, "p50_ns"), b[0], 16),
                fus(eb_metric(r, "p90_ns"), b[1], 16), fus(eb_metric(r, "p99_ns"), b[2], 16),
                fus(eb_metric(r, "p99.9_ns"), b[3], 16), fus(eb_metric(r, "p99.99_ns"), b[4], 16),
                fus(eb_metric(r, "max_ns"), b[5], 16), eb_metric(r, "n"));
}

static void print_rtt(const eb_run_t *run, FILE *f)
{
        if (!any_group(run, "rtt") && !any_group(run, "floor"))
                return;
        fprintf(f, "\nROUND TRIP, microseconds (client -> server -> client on one stream; "
                   "lower is better)\n");
        fprintf(f, "  %-5s %-6s %-9s %8s %8s %8s %8s %8s %8s %9s\n", "mode", "size", "impl", "p50",
                "p90", "p99", "p99.9", "p99.99", "max", "n");
        const eb_result_t *fl = eb_find(run, "floor/spinword");
        const eb_result_t *fl2 = eb_find(run, "floor/spinword-after");
        const eb_result_t *ck = eb_find(run, "floor/ckring");
        static const char *modes[2] = {"spin", "block"};
        bool floors_shown = false;
        for (int m = 0; m < 2; m++)
                for (int p = 0; p < 4; p++) {
                        char sz[16];
                        eb_size_name(eb_rtt_payloads[p], sz, sizeof(sz));
                        for (size_t i = 0; i < sizeof(rtt_impls) / sizeof(rtt_impls[0]); i++) {
                                const eb_result_t *r =
                                    findf(run, "rtt/%s/%s/%s", rtt_impls[i], modes[m], sz);
                                if (r == NULL)
                                        continue;
                                /* the floor as measured: just before and just after this cell */
                                bool here = m == 0 && p == 0 && i == 0;
                                if (here && fl)
                                        rtt_row(f, "spin", "0B", fl, "floor");
                                rtt_row(f, modes[m], sz, r, NULL);
                                if (here && fl2)
                                        rtt_row(f, "spin", "0B", fl2, "floor2");
                                if (here && ck)
                                        rtt_row(f, "spin", "0B", ck, "ckring");
                                floors_shown |= here;
                        }
                }
        if (!floors_shown) {
                if (fl)
                        rtt_row(f, "spin", "0B", fl, "floor");
                if (fl2)
                        rtt_row(f, "spin", "0B", fl2, "floor2");
                if (ck)
                        rtt_row(f, "spin", "0B", ck, "ckring");
        }
        fprintf(f, "\n  ratios of round-trip times (lower is better; < 1 means the engine is "
                   "faster)\n");
        fprintf(f, "  %-5s %-6s %14s %14s %26s %14s\n", "mode", "size", "lf/mutex p50",
                "lf/mutex p99", "lf/best OS peer p50", "lf/floor p50");
        double drift, floor50 = floor_p50(run, &drift);
        for (int m = 0; m < 2; m++)
                for (int p = 0; p < 4; p++) {
                        char sz[16], a[24], b[24], c[24], d[24], e[48];
                        eb_size_name(eb_rtt_payloads[p], sz, sizeof(sz));
                        const eb_result_t *lf = findf(run, "rtt/lockfree/%s/%s", modes[m], sz);
                        const eb_result_t *mx = findf(run, "rtt/mutex/%s/%s", modes[m], sz);
                        const eb_result_t *os = best_os_rtt(run, modes[m], sz);
                        if (lf == NULL && mx == NULL)
                                continue;
                        snprintf(e, sizeof(e), "%s%s%s%s",
                                 fx(ratio(eb_metric(lf, "p50_ns"), eb_metric(os, "p50_ns")), c,
                                    sizeof(c)),
                                 os ? " (" : "", os ? os->impl : "", os ? ")" : "");
                        fprintf(f, "  %-5s %-6s %14s %14s %26s %14s\n", modes[m], sz,
                                fx(ratio(eb_metric(lf, "p50_ns"), eb_metric(mx, "p50_ns")), a,
                                   sizeof(a)),
                                fx(ratio(eb_metric(lf, "p99_ns"), eb_metric(mx, "p99_ns")), b,
                                   sizeof(b)),
                                e,
                                m == 0 ? fx(ratio(eb_metric(lf, "p50_ns"), floor50), d, sizeof(d))
                                       : "-");
                }
        double dr, fp = floor_p50(run, &dr);
        if (!isnan(fp)) {
                char fb[16];
                fprintf(f,
                        "  (floor = mean of floor and floor2 p50 = %s us, measured just before "
                        "and after rtt/lockfree/spin/0B%s)\n",
                        fus(fp, fb, sizeof(fb)),
                        dr > 1.3 ? "; they differ by more than 30%: the machine changed speed "
                                   "in between, so lf/floor is unreliable"
                                 : "");
        }
}

static void print_tput(const eb_run_t *run, FILE *f)
{
        if (!any_group(run, "tput"))
                return;
        fprintf(f, "\nONE-WAY THROUGHPUT (client loans, fills and sends; the server reads every "
                   "byte and frees;\n  rate from the client's start to the server's last "
                   "receipt; higher is better)\n");
        fprintf(f, "  %-3s %-6s %11s %8s %11s %8s %9s %22s %9s\n", "str", "size", "lf msg/s",
                "lf GB/s", "mx msg/s", "mx GB/s", "lf/mutex", "best OS peer msg/s", "lf/OS");
        for (int s = 0; s < 4; s++)
                for (int p = 0; p < 6; p++) {
                        char sz[16], a[6][24], why[300];
                        uint32_t ns = eb_tput_streams[s];
                        eb_size_name(eb_tput_payloads[p], sz, sizeof(sz));
                        const eb_result_t *lf = findf(run, "tput/lockfree/%us/%s", ns, sz);
                        const eb_result_t *mx = findf(run, "tput/mutex/%us/%s", ns, sz);
                        if (lf == NULL && mx == NULL)
                                continue;
                        const eb_result_t *os = ns == 1 ? best_os_tput(run, sz) : NULL;
                        fprintf(f, "  %-3u %-6s", ns, sz);
                        const char *bad = not_ok(lf, why, sizeof(why));
                        if (bad) {
                                fprintf(f, " lockfree: %s\n", bad);
                                continue;
                        }
                        char osb[40];
                        snprintf(osb, sizeof(osb), "%s%s%s%s",
                                 os ? frate(eb_metric(os, "msgs_per_s"), a[4], 24) : "-",
                                 os ? " (" : "", os ? os->impl : "", os ? ")" : "");
                        fprintf(f, " %11s %8s %11s %8s %9s %22s %9s\n",
                                frate(eb_metric(lf, "msgs_per_s"), a[0], 24),
                                fnum(eb_metric(lf, "gb_per_s"), "%.3f", a[1], 24),
                                mx && mx->status == EB_NA
                                    ? "n/a"
                                    : frate(eb_metric(mx, "msgs_per_s"), a[2], 24),
                                fnum(eb_metric(mx, "gb_per_s"), "%.3f", a[3], 24),
                                fx(ratio(eb_metric(lf, "msgs_per_s"), eb_metric(mx, "msgs_per_s")),
                                   a[5], 24),
                                osb,
                                fx(ratio(eb_metric(lf, "msgs_per_s"), eb_metric(os, "msgs_per_s")),
                                   why, sizeof(why)));
                }
        const eb_result_t *mx1 = eb_find(run, "tput/mutex/1s/64B");
        if (mx1 && mx1->status == EB_NA)
                fprintf(f, "  (mutex: n/a, %s)\n", mx1->reason);
        bool refs = false;
        for (int i = 0; i < run->n; i++)
                if (strcmp(run->r[i].group, "tput") == 0 && strcmp(run->r[i].impl, "lockfree") &&
                    strcmp(run->r[i].impl, "mutex"))
                        refs = true;
        if (!refs)
                return;
        fprintf(f, "\n  reference peers, one connection (one write() per message; the reader "
                   "reads up to 1 MiB per call)\n");
        fprintf(f, "  %-6s %-6s %11s %8s\n", "peer", "size", "msg/s", "GB/s");
        static const char *peers[4] = {"pipe", "unix", "tcp", "boost"};
        for (int p = 1; p < 6; p++)
                for (int i = 0; i < 4; i++) {
                        char sz[16], a[24], b[24], why[300];
                        eb_size_name(eb_tput_payloads[p], sz, sizeof(sz));
                        const eb_result_t *r = findf(run, "tput/%s/1s/%s", peers[i], sz);
                        if (r == NULL)
                                continue;
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad)
                                fprintf(f, "  %-6s %-6s %s\n", peers[i], sz, bad);
                        else
                                fprintf(f, "  %-6s %-6s %11s %8s\n", peers[i], sz,
                                        frate(eb_metric(r, "msgs_per_s"), a, sizeof(a)),
                                        fnum(eb_metric(r, "gb_per_s"), "%.3f", b, sizeof(b)));
                }
}

static void print_xfer(const eb_run_t *run, FILE *f)
{
        if (!any_group(run, "xfer"))
                return;
        char sz[16];
        eb_size_name(run->o->file_bytes, sz, sizeof(sz));
        fprintf(f,
                "\nFILE TRANSFER, %s tmpfs -> tmpfs in %s (source read once before; 8 streams = "
                "8 files of 1/8)\n",
                sz, run->o->dir);
        fprintf(f, "  %-9s %-7s %8s %9s %14s\n", "impl", "streams", "GB/s", "seconds", "/ rwcopy");
        static const char *impl[4] = {"lockfree", "mutex", "rwcopy", "cfr"};
        for (int s = 0; s < 2; s++)
                for (int i = 0; i < 4; i++) {
                        unsigned ns = s ? 8 : 1;
                        const eb_result_t *r = findf(run, "xfer/%s/%us", impl[i], ns);
                        if (r == NULL)
                                continue;
                        char a[24], b[24], c[24], why[300];
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad) {
                                fprintf(f, "  %-9s %-7u %s\n", impl[i], ns, bad);
                                continue;
                        }
                        fprintf(f, "  %-9s %-7u %8s %9s %14s\n", impl[i], ns,
                                fnum(eb_metric(r, "gb_per_s"), "%.3f", a, sizeof(a)),
                                fnum(eb_metric(r, "secs"), "%.3f", b, sizeof(b)),
                                fx(ratio(eb_metric(r, "gb_per_s"),
                                         mval(run, "gb_per_s", "xfer/rwcopy/%us", ns)),
                                   c, sizeof(c)));
                }
        fprintf(f, "  (rwcopy: read()/write() with a 1 MiB buffer, one process; cfr: "
                   "copy_file_range, a copy inside\n   the kernel as coreutils cat does; "
                   "engine: client preads into loaned buffers, server pwrites,\n   both hash "
                   "with XXH3; every copy ends with fsync)\n");
}

static void print_misc(const eb_run_t *run, FILE *f)
{
        char a[24], b[24], c[24], d[24], why[300];
        if (any_group(run, "openclose")) {
                fprintf(f,
                        "\nSTREAM OPEN + CLOSE (one client, sequential; engine default spin, then "
                        "sleep)\n");
                fprintf(f, "  %-9s %10s %9s %9s %9s\n", "impl", "pairs/s", "p50 us", "p99 us",
                        "lf/mutex");
                for (int t = 0; t < 2; t++) {
                        const eb_result_t *r = findf(run, "openclose/%s", t ? "mutex" : "lockfree");
                        if (r == NULL)
                                continue;
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad) {
                                fprintf(f, "  %-9s %s\n", r->impl, bad);
                                continue;
                        }
                        fprintf(f, "  %-9s %10s %9s %9s %9s\n", r->impl,
                                frate(eb_metric(r, "ops_per_s"), a, sizeof(a)),
                                fus(eb_metric(r, "p50_ns"), b, sizeof(b)),
                                fus(eb_metric(r, "p99_ns"), c, sizeof(c)),
                                t ? ""
                                  : fx(ratio(eb_metric(r, "ops_per_s"),
                                             mval(run, "ops_per_s", "openclose/mutex")),
                                       d, sizeof(d)));
                }
        }
        if (any_group(run, "arena")) {
                fprintf(f, "\nARENA ALONE (eng_arena_format on malloc'd memory; batches of 16 "
                           "allocs of 64 B..64 KiB, then 16 frees)\n");
                fprintf(f, "  %-9s %-7s %16s %9s\n", "kind", "threads", "alloc+free /s",
                        "lf/mutex");
                for (int th = 1; th <= 2; th++)
                        for (int k = 0; k < 2; k++) {
                                const char *kind = k ? "mutex" : "lockfree";
                                const eb_result_t *r = findf(run, "arena/%s/%dt", kind, th);
                                if (r == NULL)
                                        continue;
                                const char *bad = not_ok(r, why, sizeof(why));
                                if (bad) {
                                        fprintf(f, "  %-9s %-7d %s\n", kind, th, bad);
                                        continue;
                                }
                                fprintf(
                                    f, "  %-9s %-7d %16s %9s\n", kind, th,
                                    frate(eb_metric(r, "pairs_per_s"), a, sizeof(a)),
                                    k ? ""
                                      : fx(ratio(eb_metric(r, "pairs_per_s"),
                                                 mval(run, "pairs_per_s", "arena/mutex/%dt", th)),
                                           b, sizeof(b)));
                        }
        }
        const eb_result_t *mc = eb_find(run, "memcpy");
        if (mc) {
                fprintf(f, "\nMEMCPY (one thread)\n");
                const char *bad = not_ok(mc, why, sizeof(why));
                if (bad)
                        fprintf(f, "  %s\n", bad);
                else
                        for (int i = 0; i < mc->nm; i++)
                                fprintf(f, "  %-10s %7.1f GB/s\n", mc->m[i].key + 9, mc->m[i].v);
        }
}

static void print_targets(const eb_run_t *run, FILE *f)
{
        target_t t[8];
        int n = targets(run, t);
        fprintf(f, "\nTARGETS (measured in this run; ratios of cells of this run)\n");
        fprintf(f, "  %-72s %9s %8s  %s\n", "target", "measured", "need", "verdict");
        for (int i = 0; i < n; i++) {
                char a[24], b[24];
                snprintf(b, sizeof(b), "%s %.2f", t[i].at_most ? "<=" : ">=", t[i].need);
                fprintf(f, "  %-72s %9s %8s  %s\n", t[i].what, fx(t[i].value, a, sizeof(a)), b,
                        t[i].verdict);
                fprintf(f, "  %-72s\n", t[i].detail);
        }
}

void eb_print_tables(const eb_run_t *run, FILE *f)
{
        const eb_opts_t *o = run->o;
        char sz[16];
        eb_size_name(o->file_bytes, sz, sizeof(sz));
        fprintf(f, "engine-bench: %s, %d cores, %s, %s (%.0f s)\n", run->cpu, run->cores,
                run->kernel, run->started, run->secs);
        if (o->quick)
                fprintf(f,
                        "QUICK MODE: at most %llu spinning / %llu blocking round trips and %llu "
                        "ms per cell, %llu ms per throughput\n  cell, a %s file: indicative "
                        "figures; run without --quick for the real ones.\n",
                        (unsigned long long)o->rtt_spin_n, (unsigned long long)o->rtt_block_n,
                        (unsigned long long)o->rtt_ms, (unsigned long long)o->tput_ms, sz);
        fprintf(f,
                "server: %u worker(s), %llu MiB segment, blocks 2^%u..2^%u, ring depth 128; "
                "spinning: spin=2^30 on\n  both sides (nobody sleeps); blocking: spin=1 (both "
                "sleep on futexes). Receivers read every byte.\n  OS peers carry 1 byte for a "
                "0-byte round trip. Nothing is pinned.\n",
                o->workers, (unsigned long long)(o->seg_bytes >> 20), o->min_shift, o->max_shift);
        fprintf(f,
                "load: other processes used %.0f%% of the CPUs during the run, the hypervisor "
                "stole %.0f%%%s\n",
                run->foreign * 100, run->steal * 100,
                run->foreign > 0.05 ? " -- the machine was NOT idle: figures are noisy, compare "
                                      "ratios, rerun"
                                    : "");
        print_rtt(run, f);
        print_tput(run, f);
        print_xfer(run, f);
        print_misc(run, f);
        print_targets(run, f);
        int busy = 0;
        for (int i = 0; i < run->n; i++)
                if (run->r[i].foreign > 0.10)
                        busy++;
        if (busy) {
                fprintf(f,
                        "\nCELLS MEASURED WHILE OTHER PROCESSES USED > 10%% OF THE CPUs (%d; "
                        "treat with suspicion)\n ",
                        busy);
                int col = 1;
                for (int i = 0; i < run->n; i++)
                        if (run->r[i].foreign > 0.10) {
                                char item[140];
                                int w = snprintf(item, sizeof(item), " %s (%.0f%%)", run->r[i].name,
                                                 run->r[i].foreign * 100);
                                if (col + w > 100) {
                                        fprintf(f, "\n ");
                                        col = 1;
                                }
                                fputs(item, f);
                                col += w;
                        }
                fprintf(f, "\n");
        }
        int bad = 0;
        for (int i = 0; i < run->n; i++)
                if (run->r[i].status == EB_FAIL)
                        bad++;
        if (bad) {
                fprintf(f, "\nFAILED CELLS (%d)\n", bad);
                for (int i = 0; i < run->n; i++)
                        if (run->r[i].status == EB_FAIL)
                                fprintf(f, "  %s: %s\n", run->r[i].name, run->r[i].reason);
        }
}

/* ---- JSON --------------------------------------------------------------------------- */

static void jstr(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20)
                        fprintf(f, "\\u%04x", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
}

static void jnum(FILE *f, double v)
{
        if (isnan(v) || isinf(v))
                fprintf(f, "null");
        else if (v == floor(v) && fabs(v) < 9e15)
                fprintf(f, "%.0f", v);
        else
                fprintf(f, "%.6g", v);
}

static void jhist(FILE *f, const eb_hist_t *h, const char *unit)
{
        fprintf(f, "{\"unit\": ");
        jstr(f, unit);
        fprintf(f,
                ", \"sub_bucket_bits\": %d, \"count\": %llu, \"min\": %llu, \"max\": %llu, "
                "\"mean\": ",
                EB_HIST_SUB_BITS, (unsigned long long)h->count,
                (unsigned long long)(h->count ? h->min : 0), (unsigned long long)h->max);
        jnum(f, eb_hist_mean(h));
        fprintf(f, ", \"percentiles\": {");
        static const double ps[] = {0, 50, 90, 99, 99.9, 99.99, 99.999, 100};
        for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
                fprintf(f, "%s\"%g\": %llu", i ? ", " : "", ps[i],
                        (unsigned long long)(ps[i] == 0 ? (h->count ? h->min : 0)
                                                        : eb_hist_pct(h, ps[i])));
        fprintf(f, "}, \"buckets\": [");
        bool first = true;
        for (uint32_t i = 0; i < EB_HIST_BUCKETS; i++)
                if (h->b[i]) {
                        fprintf(f, "%s[%llu, %llu, %llu]", first ? "" : ", ",
                                (unsigned long long)eb_hist_bucket_lo(i),
                                (unsigned long long)eb_hist_bucket_hi(i),
                                (unsigned long long)h->b[i]);
                        first = false;
                }
        fprintf(f, "]}");
}

int eb_write_json(const eb_run_t *run, const char *path)
{
        FILE *f = fopen(path, "w");
        if (f == NULL)
                return -1;
        const eb_opts_t *o = run->o;
        fprintf(f, "{\n  \"schema\": \"engine-bench/1\",\n  \"started\": ");
        jstr(f, run->started);
        fprintf(f, ",\n  \"seconds\": ");
        jnum(f, run->secs);
        fprintf(f, ",\n  \"machine\": {\"cpu\": ");
        jstr(f, run->cpu);
        fprintf(f, ", \"cores\": %d, \"kernel\": ", run->cores);
        jstr(f, run->kernel);
        fprintf(f, ", \"host\": ");
        jstr(f, run->host);
        fprintf(f, ", \"foreign_cpu\": ");
        jnum(f, run->foreign);
        fprintf(f, ", \"steal\": ");
        jnum(f, run->steal);
        fprintf(f, "},\n  \"params\": {\"quick\": %s, \"filters\": [", o->quick ? "true" : "false");
        for (int i = 0; i < o->nfilters; i++) {
                fprintf(f, "%s", i ? ", " : "");
                jstr(f, o->filters[i]);
        }
        fprintf(f, "], \"dir\": ");
        jstr(f, o->dir);
        fprintf(f,
                ", \"segment_bytes\": %llu, \"workers\": %u, \"min_block_shift\": %u, "
                "\"max_block_shift\": %u, \"ring_depth\": 128, \"spin_budget\": %u, "
                "\"block_spin\": 1, \"file_bytes\": %llu, \"xfer_chunk\": %u, "
                "\"rtt_spin_max\": %llu, \"rtt_block_max\": %llu, \"rtt_ms\": %llu, "
                "\"tput_ms\": %llu, \"tput_warmup_ms\": %llu, \"misc_ms\": %llu, "
                "\"retries\": %d, \"consume\": \"receiver reads every byte\", \"boost\": %s},\n",
                (unsigned long long)o->seg_bytes, o->workers, o->min_shift, o->max_shift,
                o->spin_budget, (unsigned long long)o->file_bytes, o->xfer_chunk,
                (unsigned long long)o->rtt_spin_n, (unsigned long long)o->rtt_block_n,
                (unsigned long long)o->rtt_ms, (unsigned long long)o->tput_ms,
                (unsigned long long)o->tput_ms / 5, (unsigned long long)o->misc_ms, o->retries,
#ifdef ENG_BENCH_BOOST
                "true"
#else
                "false"
#endif
        );
        fprintf(f, "  \"results\": [\n");
        for (int i = 0; i < run->n; i++) {
                const eb_result_t *r = &run->r[i];
                fprintf(f, "    {\"name\": ");
                jstr(f, r->name);
                fprintf(f, ", \"group\": ");
                jstr(f, r->group);
                fprintf(f, ", \"impl\": ");
                jstr(f, r->impl);
                fprintf(f, ", \"mode\": ");
                jstr(f, r->mode);
                fprintf(f, ", \"payload\": %llu, \"streams\": %u, \"status\": ",
                        (unsigned long long)r->payload, r->streams);
                jstr(f, r->status == EB_OK ? "ok" : r->status == EB_NA ? "n/a" : "failed");
                fprintf(f, ", \"reason\": ");
                jstr(f, r->reason);
                fprintf(f, ", \"cell_seconds\": ");
                jnum(f, r->secs);
                fprintf(f, ", \"foreign_cpu\": ");
                jnum(f, r->foreign);
                fprintf(f, ", \"attempts\": %d", r->attempts);
                fprintf(f, ",\n     \"metrics\": {");
                for (int k = 0; k < r->nm; k++) {
                        fprintf(f, "%s", k ? ", " : "");
                        jstr(f, r->m[k].key);
                        fprintf(f, ": ");
                        jnum(f, r->m[k].v);
                }
                fprintf(f, "}");
                if (r->hist) {
                        fprintf(f, ",\n     \"hist\": ");
                        jhist(f, r->hist, r->hist_unit);
                }
                fprintf(f, "}%s\n", i + 1 < run->n ? "," : "");
        }
        fprintf(f, "  ],\n  \"targets\": [\n");
        target_t t[8];
        int n = targets(run, t);
        for (int i = 0; i < n; i++) {
                fprintf(f, "    {\"id\": ");
                jstr(f, t[i].id);
                fprintf(f, ", \"what\": ");
                jstr(f, t[i].what);
                fprintf(f, ", \"detail\": ");
                jstr(f, t[i].detail);
                fprintf(f, ", \"value\": ");
                jnum(f, t[i].value);
                fprintf(f, ", \"need\": ");
                jnum(f, t[i].need);
                fprintf(f, ", \"op\": \"%s\", \"verdict\": \"%s\"}%s\n",
                        t[i].at_most ? "<=" : ">=", t[i].verdict, i + 1 < n ? "," : "");
        }
        fprintf(f, "  ]\n}\n");
        int rc = ferror(f) ? -1 : 0;
        if (fclose(f) != 0)
                rc = -1;
        return rc;
}

/* ---- HTML + gnuplot ------------------------------------------------------------------ */

static void html_esc(FILE *f, const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (ch == '<')
                        fputs("&lt;", f);
                else if (ch == '>')
                        fputs("&gt;", f);
                else if (ch == '&')
                        fputs("&amp;", f);
                else
                        fputc(ch, f);
        }
}

static void fname_of(const char *name, char *out, size_t n)
{
        size_t k = 0;
        for (const char *p = name; *p && k + 1 < n; p++)
                out[k++] = (*p == '/' || *p == '.') ? '_' : *p;
        out[k] = '\0';
}

/* Percentile curve of a histogram: p, 1/(1-p), microseconds. Returns 0 if written. */
static int write_lat_dat(const char *dir, const eb_result_t *r, char *file, size_t n)
{
        if (r == NULL || r->status != EB_OK || r->hist == NULL || r->hist->count == 0)
                return -1;
        char base[128], path[700];
        fname_of(r->name, base, sizeof(base));
        snprintf(file, n, "lat-%s.dat", base);
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        FILE *f = fopen(path, "w");
        if (f == NULL)
                return -1;
        const eb_hist_t *h = r->hist;
        fprintf(f, "# %s: percentile, 1/(1-p), latency us\n", r->name);
        double cnt = (double)h->count;
        for (int k = 0;; k++) {
                double q = pow(10.0, -(double)k / 20.0); /* 1-p: 20 points per decade */
                if (1.0 / q > cnt)
                        break;
                double p = 1.0 - q;
                fprintf(f, "%.8f %.6g %.6g\n", p * 100, 1.0 / q,
                        (double)eb_hist_pct(h, p * 100) / 1e3);
        }
        fprintf(f, "%.8f %.6g %.6g\n", 100.0, cnt, (double)h->max / 1e3);
        fclose(f);
        return 0;
}

static const char *gp_color(int i)
{
        static const char *c[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#17becf"};
        return c[i % 9];
}

typedef struct plot_list {
        char png[16][96];
        char caption[16][200];
        int n;
} plot_list_t;

static void lat_axes(FILE *g)
{
        fprintf(g, "set logscale x\nset logscale y\nset grid\nset key top left\n"
                   "set xlabel 'percentile'\nset ylabel 'round trip (us)'\n"
                   "set xtics (\"0%%%%\" 1, \"90%%%%\" 10, \"99%%%%\" 100, \"99.9%%%%\" 1000, "
                   "\"99.99%%%%\" 10000, \"99.999%%%%\" 100000, \"99.9999%%%%\" 1000000)\n");
}

static void plots_latency(const eb_run_t *run, const char *dir, FILE *g, plot_list_t *pl)
{
        static const char *modes[2] = {"spin", "block"};
        /* per transport and mode: one curve per payload */
        for (int t = 0; t < 2; t++)
                for (int m = 0; m < 2; m++) {
                        const char *impl = t ? "mutex" : "lockfree";
                        char items[4][600];
                        int ni = 0;
                        for (int p = 0; p < 4; p++) {
                                char sz[16], file[200];
                                eb_size_name(eb_rtt_payloads[p], sz, sizeof(sz));
                                if (write_lat_dat(dir,
                                                  findf(run, "rtt/%s/%s/%s", impl, modes[m], sz),
                                                  file, sizeof(file)) == 0) {
                                        snprintf(items[ni], sizeof(items[ni]),
                                                 "'%s' using 2:3 with lines lw 2 lc rgb '%s' "
                                                 "title '%s'",
                                                 file, gp_color(p), sz);
                                        ni++;
                                }
                        }
                        if (ni == 0 || pl->n >= 16)
                                continue;
                        snprintf(pl->png[pl->n], sizeof(pl->png[0]), "lat-%s-%s.png", impl,
                                 modes[m]);
                        snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                                 "%s transport, %s: round trip by percentile, per payload", impl,
                                 m ? "blocking (both sides sleep)" : "spinning");
                        fprintf(g, "set output '%s'\nset title '%s'\n", pl->png[pl->n],
                                pl->caption[pl->n]);
                        lat_axes(g);
                        fprintf(g, "plot ");
                        for (int i = 0; i < ni; i++)
                                fprintf(g, "%s%s", i ? ", \\\n     " : "", items[i]);
                        fprintf(g, "\n");
                        pl->n++;
                }
        /* per mode, 64 B and 0 B: every implementation against each other */
        static const uint64_t cmp_sizes[2] = {0, 64};
        for (int m = 0; m < 2; m++)
                for (int s = 0; s < 2; s++) {
                        char sz[16];
                        eb_size_name(cmp_sizes[s], sz, sizeof(sz));
                        char items[8][600];
                        int ni = 0;
                        for (size_t i = 0; i < sizeof(rtt_impls) / sizeof(rtt_impls[0]); i++) {
                                char file[200];
                                if (write_lat_dat(
                                        dir, findf(run, "rtt/%s/%s/%s", rtt_impls[i], modes[m], sz),
                                        file, sizeof(file)) == 0) {
                                        snprintf(items[ni], sizeof(items[ni]),
                                                 "'%s' using 2:3 with lines lw 2 lc rgb '%s' "
                                                 "title '%s'",
                                                 file, gp_color((int)i), rtt_impls[i]);
                                        ni++;
                                }
                        }
                        char file[200];
                        if (m == 0 && s == 0 &&
                            write_lat_dat(dir, eb_find(run, "floor/spinword"), file,
                                          sizeof(file)) == 0) {
                                snprintf(items[ni], sizeof(items[ni]),
                                         "'%s' using 2:3 with lines lw 2 dt 2 lc rgb 'black' "
                                         "title 'spin floor'",
                                         file);
                                ni++;
                        }
                        if (ni == 0 || pl->n >= 16)
                                continue;
                        snprintf(pl->png[pl->n], sizeof(pl->png[0]), "lat-cmp-%s-%s.png", modes[m],
                                 sz);
                        snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                                 "%s, %s payload: engine transports against the OS peers%s",
                                 m ? "blocking" : "spinning", sz,
                                 s == 0 ? " (OS peers carry 1 byte)" : "");
                        fprintf(g, "set output '%s'\nset title '%s'\n", pl->png[pl->n],
                                pl->caption[pl->n]);
                        lat_axes(g);
                        fprintf(g, "plot ");
                        for (int i = 0; i < ni; i++)
                                fprintf(g, "%s%s", i ? ", \\\n     " : "", items[i]);
                        fprintf(g, "\n");
                        pl->n++;
                }
}

static void plots_tput(const eb_run_t *run, const char *dir, FILE *g, plot_list_t *pl)
{
        /* against stream count: one file per (transport, payload) */
        static const char *ys[2] = {"msgs_per_s", "gb_per_s"};
        static const char *yl[2] = {"messages/s", "GB/s"};
        for (int y = 0; y < 2; y++) {
                char items[12][600];
                int ni = 0;
                for (int t = 0; t < 2; t++)
                        for (int p = 0; p < 6; p++) {
                                if (y == 1 && eb_tput_payloads[p] == 0)
                                        continue;
                                const char *impl = t ? "mutex" : "lockfree";
                                char sz[16], file[200], path[700];
                                eb_size_name(eb_tput_payloads[p], sz, sizeof(sz));
                                snprintf(file, sizeof(file), "tput-streams-%s-%s-%s.dat",
                                         y ? "gbs" : "msgs", impl, sz);
                                snprintf(path, sizeof(path), "%s/%s", dir, file);
                                int pts = 0;
                                FILE *d = fopen(path, "w");
                                if (d == NULL)
                                        continue;
                                for (int s = 0; s < 4; s++) {
                                        double v = mval(run, ys[y], "tput/%s/%us/%s", impl,
                                                        eb_tput_streams[s], sz);
                                        if (!isnan(v) && v > 0) {
                                                fprintf(d, "%u %.6g\n", eb_tput_streams[s], v);
                                                pts++;
                                        }
                                }
                                fclose(d);
                                if (pts == 0)
                                        continue;
                                snprintf(items[ni], sizeof(items[ni]),
                                         "'%s' using 1:2 with linespoints lw 2 pt 7 dt %d lc rgb "
                                         "'%s' title '%s %s'",
                                         file, t ? 2 : 1, gp_color(p), impl, sz);
                                ni++;
                        }
                if (ni == 0 || pl->n >= 16)
                        continue;
                snprintf(pl->png[pl->n], sizeof(pl->png[0]), "tput-streams-%s.png",
                         y ? "gbs" : "msgs");
                snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                         "one-way throughput (%s) against stream count", yl[y]);
                fprintf(g,
                        "set output '%s'\nset title '%s'\nunset xtics\nset xtics (1, 2, 8, "
                        "64)\nset logscale x 2\nset logscale y\nset grid\nset key outside "
                        "right\nset xlabel 'streams'\nset ylabel '%s'\nplot ",
                        pl->png[pl->n], pl->caption[pl->n], yl[y]);
                for (int i = 0; i < ni; i++)
                        fprintf(g, "%s%s", i ? ", \\\n     " : "", items[i]);
                fprintf(g, "\n");
                pl->n++;
        }
        /* against payload, one stream: engine and peers */
        static const char *impl[6] = {"lockfree", "mutex", "pipe", "unix", "tcp", "boost"};
        for (int y = 0; y < 2; y++) {
                char items[6][600];
                int ni = 0;
                for (int i = 0; i < 6; i++) {
                        char file[200], path[700];
                        snprintf(file, sizeof(file), "tput-payload-%s-%s.dat", y ? "gbs" : "msgs",
                                 impl[i]);
                        snprintf(path, sizeof(path), "%s/%s", dir, file);
                        FILE *d = fopen(path, "w");
                        if (d == NULL)
                                continue;
                        int pts = 0;
                        for (int p = 1; p < 6; p++) {
                                char sz[16];
                                eb_size_name(eb_tput_payloads[p], sz, sizeof(sz));
                                double v = mval(run, ys[y], "tput/%s/1s/%s", impl[i], sz);
                                if (!isnan(v) && v > 0) {
                                        fprintf(d, "%llu %.6g\n",
                                                (unsigned long long)eb_tput_payloads[p], v);
                                        pts++;
                                }
                        }
                        fclose(d);
                        if (pts == 0)
                                continue;
                        snprintf(items[ni], sizeof(items[ni]),
                                 "'%s' using 1:2 with linespoints lw 2 pt 7 lc rgb '%s' title "
                                 "'%s'",
                                 file, gp_color(i), impl[i]);
                        ni++;
                }
                if (ni == 0 || pl->n >= 16)
                        continue;
                snprintf(pl->png[pl->n], sizeof(pl->png[0]), "tput-payload-%s.png",
                         y ? "gbs" : "msgs");
                snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                         "one-way throughput (%s) against payload size, one stream", yl[y]);
                fprintf(g,
                        "set output '%s'\nset title '%s'\nunset xtics\nset xtics (\"64B\" 64, "
                        "\"1KiB\" 1024, \"4KiB\" 4096, \"64KiB\" 65536, \"1MiB\" 1048576)\n"
                        "set logscale x 2\nset logscale y\nset grid\nset key outside right\n"
                        "set xlabel 'payload'\nset ylabel '%s'\nplot ",
                        pl->png[pl->n], pl->caption[pl->n], yl[y]);
                for (int i = 0; i < ni; i++)
                        fprintf(g, "%s%s", i ? ", \\\n     " : "", items[i]);
                fprintf(g, "\n");
                pl->n++;
        }
}

/* Run a command with a deadline; returns its exit status, or -1. */
static int run_cmd(const char *dir, char *const argv[], const char *log, int timeout_s)
{
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                if (chdir(dir) != 0)
                        _exit(127);
                FILE *l = log ? freopen(log, "a", stderr) : NULL;
                (void)l;
                if (freopen("/dev/null", "w", stdout) == NULL)
                        _exit(127);
                execvp(argv[0], argv);
                _exit(127);
        }
        uint64_t end = eb_now_ns() + (uint64_t)timeout_s * 1000000000ull;
        int st;
        for (;;) {
                pid_t w = waitpid(pid, &st, WNOHANG);
                if (w == pid)
                        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
                if (eb_now_ns() > end) {
                        kill(pid, SIGKILL);
                        waitpid(pid, &st, 0);
                        return -1;
                }
                usleep(10000);
        }
}

static const char *gnuplot_terminal(const char *dir)
{
        char *png_cairo[] = {"gnuplot", "-e", "set terminal pngcairo", NULL};
        if (run_cmd(dir, png_cairo, NULL, 20) == 0)
                return "pngcairo";
        char *png[] = {"gnuplot", "-e", "set terminal png", NULL};
        if (run_cmd(dir, png, NULL, 20) == 0)
                return "png";
        return NULL;
}

int eb_write_report(const eb_run_t *run, const char *dir)
{
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "engine-bench: cannot create %s: %s\n", dir, strerror(errno));
                return -1;
        }
        char path[700];
        const char *term = gnuplot_terminal(dir);
        plot_list_t pl = {.n = 0};
        char gp_note[300] = "";
        if (term) {
                snprintf(path, sizeof(path), "%s/plots.gp", dir);
                FILE *g = fopen(path, "w");
                if (g) {
                        fprintf(g, "# generated by engine-bench: run with `gnuplot plots.gp` in "
                                   "this folder\n");
                        fprintf(g, "set terminal %s size 960,560 noenhanced%s\n", term,
                                strcmp(term, "pngcairo") == 0 ? " font ',10'" : "");
                        plots_latency(run, dir, g, &pl);
                        plots_tput(run, dir, g, &pl);
                        fclose(g);
                        char *argv[] = {"gnuplot", "plots.gp", NULL};
                        snprintf(path, sizeof(path), "%s/gnuplot.log", dir);
                        unlink(path);
                        int rc = run_cmd(dir, argv, "gnuplot.log", 120);
                        if (rc != 0) {
                                snprintf(gp_note, sizeof(gp_note),
                                         "gnuplot failed (status %d): see gnuplot.log; some "
                                         "plots may be missing.",
                                         rc);
                        }
                }
        } else {
                snprintf(gp_note, sizeof(gp_note),
                         "gnuplot (with a png or pngcairo terminal) was not found: this page "
                         "has no plots. Install gnuplot-nox and run again.");
        }
        snprintf(path, sizeof(path), "%s/index.html", dir);
        FILE *f = fopen(path, "w");
        if (f == NULL) {
                fprintf(stderr, "engine-bench: cannot write %s: %s\n", path, strerror(errno));
                return -1;
        }
        fprintf(f, "<!doctype html>\n<html><head><meta charset='utf-8'>\n<title>engine-bench "
                   "latency report</title>\n<style>body{font-family:sans-serif;max-width:1100px;"
                   "margin:2em auto;padding:0 1em}pre{background:#f6f6f6;padding:1em;"
                   "overflow-x:auto;font-size:12px}img{max-width:100%%;border:1px solid #ddd}"
                   "figure{margin:1.5em 0}.note{background:#fff3cd;padding:.6em 1em}</style>\n"
                   "</head><body>\n<h1>engine-bench latency report</h1>\n<p>");
        char head[600];
        snprintf(head, sizeof(head), "%s, %d cores, %s; started %s; %.0f s%s", run->cpu, run->cores,
                 run->kernel, run->started, run->secs,
                 run->o->quick ? "; QUICK MODE (indicative figures)" : "");
        html_esc(f, head, strlen(head));
        fprintf(f, "</p>\n");
        if (gp_note[0]) {
                fprintf(f, "<p class='note'>");
                html_esc(f, gp_note, strlen(gp_note));
                fprintf(f, "</p>\n");
        }
        fprintf(f, "<p>Latency plots are HdrHistogram-style: x is 1/(1-p) on a log scale, so "
                   "each decade to the right is one more nine; the data files next to the images "
                   "(lat-*.dat, tput-*.dat) and plots.gp regenerate them.</p>\n");
        for (int i = 0; i < pl.n; i++) {
                snprintf(path, sizeof(path), "%s/%s", dir, pl.png[i]);
                if (access(path, R_OK) != 0)
                        continue;
                fprintf(f, "<figure><img src='%s' alt='", pl.png[i]);
                html_esc(f, pl.caption[i], strlen(pl.caption[i]));
                fprintf(f, "'><figcaption>");
                html_esc(f, pl.caption[i], strlen(pl.caption[i]));
                fprintf(f, "</figcaption></figure>\n");
        }
        fprintf(f, "<h2>Tables</h2>\n<pre>");
        char *buf = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&buf, &len);
        if (m) {
                eb_print_tables(run, m);
                fclose(m);
                html_esc(f, buf, len);
                free(buf);
        }
        fprintf(f, "</pre>\n</body></html>\n");
        int rc = ferror(f) ? -1 : 0;
        fclose(f);
        fprintf(stderr, "engine-bench: wrote %s/index.html (%d plots%s)\n", dir, pl.n,
                term ? "" : ", gnuplot missing");
        return rc;
}
