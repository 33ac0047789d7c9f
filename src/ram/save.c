/*
 * save.c - RAM as a state handler on the source: the dirty maps, the page
 * search and sending (ram.h has the threads and the lock).
 *
 * Every block has a dirty bitmap that starts all ones.  Pages that were
 * never populated when migration began are zero and are sent as RAM_ZERO
 * runs without reading them (pass 1 only: the populated map is dropped at
 * the first sync, because a page written after setup must be read).  Other
 * pages are checked for zero (fast OR scan, early exit on the first
 * non-zero cache line) and sent as runs of up to 256 pages with one writev
 * straight from guest memory, or handed to the multifd channels.
 */
#include "ram/ram.h"
#include "file/mapped.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_PAGES 256        /* pages per RAM_PAGES record (1 MiB) */
#define SLICE_NS 50000000ull /* QEMU's MAX_WAIT: re-check pending every 50 ms */

void lm_ram_init(lm_ram *r, lm_mem *mem, lm_ram_counters *ctr)
{
    memset(r, 0, sizeof *r);
    r->mem = mem;
    r->ctr = ctr;
    pthread_mutex_init(&r->lock, NULL);
}

void lm_ram_destroy(lm_ram *r)
{
    lm_ram_save_cleanup(r);
    pthread_mutex_destroy(&r->lock);
}

void lm_ram_save_cleanup(lm_ram *r)
{
    lm_ram_bgsnap_stop(r); /* before the maps its fault thread reads */
    lm_ram_xbz_cleanup(r);
    if (r->tracker) {
        lm_dirty_stop(r->tracker);
        lm_dirty_free(r->tracker);
        r->tracker = NULL;
    }
    r->tracking = false;
    pthread_mutex_lock(&r->lock);
    for (unsigned i = 0; i < LM_RAM_MAX_BLOCKS; i++) {
        free(r->dirty[i]);
        free(r->populated[i]);
        r->dirty[i] = r->populated[i] = NULL;
    }
    r->dirty_pages = 0;
    r->bg_owed = 0;
    pthread_mutex_unlock(&r->lock);
}

static void ram_cleanup_cb(void *opaque)
{
    lm_ram_save_cleanup(opaque);
}

