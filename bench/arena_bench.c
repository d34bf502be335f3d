/*
 * arena_bench.c - alloc+free pairs per second, lock-free arena vs mutex arena.
 *
 * Every cell formats a fresh arena in a shared anonymous mapping (pre-faulted by the format)
 * and runs N threads of one process on it. Each thread keeps a window of WINDOW live blocks:
 * one step frees a random slot's block and allocates a new one into that slot (one pair),
 * and writes the first word of the payload. Sizes come from a table built once per thread,
 * the same for both kinds.
 *
 *   arena-bench [--seconds S]    S seconds per cell (default 1)
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "arena.h"
#include "engine.h"

#define WINDOW      8
#define SIZES       4096 /* entries in each thread's size table (power of two) */
#define ARENA_SIZE  (64ull << 20)
#define MAX_THREADS 2

enum workload { W_RANDOM, W_FIXED };

static const char *workload_name(enum workload w)
{
        return w == W_RANDOM ? "random 64B-256KiB" : "fixed 4000B";
}

struct thr {
        eng_arena_t a;
        enum workload w;
        uint32_t owner;
        uint64_t sizes[SIZES];
        uint64_t ops, enomem, errors;
        pthread_barrier_t *start;
        volatile int *stop;
        pthread_t tid;
};

static uint64_t xorshift(uint64_t *s)
{
        uint64_t x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return *s = x;
}

/* Log-uniform 64 B .. 256 KiB, or always 4000 B. */
static void make_sizes(struct thr *t, uint64_t seed)
{
        for (int i = 0; i < SIZES; i++) {
                if (t->w == W_FIXED) {
                        t->sizes[i] = 4000;
                        continue;
                }
                uint64_t r = xorshift(&seed);
                uint32_t e = 6 + (uint32_t)(r % 12); /* 2^6 .. 2^17 */
                uint64_t base = (uint64_t)1 << e;
                t->sizes[i] = base + (r >> 8) % base; /* [2^e, 2^(e+1)) */
        }
}

static void *worker(void *arg)
{
        struct thr *t = arg;
        uint64_t win[WINDOW] = {0};
        uint64_t rng = 0x9e3779b97f4a7c15ull * t->owner, ops = 0;
        unsigned si = 0;
        for (int i = 0; i < WINDOW; i++) {
                if (eng_arena_alloc(&t->a, t->sizes[si++ & (SIZES - 1)], t->owner, &win[i]) != 0)
                        win[i] = 0;
        }
        pthread_barrier_wait(t->start);
        while (!__atomic_load_n(t->stop, __ATOMIC_RELAXED)) {
                for (int k = 0; k < 256; k++) {
                        int i = (int)(xorshift(&rng) % WINDOW);
                        if (win[i] != 0 && eng_arena_free(&t->a, win[i]) != 0)
                                t->errors++;
                        int rc =
                            eng_arena_alloc(&t->a, t->sizes[si++ & (SIZES - 1)], t->owner, &win[i]);
                        if (rc != 0) {
                                win[i] = 0;
                                if (rc == -ENOMEM)
                                        t->enomem++;
                                else
                                        t->errors++;
                                continue;
                        }
                        *(volatile uint64_t *)eng_arena_ptr(&t->a, win[i], 8) = ops;
                        ops++;
                }
        }
        t->ops = ops;
        for (int i = 0; i < WINDOW; i++)
                if (win[i] != 0)
                        eng_arena_free(&t->a, win[i]);
        return NULL;
}

