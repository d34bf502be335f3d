/*
 * engine-client: sends the files of the given stream ids (from options.xml) to engine-server,
 * all streams concurrently, driven by one thread (the engine's multi-stream wait). Exit 0 only
 * if every file was delivered and verified by the server.
 *
 * --ping N runs N round trips through one stream and prints latency percentiles instead.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "options.h"
#include "proto.h"

struct job {
        const eng_opts_stream_t *os;
        eng_stream_t *st;
        eng_xfer_send_t *x;
        const char *name;
        uint64_t t0, t1, last_move;
        char why[400];
        bool done, failed;
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
        (void)sig;
        interrupted = 1;
}

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void human(double b, char *out, size_t n)
{
        const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
        int i = 0;
        while (b >= 1024 && i < 4) {
                b /= 1024;
                i++;
        }
        snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: engine-client [-c FILE] ID...\n"
                "       engine-client [-c FILE] --ping N [--payload BYTES]\n"
                "\n"
                "Send the files of the given stream ids (from the options file) to engine-server,\n"
                "all at once. Exit status 0 only if every file was delivered and verified.\n"
                "\n"
                "  -c, --config FILE  options file (default ./options.xml)\n"
                "  -p, --ping N       N round trips on one stream; prints latency percentiles\n"
                "      --payload B    bytes carried by each ping (default 0)\n"
                "  -q, --quiet        no progress display\n"
                "  -h, --help         this text\n"
                "  -V, --version      version\n");
}

/* A whole decimal number in lo..hi, nothing else. */
static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end || *s == '-' || *s == '+' || v < lo || v > hi)
                return -1;
        *out = (uint32_t)v;
        return 0;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static int run_ping(eng_client_t *c, uint32_t n, uint32_t payload)
{
        eng_stream_t *st;
        int rc = eng_stream_open(c, 0, &st);
        if (rc != 0) {
                fprintf(stderr, "engine-client: cannot open a stream: %s\n", eng_strerror(rc));
                return 1;
        }
        if (payload > eng_client_max_loan(c)) {
                fprintf(stderr,
                        "engine-client: --payload %u is larger than the largest buffer of this "
                        "segment (%llu bytes)\n",
                        payload, (unsigned long long)eng_client_max_loan(c));
                eng_stream_close(st);
                return 2;
        }
        uint64_t *rtt = calloc(n, sizeof(*rtt));
        if (rtt == NULL) {
                eng_stream_close(st);
                return 1;
        }
        uint32_t warm = n / 10 < 1000 ? n / 10 : 1000;
        rc = eng_ping(st, warm, payload, rtt, -1);
        if (rc == 0)
                rc = eng_ping(st, n, payload, rtt, -1);
        eng_stream_close(st);
        if (rc != 0) {
                fprintf(stderr, "engine-client: ping failed: %s\n", eng_strerror(rc));
                free(rtt);
                return 1;
        }
        qsort(rtt, n, sizeof(*rtt), cmp_u64);
        double sum = 0;
        for (uint32_t i = 0; i < n; i++)
                sum += (double)rtt[i];
#define PCT(p) (rtt[(size_t)((double)(n - 1) * (p))] / 1000.0)
        printf("ping: %u round trips, %u-byte payload\n", n, payload);
        printf("  min %.2f us  p50 %.2f us  p99 %.2f us  p99.9 %.2f us  max %.2f us  mean %.2f "
               "us\n",
               rtt[0] / 1000.0, PCT(0.50), PCT(0.99), PCT(0.999), rtt[n - 1] / 1000.0,
               sum / n / 1000.0);
#undef PCT
        free(rtt);
        return 0;
}

