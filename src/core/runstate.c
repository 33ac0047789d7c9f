/*
 * runstate.c - the host's run state (QEMU's RunState) and its stop/start
 * hooks, serialised by run_lock; STOP and RESUME events.
 */
#include "core/internal.h"

#include <errno.h>

void lm_runstate_set(lm_mig *m, lm_runstate r)
{
    __atomic_store_n(&m->runstate, r, __ATOMIC_RELEASE);
}

lm_runstate lm_vm_runstate(lm_mig *m)
{
    return __atomic_load_n(&m->runstate, __ATOMIC_ACQUIRE);
}

bool lm_vm_stop_for_migration(lm_mig *m, lm_runstate to)
{
    pthread_mutex_lock(&m->run_lock);
    bool was_running = lm_vm_runstate(m) == LM_RUN_RUNNING;
    if (was_running)
        m->ops.stop(m->host);
    lm_runstate_set(m, to);
    pthread_mutex_unlock(&m->run_lock);
    if (was_running) {
        lm_event ev = {.type = LM_EVENT_STOP};
        lm_emit(m, &ev);
    }
    return was_running;
}

void lm_vm_start_after_migration(lm_mig *m, lm_runstate to)
{
    pthread_mutex_lock(&m->run_lock);
    bool start = to == LM_RUN_RUNNING && lm_vm_runstate(m) != LM_RUN_RUNNING;
    if (start)
        m->ops.start(m->host);
    lm_runstate_set(m, to);
    pthread_mutex_unlock(&m->run_lock);
    if (start) {
        lm_event ev = {.type = LM_EVENT_RESUME};
        lm_emit(m, &ev);
    }
}

int lm_vm_stop(lm_mig *m, lm_error *err)
{
    pthread_mutex_lock(&m->run_lock);
    lm_runstate r = lm_vm_runstate(m);
    bool stop = r == LM_RUN_RUNNING;
    if (stop) {
        m->ops.stop(m->host);
        lm_runstate_set(m, LM_RUN_PAUSED);
    }
    pthread_mutex_unlock(&m->run_lock);
    if (stop) {
        lm_event ev = {.type = LM_EVENT_STOP};
        lm_emit(m, &ev);
    }
    return 0;
}

int lm_vm_cont(lm_mig *m, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&m->run_lock);
    lm_runstate r = lm_vm_runstate(m);
    if (r == LM_RUN_INMIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is waiting for an incoming migration");
    } else if (r == LM_RUN_FINISH_MIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is being migrated (switchover in progress)");
    } else if (r != LM_RUN_RUNNING) {
        m->ops.start(m->host);
        lm_runstate_set(m, LM_RUN_RUNNING);
    } else {
        r = LM_RUN_RUNNING; /* already running: no event */
    }
    pthread_mutex_unlock(&m->run_lock);
    if (!ret && r != LM_RUN_RUNNING) {
        lm_event ev = {.type = LM_EVENT_RESUME};
        lm_emit(m, &ev);
    }
    return ret;
}
