/*
 * harness.c - forking, waiting with deadlines, the shared exchange block, small utilities.
 *
 * Every wait here has a deadline: children that overrun are killed (SIGKILL) and the cell is
 * reported as failed, so the bench can never hang. Children also die with the parent
 * (PR_SET_PDEATHSIG), so a killed bench leaves no busy-spinning orphans behind.
 */
#include <errno.h>
#include <linux/futex.h>
#include <math.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

volatile int eb_interrupted;

void eb_errf(char *dst, size_t n, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(dst, n, fmt, ap);
        va_end(ap);
}

uint64_t eb_consume(const void *p, size_t n)
{
        const unsigned char *b = p;
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        size_t i = 0;
        for (; i + 32 <= n; i += 32) {
                uint64_t w[4];
                memcpy(w, b + i, 32);
                a0 ^= w[0];
                a1 ^= w[1];
                a2 ^= w[2];
                a3 ^= w[3];
        }
        for (; i < n; i++)
                a0 ^= (uint64_t)b[i] << (8 * (i & 7));
        return a0 ^ a1 ^ a2 ^ a3;
}

void eb_fill(void *dst, const void *src, size_t n, uint64_t seq)
{
        memcpy(dst, src, n);
        if (n >= 8)
                memcpy(dst, &seq, 8);
}

static unsigned char *src_buf;
static size_t src_len;

const void *eb_src(size_t n)
{
        if (n < 64)
                n = 64;
        if (n > src_len) {
                free(src_buf);
                src_buf = malloc(n);
                if (src_buf == NULL)
                        abort();
                uint64_t x = 0x9e3779b97f4a7c15ull;
                for (size_t i = 0; i < n; i++) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        src_buf[i] = (unsigned char)x;
                }
                src_len = n;
        }
        return src_buf;
}

void eb_size_name(uint64_t b, char *out, size_t n)
{
        if (b >= (1ull << 30) && b % (1ull << 30) == 0)
                snprintf(out, n, "%lluGiB", (unsigned long long)(b >> 30));
        else if (b >= (1ull << 20) && b % (1ull << 20) == 0)
                snprintf(out, n, "%lluMiB", (unsigned long long)(b >> 20));
        else if (b >= 1024 && b % 1024 == 0)
                snprintf(out, n, "%lluKiB", (unsigned long long)(b >> 10));
        else
                snprintf(out, n, "%lluB", (unsigned long long)b);
}

/* ---- futex on MAP_SHARED memory (not private: the words are shared between processes) -- */

int eb_futex_wait(uint32_t *w, uint32_t expect, uint64_t timeout_ns)
{
        struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000ull),
                              .tv_nsec = (long)(timeout_ns % 1000000000ull)};
        long rc = syscall(SYS_futex, w, FUTEX_WAIT, expect, &ts, NULL, 0);
        return rc == 0 ? 0 : -errno;
}

