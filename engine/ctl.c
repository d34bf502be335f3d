/*
 * ctl.c - the server's control thread: the hand-out (a record on offer at all times, published
 * without the bootstrap lock), noticing the take, reaping (dead clients, orphans, undecided and
 * refused claims, scheduling a writer undid), healing what any writer of the segment may have
 * changed (the header, the object, the offer, the arena header) and repairing the arena. It
 * ticks every TICK_NS and wakes early for a claim (ctl_wake).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_int.h"

#define TICK_NS (50 * 1000000ull) /* the control thread's heal/reap period */
/* After a calm sleep is broken, tick at least this long before sleeping calmly again: a
 * client that woke us on taking the bootstrap lock may die inside its claim. */
#define CTL_GRACE_NS (200 * 1000000ull)

/* An event counted where it happens (on workers), logged once per tick by the control thread
 * ("N what"), so that a writer that provokes it in a loop gets one line a tick, not a flood. */
static void log_counted(struct eng_server *srv, uint32_t *count, uint32_t *logged, const char *what)
{
        uint32_t n = eng_load_relaxed_u32(count);
        if (n != *logged) {
                srv_event(srv, "%u %s", n - *logged, what);
                *logged = n;
        }
}

static bool pid_gone(pid_t pid)
{
        return pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH);
}

/* The arena gate is open again (a repair ended, or a gate a writer shut was put back). A
 * client refused a loan at the shut gate waits as it would for space: on its session's wake
 * word (try_loan callers) or on the free word (eng_stream_loan). Nothing else would wake it,
 * since no free made the refusal: wake every session and the free word's sleepers. At most
 * once per repair (a second) or per healed gate. Ordering (Dekker with eng_client_ticket):
 * the gate's release store comes first, then srv_wake_session's full fence and its read of
 * `waiting`; the client stores `waiting`, fences, then reads the gate in try_loan. Either it
 * sees the gate open or we see it waiting and move its wake word. */
static void gate_opened(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        eng_futex_wake(&sg->hdr->arena_gate, INT32_MAX);
        eng_faa_u32(eng_arena_free_word(&sg->arena), 1);
        eng_futex_wake(eng_arena_free_word(&sg->arena), INT32_MAX);
        /* Every session, and every record not decided yet: a client's session may still wait
         * for a worker to accept it (one busy worker, a loaded machine) while its client was
         * already refused a loan at the gate; skipping it left that client asleep with the
         * control thread asleep too (CI: client_refused_a_loan_at_a_shut_gate... timed out
         * with the gate healed). Waking a record that turns out to be a stream costs nothing:
         * nobody waits on a stream's own words (`waiting` stays NONE there). */
        for (uint32_t j = 0; j < srv->ntab; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live)
                        continue;
                /* on offer included: a claim we have not noticed yet (a claimer wakes us only
                 * when fewer than half the slots are up) is a session like any other; an
                 * unclaimed record's `waiting` is NONE, so it costs nothing */
                if (!eng_load_acquire_u32(&t->known) || t->type == REC_SESSION)
                        srv_wake_rec(srv, j);
        }
}

/* ---- the hand-out --------------------------------------------------------------------- */

/* The bootstrap lock with a deadline: a client may hold it (alive, stopped or hostile) as long
 * as it likes; the control thread must go on reaping and shutdown must finish. */
static int srv_boot_lock(struct eng_server *srv, uint64_t ms)
{
        pthread_mutex_lock(&srv->boot_mu);
        int rc = seg_boot_lock(&srv->sg, eng_now_ns() + ms * 1000000ull, NULL, NULL);
        if (rc != 0)
                pthread_mutex_unlock(&srv->boot_mu);
        return rc;
}

static void srv_boot_unlock(struct eng_server *srv)
{
        seg_boot_unlock(&srv->sg);
        pthread_mutex_unlock(&srv->boot_mu);
}

/* Publish the offer of record idx in slot k: words first, then the state word with a new
 * generation (release: a claimer that acquires it sees the words). No lock: see enum
 * offer_state in internal.h. */
static void offer_publish(struct eng_server *srv, uint32_t k, uint32_t idx, const uint64_t guid[2])
{
        struct eng_offer *o = &srv->sg.hdr->offers[k];
        uint32_t w = offer_word_next(srv->offers[k].word, OFFER_UP);
        eng_store_relaxed_u64(&o->guid[0], guid[0]);
        eng_store_relaxed_u64(&o->guid[1], guid[1]);
        eng_store_relaxed_u32(&o->idx, idx);
        eng_store_release_u32(&o->state, w);
        srv->offers[k].word = w;
}

/* A fresh random GUID: drawn SEG_OFFERS at a time (one system call per refill, not one per
 * record). Kept in our private memory until used. */
static void draw_guid(struct eng_server *srv, uint32_t idx, uint64_t g[2])
{
        if (srv->nguids < 2 &&
            getrandom(srv->guids, sizeof(srv->guids), 0) == (ssize_t)sizeof(srv->guids))
                srv->nguids = 2 * SEG_OFFERS;
        if (srv->nguids >= 2) {
                g[0] = srv->guids[--srv->nguids];
                g[1] = srv->guids[--srv->nguids];
        } else {
                g[0] = eng_now_ns();
                g[1] = (uint64_t)idx << 32 | (uint32_t)getpid();
        }
}

