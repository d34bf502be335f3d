/*
 * stat.c - snapshots of a segment for tools (engine-stat): read the whole object once into
 * private memory with pread, then decode that copy. Nothing here maps the segment, takes a
 * lock or writes a byte of it, so an inspector can neither block nor disturb the server or a
 * client; and since every value is read from the private copy, a value checked is the value
 * used. Any value may be garbage (a faulty or hostile writer, a segment of another version,
 * a server that died mid-write): each one is checked before it is used, loops are bounded by
 * the private geometry, and what cannot be right becomes a problem line, never a crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define STAT_MAX_PROBLEMS 64
/* The most a snapshot reads: larger objects are read up to this (the header says how big the
 * segment should be; a shm object grown past it by someone else is not read). */
#define STAT_MAX_BYTES (64ull << 30)
/* The first read of a snapshot (headers, bitmap, the arena's header), and how much of the
 * arena's start it must hold to decode the arena's header from a partial image. */
#define STAT_FIRST_READ   (1ull << 20)
#define STAT_ARENA_PREFIX (64ull << 10)

struct eng_stat_view {
        int fd;
        char name[256];
        uid_t owner;
        unsigned char *buf; /* the last image, reused */
        size_t cap;
};

/* ---- problems ----------------------------------------------------------------------- */

