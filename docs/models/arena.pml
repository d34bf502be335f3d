/*
 * arena.pml - the lock-free arena's cross-process free lists (issue 14, model 5).
 *
 * One size class's free list (alloc/arena_lf.c): a Treiber stack whose head word is {units,
 * tag} (arena_int.h head_pack), over NB = 3 blocks, each with a header word (FREE, or
 * USED(owner)) and a `next` link. At the start blocks 1 and 2 are listed (head = 1 -> 2) and
 * block 3 is USED by process 0. NP processes (default 2: a client, a worker) each run NOPS
 * (default 2; process 0: NOPS0 = 3, 2 with a writer) operations, each chosen freely:
 *   lf_alloc       lf_pop, then lf_split_claim's stamp (one class: j == c, the stamp is all
 *                  of it);
 *   lf_alloc_bulk  walk up to BULK_N = 2 links from the head, one CAS past them, then validate
 *                  and stamp each block in turn;
 *   lf_free        lf_block_of's read of the header, then lf_release (USED -> FREE by CAS,
 *                  then lf_push);
 *   lf_free_later  the same read and CAS, then the block into a private batch;
 *   lf_flush       link the batch privately, push the chain with one CAS;
 * and a process ends with an lf_flush of what its batch still holds (the engine flushes at the
 * end of every worker turn). A faulty peer (Dup) frees (lf_free), once, a block whose owner
 * has begun to free it: a second free of the same block, racing with the first (both read
 * USED) or after it (it reads FREE). The record-slot stack (arena.c arena_rec_alloc_common /
 * arena_rec_free_common) is the same protocol with RFREE/RUSED for FREE/USED, single pops and
 * immediate frees: this model's lf_pop, stamp, lf_release and lf_push.
 *
 * The duplicate free's scope. The arena cannot refuse a free of a block that was freed and
 * handed out again (ARCHITECTURE.md, "Double free": the header then reads USED again). So by
 * default a new owner's stamp of a block waits while a free of that block that read USED has
 * not finished its CAS (STAMP_SCOPE: a ghost guard, no C step): the duplicate free is checked
 * for what the arena promises. WITH_LATE_DUP lifts that and shows what happens otherwise
 * (README.md, "A duplicate free racing a reallocation"): with the same owner the header word
 * is the same (ABA on the header: the late CAS frees the new allocation); with OTHER_OWNER
 * (the block is never stamped again with a word a pending free expects) the CAS fails and,
 * as the code does now, the free gives up (-EALREADY: lf_lost_race); CODE_FREE_RETRY is the
 * code as first written, whose retry with the word found (lf_still_block) freed the new
 * owner's block (fixed after this model found it).
 *
 * Memory model. Sequential consistency, each step one access of the C (named at the step, with
 * the C11 ordering it relies on). Why that covers x86-TSO, where only locked instructions and
 * fences order a store before a later load: every write to the head is a locked CAS, which
 * drains the writer's store buffer first; every `next` store (lf_push, lf_flush) is into a
 * block private to the writer, before the CAS that publishes it, which drains it; USED -> FREE
 * is a locked CAS. The one plain store that can sit in a buffer while others run is the stamp
 * USED(owner) after a pop (lf_split_claim: relaxed; lf_alloc_bulk: release). Meanwhile the
 * block is off the list and its header reads FREE in memory; the only other accesses to it are
 * a duplicate free's read or failed CAS, which find FREE and return -EALREADY writing nothing,
 * and nobody else writes that header; so those accesses can be moved before the stamp, and
 * every TSO run has an SC run with the same outcome: no store buffer is needed. (The stamper
 * reads its own stamp by forwarding, as SC does.) With a writer forging links a second pop can
 * read that header too: TSO widens lf_pop's documented stamp window (below) up to the
 * stamper's next locked instruction; not modelled. C11: the pop's acquire load of the head
 * pairs with the pushing CAS (a full barrier: at least release), so the link and the FREE
 * header written before that CAS are visible; the bulk walk's second link was published by an
 * earlier push, and every head update is an RMW, so that push's release sequence runs through
 * every later CAS to the acquire; the validation's relaxed load of the header comes after the
 * pop's own CAS (a full barrier).
 *
 * Reductions. lf_flush's private links (stores into FREE blocks on no list) are one step: a
 * stale popper that reads one of those links fails its CAS (the tag), so nobody can observe
 * their order. arena_cut's CAS loop is one step (its one successful CAS). The counters
 * (free_blocks, used_blocks, allocs, frees) are not modelled; `cuts` is.
 *
 * The tag is a byte: a run has at most NP * (max(NOPS0, NOPS) + 1) + 1 successful head CASes
 * (one per operation, one per final flush, one for the duplicate free's push) and, with a
 * writer, a few cuts: far below 256, so it never wraps (asserted at every bump). The model
 * checks the ABA argument itself, not the wrap (2^32 updates during one stalled pop,
 * ARCHITECTURE.md).
 *
 * Ghosts (updated inside the step they describe), per block: gl (listed, as the protocol
 * intends), popd (bit q: process q took it off the list and has not validated it), held (bit
 * q: q validated it and has not freed it), stamped, gfreed (freed by CAS, not yet pushed: a
 * free between its CAS and its push, or a private batch), want (its owner has begun freeing
 * it, no successful free since), dupable (a duplicate free may start: from the owner's free to
 * the next stamp), pendc (frees that read USED and have not finished their CAS, by the word
 * they expect); mine[q]: the blocks q owns as an allocator's caller.
 *
 * Checked (safety: ./pan with deadlock detection):
 *   - in every state (a Checker in init): the list is acyclic, and a block is reachable from
 *     the head exactly when it is listed -- so no block is on the list twice, a held or batched
 *     block is never reachable, no listed block is lost --; every block is exactly one of
 *     listed, taken/held by one process, freed-not-yet-pushed; a listed block reads FREE;
 *   - a pop or bulk pop takes only a listed block (never a block someone holds);
 *   - the validation after a pop or bulk pop always reads FREE: no list is ever cut;
 *   - a successful USED -> FREE is the one free its owner asked for, once: a second free of
 *     the block (the Dup) is refused (-EALREADY), or it won the race and the owner's is;
 *     a refused free writes nothing;
 *   - at quiescence: every process done, no batch or free left half-way, every block listed
 *     once or held by exactly one process, stamped USED(it), in its mine: no block lost.
 *
 * Mutations (each removes a step the code has; check.sh expects a counterexample):
 *   MUT_NO_TAG           every head CAS compares and installs the units only (no tag bump).
 *   MUT_FREE_PLAIN       lf_release: USED -> FREE as the load then a plain store, no CAS.
 *   MUT_FLUSH_LINK_LATE  lf_flush: the chain's last link stored after the CAS that publishes
 *                        the chain.
 *   MUT_BULK_NO_REWALK   lf_alloc_bulk: after a failed CAS, retry with the head it returned but
 *                        the links walked from the old head (the C walks again).
 * With WITH_WRITER:
 *   MUT_POP_NO_VALIDATE  lf_pop: the block won is used without checking that it reads FREE.
 *   MUT_BULK_STAMP_LATE  lf_alloc_bulk: all blocks validated first, then all stamped (the C
 *                        stamps each before it looks at the next).
 *
 * Options:
 *   NP=3, NOPS=n, NOPS0=n  more processes (NP <= 3), more operations each.
 *   NB=4                 a fourth block, USED by process 1 at the start.
 *   NO_DUP               no faulty peer.
 *   WITH_WRITER          a process that writes the segment forges, once, at any moment, one
 *                        link or the head's units (the tag kept) to a block or to an offset
 *                        outside the geometry (implies NO_DUP; WITH_DUP keeps the peer). The
 *                        exact-list checks are off (the writer truncates the list, makes
 *                        cycles, points it at held blocks on purpose); checked is the defensive
 *                        promise of lf_pop / lf_alloc_bulk: a block whose validation passes is
 *                        held by no other process, except inside the documented window -- a
 *                        second pop that wins the same block between the first taker's CAS and
 *                        its stamp (arena_lf.c:166-169) --, which is counted (`window`) and
 *                        whose second taker then drops the block; a bulk pop never claims one
 *                        block twice; a bad offset or header cuts the list; at quiescence no
 *                        block is held by two processes.
 *   STRICT_STAMP         (with WITH_WRITER) the documented window is a failure: SPIN shows it
 *                        is reachable.
 *   WITH_LATE_DUP, OTHER_OWNER, CODE_FREE_RETRY: above.
 */

