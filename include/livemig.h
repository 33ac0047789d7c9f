/*
 * livemig.h - the one public header of liblivemig, a live-migration engine.
 *
 * The library runs inside the process that owns the memory to migrate (the
 * "host": a VMM, a service, or `livemig guest`).  The host registers RAM
 * blocks it has mapped, gives run-state hooks (stop/start, its "vCPUs"), and
 * drives migrations through this API or through the QMP server the library
 * serves on a socket.  Names, states, capabilities and parameters are QEMU's.
 *
 * Conventions for every function below:
 *  - returns 0 on success or a negative errno-style code; on failure the human
 *    message is in the caller's lm_error (may be NULL), the first error wins;
 *  - the library never prints, never exits, never aborts on peer data;
 *  - unless a function says otherwise it may be called from any thread and
 *    does not block on migration I/O (it takes an internal mutex briefly).
 */
#ifndef LIVEMIG_H
#define LIVEMIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LM_VERSION_MAJOR 0
#define LM_VERSION_MINOR 1
#define LM_VERSION_MICRO 0

/* ---------------------------------------------------------------- errors */

#define LM_ERROR_MSG_MAX 512

/* Caller-owned error.  lm_error_set() keeps the first message: a root cause
 * is never overwritten by a later symptom.  Zero-initialise before use. */
typedef struct lm_error {
    int code;                    /* negative errno-style code, 0 = no error */
    char msg[LM_ERROR_MSG_MAX];  /* NUL-terminated human message */
} lm_error;

