/*
 * outgoing.c - the source's migration thread "lm-migration": connects and
 * greets every channel, runs setup, the loop of seed 000 (one step is
 * lm_iteration_run, iteration.c; the policy and the switchover steps are in
 * switchover.c), and cleans up.  It alone writes the main channel; the
 * destination's records come back on the same socket, read by "lm-rp"
 * (return_path.c).
 *
 * Threads around it: "lm-rp" (return_path.c), "lm-rp-preempt" (postcopy's
 * request reader on the preempt channel), "lm-mfd-send/N" (multifd); this
 * thread starts and joins them all.  They wake it through m->cond; cancel,
 * parameter changes and migrate-continue broadcast it too.  A failure or
 * cancel before the end of stream leaves the source running; after it, the
 * destination's SHUT decides (finish()).  After POSTCOPY_RUN may have gone
 * out, a failure pauses (postcopy-paused): the source keeps its memory and
 * stays stopped, and the thread leaves its lm_outgoing for migrate
 * resume=true (resume.c), whose thread uses the connect and the loop here.
 */
#include "core/handshake.h"
#include "core/iteration.h"
#include "core/outgoing.h"

#include "chan/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* ------------------------------------------------------------ handshake */

/* The bound of one connect or HELLO wait: `dflt` ms, or what is left of a
 * recovery's setup (g->setup_deadline_ns), at least 1 ms: a step that
 * starts past the deadline still fails as a timeout, by its own wait. */
static int step_timeout_ms(const lm_outgoing *g, int dflt)
{
    if (!g->setup_deadline_ns)
        return dflt;
    uint64_t now = lm_now_ns();
    uint64_t left = now < g->setup_deadline_ns ? (g->setup_deadline_ns - now) / 1000000 : 0;
    if (left < 1)
        left = 1;
    return left < (uint64_t)dflt ? (int)left : dflt;
}

/* HELLO on one connection: role and index name the channel, the session
 * id ties the channels of this migration together (DESIGN §5). */
static int hello(lm_outgoing *g, lm_chan *c, lm_chan_role role, unsigned index, lm_error *err)
{
    lm_hello h = {.version = LM_FORMAT_VERSION,
                  .role = (uint8_t)role,
                  .kind = g->resuming ? LM_HELLO_RESUME : LM_HELLO_REQUEST,
                  .page_size = LM_PAGE_SIZE,
                  .chan_index = (uint16_t)index,
                  .chan_count = (uint16_t)g->nmfd,
                  .features = g->features};
    memcpy(h.session, g->session, sizeof h.session);
    return lm_hello_request(c, &h, step_timeout_ms(g, LM_HELLO_TIMEOUT_MS), err);
}

/* Test knob (never set in production): LIVEMIG_TEST_MULTIFD is a comma
 * list; "shuffle" connects the main and multifd channels in a random
 * order (the test of channel identification).  The destination reads
 * "delay=C:MS" from the same variable (multifd/recv.c). */
static void read_test_knobs(lm_outgoing *g)
{
    const char *e = getenv("LIVEMIG_TEST_MULTIFD");
    if (!e)
        return;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", e);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!strcmp(t, "shuffle"))
            g->test_shuffle = true;
}

static void drop_own_fd(lm_outgoing *g)
{
    if (g->own_fd)
        close(g->uri.fd);
    g->own_fd = false;
}

/* One connection, cancellable (m->cancel_efd interrupts the lookup and the
 * connect), wrapped in a channel. */
