/*
 * outgoing.c - the source side: the migration thread and the return path.
 *
 * Threads:
 *  - "lm-migration" (one per migration): connects, says HELLO, runs setup,
 *    the iteration loop of seed 000 (DESIGN §4), switchover and cleanup.
 *    It alone writes to the main channel and owns the RAM send state.
 *  - "lm-rp": reads the destination's return-path records (SHUT, PONG,
 *    ERROR, SWITCHOVER_ACK, DEVICE_ACK, REQ_PAGES) from the same socket
 *    and reports them under m->lock (a device's ack state: relaxed
 *    atomics).  In postcopy it serves page requests: itself, on the
 *    preempt channel, under m->ram_lock (QEMU's ram_save_host_page_urgent),
 *    or by queueing them for the migration thread when there is no
 *    preempt channel.  After POSTCOPY_RUN may have gone out, a failure
 *    pauses (postcopy-paused): the source keeps its memory and stays
 *    stopped.
 *  - with multifd, "lm-mfd-send/N" per channel (multifd/send.c); the
 *    migration thread connects their channels, hands them over and, at the
 *    end, joins them.  They carry the precopy passes and, after
 *    POSTCOPY_RUN, postcopy's background push (never requested pages).
 * Both wait on m->cond; cancel, parameter changes, migrate-continue and
 * return-path news broadcast it.  A failure or cancel before the end of
 * stream leaves the source running; after it, the destination's SHUT
 * decides (see completion()).
 */
#include "core/internal.h"
#include "multifd/multifd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 10000
#define HELLO_TIMEOUT_MS 10000
/* Below this many bytes left, another live round cannot shorten the pause
 * by more than a fraction of a millisecond at loopback speeds. */
#define ADAPTIVE_MIN_PENDING (1ull << 20)
#define ADAPTIVE_MAX_EXTRA_ROUNDS 10

typedef struct outgoing {
    lm_mig *m;
    lm_uri uri;
    lm_out o;
    lm_chan *chan;
    uint8_t session[LM_SESSION_ID_LEN];
    unsigned nmfd;               /* multifd channels (0: off) */
    lm_chan *mfd_chans[LM_MULTIFD_MAX_CHANNELS]; /* until handed to o.mfd */
    lm_mfd_send_cfg mfd_cfg;
    bool test_shuffle;           /* test knob: connect channels in random order */
    uint64_t rl_seen;            /* bytes already accounted to the rate limiter */
    lm_ratelimit rl;
    uint64_t params_gen;
    lm_params params;
    bool caps_pause;
    /* window accounting (100 ms, QEMU's migration_update_counters) */
    uint64_t win_start_ns;
    uint64_t win_start_bytes;
    uint64_t win_start_pages;
    bool win_throttled;
    bool have_unthrottled_bw;
    uint64_t bandwidth;          /* B/s used for threshold and expectation */
    uint64_t threshold;          /* bytes */
    unsigned extra_rounds;
    /* Round trip of a PING: the smallest seen, because one queued behind
     * page data (or answered by a destination busy populating memory)
     * measures that instead of the confirmation at switchover.  At most one
     * PING is in flight: ping_sent_ns is 0 when none is (atomics: the
     * return-path thread writes both). */
    uint64_t rtt_ns;
    uint64_t ping_sent_ns;
    uint32_t ping_seq;
    bool verdict;                /* SHUT/ERROR came from the destination (lock) */
    bool ack_cap;                /* switchover-ack on for this migration (fixed at start) */
    uint64_t features;           /* LM_FEAT_* of this migration */
    lm_chan *preempt;            /* postcopy-preempt channel, or NULL */
    pthread_t preq_thread;       /* "lm-rp-preempt": page requests on it */
    bool preq_running;           /* that thread exists (migration thread) */
    uint32_t run_ping;           /* value of the PING after POSTCOPY_RUN (atomic) */
    bool run_sent;               /* POSTCOPY_RUN may be out: failures pause */
    bool paused;                 /* finished in postcopy-paused */
    uint64_t pc_t0;              /* guest stopped for the switch */
    bool was_running;            /* guest was running when we stopped it */
    bool stopped_vm;
} outgoing;

static void *rp_thread_fn(void *arg);

int lm_out_record(lm_out *o, uint8_t type, const void *payload, uint32_t len)
{
    uint8_t hdr[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(type, len, hdr, sizeof hdr);
    if (len > 4096)
        return lm_chan_write_ref(o->chan, hdr, sizeof hdr, payload, len);
    int ret = lm_chan_put(o->chan, hdr, sizeof hdr);
    if (ret == 0 && len)
        ret = lm_chan_put(o->chan, payload, len);
    return ret;
}

uint64_t lm_out_bytes(const lm_out *o)
{
    return lm_chan_bytes_written(o->chan) + LM_ATOMIC_GET(&o->m->stats.multifd_bytes);
}

static lm_status cur_status(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    lm_status s = m->status;
    pthread_mutex_unlock(&m->lock);
    return s;
}

/* ------------------------------------------------------------ handshake */

/* HELLO on one connection: role and index name the channel, the session
 * id ties the channels of this migration together (DESIGN §5). */
static int hello(outgoing *g, lm_chan *c, lm_chan_role role, unsigned index, lm_error *err)
{
    uint8_t buf[LM_HELLO_SIZE];
    lm_hello h = {.version = LM_FORMAT_VERSION, .role = (uint8_t)role,
                  .kind = LM_HELLO_REQUEST, .page_size = LM_PAGE_SIZE,
                  .chan_index = (uint16_t)index, .chan_count = (uint16_t)g->nmfd,
                  .features = g->features};
    memcpy(h.session, g->session, sizeof h.session);
    lm_fmt_hello_encode(&h, buf, sizeof buf);
    if (lm_chan_put(c, buf, sizeof buf) < 0 || lm_chan_flush(c) < 0)
        return lm_chan_get_error(c, err);
    int r = lm_chan_wait_readable(c, HELLO_TIMEOUT_MS);
    if (r == 0)
        return lm_error_set(err, -ETIMEDOUT, "destination did not answer HELLO within %d s",
                            HELLO_TIMEOUT_MS / 1000);
    if (r < 0 || lm_chan_read_full(c, buf, sizeof buf) < 0) {
        lm_chan_get_error(c, err);
        return lm_error_prefix(err, "waiting for the destination's HELLO");
    }
    lm_hello reply;
    if (lm_fmt_hello_decode(buf, sizeof buf, &reply, err) <= 0)
        return lm_error_prefix(err, "destination's HELLO");
    if (reply.kind == LM_HELLO_REJECT) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr rh;
        lm_status_msg sm = {0};
        uint8_t *p = NULL;
        if (lm_chan_read_full(c, hb, sizeof hb) == 0 &&
            lm_fmt_rec_hdr_decode(hb, sizeof hb, &rh, NULL) > 0 && rh.type == LM_REC_ERROR &&
            (p = malloc(rh.len ? rh.len : 1)) && lm_chan_read_full(c, p, rh.len) == 0)
            lm_fmt_status_msg_decode(p, rh.len, &sm, NULL);
        free(p);
        return lm_error_set(err, -ECONNREFUSED, "destination rejected the migration: %s",
                            sm.msg[0] ? sm.msg : "no reason given");
    }
    if (reply.kind != LM_HELLO_ACCEPT || reply.role != role || reply.chan_index != index ||
        memcmp(reply.session, h.session, sizeof h.session) != 0)
        return lm_error_set(err, -EPROTO, "destination's HELLO does not answer ours");
    return 0;
}