/*
 * Records grow up and buffers down into one gap. A record without a buffer can do nothing:
 * a client with hundreds of queued streams would take every record and leave no room for a
 * superblock, and nothing would move. So a record is carved from the gap only while what is
 * left for buffers (the buffer area plus the gap after the carve) is at least two superblocks
 * (one in an arena of fewer than four: the buffer area grows by whole superblocks; the mutex
 * baseline's first-fit arena keeps a quarter, at most 1 MiB). Freed record slots are always
 * reused.
 */
static bool record_fits(struct eng_seg *sg)
{
        uint64_t free_slots, room, top = eng_arena_top(&sg->arena);
        eng_arena_rec_room(&sg->arena, &free_slots, &room);
        if (free_slots > 0)
                return true;
        uint64_t reserve;
        if (eng_arena_kind(&sg->arena) == ENG_ARENA_LOCKFREE) {
                uint64_t sb = eng_arena_max_alloc(&sg->arena) + ENG_ARENA_HDR_BYTES;
                reserve = top >= 4 * sb ? 2 * sb : sb;
        } else { /* the first-fit baseline carves any size: keep a quarter, at most 1 MiB */
                reserve = top / 4 < (1u << 20) ? top / 4 : (1u << 20);
        }
        return room >= reserve;
}

/* Carve or reuse a record, set it up and publish it in the empty slot k. 0, or -ENOMEM when
 * no record fits. */
static int offer_new(struct eng_server *srv, uint32_t k)
{
        struct eng_seg *sg = &srv->sg;
        uint64_t off;
        if (!record_fits(sg))
                return -ENOMEM;
        int rc = eng_arena_rec_alloc(&sg->arena, 0, &off);
        if (rc != 0)
                return rc;
        int64_t idx = eng_arena_rec_index(&sg->arena, off);
        if (idx < 0 || (uint64_t)idx >= sg->max_streams || (uint64_t)idx >= srv->ntab ||
            srv->tab[idx].live) {
                /* Not a slot we can offer (a live one: the record list was forged): keep it
                 * out of circulation; the idle rebuild gives back whatever is not live. */
                if (idx < 0 || (uint64_t)idx >= srv->ntab || !srv->tab[idx].live)
                        eng_arena_rec_free(&sg->arena, off);
                return -ENOMEM;
        }
        eng_sstream_t *s = &srv->tab[idx];
        if (s->on_offer) {
                /* Claimed from another slot, accepted, closed and finalised before we noticed
                 * the take (a worker needs no control thread to accept a held claim): that
                 * slot is stale. Forget it, or its next look would take this new offer for
                 * its old one. */
                for (uint32_t j = 0; j < SEG_OFFERS; j++)
                        if (srv->offers[j].idx1 == (uint32_t)idx + 1)
                                srv->offers[j].idx1 = 0;
                s->on_offer = false;
        }
        if ((uint32_t)idx + 1 > eng_load_relaxed_u32(&sg->ready_hi))
                eng_store_relaxed_u32(&sg->ready_hi, (uint32_t)idx + 1); /* (ctl only writes) */
        /* A stray ready bit may have a worker glance at the entry: own it while resetting. */
        uint32_t seen;
        while (!eng_cas_u32(&s->busy, 0, 1, &seen))
                eng_cpu_relax();
        struct eng_rec *r = (struct eng_rec *)(sg->arena.base + off);
        memset(r, 0, sizeof(*r));
        draw_guid(srv, (uint32_t)idx, r->guid);
        r->epoch = sg->line0.epoch;
        r->depth = sg->depth;
        chan_init_shared(&r->c2s, srv->cfg.transport, sg->depth, UINT32_MAX - 3 * sg->depth);
        chan_init_shared(&r->s2c, srv->cfg.transport, sg->depth, UINT32_MAX - 5 * sg->depth);
        eng_store_relaxed_u32(&r->sched, RUN_IDLE);
        uint32_t gen = s->gen + 1;
        memset((char *)s + sizeof(s->busy), 0, sizeof(*s) - sizeof(s->busy));
        s->gen = gen;
        s->guid0 = r->guid[0];
        s->idx = (uint32_t)idx;
        s->rec = r;
        s->srv = srv;
        s->pw = -1;
        s->live = true;
        s->on_offer = true;
        eng_store_release_u32(&s->busy, 0);
        eng_store_release_u32(&r->state, ST_OFFERED);
        uint64_t guid[2] = {r->guid[0], r->guid[1]};
        memcpy(srv->offers[k].snap, r, sizeof(srv->offers[k].snap));
        offer_publish(srv, k, (uint32_t)idx, guid);
        srv->offers[k].idx1 = (uint32_t)idx + 1;
        return 0;
}

/* Fill every empty offer slot (not while stopping: stop withdrew them). Returns how many
 * slots hold an offer afterwards. */