static void problem(eng_stat_t *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(eng_stat_t *st, const char *fmt, ...)
{
        if (st->nproblems > STAT_MAX_PROBLEMS)
                return;
        char **p = realloc(st->problems, (st->nproblems + 1) * sizeof(*p));
        if (p == NULL)
                return;
        st->problems = p;
        char line[256];
        if (st->nproblems == STAT_MAX_PROBLEMS) {
                snprintf(line, sizeof(line), "more problems not listed (the first %d are)",
                         STAT_MAX_PROBLEMS);
        } else {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(line, sizeof(line), fmt, ap);
                va_end(ap);
        }
        p[st->nproblems] = strdup(line);
        if (p[st->nproblems] != NULL)
                st->nproblems++;
}

/* ---- names of states ---------------------------------------------------------------- */

static const char *server_state_name(uint32_t s)
{
        switch (s) {
        case SRV_STARTING:
                return "starting";
        case SRV_READY:
                return "ready";
        case SRV_STOPPING:
                return "stopping";
        case SRV_STOPPED:
                return "stopped";
        default:
                return "?";
        }
}

static const char *rec_state_name(uint32_t s)
{
        switch (s) {
        case ST_OFFERED:
                return "offered";
        case ST_CLAIMED:
                return "claimed";
        case ST_OPEN:
                return "open";
        case ST_ENDED:
                return "ended";
        default:
                return "?";
        }
}

static const char *sched_name(uint32_t s)
{
        switch (s) {
        case RUN_IDLE:
                return "idle";
        case RUN_QUEUED:
                return "queued";
        case RUN_RUNNING:
                return "running";
        case RUN_AGAIN:
                return "again";
        case RUN_FIN:
                return "fin";
        case RUN_POLLING:
                return "polling";
        default:
                return "?";
        }
}

/* ---- decoding ----------------------------------------------------------------------- */

/* Descriptors waiting in a channel: its producer's counter minus its consumer's, if that is a
 * possible fill (<= depth); else a problem and 0. */
static uint32_t chan_fill(eng_stat_t *st, const union rec_chan *c, uint32_t transport,
                          uint32_t depth, uint32_t idx, const char *dir)
{
        uint32_t prod, cons;
        if (transport == ENG_TRANSPORT_MUTEX) {
                prod = c->q.tail;
                cons = c->q.head;
        } else {
                prod = c->r.p_tail;
                cons = c->r.c_head;
        }
        uint32_t fill = prod - cons;
        if (fill > depth) {
                problem(st, "record %u: %s ring holds %u descriptors, more than its depth %u", idx,
                        dir, fill, depth);
                return 0;
        }
        return fill;
}

static int cmp_pid(const void *a, const void *b)
{
        const eng_stat_client_t *x = a, *y = b;
        return (x->pid > y->pid) - (x->pid < y->pid);
}

/* The clients: the records' owner pids, each once (sorted: n log n, whatever the image). */
static void collect_clients(eng_stat_t *st)
{
        if (st->nrecs == 0)
                return;
        eng_stat_client_t *c = calloc(st->nrecs, sizeof(*c));
        if (c == NULL)
                return;
        uint32_t n = 0;
        for (uint32_t i = 0; i < st->nrecs; i++)
                if (st->recs[i].pid > 0 && strcmp(st->recs[i].state, "offered") != 0)
                        c[n++] = (eng_stat_client_t){
                            .pid = st->recs[i].pid, .alive = -1, .streams = !st->recs[i].session};
        qsort(c, n, sizeof(*c), cmp_pid);
        uint32_t m = 0;
        for (uint32_t i = 0; i < n; i++) {
                if (m > 0 && c[m - 1].pid == c[i].pid)
                        c[m - 1].streams += c[i].streams;
                else
                        c[m++] = c[i];
        }
        st->clients = c;
        st->nclients = m;
}

/* The records: every slot the private geometry allows, read from the copy. */
static void decode_records(eng_stat_t *st, const unsigned char *img, uint64_t len,
                           const struct eng_seg_hdr *h, const eng_arena_t *a, uint64_t now)
{
        /* Only slots below the record watermark were ever records: above it lie unborn space
         * and buffer blocks. (A writer can lower the watermark under live records; then they
         * are not shown, and the watermark check has said why.) */
        uint64_t slots = eng_arena_rec_max_slots(a);
        if (slots > h->max_streams)
                slots = h->max_streams;
        uint64_t stride = eng_arena_rec_stride(a);
        if (st->rec_top >= st->rec_base && stride != 0 &&
            (st->rec_top - st->rec_base) / stride < slots)
                slots = (st->rec_top - st->rec_base) / stride;
        uint64_t need = rec_bytes(h->ring_depth);
        for (uint64_t i = 0; i < slots; i++) {
                uint64_t off = h->arena_off + eng_arena_rec_offset(a, i);
                if (eng_arena_rec_stride(a) < need + 64) {
                        problem(st, "records of %llu bytes cannot hold rings of depth %u",
                                (unsigned long long)eng_arena_rec_stride(a), h->ring_depth);
                        break;
                }
                if (off > len || len - off < need) {
                        /* Past what was read: the end of the object (a problem), or of a
                         * partial read taken before the watermark grew (records carved since) */
                        if (len >= h->size)
                                problem(st, "record %llu lies outside the segment",
                                        (unsigned long long)i);
                        break;
                }
                int used = eng_arena_rec_in_use(a, i);
                if (used < 0)
                        problem(st, "record slot %llu: its header is not a record's",
                                (unsigned long long)i);
                if (used <= 0)
                        continue; /* free (a given-back record keeps its last words) */
                struct eng_rec r;
                memcpy(&r, img + off, sizeof(r));
                if (r.state == 0)
                        continue; /* allocated, not yet set up */
                eng_stat_rec_t *recs = realloc(st->recs, (st->nrecs + 1) * sizeof(*recs));
                if (recs == NULL)
                        return;
                st->recs = recs;
                eng_stat_rec_t *o = &recs[st->nrecs++];
                memset(o, 0, sizeof(*o));
                o->index = (uint32_t)i;
                o->alive = -1;
                o->state = rec_state_name(r.state);
                if (*o->state == '?')
                        problem(st, "record %llu: state %u is not a record state",
                                (unsigned long long)i, r.state);
                o->sched = sched_name(r.sched);
                if (*o->sched == '?')
                        problem(st, "record %llu: scheduling word %u is not a state",
                                (unsigned long long)i, r.sched);
                if (r.state == ST_OFFERED) {
                        /* the offer: nobody's yet; its claim fields are the server's zeros */
                        o->sched = "idle";
                        continue;
                }
                if (r.type != REC_STREAM && r.type != REC_SESSION)
                        problem(st, "record %llu: type %u is neither stream nor session",
                                (unsigned long long)i, r.type);
                o->session = r.type == REC_SESSION;
                o->pid = r.owner_pid;
                if (r.owner_pid <= 0)
                        problem(st, "record %llu: owner pid %d", (unsigned long long)i,
                                r.owner_pid);
                o->user_id = o->session ? 0 : r.user_id;
                if (r.depth != h->ring_depth)
                        problem(st, "record %llu: ring depth %u, the segment's is %u",
                                (unsigned long long)i, r.depth, h->ring_depth);
                o->c2s_fill = chan_fill(st, &r.c2s, h->transport, h->ring_depth, (uint32_t)i,
                                        "client->server");
                o->s2c_fill = chan_fill(st, &r.s2c, h->transport, h->ring_depth, (uint32_t)i,
                                        "server->client");
                o->c2s_msgs = r.cstat.msgs;
                o->c2s_bytes = r.cstat.bytes;
                o->s2c_msgs = r.sstat.msgs;
                o->s2c_bytes = r.sstat.bytes;
                if (r.sstat.opened_ns != 0 && r.sstat.opened_ns <= now)
                        o->age_ns = now - r.sstat.opened_ns;
                else if (r.sstat.opened_ns > now)
                        problem(st, "record %llu: opened in the future", (unsigned long long)i);
        }
}

static void decode_arena(eng_stat_t *st, const eng_arena_t *a)
{
        eng_arena_stats_t as;
        eng_arena_stats(a, &as);
        st->arena_kind = eng_arena_kind_name(as.kind);
        st->arena_size = as.size;
        st->rec_base = as.rec_base;
        st->rec_top = as.rec_top;
        st->buf_bottom = as.buf_bottom;
        st->arena_top = as.top;
        if (as.rec_top < as.rec_base || as.rec_top > as.buf_bottom || as.buf_bottom > as.top)
                problem(st,
                        "arena watermarks out of order: records up to %llu, buffers from %llu "
                        "(arena %llu..%llu)",
                        (unsigned long long)as.rec_top, (unsigned long long)as.buf_bottom,
                        (unsigned long long)as.rec_base, (unsigned long long)as.top);
        st->rec_used = as.rec_used;
        st->rec_free = as.rec_free;
        st->nclasses = as.nclasses < 16 ? as.nclasses : 16;
        for (uint32_t c = 0; c < st->nclasses; c++)
                st->cls[c] = (eng_stat_class_t){.block_bytes = as.cls[c].block_bytes,
                                                .used = as.cls[c].used_blocks,
                                                .free = as.cls[c].free_blocks,
                                                .failed = as.cls[c].failed};
        st->buf_used_bytes = as.buf_used_bytes;
        st->buf_free_bytes = as.buf_free_bytes;
        st->alloc_failed = as.failed;
        if (as.cuts != 0)
                problem(st, "arena: %llu free list(s) found corrupt and cut since the last repair",
                        (unsigned long long)as.cuts);
}

/* Decode img: the first len bytes of an object of total bytes (len < total: the buffers above
 * the record watermark were not read; nothing below reads them). Private and writable: the
 * arena's view is attached to it. */
static int decode(unsigned char *img, uint64_t len, uint64_t total, eng_stat_t *st)
{
        uint64_t now = eng_now_ns();
        st->taken_ns = now;
        st->server_alive = -1;
        st->server_state = "?";
        st->transport = "?";
        st->arena_kind = "?";
        struct eng_seg_hdr h;
        if (len < sizeof(h)) {
                eng_set_err("%llu bytes: too small for a segment header", (unsigned long long)len);
                return -EPROTO;
        }
        memcpy(&h, img, sizeof(h));
        if (h.magic != SEG_MAGIC) {
                eng_set_err("not an engine segment (magic %08x at offset 0, not %08x)", h.magic,
                            SEG_MAGIC);
                return -EPROTO;
        }
        if (h.version != SEG_VERSION) {
                eng_set_err("segment layout version %u; this build reads version %u", h.version,
                            SEG_VERSION);
                return -EPROTO;
        }
        st->server_pid = h.server_pid;
        st->server_state = server_state_name(h.state);
        if (*st->server_state == '?')
                problem(st, "server state %u is not a state", h.state);
        st->epoch = h.epoch;
        if (h.started_ns != 0 && h.started_ns <= now)
                st->uptime_ns = now - h.started_ns;
        st->transport = h.transport == ENG_TRANSPORT_LOCKFREE ? "lockfree"
                        : h.transport == ENG_TRANSPORT_MUTEX  ? "mutex"
                                                              : "?";
        if (*st->transport == '?')
                problem(st, "transport %u is not a transport", h.transport);
        st->workers = h.workers;
        st->size = h.size;
        st->ring_depth = h.ring_depth;
        st->max_streams = h.max_streams;
        st->opens = h.opens;
        st->closes = h.closes;
        st->ended = h.ended;
        st->aborts = h.aborts;
        st->reclaims = h.reclaims;
        st->heals = h.heals;
        st->refused = h.refused;
        st->walks = h.walks;
        if (h.size != total)
                problem(st, "the header says %llu bytes, the object holds %llu",
                        (unsigned long long)h.size, (unsigned long long)total);
        bool geometry = true;
        if (h.ring_depth < 2 || h.ring_depth > 65536 || (h.ring_depth & (h.ring_depth - 1))) {
                problem(st, "ring depth %u is not a power of two in 2..65536", h.ring_depth);
                geometry = false;
        }
        if (h.max_streams == 0 || h.max_streams > 65536) {
                problem(st, "max streams %u is not in 1..65536", h.max_streams);
                geometry = false;
        }
        if (len < total && (len < h.arena_off || len - h.arena_off < STAT_ARENA_PREFIX)) {
                /* Only a shrink between fstat and pread leaves the read short of the arena. */
                problem(st, "the segment shrank to %llu bytes while it was read (%llu before)",
                        (unsigned long long)len, (unsigned long long)total);
                return 0;
        }
        if (h.arena_off < sizeof(h) || h.arena_off % CL != 0 || h.arena_off >= total) {
                problem(st, "arena offset %llu is outside the segment",
                        (unsigned long long)h.arena_off);
                return 0;
        }
        eng_arena_t a;
        /* The arena's header lies within what was read (checked above); its geometry is the
         * whole object's. */
        int arc = eng_arena_attach(&a, img + h.arena_off, total - h.arena_off);
        if (arc != 0) {
                problem(st, "the arena's header is not valid (%s)", strerror(-arc));
                return 0;
        }
        decode_arena(st, &a);
        if (geometry)
                decode_records(st, img, len, &h, &a, now);
        collect_clients(st);
        return 0;
}

int eng_stat_decode(const void *image, size_t len, eng_stat_t *out)
{
        memset(out, 0, sizeof(*out));
        /* A private, writable copy: the arena's view attaches to it, and nothing another thread
         * does to the caller's buffer can change a value between its check and its use. */
        unsigned char *img = malloc(len ? len : 1);
        if (img == NULL)
                return -ENOMEM;
        memcpy(img, image, len);
        int rc = decode(img, len, len, out);
        free(img);
        return rc;
}

/* ---- a live segment ------------------------------------------------------------------ */

int eng_stat_open(const char *name, uid_t trust_uid, eng_stat_view_t **out)
{
        *out = NULL;
        if (name == NULL)
                name = "/engine-default";
        if (name[0] != '/' || strlen(name) >= sizeof(((eng_stat_view_t *)0)->name) ||
            strchr(name + 1, '/') != NULL) {
                eng_set_err("'%s' is not a segment name (one '/' then a name)", name);
                return -EINVAL;
        }
        int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0) {
                int e = errno;
                if (e == ENOENT)
                        eng_set_err("no segment %s: no server has created it (or it was removed)",
                                    name);
                else
                        eng_set_err("cannot open segment %s: %s", name, strerror(e));
                return -e;
        }
        struct stat sb;
        if (fstat(fd, &sb) != 0) {
                int e = errno;
                close(fd);
                eng_set_err("cannot stat segment %s: %s", name, strerror(e));
                return -e;
        }
        uid_t me = geteuid();
        if (me != 0 && sb.st_uid != me && sb.st_uid != 0 &&
            (trust_uid == 0 || sb.st_uid != trust_uid)) {
                char who[64] = "";
                struct passwd pw, *res = NULL;
                char pbuf[1024];
                if (getpwuid_r(sb.st_uid, &pw, pbuf, sizeof(pbuf), &res) == 0 && res != NULL)
                        snprintf(who, sizeof(who), "%s ", res->pw_name);
                close(fd);
                eng_set_err("segment %s belongs to user %s(uid %u), not to you: not shown (name "
                            "that user as `owner` in options.xml to trust it)",
                            name, who, (unsigned)sb.st_uid);
                return -EACCES;
        }
        eng_stat_view_t *v = calloc(1, sizeof(*v));
        if (v == NULL) {
                close(fd);
                return -ENOMEM;
        }
        v->fd = fd;
        v->owner = sb.st_uid;
        snprintf(v->name, sizeof(v->name), "%s", name);
        *out = v;
        return 0;
}

