/*
 * incoming.h - the destination's migration, shared by the files that make
 * it up: the thread, accept and HELLO (incoming.c) and the load loop
 * (loader.c).  Internal to core.
 */
#ifndef LM_CORE_INCOMING_H
#define LM_CORE_INCOMING_H

#include "core/internal.h"
#include "file/lazy.h"

/* One incoming migration, owned by its thread "lm-incoming" (left in
 * m->paused_in when it paused, for the recovery's thread). */
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
    bool blocktime;   /* postcopy-blocktime (fixed at start) */
    lm_loadvm lv;     /* device sections and switchover-ack */
    bool discarding;  /* a POSTCOPY_DISCARD came: only more, or RUN */
    bool running;     /* POSTCOPY_RUN processed: postcopy placement */
    bool run_ping;    /* the next PING is the one after POSTCOPY_RUN */
    uint8_t *tmp;     /* a run of pages before placement (postcopy) */
    bool resuming;    /* migrate-recover: accept the paused session's source only */
    bool resume_wait; /* recovering: POSTCOPY_RESUME not processed yet */
    bool file;        /* file: URI: lfd is the file; nothing is ever written back */
    bool mapped_done; /* mapped-ram: the MAPPED_RAM record was loaded */
    /* x-lazy-restore (lazy.c): the capability (fixed at start), the
     * readers from MAPPED_RAM on, the guest running on them, and a
     * reader's news for the waiting incoming thread (pcd.lock). */
    bool lazy_cap;
    lm_lazy *lazy;
    bool lazy_running;
    bool lazy_event;
    char file_path[LM_URI_FILE_PATH_MAX];
} lm_incoming;

/* incoming.c, shared with the recovery (recover.c): accepts and greets
 * the channels; after the load loop, the commit and the verdict; the end
 * of the thread (a paused migration is kept in m->paused_in, otherwise
 * freed). */
int lm_in_connect_channels(lm_incoming *in, lm_error *err);
/* Checks one HELLO against this destination's capabilities and the
 * channels already accepted. */
int lm_in_hello_check(lm_incoming *in, const lm_hello *h, lm_error *err);

/* file.c: a file: URI.  Open: the file (in->lfd, positioned at the
 * offset) becomes the main channel after its HELLO is read and checked
 * (nothing is answered).  Loaded: the load loop's result, with a file's
 * read errors said as a file's ("truncated" rather than "peer closed"). */
int lm_in_file_open(lm_incoming *in, lm_error *err);
int lm_in_file_loaded(lm_incoming *in, int ret, lm_error *err);
/* The MAPPED_RAM record h (loader.c): every present page read from the
 * file, in parallel with multifd (this side's multifd-channels readers),
 * with O_DIRECT with direct-io; one sync after the block list. */
int lm_in_file_mapped(lm_incoming *in, const lm_rec_hdr *h, lm_error *err);
int lm_in_complete(lm_incoming *in, int ret, lm_error *err);

/* lazy.c: x-lazy-restore.  Start: at MAPPED_RAM, the layout and bitmaps
 * read, every page owed, RAM registered with userfaultfd, the stream
 * moved to the device state.  Run: at the end of stream, postcopy-active,
 * the guest runs, the readers start, wait until every page is placed (or
 * the file fails).  End: readers stopped, userfaultfd
 * unregistered (after a failure with the guest running, the blocks still
 * owing pages fenced). */
int lm_in_lazy_start(lm_incoming *in, const lm_rec_hdr *h, lm_error *err);
int lm_in_lazy_run(lm_incoming *in, lm_error *err);
void lm_in_lazy_end(lm_incoming *in, int ret, const lm_error *err);
void lm_in_end(lm_incoming *in, int ret, lm_error *err);

/* loader.c: reads and loads the stream until EOS (0) or an error. */
int lm_incoming_load(lm_incoming *in, lm_error *err);
/* The same after a recovery: no device setup, the guest runs, and the
 * first record (besides PING) must be POSTCOPY_RESUME. */
int lm_incoming_load_resumed(lm_incoming *in, lm_error *err);

#endif /* LM_CORE_INCOMING_H */
