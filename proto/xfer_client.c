/*
 * xfer_client.c - the sending side of file transfer (a non-blocking state machine, so one
 * thread can drive many streams), and ping-pong.
 *
 * Data path: pread() the file into this thread's private buffer, hash those bytes, copy them
 * into a buffer loaned from the arena, send its offset. The hash is never taken from the
 * segment, where another process could change the bytes between our hash and the server's
 * (see proto.h). The private buffer is one per thread, whatever the number of transfers.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto.h"
#include "xfer_int.h"

struct eng_xfer_send {
        eng_stream_t *st;
        int fd;
        eng_xfer_state_t state;
        uint64_t size;
        uint64_t sent; /* bytes handed to the engine */
        uint32_t chunk;
        uint64_t pend_off; /* a filled buffer the ring had no room for */
        uint32_t pend_len;
        XXH3_state_t *h;
        char name[ENG_NAME_MAX + 1];
        char why[640];
};

int eng_xfer_send_new(eng_stream_t *st, const char *path, const char *remote_name, uint32_t chunk,
                      eng_xfer_send_t **out, char *why, size_t whylen)
{
        const char *bad = NULL;
        /* Only the basename travels (and the server takes nothing else): the folders of a
         * local path need not be a valid remote name. */
        const char *base = remote_name ? remote_name : path;
        const char *slash = remote_name ? NULL : strrchr(path, '/');
        if (slash != NULL && slash[1] != '\0')
                base = slash + 1;
        eng_xfer_send_t *x = calloc(1, sizeof(*x));
        if (x == NULL) {
                snprintf(why, whylen, "%s: %s", path, strerror(ENOMEM));
                return -ENOMEM;
        }
        if (eng_safe_name(base, strlen(base), x->name, sizeof(x->name), &bad) != 0) {
                snprintf(why, whylen, "%s: cannot be sent under that name: %s", path, bad);
                free(x);
                return -EINVAL;
        }
        /* O_NONBLOCK: a fifo must not block the open (it is refused below); regular files
         * ignore the flag. */
        x->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        struct stat sb;
        int e = 0;
        if (x->fd < 0 || fstat(x->fd, &sb) != 0)
                e = errno;
        else if (!S_ISREG(sb.st_mode))
                e = EINVAL;
        if (e == 0 && (x->h = XXH3_createState()) == NULL)
                e = ENOMEM;
        if (e != 0) {
                bool irregular = e == EINVAL && x->fd >= 0;
                snprintf(why, whylen, "%s: %s", path,
                         irregular ? "not a regular file" : strerror(e));
                if (x->fd >= 0)
                        close(x->fd);
                free(x);
                return -e;
        }
        posix_fadvise(x->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        x->st = st;
        x->size = (uint64_t)sb.st_size;
        xfer_hash_begin(x->h, x->name, x->size);
        x->chunk = chunk ? chunk : 1u << 18;
        x->state = ENG_XFER_OPENING;
        *out = x;
        return 0;
}

void eng_xfer_send_fail(eng_xfer_send_t *x, int err, const char *why)
{
        if (x->state == ENG_XFER_DONE || x->state == ENG_XFER_FAILED)
                return;
        x->state = ENG_XFER_FAILED;
        /* A server's reason usually carries the text of its errno already: say it once. */
        xfer_reason(x->why, sizeof(x->why), why, err, " (", ")");
}

/* Look at what the server said. Returns > 0 if a message was handled, 0 if none, < 0 on
 * failure (state FAILED). */
static int poll_reply(eng_xfer_send_t *x)
{
        eng_msg_t m;
        int rc = eng_stream_try_recv(x->st, &m);
        if (rc == -EAGAIN)
                return 0;
        if (rc != 0) {
                const char *why = eng_errmsg();
                eng_xfer_send_fail(x, rc, *why ? why : "stream ended by the server");
                return -1;
        }
        int ret = 1;
        if (m.cmd == ENG_S_FILE_FAIL) {
                char msg[512];
                int err =
                    eng_xfer_fail_reason(&m,
                                         x->state == ENG_XFER_WAIT_READY ? "server refused the file"
                                                                         : "server failed the file",
                                         msg, sizeof(msg));
                eng_xfer_send_fail(x, err, msg);
                ret = -1;
        } else if (m.cmd == ENG_S_FILE_READY && x->state == ENG_XFER_WAIT_READY) {
                x->state = ENG_XFER_DATA;
        } else if (m.cmd == ENG_S_FILE_DONE && x->state == ENG_XFER_WAIT_DONE) {
                if (m.arg == x->size)
                        x->state = ENG_XFER_DONE;
                else {
                        eng_xfer_send_fail(x, EIO, "server confirmed a different size");
                        ret = -1;
                }
        } else {
                eng_xfer_send_fail(x, EPROTO, "unexpected reply from the server");
                ret = -1;
        }
        eng_stream_release(x->st, &m);
        return ret;
}

/*
 * Read the next n bytes of the file into p (a loan, in the segment) without ever reading p:
 * pread into this thread's private buffer, hash the private bytes, copy them into p, a piece
 * at a time so the copy reads what the hash has just brought into the cache. 0, or -errno
 * (-ENODATA: the file ended early).
 */
static int read_hash_copy(eng_xfer_send_t *x, unsigned char *p, uint32_t n)
{
        uint64_t off = x->sent;
        while (n > 0) {
                uint32_t w = n < XFER_WINDOW ? n : XFER_WINDOW;
                unsigned char *buf = xfer_scratch(w);
                if (buf == NULL)
                        return -ENOMEM;
                uint32_t got = 0;
                while (got < w) {
                        ssize_t r = pread(x->fd, buf + got, w - got, (off_t)(off + got));
                        if (r < 0 && errno == EINTR)
                                continue;
                        if (r < 0)
                                return -errno;
                        if (r == 0)
                                return -ENODATA;
                        got += (uint32_t)r;
                }
                for (uint32_t k = 0; k < w; k += XFER_PIECE) {
                        uint32_t c = w - k < XFER_PIECE ? w - k : XFER_PIECE;
                        XXH3_64bits_update(x->h, buf + k, c);
                        memcpy(p + k, buf + k, c);
                }
                p += w;
                off += w;
                n -= w;
        }
        return 0;
}

/* Chunks one step sends at most: a caller driving many streams from one thread gives each a
 * turn, so a small file is not held up until a big one beside it has been pushed. */
#define SEND_BURST 8

static int send_data(eng_xfer_send_t *x)
{
        int moved = 0, burst = 0;
        while ((x->sent < x->size || x->pend_off != 0) && burst++ < SEND_BURST) {
                if (x->pend_off == 0) {
                        uint64_t left = x->size - x->sent;
                        uint32_t n = left < x->chunk ? (uint32_t)left : x->chunk;
                        void *p;
                        int rc = eng_stream_try_loan(x->st, n, &p, &x->pend_off);
                        if (rc == -EAGAIN)
                                break; /* arena full: the server frees as it writes */
                        if (rc == -EMSGSIZE) {
                                char msg[640];
                                snprintf(msg, sizeof(msg),
                                         "chunks of %u bytes: %s (or lower "
                                         "`chunk` in the options file)",
                                         n, eng_errmsg());
                                eng_xfer_send_fail(x, 0, msg);
                                return -1;
                        }
                        if (rc != 0) {
                                eng_xfer_send_fail(x, rc, "cannot loan a buffer");
                                return -1;
                        }
                        int err = read_hash_copy(x, p, n);
                        if (err != 0) {
                                eng_stream_unloan(x->st, x->pend_off);
                                x->pend_off = 0;
                                if (err == -ENODATA)
                                        eng_xfer_send_fail(x, 0, "file shrank while being sent");
                                else
                                        eng_xfer_send_fail(x, err,
                                                           err == -ENOMEM
                                                               ? "no memory for the read buffer"
                                                               : "read failed");
                                return -1;
                        }
                        x->pend_len = n;
                }
                int rc =
                    eng_stream_try_send(x->st, ENG_C_FILE_DATA, x->sent, x->pend_off, x->pend_len);
                if (rc == -EAGAIN)
                        break; /* ring full: keep the filled buffer for the next step */
                if (rc == -EPIPE && poll_reply(x) < 0)
                        return -1; /* the server ended the stream: its reason is in the ring */
                if (rc != 0) {
                        eng_xfer_send_fail(x, rc, "send failed");
                        return -1;
                }
                x->pend_off = 0;
                x->sent += x->pend_len;
                moved = 1;
        }
        if (x->sent == x->size && x->pend_off == 0) {
                int rc = eng_stream_try_send(x->st, ENG_C_FILE_END, XXH3_64bits_digest(x->h), 0, 0);
                if (rc == 0) {
                        x->state = ENG_XFER_WAIT_DONE;
                        moved = 1;
                } else if (rc != -EAGAIN) {
                        if (rc == -EPIPE && poll_reply(x) < 0)
                                return -1;
                        eng_xfer_send_fail(x, rc, "send failed");
                        return -1;
                }
        }
        return moved;
}

int eng_xfer_send_step(eng_xfer_send_t *x)
{
        int moved = 0;
        for (;;) {
                int rc = 0;
                switch (x->state) {
                case ENG_XFER_OPENING: {
                        void *p;
                        uint64_t off;
                        uint32_t len = (uint32_t)strlen(x->name);
                        rc = eng_stream_try_loan(x->st, len, &p, &off);
                        if (rc == -EAGAIN)
                                return moved;
                        if (rc == 0) {
                                memcpy(p, x->name, len);
                                rc = eng_stream_try_send(x->st, ENG_C_FILE_OPEN, x->size, off, len);
                                if (rc != 0)
                                        eng_stream_unloan(x->st, off);
                                if (rc == -EAGAIN)
                                        return moved;
                        }
                        /* Ended by the server before the file was even announced (it
                         * refused the stream or its session): its reason is in the ring. */
                        if (rc == -EPIPE && poll_reply(x) < 0)
                                return -1;
                        if (rc != 0) {
                                eng_xfer_send_fail(x, rc, "cannot open the stream's file");
                                return -1;
                        }
                        x->state = ENG_XFER_WAIT_READY;
                        moved = 1;
                        continue;
                }
                case ENG_XFER_WAIT_READY:
                case ENG_XFER_WAIT_DONE:
                        rc = poll_reply(x);
                        if (rc < 0)
                                return -1;
                        if (rc == 0)
                                return moved;
                        moved = 1;
                        continue;
                case ENG_XFER_DATA:
                        /* A failure report may arrive while we send: look first. */
                        if (poll_reply(x) < 0)
                                return -1;
                        rc = send_data(x);
                        if (rc < 0)
                                return -1;
                        if (rc == 0 || x->state == ENG_XFER_DATA)
                                return moved | rc;
                        moved = 1;
                        continue;
                case ENG_XFER_DONE:
                        return moved;
                case ENG_XFER_FAILED:
                        return -1;
                }
        }
}

eng_xfer_state_t eng_xfer_send_state(const eng_xfer_send_t *x)
{
        return x->state;
}

uint64_t eng_xfer_send_size(const eng_xfer_send_t *x)
{
        return x->size;
}

uint64_t eng_xfer_send_acked(const eng_xfer_send_t *x)
{
        return x->sent;
}

const char *eng_xfer_send_why(const eng_xfer_send_t *x)
{
        return x->why;
}

void eng_xfer_send_free(eng_xfer_send_t *x)
{
        if (x == NULL)
                return;
        if (x->pend_off != 0)
                eng_stream_unloan(x->st, x->pend_off);
        XXH3_freeState(x->h);
        close(x->fd);
        free(x);
}

int eng_ping(eng_stream_t *st, uint32_t n, uint32_t payload, uint64_t *rtt_ns, int timeout_ms)
{
        for (uint32_t i = 0; i < n; i++) {
                uint64_t off = 0;
                void *p = NULL;
                uint64_t t0 = eng_now_ns();
                if (payload > 0) {
                        int rc = eng_stream_loan(st, payload, &p, &off, timeout_ms);
                        if (rc != 0)
                                return rc;
                        memset(p, (int)(i & 0xff), payload < 64 ? payload : 64);
                }
                int rc = eng_stream_send(st, ENG_C_PING, i, off, payload, timeout_ms);
                if (rc != 0) {
                        eng_stream_unloan(st, off);
                        return rc;
                }
                eng_msg_t m;
                rc = eng_stream_recv(st, &m, timeout_ms);
                if (rc != 0)
                        return rc;
                bool ok = m.cmd == ENG_S_PONG && m.arg == i && m.len == payload;
                eng_stream_release(st, &m);
                if (!ok)
                        return -EPROTO;
                rtt_ns[i] = eng_now_ns() - t0;
        }
        return 0;
}
