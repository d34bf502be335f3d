/*
 * seg.c - the segment: create (with stale-segment recovery), attach (with validation),
 * layout, and the small shared helpers: futexes, errors, rings, the ready set.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---- errors ------------------------------------------------------------------------- */

static _Thread_local char errmsg[512];

void eng_set_err(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
        va_end(ap);
}

const char *eng_errmsg(void)
{
        return errmsg;
}

const char *eng_strerror(int err)
{
        switch (err) {
        case 0:
                return "success";
        case -EAGAIN:
                return "would block (ring full, nothing to receive, or arena full)";
        case -ETIMEDOUT:
                return "timed out";
        case -EPIPE:
                return "peer gone or stream ended";
        case -EPROTO:
                return "protocol error";
        case -EADDRINUSE:
                return "a live server already owns this segment name";
        default:
                return strerror(err < 0 ? -err : err);
        }
}

/* ---- time and futexes --------------------------------------------------------------- */

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

/* ---- rings -------------------------------------------------------------------------- */

/* Counters start just below the 32-bit wrap so every run crosses it early (ck_ring masks
 * the counters; wrap-around must be harmless, and this proves it continuously). */
void ring_init_shared(struct ck_ring *r, uint32_t depth, uint32_t start)
{
        ck_ring_init(r, depth);
        r->c_head = r->p_tail = r->p_head = start;
}

void ring_attach(struct ring_end *e, struct ck_ring *shared, struct eng_desc *slots, uint32_t depth,
                 bool producer)
{
        e->shared = shared;
        e->slots = slots;
        e->mask = depth - 1;
        /* Read once at attach time; from then on our own counter is the truth. */
        e->mine = producer ? eng_load_acquire_u32(&shared->p_tail)
                           : eng_load_acquire_u32(&shared->c_head);
        e->peer = producer ? eng_load_acquire_u32(&shared->c_head)
                           : eng_load_acquire_u32(&shared->p_tail);
}

static void ring_mirror(const struct ring_end *e, struct ck_ring *m)
{
        m->size = e->mask + 1;
        m->mask = e->mask;
}

/*
 * Both ends cache the peer's counter and re-read it only when the cached value says "full"
 * (producer) or "empty" (consumer). The cached value was read with acquire, so everything it
 * licenses is still licensed: a consumer's old c_head only under-states the free slots, a
 * producer's old p_tail only under-states the descriptors. In the steady state neither end
 * reads the line the other writes on every operation, so each message moves the slot and the
 * one counter that announces it, not the counter that acknowledges it.
 */
bool ring_push_spsc(struct ring_end *e, const struct eng_desc *d)
{
        struct ck_ring m;
        ring_mirror(e, &m);
        m.c_head = e->peer;
        m.p_tail = m.p_head = e->mine;
        if (!ck_ring_enqueue_spsc_desc(&m, e->slots, (struct eng_desc *)d)) {
                /* Full as far as we knew. Acquire on the consumer's counter: its advance is our
                 * licence to overwrite the slot (the consumer finished copying it out before
                 * publishing c_head with release). */
                e->peer = m.c_head = eng_load_acquire_u32(&e->shared->c_head);
                if (!ck_ring_enqueue_spsc_desc(&m, e->slots, (struct eng_desc *)d))
                        return false;
        }
        e->mine = m.p_tail;
        /* Release: the descriptor copied into the slot is visible before the new p_tail. */
        eng_store_release_u32(&e->shared->p_tail, e->mine);
        eng_store_relaxed_u32(&e->shared->p_head, e->mine);
        return true;
}

bool ring_pop_spsc(struct ring_end *e, struct eng_desc *d)
{
        struct ck_ring m;
        ring_mirror(e, &m);
        m.p_tail = e->peer;
        m.c_head = e->mine;
        if (!ck_ring_dequeue_spsc_desc(&m, e->slots, d)) {
                /* Empty as far as we knew. Acquire on the producer's counter: the slot contents
                 * it published come with it. */
                e->peer = m.p_tail = eng_load_acquire_u32(&e->shared->p_tail);
                if (!ck_ring_dequeue_spsc_desc(&m, e->slots, d))
                        return false;
        }
        e->mine = m.c_head;
        /* Release: we finished copying the slot before the producer may reuse it. */
        eng_store_release_u32(&e->shared->c_head, e->mine);
        return true;
}

