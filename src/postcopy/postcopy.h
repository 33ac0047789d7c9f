/*
 * postcopy.h - postcopy, both sides (digest §6, DESIGN §8).
 *
 * Source (source.c): at the switch, the list of pages the destination must
 * drop (POSTCOPY_DISCARD); then page requests (RP_REQ_PAGES): checked,
 * served on the preempt channel at once by the thread that read them, or
 * queued for the migration thread when there is no preempt channel; the
 * background push is RAM's ordinary sender.
 *
 * Destination: userfaultfd registration and the fault thread (uffd.c),
 * atomic placement behind the placement interface of mem.h (place.c), the
 * life cycle, discards, the preempt channel's loader and the statistics of
 * postcopy-blocktime (dest.c).
 *
 * Layering: postcopy uses ram (the source's dirty maps and sender), mem
 * (blocks, placement, prefault) and chan; it never calls the migration
 * thread or the loader: they call it, and it reaches them only through
 * the hooks they set (wake, channels to shut down).
 */
#ifndef LM_POSTCOPY_H
#define LM_POSTCOPY_H

#include "ram/ram.h"

/* ================================================================ source */

/* A page request waiting for the migration thread (no preempt channel). */
typedef struct lm_pc_req {
    uint32_t block;
    uint32_t count;
    uint64_t first_page;
} lm_pc_req;
#define LM_PC_REQ_QUEUE 1024
#define LM_PC_RECENT 256
/* Bytes of the main channel that may be in flight: the socket buffers of
 * both ends (4 MiB asked, which Linux doubles: 16 MiB), runs being written
 * and placed, and as much again for margin. */
#define LM_PC_INFLIGHT (40ull << 20)
/* Bytes per syscall of postcopy's bulk channel with preempt (chan.h). */
#define LM_PC_BULK_SLICE (128u << 10)

/*
 * Threads: the migration thread (switch, queue, completion); "lm-rp" and
 * "lm-rp-preempt" (requests).  Locks, in order (never the reverse):
 *   wlock -> ram->lock;   qlock alone.
 *  - qlock guards the queue, serving and the channel pointers; never held
 *    across I/O, so the migration thread's waits and queries never block
 *    on the network through it;
 *  - wlock: the one writer of the preempt channel (requested pages, then
 *    its EOS); held across that channel's writes, taken by nothing on the
 *    control path;
 *  - ram->lock (ram.h): the dirty maps and recent[] below; held only to
 *    claim, never across I/O.
 */
typedef struct lm_pc_src {
    lm_ram *ram;
    uint64_t *requests;         /* query's postcopy-requests (relaxed atomic) */
    const uint64_t *mfd_bytes;  /* multifd wire bytes (relaxed atomic) */
    const uint32_t *mfd_chans;  /* multifd channel count (relaxed atomic) */
    void (*wake)(void *opaque); /* a request was queued: wake the migration thread */
    void *wake_opaque;
    lm_out_counters *ctr; /* phase bytes (requested pages are postcopy bytes) */
    /* The preempt channel, or NULL: written by the migration thread under
     * qlock when its reader starts (before "lm-rp" at setup, after it in a
     * recovery) and at a recovery's start, fixed until the readers are
     * joined; "lm-rp" reads it under qlock, the migration thread and
     * "lm-rp-preempt" without. */
    lm_chan *pre;

    pthread_mutex_t qlock;
    /* --- qlock --- */
    lm_pc_req queue[LM_PC_REQ_QUEUE];
    unsigned head, tail; /* tail - head entries */
    bool serving;        /* POSTCOPY_RUN may have gone out */
    lm_chan *main;       /* the main channel (byte counts only) */
    uint32_t queued;     /* tail - head, also readable without qlock (atomic) */

    pthread_mutex_t wlock;
    /* --- wlock --- */
    bool preempt_done; /* EOS sent on it: no more writes */
    uint64_t resent;   /* pages sent again on the preempt channel */

    /* --- ram->lock: background runs claimed lately, with the channels'
     * byte counts when claimed: a requested page among them may still sit
     * in a queue or socket buffers, and is sent again on the preempt
     * channel. */
    struct {
        uint32_t block;
        bool mfd; /* handed to the multifd channels */
        uint64_t first, count, off;
        uint64_t mfd_off; /* multifd bytes when claimed */
    } recent[LM_PC_RECENT];
    uint64_t nrecent;

    /* "lm-rp-preempt" (migration thread starts and joins it) */
    pthread_t preq_thread;
    bool preq_running;
    lm_chan *preq_shutdown; /* shut down with the reason when a record is bad */
} lm_pc_src;

