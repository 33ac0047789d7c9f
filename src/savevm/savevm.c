/*
 * savevm.c - the registry of state handlers (RAM now, devices later) and
 * the drivers that run them: setup, pending, iterate, complete, cleanup.
 *
 * Iteration is round-robin over every active handler and never stops at
 * the first unfinished one (seed 001, digest §3.6).  Beyond QEMU, each
 * handler gets a fair share of the bandwidth budget of the current window
 * (what one leaves unused passes to the next), and the starting handler
 * rotates, so a fast dirtier cannot starve the others even under a low
 * max-bandwidth (digest §12 item 3).
 *
 * Threads: the migration thread only.
 */
#include "core/internal.h"

#include <errno.h>
#include <stdint.h>

static int ensure_registered(lm_mig *m)
{
    if (m->nhandlers == 0) {
        m->handlers[0].ops = &lm_ram_handler_ops;
        m->handlers[0].opaque = m;
        m->nhandlers = 1;
    }
    return 0;
}

int lm_savevm_setup(lm_mig *m, lm_out *o, lm_error *err)
{
    ensure_registered(m);
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        h->sent = 0;
        if (h->ops->save_setup) {
            int ret = h->ops->save_setup(h->opaque, o, err);
            if (ret < 0)
                return lm_error_prefix(err, "%s setup", h->ops->name);
        }
    }
    return 0;
}

void lm_savevm_pending(lm_mig *m, bool exact, lm_out *o, uint64_t *must, uint64_t *can,
                       lm_error *err)
{
    *must = *can = 0;
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        if (exact && h->ops->pending_exact) {
            if (h->ops->pending_exact(h->opaque, o, must, can, err) < 0)
                return;
        } else if (h->ops->pending_estimate) {
            h->ops->pending_estimate(h->opaque, must, can);
        }
    }
}

int lm_savevm_iterate(lm_mig *m, lm_out *o, uint64_t budget, bool in_postcopy, lm_error *err)
{
    static unsigned rotor; /* migration thread only */
    unsigned n = m->nhandlers, active = 0;
    for (unsigned i = 0; i < n; i++) {
        lm_handler *h = &m->handlers[i];
        if (h->ops->save_iterate && (!in_postcopy || (h->ops->has_postcopy &&
                                                      h->ops->has_postcopy(h->opaque))))
            active++;
    }
    if (!active)
        return 1;
    bool all_finished = true;
    uint64_t left = budget;
    unsigned start = rotor++ % n, turn = 0;
    for (unsigned k = 0; k < n; k++) {
        lm_handler *h = &m->handlers[(start + k) % n];
        if (!h->ops->save_iterate)
            continue;
        if (in_postcopy && !(h->ops->has_postcopy && h->ops->has_postcopy(h->opaque)))
            continue;
        /* Fair share of what is left among the handlers still to run. */
        uint64_t share = left == UINT64_MAX ? UINT64_MAX : left / (active - turn);
        turn++;
        uint64_t before = lm_chan_bytes_written(o->chan);
        int ret = h->ops->save_iterate(h->opaque, o, share, err);
        uint64_t used = lm_chan_bytes_written(o->chan) - before;
        h->sent += used;
        if (left != UINT64_MAX)
            left = used >= left ? 0 : left - used;
        if (ret < 0)
            return lm_error_prefix(err, "%s iterate", h->ops->name);
        if (ret == 0)
            all_finished = false;
    }
    return all_finished;
}

int lm_savevm_complete(lm_mig *m, lm_out *o, lm_error *err)
{
    return lm_savevm_complete_some(m, o, 0, err);
}

/* Postcopy splits completion in two (digest §6.2 step 5, §3.10): handlers
 * that cannot run in postcopy finish at the switch, the others at the end. */
int lm_savevm_complete_some(lm_mig *m, lm_out *o, int which, lm_error *err)
{
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        bool pc = h->ops->has_postcopy && h->ops->has_postcopy(h->opaque);
        if ((which == 1 && pc) || (which == 2 && !pc))
            continue;
        if (h->ops->save_complete && h->ops->save_complete(h->opaque, o, err) < 0)
            return lm_error_prefix(err, "%s complete", h->ops->name);
    }
    return 0;
}

void lm_savevm_cleanup(lm_mig *m)
{
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        if (h->ops->save_cleanup)
            h->ops->save_cleanup(h->opaque);
    }
}
