/*
 * xbzrle.c - XBZRLE on the source (digest §5.8, QEMU's page_cache.c and
 * ram.c save_xbzrle_page, rewritten): a cache of pages as they were last
 * sent, and re-dirtied pages sent as a delta against their cached copy
 * (RAM_XBZRLE, format/xbzrle.c encodes).
 *
 * Thread: the migration thread only.  It owns the cache, resizes it when
 * xbzrle-cache-size changes (lm_sw_reload_params, at the next loop step)
 * and frees it at cleanup; the counters are relaxed atomics query-migrate
 * reads.  Used only on the main channel, from the end of the first round
 * (the bulk pass would fill the cache with pages that are never sent
 * again) until the switch to postcopy; never with multifd or mapped-ram,
 * which the capability check refuses (as QEMU).
 *
 * The invariant: for every cached address the cache holds exactly what the
 * destination holds.  So a page is first copied out of guest memory (the
 * guest keeps writing it), encoded from that copy, the copy becomes the
 * cached one, and a page sent whole after a miss or an overflow is sent
 * from the copy too.  In the last stage (guest stopped) the cache is no
 * longer updated.
 */
#include "ram/ram.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE LM_XBZRLE_PAGE_MAX
/* QEMU's CACHED_PAGE_LIFETIME: an entry cached in the last two syncs is
 * not evicted by another address that maps to its slot. */
#define LIFETIME 2
/* Give up (overflow: send whole) when the delta would exceed 3/4 of a
 * page: beyond that it saves under a quarter and costs the decode. */
#define ENC_MAX (PAGE * 3 / 4)

typedef struct xbz_item {
    uint64_t key; /* global page number + 1; 0: empty */
    uint64_t age; /* dirty_sync_count when it was cached or last hit */
} xbz_item;

struct lm_xbz {
    uint64_t size;   /* bytes of page copies: nitems * PAGE */
    uint64_t nitems; /* a power of two */
    xbz_item *items;
    uint8_t *data; /* nitems pages, mapped lazily: untouched slots cost nothing */
    uint64_t block_base[LM_RAM_MAX_BLOCKS]; /* first global page of each block */
    uint8_t cur[PAGE];                      /* the page as it is sent */
    uint8_t enc[PAGE];
    uint8_t zero[PAGE];
    /* the current dirty-rate period, for the rates */
    uint64_t period_pages, period_miss, period_xpages, period_xbytes;
};

static void cache_free(lm_xbz *x)
{
    if (x->data)
        munmap(x->data, x->size);
    free(x->items);
    x->data = NULL;
    x->items = NULL;
    x->size = x->nitems = 0;
}

static uint64_t pow2_floor(uint64_t v)
{
    uint64_t p = 1;
    while (p <= v / 2)
        p *= 2;
    return p;
}

/* A cache of size bytes (a power of two >= a page, params.c checks),
 * never larger than the guest's RAM rounded up to a power of two. */
