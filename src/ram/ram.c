/*
 * ram.c - RAM as a state handler: the source's dirty bitmaps, page search
 * and sending; the destination's loading of RAM records straight into
 * guest memory.
 *
 * Source (migration thread only): every block has a dirty bitmap that
 * starts all ones.  Pages that were never populated when migration began
 * are zero and are sent as RAM_ZERO runs without reading them (pass 1
 * only: the populated map is dropped at the first sync, because a page
 * written after setup must be read).  Other pages are checked for zero
 * (fast OR scan, early exit on the first non-zero cache line) and sent as
 * runs of up to 256 pages with one writev straight from guest memory.
 *
 * Postcopy (source): after the switch the return-path thread "lm-rp" also
 * claims pages (requested ones) from the same dirty maps, so every search
 * and clear of a dirty bit, and ram.dirty_pages, are under m->ram_lock;
 * sending a claimed run is not (the guest is stopped, its memory no longer
 * changes).  The background push keeps using the multifd channels when
 * there are some; requested pages never do.  lm-rp sends requested pages
 * with ram_lock held, so a claim and its send are one step for it.
 * (Destination postcopy: placement is in postcopy.c; this file decodes
 * the records for it.)
 *
 * Destination (incoming thread, plus "lm-prefault"): RAM_PAGES runs are
 * read with recv() directly into guest memory after the 2 MiB chunks they
 * touch were populated in bulk (MADV_POPULATE_WRITE ~0.5 µs/page instead of
 * a 10-15 µs first-touch fault per page on this machine, DESIGN §7).  The
 * prefault thread does that ahead of the stream from migrate-incoming on,
 * so population (kernel page zeroing, 0.3-1.7 s/GiB measured here) is off
 * the receive path when the destination is started before the source
 * migrates, as with QEMU's -mem-prealloc.  A zero run
 * clears only pages received earlier: a destination's RAM starts zero, so
 * a first-time zero page costs nothing and is never faulted in.
 */
#include "core/internal.h"
#include "multifd/multifd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RUN_PAGES 256          /* pages per RAM_PAGES record (1 MiB) */
#define SLICE_NS 50000000ull   /* QEMU's MAX_WAIT: re-check pending every 50 ms */
#define CHUNK_PAGES LM_RAM_CHUNK_PAGES

/* ================================================================ source */

static void clear_range(uint64_t *b, uint64_t from, uint64_t to)
{
    while (from < to && (from % 64)) {
        lm_bit_clear(b, from);
        from++;
    }
    while (from + 64 <= to) {
        b[from / 64] = 0;
        from += 64;
    }
    while (from < to) {
        lm_bit_clear(b, from);
        from++;
    }
}

void lm_ram_save_cleanup(lm_mig *m)
{
    if (m->dirty) {
        lm_dirty_stop(m->dirty);
        lm_dirty_free(m->dirty);
        m->dirty = NULL;
    }
    m->ram.tracking = false;
    for (unsigned i = 0; i < m->nblocks; i++) {
        free(m->blocks[i].dirty);
        free(m->blocks[i].populated);
        m->blocks[i].dirty = NULL;
        m->blocks[i].populated = NULL;
    }
}

static void ram_cleanup_cb(void *opaque)
{
    lm_ram_save_cleanup(opaque);
}

static void set_remaining(lm_mig *m)
{
    pthread_mutex_lock(&m->ram_lock);
    uint64_t n = m->ram.dirty_pages;
    pthread_mutex_unlock(&m->ram_lock);
    LM_ATOMIC_SET(&m->stats.remaining, n * LM_PAGE_SIZE);
}

