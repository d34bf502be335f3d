/*
 * guard.c - a mapped segment outlives a shrink.
 *
 * Any process of the user may ftruncate the shm object. Every access of ours past the new end
 * then raises SIGBUS, which would kill the server (or an honest client). A process that serves
 * or attaches a segment installs one SIGBUS handler: a fault inside a segment it maps puts the
 * object's size back (ftruncate) and
 * reserves its pages again (fallocate); the faulting access then runs again and finds a page
 * (zeroed: what was there is lost, and everything the server reads from the segment is
 * validated anyway). If the pages cannot be had (/dev/shm full), a private zero page is mapped
 * over the faulting one so the access completes, and the segment is marked broken: the
 * server's owner sees eng_server_failed() and stops. A fault anywhere else goes to the handler
 * that was installed before ours (or kills the process as it would have).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define GUARD_MAX 64 /* segments mapped at once by one process (more go unguarded) */

/* Written under guard_mu, read by the handler without a lock: base is published last
 * (release) and cleared first, so the handler never sees a half-filled slot. */
static struct guard {
        uint64_t base;
        uint64_t size;
        int fd;
        uint32_t *broken;
        uint32_t *restored;
} guards[GUARD_MAX];

static pthread_mutex_t guard_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction guard_prev;
static bool guard_installed;

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
        uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
        for (int i = 0; i < GUARD_MAX; i++) {
                uint64_t base = eng_load_acquire_u64(&guards[i].base);
                if (base == 0 || addr < base || addr - base >= guards[i].size)
                        continue;
                int fd = guards[i].fd;
                off_t size = (off_t)guards[i].size;
                struct stat st;
                int saved = errno;
                if (fstat(fd, &st) == 0 && st.st_size < size)
                        (void)!ftruncate(fd, size);
                bool ok = fallocate(fd, 0, 0, size) == 0;
                if (ok)
                        eng_faa_u32(guards[i].restored, 1); /* the owner logs it */
                if (!ok) {
                        uint64_t page = addr & ~(uint64_t)4095;
                        mmap((void *)(uintptr_t)page, 4096, PROT_READ | PROT_WRITE,
                             MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                        eng_store_release_u32(guards[i].broken, 1);
                }
                errno = saved;
                return;
        }
        if (guard_prev.sa_flags & SA_SIGINFO) {
                guard_prev.sa_sigaction(sig, si, uc);
        } else if (guard_prev.sa_handler != SIG_DFL && guard_prev.sa_handler != SIG_IGN) {
                guard_prev.sa_handler(sig);
        } else {
                /* What would have happened without us: the access faults again and the
                 * default action ends the process. */
                signal(SIGBUS, SIG_DFL);
        }
}

void eng_guard_add(void *base, uint64_t size, int fd, uint32_t *broken, uint32_t *restored)
{
        pthread_mutex_lock(&guard_mu);
        if (!guard_installed) {
                struct sigaction sa;
                memset(&sa, 0, sizeof(sa));
                sa.sa_sigaction = guard_handler;
                sa.sa_flags = SA_SIGINFO | SA_NODEFER;
                sigemptyset(&sa.sa_mask);
                if (sigaction(SIGBUS, &sa, &guard_prev) == 0)
                        guard_installed = true;
        }
        for (int i = 0; i < GUARD_MAX; i++) {
                if (guards[i].base == 0) {
                        guards[i].size = size;
                        guards[i].fd = fd;
                        guards[i].broken = broken;
                        guards[i].restored = restored;
                        eng_store_release_u64(&guards[i].base, (uint64_t)(uintptr_t)base);
                        break;
                }
        }
        pthread_mutex_unlock(&guard_mu);
}

void eng_guard_remove(void *base)
{
        pthread_mutex_lock(&guard_mu);
        for (int i = 0; i < GUARD_MAX; i++)
                if (guards[i].base == (uint64_t)(uintptr_t)base)
                        eng_store_release_u64(&guards[i].base, 0);
        pthread_mutex_unlock(&guard_mu);
}
