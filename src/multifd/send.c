/*
 * send.c - the source's multifd channels (multifd.h has the protocol).
 *
 * Threads:
 *  - the migration thread fills s->cur and hands it off (queue_page,
 *    send_sync, finish); it alone touches cur, dirty, seq and phase;
 *  - "lm-mfd-send/N", one per channel: takes its job, detects zero pages,
 *    compresses, writes; then its SYNC or EOS.  It alone writes its channel.
 * Lock: s->lock guards every field marked "lock" (the hand-off slots of
 * each channel, quit and the first error).  Channel threads wait on their
 * own c->cond for work; the migration thread waits on s->cond for an idle
 * channel or the end.  Nothing does I/O with the lock held.
 * Ownership: a batch is either s->cur (migration thread), in a channel's
 * queue (its thread, from hand-off until sent) or in the free pool.  Each
 * channel queues up to QDEPTH batches, so that when it finishes one the
 * next is already there: waking the migration thread to hand one over
 * costs tens of microseconds on this machine kind, a gap in every
 * megabyte otherwise.
 */
#include "multifd/multifd.h"
#include "file/mapped.h"
#include "mem/dirty.h"
#include "util/thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QDEPTH 2

typedef struct batch {
    uint32_t block;
    uint32_t n;
    lm_mfd_phase phase; /* when it was handed off: which bytes it counts as */
    uint64_t pages[LM_MFD_BATCH_PAGES];
} batch;

typedef struct send_chan {
    lm_mfd_send *s;
    unsigned id;
    pthread_t thread;
    bool started;
    lm_chan *chan;
    pthread_cond_t cond;
    /* --- lock --- */
    batch *q[QDEPTH]; /* to send, q[0] first */
    unsigned nq;
    uint64_t sync_seq; /* > done_seq: a SYNC to write */
    uint64_t done_seq;
    bool eos, eos_done;
    /* --- channel thread only --- */
    lm_mfd_codec *codec;
    uint8_t *cbuf;
    size_t cbuf_cap;
    uint64_t packet_num;
    bool background;           /* niced for postcopy (lm_thread_set_background) */
    lm_multifd_chan_stats *st; /* in s->ctr: relaxed atomics */
} send_chan;

struct lm_mfd_send {
    lm_mem *mem;          /* block table: read-only while a migration runs */
    lm_mfd_counters *ctr; /* the migration's counters (relaxed atomics) */
    lm_chan *main;
    lm_mfd_send_cfg cfg;
    unsigned n;
    send_chan *ch;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* --- lock --- */
    bool quit;
    lm_error error;
    batch **pool; /* free batches */
    unsigned npool;
    /* --- migration thread only --- */
    batch *cur;
    unsigned next;      /* round-robin start of the idle search */
    uint64_t seq;       /* last sync sequence */
    bool dirty;         /* pages handed off since the last sync */
    lm_mfd_phase phase; /* stamped on each batch at hand-off */
};

static void fail(lm_mfd_send *s, send_chan *c, lm_error *e)
{
    /* The channel's own (sticky) error already starts with its name. */
    bool named = e->code && c->chan && lm_chan_get_error(c->chan, NULL) == e->code;
    pthread_mutex_lock(&s->lock);
    bool first = !s->quit;
    if (!s->error.code && named)
        lm_error_set(&s->error, e->code ? e->code : -EIO, "%s", e->msg);
    else if (!s->error.code)
        lm_error_set(&s->error, e->code ? e->code : -EIO, "multifd channel %u: %s", c->id,
                     e->msg[0] ? e->msg : "failed");
    s->quit = true;
    for (unsigned i = 0; i < s->n; i++)
        pthread_cond_signal(&s->ch[i].cond);
    pthread_cond_broadcast(&s->cond);
    lm_error copy = s->error;
    pthread_mutex_unlock(&s->lock);
    if (first) {
        /* The migration thread notices on its next main-channel write or
         * loop turn; the message says which channel and why. */
        lm_chan_set_error(s->main, copy.code, copy.msg);
        lm_chan_shutdown(s->main, copy.msg);
    }
}

/* Nothing queued at all (a SYNC or EOS may be written). */
static bool chan_idle(const send_chan *c)
{
    return !c->nq && c->sync_seq == c->done_seq && !c->eos;
}

/* May take one more batch: room in its queue and no SYNC or EOS pending
 * (those go after the batches queued before them, never before). */
static bool chan_takes(const send_chan *c)
{
    return c->nq < QDEPTH && c->sync_seq == c->done_seq && !c->eos;
}

