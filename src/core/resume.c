/*
 * resume.c - postcopy recovery on the source (digest §6.5, seed 002):
 * `migrate {"uri", "resume": true}` takes over the migration that paused
 * (m->paused_out: RAM still in postcopy with its dirty maps, the device
 * handlers not cleaned up, the guest stopped) and runs a new "lm-migration"
 * thread on it:
 *
 *   postcopy-paused -> postcopy-recover-setup   connect, HELLO (resume): the
 *                      main channel, the multifd channels (a new sender)
 *                      and the preempt channel, when on
 *                   -> postcopy-recover         POSTCOPY_RESUME; the
 *                      destination's RP_RECV_BITMAP chunks make what it
 *                      still owes dirty ("lm-rp"), RP_RESUME_ACK ends it
 *                   -> postcopy-active          the preempt channel's request
 *                      reader, and the loop of seed 000 again
 *
 * Any failure on the way goes back to postcopy-paused, with the MIGRATION
 * event and error-desc (seed 002: management learns that a reconnection
 * failed), and the migration is kept again for the next attempt.
 *
 * postcopy-recover-setup is bounded by x-postcopy-timeout-ms as a whole
 * (every connect and HELLO wait gets what is left of it), not by the
 * 10 s of each step (LM_CONNECT_TIMEOUT_MS, LM_HELLO_TIMEOUT_MS): a resume
 * into a black hole is back in postcopy-paused within the same bound as a
 * silent link, and management may try again.  0 ("never") leaves the
 * steps' own bounds.  From postcopy-recover on, the return path's watchdog
 * bounds the exchange (return_path.c).
 */
#include "core/outgoing.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* After the new main channel said HELLO: the return path, POSTCOPY_RESUME,
 * and the wait for the destination's ack (the return path moves the state
 * to postcopy-active, or records why it ended). */
static int handshake(lm_outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    g->o.chan = g->chan;
    lm_pc_src_resume_prepare(&m->pcs);
    lm_pc_src_serve(&m->pcs, g->chan);
    LM_ATOMIC_SET(&g->ping_sent_ns, 0); /* one in flight on the old link never comes back */
    int ret = lm_rp_start(g, err);
    if (ret < 0)
        return ret;
    if (lm_rec_write(g->chan, LM_REC_POSTCOPY_RESUME, NULL, 0) < 0 || lm_chan_flush(g->chan) < 0)
        return lm_chan_get_error(g->chan, err);
    pthread_mutex_lock(&m->lock);
    while (m->status == LM_STATUS_POSTCOPY_RECOVER && !m->shut_received) {
        struct timespec ts = lm_ns_to_timespec(lm_now_ns() + 100000000ull);
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    }
    lm_status s = m->status;
    lm_status_msg v = m->shut;
    bool verdict = m->verdict;
    pthread_mutex_unlock(&m->lock);
    if (s == LM_STATUS_POSTCOPY_ACTIVE) {
        /* Requests on the preempt channel are read from now on: the
         * received bitmap is applied, so a request claims what is owed. */
        if (g->preempt)
            return lm_pc_src_reader_start(&m->pcs, g->preempt, g->chan, err);
        return 0;
    }
    if (lm_chan_get_error(g->chan, err))
        return err->code;
    return lm_error_set(err, v.status ? v.status : -EPROTO, "%s%s", verdict ? "destination: " : "",
                        v.status ? v.msg : "destination ended the recovery");
}