static int connect_one(lm_outgoing *g, const char *name, lm_chan **out, lm_error *err)
{
    int fd = -1;
    int ret = lm_uri_connect_cancellable(&g->uri, step_timeout_ms(g, LM_CONNECT_TIMEOUT_MS),
                                         g->m->cancel_efd, &fd, err);
    if (ret == -ECANCELED) {
        lm_error_clear(err);
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    }
    if (ret < 0)
        return ret;
    ret = lm_chan_new(fd, name, out, err);
    if (ret < 0)
        return ret; /* fd closed by lm_chan_new */
    /* TLS first, then the HELLO inside it (QEMU's order); a resumed
     * channel is handshaken and authenticated again like a new one. */
    lm_tls_creds *cr;
    char host[256];
    lm_mig_tls_get(g->m, &cr, NULL, host, sizeof host);
    if (!cr)
        return 0;
    lm_tls *t = NULL;
    ret = lm_tls_new(cr, fd, host, NULL, &t, err);
    lm_tls_creds_unref(cr);
    if (ret == 0)
        ret = lm_tls_handshake(t, name, step_timeout_ms(g, LM_HELLO_TIMEOUT_MS), g->m->cancel_efd,
                               err);
    if (ret == 0)
        ret = lm_chan_set_tls(*out, t) < 0 ? lm_chan_get_error(*out, err) : 0;
    else
        lm_tls_free(t);
    if (ret < 0) {
        lm_chan_free(*out);
        *out = NULL;
    }
    return ret;
}

/* file: the main channel is the file from its offset on, greeted with a
 * HELLO that nobody answers (a file has no return path, digest §5.10). */
static int open_file(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    int fd = -1;
    int ret = lm_file_open_out(&g->uri, &fd, err);
    if (ret < 0)
        return ret;
    char name[64];
    snprintf(name, sizeof name, "file '%.40s'", g->uri.file);
    if ((ret = lm_chan_new(fd, name, &g->chan, err)) < 0)
        return ret;
    pthread_mutex_lock(&m->lock);
    m->chan = g->chan;
    bool cancelled = m->cancel_requested;
    pthread_mutex_unlock(&m->lock);
    if (cancelled)
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    lm_hello h = {.version = LM_FORMAT_VERSION,
                  .role = LM_ROLE_MAIN,
                  .kind = LM_HELLO_REQUEST,
                  .page_size = LM_PAGE_SIZE,
                  .chan_count = (uint16_t)g->nmfd,
                  .features = g->features};
    memcpy(h.session, g->session, sizeof h.session);
    uint8_t buf[LM_HELLO_SIZE];
    lm_fmt_hello_encode(&h, buf, sizeof buf);
    if (lm_chan_put(g->chan, buf, sizeof buf) < 0)
        return lm_chan_get_error(g->chan, err);
    return 0;
}

/* QEMU's checks for a file: URI (migrate_prepare / migrate_caps_check):
 * what needs the destination to answer cannot work on a file. */
static int file_caps_check(uint64_t caps, const lm_params *p, lm_error *err)
{
    static const lm_cap need_rp[] = {LM_CAP_POSTCOPY_RAM, LM_CAP_POSTCOPY_PREEMPT,
                                     LM_CAP_SWITCHOVER_ACK, LM_CAP_RETURN_PATH};
    for (unsigned i = 0; i < sizeof need_rp / sizeof need_rp[0]; i++)
        if (caps & (1ull << need_rp[i]))
            return lm_error_set(err, -EINVAL,
                                "capability '%s' needs a return path, which a file: URI does "
                                "not have (turn it off to save to a file)",
                                lm_cap_name(need_rp[i]));
    if ((caps & (1ull << LM_CAP_MULTIFD)) && !(caps & (1ull << LM_CAP_MAPPED_RAM)))
        return lm_error_set(err, -EINVAL,
                            "multifd on a file: URI needs capability 'mapped-ram' (its "
                            "channels write pages at fixed offsets)");
    if ((caps & (1ull << LM_CAP_MAPPED_RAM)) && p->multifd_compression != LM_COMPRESS_NONE)
        return lm_error_set(err, -EINVAL,
                            "mapped-ram stores pages as they are: set multifd-compression "
                            "none");
    if (p->direct_io && !(caps & (1ull << LM_CAP_MAPPED_RAM)))
        return lm_error_set(err, -EINVAL,
                            "direct-io needs capability 'mapped-ram' (only its page I/O can be "
                            "aligned for O_DIRECT)");
    return 0;
}

/* Connects and greets the main channel and, with multifd, every multifd
 * channel.  Channels are named by their HELLO, so the order does not matter
 * to the destination (the shuffle knob proves it). */
