/*
 * test_state.c - walks the migration state table, the single setter and
 * the capability/parameter tables (names, defaults, validation), and checks
 * that a slow listener still gets every MIGRATION event, in order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "core/internal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

static void nop(void *o)
{
}
static const lm_host_ops ops = {.stop = nop, .start = nop};

/* The table, written out independently of state.c: every pair not listed
 * here must be refused. */
static const struct {
    lm_status from, to;
} legal[] = {
    {LM_STATUS_NONE, LM_STATUS_SETUP},
    {LM_STATUS_SETUP, LM_STATUS_ACTIVE},
    {LM_STATUS_SETUP, LM_STATUS_WAIT_UNPLUG},
    {LM_STATUS_SETUP, LM_STATUS_FAILED},
    {LM_STATUS_SETUP, LM_STATUS_CANCELLING},
    {LM_STATUS_WAIT_UNPLUG, LM_STATUS_ACTIVE},
    {LM_STATUS_WAIT_UNPLUG, LM_STATUS_FAILED},
    {LM_STATUS_WAIT_UNPLUG, LM_STATUS_CANCELLING},
    {LM_STATUS_ACTIVE, LM_STATUS_PRE_SWITCHOVER},
    {LM_STATUS_ACTIVE, LM_STATUS_DEVICE},
    {LM_STATUS_ACTIVE, LM_STATUS_COMPLETED},
    {LM_STATUS_ACTIVE, LM_STATUS_FAILED},
    {LM_STATUS_ACTIVE, LM_STATUS_CANCELLING},
    {LM_STATUS_ACTIVE, LM_STATUS_POSTCOPY_ACTIVE},
    {LM_STATUS_ACTIVE, LM_STATUS_COLO},
    {LM_STATUS_PRE_SWITCHOVER, LM_STATUS_DEVICE},
    {LM_STATUS_PRE_SWITCHOVER, LM_STATUS_FAILED},
    {LM_STATUS_PRE_SWITCHOVER, LM_STATUS_CANCELLING},
    {LM_STATUS_DEVICE, LM_STATUS_COMPLETED},
    {LM_STATUS_DEVICE, LM_STATUS_FAILED},
    {LM_STATUS_DEVICE, LM_STATUS_CANCELLING},
    {LM_STATUS_DEVICE, LM_STATUS_POSTCOPY_DEVICE},
    {LM_STATUS_DEVICE, LM_STATUS_POSTCOPY_ACTIVE},
    {LM_STATUS_DEVICE, LM_STATUS_COLO},
    {LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_POSTCOPY_ACTIVE},
    {LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_FAILED},
    {LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_POSTCOPY_PAUSED},
    {LM_STATUS_POSTCOPY_ACTIVE, LM_STATUS_POSTCOPY_PAUSED},
    {LM_STATUS_POSTCOPY_ACTIVE, LM_STATUS_COMPLETED},
    {LM_STATUS_POSTCOPY_ACTIVE, LM_STATUS_FAILED},
    {LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER_SETUP},
    {LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER},
    {LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_PAUSED},
    {LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_RECOVER},
    {LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_ACTIVE},
    {LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_PAUSED},
    {LM_STATUS_CANCELLING, LM_STATUS_CANCELLED},
    {LM_STATUS_COLO, LM_STATUS_COMPLETED},
    {LM_STATUS_COMPLETED, LM_STATUS_SETUP},
    {LM_STATUS_FAILED, LM_STATUS_SETUP},
    {LM_STATUS_CANCELLED, LM_STATUS_SETUP},
};

static bool listed(lm_status f, lm_status t)
{
    for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++)
        if (legal[i].from == f && legal[i].to == t)
            return true;
    return false;
}

static lm_event seen[64];
static int nseen;
static void on_event(void *o, const lm_event *ev)
{
    if (nseen < 64)
        seen[nseen++] = *ev;
}