static int cache_alloc(lm_xbz *x, uint64_t size, uint64_t ram_bytes, lm_error *err)
{
    uint64_t cap = pow2_floor(ram_bytes ? ram_bytes : PAGE);
    if (cap < ram_bytes)
        cap *= 2;
    if (size > cap)
        size = cap;
    if (size < PAGE)
        size = PAGE;
    x->nitems = size / PAGE;
    x->size = x->nitems * PAGE;
    x->items = calloc(x->nitems, sizeof *x->items);
    void *d = mmap(NULL, x->size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    x->data = d == MAP_FAILED ? NULL : d;
    if (x->data) /* a hint: 512 slots per first-touch fault instead of one */
        madvise(x->data, x->size, MADV_HUGEPAGE);
    if (!x->items || !x->data) {
        cache_free(x);
        return lm_error_set(err, -ENOMEM, "out of memory for the XBZRLE cache (%llu bytes)",
                            (unsigned long long)size);
    }
    return 0;
}

int lm_ram_xbz_setup(lm_ram *r, lm_error *err)
{
    lm_ram_xbz_cleanup(r);
    if (!r->xbz_on)
        return 0;
    lm_xbz *x = calloc(1, sizeof *x);
    if (!x)
        return lm_error_set(err, -ENOMEM, "out of memory for XBZRLE");
    uint64_t pages = 0, bytes = 0;
    for (unsigned i = 0; i < r->mem->nblocks; i++) {
        x->block_base[i] = pages;
        pages += r->mem->blocks[i].len / PAGE;
        bytes += r->mem->blocks[i].len;
    }
    int ret = cache_alloc(x, r->xbz_size, bytes, err);
    if (ret < 0) {
        free(x);
        return ret;
    }
    r->xbz = x;
    r->xbz_ram_bytes = bytes;
    r->xbz_started = false;
    lm_xbz_counters *c = &r->ctr->xbz;
    LM_ATOMIC_SET(&c->cache_size, x->size);
    LM_ATOMIC_SET(&c->bytes, 0);
    LM_ATOMIC_SET(&c->pages, 0);
    LM_ATOMIC_SET(&c->cache_miss, 0);
    LM_ATOMIC_SET(&c->overflow, 0);
    LM_ATOMIC_SET(&c->miss_rate_ppm, 0);
    LM_ATOMIC_SET(&c->encoding_rate_milli, 0);
    return 0;
}

void lm_ram_xbz_cleanup(lm_ram *r)
{
    if (!r->xbz)
        return;
    cache_free(r->xbz);
    free(r->xbz);
    r->xbz = NULL;
}

void lm_ram_xbz_resize(lm_ram *r, uint64_t size)
{
    lm_xbz *x = r->xbz;
    if (size == r->xbz_size)
        return; /* called at every loop step: only a change does work */
    r->xbz_size = size;
    if (!x)
        return;
    /* As QEMU: a new, empty cache (what was cached is simply missed). */
    lm_xbz fresh_sizes = {0};
    lm_error e = {0};
    if (cache_alloc(&fresh_sizes, size, r->xbz_ram_bytes, &e) < 0)
        return; /* keep the old one: a smaller cache would still work */
    if (fresh_sizes.size == x->size) {
        cache_free(&fresh_sizes);
        return;
    }
    cache_free(x);
    x->size = fresh_sizes.size;
    x->nitems = fresh_sizes.nitems;
    x->items = fresh_sizes.items;
    x->data = fresh_sizes.data;
    LM_ATOMIC_SET(&r->ctr->xbz.cache_size, x->size);
}

bool lm_ram_xbz_active(const lm_ram *r, const lm_out *o)
{
    return r->xbz && r->xbz_started && !o->postcopy && !o->mfd && !o->mapped;
}

/* The period's rates (QEMU's migration_update_rates): cache misses per
 * page handled, and page bytes per XBZRLE byte sent. */
void lm_ram_xbz_period(lm_ram *r)
{
    lm_xbz *x = r->xbz;
    if (!x)
        return;
    lm_xbz_counters *c = &r->ctr->xbz;
    LM_ATOMIC_SET(&c->miss_rate_ppm,
                  x->period_pages ? x->period_miss * 1000000 / x->period_pages : 0);
    LM_ATOMIC_SET(&c->encoding_rate_milli,
                  x->period_xbytes ? x->period_xpages * PAGE * 1000 / x->period_xbytes : 0);
    x->period_pages = x->period_miss = x->period_xpages = x->period_xbytes = 0;
}

/* One whole page from buf (a stable copy or a stopped guest's memory). */
static int send_whole(lm_ram *r, lm_out *o, unsigned bi, uint64_t page, const uint8_t *buf)
{
    uint8_t hdr[LM_REC_HDR_SIZE + LM_RAM_PAGES_HDR_SIZE];
    lm_ram_run run = {.block = bi, .count = 1, .first_page = page};
    lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, LM_RAM_PAGES_HDR_SIZE + PAGE, hdr, LM_REC_HDR_SIZE);
    lm_fmt_ram_pages_hdr_encode(&run, hdr + LM_REC_HDR_SIZE, LM_RAM_PAGES_HDR_SIZE);
    LM_ATOMIC_ADD(&r->ctr->normal, 1);
    lm_out_account(o, sizeof hdr + PAGE);
    /* Copied into the channel's buffer: a syscall per 4 KiB page would
     * cost more than the copy, and buf is reused for the next page. */
    int ret = lm_chan_put(o->chan, hdr, sizeof hdr);
    return ret ? ret : lm_chan_put(o->chan, buf, PAGE);
}

