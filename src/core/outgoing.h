/*
 * outgoing.h - the source's migration, shared by the files that make it up:
 * the migration thread (outgoing.c), the return path (return_path.c) and
 * the switchover policy and steps (switchover.c).  Internal to core.
 */
#ifndef LM_CORE_OUTGOING_H
#define LM_CORE_OUTGOING_H

#include "core/internal.h"
#include "core/throttle.h"

#define LM_CONNECT_TIMEOUT_MS 10000
#define LM_HELLO_TIMEOUT_MS 10000

/* One outgoing migration.  Owned by its migration thread ("lm-migration"),
 * which frees it at the end, or leaves it in m->paused_out when it paused
 * (a recovery's thread takes it over); the fields the return-path thread
 * shares are marked. */
typedef struct lm_outgoing {
    lm_mig *m;
    lm_uri uri;
    bool own_fd;       /* fd: uri.fd is our own dup, taken at start, closed at the end */
    bool file;         /* file: URI: no return path, no PING, no verdict to wait for */
    lm_mapped *mapped; /* mapped-ram: the file's page regions (file only) */
    lm_out o;          /* what the handlers write into */
    lm_chan *chan;     /* the main channel */
    uint8_t session[LM_SESSION_ID_LEN];
    unsigned nmfd;                               /* multifd channels (0: off) */
    lm_chan *mfd_chans[LM_MULTIFD_MAX_CHANNELS]; /* until handed to o.mfd */
    lm_mfd_send_cfg mfd_cfg;
    bool test_shuffle; /* test knob: connect channels in random order */
    uint64_t rl_seen;  /* bytes already accounted to the rate limiter */
    lm_ratelimit rl;
    uint64_t params_gen;
    lm_params params;
    bool caps_pause;
    /* window accounting (100 ms, QEMU's migration_update_counters) */
    uint64_t win_start_ns;
    uint64_t win_start_bytes;
    uint64_t win_start_pages;
    bool win_throttled;
    bool have_unthrottled_bw;
    uint64_t bandwidth; /* B/s used for threshold and expectation */
    uint64_t threshold; /* bytes */
    unsigned extra_rounds;
    uint64_t last_queued; /* queued bytes at the last decision (op_queued) */
    /* auto-converge / dirty-limit (throttle.c): on for this migration,
     * the rule's state, the cap last given to the host */
    bool thr_on;
    uint64_t thr_caps;
    lm_thr thr;
    uint64_t thr_applied_mbps;
    /* Round trip of a PING: the smallest seen, because one queued behind
     * page data (or answered by a destination busy populating memory)
     * measures that instead of the confirmation at switchover.  At most one
     * PING is in flight: ping_sent_ns is 0 when none is (atomics: the
     * return-path thread writes both). */
    uint64_t rtt_ns;
    uint64_t ping_sent_ns;
    uint32_t ping_seq;
    bool ack_cap;        /* switchover-ack on for this migration (fixed at start) */
    uint64_t features;   /* LM_FEAT_* of this migration */
    lm_chan *preempt;    /* postcopy-preempt channel, or NULL */
    pthread_t rp_thread; /* "lm-rp" */
    bool rp_started;
    uint32_t run_ping; /* value of the PING after POSTCOPY_RUN (atomic) */
    uint64_t pc_t0;    /* guest stopped for the switch (atomic) */
    bool run_sent;     /* POSTCOPY_RUN may be out: failures pause */
    bool paused;       /* finished in postcopy-paused */
    bool resuming;     /* a recovery (resume.c): HELLO asks to resume the session */
    /* A recovery's postcopy-recover-setup ends by then (CLOCK_MONOTONIC ns,
     * from x-postcopy-timeout-ms; 0: no bound but each connect's and
     * HELLO's own): every connect and HELLO wait gets what is left. */
    uint64_t setup_deadline_ns;
    uint64_t setup_tmo_ms; /* the x-postcopy-timeout-ms it came from */
    uint64_t prior_bytes;  /* main-channel bytes of the channels before a recovery */
    bool bgsnap;           /* background-snapshot (bgsnap.c), fixed at start */
    bool was_running;      /* guest was running when we stopped it */
    bool stopped_vm;
} lm_outgoing;

/* outgoing.c, shared with the recovery (resume.c): connects and greets
 * the main (and multifd) channels, and the preempt channel; the loop of seed 000; the end of the
 * thread (a paused migration is kept in m->paused_out, otherwise freed). */
int lm_og_connect_channels(lm_outgoing *g, lm_error *err);
int lm_og_connect_preempt(lm_outgoing *g, lm_error *err);
int lm_og_loop(lm_outgoing *g, lm_error *err);
void lm_og_end(lm_outgoing *g, int ret, lm_error *err);

/* bgsnap.c: a background snapshot after setup, instead of lm_og_loop:
 * pause, device state into a buffer, write-protect RAM, resume, one pass,
 * the buffered device state, EOS.  The guest runs but for the pause. */
int lm_og_bgsnap(lm_outgoing *g, lm_error *err);

/* return_path.c: starts / joins "lm-rp" on the main channel. */
int lm_rp_start(lm_outgoing *g, lm_error *err);
void lm_rp_join(lm_outgoing *g);

/* switchover.c: the policy around the loop ... */
void lm_sw_reload_params(lm_outgoing *g);
/* Every 100 ms: bandwidth, threshold, mbps, expected downtime, a PING. */
void lm_sw_update_counters(lm_outgoing *g, uint64_t now);
int lm_sw_send_ping(lm_outgoing *g);
/* Waits while more than the in-flight bound is written but not delivered;
 * true when it waited. */
bool lm_sw_wait_inflight(lm_outgoing *g, uint64_t now);
/* Counts the bytes written since the last call against max-bandwidth. */
void lm_sw_account_rl(lm_outgoing *g);
/* Waits on m->cond until deadline or a wake-up (cancel, params, return
 * path, a queued postcopy request).  Takes only m->lock. */
void lm_sw_wait_until(lm_outgoing *g, uint64_t deadline_ns);
/* ... and the steps lm_iteration_run takes (its ops, opaque: g). */
extern const struct lm_iter_ops lm_sw_iter_ops;
/* throttle.c: starts (after setup) and ends (host told: no throttle) the
 * throttling of this migration; the 5 s sync rule. */
void lm_thr_start(lm_outgoing *g, uint64_t caps);
void lm_thr_end(lm_outgoing *g);
bool lm_thr_sync_due(const lm_outgoing *g, uint64_t now);
/* EOS on every channel, then the destination's verdict (the commit point:
 * a cancel before it wins).  0 when the destination confirmed. */
int lm_sw_end_stream(lm_outgoing *g, const char *what, lm_error *err);
/* Bytes written on the preempt channel (requested pages). */
uint64_t lm_sw_preempt_bytes(const lm_outgoing *g);

#endif /* LM_CORE_OUTGOING_H */
