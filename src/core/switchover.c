/*
 * switchover.c - the source's switchover policy and steps: the 100 ms
 * counters (bandwidth, threshold, expected downtime), the rate window, the
 * adaptive extra round, and the actions lm_iteration_run takes: precopy
 * completion, the switch to postcopy, postcopy completion (digest §3.4,
 * §3.9, §3.10, §6.2).  Runs on the migration thread; waits take only
 * m->lock.
 */
#include "core/iteration.h"
#include "core/outgoing.h"
#include "util/thread.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* Below this many bytes left, another live round cannot shorten the pause
 * by more than a fraction of a millisecond at loopback speeds. */
#define ADAPTIVE_MIN_PENDING (1ull << 20)
#define ADAPTIVE_MIN_FLOOR (64u << 10)
#define ADAPTIVE_MAX_EXTRA_ROUNDS 10
#define DRAIN_WAIT_MIN_NS 2000000ull
#define DRAIN_WAIT_MAX_NS 50000000ull
#define INFLIGHT_MIN (256u << 10)
#define INFLIGHT_WAIT_MIN_NS 200000ull

uint64_t lm_sw_preempt_bytes(const lm_outgoing *g)
{
    return g->preempt ? lm_chan_bytes_written(g->preempt) : 0;
}

void lm_sw_reload_params(lm_outgoing *g)
{
    lm_mig *m = g->m;
    pthread_mutex_lock(&m->lock);
    if (g->params_gen != m->params_gen || g->params_gen == 0) {
        g->params = m->params;
        g->params_gen = m->params_gen ? m->params_gen : 1;
        g->caps_pause = m->caps & (1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER);
        /* After the switch the background push obeys max-postcopy-bandwidth
         * (0: unlimited); requested pages never wait for the window. */
        lm_rl_set(&g->rl,
                  g->o.postcopy ? g->params.max_postcopy_bandwidth : g->params.max_bandwidth);
    }
    pthread_mutex_unlock(&m->lock);
    /* xbzrle-cache-size applies at once, as in QEMU (this thread owns the
     * cache; the allocation is done without m->lock). */
    lm_ram_xbz_resize(&m->ram, g->params.xbzrle_cache_size);
}

static uint64_t switchover_bw(const lm_outgoing *g)
{
    if (g->params.avail_switchover_bandwidth)
        return g->params.avail_switchover_bandwidth;
    return g->bandwidth;
}

/* Bytes written that the kernel still holds on the main and multifd
 * channels (lm_chan_queued): on a link slower than the socket buffers
 * (1 Gbit/s: tens of milliseconds of data) the pause must drain them
 * before the destination can confirm.  Counted into every switchover
 * decision (iteration.h) and out of the bandwidth estimate. */
static uint64_t queued_bytes(lm_outgoing *g, bool with_cur)
{
    uint64_t q = lm_chan_queued(g->chan);
    if (g->o.mfd)
        q += lm_mfd_send_queued(g->o.mfd, with_cur);
    return q;
}

/* How long the link needs for `bytes` (bw 0: unknown, the longest wait),
 * kept within [min_ns, DRAIN_WAIT_MAX_NS]: a wait for queued bytes to
 * drain, after which the decisions are taken again with fresh figures. */
static uint64_t drain_wait_ns(uint64_t bytes, uint64_t bw, uint64_t min_ns)
{
    uint64_t ns = bw ? bytes * 1000000000ull / bw : DRAIN_WAIT_MAX_NS;
    if (ns < min_ns)
        return min_ns;
    return ns > DRAIN_WAIT_MAX_NS ? DRAIN_WAIT_MAX_NS : ns;
}

/* Beyond QEMU: what is written and not yet delivered stays bounded, to a
 * quarter of the threshold (a quarter of the pause the limit allows) but
 * never under 20 ms of the link (its bandwidth-delay product) nor 256 KiB.
 * Without it a running guest keeps the socket buffers full (MiBs: a third
 * of a second at 100 Mbit/s) and pending + queued could never fit a
 * threshold smaller than them; with it the rest waits as dirty pages,
 * which the guest may still rewrite for free.  Returns true when it
 * waited (the caller loops again). */