static int send_delta(lm_ram *r, lm_out *o, unsigned bi, uint64_t page, const uint8_t *enc, int len)
{
    uint8_t hdr[LM_REC_HDR_SIZE + LM_XBZRLE_HDR_SIZE];
    lm_xbzrle_hdr xh = {.block = bi, .data_len = (uint16_t)len, .page = page};
    lm_fmt_rec_hdr_encode(LM_REC_RAM_XBZRLE, LM_XBZRLE_HDR_SIZE + (uint32_t)len, hdr,
                          LM_REC_HDR_SIZE);
    lm_fmt_xbzrle_hdr_encode(&xh, hdr + LM_REC_HDR_SIZE, LM_XBZRLE_HDR_SIZE);
    lm_out_account(o, sizeof hdr + (uint64_t)len);
    LM_ATOMIC_ADD(&r->ctr->xbz.pages, 1);
    LM_ATOMIC_ADD(&r->ctr->xbz.bytes, sizeof hdr + (uint64_t)len);
    r->xbz->period_xpages++;
    r->xbz->period_xbytes += sizeof hdr + (uint64_t)len;
    int ret = lm_chan_put(o->chan, hdr, sizeof hdr);
    return ret ? ret : lm_chan_put(o->chan, enc, (size_t)len);
}

static int send_zero(lm_ram *r, lm_out *o, unsigned bi, uint64_t page)
{
    uint8_t p[LM_RAM_ZERO_SIZE];
    lm_ram_zero z = {.block = bi, .first_page = page, .count = 1};
    lm_fmt_ram_zero_encode(&z, p, sizeof p);
    LM_ATOMIC_ADD(&r->ctr->duplicate, 1);
    lm_out_account(o, LM_REC_HDR_SIZE + LM_RAM_ZERO_SIZE);
    return lm_rec_write(o->chan, LM_REC_RAM_ZERO, p, LM_RAM_ZERO_SIZE);
}

/* The slot of key; whether it may take key now (QEMU's cache_insert:
 * empty, already key, or not refreshed for LIFETIME syncs). */
static bool slot_takes(const xbz_item *it, uint64_t key, uint64_t gen)
{
    return it->key == 0 || it->key == key || it->age + LIFETIME <= gen;
}

static int xbz_page(lm_ram *r, lm_out *o, unsigned bi, uint64_t page, const uint8_t *data)
{
    lm_xbz *x = r->xbz;
    bool last = o->last_stage;
    uint64_t gen = LM_ATOMIC_GET(&r->ctr->dirty_sync_count);
    uint64_t key = x->block_base[bi] + page + 1;
    xbz_item *it = &x->items[key & (x->nitems - 1)];
    uint8_t *slot = x->data + (key & (x->nitems - 1)) * PAGE;
    x->period_pages++;
    bool detect = o->zpd != LM_ZPD_NONE;
    if (detect && lm_page_is_zero(data, PAGE)) {
        /* QEMU's xbzrle_cache_zero_page: the destination holds zeros now. */
        if (!last && slot_takes(it, key, gen)) {
            memset(slot, 0, PAGE);
            it->key = key;
            it->age = gen;
        } else if (it->key == key) {
            it->key = 0; /* stale otherwise (last stage: no longer used) */
        }
        return send_zero(r, o, bi, page);
    }
    if (it->key != key) {
        x->period_miss++;
        LM_ATOMIC_ADD(&r->ctr->xbz.cache_miss, 1);
        if (last || !slot_takes(it, key, gen))
            return send_whole(r, o, bi, page, data); /* stopped guest, or no room */
        memcpy(slot, data, PAGE);
        it->key = key;
        it->age = gen;
        return send_whole(r, o, bi, page, slot);
    }
    it->age = gen;
    memcpy(x->cur, data, PAGE); /* the guest may write it meanwhile */
    int len = lm_fmt_xbzrle_encode(slot, x->cur, PAGE, x->enc, ENC_MAX);
    if (len == 0)
        return 0; /* what the destination holds already */
    if (!last)
        memcpy(slot, x->cur, PAGE);
    if (len < 0) {
        LM_ATOMIC_ADD(&r->ctr->xbz.overflow, 1);
        LM_ATOMIC_ADD(&r->ctr->xbz.bytes, PAGE); /* QEMU counts an overflow so */
        return send_whole(r, o, bi, page, x->cur);
    }
    return send_delta(r, o, bi, page, x->enc, len);
}

int lm_ram_xbz_send(lm_ram *r, lm_out *o, unsigned bi, uint64_t p, uint64_t end)
{
    lm_ram_block *b = &r->mem->blocks[bi];
    if (b->page_size != PAGE) /* XBZRLE serves 4 KiB pages only */
        return lm_ram_send_pages(r, o, bi, p, end, true);
    int ret = 0;
    for (uint64_t i = p; i < end && ret == 0; i++)
        ret = xbz_page(r, o, bi, i, b->base + i * PAGE);
    return ret;
}