/* One cell: returns pairs per second (0 on failure). */
static double run_cell(eng_arena_kind_t kind, enum workload w, int nthreads, double seconds,
                       void *mem, struct thr *thr)
{
        eng_arena_t a;
        eng_arena_cfg_t cfg = {
            .kind = kind, .record_size = 256, .min_class_shift = 12, .max_class_shift = 20};
        int rc = eng_arena_format(&a, mem, ARENA_SIZE, &cfg);
        if (rc != 0) {
                fprintf(stderr, "format %s: %d\n", eng_arena_kind_name(kind), rc);
                return 0;
        }
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
        volatile int stop = 0;
        for (int i = 0; i < nthreads; i++) {
                struct thr *t = &thr[i];
                t->a = a;
                t->w = w;
                t->owner = (uint32_t)i + 1;
                t->ops = t->enomem = t->errors = 0;
                t->start = &start;
                t->stop = &stop;
                make_sizes(t, 0x1234567ull * (uint64_t)(i + 1));
                if (pthread_create(&t->tid, NULL, worker, t) != 0) {
                        fprintf(stderr, "pthread_create failed\n");
                        exit(1);
                }
        }
        pthread_barrier_wait(&start);
        uint64_t t0 = eng_now_ns();
        struct timespec ts = {.tv_sec = (time_t)seconds,
                              .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
        uint64_t ops = 0, enomem = 0, errors = 0;
        for (int i = 0; i < nthreads; i++) {
                pthread_join(thr[i].tid, NULL);
                ops += thr[i].ops;
                enomem += thr[i].enomem;
                errors += thr[i].errors;
        }
        double secs = (double)(eng_now_ns() - t0) / 1e9;
        pthread_barrier_destroy(&start);
        char why[128];
        if (errors != 0 || eng_arena_check(&a, why, sizeof why) != 0) {
                fprintf(stderr, "%s %s x%d: %llu errors; check: %s\n", eng_arena_kind_name(kind),
                        workload_name(w), nthreads, (unsigned long long)errors,
                        eng_arena_check(&a, why, sizeof why) ? why : "ok");
                return 0;
        }
        if (enomem != 0)
                fprintf(stderr, "note: %s %s x%d: %llu ENOMEM\n", eng_arena_kind_name(kind),
                        workload_name(w), nthreads, (unsigned long long)enomem);
        return (double)ops / secs;
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: arena-bench [--seconds S]\n"
                "  Alloc+free pairs per second of the lock-free and the mutex arena,\n"
                "  1 and %d threads of one process, random sizes (64 B..256 KiB,\n"
                "  log-uniform) and a fixed 4000 B; %d live blocks per thread.\n"
                "  --seconds S  time per cell (default 1)\n"
                "  --version    print the version and exit\n"
                "  --help       this text\n",
                MAX_THREADS, WINDOW);
}

int main(int argc, char **argv)
{
        double seconds = 1.0;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                        usage(stdout);
                        return 0;
                }
                if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
                        printf("arena-bench (shmengine) %s\n", eng_version());
                        return 0;
                }
                if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
                        char *end;
                        seconds = strtod(argv[++i], &end);
                        if (*end != '\0' || !(seconds > 0 && seconds <= 3600)) {
                                fprintf(stderr, "arena-bench: bad --seconds '%s'\n", argv[i]);
                                return 2;
                        }
                        continue;
                }
                fprintf(stderr, "arena-bench: unknown argument '%s'\n", argv[i]);
                usage(stderr);
                return 2;
        }
        void *mem =
            mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        struct thr *thr = calloc(MAX_THREADS, sizeof *thr);
        if (mem == MAP_FAILED || thr == NULL) {
                perror("arena-bench");
                return 1;
        }
        printf("arena-bench: %.2f s per cell, %d live blocks per thread, %llu MiB arena, "
               "classes 4 KiB..1 MiB\n",
               seconds, WINDOW, (unsigned long long)(ARENA_SIZE >> 20));
        printf("%-20s %7s %16s %14s %10s\n", "workload", "threads", "lockfree Mops/s",
               "mutex Mops/s", "lf/mutex");
        int rc = 0;
        const enum workload ws[] = {W_RANDOM, W_FIXED};
        for (size_t wi = 0; wi < sizeof ws / sizeof ws[0]; wi++) {
                for (int n = 1; n <= MAX_THREADS; n++) {
                        double lf = run_cell(ENG_ARENA_LOCKFREE, ws[wi], n, seconds, mem, thr);
                        double mx = run_cell(ENG_ARENA_MUTEX, ws[wi], n, seconds, mem, thr);
                        if (lf == 0 || mx == 0)
                                rc = 1;
                        printf("%-20s %7d %16.2f %14.2f %10.2f\n", workload_name(ws[wi]), n,
                               lf / 1e6, mx / 1e6, mx > 0 ? lf / mx : 0.0);
                        fflush(stdout);
                }
        }
        munmap(mem, ARENA_SIZE);
        free(thr);
        return rc;
}
