/*
 * clock.h - the monotonic clock and the relaxed atomics the engine's
 * counters use.  Knows nothing of migration.
 */
#ifndef LM_UTIL_CLOCK_H
#define LM_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t lm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A deadline for pthread_cond_timedwait on a CLOCK_MONOTONIC condvar. */
static inline struct timespec lm_ns_to_timespec(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    return ts;
}

/* Counters read by queries while a worker thread writes them. */
#define LM_ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define LM_ATOMIC_SET(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define LM_ATOMIC_GET(p) __atomic_load_n((p), __ATOMIC_RELAXED)

#endif /* LM_UTIL_CLOCK_H */