int lm_og_connect_channels(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    if (g->file)
        return open_file(g, err);
    unsigned n = g->nmfd + 1, order[LM_MULTIFD_MAX_CHANNELS + 1];
    for (unsigned i = 0; i < n; i++)
        order[i] = i; /* 0: main, i: multifd channel i - 1 */
    if (g->test_shuffle) {
        for (unsigned i = n - 1; i > 0; i--) {
            unsigned r;
            if (getrandom(&r, sizeof r, 0) != sizeof r)
                r = i;
            unsigned j = r % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    for (unsigned k = 0; k < n; k++) {
        unsigned which = order[k];
        char name[32];
        if (which)
            snprintf(name, sizeof name, "multifd channel %u", which - 1);
        else
            snprintf(name, sizeof name, "main channel");
        lm_chan *c;
        int ret = connect_one(g, name, &c, err);
        if (ret < 0)
            return which && ret != -ECANCELED ? lm_error_prefix(err, "%s", name) : ret;
        bool cancelled;
        if (which == 0) {
            g->chan = c;
            pthread_mutex_lock(&m->lock);
            m->chan = c;
            cancelled = m->cancel_requested;
            pthread_mutex_unlock(&m->lock);
        } else {
            g->mfd_chans[which - 1] = c;
            cancelled = !lm_mig_aux_chan_add(m, c);
        }
        if (cancelled)
            return lm_error_set(err, -ECANCELED, "migration cancelled");
        ret = which ? hello(g, c, LM_ROLE_MULTIFD, which - 1, err)
                    : hello(g, c, LM_ROLE_MAIN, 0, err);
        if (ret < 0)
            return which ? lm_error_prefix(err, "%s", name) : ret;
    }
    return 0;
}

/* postcopy-preempt: the second connection, right after the main one said
 * HELLO (so the destination meets them in that order, though it tells
 * them apart by role).  Made at setup rather than at the switch, so that
 * the switch itself (the guest is stopped) does not pay a connect. */
int lm_og_connect_preempt(lm_outgoing *g, lm_error *err)
{
    if (g->uri.kind == LM_URI_FD)
        return lm_error_set(err, -EINVAL,
                            "postcopy-preempt needs a second connection: use a "
                            "tcp: or unix: URI, not fd:");
    int ret = connect_one(g, "preempt channel", &g->preempt, err);
    if (ret < 0)
        return ret == -ECANCELED ? ret : lm_error_prefix(err, "preempt channel");
    if (!lm_mig_aux_chan_add(g->m, g->preempt))
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    ret = hello(g, g->preempt, LM_ROLE_PREEMPT, 0, err);
    return ret < 0 ? lm_error_prefix(err, "preempt channel") : 0;
}

/* ------------------------------------------------------------ the thread */

/* What the loop's step needs, snapshotted (lm_iteration_run). */
static lm_iter_state iter_state(lm_outgoing *g)
{
    lm_mig *m = g->m;
    lm_iter_state st = {.threshold = g->threshold,
                        .budget = lm_rl_budget(&g->rl),
                        .force_sync = lm_thr_sync_due(g, lm_now_ns())};
    pthread_mutex_lock(&m->lock);
    st.in_postcopy =
        m->status == LM_STATUS_POSTCOPY_ACTIVE || m->status == LM_STATUS_POSTCOPY_DEVICE;
    st.start_postcopy = m->start_postcopy;
    /* Switchover-ack (digest §7): the destination's ack gates the switch,
     * unless the guest is not running (waiting gains nothing then). */
    st.can_switchover = !g->ack_cap || m->switchover_acked;
    pthread_mutex_unlock(&m->lock);
    if (!st.can_switchover && lm_vm_runstate(m) != LM_RUN_RUNNING)
        st.can_switchover = true;
    return st;
}

/* After POSTCOPY_RUN went out, and before the destination confirmed it
 * (postcopy-device): did the destination say, with an ERROR on the return
 * path, that it failed without ever running the guest (QEMU 10.2's
 * postcopy-device -> failed)?  Its reason may still be on its way when our
 * own channel failed first: the return path gets a bounded time to read it
 * (it ends at the verdict, or at the link's failure).  Without that word
 * the destination may run, and the source pauses. */
static bool dest_never_ran(lm_outgoing *g)
{
    lm_mig *m = g->m;
    if (g->resuming) /* the destination paused, so it ran */
        return false;
    pthread_mutex_lock(&m->lock);
    uint64_t deadline = lm_now_ns() + 1000000000ull;
    struct timespec ts = lm_ns_to_timespec(deadline);
    while (!m->postcopy_run_acked && m->rp_running && lm_now_ns() < deadline)
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    bool never = !m->postcopy_run_acked && m->verdict && m->dest_never_ran;
    pthread_mutex_unlock(&m->lock);
    return never;
}

static void finish(lm_outgoing *g, int ret, lm_error *err)
{
    lm_mig *m = g->m;
    lm_status final = LM_STATUS_COMPLETED;
    bool restart = false;
    bool dest_failed = false; /* the destination's own verdict: load failed */

    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    bool committed = m->eos_sent;
    pthread_mutex_unlock(&m->lock);

    bool never_ran = ret < 0 && g->run_sent && dest_never_ran(g);
    if (ret < 0 && g->run_sent && !never_ran) {
        /* POSTCOPY_RUN may have reached the destination, so it may run the
         * guest with part of its memory: neither side may fail.  Pause,
         * keep the guest stopped here and every page we still owe (the
         * dirty maps stay for recovery), and say why. */
        final = LM_STATUS_POSTCOPY_PAUSED;
        g->paused = true;
        if (g->chan) /* a recovery's channel counts from zero: keep the total */
            g->prior_bytes += lm_chan_bytes_written(g->chan);
        pthread_mutex_lock(&m->lock);
        if (m->verdict && m->shut.status)
            lm_error_set(err, m->shut.status, "destination: %s", m->shut.msg);
        pthread_mutex_unlock(&m->lock);
        lm_error_prefix(err, "postcopy paused (the source keeps the guest's memory and stays "
                             "stopped)");
        lm_mig_set_error(m, err);
    } else if (ret < 0) {
        if (cancelled && !committed) {
            final = LM_STATUS_CANCELLED;
        } else {
            final = LM_STATUS_FAILED;
            /* Prefer the destination's own reason when it sent one before
             * closing: its ERROR may race our write error.  The return path
             * ends by itself once the destination closes (bounded wait). */
            pthread_mutex_lock(&m->lock);
            uint64_t deadline = lm_now_ns() + 1000000000ull;
            struct timespec ts = lm_ns_to_timespec(deadline);
            while (m->rp_running && lm_now_ns() < deadline)
                pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            if (m->verdict && m->shut.status && !m->error.code)
                lm_error_set(&m->error, m->shut.status, "destination: %s", m->shut.msg);
            /* A destination that says its load failed never started the
             * guest (it starts only after a load that succeeded), so even a
             * committed switchover may resume here.  Small guests hit this:
             * their whole stream fits in the socket buffers, and EOS is
             * out before the destination has read the first record. */
            dest_failed = m->verdict && m->shut.status;
            if (never_ran && m->error.code)
                lm_error_prefix(&m->error, "postcopy failed before the destination ran the "
                                           "guest (the source resumes it)");
            pthread_mutex_unlock(&m->lock);
            if (committed && !dest_failed && !g->bgsnap)
                lm_error_prefix(err, "switchover was committed but not confirmed; the source "
                                     "stays paused to avoid running twice (use 'cont' if the "
                                     "destination is not running)");
        }
        lm_mig_set_error(m, err);
        restart = g->stopped_vm && g->was_running && (!committed || dest_failed || never_ran);
    }

    /* Stop the return path and the channels: shut down, forget them where
     * cancel could reach them (under lock), then join and free. */
    const char *why = ret < 0 ? "migration ended" : "migration completed";
    if (g->chan)
        lm_chan_shutdown(g->chan, why);
    if (g->o.mfd && ret < 0)
        lm_mfd_send_shutdown(g->o.mfd, why);
    if (g->preempt)
        lm_chan_shutdown(g->preempt, why);
    lm_mig_aux_chans_clear(m);
    lm_rp_join(g);
    lm_pc_src_reader_join(&m->pcs);
    lm_pc_src_stop_serving(&m->pcs);
    lm_mfd_send_free(g->o.mfd); /* after the main channel: its failures are reported there */
    g->o.mfd = NULL;
    lm_mapped_free(g->mapped); /* after its writers */
    g->mapped = g->o.mapped = NULL;
    for (unsigned i = 0; i < g->nmfd; i++) {
        lm_chan_free(g->mfd_chans[i]); /* connected but never handed over */
        g->mfd_chans[i] = NULL;        /* a recovery connects them again */
    }
    uint64_t pbytes = lm_sw_preempt_bytes(g);
    if (g->paused) { /* a recovery's preempt channel counts from zero too */
        g->prior_bytes += pbytes;
        pbytes = 0;
    }
    lm_chan_free(g->preempt);
    g->preempt = NULL;
    if (!g->paused)
        lm_savevm_cleanup(&m->sv);

    if (final == LM_STATUS_COMPLETED && g->bgsnap)
        ; /* a snapshot leaves the guest as it is (running) */
    else if (final == LM_STATUS_COMPLETED)
        lm_vm_start_after_migration(m, LM_RUN_POSTMIGRATE);
    else if (g->paused)
        ; /* stays stopped (finish-migrate): the destination may be running */
    else if (g->stopped_vm)
        lm_vm_start_after_migration(m, restart ? LM_RUN_RUNNING : LM_RUN_PAUSED);

    lm_stats *st = &m->stats;
    LM_ATOMIC_SET(&st->end_ns, lm_now_ns());
    if (g->chan)
        LM_ATOMIC_SET(&st->transferred, (g->paused ? 0 : lm_chan_bytes_written(g->chan)) +
                                            g->prior_bytes + pbytes +
                                            LM_ATOMIC_GET(&st->mfd.bytes));
    uint64_t total_ns = LM_ATOMIC_GET(&st->end_ns) - LM_ATOMIC_GET(&st->start_ns);
    if (final == LM_STATUS_COMPLETED && total_ns) {
        /* mbps at completion is the average over the whole migration. */
        uint64_t b = LM_ATOMIC_GET(&st->transferred);
        LM_ATOMIC_SET(&st->mbps_x1000, b * 8ull * 1000000000ull / total_ns / 1000ull);
        LM_ATOMIC_SET(&st->ram.remaining, 0);
    }

    pthread_mutex_lock(&m->lock);
    m->chan = NULL;
    lm_status cur = m->status;
    bool changed = false;
    if (final == LM_STATUS_CANCELLED) {
        if (cur != LM_STATUS_CANCELLING)
            lm_state_set_locked(m, cur, LM_STATUS_CANCELLING);
        changed = lm_state_set_locked(m, LM_STATUS_CANCELLING, LM_STATUS_CANCELLED);
    } else if (final == LM_STATUS_FAILED) {
        if (cur == LM_STATUS_CANCELLING) /* cancelling only leads to cancelled */
            final = LM_STATUS_CANCELLED;
        changed = lm_state_set_locked(m, cur, final);
    } else if (final == LM_STATUS_POSTCOPY_PAUSED) {
        changed = lm_state_set_locked(m, cur, final);
    } else {
        lm_status from = g->run_sent ? LM_STATUS_POSTCOPY_ACTIVE
                         : g->bgsnap ? LM_STATUS_ACTIVE /* QEMU: active -> completed */
                                     : LM_STATUS_DEVICE;
        changed = lm_state_set_locked(m, from, LM_STATUS_COMPLETED);
    }
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m);
    lm_chan_free(g->chan);
}

/* Every feature both sides must agree on goes in each HELLO. */
static void choose_features(lm_outgoing *g, uint64_t caps)
{
    if (caps & (1ull << LM_CAP_POSTCOPY_RAM))
        g->features |= LM_FEAT_POSTCOPY;
    if (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT))
        g->features |= LM_FEAT_PREEMPT;
    if (g->ack_cap)
        g->features |= LM_FEAT_SWITCHOVER_ACK;
    if (caps & (1ull << LM_CAP_MAPPED_RAM))
        g->features |= LM_FEAT_MAPPED_RAM;
    if (caps & (1ull << LM_CAP_MULTIFD)) {
        g->features |= LM_FEAT_MULTIFD;
        g->nmfd = g->params.multifd_channels;
        g->mfd_cfg.compression = g->params.multifd_compression;
        g->mfd_cfg.level = g->params.multifd_compression == LM_COMPRESS_ZLIB
                               ? g->params.multifd_zlib_level
                               : g->params.multifd_zstd_level;
        g->mfd_cfg.zpd = g->params.zero_page_detection;
        read_test_knobs(g);
    }
}

