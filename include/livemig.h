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
 *  - returns 0 on success or a negative errno-style code (see "errors"); on
 *    failure the human message is in the caller's lm_error (may be NULL),
 *    the first error wins;
 *  - the library never prints, never exits, never aborts on peer data;
 *  - unless a function says otherwise it may be called from any thread and
 *    does not block on migration I/O (it takes an internal mutex briefly).
 *
 * ABI (docs/api.md has the whole stance).  liblivemig.so.LM_VERSION_MAJOR
 * exports exactly the LM_API functions (version nodes: cmake/livemig.map); any
 * incompatible change bumps the major version, also before 1.0.
 *  - Opaque handles (lm_mig, lm_qmp_server, lm_qmp_client, lm_device_out)
 *    may change freely.
 *  - The structs a caller allocates or the library fills (lm_error,
 *    lm_params, lm_info, lm_device_info, lm_host_ops, lm_device_ops) keep
 *    their layout: a field is only added at the end, with zero meaning "as
 *    before", under a new symbol version of the functions that take the
 *    struct (or a new soname).  So: zero-initialise what you pass in
 *    ({0}, designated initialisers) and start parameters from
 *    lm_params_default().  lm_event (library-owned) may grow at the end.
 *  - Enumerators keep their values; new ones come at the end (the __MAX
 *    sentinels are not ABI): accept values you do not know.
 *  - QMP names starting with "x-" (and the lm_info fields marked "ours")
 *    are livemig's own extensions: the fields stay, their QMP names and
 *    exact meaning may change in any release.
 */
#ifndef LIVEMIG_H
#define LIVEMIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the library's public functions.  liblivemig is compiled with
 * -fvisibility=hidden: a shared build exports these and nothing else. */
#if defined(__GNUC__) || defined(__clang__)
#define LM_API __attribute__((visibility("default")))
#else
#define LM_API
#endif

/* The one place the version is written: CMake reads it from here for the
 * shared library, `livemig --version`, the QMP greeting and query-version
 * report it.  MAJOR is the shared library's soname number; MINOR grows
 * with compatible additions, MICRO with fixes. */
#define LM_VERSION_MAJOR 0
#define LM_VERSION_MINOR 3
#define LM_VERSION_MICRO 0
#define LM_VERSION_STR_(x) #x
#define LM_VERSION_XSTR_(x) LM_VERSION_STR_(x)
/* "0.1.0" */
#define LM_VERSION_STRING                                                                          \
    LM_VERSION_XSTR_(LM_VERSION_MAJOR)                                                             \
    "." LM_VERSION_XSTR_(LM_VERSION_MINOR) "." LM_VERSION_XSTR_(LM_VERSION_MICRO)

/* ---------------------------------------------------------------- errors */

#define LM_ERROR_MSG_MAX 512

/* Caller-owned error.  lm_error_set() keeps the first message: a root cause
 * is never overwritten by a later symptom.  Zero-initialise before use. */
typedef struct lm_error {
    int code;                   /* negative errno-style code, 0 = no error */
    char msg[LM_ERROR_MSG_MAX]; /* NUL-terminated human message */
} lm_error;

/* Codes are negative errno values.  The ones the library raises itself:
 *   -EINVAL        a bad argument, parameter value or state for the call
 *   -ENOTSUP       a capability, parameter value or feature this build
 *                  does not implement
 *   -EBUSY         refused while a migration runs (or the run state forbids it)
 *   -EEXIST, -ENOENT, -ENOSPC, -ENAMETOOLONG, -ENOMEM
 *                  registration: duplicate, not found, table full, name
 *                  too long; out of memory
 *   -EPROTO        the peer's stream breaks the wire format (docs/format.md)
 *   -EPROTONOSUPPORT, -EMSGSIZE
 *                  a format version we do not speak; a record above its
 *                  maximum size
 *   -EPIPE, -ECONNRESET, -ETIMEDOUT
 *                  the peer closed the connection, reset it, did not answer
 *   -ECANCELED     the migration was cancelled (or its channel shut down)
 *   -EREMOTEIO     a QMP peer answered with an error (lm_qmp_client_call)
 *   -EIO           an I/O failure, or a failure whose cause has no code
 * and any -errno of a failed system call, passed up unchanged.
 * lm_error_name() and lm_strerror() describe a code. */

/* Sets err (if non-NULL and still empty) and returns code.  code must be
 * < 0; a code >= 0 (a caller's bug: no error) is taken as -EIO. */
