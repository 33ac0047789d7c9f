/*
 * schema.c - query-qmp-schema: what this server serves, in QEMU's
 * SchemaInfo format (qapi/introspect.json), so that a management tool
 * (libvirt's qemu_qapi.c, qmp-shell) can ask whether a command, argument,
 * event or enum value exists before it uses it.
 *
 * Nothing here lists commands or parameters a second time: the commands
 * and their arguments come from commands.c's table, the parameters from
 * params.c's, the events from json.c's, the enums from the library's own
 * name functions.  What this file adds is the description of the named
 * types those tables mention (return types, members of replies), each
 * checked against real replies by tests/integration/test_schema.py.
 * Type names are QEMU's where QEMU has the type, readable (QEMU masks them
 * as numbers; clients must not depend on either), and ours start with X.
 *
 * Pure: builds JSON, no I/O, no lock; called on the QMP thread.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------- the types */

typedef struct member {
    const char *name;
    const char *type;
    bool optional;
} member;

typedef struct variant {
    const char *value;
    const char *type;
} variant;

#define OPT true
#define END                                                                                        \
    {                                                                                              \
        NULL                                                                                       \
    }

static const member version_triple[] = {{"major", "int"}, {"minor", "int"}, {"micro", "int"}, END};
static const member version_info[] = {{"qemu", "VersionTriple"}, {"package", "str"}, END};
static const member name_info[] = {{"name", "str", OPT}, END};
static const member uuid_info[] = {{"UUID", "str"}, END};
/* object-add (qapi/qom.json, crypto.json, authz.json): the union of the
 * object types this build creates. */
static const member object_options[] = {{"qom-type", "ObjectType"}, {"id", "str"}, END};
static const variant object_options_v[] = {{"authz-list", "AuthZListProperties"},
                                           {"tls-creds-psk", "TlsCredsPskProperties"},
                                           {"tls-creds-x509", "TlsCredsX509Properties"},
                                           {NULL}};
static const member authz_list_props[] = {
    {"policy", "QAuthZListPolicy", OPT}, {"rules", "[QAuthZListRule]", OPT}, END};
static const member authz_rule[] = {
    {"match", "str"}, {"policy", "QAuthZListPolicy"}, {"format", "QAuthZListFormat", OPT}, END};
static const member tls_psk_props[] = {{"verify-peer", "bool", OPT},
                                       {"dir", "str", OPT},
                                       {"endpoint", "QCryptoTLSCredsEndpoint", OPT},
                                       {"priority", "str", OPT},
                                       {"username", "str", OPT},
                                       END};
static const member tls_x509_props[] = {{"verify-peer", "bool", OPT},
                                        {"dir", "str", OPT},
                                        {"endpoint", "QCryptoTLSCredsEndpoint", OPT},
                                        {"priority", "str", OPT},
                                        {"sanity-check", "bool", OPT},
                                        END};
static const char *const object_type[] = {"authz-list", "tls-creds-psk", "tls-creds-x509", NULL};
static const char *const authz_policy[] = {"deny", "allow", NULL};
static const char *const authz_format[] = {"exact", "glob", NULL};
static const char *const tls_endpoint[] = {"client", "server", NULL};
/* Descriptor passing (qapi/misc.json, fds.c). */
static const member addfd_info[] = {{"fdset-id", "int"}, {"fd", "int"}, END};
static const member fdset_info[] = {{"fdset-id", "int"}, {"fds", "[FdsetFdInfo]"}, END};
static const member fdset_fd_info[] = {{"fd", "int"}, {"opaque", "str", OPT}, END};
static const member status_info[] = {
    {"running", "bool"}, {"singlestep", "bool"}, {"status", "RunState"}, END};
static const member command_info[] = {{"name", "str"}, END};
static const member cap_status[] = {{"capability", "MigrationCapability"}, {"state", "bool"}, END};

