/*
 * seg.c - the segment: create (with stale-segment recovery and who owns a name), attach (with
 * validation of everything read from it), the locks the kernel holds on the object (server,
 * bootstrap, claim), and the registry of segments this process maps.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---- segment ------------------------------------------------------------------------ */

static bool name_ok(const char *name)
{
        size_t n = strlen(name);
        return n >= 2 && n < 200 && name[0] == '/' && strchr(name + 1, '/') == NULL;
}

struct eng_rec *seg_rec(const struct eng_seg *sg, uint32_t idx)
{
        /* Bounded by the private geometry, not the shared record top a writer can move: the
         * slot is inside the region whatever the segment says (what is in it is checked). */
        if (idx >= sg->max_streams || idx >= eng_arena_rec_max_slots(&sg->arena))
                return NULL;
        return (struct eng_rec *)(sg->arena.base + eng_arena_rec_offset(&sg->arena, idx));
}

/* ---- locks the kernel holds --------------------------------------------------------- */

/* One byte at off. OFD commands want l_pid 0 on the way in; F_*GETLK fill *out. */
static int lk(int fd, int cmd, short type, off_t off, struct flock *out)
{
        struct flock f = {.l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
        if (fcntl(fd, cmd, &f) != 0)
                return -errno;
        if (out)
                *out = f;
        return 0;
}

int seg_server_alive(const struct eng_seg *sg)
{
        struct flock f = {0};
        int rc = lk(sg->fd, F_OFD_GETLK, F_WRLCK, SEG_LOCK_SERVER, &f);
        return rc != 0 ? rc : f.l_type != F_UNLCK;
}

int seg_boot_held(const struct eng_seg *sg)
{
        struct flock f = {0};
        int rc = lk(sg->fd, F_OFD_GETLK, F_WRLCK, SEG_LOCK_BOOT, &f);
        return rc != 0 ? rc : f.l_type != F_UNLCK;
}

int seg_boot_trylock(struct eng_seg *sg)
{
        int rc = lk(sg->fd, F_OFD_SETLK, F_WRLCK, SEG_LOCK_BOOT, NULL);
        /* A claim may follow, and the holder may die before its claim wakes the server (the
         * kernel lets go of the lock, nobody tells the server). If the control thread sleeps
         * without a timeout, wake it now: it then looks every tick for a while (CTL_GRACE_NS)
         * and sees the record leave the offer whatever becomes of us. */
        if (rc == 0 && eng_load_relaxed_u32(&sg->hdr->ctl_asleep) == 1)
                eng_ctl_nudge(sg->hdr);
        return rc == -EACCES ? -EAGAIN : rc;
}

#define BOOT_SLICE_NS (2 * 1000000ll) /* a waiter looks again at least this often */

int seg_boot_lock(struct eng_seg *sg, uint64_t deadline, int (*check)(void *), void *arg)
{
        struct eng_seg_hdr *h = sg->hdr;
        for (;;) {
                int rc = seg_boot_trylock(sg);
                if (rc != -EAGAIN)
                        return rc;
                /* Announce (locked add), read the word, try once more, sleep on the word. The
                 * holder lets go and then, after a full fence, reads the count: either our try
                 * comes after its release (and succeeds), or our add came before its read (and it
                 * bumps the word, so our sleep returns at once). The count is a hint any writer
                 * can spoil: a slice bounds what that costs. */
                eng_faa_u32(&h->boot_waiters, 1);
                uint32_t seq = eng_load_acquire_u32(&h->boot_seq);
                rc = seg_boot_trylock(sg);
                if (rc == -EAGAIN) {
                        uint64_t now = eng_now_ns();
                        if (now >= deadline) {
                                rc = -ETIMEDOUT;
                        } else {
                                int64_t left = (int64_t)(deadline - now);
                                eng_futex_wait(&h->boot_seq, seq,
                                               left < BOOT_SLICE_NS ? left : BOOT_SLICE_NS);
                        }
                }
                eng_faa_u32(&h->boot_waiters, (uint32_t)-1);
                if (rc != -EAGAIN)
                        return rc;
                if (check != NULL && (rc = check(arg)) != 0)
                        return rc;
        }
}

void seg_boot_unlock(struct eng_seg *sg)
{
        struct eng_seg_hdr *h = sg->hdr;
        lk(sg->fd, F_OFD_SETLK, F_UNLCK, SEG_LOCK_BOOT, NULL);
        /* The release (a system call) before the read of the count: see seg_boot_lock. */
        eng_fence_full();
        if (eng_load_relaxed_u32(&h->boot_waiters) != 0) {
                eng_faa_u32(&h->boot_seq, 1);
                eng_futex_wake(&h->boot_seq, 1);
        }
}

int seg_claim_lock(struct eng_seg *sg, uint32_t idx, uint64_t guid0)
{
        int rc = lk(sg->fd, F_SETLK, F_WRLCK, seg_claim_byte(idx, guid0), NULL);
        return rc == -EACCES ? -EAGAIN : rc;
}

void seg_claim_unlock(struct eng_seg *sg, uint32_t idx, uint64_t guid0)
{
        lk(sg->fd, F_SETLK, F_UNLCK, seg_claim_byte(idx, guid0), NULL);
}

pid_t seg_claim_holder(const struct eng_seg *sg, uint32_t idx, uint64_t guid0)
{
        /* An OFD query: it sees POSIX locks of every process, this one included (an in-process
         * client of an in-process server), and reports their owner's pid; an OFD lock reports
         * -1. */
        struct flock f = {0};
        if (lk(sg->fd, F_OFD_GETLK, F_WRLCK, seg_claim_byte(idx, guid0), &f) != 0)
                return -1;
        if (f.l_type == F_UNLCK)
                return 0;
        return f.l_pid > 0 ? f.l_pid : -1;
}

/*
 * Every segment mapped in this process, for two reasons.
 *
 * 1. A POSIX lock (a client's claim lock) belongs to the process and is dropped by the close
 *    of ANY descriptor of the same object. So no descriptor of an object that some segment of
 *    this process still maps is closed: it is parked and closed with the last one.
 *
 * 2. The serving process holds SEG_LOCK_SERVER on its descriptor. An OFD lock belongs to the
 *    open file description, which fork shares, and a mapping holds that description too: a
 *    child of a server process would keep the name after the server died. So the server's
 *    mapping is not inherited (MADV_DONTFORK) and its descriptor is closed in the child at
 *    fork (from the moment the child first runs: until then its copy of the descriptor table
 *    still refers to it). A child that wants the segment attaches like any client.
 */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static struct eng_seg *reg_head;
static struct parked {
        dev_t dev;
        ino_t ino;
        int fd;
} * parked;
static size_t nparked, capparked;

static void reg_prepare(void)
{
        pthread_mutex_lock(&reg_mu);
}

static void reg_parent(void)
{
        pthread_mutex_unlock(&reg_mu);
}

static void reg_child(void)
{
        for (struct eng_seg *s = reg_head; s != NULL; s = s->reg_next) {
                if (s->serving && s->fd >= 0) {
                        close(s->fd);
                        s->fd = -1;
                }
        }
        pthread_mutex_unlock(&reg_mu);
}

static void reg_init(void)
{
        pthread_atfork(reg_prepare, reg_parent, reg_child);
}

static bool reg_maps_locked(dev_t dev, ino_t ino, const struct eng_seg *except)
{
        for (struct eng_seg *s = reg_head; s != NULL; s = s->reg_next)
                if (s != except && s->dev == dev && s->ino == ino)
                        return true;
        return false;
}

/* Park fd (reg_mu held); if memory runs out it is closed after all (a claim may then be
 * refused by the server: the client sees its stream ended, never corruption). */
static void park_locked(int fd, dev_t dev, ino_t ino)
{
        if (nparked == capparked) {
                size_t cap = capparked ? 2 * capparked : 8;
                struct parked *p = realloc(parked, cap * sizeof(*p));
                if (p == NULL) {
                        close(fd);
                        return;
                }
                parked = p;
                capparked = cap;
        }
        parked[nparked++] = (struct parked){.dev = dev, .ino = ino, .fd = fd};
}

static void reg_add(struct eng_seg *sg)
{
        pthread_once(&reg_once, reg_init);
        pthread_mutex_lock(&reg_mu);
        sg->reg_next = reg_head;
        reg_head = sg;
        pthread_mutex_unlock(&reg_mu);
}

/* Take sg out of the registry and close (or park) its descriptor. */
static void reg_remove_close(struct eng_seg *sg)
{
        pthread_once(&reg_once, reg_init);
        pthread_mutex_lock(&reg_mu);
        for (struct eng_seg **p = &reg_head; *p != NULL; p = &(*p)->reg_next) {
                if (*p == sg) {
                        *p = sg->reg_next;
                        break;
                }
        }
        sg->reg_next = NULL;
        if (sg->fd >= 0) {
                /* A server lets go of its name now, even if its descriptor is parked for a
                 * client of this process (whose lock check must then say "gone"). */
                if (sg->serving)
                        lk(sg->fd, F_OFD_SETLK, F_UNLCK, SEG_LOCK_SERVER, NULL);
                if (reg_maps_locked(sg->dev, sg->ino, NULL)) {
                        park_locked(sg->fd, sg->dev, sg->ino);
                } else {
                        close(sg->fd);
                        for (size_t i = 0; i < nparked;) {
                                if (parked[i].dev == sg->dev && parked[i].ino == sg->ino) {
                                        close(parked[i].fd);
                                        parked[i] = parked[--nparked];
                                } else {
                                        i++;
                                }
                        }
                }
        }
        sg->fd = -1;
        pthread_mutex_unlock(&reg_mu);
}

void seg_fd_close(int fd)
{
        if (fd < 0)
                return;
        struct stat st;
        pthread_once(&reg_once, reg_init);
        pthread_mutex_lock(&reg_mu);
        if (fstat(fd, &st) == 0 && reg_maps_locked(st.st_dev, st.st_ino, NULL))
                park_locked(fd, st.st_dev, st.st_ino);
        else
                close(fd);
        pthread_mutex_unlock(&reg_mu);
}

/* ---- who owns a name ---------------------------------------------------------------- */

static const char *user_name(uid_t uid, char *buf, size_t len)
{
        struct passwd pw, *res = NULL;
        char tmp[1024];
        if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
                snprintf(buf, len, "%s", res->pw_name);
        else
                snprintf(buf, len, "uid %u", (unsigned)uid);
        return buf;
}

/*
 * An existing object under our name. Ours and held by a server (SEG_LOCK_SERVER): refuse.
 * Ours and not held: its server died; remove it (a new epoch replaces it). Another user's: as
 * root, remove it (a squatter must not lock the real server out); otherwise refuse, naming
 * the owner. Only a process that could take the lock (or root) ever unlinks the name.
 */
static int seg_check_stale(const char *name, uid_t *evicted)
{
        int fd = shm_open(name, O_RDWR, 0);
        struct stat st;
        char who[64];
        if (fd < 0) {
                if (errno == ENOENT)
                        return 0;
                int rc = -errno;
                char path[300];
                snprintf(path, sizeof(path), "/dev/shm%s", name);
                if (errno == EACCES && stat(path, &st) == 0)
                        eng_set_err("segment %s belongs to %s and cannot be opened: choose another "
                                    "name, or have root remove it",
                                    name, user_name(st.st_uid, who, sizeof(who)));
                else
                        eng_set_err("segment %s exists and cannot be opened: %s", name,
                                    strerror(-rc));
                return rc;
        }
        if (fstat(fd, &st) != 0) {
                int rc = -errno;
                seg_fd_close(fd);
                return rc;
        }
        if (st.st_uid != geteuid()) {
                if (geteuid() == 0) {
                        /* Root's server is the real one: the other user's object goes (its
                         * processes keep their mapping of it; new clients get ours). */
                        *evicted = st.st_uid;
                        shm_unlink(name);
                        seg_fd_close(fd);
                        return 0;
                }
                eng_set_err("segment %s belongs to %s, not to you: choose another name, or have "
                            "root remove it",
                            name, user_name(st.st_uid, who, sizeof(who)));
                seg_fd_close(fd);
                return -EACCES;
        }
        if (lk(fd, F_OFD_SETLK, F_WRLCK, SEG_LOCK_SERVER, NULL) != 0) {
                pid_t pid = 0;
                if ((uint64_t)st.st_size >= sizeof(struct eng_seg_hdr)) {
                        struct eng_seg_hdr *h =
                            mmap(NULL, sizeof(*h), PROT_READ, MAP_SHARED, fd, 0);
                        if (h != MAP_FAILED) {
                                if (eng_load_acquire_u32(&h->magic) == SEG_MAGIC)
                                        pid = h->server_pid;
                                munmap(h, sizeof(*h));
                        }
                }
                if (pid > 0)
                        eng_set_err("segment %s is served by a live server (pid %d)", name,
                                    (int)pid);
                else
                        eng_set_err("segment %s is held by a live server (still starting)", name);
                seg_fd_close(fd);
                return -EADDRINUSE;
        }
        /* Nobody serves it: its server died (a new epoch replaces it). Unlink while we hold the
         * lock; closing the descriptor lets go of it. */
        shm_unlink(name);
        seg_fd_close(fd);
        return 0;
}

/* Is the object open on fd still the one under name? */
static bool seg_is_named(int fd, const char *name)
{
        struct stat a, b;
        int nfd = shm_open(name, O_RDONLY, 0);
        if (nfd < 0)
                return false;
        bool same = fstat(fd, &a) == 0 && fstat(nfd, &b) == 0 && a.st_dev == b.st_dev &&
                    a.st_ino == b.st_ino;
        seg_fd_close(nfd);
        return same;
}

/* Create the object under name, holding its server lock. Another server starting at the same
 * moment may remove a fresh object in the instant before we lock it: then try again. */
static int seg_open_locked(const char *name, mode_t mode, uid_t *evicted)
{
        for (int tries = 0;; tries++) {
                int rc = seg_check_stale(name, evicted);
                if (rc != 0)
                        return rc;
                int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, mode);
                if (fd < 0) {
                        if (errno != EEXIST) {
                                rc = -errno;
                                eng_set_err("shm_open(%s): %s", name, strerror(errno));
                                return rc;
                        }
                } else if (lk(fd, F_OFD_SETLK, F_WRLCK, SEG_LOCK_SERVER, NULL) == 0 &&
                           seg_is_named(fd, name)) {
                        return fd;
                } else {
                        close(fd);
                }
                if (tries == 50) {
                        eng_set_err("segment %s: other servers keep creating it", name);
                        return -EADDRINUSE;
                }
                usleep(1000);
        }
}

