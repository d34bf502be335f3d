/*
 * stream_life.pml - a stream record's life (issue 14, model 1): the state word rec->state,
 * the offer in the header, the claim, accept, the close handshake, abort, client death and
 * reap, server stop. Steps are named after the C functions they mirror (engine/ctl.c,
 * engine/client.c, engine/worker.c, engine/server.c, engine/sched.c).
 *
 * Processes: the control thread (Ctl: offer_new, offer_republish + "taken", reap_tick),
 * one worker (Worker: run_stream, accept_stream, drain, srv_end_stream, srv_finalize), two
 * clients racing for the offer (Client 1 and 2: take_offer, stream_open, eng_stream_close or
 * eng_stream_abort, stream_end), the server's stop (Stopper: eng_server_stop), a Killer that
 * may SIGKILL either client at any step, and a Checker that looks at the system once nothing
 * can move any more. NREC record slots; the control thread makes at most MAXOFF offers (that
 * bounds the GUIDs; a GUID is a counter here, so it never repeats).
 *
 * Memory model: sequentially consistent steps, each a C11 atomic of the code; the ordering
 * each step relies on is named at the step. (The store->load orders of the wake-ups are
 * checked under TSO in waking.pml; here every state change is a release store, a CAS or a
 * swap, and every reader that relies on one acquires it.) Time is left out: every wait may
 * end (a deadline) at any moment, and the control thread's tick is "whenever there is
 * something to do". The claim deadline (CLAIM_DEADLINE_NS), sessions (a stream is its own
 * session: its claimer's pid is watched directly), data messages and buffers (reclaim is one
 * step of srv_finalize), polling, rogue writers (offer_intact, the GUID checks against
 * forged states) are left out (see README.md).
 *
 * Checked (safety, exhaustive): a record is never held by two clients (assert at the claim);
 * a client never touches a record that is no longer its own, i.e. freed or re-offered (assert
 * at every write a client makes to it: sched CAS, push, FIN); srv_finalize never frees a
 * slot twice (assert); a slot is never offered again while a client still holds it (assert
 * in offer_new); on_close runs once for every on_open (assert); when nothing can move:
 * every on_open had its on_close, and (server not stopped) no slot is allocated but the one on
 * offer: no record leaks whichever party died at whichever step.
 *
 * Mutations (check.sh expects a counterexample for each):
 *   MUT_REAP_NO_BUSY   reap: finalises without taking the stream's `busy` from the workers.
 *   MUT_REAP_NO_LIVE   reap: finalises without looking at `live` once it holds `busy`.
 *   MUT_IDLE_STORE     run_stream: RUNNING -> IDLE by a plain store, not a CAS (a FIN swapped in
 *                      meanwhile is overwritten).
 *   MUT_UNLOCK_BEFORE_FIN  stream_end AS THE CODE HAS IT TODAY (client.c stream_end): the claim
 *                      lock is let go before the GUID check and the FIN. A real window: see
 *                      README.md. The default model has the order this model proposes: the
 *                      FIN (the last touch) first, then the claim lock.
 */

#define NREC 2
#ifndef MAXOFF
#define MAXOFF 1 /* exhaustive within 1 GiB: one offer (see README.md for larger bounds) */
#endif
#define NCLI 2 /* client pids 1..NCLI */
#ifndef MAXTRY
#define MAXTRY 1 /* a client looks at the offer again at most MAXTRY times */
#endif

/* rec->state (ST_*); FREE: never offered since the slot was zeroed */
#define ST_FREE 0
#define ST_OFFERED 1
#define ST_CLAIMED 2
#define ST_OPEN 3
#define ST_ENDED 4
/* rec->sched (RUN_*) */
#define RUN_IDLE 0
#define RUN_QUEUED 1
#define RUN_RUNNING 2
#define RUN_AGAIN 3
#define RUN_FIN 4
/* an offer slot's state bits (hdr->offers[k].state) */
#define OFFER_NONE 0
#define OFFER_UP 1
#define OFFER_TAKEN 2
/* hdr->state */
#define SRV_READY 2
#define SRV_STOPPING 3
#define SRV_STOPPED 4
/* accept_stream's answers */
#define RC_OK 0
#define RC_EAGAIN 1
#define RC_ESRCH 2

