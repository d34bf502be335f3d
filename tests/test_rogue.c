/*
 * test_rogue.c - the failure model's promise to a segment shared with a faulty writer (issue 10),
 * held against engine-rogue (tests/rogue.c) with the real binaries:
 *
 *   no sequence of writes to the segment by a process of the segment's own user crashes or
 *   hangs the server, or puts under a final name a file whose bytes differ from its source;
 *   honest streams keep working or fail with a reason; once the writer is gone the segment is
 *   back to its baseline (records and buffer blocks in use) within a few control ticks, new
 *   clients attach and transfer, and the server stops cleanly.
 *
 * Per seed (ROGUE_SEEDS, default "1 2 3"; each a test of its own): 12 source files of known
 * contents (0 B to 32 MiB), a 32 MiB segment with 64 KiB chunks, engine-server logging to a
 * file, two honest loops of engine-client rounds (each round a fresh process over the loop's
 * own files; a round may fail under attack, but it must say why), and engine-rogue for
 * ROGUE_SECONDS (default 4). When the rogue exits, the loops finish their current round and
 * stop; then:
 *   - the server never died, and its log shows no crash;
 *   - every failed round's output names a reason for every file it did not deliver (a client
 *     killed by a signal, or hung past 60 s, breaks the promise);
 *   - every file under a final name is byte-identical to its source (a missing one is fine; a
 *     name no client sent is not: it was changed in flight);
 *   - every file a client said was "delivered and verified" is under its final name;
 *   - no .eng-* temporary file remains;
 *   - within 5 s (claim deadline 2 s + ticks + one idle rebuild) the segment holds exactly the
 *     record on offer and no buffer block;
 *   - the log says what was healed or reclaimed;
 *   - a fresh engine-client delivers a file byte-identical;
 *   - SIGTERM stops the server with status 0 and the segment removed.
 * Every problem is collected, and reported together at the end with the evidence (the rogue's
 * summary, the reasons the honest rounds gave, the arena's statistics and the blocks left in
 * use, how the record on offer differs from a fresh one, the end of the server log, which is
 * also kept whole in /tmp). ROGUE_ONLY / ROGUE_SKIP (engine-rogue's categories) narrow the
 * attack down to find which writes break a promise.
 *
 * tests/rogue-soak.sh runs it long. Only this process asserts; children are fork+exec'd real
 * binaries (xfer_util.h). Every loop is bounded in count and time, every wait has a deadline.
 */
#include "xfer_util.h"

#include <criterion/parameterized.h>
#include <stdarg.h>
#include <sys/file.h>

#include "arena_int.h" /* diagnostics: the headers of blocks left in use */
#include "internal.h"

#define MiB            (1024ull * 1024ull)
#define NFILES         12
#define FRESH_ID       100
#define ROUND_MS       30000  /* an honest round that runs longer than this hangs */
#define BASELINE_MS    5000   /* back to baseline within this, once everything stopped */
#define TEMPS_MS       5000   /* temporary files gone within this */
#define SECONDS_MAX    800    /* per seed: what fits twice in the test's timeout */
#define TEST_TIMEOUT_S 1800.0 /* a seed may wait for another (Criterion runs 2 at once) */
#define MAX_SEEDS      64
#define PROBLEMS_MAX   (64 * 1024)

static const uint64_t sizes[NFILES] = {
    0, 1, 63, 4033, 65472, 65473, 200003, MiB + 7, 2 * MiB - 1, 3 * MiB + 5, 5 * MiB, 32 * MiB};

/* ---- seeds ----------------------------------------------------------------------------- */

/* ROGUE_SEEDS ("1 2 3" by default): whitespace- or comma-separated numbers. Returns how many,
 * or -1 if the variable holds anything else. */
static int parse_seeds(uint64_t *out, int max)
{
        const char *s = getenv("ROGUE_SEEDS");
        if (s == NULL || *s == '\0')
                s = "1 2 3";
        int n = 0;
        while (*s) {
                if (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') {
                        s++;
                        continue;
                }
                char *end;
                errno = 0;
                unsigned long long v = strtoull(s, &end, 0);
                if (errno || end == s || *s == '-' || n == max)
                        return -1;
                out[n++] = v;
                s = end;
        }
        return n;
}

static uint64_t g_seeds[MAX_SEEDS];

