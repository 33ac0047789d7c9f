/*
 * qmpc.c - QMP helpers of the CLI: lm_qmp_client calls with jansson values
 * in and out, and a tolerant reader of QEMU's query-migrate reply (the CLI
 * must work against a QEMU as well as against `livemig guest`).
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qmpc_connect(const char *sock, int timeout_ms, qmpc **out, lm_error *err)
{
    /* The library's message already names the socket. */
    int rc = lm_qmp_client_connect(sock, timeout_ms, out, err);
    if (rc == -ETIMEDOUT && err) {
        /* QEMU's monitor serves one client at a time: a second one is
         * accepted by the kernel and then gets nothing, not even the
         * greeting, until the first disconnects. */
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n,
                 " (a QEMU monitor serves one client at a time: is another client, "
                 "such as a running 'livemig migrate', connected to it?)");
    }
    return rc;
}

int qmpc_call(qmpc *c, const char *cmd, json_t *args, json_t **ret, lm_error *err)
{
    char *args_txt = NULL, *ret_txt = NULL;
    int rc = 0;

    if (ret)
        *ret = NULL;
    if (args) {
        args_txt = json_dumps(args, JSON_COMPACT);
        if (!args_txt) {
            rc = lm_error_set(err, -ENOMEM, "%s: cannot encode arguments", cmd);
            goto out;
        }
    }
    rc = lm_qmp_client_call(c, cmd, args_txt, &ret_txt, CLI_QMP_TIMEOUT_MS, err);
    if (rc < 0) {
        lm_error_prefix(err, "%s", cmd);
        goto out;
    }
    if (ret) {
        json_error_t jerr;
        *ret = json_loads(ret_txt ? ret_txt : "{}", JSON_DECODE_ANY, &jerr);
        /* A uint64 above INT64_MAX (max-bandwidth up to 2^64-1, as QEMU
         * takes) is too big for jansson's integers: the CLI only shows
         * and compares such values, so a real will do for them. */
        if (!*ret)
            *ret = json_loads(ret_txt ? ret_txt : "{}", JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL,
                              &jerr);
        if (!*ret) {
            rc = lm_error_set(err, -EPROTO, "%s: reply is not JSON: %s", cmd, jerr.text);
            goto out;
        }
    }
out:
    free(args_txt);
    free(ret_txt);
    return rc;
}

int qmpc_next_event(qmpc *c, int timeout_ms, json_t **ev, lm_error *err)
{
    char *txt = NULL;
    *ev = NULL;
    int rc = lm_qmp_client_next_event(c, timeout_ms, &txt, err);
    if (rc < 0)
        return rc;
    json_error_t jerr;
    *ev = json_loads(txt, 0, &jerr);
    free(txt);
    if (!*ev)
        return lm_error_set(err, -EPROTO, "event is not JSON: %s", jerr.text);
    return 0;
}

/* ------------------------------------------------------- query-migrate */

static bool get_u64(json_t *o, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    if (json_is_real(v) && json_real_value(v) >= 0) {
        *out = (uint64_t)json_real_value(v);
        return true;
    }
    return false;
}

static int64_t get_i64(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v))
        return (int64_t)json_real_value(v);
    return -1;
}

void qmpc_mig_parse(json_t *ret, qmpc_mig *out)
{
    memset(out, 0, sizeof *out);
    out->page_size = 4096; /* QEMU omits nothing here, but be tolerant */
    /* QEMU (7.2 at least) omits "status" while it is none. */
    const char *st = json_string_value(json_object_get(ret, "status"));
    snprintf(out->status, sizeof out->status, "%s", st ? st : "none");
    const char *ed = json_string_value(json_object_get(ret, "error-desc"));
    snprintf(out->error_desc, sizeof out->error_desc, "%s", ed ? ed : "");
    out->total_time = get_i64(ret, "total-time");
    out->setup_time = get_i64(ret, "setup-time");
    out->downtime = get_i64(ret, "downtime");
    out->expected_downtime = get_i64(ret, "expected-downtime");

    json_t *ram = json_object_get(ret, "ram");
    if (!json_is_object(ram))
        return;
    out->has_ram = true;
    get_u64(ram, "transferred", &out->transferred);
    out->has_remaining = get_u64(ram, "remaining", &out->remaining);
    get_u64(ram, "total", &out->total);
    get_u64(ram, "duplicate", &out->duplicate);
    get_u64(ram, "normal", &out->normal);
    get_u64(ram, "dirty-sync-count", &out->dirty_sync_count);
    get_u64(ram, "postcopy-requests", &out->postcopy_requests);
    get_u64(ram, "postcopy-bytes", &out->postcopy_bytes);
    out->has_dirty_rate = get_u64(ram, "dirty-pages-rate", &out->dirty_pages_rate);
    uint64_t ps;
    if (get_u64(ram, "page-size", &ps) && ps)
        out->page_size = ps;
    json_t *mbps = json_object_get(ram, "mbps");
    if (json_is_number(mbps)) {
        out->has_mbps = true;
        double v = json_number_value(mbps);
        out->mbps_x1000 = v > 0 ? (uint64_t)(v * 1000) : 0;
    }
}

