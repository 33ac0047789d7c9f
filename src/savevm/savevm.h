/*
 * savevm.h - state handlers and the drivers that run them (QEMU's
 * SaveVMHandlers and savevm.c, digest §4): RAM is one handler among the
 * host's devices.  The source drivers (savevm.c) run setup, pending,
 * iterate, complete and cleanup over every handler; the destination drivers
 * (loadvm.c) load device sections and run the switchover-ack handshake
 * (docs/devices.md).
 *
 * Handlers write records into an lm_out: the stream they are part of (a
 * channel, the phase for accounting, multifd when on).  They never see the
 * migration object.
 *
 * Threads: the source drivers run on the migration thread, the load drivers
 * on the incoming thread.  The device table is filled before the first
 * migration (the caller serialises lm_savevm_register with migrations) and
 * read-only afterwards; per-migration device counters are relaxed atomics;
 * a device's `ack` is written by the migration thread at setup and by the
 * return-path thread afterwards (atomics).
 */
#ifndef LM_SAVEVM_H
#define LM_SAVEVM_H

#include "livemig.h"
#include "chan/record.h"
#include "util/clock.h"

/* Bytes of a migration by phase (query-migrate's precopy-, downtime- and
 * postcopy-bytes): relaxed atomics. */
typedef struct lm_out_counters {
    uint64_t precopy_bytes, downtime_bytes, postcopy_bytes;
} lm_out_counters;

struct lm_mfd_send;
struct lm_mapped;

/* What handlers write into. */
typedef struct lm_out {
    lm_chan *chan;            /* the main channel (the preempt one for requested pages) */
    struct lm_mfd_send *mfd;  /* multifd channels, NULL without multifd */
    struct lm_mapped *mapped; /* mapped-ram file: pages at fixed offsets, or NULL */
    lm_zero_page_detection zpd;
    bool last_stage; /* the guest is stopped: downtime bytes */
    bool postcopy;   /* after the switch: postcopy bytes */
    lm_out_counters *ctr;
    const uint64_t *mfd_bytes; /* multifd wire bytes (relaxed atomic) or NULL */
} lm_out;

/* Bytes on the wire so far: the channel plus every multifd channel (rate
 * limiting and the bandwidth estimate count them all). */
static inline uint64_t lm_out_bytes(const lm_out *o)
{
    return lm_chan_bytes_written(o->chan) + (o->mfd_bytes ? LM_ATOMIC_GET(o->mfd_bytes) : 0);
}

/* Counts bytes into the current phase. */
static inline void lm_out_account(const lm_out *o, uint64_t bytes)
{
    if (o->postcopy)
        LM_ATOMIC_ADD(&o->ctr->postcopy_bytes, bytes);
    else if (o->last_stage)
        LM_ATOMIC_ADD(&o->ctr->downtime_bytes, bytes);
    else
        LM_ATOMIC_ADD(&o->ctr->precopy_bytes, bytes);
}

/* The subset of QEMU's SaveVMHandlers this engine needs, for handlers
 * built into the library (RAM). */
typedef struct lm_handler_ops {
    const char *name;
    int (*save_setup)(void *opaque, lm_out *o, lm_error *err);
    /* Sends at most ~budget bytes; returns 1 when nothing is left now, 0
     * when more remains, < 0 on error. */
    int (*save_iterate)(void *opaque, lm_out *o, uint64_t budget, lm_error *err);
    void (*pending_estimate)(void *opaque, uint64_t *must_precopy, uint64_t *can_postcopy);
    int (*pending_exact)(void *opaque, lm_out *o, uint64_t *must_precopy, uint64_t *can_postcopy,
                         lm_error *err);
    int (*save_complete)(void *opaque, lm_out *o, lm_error *err);
    void (*save_cleanup)(void *opaque);
    bool (*has_postcopy)(void *opaque);
} lm_handler_ops;

/* A registered device (lm_device_register).  Identity and ops are set
 * before the first migration and never change. */
typedef struct lm_device {
    char name[LM_DEVICE_NAME_MAX + 1];
    uint32_t instance;
    uint32_t version;
    const lm_device_ops *ops;
    void *opaque;
    /* read by queries: relaxed atomics */
    uint64_t pending; /* source: last pending answer */
    uint64_t bytes;   /* source: device data sent; destination: received */
    int ack;          /* lm_device_ack_state */
    /* destination: incoming thread only */
    bool in_bound; /* a START or FULL bound in_section_id to this device */
    uint32_t in_section_id;
    uint32_t in_version;
    bool in_started, in_ended;
    bool in_full;   /* a SECTION_FULL was loaded */
    bool in_ready;  /* load_state answered LM_DEVICE_LOAD_READY */
    bool in_waited; /* the switchover waits for this device's approval */
} lm_device;

/* The sink of lm_device_put: which device and which section type. */
struct lm_device_out {
    lm_out *o;
    lm_device *dev;
    uint32_t section_id;
    uint8_t type; /* LM_REC_SECTION_PART or LM_REC_SECTION_FULL */
};