static void draw(struct job *jobs, size_t n, bool tty, bool first)
{
        if (!tty)
                return;
        if (!first)
                fprintf(stderr, "\033[%zuA", n);
        struct winsize ws;
        int cols = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col : 80;
        uint64_t now = now_ns();
        for (size_t i = 0; i < n; i++) {
                struct job *j = &jobs[i];
                uint64_t size = j->x ? eng_xfer_send_size(j->x) : 0;
                uint64_t sent = j->x ? eng_xfer_send_acked(j->x) : 0;
                double secs = (double)((j->done || j->failed ? j->t1 : now) - j->t0) / 1e9;
                double rate = secs > 0 ? (double)sent / secs : 0;
                char a[32], b[32], r[32];
                human((double)sent, a, sizeof(a));
                human((double)size, b, sizeof(b));
                human(rate, r, sizeof(r));
                double pct = size ? 100.0 * (double)sent / (double)size : 100.0;
                char eta[32] = "";
                if (!j->done && !j->failed && rate > 0)
                        snprintf(eta, sizeof(eta), "ETA %.1f s", (double)(size - sent) / rate);
                char line[512]; /* fits the widest row the format can give (484) */
                snprintf(line, sizeof(line), "[%4u] %-24.24s %10s / %-10s %5.1f%% %10s/s %s",
                         j->os->id, j->name, a, b, pct, r,
                         j->done     ? "verified"
                         : j->failed ? "FAILED"
                                     : eta);
                /* A line that wrapped would take two rows and the redraw (n rows up) would
                 * overwrite the wrong ones: clip to the terminal's width. */
                fprintf(stderr, "\033[2K%.*s\n", cols - 1, line);
        }
}

static int run_transfers(eng_client_t *c, const eng_opts_t *o, struct job *jobs, size_t n,
                         bool quiet)
{
        bool tty = !quiet && isatty(STDERR_FILENO);
        size_t open = 0;
        for (size_t i = 0; i < n; i++) {
                struct job *j = &jobs[i];
                j->t0 = j->last_move = now_ns();
                int rc = eng_stream_open(c, j->os->id, &j->st);
                if (rc == 0)
                        rc = eng_xfer_send_new(j->st, j->os->file, NULL, o->chunk, &j->x, j->why,
                                               sizeof(j->why));
                else
                        snprintf(j->why, sizeof(j->why), "cannot open a stream: %s",
                                 eng_strerror(rc));
                if (rc != 0) {
                        j->failed = true;
                        j->t1 = now_ns();
                        continue;
                }
                const char *slash = strrchr(j->os->file, '/');
                j->name = slash ? slash + 1 : j->os->file;
                open++;
                if (!tty && !quiet)
                        fprintf(stderr, "engine-client: stream %u: sending %s (%llu bytes)\n",
                                j->os->id, j->os->file,
                                (unsigned long long)eng_xfer_send_size(j->x));
        }
        for (size_t i = 0; i < n; i++)
                if (jobs[i].name == NULL)
                        jobs[i].name = jobs[i].os->file;
        draw(jobs, n, tty, true);
        uint64_t last_draw = now_ns();
        uint64_t timeout = (uint64_t)o->timeout_s * 1000000000ull;
        while (open > 0) {
                uint32_t t = eng_client_ticket(c);
                bool moved = false;
                uint64_t now = now_ns();
                for (size_t i = 0; i < n; i++) {
                        struct job *j = &jobs[i];
                        if (j->done || j->failed)
                                continue;
                        int rc = eng_xfer_send_step(j->x);
                        if (rc > 0) {
                                moved = true;
                                j->last_move = now;
                        } else if (rc == 0 && now - j->last_move > timeout) {
                                eng_xfer_send_fail(j->x, ETIMEDOUT, "no progress");
                        }
                        if (interrupted)
                                eng_xfer_send_fail(j->x, EINTR, "interrupted");
                        eng_xfer_state_t s = eng_xfer_send_state(j->x);
                        if (s == ENG_XFER_DONE || s == ENG_XFER_FAILED) {
                                j->done = s == ENG_XFER_DONE;
                                j->failed = !j->done;
                                j->t1 = now_ns();
                                if (j->failed)
                                        snprintf(j->why, sizeof(j->why), "%s",
                                                 eng_xfer_send_why(j->x));
                                open--;
                                if (!tty && !quiet)
                                        fprintf(stderr, "engine-client: stream %u: %s%s\n",
                                                j->os->id,
                                                j->done ? "delivered and verified" : "FAILED: ",
                                                j->done ? "" : j->why);
                        }
                }
                if (tty && now_ns() - last_draw > 100 * 1000000ull) {
                        draw(jobs, n, tty, false);
                        last_draw = now_ns();
                }
                if (moved || open == 0)
                        continue;
                int rc = eng_client_wait(c, t, 100);
                if (rc == -EPIPE) {
                        for (size_t i = 0; i < n; i++) {
                                struct job *j = &jobs[i];
                                if (!j->done && !j->failed) {
                                        eng_xfer_send_fail(j->x, EPIPE, "server gone");
                                }
                        }
                }
        }
        draw(jobs, n, tty, false);
        return 0;
}