/* A fresh struct eng_seg for name: 0, or -EINVAL with a message if the name is not ours. */
static int seg_begin(struct eng_seg *sg, const char *name)
{
        memset(sg, 0, sizeof(*sg));
        sg->fd = -1;
        sg->evicted_uid = (uid_t)-1;
        if (!name_ok(name)) {
                eng_set_err("bad segment name '%s' (want /name, no other slash)", name);
                return -EINVAL;
        }
        return 0;
}

int seg_create(struct eng_seg *sg, const char *name, uint64_t size, mode_t mode,
               eng_transport_t transport, uint32_t depth, uint32_t max_streams, uint32_t min_shift,
               uint32_t max_shift)
{
        if (seg_begin(sg, name) != 0)
                return -EINVAL;
        if (depth < 2 || depth > 65536 || (depth & (depth - 1))) {
                eng_set_err("ring depth %u is not a power of two in 2..65536", depth);
                return -EINVAL;
        }
        if (transport != ENG_TRANSPORT_LOCKFREE && transport != ENG_TRANSPORT_MUTEX) {
                eng_set_err("unknown transport %d", (int)transport);
                return -EINVAL;
        }
        int fd = seg_open_locked(name, mode, &sg->evicted_uid);
        if (fd < 0)
                return fd;
        int rc;
        fchmod(fd, mode); /* the umask must not widen or narrow what was configured */
        if (ftruncate(fd, (off_t)size) != 0) {
                rc = -errno;
                eng_set_err("ftruncate(%s, %llu): %s", name, (unsigned long long)size,
                            strerror(errno));
                goto fail;
        }
        /* tmpfs reserves nothing at ftruncate: touching a page it cannot supply raises SIGBUS
         * (in us while formatting, or in a client later). Reserve every page now, or say why
         * not. */
        if ((rc = posix_fallocate(fd, 0, (off_t)size)) != 0) {
                struct statvfs vs;
                unsigned long long avail = 0;
                if (statvfs("/dev/shm", &vs) == 0)
                        avail = (unsigned long long)vs.f_bavail * vs.f_frsize;
                eng_set_err("cannot reserve %llu bytes for segment %s in /dev/shm (%llu bytes "
                            "free there): %s",
                            (unsigned long long)size, name, avail, strerror(rc));
                rc = -rc;
                goto fail;
        }
        void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                rc = -errno;
                eng_set_err("mmap(%s): %s", name, strerror(errno));
                goto fail;
        }
        madvise(base, size, MADV_DONTFORK); /* see the registry above */
        eng_guard_add(base, size, fd, &sg->broken, &sg->restored);
        struct stat st;
        fstat(fd, &st);
        sg->fd = fd;
        sg->dev = st.st_dev;
        sg->ino = st.st_ino;
        sg->serving = true;
        sg->base = base;
        sg->size = size;
        sg->hdr = base;
        snprintf(sg->name, sizeof(sg->name), "%s", name);

        uint64_t rb = ENG_ARENA_HDR_BYTES + ((rec_bytes(depth) + 63) & ~63ull);
        uint64_t fit = size / rb;
        if (max_streams == 0 || max_streams > fit)
                max_streams = fit > 65536 ? 65536 : (uint32_t)fit;
        if (max_streams < 2) {
                rc = -ENOSPC;
                eng_set_err("segment of %llu bytes cannot hold two stream records",
                            (unsigned long long)size);
                goto fail_map;
        }
        uint32_t words = (max_streams + 63) / 64;
        uint64_t hdr_bytes = (sizeof(struct eng_seg_hdr) + 63) & ~63ull;
        uint64_t arena_off =
            (hdr_bytes + (words + seg_summary_words(words)) * 8ull + 4095) & ~4095ull;
        if (arena_off >= size) {
                rc = -ENOSPC;
                eng_set_err("segment too small");
                goto fail_map;
        }
        memset(base, 0, arena_off);
        eng_arena_cfg_t acfg = {.kind = transport == ENG_TRANSPORT_MUTEX ? ENG_ARENA_MUTEX
                                                                         : ENG_ARENA_LOCKFREE,
                                .record_size = (uint32_t)rec_bytes(depth),
                                .min_class_shift = min_shift,
                                .max_class_shift = max_shift};
        /* Formatting zeroes (so pre-faults) the whole arena. */
        rc = eng_arena_format(&sg->arena, sg->base + arena_off, size - arena_off, &acfg);
        if (rc != 0) {
                eng_set_err("cannot format an arena of %llu bytes (blocks 2^%u..2^%u): %s",
                            (unsigned long long)(size - arena_off), min_shift, max_shift,
                            strerror(-rc));
                goto fail_map;
        }
        struct eng_seg_hdr *h = sg->hdr;
        h->version = SEG_VERSION;
        h->transport = transport;
        h->ring_depth = depth;
        h->size = size;
        h->arena_off = arena_off;
        if (getrandom(&h->epoch, sizeof(h->epoch), 0) != sizeof(h->epoch))
                h->epoch = eng_now_ns();
        h->server_pid = getpid();
        h->max_streams = max_streams;
        h->bitmap_words = words;
        h->hdr_bytes = (uint32_t)hdr_bytes;
        h->asym = transport == ENG_TRANSPORT_LOCKFREE && eng_asym_supported();
        eng_store_release_u32(&h->state, SRV_STARTING);
        sg->bitmap = (uint64_t *)(sg->base + hdr_bytes);
        sg->summary = sg->bitmap + words;
        sg->depth = depth;
        sg->max_streams = max_streams;
        memcpy(&sg->line0, h, offsetof(struct eng_seg_hdr, state));
        sg->line0.magic = SEG_MAGIC;
        /* Everything above is visible before the magic: attachers read the magic first. */
        eng_store_release_u32(&h->magic, SEG_MAGIC);
        reg_add(sg);
        return 0;
