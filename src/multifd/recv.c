/*
 * recv.c - the destination's multifd channels (multifd.h has the protocol).
 *
 * Threads:
 *  - "lm-mfd-recv/N", one per channel: reads its channel; places page data
 *    straight into guest memory (or decompresses into it); parks at each
 *    MULTIFD_SYNC until released; ends at EOS.  It alone reads its channel.
 *  - the incoming thread: lm_mfd_recv_blocks_ready, lm_mfd_recv_sync (on
 *    MULTIFD_FLUSH), lm_mfd_recv_finish (at EOS).
 * Lock: r->lock guards the "lock" fields: per channel synced/eos, and
 * released, blocks_ready, quit, the first error.  One condition variable
 * (r->cond) for every change; the sets are small (<= 255 channels) and the
 * changes rare (one per packet round, not per page).
 * Guest memory: a page belongs to one channel within a round (the source
 * sends it at most once between syncs), so channels write disjoint pages;
 * every page goes through the placement interface (mem.h), which writes in
 * place before POSTCOPY_RUN and places atomically after it (alongside
 * postcopy's fault thread and preempt loader).
 */
#include "multifd/multifd.h"
#include "file/mapped.h"
#include "util/thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FILE_QDEPTH 4 /* reads queued per file reader */

/* A read of a file reader: len bytes at off into host. */
typedef struct file_job {
    lm_ram_block *b;
    uint64_t first, count;
    uint64_t off;
} file_job;

typedef struct recv_chan {
    lm_mfd_recv *r;
    unsigned id;
    pthread_t thread;
    bool started;
    lm_chan *chan; /* NULL for a file reader */
    int fd;        /* file reader: its descriptor */
    /* --- lock --- */
    uint64_t synced; /* last MULTIFD_SYNC seen (file: last sync request drained) */
    bool eos;
    file_job jobs[FILE_QDEPTH]; /* file reader: to do, jobs[0] first */
    unsigned njobs;
    /* --- channel thread only --- */
    lm_mfd_codec *codec;
    lm_mfd_comp method;
    uint8_t *ibuf; /* index list, then compressed data */
    size_t ibuf_cap;
    uint8_t *dbuf; /* decompressed pages */
    uint64_t expect_packet;
    bool background; /* niced for postcopy */
    uint64_t idx[LM_MFD_MAX_PAGES];
} recv_chan;

struct lm_mfd_recv {
    lm_mem *mem;     /* blocks and the stream's table (read-only here) */
    lm_place *place; /* where pages go: plain writes, or atomic after RUN */
    lm_mfd_counters *ctr;
    lm_chan *main;
    unsigned n;
    recv_chan *ch;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* --- lock --- */
    uint64_t released;
    bool blocks_ready;
    uint64_t sync_req; /* file: the sync the readers are asked to reach */
    bool finishing;    /* file: end once the queue is empty */
    unsigned next;     /* file: round-robin start for the next read */
    /* file readers (fixed at start) */
    bool file, own_fds;
    char path[LM_URI_FILE_PATH_MAX];
    /* test knob, fixed at start */
    unsigned delay_chan, delay_ms;
    bool quit;
    lm_error error;
};

static void fail(lm_mfd_recv *r, recv_chan *c, lm_error *e)
{
    pthread_mutex_lock(&r->lock);
    bool first = !r->quit;
    if (!r->error.code)
        lm_error_set(&r->error, e->code ? e->code : -EIO, "multifd channel %u: %s", c->id,
                     e->msg[0] ? e->msg : "failed");
    r->quit = true;
    pthread_cond_broadcast(&r->cond);
    lm_error copy = r->error;
    pthread_mutex_unlock(&r->lock);
    if (first) {
        /* The incoming thread stops at its next read with this reason. */
        lm_chan_set_error(r->main, copy.code, copy.msg);
        lm_chan_shutdown(r->main, copy.msg);
    }
}

static int stopped(lm_mfd_recv *r, lm_error *err);

static int chan_err(recv_chan *c, lm_error *err)
{
    return lm_chan_get_error(c->chan, err);
}

/* Places each ascending run of the packet's pages (idx[from..to)):
 * normal pages from data (or read from the channel when data is NULL and
 * the packet is uncompressed), zero pages with data NULL. */