/* Connects, starts the helper threads, runs the handlers' setup. */
static int setup(lm_outgoing *g, uint64_t caps, lm_error *err)
{
    lm_mig *m = g->m;
    if (getrandom(g->session, sizeof g->session, 0) != sizeof g->session)
        return lm_error_set(err, -EIO, "getrandom failed");
    int ret = lm_og_connect_channels(g, err);
    if (ret < 0)
        return ret;
    g->o.chan = g->chan;
    if (g->features & LM_FEAT_PREEMPT) {
        ret = lm_og_connect_preempt(g, err);
        if (ret < 0)
            return ret;
    }
    if (g->features & LM_FEAT_MAPPED_RAM) {
        ret = lm_mapped_new(&m->mem, g->uri.file, lm_chan_fd(g->chan), g->params.direct_io,
                            g->nmfd ? g->nmfd : 1, &m->stats.mfd.bytes, &g->mapped, err);
        if (ret < 0)
            return ret;
        g->o.mapped = g->mapped;
        g->mfd_cfg.mapped = g->mapped;
    }
    if (g->nmfd) {
        ret = lm_mfd_send_new(&m->mem, &m->stats.mfd, g->chan, g->mfd_chans, g->nmfd, &g->mfd_cfg,
                              &g->o.mfd, err);
        if (ret < 0)
            return ret;
        memset(g->mfd_chans, 0, sizeof g->mfd_chans); /* the sender's now */
    }
    if (!g->file && (ret = lm_rp_start(g, err)) < 0)
        return ret;
    if (g->preempt) {
        ret = lm_pc_src_reader_start(&m->pcs, g->preempt, g->chan, err);
        if (ret < 0)
            return ret;
    }
    /* A round trip measures the confirmation cost of the switchover; the
     * first one now, flushed at once (queued behind the setup it would
     * measure the first dirty sync), more every window.  A file answers
     * nothing. */
    ret = g->file ? 0 : lm_sw_send_ping(g);
    if (ret == 0) {
        lm_sw_reload_params(g);
        m->ram.guest_running = lm_vm_runstate(m) == LM_RUN_RUNNING;
        m->ram.postcopy_capable = caps & (1ull << LM_CAP_POSTCOPY_RAM);
        m->ram.bgsnap = g->bgsnap;
        m->ram.xbz_on = caps & (1ull << LM_CAP_XBZRLE);
        m->ram.xbz_size = g->params.xbzrle_cache_size;
        ret = lm_savevm_setup(&m->sv, &lm_ram_handler_ops, &m->ram, g->ack_cap, &g->o, err);
    }
    if (ret == 0)
        ret = lm_chan_flush(g->chan);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "setup failed");
    }
    return 0;
}