LM_API int lm_error_set(lm_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like lm_error_set, but prefixes "<context>: " to an error already set in
 * err, or sets it if empty.  For adding context while propagating up.
 * Returns err's code; -EIO when err was empty (the failure being described
 * left no code) or is NULL (the code is not known here: a caller that
 * passes NULL down and needs the code keeps the callee's return value). */
LM_API int lm_error_prefix(lm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
LM_API void lm_error_clear(lm_error *err);

/* The symbolic name of a code, without its sign: "EPROTO" for -EPROTO, "OK"
 * for 0.  Every code the library raises itself has one, as do the errno
 * values system calls commonly fail with; anything else (an unusual errno,
 * a positive number) gives "UNKNOWN".  Never NULL; a static string. */
LM_API const char *lm_error_name(int code);
/* A short lower-case description of a code, like strerror(): "protocol
 * error (the peer's stream breaks the format)" for -EPROTO, "success" for
 * 0, "unknown error" when lm_error_name() says "UNKNOWN".  Never NULL; a
 * static string; thread-safe.  lm_error.msg says what actually failed. */
LM_API const char *lm_strerror(int code);

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
LM_API const char *lm_status_name(lm_status s);
/* Parses a QEMU status name; returns -EINVAL for an unknown one. */
LM_API int lm_status_from_name(const char *name, lm_status *out);

/* QEMU's RunState values that a livemig host goes through. */
typedef enum lm_runstate {
    LM_RUN_RUNNING,
    LM_RUN_PAUSED,         /* stopped by the user (QMP stop) */
    LM_RUN_INMIGRATE,      /* destination waiting for / loading a stream */
    LM_RUN_POSTMIGRATE,    /* source after a completed migration */
    LM_RUN_FINISH_MIGRATE, /* source stopped for switchover */
    /* Not entered by livemig (QEMU: before the guest first ran): a
     * destination whose incoming migration failed stays inmigrate and may
     * take another migrate-incoming. */
    LM_RUN_PRELAUNCH,
    LM_RUN__MAX
} lm_runstate;

LM_API const char *lm_runstate_name(lm_runstate r);

/* ---------------------------------------------------- capabilities/params */

/* QEMU's migration capabilities (all default off).  A capability that this
 * build does not implement yet is refused by lm_mig_set_capabilities() with
 * "not supported yet", never silently accepted.  Two are accepted although
 * they change nothing, because "on" describes what livemig always does:
 * return-path (the source reports completed only after the destination
 * confirmed; switchover-ack requires it, as in QEMU) and
 * late-block-activate (no block devices to activate early; a no-op in QEMU
 * too). */
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
    /* ---- 0.3 (lm_mig_query@LIVEMIG_0.3) ---- */
    /* ours, destination only: with mapped-ram and a file: URI, the guest
     * runs as soon as the device state is loaded; its pages come from the
     * file on demand (userfaultfd) while readers place the rest. */
    LM_CAP_X_LAZY_RESTORE,
    LM_CAP__MAX
} lm_cap;

LM_API const char *lm_cap_name(lm_cap c);
LM_API int lm_cap_from_name(const char *name, lm_cap *out);
/* True when this build implements the capability. */
LM_API bool lm_cap_supported(lm_cap c);

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

/* Longest id of an object (tls-creds, authz-list). */
#define LM_TLS_ID_MAX 63

/* Migration parameters, QEMU's names (with '-' for '_') and defaults; see
 * lm_params_default().  Sizes are bytes, times milliseconds.  The ones
 * marked "default only" tune features this build does not have (xbzrle,
 * auto-converge's CPU throttle, self-announce): lm_mig_set_params() refuses
 * any other value with -ENOTSUP. */
typedef struct lm_params {
    uint64_t max_bandwidth;              /* B/s, 0 = unlimited; default 128 MiB/s */
    uint64_t avail_switchover_bandwidth; /* B/s, 0 = measure; default 0 */
    uint64_t downtime_limit;             /* ms, <= 2000000; default 300 */
    uint64_t max_postcopy_bandwidth;     /* B/s, 0 = unlimited */
    uint8_t multifd_channels;            /* 1..255, default 2 */
    lm_multifd_compression multifd_compression;
    uint8_t multifd_zlib_level;                 /* 0..9, default 1 */
    uint8_t multifd_zstd_level;                 /* 0..20, default 1 */
    lm_zero_page_detection zero_page_detection; /* default multifd */
    uint64_t xbzrle_cache_size;                 /* bytes, a power of two >= 4096 (64 MiB) */
    uint8_t throttle_trigger_threshold;         /* 1..100 %, default 50 */
    uint8_t cpu_throttle_initial;               /* 1..99 %, default 20 */
    uint8_t cpu_throttle_increment;             /* 1..99 %, default 10 */
    bool cpu_throttle_tailslow;                 /* default false */
    uint8_t max_cpu_throttle;                   /* 1..99 %, default 99 */
    /* default only: 50, 550, 5, 100 */
    uint64_t announce_initial, announce_max, announce_rounds, announce_step;
    /* ms; a postcopy peer silent this long (nothing read on the main
     * channel, whose heartbeat is a PING/PONG every 100 ms) pauses the
     * migration; 0 = never (only errors pause); 200..3600000; default
     * 10000.  Each side uses its own. */
    uint64_t x_postcopy_timeout_ms;
    /* ---- 0.2 ---- dirty-limit: the cap on each vCPU's dirty rate, MB/s
     * (>= 1, default 1, QEMU's), and the period over which the host
     * enforces it, ms (1..1000, default 1000) */
    uint64_t vcpu_dirty_limit;
    uint64_t x_vcpu_dirty_limit_period;
    /* ms; in precopy, a destination that answers nothing this long while
     * the source waits for it (a PING unanswered, or the end of stream
     * sent and no verdict) fails the migration and the source runs on: a
     * stopped (SIGSTOP) or black-holed destination no longer hangs it
     * (issue 12).  0 = never; 200..3600000; default 10000.  Source only. */
    uint64_t x_precopy_timeout_ms;
    /* QEMU's direct-io: mapped-ram page reads and writes of a file: URI
     * with O_DIRECT on descriptors of their own (the unaligned main stream
     * stays on a normal one); needs capability mapped-ram; default false */
    bool direct_io;
    /* ---- 0.3 ---- QEMU's TLS parameters ("" = off): the id of a
     * tls-creds-x509 / tls-creds-psk object (lm_mig_object_add), the name
     * the destination's certificate must carry (default: the tcp: URI's
     * host), and (destination) the id of an authz-list that must allow the
     * client's certificate DN */
    char tls_creds[LM_TLS_ID_MAX + 1];
    char tls_hostname[256];
    char tls_authz[LM_TLS_ID_MAX + 1];
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
    LM_PARAM_X_POSTCOPY_TIMEOUT_MS,
    LM_PARAM_VCPU_DIRTY_LIMIT,
    LM_PARAM_X_VCPU_DIRTY_LIMIT_PERIOD,
    LM_PARAM_X_PRECOPY_TIMEOUT_MS,
    LM_PARAM_DIRECT_IO,
    LM_PARAM_TLS_CREDS,
    LM_PARAM_TLS_HOSTNAME,
    LM_PARAM_TLS_AUTHZ,
    LM_PARAM__MAX
} lm_param;

LM_API const char *lm_param_name(lm_param p);
LM_API int lm_param_from_name(const char *name, lm_param *out);
LM_API void lm_params_default(lm_params *p);
LM_API const char *lm_compression_name(lm_multifd_compression c);
LM_API int lm_compression_from_name(const char *name, lm_multifd_compression *out);
LM_API const char *lm_zpd_name(lm_zero_page_detection z);
LM_API int lm_zpd_from_name(const char *name, lm_zero_page_detection *out);

/* ------------------------------------------------------------ statistics */

/* One multifd channel's figures (source side). */
#define LM_MULTIFD_MAX_CHANNELS 255
/* x-postcopy-timeout-ms by default: TCP_USER_TIMEOUT's 10 s (chan/uri.c). */
#define LM_POSTCOPY_TIMEOUT_DEFAULT_MS 10000
/* x-precopy-timeout-ms by default: the same 10 s. */
#define LM_PRECOPY_TIMEOUT_DEFAULT_MS 10000
typedef struct lm_multifd_chan_stats {
    uint64_t bytes;  /* on the wire, headers included */
    uint64_t normal; /* pages sent with data */
    uint64_t zero;   /* zero pages detected by this channel (no data) */
} lm_multifd_chan_stats;

/* query-migrate, QEMU's fields plus a few of ours. */
typedef struct lm_info {
    lm_status status;
    bool has_ram;         /* ram stats meaningful (source side) */
    uint64_t transferred; /* bytes on all channels, headers included */
    uint64_t remaining;   /* dirty bytes still to send */
    uint64_t total;       /* sum of RAM block lengths */
    uint64_t duplicate;   /* zero pages detected */
    uint64_t normal;      /* non-zero pages sent */
    uint64_t normal_bytes;
    uint64_t dirty_pages_rate; /* pages/s over the last >=1 s period */
    double mbps;               /* last 100 ms window; average once completed */
    uint64_t dirty_sync_count; /* passes */
    uint64_t postcopy_requests;
    uint64_t page_size;
    uint64_t multifd_bytes;
    uint64_t pages_per_second;
    uint64_t precopy_bytes, downtime_bytes, postcopy_bytes;
    int64_t total_time;        /* ms */
    int64_t setup_time;        /* ms */
    int64_t expected_downtime; /* ms, -1 when not meaningful */
    int64_t downtime;          /* ms, -1 until known */
    uint64_t downtime_us;      /* ours: downtime in microseconds */
    /* ours, postcopy: from stopping the guest on the source until the
     * answer to the PING after POSTCOPY_RUN arrived, i.e. until the
     * destination ran (its discards and device loads included, which
     * QEMU's downtime leaves out); 0 when unknown */
    uint64_t switch_pause_us;
    uint64_t bandwidth; /* ours: measured wire bandwidth, B/s */
    uint64_t dirty_sync_missed_zero_copy;
    unsigned multifd_channels; /* ours: channels of this migration (0: none) */
    lm_multifd_chan_stats multifd_chan[LM_MULTIFD_MAX_CHANNELS];
    /* destination, postcopy (ours, "x-postcopy" in query-migrate) */
    bool has_postcopy;        /* a switch to postcopy happened */
    uint64_t pc_faults;       /* faults on pages the source still owed */
    uint64_t pc_local_faults; /* faults on zero pages served locally */
    uint64_t pc_owed_pages;   /* pages not placed yet */
    uint64_t pc_mfd_pages;    /* pages the multifd channels brought after the switch */
    /* RAM blocks whose pages are placed by UFFDIO_CONTINUE into shared
     * memory (minor faults) / by UFFDIO_COPY (missing faults) */
    uint32_t pc_minor_blocks, pc_copy_blocks;
    /* postcopy-blocktime: remote fault latency, fault read to placement */
    bool has_blocktime;
    uint64_t pc_lat_hist[24]; /* bucket i: [2^i, 2^(i+1)) µs; 0 also < 1 µs */
    /* p50/p99: exact below 64 µs, above it the upper end of a bucket 1/16
     * of a power of two wide (at most 6.25 % high, never low); max is
     * exact. */
    uint64_t pc_lat_count, pc_lat_p50_us, pc_lat_p99_us, pc_lat_max_us;
    char error_desc[LM_ERROR_MSG_MAX]; /* empty when none */
    char socket_address[128];          /* destination: actual listening address */
    /* ---- 0.2 (lm_mig_query@LIVEMIG_0.2) ---- */
    /* ours, source, precopy: bytes written but not yet delivered (what the
     * kernel holds for the sockets, and multifd batches not yet sent), at
     * the last 100 ms update; and at the switchover decision, which
     * counts them as pending (0 until it happened) */
    uint64_t queued_bytes, switchover_queued_bytes;
    /* source: auto-converge's current CPU throttle, 0..99 (QEMU's
     * cpu-throttle-percentage); dirty-limit: the cap in force per vCPU in
     * MB/s (0: none) and the longest time a vCPU slept for it in one
     * x-vcpu-dirty-limit-period, µs, as the host reported it (QEMU's
     * dirty-limit-throttle-time-per-round) */
    uint32_t cpu_throttle_percentage;
    uint64_t dirty_limit_mbps;
    uint64_t dirty_limit_throttle_us;
    /* ---- 0.3 ---- */
    /* source, capability xbzrle: QEMU's xbzrle-cache.  cache_size: bytes
     * of the cache in use (xbzrle-cache-size, never more than the guest's
     * RAM rounded up to a power of two); bytes: RAM_XBZRLE bytes sent,
     * headers included, plus a page for every overflow (as QEMU); pages:
     * pages sent as a delta; cache_miss: pages not found in the cache
     * after the first round; the rates over the last >= 1 s period:
     * misses per page handled, and page bytes per XBZRLE byte; overflow:
     * deltas given up (too large), the page sent whole */
    bool has_xbzrle;
    uint64_t xbzrle_cache_size, xbzrle_bytes, xbzrle_pages, xbzrle_cache_miss, xbzrle_overflow;
    double xbzrle_cache_miss_rate, xbzrle_encoding_rate;
} lm_info;

/* ---------------------------------------------------------------- events */

typedef enum lm_event_type {
    LM_EVENT_MIGRATION,      /* status changed (needs the "events" cap) */
    LM_EVENT_MIGRATION_PASS, /* dirty sync number `pass` (needs "events") */
    LM_EVENT_STOP,           /* run state: guest stopped */
    LM_EVENT_RESUME,         /* run state: guest resumed */
    /* Switchover-ack: on the source when the destination's ack arrived,
     * on the destination when it sent it (QMP X_MIGRATION_SWITCHOVER_ACK;
     * sent whatever the "events" capability says, like STOP/RESUME). */
    LM_EVENT_SWITCHOVER_ACK,
    LM_EVENT__MAX
} lm_event_type;

typedef struct lm_event {
    lm_event_type type;
    lm_status status;        /* MIGRATION */
    uint64_t pass;           /* MIGRATION_PASS */
    int64_t ts_sec, ts_usec; /* wall-clock timestamp, QMP style */
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

/* What a source asks of its host to make a guest that dirties memory
 * faster than the link converge (QEMU's auto-converge and dirty-limit
 * capabilities, digest §3.8).  All zero: no throttle. */
typedef struct lm_throttle {
    /* auto-converge: the share of time every vCPU sleeps, 0..99 %.  QEMU's
     * mechanism: in each cycle of 10 ms / (1 - pct) a vCPU runs 10 ms and
     * sleeps the rest. */
    unsigned cpu_percent;
    /* dirty-limit: at most this many bytes dirtied per vCPU and second,
     * enforced per period_ms (a vCPU over its share sleeps to the end of
     * the period); 0 = none. */
    uint64_t dirty_limit_bps;
    unsigned period_ms;
} lm_throttle;

/* Called on the migration thread whenever the throttle changes, and with
 * all zero when the migration ends (completed, failed, cancelled) or
 * switches to postcopy.  Must not block for long nor call back into the
 * library, except lm_mig_throttle_report(). */
typedef void (*lm_throttle_fn)(void *opaque, const lm_throttle *t);

/* Creates the migration object of a host.  initial: LM_RUN_RUNNING for a
 * host that starts running, LM_RUN_PAUSED for one that starts stopped,
 * LM_RUN_INMIGRATE for a destination (QEMU's -incoming: the only kind
 * lm_mig_incoming() accepts).  ops and opaque are borrowed for the
 * object's life.  Blocks: no. */
LM_API int lm_mig_new(const lm_host_ops *ops, void *opaque, lm_runstate initial, lm_mig **out,
                      lm_error *err);
/* Cancels any migration, joins the library's threads, frees.  Blocks until
 * they have exited (bounded: all I/O is shut down first).  NULL is a no-op. */
LM_API void lm_mig_free(lm_mig *m);

/* Gives the library a way to throttle the host's vCPUs, which the
 * auto-converge and dirty-limit capabilities need: a migration with
 * either on fails to start without it.  Only while no migration runs;
 * fn NULL removes it.  Blocks: no.  (0.2) */
LM_API int lm_mig_set_throttle(lm_mig *m, lm_throttle_fn fn, void *opaque, lm_error *err);
/* The host reports how long its most throttled vCPU slept for the
 * dirty limit in the last period, µs (query-migrate's
 * dirty-limit-throttle-time-per-round).  Any thread.  (0.2) */
LM_API void lm_mig_throttle_report(lm_mig *m, uint64_t slept_us);

/* Registers a RAM block.  The memory [base, base+len) is borrowed: the host
 * keeps it mapped (anonymous private, memfd or shmem) until lm_mig_free().
 * len must be a multiple of page_size (4096 for now); names are unique,
 * 1..63 bytes.  Only while no migration has started.  The library may
 * madvise() the range (populate, hugepage hints) and write-protect it for
 * dirty tracking while a migration runs.  A postcopy destination registers
 * it with userfaultfd; when it is one MAP_SHARED mapping of shared memory
 * (memfd, shmem), it also maps a second view of the same pages (mremap with
 * old_size 0) to fill them before mapping them with minor faults, and
 * unmaps that view at the end.  Shared memory must not be mixed with
 * private mappings within one block. */
LM_API int lm_ram_add(lm_mig *m, const char *name, void *base, uint64_t len, uint32_t page_size,
                      lm_error *err);

/* Adds an event listener (at most 8).  Thread: any.  Blocks: no. */
LM_API int lm_mig_add_listener(lm_mig *m, lm_event_fn fn, void *opaque, lm_error *err);

/* Removes a listener added with the same fn and opaque; once it returns the
 * listener is not running and will not be called again.  Must not be called
 * from a listener.  Returns -ENOENT when not found. */
LM_API int lm_mig_remove_listener(lm_mig *m, lm_event_fn fn, void *opaque);

/* Capabilities: sets the bits of `mask` to the matching bits of `values`
 * (bit i = lm_cap i), all or nothing, after checking support, dependencies
 * and that no migration is running. */
LM_API int lm_mig_set_capabilities(lm_mig *m, uint64_t mask, uint64_t values, lm_error *err);
LM_API uint64_t lm_mig_get_capabilities(lm_mig *m);

/* Parameters: sets the fields of `in` whose bit (1 << lm_param) is in
 * `which`, all or nothing, after range checks (-EINVAL) and refusing a
 * "default only" parameter that is not at its default (-ENOTSUP).
 * max-bandwidth, max-postcopy-bandwidth, avail-switchover-bandwidth and
 * downtime-limit take effect at once in a running migration; the multifd
 * ones and zero-page-detection at the next start. */
LM_API int lm_mig_set_params(lm_mig *m, const lm_params *in, uint64_t which, lm_error *err);
LM_API void lm_mig_get_params(lm_mig *m, lm_params *out);

/* QMP `migrate`: starts an outgoing migration to uri (tcp:HOST:PORT,
 * unix:PATH, fd:N).  Returns at once; connection and transfer run in the
 * migration thread.  fd:N is duplicated before this returns: the caller
 * keeps N and may close it at once.  resume=true is postcopy recovery: only
 * in postcopy-paused (otherwise -EINVAL, "Cannot resume if there is no
 * paused migration"); the source goes postcopy-recover-setup while it
 * connects to uri (the destination ran lm_mig_recover), then
 * postcopy-recover and postcopy-active; a failure goes back to
 * postcopy-paused with the event and error-desc, and may be retried.
 * Every channel of the migration comes back (main, multifd, preempt). */
LM_API int lm_mig_start(lm_mig *m, const char *uri, bool resume, lm_error *err);
/* QMP `migrate-recover`: a destination in postcopy-paused listens on uri
 * for its source's `migrate resume=true` (otherwise -EINVAL, "Migrate
 * recover can only be run when postcopy is paused."; while it listens
 * already, -EBUSY).  Returns once listening.  The first connection must be
 * the paused session's source resuming it; it takes the destination to
 * postcopy-recover, then postcopy-active.  A refused peer leaves it paused
 * with the reason in error-desc.  Thread: any.  Blocks: no. */
LM_API int lm_mig_recover(lm_mig *m, const char *uri, lm_error *err);
/* QMP `migrate-incoming`: listens on uri and loads the first stream that
 * connects.  Returns once listening (a tcp port 0 is resolved; see
 * lm_info.socket_address).  Only a destination takes it, i.e. an object
 * created with LM_RUN_INMIGRATE that has not run yet (QEMU's -incoming):
 * otherwise -EINVAL, "'-incoming' was not specified on the command line".
 * While an incoming migration is set up, runs or has completed: -EBUSY,
 * "The incoming migration has already been started".  After one failed or
 * was cancelled the destination is still inmigrate and may take another
 * (QEMU would have exited).  fd:N (a listening or a connected socket) is
 * duplicated before this returns: the caller keeps N. */
LM_API int lm_mig_incoming(lm_mig *m, const char *uri, lm_error *err);
/* QMP `migrate_cancel`: works in every precopy state; the source keeps (or
 * resumes) running, unless the end of the stream already went out (then the
 * migration fails and the source stays paused: the guest never runs twice).
 * Refused with -EBUSY once postcopy started.  A no-op when nothing runs. */
LM_API int lm_mig_cancel(lm_mig *m, lm_error *err);
/* QMP `migrate-continue state=...`: releases a pause in `state`
 * (pre-switchover). */
LM_API int lm_mig_continue(lm_mig *m, lm_status state, lm_error *err);
/* QMP `migrate-start-postcopy`: the source switches to postcopy as soon as
 * it could switch over (the must-precopy data is under the threshold and
 * switchover is allowed).  Needs the postcopy-ram capability; accepted in
 * setup and active (QEMU's rule), refused otherwise.  Thread: any.
 * Blocks: no. */
LM_API int lm_mig_start_postcopy(lm_mig *m, lm_error *err);
/* QMP `migrate-pause`, on either side: in postcopy-active or
 * postcopy-recover, shuts every channel down with "Postcopy migration is
 * paused by the user", which takes both sides to postcopy-paused (the
 * peer sees its link break).  Refused (-EINVAL) in any other state, with
 * QEMU's message.  Thread: any.  Blocks: no. */
LM_API int lm_mig_pause(lm_mig *m, lm_error *err);

/* QMP `query-migrate`. */
LM_API void lm_mig_query(lm_mig *m, lm_info *out);

/* QEMU's user-creatable objects for migration TLS (QMP object-add and
 * object-del, -object): type "tls-creds-x509" (dir, endpoint
 * client|server, verify-peer), "tls-creds-psk" (dir, endpoint, username)
 * or "authz-list" (policy allow|deny, rules.N.match, rules.N.policy,
 * rules.N.format exact|glob), with properties as n key/value strings
 * (booleans "on"/"off"/"true"/"false").  Credentials are loaded now:
 * errors name the file or property.  Parameters tls-creds and tls-authz
 * name them by id.  Thread: any.  Blocks: reads the credential files. */
LM_API int lm_mig_object_add(lm_mig *m, const char *type, const char *id, unsigned n,
                             const char *const *keys, const char *const *vals, lm_error *err);
LM_API int lm_mig_object_del(lm_mig *m, const char *id, lm_error *err);

/* The guest's name and UUID, QEMU's -name and -uuid (QMP query-name,
 * query-uuid).  name: 1..LM_NAME_MAX printable ASCII bytes, or NULL for
 * none; uuid: "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex digits, either
 * case), or NULL for QEMU's default, all zeros.  -EINVAL naming what is
 * wrong.  Thread: any.  Blocks: no. */
#define LM_NAME_MAX 255
#define LM_UUID_STR_LEN 36
LM_API int lm_mig_set_identity(lm_mig *m, const char *name, const char *uuid, lm_error *err);
/* Copies the name ("" when none) and the UUID (lower case). */
LM_API void lm_mig_get_identity(lm_mig *m, char name[LM_NAME_MAX + 1],
                                char uuid[LM_UUID_STR_LEN + 1]);

/* Run state (QMP query-status/stop/cont).  stop/cont call the host hooks
 * and emit STOP/RESUME.  cont is refused while migrating in (inmigrate) or
 * during switchover. */
LM_API lm_runstate lm_vm_runstate(lm_mig *m);
LM_API int lm_vm_stop(lm_mig *m, lm_error *err);
LM_API int lm_vm_cont(lm_mig *m, lm_error *err);

/* --------------------------------------------------------------- devices */

/* Device handlers: everything of a host that is not RAM (vCPU state,
 * device models, a VFIO-like device with its own memory).  The table
 * mirrors QEMU's SaveVMHandlers; docs/devices.md describes the semantics,
 * docs/format.md the bytes.
 *
 * A device is *iterable* when it has save_iterate: its state is opened by
 * save_setup, streamed by save_iterate while the guest runs, and closed by
 * save_complete with the guest stopped.  Otherwise it is *non-iterable*
 * and save_state sends its whole state once, at switchover.  A device may
 * have both (iterable data plus a small final state).
 *
 * Data goes out through lm_device_put(); every put becomes one section
 * record on the wire, and the destination's load_state is called once per
 * put, in order, with exactly those bytes.  A device's data format is its
 * own business; `version` lets a newer device read an older stream, and a
 * destination whose device version is lower than the stream's refuses the
 * migration naming the device.
 *
 * Threads: every source callback runs on the migration thread
 * ("lm-migration"); every destination callback on the incoming thread
 * ("lm-incoming").  pending_estimate is called on every loop iteration and
 * must be cheap; the others may block on the device (not on the network:
 * puts are buffered by the library).  save_complete and save_state run with
 * the guest stopped (host stop() has returned); everything else while the
 * guest may run, so a device tracks its own dirty state.  Callbacks must
 * not call lm_mig_* functions that change the migration (start, cancel,
 * free).  Every callback may be NULL unless said otherwise. */

typedef struct lm_device_out lm_device_out;

typedef struct lm_device_ops {
    /* --- source --- */
    /* Iterable devices: opens the device's stream and may put its first
     * data.  Returns 0 or < 0 (fails the migration, source keeps running). */
    int (*save_setup)(void *opaque, lm_device_out *out, lm_error *err);
    /* Puts at most about `budget` bytes (UINT64_MAX: no limit; a device may
     * always put one chunk of its own minimum size so it makes progress).
     * Returns 1 when nothing is left to send now, 0 when more remains,
     * < 0 on error. */
    int (*save_iterate)(void *opaque, lm_device_out *out, uint64_t budget, lm_error *err);
    /* Cheap estimate: ADDS to the accumulators the bytes still to send.
     * must_precopy must move before the guest runs on the destination;
     * can_postcopy could move after. */
    void (*pending_estimate)(void *opaque, uint64_t *must_precopy, uint64_t *can_postcopy);
    /* Exact: ADDS the bytes the switchover would have to send (the
     * stop-copy size); may take longer.  Called only when the estimate of
     * everything is under the switchover threshold.  Returns 0 or < 0.
     * NULL: the estimate is used. */
    int (*pending_exact)(void *opaque, uint64_t *must_precopy, uint64_t *can_postcopy,
                         lm_error *err);
    /* Guest stopped: puts everything that is left.  Returns 0 or < 0. */
    int (*save_complete)(void *opaque, lm_device_out *out, lm_error *err);
    /* Non-iterable state, guest stopped, after every save_complete.
     * Returns 0 or < 0. */
    int (*save_state)(void *opaque, lm_device_out *out, lm_error *err);
    /* After every migration attempt (success, failure, cancel), even when
     * save_setup was never called.  Frees what setup allocated. */
    void (*save_cleanup)(void *opaque);
    /* True when the device can still move data after a postcopy switch:
     * it keeps being iterated after the switch and completes at the end.
     * False (or NULL): it completes at the switch, with the guest stopped,
     * before the destination runs.  Before the switch, and without
     * postcopy, every device is iterated alike. */
    bool (*has_postcopy)(void *opaque);

    /* --- destination --- */
    /* Before the first record of an incoming stream is read.  Returns 0 or
     * < 0 (the incoming migration fails). */
    int (*load_setup)(void *opaque, lm_error *err);
    /* One put of the source device: `len` bytes at `data`, borrowed for the
     * call only.  `version` is the stream's version (<= the registered
     * one).  Returns 0, or LM_DEVICE_LOAD_READY once the device's initial
     * data (the part worth loading before the switch) is all loaded —
     * that is its switchover-ack approval, see switchover_ack_needed —, or
     * < 0 on error: the migration fails with the message, prefixed with
     * the device's name, and the source keeps running. */
    int (*load_state)(void *opaque, uint32_t version, const uint8_t *data, size_t len,
                      lm_error *err);
    /* After every incoming migration, even when load_setup failed or was
     * never called. */
    void (*load_cleanup)(void *opaque);

    /* --- both sides --- */
    /* Switchover-ack (capability "switchover-ack"): true when this device
     * takes part.  On the source, it means the device's data will tell its
     * peer when the initial data is complete; on the destination, that the
     * device approves the switch with LM_DEVICE_LOAD_READY.  A device takes
     * part only when both sides say true (per-device handshake at setup):
     * otherwise it falls back to an ordinary device, which the switch does
     * not wait for.  NULL = false. */
    bool (*switchover_ack_needed)(void *opaque);
} lm_device_ops;

/* load_state's "initial data loaded" answer. */
#define LM_DEVICE_LOAD_READY 1

#define LM_DEVICE_NAME_MAX 63
#define LM_MAX_DEVICES 32

/* Registers a device: name (1..63 printable ASCII bytes) and instance are
 * its identity on the wire and must match the peer's; version (>= 1) is
 * its state format's.  (name, instance) is unique.  ops and opaque are
 * borrowed until lm_mig_free().  Only before the first migration of m
 * starts (like lm_ram_add).  Thread: any.  Blocks: no. */
LM_API int lm_device_register(lm_mig *m, const char *name, uint32_t instance, uint32_t version,
                              const lm_device_ops *ops, void *opaque, lm_error *err);

/* Puts one chunk of device data (1 section record): len <= LM_DEVICE_PUT_MAX.
 * The bytes are copied (or written) before it returns.  Only from the
 * save_setup / save_iterate / save_complete / save_state callback that got
 * `out`, on the migration thread.  Blocks: may, on the network.  Returns 0
 * or < 0 (the channel failed: return it from the callback). */
#define LM_DEVICE_PUT_MAX (8u << 20)
LM_API int lm_device_put(lm_device_out *out, const void *data, size_t len, lm_error *err);

/* Per-device view of the current or last migration (query-migrate's
 * "x-devices").  Source: bytes sent and the last pending answer;
 * destination: bytes received.  ack: see lm_device_ack_state. */
typedef enum lm_device_ack_state {
    LM_DEVICE_ACK_NONE,     /* not taking part (capability off, or not asked) */
    LM_DEVICE_ACK_WAITING,  /* both sides take part; initial data not loaded yet */
    LM_DEVICE_ACK_ACKED,    /* the destination loaded its initial data */
    LM_DEVICE_ACK_FALLBACK, /* only one side supports the ack: not waited for */
} lm_device_ack_state;

LM_API const char *lm_device_ack_state_name(lm_device_ack_state s); /* "none", ... */

typedef struct lm_device_info {
    char name[LM_DEVICE_NAME_MAX + 1];
    uint32_t instance;
    uint32_t version;
    bool iterable;
    uint64_t pending; /* source: bytes still to send (last estimate/exact) */
    uint64_t bytes;   /* source: sent; destination: received */
    lm_device_ack_state ack;
} lm_device_info;

/* Copies at most max entries into out (registration order); returns the
 * number of registered devices.  Thread: any.  Blocks: no. */
LM_API unsigned lm_mig_query_devices(lm_mig *m, lm_device_info *out, unsigned max);

/* ------------------------------------------------------------ QMP server */

typedef struct lm_qmp_server lm_qmp_server;

/* A host-defined QMP command.  args_json is the "arguments" object as JSON
 * text ("{}" when absent).  On success set *ret_json to a malloc'd JSON text
 * (the "return" value; NULL means {}) and return 0; on failure fill err and
 * return < 0 (reported as GenericError with err->msg).  Runs on the QMP
 * thread: must not block for long. */
typedef int (*lm_qmp_cmd_fn)(void *opaque, const char *args_json, char **ret_json, lm_error *err);

/* Serves QMP for m on uri (unix:PATH; the socket file is created, and
 * removed again by stop).  Several clients at once; events go to all.
 * A thread named "lm-qmp" runs it. */
LM_API int lm_qmp_server_start(lm_mig *m, const char *uri, lm_qmp_server **out, lm_error *err);
/* The socket file's permissions when lm_qmp_server_start creates it:
 * owner only, whatever the process umask (anyone who can connect can
 * stop, migrate or quit the guest). */
#define LM_QMP_SOCKET_MODE_DEFAULT 0600
/* Like lm_qmp_server_start; a unix: socket file gets exactly the
 * permission bits `mode` (0 .. 0777; 0 means LM_QMP_SOCKET_MODE_DEFAULT),
 * independent of the umask and never looser while it is being created.
 * -EINVAL for a mode with other bits. */
LM_API int lm_qmp_server_start_mode(lm_mig *m, const char *uri, unsigned mode, lm_qmp_server **out,
                                    lm_error *err);
/* The JSON type of one argument of a host command. */
typedef enum lm_qmp_arg_type {
    LM_QMP_ARG_STR,    /* a string */
    LM_QMP_ARG_BOOL,   /* true or false */
    LM_QMP_ARG_INT,    /* an integer */
    LM_QMP_ARG_NUMBER, /* an integer or a real */
    LM_QMP_ARG_ARRAY,  /* an array (its elements unchecked) */
    LM_QMP_ARG_OBJECT, /* an object (its members unchecked) */
    LM_QMP_ARG_ANY,    /* any JSON value */
    LM_QMP_ARG__MAX
} lm_qmp_arg_type;

/* One argument of a host command; a list of them ends with an entry
 * whose name is NULL. */
typedef struct lm_qmp_arg_spec {
    const char *name; /* 1..63 printable ASCII bytes, unique in the list */
    lm_qmp_arg_type type;
    bool optional; /* false: a request without it is refused */
} lm_qmp_arg_spec;

/* Adds a command whose arguments the server checks before fn runs, as it
 * does for the built-in ones (QEMU's wording and order): a missing required
 * argument ("Parameter 'x' is missing"), one of the wrong JSON type
 * ("Invalid parameter type for 'x', expected: string"), any other key
 * ("Parameter 'y' is unexpected"), or "arguments" that is not an object
 * is answered with GenericError and fn is not called.  args: NULL or a
 * list ending with {NULL}: the command takes those arguments (none for
 * NULL or an empty list); it is copied.  query-qmp-schema describes them.
 * Before or after start; name must not collide with a built-in or
 * registered one.  Thread: any.  Blocks: no. */
LM_API int lm_qmp_server_register_args(lm_qmp_server *s, const char *name,
                                       const lm_qmp_arg_spec *args, lm_qmp_cmd_fn fn, void *opaque,
                                       lm_error *err);
/* Adds a command whose arguments the server does not check: fn gets any
 * "arguments" object and must check it itself.  Prefer
 * lm_qmp_server_register_args, which the server enforces (a command that
 * ignored its arguments took {"bogus": 1} without a word). */
LM_API int lm_qmp_server_register(lm_qmp_server *s, const char *name, lm_qmp_cmd_fn fn,
                                  void *opaque, lm_error *err);
/* Stops the server thread, closes clients, removes the socket.  NULL ok. */
LM_API void lm_qmp_server_stop(lm_qmp_server *s);

/* ------------------------------------------------------------ QMP client */

typedef struct lm_qmp_client lm_qmp_client;

/* Connects to a QMP socket (a path, or unix:PATH), reads the greeting and
 * negotiates qmp_capabilities.  Works with QEMU too.  timeout_ms bounds the
 * connect and greeting. */
LM_API int lm_qmp_client_connect(const char *path, int timeout_ms, lm_qmp_client **out,
                                 lm_error *err);
/* Executes `cmd` with args_json (NULL for none) and waits at most
 * timeout_ms for the reply.  On "return", *ret_json (malloc'd) holds the
 * return value's JSON and 0 is returned.  On "error", returns -EREMOTEIO
 * with "<class>: <desc>" in err.  Events read meanwhile are queued. */
LM_API int lm_qmp_client_call(lm_qmp_client *c, const char *cmd, const char *args_json,
                              char **ret_json, int timeout_ms, lm_error *err);
/* The same, passing descriptor fd (>= 0) with the command (SCM_RIGHTS on
 * the unix socket), as `getfd` and `add-fd` expect; fd < 0 sends none.
 * The caller keeps fd: the server receives its own copy. */
LM_API int lm_qmp_client_call_fd(lm_qmp_client *c, const char *cmd, const char *args_json, int fd,
                                 char **ret_json, int timeout_ms, lm_error *err);
/* Next event as malloc'd JSON text (the whole {"event",...} object) in
 * *event_json; waits at most timeout_ms; returns -ETIMEDOUT when none. */
LM_API int lm_qmp_client_next_event(lm_qmp_client *c, int timeout_ms, char **event_json,
                                    lm_error *err);
LM_API void lm_qmp_client_close(lm_qmp_client *c);

#ifdef __cplusplus
}
#endif
#endif /* LIVEMIG_H */
