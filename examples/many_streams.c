/*
 * many_streams.c - one thread drives many streams to an echo-server at once.
 *
 *   many-streams [--name /seg] [--streams N] [--count N] [--window N] [--timeout MS]
 *
 * Nothing here blocks except one call: each turn takes a ticket, looks at every stream with
 * the non-blocking calls (try_loan, try_send, try_recv), and if nothing moved waits on the
 * ticket, which returns as soon as the server did anything for any of this client's streams.
 * Each stream keeps up to WINDOW requests in flight; replies must come back on their own
 * stream, in order, with the bytes that were sent.
 *
 * Exit status 0 if every reply matched, 1 on any failure, 2 on bad usage.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmengine/engine.h>

/* The echo-server's protocol (echo_server.c). */
#define EX_ECHO   (ENG_CMD_CLIENT_MIN + 0x40)
#define EX_ECHOED (ENG_CMD_SERVER_MIN + 0x40)

#define MAX_STREAMS 256

struct stream {
        eng_stream_t *st;
        uint32_t sent; /* requests sent */
        uint32_t got;  /* replies received and checked: the next reply must be for request got */
};

/* A failed engine call (of stream i, if i >= 0): the errno's text and the engine's context. */
static int fail(const char *what, int i, int rc)
{
        char where[32] = "";
        if (i >= 0)
                snprintf(where, sizeof(where), "stream %d: ", i);
        fprintf(stderr, "many-streams: %s%s: %s%s%s\n", where, what, eng_strerror(rc),
                *eng_errmsg() ? ": " : "", eng_errmsg());
        return 1;
}

/* Request k of stream i: arg names both, so a reply on the wrong stream or out of order is
 * caught; its length (0: no buffer) and bytes follow from them too. */
static uint64_t arg_of(uint32_t i, uint32_t k)
{
        return (uint64_t)i << 32 | k;
}

static uint32_t len_of(uint32_t i, uint32_t k)
{
        return (k + i) % 3 == 0 ? 0 : 1 + (k * 37u + i * 101u) % 3000u;
}

static uint8_t byte_of(uint32_t i, uint32_t k, uint32_t at)
{
        return (uint8_t)(i * 13u + k * 7u + at);
}

/* Send on stream i while its window has room. Returns 1 if it sent anything, 0 if not (ring
 * or arena full: later), < 0 (-errno) on failure. */
static int pump_sends(struct stream *s, uint32_t i, uint32_t count, uint32_t window)
{
        int moved = 0;
        while (s->sent < count && s->sent - s->got < window) {
                uint32_t k = s->sent, len = len_of(i, k);
                uint64_t off = 0;
                if (len > 0) {
                        void *p;
                        int rc = eng_stream_try_loan(s->st, len, &p, &off);
                        if (rc == -EAGAIN)
                                break; /* arena full: the server frees as it answers */
                        if (rc != 0)
                                return rc;
                        uint8_t *b = p;
                        for (uint32_t at = 0; at < len; at++)
                                b[at] = byte_of(i, k, at);
                }
                int rc = eng_stream_try_send(s->st, EX_ECHO, arg_of(i, k), off, len);
                if (rc != 0) {
                        eng_stream_unloan(s->st, off); /* not sent: still ours to give back */
                        if (rc == -EAGAIN)
                                break; /* ring full: the server has not caught up yet */
                        return rc;
                }
                s->sent++;
                moved = 1;
        }
        return moved;
}

/* Take every reply that is there on stream i and check it. Returns 1 if it took any, 0 if
 * none, < 0 on failure (-EBADMSG: a wrong reply, said on stderr). */
static int pump_recvs(struct stream *s, uint32_t i)
{
        int moved = 0;
        eng_msg_t m;
        int rc;
        while ((rc = eng_stream_try_recv(s->st, &m)) == 0) {
                uint32_t k = s->got, len = len_of(i, k);
                bool bad = m.cmd != EX_ECHOED || m.arg != arg_of(i, k) || m.len != len;
                const uint8_t *d = m.data;
                for (uint32_t at = 0; !bad && at < len; at++)
                        bad = d[at] != byte_of(i, k, at);
                if (bad)
                        fprintf(stderr,
                                "many-streams: stream %u: reply %u is wrong (cmd 0x%04x, arg "
                                "%u:%u, %u bytes, want %u)\n",
                                i, k, m.cmd, (unsigned)(m.arg >> 32), (unsigned)m.arg, m.len, len);
                eng_stream_release(s->st, &m);
                if (bad)
                        return -EBADMSG;
                s->got++;
                moved = 1;
        }
        return rc == -EAGAIN ? moved : rc; /* -EAGAIN: nothing more there right now */
}