static int ram_save_setup(void *opaque, lm_out *o, lm_error *err)
{
    lm_mig *m = opaque;
    int ret = 0;
    lm_fmt_block table[LM_RAM_MAX_BLOCKS];
    uint8_t *buf = NULL;

    memset(&m->ram, 0, sizeof m->ram);
    pthread_mutex_lock(&m->lock);
    m->ram.postcopy_capable = m->caps & (1ull << LM_CAP_POSTCOPY_RAM);
    pthread_mutex_unlock(&m->lock);
    uint64_t *pops[LM_RAM_MAX_BLOCKS];
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        uint64_t words = lm_bitmap_words(b->npages);
        b->dirty = malloc(words * 8);
        b->populated = calloc(words, 8);
        if (!b->dirty || !b->populated) {
            ret = lm_error_set(err, -ENOMEM, "out of memory for RAM bitmaps");
            goto out;
        }
        memset(b->dirty, 0xff, words * 8);
        if (b->npages % 64)
            b->dirty[words - 1] = (1ull << (b->npages % 64)) - 1;
        pops[i] = b->populated;
        m->ram.dirty_pages += b->npages;
        snprintf(table[i].name, sizeof table[i].name, "%s", b->name);
        table[i].page_size = b->page_size;
        table[i].length = b->len;
    }
    /* A running guest needs write tracking; a stopped one cannot dirty
     * anything, so one pass is exact and no tracker is needed. */
    if (lm_vm_runstate(m) == LM_RUN_RUNNING) {
        ret = lm_dirty_new(LM_DIRTY_UFFD_WP, &m->dirty, err);
        if (ret < 0)
            goto out;
        for (unsigned i = 0; i < m->nblocks; i++) {
            lm_ram_block *b = &m->blocks[i];
            ret = lm_dirty_add_range(m->dirty, b->base, b->len, b->page_size, err);
            if (ret < 0)
                goto out;
        }
        /* Protects every page and records, at the moment it is protected,
         * whether it was populated: exact and race-free, where a scan
         * after protection would see the kernel's markers on empty pages
         * as "swapped" and a scan before it would miss pages populated in
         * between (dirty.h). */
        ret = lm_dirty_start_populated(m->dirty, pops, err);
        if (ret < 0) {
            lm_error_prefix(err, "dirty tracking (userfaultfd write-protect) unavailable; "
                                 "stop the guest for a non-live migration");
            goto out;
        }
        m->ram.tracking = true;
    } else {
        for (unsigned i = 0; i < m->nblocks; i++) {
            lm_ram_block *b = &m->blocks[i];
            int r = lm_mem_populated_scan(b->base, b->len, b->page_size, b->populated, err);
            if (r < 0)
                goto out;
            if (r == 1) { /* no PAGEMAP_SCAN: treat everything as populated */
                free(b->populated);
                b->populated = NULL;
            }
        }
    }
    size_t cap = 4 + m->nblocks * (1 + LM_RAM_NAME_MAX + 4 + 8);
    buf = malloc(cap);
    if (!buf) {
        ret = lm_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    int n = lm_fmt_ram_blocks_encode(table, m->nblocks, buf, cap);
    if (n < 0) {
        ret = lm_error_set(err, n, "encoding the RAM block table failed");
        goto out;
    }
    ret = lm_out_record(o, LM_REC_RAM_BLOCKS, buf, (uint32_t)n);
    if (ret < 0)
        goto out;
    /* The setup bitmap counts as the first sync, as in QEMU. */
    uint64_t now = lm_now_ns();
    m->ram.period_start_ns = now;
    m->ram.last_sync_ns = now;
    m->ram.dirty_after_sync = m->ram.dirty_pages * LM_PAGE_SIZE;
    LM_ATOMIC_SET(&m->stats.dirty_sync_count, 1);
    set_remaining(m);
    lm_emit_pass(m, 1);
out:
    free(buf);
    return ret;
}

/* Collects the pages written since the last sync (a new pass).  With
 * multifd, the pages sent so far are first fenced off from those of the
 * new pass: a page re-sent on another channel can never be overtaken by
 * its older copy (seed 004, multifd.h). */
static int ram_sync(lm_mig *m, lm_out *o, lm_error *err)
{
    if (o->mfd) {
        int ret = lm_mfd_send_sync(o->mfd, o, err);
        if (ret < 0)
            return ret;
    }
    uint64_t t0 = lm_now_ns();
    uint64_t newly = 0;
    for (unsigned i = 0; i < m->nblocks; i++) {
        /* The populated hint is only valid before the first sync: from now
         * on a dirty page may hold data written after setup. */
        free(m->blocks[i].populated);
        m->blocks[i].populated = NULL;
    }
    if (m->dirty) {
        uint64_t *maps[LM_RAM_MAX_BLOCKS];
        for (unsigned i = 0; i < m->nblocks; i++)
            maps[i] = m->blocks[i].dirty;
        int ret = lm_dirty_sync(m->dirty, maps, &newly, err);
        if (ret < 0)
            return lm_error_prefix(err, "dirty sync");
    }
    uint64_t now = lm_now_ns();
    pthread_mutex_lock(&m->ram_lock);
    m->ram.dirty_pages += newly;
    pthread_mutex_unlock(&m->ram_lock);
    m->ram.period_dirty += newly;
    m->ram.last_sync_cost_ns = now - t0;
    m->ram.last_sync_ns = now;
    m->ram.dirty_after_sync = m->ram.dirty_pages * LM_PAGE_SIZE;
    /* dirty-pages-rate over periods of at least one second (QEMU). */
    if (now - m->ram.period_start_ns >= 1000000000ull) {
        uint64_t rate = m->ram.period_dirty * 1000000000ull / (now - m->ram.period_start_ns);
        LM_ATOMIC_SET(&m->stats.dirty_pages_rate, rate);
        m->ram.period_start_ns = now;
        m->ram.period_dirty = 0;
    }
    uint64_t pass = LM_ATOMIC_ADD(&m->stats.dirty_sync_count, 1) + 1;
    set_remaining(m);
    lm_emit_pass(m, pass);
    return 0;
}

static void account(lm_mig *m, lm_out *o, uint64_t bytes)
{
    if (o->postcopy)
        LM_ATOMIC_ADD(&m->stats.postcopy_bytes, bytes);
    else if (o->last_stage)
        LM_ATOMIC_ADD(&m->stats.downtime_bytes, bytes);
    else
        LM_ATOMIC_ADD(&m->stats.precopy_bytes, bytes);
}

static int send_zero_run(lm_mig *m, lm_out *o, uint32_t block, uint64_t first, uint64_t count)
{
    uint8_t p[LM_RAM_ZERO_SIZE];
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    int n = lm_fmt_ram_zero_encode(&z, p, sizeof p);
    if (n < 0)
        return n;
    LM_ATOMIC_ADD(&m->stats.duplicate, count);
    account(m, o, LM_REC_HDR_SIZE + LM_RAM_ZERO_SIZE);
    return lm_out_record(o, LM_REC_RAM_ZERO, p, (uint32_t)n);
}

