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
                "after a clean stop, 1 if it cannot serve, 2 on bad usage or options.\n",
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
        sigaddset(&set, SIGHUP); /* the terminal went away: stop cleanly, as for SIGTERM */
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
        while ((sig = sigtimedwait(&set, NULL, &second)) < 0) {
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
                if (sigtimedwait(&set, NULL, &grace) > 0)
                        break;
        }
        eng_server_stop(srv); /* ends what is left: clients see the error, temp files go */
        eng_xfer_server_free(x);
        eng_log(ENG_LOG_INFO, NULL, "stopped; segment %s removed", o.name);
        eng_opts_free(&o);
        return failed ? 1 : 0;
}
