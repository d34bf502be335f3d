/*
 * engine_util.h - helpers the engine test binaries share (test_engine, test_engine_crash,
 * test_engine_stress): clocks, gated children, per-process segment names, shared memory.
 * Only the parent asserts; children leave with _exit.
 */
#ifndef ENGINE_UTIL_H
#define ENGINE_UTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* The transport a suite's servers use unless a test picks one: ctest runs test_engine and
 * test_engine_crash once per transport (ENG_TEST_TRANSPORT=mutex selects the baseline). */
static inline eng_transport_t test_transport(void)
{
        const char *t = getenv("ENG_TEST_TRANSPORT");
        return t && strcmp(t, "mutex") == 0 ? ENG_TRANSPORT_MUTEX : ENG_TRANSPORT_LOCKFREE;
}

static inline void sleep_ms(int ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000l};
        nanosleep(&ts, NULL);
}

/*
 * Children are forked before the server's threads exist (then released through a pipe once
 * the server is up): a child forked from a process with running threads may inherit a lock
 * another thread held at fork time (ASan's allocator is not fork-safe). If the parent dies
 * first, the child reads EOF and exits.
 */
static inline pid_t fork_gated(int *gate)
{
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                close(p[1]);
                char b;
                ssize_t n;
                while ((n = read(p[0], &b, 1)) < 0 && errno == EINTR)
                        ;
                close(p[0]);
                if (n != 1)
                        _exit(99);
                return 0;
        }
        close(p[0]);
        *gate = p[1];
        return pid;
}

static inline void open_gate(int gate)
{
        char b = 'g';
        if (write(gate, &b, 1) != 1)
                cr_assert_fail("cannot release a child");
        close(gate);
}

/* Segments of this test process, unlinked at exit even if an assertion ends the test early
 * (children leave with _exit and never run this). */
static char g_names[16][64];
static int g_nnames;

static inline void unlink_names(void)
{
        for (int i = 0; i < g_nnames; i++)
                shm_unlink(g_names[i]);
}

static inline void mkname(char *buf, size_t n, const char *tag)
{
        snprintf(buf, n, "/engt-%d-%s", (int)getpid(), tag);
        if (g_nnames == 0)
                atexit(unlink_names);
        if (g_nnames < 16)
                snprintf(g_names[g_nnames++], sizeof(g_names[0]), "%s", buf);
}

static inline void *shared_mem(size_t bytes)
{
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(p, MAP_FAILED);
        return p;
}

#endif
