/*
 * commands.c - the built-in QMP commands: QEMU's names, arguments, defaults
 * and reply shapes (qapi/migration.json, qapi/run-state.json; digest §9,
 * §10), each mapped onto the public lm_mig_* API.
 *
 * Runs on the QMP server thread ("lm-qmp") only, and holds no lock of its
 * own.  Every lm_mig_* call used here returns at once (the library never
 * blocks a control call on migration I/O), so no command can stall the
 * server.  Argument errors use QEMU's wording ("Parameter 'x' is missing",
 * "Parameter 'x' is unexpected", "Invalid parameter type for 'x', expected:
 * boolean") so that management software that matches them keeps working.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ arguments */

enum atype { T_STR, T_BOOL, T_INT, T_NUM, T_ARRAY, T_OBJ, T_ANY };

typedef struct argspec {
    const char *name;
    enum atype type;
    bool required;
} argspec;

static const char *type_name(enum atype t)
{
    switch (t) {
    case T_STR:
        return "string";
    case T_BOOL:
        return "boolean";
    case T_INT:
        return "integer";
    case T_NUM:
        return "number";
    case T_ARRAY:
        return "array";
    case T_OBJ:
        return "object";
    default:
        return "any";
    }
}

static bool type_ok(json_t *v, enum atype t)
{
    switch (t) {
    case T_STR:
        return json_is_string(v);
    case T_BOOL:
        return json_is_boolean(v);
    case T_INT:
        return json_is_integer(v);
    case T_NUM:
        return json_is_number(v);
    case T_ARRAY:
        return json_is_array(v);
    case T_OBJ:
        return json_is_object(v);
    default:
        return true;
    }
}

/* QEMU's input visitor order: declared members first (missing, wrong
 * type), then anything left over is unexpected. */
static int check_args(json_t *args, const argspec *spec, lm_error *err)
{
    for (const argspec *a = spec; a && a->name; a++) {
        json_t *v = json_object_get(args, a->name);
        if (!v) {
            if (a->required)
                return lm_error_set(err, -EINVAL, "Parameter '%s' is missing", a->name);
            continue;
        }
        if (!type_ok(v, a->type))
            return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: %s",
                                a->name, type_name(a->type));
    }
    if (!json_is_object(args))
        return 0;
    const char *key;
    json_t *v;
    json_object_foreach(args, key, v) {
        const argspec *a = spec;
        while (a && a->name && strcmp(a->name, key) != 0)
            a++;
        if (!a || !a->name)
            return lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
    }
    return 0;
}

static const char *get_str(json_t *args, const char *name)
{
    return json_string_value(json_object_get(args, name));
}