static void test_table_matches(void **state)
{
    for (int f = 0; f < LM_STATUS__MAX; f++)
        for (int t = 0; t < LM_STATUS__MAX; t++)
            assert_int_equal(lm_state_transition_valid(f, t), listed(f, t));
    assert_false(lm_state_transition_valid(LM_STATUS__MAX, LM_STATUS_SETUP));
}

/* Drives the real setter through every legal edge, reaching each `from`
 * by forcing the state, and checks refusal of a stale `from`. */
static void test_setter_walk(void **state)
{
    lm_mig *m = NULL;
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, NULL), 0);
    assert_int_equal(lm_mig_add_listener(m, on_event, NULL, NULL), 0);
    assert_int_equal(lm_mig_set_capabilities(m, 1ull << LM_CAP_EVENTS, 1ull << LM_CAP_EVENTS, NULL),
                     0);
    nseen = 0;
    for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++) {
        m->status = legal[i].from;
        assert_false(lm_state_set(m, (legal[i].from + 1) % LM_STATUS__MAX, legal[i].to));
        assert_true(lm_state_set(m, legal[i].from, legal[i].to));
        assert_int_equal(m->status, legal[i].to);
    }
    /* One MIGRATION event per successful transition, in order (first 64). */
    assert_int_equal(nseen, (int)(sizeof legal / sizeof legal[0]));
    for (int i = 0; i < nseen; i++) {
        assert_int_equal(seen[i].type, LM_EVENT_MIGRATION);
        assert_int_equal(seen[i].status, legal[i].to);
    }
    /* Cancelling leads only to cancelled. */
    m->status = LM_STATUS_CANCELLING;
    assert_false(lm_state_set(m, LM_STATUS__MAX, LM_STATUS_FAILED));
    assert_false(lm_state_set(m, LM_STATUS__MAX, LM_STATUS_COMPLETED));
    m->status = LM_STATUS_NONE;
    lm_mig_free(m);
}

/* MIGRATION events are queued under m->lock in the order of the changes
 * and delivered one at a time by whoever emits next (mig.c).  A listener
 * that is slow (here: blocked until released) must still get every
 * change, in order, however many pile up meanwhile.  The pile-up is forced
 * by states, not by timing: the listener blocks in its first event; then
 * one thread per change makes its transition with the one setter (each is
 * started once the previous change shows in m->status, and then waits in
 * the delivery behind the listener), and the listener is released only
 * once the last change is made. */

#define PILEUP 40 /* changes queued behind the blocked listener */

typedef struct pileup {
    lm_mig *m;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool blocked; /* the listener is in its first event */
    bool release;
    lm_status got[PILEUP + 8];
    int ngot;
} pileup;

static pileup pu;

static void pileup_listener(void *o, const lm_event *ev)
{
    if (ev->type != LM_EVENT_MIGRATION)
        return;
    pthread_mutex_lock(&pu.mu);
    if (pu.ngot < (int)(sizeof pu.got / sizeof pu.got[0]))
        pu.got[pu.ngot] = ev->status;
    pu.ngot++;
    if (pu.ngot == 1) {
        pu.blocked = true;
        pthread_cond_broadcast(&pu.cv);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 20;
        int rc = 0;
        while (!pu.release && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&pu.cv, &pu.mu, &ts);
    }
    pthread_mutex_unlock(&pu.mu);
}

/* setup -> active -> device -> completed -> setup ... */
static lm_status pileup_next(lm_status s)
{
    switch (s) {
    case LM_STATUS_SETUP:
        return LM_STATUS_ACTIVE;
    case LM_STATUS_ACTIVE:
        return LM_STATUS_DEVICE;
    case LM_STATUS_DEVICE:
        return LM_STATUS_COMPLETED;
    default:
        return LM_STATUS_SETUP;
    }
}

static lm_status pileup_status(int k) /* status after change k (0: none -> setup) */
{
    lm_status s = LM_STATUS_SETUP;
    for (int i = 0; i < k; i++)
        s = pileup_next(s);
    return s;
}

