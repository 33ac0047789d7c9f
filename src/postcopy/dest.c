/*
 * dest.c - postcopy on the destination: life cycle, discards, the
 * preempt channel's loader "lm-pc-preempt", the return path's writers and
 * the statistics of postcopy-blocktime (postcopy.h has the threads and
 * locks).
 */
#include "postcopy/postcopy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

/* ---------------------------------------------------------- life cycle */

void lm_pc_dst_init(lm_pc_dst *d, lm_mem *mem, lm_place *place)
{
    memset(d, 0, sizeof *d);
    d->mem = mem;
    d->place = place;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->rp_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &ca);
    pthread_condattr_destroy(&ca);
    d->uffd = -1;
    d->quit_efd = -1;
}

static void free_maps(lm_pc_dst *d)
{
    for (unsigned i = 0; i < LM_RAM_MAX_BLOCKS; i++) {
        lm_pc_block *pb = &d->blk[i];
        free(pb->owed);
        free(pb->requested);
        free(pb->fault_ns);
        free(pb->claimed);
        pb->owed = pb->requested = pb->fault_ns = pb->claimed = NULL;
    }
}

void lm_pc_dst_destroy(lm_pc_dst *d)
{
    lm_pc_dst_preempt_stop(d);
    lm_pc_dst_end(d);
    lm_pc_dst_release(d);
    free_maps(d);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->rp_lock);
}

void lm_pc_dst_reset(lm_pc_dst *d)
{
    pthread_mutex_lock(&d->lock);
    d->switched = false; /* query shows postcopy figures of this migration only */
    pthread_mutex_unlock(&d->lock);
}

/* Called at the first POSTCOPY_DISCARD or at POSTCOPY_RUN: from then on
 * the prefault thread must not populate anything (a populated owed page
 * would never fault). */
int lm_pc_dst_prepare(lm_pc_dst *d, bool blocktime, lm_error *err)
{
    if (d->prepared)
        return 0;
    lm_mem *mem = d->mem;
    lm_mem_prefault_stop(mem);
    int ret = lm_pc_dst_classify(d, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&d->lock);
    free_maps(d);
    for (unsigned i = 0; i < mem->nblocks && ret == 0; i++) {
        lm_ram_block *b = &mem->blocks[i];
        lm_pc_block *pb = &d->blk[i];
        pb->owed = calloc(lm_bitmap_words(b->npages), 8);
        pb->requested = calloc(lm_bitmap_words(b->npages), 8);
        pb->fault_ns = blocktime ? calloc(b->npages, 8) : NULL;
        pb->claimed = pb->kind == LM_PC_MINOR ? calloc(lm_bitmap_words(b->npages), 8) : NULL;
        if (!pb->owed || !pb->requested || (blocktime && !pb->fault_ns) ||
            (pb->kind == LM_PC_MINOR && !pb->claimed))
            ret = lm_error_set(err, -ENOMEM, "out of memory for postcopy maps");
    }
    d->owed_pages = 0;
    d->requests = d->faults = d->local_zero_faults = 0;
    memset(d->hist, 0, sizeof d->hist);
    memset(d->lat_fine, 0, sizeof d->lat_fine);
    d->lat_max_us = d->lat_count = 0;
    d->blocktime = blocktime;
    d->preempt_eos = false;
    d->rp_broken = false;
    d->prepared = ret == 0;
    pthread_mutex_unlock(&d->lock);
    /* Small pages from here on: khugepaged must not refill what a discard
     * drops, and a missing page is requested and placed as 4 KiB. */
    for (unsigned i = 0; i < mem->nblocks && ret == 0; i++)
        madvise(mem->blocks[i].base, mem->blocks[i].len, MADV_NOHUGEPAGE);
    return ret;
}

int lm_pc_dst_owe_all(lm_pc_dst *d, lm_error *err)
{
    lm_mem *mem = d->mem;
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        lm_pc_block *pb = &d->blk[i];
        /* As a discard does (lm_pc_dst_load_discard): a hole for shared
         * memory without minor faults, unmapped pages otherwise. */
        int advice = pb->kind == LM_PC_SHARED ? MADV_REMOVE : MADV_DONTNEED;
        if (madvise(b->base, b->len, advice) < 0)
            return lm_error_set(err, -errno, "lazy restore: madvise(%s) of RAM block '%s': %s",
                                advice == MADV_REMOVE ? "REMOVE" : "DONTNEED", b->name,
                                strerror(errno));
        pthread_mutex_lock(&d->lock);
        memset(pb->owed, 0xff, lm_bitmap_words(b->npages) * 8);
        if (b->npages % 64)
            pb->owed[b->npages / 64] = (1ull << (b->npages % 64)) - 1;
        d->owed_pages += b->npages;
        pthread_mutex_unlock(&d->lock);
        memset(b->received, 0, lm_bitmap_words(b->npages) * 8);
    }
    return 0;
}