fail_map:
        eng_guard_remove(base);
        munmap(base, size);
        sg->base = NULL;
fail:
        close(fd);
        sg->fd = -1;
        shm_unlink(name);
        return rc;
}

/* Validate a copy of line 0 (read once) against the object's size. 0 or -errno + message. */
static int check_line0(const struct eng_seg_hdr *c, uint64_t size, const char *name)
{
        if (c->magic != SEG_MAGIC) {
                eng_set_err(
                    "segment %s: bad magic 0x%08x (not an engine segment, or still starting)", name,
                    c->magic);
                return -EPROTO;
        }
        if (c->version != SEG_VERSION) {
                eng_set_err("segment %s: layout version %u, this program speaks %u", name,
                            c->version, SEG_VERSION);
                return -EPROTONOSUPPORT;
        }
        if (c->size != size) {
                eng_set_err("segment %s: header says %llu bytes, the object has %llu", name,
                            (unsigned long long)c->size, (unsigned long long)size);
                return -EUCLEAN;
        }
        if (c->ring_depth < 2 || c->ring_depth > 65536 || (c->ring_depth & (c->ring_depth - 1)) ||
            c->max_streams == 0 || c->max_streams > 65536 ||
            c->bitmap_words != (c->max_streams + 63) / 64 || c->arena_off >= size ||
            (c->arena_off & 4095) != 0 || c->hdr_bytes < sizeof(struct eng_seg_hdr) ||
            c->hdr_bytes % 64 != 0 ||
            c->arena_off <
                c->hdr_bytes + (c->bitmap_words + seg_summary_words(c->bitmap_words)) * 8ull) {
                eng_set_err("segment %s: inconsistent header", name);
                return -EUCLEAN;
        }
        if (c->transport != ENG_TRANSPORT_LOCKFREE && c->transport != ENG_TRANSPORT_MUTEX) {
                eng_set_err("segment %s: transport %u is not supported", name, c->transport);
                return -EPROTONOSUPPORT;
        }
        return 0;
}

