/*
 * test_qmp.c - the QMP server, its built-in commands and the QMP client,
 * over real unix sockets in a temporary directory.  Most tests talk raw
 * JSON lines so that they check the wire format, not our own client.
 * Every wait is for something that must come, bounded by WAIT_MS, which is
 * only reached when it never comes: no assertion is on how long an answer
 * took, only on whether it came.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "livemig.h"
#include "qmp/qmp_internal.h"

#define WAIT_MS 30000
/* Bound for a timeout under test to have fired: far above any scheduling
 * delay, far below a millisecond timeout taken as seconds, or ignored. */
#define LATE_MS 20000

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------- fixture */

typedef struct fx {
    char dir[64];
    char path[128];
    char uri[140];
    lm_mig *m;
    lm_qmp_server *s;
    int stops, starts;
} fx;

static void host_stop(void *o)
{
    ((fx *)o)->stops++;
}

static void host_start(void *o)
{
    ((fx *)o)->starts++;
}

static const lm_host_ops ops = {.stop = host_stop, .start = host_start};

static fx *fx_new(lm_runstate initial)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/lmqmpXXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/qmp.sock", f->dir);
    snprintf(f->uri, sizeof f->uri, "unix:%s", f->path);
    lm_error err = {0};
    assert_int_equal(lm_mig_new(&ops, f, initial, &f->m, &err), 0);
    int rc = lm_qmp_server_start(f->m, f->uri, &f->s, &err);
    if (rc)
        fail_msg("server start: %s", err.msg);
    return f;
}

static void fx_free(fx *f)
{
    lm_qmp_server_stop(f->s);
    lm_mig_free(f->m);
    struct stat st;
    /* stop removes the socket file */
    assert_int_equal(stat(f->path, &st), -1);
    rmdir(f->dir);
    free(f);
}

static int setup_running(void **state)
{
    *state = fx_new(LM_RUN_RUNNING);
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    return 0;
}

/* ------------------------------------------------------ raw connection */

typedef struct conn {
    int fd;
    char buf[1 << 16];
    size_t len;
} conn;

static conn *raw_connect(const char *path)
{
    conn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sun, sizeof sun), 0);
    return c;
}

static void raw_close(conn *c)
{
    close(c->fd);
    free(c);
}

static void raw_send(conn *c, const char *text)
{
    size_t n = strlen(text);
    while (n) {
        ssize_t w = send(c->fd, text, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        text += w;
        n -= (size_t)w;
    }
}

/* Next "\r\n"-terminated line as JSON; NULL on timeout or EOF. */
static json_t *raw_recv_ms(conn *c, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t linelen = (size_t)(nl - c->buf) + 1;
            assert_true(linelen >= 2 && nl[-1] == '\r');
            json_error_t je;
            json_t *v = json_loadb(c->buf, linelen - 2, 0, &je);
            if (!v)
                fail_msg("server sent invalid JSON: %s: %.*s", je.text, (int)linelen, c->buf);
            memmove(c->buf, c->buf + linelen, c->len - linelen);
            c->len -= linelen;
            return v;
        }
        int64_t left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)left) <= 0)
            return NULL;
        assert_true(c->len < sizeof c->buf);
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n <= 0)
            return NULL;
        c->len += (size_t)n;
    }
}

static json_t *raw_recv(conn *c)
{
    json_t *v = raw_recv_ms(c, WAIT_MS);
    assert_non_null(v);
    return v;
}

/* Next reply, skipping (and counting) events. */
static json_t *raw_reply(conn *c)
{
    for (;;) {
        json_t *v = raw_recv(c);
        if (!json_object_get(v, "event"))
            return v;
        json_decref(v);
    }
}

static json_t *raw_cmd(conn *c, const char *text)
{
    raw_send(c, text);
    return raw_reply(c);
}

static void expect_error(json_t *r, const char *cls, const char *desc_prefix)
{
    json_t *e = json_object_get(r, "error");
    if (!e) {
        char *t = json_dumps(r, 0);
        fail_msg("expected an error, got %s", t);
    }
    assert_string_equal(json_string_value(json_object_get(e, "class")), cls);
    const char *desc = json_string_value(json_object_get(e, "desc"));
    assert_non_null(desc);
    if (strncmp(desc, desc_prefix, strlen(desc_prefix)) != 0)
        fail_msg("desc '%s' does not start with '%s'", desc, desc_prefix);
}

static json_t *expect_return(json_t *r)
{
    json_t *ret = json_object_get(r, "return");
    if (!ret) {
        char *t = json_dumps(r, 0);
        fail_msg("expected a return, got %s", t);
    }
    return ret;
}

/* Connects, checks the greeting, negotiates. */
static conn *raw_ready(const char *path)
{
    conn *c = raw_connect(path);
    json_t *g = raw_recv(c);
    assert_non_null(json_object_get(g, "QMP"));
    json_decref(g);
    json_t *r = raw_cmd(c, "{\"execute\": \"qmp_capabilities\"}\n");
    assert_int_equal(json_object_size(expect_return(r)), 0);
    json_decref(r);
    return c;
}

/* The connection still answers a plain command, with the right id. */
static void still_works(conn *c, int id)
{
    char req[128];
    snprintf(req, sizeof req, "{\"execute\": \"query-status\", \"id\": %d}\n", id);
    json_t *r = raw_cmd(c, req);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), id);
    assert_string_equal(json_string_value(json_object_get(expect_return(r), "status")), "running");
    json_decref(r);
}

/* --------------------------------------------------------------- tests */

static void test_greeting(void **state)
{
    fx *f = *state;
    conn *c = raw_connect(f->path);
    /* Byte for byte what QEMU sends, with our version and package. */
    char want[256];
    snprintf(want, sizeof want,
             "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": %d, \"minor\": %d, \"major\": "
             "%d}, \"package\": \"livemig %d.%d.%d\"}, \"capabilities\": []}}\r\n",
             LM_VERSION_MICRO, LM_VERSION_MINOR, LM_VERSION_MAJOR, LM_VERSION_MAJOR,
             LM_VERSION_MINOR, LM_VERSION_MICRO);
    int64_t deadline = now_ms() + WAIT_MS;
    while (c->len < strlen(want) && now_ms() < deadline) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) > 0) {
            ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            assert_true(n > 0);
            c->len += (size_t)n;
        }
    }
    assert_int_equal(c->len, strlen(want));
    assert_memory_equal(c->buf, want, strlen(want));
    raw_close(c);
}

