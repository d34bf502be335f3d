/*
 * echo_server.c - the smallest useful shmengine server.
 *
 *   echo-server [--name /seg] [--seconds N] [--workers N]
 *
 * Creates the segment, prints "ready /seg" on stdout once clients can attach, and answers
 * every request on every stream:
 *
 *   EX_ECHO  (0x0140) arg, optional buffer -> EX_ECHOED (0x0240) same arg, the same buffer back
 *   EX_STATS (0x0141)                      -> EX_STATS_REPLY (0x0241) a buffer with one line of
 *                                             text: what this stream has sent so far
 *
 * Runs until SIGINT or SIGTERM (or N seconds), then stops: every open stream ends (its client
 * sees -EPIPE) and the segment is unlinked. Exit status 0 after a clean stop, 1 if it cannot
 * serve, 2 on bad usage.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* sigtimedwait, pthread_sigmask */
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmengine/engine.h>

/* Command codes: requests from the client range, replies from the server range (engine.h). */
#define EX_ECHO        (ENG_CMD_CLIENT_MIN + 0x40) /* 0x0140 */
#define EX_STATS       (ENG_CMD_CLIENT_MIN + 0x41) /* 0x0141 */
#define EX_ECHOED      (ENG_CMD_SERVER_MIN + 0x40) /* 0x0240 */
#define EX_STATS_REPLY (ENG_CMD_SERVER_MIN + 0x41) /* 0x0241 */

/* What the server keeps per stream, behind eng_sstream_user(). Only the hooks of that stream
 * touch it, and the engine never runs them on two workers at once: no lock needed. */
struct stream_state {
        uint64_t msgs, bytes;
};

/* Totals over all streams: the hooks of different streams do run concurrently. */
static atomic_ullong total_streams, total_msgs;

static int on_open(eng_sstream_t *s, void *ctx)
{
        (void)ctx;
        struct stream_state *st = calloc(1, sizeof(*st));
        if (st == NULL)
                return -ENOMEM; /* refuse it: the client's next call on it gets this error */
        *eng_sstream_user(s) = st;
        atomic_fetch_add_explicit(&total_streams, 1, memory_order_relaxed);
        return 0;
}

/* Reply with a buffer the server loans itself: ownership passes to the client on success. */
static int send_stats(eng_sstream_t *s, const struct stream_state *st)
{
        char text[128];
        int n = snprintf(text, sizeof(text), "stream %u (pid %d): %llu echoes, %llu bytes",
                         eng_sstream_id(s), (int)eng_sstream_pid(s), (unsigned long long)st->msgs,
                         (unsigned long long)st->bytes);
        void *p;
        uint64_t off;
        int rc = eng_sstream_loan(s, (uint32_t)n + 1, &p, &off);
        if (rc != 0)
                return rc; /* -EAGAIN: arena full; ending the stream is this example's answer */
        memcpy(p, text, (size_t)n + 1);
        rc = eng_sstream_send(s, EX_STATS_REPLY, 0, off, (uint32_t)n + 1);
        if (rc != 0)
                eng_sstream_free(s, off); /* not sent: the loan is still ours to give back */
        return rc;
}

static int on_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        struct stream_state *st = *eng_sstream_user(s);
        switch (m->cmd) {
        case EX_ECHO: {
                /* m->data (m->len bytes) lies in the segment and belongs to the server until
                 * this hook returns, when the engine frees it - unless we pass it on. Here we
                 * pass the very block back: no copy. eng_sstream_send never blocks, and the
                 * engine keeps room for one reply per request. */
                int rc = eng_sstream_send(s, EX_ECHOED, m->arg, m->off, m->len);
                if (rc != 0)
                        return rc; /* ends the stream; the engine frees m->off */
                m->off = 0;        /* the block is the client's now: the engine must not free it */
                st->msgs++;
                st->bytes += m->len;
                atomic_fetch_add_explicit(&total_msgs, 1, memory_order_relaxed);
                return 0;
        }
        case EX_STATS:
                return send_stats(s, st);
        default:
                return -EBADMSG; /* an unknown request ends the stream with this error */
        }
}

/* Once per opened stream. err 0: the client closed it; -ECONNABORTED: it gave it up
 * (eng_stream_abort); -EPIPE: it died; -ESHUTDOWN: eng_server_stop; else the error on_msg
 * returned or a protocol error the engine found. */