/* ---- the segment (shared) ---- */
byte rstate[NREC];    /* rec->state: release stores, acquire loads */
byte rguid[NREC];     /* rec->guid: written before OFFERED */
byte sched[NREC];     /* rec->sched: CAS/swap only */
bool rbit[NREC];      /* ready set bits */
bool c2s[NREC];       /* c2s ring holds the client's CLOSE */
bool s2c[NREC];       /* s2c ring holds the server's CLOSE ack or ERROR */
byte owner_pid[NREC]; /* the claim's pid (relaxed, before CLAIMED) */
byte offer_gen;       /* hdr->offers[k].state: generation ... (one slot) */
byte offer_st = OFFER_NONE; /* ... and state; release stores / acquire loads / CAS */
byte offer_idx;       /* hdr->offers[k].idx, .guid: relaxed, before the word */
byte offer_guid;
byte hstate = SRV_READY;

/* ---- the kernel ---- */
byte boot_lock;           /* SEG_LOCK_BOOT holder (0: free) */
bool clk_held[NCLI + 1];  /* each client's claim lock (one stream per client) */
byte clk_idx[NCLI + 1];
byte clk_g[NCLI + 1];
bool dead[NCLI + 1];      /* the process exited: its locks are free, its pidfd readable */
byte kill;                /* Killer's choice */

/* ---- the arena's record slots ---- */
bool alloc[NREC];

/* ---- the server's private memory (struct eng_sstream, srv) ---- */
bool live[NREC], known[NREC], busy[NREC], taken[NREC], ended[NREC], opened[NREC], pw[NREC];
byte spid[NREC];  /* the verified claimer */
byte sguid[NREC]; /* s->guid0 */
byte offered;     /* srv->offered: idx + 1, 0 = none */
byte noffers;
byte next_guid;
bool stop;
bool ctl_out, worker_out;

/* ---- ghosts ---- */
byte holder[NREC]; /* the client that holds the record (claim .. its last touch) */
byte opens, closes;

/* Who holds the claim lock of (idx, g)? seg_claim_holder: F_OFD_GETLK, from the kernel. */
#define CLAIM_HOLDER(idx, g) \
  (clk_held[1] && clk_idx[1] == idx && clk_g[1] == g -> 1 : \
   (clk_held[2] && clk_idx[2] == idx && clk_g[2] == g -> 2 : 0))

/* A client's write to its record: it must still be its own (not freed, not re-offered). */
#define OURS(idx, g) (alloc[idx] && rguid[idx] == g && holder[idx] == me)

/* ready_post (sched.c): set the bit (the worker's wake-up is model 2's subject). */
#define READY_POST(i) rbit[i] = 1

/* ------------------------------------------------------------------ server (server.c) --- */

/* srv_end_stream: ERROR/CLOSE ack pushed (if known), on_close once, state := ENDED
 * (release: the push comes first), srv_wake_session. */
inline srv_end_stream(i) {
  if
  :: !ended[i] ->
     ended[i] = 1;
     if
     :: known[i] ->
        s2c[i] = 1;
        if
        :: opened[i] -> closes++; opened[i] = 0 /* on_close */
        :: else
        fi
     :: else
     fi;
     rstate[i] = ST_ENDED
  :: else
  fi
}

/* srv_finalize: on_close if still open (aborted or reaped), eng_arena_reclaim, the pid watch
 * released, live = 0, known = 0 (release), eng_arena_rec_free. The caller holds busy. */
inline srv_finalize(i) {
  atomic {
    assert(busy[i] && live[i]); /* only the holder of busy finalises, and only once */
    if
    :: !ended[i] -> ended[i] = 1;
       if :: opened[i] -> closes++; opened[i] = 0 :: else fi
    :: else
    fi;
    pw[i] = 0; live[i] = 0; taken[i] = 0; known[i] = 0;
    assert(alloc[i]); /* never freed twice */
    alloc[i] = 0
  }
}

/* -------------------------------------------------------------------- control thread --- */

/* offer_new (ctl.c): a free slot; busy held while resetting; zero the record, a fresh
 * GUID, sched = IDLE, rings empty; the private entry reset (live); busy released (release);
 * state = OFFERED (release); offer_publish: guid and idx (relaxed), then the word, a new
 * generation | UP (release). */
