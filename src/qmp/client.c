/*
 * client.c - a small blocking QMP client, for the CLI and the tests; it
 * talks to livemig's server and to QEMU alike (QEMU interleaves events with
 * replies and may add greeting capabilities such as "oob", which are left
 * off).
 *
 * Threads: no thread of its own.  A client may be used from any thread,
 * one call at a time: c->lock serialises call() and next_event() (a
 * second caller waits for the first one's reply or timeout).  Every wait is
 * bounded by the caller's timeout through poll().
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Replies can be large (QEMU's query-qmp-schema is hundreds of KiB). */
#define CLIENT_MAX_VALUE (16u << 20)
/* Events not yet taken by next_event(); the oldest are dropped past this. */
#define CLIENT_EVQ 1024

struct lm_qmp_client {
    pthread_mutex_t lock;
    /* --- guarded by lock --- */
    int fd;
    lm_qmp_reader rd;
    int64_t next_id;
    char *events[CLIENT_EVQ]; /* ring of JSON texts */
    unsigned ev_head, ev_count;
    lm_error broken; /* sticky: the connection is unusable */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* timeout_ms < 0 waits forever (deadline -1). */
static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

static int left_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t l = deadline - now_ms();
    return l <= 0 ? 0 : l > 0x7fffffff ? 0x7fffffff : (int)l;
}

static int set_broken(lm_qmp_client *c, int code, const char *msg, lm_error *err)
{
    lm_error_set(&c->broken, code, "%s", msg);
    return lm_error_set(err, code, "%s", msg);
}

/* Sends n bytes; pass_fd >= 0 goes with the first of them (SCM_RIGHTS),
 * so the server sees it arrive with this command. */
static int send_all(lm_qmp_client *c, const char *p, size_t n, int pass_fd, int64_t deadline,
                    lm_error *err)
{
    while (n) {
        union {
            char b[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (pass_fd >= 0) {
            memset(&ctl, 0, sizeof ctl);
            mh.msg_control = ctl.b;
            mh.msg_controllen = sizeof ctl.b;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &pass_fd, sizeof pass_fd);
        }
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            pass_fd = -1; /* it went with those bytes */
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
            int r = poll(&pfd, 1, left_ms(deadline));
            if (r == 0)
                return lm_error_set(err, -ETIMEDOUT, "QMP send timed out");
            if (r < 0 && errno != EINTR)
                return lm_error_set(err, -errno, "QMP poll: %s", strerror(errno));
            continue;
        }
        char msg[128];
        snprintf(msg, sizeof msg, "QMP send: %s", strerror(errno));
        return set_broken(c, -errno, msg, err);
    }
    return 0;
}

static void queue_event(lm_qmp_client *c, json_t *v)
{
    char *t = lm_qmp_json_dumps(v, 0);
    if (!t)
        return;
    if (c->ev_count == CLIENT_EVQ) {
        free(c->events[c->ev_head]);
        c->ev_head = (c->ev_head + 1) % CLIENT_EVQ;
        c->ev_count--;
    }
    c->events[(c->ev_head + c->ev_count) % CLIENT_EVQ] = t;
    c->ev_count++;
}

static bool is_event(json_t *v)
{
    return json_is_object(v) && json_is_string(json_object_get(v, "event"));
}

/* Next JSON value from the server, waiting until deadline.  Malformed
 * input is skipped (the framer resynchronises). */
static int read_value(lm_qmp_client *c, int64_t deadline, json_t **out, lm_error *err)
{
    *out = NULL;
    if (c->broken.code)
        return lm_error_set(err, c->broken.code, "%s", c->broken.msg);
    for (;;) {
        lm_error perr = {0};
        int rc = lm_qmp_reader_next(&c->rd, out, &perr);
        if (rc == LM_QMP_READ_VALUE)
            return 0;
        if (rc == LM_QMP_READ_OVERFLOW)
            return set_broken(c, -EPROTO, perr.msg, err);
        if (rc == LM_QMP_READ_BAD)
            continue;

        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pfd, 1, left_ms(deadline));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return lm_error_set(err, -errno, "QMP poll: %s", strerror(errno));
        }
        if (r == 0)
            return lm_error_set(err, -ETIMEDOUT, "QMP: timed out waiting for the server");
        char buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            char msg[128];
            snprintf(msg, sizeof msg, "QMP receive: %s", strerror(errno));
            return set_broken(c, -errno, msg, err);
        }
        if (n == 0)
            return set_broken(c, -ECONNRESET, "QMP connection closed by the server", err);
        lm_error ferr = {0};
        if (lm_qmp_reader_feed(&c->rd, buf, (size_t)n, &ferr) < 0)
            return set_broken(c, ferr.code, ferr.msg, err);
    }
}