int main(int argc, char **argv)
{
        const char *config = "options.xml";
        uint32_t ping = 0, payload = 0;
        bool quiet = false;
        static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                           {"ping", required_argument, NULL, 'p'},
                                           {"payload", required_argument, NULL, 'P'},
                                           {"quiet", no_argument, NULL, 'q'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "c:p:qhV", lo, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        config = optarg;
                        break;
                case 'p':
                        if (parse_u32(optarg, 1, 100000000, &ping) != 0) {
                                fprintf(stderr,
                                        "engine-client: --ping wants a count in 1..100000000, "
                                        "not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'P':
                        if (parse_u32(optarg, 0, UINT32_MAX, &payload) != 0) {
                                fprintf(stderr,
                                        "engine-client: --payload wants a byte count, not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'q':
                        quiet = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("engine-client %s\n", ENG_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (ping == 0 && optind >= argc) {
                fprintf(stderr, "engine-client: no stream ids given\n");
                usage(stderr);
                return 2;
        }
        char err[1024];
        eng_opts_t o;
        if (eng_opts_load(config, &o, err, sizeof(err)) != 0) {
                fprintf(stderr, "engine-client: %s\n", err);
                return 2;
        }
        int status = 0;
        size_t n = (size_t)(argc - optind);
        struct job *jobs = calloc(n ? n : 1, sizeof(*jobs));
        for (size_t i = 0; i < n; i++) {
                char *end;
                const char *a = argv[optind + (int)i];
                unsigned long id = strtoul(a, &end, 10);
                if (*a == '\0' || *end || id == 0 || id > INT32_MAX) {
                        fprintf(stderr, "engine-client: '%s' is not a stream id\n", a);
                        status = 2;
                        goto out;
                }
                jobs[i].os = eng_opts_find(&o, (uint32_t)id);
                if (jobs[i].os == NULL) {
                        fprintf(stderr, "engine-client: stream id %lu is not in %s\n", id, config);
                        status = 2;
                        goto out;
                }
                for (size_t k = 0; k < i; k++)
                        if (jobs[k].os == jobs[i].os) {
                                fprintf(stderr, "engine-client: stream id %lu given twice\n", id);
                                status = 2;
                                goto out;
                        }
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        eng_client_t *c;
        eng_client_cfg_t cc = {.spin = o.spin, .timeout_ms = o.timeout_s * 1000};
        int rc = eng_client_attach(o.name, &cc, &c);
        if (rc != 0) {
                fprintf(stderr, "engine-client: cannot reach the server on %s: %s\n", o.name,
                        *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                status = 1;
                goto out;
        }
        if (ping) {
                status = run_ping(c, ping, payload);
        } else {
                run_transfers(c, &o, jobs, n, quiet);
                uint64_t total = 0, t0 = UINT64_MAX, t1 = 0;
                size_t ndone = 0;
                for (size_t i = 0; i < n; i++) {
                        struct job *j = &jobs[i];
                        uint64_t size = j->x ? eng_xfer_send_size(j->x) : 0;
                        double s = (double)(j->t1 - j->t0) / 1e9;
                        if (j->done) {
                                printf(
                                    "stream %u %s: %llu bytes in %.3f s (%.1f MB/s): delivered and "
                                    "verified\n",
                                    j->os->id, j->name, (unsigned long long)size, s,
                                    s > 0 ? (double)size / s / 1e6 : 0.0);
                                total += size;
                                ndone++;
                        } else {
                                printf("stream %u %s: FAILED: %s\n", j->os->id, j->name, j->why);
                                status = 1;
                        }
                        t0 = j->t0 < t0 ? j->t0 : t0;
                        t1 = j->t1 > t1 ? j->t1 : t1;
                }
                double s = (double)(t1 - t0) / 1e9;
                printf("total: %llu bytes in %.3f s (%.1f MB/s), %zu of %zu streams delivered\n",
                       (unsigned long long)total, s, s > 0 ? (double)total / s / 1e6 : 0.0, ndone,
                       n);
                for (size_t i = 0; i < n; i++) {
                        eng_xfer_send_free(jobs[i].x);
                        /* A delivered stream closes in order; a failed one is given up at
                         * once (the server drops what is left of it). */
                        if (jobs[i].st && jobs[i].done)
                                eng_stream_close(jobs[i].st);
                        else if (jobs[i].st)
                                eng_stream_abort(jobs[i].st);
                }
        }
        eng_client_detach(c);
out:
        free(jobs);
        eng_opts_free(&o);
        return status;
}
