/*
 * pages.c - codecs of the RAM payloads (block table, page runs, zero runs,
 * discards, requests) and of multifd packets.  Pure, as wire.c (its header
 * comment lists the error codes).
 */
#include "format/bytes.h"
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* --------------------------------------------------------------------- RAM */

/* Validates one block table entry; name is name_len bytes, not
 * necessarily NUL-terminated.  idx is for the message. */
static int block_check(uint32_t idx, const uint8_t *name, size_t name_len, uint64_t page_size,
                       uint64_t length, lm_error *err)
{
    if (name_len == 0 || name_len > LM_RAM_NAME_MAX)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block %" PRIu32 " name length %zu out of range 1..%d", idx,
                            name_len, LM_RAM_NAME_MAX);
    long bad = bad_name_byte(name, name_len);
    if (bad >= 0)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block %" PRIu32
                            " name byte %ld is 0x%02x (not printable ASCII)",
                            idx, bad, name[bad]);
    if (!page_size_ok(page_size))
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block \"%.*s\" page size %" PRIu64
                            " is not a power of two in 4096..1GiB",
                            (int)name_len, (const char *)name, page_size);
    if (length == 0 || length % page_size)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block \"%.*s\" length %" PRIu64
                            " is not a non-zero multiple of its page size %" PRIu64,
                            (int)name_len, (const char *)name, length, page_size);
    return 0;
}

int lm_fmt_ram_blocks_encode(const lm_fmt_block *b, uint32_t n, uint8_t *buf, size_t cap)
{
    if (n > LM_RAM_MAX_BLOCKS)
        return -EINVAL;
    size_t need = 4;
    for (uint32_t i = 0; i < n; i++) {
        size_t nl = strnlen(b[i].name, sizeof b[i].name);
        if (nl == sizeof b[i].name ||
            block_check(i, (const uint8_t *)b[i].name, nl, b[i].page_size, b[i].length, NULL) < 0)
            return -EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(b[i].name, b[j].name) == 0)
                return -EINVAL;
        need += 1 + nl + 4 + 8;
    }
    if (cap < need)
        return -ENOSPC;
    uint8_t *p = buf;
    put32(p, n);
    p += 4;
    for (uint32_t i = 0; i < n; i++) {
        size_t nl = strlen(b[i].name);
        *p++ = (uint8_t)nl;
        memcpy(p, b[i].name, nl);
        p += nl;
        put32(p, b[i].page_size);
        p += 4;
        put64(p, b[i].length);
        p += 8;
    }
    return (int)need;
}

int lm_fmt_ram_blocks_decode(const uint8_t *payload, size_t len, lm_fmt_block *out, uint32_t max,
                             uint32_t *n, lm_error *err)
{
    if (len < 4)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload of %zu bytes too short for a count",
                            len);
    uint32_t count = get32(payload);
    if (count > LM_RAM_MAX_BLOCKS)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: count %" PRIu32 " out of range 0..%d", count,
                            LM_RAM_MAX_BLOCKS);
    if (count > max)
        return lm_error_set(
            err, -ENOSPC, "RAM_BLOCKS: %" PRIu32 " blocks but room for only %" PRIu32, count, max);
    size_t off = 4;
    for (uint32_t i = 0; i < count; i++) {
        if (len - off < 1)
            return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload ends before block %" PRIu32, i);
        size_t nl = payload[off];
        if (nl == 0 || nl > LM_RAM_NAME_MAX)
            return lm_error_set(err, -EPROTO,
                                "RAM_BLOCKS: block %" PRIu32 " name length %zu out of range 1..%d",
                                i, nl, LM_RAM_NAME_MAX);
        if (len - off - 1 < nl + 12)
            return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload ends inside block %" PRIu32, i);
        const uint8_t *name = payload + off + 1;
        uint32_t ps = get32(name + nl);
        uint64_t length = get64(name + nl + 4);
        int rc = block_check(i, name, nl, ps, length, err);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < i; j++)
            if (strlen(out[j].name) == nl && memcmp(out[j].name, name, nl) == 0)
                return lm_error_set(err, -EPROTO,
                                    "RAM_BLOCKS: block %" PRIu32
                                    " name \"%.*s\" duplicates block %" PRIu32,
                                    i, (int)nl, (const char *)name, j);
        memcpy(out[i].name, name, nl);
        out[i].name[nl] = '\0';
        out[i].page_size = ps;
        out[i].length = length;
        off += 1 + nl + 12;
    }
    if (off != len)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: %zu trailing bytes after %" PRIu32 " blocks",
                            len - off, count);
    *n = count;
    return (int)len;
}

