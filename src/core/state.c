/*
 * state.c - the migration state machine: QEMU's MigrationStatus values,
 * one table of legal transitions and one setter (compare-and-swap under
 * m->lock, then the MIGRATION event).  Both sides of a migration use it.
 *
 *  source:
 *
 *   none/completed/failed/cancelled ──> setup ──> active ──> [pre-switchover] ──> device
 *                                         │         │               │              │
 *                                         │         │               │              ├──> completed
 *                                         │         └─(device)─> postcopy-device ─> postcopy-active
 * ──> completed │           (POSTCOPY_RUN sent)  (RUN confirmed) │  ▲ │ ▼  │ │ postcopy-paused <──>
 * postcopy-recover-setup │               ▲    └──> postcopy-recover ──┘ any of
 * setup/active/pre-switchover/device ──> cancelling ──> cancelled any of
 * setup/active/pre-switchover/device ──> failed (source restarted)
 *   postcopy-device ──> failed (source restarted): only on the destination's
 *                       ERROR, its word that it never ran; otherwise paused
 *
 *  destination:
 *
 *   none/completed/failed/cancelled ──> setup (listening) ──> active (loading) ──> completed
 *                                         └──────────────┴──> failed | cancelling ──> cancelled
 *   active ──(POSTCOPY_RUN)──> postcopy-active ──> completed
 *                                    └──> postcopy-paused (any failure: the guest runs on)
 *                                    └──> failed (lazy restore only: the file failed)
 *
 * Cancelling only ever leads to cancelled (QEMU's rule); postcopy states
 * are never cancelled (they pause instead).
 */
#include "core/internal.h"

#define S(x) (1u << LM_STATUS_##x)

/* allowed[from] = mask of states reachable from `from`. */
static const uint32_t allowed[LM_STATUS__MAX] = {
    [LM_STATUS_NONE] = S(SETUP),
    [LM_STATUS_SETUP] = S(ACTIVE) | S(WAIT_UNPLUG) | S(FAILED) | S(CANCELLING),
    [LM_STATUS_WAIT_UNPLUG] = S(ACTIVE) | S(FAILED) | S(CANCELLING),
    [LM_STATUS_ACTIVE] = S(PRE_SWITCHOVER) | S(DEVICE) | S(COMPLETED) | S(FAILED) | S(CANCELLING) |
                         S(POSTCOPY_ACTIVE) | S(COLO),
    [LM_STATUS_PRE_SWITCHOVER] = S(DEVICE) | S(FAILED) | S(CANCELLING),
    [LM_STATUS_DEVICE] = S(COMPLETED) | S(FAILED) | S(CANCELLING) | S(POSTCOPY_DEVICE) |
                         S(POSTCOPY_ACTIVE) | S(COLO),
    [LM_STATUS_POSTCOPY_DEVICE] = S(POSTCOPY_ACTIVE) | S(FAILED) | S(POSTCOPY_PAUSED),
    /* failed: only a lazy restore whose file fails (core/lazy.c): there is
     * no link to recover, the blocks still owing pages are fenced. */
    [LM_STATUS_POSTCOPY_ACTIVE] = S(POSTCOPY_PAUSED) | S(COMPLETED) | S(FAILED),
    [LM_STATUS_POSTCOPY_PAUSED] = S(POSTCOPY_RECOVER_SETUP) | S(POSTCOPY_RECOVER),
    [LM_STATUS_POSTCOPY_RECOVER_SETUP] = S(POSTCOPY_PAUSED) | S(POSTCOPY_RECOVER),
    [LM_STATUS_POSTCOPY_RECOVER] = S(POSTCOPY_ACTIVE) | S(POSTCOPY_PAUSED),
    [LM_STATUS_CANCELLING] = S(CANCELLED),
    [LM_STATUS_COLO] = S(COMPLETED),
    [LM_STATUS_COMPLETED] = S(SETUP),
    [LM_STATUS_FAILED] = S(SETUP),
    [LM_STATUS_CANCELLED] = S(SETUP),
};

bool lm_state_transition_valid(lm_status from, lm_status to)
{
    if ((unsigned)from >= LM_STATUS__MAX || (unsigned)to >= LM_STATUS__MAX)
        return false;
    return (allowed[from] >> to) & 1;
}

bool lm_status_is_active(lm_status s)
{
    switch (s) {
    case LM_STATUS_NONE:
    case LM_STATUS_COMPLETED:
    case LM_STATUS_FAILED:
    case LM_STATUS_CANCELLED:
        return false;
    default:
        return true;
    }
}

bool lm_status_is_postcopy(lm_status s)
{
    return s == LM_STATUS_POSTCOPY_DEVICE || s == LM_STATUS_POSTCOPY_ACTIVE ||
           s == LM_STATUS_POSTCOPY_PAUSED || s == LM_STATUS_POSTCOPY_RECOVER_SETUP ||
           s == LM_STATUS_POSTCOPY_RECOVER;
}

bool lm_state_set_locked(lm_mig *m, lm_status from, lm_status to)
{
    lm_status cur = m->status;
    if (from != LM_STATUS__MAX && cur != from)
        return false;
    if (!lm_state_transition_valid(cur, to))
        return false;
    m->status = to;
    pthread_cond_broadcast(&m->cond);
    /* Queue the event now, in the order of the changes; it is delivered
     * after the lock is dropped (lm_emit_status). */
    if (m->caps & (1ull << LM_CAP_EVENTS))
        lm_event_queue_status_locked(m, to);
    return true;
}

bool lm_state_set(lm_mig *m, lm_status from, lm_status to)
{
    pthread_mutex_lock(&m->lock);
    bool ok = lm_state_set_locked(m, from, to);
    pthread_mutex_unlock(&m->lock);
    if (ok)
        lm_emit_status(m);
    return ok;
}
