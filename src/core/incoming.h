/*
 * incoming.h - the destination's migration, shared by the files that make
 * it up: the thread, accept and HELLO (incoming.c) and the load loop
 * (loader.c).  Internal to core.
 */
#ifndef LM_CORE_INCOMING_H
#define LM_CORE_INCOMING_H

#include "core/internal.h"

/* One incoming migration, owned by its thread "lm-incoming". */
typedef struct lm_incoming {
    lm_mig *m;
    int lfd;
    lm_chan *chan; /* the main channel once known */
    /* Channel identification. */
    bool have_session;
    uint8_t session[LM_SESSION_ID_LEN];
    uint64_t features;
    unsigned nmfd; /* multifd channels of the session */
    unsigned nmfd_have;
    lm_chan *mfd_chans[LM_MULTIFD_MAX_CHANNELS];
    lm_mfd_recv *mfd;
    lm_chan *preempt; /* postcopy-preempt channel until started */
    bool have_preempt;
    bool blocktime;  /* postcopy-blocktime (fixed at start) */
    lm_loadvm lv;    /* device sections and switchover-ack */
    bool discarding; /* a POSTCOPY_DISCARD came: only more, or RUN */
    bool running;    /* POSTCOPY_RUN processed: postcopy placement */
    uint8_t *tmp;    /* a run of pages before placement (postcopy) */
} lm_incoming;

/* loader.c: reads and loads the stream until EOS (0) or an error. */
int lm_incoming_load(lm_incoming *in, lm_error *err);

#endif /* LM_CORE_INCOMING_H */
