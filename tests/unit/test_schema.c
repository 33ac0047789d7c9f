/*
 * test_schema.c - query-qmp-schema (src/qmp/schema.c) against the tables
 * it is generated from and the JSON the library really produces:
 *  - the list is well formed: unique names, every named type described;
 *  - each command row of commands.c is a command entry whose argument
 *    object lists exactly its arguments; host commands take and return any;
 *  - migrate-set-parameters' argument type lists exactly what
 *    lm_qmp_decode_params() recognises;
 *  - every lm_event_type, as lm_qmp_event_json() writes it, is an event of
 *    the schema and its data fits;
 *  - query-migrate's reply (lm_qmp_info_json) with every optional part
 *    present fits MigrationInfo;
 *  - the identity API and migrate-incoming's two refusals (mig.c,
 *    incoming.c), which query-name/query-uuid and migrate-incoming use.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "livemig.h"
#include "qmp/qmp_internal.h"

static const char *const host_cmds[] = {"quit", "x-host-thing"};

static json_t *schema_index(json_t **list_out)
{
    lm_error err = {0};
    json_t *list = lm_qmp_schema_json(host_cmds, NULL, 2, &err);
    if (!list)
        fail_msg("lm_qmp_schema_json: %s", err.msg);
    json_t *idx = json_object();
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        assert_non_null(name);
        assert_non_null(json_string_value(json_object_get(e, "meta-type")));
        if (json_object_get(idx, name))
            fail_msg("schema entry '%s' appears twice", name);
        json_object_set(idx, name, e);
    }
    *list_out = list;
    return idx;
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static bool is_meta(json_t *e, const char *mt)
{
    return e && strcmp(str(e, "meta-type"), mt) == 0;
}

/* Fails the test where v does not fit type. */
static void validate(json_t *idx, const char *type, json_t *v, const char *path)
{
    json_t *e = json_object_get(idx, type);
    if (!e)
        fail_msg("%s: type '%s' is not in the schema", path, type);
    char sub[512];
    if (is_meta(e, "builtin")) {
        const char *jt = str(e, "json-type");
        bool ok = !strcmp(jt, "value") || (!strcmp(jt, "string") && json_is_string(v)) ||
                  (!strcmp(jt, "int") && json_is_integer(v)) ||
                  (!strcmp(jt, "number") && json_is_number(v)) ||
                  (!strcmp(jt, "boolean") && json_is_boolean(v)) ||
                  (!strcmp(jt, "null") && json_is_null(v));
        if (!ok)
            fail_msg("%s: not a JSON %s (type %s)", path, jt, type);
    } else if (is_meta(e, "enum")) {
        size_t i;
        json_t *x;
        bool found = false;
        json_array_foreach(json_object_get(e, "values"), i, x) {
            found |= json_is_string(v) && !strcmp(json_string_value(x), json_string_value(v));
        }
        if (!found)
            fail_msg("%s: not a value of enum %s", path, type);
    } else if (is_meta(e, "array")) {
        if (!json_is_array(v))
            fail_msg("%s: not an array (type %s)", path, type);
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            validate(idx, str(e, "element-type"), x, sub);
        }
    } else if (is_meta(e, "object")) {
        if (!json_is_object(v))
            fail_msg("%s: not an object (type %s)", path, type);
        json_t *ms = json_copy(json_object_get(e, "members"));
        const char *tag = str(e, "tag");
        size_t i;
        json_t *m;
        if (tag) {
            json_array_foreach(json_object_get(e, "variants"), i, m) {
                if (json_is_string(json_object_get(v, tag)) &&
                    !strcmp(str(m, "case"), json_string_value(json_object_get(v, tag))))
                    json_array_extend(
                        ms, json_object_get(json_object_get(idx, str(m, "type")), "members"));
            }
        }
        json_array_foreach(ms, i, m) {
            json_t *x = json_object_get(v, str(m, "name"));
            if (!x && !json_object_get(m, "default"))
                fail_msg("%s: required member '%s' of %s missing", path, str(m, "name"), type);
        }
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            json_t *found = NULL;
            json_array_foreach(ms, i, m) {
                if (!strcmp(str(m, "name"), key))
                    found = m;
            }
            if (!found)
                fail_msg("%s: member '%s' is not in %s", path, key, type);
            snprintf(sub, sizeof sub, "%s.%s", path, key);
            validate(idx, str(found, "type"), x, sub);
        }
        json_decref(ms);
    } else {
        fail_msg("%s: %s is a %s, not a type", path, type, str(e, "meta-type"));
    }
}

