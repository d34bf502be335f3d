/*
 * waking.pml - the wake-up protocols of one lock-free stream (issue 14, model 2).
 *
 * One client thread (engine/client.c) sends NMSG requests on one stream and waits for each
 * reply; one worker (engine/worker.c) serves it: the scheduling word (rec->sched), the ready
 * bit, the workers' sleeper count and wake word (srv_sleepers, srv_wake), polling and letting
 * go (POLLING, the second look, the asymmetric barrier), and the session's ticket protocol
 * (waiting, wake). Steps are named after the C functions they mirror.
 *
 * Memory model. x86-TSO, the one the code argues with: every thread's plain stores go through
 * a FIFO store buffer (csb: the client's, wsb: the worker's) that a Flusher drains at any
 * moment; loads read memory (a thread never reads back the buffered words, so forwarding is
 * not needed); a full fence (eng_fence_full) and every locked RMW (eng_cas_*, eng_faa_*,
 * eng_swap_*) first wait until the thread's buffer is empty. So "store; load" may be seen
 * in the other order by the other thread unless a fence or a locked op separates them: the
 * store->load reordering that every Dekker below exists for. Release/acquire cost nothing on
 * TSO and are implied. The membarrier(GLOBAL_EXPEDITED) of a worker drains the client's buffer
 * (it makes every running thread of a registered process execute a full barrier).
 *
 * Futexes as the kernel does them: futex_wait(word, val) compares and enqueues atomically (it
 * returns at once if the word differs); futex_wake makes the waiters runnable. The wait slices
 * of the code (50 ms for a client, 200 ms for a worker) are left out: with them a lost wake-up
 * is a stall of one slice, not a hang; without them the model reports it as a sleep forever,
 * which is the event the protocol exists to prevent. Spurious wake-ups are left out (they only
 * help).
 *
 * Checked (safety: ./pan with deadlock detection): no state where the client sleeps (or
 * anyone waits) forever while a request or a reply is pending, i.e. no invalid end state; each
 * request is answered exactly once (assertions). Liveness (ltl "answered", -a -f): under weak
 * fairness every request sent is handled and its reply read (the client finishes).
 *
 * Mutations (each removes one step the code has; check.sh expects a counterexample):
 *   MUT_NO_SECOND_LOOK      srv_wake_session: no re-read of `waiting` after the bump.
 *   MUT_NO_TICKET_FENCE     eng_client_ticket: no full fence between `waiting = SPIN` and the
 *                           read of wake/the rings.
 *   MUT_NO_SCHED_FENCE      sched_stream: no full fence between the ring push and the read of
 *                           sched.
 *   MUT_NO_UNPOLL_LOOK      unpoll_end: no second look at the ring after POLLING -> IDLE.
 *   MUT_NO_MEMBARRIER       release_polls: no membarrier between the IDLE CAS and the look.
 *   MUT_NO_SLEEP_RECHECK    srv_worker_main: no ready_any() after srv_sleepers++.
 *   MUT_NO_WAKE_FENCE       srv_wake_session: no full fence between the push and `waiting`.
 *   MUT_SPIN_LEAVE_LATE     srv_worker_main: srv_spinners-- after the ready_any re-check.
 *
 * srv_spinners (ready_post wakes nobody while a worker spins idle): the worker counts itself
 * spinning after a pass without work and stops (locked sub) when it takes the bit or before
 * the re-check that precedes its sleep; spin_leave's wake of another sleeper is for several
 * workers (ready_set.pml), here there is one.
 */

#ifndef NMSG
#define NMSG 2 /* requests the client sends, one at a time */
#endif
#define CSPIN 1 /* client spin budget (wait_slow), in looks at wake */
#define WSPIN 2 /* worker spin budget (cfg.spin), in idle passes */

/* rec->sched (internal.h RUN_*) */
#define RUN_IDLE 0
#define RUN_QUEUED 1
#define RUN_RUNNING 2
#define RUN_AGAIN 3
#define RUN_POLLING 5
/* session waiting (WAIT_*) */
#define WAIT_NONE 0
#define WAIT_SPIN 1
#define WAIT_SLEEP 2
/* the words a store buffer can hold */
#define V_C2S_TAIL 1 /* c2s ring p_tail (client, release store in ck_ring enqueue) */
#define V_WAITING 2  /* session waiting (client, relaxed store) */
#define V_S2C_TAIL 3 /* s2c ring p_tail (worker, release store) */

