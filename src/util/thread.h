/* thread.h - thread helpers.  Knows nothing of migration. */
#ifndef LM_UTIL_THREAD_H
#define LM_UTIL_THREAD_H

/* Lowers the calling thread's CPU priority (nice 10) for bulk work, so
 * that latency-critical threads win the CPU under contention.  Raising a
 * nice value needs no privilege; the thread keeps it until it ends. */
void lm_thread_set_background(void);

#endif /* LM_UTIL_THREAD_H */
