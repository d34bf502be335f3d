/*
 * report_json.c - the JSON file (--json): the run, its parameters, every result with its
 * metrics and histogram, and the targets. Schema engine-bench/1, described in docs/BENCH.md.
 */
#include <math.h>
#include <stdbool.h>

#include "bench.h"

static void jstr(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20)
                        fprintf(f, "\\u%04x", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
}

static void jnum(FILE *f, double v)
{
        if (isnan(v) || isinf(v))
                fprintf(f, "null");
        else if (v == floor(v) && fabs(v) < 9e15)
                fprintf(f, "%.0f", v);
        else
                fprintf(f, "%.6g", v);
}

static void jhist(FILE *f, const eb_hist_t *h, const char *unit)
{
        fprintf(f, "{\"unit\": ");
        jstr(f, unit);
        fprintf(f,
                ", \"sub_bucket_bits\": %d, \"count\": %llu, \"min\": %llu, \"max\": %llu, "
                "\"mean\": ",
                EB_HIST_SUB_BITS, (unsigned long long)h->count,
                (unsigned long long)(h->count ? h->min : 0), (unsigned long long)h->max);
        jnum(f, eb_hist_mean(h));
        fprintf(f, ", \"percentiles\": {");
        static const double ps[] = {0, 50, 90, 99, 99.9, 99.99, 99.999, 100};
        for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
                fprintf(f, "%s\"%g\": %llu", i ? ", " : "", ps[i],
                        (unsigned long long)(ps[i] == 0 ? (h->count ? h->min : 0)
                                                        : eb_hist_pct(h, ps[i])));
        fprintf(f, "}, \"buckets\": [");
        bool first = true;
        for (uint32_t i = 0; i < EB_HIST_BUCKETS; i++)
                if (h->b[i]) {
                        fprintf(f, "%s[%llu, %llu, %llu]", first ? "" : ", ",
                                (unsigned long long)eb_hist_bucket_lo(i),
                                (unsigned long long)eb_hist_bucket_hi(i),
                                (unsigned long long)h->b[i]);
                        first = false;
                }
        fprintf(f, "]}");
}