inline offer_new() {
  atomic {
    if
    :: !alloc[0] -> i = 0
    :: alloc[0] && !alloc[1] -> i = 1
    fi;
    alloc[i] = 1; /* eng_arena_rec_alloc */
    assert(holder[i] == 0); /* never reused while a client still holds it */
    busy[i] == 0 -> busy[i] = 1 /* (ctl holds it while resetting: nothing else runs here) */
  };
  atomic {
    next_guid++;
    rguid[i] = next_guid; sched[i] = RUN_IDLE; c2s[i] = 0; s2c[i] = 0; owner_pid[i] = 0;
    live[i] = 1; known[i] = 0; taken[i] = 0; ended[i] = 0; opened[i] = 0; pw[i] = 0;
    spid[i] = 0; sguid[i] = next_guid;
    busy[i] = 0;                    /* release */
    rstate[i] = ST_OFFERED          /* release */
  };
  atomic {
    offer_guid = next_guid; offer_idx = i; /* relaxed */
    offer_gen++; offer_st = OFFER_UP;      /* release: after the words */
    offered = i + 1;
    noffers++;
    i = 0
  }
}

/* reap (ctl.c): take busy from the workers (post the bit so a worker that polls lets go),
 * then finalise if still live, then release busy. */
inline reap(j) {
#ifndef MUT_REAP_NO_BUSY
  if
  :: atomic { busy[j] == 0 -> busy[j] = 1 }
  :: else -> READY_POST(j); atomic { busy[j] == 0 -> busy[j] = 1 }
  fi;
#endif
#ifdef MUT_REAP_NO_LIVE
  srv_finalize_reap(j);
#else
  if
  :: live[j] -> srv_finalize_reap(j)
  :: else
  fi;
#endif
#ifndef MUT_REAP_NO_BUSY
  busy[j] = 0 /* release */
#endif
}

/* srv_finalize from reap: as srv_finalize, asserting busy unless the mutation dropped it. */
inline srv_finalize_reap(i) {
  atomic {
#ifndef MUT_REAP_NO_BUSY
    assert(busy[i]);
#endif
    if
    :: !ended[i] -> ended[i] = 1;
       if :: opened[i] -> closes++; opened[i] = 0 :: else fi
    :: else
    fi;
    pw[i] = 0; live[i] = 0; taken[i] = 0; known[i] = 0;
    assert(alloc[i]);
    alloc[i] = 0
  }
}

/* reap_tick's look at one record j (not the one on offer). */
#define REAPABLE(j) (live[j] && offered != j + 1 && known[j] && pw[j] && dead[spid[j]])
#define REPOST(j) (live[j] && offered != j + 1 && !busy[j] && !rbit[j] && \
                   ((!known[j] && taken[j]) || \
                    (known[j] && (sched[j] == RUN_QUEUED || sched[j] == RUN_AGAIN || \
                                  sched[j] == RUN_FIN))))

active proctype Ctl() {
  byte i, j, o;
  bool still;
end_ctl:
  do
  :: stop -> break
  :: /* offer_republish + the take: the record on offer left OFFERED, or the header's word
      * is not the one we published (a claimer marked it TAKEN, or spent it) */
     offered != 0 && !stop &&
     (rstate[offered - 1] != ST_OFFERED || offer_st != OFFER_UP) ->
     o = offered - 1;
     if
     :: hstate != SRV_READY -> skip /* stopping withdrew the offer */
     :: else ->
        atomic { still = rstate[o] == ST_OFFERED && rguid[o] == sguid[o] }; /* acquire */
        if
        :: still && offer_st != OFFER_UP ->
           /* spent while still OFFERED: publish it again, a new generation (release) */
           atomic { offer_guid = sguid[o]; offer_idx = o; offer_gen++; offer_st = OFFER_UP }
        :: still && offer_st == OFFER_UP -> skip
        :: !still ->
           /* taken: a worker decides it now (taken_ns: release, then ready_post) */
           atomic { offered = 0; taken[o] = 1; READY_POST(o) }
        fi
     fi;
     o = 0; still = 0
  :: offered == 0 && !stop && noffers < MAXOFF && !(alloc[0] && alloc[1]) ->
     offer_new()
  :: /* reap_tick (ctl.c): a watched pid exited -> reap; scheduling undone -> post again */
     !stop && (REAPABLE(0) || REAPABLE(1) || REPOST(0) || REPOST(1)) ->
     atomic { /* the ready bits put back (a hint: one step) */
       if :: REPOST(0) -> READY_POST(0) :: else fi;
       if :: REPOST(1) -> READY_POST(1) :: else fi
     };
     for (j : 0 .. NREC - 1) {
       if
       :: REAPABLE(j) -> reap(j)
       :: else
       fi
     }
  od;
  ctl_out = 1
}

