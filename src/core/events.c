/*
 * events.c - event listeners and delivery: MIGRATION (queued in the order
 * of the state changes, under lock), MIGRATION_PASS, STOP, RESUME,
 * SWITCHOVER_ACK.  Listeners run one at a time under emit_lock, never
 * under lock (internal.h has the lock order).
 */
#include "core/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int lm_mig_add_listener(lm_mig *m, lm_event_fn fn, void *opaque, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (m->nlisteners >= LM_MAX_LISTENERS) {
        ret = lm_error_set(err, -ENOSPC, "too many event listeners");
    } else {
        m->listeners[m->nlisteners].fn = fn;
        m->listeners[m->nlisteners].opaque = opaque;
        m->nlisteners++;
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int lm_mig_remove_listener(lm_mig *m, lm_event_fn fn, void *opaque)
{
    int ret = -ENOENT;
    /* Under emit_lock: no call of this listener is in flight afterwards. */
    pthread_mutex_lock(&m->emit_lock);
    pthread_mutex_lock(&m->lock);
    for (unsigned i = 0; i < m->nlisteners; i++) {
        if (m->listeners[i].fn == fn && m->listeners[i].opaque == opaque) {
            memmove(&m->listeners[i], &m->listeners[i + 1],
                    (m->nlisteners - i - 1) * sizeof m->listeners[0]);
            m->nlisteners--;
            ret = 0;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&m->emit_lock);
    return ret;
}

/* Calls the listeners; emit_lock held by the caller. */
static void deliver(lm_mig *m, const lm_event *ev_in)
{
    lm_event ev = *ev_in;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    ev.ts_sec = tv.tv_sec;
    ev.ts_usec = tv.tv_usec;
    /* Copy the listener list so callbacks run without m->lock. */
    struct {
        lm_event_fn fn;
        void *opaque;
    } l[LM_MAX_LISTENERS];
    pthread_mutex_lock(&m->lock);
    unsigned n = m->nlisteners;
    memcpy(l, m->listeners, sizeof l);
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < n; i++)
        l[i].fn(l[i].opaque, &ev);
}

/* A state change queues its event under lock, in order.  The queue grows
 * instead of dropping: while a listener is slow, every thread that changes
 * the state waits at emit_lock after queueing, so the queue stays small,
 * but no bound on it is assumed.  Lock held. */
void lm_event_queue_status_locked(lm_mig *m, lm_status s)
{
    if (m->ev_n == m->ev_cap) {
        unsigned ncap = m->ev_cap ? m->ev_cap * 2 : 16;
        lm_status *q = malloc(ncap * sizeof *q);
        if (!q) {
            m->ev_lost++;
            return;
        }
        for (unsigned i = 0; i < m->ev_n; i++)
            q[i] = m->ev_q[(m->ev_head + i) % m->ev_cap];
        free(m->ev_q);
        m->ev_q = q;
        m->ev_head = 0;
        m->ev_cap = ncap;
    }
    m->ev_q[(m->ev_head + m->ev_n++) % m->ev_cap] = s;
}

/* Delivers queued MIGRATION events in order; emit_lock held. */
static void drain_status(lm_mig *m)
{
    for (;;) {
        pthread_mutex_lock(&m->lock);
        bool have = m->ev_n != 0;
        lm_status s = LM_STATUS_NONE;
        if (have) {
            s = m->ev_q[m->ev_head];
            m->ev_head = (m->ev_head + 1) % m->ev_cap;
            m->ev_n--;
        }
        pthread_mutex_unlock(&m->lock);
        if (!have)
            return;
        lm_event ev = {.type = LM_EVENT_MIGRATION, .status = s};
        deliver(m, &ev);
    }
}

void lm_emit(lm_mig *m, const lm_event *ev)
{
    pthread_mutex_lock(&m->emit_lock);
    drain_status(m); /* status changes that happened before come first */
    deliver(m, ev);
    pthread_mutex_unlock(&m->emit_lock);
}

void lm_emit_status(lm_mig *m)
{
    pthread_mutex_lock(&m->emit_lock);
    drain_status(m);
    pthread_mutex_unlock(&m->emit_lock);
}

void lm_emit_pass(lm_mig *m, uint64_t pass)
{
    if (!lm_mig_cap(m, LM_CAP_EVENTS))
        return;
    lm_event ev = {.type = LM_EVENT_MIGRATION_PASS, .pass = pass};
    lm_emit(m, &ev);
}