/* Whose object is it, and who else could read or write it? */
static int check_owner(const struct stat *st, const struct seg_trust *t, const char *name)
{
        uid_t me = geteuid();
        char who[64];
        if (st->st_uid != me && st->st_uid != 0 && st->st_uid != t->owner) {
                eng_set_err("segment %s belongs to %s, not to you, root or the configured owner: "
                            "refusing to use it (another user's server could read your data)",
                            name, user_name(st->st_uid, who, sizeof(who)));
                return -EACCES;
        }
        mode_t allowed = t->mode ? t->mode : 0600;
        mode_t extra = st->st_mode & 0777 & ~allowed;
        if (extra != 0) {
                eng_set_err("segment %s has mode %04o: %s can %s it (allowed: %04o); refusing to "
                            "use it",
                            name, (unsigned)(st->st_mode & 0777),
                            extra & 0007 ? "every user" : "its group",
                            extra & 0022 ? "write" : "read", (unsigned)allowed);
                return -EACCES;
        }
        return 0;
}

static int trust_sleep(const struct seg_trust *t, long ms)
{
        if (t->interrupt != NULL && *t->interrupt)
                return -EINTR;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
        nanosleep(&ts, NULL);
        return t->interrupt != NULL && *t->interrupt ? -EINTR : 0;
}

