/*
 * query.c - query-migrate: a snapshot of the status under lock and of the
 * counters without it (relaxed atomics).  Bounded work, no allocation, no
 * lock held across anything that waits: it answers at once whatever the
 * migration's threads are blocked on.
 */
#include "core/internal.h"

#include <stdio.h>
#include <string.h>

void lm_mig_query(lm_mig *m, lm_info *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&m->lock);
    out->status = m->status;
    lm_role role = m->role;
    snprintf(out->error_desc, sizeof out->error_desc, "%s", m->error.code ? m->error.msg : "");
    snprintf(out->socket_address, sizeof out->socket_address, "%s", m->socket_address);
    bool lazy = m->caps & (1ull << LM_CAP_X_LAZY_RESTORE);
    uint64_t total = 0;
    for (unsigned i = 0; i < m->mem.nblocks; i++)
        total += m->mem.blocks[i].len;
    pthread_mutex_unlock(&m->lock);

    lm_stats *st = &m->stats;
    uint64_t start = LM_ATOMIC_GET(&st->start_ns), end = LM_ATOMIC_GET(&st->end_ns);
    out->total_time = -1;
    if (out->status != LM_STATUS_NONE && start)
        out->total_time = (int64_t)(((end ? end : lm_now_ns()) - start) / 1000000);
    out->setup_time = (int64_t)LM_ATOMIC_GET(&st->setup_time_ms);
    out->downtime = -1;
    out->expected_downtime = -1;
    out->page_size = LM_PAGE_SIZE;
    out->total = total;
    if (role == LM_ROLE_DEST) {
        lm_pc_dst_query(&m->pcd, out);
        out->pc_mfd_pages = LM_ATOMIC_GET(&st->mfd.postcopy_pages);
        if (lazy && out->has_postcopy) {
            /* Lazy restore: page bytes read from the file, and what is
             * still to place (every page is owed at the start). */
            out->has_ram = true;
            out->transferred = LM_ATOMIC_GET(&st->transferred);
            out->normal = out->transferred / LM_PAGE_SIZE;
            out->normal_bytes = out->transferred;
            out->remaining = out->pc_owed_pages * LM_PAGE_SIZE;
        }
    }
    if (role != LM_ROLE_SOURCE)
        return;
    out->has_ram = out->status != LM_STATUS_NONE;
    out->transferred = LM_ATOMIC_GET(&st->transferred);
    out->remaining = LM_ATOMIC_GET(&st->ram.remaining);
    out->duplicate = LM_ATOMIC_GET(&st->ram.duplicate) + LM_ATOMIC_GET(&st->mfd.zero);
    out->normal = LM_ATOMIC_GET(&st->ram.normal) + LM_ATOMIC_GET(&st->mfd.normal);
    out->normal_bytes = out->normal * LM_PAGE_SIZE;
    out->dirty_pages_rate = LM_ATOMIC_GET(&st->ram.dirty_pages_rate);
    out->mbps = (double)LM_ATOMIC_GET(&st->mbps_x1000) / 1000.0;
    out->dirty_sync_count = LM_ATOMIC_GET(&st->ram.dirty_sync_count);
    out->postcopy_requests = LM_ATOMIC_GET(&st->postcopy_requests);
    out->pages_per_second = LM_ATOMIC_GET(&st->pages_per_second);
    out->precopy_bytes =
        LM_ATOMIC_GET(&st->out.precopy_bytes) + LM_ATOMIC_GET(&st->mfd.precopy_bytes);
    out->downtime_bytes =
        LM_ATOMIC_GET(&st->out.downtime_bytes) + LM_ATOMIC_GET(&st->mfd.downtime_bytes);
    out->postcopy_bytes =
        LM_ATOMIC_GET(&st->out.postcopy_bytes) + LM_ATOMIC_GET(&st->mfd.postcopy_bytes);
    out->bandwidth = LM_ATOMIC_GET(&st->bandwidth);
    out->queued_bytes = LM_ATOMIC_GET(&st->queued);
    out->switchover_queued_bytes = LM_ATOMIC_GET(&st->switchover_queued);
    out->cpu_throttle_percentage = (uint32_t)LM_ATOMIC_GET(&st->cpu_throttle_pct);
    out->dirty_limit_mbps = LM_ATOMIC_GET(&st->dirty_limit_mbps);
    out->dirty_limit_throttle_us = out->dirty_limit_mbps ? LM_ATOMIC_GET(&st->dl_throttle_us) : 0;
    pthread_mutex_lock(&m->lock);
    out->has_xbzrle = m->caps & (1ull << LM_CAP_XBZRLE);
    pthread_mutex_unlock(&m->lock);
    if (out->has_xbzrle) {
        const lm_xbz_counters *x = &st->ram.xbz;
        out->xbzrle_cache_size = LM_ATOMIC_GET(&x->cache_size);
        out->xbzrle_bytes = LM_ATOMIC_GET(&x->bytes);
        out->xbzrle_pages = LM_ATOMIC_GET(&x->pages);
        out->xbzrle_cache_miss = LM_ATOMIC_GET(&x->cache_miss);
        out->xbzrle_overflow = LM_ATOMIC_GET(&x->overflow);
        out->xbzrle_cache_miss_rate = (double)LM_ATOMIC_GET(&x->miss_rate_ppm) / 1e6;
        out->xbzrle_encoding_rate = (double)LM_ATOMIC_GET(&x->encoding_rate_milli) / 1e3;
    }
    out->multifd_bytes = LM_ATOMIC_GET(&st->mfd.bytes);
    out->multifd_channels = LM_ATOMIC_GET(&st->mfd.channels);
    for (unsigned i = 0; i < out->multifd_channels && i < LM_MULTIFD_MAX_CHANNELS; i++) {
        out->multifd_chan[i].bytes = LM_ATOMIC_GET(&st->mfd.chan[i].bytes);
        out->multifd_chan[i].normal = LM_ATOMIC_GET(&st->mfd.chan[i].normal);
        out->multifd_chan[i].zero = LM_ATOMIC_GET(&st->mfd.chan[i].zero);
    }
    uint64_t dt = LM_ATOMIC_GET(&st->downtime_us);
    /* Unlike QEMU, the last expected-downtime stays visible once completed:
     * it is the prediction made at the switchover decision, to be compared
     * with the downtime that actually happened. */
    if (out->status == LM_STATUS_COMPLETED) {
        out->downtime = (int64_t)((dt + 500) / 1000);
        out->downtime_us = dt;
    }
    out->switch_pause_us = LM_ATOMIC_GET(&st->switch_pause_us);
    if (out->status != LM_STATUS_SETUP)
        out->expected_downtime = LM_ATOMIC_GET(&st->expected_downtime_ms);
}
