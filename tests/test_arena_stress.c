/*
 * test_arena_stress.c - the arena shared by several processes (each mapping the segment at its
 * own address, each with several threads), and processes SIGKILLed in the middle of an
 * allocation. Both kinds; registered SERIAL, and this binary runs its tests one at a time
 * (see main() at the end): every test here wants both cores.
 *
 * Children never cr_assert and never return from the test: they _exit(code) and write what
 * they saw to a shared results page; the parent asserts on the wait status and the results.
 *
 * Cycle counts: ENG_ARENA_STRESS_CYCLES (per thread) overrides the default, which is 1,000,000
 * alloc->fill->verify->free cycles per thread (so 2,000,000 per process), and 1/20 of that
 * under AddressSanitizer. ENG_ARENA_KILL_ITERS overrides the crash tests' 400 kills (1000 for
 * the batch victim, which is quicker to kill). ENG_ARENA_BATCH_CYCLES overrides the batch
 * stress's cycles per thread.
 *
 * lockfree::survives_a_scribbler_then_rebuilds: workers allocate while another process writes
 * random bytes anywhere in the arena; nobody may crash or hang, and a rebuild afterwards must
 * make the arena exact and empty. ENG_ARENA_SCRIBBLE_SECS overrides its 3 s of scribbling.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"
#include "arena_int.h" /* the shared layout: the scribbler aims at it */

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define MIB            (1024u * 1024u)
#define PROCS          4
#define THREADS        2
#define WINDOW         16 /* live blocks (records) per thread */
#define STRESS_SECS    280
#define DEADLINE_SECS  250.0 /* children still running then are SIGKILLed */
#define KILL_KEEP      6     /* blocks the parent holds across the kills */
#define MAX_STRESS_LEN (300u * 1024u)

#define TEST_BOTH_KINDS(name, secs)                                                                \
        static void name(eng_arena_kind_t kind);                                                   \
        Test(lockfree, name, .timeout = (secs), .fini = unlink_segment)                            \
        {                                                                                          \
                name(ENG_ARENA_LOCKFREE);                                                          \
        }                                                                                          \
        Test(mutex, name, .timeout = (secs), .fini = unlink_segment)                               \
        {                                                                                          \
                name(ENG_ARENA_MUTEX);                                                             \
        }                                                                                          \
        static void name(eng_arena_kind_t kind)

/* ---- small helpers ------------------------------------------------------------------ */

static uint64_t xorshift(uint64_t *s)
{
        uint64_t x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return *s = x;
}

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_us(long us)
{
        struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
        const char *v = getenv(name);
        if (v == NULL || *v == '\0')
                return dflt;
        return strtoull(v, NULL, 0);
}

static uint64_t stress_cycles(void)
{
        return env_u64("ENG_ARENA_STRESS_CYCLES", UNDER_ASAN ? 50000 : 1000000);
}

/* Sizes 1 B .. 300 KiB, mostly small; or 1 .. max_len uniform if max_len is small. */
static uint64_t stress_len(uint64_t r, uint64_t max_len)
{
        uint64_t pick = r % 100, x = r >> 8;
        if (max_len < MAX_STRESS_LEN)
                return 1 + x % max_len;
        if (pick < 70)
                return 1 + x % 4096;
        if (pick < 90)
                return 4097 + x % (28 * 1024);
        if (pick < 98)
                return 32 * 1024 + x % (96 * 1024);
        return 128 * 1024 + x % (MAX_STRESS_LEN - 128 * 1024 + 1);
}

static void fill_pat(void *p, uint64_t len, uint64_t pat)
{
        uint64_t *w = p, n = len / 8;
        for (uint64_t i = 0; i < n; i++)
                w[i] = pat;
        memcpy((unsigned char *)p + n * 8, &pat, len % 8);
}

/* 0 if p holds pat, else 1 + index of the first bad word; *seen = what was there. */
static uint64_t check_pat(const void *p, uint64_t len, uint64_t pat, uint64_t *seen)
{
        const uint64_t *w = p;
        uint64_t n = len / 8;
        for (uint64_t i = 0; i < n; i++)
                if (w[i] != pat) {
                        *seen = w[i];
                        return i + 1;
                }
        uint64_t tail = 0;
        memcpy(&tail, (const unsigned char *)p + n * 8, len % 8);
        uint64_t want = 0;
        memcpy(&want, &pat, len % 8);
        if (tail != want) {
                *seen = tail;
                return n + 1;
        }
        return 0;
}

/* ---- the shared segment --------------------------------------------------------------- */

static char g_shm_name[96]; /* per test (each test runs in its own process) */
static uint64_t *g_mapped;  /* shared: children that have mapped the segment by name */

static void unlink_segment(void)
{
        if (g_shm_name[0] != '\0')
                shm_unlink(g_shm_name);
}

struct seg {
        unsigned char *base;
        uint64_t size;
        eng_arena_t a;
};