static int do_call(lm_qmp_client *c, const char *cmd, json_t *args, int pass_fd, json_t **ret,
                   int64_t deadline, lm_error *err)
{
    json_int_t id = ++c->next_id;
    json_t *req = NULL, *v = NULL;
    char *txt = NULL;
    int rc = 0;

    *ret = NULL;
    req = json_pack("{s:s, s:I}", "execute", cmd, "id", id);
    if (!req || (args && json_object_set(req, "arguments", args) < 0)) {
        rc = lm_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    txt = lm_qmp_json_dumps(req, JSON_COMPACT);
    if (!txt) {
        rc = lm_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    size_t len = strlen(txt);
    txt[len] = '\n'; /* json_dumps's NUL becomes the line end */
    if ((rc = send_all(c, txt, len + 1, pass_fd, deadline, err)) < 0)
        goto out;

    for (;;) {
        lm_error e = {0};
        if ((rc = read_value(c, deadline, &v, &e)) < 0) {
            if (rc == -ETIMEDOUT)
                lm_error_set(err, rc, "no reply to '%s' within the timeout", cmd);
            else
                lm_error_set(err, rc, "%s", e.msg);
            goto out;
        }
        if (is_event(v)) {
            queue_event(c, v);
        } else {
            json_t *rid = json_object_get(v, "id");
            if (json_is_integer(rid) && json_integer_value(rid) == id) {
                json_t *r = json_object_get(v, "return");
                json_t *e = json_object_get(v, "error");
                if (r) {
                    *ret = json_incref(r);
                } else {
                    const char *cls = json_string_value(json_object_get(e, "class"));
                    const char *desc = json_string_value(json_object_get(e, "desc"));
                    rc = lm_error_set(err, -EREMOTEIO, "%s: %s", cls ? cls : "GenericError",
                                      desc ? desc : "(no description)");
                }
                goto out;
            }
            /* A reply to an earlier call that timed out, or an error
             * without id: not ours. */
        }
        json_decref(v);
        v = NULL;
    }
out:
    json_decref(v);
    json_decref(req);
    free(txt);
    return rc;
}

/* ------------------------------------------------------------- public */

int lm_qmp_client_connect(const char *path, int timeout_ms, lm_qmp_client **out, lm_error *err)
{
    lm_qmp_client *c = NULL;
    json_t *v = NULL, *ret = NULL;
    int64_t deadline = deadline_of(timeout_ms);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int rc = 0;

    *out = NULL;
    if (!path)
        return lm_error_set(err, -EINVAL, "QMP connect: no socket path");
    if (strncmp(path, "unix:", 5) == 0)
        path += 5;
    if (!path[0] || strlen(path) >= sizeof sun.sun_path)
        return lm_error_set(err, -EINVAL, "QMP connect: bad socket path '%s'", path);
    memcpy(sun.sun_path, path, strlen(path) + 1);

    c = calloc(1, sizeof *c);
    if (!c)
        return lm_error_set(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&c->lock, NULL);
    lm_qmp_reader_init(&c->rd, CLIENT_MAX_VALUE);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        rc = lm_error_set(err, -errno, "QMP connect: socket: %s", strerror(errno));
        goto out;
    }
    for (;;) {
        if (connect(c->fd, (struct sockaddr *)&sun, sizeof sun) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            /* A unix listener's backlog is full: nothing to poll on, so
             * retry briefly until the deadline. */
            if (left_ms(deadline) == 0) {
                rc = lm_error_set(err, -ETIMEDOUT, "QMP connect to %s: server busy", path);
                goto out;
            }
            nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
            continue;
        }
        if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
            int so = 0;
            socklen_t sl = sizeof so;
            if (poll(&pfd, 1, left_ms(deadline)) <= 0) {
                rc = lm_error_set(err, -ETIMEDOUT, "QMP connect to %s: timed out", path);
                goto out;
            }
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0 || so) {
                rc = lm_error_set(err, -(so ? so : errno), "QMP connect to %s: %s", path,
                                  strerror(so ? so : errno));
                goto out;
            }
            break;
        }
        rc = lm_error_set(err, -errno, "QMP connect to %s: %s", path, strerror(errno));
        goto out;
    }

    /* The greeting; events cannot come before it. */
    if ((rc = read_value(c, deadline, &v, err)) < 0) {
        lm_error_prefix(err, "QMP greeting from %s", path);
        goto out;
    }
    if (!json_is_object(json_object_get(v, "QMP"))) {
        rc = lm_error_set(err, -EPROTO,
                          "QMP connect to %s: the server did not send a QMP "
                          "greeting",
                          path);
        goto out;
    }
    if ((rc = do_call(c, "qmp_capabilities", NULL, -1, &ret, deadline, err)) < 0) {
        lm_error_prefix(err, "QMP negotiation with %s", path);
        goto out;
    }
    *out = c;
    c = NULL; /* now owned by caller */