/* Test knob (never set in production): LIVEMIG_TEST_MULTIFD is a comma
 * list; "shuffle" connects the main and multifd channels in a random
 * order (the test of channel identification).  The destination reads
 * "delay=C:MS" from the same variable (multifd/recv.c). */
static void read_test_knobs(outgoing *g)
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

/* Connects and greets the main channel and, with multifd, every multifd
 * channel.  Channels are named by their HELLO, so the order does not matter
 * to the destination (the shuffle knob proves it). */
static int connect_channels(outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
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
        int fd = -1;
        int ret = lm_uri_connect(&g->uri, CONNECT_TIMEOUT_MS, &fd, err);
        if (ret < 0)
            return which ? lm_error_prefix(err, "multifd channel %u", which - 1) : ret;
        char name[32];
        if (which)
            snprintf(name, sizeof name, "multifd channel %u", which - 1);
        else
            snprintf(name, sizeof name, "main channel");
        lm_chan *c;
        ret = lm_chan_new(fd, name, &c, err);
        if (ret < 0) {
            close(fd);
            return ret;
        }
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
            return which ? lm_error_prefix(err, "multifd channel %u", which - 1) : ret;
    }
    return 0;
}

/* postcopy-preempt: the second connection, right after the main one said
 * HELLO (so the destination meets them in that order, though it tells
 * them apart by role).  Made at setup rather than at the switch, so that
 * the switch itself (the guest is stopped) does not pay a connect. */
static int connect_preempt(outgoing *g, lm_error *err)
{
    int fd = -1;
    if (g->uri.kind == LM_URI_FD)
        return lm_error_set(err, -EINVAL, "postcopy-preempt needs a second connection: use a "
                                          "tcp: or unix: URI, not fd:");
    int ret = lm_uri_connect(&g->uri, CONNECT_TIMEOUT_MS, &fd, err);
    if (ret < 0)
        return lm_error_prefix(err, "preempt channel");
    ret = lm_chan_new(fd, "preempt channel", &g->preempt, err);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    ret = hello(g, g->preempt, LM_ROLE_PREEMPT, 0, err);
    return ret < 0 ? lm_error_prefix(err, "preempt channel") : 0;
}

/* ------------------------------------------------------------ return path */

/* RP_REQ_PAGES (digest §6.3): checked against our block table; counted;
 * with a preempt channel the pages go out here and now, otherwise they
 * are queued for the migration thread, which sends them before its next
 * background run. */
static int serve_request(outgoing *g, const uint8_t *payload, uint32_t len, lm_error *err)
{
    lm_mig *m = g->m;
    lm_ram_run r;
    if (lm_fmt_req_pages_decode(payload, len, &r, err) <= 0)
        return err->code ? err->code : -EPROTO;
    if (r.block >= m->nblocks)
        return lm_error_set(err, -EPROTO, "RP_REQ_PAGES: block %u out of range (%u blocks)",
                            r.block, m->nblocks);
    lm_ram_block *b = &m->blocks[r.block];
    if (r.first_page > b->npages || r.count > b->npages - r.first_page)
        return lm_error_set(err, -EPROTO, "RP_REQ_PAGES: pages %llu+%u past the end of block "
                                          "'%s' (%llu pages)", (unsigned long long)r.first_page,
                            r.count, b->name, (unsigned long long)b->npages);
    lm_pc_req q = {.block = r.block, .count = r.count, .first_page = r.first_page};
    int ret = 0;
    bool queued = false;
    pthread_mutex_lock(&m->ram_lock);
    if (!m->pcs.serving) {
        ret = lm_error_set(err, -EPROTO, "RP_REQ_PAGES while not in postcopy");
    } else if (m->pcs.preempt) {
        if (!m->pcs.preempt_done) {
            lm_out po = {.m = m, .chan = m->pcs.preempt, .postcopy = true};
            ret = lm_ram_postcopy_send_requested(m, &po, &q, err);
            if (ret == 0 && lm_chan_flush(po.chan) < 0)
                ret = lm_chan_get_error(po.chan, err);
        }
    } else if (m->pcs.tail - m->pcs.head >= LM_PC_REQ_QUEUE) {
        ret = lm_error_set(err, -EPROTO, "RP_REQ_PAGES: more than %d requests outstanding",
                           LM_PC_REQ_QUEUE);
    } else {
        m->pcs.queue[m->pcs.tail++ % LM_PC_REQ_QUEUE] = q;
        queued = true;
    }
    pthread_mutex_unlock(&m->ram_lock);
    if (ret < 0)
        return ret;
    LM_ATOMIC_ADD(&m->stats.postcopy_requests, 1);
    if (queued) {
        pthread_mutex_lock(&m->lock);
        pthread_cond_broadcast(&m->cond); /* the migration thread may wait for its window */
        pthread_mutex_unlock(&m->lock);
    }
    return 0;
}

