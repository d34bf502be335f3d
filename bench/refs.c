/*
 * refs.c - reference rows, measured in the same run as the engine so every ratio compares
 * like with like: the spin floor (two processes on one shared word), memcpy, pipe / UNIX
 * socket / TCP loopback round trip and bulk throughput, read/write (and copy_file_range) copy
 * of the transfer files, `cat` and `cp` + fsync of them, and the arena alone (lock-free vs mutex)
 * at 1 and 2 threads.
 *
 * Conventions shared with the engine workloads: the client fills each message from a hot
 * source buffer (here: write() copies it), the receiver reads every byte it got
 * (eb_consume), the same timing (CLOCK_MONOTONIC per round trip) and the same histograms.
 * A 0-byte round trip carries 1 byte on the OS peers (a stream needs something to read).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_ring.h>

#include "arena.h"
#include "bench.h"

#define BULK_BUF (1u << 20)

const char *const eb_os_peers[3] = {"pipe", "unix", "tcp"};

/* ---- the spin floor: one shared word, two processes ---------------------------------- */

static void floor_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        (void)c;
        (void)o;
        eb_server_ready(x, SRV_READY, 0, NULL);
        uint32_t n = 0;
        for (;;) {
                uint64_t v = __atomic_load_n(&x->word, __ATOMIC_ACQUIRE);
                if (v == UINT64_MAX)
                        break;
                if (v & 1) {
                        __atomic_store_n(&x->word, v + 1, __ATOMIC_RELEASE);
                        continue;
                }
                eb_relax();
                if (++n % 4096 == 0 && eb_stop_requested(x))
                        break;
        }
}

static int floor_one(uint64_t i, void *arg)
{
        eb_xchg_t *x = arg;
        __atomic_store_n(&x->word, 2 * i + 1, __ATOMIC_RELEASE);
        while (__atomic_load_n(&x->word, __ATOMIC_ACQUIRE) != 2 * i + 2)
                eb_relax();
        return 0;
}

static int floor_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        (void)c;
        eb_rtt_loop(x, o, o->rtt_spin_n, floor_one, x);
        __atomic_store_n(&x->word, UINT64_MAX, __ATOMIC_RELEASE);
        return 0;
}

/*
 * ---- the ring floor: a raw ck_ring ping-pong -------------------------------------------
 * Two bare ck_rings (SPSC, 32-byte slots like the engine's descriptors) in shared memory, one
 * each way, and nothing else: no engine, no validation, no scheduling, no allocation. It is
 * what any transport built on ck_ring pays for a round trip: each message moves the ring's
 * p_tail line and then its slot line, where the spin floor moves one word.
 */
struct ckr_desc {
        uint64_t w[4];
};
CK_RING_PROTOTYPE(ckr, ckr_desc)
#define CKR_DEPTH 128
struct ckr_pair {
        _Alignas(64) struct ck_ring a; /* client -> server */
        _Alignas(64) struct ck_ring b; /* server -> client */
        _Alignas(64) struct ckr_desc sa[CKR_DEPTH];
        _Alignas(64) struct ckr_desc sb[CKR_DEPTH];
};
static struct ckr_pair *g_ckr; /* MAP_SHARED, inherited by both children */

static void ckr_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        (void)c;
        (void)o;
        eb_server_ready(x, SRV_READY, 0, NULL);
        uint32_t n = 0;
        for (;;) {
                struct ckr_desc d;
                if (ck_ring_dequeue_spsc_ckr(&g_ckr->a, g_ckr->sa, &d)) {
                        if (d.w[0] == UINT64_MAX)
                                break;
                        d.w[1] = d.w[0] + 1;
                        while (!ck_ring_enqueue_spsc_ckr(&g_ckr->b, g_ckr->sb, &d))
                                eb_relax();
                        continue;
                }
                eb_relax();
                if (++n % 4096 == 0 && eb_stop_requested(x))
                        break;
        }
}

static int ckr_one(uint64_t i, void *arg)
{
        (void)arg;
        struct ckr_desc d = {.w = {i, 0, 0, 0}};
        while (!ck_ring_enqueue_spsc_ckr(&g_ckr->a, g_ckr->sa, &d))
                eb_relax();
        while (!ck_ring_dequeue_spsc_ckr(&g_ckr->b, g_ckr->sb, &d))
                eb_relax();
        return d.w[0] != i || d.w[1] != i + 1; /* a wrong reply fails the cell */
}

static int ckr_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        (void)c;
        int rc = eb_rtt_loop(x, o, o->rtt_spin_n, ckr_one, NULL);
        struct ckr_desc stop = {.w = {UINT64_MAX, 0, 0, 0}};
        while (!ck_ring_enqueue_spsc_ckr(&g_ckr->a, g_ckr->sa, &stop))
                eb_relax();
        return rc;
}