out:
    json_decref(v);
    json_decref(ret);
    lm_qmp_client_close(c);
    return rc;
}

int lm_qmp_client_call(lm_qmp_client *c, const char *cmd, const char *args_json, char **ret_json,
                       int timeout_ms, lm_error *err)
{
    return lm_qmp_client_call_fd(c, cmd, args_json, -1, ret_json, timeout_ms, err);
}

int lm_qmp_client_call_fd(lm_qmp_client *c, const char *cmd, const char *args_json, int fd,
                          char **ret_json, int timeout_ms, lm_error *err)
{
    json_t *args = NULL, *ret = NULL;
    int rc = 0;

    if (ret_json)
        *ret_json = NULL;
    if (!c || !cmd)
        return lm_error_set(err, -EINVAL, "QMP call: missing client or command");
    if (args_json) {
        json_error_t je;
        args = lm_qmp_json_loads(args_json, 0, &je);
        if (!json_is_object(args)) {
            json_decref(args);
            return lm_error_set(err, -EINVAL, "QMP %s: arguments must be a JSON object%s%s", cmd,
                                args ? "" : ": ", args ? "" : je.text);
        }
    }
    pthread_mutex_lock(&c->lock);
    rc = do_call(c, cmd, args, fd, &ret, deadline_of(timeout_ms), err);
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && ret_json) {
        *ret_json = lm_qmp_json_dumps(ret, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!*ret_json)
            rc = lm_error_set(err, -ENOMEM, "out of memory");
    }
    json_decref(args);
    json_decref(ret);
    return rc;
}

int lm_qmp_client_next_event(lm_qmp_client *c, int timeout_ms, char **event_json, lm_error *err)
{
    int64_t deadline = deadline_of(timeout_ms);
    int rc = 0;

    *event_json = NULL;
    if (!c)
        return lm_error_set(err, -EINVAL, "QMP next_event: no client");
    pthread_mutex_lock(&c->lock);
    while (!c->ev_count) {
        json_t *v = NULL;
        rc = read_value(c, deadline, &v, err);
        if (rc < 0)
            goto out;
        if (is_event(v))
            queue_event(c, v);
        /* Anything else is a late reply nobody waits for. */
        json_decref(v);
    }
    *event_json = c->events[c->ev_head];
    c->events[c->ev_head] = NULL;
    c->ev_head = (c->ev_head + 1) % CLIENT_EVQ;
    c->ev_count--;
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void lm_qmp_client_close(lm_qmp_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    lm_qmp_reader_fini(&c->rd);
    for (unsigned i = 0; i < c->ev_count; i++)
        free(c->events[(c->ev_head + i) % CLIENT_EVQ]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
