/*
 * fuzz_desc.c - libFuzzer harness for the server's handling of client descriptors.
 *
 * One in-process server (file-transfer hooks, output into a temporary directory) and one
 * client are started in LLVMFuzzerInitialize. Every input opens a stream, pushes raw
 * descriptors straight into its c2s ring with the engine's internal helpers (bypassing every
 * check of the client library), schedules it, waits (<= 100 ms) until the server drained the
 * ring or ended the stream, then abandons the stream (FIN) and waits for the server to
 * finalise it. The server must survive every input, and keep serving.
 *
 * Input:
 *   byte 0   flags
 *              0x01 SEQ   every descriptor gets the next correct sequence number
 *              0x02 OFF   descriptors whose flags field has bit 0 set get a fresh buffer
 *                         loaned by this stream (so buffer validation passes)
 *              0x04 LEN   ... and a length that fits that buffer
 *              0x08 CMD   the command is mapped onto the interesting ones (file transfer,
 *                         ping, close, an unknown client code, a server code)
 *              0x10 FILL  loaned buffers are filled with the input's tail (names, data)
 *              0x20 FILE  file-transfer arguments made consistent: FILE_DATA offsets follow
 *                         each other, FILE_OPEN announces the size that follows, FILE_END
 *                         carries the XXH3-64 of it (so a file can be completed and renamed)
 *   byte 1   number of descriptors (mod 128)
 *   then     that many 32-byte struct eng_desc (fewer if the input is short)
 *   then     the tail: the bytes used by FILL
 */
#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "internal.h"
#include "proto.h"

#define F_SEQ  0x01
#define F_OFF  0x02
#define F_LEN  0x04
#define F_CMD  0x08
#define F_FILL 0x10
#define F_FILE 0x20

#define DEPTH    128
#define MAX_DESC (DEPTH - 1)
#define MAX_LOAN (64u << 10)
#define WAIT_NS  (100 * 1000000ull)
#define HUNG_NS  (5000 * 1000000ull)

static eng_xfer_server_t *xs;
static eng_server_t *srv;
static eng_client_t *cli;
static struct eng_seg sg;
static char outdir[4096];
static char shm_name[64];
static uint64_t files_ok, files_failed; /* from the server's report hook */

static void report(const eng_xfer_result_t *r, void *ctx)
{
        (void)ctx;
        __atomic_fetch_add(r->err == 0 ? &files_ok : &files_failed, 1, __ATOMIC_RELAXED);
}

static void pause_us(long us)
{
        struct timespec ts = {.tv_sec = 0, .tv_nsec = us * 1000L};
        nanosleep(&ts, NULL);
}

static void die(const char *what, int rc)
{
        fprintf(stderr, "fuzz_desc: %s: %s (%s)\n", what, eng_strerror(rc), eng_errmsg());
        abort();
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
        (void)sb;
        (void)flag;
        (void)f;
        remove(p);
        return 0;
}