static const member migration_info[] = {
    {"status", "MigrationStatus", OPT},
    {"ram", "MigrationStats", OPT},
    {"total-time", "int", OPT},
    {"setup-time", "int", OPT},
    {"expected-downtime", "int", OPT},
    {"downtime", "int", OPT},
    {"x-downtime-us", "uint64", OPT},
    {"x-postcopy-pause-us", "uint64", OPT},
    {"error-desc", "str", OPT},
    {"socket-address", "[SocketAddress]", OPT},
    {"x-bandwidth", "uint64", OPT},
    {"x-queued-bytes", "uint64", OPT},
    {"x-switchover-queued-bytes", "uint64", OPT},
    {"xbzrle-cache", "XBZRLECacheStats", OPT},
    {"cpu-throttle-percentage", "int", OPT},
    {"dirty-limit-throttle-time-per-round", "uint64", OPT},
    {"x-dirty-limit-mbps", "uint64", OPT},
    {"x-postcopy", "XPostcopyInfo", OPT},
    {"x-devices", "[XDeviceInfo]", OPT},
    END,
};
static const member migration_stats[] = {
    {"transferred", "int"},
    {"remaining", "int"},
    {"total", "int"},
    {"duplicate", "int"},
    {"normal", "int"},
    {"normal-bytes", "int"},
    {"dirty-pages-rate", "int"},
    {"mbps", "number"},
    {"dirty-sync-count", "int"},
    {"postcopy-requests", "int"},
    {"page-size", "int"},
    {"multifd-bytes", "uint64"},
    {"pages-per-second", "uint64"},
    {"precopy-bytes", "uint64"},
    {"downtime-bytes", "uint64"},
    {"postcopy-bytes", "uint64"},
    {"dirty-sync-missed-zero-copy", "uint64"},
    {"x-multifd-channels", "[XMultifdChannel]", OPT},
    END,
};
static const member xbzrle_cache_stats[] = {
    {"cache-size", "size"},
    {"bytes", "int"},
    {"pages", "int"},
    {"cache-miss", "int"},
    {"cache-miss-rate", "number"},
    {"encoding-rate", "number"},
    {"overflow", "int"},
    END,
};
static const member x_multifd_channel[] = {
    {"id", "int"}, {"bytes", "uint64"}, {"normal", "uint64"}, {"zero", "uint64"}, END};
static const member x_postcopy_info[] = {
    {"requests", "uint64"},
    {"remote-faults", "uint64"},
    {"local-faults", "uint64"},
    {"owed-pages", "uint64"},
    {"x-multifd-pages", "uint64"},
    {"x-blocks-minor", "uint64"},
    {"x-blocks-copy", "uint64"},
    {"latency-histogram-log2-us", "[uint64]", OPT},
    {"latency-count", "uint64", OPT},
    {"latency-p50-us", "uint64", OPT},
    {"latency-p99-us", "uint64", OPT},
    {"latency-max-us", "uint64", OPT},
    END,
};
static const member x_device_info[] = {
    {"name", "str"},       {"instance", "int"}, {"version", "int"},         {"iterable", "bool"},
    {"pending", "uint64"}, {"bytes", "uint64"}, {"ack", "XDeviceAckState"}, END,
};
static const member socket_address[] = {{"type", "SocketAddressType"}, END};
static const variant socket_address_v[] = {
    {"inet", "InetSocketAddress"}, {"unix", "UnixSocketAddress"}, {"fd", "String"}, END};
static const member inet_address[] = {{"host", "str"}, {"port", "str"}, END};
static const member unix_address[] = {{"path", "str"}, END};
static const member string_box[] = {{"str", "str"}, END};
static const member ev_migration[] = {{"status", "MigrationStatus"}, END};
static const member ev_migration_pass[] = {{"pass", "int"}, END};
static const member empty[] = {END};
static const member str_or_null[] = {{NULL, "str"}, {NULL, "null"}, END}; /* alternate */

/* SchemaInfo describes itself, as QEMU's does. */
static const member schema_info[] = {
    {"name", "str"}, {"meta-type", "SchemaMetaType"}, {"features", "[str]", OPT}, END};
