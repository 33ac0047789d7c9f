/*
 * savevm.c - the registry of state handlers (RAM and the host's devices)
 * and the drivers that run them: setup, pending, iterate, complete and
 * cleanup on the source; setup, section loading, the switchover-ack
 * handshake and cleanup on the destination (docs/devices.md).
 *
 * Iteration is round-robin over every active handler and never stops at
 * the first unfinished one (seed 001, digest §3.6).  Beyond QEMU, each
 * handler gets a fair share of the bandwidth budget of the current window
 * (what one leaves unused passes to the ones after it, and a second round
 * gives what is still unused to those with data left), the starting
 * handler rotates, and RAM cuts its page runs to its share, so a fast
 * dirtier cannot starve the others even under a low max-bandwidth
 * (digest §3.6 "observation", §12; tests/unit/test_devices.c).
 *
 * Threads: the source drivers run on the migration thread, the load
 * drivers on the incoming thread; lm_device_register and
 * lm_mig_query_devices on any thread (m->lock).  The device table is
 * written only before the first migration (ram_frozen, under m->lock) and
 * is read-only afterwards; per-migration device counters are relaxed
 * atomics; a device's `ack` is written by the migration thread at setup
 * and by the return-path thread afterwards (atomics).
 */
#include "core/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================ registry */

static bool dev_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > LM_DEVICE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 0x20 || name[i] > 0x7e)
            return false;
    return true;
}

int lm_device_register(lm_mig *m, const char *name, uint32_t instance, uint32_t version,
                       const lm_device_ops *ops, void *opaque, lm_error *err)
{
    if (!dev_name_ok(name))
        return lm_error_set(err, -EINVAL, "device name must be 1..%d printable ASCII bytes",
                            LM_DEVICE_NAME_MAX);
    if (!ops || version < 1)
        return lm_error_set(err, -EINVAL, "device '%s': %s", name,
                            !ops ? "no handler table" : "version must be >= 1");
    if (!ops->load_state)
        return lm_error_set(err, -EINVAL, "device '%s': load_state is required", name);
    if (!ops->save_iterate && !ops->save_state)
        return lm_error_set(err, -EINVAL, "device '%s': needs save_iterate or save_state",
                            name);
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    if (m->ram_frozen) {
        ret = lm_error_set(err, -EBUSY, "device '%s': devices can only be registered before "
                                        "the first migration", name);
        goto out;
    }
    if (m->ndevices >= LM_MAX_DEVICES) {
        ret = lm_error_set(err, -ENOSPC, "device '%s': at most %d devices", name,
                           LM_MAX_DEVICES);
        goto out;
    }
    for (unsigned i = 0; i < m->ndevices; i++)
        if (!strcmp(m->devices[i].name, name) && m->devices[i].instance == instance) {
            ret = lm_error_set(err, -EEXIST, "device '%s' instance %" PRIu32
                                             " is already registered", name, instance);
            goto out;
        }
    lm_device *d = &m->devices[m->ndevices];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->instance = instance;
    d->version = version;
    d->ops = ops;
    d->opaque = opaque;
    m->ndevices++;
out:
    pthread_mutex_unlock(&m->lock);
    return ret;
}

const char *lm_device_ack_state_name(lm_device_ack_state s)
{
    switch (s) {
    case LM_DEVICE_ACK_NONE:
        return "none";
    case LM_DEVICE_ACK_WAITING:
        return "waiting";
    case LM_DEVICE_ACK_ACKED:
        return "acked";
    case LM_DEVICE_ACK_FALLBACK:
        return "fallback";
    }
    return NULL;
}

unsigned lm_mig_query_devices(lm_mig *m, lm_device_info *out, unsigned max)
{
    pthread_mutex_lock(&m->lock);
    unsigned n = m->ndevices;
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < n && i < max; i++) {
        lm_device *d = &m->devices[i];
        lm_device_info *o = &out[i];
        memset(o, 0, sizeof *o);
        snprintf(o->name, sizeof o->name, "%s", d->name);
        o->instance = d->instance;
        o->version = d->version;
        o->iterable = d->ops->save_iterate != NULL;
        o->pending = LM_ATOMIC_GET(&d->pending);
        o->bytes = LM_ATOMIC_GET(&d->bytes);
        o->ack = (lm_device_ack_state)LM_ATOMIC_GET(&d->ack);
    }
    return n;
}

/* ============================================================== source */

