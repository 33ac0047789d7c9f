/*
 * params.c - migrate-set-parameters and query-migrate-parameters: the
 * parameter table (type and lm_params field of each QEMU parameter, plus
 * the QEMU parameters accepted only at their "off" value), which the two
 * commands and query-qmp-schema (schema.c) all read.  QMP thread only.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

enum ptype { P_U64, P_U8, P_BOOL, P_COMPRESS, P_ZPD, P_STR };

static const struct {
    enum ptype type;
    size_t off;
} ptab[LM_PARAM__MAX] = {
#define F(id, t, field) [id] = {t, offsetof(lm_params, field)}
    F(LM_PARAM_MAX_BANDWIDTH, P_U64, max_bandwidth),
    F(LM_PARAM_AVAIL_SWITCHOVER_BANDWIDTH, P_U64, avail_switchover_bandwidth),
    F(LM_PARAM_DOWNTIME_LIMIT, P_U64, downtime_limit),
    F(LM_PARAM_MAX_POSTCOPY_BANDWIDTH, P_U64, max_postcopy_bandwidth),
    F(LM_PARAM_MULTIFD_CHANNELS, P_U8, multifd_channels),
    F(LM_PARAM_MULTIFD_COMPRESSION, P_COMPRESS, multifd_compression),
    F(LM_PARAM_MULTIFD_ZLIB_LEVEL, P_U8, multifd_zlib_level),
    F(LM_PARAM_MULTIFD_ZSTD_LEVEL, P_U8, multifd_zstd_level),
    F(LM_PARAM_ZERO_PAGE_DETECTION, P_ZPD, zero_page_detection),
    F(LM_PARAM_XBZRLE_CACHE_SIZE, P_U64, xbzrle_cache_size),
    F(LM_PARAM_THROTTLE_TRIGGER_THRESHOLD, P_U8, throttle_trigger_threshold),
    F(LM_PARAM_CPU_THROTTLE_INITIAL, P_U8, cpu_throttle_initial),
    F(LM_PARAM_CPU_THROTTLE_INCREMENT, P_U8, cpu_throttle_increment),
    F(LM_PARAM_CPU_THROTTLE_TAILSLOW, P_BOOL, cpu_throttle_tailslow),
    F(LM_PARAM_MAX_CPU_THROTTLE, P_U8, max_cpu_throttle),
    F(LM_PARAM_ANNOUNCE_INITIAL, P_U64, announce_initial),
    F(LM_PARAM_ANNOUNCE_MAX, P_U64, announce_max),
    F(LM_PARAM_ANNOUNCE_ROUNDS, P_U64, announce_rounds),
    F(LM_PARAM_ANNOUNCE_STEP, P_U64, announce_step),
    F(LM_PARAM_X_POSTCOPY_TIMEOUT_MS, P_U64, x_postcopy_timeout_ms),
    F(LM_PARAM_VCPU_DIRTY_LIMIT, P_U64, vcpu_dirty_limit),
    F(LM_PARAM_X_VCPU_DIRTY_LIMIT_PERIOD, P_U64, x_vcpu_dirty_limit_period),
    F(LM_PARAM_X_PRECOPY_TIMEOUT_MS, P_U64, x_precopy_timeout_ms),
    F(LM_PARAM_DIRECT_IO, P_BOOL, direct_io),
    F(LM_PARAM_TLS_CREDS, P_STR, tls_creds),
    F(LM_PARAM_TLS_HOSTNAME, P_STR, tls_hostname),
    F(LM_PARAM_TLS_AUTHZ, P_STR, tls_authz),
#undef F
};

/* QEMU parameters this build does not implement, accepted only with the
 * value that means "off" (and reported with it by
 * query-migrate-parameters): libvirt and others reset them routinely.
 * set: the type migrate-set-parameters takes; query: the type
 * query-migrate-parameters reports. */
enum ctype { C_MODE, C_OFF };

static const struct compat {
    const char *name;
    enum ctype type;
} compat[] = {
    {"mode", C_MODE},
    {"block-incremental", C_OFF},
};

#define NCOMPAT (sizeof compat / sizeof compat[0])

/* Returns 1 when key is one of them and v is acceptable, 0 when key is
 * not one of them, < 0 when refused. */
static int compat_param(const char *key, json_t *v, lm_error *err)
{
    const struct compat *c = compat;
    while (c < compat + NCOMPAT && strcmp(c->name, key) != 0)
        c++;
    if (c == compat + NCOMPAT)
        return 0;
    switch (c->type) {
    case C_MODE:
        if (!json_is_string(v))
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for 'mode', expected: string");
        if (!strcmp(json_string_value(v), "normal"))
            return 1;
        return lm_error_set(err, -ENOTSUP, "Parameter 'mode': '%s' is not supported yet",
                            json_string_value(v));
    default:
        if (!json_is_boolean(v))
            return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: boolean",
                                key);
        if (json_is_false(v))
            return 1;
        return lm_error_set(err, -ENOTSUP, "Parameter '%s' is not supported yet", key);
    }
}

static json_t *compat_value(const struct compat *c)
{
    switch (c->type) {
    case C_MODE:
        return json_string("normal");
    default:
        return json_false();
    }
}

size_t lm_qmp_param_count(void)
{
    return LM_PARAM__MAX + NCOMPAT;
}

