/*
 * walk.c - the stream walker: checks a whole byte stream record by record
 * with every decoder (lm_fmt_walk, and lm_fmt_walk_rec which also hands out
 * each record decoded; the fuzz targets and `livemig inspect` use them).
 * Pure, as wire.c.
 */
#include "format/bytes.h"
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* Walk state: the block table of the most recent RAM_BLOCKS record (or
 * the caller's), which gives RAM_PAGES/RAM_ZERO runs their bounds and page
 * size. */
typedef struct walk_state {
    lm_fmt_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nblocks;
    bool have_blocks;
    uint64_t gap; /* after a MAPPED_RAM record: its page regions, skipped */
} walk_state;

/* Decodes and checks one record payload (its length already fits its
 * type, per lm_fmt_rec_hdr_decode) into r->u. */
static int walk_payload(walk_state *w, const lm_rec_hdr *h, const uint8_t *p, lm_fmt_rec *r,
                        lm_error *err)
{
    int rc = 0;
    switch (h->type) {
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
    case LM_REC_SECTION_FULL:
        rc = lm_fmt_section_hdr_decode(h->type, p, h->len, &r->u.section, err);
        if (rc >= 0)
            r->data_off = (uint32_t)rc;
        break;
    case LM_REC_RAM_BLOCKS: {
        uint32_t n = 0;
        rc = lm_fmt_ram_blocks_decode(p, h->len, w->blocks, LM_RAM_MAX_BLOCKS, &n, err);
        if (rc >= 0) {
            w->nblocks = n;
            w->have_blocks = true;
        }
        break;
    }
    case LM_REC_RAM_PAGES: {
        lm_ram_run *run = &r->u.run;
        rc = lm_fmt_ram_pages_hdr_decode(p, h->len, run, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "RAM_PAGES before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(run->block, run->first_page, run->count, w->blocks, w->nblocks,
                                  err);
        if (rc < 0)
            break;
        /* count <= 1024 and page_size <= 1 GiB: the product fits in 64 bits. */
        uint64_t ps = w->blocks[run->block].page_size;
        if ((uint64_t)h->len != LM_RAM_PAGES_HDR_SIZE + (uint64_t)run->count * ps)
            return lm_error_set(err, -EPROTO,
                                "RAM_PAGES: length %" PRIu32 " is not %d + %" PRIu32
                                " pages of %" PRIu64 " bytes",
                                h->len, LM_RAM_PAGES_HDR_SIZE, run->count, ps);
        break;
    }
    case LM_REC_RAM_ZERO: {
        lm_ram_zero *z = &r->u.zero;
        rc = lm_fmt_ram_zero_decode(p, h->len, z, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "RAM_ZERO before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(z->block, z->first_page, z->count, w->blocks, w->nblocks, err);
        break;
    }
    case LM_REC_RAM_XBZRLE: {
        lm_xbzrle_hdr *x = &r->u.xbzrle;
        rc = lm_fmt_xbzrle_hdr_decode(p, h->len, h->len, x, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "RAM_XBZRLE before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(x->block, x->page, 1, w->blocks, w->nblocks, err);
        if (rc < 0)
            break;
        if (w->blocks[x->block].page_size != LM_XBZRLE_PAGE_MAX)
            return lm_error_set(err, -EPROTO,
                                "RAM_XBZRLE: block %" PRIu32 " has %" PRIu32
                                "-byte pages (XBZRLE serves 4 KiB pages only)",
                                x->block, w->blocks[x->block].page_size);
        rc = lm_fmt_xbzrle_decode(p + LM_XBZRLE_HDR_SIZE, x->data_len, NULL, LM_XBZRLE_PAGE_MAX,
                                  err);
        break;
    }
    case LM_REC_POSTCOPY_DISCARD: {
        lm_ram_zero *z = &r->u.zero;
        rc = lm_fmt_discard_decode(p, h->len, z, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "POSTCOPY_DISCARD before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(z->block, z->first_page, z->count, w->blocks, w->nblocks, err);
        break;
    }
    case LM_REC_RAM_PASS:
    case LM_REC_MULTIFD_FLUSH:
    case LM_REC_MULTIFD_SYNC:
    case LM_REC_RP_RESUME_ACK:
        rc = lm_fmt_u64_decode(p, h->len, &r->u.u64, err);
        break;
    case LM_REC_MULTIFD_PAGES: {
        /* A multifd channel's stream has no block table of its own: the
         * index bounds are checked when one was seen in the same walk. */
        lm_mfd_pages *mp = &r->u.mfd;
        uint32_t ps = 0;
        uint64_t pages = UINT64_MAX;
        rc = lm_fmt_mfd_pages_hdr_decode(p, h->len, h->len, 0, mp, err);
        if (rc < 0)
            break;
        if (w->have_blocks) {
            if (mp->block >= w->nblocks)
                return lm_error_set(err, -EPROTO,
                                    "MULTIFD_PAGES: block %" PRIu32 " out of range (%" PRIu32
                                    " blocks)",
                                    mp->block, w->nblocks);
            ps = w->blocks[mp->block].page_size;
            pages = w->blocks[mp->block].length / ps;
            rc = lm_fmt_mfd_pages_hdr_decode(p, h->len, h->len, ps, mp, err);
            if (rc < 0)
                break;
        }
        uint64_t idx[LM_MFD_MAX_PAGES];
        rc = lm_fmt_mfd_index_decode(p + LM_MFD_HDR_SIZE, h->len - LM_MFD_HDR_SIZE, mp, pages, idx,
                                     err);
        break;
    }
    case LM_REC_PING:
    case LM_REC_RP_PONG:
        rc = lm_fmt_u32_decode(p, h->len, &r->u.u32, err);
        break;
    case LM_REC_SWITCHOVER_START:
    case LM_REC_POSTCOPY_RUN:
    case LM_REC_POSTCOPY_RESUME:
    case LM_REC_EOS:
    case LM_REC_RP_SWITCHOVER_ACK:
        break;
    case LM_REC_RP_RECV_BITMAP: {
        lm_recv_bitmap *b = &r->u.bitmap;
        rc = lm_fmt_recv_bitmap_decode(p, h->len, b, err);
        if (rc < 0)
            break;
        if (w->have_blocks)
            rc = lm_fmt_ram_run_check(b->block, b->first_page, b->npages, w->blocks, w->nblocks,
                                      err);
        break;
    }
    case LM_REC_ERROR:
    case LM_REC_RP_SHUT:
        rc = lm_fmt_status_msg_decode(p, h->len, &r->u.status, err);
        break;
    case LM_REC_RP_REQ_PAGES: {
        lm_ram_run *run = &r->u.run;
        rc = lm_fmt_req_pages_decode(p, h->len, run, err);
        if (rc < 0)
            break;
        /* Bounds-checked against the table when one was seen (a capture
         * of the return path alone has none). */
        if (w->have_blocks)
            rc = lm_fmt_ram_run_check(run->block, run->first_page, run->count, w->blocks,
                                      w->nblocks, err);
        break;
    }
    case LM_REC_ACK_DEVICES: {
        uint32_t ids[LM_ACK_DEVICES_MAX];
        rc = lm_fmt_ack_devices_decode(p, h->len, ids, LM_ACK_DEVICES_MAX, &r->u.ack.count, err);
        break;
    }
    case LM_REC_RP_DEVICE_ACK:
        rc =
            lm_fmt_device_ack_decode(p, h->len, &r->u.dev_ack.section_id, &r->u.dev_ack.state, err);
        break;
    case LM_REC_MAPPED_RAM: {
        lm_mapped_layout l;
        rc = lm_fmt_mapped_decode(p, h->len, &l, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "MAPPED_RAM before any RAM_BLOCKS");
        rc = lm_fmt_mapped_check(&l, w->blocks, w->nblocks, UINT64_MAX, err);
        /* The stream goes on after the page regions (a file's offsets are
         * absolute, the gap is not). */
        w->gap = l.resume - l.record_end;
        break;
    }
    default:
        /* Unreachable: lm_fmt_rec_hdr_decode refuses unknown types. */
        return lm_error_set(err, -EPROTO, "record type 0x%02x unknown", h->type);
    }
    return rc < 0 ? rc : 0;
}

long lm_fmt_walk_rec(const uint8_t *buf, size_t len, const lm_fmt_walk_cfg *cfg, lm_error *err)
{
    walk_state w;
    w.nblocks = 0;
    w.have_blocks = false;
    if (cfg->blocks && cfg->nblocks <= LM_RAM_MAX_BLOCKS) {
        memcpy(w.blocks, cfg->blocks, cfg->nblocks * sizeof w.blocks[0]);
        w.nblocks = cfg->nblocks;
        w.have_blocks = true;
    }
    w.gap = 0;
    size_t off = 0;
    long ret;

    if (cfg->expect_hello) {
        lm_hello h;
        int rc = lm_fmt_hello_decode(buf, len, &h, err);
        if (rc <= 0) {
            ret = rc; /* 0: the HELLO itself is incomplete */
            goto out;
        }
        if (cfg->hello)
            *cfg->hello = h;
        off = (size_t)rc;
    }
    while (off < len) {
        lm_fmt_rec r;
        int rc = lm_fmt_rec_hdr_decode(buf + off, len - off, &r.hdr, err);
        if (rc < 0) {
            lm_error_prefix(err, "stream offset %zu", off);
            ret = rc;
            goto out;
        }
        if (rc == 0 || len - off - LM_REC_HDR_SIZE < r.hdr.len)
            break; /* incomplete record: stop at the last complete one */
        r.offset = off;
        r.payload = buf + off + LM_REC_HDR_SIZE;
        r.data_off = 0;
        rc = walk_payload(&w, &r.hdr, r.payload, &r, err);
        if (rc < 0) {
            lm_error_prefix(err, "stream offset %zu", off);
            ret = rc;
            goto out;
        }
        r.blocks = w.have_blocks ? w.blocks : NULL;
        r.nblocks = w.nblocks;
        if (cfg->cb) {
            rc = cfg->cb(cfg->opaque, &r);
            if (rc < 0) {
                /* No-op if the callback already filled err (first wins). */
                lm_error_set(err, rc, "stream offset %zu: %s record refused by the caller", off,
                             lm_rec_type_name(r.hdr.type));
                ret = rc;
                goto out;
            }
        }
        off += LM_REC_HDR_SIZE + r.hdr.len;
        if (w.gap) {
            if (w.gap > len - off)
                break; /* the regions go past what we have */
            off += (size_t)w.gap;
            w.gap = 0;
        }
    }
    ret = (long)off;
out:
    return ret;
}

/* The plain walker's callback, on top of the decoded one. */
typedef struct plain_ctx {
    lm_fmt_walk_fn cb;
    void *opaque;
} plain_ctx;

static int plain_cb(void *opaque, const lm_fmt_rec *r)
{
    plain_ctx *c = opaque;
    return c->cb(c->opaque, &r->hdr, r->payload);
}

long lm_fmt_walk(const uint8_t *buf, size_t len, bool expect_hello, lm_fmt_walk_fn cb, void *opaque,
                 lm_error *err)
{
    plain_ctx c = {.cb = cb, .opaque = opaque};
    lm_fmt_walk_cfg cfg = {.expect_hello = expect_hello, .cb = cb ? plain_cb : NULL, .opaque = &c};
    return lm_fmt_walk_rec(buf, len, &cfg, err);
}