bool lm_sw_wait_inflight(lm_outgoing *g, uint64_t now)
{
    if (g->o.postcopy || g->o.last_stage || !g->threshold)
        return false;
    uint64_t bw = switchover_bw(g);
    if (!bw)
        return false;
    uint64_t bound = g->threshold / 4;
    if (bound < bw / 50)
        bound = bw / 50;
    if (bound < INFLIGHT_MIN)
        bound = INFLIGHT_MIN;
    uint64_t q = queued_bytes(g, false); /* in flight: what can drain */
    if (q <= bound)
        return false;
    lm_sw_wait_until(g, now + drain_wait_ns(q - bound, bw, INFLIGHT_WAIT_MIN_NS));
    return true;
}

/* Expected downtime in µs for `pending` bytes: the final sync (its cost was
 * just measured), the data at wire speed, and one round trip for the
 * destination's confirmation. */
static uint64_t expected_downtime_us(const lm_outgoing *g, uint64_t pending)
{
    uint64_t bw = switchover_bw(g);
    uint64_t us = g->m->ram.last_sync_cost_ns / 1000 + LM_ATOMIC_GET(&g->rtt_ns) / 1000 + 200;
    if (bw)
        us += pending * 1000000ull / bw;
    return us;
}

/* Multifd channels write after the hand-off, so their bytes are counted
 * when they show up, not when the pages were queued. */
void lm_sw_account_rl(lm_outgoing *g)
{
    uint64_t total = lm_out_bytes(&g->o);
    lm_rl_account(&g->rl, total - g->rl_seen);
    g->rl_seen = total;
}

int lm_sw_send_ping(lm_outgoing *g)
{
    uint8_t pb[4];
    uint32_t seq = LM_ATOMIC_GET(&g->ping_seq) + 1;
    lm_fmt_u32_encode(seq, pb, sizeof pb);
    LM_ATOMIC_SET(&g->ping_seq, seq);
    LM_ATOMIC_SET(&g->ping_sent_ns, lm_now_ns());
    return lm_rec_send(g->chan, LM_REC_PING, pb, sizeof pb);
}

/* QEMU's migration_update_counters.  The bandwidth used for the threshold
 * is the wire speed measured in windows that were not held back by
 * max-bandwidth, because at switchover the limit is lifted: the pause runs
 * at wire speed.  Until such a window exists, the measured (limited) rate
 * is used, as QEMU does.  Unlike QEMU, the rate is of bytes delivered
 * (written minus what the kernel still holds), not of bytes written: the
 * first windows fill the socket buffers at memory speed, and a link
 * slower than the buffers would be overestimated by their size. */