/* The loop of seed 000 until it breaks: precopy, the switch, postcopy
 * (a recovery re-enters it in postcopy-active, resume.c). */
int lm_og_loop(lm_outgoing *g, lm_error *errp)
{
    lm_mig *m = g->m;
    lm_error err = {0};
    int ret = 0;
    uint64_t now;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        lm_status s = m->status;
        bool rp_gone = m->shut_received, verdict = m->verdict;
        lm_status_msg v = m->shut;
        pthread_mutex_unlock(&m->lock);
        if (s != LM_STATUS_ACTIVE && s != LM_STATUS_POSTCOPY_ACTIVE &&
            s != LM_STATUS_POSTCOPY_DEVICE) {
            ret = lm_error_set(&err, -ECANCELED, "migration cancelled");
            break;
        }
        if (rp_gone) {
            ret = lm_error_set(&err, v.status ? v.status : -EPROTO, "%s%s",
                               verdict ? "destination: " : "",
                               v.status ? v.msg : "destination ended the migration early");
            break;
        }
        if (lm_chan_get_error(g->chan, &err)) {
            ret = err.code;
            break;
        }
        lm_sw_reload_params(g);
        /* Requested pages first, whatever the rate window says. */
        if (g->o.postcopy && lm_pc_src_serve_queue(&m->pcs, &g->o, &err) < 0) {
            ret = err.code ? err.code : -EIO;
            break;
        }
        now = lm_now_ns();
        lm_rl_tick(&g->rl, now);
        lm_sw_account_rl(g);
        lm_sw_update_counters(g, now);
        if (lm_rl_exceeded(&g->rl)) {
            g->win_throttled = true;
            lm_sw_wait_until(g, now + lm_rl_wait_ns(&g->rl, now));
            continue;
        }
        if (lm_sw_wait_inflight(g, now))
            continue;
        lm_iter_state st = iter_state(g);
        lm_iter_result r = lm_iteration_run(&lm_sw_iter_ops, g, &st, &err, &ret);
        lm_sw_account_rl(g);
        if (r == LM_ITER_BREAK)
            break;
    }
    *errp = err;
    return ret;
}