static bool queue_empty(lm_mig *m)
{
    pthread_mutex_lock(&m->ram_lock);
    bool e = m->pcs.head == m->pcs.tail;
    pthread_mutex_unlock(&m->ram_lock);
    return e;
}

/* "lm-rp-preempt": with postcopy-preempt the destination asks for pages
 * on the preempt channel's other direction, where nothing else travels.
 * On the main channel a request would wait for the socket, which the
 * migration thread holds while it writes the background push (measured:
 * p99 0.9 ms of a 1.3 ms remote fault there).  Only RP_REQ_PAGES comes
 * this way; any other record is a protocol error that pauses the migration
 * (it is in postcopy; the main channel is shut down with the reason, which
 * its return-path reader reports).  A transport
 * error ends only this thread: the main channel tells what happened. */
static void *preq_thread_fn(void *arg)
{
    outgoing *g = arg;
    lm_error err = {0};
    uint8_t payload[LM_RAM_PAGES_HDR_SIZE];
    pthread_setname_np(pthread_self(), "lm-rp-preempt");
    for (;;) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        if (lm_chan_read_full(g->preempt, hb, sizeof hb) < 0)
            return NULL;
        if (lm_fmt_rec_hdr_decode(hb, sizeof hb, &h, &err) <= 0)
            break;
        if (h.type != LM_REC_RP_REQ_PAGES || h.len != sizeof payload) {
            lm_error_set(&err, -EPROTO, "%s record of %u bytes", lm_rec_type_name(h.type),
                         h.len);
            break;
        }
        if (lm_chan_read_full(g->preempt, payload, h.len) < 0)
            return NULL;
        if (serve_request(g, payload, h.len, &err) < 0)
            break;
    }
    lm_error_prefix(&err, "preempt channel, from the destination");
    lm_chan_shutdown(g->chan, err.msg);
    return NULL;
}