/* 1 if pid is a live process, 0 if not (none, or a zombie its parent has not reaped yet), -1
 * if it cannot be told. (A pid reused by another process looks alive: tools say "pid".) */
static int pid_alive(int32_t pid)
{
        if (pid <= 0)
                return -1;
        if (kill(pid, 0) != 0 && errno != EPERM)
                return errno == ESRCH ? 0 : -1;
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return 1;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return 1;
        buf[n] = '\0';
        const char *paren = strrchr(buf, ')'); /* the command name may hold anything but ')' last */
        return paren != NULL && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X') ? 0 : 1;
}

/* pread the object's first want bytes into v->buf (a short read at a shrunk end is what there
 * is): 0 and *got, or -errno. */
static int read_prefix(eng_stat_view_t *v, uint64_t want, uint64_t *got)
{
        if (want > v->cap) {
                unsigned char *b = realloc(v->buf, want);
                if (b == NULL) {
                        eng_set_err("no memory for a %llu-byte snapshot", (unsigned long long)want);
                        return -ENOMEM;
                }
                v->buf = b;
                v->cap = want;
        }
        uint64_t n = 0;
        while (n < want) {
                ssize_t r = pread(v->fd, v->buf + n, want - n, (off_t)n);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        int e = errno;
                        eng_set_err("cannot read segment %s: %s", v->name, strerror(e));
                        return -e;
                }
                if (r == 0)
                        break;
                n += (uint64_t)r;
        }
        *got = n;
        return 0;
}

