/*
 * chan.c - one direction of a stream, behind one interface for both transports:
 *   lock-free: a ck_ring driven through ring_* (ring.c);
 *   mutex:     the baseline, a bounded queue of the same depth and slots guarded by a
 *              process-shared robust mutex and a condition variable.
 * Everything above (scheduling, waking sessions, the protocol) is the same for both, so the
 * benchmark compares only the synchronisation of the queues (and of the arena).
 *
 * The mutex queue is the baseline and is not hardened against a hostile peer the way the
 * ring is: a client that holds the mutex forever stalls the worker that touches its stream.
 * Indices are still masked with our own depth, so scribbled counters cannot make us read or
 * write outside the slots.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static void mq_lock(struct mq *q)
{
        if (pthread_mutex_lock(&q->m) == EOWNERDEAD)
                pthread_mutex_consistent(&q->m); /* counters are updated last: consistent */
}

void chan_init_shared(union rec_chan *c, eng_transport_t t, uint32_t depth, uint32_t start)
{
        if (t != ENG_TRANSPORT_MUTEX) {
                ring_init_shared(&c->r, depth, start);
                return;
        }
        memset(c, 0, sizeof(*c));
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&c->q.m, &ma);
        pthread_mutexattr_destroy(&ma);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->q.cv, &ca);
        pthread_condattr_destroy(&ca);
        c->q.head = c->q.tail = start;
}

void chan_attach(struct chan_end *e, union rec_chan *c, struct eng_desc *slots, uint32_t depth,
                 eng_transport_t t, bool producer)
{
        memset(e, 0, sizeof(*e));
        e->mutex = t == ENG_TRANSPORT_MUTEX;
        e->producer = producer;
        e->slots = slots;
        e->mask = depth - 1;
        if (e->mutex)
                e->q = &c->q;
        else
                ring_attach(&e->ring, &c->r, slots, depth, producer);
}

/* The bodies of chan_push and chan_pop, inlined into chan_send and chan_recv, which are on
 * every message's path: the protocol's wrapper adds no call there. */
static inline __attribute__((always_inline)) bool chan_push_one(struct chan_end *e,
                                                                const struct eng_desc *d)
{
        if (!e->mutex)
                return ring_push_spsc(&e->ring, d);
        struct mq *q = e->q;
        mq_lock(q);
        bool ok = q->tail - q->head < e->mask; /* depth-1 usable, as in ck_ring */
        if (ok) {
                e->slots[q->tail & e->mask] = *d;
                q->tail++;
                pthread_cond_signal(&q->cv);
        }
        pthread_mutex_unlock(&q->m);
        return ok;
}

static inline __attribute__((always_inline)) bool chan_pop_one(struct chan_end *e,
                                                               struct eng_desc *d)
{
        if (!e->mutex)
                return ring_pop_spsc(&e->ring, d);
        struct mq *q = e->q;
        mq_lock(q);
        bool ok = q->head != q->tail;
        if (ok) {
                *d = e->slots[q->head & e->mask];
                q->head++;
                pthread_cond_signal(&q->cv);
        }
        pthread_mutex_unlock(&q->m);
        return ok;
}

bool chan_push(struct chan_end *e, const struct eng_desc *d)
{
        return chan_push_one(e, d);
}

bool chan_pop(struct chan_end *e, struct eng_desc *d)
{
        return chan_pop_one(e, d);
}

/* The one place a descriptor is built and a sequence number given: the client's requests and
 * the server's replies alike. */
bool chan_send(struct chan_end *e, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        struct eng_desc d = {.cmd = cmd, .len = len, .seq = e->seq + 1, .off = off, .arg = arg};
        if (!chan_push_one(e, &d))
                return false;
        e->seq++;
        e->bytes += len;
        if (e->stat != NULL) {
                /* For tools only, on a line this side alone writes: plain relaxed stores of the
                 * private truth, never a locked instruction (internal.h, struct eng_rec). */
                eng_store_relaxed_u64(&e->stat->msgs, e->seq);
                eng_store_relaxed_u64(&e->stat->bytes, e->bytes);
        }
        return true;
}

/* The peer counts what it sends; so do we. A gap, a repeat or a forged descriptor is the
 * receiver's to report (it ends the stream). */
int chan_recv(struct chan_end *e, struct eng_desc *d)
{
        if (!chan_pop_one(e, d))
                return 0;
        if (d->seq != e->seq + 1)
                return -EPROTO;
        e->seq++;
        return 1;
}

uint32_t chan_used(const struct chan_end *e)
{
        if (!e->mutex)
                return ring_used(&e->ring);
        struct mq *q = e->q;
        mq_lock(q);
        uint32_t n = q->tail - q->head;
        pthread_mutex_unlock(&q->m);
        return n > e->mask ? e->mask : n;
}

uint32_t chan_free(const struct chan_end *e)
{
        if (!e->mutex)
                return ring_free(&e->ring);
        uint32_t used = chan_used(e);
        return e->mask - used;
}

void chan_wait(struct chan_end *e, uint64_t deadline)
{
        if (!e->mutex)
                return;
        struct mq *q = e->q;
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                              .tv_nsec = (long)(deadline % 1000000000ull)};
        mq_lock(q);
        /* Checked under the mutex, so a push/pop (which signals under it) cannot slip
         * between the check and the wait. One wait; the caller re-checks and loops. */
        bool blocked = e->producer ? q->tail - q->head >= e->mask : q->head == q->tail;
        if (blocked)
                pthread_cond_timedwait(&q->cv, &q->m, &ts);
        pthread_mutex_unlock(&q->m);
}

bool chan_ready(struct chan_end *e)
{
        return e->mutex ? chan_used(e) > 0 : ring_ready(&e->ring);
}

bool chan_room(struct chan_end *e, uint32_t n)
{
        return e->mutex ? chan_free(e) >= n : ring_room(&e->ring, n);
}
