/*
 * ready_set.pml - the two-level ready set and the workers' sleep (issue 14, model 3).
 *
 * Two posters (clients: sched_stream -> ready_post -> ready_set -> summary_set) and NW (1 or 2)
 * workers (engine/worker.c srv_worker_main: ready_take -> take_range -> take_word, then the sleep
 * protocol: srv_sleepers++, read srv_wake, ready_any, futex wait without timeout) over a ready
 * set of 2 bitmap words of 2 bits each and one summary word (bit w: word w may hold a set bit).
 * Poster 0 posts stream 0 (word 0, bit 0); poster 1 posts stream 1 (word 0, bit 1: the same
 * word) or stream 2 (word 1, bit 0: another word), chosen at start, so one run covers both.
 * Each poster posts NPOST times (a post may find its bit still set: it then serves that post).
 *
 * Memory model. x86-TSO, as the code argues (engine/sched.c, top comment): every write to the
 * ready set, the summary, srv_sleepers and srv_wake is a locked RMW (lock cmpxchg, lock xadd),
 * which drains the store buffer and is a full barrier, and the reads are plain loads. With no
 * plain store in the protocol no store buffer can hold anything a load could pass, so the
 * model is sequentially consistent, each step one load or one locked RMW. (On a weaker machine
 * the relaxed loads after a CAS -- take_word's re-read, summary_set's load, ready_post's read of
 * srv_sleepers -- would need seq_cst or a fence; the code targets x86-64.)
 *
 * Reductions. A CAS loop whose only effect is "set bit b if clear" (ready_set, summary_set) or
 * "clear bit b if set" (take_word's summary clear) is linearisable at its successful CAS, or
 * at the load that found nothing to do, so it is one atomic step here. take_word's load + CAS
 * loop that takes the lowest bit under the mask is likewise one step (take it, or return the
 * word seen). take_range loads the summary once and jumps to its first set bit; here it is
 * re-read at every word, which allows every C behaviour and more. ready_hi (ready_words) is
 * fixed: both words are scanned.
 *
 * Futex as the kernel does it: compare-and-enqueue is atomic, FUTEX_WAKE(1) dequeues one
 * waiter (any). No timeout (the code has none: srv_worker_main passes -1).
 *
 * Checked (safety: ./pan with deadlock detection):
 *   - no invalid end state: a Checker, once nothing can move, asserts the bitmap is empty (no
 *     posted bit with every worker asleep forever);
 *   - a stream is taken at most once per post that set its bit (ntaken <= nset);
 *   - the summary invariant (sched.c top comment): once a post is complete, its word's summary
 *     bit is set, unless a taker is between its clear of that summary bit and its re-read of
 *     the word (so a spinning worker's next scan sees every completed post). Not checked with
 *     WITH_WRITER (the writer breaks it on purpose).
 * Liveness (ltl "taken", -a -f, weak fairness): every post is eventually taken.
 *
 * Options:
 *   NW=2            two workers (default 1).
 *   WITH_WRITER     a writer of the segment clears a summary bit (WMAX times, at any moment):
 *                   the summary is a hint any client can spoil.
 * Mutations (check.sh says which fail what; see README.md for which are masked by which):
 *   MUT_NO_SUMMARY_RECHECK  take_word: clears the summary bit and does not re-read the word.
 *   MUT_SUMMARY_BEFORE_WORD ready_set: summary_set before the word's bit.
 *   MUT_ANY_NO_HEAL         ready_any: no summary_set for a non-empty word lacking its bit.
 *   MUT_ANY_READS_SUMMARY   ready_any: looks at the summary instead of the bitmap.
 *   MUT_SPIN_LEAVE_LATE     srv_worker_main: a spinner going to sleep lowers srv_spinners only
 *                           after its ready_any, so a poster that saw it spinning (and woke
 *                           nobody) can set its bit after that look.
 *
 * Spinners (srv_spinners, ready_post's second condition): a worker that finds nothing on a pass
 * counts itself spinning (locked add) until it takes a bit (spin_leave: locked sub, then, if
 * some worker sleeps and the summary shows a bit, it wakes one) or goes to sleep (the locked sub
 * after srv_sleepers++ and before ready_any). A poster that sees a spinner wakes nobody. The
 * spin_leave wake only shortens the wait of a bit posted while a spinner took another (a
 * latency matter: the taker comes back to its loop anyway, and the model has no run_stream to
 * last long), so leaving it out changes no verdict here.
 */

