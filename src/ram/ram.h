/*
 * ram.h - RAM as a state handler (one savevm handler among the devices):
 * the source's dirty maps, page search and sending (save.c), the
 * destination's loading of RAM records (load.c).  Memory itself, dirty
 * tracking and placement are the memory layer's (mem/); multifd carries
 * background pages when it is on.
 *
 * Source threads: the migration thread runs the handler.  After the switch
 * to postcopy, postcopy's request servers (postcopy/source.c: "lm-rp" or
 * "lm-rp-preempt") claim requested pages from the same dirty maps, so every
 * search and clear of a dirty bit, and dirty_pages, are under r->lock; a
 * claimed run is sent without it (the guest is stopped, its memory no
 * longer changes), so the lock is never held across I/O.
 */
#ifndef LM_RAM_H
#define LM_RAM_H

#include "mem/dirty.h"
#include "mem/mem.h"
#include "mem/wp.h"
#include "multifd/multifd.h"
#include "savevm/savevm.h"

/* query-migrate's xbzrle-cache (relaxed atomics; xbzrle.c). */
typedef struct lm_xbz_counters {
    uint64_t cache_size;    /* bytes of the cache in use */
    uint64_t bytes;         /* RAM_XBZRLE bytes sent (headers included), + a page per overflow */
    uint64_t pages;         /* pages sent as RAM_XBZRLE */
    uint64_t cache_miss;    /* pages not in the cache */
    uint64_t overflow;      /* deltas given up: the page went whole */
    uint64_t miss_rate_ppm; /* cache misses per page handled, last period, x 1e6 */
    uint64_t encoding_rate_milli; /* page bytes per XBZRLE byte, last period, x 1000 */
} lm_xbz_counters;

/* query-migrate's RAM figures (relaxed atomics). */
typedef struct lm_ram_counters {
    uint64_t remaining;        /* bytes still dirty */
    uint64_t duplicate;        /* zero pages sent on the main / preempt channel */
    uint64_t normal;           /* data pages sent on the main / preempt channel */
    uint64_t dirty_pages_rate; /* pages/s over periods of >= 1 s */
    uint64_t dirty_sync_count;
    lm_xbz_counters xbz;
} lm_ram_counters;

/* What the sender tells or asks the rest of the engine (core sets these
 * before setup; unset hooks are skipped). */
typedef struct lm_ram_hooks {
    /* A dirty sync started pass `pass` (MIGRATION_PASS). */
    void (*pass)(void *opaque, uint64_t pass);
    void *pass_opaque;
    /* Postcopy without a preempt channel: serve the queued requests on o
     * before the next background run (QEMU's get_queued_page). */
    int (*urgent)(void *opaque, lm_out *o, lm_error *err);
    /* Postcopy: a background run [first, first+count) of block bi was
     * claimed (called with r->lock held). */
    void (*claimed)(void *opaque, unsigned bi, uint64_t first, uint64_t count, const lm_out *o);
    void *pc_opaque; /* of urgent and claimed */
    /* A dirty-rate period (>= 1 s) closed: the guest dirtied dirty_bytes
     * in it (auto-converge's trigger, core/throttle.c). */
    void (*period)(void *opaque, uint64_t dirty_bytes);
    void *period_opaque;
} lm_ram_hooks;

typedef struct lm_ram {
    lm_mem *mem;
    lm_ram_counters *ctr;
    lm_ram_hooks hooks;
    pthread_mutex_t lock; /* see the top of this file */
    /* --- lock (once a second thread may claim pages) --- */
    uint64_t *dirty[LM_RAM_MAX_BLOCKS]; /* per block: pages still to send */
    uint64_t dirty_pages;               /* bits set in all dirty maps */
    /* Background snapshot: pages the write-fault thread claimed (their
     * dirty bits are clear) and copied or is copying, not yet sent: they
     * count as left (lm_ram_dirty_left) until the drain sends them. */
    uint64_t bg_owed;
    bool postcopy; /* switched: RAM is sent postcopy */
    /* --- migration thread only --- */
    uint64_t *populated[LM_RAM_MAX_BLOCKS]; /* pass 1 only: populated at setup */
    lm_dirty *tracker;                      /* write tracking while the guest runs */
    bool tracking;
    bool guest_running;    /* set before setup: tracking is needed */
    bool bgsnap;           /* set before setup: a background snapshot (bgsnap.c) */
    struct lm_bgsnap *bg;  /* while its write-protection is on */
    bool postcopy_capable; /* set before setup: RAM may go postcopy */
    unsigned cur_block;    /* page-search cursor */
    uint64_t cur_page;
    uint64_t period_start_ns; /* dirty-rate period (>= 1 s) */
    uint64_t period_dirty;
    uint64_t last_sync_ns;
    uint64_t last_sync_cost_ns; /* what the final sync will cost (expected downtime) */
    /* XBZRLE (xbzrle.c): the capability and cache size, set before setup
     * (the size again by lm_ram_xbz_resize); the cache; whether the first
     * round is done (QEMU's xbzrle_started) */
    bool xbz_on;
    uint64_t xbz_size;
    struct lm_xbz *xbz;
    bool xbz_started;
    uint64_t xbz_ram_bytes;
} lm_ram;

typedef struct lm_xbz lm_xbz;