static bool ack_cap(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    bool on = m->caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    pthread_mutex_unlock(&m->lock);
    return on;
}

int lm_device_put(lm_device_out *out, const void *data, size_t len, lm_error *err)
{
    if (!out || !out->dev)
        return lm_error_set(err, -EINVAL, "lm_device_put: no device output");
    if (len > LM_DEVICE_PUT_MAX)
        return lm_error_set(err, -EMSGSIZE, "device '%s': put of %zu bytes above %u",
                            out->dev->name, len, LM_DEVICE_PUT_MAX);
    lm_device *d = out->dev;
    lm_section_hdr s = {.section_id = out->section_id, .instance = d->instance,
                        .version = d->version, .name_len = (uint8_t)strlen(d->name)};
    memcpy(s.name, d->name, s.name_len + 1);
    uint8_t hdr[LM_REC_HDR_SIZE + 13 + LM_SECTION_NAME_MAX];
    int n = lm_fmt_section_hdr_encode(out->type, &s, hdr + LM_REC_HDR_SIZE,
                                      sizeof hdr - LM_REC_HDR_SIZE);
    if (n < 0)
        return lm_error_set(err, n, "device '%s': cannot encode its section header", d->name);
    uint32_t plen = (uint32_t)n + (uint32_t)len;
    lm_fmt_rec_hdr_encode(out->type, plen, hdr, LM_REC_HDR_SIZE);
    int ret = len ? lm_chan_write_ref(out->o->chan, hdr, LM_REC_HDR_SIZE + (size_t)n, data, len)
                  : lm_chan_put(out->o->chan, hdr, LM_REC_HDR_SIZE + (size_t)n);
    if (ret < 0) {
        lm_chan_get_error(out->o->chan, err);
        lm_error_prefix(err, "device '%s'", d->name);
        return ret; /* not prefix's: a device may pass err NULL */
    }
    uint64_t total = LM_REC_HDR_SIZE + (uint64_t)plen;
    LM_ATOMIC_ADD(&d->bytes, total);
    if (out->o->last_stage)
        LM_ATOMIC_ADD(&out->o->m->stats.downtime_bytes, total);
    else
        LM_ATOMIC_ADD(&out->o->m->stats.precopy_bytes, total);
    return 0;
}

/* Writes a section record with no device data (START, END). */
static int put_marker(lm_out *o, lm_handler *h, uint8_t type, lm_error *err)
{
    lm_device_out out = {.o = o, .dev = h->dev, .section_id = h->section_id, .type = type};
    return lm_device_put(&out, NULL, 0, err);
}

/* Builds this migration's handler list: RAM first, then every iterable
 * device in registration order.  A device's section id is its index in
 * m->devices, which is stable for the life of m. */
static void build_handlers(lm_mig *m)
{
    m->handlers[0] = (lm_handler){.ops = &lm_ram_handler_ops, .opaque = m};
    m->nhandlers = 1;
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        LM_ATOMIC_SET(&d->pending, 0);
        LM_ATOMIC_SET(&d->bytes, 0);
        LM_ATOMIC_SET(&d->ack, LM_DEVICE_ACK_NONE);
        if (d->ops->save_iterate)
            m->handlers[m->nhandlers++] = (lm_handler){.dev = d, .section_id = i};
    }
}

lm_device *lm_savevm_device_by_section(lm_mig *m, uint32_t section_id)
{
    if (section_id >= m->ndevices || !m->devices[section_id].ops->save_iterate)
        return NULL;
    return &m->devices[section_id];
}

static const char *hname(const lm_handler *h)
{
    return h->dev ? h->dev->name : h->ops->name;
}

