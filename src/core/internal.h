/*
 * internal.h - the migration object: what the core owns, and the modules'
 * states it embeds and wires together (docs/architecture.md).  Not
 * installed; the CLI never includes it.
 *
 * Threads of one lm_mig (docs/architecture.md lists each with what it
 * owns):
 *  - callers of the public API: the host, and "lm-qmp" when the host serves
 *    QMP through the library;
 *  - source: "lm-migration" (outgoing.c: connect, setup, the iteration loop
 *    of seed 000, switchover, cleanup), "lm-rp" (return_path.c),
 *    "lm-rp-preempt" (postcopy/source.c), "lm-mfd-send/N" (multifd/send.c);
 *  - destination: "lm-incoming" (incoming.c: accept, HELLO, the load
 *    loop), "lm-prefault" (mem/prefault.c), "lm-pc-fault" (postcopy/uffd.c),
 *    "lm-pc-preempt" (postcopy/dest.c), "lm-mfd-recv/N" (multifd/recv.c).
 *
 * Locks of the core, and the one global order (a lock may only be taken
 * while holding locks to its left; docs/architecture.md has the modules'):
 *
 *   run_lock -> emit_lock -> lock -> { the modules' locks }
 *
 *  - lock guards the "lock" group below.  It is held only briefly: never
 *    across I/O, a host hook, a listener, a join, or a module lock that is
 *    ever held across I/O.  Every lm_mig_* call takes at most this lock,
 *    so the control plane never waits for the network;
 *  - emit_lock is held around calls of the event listeners (events.c);
 *  - run_lock serialises the host's stop/start hooks and runstate
 *    (runstate.c), never taken while holding lock or emit_lock.
 * Counters (stats) are written by worker threads with relaxed atomics and
 * read by queries without a lock.
 */
#ifndef LM_CORE_INTERNAL_H
#define LM_CORE_INTERNAL_H

#include "livemig.h"
#include "chan/chan.h"
#include "chan/record.h"
#include "file/mapped.h"
#include "format/format.h"
#include "mem/mem.h"
#include "multifd/multifd.h"
#include "postcopy/postcopy.h"
#include "ram/ram.h"
#include "savevm/savevm.h"
#include "util/bitmap.h"
#include "util/clock.h"

#include <pthread.h>
#include <stdio.h>

#define LM_MAX_LISTENERS 8

/* query-migrate's figures: the modules' own counters plus the core's.
 * Relaxed atomics. */
typedef struct lm_stats {
    lm_ram_counters ram;
    lm_out_counters out;
    lm_mfd_counters mfd;
    uint64_t transferred;
    uint64_t mbps_x1000; /* mbps * 1000 */
    uint64_t pages_per_second;
    uint64_t bandwidth;         /* B/s, wire speed estimate */
    uint64_t queued;            /* bytes written, not delivered (last update) */
    uint64_t switchover_queued; /* ... at the switchover decision */
    uint64_t cpu_throttle_pct;  /* auto-converge in force */
    uint64_t dirty_limit_mbps;  /* dirty-limit in force (0: none) */
    uint64_t dl_throttle_us;    /* the host's lm_mig_throttle_report */
    int64_t expected_downtime_ms;
    uint64_t downtime_us;
    uint64_t switch_pause_us; /* postcopy: guest stopped until the destination ran */
    uint64_t setup_time_ms;
    uint64_t start_ns, end_ns;
    uint64_t postcopy_requests;
} lm_stats;

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
    pthread_cond_t cond; /* signalled on every change below */
    /* --- guarded by lock --- */
    /* object-add's objects (objects.c), and the TLS credentials and authz
     * list the current migration chose when it started (NULL: no TLS),
     * with the name the destination's certificate must carry */
    struct lm_object *objects;
    struct lm_tls_creds *tls_creds;
    struct lm_authz *tls_authz;
    char tls_host[256];
    lm_status status;
    lm_role role;
    uint64_t caps;
    lm_params params;
    uint64_t params_gen; /* bumped by set_params: migration thread reloads */
    lm_error error;      /* first error of the current/last migration */
    bool thread_running; /* migration or incoming thread exists */
    pthread_t thread;
    bool rp_running; /* the source's return-path thread runs */
    lm_chan *chan;   /* main channel while one is up */
    /* Other channels cancel must shut down (multifd, preempt) while they
     * are up: entries are removed under lock before a channel is freed. */
    lm_chan *aux_chans[LM_MULTIFD_MAX_CHANNELS + 1];
    unsigned naux_chans;
    int cancel_efd; /* readable once cancel was requested: interrupts a
                     * connect or a name lookup (eventfd, drained
                     * when a migration starts) */
    int listen_fd;  /* incoming listener, -1 */
    char socket_address[128];
    bool continue_requested; /* migrate-continue for pre-switchover */
    bool cancel_requested;
    bool eos_sent;   /* switchover committed: the source's SHUT decides;
                      * the destination loaded everything (cancel is
                      * a no-op from then on) */
    bool committing; /* source: the end of stream is being sent (its commit
                      * point passed with no cancel): a cancel no longer
                      * changes the state, it only interrupts the channels */
    bool shut_received;
    bool verdict;        /* shut came from the destination, not a broken link */
    bool dest_never_ran; /* source: the verdict was an ERROR, the destination's
                          * word that it never ran the guest (format.md 4.9) */
    lm_status_msg shut;  /* the destination's verdict */
    bool switchover_acked;
    bool start_postcopy;     /* migrate-start-postcopy was called */
    bool postcopy_run_acked; /* source: RP_PONG for the PING after POSTCOPY_RUN */
    bool ram_frozen;         /* a migration started: no more RAM or devices */
    struct {
        lm_event_fn fn;
        void *opaque;
    } listeners[LM_MAX_LISTENERS];
    unsigned nlisteners;
    /* MIGRATION events not yet delivered, oldest first (events.c): grown
     * as needed, never dropped while memory lasts. */
    lm_status *ev_q;
    unsigned ev_head, ev_n, ev_cap;
    uint64_t ev_lost; /* events lost to an allocation failure */
    /* An incoming migration was accepted (QEMU's "once" in
     * qmp_migrate_incoming); a failed or cancelled one lets another in. */
    bool incoming_started;
    /* Postcopy recovery: what a paused migration keeps for the next
     * attempt (the thread that paused leaves it here; resume.c and
     * recover.c hand it to a new thread), and whether a destination listens
     * for the source's reconnection (migrate-recover). */
    struct lm_outgoing *paused_out;
    struct lm_incoming *paused_in;
    bool recovering;
    char name[LM_NAME_MAX + 1]; /* QEMU's -name, "" when none */
    lm_throttle_fn thr_fn;      /* lm_mig_set_throttle (set only while idle) */
    void *thr_opaque;
    uint8_t uuid[16]; /* QEMU's -uuid, zeros by default */
    /* --- end of lock group --- */

    lm_stats stats; /* relaxed atomics, see above */

    /* The modules (docs/architecture.md).  mem's block table and savevm's
     * device table are written under lock before the first migration and
     * read-only after (ram_frozen). */
    lm_mem mem;
    lm_savevm sv;
    lm_ram ram;     /* source: the RAM handler */
    lm_pc_src pcs;  /* source: postcopy requests */
    lm_place place; /* destination: where pages go */
    lm_pc_dst pcd;  /* destination: postcopy */
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

