/*
 * xfer_server.c - the receiving side of file transfer, and ping-pong, as engine hooks.
 *
 * Runs on the engine's worker threads; one stream is never run by two workers at once, so a
 * stream's receive state needs no lock. The only shared state is the set of names being
 * received (to refuse two streams writing one name at once), behind a mutex touched once per
 * file open/finish: never per message.
 *
 * Everything this side takes from the segment (a name, file data) is copied out once into
 * private memory, and only the copy is checked, hashed and used (see proto.h). Everything it
 * reports goes through eng_log_escape first.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto.h"
#include "xfer_int.h"

/* eng_xfer_server_t instances alive in this process: a temporary file named with our own pid
 * can only be a dead predecessor's while we are the only one. */
static uint32_t servers_alive;

struct eng_xfer_server {
        eng_xfer_server_cfg_t cfg;
        int dirfd;
        pthread_mutex_t lock;
        char **names; /* names being received now */
        uint32_t nnames, cap;
        uint32_t active;
        uint32_t stale_removed; /* temporary files of dead predecessors removed at start */
        bool draining;
};

struct rx {
        int fd;
        bool open;   /* a file is being received */
        bool failed; /* the current file failed: drop its data until the next open */
        char tmp[64];
        char name[ENG_NAME_MAX + 1]; /* the checked name, private (res.name is escaped) */
        uint64_t t0;
        XXH3_state_t *h;
        xfer_wb_t wb; /* writeback started and waited for so far */
        eng_xfer_result_t res;
};

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
        if (x == NULL) {
                snprintf(why, whylen, "%s", strerror(ENOMEM));
                return -ENOMEM;
        }
        x->cfg = *cfg;
        x->dirfd = -1;
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
                if (x->dirfd >= 0)
                        close(x->dirfd);
                free(x);
                return rc;
        }
        pthread_mutex_init(&x->lock, NULL);
        /* A predecessor killed mid-transfer left its temporary files behind. Ours carry our
         * pid only once we write them, and only another server of this process could be
         * writing one right now. A directory we cannot list just keeps its leftovers. */
        bool alone = __atomic_fetch_add(&servers_alive, 1, __ATOMIC_ACQ_REL) == 0;
        int64_t n = tmp_sweep(x->dirfd, alone);
        x->stale_removed = n > 0 ? (uint32_t)n : 0;
        *out = x;
        return 0;
}