static int send_page_run(lm_mig *m, lm_out *o, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_block *b = &m->blocks[block];
    uint8_t hdr[LM_REC_HDR_SIZE + LM_RAM_PAGES_HDR_SIZE];
    uint64_t bytes = count * b->page_size;
    lm_ram_run r = {.block = block, .count = (uint32_t)count, .first_page = first};
    lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, (uint32_t)(LM_RAM_PAGES_HDR_SIZE + bytes), hdr,
                          LM_REC_HDR_SIZE);
    lm_fmt_ram_pages_hdr_encode(&r, hdr + LM_REC_HDR_SIZE, LM_RAM_PAGES_HDR_SIZE);
    LM_ATOMIC_ADD(&m->stats.normal, count);
    account(m, o, sizeof hdr + bytes);
    return lm_chan_write_ref(o->chan, hdr, sizeof hdr, b->base + first * b->page_size, bytes);
}

/* Sends pages [p, end) of block bi.  The pages were claimed (their dirty
 * bits cleared) by the caller, so no other thread sends them; guest memory
 * is stable or tracked.  A background run (bg) goes to the multifd
 * channels when there are some, in precopy and in postcopy alike (the
 * destination's channels place postcopy packets atomically, recv.c);
 * requested pages (!bg) go on the caller's channel, the preempt or the
 * main one, so that they never queue behind the background push.  The
 * channels detect zero pages in parallel when zero-page-detection=multifd
 * (digest §8.3); otherwise this thread checks them here (legacy, or
 * multifd without channels) or not at all (none). */
static int send_claimed(lm_mig *m, lm_out *o, unsigned bi, uint64_t p, uint64_t end, bool bg)
{
    lm_ram_block *b = &m->blocks[bi];
    struct lm_mfd_send *mfd = bg ? o->mfd : NULL;
    bool detect = o->zpd == LM_ZPD_LEGACY || (!mfd && o->zpd == LM_ZPD_MULTIFD);
    int ret = 0;
    if (!detect) {
        if (!mfd)
            return send_page_run(m, o, bi, p, end - p);
        for (uint64_t i = p; i < end && ret >= 0; i++)
            ret = lm_mfd_queue_page(mfd, bi, i, NULL);
        return ret;
    }
    uint64_t i = p;
    while (i < end) {
        bool zero = lm_page_is_zero(b->base + i * b->page_size, b->page_size);
        uint64_t j = i + 1;
        while (j < end && j - i < RUN_PAGES &&
               lm_page_is_zero(b->base + j * b->page_size, b->page_size) == zero)
            j++;
        if (zero) {
            ret = send_zero_run(m, o, bi, i, j - i);
        } else if (mfd) {
            for (uint64_t k = i; k < j && ret >= 0; k++)
                ret = lm_mfd_queue_page(mfd, bi, k, NULL);
        } else {
            ret = send_page_run(m, o, bi, i, j - i);
        }
        if (ret < 0)
            return ret;
        i = j;
    }
    return 0;
}

/* Claims and sends the next run of dirty pages of block bi at or after p:
 * either a never-populated stretch (one zero record) or up to max_pages
 * (<= RUN_PAGES) contiguous dirty pages.  The claim (search and clear) is
 * made under ram_lock because in postcopy the return-path thread claims
 * requested pages from the same maps; the send is not.  Returns the page
 * after the run, or npages when no dirty page is left in the block, or < 0. */
static int64_t send_run(lm_mig *m, lm_out *o, unsigned bi, uint64_t from, uint64_t max_pages)
{
    lm_ram_block *b = &m->blocks[bi];
    pthread_mutex_lock(&m->ram_lock);
    uint64_t p = lm_bitmap_next_set(b->dirty, b->npages, from);
    if (p >= b->npages) {
        pthread_mutex_unlock(&m->ram_lock);
        return (int64_t)b->npages;
    }
    if (b->populated && !lm_bit_test(b->populated, p)) {
        uint64_t q = lm_bitmap_next_set(b->populated, b->npages, p);
        uint64_t d = lm_bitmap_next_clear(b->dirty, b->npages, p);
        if (d < q)
            q = d;
        clear_range(b->dirty, p, q);
        m->ram.dirty_pages -= q - p;
        pthread_mutex_unlock(&m->ram_lock);
        int ret = send_zero_run(m, o, bi, p, q - p);
        return ret < 0 ? ret : (int64_t)q;
    }
    uint64_t end = p;
    while (end < b->npages && end - p < max_pages && lm_bit_test(b->dirty, end) &&
           (!b->populated || lm_bit_test(b->populated, end)))
        end++;
    clear_range(b->dirty, p, end);
    m->ram.dirty_pages -= end - p;
    if (o->postcopy && m->pcs.preempt) {
        unsigned k = (unsigned)(m->pcs.nrecent++ % LM_PC_RECENT);
        m->pcs.recent[k].block = bi;
        m->pcs.recent[k].first = p;
        m->pcs.recent[k].count = end - p;
        m->pcs.recent[k].off = lm_chan_bytes_written(o->chan);
        m->pcs.recent[k].mfd = o->mfd != NULL;
        m->pcs.recent[k].mfd_off = LM_ATOMIC_GET(&m->stats.multifd_bytes);
    }
    pthread_mutex_unlock(&m->ram_lock);
    int ret = send_claimed(m, o, bi, p, end, true);
    return ret < 0 ? ret : (int64_t)end;
}

