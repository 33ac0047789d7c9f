/*
 * mem.h - guest memory as the engine sees it: the host's RAM blocks, the
 * source stream's block table mapped onto them (destination), population of
 * destination memory ahead of the stream ("lm-prefault"), and the one
 * placement interface through which every page reaches destination memory.
 * Dirty tracking is in mem/dirty.h.  Nothing here knows about records,
 * channels' roles or the migration's states.
 *
 * Threads and ownership:
 *  - the block table (lm_mem.blocks/nblocks) is filled before the first
 *    migration (under the migration object's lock) and read-only after;
 *  - received / prefaulted / alias_ready maps are set with atomic ORs by
 *    every loader (incoming thread, multifd channels, postcopy's loaders)
 *    and by "lm-prefault";
 *  - the stream map (lm_mem.smap) is written by the incoming thread when
 *    RAM_BLOCKS arrives, before any page record can be read (multifd
 *    channels wait for lm_mfd_recv_blocks_ready), read-only after;
 *  - lm_place switches to atomic placement once (postcopy's POSTCOPY_RUN,
 *    on the incoming thread); loaders read that switch with acquire.
 */
#ifndef LM_MEM_H
#define LM_MEM_H

#include "livemig.h"
#include "chan/chan.h"
#include "format/format.h"
#include "util/bitmap.h"
#include "util/clock.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define LM_PAGE_SIZE 4096u
/* Pages per bit of the maps of populated 2 MiB chunks (prefaulted,
 * alias_ready). */
#define LM_MEM_CHUNK_PAGES 512

typedef struct lm_ram_block {
    char name[LM_RAM_NAME_MAX + 1];
    uint8_t *base;
    uint64_t len;
    uint32_t page_size;
    uint64_t npages;
    /* destination (atomic bits) */
    uint64_t *received;   /* pages a stream wrote: they may hold data */
    uint64_t *prefaulted; /* 2 MiB chunks of base populated for writing */
    /* A second mapping of the same pages when one exists (postcopy maps it
     * for shared memory, postcopy/uffd.c), and its populated chunks. */
    uint8_t *alias;
    uint64_t *alias_ready;
} lm_ram_block;

static inline uint64_t lm_mem_chunk_words(const lm_ram_block *b)
{
    return lm_bitmap_words(b->npages / LM_MEM_CHUNK_PAGES + 1);
}

/* The source's block table as the destination received it (RAM_BLOCKS),
 * and the mapping of its indexes onto local blocks. */
typedef struct lm_mem_stream_map {
    bool ready; /* RAM_BLOCKS processed */
    lm_fmt_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nblocks;
    uint8_t map[LM_RAM_MAX_BLOCKS];   /* stream index -> local block */
    uint32_t rmap[LM_RAM_MAX_BLOCKS]; /* local block -> stream index */
} lm_mem_stream_map;

typedef struct lm_mem {
    lm_ram_block blocks[LM_RAM_MAX_BLOCKS];
    unsigned nblocks;
    lm_mem_stream_map smap; /* destination */
    /* "lm-prefault" (destination): thread control */
    pthread_t prefault_thread;
    bool prefault_running; /* the thread exists (incoming/API threads) */
    bool prefault_stop;    /* atomic */
} lm_mem;

/* Registers a block (validated: name, page size, alignment, overlaps,
 * count).  The caller serialises registration with migrations. */
int lm_mem_block_add(lm_mem *mem, const char *name, void *base, uint64_t len, uint32_t page_size,
                     lm_error *err);
/* Frees the destination maps of every block. */
void lm_mem_fini(lm_mem *mem);
/* The block whose pages hold addr, or NULL; *idx gets its index. */
lm_ram_block *lm_mem_find(lm_mem *mem, uint64_t addr, unsigned *idx);

/* Destination: the RAM_BLOCKS table of a stream, checked against the local
 * blocks (same names, sizes, page sizes); fills mem->smap. */
int lm_mem_stream_map_set(lm_mem *mem, const lm_fmt_block *blocks, uint32_t n, lm_error *err);
/* The local block for a stream run, after checking the run against the
 * stream's table (lm_fmt_ram_run_check); what names the record. */
int lm_mem_stream_run(lm_mem *mem, uint32_t block, uint64_t first, uint64_t count, const char *what,
                      lm_ram_block **out, lm_error *err);

/* ------------------------------------------------ population (prefault.c) */

/* Destination: allocates the received/prefaulted maps (kept across attempts:
 * a page written by a failed stream is not zero any more) and forgets the
 * previous stream's block table.  lm_mem_prefault_start then starts
 * "lm-prefault", which populates the blocks (then their aliases) in the
 * background with MADV_POPULATE_WRITE, like QEMU's -mem-prealloc. */
int lm_mem_incoming_prepare(lm_mem *mem, lm_error *err);
void lm_mem_prefault_start(lm_mem *mem);
void lm_mem_prefault_stop(lm_mem *mem);
/* Populates the chunks of [first, first+count) of a view of b (base or
 * alias) not yet marked in ready. */
void lm_mem_prefault_view(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t first,
                          uint64_t count);

/* ------------------------------------------------------ placement (place.c) */

/* Atomic placement (postcopy): the workload runs, a page must appear whole
 * or not at all.  Installed by postcopy at POSTCOPY_RUN. */
typedef struct lm_place_ops {
    /* count pages of data, or zero pages when data is NULL */
    int (*pages)(void *opaque, lm_ram_block *b, uint64_t first, uint64_t count, const uint8_t *data,
                 lm_error *err);
    /* count (<= LM_RAM_MAX_RUN) pages read from c; scratch holds as many */
    int (*recv)(void *opaque, lm_chan *c, lm_ram_block *b, uint64_t first, uint64_t count,
                uint8_t *scratch, lm_error *err);
} lm_place_ops;

typedef struct lm_place {
    const lm_place_ops *ops; /* NULL: plain writes (the workload is stopped) */
    void *opaque;
} lm_place;

/* The one way pages reach destination memory.  Before the switch: data is
 * written in place (chunks populated first) and the pages marked received;
 * a zero page is cleared only if a stream wrote it before (destination
 * memory starts zero: a first-time zero page costs nothing).  After
 * lm_place_set_atomic: through the installed ops.  Any loader thread. */
int lm_place_pages(lm_place *pl, lm_ram_block *b, uint64_t first, uint64_t count,
                   const uint8_t *data, lm_error *err);
/* Reads count pages from c straight into their place (recv into guest
 * memory before the switch; through ops after). */
int lm_place_recv(lm_place *pl, lm_chan *c, lm_ram_block *b, uint64_t first, uint64_t count,
                  uint8_t *scratch, lm_error *err);
/* Applies an XBZRLE encoding (format.h) to page `page` of b in place and
 * marks it received.  Refused once placement is atomic (postcopy) and on
 * blocks whose pages are not 4 KiB; a bad encoding leaves the page
 * untouched and says what was wrong. */
int lm_place_delta(lm_place *pl, lm_ram_block *b, uint64_t page, const uint8_t *enc, size_t len,
                   lm_error *err);
void lm_place_set_atomic(lm_place *pl, const lm_place_ops *ops, void *opaque);
void lm_place_reset(lm_place *pl);
bool lm_place_is_atomic(const lm_place *pl);
/* Marks / tests a page as written by a stream (atomic). */
void lm_mem_mark_received(lm_ram_block *b, uint64_t first, uint64_t count);
bool lm_mem_test_received(const lm_ram_block *b, uint64_t page);

#endif /* LM_MEM_H */
