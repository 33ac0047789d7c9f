/*
 * incoming.c - the destination side: listen, accept the channels of one
 * session, check their HELLO, run the load loop (loader.c), confirm with
 * RP_SHUT.
 *
 * Threads: "lm-incoming" (one per migrate-incoming) accepts, reads and
 * loads; it alone reads the main channel, and writes the return path
 * (through postcopy's rp_lock once the fault thread may write on it too).
 * With multifd it accepts every channel of the session first (in any order:
 * HELLO names each), then "lm-mfd-recv/N" threads read them; with
 * postcopy-preempt, "lm-pc-preempt" loads the preempt channel.
 * Connections are accepted together and their HELLOs read as they come
 * (chan/accept.c): a stranger that stays silent holds no one up.
 * Cancel (any thread) writes m->cancel_efd, which the accept loop polls,
 * and shuts down the listening socket and the placed channels under
 * m->lock, which makes a blocked read return.
 * A failure before the guest ever ran is answered with ERROR (the source
 * resumes, even past POSTCOPY_RUN); a failure after POSTCOPY_RUN pauses
 * (postcopy-paused, RP_SHUT with the reason): the guest keeps
 * running, the fault thread keeps its requests, nothing is lost silently;
 * the thread leaves its lm_incoming for migrate-recover (recover.c), whose
 * thread uses the accept, HELLO (resume_check) and completion here.
 * A failed load leaves the process up and answering QMP, in `inmigrate`,
 * ready for another migrate-incoming.
 */
#include "core/handshake.h"
#include "core/incoming.h"

#include "chan/accept.h"
#include "chan/tls.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Each connection's time to send its HELLO, from its accept. */
#define HELLO_TIMEOUT_MS 10000
/* Connections that may be sending their HELLO at once; the oldest still
 * silent is closed for a new one (docs/architecture.md, "Limits").  A
 * session's own channels (main, preempt, up to LM_MULTIFD_MAX_CHANNELS
 * multifd) send their HELLO as soon as they connect and are handed over
 * at once; before it closes one, the acceptor reads what every
 * connection has sent, so a channel that spoke is never the one closed. */
#define LM_INCOMING_PENDING_MAX 256
/* After the first channel, the others of the session must come within. */
#define CHANNELS_TIMEOUT_MS 10000

/* After a verdict on failure: closing with unread stream data in the
 * socket would make the kernel reset the connection, and the source could
 * lose our reason in the reset.  Half-close and drain what the source
 * still sends until it closes, bounded to 2 s. */
static void linger_drain(lm_chan *c)
{
    int fd = lm_chan_fd(c);
    uint8_t sink[16384];
    shutdown(fd, SHUT_WR);
    uint64_t deadline = lm_now_ns() + 2000000000ull;
    while (lm_now_ns() < deadline) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
    }
}

/* migrate-recover: only the paused session's source, asking to resume,
 * on each of its channels once (main, multifd, preempt). */
static int resume_check(lm_incoming *in, const lm_hello *h, lm_error *err)
{
    if (h->kind != LM_HELLO_RESUME)
        return lm_error_set(err, -EPROTO,
                            "HELLO: this destination recovers a paused postcopy migration "
                            "(migrate-recover) and takes only its source resuming it "
                            "(migrate with resume=true), not a new migration");
    if (memcmp(h->session, in->session, sizeof in->session) != 0)
        return lm_error_set(err, -EPROTO,
                            "HELLO: the source resumes another migration session than the "
                            "one paused here");
    if (h->features != in->features || h->chan_count != in->nmfd)
        return lm_error_set(err, -EPROTO,
                            "HELLO: the resuming source's features 0x%llx differ from the "
                            "paused session's 0x%llx",
                            (unsigned long long)h->features, (unsigned long long)in->features);
    if (h->page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO, "HELLO: source page size %u, destination %u",
                            h->page_size, LM_PAGE_SIZE);
    if (h->role == LM_ROLE_MAIN && !in->chan && h->chan_index == 0)
        return 0;
    if (h->role == LM_ROLE_PREEMPT && (in->features & LM_FEAT_PREEMPT) && !in->have_preempt &&
        h->chan_index == 0)
        return 0;
    if (h->role == LM_ROLE_MULTIFD && h->chan_index < in->nmfd && !in->mfd_chans[h->chan_index])
        return 0;
    return lm_error_set(err, -EPROTO,
                        "HELLO: a recovery takes the session's channels once each (main%s%s), "
                        "not this %s channel",
                        in->nmfd ? ", multifd" : "",
                        in->features & LM_FEAT_PREEMPT ? ", preempt" : "",
                        h->role == LM_ROLE_MAIN      ? "main"
                        : h->role == LM_ROLE_PREEMPT ? "preempt"
                                                     : "multifd");
}