void lm_sw_update_counters(lm_outgoing *g, uint64_t now)
{
    lm_mig *m = g->m;
    lm_stats *st = &m->stats;
    uint64_t bytes = lm_out_bytes(&g->o);
    LM_ATOMIC_SET(&st->transferred, bytes + g->prior_bytes + lm_sw_preempt_bytes(g));
    uint64_t dt = now - g->win_start_ns;
    if (dt < LM_RATE_WINDOW_NS)
        return;
    uint64_t queued = g->o.postcopy ? 0 : queued_bytes(g, true);
    LM_ATOMIC_SET(&st->queued, queued);
    uint64_t delivered = bytes > queued ? bytes - queued : 0;
    /* A multifd write may be counted by the kernel before its channel
     * counts it: never a negative window. */
    uint64_t wb = delivered > g->win_start_bytes ? delivered - g->win_start_bytes : 0;
    uint64_t pages = LM_ATOMIC_GET(&st->ram.normal) + LM_ATOMIC_GET(&st->ram.duplicate) +
                     LM_ATOMIC_GET(&st->mfd.normal) + LM_ATOMIC_GET(&st->mfd.zero);
    uint64_t rate = wb * 1000000000ull / dt;
    LM_ATOMIC_SET(&st->mbps_x1000, wb * 8ull * 1000000000ull / dt / 1000ull);
    LM_ATOMIC_SET(&st->pages_per_second, (pages - g->win_start_pages) * 1000000000ull / dt);
    /* A window says what the link can do when it moved a MiB, or when
     * bytes were still waiting for it at its end (the link was the
     * bottleneck: a link slower than 10 MB/s never moves a MiB in 100 ms,
     * and was never measured before delivered bytes were counted). */
    if (wb >= (1u << 20) || (wb && queued)) {
        if (!g->win_throttled) {
            g->bandwidth = g->have_unthrottled_bw ? (g->bandwidth * 3 + rate) / 4 : rate;
            g->have_unthrottled_bw = true;
        } else if (!g->have_unthrottled_bw) {
            g->bandwidth = rate;
        }
    }
    uint64_t bw = switchover_bw(g);
    /* Saturating: a uint64 bandwidth may be up to 2^64-1 (QEMU's range,
     * issue 12 defect 4), and the product would wrap to a small threshold. */
    unsigned __int128 th = (unsigned __int128)bw * g->params.downtime_limit / 1000;
    g->threshold = th > UINT64_MAX ? UINT64_MAX : (uint64_t)th;
    LM_ATOMIC_SET(&st->bandwidth, bw);
    if (bw && !g->o.postcopy) {
        uint64_t pending = lm_ram_dirty_left(&m->ram) * LM_PAGE_SIZE + queued;
        LM_ATOMIC_SET(&st->expected_downtime_ms,
                      (int64_t)((expected_downtime_us(g, pending) + 500) / 1000));
    }
    if (!g->file && !LM_ATOMIC_GET(&g->ping_sent_ns))
        lm_sw_send_ping(g); /* a failure is the channel's sticky error: seen by the loop */
    g->win_start_ns = now;
    g->win_start_bytes = delivered > g->win_start_bytes ? delivered : g->win_start_bytes;
    g->win_start_pages = pages;
    g->win_throttled = false;
}

