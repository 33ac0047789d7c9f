/*
 * dirty.h - dirty-page tracking backends behind one interface, plus the
 * memory probes the RAM code needs (populated-page scan, zero check,
 * pre-population).
 *
 * Backends (DESIGN §7):
 *  - LM_DIRTY_UFFD_WP: userfaultfd write-protect in async mode
 *    (UFFD_FEATURE_WP_ASYNC | WP_UNPOPULATED) with the PAGEMAP_SCAN ioctl
 *    (Linux >= 6.7): the kernel marks written pages with no fault handler; a
 *    scan returns written ranges and re-protects them atomically.  Default.
 *  - LM_DIRTY_ALL: every page is dirty at every sync (a stopped source).
 *  - LM_DIRTY_HOST: the host (a VMM with KVM dirty logs) supplies bitmaps.
 *
 * Bitmaps: one per range, 64-bit words, bit i of word w = page w*64+i,
 * host order (internal only; the wire uses byte arrays).
 *
 * Threads: one lm_dirty is used by one thread at a time (the migration
 * thread).  The guest keeps writing concurrently; that is the point.
 */
#ifndef LM_DIRTY_H
#define LM_DIRTY_H

#include "livemig.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lm_dirty_kind {
    LM_DIRTY_UFFD_WP,
    LM_DIRTY_ALL,
    LM_DIRTY_HOST,
} lm_dirty_kind;

typedef struct lm_dirty lm_dirty;

/* Host backend: OR the pages written since the previous call into bitmap
 * (npages bits) of range `index`; return 0 or < 0 with err set. */
typedef int (*lm_dirty_host_fn)(void *opaque, unsigned index, uint64_t *bitmap, uint64_t npages,
                                lm_error *err);

/* Returns 0 when uffd-wp async + PAGEMAP_SCAN work here, else < 0 with a
 * message saying which piece is missing. */
int lm_dirty_uffd_probe(lm_error *err);

int lm_dirty_new(lm_dirty_kind kind, lm_dirty **out, lm_error *err);
int lm_dirty_new_host(lm_dirty_host_fn fn, void *opaque, lm_dirty **out, lm_error *err);
/* Adds a range (page-aligned base and len); ranges are numbered in the order
 * added.  Only before lm_dirty_start(). */
int lm_dirty_add_range(lm_dirty *d, void *base, uint64_t len, uint32_t page_size, lm_error *err);
/* Starts tracking: from its return on, every write to a range is recorded.
 * uffd: registers WP and write-protects everything (~12 ms/GiB here). */
int lm_dirty_start(lm_dirty *d, lm_error *err);
/* Like lm_dirty_start, and also sets in populated[i] (one bitmap per range,
 * OR-ed, like the sync bitmaps) the pages that were populated at the instant
 * tracking began for them: a page left clear was zero then, and every later
 * write to it is reported by lm_dirty_sync, so the first pass may send it as
 * zero without reading it.  uffd: the write-protect is done by PAGEMAP_SCAN,
 * which reads each page's state and protects it atomically (an
 * lm_mem_populated_scan after lm_dirty_start would count never-populated
 * pages as populated, and one before it races with the workload).  Other
 * backends: lm_mem_populated_scan of each range after starting. */
int lm_dirty_start_populated(lm_dirty *d, uint64_t *const *populated, lm_error *err);
/* ORs the pages written since start or the previous sync into bitmaps[i]
 * (one per range) and re-arms tracking for them, atomically per page (a
 * write that races the scan is either collected now or at the next sync,
 * never lost).  *newly gets the number of bits that went from 0 to 1. */
int lm_dirty_sync(lm_dirty *d, uint64_t *const *bitmaps, uint64_t *newly, lm_error *err);
/* Stops tracking and removes protection (uffd: unregister, close). */
void lm_dirty_stop(lm_dirty *d);
void lm_dirty_free(lm_dirty *d);

/* Sets in bitmap (npages = len / page_size bits, OR-ed) the pages of
 * [base, base+len) that are populated (present or swapped).  Pages left
 * clear were never populated (or were discarded) and read as zero, so they
 * can be sent as zero without reading them.  Uses PAGEMAP_SCAN; falls back
 * to "all populated" where it is missing (returns 1 then, 0 normally).
 * Pages mapping the shared zero page (only read so far) count as not
 * populated.  In a range under uffd-wp tracking, never-populated pages count
 * as populated (the kernel reports their write-protect marker as swapped):
 * use lm_dirty_start_populated() there. */
int lm_mem_populated_scan(void *base, uint64_t len, uint32_t page_size, uint64_t *bitmap,
                          lm_error *err);

/* True when len bytes at p (8-byte aligned, len multiple of 64) are zero. */
bool lm_page_is_zero(const void *p, size_t len);

/* Pre-populates [p, p+len) for writing (MADV_POPULATE_WRITE, ~0.5 µs/page
 * here instead of a 10-15 µs first-touch fault).  Best effort: returns 0,
 * or < 0 when the kernel refused (the caller then simply takes faults). */
int lm_mem_populate(void *p, size_t len);

#endif /* LM_DIRTY_H */