/* Preempt only, ram_lock held: was page p of block bi claimed by a
 * background run that may not have reached the destination yet?  A run
 * given to multifd may wait in a channel's queue or socket: its window is
 * the multifd bytes written since the claim, LM_PC_INFLIGHT per channel
 * (all channels' bytes add up, while the page waits behind one of them). */
static bool maybe_in_flight(lm_mig *m, uint32_t bi, uint64_t p)
{
    if (!m->pcs.main)
        return false;
    uint64_t now = lm_chan_bytes_written(m->pcs.main);
    uint64_t mnow = LM_ATOMIC_GET(&m->stats.multifd_bytes);
    uint64_t mwin = LM_PC_INFLIGHT * (LM_ATOMIC_GET(&m->stats.mfd_channels) + 1);
    uint64_t n = m->pcs.nrecent < LM_PC_RECENT ? m->pcs.nrecent : LM_PC_RECENT;
    for (uint64_t i = 0; i < n; i++) {
        const __typeof__(m->pcs.recent[0]) *r = &m->pcs.recent[i];
        if (r->block == bi && p >= r->first && p < r->first + r->count)
            return now - r->off < LM_PC_INFLIGHT || (r->mfd && mnow - r->mfd_off < mwin);
    }
    return false;
}

static uint64_t dirty_left(lm_mig *m)
{
    pthread_mutex_lock(&m->ram_lock);
    uint64_t n = m->ram.dirty_pages;
    pthread_mutex_unlock(&m->ram_lock);
    return n;
}

/* Sends dirty pages until the budget is used, 50 ms passed, or nothing is
 * dirty.  Returns 1 when no dirty page is left, 0 when more remain. */
static int ram_send(lm_mig *m, lm_out *o, uint64_t budget, bool timed, lm_error *err)
{
    uint64_t start_bytes = lm_out_bytes(o);
    uint64_t t0 = lm_now_ns();
    unsigned runs = 0;
    unsigned scanned_blocks = 0;
    while (dirty_left(m)) {
        /* Postcopy without a preempt channel: requested pages go before
         * the next background run (QEMU's get_queued_page). */
        if (o->postcopy && lm_ram_postcopy_serve_queue(m, o, err) < 0)
            return err ? err->code : -EIO;
        unsigned bi = m->ram.cur_block;
        lm_ram_block *b = &m->blocks[bi];
        /* A run never goes far past the share of the window it was given,
         * so under a low max-bandwidth the other handlers' shares stay
         * theirs (savevm.c: fair share); one page is always allowed. */
        uint64_t max_pages = RUN_PAGES;
        if (budget != UINT64_MAX) {
            uint64_t used = lm_out_bytes(o) - start_bytes;
            uint64_t left = used >= budget ? 0 : budget - used;
            max_pages = left / b->page_size;
            if (max_pages < 1)
                max_pages = 1;
            if (max_pages > RUN_PAGES)
                max_pages = RUN_PAGES;
        }
        int64_t next = send_run(m, o, bi, m->ram.cur_page, max_pages);
        if (next < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, (int)next, "sending RAM failed");
        }
        if ((uint64_t)next >= b->npages) {
            /* End of block: wrap to the next one (a full round ends at the
             * block we started from). */
            m->ram.cur_block = (bi + 1) % m->nblocks;
            m->ram.cur_page = 0;
            if (++scanned_blocks > m->nblocks + 1)
                break; /* counter and maps disagree: trust the maps */
            continue;
        }
        m->ram.cur_page = (uint64_t)next;
        if (budget != UINT64_MAX && lm_out_bytes(o) - start_bytes >= budget)
            break;
        if (timed && (++runs % 16) == 0 && lm_now_ns() - t0 > SLICE_NS)
            break;
    }
    if (lm_chan_get_error(o->chan, err))
        return err ? err->code : -EIO;
    set_remaining(m);
    bool done = dirty_left(m) == 0;
    /* Postcopy: the last background pages leave the partial batch now,
     * not at completion; the fence (a no-op when nothing was queued since
     * the last) has them placed before the destination reads what follows
     * on the main channel. */
    if (done && o->postcopy && o->mfd) {
        int ret = lm_mfd_send_sync(o->mfd, o, err);
        if (ret < 0)
            return ret;
    }
    return done;
}

static int ram_save_iterate(void *opaque, lm_out *o, uint64_t budget, lm_error *err)
{
    return ram_send(opaque, o, budget, true, err);
}

/* With postcopy-ram, RAM is "can postcopy" (QEMU's ram_state_pending_*):
 * it does not hold back a switch to postcopy. */
static void ram_pending_estimate(void *opaque, uint64_t *must, uint64_t *can)
{
    lm_mig *m = opaque;
    uint64_t bytes = dirty_left(m) * LM_PAGE_SIZE;
    if (m->ram.postcopy_capable)
        *can += bytes;
    else
        *must += bytes;
}

static int ram_pending_exact(void *opaque, lm_out *o, uint64_t *must, uint64_t *can,
                             lm_error *err)
{
    lm_mig *m = opaque;
    int ret = ram_sync(m, o, err);
    if (ret < 0)
        return ret;
    ram_pending_estimate(m, must, can);
    return 0;
}