static void *resume_thread_fn(void *arg)
{
    lm_outgoing *g = arg;
    lm_mig *m = g->m;
    lm_error err = {0};
    pthread_setname_np(pthread_self(), "lm-migration");
    int ret = lm_og_connect_channels(g, &err);
    if (ret == 0 && (g->features & LM_FEAT_PREEMPT))
        ret = lm_og_connect_preempt(g, &err);
    if (ret == -ETIMEDOUT && g->setup_deadline_ns)
        lm_error_prefix(&err, "not connected within x-postcopy-timeout-ms (%llu ms)",
                        (unsigned long long)g->setup_tmo_ms);
    g->setup_deadline_ns = 0;
    if (ret == 0 && g->nmfd) {
        /* New channels, a new sender: its packet numbers and syncs start
         * over, as the destination's new receivers do.  The destination
         * processed POSTCOPY_RUN long ago: no fence is needed before the
         * first postcopy packet. */
        ret = lm_mfd_send_new(&m->mem, &m->stats.mfd, g->chan, g->mfd_chans, g->nmfd, &g->mfd_cfg,
                              &g->o.mfd, &err);
        if (ret == 0) {
            memset(g->mfd_chans, 0, sizeof g->mfd_chans); /* the sender's now */
            lm_mfd_send_set_phase(g->o.mfd, LM_MFD_POSTCOPY);
        }
    }
    if (ret == 0 && !lm_state_set(m, LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_RECOVER))
        ret = lm_error_set(&err, -ECANCELED, "recovery interrupted");
    if (ret == 0)
        ret = handshake(g, &err);
    if (ret == 0) {
        /* Byte counts start over on the new channel. */
        uint64_t now = lm_now_ns();
        g->win_start_ns = now;
        g->win_start_bytes = lm_out_bytes(&g->o);
        g->rl_seen = g->win_start_bytes;
        ret = lm_og_loop(g, &err);
    } else {
        lm_error_prefix(&err, "postcopy recovery");
    }
    lm_og_end(g, ret, &err);
    return NULL;
}

int lm_outgoing_resume(lm_mig *m, const char *uri, lm_error *err)
{
    lm_uri u;
    int ret = lm_uri_parse(uri, &u, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&m->lock);
    if (m->role != LM_ROLE_SOURCE || m->status != LM_STATUS_POSTCOPY_PAUSED) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EINVAL, "Cannot resume if there is no paused migration");
    }
    bool joinable = m->thread_running;
    pthread_t old = m->thread;
    m->thread_running = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(old, NULL); /* the thread that paused: it left m->paused_out */

    pthread_mutex_lock(&m->lock);
    lm_outgoing *g = m->paused_out;
    if (!g || m->status != LM_STATUS_POSTCOPY_PAUSED) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EINVAL, "Cannot resume if there is no paused migration");
    }
    if (u.kind == LM_URI_FD) {
        int own = fcntl(u.fd, F_DUPFD_CLOEXEC, 0);
        if (own < 0) {
            ret = lm_error_set(err, -errno, "migrate: fd:%d: %s", u.fd, strerror(errno));
            pthread_mutex_unlock(&m->lock);
            return ret;
        }
        u.fd = own;
    }
    if ((ret = lm_mig_tls_select_locked(m, false, &u, err)) < 0) {
        if (u.kind == LM_URI_FD)
            close(u.fd);
        pthread_mutex_unlock(&m->lock);
        return ret;
    }
    m->paused_out = NULL;
    g->setup_tmo_ms = m->params.x_postcopy_timeout_ms;
    g->setup_deadline_ns = g->setup_tmo_ms ? lm_now_ns() + g->setup_tmo_ms * 1000000ull : 0;
    g->uri = u;
    g->own_fd = u.kind == LM_URI_FD;
    g->resuming = true;
    g->chan = NULL;
    g->o.chan = NULL;
    g->preempt = NULL;
    /* This attempt's error replaces the last one (error-desc says why
     * this reconnection failed, if it does). */
    lm_error_clear(&m->error);
    m->shut_received = false;
    m->verdict = false;
    m->dest_never_ran = false;
    memset(&m->shut, 0, sizeof m->shut);
    m->rp_running = false;
    lm_state_set_locked(m, LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER_SETUP);
    ret = -pthread_create(&m->thread, NULL, resume_thread_fn, g);
    if (ret < 0) {
        lm_state_set_locked(m, LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_PAUSED);
        lm_error_set(&m->error, ret, "cannot start the migration thread");
        if (g->own_fd)
            close(g->uri.fd);
        g->own_fd = false;
        m->paused_out = g;
        pthread_mutex_unlock(&m->lock);
        lm_emit_status(m);
        return lm_error_set(err, ret, "cannot start the migration thread");
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    lm_emit_status(m);
    return 0;
}

void lm_outgoing_free_paused(lm_mig *m)
{
    lm_outgoing *g = m->paused_out;
    m->paused_out = NULL;
    free(g);
}
