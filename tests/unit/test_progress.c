/*
 * test_progress.c - the pass percentage of the CLI's progress bar
 * (tools/progress.h has the definition) and the bar's formatting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "progress.h"

#define MIB (1024.0 * 1024.0)

/* Pass 1's dirty set is the whole of RAM, whatever the first sample saw. */
static void pass1_is_total(void **state)
{
    pass_progress pp = {0};
    double f = pass_progress_update(&pp, 1, false, true, 96 * MIB, 128 * MIB);
    assert_true(f > 0.2499 && f < 0.2501);
    f = pass_progress_update(&pp, 1, false, true, 32 * MIB, 128 * MIB);
    assert_true(f > 0.7499 && f < 0.7501);
}

/* A later pass: the remaining first seen in it is its dirty set; a higher
 * one later in the pass raises it (never a negative percentage). */
static void later_pass_first_sample(void **state)
{
    pass_progress pp = {0};
    pass_progress_update(&pp, 1, false, true, 10 * MIB, 128 * MIB);
    double f = pass_progress_update(&pp, 2, false, true, 40 * MIB, 128 * MIB);
    assert_true(f == 0.0);
    f = pass_progress_update(&pp, 2, false, true, 10 * MIB, 128 * MIB);
    assert_true(f > 0.7499 && f < 0.7501);
    f = pass_progress_update(&pp, 2, false, true, 80 * MIB, 128 * MIB);
    assert_true(f == 0.0);
    f = pass_progress_update(&pp, 2, false, true, 20 * MIB, 128 * MIB);
    assert_true(f > 0.7499 && f < 0.7501);
    f = pass_progress_update(&pp, 2, false, true, 0, 128 * MIB);
    assert_true(f == 1.0);
}

/* The switch to postcopy starts a new "pass" at the same sync count. */
static void postcopy_restarts(void **state)
{
    pass_progress pp = {0};
    pass_progress_update(&pp, 3, false, true, 5 * MIB, 128 * MIB);
    double f = pass_progress_update(&pp, 3, true, true, 64 * MIB, 128 * MIB);
    assert_true(f == 0.0);
    f = pass_progress_update(&pp, 3, true, true, 16 * MIB, 128 * MIB);
    assert_true(f > 0.7499 && f < 0.7501);
}

static void unknown(void **state)
{
    pass_progress pp = {0};
    assert_true(pass_progress_update(&pp, 1, false, false, 0, 128 * MIB) < 0);
    assert_true(pass_progress_update(&pp, 2, false, true, 0, 0) < 0);
}

static void bar_format(void **state)
{
    char b[128];
    assert_string_equal(progress_bar(b, sizeof b, 0.45, 28), "[#########...........]   45%");
    assert_string_equal(progress_bar(b, sizeof b, 0.0, 18), "[..........]    0%");
    assert_string_equal(progress_bar(b, sizeof b, 1.0, 18), "[##########]  100%");
    /* floor: 99.99 % is not yet 100 % */
    assert_string_equal(progress_bar(b, sizeof b, 0.9999, 18), "[#########.]   99%");
    assert_string_equal(progress_bar(b, sizeof b, -1, 18), "[..........]    -%");
    assert_int_equal(strlen(progress_bar(b, sizeof b, 0.3, 60)), 60);
    /* never more than the buffer */
    char small[12];
    assert_int_equal(strlen(progress_bar(small, sizeof small, 0.5, 60)), 11);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pass1_is_total),    cmocka_unit_test(later_pass_first_sample),
        cmocka_unit_test(postcopy_restarts), cmocka_unit_test(unknown),
        cmocka_unit_test(bar_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