/* ------------------------------------------------------------------ tests */

static void check_named(json_t *idx, json_t *e, const char *key)
{
    const char *t = str(e, key);
    if (t && !json_object_get(idx, t))
        fail_msg("'%s' names type '%s' (%s), which is not described", str(e, "name"), t, key);
}

static void test_well_formed(void **state)
{
    json_t *list, *idx = schema_index(&list);
    size_t i, j;
    json_t *e, *m;
    json_array_foreach(list, i, e) {
        check_named(idx, e, "arg-type");
        check_named(idx, e, "ret-type");
        check_named(idx, e, "element-type");
        json_array_foreach(json_object_get(e, "members"), j, m) {
            if (is_meta(e, "object") || is_meta(e, "alternate"))
                check_named(idx, m, "type");
        }
        json_array_foreach(json_object_get(e, "variants"), j, m)
            check_named(idx, m, "type");
    }
    /* The schema's own description fits the schema. */
    validate(idx, "[SchemaInfo]", list, "query-qmp-schema");
    for (i = 0; i < 2; i++) {
        json_t *h = json_object_get(idx, host_cmds[i]);
        assert_true(is_meta(h, "command"));
        assert_string_equal(str(h, "arg-type"), "any");
        assert_string_equal(str(h, "ret-type"), "any");
    }
    json_decref(idx);
    json_decref(list);
}

static bool member_in(json_t *obj, const char *name, bool *optional)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(obj, "members"), i, m) {
        if (!strcmp(str(m, "name"), name)) {
            *optional = json_object_get(m, "default") != NULL;
            return true;
        }
    }
    return false;
}

static void test_commands_follow_the_table(void **state)
{
    json_t *list, *idx = schema_index(&list);
    size_t n, ncmds = 0;
    const lm_qmp_builtin *b = lm_qmp_builtins(&n);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(idx, b[i].name);
        if (!is_meta(c, "command"))
            fail_msg("command '%s' is not in the schema", b[i].name);
        assert_string_equal(str(c, "ret-type"), b[i].ret ? b[i].ret : "q_empty");
        if (b[i].args == lm_qmp_args_decoded)
            continue;
        json_t *obj = json_object_get(idx, str(c, "arg-type"));
        size_t nargs = 0;
        for (const lm_qmp_arg *a = b[i].args; a && a->name; a++, nargs++) {
            bool optional;
            if (!member_in(obj, a->name, &optional))
                fail_msg("%s: argument '%s' is not in the schema", b[i].name, a->name);
            assert_int_equal(optional, !a->required);
        }
        assert_int_equal(json_array_size(json_object_get(obj, "members")), nargs);
    }
    json_t *e;
    size_t i;
    json_array_foreach(list, i, e)
        ncmds += is_meta(e, "command");
    assert_int_equal(ncmds, n + 2);
    /* query-commands lists the same commands. */
    json_t *qc = json_array();
    lm_qmp_builtin_list(qc);
    assert_int_equal(json_array_size(qc), n);
    json_decref(qc);
    json_decref(idx);
    json_decref(list);
}

static void test_parameters(void **state)
{
    json_t *list, *idx = schema_index(&list);
    json_t *set = json_object_get(idx, "MigrateSetParameters");
    json_t *query = json_object_get(idx, "MigrationParameters");
    assert_true(is_meta(set, "object") && is_meta(query, "object"));
    const lm_qmp_builtin *b = lm_qmp_builtin_find("migrate-set-parameters");
    assert_true(b && b->args == lm_qmp_args_decoded);
    assert_string_equal(str(json_object_get(idx, b->name), "arg-type"), "MigrateSetParameters");
    size_t nmembers = json_array_size(json_object_get(set, "members"));
    assert_int_equal(nmembers, lm_qmp_param_count());
    assert_int_equal(json_array_size(json_object_get(query, "members")), nmembers);
    /* Each is recognised by the decoder: a value of the wrong type is
     * refused naming it, never as unexpected. */
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(set, "members"), i, m) {
        lm_params p;
        uint64_t which;
        lm_error err = {0};
        json_t *args = json_pack("{s:[]}", str(m, "name"));
        assert_true(lm_qmp_decode_params(args, &p, &which, &err) < 0);
        assert_non_null(strstr(err.msg, str(m, "name")));
        assert_null(strstr(err.msg, "unexpected"));
        json_decref(args);
    }
    lm_params p;
    uint64_t which;
    lm_error err = {0};
    json_t *args = json_pack("{s:i}", "x-bogus", 1);
    assert_true(lm_qmp_decode_params(args, &p, &which, &err) < 0);
    assert_string_equal(err.msg, "Parameter 'x-bogus' is unexpected");
    json_decref(args);
    json_decref(idx);
    json_decref(list);
}