static void *rp_thread_fn(void *arg)
{
    outgoing *g = arg;
    lm_mig *m = g->m;
    lm_error err = {0};
    uint8_t *payload = malloc(LM_ERROR_MSG_MAX + 64);
    pthread_setname_np(pthread_self(), "lm-rp");
    for (;;) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        if (!payload) {
            lm_error_set(&err, -ENOMEM, "out of memory");
            break;
        }
        if (lm_chan_read_full(g->chan, hb, sizeof hb) < 0) {
            lm_chan_get_error(g->chan, &err);
            lm_error_prefix(&err, "return path");
            break;
        }
        if (lm_fmt_rec_hdr_decode(hb, sizeof hb, &h, &err) <= 0) {
            lm_error_prefix(&err, "return path");
            break;
        }
        if (h.len > LM_ERROR_MSG_MAX + 64) {
            lm_error_set(&err, -EPROTO, "return path: %s record of %u bytes",
                         lm_rec_type_name(h.type), h.len);
            break;
        }
        if (lm_chan_read_full(g->chan, payload, h.len) < 0) {
            lm_chan_get_error(g->chan, &err);
            lm_error_prefix(&err, "return path");
            break;
        }
        if (h.type == LM_REC_RP_SHUT || h.type == LM_REC_ERROR) {
            lm_status_msg sm;
            if (lm_fmt_status_msg_decode(payload, h.len, &sm, &err) <= 0) {
                lm_error_prefix(&err, "return path");
                break;
            }
            pthread_mutex_lock(&m->lock);
            m->shut_received = true;
            g->verdict = true;
            m->shut = sm;
            if (h.type == LM_REC_ERROR && !sm.status)
                m->shut.status = -EIO;
            pthread_mutex_unlock(&m->lock);
            goto out; /* the destination closes after its verdict */
        } else if (h.type == LM_REC_RP_REQ_PAGES) {
            if (serve_request(g, payload, h.len, &err) < 0) {
                lm_error_prefix(&err, "return path");
                break;
            }
        } else if (h.type == LM_REC_RP_PONG) {
            uint32_t v;
            if (lm_fmt_u32_decode(payload, h.len, &v, &err) <= 0)
                break;
            uint32_t rp = LM_ATOMIC_GET(&g->run_ping);
            if (rp && v == rp) {
                /* The destination processed POSTCOPY_RUN: it runs. */
                LM_ATOMIC_SET(&m->stats.switch_pause_us,
                              (lm_now_ns() - LM_ATOMIC_GET(&g->pc_t0)) / 1000);
                pthread_mutex_lock(&m->lock);
                m->postcopy_run_acked = true;
                bool changed = lm_state_set_locked(m, LM_STATUS_POSTCOPY_DEVICE,
                                                   LM_STATUS_POSTCOPY_ACTIVE);
                pthread_mutex_unlock(&m->lock);
                if (changed)
                    lm_emit_status(m, LM_STATUS_POSTCOPY_ACTIVE);
                continue;
            }
            uint64_t sent = LM_ATOMIC_GET(&g->ping_sent_ns);
            if (sent && v == LM_ATOMIC_GET(&g->ping_seq)) {
                uint64_t rtt = lm_now_ns() - sent, best = LM_ATOMIC_GET(&g->rtt_ns);
                if (!best || rtt < best)
                    LM_ATOMIC_SET(&g->rtt_ns, rtt);
                LM_ATOMIC_SET(&g->ping_sent_ns, 0);
            }
        } else if (h.type == LM_REC_RP_SWITCHOVER_ACK) {
            if (!g->ack_cap) {
                lm_error_set(&err, -EPROTO, "return path: RP_SWITCHOVER_ACK without the "
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
        } else if (h.type == LM_REC_RP_DEVICE_ACK) {
            uint32_t id;
            uint8_t st;
            if (lm_fmt_device_ack_decode(payload, h.len, &id, &st, &err) <= 0) {
                lm_error_prefix(&err, "return path");
                break;
            }
            /* The device table is read-only while a migration runs. */
            lm_device *d = g->ack_cap ? lm_savevm_device_by_section(m, id) : NULL;
            if (!d || LM_ATOMIC_GET(&d->ack) != LM_DEVICE_ACK_WAITING) {
                lm_error_set(&err, -EPROTO, "return path: RP_DEVICE_ACK for section %u, "
                                            "which is not waiting for an ack", id);
                break;
            }
            LM_ATOMIC_SET(&d->ack, st == LM_DEV_ACK_READY ? LM_DEVICE_ACK_ACKED
                                                          : LM_DEVICE_ACK_FALLBACK);
        } else {
            lm_error_set(&err, -EPROTO, "return path: unexpected record %s",
                         lm_rec_type_name(h.type));
            break;
        }
    }
    /* The return path is gone without a verdict: record why (a transport
     * failure, not the destination's word) and wake the migration thread. */
    pthread_mutex_lock(&m->lock);
    if (!m->shut_received) {
        m->shut_received = true;
        m->shut.status = err.code ? err.code : -EIO;
        snprintf(m->shut.msg, sizeof m->shut.msg, "%s",
                 err.code ? err.msg : "return path closed");
    }
    pthread_mutex_unlock(&m->lock);
out:
    pthread_mutex_lock(&m->lock);
    m->rp_running = false;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    free(payload);
    return NULL;
}

/* ------------------------------------------------------- counters, policy */

/* "transferred" counts every channel; the preempt channel's bytes are
 * requested pages (the rate window and the threshold use the main one). */
static uint64_t preempt_bytes(const outgoing *g)
{
    return g->preempt ? lm_chan_bytes_written(g->preempt) : 0;
}

static void reload_params(outgoing *g)
{
    lm_mig *m = g->m;
    pthread_mutex_lock(&m->lock);
    if (g->params_gen != m->params_gen || g->params_gen == 0) {
        g->params = m->params;
        g->params_gen = m->params_gen ? m->params_gen : 1;
        g->caps_pause = m->caps & (1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER);
        /* After the switch the background push obeys max-postcopy-bandwidth
         * (0: unlimited); requested pages never wait for the window. */
        lm_rl_set(&g->rl, g->o.postcopy ? g->params.max_postcopy_bandwidth
                                         : g->params.max_bandwidth);
    }
    pthread_mutex_unlock(&m->lock);
}

static uint64_t switchover_bw(const outgoing *g)
{
    if (g->params.avail_switchover_bandwidth)
        return g->params.avail_switchover_bandwidth;
    return g->bandwidth;
}

/* Expected downtime in µs for `pending` bytes: the final sync (its cost was
 * just measured), the data at wire speed, and one round trip for the
 * destination's confirmation. */
static uint64_t expected_downtime_us(const outgoing *g, uint64_t pending)
{
    uint64_t bw = switchover_bw(g);
    uint64_t us = g->m->ram.last_sync_cost_ns / 1000 + LM_ATOMIC_GET(&g->rtt_ns) / 1000 + 200;
    if (bw)
        us += pending * 1000000ull / bw;
    return us;
}

/* Counts the bytes written since the last call against max-bandwidth.
 * Multifd channels write after the hand-off, so their bytes are counted
 * when they show up, not when the pages were queued. */
static void account_rl(outgoing *g)
{
    uint64_t total = lm_out_bytes(&g->o);
    lm_rl_account(&g->rl, total - g->rl_seen);
    g->rl_seen = total;
}

static int send_ping(outgoing *g)
{
    uint8_t pb[4];
    uint32_t seq = LM_ATOMIC_GET(&g->ping_seq) + 1;
    lm_fmt_u32_encode(seq, pb, sizeof pb);
    LM_ATOMIC_SET(&g->ping_seq, seq);
    LM_ATOMIC_SET(&g->ping_sent_ns, lm_now_ns());
    int ret = lm_out_record(&g->o, LM_REC_PING, pb, sizeof pb);
    return ret < 0 ? ret : lm_chan_flush(g->chan);
}

/* Every 100 ms: bandwidth, threshold, mbps, expected downtime (QEMU's
 * migration_update_counters, digest §3.4).  The bandwidth used for the
 * threshold is the wire speed measured in windows that were not held
 * back by max-bandwidth, because at switchover the limit is lifted: the
 * pause runs at wire speed.  Until such a window exists, the measured
 * (limited) rate is used, as QEMU does. */
static void update_counters(outgoing *g, uint64_t now)
{
    lm_mig *m = g->m;
    uint64_t bytes = lm_out_bytes(&g->o);
    LM_ATOMIC_SET(&m->stats.transferred, bytes + preempt_bytes(g));
    uint64_t dt = now - g->win_start_ns;
    if (dt < LM_RATE_WINDOW_NS)
        return;
    uint64_t wb = bytes - g->win_start_bytes;
    uint64_t pages = LM_ATOMIC_GET(&m->stats.normal) + LM_ATOMIC_GET(&m->stats.duplicate);
    uint64_t rate = wb * 1000000000ull / dt;
    LM_ATOMIC_SET(&m->stats.mbps_x1000, wb * 8ull * 1000000000ull / dt / 1000ull);
    LM_ATOMIC_SET(&m->stats.pages_per_second,
                  (pages - g->win_start_pages) * 1000000000ull / dt);
    if (wb >= (1u << 20)) {
        if (!g->win_throttled) {
            g->bandwidth = g->have_unthrottled_bw ? (g->bandwidth * 3 + rate) / 4 : rate;
            g->have_unthrottled_bw = true;
        } else if (!g->have_unthrottled_bw) {
            g->bandwidth = rate;
        }
    }
    uint64_t bw = switchover_bw(g);
    g->threshold = bw * g->params.downtime_limit / 1000;
    LM_ATOMIC_SET(&m->stats.bandwidth, bw);
    if (bw && !g->o.postcopy) {
        pthread_mutex_lock(&m->ram_lock);
        uint64_t pending = m->ram.dirty_pages * LM_PAGE_SIZE;
        pthread_mutex_unlock(&m->ram_lock);
        LM_ATOMIC_SET(&m->stats.expected_downtime_ms,
                      (int64_t)((expected_downtime_us(g, pending) + 500) / 1000));
    }
    if (!LM_ATOMIC_GET(&g->ping_sent_ns))
        send_ping(g); /* a failure is the channel's sticky error: seen by the loop */
    g->win_start_ns = now;
    g->win_start_bytes = bytes;
    g->win_start_pages = pages;
    g->win_throttled = false;
}

/* Beyond QEMU: a pending set under the threshold may still be worth one
 * more live round when the guest dirties memory slowly compared with the
 * link, because the round shrinks what the pause must carry.  QEMU stops
 * as soon as pending <= threshold and spends up to the whole budget; we
 * stop when another round would not at least halve the pending set. */
static bool another_round_pays(outgoing *g, uint64_t pending)
{
    lm_mig *m = g->m;
    if (!m->ram.tracking || pending <= ADAPTIVE_MIN_PENDING ||
        g->extra_rounds >= ADAPTIVE_MAX_EXTRA_ROUNDS)
        return false;
    uint64_t bw = switchover_bw(g);
    if (!bw)
        return false;
    /* Dirtying speed seen by the last sync, in bytes/s (at least the
     * period rate). */
    uint64_t rate = LM_ATOMIC_GET(&m->stats.dirty_pages_rate) * LM_PAGE_SIZE;
    uint64_t round_ns = pending * 1000000000ull / bw + m->ram.last_sync_cost_ns;
    uint64_t next = rate * round_ns / 1000000000ull;
    if (next * 2 >= pending)
        return false;
    g->extra_rounds++;
    return true;
}

/* Waits on m->cond until `deadline_ns` or a wake-up (cancel, params,
 * return path).  Returns false when the migration should stop waiting
 * because something happened. */
static void wait_until(lm_mig *m, uint64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                          .tv_nsec = (long)(deadline_ns % 1000000000ull)};
    pthread_mutex_lock(&m->lock);
    if (!m->cancel_requested && !m->shut_received && queue_empty(m))
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    pthread_mutex_unlock(&m->lock);
}

