/*
 * dispatch.c - the QMP server's command dispatch, on the server thread:
 * capabilities negotiation, then each request to a built-in command
 * (commands.c) or a host-registered one, and the replies (server.h).
 */
#include "qmp/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lm_qmp_srv_find_host_cmd(lm_qmp_server *s, const char *name)
{
    for (unsigned i = 0; i < s->ncmds; i++)
        if (strcmp(s->cmds[i].name, name) == 0)
            return (int)i;
    return -1;
}

static json_t *query_commands(lm_qmp_server *s)
{
    json_t *list = json_array();
    if (!list)
        return NULL;
    lm_qmp_builtin_list(list);
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->ncmds; i++)
        json_array_append_new(list, json_pack("{s:s}", "name", s->cmds[i].name));
    pthread_mutex_unlock(&s->lock);
    return list;
}

static void negotiate(client *c, lm_qmp_request *req)
{
    if (c->negotiated) {
        lm_qmp_srv_reply_error(c, req->id, "CommandNotFound",
                               "Capabilities negotiation is already complete, command ignored");
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(req->args, key, v) {
        char desc[LM_ERROR_MSG_MAX];
        if (strcmp(key, "enable") != 0) {
            snprintf(desc, sizeof desc, "Parameter '%s' is unexpected", key);
            lm_qmp_srv_reply_error(c, req->id, "GenericError", desc);
            return;
        }
        if (!json_is_array(v)) {
            lm_qmp_srv_reply_error(c, req->id, "GenericError",
                                   "Invalid parameter type for 'enable', expected: array");
            return;
        }
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            /* The greeting offers no capability (no "oob"). */
            if (json_is_string(e) && strcmp(json_string_value(e), "oob") == 0)
                snprintf(desc, sizeof desc, "Capability 'oob' not available");
            else if (json_is_string(e))
                snprintf(desc, sizeof desc, "Parameter 'enable[%zu]' does not accept value '%s'", i,
                         json_string_value(e));
            else
                snprintf(desc, sizeof desc,
                         "Invalid parameter type for 'enable[%zu]', expected: string", i);
            lm_qmp_srv_reply_error(c, req->id, "GenericError", desc);
            return;
        }
    }
    c->negotiated = true;
    lm_qmp_srv_reply_return(c, req->id, NULL);
}

static void run_host_cmd(lm_qmp_server *s, client *c, lm_qmp_request *req, const hostcmd *hc)
{
    lm_error err = {0};
    char *ret_txt = NULL;
    /* Declared arguments are checked here, as the built-ins' are, so fn
     * never sees a request its declaration does not allow (hostcmd.c). */
    if (hc->args && lm_qmp_args_check(req->args, hc->args, &err) < 0) {
        lm_qmp_srv_reply_error(c, req->id, "GenericError", err.msg);
        return;
    }
    char *args_txt = req->args ? lm_qmp_json_dumps(req->args, JSON_COMPACT) : strdup("{}");
    if (!args_txt) {
        lm_qmp_srv_reply_error(c, req->id, "GenericError", "out of memory");
        return;
    }
    int rc = hc->fn(hc->opaque, args_txt, &ret_txt, &err);
    free(args_txt);
    lm_qmp_srv_drain_events(s);
    if (rc < 0) {
        free(ret_txt);
        lm_qmp_srv_reply_error(c, req->id, "GenericError",
                               err.msg[0] ? err.msg : "command failed without a message");
        return;
    }
    json_t *ret = NULL;
    if (ret_txt) {
        json_error_t je;
        ret = lm_qmp_json_loads(ret_txt, JSON_DECODE_ANY, &je);
        free(ret_txt);
        if (!ret) {
            char desc[LM_ERROR_MSG_MAX];
            snprintf(desc, sizeof desc, "command '%s' returned invalid JSON: %s", hc->name,
                     je.text);
            lm_qmp_srv_reply_error(c, req->id, "GenericError", desc);
            return;
        }
    }
    lm_qmp_srv_reply_return(c, req->id, ret);
}

/* query-qmp-schema: the built-in table plus the host's commands. */
static json_t *query_schema(lm_qmp_server *s, lm_error *err)
{
    const char *names[MAX_HOST_CMDS];
    const lm_qmp_arg *args[MAX_HOST_CMDS]; /* fixed once registered (server.h) */
    char copy[MAX_HOST_CMDS][CMD_NAME_MAX + 1];
    pthread_mutex_lock(&s->lock);
    unsigned n = s->ncmds;
    for (unsigned i = 0; i < n; i++) {
        memcpy(copy[i], s->cmds[i].name, sizeof copy[i]);
        names[i] = copy[i];
        args[i] = s->cmds[i].args;
    }
    pthread_mutex_unlock(&s->lock);
    return lm_qmp_schema_json(names, args, n, err);
}

