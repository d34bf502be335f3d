/*
 * xfer_tmp.c - the server's temporary files: created under a name no client can ask for
 * (".eng-<pid>-<n>.part"; client names starting with '.' are refused), locked while they are
 * written, and swept at start when a predecessor died and left them behind.
 *
 * The lock is an OFD write lock (fcntl F_OFD_SETLK) on the whole file. It belongs to the open
 * file description, so the kernel drops it when the writer closes the file or dies, in
 * whatever state it died, and it conflicts with every other open of the file, in this process
 * or any other. Nothing a peer writes anywhere can forge or clear it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "xfer_int.h"

/* A temporary file whose pid is alive but which nobody has locked or written for this long
 * is not being written: its pid was reused. */
#define TMP_ABANDONED_S 3600

/* Bounds the sweep of a directory that keeps growing under it. */
#define TMP_SWEEP_MAX_ENTRIES (1u << 22)

/* Process-wide: two servers of one process never pick the same name. */
static uint64_t tmp_seq;

int tmp_create(int dirfd, mode_t mode, char *name, size_t namelen, const char **what)
{
        uint64_t n = __atomic_add_fetch(&tmp_seq, 1, __ATOMIC_RELAXED);
        snprintf(name, namelen, ".eng-%d-%llu.part", (int)getpid(), (unsigned long long)n);
        int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0) {
                *what = "cannot create a file in the output directory";
                return -errno;
        }
        /* Between the create and this lock a sweep sees the file unlocked; it then leaves it
         * alone because our pid is alive (and the file is new). */
        struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(fd, F_OFD_SETLK, &l) != 0) {
                int e = errno;
                close(fd);
                unlinkat(dirfd, name, 0);
                *what = "cannot lock the temporary file in the output directory";
                return -e;
        }
        return fd;
}

/* A decimal number as %d / %llu print it: no sign, no leading zero, at most max. */
static bool parse_dec(const char **sp, uint64_t max, uint64_t *v)
{
        const char *s = *sp;
        if (*s < '1' || *s > '9')
                return false;
        uint64_t x = 0;
        for (; *s >= '0' && *s <= '9'; s++) {
                unsigned d = (unsigned)(*s - '0');
                if (x > (max - d) / 10)
                        return false;
                x = x * 10 + d;
        }
        *sp = s;
        *v = x;
        return true;
}

/* The whole name is ".eng-<pid>-<n>.part", exactly as tmp_create writes it. */
static bool tmp_parse(const char *s, pid_t *pid)
{
        uint64_t p, n;
        if (strncmp(s, ".eng-", 5) != 0)
                return false;
        s += 5;
        if (!parse_dec(&s, INT_MAX, &p) || *s++ != '-' || !parse_dec(&s, UINT64_MAX, &n))
                return false;
        if (strcmp(s, ".part") != 0)
                return false;
        *pid = (pid_t)p;
        return true;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
        return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Is dirfd/name (named by pid) a temporary file nobody will ever finish? */
static bool tmp_stale(int dirfd, const char *name, pid_t pid, bool own_pid_is_stale)
{
        struct stat before, st;
        if (fstatat(dirfd, name, &before, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(before.st_mode))
                return false; /* a symlink, a directory, a fifo...: not ours */
        /* Opened only to ask about its lock: O_NOFOLLOW in case it became a symlink since,
         * O_NONBLOCK in case it became a fifo. Write access is not needed to test a lock. */
        int fl = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
        int fd = openat(dirfd, name, O_RDONLY | fl);
        if (fd < 0 && errno == EACCES)
                fd = openat(dirfd, name, O_WRONLY | fl); /* a file mode without read */
        if (fd < 0)
                return false;
        bool stale = false;
        struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        /* F_OFD_GETLK asks whether the lock could be taken without taking it: a sweep never
         * makes a live writer's own F_OFD_SETLK fail. */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && same_file(&before, &st) &&
            fcntl(fd, F_OFD_GETLK, &l) == 0 && l.l_type == F_UNLCK) {
                bool dead;
                if (pid == getpid())
                        dead = own_pid_is_stale; /* not ours: we just started */
                else
                        dead = kill(pid, 0) != 0 && errno == ESRCH;
                struct timespec now;
                clock_gettime(CLOCK_REALTIME, &now);
                stale = dead || now.tv_sec - st.st_mtim.tv_sec > TMP_ABANDONED_S;
        }
        /* Still the file we looked at (not one created since under the same name)? */
        if (stale &&
            (fstatat(dirfd, name, &before, AT_SYMLINK_NOFOLLOW) != 0 || !same_file(&before, &st)))
                stale = false;
        close(fd);
        return stale;
}

int64_t tmp_sweep(int dirfd, bool own_pid_is_stale)
{
        int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (d == NULL) {
                int e = errno;
                close(fd);
                return -e;
        }
        int64_t removed = 0;
        struct dirent *e;
        for (uint32_t seen = 0; seen < TMP_SWEEP_MAX_ENTRIES && (e = readdir(d)) != NULL; seen++) {
                pid_t pid;
                if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)
                        continue;
                if (!tmp_parse(e->d_name, &pid) ||
                    !tmp_stale(dirfd, e->d_name, pid, own_pid_is_stale))
                        continue;
                if (unlinkat(dirfd, e->d_name, 0) == 0)
                        removed++;
        }
        closedir(d);
        return removed;
}
