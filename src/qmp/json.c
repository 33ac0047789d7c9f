/*
 * json.c - the JSON shapes of what the library reports: query-migrate's
 * MigrationInfo (QEMU's field names, plus ours under x-) and the events.
 * Pure conversions, any thread.
 */
#include "qmp/qmp_internal.h"

#include "chan/chan.h"

#include <stdio.h>
#include <string.h>

/* socket-address is a list of QEMU SocketAddress objects; the library
 * reports the listening address as URI text. */
static json_t *socket_address_json(const char *text)
{
    lm_uri u;
    lm_error e = {0};
    if (lm_uri_parse(text, &u, &e) < 0)
        return NULL;
    json_t *a = NULL;
    switch (u.kind) {
    case LM_URI_TCP:
        a = json_pack("{s:s, s:s, s:s}", "type", "inet", "host", u.host, "port", u.port);
        break;
    case LM_URI_UNIX:
        a = json_pack("{s:s, s:s}", "type", "unix", "path", u.path);
        break;
    case LM_URI_FD: {
        char n[16];
        snprintf(n, sizeof n, "%d", u.fd);
        a = json_pack("{s:s, s:s}", "type", "fd", "str", n);
        break;
    }
    case LM_URI_FILE: /* QEMU's SocketAddress has no file: none is reported */
        break;
    }
    if (!a)
        return NULL;
    json_t *list = json_array();
    if (!list || json_array_append_new(list, a) < 0) {
        json_decref(list);
        return NULL;
    }
    return list;
}

json_t *lm_qmp_info_json(const lm_info *in)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    const char *status = lm_status_name(in->status);
    lm_qmp_put(o, "status", json_string(status ? status : "none"));
    bool some = in->status != LM_STATUS_NONE;
    if (in->has_ram && some && in->status != LM_STATUS_SETUP) {
        json_t *r = json_object();
        if (r) {
            lm_qmp_put(r, "transferred", lm_qmp_ju64(in->transferred));
            lm_qmp_put(r, "remaining", lm_qmp_ju64(in->remaining));
            lm_qmp_put(r, "total", lm_qmp_ju64(in->total));
            lm_qmp_put(r, "duplicate", lm_qmp_ju64(in->duplicate));
            lm_qmp_put(r, "normal", lm_qmp_ju64(in->normal));
            lm_qmp_put(r, "normal-bytes", lm_qmp_ju64(in->normal_bytes));
            lm_qmp_put(r, "dirty-pages-rate", lm_qmp_ju64(in->dirty_pages_rate));
            lm_qmp_put(r, "mbps", json_real(in->mbps));
            lm_qmp_put(r, "dirty-sync-count", lm_qmp_ju64(in->dirty_sync_count));
            lm_qmp_put(r, "postcopy-requests", lm_qmp_ju64(in->postcopy_requests));
            lm_qmp_put(r, "page-size", lm_qmp_ju64(in->page_size));
            lm_qmp_put(r, "multifd-bytes", lm_qmp_ju64(in->multifd_bytes));
            lm_qmp_put(r, "pages-per-second", lm_qmp_ju64(in->pages_per_second));
            lm_qmp_put(r, "precopy-bytes", lm_qmp_ju64(in->precopy_bytes));
            lm_qmp_put(r, "downtime-bytes", lm_qmp_ju64(in->downtime_bytes));
            lm_qmp_put(r, "postcopy-bytes", lm_qmp_ju64(in->postcopy_bytes));
            lm_qmp_put(r, "dirty-sync-missed-zero-copy",
                       lm_qmp_ju64(in->dirty_sync_missed_zero_copy));
            if (in->multifd_channels) {
                /* Ours: what each multifd channel carried. */
                json_t *a = json_array();
                for (unsigned i = 0; a && i < in->multifd_channels; i++) {
                    json_t *c = json_object();
                    if (!c)
                        break;
                    lm_qmp_put(c, "id", json_integer(i));
                    lm_qmp_put(c, "bytes", lm_qmp_ju64(in->multifd_chan[i].bytes));
                    lm_qmp_put(c, "normal", lm_qmp_ju64(in->multifd_chan[i].normal));
                    lm_qmp_put(c, "zero", lm_qmp_ju64(in->multifd_chan[i].zero));
                    json_array_append_new(a, c);
                }
                lm_qmp_put(r, "x-multifd-channels", a);
            }
            lm_qmp_put(o, "ram", r);
        }
    }
    if (some && in->total_time >= 0) {
        lm_qmp_put(o, "total-time", json_integer(in->total_time));
        if (in->setup_time >= 0)
            lm_qmp_put(o, "setup-time", json_integer(in->setup_time));
    }
    /* Kept after completion (unlike QEMU): the prediction made at the
     * switchover decision, to compare with "downtime". */
    if (in->expected_downtime >= 0)
        lm_qmp_put(o, "expected-downtime", json_integer(in->expected_downtime));
    if (in->downtime >= 0) {
        lm_qmp_put(o, "downtime", json_integer(in->downtime));
        lm_qmp_put(o, "x-downtime-us", lm_qmp_ju64(in->downtime_us));
    }
    if (in->switch_pause_us)
        lm_qmp_put(o, "x-postcopy-pause-us", lm_qmp_ju64(in->switch_pause_us));
    if (in->error_desc[0])
        lm_qmp_put(o, "error-desc", json_string(in->error_desc));
    if (in->socket_address[0])
        lm_qmp_put(o, "socket-address", socket_address_json(in->socket_address));
    if (in->has_ram && some) {
        lm_qmp_put(o, "x-bandwidth", lm_qmp_ju64(in->bandwidth));
        lm_qmp_put(o, "x-queued-bytes", lm_qmp_ju64(in->queued_bytes));
        lm_qmp_put(o, "x-switchover-queued-bytes", lm_qmp_ju64(in->switchover_queued_bytes));
    }
    /* As QEMU: whenever the capability is on. */
    if (in->has_xbzrle && in->has_ram && some) {
        json_t *x = json_object();
        if (x) {
            lm_qmp_put(x, "cache-size", lm_qmp_ju64(in->xbzrle_cache_size));
            lm_qmp_put(x, "bytes", lm_qmp_ju64(in->xbzrle_bytes));
            lm_qmp_put(x, "pages", lm_qmp_ju64(in->xbzrle_pages));
            lm_qmp_put(x, "cache-miss", lm_qmp_ju64(in->xbzrle_cache_miss));
            lm_qmp_put(x, "cache-miss-rate", json_real(in->xbzrle_cache_miss_rate));
            lm_qmp_put(x, "encoding-rate", json_real(in->xbzrle_encoding_rate));
            lm_qmp_put(x, "overflow", lm_qmp_ju64(in->xbzrle_overflow));
            lm_qmp_put(o, "xbzrle-cache", x);
        }
    }
    /* As QEMU: only while the throttle is in force. */
    if (in->cpu_throttle_percentage)
        lm_qmp_put(o, "cpu-throttle-percentage", json_integer(in->cpu_throttle_percentage));
    if (in->dirty_limit_mbps) {
        lm_qmp_put(o, "dirty-limit-throttle-time-per-round",
                   lm_qmp_ju64(in->dirty_limit_throttle_us));
        lm_qmp_put(o, "x-dirty-limit-mbps", lm_qmp_ju64(in->dirty_limit_mbps));
    }
    /* Destination, after a switch to postcopy: fault and request counts,
     * and with postcopy-blocktime the remote fault latency (fault read to
     * placement) as QEMU's log2 histogram plus percentiles. */
    if (in->has_postcopy) {
        json_t *pc = json_object();
        if (pc) {
            lm_qmp_put(pc, "requests", lm_qmp_ju64(in->postcopy_requests));
            lm_qmp_put(pc, "remote-faults", lm_qmp_ju64(in->pc_faults));
            lm_qmp_put(pc, "local-faults", lm_qmp_ju64(in->pc_local_faults));
            lm_qmp_put(pc, "owed-pages", lm_qmp_ju64(in->pc_owed_pages));
            lm_qmp_put(pc, "x-multifd-pages", lm_qmp_ju64(in->pc_mfd_pages));
            lm_qmp_put(pc, "x-blocks-minor", lm_qmp_ju64(in->pc_minor_blocks));
            lm_qmp_put(pc, "x-blocks-copy", lm_qmp_ju64(in->pc_copy_blocks));
            if (in->has_blocktime) {
                json_t *h = json_array();
                for (unsigned i = 0; h && i < 24; i++)
                    json_array_append_new(h, lm_qmp_ju64(in->pc_lat_hist[i]));
                lm_qmp_put(pc, "latency-histogram-log2-us", h);
                lm_qmp_put(pc, "latency-count", lm_qmp_ju64(in->pc_lat_count));
                lm_qmp_put(pc, "latency-p50-us", lm_qmp_ju64(in->pc_lat_p50_us));
                lm_qmp_put(pc, "latency-p99-us", lm_qmp_ju64(in->pc_lat_p99_us));
                lm_qmp_put(pc, "latency-max-us", lm_qmp_ju64(in->pc_lat_max_us));
            }
            lm_qmp_put(o, "x-postcopy", pc);
        }
    }
    return o;
}

