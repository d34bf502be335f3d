/*
 * report_html.c - the report (--report DIR): gnuplot data files, plots.gp and the PNGs it
 * draws (latency by percentile, throughput by streams and by payload), and DIR/index.html
 * with the plots and the tables.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

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

#define EB_MAX_PLOTS 24

typedef struct plot_list {
        char png[EB_MAX_PLOTS][96];
        char caption[EB_MAX_PLOTS][200];
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
                                                  eb_findf(run, "rtt/%s/%s/%s", impl, modes[m], sz),
                                                  file, sizeof(file)) == 0) {
                                        snprintf(items[ni], sizeof(items[ni]),
                                                 "'%s' using 2:3 with lines lw 2 lc rgb '%s' "
                                                 "title '%s'",
                                                 file, gp_color(p), sz);
                                        ni++;
                                }
                        }
                        if (ni == 0 || pl->n >= EB_MAX_PLOTS)
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
                        for (size_t i = 0; i < sizeof(eb_msg_impls) / sizeof(eb_msg_impls[0]);
                             i++) {
                                char file[200];
                                if (write_lat_dat(dir,
                                                  eb_findf(run, "rtt/%s/%s/%s", eb_msg_impls[i],
                                                           modes[m], sz),
                                                  file, sizeof(file)) == 0) {
                                        snprintf(items[ni], sizeof(items[ni]),
                                                 "'%s' using 2:3 with lines lw 2 lc rgb '%s' "
                                                 "title '%s'",
                                                 file, gp_color((int)i), eb_msg_impls[i]);
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
                        if (ni == 0 || pl->n >= EB_MAX_PLOTS)
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
                                        double v = eb_mval(run, ys[y], "tput/%s/%us/%s", impl,
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
                if (ni == 0 || pl->n >= EB_MAX_PLOTS)
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
        const char *const *impl = eb_msg_impls;
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
                                double v = eb_mval(run, ys[y], "tput/%s/1s/%s", impl[i], sz);
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
                if (ni == 0 || pl->n >= EB_MAX_PLOTS)
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

/* Sparse round trips by percentile, one plot per placement: a curve per gap (and back to
 * back), the engine solid, the pipe dashed. */
static void plots_sparse(const eb_run_t *run, const char *dir, FILE *g, plot_list_t *pl)
{
        for (int p = 0; p < 3; p++) {
                char items[8][600];
                int ni = 0;
                for (int k = -1; k < 3; k++)
                        for (int i = 0; i < 2; i++) {
                                const char *impl = i ? "pipe" : "lockfree";
                                char gap[16], file[200];
                                const eb_result_t *r;
                                if (k < 0) {
                                        snprintf(gap, sizeof(gap), "b2b");
                                        r = eb_findf(run, "rtt/%s/b2b/%s", impl, eb_places[p]);
                                } else {
                                        eb_gap_name(eb_sparse_gaps[k], gap, sizeof(gap));
                                        r = eb_findf(run, "sparse/%s/%s/%s", impl, gap,
                                                     eb_places[p]);
                                }
                                if (write_lat_dat(dir, r, file, sizeof(file)) != 0)
                                        continue;
                                snprintf(items[ni], sizeof(items[ni]),
                                         "'%s' using 2:3 with lines lw 2 dt %d lc rgb '%s' "
                                         "title '%s %s'",
                                         file, i ? 2 : 1, gp_color(k + 1), impl, gap);
                                ni++;
                        }
                if (ni == 0 || pl->n >= EB_MAX_PLOTS)
                        continue;
                snprintf(pl->png[pl->n], sizeof(pl->png[0]), "lat-sparse-%s.png", eb_places[p]);
                snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                         "sparse round trips, 64 B, %s: engine defaults (solid) and pipe "
                         "(dashed), per gap",
                         eb_places[p]);
                fprintf(g, "set output '%s'\nset title '%s'\n", pl->png[pl->n], pl->caption[pl->n]);
                lat_axes(g);
                fprintf(g, "plot ");
                for (int i = 0; i < ni; i++)
                        fprintf(g, "%s%s", i ? ", \\\n     " : "", items[i]);
                fprintf(g, "\n");
                pl->n++;
        }
}

/* Many streams: messages/s, opens/s and closes/s against the stream count. */
static void plots_scale(const eb_run_t *run, const char *dir, FILE *g, plot_list_t *pl)
{
        char path[700];
        snprintf(path, sizeof(path), "%s/scale.dat", dir);
        FILE *d = fopen(path, "w");
        if (d == NULL)
                return;
        fprintf(d, "# streams, msgs/s, opens/s, closes/s\n");
        int pts = 0;
        for (int i = 0; i < run->n; i++) {
                const eb_result_t *r = &run->r[i];
                double v = eb_metric(r, "msgs_per_s");
                if (strcmp(r->group, "scale") != 0 || isnan(v))
                        continue;
                fprintf(d, "%u %.6g %.6g %.6g\n", r->streams, v, eb_metric(r, "open_per_s"),
                        eb_metric(r, "close_per_s"));
                pts++;
        }
        fclose(d);
        if (pts == 0 || pl->n >= EB_MAX_PLOTS)
                return;
        snprintf(pl->png[pl->n], sizeof(pl->png[0]), "scale.png");
        snprintf(pl->caption[pl->n], sizeof(pl->caption[0]),
                 "many streams on one client (engine defaults): rates against stream count");
        fprintf(g,
                "set output '%s'\nset title '%s'\nunset xtics\nset xtics auto\nset logscale x "
                "10\nset logscale y\nset grid\nset key outside right\nset xlabel 'streams'\n"
                "set ylabel 'per second'\nplot 'scale.dat' using 1:2 with linespoints lw 2 pt 7 "
                "lc rgb '%s' title '64-B messages/s', \\\n     'scale.dat' using 1:3 with "
                "linespoints lw 2 pt 7 lc rgb '%s' title 'opens/s', \\\n     'scale.dat' using "
                "1:4 with linespoints lw 2 pt 7 lc rgb '%s' title 'closes/s'\n",
                pl->png[pl->n], pl->caption[pl->n], gp_color(0), gp_color(1), gp_color(2));
        pl->n++;
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
        uint64_t end = eng_now_ns() + (uint64_t)timeout_s * 1000000000ull;
        int st;
        for (;;) {
                pid_t w = waitpid(pid, &st, WNOHANG);
                if (w == pid)
                        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
                if (eng_now_ns() > end) {
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
                        plots_sparse(run, dir, g, &pl);
                        plots_scale(run, dir, g, &pl);
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