ParameterizedTestParameters(rogue, promises_hold_while_a_rogue_writes_the_segment)
{
        int n = parse_seeds(g_seeds, MAX_SEEDS);
        if (n <= 0) { /* the test itself says what is wrong with the variable */
                g_seeds[0] = 0;
                n = 1;
        }
        return cr_make_param_array(uint64_t, g_seeds, (size_t)n);
}

static int rogue_seconds(void)
{
        const char *s = getenv("ROGUE_SECONDS");
        if (s == NULL || *s == '\0')
                return 4;
        char *end;
        long v = strtol(s, &end, 10);
        return *end || v < 0 || v > SECONDS_MAX ? -1 : (int)v;
}

/* ---- problems, collected and reported together ---------------------------------------- */

static char *P;
static size_t plen;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...)
{
        if (P == NULL)
                P = calloc(1, PROBLEMS_MAX);
        if (P == NULL || plen + 2 >= PROBLEMS_MAX)
                return;
        size_t room = PROBLEMS_MAX - plen - 2; /* and a newline and the NUL */
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(P + plen, room + 1, fmt, ap);
        va_end(ap);
        if (n > 0)
                plen += (size_t)n < room ? (size_t)n : room;
        P[plen++] = '\n';
        P[plen] = '\0';
}

/* The last `lines` lines of a text (a pointer into it). */
static const char *tail_of(const char *s, int lines)
{
        const char *p = s + strlen(s);
        while (p > s && lines >= 0) {
                p--;
                if (*p == '\n')
                        lines--;
        }
        return p == s ? s : p + 1;
}

/* Crash signatures a log must not hold. */
static const char *crash_in(const char *log)
{
        static const char *sigs[] = {"AddressSanitizer",
                                     "LeakSanitizer",
                                     "UndefinedBehaviorSanitizer",
                                     "runtime error:",
                                     "Segmentation fault",
                                     "Assertion `",
                                     "stack smashing",
                                     "double free or corruption",
                                     "malloc(): ",
                                     "free(): "};
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
                if (strstr(log, sigs[i]) != NULL)
                        return sigs[i];
        return NULL;
}

/* ---- the segment, measured from outside ----------------------------------------------- */

struct usage {
        bool ok;
        uint64_t recs, blocks;
        eng_arena_stats_t st;
        char check[200]; /* what eng_arena_check_leaks says */
        uint64_t leaked;
        char offer[400]; /* how the record on offer differs from a fresh offer ("" if not) */
        uint32_t offer_idx;
        char held[300]; /* the blocks in use: offset, size, owner (record index + 1) */
};

/* Which blocks are in use, by their headers (a diagnostic: whose are they?). */
static void held_blocks(const eng_arena_t *a, char *out, size_t n)
{
        size_t k = 0;
        int shown = 0;
        uint64_t step = 1ull << a->min_shift;
        out[0] = '\0';
        for (uint64_t off = (a->rec_base + step - 1) & ~(step - 1); off + step <= a->top;
             off += step) {
                uint64_t w = eng_load_relaxed_u64(&blk_at(a, off)->word);
                uint32_t c = blk_class(w), shift = a->min_shift + c;
                if (blk_magic(w) != BLK_MAGIC || blk_state(w) != BLK_USED || c >= a->nclasses ||
                    (off & ((1ull << shift) - 1)) != 0 || off + (1ull << shift) > a->top)
                        continue;
                if (shown++ < 6 && k < n)
                        k += (size_t)snprintf(out + k, n - k, "%s%llu (%llu KiB, owner %u)",
                                              k ? ", " : "", (unsigned long long)off,
                                              (unsigned long long)(1ull << shift) >> 10,
                                              blk_owner(w));
        }
        if (shown > 6 && k < n)
                snprintf(out + k, n - k, " and %d more", shown - 6);
}

/* What a record on offer looks like before anyone claimed it (engine/ctl.c offer_new):
 * zeroed identity but for GUID, epoch and depth; both rings empty at their start counters.
 * A diagnostic only (the promise is that the next client works): left-overs here are what a
 * gone writer left to the next client. Slot 0's offer. */
