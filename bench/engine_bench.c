/*
 * engine-bench: throughput and latency of the engine's lock-free transport against its mutex
 * baseline, with reference rows (spin floor, memcpy, pipe, UNIX socket, TCP loopback,
 * read/write copy, Boost message_queue) measured in the same run. docs/BENCH.md describes the
 * workloads, the output and the JSON schema.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "engine.h"
#include "options.h" /* eng_parse_size */

static void usage(FILE *f)
{
        fprintf(
            f,
            "usage: engine-bench [--quick] [--filter SUBSTR]... [--json FILE] [--report DIR]\n"
            "\n"
            "Measure the shared-memory engine (lock-free transport vs the mutex baseline)\n"
            "with server and clients in separate processes, next to reference rows measured\n"
            "in the same run: spinning on one shared word (the round-trip floor), memcpy,\n"
            "pipe, UNIX socket, TCP loopback, read/write file copy, Boost message_queue.\n"
            "\n"
            "  -q, --quick          fewer iterations, shorter runs, a 256 MiB file (~1 min)\n"
            "  -f, --filter SUBSTR  run only workloads whose name contains SUBSTR\n"
            "                       (repeatable: any may match), e.g. rtt/lockfree, tput, /64B;\n"
            "                       the other cells of a target a selected cell feeds run too\n"
            "  -l, --list           print the workload names and exit\n"
            "  -j, --json FILE      every raw figure and histogram as JSON (docs/BENCH.md)\n"
            "  -r, --report DIR     latency report: DIR/index.html with gnuplot plots\n"
            "      --file-size N    bytes of the file-transfer file (default 1GiB, quick "
            "256MiB)\n"
            "      --dir DIR        tmpfs directory for files (default /dev/shm)\n"
            "      --disk-dir DIR   directory on a disk for the xfer/disk/ cells (default\n"
            "                       $TMPDIR if it is not tmpfs, else /var/tmp)\n"
            "      --rounds N       alternating rounds of the xfer/disk/ cells, each keeps\n"
            "                       its median (default 5, quick 3)\n"
            "      --workers N      server worker threads (default 1: one core serves,\n"
            "                       the other runs the client)\n"
            "      --seg-size N     segment bytes (default 64MiB; scale/ cells take at\n"
            "                       least 16 KiB per stream)\n"
            "      --streams LIST   stream counts of the scale/ cells, comma-separated\n"
            "                       (1..65000; default 1,100,1000,10000)\n"
            "      --retries N      run a cell again (up to N times) when other processes\n"
            "                       used > 10%% of the CPUs meanwhile (default 2, quick 0)\n"
            "  -V, --version        print the version and exit\n"
            "  -h, --help           this text\n"
            "\n"
            "Progress goes to stderr, the tables to stdout. Exit status: 0 if every cell\n"
            "ran (n/a cells included), 1 if any failed, 2 on bad usage or when no cell is\n"
            "selected (nothing is written then). Targets that MISS do not change the exit\n"
            "status.\n");
}

/* A size option's argument (eng_parse_size: 4096, 256KiB, 64M, 1G), at least min bytes.
 * false, with a message, if it is malformed, does not fit in 64 bits or is too small. */
static bool size_arg(const char *opt, const char *arg, uint64_t min, uint64_t *out)
{
        uint64_t v;
        char m[16];
        if (eng_parse_size(arg, &v) != 0) {
                fprintf(stderr,
                        "engine-bench: %s: '%s' is not a size below 2^64 bytes (digits with an "
                        "optional K, M or G, e.g. 64MiB)\n",
                        opt, arg);
                return false;
        }
        if (v < min) {
                eb_size_name(min, m, sizeof(m));
                fprintf(stderr, "engine-bench: %s wants >= %s\n", opt, m);
                return false;
        }
        *out = v;
        return true;
}

/* --streams 1,100,1000: the scale/ cells' stream counts, each 1..65000 (a segment holds at
 * most 65536 records, the client's session included), at most 16, sorted, no repeats. */