static const variant schema_info_v[] = {
    {"builtin", "SchemaInfoBuiltin"},     {"enum", "SchemaInfoEnum"},
    {"array", "SchemaInfoArray"},         {"object", "SchemaInfoObject"},
    {"alternate", "SchemaInfoAlternate"}, {"command", "SchemaInfoCommand"},
    {"event", "SchemaInfoEvent"},         END,
};
static const member si_builtin[] = {{"json-type", "JSONType"}, END};
static const member si_enum[] = {{"members", "[SchemaInfoEnumMember]"}, {"values", "[str]"}, END};
static const member si_enum_member[] = {{"name", "str"}, {"features", "[str]", OPT}, END};
static const member si_array[] = {{"element-type", "str"}, END};
static const member si_object[] = {{"members", "[SchemaInfoObjectMember]"},
                                   {"tag", "str", OPT},
                                   {"variants", "[SchemaInfoObjectVariant]", OPT},
                                   END};
static const member si_object_member[] = {
    {"name", "str"}, {"type", "str"}, {"default", "any", OPT}, {"features", "[str]", OPT}, END};
static const member si_object_variant[] = {{"case", "str"}, {"type", "str"}, END};
static const member si_alternate[] = {{"members", "[SchemaInfoAlternateMember]"}, END};
static const member si_alternate_member[] = {{"type", "str"}, END};
static const member si_command[] = {
    {"arg-type", "str"}, {"ret-type", "str"}, {"allow-oob", "bool", OPT}, END};
static const member si_event[] = {{"arg-type", "str"}, END};

static const char *const mig_mode[] = {"normal", NULL};
static const char *const qmp_cap[] = {"oob", NULL};
static const char *const sock_type[] = {"inet", "unix", "fd", NULL};
static const char *const meta_type[] = {"builtin",   "enum",    "array", "object",
                                        "alternate", "command", "event", NULL};
static const char *const json_types[] = {"string", "number", "int",   "boolean", "null",
                                         "object", "array",  "value", NULL};

/* The library's own names, so an enum cannot miss a value it reports. */
static const char *status_value(unsigned i)
{
    return lm_status_name((lm_status)i);
}
static const char *cap_value(unsigned i)
{
    return lm_cap_name((lm_cap)i);
}
static const char *runstate_value(unsigned i)
{
    return lm_runstate_name((lm_runstate)i);
}
static const char *compression_value(unsigned i)
{
    return lm_compression_name((lm_multifd_compression)i);
}
static const char *zpd_value(unsigned i)
{
    return lm_zpd_name((lm_zero_page_detection)i);
}
static const char *ack_value(unsigned i)
{
    return lm_device_ack_state_name((lm_device_ack_state)i);
}

enum kind { K_OBJECT, K_ALTERNATE, K_ENUM, K_PARAMS };

