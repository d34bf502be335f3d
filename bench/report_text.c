/*
 * report_text.c - the tables engine-bench prints (stdout, and the report's page): round
 * trips, throughput, file transfer, open/close, arena, memcpy, the targets, the cells measured
 * on a busy machine and the failed ones. Every ratio is of cells of the same run.
 */
#include <math.h>
#include <string.h>

#include "bench.h"

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
                const eb_result_t *r = eb_findf(run, "rtt/%s/%s/%s", eb_os_peers[i], mode, sz);
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
                const eb_result_t *r = eb_findf(run, "tput/%s/1s/%s", eb_os_peers[i], sz);
                double v = eb_metric(r, "msgs_per_s");
                if (!isnan(v) && (best == NULL || v > eb_metric(best, "msgs_per_s")))
                        best = r;
        }
        return best;
}

/* ---- the tables --------------------------------------------------------------------- */

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
        fprintf(f, " %8s %8s %8s %8s %8s %8s %9.0f\n", eb_fmt_us(eb_metric(r, "p50_ns"), b[0], 16),
                eb_fmt_us(eb_metric(r, "p90_ns"), b[1], 16),
                eb_fmt_us(eb_metric(r, "p99_ns"), b[2], 16),
                eb_fmt_us(eb_metric(r, "p99.9_ns"), b[3], 16),
                eb_fmt_us(eb_metric(r, "p99.99_ns"), b[4], 16),
                eb_fmt_us(eb_metric(r, "max_ns"), b[5], 16), eb_metric(r, "n"));
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
                        for (size_t i = 0; i < sizeof(eb_msg_impls) / sizeof(eb_msg_impls[0]);
                             i++) {
                                const eb_result_t *r =
                                    eb_findf(run, "rtt/%s/%s/%s", eb_msg_impls[i], modes[m], sz);
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
        double drift, floor50 = eb_floor_p50(run, &drift);
        for (int m = 0; m < 2; m++)
                for (int p = 0; p < 4; p++) {
                        char sz[16], a[24], b[24], c[24], d[24], e[48];
                        eb_size_name(eb_rtt_payloads[p], sz, sizeof(sz));
                        const eb_result_t *lf = eb_findf(run, "rtt/lockfree/%s/%s", modes[m], sz);
                        const eb_result_t *mx = eb_findf(run, "rtt/mutex/%s/%s", modes[m], sz);
                        const eb_result_t *os = best_os_rtt(run, modes[m], sz);
                        if (lf == NULL && mx == NULL)
                                continue;
                        snprintf(
                            e, sizeof(e), "%s%s%s%s",
                            eb_fmt_x(eb_ratio(eb_metric(lf, "p50_ns"), eb_metric(os, "p50_ns")), c,
                                     sizeof(c)),
                            os ? " (" : "", os ? os->impl : "", os ? ")" : "");
                        fprintf(f, "  %-5s %-6s %14s %14s %26s %14s\n", modes[m], sz,
                                eb_fmt_x(eb_ratio(eb_metric(lf, "p50_ns"), eb_metric(mx, "p50_ns")),
                                         a, sizeof(a)),
                                eb_fmt_x(eb_ratio(eb_metric(lf, "p99_ns"), eb_metric(mx, "p99_ns")),
                                         b, sizeof(b)),
                                e,
                                m == 0 ? eb_fmt_x(eb_ratio(eb_metric(lf, "p50_ns"), floor50), d,
                                                  sizeof(d))
                                       : "-");
                }
        double dr, fp = eb_floor_p50(run, &dr);
        if (!isnan(fp)) {
                char fb[16];
                fprintf(f,
                        "  (floor = mean of floor and floor2 p50 = %s us, measured just before "
                        "and after rtt/lockfree/spin/0B%s)\n",
                        eb_fmt_us(fp, fb, sizeof(fb)),
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
                        const eb_result_t *lf = eb_findf(run, "tput/lockfree/%us/%s", ns, sz);
                        const eb_result_t *mx = eb_findf(run, "tput/mutex/%us/%s", ns, sz);
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
                                 os ? eb_fmt_rate(eb_metric(os, "msgs_per_s"), a[4], 24) : "-",
                                 os ? " (" : "", os ? os->impl : "", os ? ")" : "");
                        fprintf(f, " %11s %8s %11s %8s %9s %22s %9s\n",
                                eb_fmt_rate(eb_metric(lf, "msgs_per_s"), a[0], 24),
                                eb_fmt_fixed(eb_metric(lf, "gb_per_s"), 3, a[1], 24),
                                mx && mx->status == EB_NA
                                    ? "n/a"
                                    : eb_fmt_rate(eb_metric(mx, "msgs_per_s"), a[2], 24),
                                eb_fmt_fixed(eb_metric(mx, "gb_per_s"), 3, a[3], 24),
                                eb_fmt_x(eb_ratio(eb_metric(lf, "msgs_per_s"),
                                                  eb_metric(mx, "msgs_per_s")),
                                         a[5], 24),
                                osb,
                                eb_fmt_x(eb_ratio(eb_metric(lf, "msgs_per_s"),
                                                  eb_metric(os, "msgs_per_s")),
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
                        const eb_result_t *r = eb_findf(run, "tput/%s/1s/%s", peers[i], sz);
                        if (r == NULL)
                                continue;
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad)
                                fprintf(f, "  %-6s %-6s %s\n", peers[i], sz, bad);
                        else
                                fprintf(f, "  %-6s %-6s %11s %8s\n", peers[i], sz,
                                        eb_fmt_rate(eb_metric(r, "msgs_per_s"), a, sizeof(a)),
                                        eb_fmt_fixed(eb_metric(r, "gb_per_s"), 3, b, sizeof(b)));
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
        fprintf(f, "  %-9s %-7s %8s %9s %10s %9s %10s\n", "impl", "streams", "GB/s", "seconds",
                "/ rwcopy", "CPU s/GB", "CPU / cat");
        static const char *impl[5] = {"lockfree", "mutex", "rwcopy", "cfr", "cat"};
        for (int s = 0; s < 2; s++)
                for (int i = 0; i < 5; i++) {
                        unsigned ns = s ? 8 : 1;
                        const eb_result_t *r = eb_findf(run, "xfer/%s/%us", impl[i], ns);
                        if (r == NULL)
                                continue;
                        char a[24], b[24], c[24], d[24], e[24], why[300];
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad) {
                                fprintf(f, "  %-9s %-7u %s\n", impl[i], ns, bad);
                                continue;
                        }
                        double cpu = eb_metric(r, "cpu_s_per_gb");
                        fprintf(f, "  %-9s %-7u %8s %9s %10s %9s %10s\n", impl[i], ns,
                                eb_fmt_fixed(eb_metric(r, "gb_per_s"), 3, a, sizeof(a)),
                                eb_fmt_fixed(eb_metric(r, "secs"), 3, b, sizeof(b)),
                                eb_fmt_x(eb_ratio(eb_metric(r, "gb_per_s"),
                                                  eb_mval(run, "gb_per_s", "xfer/rwcopy/%us", ns)),
                                         c, sizeof(c)),
                                eb_fmt_fixed(cpu, 2, d, sizeof(d)),
                                eb_fmt_x(eb_ratio(cpu, eb_mval(run, "cpu_s_per_gb", "xfer/cat/1s")),
                                         e, sizeof(e)));
                }
        fprintf(f, "  (rwcopy: read()/write() with a 1 MiB buffer, one process; cfr: "
                   "copy_file_range, a copy inside\n   the kernel as coreutils cat does; cat: "
                   "/bin/cat SRC > DST; engine: client preads into loaned\n   buffers, server "
                   "pwrites, both hash with XXH3; every copy ends with fsync. CPU: server +\n   "
                   "client processes over the transfer (the engine's server spins: see the "
                   "server line))\n"); /* tmpfs -> disk: the median of alternating rounds
                                          (engine_bench.c run_alternating) */
        static const char *dimpl[2] = {"lockfree", "cpsync"};
        bool head = false;
        for (int i = 0; i < 2; i++) {
                const eb_result_t *r = eb_findf(run, "xfer/disk/%s/1s", dimpl[i]);
                if (r == NULL)
                        continue;
                if (!head) {
                        fprintf(f, "  tmpfs -> disk (%s), median of alternating rounds:\n",
                                run->o->disk_dir ? run->o->disk_dir : "?");
                        head = true;
                }
                char a[24], b[24], c[24], d[24], why[300];
                const char *bad = not_ok(r, why, sizeof(why));
                if (bad) {
                        fprintf(f, "  %-9s %-7u %s\n", dimpl[i], 1u, bad);
                        continue;
                }
                fprintf(f, "  %-9s %-7u %8s %9s %10s %9s   (rounds %s-%s GB/s)\n", dimpl[i], 1u,
                        eb_fmt_fixed(eb_metric(r, "gb_per_s"), 3, a, sizeof(a)),
                        eb_fmt_fixed(eb_metric(r, "secs"), 3, b, sizeof(b)), "",
                        eb_fmt_fixed(eb_metric(r, "cpu_s_per_gb"), 2, c, sizeof(c)),
                        eb_fmt_fixed(eb_metric(r, "gb_per_s_min"), 2, d, sizeof(d)),
                        eb_fmt_fixed(eb_metric(r, "gb_per_s_max"), 2, why, sizeof(why)));
        }
        if (head)
                fprintf(f, "  (cpsync: /bin/cp SRC DST, then fsync of DST, timed; the engine's "
                           "server fsyncs before its rename)\n");
}

/* One row of the sparse table: lockfree or pipe at a gap ("b2b" for back to back) and place. */
static void sparse_row(FILE *f, const char *gap, const char *place, const eb_result_t *r,
                       const char *impl, double ratio)
{
        char b[6][24], why[300];
        fprintf(f, "  %-6s %-10s %-9s", gap, place, impl);
        const char *bad = not_ok(r, why, sizeof(why));
        if (r == NULL || bad) {
                fprintf(f, " %s\n", bad ? bad : "-");
                return;
        }
        double late = eb_metric(r, "late");
        fprintf(f, " %8s %8s %8s %8s %7.0f %6s %9s\n", eb_fmt_us(eb_metric(r, "p50_ns"), b[0], 24),
                eb_fmt_us(eb_metric(r, "p90_ns"), b[1], 24),
                eb_fmt_us(eb_metric(r, "p99_ns"), b[2], 24),
                eb_fmt_us(eb_metric(r, "max_ns"), b[3], 24), eb_metric(r, "n"),
                isnan(late) ? "-" : eb_fmt_fixed(late, 0, b[4], 24),
                isnan(ratio) ? "" : eb_fmt_x(ratio, b[5], 24));
}

static void print_sparse(const eb_run_t *run, FILE *f)
{
        bool any = any_group(run, "sparse");
        for (int p = 1; p < 3; p++)
                any |= eb_findf(run, "rtt/lockfree/b2b/%s", eb_places[p]) != NULL ||
                       eb_findf(run, "rtt/pipe/b2b/%s", eb_places[p]) != NULL;
        if (!any)
                return;
        fprintf(f, "\nSPARSE AND PINNED ROUND TRIPS, microseconds (64 B on one stream; engine at "
                   "its defaults: a worker per\n  CPU but one, default spin, the client's default "
                   "waiting; pipe: blocking. One request, its reply, then sleep\n  until the "
                   "next is due (b2b: no sleep). samecore: server and client on CPU 0; "
                   "crosscore: server\n  on CPU 0, client on CPU 1; late: trips that ended "
                   "after the next was due)\n");
        fprintf(f, "  %-6s %-10s %-9s %8s %8s %8s %8s %7s %6s %9s\n", "gap", "place", "impl", "p50",
                "p90", "p99", "max", "n", "late", "lf/pipe");
        for (int g = -1; g < 3; g++)
                for (int p = g < 0 ? 1 : 0; p < 3; p++) {
                        char gap[16];
                        const eb_result_t *lf, *pp;
                        if (g < 0) {
                                snprintf(gap, sizeof(gap), "b2b");
                                lf = eb_findf(run, "rtt/lockfree/b2b/%s", eb_places[p]);
                                pp = eb_findf(run, "rtt/pipe/b2b/%s", eb_places[p]);
                        } else {
                                eb_gap_name(eb_sparse_gaps[g], gap, sizeof(gap));
                                lf = eb_findf(run, "sparse/lockfree/%s/%s", gap, eb_places[p]);
                                pp = eb_findf(run, "sparse/pipe/%s/%s", gap, eb_places[p]);
                        }
                        if (lf == NULL && pp == NULL)
                                continue;
                        double ratio = eb_ratio(eb_metric(lf, "p50_ns"), eb_metric(pp, "p50_ns"));
                        if (lf)
                                sparse_row(f, gap, eb_places[p], lf, "lockfree", ratio);
                        if (pp)
                                sparse_row(f, gap, eb_places[p], pp, "pipe", NAN);
                }
}

static void print_scale(const eb_run_t *run, FILE *f)
{
        if (!any_group(run, "scale"))
                return;
        fprintf(f, "\nMANY STREAMS ON ONE CLIENT (engine defaults; 64-B messages over all N "
                   "streams as in tput/; opens\n  and closes one after another, timed over all "
                   "N; open last 10%%: the rate with ~N open)\n");
        fprintf(f, "  %7s %10s %9s %10s %13s %9s %9s %10s %8s\n", "streams", "msg/s", "/1 stream",
                "opens/s", "last 10% /s", "open s", "close s", "closes/s", "seg MiB");
        const eb_result_t *one = eb_find(run, "scale/lockfree/1s");
        for (int i = 0; i < run->n; i++) {
                const eb_result_t *r = &run->r[i];
                if (strcmp(r->group, "scale") != 0)
                        continue;
                char a[8][24], why[300];
                const char *bad = not_ok(r, why, sizeof(why));
                if (bad) {
                        fprintf(f, "  %7u %s\n", r->streams, bad);
                        continue;
                }
                fprintf(f, "  %7u %10s %9s %10s %13s %9s %9s %10s %8.0f\n", r->streams,
                        eb_fmt_rate(eb_metric(r, "msgs_per_s"), a[0], 24),
                        eb_fmt_x(eb_ratio(eb_metric(r, "msgs_per_s"), eb_metric(one, "msgs_per_s")),
                                 a[1], 24),
                        eb_fmt_rate(eb_metric(r, "open_per_s"), a[2], 24),
                        eb_fmt_rate(eb_metric(r, "open_last_per_s"), a[3], 24),
                        eb_fmt_fixed(eb_metric(r, "open_secs"), 4, a[4], 24),
                        eb_fmt_fixed(eb_metric(r, "close_secs"), 4, a[5], 24),
                        eb_fmt_rate(eb_metric(r, "close_per_s"), a[6], 24),
                        eb_metric(r, "segment_bytes") / (1 << 20));
        }
}

static void print_idle(const eb_run_t *run, FILE *f)
{
        if (!any_group(run, "idle"))
                return;
        fprintf(f, "\nIDLE SERVER (engine defaults; wake-ups = context switches of all its "
                   "threads over the window,\n  after 0.5 s to settle; by thread: main, then the "
                   "others in the order they started)\n");
        fprintf(f, "  %-26s %11s %8s %8s %8s %7s  %s\n", "cell", "wake-ups/s", "wake-ups",
                "window s", "CPU ms", "threads", "by thread");
        for (int i = 0; i < run->n; i++) {
                const eb_result_t *r = &run->r[i];
                if (strcmp(r->group, "idle") != 0)
                        continue;
                char a[24], why[300];
                const char *bad = not_ok(r, why, sizeof(why));
                if (bad) {
                        fprintf(f, "  %-26s %s\n", r->name, bad);
                        continue;
                }
                fprintf(f, "  %-26s %11s %8.0f %8.2f %8.2f %7.0f  %s\n", r->name,
                        eb_fmt_fixed(eb_metric(r, "wakeups_per_s"), 1, a, sizeof(a)),
                        eb_metric(r, "wakeups"), eb_metric(r, "window_s"),
                        eb_metric(r, "cpu_s") * 1e3, eb_metric(r, "threads"), r->note);
        }
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
                        const eb_result_t *r =
                            eb_findf(run, "openclose/%s", t ? "mutex" : "lockfree");
                        if (r == NULL)
                                continue;
                        const char *bad = not_ok(r, why, sizeof(why));
                        if (bad) {
                                fprintf(f, "  %-9s %s\n", r->impl, bad);
                                continue;
                        }
                        fprintf(f, "  %-9s %10s %9s %9s %9s\n", r->impl,
                                eb_fmt_rate(eb_metric(r, "ops_per_s"), a, sizeof(a)),
                                eb_fmt_us(eb_metric(r, "p50_ns"), b, sizeof(b)),
                                eb_fmt_us(eb_metric(r, "p99_ns"), c, sizeof(c)),
                                t ? ""
                                  : eb_fmt_x(eb_ratio(eb_metric(r, "ops_per_s"),
                                                      eb_mval(run, "ops_per_s", "openclose/mutex")),
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
                                const eb_result_t *r = eb_findf(run, "arena/%s/%dt", kind, th);
                                if (r == NULL)
                                        continue;
                                const char *bad = not_ok(r, why, sizeof(why));
                                if (bad) {
                                        fprintf(f, "  %-9s %-7d %s\n", kind, th, bad);
                                        continue;
                                }
                                fprintf(f, "  %-9s %-7d %16s %9s\n", kind, th,
                                        eb_fmt_rate(eb_metric(r, "pairs_per_s"), a, sizeof(a)),
                                        k ? ""
                                          : eb_fmt_x(eb_ratio(eb_metric(r, "pairs_per_s"),
                                                              eb_mval(run, "pairs_per_s",
                                                                      "arena/mutex/%dt", th)),
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
        eb_target_t t[EB_MAX_TARGETS];
        int n = eb_targets(run, t);
        fprintf(f, "\nTARGETS (measured in this run; ratios of cells of this run)\n");
        fprintf(f, "  %-76s %10s %12s  %s\n", "target", "measured", "need", "verdict");
        for (int i = 0; i < n; i++) {
                char a[24], b[32], c[24];
                if (t[i].fmt) {
                        snprintf(b, sizeof(b), "%s %s",
                                 t[i].at_most ? "<=" : ">=", t[i].fmt(t[i].need, c, sizeof(c)));
                        t[i].fmt(t[i].value, a, sizeof(a));
                        if (isnan(t[i].value))
                                snprintf(a, sizeof(a), "n/a");
                } else {
                        snprintf(b, sizeof(b), "%s %.2f", t[i].at_most ? "<=" : ">=", t[i].need);
                        eb_fmt_x(t[i].value, a, sizeof(a));
                }
                fprintf(f, "  %-76s %10s %12s  %s\n", t[i].what, a, b, t[i].verdict);
                fprintf(f, "    %s: %s\n", t[i].id, t[i].detail);
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
                "0-byte round trip. Nothing is pinned. Except: sparse/, b2b, scale/ and\n  idle/ "
                "run the engine's defaults (a worker per CPU but one, default spin and buffer\n"
                "  classes) and sparse/ and b2b are placed on CPUs as their names say.\n",
                o->workers, (unsigned long long)(o->seg_bytes >> 20), o->min_shift, o->max_shift);
        fprintf(f,
                "load: other processes used %.0f%% of the CPUs during the run, the hypervisor "
                "stole %.0f%%%s\n",
                run->foreign * 100, run->steal * 100,
                run->foreign > 0.05 ? " -- the machine was NOT idle: figures are noisy, compare "
                                      "ratios, rerun"
                                    : "");
        print_rtt(run, f);
        print_sparse(run, f);
        print_tput(run, f);
        print_scale(run, f);
        print_xfer(run, f);
        print_misc(run, f);
        print_idle(run, f);
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
