/*
 * bench.h - private to bench/: the pieces of engine-bench shared between its files.
 *
 * Model: the parent process only orchestrates. Every workload is a *cell* (one named
 * measurement, e.g. "rtt/lockfree/spin/64B"); a cell runs in forked children (a server child
 * and a client child for anything that talks, one child otherwise) that report through a
 * MAP_SHARED block (eb_xchg_t) the parent maps before forking. The parent waits for them
 * with a deadline, kills them if it passes, and turns the block into an eb_result_t.
 */
#ifndef EB_BENCH_H
#define EB_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "engine.h" /* eng_now_ns: the clock every figure of the bench is taken with */
#include "hist.h"

/* ---- options ------------------------------------------------------------------------ */

typedef struct eb_opts {
        bool quick;
        const char *filters[16];
        int nfilters;
        const char *json;
        const char *report;
        const char *dir;      /* tmpfs directory for files, default /dev/shm */
        const char *disk_dir; /* disk directory of the xfer/disk/ cells ($TMPDIR or /var/tmp) */
        int rounds;           /* alternating rounds of the cells that run in rounds (c->alt) */
        uint64_t seg_bytes;
        uint32_t workers;
        uint32_t min_shift, max_shift;
        uint64_t file_bytes;        /* the file-transfer file (and the total for 8 streams) */
        uint32_t xfer_chunk;        /* bytes per FILE_DATA message */
        uint64_t rtt_spin_n;        /* max round trips per spinning cell */
        uint64_t rtt_block_n;       /* max round trips per blocking cell */
        uint64_t rtt_ms;            /* time cap of a round-trip cell */
        uint64_t tput_ms;           /* measured time of a throughput cell */
        uint64_t misc_ms;           /* open/close, arena, memcpy per size */
        uint32_t spin_budget;       /* cfg.spin in spinning mode */
        int retries;                /* re-runs of a cell measured while the machine was busy */
        uint32_t scale_streams[16]; /* --streams: the stream counts of the scale/ cells */
        int nscale;
        uint64_t idle_ms;          /* the window of an idle/ cell */
        uint64_t sparse_budget_ms; /* sparse/ cells: samples = budget / (gap + 100 us) */
        char tag[32];              /* "eb-<pid>": prefix of every shm/socket/file name */
        char workdir[512];         /* <dir>/eb-<pid> */
        char disk_workdir[512];    /* <disk_dir>/eb-<pid>: the xfer/disk/ cells' outputs */
        char disk_why[320];        /* why the xfer/disk/ cells are n/a, or "" */
} eb_opts_t;

/* ---- results ------------------------------------------------------------------------ */

enum { EB_OK = 0, EB_FAIL = 1, EB_NA = 2 };

#define EB_MAX_METRICS 24

typedef struct eb_metric {
        char key[24];
        double v;
} eb_metric_t;

typedef struct eb_result {
        char name[96];
        char group[16];   /* floor rtt sparse tput scale xfer openclose idle arena memcpy */
        char impl[16];    /* lockfree mutex pipe unix tcp boost spinword rwcopy cfr cat cpsync
                             memcpy */
        char mode[8];     /* spin | block | default | "" */
        char place[12];   /* unpinned samecore crosscore (sparse, b2b), else "" */
        uint64_t payload; /* bytes per message (rtt, tput), file bytes (xfer) */
        uint32_t streams; /* streams (engine), files (xfer), threads (arena) */
        int status;
        char reason[320];
        char note[256]; /* more about figures that ran (idle: wake-ups by thread), or "" */
        double secs;    /* wall time of the cell, setup included */
        double foreign; /* share of the machine's CPU time other processes used meanwhile */
        int attempts;   /* runs of the cell (the kept one is the least disturbed) */
        int nm;
        eb_metric_t m[EB_MAX_METRICS];
        eb_hist_t *hist; /* NULL if the cell has none; owned by the result */
        char hist_unit[8];
} eb_result_t;

/* results.c: a cell's figures, stored and found again */
void eb_metric_set(eb_result_t *r, const char *key, double v);
/* NaN if absent, or if r is NULL or did not run to completion */
double eb_metric(const eb_result_t *r, const char *key);
/* Keep a copy of the latency histogram h (ns) and set its figures: p50_ns p90_ns p99_ns
 * p99.9_ns p99.99_ns max_ns min_ns mean_ns n. */
void eb_result_set_hist(eb_result_t *r, const eb_hist_t *h);

/* ---- the exchange block and the process harness -------------------------------------- */

enum { SRV_STARTING = 0, SRV_READY = 1, SRV_FAILED = 2, SRV_UNAVAILABLE = 3 };