/* The guest is stopped: one last sync, then everything left, unbounded. */
static int ram_save_complete(void *opaque, lm_out *o, lm_error *err)
{
    lm_mig *m = opaque;
    /* Postcopy completes only once nothing is owed, and its complete step
     * pushes no RAM (seed 000): recovery stays possible to the end. */
    if (m->ram.postcopy) {
        uint64_t left = dirty_left(m);
        if (left)
            return lm_error_set(err, -EPROTO, "postcopy completion with %llu pages still owed",
                                (unsigned long long)left);
        /* Every page the multifd channels carried is handed over and
         * fenced before EOS: the destination has placed them all when it
         * reads EOS (usually done already by ram_send: then a no-op). */
        return o->mfd ? lm_mfd_send_sync(o->mfd, o, err) : 0;
    }
    int ret = ram_sync(m, o, err);
    if (ret < 0)
        return ret;
    /* Tracking stays armed until cleanup: disarming write-protection of
     * a GiB costs 10-14 ms here (measured), which would all be downtime.
     * The guest is stopped, so nothing more is recorded meanwhile. */
    ret = ram_send(m, o, UINT64_MAX, false, err);
    if (ret >= 0 && o->mfd)
        ret = lm_mfd_send_sync(o->mfd, o, err); /* all pages before the end of stream */
    return ret < 0 ? ret : 0;
}

static bool ram_has_postcopy(void *opaque)
{
    return true; /* RAM can always be sent after the switch */
}

/* ------------------------------------------------------ source postcopy */

/* The switch (digest §6.2 step 6): the last sync, then every run of pages
 * still owed becomes a POSTCOPY_DISCARD.  "Owed" is what the dirty maps
 * say: never sent, or written after it was sent.  The destination drops
 * those pages so that touching one faults, and keeps everything else. */
int lm_ram_postcopy_send_discard(lm_mig *m, lm_out *o, lm_error *err)
{
    int ret = ram_sync(m, o, err);
    if (ret < 0)
        return ret;
    for (unsigned bi = 0; bi < m->nblocks; bi++) {
        lm_ram_block *b = &m->blocks[bi];
        uint64_t p = lm_bitmap_next_set(b->dirty, b->npages, 0);
        while (p < b->npages) {
            uint64_t q = lm_bitmap_next_clear(b->dirty, b->npages, p);
            uint8_t buf[LM_RAM_ZERO_SIZE];
            lm_ram_zero z = {.block = bi, .first_page = p, .count = q - p};
            int n = lm_fmt_discard_encode(&z, buf, sizeof buf);
            if (n < 0)
                return lm_error_set(err, n, "encoding POSTCOPY_DISCARD failed");
            account(m, o, LM_REC_HDR_SIZE + (uint64_t)n);
            ret = lm_out_record(o, LM_REC_POSTCOPY_DISCARD, buf, (uint32_t)n);
            if (ret < 0) {
                lm_chan_get_error(o->chan, err);
                return lm_error_set(err, ret, "sending POSTCOPY_DISCARD failed");
            }
            p = lm_bitmap_next_set(b->dirty, b->npages, q);
        }
    }
    pthread_mutex_lock(&m->ram_lock);
    m->ram.postcopy = true;
    pthread_mutex_unlock(&m->ram_lock);
    set_remaining(m);
    return 0;
}

/* Sends the pages of a request that are still owed; a page whose bit is
 * clear was sent already, so it is not sent twice (the destination asks
 * for a page once) -- except on the preempt channel for a page of a
 * background run that may still sit in the main channel's socket
 * buffers: waiting for those to drain is what makes the tail of the
 * fault latency (megabytes behind a busy loader: tens of ms here,
 * measured), and the destination skips whichever copy comes second.
 * Caller holds ram_lock: the claim and the send of a requested page are
 * one step, so the background scan can never claim half of it. */
int lm_ram_postcopy_send_requested(lm_mig *m, lm_out *o, const lm_pc_req *r, lm_error *err)
{
    lm_ram_block *b = &m->blocks[r->block];
    uint64_t end = r->first_page + r->count;
    if (o->chan == m->pcs.preempt) {
        for (uint64_t p = r->first_page; p < end; p++) {
            if (lm_bit_test(b->dirty, p) || !maybe_in_flight(m, r->block, p))
                continue;
            int ret = send_claimed(m, o, r->block, p, p + 1, false);
            if (ret < 0) {
                lm_chan_get_error(o->chan, err);
                return lm_error_set(err, ret, "sending requested pages failed");
            }
            m->pcs.resent++;
        }
    }
    uint64_t p = lm_bitmap_next_set(b->dirty, end, r->first_page);
    while (p < end) {
        uint64_t q = lm_bitmap_next_clear(b->dirty, end, p);
        clear_range(b->dirty, p, q);
        m->ram.dirty_pages -= q - p;
        int ret = send_claimed(m, o, r->block, p, q, false);
        if (ret < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, ret, "sending requested pages failed");
        }
        p = lm_bitmap_next_set(b->dirty, end, q);
    }
    return 0;
}

int lm_ram_postcopy_serve_queue(lm_mig *m, lm_out *o, lm_error *err)
{
    bool sent = false;
    for (;;) {
        pthread_mutex_lock(&m->ram_lock);
        if (m->pcs.head == m->pcs.tail) {
            pthread_mutex_unlock(&m->ram_lock);
            break;
        }
        lm_pc_req r = m->pcs.queue[m->pcs.head++ % LM_PC_REQ_QUEUE];
        int ret = lm_ram_postcopy_send_requested(m, o, &r, err);
        pthread_mutex_unlock(&m->ram_lock);
        if (ret < 0)
            return ret;
        sent = true;
    }
    /* Zero records are buffered: a waiting fault must not wait for the
     * buffer to fill. */
    if (sent && lm_chan_flush(o->chan) < 0)
        return lm_chan_get_error(o->chan, err);
    return 0;
}