/* The run header is shared by RAM_PAGES and RP_REQ_PAGES; what names the
 * record in messages. */
static int run_hdr_decode(const char *what, const uint8_t *buf, size_t len, lm_ram_run *out,
                          lm_error *err)
{
    if (len < LM_RAM_PAGES_HDR_SIZE)
        return 0;
    uint32_t count = get32(buf + 4);
    if (count < 1 || count > LM_RAM_MAX_RUN)
        return lm_error_set(err, -EPROTO, "%s: count %" PRIu32 " out of range 1..%d", what, count,
                            LM_RAM_MAX_RUN);
    out->block = get32(buf);
    out->count = count;
    out->first_page = get64(buf + 8);
    return LM_RAM_PAGES_HDR_SIZE;
}

int lm_fmt_ram_pages_hdr_encode(const lm_ram_run *r, uint8_t *buf, size_t cap)
{
    if (r->count < 1 || r->count > LM_RAM_MAX_RUN)
        return -EINVAL;
    if (cap < LM_RAM_PAGES_HDR_SIZE)
        return -ENOSPC;
    put32(buf, r->block);
    put32(buf + 4, r->count);
    put64(buf + 8, r->first_page);
    return LM_RAM_PAGES_HDR_SIZE;
}

int lm_fmt_ram_pages_hdr_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err)
{
    return run_hdr_decode("RAM_PAGES", buf, len, out, err);
}

int lm_fmt_req_pages_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err)
{
    return run_hdr_decode("RP_REQ_PAGES", buf, len, out, err);
}

int lm_fmt_ram_zero_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap)
{
    if (z->count < 1)
        return -EINVAL;
    if (cap < LM_RAM_ZERO_SIZE)
        return -ENOSPC;
    put32(buf, z->block);
    put32(buf + 4, 0);
    put64(buf + 8, z->first_page);
    put64(buf + 16, z->count);
    return LM_RAM_ZERO_SIZE;
}

/* RAM_ZERO and POSTCOPY_DISCARD share a layout; `what` names the record. */
static int range_decode(const char *what, const uint8_t *payload, size_t len, lm_ram_zero *out,
                        lm_error *err)
{
    if (len != LM_RAM_ZERO_SIZE)
        return lm_error_set(err, -EPROTO, "%s: payload of %zu bytes, must be %d", what, len,
                            LM_RAM_ZERO_SIZE);
    if (get32(payload + 4))
        return lm_error_set(err, -EPROTO, "%s: reserved 0x%08" PRIx32 " must be 0", what,
                            get32(payload + 4));
    uint64_t count = get64(payload + 16);
    if (count < 1)
        return lm_error_set(err, -EPROTO, "%s: count 0, must be at least 1", what);
    out->block = get32(payload);
    out->first_page = get64(payload + 8);
    out->count = count;
    return LM_RAM_ZERO_SIZE;
}

int lm_fmt_ram_zero_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err)
{
    return range_decode("RAM_ZERO", payload, len, out, err);
}

int lm_fmt_discard_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap)
{
    return lm_fmt_ram_zero_encode(z, buf, cap);
}

int lm_fmt_discard_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err)
{
    return range_decode("POSTCOPY_DISCARD", payload, len, out, err);
}

int lm_fmt_ram_run_check(uint32_t block, uint64_t first_page, uint64_t count,
                         const lm_fmt_block *blocks, uint32_t nblocks, lm_error *err)
{
    if (block >= nblocks)
        return lm_error_set(err, -EPROTO,
                            "RAM run: block %" PRIu32 " out of range (%" PRIu32 " blocks)", block,
                            nblocks);
    const lm_fmt_block *b = &blocks[block];
    if (b->page_size == 0)
        return lm_error_set(err, -EINVAL, "RAM run: block \"%s\" has page size 0", b->name);
    if (count < 1)
        return lm_error_set(err, -EPROTO, "RAM run: count 0 in block \"%s\"", b->name);
    uint64_t pages = b->length / b->page_size;
    /* Written as two comparisons so first_page + count cannot wrap. */
    if (first_page > pages || count > pages - first_page)
        return lm_error_set(err, -EPROTO,
                            "RAM run: pages %" PRIu64 "+%" PRIu64
                            " past the end of block \"%s\" (%" PRIu64 " pages)",
                            first_page, count, b->name, pages);
    return 0;
}

