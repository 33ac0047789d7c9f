/*
 * source.c - postcopy on the source: the discard list at the switch, page
 * requests (checked, queued or served on the preempt channel), and the
 * preempt channel's request reader "lm-rp-preempt" (postcopy.h has the
 * threads and the lock order).
 *
 * A requested page is claimed from RAM's dirty maps under ram->lock and
 * sent after the lock is dropped: no lock that the control path or the
 * migration thread's waits take is ever held across a write to the
 * network.  On the preempt channel the claim and the write happen under
 * wlock, which orders them before the channel's EOS at completion.
 */
#include "postcopy/postcopy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void lm_pc_src_init(lm_pc_src *s, lm_ram *ram)
{
    memset(s, 0, sizeof *s);
    s->ram = ram;
    pthread_mutex_init(&s->qlock, NULL);
    pthread_mutex_init(&s->wlock, NULL);
}

void lm_pc_src_destroy(lm_pc_src *s)
{
    pthread_mutex_destroy(&s->qlock);
    pthread_mutex_destroy(&s->wlock);
}

void lm_pc_src_reset(lm_pc_src *s)
{
    pthread_mutex_lock(&s->qlock);
    s->head = s->tail = 0;
    LM_ATOMIC_SET(&s->queued, 0);
    s->serving = false;
    s->main = NULL;
    pthread_mutex_unlock(&s->qlock);
    s->pre = NULL;
    pthread_mutex_lock(&s->wlock);
    s->preempt_done = false;
    s->resent = 0;
    pthread_mutex_unlock(&s->wlock);
    pthread_mutex_lock(&s->ram->lock);
    s->nrecent = 0;
    pthread_mutex_unlock(&s->ram->lock);
}

/* ---------------------------------------------------------------- switch */

/* The switch (digest §6.2 step 6): the last sync, then every run of pages
 * still owed becomes a POSTCOPY_DISCARD.  "Owed" is what the dirty maps
 * say: never sent, or written after it was sent.  The destination drops
 * those pages so that touching one faults, and keeps everything else. */
int lm_pc_src_send_discard(lm_pc_src *s, lm_out *o, lm_error *err)
{
    lm_ram *r = s->ram;
    int ret = lm_ram_sync(r, o, err);
    if (ret < 0)
        return ret;
    /* The guest is stopped and no request is served yet: the maps are
     * this thread's alone. */
    for (unsigned bi = 0; bi < r->mem->nblocks; bi++) {
        uint64_t npages = r->mem->blocks[bi].npages, p, q;
        for (uint64_t from = 0; lm_ram_dirty_run_locked(r, bi, from, npages, false, &p, &q);
             from = q) {
            uint8_t buf[LM_RAM_ZERO_SIZE];
            lm_ram_zero z = {.block = bi, .first_page = p, .count = q - p};
            int n = lm_fmt_discard_encode(&z, buf, sizeof buf);
            if (n < 0)
                return lm_error_set(err, n, "encoding POSTCOPY_DISCARD failed");
            lm_out_account(o, LM_REC_HDR_SIZE + (uint64_t)n);
            ret = lm_rec_write(o->chan, LM_REC_POSTCOPY_DISCARD, buf, (uint32_t)n);
            if (ret < 0) {
                lm_chan_get_error(o->chan, err);
                return lm_error_set(err, ret, "sending POSTCOPY_DISCARD failed");
            }
        }
    }
    lm_ram_set_postcopy(r);
    return 0;
}

void lm_pc_src_serve(lm_pc_src *s, lm_chan *main)
{
    pthread_mutex_lock(&s->qlock);
    s->serving = true;
    s->main = main;
    pthread_mutex_unlock(&s->qlock);
}

void lm_pc_src_stop_serving(lm_pc_src *s)
{
    pthread_mutex_lock(&s->qlock);
    s->serving = false;
    s->main = NULL;
    pthread_mutex_unlock(&s->qlock);
}

/* ------------------------------------------------------------- recovery */

void lm_pc_src_resume_prepare(lm_pc_src *s)
{
    pthread_mutex_lock(&s->qlock);
    s->pre = NULL; /* the old preempt channel is gone; a new reader sets it */
    s->head = s->tail = 0;
    LM_ATOMIC_SET(&s->queued, 0);
    pthread_mutex_unlock(&s->qlock);
    pthread_mutex_lock(&s->ram->lock);
    s->nrecent = 0;
    pthread_mutex_unlock(&s->ram->lock);
}

/* The destination's word is the truth for its pages: a page sent but lost
 * with the link is owed there and becomes dirty again; a page it has is
 * not sent again.  QEMU's ram_dirty_bitmap_reload does the same (the
 * bitmap inverted: not received means dirty). */
