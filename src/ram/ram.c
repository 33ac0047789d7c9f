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
#define CHUNK_PAGES 512        /* 2 MiB prefault chunks */

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
    LM_ATOMIC_SET(&m->stats.remaining, m->ram.dirty_pages * LM_PAGE_SIZE);
}

static int ram_save_setup(void *opaque, lm_out *o, lm_error *err)
{
    lm_mig *m = opaque;
    int ret = 0;
    lm_fmt_block table[LM_RAM_MAX_BLOCKS];
    uint8_t *buf = NULL;

    memset(&m->ram, 0, sizeof m->ram);
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
    m->ram.dirty_pages += newly;
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
    if (o->last_stage)
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

/* Sends the dirty pages from [p, ...) of block bi that form one run:
 * either a never-populated stretch (one zero record) or up to RUN_PAGES
 * contiguous dirty pages split into zero / non-zero sub-runs.  Returns
 * the page after the run (> p), or < 0. */
static int64_t send_run(lm_mig *m, lm_out *o, unsigned bi, uint64_t p, uint64_t max_pages)
{
    lm_ram_block *b = &m->blocks[bi];
    int ret;
    if (b->populated && !lm_bit_test(b->populated, p)) {
        uint64_t q = lm_bitmap_next_set(b->populated, b->npages, p);
        uint64_t d = lm_bitmap_next_clear(b->dirty, b->npages, p);
        if (d < q)
            q = d;
        clear_range(b->dirty, p, q);
        m->ram.dirty_pages -= q - p;
        ret = send_zero_run(m, o, bi, p, q - p);
        return ret < 0 ? ret : (int64_t)q;
    }
    uint64_t end = p;
    while (end < b->npages && end - p < max_pages && lm_bit_test(b->dirty, end) &&
           (!b->populated || lm_bit_test(b->populated, end)))
        end++;
    clear_range(b->dirty, p, end);
    m->ram.dirty_pages -= end - p;
    /* With multifd and zero-page-detection=multifd (or none) every page
     * goes to the channels, which detect zero pages in parallel (digest
     * §8.3); otherwise this thread checks them here. */
    bool detect = o->zpd == LM_ZPD_LEGACY || (!o->mfd && o->zpd == LM_ZPD_MULTIFD);
    if (!detect) {
        ret = 0;
        if (!o->mfd)
            ret = send_page_run(m, o, bi, p, end - p);
        for (uint64_t i = p; o->mfd && i < end && ret >= 0; i++)
            ret = lm_mfd_queue_page(o->mfd, bi, i, NULL);
        return ret < 0 ? ret : (int64_t)end;
    }
    /* Split into zero / non-zero sub-runs. */
    uint64_t i = p;
    while (i < end) {
        bool zero = lm_page_is_zero(b->base + i * b->page_size, b->page_size);
        uint64_t j = i + 1;
        while (j < end && lm_page_is_zero(b->base + j * b->page_size, b->page_size) == zero)
            j++;
        if (zero) {
            ret = send_zero_run(m, o, bi, i, j - i);
        } else if (o->mfd) {
            for (uint64_t k = i; k < j && ret >= 0; k++)
                ret = lm_mfd_queue_page(o->mfd, bi, k, NULL);
        } else {
            ret = send_page_run(m, o, bi, i, j - i);
        }
        if (ret < 0)
            return ret;
        i = j;
    }
    return (int64_t)end;
}

/* Sends dirty pages until the budget is used, 50 ms passed, or nothing is
 * dirty.  Returns 1 when no dirty page is left, 0 when more remain. */
static int ram_send(lm_mig *m, lm_out *o, uint64_t budget, bool timed, lm_error *err)
{
    uint64_t start_bytes = lm_out_bytes(o);
    uint64_t t0 = lm_now_ns();
    unsigned runs = 0;
    unsigned scanned_blocks = 0;
    while (m->ram.dirty_pages) {
        unsigned bi = m->ram.cur_block;
        lm_ram_block *b = &m->blocks[bi];
        uint64_t p = lm_bitmap_next_set(b->dirty, b->npages, m->ram.cur_page);
        if (p >= b->npages) {
            /* End of block: wrap to the next one (a full round ends at the
             * block we started from). */
            m->ram.cur_block = (bi + 1) % m->nblocks;
            m->ram.cur_page = 0;
            if (++scanned_blocks > m->nblocks + 1)
                break; /* counter and maps disagree: trust the maps */
            continue;
        }
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
        int64_t next = send_run(m, o, bi, p, max_pages);
        if (next < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, (int)next, "sending RAM failed");
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
    return m->ram.dirty_pages == 0;
}

static int ram_save_iterate(void *opaque, lm_out *o, uint64_t budget, lm_error *err)
{
    return ram_send(opaque, o, budget, true, err);
}

static void ram_pending_estimate(void *opaque, uint64_t *must, uint64_t *can)
{
    lm_mig *m = opaque;
    *must += m->ram.dirty_pages * LM_PAGE_SIZE;
}

static int ram_pending_exact(void *opaque, lm_out *o, uint64_t *must, uint64_t *can,
                             lm_error *err)
{
    lm_mig *m = opaque;
    int ret = ram_sync(m, o, err);
    if (ret < 0)
        return ret;
    *must += m->ram.dirty_pages * LM_PAGE_SIZE;
    return 0;
}

/* The guest is stopped: one last sync, then everything left, unbounded. */
static int ram_save_complete(void *opaque, lm_out *o, lm_error *err)
{
    lm_mig *m = opaque;
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
    return false; /* postcopy-ram is not built yet */
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

/* Populates one 2 MiB chunk.  MADV_POPULATE_WRITE leaves present pages
 * alone, so racing the incoming thread (or a running guest) is harmless:
 * at worst a chunk is populated twice. */
static void populate_chunk(lm_ram_block *b, uint64_t c)
{
    uint64_t p = c * CHUNK_PAGES;
    uint64_t n = b->npages - p < CHUNK_PAGES ? b->npages - p : CHUNK_PAGES;
    lm_mem_populate(b->base + p * b->page_size, n * b->page_size);
    chunk_set(b->prefaulted, c);
}

static void *prefault_fn(void *arg)
{
    lm_mig *m = arg;
    pthread_setname_np(pthread_self(), "lm-prefault");
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        uint64_t chunks = (b->npages + CHUNK_PAGES - 1) / CHUNK_PAGES;
        for (uint64_t c = 0; c < chunks; c++) {
            if (__atomic_load_n(&m->in.prefault_stop, __ATOMIC_RELAXED))
                return NULL;
            if (!chunk_test(b->prefaulted, c))
                populate_chunk(b, c);
        }
    }
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
            b->prefaulted = calloc(lm_bitmap_words(b->npages / CHUNK_PAGES + 1), 8);
        if (!b->received || !b->prefaulted)
            return lm_error_set(err, -ENOMEM, "out of memory for RAM bitmaps");
    }
    lm_ram_prefault_stop(m);
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
    }
    m->in.nblocks = n;
    m->in.have_blocks = true;
out:
    free(buf);
    return ret;
}

