/*
 * targets.c - the targets engine-bench checks (docs/BENCH.md): each is the ratio of two
 * figures of the same run (or one figure: a time, a rate) against a threshold, PASS, MISS or
 * n/a (a figure is missing).
 *
 * One table holds every target: its id, what it measures, where its figures come from (and so
 * which cells it reads: --filter runs them together), how they are shown, the threshold and
 * its direction. One loop evaluates them.
 */
#include <fnmatch.h>
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
        /* a value that is not num / den: returns it and writes the whole detail */
        double (*eval)(const eb_run_t *run, char *out, size_t n);
        /* the need, when it depends on the run (NULL: need) */
        double (*need_fn)(const eb_run_t *run);
        /* how value and need are shown (NULL: a ratio, 0.52x) */
        const char *(*fmt)(double v, char *buf, size_t n);
        /* cells the target reads besides num.cell and den.cell: fnmatch patterns, NULL-ended */
        const char *const *cells;
        /* a target over pairs of cells (each pair a ratio): the other cell of name's pair;
         * --filter then adds the partners of the selected cells, not every cell read (NULL:
         * every cell the target reads) */
        bool (*partner)(const char *name, char *out, size_t n);
} target_def_t;

static const char *fmt_gbs(double v, char *buf, size_t n)
{
        return eb_fmt_fixed(v, 2, buf, n);
}

static const char *fmt_2(double v, char *buf, size_t n)
{
        return eb_fmt_fixed(v, 2, buf, n);
}

static const char *fmt_secs(double v, char *buf, size_t n)
{
        if (isnan(v))
                return eb_fmt_fixed(v, 3, buf, n);
        snprintf(buf, n, "%.3f s", v);
        return buf;
}

static const char *fmt_per_s(double v, char *buf, size_t n)
{
        char b[24];
        snprintf(buf, n, "%s/s", eb_fmt_rate(v, b, sizeof(b)));
        return buf;
}

static const char *fmt_wakeups(double v, char *buf, size_t n)
{
        if (isnan(v))
                snprintf(buf, n, "n/a");
        else
                snprintf(buf, n, "%.2f/s", v);
        return buf;
}

static const unit_t US = {eb_fmt_us, " us", " us"};
static const unit_t MSGS = {eb_fmt_rate, "", " msg/s"};
static const unit_t GBS = {fmt_gbs, "", " GB/s"};
static const unit_t SPGB = {fmt_2, "", " CPU s/GB"};
static const unit_t SECS = {fmt_secs, "", ""};
static const unit_t OPENS = {eb_fmt_rate, "", " opens/s"};

static const char *const FLOOR_CELLS[] = {"floor/spinword", "floor/spinword-after", "floor/ckring",
                                          NULL};
static const char *const SPARSE_CELLS[] = {"sparse/*", NULL};
static const char *const IDLE_CELLS[] = {"idle/lockfree/*", NULL};

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

/* The disk cells: " (medians); by round: engine <GB/s...>, cp+sync <...>; CPU s/GB a / b". */
static void disk_more(const eb_run_t *run, double num, char *out, size_t n)
{
        (void)num;
        const eb_result_t *a = eb_find(run, "xfer/disk/lockfree/1s");
        const eb_result_t *b = eb_find(run, "xfer/disk/cpsync/1s");
        static const char by[] = "GB/s by round:";
        const char *na =
            a && strncmp(a->note, by, sizeof(by) - 1) == 0 ? a->note + sizeof(by) : "-";
        const char *nb =
            b && strncmp(b->note, by, sizeof(by) - 1) == 0 ? b->note + sizeof(by) : "-";
        char x[16], y[16];
        snprintf(out, n, " (medians); by round: engine %s, cp+sync %s; CPU s/GB %s / %s", na, nb,
                 eb_fmt_fixed(eb_metric(a, "cpu_s_per_gb"), 2, x, sizeof(x)),
                 eb_fmt_fixed(eb_metric(b, "cpu_s_per_gb"), 2, y, sizeof(y)));
}

/* sparse/lockfree/<gap>/<place> and sparse/pipe/<gap>/<place> are a pair. */
static bool sparse_partner(const char *name, char *out, size_t n)
{
        static const char lf[] = "sparse/lockfree/", pp[] = "sparse/pipe/";
        if (strncmp(name, lf, sizeof(lf) - 1) == 0)
                snprintf(out, n, "%s%s", pp, name + sizeof(lf) - 1);
        else if (strncmp(name, pp, sizeof(pp) - 1) == 0)
                snprintf(out, n, "%s%s", lf, name + sizeof(pp) - 1);
        else
                return false;
        return true;
}

/* The worst p50 ratio engine / pipe over the gaps and placements that ran (a filter may have
 * left some pairs out: the detail says how many counted); n/a if half a pair ran or one failed
 * (a placement the machine cannot give, n/a in both, is left out). */
