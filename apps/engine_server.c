/*
 * engine-server: receives files from engine-client processes through the shared segment
 * configured in options.xml. Serves until SIGINT, SIGTERM or SIGHUP; then refuses new files,
 * gives the transfers in flight a grace period to finish, ends the rest with a clear error
 * (their temporary files are removed) and unlinks the segment. A second signal stops at once.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "options.h"
#include <shmengine/proto.h>

#define GRACE_S 5

/* One line per finished or failed transfer. A failed one is WARN: the server carries on. */
static void report(const eng_xfer_result_t *r, void *ctx)
{
        (void)ctx;
        double s = (double)r->ns / 1e9;
        double mbs = s > 0 ? (double)r->received / s / 1e6 : 0;
        /* name and why are eng_log_escape renderings already (proto.h) */
        if (r->err == 0)
                eng_log(ENG_LOG_INFO,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", r->stream_id),
                                       ENG_LF_I64("pid", r->pid), ENG_LF_ESC("name", r->name),
                                       ENG_LF_U64("bytes", r->size), ENG_LF_FIX("seconds", s, 3),
                                       ENG_LF_FIX("rate", mbs, 1)),
                        "file received and verified");
        else
                eng_log(ENG_LOG_WARN,
                        ENG_LOG_FIELDS(ENG_LF_U64("stream", r->stream_id),
                                       ENG_LF_I64("pid", r->pid), ENG_LF_ESC("name", r->name),
                                       ENG_LF_U64("bytes", r->received),
                                       ENG_LF_U64("size", r->size), ENG_LF_FIX("seconds", s, 3),
                                       ENG_LF_FIX("rate", mbs, 1), ENG_LF_ESC("error", r->why)),
                        "transfer FAILED");
}

/* SIGUSR1: what engine-stat shows, in the log: one line per open stream, one for the arena and
 * the engine's counters. Read through the same read-only snapshot as engine-stat. */
static void log_summary(const char *name)
{
        eng_stat_view_t *v;
        eng_stat_t st;
        int rc = eng_stat_open(name, 0, &v);
        if (rc == 0) {
                rc = eng_stat_take(v, &st);
                eng_stat_close(v);
        }
        if (rc != 0) {
                eng_log(ENG_LOG_WARN, NULL, "SIGUSR1: no summary: %s", eng_errmsg());
                return;
        }
        uint32_t open = 0;
        for (uint32_t i = 0; i < st.nrecs; i++) {
                const eng_stat_rec_t *r = &st.recs[i];
                if (r->session || strcmp(r->state, "open") != 0)
                        continue;
                open++;
                eng_log(
                    ENG_LOG_INFO,
                    ENG_LOG_FIELDS(
                        ENG_LF_U64("stream", r->user_id), ENG_LF_I64("pid", r->pid),
                        ENG_LF_U64("record", r->index), ENG_LF_STR("sched", r->sched),
                        ENG_LF_U64("c2s_fill", r->c2s_fill), ENG_LF_U64("s2c_fill", r->s2c_fill),
                        ENG_LF_U64("c2s_msgs", r->c2s_msgs), ENG_LF_U64("c2s_bytes", r->c2s_bytes),
                        ENG_LF_U64("s2c_msgs", r->s2c_msgs), ENG_LF_U64("s2c_bytes", r->s2c_bytes),
                        ENG_LF_FIX("age", (double)r->age_ns / 1e9, 3)),
                    "summary: open stream");
        }
        eng_log(ENG_LOG_INFO,
                ENG_LOG_FIELDS(
                    ENG_LF_STR("kind", st.arena_kind), ENG_LF_U64("records_used", st.rec_used),
                    ENG_LF_U64("records_free", st.rec_free),
                    ENG_LF_U64("buf_used_bytes", st.buf_used_bytes),
                    ENG_LF_U64("buf_free_bytes", st.buf_free_bytes),
                    ENG_LF_U64("alloc_failed", st.alloc_failed), ENG_LF_U64("rec_top", st.rec_top),
                    ENG_LF_U64("buf_bottom", st.buf_bottom), ENG_LF_U64("problems", st.nproblems)),
                "summary: arena");
        eng_log(ENG_LOG_INFO,
                ENG_LOG_FIELDS(ENG_LF_U64("streams", open), ENG_LF_U64("clients", st.nclients),
                               ENG_LF_U64("opens", st.opens), ENG_LF_U64("closes", st.closes),
                               ENG_LF_U64("ended", st.ended), ENG_LF_U64("aborts", st.aborts),
                               ENG_LF_U64("reclaims", st.reclaims), ENG_LF_U64("heals", st.heals),
                               ENG_LF_U64("refused", st.refused),
                               ENG_LF_FIX("uptime", (double)st.uptime_ns / 1e9, 3)),
                "summary: engine");
        eng_stat_free(&st);
}