void lm_pc_dst_disown(lm_pc_dst *d)
{
    pthread_mutex_lock(&d->lock);
    for (unsigned i = 0; i < d->mem->nblocks; i++)
        if (d->blk[i].owed)
            memset(d->blk[i].owed, 0, lm_bitmap_words(d->mem->blocks[i].npages) * 8);
    d->owed_pages = 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

bool lm_pc_dst_owed_any(lm_pc_dst *d, unsigned bi, uint64_t first, uint64_t count)
{
    lm_pc_block *pb = &d->blk[bi];
    pthread_mutex_lock(&d->lock);
    bool any = pb->owed && lm_bitmap_next_set(pb->owed, first + count, first) < first + count;
    pthread_mutex_unlock(&d->lock);
    return any;
}

/* POSTCOPY_DISCARD: drop the local copy of owed pages.  Only between the
 * switch and POSTCOPY_RUN (the loader enforces the order). */
int lm_pc_dst_load_discard(lm_pc_dst *d, lm_chan *c, const lm_rec_hdr *h, bool blocktime,
                           lm_error *err)
{
    lm_ram_zero z;
    lm_ram_block *b;
    int ret = lm_ram_read_zero_run(d->mem, c, h, &z, &b, err);
    if (ret < 0)
        return ret;
    ret = lm_pc_dst_prepare(d, blocktime, err);
    if (ret < 0)
        return ret;
    lm_pc_block *pb = &d->blk[b - d->mem->blocks];
    uint64_t first = z.first_page, count = z.count;
    /* Shared memory without minor faults: only a hole faults (MADV_REMOVE
     * punches one); otherwise unmapping is enough (a minor fault comes
     * from an unmapped page-cache page, a missing fault from a hole). */
    int advice = pb->kind == LM_PC_SHARED ? MADV_REMOVE : MADV_DONTNEED;
    if (madvise(b->base + first * b->page_size, count * b->page_size, advice) < 0)
        return lm_error_set(err, -errno,
                            "POSTCOPY_DISCARD: madvise(%s) of '%s' pages "
                            "%llu+%llu: %s",
                            advice == MADV_REMOVE ? "REMOVE" : "DONTNEED", b->name,
                            (unsigned long long)first, (unsigned long long)count, strerror(errno));
    pthread_mutex_lock(&d->lock);
    for (uint64_t p = first; p < first + count; p++) {
        if (!lm_bit_test(pb->owed, p)) {
            lm_bit_set(pb->owed, p);
            d->owed_pages++;
        }
        /* received = "may hold data": a later precopy stream must not
         * take a dropped page for a present one. */
        __atomic_fetch_and(&b->received[p / 64], ~(1ull << (p % 64)), __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&d->lock);
    return 0;
}

/* ---------------------------------------------------------- statistics */

static unsigned fine_bucket(uint64_t us)
{
    if (us < LM_PC_LAT_LINEAR)
        return (unsigned)us;
    unsigned octave = 63 - (unsigned)__builtin_clzll(us); /* >= 6 */
    if (octave >= 32)
        return LM_PC_LAT_FINE - 1;
    unsigned sub = (unsigned)((us >> (octave - 4)) & (LM_PC_LAT_SUB - 1));
    return LM_PC_LAT_LINEAR + (octave - 6) * LM_PC_LAT_SUB + sub;
}

static uint64_t fine_lower(unsigned i)
{
    if (i < LM_PC_LAT_LINEAR)
        return i;
    unsigned octave = (i - LM_PC_LAT_LINEAR) / LM_PC_LAT_SUB + 6;
    unsigned sub = (i - LM_PC_LAT_LINEAR) % LM_PC_LAT_SUB;
    return (1ull << octave) + ((uint64_t)sub << (octave - 4));
}

static void record_latency(lm_pc_dst *d, lm_pc_block *pb, uint64_t p, uint64_t now)
{
    if (!pb->fault_ns || !pb->fault_ns[p])
        return;
    uint64_t us = (now - pb->fault_ns[p]) / 1000;
    pb->fault_ns[p] = 0;
    unsigned bucket = 0;
    while (bucket + 1 < LM_PC_HIST_BUCKETS && (us >> (bucket + 1)))
        bucket++;
    d->hist[bucket]++;
    d->lat_fine[fine_bucket(us)]++;
    d->lat_count++;
    if (us > d->lat_max_us)
        d->lat_max_us = us;
}

/* Marks [p, q) of block bi placed: no longer owed nor claimed; wakes the
 * waiters of lm_pc_dst_wait_placed.  With lock held. */
void lm_pc_dst_placed_locked(lm_pc_dst *d, unsigned bi, uint64_t p, uint64_t q, uint64_t now)
{
    lm_pc_block *pb = &d->blk[bi];
    for (uint64_t i = p; i < q; i++) {
        if (lm_bit_test(pb->owed, i)) {
            lm_bit_clear(pb->owed, i);
            d->owed_pages--;
        }
        if (pb->claimed)
            lm_bit_clear(pb->claimed, i);
        record_latency(d, pb, i, now);
    }
    pthread_cond_broadcast(&d->cond);
}

/* The upper end of bucket i: a percentile is reported as "at most", so
 * the quantisation never flatters it. */
static uint64_t fine_upper(unsigned i)
{
    if (i < LM_PC_LAT_LINEAR)
        return i;
    unsigned octave = (i - LM_PC_LAT_LINEAR) / LM_PC_LAT_SUB + 6;
    return fine_lower(i) + (1ull << (octave - 4)) - 1;
}

/* The latency at or below which a fraction num/den of the samples lie. */
static uint64_t percentile(const uint64_t *fine, uint64_t count, uint64_t num, uint64_t den)
{
    uint64_t rank = (count - 1) * num / den, seen = 0;
    for (unsigned i = 0; i < LM_PC_LAT_FINE; i++) {
        seen += fine[i];
        if (seen > rank)
            return fine_upper(i);
    }
    return fine_upper(LM_PC_LAT_FINE - 1);
}

/* Bounded work under the lock, no allocation: query-migrate may call it
 * at any time on the QMP thread. */
void lm_pc_dst_query(lm_pc_dst *d, lm_info *out)
{
    pthread_mutex_lock(&d->lock);
    out->has_postcopy = d->switched;
    out->postcopy_requests = d->requests;
    out->pc_faults = d->faults;
    out->pc_local_faults = d->local_zero_faults;
    out->pc_owed_pages = d->owed_pages;
    for (unsigned i = 0; d->switched && i < d->mem->nblocks; i++) {
        if (d->blk[i].kind == LM_PC_MINOR)
            out->pc_minor_blocks++;
        else
            out->pc_copy_blocks++;
    }
    out->has_blocktime = d->blocktime;
    memcpy(out->pc_lat_hist, d->hist, sizeof out->pc_lat_hist);
    out->pc_lat_count = d->lat_count;
    out->pc_lat_max_us = d->lat_max_us;
    if (d->lat_count) {
        out->pc_lat_p50_us = percentile(d->lat_fine, d->lat_count, 1, 2);
        out->pc_lat_p99_us = percentile(d->lat_fine, d->lat_count, 99, 100);
    }
    pthread_mutex_unlock(&d->lock);
}

/* --------------------------------------------------------- return path */

int lm_pc_dst_rp_send(lm_pc_dst *d, lm_chan *c, uint8_t type, const void *p, uint32_t len)
{
    pthread_mutex_lock(&d->rp_lock);
    int ret = lm_rec_send(c, type, p, len);
    pthread_mutex_unlock(&d->rp_lock);
    return ret;
}

int lm_pc_dst_rp_send_status(lm_pc_dst *d, lm_chan *c, uint8_t type, int32_t status,
                             const char *msg)
{
    pthread_mutex_lock(&d->rp_lock);
    int ret = lm_rec_send_status(c, type, status, msg);
    pthread_mutex_unlock(&d->rp_lock);
    return ret;
}

/* ------------------------------------------------------ preempt channel */

static void *preempt_thread_fn(void *arg)
{
    lm_pc_dst *d = arg;
    lm_chan *c = d->preempt;
    lm_error err = {0};
    int ret = 0;
    pthread_setname_np(pthread_self(), "lm-pc-preempt");
    uint8_t *tmp = malloc((size_t)LM_RAM_MAX_RUN * LM_PAGE_SIZE);
    if (!tmp)
        ret = lm_error_set(&err, -ENOMEM, "out of memory");
    while (ret == 0) {
        lm_rec_hdr h;
        ret = lm_rec_read_hdr(c, true, &h, &err);
        if (ret < 0 || h.type == LM_REC_EOS)
            break;
        /* Only requested pages travel here, and only once the workload
         * runs: the main channel's loader has the block table by then. */
        if ((h.type != LM_REC_RAM_PAGES && h.type != LM_REC_RAM_ZERO) ||
            !__atomic_load_n(&d->listening, __ATOMIC_ACQUIRE)) {
            ret = lm_error_set(
                &err, -EPROTO, "preempt channel: unexpected %s record%s", lm_rec_type_name(h.type),
                h.type == LM_REC_RAM_PAGES || h.type == LM_REC_RAM_ZERO ? " before POSTCOPY_RUN"
                                                                        : "");
            break;
        }
        ret = lm_ram_load_record(d->mem, d->place, c, &h, tmp, &err);
        if (ret < 0)
            lm_error_prefix(&err, "postcopy");
    }
    free(tmp);
    if (ret < 0)
        lm_error_prefix(&err, "preempt channel");
    pthread_mutex_lock(&d->lock);
    d->preempt_ret = ret;
    d->preempt_err = err;
    d->preempt_eos = true;
    bool stopping = d->preempt_stopping;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    /* A preempt channel that broke while the migration goes on takes the
     * whole link down: requests would go nowhere, so the destination
     * pauses (every channel shut down, the loaders fail) rather than wait
     * on the main channel. */
    if (ret < 0 && !stopping && d->link_down)
        d->link_down(d->link_opaque, ret, err.msg);
    return NULL;
}

int lm_pc_dst_preempt_start(lm_pc_dst *d, lm_chan *c, lm_error *err)
{
    pthread_mutex_lock(&d->rp_lock);
    d->req = c;
    pthread_mutex_unlock(&d->rp_lock);
    d->preempt = c;
    pthread_mutex_lock(&d->lock);
    d->preempt_eos = false;
    d->preempt_ret = 0;
    d->preempt_stopping = false;
    pthread_mutex_unlock(&d->lock);
    int ret = -pthread_create(&d->preempt_thread, NULL, preempt_thread_fn, d);
    if (ret < 0) {
        pthread_mutex_lock(&d->rp_lock);
        d->req = NULL;
        pthread_mutex_unlock(&d->rp_lock);
        d->preempt = NULL;
        lm_chan_free(c);
        return lm_error_set(err, ret, "cannot start the preempt channel thread");
    }
    d->preempt_running = true;
    return 0;
}

void lm_pc_dst_preempt_stop(lm_pc_dst *d)
{
    if (!d->preempt_running)
        return;
    pthread_mutex_lock(&d->lock);
    d->preempt_stopping = true; /* its failure from here is ours, not the link's */
    pthread_mutex_unlock(&d->lock);
    /* Shut down first: a request write blocked on it (rp_lock held) fails. */
    lm_chan_shutdown(d->preempt, "preempt channel closed");
    pthread_mutex_lock(&d->rp_lock);
    d->req = NULL; /* no request writes from here on */
    pthread_mutex_unlock(&d->rp_lock);
    pthread_join(d->preempt_thread, NULL);
    pthread_mutex_lock(&d->lock);
    d->preempt_running = false;
    pthread_mutex_unlock(&d->lock);
    lm_chan_free(d->preempt);
    d->preempt = NULL;
}

/* EOS on the main channel: the source owes nothing any more, but pages of
 * the preempt channel may still be in flight; they end with its EOS. */
int lm_pc_dst_wait_placed(lm_pc_dst *d, lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    while (d->owed_pages && d->preempt_running && !d->preempt_eos)
        pthread_cond_wait(&d->cond, &d->lock);
    uint64_t owed = d->owed_pages;
    int pret = d->preempt_running ? d->preempt_ret : 0;
    lm_error perr = d->preempt_err;
    pthread_mutex_unlock(&d->lock);
    if (pret < 0)
        return lm_error_set(err, pret, "%s", perr.msg);
    if (owed)
        return lm_error_set(err, -EPROTO,
                            "end of stream with %llu pages still owed by the "
                            "source",
                            (unsigned long long)owed);
    return 0;
}
