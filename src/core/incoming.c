/*
 * incoming.c - the destination side: listen, accept one stream, check its
 * HELLO, load records straight into guest memory, confirm with RP_SHUT.
 *
 * Threads: "lm-incoming" (one per migrate-incoming) accepts, reads and
 * loads; it alone uses the main channel, reading the stream and writing
 * the return path.  With multifd it accepts every channel of the session
 * first (in any order: HELLO names each), then "lm-mfd-recv/N" threads read
 * the multifd channels (multifd/recv.c).
 *
 * Postcopy (postcopy.c does the userfaultfd work): with postcopy-preempt
 * the preempt channel is one more connection of the session, accepted
 * like the multifd ones.  POSTCOPY_DISCARD drops owed pages, POSTCOPY_RUN
 * starts the fault thread and the guest; from then on pages are placed
 * atomically and return-path writes go through lm_postcopy_rp_write (the
 * fault thread writes requests on the same channel).  A failure after
 * POSTCOPY_RUN pauses (postcopy-paused): the guest keeps running, the
 * fault thread keeps its requests, nothing is lost silently.  Multifd
 * channels are fenced (MULTIFD_FLUSH) before the first POSTCOPY_DISCARD
 * and again right after POSTCOPY_RUN; past that second fence they carry
 * the background push, placed atomically by their threads (recv.c).
 * Cancel (any thread) shuts down the listening socket or the channel
 * under m->lock, which makes the blocked accept/read return.
 * A failed load leaves the process up and answering QMP, in `inmigrate`,
 * ready for another migrate-incoming.
 */
#include "core/internal.h"
#include "multifd/multifd.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_TIMEOUT_S 10
/* After the first channel, the others of the session must come within. */
#define CHANNELS_TIMEOUT_MS 10000

