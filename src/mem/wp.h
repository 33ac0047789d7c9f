/*
 * wp.h - synchronous userfaultfd write-protection of guest memory for a
 * background snapshot (QEMU's ram_write_tracking_*, digest §9): every RAM
 * range is registered with UFFDIO_REGISTER_MODE_WP and write-protected
 * (never-populated pages too: UFFD_FEATURE_WP_UNPOPULATED on anonymous
 * memory, PTE markers on shared memory), and a fault thread "lm-wp-fault"
 * hands each write fault to a callback, which saves the page first; the
 * page is then un-protected and the writer continues.
 *
 * Unlike mem/dirty.c (WP_ASYNC: the kernel resolves faults by itself and
 * only records them) a fault here blocks the writing thread until it is
 * resolved, which is what makes the image "as of the start".
 *
 * Threads: one owner thread (the migration thread) calls new / add_range /
 * start / stop / free; lm_wp_unprotect may be called from any thread (it is
 * one ioctl); the callback runs on "lm-wp-fault" only.  No lock is taken
 * here: the ranges are fixed before start and read-only until stop.
 */
#ifndef LM_MEM_WP_H
#define LM_MEM_WP_H

#include "livemig.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct lm_wp lm_wp;

/* What the fault thread does after the callback. */
typedef enum lm_wp_action {
    LM_WP_UNPROTECT, /* the page is saved: un-protect it (wakes the writer) */
    LM_WP_LEAVE,     /* someone else un-protects it soon (a send in flight) */
} lm_wp_action;

/* Called on "lm-wp-fault" for a write to page `page` of range `range`.
 * [*first, *first + *count) is what LM_WP_UNPROTECT un-protects: the page
 * when the callback leaves them (it may widen them to a cluster it saved,
 * in one ioctl instead of one fault per page). */
typedef lm_wp_action (*lm_wp_fault_fn)(void *opaque, unsigned range, uint64_t page, uint64_t *first,
                                       uint64_t *count);

/* Opens a userfaultfd and checks the features (write-protect, unpopulated
 * pages, shared memory).  Errors name the missing piece. */
int lm_wp_new(lm_wp **out, lm_error *err);
/* Adds a range (page aligned, 4 KiB pages); only before lm_wp_start.
 * Refuses memory that synchronous write-protection cannot cover. */
int lm_wp_add_range(lm_wp *w, const char *name, void *base, uint64_t len, uint32_t page_size,
                    lm_error *err);
/* True when range i is anonymous private memory (a page never populated
 * reads as zero and carries a marker).  Shared memory (memfd, shmem) may
 * hold pages not mapped here: the caller must read every page. */
bool lm_wp_range_anon(const lm_wp *w, unsigned i);
/* Registers and write-protects every range, then starts "lm-wp-fault".
 * Call with the writers stopped: from its return on, every write to a range
 * goes through fn until the page is un-protected. */
int lm_wp_start(lm_wp *w, lm_wp_fault_fn fn, void *opaque, lm_error *err);
/* Un-protects [first, first+count) of range i and wakes its writers. */
int lm_wp_unprotect(lm_wp *w, unsigned i, uint64_t first, uint64_t count, lm_error *err);
/* The fault thread's first error (0: none): a fault it could not resolve. */
int lm_wp_error(lm_wp *w, lm_error *err);
/* Write faults handled so far (relaxed atomic). */
uint64_t lm_wp_faults(const lm_wp *w);
/* Un-protects everything, stops the fault thread, unregisters.  The
 * callback must no longer wait for the owner (it is called until the thread
 * is joined).  Idempotent. */
void lm_wp_stop(lm_wp *w);
void lm_wp_free(lm_wp *w);

#endif /* LM_MEM_WP_H */