/* Checks one HELLO against this destination and the channels already
 * accepted; returns 0 or an error naming what was wrong. */
int lm_in_hello_check(lm_incoming *in, const lm_hello *h, lm_error *err)
{
    pthread_mutex_lock(&in->m->lock);
    uint64_t caps = in->m->caps;
    pthread_mutex_unlock(&in->m->lock);
    bool multifd = caps & (1ull << LM_CAP_MULTIFD);
    if (in->resuming)
        return resume_check(in, h, err);
    if (h->kind == LM_HELLO_RESUME)
        return lm_error_set(err, -EPROTO,
                            "HELLO: the source resumes a paused postcopy migration, but this "
                            "destination has none to recover (it waits for a new one)");
    if (h->kind != LM_HELLO_REQUEST)
        return lm_error_set(err, -EPROTO, "HELLO: expected a request, got kind %u", h->kind);
    if (h->page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO, "HELLO: source page size %u, destination %u",
                            h->page_size, LM_PAGE_SIZE);
    const uint64_t known = LM_FEAT_MULTIFD | LM_FEAT_SWITCHOVER_ACK | LM_FEAT_POSTCOPY |
                           LM_FEAT_PREEMPT | LM_FEAT_MAPPED_RAM;
    if (h->features & ~known)
        return lm_error_set(err, -ENOTSUP,
                            "HELLO: the source asks for features 0x%llx that "
                            "this destination does not support yet",
                            (unsigned long long)(h->features & ~known));
    /* switchover-ack must be on at both ends: on the source only, it would
     * wait for an ack that never comes; on the destination only, it would
     * hold devices for a handshake the source never starts (seed 003, the
     * first trap).  Fail at setup, naming the side. */
    bool ack_here = caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    bool ack_there = h->features & LM_FEAT_SWITCHOVER_ACK;
    if (ack_here != ack_there)
        return lm_error_set(err, -EPROTO,
                            "HELLO: capability 'switchover-ack' is %s on the "
                            "source but %s on the destination (set it on both "
                            "sides)",
                            ack_there ? "on" : "off", ack_here ? "on" : "off");
    uint64_t pc_here = (caps & (1ull << LM_CAP_POSTCOPY_RAM) ? LM_FEAT_POSTCOPY : 0) |
                       (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT) ? LM_FEAT_PREEMPT : 0);
    uint64_t pc_there = h->features & (LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT);
    if (pc_here != pc_there)
        return lm_error_set(err, -EPROTO,
                            "HELLO: features differ: source 0x%llx (%s%s), "
                            "destination 0x%llx (%s%s): set the same "
                            "capabilities on both sides",
                            (unsigned long long)pc_there,
                            pc_there & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                            pc_there & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "",
                            (unsigned long long)pc_here,
                            pc_here & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                            pc_here & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "");
    bool mr_here = caps & (1ull << LM_CAP_MAPPED_RAM);
    bool mr_there = h->features & LM_FEAT_MAPPED_RAM;
    if (mr_here != mr_there)
        return lm_error_set(err, -EPROTO,
                            "capability 'mapped-ram' is %s on the source but %s on the "
                            "destination (set it on both sides)",
                            mr_there ? "on" : "off", mr_here ? "on" : "off");
    bool src_mfd = h->features & LM_FEAT_MULTIFD;
    if (src_mfd && !multifd)
        return lm_error_set(err, -EPROTO,
                            "the source migrates with multifd but the 'multifd' "
                            "capability is off on this destination");
    if (!src_mfd && multifd)
        return lm_error_set(err, -EPROTO,
                            "the 'multifd' capability is on on this destination "
                            "but the source migrates without it");
    if (src_mfd ? h->chan_count < 1 || h->chan_count > LM_MULTIFD_MAX_CHANNELS : h->chan_count != 0)
        return lm_error_set(err, -EPROTO, "HELLO: %u multifd channels announced", h->chan_count);
    if (in->have_session) {
        if (memcmp(h->session, in->session, sizeof in->session) != 0)
            return lm_error_set(err, -EPROTO,
                                "a channel of another migration session arrived "
                                "(%s channel %u)",
                                h->role == LM_ROLE_MAIN ? "main" : "multifd", h->chan_index);
        if (h->features != in->features || h->chan_count != in->nmfd)
            return lm_error_set(err, -EPROTO,
                                "HELLO: channels of one session disagree on "
                                "features or channel count");
    }
    switch (h->role) {
    case LM_ROLE_MAIN:
        if (in->chan)
            return lm_error_set(err, -EPROTO, "a second main channel arrived");
        if (h->chan_index != 0)
            return lm_error_set(err, -EPROTO, "HELLO: main channel with index %u", h->chan_index);
        return 0;
    case LM_ROLE_MULTIFD:
        if (!src_mfd)
            return lm_error_set(err, -EPROTO,
                                "a multifd channel arrived but the session does "
                                "not use multifd");
        if (h->chan_index >= h->chan_count)
            return lm_error_set(err, -EPROTO, "multifd channel %u of %u does not exist",
                                h->chan_index, h->chan_count);
        if (in->mfd_chans[h->chan_index])
            return lm_error_set(err, -EPROTO, "multifd channel %u arrived twice", h->chan_index);
        return 0;
    default: /* LM_ROLE_PREEMPT: the decoder knows no other role */
        if (!(h->features & LM_FEAT_PREEMPT))
            return lm_error_set(err, -EPROTO,
                                "a preempt channel arrived but the session does "
                                "not use postcopy-preempt");
        if (in->have_preempt)
            return lm_error_set(err, -EPROTO, "a second preempt channel arrived");
        if (h->chan_index != 0)
            return lm_error_set(err, -EPROTO, "HELLO: preempt channel with index %u",
                                h->chan_index);
        return 0;
    }
}

