/*
 * place.c - the one placement interface (mem.h): every page that reaches
 * destination memory, from the main channel, a multifd channel or the
 * preempt channel, goes through lm_place_pages or lm_place_recv.  Before
 * postcopy's switch the workload is stopped and pages are written in
 * place; after it they are placed atomically by the ops postcopy installs.
 */
#include "mem/mem.h"

#include <errno.h>
#include <string.h>

void lm_mem_mark_received(lm_ram_block *b, uint64_t first, uint64_t count)
{
    lm_bitmap_set_range_atomic(b->received, first, first + count);
}

bool lm_mem_test_received(const lm_ram_block *b, uint64_t page)
{
    return lm_bit_test_atomic(b->received, page);
}

/* Only pages an earlier round wrote need clearing: destination memory
 * starts zero, so a first-time zero page costs nothing and is never
 * faulted in.  Whole words of never-received pages are skipped (a
 * never-populated GiB is one record). */
static void clear_received(lm_ram_block *b, uint64_t first, uint64_t count)
{
    uint64_t end = first + count;
    for (uint64_t i = first; i < end;) {
        uint64_t w = __atomic_load_n(&b->received[i / 64], __ATOMIC_RELAXED);
        if (!(i % 64) && end - i >= 64 && w == 0) {
            i += 64;
            continue;
        }
        uint64_t j = i;
        while (j < end && lm_mem_test_received(b, j))
            j++;
        if (j > i) {
            memset(b->base + i * b->page_size, 0, (j - i) * b->page_size);
            i = j;
        } else {
            i++;
        }
    }
}

static const lm_place_ops *atomic_ops(const lm_place *pl)
{
    return __atomic_load_n(&pl->ops, __ATOMIC_ACQUIRE);
}

int lm_place_pages(lm_place *pl, lm_ram_block *b, uint64_t first, uint64_t count,
                   const uint8_t *data, lm_error *err)
{
    const lm_place_ops *ops = atomic_ops(pl);
    if (ops)
        return ops->pages(pl->opaque, b, first, count, data, err);
    if (!data) {
        clear_received(b, first, count);
        return 0;
    }
    lm_mem_prefault_view(b, b->base, b->prefaulted, first, count);
    memcpy(b->base + first * b->page_size, data, count * b->page_size);
    lm_mem_mark_received(b, first, count);
    return 0;
}

int lm_place_recv(lm_place *pl, lm_chan *c, lm_ram_block *b, uint64_t first, uint64_t count,
                  uint8_t *scratch, lm_error *err)
{
    const lm_place_ops *ops = atomic_ops(pl);
    if (ops)
        return ops->recv(pl->opaque, c, b, first, count, scratch, err);
    /* Populated in bulk first: a fault per 4 KiB page inside recv() would
     * cost more than the copy. */
    lm_mem_prefault_view(b, b->base, b->prefaulted, first, count);
    if (lm_chan_read_full(c, b->base + first * b->page_size, count * b->page_size) < 0) {
        int code = lm_chan_get_error(c, err);
        return code ? code : lm_error_set(err, -EIO, "reading pages failed");
    }
    lm_mem_mark_received(b, first, count);
    return 0;
}

int lm_place_delta(lm_place *pl, lm_ram_block *b, uint64_t page, const uint8_t *enc, size_t len,
                   lm_error *err)
{
    /* Postcopy places whole pages atomically; a delta would be applied to
     * a page the running workload may be reading.  The source never sends
     * one after the switch (QEMU neither). */
    if (atomic_ops(pl))
        return lm_error_set(err, -EPROTO, "an XBZRLE page after the switch to postcopy");
    if (b->page_size != LM_XBZRLE_PAGE_MAX)
        return lm_error_set(err, -EPROTO, "XBZRLE on a block of %u-byte pages", b->page_size);
    lm_mem_prefault_view(b, b->base, b->prefaulted, page, 1);
    /* In place, on the copy this page already holds (zero if it never
     * received one: a page first sent as zero is cached as zero). */
    int ret = lm_fmt_xbzrle_decode(enc, len, b->base + page * b->page_size, b->page_size, err);
    if (ret < 0)
        return ret;
    lm_mem_mark_received(b, page, 1);
    return 0;
}

void lm_place_set_atomic(lm_place *pl, const lm_place_ops *ops, void *opaque)
{
    pl->opaque = opaque;
    __atomic_store_n(&pl->ops, ops, __ATOMIC_RELEASE);
}

void lm_place_reset(lm_place *pl)
{
    __atomic_store_n(&pl->ops, NULL, __ATOMIC_RELEASE);
}

bool lm_place_is_atomic(const lm_place *pl)
{
    return atomic_ops(pl) != NULL;
}
