/*
 * xfer_server.c - the receiving side of file transfer, and ping-pong, as engine hooks.
 *
 * Runs on the engine's worker threads; one stream is never run by two workers at once, so a
 * stream's receive state needs no lock. The only shared state is the set of names being
 * received (to refuse two streams writing one name at once), behind a mutex touched once per
 * file open/finish: never per message.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto.h"

struct eng_xfer_server {
        eng_xfer_server_cfg_t cfg;
        int dirfd;
        pthread_mutex_t lock;
        char **names; /* names being received now */
        uint32_t nnames, cap;
        uint32_t active;
        uint64_t tmp_seq;
        bool draining;
};

struct rx {
        int fd;
        bool open;   /* a file is being received */
        bool failed; /* the current file failed: drop its data until the next open */
        char tmp[64];
        uint64_t t0;
        XXH3_state_t *h;
        eng_xfer_result_t res;
};

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int eng_safe_name(const char *in, size_t len, char *out, size_t outlen, const char **why)
{
        const char *w = NULL;
        size_t start = 0;
        for (size_t i = 0; i < len; i++) {
                if (in[i] == '\0') {
                        w = "name contains a NUL byte";
                        break;
                }
                if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f) {
                        w = "name contains a control character";
                        break;
                }
                if (in[i] == '/')
                        start = i + 1;
        }
        size_t n = len - start;
        if (w == NULL && n == 0)
                w = "name is empty (or ends with '/')";
        if (w == NULL && in[start] == '.')
                w = "name starts with '.' (hidden, '.', '..' and temporary names are refused)";
        if (w == NULL && (n > ENG_NAME_MAX || n + 1 > outlen))
                w = "name is longer than 255 bytes";
        if (w != NULL) {
                if (why)
                        *why = w;
                return -EINVAL;
        }
        memcpy(out, in + start, n);
        out[n] = '\0';
        return 0;
}