int lm_savevm_setup(lm_mig *m, lm_out *o, lm_error *err)
{
    build_handlers(m);
    uint32_t ack_ids[LM_MAX_DEVICES];
    uint32_t nack = 0;
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        h->sent = 0;
        int ret = 0;
        if (!h->dev) {
            if (h->ops->save_setup)
                ret = h->ops->save_setup(h->opaque, o, err);
        } else {
            /* An empty START binds the section id to the device's identity
             * on the destination; the device's own setup data follows as
             * PART records, so load_state sees exactly the device's puts. */
            ret = put_marker(o, h, LM_REC_SECTION_START, err);
            lm_device_out out = {.o = o, .dev = h->dev, .section_id = h->section_id,
                                 .type = LM_REC_SECTION_PART};
            if (ret == 0 && h->dev->ops->save_setup)
                ret = h->dev->ops->save_setup(h->dev->opaque, &out, err);
            if (h->dev->ops->switchover_ack_needed &&
                h->dev->ops->switchover_ack_needed(h->dev->opaque))
                ack_ids[nack++] = h->section_id;
        }
        if (ret < 0)
            return lm_error_prefix(err, "%s setup", hname(h));
    }
    if (ack_cap(m)) {
        /* The per-device half of the handshake (docs/devices.md): which
         * devices will tell their peer that their initial data is sent. */
        uint8_t p[4 + 4 * LM_MAX_DEVICES];
        int n = lm_fmt_ack_devices_encode(ack_ids, nack, p, sizeof p);
        if (n < 0)
            return lm_error_set(err, n, "cannot encode ACK_DEVICES");
        for (uint32_t i = 0; i < nack; i++)
            LM_ATOMIC_SET(&m->devices[ack_ids[i]].ack, LM_DEVICE_ACK_WAITING);
        int ret = lm_out_record(o, LM_REC_ACK_DEVICES, p, (uint32_t)n);
        if (ret < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, ret, "sending ACK_DEVICES failed");
        }
    }
    return 0;
}

void lm_savevm_pending(lm_mig *m, bool exact, lm_out *o, uint64_t *must, uint64_t *can,
                       lm_error *err)
{
    *must = *can = 0;
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        if (!h->dev) {
            if (exact && h->ops->pending_exact) {
                if (h->ops->pending_exact(h->opaque, o, must, can, err) < 0)
                    return;
            } else if (h->ops->pending_estimate) {
                h->ops->pending_estimate(h->opaque, must, can);
            }
            continue;
        }
        const lm_device_ops *ops = h->dev->ops;
        uint64_t dm = 0, dc = 0;
        if (exact && ops->pending_exact) {
            if (ops->pending_exact(h->dev->opaque, &dm, &dc, err) < 0) {
                lm_error_prefix(err, "device '%s' pending", h->dev->name);
                return;
            }
        } else if (ops->pending_estimate) {
            ops->pending_estimate(h->dev->opaque, &dm, &dc);
        }
        LM_ATOMIC_SET(&h->dev->pending, dm + dc);
        *must += dm;
        *can += dc;
    }
}

static bool iterates(const lm_handler *h, bool in_postcopy)
{
    if (!in_postcopy)
        return true;
    if (h->dev)
        return h->dev->ops->has_postcopy && h->dev->ops->has_postcopy(h->dev->opaque);
    return h->ops->has_postcopy && h->ops->has_postcopy(h->opaque);
}

/* Runs handler h with a byte budget; returns its iterate result and adds
 * what it wrote to *used. */
static int run_one(lm_handler *h, lm_out *o, uint64_t share, uint64_t *used, lm_error *err)
{
    uint64_t before = lm_out_bytes(o);
    int ret;
    if (h->dev) {
        lm_device_out out = {.o = o, .dev = h->dev, .section_id = h->section_id,
                             .type = LM_REC_SECTION_PART};
        ret = h->dev->ops->save_iterate(h->dev->opaque, &out, share, err);
    } else {
        ret = h->ops->save_iterate(h->opaque, o, share, err);
    }
    *used = lm_out_bytes(o) - before;
    h->sent += *used;
    if (ret < 0)
        lm_error_prefix(err, "%s iterate", hname(h));
    return ret;
}