bool ring_ready(struct ring_end *e)
{
        if (e->peer != e->mine)
                return true;
        e->peer = eng_load_acquire_u32(&e->shared->p_tail);
        return e->peer != e->mine;
}

bool ring_room(struct ring_end *e, uint32_t n)
{
        uint32_t used = e->mine - e->peer;
        if (used <= e->mask && e->mask - used >= n)
                return true;
        e->peer = eng_load_acquire_u32(&e->shared->c_head);
        used = e->mine - e->peer;
        return used <= e->mask && e->mask - used >= n;
}

uint32_t ring_used(const struct ring_end *e)
{
        uint32_t p = eng_load_acquire_u32(&e->shared->p_tail);
        uint32_t c = eng_load_acquire_u32(&e->shared->c_head);
        uint32_t n = p - c;
        return n > e->mask ? e->mask : n; /* a scribbled counter cannot claim more than exists */
}

uint32_t ring_free(const struct ring_end *e)
{
        uint32_t c = eng_load_acquire_u32(&e->shared->c_head);
        uint32_t n = e->mine - c;
        return n >= e->mask ? 0 : e->mask - n;
}

/* ---- ready set ---------------------------------------------------------------------- */

/* Set the bit of idx (locked OR: a full barrier, so the ring push before it is visible
 * to whichever worker takes the bit). */
bool ready_set(struct eng_seg *sg, uint32_t idx)
{
        uint64_t bit = 1ull << (idx & 63);
        uint64_t *w = &sg->bitmap[idx >> 6];
        uint64_t old = eng_load_relaxed_u64(w);
        while ((old & bit) == 0) {
                if (eng_cas_u64(w, old, old | bit, &old))
                        return true;
        }
        return false;
}

/*
 * Take one set bit, scanning from bit *cursor onwards and wrapping around (the cursor is a bit
 * index, so a stream that is re-queued is not taken again before the other set bits of its
 * word: a stream waiting for its session must let the session's bit be seen).
 */
/* Words of the bitmap that can hold a set bit: only records ever carved can be scheduled, so
 * the scan costs what the arena's record area holds, not what the segment could hold. */
static uint32_t ready_words(struct eng_seg *sg)
{
        uint64_t slots = eng_arena_rec_slots(&sg->arena); /* clamped to the private geometry */
        uint32_t n = (uint32_t)((slots < sg->max_streams ? slots : sg->max_streams) + 63) / 64;
        return n ? n : 1;
}

bool ready_take(struct eng_seg *sg, uint32_t *cursor, uint32_t *idx)
{
        uint32_t nw = ready_words(sg);
        uint32_t start = *cursor % (nw * 64);
        uint32_t sw = start / 64, sb = start % 64;
        for (uint32_t k = 0; k <= nw; k++) {
                uint32_t wi = (sw + k) % nw;
                uint64_t mask = ~0ull;
                if (k == 0)
                        mask = ~0ull << sb;
                else if (k == nw)
                        mask = sb ? (1ull << sb) - 1 : 0; /* the start word's low bits, last */
                uint64_t *w = &sg->bitmap[wi];
                uint64_t old = eng_load_relaxed_u64(w);
                while ((old & mask) != 0) {
                        uint64_t bit = (old & mask) & (~(old & mask) + 1);
                        if (eng_cas_u64(w, old, old & ~bit, &old)) {
                                *idx = wi * 64 + (uint32_t)__builtin_ctzll(bit);
                                *cursor = *idx + 1;
                                return *idx < sg->max_streams;
                        }
                }
        }
        return false;
}

bool ready_any(struct eng_seg *sg)
{
        uint32_t nw = ready_words(sg);
        for (uint32_t i = 0; i < nw; i++)
                if (eng_load_relaxed_u64(&sg->bitmap[i]))
                        return true;
        return false;
}

/*
 * Client side, after pushing to the c2s ring: make sure a worker will look at the stream.
 * IDLE -> QUEUED (and set the ready bit, and wake a worker if one sleeps); RUNNING -> AGAIN
 * (the worker running it will go round again). All CAS: full barriers, so the push is
 * visible before the worker can observe the transition.
 */