static void offer_diff(struct eng_seg *sg, char *out, size_t n)
{
        struct eng_offer *o = &sg->hdr->offers[0];
        size_t k = 0;
        out[0] = '\0';
        if (offer_state_of(eng_load_acquire_u32(&o->state)) != OFFER_UP) {
                snprintf(out, n, "nothing on offer in slot 0 (state %u)", o->state);
                return;
        }
        uint32_t idx = o->idx;
        struct eng_rec *r = seg_rec(sg, idx);
        if (r == NULL) {
                snprintf(out, n, "slot 0's idx %u is not a record", idx);
                return;
        }
        uint32_t d = sg->depth;
        struct {
                const char *what;
                uint64_t got, want;
        } f[] = {{"state", r->state, ST_OFFERED},
                 {"type", r->type, 0},
                 {"owner_pid", (uint32_t)r->owner_pid, 0},
                 {"session", r->session, 0},
                 {"user_id", r->user_id, 0},
                 {"depth", r->depth, d},
                 {"want_space", r->want_space, 0},
                 {"sched", r->sched, RUN_IDLE},
                 {"guid[0] vs offer", r->guid[0], o->guid[0]},
                 {"epoch", r->epoch, sg->line0.epoch},
                 {"c2s.p_head", r->c2s.r.p_head, UINT32_MAX - 3 * d},
                 {"c2s.p_tail", r->c2s.r.p_tail, UINT32_MAX - 3 * d},
                 {"c2s.c_head", r->c2s.r.c_head, UINT32_MAX - 3 * d},
                 {"c2s.size", r->c2s.r.size, d},
                 {"c2s.mask", r->c2s.r.mask, d - 1},
                 {"s2c.p_head", r->s2c.r.p_head, UINT32_MAX - 5 * d},
                 {"s2c.p_tail", r->s2c.r.p_tail, UINT32_MAX - 5 * d},
                 {"s2c.c_head", r->s2c.r.c_head, UINT32_MAX - 5 * d},
                 {"s2c.size", r->s2c.r.size, d},
                 {"s2c.mask", r->s2c.r.mask, d - 1}};
        for (size_t i = 0; i < sizeof(f) / sizeof(f[0]) && k < n; i++)
                if (f[i].got != f[i].want)
                        k += (size_t)snprintf(out + k, n - k, "%srecord %u %s = %llu (fresh: %llu)",
                                              k ? ", " : "", idx, f[i].what,
                                              (unsigned long long)f[i].got,
                                              (unsigned long long)f[i].want);
}

static struct usage measure(void)
{
        struct usage u;
        memset(&u, 0, sizeof(u));
        struct eng_seg sg;
        if (seg_attach(&sg, X.name) != 0) {
                snprintf(u.check, sizeof(u.check), "cannot map: %s", eng_errmsg());
                return u;
        }
        eng_arena_stats(&sg.arena, &u.st);
        u.recs = u.st.rec_used;
        u.blocks = u.st.buf_used_blocks;
        if (eng_arena_check_leaks(&sg.arena, &u.leaked, u.check, sizeof(u.check)) == 0)
                snprintf(u.check, sizeof(u.check), "consistent");
        u.offer_idx = sg.hdr->offers[0].idx;
        offer_diff(&sg, u.offer, sizeof(u.offer));
        held_blocks(&sg.arena, u.held, sizeof(u.held));
        seg_unmap(&sg);
        u.ok = true;
        return u;
}

static void describe(const struct usage *u, char *out, size_t n)
{
        const eng_arena_stats_t *s = &u->st;
        if (!u->ok) {
                snprintf(out, n, "%s", u->check);
                return;
        }
        size_t k = (size_t)snprintf(
            out, n,
            "records in use %llu (free %llu), buffer blocks in use %llu (%llu bytes), free %llu; "
            "rec_top %llu buf_bottom %llu top %llu; cuts %llu, bad frees %llu, failed %llu; "
            "check: %s, %llu byte(s) leaked; offer: %s (record %u); blocks in use by their "
            "headers: %s; classes (used/free):",
            (unsigned long long)s->rec_used, (unsigned long long)s->rec_free,
            (unsigned long long)s->buf_used_blocks, (unsigned long long)s->buf_used_bytes,
            (unsigned long long)s->buf_free_blocks, (unsigned long long)s->rec_top,
            (unsigned long long)s->buf_bottom, (unsigned long long)s->top,
            (unsigned long long)s->cuts, (unsigned long long)s->bad_frees,
            (unsigned long long)s->failed, u->check, (unsigned long long)u->leaked,
            u->offer[0] ? u->offer : "as fresh", u->offer_idx, u->held[0] ? u->held : "none");
        for (uint32_t c = 0; c < s->nclasses && k < n; c++)
                k += (size_t)snprintf(out + k, n - k, " %lluK %llu/%llu",
                                      (unsigned long long)(s->cls[c].block_bytes >> 10),
                                      (unsigned long long)s->cls[c].used_blocks,
                                      (unsigned long long)s->cls[c].free_blocks);
}

