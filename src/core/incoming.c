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
 *
 * Postcopy (postcopy.c does the userfaultfd work): with postcopy-preempt
 * the listener stays open after the main connection until the preempt
 * channel has said HELLO.  POSTCOPY_DISCARD drops owed pages, POSTCOPY_RUN
 * starts the fault thread and the guest; from then on pages are placed
 * atomically and return-path writes go through lm_postcopy_rp_write (the
 * fault thread writes requests on the same channel).  A failure after
 * POSTCOPY_RUN pauses (postcopy-paused): the guest keeps running, the
 * fault thread keeps its requests, nothing is lost silently.
 */
#include "core/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_TIMEOUT_S 10

typedef struct incoming {
    lm_mig *m;
    int lfd;
    lm_chan *chan;
    uint8_t session[LM_SESSION_ID_LEN];
    uint64_t features;   /* ours, from the capabilities at accept time */
    bool discarding;     /* a POSTCOPY_DISCARD came: only more, or RUN */
    bool running;        /* POSTCOPY_RUN processed: postcopy placement */
    uint8_t *tmp;        /* a run of pages before placement (postcopy) */
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

/* send_status for the return path once the fault thread may write on it. */
static int send_status_rp(lm_mig *m, lm_chan *c, uint8_t type, int32_t status, const char *msg)
{
    pthread_mutex_lock(&m->pc.rp_lock);
    int ret = send_status(c, type, status, msg);
    pthread_mutex_unlock(&m->pc.rp_lock);
    return ret;
}

/* Reads and checks the source's HELLO; answers ACCEPT or REJECT+ERROR. */
static int hello_on(incoming *in, lm_chan *chan, uint8_t role, lm_error *err)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello h;
    int fd = lm_chan_fd(chan);
    struct timeval tv = {.tv_sec = HELLO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (lm_chan_read_full(chan, buf, sizeof buf) < 0) {
        lm_error tmp = {0};
        lm_chan_get_error(chan, &tmp);
        if (strstr(tmp.msg, "temporarily unavailable"))
            return lm_error_set(err, -ETIMEDOUT, "no HELLO from the source within %d s",
                                HELLO_TIMEOUT_S);
        return lm_error_set(err, tmp.code ? tmp.code : -EIO, "reading HELLO: %s", tmp.msg);
    }
    tv.tv_sec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    lm_hello reply = {.version = LM_FORMAT_VERSION, .role = role, .kind = LM_HELLO_ACCEPT,
                      .page_size = LM_PAGE_SIZE, .features = in->features};
    int ret = lm_fmt_hello_decode(buf, sizeof buf, &h, err) > 0 ? 0 : -EPROTO;
    if (ret == 0 && h.kind != LM_HELLO_REQUEST)
        ret = lm_error_set(err, -EPROTO, "HELLO: expected a request, got kind %u", h.kind);
    if (ret == 0 && h.role != role && role == LM_ROLE_MAIN)
        ret = lm_error_set(err, -EPROTO, "HELLO: a %s channel arrived but no migration is "
                                         "running on this destination",
                           h.role == LM_ROLE_MULTIFD ? "multifd" : "preempt");
    if (ret == 0 && h.role != role)
        ret = lm_error_set(err, -EPROTO, "HELLO: expected the preempt channel, got role %u",
                           h.role);
    if (ret == 0 && role != LM_ROLE_MAIN && memcmp(h.session, in->session, sizeof h.session))
        ret = lm_error_set(err, -EPROTO, "HELLO: the preempt channel belongs to another "
                                         "migration (session id differs)");
    if (ret == 0 && h.page_size != LM_PAGE_SIZE)
        ret = lm_error_set(err, -EPROTO, "HELLO: source page size %u, destination %u",
                           h.page_size, LM_PAGE_SIZE);
    if (ret == 0 && (h.features & ~(LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT)))
        ret = lm_error_set(err, -ENOTSUP, "HELLO: the source asks for features 0x%llx that "
                                          "this destination does not support yet",
                           (unsigned long long)h.features);
    if (ret == 0 && h.features != in->features)
        ret = lm_error_set(err, -EPROTO, "HELLO: features differ: source 0x%llx (%s%s), "
                                         "destination 0x%llx (%s%s): set the same "
                                         "capabilities on both sides",
                           (unsigned long long)h.features,
                           h.features & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                           h.features & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "",
                           (unsigned long long)in->features,
                           in->features & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                           in->features & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "");
    if (ret < 0) {
        if (err && err->code && strstr(err->msg, "bad magic") == NULL) {
            /* A livemig peer: tell it why, so both sides name the reason. */
            reply.kind = LM_HELLO_REJECT;
            memcpy(reply.session, h.session, sizeof reply.session);
            lm_fmt_hello_encode(&reply, buf, sizeof buf);
            if (lm_chan_put(chan, buf, sizeof buf) == 0)
                send_status(chan, LM_REC_ERROR, err->code, err->msg);
        }
        return ret;
    }
    if (role == LM_ROLE_MAIN)
        memcpy(in->session, h.session, sizeof in->session);
    memcpy(reply.session, h.session, sizeof reply.session);
    lm_fmt_hello_encode(&reply, buf, sizeof buf);
    if (lm_chan_put(chan, buf, sizeof buf) < 0 || lm_chan_flush(chan) < 0)
        return lm_chan_get_error(chan, err);
    return 0;
}

static int hello(incoming *in, lm_error *err)
{
    return hello_on(in, in->chan, LM_ROLE_MAIN, err);
}

/* postcopy-preempt: the source connects its preempt channel right after
 * the main channel's HELLO; accept it (bounded) and check that it belongs
 * to this session.  Cancel shuts the listener down, which ends the wait. */
static int accept_preempt(incoming *in, lm_error *err)
{
    int fd = -1;
    if (in->lfd < 0)
        return lm_error_set(err, -EINVAL, "postcopy-preempt needs a listening tcp: or unix: "
                                          "URI (an fd: stream has no second connection)");
    struct pollfd pfd = {.fd = in->lfd, .events = POLLIN};
    int n;
    do
        n = poll(&pfd, 1, HELLO_TIMEOUT_S * 1000);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return lm_error_set(err, -ETIMEDOUT, "the source's preempt channel did not connect "
                                             "within %d s", HELLO_TIMEOUT_S);
    int ret = lm_sock_accept(in->lfd, &fd, err);
    if (ret < 0)
        return lm_error_prefix(err, "preempt channel");
    lm_chan *c = NULL;
    ret = lm_chan_new(fd, "preempt channel", &c, err);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    ret = hello_on(in, c, LM_ROLE_PREEMPT, err);
    if (ret < 0) {
        lm_chan_free(c);
        return lm_error_prefix(err, "preempt channel");
    }
    return lm_postcopy_preempt_start(in->m, c, err);
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

static int skip_section(lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    /* Device sections arrive with the devices issue; until then any
     * section names a device this destination does not have. */
    uint8_t buf[4 + 4 + 4 + 1 + LM_SECTION_NAME_MAX];
    size_t n = h->len < sizeof buf ? h->len : sizeof buf;
    if (lm_chan_read_full(c, buf, n) < 0)
        return lm_chan_get_error(c, err);
    lm_section_hdr s;
    if (lm_fmt_section_hdr_decode(h->type, buf, n, &s, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    if (h->type == LM_REC_SECTION_START || h->type == LM_REC_SECTION_FULL)
        return lm_error_set(err, -ENOENT, "unknown device section '%s' instance %u", s.name,
                            s.instance);
    return lm_error_set(err, -ENOENT, "section id %u was never started", s.section_id);
}

/* POSTCOPY_RUN: register RAM with userfaultfd and start the fault thread
 * (a failure here leaves the guest stopped: the source pauses, nothing
 * runs twice), then postcopy-active and start the guest.  The PING that
 * follows RUN is answered by the load loop once this returned. */
static int postcopy_run(incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    if (!in->tmp) {
        in->tmp = malloc((size_t)LM_RAM_MAX_RUN * LM_PAGE_SIZE);
        if (!in->tmp)
            return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = lm_postcopy_listen(m, in->chan, err);
    if (ret < 0)
        return ret;
    if (!lm_state_set(m, LM_STATUS_ACTIVE, LM_STATUS_POSTCOPY_ACTIVE))
        return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
    in->running = true;
    /* With a preempt channel this thread only places the background
     * push: the fault thread and the preempt loader go first (a requested
     * page still in this thread's socket buffers is sent again on the
     * preempt channel, so nothing urgent waits for it).  Without one,
     * requested pages come this way and it keeps its priority. */
    if (in->features & LM_FEAT_PREEMPT)
        lm_postcopy_background_thread();
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    return 0;
}

/* The load loop; returns 0 at end of stream. */
static int load(incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    int ret = lm_ram_load_setup(m, err);
    if (ret < 0)
        return ret;
    for (;;) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        if (lm_chan_read_full(in->chan, hb, sizeof hb) < 0)
            return lm_chan_get_error(in->chan, err);
        if (lm_fmt_rec_hdr_decode(hb, sizeof hb, &h, err) <= 0)
            return err && err->code ? err->code : -EPROTO;
        /* Between the first DISCARD and RUN the owed pages are dropped:
         * a page written now would be taken for a final one. */
        if (in->discarding && !in->running && h.type != LM_REC_POSTCOPY_DISCARD &&
            h.type != LM_REC_POSTCOPY_RUN && h.type != LM_REC_SECTION_FULL &&
            h.type != LM_REC_SECTION_END && h.type != LM_REC_ERROR)
            return lm_error_set(err, -EPROTO, "%s between POSTCOPY_DISCARD and POSTCOPY_RUN",
                                lm_rec_type_name(h.type));
        switch (h.type) {
        case LM_REC_RAM_PAGES:
        case LM_REC_RAM_ZERO:
            if (in->running) {
                ret = lm_ram_postcopy_load_record(m, in->chan, &h, in->tmp, err);
                if (ret < 0)
                    return ret;
                break;
            }
            /* fall through */
        case LM_REC_RAM_BLOCKS:
        case LM_REC_RAM_PASS:
            if (in->running && h.type != LM_REC_RAM_PASS)
                return lm_error_set(err, -EPROTO, "%s after POSTCOPY_RUN",
                                    lm_rec_type_name(h.type));
            ret = lm_ram_load_record(m, in->chan, &h, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_POSTCOPY_DISCARD:
            if (!(in->features & LM_FEAT_POSTCOPY) || in->running)
                return lm_error_set(err, -EPROTO, "POSTCOPY_DISCARD %s",
                                    in->running ? "after POSTCOPY_RUN"
                                                : "without the postcopy feature");
            in->discarding = true;
            ret = lm_ram_postcopy_load_discard(m, in->chan, &h, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_POSTCOPY_RUN:
            if (!(in->features & LM_FEAT_POSTCOPY) || in->running)
                return lm_error_set(err, -EPROTO, "POSTCOPY_RUN %s",
                                    in->running ? "received twice"
                                                : "without the postcopy feature");
            if (!m->in.have_blocks && m->nblocks)
                return lm_error_set(err, -EPROTO, "POSTCOPY_RUN before the RAM block table");
            ret = postcopy_run(in, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_PING: {
            uint8_t p[4], r[4];
            uint32_t v;
            if (lm_chan_read_full(in->chan, p, sizeof p) < 0)
                return lm_chan_get_error(in->chan, err);
            if (lm_fmt_u32_decode(p, sizeof p, &v, err) <= 0)
                return -EPROTO;
            lm_fmt_u32_encode(v, r, 4);
            if (lm_postcopy_rp_write(m, in->chan, LM_REC_RP_PONG, r, sizeof r) < 0)
                return lm_chan_get_error(in->chan, err);
            break;
        }
        case LM_REC_SWITCHOVER_START:
            break;
        case LM_REC_SECTION_START:
        case LM_REC_SECTION_PART:
        case LM_REC_SECTION_END:
        case LM_REC_SECTION_FULL:
            return skip_section(in->chan, &h, err);
        case LM_REC_EOS:
            if (!m->in.have_blocks && m->nblocks)
                return lm_error_set(err, -EPROTO, "end of stream before the RAM block table");
            if (in->discarding && !in->running)
                return lm_error_set(err, -EPROTO, "end of stream between POSTCOPY_DISCARD and "
                                                  "POSTCOPY_RUN");
            if (in->running)
                return lm_postcopy_wait_placed(m, err);
            return 0;
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
    /* The capabilities at this point are the ones of this migration (a
     * waiting destination may change them until the source connects). */
    pthread_mutex_lock(&m->lock);
    uint64_t caps = m->caps;
    bool keep_listening = in->lfd >= 0 && (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT));
    if (!keep_listening)
        m->listen_fd = -1;
    pthread_mutex_unlock(&m->lock);
    if (caps & (1ull << LM_CAP_POSTCOPY_RAM))
        in->features |= LM_FEAT_POSTCOPY;
    if (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT))
        in->features |= LM_FEAT_PREEMPT;
    if (in->lfd >= 0 && !keep_listening) {
        close(in->lfd); /* one stream per migrate-incoming */
        in->lfd = -1;
    }
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
    if (ret == 0 && (in->features & LM_FEAT_PREEMPT))
        ret = accept_preempt(in, &err);
    if (in->lfd >= 0) {
        pthread_mutex_lock(&m->lock);
        m->listen_fd = -1;
        pthread_mutex_unlock(&m->lock);
        close(in->lfd);
        in->lfd = -1;
    }
    if (ret < 0)
        goto out;
    if (!lm_state_set(m, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        ret = lm_error_set(&err, -ECANCELED, "incoming migration cancelled");
        goto out;
    }
    ret = load(in, &err);
    if (ret < 0)
        goto out;
    if (in->running) {
        /* Postcopy: every owed page is placed; the guest runs already. */
        lm_postcopy_preempt_stop(m);
        lm_postcopy_end(m);
        send_status_rp(m, in->chan, LM_REC_RP_SHUT, 0, "loaded");
        goto out;
    }
    /* Everything loaded: run the guest, then confirm.  The source counts
     * its downtime until this confirmation arrives. */
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    send_status(in->chan, LM_REC_RP_SHUT, 0, "loaded");
out:
    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    pthread_mutex_unlock(&m->lock);
    bool paused = ret < 0 && in->running;
    if (paused) {
        /* The guest runs here with pages still at the source: never fail.
         * Requests stay marked (the fault thread keeps running), the
         * workload waits on missing pages; the source hears why. */
        if (!err.code)
            lm_error_set(&err, ret, "incoming postcopy failed");
        lm_error_prefix(&err, "postcopy paused (the guest keeps running; missing pages wait "
                              "for recovery)");
        lm_postcopy_detach_rp(m);
        if (in->chan && !cancelled &&
            send_status_rp(m, in->chan, LM_REC_RP_SHUT, err.code, err.msg) == 0)
            linger_drain(in->chan);
        lm_postcopy_preempt_stop(m);
        lm_mig_set_error(m, &err);
    } else if (ret < 0) {
        lm_postcopy_preempt_stop(m);
        lm_postcopy_end(m);
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
        lm_emit_status(m, final);
    lm_chan_free(in->chan);
    free(in->tmp);
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
    pthread_mutex_lock(&m->pc.lock);
    m->pc.switched = false; /* query shows postcopy figures of this migration only */
    pthread_mutex_unlock(&m->pc.lock);
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