static const struct named {
    const char *name;
    enum kind kind;
    const member *members;            /* K_OBJECT, K_ALTERNATE */
    const char *tag;                  /* K_OBJECT union: member naming the variant */
    const variant *variants;          /* ... and the variants' types */
    const char *const *values;        /* K_ENUM, static */
    const char *(*value)(unsigned i); /* K_ENUM from the library, until NULL */
    bool set;                         /* K_PARAMS: migrate-set-parameters' */
} types[] = {
    {"q_empty", K_OBJECT, empty},
    {"VersionTriple", K_OBJECT, version_triple},
    {"VersionInfo", K_OBJECT, version_info},
    {"NameInfo", K_OBJECT, name_info},
    {"UuidInfo", K_OBJECT, uuid_info},
    {"AddfdInfo", K_OBJECT, addfd_info},
    {"FdsetInfo", K_OBJECT, fdset_info},
    {"FdsetFdInfo", K_OBJECT, fdset_fd_info},
    {"StatusInfo", K_OBJECT, status_info},
    {"CommandInfo", K_OBJECT, command_info},
    {"MigrationCapabilityStatus", K_OBJECT, cap_status},
    {"MigrationInfo", K_OBJECT, migration_info},
    {"MigrationStats", K_OBJECT, migration_stats},
    {"XBZRLECacheStats", K_OBJECT, xbzrle_cache_stats},
    {"XMultifdChannel", K_OBJECT, x_multifd_channel},
    {"XPostcopyInfo", K_OBJECT, x_postcopy_info},
    {"XDeviceInfo", K_OBJECT, x_device_info},
    {"SocketAddress", K_OBJECT, socket_address, "type", socket_address_v},
    {"InetSocketAddress", K_OBJECT, inet_address},
    {"UnixSocketAddress", K_OBJECT, unix_address},
    {"String", K_OBJECT, string_box},
    {"q_obj_MIGRATION-arg", K_OBJECT, ev_migration},
    {"q_obj_MIGRATION_PASS-arg", K_OBJECT, ev_migration_pass},
    {"StrOrNull", K_ALTERNATE, str_or_null},
    {"SchemaInfo", K_OBJECT, schema_info, "meta-type", schema_info_v},
    {"SchemaInfoBuiltin", K_OBJECT, si_builtin},
    {"SchemaInfoEnum", K_OBJECT, si_enum},
    {"SchemaInfoEnumMember", K_OBJECT, si_enum_member},
    {"SchemaInfoArray", K_OBJECT, si_array},
    {"SchemaInfoObject", K_OBJECT, si_object},
    {"SchemaInfoObjectMember", K_OBJECT, si_object_member},
    {"SchemaInfoObjectVariant", K_OBJECT, si_object_variant},
    {"SchemaInfoAlternate", K_OBJECT, si_alternate},
    {"SchemaInfoAlternateMember", K_OBJECT, si_alternate_member},
    {"SchemaInfoCommand", K_OBJECT, si_command},
    {"SchemaInfoEvent", K_OBJECT, si_event},
    {"MigrationStatus", K_ENUM, .value = status_value},
    {"MigrationCapability", K_ENUM, .value = cap_value},
    {"RunState", K_ENUM, .value = runstate_value},
    {"MultiFDCompression", K_ENUM, .value = compression_value},
    {"ZeroPageDetection", K_ENUM, .value = zpd_value},
    {"XDeviceAckState", K_ENUM, .value = ack_value},
    {"MigMode", K_ENUM, .values = mig_mode},
    {"QMPCapability", K_ENUM, .values = qmp_cap},
    {"SocketAddressType", K_ENUM, .values = sock_type},
    {"SchemaMetaType", K_ENUM, .values = meta_type},
    {"JSONType", K_ENUM, .values = json_types},
    {"ObjectOptions", K_OBJECT, object_options, "qom-type", object_options_v},
    {"AuthZListProperties", K_OBJECT, authz_list_props},
    {"QAuthZListRule", K_OBJECT, authz_rule},
    {"TlsCredsPskProperties", K_OBJECT, tls_psk_props},
    {"TlsCredsX509Properties", K_OBJECT, tls_x509_props},
    {"ObjectType", K_ENUM, .values = object_type},
    {"QAuthZListPolicy", K_ENUM, .values = authz_policy},
    {"QAuthZListFormat", K_ENUM, .values = authz_format},
    {"QCryptoTLSCredsEndpoint", K_ENUM, .values = tls_endpoint},
    {"MigrationParameters", K_PARAMS, .set = false},
    {"MigrateSetParameters", K_PARAMS, .set = true},
};

/* QEMU's built-in types and the JSON type of each. */
static const struct {
    const char *name, *json;
} builtins[] = {
    {"str", "string"}, {"int", "int"},   {"number", "number"}, {"bool", "boolean"},
    {"null", "null"},  {"any", "value"}, {"uint8", "int"},     {"uint64", "int"},
    {"int64", "int"},  {"size", "int"},
};

/* ------------------------------------------------------------ generation */

typedef struct gen {
    json_t *out;  /* the SchemaInfo list */
    json_t *seen; /* type name -> true, once emitted */
    lm_error *err;
} gen;

static int need(gen *g, const char *type);

static int emit(gen *g, json_t *entry)
{
    if (!entry || json_array_append_new(g->out, entry) < 0)
        return lm_error_set(g->err, -ENOMEM, "out of memory");
    return 0;
}

/* Appends one member {"name", "type"[, "default": null]}; the caller
 * needs its type once the object itself is out. */
static void put_member(json_t *list, const char *name, const char *type, bool optional)
{
    json_t *m = json_pack("{s:s, s:s}", "name", name, "type", type);
    if (m && optional)
        json_object_set_new(m, "default", json_null());
    json_array_append_new(list, m);
}