static void test_negotiation(void **state)
{
    fx *f = *state;
    conn *c = raw_connect(f->path);
    json_decref(raw_recv(c));
    json_t *r = raw_cmd(c, "{\"execute\": \"query-status\", \"id\": \"x1\"}");
    expect_error(r, "CommandNotFound",
                 "Expecting capabilities negotiation with 'qmp_capabilities'");
    assert_string_equal(json_string_value(json_object_get(r, "id")), "x1");
    json_decref(r);

    /* oob is not offered */
    r = raw_cmd(c, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}");
    expect_error(r, "GenericError", "Capability 'oob' not available");
    json_decref(r);

    r = raw_cmd(c, "{\"execute\": \"qmp_capabilities\", \"id\": {\"any\": [1, 2]}}");
    expect_return(r);
    /* the id comes back as it was sent, whatever its type */
    json_t *want = json_pack("{s:[i,i]}", "any", 1, 2);
    assert_true(json_equal(json_object_get(r, "id"), want));
    json_decref(want);
    json_decref(r);

    r = raw_cmd(c, "{\"execute\": \"qmp_capabilities\"}");
    expect_error(r, "CommandNotFound", "Capabilities negotiation is already complete");
    json_decref(r);
    still_works(c, 1);
    raw_close(c);
}

static void test_malformed(void **state)
{
    fx *f = *state;
    conn *c = raw_ready(f->path);
    json_t *r;

    /* A truncated object, then the next request on its own line. */
    raw_send(c, "{\"execute\": \"query-status\"\n");
    raw_send(c, "{\"execute\": \"query-status\", \"id\": 1}\n");
    r = raw_reply(c);
    expect_error(r, "GenericError", "JSON parse error");
    assert_null(json_object_get(r, "id"));
    json_decref(r);
    r = raw_reply(c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    expect_return(r);
    json_decref(r);

    /* A string cut by a newline. */
    raw_send(c, "{\"execute\": \"query-sta\n");
    r = raw_reply(c);
    expect_error(r, "GenericError", "JSON parse error");
    json_decref(r);
    still_works(c, 2);

    /* A malformed value gets exactly one error, whatever follows it: the
     * next reply (to a request without id) is that request's. */
    static const char *const one_error[] = {
        "{\"execute\" 1}\n",
        "{\"execute\": query-status}\n",
        "{\"execute\": \"query-status\", \"arguments\": {\"a\": [1 2], \"b\": \"}]\"}}\n",
        "{\"execute\": tru}",
        "[1, 2 3]",
        "{\"execute\":\n \"query-status\"\n \"id\": 1\n}\n", /* over several lines */
    };
    for (size_t k = 0; k < sizeof one_error / sizeof one_error[0]; k++) {
        raw_send(c, one_error[k]);
        raw_send(c, "{\"execute\": \"query-status\"}\n");
        r = raw_reply(c);
        expect_error(r, "GenericError", "JSON parse error");
        json_decref(r);
        r = raw_reply(c);
        if (!json_object_get(r, "return"))
            fail_msg("after %s: a second reply %s instead of query-status's", one_error[k],
                     json_dumps(r, 0));
        json_decref(r);
    }

    /* Garbage bytes, including 0xff (QEMU's explicit resync byte). */
    raw_send(c, "@#!garbage \xff\x01 nonsense\n");
    r = raw_reply(c);
    expect_error(r, "GenericError", "JSON parse error");
    json_decref(r);
    /* Garbage may produce more than one error; drain until our reply. */
    raw_send(c, "{\"execute\": \"query-status\", \"id\": 3}\n");
    for (;;) {
        r = raw_reply(c);
        if (json_object_get(r, "return"))
            break;
        expect_error(r, "GenericError", "JSON parse error");
        json_decref(r);
    }
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
    json_decref(r);

    /* Valid JSON of the wrong shape. */
    r = raw_cmd(c, "[1, 2, 3]\n");
    expect_error(r, "GenericError", "QMP input must be a JSON object");
    json_decref(r);
    r = raw_cmd(c, "\"just a string\"\n");
    expect_error(r, "GenericError", "QMP input must be a JSON object");
    json_decref(r);
    r = raw_cmd(c, "{\"id\": 5}");
    expect_error(r, "GenericError", "QMP input lacks member 'execute'");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 5);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": 42, \"id\": 6}");
    expect_error(r, "GenericError", "QMP input member 'execute' must be a string");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"query-status\", \"arguments\": [1]}");
    expect_error(r, "GenericError", "QMP input member 'arguments' must be an object");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"query-status\", \"foo\": 1}");
    expect_error(r, "GenericError", "QMP input member 'foo' is unexpected");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"query-status\", \"execute\": \"stop\"}");
    expect_error(r, "GenericError", "JSON parse error"); /* duplicate key, like QEMU */
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"no-such-command\", \"id\": 7}");
    expect_error(r, "CommandNotFound", "The command no-such-command has not been found");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 7);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"query-status\", \"arguments\": {\"verbose\": true}}");
    expect_error(r, "GenericError", "Parameter 'verbose' is unexpected");
    json_decref(r);
    still_works(c, 8);

    /* One request delivered a byte at a time, and two in one write. */
    const char *req = "{\"execute\": \"query-status\", \"id\": 9}";
    for (const char *p = req; *p; p++) {
        char one[2] = {*p, 0};
        raw_send(c, one);
    }
    r = raw_reply(c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 9);
    json_decref(r);
    raw_send(c, "{\"execute\":\"query-status\",\"id\":10}{\"execute\":\"query-status\",\"id\":11}");
    r = raw_reply(c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 10);
    json_decref(r);
    r = raw_reply(c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 11);
    json_decref(r);
    raw_close(c);
}

static bool is_migration_event(json_t *v, const char *status)
{
    json_t *ts = json_object_get(v, "timestamp");
    return json_is_string(json_object_get(v, "event")) &&
           strcmp(json_string_value(json_object_get(v, "event")), "MIGRATION") == 0 &&
           strcmp(json_string_value(json_object_get(json_object_get(v, "data"), "status")) ?: "",
                  status) == 0 &&
           json_is_integer(json_object_get(ts, "seconds")) &&
           json_is_integer(json_object_get(ts, "microseconds"));
}