typedef struct incoming {
    lm_mig *m;
    int lfd;
    lm_chan *chan;                /* the main channel once known */
    /* Channel identification (incoming thread only). */
    bool have_session;
    uint8_t session[LM_SESSION_ID_LEN];
    uint64_t features;
    unsigned nmfd;                /* multifd channels of the session */
    unsigned nmfd_have;
    lm_chan *mfd_chans[LM_MULTIFD_MAX_CHANNELS];
    lm_mfd_recv *mfd;
    lm_chan *preempt;             /* postcopy-preempt channel until started */
    bool have_preempt;
    lm_loadvm lv;            /* device sections and switchover-ack */
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

/* Checks one HELLO against this destination and the channels already
 * accepted; returns 0 or an error naming what was wrong. */
static int hello_check(incoming *in, const lm_hello *h, lm_error *err)
{
    pthread_mutex_lock(&in->m->lock);
    bool multifd = in->m->caps & (1ull << LM_CAP_MULTIFD);
    pthread_mutex_unlock(&in->m->lock);
    if (h->kind != LM_HELLO_REQUEST)
        return lm_error_set(err, -EPROTO, "HELLO: expected a request, got kind %u", h->kind);
    if (h->page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO, "HELLO: source page size %u, destination %u",
                            h->page_size, LM_PAGE_SIZE);
    const uint64_t known =
        LM_FEAT_MULTIFD | LM_FEAT_SWITCHOVER_ACK | LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT;
    if (h->features & ~known)
        return lm_error_set(err, -ENOTSUP, "HELLO: the source asks for features 0x%llx that "
                                           "this destination does not support yet",
                            (unsigned long long)(h->features & ~known));
    /* switchover-ack must be on at both ends: on the source only, it would
     * wait for an ack that never comes; on the destination only, it would
     * hold devices for a handshake the source never starts (seed 003, the
     * first trap).  Fail at setup, naming the side. */
    pthread_mutex_lock(&in->m->lock);
    bool ack_here = in->m->caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    pthread_mutex_unlock(&in->m->lock);
    bool ack_there = h->features & LM_FEAT_SWITCHOVER_ACK;
    if (ack_here != ack_there)
        return lm_error_set(err, -EPROTO, "HELLO: capability 'switchover-ack' is %s on the "
                                          "source but %s on the destination (set it on both "
                                          "sides)",
                            ack_there ? "on" : "off", ack_here ? "on" : "off");
    pthread_mutex_lock(&in->m->lock);
    uint64_t caps = in->m->caps;
    pthread_mutex_unlock(&in->m->lock);
    uint64_t pc_here = (caps & (1ull << LM_CAP_POSTCOPY_RAM) ? LM_FEAT_POSTCOPY : 0) |
                       (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT) ? LM_FEAT_PREEMPT : 0);
    uint64_t pc_there = h->features & (LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT);
    if (pc_here != pc_there)
        return lm_error_set(err, -EPROTO, "HELLO: features differ: source 0x%llx (%s%s), "
                                          "destination 0x%llx (%s%s): set the same "
                                          "capabilities on both sides",
                            (unsigned long long)pc_there,
                            pc_there & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                            pc_there & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "",
                            (unsigned long long)pc_here,
                            pc_here & LM_FEAT_POSTCOPY ? "postcopy-ram" : "no postcopy-ram",
                            pc_here & LM_FEAT_PREEMPT ? ", postcopy-preempt" : "");
    bool src_mfd = h->features & LM_FEAT_MULTIFD;
    if (src_mfd && !multifd)
        return lm_error_set(err, -EPROTO, "the source migrates with multifd but the 'multifd' "
                                          "capability is off on this destination");
    if (!src_mfd && multifd)
        return lm_error_set(err, -EPROTO, "the 'multifd' capability is on on this destination "
                                          "but the source migrates without it");
    if (src_mfd ? h->chan_count < 1 || h->chan_count > LM_MULTIFD_MAX_CHANNELS
                : h->chan_count != 0)
        return lm_error_set(err, -EPROTO, "HELLO: %u multifd channels announced", h->chan_count);
    if (in->have_session) {
        if (memcmp(h->session, in->session, sizeof in->session) != 0)
            return lm_error_set(err, -EPROTO, "a channel of another migration session arrived "
                                              "(%s channel %u)",
                                h->role == LM_ROLE_MAIN ? "main" : "multifd", h->chan_index);
        if (h->features != in->features || h->chan_count != in->nmfd)
            return lm_error_set(err, -EPROTO, "HELLO: channels of one session disagree on "
                                              "features or channel count");
    }
    switch (h->role) {
    case LM_ROLE_MAIN:
        if (in->chan)
            return lm_error_set(err, -EPROTO, "a second main channel arrived");
        if (h->chan_index != 0)
            return lm_error_set(err, -EPROTO, "HELLO: main channel with index %u",
                                h->chan_index);
        return 0;
    case LM_ROLE_MULTIFD:
        if (!src_mfd)
            return lm_error_set(err, -EPROTO, "a multifd channel arrived but the session does "
                                              "not use multifd");
        if (h->chan_index >= h->chan_count)
            return lm_error_set(err, -EPROTO, "multifd channel %u of %u does not exist",
                                h->chan_index, h->chan_count);
        if (in->mfd_chans[h->chan_index])
            return lm_error_set(err, -EPROTO, "multifd channel %u arrived twice", h->chan_index);
        return 0;
    default: /* LM_ROLE_PREEMPT: the decoder knows no other role */
        if (!(h->features & LM_FEAT_PREEMPT))
            return lm_error_set(err, -EPROTO, "a preempt channel arrived but the session does "
                                              "not use postcopy-preempt");
        if (in->have_preempt)
            return lm_error_set(err, -EPROTO, "a second preempt channel arrived");
        if (h->chan_index != 0)
            return lm_error_set(err, -EPROTO, "HELLO: preempt channel with index %u",
                                h->chan_index);
        return 0;
    }
}

/* Reads and checks the HELLO of one connection; answers ACCEPT or
 * REJECT+ERROR; on success the channel is placed (main or multifd N) and
 * owned by `in`. */