void sched_stream(struct eng_seg *sg, struct eng_rec *r, uint32_t idx)
{
        /* Full fence: our ring publication (a store) must be visible before we read sched.
         * Without it a worker could see QUEUED -> RUNNING, drain a ring that does not yet show
         * our descriptor, and go IDLE, while we read the stale QUEUED and return: the message
         * would sit there until the next push (store->load is the one order TSO does not keep). */
        eng_fence_full();
        uint32_t s = eng_load_relaxed_u32(&r->sched);
        for (;;) {
                uint32_t want;
                if (s == RUN_IDLE)
                        want = RUN_QUEUED;
                else if (s == RUN_RUNNING)
                        want = RUN_AGAIN;
                else
                        return; /* QUEUED or AGAIN: someone will look; POLLING: a worker is
                                   watching the ring and re-checks it after leaving (server.c) */
                if (eng_cas_u32(&r->sched, s, want, &s)) {
                        if (want == RUN_AGAIN)
                                return;
                        break;
                }
        }
        ready_post(sg, idx);
}

bool eng_asym_supported(void)
{
        long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (q < 0 || !(q & MEMBARRIER_CMD_GLOBAL_EXPEDITED))
                return false;
        /* Seccomp may allow the query and refuse the command: try it once. */
        return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}

bool eng_asym_register(void)
{
        return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

void eng_asym_heavy(void)
{
        syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0);
}

/* Set idx's ready bit and wake a worker if one sleeps. */
void ready_post(struct eng_seg *sg, uint32_t idx)
{
        ready_set(sg, idx);
        /* Dekker with the worker: we set the bit (locked), then read sleepers; a worker
         * increments sleepers (locked), then re-scans the bits. One of us sees the other. */
        if (eng_load_relaxed_u32(&sg->hdr->srv_sleepers) != 0) {
                eng_faa_u32(&sg->hdr->srv_wake, 1);
                eng_futex_wake(&sg->hdr->srv_wake, 1);
        }
}

/*
 * The client's last write to a record: sched := FIN. If the stream was idle nobody would look
 * at it, so post it; if it was queued or running, the worker will see FIN when it tries to go
 * idle. After this the record may be freed and reused at any moment.
 */
void sched_fin(struct eng_seg *sg, struct eng_rec *r, uint32_t idx)
{
        uint32_t prev = eng_swap_u32(&r->sched, RUN_FIN);
        if (prev == RUN_IDLE)
                ready_post(sg, idx);
}

/* ---- segment ------------------------------------------------------------------------ */

static bool name_ok(const char *name)
{
        size_t n = strlen(name);
        return n >= 2 && n < 200 && name[0] == '/' && strchr(name + 1, '/') == NULL;
}

struct eng_rec *seg_rec(const struct eng_seg *sg, uint32_t idx)
{
        if (idx >= sg->max_streams || idx >= eng_arena_rec_slots(&sg->arena))
                return NULL;
        return (struct eng_rec *)(sg->arena.base + eng_arena_rec_offset(&sg->arena, idx));
}

/*
 * A process died inside the bootstrap mutex. Its only writes there are the claim of the record
 * on offer (owner fields, then state CLAIMED, release) and offer_state. If it got as far as
 * CLAIMED the offer is spent: mark it so (the server gives the record to a worker, which finds
 * its owner dead and reclaims it). Otherwise the offer stands: the next claimer overwrites the
 * half-written owner fields.
 */
bool seg_boot_repair(struct eng_seg *sg)
{
        struct eng_seg_hdr *h = sg->hdr;
        bool spent = false;
        if (h->offer_state == 1) {
                struct eng_rec *r = seg_rec(sg, h->offer_idx);
                if (r == NULL || eng_load_acquire_u32(&r->state) != ST_OFFERED) {
                        /* (release: the control thread reads it without the mutex) */
                        eng_store_release_u32(&h->offer_state, 2);
                        spent = true;
                }
        }
        pthread_mutex_consistent(&h->boot);
        return spent;
}

struct timespec seg_realtime_in(uint64_t ns)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ns += (uint64_t)ts.tv_nsec;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        return ts;
}

/*
 * Who owns a name. A serving process holds an exclusive flock on its shm object from before
 * formatting until it unlinks the name; the kernel drops it when the process dies, however it
 * dies. So "locked" means a live server (or one still formatting) and "lockable" means stale,
 * and neither a reused pid nor a header a client scribbled on (state, pid, magic) can make a
 * live segment look stale. The name is only ever unlinked by whoever holds the lock.
 *
 * flock belongs to the open file description, which fork shares, and a mapping of the object
 * holds that description too: a child of a server process would keep the lock after the server
 * died. So the server's mapping is not inherited (MADV_DONTFORK) and its descriptor is closed
 * in the child at fork (from the moment the child first runs: until then its copy of the
 * descriptor table still refers to it). A child that wants the segment attaches like any client.
 */