static void on_close(eng_sstream_t *s, int err, void *ctx)
{
        (void)ctx;
        free(*eng_sstream_user(s));
        *eng_sstream_user(s) = NULL;
        if (err != 0 && err != -ECONNABORTED && err != -ESHUTDOWN)
                fprintf(stderr, "echo-server: stream %u of pid %d ended: %s\n", eng_sstream_id(s),
                        (int)eng_sstream_pid(s), eng_strerror(err));
}

/* The engine's own recovery work (a dead client reclaimed, ...): worth a log line. */
static void on_event(const char *msg, void *ctx)
{
        (void)ctx;
        fprintf(stderr, "echo-server: %s\n", msg);
}

static void usage(FILE *f)
{
        fprintf(f, "usage: echo-server [--name /seg] [--seconds N] [--workers N]\n"
                   "\n"
                   "Answer every EX_ECHO request with the same bytes, over shared memory.\n"
                   "Prints \"ready NAME\" when clients can attach; stops on SIGINT or SIGTERM.\n"
                   "\n"
                   "  --name /seg   segment name (default /shmengine-echo)\n"
                   "  --seconds N   stop by itself after N seconds (default 0: never)\n"
                   "  --workers N   worker threads (default 2; 0: one per CPU but one)\n"
                   "  --help        this text\n"
                   "  --version     version\n");
}

/* A whole decimal number in 0..max. */
static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || *s == '-' || v > max)
                return -1;
        *out = v;
        return 0;
}

int main(int argc, char **argv)
{
        const char *name = "/shmengine-echo";
        unsigned long seconds = 0, workers = 2;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (strcmp(a, "--version") == 0) {
                        printf("echo-server (shmengine) %s\n", eng_version());
                        return 0;
                } else if (strcmp(a, "--name") == 0 && i + 1 < argc) {
                        name = argv[++i];
                } else if (strcmp(a, "--seconds") == 0 && i + 1 < argc &&
                           parse_uint(argv[i + 1], 86400 * 365, &seconds) == 0) {
                        i++;
                } else if (strcmp(a, "--workers") == 0 && i + 1 < argc &&
                           parse_uint(argv[i + 1], 256, &workers) == 0) {
                        i++;
                } else {
                        fprintf(stderr, "echo-server: bad argument '%s'\n", a);
                        usage(stderr);
                        return 2;
                }
        }

        /* Block the stop signals before the engine starts its threads (they inherit the mask):
         * the main thread takes them synchronously with sigtimedwait below. */
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, SIGINT);
        sigaddset(&stop, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &stop, NULL);

        eng_server_cfg_t cfg = {
            .name = name,
            .size = 16u << 20, /* 16 MiB segment: records and buffers */
            .workers = (uint32_t)workers,
            .hooks = {.on_open = on_open,
                      .on_msg = on_msg,
                      .on_close = on_close,
                      .on_event = on_event},
        };
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        if (rc != 0) {
                fprintf(stderr, "echo-server: cannot serve %s: %s%s%s\n", name, eng_strerror(rc),
                        *eng_errmsg() ? ": " : "", eng_errmsg());
                return 1;
        }
        printf("ready %s\n", name);
        fflush(stdout); /* scripts wait for this line */

        /* Wait for a signal in slices of at most a second, to look at the deadline and at
         * eng_server_failed (the segment was shrunk from outside and cannot be served). */
        uint64_t deadline = seconds ? eng_now_ns() + (uint64_t)seconds * 1000000000ull : 0;
        int status = 0;
        const char *why = "time is up";
        for (;;) {
                struct timespec slice = {.tv_sec = 1, .tv_nsec = 0};
                int sig = sigtimedwait(&stop, NULL, &slice);
                if (sig > 0) {
                        why = sig == SIGINT ? "SIGINT" : "SIGTERM";
                        break;
                }
                if (eng_server_failed(srv)) {
                        why = "the segment cannot be served any more";
                        status = 1;
                        break;
                }
                if (deadline && eng_now_ns() >= deadline)
                        break;
        }
        eng_server_stop(srv); /* ends open streams (on_close runs for each), unlinks the name */
        fprintf(stderr, "echo-server: %s: stopped after %llu streams, %llu echoes\n", why,
                (unsigned long long)atomic_load(&total_streams),
                (unsigned long long)atomic_load(&total_msgs));
        return status;
}
