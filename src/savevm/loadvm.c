/*
 * loadvm.c - the destination's drivers of device state: setup, section
 * loading (START/PART/END/FULL bound to registered devices by name and
 * instance), the switchover-ack handshake (seed 003, digest §7) and
 * cleanup (docs/devices.md).  Incoming thread only (savevm.h).
 */
#include "savevm/savevm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int send_rp(lm_chan *c, uint8_t type, const void *p, uint32_t len, lm_error *err)
{
    if (lm_rec_send(c, type, p, len) < 0)
        return lm_chan_get_error(c, err);
    return 0;
}

static int send_device_ack(lm_chan *c, lm_device *d, uint8_t state, lm_error *err)
{
    uint8_t p[LM_DEVICE_ACK_SIZE];
    lm_fmt_device_ack_encode(d->in_section_id, state, p, sizeof p);
    return send_rp(c, LM_REC_RP_DEVICE_ACK, p, sizeof p, err);
}

/* Sends RP_SWITCHOVER_ACK once no waited-for device is missing. */
static int maybe_ack(lm_loadvm *lv, lm_chan *c, lm_error *err)
{
    if (!lv->ack_devices_seen || lv->ack_sent || lv->ack_waiting)
        return 0;
    int ret = send_rp(c, LM_REC_RP_SWITCHOVER_ACK, NULL, 0, err);
    if (ret < 0)
        return lm_error_prefix(err, "sending the switchover ack");
    lv->ack_sent = true;
    if (lv->on_ack)
        lv->on_ack(lv->opaque);
    return 0;
}

int lm_loadvm_setup(lm_loadvm *lv, lm_error *err)
{
    lm_savevm *m = lv->sv;
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        d->in_bound = d->in_started = d->in_ended = d->in_ready = d->in_waited = false;
        d->in_full = false;
        d->in_version = 0;
        LM_ATOMIC_SET(&d->bytes, 0);
        LM_ATOMIC_SET(&d->pending, 0);
        LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_NONE);
    }
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        if (d->ops->load_setup && d->ops->load_setup(d->opaque, err) < 0)
            return lm_error_prefix(err, "device '%s' load setup", d->name);
    }
    return 0;
}

void lm_loadvm_cleanup(lm_loadvm *lv)
{
    lm_savevm *m = lv->sv;
    if (lv->cleaned)
        return;
    lv->cleaned = true;
    for (unsigned i = 0; i < m->ndevices; i++)
        if (m->devices[i].ops->load_cleanup)
            m->devices[i].ops->load_cleanup(m->devices[i].opaque);
    free(lv->buf);
    lv->buf = NULL;
    lv->cap = 0;
}

static lm_device *find_bound(lm_savevm *m, uint32_t section_id)
{
    for (unsigned i = 0; i < m->ndevices; i++)
        if (m->devices[i].in_bound && m->devices[i].in_section_id == section_id)
            return &m->devices[i];
    return NULL;
}

/* START/FULL: finds the local device by (name, instance), checks the
 * version and binds the section id. */
static int bind(lm_savevm *m, uint8_t type, const lm_section_hdr *s, lm_device **out, lm_error *err)
{
    const char *what = lm_rec_type_name(type);
    lm_device *d = NULL;
    for (unsigned i = 0; i < m->ndevices; i++)
        if (!strcmp(m->devices[i].name, s->name) && m->devices[i].instance == s->instance)
            d = &m->devices[i];
    if (!d)
        return lm_error_set(err, -ENOENT,
                            "%s: unknown device '%s' instance %" PRIu32
                            " (not registered on this destination)",
                            what, s->name, s->instance);
    if (s->version > d->version)
        return lm_error_set(err, -ENOTSUP,
                            "device '%s' instance %" PRIu32 ": the stream has version %" PRIu32
                            ", newer than this destination's version %" PRIu32
                            " (upgrade the destination)",
                            d->name, d->instance, s->version, d->version);
    if (s->version == 0)
        return lm_error_set(err, -EPROTO, "device '%s': %s with version 0", d->name, what);
    lm_device *other = find_bound(m, s->section_id);
    if (other && other != d)
        return lm_error_set(err, -EPROTO,
                            "%s: section id %" PRIu32 " of device '%s' is "
                            "already bound to device '%s'",
                            what, s->section_id, d->name, other->name);
    if (d->in_bound && d->in_section_id != s->section_id)
        return lm_error_set(err, -EPROTO,
                            "%s: device '%s' arrives with section id %" PRIu32 ", it had %" PRIu32,
                            what, d->name, s->section_id, d->in_section_id);
    if (d->in_bound && d->in_version != s->version)
        return lm_error_set(err, -EPROTO,
                            "%s: device '%s' changes version %" PRIu32 " -> %" PRIu32
                            " within one stream",
                            what, d->name, d->in_version, s->version);
    d->in_bound = true;
    d->in_section_id = s->section_id;
    d->in_version = s->version;
    *out = d;
    return 0;
}