typedef struct eb_xchg {
        uint32_t srv_state; /* futex word: server child -> parent */
        uint32_t stop;      /* futex word: parent -> server child */
        int32_t srv_rc;
        char srv_err[320];
        char cli_err[320];
        uint16_t port; /* TCP port the server listens on */
        /* figures (meaning depends on the cell) */
        uint64_t t0_ns;     /* client: start of the measured phase */
        uint64_t t1_ns;     /* client: end of the measured phase */
        uint64_t t_last_ns; /* server: last receipt (max over streams) */
        uint64_t srv_msgs, srv_bytes, srv_bad;
        uint64_t cli_msgs, cli_bytes, cli_iters;
        uint64_t sink; /* checksums folded in so nothing is optimised away */
        uint32_t xfer_ok, xfer_failed;
        char xfer_why[320];
        int32_t srv_pid; /* the server child (eb_server_ready) */
        uint64_t late;   /* sparse: trips that ended after the next one was due (gap restarted) */
        double cpu_s[2]; /* CPU seconds over the measured phase: server process, client side */
        double open_s;   /* scale: seconds to open all the streams */
        double open_last_s; /* scale: seconds to open the last tenth of them */
        double close_s;     /* scale: seconds to close all the streams */
        uint64_t wakeups;   /* idle: context switches of the server's threads over the window */
        uint32_t threads;   /* idle: the server's threads */
        double window_s;    /* idle: the window */
        char note[256];     /* idle: wake-ups by thread */
        double v[16];
        _Alignas(64) uint64_t word; /* the spin-floor word, alone on its cache line */
        char pad[56];
        eb_hist_t hist; /* the client's latency histogram */
} eb_xchg_t;

typedef struct eb_cell eb_cell_t;
typedef void (*eb_server_fn)(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o);
/* returns 0 on success, else writes x->cli_err and returns nonzero */
typedef int (*eb_client_fn)(eb_xchg_t *x, const eb_cell_t *c, const eb_opts_t *o);

struct eb_cell {
        char name[96];
        char group[16], impl[16], mode[8];
        uint64_t payload;
        uint32_t streams;
        int transport; /* eng_transport_t for engine cells */
        bool spin;
        int seq; /* cell number: unique names */
        char seg[64];
        int fds[4]; /* descriptors created by the parent before forking (pipes), -1 if none */
        int cpu_srv, cpu_cli; /* CPU the server / client child pins itself to, -1: not pinned */
        uint64_t gap_ns;      /* sparse: sleep between round trips */
        uint64_t seg_bytes;   /* engine segment, 0: o->seg_bytes */
        bool defaults;        /* engine defaults: server workers 0 and spin 0, client spin 0 */
        char place[12];       /* unpinned samecore crosscore, or "" */
        int sub;              /* order among comparable cells (before the implementation) */
        bool disk;            /* xfer: the output goes to o->disk_workdir, not o->workdir */
        int alt;              /* non-zero: run in alternating rounds with the selected cells
                                 of the same alt, median kept (engine_bench.c) */
        void (*run)(eb_cell_t *c, const eb_opts_t *o, eb_result_t *r);
};

/* Run server and client children; returns EB_OK/EB_FAIL/EB_NA with r->reason set.
 * server may be NULL (then only the client child runs). x is mapped and initialised. */
int eb_run_children(eb_cell_t *c, const eb_opts_t *o, eb_xchg_t *x, eb_server_fn server,
                    eb_client_fn client, uint64_t timeout_ms, eb_result_t *r);
eb_xchg_t *eb_xchg_new(void);
/* eb_xchg_new, or NULL with r failed ("mmap: why"). */
eb_xchg_t *eb_xchg_new_or_fail(eb_result_t *r);
void eb_xchg_free(eb_xchg_t *x);

/* server side helpers (in a child) */
void eb_server_ready(eb_xchg_t *x, int state, int rc, const char *err);
/* Wait until the parent says stop (or a minute passes). */
void eb_server_wait_stop(eb_xchg_t *x);
bool eb_stop_requested(eb_xchg_t *x);
/* client side: the server's state (futex wait up to timeout_ms) */
int eb_wait_server(eb_xchg_t *x, uint64_t timeout_ms);
/*
 * The client side of a round-trip cell: min(n/10, 1000) warm-up trips, then up to n timed
 * ones (stopping after rtt_ms), each recorded in x->hist; sets x->t0_ns, t1_ns, cli_iters.
 * one(i, arg) does round trip i and returns 0, or non-zero to stop (that value is returned).
 */