/* ---------------------------------------------------------------- events */

/* Each event's QMP name and the schema type of its "data" (schema.c
 * describes the types); query-qmp-schema lists exactly these. */
static const struct {
    const char *name;
    const char *arg_type;
} events[LM_EVENT__MAX] = {
    [LM_EVENT_MIGRATION] = {"MIGRATION", "q_obj_MIGRATION-arg"},
    [LM_EVENT_MIGRATION_PASS] = {"MIGRATION_PASS", "q_obj_MIGRATION_PASS-arg"},
    [LM_EVENT_STOP] = {"STOP", "q_empty"},
    [LM_EVENT_RESUME] = {"RESUME", "q_empty"},
    /* Ours (QEMU has no such event): x- prefixed like our commands. */
    [LM_EVENT_SWITCHOVER_ACK] = {"X_MIGRATION_SWITCHOVER_ACK", "q_empty"},
};

const char *lm_qmp_event_name(lm_event_type t, const char **arg_type)
{
    if ((unsigned)t >= LM_EVENT__MAX || !events[t].name)
        return NULL;
    if (arg_type)
        *arg_type = events[t].arg_type;
    return events[t].name;
}

json_t *lm_qmp_event_json(const lm_event *ev)
{
    const char *name = lm_qmp_event_name(ev->type, NULL);
    json_t *data = NULL;
    switch (ev->type) {
    case LM_EVENT_MIGRATION: {
        const char *s = lm_status_name(ev->status);
        data = json_pack("{s:s}", "status", s ? s : "none");
        break;
    }
    case LM_EVENT_MIGRATION_PASS:
        data = json_pack("{s:o}", "pass", lm_qmp_ju64(ev->pass));
        break;
    default: /* no data */
        break;
    }
    if (!name)
        return NULL;
    json_t *o = json_object();
    if (!o) {
        json_decref(data);
        return NULL;
    }
    lm_qmp_put(o, "event", json_string(name));
    if (data)
        lm_qmp_put(o, "data", data);
    lm_qmp_put(o, "timestamp",
               json_pack("{s:I, s:I}", "seconds", (json_int_t)ev->ts_sec, "microseconds",
                         (json_int_t)ev->ts_usec));
    return o;
}
