/*
 * recover.c - postcopy recovery on the destination (digest §6.5): the
 * received bitmap the source asks for with POSTCOPY_RESUME, and the new
 * return path attached afterwards, with every request still waiting sent
 * again (the one of the broken link may never have arrived).
 *
 * Threads: "lm-incoming" calls both, while the fault thread runs: it may
 * mark and send requests meanwhile (under lock, then rp_lock), which is
 * why the bitmap is copied under lock and written without it, and why the
 * requests are sent again only once the new return path is attached (a
 * request the fault thread sends after that is a duplicate at worst: the
 * source serves a page once, the placer skips a second copy).
 */
#include "postcopy/postcopy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define WORDS_PER_CHUNK (LM_RECV_BITMAP_MAX_PAGES / 64)

int lm_pc_dst_send_recv_bitmap(lm_pc_dst *d, lm_chan *c, uint64_t *owed_out, lm_error *err)
{
    lm_mem *mem = d->mem;
    uint64_t *words = malloc(WORDS_PER_CHUNK * 8);
    uint8_t *buf = malloc(LM_RECV_BITMAP_MAX);
    int ret = words && buf ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
    uint64_t owed = 0;
    for (unsigned bi = 0; bi < mem->nblocks && ret == 0; bi++) {
        lm_ram_block *b = &mem->blocks[bi];
        lm_pc_block *pb = &d->blk[bi];
        for (uint64_t first = 0; first < b->npages && ret == 0; first += LM_RECV_BITMAP_MAX_PAGES) {
            uint64_t n = b->npages - first;
            if (n > LM_RECV_BITMAP_MAX_PAGES)
                n = LM_RECV_BITMAP_MAX_PAGES;
            size_t nw = lm_bitmap_words(n);
            pthread_mutex_lock(&d->lock);
            if (pb->owed)
                memcpy(words, pb->owed + first / 64, nw * 8);
            else
                memset(words, 0, nw * 8);
            pthread_mutex_unlock(&d->lock);
            if (n % 64)
                words[nw - 1] &= (1ull << (n % 64)) - 1;
            for (size_t i = 0; i < nw; i++)
                owed += (uint64_t)__builtin_popcountll(words[i]);
            lm_recv_bitmap rb = {
                .block = mem->smap.rmap[bi], .npages = (uint32_t)n, .first_page = first};
            int len = lm_fmt_recv_bitmap_encode(&rb, words, buf, LM_RECV_BITMAP_MAX);
            if (len < 0) {
                ret = lm_error_set(err, len, "encoding RP_RECV_BITMAP failed");
                break;
            }
            if (lm_pc_dst_rp_send(d, c, LM_REC_RP_RECV_BITMAP, buf, (uint32_t)len) < 0) {
                lm_chan_get_error(c, err);
                ret = lm_error_prefix(err, "sending the received bitmap");
            }
        }
    }
    free(words);
    free(buf);
    if (ret == 0)
        *owed_out = owed;
    return ret;
}

/* Sends one RP_REQ_PAGES per page in pages[0..n) of block bi. */
static int resend(lm_pc_dst *d, unsigned bi, const uint64_t *pages, unsigned n)
{
    int ret = 0;
    pthread_mutex_lock(&d->rp_lock);
    lm_chan *c = d->req ? d->req : d->rp;
    for (unsigned i = 0; i < n && ret == 0; i++) {
        uint8_t pl[LM_RAM_PAGES_HDR_SIZE];
        lm_ram_run r = {.block = d->mem->smap.rmap[bi], .count = 1, .first_page = pages[i]};
        lm_fmt_req_pages_encode(&r, pl, sizeof pl);
        ret = c ? lm_rec_send(c, LM_REC_RP_REQ_PAGES, pl, sizeof pl) : -EPIPE;
    }
    pthread_mutex_unlock(&d->rp_lock);
    return ret;
}

int lm_pc_dst_attach_rp(lm_pc_dst *d, lm_chan *rp, lm_error *err)
{
    pthread_mutex_lock(&d->rp_lock);
    d->rp = rp;
    d->rp_gen++; /* the fault thread's watchdog starts over on this channel */
    if (d->timeout_ms) {
        struct timeval tv = {.tv_sec = (time_t)(d->timeout_ms / 1000),
                             .tv_usec = (suseconds_t)(d->timeout_ms % 1000) * 1000};
        setsockopt(lm_chan_fd(rp), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (d->req) /* the new preempt channel (lm_pc_dst_preempt_start) */
            setsockopt(lm_chan_fd(d->req), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    pthread_mutex_unlock(&d->rp_lock);
    pthread_mutex_lock(&d->lock);
    d->rp_broken = false;
    pthread_mutex_unlock(&d->lock);

    /* Every page asked for and still owed is asked for again, in batches
     * copied under lock and sent without it. */
    lm_mem *mem = d->mem;
    uint64_t pages[256];
    for (unsigned bi = 0; bi < mem->nblocks; bi++) {
        lm_pc_block *pb = &d->blk[bi];
        uint64_t npages = mem->blocks[bi].npages;
        for (uint64_t from = 0; from < npages;) {
            unsigned n = 0;
            pthread_mutex_lock(&d->lock);
            if (!pb->owed || !pb->requested) {
                pthread_mutex_unlock(&d->lock);
                break;
            }
            while (n < 256 && from < npages) {
                uint64_t p = lm_bitmap_next_set(pb->requested, npages, from);
                if (p >= npages) {
                    from = npages;
                    break;
                }
                from = p + 1;
                if (lm_bit_test(pb->owed, p))
                    pages[n++] = p;
            }
            pthread_mutex_unlock(&d->lock);
            if (n && resend(d, bi, pages, n) < 0) {
                lm_chan_get_error(rp, err);
                return lm_error_prefix(err, "sending the waiting page requests again");
            }
        }
    }
    return 0;
}