/* ---- honest loops ---------------------------------------------------------------------- */

struct loop {
        int no;
        pid_t pid;
        uint64_t t0;
        unsigned rounds, clean, failed_rounds;
        unsigned delivered, failed_files;
};

/* Reasons seen, for the summary. */
static struct {
        char why[96];
        unsigned n;
} reasons[24];

static void reason_seen(const char *why)
{
        char key[96];
        size_t k = 0;
        /* Drop what varies but says nothing: "stream 7: ", "stream 7 ", the segment's name. */
        if (strncmp(why, "stream ", 7) == 0 && why[7] >= '0' && why[7] <= '9') {
                why += 7;
                while (*why >= '0' && *why <= '9')
                        why++;
                why += *why == ':';
                why += *why == ' ';
        }
        if (strncmp(why, "cannot reach the server on ", 27) == 0 && strchr(why + 27, ':')) {
                why = strchr(why + 27, ':') + 1;
                why += *why == ' ';
        }
        /* "cannot open a stream: timed out: ..." -> up to the second colon, at most 80 bytes,
         * without the segment's name (it differs per test) */
        int colons = 0;
        for (size_t i = 0; why[i] && why[i] != '\n' && k < 80; i++) {
                if (strncmp(why + i, "/t-", 3) == 0) {
                        while (why[i + 1] && why[i + 1] != ' ' && why[i + 1] != ':')
                                i++;
                        key[k++] = '*';
                        continue;
                }
                if (why[i] == ':' && ++colons == 2)
                        break;
                key[k++] = why[i];
        }
        key[k] = '\0';
        for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
                if (reasons[i].n == 0) {
                        snprintf(reasons[i].why, sizeof(reasons[i].why), "%s", key);
                        reasons[i].n = 1;
                        return;
                }
                if (strcmp(reasons[i].why, key) == 0) {
                        reasons[i].n++;
                        return;
                }
        }
}

/* Stream ids some client said were "delivered and verified" (each must be under its final
 * name at the end: nothing removes a final file, and a delivery replaces one atomically). */
static bool said_delivered[NFILES + 1];

static const unsigned loop_ids[2][NFILES / 2] = {{1, 3, 5, 7, 9, 11}, {2, 4, 6, 8, 10, 12}};

static void round_start(struct loop *l)
{
        /* every file of the loop, starting at a different one each round */
        char ids[NFILES / 2][8];
        const char *args[2 + NFILES / 2];
        size_t k = 0;
        args[k++] = "-q";
        for (int i = 0; i < NFILES / 2; i++) {
                snprintf(ids[i], sizeof(ids[i]), "%u",
                         loop_ids[l->no][(i + l->rounds) % (NFILES / 2)]);
                args[k++] = ids[i];
        }
        char tag[16];
        snprintf(tag, sizeof(tag), "l%d", l->no);
        l->pid = xu_client_spawn(tag, args, k);
        l->t0 = xu_now_ms();
}

