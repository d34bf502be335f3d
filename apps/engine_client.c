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
#include <shmengine/proto.h>

struct job {
        const eng_opts_stream_t *os;
        eng_stream_t *st; /* NULL until a record was free for it */
        eng_xfer_send_t *x;
        const char *name;
        uint64_t size, sent; /* kept when the transfer is over */
        uint64_t t0, t1, last_move;
        char why[400];
        bool done, failed;
};

/* SIGINT/SIGTERM: every wait of the engine returns soon after (cfg.interrupt). */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
        interrupted = sig;
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
                "usage: engine-client [-c FILE] [--wait S] ID...\n"
                "       engine-client [-c FILE] [--wait S] --ping N [--payload BYTES]\n"
                "\n"
                "Send the files of the given stream ids (from the options file) to engine-server,\n"
                "all at once (as many as the segment has records for; the rest start as records\n"
                "free up). Exit status 0 only if every file was delivered and verified; 1 if any\n"
                "failed; 2 on bad usage or options; 128+N when stopped by signal N.\n"
                "\n"
                "  -c, --config FILE  options file (default ./options.xml)\n"
                "  -w, --wait S       wait up to S seconds for a server that is not there yet\n"
                "                     (default 1: a server started at the same moment is found)\n"
                "  -p, --ping N       N round trips on one stream; prints latency percentiles\n"
                "      --payload B    bytes carried by each ping (default 0)\n"
                "  -q, --quiet        no progress display\n"
                "  -h, --help         this text\n"
                "  -V, --version      version\n");
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return x < y ? -1 : x > y;
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
                eng_log(ENG_LOG_ERROR, NULL, "cannot open a stream: %s", eng_strerror(rc));
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
                eng_log(ENG_LOG_ERROR, NULL, "ping failed: %s", eng_strerror(rc));
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
        uint64_t now = eng_now_ns();
        for (size_t i = 0; i < n; i++) {
                struct job *j = &jobs[i];
                uint64_t size = j->x ? eng_xfer_send_size(j->x) : j->size;
                uint64_t sent = j->x ? eng_xfer_send_acked(j->x) : j->sent;
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

/* The log line of a job that is over: INFO delivered, ERROR failed (the run fails). */
static void log_end(const struct job *j)
{
        double s = (double)(j->t1 - j->t0) / 1e9;
        double mbs = s > 0 ? (double)j->sent / s / 1e6 : 0;
        if (j->done)
                eng_log(ENG_LOG_INFO,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", j->os->id), ENG_LF_STR("name", j->name),
                                       ENG_LF_U64("bytes", j->size), ENG_LF_FIX("seconds", s, 3),
                                       ENG_LF_FIX("rate", mbs, 1)),
                        "delivered and verified");
        else
                eng_log(ENG_LOG_ERROR,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", j->os->id), ENG_LF_STR("name", j->name),
                                       ENG_LF_U64("bytes", j->sent), ENG_LF_U64("size", j->size),
                                       ENG_LF_FIX("seconds", s, 3), ENG_LF_STR("error", j->why)),
                        "transfer FAILED");
}

/* A job is over: record when, say so (unless on a terminal), give its stream back at once
 * (its record may be what a queued job is waiting for). */
static void job_end(struct job *j, bool done, const char *why, bool log)
{
        j->done = done;
        j->failed = !done;
        j->t1 = eng_now_ns();
        if (!done && why != NULL && why != j->why)
                snprintf(j->why, sizeof(j->why), "%s", why);
        if (j->x != NULL) {
                j->size = eng_xfer_send_size(j->x);
                j->sent = eng_xfer_send_acked(j->x);
                eng_xfer_send_free(j->x); /* before the stream: it gives back a pending loan */
                j->x = NULL;
        }
        if (log)
                log_end(j);
        if (j->st != NULL) {
                /* A delivered stream closes in order; a failed one is given up at once (the
                 * server drops what is left of it). */
                if (done)
                        eng_stream_close(j->st);
                else
                        eng_stream_abort(j->st);
                j->st = NULL;
        }
}