int lm_savevm_iterate(lm_mig *m, lm_out *o, uint64_t budget, bool in_postcopy, lm_error *err)
{
    unsigned n = m->nhandlers, active = 0;
    for (unsigned i = 0; i < n; i++)
        if (iterates(&m->handlers[i], in_postcopy))
            active++;
    if (!active)
        return 1;
    bool unfinished[LM_MAX_HANDLERS] = {false};
    unsigned nunfinished = 0;
    uint64_t left = budget;
    unsigned start = m->rotor++ % n, turn = 0;
    for (unsigned k = 0; k < n; k++) {
        unsigned i = (start + k) % n;
        lm_handler *h = &m->handlers[i];
        if (!iterates(h, in_postcopy))
            continue;
        /* Fair share of what is left among the handlers still to run. */
        uint64_t share = left == UINT64_MAX ? UINT64_MAX : left / (active - turn);
        turn++;
        uint64_t used;
        int ret = run_one(h, o, share, &used, err);
        if (ret < 0)
            return ret;
        if (left != UINT64_MAX)
            left = used >= left ? 0 : left - used;
        if (ret == 0) {
            unfinished[i] = true;
            nunfinished++;
        }
    }
    /* A handler with little to send left part of its share unused; when it
     * ran after the others, they have not seen it.  One more round splits
     * the rest among those that still have data, so the window is used
     * whatever the order (bounded: one extra call each). */
    if (left != UINT64_MAX && left >= LM_PAGE_SIZE && nunfinished && nunfinished < active) {
        unsigned turn2 = 0, total = nunfinished;
        for (unsigned k = 0; k < n && left >= LM_PAGE_SIZE; k++) {
            unsigned i = (start + k) % n;
            if (!unfinished[i])
                continue;
            uint64_t share = left / (total - turn2++), used;
            int ret = run_one(&m->handlers[i], o, share, &used, err);
            if (ret < 0)
                return ret;
            left = used >= left ? 0 : left - used;
            if (ret == 1) {
                unfinished[i] = false;
                nunfinished--;
            }
        }
    }
    return nunfinished == 0;
}

int lm_savevm_complete(lm_mig *m, lm_out *o, lm_error *err)
{
    return lm_savevm_complete_some(m, o, 0, err);
}

/* Postcopy splits completion in two (digest §6.2 step 5, §3.10): handlers
 * that cannot run in postcopy finish at the switch, the others at the end. */
int lm_savevm_complete_some(lm_mig *m, lm_out *o, int which, lm_error *err)
{
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        bool pc = h->dev ? h->dev->ops->has_postcopy && h->dev->ops->has_postcopy(h->dev->opaque)
                         : h->ops->has_postcopy && h->ops->has_postcopy(h->opaque);
        if ((which == 1 && pc) || (which == 2 && !pc))
            continue;
        int ret = 0;
        if (!h->dev) {
            if (h->ops->save_complete)
                ret = h->ops->save_complete(h->opaque, o, err);
        } else {
            lm_device_out out = {.o = o, .dev = h->dev, .section_id = h->section_id,
                                 .type = LM_REC_SECTION_PART};
            if (h->dev->ops->save_complete)
                ret = h->dev->ops->save_complete(h->dev->opaque, &out, err);
            if (ret == 0)
                ret = put_marker(o, h, LM_REC_SECTION_END, err);
            LM_ATOMIC_SET(&h->dev->pending, 0);
        }
        if (ret < 0)
            return lm_error_prefix(err, "%s complete", hname(h));
    }
    /* Non-iterable state last, as QEMU does: it may depend on what the
     * iterable devices' completion left behind.  In postcopy it moves at
     * the switch: the destination cannot run without it. */
    for (unsigned i = 0; which != 2 && i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        if (!d->ops->save_state)
            continue;
        lm_device_out out = {.o = o, .dev = d, .section_id = i, .type = LM_REC_SECTION_FULL};
        if (d->ops->save_state(d->opaque, &out, err) < 0)
            return lm_error_prefix(err, "%s state", d->name);
    }
    return 0;
}

void lm_savevm_cleanup(lm_mig *m)
{
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        if (!h->dev && h->ops->save_cleanup)
            h->ops->save_cleanup(h->opaque);
    }
    /* Every device, even one whose setup never ran (API contract). */
    for (unsigned i = 0; i < m->ndevices; i++)
        if (m->devices[i].ops->save_cleanup)
            m->devices[i].ops->save_cleanup(m->devices[i].opaque);
}

/* ========================================================= destination */