/* mapped-ram: one batch at its pages' offsets in the file (zero pages
 * detected here leave holes). */
static int write_batch(send_chan *c, batch *b, lm_error *err)
{
    lm_mfd_send *s = c->s;
    uint32_t nn = 0, nz = 0;
    int ret = lm_mapped_save_pages(s->cfg.mapped, lm_mapped_fd(s->cfg.mapped, c->id), b->block,
                                   b->pages, b->n, s->cfg.zpd != LM_ZPD_NONE, &nn, &nz, err);
    /* The file's page bytes are counted by the writer (mapped.c) into
     * ctr->bytes; per channel only an estimate of this batch's share. */
    uint64_t wrote = (uint64_t)nn * s->mem->blocks[b->block].page_size;
    LM_ATOMIC_ADD(&c->st->bytes, wrote);
    LM_ATOMIC_ADD(&c->st->normal, nn);
    LM_ATOMIC_ADD(&c->st->zero, nz);
    LM_ATOMIC_ADD(&s->ctr->normal, nn);
    LM_ATOMIC_ADD(&s->ctr->zero, nz);
    if (b->phase == LM_MFD_DOWNTIME)
        LM_ATOMIC_ADD(&s->ctr->downtime_bytes, wrote);
    else
        LM_ATOMIC_ADD(&s->ctr->precopy_bytes, wrote);
    return ret;
}

/* Writes one batch as a MULTIFD_PAGES record. */
static int send_batch(send_chan *c, batch *b, lm_error *err)
{
    lm_mfd_send *s = c->s;
    if (s->cfg.mapped)
        return write_batch(c, b, err);
    lm_ram_block *blk = &s->mem->blocks[b->block];
    size_t ps = blk->page_size;
    uint64_t idx[LM_MFD_BATCH_PAGES];
    uint32_t nn = 0, nz = 0;

    if (s->cfg.zpd == LM_ZPD_MULTIFD) {
        /* Normal pages first, zero pages last, each in address order. */
        uint64_t zeros[LM_MFD_BATCH_PAGES];
        for (uint32_t i = 0; i < b->n; i++) {
            if (lm_page_is_zero(blk->base + b->pages[i] * ps, ps))
                zeros[nz++] = b->pages[i];
            else
                idx[nn++] = b->pages[i];
        }
        memcpy(idx + nn, zeros, nz * sizeof zeros[0]);
    } else {
        memcpy(idx, b->pages, b->n * sizeof idx[0]);
        nn = b->n;
    }

    /* Normal pages as iovecs straight from guest memory, adjacent pages
     * merged. */
    struct iovec iov[LM_MFD_BATCH_PAGES];
    unsigned niov = 0;
    for (uint32_t i = 0; i < nn; i++) {
        uint8_t *p = blk->base + idx[i] * ps;
        if (niov && (uint8_t *)iov[niov - 1].iov_base + iov[niov - 1].iov_len == p)
            iov[niov - 1].iov_len += ps;
        else
            iov[niov++] = (struct iovec){p, ps};
    }

    lm_mfd_pages h = {.block = b->block,
                      .normal = (uint16_t)nn,
                      .zero = (uint16_t)nz,
                      .compression = LM_MFD_COMP_NONE,
                      .packet_num = ++c->packet_num};
    long clen = -1;
    if (c->codec && nn) {
        clen = lm_mfd_compress(c->codec, iov, niov, c->cbuf, c->cbuf_cap, err);
        if (clen < 0)
            return (int)clen;
        h.compression = (uint8_t)s->cfg.compression;
        h.data_len = (uint32_t)clen;
    } else {
        h.data_len = (uint32_t)(nn * ps);
    }

    uint8_t hdr[LM_REC_HDR_SIZE + LM_MFD_HDR_SIZE + 8 * LM_MFD_BATCH_PAGES];
    uint32_t ilen = 8 * (nn + nz);
    uint32_t plen = LM_MFD_HDR_SIZE + ilen + h.data_len;
    if (lm_fmt_rec_hdr_encode(LM_REC_MULTIFD_PAGES, plen, hdr, LM_REC_HDR_SIZE) < 0 ||
        lm_fmt_mfd_pages_hdr_encode(&h, hdr + LM_REC_HDR_SIZE, LM_MFD_HDR_SIZE) < 0 ||
        lm_fmt_mfd_index_encode(idx, nn + nz, hdr + LM_REC_HDR_SIZE + LM_MFD_HDR_SIZE, ilen) < 0)
        return lm_error_set(err, -EINVAL, "cannot encode a packet of %u pages", nn + nz);
    size_t hlen = LM_REC_HDR_SIZE + LM_MFD_HDR_SIZE + ilen;

    uint64_t before = lm_chan_bytes_written(c->chan);
    int ret;
    if (clen >= 0) {
        ret = lm_chan_write_ref(c->chan, hdr, hlen, c->cbuf, (size_t)clen);
    } else {
        /* writev_ref takes at most 64 pieces: the header goes with the
         * first ones, the rest follow. */
        ret = 0;
        unsigned done = 0;
        do {
            unsigned k = niov - done > 64 ? 64 : niov - done;
            ret =
                lm_chan_writev_ref(c->chan, done ? NULL : hdr, done ? 0 : hlen, iov + done, (int)k);
            done += k;
        } while (ret == 0 && done < niov);
    }
    if (ret < 0)
        return lm_chan_get_error(c->chan, err);
    uint64_t wrote = lm_chan_bytes_written(c->chan) - before;
    LM_ATOMIC_ADD(&c->st->bytes, wrote);
    LM_ATOMIC_ADD(&c->st->normal, nn);
    LM_ATOMIC_ADD(&c->st->zero, nz);
    lm_mfd_counters *st = s->ctr;
    LM_ATOMIC_ADD(&st->normal, nn);
    LM_ATOMIC_ADD(&st->zero, nz);
    LM_ATOMIC_ADD(&st->bytes, wrote);
    if (b->phase == LM_MFD_POSTCOPY)
        LM_ATOMIC_ADD(&st->postcopy_bytes, wrote);
    else if (b->phase == LM_MFD_DOWNTIME)
        LM_ATOMIC_ADD(&st->downtime_bytes, wrote);
    else
        LM_ATOMIC_ADD(&st->precopy_bytes, wrote);
    return 0;
}

