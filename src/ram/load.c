/*
 * load.c - RAM records on the destination: the block table (RAM_BLOCKS),
 * page runs (RAM_PAGES) read straight into their place, zero runs
 * (RAM_ZERO), pass markers.  Pages go through the placement interface
 * (mem.h), so the same code serves precopy (written in place) and
 * postcopy (placed atomically), on the main and the preempt channel.
 * Runs on whichever thread reads the record (ram.h).
 */
#include "ram/ram.h"

#include <errno.h>
#include <stdlib.h>

static int load_blocks(lm_mem *mem, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    enum { CAP = 4 + LM_RAM_MAX_BLOCKS * (1 + LM_RAM_NAME_MAX + 12) };
    if (mem->smap.ready)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS received twice");
    uint8_t *buf = malloc(CAP);
    if (!buf)
        return lm_error_set(err, -ENOMEM, "out of memory");
    lm_fmt_block *blocks = malloc(sizeof *blocks * LM_RAM_MAX_BLOCKS);
    int ret = blocks ? lm_rec_read_payload(c, h, buf, CAP, "RAM_BLOCKS", err)
                     : lm_error_set(err, -ENOMEM, "out of memory");
    uint32_t n = 0;
    if (ret == 0)
        ret = lm_fmt_ram_blocks_decode(buf, h->len, blocks, LM_RAM_MAX_BLOCKS, &n, err);
    if (ret >= 0)
        ret = lm_mem_stream_map_set(mem, blocks, n, err);
    free(blocks);
    free(buf);
    return ret < 0 ? ret : 0;
}

/* Reads and checks a RAM_PAGES header against the block table and the
 * record length; the page data is left in the channel. */
static int read_pages_hdr(lm_mem *mem, lm_chan *c, const lm_rec_hdr *h, lm_ram_run *r,
                          lm_ram_block **bp, lm_error *err)
{
    uint8_t hb[LM_RAM_PAGES_HDR_SIZE];
    if (h->len < LM_RAM_PAGES_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "RAM_PAGES: record of %u bytes too short", h->len);
    if (lm_chan_read_exact(c, hb, sizeof hb) < 0)
        return lm_chan_get_error(c, err);
    if (lm_fmt_ram_pages_hdr_decode(hb, sizeof hb, r, err) <= 0)
        return err && err->code ? err->code : -EPROTO;
    int ret = lm_mem_stream_run(mem, r->block, r->first_page, r->count, "RAM_PAGES", bp, err);
    if (ret < 0)
        return ret;
    if ((uint64_t)h->len != LM_RAM_PAGES_HDR_SIZE + (uint64_t)r->count * (*bp)->page_size)
        return lm_error_set(err, -EPROTO,
                            "RAM_PAGES: record length %u does not match %u pages of %u bytes",
                            h->len, r->count, (*bp)->page_size);
    return 0;
}

int lm_ram_read_zero_run(lm_mem *mem, lm_chan *c, const lm_rec_hdr *h, lm_ram_zero *z,
                         lm_ram_block **bp, lm_error *err)
{
    const char *what = lm_rec_type_name(h->type);
    uint8_t p[LM_RAM_ZERO_SIZE];
    if (h->len != LM_RAM_ZERO_SIZE)
        return lm_error_set(err, -EPROTO, "%s: length %u, expected %d", what, h->len,
                            LM_RAM_ZERO_SIZE);
    if (lm_chan_read_full(c, p, sizeof p) < 0)
        return lm_chan_get_error(c, err);
    int rc = h->type == LM_REC_POSTCOPY_DISCARD ? lm_fmt_discard_decode(p, sizeof p, z, err)
                                                : lm_fmt_ram_zero_decode(p, sizeof p, z, err);
    if (rc <= 0)
        return err && err->code ? err->code : -EPROTO;
    return lm_mem_stream_run(mem, z->block, z->first_page, z->count, what, bp, err);
}

/* RAM_XBZRLE: one page as a delta against what it holds; every error
 * names the block and the page. */
static int load_xbzrle(lm_mem *mem, lm_place *pl, lm_chan *c, const lm_rec_hdr *h, lm_error *err)
{
    uint8_t buf[LM_XBZRLE_HDR_SIZE + LM_XBZRLE_DATA_MAX];
    lm_xbzrle_hdr x;
    lm_ram_block *b;
    int ret = lm_rec_read_payload(c, h, buf, sizeof buf, "RAM_XBZRLE", err);
    if (ret < 0)
        return ret;
    if (lm_fmt_xbzrle_hdr_decode(buf, h->len, h->len, &x, err) < 0)
        return err && err->code ? err->code : -EPROTO;
    if ((ret = lm_mem_stream_run(mem, x.block, x.page, 1, "RAM_XBZRLE", &b, err)) < 0)
        return ret;
    ret = lm_place_delta(pl, b, x.page, buf + LM_XBZRLE_HDR_SIZE, x.data_len, err);
    if (ret < 0)
        return lm_error_prefix(err, "RAM_XBZRLE: block '%s' page %llu", b->name,
                               (unsigned long long)x.page);
    return 0;
}

int lm_ram_load_record(lm_mem *mem, lm_place *pl, lm_chan *c, const lm_rec_hdr *h, uint8_t *scratch,
                       lm_error *err)
{
    switch (h->type) {
    case LM_REC_RAM_BLOCKS:
        return load_blocks(mem, c, h, err);
    case LM_REC_RAM_PAGES: {
        lm_ram_run r;
        lm_ram_block *b;
        int ret = read_pages_hdr(mem, c, h, &r, &b, err);
        if (ret < 0)
            return ret;
        return lm_place_recv(pl, c, b, r.first_page, r.count, scratch, err);
    }
    case LM_REC_RAM_ZERO: {
        lm_ram_zero z;
        lm_ram_block *b;
        int ret = lm_ram_read_zero_run(mem, c, h, &z, &b, err);
        if (ret < 0)
            return ret;
        return lm_place_pages(pl, b, z.first_page, z.count, NULL, err);
    }
    case LM_REC_RAM_XBZRLE:
        return load_xbzrle(mem, pl, c, h, err);
    case LM_REC_RAM_PASS: {
        uint8_t p[8];
        uint64_t pass;
        if (!mem->smap.ready)
            return lm_error_set(err, -EPROTO, "RAM_PASS before the RAM block table");
        if (lm_chan_read_full(c, p, sizeof p) < 0)
            return lm_chan_get_error(c, err);
        return lm_fmt_u64_decode(p, sizeof p, &pass, err) > 0 ? 0 : -EPROTO;
    }
    default:
        return lm_error_set(err, -EPROTO, "unexpected record %s in RAM", lm_rec_type_name(h->type));
    }
}