#define SEG_LOCKS 16
static pthread_mutex_t locks_mu = PTHREAD_MUTEX_INITIALIZER;
static struct eng_seg *locks[SEG_LOCKS];
static pthread_once_t locks_once = PTHREAD_ONCE_INIT;

static void locks_prepare(void)
{
        pthread_mutex_lock(&locks_mu);
}

static void locks_parent(void)
{
        pthread_mutex_unlock(&locks_mu);
}

static void locks_child(void)
{
        for (int i = 0; i < SEG_LOCKS; i++) {
                if (locks[i] != NULL && locks[i]->fd >= 0) {
                        close(locks[i]->fd);
                        locks[i]->fd = -1;
                }
                locks[i] = NULL;
        }
        pthread_mutex_unlock(&locks_mu);
}

static void locks_init(void)
{
        pthread_atfork(locks_prepare, locks_parent, locks_child);
}

static void lock_track(struct eng_seg *sg, bool on)
{
        pthread_once(&locks_once, locks_init);
        pthread_mutex_lock(&locks_mu);
        for (int i = 0; i < SEG_LOCKS; i++) {
                if (on && locks[i] == NULL) {
                        locks[i] = sg;
                        break;
                }
                if (!on && locks[i] == sg)
                        locks[i] = NULL;
        }
        pthread_mutex_unlock(&locks_mu);
}

/* An existing object under our name: refuse if a server holds it, else remove it. */
static int seg_check_stale(const char *name)
{
        int fd = shm_open(name, O_RDONLY, 0);
        if (fd < 0) {
                if (errno == ENOENT)
                        return 0;
                int rc = -errno;
                eng_set_err("segment %s exists and cannot be opened (%s): another user's?", name,
                            strerror(errno));
                return rc;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                int rc = errno == EWOULDBLOCK ? -EADDRINUSE : -errno;
                struct stat st;
                pid_t pid = 0;
                if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= sizeof(struct eng_seg_hdr)) {
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
                close(fd);
                return rc;
        }
        /* Nobody serves it: its server died (a new epoch replaces it). */
        shm_unlink(name);
        close(fd);
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
        close(nfd);
        return same;
}

/* Create the object under name, holding its lock. Another server starting at the same moment
 * may remove a fresh object in the instant before we lock it: then try again. */
static int seg_open_locked(const char *name, mode_t mode)
{
        for (int tries = 0;; tries++) {
                int rc = seg_check_stale(name);
                if (rc != 0)
                        return rc;
                int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, mode);
                if (fd < 0) {
                        if (errno != EEXIST) {
                                rc = -errno;
                                eng_set_err("shm_open(%s): %s", name, strerror(errno));
                                return rc;
                        }
                } else if (flock(fd, LOCK_EX | LOCK_NB) == 0 && seg_is_named(fd, name)) {
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

int seg_create(struct eng_seg *sg, const char *name, uint64_t size, mode_t mode,
               eng_transport_t transport, uint32_t depth, uint32_t max_streams, uint32_t min_shift,
               uint32_t max_shift)
{
        memset(sg, 0, sizeof(*sg));
        sg->fd = -1;
        if (!name_ok(name)) {
                eng_set_err("bad segment name '%s' (want /name, no other slash)", name);
                return -EINVAL;
        }
        if (depth < 2 || depth > 65536 || (depth & (depth - 1))) {
                eng_set_err("ring depth %u is not a power of two in 2..65536", depth);
                return -EINVAL;
        }
        if (transport != ENG_TRANSPORT_LOCKFREE && transport != ENG_TRANSPORT_MUTEX) {
                eng_set_err("unknown transport %d", (int)transport);
                return -EINVAL;
        }
        int fd = seg_open_locked(name, mode);
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
        void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                rc = -errno;
                eng_set_err("mmap(%s): %s", name, strerror(errno));
                goto fail;
        }
        madvise(base, size, MADV_DONTFORK); /* see "Who owns a name" */
        sg->fd = fd;
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
        uint64_t arena_off = (hdr_bytes + words * 8ull + 4095) & ~4095ull;
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
        h->state = SRV_STARTING;
        pthread_mutexattr_t at;
        pthread_mutexattr_init(&at);
        pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&h->boot, &at);
        pthread_mutexattr_destroy(&at);
        sg->bitmap = (uint64_t *)(sg->base + hdr_bytes);
        sg->depth = depth;
        sg->max_streams = max_streams;
        /* Everything above is visible before the magic: attachers read the magic first. */
        eng_store_release_u32(&h->magic, SEG_MAGIC);
        lock_track(sg, true);
        return 0;
fail_map:
        munmap(base, size);
        sg->base = NULL;
fail:
        close(fd);
        sg->fd = -1;
        shm_unlink(name);
        return rc;
}

