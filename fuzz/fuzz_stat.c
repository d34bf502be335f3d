/*
 * fuzz_stat.c - libFuzzer harness for eng_stat_decode, the decoder behind engine-stat: any
 * image must give 0 (with problem lines) or a negative errno, never a crash, a hang, a leak or
 * an out-of-bounds read, and what it returns must hold together (every pointer valid, every
 * string terminated, counts as stated) until eng_stat_free.
 *
 * Random bytes stop at the magic; to get deeper, LLVMFuzzerInitialize makes a real segment
 * (an in-process server, a client with two streams and messages in flight), copies its image
 * (the template) and stops the server. The input then says what to decode:
 *
 *   byte 0   mode (low 2 bits)
 *              0 RAW    the rest, as it is
 *              1 MAGIC  the rest, with the right magic and layout version at offset 0
 *              2 LINE0  the rest, with the template's first cache line (magic, version and
 *                       geometry: what an attacher validates) at offset 0
 *              3 PATCH  the template, patched by the rest: records of [u32 offset LE][u8 n]
 *                       [n bytes], each written at offset mod the image's length
 *            bit 2 (PATCH): CUT - first a u32 LE from the rest: the image is cut to that
 *                       length mod (template length + 1)
 *   then     the rest
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define M_RAW   0
#define M_MAGIC 1
#define M_LINE0 2
#define M_PATCH 3
#define F_CUT   0x04

static unsigned char *tmpl; /* a real segment's image */
static size_t tmpl_len;
static unsigned char *work; /* tmpl_len bytes, or the input's length if larger */
static size_t work_cap;

static __attribute__((noreturn)) void die(const char *what, int rc)
{
        fprintf(stderr, "fuzz_stat: %s: %s (%s)\n", what, eng_strerror(rc), eng_errmsg());
        abort();
}

static int h_open(eng_sstream_t *s, void *ctx)
{
        (void)s;
        (void)ctx;
        return 0;
}

/* 0x0101: echo the buffer back (so replies sit in the s2c ring); anything else: consume. */
static int h_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        (void)ctx;
        if (m->cmd == 0x0101 && eng_sstream_send(s, 0x0201, m->arg, m->off, m->len) == 0)
                m->off = 0;
        return 0;
}

static void h_close(eng_sstream_t *s, int err, void *ctx)
{
        (void)s;
        (void)err;
        (void)ctx;
}

static void send_some(eng_stream_t *st, uint16_t cmd, uint32_t len)
{
        void *p;
        uint64_t off = 0;
        int rc;
        if (len > 0 && (rc = eng_stream_loan(st, len, &p, &off, 2000)) != 0)
                die("loan", rc);
        if (len > 0)
                memset(p, 0xa5, len);
        if ((rc = eng_stream_send(st, cmd, len, off, len, 2000)) != 0)
                die("send", rc);
}