static int place_runs(recv_chan *c, lm_ram_block *b, uint32_t from, uint32_t to,
                      const uint8_t *data, bool zero, lm_error *err)
{
    lm_mfd_recv *r = c->r;
    size_t ps = b->page_size;
    for (uint32_t i = from; i < to;) {
        uint32_t j = i + 1;
        while (j < to && c->idx[j] == c->idx[j - 1] + 1)
            j++;
        int ret;
        if (zero)
            ret = lm_place_pages(r->place, b, c->idx[i], j - i, NULL, err);
        else if (data)
            ret =
                lm_place_pages(r->place, b, c->idx[i], j - i, data + (size_t)(i - from) * ps, err);
        else
            ret = lm_place_recv(r->place, c->chan, b, c->idx[i], j - i, c->dbuf, err);
        if (ret < 0)
            return ret;
        i = j;
    }
    return 0;
}

static int load_packet(recv_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    lm_mfd_recv *r = c->r;
    const lm_mem_stream_map *sm = &r->mem->smap;
    uint8_t hb[LM_MFD_HDR_SIZE];
    lm_mfd_pages p;

    pthread_mutex_lock(&r->lock);
    while (!r->blocks_ready && !r->quit)
        pthread_cond_wait(&r->cond, &r->lock);
    bool quit = r->quit;
    pthread_mutex_unlock(&r->lock);
    if (quit)
        return -ECANCELED;

    if (lm_chan_read_exact(c->chan, hb, sizeof hb) < 0)
        return chan_err(c, err);
    if (lm_fmt_mfd_pages_hdr_decode(hb, sizeof hb, h->len, 0, &p, err) <= 0)
        return err->code ? err->code : -EPROTO;
    if (p.block >= sm->nblocks)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: block %u out of range (%u blocks)",
                            p.block, sm->nblocks);
    const lm_fmt_block *fb = &sm->blocks[p.block];
    if (lm_fmt_mfd_pages_hdr_decode(hb, sizeof hb, h->len, fb->page_size, &p, err) <= 0)
        return err->code ? err->code : -EPROTO;
    if (p.packet_num != c->expect_packet)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: packet %llu, expected %llu",
                            (unsigned long long)p.packet_num, (unsigned long long)c->expect_packet);
    c->expect_packet++;
    if (r->delay_ms && c->id == r->delay_chan)
        usleep(r->delay_ms * 1000u); /* test knob: a late channel (multifd.h) */
    lm_ram_block *b = &r->mem->blocks[sm->map[p.block]];
    size_t ps = b->page_size;
    uint32_t n = (uint32_t)p.normal + p.zero;
    uint64_t data = (uint64_t)p.normal * ps;
    if (data > (uint64_t)LM_MFD_MAX_PAGES * LM_PAGE_SIZE || ps != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO,
                            "MULTIFD_PAGES: %u pages of %zu bytes are more than a "
                            "packet may carry",
                            p.normal, ps);
    if (lm_chan_read_exact(c->chan, c->ibuf, 8ull * n) < 0)
        return chan_err(c, err);
    if (lm_fmt_mfd_index_decode(c->ibuf, 8ull * n, &p, b->npages, c->idx, err) < 0)
        return err->code;

    /* After POSTCOPY_RUN the workload runs and placement is atomic (the
     * source fences the channels after RUN, so a packet is wholly before
     * or after the switch); the push yields to faults and requests. */
    bool postcopy = lm_place_is_atomic(r->place);
    if (postcopy && !c->background) {
        lm_thread_set_background();
        c->background = true;
    }
    int ret = 0;
    if (p.compression == LM_MFD_COMP_NONE) {
        ret = place_runs(c, b, 0, p.normal, NULL, false, err);
    } else if (p.normal) {
        if (!c->codec) {
            ret = lm_mfd_codec_new((lm_mfd_comp)p.compression, 0, false, &c->codec, err);
            if (ret < 0)
                return ret;
            c->method = (lm_mfd_comp)p.compression;
        } else if (c->method != p.compression) {
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: compression changed from %u to %u "
                                "within the channel",
                                c->method, p.compression);
        }
        if (p.data_len > c->ibuf_cap)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: %u compressed bytes for %u pages "
                                "(at most %zu)",
                                p.data_len, p.normal, c->ibuf_cap);
        if (lm_chan_read_full(c->chan, c->ibuf, p.data_len) < 0)
            return chan_err(c, err);
        ret = lm_mfd_decompress(c->codec, c->ibuf, p.data_len, c->dbuf, data, err);
        if (ret < 0)
            return lm_error_prefix(err, "MULTIFD_PAGES");
        ret = place_runs(c, b, 0, p.normal, c->dbuf, false, err);
    }
    if (ret == 0)
        ret = place_runs(c, b, p.normal, n, NULL, true, err);
    if (ret == 0 && postcopy)
        LM_ATOMIC_ADD(&r->ctr->postcopy_pages, n);
    return ret;
}