/* Like wait_until, also woken by the switchover ack. */
static void wait_ack(lm_mig *m, uint64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                          .tv_nsec = (long)(deadline_ns % 1000000000ull)};
    pthread_mutex_lock(&m->lock);
    if (!m->cancel_requested && !m->shut_received && !m->switchover_acked)
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------------- completion */

typedef enum { ITER_RESUME, ITER_SKIP, ITER_BREAK } iter_result;

/* The start of a switchover, shared by precopy completion and the switch
 * to postcopy (QEMU's migration_switchover_start): stop the guest, the
 * pre-switchover pause when asked, DEVICE, no rate limit, SWITCHOVER_START. */
static int switchover_start(outgoing *g, lm_error *err)
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
    return lm_out_record(&g->o, LM_REC_SWITCHOVER_START, NULL, 0);
}

/* The end of both completions: EOS on the main channel and on every
 * multifd channel, then the destination's verdict (RP_SHUT), which alone
 * makes the migration completed. */
static int end_stream(outgoing *g, const char *what, lm_error *err)
{
    lm_mig *m = g->m;
    int ret = lm_out_record(&g->o, LM_REC_EOS, NULL, 0);
    if (ret == 0)
        ret = lm_chan_flush(g->chan);
    if (ret == 0 && g->o.mfd)
        ret = lm_mfd_send_finish(g->o.mfd, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "%s", what);
    }
    pthread_mutex_lock(&m->lock);
    m->eos_sent = true;
    while (!m->shut_received)
        pthread_cond_wait(&m->cond, &m->lock);
    lm_status_msg verdict = m->shut;
    pthread_mutex_unlock(&m->lock);
    LM_ATOMIC_SET(&m->stats.transferred, lm_out_bytes(&g->o) + preempt_bytes(g));
    if (verdict.status != 0)
        return lm_error_set(err, verdict.status, "destination: %s", verdict.msg);
    return 0;
}

/* Precopy switchover (digest §3.9).  Returns 0 when the destination
 * confirmed, < 0 otherwise. */
static int completion(outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    uint64_t t0 = lm_now_ns();
    int ret = switchover_start(g, err);
    if (ret == -ECANCELED)
        return ret;
    if (ret == 0)
        ret = lm_savevm_complete(m, &g->o, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "sending the final state failed");
    }
    ret = end_stream(g, "sending the final state failed", err);
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
static int postcopy_start(outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    LM_ATOMIC_SET(&g->pc_t0, lm_now_ns());
    int ret = switchover_start(g, err);
    if (ret == -ECANCELED)
        return ret;
    if (ret == 0)
        ret = lm_savevm_complete_some(m, &g->o, 1, err);
    if (ret == 0)
        ret = lm_ram_postcopy_send_discard(m, &g->o, err);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "switching to postcopy failed");
    }
    /* From here the destination may run: cancel is refused (the state is
     * a postcopy one) and every failure pauses. */
    pthread_mutex_lock(&m->lock);
    bool ok = lm_state_set_locked(m, LM_STATUS_DEVICE, LM_STATUS_POSTCOPY_DEVICE);
    pthread_mutex_unlock(&m->lock);
    if (!ok)
        return lm_error_set(err, -ECANCELED, "migration cancelled");
    lm_emit_status(m, LM_STATUS_POSTCOPY_DEVICE);
    g->run_sent = true;
    pthread_mutex_lock(&m->ram_lock);
    m->pcs.serving = true;
    m->pcs.preempt = g->preempt;
    m->pcs.main = g->chan;
    pthread_mutex_unlock(&m->ram_lock);
    uint8_t pb[4];
    uint32_t v = 0x80000000u | (LM_ATOMIC_GET(&g->ping_seq) + 1);
    LM_ATOMIC_SET(&g->run_ping, v);
    lm_fmt_u32_encode(v, pb, sizeof pb);
    ret = lm_out_record(&g->o, LM_REC_POSTCOPY_RUN, NULL, 0);
    if (ret == 0)
        ret = lm_out_record(&g->o, LM_REC_PING, pb, sizeof pb);
    /* The multifd channels carry background pages from now on.  A fence
     * after RUN: the destination's channels read no postcopy packet
     * before its main thread processed RUN, so every such page is placed
     * atomically, none is written into memory still being discarded. */
    if (ret == 0 && g->o.mfd) {
        ret = lm_mfd_send_fence(g->o.mfd, &g->o, err);
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
        lm_postcopy_background_thread(); /* requested pages go first (lm-rp) */
        lm_chan_set_io_slice(g->chan, LM_PC_BULK_SLICE);
    }
    g->params_gen = 0; /* reload: the postcopy rate limit applies now */
    reload_params(g);
    return 0;
}

