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
 * The table at the end is the one list of built-in commands: dispatch,
 * query-commands and query-qmp-schema (schema.c) all read it; the
 * parameters' table is in params.c.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ arguments */

typedef lm_qmp_arg argspec;
#define T_STR LM_QMP_T_STR
#define T_BOOL LM_QMP_T_BOOL
#define T_INT LM_QMP_T_INT
#define T_NUM LM_QMP_T_NUM
#define T_ARRAY LM_QMP_T_ARRAY
#define T_OBJ LM_QMP_T_OBJ
#define T_ANY LM_QMP_T_ANY

static const char *type_name(enum lm_qmp_atype t)
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

static bool type_ok(json_t *v, enum lm_qmp_atype t)
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

/* Our own version, in QEMU's VersionInfo shape (a client that needs
 * QEMU's features asks query-qmp-schema, not the number). */
static int cmd_query_version(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    *ret = json_pack("{s:{s:i, s:i, s:i}, s:s}", "qemu", "micro", LM_VERSION_MICRO, "minor",
                     LM_VERSION_MINOR, "major", LM_VERSION_MAJOR, "package",
                     "livemig " LM_VERSION_STRING);
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

static int cmd_query_name(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    char name[LM_NAME_MAX + 1], uuid[LM_UUID_STR_LEN + 1];
    lm_mig_get_identity(m, name, uuid);
    /* QEMU: {} when the guest has no name. */
    *ret = name[0] ? json_pack("{s:s}", "name", name) : json_object();
    return *ret ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

static int cmd_query_uuid(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    char name[LM_NAME_MAX + 1], uuid[LM_UUID_STR_LEN + 1];
    lm_mig_get_identity(m, name, uuid);
    *ret = json_pack("{s:s}", "UUID", uuid);
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
    {"uri", T_STR, false},
    {"channels", T_ARRAY, false},
    {"detach", T_BOOL, false},
    {"resume", T_BOOL, false},
    {"blk", T_BOOL, false},
    {"inc", T_BOOL, false},
    {NULL},
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
    {NULL},
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

static const argspec continue_args[] = {{"state", T_STR, true, "MigrationStatus"}, {NULL}};

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

static const argspec recover_args[] = {{"uri", T_STR, true}, {NULL}};

/* migrate-pause: either side, postcopy-active or postcopy-recover only
 * (QEMU's refusal text otherwise). */
static int cmd_migrate_pause(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_pause(m, err);
}

/* migrate-recover: a paused destination listens for its source's
 * migrate resume=true (QEMU's refusal text outside postcopy-paused). */
static int cmd_migrate_recover(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_recover(m, get_str(args, "uri"), err);
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

static const argspec caps_args[] = {
    {"capabilities", T_ARRAY, true, "[MigrationCapabilityStatus]"},
    {NULL},
};

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

/* Deprecated QEMU spellings, still sent by old management software. */
static const argspec value_int_args[] = {{"value", T_INT, true}, {NULL}};
static const argspec value_num_args[] = {{"value", T_NUM, true}, {NULL}};

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

/* Descriptor passing (qapi/misc.json); run by the server (fds.c), which
 * knows which client sent them. */
static const argspec object_del_args[] = {{"id", T_STR, true}, {NULL}};
static const argspec fdname_args[] = {{"fdname", T_STR, true}, {NULL, 0, false}};
static const argspec add_fd_args[] = {
    {"fdset-id", T_INT, false}, {"opaque", T_STR, false}, {NULL, 0, false}};
static const argspec remove_fd_args[] = {
    {"fdset-id", T_INT, true}, {"fd", T_INT, false}, {NULL, 0, false}};

/* ----------------------------------------------------------------- table */

/* A command that decodes its own arguments (its row names their type). */
const lm_qmp_arg lm_qmp_args_decoded[] = {{NULL}};

static const argspec capabilities_args[] = {
    {"enable", T_ARRAY, false, "[QMPCapability]"}, /* checked by the server */
    {NULL},
};

/* Every built-in command, once: dispatch, query-commands and
 * query-qmp-schema read this table.  A new command is one row: name,
 * handler, arguments (NULL: none), return type as the schema names it
 * (NULL: {}); a type not described yet gets an entry in schema.c's type
 * table (the unit test test_schema fails until it has one). */
static const lm_qmp_builtin builtins[] = {
    {"qmp_capabilities", NULL, capabilities_args},
    {"query-commands", NULL, NULL, "[CommandInfo]"},
    {"query-qmp-schema", NULL, NULL, "[SchemaInfo]"},
    {"query-version", cmd_query_version, NULL, "VersionInfo"},
    {"query-name", cmd_query_name, NULL, "NameInfo"},
    {"query-uuid", cmd_query_uuid, NULL, "UuidInfo"},
    {"query-status", cmd_query_status, NULL, "StatusInfo"},
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
    {"query-migrate-capabilities", cmd_query_caps, NULL, "[MigrationCapabilityStatus]"},
    {"migrate-set-parameters", lm_qmp_cmd_set_params, lm_qmp_args_decoded, NULL,
     "MigrateSetParameters"},
    {"query-migrate-parameters", lm_qmp_cmd_query_params, NULL, "MigrationParameters"},
    {"migrate_set_speed", cmd_set_speed, value_int_args},
    {"migrate_set_downtime", cmd_set_downtime, value_num_args},
    {"query-migrate", cmd_query_migrate, NULL, "MigrationInfo"},
    {"object-add", lm_qmp_cmd_object_add, lm_qmp_args_decoded, NULL, "ObjectOptions"},
    {"object-del", lm_qmp_cmd_object_del, object_del_args},
    {"getfd", NULL, fdname_args},
    {"closefd", NULL, fdname_args},
    {"add-fd", NULL, add_fd_args, "AddfdInfo"},
    {"remove-fd", NULL, remove_fd_args},
    {"query-fdsets", NULL, NULL, "[FdsetInfo]"},
};

#define NBUILTINS (sizeof builtins / sizeof builtins[0])

const lm_qmp_builtin *lm_qmp_builtins(size_t *n)
{
    *n = NBUILTINS;
    return builtins;
}

const lm_qmp_builtin *lm_qmp_builtin_find(const char *name)
{
    for (size_t i = 0; i < NBUILTINS; i++)
        if (strcmp(builtins[i].name, name) == 0)
            return &builtins[i];
    return NULL;
}

bool lm_qmp_builtin_exists(const char *name)
{
    return lm_qmp_builtin_find(name) != NULL;
}

void lm_qmp_builtin_list(json_t *list)
{
    for (size_t i = 0; i < NBUILTINS; i++)
        json_array_append_new(list, json_pack("{s:s}", "name", builtins[i].name));
}

int lm_qmp_args_check(json_t *args, const lm_qmp_arg *spec, lm_error *err)
{
    return check_args(args, spec, err);
}

int lm_qmp_builtin_check(const lm_qmp_builtin *b, json_t *args, lm_error *err)
{
    if (!b || b->args == lm_qmp_args_decoded)
        return 0;
    return check_args(args, b->args, err);
}

int lm_qmp_builtin_run(lm_mig *m, const char *name, json_t *args, json_t **ret,
                       const char **err_class, lm_error *err)
{
    const lm_qmp_builtin *b = lm_qmp_builtin_find(name);
    *ret = NULL;
    *err_class = "GenericError";
    if (!b || !b->fn)
        return 1;
    int rc = lm_qmp_builtin_check(b, args, err);
    if (rc)
        return rc;
    rc = b->fn(m, args, ret, err);
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