/* ---------------------------------------------------------------- multifd */

int lm_fmt_mfd_pages_hdr_encode(const lm_mfd_pages *p, uint8_t *buf, size_t cap)
{
    if ((uint32_t)p->normal + p->zero < 1 || (uint32_t)p->normal + p->zero > LM_MFD_MAX_PAGES ||
        p->compression > LM_MFD_COMP_LZ4)
        return -EINVAL;
    if (cap < LM_MFD_HDR_SIZE)
        return -ENOSPC;
    put32(buf, p->block);
    put16(buf + 4, p->normal);
    put16(buf + 6, p->zero);
    buf[8] = p->compression;
    buf[9] = buf[10] = buf[11] = 0;
    put32(buf + 12, p->data_len);
    put64(buf + 16, p->packet_num);
    return LM_MFD_HDR_SIZE;
}

int lm_fmt_mfd_pages_hdr_decode(const uint8_t *buf, size_t len, uint32_t rec_len,
                                uint32_t page_size, lm_mfd_pages *out, lm_error *err)
{
    if (len < LM_MFD_HDR_SIZE)
        return 0;
    lm_mfd_pages p = {.block = get32(buf),
                      .normal = get16(buf + 4),
                      .zero = get16(buf + 6),
                      .compression = buf[8],
                      .data_len = get32(buf + 12),
                      .packet_num = get64(buf + 16)};
    uint32_t n = (uint32_t)p.normal + p.zero;
    if (n < 1 || n > LM_MFD_MAX_PAGES)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: %" PRIu32 " pages, must be 1..%d", n,
                            LM_MFD_MAX_PAGES);
    if (p.compression > LM_MFD_COMP_LZ4)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: unknown compression %u", p.compression);
    for (int i = 9; i < 12; i++)
        if (buf[i])
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: reserved byte %d is 0x%02x, must "
                                "be 0",
                                i, buf[i]);
    uint64_t want = LM_MFD_HDR_SIZE + 8ull * n + p.data_len;
    if (want != rec_len)
        return lm_error_set(err, -EPROTO,
                            "MULTIFD_PAGES: record of %" PRIu32 " bytes, header says %" PRIu64
                            " (%u + %" PRIu32 " indices + %" PRIu32 " data bytes)",
                            rec_len, want, LM_MFD_HDR_SIZE, n, p.data_len);
    if (p.compression == LM_MFD_COMP_NONE) {
        if (page_size && (uint64_t)p.data_len != (uint64_t)p.normal * page_size)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: %" PRIu32 " data bytes for %u pages of %" PRIu32
                                " bytes",
                                p.data_len, p.normal, page_size);
    } else if ((p.normal == 0) != (p.data_len == 0)) {
        return lm_error_set(err, -EPROTO,
                            "MULTIFD_PAGES: %" PRIu32 " compressed bytes for %u normal pages",
                            p.data_len, p.normal);
    }
    *out = p;
    return LM_MFD_HDR_SIZE;
}

int lm_fmt_mfd_index_encode(const uint64_t *idx, uint32_t n, uint8_t *buf, size_t cap)
{
    if (cap < 8ull * n)
        return -ENOSPC;
    for (uint32_t i = 0; i < n; i++)
        put64(buf + 8 * i, idx[i]);
    return (int)(8 * n);
}

int lm_fmt_mfd_index_decode(const uint8_t *buf, size_t len, const lm_mfd_pages *p,
                            uint64_t block_pages, uint64_t *out, lm_error *err)
{
    uint32_t n = (uint32_t)p->normal + p->zero;
    if (len < 8ull * n)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: index list cut short");
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = get64(buf + 8 * i);
        if (v >= block_pages)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page %" PRIu64 " past the end of block %" PRIu32
                                " (%" PRIu64 " pages)",
                                v, p->block, block_pages);
        if (i != 0 && i != p->normal && v <= out[i - 1])
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page index %" PRIu64 " after %" PRIu64
                                " (lists must be strictly ascending)",
                                v, out[i - 1]);
        out[i] = v;
    }
    /* No page in both lists: a merge walk over the two sorted lists. */
    uint32_t a = 0, b = p->normal;
    while (a < p->normal && b < n) {
        if (out[a] == out[b])
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page %" PRIu64 " is both normal and zero", out[a]);
        if (out[a] < out[b])
            a++;
        else
            b++;
    }
    return (int)(8 * n);
}
