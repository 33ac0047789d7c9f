/*
 * fuzz_qmpcmd.c - libFuzzer target for the QMP command handlers: the
 * input is a QMP session (requests, one after another) that runs through
 * the server's own dispatch (dispatch.c) against a real lm_mig with no
 * migration running: capabilities negotiation, every built-in command
 * with its argument checks and handler (stop/cont, capabilities,
 * parameters, query-*, cancel, pause, recover, descriptors), and two host
 * commands registered with and without an argument list.
 *
 * In-process safety: nothing may start I/O.  A migrate, migrate-incoming
 * or migrate-recover whose "uri" parses (lm_uri_parse, pure) gets it
 * replaced by fd:N of a descriptor that is not open, which every one of
 * them refuses before it connects, listens or opens a file; a URI that does
 * not parse, or fd:NAME (resolved by fds.c among the descriptors the
 * client passed: none here), goes through unchanged.  No socket: replies
 * are queued on the client and read back here.
 *
 * The first byte may choose the session (consumed only if it is one of
 * these): 'r' running, 'p' paused, 'i' inmigrate (a destination), each
 * already negotiated; 'R', 'P', 'I' the same before qmp_capabilities.
 * Anything else: running, negotiated.
 *
 * Properties checked (abort() on failure): each request gets exactly one
 * reply, a JSON object with either "return" or an "error" whose class
 * and desc are non-empty, carrying the request's "id" when it had one; no
 * migration ever starts (query-migrate stays "none"), no thread of one
 * runs.
 *
 * LM_FUZZ_QMP_TRACE=1 in the environment prints every reply to stderr
 * (to read what a crashing or a seed input does).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chan/chan.h"
#include "qmp/server.h"

/* Requests per input (a session in the seed corpus has ~20). */
#define MAX_REQUESTS 256

static void nop(void *opaque)
{
    (void)opaque;
}

static int host_echo(void *opaque, const char *args_json, char **ret_json, lm_error *err)
{
    (void)opaque;
    (void)err;
    *ret_json = strdup(args_json);
    return 0;
}

static int host_fail(void *opaque, const char *args_json, char **ret_json, lm_error *err)
{
    (void)opaque;
    (void)ret_json;
    return lm_error_set(err, -EINVAL, "x-fuzz-raw refuses %zu bytes of arguments",
                        strlen(args_json));
}

/* A descriptor number that is not open (nothing else in this process
 * opens one between here and the command). */
static int closed_fd(void)
{
    int fd = dup(2);
    if (fd < 0)
        abort();
    close(fd);
    return fd;
}

/* See the header: only URIs that cannot start I/O reach the library. */
static void defuse(lm_qmp_request *req)
{
    const char *cmd = req->execute;
    if (strcmp(cmd, "migrate") && strcmp(cmd, "migrate-incoming") && strcmp(cmd, "migrate-recover"))
        return;
    json_t *v = json_object_get(req->args, "uri");
    if (!json_is_string(v))
        return;
    lm_uri u;
    lm_error err = {0};
    if (lm_uri_parse(json_string_value(v), &u, &err) < 0)
        return;
    char safe[32];
    snprintf(safe, sizeof safe, "fd:%d", closed_fd());
    json_object_set_new(req->args, "uri", json_string(safe));
}

/* Takes the replies queued on c; each must be one well-formed
 * reply.  Returns how many. */