static int wait_release(recv_chan *c, uint64_t seq, lm_error *err)
{
    lm_mfd_recv *r = c->r;
    pthread_mutex_lock(&r->lock);
    if (seq <= c->synced) {
        pthread_mutex_unlock(&r->lock);
        return lm_error_set(err, -EPROTO, "MULTIFD_SYNC %llu after %llu: sequence went back",
                            (unsigned long long)seq, (unsigned long long)c->synced);
    }
    c->synced = seq;
    pthread_cond_broadcast(&r->cond);
    while (r->released < seq && !r->quit)
        pthread_cond_wait(&r->cond, &r->lock);
    bool quit = r->quit;
    pthread_mutex_unlock(&r->lock);
    return quit ? -ECANCELED : 0;
}

static void *recv_thread(void *arg)
{
    recv_chan *c = arg;
    lm_mfd_recv *r = c->r;
    char name[16];
    snprintf(name, sizeof name, "lm-mfd-recv/%u", c->id);
    pthread_setname_np(pthread_self(), name);
    lm_error err = {0};
    int ret = 0;

    for (;;) {
        lm_rec_hdr h;
        ret = lm_rec_read_hdr(c->chan, true, &h, &err);
        if (ret < 0)
            break;
        if (h.type == LM_REC_MULTIFD_PAGES) {
            ret = load_packet(c, &h, &err);
        } else if (h.type == LM_REC_MULTIFD_SYNC) {
            uint8_t p[8];
            uint64_t seq;
            if (lm_chan_read_full(c->chan, p, sizeof p) < 0)
                ret = chan_err(c, &err);
            else if (lm_fmt_u64_decode(p, sizeof p, &seq, &err) <= 0)
                ret = -EPROTO;
            else
                ret = wait_release(c, seq, &err);
        } else if (h.type == LM_REC_EOS) {
            pthread_mutex_lock(&r->lock);
            c->eos = true;
            pthread_cond_broadcast(&r->cond);
            pthread_mutex_unlock(&r->lock);
            return NULL;
        } else {
            ret = lm_error_set(&err, -EPROTO, "unexpected %s record on a multifd channel",
                               lm_rec_type_name(h.type));
        }
        if (ret < 0)
            break;
    }
    pthread_mutex_lock(&r->lock);
    bool quitting = r->quit;
    pthread_mutex_unlock(&r->lock);
    if (!quitting) /* not a consequence of another failure or a cancel */
        fail(r, c, &err);
    return NULL;
}

/* A file reader (mapped-ram): no packets; it reads what the incoming
 * thread queues, and reaches a sync when its queue is empty (seed 004:
 * "all recv threads are idle"). */