void lm_pc_src_init(lm_pc_src *s, lm_ram *ram);
void lm_pc_src_destroy(lm_pc_src *s);
/* A new migration (migration thread, before any request can come). */
void lm_pc_src_reset(lm_pc_src *s);
/* At the switch (guest stopped): the last sync, then one POSTCOPY_DISCARD
 * per run of pages still owed; RAM is in postcopy from now on. */
int lm_pc_src_send_discard(lm_pc_src *s, lm_out *o, lm_error *err);
/* Requests are served from now on: on the preempt channel when there is
 * one (s->pre), otherwise queued for the migration thread. */
void lm_pc_src_serve(lm_pc_src *s, lm_chan *main);
/* No more requests (the migration ended); the channels may go. */
void lm_pc_src_stop_serving(lm_pc_src *s);
/* One RP_REQ_PAGES payload from the destination (any thread). */
int lm_pc_src_request(lm_pc_src *s, const uint8_t *payload, uint32_t len, lm_error *err);
/* Migration thread, no preempt channel: sends the queued requests on o. */
int lm_pc_src_serve_queue(lm_pc_src *s, lm_out *o, lm_error *err);
/* Requests wait in the queue (no lock: for wait predicates). */
bool lm_pc_src_has_queued(lm_pc_src *s);
/* Postcopy completion: EOS on the preempt channel (after any requested
 * page being written). */
int lm_pc_src_end_preempt(lm_pc_src *s, lm_error *err);
/* "lm-rp-preempt": reads requests on the preempt channel's other direction;
 * a bad record shuts main down with the reason (the return-path reader
 * reports it). */
int lm_pc_src_reader_start(lm_pc_src *s, lm_chan *preempt, lm_chan *main, lm_error *err);
void lm_pc_src_reader_join(lm_pc_src *s);
/* Recovery (migration thread, no reader runs): forgets the queued
 * requests and the runs claimed lately (the destination's received bitmap
 * says what arrived; it asks again for what it waits on). */
void lm_pc_src_resume_prepare(lm_pc_src *s);
/* One RP_RECV_BITMAP payload ("lm-rp"): under ram->lock, the pages of the
 * chunk the destination still owes become dirty (sent again), the others
 * clean (it has them).  Checked against the block table. */
int lm_pc_src_recv_bitmap(lm_pc_src *s, const uint8_t *payload, uint32_t len, lm_error *err);
/* The ram hooks postcopy serves (ram.h: urgent, claimed); opaque: s. */
int lm_pc_src_urgent_hook(void *opaque, lm_out *o, lm_error *err);
void lm_pc_src_claimed_hook(void *opaque, unsigned bi, uint64_t first, uint64_t count,
                            const lm_out *o);

/* =========================================================== destination */

/* Placement per block (uffd.c decides at classify time):
 *  ANON:   private memory; missing faults, UFFDIO_COPY/ZEROPAGE, discard by
 *          MADV_DONTNEED;
 *  SHARED: shared memory without minor-fault support; missing faults,
 *          UFFDIO_COPY/ZEROPAGE, discard by MADV_REMOVE (punches the file);
 *  MINOR:  shared memory (shmem/memfd); discard unmaps only (MADV_DONTNEED
 *          keeps the page cache), data is received straight into the page
 *          cache through a second mapping and mapped with UFFDIO_CONTINUE. */
enum { LM_PC_ANON, LM_PC_SHARED, LM_PC_MINOR };

/* Destination fault latency (postcopy-blocktime): log2 µs buckets as
 * QEMU's 24-bucket histogram; bucket i counts latencies in [2^i, 2^(i+1))
 * µs (bucket 0 also takes < 1 µs). */
#define LM_PC_HIST_BUCKETS 24
/* p50/p99 come from a finer log-linear histogram, so that a query does
 * bounded work with no allocation: exact below 64 µs, then 16 buckets per
 * power of two, reported as the bucket's upper end (at most 6.25 % above
 * the true value, never below it), up to 2^32 µs. */
#define LM_PC_LAT_LINEAR 64
#define LM_PC_LAT_SUB 16
#define LM_PC_LAT_FINE (LM_PC_LAT_LINEAR + (32 - 6) * LM_PC_LAT_SUB)

typedef struct lm_pc_block {
    uint8_t kind; /* LM_PC_ANON, LM_PC_SHARED or LM_PC_MINOR (incoming thread) */
    /* --- lock --- */
    uint64_t *claimed;   /* MINOR: owed pages being written via the alias */
    uint64_t *owed;      /* discarded at the switch, not placed yet */
    uint64_t *requested; /* asked for once on the return path */
    uint64_t *fault_ns;  /* postcopy-blocktime: first fault time per page */
} lm_pc_block;