/* ------------------------------------------------------------------------- worker --- */

/* accept_stream (worker.c): the state must read CLAIMED (acquire); the claim lock's holder
 * (kernel) must be the pid the claim names; its pid watch (pidfd_open), and the lock asked
 * once more (a pid that died meanwhile is refused); on_open; known := 1 (release); OPEN
 * (release). Nobody holding the claim: -EAGAIN while the control thread still counts it as
 * its offer (taken_ns == 0), -ESRCH (give it back) once it saw it taken. */
inline accept_stream(i) {
  atomic { /* one step: what it reads is the claimer's (published before CLAIMED) and the
            * kernel's; what it writes is ours (under busy) and the OPEN word */
    tk = taken[i]; /* acquire of taken_ns */
    if
    :: rstate[i] != ST_CLAIMED -> rc = (tk -> RC_ESRCH : RC_EAGAIN)
    :: else ->
       h = CLAIM_HOLDER(i, sguid[i]);
       if
       :: h == 0 -> rc = (tk -> RC_ESRCH : RC_EAGAIN)
       :: h != 0 && h != owner_pid[i] -> assert(false) /* honest clients: never */
       :: h != 0 && h == owner_pid[i] ->
          spid[i] = h;
          pw[i] = 1;                 /* srv_pw_acquire: pidfd_open(h) */
          opens++; opened[i] = 1;    /* on_open */
          known[i] = 1;              /* release */
          rstate[i] = ST_OPEN;       /* release */
          rc = RC_OK
       fi
    fi;
    h = 0; tk = 0
  }
}

/* run_stream (worker.c): busy (CAS 0 -> 1, acquire) or post the bit back; a record on offer
 * is nobody's; FIN -> srv_finalize; CAS -> RUNNING; decide a claim; drain (the CLOSE:
 * srv_end_stream(0)); RUNNING -> IDLE by CAS (AGAIN -> RUNNING, go round; FIN -> finalize);
 * busy released (release). */
inline run_stream(i) {
  atomic {
    if
    :: busy[i] == 0 -> busy[i] = 1 /* CAS 0 -> 1: acquire */
    :: else -> READY_POST(i); goto out /* another holder: post the bit back */
    fi;
    if
    :: !live[i] || (!known[i] && !taken[i] && rstate[i] != ST_CLAIMED) -> goto rel
    :: else
    fi;
    st = sched[i]
  };
  do
  :: st == RUN_FIN -> srv_finalize(i); goto rel
  :: else ->
     atomic { if :: sched[i] == st -> sched[i] = RUN_RUNNING; ok = 1 :: else -> st = sched[i]; ok = 0 fi };
     if :: ok -> break :: else fi
  od;
  do
  :: true ->
     if
     :: !known[i] ->
        accept_stream(i);
        if
        :: rc == RC_ESRCH -> srv_finalize(i); goto rel
        :: else
        fi
     :: else
     fi;
     /* drain: the CLOSE (acquire of p_tail) -> ack, on_close, ENDED */
     atomic {
       if
       :: known[i] && !ended[i] && c2s[i] -> c2s[i] = 0; srv_end_stream(i)
       :: else
       fi
     };
     /* go idle: RUNNING -> IDLE; AGAIN -> RUNNING and round again; FIN -> finalize */
     st = RUN_RUNNING;
#ifdef MUT_IDLE_STORE
     if
     :: sched[i] == RUN_RUNNING -> sched[i] = RUN_IDLE; goto rel /* load ... store */
     :: sched[i] == RUN_FIN -> srv_finalize(i); goto rel
     :: sched[i] == RUN_AGAIN -> sched[i] = RUN_RUNNING
     :: else -> goto rel
     fi
#else
     do
     :: st == RUN_FIN -> break
     :: st != RUN_FIN ->
        want = (st == RUN_RUNNING -> RUN_IDLE : RUN_RUNNING);
        atomic { if :: sched[i] == st -> sched[i] = want; ok = 1 :: else -> st = sched[i]; ok = 0 fi };
        if :: ok -> break :: else fi
     od;
     if
     :: st == RUN_FIN -> srv_finalize(i); goto rel
     :: st != RUN_FIN && want == RUN_IDLE -> goto rel
     :: else /* AGAIN: go round */
     fi
#endif
  od;
rel:
  busy[i] = 0;
out:
  st = 0; want = 0; ok = 0; rc = 0
}

