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
 *
 * Locks (order: lock, then run_lock is never taken while holding lock):
 *  - m->lock guards every field in the "guarded by lock" group below and
 *    is held only briefly (never across I/O or host hooks);
 *  - m->run_lock serialises the host's stop/start hooks and runstate.
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
} lm_ram_block;

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
    uint64_t setup_time_ms;
    uint64_t total_time_ms;
    uint64_t start_ns, end_ns;
    uint64_t postcopy_requests;
    uint64_t multifd_bytes;
    uint32_t mfd_channels;     /* multifd channels of this migration */
    lm_multifd_chan_stats mfd_chan[LM_MULTIFD_MAX_CHANNELS];
} lm_stats;

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
    } ram;
    /* RAM loading state: incoming thread only. */
    struct {
        lm_fmt_block blocks[LM_RAM_MAX_BLOCKS]; /* the stream's table */
        uint32_t nblocks;
        uint8_t map[LM_RAM_MAX_BLOCKS];         /* stream index -> local block */
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
void lm_ram_mark_received(lm_ram_block *b, uint64_t page);
bool lm_ram_test_received(const lm_ram_block *b, uint64_t page);
void lm_ram_save_cleanup(lm_mig *m);

/* savevm.c */
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