uint64_t lm_ram_dirty_left(lm_ram *r)
{
    pthread_mutex_lock(&r->lock);
    uint64_t n = r->dirty_pages + r->bg_owed;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static void set_remaining(lm_ram *r)
{
    LM_ATOMIC_SET(&r->ctr->remaining, lm_ram_dirty_left(r) * LM_PAGE_SIZE);
}

static void emit_pass(lm_ram *r, uint64_t pass)
{
    if (r->hooks.pass)
        r->hooks.pass(r->hooks.pass_opaque, pass);
}

static int ram_save_setup(void *opaque, lm_out *o, lm_error *err)
{
    lm_ram *r = opaque;
    lm_mem *mem = r->mem;
    int ret = 0;
    lm_fmt_block table[LM_RAM_MAX_BLOCKS];
    uint8_t *buf = NULL;

    lm_ram_save_cleanup(r);
    r->cur_block = 0;
    r->cur_page = 0;
    r->period_dirty = 0;
    r->last_sync_cost_ns = 0;
    r->postcopy = false;
    uint64_t *pops[LM_RAM_MAX_BLOCKS];
    uint64_t total = 0;
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        uint64_t words = lm_bitmap_words(b->npages);
        r->dirty[i] = malloc(words * 8);
        r->populated[i] = calloc(words, 8);
        if (!r->dirty[i] || !r->populated[i]) {
            ret = lm_error_set(err, -ENOMEM, "out of memory for RAM bitmaps");
            goto out;
        }
        memset(r->dirty[i], 0xff, words * 8);
        if (b->npages % 64)
            r->dirty[i][words - 1] = (1ull << (b->npages % 64)) - 1;
        pops[i] = r->populated[i];
        total += b->npages;
        snprintf(table[i].name, sizeof table[i].name, "%s", b->name);
        table[i].page_size = b->page_size;
        table[i].length = b->len;
    }
    pthread_mutex_lock(&r->lock);
    r->dirty_pages = total;
    pthread_mutex_unlock(&r->lock);
    if ((ret = lm_ram_xbz_setup(r, err)) < 0)
        goto out;
    /* A running guest needs write tracking; a stopped one cannot dirty
     * anything, so one pass is exact and no tracker is needed.  A
     * background snapshot tracks nothing: it write-protects RAM when the
     * guest is paused for its device state (lm_ram_bgsnap_start, which
     * also takes the populated map then). */
    if (r->bgsnap) {
        /* populated[] stay allocated for lm_ram_bgsnap_start */
    } else if (r->guest_running) {
        ret = lm_dirty_new(LM_DIRTY_UFFD_WP, &r->tracker, err);
        if (ret < 0)
            goto out;
        for (unsigned i = 0; i < mem->nblocks; i++) {
            lm_ram_block *b = &mem->blocks[i];
            ret = lm_dirty_add_range(r->tracker, b->base, b->len, b->page_size, err);
            if (ret < 0)
                goto out;
        }
        /* Protects every page and records, at the moment it is protected,
         * whether it was populated: exact and race-free, where a scan
         * after protection would see the kernel's markers on empty pages
         * as "swapped" and a scan before it would miss pages populated in
         * between (dirty.h). */
        ret = lm_dirty_start_populated(r->tracker, pops, err);
        if (ret < 0) {
            lm_error_prefix(err, "dirty tracking (userfaultfd write-protect) unavailable; "
                                 "stop the guest for a non-live migration");
            goto out;
        }
        r->tracking = true;
    } else {
        for (unsigned i = 0; i < mem->nblocks; i++) {
            lm_ram_block *b = &mem->blocks[i];
            int rc = lm_mem_populated_scan(b->base, b->len, b->page_size, r->populated[i], err);
            if (rc < 0) {
                ret = rc;
                goto out;
            }
            if (rc == 1) { /* no PAGEMAP_SCAN: treat everything as populated */
                free(r->populated[i]);
                r->populated[i] = NULL;
            }
        }
    }
    size_t cap = 4 + mem->nblocks * (1 + LM_RAM_NAME_MAX + 4 + 8);
    buf = malloc(cap);
    if (!buf) {
        ret = lm_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    int n = lm_fmt_ram_blocks_encode(table, mem->nblocks, buf, cap);
    if (n < 0) {
        ret = lm_error_set(err, n, "encoding the RAM block table failed");
        goto out;
    }
    ret = lm_rec_write(o->chan, LM_REC_RAM_BLOCKS, buf, (uint32_t)n);
    if (ret < 0)
        goto out;
    /* mapped-ram: the regions are laid out once, right after the table;
     * every page has its place from now on. */
    if (o->mapped && (ret = lm_mapped_save_setup(o->mapped, o->chan, err)) < 0)
        goto out;
    /* The setup bitmap counts as the first sync, as in QEMU. */
    uint64_t now = lm_now_ns();
    r->period_start_ns = now;
    r->last_sync_ns = now;
    LM_ATOMIC_SET(&r->ctr->dirty_sync_count, 1);
    set_remaining(r);
    emit_pass(r, 1);
out:
    free(buf);
    return ret;
}

/* Collects the pages written since the last sync (a new pass).  With
 * multifd, the pages sent so far are first fenced off from those of the
 * new pass: a page re-sent on another channel can never be overtaken by
 * its older copy (seed 004, multifd.h). */
int lm_ram_sync(lm_ram *r, lm_out *o, lm_error *err)
{
    lm_mem *mem = r->mem;
    if (o->mfd) {
        int ret = lm_mfd_send_sync(o->mfd, err);
        if (ret < 0)
            return ret;
    }
    uint64_t t0 = lm_now_ns();
    uint64_t newly = 0;
    for (unsigned i = 0; i < mem->nblocks; i++) {
        /* The populated hint is only valid before the first sync: from now
         * on a dirty page may hold data written after setup. */
        free(r->populated[i]);
        r->populated[i] = NULL;
    }
    if (r->tracker) {
        /* The tracker ORs into the maps: the claimers (postcopy) are idle
         * while the guest is stopped at the switch, and before it only
         * this thread claims. */
        int ret = lm_dirty_sync(r->tracker, r->dirty, &newly, err);
        if (ret < 0)
            return lm_error_prefix(err, "dirty sync");
    }
    uint64_t now = lm_now_ns();
    pthread_mutex_lock(&r->lock);
    r->dirty_pages += newly;
    pthread_mutex_unlock(&r->lock);
    r->period_dirty += newly;
    r->last_sync_cost_ns = now - t0;
    r->last_sync_ns = now;
    /* dirty-pages-rate over periods of at least one second (QEMU). */
    if (now - r->period_start_ns >= 1000000000ull) {
        uint64_t rate = r->period_dirty * 1000000000ull / (now - r->period_start_ns);
        LM_ATOMIC_SET(&r->ctr->dirty_pages_rate, rate);
        if (r->hooks.period)
            r->hooks.period(r->hooks.period_opaque, r->period_dirty * LM_PAGE_SIZE);
        lm_ram_xbz_period(r);
        r->period_start_ns = now;
        r->period_dirty = 0;
    }
    uint64_t pass = LM_ATOMIC_ADD(&r->ctr->dirty_sync_count, 1) + 1;
    set_remaining(r);
    emit_pass(r, pass);
    return 0;
}

static int send_zero_run(lm_ram *r, lm_out *o, uint32_t block, uint64_t first, uint64_t count)
{
    uint8_t p[LM_RAM_ZERO_SIZE];
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    if (o->mapped) { /* a hole: the bits say zero */
        lm_mapped_save_zero(o->mapped, block, first, count);
        LM_ATOMIC_ADD(&r->ctr->duplicate, count);
        return 0;
    }
    int n = lm_fmt_ram_zero_encode(&z, p, sizeof p);
    if (n < 0)
        return n;
    LM_ATOMIC_ADD(&r->ctr->duplicate, count);
    lm_out_account(o, LM_REC_HDR_SIZE + LM_RAM_ZERO_SIZE);
    return lm_rec_write(o->chan, LM_REC_RAM_ZERO, p, (uint32_t)n);
}

static int send_page_data(lm_ram *r, lm_out *o, uint32_t block, uint64_t first, uint64_t count,
                          const uint8_t *data)
{
    lm_ram_block *b = &r->mem->blocks[block];
    uint8_t hdr[LM_REC_HDR_SIZE + LM_RAM_PAGES_HDR_SIZE];
    uint64_t bytes = count * b->page_size;
    lm_ram_run run = {.block = block, .count = (uint32_t)count, .first_page = first};
    if (o->mapped) { /* in place, at the pages' own offsets */
        LM_ATOMIC_ADD(&r->ctr->normal, count);
        lm_out_account(o, bytes);
        lm_error e = {0};
        int ret = lm_mapped_save_run(o->mapped, block, first, count, &e);
        if (ret < 0) /* reported where every send error is: the main channel */
            lm_chan_set_error(o->chan, ret, e.msg);
        return ret;
    }
    lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, (uint32_t)(LM_RAM_PAGES_HDR_SIZE + bytes), hdr,
                          LM_REC_HDR_SIZE);
    lm_fmt_ram_pages_hdr_encode(&run, hdr + LM_REC_HDR_SIZE, LM_RAM_PAGES_HDR_SIZE);
    LM_ATOMIC_ADD(&r->ctr->normal, count);
    lm_out_account(o, sizeof hdr + bytes);
    /* The record's header and the pages in one writev, straight from guest
     * memory: the page data is the record's payload (record.h framing). */
    return lm_chan_write_ref(o->chan, hdr, sizeof hdr, data, bytes);
}

