/*
 * hist.c - log-linear histograms; see hist.h for the bucket layout and its error bound.
 */
#include <string.h>

#include "hist.h"

void eb_hist_init(eb_hist_t *h)
{
        memset(h, 0, sizeof(*h));
        h->min = UINT64_MAX;
}

uint32_t eb_hist_index(uint64_t v)
{
        if (v < EB_HIST_SUB)
                return (uint32_t)v;
        uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* v in [2^e, 2^(e+1)), e >= SUB_BITS */
        uint32_t shift = e - EB_HIST_SUB_BITS;
        uint32_t sub = (uint32_t)(v >> shift) - EB_HIST_SUB; /* 0 .. SUB-1 */
        return EB_HIST_SUB + shift * EB_HIST_SUB + sub;
}

uint64_t eb_hist_bucket_lo(uint32_t i)
{
        if (i < EB_HIST_SUB)
                return i;
        uint32_t shift = (i - EB_HIST_SUB) / EB_HIST_SUB;
        uint64_t sub = (i - EB_HIST_SUB) % EB_HIST_SUB;
        return (EB_HIST_SUB + sub) << shift;
}

uint64_t eb_hist_bucket_hi(uint32_t i)
{
        if (i < EB_HIST_SUB)
                return i;
        uint32_t shift = (i - EB_HIST_SUB) / EB_HIST_SUB;
        return eb_hist_bucket_lo(i) + ((1ull << shift) - 1);
}

void eb_hist_add(eb_hist_t *h, uint64_t v)
{
        h->b[eb_hist_index(v)]++;
        h->count++;
        h->sum += (double)v;
        if (v < h->min)
                h->min = v;
        if (v > h->max)
                h->max = v;
}

void eb_hist_merge(eb_hist_t *dst, const eb_hist_t *src)
{
        if (src->count == 0)
                return;
        for (uint32_t i = 0; i < EB_HIST_BUCKETS; i++)
                dst->b[i] += src->b[i];
        dst->count += src->count;
        dst->sum += src->sum;
        if (src->min < dst->min)
                dst->min = src->min;
        if (src->max > dst->max)
                dst->max = src->max;
}

uint64_t eb_hist_pct(const eb_hist_t *h, double p)
{
        if (h->count == 0)
                return 0;
        if (p >= 100.0)
                return h->max;
        if (p < 0)
                p = 0;
        /* rank of the wanted value, 1-based: at least one value is at or below it */
        double want = p / 100.0 * (double)h->count;
        uint64_t rank = (uint64_t)want;
        if ((double)rank < want)
                rank++;
        if (rank == 0)
                rank = 1;
        uint64_t seen = 0;
        for (uint32_t i = 0; i < EB_HIST_BUCKETS; i++) {
                seen += h->b[i];
                if (seen >= rank) {
                        uint64_t lo = eb_hist_bucket_lo(i), hi = eb_hist_bucket_hi(i);
                        uint64_t mid = lo + (hi - lo) / 2;
                        if (mid < h->min)
                                mid = h->min;
                        if (mid > h->max)
                                mid = h->max;
                        return mid;
                }
        }
        return h->max;
}

double eb_hist_mean(const eb_hist_t *h)
{
        return h->count ? h->sum / (double)h->count : 0.0;
}
