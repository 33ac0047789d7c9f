/*
 * incoming.c - the destination side: listen, accept one stream, check its
 * HELLO, load records straight into guest memory, confirm with RP_SHUT.
 *
 * Threads: "lm-incoming" (one per migrate-incoming) accepts, reads and
 * loads; it alone uses the channel, reading the stream and writing the
 * return path.  Cancel (any thread) shuts down the listening socket or the
 * channel under m->lock, which makes the blocked accept/read return.
 * A failed load leaves the process up and answering QMP, in `inmigrate`,
 * ready for another migrate-incoming.
 */
#include "core/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_TIMEOUT_S 10

typedef struct incoming {
    lm_mig *m;
    int lfd;
    lm_chan *chan;
    uint8_t session[LM_SESSION_ID_LEN];
    lm_loadvm lv;            /* device sections and switchover-ack */
} incoming;

static int send_status(lm_chan *c, uint8_t type, int32_t status, const char *msg)
{
    lm_status_msg sm = {.status = status};
    snprintf(sm.msg, sizeof sm.msg, "%s", msg ? msg : "");
    uint8_t p[6 + LM_ERROR_MSG_MAX], h[LM_REC_HDR_SIZE];
    int n = lm_fmt_status_msg_encode(&sm, p, sizeof p);
    if (n < 0)
        return n;
    lm_fmt_rec_hdr_encode(type, (uint32_t)n, h, sizeof h);
    if (lm_chan_put(c, h, sizeof h) < 0 || lm_chan_put(c, p, (size_t)n) < 0)
        return -EIO;
    return lm_chan_flush(c);
}

/* Reads and checks the source's HELLO; answers ACCEPT or REJECT+ERROR. */
static int hello(incoming *in, lm_error *err)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello h;
    int fd = lm_chan_fd(in->chan);
    struct timeval tv = {.tv_sec = HELLO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (lm_chan_read_full(in->chan, buf, sizeof buf) < 0) {
        lm_error tmp = {0};
        lm_chan_get_error(in->chan, &tmp);
        if (strstr(tmp.msg, "temporarily unavailable"))
            return lm_error_set(err, -ETIMEDOUT, "no HELLO from the source within %d s",
                                HELLO_TIMEOUT_S);
        return lm_error_set(err, tmp.code ? tmp.code : -EIO, "reading HELLO: %s", tmp.msg);
    }
    tv.tv_sec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    lm_hello reply = {.version = LM_FORMAT_VERSION, .role = LM_ROLE_MAIN,
                      .kind = LM_HELLO_ACCEPT, .page_size = LM_PAGE_SIZE};
    int ret = lm_fmt_hello_decode(buf, sizeof buf, &h, err) > 0 ? 0 : -EPROTO;
    if (ret == 0 && h.kind != LM_HELLO_REQUEST)
        ret = lm_error_set(err, -EPROTO, "HELLO: expected a request, got kind %u", h.kind);
    if (ret == 0 && h.role != LM_ROLE_MAIN)
        ret = lm_error_set(err, -EPROTO, "HELLO: a %s channel arrived but no migration is "
                                         "running on this destination",
                           h.role == LM_ROLE_MULTIFD ? "multifd" : "preempt");
    if (ret == 0 && h.page_size != LM_PAGE_SIZE)
        ret = lm_error_set(err, -EPROTO, "HELLO: source page size %u, destination %u",
                           h.page_size, LM_PAGE_SIZE);
    if (ret == 0 && (h.features & ~LM_FEAT_SWITCHOVER_ACK))
        ret = lm_error_set(err, -ENOTSUP, "HELLO: the source asks for features 0x%llx that "
                                          "this destination does not support yet",
                           (unsigned long long)(h.features & ~LM_FEAT_SWITCHOVER_ACK));
    /* switchover-ack must be on at both ends: on the source only, it would
     * wait for an ack that never comes; on the destination only, it would
     * hold devices for a handshake the source never starts (seed 003, the
     * first trap).  Fail at setup, naming the side. */
    pthread_mutex_lock(&in->m->lock);
    bool ack_here = in->m->caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    pthread_mutex_unlock(&in->m->lock);
    bool ack_there = h.features & LM_FEAT_SWITCHOVER_ACK;
    if (ret == 0 && ack_here != ack_there)
        ret = lm_error_set(err, -EPROTO, "HELLO: capability 'switchover-ack' is %s on the "
                                         "source but %s on the destination (set it on both "
                                         "sides)",
                           ack_there ? "on" : "off", ack_here ? "on" : "off");
    reply.features = ack_here ? LM_FEAT_SWITCHOVER_ACK : 0;
    if (ret < 0) {
        if (err && err->code && strstr(err->msg, "bad magic") == NULL) {
            /* A livemig peer: tell it why, so both sides name the reason. */
            reply.kind = LM_HELLO_REJECT;
            memcpy(reply.session, h.session, sizeof reply.session);
            lm_fmt_hello_encode(&reply, buf, sizeof buf);
            if (lm_chan_put(in->chan, buf, sizeof buf) == 0)
                send_status(in->chan, LM_REC_ERROR, err->code, err->msg);
        }
        return ret;
    }
    memcpy(in->session, h.session, sizeof in->session);
    in->lv.ack_feature = ack_there;
    memcpy(reply.session, h.session, sizeof reply.session);
    lm_fmt_hello_encode(&reply, buf, sizeof buf);
    if (lm_chan_put(in->chan, buf, sizeof buf) < 0 || lm_chan_flush(in->chan) < 0)
        return lm_chan_get_error(in->chan, err);
    return 0;
}

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