/* A round ended with status st: count it, and hold it to "fails with a reason". */
static void round_end(struct loop *l, int st)
{
        int code = xu_code(st);
        char tag[16];
        snprintf(tag, sizeof(tag), "l%d", l->no);
        char *out = xu_slurp(xu_path("%s.out", tag));
        char *err = xu_slurp(xu_path("%s.err", tag));
        l->rounds++;
        unsigned ok = (unsigned)xu_count(out, ": delivered and verified");
        for (const char *p = out; (p = strstr(p, "stream ")) != NULL; p++) {
                unsigned id;
                const char *eol = strchr(p, '\n');
                const char *v = strstr(p, ": delivered and verified");
                if (sscanf(p, "stream %u ", &id) == 1 && v != NULL && (eol == NULL || v < eol) &&
                    id >= 1 && id <= NFILES)
                        said_delivered[id] = true;
        }
        unsigned bad = 0, unexplained = 0;
        /* the message of the client's log line, after "engine-client[<pid>]: " */
        const char *said = strstr(err, "engine-client[");
        said = said ? strstr(said, "]: ") : NULL;
        said = said ? said + 3 : NULL;
        for (const char *p = out; (p = strstr(p, ": FAILED: ")) != NULL;) {
                p += strlen(": FAILED: ");
                bad++;
                if (*p == '\n' || *p == '\0')
                        unexplained++;
                else
                        reason_seen(p);
        }
        l->delivered += ok;
        l->failed_files += bad;
        if (code == 0 && bad == 0) {
                l->clean++;
        } else if (code == 1 && bad > 0 && unexplained == 0) {
                l->failed_rounds++; /* allowed under attack: each failure says why */
        } else if (code == 1 && bad == 0 && ok == 0 && said != NULL && strlen(said) > 8) {
                l->failed_rounds++; /* could not attach: it says why */
                reason_seen(said);
        } else {
                l->failed_rounds++;
                problem("honest round %u of loop %d ended with %s %d without a reason for every "
                        "file (%u delivered, %u failed, %u without a reason):\n--- stdout:\n%s--- "
                        "stderr:\n%s",
                        l->rounds, l->no, code >= 128 ? "signal" : "status",
                        code >= 128 ? code - 128 : code, ok, bad, unexplained, out, err);
        }
        free(out);
        free(err);
        l->pid = 0;
}

/* ---- the test ---------------------------------------------------------------------------- */