static void test_events_two_clients(void **state)
{
    fx *f = fx_new(LM_RUN_INMIGRATE);
    conn *a = raw_ready(f->path);
    conn *b = raw_ready(f->path);
    conn *quiet = raw_connect(f->path); /* never negotiates: gets no events */
    json_decref(raw_recv(quiet));

    json_t *r = raw_cmd(a, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": "
                           "{\"capabilities\": [{\"capability\": \"events\", \"state\": true}]}}");
    expect_return(r);
    json_decref(r);

    raw_send(a, "{\"execute\": \"migrate-incoming\", \"arguments\": {\"uri\": "
                "\"tcp:127.0.0.1:0\"}, \"id\": 1}");
    /* The event the command caused comes before its reply, as in QEMU. */
    json_t *ev = raw_recv(a);
    assert_true(is_migration_event(ev, "setup"));
    json_decref(ev);
    r = raw_recv(a);
    expect_return(r);
    json_decref(r);
    ev = raw_recv(b);
    assert_true(is_migration_event(ev, "setup"));
    json_decref(ev);
    assert_null(raw_recv_ms(quiet, 200));

    /* The destination's real listening address. */
    r = raw_cmd(b, "{\"execute\": \"query-migrate\"}");
    json_t *ret = expect_return(r);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "setup");
    json_t *sa = json_array_get(json_object_get(ret, "socket-address"), 0);
    assert_string_equal(json_string_value(json_object_get(sa, "type")), "inet");
    assert_string_equal(json_string_value(json_object_get(sa, "host")), "127.0.0.1");
    const char *port = json_string_value(json_object_get(sa, "port"));
    assert_non_null(port);
    assert_true(atoi(port) > 0);
    assert_null(json_object_get(ret, "ram")); /* a destination has no RAM stats */
    json_decref(r);

    /* Cancel: both clients see cancelling and cancelled (which may come
     * before or after the reply to migrate_cancel).  Their order is the
     * core's business (lm_emit is called after the state lock is
     * dropped), so it is not checked here. */
    raw_send(a, "{\"execute\": \"migrate_cancel\", \"id\": 2}");
    conn *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        bool cancelling = false, cancelled = false, replied = i == 1;
        while (!cancelling || !cancelled || !replied) {
            json_t *v = raw_recv(both[i]);
            if (json_object_get(v, "event")) {
                cancelling |= is_migration_event(v, "cancelling");
                cancelled |= is_migration_event(v, "cancelled");
            } else {
                expect_return(v);
                assert_int_equal(json_integer_value(json_object_get(v, "id")), 2);
                replied = true;
            }
            json_decref(v);
        }
    }
    /* The quiet client still negotiates normally: its first reply is the
     * answer, nothing was queued for it. */
    r = raw_cmd(quiet, "{\"execute\": \"qmp_capabilities\", \"id\": 1}");
    expect_return(r);
    json_decref(r);

    raw_close(a);
    raw_close(b);
    raw_close(quiet);
    fx_free(f);
}

static void test_set_parameters_errors(void **state)
{
    fx *f = *state;
    conn *c = raw_ready(f->path);
    static const struct {
        const char *args, *desc;
    } cases[] = {
        {"{\"max-bandwidth\": \"fast\"}", "Parameter 'max-bandwidth' expects uint64"},
        {"{\"max-bandwidth\": -1}", "Parameter 'max-bandwidth' expects uint64"},
        {"{\"downtime-limit\": 1.5}", "Parameter 'downtime-limit' expects uint64"},
        {"{\"multifd-channels\": 256}", "Parameter 'multifd-channels' expects uint8_t"},
        {"{\"cpu-throttle-tailslow\": 1}",
         "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean"},
        {"{\"multifd-compression\": 3}",
         "Invalid parameter type for 'multifd-compression', expected: string"},
        {"{\"multifd-compression\": \"snappy\"}",
         "Parameter 'multifd-compression' does not accept value 'snappy'"},
        {"{\"no-such-parameter\": 1}", "Parameter 'no-such-parameter' is unexpected"},
        {"{\"max-bandwidth\": 5, \"bogus\": 1}", "Parameter 'bogus' is unexpected"},
        {"{\"tls-creds\": 5}", "Invalid parameter type for 'tls-creds', expected: string"},
        /* range checks are the core's */
        {"{\"downtime-limit\": 3000000}", "Parameter 'downtime-limit' expects"},
        {"{\"max-bandwidth\": 5, \"cpu-throttle-initial\": 0}",
         "Parameter 'cpu-throttle-initial' expects"},
        /* parameters the engine does not act on: only their default */
        {"{\"max-bandwidth\": 5, \"announce-step\": 7}",
         "Parameter 'announce-step' is not supported (only its default, 100, is accepted)"},
        {"{\"max-bandwidth\": 5, \"x-vcpu-dirty-limit-period\": 0}",
         "Parameter 'x-vcpu-dirty-limit-period' expects"},
        {"{\"max-bandwidth\": 5, \"vcpu-dirty-limit\": 0}", "Parameter 'vcpu-dirty-limit' expects"},
        {"{\"announce-rounds\": 7}",
         "Parameter 'announce-rounds' is not supported (only its default, 5, is accepted)"},
        {"{\"xbzrle-cache-size\": 1048577}",
         "Parameter 'xbzrle-cache-size' expects a power of two no less than the target page "
         "size"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char req[512];
        snprintf(req, sizeof req, "{\"execute\": \"migrate-set-parameters\", \"arguments\": %s}",
                 cases[i].args);
        json_t *r = raw_cmd(c, req);
        expect_error(r, "GenericError", cases[i].desc);
        json_decref(r);
    }
    /* All or nothing: max-bandwidth of the failed requests was not set. */
    json_t *r = raw_cmd(c, "{\"execute\": \"query-migrate-parameters\"}");
    assert_int_equal(json_integer_value(json_object_get(expect_return(r), "max-bandwidth")),
                     134217728);
    json_decref(r);
    /* Neutral values of parameters we do not implement are accepted. */
    r = raw_cmd(c, "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
                   "{\"tls-creds\": \"\", \"tls-hostname\": \"\", \"mode\": \"normal\"}}");
    expect_return(r);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
                   "{\"cpu-throttle-tailslow\": false, \"cpu-throttle-initial\": 20, "
                   "\"announce-rounds\": 5, \"xbzrle-cache-size\": 67108864}}");
    expect_return(r);
    json_decref(r);
    raw_close(c);
}