const char *lm_qmp_param_schema(size_t i, bool set, const char **type)
{
    static const char *const ptypes[] = {
        [P_U64] = "uint64",
        [P_U8] = "uint8",
        [P_BOOL] = "bool",
        [P_COMPRESS] = "MultiFDCompression",
        [P_ZPD] = "ZeroPageDetection",
        [P_STR] = "str",
    };
    if (i < LM_PARAM__MAX) {
        /* tls-*: a string or null (QEMU's StrOrNull) when set */
        *type = ptab[i].type == P_STR && set ? "StrOrNull" : ptypes[ptab[i].type];
        return lm_param_name((lm_param)i);
    }
    if (i >= lm_qmp_param_count())
        return NULL;
    const struct compat *c = &compat[i - LM_PARAM__MAX];
    *type = c->type == C_MODE ? "MigMode" : "bool";
    return c->name;
}

int lm_qmp_decode_params(json_t *args, lm_params *out, uint64_t *which, lm_error *err)
{
    const char *key;
    json_t *v;

    *which = 0;
    if (!json_is_object(args))
        return 0;
    json_object_foreach(args, key, v) {
        lm_param p;
        if (lm_param_from_name(key, &p) < 0) {
            int rc = compat_param(key, v, err);
            if (rc < 0)
                return rc;
            if (rc == 0)
                return lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
            continue;
        }
        char *field = (char *)out + ptab[p].off;
        switch (ptab[p].type) {
        case P_U64:
            /* QEMU takes a negative number as a huge one for backward
             * compatibility; a negative bandwidth is a client bug, so it
             * is refused here. */
            /* Up to 2^64-1, as QEMU (jsonu64.c reads the ones above
             * INT64_MAX exactly). */
            if (!lm_qmp_json_u64(v, (uint64_t *)field))
                return lm_error_set(err, -EINVAL, "Parameter '%s' expects uint64", key);
            break;
        case P_U8:
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255)
                return lm_error_set(err, -EINVAL, "Parameter '%s' expects uint8_t", key);
            *(uint8_t *)field = (uint8_t)json_integer_value(v);
            break;
        case P_BOOL:
            if (!json_is_boolean(v))
                return lm_error_set(err, -EINVAL,
                                    "Invalid parameter type for '%s', expected: "
                                    "boolean",
                                    key);
            *(bool *)field = json_is_true(v);
            break;
        case P_STR: {
            /* QEMU's StrOrNull: null means "" (off) */
            if (!json_is_null(v) && !json_is_string(v))
                return lm_error_set(err, -EINVAL,
                                    "Invalid parameter type for '%s', expected: string", key);
            const char *s = json_is_null(v) ? "" : json_string_value(v);
            size_t cap =
                p == LM_PARAM_TLS_HOSTNAME ? sizeof out->tls_hostname : sizeof out->tls_creds;
            if (strlen(s) >= cap)
                return lm_error_set(err, -EINVAL, "Parameter '%s' is longer than %zu bytes", key,
                                    cap - 1);
            snprintf(field, cap, "%s", s);
            break;
        }
        case P_COMPRESS:
        case P_ZPD: {
            if (!json_is_string(v))
                return lm_error_set(err, -EINVAL,
                                    "Invalid parameter type for '%s', expected: "
                                    "string",
                                    key);
            const char *s = json_string_value(v);
            int rc = ptab[p].type == P_COMPRESS
                         ? lm_compression_from_name(s, (lm_multifd_compression *)field)
                         : lm_zpd_from_name(s, (lm_zero_page_detection *)field);
            if (rc < 0)
                return lm_error_set(err, -EINVAL, "Parameter '%s' does not accept value '%s'", key,
                                    s);
            break;
        }
        }
        *which |= 1ull << p;
    }
    return 0;
}

int lm_qmp_cmd_set_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    lm_params p;
    uint64_t which;
    lm_mig_get_params(m, &p);
    int rc = lm_qmp_decode_params(args, &p, &which, err);
    if (rc || !which)
        return rc;
    return lm_mig_set_params(m, &p, which, err);
}

int lm_qmp_cmd_query_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    lm_params p;
    lm_mig_get_params(m, &p);
    json_t *o = json_object();
    if (!o)
        return lm_error_set(err, -ENOMEM, "out of memory");
    for (unsigned i = 0; i < LM_PARAM__MAX; i++) {
        const char *field = (const char *)&p + ptab[i].off;
        json_t *v = NULL;
        switch (ptab[i].type) {
        case P_U64:
            v = lm_qmp_ju64(*(const uint64_t *)field);
            break;
        case P_U8:
            v = json_integer(*(const uint8_t *)field);
            break;
        case P_BOOL:
            v = json_boolean(*(const bool *)field);
            break;
        case P_COMPRESS: {
            const char *s = lm_compression_name(*(const lm_multifd_compression *)field);
            v = json_string(s ? s : "none");
            break;
        }
        case P_ZPD: {
            const char *s = lm_zpd_name(*(const lm_zero_page_detection *)field);
            v = json_string(s ? s : "none");
            break;
        }
        case P_STR:
            v = json_string(field);
            break;
        }
        lm_qmp_put(o, lm_param_name((lm_param)i), v);
    }
    for (size_t i = 0; i < NCOMPAT; i++)
        lm_qmp_put(o, compat[i].name, compat_value(&compat[i]));
    *ret = o;
    return 0;
}