/* A SYNC (with its sequence) or the EOS of one channel, flushed. */
static int send_u64_record(send_chan *c, uint8_t type, uint64_t v, bool with_payload)
{
    uint8_t p[8];
    lm_fmt_u64_encode(v, p, sizeof p);
    uint64_t before = lm_chan_bytes_written(c->chan);
    int ret = lm_rec_send(c->chan, type, p, with_payload ? 8 : 0);
    uint64_t wrote = lm_chan_bytes_written(c->chan) - before;
    LM_ATOMIC_ADD(&c->st->bytes, wrote);
    LM_ATOMIC_ADD(&c->s->ctr->bytes, wrote);
    return ret;
}

static void *send_thread(void *arg)
{
    send_chan *c = arg;
    lm_mfd_send *s = c->s;
    char name[16];
    snprintf(name, sizeof name, "lm-mfd-send/%u", c->id);
    pthread_setname_np(pthread_self(), name);
    lm_error err = {0};

    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (chan_idle(c) && !s->quit)
            pthread_cond_wait(&c->cond, &s->lock);
        if (s->quit)
            break;
        int ret = 0;
        if (c->nq) {
            batch *b = c->q[0];
            pthread_mutex_unlock(&s->lock);
            /* Postcopy's background push yields to the requested pages
             * (the migration thread or lm-rp write them), as the main
             * channel's writer does with a preempt channel. */
            if (b->phase == LM_MFD_POSTCOPY && !c->background) {
                lm_thread_set_background();
                c->background = true;
            }
            ret = send_batch(c, b, &err);
            pthread_mutex_lock(&s->lock);
            for (unsigned i = 1; i < c->nq; i++)
                c->q[i - 1] = c->q[i];
            c->nq--;
            s->pool[s->npool++] = b;
        } else if (c->sync_seq != c->done_seq) {
            uint64_t seq = c->sync_seq;
            pthread_mutex_unlock(&s->lock);
            ret = s->cfg.mapped ? 0 : send_u64_record(c, LM_REC_MULTIFD_SYNC, seq, true);
            pthread_mutex_lock(&s->lock);
            c->done_seq = seq;
        } else if (c->eos) {
            pthread_mutex_unlock(&s->lock);
            ret = s->cfg.mapped ? 0 : send_u64_record(c, LM_REC_EOS, 0, false);
            pthread_mutex_lock(&s->lock);
            c->eos_done = true;
            pthread_cond_broadcast(&s->cond);
            break;
        }
        if (ret < 0) {
            if (!err.code)
                lm_chan_get_error(c->chan, &err);
            pthread_mutex_unlock(&s->lock);
            fail(s, c, &err);
            pthread_mutex_lock(&s->lock);
            break;
        }
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void send_free(lm_mfd_send *s, bool free_chans);

int lm_mfd_send_new(lm_mem *mem, lm_mfd_counters *ctr, lm_chan *main, lm_chan **chans, unsigned n,
                    const lm_mfd_send_cfg *cfg, lm_mfd_send **out, lm_error *err)
{
    int ret = 0;
    lm_mfd_send *s = calloc(1, sizeof *s);
    if (!s)
        return lm_error_set(err, -ENOMEM, "out of memory");
    s->mem = mem;
    s->ctr = ctr;
    s->main = main;
    s->cfg = *cfg;
    s->n = n;
    LM_ATOMIC_SET(&ctr->channels, n);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->ch = calloc(n, sizeof *s->ch);
    s->cur = calloc(1, sizeof *s->cur);
    s->pool = calloc((size_t)n * QDEPTH, sizeof *s->pool);
    if (!s->ch || !s->cur || !s->pool) {
        free(s->ch);
        s->ch = NULL;
        s->n = 0;
        send_free(s, false);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    lm_mfd_comp method = (lm_mfd_comp)cfg->compression; /* same numbering */
    for (unsigned i = 0; i < n; i++) {
        send_chan *c = &s->ch[i];
        c->s = s;
        c->id = i;
        c->chan = chans[i]; /* owned by s once this returns 0 */
        c->st = &ctr->chan[i];
        pthread_cond_init(&c->cond, NULL);
    }
    for (unsigned i = 0; i < n && ret == 0; i++) {
        send_chan *c = &s->ch[i];
        for (unsigned k = 0; k < QDEPTH && ret == 0; k++) {
            batch *b = calloc(1, sizeof *b);
            if (!b)
                ret = lm_error_set(err, -ENOMEM, "out of memory");
            else
                s->pool[s->npool++] = b;
        }
        if (ret < 0)
            break;
        if (method != LM_MFD_COMP_NONE) {
            ret = lm_mfd_codec_new(method, cfg->level, true, &c->codec, err);
            if (ret < 0)
                break;
            c->cbuf_cap = lm_mfd_compress_bound(method, (size_t)LM_MFD_BATCH_PAGES * LM_PAGE_SIZE);
            c->cbuf = malloc(c->cbuf_cap);
            if (!c->cbuf) {
                ret = lm_error_set(err, -ENOMEM, "out of memory");
                break;
            }
        }
        ret = -pthread_create(&c->thread, NULL, send_thread, c);
        if (ret < 0) {
            lm_error_set(err, ret, "cannot start multifd send thread %u", i);
            break;
        }
        c->started = true;
    }
    if (ret < 0) {
        lm_mfd_send_shutdown(s, "multifd setup failed");
        send_free(s, false);
        return ret;
    }
    *out = s;
    return 0;
}

/* Hands s->cur to the next channel with room in its queue, waiting for one. */
static int hand_off(lm_mfd_send *s, lm_error *err)
{
    pthread_mutex_lock(&s->lock);
    send_chan *c = NULL;
    while (!s->quit) {
        for (unsigned k = 0; k < s->n; k++) {
            send_chan *t = &s->ch[(s->next + k) % s->n];
            if (chan_takes(t) && s->npool) {
                c = t;
                break;
            }
        }
        if (c)
            break;
        pthread_cond_wait(&s->cond, &s->lock);
    }
    if (!c) {
        int code = s->error.code ? s->error.code : -ECANCELED;
        lm_error_set(err, code, "%s", s->error.code ? s->error.msg : "multifd channels stopped");
        pthread_mutex_unlock(&s->lock);
        return code;
    }
    s->cur->phase = s->phase;
    c->q[c->nq++] = s->cur;
    s->cur = s->pool[--s->npool];
    s->next = c->id + 1;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&s->lock);
    s->cur->n = 0;
    s->dirty = true;
    return 0;
}

int lm_mfd_queue_page(lm_mfd_send *s, uint32_t block, uint64_t page, lm_error *err)
{
    /* A packet's pages are one block's, in ascending order (the format
     * says so, and the receiver checks it).  The page scan can come back
     * to the start of the same block with nothing queued from the others
     * in between (their dirty pages were all never-populated zero runs),
     * so a page at or below the last one starts a new batch too. */
    batch *b = s->cur;
    if (b->n && (b->block != block || b->n == LM_MFD_BATCH_PAGES || page <= b->pages[b->n - 1])) {
        int ret = hand_off(s, err);
        if (ret < 0)
            return ret;
    }
    s->cur->block = block;
    s->cur->pages[s->cur->n++] = page;
    return 0;
}

static int send_sync(lm_mfd_send *s, bool force, lm_error *err)
{
    if (s->cur->n) {
        int ret = hand_off(s, err);
        if (ret < 0)
            return ret;
    }
    if (!s->dirty && !force)
        return 0;
    s->dirty = false;
    uint64_t seq = ++s->seq;
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        s->ch[i].sync_seq = seq;
        pthread_cond_signal(&s->ch[i].cond);
    }
    if (s->cfg.mapped) {
        /* Local (seed 004): every page handed off so far is in the file
         * before a page of the next round can be, on whatever channel. */
        for (;;) {
            unsigned done = 0;
            for (unsigned i = 0; i < s->n; i++)
                done += s->ch[i].done_seq >= seq;
            if (done == s->n || s->quit)
                break;
            pthread_cond_wait(&s->cond, &s->lock);
        }
        int code = s->quit ? (s->error.code ? s->error.code : -ECANCELED) : 0;
        if (code)
            lm_error_set(err, code, "%s",
                         s->error.code ? s->error.msg : "multifd channels stopped");
        pthread_mutex_unlock(&s->lock);
        return code;
    }
    pthread_mutex_unlock(&s->lock);
    uint8_t p[8];
    lm_fmt_u64_encode(seq, p, sizeof p);
    /* Flushed now: the destination's channels park at their SYNC until
     * the main thread reads this record, and with every page on the
     * multifd channels nothing else may push it out of the buffer. */
    int ret = lm_rec_send(s->main, LM_REC_MULTIFD_FLUSH, p, sizeof p);
    if (ret < 0) {
        lm_chan_get_error(s->main, err);
        return ret;
    }
    return 0;
}