static void test_parameters_roundtrip(void **state)
{
    fx *f = *state;
    conn *c = raw_ready(f->path);
    json_t *r = raw_cmd(c, "{\"execute\": \"query-migrate-parameters\"}");
    json_t *p = expect_return(r);
    for (unsigned i = 0; i < LM_PARAM__MAX; i++)
        assert_non_null(json_object_get(p, lm_param_name((lm_param)i)));
    /* and the QEMU parameters accepted only at their "off" value */
    static const char *const off[] = {"mode", "block-incremental"};
    for (unsigned i = 0; i < sizeof off / sizeof off[0]; i++)
        assert_non_null(json_object_get(p, off[i]));
    assert_int_equal(json_object_size(p), LM_PARAM__MAX + sizeof off / sizeof off[0]);
    assert_string_equal(json_string_value(json_object_get(p, "tls-creds")), "");
    assert_string_equal(json_string_value(json_object_get(p, "mode")), "normal");
    /* QEMU's defaults (digest §9.2) */
    assert_int_equal(json_integer_value(json_object_get(p, "max-bandwidth")), 134217728);
    assert_int_equal(json_integer_value(json_object_get(p, "downtime-limit")), 300);
    assert_int_equal(json_integer_value(json_object_get(p, "multifd-channels")), 2);
    assert_int_equal(json_integer_value(json_object_get(p, "xbzrle-cache-size")), 64 << 20);
    assert_string_equal(json_string_value(json_object_get(p, "multifd-compression")), "none");
    assert_string_equal(json_string_value(json_object_get(p, "zero-page-detection")), "multifd");
    assert_true(json_is_false(json_object_get(p, "cpu-throttle-tailslow")));
    json_decref(r);

    r = raw_cmd(c, "{\"execute\": \"migrate-set-parameters\", \"arguments\": {"
                   "\"max-bandwidth\": 1000000, \"downtime-limit\": 250, "
                   "\"multifd-channels\": 4, \"multifd-compression\": \"zstd\", "
                   "\"zero-page-detection\": \"legacy\", \"max-postcopy-bandwidth\": 7}}");
    expect_return(r);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"query-migrate-parameters\"}");
    p = expect_return(r);
    assert_int_equal(json_integer_value(json_object_get(p, "max-bandwidth")), 1000000);
    assert_int_equal(json_integer_value(json_object_get(p, "downtime-limit")), 250);
    assert_int_equal(json_integer_value(json_object_get(p, "multifd-channels")), 4);
    assert_string_equal(json_string_value(json_object_get(p, "multifd-compression")), "zstd");
    assert_string_equal(json_string_value(json_object_get(p, "zero-page-detection")), "legacy");
    assert_int_equal(json_integer_value(json_object_get(p, "max-postcopy-bandwidth")), 7);
    assert_int_equal(json_integer_value(json_object_get(p, "cpu-throttle-initial")), 20);
    json_decref(r);
    lm_params lp;
    lm_mig_get_params(f->m, &lp);
    assert_int_equal(lp.max_bandwidth, 1000000);
    assert_int_equal(lp.zero_page_detection, LM_ZPD_LEGACY);

    /* The old spellings. */
    r = raw_cmd(c, "{\"execute\": \"migrate_set_speed\", \"arguments\": {\"value\": 2000}}");
    expect_return(r);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate_set_downtime\", \"arguments\": {\"value\": 0.5}}");
    expect_return(r);
    json_decref(r);
    lm_mig_get_params(f->m, &lp);
    assert_int_equal(lp.max_bandwidth, 2000);
    assert_int_equal(lp.downtime_limit, 500);
    r = raw_cmd(c, "{\"execute\": \"migrate_set_downtime\", \"arguments\": {\"value\": 5000}}");
    expect_error(r, "GenericError", "Parameter 'downtime_limit' expects");
    json_decref(r);
    raw_close(c);
}

static void test_capabilities(void **state)
{
    fx *f = *state;
    /* QEMU's MigrationCapability names, in QEMU's order. */
    static const char *const names[] = {
        "xbzrle",
        "rdma-pin-all",
        "auto-converge",
        "zero-blocks",
        "events",
        "postcopy-ram",
        "x-colo",
        "release-ram",
        "return-path",
        "pause-before-switchover",
        "multifd",
        "dirty-bitmaps",
        "postcopy-blocktime",
        "late-block-activate",
        "x-ignore-shared",
        "validate-uuid",
        "background-snapshot",
        "zero-copy-send",
        "postcopy-preempt",
        "switchover-ack",
        "dirty-limit",
        "mapped-ram",
        "x-lazy-restore", /* ours (0.3) */
    };
    conn *c = raw_ready(f->path);
    json_t *r = raw_cmd(c, "{\"execute\": \"query-migrate-capabilities\"}");
    json_t *list = expect_return(r);
    assert_int_equal(json_array_size(list), sizeof names / sizeof names[0]);
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *e = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(e, "capability")), names[i]);
        assert_true(json_is_false(json_object_get(e, "state")));
        assert_int_equal(json_object_size(e), 2);
    }
    json_decref(r);

    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                   "[{\"capability\": \"events\", \"state\": true}, "
                   "{\"capability\": \"pause-before-switchover\", \"state\": true}]}}");
    expect_return(r);
    json_decref(r);
    /* all or nothing: events would be switched off, but x-colo is refused */
    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                   "[{\"capability\": \"events\", \"state\": false}, "
                   "{\"capability\": \"x-colo\", \"state\": true}]}}");
    expect_error(r, "GenericError", "capability 'x-colo' is not supported yet");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                   "[{\"capability\": \"events\", \"state\": false}, "
                   "{\"capability\": \"warp-drive\", \"state\": true}]}}");
    expect_error(r, "GenericError", "Parameter 'capability' does not accept value 'warp-drive'");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                   "[{\"capability\": \"events\"}]}}");
    expect_error(r, "GenericError", "Parameter 'capabilities[0].state' is missing");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                   "[{\"capability\": \"events\", \"state\": \"on\"}]}}");
    expect_error(r, "GenericError", "Invalid parameter type for 'capabilities[0].state'");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {}}");
    expect_error(r, "GenericError", "Parameter 'capabilities' is missing");
    json_decref(r);

    uint64_t caps = lm_mig_get_capabilities(f->m);
    assert_int_equal(caps, (1ull << LM_CAP_EVENTS) | (1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER));
    r = raw_cmd(c, "{\"execute\": \"query-migrate-capabilities\"}");
    list = expect_return(r);
    assert_true(json_is_true(json_object_get(json_array_get(list, LM_CAP_EVENTS), "state")));
    assert_true(json_is_false(json_object_get(json_array_get(list, LM_CAP_XBZRLE), "state")));
    json_decref(r);
    raw_close(c);
}