static void run_ckring(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        g_ckr =
            mmap(NULL, sizeof(*g_ckr), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (g_ckr == MAP_FAILED) {
                r->status = EB_FAIL;
                eb_errf(r->reason, sizeof(r->reason), "mmap: %s", strerror(errno));
                return;
        }
        ck_ring_init(&g_ckr->a, CKR_DEPTH);
        ck_ring_init(&g_ckr->b, CKR_DEPTH);
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x != NULL) {
                r->status = eb_run_children(c, o, x, ckr_server, ckr_client, o->rtt_ms + 30000, r);
                if (r->status == EB_OK)
                        eb_result_set_hist(r, &x->hist);
                eb_xchg_free(x);
        }
        munmap(g_ckr, sizeof(*g_ckr));
        g_ckr = NULL;
}

static void run_floor(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        r->status = eb_run_children(c, o, x, floor_server, floor_client, o->rtt_ms + 30000, r);
        if (r->status == EB_OK)
                eb_result_set_hist(r, &x->hist);
        eb_xchg_free(x);
}

/* ---- memcpy ------------------------------------------------------------------------- */

static int memcpy_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        (void)c;
        static const uint64_t sizes[3] = {64u << 10, 1u << 20, 256u << 20};
        for (int i = 0; i < 3; i++) {
                uint64_t n = sizes[i];
                if (o->quick && n > (64u << 20))
                        n = 64u << 20;
                unsigned char *a = malloc(n), *b = malloc(n);
                if (a == NULL || b == NULL) {
                        eb_errf(x->cli_err, sizeof(x->cli_err), "malloc %llu",
                                (unsigned long long)n);
                        return 1;
                }
                memset(a, 1, n);
                memset(b, 2, n);
                uint64_t t0 = eng_now_ns(), end = t0 + o->misc_ms * 1000000ull / 3, bytes = 0, t;
                do {
                        memcpy(b, a, n);
                        __asm__ volatile("" : : "r"(b) : "memory");
                        bytes += n;
                        t = eng_now_ns();
                } while (t < end);
                x->v[i] = (double)bytes / ((double)(t - t0) / 1e9) / 1e9;
                x->v[3 + i] = (double)n;
                free(a);
                free(b);
        }
        return 0;
}

static void run_memcpy(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        r->status = eb_run_children(c, o, x, NULL, memcpy_client, 3 * o->misc_ms + 30000, r);
        if (r->status == EB_OK)
                for (int i = 0; i < 3; i++) {
                        char k[40], sz[16];
                        eb_size_name((uint64_t)x->v[3 + i], sz, sizeof(sz));
                        snprintf(k, sizeof(k), "gb_per_s_%.14s", sz);
                        eb_metric_set(r, k, x->v[i]);
                }
        eb_xchg_free(x);
}

/* ---- OS peers: pipe, UNIX stream socket, TCP loopback ---------------------------------- */

static void set_nonblock(int fd, bool on)
{
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* 0, or -1 on error/EOF (errno set; 0 at EOF) */
static int read_full(int fd, void *buf, size_t n, bool spin)
{
        unsigned char *p = buf;
        while (n > 0) {
                ssize_t k = read(fd, p, n);
                if (k > 0) {
                        p += k;
                        n -= (size_t)k;
                } else if (k == 0) {
                        errno = 0;
                        return -1;
                } else if (errno == EAGAIN && spin) {
                        eb_relax();
                } else if (errno != EINTR) {
                        return -1;
                }
        }
        return 0;
}

static int write_full(int fd, const void *buf, size_t n, bool spin)
{
        const unsigned char *p = buf;
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k > 0) {
                        p += k;
                        n -= (size_t)k;
                } else if (k < 0 && errno == EAGAIN && spin) {
                        eb_relax();
                } else if (k < 0 && errno != EINTR) {
                        return -1;
                }
        }
        return 0;
}

static void sock_name(const eb_cell_t *c, const eb_opts_t *o, struct sockaddr_un *a, socklen_t *len)
{
        memset(a, 0, sizeof(*a));
        a->sun_family = AF_UNIX;
        /* abstract namespace: nothing to clean up on disk */
        int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "%s-%d", o->tag, c->seq);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static void tune_sock(int fd, bool tcp, bool bulk)
{
        int one = 1;
        if (tcp)
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (bulk) {
                int sz = 4 << 20; /* a tuned peer: the ratio against it is conservative */
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        }
}

