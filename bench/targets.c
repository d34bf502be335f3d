/*
 * targets.c - the targets engine-bench checks (docs/BENCH.md): each is the ratio of two
 * figures of the same run against a threshold, PASS, MISS or n/a (a figure is missing).
 *
 * One table holds every target: its id, what it measures, where its two figures come from,
 * how they are shown, the threshold and its direction. One loop evaluates them.
 */
#include <math.h>
#include <string.h>

#include "bench.h"

/* A figure of the run: a cell's metric, a value computed from several cells, or a constant. */
typedef struct figure {
        const char *cell; /* a cell's name, with metric; NULL: fn, or else k */
        const char *metric;
        double (*fn)(const eb_run_t *run);
        double k;
} figure_t;

/* How the detail shows the two figures: "<a><each> / <b><last>", or "<a><last>" when the
 * denominator is a constant. */
typedef struct unit {
        const char *(*fmt)(double v, char *buf, size_t n);
        const char *each, *last;
} unit_t;

typedef struct target_def {
        const char *id;
        const char *what;
        figure_t num, den; /* value = num / den */
        const unit_t *unit;
        bool at_most; /* value <= need passes (false: value >= need) */
        double need;
        /* appends to the detail; NULL: nothing */
        void (*more)(const eb_run_t *run, double num, char *out, size_t n);
} target_def_t;

static const char *fmt_gbs(double v, char *buf, size_t n)
{
        return eb_fmt_fixed(v, 2, buf, n);
}

static const unit_t US = {eb_fmt_us, " us", " us"};
static const unit_t MSGS = {eb_fmt_rate, "", " msg/s"};
static const unit_t GBS = {fmt_gbs, "", " GB/s"};

static double spin_floor(const eb_run_t *run)
{
        double drift;
        return eb_floor_p50(run, &drift);
}

/* The floor's two measurements, and a bare ck_ring ping-pong (what any transport built on
 * ck_ring as it is pays per round trip). */
static void floor_more(const eb_run_t *run, double num, char *out, size_t n)
{
        char a[32], b[32];
        double drift;
        eb_floor_p50(run, &drift);
        double ck = eb_metric(eb_find(run, "floor/ckring"), "p50_ns");
        snprintf(out, n,
                 " (floor before and after%s); a bare ck_ring ping-pong: %s us, engine/that %s",
                 drift > 1.3 ? "; they differ: the machine changed speed, rerun" : "",
                 eb_fmt_us(ck, a, sizeof(a)), eb_fmt_x(eb_ratio(num, ck), b, sizeof(b)));
}

static const target_def_t target_defs[] = {
    {.id = "rtt_p50_vs_floor",
     .what = "round trip p50 (spinning, 0 B) / spin floor p50",
     .num = {.cell = "rtt/lockfree/spin/0B", .metric = "p50_ns"},
     .den = {.fn = spin_floor},
     .unit = &US,
     .at_most = true,
     .need = 1.5,
     .more = floor_more},
    {.id = "tput_64B_1s",
     .what = "64-B loaned messages, one stream, >= 10 M/s (measured / 10 M)",
     .num = {.cell = "tput/lockfree/1s/64B", .metric = "msgs_per_s"},
     .den = {.k = 10e6},
     .unit = &MSGS,
     .need = 1.0},
    {.id = "tput_64B_lf_vs_mutex",
     .what = "64-B throughput, one stream: lock-free / mutex",
     .num = {.cell = "tput/lockfree/1s/64B", .metric = "msgs_per_s"},
     .den = {.cell = "tput/mutex/1s/64B", .metric = "msgs_per_s"},
     .unit = &MSGS,
     .need = 5.0},
    {.id = "rtt_p99_lf_vs_mutex",
     .what = "round trip p99 (spinning, 64 B): lock-free / mutex",
     .num = {.cell = "rtt/lockfree/spin/64B", .metric = "p99_ns"},
     .den = {.cell = "rtt/mutex/spin/64B", .metric = "p99_ns"},
     .unit = &US,
     .at_most = true,
     .need = 0.2},
    {.id = "tput_1MiB_vs_unix",
     .what = "1-MiB loaned messages, one stream / UNIX socket bulk (1 MiB writes)",
     .num = {.cell = "tput/lockfree/1s/1MiB", .metric = "gb_per_s"},
     .den = {.cell = "tput/unix/1s/1MiB", .metric = "gb_per_s"},
     .unit = &GBS,
     .need = 3.0},
    {.id = "xfer_vs_rwcopy",
     .what = "file transfer, one stream / read-write copy (1 MiB buffer)",
     .num = {.cell = "xfer/lockfree/1s", .metric = "gb_per_s"},
     .den = {.cell = "xfer/rwcopy/1s", .metric = "gb_per_s"},
     .unit = &GBS,
     .need = 1.0},
};
#define NTARGETS ((int)(sizeof(target_defs) / sizeof(target_defs[0])))
_Static_assert(NTARGETS <= EB_MAX_TARGETS, "raise EB_MAX_TARGETS");

static double figure(const eb_run_t *run, const figure_t *f)
{
        if (f->cell)
                return eb_metric(eb_find(run, f->cell), f->metric);
        return f->fn ? f->fn(run) : f->k;
}

int eb_targets(const eb_run_t *run, eb_target_t t[EB_MAX_TARGETS])
{
        for (int i = 0; i < NTARGETS; i++) {
                const target_def_t *d = &target_defs[i];
                double a = figure(run, &d->num), b = figure(run, &d->den);
                char x[32], y[32];
                t[i] = (eb_target_t){.id = d->id,
                                     .what = d->what,
                                     .value = eb_ratio(a, b),
                                     .need = d->need,
                                     .at_most = d->at_most};
                if (d->den.cell || d->den.fn)
                        snprintf(t[i].detail, sizeof(t[i].detail), "%s%s / %s%s",
                                 d->unit->fmt(a, x, sizeof(x)), d->unit->each,
                                 d->unit->fmt(b, y, sizeof(y)), d->unit->last);
                else
                        snprintf(t[i].detail, sizeof(t[i].detail), "%s%s",
                                 d->unit->fmt(a, x, sizeof(x)), d->unit->last);
                if (d->more) {
                        size_t l = strlen(t[i].detail);
                        d->more(run, a, t[i].detail + l, sizeof(t[i].detail) - l);
                }
                t[i].verdict = isnan(t[i].value) ? "n/a"
                               : (t[i].at_most ? t[i].value <= t[i].need : t[i].value >= t[i].need)
                                   ? "PASS"
                                   : "MISS";
        }
        return NTARGETS;
}