#ifndef NB
#define NB 3
#endif
#ifndef NP
#define NP 2
#endif
#ifndef NOPS
#define NOPS 2
#endif
#ifndef NOPS0
#ifdef WITH_WRITER
#define NOPS0 2
#else
#define NOPS0 3         /* process 0: three (a flush of two blocks needs them) */
#endif
#endif
#define BULK_N 2
#define BAD (NB + 1)    /* an offset outside the geometry (lf_block_ok fails): writer only */

/* header word (arena_int.h blk_word): FREE, USED(owner) */
#define HFREE 1
#define HUSED(q) (2 + (q))
#define IS_USED(x) ((x) >= 2)
#define OWNER(x) ((x) - 2)
#define BIT(x) (1 << (x))

/* Which stamps may come while a free of the block is pending (see Dup) */
#define PC(x, q) pendc[(x) * NP + (q)]
#if NP == 2
#define PENDING(x) (PC(x, 0) + PC(x, 1))
#elif NP == 3
#define PENDING(x) (PC(x, 0) + PC(x, 1) + PC(x, 2))
#else
#error NP must be 2 or 3
#endif
#if defined(WITH_LATE_DUP) && defined(OTHER_OWNER)
#define STAMP_SCOPE(x) (PC(x, p) == 0)
#elif defined(WITH_LATE_DUP)
#define STAMP_SCOPE(x) true
#else
#define STAMP_SCOPE(x) (PENDING(x) == 0)
#endif
#ifdef CODE_FREE_RETRY
#define NO_RETRY 0 /* the code before the fix: a failed CAS that finds a USED word retries */
#else
#define NO_RETRY 1 /* the code: a failed CAS gives up (-EALREADY), arena_lf.c lf_lost_race */
#endif