/* Checks the HELLO one connection sent (buf, len bytes: fewer than
 * LM_HELLO_SIZE when it closed mid-way); answers ACCEPT, or REJECT +
 * ERROR to a livemig peer; on success the channel is placed (main,
 * multifd N or preempt) and owned by `in`. */
static int hello(lm_incoming *in, lm_chan *c, const uint8_t *buf, size_t len, lm_error *err)
{
    lm_hello h;
    if (len < LM_HELLO_SIZE)
        return lm_error_set(err, -EPIPE,
                            "reading HELLO: the peer closed the connection after %zu of its %d "
                            "bytes",
                            len, LM_HELLO_SIZE);
    int ret = lm_fmt_hello_decode(buf, len, &h, err) > 0 ? 0 : -EPROTO;
    if (ret < 0 && err && err->code)
        ret = err->code;
    if (ret == 0)
        ret = lm_in_hello_check(in, &h, err);
    if (ret < 0) {
        /* A livemig peer hears why, so both sides name the reason; a
         * stranger (bad magic) gets nothing. */
        if (ret != -EBADMSG && err && err->code)
            lm_hello_answer(c, &h, err);
        return ret;
    }
    if (lm_hello_answer(c, &h, NULL) < 0)
        return lm_chan_get_error(c, err);
    if (!in->have_session) {
        in->have_session = true;
        memcpy(in->session, h.session, sizeof in->session);
        in->features = h.features;
        in->nmfd = h.chan_count;
        in->lv.ack_feature = h.features & LM_FEAT_SWITCHOVER_ACK;
    }
    if (h.role == LM_ROLE_MAIN) {
        in->chan = c;
        pthread_mutex_lock(&in->m->lock);
        in->m->chan = c;
        pthread_mutex_unlock(&in->m->lock);
    } else if (h.role == LM_ROLE_PREEMPT) {
        /* Not one cancel shuts down: postcopy owns it from the start of
         * the load and shuts it down itself (lm_pc_dst_preempt_stop).
         * Until then this thread holds it, and a cancel reaches this
         * thread through m->cancel_efd (accept.c polls it). */
        in->preempt = c;
        in->have_preempt = true;
    } else {
        in->mfd_chans[h.chan_index] = c;
        in->nmfd_have++;
        if (!lm_mig_aux_chan_add(in->m, c))
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
    }
    return 0;
}