int eb_rtt_loop(eb_xchg_t *x, const eb_opts_t *o, uint64_t n, int (*one)(uint64_t i, void *arg),
                void *arg);
/*
 * Sparse round trips: a few warm-up trips, then up to eb_sparse_n(o, gap) timed ones (stopping
 * after the budget plus a margin); after each trip the caller sleeps until its next deadline
 * (clock_nanosleep, absolute: start + k * gap; a trip that ends after the next deadline
 * restarts the schedule from its end and counts in x->late). Only the trip is timed.
 */
int eb_sparse_loop(eb_xchg_t *x, const eb_opts_t *o, uint64_t gap_ns,
                   int (*one)(uint64_t i, void *arg), void *arg);
uint64_t eb_sparse_n(const eb_opts_t *o, uint64_t gap_ns);
/* Pin the calling thread (and the threads it creates later) to one CPU: 0 or -errno. */
int eb_pin(int cpu);
/* Whether this process may run on cpu (its affinity mask holds it). */
bool eb_cpu_usable(int cpu);
/* CPU seconds of a process (pid 0: this one), every thread, ns resolution; NaN if unknown. */
double eb_proc_cpu_s(pid_t pid);

/* Set by SIGINT/SIGTERM: waits give up, children are killed, the bench cleans up. */
extern volatile int eb_interrupted;

int eb_futex_wait(uint32_t *w, uint32_t expect, uint64_t timeout_ns);
void eb_futex_wake(uint32_t *w);

/* ---- utilities ---------------------------------------------------------------------- */