static void seg_create(struct seg *s, const char *what, eng_arena_kind_t kind, uint64_t size,
                       uint32_t rec_size, uint32_t max_shift)
{
        snprintf(g_shm_name, sizeof g_shm_name, "/eng-arena-stress-%s-%s-%d", what,
                 eng_arena_kind_name(kind), (int)getpid());
        shm_unlink(g_shm_name);
        int fd = shm_open(g_shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
        cr_assert(fd >= 0, "shm_open %s: %s", g_shm_name, strerror(errno));
        cr_assert_eq(ftruncate(fd, (off_t)size), 0);
        s->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        cr_assert(s->base != MAP_FAILED);
        s->size = size;
        eng_arena_cfg_t cfg = {.kind = kind,
                               .record_size = rec_size,
                               .min_class_shift = 12,
                               .max_class_shift = max_shift};
        int rc = eng_arena_format(&s->a, s->base, size, &cfg);
        cr_assert_eq(rc, 0, "format: %d", rc);
}

/* In a child: drop the inherited mapping, map the segment again at an address of our own. */
static int seg_remap_in_child(struct seg *s, int idx, eng_arena_t *out, uintptr_t *addr)
{
        munmap(s->base, s->size);
        int fd = shm_open(g_shm_name, O_RDWR, 0);
        if (fd < 0) {
                fprintf(stderr, "child %d: shm_open %s: %s\n", idx, g_shm_name, strerror(errno));
                return -1;
        }
        /* A hint per child, high enough to stay clear of ASan's shadow. */
        void *hint =
            (void *)(uintptr_t)(0x500000000000ull + (uint64_t)(idx + 1) * 0x10000000000ull);
        void *p = mmap(hint, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
                fprintf(stderr, "child %d: mmap: %s\n", idx, strerror(errno));
                return -1;
        }
        int rc = eng_arena_attach(out, p, s->size);
        if (rc != 0) {
                fprintf(stderr, "child %d: attach: %d\n", idx, rc);
                return -1;
        }
        *addr = (uintptr_t)p;
        return 0;
}

/* ---- per-thread results, in a page every process shares -------------------------------- */

struct tres {
        uint64_t cycles, allocs, frees, enomem, starved, mismatches, errors, owner_checks;
        uint64_t base; /* where this thread's process mapped the segment */
        double secs;
};

static struct tres *results_map(int n)
{
        struct tres *r = mmap(NULL, sizeof(struct tres) * (size_t)n, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert(r != MAP_FAILED);
        memset(r, 0, sizeof(struct tres) * (size_t)n);
        return r;
}

/* Wait for every child until the deadline; SIGKILL the rest then. Returns how many timed out. */
static int wait_children(pid_t *pids, int *status, int n, double deadline_s)
{
        double end = now_s() + deadline_s;
        int left = n, late = 0;
        for (int i = 0; i < n; i++)
                status[i] = -1;
        while (left > 0) {
                for (int i = 0; i < n; i++) {
                        if (pids[i] <= 0 || status[i] != -1)
                                continue;
                        int st;
                        pid_t r = waitpid(pids[i], &st, WNOHANG);
                        if (r == pids[i]) {
                                status[i] = st;
                                left--;
                        }
                }
                if (left == 0)
                        break;
                if (now_s() > end) {
                        for (int i = 0; i < n; i++) {
                                if (pids[i] > 0 && status[i] == -1) {
                                        kill(pids[i], SIGKILL);
                                        waitpid(pids[i], &status[i], 0);
                                        late++;
                                }
                        }
                        break;
                }
                sleep_us(20000);
        }
        return late;
}

/* Once every child has its own mapping the name can go: nothing is left in /dev/shm even if
 * the test is killed by its timeout. Then wait for the PROCS children (see wait_children). */
static int unlink_then_wait(pid_t *pids, int *status, double deadline_s)
{
        for (double end = now_s() + 10;
             __atomic_load_n(g_mapped, __ATOMIC_SEQ_CST) < PROCS && now_s() < end;)
                sleep_us(1000);
        shm_unlink(g_shm_name);
        g_shm_name[0] = '\0';
        return wait_children(pids, status, PROCS, deadline_s);
}

static void assert_children_ok(const pid_t *pids, const int *status, int n, int late,
                               const char *what)
{
        cr_assert_eq(late, 0, "%s: %d children still running at the deadline (SIGKILLed)", what,
                     late);
        for (int i = 0; i < n; i++) {
                cr_assert(pids[i] > 0, "%s: fork %d failed", what, i);
                cr_assert(WIFEXITED(status[i]), "%s: child %d died of signal %d", what, i,
                          WIFSIGNALED(status[i]) ? WTERMSIG(status[i]) : -1);
                cr_assert_eq(WEXITSTATUS(status[i]), 0,
                             "%s: child %d exited %d (its stderr says why)", what, i,
                             WEXITSTATUS(status[i]));
        }
}

#define ASSERT_ARENA_OK(a, ctx)                                                                    \
        do {                                                                                       \
                char why_[256];                                                                    \
                int rc_ = eng_arena_check((a), why_, sizeof why_);                                 \
                cr_assert_eq(rc_, 0, "%s: %s: eng_arena_check: %s",                                \
                             eng_arena_kind_name(eng_arena_kind(a)), (ctx), why_);                 \
        } while (0)

/* ---- buffer stress ------------------------------------------------------------------ */

struct worker {
        eng_arena_t a;
        uint32_t owner;
        int proc, thread;
        uint64_t cycles, max_len;
        struct tres *res;
        struct {
                uint64_t off, len, pat;
        } win[WINDOW];
};

static void report_mismatch(struct worker *w, const char *what, uint64_t off, uint64_t len,
                            uint64_t pat, uint64_t bad, uint64_t seen)
{
        w->res->mismatches++;
        if (w->res->mismatches <= 5)
                fprintf(stderr,
                        "%s: owner %#x: %s at off %llu len %llu: word %llu is %#llx (owner %#x "
                        "cycle %u), expected %#llx\n",
                        eng_arena_kind_name(eng_arena_kind(&w->a)), w->owner, what,
                        (unsigned long long)off, (unsigned long long)len,
                        (unsigned long long)(bad - 1), (unsigned long long)seen,
                        (unsigned)(seen >> 32), (unsigned)seen, (unsigned long long)pat);
}

static void error_once(struct worker *w, const char *what, int rc)
{
        if (w->res->errors++ < 5)
                fprintf(stderr, "%s: owner %#x: %s: %d\n",
                        eng_arena_kind_name(eng_arena_kind(&w->a)), w->owner, what, rc);
}

/* Verify and free slot i. */
static void buf_release(struct worker *w, int i)
{
        uint64_t off = w->win[i].off, len = w->win[i].len, seen = 0;
        const void *p = eng_arena_ptr(&w->a, off, len);
        uint64_t bad = check_pat(p, len, w->win[i].pat, &seen);
        if (bad)
                report_mismatch(w, "pattern changed under its owner", off, len, w->win[i].pat, bad,
                                seen);
        int rc = eng_arena_free(&w->a, off);
        if (rc != 0)
                error_once(w, "free", rc);
        else
                w->res->frees++;
        w->win[i].off = 0;
}

static void buf_release_all(struct worker *w)
{
        for (int i = 0; i < WINDOW; i++)
                if (w->win[i].off)
                        buf_release(w, i);
}

/* -ENOMEM is an expected outcome: free our own blocks, then retry with back-off. */
static int buf_alloc_retry(struct worker *w, uint64_t len, uint64_t *off)
{
        int rc = eng_arena_alloc(&w->a, len, w->owner, off);
        if (rc != -ENOMEM)
                return rc;
        w->res->enomem++;
        buf_release_all(w);
        for (int tries = 0; tries < 2000; tries++) {
                rc = eng_arena_alloc(&w->a, len, w->owner, off);
                if (rc != -ENOMEM)
                        return rc;
                if (tries < 100)
                        sched_yield();
                else
                        sleep_us(50);
        }
        w->res->starved++;
        return rc;
}

static void *buf_worker(void *arg)
{
        struct worker *w = arg;
        uint64_t rng = 0x9e3779b97f4a7c15ull * (w->owner + 1);
        double t0 = now_s();
        for (uint64_t c = 0; c < w->cycles; c++) {
                int i = (int)(xorshift(&rng) % WINDOW);
                if (w->win[i].off)
                        buf_release(w, i);
                uint64_t len = stress_len(xorshift(&rng), w->max_len), off = 0;
                int rc = buf_alloc_retry(w, len, &off);
                w->res->cycles++;
                if (rc == -ENOMEM)
                        continue; /* counted as starved */
                if (rc != 0) {
                        error_once(w, "alloc", rc);
                        continue;
                }
                w->res->allocs++;
                uint64_t pat = ((uint64_t)w->owner << 32) | (uint32_t)c;
                void *p = eng_arena_ptr(&w->a, off, len);
                if (p == NULL) {
                        error_once(w, "ptr out of the region", (int)len);
                        continue;
                }
                fill_pat(p, len, pat);
                w->win[i].off = off;
                w->win[i].len = len;
                w->win[i].pat = pat;
                if ((c & 15) == 0) {
                        w->res->owner_checks++;
                        uint32_t o = eng_arena_owner(&w->a, off);
                        uint64_t cap = eng_arena_capacity(&w->a, off);
                        if (o != w->owner || cap < len) {
                                fprintf(stderr, "owner %#x: block %llu says owner %#x cap %llu\n",
                                        w->owner, (unsigned long long)off, o,
                                        (unsigned long long)cap);
                                w->res->mismatches++;
                        }
                }
        }
        buf_release_all(w);
        w->res->secs = now_s() - t0;
        return NULL;
}

/* ---- record stress ------------------------------------------------------------------ */

#define REC_BODY 256u

static void rec_release(struct worker *w, int i)
{
        uint64_t off = w->win[i].off, seen = 0;
        const void *p = eng_arena_ptr(&w->a, off, REC_BODY);
        uint64_t bad = check_pat(p, REC_BODY, w->win[i].pat, &seen);
        if (bad)
                report_mismatch(w, "record body changed under its owner", off, REC_BODY,
                                w->win[i].pat, bad, seen);
        int rc = eng_arena_rec_free(&w->a, off);
        if (rc != 0)
                error_once(w, "rec_free", rc);
        else
                w->res->frees++;
        w->win[i].off = 0;
}

static void *rec_worker(void *arg)
{
        struct worker *w = arg;
        uint64_t rng = 0x9e3779b97f4a7c15ull * (w->owner + 1);
        double t0 = now_s();
        for (uint64_t c = 0; c < w->cycles; c++) {
                int i = (int)(xorshift(&rng) % WINDOW);
                if (w->win[i].off)
                        rec_release(w, i);
                uint64_t off = 0;
                int rc = eng_arena_rec_alloc(&w->a, w->owner, &off);
                w->res->cycles++;
                if (rc != 0) {
                        error_once(w, "rec_alloc", rc);
                        continue;
                }
                w->res->allocs++;
                int64_t idx = eng_arena_rec_index(&w->a, off);
                if (idx < 0 || eng_arena_rec_offset(&w->a, (uint64_t)idx) != off) {
                        error_once(w, "rec_index of a fresh record", (int)idx);
                        continue;
                }
                uint64_t pat = ((uint64_t)w->owner << 32) | (uint32_t)c;
                fill_pat(eng_arena_ptr(&w->a, off, REC_BODY), REC_BODY, pat);
                w->win[i].off = off;
                w->win[i].pat = pat;
        }
        for (int i = 0; i < WINDOW; i++)
                if (w->win[i].off)
                        rec_release(w, i);
        w->res->secs = now_s() - t0;
        return NULL;
}

/* ---- the harness: PROCS processes x THREADS threads ------------------------------------- */

/* One stress configuration. */
struct plan {
        const char *what;
        bool records;
        uint64_t size;      /* of the segment */
        uint32_t max_shift; /* superblock 2^max_shift (lock-free) */
        uint64_t max_len;   /* buffer sizes 1 .. max_len */
};

static uint32_t owner_of(int proc, int thread, bool records)
{
        return (records ? 0x10000u : 0) | (uint32_t)(proc + 1) << 8 | (uint32_t)(thread + 1);
}

static _Noreturn void stress_child(struct seg *s, int proc, struct tres *res, uint64_t cycles,
                                   const struct plan *pl)
{
        bool records = pl->records;
        eng_arena_t a;
        uintptr_t addr;
        if (seg_remap_in_child(s, proc, &a, &addr) != 0)
                _exit(2);
        __atomic_fetch_add(g_mapped, 1, __ATOMIC_SEQ_CST);
        struct worker w[THREADS];
        pthread_t tid[THREADS];
        memset(w, 0, sizeof w);
        for (int t = 0; t < THREADS; t++) {
                w[t].a = a;
                w[t].proc = proc;
                w[t].thread = t;
                w[t].owner = owner_of(proc, t, records);
                w[t].cycles = cycles;
                w[t].max_len = pl->max_len;
                w[t].res = &res[proc * THREADS + t];
                w[t].res->base = addr;
                if (pthread_create(&tid[t], NULL, records ? rec_worker : buf_worker, &w[t]) != 0) {
                        fprintf(stderr, "child %d: pthread_create failed\n", proc);
                        _exit(2);
                }
        }
        int bad = 0;
        for (int t = 0; t < THREADS; t++) {
                pthread_join(tid[t], NULL);
                if (w[t].res->mismatches || w[t].res->errors)
                        bad = 1;
        }
        _exit(bad);
}

static void run_stress(eng_arena_kind_t kind, const struct plan *pl)
{
        const char *k = eng_arena_kind_name(kind);
        const char *what = pl->what;
        bool records = pl->records;
        uint64_t cycles = stress_cycles();
        struct seg s;
        seg_create(&s, what, kind, pl->size, REC_BODY, pl->max_shift);
        struct tres *res = results_map(PROCS * THREADS);
        g_mapped =
            mmap(NULL, sizeof *g_mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert(g_mapped != MAP_FAILED);
        *g_mapped = 0;
        pid_t pids[PROCS];
        int status[PROCS];
        double t0 = now_s();
        for (int p = 0; p < PROCS; p++) {
                pids[p] = fork();
                if (pids[p] == 0)
                        stress_child(&s, p, res, cycles, pl);
        }
        int late = unlink_then_wait(pids, status, DEADLINE_SECS);
        double secs = now_s() - t0;

        uint64_t tot_cycles = 0, tot_allocs = 0, tot_frees = 0, enomem = 0, starved = 0;
        uint64_t mism = 0, errs = 0, owner_checks = 0;
        for (int i = 0; i < PROCS * THREADS; i++) {
                tot_cycles += res[i].cycles;
                tot_allocs += res[i].allocs;
                tot_frees += res[i].frees;
                enomem += res[i].enomem;
                starved += res[i].starved;
                mism += res[i].mismatches;
                errs += res[i].errors;
                owner_checks += res[i].owner_checks;
        }
        fprintf(stderr,
                "[stress] %s %s: %d procs x %d threads x %llu cycles in %.2f s (%.2f M "
                "cycles/s); ENOMEM %llu, starved %llu, owner checks %llu, mismatches %llu, "
                "errors %llu\n",
                k, what, PROCS, THREADS, (unsigned long long)cycles, secs,
                (double)tot_cycles / secs / 1e6, (unsigned long long)enomem,
                (unsigned long long)starved, (unsigned long long)owner_checks,
                (unsigned long long)mism, (unsigned long long)errs);

        assert_children_ok(pids, status, PROCS, late, what);
        cr_assert_eq(mism, 0, "%s %s: %llu pattern/owner mismatches", k, what,
                     (unsigned long long)mism);
        cr_assert_eq(errs, 0, "%s %s: %llu unexpected errors", k, what, (unsigned long long)errs);
        cr_assert_eq(tot_cycles, (uint64_t)PROCS * THREADS * cycles);
        /* A starved cycle (ENOMEM after every retry) would count without allocating: every
         * cycle must have been a real alloc -> fill -> verify -> free. */
        cr_assert_eq(starved, 0, "%s %s: %llu cycles starved", k, what,
                     (unsigned long long)starved);
        cr_assert_eq(tot_allocs, tot_cycles, "%s %s: %llu allocations in %llu cycles", k, what,
                     (unsigned long long)tot_allocs, (unsigned long long)tot_cycles);
        cr_assert_eq(tot_allocs, tot_frees, "every block was freed by its owner");
        /* Every process really had the segment at its own address. */
        for (int i = 0; i < PROCS; i++) {
                cr_assert_neq(res[i * THREADS].base, (uint64_t)(uintptr_t)s.base);
                for (int j = 0; j < i; j++)
                        cr_assert_neq(res[i * THREADS].base, res[j * THREADS].base,
                                      "processes %d and %d mapped at the same address", i, j);
        }

        ASSERT_ARENA_OK(&s.a, "after the stress");
        eng_arena_stats_t st;
        eng_arena_stats(&s.a, &st);
        cr_assert_eq(st.buf_used_blocks, 0, "%s %s: %llu blocks still used", k, what,
                     (unsigned long long)st.buf_used_blocks);
        cr_assert_eq(st.buf_used_bytes, 0);
        cr_assert_eq(st.rec_used, 0, "%s %s: %llu records still used", k, what,
                     (unsigned long long)st.rec_used);
        cr_assert_eq(st.rec_free, eng_arena_rec_slots(&s.a), "every carved slot is free");
        cr_assert_eq(st.bad_frees, 0);
        cr_assert_eq(st.cuts, 0, "%s %s: honest operation cut %llu lists", k, what,
                     (unsigned long long)st.cuts);
        if (records) {
                /* A slot is carved only when the free list is empty, so at most every live
                 * record plus one in flight per thread. */
                cr_assert_leq(eng_arena_rec_slots(&s.a), (uint64_t)PROCS * THREADS * (WINDOW + 1),
                              "%s: %llu slots carved", k,
                              (unsigned long long)eng_arena_rec_slots(&s.a));
                cr_assert_eq(st.buf_bottom, st.top, "no buffer was allocated");
        } else {
                cr_assert_eq(st.rec_top, st.rec_base, "no record was allocated");
                if (kind == ENG_ARENA_MUTEX) {
                        cr_assert_eq(st.buf_bottom, st.top, "all space back in the gap");
                } else {
                        uint64_t allocs = 0, frees = 0;
                        for (uint32_t c = 0; c < st.nclasses; c++) {
                                allocs += st.cls[c].allocs;
                                frees += st.cls[c].frees;
                        }
                        cr_assert_eq(allocs, tot_allocs, "class counters saw every alloc");
                        cr_assert_eq(frees, tot_frees, "class counters saw every free");
                }
        }
        /* Each ENOMEM a thread saw was counted (retries may add more). */
        cr_assert_geq(st.failed, enomem);
        if (enomem == 0)
                cr_assert_eq(st.failed, 0);
        munmap(res, sizeof(struct tres) * PROCS * THREADS);
        munmap(g_mapped, sizeof *g_mapped);
        munmap(s.base, s.size);
}

/* Sizes 1 B .. 300 KiB in a segment with room for every thread's window: no ENOMEM expected,
 * pure contention on the lists (and on the mutex). */
TEST_BOTH_KINDS(buffers_survive_cross_process_stress, STRESS_SECS)
{
        struct plan pl = {
            .what = "buffers", .size = 32 * MIB, .max_shift = 20, .max_len = MAX_STRESS_LEN};
        run_stress(kind, &pl);
}

/* The same sizes in a 4 MiB segment: ENOMEM is frequent, and on the lock-free arena every
 * failing allocation merges buddies (lf_coalesce) while the other threads keep going. */
TEST_BOTH_KINDS(buffers_survive_stress_with_coalescing, STRESS_SECS)
{
        struct plan pl = {
            .what = "buffers-4MiB", .size = 4 * MIB, .max_shift = 20, .max_len = MAX_STRESS_LEN};
        run_stress(kind, &pl);
}

/* One size class (<= 4 KiB blocks) in a segment smaller than all the windows together:
 * ENOMEM all the time, blocks handed from thread to thread through the free paths. */
TEST_BOTH_KINDS(buffers_survive_stress_at_exhaustion, STRESS_SECS)
{
        struct plan pl = {.what = "buffers-full",
                          .size = 256 * 1024,
                          .max_shift = 16,
                          .max_len = 4096 - ENG_ARENA_HDR_BYTES};
        run_stress(kind, &pl);
}

TEST_BOTH_KINDS(records_survive_cross_process_stress, STRESS_SECS)
{
        struct plan pl = {.what = "records", .records = true, .size = 4 * MIB, .max_shift = 20};
        run_stress(kind, &pl);
}

/* ---- SIGKILL in the middle of allocating ---------------------------------------------- */

#define VICTIM_MAX 4096

/*
 * The victim, until it is killed, alternates two phases: (a) 64 steps of churn with 4 live
 * blocks of random sizes; (b) small blocks until ENOMEM, free them all, then one request of
 * eng_arena_max_alloc() (on the lock-free arena that one has to merge buddies first).
 */
static _Noreturn void kill_victim(eng_arena_t *a, uint32_t owner)
{
        static uint64_t many[VICTIM_MAX];
        uint64_t rng = 0x9e3779b97f4a7c15ull * owner, off[4] = {0}, o;
        for (;;) {
                for (int step = 0; step < 64; step++) {
                        int i = (int)(xorshift(&rng) % 4);
                        if (off[i]) {
                                if (eng_arena_free(a, off[i]) != 0)
                                        _exit(3);
                                off[i] = 0;
                        }
                        int rc = eng_arena_alloc(a, 1 + xorshift(&rng) % 200000, owner, &o);
                        if (rc == 0) {
                                memset(eng_arena_ptr(a, o, 64), 0x33, 64); /* not a header */
                                off[i] = o;
                        } else if (rc != -ENOMEM) {
                                _exit(4);
                        }
                }
                for (int i = 0; i < 4; i++)
                        if (off[i] && eng_arena_free(a, off[i]) == 0)
                                off[i] = 0;
                int n = 0;
                while (n < VICTIM_MAX &&
                       eng_arena_alloc(a, 1 + xorshift(&rng) % 4000, owner, &many[n]) == 0) {
                        memset(eng_arena_ptr(a, many[n], 64), 0x33, 64);
                        n++;
                }
                while (n > 0)
                        if (eng_arena_free(a, many[--n]) != 0)
                                _exit(5);
                if (eng_arena_alloc(a, eng_arena_max_alloc(a), owner, &o) == 0 &&
                    eng_arena_free(a, o) != 0)
                        _exit(6);
        }
}

/* The sizes of the blocks the parent of the kill tests keeps across the kills. */
static const uint64_t kill_keep_len[KILL_KEEP] = {100, 3000, 5000, 40000, 100000, 250000};

/* After a kill: reclaim the victim's blocks (twice: the second finds none), and check that
 * the blocks the parent keeps are intact and still its own. Returns the blocks reclaimed. */
static uint64_t reclaim_victim(eng_arena_t *a, uint32_t victim, const uint64_t *keep,
                               const uint64_t *keep_len, const char *k, int it)
{
        int64_t n = eng_arena_reclaim(a, victim);
        cr_assert_geq(n, 0, "%s: iteration %d: reclaim: %lld", k, it, (long long)n);
        cr_assert_eq(eng_arena_reclaim(a, victim), 0,
                     "%s: iteration %d: the victim still owns blocks", k, it);
        for (int i = 0; i < KILL_KEEP; i++) {
                uint64_t seen, bad = check_pat(eng_arena_ptr(a, keep[i], keep_len[i]), keep_len[i],
                                               0x1111000000 + i, &seen);
                cr_assert_eq(bad, 0, "%s: iteration %d: kept block %d overwritten", k, it, i);
                cr_assert_eq(eng_arena_owner(a, keep[i]), 1,
                             "%s: iteration %d: kept block %d lost its owner", k, it, i);
        }
        return (uint64_t)n;
}

/*
 * The arena after a kill and its reclaim. Mutex: exact (the parent's KILL_KEEP blocks are all
 * that is used, the strict check passes). Lock-free: the tolerant check passes and this kill
 * lost at most max_lost bytes (*leaked: the total lost so far, updated). Returns 1 if the strict
 * check failed (allowed on the lock-free arena, counted by the caller), else 0.
 */
static int check_after_kill(eng_arena_t *a, eng_arena_kind_t kind, uint64_t max_lost, const char *k,
                            int it, uint64_t *leaked)
{
        char why[256];
        eng_arena_stats_t sts;
        eng_arena_stats(a, &sts);
        int strict = eng_arena_check(a, why, sizeof why);
        if (kind == ENG_ARENA_MUTEX) {
                cr_assert_eq(sts.buf_used_blocks, KILL_KEEP,
                             "%s: iteration %d: stats say %llu blocks used, the parent holds %d "
                             "(the victim's were reclaimed); eng_arena_check: %s",
                             k, it, (unsigned long long)sts.buf_used_blocks, KILL_KEEP,
                             strict == 0 ? "passes" : why);
                cr_assert_eq(strict, 0, "%s: iteration %d: eng_arena_check: %s", k, it, why);
                return 0;
        }
        uint64_t now = 0;
        int rc = eng_arena_check_leaks(a, &now, why, sizeof why);
        cr_assert_eq(rc, 0, "%s: iteration %d: eng_arena_check_leaks: %s", k, it, why);
        cr_assert_leq(now - *leaked, max_lost,
                      "%s: iteration %d: one kill lost %llu bytes (now %llu lost), more than %llu",
                      k, it, (unsigned long long)(now - *leaked), (unsigned long long)now,
                      (unsigned long long)max_lost);
        *leaked = now;
        return strict != 0;
}

static pid_t fork_and_kill(void (*victim)(eng_arena_t *, uint32_t), eng_arena_t *a, uint32_t owner,
                           uint64_t *rng, const char *k, int it)
{
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
                victim(a, owner);
                _exit(7);
        }
        sleep_us(100 + (long)(xorshift(rng) % 1400));
        kill(pid, SIGKILL);
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
                  "%s: iteration %d: the victim stopped by itself (status %#x)", k, it, st);
        return pid;
}

/*
 * The parent holds KILL_KEEP blocks; a child allocates/frees until SIGKILLed at a random
 * moment (possibly holding the mutex, possibly between two steps of a lock-free update).
 * After each kill the parent reclaims the child's owner id and must find: its own blocks
 * live, owned and intact; the arena usable; and
 *   mutex:     eng_arena_check passing and no other block used (the EOWNERDEAD repair
 *              makes the arena exact again);
 *   lock-free: eng_arena_check_leaks passing (what a kill leaves is lost but nobody's) and
 *              at most one superblock more lost than before the kill (arena.h: a carved
 *              superblock, an unpushed buddy...). How often the strict eng_arena_check
 *              fails is printed.
 */
TEST_BOTH_KINDS(survives_sigkill_during_alloc, 120)
{
        const char *k = eng_arena_kind_name(kind);
        int iters = (int)env_u64("ENG_ARENA_KILL_ITERS", 400);
        struct seg s;
        seg_create(&s, "kill", kind, 16 * MIB, 256, 20);
        shm_unlink(g_shm_name); /* the victims use the mapping they inherit */
        g_shm_name[0] = '\0';
        eng_arena_t *a = &s.a;
        const uint64_t *keep_len = kill_keep_len;
        const uint64_t sb = (uint64_t)1 << 20;
        uint64_t keep[KILL_KEEP];
        for (int i = 0; i < KILL_KEEP; i++) {
                cr_assert_eq(eng_arena_alloc(a, keep_len[i], 1, &keep[i]), 0);
                fill_pat(eng_arena_ptr(a, keep[i], keep_len[i]), keep_len[i], 0x1111000000 + i);
        }
        uint64_t rng = 0x5eed ^ (uint64_t)getpid(), reclaimed = 0, leaked = 0;
        int strict_failed = 0;
        for (int it = 0; it < iters; it++) {
                uint32_t victim = 1000 + (uint32_t)it;
                fork_and_kill(kill_victim, a, victim, &rng, k, it);

                reclaimed += reclaim_victim(a, victim, keep, keep_len, k, it);
                strict_failed += check_after_kill(a, kind, sb, k, it, &leaked);
                uint64_t x;
                int rc = eng_arena_alloc(a, 4000, 2, &x);
                cr_assert_eq(rc, 0, "%s: iteration %d: alloc after the kill: %d", k, it, rc);
                fill_pat(eng_arena_ptr(a, x, 4000), 4000, 0x2222);
                for (int i = 0; i < KILL_KEEP; i++) {
                        uint64_t seen, bad = check_pat(eng_arena_ptr(a, keep[i], keep_len[i]),
                                                       keep_len[i], 0x1111000000 + i, &seen);
                        cr_assert_eq(bad, 0,
                                     "%s: iteration %d: a new block overwrote kept block %d", k, it,
                                     i);
                }
                cr_assert_eq(eng_arena_free(a, x), 0);
        }
        fprintf(stderr,
                "[kill] %s: %d kills survived, %llu blocks reclaimed from victims; %llu bytes "
                "lost to kills; strict eng_arena_check failed after %d of them\n",
                k, iters, (unsigned long long)reclaimed, (unsigned long long)leaked, strict_failed);
        for (int i = 0; i < KILL_KEEP; i++)
                cr_assert_eq(eng_arena_free(a, keep[i]), 0);
        if (kind == ENG_ARENA_MUTEX)
                ASSERT_ARENA_OK(a, "end");
        munmap(s.base, s.size);
}

/* Records have no reclaim: the victim's live records stay used, and that is all it may leave. */
static _Noreturn void rec_victim(eng_arena_t *a, uint32_t owner)
{
        uint64_t rng = 0x9e3779b97f4a7c15ull * owner, r[4] = {0};
        for (;;) {
                int i = (int)(xorshift(&rng) % 4);
                if (r[i]) {
                        if (eng_arena_rec_free(a, r[i]) != 0)
                                _exit(3);
                        r[i] = 0;
                }
                if (eng_arena_rec_alloc(a, owner, &r[i]) != 0)
                        _exit(4);
                memset(eng_arena_ptr(a, r[i], REC_BODY), 0x44, REC_BODY);
        }
}

/*
 * Same kill loop on records. After each kill: the parent's records intact, a new record is
 * none of them, and eng_arena_check_leaks passes (arena.h: a slot carved but not yet stamped
 * is the only thing a kill may leave).
 */
TEST_BOTH_KINDS(records_survive_sigkill, 120)
{
        const char *k = eng_arena_kind_name(kind);
        int iters = (int)env_u64("ENG_ARENA_KILL_ITERS", 400);
        struct seg s;
        seg_create(&s, "reckill", kind, 4 * MIB, REC_BODY, 20);
        shm_unlink(g_shm_name);
        g_shm_name[0] = '\0';
        eng_arena_t *a = &s.a;
        enum { KEEP_REC = 8 };
        uint64_t keep[KEEP_REC];
        for (int i = 0; i < KEEP_REC; i++) {
                cr_assert_eq(eng_arena_rec_alloc(a, 1, &keep[i]), 0);
                fill_pat(eng_arena_ptr(a, keep[i], REC_BODY), REC_BODY, 0x3333000000 + i);
        }
        uint64_t rng = 0xfeed ^ (uint64_t)getpid();
        int strict_failed = 0;
        for (int it = 0; it < iters; it++) {
                fork_and_kill(rec_victim, a, 5000 + (uint32_t)it, &rng, k, it);
                char why[256];
                uint64_t leaked = 0;
                strict_failed += eng_arena_check(a, NULL, 0) != 0;
                int rc = eng_arena_check_leaks(a, &leaked, why, sizeof why);
                cr_assert_eq(rc, 0, "%s: iteration %d: eng_arena_check_leaks: %s", k, it, why);
                uint64_t r;
                cr_assert_eq(eng_arena_rec_alloc(a, 2, &r), 0, "%s: iteration %d", k, it);
                fill_pat(eng_arena_ptr(a, r, REC_BODY), REC_BODY, 0x4444);
                for (int i = 0; i < KEEP_REC; i++) {
                        uint64_t seen;
                        cr_assert_neq(r, keep[i], "%s: iteration %d: kept record handed out", k,
                                      it);
                        cr_assert_eq(check_pat(eng_arena_ptr(a, keep[i], REC_BODY), REC_BODY,
                                               0x3333000000 + i, &seen),
                                     0, "%s: iteration %d: kept record %d overwritten", k, it, i);
                }
                cr_assert_eq(eng_arena_rec_free(a, r), 0);
        }
        fprintf(stderr,
                "[kill] %s records: %d kills survived; strict eng_arena_check failed after "
                "%d of them\n",
                k, iters, strict_failed);
        munmap(s.base, s.size);
}

/* ---- batches across processes: bulk allocations, deferred frees ------------------------ */

/*
 * PROCS processes x THREADS threads, each process with its own mapping of the segment. Each
 * thread, at random:
 *   produces: takes a block through a per-class cache filled by eng_arena_alloc_bulk (BULK_N
 *             at a time; eng_arena_alloc when the bulk gives nothing, always on the mutex
 *             arena), writes a message - {owner << 32 | sequence, length, pattern...} - and
 *             posts its offset in a shared mailbox;
 *   consumes: takes any posted offset (mostly another process's), checks the message and that
 *             the block is stamped with the owner the message names, and frees it with
 *             eng_arena_free_later (one in ten with eng_arena_free), flushing now and then
 *             (and the batch flushes itself when full);
 *   churns:   a private window of blocks taken through the cache or eng_arena_alloc, checked
 *             and freed with free_later or free.
 * A block handed out twice shows a foreign owner or pattern to one of its holders, or its
 * second free is refused: every such event is counted, and the parent asserts none happened.
 * At the end the parent drains the mailbox, and the strict eng_arena_check must pass with
 * every allocation matched by a free (and, lock-free, by the class counters).
 *
 * ENG_ARENA_BATCH_CYCLES (per thread) overrides the default cycle count.
 */

#define MBOX_SLOTS          1024
#define MBOX_PROBE          64
#define BULK_N              8
#define MSG_CLASSES         3 /* messages use the three smallest classes (4, 8, 16 KiB blocks) */
#define BATCH_SECS          60
#define BATCH_DEADLINE_SECS 45.0

struct mbox {
        uint64_t slot[MBOX_SLOTS]; /* a posted payload offset; 0 = empty */
};

struct bres {
        uint64_t cycles, produced, consumed, foreign, self_consumed;
        uint64_t bulk_calls, bulk_blocks, bulk_multi, plain_allocs;
        uint64_t frees, later_frees, flushes, enomem, starved, mismatches, errors;
        uint64_t base;
        double secs;
};

struct bworker {
        eng_arena_t a;
        uint32_t owner;
        int proc;
        uint64_t cycles, rng;
        uint32_t seq;
        struct bres *res;
        struct mbox *mb;
        eng_arena_batch_t batch;
        uint64_t cache[MSG_CLASSES][BULK_N];
        uint32_t ncache[MSG_CLASSES];
        struct {
                uint64_t off, len, pat;
        } win[WINDOW];
};

static uint32_t batch_owner(int proc, int thread)
{
        return 0x20000u | (uint32_t)(proc + 1) << 8 | (uint32_t)(thread + 1);
}

static bool batch_owner_valid(uint32_t o)
{
        uint32_t p = (o >> 8) & 0xff, t = o & 0xff;
        return (o & ~0xffffu) == 0x20000u && p >= 1 && p <= PROCS && t >= 1 && t <= THREADS;
}

/* Payload bytes of class c (min_class_shift 12) and a length that lands in it (>= 16). */
static uint64_t msg_class_max(uint32_t c)
{
        return ((uint64_t)4096 << c) - 64;
}

static uint64_t msg_len(uint32_t c, uint64_t r)
{
        uint64_t lo = c == 0 ? 16 : msg_class_max(c - 1) + 1, hi = msg_class_max(c);
        return lo + r % (hi - lo + 1);
}

/*
 * NULL if the message at off is intact and its block is live and stamped with the owner the
 * message names; else what is wrong (*bad, *seen: the first bad pattern word, 1-based).
 */
static const char *msg_check(const eng_arena_t *a, uint64_t off, uint64_t *pat, uint64_t *bad,
                             uint64_t *seen)
{
        *pat = *bad = *seen = 0;
        const uint64_t *h = eng_arena_ptr(a, off, 16);
        if (h == NULL)
                return "offset outside the region";
        *pat = h[0];
        uint64_t len = h[1], cap = eng_arena_capacity(a, off);
        uint32_t owner = (uint32_t)(*pat >> 32);
        if (cap == 0)
                return "not a live block";
        if (!batch_owner_valid(owner))
                return "foreign pattern (no such producer)";
        if (len < 16 || len > cap)
                return "length does not fit the block";
        if (eng_arena_owner(a, off) != owner)
                return "block stamped with another owner than its message's";
        *bad = check_pat(h + 2, len - 16, *pat, seen);
        return *bad ? "pattern overwritten" : NULL;
}

static void bw_error(struct bworker *w, const char *what, long v)
{
        if (w->res->errors++ < 5)
                fprintf(stderr, "%s: owner %#x: %s: %ld\n",
                        eng_arena_kind_name(eng_arena_kind(&w->a)), w->owner, what, v);
}

static void bw_mismatch(struct bworker *w, const char *what, uint64_t off, uint64_t pat,
                        uint64_t bad, uint64_t seen)
{
        if (w->res->mismatches++ < 5)
                fprintf(stderr,
                        "%s: owner %#x: block %llu: %s (message %#llx, word %llu is %#llx)\n",
                        eng_arena_kind_name(eng_arena_kind(&w->a)), w->owner,
                        (unsigned long long)off, what, (unsigned long long)pat,
                        (unsigned long long)bad, (unsigned long long)seen);
}

static void bw_flush(struct bworker *w)
{
        eng_arena_flush(&w->a, &w->batch);
        w->res->flushes++;
        if (w->batch.n != 0)
                bw_error(w, "batch not empty after flush", w->batch.n);
}

static void bw_free(struct bworker *w, uint64_t off, bool later)
{
        int rc = later ? eng_arena_free_later(&w->a, &w->batch, off) : eng_arena_free(&w->a, off);
        if (rc != 0) {
                bw_error(w, later ? "free_later" : "free", rc);
                return;
        }
        if (later)
                w->res->later_frees++;
        else
                w->res->frees++;
        if (w->batch.n > ENG_ARENA_BATCH)
                bw_error(w, "batch overfilled", w->batch.n);
        if (later && xorshift(&w->rng) % 96 == 0)
                bw_flush(w);
}

static void bw_win_release(struct bworker *w, int i)
{
        uint64_t off = w->win[i].off, seen = 0;
        uint64_t bad = check_pat(eng_arena_ptr(&w->a, off, w->win[i].len), w->win[i].len,
                                 w->win[i].pat, &seen);
        if (bad)
                bw_mismatch(w, "private block changed under its owner", off, w->win[i].pat, bad,
                            seen);
        else if (eng_arena_owner(&w->a, off) != w->owner)
                bw_mismatch(w, "private block lost its owner", off, w->win[i].pat, 0,
                            eng_arena_owner(&w->a, off));
        bw_free(w, off, xorshift(&w->rng) % 2 == 0);
        w->win[i].off = 0;
}

static void bw_consume_msg(struct bworker *w, uint64_t off)
{
        uint64_t pat, bad, seen;
        const char *why = msg_check(&w->a, off, &pat, &bad, &seen);
        if (why != NULL) {
                bw_mismatch(w, why, off, pat, bad, seen);
                return; /* not ours to free: the count fails the test */
        }
        if (((pat >> 40) & 0xff) != (uint64_t)w->proc + 1)
                w->res->foreign++;
        w->res->consumed++;
        bw_free(w, off, xorshift(&w->rng) % 10 != 0);
}

/* Take one posted message, if any of MBOX_PROBE slots has one. */
static bool bw_consume(struct bworker *w)
{
        uint32_t start = (uint32_t)(xorshift(&w->rng) % MBOX_SLOTS);
        for (uint32_t k = 0; k < MBOX_PROBE; k++) {
                uint64_t *s = &w->mb->slot[(start + k) % MBOX_SLOTS];
                uint64_t v = __atomic_load_n(s, __ATOMIC_ACQUIRE);
                if (v != 0 && __atomic_compare_exchange_n(s, &v, 0, false, __ATOMIC_SEQ_CST,
                                                          __ATOMIC_SEQ_CST)) {
                        bw_consume_msg(w, v);
                        return true;
                }
        }
        return false;
}

/* ENOMEM: give back everything this thread holds or has pending, and help drain the mailbox. */
static void bw_make_room(struct bworker *w)
{
        for (uint32_t c = 0; c < MSG_CLASSES; c++)
                while (w->ncache[c] > 0)
                        bw_free(w, w->cache[c][--w->ncache[c]], true);
        for (int i = 0; i < WINDOW; i++)
                if (w->win[i].off)
                        bw_win_release(w, i);
        for (int i = 0; i < 16; i++)
                bw_consume(w);
        bw_flush(w);
}

/* A block of len: from class c's cache (refilled by one bulk) if c < MSG_CLASSES, else (or if
 * the bulk gave nothing) from eng_arena_alloc, retrying on ENOMEM. */
static int bw_take(struct bworker *w, uint32_t c, uint64_t len, uint64_t *off)
{
        if (c < MSG_CLASSES) {
                if (w->ncache[c] == 0) {
                        uint64_t *cc = w->cache[c];
                        uint32_t got = eng_arena_alloc_bulk(&w->a, len, w->owner, cc, BULK_N);
                        w->res->bulk_calls++;
                        if (got > BULK_N) {
                                bw_error(w, "bulk returned more than asked", got);
                                got = 0;
                        }
                        w->res->bulk_blocks += got;
                        w->res->bulk_multi += got > 1;
                        for (uint32_t i = 0; i < got; i++) {
                                if (eng_arena_owner(&w->a, cc[i]) != w->owner ||
                                    eng_arena_capacity(&w->a, cc[i]) != msg_class_max(c))
                                        bw_mismatch(w, "bulk block not stamped ours or wrong class",
                                                    cc[i], 0, 0, eng_arena_capacity(&w->a, cc[i]));
                                for (uint32_t j = 0; j < i; j++)
                                        if (cc[j] == cc[i])
                                                bw_mismatch(w, "bulk returned a block twice", cc[i],
                                                            0, 0, 0);
                        }
                        w->ncache[c] = got;
                }
                if (w->ncache[c] > 0) {
                        *off = w->cache[c][--w->ncache[c]];
                        return 0;
                }
        }
        int rc = eng_arena_alloc(&w->a, len, w->owner, off);
        if (rc == -ENOMEM) {
                w->res->enomem++;
                bw_make_room(w);
                for (int tries = 0; tries < 2000 && rc == -ENOMEM; tries++) {
                        rc = eng_arena_alloc(&w->a, len, w->owner, off);
                        if (rc != -ENOMEM)
                                break;
                        bw_consume(w);
                        bw_flush(w);
                        if (tries < 100)
                                sched_yield();
                        else
                                sleep_us(50);
                }
                if (rc == -ENOMEM)
                        w->res->starved++;
        }
        if (rc == 0)
                w->res->plain_allocs++;
        else if (rc != -ENOMEM)
                bw_error(w, "alloc", rc);
        return rc;
}

static void bw_produce(struct bworker *w)
{
        uint64_t r = xorshift(&w->rng), off;
        uint32_t c = r % 10 < 7 ? 0 : r % 10 < 9 ? 1 : 2;
        uint64_t len = msg_len(c, r >> 8);
        if (bw_take(w, c, len, &off) != 0)
                return;
        uint64_t *h = eng_arena_ptr(&w->a, off, len);
        if (h == NULL || eng_arena_capacity(&w->a, off) < len) {
                bw_error(w, "taken block too small or outside the region", (long)len);
                return;
        }
        uint64_t pat = ((uint64_t)w->owner << 32) | w->seq++;
        h[0] = pat;
        h[1] = len;
        fill_pat(h + 2, len - 16, pat);
        w->res->produced++;
        /* The CAS (full barrier) publishes the message before the offset. */
        uint32_t start = (uint32_t)(xorshift(&w->rng) % MBOX_SLOTS);
        for (uint32_t k = 0; k < MBOX_PROBE; k++) {
                uint64_t zero = 0;
                if (__atomic_compare_exchange_n(&w->mb->slot[(start + k) % MBOX_SLOTS], &zero, off,
                                                false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                        return;
        }
        w->res->self_consumed++; /* mailbox crowded here: consume it ourselves */
        bw_consume_msg(w, off);
}

static void bw_churn(struct bworker *w)
{
        int i = (int)(xorshift(&w->rng) % WINDOW);
        if (w->win[i].off)
                bw_win_release(w, i);
        uint64_t r = xorshift(&w->rng), off;
        uint64_t len = 1 + (r >> 8) % 60000;
        uint32_t c = MSG_CLASSES;
        for (uint32_t k = 0; k < MSG_CLASSES; k++)
                if (len <= msg_class_max(k)) {
                        c = k;
                        break;
                }
        if (r % 2)
                c = MSG_CLASSES; /* half of them: plain eng_arena_alloc */
        if (bw_take(w, c, len, &off) != 0)
                return;
        void *p = eng_arena_ptr(&w->a, off, len);
        if (p == NULL) {
                bw_error(w, "ptr out of the region", (long)len);
                return;
        }
        uint64_t pat = ((uint64_t)w->owner << 32) | 0x80000000u | w->seq++;
        fill_pat(p, len, pat);
        w->win[i].off = off;
        w->win[i].len = len;
        w->win[i].pat = pat;
}

static void *batch_worker(void *arg)
{
        struct bworker *w = arg;
        double t0 = now_s();
        for (uint64_t c = 0; c < w->cycles; c++) {
                uint64_t op = xorshift(&w->rng) % 100;
                if (op < 35)
                        bw_produce(w);
                else if (op < 72)
                        bw_consume(w);
                else
                        bw_churn(w);
                w->res->cycles++;
        }
        /* Give back the private window and the caches; what is posted stays for others. */
        for (int i = 0; i < WINDOW; i++)
                if (w->win[i].off)
                        bw_win_release(w, i);
        for (uint32_t c = 0; c < MSG_CLASSES; c++)
                while (w->ncache[c] > 0)
                        bw_free(w, w->cache[c][--w->ncache[c]], true);
        bw_flush(w);
        w->res->secs = now_s() - t0;
        return NULL;
}

static _Noreturn void batch_child(struct seg *s, int proc, struct bres *res, struct mbox *mb,
                                  uint64_t cycles)
{
        eng_arena_t a;
        uintptr_t addr;
        if (seg_remap_in_child(s, proc, &a, &addr) != 0)
                _exit(2);
        __atomic_fetch_add(g_mapped, 1, __ATOMIC_SEQ_CST);
        static struct bworker w[THREADS];
        pthread_t tid[THREADS];
        memset(w, 0, sizeof w);
        for (int t = 0; t < THREADS; t++) {
                w[t].a = a;
                w[t].proc = proc;
                w[t].owner = batch_owner(proc, t);
                w[t].cycles = cycles;
                w[t].rng = 0x9e3779b97f4a7c15ull * (w[t].owner + 1);
                w[t].res = &res[proc * THREADS + t];
                w[t].res->base = addr;
                w[t].mb = mb;
                if (pthread_create(&tid[t], NULL, batch_worker, &w[t]) != 0) {
                        fprintf(stderr, "child %d: pthread_create failed\n", proc);
                        _exit(2);
                }
        }
        int bad = 0;
        for (int t = 0; t < THREADS; t++) {
                pthread_join(tid[t], NULL);
                if (w[t].res->mismatches || w[t].res->errors)
                        bad = 1;
        }
        _exit(bad);
}

static void run_batch_stress(eng_arena_kind_t kind, const char *what, uint64_t size)
{
        const char *k = eng_arena_kind_name(kind);
        /* About 8 s each: the mutex arena does a third of the lock-free one's rate. */
        uint64_t dflt = kind == ENG_ARENA_LOCKFREE ? 2500000 : 1000000;
        uint64_t cycles = env_u64("ENG_ARENA_BATCH_CYCLES", UNDER_ASAN ? dflt / 20 : dflt);
        struct seg s;
        seg_create(&s, what, kind, size, REC_BODY, 20);
        struct bres *res = mmap(NULL, sizeof(struct bres) * PROCS * THREADS, PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        struct mbox *mb = mmap(NULL, sizeof(struct mbox), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_mapped =
            mmap(NULL, sizeof *g_mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert(res != MAP_FAILED && mb != MAP_FAILED && g_mapped != MAP_FAILED);
        memset(res, 0, sizeof(struct bres) * PROCS * THREADS);
        memset(mb, 0, sizeof *mb);
        *g_mapped = 0;
        pid_t pids[PROCS];
        int status[PROCS];
        double t0 = now_s();
        for (int p = 0; p < PROCS; p++) {
                pids[p] = fork();
                if (pids[p] == 0)
                        batch_child(&s, p, res, mb, cycles);
        }
        int late = unlink_then_wait(pids, status, BATCH_DEADLINE_SECS);
        double secs = now_s() - t0;

        struct bres tot;
        memset(&tot, 0, sizeof tot);
        for (int i = 0; i < PROCS * THREADS; i++) {
                const struct bres *r = &res[i];
                tot.cycles += r->cycles;
                tot.produced += r->produced;
                tot.consumed += r->consumed;
                tot.foreign += r->foreign;
                tot.self_consumed += r->self_consumed;
                tot.bulk_calls += r->bulk_calls;
                tot.bulk_blocks += r->bulk_blocks;
                tot.bulk_multi += r->bulk_multi;
                tot.plain_allocs += r->plain_allocs;
                tot.frees += r->frees;
                tot.later_frees += r->later_frees;
                tot.flushes += r->flushes;
                tot.enomem += r->enomem;
                tot.starved += r->starved;
                tot.mismatches += r->mismatches;
                tot.errors += r->errors;
        }
        /* What is still posted: check each message and free it here. */
        uint64_t drained = 0;
        for (int i = 0; i < MBOX_SLOTS; i++) {
                uint64_t off = mb->slot[i], pat, bad, seen;
                if (off == 0)
                        continue;
                const char *why = msg_check(&s.a, off, &pat, &bad, &seen);
                cr_assert_null(why, "%s: posted message at %llu: %s (%#llx)", k,
                               (unsigned long long)off, why, (unsigned long long)pat);
                cr_assert_eq(eng_arena_free(&s.a, off), 0);
                drained++;
        }
        fprintf(stderr,
                "[batch] %s %s: %d procs x %d threads x %llu cycles in %.2f s; %llu messages "
                "(%llu across processes, %llu left posted), bulk %llu calls -> %llu blocks "
                "(%llu with > 1), plain allocs %llu, frees %llu + %llu later in %llu flushes; "
                "ENOMEM %llu, starved %llu, mismatches %llu, errors %llu\n",
                k, what, PROCS, THREADS, (unsigned long long)cycles, secs,
                (unsigned long long)tot.produced, (unsigned long long)tot.foreign,
                (unsigned long long)drained, (unsigned long long)tot.bulk_calls,
                (unsigned long long)tot.bulk_blocks, (unsigned long long)tot.bulk_multi,
                (unsigned long long)tot.plain_allocs, (unsigned long long)tot.frees,
                (unsigned long long)tot.later_frees, (unsigned long long)tot.flushes,
                (unsigned long long)tot.enomem, (unsigned long long)tot.starved,
                (unsigned long long)tot.mismatches, (unsigned long long)tot.errors);

        assert_children_ok(pids, status, PROCS, late, what);
        cr_assert_eq(tot.mismatches, 0, "%s: %llu blocks with a foreign owner or pattern", k,
                     (unsigned long long)tot.mismatches);
        cr_assert_eq(tot.errors, 0, "%s: %llu unexpected errors", k,
                     (unsigned long long)tot.errors);
        cr_assert_eq(tot.starved, 0, "%s: %llu allocations starved", k,
                     (unsigned long long)tot.starved);
        cr_assert_eq(tot.cycles, (uint64_t)PROCS * THREADS * cycles);
        for (int i = 0; i < PROCS; i++)
                for (int j = 0; j < i; j++)
                        cr_assert_neq(res[i * THREADS].base, res[j * THREADS].base,
                                      "processes %d and %d mapped at the same address", i, j);
        /* Every message consumed once; every block taken freed once. */
        cr_assert_eq(tot.produced, tot.consumed + drained,
                     "%s: %llu produced, %llu consumed + %llu", k, (unsigned long long)tot.produced,
                     (unsigned long long)tot.consumed, (unsigned long long)drained);
        uint64_t allocs = tot.bulk_blocks + tot.plain_allocs;
        uint64_t frees = tot.frees + tot.later_frees + drained;
        cr_assert_eq(allocs, frees, "%s: %llu blocks taken, %llu freed", k,
                     (unsigned long long)allocs, (unsigned long long)frees);
        cr_assert_gt(tot.foreign, 0, "messages crossed processes");
        cr_assert_gt(tot.later_frees, 0);
        cr_assert_gt(tot.flushes, 0);
        if (kind == ENG_ARENA_LOCKFREE) {
                cr_assert_gt(tot.bulk_blocks, 0, "the bulk path was exercised");
                cr_assert_gt(tot.bulk_multi, 0, "bulks of more than one block happened");
        } else {
                cr_assert_eq(tot.bulk_blocks, 0, "mutex: bulk is always 0");
        }

        ASSERT_ARENA_OK(&s.a, "after the batch stress");
        eng_arena_stats_t st;
        eng_arena_stats(&s.a, &st);
        cr_assert_eq(st.buf_used_blocks, 0, "%s: %llu blocks still used", k,
                     (unsigned long long)st.buf_used_blocks);
        cr_assert_eq(st.buf_used_bytes, 0);
        cr_assert_eq(st.bad_frees, 0);
        cr_assert_eq(st.cuts, 0, "%s: honest operation cut %llu lists", k,
                     (unsigned long long)st.cuts);
        cr_assert_geq(st.failed, tot.enomem);
        if (kind == ENG_ARENA_LOCKFREE) {
                uint64_t ca = 0, cf = 0;
                for (uint32_t c = 0; c < st.nclasses; c++) {
                        ca += st.cls[c].allocs;
                        cf += st.cls[c].frees;
                }
                cr_assert_eq(ca, allocs, "class counters saw every allocation (bulk included)");
                cr_assert_eq(cf, frees, "class counters saw every free (flushed included)");
        } else {
                cr_assert_eq(st.buf_bottom, st.top, "all space back in the gap");
        }
        munmap(res, sizeof(struct bres) * PROCS * THREADS);
        munmap(mb, sizeof *mb);
        munmap(g_mapped, sizeof *g_mapped);
        munmap(s.base, s.size);
}

/* Room for everything: no ENOMEM expected, pure contention on the lists and the mailbox. */
TEST_BOTH_KINDS(batches_survive_cross_process_handoff, BATCH_SECS)
{
        run_batch_stress(kind, "batches", 32 * MIB);
}

/* 6 MiB: ENOMEM is frequent; a failing allocation flushes, gives back its cache and window,
 * drains the mailbox and retries, while on the lock-free arena lf_coalesce merges buddies
 * around blocks other threads hold pending in their batches. */
TEST_BOTH_KINDS(batches_survive_handoff_at_exhaustion, BATCH_SECS)
{
        run_batch_stress(kind, "batches-6MiB", 6 * MIB);
}

/*
 * The victim takes blocks with eng_arena_alloc_bulk (eng_arena_alloc when it gives nothing)
 * and frees them with free_later (flushing every 1..8) or free, until SIGKILLed.
 */
#define BULK_VICTIM_HELD 48
#define BULK_VICTIM_LEN  (8192u - 64u) /* classes 0 and 1 */

static _Noreturn void bulk_victim(eng_arena_t *a, uint32_t owner)
{
        uint64_t rng = 0x9e3779b97f4a7c15ull * owner, held[BULK_VICTIM_HELD], offs[16];
        uint32_t nh = 0, flush_at = 1 + (uint32_t)(xorshift(&rng) % 8);
        eng_arena_batch_t b = {.n = 0};
        for (;;) {
                uint64_t r = xorshift(&rng);
                uint64_t len = 16 + (r >> 8) % (BULK_VICTIM_LEN - 15);
                uint32_t want = 1 + (uint32_t)(r % 16), got = 0;
                if (want > BULK_VICTIM_HELD - nh)
                        want = BULK_VICTIM_HELD - nh;
                if (want > 0) {
                        got = eng_arena_alloc_bulk(a, len, owner, offs, want);
                        if (got > want)
                                _exit(8);
                        if (got == 0) {
                                int rc = eng_arena_alloc(a, len, owner, &offs[0]);
                                if (rc == 0)
                                        got = 1;
                                else if (rc != -ENOMEM)
                                        _exit(4);
                        }
                }
                for (uint32_t i = 0; i < got; i++) {
                        if (eng_arena_owner(a, offs[i]) != owner)
                                _exit(9);
                        memset(eng_arena_ptr(a, offs[i], 64), 0x33, 64); /* not a header */
                        held[nh++] = offs[i];
                }
                uint32_t nf = (uint32_t)(xorshift(&rng) % (nh + 1));
                while (nf-- > 0) {
                        uint32_t j = (uint32_t)(xorshift(&rng) % nh);
                        uint64_t off = held[j];
                        held[j] = held[--nh];
                        int rc = xorshift(&rng) % 2 ? eng_arena_free_later(a, &b, off)
                                                    : eng_arena_free(a, off);
                        if (rc != 0)
                                _exit(5);
                        if (b.n >= flush_at) {
                                eng_arena_flush(a, &b);
                                flush_at = 1 + (uint32_t)(xorshift(&rng) % 8);
                        }
                }
        }
}

/*
 * As survives_sigkill_during_alloc, with a victim that bulk-allocates and defers its frees.
 * After each kill the parent reclaims the victim's owner id and must find its own blocks
 * intact, the lists usable (a bulk of its own, then eng_arena_alloc), and
 *   mutex:     eng_arena_check passing and only its blocks used;
 *   lock-free: eng_arena_check_leaks passing, and at most one superblock (an allocation in
 *              flight: a carve, a buddy, or a bulk's blocks between its CAS and their stamps)
 *              plus the victim's unflushed batch (<= 8 blocks of <= 8 KiB) more lost than
 *              before the kill: a deferred free is FREE and on no list until its flush, and
 *              nothing (reclaim included) can find it after a kill.
 */
TEST_BOTH_KINDS(batches_survive_sigkill, 60)
{
        const char *k = eng_arena_kind_name(kind);
        int iters = (int)env_u64("ENG_ARENA_KILL_ITERS", 1000);
        struct seg s;
        seg_create(&s, "bulkkill", kind, 64 * MIB, 256, 20);
        shm_unlink(g_shm_name); /* the victims use the mapping they inherit */
        g_shm_name[0] = '\0';
        eng_arena_t *a = &s.a;
        const uint64_t *keep_len = kill_keep_len;
        const uint64_t sb = (uint64_t)1 << 20, per_kill = sb + 8 * 8192;
        uint64_t keep[KILL_KEEP];
        for (int i = 0; i < KILL_KEEP; i++) {
                cr_assert_eq(eng_arena_alloc(a, keep_len[i], 1, &keep[i]), 0);
                fill_pat(eng_arena_ptr(a, keep[i], keep_len[i]), keep_len[i], 0x1111000000 + i);
        }
        /* Stock the two classes' lists, so the first victims' bulks find blocks. */
        enum { STOCK = 384 };
        static uint64_t stock[STOCK];
        for (int i = 0; i < STOCK; i++)
                cr_assert_eq(eng_arena_alloc(a, i % 3 ? 3000 : 6000, 3, &stock[i]), 0);
        for (int i = 0; i < STOCK; i++)
                cr_assert_eq(eng_arena_free(a, stock[i]), 0);
        uint64_t rng = 0xb01c ^ (uint64_t)getpid(), reclaimed = 0, leaked = 0, pgot = 0;
        uint64_t worst = 0;
        int strict_failed = 0, leaky = 0;
        for (int it = 0; it < iters; it++) {
                uint32_t victim = 3000 + (uint32_t)it;
                fork_and_kill(bulk_victim, a, victim, &rng, k, it);

                reclaimed += reclaim_victim(a, victim, keep, keep_len, k, it);
                uint64_t before = leaked;
                strict_failed += check_after_kill(a, kind, per_kill, k, it, &leaked);
                leaky += leaked != before;
                if (leaked - before > worst)
                        worst = leaked - before;
                /* The lists still work: a bulk of our own, then a plain allocation. */
                uint64_t t[9];
                uint32_t got = eng_arena_alloc_bulk(a, 3000, 2, t, 8);
                cr_assert_leq(got, 8);
                pgot += got;
                int rc = eng_arena_alloc(a, 4000, 2, &t[got]);
                cr_assert_eq(rc, 0, "%s: iteration %d: alloc after the kill: %d", k, it, rc);
                eng_arena_batch_t b = {.n = 0};
                for (uint32_t i = 0; i <= got; i++) {
                        cr_assert_eq(eng_arena_owner(a, t[i]), 2);
                        for (int j = 0; j < KILL_KEEP; j++)
                                cr_assert_neq(t[i], keep[j],
                                              "%s: iteration %d: kept block %d "
                                              "handed out",
                                              k, it, j);
                        fill_pat(eng_arena_ptr(a, t[i], 3000), 3000, 0x2222);
                }
                for (int i = 0; i < KILL_KEEP; i++) {
                        uint64_t seen, bad = check_pat(eng_arena_ptr(a, keep[i], keep_len[i]),
                                                       keep_len[i], 0x1111000000 + i, &seen);
                        cr_assert_eq(bad, 0,
                                     "%s: iteration %d: a new block overwrote kept block %d", k, it,
                                     i);
                }
                for (uint32_t i = 0; i <= got; i++)
                        cr_assert_eq(eng_arena_free_later(a, &b, t[i]), 0);
                eng_arena_flush(a, &b);
        }
        fprintf(stderr,
                "[kill] %s batches: %d kills survived, %llu blocks reclaimed from victims; %llu "
                "bytes lost to %d of the kills (at most %llu by one); the parent's own bulks got "
                "%llu blocks; strict eng_arena_check failed after %d of them\n",
                k, iters, (unsigned long long)reclaimed, (unsigned long long)leaked, leaky,
                (unsigned long long)worst, (unsigned long long)pgot, strict_failed);
        cr_assert_gt(reclaimed, 0, "victims held bulk-taken blocks when killed");
        for (int i = 0; i < KILL_KEEP; i++)
                cr_assert_eq(eng_arena_free(a, keep[i]), 0);
        if (kind == ENG_ARENA_MUTEX) {
                ASSERT_ARENA_OK(a, "end");
        } else {
                uint64_t now = 0;
                char why[256];
                cr_assert_eq(eng_arena_check_leaks(a, &now, why, sizeof why), 0, "%s", why);
        }
        munmap(s.base, s.size);
}

/* ---- honest carves never look like damage ---------------------------------------------- */

/*
 * The damage checks must never fire in honest operation. The riskiest moment is a carve: a
 * popper that read buf_bottom before another process carved, split and pushed a buddy from the
 * new superblock sees a head below the bottom it read. Here PROCS x THREADS workers, each with
 * its own view, allocate small blocks (bulk and single) until ENOMEM in a 32 MiB arena of 64 KiB
 * superblocks - ~500 carves per round, racing with pops - then free everything; at a barrier
 * one process rebuilds the arena back to empty (quiescent: everyone else waits), and the next
 * round starts from an empty gap with fresh views (attached again, as new clients), which know
 * only the empty arena. After every round the rebuild must report no cut, and no view may have
 * met an anomaly.
 */
#define HC_ROUNDS 300

struct hc_ctl {
        uint64_t arrived;  /* barrier: arrivals so far */
        uint64_t cuts;     /* sum of the rebuilds' cut counts */
        uint64_t rebuilds; /* rebuilds that returned 0 and passed the check */
        uint64_t anomalies[PROCS * THREADS];
        uint64_t blocks[PROCS * THREADS];
        int failed;
};

/* Wait until n arrivals in all (a cross-process barrier with a deadline). */
static bool hc_barrier(struct hc_ctl *k, uint64_t n, double deadline)
{
        __atomic_fetch_add(&k->arrived, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&k->arrived, __ATOMIC_SEQ_CST) < n) {
                if (now_s() > deadline || __atomic_load_n(&k->failed, __ATOMIC_SEQ_CST))
                        return false;
                sched_yield();
        }
        return true;
}

struct hc_worker {
        eng_arena_t a;
        uint32_t owner;
        uint64_t *held;
        uint64_t nheld, cap, blocks;
};

static void *hc_alloc_all(void *arg)
{
        struct hc_worker *w = arg;
        uint64_t rng = 0x9e3779b97f4a7c15ull * w->owner, x;
        w->nheld = 0;
        while (w->nheld + 4 <= w->cap) {
                uint64_t len = 1 + xorshift(&rng) % 8000;
                uint32_t k = 0;
                if (xorshift(&rng) % 4 == 0)
                        k = eng_arena_alloc_bulk(&w->a, len, w->owner, &w->held[w->nheld], 4);
                if (k == 0) {
                        if (eng_arena_alloc(&w->a, len, w->owner, &x) != 0)
                                break;
                        w->held[w->nheld] = x;
                        k = 1;
                }
                w->nheld += k;
        }
        w->blocks += w->nheld;
        for (uint64_t i = 0; i < w->nheld; i++)
                eng_arena_free(&w->a, w->held[i]);
        return NULL;
}

static _Noreturn void hc_child(struct seg *s, int proc, struct hc_ctl *k, double deadline)
{
        eng_arena_t a;
        uintptr_t addr;
        if (seg_remap_in_child(s, proc, &a, &addr) != 0)
                _exit(2);
        __atomic_fetch_add(g_mapped, 1, __ATOMIC_SEQ_CST);
        static struct hc_worker w[THREADS];
        static uint64_t held[THREADS][8192];
        uint64_t n = 0, anomalies[THREADS] = {0};
        for (int round = 0; round < HC_ROUNDS; round++) {
                /* A fresh view each round, as a newly attached client's: it knows only the
                 * buf_bottom the rebuild left (top), so every carve by another process is news
                 * to it. */
                if (eng_arena_attach(&a, (void *)addr, s->size) != 0)
                        _exit(6);
                for (int t = 0; t < THREADS; t++) {
                        anomalies[t] += round ? eng_arena_anomalies(&w[t].a) : 0;
                        w[t].a = a;
                        w[t].owner = owner_of(proc, t, false);
                        w[t].held = held[t];
                        w[t].cap = 8192;
                }
                pthread_t tid[THREADS];
                for (int t = 0; t < THREADS; t++)
                        if (pthread_create(&tid[t], NULL, hc_alloc_all, &w[t]) != 0)
                                _exit(2);
                for (int t = 0; t < THREADS; t++)
                        pthread_join(tid[t], NULL);
                if (!hc_barrier(k, n += PROCS, deadline))
                        _exit(4);
                if (proc == 0) {
                        eng_arena_rebuild_report_t rep;
                        if (eng_arena_rebuild(&a, NULL, &rep) != 0 ||
                            eng_arena_check(&a, NULL, 0) != 0) {
                                __atomic_store_n(&k->failed, 1, __ATOMIC_SEQ_CST);
                                _exit(5);
                        }
                        k->cuts += rep.cuts;
                        k->rebuilds++;
                }
                if (!hc_barrier(k, n += PROCS, deadline))
                        _exit(4);
        }
        for (int t = 0; t < THREADS; t++) {
                k->anomalies[proc * THREADS + t] = anomalies[t] + eng_arena_anomalies(&w[t].a);
                k->blocks[proc * THREADS + t] = w[t].blocks;
        }
        _exit(0);
}

Test(lockfree, honest_carves_and_pops_never_cut, .timeout = 120, .fini = unlink_segment)
{
        struct seg s;
        seg_create(&s, "honest", ENG_ARENA_LOCKFREE, 32 * MIB, REC_BODY, 16);
        struct hc_ctl *k =
            mmap(NULL, sizeof *k, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_mapped =
            mmap(NULL, sizeof *g_mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert(k != MAP_FAILED && g_mapped != MAP_FAILED);
        memset(k, 0, sizeof *k);
        *g_mapped = 0;
        double t0 = now_s(), deadline = t0 + 90;
        pid_t pids[PROCS];
        int status[PROCS];
        for (int p = 0; p < PROCS; p++) {
                pids[p] = fork();
                if (pids[p] == 0)
                        hc_child(&s, p, k, deadline);
        }
        int late = unlink_then_wait(pids, status, 100);
        uint64_t anomalies = 0, blocks = 0;
        for (int i = 0; i < PROCS * THREADS; i++) {
                anomalies += k->anomalies[i];
                blocks += k->blocks[i];
        }
        fprintf(stderr,
                "[honest] %d rounds in %.2f s: %llu blocks allocated, %llu rebuilds; cuts %llu, "
                "anomalies %llu\n",
                HC_ROUNDS, now_s() - t0, (unsigned long long)blocks,
                (unsigned long long)k->rebuilds, (unsigned long long)k->cuts,
                (unsigned long long)anomalies);
        assert_children_ok(pids, status, PROCS, late, "honest");
        cr_assert_eq(k->rebuilds, HC_ROUNDS);
        cr_assert_eq(k->cuts, 0, "honest operation cut %llu lists", (unsigned long long)k->cuts);
        cr_assert_eq(anomalies, 0, "honest operation met %llu anomalies",
                     (unsigned long long)anomalies);
        ASSERT_ARENA_OK(&s.a, "after the rounds");
        munmap(k, sizeof *k);
        munmap(g_mapped, sizeof *g_mapped);
        munmap(s.base, s.size);
}

/* ---- a hostile writer: random bytes anywhere, while others allocate ------------------ */

/*
 * PROCS - 1 worker processes (THREADS threads each, each with its own mapping of the segment)
 * allocate, fill, verify and free blocks with owner tags - singly and in bulks, with deferred
 * frees and flushes, reclaims of their own owner, owner and capacity queries, stats and the
 * tolerant check; one of them plays the server: the only one to carve records, and it calls
 * eng_arena_heal every 256 cycles - while the last process writes random bytes anywhere:
 * line 0, the watermarks, the heads and counters, block headers and links at plausible places,
 * record slots, payloads. Denial of service is allowed (failed allocations, refused frees, data
 * overwritten in the workers' own blocks: all only counted). What is asserted: no process
 * crashed or hung, no offset the arena handed out lies outside the buffer area or record slots
 * of the region, and after everyone stopped a rebuild with no live owner makes the strict check
 * pass with every byte back in the gap.
 *
 * Every loop is bounded in count and in time, every wait has a deadline, children _exit.
 */
#define SCR_SECS_DEFAULT 3
#define SCR_MAX_CYCLES   20000000ull
#define SCR_BATCH        8

struct scr_res {
        uint64_t cycles, allocs, bulk_blocks, enomem, refused_frees, mismatches, recs;
        uint64_t reclaims, outside, anomalies, walk_skips, writes, heals;
};

struct scr_ctl {
        int stop;
        uint64_t deadline_ns; /* CLOCK_MONOTONIC: workers stop by then whatever happens */
        struct scr_res res[PROCS * THREADS];
};

struct scr_worker {
        eng_arena_t a;
        bool server; /* the one view that carves records, and heals (as the engine's server) */
        uint32_t owner;
        uint64_t rng;
        struct scr_ctl *k;
        struct scr_res *res;
        eng_arena_batch_t batch;
        struct {
                uint64_t off, len, pat;
        } win[WINDOW];
        uint64_t rec;
};

static bool scr_stop(const struct scr_worker *w)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        return __atomic_load_n(&w->k->stop, __ATOMIC_ACQUIRE) || ns > w->k->deadline_ns;
}

/* An offset the arena handed out: must be a payload inside the buffer part of the region. */
static void scr_check_off(struct scr_worker *w, uint64_t off, uint64_t len)
{
        const eng_arena_t *a = &w->a;
        if (off < a->rec_base + ENG_ARENA_HDR_BYTES || off > a->top || len > a->top - off ||
            eng_arena_ptr(a, off, len) == NULL) {
                if (w->res->outside++ < 5)
                        fprintf(stderr, "scribble: owner %#x got offset %llu len %llu: outside\n",
                                w->owner, (unsigned long long)off, (unsigned long long)len);
        }
}

static void scr_release(struct scr_worker *w, int i)
{
        uint64_t off = w->win[i].off, seen;
        if (check_pat(eng_arena_ptr(&w->a, off, w->win[i].len), w->win[i].len, w->win[i].pat,
                      &seen) != 0)
                w->res->mismatches++; /* the scribbler wrote into it: allowed */
        int rc = xorshift(&w->rng) % 2 ? eng_arena_free_later(&w->a, &w->batch, off)
                                       : eng_arena_free(&w->a, off);
        if (rc != 0)
                w->res->refused_frees++; /* its header was scribbled: allowed */
        w->win[i].off = 0;
}

static void scr_hold(struct scr_worker *w, int i, uint64_t off, uint64_t len)
{
        scr_check_off(w, off, len);
        void *p = eng_arena_ptr(&w->a, off, len);
        if (p == NULL)
                return;
        uint64_t pat = ((uint64_t)w->owner << 32) | (uint32_t)w->res->cycles;
        fill_pat(p, len, pat);
        w->win[i].off = off;
        w->win[i].len = len;
        w->win[i].pat = pat;
}

static void *scr_worker(void *arg)
{
        struct scr_worker *w = arg;
        eng_arena_t *a = &w->a;
        for (uint64_t c = 0; c < SCR_MAX_CYCLES && !scr_stop(w); c++) {
                w->res->cycles++;
                int i = (int)(xorshift(&w->rng) % WINDOW);
                if (w->win[i].off)
                        scr_release(w, i);
                uint64_t r = xorshift(&w->rng), op = r % 100, off;
                uint64_t len = 1 + (r >> 8) % (r % 20 == 0 ? MAX_STRESS_LEN : 16000);
                if (op < 70) {
                        int rc = eng_arena_alloc(a, len, w->owner, &off);
                        if (rc == 0) {
                                w->res->allocs++;
                                scr_hold(w, i, off, len);
                        } else {
                                w->res->enomem += rc == -ENOMEM;
                        }
                } else if (op < 80) {
                        uint64_t offs[4];
                        uint32_t n = eng_arena_alloc_bulk(a, 3000, w->owner, offs, 4);
                        w->res->bulk_blocks += n;
                        for (uint32_t j = 0; j < n && j < 4; j++) {
                                int s = (i + (int)j) % WINDOW;
                                if (w->win[s].off)
                                        scr_release(w, s);
                                scr_hold(w, s, offs[j], 3000);
                        }
                } else if (op < 88) {
                        if (!w->server)
                                continue;
                        if (w->rec) {
                                (void)eng_arena_rec_free(a, w->rec);
                                w->rec = 0;
                        } else if (eng_arena_rec_alloc(a, w->owner, &off) == 0) {
                                w->res->recs++;
                                if (eng_arena_rec_index(a, off) < 0 ||
                                    eng_arena_ptr(a, off, 256) == NULL)
                                        w->res->outside++;
                                else
                                        w->rec = off;
                        }
                } else if (op < 90) {
                        eng_arena_flush(a, &w->batch);
                        (void)eng_arena_reclaim(a, w->owner);
                        w->res->reclaims++;
                        for (int j = 0; j < WINDOW; j++)
                                w->win[j].off = 0; /* reclaimed (or lost to the scribbler) */
                } else if (op < 92) {
                        eng_arena_stats_t st;
                        uint64_t leaked;
                        eng_arena_stats(a, &st);
                        (void)eng_arena_check_leaks(a, &leaked, NULL, 0);
                } else if (op < 95) {
                        eng_arena_flush(a, &w->batch);
                } else if (w->win[i].off) {
                        if (eng_arena_owner(a, w->win[i].off) != w->owner ||
                            eng_arena_capacity(a, w->win[i].off) < w->win[i].len)
                                w->res->mismatches++;
                }
                if (w->server && c % 256 == 0 && eng_arena_heal(a, NULL, 0) > 0)
                        w->res->heals++;
        }
        for (int j = 0; j < WINDOW; j++)
                if (w->win[j].off)
                        scr_release(w, j);
        eng_arena_flush(a, &w->batch);
        w->res->anomalies = eng_arena_anomalies(a);
        w->res->walk_skips = eng_arena_walk_skips(a);
        return NULL;
}

static _Noreturn void scr_worker_child(struct seg *s, int proc, struct scr_ctl *k)
{
        eng_arena_t a;
        uintptr_t addr;
        if (seg_remap_in_child(s, proc, &a, &addr) != 0)
                _exit(2);
        __atomic_fetch_add(g_mapped, 1, __ATOMIC_SEQ_CST);
        static struct scr_worker w[THREADS];
        pthread_t tid[THREADS];
        memset(w, 0, sizeof w);
        for (int t = 0; t < THREADS; t++) {
                w[t].a = a;
                w[t].server = proc == 0 && t == 0;
                w[t].owner = owner_of(proc, t, false);
                w[t].rng = 0x9e3779b97f4a7c15ull * (w[t].owner + 1);
                w[t].k = k;
                w[t].res = &k->res[proc * THREADS + t];
                if (pthread_create(&tid[t], NULL, scr_worker, &w[t]) != 0)
                        _exit(2);
        }
        int bad = 0;
        for (int t = 0; t < THREADS; t++) {
                pthread_join(tid[t], NULL);
                bad |= w[t].res->outside != 0;
        }
        _exit(bad ? 3 : 0);
}

/* One random write aimed at the arena's structure (or anywhere). */
static void scr_scribble(eng_arena_t *a, uint64_t *rng)
{
        struct eng_arena_hdr *h = a->hdr;
        uint64_t r = xorshift(rng), v = xorshift(rng);
        uint64_t sb = (uint64_t)1 << a->max_shift, min = (uint64_t)1 << a->min_shift;
        uint64_t m = __atomic_load_n(&h->marks, __ATOMIC_RELAXED);
        uint64_t bb = units_to_off(marks_buf_bottom(m)), rt = units_to_off(marks_rec_top(m));
        if (bb > a->top || bb < a->rec_base)
                bb = a->top - sb;
        uint64_t nmin = (a->top - a->rec_base) / min;
        uint64_t blk = (a->top - (1 + (v >> 8) % nmin) * min); /* a 2^min-aligned offset */
        uint32_t c = (uint32_t)(v % a->nclasses);
        uint64_t *word;
        switch (r % 11) {
        case 0: /* a word anywhere */
                word = (uint64_t *)(a->base + ((v % a->size) & ~(uint64_t)7));
                *word = xorshift(rng);
                break;
        case 1: /* the header's first two lines */
                ((uint64_t *)h)[(v >> 4) % 16] = xorshift(rng);
                break;
        case 2: /* a class head: garbage, a plausible block (maybe in use), empty */
                if (v & 1)
                        h->cls[c].head = xorshift(rng);
                else if (v & 2)
                        h->cls[c].head = head_pack((uint32_t)(blk / ARENA_UNIT), (uint32_t)r);
                else
                        h->cls[c].head = head_pack(0, (uint32_t)r);
                break;
        case 3: /* the watermarks */
                switch ((v >> 4) % 4) {
                case 0:
                        h->marks = xorshift(rng);
                        break;
                case 1:
                        h->marks = marks_pack(marks_rec_top(m), (uint32_t)((bb + sb) / ARENA_UNIT));
                        break;
                case 2:
                        h->marks = marks_pack(marks_rec_top(m), (uint32_t)((bb - sb) / ARENA_UNIT));
                        break;
                default:
                        h->marks = marks_pack(
                            (uint32_t)((rt + (v % 3) * a->rec_stride - a->rec_stride) / ARENA_UNIT),
                            marks_buf_bottom(m));
                        break;
                }
                break;
        case 4: /* a block header word */
                word = (uint64_t *)(a->base + blk);
                *word = (v & 16) ? blk_word(c, 1 + (uint32_t)((v >> 5) % 2), (uint32_t)(v >> 32))
                                 : xorshift(rng);
                break;
        case 5: /* a block link, to another plausible block */
                ((uint64_t *)(a->base + blk))[1] =
                    (a->top - (1 + (xorshift(rng) % nmin)) * min) / ARENA_UNIT;
                break;
        case 6: /* a record slot's header or link */
                word = (uint64_t *)(a->base + a->rec_base +
                                    ((v >> 8) % (a->rec_slots_max ? a->rec_slots_max : 1)) *
                                        a->rec_stride);
                word[(v >> 4) % 2] = (v & 1) ? xorshift(rng) : blk_word(0, BLK_RFREE, 0);
                break;
        case 7: /* a counter */
                ((uint64_t *)&h->cls[c])[1 + (v >> 8) % 5] = xorshift(rng);
                h->rec_used ^= (v >> 20) & 1;
                break;
        case 8: /* the magic, or line 0 */
                if (v & 1)
                        h->magic = 0;
                else
                        h->top = xorshift(rng);
                break;
        case 9: /* the record list head */
                h->rec_head =
                    (v & 1) ? xorshift(rng)
                            : head_pack((uint32_t)((a->rec_base + ((v >> 8) % 64) * a->rec_stride) /
                                                   ARENA_UNIT),
                                        (uint32_t)r);
                break;
        default: /* 64 random bytes anywhere */
                word = (uint64_t *)(a->base + ((v % (a->size - 64)) & ~(uint64_t)7));
                for (int i = 0; i < 8; i++)
                        word[i] = xorshift(rng);
                break;
        }
}

static _Noreturn void scr_scribbler_child(struct seg *s, int proc, struct scr_ctl *k, double secs)
{
        eng_arena_t a;
        uintptr_t addr;
        if (seg_remap_in_child(s, proc, &a, &addr) != 0)
                _exit(2);
        __atomic_fetch_add(g_mapped, 1, __ATOMIC_SEQ_CST);
        /* Start once every worker has attached (a zeroed magic would refuse them). */
        for (double end = now_s() + 10;
             __atomic_load_n(g_mapped, __ATOMIC_SEQ_CST) < PROCS && now_s() < end;)
                sleep_us(1000);
        uint64_t rng = 0xbad5eed ^ (uint64_t)getpid(), writes = 0;
        for (double end = now_s() + secs; now_s() < end;) {
                for (int i = 0; i < 16; i++, writes++)
                        scr_scribble(&a, &rng);
                sleep_us(50 + (long)(xorshift(&rng) % 300));
        }
        k->res[proc * THREADS].writes = writes;
        __atomic_store_n(&k->stop, 1, __ATOMIC_RELEASE);
        _exit(0);
}

Test(lockfree, survives_a_scribbler_then_rebuilds, .timeout = 90, .fini = unlink_segment)
{
        double secs = (double)env_u64("ENG_ARENA_SCRIBBLE_SECS", SCR_SECS_DEFAULT);
        struct seg s;
        seg_create(&s, "scribble", ENG_ARENA_LOCKFREE, 16 * MIB, REC_BODY, 20);
        struct scr_ctl *k =
            mmap(NULL, sizeof *k, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_mapped =
            mmap(NULL, sizeof *g_mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert(k != MAP_FAILED && g_mapped != MAP_FAILED);
        memset(k, 0, sizeof *k);
        *g_mapped = 0;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k->deadline_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec +
                         (uint64_t)((secs + 15) * 1e9);
        pid_t pids[PROCS];
        int status[PROCS];
        double t0 = now_s();
        for (int p = 0; p < PROCS; p++) {
                pids[p] = fork();
                if (pids[p] == 0) {
                        if (p == PROCS - 1)
                                scr_scribbler_child(&s, p, k, secs);
                        scr_worker_child(&s, p, k);
                }
        }
        int late = unlink_then_wait(pids, status, secs + 40);
        double took = now_s() - t0;

        struct scr_res tot;
        memset(&tot, 0, sizeof tot);
        for (int i = 0; i < PROCS * THREADS; i++) {
                const struct scr_res *r = &k->res[i];
                tot.cycles += r->cycles;
                tot.allocs += r->allocs;
                tot.bulk_blocks += r->bulk_blocks;
                tot.enomem += r->enomem;
                tot.refused_frees += r->refused_frees;
                tot.mismatches += r->mismatches;
                tot.recs += r->recs;
                tot.reclaims += r->reclaims;
                tot.outside += r->outside;
                tot.anomalies += r->anomalies;
                tot.walk_skips += r->walk_skips;
                tot.writes += r->writes;
                tot.heals += r->heals;
        }
        eng_arena_stats_t st;
        eng_arena_stats(&s.a, &st);
        bool strict_before = eng_arena_check(&s.a, NULL, 0) == 0;
        eng_arena_rebuild_report_t rep;
        int rc = eng_arena_rebuild(&s.a, NULL, &rep);
        fprintf(
            stderr,
            "[scribble] %.1f s: %llu random writes; workers: %llu cycles, %llu allocs + %llu "
            "bulk, %llu records, %llu reclaims, ENOMEM %llu, refused frees %llu, overwritten "
            "blocks %llu, anomalies %llu (walks abandoned %llu superblocks), %llu heals, cuts "
            "%llu; strict check before the rebuild: %s; rebuild: freed %llu blocks, %llu slots, "
            "%llu bytes back to the gap\n",
            took, (unsigned long long)tot.writes, (unsigned long long)tot.cycles,
            (unsigned long long)tot.allocs, (unsigned long long)tot.bulk_blocks,
            (unsigned long long)tot.recs, (unsigned long long)tot.reclaims,
            (unsigned long long)tot.enomem, (unsigned long long)tot.refused_frees,
            (unsigned long long)tot.mismatches, (unsigned long long)tot.anomalies,
            (unsigned long long)tot.walk_skips, (unsigned long long)tot.heals,
            (unsigned long long)st.cuts, strict_before ? "passed" : "failed",
            (unsigned long long)rep.freed_blocks, (unsigned long long)rep.rec_freed,
            (unsigned long long)rep.gap_bytes);

        assert_children_ok(pids, status, PROCS, late, "scribble");
        cr_assert_eq(tot.outside, 0, "%llu offsets handed out outside the region",
                     (unsigned long long)tot.outside);
        cr_assert_gt(tot.allocs, 0, "the workers got work done");
        cr_assert_gt(tot.writes, 0, "the scribbler wrote");
        cr_assert_eq(rc, 0, "rebuild: %d", rc);
        ASSERT_ARENA_OK(&s.a, "rebuilt after the scribbler");
        eng_arena_stats(&s.a, &st);
        cr_assert_eq(st.buf_bottom, st.top, "every buffer byte back in the gap");
        cr_assert_eq(st.rec_top, st.rec_base, "every record slot back in the gap");
        cr_assert_eq(st.buf_used_blocks + st.buf_free_blocks + st.rec_used + st.rec_free, 0);
        eng_arena_t b;
        cr_assert_eq(eng_arena_attach(&b, s.base, s.size), 0, "attach after the rebuild");
        uint64_t x;
        cr_assert_eq(eng_arena_alloc(&b, eng_arena_max_alloc(&b), 1, &x), 0);
        cr_assert_eq(eng_arena_free(&b, x), 0);
        ASSERT_ARENA_OK(&b, "after one more allocation");
        munmap(k, sizeof *k);
        munmap(g_mapped, sizeof *g_mapped);
        munmap(s.base, s.size);
}

/*
 * Every test here wants both cores to itself (ctest runs this binary SERIAL): run them one
 * at a time whatever --jobs says.
 */
int main(int argc, char *argv[])
{
        struct criterion_test_set *tests = criterion_initialize();
        int result = 0;
        if (criterion_handle_args(argc, argv, true)) {
                criterion_options.jobs = 1;
                result = !criterion_run_all_tests(tests);
        }
        criterion_finalize(tests);
        return result;
}