int eb_write_json(const eb_run_t *run, const char *path)
{
        FILE *f = fopen(path, "w");
        if (f == NULL)
                return -1;
        const eb_opts_t *o = run->o;
        fprintf(f, "{\n  \"schema\": \"engine-bench/1\",\n  \"started\": ");
        jstr(f, run->started);
        fprintf(f, ",\n  \"seconds\": ");
        jnum(f, run->secs);
        fprintf(f, ",\n  \"machine\": {\"cpu\": ");
        jstr(f, run->cpu);
        fprintf(f, ", \"cores\": %d, \"kernel\": ", run->cores);
        jstr(f, run->kernel);
        fprintf(f, ", \"host\": ");
        jstr(f, run->host);
        fprintf(f, ", \"foreign_cpu\": ");
        jnum(f, run->foreign);
        fprintf(f, ", \"steal\": ");
        jnum(f, run->steal);
        fprintf(f, "},\n  \"params\": {\"quick\": %s, \"filters\": [", o->quick ? "true" : "false");
        for (int i = 0; i < o->nfilters; i++) {
                fprintf(f, "%s", i ? ", " : "");
                jstr(f, o->filters[i]);
        }
        fprintf(f, "], \"dir\": ");
        jstr(f, o->dir);
        fprintf(f,
                ", \"segment_bytes\": %llu, \"workers\": %u, \"min_block_shift\": %u, "
                "\"max_block_shift\": %u, \"ring_depth\": 128, \"spin_budget\": %u, "
                "\"block_spin\": 1, \"file_bytes\": %llu, \"xfer_chunk\": %u, "
                "\"rtt_spin_max\": %llu, \"rtt_block_max\": %llu, \"rtt_ms\": %llu, "
                "\"tput_ms\": %llu, \"tput_warmup_ms\": %llu, \"misc_ms\": %llu, "
                "\"retries\": %d, \"consume\": \"receiver reads every byte\", \"boost\": %s, "
                "\"sparse_budget_ms\": %llu, \"idle_ms\": %llu, \"scale_streams\": [",
                (unsigned long long)o->seg_bytes, o->workers, o->min_shift, o->max_shift,
                o->spin_budget, (unsigned long long)o->file_bytes, o->xfer_chunk,
                (unsigned long long)o->rtt_spin_n, (unsigned long long)o->rtt_block_n,
                (unsigned long long)o->rtt_ms, (unsigned long long)o->tput_ms,
                (unsigned long long)o->tput_ms / 5, (unsigned long long)o->misc_ms, o->retries,
#ifdef ENG_BENCH_BOOST
                "true"
#else
                "false"
#endif
                ,
                (unsigned long long)o->sparse_budget_ms, (unsigned long long)o->idle_ms);
        for (int i = 0; i < o->nscale; i++)
                fprintf(f, "%s%u", i ? ", " : "", o->scale_streams[i]);
        fprintf(f, "]},\n");
        fprintf(f, "  \"results\": [\n");
        for (int i = 0; i < run->n; i++) {
                const eb_result_t *r = &run->r[i];
                fprintf(f, "    {\"name\": ");
                jstr(f, r->name);
                fprintf(f, ", \"group\": ");
                jstr(f, r->group);
                fprintf(f, ", \"impl\": ");
                jstr(f, r->impl);
                fprintf(f, ", \"mode\": ");
                jstr(f, r->mode);
                if (r->place[0]) {
                        fprintf(f, ", \"place\": ");
                        jstr(f, r->place);
                }
                fprintf(f, ", \"payload\": %llu, \"streams\": %u, \"status\": ",
                        (unsigned long long)r->payload, r->streams);
                jstr(f, r->status == EB_OK ? "ok" : r->status == EB_NA ? "n/a" : "failed");
                fprintf(f, ", \"reason\": ");
                jstr(f, r->reason);
                if (r->note[0]) {
                        fprintf(f, ", \"note\": ");
                        jstr(f, r->note);
                }
                fprintf(f, ", \"cell_seconds\": ");
                jnum(f, r->secs);
                fprintf(f, ", \"foreign_cpu\": ");
                jnum(f, r->foreign);
                fprintf(f, ", \"attempts\": %d", r->attempts);
                fprintf(f, ",\n     \"metrics\": {");
                for (int k = 0; k < r->nm; k++) {
                        fprintf(f, "%s", k ? ", " : "");
                        jstr(f, r->m[k].key);
                        fprintf(f, ": ");
                        jnum(f, r->m[k].v);
                }
                fprintf(f, "}");
                if (r->hist) {
                        fprintf(f, ",\n     \"hist\": ");
                        jhist(f, r->hist, r->hist_unit);
                }
                fprintf(f, "}%s\n", i + 1 < run->n ? "," : "");
        }
        fprintf(f, "  ],\n  \"targets\": [\n");
        eb_target_t t[EB_MAX_TARGETS];
        int n = eb_targets(run, t);
        for (int i = 0; i < n; i++) {
                fprintf(f, "    {\"id\": ");
                jstr(f, t[i].id);
                fprintf(f, ", \"what\": ");
                jstr(f, t[i].what);
                fprintf(f, ", \"detail\": ");
                jstr(f, t[i].detail);
                fprintf(f, ", \"value\": ");
                jnum(f, t[i].value);
                fprintf(f, ", \"need\": ");
                jnum(f, t[i].need);
                fprintf(f, ", \"op\": \"%s\", \"verdict\": \"%s\"}%s\n",
                        t[i].at_most ? "<=" : ">=", t[i].verdict, i + 1 < n ? "," : "");
        }
        fprintf(f, "  ]\n}\n");
        int rc = ferror(f) ? -1 : 0;
        if (fclose(f) != 0)
                rc = -1;
        return rc;
}