/* Read every byte of p (a word-wise xor): what a receiver that uses its data pays. */
uint64_t eb_consume(const void *p, size_t n);
/* memcpy(dst, src, n), then stamp seq into the first 8 bytes when n >= 8. */
void eb_fill(void *dst, const void *src, size_t n, uint64_t seq);
/* A hot source buffer of at least n bytes with non-trivial content (process-wide). */
const void *eb_src(size_t n);
void eb_size_name(uint64_t bytes, char *out, size_t n); /* 0B 64B 4KiB 1MiB 1GiB */
void eb_errf(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void eb_relax(void)
{
        __builtin_ia32_pause();
}

/* ---- workloads (each adds cells) ----------------------------------------------------- */

typedef struct eb_cells {
        eb_cell_t *v;
        int n, cap;
} eb_cells_t;

eb_cell_t *eb_cell_add(eb_cells_t *cs, const char *group, const char *impl, const char *mode,
                       uint64_t payload, uint32_t streams);

extern const uint64_t eb_rtt_payloads[4];
extern const uint64_t eb_tput_payloads[6];
extern const uint32_t eb_tput_streams[4];
/* sparse/ and b2b cells (harness.c): the gaps, the placements (unpinned, samecore: server and
 * client on CPU 0, crosscore: server on CPU 0, client on CPU 1). */
extern const uint64_t eb_sparse_gaps[3];
extern const char *const eb_places[3];
void eb_gap_name(uint64_t ns, char *out, size_t n); /* 100us 1ms 10ms */
/* Give a cell placement p (index into eb_places): its place, pinning and order. */
void eb_cell_place(eb_cell_t *c, int p);
/* The OS peers (refs.c): pipe, unix, tcp. */
extern const char *const eb_os_peers[3];
/* Round-trip and one-stream throughput implementations in table order: the engine's two
 * transports, the OS peers, boost. */
extern const char *const eb_msg_impls[6];

void eb_engine_cells(eb_cells_t *cs, const eb_opts_t *o);
void eb_ref_cells_floor(eb_cells_t *cs, const eb_opts_t *o);
void eb_ref_cells_rtt(eb_cells_t *cs, const eb_opts_t *o);
void eb_ref_cells_tput(eb_cells_t *cs, const eb_opts_t *o);
void eb_ref_cells_xfer(eb_cells_t *cs, const eb_opts_t *o);
void eb_ref_cells_misc(eb_cells_t *cs, const eb_opts_t *o);
void eb_boost_cells(eb_cells_t *cs, const eb_opts_t *o);

/* The file-transfer sources: <workdir>/src/one.bin and part<k>.bin (created once). */
int eb_files_prepare(const eb_opts_t *o, char *why, size_t n);
void eb_files_path(const eb_opts_t *o, int files, int k, char *out, size_t n);
/* Read every source file for a cell (the warm page cache the copy starts from). */
void eb_files_warm(const eb_opts_t *o, int files);
/* Touch and release this much anonymous memory (fresh pages for the copy that follows). */
void eb_memory_warm(uint64_t bytes);
/* Remove a directory's regular files and the directory. */
void eb_rmdir_files(const char *dir);
/* Where a file-transfer cell writes its output: <workdir>/out-<seq> (<disk_workdir>/... for
 * the xfer/disk/ cells). */
void eb_xfer_outdir(const eb_cell_t *c, const eb_opts_t *o, char *out, size_t n);
/* After a disk cell: remove its output and make the removal durable (syncfs), so that the
 * next cell's fsync does not commit (and discard) this one's freed blocks. */
void eb_disk_settle(const eb_opts_t *o, const char *dir);

/* ---- reports ------------------------------------------------------------------------ */

typedef struct eb_run {
        const eb_opts_t *o;
        eb_result_t *r;
        int n;
        double secs;
        char cpu[128];
        int cores;
        char kernel[256];
        char host[128];
        char started[32];
        double foreign; /* share of the machine's CPU other processes used during the run */
        double steal;   /* share stolen by the hypervisor during the run */
} eb_run_t;

/* CPU accounting, to tell whether someone else was using the machine while we measured. */
typedef struct eb_cpu_sample {
        double t;     /* wall seconds (monotonic) */
        double busy;  /* machine busy CPU-seconds (all processes), steal excluded */
        double steal; /* CPU-seconds stolen by the hypervisor */
        double own;   /* CPU-seconds of this process and its reaped children */
} eb_cpu_sample_t;
void eb_cpu_sample(eb_cpu_sample_t *s);
/* Share of the machine (cores x wall) used by other processes between a and b, and stolen. */
void eb_cpu_foreign(const eb_cpu_sample_t *a, const eb_cpu_sample_t *b, int cores, double *foreign,
                    double *steal);

/* results.c: looking up a run's figures. A missing cell, a cell that did not run to completion
 * and a missing metric all give NaN, and every ratio of a NaN is NaN (shown as n/a or -). */
const eb_result_t *eb_find(const eb_run_t *run, const char *name);
const eb_result_t *eb_findf(const eb_run_t *run, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* eb_metric of the cell named by fmt */
double eb_mval(const eb_run_t *run, const char *metric, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* a / b, NaN if either is NaN or b is 0 */
double eb_ratio(double a, double b);
/* The spin floor: mean p50 of floor/spinword and floor/spinword-after (measured just before and
 * just after rtt/lockfree/spin/0B), whichever exist; *drift = larger / smaller (1 if only one). */
double eb_floor_p50(const eb_run_t *run, double *drift);

/* fmt.c: figures as the tables show them; each returns buf. A NaN is "-" ("n/a" for a ratio). */
const char *eb_fmt_x(double ratio, char *buf, size_t n); /* 0.52x 12.3x 140x */
const char *eb_fmt_us(double ns, char *buf, size_t n);   /* microseconds: 0.52 12.3 140 */
const char *eb_fmt_rate(double v, char *buf, size_t n);  /* 1.23 G, 4.56 M, 7.8 k, 9 */
const char *eb_fmt_fixed(double v, int decimals, char *buf, size_t n); /* %.<decimals>f */

/* targets.c: the targets, each a ratio of figures of this run against a threshold. */
typedef struct eb_target {
        const char *id;
        const char *what;
        char detail[384]; /* the figures the ratio comes from */
        double value;     /* the ratio (or the figure, see fmt); NaN when a figure is missing */
        double need;
        /* how value and need are shown; NULL: a ratio (eb_fmt_x, need with 2 decimals) */
        const char *(*fmt)(double v, char *buf, size_t n);
        bool at_most;        /* value <= need passes (else value >= need) */
        const char *verdict; /* "PASS", "MISS" or "n/a" */
} eb_target_t;
#define EB_MAX_TARGETS 24
/* Evaluates every target into t; returns how many. */
int eb_targets(const eb_run_t *run, eb_target_t t[EB_MAX_TARGETS]);
/* --filter: for every target that reads a cell the filters selected (sel0), select every other
 * cell it reads too (sel). Returns how many cells that added. */
int eb_targets_expand(const eb_cells_t *cs, const bool *sel0, bool *sel);

/* report_text.c: the human-readable tables (and the targets) into f. */
void eb_print_tables(const eb_run_t *run, FILE *f);
/* report_json.c: every result, histogram and target (schema engine-bench/1, docs/BENCH.md). */
int eb_write_json(const eb_run_t *run, const char *path);
/* report_html.c: DIR/index.html with gnuplot plots of the latencies and throughputs. */
int eb_write_report(const eb_run_t *run, const char *dir);

#endif
