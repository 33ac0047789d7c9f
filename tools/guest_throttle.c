/*
 * guest_throttle.c - `livemig guest`'s vCPU throttle (guest_throttle.h).
 */
#include "guest_throttle.h"

#include <string.h>

#define TIMESLICE_NS 10000000ull /* QEMU's CPU_THROTTLE_TIMESLICE_NS */

void gthr_init(gthr *t, lm_mig *m)
{
    memset(t, 0, sizeof *t);
    t->m = m;
    pthread_mutex_init(&t->lock, NULL);
}

void gthr_set(void *opaque, const lm_throttle *th)
{
    gthr *t = opaque;
    t->pct = th->cpu_percent > 99 ? 99 : th->cpu_percent;
    t->period_ns = (uint64_t)(th->period_ms ? th->period_ms : 1000) * 1000000ull;
    t->limit_bps = th->dirty_limit_bps;
    if (!th->dirty_limit_bps)
        lm_mig_throttle_report(t->m, 0);
}

/* A worker's round closed with `slept` ns: the round's maximum is
 * reported once the next round starts. */
static void close_round(gthr *t, uint64_t round, uint64_t slept)
{
    pthread_mutex_lock(&t->lock);
    if (round > t->round) {
        if (t->round)
            lm_mig_throttle_report(t->m, t->round_max_ns / 1000);
        t->round = round;
        t->round_max_ns = 0;
    }
    if (round == t->round && slept > t->round_max_ns)
        t->round_max_ns = slept;
    pthread_mutex_unlock(&t->lock);
}

uint64_t gthr_step(gthr *t, gthr_worker *w, uint64_t now, uint64_t bytes)
{
    unsigned pct = t->pct;
    uint64_t limit = t->limit_bps;
    if (!pct && !limit) {
        w->run_start_ns = 0;
        w->round = 0;
        return 0;
    }
    if (limit) {
        uint64_t period = t->period_ns;
        uint64_t round = now / period + 1; /* 0: none yet */
        if (round != w->round) {
            if (w->round)
                close_round(t, w->round, w->slept_ns);
            w->round = round;
            w->bytes = 0;
            w->slept_ns = 0;
        }
        w->bytes += bytes;
        uint64_t share = limit * period / 1000000000ull;
        if (w->bytes >= share)
            return round * period - now; /* to the end of the round */
    }
    if (pct) {
        if (!w->run_start_ns)
            w->run_start_ns = now;
        if (now - w->run_start_ns >= TIMESLICE_NS)
            return TIMESLICE_NS * pct / (100 - pct);
    }
    return 0;
}

void gthr_slept(gthr *t, gthr_worker *w, uint64_t ns)
{
    t->slept_ns += ns;
    w->slept_ns += ns;
    w->run_start_ns = 0; /* a new time slice starts after any sleep */
}