static double sparse_eval(const eb_run_t *run, char *out, size_t n)
{
        double worst = NAN, wa = NAN, wb = NAN;
        int pairs = 0;
        char wname[48] = "", missing[96] = "", row[3][64];
        for (int g = 0; g < 3; g++) {
                char gap[16];
                eb_gap_name(eb_sparse_gaps[g], gap, sizeof(gap));
                size_t l = (size_t)snprintf(row[g], sizeof(row[g]), "%s", gap);
                for (int p = 0; p < 3; p++) {
                        const eb_result_t *a =
                            eb_findf(run, "sparse/lockfree/%s/%s", gap, eb_places[p]);
                        const eb_result_t *b =
                            eb_findf(run, "sparse/pipe/%s/%s", gap, eb_places[p]);
                        char v[16] = "n/a";
                        if (a && b && a->status == EB_NA && b->status == EB_NA) {
                                /* the placement is not possible here */
                        } else if (a == NULL && b == NULL) {
                                snprintf(v, sizeof(v), "-"); /* not selected */
                        } else {
                                double x = eb_metric(a, "p50_ns"), y = eb_metric(b, "p50_ns");
                                double r = eb_ratio(x, y);
                                if (isnan(r)) {
                                        if (!missing[0])
                                                snprintf(missing, sizeof(missing), "%s/%s", gap,
                                                         eb_places[p]);
                                        snprintf(v, sizeof(v), "-");
                                } else {
                                        eb_fmt_x(r, v, sizeof(v));
                                        pairs++;
                                        if (isnan(worst) || r > worst) {
                                                worst = r;
                                                wa = x;
                                                wb = y;
                                                snprintf(wname, sizeof(wname), "%s/%s", gap,
                                                         eb_places[p]);
                                        }
                                }
                        }
                        if (l < sizeof(row[g]))
                                l += (size_t)snprintf(row[g] + l, sizeof(row[g]) - l, " %s", v);
                }
        }
        char a[16], b[16];
        int k;
        if (missing[0])
                k = snprintf(out, n, "sparse/lockfree/%s or sparse/pipe/%s did not run; ", missing,
                             missing);
        else if (isnan(worst))
                k = snprintf(out, n, "no placement ran; ");
        else
                k = snprintf(out, n, "worst %s: %s us / %s us (%d pairs); ", wname,
                             eb_fmt_us(wa, a, sizeof(a)), eb_fmt_us(wb, b, sizeof(b)), pairs);
        if (k > 0 && (size_t)k < n)
                snprintf(out + k, n - (size_t)k, "by gap (unpinned samecore crosscore): %s; %s; %s",
                         row[0], row[1], row[2]);
        return missing[0] ? NAN : worst;
}

/* The larger wake-up rate of the two idle servers. */
static double idle_eval(const eb_run_t *run, char *out, size_t n)
{
        const eb_result_t *a = eb_find(run, "idle/lockfree/noclient");
        const eb_result_t *b = eb_find(run, "idle/lockfree/idleclient");
        double x = eb_metric(a, "wakeups_per_s"), y = eb_metric(b, "wakeups_per_s");
        char bx[16], by[16], cx[16], cy[16], w[16];
        snprintf(out, n, "alone %s (%s in %s s; by thread: %.70s); 4 silent streams %s (%s; %.70s)",
                 fmt_wakeups(x, bx, sizeof(bx)), eb_fmt_fixed(eb_metric(a, "wakeups"), 0, cx, 16),
                 eb_fmt_fixed(eb_metric(a, "window_s"), 1, w, sizeof(w)),
                 a && a->note[0] ? a->note : "-", fmt_wakeups(y, by, sizeof(by)),
                 eb_fmt_fixed(eb_metric(b, "wakeups"), 0, cy, 16), b && b->note[0] ? b->note : "-");
        return isnan(x) || isnan(y) ? NAN : x > y ? x : y;
}

/* Fewer than one wake-up in the window: half of one, per second of the window. */
static double idle_need(const eb_run_t *run)
{
        return 0.5 / ((double)run->o->idle_ms / 1e3);
}