static bool wait_status_is(lm_mig *m, lm_status want, int ms)
{
    for (int i = 0; i < ms; i++) {
        pthread_mutex_lock(&m->lock);
        bool ok = m->status == want;
        pthread_mutex_unlock(&m->lock);
        if (ok)
            return true;
        usleep(1000);
    }
    return false;
}

static void *pileup_first(void *arg)
{
    /* none -> setup: delivered at once, and the listener blocks in it. */
    lm_state_set(pu.m, LM_STATUS_NONE, LM_STATUS_SETUP);
    return NULL;
}

static void *pileup_setter(void *arg)
{
    int k = (int)(intptr_t)arg; /* change k: pileup_status(k-1) -> pileup_status(k) */
    lm_state_set(pu.m, pileup_status(k - 1), pileup_status(k));
    return NULL;
}

static void test_events_pileup_none_lost(void **state)
{
    memset(&pu, 0, sizeof pu);
    pthread_mutex_init(&pu.mu, NULL);
    pthread_cond_init(&pu.cv, NULL);
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &pu.m, NULL), 0);
    assert_int_equal(lm_mig_add_listener(pu.m, pileup_listener, NULL, NULL), 0);
    assert_int_equal(
        lm_mig_set_capabilities(pu.m, 1ull << LM_CAP_EVENTS, 1ull << LM_CAP_EVENTS, NULL), 0);
    pthread_t first, setters[PILEUP];
    assert_int_equal(pthread_create(&first, NULL, pileup_first, NULL), 0);
    pthread_mutex_lock(&pu.mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    while (!pu.blocked && pthread_cond_timedwait(&pu.cv, &pu.mu, &ts) != ETIMEDOUT)
        ;
    bool blocked = pu.blocked;
    pthread_mutex_unlock(&pu.mu);
    assert_true(blocked);
    /* Change k is made once change k-1 shows; each setter then waits
     * behind the listener. */
    bool all = true;
    int started = 0;
    for (int k = 1; k <= PILEUP && all; k++) {
        assert_int_equal(pthread_create(&setters[k - 1], NULL, pileup_setter, (void *)(intptr_t)k),
                         0);
        started++;
        all = wait_status_is(pu.m, pileup_status(k), 20000);
    }
    /* Every change is made: the listener may go on. */
    pthread_mutex_lock(&pu.mu);
    pu.release = true;
    pthread_cond_broadcast(&pu.cv);
    pthread_mutex_unlock(&pu.mu);
    pthread_join(first, NULL);
    for (int k = 0; k < started; k++)
        pthread_join(setters[k], NULL);
    assert_true(all);
    /* One event per change, in the order of the changes. */
    if (pu.ngot != PILEUP + 1)
        fail_msg("%d MIGRATION events delivered for %d status changes (%d of them made "
                 "while the listener was busy): events were dropped",
                 pu.ngot, PILEUP + 1, PILEUP);
    for (int k = 0; k <= PILEUP; k++)
        assert_int_equal(pu.got[k], pileup_status(k));
    pu.m->status = LM_STATUS_NONE;
    lm_mig_free(pu.m);
    pthread_cond_destroy(&pu.cv);
    pthread_mutex_destroy(&pu.mu);
}

static void test_names(void **state)
{
    const char *want[] = {"none",
                          "setup",
                          "cancelling",
                          "cancelled",
                          "active",
                          "postcopy-device",
                          "postcopy-active",
                          "postcopy-paused",
                          "postcopy-recover-setup",
                          "postcopy-recover",
                          "completed",
                          "failed",
                          "colo",
                          "pre-switchover",
                          "device",
                          "wait-unplug"};
    assert_int_equal(sizeof want / sizeof want[0], LM_STATUS__MAX);
    for (int i = 0; i < LM_STATUS__MAX; i++) {
        lm_status s;
        assert_string_equal(lm_status_name(i), want[i]);
        assert_int_equal(lm_status_from_name(want[i], &s), 0);
        assert_int_equal(s, i);
    }
    lm_status s;
    assert_int_not_equal(lm_status_from_name("bogus", &s), 0);
    for (int c = 0; c < LM_CAP__MAX; c++) {
        lm_cap back;
        assert_non_null(lm_cap_name(c));
        assert_int_equal(lm_cap_from_name(lm_cap_name(c), &back), 0);
        assert_int_equal(back, c);
    }
    for (int p = 0; p < LM_PARAM__MAX; p++) {
        lm_param back;
        assert_non_null(lm_param_name(p));
        assert_int_equal(lm_param_from_name(lm_param_name(p), &back), 0);
        assert_int_equal(back, p);
    }
}