int lm_loadvm_section(lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_savevm *m = lv->sv;
    /* The record header bounded h->len to 16 MiB. */
    if (h->len > lv->cap) {
        size_t ncap = lv->cap ? lv->cap : 65536;
        while (ncap < h->len)
            ncap *= 2;
        uint8_t *nb = realloc(lv->buf, ncap);
        if (!nb)
            return lm_error_set(err, -ENOMEM, "out of memory for a %u-byte section", h->len);
        lv->buf = nb;
        lv->cap = ncap;
    }
    if (lm_chan_read_full(c, lv->buf, h->len) < 0)
        return lm_chan_get_error(c, err);
    lm_section_hdr s;
    int hl = lm_fmt_section_hdr_decode(h->type, lv->buf, h->len, &s, err);
    if (hl <= 0)
        return err && err->code ? err->code : -EPROTO;
    const uint8_t *data = lv->buf + hl;
    size_t dlen = h->len - (size_t)hl;
    lm_device *d = NULL;
    int ret;
    switch (h->type) {
    case LM_REC_SECTION_START:
        if ((ret = bind(m, h->type, &s, &d, err)) < 0)
            return ret;
        if (!d->ops->save_iterate)
            return lm_error_set(err, -EPROTO,
                                "SECTION_START for device '%s', which is not "
                                "iterable here",
                                d->name);
        if (d->in_started)
            return lm_error_set(err, -EPROTO, "second SECTION_START for device '%s'", d->name);
        d->in_started = true;
        break;
    case LM_REC_SECTION_FULL:
        if ((ret = bind(m, h->type, &s, &d, err)) < 0)
            return ret;
        d->in_full = true;
        break;
    default:
        d = find_bound(m, s.section_id);
        if (!d || !d->in_started)
            return lm_error_set(err, -EPROTO, "%s: section id %" PRIu32 " was never started",
                                lm_rec_type_name(h->type), s.section_id);
        if (d->in_ended)
            return lm_error_set(err, -EPROTO, "%s for device '%s' after its SECTION_END",
                                lm_rec_type_name(h->type), d->name);
        if (h->type == LM_REC_SECTION_END)
            d->in_ended = true;
        break;
    }
    LM_ATOMIC_ADD(&d->bytes, LM_REC_HDR_SIZE + (uint64_t)h->len);
    /* START and END are markers (lm_savevm_setup/complete): the device
     * sees exactly the puts of its source peer. */
    if (h->type == LM_REC_SECTION_START || h->type == LM_REC_SECTION_END)
        return 0;
    ret = d->ops->load_state(d->opaque, d->in_version, data, dlen, err);
    if (ret < 0) {
        if (!err || !err->code)
            lm_error_set(err, ret, "load failed");
        return lm_error_prefix(err, "device '%s' instance %" PRIu32, d->name, d->instance);
    }
    if (ret == LM_DEVICE_LOAD_READY && !d->in_ready) {
        d->in_ready = true;
        if (d->in_waited) {
            d->in_waited = false;
            lv->ack_waiting--;
            LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_ACKED);
            if ((ret = send_device_ack(c, d, LM_DEV_ACK_READY, err)) < 0)
                return ret;
            return maybe_ack(lv, c, err);
        }
    }
    return 0;
}

