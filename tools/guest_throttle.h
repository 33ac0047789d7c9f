/*
 * guest_throttle.h - how `livemig guest` carries out the library's throttle
 * (lm_mig_set_throttle): its workload threads are its vCPUs.
 *  - auto-converge (cpu_percent p): QEMU's cpu-throttle mechanism, per
 *    thread: after 10 ms of running, sleep 10 ms x p / (100 - p);
 *  - dirty-limit (dirty_limit_bps per thread, period_ms): a thread that
 *    wrote its share of the period sleeps to the end of the period (periods
 *    aligned on the monotonic clock, so all threads share rounds); the
 *    longest sleep of a round is reported (lm_mig_throttle_report).
 * gthr_set runs on the migration thread, gthr_step on each worker.
 */
#ifndef LM_TOOLS_GUEST_THROTTLE_H
#define LM_TOOLS_GUEST_THROTTLE_H

#include "livemig.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct gthr {
    _Atomic unsigned pct;
    _Atomic uint64_t limit_bps; /* per thread, 0 = none */
    _Atomic uint64_t period_ns;
    _Atomic uint64_t slept_ns; /* all threads, all sleeps (x-guest-stats) */
    lm_mig *m;                 /* for the report */
    pthread_mutex_t lock;      /* the round below */
    uint64_t round, round_max_ns;
} gthr;

/* One worker's account. */
typedef struct gthr_worker {
    uint64_t run_start_ns;
    uint64_t round;    /* period index of bytes/slept */
    uint64_t bytes;    /* written in this round */
    uint64_t slept_ns; /* slept for the limit in this round */
} gthr_worker;

void gthr_init(gthr *t, lm_mig *m);
/* The lm_throttle_fn (opaque: the gthr). */
void gthr_set(void *opaque, const lm_throttle *th);
/* After a write of `bytes` at now_ns: 0, or how long to sleep now. */
uint64_t gthr_step(gthr *t, gthr_worker *w, uint64_t now_ns, uint64_t bytes);
/* The worker slept `ns` for the answer of gthr_step. */
void gthr_slept(gthr *t, gthr_worker *w, uint64_t ns);

#endif
