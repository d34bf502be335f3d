/*
 * results.c - a cell's figures: storing them in its result and finding them again, by cell
 * name and metric, for the tables, the targets and the report.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

const char *const eb_msg_impls[6] = {"lockfree", "mutex", "pipe", "unix", "tcp", "boost"};

void eb_metric_set(eb_result_t *r, const char *key, double v)
{
        for (int i = 0; i < r->nm; i++)
                if (strcmp(r->m[i].key, key) == 0) {
                        r->m[i].v = v;
                        return;
                }
        if (r->nm < EB_MAX_METRICS) {
                snprintf(r->m[r->nm].key, sizeof(r->m[r->nm].key), "%s", key);
                r->m[r->nm].v = v;
                r->nm++;
        }
}

double eb_metric(const eb_result_t *r, const char *key)
{
        if (r == NULL || r->status != EB_OK)
                return NAN;
        for (int i = 0; i < r->nm; i++)
                if (strcmp(r->m[i].key, key) == 0)
                        return r->m[i].v;
        return NAN;
}

void eb_result_set_hist(eb_result_t *r, const eb_hist_t *h)
{
        r->hist = malloc(sizeof(*r->hist));
        if (r->hist)
                memcpy(r->hist, h, sizeof(*h));
        snprintf(r->hist_unit, sizeof(r->hist_unit), "ns");
        static const struct {
                const char *key;
                double p;
        } pc[] = {{"p50_ns", 50},     {"p90_ns", 90},       {"p99_ns", 99},
                  {"p99.9_ns", 99.9}, {"p99.99_ns", 99.99}, {"max_ns", 100}};
        for (size_t i = 0; i < sizeof(pc) / sizeof(pc[0]); i++)
                eb_metric_set(r, pc[i].key, (double)eb_hist_pct(h, pc[i].p));
        eb_metric_set(r, "min_ns", (double)(h->count ? h->min : 0));
        eb_metric_set(r, "mean_ns", eb_hist_mean(h));
        eb_metric_set(r, "n", (double)h->count);
}

const eb_result_t *eb_find(const eb_run_t *run, const char *name)
{
        for (int i = 0; i < run->n; i++)
                if (strcmp(run->r[i].name, name) == 0)
                        return &run->r[i];
        return NULL;
}

const eb_result_t *eb_findf(const eb_run_t *run, const char *fmt, ...)
{
        char name[128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        return eb_find(run, name);
}

double eb_mval(const eb_run_t *run, const char *metric, const char *fmt, ...)
{
        char name[128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        return eb_metric(eb_find(run, name), metric);
}

double eb_ratio(double a, double b)
{
        return (isnan(a) || isnan(b) || b == 0) ? NAN : a / b;
}

double eb_floor_p50(const eb_run_t *run, double *drift)
{
        double a = eb_metric(eb_find(run, "floor/spinword"), "p50_ns");
        double b = eb_metric(eb_find(run, "floor/spinword-after"), "p50_ns");
        *drift = 1;
        if (isnan(a))
                return b;
        if (isnan(b))
                return a;
        *drift = a > b ? a / b : b / a;
        return (a + b) / 2;
}