/* Postcopy completion (seed 000, digest §3.10): nothing is owed any more;
 * the complete step of postcopy-capable handlers pushes no RAM.  EOS goes
 * on the preempt channel first (under ram_lock, so no requested page is
 * being written), then on the main channel; the destination confirms
 * once every owed page is placed. */
static int completion_postcopy(outgoing *g, lm_error *err)
{
    lm_mig *m = g->m;
    int ret = 0;
    /* The destination must have confirmed that it runs (postcopy-active). */
    pthread_mutex_lock(&m->lock);
    while (!m->postcopy_run_acked && !m->shut_received && !m->cancel_requested)
        pthread_cond_wait(&m->cond, &m->lock);
    bool acked = m->postcopy_run_acked;
    pthread_mutex_unlock(&m->lock);
    if (!acked)
        return lm_error_set(err, -EPIPE, "the destination did not confirm POSTCOPY_RUN");
    ret = lm_savevm_complete_some(m, &g->o, 2, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&m->ram_lock);
    if (m->pcs.preempt && !m->pcs.preempt_done) {
        m->pcs.preempt_done = true;
        lm_out po = {.m = m, .chan = m->pcs.preempt, .postcopy = true};
        ret = lm_out_record(&po, LM_REC_EOS, NULL, 0);
        if (ret == 0)
            ret = lm_chan_flush(po.chan);
        if (ret < 0)
            lm_chan_get_error(po.chan, err);
    }
    pthread_mutex_unlock(&m->ram_lock);
    if (ret < 0) {
        lm_chan_get_error(g->chan, err);
        return lm_error_set(err, ret, "sending the end of the postcopy stream failed");
    }
    /* The multifd channels were fenced by RAM's complete step (every
     * background page they carried is placed before the destination reads
     * this EOS); they end now too. */
    return end_stream(g, "sending the end of the postcopy stream failed", err);
}

/* One step of the loop, per seed 000 (digest §3.2). */
static iter_result iteration_run(outgoing *g, lm_error *err, int *ret)
{
    lm_mig *m = g->m;
    uint64_t must = 0, can = 0;
    lm_status st = cur_status(m);
    bool in_postcopy = st == LM_STATUS_POSTCOPY_ACTIVE || st == LM_STATUS_POSTCOPY_DEVICE;
    /* Switchover-ack (digest §7): the destination's ack gates the switch,
     * unless the guest is not running (waiting gains nothing then). */
    bool can_switchover = true;
    if (g->ack_cap) {
        pthread_mutex_lock(&m->lock);
        can_switchover = m->switchover_acked;
        pthread_mutex_unlock(&m->lock);
        if (!can_switchover && lm_vm_runstate(m) != LM_RUN_RUNNING)
            can_switchover = true;
    }
    bool complete_ready, held_by_ack = false;

    /* Fast path: the cheap estimate. */
    lm_savevm_pending(m, false, &g->o, &must, &can, err);
    uint64_t pending = must + can;
    if (in_postcopy) {
        /* Postcopy completes only when everything is flushed, never by
         * threshold, and the complete step pushes no RAM (recovery stays
         * possible until the end). */
        complete_ready = pending == 0;
    } else {
        /* The exact pending (a dirty sync) is only worth it in precopy:
         * it is what starts a new pass.  A finished pass (estimate 0)
         * always syncs, as QEMU does: with no bandwidth measured yet the
         * threshold is 0, and 0 <= 0 would complete without looking at
         * what the guest dirtied meanwhile, all of it then sent in the
         * pause. */
        if (pending == 0 || pending < g->threshold) {
            lm_savevm_pending(m, true, &g->o, &must, &can, err);
            if (err && err->code) {
                *ret = err->code;
                return ITER_BREAK;
            }
            pending = must + can;
        }
        /* Switch to postcopy when asked, once what must go in precopy
         * fits the threshold and the switchover is allowed. */
        pthread_mutex_lock(&m->lock);
        bool start_postcopy = m->start_postcopy;
        pthread_mutex_unlock(&m->lock);
        if (must <= g->threshold && can_switchover && start_postcopy) {
            *ret = postcopy_start(g, err);
            return *ret < 0 ? ITER_BREAK : ITER_SKIP;
        }
        complete_ready = can_switchover && pending <= g->threshold;
        held_by_ack = !can_switchover && pending <= g->threshold;
        if (complete_ready && another_round_pays(g, pending))
            complete_ready = false;
    }
    if (complete_ready) {
        if (in_postcopy) {
            *ret = completion_postcopy(g, err);
            return ITER_BREAK;
        }
        LM_ATOMIC_SET(&m->stats.expected_downtime_ms,
                      (int64_t)((expected_downtime_us(g, pending) + 500) / 1000));
        *ret = completion(g, err);
        return ITER_BREAK;
    }
    uint64_t budget = lm_rl_budget(&g->rl);
    int r = lm_savevm_iterate(m, &g->o, budget, in_postcopy, err);
    if (r < 0) {
        *ret = r;
        return ITER_BREAK;
    }
    if (r == 1 && held_by_ack) {
        /* Ready but for the ack, and nothing left to send right now: wait
         * for the return path (or a window) instead of spinning on dirty
         * syncs.  The flush makes sure the destination has what it needs
         * to approve. */
        if (lm_chan_flush(g->chan) < 0)
            return ITER_RESUME; /* the sticky error is seen by the loop */
        wait_ack(m, lm_now_ns() + LM_RATE_WINDOW_NS / 2);
    }
    return ITER_RESUME;
}