static int send_page_run(lm_ram *r, lm_out *o, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_block *b = &r->mem->blocks[block];
    return send_page_data(r, o, block, first, count, b->base + first * b->page_size);
}

/* Copies of single pages (a background snapshot's): the zero ones as
 * RAM_ZERO, the others as one-page RAM_PAGES records, up to 32 records per
 * writev (a syscall per 4 KiB page would cost more than the page). */
int lm_ram_send_copies(lm_ram *r, lm_out *o, unsigned n, const lm_ram_copy *cp)
{
    enum { PER_WRITE = LM_RAM_COPIES_MAX / 2 };
    uint8_t hdrs[PER_WRITE][LM_REC_HDR_SIZE + LM_RAM_PAGES_HDR_SIZE];
    struct iovec iov[2 * PER_WRITE];
    unsigned k = 0;
    int ret = 0;
    for (unsigned i = 0; i < n && ret == 0; i++) {
        const lm_ram_copy *c = &cp[i];
        if (!c->data || lm_page_is_zero(c->data, LM_PAGE_SIZE)) {
            ret = send_zero_run(r, o, c->block, c->page, 1);
            continue;
        }
        uint8_t *h = hdrs[k];
        lm_ram_run run = {.block = c->block, .count = 1, .first_page = c->page};
        lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, LM_RAM_PAGES_HDR_SIZE + LM_PAGE_SIZE, h,
                              LM_REC_HDR_SIZE);
        lm_fmt_ram_pages_hdr_encode(&run, h + LM_REC_HDR_SIZE, LM_RAM_PAGES_HDR_SIZE);
        iov[2 * k] = (struct iovec){h, sizeof hdrs[0]};
        iov[2 * k + 1] = (struct iovec){(void *)c->data, LM_PAGE_SIZE};
        LM_ATOMIC_ADD(&r->ctr->normal, 1);
        lm_out_account(o, sizeof hdrs[0] + LM_PAGE_SIZE);
        if (++k == PER_WRITE) {
            ret = lm_chan_writev_ref(o->chan, NULL, 0, iov, 2 * (int)k);
            k = 0;
        }
    }
    if (ret == 0 && k)
        ret = lm_chan_writev_ref(o->chan, NULL, 0, iov, 2 * (int)k);
    return ret;
}

