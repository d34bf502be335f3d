/*
 * fmt.c - figures as the tables and the targets' details show them: ratios, microseconds,
 * rates, fixed decimals. A missing figure (NaN) is "-", a missing ratio "n/a".
 */
#include <math.h>

#include "bench.h"

const char *eb_fmt_x(double r, char *buf, size_t n)
{
        if (isnan(r))
                snprintf(buf, n, "n/a");
        else if (r >= 100)
                snprintf(buf, n, "%.0fx", r);
        else if (r >= 10)
                snprintf(buf, n, "%.1fx", r);
        else
                snprintf(buf, n, "%.2fx", r);
        return buf;
}

const char *eb_fmt_us(double ns, char *buf, size_t n)
{
        double us = ns / 1e3;
        if (isnan(ns))
                snprintf(buf, n, "-");
        else if (us < 10)
                snprintf(buf, n, "%.2f", us);
        else if (us < 1000)
                snprintf(buf, n, "%.1f", us);
        else
                snprintf(buf, n, "%.0f", us);
        return buf;
}

const char *eb_fmt_rate(double v, char *buf, size_t n)
{
        if (isnan(v))
                snprintf(buf, n, "-");
        else if (v >= 1e9)
                snprintf(buf, n, "%.2f G", v / 1e9);
        else if (v >= 1e6)
                snprintf(buf, n, "%.2f M", v / 1e6);
        else if (v >= 1e3)
                snprintf(buf, n, "%.1f k", v / 1e3);
        else
                snprintf(buf, n, "%.0f", v);
        return buf;
}

const char *eb_fmt_fixed(double v, int decimals, char *buf, size_t n)
{
        if (isnan(v))
                snprintf(buf, n, "-");
        else
                snprintf(buf, n, "%.*f", decimals, v);
        return buf;
}