int lm_mfd_send_sync(lm_mfd_send *s, lm_error *err)
{
    return send_sync(s, false, err);
}

int lm_mfd_send_fence(lm_mfd_send *s, lm_error *err)
{
    return send_sync(s, true, err);
}

int lm_mfd_send_finish(lm_mfd_send *s, lm_error *err)
{
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        s->ch[i].eos = true;
        pthread_cond_signal(&s->ch[i].cond);
    }
    for (;;) {
        unsigned done = 0;
        for (unsigned i = 0; i < s->n; i++)
            done += s->ch[i].eos_done;
        if (done == s->n || s->quit)
            break;
        pthread_cond_wait(&s->cond, &s->lock);
    }
    int ret = 0;
    if (s->quit)
        ret = lm_error_set(err, s->error.code ? s->error.code : -ECANCELED, "%s",
                           s->error.code ? s->error.msg : "multifd channels stopped");
    pthread_mutex_unlock(&s->lock);
    return ret;
}

uint64_t lm_mfd_send_queued(lm_mfd_send *s, bool with_cur)
{
    uint64_t pages = with_cur && s->cur ? s->cur->n : 0, q = 0;
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++)
        for (unsigned k = 0; k < s->ch[i].nq; k++)
            pages += s->ch[i].q[k]->n;
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->n; i++)
        q += lm_chan_queued(s->ch[i].chan);
    return q + pages * LM_PAGE_SIZE;
}