/* Criterion runs two tests of a binary at once; each seed needs both cores. */
static void serialise(void)
{
        int fd = open("/tmp/eng-test-rogue.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        cr_assert_geq(fd, 0, "lock file: %s", strerror(errno));
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
                ;
        /* kept open: released when this test's worker exits */
}

static void setup(void)
{
        (void)xu_run; /* helpers of xfer_util.h this suite does not need */
        (void)xu_assert_no_temps;
        (void)xu_log_wait;
        (void)xu_wait_temp;
        serialise();
        xu_setup();
}

static void teardown(void)
{
        xu_teardown();
}

ParameterizedTest(uint64_t *seedp, rogue, promises_hold_while_a_rogue_writes_the_segment,
                  .init = setup, .fini = teardown, .timeout = TEST_TIMEOUT_S)
{
        uint64_t seeds[MAX_SEEDS];
        cr_assert_gt(parse_seeds(seeds, MAX_SEEDS), 0,
                     "ROGUE_SEEDS='%s': want up to %d numbers separated by blanks or commas",
                     getenv("ROGUE_SEEDS"), MAX_SEEDS);
        int secs = rogue_seconds();
        cr_assert_geq(secs, 0, "ROGUE_SECONDS='%s': want 0..%d per seed (run more seeds instead)",
                      getenv("ROGUE_SECONDS"), SECONDS_MAX);
        uint64_t seed = *seedp;
        uint64_t t_start = xu_now_ms();

        /* Sources of known contents, and the options naming them. */
        const char *names[NFILES + 1];
        char namebuf[NFILES + 1][32];
        xu_stream_t streams[NFILES + 1];
        static char rel[NFILES + 1][48]; /* the options' paths, relative to the test folder */
        for (int i = 0; i <= NFILES; i++) {
                uint64_t size = i < NFILES ? sizes[i] : 3 * MiB + 1;
                if (i < NFILES)
                        snprintf(namebuf[i], sizeof(namebuf[i]), "f%02d-%llu.bin", i,
                                 (unsigned long long)size);
                else
                        snprintf(namebuf[i], sizeof(namebuf[i]), "fresh.bin");
                names[i] = namebuf[i];
                xu_make_file(xu_path("src/%s", names[i]), size, seed * 131 + (uint64_t)i + 1);
                streams[i].id = i < NFILES ? (unsigned)i + 1 : FRESH_ID;
                snprintf(rel[i], sizeof(rel[i]), "src/%s", names[i]);
                streams[i].file = rel[i];
        }
        xu_write_opts("size=\"32MiB\" chunk=\"64KiB\" timeout=\"5\"", streams, NFILES + 1);
        xu_mkdirs(X.out);

        xu_server_start();
        struct usage u0 = measure();
        char desc[2048];
        describe(&u0, desc, sizeof(desc));
        cr_assert(u0.ok && u0.recs == SEG_OFFERS && u0.blocks == 0,
                  "seed %llu: before anything happened the segment is not at its baseline (the "
                  "records on offer, no block): %s",
                  (unsigned long long)seed, desc);

        /* The honest loops, then the rogue. */
        struct loop loops[2] = {{.no = 0}, {.no = 1}};
        for (int i = 0; i < 2; i++)
                round_start(&loops[i]);
        char s_secs[16], s_seed[32];
        snprintf(s_secs, sizeof(s_secs), "%d", secs);
        snprintf(s_seed, sizeof(s_seed), "%llu", (unsigned long long)seed);
        /* ROGUE_ONLY / ROGUE_SKIP (comma-separated categories, see engine-rogue --help) narrow
         * the attack down, to find which writes break a promise. */
        char *rargv[12] = {
            ENG_BIN_DIR "/engine-rogue", "--name", X.name, "--seconds", s_secs, "--seed", s_seed};
        int ra = 7;
        const char *only = getenv("ROGUE_ONLY"), *skip = getenv("ROGUE_SKIP");
        if (only != NULL && *only != '\0') {
                rargv[ra++] = "--only";
                rargv[ra++] = (char *)only;
        }
        if (skip != NULL && *skip != '\0') {
                rargv[ra++] = "--skip";
                rargv[ra++] = (char *)skip;
        }
        rargv[ra] = NULL;
        pid_t rogue = xu_spawn(rargv, xu_path("rogue.out"), xu_path("rogue.err"));
        uint64_t t_rogue = xu_now_ms();
        int rogue_st = -1;
        bool server_died = false;
        uint64_t t_stop = 0; /* when the rogue was gone */

        /* Supervise: rounds go on until the rogue is gone, then each loop finishes its round. */
        for (;;) {
                uint64_t now = xu_now_ms();
                int st;
                if (rogue > 0 && xu_wait(rogue, 0, &st)) {
                        rogue_st = st;
                        rogue = 0;
                        t_stop = now;
                }
                if (rogue > 0 && now - t_rogue > (uint64_t)secs * 1000 + 30000) {
                        xu_kill(rogue);
                        rogue = 0;
                        t_stop = now;
                        problem("engine-rogue still running %d s after its %d s: killed", secs + 30,
                                secs);
                }
                if (xu_wait(X.server, 0, &st)) {
                        X.server = 0;
                        server_died = true;
                        char *log = xu_slurp(X.slog);
                        problem("engine-server ended with %s %d while the rogue ran (%.1f s in); "
                                "the end of its log:\n%s",
                                xu_code(st) >= 128 ? "signal" : "status",
                                xu_code(st) >= 128 ? xu_code(st) - 128 : xu_code(st),
                                (double)(now - t_rogue) / 1e3, tail_of(log, 60));
                        free(log);
                        break;
                }
                bool busy = false;
                for (int i = 0; i < 2; i++) {
                        struct loop *l = &loops[i];
                        if (l->pid > 0 && xu_wait(l->pid, 0, &st)) {
                                round_end(l, st);
                                if (rogue > 0)
                                        round_start(l);
                        } else if (l->pid > 0 && now - l->t0 > ROUND_MS) {
                                char tag[16];
                                snprintf(tag, sizeof(tag), "l%d", i);
                                xu_kill(l->pid);
                                l->pid = 0;
                                char *o = xu_output(tag);
                                problem("honest round %u of loop %d still running after %d s: "
                                        "hung (killed)\n%s",
                                        l->rounds + 1, i, ROUND_MS / 1000, o);
                                free(o);
                        }
                        busy |= l->pid > 0;
                }
                if (rogue == 0 && !busy)
                        break;
                xu_sleep_ms(5);
        }
        uint64_t t_quiet = xu_now_ms(); /* nobody but the server is left */
        uint64_t drain_ms = t_stop ? t_quiet - t_stop : 0;
        char *rogue_out = xu_slurp(xu_path("rogue.out"));
        char *rogue_err = xu_slurp(xu_path("rogue.err"));
        rogue_out[strcspn(rogue_out, "\n")] = '\0';
        if (rogue_st != -1 && xu_code(rogue_st) != 0)
                problem("engine-rogue ended with %d (it must attach and attack):\n%s%s",
                        xu_code(rogue_st), rogue_out, rogue_err);

        struct usage u = {0};
        uint64_t back_ms = 0;
        if (!server_died) {
                /* Temporary files go with the transfers the server ended. */
                uint64_t end = xu_now_ms() + TEMPS_MS;
                while (xu_temps() > 0 && xu_now_ms() < end)
                        xu_sleep_ms(10);
                if (xu_temps() > 0)
                        problem("%d temporary .eng-* file(s) still in the output folder %d ms "
                                "after the last client left",
                                xu_temps(), TEMPS_MS);

                /* The baseline: the record on offer, no block. */
                bool back = false;
                end = xu_now_ms() + BASELINE_MS;
                do {
                        u = measure();
                        if (u.ok && u.recs == u0.recs && u.blocks == 0) {
                                back = true;
                                break;
                        }
                        xu_sleep_ms(20);
                } while (xu_now_ms() < end);
                back_ms = xu_now_ms() - t_quiet;
                if (!back) {
                        describe(&u, desc, sizeof(desc));
                        char *log = xu_slurp(X.slog);
                        problem("not back to the baseline (%llu record on offer, no block) %d ms "
                                "after the last client left: %s\nthe end of the server log:\n%s",
                                (unsigned long long)u0.recs, BASELINE_MS, desc, tail_of(log, 80));
                        free(log);
                }
        }

        /* Every file under a final name is its source, byte for byte. */
        unsigned finals = 0;
        DIR *d = opendir(X.out);
        cr_assert_not_null(d, "%s: %s", X.out, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
                if (e->d_name[0] == '.')
                        continue; /* ., .., and temporary files (checked above) */
                int k = -1;
                for (int i = 0; i <= NFILES; i++)
                        if (strcmp(e->d_name, names[i]) == 0)
                                k = i;
                if (k < 0) {
                        /* A name changed in flight: whose bytes does it hold? */
                        char dst[XU_PATH + 300];
                        snprintf(dst, sizeof(dst), "%s/%s", X.out, e->d_name);
                        char *b = xu_slurp(dst);
                        struct stat sb = {0};
                        const char *whose = "no source's";
                        if (stat(dst, &sb) == 0) {
                                for (int i = 0; i <= NFILES; i++) {
                                        struct stat sa;
                                        const char *src = xu_path("src/%s", names[i]);
                                        if (stat(src, &sa) != 0 || sa.st_size != sb.st_size)
                                                continue;
                                        char *a = xu_slurp(src);
                                        if (memcmp(a, b, (size_t)sa.st_size) == 0)
                                                whose = names[i];
                                        free(a);
                                }
                        }
                        free(b);
                        problem("%s: a file under a name no client sent (%lld bytes: %s)", dst,
                                (long long)sb.st_size, whose);
                        continue;
                }
                finals++;
                char src[XU_PATH], dst[XU_PATH + 300];
                snprintf(src, sizeof(src), "%s", xu_path("src/%s", names[k]));
                snprintf(dst, sizeof(dst), "%s/%s", X.out, e->d_name);
                struct stat sa, sb;
                if (stat(src, &sa) != 0 || stat(dst, &sb) != 0 || sa.st_size != sb.st_size) {
                        problem("%s: %lld bytes under its final name, its source has %lld", dst,
                                (long long)sb.st_size, (long long)sa.st_size);
                        continue;
                }
                char *a = xu_slurp(src), *b = xu_slurp(dst); /* binary-safe up to st_size */
                if (memcmp(a, b, (size_t)sa.st_size) != 0) {
                        size_t i = 0;
                        while (a[i] == b[i])
                                i++;
                        problem("%s differs from its source at byte %zu of %lld", dst, i,
                                (long long)sa.st_size);
                }
                free(a);
                free(b);
        }
        closedir(d);

        /* What clients said they delivered is there (a reply read twice, or forged, must not
         * make a client report a delivery that did not happen). */
        for (int i = 0; i < NFILES; i++) {
                char dst[XU_PATH + 300];
                snprintf(dst, sizeof(dst), "%s/%s", X.out, names[i]);
                if (said_delivered[i + 1] && !xu_exists(dst))
                        problem("an engine-client said stream %d (%s) was delivered and verified, "
                                "but nothing is under that name",
                                i + 1, names[i]);
        }

        char *log = xu_slurp(X.slog);
        const char *crash = crash_in(log);
        if (crash != NULL)
                problem("the server log reports a crash ('%s'):\n%s", crash, tail_of(log, 60));
        int heals = xu_count(log, "restored") + xu_count(log, "put back") +
                    xu_count(log, "reclaimed") + xu_count(log, "repaired") +
                    xu_count(log, "refused");
        if (!server_died && secs > 0 && heals == 0)
                problem("the server log says nothing was healed or reclaimed after a %d s "
                        "attack:\n%s",
                        secs, tail_of(log, 40));
        free(log);

        /* A fresh client, then a clean stop. */
        int fresh = -1;
        int stop = -1;
        if (!server_died) {
                struct usage ub = measure(); /* what the fresh client finds */
                describe(&ub, desc, sizeof(desc));
                fresh = xu_client("fresh", 20000, "-q", "100");
                if (fresh != 0) {
                        char *o = xu_output("fresh");
                        problem("a fresh engine-client after the rogue ended with %d:\n%s"
                                "what it found: %s",
                                fresh, o, desc);
                        free(o);
                } else {
                        char dst[XU_PATH + 32];
                        snprintf(dst, sizeof(dst), "%s/fresh.bin", X.out);
                        xu_assert_same(xu_path("src/fresh.bin"), dst);
                }
                stop = xu_server_stop();
                if (stop != 0)
                        problem("engine-server ended with %d on SIGTERM, not 0", stop);
                if (xu_temps() > 0)
                        problem("%d temporary .eng-* file(s) left after the server stopped",
                                xu_temps());
                log = xu_slurp(X.slog);
                if (crash == NULL && (crash = crash_in(log)) != NULL)
                        problem("the server log reports a crash at stop ('%s'):\n%s", crash,
                                tail_of(log, 60));
                free(log);
        }

        /* The summary, and the evidence if anything is wrong. */
        char why[2048] = "";
        size_t k = 0;
        for (size_t i = 0;
             i < sizeof(reasons) / sizeof(reasons[0]) && reasons[i].n && k < sizeof(why); i++)
                k += (size_t)snprintf(why + k, sizeof(why) - k, "%s%ux \"%s\"", k ? ", " : "",
                                      reasons[i].n, reasons[i].why);
        cr_log_info("seed %llu: %s", (unsigned long long)seed, rogue_out);
        cr_log_info("seed %llu: honest rounds %u+%u (clean %u+%u), files delivered %u, failed %u; "
                    "reasons: %s",
                    (unsigned long long)seed, loops[0].rounds, loops[1].rounds, loops[0].clean,
                    loops[1].clean, loops[0].delivered + loops[1].delivered,
                    loops[0].failed_files + loops[1].failed_files, k ? why : "none");
        cr_log_info("seed %llu: the honest loops stopped %llu ms after the rogue; %u file(s) under "
                    "final names, all checked; baseline %llu ms after the last client; %.1f s in "
                    "all",
                    (unsigned long long)seed, (unsigned long long)drain_ms, finals,
                    (unsigned long long)back_ms, (double)(xu_now_ms() - t_start) / 1e3);
        if (plen > 0) {
                char keep[128];
                snprintf(keep, sizeof(keep), "/tmp/engine-rogue-seed%llu-%d.log",
                         (unsigned long long)seed, (int)getpid());
                char *full = xu_slurp(X.slog);
                FILE *f = fopen(keep, "w");
                if (f != NULL) {
                        fputs(full, f);
                        fclose(f);
                }
                free(full);
                cr_assert_fail("seed %llu (ROGUE_SECONDS=%d): %s\nrounds %u+%u, delivered %u, "
                               "failed %u (%s)\nthe whole server log: %s\n--- problems:\n%s",
                               (unsigned long long)seed, secs, rogue_out, loops[0].rounds,
                               loops[1].rounds, loops[0].delivered + loops[1].delivered,
                               loops[0].failed_files + loops[1].failed_files, k ? why : "none",
                               keep, P);
        }
        free(rogue_out);
        free(rogue_err);
}