/* ---- shared memory ---- */
byte sched = RUN_IDLE;  /* rec->sched */
bool rbit = 0;           /* the stream's bit in the ready set */
byte srv_sleepers = 0;  /* hdr->srv_sleepers */
byte srv_wake = 0;      /* hdr->srv_wake (futex word) */
byte srv_spinners = 0;  /* hdr->srv_spinners */
byte waiting = WAIT_NONE; /* session rec->waiting */
byte wake = 0;          /* session rec->wake (futex word) */
byte c2s_tail = 0;      /* requests published (c2s p_tail) */
byte c2s_head = 0;      /* requests consumed (worker's own counter; its c_head store is not
                           modelled: the ring never fills, NMSG < depth) */
byte s2c_tail = 0;      /* replies published (s2c p_tail) */
bool asym = 0;          /* hdr->asym and the client's registration both succeeded */

/* ---- kernel: futex queues ---- */
bool c_asleep = 0; /* the client is queued on wake */
bool w_asleep = 0; /* the worker is queued on srv_wake */

/* ---- store buffers ---- */
chan csb = [3] of { byte, byte };
chan wsb = [2] of { byte, byte };

/* ---- ghosts ---- */
byte handled = 0;      /* requests the worker consumed */
byte answered = 0;     /* replies the client read */
bool client_done = 0;

inline apply(v, x) {
  if
  :: v == V_C2S_TAIL -> c2s_tail = x
  :: v == V_WAITING -> waiting = x
  :: v == V_S2C_TAIL -> s2c_tail = x
  fi
}

/* The hardware draining store buffers, one store at a time, in order. */
active proctype Flusher() {
  byte v, x;
end_flush:
  do
  :: atomic { csb?v,x -> apply(v, x); v = 0; x = 0 }
  :: atomic { wsb?v,x -> apply(v, x); v = 0; x = 0 }
  od
}

/* eng_fence_full / the drain a locked RMW implies */
#define CFENCE (len(csb) == 0)
#define WFENCE (len(wsb) == 0)

/* ---------------------------------------------------------------- shared (sched.c) ----- */

/* ready_post (sched.c): ready_set (a locked CAS, or nothing if the bit is set), then a
 * relaxed read of srv_sleepers and one of srv_spinners; if one sleeps and none spins,
 * eng_faa_u32(srv_wake) and FUTEX_WAKE.
 * Dekker with the worker's "srv_sleepers++ (locked); ready_any()". sb is the caller's
 * store buffer (a locked op drains it). */
inline ready_post(sb) {
  atomic { len(sb) == 0 -> if :: !rbit -> rbit = 1 :: else fi }
  if
  :: srv_sleepers != 0 ->
     if
     :: srv_spinners == 0 ->
        atomic { len(sb) == 0 -> srv_wake++ }
        w_asleep = 0 /* eng_futex_wake(&srv_wake, 1): the only worker */
     :: else
     fi
  :: else
  fi
}

/* ------------------------------------------------------------------------- client ----- */

/* sched_stream (sched.c): full fence (our p_tail store before our read of sched), then
 * CAS IDLE -> QUEUED (+ ready_post) or RUNNING -> AGAIN; QUEUED/AGAIN/POLLING: nothing. */
inline sched_stream() {
#ifndef MUT_NO_SCHED_FENCE
  CFENCE;
#endif
  s = sched; /* relaxed: only chooses the CAS */
  do
  :: s == RUN_IDLE || s == RUN_RUNNING ->
     want = (s == RUN_IDLE -> RUN_QUEUED : RUN_AGAIN);
     atomic { CFENCE -> /* eng_cas_u32: locked, seq_cst */
       if
       :: sched == s -> sched = want; ok = 1
       :: else -> s = sched; ok = 0
       fi
     }
     if
     :: ok && want == RUN_AGAIN -> break
     :: ok && want != RUN_AGAIN -> ready_post(csb); break
     :: else
     fi
  :: else -> break /* QUEUED, AGAIN: someone will look; POLLING: the worker's second look */
  od;
  s = 0; want = 0; ok = 0
}

/* sched_push (client.c): with the asymmetric barrier, a relaxed read of sched right after the
 * push (compiler barrier only: the p_tail store may still be buffered); POLLING -> nothing. */
inline sched_push() {
  if
  :: asym && sched == RUN_POLLING -> skip
  :: else -> sched_stream()
  fi
}

/* eng_client_ticket (client.c): waiting = SPIN (relaxed), full fence, ticket = wake (acquire). */
inline eng_client_ticket() {
#ifdef MUT_NO_TICKET_FENCE
  /* the fence removed: the SPIN store may still sit in the buffer after the loads that
   * follow (the ticket and try_recv's look at the ring) */
  csb!V_WAITING,WAIT_SPIN;
#else
  csb!V_WAITING,WAIT_SPIN;
  CFENCE;
#endif
  ticket = wake
}

