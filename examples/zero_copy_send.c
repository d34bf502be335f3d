/*
 * zero_copy_send.c - send a large message without copying it: loan a buffer inside the
 * segment, write the data straight into it, send it, get it back from an echo-server.
 *
 *   zero-copy-send [--name /seg] [--size BYTES] [--rounds N] [--timeout MS]
 *
 * Who owns the buffer, step by step:
 *   1. eng_stream_loan     the block is this stream's: only we may read or write it.
 *   2. (fill it in place)  still ours; we may also give it back unsent: eng_stream_unloan.
 *   3. eng_stream_send     on success it is the server's: we must not touch it any more. On
 *                          failure it is still ours (give it back or send it again).
 *   4. the server          reads it in place; echo-server sends the same block back, which
 *                          makes it ours again (any server may free it instead, or answer
 *                          with a block it loaned itself).
 *   5. eng_stream_recv     m.data points into the block: valid until we release it.
 *   6. eng_stream_release  the block goes back to the arena; m.data is gone.
 * Closing the stream (or the process dying) gives back whatever it still holds.
 *
 * Exit status 0 if every round came back intact, 1 on any failure, 2 on bad usage.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmengine/engine.h>

/* The echo-server's protocol (echo_server.c). */
#define EX_ECHO   (ENG_CMD_CLIENT_MIN + 0x40)
#define EX_ECHOED (ENG_CMD_SERVER_MIN + 0x40)

static int fail(const char *what, int rc)
{
        fprintf(stderr, "zero-copy-send: %s: %s%s%s\n", what, eng_strerror(rc),
                *eng_errmsg() ? ": " : "", eng_errmsg());
        return 1;
}

/* A 64-bit word per 8 bytes, different each round (the size is a multiple of 8 here). */
static uint64_t word_of(uint32_t round, uint64_t i)
{
        return (i + 1) * 0x9e3779b97f4a7c15ull ^ round;
}

/* One round. Returns 0, or 1 after saying why. *same: the reply came in the block we sent. */
static int one_round(eng_stream_t *st, uint32_t round, uint32_t size, int timeout_ms, int *same)
{
        /* 1. Loan: a block of at least size bytes in the segment, waiting up to timeout_ms
         *    if the arena is full right now. */
        void *p;
        uint64_t off;
        int rc = eng_stream_loan(st, size, &p, &off, timeout_ms);
        if (rc != 0)
                return fail("loan", rc);

        /* 2. Fill it in place: this is the only time the payload is written. (A real program
         *    would read() or compute straight into p.) */
        uint64_t *w = p;
        for (uint64_t i = 0; i < size / 8; i++)
                w[i] = word_of(round, i);

        /* 3. Send: the descriptor (command, arg, offset, length) goes through the ring; the
         *    payload stays where it is. From here on the block is the server's. */
        rc = eng_stream_send(st, EX_ECHO, round, off, size, timeout_ms);
        if (rc != 0) {
                eng_stream_unloan(st, off); /* not sent: still ours, give it back */
                return fail("send", rc);
        }
        p = w = NULL; /* not ours any more: no access through these */

        /* 5. Receive the reply. echo-server forwarded the very block: no copy on its side
         *    either (compare the offsets). */
        eng_msg_t m;
        rc = eng_stream_recv(st, &m, timeout_ms);
        if (rc != 0)
                return fail("receive", rc);
        *same = m.off == off;
        int bad = m.cmd != EX_ECHOED || m.arg != round || m.len != size;
        /* Checked in place. Any process of the segment's user can write the segment at any
         * time: a program that must not trust its peers copies the bytes out once and checks
         * only its copy (as proto/ does for files). */
        const uint64_t *r = m.data;
        uint64_t i = 0;
        while (!bad && i < size / 8 && r[i] == word_of(round, i))
                i++;
        if (bad || i < size / 8)
                fprintf(stderr, "zero-copy-send: round %u: the reply differs (at byte %llu)\n",
                        round, (unsigned long long)i * 8);

        /* 6. Release: the block goes back to the arena (m.data must not be used after). */
        eng_stream_release(st, &m);
        return bad || i < size / 8;
}

static void usage(FILE *f)
{
        fprintf(f, "usage: zero-copy-send [--name /seg] [--size BYTES] [--rounds N] [--timeout "
                   "MS]\n"
                   "\n"
                   "Loan a buffer in the segment, fill it in place, send it to echo-server and\n"
                   "check what comes back.\n"
                   "\n"
                   "  --name /seg    segment name (default /shmengine-echo)\n"
                   "  --size BYTES   message size, a multiple of 8 (default 262144)\n"
                   "  --rounds N     messages (default 8)\n"
                   "  --timeout MS   limit of every blocking call (default 5000)\n"
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
        unsigned long size = 256 * 1024, rounds = 8, timeout_ms = 5000;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (strcmp(a, "--version") == 0) {
                        printf("zero-copy-send (shmengine) %s\n", eng_version());
                        return 0;
                } else if (strcmp(a, "--name") == 0 && v) {
                        name = v;
                        i++;
                } else if (strcmp(a, "--size") == 0 && v &&
                           parse_uint(v, 8, 1ul << 30, &size) == 0 && size % 8 == 0) {
                        i++;
                } else if (strcmp(a, "--rounds") == 0 && v &&
                           parse_uint(v, 1, 1000000, &rounds) == 0) {
                        i++;
                } else if (strcmp(a, "--timeout") == 0 && v &&
                           parse_uint(v, 1, 3600000, &timeout_ms) == 0) {
                        i++;
                } else {
                        fprintf(stderr, "zero-copy-send: bad argument '%s'\n", a);
                        usage(stderr);
                        return 2;
                }
        }

        eng_client_cfg_t cfg = {.timeout_ms = (uint32_t)timeout_ms};
        eng_client_t *c;
        int rc = eng_client_attach(name, &cfg, &c);
        if (rc != 0)
                return fail(name, rc);
        /* The largest loan depends on the server's configuration (its largest block class). */
        if (size > eng_client_max_loan(c)) {
                fprintf(stderr,
                        "zero-copy-send: --size %lu is more than this segment's largest "
                        "loan (%llu bytes)\n",
                        size, (unsigned long long)eng_client_max_loan(c));
                eng_client_detach(c);
                return 2;
        }
        eng_stream_t *st;
        rc = eng_stream_open(c, 1, &st);
        if (rc != 0) {
                fail("open a stream", rc);
                eng_client_detach(c);
                return 1;
        }
        int status = 0, same = 0, same_rounds = 0;
        uint64_t t0 = eng_now_ns();
        for (uint32_t r = 0; r < rounds && status == 0; r++) {
                status = one_round(st, r, (uint32_t)size, (int)timeout_ms, &same);
                same_rounds += same;
        }
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        if (status == 0) {
                rc = eng_stream_close(st); /* frees st whatever it returns */
                if (rc != 0)
                        status = fail("close", rc);
        } else {
                eng_stream_abort(st);
        }
        eng_client_detach(c);
        if (status == 0)
                printf("zero-copy-send: %lu x %lu bytes sent and echoed intact, %d of them in the "
                       "block that was sent (%.1f MB/s each way)\n",
                       rounds, size, same_rounds,
                       secs > 0 ? (double)size * (double)rounds / secs / 1e6 : 0.0);
        return status;
}