/* A background run (bg) goes to the multifd channels when there are
 * some, in precopy and in postcopy alike (the destination's channels place
 * postcopy packets atomically); requested pages (!bg) go on the caller's
 * channel, the preempt or the main one, so that they never queue behind
 * the background push.  The channels detect zero pages in parallel when
 * zero-page-detection=multifd (digest §8.3); otherwise this thread checks
 * them here (legacy, or multifd without channels) or not at all (none). */
int lm_ram_send_pages(lm_ram *r, lm_out *o, unsigned bi, uint64_t p, uint64_t end, bool bg)
{
    lm_ram_block *b = &r->mem->blocks[bi];
    struct lm_mfd_send *mfd = bg ? o->mfd : NULL;
    bool detect = o->zpd == LM_ZPD_LEGACY || (!mfd && o->zpd == LM_ZPD_MULTIFD);
    int ret = 0;
    if (!detect) {
        if (!mfd)
            return send_page_run(r, o, bi, p, end - p);
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
            ret = send_zero_run(r, o, bi, i, j - i);
        } else if (mfd) {
            for (uint64_t k = i; k < j && ret >= 0; k++)
                ret = lm_mfd_queue_page(mfd, bi, k, NULL);
        } else {
            ret = send_page_run(r, o, bi, i, j - i);
        }
        if (ret < 0)
            return ret;
        i = j;
    }
    return 0;
}

