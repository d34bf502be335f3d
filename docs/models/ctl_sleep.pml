/*
 * ctl_sleep.pml - the control thread's calm sleep (issue 14, model 4).
 *
 * The control thread (engine/ctl.c srv_ctl_main: a tick = reap_tick + repair_arena, then
 * offer_republish, then ctl_sleep), one worker that finalises one record (engine/server.c
 * srv_finalize: finals++ with a locked add, then a relaxed read of ctl_asleep and, if set,
 * srv_ctl_nudge), and one claimer (engine/client.c take_offer under the bootstrap lock taken by
 * engine/seg.c seg_boot_trylock, which nudges if the header's ctl_asleep is set; then CLAIMED,
 * unlock, and the post-claim wake) that may die (SIGKILL) right after publishing CLAIMED, before
 * its wake. Nobody else comes: no other client, no death watch (the claimer's pid is not
 * watched before the control thread notices its claim).
 *
 * Memory model: x86-TSO for the control thread, the one thread whose plain stores matter here
 * (ctl_asleep in its private state, read by workers, and its copy in the header, read by
 * claimers): they go through a FIFO store buffer (csb) drained by a Flusher at any moment; its
 * eng_fence_full and every syscall that takes a kernel lock (futex wait, the F_OFD_GETLK of the
 * fix) first drain it. The worker's finals++ is a locked add (a full barrier); the claimer's
 * lock is a syscall (F_OFD_SETLK: the kernel's spinlocks are full barriers) and its CLAIMED
 * store precedes its unlock syscall, so their steps are sequentially consistent.
 *
 * Futex: compare-and-enqueue atomic; FUTEX_WAKE dequeues. A timed wait is a step that may
 * return at any time (its timeout); the wait without timeout returns only when woken.
 *
 * Time: the tick's decisions are abstracted. "Something due" = the offer left OFFERED and not
 * noticed yet, or the arena dirty (a finalisation not checked at idle), or in grace. The repair
 * (1 s rate limit) may run at any later tick while dirty. The grace period (CTL_GRACE_NS after
 * a calm sleep is broken) is one more tick with a timed sleep: the brief's abstraction; with
 * -DGRACE_OUTLASTS_CLAIM it lasts as long as a claimer holds the bootstrap lock (the timing
 * assumption "a claim takes less than 200 ms").
 *
 * Checked (safety): once nothing can move (the control thread in a calm sleep, the others done
 * or dead), every finalisation has been seen by the arena check (finals == finals_seen) and a
 * claimed record has been noticed (taken_ns set, posted). An invalid end state otherwise.
 *
 * The default model is the code with two changes this model needed (see README.md, "Two real
 * windows in the calm sleep"); CODE_* gives today's code:
 *   CODE_FINALS_LATE   ctl_sleep takes its finals snapshot itself (ctl.c ctl_sleep, after the
 *                      tick) instead of comparing with the tick's read (repair_arena).
 *   CODE_NO_BOOT_LOOK  after the fence, ctl_sleep does not look at the bootstrap lock and the
 *                      offer (it re-reads finals and stop only).
 * Mutations (each removes a step the code has; check.sh expects a counterexample):
 *   MUT_CTL_NO_FENCE   ctl_sleep: no fence and no re-read of finals before the futex wait.
 *   MUT_FINAL_NO_NUDGE srv_finalize: no read of ctl_asleep / no nudge after finals++.
 *   MUT_BOOT_NO_NUDGE  seg_boot_trylock: no nudge when ctl_asleep is set.
 */

#define V_SRV_ASLEEP 1 /* srv->ctl_asleep (private, read by workers) */
#define V_HDR_ASLEEP 2 /* hdr->ctl_asleep (header hint, read by claimers) */

/* ---- memory ---- */
byte finals = 0;        /* srv->finals (workers: eng_faa) */
bool srv_asleep = 0;    /* srv->ctl_asleep */
bool hdr_asleep = 0;    /* sg->hdr->ctl_asleep */
byte ctl_wake = 0;      /* sg->hdr->ctl_wake (futex word) */
bool boot = 0;          /* the bootstrap lock (OFD lock byte SEG_LOCK_BOOT) */
bool claimed = 0;       /* the offered record's state is CLAIMED (r->state) */
bool noticed = 0;       /* the control thread saw the claim (taken_ns set, posted) */
byte finals_seen = 0;   /* srv->finals_seen: finalisations the arena check covered */

/* ---- kernel ---- */
bool c_asleep = 0;      /* the control thread is queued on ctl_wake */

chan csb = [2] of { byte, byte };

active proctype Flusher() {
  byte v, x;
end_flush:
  do
  :: atomic { csb?v,x ->
       if
       :: v == V_SRV_ASLEEP -> srv_asleep = x
       :: else -> hdr_asleep = x
       fi;
       v = 0; x = 0 }
  od
}

#define CFENCE (len(csb) == 0)

/* srv_ctl_nudge / eng_ctl_nudge (internal.h): eng_faa_u32(&ctl_wake, 1), FUTEX_WAKE. */
inline nudge() {
  ctl_wake++;
  c_asleep = 0
}

/* ---------------------------------------------------------------------- worker ----- */

/* srv_finalize (server.c): eng_faa_u32(&finals, 1) (locked: full barrier), then a relaxed read
 * of srv->ctl_asleep; set? srv_ctl_nudge. Dekker with ctl_sleep's store, fence, re-read. */
