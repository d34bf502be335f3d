/*
 * server_int.h - private to the server side of engine/: server.c (start/stop, the stream table,
 * the public eng_server_ and eng_sstream_ API), worker.c (the worker pool, polling) and ctl.c
 * (the control thread: hand-out, reaping, healing, repair). The client side never sees it.
 *
 * Trust: the segment is writable by every process of the user. What the server decides with
 * is here, in its own memory: who claimed a record (the kernel's claim lock, not the record's
 * owner_pid), which process it watches (a pidfd per pid), which records are live and in which
 * phase, and every field of a claim, read once at accept. A record taken off the offer is
 * decided, refused or reclaimed within CLAIM_DEADLINE_NS whatever the segment says.
 */
#ifndef ENG_SERVER_INT_H
#define ENG_SERVER_INT_H

#include "internal.h"

/* A record taken off the offer must be accepted or refused by then; a refused claim that no
 * verified process holds must be given back (FIN) by then. */
#define CLAIM_DEADLINE_NS (2000 * 1000000ull)

/*
 * The server's own entry for a record slot (private memory: what it decides with). Who writes
 * what: the holder of `busy` (a worker running the stream, the control thread offering or
 * reaping it) writes the entry; other threads read only the words marked below, with the
 * order given there.
 */
struct eng_sstream {
        /*
         * One worker per stream, whatever the segment's sched word says: a lock on the entry.
         * Take: CAS 0 -> 1 (eng_cas_u32, a full barrier, so at least acquire: the previous
         * holder's writes to the entry, and what it did to the record, are visible to us).
         * Give: eng_store_release_u32(0) (ours are visible to the next taker). A relaxed load
         * is only a hint ("a worker holds it", reap_tick). A worker that polls a stream keeps
         * it. First field: srv_offer_new clears the rest of the entry while holding it.
         */
        uint32_t busy;
        uint32_t idx;
        bool live;     /* between offer and finalisation */
        bool on_offer; /* in one of the offer slots (the control thread's own flag) */
        /* Decided. Written by the holder of busy with release (type, pid, pw and the rest of
         * the decision before it); read with acquire by threads that do not hold the entry
         * (a stream's worker reading its session's, the control thread), plain by the holder. */
        uint32_t known;
        /* We sent CLOSE/ERROR; waiting for the client's FIN. Written by the holder of busy
         * (relaxed); read relaxed by a stream's worker looking at its session's entry. */
        uint32_t ended;
        bool pushed;  /* this turn produced something for the client */
        bool opened;  /* on_open accepted it: on_close is owed exactly once */
        bool stalled; /* the last drain stopped for want of reply room */
        /* The client closed in order (its CLOSE was the last request we took): at its FIN
         * the stream owns no buffer an honest client still knows of, so finalising it does
         * not walk the arena (srv_finalize). */
        bool clean_close;
        /* Why we refused or ended it (0: closed in order). Part of the decision: a refusal's
         * error is written before the release of known, an end's before the release of ended,
         * so a stream's worker reading its session's entry (worker.c) sees why. Accessed with
         * srv_err_get/srv_err_set (relaxed atomics: a holder may rewrite it while read). */
        int32_t err;
        uint32_t type;
        uint32_t session;
        uint32_t session_gen; /* the session's gen when this stream was accepted */
        uint32_t gen;         /* bumped at every offer of this slot */
        uint64_t guid0;       /* the GUID's first word as we offered it (names the claim lock) */
        uint32_t user_id;
        pid_t pid;     /* known: the claimer, as the kernel says (verified) or as claimed */
        bool verified; /* pid is the claim lock's holder */
        int32_t pw;    /* slot in the pid watch table, -1 if none */
        /* When the control thread saw it leave the offer (0: on offer). The control thread
         * stores it with release, then posts the record; workers and reaping load it with
         * acquire. Reset (relaxed) with the entry, before the release of known or busy. */
        uint64_t taken_ns;
        uint64_t fin_deadline;   /* refused without a verified claimer: reaped by then */
        struct chan_end in, out; /* each counts its sequence numbers (chan_send, chan_recv) */
        struct eng_rec *rec;
        struct eng_server *srv;
        void *user;
};

static inline int srv_err_get(const struct eng_sstream *s)
{
        return (int32_t)eng_load_relaxed_u32((const uint32_t *)&s->err);
}

static inline void srv_err_set(struct eng_sstream *s, int err)
{
        eng_store_relaxed_u32((uint32_t *)&s->err, (uint32_t)err);
}

/* One watched client process: its pidfd and the records that belong to it. */
struct pidwatch {
        pid_t pid;
        int pidfd;
        uint32_t refs;
};