/* The engine's own recovery work: dead clients reclaimed, the bootstrap mutex repaired. */
static void log_event(const char *msg, void *ctx)
{
        (void)ctx;
        eng_log(ENG_LOG_WARN, NULL, "%s", msg);
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: engine-server [-c FILE]\n"
                "\n"
                "Receive files from engine-client processes through shared memory.\n"
                "\n"
                "  -c, --config FILE  options file (default ./options.xml)\n"
                "  -h, --help         this text\n"
                "  -V, --version      version\n"
                "\n"
                "Stops on SIGINT, SIGTERM or SIGHUP: transfers in flight get %d s to finish,\n"
                "then fail cleanly (no partial file is left under a final name). Exit status 0\n"
                "after a clean stop, 1 if it cannot serve, 2 on bad usage or options.\n"
                "SIGUSR1 logs one line per open stream, one for the arena and one with the\n"
                "engine's counters (what engine-stat shows).\n",
                GRACE_S);
}

int main(int argc, char **argv)
{
        const char *config = "options.xml";
        eng_log_init("engine-server");
        static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "c:hV", lo, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        config = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("engine-server (shmengine) %s\n", eng_version());
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "engine-server: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        char err[1024];
        eng_opts_t o;
        if (eng_opts_load(config, &o, err, sizeof(err)) != 0) {
                fprintf(stderr, "engine-server: %s\n", err);
                return 2;
        }

        /* Signals are taken synchronously by the main thread; the engine's threads inherit the
         * mask. A file-size limit must fail a write (EFBIG), not kill the server. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);  /* the terminal went away: stop cleanly, as for SIGTERM */
        sigaddset(&set, SIGUSR1); /* log a summary of the segment (log_summary) */
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGXFSZ, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);

        eng_xfer_server_t *x;
        eng_xfer_server_cfg_t xc = {
            .outdir = o.outputpath, .file_mode = o.file_mode, .report = report};
        if (eng_xfer_server_new(&xc, &x, err, sizeof(err)) != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "%s", err);
                eng_opts_free(&o);
                return 1;
        }
        eng_server_cfg_t sc = {.name = o.name,
                               .size = o.size,
                               .mode = o.seg_mode,
                               .transport = o.transport,
                               .workers = o.workers,
                               .ring_depth = o.ring_depth,
                               .spin = o.spin};
        eng_xfer_server_hooks(x, &sc.hooks);
        sc.hooks.on_event = log_event;
        eng_server_t *srv;
        int rc = eng_server_start(&sc, &srv);
        if (rc != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot serve %s: %s%s%s", o.name, eng_strerror(rc),
                        *eng_errmsg() ? ": " : "", eng_errmsg());
                eng_xfer_server_free(x);
                eng_opts_free(&o);
                return 1;
        }
        eng_log(ENG_LOG_INFO, NULL, "serving %s (%llu MiB, %s, %u workers), writing to %s", o.name,
                (unsigned long long)(o.size >> 20),
                o.transport == ENG_TRANSPORT_MUTEX ? "mutex" : "lockfree", eng_server_workers(srv),
                o.outputpath);
        if (eng_xfer_server_stale_removed(x) > 0)
                eng_log(ENG_LOG_WARN, NULL,
                        "removed %u temporary file(s) that servers which died left in %s",
                        eng_xfer_server_stale_removed(x), o.outputpath);
        if (o.transport == ENG_TRANSPORT_MUTEX)
                eng_log(ENG_LOG_WARN, NULL,
                        "transport \"mutex\" is the benchmark baseline: its queues and arena are "
                        "process-shared pthread mutexes in the segment, so it trusts every process "
                        "that can write the segment (use \"lockfree\" with untrusted clients)");

        /* SIGSTOP + SIGCONT (Ctrl-Z, fg) make sigtimedwait fail with EINTR: not a stop. Wake
         * once a second to see whether the segment can still be served. */
        int sig;
        bool failed = false;
        struct timespec second = {.tv_sec = 1, .tv_nsec = 0};
        while ((sig = sigtimedwait(&set, NULL, &second)) < 0 || sig == SIGUSR1) {
                if (sig == SIGUSR1) {
                        log_summary(o.name);
                        continue;
                }
                if (errno == EAGAIN && eng_server_failed(srv)) {
                        failed = true;
                        break;
                }
        }
        if (failed)
                eng_log(ENG_LOG_ERROR, NULL, "the segment cannot be served any more: stopping");
        else
                eng_log(ENG_LOG_INFO, NULL, "%s: stopping",
                        sig == SIGINT   ? "SIGINT"
                        : sig == SIGHUP ? "SIGHUP"
                                        : "SIGTERM");
        eng_xfer_server_drain(x);
        struct timespec grace = {.tv_sec = 0, .tv_nsec = 50 * 1000000};
        for (int i = 0; i < GRACE_S * 20 && eng_xfer_server_active(x) > 0; i++) {
                if (i == 0)
                        eng_log(ENG_LOG_INFO, NULL,
                                "waiting up to %d s for %u transfer(s) in flight (signal again to "
                                "stop now)",
                                GRACE_S, eng_xfer_server_active(x));
                int g = sigtimedwait(&set, NULL, &grace);
                if (g == SIGUSR1)
                        log_summary(o.name);
                else if (g > 0)
                        break;
        }
        eng_server_stop(srv); /* ends what is left: clients see the error, temp files go */
        eng_xfer_server_free(x);
        eng_log(ENG_LOG_INFO, NULL, "stopped; segment %s removed", o.name);
        eng_opts_free(&o);
        return failed ? 1 : 0;
}