static int emit_object(gen *g, const char *name, json_t *members, const struct named *t)
{
    json_t *o =
        json_pack("{s:s, s:s, s:o}", "name", name, "meta-type", "object", "members", members);
    if (o && t && t->tag) {
        json_t *vs = json_array();
        json_object_set_new(o, "tag", json_string(t->tag));
        for (const variant *v = t->variants; vs && v->value; v++)
            json_array_append_new(vs, json_pack("{s:s, s:s}", "case", v->value, "type", v->type));
        json_object_set_new(o, "variants", vs);
    }
    int rc = emit(g, o);
    for (const variant *v = t && t->tag ? t->variants : NULL; rc == 0 && v && v->value; v++)
        rc = need(g, v->type);
    return rc;
}

static int emit_named(gen *g, const struct named *t)
{
    json_t *list = json_array();
    if (!list)
        return lm_error_set(g->err, -ENOMEM, "out of memory");
    int rc = 0;
    switch (t->kind) {
    case K_OBJECT:
        for (const member *m = t->members; m->name; m++)
            put_member(list, m->name, m->type, m->optional);
        rc = emit_object(g, t->name, list, t);
        for (const member *m = t->members; rc == 0 && m->name; m++)
            rc = need(g, m->type);
        return rc;
    case K_ALTERNATE:
        for (const member *m = t->members; m->type; m++)
            json_array_append_new(list, json_pack("{s:s}", "type", m->type));
        rc = emit(g, json_pack("{s:s, s:s, s:o}", "name", t->name, "meta-type", "alternate",
                               "members", list));
        for (const member *m = t->members; rc == 0 && m->type; m++)
            rc = need(g, m->type);
        return rc;
    case K_ENUM: {
        json_t *values = json_array();
        for (unsigned i = 0; values; i++) {
            const char *v = t->values ? t->values[i] : t->value(i);
            if (!v)
                break;
            json_array_append_new(list, json_pack("{s:s}", "name", v));
            json_array_append_new(values, json_string(v));
        }
        /* "values" is the pre-6.2 spelling that older clients still read. */
        return emit(g, json_pack("{s:s, s:s, s:o, s:o*}", "name", t->name, "meta-type", "enum",
                                 "members", list, "values", values));
    }
    case K_PARAMS: {
        /* Every member optional, as in QEMU (set: change only these;
         * query: a build may leave some out). */
        const char *name, *type;
        for (size_t i = 0; (name = lm_qmp_param_schema(i, t->set, &type)); i++)
            put_member(list, name, type, true);
        rc = emit_object(g, t->name, list, NULL);
        for (size_t i = 0; rc == 0 && (name = lm_qmp_param_schema(i, t->set, &type)); i++)
            rc = need(g, type);
        return rc;
    }
    }
    json_decref(list);
    return 0;
}

/* Emits the entry of a type the first time it is named. */
static int need(gen *g, const char *type)
{
    if (json_object_get(g->seen, type))
        return 0;
    if (json_object_set_new(g->seen, type, json_true()) < 0)
        return lm_error_set(g->err, -ENOMEM, "out of memory");
    size_t len = strlen(type);
    if (type[0] == '[' && len > 2 && type[len - 1] == ']') {
        char elem[128];
        if (len - 2 >= sizeof elem)
            return lm_error_set(g->err, -EINVAL, "schema: type name '%s' too long", type);
        memcpy(elem, type + 1, len - 2);
        elem[len - 2] = '\0';
        int rc = emit(g, json_pack("{s:s, s:s, s:s}", "name", type, "meta-type", "array",
                                   "element-type", elem));
        return rc ? rc : need(g, elem);
    }
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
        if (strcmp(builtins[i].name, type) == 0)
            return emit(g, json_pack("{s:s, s:s, s:s}", "name", type, "meta-type", "builtin",
                                     "json-type", builtins[i].json));
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(types[i].name, type) == 0)
            return emit_named(g, &types[i]);
    return lm_error_set(g->err, -EINVAL, "schema: type '%s' is named but not described", type);
}