void lm_ram_prefault_pages(lm_ram_block *b, uint64_t first, uint64_t count)
{
    uint64_t c0 = first / CHUNK_PAGES, c1 = (first + count - 1) / CHUNK_PAGES;
    for (uint64_t c = c0; c <= c1; c++)
        if (!chunk_test(b->prefaulted, c))
            populate_chunk(b, c);
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

static int load_pages(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    uint8_t hb[LM_RAM_PAGES_HDR_SIZE];
    lm_ram_run r;
    if (h->len < LM_RAM_PAGES_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "RAM_PAGES: record of %u bytes too short", h->len);
    if (lm_chan_read_full(c, hb, sizeof hb) < 0)
        return lm_chan_get_error(c, err);
    if (lm_fmt_ram_pages_hdr_decode(hb, sizeof hb, &r, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    int ret = lm_fmt_ram_run_check(r.block, r.first_page, r.count, m->in.blocks, m->in.nblocks,
                                   err);
    if (ret < 0)
        return lm_error_prefix(err, "RAM_PAGES");
    lm_ram_block *b = &m->blocks[m->in.map[r.block]];
    uint64_t bytes = (uint64_t)r.count * b->page_size;
    if ((uint64_t)h->len != LM_RAM_PAGES_HDR_SIZE + bytes)
        return lm_error_set(err, -EPROTO,
                            "RAM_PAGES: record length %u does not match %u pages of %u bytes",
                            h->len, r.count, b->page_size);
    lm_ram_prefault_pages(b, r.first_page, r.count);
    if (lm_chan_read_full(c, b->base + r.first_page * b->page_size, bytes) < 0)
        return lm_chan_get_error(c, err);
    mark_received_run(b, r.first_page, r.count);
    return 0;
}

static int load_zero(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    uint8_t p[LM_RAM_ZERO_SIZE];
    lm_ram_zero z;
    if (h->len != LM_RAM_ZERO_SIZE)
        return lm_error_set(err, -EPROTO, "RAM_ZERO: length %u, expected %d", h->len,
                            LM_RAM_ZERO_SIZE);
    if (lm_chan_read_full(c, p, sizeof p) < 0)
        return lm_chan_get_error(c, err);
    if (lm_fmt_ram_zero_decode(p, sizeof p, &z, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    int ret = lm_fmt_ram_run_check(z.block, z.first_page, z.count, m->in.blocks, m->in.nblocks,
                                   err);
    if (ret < 0)
        return lm_error_prefix(err, "RAM_ZERO");
    lm_ram_block *b = &m->blocks[m->in.map[z.block]];
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