static void test_params(void **state)
{
    lm_params p;
    lm_params_default(&p);
    assert_int_equal(p.max_bandwidth, 134217728);
    assert_int_equal(p.downtime_limit, 300);
    assert_int_equal(p.multifd_channels, 2);
    assert_int_equal(p.zero_page_detection, LM_ZPD_MULTIFD);
    lm_mig *m = NULL;
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, NULL), 0);
    lm_error err = {0};
    p.downtime_limit = 2000001;
    assert_true(lm_mig_set_params(m, &p, 1ull << LM_PARAM_DOWNTIME_LIMIT, &err) < 0);
    assert_non_null(strstr(err.msg, "downtime-limit"));
    /* all or nothing: a bad field keeps the good one out too */
    lm_error_clear(&err);
    p.max_bandwidth = 5;
    assert_true(
        lm_mig_set_params(
            m, &p, (1ull << LM_PARAM_DOWNTIME_LIMIT) | (1ull << LM_PARAM_MAX_BANDWIDTH), &err) < 0);
    lm_params got;
    lm_mig_get_params(m, &got);
    assert_int_equal(got.max_bandwidth, 134217728);
    p.downtime_limit = 10;
    assert_int_equal(
        lm_mig_set_params(
            m, &p, (1ull << LM_PARAM_DOWNTIME_LIMIT) | (1ull << LM_PARAM_MAX_BANDWIDTH), NULL),
        0);
    lm_mig_get_params(m, &got);
    assert_int_equal(got.max_bandwidth, 5);
    assert_int_equal(got.downtime_limit, 10);
    /* capabilities: unsupported ones are refused, not silently taken */
    lm_error_clear(&err);
    assert_true(lm_mig_set_capabilities(m, 1ull << LM_CAP_X_COLO, 1ull << LM_CAP_X_COLO, &err) < 0);
    assert_non_null(strstr(err.msg, "not supported yet"));
    assert_int_equal(lm_mig_get_capabilities(m), 0);
    assert_int_equal(lm_mig_set_capabilities(m, 1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER,
                                             1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER, NULL),
                     0);
    lm_mig_free(m);
}

/* Parameters the engine does not act on: any value but the default is
 * refused with -ENOTSUP naming the parameter and its default, all or
 * nothing; the default itself is accepted (management software sets it). */