static unsigned take_replies(client *c, json_t *want_id)
{
    static int trace = -1;
    if (trace < 0)
        trace = getenv("LM_FUZZ_QMP_TRACE") != NULL;
    unsigned n = 0;
    size_t len = lm_qmp_srv_out_queued(c);
    const char *p = c->out + c->out_head, *end = p + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            abort(); /* every reply ends with \r\n */
        if (trace)
            fprintf(stderr, "%.*s\n", (int)(nl - p > 300 ? 300 : nl - p), p);
        json_error_t je;
        json_t *r = lm_qmp_json_loadb(p, (size_t)(nl - p), 0, &je);
        if (!r || !json_is_object(r))
            abort();
        json_t *ret = json_object_get(r, "return"), *e = json_object_get(r, "error");
        if (!!ret == !!e)
            abort();
        if (e) {
            const char *cls = json_string_value(json_object_get(e, "class"));
            const char *desc = json_string_value(json_object_get(e, "desc"));
            if (!cls || !cls[0] || !desc || !desc[0])
                abort();
        }
        json_t *id = json_object_get(r, "id");
        if (want_id && (!id || !json_equal(id, want_id)))
            abort();
        if (!want_id && id)
            abort();
        json_decref(r);
        n++;
        p = nl + 1;
    }
    c->out_head = c->out_len = 0;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const lm_host_ops ops = {nop, nop};
    static const lm_qmp_arg_spec echo_args[] = {
        {"name", LM_QMP_ARG_STR, false},  {"count", LM_QMP_ARG_INT, true},
        {"on", LM_QMP_ARG_BOOL, true},    {"ratio", LM_QMP_ARG_NUMBER, true},
        {"list", LM_QMP_ARG_ARRAY, true}, {"obj", LM_QMP_ARG_OBJECT, true},
        {"any", LM_QMP_ARG_ANY, true},    {NULL},
    };
    lm_runstate rs = LM_RUN_RUNNING;
    bool negotiated = true;
    if (size > 0 && strchr("rpiRPI", data[0]) && data[0]) {
        char ch = (char)data[0];
        rs = (ch == 'p' || ch == 'P')   ? LM_RUN_PAUSED
             : (ch == 'i' || ch == 'I') ? LM_RUN_INMIGRATE
                                        : LM_RUN_RUNNING;
        negotiated = ch >= 'a';
        data++;
        size--;
    }

    lm_mig *m = NULL;
    lm_error err = {0};
    if (lm_mig_new(&ops, NULL, rs, &m, &err) < 0)
        abort();
    lm_qmp_server *s = calloc(1, sizeof *s);
    if (!s)
        abort();
    s->m = m;
    s->lfd = s->efd = -1;
    pthread_mutex_init(&s->lock, NULL);
    if (lm_qmp_server_register_args(s, "x-fuzz-echo", echo_args, host_echo, NULL, &err) < 0 ||
        lm_qmp_server_register(s, "x-fuzz-raw", host_fail, NULL, &err) < 0)
        abort();
    client c = {.fd = -1, .negotiated = negotiated};
    lm_qmp_reader_init(&c.rd, 1u << 16);

    unsigned requests = 0;
    size_t off = 0;
    while (requests < MAX_REQUESTS && !c.dead) {
        json_t *v = NULL;
        lm_error_clear(&err);
        int rc = lm_qmp_reader_next(&c.rd, &v, &err);
        if (rc == LM_QMP_READ_MORE) {
            if (off == size)
                break;
            size_t n = size - off < 4096 ? size - off : 4096;
            if (lm_qmp_reader_feed(&c.rd, data + off, n, &err) < 0)
                break; /* more than the reader holds: the server drops such a client */
            off += n;
            continue;
        }
        if (rc == LM_QMP_READ_OVERFLOW)
            break;
        requests++;
        if (rc == LM_QMP_READ_BAD) {
            lm_qmp_srv_reply_error(&c, NULL, "GenericError", err.msg);
            if (take_replies(&c, NULL) != 1)
                abort();
            continue;
        }
        lm_qmp_request req;
        json_t *id = NULL;
        if (lm_qmp_request_check(v, &req) < 0) {
            lm_qmp_srv_reply_error(&c, req.id, req.err_class, req.err_desc);
        } else {
            defuse(&req);
            lm_qmp_srv_dispatch(s, &c, &req);
        }
        id = req.id ? json_incref(req.id) : NULL;
        lm_qmp_request_fini(&req);
        if (!c.dead && take_replies(&c, id) != 1)
            abort();
        json_decref(id);
        lm_qmp_fds_settle(&c);
    }

    /* Nothing started: no migration, no thread. */
    lm_info info;
    lm_mig_query(m, &info);
    if (info.status != LM_STATUS_NONE) {
        fprintf(stderr, "a migration started: status %d\n", (int)info.status);
        abort();
    }
    lm_qmp_fds_client_fini(&c);
    lm_qmp_reader_fini(&c.rd);
    free(c.out);
    lm_qmp_fds_sets_fini(s);
    lm_qmp_srv_host_cmds_fini(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
    lm_mig_free(m);
    return 0;
}