typedef struct lm_handler {
    const lm_handler_ops *ops; /* a built-in handler; NULL for a device */
    void *opaque;
    lm_device *dev; /* a device; NULL for a built-in handler */
    uint32_t section_id;
    uint64_t sent; /* bytes this handler sent (fair-share accounting) */
} lm_handler;

#define LM_MAX_HANDLERS (1 + LM_MAX_DEVICES)

typedef struct lm_savevm {
    lm_device devices[LM_MAX_DEVICES]; /* read-only once a migration started */
    unsigned ndevices;
    /* migration thread only */
    lm_handler handlers[LM_MAX_HANDLERS];
    unsigned nhandlers;
    unsigned rotor; /* iteration's starting handler */
} lm_savevm;

/* Registry (savevm.c).  The caller holds whatever serialises it with
 * migrations and queries. */
int lm_savevm_register(lm_savevm *sv, const char *name, uint32_t instance, uint32_t version,
                       const lm_device_ops *ops, void *opaque, lm_error *err);
unsigned lm_savevm_query(lm_savevm *sv, unsigned n, lm_device_info *out, unsigned max);

/* Source drivers (savevm.c, migration thread).  The built-in handler
 * (RAM) comes first, then every iterable device.  ack: switchover-ack is on
 * (ACK_DEVICES goes out at setup). */
int lm_savevm_setup(lm_savevm *sv, const lm_handler_ops *ram, void *ram_opaque, bool ack, lm_out *o,
                    lm_error *err);
void lm_savevm_pending(lm_savevm *sv, bool exact, lm_out *o, uint64_t *must, uint64_t *can,
                       lm_error *err);
/* Round-robin over the active handlers with fair shares of budget (seed
 * 001); 1 when none has data left now. */
int lm_savevm_iterate(lm_savevm *sv, lm_out *o, uint64_t budget, bool in_postcopy, lm_error *err);
/* Postcopy splits completion in two (digest §6.2 step 5, §3.10). */
typedef enum {
    LM_COMPLETE_ALL,         /* precopy switchover */
    LM_COMPLETE_NO_POSTCOPY, /* at the switch to postcopy */
    LM_COMPLETE_POSTCOPY,    /* at postcopy's end */
    LM_COMPLETE_DEVICES,     /* background snapshot: every device, not RAM */
} lm_complete_which;
int lm_savevm_complete(lm_savevm *sv, lm_out *o, lm_complete_which which, lm_error *err);
void lm_savevm_cleanup(lm_savevm *sv);
/* Switchover-ack: the iterable device of a section id, or NULL. */
lm_device *lm_savevm_device_by_section(lm_savevm *sv, uint32_t section_id);

/* Destination (loadvm.c, incoming thread). */
typedef struct lm_loadvm {
    lm_savevm *sv;
    bool ack_feature; /* SWITCHOVER_ACK negotiated in HELLO */
    bool ack_devices_seen;
    unsigned ack_waiting; /* devices whose approval is still missing */
    bool ack_sent;
    bool switchover_seen; /* SWITCHOVER_START came */
    uint8_t *buf;         /* section payload buffer, grown up to 16 MiB */
    size_t cap;
    bool cleaned; /* load_cleanup already ran for this stream */
    /* called once RP_SWITCHOVER_ACK went out (the host's event) */
    void (*on_ack)(void *opaque);
    void *opaque;
} lm_loadvm;
int lm_loadvm_setup(lm_loadvm *lv, lm_error *err);
/* Loads one section record (header already read); may write RP records. */
int lm_loadvm_section(lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err);
int lm_loadvm_ack_devices(lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err);
/* SWITCHOVER_START: the source stopped the guest; once per stream. */
int lm_loadvm_switchover(lm_loadvm *lv, lm_error *err);
/* Before the guest may run here, the stream must have carried the
 * switchover marker and the whole state of every registered device: its
 * SECTION_START..END when it is iterable here, its SECTION_FULL when it has
 * save_state (issue 12, defect 2: HELLO + RAM_BLOCKS + EOS was accepted as
 * a complete migration).  At POSTCOPY_RUN (stage LM_LOADVM_AT_RUN) this
 * holds for the devices that cannot run in postcopy; at the end of a
 * postcopy stream (LM_LOADVM_AT_POSTCOPY_EOS) for the others; at the end of
 * a precopy stream (LM_LOADVM_AT_EOS) for all, and the switchover-ack
 * handshake must have happened when negotiated. */
typedef enum lm_loadvm_stage {
    LM_LOADVM_AT_EOS,
    LM_LOADVM_AT_RUN,
    LM_LOADVM_AT_POSTCOPY_EOS,
} lm_loadvm_stage;
int lm_loadvm_check_complete(lm_loadvm *lv, lm_loadvm_stage stage, lm_error *err);
/* Once per stream (later calls are no-ops). */
void lm_loadvm_cleanup(lm_loadvm *lv);

#endif /* LM_SAVEVM_H */