/* A real segment with streams in several states, read once into tmpl. */
static void make_template(void)
{
        char name[64];
        snprintf(name, sizeof(name), "/engfuzz-%d", (int)getpid());
        eng_server_cfg_t cfg = {.name = name,
                                .size = 1u << 20,
                                .workers = 1,
                                .ring_depth = 16,
                                .spin = 64,
                                .min_block_shift = 12,
                                .max_block_shift = 16,
                                .hooks = {.on_open = h_open, .on_msg = h_msg, .on_close = h_close}};
        eng_server_t *srv;
        int rc = eng_server_start(&cfg, &srv);
        if (rc != 0)
                die("eng_server_start", rc);
        eng_client_cfg_t cc = {.spin = 64, .timeout_ms = 2000};
        eng_client_t *cli;
        if ((rc = eng_client_attach(name, &cc, &cli)) != 0)
                die("eng_client_attach", rc);
        eng_stream_t *a = NULL, *b = NULL, *c = NULL;
        if ((rc = eng_stream_open(cli, 1, &a)) != 0 || (rc = eng_stream_open(cli, 2, &b)) != 0 ||
            (rc = eng_stream_open(cli, 3, &c)) != 0)
                die("eng_stream_open", rc);
        send_some(b, 0x0101, 0);
        send_some(b, 0x0101, 100);
        send_some(b, 0x0101, 5000);
        send_some(b, 0x0102, 300);
        send_some(c, 0x0102, 10);
        if ((rc = eng_stream_close(c)) != 0)
                die("eng_stream_close", rc);
        struct timespec ts = {0, 20 * 1000000}; /* let the server echo */
        nanosleep(&ts, NULL);

        int fd = shm_open(name, O_RDONLY, 0);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size <= 0)
                die("reading the template", -errno);
        tmpl_len = (size_t)sb.st_size;
        tmpl = malloc(tmpl_len);
        if (tmpl == NULL)
                die("malloc", -ENOMEM);
        for (size_t got = 0; got < tmpl_len;) {
                ssize_t n = pread(fd, tmpl + got, tmpl_len - got, (off_t)got);
                if (n <= 0)
                        die("pread", n < 0 ? -errno : -EIO);
                got += (size_t)n;
        }
        close(fd);
        /* The template must decode cleanly, or the harness fuzzes the wrong thing. */
        eng_stat_t st;
        if ((rc = eng_stat_decode(tmpl, tmpl_len, &st)) != 0)
                die("eng_stat_decode(template)", rc);
        if (st.nrecs < 3) {
                fprintf(stderr, "fuzz_stat: the template shows %u records, not >= 3\n", st.nrecs);
                abort();
        }
        eng_stat_free(&st);
        eng_stream_close(a);
        eng_stream_close(b);
        eng_client_detach(cli);
        eng_server_stop(srv);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc;
        (void)argv;
        make_template();
        return 0;
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Touch everything the result points to (ASan sees a bad pointer, the checks a bad count). */
static void check(const eng_stat_t *st)
{
        size_t sum = 0;
        if (st->nrecs > 0 && st->recs == NULL)
                abort();
        for (uint32_t i = 0; i < st->nrecs; i++) {
                const eng_stat_rec_t *r = &st->recs[i];
                if (r->state == NULL || r->sched == NULL || r->alive != -1)
                        abort();
                sum += strlen(r->state) + strlen(r->sched) + r->index + (size_t)r->c2s_bytes;
        }
        if (st->nclients > 0 && st->clients == NULL)
                abort();
        for (uint32_t i = 0; i < st->nclients; i++)
                sum += (size_t)st->clients[i].pid + st->clients[i].streams;
        if (st->nproblems > 0 && st->problems == NULL)
                abort();
        for (uint32_t i = 0; i < st->nproblems; i++)
                sum += strlen(st->problems[i]);
        if (st->nclasses > 16 || st->server_alive != -1)
                abort();
        if (st->server_state == NULL || st->transport == NULL || st->arena_kind == NULL)
                abort();
        sum += strlen(st->server_state) + strlen(st->transport) + strlen(st->arena_kind);
        if (memchr(st->name, '\0', sizeof(st->name)) == NULL)
                abort();
        __asm__ volatile("" : : "r"(sum));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        unsigned mode = data[0] & 3u;
        bool cut = data[0] & F_CUT;
        data++;
        size--;
        const unsigned char *img = data;
        size_t len = size;
        size_t need = size > tmpl_len ? size : tmpl_len;
        if (need > work_cap) {
                unsigned char *w = realloc(work, need);
                if (w == NULL)
                        return 0;
                work = w;
                work_cap = need;
        }
        switch (mode) {
        case M_RAW:
                break;
        case M_MAGIC:
        case M_LINE0: {
                memcpy(work, data, size);
                if (mode == M_MAGIC) {
                        uint32_t hdr[2] = {SEG_MAGIC, SEG_VERSION};
                        memcpy(work, hdr, size < sizeof(hdr) ? size : sizeof(hdr));
                } else {
                        size_t n = CL < tmpl_len ? CL : tmpl_len;
                        memcpy(work, tmpl, size < n ? size : n);
                }
                img = work;
                break;
        }
        case M_PATCH: {
                memcpy(work, tmpl, tmpl_len);
                len = tmpl_len;
                size_t i = 0;
                if (cut && size >= 4) {
                        len = le32(data) % (tmpl_len + 1);
                        i = 4;
                }
                /* Bounded by the input: every record consumes at least 5 bytes. */
                while (len > 0 && i + 5 <= size) {
                        size_t at = le32(data + i) % len;
                        size_t n = data[i + 4];
                        i += 5;
                        if (n > size - i)
                                n = size - i;
                        if (n > len - at)
                                n = len - at;
                        memcpy(work + at, data + i, n);
                        i += n;
                }
                img = work;
                break;
        }
        }
        eng_stat_t st;
        int rc = eng_stat_decode(img, len, &st);
        if (rc > 0)
                abort();
        if (rc == 0)
                check(&st);
        eng_stat_free(&st);
        return 0;
}