/* The channel is one `in` holds (placed by hello). */
static bool placed(const lm_incoming *in, const lm_chan *c)
{
    if (c == in->chan || c == in->preempt)
        return true;
    for (unsigned i = 0; i < in->nmfd; i++)
        if (in->mfd_chans[i] == c)
            return true;
    return false;
}

/* A connection TLS refused (tr < 0: its handshake or tls-authz failed,
 * tls_err says why), or one without TLS where TLS is wanted (tr 1), or a
 * TLS one where it is not (tr 0): the migration fails naming the cause; a
 * source that sent a plaintext HELLO hears it in a plaintext answer.
 * Frees c. */
static int tls_refused(lm_chan *c, int tr, const lm_error *tls_err, const uint8_t *buf, size_t len,
                       lm_error *err)
{
    lm_hello h;
    if (tr < 0) {
        *err = *tls_err;
        lm_error_prefix(err, "incoming channel");
    } else if (tr == 1) {
        lm_error_set(err, -EPROTO,
                     "peer did not start TLS: the source sent plaintext, and tls-creds is set "
                     "here (set tls-creds on the source too)");
        if (len == LM_HELLO_SIZE && lm_fmt_hello_decode(buf, len, &h, NULL) > 0)
            lm_hello_answer(c, &h, err);
    } else {
        lm_error_set(err, -EPROTO,
                     "the source started TLS, but tls-creds is not set here (set it on the "
                     "destination too)");
    }
    linger_drain(c);
    lm_chan_free(c);
    return err->code;
}

/* Takes connections from the acceptor until the main channel and every
 * multifd (and preempt) channel of the session are there (DESIGN §5:
 * identified by HELLO, never by order).  The acceptor reads every
 * connection's HELLO at once with its own deadline, so a stranger that
 * connects and stays silent neither delays the source nor fails the
 * migration: it is closed when its time is up (issue 12, defect 1).  A
 * connection that does speak and says something wrong still fails the
 * migration with the reason (DESIGN §9).  connected: the one fd: stream,
 * no listener. */
static int accept_channels(lm_incoming *in, lm_acceptor *a, bool a_tls, bool connected,
                           lm_error *err)
{
    lm_mig *m = in->m;
    uint64_t deadline = 0;
    for (;;) {
        if (in->chan && in->nmfd_have == in->nmfd &&
            (in->have_preempt || !(in->features & LM_FEAT_PREEMPT)))
            return 0;
        if (connected && in->chan && in->nmfd)
            return lm_error_set(err, -EPROTO,
                                "the source uses multifd, which needs a listening "
                                "socket, not the connected fd");
        if (connected && in->chan)
            return 0;
        int fd = -1;
        size_t len = 0;
        uint8_t buf[LM_HELLO_SIZE];
        int ret = lm_acceptor_next(a, deadline, &fd, buf, &len, err);
        if (ret == -ECANCELED)
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        if (ret == -ETIMEDOUT && !deadline)
            return lm_error_set(err, -ETIMEDOUT, "no HELLO from the source within %d s",
                                HELLO_TIMEOUT_MS / 1000);
        if (ret == -ETIMEDOUT && in->nmfd_have < in->nmfd)
            return lm_error_set(err, -ETIMEDOUT,
                                "only %s%u of %u multifd channels arrived within %d s",
                                in->chan ? "the main channel and " : "", in->nmfd_have, in->nmfd,
                                CHANNELS_TIMEOUT_MS / 1000);
        if (ret == -ETIMEDOUT)
            return lm_error_set(err, -ETIMEDOUT,
                                "the source's %s channel did not "
                                "connect within %d s",
                                in->chan ? "preempt" : "main", CHANNELS_TIMEOUT_MS / 1000);
        if (ret < 0)
            return ret;
        pthread_mutex_lock(&m->lock);
        bool cancel = m->cancel_requested;
        pthread_mutex_unlock(&m->lock);
        lm_tls *tls = NULL;
        lm_error tls_err = {0};
        int tr = lm_acceptor_take_tls(a, &tls, &tls_err);
        lm_chan *c;
        ret = lm_chan_new(fd, "incoming channel", &c, err);
        if (ret < 0) {
            lm_tls_free(tls);
            return ret; /* fd closed by lm_chan_new */
        }
        if (cancel) {
            lm_tls_free(tls);
            lm_chan_free(c);
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        }
        if (tls && lm_chan_set_tls(c, tls) < 0) {
            ret = lm_chan_get_error(c, err);
            lm_chan_free(c);
            return ret;
        }
        if (tr != 0 || (!tls && !a_tls && len > 0 && buf[0] == LM_TLS_HANDSHAKE_BYTE))
            return tls_refused(c, tr, &tls_err, buf, len, err);
        ret = hello(in, c, buf, len, err);
        if (ret < 0) {
            if (!placed(in, c)) {
                if (ret != -EBADMSG && len == LM_HELLO_SIZE)
                    linger_drain(c);
                lm_chan_free(c);
            }
            return ret;
        }
        if (!deadline)
            deadline = lm_now_ns() + CHANNELS_TIMEOUT_MS * 1000000ull;
    }
}