static void teardown(void)
{
        if (cli)
                eng_client_detach(cli);
        cli = NULL;
        seg_unmap(&sg);
        if (srv)
                eng_server_stop(srv);
        srv = NULL;
        if (xs)
                eng_xfer_server_free(xs);
        xs = NULL;
        if (outdir[0])
                nftw(outdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        fprintf(stderr, "fuzz_desc: the server delivered %llu files and refused or failed %llu\n",
                (unsigned long long)files_ok, (unsigned long long)files_failed);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc;
        (void)argv;
        const char *tmp = getenv("TMPDIR");
        snprintf(outdir, sizeof(outdir), "%s/eng-fuzz-desc-XXXXXX", tmp ? tmp : "/tmp");
        if (mkdtemp(outdir) == NULL) {
                perror("mkdtemp");
                abort();
        }
        snprintf(shm_name, sizeof(shm_name), "/engfuzz-%d", (int)getpid());
        char why[256] = "";
        eng_xfer_server_cfg_t xc = {.outdir = outdir, .report = report};
        int rc = eng_xfer_server_new(&xc, &xs, why, sizeof(why));
        if (rc != 0) {
                fprintf(stderr, "fuzz_desc: %s\n", why);
                abort();
        }
        eng_server_cfg_t cfg = {
            .name = shm_name, .size = 16u << 20, .workers = 2, .ring_depth = DEPTH, .spin = 64};
        eng_xfer_server_hooks(xs, &cfg.hooks);
        if ((rc = eng_server_start(&cfg, &srv)) != 0)
                die("eng_server_start", rc);
        eng_client_cfg_t cc = {.spin = 64, .timeout_ms = 2000};
        if ((rc = eng_client_attach(shm_name, &cc, &cli)) != 0)
                die("eng_client_attach", rc);
        if ((rc = seg_attach(&sg, shm_name)) != 0)
                die("seg_attach", rc);
        atexit(teardown);
        /* Our session must be accepted before streams refer to it. */
        uint64_t end = eng_now_ns() + HUNG_NS;
        for (;;) {
                for (uint32_t i = 0; i < sg.max_streams; i++) {
                        struct eng_rec *r = seg_rec(&sg, i);
                        if (r == NULL)
                                break;
                        if (r->type == REC_SESSION && r->owner_pid == getpid() &&
                            eng_load_acquire_u32(&r->state) == ST_OPEN)
                                return 0;
                }
                if (eng_now_ns() > end)
                        die("session not accepted", -ETIMEDOUT);
                pause_us(200);
        }
}

static const uint16_t cmd_map[] = {
    ENG_C_FILE_OPEN, ENG_C_FILE_DATA, ENG_C_FILE_DATA, ENG_C_FILE_DATA, ENG_C_FILE_END,
    ENG_C_PING,      CMD_C_CLOSE,     0x0150,          ENG_S_PONG,      CMD_S_ERROR,
};

/* Read replies so that the server never stalls on a full s2c ring. */
static void drain_replies(eng_stream_t *st)
{
        eng_msg_t m;
        while (eng_stream_try_recv(st, &m) == 0)
                eng_stream_release(st, &m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 2)
                return 0;
        uint8_t flags = data[0];
        size_t n = data[1] % DEPTH;
        if (n > MAX_DESC)
                n = MAX_DESC;
        if (n > (size - 2) / sizeof(struct eng_desc))
                n = (size - 2) / sizeof(struct eng_desc);
        struct eng_desc d[MAX_DESC];
        memcpy(d, data + 2, n * sizeof(struct eng_desc));
        const uint8_t *tail = data + 2 + n * sizeof(struct eng_desc);
        size_t tlen = size - 2 - n * sizeof(struct eng_desc);

        uint64_t t0 = eng_now_ns();
        eng_stream_t *st;
        int rc = eng_stream_open(cli, 1, &st);
        if (rc != 0)
                die("the server stopped handing out streams", rc);
        uint32_t idx = eng_stream_index(st);
        struct eng_rec *r = seg_rec(&sg, idx);
        if (r == NULL)
                die("stream without a record", -EINVAL);

        /* Shape the descriptors. */
        for (size_t i = 0; i < n; i++) {
                if (flags & F_CMD)
                        d[i].cmd = cmd_map[d[i].cmd % (sizeof(cmd_map) / sizeof(cmd_map[0]))];
                if (flags & F_SEQ)
                        d[i].seq = i + 1;
                if ((flags & F_OFF) && (d[i].flags & 1)) {
                        uint32_t want = (flags & F_LEN) ? d[i].len % MAX_LOAN : 4096;
                        void *p;
                        uint64_t off;
                        if (eng_stream_try_loan(st, want ? want : 1, &p, &off) == 0) {
                                uint64_t cap = eng_stream_loan_capacity(st, off);
                                d[i].off = off;
                                if (flags & F_LEN)
                                        d[i].len = (uint32_t)(d[i].len % (cap + 1));
                                if ((flags & F_FILL) && tlen > 0) {
                                        for (uint64_t j = 0; j < cap; j += tlen)
                                                memcpy((char *)p + j, tail,
                                                       cap - j < tlen ? cap - j : tlen);
                                }
                        }
                }
        }
        if (flags & F_FILE) {
                /* Consistent file arguments: data offsets in order, size and checksum. */
                XXH3_state_t *h = XXH3_createState();
                size_t open_at = SIZE_MAX;
                uint64_t sent = 0;
                XXH3_64bits_reset(h);
                for (size_t i = 0; i < n; i++) {
                        if (d[i].cmd == ENG_C_FILE_OPEN) {
                                open_at = i;
                                sent = 0;
                                XXH3_64bits_reset(h);
                        } else if (d[i].cmd == ENG_C_FILE_DATA) {
                                d[i].arg = sent;
                                void *p =
                                    d[i].off ? eng_arena_ptr(&sg.arena, d[i].off, d[i].len) : NULL;
                                if (p != NULL &&
                                    eng_stream_loan_capacity(st, d[i].off) >= d[i].len) {
                                        XXH3_64bits_update(h, p, d[i].len);
                                        sent += d[i].len;
                                }
                        } else if (d[i].cmd == ENG_C_FILE_END) {
                                d[i].arg = XXH3_64bits_digest(h);
                                if (open_at != SIZE_MAX)
                                        d[open_at].arg = sent;
                        }
                }
                XXH3_freeState(h);
        }

        /* Push them raw and schedule the stream. */
        struct ring_end out;
        ring_attach(&out, &r->c2s.r, rec_c2s_slots(r, sg.depth), sg.depth, true);
        size_t pushed = 0;
        for (size_t i = 0; i < n; i++)
                if (ring_push_spsc(&out, &d[i]))
                        pushed++;
        sched_stream(&sg, r, idx);

        /* Until the server drained the ring or ended the stream (bounded). */
        uint64_t end = eng_now_ns() + WAIT_NS;
        while (eng_now_ns() < end) {
                drain_replies(st);
                if (eng_load_acquire_u32(&r->state) == ST_ENDED)
                        break;
                if (eng_load_acquire_u32(&r->state) == ST_OPEN &&
                    eng_load_acquire_u32(&r->c2s.r.c_head) == out.mine)
                        break;
                pause_us(20);
        }
        drain_replies(st);

        /* Abandon the stream (our last touch) and let the server finalise it. */
        uint64_t closes = eng_load_relaxed_u64(&sg.hdr->closes);
        eng_stream_abort(st);
        end = eng_now_ns() + HUNG_NS;
        while (eng_load_relaxed_u64(&sg.hdr->closes) == closes) {
                if (eng_now_ns() > end)
                        die("the server did not finalise an abandoned stream", -ETIMEDOUT);
                pause_us(20);
        }
        (void)pushed;
        (void)t0;
        return 0;
}