static bool streams_arg(const char *arg, eb_opts_t *o)
{
        uint32_t v[16];
        int n = 0;
        const char *p = arg;
        for (;;) {
                char *end;
                errno = 0;
                unsigned long k = strtoul(p, &end, 10);
                if (end == p || errno || k < 1 || k > 65000 || (*end != ',' && *end != '\0') ||
                    *p == '-' || *p == '+' || *p == ' ') {
                        fprintf(stderr,
                                "engine-bench: --streams wants a comma list of counts in "
                                "1..65000, e.g. 1,100,1000 (got '%s')\n",
                                arg);
                        return false;
                }
                bool dup = false;
                for (int i = 0; i < n; i++)
                        dup |= v[i] == (uint32_t)k;
                if (!dup) {
                        if (n == 16) {
                                fprintf(stderr, "engine-bench: --streams: at most 16 counts\n");
                                return false;
                        }
                        v[n++] = (uint32_t)k;
                }
                if (*end == '\0')
                        break;
                p = end + 1;
        }
        for (int i = 1; i < n; i++) /* insertion sort */
                for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
                        uint32_t t = v[j];
                        v[j] = v[j - 1];
                        v[j - 1] = t;
                }
        memcpy(o->scale_streams, v, sizeof(v[0]) * (size_t)n);
        o->nscale = n;
        return true;
}

static void on_signal(int sig)
{
        (void)sig;
        eb_interrupted = 1;
}

static int group_rank(const char *g)
{
        static const char *order[] = {"rtt",       "sparse", "tput",  "scale", "xfer",
                                      "openclose", "idle",   "arena", "memcpy"};
        if (strcmp(g, "floor") == 0)
                return 0; /* runs among the spinning 0-byte round trips: see impl_key */
        for (int i = 0; i < (int)(sizeof(order) / sizeof(order[0])); i++)
                if (strcmp(g, order[i]) == 0)
                        return i;
        return 99;
}

/* Round trips: spinning, then blocking, then at the engine's defaults (b2b). */
static int mode_rank(const char *m)
{
        static const char *order[] = {"spin", "block", "default"};
        for (int i = 0; i < 3; i++)
                if (strcmp(m, order[i]) == 0)
                        return i;
        return 3;
}

/* Order within a comparable set. The spin floor brackets the lock-free 0-byte round trip
 * (measured just before and just after it): the vCPUs of this VM move between faster and
 * slower placements over time, and the ratio to the floor is only meaningful if both were
 * measured in the same placement. */
static int impl_key(const eb_cell_t *c)
{
        if (strcmp(c->group, "floor") == 0)
                return strstr(c->name, "after") ? 1 : -1;
        static const char *order[] = {"lockfree", "mutex",  "pipe", "unix", "tcp",
                                      "boost",    "rwcopy", "cfr",  "cat",  "cpsync"};
        for (int i = 0; i < 10; i++)
                if (strcmp(c->impl, order[i]) == 0)
                        return 2 * i;
        return 99;
}

/* Comparable cells run next to each other in time (the machine's noise drifts). */
static int cell_cmp(const void *pa, const void *pb)
{
        const eb_cell_t *a = pa, *b = pb;
        int d = group_rank(a->group) - group_rank(b->group);
        if (d)
                return d;
        if (strcmp(a->mode, b->mode) != 0 &&
            (strcmp(a->group, "rtt") == 0 || strcmp(a->group, "floor") == 0) &&
            mode_rank(a->mode) != mode_rank(b->mode))
                return mode_rank(a->mode) - mode_rank(b->mode);
        if (a->streams != b->streams)
                return a->streams < b->streams ? -1 : 1;
        if (a->payload != b->payload)
                return a->payload < b->payload ? -1 : 1;
        if (a->sub != b->sub) /* gap and placement: the engine next to its pipe */
                return a->sub - b->sub;
        d = impl_key(a) - impl_key(b);
        return d ? d : a->seq - b->seq;
}