#if defined(WITH_WRITER) && !defined(WITH_DUP)
#define NO_DUP /* the faulty peer is the honest runs' matter; WITH_DUP: both */
#endif
#ifdef WITH_WRITER
#define FORGED 1
#else
#define FORGED 0
#endif

/* the head CAS: compares {units, tag}, installs {new units, tag + 1} */
#ifdef MUT_NO_TAG
#define HEAD_IS(hu, ht) (head_u == (hu))
#define BUMP(ht) (ht)
#else
#define HEAD_IS(hu, ht) (head_u == (hu) && head_t == (ht))
#define BUMP(ht) ((ht) + 1)
#endif

/* ---- shared memory (the segment) ---- */
byte head_u = 1;        /* cls[c].head: units */
byte head_t = 0;        /* cls[c].head: tag */
byte next[NB + 2];      /* blk_hdr.next (next[0], next[BAD]: never written, 0) */
byte hdr[NB + 1];       /* blk_hdr.word */

/* ---- ghosts ---- */
bool gl[NB + 1];        /* on the list (as the protocol intends) */
byte popd[NB + 1];      /* bit q: process q took it off the list, not validated yet */
byte held[NB + 1];      /* bit q: process q validated it (owns it) and has not freed it */
byte stamped[NB + 1];   /* bit q: ... and stamped it USED(q) */
bool gfreed[NB + 1];    /* freed by CAS, not yet pushed (a free's push or a batch) */
bool want[NB + 1];      /* its owner has begun freeing it; no successful free since */
bool dupable[NB + 1];   /* a duplicate free may start (from the owner's free to the re-stamp) */
byte pendc[(NB + 1) * NP]; /* [b * NP + q]: frees of block b between their header read and the
                              end of their CAS, expecting the word USED(q) */
byte mine[NP];          /* bit b: process q owns block b (an allocator's caller's view) */
byte ndone = 0;
byte cuts = 0;          /* hdr->cuts */
byte window = 0;        /* WITH_WRITER: second takers inside lf_pop's documented stamp window */

/* ---- the list as the links say ---- */
#define N1 head_u
#define N2 next[N1]
#define N3 next[N2]
#define N4 next[N3]
#define N5 next[N4]
#if NB == 3
#define ACYCLIC (N4 == 0)
#define REACH(x) ((x) == N1 || (x) == N2 || (x) == N3)
#define ALL(P) (P(1) && P(2) && P(3))
#elif NB == 4
#define ACYCLIC (N5 == 0)
#define REACH(x) ((x) == N1 || (x) == N2 || (x) == N3 || (x) == N4)
#define ALL(P) (P(1) && P(2) && P(3) && P(4))
#else
#error NB must be 3 or 4
#endif