/* How much of the object a snapshot needs, from a first read of len bytes: up to the record
 * watermark, or all of it when that cannot be told (what is read is decoded and checked
 * anyway: this only sizes the read). */
static uint64_t stat_need(const unsigned char *img, uint64_t len, uint64_t total)
{
        struct eng_seg_hdr h;
        if (len >= total || len < sizeof(h))
                return len;
        memcpy(&h, img, sizeof(h));
        if (h.magic != SEG_MAGIC || h.version != SEG_VERSION || h.arena_off < sizeof(h) ||
            h.arena_off >= total || len < h.arena_off || len - h.arena_off < STAT_ARENA_PREFIX)
                return total;
        eng_arena_t a;
        if (eng_arena_attach(&a, (void *)(img + h.arena_off), total - h.arena_off) != 0)
                return total;
        eng_arena_stats_t as;
        eng_arena_stats(&a, &as);
        if (as.rec_top > total - h.arena_off)
                return total;
        uint64_t need = h.arena_off + as.rec_top;
        return need > len ? need : len;
}

int eng_stat_take(eng_stat_view_t *v, eng_stat_t *out)
{
        memset(out, 0, sizeof(*out));
        struct stat sb;
        if (fstat(v->fd, &sb) != 0) {
                eng_set_err("cannot stat segment %s: %s", v->name, strerror(errno));
                return -errno;
        }
        uint64_t total = sb.st_size < 0 ? 0 : (uint64_t)sb.st_size;
        if (total > STAT_MAX_BYTES)
                total = STAT_MAX_BYTES;
        /* The headers first; then, if the records reach further, everything up to the record
         * watermark in one read. The buffers above it are never read: a snapshot costs what the
         * records take, not the segment's size (SIGUSR1 in a server with a large segment). */
        uint64_t want = total < STAT_FIRST_READ ? total : STAT_FIRST_READ, got = 0;
        int rc = read_prefix(v, want, &got);
        if (rc == 0) {
                uint64_t need = stat_need(v->buf, got, total);
                if (need > got)
                        rc = read_prefix(v, need, &got);
        }
        if (rc != 0)
                return rc;
        rc = decode(v->buf, got, total, out);
        snprintf(out->name, sizeof(out->name), "%s", v->name);
        out->owner_uid = v->owner;
        if (rc != 0)
                return rc;
        /* The server is alive while a process holds its OFD lock: the kernel says so, whatever
         * the header's pid says (a read-only descriptor may ask). */
        struct flock f = {
            .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = SEG_LOCK_SERVER, .l_len = 1};
        if (fcntl(v->fd, F_OFD_GETLK, &f) == 0)
                out->server_alive = f.l_type != F_UNLCK;
        else
                out->server_alive = pid_alive(out->server_pid);
        for (uint32_t i = 0; i < out->nrecs; i++)
                out->recs[i].alive = pid_alive(out->recs[i].pid);
        for (uint32_t i = 0; i < out->nclients; i++)
                out->clients[i].alive = pid_alive(out->clients[i].pid);
        return 0;
}

void eng_stat_free(eng_stat_t *st)
{
        if (st == NULL)
                return;
        for (uint32_t i = 0; i < st->nproblems; i++)
                free(st->problems[i]);
        free(st->problems);
        free(st->recs);
        free(st->clients);
        memset(st, 0, sizeof(*st));
}

void eng_stat_close(eng_stat_view_t *v)
{
        if (v == NULL)
                return;
        close(v->fd);
        free(v->buf);
        free(v);
}