/* Server side of a connection: the fd to read from and the one to write to. */
static int peer_server_open(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o, bool bulk,
                            int *rfd, int *wfd)
{
        if (strcmp(c->impl, "pipe") == 0) {
                *rfd = c->fds[0];
                *wfd = c->fds[1];
                for (int i = 2; i < 4; i++)
                        if (c->fds[i] >= 0)
                                close(c->fds[i]);
                eb_server_ready(x, SRV_READY, 0, NULL);
                return 0;
        }
        bool tcp = strcmp(c->impl, "tcp") == 0;
        int ls = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rc = ls < 0 ? -1 : 0;
        if (rc == 0 && tcp) {
                int one = 1;
                setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                struct sockaddr_in a = {.sin_family = AF_INET,
                                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                socklen_t al = sizeof(a);
                rc = bind(ls, (struct sockaddr *)&a, sizeof(a));
                if (rc == 0)
                        rc = getsockname(ls, (struct sockaddr *)&a, &al);
                x->port = ntohs(a.sin_port);
        } else if (rc == 0) {
                struct sockaddr_un a;
                socklen_t al;
                sock_name(c, o, &a, &al);
                rc = bind(ls, (struct sockaddr *)&a, al);
        }
        if (rc == 0 && bulk && ls >= 0)
                tune_sock(ls, tcp, bulk);
        if (rc == 0)
                rc = listen(ls, 1);
        if (rc != 0) {
                char e[128];
                eb_errf(e, sizeof(e), "listen: %s", strerror(errno));
                eb_server_ready(x, SRV_FAILED, -errno, e);
                return -1;
        }
        eb_server_ready(x, SRV_READY, 0, NULL);
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        close(ls);
        if (fd < 0) {
                eb_errf(x->srv_err, sizeof(x->srv_err), "accept: %s", strerror(errno));
                return -1;
        }
        tune_sock(fd, tcp, bulk);
        *rfd = *wfd = fd;
        return 0;
}

static int peer_client_open(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o, bool bulk,
                            int *rfd, int *wfd)
{
        if (strcmp(c->impl, "pipe") == 0) {
                *rfd = c->fds[2];
                *wfd = c->fds[3];
                for (int i = 0; i < 2; i++)
                        if (c->fds[i] >= 0)
                                close(c->fds[i]);
                return 0;
        }
        bool tcp = strcmp(c->impl, "tcp") == 0;
        int fd = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rc = fd < 0 ? -1 : 0;
        if (rc == 0)
                tune_sock(fd, tcp, bulk);
        if (rc == 0 && tcp) {
                struct sockaddr_in a = {.sin_family = AF_INET,
                                        .sin_port = htons(x->port),
                                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
        } else if (rc == 0) {
                struct sockaddr_un a;
                socklen_t al;
                sock_name(c, o, &a, &al);
                rc = connect(fd, (struct sockaddr *)&a, al);
        }
        if (rc != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "connect: %s", strerror(errno));
                return -1;
        }
        *rfd = *wfd = fd;
        return 0;
}

static void rtt_peer_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        int rfd, wfd;
        if (peer_server_open(x, c, o, false, &rfd, &wfd) != 0)
                _exit(1);
        bool spin = strcmp(c->mode, "spin") == 0;
        size_t P = c->payload ? c->payload : 1;
        unsigned char *buf = malloc(P);
        if (spin)
                set_nonblock(rfd, true);
        uint64_t sink = 0;
        while (buf && read_full(rfd, buf, P, spin) == 0) {
                sink ^= eb_consume(buf, P);
                if (write_full(wfd, buf, P, spin) != 0)
                        break;
        }
        x->sink ^= sink;
        free(buf);
}

struct peer_trip {
        eb_xchg_t *x;
        int rfd, wfd;
        size_t P;
        bool spin;
        const void *src;
        unsigned char *buf;
};

static int peer_one(uint64_t i, void *arg)
{
        struct peer_trip *p = arg;
        if (write_full(p->wfd, p->src, p->P, p->spin) != 0 ||
            read_full(p->rfd, p->buf, p->P, p->spin) != 0) {
                eb_errf(p->x->cli_err, sizeof(p->x->cli_err), "round trip %llu: %s",
                        (unsigned long long)i, errno ? strerror(errno) : "EOF");
                return 1;
        }
        p->x->sink ^= eb_consume(p->buf, p->P);
        return 0;
}

static int rtt_peer_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        int rfd, wfd;
        if (peer_client_open(x, c, o, false, &rfd, &wfd) != 0)
                return 1;
        bool spin = strcmp(c->mode, "spin") == 0;
        size_t P = c->payload ? c->payload : 1;
        const void *src = eb_src(P);
        unsigned char *buf = malloc(P);
        if (spin)
                set_nonblock(rfd, true);
        struct peer_trip pt = {
            .x = x, .rfd = rfd, .wfd = wfd, .P = P, .spin = spin, .src = src, .buf = buf};
        int rc = c->gap_ns
                     ? eb_sparse_loop(x, o, c->gap_ns, peer_one, &pt)
                     : eb_rtt_loop(x, o, spin ? o->rtt_spin_n : o->rtt_block_n, peer_one, &pt);
        close(wfd);
        if (rfd != wfd)
                close(rfd);
        free(buf);
        return rc;
}