#define B01(e) ((e) -> 1 : 0)
/* exactly one place, at most one holder, listed iff reachable, a listed block reads FREE */
#define BLOCK_OK(x) ((B01(gl[x]) + B01((held[x] | popd[x]) != 0) + B01(gfreed[x])) == 1 && \
                     ((held[x] | popd[x]) & ((held[x] | popd[x]) - 1)) == 0 && \
                     ((REACH(x) && gl[x]) || (!REACH(x) && !gl[x])) && \
                     (!gl[x] || hdr[x] == HFREE))
#define LIST_OK (ACYCLIC && ALL(BLOCK_OK))
/* at quiescence: nothing freed and not pushed, a held block is stamped USED(holder) and its
 * holder's */
#define HELD_OK(x) (!gfreed[x] && !want[x] && popd[x] == 0 && \
                    (held[x] == 0 || (IS_USED(hdr[x]) && held[x] == BIT(OWNER(hdr[x])) && \
                                      (mine[OWNER(hdr[x])] & BIT(x)) != 0)))
/* WITH_WRITER, at quiescence: no block held by two processes */
#define ONE_HOLDER(x) ((held[x] & (held[x] - 1)) == 0)

/* ------------------------------------------------------------------ ghost steps ----- */

/* Taken off the list by p's successful head CAS (lf_pop, lf_alloc_bulk). */
inline took(x) {
  assert(FORGED || gl[x]); /* a block popped is on the list: nobody else holds it */
  gl[x] = 0;
  popd[x] = popd[x] | BIT(p)
}

/* p's validation read exactly FREE: the block is p's (lf_pop, lf_alloc_bulk). Another holder
 * can only be one that has not stamped yet (its stamp would read USED): lf_pop's documented
 * window, reachable only through a forged link. */
inline validated(x) {
  popd[x] = popd[x] & ~BIT(p);
  if
  :: (held[x] & ~BIT(p)) != 0 ->
     assert(FORGED && (held[x] & stamped[x] & ~BIT(p)) == 0);
#ifdef STRICT_STAMP
     assert(0); /* a block handed to two owners inside the stamp window */
#endif
     window++;
     drop = 1 /* the second taker's block: not followed further */
  :: else -> held[x] = held[x] | BIT(p); drop = 0
  fi
}

/* A successful USED(OWNER(wv)) -> FREE of block x: the free its owner asked for, once. (With
 * a writer, another process may have popped x through a forged link and not validated it yet:
 * its validation, later, decides.) */
inline freed_ghost(x, wv) {
  assert(want[x] && (held[x] & BIT(OWNER(wv))) != 0 &&
         (FORGED || (held[x] == BIT(OWNER(wv)) && popd[x] == 0)));
  want[x] = 0;
  held[x] = held[x] & ~BIT(OWNER(wv));
  stamped[x] = stamped[x] & ~BIT(OWNER(wv));
  gfreed[x] = 1
}

/* ------------------------------------------------------------------ the list ------ */

/* arena_cut (arena.c:208): head {0, tag + 1} by CAS (the loop's one successful CAS). Whatever
 * was listed leaks until a rebuild. Honest runs never get here. */
#ifdef WITH_WRITER
inline arena_cut() {
  atomic {
    assert(head_t < 255);
    head_u = 0;
    head_t = BUMP(head_t);
    k = 1;
    do
    :: k <= NB -> gl[k] = 0; k++
    :: else -> break
    od;
    k = 0;
    cuts++
  }
}
#else
inline arena_cut() {
  assert(0) /* honest runs never cut */
}
#endif