active proctype Worker() {
  finals++;
#ifndef MUT_FINAL_NO_NUDGE
  if
  :: srv_asleep -> nudge()
  :: else
  fi
#endif
}

/* ---------------------------------------------------------------------- claimer ----- */

/* take_offer (client.c) under seg_boot_trylock (seg.c): lock (syscall: a barrier), read the
 * header's ctl_asleep (relaxed) and nudge if set; CLAIMED (release store); then either SIGKILL
 * (the kernel drops the lock) or CAS the offer slot's state, unlock, and the post-claim nudge. */
bool inside = 0; /* the claimer holds the bootstrap lock (ghost, for GRACE_OUTLASTS_CLAIM) */
active proctype Claimer() {
  atomic { boot == 0 -> boot = 1; inside = 1 };
#ifndef MUT_BOOT_NO_NUDGE
  if
  :: hdr_asleep -> nudge()
  :: else
  fi;
#endif
  claimed = 1;
  if
  :: atomic { boot = 0; inside = 0 } /* SIGKILL: the kernel lets go of the OFD lock */
  :: atomic { boot = 0; inside = 0 }; /* seg_boot_unlock */
     /* the post-claim wake (take_offer): eng_faa_u32(&ctl_wake, 1) (locked), then the
      * FUTEX_WAKE only if the header's ctl_asleep is non-zero (no system call while the
      * control thread runs). A sleep the control thread is about to
      * start compares ctl_wake with its seq after its fence, so the add alone stops it. */
     ctl_wake++;
     if
     :: hdr_asleep -> c_asleep = 0
     :: true /* or not: take_offer skips the FUTEX_WAKE while half the offer slots or more
              * are still up (engine layout 6); the bootstrap lock's nudge above and the
              * control thread's look after its fence must do without it */
     fi
  fi
}

/* ---------------------------------------------------------------- control thread ----- */

active proctype Ctl() {
  byte seq, f, ftick;
  bool dirty = 0, grace = 0, quiet, calm_sleep;
end_loop:
  do
  :: true ->
     seq = ctl_wake; /* srv_ctl_main: seq = ctl_wake (acquire), at the top */
     /* the tick: reap_tick (quiet: nothing due) and repair_arena (reads finals; dirty if it
      * moved; the repair, rate-limited, runs at this tick or a later one) */
     ftick = finals;
     if
     :: ftick != finals_seen -> dirty = 1
     :: else
     fi;
     if
     :: dirty -> finals_seen = finals; dirty = 0 /* the arena check at idle */
     :: dirty -> skip                          /* not yet (at most once a second) */
     :: else
     fi;
     quiet = !dirty && !grace;
#ifdef GRACE_OUTLASTS_CLAIM
     if
     :: grace && !inside -> grace = 0 /* CTL_GRACE_NS passed, and so did any claim */
     :: else
     fi;
#else
     grace = 0; /* one tick of grace */
#endif
     /* offer_republish: still OFFERED? (acquire of r->state) */
     if
     :: claimed && !noticed ->
        noticed = 1 /* taken: taken_ns, ready_post, offer_new (a new offer, unclaimed) */
     :: else ->
        /* ctl_sleep(seq, quiet) */
        calm_sleep = 0;
        if
        :: !quiet -> skip /* eng_futex_wait(&ctl_wake, seq, TICK_NS): returns at the latest
                             at its timeout */
        :: else ->
           calm_sleep = 1; /* ctl_sleep returns true on this path, slept or not */
#ifdef CODE_FINALS_LATE
           f = finals; /* today: a snapshot taken here, after the tick */
#else
           f = ftick;  /* the fix: the finals the tick saw */
#endif
           csb!V_SRV_ASLEEP,1;
           csb!V_HDR_ASLEEP,1;
#ifndef MUT_CTL_NO_FENCE
           CFENCE; /* eng_fence_full: Dekker with srv_finalize (and seg_boot_trylock) */
           if
           :: finals != f -> goto awake
           :: else
           fi;
#endif
#ifndef CODE_NO_BOOT_LOOK
           /* the fix: Dekker with seg_boot_trylock's "lock; read ctl_asleep": a lock taken
            * before our store is held now (F_OFD_GETLK) or its claim is visible. */
           CFENCE; /* the F_OFD_GETLK syscall */
           if
           :: boot -> goto awake
           :: claimed && !noticed -> goto awake
           :: else
           fi;
#endif
           atomic { /* eng_futex_wait(&ctl_wake, seq, -1): a syscall: drains the buffer */
             CFENCE ->
             if
             :: ctl_wake != seq -> skip
             :: else -> c_asleep = 1
             fi
           };
end_calm:  (c_asleep == 0);
awake:
           csb!V_SRV_ASLEEP,0;
           csb!V_HDR_ASLEEP,0
        fi;
        if
        :: calm_sleep -> grace = 1 /* woken from a calm sleep: tick at once, and for a while */
        :: else
        fi
     fi;
     seq = 0; f = 0; ftick = 0; quiet = 0; calm_sleep = 0
  od
}

/* Once nothing can move: no finalisation unchecked, no claim unnoticed. */
active proctype Checker() {
end_check:
  timeout ->
  assert(finals == finals_seen);
  assert(!claimed || noticed)
}