active proctype Worker() {
  byte k, st, want, rc, h;
  bool ok, tk;
end_worker:
  do
  :: stop -> break
  :: !stop && (rbit[0] || rbit[1]) ->
     if /* ready_take: a CAS clearing one set bit */
     :: atomic { rbit[0] -> rbit[0] = 0; k = 0 }
     :: atomic { rbit[1] -> rbit[1] = 0; k = 1 }
     fi;
     run_stream(k);
     k = 0
  od;
  worker_out = 1
}

/* ------------------------------------------------------------------------- client --- */

/* sched_stream (sched.c) after a push: CAS IDLE -> QUEUED (+ ready_post), RUNNING -> AGAIN. */
inline sched_stream(idx) {
  /* relaxed load, then CAS from what it read (a failed CAS retries with the value it found):
   * one step on the current value */
  atomic {
    assert(OURS(idx, g));
    if
    :: sched[idx] == RUN_IDLE -> sched[idx] = RUN_QUEUED; READY_POST(idx) /* then ready_post */
    :: sched[idx] == RUN_RUNNING -> sched[idx] = RUN_AGAIN
    :: else /* QUEUED, AGAIN: someone will look */
    fi
  }
}

/* rec_check (client.c): let go of the claim lock once the answer (OPEN/ENDED) is there; a
 * record whose GUID changed is not ours any more. */
inline rec_check(st) {
  if
  :: clk_held[me] && st != ST_CLAIMED -> clk_held[me] = 0 /* seg_claim_unlock */
  :: else
  fi;
  if :: rguid[idx] != g -> goto fin :: else fi
}

/* The client's death (SIGKILL at any step): the kernel lets go of its locks, its pidfd
 * becomes readable; it touches nothing any more. */
inline die() {
  atomic {
    dead[me] = 1;
    if :: boot_lock == me -> boot_lock = 0 :: else fi;
    clk_held[me] = 0;
    if :: holder[0] == me -> holder[0] = 0 :: else fi;
    if :: holder[1] == me -> holder[1] = 0 :: else fi
  }
}

