/*
 * params.c - names, defaults and validation of statuses, run states,
 * capabilities and parameters, QEMU's spelling and rules (digest §9).
 */
#include "core/internal.h"
#include "mem/wp.h"

#include <errno.h>
#include <string.h>

static const char *const status_names[LM_STATUS__MAX] = {
    [LM_STATUS_NONE] = "none",
    [LM_STATUS_SETUP] = "setup",
    [LM_STATUS_CANCELLING] = "cancelling",
    [LM_STATUS_CANCELLED] = "cancelled",
    [LM_STATUS_ACTIVE] = "active",
    [LM_STATUS_POSTCOPY_DEVICE] = "postcopy-device",
    [LM_STATUS_POSTCOPY_ACTIVE] = "postcopy-active",
    [LM_STATUS_POSTCOPY_PAUSED] = "postcopy-paused",
    [LM_STATUS_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
    [LM_STATUS_POSTCOPY_RECOVER] = "postcopy-recover",
    [LM_STATUS_COMPLETED] = "completed",
    [LM_STATUS_FAILED] = "failed",
    [LM_STATUS_COLO] = "colo",
    [LM_STATUS_PRE_SWITCHOVER] = "pre-switchover",
    [LM_STATUS_DEVICE] = "device",
    [LM_STATUS_WAIT_UNPLUG] = "wait-unplug",
};

const char *lm_status_name(lm_status s)
{
    return (unsigned)s < LM_STATUS__MAX ? status_names[s] : NULL;
}

int lm_status_from_name(const char *name, lm_status *out)
{
    for (unsigned i = 0; i < LM_STATUS__MAX; i++) {
        if (name && strcmp(name, status_names[i]) == 0) {
            *out = (lm_status)i;
            return 0;
        }
    }
    return -EINVAL;
}

static const char *const runstate_names[LM_RUN__MAX] = {
    [LM_RUN_RUNNING] = "running",
    [LM_RUN_PAUSED] = "paused",
    [LM_RUN_INMIGRATE] = "inmigrate",
    [LM_RUN_POSTMIGRATE] = "postmigrate",
    [LM_RUN_FINISH_MIGRATE] = "finish-migrate",
    [LM_RUN_PRELAUNCH] = "prelaunch",
};

const char *lm_runstate_name(lm_runstate r)
{
    return (unsigned)r < LM_RUN__MAX ? runstate_names[r] : NULL;
}

/* Capabilities.  `supported` says what this build implements; the others
 * are refused with "not supported yet" instead of being silently taken. */
static const struct {
    const char *name;
    bool supported;
} caps[LM_CAP__MAX] = {
    [LM_CAP_XBZRLE] = {"xbzrle", true},
    [LM_CAP_RDMA_PIN_ALL] = {"rdma-pin-all", false},
    [LM_CAP_AUTO_CONVERGE] = {"auto-converge", true},
    [LM_CAP_ZERO_BLOCKS] = {"zero-blocks", false},
    [LM_CAP_EVENTS] = {"events", true},
    [LM_CAP_POSTCOPY_RAM] = {"postcopy-ram", true},
    [LM_CAP_X_COLO] = {"x-colo", false},
    [LM_CAP_RELEASE_RAM] = {"release-ram", false},
    /* The return path is always on in livemig (the source reports
     * completed only after the destination confirms); the capability is
     * accepted for compatibility and changes nothing. */
    [LM_CAP_RETURN_PATH] = {"return-path", true},
    [LM_CAP_PAUSE_BEFORE_SWITCHOVER] = {"pause-before-switchover", true},
    [LM_CAP_MULTIFD] = {"multifd", true},
    [LM_CAP_DIRTY_BITMAPS] = {"dirty-bitmaps", false},
    [LM_CAP_POSTCOPY_BLOCKTIME] = {"postcopy-blocktime", true},
    /* A no-op in QEMU too: activation is always delayed until start. */
    [LM_CAP_LATE_BLOCK_ACTIVATE] = {"late-block-activate", true},
    [LM_CAP_X_IGNORE_SHARED] = {"x-ignore-shared", false},
    [LM_CAP_VALIDATE_UUID] = {"validate-uuid", false},
    [LM_CAP_BACKGROUND_SNAPSHOT] = {"background-snapshot", true},
    [LM_CAP_ZERO_COPY_SEND] = {"zero-copy-send", false},
    [LM_CAP_POSTCOPY_PREEMPT] = {"postcopy-preempt", true},
    [LM_CAP_SWITCHOVER_ACK] = {"switchover-ack", true},
    [LM_CAP_DIRTY_LIMIT] = {"dirty-limit", true},
    [LM_CAP_MAPPED_RAM] = {"mapped-ram", true},
    [LM_CAP_X_LAZY_RESTORE] = {"x-lazy-restore", true},
};

const char *lm_cap_name(lm_cap c)
{
    return (unsigned)c < LM_CAP__MAX ? caps[c].name : NULL;
}

int lm_cap_from_name(const char *name, lm_cap *out)
{
    for (unsigned i = 0; i < LM_CAP__MAX; i++) {
        if (name && strcmp(name, caps[i].name) == 0) {
            *out = (lm_cap)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool lm_cap_supported(lm_cap c)
{
    return (unsigned)c < LM_CAP__MAX && caps[c].supported;
}

#define CAP(c) (1ull << (c))

/* QEMU's dependency rules (migrate_caps_check) for the capabilities that
 * can be on in this build, plus the "not supported yet" refusal. */
int lm_caps_check(uint64_t set, lm_error *err)
{
    for (unsigned i = 0; i < LM_CAP__MAX; i++) {
        if ((set & CAP(i)) && !caps[i].supported)
            return lm_error_set(err, -ENOTSUP, "capability '%s' is not supported yet",
                                caps[i].name);
    }
    if (set & ~(CAP(LM_CAP__MAX) - 1))
        return lm_error_set(err, -EINVAL, "unknown capability bit");
    if ((set & CAP(LM_CAP_SWITCHOVER_ACK)) && !(set & CAP(LM_CAP_RETURN_PATH)))
        return lm_error_set(err, -EINVAL,
                            "capability 'switchover-ack' requires capability "
                            "'return-path'");
    if ((set & CAP(LM_CAP_POSTCOPY_PREEMPT)) && !(set & CAP(LM_CAP_POSTCOPY_RAM)))
        return lm_error_set(err, -EINVAL, "postcopy preempt requires postcopy-ram");
    if ((set & CAP(LM_CAP_MAPPED_RAM)) && (set & CAP(LM_CAP_POSTCOPY_RAM)))
        return lm_error_set(err, -EINVAL, "Mapped-ram migration is incompatible with postcopy");
    /* QEMU's words.  XBZRLE is used on the main channel only; with
     * postcopy-ram it stops at the switch (QEMU does not refuse that). */
    if ((set & CAP(LM_CAP_MULTIFD)) && (set & CAP(LM_CAP_XBZRLE)))
        return lm_error_set(err, -EINVAL, "Multifd is not compatible with xbzrle");
    if ((set & CAP(LM_CAP_MAPPED_RAM)) && (set & CAP(LM_CAP_XBZRLE)))
        return lm_error_set(err, -EINVAL, "Mapped-ram migration is incompatible with xbzrle");
    if ((set & CAP(LM_CAP_X_LAZY_RESTORE)) && !(set & CAP(LM_CAP_MAPPED_RAM)))
        return lm_error_set(err, -EINVAL,
                            "capability 'x-lazy-restore' requires capability 'mapped-ram' "
                            "(pages are served from their fixed places in the file)");
    if ((set & CAP(LM_CAP_AUTO_CONVERGE)) && (set & CAP(LM_CAP_DIRTY_LIMIT)))
        return lm_error_set(err, -EINVAL, "dirty-limit conflicts with auto-converge");
    if (set & CAP(LM_CAP_BACKGROUND_SNAPSHOT)) {
        /* QEMU's check_caps_background_snapshot, in its order.  (This
         * engine always has a return path; the capability still conflicts,
         * as in QEMU, so that the same settings are refused the same way.) */
        static const lm_cap bad[] = {
            LM_CAP_POSTCOPY_RAM, LM_CAP_DIRTY_BITMAPS, LM_CAP_POSTCOPY_BLOCKTIME,
            LM_CAP_LATE_BLOCK_ACTIVATE, LM_CAP_RETURN_PATH, LM_CAP_MULTIFD,
            LM_CAP_PAUSE_BEFORE_SWITCHOVER, LM_CAP_AUTO_CONVERGE, LM_CAP_RELEASE_RAM,
            LM_CAP_RDMA_PIN_ALL, LM_CAP_XBZRLE, LM_CAP_X_COLO, LM_CAP_VALIDATE_UUID,
            LM_CAP_ZERO_COPY_SEND, LM_CAP_POSTCOPY_PREEMPT, LM_CAP_SWITCHOVER_ACK,
            /* Not in QEMU's list: this engine's
             * snapshot writes the ordinary stream
             * (a mapped-ram file would be left
             * without its bitmaps). */
            LM_CAP_MAPPED_RAM};
        for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++)
            if (set & CAP(bad[i]))
                return lm_error_set(err, -EINVAL, "Background-snapshot is not compatible with %s",
                                    caps[bad[i]].name);
        /* QEMU's ram_write_tracking_available: the kernel must offer
         * synchronous write-protection (with the features it needs). */
        lm_wp *w = NULL;
        lm_error why = {0};
        if (lm_wp_new(&w, &why) < 0)
            return lm_error_set(err, -EOPNOTSUPP,
                                "Background-snapshot is not supported by host kernel: %s", why.msg);
        lm_wp_free(w);
    }
    return 0;
}

/* ---------------------------------------------------------- parameters */

static const char *const param_names[LM_PARAM__MAX] = {
    [LM_PARAM_MAX_BANDWIDTH] = "max-bandwidth",
    [LM_PARAM_AVAIL_SWITCHOVER_BANDWIDTH] = "avail-switchover-bandwidth",
    [LM_PARAM_DOWNTIME_LIMIT] = "downtime-limit",
    [LM_PARAM_MAX_POSTCOPY_BANDWIDTH] = "max-postcopy-bandwidth",
    [LM_PARAM_MULTIFD_CHANNELS] = "multifd-channels",
    [LM_PARAM_MULTIFD_COMPRESSION] = "multifd-compression",
    [LM_PARAM_MULTIFD_ZLIB_LEVEL] = "multifd-zlib-level",
    [LM_PARAM_MULTIFD_ZSTD_LEVEL] = "multifd-zstd-level",
    [LM_PARAM_ZERO_PAGE_DETECTION] = "zero-page-detection",
    [LM_PARAM_XBZRLE_CACHE_SIZE] = "xbzrle-cache-size",
    [LM_PARAM_THROTTLE_TRIGGER_THRESHOLD] = "throttle-trigger-threshold",
    [LM_PARAM_CPU_THROTTLE_INITIAL] = "cpu-throttle-initial",
    [LM_PARAM_CPU_THROTTLE_INCREMENT] = "cpu-throttle-increment",
    [LM_PARAM_CPU_THROTTLE_TAILSLOW] = "cpu-throttle-tailslow",
    [LM_PARAM_MAX_CPU_THROTTLE] = "max-cpu-throttle",
    [LM_PARAM_ANNOUNCE_INITIAL] = "announce-initial",
    [LM_PARAM_ANNOUNCE_MAX] = "announce-max",
    [LM_PARAM_ANNOUNCE_ROUNDS] = "announce-rounds",
    [LM_PARAM_ANNOUNCE_STEP] = "announce-step",
    [LM_PARAM_X_POSTCOPY_TIMEOUT_MS] = "x-postcopy-timeout-ms",
    [LM_PARAM_VCPU_DIRTY_LIMIT] = "vcpu-dirty-limit",
    [LM_PARAM_X_VCPU_DIRTY_LIMIT_PERIOD] = "x-vcpu-dirty-limit-period",
    [LM_PARAM_X_PRECOPY_TIMEOUT_MS] = "x-precopy-timeout-ms",
    [LM_PARAM_DIRECT_IO] = "direct-io",
    [LM_PARAM_TLS_CREDS] = "tls-creds",
    [LM_PARAM_TLS_HOSTNAME] = "tls-hostname",
    [LM_PARAM_TLS_AUTHZ] = "tls-authz",
};

const char *lm_param_name(lm_param p)
{
    return (unsigned)p < LM_PARAM__MAX ? param_names[p] : NULL;
}

int lm_param_from_name(const char *name, lm_param *out)
{
    for (unsigned i = 0; i < LM_PARAM__MAX; i++) {
        if (name && strcmp(name, param_names[i]) == 0) {
            *out = (lm_param)i;
            return 0;
        }
    }
    return -EINVAL;
}

void lm_params_default(lm_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_bandwidth = 128ull << 20; /* QEMU's MAX_THROTTLE */
    p->avail_switchover_bandwidth = 0;
    p->downtime_limit = 300;
    p->max_postcopy_bandwidth = 0;
    p->multifd_channels = 2;
    p->multifd_compression = LM_COMPRESS_NONE;
    p->multifd_zlib_level = 1;
    p->multifd_zstd_level = 1;
    p->zero_page_detection = LM_ZPD_MULTIFD;
    p->xbzrle_cache_size = 64ull << 20;
    p->throttle_trigger_threshold = 50;
    p->cpu_throttle_initial = 20;
    p->cpu_throttle_increment = 10;
    p->cpu_throttle_tailslow = false;
    p->max_cpu_throttle = 99;
    p->announce_initial = 50;
    p->announce_max = 550;
    p->announce_rounds = 5;
    p->announce_step = 100;
    p->x_postcopy_timeout_ms = LM_POSTCOPY_TIMEOUT_DEFAULT_MS;
    p->vcpu_dirty_limit = 1;
    p->x_vcpu_dirty_limit_period = 1000;
    p->x_precopy_timeout_ms = LM_PRECOPY_TIMEOUT_DEFAULT_MS;
}

static const char *const compress_names[] = {"none", "zlib", "zstd", "lz4"};
static const char *const zpd_names[] = {"none", "legacy", "multifd"};

const char *lm_compression_name(lm_multifd_compression c)
{
    return (unsigned)c < 4 ? compress_names[c] : NULL;
}

int lm_compression_from_name(const char *name, lm_multifd_compression *out)
{
    for (unsigned i = 0; i < 4; i++) {
        if (name && strcmp(name, compress_names[i]) == 0) {
            *out = (lm_multifd_compression)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *lm_zpd_name(lm_zero_page_detection z)
{
    return (unsigned)z < 3 ? zpd_names[z] : NULL;
}

int lm_zpd_from_name(const char *name, lm_zero_page_detection *out)
{
    for (unsigned i = 0; i < 3; i++) {
        if (name && strcmp(name, zpd_names[i]) == 0) {
            *out = (lm_zero_page_detection)i;
            return 0;
        }
    }
    return -EINVAL;
}

#define P(x) (1ull << (x))

/* Parameters the engine stores but does not act on: they tune the
 * destination's self-announce, which this build does not have.  Each is accepted with its
 * default value only (management software sets them routinely, usually to the default), so a
 * setting never silently does nothing. */
static int only_defaults(const lm_params *p, uint64_t which, lm_error *err)
{
    lm_params d;
    lm_params_default(&d);
#define ONLY_DEFAULT(id, field)                                                                    \
    if ((which & P(id)) && p->field != d.field)                                                    \
    return lm_error_set(err, -ENOTSUP,                                                             \
                        "Parameter '%s' is not supported (only its default, %llu, is "             \
                        "accepted)",                                                               \
                        param_names[id], (unsigned long long)d.field)
    ONLY_DEFAULT(LM_PARAM_ANNOUNCE_INITIAL, announce_initial);
    ONLY_DEFAULT(LM_PARAM_ANNOUNCE_MAX, announce_max);
    ONLY_DEFAULT(LM_PARAM_ANNOUNCE_ROUNDS, announce_rounds);
    ONLY_DEFAULT(LM_PARAM_ANNOUNCE_STEP, announce_step);
#undef ONLY_DEFAULT
    return 0;
}

/* Range checks of migrate_params_check (digest §9.2), then only_defaults():
 * a value out of range is told so, whether or not the parameter is
 * implemented. */
int lm_params_check(const lm_params *p, uint64_t which, lm_error *err)
{
#define STR_OK(id, field)                                                                          \
    if ((which & P(id)) && !memchr(p->field, 0, sizeof p->field))                                  \
        return lm_error_set(err, -EINVAL, "Parameter '%s' is longer than %zu bytes",               \
                            param_names[id], sizeof p->field - 1);
    STR_OK(LM_PARAM_TLS_CREDS, tls_creds);
    STR_OK(LM_PARAM_TLS_HOSTNAME, tls_hostname);
    STR_OK(LM_PARAM_TLS_AUTHZ, tls_authz);
#undef STR_OK
    if ((which & P(LM_PARAM_DOWNTIME_LIMIT)) && p->downtime_limit > 2000000)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'downtime-limit' expects an integer in "
                            "the range of 0 to 2000000 milliseconds");
    if ((which & P(LM_PARAM_MULTIFD_CHANNELS)) && p->multifd_channels < 1)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'multifd-channels' expects a value between 1 and 255");
    if ((which & P(LM_PARAM_MULTIFD_ZLIB_LEVEL)) && p->multifd_zlib_level > 9)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'multifd-zlib-level' expects a value between 0 and 9");
    if ((which & P(LM_PARAM_MULTIFD_ZSTD_LEVEL)) && p->multifd_zstd_level > 20)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'multifd-zstd-level' expects a value between 0 and 20");
    if ((which & P(LM_PARAM_MULTIFD_COMPRESSION)) && (unsigned)p->multifd_compression > 3)
        return lm_error_set(err, -EINVAL, "Parameter 'multifd-compression' is invalid");
    if ((which & P(LM_PARAM_ZERO_PAGE_DETECTION)) && (unsigned)p->zero_page_detection > 2)
        return lm_error_set(err, -EINVAL, "Parameter 'zero-page-detection' is invalid");
    if ((which & P(LM_PARAM_XBZRLE_CACHE_SIZE)) &&
        (p->xbzrle_cache_size < LM_PAGE_SIZE ||
         (p->xbzrle_cache_size & (p->xbzrle_cache_size - 1))))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'xbzrle-cache-size' expects a power of "
                            "two no less than the target page size");
    if ((which & P(LM_PARAM_THROTTLE_TRIGGER_THRESHOLD)) &&
        (p->throttle_trigger_threshold < 1 || p->throttle_trigger_threshold > 100))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'throttle-trigger-threshold' expects an "
                            "integer in the range of 1 to 100");
    if ((which & P(LM_PARAM_CPU_THROTTLE_INITIAL)) &&
        (p->cpu_throttle_initial < 1 || p->cpu_throttle_initial > 99))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'cpu-throttle-initial' expects an integer in the range "
                            "of 1 to 99");
    if ((which & P(LM_PARAM_CPU_THROTTLE_INCREMENT)) &&
        (p->cpu_throttle_increment < 1 || p->cpu_throttle_increment > 99))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'cpu-throttle-increment' expects an integer in the range "
                            "of 1 to 99");
    if ((which & P(LM_PARAM_MAX_CPU_THROTTLE)) &&
        (p->max_cpu_throttle < 1 || p->max_cpu_throttle > 99))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'max-cpu-throttle' expects an integer in "
                            "the range of 1 to 99");
    /* QEMU: vcpu-dirty-limit >= 1 MB/s, x-vcpu-dirty-limit-period 1..1000 ms. */
    if ((which & P(LM_PARAM_VCPU_DIRTY_LIMIT)) &&
        (p->vcpu_dirty_limit < 1 || p->vcpu_dirty_limit > (UINT64_MAX >> 20)))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'vcpu-dirty-limit' expects a value of at least 1 (MB/s)");
    if ((which & P(LM_PARAM_X_VCPU_DIRTY_LIMIT_PERIOD)) &&
        (p->x_vcpu_dirty_limit_period < 1 || p->x_vcpu_dirty_limit_period > 1000))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'x-vcpu-dirty-limit-period' expects an integer in the "
                            "range of 1 to 1000 ms");
    if ((which & P(LM_PARAM_ANNOUNCE_INITIAL)) && p->announce_initial > 100000)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'announce-initial' expects a value of at most 100000");
    if ((which & P(LM_PARAM_ANNOUNCE_MAX)) && p->announce_max > 100000)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'announce-max' expects a value of at most 100000");
    if ((which & P(LM_PARAM_ANNOUNCE_ROUNDS)) && p->announce_rounds > 1000)
        return lm_error_set(err, -EINVAL,
                            "Parameter 'announce-rounds' expects a value of at most 1000");
    if ((which & P(LM_PARAM_ANNOUNCE_STEP)) && (p->announce_step < 1 || p->announce_step > 10000))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'announce-step' expects a value between 1 and 10000");
    if ((which & P(LM_PARAM_X_POSTCOPY_TIMEOUT_MS)) && p->x_postcopy_timeout_ms &&
        (p->x_postcopy_timeout_ms < 200 || p->x_postcopy_timeout_ms > 3600000))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'x-postcopy-timeout-ms' expects 0 (never) or a value "
                            "between 200 and 3600000");
    if ((which & P(LM_PARAM_X_PRECOPY_TIMEOUT_MS)) && p->x_precopy_timeout_ms &&
        (p->x_precopy_timeout_ms < 200 || p->x_precopy_timeout_ms > 3600000))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'x-precopy-timeout-ms' expects 0 (never) or a value "
                            "between 200 and 3600000");
    return only_defaults(p, which, err);
}