static int mkdir_p(const char *path)
{
        char buf[4096];
        if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
                return -ENAMETOOLONG;
        for (char *p = buf + 1; *p; p++) {
                if (*p == '/') {
                        *p = '\0';
                        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                                return -errno;
                        *p = '/';
                }
        }
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int eng_xfer_server_new(const eng_xfer_server_cfg_t *cfg, eng_xfer_server_t **out, char *why,
                        size_t whylen)
{
        eng_xfer_server_t *x = calloc(1, sizeof(*x));
        if (x == NULL)
                return -ENOMEM;
        x->cfg = *cfg;
        if (x->cfg.file_mode == 0)
                x->cfg.file_mode = 0644;
        int rc = mkdir_p(cfg->outdir);
        if (rc == 0) {
                x->dirfd = open(cfg->outdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (x->dirfd < 0)
                        rc = -errno;
        }
        if (rc == 0 && faccessat(x->dirfd, ".", W_OK, AT_EACCESS) != 0)
                rc = -errno;
        if (rc != 0) {
                snprintf(why, whylen, "output directory %s: %s", cfg->outdir, strerror(-rc));
                if (x->dirfd > 0)
                        close(x->dirfd);
                free(x);
                return rc;
        }
        pthread_mutex_init(&x->lock, NULL);
        *out = x;
        return 0;
}

void eng_xfer_server_free(eng_xfer_server_t *x)
{
        if (x == NULL)
                return;
        for (uint32_t i = 0; i < x->nnames; i++)
                free(x->names[i]);
        free(x->names);
        close(x->dirfd);
        pthread_mutex_destroy(&x->lock);
        free(x);
}

uint32_t eng_xfer_server_active(eng_xfer_server_t *x)
{
        pthread_mutex_lock(&x->lock);
        uint32_t n = x->active;
        pthread_mutex_unlock(&x->lock);
        return n;
}

void eng_xfer_server_drain(eng_xfer_server_t *x)
{
        pthread_mutex_lock(&x->lock);
        x->draining = true;
        pthread_mutex_unlock(&x->lock);
}

/* Reserve a name for one stream; -EBUSY if another stream is receiving it right now,
 * -ESHUTDOWN once the server is draining. */
static int name_take(eng_xfer_server_t *x, const char *name, char *tmp, size_t tmplen)
{
        pthread_mutex_lock(&x->lock);
        int rc = x->draining ? -ESHUTDOWN : 0;
        for (uint32_t i = 0; i < x->nnames; i++)
                if (strcmp(x->names[i], name) == 0)
                        rc = -EBUSY;
        if (rc == 0 && x->nnames == x->cap) {
                uint32_t cap = x->cap ? x->cap * 2 : 16;
                char **n = realloc(x->names, cap * sizeof(*n));
                if (n == NULL)
                        rc = -ENOMEM;
                else {
                        x->names = n;
                        x->cap = cap;
                }
        }
        if (rc == 0 && (x->names[x->nnames] = strdup(name)) == NULL)
                rc = -ENOMEM;
        if (rc == 0) {
                x->nnames++;
                x->active++;
                snprintf(tmp, tmplen, ".eng-%d-%llu.part", (int)getpid(),
                         (unsigned long long)++x->tmp_seq);
        }
        pthread_mutex_unlock(&x->lock);
        return rc;
}

static void name_drop(eng_xfer_server_t *x, const char *name)
{
        pthread_mutex_lock(&x->lock);
        for (uint32_t i = 0; i < x->nnames; i++) {
                if (strcmp(x->names[i], name) == 0) {
                        free(x->names[i]);
                        x->names[i] = x->names[--x->nnames];
                        x->active--;
                        break;
                }
        }
        pthread_mutex_unlock(&x->lock);
}

/* A file refused at FILE_OPEN: log it like any other failed transfer. */
static void report_refusal(eng_xfer_server_t *x, struct rx *r, int err, const char *why)
{
        r->res.err = err < 0 ? err : -err;
        r->res.ns = 0;
        snprintf(r->res.why, sizeof(r->res.why), "refused: %s", why);
        if (x->cfg.report)
                x->cfg.report(&r->res, x->cfg.report_ctx);
}

/* Tell the client why, with a message in a buffer when the arena has room. */
static void send_fail(eng_sstream_t *s, int err, const char *why)
{
        void *p;
        uint64_t off = 0;
        uint32_t len = (uint32_t)strlen(why);
        if (eng_sstream_loan(s, len, &p, &off) == 0)
                memcpy(p, why, len);
        else
                len = 0;
        if (eng_sstream_send(s, ENG_S_FILE_FAIL, (uint64_t)(err < 0 ? -err : err), off, len) != 0)
                eng_sstream_free(s, off);
}

/* End the current file: rename it into place (err == 0) or remove it; report once. */
static void rx_finish(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, int err,
                      const char *why)
{
        if (!r->open)
                return;
        if (err == 0 && fsync(r->fd) != 0) {
                err = -errno;
                why = "fsync failed";
        }
        if (close(r->fd) != 0 && err == 0) {
                err = -errno;
                why = "close failed";
        }
        if (err == 0 && renameat(x->dirfd, r->tmp, x->dirfd, r->res.name) != 0) {
                err = -errno;
                why = "rename into place failed";
        }
        if (err != 0)
                unlinkat(x->dirfd, r->tmp, 0);
        r->fd = -1;
        r->open = false;
        r->failed = err != 0;
        name_drop(x, r->res.name);
        r->res.err = err;
        r->res.ns = now_ns() - r->t0;
        if (err != 0)
                snprintf(r->res.why, sizeof(r->res.why), "%s: %s", why, strerror(-err));
        else
                r->res.why[0] = '\0';
        if (x->cfg.report)
                x->cfg.report(&r->res, x->cfg.report_ctx);
        (void)s;
}

static int on_open(eng_sstream_t *s, void *ctx)
{
        (void)ctx;
        struct rx *r = calloc(1, sizeof(*r));
        if (r == NULL)
                return -ENOMEM;
        r->fd = -1;
        r->h = XXH3_createState();
        if (r->h == NULL) {
                free(r);
                return -ENOMEM;
        }
        *eng_sstream_user(s) = r;
        return 0;
}

static void on_close(eng_sstream_t *s, int err, void *ctx)
{
        eng_xfer_server_t *x = ctx;
        struct rx *r = *eng_sstream_user(s);
        if (r == NULL)
                return;
        if (r->open) {
                const char *why = err == -EPIPE          ? "client went away mid-transfer"
                                  : err == -ESHUTDOWN    ? "server shutting down"
                                  : err == -ECONNABORTED ? "client aborted the stream mid-transfer"
                                                         : "stream closed mid-transfer";
                rx_finish(x, s, r, err ? err : -ECONNABORTED, why);
        }
        XXH3_freeState(r->h);
        free(r);
        *eng_sstream_user(s) = NULL;
}

/* Refuse the file being opened: tell the client and log it. */
static int refuse(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, int err, const char *why)
{
        send_fail(s, err, why);
        report_refusal(x, r, err, why);
        return 0;
}

static int file_open(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, eng_msg_t *m)
{
        const char *why = NULL;
        if (r->open)
                rx_finish(x, s, r, -ECANCELED, "a new file was opened before this one ended");
        r->failed = false;
        memset(&r->res, 0, sizeof(r->res));
        r->res.stream_id = eng_sstream_id(s);
        r->res.pid = eng_sstream_pid(s);
        r->res.size = m->arg;
        r->t0 = now_ns();
        /* The name lives in shared memory, where the client can still change it: copy it
         * once into our own memory and check and use only the copy. */
        char name[4096];
        size_t nlen = m->len < sizeof(name) ? m->len : sizeof(name);
        if (m->data != NULL)
                memcpy(name, m->data, nlen);
        if (m->data == NULL || m->len > sizeof(name) ||
            eng_safe_name(name, nlen, r->res.name, sizeof(r->res.name), &why) != 0) {
                if (m->data != NULL && m->len > sizeof(name))
                        why = "name is longer than 255 bytes";
                snprintf(r->res.name, sizeof(r->res.name), "(unusable name)");
                return refuse(x, s, r, EINVAL, why ? why : "no file name");
        }
        int rc = name_take(x, r->res.name, r->tmp, sizeof(r->tmp));
        if (rc != 0) {
                char msg[320];
                snprintf(msg, sizeof(msg), "%s is being received on another stream right now",
                         r->res.name);
                return refuse(x, s, r, -rc,
                              rc == -EBUSY       ? msg
                              : rc == -ESHUTDOWN ? "server is shutting down"
                                                 : strerror(-rc));
        }
        r->fd = openat(x->dirfd, r->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       x->cfg.file_mode);
        if (r->fd < 0) {
                int e = errno;
                name_drop(x, r->res.name);
                char msg[320];
                snprintf(msg, sizeof(msg), "cannot create a file in the output directory: %s",
                         strerror(e));
                return refuse(x, s, r, e, msg);
        }
        r->open = true;
        XXH3_64bits_reset(r->h);
        return eng_sstream_send(s, ENG_S_FILE_READY, 0, 0, 0);
}

static int file_data(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, eng_msg_t *m)
{
        if (r->failed)
                return 0; /* the client has been told; drop the rest of this file */
        if (!r->open || m->arg != r->res.received || m->len > r->res.size - r->res.received) {
                const char *why = !r->open                    ? "data without an open file"
                                  : m->arg != r->res.received ? "data out of order"
                                                              : "more data than announced";
                if (r->open)
                        rx_finish(x, s, r, -EPROTO, why);
                send_fail(s, EPROTO, why);
                r->failed = true;
                return 0;
        }
        const char *p = m->data;
        uint32_t left = m->len;
        uint64_t off = m->arg;
        while (left > 0) {
                ssize_t n = pwrite(r->fd, p, left, (off_t)off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int e = n < 0 ? errno : ENOSPC;
                        char msg[400];
                        snprintf(msg, sizeof(msg), "writing %s failed: %s", r->res.name,
                                 strerror(e));
                        rx_finish(x, s, r, -e, "write failed");
                        send_fail(s, e, msg);
                        return 0;
                }
                p += n;
                off += (uint64_t)n;
                left -= (uint32_t)n;
        }
        XXH3_64bits_update(r->h, m->data, m->len);
        r->res.received += m->len;
        return 0;
}

static int file_end(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, eng_msg_t *m)
{
        if (r->failed) {
                r->failed = false;
                return 0;
        }
        if (!r->open) {
                send_fail(s, EPROTO, "end of file without an open file");
                return 0;
        }
        char msg[256];
        if (r->res.received != r->res.size) {
                snprintf(msg, sizeof(msg), "size mismatch: announced %llu, received %llu",
                         (unsigned long long)r->res.size, (unsigned long long)r->res.received);
                rx_finish(x, s, r, -EIO, "size mismatch");
                send_fail(s, EIO, msg);
                return 0;
        }
        uint64_t h = XXH3_64bits_digest(r->h);
        if (h != m->arg) {
                snprintf(msg, sizeof(msg), "checksum mismatch: client %016llx, server %016llx",
                         (unsigned long long)m->arg, (unsigned long long)h);
                rx_finish(x, s, r, -EIO, "checksum mismatch");
                send_fail(s, EIO, msg);
                return 0;
        }
        rx_finish(x, s, r, 0, NULL);
        if (r->res.err != 0) {
                send_fail(s, -r->res.err, r->res.why);
                return 0;
        }
        return eng_sstream_send(s, ENG_S_FILE_DONE, r->res.size, 0, 0);
}

static int on_msg(eng_sstream_t *s, eng_msg_t *m, void *ctx)
{
        eng_xfer_server_t *x = ctx;
        struct rx *r = *eng_sstream_user(s);
        switch (m->cmd) {
        case ENG_C_PING: {
                int rc = eng_sstream_send(s, ENG_S_PONG, m->arg, m->off, m->len);
                if (rc == 0)
                        m->off = 0; /* the buffer travels back to the client */
                return rc;
        }
        case ENG_C_FILE_OPEN:
                return file_open(x, s, r, m);
        case ENG_C_FILE_DATA:
                return file_data(x, s, r, m);
        case ENG_C_FILE_END:
                return file_end(x, s, r, m);
        default:
                return -EPROTO; /* unknown command: end this stream */
        }
}

void eng_xfer_server_hooks(eng_xfer_server_t *x, eng_server_hooks_t *hooks)
{
        hooks->on_open = on_open;
        hooks->on_msg = on_msg;
        hooks->on_close = on_close;
        hooks->ctx = x;
}
