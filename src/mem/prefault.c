/*
 * prefault.c - population of destination memory ahead of the stream.
 *
 * Thread "lm-prefault" (one per migrate-incoming): populates every block in
 * 2 MiB chunks with MADV_POPULATE_WRITE (~0.5 µs/page instead of a 10-15 µs
 * first-touch fault per page on this machine kind, DESIGN §7), then the
 * blocks' aliases (postcopy on shared memory receives through them).  So
 * population (kernel page zeroing, 0.3-1.7 s/GiB measured here) is off the
 * receive path when the destination is started before the source migrates,
 * as with QEMU's -mem-prealloc.  Loaders populate the chunks they touch
 * that it has not reached (lm_mem_prefault_view).  MADV_POPULATE_WRITE
 * leaves present pages alone, so a race only costs a chunk populated
 * twice.  Chunk bits are set with atomic ORs by every thread.
 */
#include "mem/dirty.h"
#include "mem/mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void populate_chunk(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t c)
{
    uint64_t p = c * LM_MEM_CHUNK_PAGES;
    uint64_t n = b->npages - p < LM_MEM_CHUNK_PAGES ? b->npages - p : LM_MEM_CHUNK_PAGES;
    lm_mem_populate(view + p * b->page_size, n * b->page_size);
    lm_bit_set_atomic(ready, c);
}

void lm_mem_prefault_view(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t first,
                          uint64_t count)
{
    uint64_t c0 = first / LM_MEM_CHUNK_PAGES, c1 = (first + count - 1) / LM_MEM_CHUNK_PAGES;
    for (uint64_t c = c0; c <= c1; c++)
        if (!lm_bit_test_atomic(ready, c))
            populate_chunk(b, view, ready, c);
}

/* One pass over every block's own mapping, or over the aliases; false when
 * told to stop. */
static bool prefault_pass(lm_mem *mem, bool aliases)
{
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        uint8_t *view = aliases ? b->alias : b->base;
        uint64_t *ready = aliases ? b->alias_ready : b->prefaulted;
        uint64_t chunks = (b->npages + LM_MEM_CHUNK_PAGES - 1) / LM_MEM_CHUNK_PAGES;
        for (uint64_t c = 0; view && ready && c < chunks; c++) {
            if (__atomic_load_n(&mem->prefault_stop, __ATOMIC_RELAXED))
                return false;
            if (!lm_bit_test_atomic(ready, c))
                populate_chunk(b, view, ready, c);
        }
    }
    return true;
}

static void *prefault_fn(void *arg)
{
    lm_mem *mem = arg;
    pthread_setname_np(pthread_self(), "lm-prefault");
    if (prefault_pass(mem, false))
        prefault_pass(mem, true);
    return NULL;
}

int lm_mem_incoming_prepare(lm_mem *mem, lm_error *err)
{
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        if (!b->received)
            b->received = calloc(lm_bitmap_words(b->npages), 8);
        if (!b->prefaulted)
            b->prefaulted = calloc(lm_mem_chunk_words(b), 8);
        if (!b->received || !b->prefaulted)
            return lm_error_set(err, -ENOMEM, "out of memory for RAM bitmaps");
    }
    memset(&mem->smap, 0, sizeof mem->smap);
    return 0;
}

/* Starts "lm-prefault" (after lm_mem_incoming_prepare and, with postcopy,
 * after the aliases are mapped).  Without the thread pages are populated
 * on receipt. */
void lm_mem_prefault_start(lm_mem *mem)
{
    lm_mem_prefault_stop(mem);
    __atomic_store_n(&mem->prefault_stop, false, __ATOMIC_RELAXED);
    if (mem->nblocks && pthread_create(&mem->prefault_thread, NULL, prefault_fn, mem) == 0)
        mem->prefault_running = true;
}

void lm_mem_prefault_stop(lm_mem *mem)
{
    if (!mem->prefault_running)
        return;
    __atomic_store_n(&mem->prefault_stop, true, __ATOMIC_RELAXED);
    pthread_join(mem->prefault_thread, NULL);
    mem->prefault_running = false;
}
