/*
 * fds.c - file descriptors passed over the QMP socket (SCM_RIGHTS), with
 * QEMU's commands and error texts (qapi/misc.json, monitor/fds.c): getfd
 * and closefd name a descriptor per client connection (QEMU keeps them per
 * monitor), add-fd / remove-fd / query-fdsets keep fd sets per server, and
 * `migrate` / `migrate-incoming` take a named descriptor with fd:NAME.
 *
 * Runs on the QMP server thread only (like everything that touches a
 * client); no lock.  Which descriptor came with which command: the kernel
 * hands the descriptors of one sendmsg() to the recvmsg() that reads the
 * start of its bytes, and stops that read within them, so the last
 * non-blank byte of that read lies in the message that carried them.
 * That byte's stream offset is the descriptor's anchor, and the request
 * whose text contains it (the first one ending after it) is the one it
 * came with.  A descriptor not claimed by that request is closed once the
 * request has run, as QEMU's chardev drops unclaimed ones.
 */
#include "qmp/server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Stream offset just past the input the reader has consumed (during a
 * dispatch: the end of the request being run). */
static uint64_t consumed_end(const client *c)
{
    return c->rx - (c->rd.len - c->rd.head);
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

void lm_qmp_fds_received(client *c, const int *fds, unsigned n, size_t nbytes, bool truncated)
{
    /* The anchor: the read's last non-blank byte.  A read of blanks only
     * (a message that starts with blanks): the next byte to come. */
    size_t i = c->rd.len,
           stop = c->rd.len - (nbytes < c->rd.len - c->rd.head ? nbytes : c->rd.len - c->rd.head);
    while (i > stop && is_blank(c->rd.buf[i - 1]))
        i--;
    uint64_t anchor = i > stop ? c->rx - (c->rd.len - (i - 1)) : c->rx;
    for (unsigned k = 0; k < n; k++) {
        if (c->npend + c->nnamed < CLIENT_FDS) {
            c->pend[c->npend++] = (pending_fd){.fd = fds[k], .anchor = anchor};
            continue;
        }
        close(fds[k]);
        c->dropped = anchor + 1;
    }
    if (truncated)
        c->dropped = anchor + 1;
}

/* The first descriptor that came with the request being run, taken out of
 * the pending list (the caller owns it), or -1. */
static int take_pending(client *c)
{
    uint64_t end = consumed_end(c);
    if (c->npend == 0 || c->pend[0].anchor >= end)
        return -1;
    int fd = c->pend[0].fd;
    memmove(&c->pend[0], &c->pend[1], (c->npend - 1) * sizeof c->pend[0]);
    c->npend--;
    return fd;
}

/* Why a command that wants a descriptor got none. */
static void no_fd_error(client *c, lm_error *err)
{
    if (c->dropped && c->dropped - 1 < consumed_end(c))
        lm_error_set(err, -EMFILE,
                     "Too many file descriptors held by this QMP connection (at most %d, "
                     "pending or named, and %d per message); close some with closefd",
                     CLIENT_FDS, MSG_FDS);
    else
        lm_error_set(err, -EBADF, "No file descriptor supplied via SCM_RIGHTS");
}

void lm_qmp_fds_settle(client *c)
{
    uint64_t end = consumed_end(c);
    unsigned j = 0;
    for (unsigned i = 0; i < c->npend; i++) {
        if (c->pend[i].anchor < end)
            close(c->pend[i].fd);
        else
            c->pend[j++] = c->pend[i];
    }
    c->npend = j;
    if (c->dropped && c->dropped - 1 < end)
        c->dropped = 0;
}

void lm_qmp_fds_client_fini(client *c)
{
    for (unsigned i = 0; i < c->npend; i++)
        close(c->pend[i].fd);
    for (unsigned i = 0; i < c->nnamed; i++)
        close(c->named[i].fd);
    c->npend = c->nnamed = 0;
    c->dropped = 0;
}

void lm_qmp_fds_sets_fini(lm_qmp_server *s)
{
    for (unsigned i = 0; i < s->nfdset; i++) {
        close(s->fdsets[i].fd);
        free(s->fdsets[i].opaque);
    }
    s->nfdset = 0;
}

/* ---------------------------------------------------------- named fds */

static int find_named(const client *c, const char *name)
{
    for (unsigned i = 0; i < c->nnamed; i++)
        if (strcmp(c->named[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Removes entry i; returns its descriptor (now the caller's). */
static int unname(client *c, unsigned i)
{
    int fd = c->named[i].fd;
    c->named[i] = c->named[--c->nnamed];
    return fd;
}

static int cmd_getfd(client *c, json_t *args, lm_error *err)
{
    const char *name = json_string_value(json_object_get(args, "fdname"));
    int fd = take_pending(c);
    if (fd < 0) {
        no_fd_error(c, err);
        return err->code;
    }
    if (name[0] >= '0' && name[0] <= '9') {
        /* fd:N means descriptor number N, so a name cannot look like one. */
        close(fd);
        return lm_error_set(err, -EINVAL,
                            "Parameter 'fdname' expects a name not starting with a digit");
    }
    if (strlen(name) > FDNAME_MAX) {
        close(fd);
        return lm_error_set(err, -ENAMETOOLONG,
                            "Parameter 'fdname' expects a name of at most %d bytes", FDNAME_MAX);
    }
    int i = find_named(c, name);
    if (i >= 0) {
        /* QEMU's rule: the new descriptor replaces the old one. */
        close(c->named[i].fd);
        c->named[i].fd = fd;
        return 0;
    }
    /* Room is certain: the descriptor counted against CLIENT_FDS while it
     * was pending. */
    named_fd *n = &c->named[c->nnamed++];
    snprintf(n->name, sizeof n->name, "%s", name);
    n->fd = fd;
    return 0;
}

static int cmd_closefd(client *c, json_t *args, lm_error *err)
{
    const char *name = json_string_value(json_object_get(args, "fdname"));
    int i = find_named(c, name);
    if (i < 0)
        return lm_error_set(err, -ENOENT, "File descriptor named '%s' not found", name);
    close(unname(c, (unsigned)i));
    return 0;
}

/* ------------------------------------------------------------ fd sets */

static bool fdset_exists(const lm_qmp_server *s, int64_t id)
{
    for (unsigned i = 0; i < s->nfdset; i++)
        if (s->fdsets[i].id == id)
            return true;
    return false;
}

static int cmd_add_fd(lm_qmp_server *s, client *c, json_t *args, json_t **ret, lm_error *err)
{
    json_t *jid = json_object_get(args, "fdset-id");
    const char *opaque = json_string_value(json_object_get(args, "opaque"));
    int fd = take_pending(c);
    if (fd < 0) {
        no_fd_error(c, err);
        return err->code;
    }
    int64_t id = 0;
    if (jid) {
        id = json_integer_value(jid);
        if (id < 0) {
            close(fd);
            return lm_error_set(err, -EINVAL, "Parameter 'fdset-id' expects a non-negative value");
        }
    } else {
        while (fdset_exists(s, id)) /* the lowest free id, as QEMU picks */
            id++;
    }
    if (s->nfdset >= FDSET_FDS) {
        close(fd);
        return lm_error_set(err, -EMFILE,
                            "Too many file descriptors in fd sets (at most %d); remove some "
                            "with remove-fd",
                            FDSET_FDS);
    }
    char *op = opaque ? strdup(opaque) : NULL;
    *ret = json_pack("{s:I, s:i}", "fdset-id", (json_int_t)id, "fd", fd);
    if ((opaque && !op) || !*ret) {
        free(op);
        json_decref(*ret);
        *ret = NULL;
        close(fd);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    s->fdsets[s->nfdset++] = (fdset_fd){.id = id, .fd = fd, .opaque = op};
    return 0;
}

static int cmd_remove_fd(lm_qmp_server *s, json_t *args, lm_error *err)
{
    int64_t id = json_integer_value(json_object_get(args, "fdset-id"));
    json_t *jfd = json_object_get(args, "fd");
    bool any = false;
    unsigned j = 0;
    for (unsigned i = 0; i < s->nfdset; i++) {
        fdset_fd *e = &s->fdsets[i];
        if (e->id == id && (!jfd || e->fd == json_integer_value(jfd))) {
            /* QEMU defers the close while the guest is paused; nothing
             * here uses a set's descriptors, so it closes at once. */
            close(e->fd);
            free(e->opaque);
            any = true;
            continue;
        }
        s->fdsets[j++] = *e;
    }
    s->nfdset = j;
    if (any)
        return 0;
    if (jfd)
        return lm_error_set(
            err, -ENOENT, "File descriptor named 'fdset-id:%" PRId64 ", fd:%" PRId64 "' not found",
            id, (int64_t)json_integer_value(jfd));
    return lm_error_set(err, -ENOENT, "File descriptor named 'fdset-id:%" PRId64 "' not found", id);
}

/* QEMU's order: sets by descending id, each set's descriptors in the
 * order they were added. */
static int cmd_query_fdsets(lm_qmp_server *s, json_t **ret, lm_error *err)
{
    json_t *list = json_array();
    int64_t below = INT64_MAX;
    bool first = true;
    while (list) {
        int64_t id = -1;
        for (unsigned i = 0; i < s->nfdset; i++)
            if ((first || s->fdsets[i].id < below) && s->fdsets[i].id > id)
                id = s->fdsets[i].id;
        if (id < 0)
            break;
        json_t *fds = json_array();
        json_t *set = json_pack("{s:I, s:o}", "fdset-id", (json_int_t)id, "fds", fds);
        if (!set || json_array_append_new(list, set) < 0) {
            json_decref(list);
            list = NULL;
            break;
        }
        for (unsigned i = 0; i < s->nfdset; i++) {
            const fdset_fd *e = &s->fdsets[i];
            if (e->id != id)
                continue;
            json_t *o = json_pack("{s:i}", "fd", e->fd);
            if (o && e->opaque)
                lm_qmp_put(o, "opaque", json_string(e->opaque));
            if (!o || json_array_append_new(fds, o) < 0) {
                json_decref(list);
                list = NULL;
                break;
            }
        }
        below = id;
        first = false;
    }
    *ret = list;
    return list ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

/* ------------------------------------------------- migrate with fd:NAME */

/* migrate / migrate-incoming with "uri": "fd:NAME": the named descriptor
 * is handed to the library as fd:N; once the command succeeds the name is
 * gone and our descriptor closed (the library took its own copy), as
 * QEMU's monitor_get_fd gives the migration ownership.  A command refused
 * before it starts (a migration already running, say) leaves the name as
 * it was.  Returns false when the request is not such a command. */
static bool migrate_named(lm_qmp_server *s, client *c, lm_qmp_request *req)
{
    if (strcmp(req->execute, "migrate") != 0 && strcmp(req->execute, "migrate-incoming") != 0)
        return false;
    const char *uri = json_string_value(json_object_get(req->args, "uri"));
    if (!uri || strncmp(uri, "fd:", 3) != 0 || (uri[3] >= '0' && uri[3] <= '9'))
        return false;
    const char *name = uri + 3;
    int i = find_named(c, name);
    if (i < 0) {
        char desc[LM_ERROR_MSG_MAX];
        snprintf(desc, sizeof desc, "File descriptor named '%s' has not been found", name);
        lm_qmp_srv_reply_error(c, req->id, "GenericError", desc);
        return true;
    }
    char num[32];
    snprintf(num, sizeof num, "fd:%d", c->named[i].fd);
    json_t *args = json_copy(req->args);
    if (!args || json_object_set_new(args, "uri", json_string(num)) < 0) {
        json_decref(args);
        lm_qmp_srv_reply_error(c, req->id, "GenericError", "out of memory");
        return true;
    }
    json_t *ret = NULL;
    const char *cls = "GenericError";
    lm_error err = {0};
    int rc = lm_qmp_builtin_run(s->m, req->execute, args, &ret, &cls, &err);
    json_decref(args);
    lm_qmp_srv_drain_events(s);
    if (rc < 0) {
        lm_qmp_srv_reply_error(c, req->id, cls, err.msg[0] ? err.msg : "command failed");
        return true;
    }
    close(unname(c, (unsigned)i));
    lm_qmp_srv_reply_return(c, req->id, ret);
    return true;
}

/* ------------------------------------------------------------ dispatch */

bool lm_qmp_fds_dispatch(lm_qmp_server *s, client *c, lm_qmp_request *req)
{
    const char *name = req->execute;
    enum { GETFD, CLOSEFD, ADDFD, REMOVEFD, QUERY } which;
    if (!strcmp(name, "getfd"))
        which = GETFD;
    else if (!strcmp(name, "closefd"))
        which = CLOSEFD;
    else if (!strcmp(name, "add-fd"))
        which = ADDFD;
    else if (!strcmp(name, "remove-fd"))
        which = REMOVEFD;
    else if (!strcmp(name, "query-fdsets"))
        which = QUERY;
    else
        return migrate_named(s, c, req);

    lm_error err = {0};
    json_t *ret = NULL;
    int rc = lm_qmp_builtin_check(lm_qmp_builtin_find(name), req->args, &err);
    if (rc == 0) {
        switch (which) {
        case GETFD:
            rc = cmd_getfd(c, req->args, &err);
            break;
        case CLOSEFD:
            rc = cmd_closefd(c, req->args, &err);
            break;
        case ADDFD:
            rc = cmd_add_fd(s, c, req->args, &ret, &err);
            break;
        case REMOVEFD:
            rc = cmd_remove_fd(s, req->args, &err);
            break;
        case QUERY:
            rc = cmd_query_fdsets(s, &ret, &err);
            break;
        }
    }
    if (rc < 0)
        lm_qmp_srv_reply_error(c, req->id, "GenericError", err.msg);
    else
        lm_qmp_srv_reply_return(c, req->id, ret);
    return true;
}