static void bulk_peer_server(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        int rfd, wfd;
        if (peer_server_open(x, c, o, true, &rfd, &wfd) != 0)
                _exit(1);
        if (wfd != rfd)
                close(wfd);
        unsigned char *buf = malloc(BULK_BUF);
        uint64_t bytes = 0, last = 0, sink = 0;
        for (;;) {
                ssize_t k = read(rfd, buf, BULK_BUF);
                if (k > 0) {
                        sink ^= eb_consume(buf, (size_t)k);
                        bytes += (uint64_t)k;
                        last = eng_now_ns();
                } else if (k == 0 || errno != EINTR) {
                        break;
                }
        }
        x->srv_bytes = bytes;
        x->t_last_ns = last;
        x->sink ^= sink;
        free(buf);
}

static int bulk_peer_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        int rfd, wfd;
        if (peer_client_open(x, c, o, true, &rfd, &wfd) != 0)
                return 1;
        if (rfd != wfd)
                close(rfd);
        size_t P = c->payload;
        const void *src = eb_src(P);
        /* Warm-up for 1/5 of the time, as the engine gets: written, read, not counted. The
         * reader counts everything; the parent subtracts the warm-up bytes (cli_iters). */
        uint64_t n = 0, warm = 0;
        for (int phase = 0; phase < 2; phase++) {
                uint64_t t0 = eng_now_ns();
                uint64_t end = t0 + o->tput_ms * 1000000ull / (phase ? 1 : 5);
                if (phase == 1) {
                        x->t0_ns = t0;
                        warm = n;
                        n = 0;
                }
                for (;;) {
                        if (write_full(wfd, src, P, false) != 0) {
                                eb_errf(x->cli_err, sizeof(x->cli_err), "write: %s",
                                        strerror(errno));
                                return 1;
                        }
                        n++;
                        if ((P >= 4096 || n % 64 == 0) && eng_now_ns() >= end)
                                break;
                }
        }
        x->cli_iters = warm;
        x->cli_msgs = n;
        x->cli_bytes = n * P;
        close(wfd); /* EOF: the server's last read is the last receipt */
        x->t1_ns = eng_now_ns();
        return 0;
}

static void run_peer(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        bool bulk = strcmp(c->group, "tput") == 0;
        if (strcmp(c->impl, "pipe") == 0) {
                int a[2], b[2] = {-1, -1};
                if (pipe2(a, O_CLOEXEC) != 0 || (!bulk && pipe2(b, O_CLOEXEC) != 0)) {
                        r->status = EB_FAIL;
                        eb_errf(r->reason, sizeof(r->reason), "pipe: %s", strerror(errno));
                        eb_xchg_free(x);
                        return;
                }
                fcntl(a[1], F_SETPIPE_SZ, 1 << 20);
                if (!bulk)
                        fcntl(b[1], F_SETPIPE_SZ, 1 << 20);
                /* server reads a, writes b; client reads b, writes a */
                c->fds[0] = a[0];
                c->fds[1] = b[1];
                c->fds[2] = b[0];
                c->fds[3] = a[1];
        }
        if (bulk) {
                r->status = eb_run_children(c, o, x, bulk_peer_server, bulk_peer_client,
                                            2 * o->tput_ms + 30000, r);
                if (r->status == EB_OK) {
                        double s =
                            x->t_last_ns > x->t0_ns ? (double)(x->t_last_ns - x->t0_ns) / 1e9 : 0;
                        uint64_t bytes = x->srv_bytes - x->cli_iters * c->payload;
                        double msgs = (double)bytes / (double)c->payload;
                        eb_metric_set(r, "msgs", msgs);
                        eb_metric_set(r, "bytes", (double)bytes);
                        eb_metric_set(r, "secs", s);
                        eb_metric_set(r, "msgs_per_s", s > 0 ? msgs / s : 0);
                        eb_metric_set(r, "gb_per_s", s > 0 ? (double)bytes / s / 1e9 : 0);
                        if (bytes != x->cli_bytes) {
                                r->status = EB_FAIL;
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server read %llu bytes, client wrote %llu",
                                        (unsigned long long)x->srv_bytes,
                                        (unsigned long long)x->cli_bytes);
                        }
                }
        } else {
                r->status = eb_run_children(c, o, x, rtt_peer_server, rtt_peer_client,
                                            o->rtt_ms + 2 * o->sparse_budget_ms + 60000, r);
                if (r->status == EB_OK) {
                        eb_result_set_hist(r, &x->hist);
                        double s = (double)(x->t1_ns - x->t0_ns) / 1e9;
                        if (c->gap_ns) {
                                eb_metric_set(r, "gap_ns", (double)c->gap_ns);
                                eb_metric_set(r, "late", (double)x->late);
                        } else {
                                eb_metric_set(r, "ops_per_s", s > 0 ? (double)x->cli_iters / s : 0);
                        }
                        eb_metric_set(r, "wire_bytes", (double)(c->payload ? c->payload : 1));
                }
        }
        eb_xchg_free(x);
}