static void test_run_state(void **state)
{
    fx *f = *state;
    conn *c = raw_ready(f->path);
    json_t *r = raw_cmd(c, "{\"execute\": \"query-status\"}");
    json_t *ret = expect_return(r);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "running");
    assert_true(json_is_true(json_object_get(ret, "running")));
    assert_true(json_is_false(json_object_get(ret, "singlestep")));
    json_decref(r);

    /* STOP is sent before stop's reply. */
    raw_send(c, "{\"execute\": \"stop\", \"id\": 1}");
    json_t *ev = raw_recv(c);
    assert_string_equal(json_string_value(json_object_get(ev, "event")), "STOP");
    assert_null(json_object_get(ev, "data"));
    assert_non_null(json_object_get(ev, "timestamp"));
    json_decref(ev);
    r = raw_recv(c);
    expect_return(r);
    json_decref(r);
    assert_int_equal(f->stops, 1);
    r = raw_cmd(c, "{\"execute\": \"query-status\"}");
    ret = expect_return(r);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "paused");
    assert_true(json_is_false(json_object_get(ret, "running")));
    json_decref(r);

    raw_send(c, "{\"execute\": \"cont\"}");
    ev = raw_recv(c);
    assert_string_equal(json_string_value(json_object_get(ev, "event")), "RESUME");
    json_decref(ev);
    r = raw_recv(c);
    expect_return(r);
    json_decref(r);
    assert_int_equal(f->starts, 1);

    /* query-migrate before any migration: just the status. */
    r = raw_cmd(c, "{\"execute\": \"query-migrate\"}");
    ret = expect_return(r);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "none");
    assert_int_equal(json_object_size(ret), 1);
    json_decref(r);

    /* argument checking of the migration commands */
    r = raw_cmd(c, "{\"execute\": \"migrate\"}");
    expect_error(r, "GenericError", "need either 'uri' or 'channels' argument");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate\", \"arguments\": {\"uri\": 5}}");
    expect_error(r, "GenericError", "Invalid parameter type for 'uri', expected: string");
    json_decref(r);
    r = raw_cmd(c,
                "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"tcp:x:1\", \"speed\": 1}}");
    expect_error(r, "GenericError", "Parameter 'speed' is unexpected");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate\", \"arguments\": {\"channels\": []}}");
    expect_error(r, "GenericError", "migrate: 'channels' is not supported yet");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"bogus:1\"}}");
    expect_error(r, "GenericError", "");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate-continue\", \"arguments\": {\"state\": \"zzz\"}}");
    expect_error(r, "GenericError", "Parameter 'state' does not accept value 'zzz'");
    json_decref(r);
    r = raw_cmd(
        c, "{\"execute\": \"migrate-continue\", \"arguments\": {\"state\": \"pre-switchover\"}}");
    expect_error(r, "GenericError", "Migration not in expected state");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"migrate_cancel\"}");
    expect_return(r); /* nothing to cancel: a no-op */
    json_decref(r);
    raw_close(c);
}

/* ---------------------------------------------------- host commands */

static int echo_cmd(void *opaque, const char *args, char **ret, lm_error *err)
{
    (*(int *)opaque)++;
    *ret = strdup(args);
    return 0;
}

static int fail_cmd(void *opaque, const char *args, char **ret, lm_error *err)
{
    return lm_error_set(err, -EIO, "the host said no");
}

static int junk_cmd(void *opaque, const char *args, char **ret, lm_error *err)
{
    *ret = strdup("{not json");
    return 0;
}

static void test_host_commands(void **state)
{
    fx *f = *state;
    lm_error err = {0};
    int calls = 0;
    assert_int_equal(lm_qmp_server_register(f->s, "x-echo", echo_cmd, &calls, &err), 0);
    assert_int_equal(lm_qmp_server_register(f->s, "x-fail", fail_cmd, NULL, &err), 0);
    assert_int_equal(lm_qmp_server_register(f->s, "x-junk", junk_cmd, NULL, &err), 0);
    assert_int_equal(lm_qmp_server_register(f->s, "x-echo", echo_cmd, NULL, &err), -EEXIST);
    lm_error_clear(&err);
    assert_int_equal(lm_qmp_server_register(f->s, "migrate", echo_cmd, NULL, &err), -EEXIST);
    lm_error_clear(&err);
    assert_true(lm_qmp_server_register(f->s, "bad name", echo_cmd, NULL, &err) < 0);

    conn *c = raw_ready(f->path);
    json_t *r = raw_cmd(c, "{\"execute\": \"x-echo\", \"arguments\": {\"a\": [1, \"b\"]}, "
                           "\"id\": 3}");
    json_t *want = json_pack("{s:[i,s]}", "a", 1, "b");
    assert_true(json_equal(expect_return(r), want));
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
    json_decref(want);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"x-echo\"}");
    assert_int_equal(json_object_size(expect_return(r)), 0); /* absent arguments are {} */
    json_decref(r);
    assert_int_equal(calls, 2);
    r = raw_cmd(c, "{\"execute\": \"x-fail\"}");
    expect_error(r, "GenericError", "the host said no");
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"x-junk\"}");
    expect_error(r, "GenericError", "command 'x-junk' returned invalid JSON");
    json_decref(r);

    r = raw_cmd(c, "{\"execute\": \"query-commands\"}");
    json_t *list = expect_return(r);
    bool echo = false, migrate = false, quit = false;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *n = json_string_value(json_object_get(json_array_get(list, i), "name"));
        echo |= !strcmp(n, "x-echo");
        migrate |= !strcmp(n, "migrate");
        quit |= !strcmp(n, "quit");
    }
    assert_true(echo && migrate);
    assert_false(quit); /* quit is the host's to register */
    json_decref(r);
    raw_close(c);
}

/* Host commands with declared arguments (issue 12, defect 3): checked by
 * the server as the built-ins are, before the host's function runs. */