/* events.c */
void lm_emit(lm_mig *m, const lm_event *ev);
/* Delivers the MIGRATION events queued by lm_state_set_locked(), in order.
 * Call after dropping m->lock whenever a state may have changed. */
void lm_emit_status(lm_mig *m);
void lm_emit_pass(lm_mig *m, uint64_t pass);
/* Queues a MIGRATION event (lock held; state.c). */
void lm_event_queue_status_locked(lm_mig *m, lm_status s);

/* runstate.c */
void lm_runstate_set(lm_mig *m, lm_runstate r);
/* Stops the host for switchover: hook + `to`; returns whether it was
 * running before (so a failure restarts it). */
bool lm_vm_stop_for_migration(lm_mig *m, lm_runstate to);
void lm_vm_start_after_migration(lm_mig *m, lm_runstate to);

/* mig.c: channels cancel must shut down besides m->chan.  add returns
 * false when cancel was already requested; remove before freeing. */
bool lm_mig_aux_chan_add(lm_mig *m, lm_chan *c);
/* objects.c: with m->lock held, when a migration (server: incoming or
 * recovery) starts: the credentials and authz list its parameters name,
 * checked (kind, endpoint, no file: URI) and kept in m for its channels. */
int lm_mig_tls_select_locked(lm_mig *m, bool server, const lm_uri *u, lm_error *err);
/* Any thread: references to what was selected (*cr NULL: no TLS); az and
 * host may be NULL. */
void lm_mig_tls_get(lm_mig *m, struct lm_tls_creds **cr, struct lm_authz **az, char *host,
                    size_t cap);
void lm_mig_objects_free(lm_mig *m);
void lm_mig_aux_chans_clear(lm_mig *m);
/* Postcopy's link is gone: every channel fails with why and is shut
 * down (takes lock; the caller holds no lock but leaves). */
void lm_mig_link_down(lm_mig *m, int code, const char *why);
/* Records the first error of this migration (takes lock). */
void lm_mig_set_error(lm_mig *m, const lm_error *err);
/* The capability bit is on (takes lock). */
bool lm_mig_cap(lm_mig *m, lm_cap cap);
/* The current status (takes lock). */
lm_status lm_mig_status(lm_mig *m);

/* outgoing.c / incoming.c */
int lm_outgoing_start(lm_mig *m, const char *uri, lm_error *err);
int lm_incoming_start(lm_mig *m, const char *uri, lm_error *err);
/* Postcopy recovery: migrate resume=true (resume.c), migrate-recover
 * (recover.c), and freeing what a paused migration kept (no thread runs). */
int lm_outgoing_resume(lm_mig *m, const char *uri, lm_error *err);
int lm_incoming_recover(lm_mig *m, const char *uri, lm_error *err);
void lm_outgoing_free_paused(lm_mig *m);
void lm_incoming_free_paused(lm_mig *m);

/* params.c */
int lm_params_check(const lm_params *p, uint64_t which, lm_error *err);
int lm_caps_check(uint64_t caps, lm_error *err);

#endif /* LM_CORE_INTERNAL_H */