uint32_t eng_xfer_server_stale_removed(const eng_xfer_server_t *x)
{
        return x->stale_removed;
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
        __atomic_fetch_sub(&servers_alive, 1, __ATOMIC_ACQ_REL);
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
static int name_take(eng_xfer_server_t *x, const char *name)
{
        pthread_mutex_lock(&x->lock);
        int rc = x->draining ? -ESHUTDOWN : 0;
        for (uint32_t i = 0; i < x->nnames && rc == 0; i++)
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

/* Hand the result to the report hook, why escaped (it can carry a name and a peer's text). */
static void report(eng_xfer_server_t *x, struct rx *r, int err, const char *why)
{
        r->res.err = err;
        if (why != NULL)
                eng_log_escape(why, strlen(why), r->res.why, sizeof(r->res.why));
        else
                r->res.why[0] = '\0';
        if (x->cfg.report)
                x->cfg.report(&r->res, x->cfg.report_ctx);
}

/* res.name: name escaped; a rendering too long for the field is cut and ends in "...". */
static void set_report_name(struct rx *r, const char *name, size_t len)
{
        size_t room = sizeof(r->res.name) - 3;
        if (eng_log_escape(name, len, r->res.name, room) >= room)
                strcat(r->res.name, "...");
}

/* A file refused at FILE_OPEN: log it like any other failed transfer. */
static void report_refusal(eng_xfer_server_t *x, struct rx *r, int err, const char *why)
{
        char msg[1024];
        snprintf(msg, sizeof(msg), "refused: %s", why);
        r->res.ns = 0;
        report(x, r, err < 0 ? err : -err, msg);
}

/* Tell the client why, with a message in a buffer when the arena has room. */
static void send_fail_code(eng_sstream_t *s, int err, uint32_t code, const char *why)
{
        void *p;
        uint64_t off = 0;
        uint32_t len = (uint32_t)strlen(why);
        if (eng_sstream_loan(s, len, &p, &off) == 0)
                memcpy(p, why, len);
        else
                len = 0; /* the arena is full: the code below still names the reason */
        uint64_t arg = (uint64_t)(uint32_t)(err < 0 ? -err : err) | (uint64_t)(code & 0xffu) << 32;
        if (eng_sstream_send(s, ENG_S_FILE_FAIL, arg, off, len) != 0)
                eng_sstream_free(s, off);
}

static void send_fail(eng_sstream_t *s, int err, const char *why)
{
        send_fail_code(s, err, ENG_XFER_WHY_OTHER, why);
}

/* Make the received file durable and give it its final name: 0, or -errno and *why. The fd
 * is closed either way. */
static int rx_commit(eng_xfer_server_t *x, struct rx *r, const char **why)
{
        int err = 0;
        if (fsync(r->fd) != 0) {
                err = -errno;
                *why = "fsync failed";
        }
        int fd = r->fd;
        r->fd = -1;
        if (close(fd) != 0 && err == 0) {
                err = -errno;
                *why = "close failed";
        }
        if (err == 0 && renameat(x->dirfd, r->tmp, x->dirfd, r->name) != 0) {
                err = -errno;
                *why = "rename into place failed";
        }
        return err;
}

/* End the current file, committed by rx_commit (err == 0) or failed (the temporary file is
 * removed), and report it once. why says what failed; the text of err is added unless why
 * already says it. */
static void rx_finish(eng_xfer_server_t *x, eng_sstream_t *s, struct rx *r, int err,
                      const char *why)
{
        if (!r->open)
                return;
        if (r->fd >= 0)
                close(r->fd); /* failed: whatever close says, the file goes */
        if (err != 0)
                unlinkat(x->dirfd, r->tmp, 0);
        r->fd = -1;
        r->open = false;
        r->failed = err != 0;
        name_drop(x, r->name);
        r->res.ns = eng_now_ns() - r->t0;
        char msg[1024];
        if (err != 0)
                xfer_reason(msg, sizeof(msg), why, err, ": ", "");
        report(x, r, err, err != 0 ? msg : NULL);
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

/* Refuse at once a file that cannot fit in the output directory's file system, rather than
 * after writing most of it. Only what is certainly too big: against every free block (root's
 * reserve included); a write can still meet ENOSPC later, and then fails the file. */
static int check_space(eng_xfer_server_t *x, uint64_t size, char *msg, size_t n)
{
        struct statvfs v;
        if (fstatvfs(x->dirfd, &v) != 0 || v.f_blocks == 0)
                return 0; /* unknown (or a file system that does not count): let writes tell */
        uint64_t free_bytes = (uint64_t)v.f_bfree * v.f_frsize;
        if (size <= free_bytes)
                return 0;
        snprintf(msg, n, "%s: %llu bytes announced, %llu free in the output directory: %s",
                 "not enough space", (unsigned long long)size, (unsigned long long)free_bytes,
                 strerror(ENOSPC));
        return -ENOSPC;
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
        r->t0 = eng_now_ns();
        /* The name lives in shared memory, where the client can still change it: copy it
         * once into our own memory and check and use only the copy. */
        char name[4096];
        size_t nlen = m->len < sizeof(name) ? m->len : sizeof(name);
        if (m->data != NULL)
                memcpy(name, m->data, nlen);
        if (m->data == NULL || m->len > sizeof(name) ||
            eng_safe_name(name, nlen, r->name, sizeof(r->name), &why) != 0) {
                if (m->data != NULL && m->len > sizeof(name))
                        why = "name is longer than 255 bytes";
                if (m->data != NULL)
                        set_report_name(r, name, nlen);
                else
                        snprintf(r->res.name, sizeof(r->res.name), "(no name)");
                return refuse(x, s, r, EINVAL, why ? why : "no file name");
        }
        set_report_name(r, r->name, strlen(r->name));
        char msg[512];
        int rc = check_space(x, m->arg, msg, sizeof(msg));
        if (rc != 0)
                return refuse(x, s, r, -rc, msg);
        rc = name_take(x, r->name);
        if (rc != 0) {
                snprintf(msg, sizeof(msg), "%s is being received on another stream right now",
                         r->name);
                return refuse(x, s, r, -rc,
                              rc == -EBUSY       ? msg
                              : rc == -ESHUTDOWN ? "server is shutting down"
                                                 : strerror(-rc));
        }
        const char *what = NULL;
        r->fd = tmp_create(x->dirfd, x->cfg.file_mode, r->tmp, sizeof(r->tmp), &what);
        if (r->fd < 0) {
                int e = -r->fd;
                r->fd = -1;
                name_drop(x, r->name);
                snprintf(msg, sizeof(msg), "%s: %s", what, strerror(e));
                return refuse(x, s, r, e, msg);
        }
        r->open = true;
        r->wb = (xfer_wb_t){0};
        xfer_hash_begin(r->h, r->name, r->res.size);
        return eng_sstream_send(s, ENG_S_FILE_READY, 0, 0, 0);
}

xfer_wb_plan_t xfer_wb_plan(xfer_wb_t *wb, uint64_t written, uint64_t step, uint64_t lag)
{
        xfer_wb_plan_t p = {0};
        if (wb->off)
                return p;
        uint64_t end = written / XFER_WB_PAGE * XFER_WB_PAGE;
        if (end > wb->started && end - wb->started >= step) {
                p.start_off = wb->started;
                p.start_len = end - wb->started;
                wb->started = end;
        }
        /* wait for whole steps only, so that a wait covers writeback started long ago */
        if (wb->started > lag && wb->started - lag > wb->waited &&
            wb->started - lag - wb->waited >= step) {
                p.wait_off = wb->waited;
                p.wait_len = wb->started - lag - wb->waited;
                wb->waited = wb->started - lag;
        }
        return p;
}

bool xfer_wb_unsupported(int err)
{
        err = err < 0 ? -err : err;
        return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == ESPIPE;
}

int xfer_wb_written(int fd, xfer_wb_t *wb, uint64_t written)
{
        xfer_wb_plan_t p = xfer_wb_plan(wb, written, XFER_WB_STEP, XFER_WB_LAG);
        int rc = 0;
        if (p.start_len &&
            sync_file_range(fd, (off64_t)p.start_off, (off64_t)p.start_len, SYNC_FILE_RANGE_WRITE))
                rc = -errno;
        if (rc == 0 && p.wait_len &&
            sync_file_range(fd, (off64_t)p.wait_off, (off64_t)p.wait_len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER))
                rc = -errno;
        if (rc != 0 && xfer_wb_unsupported(rc)) {
                wb->off = true;
                rc = 0;
        }
        return rc;
}

/* pwrite all of buf at off; 0 or -errno. */
static int write_all(int fd, const unsigned char *buf, size_t len, uint64_t off)
{
        while (len > 0) {
                ssize_t n = pwrite(fd, buf, len, (off_t)off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EIO; /* a regular file never takes nothing: do not loop */
                buf += n;
                off += (uint64_t)n;
                len -= (size_t)n;
        }
        return 0;
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
        /*
         * The payload is in the segment, where any process of the user can rewrite it while we
         * work: read it once, into this thread's private buffer, and hash and write only that
         * copy. A piece is hashed right after it is copied, while it is still in the cache;
         * the window then goes to the file in one pwrite.
         */
        const unsigned char *src = m->data;
        uint64_t off = m->arg;
        uint32_t left = m->len;
        while (left > 0) {
                uint32_t w = left < XFER_WINDOW ? left : XFER_WINDOW;
                unsigned char *buf = xfer_scratch(w);
                int rc = buf == NULL ? -ENOMEM : 0;
                for (uint32_t k = 0; rc == 0 && k < w; k += XFER_PIECE) {
                        uint32_t p = w - k < XFER_PIECE ? w - k : XFER_PIECE;
                        memcpy(buf + k, src + k, p);
                        XXH3_64bits_update(r->h, buf + k, p);
                }
                if (rc == 0)
                        rc = write_all(r->fd, buf, w, off);
                if (rc == 0)
                        rc = xfer_wb_written(r->fd, &r->wb, off + w);
                if (rc != 0) {
                        char what[320], msg[400];
                        if (buf == NULL)
                                snprintf(what, sizeof(what), "no memory to receive %s", r->name);
                        else
                                snprintf(what, sizeof(what), "writing %s failed", r->name);
                        xfer_reason(msg, sizeof(msg), what, rc, ": ", "");
                        rx_finish(x, s, r, rc, what);
                        send_fail(s, -rc, msg);
                        return 0;
                }
                src += w;
                off += w;
                left -= w;
                r->res.received += w;
        }
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
                rx_finish(x, s, r, -EIO, msg);
                send_fail_code(s, EIO, ENG_XFER_WHY_SIZE, msg);
                return 0;
        }
        uint64_t h = XXH3_64bits_digest(r->h);
        if (h != m->arg) {
                snprintf(msg, sizeof(msg), "checksum mismatch: client %016llx, server %016llx",
                         (unsigned long long)m->arg, (unsigned long long)h);
                rx_finish(x, s, r, -EIO, msg);
                send_fail_code(s, EIO, ENG_XFER_WHY_CHECKSUM, msg);
                return 0;
        }
        const char *why = NULL;
        int err = rx_commit(x, r, &why);
        rx_finish(x, s, r, err, why);
        if (err != 0) {
                char reason[400];
                xfer_reason(reason, sizeof(reason), why, err, ": ", "");
                send_fail(s, -err, reason);
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