static const char *plain_type(enum lm_qmp_atype t)
{
    switch (t) {
    case LM_QMP_T_STR:
        return "str";
    case LM_QMP_T_BOOL:
        return "bool";
    case LM_QMP_T_INT:
        return "int";
    case LM_QMP_T_NUM:
        return "number";
    case LM_QMP_T_ARRAY:
        return "[any]";
    default:
        return "any";
    }
}

/* A command's argument type: QEMU's implicit "q_obj_<command>-arg". */
static int arg_type(gen *g, const lm_qmp_builtin *b, char *out, size_t size)
{
    if (b->args == lm_qmp_args_decoded) {
        snprintf(out, size, "%s", b->arg_type);
        return need(g, b->arg_type);
    }
    if (!b->args || !b->args[0].name) {
        snprintf(out, size, "q_empty");
        return need(g, "q_empty");
    }
    snprintf(out, size, "q_obj_%s-arg", b->name);
    if (json_object_get(g->seen, out))
        return 0;
    json_object_set_new(g->seen, out, json_true());
    json_t *list = json_array();
    if (!list)
        return lm_error_set(g->err, -ENOMEM, "out of memory");
    for (const lm_qmp_arg *a = b->args; a->name; a++)
        put_member(list, a->name, a->schema ? a->schema : plain_type(a->type), !a->required);
    int rc = emit_object(g, out, list, NULL);
    for (const lm_qmp_arg *a = b->args; rc == 0 && a->name; a++)
        rc = need(g, a->schema ? a->schema : plain_type(a->type));
    return rc;
}

json_t *lm_qmp_schema_json(const char *const *host_cmds, const lm_qmp_arg *const *host_args,
                           size_t nhost, lm_error *err)
{
    gen g = {json_array(), json_object(), err};
    int rc = g.out && g.seen ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
    json_t *cmds = json_array(); /* commands and events come first */
    if (!cmds)
        rc = lm_error_set(err, -ENOMEM, "out of memory");

    size_t n;
    const lm_qmp_builtin *b = lm_qmp_builtins(&n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char at[96];
        const char *ret = b[i].ret ? b[i].ret : "q_empty";
        rc = arg_type(&g, &b[i], at, sizeof at);
        if (rc == 0)
            rc = need(&g, ret);
        if (rc == 0 && json_array_append_new(cmds, json_pack("{s:s, s:s, s:s, s:s}", "name",
                                                             b[i].name, "meta-type", "command",
                                                             "arg-type", at, "ret-type", ret)) < 0)
            rc = lm_error_set(err, -ENOMEM, "out of memory");
    }
    /* The host's commands: their reply is the host's; their arguments
     * too, unless declared (lm_qmp_server_register_args). */
    for (size_t i = 0; rc == 0 && i < nhost; i++) {
        char at[96] = "any";
        rc = need(&g, "any");
        if (rc == 0 && host_args && host_args[i]) {
            lm_qmp_builtin hb = {.name = host_cmds[i], .args = host_args[i]};
            rc = arg_type(&g, &hb, at, sizeof at);
        }
        if (rc == 0 &&
            json_array_append_new(cmds, json_pack("{s:s, s:s, s:s, s:s}", "name", host_cmds[i],
                                                  "meta-type", "command", "arg-type", at,
                                                  "ret-type", "any")) < 0)
            rc = lm_error_set(err, -ENOMEM, "out of memory");
    }
    for (unsigned t = 0; rc == 0 && t < LM_EVENT__MAX; t++) {
        const char *at = NULL;
        const char *name = lm_qmp_event_name((lm_event_type)t, &at);
        if (!name)
            continue;
        rc = need(&g, at);
        if (rc == 0 &&
            json_array_append_new(cmds, json_pack("{s:s, s:s, s:s}", "name", name, "meta-type",
                                                  "event", "arg-type", at)) < 0)
            rc = lm_error_set(err, -ENOMEM, "out of memory");
    }
    json_t *all = NULL;
    if (rc == 0 && json_array_extend(cmds, g.out) == 0) {
        all = cmds;
        cmds = NULL;
    } else if (rc == 0) {
        lm_error_set(err, -ENOMEM, "out of memory");
    }
    json_decref(cmds);
    json_decref(g.out);
    json_decref(g.seen);
    return all;
}