#ifndef NW
#define NW 1
#endif
#ifndef NPOST
#define NPOST 2
#endif
#ifndef WSPIN
#define WSPIN 2 /* ready_take passes before the sleep protocol (srv_worker_main's budget) */
#endif
#ifndef WMAX
#define WMAX 1
#endif

/* ---- shared memory (segment) ---- */
byte bitmap[2];        /* sg->bitmap[w]: bits 0..1 = streams 2w, 2w+1 */
byte summary = 0;      /* sg->summary[0]: bit w = word w may hold a set bit */
byte srv_sleepers = 0; /* hdr->srv_sleepers */
byte srv_wake = 0;     /* hdr->srv_wake (futex word) */
byte srv_spinners = 0; /* hdr->srv_spinners */

/* ---- kernel: the futex queue on srv_wake ---- */
bool asleep[NW];

/* ---- ghosts (updated inside the step they describe) ---- */
byte nset[4];       /* posts that set stream i's bit (ready_set's CAS succeeded) */
byte ntaken[4];     /* takes of stream i */
bool inflight[4];   /* a post of stream i is between its first ready-set step and its last */
byte window[2];     /* takers between their clear of summary bit w and their re-read of w */
byte posters_done = 0;

#define WBIT(w) (1 << (w))
#define EMPTY (bitmap[0] == 0 && bitmap[1] == 0)

/* eng_futex_wake(&srv_wake, 1): one queued waiter, any */
inline futex_wake_one() {
  atomic {
    if
    :: asleep[0] -> asleep[0] = 0
#if NW > 1
    :: asleep[1] -> asleep[1] = 0
#endif
    :: else
    fi
  }
}

/* ------------------------------------------------------------------------- worker ----- */

/* take_word(wi, mask) (sched.c). Step 1, the load + CAS loop: take the lowest bit of the word
 * under mask, or return the word seen (old). If nothing was taken and the word was empty:
 * step 2, clear its summary bit (CAS loop, "clear if set"); step 3, re-read the word (relaxed;
 * after a locked CAS on x86, so it cannot pass the clear); step 4, if not empty, summary_set
 * (relaxed load, CAS if clear: "set if clear"). */
inline take_word() {
  atomic {
    old = bitmap[w];
    if
    :: (old & mask) != 0 ->
       if
       :: (old & mask & 1) != 0 -> bitmap[w] = old & 2; idx = w * 2
       :: else -> bitmap[w] = old & 1; idx = w * 2 + 1
       fi;
       ntaken[idx]++;
       assert(ntaken[idx] <= nset[idx]); /* taken at most once per post */
       took = 1
    :: else
    fi
  };
  if
  :: atomic { !took && old == 0 ->
       summary = summary & ~WBIT(w);
#ifndef MUT_NO_SUMMARY_RECHECK
       window[w]++
#endif
     };
#ifndef MUT_NO_SUMMARY_RECHECK
     atomic {
       old = bitmap[w];
       if
       :: old == 0 -> window[w]--
       :: else
       fi
     };
     if
     :: atomic { old != 0 -> summary = summary | WBIT(w); window[w]-- }
     :: else
     fi
#endif
  :: else
  fi
}