static void test_host_command_args(void **state)
{
    fx *f = *state;
    lm_error err = {0};
    int calls = 0, none_calls = 0;
    static const lm_qmp_arg_spec spec[] = {
        {"name", LM_QMP_ARG_STR, false},
        {"count", LM_QMP_ARG_INT, true},
        {"list", LM_QMP_ARG_ARRAY, true},
        {NULL},
    };
    static const lm_qmp_arg_spec none[] = {{NULL}};
    static const lm_qmp_arg_spec dup[] = {{"a", LM_QMP_ARG_STR}, {"a", LM_QMP_ARG_INT}, {NULL}};
    static const lm_qmp_arg_spec badtype[] = {{"a", (lm_qmp_arg_type)99}, {NULL}};
    assert_int_equal(lm_qmp_server_register_args(f->s, "x-typed", spec, echo_cmd, &calls, &err), 0);
    assert_int_equal(lm_qmp_server_register_args(f->s, "x-none", none, echo_cmd, &none_calls, &err),
                     0);
    assert_int_equal(lm_qmp_server_register_args(f->s, "x-dup", dup, echo_cmd, NULL, &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "argument 'a' declared twice"));
    lm_error_clear(&err);
    assert_int_equal(lm_qmp_server_register_args(f->s, "x-bt", badtype, echo_cmd, NULL, &err),
                     -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_qmp_server_register_args(f->s, "x-typed", none, echo_cmd, NULL, &err),
                     -EEXIST);

    conn *c = raw_ready(f->path);
    static const struct {
        const char *req, *want;
    } bad[] = {
        {"{\"execute\": \"x-typed\"}", "Parameter 'name' is missing"},
        {"{\"execute\": \"x-typed\", \"arguments\": {\"name\": 5}}",
         "Invalid parameter type for 'name', expected: string"},
        {"{\"execute\": \"x-typed\", \"arguments\": {\"name\": \"a\", \"count\": \"2\"}}",
         "Invalid parameter type for 'count', expected: integer"},
        {"{\"execute\": \"x-typed\", \"arguments\": {\"name\": \"a\", \"bogus\": [1, 2]}}",
         "Parameter 'bogus' is unexpected"},
        {"{\"execute\": \"x-none\", \"arguments\": {\"bogus\": [1, 2]}}",
         "Parameter 'bogus' is unexpected"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *r = raw_cmd(c, bad[i].req);
        expect_error(r, "GenericError", bad[i].want);
        json_decref(r);
    }
    assert_int_equal(calls, 0); /* never ran on a refused request */
    assert_int_equal(none_calls, 0);
    json_t *r = raw_cmd(c, "{\"execute\": \"x-typed\", \"arguments\": {\"name\": \"a\", "
                           "\"count\": 2, \"list\": []}}");
    expect_return(r);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"x-none\"}");
    expect_return(r);
    json_decref(r);
    r = raw_cmd(c, "{\"execute\": \"x-none\", \"arguments\": {}}");
    expect_return(r);
    json_decref(r);
    assert_int_equal(calls, 1);
    assert_int_equal(none_calls, 2);

    /* query-qmp-schema describes them. */
    r = raw_cmd(c, "{\"execute\": \"query-qmp-schema\"}");
    json_t *list = expect_return(r);
    const char *typed_at = NULL, *none_at = NULL;
    json_t *typed_obj = NULL;
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *e = json_array_get(list, i);
        const char *n = json_string_value(json_object_get(e, "name"));
        if (!strcmp(n, "x-typed"))
            typed_at = json_string_value(json_object_get(e, "arg-type"));
        if (!strcmp(n, "x-none"))
            none_at = json_string_value(json_object_get(e, "arg-type"));
        if (!strcmp(n, "q_obj_x-typed-arg"))
            typed_obj = e;
    }
    assert_non_null(typed_at);
    assert_string_equal(typed_at, "q_obj_x-typed-arg");
    assert_non_null(none_at);
    assert_string_equal(none_at, "q_empty");
    assert_non_null(typed_obj);
    json_t *members = json_object_get(typed_obj, "members");
    assert_int_equal(json_array_size(members), 3);
    json_t *m1 = json_array_get(members, 1);
    assert_string_equal(json_string_value(json_object_get(m1, "name")), "count");
    assert_string_equal(json_string_value(json_object_get(m1, "type")), "int");
    assert_non_null(json_object_get(m1, "default")); /* optional */
    json_decref(r);
    raw_close(c);
}

/* ------------------------------------------------------------- client */

static void test_client(void **state)
{
    fx *f = *state;
    lm_error err = {0};
    lm_qmp_client *qc = NULL;
    char *ret = NULL, *ev = NULL;

    assert_int_equal(lm_qmp_client_connect(f->uri, WAIT_MS, &qc, &err), 0);
    assert_int_equal(lm_qmp_client_call(qc, "query-status", NULL, &ret, WAIT_MS, &err), 0);
    json_t *v = json_loads(ret, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(v, "status")), "running");
    json_decref(v);
    free(ret);

    assert_int_equal(lm_qmp_client_call(qc, "no-such", NULL, &ret, WAIT_MS, &err), -EREMOTEIO);
    assert_null(ret);
    assert_string_equal(err.msg, "CommandNotFound: The command no-such has not been found");
    lm_error_clear(&err);
    assert_int_equal(lm_qmp_client_call(qc, "stop", "[1]", &ret, WAIT_MS, &err), -EINVAL);
    lm_error_clear(&err);

    assert_int_equal(lm_qmp_client_next_event(qc, 100, &ev, &err), -ETIMEDOUT);
    lm_error_clear(&err);
    assert_int_equal(lm_qmp_client_call(qc, "stop", "{}", NULL, WAIT_MS, &err), 0);
    assert_int_equal(lm_qmp_client_next_event(qc, WAIT_MS, &ev, &err), 0);
    v = json_loads(ev, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(v, "event")), "STOP");
    json_decref(v);
    free(ev);

    assert_int_equal(lm_qmp_client_call(qc, "migrate-set-parameters", "{\"downtime-limit\": 123}",
                                        NULL, WAIT_MS, &err),
                     0);
    assert_int_equal(lm_qmp_client_call(qc, "query-migrate-parameters", NULL, &ret, WAIT_MS, &err),
                     0);
    v = json_loads(ret, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(v, "downtime-limit")), 123);
    json_decref(v);
    free(ret);
    lm_qmp_client_close(qc);

    /* no server there */
    char bad[160];
    snprintf(bad, sizeof bad, "%s/none.sock", f->dir);
    assert_true(lm_qmp_client_connect(bad, 500, &qc, &err) < 0);
    assert_null(qc);
}

/* lm_qmp_client_call_fd passes a descriptor the server keeps (getfd) or
 * puts in a set (add-fd); a pipe's write end tells whether the server
 * still holds the read end. */
static bool pipe_held(int w)
{
    return write(w, "x", 1) == 1; /* EPIPE once no reader is left */
}