/* ------------------------------------------------------------ the thread */

static void finish(outgoing *g, int ret, lm_error *err)
{
    lm_mig *m = g->m;
    lm_status final = LM_STATUS_COMPLETED;
    bool restart = false;
    bool dest_failed = false; /* the destination's own verdict: load failed */

    pthread_mutex_lock(&m->lock);
    bool cancelled = m->cancel_requested;
    bool committed = m->eos_sent;
    pthread_mutex_unlock(&m->lock);

    if (ret < 0 && g->run_sent) {
        /* POSTCOPY_RUN may have reached the destination, so it may run the
         * guest with part of its memory: neither side may fail.  Pause,
         * keep the guest stopped here and every page we still owe (the
         * dirty maps stay for recovery), and say why. */
        final = LM_STATUS_POSTCOPY_PAUSED;
        g->paused = true;
        pthread_mutex_lock(&m->lock);
        if (g->verdict && m->shut.status)
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
            while (m->rp_running && lm_now_ns() < deadline) {
                struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                                      .tv_nsec = (long)(deadline % 1000000000ull)};
                pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            }
            if (g->verdict && m->shut.status && !m->error.code)
                lm_error_set(&m->error, m->shut.status, "destination: %s", m->shut.msg);
            /* A destination that says its load failed never started the
             * guest (it starts only after a load that succeeded), so even a
             * committed switchover may resume here.  Small guests hit this:
             * their whole stream fits in the socket buffers, and EOS is
             * out before the destination has read the first record. */
            dest_failed = g->verdict && m->shut.status;
            pthread_mutex_unlock(&m->lock);
            if (committed && !dest_failed)
                lm_error_prefix(err, "switchover was committed but not confirmed; the source "
                                     "stays paused to avoid running twice (use 'cont' if the "
                                     "destination is not running)");
        }
        lm_mig_set_error(m, err);
        restart = g->stopped_vm && g->was_running && (!committed || dest_failed);
    }

    /* Stop the return path and the channel. */
    pthread_mutex_lock(&m->lock);
    lm_chan *chan = m->chan;
    pthread_mutex_unlock(&m->lock);
    if (chan)
        lm_chan_shutdown(chan, ret < 0 ? "migration ended" : "migration completed");
    /* Multifd: after the main channel (their failures are reported on
     * it), before it is freed. */
    if (g->o.mfd) {
        if (ret < 0)
            lm_mfd_send_shutdown(g->o.mfd, "migration ended");
        lm_mfd_send_free(g->o.mfd);
        g->o.mfd = NULL;
    }
    lm_mig_aux_chans_clear(m);
    for (unsigned i = 0; i < g->nmfd; i++)
        lm_chan_free(g->mfd_chans[i]); /* connected but never handed over */
    if (m->rp_thread) {
        pthread_join(m->rp_thread, NULL);
        m->rp_thread = 0;
    }
    pthread_mutex_lock(&m->ram_lock);
    m->pcs.preempt = NULL;
    m->pcs.main = NULL;
    m->pcs.serving = false;
    pthread_mutex_unlock(&m->ram_lock);
    uint64_t pbytes = preempt_bytes(g);
    if (g->preempt) {
        lm_chan_shutdown(g->preempt, "migration ended");
        if (g->preq_running) {
            pthread_join(g->preq_thread, NULL);
            g->preq_running = false;
        }
        lm_chan_free(g->preempt);
        g->preempt = NULL;
    }
    if (!g->paused)
        lm_savevm_cleanup(m);

    if (final == LM_STATUS_COMPLETED)
        lm_vm_start_after_migration(m, LM_RUN_POSTMIGRATE);
    else if (g->paused)
        ; /* stays stopped (finish-migrate): the destination may be running */
    else if (g->stopped_vm)
        lm_vm_start_after_migration(m, restart ? LM_RUN_RUNNING : LM_RUN_PAUSED);

    LM_ATOMIC_SET(&m->stats.end_ns, lm_now_ns());
    if (chan)
        LM_ATOMIC_SET(&m->stats.transferred, lm_chan_bytes_written(chan) + pbytes +
                                                 LM_ATOMIC_GET(&m->stats.multifd_bytes));
    uint64_t total_ns = LM_ATOMIC_GET(&m->stats.end_ns) - LM_ATOMIC_GET(&m->stats.start_ns);
    if (final == LM_STATUS_COMPLETED && total_ns) {
        /* mbps at completion is the average over the whole migration. */
        uint64_t b = LM_ATOMIC_GET(&m->stats.transferred);
        LM_ATOMIC_SET(&m->stats.mbps_x1000, b * 8ull * 1000000000ull / total_ns / 1000ull);
        LM_ATOMIC_SET(&m->stats.remaining, 0);
    }

    pthread_mutex_lock(&m->lock);
    m->chan = NULL;
    m->rp_running = false;
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
        changed = lm_state_set_locked(m, g->run_sent ? LM_STATUS_POSTCOPY_ACTIVE
                                                     : LM_STATUS_DEVICE,
                                      LM_STATUS_COMPLETED);
    }
    pthread_mutex_unlock(&m->lock);
    if (changed)
        lm_emit_status(m, final);
    lm_chan_free(chan);
}