/* fd:N may be a listening socket or, as in QEMU, the stream itself. */
int lm_in_connect_channels(lm_incoming *in, lm_error *err)
{
    if (in->file)
        return lm_in_file_open(in, err); /* file.c */
    int listening = 0;
    socklen_t sl = sizeof listening;
    bool connected =
        getsockopt(in->lfd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &sl) == 0 && !listening;
    lm_tls_creds *tls;
    lm_authz *authz;
    lm_mig_tls_get(in->m, &tls, &authz, NULL, 0);
    const lm_acceptor_cfg cfg = {.greeting_len = LM_HELLO_SIZE,
                                 .greeting_timeout_ms = HELLO_TIMEOUT_MS,
                                 .max_pending = LM_INCOMING_PENDING_MAX,
                                 .tls = tls,
                                 .authz = authz};
    lm_acceptor *a = NULL;
    int ret = lm_acceptor_new(connected ? -1 : in->lfd, in->m->cancel_efd, &cfg, &a, err);
    if (ret < 0) {
        lm_tls_creds_unref(tls);
        lm_authz_unref(authz);
        return ret;
    }
    if (connected) {
        ret = lm_acceptor_add(a, in->lfd, err); /* the acceptor's now */
        in->lfd = -1;
    }
    if (ret == 0)
        ret = accept_channels(in, a, tls != NULL, connected, err);
    lm_acceptor_free(a); /* closes the strangers still greeting */
    lm_tls_creds_unref(tls);
    lm_authz_unref(authz);
    return ret;
}

/* The end of the thread: the verdict to the source, the channels, the
 * final state. */