/* wait_slow + wait_until (client.c): spin on wake, then waiting = SLEEP, fence, look, futex. */
inline wait_until() {
  k = 0;
  do
  :: k < CSPIN && wake != ticket -> goto woken
  :: k < CSPIN && wake == ticket -> k++
  :: k >= CSPIN -> break
  od;
  do
  :: true ->
     csb!V_WAITING,WAIT_SLEEP;
     CFENCE;
     if
     :: wake != ticket -> goto woken
     :: else
     fi;
     /* eng_futex_wait(&wake, ticket): compare and enqueue, atomically */
     atomic {
       if
       :: wake != ticket -> skip
       :: else -> c_asleep = 1
       fi
     }
     (c_asleep == 0) /* asleep until a FUTEX_WAKE on wake (no slice timeout: see above) */
  od;
woken:
  csb!V_WAITING,WAIT_NONE; /* wait_until: relaxed store of NONE */
  k = 0
}

/* eng_stream_try_recv: a reply published (acquire of s2c p_tail)? */
#define TRY_RECV (s2c_tail > answered)

active proctype Client() {
  byte i = 0, s, want, ticket, k;
  bool ok;
  /* attach: the header says asym, and our registration worked (or not) */
  if
  :: asym = 1
  :: asym = 0
  fi;
  do
  :: i < NMSG ->
     /* eng_stream_send -> push: chan_send (release store of p_tail), then sched_push */
     i++;
     csb!V_C2S_TAIL,i;
     sched_push();
     /* eng_stream_recv: try_recv, then stream_retry: ticket, try, wait */
     if
     :: TRY_RECV -> skip
     :: else ->
        do
        :: true ->
           eng_client_ticket();
           if
           :: TRY_RECV -> break
           :: else -> wait_until()
           fi
        od;
        /* leaves waiting as it is (SPIN) when the try succeeds, as the code does */
     fi;
     answered++;
     assert(answered == i && s2c_tail >= answered)
  :: else -> break
  od;
  client_done = 1
}

/* ------------------------------------------------------------------------- worker ----- */

/* srv_wake_session (server.c): full fence (our s2c pushes before the read of waiting), read
 * waiting; if set, eng_faa_u32(&wake) and FUTEX_WAKE if SLEEP -- read SPIN? look again after
 * the bump (locked RMW: full barrier): the client may have gone to SLEEP meanwhile. */
inline srv_wake_session() {
#ifndef MUT_NO_WAKE_FENCE
  WFENCE;
#endif
  w = waiting;
  if
  :: w != WAIT_NONE ->
     atomic { WFENCE -> wake++ }
#ifdef MUT_NO_SECOND_LOOK
     if
     :: w == WAIT_SLEEP -> c_asleep = 0 /* eng_futex_wake(&wake, INT32_MAX) */
     :: else
     fi
#else
     if
     :: w == WAIT_SLEEP || waiting == WAIT_SLEEP -> c_asleep = 0
     :: else
     fi
#endif
  :: else
  fi;
  w = 0
}

/* drain (worker.c drain_batch, one message per turn: RUN_BATCH = 1 here, so the fairness
 * re-queue is exercised): chan_recv (acquire of c2s p_tail); handle -> on_msg replies with
 * one message: push_out (release store of s2c p_tail, buffered); *full if the batch filled. */
inline drain() {
  more = 0;
  if
  :: c2s_head < c2s_tail ->
     c2s_head++;
     handled++;
     wsb!V_S2C_TAIL,handled;
     pushed = 1;
     more = 1 /* the batch (1) is full: more may be waiting */
  :: else
  fi
}

