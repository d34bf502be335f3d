/*
 * ring.c - the SPSC descriptor rings (lock-free transport): ck_ring driven on a private mirror
 * of the shared ring header, each endpoint's own counter kept privately (internal.h, struct
 * ring_end). Every acquire and release below says what it licenses, in ck's terms.
 */
#include "internal.h"

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