const lm_handler_ops lm_ram_handler_ops = {
    .name = "ram",
    .save_setup = ram_save_setup,
    .save_iterate = ram_save_iterate,
    .pending_estimate = ram_pending_estimate,
    .pending_exact = ram_pending_exact,
    .save_complete = ram_save_complete,
    .save_cleanup = ram_cleanup_cb,
    .has_postcopy = ram_has_postcopy,
};

/* =========================================================== destination */

static bool chunk_test(const uint64_t *b, uint64_t c)
{
    return (__atomic_load_n(&b[c / 64], __ATOMIC_RELAXED) >> (c % 64)) & 1;
}

static void chunk_set(uint64_t *b, uint64_t c)
{
    __atomic_fetch_or(&b[c / 64], 1ull << (c % 64), __ATOMIC_RELAXED);
}

/* Populates one 2 MiB chunk of a view of block b (its own mapping, or the
 * alias postcopy receives shared memory through) and marks it in ready.
 * MADV_POPULATE_WRITE leaves present pages alone, so racing the incoming
 * thread (or a running guest) is harmless: at worst a chunk is populated
 * twice. */
static void populate_chunk(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t c)
{
    uint64_t p = c * CHUNK_PAGES;
    uint64_t n = b->npages - p < CHUNK_PAGES ? b->npages - p : CHUNK_PAGES;
    lm_mem_populate(view + p * b->page_size, n * b->page_size);
    chunk_set(ready, c);
}

/* One pass of the prefault thread over every block's own mapping, or
 * (aliases) over the postcopy aliases; false when told to stop. */
static bool prefault_pass(lm_mig *m, bool aliases)
{
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        uint8_t *view = aliases ? b->alias : b->base;
        uint64_t *ready = aliases ? b->alias_ready : b->prefaulted;
        uint64_t chunks = (b->npages + CHUNK_PAGES - 1) / CHUNK_PAGES;
        for (uint64_t c = 0; view && c < chunks; c++) {
            if (__atomic_load_n(&m->in.prefault_stop, __ATOMIC_RELAXED))
                return false;
            if (!chunk_test(ready, c))
                populate_chunk(b, view, ready, c);
        }
    }
    return true;
}

static void *prefault_fn(void *arg)
{
    lm_mig *m = arg;
    pthread_setname_np(pthread_self(), "lm-prefault");
    /* The guest's own mappings, then the aliases postcopy on shared memory
     * will receive pages through (postcopy.c). */
    if (prefault_pass(m, false))
        prefault_pass(m, true);
    return NULL;
}

int lm_ram_incoming_prepare(lm_mig *m, lm_error *err)
{
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        /* Kept across attempts: a page received by a failed stream is not
         * zero any more, so a later stream's zero run must clear it. */
        if (!b->received)
            b->received = calloc(lm_bitmap_words(b->npages), 8);
        if (!b->prefaulted)
            b->prefaulted = calloc(lm_ram_chunk_words(b), 8);
        if (!b->received || !b->prefaulted)
            return lm_error_set(err, -ENOMEM, "out of memory for RAM bitmaps");
    }
    lm_ram_prefault_stop(m);
    pthread_mutex_lock(&m->lock);
    bool postcopy = m->caps & (1ull << LM_CAP_POSTCOPY_RAM);
    pthread_mutex_unlock(&m->lock);
    if (postcopy) {
        int ret = lm_postcopy_classify(m, err);
        if (ret < 0)
            return ret;
    }
    __atomic_store_n(&m->in.prefault_stop, false, __ATOMIC_RELAXED);
    if (m->nblocks && pthread_create(&m->in.prefault_thread, NULL, prefault_fn, m) == 0)
        m->in.prefault_running = true;
    return 0; /* without the thread, pages are populated on receipt */
}

void lm_ram_prefault_stop(lm_mig *m)
{
    if (!m->in.prefault_running)
        return;
    __atomic_store_n(&m->in.prefault_stop, true, __ATOMIC_RELAXED);
    pthread_join(m->in.prefault_thread, NULL);
    m->in.prefault_running = false;
}

int lm_ram_load_setup(lm_mig *m, lm_error *err)
{
    m->in.have_blocks = false;
    m->in.nblocks = 0;
    for (unsigned i = 0; i < m->nblocks; i++)
        if (!m->blocks[i].received || !m->blocks[i].prefaulted)
            return lm_error_set(err, -EINVAL, "incoming RAM maps were not prepared");
    return 0;
}