/* ---- files: sources, warming, read/write copy ------------------------------------------ */

void eb_files_path(const eb_opts_t *o, int files, int k, char *out, size_t n)
{
        if (files <= 1)
                snprintf(out, n, "%s/src/one.bin", o->workdir);
        else
                snprintf(out, n, "%s/src/part%d.bin", o->workdir, k);
}

static int make_file(const char *path, uint64_t size, uint64_t seed, char *why, size_t n)
{
        struct stat sb;
        if (stat(path, &sb) == 0 && (uint64_t)sb.st_size == size)
                return 0;
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
                eb_errf(why, n, "%s: %s", path, strerror(errno));
                return -1;
        }
        const unsigned char *src = eb_src(BULK_BUF);
        unsigned char *buf = malloc(BULK_BUF);
        uint64_t done = 0;
        int rc = 0;
        while (rc == 0 && done < size) {
                size_t k = size - done < BULK_BUF ? (size_t)(size - done) : BULK_BUF;
                memcpy(buf, src, k);
                uint64_t stamp = seed ^ done;
                memcpy(buf, &stamp, k < 8 ? k : 8); /* every MiB differs */
                if (write_full(fd, buf, k, false) != 0) {
                        eb_errf(why, n, "%s: %s", path, strerror(errno));
                        rc = -1;
                }
                done += k;
        }
        free(buf);
        close(fd);
        return rc;
}

int eb_files_prepare(const eb_opts_t *o, char *why, size_t n)
{
        char p[700];
        snprintf(p, sizeof(p), "%s/src", o->workdir);
        if (mkdir(o->workdir, 0700) != 0 && errno != EEXIST) {
                eb_errf(why, n, "%s: %s", o->workdir, strerror(errno));
                return -1;
        }
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
                eb_errf(why, n, "%s: %s", p, strerror(errno));
                return -1;
        }
        eb_files_path(o, 1, 0, p, sizeof(p));
        if (make_file(p, o->file_bytes, 1, why, n) != 0)
                return -1;
        for (int k = 0; k < 8; k++) {
                eb_files_path(o, 8, k, p, sizeof(p));
                if (make_file(p, o->file_bytes / 8, 100 + (uint64_t)k, why, n) != 0)
                        return -1;
        }
        return 0;
}

void eb_files_warm(const eb_opts_t *o, int files)
{
        unsigned char *buf = malloc(BULK_BUF);
        if (buf == NULL)
                return;
        for (int k = 0; k < files; k++) {
                char p[700];
                eb_files_path(o, files, k, p, sizeof(p));
                int fd = open(p, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        continue;
                while (read(fd, buf, BULK_BUF) > 0)
                        ;
                close(fd);
        }
        free(buf);
}

void eb_memory_warm(uint64_t bytes)
{
        /* Touch, then give back: the guest's free pages are backed by the host again, so the
         * tmpfs pages the next copy allocates do not pay for the host faulting them in (this
         * VM hands freed memory back to the host, and touching it again is ~7x slower). */
        unsigned char *p =
            mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return;
        for (uint64_t i = 0; i < bytes; i += 4096)
                p[i] = 1;
        munmap(p, bytes);
}

void eb_rmdir_files(const char *dir)
{
        DIR *d = opendir(dir);
        if (d == NULL)
                return;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                        unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
        rmdir(dir);
}

static int copy_one(eb_xchg_t *x, const char *from, const char *to, bool cfr, unsigned char *buf)
{
        int in = open(from, O_RDONLY | O_CLOEXEC);
        int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (in < 0 || out < 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "open %s: %s", in < 0 ? from : to,
                        strerror(errno));
                return -1;
        }
        uint64_t total = 0;
        for (;;) {
                ssize_t k;
                if (cfr) {
                        k = copy_file_range(in, NULL, out, NULL, BULK_BUF, 0);
                } else {
                        k = read(in, buf, BULK_BUF);
                        if (k > 0 && write_full(out, buf, (size_t)k, false) != 0)
                                k = -1;
                }
                if (k == 0)
                        break;
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        eb_errf(x->cli_err, sizeof(x->cli_err), "copy %s: %s", from,
                                strerror(errno));
                        return -1;
                }
                total += (uint64_t)k;
        }
        fsync(out); /* as the engine's server does before renaming into place */
        close(out);
        close(in);
        x->cli_bytes += total;
        return 0;
}

/* Run the program path (argv) in a child with its stdout on out (-1: left alone), wait for
 * it (wait4) and add its CPU time to x->cpu_s[0]. 0, or -1 with x->cli_err saying why. */