/* run_stream (worker.c), for a stream taken from the ready set. */
inline run_stream() {
  st = sched;
  do
  :: atomic { WFENCE -> if :: sched == st -> sched = RUN_RUNNING; ok = 1 :: else -> st = sched; ok = 0 fi }
     if :: ok -> break :: else fi
  od;
  do
  :: true ->
     pushed = 0;
     drain();
     if :: pushed -> srv_wake_session() :: else fi;
     if
     :: more ->
        /* fairness: RUNNING/AGAIN -> QUEUED, and the bit again */
        st = RUN_RUNNING;
        do
        :: atomic { WFENCE -> if :: sched == st -> sched = RUN_QUEUED; ok = 1 :: else -> st = sched; ok = 0 fi }
           if :: ok -> break :: else fi
        od;
        ready_post(wsb);
        break
     :: else
     fi;
     /* go idle or keep polling (may_poll: lock-free transport, spin >= 64) */
     if
     :: rest = RUN_POLLING
     :: rest = RUN_IDLE
     fi;
     st = RUN_RUNNING;
     do
     :: want = (st == RUN_RUNNING -> rest : RUN_RUNNING);
        atomic { WFENCE -> if :: sched == st -> sched = want; ok = 1 :: else -> st = sched; ok = 0 fi }
        if :: ok -> break :: else fi
     od;
     if
     :: want == rest && rest == RUN_POLLING -> held = 1; break /* busy stays ours */
     :: want == rest && rest != RUN_POLLING -> break
     :: else /* AGAIN taken back to RUNNING: go round */
     fi
  od;
  st = 0; want = 0; rest = 0; ok = 0; more = 0; pushed = 0
}

/* release_polls (worker.c): unpoll_begin (POLLING -> IDLE by CAS), membarrier if the client
 * may skip its fence, unpoll_end (second look at the ring: a request there -> CAS IDLE ->
 * QUEUED and ready_post), busy released. */
inline release_polls() {
  st = sched;
  do
  :: atomic { WFENCE -> if :: sched == st -> sched = RUN_IDLE; ok = 1 :: else -> st = sched; ok = 0 fi }
     if :: ok -> break :: else fi
  od;
#ifndef MUT_NO_MEMBARRIER
  if
  :: asym -> CFENCE /* eng_asym_heavy: every client thread passes a full barrier */
  :: else
  fi;
#endif
#ifndef MUT_NO_UNPOLL_LOOK
  if
  :: c2s_head < c2s_tail ->
     atomic { WFENCE -> if :: sched == RUN_IDLE -> sched = RUN_QUEUED; ok = 1 :: else -> ok = 0 fi }
     if :: ok -> ready_post(wsb) :: else fi
  :: else
  fi;
#endif
  held = 0; st = 0; ok = 0
}

/* poll_once (worker.c): still POLLING? a request there? drain it in place. */
inline poll_once() {
  if
  :: sched != RUN_POLLING -> release_polls()
  :: else ->
     if
     :: c2s_head < c2s_tail ->
        pushed = 0;
        drain();
        if :: pushed -> srv_wake_session() :: else fi;
        moved = 1
     :: else
     fi
  fi
}

/* spin_leave (worker.c): stop counting as a spinner (a locked sub); with one worker there is
 * no other sleeper for its wake to reach. */
inline spin_leave() {
  if
  :: spinning -> atomic { WFENCE -> srv_spinners--; spinning = 0 }
  :: else
  fi
}

/* srv_worker_main (worker.c): one turn from the ready set, one look at the held stream, spin
 * WSPIN idle passes, let go of held streams, then announce (srv_sleepers++, locked), read the
 * wake word, re-check the ready set (ready_any) and sleep. */
active proctype Worker() {
  byte spins = 0, st, want, rest, w, seq;
  bool held = 0, moved, ok, more, pushed, spinning = 0;
end_loop:
  do
  :: true ->
     moved = 0;
     /* ready_take: CAS clearing the bit */
     if
     :: rbit -> atomic { WFENCE -> rbit = 0 };
        spin_leave();
        if :: held -> release_polls() :: else fi;
        run_stream();
        moved = 1
     :: else
     fi;
     if :: held -> poll_once() :: else fi;
     if
     :: moved -> spin_leave(); spins = 0
     :: else ->
        if
        :: !spinning -> atomic { WFENCE -> srv_spinners++; spinning = 1 }
        :: else
        fi;
        if
        :: spins < WSPIN -> spins++
        :: else ->
           if
           :: held -> release_polls()
           :: else ->
              atomic { WFENCE -> srv_sleepers++ };
#ifndef MUT_SPIN_LEAVE_LATE
              spin_leave();
#endif
              seq = srv_wake;
#ifdef MUT_NO_SLEEP_RECHECK
              if
              :: true ->
#else
              if
              :: !rbit ->
#endif
#ifdef MUT_SPIN_LEAVE_LATE
                 spin_leave();
#endif
                 atomic {
                   if
                   :: srv_wake != seq -> skip
                   :: else -> w_asleep = 1
                   fi
                 }
end_sleep:       (w_asleep == 0)
              :: else
              fi;
              atomic { WFENCE -> srv_sleepers-- };
              spins = 0; seq = 0
           fi
        fi
     fi
  od
}

/* Liveness: every request is handled and answered (the client finishes). */
ltl answered { <> client_done }