int lm_pc_src_recv_bitmap(lm_pc_src *s, const uint8_t *payload, uint32_t len, lm_error *err)
{
    lm_ram *r = s->ram;
    lm_mem *mem = r->mem;
    lm_recv_bitmap b;
    if (lm_fmt_recv_bitmap_decode(payload, len, &b, err) <= 0)
        return err->code ? err->code : -EPROTO;
    if (b.block >= mem->nblocks)
        return lm_error_set(err, -EPROTO, "RP_RECV_BITMAP: block %u out of range (%u blocks)",
                            b.block, mem->nblocks);
    lm_ram_block *blk = &mem->blocks[b.block];
    if (b.first_page > blk->npages || b.npages > blk->npages - b.first_page)
        return lm_error_set(err, -EPROTO,
                            "RP_RECV_BITMAP: pages %llu+%u past the end of block '%s' (%llu "
                            "pages)",
                            (unsigned long long)b.first_page, b.npages, blk->name,
                            (unsigned long long)blk->npages);
    pthread_mutex_lock(&r->lock);
    uint64_t *d = r->dirty[b.block];
    if (!d || !r->postcopy) {
        pthread_mutex_unlock(&r->lock);
        return lm_error_set(err, -EPROTO, "RP_RECV_BITMAP while RAM is not in postcopy");
    }
    for (uint32_t i = 0; i < b.npages; i++) {
        uint64_t p = b.first_page + i;
        bool owed = (lm_fmt_recv_bitmap_word(&b, i / 64) >> (i % 64)) & 1;
        bool dirty = lm_bit_test(d, p);
        if (owed && !dirty) {
            lm_bit_set(d, p);
            r->dirty_pages++;
        } else if (!owed && dirty) {
            lm_bit_clear(d, p);
            r->dirty_pages--;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* ------------------------------------------------------------- requests */

/* ram->lock held: was page p of block bi claimed by a background run that
 * may not have reached the destination yet?  A run given to multifd may
 * wait in a channel's queue or socket: its window is the multifd bytes
 * written since the claim, LM_PC_INFLIGHT per channel (all channels' bytes
 * add up, while the page waits behind one of them). */
static bool maybe_in_flight(lm_pc_src *s, lm_chan *main, uint32_t bi, uint64_t p)
{
    if (!main)
        return false;
    uint64_t now = lm_chan_bytes_written(main);
    uint64_t mnow = s->mfd_bytes ? LM_ATOMIC_GET(s->mfd_bytes) : 0;
    uint64_t mwin = LM_PC_INFLIGHT * ((s->mfd_chans ? LM_ATOMIC_GET(s->mfd_chans) : 0) + 1);
    uint64_t n = s->nrecent < LM_PC_RECENT ? s->nrecent : LM_PC_RECENT;
    for (uint64_t i = 0; i < n; i++) {
        const __typeof__(s->recent[0]) *r = &s->recent[i];
        if (r->block == bi && p >= r->first && p < r->first + r->count)
            return now - r->off < LM_PC_INFLIGHT || (r->mfd && mnow - r->mfd_off < mwin);
    }
    return false;
}

/* The pages of request q to send, as a map relative to q->first_page:
 * the dirty ones are claimed (a page whose bit is clear was sent already,
 * so it is not sent twice: the destination asks for a page once) and,
 * with resend, the ones of a background run that may still sit in the
 * main channel's socket buffers: waiting for those to drain is what makes
 * the tail of the fault latency (megabytes behind a busy loader: tens of
 * ms here, measured), and the destination skips whichever copy comes
 * second.  Returns how many pages were sent again. */
static uint64_t claim_request(lm_pc_src *s, const lm_pc_req *q, lm_chan *resend_main, uint64_t *map)
{
    lm_ram *r = s->ram;
    uint64_t end = q->first_page + q->count, resent = 0, p, e;
    memset(map, 0, lm_bitmap_words(q->count) * 8);
    pthread_mutex_lock(&r->lock);
    for (uint64_t i = q->first_page; resend_main && i < end; i++) {
        if (r->dirty[q->block] && !lm_bit_test(r->dirty[q->block], i) &&
            maybe_in_flight(s, resend_main, q->block, i)) {
            lm_bit_set(map, i - q->first_page);
            resent++;
        }
    }
    for (uint64_t from = q->first_page;
         lm_ram_dirty_run_locked(r, q->block, from, end, true, &p, &e); from = e)
        for (uint64_t i = p; i < e; i++)
            lm_bit_set(map, i - q->first_page);
    pthread_mutex_unlock(&r->lock);
    return resent;
}

/* Sends the runs of map (pages of q) on o; no lock held. */
static int send_map(lm_pc_src *s, lm_out *o, const lm_pc_req *q, const uint64_t *map, lm_error *err)
{
    for (uint64_t i = 0; i < q->count;) {
        if (!lm_bit_test(map, i)) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < q->count && lm_bit_test(map, j))
            j++;
        int ret =
            lm_ram_send_pages(s->ram, o, q->block, q->first_page + i, q->first_page + j, false);
        if (ret < 0) {
            lm_chan_get_error(o->chan, err);
            return lm_error_set(err, ret, "sending requested pages failed");
        }
        i = j;
    }
    return 0;
}

/* With the preempt channel: claim and send now, on this thread. */
static int serve_on_preempt(lm_pc_src *s, lm_chan *pre, lm_chan *main, const lm_pc_req *q,
                            lm_error *err)
{
    uint64_t map[LM_RAM_MAX_RUN / 64];
    int ret = 0;
    pthread_mutex_lock(&s->wlock);
    if (!s->preempt_done) {
        s->resent += claim_request(s, q, main, map);
        lm_out o = {.chan = pre, .postcopy = true, .ctr = s->ctr};
        ret = send_map(s, &o, q, map, err);
        if (ret == 0 && lm_chan_flush(pre) < 0)
            ret = lm_chan_get_error(pre, err);
    }
    pthread_mutex_unlock(&s->wlock);
    return ret;
}

/* RP_REQ_PAGES (digest §6.3): checked against our block table; counted;
 * with a preempt channel the pages go out here and now, otherwise they
 * are queued for the migration thread, which sends them before its next
 * background run. */
int lm_pc_src_request(lm_pc_src *s, const uint8_t *payload, uint32_t len, lm_error *err)
{
    lm_mem *mem = s->ram->mem;
    lm_ram_run r;
    if (lm_fmt_req_pages_decode(payload, len, &r, err) <= 0)
        return err->code ? err->code : -EPROTO;
    if (r.block >= mem->nblocks)
        return lm_error_set(err, -EPROTO, "RP_REQ_PAGES: block %u out of range (%u blocks)",
                            r.block, mem->nblocks);
    lm_ram_block *b = &mem->blocks[r.block];
    if (r.first_page > b->npages || r.count > b->npages - r.first_page)
        return lm_error_set(err, -EPROTO,
                            "RP_REQ_PAGES: pages %llu+%u past the end of block "
                            "'%s' (%llu pages)",
                            (unsigned long long)r.first_page, r.count, b->name,
                            (unsigned long long)b->npages);
    if (r.count > LM_RAM_MAX_RUN)
        return lm_error_set(err, -EPROTO, "RP_REQ_PAGES: %u pages, at most %d", r.count,
                            LM_RAM_MAX_RUN);
    lm_pc_req q = {.block = r.block, .count = r.count, .first_page = r.first_page};
    int ret = 0;
    bool queued = false;
    pthread_mutex_lock(&s->qlock);
    bool serving = s->serving;
    lm_chan *pre = s->pre, *main = s->main;
    if (!serving) {
        ret = lm_error_set(err, -EPROTO, "RP_REQ_PAGES while not in postcopy");
    } else if (!pre) {
        if (s->tail - s->head >= LM_PC_REQ_QUEUE) {
            ret = lm_error_set(err, -EPROTO, "RP_REQ_PAGES: more than %d requests outstanding",
                               LM_PC_REQ_QUEUE);
        } else {
            s->queue[s->tail++ % LM_PC_REQ_QUEUE] = q;
            LM_ATOMIC_SET(&s->queued, s->tail - s->head);
            queued = true;
        }
    }
    pthread_mutex_unlock(&s->qlock);
    /* The preempt channel stays valid while requests are read: it is freed
     * only after the readers are joined (core/outgoing.c). */
    if (ret == 0 && pre)
        ret = serve_on_preempt(s, pre, main, &q, err);
    if (ret < 0)
        return ret;
    LM_ATOMIC_ADD(s->requests, 1);
    if (queued && s->wake)
        s->wake(s->wake_opaque); /* the migration thread may wait for its window */
    return 0;
}

bool lm_pc_src_has_queued(lm_pc_src *s)
{
    return LM_ATOMIC_GET(&s->queued) != 0;
}

int lm_pc_src_serve_queue(lm_pc_src *s, lm_out *o, lm_error *err)
{
    uint64_t map[LM_RAM_MAX_RUN / 64];
    bool sent = false;
    for (;;) {
        pthread_mutex_lock(&s->qlock);
        if (s->head == s->tail) {
            pthread_mutex_unlock(&s->qlock);
            break;
        }
        lm_pc_req q = s->queue[s->head++ % LM_PC_REQ_QUEUE];
        LM_ATOMIC_SET(&s->queued, s->tail - s->head);
        pthread_mutex_unlock(&s->qlock);
        claim_request(s, &q, NULL, map);
        int ret = send_map(s, o, &q, map, err);
        if (ret < 0)
            return ret;
        sent = true;
    }
    /* Zero records are buffered: a waiting fault must not wait for the
     * buffer to fill. */
    if (sent && lm_chan_flush(o->chan) < 0)
        return lm_chan_get_error(o->chan, err);
    return 0;
}

int lm_pc_src_urgent_hook(void *opaque, lm_out *o, lm_error *err)
{
    return lm_pc_src_serve_queue(opaque, o, err);
}

void lm_pc_src_claimed_hook(void *opaque, unsigned bi, uint64_t first, uint64_t count,
                            const lm_out *o)
{
    lm_pc_src *s = opaque;
    /* Only a preempt channel can overtake a run in flight; the migration
     * thread set it at the switch and reads it here (its own write). */
    if (!s->pre)
        return;
    unsigned k = (unsigned)(s->nrecent++ % LM_PC_RECENT);
    s->recent[k].block = bi;
    s->recent[k].first = first;
    s->recent[k].count = count;
    s->recent[k].off = lm_chan_bytes_written(o->chan);
    s->recent[k].mfd = o->mfd != NULL;
    s->recent[k].mfd_off = s->mfd_bytes ? LM_ATOMIC_GET(s->mfd_bytes) : 0;
}

int lm_pc_src_end_preempt(lm_pc_src *s, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&s->wlock);
    if (s->pre && !s->preempt_done) {
        s->preempt_done = true;
        ret = lm_rec_send(s->pre, LM_REC_EOS, NULL, 0);
        if (ret < 0)
            lm_chan_get_error(s->pre, err);
    }
    pthread_mutex_unlock(&s->wlock);
    return ret;
}

/* ------------------------------------------------------ lm-rp-preempt */

/* With postcopy-preempt the destination asks for pages on the preempt
 * channel's other direction, where nothing else travels.  On the main
 * channel a request would wait for the socket, which the migration thread
 * holds while it writes the background push (measured: p99 0.9 ms of a
 * 1.3 ms remote fault there).  Only RP_REQ_PAGES comes this way; any other
 * record is a protocol error that pauses the migration (it is in
 * postcopy; the main channel is shut down with the reason, which its
 * return-path reader reports).  A transport error ends only this thread:
 * the main channel tells what happened. */
static void *preq_thread_fn(void *arg)
{
    lm_pc_src *s = arg;
    lm_chan *c = s->pre;
    lm_error err = {0};
    uint8_t payload[LM_RAM_PAGES_HDR_SIZE];
    pthread_setname_np(pthread_self(), "lm-rp-preempt");
    for (;;) {
        lm_rec_hdr h;
        lm_error rerr = {0};
        if (lm_rec_read_hdr(c, false, &h, &rerr) < 0) {
            if (!lm_chan_get_error(c, NULL)) {
                err = rerr;
                break;
            }
            /* Transport.  After our EOS the destination closes it: the
             * end.  Before, the link is broken even if the main channel
             * still looks fine (requests would go nowhere): shut it down
             * with the reason, which pauses the migration. */
            pthread_mutex_lock(&s->wlock);
            bool done = s->preempt_done;
            pthread_mutex_unlock(&s->wlock);
            if (done)
                return NULL;
            lm_chan_get_error(c, &rerr); /* names the preempt channel */
            lm_chan_set_error(s->preq_shutdown, rerr.code ? rerr.code : -EPIPE, rerr.msg);
            lm_chan_shutdown(s->preq_shutdown, rerr.msg);
            return NULL;
        }
        if (h.type != LM_REC_RP_REQ_PAGES || h.len != sizeof payload) {
            lm_error_set(&err, -EPROTO, "%s record of %u bytes", lm_rec_type_name(h.type), h.len);
            break;
        }
        if (lm_rec_read_payload(c, &h, payload, sizeof payload, "preempt channel", &rerr) < 0)
            return NULL;
        if (lm_pc_src_request(s, payload, h.len, &err) < 0)
            break;
    }
    lm_error_prefix(&err, "preempt channel, from the destination");
    lm_chan_shutdown(s->preq_shutdown, err.msg);
    return NULL;
}

int lm_pc_src_reader_start(lm_pc_src *s, lm_chan *preempt, lm_chan *main, lm_error *err)
{
    s->preq_shutdown = main;
    /* Under qlock: in a recovery the return-path reader runs already and
     * reads it there (lm_pc_src_request). */
    pthread_mutex_lock(&s->qlock);
    s->pre = preempt;
    pthread_mutex_unlock(&s->qlock);
    int ret = -pthread_create(&s->preq_thread, NULL, preq_thread_fn, s);
    if (ret < 0)
        return lm_error_set(err, ret, "cannot start the preempt channel's reader");
    s->preq_running = true;
    return 0;
}

void lm_pc_src_reader_join(lm_pc_src *s)
{
    if (s->preq_running) {
        pthread_join(s->preq_thread, NULL);
        s->preq_running = false;
    }
}