static void *migration_thread_fn(void *arg)
{
    lm_outgoing *g = arg;
    lm_mig *m = g->m;
    lm_error err = {0};
    pthread_setname_np(pthread_self(), "lm-migration");

    lm_sw_reload_params(g);
    pthread_mutex_lock(&m->lock);
    uint64_t caps = m->caps;
    pthread_mutex_unlock(&m->lock);
    choose_features(g, caps);
    g->bgsnap = caps & (1ull << LM_CAP_BACKGROUND_SNAPSHOT);
    g->o.zpd = g->params.zero_page_detection;
    int ret = setup(g, caps, &err);
    if (ret < 0)
        goto out;
    lm_thr_start(g, caps);
    uint64_t now = lm_now_ns();
    LM_ATOMIC_SET(&m->stats.setup_time_ms, (now - LM_ATOMIC_GET(&m->stats.start_ns)) / 1000000);
    if (!lm_state_set(m, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        ret = lm_error_set(&err, -ECANCELED, "migration cancelled");
        goto out;
    }
    LM_ATOMIC_SET(&m->stats.expected_downtime_ms, (int64_t)g->params.downtime_limit);
    lm_rl_init(&g->rl, g->params.max_bandwidth, now);
    g->win_start_ns = now;
    g->win_start_bytes = lm_out_bytes(&g->o);
    g->rl_seen = g->win_start_bytes;

    ret = g->bgsnap ? lm_og_bgsnap(g, &err) : lm_og_loop(g, &err);
out:
    lm_og_end(g, ret, &err);
    return NULL;
}

void lm_og_end(lm_outgoing *g, int ret, lm_error *err)
{
    lm_mig *m = g->m;
    if (ret < 0 && !err->code)
        lm_error_set(err, ret, "migration failed");
    drop_own_fd(g);
    lm_thr_end(g); /* before a failed migration resumes the guest */
    finish(g, ret, err);
    if (!g->paused) {
        free(g);
        return;
    }
    /* Paused: what a recovery needs stays (resume.c). */
    g->paused = false;
    pthread_mutex_lock(&m->lock);
    m->paused_out = g;
    pthread_mutex_unlock(&m->lock);
}

int lm_outgoing_start(lm_mig *m, const char *uri, lm_error *err)
{
    lm_outgoing *g = calloc(1, sizeof *g);
    if (!g)
        return lm_error_set(err, -ENOMEM, "out of memory");
    int ret = lm_uri_parse(uri, &g->uri, err);
    if (ret < 0)
        goto fail;
    g->file = g->uri.kind == LM_URI_FILE;
    if (g->uri.kind == LM_URI_FD) {
        /* Our own copy, taken now rather than at connect time on the
         * migration thread: the caller may close fd N as soon as this
         * returns (QMP's fd:NAME hands the named descriptor over, as
         * QEMU's monitor_get_fd does, and closes it). */
        int own = fcntl(g->uri.fd, F_DUPFD_CLOEXEC, 0);
        if (own < 0) {
            ret = lm_error_set(err, -errno, "migrate: fd:%d: %s", g->uri.fd, strerror(errno));
            goto fail;
        }
        g->uri.fd = own;
        g->own_fd = true;
    }

    /* A finished migration's thread may still be in its last cleanup. */
    pthread_mutex_lock(&m->lock);
    if (lm_status_is_active(m->status)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
        goto fail;
    }
    bool joinable = m->thread_running;
    pthread_t old = m->thread;
    m->thread_running = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(old, NULL);
    if (lm_vm_runstate(m) == LM_RUN_INMIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is waiting for an incoming migration");
        goto fail;
    }
    /* No thread of a migration runs now: the modules' per-migration state
     * is reset here. */
    lm_pc_src_reset(&m->pcs);

    pthread_mutex_lock(&m->lock);
    if (lm_status_is_active(m->status)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
        goto fail;
    }
    if (g->file && (ret = file_caps_check(m->caps, &m->params, err)) < 0) {
        pthread_mutex_unlock(&m->lock);
        goto fail;
    }
    if (m->caps & (1ull << LM_CAP_X_LAZY_RESTORE)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EINVAL,
                           "capability 'x-lazy-restore' is for the destination only "
                           "(migrate-incoming); turn it off to save");
        goto fail;
    }
    if ((ret = lm_mig_tls_select_locked(m, false, &g->uri, err)) < 0) {
        pthread_mutex_unlock(&m->lock);
        goto fail;
    }
    if (!g->file && (m->caps & (1ull << LM_CAP_MAPPED_RAM))) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EINVAL,
                           "capability 'mapped-ram' needs a file: URI (it lays pages out in a "
                           "file)");
        goto fail;
    }
    memset(&m->stats, 0, sizeof m->stats);
    m->stats.start_ns = lm_now_ns();
    m->stats.expected_downtime_ms = -1;
    lm_error_clear(&m->error);
    m->role = LM_ROLE_SOURCE;
    m->ram_frozen = true;
    m->cancel_requested = false;
    uint64_t drain;
    while (read(m->cancel_efd, &drain, sizeof drain) == sizeof drain) {
        /* a cancel of an earlier migration */
    }
    m->continue_requested = false;
    m->eos_sent = false;
    m->committing = false;
    m->shut_received = false;
    m->verdict = false;
    m->dest_never_ran = false;
    m->switchover_acked = false;
    g->ack_cap = m->caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    m->start_postcopy = false;
    m->postcopy_run_acked = false;
    m->rp_running = false;
    memset(&m->shut, 0, sizeof m->shut);
    lm_status prev = m->status;
    if (!lm_state_set_locked(m, prev, LM_STATUS_SETUP)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EINVAL, "cannot start a migration from state '%s'",
                           lm_status_name(prev));
        goto fail;
    }
    g->m = m;
    g->o.ctr = &m->stats.out;
    g->o.mfd_bytes = &m->stats.mfd.bytes;
    ret = -pthread_create(&m->thread, NULL, migration_thread_fn, g);
    if (ret < 0) {
        /* Through the table, with its event: setup -> failed. */
        lm_state_set_locked(m, LM_STATUS_SETUP, LM_STATUS_FAILED);
        lm_error_set(&m->error, ret, "cannot start the migration thread");
        pthread_mutex_unlock(&m->lock);
        lm_emit_status(m);
        ret = lm_error_set(err, ret, "cannot start the migration thread");
        goto fail;
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    lm_emit_status(m);
    return 0;
fail:
    drop_own_fd(g);
    free(g);
    return ret;
}