static int exec_wait(eb_xchg_t *x, const char *path, char *const argv[], int out)
{
        pid_t self = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "fork: %s", strerror(errno));
                return -1;
        }
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with this child (which dies with us) */
                if (getppid() != self || (out >= 0 && dup2(out, STDOUT_FILENO) < 0))
                        _exit(126);
                execv(path, argv);
                _exit(127);
        }
        int st;
        struct rusage ru;
        pid_t w;
        while ((w = wait4(pid, &st, 0, &ru)) < 0 && errno == EINTR)
                ;
        if (w != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "%s %s: %s", path, argv[1],
                        w != pid                 ? strerror(errno)
                        : !WIFEXITED(st)         ? "killed"
                        : WEXITSTATUS(st) == 127 ? "cannot run it"
                                                 : "failed");
                return -1;
        }
        x->cpu_s[0] += (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        return 0;
}

/* `cat SRC > DST`: /bin/cat run with its output on the destination file (coreutils cat copies
 * with copy_file_range between regular files). Its CPU time is what wait4 reports for it. */
static int cat_one(eb_xchg_t *x, const char *from, const char *to)
{
        int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "open %s: %s", to, strerror(errno));
                return -1;
        }
        char *const argv[] = {"cat", (char *)from, NULL};
        if (exec_wait(x, "/bin/cat", argv, out) != 0) {
                close(out);
                return -1;
        }
        fsync(out); /* as the others do (nothing to do on tmpfs) */
        struct stat sb;
        fstat(out, &sb);
        close(out);
        x->cli_bytes += (uint64_t)sb.st_size;
        return 0;
}

/* `cp SRC DST && sync DST`: /bin/cp, then fsync of the copy (what coreutils `sync FILE`
 * does; sync(2) would also flush whatever else the machine has dirty). The fsync is timed and
 * its CPU is this process's: the data is only on the disk once it returns, as the engine's
 * server fsyncs each file before its rename. */
static int cpsync_one(eb_xchg_t *x, const char *from, const char *to)
{
        char *const argv[] = {"cp", (char *)from, (char *)to, NULL};
        if (exec_wait(x, "/bin/cp", argv, -1) != 0)
                return -1;
        int out = open(to, O_WRONLY | O_CLOEXEC);
        if (out < 0 || fsync(out) != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "%s %s: %s", out < 0 ? "open" : "fsync", to,
                        strerror(errno));
                if (out >= 0)
                        close(out);
                return -1;
        }
        struct stat sb;
        fstat(out, &sb);
        close(out);
        x->cli_bytes += (uint64_t)sb.st_size;
        return 0;
}

void eb_xfer_outdir(const eb_cell_t *c, const eb_opts_t *o, char *out, size_t n)
{
        snprintf(out, n, "%s/out-%d", c->disk ? o->disk_workdir : o->workdir, c->seq);
}

void eb_disk_settle(const eb_opts_t *o, const char *dir)
{
        eb_rmdir_files(dir);
        int fd = open(o->disk_workdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                syncfs(fd);
                close(fd);
        }
}

static int copy_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        char dir[600];
        eb_xfer_outdir(c, o, dir, sizeof(dir));
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "%s: %s", dir, strerror(errno));
                return 1;
        }
        unsigned char *buf = malloc(BULK_BUF);
        bool cfr = strcmp(c->impl, "cfr") == 0, cat = strcmp(c->impl, "cat") == 0;
        bool cpsync = strcmp(c->impl, "cpsync") == 0;
        x->t0_ns = eng_now_ns();
        double cpu0 = eb_proc_cpu_s(0);
        for (uint32_t k = 0; k < c->streams; k++) {
                char from[700], to[700];
                eb_files_path(o, (int)c->streams, (int)k, from, sizeof(from));
                snprintf(to, sizeof(to), "%s/copy%u.bin", dir, k);
                int rc = cat      ? cat_one(x, from, to)
                         : cpsync ? cpsync_one(x, from, to)
                                  : copy_one(x, from, to, cfr, buf);
                if (rc != 0)
                        return 1;
        }
        x->t1_ns = eng_now_ns();
        x->cpu_s[1] = eb_proc_cpu_s(0) - cpu0; /* this process (cat, cp: forking and waiting) */
        free(buf);
        return 0;
}