int qmpc_query_migrate(qmpc *c, qmpc_mig *out, json_t **raw, lm_error *err)
{
    json_t *ret = NULL;
    int rc = qmpc_call(c, "query-migrate", NULL, &ret, err);
    if (rc < 0)
        return rc;
    qmpc_mig_parse(ret, out);
    if (raw)
        *raw = ret;
    else
        json_decref(ret);
    return 0;
}

bool qmpc_status_final(const char *s)
{
    return !strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

/* ------------------------------------------------------ socket-address */

/* Splits "tcp:HOST:PORT" (HOST may be [v6]) into host and port. */
static bool split_tcp(const char *uri, char *host, size_t hcap, char *port, size_t pcap)
{
    if (strncmp(uri, "tcp:", 4))
        return false;
    const char *h = uri + 4;
    const char *colon = strrchr(h, ':');
    if (!colon)
        return false;
    snprintf(host, hcap, "%.*s", (int)(colon - h), h);
    snprintf(port, pcap, "%s", colon + 1);
    return true;
}

/* One SocketAddress (object or URI string) as a URI; false if unusable. */
static bool addr_to_uri(json_t *a, char *out, size_t cap)
{
    if (json_is_string(a)) {
        snprintf(out, cap, "%s", json_string_value(a));
        return true;
    }
    if (!json_is_object(a))
        return false;
    const char *type = json_string_value(json_object_get(a, "type"));
    if (!type)
        return false;
    if (!strcmp(type, "inet")) {
        const char *host = json_string_value(json_object_get(a, "host"));
        json_t *pv = json_object_get(a, "port");
        char port[16];
        if (json_is_string(pv))
            snprintf(port, sizeof port, "%s", json_string_value(pv));
        else if (json_is_integer(pv))
            snprintf(port, sizeof port, "%lld", (long long)json_integer_value(pv));
        else
            return false;
        if (!host)
            return false;
        if (strchr(host, ':'))
            snprintf(out, cap, "tcp:[%s]:%s", host, port);
        else
            snprintf(out, cap, "tcp:%s:%s", host, port);
        return true;
    }
    if (!strcmp(type, "unix")) {
        const char *path = json_string_value(json_object_get(a, "path"));
        if (!path)
            return false;
        snprintf(out, cap, "unix:%s", path);
        return true;
    }
    return false;
}

bool qmpc_real_uri(json_t *qm_ret, const char *want, char *out, size_t cap)
{
    char whost[256], wport[16];
    if (!split_tcp(want, whost, sizeof whost, wport, sizeof wport) || strcmp(wport, "0")) {
        /* Nothing to learn: the user's URI is already complete. */
        snprintf(out, cap, "%s", want);
        return true;
    }
    json_t *sa = json_object_get(qm_ret, "socket-address");
    json_t *list = sa;
    if (!json_is_array(sa)) {
        list = json_array();
        if (sa)
            json_array_append(list, sa);
    } else {
        json_incref(list);
    }
    bool found = false;
    size_t i;
    json_t *a;
    json_array_foreach(list, i, a) {
        char uri[300], host[256], port[16];
        if (!addr_to_uri(a, uri, sizeof uri) ||
            !split_tcp(uri, host, sizeof host, port, sizeof port) || !strcmp(port, "0"))
            continue;
        /* Keep the host the user asked for: the listener may report a
         * wildcard address (0.0.0.0, ::) that cannot be connected to. */
        if (strchr(whost, ':') && whost[0] != '[')
            snprintf(out, cap, "tcp:[%s]:%s", whost, port);
        else
            snprintf(out, cap, "tcp:%s:%s", whost, port);
        found = true;
        break;
    }
    json_decref(list);
    return found;
}
