/*
 * lazy.h - lazy restore of a mapped-ram file (capability x-lazy-restore,
 * docs/architecture.md): the guest runs while its pages are still in the
 * file.  A page the guest touches first is served from the file (present
 * bit) or as a zero page (bit clear) by the fault thread through
 * lm_lazy_serve; background readers ("lm-lazy/N") place every other page
 * in large runs, skipping the runs whose pages are placed already.  Every
 * page goes through the placement interface (mem.h), which the caller has
 * switched to atomic placement (postcopy's ops: a page is placed once,
 * whoever comes first, and its waiters wake).
 *
 * Threads and locks: lm_lazy_open / start / stop / free on the incoming
 * thread; lm_lazy_serve on the fault thread only (its own buffer); each
 * reader reads a contiguous share of the file front to back on its own
 * descriptor, its cursor under z->lock (a leaf lock, never held across
 * I/O).  The first failure (a reader's or a serve's) is kept, stops the
 * readers and is reported through hooks.wake.
 *
 * Layering: file/ (uses mem/, chan/, format/); the caller says through
 * hooks which pages are still owed (postcopy's maps).
 */
#ifndef LM_FILE_LAZY_H
#define LM_FILE_LAZY_H

#include "file/mapped.h"

typedef struct lm_lazy lm_lazy;

typedef struct lm_lazy_hooks {
    /* True when a page of [first, first + count) of RAM block bi is not
     * placed yet (any thread, no lazy lock held). */
    bool (*owed)(void *opaque, unsigned bi, uint64_t first, uint64_t count);
    /* Something to look at: the first failure (lm_lazy_error), or every
     * reader is through (lm_lazy_done).  Called by the thread concerned,
     * with no lazy lock held. */
    void (*wake)(void *opaque);
    void *opaque;
} lm_lazy_hooks;

/* Incoming thread, at the MAPPED_RAM record h of main (a file): reads and
 * checks the layout and every bitmap (lm_mapped_load's checks), opens
 * nreaders descriptors (O_DIRECT ones with direct), and moves main to
 * where the stream goes on.  bytes: the caller's counter of page bytes
 * read (relaxed atomic).  Nothing is placed yet. */
int lm_lazy_open(lm_mem *mem, lm_place *pl, lm_chan *main, const lm_rec_hdr *h, const char *path,
                 bool direct, unsigned nreaders, uint64_t *bytes, lm_lazy **out, lm_error *err);
/* Present pages in the file (from the bitmaps). */
uint64_t lm_lazy_present(const lm_lazy *z);
/* Starts the readers (the placement must be atomic by now). */
int lm_lazy_start(lm_lazy *z, const lm_lazy_hooks *hk, lm_error *err);
/* Fault thread: places the faulting page of RAM block bi and the pages
 * around it (an aligned cluster of 16) that are still owed. */
int lm_lazy_serve(lm_lazy *z, unsigned bi, uint64_t page, lm_error *err);
/* Records a failure from outside (first wins) and stops the readers. */
void lm_lazy_fail(lm_lazy *z, const lm_error *err);
/* The first failure, 0 when none (any thread). */
int lm_lazy_error(lm_lazy *z, lm_error *err);
/* True once every reader went through the whole file. */
bool lm_lazy_done(lm_lazy *z);
/* Stops and joins the readers (idempotent). */
void lm_lazy_stop(lm_lazy *z);
void lm_lazy_free(lm_lazy *z);

#endif /* LM_FILE_LAZY_H */
