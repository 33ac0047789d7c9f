/*
 * objects.c - QMP object-add and object-del for the objects migration TLS
 * uses (qapi/qom.json: tls-creds-x509, tls-creds-psk, authz-list): the
 * JSON arguments flattened into QEMU's -object key=value form and handed
 * to lm_mig_object_add (core/objects.c).  QMP thread only.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROPS 1024

typedef struct flat {
    unsigned n;
    const char *k[MAX_PROPS], *v[MAX_PROPS];
    char *own[2 * MAX_PROPS];
    unsigned nown;
} flat;

static const char *keep(flat *f, char *s)
{
    if (s && f->nown < 2 * MAX_PROPS)
        f->own[f->nown++] = s;
    return s;
}

static int put(flat *f, const char *key, json_t *v, lm_error *err)
{
    if (f->n >= MAX_PROPS)
        return lm_error_set(err, -E2BIG, "object-add: more than %d properties", MAX_PROPS);
    char buf[32];
    const char *val;
    if (json_is_string(v))
        val = json_string_value(v);
    else if (json_is_boolean(v))
        val = json_is_true(v) ? "on" : "off";
    else if (json_is_integer(v) && snprintf(buf, sizeof buf, "%lld", json_integer_value(v)) > 0)
        val = keep(f, strdup(buf));
    else
        return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s'", key);
    f->k[f->n] = keep(f, strdup(key));
    f->v[f->n] = val;
    if (!f->k[f->n] || !val)
        return lm_error_set(err, -ENOMEM, "out of memory");
    f->n++;
    return 0;
}

/* QAuthZListRule list: rules.N.match / policy / format. */
static int put_rules(flat *f, json_t *rules, lm_error *err)
{
    if (!json_is_array(rules))
        return lm_error_set(err, -EINVAL, "Invalid parameter type for 'rules', expected: array");
    size_t i;
    json_t *r;
    json_array_foreach(rules, i, r) {
        if (!json_is_object(r))
            return lm_error_set(err, -EINVAL, "rules[%zu]: expected an object", i);
        const char *key;
        json_t *v;
        json_object_foreach(r, key, v) {
            char k[64];
            snprintf(k, sizeof k, "rules.%zu.%s", i, key);
            int rc = put(f, k, v, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int lm_qmp_cmd_object_add(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    json_t *type = json_object_get(args, "qom-type"), *id = json_object_get(args, "id");
    if (!json_is_string(type))
        return lm_error_set(err, -EINVAL, "Parameter 'qom-type' is missing");
    if (!json_is_string(id))
        return lm_error_set(err, -EINVAL, "Parameter 'id' is missing");
    flat *f = calloc(1, sizeof *f);
    if (!f)
        return lm_error_set(err, -ENOMEM, "out of memory");
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(args, key, v) {
        if (!strcmp(key, "qom-type") || !strcmp(key, "id"))
            continue;
        rc = !strcmp(key, "rules") ? put_rules(f, v, err) : put(f, key, v, err);
        if (rc < 0)
            break;
    }
    if (rc == 0)
        rc = lm_mig_object_add(m, json_string_value(type), json_string_value(id), f->n, f->k, f->v,
                               err);
    for (unsigned i = 0; i < f->nown; i++)
        free(f->own[i]);
    free(f);
    return rc;
}

int lm_qmp_cmd_object_del(lm_mig *m, json_t *args, json_t **ret, lm_error *err)
{
    return lm_mig_object_del(m, json_string_value(json_object_get(args, "id")), err);
}