void eb_futex_wake(uint32_t *w)
{
        syscall(SYS_futex, w, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

eb_xchg_t *eb_xchg_new(void)
{
        eb_xchg_t *x =
            mmap(NULL, sizeof(*x), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (x == MAP_FAILED)
                return NULL;
        memset(x, 0, sizeof(*x));
        eb_hist_init(&x->hist);
        return x;
}

eb_xchg_t *eb_xchg_new_or_fail(eb_result_t *r)
{
        eb_xchg_t *x = eb_xchg_new();
        if (x == NULL) {
                r->status = EB_FAIL;
                eb_errf(r->reason, sizeof(r->reason), "mmap: %s", strerror(errno));
        }
        return x;
}

void eb_xchg_free(eb_xchg_t *x)
{
        if (x)
                munmap(x, sizeof(*x));
}

void eb_server_ready(eb_xchg_t *x, int state, int rc, const char *err)
{
        x->srv_pid = (int32_t)getpid();
        x->srv_rc = rc;
        if (err)
                snprintf(x->srv_err, sizeof(x->srv_err), "%s", err);
        __atomic_store_n(&x->srv_state, (uint32_t)state, __ATOMIC_RELEASE);
        eb_futex_wake(&x->srv_state);
}

bool eb_stop_requested(eb_xchg_t *x)
{
        return __atomic_load_n(&x->stop, __ATOMIC_ACQUIRE) != 0;
}

void eb_server_wait_stop(eb_xchg_t *x)
{
        /* One wait for the whole remaining time, not a poll: the idle/ cells count the server
         * process's wake-ups, and this thread is one of its threads. The futex compares the
         * word first, so a stop set before the wait is not missed. */
        uint64_t end = eng_now_ns() + 600ull * 1000000000ull;
        for (;;) {
                uint64_t now = eng_now_ns();
                if (eb_stop_requested(x) || now >= end)
                        return;
                eb_futex_wait(&x->stop, 0, end - now);
        }
}

int eb_wait_server(eb_xchg_t *x, uint64_t timeout_ms)
{
        uint64_t end = eng_now_ns() + timeout_ms * 1000000ull;
        for (;;) {
                uint32_t s = __atomic_load_n(&x->srv_state, __ATOMIC_ACQUIRE);
                if (s != SRV_STARTING)
                        return (int)s;
                uint64_t now = eng_now_ns();
                if (now >= end || eb_interrupted)
                        return -ETIMEDOUT;
                uint64_t left = end - now;
                eb_futex_wait(&x->srv_state, SRV_STARTING, left < 50000000 ? left : 50000000);
        }
}

/* ---- children ----------------------------------------------------------------------- */

static pid_t spawn(void (*body)(void *), void *arg)
{
        pid_t parent = getpid();
        fflush(NULL);
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
                _exit(111);
        body(arg);
        _exit(0);
}

struct child_arg {
        eb_cell_t *c;
        const eb_opts_t *o;
        eb_xchg_t *x;
        eb_server_fn server;
        eb_client_fn client;
};

/* Before the body runs, so every thread the child starts inherits the placement. */
static void server_body(void *p)
{
        struct child_arg *a = p;
        int rc = a->c->cpu_srv >= 0 ? eb_pin(a->c->cpu_srv) : 0;
        if (rc != 0) {
                char why[96];
                eb_errf(why, sizeof(why), "sched_setaffinity(CPU %d): %s", a->c->cpu_srv,
                        strerror(-rc));
                eb_server_ready(a->x, SRV_FAILED, rc, why);
                _exit(1);
        }
        a->server(a->x, a->c, a->o);
        _exit(0);
}

static void client_body(void *p)
{
        struct child_arg *a = p;
        int rc = a->c->cpu_cli >= 0 ? eb_pin(a->c->cpu_cli) : 0;
        if (rc != 0) {
                eb_errf(a->x->cli_err, sizeof(a->x->cli_err), "sched_setaffinity(CPU %d): %s",
                        a->c->cpu_cli, strerror(-rc));
                _exit(1);
        }
        rc = a->client(a->x, a->c, a->o);
        _exit(rc == 0 ? 0 : 1);
}

/* Wait for pid until deadline (absolute, ns). Returns 1 and *status if it exited, 0 on
 * timeout. */
static int wait_child(pid_t pid, uint64_t deadline, int *status)
{
        int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
        for (;;) {
                pid_t w = waitpid(pid, status, WNOHANG);
                if (w == pid || (w < 0 && errno == ECHILD)) {
                        if (pfd >= 0)
                                close(pfd);
                        if (w < 0)
                                *status = 0;
                        return 1;
                }
                uint64_t now = eng_now_ns();
                if (now >= deadline || eb_interrupted) {
                        if (pfd >= 0)
                                close(pfd);
                        return 0;
                }
                uint64_t left_ms = (deadline - now) / 1000000ull + 1;
                if (pfd >= 0) {
                        struct pollfd p = {.fd = pfd, .events = POLLIN};
                        poll(&p, 1, left_ms > 1000 ? 1000 : (int)left_ms);
                } else {
                        usleep(2000);
                }
        }
}

static void kill_reap(pid_t pid)
{
        if (pid <= 0)
                return;
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
}

static void describe_status(int st, char *out, size_t n)
{
        if (WIFSIGNALED(st))
                snprintf(out, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
                snprintf(out, n, "exit status %d", WEXITSTATUS(st));
}

static void close_cell_fds(eb_cell_t *c)
{
        for (int i = 0; i < 4; i++)
                if (c->fds[i] >= 0) {
                        close(c->fds[i]);
                        c->fds[i] = -1;
                }
}

int eb_rtt_loop(eb_xchg_t *x, const eb_opts_t *o, uint64_t n, int (*one)(uint64_t i, void *arg),
                void *arg)
{
        uint64_t warm = n / 10 < 1000 ? n / 10 : 1000;
        uint64_t t = eng_now_ns(), end = 0, k = 0;
        int rc = 0;
        for (uint64_t i = 0; i < warm + n; i++) {
                if (i == warm) {
                        t = eng_now_ns();
                        end = t + o->rtt_ms * 1000000ull;
                        x->t0_ns = t;
                }
                if ((rc = one(i, arg)) != 0)
                        break;
                if (i >= warm) {
                        uint64_t t1 = eng_now_ns();
                        eb_hist_add(&x->hist, t1 - t);
                        t = t1;
                        k++;
                        if (t >= end)
                                break;
                }
        }
        x->t1_ns = t;
        x->cli_iters = k;
        return rc;
}

const uint64_t eb_sparse_gaps[3] = {100000, 1000000, 10000000};
const char *const eb_places[3] = {"unpinned", "samecore", "crosscore"};

void eb_gap_name(uint64_t ns, char *out, size_t n)
{
        if (ns >= 1000000 && ns % 1000000 == 0)
                snprintf(out, n, "%llums", (unsigned long long)(ns / 1000000));
        else
                snprintf(out, n, "%lluus", (unsigned long long)(ns / 1000));
}

void eb_cell_place(eb_cell_t *c, int p)
{
        snprintf(c->place, sizeof(c->place), "%s", eb_places[p]);
        c->cpu_srv = p == 0 ? -1 : 0;
        c->cpu_cli = p == 0 ? -1 : p == 1 ? 0 : 1;
}

int eb_pin(int cpu)
{
        cpu_set_t s;
        CPU_ZERO(&s);
        CPU_SET(cpu, &s);
        return sched_setaffinity(0, sizeof(s), &s) == 0 ? 0 : -errno;
}

bool eb_cpu_usable(int cpu)
{
        cpu_set_t s;
        if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(s), &s) != 0)
                return false;
        return CPU_ISSET(cpu, &s);
}

double eb_proc_cpu_s(pid_t pid)
{
        clockid_t id = CLOCK_PROCESS_CPUTIME_ID;
        if (pid > 0 && clock_getcpuclockid(pid, &id) != 0)
                return NAN;
        struct timespec ts;
        if (clock_gettime(id, &ts) != 0)
                return NAN;
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define SPARSE_SLOP_NS 100000ull /* what a trip and the sleep's slack add to a gap, roughly */

uint64_t eb_sparse_n(const eb_opts_t *o, uint64_t gap_ns)
{
        uint64_t n = o->sparse_budget_ms * 1000000ull / (gap_ns + SPARSE_SLOP_NS);
        return n < 20 ? 20 : n;
}

int eb_sparse_loop(eb_xchg_t *x, const eb_opts_t *o, uint64_t gap_ns,
                   int (*one)(uint64_t i, void *arg), void *arg)
{
        uint64_t n = eb_sparse_n(o, gap_ns);
        uint64_t warm = n / 20 < 3 ? 3 : n / 20 > 50 ? 50 : n / 20;
        /* the budget, and a margin for trips slower than SPARSE_SLOP_NS */
        uint64_t cap = (o->sparse_budget_ms + o->sparse_budget_ms / 5) * 1000000ull;
        uint64_t next = eng_now_ns(), end = UINT64_MAX, k = 0, late = 0, t1 = next;
        int rc = 0;
        for (uint64_t i = 0; i < warm + n; i++) {
                uint64_t t0 = eng_now_ns();
                if (i == warm) {
                        x->t0_ns = t0;
                        end = t0 + cap;
                }
                if ((rc = one(i, arg)) != 0)
                        break;
                t1 = eng_now_ns();
                if (i >= warm) {
                        eb_hist_add(&x->hist, t1 - t0);
                        k++;
                        if (t1 >= end)
                                break;
                }
                next += gap_ns;
                if (next <= t1) {
                        next = t1 + gap_ns;
                        late += i >= warm;
                }
                struct timespec ts = {.tv_sec = (time_t)(next / 1000000000ull),
                                      .tv_nsec = (long)(next % 1000000000ull)};
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                        ;
        }
        x->t1_ns = t1;
        x->cli_iters = k;
        x->late = late;
        return rc;
}

int eb_run_children(eb_cell_t *c, const eb_opts_t *o, eb_xchg_t *x, eb_server_fn server,
                    eb_client_fn client, uint64_t timeout_ms, eb_result_t *r)
{
        struct child_arg a = {.c = c, .o = o, .x = x, .server = server, .client = client};
        pid_t ps = -1, pc = -1;
        int st = 0;
        char how[96];
        for (int k = 0; k < 2; k++) {
                int cpu = k ? c->cpu_cli : c->cpu_srv;
                if (cpu >= 0 && !eb_cpu_usable(cpu)) {
                        close_cell_fds(c);
                        eb_errf(r->reason, sizeof(r->reason), "CPU %d is not available to us%s",
                                cpu, cpu == 1 ? " (one CPU: no cross-core placement)" : "");
                        return EB_NA;
                }
        }
        if (server) {
                ps = spawn(server_body, &a);
                if (ps < 0) {
                        close_cell_fds(c);
                        eb_errf(r->reason, sizeof(r->reason), "fork: %s", strerror(errno));
                        return EB_FAIL;
                }
                int s = eb_wait_server(x, 30000);
                if (s != SRV_READY) {
                        close_cell_fds(c);
                        if (s == -ETIMEDOUT) {
                                kill_reap(ps);
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server did not start within 30 s");
                                return EB_FAIL;
                        }
                        if (!wait_child(ps, eng_now_ns() + 10000000000ull, &st))
                                kill_reap(ps);
                        if (s == SRV_UNAVAILABLE) {
                                eb_errf(r->reason, sizeof(r->reason), "transport unavailable");
                                return EB_NA;
                        }
                        eb_errf(r->reason, sizeof(r->reason), "server failed to start: %s",
                                x->srv_err[0] ? x->srv_err : strerror(-x->srv_rc));
                        return EB_FAIL;
                }
        }
        pc = spawn(client_body, &a);
        close_cell_fds(c);
        if (pc < 0) {
                eb_errf(r->reason, sizeof(r->reason), "fork: %s", strerror(errno));
                kill_reap(ps);
                return EB_FAIL;
        }
        int rc = EB_OK;
        if (!wait_child(pc, eng_now_ns() + timeout_ms * 1000000ull, &st)) {
                kill_reap(pc);
                kill_reap(ps);
                if (eb_interrupted)
                        eb_errf(r->reason, sizeof(r->reason), "interrupted (children killed)");
                else
                        eb_errf(r->reason, sizeof(r->reason),
                                "timed out after %.0f s (children killed)",
                                (double)timeout_ms / 1000.0);
                return EB_FAIL;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                describe_status(st, how, sizeof(how));
                eb_errf(r->reason, sizeof(r->reason), "client failed (%s): %s", how,
                        x->cli_err[0] ? x->cli_err : "no message");
                rc = EB_FAIL;
        }
        if (ps > 0) {
                __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
                eb_futex_wake(&x->stop);
                if (!wait_child(ps, eng_now_ns() + 20000000000ull, &st)) {
                        kill_reap(ps);
                        if (rc == EB_OK)
                                eb_errf(r->reason, sizeof(r->reason),
                                        "server did not stop within 20 s (killed)");
                        return EB_FAIL;
                }
                if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && rc == EB_OK) {
                        describe_status(st, how, sizeof(how));
                        eb_errf(r->reason, sizeof(r->reason), "server failed (%s): %s", how,
                                x->srv_err[0] ? x->srv_err : "no message");
                        rc = EB_FAIL;
                }
        }
        return rc;
}

/* ---- cells -------------------------------------------------------------------------- */

eb_cell_t *eb_cell_add(eb_cells_t *cs, const char *group, const char *impl, const char *mode,
                       uint64_t payload, uint32_t streams)
{
        if (cs->n == cs->cap) {
                cs->cap = cs->cap ? cs->cap * 2 : 64;
                cs->v = realloc(cs->v, (size_t)cs->cap * sizeof(*cs->v));
                if (cs->v == NULL)
                        abort();
        }
        eb_cell_t *c = &cs->v[cs->n++];
        memset(c, 0, sizeof(*c));
        snprintf(c->group, sizeof(c->group), "%s", group);
        snprintf(c->impl, sizeof(c->impl), "%s", impl);
        snprintf(c->mode, sizeof(c->mode), "%s", mode ? mode : "");
        c->payload = payload;
        c->streams = streams;
        for (int i = 0; i < 4; i++)
                c->fds[i] = -1;
        c->cpu_srv = c->cpu_cli = -1;
        return c;
}

/* ---- CPU accounting ------------------------------------------------------------------- */

void eb_cpu_sample(eb_cpu_sample_t *s)
{
        memset(s, 0, sizeof(*s));
        s->t = (double)eng_now_ns() / 1e9;
        double hz = (double)sysconf(_SC_CLK_TCK);
        FILE *f = fopen("/proc/stat", "r");
        if (f) {
                unsigned long long v[10] = {0};
                if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                           &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
                        /* user nice system idle iowait irq softirq steal (guest is in user) */
                        s->busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6]) / hz;
                        s->steal = (double)v[7] / hz;
                }
                fclose(f);
        }
        struct rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        getrusage(RUSAGE_CHILDREN, &b);
        s->own = (double)(a.ru_utime.tv_sec + a.ru_stime.tv_sec + b.ru_utime.tv_sec +
                          b.ru_stime.tv_sec) +
                 (double)(a.ru_utime.tv_usec + a.ru_stime.tv_usec + b.ru_utime.tv_usec +
                          b.ru_stime.tv_usec) /
                     1e6;
}

void eb_cpu_foreign(const eb_cpu_sample_t *a, const eb_cpu_sample_t *b, int cores, double *foreign,
                    double *steal)
{
        double cap = (b->t - a->t) * (cores > 0 ? cores : 1);
        double other = (b->busy - a->busy) - (b->own - a->own);
        if (other < 0)
                other = 0;
        *foreign = cap > 0 ? other / cap : 0;
        *steal = cap > 0 ? (b->steal - a->steal) / cap : 0;
        if (*foreign > 1)
                *foreign = 1;
}
