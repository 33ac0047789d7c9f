/*
 * return_path.c - the source's return-path reader "lm-rp": the
 * destination's records on the main channel (SHUT, ERROR, PONG,
 * SWITCHOVER_ACK, DEVICE_ACK, REQ_PAGES without a preempt channel, and in
 * a recovery RECV_BITMAP and RESUME_ACK),
 * reported under m->lock (a device's ack state: relaxed atomics).  Page
 * requests go to postcopy (postcopy/source.c), which serves them at once
 * on the preempt channel or queues them for the migration thread.  The
 * thread ends at the verdict, or when the channel fails; either way it
 * records why in m->shut and wakes the migration thread.
 */
#include "core/outgoing.h"

#include <errno.h>
#include <stdlib.h>

/* The largest record the destination may send here: a chunk of the
 * received bitmap (recovery), larger than a status message. */
#define RP_MAX_PAYLOAD LM_RECV_BITMAP_MAX

static int handle_pong(lm_outgoing *g, const uint8_t *payload, uint32_t len, lm_error *err)
{
    lm_mig *m = g->m;
    uint32_t v;
    if (lm_fmt_u32_decode(payload, len, &v, err) <= 0)
        return err->code ? err->code : -EPROTO;
    uint32_t rp = LM_ATOMIC_GET(&g->run_ping);
    if (rp && v == rp) {
        /* The destination processed POSTCOPY_RUN: it runs. */
        LM_ATOMIC_SET(&m->stats.switch_pause_us, (lm_now_ns() - LM_ATOMIC_GET(&g->pc_t0)) / 1000);
        pthread_mutex_lock(&m->lock);
        m->postcopy_run_acked = true;
        bool changed = lm_state_set_locked(m, LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_POSTCOPY_ACTIVE);
        pthread_mutex_unlock(&m->lock);
        if (changed)
            lm_emit_status(m);
        return 0;
    }
    uint64_t sent = LM_ATOMIC_GET(&g->ping_sent_ns);
    if (sent && v == LM_ATOMIC_GET(&g->ping_seq)) {
        uint64_t rtt = lm_now_ns() - sent, best = LM_ATOMIC_GET(&g->rtt_ns);
        if (!best || rtt < best)
            LM_ATOMIC_SET(&g->rtt_ns, rtt);
        LM_ATOMIC_SET(&g->ping_sent_ns, 0);
    }
    return 0;
}

static int handle_device_ack(lm_outgoing *g, const uint8_t *payload, uint32_t len, lm_error *err)
{
    uint32_t id;
    uint8_t st;
    if (lm_fmt_device_ack_decode(payload, len, &id, &st, err) <= 0)
        return err->code ? err->code : -EPROTO;
    /* The device table is read-only while a migration runs. */
    lm_device *d = g->ack_cap ? lm_savevm_device_by_section(&g->m->sv, id) : NULL;
    if (!d || LM_ATOMIC_GET(&d->ack) != LM_DEVICE_ACK_WAITING)
        return lm_error_set(err, -EPROTO,
                            "RP_DEVICE_ACK for section %u, which is not waiting "
                            "for an ack",
                            id);
    LM_ATOMIC_SET(&d->ack, st == LM_DEV_ACK_READY ? LM_DEVICE_ACK_ACKED : LM_DEVICE_ACK_FALLBACK);
    return 0;
}

/* Waits for the destination's next record.  In postcopy the destination
 * answers the PING of every 100 ms window (switchover.c), so a return path
 * silent for x-postcopy-timeout-ms is a link that went away without an
 * error (a black hole): every channel is shut down with that reason and
 * the source pauses.  Returns 0 when there is something to read (or an
 * error for the read to report), < 0 when the watchdog fired. */
