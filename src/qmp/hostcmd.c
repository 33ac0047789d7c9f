/*
 * hostcmd.c - commands the host adds to the QMP server
 * (lm_qmp_server_register, lm_qmp_server_register_args): the name checks,
 * the copy of an argument list that the dispatch checks every request
 * against (dispatch.c run_host_cmd), and freeing it.
 *
 * Why an argument list: the server checked the built-in commands'
 * arguments but passed a host command whatever came, so the guest's
 * `quit` took {"bogus": [1, 2]} and quit (issue 12, defect 3).
 *
 * Threads: register runs on any thread; s->lock guards s->cmds (a row is
 * filled completely before ncmds counts it, and never changes after).
 */
#include "qmp/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Arguments a host command may declare. */
#define MAX_HOST_ARGS 32

static bool printable_name(const char *name, size_t max)
{
    size_t len = strlen(name);
    if (len < 1 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return false;
    }
    return true;
}

static void free_args(lm_qmp_arg *a)
{
    for (lm_qmp_arg *p = a; p && p->name; p++)
        free((char *)p->name);
    free(a);
}

/* The internal copy of a host's list; an empty list (no arguments) is a
 * list with only its terminator, so "checked" and "takes none" differ
 * from NULL ("unchecked"). */
static int copy_args(const char *cmd, const lm_qmp_arg_spec *in, lm_qmp_arg **out, lm_error *err)
{
    static const enum lm_qmp_atype types[LM_QMP_ARG__MAX] = {
        [LM_QMP_ARG_STR] = LM_QMP_T_STR,     [LM_QMP_ARG_BOOL] = LM_QMP_T_BOOL,
        [LM_QMP_ARG_INT] = LM_QMP_T_INT,     [LM_QMP_ARG_NUMBER] = LM_QMP_T_NUM,
        [LM_QMP_ARG_ARRAY] = LM_QMP_T_ARRAY, [LM_QMP_ARG_OBJECT] = LM_QMP_T_OBJ,
        [LM_QMP_ARG_ANY] = LM_QMP_T_ANY,
    };
    size_t n = 0;
    while (in && in[n].name)
        if (++n > MAX_HOST_ARGS)
            return lm_error_set(err, -EINVAL, "QMP register: '%s' declares more than %d arguments",
                                cmd, MAX_HOST_ARGS);
    lm_qmp_arg *a = calloc(n + 1, sizeof *a);
    if (!a)
        return lm_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const lm_qmp_arg_spec *sp = &in[i];
        int rc = 0;
        if (!printable_name(sp->name, CMD_NAME_MAX))
            rc = lm_error_set(err, -EINVAL,
                              "QMP register: '%s': argument name '%s' must be 1..%d printable "
                              "ASCII bytes without spaces",
                              cmd, sp->name, CMD_NAME_MAX);
        else if ((unsigned)sp->type >= LM_QMP_ARG__MAX)
            rc = lm_error_set(err, -EINVAL, "QMP register: '%s': argument '%s' has type %d", cmd,
                              sp->name, (int)sp->type);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (strcmp(in[j].name, sp->name) == 0)
                rc = lm_error_set(err, -EINVAL, "QMP register: '%s': argument '%s' declared twice",
                                  cmd, sp->name);
        if (rc == 0 && !(a[i].name = strdup(sp->name)))
            rc = lm_error_set(err, -ENOMEM, "out of memory");
        if (rc < 0) {
            free_args(a);
            return rc;
        }
        a[i].type = types[sp->type];
        a[i].required = !sp->optional;
        a[i].schema = NULL; /* the plain type's name (schema.c) */
    }
    *out = a;
    return 0;
}

static int add(lm_qmp_server *s, const char *name, bool checked, const lm_qmp_arg_spec *spec,
               lm_qmp_cmd_fn fn, void *opaque, lm_error *err)
{
    if (!s || !name || !fn)
        return lm_error_set(err, -EINVAL, "QMP register: missing server, name or function");
    if (!printable_name(name, CMD_NAME_MAX))
        return lm_error_set(err, -EINVAL,
                            "QMP register: command name '%s' must be 1..%d printable ASCII bytes "
                            "without spaces",
                            name, CMD_NAME_MAX);
    if (lm_qmp_builtin_exists(name))
        return lm_error_set(err, -EEXIST, "QMP register: '%s' is a built-in command", name);
    lm_qmp_arg *args = NULL;
    if (checked) {
        int rc = copy_args(name, spec, &args, err);
        if (rc < 0)
            return rc;
    }
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    if (lm_qmp_srv_find_host_cmd(s, name) >= 0) {
        rc = lm_error_set(err, -EEXIST, "QMP register: '%s' is already registered", name);
    } else if (s->ncmds >= MAX_HOST_CMDS) {
        rc = lm_error_set(err, -ENOSPC, "QMP register: too many commands (max %d)", MAX_HOST_CMDS);
    } else {
        hostcmd *h = &s->cmds[s->ncmds++];
        snprintf(h->name, sizeof h->name, "%s", name);
        h->fn = fn;
        h->opaque = opaque;
        h->args = args; /* now the server's */
        args = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    free_args(args);
    return rc;
}

int lm_qmp_server_register_args(lm_qmp_server *s, const char *name, const lm_qmp_arg_spec *args,
                                lm_qmp_cmd_fn fn, void *opaque, lm_error *err)
{
    return add(s, name, true, args, fn, opaque, err);
}

int lm_qmp_server_register(lm_qmp_server *s, const char *name, lm_qmp_cmd_fn fn, void *opaque,
                           lm_error *err)
{
    return add(s, name, false, NULL, fn, opaque, err);
}

void lm_qmp_srv_host_cmds_fini(lm_qmp_server *s)
{
    for (unsigned i = 0; i < s->ncmds; i++) {
        free_args(s->cmds[i].args);
        s->cmds[i].args = NULL;
    }
}