/* One try. 0: attached; -EAGAIN: not ready yet, a server holds it (or may be creating it). */
static int attach_once(struct eng_seg *sg, const char *name, const struct seg_trust *t, bool *fresh)
{
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0) {
                int rc = -errno;
                char path[300], who[64];
                struct stat st;
                snprintf(path, sizeof(path), "/dev/shm%s", name);
                if (errno == ENOENT)
                        eng_set_err("no server: segment %s does not exist", name);
                else if (errno == EACCES && stat(path, &st) == 0)
                        eng_set_err("cannot open segment %s: %s (it belongs to %s, mode %04o)",
                                    name, strerror(EACCES), user_name(st.st_uid, who, sizeof(who)),
                                    (unsigned)(st.st_mode & 07777));
                else
                        eng_set_err("cannot open segment %s: %s", name, strerror(errno));
                return rc == -ENOENT ? -ECONNREFUSED : rc;
        }
        struct stat st;
        int rc = fstat(fd, &st) != 0 ? -errno : check_owner(&st, t, name);
        if (rc != 0) {
                seg_fd_close(fd);
                return rc;
        }
        uint64_t size = (uint64_t)st.st_size;
        struct eng_seg_hdr c;
        void *base = MAP_FAILED;
        if (size < 4096) {
                eng_set_err("segment %s is too small to be ours (%llu bytes)", name,
                            (unsigned long long)size);
                rc = -EPROTO;
        } else if ((base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) ==
                   MAP_FAILED) {
                rc = -errno;
                eng_set_err("mmap(%s): %s", name, strerror(errno));
        } else {
                /* From here on a shrink by another process must not kill us (SIGBUS). */
                eng_guard_add(base, size, fd, &sg->broken, &sg->restored);
                /* Line 0 is read once: magic first (acquire), then the rest is copied, and
                 * only the copy is checked and used. */
                struct eng_seg_hdr *h = base;
                memset(&c, 0, sizeof(c));
                c.magic = eng_load_acquire_u32(&h->magic);
                memcpy((char *)&c + sizeof(c.magic), (char *)h + sizeof(c.magic),
                       offsetof(struct eng_seg_hdr, state) - sizeof(c.magic));
                rc = check_line0(&c, size, name);
                if (rc == 0 &&
                    (rc = eng_arena_attach(&sg->arena, (unsigned char *)base + c.arena_off,
                                           size - c.arena_off)) != 0)
                        eng_set_err("segment %s: arena header is invalid (%s)", name,
                                    strerror(-rc));
                /* The arena's kind must be the transport's: a forged "mutex" kind would send us
                 * into the baseline allocator, which trusts the segment. */
                eng_arena_kind_t want =
                    c.transport == ENG_TRANSPORT_MUTEX ? ENG_ARENA_MUTEX : ENG_ARENA_LOCKFREE;
                if (rc == 0 && eng_arena_kind(&sg->arena) != want) {
                        eng_set_err("segment %s: the arena says %s, the header %s", name,
                                    eng_arena_kind_name(eng_arena_kind(&sg->arena)),
                                    eng_arena_kind_name(want));
                        rc = -EUCLEAN;
                }
                if (rc == 0 && eng_arena_rec_stride(&sg->arena) <
                                   ENG_ARENA_HDR_BYTES + rec_bytes(c.ring_depth)) {
                        eng_set_err("segment %s: record slots too small for ring depth %u", name,
                                    c.ring_depth);
                        rc = -EUCLEAN;
                }
        }
        if (rc != 0) {
                /* Not (yet) a segment we can use. If a server holds it, it is starting (or
                 * putting back a header someone scribbled): the caller may wait. A server
                 * creates the object and then locks it: a fresh object may not be locked yet. */
                struct flock f = {0};
                bool held =
                    lk(fd, F_OFD_GETLK, F_WRLCK, SEG_LOCK_SERVER, &f) == 0 && f.l_type != F_UNLCK;
                /* A server holds it but we cannot use it: it is starting, or a writer spoiled
                 * the header or the arena's and the server (asleep when all is calm) puts them
                 * back when it looks. Wake it. */
                if (held && base != MAP_FAILED && size >= sizeof(struct eng_seg_hdr))
                        eng_ctl_nudge((struct eng_seg_hdr *)base);
                if (base != MAP_FAILED) {
                        eng_guard_remove(base);
                        munmap(base, size);
                }
                seg_fd_close(fd);
                if (held || (*fresh && size < 4096)) {
                        *fresh = false;
                        return -EAGAIN;
                }
                return rc;
        }
        sg->fd = fd;
        sg->dev = st.st_dev;
        sg->ino = st.st_ino;
        sg->base = base;
        sg->size = size;
        sg->hdr = base;
        sg->line0 = c;
        sg->bitmap = (uint64_t *)((unsigned char *)base + c.hdr_bytes);
        sg->summary = sg->bitmap + c.bitmap_words;
        sg->depth = c.ring_depth;
        sg->max_streams = c.max_streams;
        snprintf(sg->name, sizeof(sg->name), "%s", name);
        if (eng_arena_rec_max_slots(&sg->arena) < sg->max_streams)
                sg->max_streams = (uint32_t)eng_arena_rec_max_slots(&sg->arena);
        reg_add(sg);
        return 0;
}

