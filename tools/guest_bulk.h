/*
 * guest_bulk.h - the "bulk" sample device of `livemig guest`: a VFIO-like
 * iterable device with its own memory, initial data and dirty tracking
 * (docs/devices.md).  Uses only the public header.
 */
#ifndef LM_TOOLS_GUEST_BULK_H
#define LM_TOOLS_GUEST_BULK_H

#include "livemig.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct bulk_cfg {
    uint64_t size;       /* device memory, a multiple of 4 KiB, 4 KiB .. 1 GiB */
    uint64_t initial;    /* initial data: the first `initial` bytes, <= size */
    uint64_t dirty_rate; /* bytes/s the device writes while running, 0 = none */
    bool ack;            /* supports switchover-ack (ack=off: an older device) */
    uint32_t version;    /* state format version announced on the wire */
} bulk_cfg;

typedef struct bulk bulk;

/* Parses "size=SIZE,initial=SIZE,dirty-rate=RATE[,ack=on|off][,version=N]"
 * (the part after "bulk,"); on error returns false with a message in err. */
bool bulk_parse(const char *spec, bulk_cfg *cfg, lm_error *err);

/* Maps the memory and writes the initial data (version 1) unless
 * `incoming` (a destination starts empty).  The writer thread starts
 * parked when `incoming`. */
int bulk_new(const bulk_cfg *cfg, uint32_t instance, bool incoming, uint64_t seed, bulk **out,
             lm_error *err);
int bulk_register(bulk *b, lm_mig *m, lm_error *err);
/* Host hooks: stop returns once the device's writer is parked. */
void bulk_stop(bulk *b);
void bulk_start(bulk *b);
/* Stops and joins the writer, unmaps.  NULL is a no-op. */
void bulk_free(bulk *b);

/* Device stopped: checks every chunk against its version (0 = zero). */
bool bulk_verify(bulk *b, uint64_t *bad, int64_t *first_bad);
/* For x-guest-stats: writes, initial data loaded (destination). */
uint64_t bulk_writes(bulk *b);
bool bulk_initial_loaded(bulk *b);
const bulk_cfg *bulk_config(bulk *b);

#endif