/* ready_take (sched.c): take_range(sw, nw) then take_range(0, sw + 1) from bit `cursor`; with
 * 2 words of 2 bits the words visited (if their summary bit is set), with their masks, are:
 *   cursor 0: w0 mask 3, w1 mask 3, w0 mask 0     cursor 1: w0 mask 2, w1 mask 3, w0 mask 1
 *   cursor 2: w1 mask 3, w0 mask 3, w1 mask 0     cursor 3: w1 mask 2, w0 mask 3, w1 mask 1
 * (a mask-0 visit takes nothing but still clears the summary bit of an empty word, as the C
 * does). Each visit: a relaxed load of the summary, then take_word. */
inline ready_take() {
  do
  :: atomic { !took && k < 3 ->
       w = (k == 1 -> 1 - cursor / 2 : cursor / 2);
       mask = (k == 1 -> 3 : (k == 0 -> (cursor % 2 == 0 -> 3 : 2) : cursor % 2));
       k++;
       old = summary & WBIT(w)
     };
     if
     :: old != 0 -> take_word()
     :: else
     fi
  :: else -> break
  od;
  /* srv_worker_main: a pass without work counts us spinning (eng_faa srv_spinners: locked); a
   * take leaves the spin (spin_leave: locked sub, then sleepers and the summary read, one
   * sleeper woken if both say so) */
  if
  :: took && spinning ->
     atomic { srv_spinners--; spinning = 0 };
     if
     :: srv_sleepers != 0 && summary != 0 -> srv_wake++; futex_wake_one()
     :: else
     fi
  :: !took && !spinning -> atomic { srv_spinners++; spinning = 1 }
  :: else
  fi;
  /* srv_worker_main: work resets the spin count (run_stream is not modelled) */
  atomic {
    if
    :: took -> cursor = (idx + 1) % 4; spins = 0
    :: else -> spins++
    fi;
    took = 0; k = 0; w = 0; mask = 0; old = 0; idx = 0
  }
}

/* ready_any (sched.c): reads the bitmap itself (relaxed); a non-empty word gets its summary
 * bit back (summary_set). */
inline any_word(wi) {
#ifdef MUT_ANY_READS_SUMMARY
  atomic { if :: (summary & WBIT(wi)) != 0 -> any = 1 :: else fi }
#else
  atomic { if :: bitmap[wi] != 0 -> any = 1; old = 1 :: else fi };
#ifndef MUT_ANY_NO_HEAL
  if
  :: atomic { old != 0 -> summary = summary | WBIT(wi); old = 0 }
  :: else
  fi
#else
  old = 0
#endif
#endif
}

/* srv_worker_main (worker.c): WSPIN passes of ready_take without work, then announce
 * (eng_faa srv_sleepers: locked), stop counting as a spinner (eng_faa srv_spinners: locked),
 * read srv_wake (acquire), ready_any, futex wait without timeout (compare and enqueue
 * atomically), srv_sleepers-- (locked). */
active [NW] proctype Worker() {
  byte spins = 0, cursor = 0, k = 0, w = 0, mask = 0, old = 0, idx = 0, seq = 0;
  bool took = 0, any = 0, spinning = 0;
end_loop:
  do
  :: spins < WSPIN -> ready_take()
  :: atomic { spins >= WSPIN -> srv_sleepers++ };
#ifndef MUT_SPIN_LEAVE_LATE
     atomic { if :: spinning -> srv_spinners--; spinning = 0 :: else fi };
#endif
     seq = srv_wake;
     any_word(0);
     any_word(1);
#ifdef MUT_SPIN_LEAVE_LATE
     atomic { if :: spinning -> srv_spinners--; spinning = 0 :: else fi };
#endif
     if
     :: any -> skip
     :: else ->
        atomic {
          if
          :: srv_wake != seq -> skip
          :: else -> asleep[_pid] = 1
          fi
        };
end_sleep: (asleep[_pid] == 0)
     fi;
     atomic { srv_sleepers--; spins = 0; seq = 0; any = 0 }
  od
}

