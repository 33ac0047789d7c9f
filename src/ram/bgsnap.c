/*
 * bgsnap.c - RAM's side of a background snapshot (QEMU's background-snapshot
 * capability, digest §9): one pass over RAM that sends every page as it was
 * when the guest was paused for its device state, while the guest runs.
 * The write-protection and the fault thread are mem/wp.c; here is what a
 * fault means for the pass: copy first, then let the guest write.
 *
 * A page is sent exactly once, by whoever claims it first (clears its dirty
 * bit under r->lock):
 *  - the migration thread's page search (save.c send_run) claims a run,
 *    marks it in flight, sends it straight from guest memory (still
 *    write-protected, so it cannot change under the send), then
 *    un-protects it (lm_ram_bgsnap_sent);
 *  - the write-fault thread "lm-wp-fault" claims a page the guest is
 *    writing, copies it into a slot of the copy pool (a never-populated
 *    page needs no copy: it was zero) and queues the slot; the fault thread
 *    then un-protects the page and the guest's write goes on.  The drain
 *    (migration thread, before every run) sends the queued copies;
 *  - a fault on a page that is claimed already: in flight, the send will
 *    un-protect it (LM_WP_LEAVE); sent, it is un-protected already and the
 *    fault was a race, un-protecting again is harmless.
 * Until a claimed copy is sent it counts in r->bg_owed, so the pass ends
 * only when every page is on the wire.
 *
 * Threads and locks: the migration thread and "lm-wp-fault".  r->lock
 * guards the dirty maps, dirty_pages, bg_owed and the in-flight run;
 * bg->qlock (a leaf, never held across I/O or a copy) guards the queue,
 * the free slots and `aborting`.  r->lock is never taken under qlock.
 * When the pool is full the fault thread waits on qcond for the drain (the
 * guest's writer waits with it: memory stays bounded); lm_ram_bgsnap_stop
 * sets `aborting` first, so it never waits for a migration thread that
 * stopped draining.
 */
#include "ram/ram.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* 16 MiB of copies: at a 100 MB/s writer and a drain every run (1 MiB,
 * about a millisecond on loopback) a few hundred slots are ever in use. */
#define SLOTS 4096
/* Sent runs are un-protected in batches of up to 16 MiB: every
 * UFFDIO_WRITEPROTECT flushes the TLBs of the guest's CPUs (an IPI each,
 * costly in a VM: one per 1 MiB run made a 1 GiB snapshot of a guest
 * writing 100 MB/s take 3.6x as long as with an idle guest).  A write to a
 * sent page still protected faults and is simply let through. */
#define UNPROTECT_BATCH 4096
/* Pages saved per fault (see on_fault).  Measured with a 1 GiB guest
 * writing 100 MB/s at random (bench/bgsnap_bench.py, same load, back to
 * back): 16 made the snapshot 3x shorter (3.2 s against 9.2 s) but the
 * guest's write rate during it fell to 37 % of its rate before, against
 * 77 % with 1: its writer waits for the whole cluster's copy at every
 * fault, and random writes rarely land in a cluster saved earlier.  The
 * guest's rate is the target (docs/benchmarks.md), so 1. */
#define CLUSTER 1

typedef struct entry {
    uint32_t bi;
    int32_t slot; /* -1: a page never populated at the start (zero) */
    uint64_t page;
} entry;

struct lm_bgsnap {
    lm_wp *wp;
    /* --- r->lock --- */
    bool inflight;
    unsigned in_bi;
    uint64_t in_first, in_end;
    /* --- qlock --- */
    pthread_mutex_t qlock;
    pthread_cond_t qcond; /* a slot freed, an entry queued, aborting */
    entry ring[SLOTS];
    unsigned head, count;
    int32_t free_slots[SLOTS];
    unsigned nfree;
    bool aborting;
    /* --- migration thread: sent, still protected [u_first, u_end) of u_bi */
    bool upend;
    unsigned u_bi;
    uint64_t u_first, u_end;
    /* --- */
    uint8_t *pool; /* SLOTS pages */
    lm_ram *r;
};

/* lm-wp-fault: the guest writes page `page` of block bi.  The dirty pages
 * of its CLUSTER-page cluster are saved with it and un-protected in the
 * same ioctl (a writer that moves through memory takes fewer faults; see
 * CLUSTER for why it is 1).  A cluster that overlaps the run in flight
 * shrinks to the page (the run's pages must stay protected until they are
 * sent). */
