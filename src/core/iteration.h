/*
 * iteration.h - one step of the source's migration loop, the decision
 * rules of seed 000 (digest §3.2, DESIGN §4), apart from everything it
 * drives so that each rule is pinned by a unit test with fake handlers
 * (tests/unit/test_iteration.c).  The caller (outgoing.c) snapshots the
 * state and supplies the actions.
 */
#ifndef LM_CORE_ITERATION_H
#define LM_CORE_ITERATION_H

#include "livemig.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    LM_ITER_RESUME, /* loop again */
    LM_ITER_SKIP,   /* switched to postcopy: loop again */
    LM_ITER_BREAK,  /* done or failed (*ret says which) */
} lm_iter_result;

/* What one step knows, snapshotted by the caller. */
typedef struct lm_iter_state {
    bool in_postcopy;    /* postcopy-device or postcopy-active */
    bool can_switchover; /* switchover-ack given, not needed, or the guest is stopped */
    bool start_postcopy; /* migrate-start-postcopy was called */
    uint64_t threshold;  /* bytes: bandwidth x downtime-limit */
    uint64_t budget;     /* bytes the rate limiter allows in this window */
    bool force_sync;     /* a throttle is on and no sync for 5 s (throttle.c) */
} lm_iter_state;

/* The actions a step may take.  opaque is the caller's. */
typedef struct lm_iter_ops {
    /* The pending bytes that must go in precopy and that may go in
     * postcopy: the cheap estimate, or the exact figure (a dirty sync). */
    void (*pending)(void *opaque, bool exact, uint64_t *must, uint64_t *can, lm_error *err);
    /* Sends up to budget bytes of every active handler; 1 when none has
     * data left now, 0 when more remains, < 0 on error. */
    int (*iterate)(void *opaque, uint64_t budget, bool in_postcopy, lm_error *err);
    /* Bytes already written that the kernel still holds (socket queues
     * of every channel): the pause must drain them too.  Precopy only. */
    uint64_t (*queued)(void *opaque);
    /* Beyond QEMU: one more live round (sending pending, or letting the
     * queued bytes drain while the guest runs) would at least halve what
     * the pause carries. */
    bool (*another_round_pays)(void *opaque, uint64_t pending, uint64_t queued);
    /* The precopy switchover (pending: what the pause will carry). */
    int (*complete)(void *opaque, uint64_t pending, lm_error *err);
    /* Postcopy's end: nothing is owed; pushes no RAM. */
    int (*complete_postcopy)(void *opaque, lm_error *err);
    /* The switch to postcopy. */
    int (*start_postcopy)(void *opaque, lm_error *err);
    /* Ready but for the switchover ack, with nothing to send now: wait
     * for the ack (bounded) instead of spinning on dirty syncs. */
    void (*wait_ack)(void *opaque);
    /* Nothing to send now but queued bytes still in the kernel: wait for
     * them to drain (bounded) instead of spinning on dirty syncs. */
    void (*wait_drain)(void *opaque, uint64_t queued);
} lm_iter_ops;

/* One step (seed 000):
 *  - the cheap estimate every step;
 *  - precopy only: the exact pending when the estimate is under the
 *    threshold (or zero: a finished pass always syncs), or when
 *    force_sync says a throttle's decisions are due (QEMU's 5 s dirty
 *    sync timer of auto-converge);
 *  - precopy only: what the kernel still holds for the sockets (queued)
 *    counts as pending for every decision below: the pause drains it
 *    before the destination can confirm, so on a slow link it is most of
 *    the downtime (QEMU leaves it out, and pauses tens of milliseconds
 *    longer than it predicts at 1 Gbit/s);
 *  - precopy only: switch to postcopy when asked, once must <= threshold
 *    and the switchover is allowed (queued is left out here, as QEMU
 *    does: a switch asked for at once must not wait for a measurement);
 *  - precopy: complete when the switchover is allowed and pending +
 *    queued <= threshold (unless another round pays);
 *  - postcopy: complete only when pending == 0, never by threshold, and
 *    never take the exact pending (dirty-sync-count stays fixed);
 *  - otherwise iterate with the window's budget; when nothing was left to
 *    send, wait for the ack when only it holds the switchover, or for
 *    the queued bytes to drain when there are any.
 * *ret gets the result of a completion, a switch or a failure. */
lm_iter_result lm_iteration_run(const lm_iter_ops *ops, void *opaque, const lm_iter_state *st,
                                lm_error *err, int *ret);

#endif /* LM_CORE_ITERATION_H */