/* ------------------------------------------------------------------------- posters ----- */

/* ready_post (sched.c) of stream idx: ready_set -- the word's bit by CAS (or found set), then
 * summary_set (relaxed load, CAS if clear) --, then a relaxed read of srv_sleepers (after a
 * locked CAS, or after the CAS that set sched: it cannot pass it); one asleep and none
 * spinning (a relaxed read of srv_spinners)? eng_faa_u32 (srv_wake) and FUTEX_WAKE(1). Dekker with the worker's "srv_sleepers++ (locked);
 * ready_any()". The caller's CAS of sched (sched_stream) came first and orders its ring push. */
inline ready_post() {
#ifdef MUT_SUMMARY_BEFORE_WORD
  atomic { n++; inflight[idx] = 1; summary = summary | WBIT(idx / 2) };
  atomic {
    if
    :: (bitmap[idx / 2] & (1 << (idx % 2))) == 0 ->
       bitmap[idx / 2] = bitmap[idx / 2] | (1 << (idx % 2)); nset[idx]++
    :: else
    fi;
    inflight[idx] = 0
  };
#else
  atomic {
    n++;
    inflight[idx] = 1;
    if
    :: (bitmap[idx / 2] & (1 << (idx % 2))) == 0 ->
       bitmap[idx / 2] = bitmap[idx / 2] | (1 << (idx % 2)); nset[idx]++
    :: else /* found set: serves this post too */
    fi
  };
  atomic { summary = summary | WBIT(idx / 2); inflight[idx] = 0 };
#endif
  /* two relaxed loads: srv_sleepers, then srv_spinners; wake only if one sleeps and none
   * spins */
  s = srv_sleepers;
  if
  :: s != 0 && srv_spinners == 0 ->
     srv_wake++;
     futex_wake_one()
  :: else
  fi;
  s = 0
}

/* Poster 0 posts stream 0 (word 0); poster 1 stream 1 (word 0) or 2 (word 1). */
active [2] proctype Poster() {
  byte idx = 0, n = 0, s = 0;
  if
  :: _pid == NW -> idx = 0
  :: _pid != NW -> idx = 1 /* the same word as poster 0 */
  :: _pid != NW -> idx = 2 /* another word */
  fi;
  do
  :: n < NPOST -> ready_post()
  :: else -> break
  od;
  posters_done++
}

#ifdef WITH_WRITER
/* A process that writes the segment: clears a summary bit, WMAX times, at any moment. */
active proctype Writer() {
  byte n = 0;
end_writer:
  do
  :: n < WMAX -> n++; summary = summary & ~WBIT(0)
  :: n < WMAX -> n++; summary = summary & ~WBIT(1)
  :: n >= WMAX -> break
  od
}
#define SUMMARY_INV true
#elif defined(NO_SUMMARY_INV)
#define SUMMARY_INV true
#else
/* The summary invariant: in word w, a set bit whose post is complete (not in flight), with no
 * taker between its clear of summary bit w and its re-read, has summary bit w set. */
#define WORD_OK(w) ((summary & WBIT(w)) != 0 || window[w] != 0 || \
                    (((bitmap[w] & 1) == 0 || inflight[2 * (w)]) && \
                     ((bitmap[w] & 2) == 0 || inflight[2 * (w) + 1])))
#define SUMMARY_INV (WORD_OK(0) && WORD_OK(1))
#endif

/* Watches the summary invariant in every state; once nothing can move (everyone asleep or
 * done), the bitmap must be empty: a posted bit with every worker asleep is a sleep forever. */
active proctype Checker() {
end_check:
  if
  :: atomic { !SUMMARY_INV -> assert(SUMMARY_INV) }
  :: timeout -> assert(EMPTY)
  fi
}

/* Liveness: every post is taken (the posters are done and the bitmap is empty). */
ltl taken { <> (posters_done == 2 && EMPTY) }