int seg_attach(struct eng_seg *sg, const char *name)
{
        memset(sg, 0, sizeof(*sg));
        sg->fd = -1;
        if (!name_ok(name)) {
                eng_set_err("bad segment name '%s' (want /name, no other slash)", name);
                return -EINVAL;
        }
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0) {
                int rc = -errno;
                eng_set_err(errno == ENOENT ? "no server: segment %s does not exist"
                                            : "cannot open segment %s: %s",
                            name, strerror(errno));
                return rc == -ENOENT ? -ECONNREFUSED : rc;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < 4096) {
                close(fd);
                eng_set_err("segment %s is too small to be ours (%lld bytes)", name,
                            (long long)st.st_size);
                return -EPROTO;
        }
        uint64_t size = (uint64_t)st.st_size;
        void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                int rc = -errno;
                close(fd);
                eng_set_err("mmap(%s): %s", name, strerror(errno));
                return rc;
        }
        struct eng_seg_hdr *h = base;
        int rc = 0;
        if (eng_load_acquire_u32(&h->magic) != SEG_MAGIC) {
                eng_set_err(
                    "segment %s: bad magic 0x%08x (not an engine segment, or still starting)", name,
                    h->magic);
                rc = -EPROTO;
        } else if (h->version != SEG_VERSION) {
                eng_set_err("segment %s: layout version %u, this program speaks %u", name,
                            h->version, SEG_VERSION);
                rc = -EPROTONOSUPPORT;
        } else if (h->size != size) {
                eng_set_err("segment %s: header says %llu bytes, the object has %llu", name,
                            (unsigned long long)h->size, (unsigned long long)size);
                rc = -EUCLEAN;
        } else if (h->ring_depth < 2 || h->ring_depth > 65536 ||
                   (h->ring_depth & (h->ring_depth - 1)) || h->max_streams == 0 ||
                   h->max_streams > 65536 || h->bitmap_words != (h->max_streams + 63) / 64 ||
                   h->arena_off >= size || h->arena_off < h->hdr_bytes + h->bitmap_words * 8ull ||
                   h->hdr_bytes < sizeof(struct eng_seg_hdr)) {
                eng_set_err("segment %s: inconsistent header", name);
                rc = -EUCLEAN;
        } else if (h->transport != ENG_TRANSPORT_LOCKFREE && h->transport != ENG_TRANSPORT_MUTEX) {
                eng_set_err("segment %s: transport %u is not supported", name, h->transport);
                rc = -EPROTONOSUPPORT;
        } else if ((rc = eng_arena_attach(&sg->arena, (unsigned char *)base + h->arena_off,
                                          size - h->arena_off)) != 0) {
                eng_set_err("segment %s: arena header is invalid (%s)", name, strerror(-rc));
        }
        if (rc == 0 &&
            eng_arena_rec_stride(&sg->arena) < ENG_ARENA_HDR_BYTES + rec_bytes(h->ring_depth)) {
                eng_set_err("segment %s: record slots too small for ring depth %u", name,
                            h->ring_depth);
                rc = -EUCLEAN;
        }
        if (rc != 0) {
                munmap(base, size);
                close(fd);
                return rc;
        }
        sg->fd = fd;
        sg->base = base;
        sg->size = size;
        sg->hdr = h;
        sg->bitmap = (uint64_t *)((unsigned char *)base + h->hdr_bytes);
        sg->depth = h->ring_depth;
        sg->max_streams = h->max_streams;
        snprintf(sg->name, sizeof(sg->name), "%s", name);
        if (eng_arena_rec_max_slots(&sg->arena) < sg->max_streams)
                sg->max_streams = (uint32_t)eng_arena_rec_max_slots(&sg->arena);
        return 0;
}

void seg_unmap(struct eng_seg *sg)
{
        lock_track(sg, false);
        if (sg->base)
                munmap(sg->base, sg->size);
        if (sg->fd >= 0)
                close(sg->fd);
        sg->base = NULL;
        sg->fd = -1;
}
