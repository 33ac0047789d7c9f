/*
 * recover.c - postcopy recovery on the destination (digest §6.5):
 * `migrate-recover {"uri"}` takes over the incoming migration that paused
 * (m->paused_in: the guest runs, the fault thread keeps the requests it
 * could not send) and runs a new "lm-incoming" thread on it:
 *
 *   postcopy-paused   listen on the new URI; the connections must be the
 *                     paused session's source resuming (HELLO kind RESUME,
 *                     same session id and features): its main channel, and
 *                     its multifd and preempt channels when on
 *   -> postcopy-recover  new multifd receivers on the new multifd channels,
 *                     the preempt loader on the new preempt channel (its
 *                     requests go there), the load loop again (no device
 *                     setup): PINGs, then
 *                     POSTCOPY_RESUME (loader.c: received bitmap, ack, the
 *                     new return path, waiting requests asked again)
 *   -> postcopy-active   the background push and requests go on, to EOS.
 *
 * A refused peer or a listener that fails leaves the destination paused
 * with the reason in error-desc; migrate-recover may be run again.  A link
 * lost during the recovery pauses again (the state table allows it).
 */
#include "core/incoming.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *recover_thread_fn(void *arg)
{
    lm_incoming *in = arg;
    lm_mig *m = in->m;
    lm_error err = {0};
    pthread_setname_np(pthread_self(), "lm-incoming");

    int ret = lm_in_connect_channels(in, &err);
    pthread_mutex_lock(&m->lock);
    m->listen_fd = -1;
    m->recovering = false;
    pthread_mutex_unlock(&m->lock);
    if (in->lfd >= 0)
        close(in->lfd); /* one connection per migrate-recover */
    in->lfd = -1;
    if (ret < 0) {
        lm_error_prefix(&err, "postcopy recovery");
    } else if (!lm_state_set(m, LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER)) {
        ret = lm_error_set(&err, -ECANCELED, "postcopy recovery interrupted");
    } else {
        if (in->nmfd) {
            /* New receivers: packet numbers and syncs start over, as the
             * source's new sender does; the block table is known. */
            ret = lm_mfd_recv_new(&m->mem, &m->place, &m->stats.mfd, in->chan, in->mfd_chans,
                                  in->nmfd, &in->mfd, &err);
            if (ret == 0) {
                memset(in->mfd_chans, 0, sizeof in->mfd_chans); /* the receiver's now */
                lm_mfd_recv_blocks_ready(in->mfd);
            }
        }
        if (ret == 0 && in->preempt) {
            lm_chan *c = in->preempt;
            in->preempt = NULL; /* postcopy's from here, even on failure */
            ret = lm_pc_dst_preempt_start(&m->pcd, c, &err);
        }
        if (ret == 0)
            ret = lm_incoming_load_resumed(in, &err);
        ret = lm_in_complete(in, ret, &err);
    }
    lm_in_end(in, ret, &err);
    return NULL;
}

int lm_incoming_recover(lm_mig *m, const char *uri, lm_error *err)
{
    lm_uri u;
    pthread_mutex_lock(&m->lock);
    if (m->role != LM_ROLE_DEST || m->status != LM_STATUS_POSTCOPY_PAUSED) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EINVAL,
                            "Migrate recover can only be run when postcopy is paused.");
    }
    if (m->recovering) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EBUSY, "Migrate recovery is triggered already");
    }
    m->recovering = true; /* until this call fails or the thread accepted */
    bool joinable = m->thread_running;
    pthread_t old = m->thread;
    m->thread_running = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(old, NULL); /* the thread that paused: it left m->paused_in */

    int ret = lm_uri_parse(uri, &u, err);
    pthread_mutex_lock(&m->lock);
    lm_incoming *in = m->paused_in;
    if (ret == 0 && !in)
        ret =
            lm_error_set(err, -EINVAL, "Migrate recover can only be run when postcopy is paused.");
    if (ret == 0)
        ret = lm_mig_tls_select_locked(m, true, &u, err); /* authenticated again */
    if (ret < 0) {
        m->recovering = false;
        pthread_mutex_unlock(&m->lock);
        return ret;
    }
    pthread_mutex_unlock(&m->lock);

    char actual[128] = "";
    int lfd = -1;
    if (u.kind == LM_URI_FD) {
        lfd = dup(u.fd);
        if (lfd < 0)
            ret = lm_error_set(err, -errno, "migrate-recover: fd:%d is not open", u.fd);
        snprintf(actual, sizeof actual, "fd:%d", u.fd);
    } else {
        ret = lm_uri_listen(&u, &lfd, actual, sizeof actual, err);
        if (ret < 0)
            lm_error_prefix(err, "migrate-recover");
    }
    pthread_mutex_lock(&m->lock);
    if (ret < 0) {
        m->recovering = false;
        pthread_mutex_unlock(&m->lock);
        return ret;
    }
    m->paused_in = NULL;
    in->lfd = lfd;
    in->resuming = true;
    in->chan = NULL;
    in->nmfd_have = 0;
    in->have_preempt = false;
    lm_error_clear(&m->error); /* error-desc: why this attempt fails, if it does */
    m->listen_fd = lfd;
    snprintf(m->socket_address, sizeof m->socket_address, "%s", actual);
    ret = -pthread_create(&m->thread, NULL, recover_thread_fn, in);
    if (ret < 0) {
        m->listen_fd = -1;
        m->recovering = false;
        in->lfd = -1;
        m->paused_in = in;
        pthread_mutex_unlock(&m->lock);
        close(lfd);
        return lm_error_set(err, ret, "cannot start the incoming thread");
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    return 0;
}
