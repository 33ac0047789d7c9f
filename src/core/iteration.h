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
} lm_iter_state;

/* The actions a step may take.  opaque is the caller's. */
typedef struct lm_iter_ops {
    /* The pending bytes that must go in precopy and that may go in
     * postcopy: the cheap estimate, or the exact figure (a dirty sync). */
    void (*pending)(void *opaque, bool exact, uint64_t *must, uint64_t *can, lm_error *err);
    /* Sends up to budget bytes of every active handler; 1 when none has
     * data left now, 0 when more remains, < 0 on error. */
    int (*iterate)(void *opaque, uint64_t budget, bool in_postcopy, lm_error *err);
    /* Beyond QEMU: one more live round would at least halve pending. */
    bool (*another_round_pays)(void *opaque, uint64_t pending);
    /* The precopy switchover (pending: what the pause will carry). */
    int (*complete)(void *opaque, uint64_t pending, lm_error *err);
    /* Postcopy's end: nothing is owed; pushes no RAM. */
    int (*complete_postcopy)(void *opaque, lm_error *err);
    /* The switch to postcopy. */
    int (*start_postcopy)(void *opaque, lm_error *err);
    /* Ready but for the switchover ack, with nothing to send now: wait
     * for the ack (bounded) instead of spinning on dirty syncs. */
    void (*wait_ack)(void *opaque);
} lm_iter_ops;

/* One step (seed 000):
 *  - the cheap estimate every step;
 *  - precopy only: the exact pending when the estimate is under the
 *    threshold (or zero: a finished pass always syncs);
 *  - precopy only: switch to postcopy when asked, once must <= threshold
 *    and the switchover is allowed;
 *  - precopy: complete when the switchover is allowed and pending <=
 *    threshold (unless another round pays);
 *  - postcopy: complete only when pending == 0, never by threshold, and
 *    never take the exact pending (dirty-sync-count stays fixed);
 *  - otherwise iterate with the window's budget.
 * *ret gets the result of a completion, a switch or a failure. */
lm_iter_result lm_iteration_run(const lm_iter_ops *ops, void *opaque, const lm_iter_state *st,
                                lm_error *err, int *ret);

#endif /* LM_CORE_ITERATION_H */