bool lm_ram_dirty_run_locked(lm_ram *r, unsigned bi, uint64_t from, uint64_t end, bool claim,
                             uint64_t *p, uint64_t *q)
{
    uint64_t *d = r->dirty[bi];
    if (!d)
        return false;
    *p = lm_bitmap_next_set(d, end, from);
    if (*p >= end)
        return false;
    *q = lm_bitmap_next_clear(d, end, *p);
    if (claim) {
        lm_bitmap_clear_range(d, *p, *q);
        r->dirty_pages -= *q - *p;
    }
    return true;
}

void lm_ram_set_postcopy(lm_ram *r)
{
    pthread_mutex_lock(&r->lock);
    r->postcopy = true;
    pthread_mutex_unlock(&r->lock);
    set_remaining(r);
}

/* Claims and sends the next run of dirty pages of block bi at or after
 * from: either a never-populated stretch (one zero record) or up to
 * max_pages (<= RUN_PAGES) contiguous dirty pages.  The claim (search and
 * clear) is under r->lock; the send is not.  Returns the page after the
 * run, or npages when no dirty page is left in the block, or < 0. */
static int64_t send_run(lm_ram *r, lm_out *o, unsigned bi, uint64_t from, uint64_t max_pages)
{
    lm_ram_block *b = &r->mem->blocks[bi];
    uint64_t *dirty = r->dirty[bi], *pop = r->populated[bi];
    pthread_mutex_lock(&r->lock);
    uint64_t p = lm_bitmap_next_set(dirty, b->npages, from);
    if (p >= b->npages) {
        pthread_mutex_unlock(&r->lock);
        return (int64_t)b->npages;
    }
    if (pop && !lm_bit_test(pop, p)) {
        uint64_t q = lm_bitmap_next_set(pop, b->npages, p);
        uint64_t d = lm_bitmap_next_clear(dirty, b->npages, p);
        if (d < q)
            q = d;
        lm_bitmap_clear_range(dirty, p, q);
        r->dirty_pages -= q - p;
        lm_ram_bgsnap_claimed_locked(r, bi, p, q);
        pthread_mutex_unlock(&r->lock);
        int ret = send_zero_run(r, o, bi, p, q - p);
        if (ret == 0)
            ret = lm_ram_bgsnap_sent(r, bi, p, q);
        return ret < 0 ? ret : (int64_t)q;
    }
    uint64_t end = p;
    while (end < b->npages && end - p < max_pages && lm_bit_test(dirty, end) &&
           (!pop || lm_bit_test(pop, end)))
        end++;
    lm_bitmap_clear_range(dirty, p, end);
    r->dirty_pages -= end - p;
    if (o->postcopy && r->hooks.claimed)
        r->hooks.claimed(r->hooks.pc_opaque, bi, p, end - p, o);
    lm_ram_bgsnap_claimed_locked(r, bi, p, end);
    pthread_mutex_unlock(&r->lock);
    int ret = lm_ram_xbz_active(r, o) ? lm_ram_xbz_send(r, o, bi, p, end)
                                      : lm_ram_send_pages(r, o, bi, p, end, true);
    if (ret == 0)
        ret = lm_ram_bgsnap_sent(r, bi, p, end);
    return ret < 0 ? ret : (int64_t)end;
}

/* Sends dirty pages until the budget is used, 50 ms passed, or nothing is
 * dirty.  Returns 1 when no dirty page is left, 0 when more remain. */