static void test_enums(void **state)
{
    json_t *list, *idx = schema_index(&list);
    json_t *caps = json_object_get(json_object_get(idx, "MigrationCapability"), "values");
    assert_int_equal(json_array_size(caps), LM_CAP__MAX);
    for (unsigned c = 0; c < LM_CAP__MAX; c++)
        assert_string_equal(json_string_value(json_array_get(caps, c)), lm_cap_name((lm_cap)c));
    json_t *st = json_object_get(json_object_get(idx, "MigrationStatus"), "values");
    assert_int_equal(json_array_size(st), LM_STATUS__MAX);
    json_t *rs = json_object_get(json_object_get(idx, "RunState"), "values");
    assert_int_equal(json_array_size(rs), LM_RUN__MAX);
    json_decref(idx);
    json_decref(list);
}

static void test_events(void **state)
{
    json_t *list, *idx = schema_index(&list);
    size_t nevents = 0, i;
    json_t *e;
    json_array_foreach(list, i, e)
        nevents += is_meta(e, "event");
    assert_int_equal(nevents, LM_EVENT__MAX);
    for (unsigned t = 0; t < LM_EVENT__MAX; t++) {
        for (unsigned s = 0; s < LM_STATUS__MAX; s++) {
            lm_event ev = {.type = (lm_event_type)t, .status = (lm_status)s, .pass = 7};
            json_t *o = lm_qmp_event_json(&ev);
            if (!o)
                fail_msg("event type %u has no QMP form", t);
            const char *name = str(o, "event");
            json_t *se = json_object_get(idx, name);
            if (!is_meta(se, "event"))
                fail_msg("event %s is not in the schema", name);
            json_t *data = json_object_get(o, "data");
            json_t *empty = json_object();
            validate(idx, str(se, "arg-type"), data ? data : empty, name);
            json_decref(empty);
            json_decref(o);
        }
    }
    json_decref(idx);
    json_decref(list);
}

static void test_migration_info_fits(void **state)
{
    json_t *list, *idx = schema_index(&list);
    static const char *const addrs[] = {"tcp:127.0.0.1:4444", "unix:/tmp/x.sock", "fd:7", ""};
    static lm_info in; /* large: not on the stack */
    for (unsigned a = 0; a < 4; a++) {
        memset(&in, 0, sizeof in);
        in.status = LM_STATUS_COMPLETED;
        in.has_ram = true;
        in.total_time = in.setup_time = in.expected_downtime = in.downtime = 5;
        in.switch_pause_us = 9;
        in.multifd_channels = 3;
        in.has_postcopy = in.has_blocktime = true;
        in.mbps = 1.5;
        snprintf(in.error_desc, sizeof in.error_desc, "something");
        snprintf(in.socket_address, sizeof in.socket_address, "%s", addrs[a]);
        json_t *o = lm_qmp_info_json(&in);
        /* what cmd_query_migrate adds */
        json_object_set_new(o, "x-devices",
                            json_pack("[{s:s, s:i, s:i, s:b, s:i, s:i, s:s}]", "name", "bulk",
                                      "instance", 0, "version", 1, "iterable", 1, "pending", 0,
                                      "bytes", 5, "ack", "acked"));
        validate(idx, "MigrationInfo", o, "query-migrate");
        json_decref(o);
    }
    memset(&in, 0, sizeof in);
    in.expected_downtime = in.downtime = in.total_time = -1;
    json_t *o = lm_qmp_info_json(&in);
    validate(idx, "MigrationInfo", o, "query-migrate (none)");
    json_decref(o);
    json_decref(idx);
    json_decref(list);
}