static void run_copy(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        if (c->disk && o->disk_why[0]) {
                r->status = EB_NA;
                snprintf(r->reason, sizeof(r->reason), "%s", o->disk_why);
                eb_xchg_free(x);
                return;
        }
        char dir[600];
        eb_xfer_outdir(c, o, dir, sizeof(dir));
        eb_rmdir_files(dir);
        eb_files_warm(o, (int)c->streams);
        eb_memory_warm(o->file_bytes + (o->file_bytes >> 2));
        r->status = eb_run_children(c, o, x, NULL, copy_client, 300000, r);
        if (r->status == EB_OK) {
                double s = (double)(x->t1_ns - x->t0_ns) / 1e9, cpu = x->cpu_s[0] + x->cpu_s[1];
                eb_metric_set(r, "bytes", (double)x->cli_bytes);
                eb_metric_set(r, "secs", s);
                eb_metric_set(r, "gb_per_s", s > 0 ? (double)x->cli_bytes / s / 1e9 : 0);
                eb_metric_set(r, "cpu_s", cpu);
                eb_metric_set(r, "cpu_s_per_gb",
                              x->cli_bytes ? cpu / ((double)x->cli_bytes / 1e9) : NAN);
                uint64_t want = c->streams > 1 ? o->file_bytes / 8 * c->streams : o->file_bytes;
                if (x->cli_bytes != want) {
                        r->status = EB_FAIL;
                        eb_errf(r->reason, sizeof(r->reason), "copied %llu bytes of %llu",
                                (unsigned long long)x->cli_bytes, (unsigned long long)want);
                }
        }
        if (c->disk)
                eb_disk_settle(o, dir);
        else
                eb_rmdir_files(dir);
        eb_xchg_free(x);
}

/* ---- the arena alone ---------------------------------------------------------------- */

#define ARENA_BYTES (64u << 20)
#define ARENA_BATCH 16

struct arena_thr {
        eng_arena_t *a;
        pthread_barrier_t *bar;
        uint32_t owner;
        uint64_t ms;
        uint64_t pairs;
        int err;
};

static void *arena_thread(void *p)
{
        struct arena_thr *t = p;
        static const uint64_t sizes[4] = {64, 1024, 4096, 65536};
        uint64_t offs[ARENA_BATCH];
        pthread_barrier_wait(t->bar);
        uint64_t end = eng_now_ns() + t->ms * 1000000ull;
        do {
                for (int j = 0; j < ARENA_BATCH; j++) {
                        int rc = eng_arena_alloc(t->a, sizes[j & 3], t->owner, &offs[j]);
                        if (rc != 0) {
                                t->err = rc;
                                for (int i = 0; i < j; i++)
                                        eng_arena_free(t->a, offs[i]);
                                return NULL;
                        }
                }
                for (int j = 0; j < ARENA_BATCH; j++)
                        eng_arena_free(t->a, offs[j]);
                t->pairs += ARENA_BATCH;
        } while (eng_now_ns() < end);
        return NULL;
}

static int arena_client(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o)
{
        void *base = aligned_alloc(4096, ARENA_BYTES);
        if (base == NULL) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "aligned_alloc failed");
                return 1;
        }
        memset(base, 0, ARENA_BYTES);
        eng_arena_t a;
        eng_arena_cfg_t cfg = {.kind = (eng_arena_kind_t)c->transport,
                               .record_size = 1024,
                               .min_class_shift = o->min_shift,
                               .max_class_shift = o->max_shift};
        int rc = eng_arena_format(&a, base, ARENA_BYTES, &cfg);
        if (rc != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "eng_arena_format: %s", strerror(-rc));
                return 1;
        }
        uint32_t n = c->streams;
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, n + 1);
        struct arena_thr th[8];
        pthread_t tid[8];
        for (uint32_t i = 0; i < n; i++) {
                th[i] = (struct arena_thr){
                    .a = &a, .bar = &bar, .owner = i + 1, .ms = o->misc_ms, .pairs = 0};
                pthread_create(&tid[i], NULL, arena_thread, &th[i]);
        }
        pthread_barrier_wait(&bar);
        uint64_t t0 = eng_now_ns();
        uint64_t pairs = 0;
        int err = 0;
        for (uint32_t i = 0; i < n; i++) {
                pthread_join(tid[i], NULL);
                pairs += th[i].pairs;
                if (th[i].err)
                        err = th[i].err;
        }
        uint64_t t1 = eng_now_ns();
        x->t0_ns = t0;
        x->t1_ns = t1;
        x->cli_iters = pairs;
        char why[256];
        if (err == 0 && eng_arena_check(&a, why, sizeof(why)) != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "arena inconsistent afterwards: %s", why);
                return 1;
        }
        if (err != 0) {
                eb_errf(x->cli_err, sizeof(x->cli_err), "eng_arena_alloc: %s", strerror(-err));
                return 1;
        }
        free(base);
        return 0;
}

static void run_arena(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new_or_fail(r);
        if (x == NULL)
                return;
        r->status = eb_run_children(c, o, x, NULL, arena_client, o->misc_ms + 30000, r);
        if (r->status == EB_OK) {
                double s = (double)(x->t1_ns - x->t0_ns) / 1e9;
                eb_metric_set(r, "pairs", (double)x->cli_iters);
                eb_metric_set(r, "secs", s);
                eb_metric_set(r, "pairs_per_s", s > 0 ? (double)x->cli_iters / s : 0);
        }
        eb_xchg_free(x);
}

/* ---- cells -------------------------------------------------------------------------- */

