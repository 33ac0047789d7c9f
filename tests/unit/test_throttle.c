/*
 * test_throttle.c - auto-converge's and dirty-limit's trigger rule
 * (core/throttle.h, QEMU's migration_trigger_throttle and
 * mig_throttle_guest_down), pinned period by period.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/throttle.h"

static lm_thr_cfg ac(void)
{
    return (lm_thr_cfg){.auto_converge = true,
                        .trigger_threshold = 50,
                        .initial = 20,
                        .increment = 10,
                        .max = 99,
                        .vcpu_dirty_limit_mbps = 1,
                        .period_ms = 1000};
}

/* Dirtying more than 50 % of what went out, in two periods, starts the
 * throttle at cpu-throttle-initial; the count starts again after. */
static void test_trigger_needs_two_periods(void **state)
{
    lm_thr_cfg c = ac();
    lm_thr t = {0};
    assert_false(lm_thr_decide(&t, &c, 51, 100));
    assert_int_equal(t.pct, 0);
    assert_true(lm_thr_decide(&t, &c, 51, 100));
    assert_int_equal(t.pct, 20);
    assert_false(lm_thr_decide(&t, &c, 51, 100)); /* count restarted */
    assert_true(lm_thr_decide(&t, &c, 51, 100));
    assert_int_equal(t.pct, 30);
}

/* Exactly at the trigger is not over it; a quiet period does not reset
 * the count (QEMU's dirty_rate_high_cnt is only reset when it fires). */
static void test_threshold_is_strict(void **state)
{
    lm_thr_cfg c = ac();
    lm_thr t = {0};
    assert_false(lm_thr_decide(&t, &c, 50, 100));
    assert_false(lm_thr_decide(&t, &c, 50, 100));
    assert_int_equal(t.pct, 0);
    assert_false(lm_thr_decide(&t, &c, 60, 100));
    assert_false(lm_thr_decide(&t, &c, 10, 100));
    assert_true(lm_thr_decide(&t, &c, 60, 100));
    assert_int_equal(t.pct, 20);
}

/* The increments stop at max-cpu-throttle. */
static void test_capped_at_max(void **state)
{
    lm_thr_cfg c = ac();
    c.initial = 50;
    c.increment = 30;
    c.max = 70;
    lm_thr t = {0};
    for (int i = 0; i < 10; i++)
        lm_thr_decide(&t, &c, 1000, 100);
    assert_int_equal(t.pct, 70);
    assert_false(lm_thr_decide(&t, &c, 1000, 100));
    assert_false(lm_thr_decide(&t, &c, 1000, 100)); /* no change: not reported */
}

/* Tailslow: the step is at most what would bring the dirty bytes to the
 * trigger.  At 20 %, dirtying 100 against a trigger of 80 (160 sent):
 * cpu now 80, ideal 80 * 80 / 100 = 64, step 16 > 10: 10; dirtying 85:
 * ideal 75 (75.29), step 5. */
static void test_tailslow(void **state)
{
    lm_thr_cfg c = ac();
    c.tailslow = true;
    lm_thr t = {.pct = 20};
    lm_thr_decide(&t, &c, 100, 160);
    assert_true(lm_thr_decide(&t, &c, 100, 160));
    assert_int_equal(t.pct, 30);
    lm_thr u = {.pct = 20};
    lm_thr_decide(&u, &c, 85, 160);
    assert_true(lm_thr_decide(&u, &c, 85, 160));
    assert_int_equal(u.pct, 25);
}

/* Dirty-limit: the same trigger turns the per-vCPU cap on, once; the
 * request carries it in bytes/s with its period. */
static void test_dirty_limit(void **state)
{
    lm_thr_cfg c = ac();
    c.auto_converge = false;
    c.dirty_limit = true;
    c.vcpu_dirty_limit_mbps = 8;
    c.period_ms = 250;
    lm_thr t = {0};
    assert_false(lm_thr_decide(&t, &c, 1000, 100));
    assert_true(lm_thr_decide(&t, &c, 1000, 100));
    assert_true(t.limited);
    assert_int_equal(t.pct, 0);
    lm_thr_decide(&t, &c, 1000, 100);
    assert_false(lm_thr_decide(&t, &c, 1000, 100));
    lm_throttle r;
    lm_thr_request(&t, &c, &r);
    assert_int_equal(r.cpu_percent, 0);
    assert_int_equal(r.dirty_limit_bps, 8ull << 20);
    assert_int_equal(r.period_ms, 250);
}

/* Neither capability: never a decision. */
static void test_off(void **state)
{
    lm_thr_cfg c = ac();
    c.auto_converge = false;
    lm_thr t = {0};
    for (int i = 0; i < 4; i++)
        assert_false(lm_thr_decide(&t, &c, 1000, 1));
    assert_int_equal(t.high_cnt, 0);
    lm_throttle r;
    lm_thr_request(&t, &c, &r);
    assert_int_equal(r.cpu_percent, 0);
    assert_int_equal(r.dirty_limit_bps, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trigger_needs_two_periods),
        cmocka_unit_test(test_threshold_is_strict),
        cmocka_unit_test(test_capped_at_max),
        cmocka_unit_test(test_tailslow),
        cmocka_unit_test(test_dirty_limit),
        cmocka_unit_test(test_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
