/*
 * progress.c - the pass percentage and its bar (definition in progress.h).
 */
#include "progress.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

double pass_progress_update(pass_progress *pp, uint64_t pass, bool postcopy, bool has_remaining,
                            double remaining, double total)
{
    if (!has_remaining || remaining < 0)
        return -1;
    bool fresh = !pp->started || pass != pp->pass || postcopy != pp->postcopy;
    if (fresh) {
        pp->started = true;
        pp->pass = pass;
        pp->postcopy = postcopy;
        /* Pass 1 began with every page dirty. */
        pp->dirty_set = !postcopy && pass <= 1 && total > 0 ? total : remaining;
    }
    if (remaining > pp->dirty_set)
        pp->dirty_set = remaining;
    if (pp->dirty_set <= 0)
        return -1;
    double f = (pp->dirty_set - remaining) / pp->dirty_set;
    return f < 0 ? 0 : f > 1 ? 1 : f;
}

const char *progress_bar(char *buf, size_t cap, double frac, int width)
{
    if (!cap)
        return buf;
    if (width < 10)
        width = 10;
    if ((size_t)width >= cap)
        width = (int)cap - 1;
    if (width < 10) {
        buf[0] = '\0';
        return buf;
    }
    char pct[16];
    int bar = width - 8; /* "[" bar "]" " 100%" */
    int pc = -1;
    if (frac >= 0) {
        /* Floor, so 100% shows only when the pass is wholly sent. */
        pc = (int)floor(frac * 100 + 1e-9);
        if (pc > 100)
            pc = 100;
        snprintf(pct, sizeof pct, "%4d%%", pc);
    } else {
        snprintf(pct, sizeof pct, "%4s%%", "-");
    }
    int fill = pc < 0 ? 0 : (int)floor(frac * bar + 1e-9);
    if (fill > bar)
        fill = bar;
    buf[0] = '[';
    memset(buf + 1, '#', (size_t)fill);
    memset(buf + 1 + fill, '.', (size_t)(bar - fill));
    buf[1 + bar] = ']';
    buf[2 + bar] = ' ';
    memcpy(buf + 3 + bar, pct, 5);
    buf[width] = '\0';
    return buf;
}