int seg_attach_trust(struct eng_seg *sg, const char *name, const struct seg_trust *t)
{
        if (seg_begin(sg, name) != 0)
                return -EINVAL;
        bool fresh = true;
        for (;;) {
                int rc = attach_once(sg, name, t, &fresh);
                uint64_t now = eng_now_ns();
                if (rc == -EAGAIN && now < t->start_deadline) {
                        /* a server is formatting it, or healing its header (one control tick) */
                } else if (rc == -ECONNREFUSED && now < t->exist_deadline) {
                        /* no segment yet: asked to wait for a server */
                } else if (rc == -EAGAIN) {
                        char msg[512];
                        snprintf(msg, sizeof(msg), "%s", eng_errmsg());
                        eng_set_err("%s; its server did not finish starting in time", msg);
                        return -ETIMEDOUT;
                } else {
                        return rc;
                }
                if ((rc = trust_sleep(t, rc == -EAGAIN ? 5 : 20)) != 0) {
                        eng_set_err("interrupted while waiting for the server of %s", name);
                        return rc;
                }
        }
}

int seg_attach(struct eng_seg *sg, const char *name)
{
        struct seg_trust t = {
            .owner = (uid_t)-1, .mode = 0777, .start_deadline = eng_now_ns() + 2000000000ull};
        return seg_attach_trust(sg, name, &t);
}

void seg_unmap(struct eng_seg *sg)
{
        if (sg->base) {
                eng_guard_remove(sg->base);
                munmap(sg->base, sg->size);
        }
        reg_remove_close(sg);
        sg->base = NULL;
}