static int wait_record(lm_outgoing *g, uint64_t *last_bytes, uint64_t *last_ns, lm_error *err)
{
    lm_mig *m = g->m;
    for (;;) {
        int r = lm_chan_wait_readable(g->chan, 100);
        if (r != 0)
            return 0;
        uint64_t now = lm_now_ns(), rd = lm_chan_bytes_read(g->chan);
        pthread_mutex_lock(&m->lock);
        bool pc = m->status == LM_STATUS_POSTCOPY_ACTIVE ||
                  m->status == LM_STATUS_POSTCOPY_DEVICE || m->status == LM_STATUS_POSTCOPY_RECOVER;
        bool pre = m->status == LM_STATUS_ACTIVE || m->status == LM_STATUS_PRE_SWITCHOVER ||
                   m->status == LM_STATUS_DEVICE;
        uint64_t tmo = pc ? m->params.x_postcopy_timeout_ms : m->params.x_precopy_timeout_ms;
        bool ending = m->committing;
        pthread_mutex_unlock(&m->lock);
        /* Precopy (issue 12, dead peers): the destination owes an answer
         * only to a PING (one per 100 ms window while the loop runs) or,
         * once the end of stream is out, its verdict; silence is counted
         * only then, so a source that waits on its own (migrate-continue,
         * max-bandwidth) never times out a live destination. */
        bool armed = pc || (pre && (LM_ATOMIC_GET(&g->ping_sent_ns) || ending));
        /* Once the end of stream is being sent the destination answers
         * nothing until its verdict (no more PINGs go out), while this
         * side may still be writing the multifd channels' last pages:
         * then what we manage to write counts as progress too.  (Before
         * it, writes prove nothing: a black hole takes them until the
         * socket buffers are full.) */
        if (ending)
            rd += lm_chan_bytes_written(g->chan) + LM_ATOMIC_GET(&m->stats.mfd.bytes);
        if (rd != *last_bytes || !armed || !tmo || !*last_ns) {
            /* Counted from the last byte read while armed, or from the
             * first look armed. */
            *last_bytes = rd;
            *last_ns = armed ? now : 0;
            continue;
        }
        if (now - *last_ns < tmo * 1000000ull)
            continue;
        lm_error_set(err, -ETIMEDOUT, "main channel: no data from the destination for %llu ms (%s)",
                     (unsigned long long)tmo,
                     pc ? "x-postcopy-timeout-ms" : "x-precopy-timeout-ms");
        lm_mig_link_down(m, -ETIMEDOUT, err->msg);
        return -ETIMEDOUT;
    }
}

/* Recovery (digest §6.5): the received bitmap, then its end.  Only in
 * postcopy-recover; the ack says how many pages the destination owes,
 * which the bitmap must have made exactly the dirty ones. */
static int handle_recovery(lm_outgoing *g, const lm_rec_hdr *h, const uint8_t *payload,
                           lm_error *err)
{
    lm_mig *m = g->m;
    if (lm_mig_status(m) != LM_STATUS_POSTCOPY_RECOVER)
        return lm_error_set(err, -EPROTO, "%s outside postcopy-recover", lm_rec_type_name(h->type));
    if (h->type == LM_REC_RP_RECV_BITMAP)
        return lm_pc_src_recv_bitmap(&m->pcs, payload, h->len, err);
    uint64_t owed;
    if (lm_fmt_u64_decode(payload, h->len, &owed, err) <= 0)
        return err->code ? err->code : -EPROTO;
    uint64_t dirty = lm_ram_dirty_left(&m->ram);
    if (dirty != owed)
        return lm_error_set(err, -EPROTO,
                            "RP_RESUME_ACK: the destination owes %llu pages but its received "
                            "bitmap left %llu to send",
                            (unsigned long long)owed, (unsigned long long)dirty);
    pthread_mutex_lock(&m->lock);
    /* A destination that resumes had run (only a running one pauses):
     * this confirms POSTCOPY_RUN if the link broke before its PONG did. */
    m->postcopy_run_acked = true;
    bool changed = lm_state_set_locked(m, LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_ACTIVE);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m);
    return 0;
}