int lm_loadvm_ack_devices(lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_savevm *m = lv->sv;
    uint8_t p[4 + 4 * LM_ACK_DEVICES_MAX];
    uint32_t ids[LM_ACK_DEVICES_MAX], n = 0;
    int ret = lm_rec_read_payload(c, h, p, sizeof p, "ACK_DEVICES", err);
    if (ret < 0)
        return ret;
    if (lm_fmt_ack_devices_decode(p, h->len, ids, LM_ACK_DEVICES_MAX, &n, err) < 0)
        return err && err->code ? err->code : -EPROTO;
    if (!lv->ack_feature)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES without the switchover-ack feature");
    if (lv->ack_devices_seen)
        return lm_error_set(err, -EPROTO, "second ACK_DEVICES record");
    lv->ack_devices_seen = true;
    for (uint32_t i = 0; i < n; i++) {
        lm_device *d = find_bound(m, ids[i]);
        if (!d || !d->in_started)
            return lm_error_set(err, -EPROTO,
                                "ACK_DEVICES: section id %" PRIu32 " was never started", ids[i]);
        bool here = d->ops->switchover_ack_needed && d->ops->switchover_ack_needed(d->opaque);
        if (!here) {
            /* An older destination device: it cannot approve, so the
             * switch must not wait for it (seed 003, second trap). */
            LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_FALLBACK);
            if ((ret = send_device_ack(c, d, LM_DEV_ACK_DECLINED, err)) < 0)
                return ret;
        } else if (d->in_ready) {
            LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_ACKED);
            if ((ret = send_device_ack(c, d, LM_DEV_ACK_READY, err)) < 0)
                return ret;
        } else {
            d->in_waited = true;
            lv->ack_waiting++;
            LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_WAITING);
        }
    }
    /* Devices that would approve here but were not offered by the source
     * (an older source device) fall back: nothing will tell them that the
     * initial data is complete. */
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        if (LM_ATOMIC_GET(&d->ack) == LM_DEVICE_ACK_NONE && d->ops->switchover_ack_needed &&
            d->ops->switchover_ack_needed(d->opaque))
            LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_FALLBACK);
    }
    return maybe_ack(lv, c, err);
}

int lm_loadvm_switchover(lm_loadvm *lv, lm_error *err)
{
    if (lv->switchover_seen)
        return lm_error_set(err, -EPROTO, "second SWITCHOVER_START record");
    lv->switchover_seen = true;
    return 0;
}

int lm_loadvm_check_complete(lm_loadvm *lv, lm_loadvm_stage stage, lm_error *err)
{
    lm_savevm *m = lv->sv;
    const char *where = stage == LM_LOADVM_AT_RUN ? "POSTCOPY_RUN" : "end of stream";
    if (stage != LM_LOADVM_AT_POSTCOPY_EOS && !lv->switchover_seen)
        return lm_error_set(err, -EPROTO,
                            "%s without SWITCHOVER_START: the source never stopped the guest "
                            "for the switchover (an incomplete stream)",
                            where);
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        bool pc = d->ops->has_postcopy && d->ops->has_postcopy(d->opaque);
        if ((stage == LM_LOADVM_AT_RUN && pc) || (stage == LM_LOADVM_AT_POSTCOPY_EOS && !pc))
            continue;
        if (d->in_started && !d->in_ended)
            return lm_error_set(err, -EPROTO, "device '%s': %s before its SECTION_END", d->name,
                                where);
        if (d->ops->save_iterate && !d->in_started)
            return lm_error_set(err, -EPROTO,
                                "device '%s' instance %" PRIu32
                                ": %s, and its state never came (no SECTION_START)",
                                d->name, d->instance, where);
        if (d->ops->save_state && !d->in_full)
            return lm_error_set(err, -EPROTO,
                                "device '%s' instance %" PRIu32
                                ": %s, and its state never came (no SECTION_FULL)",
                                d->name, d->instance, where);
    }
    if (stage == LM_LOADVM_AT_EOS && lv->ack_feature && !lv->ack_devices_seen)
        return lm_error_set(err, -EPROTO,
                            "end of stream without ACK_DEVICES although "
                            "switchover-ack was negotiated");
    return 0;
}