static void *migration_thread_fn(void *arg)
{
    outgoing *g = arg;
    lm_mig *m = g->m;
    lm_error err = {0};
    int ret = 0;
    pthread_setname_np(pthread_self(), "lm-migration");

    g->o.m = m;
    reload_params(g);
    pthread_mutex_lock(&m->lock);
    uint64_t caps = m->caps;
    pthread_mutex_unlock(&m->lock);
    /* Every feature both sides must agree on goes in each HELLO. */
    if (caps & (1ull << LM_CAP_POSTCOPY_RAM))
        g->features |= LM_FEAT_POSTCOPY;
    if (caps & (1ull << LM_CAP_POSTCOPY_PREEMPT))
        g->features |= LM_FEAT_PREEMPT;
    if (g->ack_cap)
        g->features |= LM_FEAT_SWITCHOVER_ACK;
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
    g->o.zpd = g->params.zero_page_detection;
    if (getrandom(g->session, sizeof g->session, 0) != sizeof g->session) {
        ret = lm_error_set(&err, -EIO, "getrandom failed");
        goto out;
    }
    ret = connect_channels(g, &err);
    if (ret < 0)
        goto out;
    g->o.chan = g->chan;
    if (g->features & LM_FEAT_PREEMPT) {
        ret = connect_preempt(g, &err);
        if (ret < 0)
            goto out;
    }
    if (g->nmfd) {
        /* The channels now belong to the sender, even if it fails. */
        ret = lm_mfd_send_new(m, g->chan, g->mfd_chans, g->nmfd, &g->mfd_cfg, &g->o.mfd, &err);
        memset(g->mfd_chans, 0, sizeof g->mfd_chans);
        if (ret < 0) {
            lm_mig_aux_chans_clear(m);
            goto out;
        }
    }
    pthread_mutex_lock(&m->lock);
    m->rp_running = true;
    ret = -pthread_create(&m->rp_thread, NULL, rp_thread_fn, g);
    if (ret) {
        m->rp_running = false;
        m->rp_thread = 0;
    }
    pthread_mutex_unlock(&m->lock);
    if (ret < 0) {
        lm_error_set(&err, ret, "cannot start the return-path thread");
        goto out;
    }
    if (g->preempt) {
        ret = -pthread_create(&g->preq_thread, NULL, preq_thread_fn, g);
        if (ret < 0) {
            lm_error_set(&err, ret, "cannot start the preempt channel's reader");
            goto out;
        }
        g->preq_running = true;
    }
    /* A round trip measures the confirmation cost of the switchover; the
     * first one now, flushed at once (queued behind the setup it would
     * measure the first dirty sync), more every window (update_counters). */
    ret = send_ping(g);
    if (ret < 0) {
        lm_chan_get_error(g->chan, &err);
        lm_error_set(&err, ret, "setup failed");
        goto out;
    }

    reload_params(g);
    ret = lm_savevm_setup(m, &g->o, &err);
    if (ret == 0)
        ret = lm_chan_flush(g->chan);
    if (ret < 0) {
        lm_chan_get_error(g->chan, &err);
        lm_error_set(&err, ret, "setup failed");
        goto out;
    }
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

    for (;;) {
        lm_status s = cur_status(m);
        if (s != LM_STATUS_ACTIVE && s != LM_STATUS_POSTCOPY_ACTIVE &&
            s != LM_STATUS_POSTCOPY_DEVICE) {
            ret = lm_error_set(&err, -ECANCELED, "migration cancelled");
            break;
        }
        pthread_mutex_lock(&m->lock);
        bool rp_gone = m->shut_received, verdict = g->verdict;
        lm_status_msg v = m->shut;
        pthread_mutex_unlock(&m->lock);
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
        reload_params(g);
        /* Requested pages first, whatever the rate window says. */
        if (g->o.postcopy && lm_ram_postcopy_serve_queue(m, &g->o, &err) < 0) {
            ret = err.code ? err.code : -EIO;
            break;
        }
        now = lm_now_ns();
        lm_rl_tick(&g->rl, now);
        account_rl(g);
        update_counters(g, now);
        if (lm_rl_exceeded(&g->rl)) {
            g->win_throttled = true;
            wait_until(m, now + lm_rl_wait_ns(&g->rl, now));
            continue;
        }
        iter_result r = iteration_run(g, &err, &ret);
        account_rl(g);
        if (r == ITER_BREAK)
            break;
    }
out:
    if (ret < 0 && !err.code)
        lm_error_set(&err, ret, "migration failed");
    finish(g, ret, &err);
    free(g);
    return NULL;
}

int lm_outgoing_start(lm_mig *m, const char *uri, lm_error *err)
{
    outgoing *g = calloc(1, sizeof *g);
    if (!g)
        return lm_error_set(err, -ENOMEM, "out of memory");
    int ret = lm_uri_parse(uri, &g->uri, err);
    if (ret < 0)
        goto fail;

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

    pthread_mutex_lock(&m->lock);
    if (lm_status_is_active(m->status)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
        goto fail;
    }
    memset(&m->stats, 0, sizeof m->stats);
    m->stats.start_ns = lm_now_ns();
    m->stats.expected_downtime_ms = -1;
    lm_error_clear(&m->error);
    m->role = LM_ROLE_SOURCE;
    m->ram_frozen = true;
    m->cancel_requested = false;
    m->continue_requested = false;
    m->eos_sent = false;
    m->shut_received = false;
    m->switchover_acked = false;
    g->ack_cap = m->caps & (1ull << LM_CAP_SWITCHOVER_ACK);
    m->start_postcopy = false;
    m->postcopy_run_acked = false;
    pthread_mutex_lock(&m->ram_lock);
    m->pcs.head = m->pcs.tail = 0;
    m->pcs.serving = false;
    m->pcs.preempt = NULL;
    m->pcs.preempt_done = false;
    m->pcs.nrecent = 0;
    m->pcs.resent = 0;
    m->pcs.main = NULL;
    pthread_mutex_unlock(&m->ram_lock);
    memset(&m->shut, 0, sizeof m->shut);
    m->rp_thread = 0;
    lm_status prev = m->status;
    if (!lm_state_set_locked(m, prev, LM_STATUS_SETUP)) {
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, -EINVAL, "cannot start a migration from state '%s'",
                           lm_status_name(prev));
        goto fail;
    }
    g->m = m;
    ret = -pthread_create(&m->thread, NULL, migration_thread_fn, g);
    if (ret < 0) {
        m->status = LM_STATUS_FAILED;
        pthread_mutex_unlock(&m->lock);
        ret = lm_error_set(err, ret, "cannot start the migration thread");
        goto fail;
    }
    m->thread_running = true;
    pthread_mutex_unlock(&m->lock);
    lm_emit_status(m, LM_STATUS_SETUP);
    return 0;
fail:
    free(g);
    return ret;
}