static bool selected(const eb_opts_t *o, const char *name)
{
        if (o->nfilters == 0)
                return true;
        for (int i = 0; i < o->nfilters; i++)
                if (strstr(name, o->filters[i]))
                        return true;
        return false;
}

static void machine(eb_run_t *run)
{
        snprintf(run->cpu, sizeof(run->cpu), "unknown");
        FILE *f = fopen("/proc/cpuinfo", "r");
        if (f) {
                char line[512];
                while (fgets(line, sizeof(line), f)) {
                        if (strncmp(line, "model name", 10) == 0) {
                                char *p = strchr(line, ':');
                                if (p) {
                                        p++;
                                        while (*p == ' ' || *p == '\t')
                                                p++;
                                        p[strcspn(p, "\n")] = '\0';
                                        snprintf(run->cpu, sizeof(run->cpu), "%s", p);
                                }
                                break;
                        }
                }
                fclose(f);
        }
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        run->cores = n > 0 ? (int)n : 1;
        struct utsname u;
        if (uname(&u) == 0) {
                snprintf(run->kernel, sizeof(run->kernel), "%s %s %s", u.sysname, u.release,
                         u.machine);
                snprintf(run->host, sizeof(run->host), "%s", u.nodename);
        }
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(run->started, sizeof(run->started), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void summary(const eb_result_t *r, char *out, size_t n)
{
        if (r->status == EB_NA) {
                snprintf(out, n, "n/a (%s)", r->reason);
                return;
        }
        if (r->status == EB_FAIL) {
                snprintf(out, n, "FAILED: %s", r->reason);
                return;
        }
        double v;
        if (strcmp(r->group, "idle") == 0) {
                snprintf(out, n, "%.1f wake-ups/s (%.0f in %.1f s), CPU %.1f ms",
                         eb_metric(r, "wakeups_per_s"), eb_metric(r, "wakeups"),
                         eb_metric(r, "window_s"), eb_metric(r, "cpu_s") * 1e3);
        } else if (strcmp(r->group, "scale") == 0) {
                snprintf(out, n, "%.3f M msg/s  open %.1f k/s  close all %.3f s",
                         eb_metric(r, "msgs_per_s") / 1e6, eb_metric(r, "open_per_s") / 1e3,
                         eb_metric(r, "close_secs"));
        } else if (strcmp(r->group, "xfer") == 0) {
                snprintf(out, n, "%.3f GB/s  CPU %.2f s/GB", eb_metric(r, "gb_per_s"),
                         eb_metric(r, "cpu_s_per_gb"));
        } else if (r->hist) {
                snprintf(out, n, "p50 %.2f us  p99 %.2f us  (n=%.0f)", eb_metric(r, "p50_ns") / 1e3,
                         eb_metric(r, "p99_ns") / 1e3, eb_metric(r, "n"));
        } else if (strcmp(r->group, "tput") == 0) {
                snprintf(out, n, "%.3f M msg/s  %.3f GB/s", eb_metric(r, "msgs_per_s") / 1e6,
                         eb_metric(r, "gb_per_s"));
        } else if (!isnan(v = eb_metric(r, "pairs_per_s"))) {
                snprintf(out, n, "%.2f M alloc+free/s", v / 1e6);
        } else if (!isnan(v = eb_metric(r, "gb_per_s"))) {
                snprintf(out, n, "%.3f GB/s", v);
        } else if (!isnan(v = eb_metric(r, "gb_per_s_1MiB"))) {
                snprintf(out, n, "1 MiB: %.1f GB/s", v);
        } else {
                snprintf(out, n, "ok");
        }
}

#define BUSY 0.10 /* a cell is suspicious when others used more than this share of the CPUs */

static void run_one(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r, const char *files_why,
                    int cores)
{
        eb_cpu_sample_t c0, c1;
        eb_cpu_sample(&c0);
        uint64_t t0 = eng_now_ns();
        if (strcmp(c->group, "xfer") == 0 && files_why[0]) {
                r->status = EB_FAIL;
                snprintf(r->reason, sizeof(r->reason), "%s", files_why);
        } else {
                /* Every cell starts with host-backed free memory (see eb_memory_warm). */
                eb_memory_warm(o->quick ? 128u << 20 : 256u << 20);
                c->run(c, o, r);
        }
        if (eb_interrupted && r->status == EB_OK) {
                r->status = EB_FAIL;
                snprintf(r->reason, sizeof(r->reason), "interrupted");
        }
        r->secs = (double)(eng_now_ns() - t0) / 1e9;
        eb_cpu_sample(&c1);
        double steal;
        eb_cpu_foreign(&c0, &c1, cores, &r->foreign, &steal);
}

/* Whether path is on a file system that keeps files in memory (tmpfs, ramfs): 1, 0, or -errno
 * if it cannot be told. */
static int in_memory_fs(const char *path)
{
        struct statfs f;
        if (statfs(path, &f) != 0)
                return -errno;
        return f.f_type == TMPFS_MAGIC || f.f_type == RAMFS_MAGIC;
}

/* The xfer/disk/ cells' directory: --disk-dir, else $TMPDIR unless it is in memory, else
 * /var/tmp. Sets o->disk_dir, and o->disk_why when the cells cannot run there (not a disk, or
 * not usable): they are n/a then, saying why. */
static void disk_dir_pick(eb_opts_t *o, const char *given)
{
        const char *tmp = getenv("TMPDIR");
        if (given)
                o->disk_dir = given;
        else if (tmp && *tmp && in_memory_fs(tmp) == 0)
                o->disk_dir = tmp;
        else
                o->disk_dir = "/var/tmp";
        int m = in_memory_fs(o->disk_dir);
        if (m < 0)
                eb_errf(o->disk_why, sizeof(o->disk_why), "disk directory %s: %s", o->disk_dir,
                        strerror(-m));
        else if (m == 1)
                eb_errf(o->disk_why, sizeof(o->disk_why),
                        "%s is on tmpfs, not a disk%s: give --disk-dir a directory on a disk",
                        o->disk_dir, given ? "" : " (as $TMPDIR, if set, is)");
        snprintf(o->disk_workdir, sizeof(o->disk_workdir), "%s/%s", o->disk_dir, o->tag);
}

/* A result's identity fields, from its cell. */
static void result_init(eb_result_t *r, const eb_cell_t *c, const eb_opts_t *o)
{
        memset(r, 0, sizeof(*r));
        snprintf(r->name, sizeof(r->name), "%s", c->name);
        snprintf(r->group, sizeof(r->group), "%s", c->group);
        snprintf(r->impl, sizeof(r->impl), "%s", c->impl);
        snprintf(r->mode, sizeof(r->mode), "%s", c->mode);
        snprintf(r->place, sizeof(r->place), "%s", c->place);
        r->payload = strcmp(c->group, "xfer") == 0 ? o->file_bytes : c->payload;
        r->streams = c->streams;
}

static int gbs_cmp(const void *pa, const void *pb)
{
        double a = eb_metric(pa, "gb_per_s"), b = eb_metric(pb, "gb_per_s");
        return a < b ? -1 : a > b;
}

#define ALT_MAX 4 /* cells in one alternating set */

/*
 * The selected cells that share cs->v[i0].alt, run as one set in o->rounds alternating rounds
 * (round 1 in table order, round 2 reversed, ...), so that a change in the machine's speed
 * (this VM's phases, the page cache, the disk's cache) hits every cell of the set alike. Each
 * cell keeps its median round by GB/s (of an even count, the lower middle one) with every
 * round's rate in its note, and `rounds`, `gb_per_s_min`, `gb_per_s_max`; a round that fails
 * or is n/a is the set's last (the other cells still run it), and its cell reports it. Results go
 * to run->r from *k on; the cells are marked done. Returns how many of them failed.
 */
static int run_alternating(eb_cells_t *cs, int i0, const bool *sel, bool *done, const eb_opts_t *o,
                           eb_run_t *run, int *k, int nsel, const char *files_why)
{
        int idx[ALT_MAX], m = 0, failed = 0, R = o->rounds;
        for (int j = i0; j < cs->n && m < ALT_MAX; j++)
                if (sel[j] && !done[j] && cs->v[j].alt == cs->v[i0].alt)
                        idx[m++] = j;
        eb_result_t *rr = calloc((size_t)(m * R), sizeof(*rr));
        int ran[ALT_MAX] = {0}, kk[ALT_MAX];
        if (rr == NULL)
                abort();
        for (int w = 0; w < m; w++) {
                done[idx[w]] = true;
                kk[w] = (*k)++;
        }
        bool stop = false;
        for (int q = 0; q < R && !stop && !eb_interrupted; q++)
                for (int s = 0; s < m && !eb_interrupted; s++) {
                        int w = q % 2 ? m - 1 - s : s;
                        eb_cell_t *c = &cs->v[idx[w]];
                        eb_result_t *t = &rr[w * R + q];
                        result_init(t, c, o);
                        fprintf(stderr, "[%3d/%d] %-31s (round %d/%d) ", kk[w] + 1, nsel, c->name,
                                q + 1, R);
                        fflush(stderr);
                        run_one(c, o, t, files_why, run->cores);
                        char sum[400], busy[64] = "";
                        summary(t, sum, sizeof(sum));
                        if (t->foreign > 0.05)
                                snprintf(busy, sizeof(busy),
                                         "; other processes used %.0f%% of the CPUs",
                                         t->foreign * 100);
                        fprintf(stderr, "%s  [%.1f s%s]\n", sum, t->secs, busy);
                        ran[w] = q + 1;
                        if (t->status != EB_OK) /* the round ends, for the others too */
                                stop = true;
                }
        for (int w = 0; w < m; w++) {
                eb_result_t *v = &rr[w * R], *r = &run->r[kk[w]];
                int n = ran[w], bad = -1;
                for (int q = 0; q < n && bad < 0; q++)
                        if (v[q].status != EB_OK)
                                bad = q;
                char note[sizeof(r->note)] = "GB/s by round:";
                for (int q = 0; q < n; q++) {
                        size_t l = strlen(note);
                        if (v[q].status == EB_OK)
                                snprintf(note + l, sizeof(note) - l, " %.3f",
                                         eb_metric(&v[q], "gb_per_s"));
                        else
                                snprintf(note + l, sizeof(note) - l, " %s",
                                         v[q].status == EB_NA ? "n/a" : "failed");
                }
                if (n == 0) {
                        result_init(r, &cs->v[idx[w]], o);
                        r->status = EB_FAIL;
                        snprintf(r->reason, sizeof(r->reason), "interrupted");
                } else if (bad >= 0) {
                        *r = v[bad];
                        v[bad].hist = NULL;
                } else {
                        double lo = eb_metric(&v[0], "gb_per_s"), hi = lo;
                        for (int q = 1; q < n; q++) {
                                double g = eb_metric(&v[q], "gb_per_s");
                                lo = g < lo ? g : lo;
                                hi = g > hi ? g : hi;
                        }
                        qsort(v, (size_t)n, sizeof(*v), gbs_cmp);
                        *r = v[(n - 1) / 2];
                        v[(n - 1) / 2].hist = NULL;
                        eb_metric_set(r, "rounds", n);
                        eb_metric_set(r, "gb_per_s_min", lo);
                        eb_metric_set(r, "gb_per_s_max", hi);
                }
                r->attempts = n;
                snprintf(r->note, sizeof(r->note), "%s", note);
                for (int q = 0; q < n; q++)
                        free(v[q].hist);
                if (r->status == EB_FAIL)
                        failed++;
        }
        free(rr);
        return failed;
}

int main(int argc, char **argv)
{
        eb_opts_t o = {.dir = "/dev/shm",
                       .seg_bytes = 64ull << 20,
                       .workers = 1,
                       .min_shift = 7, /* the engine's default (engine.h) */
                       .max_shift = 21,
                       .spin_budget = 1u << 30};
        uint64_t file_bytes = 0;
        bool list = false;
        enum {
                OPT_FILE = 256,
                OPT_DIR,
                OPT_WORKERS,
                OPT_SEG,
                OPT_RETRIES,
                OPT_STREAMS,
                OPT_DISK_DIR,
                OPT_ROUNDS
        };
        int retries = -1, rounds = 0;
        const char *disk_dir = NULL;
        static const struct option lo[] = {{"quick", no_argument, NULL, 'q'},
                                           {"filter", required_argument, NULL, 'f'},
                                           {"list", no_argument, NULL, 'l'},
                                           {"json", required_argument, NULL, 'j'},
                                           {"report", required_argument, NULL, 'r'},
                                           {"file-size", required_argument, NULL, OPT_FILE},
                                           {"dir", required_argument, NULL, OPT_DIR},
                                           {"workers", required_argument, NULL, OPT_WORKERS},
                                           {"seg-size", required_argument, NULL, OPT_SEG},
                                           {"retries", required_argument, NULL, OPT_RETRIES},
                                           {"streams", required_argument, NULL, OPT_STREAMS},
                                           {"disk-dir", required_argument, NULL, OPT_DISK_DIR},
                                           {"rounds", required_argument, NULL, OPT_ROUNDS},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
        int ch;
        uint64_t v;
        while ((ch = getopt_long(argc, argv, "qf:lj:r:hV", lo, NULL)) != -1) {
                switch (ch) {
                case 'q':
                        o.quick = true;
                        break;
                case 'f':
                        if (o.nfilters == 16) {
                                fprintf(stderr, "engine-bench: at most 16 filters\n");
                                return 2;
                        }
                        o.filters[o.nfilters++] = optarg;
                        break;
                case 'l':
                        list = true;
                        break;
                case 'j':
                        o.json = optarg;
                        break;
                case 'r':
                        o.report = optarg;
                        break;
                case OPT_FILE:
                        if (!size_arg("--file-size", optarg, 8u << 20, &file_bytes))
                                return 2;
                        break;
                case OPT_DIR:
                        o.dir = optarg;
                        break;
                case OPT_WORKERS:
                        if (eng_parse_size(optarg, &v) != 0 || v == 0 || v > 64) {
                                fprintf(stderr, "engine-bench: --workers wants 1..64\n");
                                return 2;
                        }
                        o.workers = (uint32_t)v;
                        break;
                case OPT_SEG:
                        if (!size_arg("--seg-size", optarg, 16u << 20, &o.seg_bytes))
                                return 2;
                        break;
                case OPT_RETRIES:
                        if (eng_parse_size(optarg, &v) != 0 || v > 10) {
                                fprintf(stderr, "engine-bench: --retries wants 0..10\n");
                                return 2;
                        }
                        retries = (int)v;
                        break;
                case OPT_STREAMS:
                        if (!streams_arg(optarg, &o))
                                return 2;
                        break;
                case OPT_DISK_DIR:
                        disk_dir = optarg;
                        break;
                case OPT_ROUNDS:
                        if (eng_parse_size(optarg, &v) != 0 || v < 1 || v > 15) {
                                fprintf(stderr, "engine-bench: --rounds wants 1..15\n");
                                return 2;
                        }
                        rounds = (int)v;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("engine-bench (shmengine) %s\n", eng_version());
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "engine-bench: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        if (o.quick) {
                o.rtt_spin_n = 20000;
                o.rtt_block_n = 2000;
                o.rtt_ms = 150;
                o.tput_ms = 80;
                o.misc_ms = 100;
                o.file_bytes = 256ull << 20;
        } else {
                o.rtt_spin_n = 1000000;
                o.rtt_block_n = 100000;
                o.rtt_ms = 2000;
                o.tput_ms = 500;
                o.misc_ms = 500;
                o.file_bytes = 1ull << 30;
        }
        o.retries = retries >= 0 ? retries : o.quick ? 0 : 2;
        o.rounds = rounds ? rounds : o.quick ? 3 : 5;
        o.idle_ms = o.quick ? 1500 : 3000;
        o.sparse_budget_ms = o.quick ? 800 : 2500;
        if (o.nscale == 0) {
                static const uint32_t def[] = {1, 100, 1000, 10000};
                o.nscale = 4;
                memcpy(o.scale_streams, def, sizeof(def));
        }
        if (file_bytes)
                o.file_bytes = file_bytes & ~((8ull << 20) - 1);
        o.xfer_chunk = (1u << 20) - 64; /* one 1 MiB block, its 64-byte header included */
        snprintf(o.tag, sizeof(o.tag), "eb-%d", (int)getpid());
        snprintf(o.workdir, sizeof(o.workdir), "%s/%s", o.dir, o.tag);
        disk_dir_pick(&o, disk_dir);

        eb_cells_t cs = {0};
        eb_ref_cells_floor(&cs, &o);
        eb_engine_cells(&cs, &o);
        eb_ref_cells_rtt(&cs, &o);
        eb_ref_cells_tput(&cs, &o);
        eb_boost_cells(&cs, &o);
        eb_ref_cells_xfer(&cs, &o);
        eb_ref_cells_misc(&cs, &o);
        for (int i = 0; i < cs.n; i++)
                cs.v[i].seq = i;
        qsort(cs.v, (size_t)cs.n, sizeof(*cs.v), cell_cmp);
        int nsel = 0, added = 0;
        bool need_files = false, need_disk = false;
        bool *sel0 = calloc((size_t)cs.n + 1, sizeof(bool));
        bool *sel = calloc((size_t)cs.n + 1, sizeof(bool));
        if (sel0 == NULL || sel == NULL)
                return 1;
        for (int i = 0; i < cs.n; i++) {
                cs.v[i].seq = i;
                sel0[i] = sel[i] = selected(&o, cs.v[i].name);
        }
        /* A filter that picks a cell a target reads runs the target's other cells too, so
         * that no target is n/a only because the filter left its other half out. */
        if (o.nfilters > 0)
                added = eb_targets_expand(&cs, sel0, sel);
        for (int i = 0; i < cs.n; i++)
                if (sel[i]) {
                        nsel++;
                        if (strcmp(cs.v[i].group, "xfer") == 0)
                                need_files = true;
                        need_disk |= cs.v[i].disk;
                }
        if (nsel == 0) {
                fprintf(stderr, "engine-bench: no workload matches the filter (see --list); "
                                "nothing run, nothing written\n");
                return 2;
        }
        if (list) {
                for (int i = 0; i < cs.n; i++)
                        if (sel[i])
                                printf("%s\n", cs.v[i].name);
                if (added)
                        fprintf(stderr,
                                "engine-bench: %d of these are not matched by the filter but "
                                "feed a target a matched one feeds\n",
                                added);
                return 0;
        }

        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        eb_run_t run = {.o = &o};
        machine(&run);
        run.r = calloc((size_t)nsel, sizeof(*run.r));
        if (run.r == NULL)
                return 1;
        uint64_t t_start = eng_now_ns();
        fprintf(stderr, "engine-bench: %d workloads%s; %s, %d cores, %s\n", nsel,
                o.quick ? " (quick mode)" : "", run.cpu, run.cores, run.kernel);
        if (added)
                fprintf(stderr,
                        "engine-bench: %d of them not matched by the filter: the targets of the "
                        "matched ones need them\n",
                        added);
        char files_why[400] = "";
        if (need_files) {
                char sz[16];
                eb_size_name(o.file_bytes, sz, sizeof(sz));
                fprintf(stderr, "engine-bench: creating the transfer files (%s + 8 x %s/8) in %s\n",
                        sz, sz, o.workdir);
                if (eb_files_prepare(&o, files_why, sizeof(files_why)) != 0)
                        fprintf(stderr, "engine-bench: %s (file transfer cells will fail)\n",
                                files_why);
        }
        if (need_disk && !o.disk_why[0] && mkdir(o.disk_workdir, 0700) != 0)
                eb_errf(o.disk_why, sizeof(o.disk_why), "cannot create %s: %s", o.disk_workdir,
                        strerror(errno));
        if (need_disk)
                fprintf(stderr, "engine-bench: xfer/disk/ cells write to %s%s%s\n", o.disk_workdir,
                        o.disk_why[0] ? ": n/a, " : "", o.disk_why);
        bool *done = calloc((size_t)cs.n + 1, sizeof(bool));
        if (done == NULL)
                return 1;
        int k = 0, failed = 0;
        eb_cpu_sample_t run0, run1;
        eb_cpu_sample(&run0);
        for (int i = 0; i < cs.n && !eb_interrupted; i++) {
                eb_cell_t *c = &cs.v[i];
                if (!sel[i] || done[i])
                        continue;
                if (c->alt) {
                        failed += run_alternating(&cs, i, sel, done, &o, &run, &k, nsel, files_why);
                        continue;
                }
                eb_result_t *r = &run.r[k++];
                result_init(r, c, &o);
                const eb_result_t id = *r; /* identity fields only */
                for (int attempt = 0;; attempt++) {
                        eb_result_t t = id;
                        fprintf(stderr, "[%3d/%d] %-31s ", k, nsel, c->name);
                        if (attempt)
                                fprintf(stderr, "(again, %d/%d) ", attempt, o.retries);
                        fflush(stderr);
                        run_one(c, &o, &t, files_why, run.cores);
                        char s[400];
                        summary(&t, s, sizeof(s));
                        char busy[64] = "";
                        if (t.foreign > 0.05)
                                snprintf(busy, sizeof(busy),
                                         "; other processes used %.0f%% of the CPUs",
                                         t.foreign * 100);
                        fprintf(stderr, "%s  [%.1f s%s]\n", s, t.secs, busy);
                        t.attempts = attempt + 1;
                        /* keep the least disturbed measurement */
                        if (attempt == 0 || t.foreign < r->foreign) {
                                free(r->hist);
                                *r = t;
                        } else {
                                free(t.hist);
                                r->attempts = attempt + 1;
                        }
                        if (r->foreign <= BUSY || attempt >= o.retries || eb_interrupted ||
                            r->status != EB_OK)
                                break;
                }
                if (r->status == EB_FAIL)
                        failed++;
        }
        run.n = k;
        eb_cpu_sample(&run1);
        eb_cpu_foreign(&run0, &run1, run.cores, &run.foreign, &run.steal);
        run.secs = (double)(eng_now_ns() - t_start) / 1e9;
        if (need_files) {
                char src[600];
                snprintf(src, sizeof(src), "%s/src", o.workdir);
                eb_rmdir_files(src);
                eb_rmdir_files(o.workdir);
        }
        if (need_disk)
                eb_rmdir_files(o.disk_workdir);
        free(done);
        if (eb_interrupted)
                fprintf(stderr, "engine-bench: interrupted; reporting what was measured\n");

        free(sel0);
        free(sel);
        if (run.n == 0) {
                /* interrupted before the first cell: nothing to report, no empty files */
                fprintf(stderr, "engine-bench: no cell ran; nothing written\n");
                free(run.r);
                free(cs.v);
                return eb_interrupted ? 130 : 2;
        }
        eb_print_tables(&run, stdout);
        fflush(stdout);
        int rc = failed ? 1 : 0;
        if (o.json) {
                if (eb_write_json(&run, o.json) != 0) {
                        fprintf(stderr, "engine-bench: cannot write %s: %s\n", o.json,
                                strerror(errno));
                        rc = 1;
                } else {
                        fprintf(stderr, "engine-bench: wrote %s\n", o.json);
                }
        }
        if (o.report) {
                if (eb_write_report(&run, o.report) != 0)
                        rc = 1;
        }
        for (int i = 0; i < run.n; i++)
                free(run.r[i].hist);
        free(run.r);
        free(cs.v);
        return eb_interrupted ? 130 : rc;
}