static void test_client_fds(void **state)
{
    fx *f = *state;
    lm_error err = {0};
    lm_qmp_client *qc = NULL;
    char *ret = NULL;
    int p[2];

    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(lm_qmp_client_connect(f->uri, WAIT_MS, &qc, &err), 0);
    assert_int_equal(
        lm_qmp_client_call_fd(qc, "getfd", "{\"fdname\": \"p\"}", -1, NULL, WAIT_MS, &err),
        -EREMOTEIO);
    assert_string_equal(err.msg, "GenericError: No file descriptor supplied via SCM_RIGHTS");
    lm_error_clear(&err);

    assert_int_equal(pipe(p), 0);
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    assert_int_equal(
        lm_qmp_client_call_fd(qc, "getfd", "{\"fdname\": \"p\"}", p[0], NULL, WAIT_MS, &err), 0);
    close(p[0]);
    assert_true(pipe_held(p[1]));
    assert_int_equal(lm_qmp_client_call(qc, "closefd", "{\"fdname\": \"p\"}", NULL, WAIT_MS, &err),
                     0);
    assert_false(pipe_held(p[1]));
    close(p[1]);

    assert_int_equal(pipe(p), 0);
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    assert_int_equal(lm_qmp_client_call_fd(qc, "add-fd", "{\"fdset-id\": 2, \"opaque\": \"o\"}",
                                           p[0], &ret, WAIT_MS, &err),
                     0);
    close(p[0]);
    json_t *v = json_loads(ret, 0, NULL);
    free(ret);
    assert_int_equal(json_integer_value(json_object_get(v, "fdset-id")), 2);
    json_int_t fd = json_integer_value(json_object_get(v, "fd"));
    json_decref(v);
    assert_true(fd > 2);
    assert_int_equal(lm_qmp_client_call(qc, "query-fdsets", NULL, &ret, WAIT_MS, &err), 0);
    v = json_loads(ret, 0, NULL);
    free(ret);
    json_t *want =
        json_pack("[{s:i, s:[{s:I, s:s}]}]", "fdset-id", 2, "fds", "fd", fd, "opaque", "o");
    assert_true(json_equal(v, want));
    json_decref(want);
    json_decref(v);
    assert_true(pipe_held(p[1]));
    assert_int_equal(lm_qmp_client_call(qc, "remove-fd", "{\"fdset-id\": 2}", NULL, WAIT_MS, &err),
                     0);
    assert_false(pipe_held(p[1]));
    close(p[1]);
    lm_qmp_client_close(qc);
}

/* A server that is not QMP, or says nothing: connect fails in time. */
static void test_client_not_qmp(void **state)
{
    fx *f = *state;
    char path[100];
    snprintf(path, sizeof path, "%s/mute.sock", f->dir);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(lfd, 4), 0);
    lm_error err = {0};
    lm_qmp_client *qc = NULL;
    int64_t t0 = now_ms();
    assert_int_equal(lm_qmp_client_connect(path, 300, &qc, &err), -ETIMEDOUT);
    assert_true(now_ms() - t0 < LATE_MS);
    close(lfd);
    unlink(path);
}

/* ----------------------------------------------------- bounded input */