static int load_blocks(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    int ret = 0;
    uint8_t *buf = NULL;
    if (m->in.have_blocks)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS received twice");
    if (h->len > 4 + LM_RAM_MAX_BLOCKS * (1 + LM_RAM_NAME_MAX + 12))
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: %u bytes is too large", h->len);
    buf = malloc(h->len ? h->len : 1);
    if (!buf)
        return lm_error_set(err, -ENOMEM, "out of memory");
    ret = lm_chan_read_full(c, buf, h->len);
    if (ret < 0) {
        lm_chan_get_error(c, err);
        goto out;
    }
    uint32_t n = 0;
    ret = lm_fmt_ram_blocks_decode(buf, h->len, m->in.blocks, LM_RAM_MAX_BLOCKS, &n, err);
    if (ret < 0)
        goto out;
    ret = 0;
    if (n != m->nblocks) {
        ret = lm_error_set(err, -EPROTO, "the source has %u RAM blocks, this destination %u",
                           n, m->nblocks);
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        const lm_fmt_block *sb = &m->in.blocks[i];
        unsigned j;
        for (j = 0; j < m->nblocks; j++)
            if (strcmp(m->blocks[j].name, sb->name) == 0)
                break;
        if (j == m->nblocks) {
            ret = lm_error_set(err, -EPROTO, "RAM block '%s' of the source does not exist here",
                               sb->name);
            goto out;
        }
        if (m->blocks[j].len != sb->length || m->blocks[j].page_size != sb->page_size) {
            ret = lm_error_set(err, -EPROTO,
                               "RAM block '%s': source has %llu bytes in %u-byte pages, "
                               "destination %llu bytes in %u-byte pages",
                               sb->name, (unsigned long long)sb->length, sb->page_size,
                               (unsigned long long)m->blocks[j].len, m->blocks[j].page_size);
            goto out;
        }
        m->in.map[i] = (uint8_t)j;
        m->in.rmap[j] = i;
    }
    m->in.nblocks = n;
    m->in.have_blocks = true;
out:
    free(buf);
    return ret;
}

void lm_ram_prefault_view(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t first,
                          uint64_t count)
{
    uint64_t c0 = first / CHUNK_PAGES, c1 = (first + count - 1) / CHUNK_PAGES;
    for (uint64_t c = c0; c <= c1; c++)
        if (!chunk_test(ready, c))
            populate_chunk(b, view, ready, c);
}

void lm_ram_prefault_pages(lm_ram_block *b, uint64_t first, uint64_t count)
{
    lm_ram_prefault_view(b, b->base, b->prefaulted, first, count);
}

/* The received map is shared by the incoming thread and the multifd
 * channel threads (which write disjoint pages of one round, but pages of
 * one 64-bit word): atomic ORs and loads. */
void lm_ram_mark_received(lm_ram_block *b, uint64_t page)
{
    __atomic_fetch_or(&b->received[page / 64], 1ull << (page % 64), __ATOMIC_RELAXED);
}

bool lm_ram_test_received(const lm_ram_block *b, uint64_t page)
{
    return (__atomic_load_n(&b->received[page / 64], __ATOMIC_RELAXED) >> (page % 64)) & 1;
}

static void mark_received_run(lm_ram_block *b, uint64_t first, uint64_t count)
{
    uint64_t i = first, end = first + count;
    for (; i < end && (i % 64); i++)
        lm_ram_mark_received(b, i);
    for (; i + 64 <= end; i += 64)
        __atomic_store_n(&b->received[i / 64], ~0ull, __ATOMIC_RELAXED);
    for (; i < end; i++)
        lm_ram_mark_received(b, i);
}

/* Reads and checks a RAM_PAGES header against the block table and the
 * record length; the page data is left in the channel. */