/* Sets err (if non-NULL and still empty) and returns code. */
int lm_error_set(lm_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like lm_error_set, but prefixes "<context>: " to an error already set in
 * err, or sets it if empty.  For adding context while propagating up. */
int lm_error_prefix(lm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void lm_error_clear(lm_error *err);

/* --------------------------------------------------------------- statuses */

/* QEMU's MigrationStatus, same names and meanings (query-migrate "status"). */
typedef enum lm_status {
    LM_STATUS_NONE,
    LM_STATUS_SETUP,
    LM_STATUS_CANCELLING,
    LM_STATUS_CANCELLED,
    LM_STATUS_ACTIVE,
    LM_STATUS_POSTCOPY_DEVICE,
    LM_STATUS_POSTCOPY_ACTIVE,
    LM_STATUS_POSTCOPY_PAUSED,
    LM_STATUS_POSTCOPY_RECOVER_SETUP,
    LM_STATUS_POSTCOPY_RECOVER,
    LM_STATUS_COMPLETED,
    LM_STATUS_FAILED,
    LM_STATUS_COLO,
    LM_STATUS_PRE_SWITCHOVER,
    LM_STATUS_DEVICE,
    LM_STATUS_WAIT_UNPLUG,
    LM_STATUS__MAX
} lm_status;

/* "none", "setup", ... "wait-unplug"; NULL for an out-of-range value. */
const char *lm_status_name(lm_status s);
/* Parses a QEMU status name; returns -EINVAL for an unknown one. */
int lm_status_from_name(const char *name, lm_status *out);

/* QEMU's RunState values that a livemig host goes through. */
typedef enum lm_runstate {
    LM_RUN_RUNNING,
    LM_RUN_PAUSED,          /* stopped by the user (QMP stop) */
    LM_RUN_INMIGRATE,       /* destination waiting for / loading a stream */
    LM_RUN_POSTMIGRATE,     /* source after a completed migration */
    LM_RUN_FINISH_MIGRATE,  /* source stopped for switchover */
    LM_RUN_PRELAUNCH,       /* destination after a failed incoming migration */
    LM_RUN__MAX
} lm_runstate;

const char *lm_runstate_name(lm_runstate r);

/* ---------------------------------------------------- capabilities/params */

/* QEMU's migration capabilities (all default off).  A capability that this
 * build does not implement yet is refused by lm_mig_set_capabilities() with
 * "not supported yet", never silently accepted. */
typedef enum lm_cap {
    LM_CAP_XBZRLE,
    LM_CAP_RDMA_PIN_ALL,
    LM_CAP_AUTO_CONVERGE,
    LM_CAP_ZERO_BLOCKS,
    LM_CAP_EVENTS,
    LM_CAP_POSTCOPY_RAM,
    LM_CAP_X_COLO,
    LM_CAP_RELEASE_RAM,
    LM_CAP_RETURN_PATH,
    LM_CAP_PAUSE_BEFORE_SWITCHOVER,
    LM_CAP_MULTIFD,
    LM_CAP_DIRTY_BITMAPS,
    LM_CAP_POSTCOPY_BLOCKTIME,
    LM_CAP_LATE_BLOCK_ACTIVATE,
    LM_CAP_X_IGNORE_SHARED,
    LM_CAP_VALIDATE_UUID,
    LM_CAP_BACKGROUND_SNAPSHOT,
    LM_CAP_ZERO_COPY_SEND,
    LM_CAP_POSTCOPY_PREEMPT,
    LM_CAP_SWITCHOVER_ACK,
    LM_CAP_DIRTY_LIMIT,
    LM_CAP_MAPPED_RAM,
    LM_CAP__MAX
} lm_cap;

const char *lm_cap_name(lm_cap c);
int lm_cap_from_name(const char *name, lm_cap *out);
/* True when this build implements the capability. */
bool lm_cap_supported(lm_cap c);

typedef enum lm_multifd_compression {
    LM_COMPRESS_NONE,
    LM_COMPRESS_ZLIB,
    LM_COMPRESS_ZSTD,
    LM_COMPRESS_LZ4,
} lm_multifd_compression;

typedef enum lm_zero_page_detection {
    LM_ZPD_NONE,
    LM_ZPD_LEGACY,
    LM_ZPD_MULTIFD,
} lm_zero_page_detection;

/* Migration parameters, QEMU's names (with '-' for '_') and defaults; see
 * lm_params_default().  Sizes are bytes, times milliseconds. */
typedef struct lm_params {
    uint64_t max_bandwidth;               /* B/s, 0 = unlimited; default 128 MiB/s */
    uint64_t avail_switchover_bandwidth;  /* B/s, 0 = measure; default 0 */
    uint64_t downtime_limit;              /* ms, <= 2000000; default 300 */
    uint64_t max_postcopy_bandwidth;      /* B/s, 0 = unlimited */
    uint8_t multifd_channels;             /* 1..255, default 2 */
    lm_multifd_compression multifd_compression;
    uint8_t multifd_zlib_level;           /* 0..9, default 1 */
    uint8_t multifd_zstd_level;           /* 0..20, default 1 */
    lm_zero_page_detection zero_page_detection; /* default multifd */
    uint64_t xbzrle_cache_size;           /* default 64 MiB */
    uint8_t throttle_trigger_threshold;   /* 1..100, default 50 */
    uint8_t cpu_throttle_initial;         /* 1..99, default 20 */
    uint8_t cpu_throttle_increment;       /* 1..99, default 10 */
    bool cpu_throttle_tailslow;
    uint8_t max_cpu_throttle;             /* default 99 */
    uint64_t announce_initial, announce_max, announce_rounds, announce_step;
} lm_params;

/* One bit per lm_params field, for lm_mig_set_params()'s "which" mask. */
typedef enum lm_param {
    LM_PARAM_MAX_BANDWIDTH,
    LM_PARAM_AVAIL_SWITCHOVER_BANDWIDTH,
    LM_PARAM_DOWNTIME_LIMIT,
    LM_PARAM_MAX_POSTCOPY_BANDWIDTH,
    LM_PARAM_MULTIFD_CHANNELS,
    LM_PARAM_MULTIFD_COMPRESSION,
    LM_PARAM_MULTIFD_ZLIB_LEVEL,
    LM_PARAM_MULTIFD_ZSTD_LEVEL,
    LM_PARAM_ZERO_PAGE_DETECTION,
    LM_PARAM_XBZRLE_CACHE_SIZE,
    LM_PARAM_THROTTLE_TRIGGER_THRESHOLD,
    LM_PARAM_CPU_THROTTLE_INITIAL,
    LM_PARAM_CPU_THROTTLE_INCREMENT,
    LM_PARAM_CPU_THROTTLE_TAILSLOW,
    LM_PARAM_MAX_CPU_THROTTLE,
    LM_PARAM_ANNOUNCE_INITIAL,
    LM_PARAM_ANNOUNCE_MAX,
    LM_PARAM_ANNOUNCE_ROUNDS,
    LM_PARAM_ANNOUNCE_STEP,
    LM_PARAM__MAX
} lm_param;

const char *lm_param_name(lm_param p);
int lm_param_from_name(const char *name, lm_param *out);
void lm_params_default(lm_params *p);
const char *lm_compression_name(lm_multifd_compression c);
int lm_compression_from_name(const char *name, lm_multifd_compression *out);
const char *lm_zpd_name(lm_zero_page_detection z);
int lm_zpd_from_name(const char *name, lm_zero_page_detection *out);

/* ------------------------------------------------------------ statistics */

/* query-migrate, QEMU's fields (digest §10) plus a few of ours. */
typedef struct lm_info {
    lm_status status;
    bool has_ram;                  /* ram stats meaningful (source side) */
    uint64_t transferred;          /* bytes on all channels, headers included */
    uint64_t remaining;            /* dirty bytes still to send */
    uint64_t total;                /* sum of RAM block lengths */
    uint64_t duplicate;            /* zero pages detected */
    uint64_t normal;               /* non-zero pages sent */
    uint64_t normal_bytes;
    uint64_t dirty_pages_rate;     /* pages/s over the last >=1 s period */
    double mbps;                   /* last 100 ms window; average once completed */
    uint64_t dirty_sync_count;     /* passes */
    uint64_t postcopy_requests;
    uint64_t page_size;
    uint64_t multifd_bytes;
    uint64_t pages_per_second;
    uint64_t precopy_bytes, downtime_bytes, postcopy_bytes;
    int64_t total_time;            /* ms */
    int64_t setup_time;            /* ms */
    int64_t expected_downtime;     /* ms, -1 when not meaningful */
    int64_t downtime;              /* ms, -1 until known */
    uint64_t downtime_us;          /* ours: downtime in microseconds */
    uint64_t bandwidth;            /* ours: measured wire bandwidth, B/s */
    uint64_t dirty_sync_missed_zero_copy;
    /* destination, postcopy (ours, "x-postcopy" in query-migrate) */
    bool has_postcopy;             /* a switch to postcopy happened */
    uint64_t pc_faults;            /* faults on pages the source still owed */
    uint64_t pc_local_faults;      /* faults on zero pages served locally */
    uint64_t pc_owed_pages;        /* pages not placed yet */
    /* postcopy-blocktime: remote fault latency, fault read to placement */
    bool has_blocktime;
    uint64_t pc_lat_hist[24];      /* bucket i: [2^i, 2^(i+1)) µs; 0 also < 1 µs */
    uint64_t pc_lat_count, pc_lat_p50_us, pc_lat_p99_us, pc_lat_max_us;
    char error_desc[LM_ERROR_MSG_MAX]; /* empty when none */
    char socket_address[128];      /* destination: actual listening address */
} lm_info;

/* ---------------------------------------------------------------- events */

typedef enum lm_event_type {
    LM_EVENT_MIGRATION,       /* status changed (needs the "events" cap) */
    LM_EVENT_MIGRATION_PASS,  /* dirty sync number `pass` (needs "events") */
    LM_EVENT_STOP,            /* run state: guest stopped */
    LM_EVENT_RESUME,          /* run state: guest resumed */
} lm_event_type;

typedef struct lm_event {
    lm_event_type type;
    lm_status status;       /* MIGRATION */
    uint64_t pass;          /* MIGRATION_PASS */
    int64_t ts_sec, ts_usec;/* wall-clock timestamp, QMP style */
} lm_event;

/* Called from whichever library thread caused the event, one event at a
 * time and in order, without the object's state lock held; must not block
 * for long.  Must not call lm_mig_free() nor anything that changes the
 * migration or run state (queue the work instead). */
typedef void (*lm_event_fn)(void *opaque, const lm_event *ev);

/* ----------------------------------------------------------- host model */

/* Run-state hooks of the host ("vCPUs").  stop() returns only when no guest
 * write can happen any more; start() resumes.  Called from library threads
 * (migration, incoming, QMP), never concurrently with each other. */
typedef struct lm_host_ops {
    void (*stop)(void *opaque);
    void (*start)(void *opaque);
} lm_host_ops;

typedef struct lm_mig lm_mig;

/* Creates the migration object of a host.  initial: LM_RUN_RUNNING for a
 * host that starts running, LM_RUN_INMIGRATE for a destination.  ops and
 * opaque are borrowed for the object's life.  Blocks: no. */
int lm_mig_new(const lm_host_ops *ops, void *opaque, lm_runstate initial,
               lm_mig **out, lm_error *err);
/* Cancels any migration, joins the library's threads, frees.  Blocks until
 * they have exited (bounded: all I/O is shut down first).  NULL is a no-op. */
void lm_mig_free(lm_mig *m);

/* Registers a RAM block.  The memory [base, base+len) is borrowed: the host
 * keeps it mapped (anonymous private, memfd or shmem) until lm_mig_free().
 * len must be a multiple of page_size (4096 for now); names are unique,
 * 1..63 bytes.  Only while no migration has started.  The library may
 * madvise() the range (populate, hugepage hints) and write-protect it for
 * dirty tracking while a migration runs. */
int lm_ram_add(lm_mig *m, const char *name, void *base, uint64_t len,
               uint32_t page_size, lm_error *err);

/* Adds an event listener (at most 8).  Thread: any.  Blocks: no. */
int lm_mig_add_listener(lm_mig *m, lm_event_fn fn, void *opaque, lm_error *err);

/* Removes a listener added with the same fn and opaque; once it returns the
 * listener is not running and will not be called again.  Must not be called
 * from a listener.  Returns -ENOENT when not found. */
int lm_mig_remove_listener(lm_mig *m, lm_event_fn fn, void *opaque);

/* Capabilities: sets the bits of `mask` to the matching bits of `values`
 * (bit i = lm_cap i), all or nothing, after checking support, dependencies
 * and that no migration is running. */
int lm_mig_set_capabilities(lm_mig *m, uint64_t mask, uint64_t values, lm_error *err);
uint64_t lm_mig_get_capabilities(lm_mig *m);

/* Parameters: sets the fields of `in` whose bit (1 << lm_param) is in
 * `which`, all or nothing, after range checks.  max-bandwidth and
 * downtime-limit take effect at once in a running migration. */
int lm_mig_set_params(lm_mig *m, const lm_params *in, uint64_t which, lm_error *err);
void lm_mig_get_params(lm_mig *m, lm_params *out);

/* QMP `migrate`: starts an outgoing migration to uri (tcp:HOST:PORT,
 * unix:PATH, fd:N).  Returns at once; connection and transfer run in the
 * migration thread.  resume=true is postcopy recovery (not supported yet). */
int lm_mig_start(lm_mig *m, const char *uri, bool resume, lm_error *err);
/* QMP `migrate-incoming`: listens on uri and loads the first stream that
 * connects.  Returns once listening (a tcp port 0 is resolved; see
 * lm_info.socket_address). */
int lm_mig_incoming(lm_mig *m, const char *uri, lm_error *err);
/* QMP `migrate_cancel`: works in every precopy state; the source keeps (or
 * resumes) running.  A no-op when nothing runs. */
int lm_mig_cancel(lm_mig *m, lm_error *err);
/* QMP `migrate-continue state=...`: releases a pause in `state`
 * (pre-switchover). */
int lm_mig_continue(lm_mig *m, lm_status state, lm_error *err);
/* QMP `migrate-start-postcopy`: the source switches to postcopy as soon as
 * seed 000 allows (must-precopy data under the threshold, switchover
 * allowed).  Needs the postcopy-ram capability; accepted in setup and
 * active (QEMU's rule), refused otherwise.  Thread: any.  Blocks: no. */
int lm_mig_start_postcopy(lm_mig *m, lm_error *err);

/* QMP `query-migrate`. */
void lm_mig_query(lm_mig *m, lm_info *out);

/* Run state (QMP query-status/stop/cont).  stop/cont call the host hooks
 * and emit STOP/RESUME.  cont is refused while migrating in (inmigrate) or
 * during switchover. */
lm_runstate lm_vm_runstate(lm_mig *m);
int lm_vm_stop(lm_mig *m, lm_error *err);
int lm_vm_cont(lm_mig *m, lm_error *err);

/* ------------------------------------------------------------ QMP server */

typedef struct lm_qmp_server lm_qmp_server;

/* A host-defined QMP command.  args_json is the "arguments" object as JSON
 * text ("{}" when absent).  On success set *ret_json to a malloc'd JSON text
 * (the "return" value; NULL means {}) and return 0; on failure fill err and
 * return < 0 (reported as GenericError with err->msg).  Runs on the QMP
 * thread: must not block for long. */
typedef int (*lm_qmp_cmd_fn)(void *opaque, const char *args_json,
                             char **ret_json, lm_error *err);

/* Serves QMP for m on uri (unix:PATH; the socket file is created, and
 * removed again by stop).  Several clients at once; events go to all.
 * A thread named "lm-qmp" runs it. */
int lm_qmp_server_start(lm_mig *m, const char *uri, lm_qmp_server **out, lm_error *err);
/* Adds a command (before or after start).  name must not collide with a
 * built-in one. */
int lm_qmp_server_register(lm_qmp_server *s, const char *name, lm_qmp_cmd_fn fn,
                           void *opaque, lm_error *err);
/* Stops the server thread, closes clients, removes the socket.  NULL ok. */
void lm_qmp_server_stop(lm_qmp_server *s);

/* ------------------------------------------------------------ QMP client */

typedef struct lm_qmp_client lm_qmp_client;

/* Connects to a QMP socket (a path, or unix:PATH), reads the greeting and
 * negotiates qmp_capabilities.  Works with QEMU too.  timeout_ms bounds the
 * connect and greeting. */
int lm_qmp_client_connect(const char *path, int timeout_ms, lm_qmp_client **out,
                          lm_error *err);
/* Executes `cmd` with args_json (NULL for none) and waits at most
 * timeout_ms for the reply.  On "return", *ret_json (malloc'd) holds the
 * return value's JSON and 0 is returned.  On "error", returns -EREMOTEIO
 * with "<class>: <desc>" in err.  Events read meanwhile are queued. */
int lm_qmp_client_call(lm_qmp_client *c, const char *cmd, const char *args_json,
                       char **ret_json, int timeout_ms, lm_error *err);
/* Next event as malloc'd JSON text (the whole {"event",...} object) in
 * *event_json; waits at most timeout_ms; returns -ETIMEDOUT when none. */
int lm_qmp_client_next_event(lm_qmp_client *c, int timeout_ms, char **event_json,
                             lm_error *err);
void lm_qmp_client_close(lm_qmp_client *c);

#ifdef __cplusplus
}
#endif
#endif /* LIVEMIG_H */