static void test_oversized_input(void **state)
{
    fx *f = *state;
    conn *good = raw_ready(f->path);
    conn *big = raw_ready(f->path);

    /* An object that never ends, past the 1 MiB bound. */
    size_t n = (1u << 20) + 4096;
    char *blob = malloc(n + 64);
    assert_non_null(blob);
    int h = snprintf(blob, 64, "{\"execute\": \"x\", \"arguments\": {\"a\": \"");
    memset(blob + h, 'A', n);
    blob[h + n] = '\0';
    /* The server may drop us before it has read everything. */
    const char *p = blob;
    size_t left = strlen(blob);
    while (left) {
        ssize_t w = send(big->fd, p, left, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
    free(blob);
    json_t *r = raw_recv(big);
    expect_error(r, "GenericError", "QMP input exceeds");
    json_decref(r);
    assert_null(raw_recv_ms(big, WAIT_MS)); /* then EOF */
    still_works(good, 1);
    raw_close(big);
    raw_close(good);
}

/* A client that sends and never reads must not stall the others. */
static void test_slow_client(void **state)
{
    fx *f = *state;
    conn *slow = raw_ready(f->path);
    conn *good = raw_ready(f->path);
    int fl = fcntl(slow->fd, F_GETFL);
    fcntl(slow->fd, F_SETFL, fl | O_NONBLOCK);
    const char *req = "{\"execute\": \"query-migrate-capabilities\"}\n";
    size_t sent = 0;
    for (int i = 0; i < 200000; i++) {
        ssize_t w = send(slow->fd, req, strlen(req), MSG_NOSIGNAL);
        if (w < 0)
            break; /* its socket is full: the server stopped reading it */
        sent += (size_t)w;
    }
    assert_true(sent > 0);
    /* answered while slow still holds a full socket: a server that blocked
     * on it would never answer (still_works waits at most WAIT_MS) */
    still_works(good, 1);
    raw_close(slow);
    still_works(good, 2);
    raw_close(good);
}

/* "quit" as a host registers it: stop() from inside the command. */
static lm_qmp_server *quit_server;
static int quit_cmd(void *opaque, const char *args, char **ret, lm_error *err)
{
    lm_qmp_server_stop(quit_server);
    return 0;
}

static void test_stop_from_command(void **state)
{
    fx *f = fx_new(LM_RUN_RUNNING);
    lm_error err = {0};
    quit_server = f->s;
    assert_int_equal(lm_qmp_server_register(f->s, "quit", quit_cmd, NULL, &err), 0);
    conn *c = raw_ready(f->path);
    /* Nothing sent after quit runs. */
    json_t *r = raw_cmd(c, "{\"execute\": \"quit\", \"id\": 1}{\"execute\": \"stop\", \"id\": 2}");
    expect_return(r);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    json_decref(r);
    assert_null(raw_recv_ms(c, WAIT_MS)); /* closed */
    assert_int_equal(f->stops, 0);
    raw_close(c);
    /* The thread frees itself; the socket file goes away. */
    struct stat st;
    int64_t deadline = now_ms() + WAIT_MS;
    while (stat(f->path, &st) == 0 && now_ms() < deadline)
        usleep(10000);
    assert_int_equal(stat(f->path, &st), -1);
    f->s = NULL;
    /* A new server can take the object's listener slot again. */
    for (int i = 0; i < 12; i++) {
        lm_qmp_server *s2 = NULL;
        assert_int_equal(lm_qmp_server_start(f->m, f->uri, &s2, &err), 0);
        lm_qmp_server_stop(s2);
    }
    fx_free(f);
}

static void test_start_errors(void **state)
{
    fx *f = *state;
    lm_error err = {0};
    lm_qmp_server *s2 = NULL;
    /* the path is served already */
    assert_true(lm_qmp_server_start(f->m, f->uri, &s2, &err) < 0);
    assert_null(s2);
    assert_true(strstr(err.msg, "QMP server") != NULL);
    lm_error_clear(&err);
    assert_true(lm_qmp_server_start(f->m, "http://x", &s2, &err) < 0);
    assert_null(s2);
    /* the first server is unharmed */
    conn *c = raw_ready(f->path);
    still_works(c, 1);
    raw_close(c);
}

/* A client that pipelines megabytes of requests while reading replies is
 * served completely and in order: back-pressure, never a drop. */
static void test_pipelined(void **state)
{
    fx *f = *state;
    conn *c = raw_ready(f->path);
    enum { N = 60000 };
    size_t cap = (size_t)N * 48, len = 0, sent = 0;
    char *all = malloc(cap);
    assert_non_null(all);
    for (int i = 0; i < N; i++)
        len +=
            (size_t)snprintf(all + len, cap - len, "{\"execute\":\"query-status\",\"id\":%d}\n", i);
    assert_true(len > (2u << 20)); /* more than the server's input bound */
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    int next = 0;
    int64_t deadline = now_ms() + 60000;
    while (next < N) {
        assert_true(now_ms() < deadline);
        if (sent < len) {
            ssize_t w = send(c->fd, all + sent, len - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else
                assert_true(errno == EAGAIN);
        }
        /* take every complete reply there is, then wait a little */
        json_t *r;
        while (next < N && (r = raw_recv_ms(c, sent < len ? 0 : WAIT_MS))) {
            assert_int_equal(json_integer_value(json_object_get(r, "id")), next);
            expect_return(r);
            json_decref(r);
            next++;
        }
        if (sent < len) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN | POLLOUT};
            poll(&pfd, 1, 100);
        }
    }
    free(all);
    raw_close(c);
}

/* "echo requests | socat - UNIX:sock": the client closes its sending
 * side at once and still gets every reply, then EOF. */
static void test_half_close(void **state)
{
    fx *f = *state;
    conn *c = raw_connect(f->path);
    json_decref(raw_recv(c));
    enum { N = 200 };
    char *all = malloc(N * 48 + 64);
    assert_non_null(all);
    size_t len = (size_t)sprintf(all, "{\"execute\": \"qmp_capabilities\"}\n");
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(all + len, "{\"execute\":\"query-status\",\"id\":%d}\n", i);
    raw_send(c, all);
    free(all);
    shutdown(c->fd, SHUT_WR);
    json_decref(raw_reply(c));
    for (int i = 0; i < N; i++) {
        json_t *r = raw_reply(c);
        assert_int_equal(json_integer_value(json_object_get(r, "id")), i);
        json_decref(r);
    }
    assert_null(raw_recv_ms(c, WAIT_MS)); /* then the server closes */
    raw_close(c);
}

/* query-migrate's shape for each kind of state (the values come from
 * lm_mig_query; here the formatting is checked with made-up numbers). */
static void test_info_json(void **state)
{
    static const char *const ram_fields[] = {
        "transferred",
        "remaining",
        "total",
        "duplicate",
        "normal",
        "normal-bytes",
        "dirty-pages-rate",
        "mbps",
        "dirty-sync-count",
        "postcopy-requests",
        "page-size",
        "multifd-bytes",
        "pages-per-second",
        "precopy-bytes",
        "downtime-bytes",
        "postcopy-bytes",
        "dirty-sync-missed-zero-copy",
    };
    lm_info in;
    memset(&in, 0, sizeof in);
    in.status = LM_STATUS_ACTIVE;
    in.has_ram = true;
    in.transferred = 12345;
    in.total = 1ull << 30;
    in.page_size = 4096;
    in.mbps = 812.5;
    in.total_time = 1500;
    in.setup_time = 3;
    in.expected_downtime = 42;
    in.downtime = -1;
    in.bandwidth = 99999;
    json_t *o = lm_qmp_info_json(&in);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "active");
    json_t *ram = json_object_get(o, "ram");
    assert_int_equal(json_object_size(ram), sizeof ram_fields / sizeof ram_fields[0]);
    for (size_t i = 0; i < sizeof ram_fields / sizeof ram_fields[0]; i++)
        assert_non_null(json_object_get(ram, ram_fields[i]));
    assert_int_equal(json_integer_value(json_object_get(ram, "transferred")), 12345);
    assert_true(json_real_value(json_object_get(ram, "mbps")) == 812.5);
    assert_int_equal(json_integer_value(json_object_get(o, "total-time")), 1500);
    assert_int_equal(json_integer_value(json_object_get(o, "setup-time")), 3);
    assert_int_equal(json_integer_value(json_object_get(o, "expected-downtime")), 42);
    assert_null(json_object_get(o, "downtime"));
    assert_null(json_object_get(o, "error-desc"));
    assert_int_equal(json_integer_value(json_object_get(o, "x-bandwidth")), 99999);
    json_decref(o);

    in.status = LM_STATUS_COMPLETED;
    in.downtime = 7;
    in.downtime_us = 6789;
    o = lm_qmp_info_json(&in);
    /* kept after completion, to compare the prediction with the result */
    assert_int_equal(json_integer_value(json_object_get(o, "expected-downtime")), 42);
    assert_int_equal(json_integer_value(json_object_get(o, "downtime")), 7);
    assert_int_equal(json_integer_value(json_object_get(o, "x-downtime-us")), 6789);
    assert_non_null(json_object_get(o, "ram"));
    json_decref(o);

    /* setup: no ram yet; a failed destination: error and its address */
    in.status = LM_STATUS_SETUP;
    o = lm_qmp_info_json(&in);
    assert_null(json_object_get(o, "ram"));
    json_decref(o);
    memset(&in, 0, sizeof in);
    in.status = LM_STATUS_FAILED;
    in.total_time = 10;
    in.expected_downtime = in.downtime = -1;
    snprintf(in.error_desc, sizeof in.error_desc, "stream ended early");
    snprintf(in.socket_address, sizeof in.socket_address, "unix:/tmp/mig.sock");
    o = lm_qmp_info_json(&in);
    assert_string_equal(json_string_value(json_object_get(o, "error-desc")), "stream ended early");
    json_t *sa = json_array_get(json_object_get(o, "socket-address"), 0);
    assert_string_equal(json_string_value(json_object_get(sa, "type")), "unix");
    assert_string_equal(json_string_value(json_object_get(sa, "path")), "/tmp/mig.sock");
    assert_null(json_object_get(o, "ram"));
    json_decref(o);

    lm_event ev = {.type = LM_EVENT_MIGRATION_PASS, .pass = 3, .ts_sec = 5, .ts_usec = 6};
    o = lm_qmp_event_json(&ev);
    assert_string_equal(json_string_value(json_object_get(o, "event")), "MIGRATION_PASS");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "data"), "pass")), 3);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(o, "timestamp"), "microseconds")), 6);
    json_decref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greeting, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_negotiation, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup_running, teardown),
        cmocka_unit_test(test_events_two_clients),
        cmocka_unit_test_setup_teardown(test_set_parameters_errors, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_parameters_roundtrip, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_capabilities, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_run_state, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_host_commands, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_host_command_args, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_client, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_client_fds, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_client_not_qmp, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_input, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_slow_client, setup_running, teardown),
        cmocka_unit_test(test_stop_from_command),
        cmocka_unit_test_setup_teardown(test_start_errors, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_half_close, setup_running, teardown),
        cmocka_unit_test(test_info_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