void lm_mfd_send_set_phase(lm_mfd_send *s, lm_mfd_phase phase)
{
    s->phase = phase;
}

void lm_mfd_send_shutdown(lm_mfd_send *s, const char *why)
{
    pthread_mutex_lock(&s->lock);
    s->quit = true;
    for (unsigned i = 0; i < s->n; i++)
        pthread_cond_signal(&s->ch[i].cond);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->n; i++)
        if (s->ch[i].chan)
            lm_chan_shutdown(s->ch[i].chan, why);
}

static void send_free(lm_mfd_send *s, bool free_chans)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->quit = true;
    for (unsigned i = 0; i < s->n; i++)
        pthread_cond_signal(&s->ch[i].cond);
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        send_chan *c = &s->ch[i];
        if (c->started)
            pthread_join(c->thread, NULL);
        if (free_chans)
            lm_chan_free(c->chan);
        lm_mfd_codec_free(c->codec);
        free(c->cbuf);
        for (unsigned k = 0; k < c->nq; k++)
            free(c->q[k]);
    }
    /* After every join: a failing channel's fail() signals them all. */
    for (unsigned i = 0; i < s->n; i++)
        pthread_cond_destroy(&s->ch[i].cond);
    for (unsigned k = 0; s->pool && k < s->npool; k++)
        free(s->pool[k]);
    free(s->pool);
    free(s->ch);
    free(s->cur);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void lm_mfd_send_free(lm_mfd_send *s)
{
    send_free(s, true);
}