void lm_sw_wait_until(lm_outgoing *g, uint64_t deadline_ns)
{
    lm_mig *m = g->m;
    struct timespec ts = lm_ns_to_timespec(deadline_ns);
    pthread_mutex_lock(&m->lock);
    /* The queue check is an atomic read: no other lock is taken under
     * m->lock (internal.h). */
    if (!m->cancel_requested && !m->shut_received && !lm_pc_src_has_queued(&m->pcs))
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------ iteration ops */

static void op_pending(void *opaque, bool exact, uint64_t *must, uint64_t *can, lm_error *err)
{
    lm_outgoing *g = opaque;
    lm_savevm_pending(&g->m->sv, exact, &g->o, must, can, err);
}

static int op_iterate(void *opaque, uint64_t budget, bool in_postcopy, lm_error *err)
{
    lm_outgoing *g = opaque;
    return lm_savevm_iterate(&g->m->sv, &g->o, budget, in_postcopy, err);
}

static uint64_t op_queued(void *opaque)
{
    lm_outgoing *g = opaque;
    uint64_t q = queued_bytes(g, true);
    g->last_queued = q;
    return q;
}

/* Below this, waiting cannot shorten the pause by more than a millisecond
 * of the link (and by ADAPTIVE_MIN_PENDING at most, a fraction of a
 * millisecond at loopback speeds). */
static uint64_t round_floor(uint64_t bw)
{
    uint64_t ms = bw / 1000;
    if (ms > ADAPTIVE_MIN_PENDING)
        ms = ADAPTIVE_MIN_PENDING;
    return ms < ADAPTIVE_MIN_FLOOR ? ADAPTIVE_MIN_FLOOR : ms;
}

/* Beyond QEMU: what the pause would carry (pending plus queued) may fit
 * the threshold and still be worth one more live round when the guest
 * dirties memory slowly compared with the link, because the round - or
 * letting the queued bytes drain while the guest runs - shrinks what the
 * pause must carry.  QEMU stops as soon as pending <= threshold and
 * spends up to the whole budget; we stop when another round would not at
 * least halve it. */
static bool op_another_round_pays(void *opaque, uint64_t pending, uint64_t queued)
{
    lm_outgoing *g = opaque;
    lm_mig *m = g->m;
    uint64_t bw = switchover_bw(g);
    uint64_t total = pending + queued;
    if (!m->ram.tracking || !bw || total <= round_floor(bw) ||
        g->extra_rounds >= ADAPTIVE_MAX_EXTRA_ROUNDS)
        return false;
    /* Dirtying speed seen by the last sync, in bytes/s. */
    uint64_t rate = LM_ATOMIC_GET(&m->stats.ram.dirty_pages_rate) * LM_PAGE_SIZE;
    uint64_t round_ns = total * 1000000000ull / bw + m->ram.last_sync_cost_ns;
    uint64_t next = rate * round_ns / 1000000000ull;
    if (next * 2 >= total)
        return false;
    g->extra_rounds++;
    return true;
}

/* Nothing to send, but bytes queued in the kernel: wait about as long as
 * the link needs for them (at least 2 ms: each step may take a dirty
 * sync; at most 50 ms: the decision is taken again with fresh figures). */
static void op_wait_drain(void *opaque, uint64_t queued)
{
    lm_outgoing *g = opaque;
    lm_sw_wait_until(g, lm_now_ns() + drain_wait_ns(queued, switchover_bw(g), DRAIN_WAIT_MIN_NS));
}

/* Ready but for the ack, and nothing left to send right now: wait for the
 * return path (or half a window) instead of spinning on dirty syncs.  The
 * flush makes sure the destination has what it needs to approve. */
static void op_wait_ack(void *opaque)
{
    lm_outgoing *g = opaque;
    lm_mig *m = g->m;
    if (lm_chan_flush(g->chan) < 0)
        return; /* the sticky error is seen by the loop */
    struct timespec ts = lm_ns_to_timespec(lm_now_ns() + LM_RATE_WINDOW_NS / 2);
    pthread_mutex_lock(&m->lock);
    if (!m->cancel_requested && !m->shut_received && !m->switchover_acked)
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    pthread_mutex_unlock(&m->lock);
}

/* The start of a switchover, shared by precopy completion and the switch
 * to postcopy (QEMU's migration_switchover_start): stop the guest, the
 * pre-switchover pause when asked, DEVICE, no rate limit, SWITCHOVER_START.
 * Every switchover passes through `device`, with or without
 * pause-before-switchover, as in QEMU since 10.0 (Peter Xu's rework,
 * digest §2.1; postcopy-device, which follows it, is 10.2's).  QEMU up to
 * 9.2 entered `device` only after a pre-switchover pause (active ->
 * completed, active -> postcopy-active otherwise); clients that wait for
 * `completed` or `postcopy-active` see no difference. */
static int switchover_start(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    g->was_running = lm_vm_stop_for_migration(m, LM_RUN_FINISH_MIGRATE);
    g->stopped_vm = true;
    if (g->caps_pause) {
        if (!lm_state_set(m, LM_STATUS_ACTIVE, LM_STATUS_PRE_SWITCHOVER))
            return lm_error_set(err, -ECANCELED, "migration cancelled");
        pthread_mutex_lock(&m->lock);
        while (!m->continue_requested && !m->cancel_requested && !m->shut_received)
            pthread_cond_wait(&m->cond, &m->lock);
        pthread_mutex_unlock(&m->lock);
        if (!lm_state_set(m, LM_STATUS_PRE_SWITCHOVER, LM_STATUS_DEVICE))
            return lm_error_set(err, -ECANCELED, "migration cancelled");
    } else if (!lm_state_set(m, LM_STATUS_ACTIVE, LM_STATUS_DEVICE)) {
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    }
    g->o.last_stage = true;
    if (g->o.mfd)
        lm_mfd_send_set_phase(g->o.mfd, LM_MFD_DOWNTIME);
    lm_rl_set(&g->rl, 0); /* no limit during the pause */
    return lm_rec_write(g->chan, LM_REC_SWITCHOVER_START, NULL, 0);
}

/* The end of both completions: EOS on the main channel and on every
 * multifd channel, then the destination's verdict (RP_SHUT), which alone
 * makes the migration completed. */
int lm_sw_end_stream(lm_outgoing *g, const char *what, lm_error *err)
{
    lm_mig *m = g->m;
    /* The commit point, atomic with lm_mig_cancel's check: a cancel before
     * it wins (no EOS is sent, the source resumes); one after it leaves the
     * state alone and only interrupts the channels, so the migration ends
     * completed (the destination confirmed) or failed with the source
     * stopped, never stuck in 'cancelling' beside a running destination. */
    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    m->committing = !cancelled;
    pthread_mutex_unlock(&m->lock);
    if (cancelled)
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    int ret = lm_rec_send(g->chan, LM_REC_EOS, NULL, 0);
    if (ret == 0 && g->o.mfd)
        ret = lm_mfd_send_finish(g->o.mfd, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "%s", what);
    }
    if (g->file) {
        /* Nobody answers a file: it is saved when it is on disk (QEMU
         * does not sync; a snapshot reported completed should survive a
         * power cut). */
        int fd = lm_chan_fd(g->chan);
        if ((ret = lm_chan_flush(g->chan)) < 0 || (ret = fdatasync(fd) < 0 ? -errno : 0) < 0) {
            lm_chan_get_error(g->chan, err);
            return lm_error_set(err, ret, "%s: writing the file failed", what);
        }
        pthread_mutex_lock(&m->lock);
        m->eos_sent = true;
        m->verdict = true;
        pthread_mutex_unlock(&m->lock);
        LM_ATOMIC_SET(&m->stats.transferred, lm_out_bytes(&g->o) + g->prior_bytes);
        return 0;
    }
    pthread_mutex_lock(&m->lock);
    m->eos_sent = true;
    while (!m->shut_received)
        pthread_cond_wait(&m->cond, &m->lock);
    lm_status_msg verdict = m->shut;
    pthread_mutex_unlock(&m->lock);
    LM_ATOMIC_SET(&m->stats.transferred,
                  lm_out_bytes(&g->o) + g->prior_bytes + lm_sw_preempt_bytes(g));
    if (verdict.status != 0)
        return lm_error_set(err, verdict.status, "destination: %s", verdict.msg);
    return 0;
}