static void finish(lm_incoming *in, int ret, lm_error *err)
{
    lm_mig *m = in->m;
    lm_loadvm_cleanup(&in->lv);   /* no-op when done already */
    lm_in_lazy_end(in, ret, err); /* readers stopped before postcopy's end */
    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    pthread_mutex_unlock(&m->lock);
    bool paused = ret < 0 && in->running;
    if (paused) {
        /* The guest runs here with pages still at the source: never fail.
         * Requests stay marked (the fault thread keeps running), the
         * workload waits on missing pages; the source hears why. */
        if (!err->code)
            lm_error_set(err, ret, "incoming postcopy failed");
        lm_error_prefix(err, "postcopy paused (the guest keeps running; missing pages wait "
                             "for recovery)");
        lm_pc_dst_detach_rp(&m->pcd);
        if (in->chan && !cancelled &&
            lm_pc_dst_rp_send_status(&m->pcd, in->chan, LM_REC_RP_SHUT, err->code, err->msg) == 0)
            linger_drain(in->chan);
        lm_pc_dst_preempt_stop(&m->pcd);
        lm_mig_set_error(m, err);
    } else if (ret < 0) {
        lm_pc_dst_preempt_stop(&m->pcd);
        lm_pc_dst_end(&m->pcd);
        if (!err->code)
            lm_error_set(err, ret, "incoming migration failed");
        /* ERROR, not RP_SHUT: the guest never ran here and never will
         * (format.md 4.9), so a source past POSTCOPY_RUN may resume it. */
        if (in->chan && !cancelled && !in->file &&
            lm_rec_send_status(in->chan, LM_REC_ERROR, err->code, err->msg) == 0)
            linger_drain(in->chan);
        lm_mig_set_error(m, err);
    }
    /* Forget the channels where cancel could reach them (under lock), then
     * stop their threads and free them. */
    lm_mig_aux_chans_clear(m);
    if (in->mfd) {
        if (ret < 0)
            lm_mfd_recv_shutdown(in->mfd, "incoming migration ended");
        lm_mfd_recv_free(in->mfd);
        in->mfd = NULL;
    }
    for (unsigned i = 0; i < LM_MULTIFD_MAX_CHANNELS; i++) {
        lm_chan_free(in->mfd_chans[i]); /* accepted, never handed over */
        in->mfd_chans[i] = NULL;
    }
    lm_chan_free(in->preempt);
    in->preempt = NULL;
    LM_ATOMIC_SET(&m->stats.end_ns, lm_now_ns());
    lm_mem_prefault_stop(&m->mem);
    if (!paused)
        lm_pc_dst_release(&m->pcd); /* the aliases of a migration without a switch */
    pthread_mutex_lock(&m->lock);
    m->chan = NULL;
    lm_status cur = m->status, final;
    if (paused) {
        final = LM_STATUS_POSTCOPY_PAUSED;
    } else if (ret == 0) {
        final = LM_STATUS_COMPLETED;
    } else if (cancelled) {
        final = LM_STATUS_CANCELLED;
        if (cur != LM_STATUS_CANCELLING)
            lm_state_set_locked(m, cur, LM_STATUS_CANCELLING);
        cur = m->status;
    } else {
        final = cur == LM_STATUS_CANCELLING ? LM_STATUS_CANCELLED : LM_STATUS_FAILED;
    }
    bool changed = lm_state_set_locked(m, cur, final);
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m);
    lm_chan_free(in->chan);
    in->chan = NULL;
}

static void on_switchover_ack(void *opaque)
{
    lm_event ev = {.type = LM_EVENT_SWITCHOVER_ACK};
    lm_emit(opaque, &ev);
}