struct eng_server {
        struct eng_seg sg;
        eng_server_cfg_t cfg;
        struct eng_sstream *tab;
        uint32_t ntab;
        pthread_t ctl;
        pthread_t *workers;
        uint32_t nworkers;
        uint32_t stop; /* relaxed: a flag the threads poll; they are joined, nothing is published */
        /* The offer slots as we published them (hdr->offers[k]), control thread only. */
        struct srv_offer {
                uint32_t idx1; /* record index on offer (+1), 0 if none */
                uint32_t word; /* hdr->offers[k].state as we published it (generation | UP) */
                /* The offered record as we wrote it: lines 0..8 (identity, sched, wake, both
                 * channels' control blocks). While it is OFFERED nobody honest writes there
                 * but the claim. */
                unsigned char snap[9 * CL];
        } offers[SEG_OFFERS];
        uint64_t guids[2 * SEG_OFFERS]; /* random GUIDs drawn ahead (one getrandom a refill) */
        uint32_t nguids;
        bool asym; /* clients may skip their fence: issue the heavy barrier */
        /* The bootstrap lock is an OFD lock on sg.fd, which all our threads share: they
         * serialise among themselves here. */
        pthread_mutex_t boot_mu;
        /* Watched processes (accept on workers, reap on the control thread). */
        pthread_mutex_t pw_mu;
        struct pidwatch *pw;
        uint32_t npw, cappw;
        /* What the header says, as we wrote it: any writer can overwrite it, the control
         * thread puts it back (heal_header). Release store (start, stop), acquire load. */
        uint32_t hstate;
        uint64_t heals;
        /* Events counted by workers (eng_faa), logged once per tick by the control thread
         * (relaxed load): counts, nothing is published through them. */
        uint32_t ev_unclaimed, ev_unverified;         /* counted by workers */
        uint32_t ev_unclaimed_log, ev_unverified_log; /* logged so far (control thread) */
        bool name_gone_logged;
        uint32_t restored_logged; /* sg.restored: shrinks the SIGBUS guard undid */
        bool broken_logged;
        /* Workers park while the control thread repairs the arena (repair_arena). park:
         * release store by the control thread, acquire load by workers; parked: each worker
         * adds (eng_faa, after flushing its batch), the control thread loads with acquire. */
        uint32_t park, parked;
        /* What may have left the arena inconsistent since the last check at idle: records
         * finalised (a dead client's crash windows), anomalies this process met, cuts others
         * met (the shared count), heals. */
        uint32_t finals; /* eng_faa by whoever finalises, relaxed load: a count */
        uint32_t finals_seen;
        uint64_t anomalies_seen, cuts_seen, failed_seen, frees_seen;
        uint32_t gate; /* hdr->arena_gate as it should be (heal_header puts it back) */
        bool dirty;
        uint64_t last_repair_ns;
        /* The control thread sleeps without a timeout (nothing to do until an event):
         * store 1, full fence, re-read finals; srv_finalize adds to finals (a locked add),
         * then reads it, and wakes the control thread for the check at idle. */
        uint32_t ctl_asleep;
        /* Deaths: an epoll set of the watched pidfds (EPOLLONESHOT) and an eventfd for
         * stop, waited on by the watch thread, which wakes the control thread. */
        int epfd, stopfd;
        pthread_t watch;
        bool watch_started;
};
_Static_assert(offsetof(struct eng_sstream, busy) == 0,
               "busy first: srv_offer_new clears the rest");

/* Buffer blocks of record slot idx belong to owner idx + 1 (0 is nobody). */
static inline uint32_t owner_of(uint32_t idx)
{
        return idx + 1;
}

/* ---- server.c: the stream table ------------------------------------------------------ */

/* Report an event through the on_event hook (if any). */
void srv_event(struct eng_server *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Watch pid (a verified claimer): share its entry or open a pidfd. 0, or -errno of
 * pidfd_open (ESRCH: it is gone; EMFILE/ENFILE: we cannot watch it). */
int srv_pw_acquire(struct eng_server *srv, pid_t pid, int32_t *slot);
void srv_pw_ref(struct eng_server *srv, int32_t slot);
void srv_pw_release(struct eng_server *srv, int32_t slot);
/* Wake the client's session if it announced it is waiting (Dekker with eng_client_ticket). */
void srv_wake_session(struct eng_server *srv, eng_sstream_t *s);
/* The same for record idx itself (a session, or a record not decided yet that may be one). */
void srv_wake_rec(struct eng_server *srv, uint32_t idx);
/* End the stream from our side (holding busy): CLOSE (err 0) or ERROR to the client, on_close
 * once, state ENDED. */
void srv_end_stream(struct eng_server *srv, eng_sstream_t *s, int err);
/* Give everything back (holding busy): on_close if owed, the stream's blocks, its pid watch,
 * its record. Returns the number of buffer blocks the record's owner still held. */
int64_t srv_finalize(struct eng_server *srv, eng_sstream_t *s, int err);

/* ---- worker.c: the worker pool ------------------------------------------------------- */

void *srv_worker_main(void *arg);
/* Free a buffer block: on a worker, a small one goes into the worker's batch (flushed once per
 * turn); elsewhere, or a large one, at once. cap: its capacity as a lookup of the caller's
 * found it, or SRV_CAP_UNKNOWN (looked up here). It only chooses between the two: the free
 * validates the block itself. */
#define SRV_CAP_UNKNOWN UINT64_MAX
void srv_free(struct eng_server *srv, uint64_t off, uint64_t cap);

/* ---- ctl.c: the control thread ------------------------------------------------------- */

void *srv_ctl_main(void *arg);
void *srv_watch_main(void *arg);
#define srv_ctl_nudge eng_ctl_nudge
/* Put a fresh record on offer in every empty offer slot (control thread, or start before it
 * runs). Returns how many slots hold an offer (0: no room for a single record). */
uint32_t srv_offers_refill(struct eng_server *srv);

#endif