static bool get_bool(json_t *args, const char *name, bool dflt)
{
    json_t *v = json_object_get(args, name);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* --------------------------------------------------------- run state */

static int cmd_query_version(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    *ret = json_pack("{s:{s:i, s:i, s:i}, s:s}", "qemu", "micro", LM_VERSION_MICRO, "minor",
                     LM_VERSION_MINOR, "major", LM_VERSION_MAJOR, "package", "livemig");
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

static int cmd_query_status(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    lm_runstate r = lm_vm_runstate(m);
    const char *name = lm_runstate_name(r);
    *ret = json_pack("{s:s, s:b, s:b}", "status", name ? name : "running", "running",
                     r == LM_RUN_RUNNING, "singlestep", 0);
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

static int cmd_stop(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_vm_stop(m, err);
}

static int cmd_cont(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_vm_cont(m, err);
}

/* ------------------------------------------------------ migrate, incoming */

/* QEMU 9.1's "uri" versus "channels" rules (migration.c qmp_migrate). */
static int pick_uri(json_t *args, const char *cmd, const char **uri, lm_error *err)
{
    bool has_uri = json_object_get(args, "uri") != NULL;
    bool has_channels = json_object_get(args, "channels") != NULL;
    if (has_uri && has_channels)
        return lm_error_set(err, -EINVAL,
                            "'uri' and 'channels' arguments are mutually "
                            "exclusive; exactly one of the two should be present "
                            "in '%s' qmp command",
                            cmd);
    if (has_channels)
        return lm_error_set(err, -ENOTSUP, "%s: 'channels' is not supported yet, use 'uri'", cmd);
    if (!has_uri)
        return lm_error_set(err, -EINVAL, "need either 'uri' or 'channels' argument");
    *uri = get_str(args, "uri");
    return 0;
}

static const argspec migrate_args[] = {
    {"uri", T_STR, false},     {"channels", T_ARRAY, false}, {"detach", T_BOOL, false},
    {"resume", T_BOOL, false}, {"blk", T_BOOL, false},       {"inc", T_BOOL, false},
    {NULL, 0, false},
};

static int cmd_migrate(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    const char *uri = NULL;
    /* detach is ignored by QEMU too (migration always runs detached);
     * blk and inc are the removed block migration. */
    if (get_bool(args, "blk", false) || get_bool(args, "inc", false))
        return lm_error_set(err, -ENOTSUP,
                            "Block migration ('blk', 'inc') is not supported; "
                            "use blockdev-mirror with NBD instead");
    int rc = pick_uri(args, "migrate", &uri, err);
    if (rc)
        return rc;
    return lm_mig_start(m, uri, get_bool(args, "resume", false), err);
}

static const argspec incoming_args[] = {
    {"uri", T_STR, false},
    {"channels", T_ARRAY, false},
    /* QEMU exits on a failed incoming migration unless this is false; a
     * library never exits, so both values mean "stay up and report". */
    {"exit-on-error", T_BOOL, false},
    {NULL, 0, false},
};

static int cmd_migrate_incoming(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    const char *uri = NULL;
    int rc = pick_uri(args, "migrate-incoming", &uri, err);
    if (rc)
        return rc;
    return lm_mig_incoming(m, uri, err);
}

static int cmd_migrate_cancel(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_cancel(m, err);
}

static const argspec continue_args[] = {{"state", T_STR, true}, {NULL, 0, false}};

static int cmd_migrate_continue(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    const char *name = get_str(args, "state");
    lm_status st;
    if (lm_status_from_name(name, &st) < 0)
        return lm_error_set(err, -EINVAL, "Parameter 'state' does not accept value '%s'", name);
    return lm_mig_continue(m, st, err);
}

static int cmd_migrate_start_postcopy(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_start_postcopy(m, err);
}

static const argspec recover_args[] = {{"uri", T_STR, true}, {NULL, 0, false}};

/* migrate-pause: either side, postcopy-active or postcopy-recover only
 * (QEMU's refusal text otherwise). */
static int cmd_migrate_pause(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_pause(m, err);
}

/* migrate-recover exists with QEMU's arguments so that a client gets a
 * clear refusal rather than CommandNotFound. */

static int cmd_migrate_recover(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_error_set(err, -ENOTSUP, "migrate-recover: postcopy recovery is not supported yet");
}

/* ---------------------------------------------------------- capabilities */

int lm_qmp_decode_caps(json_t *args, uint64_t *mask, uint64_t *values, lm_error *err)
{
    json_t *list = json_object_get(args, "capabilities");
    size_t i;
    json_t *e;

    *mask = *values = 0;
    if (!list)
        return lm_error_set(err, -EINVAL, "Parameter 'capabilities' is missing");
    if (!json_is_array(list))
        return lm_error_set(err, -EINVAL,
                            "Invalid parameter type for 'capabilities', expected: array");
    json_array_foreach(list, i, e) {
        if (!json_is_object(e))
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for 'capabilities[%zu]', "
                                "expected: object",
                                i);
        json_t *name = json_object_get(e, "capability");
        json_t *state = json_object_get(e, "state");
        if (!name)
            return lm_error_set(err, -EINVAL, "Parameter 'capabilities[%zu].capability' is missing",
                                i);
        if (!json_is_string(name))
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for "
                                "'capabilities[%zu].capability', expected: string",
                                i);
        if (!state)
            return lm_error_set(err, -EINVAL, "Parameter 'capabilities[%zu].state' is missing", i);
        if (!json_is_boolean(state))
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for "
                                "'capabilities[%zu].state', expected: boolean",
                                i);
        const char *key;
        json_t *v;
        json_object_foreach(e, key, v) {
            if (strcmp(key, "capability") && strcmp(key, "state"))
                return lm_error_set(err, -EINVAL, "Parameter 'capabilities[%zu].%s' is unexpected",
                                    i, key);
        }
        lm_cap c;
        if (lm_cap_from_name(json_string_value(name), &c) < 0)
            return lm_error_set(err, -EINVAL, "Parameter 'capability' does not accept value '%s'",
                                json_string_value(name));
        /* A capability listed twice: the last one wins, as in QEMU. */
        *mask |= 1ull << c;
        if (json_is_true(state))
            *values |= 1ull << c;
        else
            *values &= ~(1ull << c);
    }
    return 0;
}