uint32_t srv_offers_refill(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        uint32_t up = 0, made = 0;
        bool full = eng_load_acquire_u32(&srv->hstate) == SRV_STOPPING;
        for (uint32_t k = 0; k < SEG_OFFERS; k++) {
                if (srv->offers[k].idx1 == 0 && !full) {
                        if (offer_new(srv, k) == 0)
                                made++;
                        else
                                full = true; /* again when something is freed (or soon) */
                }
                up += srv->offers[k].idx1 != 0;
        }
        if (made > 0) {
                /* Locked add, then the read of boot_sleepers (Dekker with take_offer's add
                 * before its futex wait): no system call when nobody sleeps for an offer. */
                eng_faa_u32(&sg->hdr->boot_wake, 1);
                if (eng_load_relaxed_u32(&sg->hdr->boot_sleepers) != 0)
                        eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        }
        return up;
}

/* ---- reaping ------------------------------------------------------------------------ */

/* Take a stream away from the workers and give everything back. */
static int64_t reap(struct eng_server *srv, eng_sstream_t *t)
{
        eng_faa_u64(&srv->sg.hdr->reclaims, 1);
        uint32_t seen;
        /* A worker polling the stream lets go when anything is posted: post it. */
        if (!eng_cas_u32(&t->busy, 0, 1, &seen)) {
                ready_post(&srv->sg, t->idx);
                while (!eng_cas_u32(&t->busy, 0, 1, &seen))
                        eng_cpu_relax();
        }
        int64_t blocks = t->live ? srv_finalize(srv, t, -EPIPE) : 0;
        eng_store_release_u32(&t->busy, 0);
        return blocks;
}

static bool bit_set(const struct eng_seg *sg, uint32_t idx)
{
        return (eng_load_relaxed_u64(&sg->bitmap[idx >> 6]) >> (idx & 63)) & 1;
}

#define DEAD_MAX 64 /* processes noticed dead per tick (the rest: next tick) */

/*
 * Every tick, over every live record except those on offer:
 *   - a process we watch exited (one poll over all pidfds): every record it holds goes;
 *   - a verified claimer we could not watch (no pidfd) is gone: its records go;
 *   - a claim refused without a verified claimer was not given back by its deadline: it goes;
 *   - a record taken off the offer was not decided by its deadline: it goes;
 *   - a stream whose session ended (the client detached) is an orphan: it goes;
 *   - scheduling that a writer undid: a stream that should be run (QUEUED, AGAIN, FIN, a
 *     stalled one, an undecided claim) but whose ready bit is clear, and that no worker holds,
 *     is posted again. So no scribble of sched, the bitmap or want_space stalls a stream for
 *     more than a tick once the writer stops.
 */