/* The load loop; returns 0 at end of stream. */
static int load(incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    int ret = lm_ram_load_setup(m, err);
    if (ret < 0)
        return ret;
    ret = lm_loadvm_setup(m, &in->lv, err);
    if (ret < 0)
        return ret;
    for (;;) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        if (lm_chan_read_full(in->chan, hb, sizeof hb) < 0)
            return lm_chan_get_error(in->chan, err);
        if (lm_fmt_rec_hdr_decode(hb, sizeof hb, &h, err) <= 0)
            return err && err->code ? err->code : -EPROTO;
        switch (h.type) {
        case LM_REC_RAM_BLOCKS:
        case LM_REC_RAM_PAGES:
        case LM_REC_RAM_ZERO:
        case LM_REC_RAM_PASS:
            ret = lm_ram_load_record(m, in->chan, &h, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_PING: {
            uint8_t p[4], r[LM_REC_HDR_SIZE + 4];
            uint32_t v;
            if (lm_chan_read_full(in->chan, p, sizeof p) < 0)
                return lm_chan_get_error(in->chan, err);
            if (lm_fmt_u32_decode(p, sizeof p, &v, err) <= 0)
                return -EPROTO;
            lm_fmt_rec_hdr_encode(LM_REC_RP_PONG, 4, r, sizeof r);
            lm_fmt_u32_encode(v, r + LM_REC_HDR_SIZE, 4);
            if (lm_chan_put(in->chan, r, sizeof r) < 0 || lm_chan_flush(in->chan) < 0)
                return lm_chan_get_error(in->chan, err);
            break;
        }
        case LM_REC_SWITCHOVER_START:
            break;
        case LM_REC_SECTION_START:
        case LM_REC_SECTION_PART:
        case LM_REC_SECTION_END:
        case LM_REC_SECTION_FULL:
            ret = lm_loadvm_section(m, &in->lv, in->chan, &h, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_ACK_DEVICES:
            ret = lm_loadvm_ack_devices(m, &in->lv, in->chan, &h, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_EOS:
            if (!m->in.have_blocks && m->nblocks)
                return lm_error_set(err, -EPROTO, "end of stream before the RAM block table");
            return lm_loadvm_eos(m, &in->lv, err);
        case LM_REC_ERROR: {
            uint8_t p[6 + LM_ERROR_MSG_MAX];
            lm_status_msg sm;
            if (h.len > sizeof p)
                return lm_error_set(err, -EPROTO, "ERROR record of %u bytes", h.len);
            if (lm_chan_read_full(in->chan, p, h.len) < 0)
                return lm_chan_get_error(in->chan, err);
            if (lm_fmt_status_msg_decode(p, h.len, &sm, err) <= 0)
                return -EPROTO;
            return lm_error_set(err, sm.status ? sm.status : -EIO, "source: %s", sm.msg);
        }
        default:
            return lm_error_set(err, -EPROTO, "unexpected %s record in the migration stream",
                                lm_rec_type_name(h.type));
        }
    }
}

static void *incoming_thread_fn(void *arg)
{
    incoming *in = arg;
    lm_mig *m = in->m;
    lm_error err = {0};
    int fd = -1;
    pthread_setname_np(pthread_self(), "lm-incoming");

    /* fd:N may be a listening socket or, as in QEMU, the stream itself. */
    int listening = 0;
    socklen_t sl = sizeof listening;
    int ret = 0;
    if (getsockopt(in->lfd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &sl) == 0 && !listening) {
        fd = in->lfd;
        in->lfd = -1;
    } else {
        ret = lm_sock_accept(in->lfd, &fd, &err);
    }
    pthread_mutex_lock(&m->lock);
    m->listen_fd = -1;
    pthread_mutex_unlock(&m->lock);
    if (in->lfd >= 0)
        close(in->lfd); /* one stream per migrate-incoming */
    if (ret < 0)
        goto out;
    ret = lm_chan_new(fd, "incoming channel", &in->chan, &err);
    if (ret < 0) {
        close(fd);
        goto out;
    }
    pthread_mutex_lock(&m->lock);
    m->chan = in->chan;
    bool cancel = m->cancel_requested;
    pthread_mutex_unlock(&m->lock);
    if (cancel) {
        ret = lm_error_set(&err, -ECANCELED, "incoming migration cancelled");
        goto out;
    }
    ret = hello(in, &err);
    if (ret < 0)
        goto out;
    if (!lm_state_set(m, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        ret = lm_error_set(&err, -ECANCELED, "incoming migration cancelled");
        goto out;
    }
    ret = load(in, &err);
    lm_loadvm_cleanup(m, &in->lv); /* before the guest runs, as QEMU does */
    if (ret < 0)
        goto out;
    /* Everything loaded: run the guest, then confirm.  The source counts
     * its downtime until this confirmation arrives. */
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    send_status(in->chan, LM_REC_RP_SHUT, 0, "loaded");
out:
    lm_loadvm_cleanup(m, &in->lv); /* no-op when done above */
    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    pthread_mutex_unlock(&m->lock);
    if (ret < 0) {
        if (!err.code)
            lm_error_set(&err, ret, "incoming migration failed");
        if (in->chan && !cancelled && send_status(in->chan, LM_REC_RP_SHUT, err.code,
                                                  err.msg) == 0)
            linger_drain(in->chan);
        lm_mig_set_error(m, &err);
    }
    LM_ATOMIC_SET(&m->stats.end_ns, lm_now_ns());
    lm_ram_prefault_stop(m);
    pthread_mutex_lock(&m->lock);
    m->chan = NULL;
    lm_status cur = m->status, final;
    if (ret == 0) {
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
        lm_emit_status(m, final);
    lm_chan_free(in->chan);
    free(in);
    return NULL;
}

int lm_incoming_start(lm_mig *m, const char *uri, lm_error *err)
{
    lm_uri u;
    int ret = lm_uri_parse(uri, &u, err);
    if (ret < 0)
        return ret;
    if (lm_vm_runstate(m) == LM_RUN_RUNNING)
        return lm_error_set(err, -EBUSY, "cannot migrate into a running guest; stop it first");

    pthread_mutex_lock(&m->lock);
    if (lm_status_is_active(m->status)) {
        pthread_mutex_unlock(&m->lock);
        return lm_error_set(err, -EBUSY, "There's a migration process in progress");
    }
    bool joinable = m->thread_running;
    pthread_t old = m->thread;
    m->thread_running = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(old, NULL);

    incoming *in = calloc(1, sizeof *in);
    if (!in)
        return lm_error_set(err, -ENOMEM, "out of memory");
    char actual[128] = "";
    int lfd = -1;
    if (u.kind == LM_URI_FD) {
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
            return lm_error_prefix(err, "migrate-incoming");
        }
    }
    in->m = m;
    in->lfd = lfd;
    ret = lm_ram_incoming_prepare(m, err);
    if (ret < 0) {
        close(lfd);
        free(in);
        return ret;
    }

    pthread_mutex_lock(&m->lock);
    lm_status prev = m->status;
    if (lm_status_is_active(prev) || !lm_state_set_locked(m, prev, LM_STATUS_SETUP)) {
        pthread_mutex_unlock(&m->lock);
        close(lfd);
        free(in);
        return lm_error_set(err, -EBUSY, "There's a migration process in progress");
    }
    memset(&m->stats, 0, sizeof m->stats);
    m->stats.start_ns = lm_now_ns();
    lm_error_clear(&m->error);
    m->role = LM_ROLE_DEST;
    m->ram_frozen = true;
    m->cancel_requested = false;
    m->listen_fd = lfd;
    snprintf(m->socket_address, sizeof m->socket_address, "%s", actual);
    ret = -pthread_create(&m->thread, NULL, incoming_thread_fn, in);
    if (ret < 0) {
        m->status = LM_STATUS_FAILED;
        m->listen_fd = -1;
        pthread_mutex_unlock(&m->lock);
        close(lfd);
        free(in);
        return lm_error_set(err, ret, "cannot start the incoming thread");
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    lm_runstate_set(m, LM_RUN_INMIGRATE);
    lm_emit_status(m, LM_STATUS_SETUP);
    return 0;
}