static int run_transfers(eng_client_t *c, const eng_opts_t *o, struct job *jobs, size_t n,
                         bool quiet)
{
        bool tty = !quiet && isatty(STDERR_FILENO);
        bool log = !tty && !quiet;
        for (size_t i = 0; i < n; i++) {
                const char *slash = strrchr(jobs[i].os->file, '/');
                jobs[i].name = slash ? slash + 1 : jobs[i].os->file;
                jobs[i].t0 = eng_now_ns(); /* again when it gets its record */
        }
        draw(jobs, n, tty, true);
        uint64_t last_draw = eng_now_ns();
        uint64_t timeout = (uint64_t)o->timeout_s * 1000000000ull;
        uint64_t last_open = eng_now_ns();     /* the last time a queued job got a record */
        size_t open = n, queued = n, next = 0; /* next: the first job that may still be queued */
        uint32_t records = eng_client_max_records(c);
        while (open > 0) {
                uint32_t t = eng_client_ticket(c);
                bool moved = false;
                uint64_t now = eng_now_ns();
                if (interrupted) {
                        for (size_t i = 0; i < n; i++)
                                if (!jobs[i].done && !jobs[i].failed)
                                        job_end(&jobs[i], false, "interrupted", log);
                        break;
                }
                /* Start queued jobs while the segment has records on offer (in the order given). */
                while (next < n && queued > 0) {
                        struct job *j = &jobs[next];
                        if (j->failed || j->st != NULL) {
                                next++;
                                continue;
                        }
                        /* The next record is on offer microseconds after a claim: wait for
                         * it briefly rather than a whole round of the loop. */
                        int rc = eng_stream_open_timed(c, j->os->id, 2, &j->st);
                        if (rc == -EAGAIN || rc == -ETIMEDOUT) {
                                if (now > last_open && now - last_open > timeout) {
                                        char why[200];
                                        snprintf(why, sizeof(why),
                                                 "no stream record became free for %u s (the "
                                                 "segment holds %u records, in use by this and "
                                                 "other clients)",
                                                 o->timeout_s, records);
                                        job_end(j, false, why, log);
                                        open--;
                                        queued--;
                                        next++;
                                        continue;
                                }
                                break;
                        }
                        queued--;
                        next++;
                        j->t0 = j->last_move = last_open = now;
                        if (rc == 0)
                                rc = eng_xfer_send_new(j->st, j->os->file, NULL, o->chunk, &j->x,
                                                       j->why, sizeof(j->why));
                        else
                                snprintf(j->why, sizeof(j->why), "cannot open a stream: %s%s%s",
                                         eng_strerror(rc), *eng_errmsg() ? ": " : "", eng_errmsg());
                        if (rc != 0) {
                                job_end(j, false, NULL, log);
                                open--;
                                continue;
                        }
                        moved = true;
                        if (log)
                                eng_log(
                                    ENG_LOG_INFO,
                                    ENG_LOG_FIELDS(ENG_LF_U64("stream", j->os->id),
                                                   ENG_LF_STR("name", j->name),
                                                   ENG_LF_STR("file", j->os->file),
                                                   ENG_LF_U64("bytes", eng_xfer_send_size(j->x))),
                                    "sending");
                }
                for (size_t i = 0; i < n; i++) {
                        struct job *j = &jobs[i];
                        if (j->done || j->failed || j->x == NULL)
                                continue;
                        int rc = eng_xfer_send_step(j->x);
                        if (rc > 0) {
                                moved = true;
                                j->last_move = now;
                        } else if (rc == 0 && now - j->last_move > timeout) {
                                eng_xfer_send_fail(j->x, ETIMEDOUT, "no progress");
                        }
                        eng_xfer_state_t s = eng_xfer_send_state(j->x);
                        if (s == ENG_XFER_DONE || s == ENG_XFER_FAILED) {
                                job_end(j, s == ENG_XFER_DONE, eng_xfer_send_why(j->x), log);
                                open--;
                                moved = true;
                                last_open = now; /* a record goes back: queued jobs wait afresh */
                        }
                }
                if (tty && eng_now_ns() - last_draw > 100 * 1000000ull) {
                        draw(jobs, n, tty, false);
                        last_draw = eng_now_ns();
                }
                if (moved || open == 0)
                        continue;
                /* Queued jobs look for a record on offer every 10 ms (an offer does not wake
                 * the session); otherwise the engine wakes us when a stream moves. */
                int rc = eng_client_wait(c, t, queued > 0 ? 10 : 100);
                if (rc == -EPIPE) {
                        for (size_t i = 0; i < n; i++) {
                                struct job *j = &jobs[i];
                                if (j->done || j->failed)
                                        continue;
                                if (j->x != NULL)
                                        eng_xfer_send_fail(j->x, EPIPE, "server gone");
                                else {
                                        job_end(j, false, "server gone", log);
                                        open--;
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
        uint32_t ping = 0, payload = 0, wait_s = 1;
        bool quiet = false;
        eng_log_init("engine-client");
        static const struct option lo[] = {
            {"config", required_argument, NULL, 'c'}, {"wait", required_argument, NULL, 'w'},
            {"ping", required_argument, NULL, 'p'},   {"payload", required_argument, NULL, 'P'},
            {"quiet", no_argument, NULL, 'q'},        {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "c:w:p:qhV", lo, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        config = optarg;
                        break;
                case 'w':
                        if (eng_parse_u32(optarg, 0, 86400, &wait_s) != 0) {
                                fprintf(stderr,
                                        "engine-client: --wait wants seconds in 0..86400, not "
                                        "'%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'p':
                        if (eng_parse_u32(optarg, 1, 100000000, &ping) != 0) {
                                fprintf(stderr,
                                        "engine-client: --ping wants a count in 1..100000000, "
                                        "not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'P':
                        if (eng_parse_u32(optarg, 0, UINT32_MAX, &payload) != 0) {
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
                        printf("engine-client (shmengine) %s\n", eng_version());
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
        }
        if (n > 1) { /* an id given twice: sort a copy of the ids (n may be large) */
                uint32_t *ids = malloc(n * sizeof(*ids));
                if (ids == NULL) {
                        status = 1;
                        goto out;
                }
                for (size_t i = 0; i < n; i++)
                        ids[i] = jobs[i].os->id;
                qsort(ids, n, sizeof(*ids), cmp_u32);
                for (size_t i = 1; i < n; i++) {
                        if (ids[i] == ids[i - 1]) {
                                fprintf(stderr, "engine-client: stream id %u given twice\n",
                                        ids[i]);
                                status = 2;
                                break;
                        }
                }
                free(ids);
                if (status != 0)
                        goto out;
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        eng_client_t *c;
        eng_client_cfg_t cc = {.spin = o.spin,
                               .timeout_ms = o.timeout_s * 1000,
                               .wait_ms = wait_s * 1000,
                               .owner_uid = o.owner_uid == (uid_t)-1 ? 0 : o.owner_uid,
                               .mode = o.seg_mode,
                               .interrupt = &interrupted};
        int rc = eng_client_attach(o.name, &cc, &c);
        if (rc != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot reach the server on %s: %s", o.name,
                        *eng_errmsg() ? eng_errmsg() : eng_strerror(rc));
                status = interrupted ? 128 + interrupted : 1;
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
                        uint64_t size = j->size;
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
        }
        eng_client_detach(c);
        if (interrupted)
                status = 128 + interrupted;
out:
        free(jobs);
        eng_opts_free(&o);
        return status;
}