static lm_wp_action on_fault(void *opaque, unsigned bi, uint64_t page, uint64_t *ufirst,
                             uint64_t *ucount)
{
    struct lm_bgsnap *bg = opaque;
    lm_ram *r = bg->r;
    lm_ram_block *b = &r->mem->blocks[bi];
    uint64_t c0 = page & ~(uint64_t)(CLUSTER - 1);
    uint64_t c1 = c0 + CLUSTER < b->npages ? c0 + CLUSTER : b->npages;
    uint64_t claimed[CLUSTER] = {0};
    bool populated[CLUSTER] = {false};
    unsigned n = 0;

    pthread_mutex_lock(&r->lock);
    uint64_t *d = r->dirty[bi];
    bool inflight = bg->inflight && bg->in_bi == bi;
    if (!d || !lm_bit_test(d, page)) {
        bool leave = inflight && page >= bg->in_first && page < bg->in_end;
        pthread_mutex_unlock(&r->lock);
        return leave ? LM_WP_LEAVE : LM_WP_UNPROTECT;
    }
    if (inflight && bg->in_first < c1 && c0 < bg->in_end) {
        c0 = page;
        c1 = page + 1;
    }
    /* The populated map is fixed from the start until stop. */
    const uint64_t *pop = r->populated[bi];
    for (uint64_t p = c0; p < c1; p++) {
        if (!lm_bit_test(d, p))
            continue; /* sent already (or being sent: not in this cluster) */
        lm_bitmap_clear_range(d, p, p + 1);
        populated[n] = !pop || lm_bit_test(pop, p);
        claimed[n++] = p;
    }
    r->dirty_pages -= n;
    r->bg_owed += n;
    pthread_mutex_unlock(&r->lock);

    int32_t slots[CLUSTER];
    pthread_mutex_lock(&bg->qlock);
    while (bg->nfree < n && !bg->aborting)
        pthread_cond_wait(&bg->qcond, &bg->qlock);
    if (bg->aborting) { /* the snapshot is over: let the guest go */
        pthread_mutex_unlock(&bg->qlock);
        return LM_WP_UNPROTECT;
    }
    for (unsigned k = 0; k < n; k++)
        slots[k] = bg->free_slots[--bg->nfree];
    pthread_mutex_unlock(&bg->qlock);

    /* The pages are still write-protected: nobody changes them during the
     * copy, and nobody else claims them. */
    for (unsigned k = 0; k < n; k++)
        if (populated[k])
            memcpy(bg->pool + (size_t)slots[k] * LM_PAGE_SIZE, b->base + claimed[k] * b->page_size,
                   LM_PAGE_SIZE);

    pthread_mutex_lock(&bg->qlock);
    for (unsigned k = 0; k < n; k++) {
        bg->ring[(bg->head + bg->count) % SLOTS] =
            (entry){.bi = bi, .page = claimed[k], .slot = populated[k] ? slots[k] : -slots[k] - 2};
        bg->count++;
    }
    pthread_cond_broadcast(&bg->qcond);
    pthread_mutex_unlock(&bg->qlock);
    *ufirst = c0;
    *ucount = c1 - c0;
    return LM_WP_UNPROTECT;
}

int lm_ram_bgsnap_start(lm_ram *r, lm_error *err)
{
    lm_mem *mem = r->mem;
    int ret = 0;
    struct lm_bgsnap *bg = calloc(1, sizeof *bg);
    if (!bg)
        return lm_error_set(err, -ENOMEM, "out of memory");
    bg->r = r;
    pthread_mutex_init(&bg->qlock, NULL);
    pthread_cond_init(&bg->qcond, NULL);
    bg->pool = malloc((size_t)SLOTS * LM_PAGE_SIZE);
    if (!bg->pool) {
        ret = lm_error_set(err, -ENOMEM, "out of memory for the snapshot's copy pool");
        goto fail;
    }
    for (unsigned i = 0; i < SLOTS; i++)
        bg->free_slots[i] = (int32_t)(SLOTS - 1 - i);
    bg->nfree = SLOTS;
    ret = lm_wp_new(&bg->wp, err);
    if (ret < 0)
        goto fail;
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        ret = lm_wp_add_range(bg->wp, b->name, b->base, b->len, b->page_size, err);
        if (ret < 0)
            goto fail;
    }
    /* The guest is stopped: what is populated now is what was populated at
     * the snapshot's instant.  A never-populated anonymous page reads as
     * zero and is sent as such without reading it; shared memory may hold
     * pages not mapped here, so there every page is read. */
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        int rc = -1;
        if (r->populated[i] && lm_wp_range_anon(bg->wp, i)) {
            memset(r->populated[i], 0, lm_bitmap_words(b->npages) * 8);
            rc = lm_mem_populated_scan(b->base, b->len, b->page_size, r->populated[i], err);
            if (rc < 0) {
                ret = rc;
                goto fail;
            }
        }
        if (rc != 0) { /* shared memory, or no PAGEMAP_SCAN: read every page */
            free(r->populated[i]);
            r->populated[i] = NULL;
        }
    }
    r->bg = bg; /* before the first fault can come */
    ret = lm_wp_start(bg->wp, on_fault, bg, err);
    if (ret < 0) {
        lm_ram_bgsnap_stop(r);
        return ret;
    }
    return 0;
fail:
    lm_wp_free(bg->wp);
    free(bg->pool);
    pthread_mutex_destroy(&bg->qlock);
    pthread_cond_destroy(&bg->qcond);
    free(bg);
    return ret;
}