static void *file_thread(void *arg)
{
    recv_chan *c = arg;
    lm_mfd_recv *r = c->r;
    char name[16];
    snprintf(name, sizeof name, "lm-mfd-recv/%u", c->id);
    pthread_setname_np(pthread_self(), name);
    lm_error err = {0};
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!c->njobs && r->sync_req <= c->synced && !r->finishing && !r->quit)
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->quit)
            break;
        if (c->njobs) {
            file_job j = c->jobs[0];
            pthread_mutex_unlock(&r->lock);
            int ret = lm_mapped_read_run(c->fd, j.b, j.first, j.count, j.off, r->path, &err);
            if (ret == 0) {
                LM_ATOMIC_ADD(&r->ctr->bytes, j.count * j.b->page_size);
                LM_ATOMIC_ADD(&r->ctr->normal, j.count);
            }
            pthread_mutex_lock(&r->lock);
            for (unsigned i = 1; i < c->njobs; i++)
                c->jobs[i - 1] = c->jobs[i];
            c->njobs--;
            pthread_cond_broadcast(&r->cond);
            if (ret < 0) {
                pthread_mutex_unlock(&r->lock);
                fail(r, c, &err);
                return NULL;
            }
        } else if (r->sync_req > c->synced) {
            c->synced = r->sync_req;
            pthread_cond_broadcast(&r->cond);
        } else { /* finishing, nothing left */
            c->eos = true;
            pthread_cond_broadcast(&r->cond);
            break;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* The receiver and its n channels, each knowing its index and r; the
 * constructors below fill in what their kind needs.  NULL: out of memory. */
static lm_mfd_recv *recv_alloc(lm_mfd_counters *ctr, lm_chan *main, unsigned n)
{
    lm_mfd_recv *r = calloc(1, sizeof *r);
    recv_chan *ch = calloc(n ? n : 1, sizeof *ch);
    if (!r || !ch) {
        free(r);
        free(ch);
        return NULL;
    }
    r->ctr = ctr;
    r->main = main;
    r->n = n;
    r->ch = ch;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    for (unsigned i = 0; i < n; i++) {
        ch[i].r = r;
        ch[i].id = i;
    }
    return r;
}

int lm_mfd_recv_new_file(lm_mfd_counters *ctr, lm_chan *main, const int *fds, unsigned n,
                         bool own_fds, const char *path, lm_mfd_recv **out, lm_error *err)
{
    lm_mfd_recv *r = recv_alloc(ctr, main, n);
    if (!r)
        return lm_error_set(err, -ENOMEM, "out of memory");
    recv_chan *ch = r->ch;
    r->file = true;
    r->own_fds = own_fds;
    snprintf(r->path, sizeof r->path, "%s", path);
    int ret = 0;
    for (unsigned i = 0; i < n; i++)
        ch[i].fd = fds[i]; /* r's when own_fds, once this returns 0 */
    for (unsigned i = 0; i < n && ret == 0; i++) {
        ret = -pthread_create(&ch[i].thread, NULL, file_thread, &ch[i]);
        if (ret < 0)
            lm_error_set(err, ret, "cannot start multifd file reader %u", i);
        else
            ch[i].started = true;
    }
    if (ret < 0) {
        r->own_fds = false; /* the caller's again */
        lm_mfd_recv_shutdown(r, "multifd setup failed");
        lm_mfd_recv_free(r);
        return ret;
    }
    *out = r;
    return 0;
}

int lm_mfd_recv_file_read(lm_mfd_recv *r, lm_ram_block *b, uint64_t first, uint64_t count,
                          uint64_t off, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        if (r->quit) {
            ret = stopped(r, err);
            break;
        }
        recv_chan *c = NULL;
        for (unsigned k = 0; k < r->n && !c; k++) {
            recv_chan *t = &r->ch[(r->next + k) % r->n];
            if (t->njobs < FILE_QDEPTH)
                c = t;
        }
        if (c) {
            c->jobs[c->njobs++] = (file_job){b, first, count, off};
            r->next = c->id + 1;
            pthread_cond_broadcast(&r->cond);
            break;
        }
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return ret;
}

int lm_mfd_recv_new(lm_mem *mem, lm_place *place, lm_mfd_counters *ctr, lm_chan *main,
                    lm_chan **chans, unsigned n, lm_mfd_recv **out, lm_error *err)
{
    int ret = 0;
    lm_mfd_recv *r = recv_alloc(ctr, main, n);
    if (!r)
        return lm_error_set(err, -ENOMEM, "out of memory");
    recv_chan *ch = r->ch;
    r->mem = mem;
    r->place = place;
    const char *knob = getenv("LIVEMIG_TEST_MULTIFD");
    if (knob) {
        const char *d = strstr(knob, "delay=");
        if (!d || sscanf(d, "delay=%u:%u", &r->delay_chan, &r->delay_ms) != 2)
            r->delay_ms = 0;
    }
    size_t data = (size_t)LM_MFD_MAX_PAGES * LM_PAGE_SIZE;
    for (unsigned i = 0; i < n; i++) {
        recv_chan *c = &ch[i];
        c->chan = chans[i]; /* owned by r once this returns 0 */
        c->expect_packet = 1;
        /* Compressed data may exceed its input a little; the largest
         * bound of the methods covers them all. */
        c->ibuf_cap = lm_mfd_compress_bound(LM_MFD_COMP_ZSTD, data);
        if (lm_mfd_compress_bound(LM_MFD_COMP_ZLIB, data) > c->ibuf_cap)
            c->ibuf_cap = lm_mfd_compress_bound(LM_MFD_COMP_ZLIB, data);
        if (lm_mfd_compress_bound(LM_MFD_COMP_LZ4, data) > c->ibuf_cap)
            c->ibuf_cap = lm_mfd_compress_bound(LM_MFD_COMP_LZ4, data);
    }
    for (unsigned i = 0; i < n; i++) {
        recv_chan *c = &ch[i];
        c->ibuf = malloc(c->ibuf_cap);
        c->dbuf = malloc(data);
        if (!c->ibuf || !c->dbuf) {
            ret = lm_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        ret = -pthread_create(&c->thread, NULL, recv_thread, c);
        if (ret < 0) {
            lm_error_set(err, ret, "cannot start multifd receive thread %u", i);
            break;
        }
        c->started = true;
    }
    if (ret < 0) {
        lm_mfd_recv_shutdown(r, "multifd setup failed");
        for (unsigned i = 0; i < n; i++)
            if (ch[i].started)
                pthread_join(ch[i].thread, NULL);
        for (unsigned i = 0; i < n; i++)
            ch[i].started = false, ch[i].chan = NULL; /* the caller's again */
        lm_mfd_recv_free(r);
        return ret;
    }
    *out = r;
    return 0;
}

void lm_mfd_recv_blocks_ready(lm_mfd_recv *r)
{
    pthread_mutex_lock(&r->lock);
    r->blocks_ready = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static int stopped(lm_mfd_recv *r, lm_error *err)
{
    int code = r->error.code ? r->error.code : -ECANCELED;
    return lm_error_set(err, code, "%s", r->error.code ? r->error.msg : "multifd channels stopped");
}

int lm_mfd_recv_sync(lm_mfd_recv *r, uint64_t seq, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&r->lock);
    if (r->file && seq > r->sync_req) {
        /* Files have no SYNC packets: the request is ours (seed 004). */
        r->sync_req = seq;
        pthread_cond_broadcast(&r->cond);
    }
    for (;;) {
        if (r->quit) {
            ret = stopped(r, err);
            break;
        }
        unsigned reached = 0;
        for (unsigned i = 0; i < r->n; i++) {
            recv_chan *c = &r->ch[i];
            if (c->synced >= seq) {
                reached++;
            } else if (c->eos) {
                ret = lm_error_set(err, -EPROTO, "multifd channel %u ended before sync %llu", i,
                                   (unsigned long long)seq);
                break;
            }
        }
        if (ret < 0 || reached == r->n)
            break;
        pthread_cond_wait(&r->cond, &r->lock);
    }
    if (ret == 0 && seq > r->released) {
        r->released = seq;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return ret;
}

int lm_mfd_recv_finish(lm_mfd_recv *r, lm_error *err)
{
    int ret = 0;
    pthread_mutex_lock(&r->lock);
    r->finishing = true;
    pthread_cond_broadcast(&r->cond);
    for (;;) {
        if (r->quit) {
            ret = stopped(r, err);
            break;
        }
        unsigned done = 0;
        for (unsigned i = 0; i < r->n; i++)
            done += r->ch[i].eos;
        if (done == r->n)
            break;
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return ret;
}

void lm_mfd_recv_shutdown(lm_mfd_recv *r, const char *why)
{
    pthread_mutex_lock(&r->lock);
    r->quit = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    for (unsigned i = 0; i < r->n; i++)
        if (r->ch[i].chan)
            lm_chan_shutdown(r->ch[i].chan, why);
}

void lm_mfd_recv_free(lm_mfd_recv *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->n; i++) {
        recv_chan *c = &r->ch[i];
        if (c->started)
            pthread_join(c->thread, NULL);
        lm_chan_free(c->chan);
        if (r->own_fds && c->fd >= 0)
            close(c->fd);
        lm_mfd_codec_free(c->codec);
        free(c->ibuf);
        free(c->dbuf);
    }
    free(r->ch);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