/*
 * Threads: "lm-incoming" (discards, listen at POSTCOPY_RUN, places the main
 * channel's pages); "lm-pc-fault" (fault messages: one RP_REQ_PAGES per
 * owed page, a zero page or a CONTINUE for a page that is not owed);
 * "lm-pc-preempt" (the preempt channel's loader); "lm-mfd-recv/N" (place
 * the multifd channels' background pages).  Locks: lock guards the "lock"
 * fields (the per-block maps, owed_pages, statistics, preempt flags),
 * never held across an ioctl that waits or a channel read; rp_lock
 * serialises the writers of the return path and is taken without lock.
 * Wake-ups: cond (placements, preempt end), quit_efd (fault thread).
 * Ownership: the uffd and both threads belong to the destination from
 * listen until lm_pc_dst_end() (completion) or lm_pc_dst_destroy(); after
 * a failure in postcopy they stay, so that the workload's missing pages
 * can still come after a recovery (the guest is never lost).
 */
typedef struct lm_pc_dst {
    lm_mem *mem;
    lm_place *place; /* switched to atomic placement at listen */
    pthread_mutex_t lock;
    pthread_cond_t cond;     /* a placement, or the end */
    pthread_mutex_t rp_lock; /* writers of the return path */
    int uffd;                /* -1 when not registered */
    int quit_efd;            /* wakes the fault thread */
    bool prepared;           /* maps allocated, prefault stopped (incoming thread) */
    bool classified;         /* block kinds decided, aliases mapped (incoming thread) */
    bool listening;          /* uffd registered (atomic) */
    /* lm_pc_dst_end with pages still owed (incoming thread / free): blocks
     * made inaccessible, and whether one could not be (uffd leaked). */
    unsigned fenced_blocks;
    bool fence_failed;
    pthread_t fault_thread;
    bool fault_running;
    /* Set by the loader before listen, fixed until lm_pc_dst_end: the
     * silence bound (x-postcopy-timeout-ms, 0 = none) the fault thread
     * watches the main channel for, and what it calls when the link is
     * gone (a silent main channel, a preempt channel that failed): the
     * core shuts every channel down, so the loaders fail and the
     * destination pauses.  Called with no postcopy lock held. */
    uint64_t timeout_ms;
    void (*link_down)(void *opaque, int code, const char *why);
    /* Bytes received so far on every channel (main, preempt, multifd),
     * or NULL: only the main channel counts.  The watchdog takes any of
     * them moving as a live link: after the end of stream the main
     * channel is quiet while multifd still delivers the push (its own
     * end comes after main's).  Called with no postcopy lock held. */
    uint64_t (*link_bytes)(void *opaque);
    void *link_opaque;
    /* Lazy restore (set before listen, fixed until lm_pc_dst_end): a
     * fault on an owed page is served by this call on the fault thread
     * (from a file) instead of a request on the return path; it reports
     * its own failures.  NULL: postcopy's requests. */
    int (*serve)(void *opaque, unsigned bi, uint64_t page, lm_error *err);
    void *serve_opaque;
    lm_pc_block blk[LM_RAM_MAX_BLOCKS];
    /* --- rp_lock --- */
    lm_chan *rp;     /* main channel (return path), borrowed */
    lm_chan *req;    /* page requests: the preempt channel, or NULL */
    uint64_t rp_gen; /* bumped when a return path is attached (recovery) */
    /* --- lock --- */
    bool switched;  /* POSTCOPY_RUN processed in this migration */
    bool rp_broken; /* a request could not be sent */
    bool blocktime; /* postcopy-blocktime on for this migration */
    uint64_t owed_pages;
    uint64_t requests, local_zero_faults, faults;
    uint64_t hist[LM_PC_HIST_BUCKETS];
    uint64_t lat_max_us, lat_count;
    uint64_t lat_fine[LM_PC_LAT_FINE]; /* remote fault latencies, for p50/p99 */
    /* preempt channel loader */
    lm_chan *preempt;
    pthread_t preempt_thread;
    bool preempt_running;
    bool preempt_stopping; /* lock: lm_pc_dst_preempt_stop shut it down */
    int preempt_ret;       /* lock: the preempt thread's result */
    lm_error preempt_err;  /* lock */
    bool preempt_eos;      /* lock */
} lm_pc_dst;

/* Probes userfaultfd missing mode on anonymous memory (set-capability). */
int lm_postcopy_probe(lm_error *err);