static const argspec caps_args[] = {{"capabilities", T_ARRAY, true}, {NULL, 0, false}};

static int cmd_set_caps(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    uint64_t mask, values;
    int rc = lm_qmp_decode_caps(args, &mask, &values, err);
    if (rc)
        return rc;
    return lm_mig_set_capabilities(m, mask, values, err);
}

static int cmd_query_caps(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    uint64_t caps = lm_mig_get_capabilities(m);
    json_t *list = json_array();
    if (!list)
        return lm_error_set(err, -ENOMEM, "out of memory");
    for (unsigned c = 0; c < LM_CAP__MAX; c++) {
        json_t *e = json_pack("{s:s, s:b}", "capability", lm_cap_name((lm_cap)c), "state",
                              (int)((caps >> c) & 1));
        if (!e || json_array_append_new(list, e) < 0) {
            json_decref(list);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    *ret = list;
    return 0;
}

/* ------------------------------------------------------------ parameters */

enum ptype { P_U64, P_U8, P_BOOL, P_COMPRESS, P_ZPD };

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
#undef F
};

/* QEMU parameters this build does not implement, accepted only with the
 * value that means "off": libvirt and others reset them routinely (e.g.
 * tls-creds "" before every migration).  Returns 1 when key is one of them
 * and acceptable, 0 when key is not one of them, < 0 when refused. */
static int compat_param(const char *key, json_t *v, lm_error *err)
{
    if (!strcmp(key, "tls-creds") || !strcmp(key, "tls-hostname") || !strcmp(key, "tls-authz")) {
        if (json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
            return 1;
        if (!json_is_string(v))
            return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: string",
                                key);
        return lm_error_set(err, -ENOTSUP, "Parameter '%s': TLS is not supported yet", key);
    }
    if (!strcmp(key, "mode")) {
        if (!json_is_string(v))
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for 'mode', expected: string");
        if (!strcmp(json_string_value(v), "normal"))
            return 1;
        return lm_error_set(err, -ENOTSUP, "Parameter 'mode': '%s' is not supported yet",
                            json_string_value(v));
    }
    if (!strcmp(key, "direct-io") || !strcmp(key, "block-incremental")) {
        if (!json_is_boolean(v))
            return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: boolean",
                                key);
        if (json_is_false(v))
            return 1;
        return lm_error_set(err, -ENOTSUP, "Parameter '%s' is not supported yet", key);
    }
    return 0;
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
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return lm_error_set(err, -EINVAL, "Parameter '%s' expects uint64", key);
            *(uint64_t *)field = (uint64_t)json_integer_value(v);
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

static int cmd_set_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    lm_params p;
    uint64_t which;
    lm_mig_get_params(m, &p);
    int rc = lm_qmp_decode_params(args, &p, &which, err);
    if (rc || !which)
        return rc;
    return lm_mig_set_params(m, &p, which, err);
}

static int cmd_query_params(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
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
        }
        lm_qmp_put(o, lm_param_name((lm_param)i), v);
    }
    *ret = o;
    return 0;
}

/* Deprecated QEMU spellings, still sent by old management software. */
static const argspec value_int_args[] = {{"value", T_INT, true}, {NULL, 0, false}};
static const argspec value_num_args[] = {{"value", T_NUM, true}, {NULL, 0, false}};

static int cmd_set_speed(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    json_int_t v = json_integer_value(json_object_get(args, "value"));
    if (v < 0)
        return lm_error_set(err, -EINVAL, "Parameter 'value' expects uint64");
    lm_params p;
    lm_mig_get_params(m, &p);
    p.max_bandwidth = (uint64_t)v;
    return lm_mig_set_params(m, &p, 1ull << LM_PARAM_MAX_BANDWIDTH, err);
}

static int cmd_set_downtime(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    double secs = json_number_value(json_object_get(args, "value"));
    if (!(secs >= 0 && secs <= 2000))
        return lm_error_set(err, -EINVAL,
                            "Parameter 'downtime_limit' expects an integer in the "
                            "range of 0 to 2000 seconds");
    lm_params p;
    lm_mig_get_params(m, &p);
    p.downtime_limit = (uint64_t)(secs * 1000.0);
    return lm_mig_set_params(m, &p, 1ull << LM_PARAM_DOWNTIME_LIMIT, err);
}