/* Precopy switchover (digest §3.9).  Returns 0 when the destination
 * confirmed, < 0 otherwise. */
static int op_complete(void *opaque, uint64_t pending, lm_error *err)
{
    lm_outgoing *g = opaque;
    lm_mig *m = g->m;
    LM_ATOMIC_SET(&m->stats.expected_downtime_ms,
                  (int64_t)((expected_downtime_us(g, pending) + 500) / 1000));
    LM_ATOMIC_SET(&m->stats.switchover_queued, g->last_queued);
    uint64_t t0 = lm_now_ns();
    int ret = switchover_start(g, err);
    if (ret == -ECANCELED)
        return ret;
    if (ret == 0)
        ret = lm_savevm_complete(&m->sv, &g->o, LM_COMPLETE_ALL, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "sending the final state failed");
    }
    ret = lm_sw_end_stream(g, "sending the final state failed", err);
    if (ret == 0)
        LM_ATOMIC_SET(&m->stats.downtime_us, (lm_now_ns() - t0) / 1000);
    return ret;
}

/* The switch to postcopy (digest §6.2 phase B).  The guest stops; what
 * cannot be sent in postcopy (devices without postcopy support) and the
 * list of owed pages go first; POSTCOPY_RUN lets the destination run, and
 * the PING after it tells us when it does.  Downtime is counted as QEMU
 * does: from the stop until RUN is flushed.  Until RUN may be out, a
 * failure fails the migration and the source resumes; after, it pauses. */
