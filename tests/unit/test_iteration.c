/*
 * test_iteration.c - the decision rules of seed 000 (DESIGN §4, digest
 * §3.2), each pinned on lm_iteration_run with fake handlers: a change of
 * any rule fails one of these.  Also RAM's postcopy complete step, which
 * must send nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "core/internal.h"
#include "core/iteration.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* A fake migration: what pending answers, and a log of what was called. */
typedef struct fake {
    uint64_t est_must, est_can;     /* the cheap estimate */
    uint64_t exact_must, exact_can; /* after a dirty sync */
    int iterate_ret;
    bool round_pays;
    uint64_t queued; /* bytes the kernel holds */
    /* calls */
    unsigned estimates, exacts, iterates, completes, pc_completes, switches, ack_waits;
    unsigned round_asks, drain_waits;
    uint64_t iterate_budget, complete_pending, round_pending, round_queued, drain_queued;
} fake;

static void f_pending(void *o, bool exact, uint64_t *must, uint64_t *can, lm_error *err)
{
    fake *f = o;
    if (exact) {
        f->exacts++;
        *must = f->exact_must;
        *can = f->exact_can;
    } else {
        f->estimates++;
        *must = f->est_must;
        *can = f->est_can;
    }
}

static int f_iterate(void *o, uint64_t budget, bool in_postcopy, lm_error *err)
{
    fake *f = o;
    f->iterates++;
    f->iterate_budget = budget;
    return f->iterate_ret;
}

static uint64_t f_queued(void *o)
{
    return ((fake *)o)->queued;
}

static bool f_round_pays(void *o, uint64_t pending, uint64_t queued)
{
    fake *f = o;
    f->round_asks++;
    f->round_pending = pending;
    f->round_queued = queued;
    return f->round_pays;
}

static void f_wait_drain(void *o, uint64_t queued)
{
    fake *f = o;
    f->drain_waits++;
    f->drain_queued = queued;
}

static int f_complete(void *o, uint64_t pending, lm_error *err)
{
    fake *f = o;
    f->completes++;
    f->complete_pending = pending;
    return 0;
}

static int f_complete_pc(void *o, lm_error *err)
{
    ((fake *)o)->pc_completes++;
    return 0;
}

static int f_switch(void *o, lm_error *err)
{
    ((fake *)o)->switches++;
    return 0;
}

static void f_wait_ack(void *o)
{
    ((fake *)o)->ack_waits++;
}

static const lm_iter_ops ops = {
    .pending = f_pending,
    .iterate = f_iterate,
    .queued = f_queued,
    .another_round_pays = f_round_pays,
    .wait_drain = f_wait_drain,
    .complete = f_complete,
    .complete_postcopy = f_complete_pc,
    .start_postcopy = f_switch,
    .wait_ack = f_wait_ack,
};

static lm_iter_result step(fake *f, lm_iter_state st)
{
    lm_error err = {0};
    int ret = 0;
    return lm_iteration_run(&ops, f, &st, &err, &ret);
}

#define PRECOPY(thr) ((lm_iter_state){.can_switchover = true, .threshold = (thr), .budget = 777})

/* Completion on pending <= threshold: equal completes, one byte more does
 * not (QEMU's rule; '<' would be a change). */
static void test_complete_at_threshold(void **state)
{
    fake f = {.est_must = 50, .exact_must = 100};
    assert_int_equal(step(&f, PRECOPY(100)), LM_ITER_BREAK);
    assert_int_equal(f.completes, 1);
    assert_int_equal(f.complete_pending, 100);
    assert_int_equal(f.iterates, 0);

    fake g = {.est_must = 50, .exact_must = 101};
    assert_int_equal(step(&g, PRECOPY(100)), LM_ITER_RESUME);
    assert_int_equal(g.completes, 0);
    assert_int_equal(g.iterates, 1);
    assert_int_equal(g.iterate_budget, 777);
}

/* The exact pending (a dirty sync) only when the estimate is under the
 * threshold, or zero (a finished pass always syncs). */
static void test_exact_only_under_threshold(void **state)
{
    fake over = {.est_must = 200, .exact_must = 0};
    step(&over, PRECOPY(100));
    assert_int_equal(over.estimates, 1);
    assert_int_equal(over.exacts, 0);
    assert_int_equal(over.completes, 0); /* the estimate decided: keep sending */

    fake equal = {.est_must = 100, .exact_must = 100};
    step(&equal, PRECOPY(100));
    assert_int_equal(equal.exacts, 0);

    fake under = {.est_must = 99, .exact_must = 5000};
    step(&under, PRECOPY(100));
    assert_int_equal(under.exacts, 1);
    assert_int_equal(under.completes, 0); /* the exact figure decided */

    fake zero = {.est_must = 0, .exact_must = 5000};
    step(&zero, PRECOPY(0));
    assert_int_equal(zero.exacts, 1);
    assert_int_equal(zero.completes, 0);
}

/* Postcopy: never an exact pending (dirty-sync-count stays fixed after
 * the switch), never completion by threshold, only at pending == 0, and
 * then the postcopy completion, not an iteration. */