/* lf_push (arena_lf.c:145) of block b (freed by p's CAS, private to p). */
inline lf_push() {
  /* eng_load_relaxed head: the CAS re-validates it */
  atomic { ou = head_u; ot = head_t };
  ok = 0;
  do
  :: /* eng_store_relaxed next: b is private; published by the CAS (a full barrier: C11 at
      * least release, so a popper's acquire of the head sees the link and the FREE header) */
     next[b] = ou;
     /* eng_cas_u64 (lock cmpxchg) {ou, ot} -> {b, ot + 1} */
     atomic {
       if
       :: HEAD_IS(ou, ot) ->
          assert(ot < 255);
          head_u = b; head_t = BUMP(ot);
          gfreed[b] = 0; gl[b] = 1; ok = 1
       :: else -> ou = head_u; ot = head_t
       fi
     };
     if
     :: ok -> break
     :: else
     fi
  od
}

/* lf_pop (arena_lf.c:171): b = the block won and validated, or 0 (empty or cut). */
inline lf_pop() {
  /* eng_load_acquire head: the link read below was written before the push that published
   * the block (C11: acquire pairs with the push CAS; TSO: loads in order) */
  atomic { ou = head_u; ot = head_t };
  ok = 0;
  do
  :: ou == 0 -> break
#ifdef WITH_WRITER
  :: ou == BAD -> /* !lf_block_ok: a writer forged the head */
     arena_cut(); break
#endif
  :: ou != 0 && ou != BAD ->
     /* eng_load_relaxed next: stale if the block was popped meanwhile, then the tag fails the
      * CAS */
     nx = next[ou];
     /* eng_cas_u64 {ou, ot} -> {nx, ot + 1}; on failure old = the value found (no reload of
      * the head, the CAS returned it) */
     atomic {
       if
       :: HEAD_IS(ou, ot) ->
          assert(ot < 255);
          head_u = nx; head_t = BUMP(ot);
          b = ou; ok = 1; took(b)
       :: else -> ou = head_u; ot = head_t
       fi
     };
     if
     :: ok -> break
     :: else
     fi
  od;
  if
  :: ok ->
#ifdef MUT_POP_NO_VALIDATE
     atomic { w = HFREE; validated(b) } /* the header not looked at */
#else
     /* eng_load_relaxed word: our CAS (a full barrier) ordered it after the push that
      * published the block, hence after its FREE */
     atomic {
       w = hdr[b];
       if
       :: w == HFREE -> validated(b)
       :: else ->
          assert(FORGED); /* honest runs never cut */
          popd[b] = popd[b] & ~BIT(p); /* not ours: dropped */
          drop = 1
       fi
     };
     if
     :: w != HFREE -> arena_cut()
     :: else
     fi;
#endif
     if
     :: drop -> b = 0
     :: else
     fi
  :: else -> b = 0
  fi
}

/* lf_split_claim (arena_lf.c:260) with j == c: the stamp (eng_store_relaxed word
 * USED(owner)), nothing else. */
inline lf_split_claim() {
  atomic {
    STAMP_SCOPE(b);
    assert(FORGED || held[b] == BIT(p));
    hdr[b] = HUSED(p);
    stamped[b] = stamped[b] | BIT(p);
    dupable[b] = 0;
    mine[p] = mine[p] | BIT(b)
  }
}

/* lf_alloc (arena_lf.c:411), one class: lf_pop, then lf_split_claim. */
inline lf_alloc() {
  lf_pop();
  if
  :: b != 0 -> lf_split_claim()
  :: else
  fi
}

/* The stamp of lf_alloc_bulk (eng_store_release word USED(owner): the block changes hands). */
inline bulk_stamp(x) {
  atomic {
    STAMP_SCOPE(x);
    hdr[x] = HUSED(p);
    stamped[x] = stamped[x] | BIT(p);
    dupable[x] = 0;
    mine[p] = mine[p] | BIT(x)
  }
}