static void *rp_thread_fn(void *arg)
{
    lm_outgoing *g = arg;
    lm_mig *m = g->m;
    lm_error err = {0};
    uint8_t *payload = malloc(RP_MAX_PAYLOAD);
    pthread_setname_np(pthread_self(), "lm-rp");
    int ret = payload ? 0 : lm_error_set(&err, -ENOMEM, "out of memory");
    uint64_t last_bytes = 0, last_ns = 0;
    while (ret == 0) {
        lm_rec_hdr h;
        if ((ret = wait_record(g, &last_bytes, &last_ns, &err)) < 0)
            break;
        ret = lm_rec_read_hdr(g->chan, false, &h, &err);
        if (ret == 0)
            ret = lm_rec_read_payload(g->chan, &h, payload, RP_MAX_PAYLOAD, NULL, &err);
        if (ret < 0)
            break;
        switch (h.type) {
        case LM_REC_RP_SHUT:
        case LM_REC_ERROR: {
            lm_status_msg sm;
            if (lm_fmt_status_msg_decode(payload, h.len, &sm, &err) <= 0) {
                ret = err.code ? err.code : -EPROTO;
                break;
            }
            pthread_mutex_lock(&m->lock);
            m->shut_received = true;
            m->verdict = true;
            m->shut = sm;
            /* ERROR, not RP_SHUT: the destination failed before it ever
             * ran the guest and never will (format.md 4.9); the source
             * may resume even after POSTCOPY_RUN went out. */
            m->dest_never_ran = h.type == LM_REC_ERROR;
            if (h.type == LM_REC_ERROR && !sm.status)
                m->shut.status = -EIO;
            m->rp_running = false;
            pthread_cond_broadcast(&m->cond);
            pthread_mutex_unlock(&m->lock);
            free(payload);
            return NULL; /* the destination closes after its verdict */
        }
        case LM_REC_RP_REQ_PAGES:
            ret = lm_pc_src_request(&m->pcs, payload, h.len, &err);
            break;
        case LM_REC_RP_PONG:
            ret = handle_pong(g, payload, h.len, &err);
            break;
        case LM_REC_RP_SWITCHOVER_ACK: {
            if (!g->ack_cap) {
                ret = lm_error_set(&err, -EPROTO,
                                   "RP_SWITCHOVER_ACK without the "
                                   "switchover-ack capability");
                break;
            }
            pthread_mutex_lock(&m->lock);
            bool first = !m->switchover_acked;
            m->switchover_acked = true;
            pthread_cond_broadcast(&m->cond);
            pthread_mutex_unlock(&m->lock);
            if (first) {
                lm_event ev = {.type = LM_EVENT_SWITCHOVER_ACK};
                lm_emit(m, &ev);
            }
            break;
        }
        case LM_REC_RP_DEVICE_ACK:
            ret = handle_device_ack(g, payload, h.len, &err);
            break;
        case LM_REC_RP_RECV_BITMAP:
        case LM_REC_RP_RESUME_ACK:
            ret = handle_recovery(g, &h, payload, &err);
            break;
        default:
            ret = lm_error_set(&err, -EPROTO, "unexpected record %s", lm_rec_type_name(h.type));
        }
    }
    /* The return path is gone without a verdict: record why (a transport
     * failure, not the destination's word) and wake the migration thread. */
    lm_error_prefix(&err, "return path");
    pthread_mutex_lock(&m->lock);
    if (!m->shut_received) {
        m->shut_received = true;
        m->shut.status = err.code ? err.code : -EIO;
        snprintf(m->shut.msg, sizeof m->shut.msg, "%s", err.code ? err.msg : "return path closed");
    }
    m->rp_running = false;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    free(payload);
    return NULL;
}

int lm_rp_start(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    pthread_mutex_lock(&m->lock);
    m->rp_running = true;
    pthread_mutex_unlock(&m->lock);
    int ret = -pthread_create(&g->rp_thread, NULL, rp_thread_fn, g);
    if (ret < 0) {
        pthread_mutex_lock(&m->lock);
        m->rp_running = false;
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, ret, "cannot start the return-path thread");
    }
    g->rp_started = true;
    return 0;
}

void lm_rp_join(lm_outgoing *g)
{
    if (g->rp_started) {
        pthread_join(g->rp_thread, NULL);
        g->rp_started = false;
    }
}