/* The commands the server answers itself (they need its state). */
static void run_server_cmd(lm_qmp_server *s, client *c, lm_qmp_request *req,
                           const lm_qmp_builtin *b)
{
    lm_error err = {0};
    /* Arguments first, as QEMU's marshallers do, then the command. */
    if (lm_qmp_builtin_check(b, req->args, &err) < 0) {
        lm_qmp_srv_reply_error(c, req->id, "GenericError", err.msg);
        return;
    }
    if (strcmp(b->name, "qmp_capabilities") == 0) {
        negotiate(c, req);
        return;
    }
    json_t *ret =
        strcmp(b->name, "query-commands") == 0 ? query_commands(s) : query_schema(s, &err);
    if (ret)
        lm_qmp_srv_reply_return(c, req->id, ret);
    else
        lm_qmp_srv_reply_error(c, req->id, "GenericError", err.msg[0] ? err.msg : "out of memory");
}

void lm_qmp_srv_dispatch(lm_qmp_server *s, client *c, lm_qmp_request *req)
{
    const char *name = req->execute;

    if (!c->negotiated && strcmp(name, "qmp_capabilities") != 0) {
        lm_qmp_srv_reply_error(c, req->id, "CommandNotFound",
                               "Expecting capabilities negotiation with 'qmp_capabilities'");
        return;
    }
    /* Descriptor passing (fds.c) first: its commands, and migrate or
     * migrate-incoming with an fd:NAME it resolves for this client. */
    if (lm_qmp_fds_dispatch(s, c, req))
        return;
    const lm_qmp_builtin *b = lm_qmp_builtin_find(name);
    if (b && !b->fn) {
        run_server_cmd(s, c, req, b);
        return;
    }

    json_t *ret = NULL;
    const char *cls = "GenericError";
    lm_error err = {0};
    int rc = lm_qmp_builtin_run(s->m, name, req->args, &ret, &cls, &err);
    if (rc == 0) {
        /* Events the command caused (STOP, MIGRATION setup) go out before
         * its reply, as QEMU orders them. */
        lm_qmp_srv_drain_events(s);
        lm_qmp_srv_reply_return(c, req->id, ret);
        return;
    }
    if (rc < 0) {
        lm_qmp_srv_drain_events(s);
        lm_qmp_srv_reply_error(c, req->id, cls, err.msg[0] ? err.msg : "command failed");
        return;
    }

    pthread_mutex_lock(&s->lock);
    int i = lm_qmp_srv_find_host_cmd(s, name);
    hostcmd hc = {{0}};
    if (i >= 0)
        hc = s->cmds[i];
    pthread_mutex_unlock(&s->lock);
    if (i >= 0) {
        run_host_cmd(s, c, req, &hc);
        return;
    }
    char desc[LM_ERROR_MSG_MAX];
    snprintf(desc, sizeof desc, "The command %s has not been found", name);
    lm_qmp_srv_reply_error(c, req->id, "CommandNotFound", desc);
}

/* Runs complete requests buffered for c, while its output has room and
 * its turn lasts. */
bool lm_qmp_srv_stopping(lm_qmp_server *s)
{
    pthread_mutex_lock(&s->lock);
    bool stop = s->stop;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

void lm_qmp_srv_process_input(lm_qmp_server *s, client *c)
{
    c->more = false;
    for (unsigned n = 0;; n++) {
        /* Nothing runs after a command (a host's "quit") stopped us. */
        if (c->dead || lm_qmp_srv_stopping(s))
            return;
        if (n == TURN_REQUESTS || lm_qmp_srv_out_queued(c) >= OUT_HIGH) {
            /* Input stays buffered, and no more is read, until its
             * requests have run. */
            c->more = true;
            return;
        }
        json_t *v = NULL;
        lm_error err = {0};
        int rc = lm_qmp_reader_next(&c->rd, &v, &err);
        if (rc == LM_QMP_READ_MORE) {
            lm_qmp_fds_settle(c); /* the rest of a malformed value was skipped */
            return;
        }
        if (rc == LM_QMP_READ_OVERFLOW) {
            lm_qmp_srv_reply_error(c, NULL, "GenericError", err.msg);
            lm_qmp_srv_out_flush(c);
            c->dead = true;
            return;
        }
        if (rc == LM_QMP_READ_BAD) {
            lm_qmp_srv_reply_error(c, NULL, "GenericError", err.msg);
            lm_qmp_fds_settle(c);
            continue;
        }
        lm_qmp_request req;
        if (lm_qmp_request_check(v, &req) < 0)
            lm_qmp_srv_reply_error(c, req.id, req.err_class, req.err_desc);
        else
            lm_qmp_srv_dispatch(s, c, &req);
        lm_qmp_request_fini(&req);
        lm_qmp_fds_settle(c); /* descriptors that came with it and were not taken */
    }
}