/* ---------------------------------------------------------- query-migrate */

/* Our extension: one entry per registered device (docs/devices.md). */
static json_t *devices_json(lm_mig *m)
{
    lm_device_info d[LM_MAX_DEVICES];
    unsigned n = lm_mig_query_devices(m, d, LM_MAX_DEVICES);
    json_t *a = json_array();
    if (!a)
        return NULL;
    for (unsigned i = 0; i < n && i < LM_MAX_DEVICES; i++) {
        json_t *o =
            json_pack("{s:s, s:I, s:I, s:b, s:o, s:o, s:s}", "name", d[i].name, "instance",
                      (json_int_t)d[i].instance, "version", (json_int_t)d[i].version, "iterable",
                      d[i].iterable, "pending", lm_qmp_ju64(d[i].pending), "bytes",
                      lm_qmp_ju64(d[i].bytes), "ack", lm_device_ack_state_name(d[i].ack));
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static int cmd_query_migrate(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    lm_info info;
    lm_mig_query(m, &info);
    *ret = lm_qmp_info_json(&info);
    if (*ret && info.status != LM_STATUS_NONE) {
        json_t *d = devices_json(m);
        if (!d || json_object_set_new(*ret, "x-devices", d) < 0) {
            json_decref(*ret);
            *ret = NULL;
        }
    }
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

/* ----------------------------------------------------------------- table */

typedef int (*cmd_fn)(lm_mig *m, json_t *args, json_t **ret, lm_error *err);

/* Commands whose arguments are decoded by the command itself. */
static const argspec any_args[] = {{NULL, 0, false}};

static const struct builtin {
    const char *name;
    cmd_fn fn;           /* NULL: answered by the server */
    const argspec *args; /* NULL: no arguments; any_args: checked by fn */
} builtins[] = {
    {"qmp_capabilities", NULL, NULL},
    {"query-commands", NULL, NULL},
    {"query-version", cmd_query_version, NULL},
    {"query-status", cmd_query_status, NULL},
    {"stop", cmd_stop, NULL},
    {"cont", cmd_cont, NULL},
    {"migrate", cmd_migrate, migrate_args},
    {"migrate-incoming", cmd_migrate_incoming, incoming_args},
    {"migrate_cancel", cmd_migrate_cancel, NULL},
    {"migrate-continue", cmd_migrate_continue, continue_args},
    {"migrate-start-postcopy", cmd_migrate_start_postcopy, NULL},
    {"migrate-pause", cmd_migrate_pause, NULL},
    {"migrate-recover", cmd_migrate_recover, recover_args},
    {"migrate-set-capabilities", cmd_set_caps, caps_args},
    {"query-migrate-capabilities", cmd_query_caps, NULL},
    {"migrate-set-parameters", cmd_set_params, any_args},
    {"query-migrate-parameters", cmd_query_params, NULL},
    {"migrate_set_speed", cmd_set_speed, value_int_args},
    {"migrate_set_downtime", cmd_set_downtime, value_num_args},
    {"query-migrate", cmd_query_migrate, NULL},
};

#define NBUILTINS (sizeof builtins / sizeof builtins[0])

static const struct builtin *find(const char *name)
{
    for (size_t i = 0; i < NBUILTINS; i++)
        if (strcmp(builtins[i].name, name) == 0)
            return &builtins[i];
    return NULL;
}

bool lm_qmp_builtin_exists(const char *name)
{
    return find(name) != NULL;
}

void lm_qmp_builtin_list(json_t *list)
{
    for (size_t i = 0; i < NBUILTINS; i++)
        json_array_append_new(list, json_pack("{s:s}", "name", builtins[i].name));
}

int lm_qmp_builtin_run(lm_mig *m, const char *name, json_t *args, json_t **ret,
                       const char **err_class, lm_error *err)
{
    const struct builtin *b = find(name);
    *ret = NULL;
    *err_class = "GenericError";
    if (!b || !b->fn)
        return 1;
    if (b->args != any_args) {
        int rc = check_args(args, b->args, err);
        if (rc)
            return rc;
    }
    int rc = b->fn(m, args, ret, err);
    if (rc < 0) {
        json_decref(*ret);
        *ret = NULL;
        lm_error_set(err, rc, "%s failed", name); /* only if fn said nothing */
        return rc;
    }
    if (!*ret)
        *ret = json_object();
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}