static bool reap_tick(struct eng_server *srv, bool *quiet)
{
        struct eng_seg *sg = &srv->sg;
        struct {
                pid_t pid;
                uint32_t recs;
                int64_t blocks;
        } dead[DEAD_MAX];
        uint32_t nd = 0;
        pthread_mutex_lock(&srv->pw_mu);
        if (srv->npw > 0) {
                struct pollfd *pf = calloc(srv->npw, sizeof(*pf));
                if (pf != NULL) {
                        for (uint32_t i = 0; i < srv->npw; i++) {
                                pf[i].fd = srv->pw[i].refs ? srv->pw[i].pidfd : -1;
                                pf[i].events = POLLIN;
                        }
                        if (poll(pf, srv->npw, 0) > 0) {
                                for (uint32_t i = 0; i < srv->npw && nd < DEAD_MAX; i++)
                                        if (pf[i].revents & POLLIN)
                                                dead[nd++].pid = srv->pw[i].pid;
                        }
                        free(pf);
                }
        }
        pthread_mutex_unlock(&srv->pw_mu);
        for (uint32_t i = 0; i < nd; i++)
                dead[i].recs = 0, dead[i].blocks = 0;

        uint64_t now = eng_now_ns();
        /* Every slot we ever offered: the shared record top could hide live ones. */
        uint32_t hi = eng_load_relaxed_u32(&sg->ready_hi);
        uint32_t n = hi < srv->ntab ? hi : srv->ntab;
        uint32_t orphans = 0, late = 0, undecided = 0;
        int64_t orphan_blocks = 0;
        bool idle = true; /* nothing live but offers and sessions: nobody holds buffers */
        /* Nothing for the next tick to do: every live record decided, no deadline running,
         * every stream at rest (IDLE, no ready bit, no worker on it). */
        bool calm = nd == 0;
        for (uint32_t j = 0; j < n; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live || t->on_offer)
                        continue;
                if (!eng_load_acquire_u32(&t->known) || t->type != REC_SESSION)
                        idle = false;
                if (!eng_load_acquire_u32(&t->known)) {
                        calm = false;
                        uint64_t taken = eng_load_acquire_u64(&t->taken_ns);
                        if (taken != 0 && now - taken > CLAIM_DEADLINE_NS) {
                                reap(srv, t);
                                undecided++;
                        } else if (taken != 0 && !eng_load_relaxed_u32(&t->busy) &&
                                   !bit_set(sg, j)) {
                                ready_post(sg, j);
                        }
                        continue;
                }
                bool gone = false;
                for (uint32_t i = 0; i < nd && t->pw >= 0; i++) {
                        if (dead[i].pid == t->pid) {
                                dead[i].blocks += reap(srv, t);
                                dead[i].recs++;
                                gone = true;
                                break;
                        }
                }
                if (gone)
                        continue;
                if (t->pw < 0 || t->fin_deadline != 0)
                        calm = false; /* a pid without a pidfd, a deadline: look each tick */
                if (t->pw < 0 && t->verified && pid_gone(t->pid)) {
                        pid_t pid = t->pid;
                        int64_t b = reap(srv, t);
                        srv_event(srv, "pid %d is gone: reclaimed its record %u, %lld buffer(s)",
                                  (int)pid, j, (long long)b);
                        continue;
                }
                if (t->fin_deadline != 0 && now > t->fin_deadline) {
                        reap(srv, t);
                        late++;
                        continue;
                }
                if (t->type == REC_STREAM && t->pw >= 0) {
                        eng_sstream_t *ss = &srv->tab[t->session < srv->ntab ? t->session : 0];
                        if (!ss->live || ss->gen != t->session_gen) {
                                orphan_blocks += reap(srv, t);
                                orphans++;
                                continue;
                        }
                }
                uint32_t st = eng_load_relaxed_u32(&t->rec->sched);
                if (eng_load_relaxed_u32(&t->busy) || bit_set(sg, j) || st != RUN_IDLE ||
                    t->stalled)
                        calm = false;
                if (!eng_load_relaxed_u32(&t->busy) && !bit_set(sg, j)) {
                        if (st == RUN_QUEUED || st == RUN_AGAIN || st == RUN_FIN || t->stalled)
                                ready_post(sg, j);
                }
        }
        /* Work is posted: make sure a worker is awake, whatever the (writable) sleeper count
         * says. ready_post wakes only if srv_sleepers says someone sleeps, and a writer can
         * zero it; workers sleep without a timeout. */
        if (ready_any(sg)) {
                calm = false;
                eng_faa_u32(&sg->hdr->srv_wake, 1);
                eng_futex_wake(&sg->hdr->srv_wake, 1);
        }
        *quiet = calm;
        for (uint32_t i = 0; i < nd; i++)
                srv_event(srv, "client pid %d exited: reclaimed %u record(s), %lld buffer(s)",
                          (int)dead[i].pid, dead[i].recs, (long long)dead[i].blocks);
        if (orphans)
                srv_event(srv,
                          "%u stream(s) outlived their client's session (it detached without "
                          "closing them): reclaimed with %lld buffer(s)",
                          orphans, (long long)orphan_blocks);
        if (late)
                srv_event(srv, "%u refused claim(s) were not given back within %llu ms: reclaimed",
                          late, (unsigned long long)(CLAIM_DEADLINE_NS / 1000000));
        if (undecided)
                srv_event(srv,
                          "%u record(s) taken off the offer were never completed within %llu ms: "
                          "reclaimed",
                          undecided, (unsigned long long)(CLAIM_DEADLINE_NS / 1000000));
        log_counted(srv, &srv->ev_unclaimed, &srv->ev_unclaimed_log,
                    "record(s) left the offer without a claim any live process holds (forged or "
                    "abandoned): reclaimed");
        log_counted(srv, &srv->ev_unverified, &srv->ev_unverified_log,
                    "claim(s) named a process other than the one holding the claim: refused");
        return idle;
}

/* ---- healing ------------------------------------------------------------------------ */

/*
 * The header's immutable line and the server state are ours; clients only read them, but any
 * process that maps the segment can write them. Put them back (each tick): a forged magic or
 * size must not keep the next client from attaching. The magic goes last, as at creation.
 * Stop changes hstate and then the header: after writing, look at hstate again, so a heal that
 * raced with stop cannot leave the old state behind.
 */
static void heal_header(struct eng_server *srv)
{
        struct eng_seg_hdr *h = srv->sg.hdr;
        unsigned char *raw = (unsigned char *)h;
        const unsigned char *want0 = (const unsigned char *)&srv->sg.line0;
        size_t n0 = offsetof(struct eng_seg_hdr, state);
        bool bad = false;
        if (memcmp(raw, want0, n0) != 0) {
                size_t m = sizeof(h->magic); /* magic is the first word */
                memcpy(raw + m, want0 + m, n0 - m);
                eng_store_release_u32(&h->magic, srv->sg.line0.magic);
                bad = true;
        }
        if (eng_load_acquire_u32(&h->arena_gate) != srv->gate) {
                eng_store_release_u32(&h->arena_gate, srv->gate);
                if (srv->gate == 0)
                        gate_opened(srv);
                bad = true;
        }
        uint32_t want = eng_load_acquire_u32(&srv->hstate);
        if (eng_load_acquire_u32(&h->state) != want) {
                eng_store_release_u32(&h->state, want);
                /* Our header store before the re-read of hstate; stop stores hstate before
                 * the header: one of us sees the other's store. */
                eng_fence_full();
                uint32_t now = eng_load_acquire_u32(&srv->hstate);
                if (now != want)
                        eng_store_release_u32(&h->state, now);
                bad = true;
        }
        if (bad)
                eng_faa_u64(&h->heals, 1);
        if (bad && (srv->heals++ % 1000) == 0)
                srv_event(srv,
                          "the segment header was overwritten by a client: restored (%llu "
                          "time(s) so far)",
                          (unsigned long long)srv->heals);
}

