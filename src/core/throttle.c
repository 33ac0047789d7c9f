/*
 * throttle.c - auto-converge and dirty-limit: the trigger rule
 * (throttle.h) and its driving on the source's migration thread.
 */
#include "core/throttle.h"
#include "core/outgoing.h"

#include <errno.h>
#include <string.h>

bool lm_thr_decide(lm_thr *t, const lm_thr_cfg *cfg, uint64_t dirty_bytes, uint64_t xfer_bytes)
{
    if (!cfg->auto_converge && !cfg->dirty_limit)
        return false;
    uint64_t threshold = xfer_bytes * cfg->trigger_threshold / 100;
    if (dirty_bytes <= threshold)
        return false; /* QEMU does not reset the count here either */
    if (++t->high_cnt < 2)
        return false;
    t->high_cnt = 0;
    if (cfg->dirty_limit) {
        /* Applied once (QEMU: again only when the parameter changes,
         * which lm_thr_request reads afresh). */
        if (t->limited)
            return false;
        t->limited = true;
        return true;
    }
    unsigned old = t->pct;
    if (!t->pct) {
        t->pct = cfg->initial;
    } else {
        unsigned inc = cfg->increment;
        if (cfg->tailslow) {
            /* The CPU share that would bring the dirty rate down to the
             * trigger, as a step from the current share. */
            uint64_t cpu_now = 100 - t->pct;
            uint64_t cpu_ideal = cpu_now * threshold / dirty_bytes;
            uint64_t step = cpu_now - cpu_ideal;
            if (step < inc)
                inc = (unsigned)step;
        }
        t->pct += inc;
    }
    if (t->pct > cfg->max)
        t->pct = cfg->max;
    return t->pct != old;
}

void lm_thr_request(const lm_thr *t, const lm_thr_cfg *cfg, lm_throttle *out)
{
    memset(out, 0, sizeof *out);
    out->cpu_percent = t->pct;
    if (t->limited) {
        out->dirty_limit_bps = cfg->vcpu_dirty_limit_mbps << 20;
        out->period_ms = cfg->period_ms;
    }
}

/* ------------------------------------------------ the migration thread */

/* QEMU's CPU_THROTTLE_DIRTY_SYNC_TIMESLICE_MS: with a throttle on, a sync
 * at least this often, so that its decisions keep coming while a pass
 * over a large RAM takes longer than that. */
#define THR_SYNC_EVERY_NS 5000000000ull

static void cfg_of(const lm_outgoing *g, uint64_t caps, lm_thr_cfg *c)
{
    const lm_params *p = &g->params;
    c->auto_converge = caps & (1ull << LM_CAP_AUTO_CONVERGE);
    c->dirty_limit = caps & (1ull << LM_CAP_DIRTY_LIMIT);
    c->trigger_threshold = p->throttle_trigger_threshold;
    c->initial = p->cpu_throttle_initial;
    c->increment = p->cpu_throttle_increment;
    c->max = p->max_cpu_throttle;
    c->tailslow = p->cpu_throttle_tailslow;
    c->vcpu_dirty_limit_mbps = p->vcpu_dirty_limit;
    c->period_ms = (unsigned)p->x_vcpu_dirty_limit_period;
}

/* Tells the host; m->thr_fn was set before this migration started and
 * cannot change while it runs (lm_mig_set_throttle). */
static void apply(lm_outgoing *g, const lm_thr_cfg *c)
{
    lm_mig *m = g->m;
    lm_throttle t;
    lm_thr_request(&g->thr, c, &t);
    g->thr_applied_mbps = t.dirty_limit_bps >> 20;
    LM_ATOMIC_SET(&m->stats.cpu_throttle_pct, t.cpu_percent);
    LM_ATOMIC_SET(&m->stats.dirty_limit_mbps, g->thr_applied_mbps);
    if (m->thr_fn)
        m->thr_fn(m->thr_opaque, &t);
}

static void period_hook(void *opaque, uint64_t dirty_bytes)
{
    lm_outgoing *g = opaque;
    uint64_t xfer = lm_out_bytes(&g->o);
    uint64_t period_xfer = xfer - g->thr.xfer_prev;
    g->thr.xfer_prev = xfer;
    if (g->o.last_stage || g->o.postcopy)
        return; /* the guest is stopped here */
    lm_thr_cfg c;
    cfg_of(g, g->thr_caps, &c);
    bool changed = lm_thr_decide(&g->thr, &c, dirty_bytes, period_xfer);
    /* A new vcpu-dirty-limit applies at once once the cap is on (QEMU). */
    if (changed || (g->thr.limited && c.vcpu_dirty_limit_mbps != g->thr_applied_mbps))
        apply(g, &c);
}

void lm_thr_start(lm_outgoing *g, uint64_t caps)
{
    lm_mig *m = g->m;
    memset(&g->thr, 0, sizeof g->thr);
    g->thr_caps = caps;
    g->thr_on = caps & ((1ull << LM_CAP_AUTO_CONVERGE) | (1ull << LM_CAP_DIRTY_LIMIT));
    LM_ATOMIC_SET(&m->stats.cpu_throttle_pct, 0);
    LM_ATOMIC_SET(&m->stats.dirty_limit_mbps, 0);
    LM_ATOMIC_SET(&m->stats.dl_throttle_us, 0);
    if (!g->thr_on)
        return;
    g->thr.xfer_prev = lm_out_bytes(&g->o);
    m->ram.hooks.period = period_hook;
    m->ram.hooks.period_opaque = g;
}

void lm_thr_end(lm_outgoing *g)
{
    lm_mig *m = g->m;
    if (!g->thr_on)
        return;
    m->ram.hooks.period = NULL;
    m->ram.hooks.period_opaque = NULL;
    g->thr_on = false;
    if (g->thr.pct || g->thr.limited) {
        memset(&g->thr, 0, sizeof g->thr);
        lm_thr_cfg c;
        cfg_of(g, 0, &c);
        apply(g, &c);
    }
}

bool lm_thr_sync_due(const lm_outgoing *g, uint64_t now)
{
    return g->thr_on && !g->o.postcopy && g->m->ram.last_sync_ns &&
           now - g->m->ram.last_sync_ns >= THR_SYNC_EVERY_NS;
}