proctype Client(byte me) {
  byte wg, ws, idx, g, st, s, tries;
  bool ok;
  {
    tries = 0;
take_offer:
    atomic { boot_lock == 0 -> boot_lock = me }; /* seg_boot_lock (kernel) */
    if
    :: hstate != SRV_READY -> boot_lock = 0; goto done /* -EPIPE */
    :: else
    fi;
    atomic { wg = offer_gen; ws = offer_st }; /* acquire of offer_state */
    if
    :: ws == OFFER_UP ->
       atomic { idx = offer_idx; g = offer_guid }; /* relaxed, after the acquire */
       if
       :: rstate[idx] == ST_OFFERED && rguid[idx] == g && CLAIM_HOLDER(idx, g) == 0 ->
          /* seg_claim_lock; the claim (relaxed stores); CLAIMED (release). One step here:
           * nobody looks at the claim lock or the fields before it reads CLAIMED, and a death
           * in between lets go of the lock as if it came before. */
          atomic {
            clk_held[me] = 1; clk_idx[me] = idx; clk_g[me] = g;
            assert(holder[idx] == 0); /* never held by two clients */
            holder[idx] = me;
            owner_pid[idx] = me;
            assert(OURS(idx, g));
            rstate[idx] = ST_CLAIMED
          };
          atomic { /* CAS from the word we read; seg_boot_unlock; ctl_wake */
            if :: offer_gen == wg && offer_st == ws -> offer_st = OFFER_TAKEN :: else fi;
            boot_lock = 0;
            wg = 0; ws = 0; tries = 0
          };
          goto claimed
       :: else ->
          /* inconsistent or its claim lock held: mark it spent (CAS from the word we read) */
          atomic {
            if
            :: offer_gen == wg && offer_st == ws -> offer_st = OFFER_TAKEN; ok = 1
            :: else -> ok = 0
            fi
          };
          if
          :: !ok && tries < MAXTRY -> boot_lock = 0; tries++; goto take_offer
          :: !ok && tries >= MAXTRY -> boot_lock = 0; goto done
          :: ok
          fi
       fi
    :: else
    fi;
    boot_lock = 0;
    /* nothing on offer: sleep on boot_wake until the next offer, or the deadline */
    if
    :: tries < MAXTRY && (offer_gen != wg || hstate != SRV_READY) -> tries++; goto take_offer
    :: true -> goto done /* -ETIMEDOUT */
    fi;
claimed:
    /* stream_open: sched_stream (our first message may follow at once) */
    sched_stream(idx);
    if
    :: me == 1 -> /* eng_stream_close: push CLOSE, then wait for the acknowledgement */
       atomic { assert(OURS(idx, g)); c2s[idx] = 1 }; /* chan_send: release of p_tail */
       sched_stream(idx);
       do
       :: s2c[idx] -> s2c[idx] = 0; break /* the ack (or ERROR): ended */
       :: !s2c[idx] ->
          atomic {
            st = rstate[idx]; /* stream_state: acquire */
            rec_check(st)
          };
          if
          :: st == ST_ENDED && !s2c[idx] -> st = 0; break
          :: else ->
             /* eng_client_wait: the wake word moves, or the deadline, or the server gone */
             if
             :: s2c[idx] || rstate[idx] != st || rguid[idx] != g || hstate == SRV_STOPPED -> st = 0
             :: true -> st = 0; break /* -ETIMEDOUT */
             fi
          fi
       od
    :: /* eng_stream_abort: FIN at once (client 2 always: the racer) */
       skip
    fi;
fin:
    /* stream_end: the client's last touch of the record */
#ifdef MUT_UNLOCK_BEFORE_FIN
    clk_held[me] = 0; /* seg_claim_unlock first, as the code has it today */
    if
    :: rguid[idx] == g -> /* still ours: sched_fin (swap, a full barrier) */
       atomic { /* sched_fin: swap (full barrier), then ready_post if it was IDLE */
         assert(OURS(idx, g));
         if :: sched[idx] == RUN_IDLE -> READY_POST(idx) :: else fi;
         sched[idx] = RUN_FIN;
         holder[idx] = 0
       }
    :: else
    fi;
#else
    if
    :: rguid[idx] == g ->
       atomic { /* sched_fin: swap (full barrier), then ready_post if it was IDLE */
         assert(OURS(idx, g));
         if :: sched[idx] == RUN_IDLE -> READY_POST(idx) :: else fi;
         sched[idx] = RUN_FIN;
         holder[idx] = 0
       }
    :: else
    fi;
    clk_held[me] = 0; /* the claim lock after the FIN */
#endif
    if :: holder[idx] == me -> holder[idx] = 0 :: else fi; /* not ours any more either way */
done:
    /* the process exits (pidfd readable, locks gone), or lives on */
    if
    :: dead[me] = 1
    :: skip
    fi
  } unless { kill == me -> die() }
}

/* eng_server_stop (server.c): STOPPING; the offer withdrawn (a new generation, NONE, release);
 * stop; workers and control thread joined; every open stream ended (-ESHUTDOWN); STOPPED. */
#ifdef WITH_STOP
active proctype Stopper() {
  byte i;
  if
  :: skip
  :: hstate = SRV_STOPPING;
     atomic { offer_gen++; offer_st = OFFER_NONE };
     stop = 1;
     (ctl_out && worker_out);
     for (i : 0 .. NREC - 1) {
       if
       :: live[i] && known[i] && !ended[i] -> srv_end_stream(i)
       :: else
       fi
     }
     hstate = SRV_STOPPED
  fi
}
#else
active proctype Killer() {
  if
  :: kill = 1
#ifdef KILL2
  :: kill = 2
#endif
  :: skip
  fi
}
#endif

/* Once nothing can move: every on_open had its on_close; no slot leaked (all that is
 * allocated is the record on offer) unless the server stopped (it frees nothing). */
active proctype Checker() {
  timeout ->
  assert(opens == closes);
  assert(stop || !alloc[0] || (offered == 1 && rstate[0] == ST_OFFERED));
  assert(stop || !alloc[1] || (offered == 2 && rstate[1] == ST_OFFERED))
}

init {
  atomic {
    run Client(1);
    run Client(2)
  }
}