/*
 * The object itself: any process of the user may resize it (a shrink makes every access past
 * the new end fault: see the SIGBUS guard), change its mode (letting other users in) or unlink
 * its name. Size and mode are put back; a name taken away cannot be (a shm object has no way
 * back to a name): say so once.
 */
static void heal_object(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        struct stat st;
        if (fstat(sg->fd, &st) != 0)
                return;
        uint32_t restored = eng_load_acquire_u32(&srv->sg.restored);
        if (restored != srv->restored_logged) {
                srv_event(srv,
                          "the segment was shrunk by another process: resized back to %llu "
                          "bytes at our next access (%u time(s))",
                          (unsigned long long)sg->size, restored - srv->restored_logged);
                srv->restored_logged = restored;
        }
        if ((uint64_t)st.st_size != sg->size) {
                if (ftruncate(sg->fd, (off_t)sg->size) == 0)
                        posix_fallocate(sg->fd, 0, (off_t)sg->size);
                eng_faa_u64(&sg->hdr->heals, 1);
                srv_event(srv,
                          "the segment was resized to %lld bytes by another process: put "
                          "back to %llu",
                          (long long)st.st_size, (unsigned long long)sg->size);
        }
        if ((st.st_mode & 07777) != srv->cfg.mode) {
                fchmod(sg->fd, srv->cfg.mode);
                eng_faa_u64(&sg->hdr->heals, 1);
                srv_event(srv,
                          "the segment's mode was changed to %04o by another process: put "
                          "back to %04o",
                          (unsigned)(st.st_mode & 07777), (unsigned)srv->cfg.mode);
        }
        if (st.st_nlink == 0 && !srv->name_gone_logged) {
                srv->name_gone_logged = true;
                srv_event(srv,
                          "the segment's name %s was removed by another process: clients "
                          "already attached go on, new ones cannot find it (restart the "
                          "server to serve the name again)",
                          sg->name);
        }
}

/*
 * Is the record on offer in slot k still as we wrote it? A claimer writes only state, type,
 * owner_pid, session and user_id (and touches nothing else before CLAIMED); everything else of
 * lines 0..8 must match the snapshot. A writer that changed a ring counter, sched or the wake words
 * of the record on offer would otherwise spoil the first honest stream that claims it.
 */
static bool offer_intact(const struct eng_server *srv, uint32_t k, const struct eng_rec *r)
{
        const unsigned char *now = (const unsigned char *)r, *was = srv->offers[k].snap;
        size_t claim_lo = offsetof(struct eng_rec, guid);
        size_t epoch_end = offsetof(struct eng_rec, owner_pid);
        size_t depth = offsetof(struct eng_rec, depth);
        return memcmp(now + claim_lo, was + claim_lo, epoch_end - claim_lo) == 0 &&
               memcmp(now + depth, was + depth, sizeof(srv->offers[k].snap) - depth) == 0;
}

/*
 * Slot k's offer as published in the header, checked against the record we offered. If the
 * record is still OFFERED (nobody claimed it) but the header says otherwise (the slot's state,
 * idx or GUID overwritten), publish it again (a new generation) rather than leaking it. True
 * if the offer stands (published again or as it was); false if the slot is empty or its record
 * was taken.
 */
static bool offer_republish(struct eng_server *srv, uint32_t k)
{
        struct srv_offer *so = &srv->offers[k];
        if (so->idx1 == 0)
                return false;
        if (eng_load_acquire_u32(&srv->hstate) != SRV_READY)
                return true; /* stopping withdrew the offer: leave it withdrawn */
        struct eng_seg *sg = &srv->sg;
        struct eng_offer *o = &sg->hdr->offers[k];
        uint32_t idx = so->idx1 - 1;
        struct eng_rec *r = seg_rec(sg, idx);
        if (r == NULL)
                return false;
        eng_sstream_t *s = &srv->tab[idx];
        bool still = eng_load_acquire_u32(&r->state) == ST_OFFERED &&
                     eng_load_relaxed_u64(&r->guid[0]) == s->guid0;
        if (still && !offer_intact(srv, k, r)) {
                /* Written by someone: withdraw it under the bootstrap lock (no claim under
                 * way), and if it is still OFFERED there, treat it as taken: the worker finds
                 * no claim and gives it back, and a fresh record goes on offer. */
                if (srv_boot_lock(srv, 50) != 0)
                        return true; /* a claimer holds the lock: look again next time */
                still = eng_load_acquire_u32(&r->state) == ST_OFFERED;
                if (still && !offer_intact(srv, k, r)) {
                        eng_store_release_u32(&o->state, offer_word_with(so->word, OFFER_TAKEN));
                        still = false; /* logged as a record left without a claim */
                }
                srv_boot_unlock(srv);
                if (!still)
                        return false;
        }
        if (eng_load_acquire_u32(&o->state) == so->word && eng_load_relaxed_u32(&o->idx) == idx &&
            eng_load_relaxed_u64(&o->guid[0]) == s->guid0)
                return still; /* as published: taken once the record is no longer OFFERED */
        if (still) {
                uint64_t guid[2] = {s->guid0, eng_load_relaxed_u64(&r->guid[1])};
                offer_publish(srv, k, idx, guid);
                eng_faa_u32(&sg->hdr->boot_wake, 1);
                eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        }
        return still;
}