static void usage(FILE *f)
{
        fprintf(f, "usage: many-streams [--name /seg] [--streams N] [--count N] [--window N]\n"
                   "                    [--timeout MS]\n"
                   "\n"
                   "One thread, N streams to echo-server, every reply checked in order.\n"
                   "\n"
                   "  --name /seg    segment name (default /shmengine-echo)\n"
                   "  --streams N    streams (default 16, at most 256)\n"
                   "  --count N      requests per stream (default 500)\n"
                   "  --window N     requests in flight per stream (default 4)\n"
                   "  --timeout MS   fail if nothing moves for this long (default 5000)\n"
                   "  --help         this text\n"
                   "  --version      version\n");
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
        unsigned long nstreams = 16, count = 500, window = 4, timeout_ms = 5000;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (strcmp(a, "--version") == 0) {
                        printf("many-streams (shmengine) %s\n", eng_version());
                        return 0;
                } else if (strcmp(a, "--name") == 0 && v) {
                        name = v;
                        i++;
                } else if (strcmp(a, "--streams") == 0 && v &&
                           parse_uint(v, 1, MAX_STREAMS, &nstreams) == 0) {
                        i++;
                } else if (strcmp(a, "--count") == 0 && v &&
                           parse_uint(v, 1, 10000000, &count) == 0) {
                        i++;
                } else if (strcmp(a, "--window") == 0 && v && parse_uint(v, 1, 64, &window) == 0) {
                        i++;
                } else if (strcmp(a, "--timeout") == 0 && v &&
                           parse_uint(v, 1, 3600000, &timeout_ms) == 0) {
                        i++;
                } else {
                        fprintf(stderr, "many-streams: bad argument '%s'\n", a);
                        usage(stderr);
                        return 2;
                }
        }

        eng_client_cfg_t cfg = {.timeout_ms = (uint32_t)timeout_ms};
        eng_client_t *c;
        int rc = eng_client_attach(name, &cfg, &c);
        if (rc != 0) {
                fprintf(stderr, "many-streams: %s: %s%s%s\n", name, eng_strerror(rc),
                        *eng_errmsg() ? ": " : "", eng_errmsg());
                return 1;
        }
        static struct stream s[MAX_STREAMS];
        uint32_t n = (uint32_t)nstreams, opened = 0;
        int status = 0;
        for (; opened < n; opened++) {
                /* Our id for each stream: 100 + i (the server sees it as eng_sstream_id). */
                rc = eng_stream_open(c, 100 + opened, &s[opened].st);
                if (rc != 0) {
                        status = fail("open", (int)opened, rc);
                        break;
                }
        }

        uint32_t done = 0, waits = 0;
        uint64_t t0 = eng_now_ns(), last_move = t0;
        const uint64_t patience = (uint64_t)timeout_ms * 1000000u;
        while (status == 0 && done < n) {
                /* The ticket first, then look: whatever the server does after this point
                 * makes the wait below return at once, so no wake-up is lost. */
                uint32_t ticket = eng_client_ticket(c);
                bool moved = false;
                for (uint32_t i = 0; i < n && status == 0; i++) {
                        if (s[i].got == count)
                                continue;
                        int r = pump_sends(&s[i], i, (uint32_t)count, (uint32_t)window);
                        if (r >= 0) {
                                moved |= r > 0;
                                r = pump_recvs(&s[i], i);
                        }
                        if (r < 0) {
                                status = r == -EBADMSG ? 1 : fail("exchange", (int)i, r);
                                break;
                        }
                        moved |= r > 0;
                        if (s[i].got == count)
                                done++;
                }
                if (status != 0 || moved) {
                        last_move = eng_now_ns();
                        continue;
                }
                /* Nothing moved: sleep until the server acts for any stream (or the time is
                 * up: a wait always has a limit, and so has the whole lack of progress). */
                if (eng_now_ns() - last_move > patience) {
                        fprintf(stderr,
                                "many-streams: nothing moved for %lu ms (%u of %u streams "
                                "done)\n",
                                timeout_ms, done, n);
                        status = 1;
                        break;
                }
                waits++;
                rc = eng_client_wait(c, ticket, (int)timeout_ms);
                if (rc != 0 && rc != -ETIMEDOUT) /* -EPIPE: the server is gone */
                        status = fail("wait", -1, rc);
        }
        double secs = (double)(eng_now_ns() - t0) / 1e9;

        /* Close and abort free the stream whatever they return: never touch it again. */
        for (uint32_t i = 0; i < opened; i++) {
                if (status != 0)
                        eng_stream_abort(s[i].st); /* no handshake after a failure */
                else if ((rc = eng_stream_close(s[i].st)) != 0)
                        status = fail("close", (int)i, rc);
        }
        eng_client_detach(c);
        if (status == 0)
                printf("many-streams: %u streams x %lu requests from one thread, every reply in "
                       "order and intact (%.3f s, %u waits)\n",
                       n, count, secs, waits);
        return status;
}
