/*
 * internal.h - the migration object shared by the core, RAM, savevm and QMP
 * modules.  Not installed; the CLI never includes it.
 *
 * Threads of one lm_mig:
 *  - callers of the public API (the host, the QMP thread "lm-qmp");
 *  - "lm-migration": the source's migration thread (connect, setup, the
 *    iteration loop of seed 000, completion, cleanup);
 *  - "lm-rp": the source's return-path reader (SHUT, PONG, ERROR);
 *  - "lm-incoming": the destination's accept + load thread.
 *  - postcopy (src/postcopy/postcopy.c): the destination's "lm-pc-fault"
 *    (userfaultfd reader) and "lm-pc-preempt" (preempt channel loader);
 *    on the source, "lm-rp" serves page requests itself on the preempt
 *    channel when there is one.
 *
 * Locks (order: lock, then run_lock is never taken while holding lock):
 *  - m->lock guards every field in the "guarded by lock" group below and
 *    is held only briefly (never across I/O or host hooks);
 *  - m->run_lock serialises the host's stop/start hooks and runstate.
 *  - m->ram_lock (source): the dirty bitmaps and ram.dirty_pages once the
 *    return path may serve page requests (postcopy), the request queue,
 *    and writes to the preempt channel.  Held across a small write (one
 *    requested run).  Order: m->lock, then ram_lock; never the reverse.
 *  - m->pc.lock (destination): the postcopy owed/requested maps, counts
 *    and fault-latency stats; m->pc.rp_lock serialises writers of the
 *    return path (the incoming thread's PONG/SHUT, the fault thread's
 *    requests).  Neither is held across a read of a channel.
 * Counters in lm_stats are written by the migration thread with relaxed
 * atomics and read by query without the lock.
 */
#ifndef LM_CORE_INTERNAL_H
#define LM_CORE_INTERNAL_H

#include "livemig.h"
#include "chan/chan.h"
#include "format/format.h"
#include "ram/dirty.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define LM_MAX_LISTENERS 8
#define LM_PAGE_SIZE 4096u