/* lf_alloc_bulk (arena_lf.c:469) of up to BULK_N blocks. */
inline lf_alloc_bulk() {
  /* eng_load_acquire head, as in lf_pop */
  atomic { ou = head_u; ot = head_t };
  ok = 0;
  rewalk = 1;
  do
  :: rewalk ->
     u = ou; got = 0; bad = 0;
     do
     :: u != 0 && u != BAD && got < BULK_N ->
        /* eng_load_relaxed next (the walk; stale links make the CAS fail) */
        atomic { offs[got] = u; got++; u = next[u] }
#ifdef WITH_WRITER
     :: u == BAD && got < BULK_N -> bad = 1; break /* !lf_block_ok: the CAS cuts */
#endif
     :: else -> break
     od;
     if
     :: got == 0 && !bad -> break /* empty: 0 */
     :: else
     fi;
#ifdef MUT_BULK_NO_REWALK
     rewalk = 0;
#endif
     /* eng_cas_u64 {ou, ot} -> {u (0 if bad), ot + 1}: one CAS past every block walked */
     atomic {
       if
       :: HEAD_IS(ou, ot) ->
          assert(ot < 255);
          head_t = BUMP(ot);
#ifdef WITH_WRITER
          if
          :: bad -> head_u = 0; k = 1; /* a cut */
             do
             :: k <= NB -> gl[k] = 0; k++
             :: else -> break
             od;
             k = 0
          :: else -> head_u = u
          fi;
#else
          head_u = u;
#endif
          if
          :: got > 0 -> took(offs[0])
          :: else
          fi;
          if
          :: got > 1 -> took(offs[1])
          :: else
          fi;
          ok = 1
       :: else -> ou = head_u; ot = head_t
       fi
     };
     if
     :: ok -> break
     :: else
     fi
#ifdef MUT_BULK_NO_REWALK
  :: !rewalk -> /* MUT_BULK_NO_REWALK: the CAS again, with the new head and the old walk */
     atomic {
       if
       :: HEAD_IS(ou, ot) ->
          head_t = BUMP(ot); head_u = (bad -> 0 : u);
          took(offs[0]);
          if
          :: got > 1 -> took(offs[1])
          :: else
          fi;
          ok = 1
       :: else -> ou = head_u; ot = head_t
       fi
     };
     if
     :: ok -> break
     :: else
     fi
#endif
  od;
  if
  :: ok ->
#ifdef WITH_WRITER
     if
     :: bad -> cuts++ /* the CAS was a cut */
     :: else
     fi;
#endif
     /* validate and stamp, one block after the other: a block met twice (a forged cycle)
      * reads USED the second time */
     kept = 0; claim = 0;
     do
     :: kept < got ->
        /* eng_load_relaxed word: ordered after the pushes by our CAS, as in lf_pop */
        atomic {
          w = hdr[offs[kept]];
          if
          :: w == HFREE ->
             assert((claim & BIT(offs[kept])) == 0); /* never the same block twice */
             claim = claim | BIT(offs[kept]);
             validated(offs[kept]);
             if
             :: drop -> claim = claim & ~BIT(offs[kept])
             :: else
             fi
          :: else -> assert(FORGED) /* honest runs never cut */
          fi
        };
        if
        :: w != HFREE -> break
        :: else
        fi;
#ifndef MUT_BULK_STAMP_LATE
        if
        :: (claim & BIT(offs[kept])) != 0 -> bulk_stamp(offs[kept])
        :: else
        fi;
#endif
        kept++
     :: else -> break
     od;
#ifdef MUT_BULK_STAMP_LATE
     k = 0;
     do
     :: k < kept ->
        if
        :: (claim & BIT(offs[k])) != 0 -> bulk_stamp(offs[k])
        :: else
        fi;
        k++
     :: else -> k = 0; break
     od;
#endif
#ifdef WITH_WRITER
     if
     :: kept < got -> /* not exactly FREE: neither it nor the rest is used; cut */
        atomic {
          k = kept;
          do
          :: k < got ->
             if
             :: (claim & BIT(offs[k])) == 0 -> popd[offs[k]] = popd[offs[k]] & ~BIT(p)
             :: else
             fi;
             k++
          :: else -> k = 0; break
          od
        };
        arena_cut()
     :: else
     fi
#endif
  :: else
  fi
}

/* ------------------------------------------------------------------ frees --------- */

/* The header CAS of lf_release / lf_free_later (arena_lf.c:622-636, 538-550): USED -> FREE by
 * CAS from the word w the caller read; ok = 1 if this free did it. -EALREADY (ok = 0) if the
 * word is FREE. */
