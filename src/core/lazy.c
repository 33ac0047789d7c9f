/*
 * lazy.c - lazy restore on "lm-incoming" (capability x-lazy-restore,
 * docs/architecture.md): at MAPPED_RAM the layout and bitmaps are read,
 * every page becomes owed, guest RAM is registered with userfaultfd
 * (postcopy's destination: its fault thread, its atomic placement) and
 * the loader goes on with the device state; at the end of stream the
 * guest runs (postcopy-active) and the readers start (file/lazy.c) while
 * a page the guest touches first comes from the file at once; once nothing is owed the
 * migration completes and userfaultfd is unregistered.  A failure of the
 * file while the guest runs fails the migration, and every block that
 * still owes a page is fenced (postcopy's lm_pc_dst_end): nothing reads a
 * page the file did not give.
 */
#include "core/incoming.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

static bool lazy_owed(void *opaque, unsigned bi, uint64_t first, uint64_t count)
{
    lm_incoming *in = opaque;
    return lm_pc_dst_owed_any(&in->m->pcd, bi, first, count);
}

/* A reader failed, or all are through: the incoming thread waits on
 * postcopy's cond (lazy_wait). */
static void lazy_wake(void *opaque)
{
    lm_incoming *in = opaque;
    lm_pc_dst *d = &in->m->pcd;
    pthread_mutex_lock(&d->lock);
    in->lazy_event = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

/* The fault thread's serve: lm_lazy_serve reports its own failure
 * (lm_lazy_fail wakes the incoming thread). */
static int lazy_serve(void *opaque, unsigned bi, uint64_t page, lm_error *err)
{
    return lm_lazy_serve(opaque, bi, page, err);
}

int lm_in_lazy_start(lm_incoming *in, const lm_rec_hdr *h, lm_error *err)
{
    lm_mig *m = in->m;
    pthread_mutex_lock(&m->lock);
    bool multifd = m->caps & (1ull << LM_CAP_MULTIFD);
    bool direct = m->params.direct_io;
    unsigned n = multifd ? m->params.multifd_channels : 1;
    pthread_mutex_unlock(&m->lock);
    lm_lazy *z = NULL;
    int ret = lm_lazy_open(&m->mem, &m->place, in->chan, h, in->file_path, direct, n,
                           &m->stats.transferred, &z, err);
    if (ret < 0)
        return ret;
    in->lazy = z;
    m->pcd.timeout_ms = 0; /* no link to watch */
    m->pcd.serve = lazy_serve;
    m->pcd.serve_opaque = z;
    if ((ret = lm_pc_dst_prepare(&m->pcd, in->blocktime, err)) < 0 ||
        (ret = lm_pc_dst_owe_all(&m->pcd, err)) < 0 ||
        (ret = lm_pc_dst_listen(&m->pcd, NULL, in->blocktime, err)) < 0)
        return lm_error_prefix(err, "lazy restore");
    in->mapped_done = true;
    return 0;
}

/* At the end of stream, the device state loaded: the guest runs; then
 * wait until every page is placed, a reader or a serve failed, or the
 * readers are through with pages still owed (cannot happen: said). */
int lm_in_lazy_run(lm_incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    lm_pc_dst *d = &m->pcd;
    if (!lm_state_set(m, LM_STATUS_ACTIVE, LM_STATUS_POSTCOPY_ACTIVE))
        return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
    in->lazy_running = true;
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    /* The readers start once the guest runs: until then the device state
     * alone is read (the time to run), and a fault is served anyway. */
    lm_lazy_hooks hk = {.owed = lazy_owed, .wake = lazy_wake, .opaque = in};
    int sret = lm_lazy_start(in->lazy, &hk, err);
    if (sret < 0)
        return sret;
    for (;;) {
        pthread_mutex_lock(&d->lock);
        while (d->owed_pages && !in->lazy_event)
            pthread_cond_wait(&d->cond, &d->lock);
        uint64_t owed = d->owed_pages;
        in->lazy_event = false;
        pthread_mutex_unlock(&d->lock);
        if (!owed)
            break;
        int ret = lm_lazy_error(in->lazy, err);
        if (ret < 0)
            return ret;
        if (lm_lazy_done(in->lazy)) {
            /* A fault's cluster may still be in flight: its UFFDIO_COPY
             * mapped pages a reader then found there (EEXIST, skipped),
             * and the fault thread clears their owed bits only after the
             * ioctl returns.  So wait, bounded, while the count moves;
             * one that stays put for 1 s is a real loss. */
            pthread_mutex_lock(&d->lock);
            owed = d->owed_pages;
            while (owed) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += 1;
                int w = 0;
                while (d->owed_pages == owed && w == 0)
                    w = pthread_cond_timedwait(&d->cond, &d->lock, &ts);
                if (d->owed_pages == owed)
                    break; /* no progress in 1 s */
                owed = d->owed_pages;
            }
            pthread_mutex_unlock(&d->lock);
            if (owed)
                return lm_error_set(err, -EPROTO,
                                    "lazy restore: the readers went through the file with "
                                    "%llu pages still not placed",
                                    (unsigned long long)owed);
        }
    }
    lm_lazy_stop(in->lazy);
    return 0;
}

/* Completion (every page placed) or failure: readers stopped first (they
 * place through userfaultfd), then postcopy's end unregisters, fencing
 * the blocks that still owe a page after a failure. */
void lm_in_lazy_end(lm_incoming *in, int ret, const lm_error *err)
{
    lm_mig *m = in->m;
    if (!in->lazy)
        return;
    lm_lazy_stop(in->lazy);
    if (ret < 0 && in->lazy_running)
        fprintf(stderr,
                "livemig: lazy restore failed while the guest runs: %s; RAM blocks "
                "still owing pages are fenced (an access gets SIGSEGV, never a zero page)\n",
                err && err->code ? err->msg : "error");
    if (!in->lazy_running)
        lm_pc_dst_disown(&m->pcd); /* the guest never ran: no fence */
    lm_pc_dst_end(&m->pcd);
    m->pcd.serve = NULL;
    m->pcd.serve_opaque = NULL;
    lm_pc_dst_release(&m->pcd);
    lm_lazy_free(in->lazy);
    in->lazy = NULL;
}
