/*
 * hist.h - log-linear latency histograms (HdrHistogram style) for engine-bench.
 *
 * Values are unsigned 64-bit integers (nanoseconds in this program). Values below 2^7 are
 * counted exactly; every power of two [2^e, 2^(e+1)) above is split into 2^7 equal buckets,
 * so a bucket is at most 1/128 of its lowest value wide: any value reported (the bucket's
 * midpoint, clamped to the exact min and max) is within 0.4% of the true one.
 *
 * A histogram is one flat struct without pointers, so it can live in a MAP_SHARED mapping
 * that a child process fills and the parent reads (that is how engine-bench moves them
 * between processes), be copied with memcpy, and be merged by adding bucket counts.
 *
 * Concurrency: one writer at a time per histogram (give each thread its own, then merge).
 */
#ifndef EB_HIST_H
#define EB_HIST_H

#include <stdint.h>

#define EB_HIST_SUB_BITS 7
#define EB_HIST_SUB      (1u << EB_HIST_SUB_BITS)
/* exact buckets [0, SUB), then SUB buckets for each exponent e in [SUB_BITS, 63] */
#define EB_HIST_BUCKETS (EB_HIST_SUB + (64 - EB_HIST_SUB_BITS) * EB_HIST_SUB)

typedef struct eb_hist {
        uint64_t count;
        uint64_t min, max;
        double sum; /* for the mean */
        uint64_t b[EB_HIST_BUCKETS];
} eb_hist_t;

void eb_hist_init(eb_hist_t *h);
void eb_hist_add(eb_hist_t *h, uint64_t v);
/* dst += src (both initialised). */
void eb_hist_merge(eb_hist_t *dst, const eb_hist_t *src);
/* Value at percentile p (0..100): the smallest recorded bucket holding at least p% of the
 * values, as its midpoint clamped to [min, max]; p >= 100 gives max exactly. 0 if empty. */
uint64_t eb_hist_pct(const eb_hist_t *h, double p);
double eb_hist_mean(const eb_hist_t *h);

/* Bucket geometry: bucket i covers [lo, hi] (inclusive). */
uint32_t eb_hist_index(uint64_t v);
uint64_t eb_hist_bucket_lo(uint32_t i);
uint64_t eb_hist_bucket_hi(uint32_t i);

#endif