void eb_ref_cells_floor(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        eb_cell_t *c = eb_cell_add(cs, "floor", "spinword", "spin", 0, 1);
        snprintf(c->name, sizeof(c->name), "floor/spinword");
        c->run = run_floor;
        c = eb_cell_add(cs, "floor", "spinword", "spin", 0, 1);
        snprintf(c->name, sizeof(c->name), "floor/spinword-after");
        c->run = run_floor;
        c = eb_cell_add(cs, "floor", "ckring", "spin", 0, 1);
        snprintf(c->name, sizeof(c->name), "floor/ckring");
        c->run = run_ckring;
        c = eb_cell_add(cs, "memcpy", "memcpy", "", 0, 1);
        snprintf(c->name, sizeof(c->name), "memcpy");
        c->run = run_memcpy;
}

void eb_ref_cells_rtt(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        const char *const *impl = eb_os_peers;
        char sz[16];
        /* beside the engine's sparse/ and b2b cells: blocking pipes, 64 B, the same placements */
        for (int p = 1; p < 3; p++) {
                eb_cell_t *c = eb_cell_add(cs, "rtt", "pipe", "default", 64, 1);
                eb_cell_place(c, p);
                c->sub = p;
                snprintf(c->name, sizeof(c->name), "rtt/pipe/b2b/%s", c->place);
                c->run = run_peer;
        }
        for (int g = 0; g < 3; g++)
                for (int p = 0; p < 3; p++) {
                        eb_cell_t *c = eb_cell_add(cs, "sparse", "pipe", "default", 64, 1);
                        eb_cell_place(c, p);
                        c->gap_ns = eb_sparse_gaps[g];
                        c->sub = 3 * g + p;
                        eb_gap_name(c->gap_ns, sz, sizeof(sz));
                        snprintf(c->name, sizeof(c->name), "sparse/pipe/%s/%s", sz, c->place);
                        c->run = run_peer;
                }
        for (int m = 0; m < 2; m++)
                for (int p = 0; p < 4; p++)
                        for (int i = 0; i < 3; i++) {
                                const char *mode = m == 0 ? "spin" : "block";
                                eb_cell_t *c =
                                    eb_cell_add(cs, "rtt", impl[i], mode, eb_rtt_payloads[p], 1);
                                eb_size_name(c->payload, sz, sizeof(sz));
                                snprintf(c->name, sizeof(c->name), "rtt/%s/%s/%s", impl[i], mode,
                                         sz);
                                c->spin = m == 0;
                                c->run = run_peer;
                        }
}

void eb_ref_cells_tput(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        const char *const *impl = eb_os_peers;
        char sz[16];
        for (int p = 1; p < 6; p++)
                for (int i = 0; i < 3; i++) {
                        eb_cell_t *c =
                            eb_cell_add(cs, "tput", impl[i], "block", eb_tput_payloads[p], 1);
                        eb_size_name(c->payload, sz, sizeof(sz));
                        snprintf(c->name, sizeof(c->name), "tput/%s/1s/%s", impl[i], sz);
                        c->run = run_peer;
                }
}

void eb_ref_cells_xfer(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        eb_cell_t *c = eb_cell_add(cs, "xfer", "rwcopy", "", 0, 1);
        snprintf(c->name, sizeof(c->name), "xfer/rwcopy/1s");
        c->run = run_copy;
        c = eb_cell_add(cs, "xfer", "rwcopy", "", 0, 8);
        snprintf(c->name, sizeof(c->name), "xfer/rwcopy/8s");
        c->run = run_copy;
        c = eb_cell_add(cs, "xfer", "cfr", "", 0, 1);
        snprintf(c->name, sizeof(c->name), "xfer/cfr/1s");
        c->run = run_copy;
        c = eb_cell_add(cs, "xfer", "cat", "", 0, 1);
        snprintf(c->name, sizeof(c->name), "xfer/cat/1s");
        c->run = run_copy;
        /* tmpfs -> disk: cp + fsync, in alternating rounds with xfer/disk/lockfree/1s */
        c = eb_cell_add(cs, "xfer", "cpsync", "", 0, 1);
        snprintf(c->name, sizeof(c->name), "xfer/disk/cpsync/1s");
        c->disk = true;
        c->alt = 1;
        c->sub = 1;
        c->run = run_copy;
}

void eb_ref_cells_misc(eb_cells_t *cs, const eb_opts_t *o)
{
        (void)o;
        for (int k = 0; k < 2; k++)
                for (uint32_t t = 1; t <= 2; t++) {
                        const char *kind = k == 0 ? "lockfree" : "mutex";
                        eb_cell_t *c = eb_cell_add(cs, "arena", kind, "", 0, t);
                        snprintf(c->name, sizeof(c->name), "arena/%s/%ut", kind, t);
                        c->transport = k == 0 ? ENG_ARENA_LOCKFREE : ENG_ARENA_MUTEX;
                        c->run = run_arena;
                }
}
