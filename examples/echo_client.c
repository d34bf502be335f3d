/*
 * echo_client.c - attach to an echo-server, open one stream, send COUNT requests and check
 * that each reply carries the same bytes back; then ask the server for its statistics.
 *
 *   echo-client [--name /seg] [--count N] [--max-len BYTES] [--timeout MS] [--wait S]
 *
 * Exit status 0 if every reply matched, 1 on any failure, 2 on bad usage, 128+N when
 * stopped by signal N (SIGINT, SIGTERM).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* sigaction */
#endif
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmengine/engine.h>

/* The echo-server's protocol (echo_server.c). */
#define EX_ECHO        (ENG_CMD_CLIENT_MIN + 0x40)
#define EX_STATS       (ENG_CMD_CLIENT_MIN + 0x41)
#define EX_ECHOED      (ENG_CMD_SERVER_MIN + 0x40)
#define EX_STATS_REPLY (ENG_CMD_SERVER_MIN + 0x41)

/* Ctrl-C: every blocking engine call returns -EINTR soon after (eng_client_cfg_t.interrupt). */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
        interrupted = sig;
}

/* One line about a failed engine call: the errno's text and the engine's context, if any. */
static int fail(const char *what, int rc)
{
        fprintf(stderr, "echo-client: %s: %s%s%s\n", what, eng_strerror(rc),
                *eng_errmsg() ? ": " : "", eng_errmsg());
        return 1;
}

/* The payload of request i: its length and its bytes, both derived from i. */
static uint32_t len_of(uint32_t i, uint32_t max_len)
{
        return i % 4 == 0 ? 0 : 1 + (i * 7919u) % max_len; /* every 4th carries no buffer */
}

static uint8_t byte_of(uint32_t i, uint32_t k)
{
        return (uint8_t)(i * 31u + k * 7u + 1u);
}

/* One round trip. Returns 0 or 1 (after saying why). */
static int round_trip(eng_stream_t *st, uint32_t i, uint32_t max_len, int timeout_ms)
{
        uint32_t len = len_of(i, max_len);
        uint64_t off = 0; /* 0: a message without a buffer */
        if (len > 0) {
                /* A loan: a buffer inside the segment, ours until we send it. */
                void *p;
                int rc = eng_stream_loan(st, len, &p, &off, timeout_ms);
                if (rc != 0)
                        return fail("loan", rc);
                uint8_t *b = p;
                for (uint32_t k = 0; k < len; k++)
                        b[k] = byte_of(i, k);
        }
        /* Sending passes the buffer to the server; if the send fails it is still ours. */
        int rc = eng_stream_send(st, EX_ECHO, i, off, len, timeout_ms);
        if (rc != 0) {
                eng_stream_unloan(st, off); /* no-op when off == 0 */
                return fail("send", rc);
        }
        eng_msg_t m;
        rc = eng_stream_recv(st, &m, timeout_ms);
        if (rc != 0)
                return fail("receive", rc);
        /* m.data points into the segment and stays valid until eng_stream_release. */
        int bad = m.cmd != EX_ECHOED || m.arg != i || m.len != len;
        const uint8_t *d = m.data;
        for (uint32_t k = 0; !bad && k < len; k++)
                bad = d[k] != byte_of(i, k);
        if (bad)
                fprintf(
                    stderr,
                    "echo-client: reply %u is wrong: cmd 0x%04x arg %llu len %u (want len %u)\n", i,
                    m.cmd, (unsigned long long)m.arg, m.len, len);
        eng_stream_release(st, &m); /* the buffer goes back to the arena; m.data is gone */
        return bad;
}

/* EX_STATS: the server answers with a buffer it loaned, holding one line of text. */
static int print_stats(eng_stream_t *st, int timeout_ms)
{
        int rc = eng_stream_send(st, EX_STATS, 0, 0, 0, timeout_ms);
        if (rc != 0)
                return fail("send stats request", rc);
        eng_msg_t m;
        rc = eng_stream_recv(st, &m, timeout_ms);
        if (rc != 0)
                return fail("receive stats", rc);
        int bad = m.cmd != EX_STATS_REPLY || m.len == 0 || m.data == NULL;
        if (bad)
                fprintf(stderr, "echo-client: unexpected stats reply 0x%04x (%u bytes)\n", m.cmd,
                        m.len);
        else /* at most m.len bytes: never trust a NUL to be there */
                printf("server says: %.*s\n", (int)strnlen(m.data, m.len), (const char *)m.data);
        eng_stream_release(st, &m);
        return bad;
}