static int hello(incoming *in, lm_chan *c, lm_error *err)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello h;
    int fd = lm_chan_fd(c);
    struct timeval tv = {.tv_sec = HELLO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (lm_chan_read_full(c, buf, sizeof buf) < 0) {
        lm_error tmp = {0};
        lm_chan_get_error(c, &tmp);
        if (strstr(tmp.msg, "temporarily unavailable"))
            return lm_error_set(err, -ETIMEDOUT, "no HELLO from the source within %d s",
                                HELLO_TIMEOUT_S);
        return lm_error_set(err, tmp.code ? tmp.code : -EIO, "reading HELLO: %s", tmp.msg);
    }
    tv.tv_sec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    int ret = lm_fmt_hello_decode(buf, sizeof buf, &h, err) > 0 ? 0 : -EPROTO;
    if (ret == 0)
        ret = hello_check(in, &h, err);
    lm_hello reply = {.version = LM_FORMAT_VERSION, .role = h.role, .kind = LM_HELLO_ACCEPT,
                      .page_size = LM_PAGE_SIZE, .chan_index = h.chan_index,
                      .chan_count = h.chan_count, .features = h.features};
    memcpy(reply.session, h.session, sizeof reply.session);
    if (ret < 0) {
        if (err && err->code && strstr(err->msg, "bad magic") == NULL) {
            /* A livemig peer: tell it why, so both sides name the reason. */
            reply.kind = LM_HELLO_REJECT;
            reply.role = LM_ROLE_MAIN;
            reply.features = 0;
            reply.chan_count = 0;
            lm_fmt_hello_encode(&reply, buf, sizeof buf);
            if (lm_chan_put(c, buf, sizeof buf) == 0)
                send_status(c, LM_REC_ERROR, err->code, err->msg);
        }
        return ret;
    }
    lm_fmt_hello_encode(&reply, buf, sizeof buf);
    if (lm_chan_put(c, buf, sizeof buf) < 0 || lm_chan_flush(c) < 0)
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

/* Accepts connections until the main channel and every multifd channel of
 * the session are there (DESIGN §5: identified by HELLO, never by order). */
static int accept_channels(incoming *in, lm_error *err)
{
    lm_mig *m = in->m;
    uint64_t deadline = 0;
    for (;;) {
        if (in->chan && in->nmfd_have == in->nmfd &&
            (in->have_preempt || !(in->features & LM_FEAT_PREEMPT)))
            return 0;
        int fd = -1, ret;
        if (deadline) {
            int64_t left = (int64_t)(deadline - lm_now_ns()) / 1000000;
            struct pollfd p = {.fd = in->lfd, .events = POLLIN};
            int r = left > 0 ? poll(&p, 1, (int)left) : 0;
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0 && in->nmfd_have < in->nmfd)
                return lm_error_set(err, -ETIMEDOUT,
                                    "only %s%u of %u multifd channels arrived within %d s",
                                    in->chan ? "the main channel and " : "", in->nmfd_have,
                                    in->nmfd, CHANNELS_TIMEOUT_MS / 1000);
            if (r == 0)
                return lm_error_set(err, -ETIMEDOUT, "the source's %s channel did not "
                                                     "connect within %d s",
                                    in->chan ? "preempt" : "main", CHANNELS_TIMEOUT_MS / 1000);
        }
        ret = lm_sock_accept(in->lfd, &fd, err);
        if (ret < 0)
            return ret;
        pthread_mutex_lock(&m->lock);
        bool cancel = m->cancel_requested;
        pthread_mutex_unlock(&m->lock);
        lm_chan *c;
        ret = lm_chan_new(fd, "incoming channel", &c, err);
        if (ret < 0) {
            close(fd);
            return ret;
        }
        if (cancel) {
            lm_chan_free(c);
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        }
        ret = hello(in, c, err);
        if (ret < 0) {
            if (c != in->chan && c != in->preempt) {
                bool placed = false;
                for (unsigned i = 0; i < in->nmfd; i++)
                    placed |= in->mfd_chans[i] == c;
                if (!placed) {
                    if (err && err->code && strstr(err->msg, "bad magic") == NULL)
                        linger_drain(c);
                    lm_chan_free(c);
                }
            }
            return ret;
        }
        if (!deadline)
            deadline = lm_now_ns() + CHANNELS_TIMEOUT_MS * 1000000ull;
    }
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
    if (in->features & LM_FEAT_PREEMPT) {
        lm_postcopy_background_thread();
        lm_chan_set_io_slice(in->chan, LM_PC_BULK_SLICE);
    }
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
    ret = lm_loadvm_setup(m, &in->lv, err);
    if (ret < 0)
        return ret;
    for (;;) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        /* No read-ahead: page data after a header lands in guest memory. */
        if (lm_chan_read_exact(in->chan, hb, sizeof hb) < 0)
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
            if (h.type == LM_REC_RAM_BLOCKS && in->mfd)
                lm_mfd_recv_blocks_ready(in->mfd);
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
            /* Device sections are complete: the guest runs from now on. */
            lm_loadvm_cleanup(m, &in->lv);
            ret = postcopy_run(in, err);
            if (ret < 0)
                return ret;
            break;
        case LM_REC_MULTIFD_FLUSH: {
            uint8_t p[8];
            uint64_t seq;
            if (lm_chan_read_full(in->chan, p, sizeof p) < 0)
                return lm_chan_get_error(in->chan, err);
            if (lm_fmt_u64_decode(p, sizeof p, &seq, err) <= 0)
                return -EPROTO;
            if (!in->mfd)
                return lm_error_set(err, -EPROTO, "MULTIFD_FLUSH in a migration without "
                                                  "multifd channels");
            ret = lm_mfd_recv_sync(in->mfd, seq, err);
            if (ret < 0)
                return ret;
            break;
        }
        case LM_REC_PING: {
            uint8_t p[4], r[4];
            uint32_t v;
            if (lm_chan_read_full(in->chan, p, sizeof p) < 0)
                return lm_chan_get_error(in->chan, err);
            if (lm_fmt_u32_decode(p, sizeof p, &v, err) <= 0)
                return -EPROTO;
            lm_fmt_u32_encode(v, r, 4);
            if (lm_postcopy_rp_write(m, in->chan, LM_REC_RP_PONG, r, 4) < 0)
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
            if (in->discarding && !in->running)
                return lm_error_set(err, -EPROTO, "end of stream between POSTCOPY_DISCARD and "
                                                  "POSTCOPY_RUN");
            /* Every multifd channel ends too (after its last sync), then
             * the device sections are checked complete (in postcopy they
             * were at RUN) and every owed page is placed. */
            if (in->mfd && lm_mfd_recv_finish(in->mfd, err) < 0)
                return err->code;
            if (in->running)
                return lm_postcopy_wait_placed(m, err);
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
        lm_chan *c = NULL;
        ret = lm_chan_new(fd, "incoming channel", &c, &err);
        if (ret < 0)
            close(fd);
        if (ret == 0 && (ret = hello(in, c, &err)) < 0 && c != in->chan)
            lm_chan_free(c);
        if (ret == 0 && in->nmfd)
            ret = lm_error_set(&err, -EPROTO, "the source uses multifd, which needs a "
                                              "listening socket, not the connected fd");
    } else {
        ret = accept_channels(in, &err);
    }
    pthread_mutex_lock(&m->lock);
    m->listen_fd = -1;
    pthread_mutex_unlock(&m->lock);
    if (in->lfd >= 0)
        close(in->lfd); /* one migration per migrate-incoming */
    in->lfd = -1;
    if (ret < 0)
        goto out;
    if (in->nmfd) {
        /* The channels now belong to the receiver, even if it fails. */
        ret = lm_mfd_recv_new(m, in->chan, in->mfd_chans, in->nmfd, &in->mfd, &err);
        memset(in->mfd_chans, 0, sizeof in->mfd_chans);
        if (ret < 0)
            goto out;
    }
    if (in->preempt) {
        lm_chan *c = in->preempt;
        in->preempt = NULL; /* owned by postcopy.c from here, even on failure */
        ret = lm_postcopy_preempt_start(m, c, &err);
        if (ret < 0)
            goto out;
    }
    if (!lm_state_set(m, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        ret = lm_error_set(&err, -ECANCELED, "incoming migration cancelled");
        goto out;
    }
    ret = load(in, &err);
    lm_loadvm_cleanup(m, &in->lv); /* before the guest runs, as QEMU does */
    if (ret < 0)
        goto out;
    if (in->running) {
        /* Postcopy: every owed page is placed; the guest runs already. */
        lm_postcopy_preempt_stop(m);
        lm_postcopy_end(m);
        send_status_rp(m, in->chan, LM_REC_RP_SHUT, 0, "loaded");
        lm_postcopy_release(m); /* after the source heard: unmapping takes time */
        goto out;
    }
    /* Everything loaded: run the guest, then confirm.  The source counts
     * its downtime until this confirmation arrives. */
    lm_vm_start_after_migration(m, LM_RUN_RUNNING);
    send_status(in->chan, LM_REC_RP_SHUT, 0, "loaded");
out:
    lm_loadvm_cleanup(m, &in->lv); /* no-op when done above */
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
    if (in->mfd) {
        if (ret < 0)
            lm_mfd_recv_shutdown(in->mfd, "incoming migration ended");
        lm_mfd_recv_free(in->mfd);
    }
    lm_mig_aux_chans_clear(m);
    for (unsigned i = 0; i < LM_MULTIFD_MAX_CHANNELS; i++)
        lm_chan_free(in->mfd_chans[i]); /* accepted, never handed over */
    lm_chan_free(in->preempt);
    LM_ATOMIC_SET(&m->stats.end_ns, lm_now_ns());
    lm_ram_prefault_stop(m);
    if (!paused)
        lm_postcopy_release(m); /* the aliases of a migration without a switch */
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
            lm_error_prefix(err, "migrate-incoming");
            return ret; /* not prefix's: err may be NULL */
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