/* Every offer untouched: each slot's record still OFFERED and its word as we published it. */
static bool offers_quiet(struct eng_server *srv)
{
        struct eng_seg *sg = &srv->sg;
        for (uint32_t k = 0; k < SEG_OFFERS; k++) {
                uint32_t off = srv->offers[k].idx1;
                if (off == 0)
                        continue;
                struct eng_rec *r = seg_rec(sg, off - 1);
                if (r == NULL || eng_load_acquire_u32(&r->state) != ST_OFFERED ||
                    eng_load_acquire_u32(&sg->hdr->offers[k].state) != srv->offers[k].word)
                        return false;
        }
        return true;
}

/* Any slot with an offer? */
static bool offers_any(const struct eng_server *srv)
{
        for (uint32_t k = 0; k < SEG_OFFERS; k++)
                if (srv->offers[k].idx1 != 0)
                        return true;
        return false;
}

/* ---- repair at idle ------------------------------------------------------------------ */

static bool park_workers(struct eng_server *srv)
{
        eng_store_release_u32(&srv->park, 1);
        /* Sleeping workers look at park within their 200 ms slice; wake them now. */
        eng_faa_u32(&srv->sg.hdr->srv_wake, 1);
        eng_futex_wake(&srv->sg.hdr->srv_wake, INT32_MAX);
        for (uint64_t end = eng_now_ns() + 300 * 1000000ull; eng_now_ns() < end;) {
                if (eng_load_acquire_u32(&srv->parked) == srv->nworkers)
                        return true;
                usleep(500);
        }
        return false; /* a worker is busy in a hook (a slow disk): another time */
}

static void unpark_workers(struct eng_server *srv)
{
        eng_store_release_u32(&srv->park, 0);
        eng_futex_wake(&srv->park, INT32_MAX);
}

static bool rec_live(uint64_t idx, void *ctx)
{
        struct eng_server *srv = ctx;
        return idx < srv->ntab && srv->tab[idx].live;
}

/* A block's owner is a record we hold live (a stream, or one claimed and not yet decided: its
 * client may already have loaned buffers), and not one on offer: the repair runs under the
 * bootstrap lock with every offer seen untouched (offers_quiet), so no client has one, and a
 * block stamped with its index is a leftover of an earlier use of the slot (a client that
 * closed in order while holding a loan). At idle only sessions and the offers are live. */
static bool owner_live(uint32_t owner, void *ctx)
{
        struct eng_server *srv = ctx;
        return owner >= 1 && owner - 1 < srv->ntab && srv->tab[owner - 1].live &&
               !srv->tab[owner - 1].on_offer;
}

/* Every client is out of the arena (arena_op 0 in every live record: a client brackets with
 * its session's, and a session we have not decided yet may already have a stream that
 * allocates), or deadline_ns passed (a writer can hold a flag up: its streams are what the
 * repair may then spoil). */
static uint32_t wait_arena_quiet(struct eng_server *srv, uint64_t deadline_ns)
{
        uint32_t busy = 0;
        for (uint32_t j = 0; j < srv->ntab; j++) {
                eng_sstream_t *t = &srv->tab[j];
                if (!t->live || t->on_offer)
                        continue;
                while (eng_load_acquire_u32(&t->rec->arena_op) != 0) {
                        if (eng_now_ns() >= deadline_ns) {
                                busy++;
                                break;
                        }
                        eng_cpu_relax();
                }
        }
        return busy;
}

/*
 * Repair the arena: check it against what the server knows is live, and rebuild it if they
 * disagree. That gives back what scribbles and crash windows cost: blocks on cut lists, blocks
 * of dead owners a walk could not reach, superblocks a shrink zeroed, a gap a forged watermark
 * hid, record slots. It needs every honest party out of the arena:
 *   - claims held off: the bootstrap lock (and the offers untouched);
 *   - the workers parked (they flush their free batches first);
 *   - clients: the arena gate closed, then (asymmetric barrier, see arena_enter in client.c)
 *     every live session's arena_op seen 0.
 * When: while idle (nothing but sessions and the offers live), once something happened since
 * the last check (a record finalised, an anomaly, a cut, no offer possible); while streams are
 * open, only on evidence that the arena is damaged (allocations failing while nothing was
 * freed for a tick, anomalies, cuts, no offer possible). At most once a second; the check costs a
 * walk (~1 ms per 64 MiB here), the clients wait that long for their next allocation.
 */