static void *incoming_thread_fn(void *arg)
{
    lm_incoming *in = arg;
    lm_mig *m = in->m;
    lm_error err = {0};
    pthread_setname_np(pthread_self(), "lm-incoming");

    int ret = lm_in_connect_channels(in, &err);
    pthread_mutex_lock(&m->lock);
    m->listen_fd = -1;
    pthread_mutex_unlock(&m->lock);
    if (in->lfd >= 0)
        close(in->lfd); /* one migration per migrate-incoming */
    in->lfd = -1;
    if (ret < 0)
        goto out;
    if (in->nmfd && !in->file) {
        ret = lm_mfd_recv_new(&m->mem, &m->place, &m->stats.mfd, in->chan, in->mfd_chans, in->nmfd,
                              &in->mfd, &err);
        if (ret < 0)
            goto out;
        memset(in->mfd_chans, 0, sizeof in->mfd_chans); /* the receiver's now */
    }
    if (in->preempt) {
        lm_chan *c = in->preempt;
        in->preempt = NULL; /* postcopy's from here, even on failure */
        ret = lm_pc_dst_preempt_start(&m->pcd, c, &err);
        if (ret < 0)
            goto out;
    }
    if (!lm_state_set(m, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        ret = lm_error_set(&err, -ECANCELED, "incoming migration cancelled");
        goto out;
    }
    ret = lm_incoming_load(in, &err);
    if (in->file)
        ret = lm_in_file_loaded(in, ret, &err);
    lm_loadvm_cleanup(&in->lv); /* before the guest runs, as QEMU does */
    ret = lm_in_complete(in, ret, &err);
out:
    lm_in_end(in, ret, &err);
    return NULL;
}

int lm_in_complete(lm_incoming *in, int ret, lm_error *err)
{
    lm_mig *m = in->m;
    if (ret == 0) {
        /* Loaded: commit, unless a cancel came first.  From here cancel is
         * a no-op (the guest is about to run here; the source waits for our
         * word), so the states stay in the table: cancelling only ever
         * leads to cancelled. */
        pthread_mutex_lock(&m->lock);
        if (m->cancel_requested)
            ret = lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        else
            m->eos_sent = true;
        pthread_mutex_unlock(&m->lock);
    }
    if (ret < 0)
        return ret;
    if (in->lazy_running) {
        /* Lazy restore: every page is placed; the guest runs already. */
        lm_in_lazy_end(in, 0, err);
        return 0;
    }
    if (in->running) {
        /* Postcopy: every owed page is placed; the guest runs already. */
        lm_pc_dst_preempt_stop(&m->pcd);
        lm_pc_dst_end(&m->pcd);
        lm_pc_dst_rp_send_status(&m->pcd, in->chan, LM_REC_RP_SHUT, 0, "loaded");
        lm_pc_dst_release(&m->pcd); /* after the source heard: unmapping takes time */
        return 0;
    }
    /* Everything loaded: run the guest, then confirm.  The source counts
     * its downtime until this confirmation arrives. */
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    if (!in->file)
        lm_rec_send_status(in->chan, LM_REC_RP_SHUT, 0, "loaded");
    return 0;
}

void lm_in_end(lm_incoming *in, int ret, lm_error *err)
{
    lm_mig *m = in->m;
    bool paused = ret < 0 && in->running;
    finish(in, ret, err);
    if (paused) {
        /* Kept for migrate-recover (recover.c). */
        pthread_mutex_lock(&m->lock);
        m->paused_in = in;
        pthread_mutex_unlock(&m->lock);
        return;
    }
    free(in->tmp);
    free(in);
}

void lm_incoming_free_paused(lm_mig *m)
{
    lm_incoming *in = m->paused_in;
    m->paused_in = NULL;
    if (in) {
        if (in->lfd >= 0)
            close(in->lfd);
        free(in->tmp);
        free(in);
    }
}

int lm_incoming_start(lm_mig *m, const char *uri, lm_error *err)
{
    lm_uri u;
    int ret;
    /* QEMU's two checks, in its order and words (qmp_migrate_incoming):
     * one incoming migration per destination, and only a process started
     * as one (-incoming; here: created LM_RUN_INMIGRATE) takes it.
     * Without the second, a paused source would turn into a destination.
     * Unlike QEMU, which exits when it fails, a destination whose incoming
     * migration failed or was cancelled is still inmigrate and may take
     * another. */
    pthread_mutex_lock(&m->lock);
    bool retry = m->role == LM_ROLE_DEST &&
                 (m->status == LM_STATUS_FAILED || m->status == LM_STATUS_CANCELLED);
    if (m->incoming_started && !retry) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EBUSY, "The incoming migration has already been started");
    }
    if (lm_vm_runstate(m) != LM_RUN_INMIGRATE) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EINVAL, "'-incoming' was not specified on the command line");
    }
    if (lm_status_is_active(m->status)) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EBUSY, "There's a migration process in progress");
    }
    pthread_mutex_unlock(&m->lock);
    ret = lm_uri_parse(uri, &u, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&m->lock);
    ret = lm_mig_tls_select_locked(m, true, &u, err);
    pthread_mutex_unlock(&m->lock);
    if (ret < 0)
        return ret;

    pthread_mutex_lock(&m->lock);
    bool joinable = m->thread_running;
    pthread_t old = m->thread;
    m->thread_running = false;
    uint64_t caps = m->caps;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(old, NULL);

    lm_incoming *in = calloc(1, sizeof *in);
    if (!in)
        return lm_error_set(err, -ENOMEM, "out of memory");
    char actual[128] = "";
    int lfd = -1;
    in->lazy_cap = caps & (1ull << LM_CAP_X_LAZY_RESTORE);
    if (in->lazy_cap && u.kind != LM_URI_FILE) {
        free(in);
        return lm_error_set(err, -EINVAL,
                            "capability 'x-lazy-restore' needs a file: URI (the pages come "
                            "from a mapped-ram file)");
    }
    if ((caps & (1ull << LM_CAP_MAPPED_RAM)) && u.kind != LM_URI_FILE) {
        free(in);
        return lm_error_set(err, -EINVAL,
                            "capability 'mapped-ram' needs a file: URI (it lays pages out in "
                            "a file)");
    }
    if (u.kind == LM_URI_FILE) {
        ret = lm_file_open_in(&u, &lfd, err);
        if (ret < 0) {
            free(in);
            return ret;
        }
        in->file = true;
        snprintf(in->file_path, sizeof in->file_path, "%s", u.file);
    } else if (u.kind == LM_URI_FD) {
        lfd = dup(u.fd);
        if (lfd < 0) {
            free(in);
            return lm_error_set(err, -errno, "migrate-incoming: fd:%d is not open", u.fd);
        }
        snprintf(actual, sizeof actual, "fd:%d", u.fd);
    } else {
        ret = lm_uri_listen(&u, &lfd, actual, sizeof actual, err);
        if (ret < 0) {
            free(in);
            lm_error_prefix(err, "migrate-incoming");
            return ret; /* not prefix's: err may be NULL */
        }
    }
    in->m = m;
    in->lfd = lfd;
    in->blocktime = caps & (1ull << LM_CAP_POSTCOPY_BLOCKTIME);
    in->lv.sv = &m->sv;
    in->lv.on_ack = on_switchover_ack;
    in->lv.opaque = m;
    /* No migration thread runs: the destination's modules are reset, the
     * shared-memory aliases mapped (postcopy), then "lm-prefault" starts. */
    lm_pc_dst_reset(&m->pcd);
    lm_place_reset(&m->place);
    ret = lm_mem_incoming_prepare(&m->mem, err);
    if (ret == 0 && (caps & ((1ull << LM_CAP_POSTCOPY_RAM) | (1ull << LM_CAP_X_LAZY_RESTORE)))) {
        lm_mem_prefault_stop(&m->mem);
        ret = lm_pc_dst_classify(&m->pcd, err);
    }
    if (ret < 0) {
        close(lfd);
        free(in);
        return ret;
    }
    /* A lazy restore populates nothing ahead: every page faults. */
    if (!in->lazy_cap)
        lm_mem_prefault_start(&m->mem);

    pthread_mutex_lock(&m->lock);
    lm_status prev = m->status;
    if (lm_status_is_active(prev) || !lm_state_set_locked(m, prev, LM_STATUS_SETUP)) {
        pthread_mutex_unlock(&m->lock);
        lm_mem_prefault_stop(&m->mem);
        close(lfd);
        free(in);
        return lm_error_set(err, -EBUSY, "There's a migration process in progress");
    }
    memset(&m->stats, 0, sizeof m->stats);
    m->stats.start_ns = lm_now_ns();
    lm_error_clear(&m->error);
    m->role = LM_ROLE_DEST;
    m->incoming_started = true;
    m->ram_frozen = true;
    m->cancel_requested = false;
    uint64_t drain;
    while (read(m->cancel_efd, &drain, sizeof drain) == sizeof drain) {
        /* a cancel of an earlier migration: the acceptor polls this fd */
    }
    m->eos_sent = false;
    m->listen_fd = lfd;
    snprintf(m->socket_address, sizeof m->socket_address, "%s", actual);
    ret = -pthread_create(&m->thread, NULL, incoming_thread_fn, in);
    if (ret < 0) {
        /* Through the table, with its event: setup -> failed. */
        lm_state_set_locked(m, LM_STATUS_SETUP, LM_STATUS_FAILED);
        lm_error_set(&m->error, ret, "cannot start the incoming thread");
        m->listen_fd = -1;
        pthread_mutex_unlock(&m->lock);
        lm_emit_status(m);
        lm_mem_prefault_stop(&m->mem);
        close(lfd);
        free(in);
        return lm_error_set(err, ret, "cannot start the incoming thread");
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    lm_runstate_set(m, LM_RUN_INMIGRATE);
    lm_emit_status(m);
    return 0;
}