static void test_postcopy_completes_only_at_zero(void **state)
{
    lm_iter_state st = {.in_postcopy = true, .can_switchover = true, .threshold = UINT64_MAX};
    fake f = {.est_can = 1};
    assert_int_equal(step(&f, st), LM_ITER_RESUME);
    assert_int_equal(f.exacts, 0);
    assert_int_equal(f.pc_completes, 0);
    assert_int_equal(f.completes, 0);
    assert_int_equal(f.iterates, 1);

    fake z = {.est_can = 0, .exact_can = 1};
    assert_int_equal(step(&z, st), LM_ITER_BREAK);
    assert_int_equal(z.exacts, 0);
    assert_int_equal(z.pc_completes, 1);
    assert_int_equal(z.completes, 0);
    assert_int_equal(z.iterates, 0);
    assert_int_equal(z.round_asks, 0); /* nor an extra round */
}

/* The switch to postcopy waits for must <= threshold and the switchover
 * ack; what may go postcopy does not hold it back. */
static void test_switch_needs_must_and_ack(void **state)
{
    lm_iter_state st = PRECOPY(100);
    st.start_postcopy = true;

    fake big = {.est_must = 500, .exact_must = 500};
    assert_int_equal(step(&big, st), LM_ITER_RESUME);
    assert_int_equal(big.switches, 0);

    fake can = {.est_must = 50, .est_can = 1 << 30, .exact_must = 50, .exact_can = 1 << 30};
    assert_int_equal(step(&can, st), LM_ITER_SKIP);
    assert_int_equal(can.switches, 1);
    assert_int_equal(can.completes, 0);

    lm_iter_state noack = st;
    noack.can_switchover = false;
    fake held = {.est_must = 50, .exact_must = 50};
    assert_int_equal(step(&held, noack), LM_ITER_RESUME);
    assert_int_equal(held.switches, 0);

    fake equal = {.est_must = 100, .exact_must = 100};
    assert_int_equal(step(&equal, st), LM_ITER_SKIP); /* <=, not < */

    lm_iter_state asked_not = PRECOPY(100);
    fake no = {.est_must = 50, .exact_must = 50};
    step(&no, asked_not);
    assert_int_equal(no.switches, 0);
    assert_int_equal(no.completes, 1);
}

/* Without the ack the precopy switchover waits, and when nothing is left
 * to send it waits for the ack rather than spinning on syncs. */
static void test_ack_gates_completion(void **state)
{
    lm_iter_state st = PRECOPY(100);
    st.can_switchover = false;
    fake f = {.est_must = 10, .exact_must = 10, .iterate_ret = 1};
    assert_int_equal(step(&f, st), LM_ITER_RESUME);
    assert_int_equal(f.completes, 0);
    assert_int_equal(f.ack_waits, 1);

    fake more = {.est_must = 10, .exact_must = 10, .iterate_ret = 0};
    step(&more, st);
    assert_int_equal(more.ack_waits, 0); /* data left: keep sending */

    fake over = {.est_must = 1000, .iterate_ret = 1};
    step(&over, st);
    assert_int_equal(over.ack_waits, 0); /* not ready anyway */
}

/* Beyond QEMU: an extra round that pays postpones the switchover. */
static void test_extra_round(void **state)
{
    fake f = {.est_must = 10, .exact_must = 10, .round_pays = true};
    assert_int_equal(step(&f, PRECOPY(100)), LM_ITER_RESUME);
    assert_int_equal(f.round_asks, 1);
    assert_int_equal(f.completes, 0);
    assert_int_equal(f.iterates, 1);
}

/* Bytes the kernel still holds count as pending in precopy: they hold the
 * completion back, travel to complete() and to the extra-round question,
 * and with nothing else to send the step waits for them to drain instead
 * of spinning on dirty syncs. */
static void test_queued_counts_in_precopy(void **state)
{
    fake fits = {.est_must = 40, .exact_must = 40, .queued = 60};
    assert_int_equal(step(&fits, PRECOPY(100)), LM_ITER_BREAK);
    assert_int_equal(fits.completes, 1);
    assert_int_equal(fits.complete_pending, 100);
    assert_int_equal(fits.round_pending, 40);
    assert_int_equal(fits.round_queued, 60);

    fake over = {.est_must = 40, .exact_must = 40, .queued = 61, .iterate_ret = 1};
    assert_int_equal(step(&over, PRECOPY(100)), LM_ITER_RESUME);
    assert_int_equal(over.completes, 0);
    assert_int_equal(over.drain_waits, 1);
    assert_int_equal(over.drain_queued, 61);

    fake sending = {.est_must = 40, .exact_must = 40, .queued = 61, .iterate_ret = 0};
    step(&sending, PRECOPY(100));
    assert_int_equal(sending.drain_waits, 0); /* data left: keep sending */

    fake idle = {.queued = 0, .iterate_ret = 1, .round_pays = true};
    step(&idle, PRECOPY(100));
    assert_int_equal(idle.drain_waits, 0); /* nothing queued: no wait */

    /* The switch to postcopy keeps QEMU's rule, must alone: asked for at
     * once (threshold 0 before any measurement) it does not wait. */
    lm_iter_state st = PRECOPY(0);
    st.start_postcopy = true;
    fake sw = {.queued = 1 << 20};
    assert_int_equal(step(&sw, st), LM_ITER_SKIP);
    assert_int_equal(sw.switches, 1);

    /* Postcopy never looks at it: completion only at pending == 0. */
    lm_iter_state pc = {.in_postcopy = true, .can_switchover = true, .threshold = 0};
    fake p = {.queued = 1 << 20};
    assert_int_equal(step(&p, pc), LM_ITER_BREAK);
    assert_int_equal(p.pc_completes, 1);
}