static const target_def_t target_defs[] = {
    {.id = "rtt_p50_vs_floor",
     .what = "round trip p50 (spinning, 0 B) / spin floor p50",
     .num = {.cell = "rtt/lockfree/spin/0B", .metric = "p50_ns"},
     .den = {.fn = spin_floor},
     .unit = &US,
     .at_most = true,
     .need = 1.5,
     .more = floor_more,
     .cells = FLOOR_CELLS},
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
    {.id = "xfer_vs_cat",
     .what = "file transfer, one stream / cat SRC > DST (copy_file_range)",
     .num = {.cell = "xfer/lockfree/1s", .metric = "gb_per_s"},
     .den = {.cell = "xfer/cat/1s", .metric = "gb_per_s"},
     .unit = &GBS,
     .need = 1.0},
    {.id = "xfer_cpu_vs_cat",
     .what = "file transfer CPU s/GB (server + client) / cat's",
     .num = {.cell = "xfer/lockfree/1s", .metric = "cpu_s_per_gb"},
     .den = {.cell = "xfer/cat/1s", .metric = "cpu_s_per_gb"},
     .unit = &SPGB,
     .at_most = true,
     .need = 2.0},
    {.id = "xfer_disk_vs_cpsync",
     .what = "file transfer tmpfs -> disk, one stream / cp SRC DST + fsync (median rounds)",
     .num = {.cell = "xfer/disk/lockfree/1s", .metric = "gb_per_s"},
     .den = {.cell = "xfer/disk/cpsync/1s", .metric = "gb_per_s"},
     .unit = &GBS,
     .more = disk_more,
     .need = 1.0},
    {.id = "sparse_rtt_vs_pipe",
     .what = "sparse round trip p50, engine defaults / pipe (worst gap x placement)",
     .eval = sparse_eval,
     .cells = SPARSE_CELLS,
     .partner = sparse_partner,
     .at_most = true,
     .need = 1.0},
    {.id = "b2b_samecore_vs_pipe",
     .what = "back-to-back round trip p50 on one CPU, engine defaults / pipe",
     .num = {.cell = "rtt/lockfree/b2b/samecore", .metric = "p50_ns"},
     .den = {.cell = "rtt/pipe/b2b/samecore", .metric = "p50_ns"},
     .unit = &US,
     .at_most = true,
     .need = 1.1},
    {.id = "b2b_crosscore_vs_floor",
     .what = "back-to-back round trip p50 across CPUs 0 and 1, engine defaults / spin floor",
     .num = {.cell = "rtt/lockfree/b2b/crosscore", .metric = "p50_ns"},
     .den = {.fn = spin_floor},
     .unit = &US,
     .at_most = true,
     .need = 1.5,
     .more = floor_more,
     .cells = FLOOR_CELLS},
    {.id = "scale_1000_vs_1",
     .what = "64-B throughput, 1000 streams / 1 stream (engine defaults)",
     .num = {.cell = "scale/lockfree/1000s", .metric = "msgs_per_s"},
     .den = {.cell = "scale/lockfree/1s", .metric = "msgs_per_s"},
     .unit = &MSGS,
     .need = 0.8},
    {.id = "scale_close_10000",
     .what = "closing 10 000 open streams, one client (seconds)",
     .num = {.cell = "scale/lockfree/10000s", .metric = "close_secs"},
     .den = {.k = 1},
     .unit = &SECS,
     .fmt = fmt_secs,
     .at_most = true,
     .need = 0.1},
    {.id = "scale_opens_10000",
     .what = "opening 10 000 streams, one client (opens/s)",
     .num = {.cell = "scale/lockfree/10000s", .metric = "open_per_s"},
     .den = {.k = 1},
     .unit = &OPENS,
     .fmt = fmt_per_s,
     .need = 100e3},
    {.id = "idle_wakeups",
     .what = "idle server wake-ups/s, worst of alone / 4 silent streams (< 1 in window)",
     .eval = idle_eval,
     .need_fn = idle_need,
     .fmt = fmt_wakeups,
     .cells = IDLE_CELLS,
     .at_most = true},
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
                t[i] = (eb_target_t){.id = d->id,
                                     .what = d->what,
                                     .need = d->need_fn ? d->need_fn(run) : d->need,
                                     .at_most = d->at_most,
                                     .fmt = d->fmt};
                if (d->eval) {
                        t[i].value = d->eval(run, t[i].detail, sizeof(t[i].detail));
                } else {
                        double a = figure(run, &d->num), b = figure(run, &d->den);
                        char x[32], y[32];
                        t[i].value = eb_ratio(a, b);
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
                }
                t[i].verdict = isnan(t[i].value) ? "n/a"
                               : (t[i].at_most ? t[i].value <= t[i].need : t[i].value >= t[i].need)
                                   ? "PASS"
                                   : "MISS";
        }
        return NTARGETS;
}

/* Whether target d reads the cell called name. */
static bool reads(const target_def_t *d, const char *name)
{
        if ((d->num.cell && strcmp(d->num.cell, name) == 0) ||
            (d->den.cell && strcmp(d->den.cell, name) == 0))
                return true;
        for (const char *const *p = d->cells; p && *p; p++)
                if (fnmatch(*p, name, 0) == 0)
                        return true;
        return false;
}

int eb_targets_expand(const eb_cells_t *cs, const bool *sel0, bool *sel)
{
        int added = 0;
        for (int t = 0; t < NTARGETS; t++) {
                const target_def_t *d = &target_defs[t];
                bool hit = false;
                for (int i = 0; i < cs->n && !hit; i++)
                        hit = sel0[i] && reads(d, cs->v[i].name);
                if (!hit)
                        continue;
                for (int i = 0; i < cs->n; i++) {
                        if (sel[i] || !reads(d, cs->v[i].name))
                                continue;
                        bool want = d->partner == NULL;
                        char other[128];
                        for (int j = 0; j < cs->n && !want; j++)
                                want = sel0[j] && d->partner(cs->v[j].name, other, sizeof(other)) &&
                                       strcmp(other, cs->v[i].name) == 0;
                        if (want) {
                                sel[i] = true;
                                added++;
                        }
                }
        }
        return added;
}