static void usage(FILE *f)
{
        fprintf(f, "usage: echo-client [--name /seg] [--count N] [--max-len BYTES] [--timeout MS]\n"
                   "                   [--wait S]\n"
                   "\n"
                   "Send N echo requests on one stream to echo-server and check every reply.\n"
                   "\n"
                   "  --name /seg      segment name (default /shmengine-echo)\n"
                   "  --count N        requests (default 1000)\n"
                   "  --max-len BYTES  largest payload (default 8192)\n"
                   "  --timeout MS     limit of every blocking call (default 5000)\n"
                   "  --wait S         wait up to S seconds for the server to appear (default 0)\n"
                   "  --help           this text\n"
                   "  --version        version\n");
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || *s == '-' || v < min || v > max)
                return -1;
        *out = v;
        return 0;
}

int main(int argc, char **argv)
{
        const char *name = "/shmengine-echo";
        unsigned long count = 1000, max_len = 8192, timeout_ms = 5000, wait_s = 0;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (strcmp(a, "--version") == 0) {
                        printf("echo-client (shmengine) %s\n", eng_version());
                        return 0;
                } else if (strcmp(a, "--name") == 0 && v) {
                        name = v;
                        i++;
                } else if (strcmp(a, "--count") == 0 && v &&
                           parse_uint(v, 1, 100000000, &count) == 0) {
                        i++;
                } else if (strcmp(a, "--max-len") == 0 && v &&
                           parse_uint(v, 1, 1u << 30, &max_len) == 0) {
                        i++;
                } else if (strcmp(a, "--timeout") == 0 && v &&
                           parse_uint(v, 1, 3600000, &timeout_ms) == 0) {
                        i++;
                } else if (strcmp(a, "--wait") == 0 && v && parse_uint(v, 0, 3600, &wait_s) == 0) {
                        i++;
                } else {
                        fprintf(stderr, "echo-client: bad argument '%s'\n", a);
                        usage(stderr);
                        return 2;
                }
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        /* Attach: map the segment, check who owns it, register with the server. */
        eng_client_cfg_t cfg = {.timeout_ms = (uint32_t)timeout_ms,
                                .wait_ms = (uint32_t)(wait_s * 1000),
                                .interrupt = &interrupted};
        eng_client_t *c;
        int rc = eng_client_attach(name, &cfg, &c);
        if (rc != 0) {
                fail(name, rc);
                return interrupted ? 128 + interrupted : 1;
        }
        if (max_len > eng_client_max_loan(c)) {
                fprintf(stderr,
                        "echo-client: --max-len %lu is more than this segment's largest "
                        "loan (%llu bytes)\n",
                        max_len, (unsigned long long)eng_client_max_loan(c));
                eng_client_detach(c);
                return 2;
        }
        /* A stream; 1 is our id for it (the server sees it as eng_sstream_id). */
        eng_stream_t *st;
        rc = eng_stream_open(c, 1, &st);
        if (rc != 0) {
                fail("open a stream", rc);
                eng_client_detach(c);
                return 1;
        }

        uint64_t t0 = eng_now_ns(), bytes = 0;
        int status = 0;
        for (uint32_t i = 0; i < count && status == 0; i++) {
                status = round_trip(st, i, (uint32_t)max_len, (int)timeout_ms);
                bytes += len_of(i, (uint32_t)max_len);
        }
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        if (status == 0)
                status = print_stats(st, (int)timeout_ms);

        /* An orderly close after success; after a failure give the stream up at once. */
        if (status == 0) {
                rc = eng_stream_close(st);
                if (rc != 0)
                        status = fail("close", rc);
        } else {
                eng_stream_abort(st);
        }
        eng_client_detach(c);
        if (interrupted)
                return 128 + interrupted; /* as a shell reports a program a signal stopped */
        if (status == 0)
                printf("echo-client: %lu round trips, %llu payload bytes, every reply matched "
                       "(%.1f us per round trip)\n",
                       count, (unsigned long long)bytes, secs * 1e6 / (double)count);
        return status;
}