inline free_cas() {
  ok = 0;
  do
  :: w == HFREE -> break /* -EALREADY: nothing written */
  :: IS_USED(w) ->
#ifdef MUT_FREE_PLAIN
     /* the load was lf_block_of's; a plain store, no compare */
     atomic { hdr[b] = HFREE; freed_ghost(b, w); ok = 1; PC(b, OWNER(w))-- };
     break
#else
     /* eng_cas_u64 word w -> FREE (lock cmpxchg); on failure w = the value found */
     atomic {
       PC(b, OWNER(w))--;
       if
       :: hdr[b] == w -> hdr[b] = HFREE; freed_ghost(b, w); ok = 1
       :: else -> w = hdr[b]
       fi;
       if
       :: !ok && IS_USED(w) && !NO_RETRY -> PC(b, OWNER(w))++ /* will expect this word */
       :: else
       fi
     };
     if
     :: ok -> break
     :: !ok && w == HFREE -> break /* -EALREADY */
     :: !ok && IS_USED(w) && NO_RETRY -> break /* freed and handed out meanwhile: -EALREADY */
     :: !ok && IS_USED(w) && !NO_RETRY /* still a block (lf_still_block): try again */
     fi
#endif
  od
}

/* lf_block_of's read of the header (eng_load_acquire word) by block b's owner p: p gives the
 * block up (mine) and a duplicate free of it may now come. */
inline free_begin() {
  atomic {
    w = hdr[b];
    assert(w == HUSED(p) && (mine[p] & BIT(b)) != 0);
    mine[p] = mine[p] & ~BIT(b);
    want[b] = 1;
    dupable[b] = 1;
    PC(b, p)++
  }
}

/* lf_release (arena_lf.c:619): the CAS, then lf_push (the faulty peer's lf_free). */
inline lf_release() {
  free_cas();
  if
  :: ok -> lf_push()
  :: else
  fi
}

/* lf_free (arena_lf.c:639: lf_block_of's read, then lf_release: the CAS, then lf_push) or, with
 * later = 1, lf_free_later (arena_lf.c:531: the same read and CAS, then the block into the
 * private batch). One expansion for both (pan.c stays small). */
inline lf_free_or_later() {
  free_begin();
  free_cas();
  if
  :: ok && !later -> lf_push()
  :: ok && later -> bt[btn] = b; btn++
  :: else
  fi
}

/* lf_flush (arena_lf.c:555): link the batch privately, push the chain with one CAS. */
inline lf_flush() {
  /* eng_store_relaxed next of each block but the last: FREE blocks on no list, private */
  atomic {
    k = 1;
    do
    :: k < btn -> next[bt[k - 1]] = bt[k]; k++
    :: else -> k = 0; break
    od
  };
  /* eng_load_relaxed head */
  atomic { ou = head_u; ot = head_t };
  ok = 0;
  do
  :: 
#ifndef MUT_FLUSH_LINK_LATE
     /* eng_store_relaxed the last link: published by the CAS below (full barrier) */
     next[bt[btn - 1]] = ou;
#endif
     /* eng_cas_u64 {ou, ot} -> {first, ot + 1} */
     atomic {
       if
       :: HEAD_IS(ou, ot) ->
          assert(ot < 255);
          head_u = bt[0]; head_t = BUMP(ot);
          k = 0;
          do
          :: k < btn -> gfreed[bt[k]] = 0; gl[bt[k]] = 1; k++
          :: else -> k = 0; break
          od;
          ok = 1
       :: else -> ou = head_u; ot = head_t
       fi
     };
     if
     :: ok -> break
     :: else
     fi
  od;
#ifdef MUT_FLUSH_LINK_LATE
  next[bt[btn - 1]] = ou;
#endif
  atomic {
    k = 0;
    do
    :: k < btn -> bt[k] = 0; k++
    :: else -> k = 0; break
    od;
    btn = 0
  }
}

/* ------------------------------------------------------------------ processes ----- */

/* a block p owns, any (one step with the choice of operation's guard) */
#if NB == 3
#define PICK_MINE \
  if \
  :: (mine[p] & BIT(1)) != 0 -> b = 1 \
  :: (mine[p] & BIT(2)) != 0 -> b = 2 \
  :: (mine[p] & BIT(3)) != 0 -> b = 3 \
  fi
#else
#define PICK_MINE \
  if \
  :: (mine[p] & BIT(1)) != 0 -> b = 1 \
  :: (mine[p] & BIT(2)) != 0 -> b = 2 \
  :: (mine[p] & BIT(3)) != 0 -> b = 3 \
  :: (mine[p] & BIT(4)) != 0 -> b = 4 \
  fi
#endif