void lm_pc_dst_init(lm_pc_dst *d, lm_mem *mem, lm_place *place);
void lm_pc_dst_destroy(lm_pc_dst *d); /* unregisters, joins */
/* A new migrate-incoming: forget the last migration's figures. */
void lm_pc_dst_reset(lm_pc_dst *d);
/* Lazy restore, after lm_pc_dst_prepare and before listen: every page of
 * every block is owed, and what memory holds is dropped (each block the
 * way its kind needs), so that any access faults. */
int lm_pc_dst_owe_all(lm_pc_dst *d, lm_error *err);
/* Lazy restore that fails before the guest ever ran: nothing is owed any
 * more (nobody will read it), so lm_pc_dst_end unregisters without a
 * fence and the destination can load another file. */
void lm_pc_dst_disown(lm_pc_dst *d);
/* True when a page of [first, first + count) of block bi is owed (any
 * thread; takes lock). */
bool lm_pc_dst_owed_any(lm_pc_dst *d, unsigned bi, uint64_t first, uint64_t count);
/* Decides each block's kind, maps the aliases (idempotent; uffd.c). */
int lm_pc_dst_classify(lm_pc_dst *d, lm_error *err);
/* Allocates the owed/requested maps, stops the prefault thread
 * (idempotent per migration).  blocktime: keep fault latencies. */
int lm_pc_dst_prepare(lm_pc_dst *d, bool blocktime, lm_error *err);
/* A POSTCOPY_DISCARD record (header read): drops the local copy of the
 * owed pages it names. */
int lm_pc_dst_load_discard(lm_pc_dst *d, lm_chan *c, const lm_rec_hdr *h, bool blocktime,
                           lm_error *err);
/* POSTCOPY_RUN: registers RAM with userfaultfd, installs atomic placement,
 * starts "lm-pc-fault"; rp is the return path. */
int lm_pc_dst_listen(lm_pc_dst *d, lm_chan *rp, bool blocktime, lm_error *err);
/* Waits until nothing is owed, the preempt loader failed, or the preempt
 * channel ended (then it checks that nothing is owed). */
int lm_pc_dst_wait_placed(lm_pc_dst *d, lm_error *err);
/* Completion: stops the fault thread, unregisters (pages stay).  With
 * pages still owed (teardown of a paused destination) every block that
 * owes one is made PROT_NONE first: an access gets SIGSEGV, never a zero
 * or stale page (uffd.c, fence_owed). */
void lm_pc_dst_end(lm_pc_dst *d);
/* After lm_pc_dst_end, or a migration that ended without a switch (not
 * when paused): stops the prefault thread, unmaps the aliases. */
void lm_pc_dst_release(lm_pc_dst *d);
/* Starts "lm-pc-preempt" on an accepted preempt channel (owned now). */
int lm_pc_dst_preempt_start(lm_pc_dst *d, lm_chan *c, lm_error *err);
/* Shuts down and joins the preempt loader. */
void lm_pc_dst_preempt_stop(lm_pc_dst *d);
/* The main channel is going away: requests fail (and stay marked). */
void lm_pc_dst_detach_rp(lm_pc_dst *d);
/* recover.c, recovery on "lm-incoming" before the new return path is
 * attached: one RP_RECV_BITMAP per block and 64 Ki pages (what each still
 * owes) on c; *owed gets the pages owed in all. */
int lm_pc_dst_send_recv_bitmap(lm_pc_dst *d, lm_chan *c, uint64_t *owed, lm_error *err);
/* Recovery: rp is the return path from now on (the fault thread's
 * watchdog starts over on it); every page asked for and still owed is
 * asked for again on it. */
int lm_pc_dst_attach_rp(lm_pc_dst *d, lm_chan *rp, lm_error *err);
/* One return-path record under rp_lock, flushed. */
int lm_pc_dst_rp_send(lm_pc_dst *d, lm_chan *c, uint8_t type, const void *p, uint32_t len);
int lm_pc_dst_rp_send_status(lm_pc_dst *d, lm_chan *c, uint8_t type, int32_t status,
                             const char *msg);
/* Figures for query-migrate (no allocation, bounded work: any thread). */
void lm_pc_dst_query(lm_pc_dst *d, lm_info *out);

/* place.c: the atomic placement ops installed at listen (opaque: d). */
extern const lm_place_ops lm_pc_place_ops;
/* uffd.c, for place.c: records a placement's fault latency (lock held). */
void lm_pc_dst_placed_locked(lm_pc_dst *d, unsigned bi, uint64_t p, uint64_t q, uint64_t now);

#endif /* LM_POSTCOPY_H */