void lm_ram_init(lm_ram *r, lm_mem *mem, lm_ram_counters *ctr);
void lm_ram_destroy(lm_ram *r);

/* ------------------------------------------------------------ save.c */

extern const lm_handler_ops lm_ram_handler_ops; /* opaque: lm_ram */
void lm_ram_save_cleanup(lm_ram *r);
/* A dirty sync: fences multifd, collects the pages written since the last
 * one, starts a pass. */
int lm_ram_sync(lm_ram *r, lm_out *o, lm_error *err);
/* Pages still dirty (takes r->lock). */
uint64_t lm_ram_dirty_left(lm_ram *r);
/* Sends the claimed pages [first, end) of block bi on o: zero detection as
 * o->zpd says; a background run goes to the multifd channels when there
 * are some, requested pages (background false) never do. */
int lm_ram_send_pages(lm_ram *r, lm_out *o, unsigned bi, uint64_t first, uint64_t end,
                      bool background);
/* With r->lock held: the next run [*p, *q) of dirty pages of block bi in
 * [from, end); claim clears them (the caller sends them).  False when none. */
bool lm_ram_dirty_run_locked(lm_ram *r, unsigned bi, uint64_t from, uint64_t end, bool claim,
                             uint64_t *p, uint64_t *q);
/* From now on RAM is sent postcopy (at the switch, guest stopped). */
void lm_ram_set_postcopy(lm_ram *r);

/* ------------------------------------------------------------ xbzrle.c */

/* Migration thread.  Setup allocates the cache when xbz_on (mapped
 * lazily: a slot costs memory once a page is cached in it); cleanup frees
 * it.  Resize takes effect at once with a new, empty cache (QEMU). */
int lm_ram_xbz_setup(lm_ram *r, lm_error *err);
void lm_ram_xbz_cleanup(lm_ram *r);
void lm_ram_xbz_resize(lm_ram *r, uint64_t size);
/* XBZRLE applies to the next background run on o: on, past the first
 * round, on the main channel (no multifd, no mapped-ram), not postcopy. */
bool lm_ram_xbz_active(const lm_ram *r, const lm_out *o);
/* Sends the claimed pages [p, end) of block bi page by page: zero pages
 * as RAM_ZERO, cached ones as RAM_XBZRLE deltas, the others whole. */
int lm_ram_xbz_send(lm_ram *r, lm_out *o, unsigned bi, uint64_t p, uint64_t end);
/* A dirty-rate period closed: cache-miss-rate and encoding-rate. */
void lm_ram_xbz_period(lm_ram *r);

/* ------------------------------------------------------------ bgsnap.c */

/* Background snapshot (digest §9, bgsnap.c).  With the guest stopped:
 * records which pages are populated, write-protects all RAM and starts the
 * write-fault thread.  From then on one pass sends every page as it was at
 * this instant: a write to a page not yet sent blocks until the fault
 * thread copied it (the copy is queued and sent by the drain); a sent run
 * is un-protected.  Migration thread. */
int lm_ram_bgsnap_start(lm_ram *r, lm_error *err);
/* Removes every protection and stops the fault thread (idempotent; the
 * queued copies are dropped).  Migration thread. */
void lm_ram_bgsnap_stop(lm_ram *r);
/* Sends the copies the fault thread queued.  When nothing is left but
 * pages being copied, waits for them.  Migration thread (ram_send). */
int lm_ram_bgsnap_drain(lm_ram *r, lm_out *o, lm_error *err);
/* With r->lock held: run [first, end) of block bi was claimed and is
 * about to be sent straight from guest memory (still protected). */
void lm_ram_bgsnap_claimed_locked(lm_ram *r, unsigned bi, uint64_t first, uint64_t end);
/* The claimed run is sent: the guest may write it now.  It is
 * un-protected in batches of contiguous runs (lm_ram_bgsnap_flush ends
 * one; a write before that faults and is let through). */
int lm_ram_bgsnap_sent(lm_ram *r, unsigned bi, uint64_t first, uint64_t end);
int lm_ram_bgsnap_flush(lm_ram *r);
/* Sends n (<= LM_RAM_COPIES_MAX) single pages from copies (data NULL: a
 * page that was zero). */
#define LM_RAM_COPIES_MAX 64
typedef struct lm_ram_copy {
    unsigned block;
    uint64_t page;
    const uint8_t *data;
} lm_ram_copy;
int lm_ram_send_copies(lm_ram *r, lm_out *o, unsigned n, const lm_ram_copy *cp);

/* ------------------------------------------------------------ load.c */

/* Destination: RAM_BLOCKS / RAM_PAGES / RAM_ZERO / RAM_PASS of a stream
 * (main or preempt channel), pages through the placement interface;
 * scratch holds LM_RAM_MAX_RUN pages (used once placement is atomic). */
int lm_ram_load_record(lm_mem *mem, lm_place *pl, lm_chan *c, const lm_rec_hdr *h, uint8_t *scratch,
                       lm_error *err);
/* Reads a RAM_ZERO or POSTCOPY_DISCARD payload (the same run) and checks
 * it against the stream's table. */
int lm_ram_read_zero_run(lm_mem *mem, lm_chan *c, const lm_rec_hdr *h, lm_ram_zero *z,
                         lm_ram_block **bp, lm_error *err);

#endif /* LM_RAM_H */