#define RESET_LOCALS \
  b = 0; w = 0; ou = 0; ot = 0; nx = 0; u = 0; got = 0; kept = 0; k = 0; claim = 0; \
  offs[0] = 0; offs[1] = 0; ok = 0; bad = 0; drop = 0; rewalk = 0; later = 0

/* An allocating and freeing process (a client, a worker): NOPS operations, each chosen
 * freely, then an lf_flush of what its batch still holds (the engine flushes at the end of
 * every worker turn). */
proctype Proc(byte p) {
  byte b, w, ou, ot, nx, u, got, kept, k, claim, nops, btn, lim;
  byte offs[BULK_N];
  byte bt[NB];
  bool ok, bad, drop, rewalk, later;
  lim = (p == 0 -> NOPS0 : NOPS);
  do
  :: nops < lim || btn > 0 ->
     if
     :: nops < lim -> lf_alloc()
     :: nops < lim -> lf_alloc_bulk()
     :: atomic { nops < lim && mine[p] != 0 -> PICK_MINE; if :: later = 0 :: later = 1 fi };
        lf_free_or_later()
     :: btn > 0 -> lf_flush() /* and, once NOPS are done, the final flush */
     fi;
     atomic { RESET_LOCALS; nops++ }
  :: else -> break
  od;
  atomic { nops = 0; lim = 0; ndone++ }
}

#ifndef NO_DUP
/* A faulty peer: a second free (eng_arena_free -> lf_free) of a block whose owner has begun to
 * free it, from then until the block is stamped again (and, but WITH_LATE_DUP, its CAS before
 * that stamp: STAMP_SCOPE). Must be refused (-EALREADY), or win the race (the owner's free is
 * then refused). */
#define DUP_READ(x) if :: IS_USED(w) -> PC(x, OWNER(w))++ :: else fi

proctype Dup() {
  byte p = NP, b, w, ou, ot, k;
  bool ok;
end_dup:
  if
  /* lf_block_of: eng_load_acquire word */
  :: atomic { dupable[1] -> b = 1; w = hdr[1]; DUP_READ(1) }
  :: atomic { dupable[2] -> b = 2; w = hdr[2]; DUP_READ(2) }
  :: atomic { dupable[3] -> b = 3; w = hdr[3]; DUP_READ(3) }
#if NB == 4
  :: atomic { dupable[4] -> b = 4; w = hdr[4]; DUP_READ(4) }
#endif
  fi;
  lf_release()
}
#endif

#ifdef WITH_WRITER
/* A process that writes the segment: once, at any moment, one link or the head's units (the
 * tag left as it is) becomes a block (a cycle, a held or batched block) or an offset outside
 * the geometry (BAD). 0, a truncation, only loses blocks: left out. */
proctype Writer() {
  byte t, v;
  atomic { select (t : 0 .. NB); select (v : 1 .. BAD) };
  atomic {
    if
    :: t == 0 -> head_u = v
    :: else -> next[t] = v
    fi;
    t = 0; v = 0
  }
}
#endif

init {
  byte k;
  atomic {
    /* blocks 1, 2 listed (head = 1 -> 2), block 3 USED by process 0 (NB = 4: 4 by process 1) */
    next[1] = 2;
    hdr[1] = HFREE; hdr[2] = HFREE;
    gl[1] = 1; gl[2] = 1;
    hdr[3] = HUSED(0); held[3] = BIT(0); stamped[3] = BIT(0); mine[0] = BIT(3);
#if NB == 4
    hdr[4] = HUSED(1); held[4] = BIT(1); stamped[4] = BIT(1); mine[1] = BIT(4);
#endif
    k = 0;
    do
    :: k < NP -> run Proc(k); k++
    :: else -> k = 0; break
    od;
#ifndef NO_DUP
    run Dup();
#endif
#ifdef WITH_WRITER
    run Writer()
#endif
  };
  /* The Checker: the list invariant in every state; once nothing can move, the end state. */
end_check:
  if
#ifndef WITH_WRITER
  :: atomic { !LIST_OK -> assert(LIST_OK) }
  :: timeout -> assert(ndone == NP && LIST_OK && ALL(HELD_OK) && cuts == 0)
#else
  :: timeout -> assert(ndone == NP && ALL(ONE_HOLDER))
#endif
  fi
}
