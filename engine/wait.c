/*
 * wait.c - the clock and futexes: what every wait in the engine is built from. The futexes are
 * shared (not FUTEX_PRIVATE_FLAG): the words live in the segment and are waited on and woken
 * across processes.
 */
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

uint64_t eng_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep while *word == expect, at most timeout_ns (< 0: no limit, callers never use that).
 * Returns 0 when woken or the value differed, -ETIMEDOUT, or -EINTR. */
int eng_futex_wait(uint32_t *word, uint32_t expect, int64_t timeout_ns)
{
        struct timespec ts, *tp = NULL;
        if (timeout_ns >= 0) {
                ts.tv_sec = timeout_ns / 1000000000;
                ts.tv_nsec = timeout_ns % 1000000000;
                tp = &ts;
        }
        long rc = syscall(SYS_futex, word, FUTEX_WAIT, expect, tp, NULL, 0);
        if (rc == 0 || errno == EAGAIN)
                return 0;
        return -errno;
}

void eng_futex_wake(uint32_t *word, int n)
{
        syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}