/* A throttle's 5 s rule forces the exact pending (a dirty sync) even far
 * over the threshold; never in postcopy. */
static void test_force_sync(void **state)
{
    lm_iter_state st = PRECOPY(100);
    st.force_sync = true;
    fake f = {.est_must = 1 << 30, .exact_must = 1 << 30};
    assert_int_equal(step(&f, st), LM_ITER_RESUME);
    assert_int_equal(f.exacts, 1);
    assert_int_equal(f.iterates, 1);

    lm_iter_state pc = {.in_postcopy = true, .force_sync = true};
    fake p = {.est_can = 5};
    step(&p, pc);
    assert_int_equal(p.exacts, 0);
}

/* An error of the exact pending (a failed sync) ends the loop. */
static void failing_exact(void *o, bool exact, uint64_t *must, uint64_t *can, lm_error *err)
{
    *must = *can = 0;
    if (exact)
        lm_error_set(err, -EIO, "dirty sync failed");
}

static void test_sync_error_breaks(void **state)
{
    lm_iter_ops o = ops;
    o.pending = failing_exact;
    fake f = {0};
    lm_iter_state st = PRECOPY(100);
    lm_error err = {0};
    int ret = 0;
    assert_int_equal(lm_iteration_run(&o, &f, &st, &err, &ret), LM_ITER_BREAK);
    assert_int_equal(ret, -EIO);
    assert_int_equal(f.completes, 0);
}

/* RAM's complete step in postcopy pushes nothing (seed 000: recovery stays
 * possible until the end), and refuses to complete with pages owed. */
static void nop(void *o)
{
}

static void test_ram_postcopy_complete_sends_nothing(void **state)
{
    static const lm_host_ops hops = {.stop = nop, .start = nop};
    lm_mig *m = NULL;
    lm_error err = {0};
    size_t len = 16 * 4096;
    uint8_t *mem = aligned_alloc(4096, len);
    memset(mem, 0x11, len);
    assert_int_equal(lm_mig_new(&hops, NULL, LM_RUN_PAUSED, &m, &err), 0);
    assert_int_equal(lm_ram_add(m, "ram0", mem, len, 4096, &err), 0);
    int fd = open("/dev/null", O_WRONLY);
    lm_chan *c = NULL;
    assert_int_equal(lm_chan_new(fd, "null", &c, &err), 0);
    lm_out o = {.chan = c, .ctr = &m->stats.out};

    assert_int_equal(lm_ram_handler_ops.save_setup(&m->ram, &o, &err), 0);
    /* The switch with every page owed, then the complete step. */
    lm_ram_set_postcopy(&m->ram);
    assert_int_equal(lm_chan_flush(c), 0);
    uint64_t before = lm_chan_bytes_written(c);
    assert_true(lm_ram_handler_ops.save_complete(&m->ram, &o, &err) < 0);
    assert_non_null(strstr(err.msg, "still owed"));
    assert_int_equal(lm_chan_bytes_written(c), before);

    /* Nothing owed: completes, and still writes nothing. */
    lm_error_clear(&err);
    o.postcopy = true;
    assert_int_equal(lm_ram_handler_ops.save_iterate(&m->ram, &o, UINT64_MAX, &err), 1);
    assert_int_equal(lm_chan_flush(c), 0);
    before = lm_chan_bytes_written(c);
    assert_int_equal(lm_ram_handler_ops.save_complete(&m->ram, &o, &err), 0);
    assert_int_equal(lm_chan_flush(c), 0);
    assert_int_equal(lm_chan_bytes_written(c), before);

    lm_ram_save_cleanup(&m->ram);
    lm_chan_free(c);
    lm_mig_free(m);
    free(mem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_complete_at_threshold),
        cmocka_unit_test(test_exact_only_under_threshold),
        cmocka_unit_test(test_postcopy_completes_only_at_zero),
        cmocka_unit_test(test_switch_needs_must_and_ack),
        cmocka_unit_test(test_ack_gates_completion),
        cmocka_unit_test(test_extra_round),
        cmocka_unit_test(test_queued_counts_in_precopy),
        cmocka_unit_test(test_force_sync),
        cmocka_unit_test(test_sync_error_breaks),
        cmocka_unit_test(test_ram_postcopy_complete_sends_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