static void repair_arena(struct eng_server *srv, bool idle)
{
        struct eng_seg *sg = &srv->sg;
        uint64_t now = eng_now_ns();
        uint32_t finals = eng_load_relaxed_u32(&srv->finals);
        uint64_t anomalies = eng_arena_anomalies(&sg->arena);
        eng_arena_stats_t st;
        eng_arena_stats(&sg->arena, &st);
        /* Failed allocations are evidence only if nothing was freed meanwhile: a transfer
         * that fills the arena fails allocations all the time while the server frees behind
         * it (back-pressure, not damage), and a repair stops the world for a moment. The
         * counters are shared (a writer can move them): a hint for when to look, never what
         * the repair decides with, and the idle repair does not need it. */
        uint64_t frees = 0;
        for (uint32_t c = 0; c < st.nclasses; c++)
                frees += st.cls[c].frees;
        bool starved = st.failed != srv->failed_seen && frees == srv->frees_seen;
        bool evidence = anomalies != srv->anomalies_seen || st.cuts != srv->cuts_seen || starved ||
                        !offers_any(srv);
        srv->failed_seen = st.failed;
        srv->frees_seen = frees;
        if (evidence || (idle && finals != srv->finals_seen))
                srv->dirty = true;
        if (!srv->dirty || (!idle && !evidence) || now - srv->last_repair_ns < 1000 * 1000000ull ||
            srv->cfg.transport == ENG_TRANSPORT_MUTEX)
                return;
        srv->last_repair_ns = now;
        if (srv_boot_lock(srv, 50) != 0)
                return;
        /* Under the lock no claim can happen; are the offers untouched? */
        if (!offers_quiet(srv)) {
                srv_boot_unlock(srv);
                return;
        }
        /* Close the gate, then make sure every client thread sees it before we read the
         * arena_op words (the heavy side of the asymmetric barrier; clients that did not
         * register fence themselves). */
        srv->gate = 1;
        eng_store_release_u32(&sg->hdr->arena_gate, 1);
        if (srv->asym)
                eng_asym_heavy();
        else
                eng_fence_full();
        bool parked = park_workers(srv);
        uint32_t busy = parked ? wait_arena_quiet(srv, eng_now_ns() + 200 * 1000000ull) : 0;
        eng_arena_rebuild_report_t rep = {0};
        char why[160] = "";
        bool ok = true;
        if (parked) {
                eng_arena_rebuild_cfg_t cfg = {
                    .rec_live = rec_live, .owner_live = owner_live, .ctx = srv};
                /* Consistent, and in agreement with what we know is live? */
                ok = eng_arena_check_live(&sg->arena, &cfg, why, sizeof(why)) == 0;
                if (!ok)
                        eng_arena_rebuild(&sg->arena, &cfg, &rep);
                srv->finals_seen = eng_load_relaxed_u32(&srv->finals);
                srv->anomalies_seen = eng_arena_anomalies(&sg->arena);
                eng_arena_stats(&sg->arena, &st);
                srv->cuts_seen = st.cuts;
                srv->failed_seen = st.failed;
                srv->dirty = false;
        }
        srv->gate = 0;
        eng_store_release_u32(&sg->hdr->arena_gate, 0);
        unpark_workers(srv);
        srv_boot_unlock(srv);
        gate_opened(srv); /* and space may have come back */
        if (!ok) {
                eng_faa_u64(&sg->hdr->heals, 1);
                srv_event(srv,
                          "arena repaired %s (%s): %llu buffer block(s) of %llu bytes and %llu "
                          "record slot(s) given back, %llu byte(s) back in the gap%s",
                          idle ? "while idle" : "with streams open", why,
                          (unsigned long long)rep.freed_blocks, (unsigned long long)rep.freed_bytes,
                          (unsigned long long)rep.rec_freed, (unsigned long long)rep.gap_bytes,
                          busy ? "; some clients stayed inside the arena" : "");
        }
}

/*
 * Sleep on ctl_wake until seq moves. While something is due (a claim to decide, a deadline,
 * a stream in motion, a repair) for at most a tick; when all is calm, without a timeout: an
 * idle server does not wake. What wakes it then: a claim or a client that found something
 * amiss (client.c, seg.c: srv_ctl_nudge), a watched client's death (srv_watch_main), a record
 * finalised (the check at idle), stop. Returns true if it slept without a timeout (the
 * caller then runs a tick at once: whatever woke it may need one).
 */
static bool ctl_sleep(struct eng_server *srv, uint32_t seq, bool quiet, uint32_t finals,
                      int64_t nap_ns)
{
        struct eng_seg *sg = &srv->sg;
        if (!quiet) {
                /* Claimers skip their wake-up while we run (ctl_asleep 0): say we sleep, and
                 * fence before the futex compares ctl_wake with seq. */
                eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 2);
                eng_fence_full();
                eng_futex_wait(&sg->hdr->ctl_wake, seq, nap_ns);
                eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 0);
                return false;
        }
        eng_store_relaxed_u32(&srv->ctl_asleep, 1);
        eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 1);
        /* Dekker, both ways: srv_finalize adds to finals and then reads ctl_asleep; a claimer
         * takes the bootstrap lock and then reads ctl_asleep (seg_boot_trylock). We store
         * ctl_asleep, fence, then look at finals (against the count the tick saw: a record
         * finalised between the tick and here is news), at the bootstrap lock and at the
         * offers. Either they see us asleep and wake us, or we see them and do not sleep
         * calmly. (Found by docs/models/ctl_sleep.pml: a snapshot of finals taken here
         * missed a finalisation after the tick, and a claimer that locked just before our
         * store, read 0 and died after its claim left the claim unnoticed.) */
        eng_fence_full();
        bool calm = eng_load_relaxed_u32(&srv->finals) == finals &&
                    !eng_load_relaxed_u32(&srv->stop) && seg_boot_held(sg) == 0 &&
                    offers_quiet(srv);
        eng_futex_wait(&sg->hdr->ctl_wake, seq, calm ? -1 : nap_ns);
        eng_store_relaxed_u32(&srv->ctl_asleep, 0);
        eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 0);
        return true;
}