static int send_rp(lm_chan *c, uint8_t type, const void *p, uint32_t len, lm_error *err)
{
    uint8_t h[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(type, len, h, sizeof h);
    if (lm_chan_put(c, h, sizeof h) < 0 || (len && lm_chan_put(c, p, len) < 0) ||
        lm_chan_flush(c) < 0)
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
static int maybe_ack(lm_mig *m, lm_loadvm *lv, lm_chan *c, lm_error *err)
{
    if (!lv->ack_devices_seen || lv->ack_sent || lv->ack_waiting)
        return 0;
    int ret = send_rp(c, LM_REC_RP_SWITCHOVER_ACK, NULL, 0, err);
    if (ret < 0)
        return lm_error_prefix(err, "sending the switchover ack");
    lv->ack_sent = true;
    lm_event ev = {.type = LM_EVENT_SWITCHOVER_ACK};
    lm_emit(m, &ev);
    return 0;
}

int lm_loadvm_setup(lm_mig *m, lm_loadvm *lv, lm_error *err)
{
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        d->in_bound = d->in_started = d->in_ended = d->in_ready = d->in_waited = false;
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
    (void)lv;
    return 0;
}

void lm_loadvm_cleanup(lm_mig *m, lm_loadvm *lv)
{
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

static lm_device *find_bound(lm_mig *m, uint32_t section_id)
{
    for (unsigned i = 0; i < m->ndevices; i++)
        if (m->devices[i].in_bound && m->devices[i].in_section_id == section_id)
            return &m->devices[i];
    return NULL;
}

/* START/FULL: finds the local device by (name, instance), checks the
 * version and binds the section id. */
static int bind(lm_mig *m, uint8_t type, const lm_section_hdr *s, lm_device **out,
                lm_error *err)
{
    const char *what = lm_rec_type_name(type);
    lm_device *d = NULL;
    for (unsigned i = 0; i < m->ndevices; i++)
        if (!strcmp(m->devices[i].name, s->name) && m->devices[i].instance == s->instance)
            d = &m->devices[i];
    if (!d)
        return lm_error_set(err, -ENOENT, "%s: unknown device '%s' instance %" PRIu32
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
        return lm_error_set(err, -EPROTO, "%s: section id %" PRIu32 " of device '%s' is "
                                          "already bound to device '%s'",
                            what, s->section_id, d->name, other->name);
    if (d->in_bound && d->in_section_id != s->section_id)
        return lm_error_set(err, -EPROTO, "%s: device '%s' arrives with section id %" PRIu32
                                          ", it had %" PRIu32,
                            what, d->name, s->section_id, d->in_section_id);
    if (d->in_bound && d->in_version != s->version)
        return lm_error_set(err, -EPROTO, "%s: device '%s' changes version %" PRIu32
                                          " -> %" PRIu32 " within one stream",
                            what, d->name, d->in_version, s->version);
    d->in_bound = true;
    d->in_section_id = s->section_id;
    d->in_version = s->version;
    *out = d;
    return 0;
}

int lm_loadvm_section(lm_mig *m, lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
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
            return lm_error_set(err, -EPROTO, "SECTION_START for device '%s', which is not "
                                              "iterable here", d->name);
        if (d->in_started)
            return lm_error_set(err, -EPROTO, "second SECTION_START for device '%s'", d->name);
        d->in_started = true;
        break;
    case LM_REC_SECTION_FULL:
        if ((ret = bind(m, h->type, &s, &d, err)) < 0)
            return ret;
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
            return maybe_ack(m, lv, c, err);
        }
    }
    return 0;
}

int lm_loadvm_ack_devices(lm_mig *m, lm_loadvm *lv, lm_chan *c, const lm_rec_hdr *h,
                          lm_error *err)
{
    uint8_t p[4 + 4 * LM_ACK_DEVICES_MAX];
    uint32_t ids[LM_ACK_DEVICES_MAX], n = 0;
    if (lm_chan_read_full(c, p, h->len) < 0) /* len <= sizeof p: header check */
        return lm_chan_get_error(c, err);
    if (lm_fmt_ack_devices_decode(p, h->len, ids, LM_ACK_DEVICES_MAX, &n, err) < 0)
        return err && err->code ? err->code : -EPROTO;
    if (!lv->ack_feature)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES without the switchover-ack feature");
    if (lv->ack_devices_seen)
        return lm_error_set(err, -EPROTO, "second ACK_DEVICES record");
    lv->ack_devices_seen = true;
    int ret;
    for (uint32_t i = 0; i < n; i++) {
        lm_device *d = find_bound(m, ids[i]);
        if (!d || !d->in_started)
            return lm_error_set(err, -EPROTO, "ACK_DEVICES: section id %" PRIu32
                                              " was never started", ids[i]);
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
    return maybe_ack(m, lv, c, err);
}

int lm_loadvm_eos(lm_mig *m, lm_loadvm *lv, lm_error *err)
{
    for (unsigned i = 0; i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        if (d->in_started && !d->in_ended)
            return lm_error_set(err, -EPROTO, "device '%s': end of stream before its "
                                              "SECTION_END", d->name);
    }
    if (lv->ack_feature && !lv->ack_devices_seen)
        return lm_error_set(err, -EPROTO, "end of stream without ACK_DEVICES although "
                                          "switchover-ack was negotiated");
    return 0;
}