/* ---------------------------------------------------- the library side */

static void nop(void *opaque)
{
}

static const lm_host_ops ops = {.stop = nop, .start = nop};

static void test_identity(void **state)
{
    lm_mig *m = NULL;
    lm_error err = {0};
    char name[LM_NAME_MAX + 1], uuid[LM_UUID_STR_LEN + 1];
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, &err), 0);
    lm_mig_get_identity(m, name, uuid);
    assert_string_equal(name, "");
    assert_string_equal(uuid, "00000000-0000-0000-0000-000000000000");
    assert_int_equal(lm_mig_set_identity(m, "vm-1", "0123ABCD-ef01-2345-6789-abcdef012345", &err),
                     0);
    lm_mig_get_identity(m, name, uuid);
    assert_string_equal(name, "vm-1");
    assert_string_equal(uuid, "0123abcd-ef01-2345-6789-abcdef012345");
    static const char *const bad_uuids[] = {"",
                                            "0123abcd",
                                            "0123abcd-ef01-2345-6789-abcdef01234",
                                            "0123abcd-ef01-2345-6789-abcdef0123456",
                                            "0123abcd+ef01-2345-6789-abcdef012345",
                                            "0123abcd-ef01-2345-6789-abcdef01234x"};
    for (unsigned i = 0; i < sizeof bad_uuids / sizeof bad_uuids[0]; i++) {
        lm_error_clear(&err);
        assert_int_equal(lm_mig_set_identity(m, NULL, bad_uuids[i], &err), -EINVAL);
        assert_non_null(strstr(err.msg, "UUID"));
    }
    lm_error_clear(&err);
    assert_int_equal(lm_mig_set_identity(m, "", NULL, &err), -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_mig_set_identity(m, "tab\there", NULL, &err), -EINVAL);
    /* a refused call changes nothing */
    lm_mig_get_identity(m, name, uuid);
    assert_string_equal(name, "vm-1");
    assert_int_equal(lm_mig_set_identity(m, NULL, NULL, &err), 0);
    lm_mig_get_identity(m, name, uuid);
    assert_string_equal(name, "");
    assert_string_equal(uuid, "00000000-0000-0000-0000-000000000000");
    lm_mig_free(m);
}

static lm_status wait_final(lm_mig *m)
{
    lm_info *info = calloc(1, sizeof *info);
    lm_status s = LM_STATUS_NONE;
    for (int i = 0; i < 2000; i++) { /* bounded: 20 s */
        lm_mig_query(m, info);
        s = info->status;
        if (s == LM_STATUS_CANCELLED || s == LM_STATUS_FAILED || s == LM_STATUS_COMPLETED)
            break;
        usleep(10000);
    }
    free(info);
    return s;
}

static void test_incoming_refusals(void **state)
{
    static const char not_incoming[] = "'-incoming' was not specified on the command line";
    static const char already[] = "The incoming migration has already been started";
    lm_error err = {0};
    lm_mig *m = NULL;
    /* Not created as a destination: running or paused, refused. */
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, &err), 0);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), -EINVAL);
    assert_string_equal(err.msg, not_incoming);
    lm_error_clear(&err);
    assert_int_equal(lm_vm_stop(m, &err), 0);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), -EINVAL);
    assert_string_equal(err.msg, not_incoming);
    assert_int_equal(lm_vm_runstate(m), LM_RUN_PAUSED);
    lm_mig_free(m);

    /* A destination: once; again after a cancel. */
    lm_error_clear(&err);
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_INMIGRATE, &m, &err), 0);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), 0);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), -EBUSY);
    assert_string_equal(err.msg, already);
    lm_error_clear(&err);
    assert_int_equal(lm_mig_cancel(m, &err), 0);
    assert_int_equal(wait_final(m), LM_STATUS_CANCELLED);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), 0);
    assert_int_equal(lm_mig_incoming(m, "tcp:127.0.0.1:0", &err), -EBUSY);
    lm_mig_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_well_formed), cmocka_unit_test(test_commands_follow_the_table),
        cmocka_unit_test(test_parameters),  cmocka_unit_test(test_enums),
        cmocka_unit_test(test_events),      cmocka_unit_test(test_migration_info_fits),
        cmocka_unit_test(test_identity),    cmocka_unit_test(test_incoming_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
