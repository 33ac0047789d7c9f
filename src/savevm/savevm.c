/*
 * savevm.c - the registry of state handlers (RAM and the host's devices)
 * and the source's drivers that run them: setup, pending, iterate,
 * complete and cleanup (docs/devices.md).
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
 * Threads: savevm.h.  The destination's drivers are in loadvm.c.
 */
#include "savevm/savevm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Less budget than a page is not worth another round. */
#define MIN_SHARE 4096

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

int lm_savevm_register(lm_savevm *sv, const char *name, uint32_t instance, uint32_t version,
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
        return lm_error_set(err, -EINVAL, "device '%s': needs save_iterate or save_state", name);
    if (sv->ndevices >= LM_MAX_DEVICES)
        return lm_error_set(err, -ENOSPC, "device '%s': at most %d devices", name, LM_MAX_DEVICES);
    for (unsigned i = 0; i < sv->ndevices; i++)
        if (!strcmp(sv->devices[i].name, name) && sv->devices[i].instance == instance)
            return lm_error_set(err, -EEXIST,
                                "device '%s' instance %" PRIu32 " is already registered", name,
                                instance);
    lm_device *d = &sv->devices[sv->ndevices];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->instance = instance;
    d->version = version;
    d->ops = ops;
    d->opaque = opaque;
    sv->ndevices++;
    return 0;
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

/* n: the device count the caller read under its lock (entries below it
 * never change). */
unsigned lm_savevm_query(lm_savevm *sv, unsigned n, lm_device_info *out, unsigned max)
{
    for (unsigned i = 0; i < n && i < max; i++) {
        lm_device *d = &sv->devices[i];
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

int lm_device_put(lm_device_out *out, const void *data, size_t len, lm_error *err)
{
    if (!out || !out->dev)
        return lm_error_set(err, -EINVAL, "lm_device_put: no device output");
    if (len > LM_DEVICE_PUT_MAX)
        return lm_error_set(err, -EMSGSIZE, "device '%s': put of %zu bytes above %u",
                            out->dev->name, len, LM_DEVICE_PUT_MAX);
    lm_device *d = out->dev;
    lm_section_hdr s = {.section_id = out->section_id,
                        .instance = d->instance,
                        .version = d->version,
                        .name_len = (uint8_t)strlen(d->name)};
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
    lm_out_account(out->o, total);
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
static void build_handlers(lm_savevm *m, const lm_handler_ops *ram, void *ram_opaque)
{
    m->handlers[0] = (lm_handler){.ops = ram, .opaque = ram_opaque};
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

lm_device *lm_savevm_device_by_section(lm_savevm *m, uint32_t section_id)
{
    if (section_id >= m->ndevices || !m->devices[section_id].ops->save_iterate)
        return NULL;
    return &m->devices[section_id];
}

static const char *hname(const lm_handler *h)
{
    return h->dev ? h->dev->name : h->ops->name;
}

int lm_savevm_setup(lm_savevm *m, const lm_handler_ops *ram, void *ram_opaque, bool ack, lm_out *o,
                    lm_error *err)
{
    build_handlers(m, ram, ram_opaque);
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
            lm_device_out out = {
                .o = o, .dev = h->dev, .section_id = h->section_id, .type = LM_REC_SECTION_PART};
            if (ret == 0 && h->dev->ops->save_setup)
                ret = h->dev->ops->save_setup(h->dev->opaque, &out, err);
            if (h->dev->ops->switchover_ack_needed &&
                h->dev->ops->switchover_ack_needed(h->dev->opaque))
                ack_ids[nack++] = h->section_id;
        }
        if (ret < 0)
            return lm_error_prefix(err, "%s setup", hname(h));
    }
    if (ack) {
        /* The per-device half of the handshake (docs/devices.md): which
         * devices will tell their peer that their initial data is sent. */
        uint8_t p[4 + 4 * LM_MAX_DEVICES];
        int n = lm_fmt_ack_devices_encode(ack_ids, nack, p, sizeof p);
        if (n < 0)
            return lm_error_set(err, n, "cannot encode ACK_DEVICES");
        for (uint32_t i = 0; i < nack; i++)
            LM_ATOMIC_SET(&m->devices[ack_ids[i]].ack, LM_DEVICE_ACK_WAITING);
        int ret = lm_rec_write(o->chan, LM_REC_ACK_DEVICES, p, (uint32_t)n);
        if (ret < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, ret, "sending ACK_DEVICES failed");
        }
    }
    return 0;
}

void lm_savevm_pending(lm_savevm *m, bool exact, lm_out *o, uint64_t *must, uint64_t *can,
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
        lm_device_out out = {
            .o = o, .dev = h->dev, .section_id = h->section_id, .type = LM_REC_SECTION_PART};
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

int lm_savevm_iterate(lm_savevm *m, lm_out *o, uint64_t budget, bool in_postcopy, lm_error *err)
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
    if (left != UINT64_MAX && left >= MIN_SHARE && nunfinished && nunfinished < active) {
        unsigned turn2 = 0, total = nunfinished;
        for (unsigned k = 0; k < n && left >= MIN_SHARE; k++) {
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

/* Postcopy splits completion in two (digest §6.2 step 5, §3.10): handlers
 * that cannot run in postcopy finish at the switch, the others at the end. */
int lm_savevm_complete(lm_savevm *m, lm_out *o, lm_complete_which which, lm_error *err)
{
    for (unsigned i = 0; i < m->nhandlers; i++) {
        lm_handler *h = &m->handlers[i];
        bool pc = h->dev ? h->dev->ops->has_postcopy && h->dev->ops->has_postcopy(h->dev->opaque)
                         : h->ops->has_postcopy && h->ops->has_postcopy(h->opaque);
        if ((which == LM_COMPLETE_NO_POSTCOPY && pc) || (which == LM_COMPLETE_POSTCOPY && !pc) ||
            (which == LM_COMPLETE_DEVICES && !h->dev))
            continue;
        int ret = 0;
        if (!h->dev) {
            if (h->ops->save_complete)
                ret = h->ops->save_complete(h->opaque, o, err);
        } else {
            lm_device_out out = {
                .o = o, .dev = h->dev, .section_id = h->section_id, .type = LM_REC_SECTION_PART};
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
    for (unsigned i = 0; which != LM_COMPLETE_POSTCOPY && i < m->ndevices; i++) {
        lm_device *d = &m->devices[i];
        if (!d->ops->save_state)
            continue;
        lm_device_out out = {.o = o, .dev = d, .section_id = i, .type = LM_REC_SECTION_FULL};
        uint64_t before = LM_ATOMIC_GET(&d->bytes);
        if (d->ops->save_state(d->opaque, &out, err) < 0)
            return lm_error_prefix(err, "%s state", d->name);
        /* At least one FULL per device, even when it put nothing: the
         * destination refuses to run without every device's state
         * (loadvm.c lm_loadvm_check_complete, issue 12 defect 2), and an
         * empty put is how "nothing to say" travels. */
        if (LM_ATOMIC_GET(&d->bytes) == before && lm_device_put(&out, NULL, 0, err) < 0)
            return lm_error_prefix(err, "%s state", d->name);
    }
    return 0;
}

void lm_savevm_cleanup(lm_savevm *m)
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