static inline uint64_t lm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define LM_ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define LM_ATOMIC_SET(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define LM_ATOMIC_GET(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* ------------------------------------------------------------- bitmaps */

static inline uint64_t lm_bitmap_words(uint64_t nbits)
{
    return (nbits + 63) / 64;
}
static inline bool lm_bit_test(const uint64_t *b, uint64_t i)
{
    return (b[i / 64] >> (i % 64)) & 1;
}
static inline void lm_bit_set(uint64_t *b, uint64_t i)
{
    b[i / 64] |= 1ull << (i % 64);
}
static inline void lm_bit_clear(uint64_t *b, uint64_t i)
{
    b[i / 64] &= ~(1ull << (i % 64));
}
/* First set bit at or after `from`, or nbits. */
uint64_t lm_bitmap_next_set(const uint64_t *b, uint64_t nbits, uint64_t from);
uint64_t lm_bitmap_next_clear(const uint64_t *b, uint64_t nbits, uint64_t from);
uint64_t lm_bitmap_count(const uint64_t *b, uint64_t nbits);

/* ------------------------------------------------------------ RAM blocks */

/* Postcopy placement per RAM block (postcopy.c):
 *  ANON:   private memory; missing faults, UFFDIO_COPY/ZEROPAGE, discard by
 *          MADV_DONTNEED;
 *  SHARED: shared memory without minor-fault support; missing faults,
 *          UFFDIO_COPY/ZEROPAGE, discard by MADV_REMOVE (punches the file);
 *  MINOR:  shared memory (shmem/memfd); discard unmaps only (MADV_DONTNEED
 *          keeps the page cache), data is received straight into the page
 *          cache through a second mapping and mapped with UFFDIO_CONTINUE. */
enum { LM_PC_ANON, LM_PC_SHARED, LM_PC_MINOR };

typedef struct lm_ram_block {
    char name[LM_RAM_NAME_MAX + 1];
    uint8_t *base;
    uint64_t len;
    uint32_t page_size;
    uint64_t npages;
    /* source, owned by the migration thread while it runs */
    uint64_t *dirty;     /* pages still to send */
    uint64_t *populated; /* pass 1 only: pages populated at setup; NULL after */
    /* destination, owned by the incoming thread */
    uint64_t *received;  /* pages written at least once by a stream */
    uint64_t *prefaulted;/* 2 MiB chunks already populated for writing */
    /* destination, postcopy: how owed pages are dropped and placed, decided
     * at lm_postcopy_prepare() from the memory's kind (postcopy.c) */
    uint8_t pc_kind;     /* LM_PC_ANON, LM_PC_SHARED or LM_PC_MINOR */
    uint8_t *alias;      /* LM_PC_MINOR: second mapping of the same pages */
    uint64_t *alias_ready; /* 2 MiB chunks of alias with page tables (atomic) */
    /* destination, postcopy (m->pc.lock) */
    uint64_t *claimed;   /* LM_PC_MINOR: owed pages being written via alias */
    uint64_t *owed;      /* discarded at the switch, not placed yet */
    uint64_t *requested; /* asked for once on the return path */
    uint64_t *fault_ns;  /* postcopy-blocktime: first fault time per page */
} lm_ram_block;

/* Destination: pages per bit of the maps of populated 2 MiB chunks
 * (prefaulted, alias_ready), and the words such a map of b takes. */
#define LM_RAM_CHUNK_PAGES 512
static inline uint64_t lm_ram_chunk_words(const lm_ram_block *b)
{
    return lm_bitmap_words(b->npages / LM_RAM_CHUNK_PAGES + 1);
}

/* ------------------------------------------------------------ statistics */

typedef struct lm_stats {
    uint64_t transferred;
    uint64_t remaining;
    uint64_t duplicate;
    uint64_t normal;
    uint64_t dirty_pages_rate;
    uint64_t mbps_x1000;       /* mbps * 1000 */
    uint64_t dirty_sync_count;
    uint64_t pages_per_second;
    uint64_t precopy_bytes, downtime_bytes, postcopy_bytes;
    uint64_t bandwidth;        /* B/s, wire speed estimate */
    int64_t expected_downtime_ms;
    uint64_t downtime_us;
    uint64_t switch_pause_us;   /* postcopy: guest stopped until the destination ran */
    uint64_t setup_time_ms;
    uint64_t total_time_ms;
    uint64_t start_ns, end_ns;
    uint64_t postcopy_requests;
    uint64_t multifd_bytes;
    uint32_t mfd_channels;     /* multifd channels of this migration */
    lm_multifd_chan_stats mfd_chan[LM_MULTIFD_MAX_CHANNELS];
} lm_stats;

/* Destination fault latency (postcopy-blocktime): log2 µs buckets as
 * QEMU's 24-bucket histogram; bucket i counts latencies in [2^i, 2^(i+1))
 * µs (bucket 0 also takes < 1 µs). */
#define LM_PC_HIST_BUCKETS 24

/* Source: a page request waiting for the migration thread (no preempt). */
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

/* --------------------------------------------------------- savevm handlers */

typedef struct lm_out lm_out;

/* Mirror of QEMU's SaveVMHandlers (digest §4), the subset this issue
 * needs; RAM is one handler among (later) devices. */
typedef struct lm_handler_ops {
    const char *name;
    int (*save_setup)(void *opaque, lm_out *o, lm_error *err);
    /* Sends at most ~budget bytes; returns 1 when nothing is left now, 0
     * when more remains, < 0 on error. */
    int (*save_iterate)(void *opaque, lm_out *o, uint64_t budget, lm_error *err);
    void (*pending_estimate)(void *opaque, uint64_t *must_precopy, uint64_t *can_postcopy);
    int (*pending_exact)(void *opaque, lm_out *o, uint64_t *must_precopy,
                         uint64_t *can_postcopy, lm_error *err);
    int (*save_complete)(void *opaque, lm_out *o, lm_error *err);
    void (*save_cleanup)(void *opaque);
    bool (*has_postcopy)(void *opaque);
} lm_handler_ops;

/* A registered device (lm_device_register).  Identity and ops are set
 * before the first migration and never change; the per-migration fields
 * are written by the migration or incoming thread (relaxed atomics where
 * query reads them) and by the return-path thread for `ack`. */
typedef struct lm_device {
    char name[LM_DEVICE_NAME_MAX + 1];
    uint32_t instance;
    uint32_t version;
    const lm_device_ops *ops;
    void *opaque;
    /* read by lm_mig_query_devices: relaxed atomics */
    uint64_t pending;  /* source: last pending answer */
    uint64_t bytes;    /* source: device data sent; destination: received */
    int ack;           /* lm_device_ack_state */
    /* destination: incoming thread only */
    bool in_bound;     /* a START or FULL bound in_section_id to this device */
    uint32_t in_section_id;
    uint32_t in_version;
    bool in_started, in_ended;
    bool in_ready;     /* load_state answered LM_DEVICE_LOAD_READY */
    bool in_waited;    /* the switchover waits for this device's approval */
} lm_device;

/* The sink of lm_device_put: which device and which section type. */
struct lm_device_out {
    lm_out *o;
    lm_device *dev;
    uint32_t section_id;
    uint8_t type;      /* LM_REC_SECTION_PART or LM_REC_SECTION_FULL */
};

typedef struct lm_handler {
    const lm_handler_ops *ops; /* RAM; NULL for a device */
    void *opaque;
    lm_device *dev;            /* a device; NULL for RAM */
    uint32_t section_id;
    uint64_t sent;   /* bytes this handler sent (fair-share accounting) */
} lm_handler;

#define LM_MAX_HANDLERS (1 + LM_MAX_DEVICES)

/* --------------------------------------------------------- the object */

typedef enum lm_role { LM_ROLE_NONE_, LM_ROLE_SOURCE, LM_ROLE_DEST } lm_role;

struct lm_mig {
    lm_host_ops ops;
    void *host;

    pthread_mutex_t run_lock; /* serialises host hooks and runstate */
    lm_runstate runstate;     /* guarded by run_lock; read atomically */

    /* Taken around every call of the listeners, never while holding
     * lock: events reach listeners one at a time and in the order the
     * state changed (the pending statuses queue under lock, whoever emits
     * next delivers them in order), and a removed listener is never
     * called after lm_mig_remove_listener() returns. */
    pthread_mutex_t emit_lock;

    pthread_mutex_t lock;
    pthread_cond_t cond;      /* signalled on every change below */
    /* --- guarded by lock --- */
    lm_status status;
    lm_role role;
    uint64_t caps;
    lm_params params;
    uint64_t params_gen;      /* bumped by set_params: migration thread reloads */
    lm_error error;           /* first error of the current/last migration */
    bool thread_running;      /* migration or incoming thread exists */
    pthread_t thread;
    pthread_t rp_thread;
    bool rp_running;
    lm_chan *chan;            /* main channel while one is up */
    /* Multifd channels while they are up, so cancel can shut them down
     * (their threads may be blocked in I/O on them). */
    lm_chan *aux_chans[LM_MULTIFD_MAX_CHANNELS];
    unsigned naux_chans;
    int connect_fd;           /* socket being connected, -1 */
    int listen_fd;            /* incoming listener, -1 */
    char socket_address[128];
    bool continue_requested;  /* migrate-continue for pre-switchover */
    bool cancel_requested;
    bool eos_sent;            /* switchover committed: SHUT decides */
    bool shut_received;
    lm_status_msg shut;       /* the destination's verdict */
    bool switchover_acked;
    bool start_postcopy;      /* migrate-start-postcopy was called */
    bool postcopy_run_acked;  /* source: RP_PONG for the PING after POSTCOPY_RUN */
    lm_ram_block blocks[LM_RAM_MAX_BLOCKS];
    unsigned nblocks;
    bool ram_frozen;          /* a migration started: no more lm_ram_add */
    struct {
        lm_event_fn fn;
        void *opaque;
    } listeners[LM_MAX_LISTENERS];
    unsigned nlisteners;
    lm_status ev_ring[32];    /* MIGRATION events not yet delivered */
    unsigned ev_head, ev_tail;
    /* --- end of lock group --- */

    lm_stats stats;           /* relaxed atomics, see above */

    pthread_mutex_t ram_lock; /* source postcopy, see the top of this file */
    /* Source postcopy (ram_lock): requests for the migration thread when
     * there is no preempt channel. */
    struct {
        lm_pc_req queue[LM_PC_REQ_QUEUE];
        unsigned head, tail;      /* tail - head entries */
        bool serving;             /* POSTCOPY_RUN may have gone out */
        lm_chan *preempt;         /* requested pages go here when set */
        bool preempt_done;        /* EOS sent on it: no more writes */
        /* Background runs claimed lately, with the main channel's (and
         * the multifd channels') byte counts when claimed: a requested
         * page among them may still sit in a queue or socket buffers, and
         * is sent again on the preempt channel. */
        struct {
            uint32_t block;
            bool mfd;             /* handed to the multifd channels */
            uint64_t first, count, off;
            uint64_t mfd_off;     /* stats.multifd_bytes when claimed */
        } recent[LM_PC_RECENT];
        uint64_t nrecent;         /* runs recorded so far */
        lm_chan *main;            /* the main channel (byte counts only) */
        uint64_t resent;          /* pages sent again that way */
    } pcs;
    /* Destination postcopy, see postcopy.c. */
    struct lm_pc_dest {
        pthread_mutex_t lock;
        pthread_cond_t cond;      /* a placement, or the end */
        pthread_mutex_t rp_lock;  /* writers of the return path */
        int uffd;                 /* -1 when not registered */
        int quit_efd;             /* wakes the fault thread */
        bool switched;            /* lock: POSTCOPY_RUN processed in this migration */
        bool prepared;            /* maps allocated, prefault stopped (incoming thread) */
        bool classified;          /* block kinds decided, aliases mapped (incoming thread) */
        bool listening;           /* uffd registered (atomic: preempt thread reads) */
        pthread_t fault_thread;
        bool fault_running;
        lm_chan *rp;              /* main channel (return path), borrowed */
        lm_chan *req;             /* page requests: the preempt channel, or NULL (rp_lock) */
        bool rp_broken;           /* a request could not be sent (lock) */
        bool blocktime;           /* postcopy-blocktime on for this migration */
        uint64_t owed_pages;      /* lock */
        /* stats (lock) */
        uint64_t requests, local_zero_faults, faults;
        uint64_t mfd_pages;       /* relaxed atomic: multifd packets' pages after RUN */
        uint64_t hist[LM_PC_HIST_BUCKETS];
        uint64_t lat_max_us, lat_count;
        uint32_t *lat;            /* each remote fault's latency, µs, for p50/p99 */
        uint32_t lat_n, lat_cap;
        /* preempt channel loader */
        lm_chan *preempt;
        pthread_t preempt_thread;
        bool preempt_running;
        int preempt_ret;          /* the preempt thread's result */
        lm_error preempt_err;
        bool preempt_eos;         /* lock */
    } pc;

    /* RAM sending state: migration thread only. */
    struct {
        uint64_t dirty_pages;     /* bits set in all blocks' dirty maps */
        unsigned cur_block;       /* page-search cursor */
        uint64_t cur_page;
        uint64_t period_start_ns; /* dirty-rate period (>= 1 s) */
        uint64_t period_dirty;
        uint64_t last_sync_ns;
        uint64_t last_sync_cost_ns;
        uint64_t dirty_after_sync; /* bytes remaining right after the last sync */
        bool tracking;            /* dirty tracker running */
        bool postcopy_capable;    /* postcopy-ram was on at setup */
        bool postcopy;            /* switched: RAM is sent postcopy */
    } ram;
    /* RAM loading state: incoming thread only. */
    struct {
        lm_fmt_block blocks[LM_RAM_MAX_BLOCKS]; /* the stream's table */
        uint32_t nblocks;
        uint8_t map[LM_RAM_MAX_BLOCKS];         /* stream index -> local block */
        uint32_t rmap[LM_RAM_MAX_BLOCKS];       /* local block -> stream index */
        bool have_blocks;
        /* "lm-prefault": populates the destination's RAM in the background
         * from migrate-incoming on (like QEMU's -mem-prealloc), so page
         * population stays off the receive path.  Chunk bits in
         * blocks[].prefaulted are set with atomic ORs by it and by the
         * incoming thread. */
        pthread_t prefault_thread;
        bool prefault_running; /* thread exists (incoming/API threads) */
        bool prefault_stop;    /* atomic */
    } in;
    lm_dirty *dirty;          /* migration thread only */
    lm_handler handlers[LM_MAX_HANDLERS]; /* migration thread only */
    unsigned nhandlers;
    unsigned rotor;           /* iteration's starting handler: migration thread */
    /* Registered devices: the array is filled before the first migration
     * (under lock, refused once ram_frozen) and read-only afterwards, so
     * the library's threads read identities and ops without the lock. */
    lm_device devices[LM_MAX_DEVICES];
    unsigned ndevices;
};

/* state.c: the one setter.  Compare-and-swap from `from` (or from any
 * state when from == LM_STATUS__MAX) to `to`; fails (returns false) when
 * the current state differs or the transition is not in the table.
 * Emits MIGRATION when the "events" capability is on. */
bool lm_state_set(lm_mig *m, lm_status from, lm_status to);
/* Same, with m->lock already held; returns whether it changed, and the
 * caller must call lm_emit_status() after unlocking. */
bool lm_state_set_locked(lm_mig *m, lm_status from, lm_status to);
bool lm_state_transition_valid(lm_status from, lm_status to);
bool lm_status_is_active(lm_status s); /* a migration is in progress */
bool lm_status_is_postcopy(lm_status s);

/* events (mig.c) */
void lm_emit(lm_mig *m, const lm_event *ev);
/* Delivers the MIGRATION events queued by lm_state_set_locked(), in order.
 * Call after dropping m->lock whenever a state may have changed. */
void lm_emit_status(lm_mig *m, lm_status s);
void lm_emit_pass(lm_mig *m, uint64_t pass);

/* runstate (runstate.c): set with run_lock held by the caller where noted */
void lm_runstate_set(lm_mig *m, lm_runstate r);
/* Stops the host for switchover: hook + FINISH_MIGRATE; returns whether it
 * was running before (so a failure restarts it). */
bool lm_vm_stop_for_migration(lm_mig *m, lm_runstate to);
void lm_vm_start_after_migration(lm_mig *m, lm_runstate to);

/* Channels cancel must shut down besides m->chan (mig.c; take m->lock).
 * add returns false when cancel was already requested. */
bool lm_mig_aux_chan_add(lm_mig *m, lm_chan *c);
void lm_mig_aux_chans_clear(lm_mig *m);

/* Records the first error of this migration (under lock). */
void lm_mig_set_error(lm_mig *m, const lm_error *err);

/* outgoing.c / incoming.c */
int lm_outgoing_start(lm_mig *m, const char *uri, lm_error *err);
int lm_incoming_start(lm_mig *m, const char *uri, lm_error *err);

/* params.c */
int lm_params_check(const lm_params *p, uint64_t which, lm_error *err);
int lm_caps_check(uint64_t caps, lm_error *err);

/* ----------------------------------------------------- the outgoing side */

/* What handlers write into: the main channel plus accounting. */
struct lm_mfd_send;
struct lm_out {
    lm_mig *m;
    lm_chan *chan;
    bool last_stage;       /* VM stopped (downtime bytes) */
    struct lm_mfd_send *mfd;   /* multifd channels, NULL without multifd */
    lm_zero_page_detection zpd;
    bool postcopy;         /* after the switch (postcopy bytes) */
};

/* Bytes on the wire so far: the main channel plus every multifd channel
 * (rate limiting and bandwidth count them all). */
uint64_t lm_out_bytes(const lm_out *o);

/* Writes one record with a small payload (copied). */
int lm_out_record(lm_out *o, uint8_t type, const void *payload, uint32_t len);

/* ram.c */
extern const lm_handler_ops lm_ram_handler_ops;
/* Destination: handles RAM_BLOCKS / RAM_PAGES / RAM_ZERO / RAM_PASS. */
int lm_ram_load_record(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err);
int lm_ram_load_setup(lm_mig *m, lm_error *err);
/* Allocates the destination's maps and starts / stops "lm-prefault". */
int lm_ram_incoming_prepare(lm_mig *m, lm_error *err);
void lm_ram_prefault_stop(lm_mig *m);
/* Destination, incoming or multifd threads: populates the 2 MiB chunks of
 * pages [first, first+count) not yet populated; marks / tests a page as
 * written by a stream (atomic). */
void lm_ram_prefault_pages(lm_ram_block *b, uint64_t first, uint64_t count);
/* The same for a view of b's pages (e.g. a postcopy alias) whose populated
 * 2 MiB chunks are marked in ready (lm_ram_chunk_words(b) words). */
void lm_ram_prefault_view(lm_ram_block *b, uint8_t *view, uint64_t *ready, uint64_t first,
                          uint64_t count);
void lm_ram_mark_received(lm_ram_block *b, uint64_t page);
bool lm_ram_test_received(const lm_ram_block *b, uint64_t page);
void lm_ram_save_cleanup(lm_mig *m);

/* ram.c, source postcopy */
/* At the switch (guest stopped): the last sync, then one POSTCOPY_DISCARD
 * per run of pages still owed.  Marks RAM as being in postcopy. */
int lm_ram_postcopy_send_discard(lm_mig *m, lm_out *o, lm_error *err);
/* Sends the still-owed pages of a requested range on o->chan (no flush),
 * with m->ram_lock held by the caller.  The range must be checked. */
int lm_ram_postcopy_send_requested(lm_mig *m, lm_out *o, const lm_pc_req *r, lm_error *err);
/* Migration thread, no preempt: serves the queued requests on o->chan. */
int lm_ram_postcopy_serve_queue(lm_mig *m, lm_out *o, lm_error *err);
/* Destination: RAM_PAGES / RAM_ZERO once POSTCOPY_RUN was processed
 * (placement through userfaultfd).  tmp holds LM_RAM_MAX_RUN pages. */
int lm_ram_postcopy_load_record(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, uint8_t *tmp,
                                lm_error *err);
int lm_ram_postcopy_load_discard(lm_mig *m, lm_chan *c, const lm_rec_hdr *h, lm_error *err);

/* postcopy.c (destination) */
/* Probes userfaultfd missing mode on anonymous memory (set-capability). */
int lm_postcopy_probe(lm_error *err);
void lm_postcopy_init(lm_mig *m);    /* at lm_mig_new */
void lm_postcopy_destroy(lm_mig *m); /* at lm_mig_free: unregisters, joins */
/* Allocates the owed/requested maps (idempotent per migration). */
int lm_postcopy_prepare(lm_mig *m, lm_error *err);
/* Drops the local copy of owed pages [first, first+count) of block b. */
int lm_postcopy_discard(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                        lm_error *err);
/* POSTCOPY_RUN: registers RAM with userfaultfd, starts "lm-pc-fault". */
int lm_postcopy_listen(lm_mig *m, lm_chan *rp, lm_error *err);
/* Places [first, first+count) of block b: data (count pages) or zeros
 * when data is NULL.  Pages placed already (no longer owed) are skipped;
 * on LM_PC_MINOR blocks so are pages another thread claimed.  Any
 * thread. */
int lm_postcopy_place(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                      const uint8_t *data, lm_error *err);
/* LM_PC_MINOR blocks: reads count pages of data from c straight into the
 * page cache of the owed pages this thread claims (scratch, LM_RAM_MAX_RUN
 * pages, takes the others) and maps them.  count <= LM_RAM_MAX_RUN. */
int lm_postcopy_recv_place(lm_mig *m, lm_chan *c, lm_ram_block *b, uint64_t first,
                           uint64_t count, uint8_t *scratch, lm_error *err);
/* Waits until nothing is owed, the preempt loader failed, or the preempt
 * channel ended (then it checks that nothing is owed). */
int lm_postcopy_wait_placed(lm_mig *m, lm_error *err);
/* Completion: stops the fault thread and unregisters (pages stay). */
void lm_postcopy_end(lm_mig *m);
/* After lm_postcopy_end, or a migration that ended without a switch (not
 * when paused): stops the prefault thread, unmaps the aliases. */
void lm_postcopy_release(lm_mig *m);
/* Decides each block's postcopy kind, maps aliases (idempotent). */
int lm_postcopy_classify(lm_mig *m, lm_error *err);

/* Starts "lm-pc-preempt" on an accepted preempt channel (owned now). */
int lm_postcopy_preempt_start(lm_mig *m, lm_chan *c, lm_error *err);
/* Shuts down and joins the preempt loader (returns its error). */
void lm_postcopy_preempt_stop(lm_mig *m);
/* Lowers the calling thread's CPU priority (nice 10) for the background
 * push of postcopy, so that the threads on a fault's path win the CPU. */
void lm_postcopy_background_thread(void);
/* Bytes per syscall of postcopy's bulk channel with preempt (chan.h). */
#define LM_PC_BULK_SLICE (128u << 10)
/* The main channel is going away: requests fail (and stay marked). */
void lm_postcopy_detach_rp(lm_mig *m);
void lm_postcopy_query(lm_mig *m, lm_info *out);
/* Writes one return-path record under pc.rp_lock and flushes. */
int lm_postcopy_rp_write(lm_mig *m, lm_chan *c, uint8_t type, const void *p, uint32_t len);

/* savevm.c */
/* which: 0 all handlers, 1 those without postcopy support (at the switch),
 * 2 those with it (at postcopy completion). */
int lm_savevm_complete_some(lm_mig *m, lm_out *o, int which, lm_error *err);
int lm_savevm_setup(lm_mig *m, lm_out *o, lm_error *err);
void lm_savevm_pending(lm_mig *m, bool exact, lm_out *o, uint64_t *must, uint64_t *can,
                       lm_error *err);
int lm_savevm_iterate(lm_mig *m, lm_out *o, uint64_t budget, bool in_postcopy, lm_error *err);
int lm_savevm_complete(lm_mig *m, lm_out *o, lm_error *err);
void lm_savevm_cleanup(lm_mig *m);
/* Source, switchover-ack: the section id of device i (its index). */
lm_device *lm_savevm_device_by_section(lm_mig *m, uint32_t section_id);

/* Destination side of devices (savevm.c, incoming thread). */
typedef struct lm_loadvm {
    bool ack_feature;     /* SWITCHOVER_ACK negotiated in HELLO */
    bool ack_devices_seen;
    unsigned ack_waiting; /* devices whose approval is still missing */
    bool ack_sent;
    uint8_t *buf;         /* section payload buffer, grown up to 16 MiB */
    size_t cap;
    bool cleaned;         /* load_cleanup already ran for this stream */
} lm_loadvm;
int lm_loadvm_setup(lm_mig *m, lm_loadvm *lv, lm_error *err);
/* Loads one section record (header already read); may write RP records. */
int lm_loadvm_section(lm_mig *m, lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err);
int lm_loadvm_ack_devices(lm_mig *m, lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h,
                          lm_error *err);
/* At EOS: every started device got its END. */
int lm_loadvm_eos(lm_mig *m, lm_loadvm *lv, lm_error *err);
/* Once per stream (later calls are no-ops). */
void lm_loadvm_cleanup(lm_mig *m, lm_loadvm *lv);

#endif /* LM_CORE_INTERNAL_H */