static int ram_send(lm_ram *r, lm_out *o, uint64_t budget, bool timed, lm_error *err)
{
    lm_mem *mem = r->mem;
    uint64_t start_bytes = lm_out_bytes(o);
    uint64_t t0 = lm_now_ns();
    unsigned runs = 0;
    unsigned scanned_blocks = 0;
    while (lm_ram_dirty_left(r)) {
        /* Postcopy without a preempt channel: requested pages go before
         * the next background run. */
        if (o->postcopy && r->hooks.urgent && r->hooks.urgent(r->hooks.pc_opaque, o, err) < 0)
            return err && err->code ? err->code : -EIO;
        /* Background snapshot: the pages the guest is waiting to write
         * were copied; they go before the next run (their slots free). */
        if (r->bg) {
            int ret = lm_ram_bgsnap_drain(r, o, err);
            if (ret < 0)
                return ret;
            if (!lm_ram_dirty_left(r))
                break;
        }
        unsigned bi = r->cur_block;
        lm_ram_block *b = &mem->blocks[bi];
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
        int64_t next = send_run(r, o, bi, r->cur_page, max_pages);
        if (next < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, (int)next, "sending RAM failed");
        }
        if ((uint64_t)next >= b->npages) {
            /* End of block: wrap to the next one (a full round ends at the
             * block we started from). */
            r->cur_block = (bi + 1) % mem->nblocks;
            r->cur_page = 0;
            if (r->cur_block == 0) /* a round is complete (QEMU's xbzrle_started) */
                r->xbz_started = true;
            if (++scanned_blocks > mem->nblocks + 1)
                break; /* counter and maps disagree: trust the maps */
            continue;
        }
        r->cur_page = (uint64_t)next;
        if (budget != UINT64_MAX && lm_out_bytes(o) - start_bytes >= budget)
            break;
        if (timed && (++runs % 16) == 0 && lm_now_ns() - t0 > SLICE_NS)
            break;
    }
    if (lm_ram_bgsnap_flush(r) < 0)
        return lm_error_set(err, -EIO, "background-snapshot: un-protecting sent pages failed");
    if (lm_chan_get_error(o->chan, err))
        return err ? err->code : -EIO;
    set_remaining(r);
    bool done = lm_ram_dirty_left(r) == 0;
    /* Postcopy: the last background pages leave the partial batch now,
     * not at completion; the fence (a no-op when nothing was queued since
     * the last) has them placed before the destination reads what follows
     * on the main channel. */
    if (done && o->postcopy && o->mfd) {
        int ret = lm_mfd_send_sync(o->mfd, err);
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
    lm_ram *r = opaque;
    uint64_t bytes = lm_ram_dirty_left(r) * LM_PAGE_SIZE;
    if (r->postcopy_capable)
        *can += bytes;
    else
        *must += bytes;
}

static int ram_pending_exact(void *opaque, lm_out *o, uint64_t *must, uint64_t *can, lm_error *err)
{
    lm_ram *r = opaque;
    int ret = lm_ram_sync(r, o, err);
    if (ret < 0)
        return ret;
    ram_pending_estimate(r, must, can);
    return 0;
}

/* The guest is stopped: one last sync, then everything left, unbounded. */
static int ram_save_complete(void *opaque, lm_out *o, lm_error *err)
{
    lm_ram *r = opaque;
    /* Postcopy completes only once nothing is owed, and its complete step
     * pushes no RAM (seed 000): recovery stays possible to the end. */
    if (r->postcopy) {
        uint64_t left = lm_ram_dirty_left(r);
        if (left)
            return lm_error_set(err, -EPROTO, "postcopy completion with %llu pages still owed",
                                (unsigned long long)left);
        /* Every page the multifd channels carried is handed over and
         * fenced before EOS: the destination has placed them all when it
         * reads EOS (usually done already by ram_send: then a no-op). */
        return o->mfd ? lm_mfd_send_sync(o->mfd, err) : 0;
    }
    int ret = lm_ram_sync(r, o, err);
    if (ret < 0)
        return ret;
    /* Tracking stays armed until cleanup: disarming write-protection of
     * a GiB costs 10-14 ms here (measured), which would all be downtime.
     * The guest is stopped, so nothing more is recorded meanwhile. */
    ret = ram_send(r, o, UINT64_MAX, false, err);
    if (ret >= 0 && o->mfd)
        ret = lm_mfd_send_sync(o->mfd, err); /* all pages before the end of stream */
    if (ret >= 0 && o->mapped)               /* every page is in place: the bitmaps say which */
        ret = lm_mapped_save_complete(o->mapped, err);
    return ret < 0 ? ret : 0;
}

static bool ram_has_postcopy(void *opaque)
{
    return true; /* RAM can always be sent after the switch */
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
