/*
 * throttle.h - auto-converge and dirty-limit (digest §3.8): QEMU's trigger
 * rule, decided once per dirty-rate period (>= 1 s) from what the guest
 * dirtied and what went out, and carried out by the host through
 * lm_mig_set_throttle()'s hook.  The rule is a pure function (lm_thr_decide)
 * pinned by tests/unit/test_throttle.c; the rest runs on the migration
 * thread.
 */
#ifndef LM_CORE_THROTTLE_H
#define LM_CORE_THROTTLE_H

#include "livemig.h"

#include <stdbool.h>
#include <stdint.h>

/* What the rule reads: the capabilities and parameters of this migration. */
typedef struct lm_thr_cfg {
    bool auto_converge, dirty_limit;
    unsigned trigger_threshold;       /* % */
    unsigned initial, increment, max; /* % */
    bool tailslow;
    uint64_t vcpu_dirty_limit_mbps;
    unsigned period_ms;
} lm_thr_cfg;

/* Its state across periods. */
typedef struct lm_thr {
    unsigned high_cnt; /* periods in a row over the trigger (QEMU's dirty_rate_high_cnt) */
    unsigned pct;      /* CPU throttle in force, 0 = none */
    bool limited;      /* the dirty limit is in force */
    uint64_t xfer_prev;
} lm_thr;

/* QEMU's migration_trigger_throttle + mig_throttle_guest_down: when the
 * guest dirtied more than trigger_threshold % of what was transferred in
 * the period, twice, auto-converge starts the CPU throttle at initial %
 * and then raises it by increment % (with tailslow: by no more than the
 * step to the share that would bring the dirty rate to the trigger),
 * capped at max %; dirty-limit turns the per-vCPU cap on.  Returns true
 * when *t changed what the host must do. */
bool lm_thr_decide(lm_thr *t, const lm_thr_cfg *cfg, uint64_t dirty_bytes, uint64_t xfer_bytes);

/* The lm_throttle the host gets for *t. */
void lm_thr_request(const lm_thr *t, const lm_thr_cfg *cfg, lm_throttle *out);

#endif /* LM_CORE_THROTTLE_H */