/* The death watch: wakes the control thread when a watched client process exits (its pidfd
 * becomes readable; one shot: the reap closes it), and ends at stop (the eventfd). */
void *srv_watch_main(void *arg)
{
        struct eng_server *srv = arg;
        for (;;) {
                struct epoll_event ev[16];
                int n = epoll_wait(srv->epfd, ev, 16, -1);
                if (n < 0 && errno != EINTR)
                        return NULL;
                bool death = false;
                for (int i = 0; i < n; i++) {
                        if (ev[i].data.u64 == 0)
                                return NULL; /* stop */
                        death = true;
                }
                if (death)
                        srv_ctl_nudge(srv->sg.hdr);
        }
}

void *srv_ctl_main(void *arg)
{
        struct eng_server *srv = arg;
        struct eng_seg *sg = &srv->sg;
        uint64_t last_tick = 0, grace_until = 0;
        uint32_t finals_seen = 0; /* srv->finals when the last tick began */
        bool quiet = false;
        while (!eng_load_relaxed_u32(&srv->stop)) {
                uint32_t seq = eng_load_acquire_u32(&sg->hdr->ctl_wake);
                /* First, before a tick reaps: a record taken from a slot is no longer on offer
                 * (else a dead claimer's stream, still marked, would be reaped a tick after its
                 * session, with a second "exited" line). Still on offer? (the header's copies
                 * put right if overwritten) Taken: a worker decides it now, even if the client
                 * stays silent; it must be decided by the claim deadline. */
                for (uint32_t k = 0; k < SEG_OFFERS; k++) {
                        if (srv->offers[k].idx1 == 0 || offer_republish(srv, k))
                                continue;
                        uint32_t idx = srv->offers[k].idx1 - 1;
                        srv->offers[k].idx1 = 0;
                        srv->tab[idx].on_offer = false;
                        eng_store_release_u64(&srv->tab[idx].taken_ns, eng_now_ns());
                        /* Not if a worker decided it already (the claimer schedules its new
                         * stream itself, and a held claim needs no control thread): that post
                         * would only wake a worker for nothing. */
                        if (!eng_load_acquire_u32(&srv->tab[idx].known))
                                ready_post(sg, idx);
                        quiet = false;
                }
                /* Every tick whatever else happens (a full segment included: that is when a
                 * dead client's records matter most). */
                uint64_t now = eng_now_ns();
                if (now - last_tick > TICK_NS) {
                        finals_seen = eng_load_relaxed_u32(&srv->finals);
                        heal_header(srv);
                        heal_object(srv);
                        char what[200];
                        if (eng_arena_heal(&sg->arena, what, sizeof(what)) > 0) {
                                size_t n = strlen(what);
                                while (n > 0 && (what[n - 1] == ' ' || what[n - 1] == ';'))
                                        what[--n] = '\0';
                                srv->dirty = true;
                                eng_faa_u64(&sg->hdr->heals, 1);
                                if ((srv->heals++ % 1000) == 0)
                                        srv_event(srv,
                                                  "the arena header was overwritten by another "
                                                  "process: restored (%s)",
                                                  what);
                        }
                        if (eng_load_acquire_u32(&sg->broken) && !srv->broken_logged) {
                                srv->broken_logged = true;
                                srv_event(srv, "the segment was shrunk by another process and "
                                               "/dev/shm has no room to restore it: the server "
                                               "must stop");
                        }
                        repair_arena(srv, reap_tick(srv, &quiet));
                        quiet = quiet && !srv->dirty && now >= grace_until;
                        last_tick = now;
                }
                if (srv_offers_refill(srv) == 0) {
                        /* full: again when something is freed (or soon) */
                        quiet = false;
                        eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 2);
                        eng_fence_full();
                        eng_futex_wait(&sg->hdr->ctl_wake, seq, 20 * 1000000ll);
                        eng_store_relaxed_u32(&sg->hdr->ctl_asleep, 0);
                        continue;
                }
                if (ctl_sleep(srv, seq, quiet, finals_seen, (int64_t)TICK_NS)) {
                        /* Woken from a calm sleep: look now, and every tick for a while (a
                         * claim may be under way: seg_boot_trylock). */
                        last_tick = 0;
                        grace_until = eng_now_ns() + CTL_GRACE_NS;
                        quiet = false;
                }
        }
        return NULL;
}