static int read_pages_hdr(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, const char *what,
                          lm_ram_run *r, lm_ram_block **bp, lm_error *err)
{
    uint8_t hb[LM_RAM_PAGES_HDR_SIZE];
    if (h->len < LM_RAM_PAGES_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "RAM_PAGES: record of %u bytes too short", h->len);
    if (lm_chan_read_exact(c, hb, sizeof hb) < 0)
        return lm_chan_get_error(c, err);
    if (lm_fmt_ram_pages_hdr_decode(hb, sizeof hb, r, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    int ret = lm_fmt_ram_run_check(r->block, r->first_page, r->count, m->in.blocks,
                                   m->in.nblocks, err);
    if (ret < 0)
        return lm_error_prefix(err, "%s", what);
    lm_ram_block *b = &m->blocks[m->in.map[r->block]];
    if ((uint64_t)h->len != LM_RAM_PAGES_HDR_SIZE + (uint64_t)r->count * b->page_size)
        return lm_error_set(err, -EPROTO,
                            "RAM_PAGES: record length %u does not match %u pages of %u bytes",
                            h->len, r->count, b->page_size);
    *bp = b;
    return 0;
}

static int load_pages(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_ram_run r;
    lm_ram_block *b;
    int ret = read_pages_hdr(m, c, h, "RAM_PAGES", &r, &b, err);
    if (ret < 0)
        return ret;
    uint64_t bytes = (uint64_t)r.count * b->page_size;
    lm_ram_prefault_pages(b, r.first_page, r.count);
    if (lm_chan_read_full(c, b->base + r.first_page * b->page_size, bytes) < 0)
        return lm_chan_get_error(c, err);
    mark_received_run(b, r.first_page, r.count);
    return 0;
}

/* Reads a RAM_ZERO or POSTCOPY_DISCARD payload (the same 24-byte run) and
 * checks the run against the block table. */
static int read_zero_run(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_ram_zero *z,
                         lm_ram_block **bp, lm_error *err)
{
    const char *what = lm_rec_type_name(h->type);
    uint8_t p[LM_RAM_ZERO_SIZE];
    if (h->len != LM_RAM_ZERO_SIZE)
        return lm_error_set(err, -EPROTO, "%s: length %u, expected %d", what, h->len,
                            LM_RAM_ZERO_SIZE);
    if (lm_chan_read_full(c, p, sizeof p) < 0)
        return lm_chan_get_error(c, err);
    int rc = h->type == LM_REC_POSTCOPY_DISCARD ? lm_fmt_discard_decode(p, sizeof p, z, err)
                                                : lm_fmt_ram_zero_decode(p, sizeof p, z, err);
    if (rc <= 0)
        return err && err->code ? err->code : -EPROTO;
    rc = lm_fmt_ram_run_check(z->block, z->first_page, z->count, m->in.blocks, m->in.nblocks,
                              err);
    if (rc < 0)
        return lm_error_prefix(err, "%s", what);
    *bp = &m->blocks[m->in.map[z->block]];
    return 0;
}

static int load_zero(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_ram_zero z;
    lm_ram_block *b;
    int ret = read_zero_run(m, c, h, &z, &b, err);
    if (ret < 0)
        return ret;
    /* Only pages an earlier round wrote need clearing; whole words of
     * never-received pages are skipped (a never-populated GiB is one
     * record). */
    uint64_t end = z.first_page + z.count;
    for (uint64_t i = z.first_page; i < end;) {
        uint64_t w = __atomic_load_n(&b->received[i / 64], __ATOMIC_RELAXED);
        if (!(i % 64) && end - i >= 64 && w == 0) {
            i += 64;
            continue;
        }
        uint64_t j = i;
        while (j < end && lm_ram_test_received(b, j))
            j++;
        if (j > i) {
            memset(b->base + i * b->page_size, 0, (j - i) * b->page_size);
            i = j;
        } else {
            i++;
        }
    }
    return 0;
}

int lm_ram_load_record(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    if (h->type == LM_REC_RAM_BLOCKS)
        return load_blocks(m, c, h, err);
    if (!m->in.have_blocks)
        return lm_error_set(err, -EPROTO, "%s before the RAM block table",
                            lm_rec_type_name(h->type));
    switch (h->type) {
    case LM_REC_RAM_PAGES:
        return load_pages(m, c, h, err);
    case LM_REC_RAM_ZERO:
        return load_zero(m, c, h, err);
    case LM_REC_RAM_PASS: {
        uint8_t p[8];
        uint64_t pass;
        if (lm_chan_read_full(c, p, sizeof p) < 0)
            return lm_chan_get_error(c, err);
        return lm_fmt_u64_decode(p, sizeof p, &pass, err) > 0 ? 0 : -EPROTO;
    }
    default:
        return lm_error_set(err, -EPROTO, "unexpected record %s in RAM",
                            lm_rec_type_name(h->type));
    }
}

/* ------------------------------------------------- destination postcopy */

/* POSTCOPY_DISCARD: drop the local copy of owed pages.  Only between the
 * switch and POSTCOPY_RUN (incoming.c enforces the order). */
int lm_ram_postcopy_load_discard(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_ram_zero z;
    lm_ram_block *b;
    if (!m->in.have_blocks)
        return lm_error_set(err, -EPROTO, "POSTCOPY_DISCARD before the RAM block table");
    int ret = read_zero_run(m, c, h, &z, &b, err);
    if (ret < 0)
        return ret;
    return lm_postcopy_discard(m, b, z.first_page, z.count, err);
}

/* RAM_PAGES / RAM_ZERO after POSTCOPY_RUN: the workload runs, so a page
 * must appear whole or not at all.  Private memory: data goes to tmp
 * first, then UFFDIO_COPY places it (and wakes whoever waits for it).
 * Shared memory with minor faults: data goes straight to the page cache,
 * UFFDIO_CONTINUE maps it (postcopy.c). */
int lm_ram_postcopy_load_record(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, uint8_t *tmp,
                                lm_error *err)
{
    if (!m->in.have_blocks)
        return lm_error_set(err, -EPROTO, "%s before the RAM block table",
                            lm_rec_type_name(h->type));
    if (h->type == LM_REC_RAM_ZERO) {
        lm_ram_zero z;
        lm_ram_block *b;
        int ret = read_zero_run(m, c, h, &z, &b, err);
        if (ret < 0)
            return lm_error_prefix(err, "postcopy");
        return lm_postcopy_place(m, b, z.first_page, z.count, NULL, err);
    }
    if (h->type != LM_REC_RAM_PAGES)
        return lm_error_set(err, -EPROTO, "unexpected %s record in postcopy RAM",
                            lm_rec_type_name(h->type));
    lm_ram_run r;
    lm_ram_block *b;
    int ret = read_pages_hdr(m, c, h, "postcopy RAM_PAGES", &r, &b, err);
    if (ret < 0)
        return ret;
    if (b->page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO, "postcopy RAM_PAGES: block page size %u, only %u "
                                          "supported", b->page_size, LM_PAGE_SIZE);
    if (b->pc_kind == LM_PC_MINOR)
        return lm_postcopy_recv_place(m, c, b, r.first_page, r.count, tmp, err);
    uint64_t bytes = (uint64_t)r.count * b->page_size;
    if (lm_chan_read_full(c, tmp, bytes) < 0)
        return lm_chan_get_error(c, err);
    return lm_postcopy_place(m, b, r.first_page, r.count, tmp, err);
}
