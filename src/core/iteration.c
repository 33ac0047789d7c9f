/*
 * iteration.c - one step of the source's migration loop: the decision
 * rules of seed 000 (iteration.h), with no I/O and no state of its own.
 */
#include "core/iteration.h"

lm_iter_result lm_iteration_run(const lm_iter_ops *ops, void *opaque, const lm_iter_state *st,
                                lm_error *err, int *ret)
{
    uint64_t must = 0, can = 0, queued = 0;
    bool complete_ready, held_by_ack = false;

    /* Fast path: the cheap estimate. */
    ops->pending(opaque, false, &must, &can, err);
    uint64_t pending = must + can;
    if (st->in_postcopy) {
        /* Postcopy completes only when everything is flushed, never by
         * threshold, and the complete step pushes no RAM (recovery stays
         * possible until the end). */
        complete_ready = pending == 0;
    } else {
        /* The exact pending (a dirty sync) is only worth it in precopy:
         * it is what starts a new pass.  A finished pass (estimate 0)
         * always syncs, as QEMU does: with no bandwidth measured yet the
         * threshold is 0, and 0 <= 0 would complete without looking at
         * what the guest dirtied meanwhile, all of it then sent in the
         * pause. */
        if (pending == 0 || pending < st->threshold || st->force_sync) {
            ops->pending(opaque, true, &must, &can, err);
            if (err && err->code) {
                *ret = err->code;
                return LM_ITER_BREAK;
            }
            pending = must + can;
        }
        /* Switch to postcopy when asked, once what must go in precopy
         * fits the threshold and the switchover is allowed (QEMU's rule:
         * what is queued only delays the destination's start, and a
         * switch asked for at once, before any bandwidth is known, must
         * not wait for the first measurement). */
        if (must <= st->threshold && st->can_switchover && st->start_postcopy) {
            *ret = ops->start_postcopy(opaque, err);
            return *ret < 0 ? LM_ITER_BREAK : LM_ITER_SKIP;
        }
        queued = ops->queued(opaque);
        complete_ready = st->can_switchover && pending + queued <= st->threshold;
        held_by_ack = !st->can_switchover && pending + queued <= st->threshold;
        if (complete_ready && ops->another_round_pays(opaque, pending, queued))
            complete_ready = false;
    }
    if (complete_ready) {
        *ret = st->in_postcopy ? ops->complete_postcopy(opaque, err)
                               : ops->complete(opaque, pending + queued, err);
        return LM_ITER_BREAK;
    }
    int r = ops->iterate(opaque, st->budget, st->in_postcopy, err);
    if (r < 0) {
        *ret = r;
        return LM_ITER_BREAK;
    }
    if (r == 1 && held_by_ack)
        ops->wait_ack(opaque);
    else if (r == 1 && queued)
        ops->wait_drain(opaque, queued);
    return LM_ITER_RESUME;
}