void lm_ram_bgsnap_stop(lm_ram *r)
{
    struct lm_bgsnap *bg = r->bg;
    if (!bg)
        return;
    pthread_mutex_lock(&bg->qlock);
    bg->aborting = true;
    pthread_cond_broadcast(&bg->qcond);
    pthread_mutex_unlock(&bg->qlock);
    lm_wp_free(bg->wp); /* un-protects all, joins the fault thread */
    pthread_mutex_lock(&r->lock);
    r->bg = NULL;
    r->dirty_pages += r->bg_owed; /* dropped copies: not sent */
    r->bg_owed = 0;
    pthread_mutex_unlock(&r->lock);
    free(bg->pool);
    pthread_mutex_destroy(&bg->qlock);
    pthread_cond_destroy(&bg->qcond);
    free(bg);
}

/* Waits (bounded) for the fault thread to queue a copy it claimed. */
static void wait_for_copy(struct lm_bgsnap *bg)
{
    struct timespec ts = lm_ns_to_timespec(lm_now_ns() + 100000000ull);
    pthread_mutex_lock(&bg->qlock);
    if (!bg->count && !bg->aborting)
        pthread_cond_timedwait(&bg->qcond, &bg->qlock, &ts);
    pthread_mutex_unlock(&bg->qlock);
}

int lm_ram_bgsnap_drain(lm_ram *r, lm_out *o, lm_error *err)
{
    struct lm_bgsnap *bg = r->bg;
    if (!bg)
        return 0;
    if (lm_wp_error(bg->wp, err))
        return err ? err->code : -EIO;
    for (;;) {
        entry batch[LM_RAM_COPIES_MAX];
        unsigned n = 0;
        pthread_mutex_lock(&bg->qlock);
        while (n < LM_RAM_COPIES_MAX && bg->count) {
            batch[n++] = bg->ring[bg->head];
            bg->head = (bg->head + 1) % SLOTS;
            bg->count--;
        }
        pthread_mutex_unlock(&bg->qlock);
        if (!n) {
            pthread_mutex_lock(&r->lock);
            bool only_copies = r->dirty_pages == 0 && r->bg_owed > 0;
            pthread_mutex_unlock(&r->lock);
            if (!only_copies)
                return 0;
            wait_for_copy(bg);
            continue;
        }
        lm_ram_copy cp[LM_RAM_COPIES_MAX];
        for (unsigned k = 0; k < n; k++) {
            const entry *e = &batch[k];
            cp[k] = (lm_ram_copy){.block = e->bi,
                                  .page = e->page,
                                  .data = e->slot >= 0 ? bg->pool + (size_t)e->slot * LM_PAGE_SIZE
                                                       : NULL};
        }
        int ret = lm_ram_send_copies(r, o, n, cp);
        pthread_mutex_lock(&bg->qlock);
        for (unsigned k = 0; k < n; k++) {
            int32_t s = batch[k].slot;
            bg->free_slots[bg->nfree++] = s >= 0 ? s : -s - 2;
        }
        pthread_cond_broadcast(&bg->qcond);
        pthread_mutex_unlock(&bg->qlock);
        pthread_mutex_lock(&r->lock);
        r->bg_owed -= n;
        pthread_mutex_unlock(&r->lock);
        if (ret < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, ret, "sending the snapshot's copied pages failed");
        }
    }
}

void lm_ram_bgsnap_claimed_locked(lm_ram *r, unsigned bi, uint64_t first, uint64_t end)
{
    struct lm_bgsnap *bg = r->bg;
    if (!bg)
        return;
    bg->inflight = true;
    bg->in_bi = bi;
    bg->in_first = first;
    bg->in_end = end;
}

int lm_ram_bgsnap_flush(lm_ram *r)
{
    struct lm_bgsnap *bg = r->bg;
    if (!bg || !bg->upend)
        return 0;
    bg->upend = false;
    lm_error e = {0};
    return lm_wp_unprotect(bg->wp, bg->u_bi, bg->u_first, bg->u_end - bg->u_first, &e);
}

int lm_ram_bgsnap_sent(lm_ram *r, unsigned bi, uint64_t first, uint64_t end)
{
    struct lm_bgsnap *bg = r->bg;
    if (!bg)
        return 0;
    /* The run is in the socket or the channel's buffer (write_ref copies
     * or writes before it returns), so the guest may change it now.  A
     * writer that faulted on it meanwhile was left to us: wake it at once;
     * otherwise the run joins the batch (on_fault lets through a write to
     * a page that is sent, in flight no more). */
    pthread_mutex_lock(&r->lock);
    bg->inflight = false;
    pthread_mutex_unlock(&r->lock);
    int ret = 0;
    if (bg->upend &&
        (bg->u_bi != bi || bg->u_end != first || bg->u_end - bg->u_first >= UNPROTECT_BATCH))
        ret = lm_ram_bgsnap_flush(r);
    if (!bg->upend) {
        bg->upend = true;
        bg->u_bi = bi;
        bg->u_first = first;
    }
    bg->u_end = end;
    return ret;
}