static int op_start_postcopy(void *opaque, lm_error *err)
{
    lm_outgoing *g = opaque;
    lm_mig *m = g->m;
    LM_ATOMIC_SET(&m->stats.switchover_queued, g->last_queued);
    LM_ATOMIC_SET(&g->pc_t0, lm_now_ns());
    int ret = switchover_start(g, err);
    if (ret == -ECANCELED)
        return ret;
    if (ret == 0)
        ret = lm_savevm_complete(&m->sv, &g->o, LM_COMPLETE_NO_POSTCOPY, err);
    if (ret == 0)
        ret = lm_pc_src_send_discard(&m->pcs, &g->o, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "switching to postcopy failed");
    }
    /* From here the destination may run: cancel is refused (the state is
     * a postcopy one) and every failure pauses. */
    if (!lm_state_set(m, LM_STATUS_DEVICE, LM_STATUS_POSTCOPY_DEVICE))
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    g->run_sent = true;
    lm_pc_src_serve(&m->pcs, g->chan);
    uint8_t pb[4];
    uint32_t v = 0x80000000u | (LM_ATOMIC_GET(&g->ping_seq) + 1);
    LM_ATOMIC_SET(&g->run_ping, v);
    lm_fmt_u32_encode(v, pb, sizeof pb);
    ret = lm_rec_write(g->chan, LM_REC_POSTCOPY_RUN, NULL, 0);
    if (ret == 0)
        ret = lm_rec_write(g->chan, LM_REC_PING, pb, sizeof pb);
    /* The multifd channels carry background pages from now on.  A fence
     * after RUN: the destination's channels read no postcopy packet
     * before its main thread processed RUN, so every such page is placed
     * atomically, none is written into memory still being discarded. */
    if (ret == 0 && g->o.mfd) {
        ret = lm_mfd_send_fence(g->o.mfd, err);
        lm_mfd_send_set_phase(g->o.mfd, LM_MFD_POSTCOPY);
    }
    if (ret == 0)
        ret = lm_chan_flush(g->chan);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "sending POSTCOPY_RUN failed");
    }
    uint64_t dt = (lm_now_ns() - LM_ATOMIC_GET(&g->pc_t0)) / 1000;
    LM_ATOMIC_SET(&m->stats.downtime_us, dt);
    g->o.last_stage = false;
    g->o.postcopy = true;
    if (g->preempt) {
        lm_thread_set_background(); /* requested pages go first (lm-rp-preempt) */
        lm_chan_set_io_slice(g->chan, LM_PC_BULK_SLICE);
    }
    g->params_gen = 0; /* reload: the postcopy rate limit applies now */
    lm_sw_reload_params(g);
    return 0;
}

/* Postcopy completion (seed 000, digest §3.10): nothing is owed any more;
 * the complete step of postcopy-capable handlers pushes no RAM.  EOS goes
 * on the preempt channel first (after any requested page being written),
 * then on the main channel; the destination confirms once every owed page
 * is placed. */
static int op_complete_postcopy(void *opaque, lm_error *err)
{
    lm_outgoing *g = opaque;
    lm_mig *m = g->m;
    /* The destination must have confirmed that it runs (postcopy-active). */
    pthread_mutex_lock(&m->lock);
    while (!m->postcopy_run_acked && !m->shut_received && !m->cancel_requested)
        pthread_cond_wait(&m->cond, &m->lock);
    bool acked = m->postcopy_run_acked;
    pthread_mutex_unlock(&m->lock);
    if (!acked)
        return lm_error_set(err, -EPIPE, "the destination did not confirm POSTCOPY_RUN");
    int ret = lm_savevm_complete(&m->sv, &g->o, LM_COMPLETE_POSTCOPY, err);
    if (ret < 0)
        return ret;
    ret = lm_pc_src_end_preempt(&m->pcs, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "sending the end of the postcopy stream failed");
    }
    /* The multifd channels were fenced by RAM's complete step (every
     * background page they carried is placed before the destination reads
     * this EOS); they end now too. */
    return lm_sw_end_stream(g, "sending the end of the postcopy stream failed", err);
}

const lm_iter_ops lm_sw_iter_ops = {
    .pending = op_pending,
    .iterate = op_iterate,
    .queued = op_queued,
    .another_round_pays = op_another_round_pays,
    .wait_drain = op_wait_drain,
    .complete = op_complete,
    .complete_postcopy = op_complete_postcopy,
    .start_postcopy = op_start_postcopy,
    .wait_ack = op_wait_ack,
};