static void test_params_default_only(void **state)
{
#define F(id, field) id, offsetof(lm_params, field), sizeof(((lm_params *)0)->field)
    static const struct {
        lm_param id;
        size_t off, size;
        uint64_t other;      /* a non-default value, in range */
        const char *refused; /* the default, as the message has it */
    } only_default[] = {
        {F(LM_PARAM_ANNOUNCE_INITIAL, announce_initial), 60, "50"},
        {F(LM_PARAM_ANNOUNCE_MAX, announce_max), 600, "550"},
        {F(LM_PARAM_ANNOUNCE_ROUNDS, announce_rounds), 7, "5"},
        {F(LM_PARAM_ANNOUNCE_STEP, announce_step), 200, "100"},
    };
#undef F
    lm_mig *m = NULL;
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, NULL), 0);
    lm_params def, p, got;
    lm_params_default(&def);
    /* Every parameter at its default, all at once: accepted. */
    assert_int_equal(lm_mig_set_params(m, &def, (1ull << LM_PARAM__MAX) - 1, NULL), 0);
    for (size_t i = 0; i < sizeof only_default / sizeof only_default[0]; i++) {
        lm_param id = only_default[i].id;
        p = def;
        p.max_bandwidth = 5; /* a supported one in the same call */
        char *field = (char *)&p + only_default[i].off;
        uint64_t v = only_default[i].other;
        if (only_default[i].size == 8)
            memcpy(field, &v, 8);
        else
            fail();
        uint64_t which = (1ull << id) | (1ull << LM_PARAM_MAX_BANDWIDTH);
        lm_error err = {0};
        assert_int_equal(lm_mig_set_params(m, &p, which, &err), -ENOTSUP);
        assert_int_equal(err.code, -ENOTSUP);
        char want[200];
        snprintf(want, sizeof want, "Parameter '%s' is not supported (only its default, %s,",
                 lm_param_name(id), only_default[i].refused);
        if (strncmp(err.msg, want, strlen(want)) != 0)
            fail_msg("'%s' does not start with '%s'", err.msg, want);
        lm_mig_get_params(m, &got); /* all or nothing */
        assert_int_equal(got.max_bandwidth, def.max_bandwidth);
        assert_memory_equal((char *)&got + only_default[i].off, (char *)&def + only_default[i].off,
                            only_default[i].size);
        /* Not in `which`: the field is not looked at. */
        assert_int_equal(lm_mig_set_params(m, &p, 1ull << LM_PARAM_MAX_BANDWIDTH, NULL), 0);
        lm_mig_get_params(m, &got);
        assert_int_equal(got.max_bandwidth, 5);
        assert_int_equal(lm_mig_set_params(m, &def, which, NULL), 0);
    }
    /* The throttle parameters are implemented (auto-converge): any value
     * in range is taken; out of range gets the range message. */
    p = def;
    p.cpu_throttle_initial = 30;
    p.cpu_throttle_tailslow = true;
    uint64_t which =
        (1ull << LM_PARAM_CPU_THROTTLE_INITIAL) | (1ull << LM_PARAM_CPU_THROTTLE_TAILSLOW);
    assert_int_equal(lm_mig_set_params(m, &p, which, NULL), 0);
    lm_mig_get_params(m, &got);
    assert_int_equal(got.cpu_throttle_initial, 30);
    assert_true(got.cpu_throttle_tailslow);
    lm_error err = {0};
    p.cpu_throttle_initial = 0;
    assert_int_equal(lm_mig_set_params(m, &p, which, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "expects an integer in the range of 1 to 99"));
    /* Capabilities whose "on" is what livemig always does are accepted;
     * return-path is what switchover-ack requires, as in QEMU. */
    uint64_t on = (1ull << LM_CAP_RETURN_PATH) | (1ull << LM_CAP_LATE_BLOCK_ACTIVATE) |
                  (1ull << LM_CAP_SWITCHOVER_ACK);
    assert_int_equal(lm_mig_set_capabilities(m, on, on, NULL), 0);
    lm_mig_free(m);
}

static void test_bitmap(void **state)
{
    uint64_t b[4] = {0};
    lm_bit_set(b, 3);
    lm_bit_set(b, 64);
    lm_bit_set(b, 200);
    assert_int_equal(lm_bitmap_next_set(b, 256, 0), 3);
    assert_int_equal(lm_bitmap_next_set(b, 256, 4), 64);
    assert_int_equal(lm_bitmap_next_set(b, 256, 65), 200);
    assert_int_equal(lm_bitmap_next_set(b, 200, 65), 200); /* past nbits */
    assert_int_equal(lm_bitmap_next_set(b, 256, 201), 256);
    assert_int_equal(lm_bitmap_next_clear(b, 256, 3), 4);
    assert_int_equal(lm_bitmap_count(b, 256), 3);
    assert_int_equal(lm_bitmap_count(b, 100), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches),
        cmocka_unit_test(test_setter_walk),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_params_default_only),
        cmocka_unit_test(test_bitmap),
        cmocka_unit_test(test_events_pileup_none_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
