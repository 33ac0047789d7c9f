/*
 * mapped.c - the mapped-ram layout record (format.h, docs/format.md §9):
 * where each block's present-page bitmap and fixed page region lie in a
 * file.  Pure, as wire.c: every offset from a file is checked here before
 * anything reads at it (fuzzed by tests/fuzz/fuzz_mapped.c).
 */
#include "format/bytes.h"
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <zlib.h>

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

void lm_fmt_mapped_plan(const lm_fmt_block *table, uint32_t n, uint64_t record_end,
                        lm_mapped_layout *out)
{
    memset(out, 0, sizeof *out);
    out->version = LM_MAPPED_VERSION;
    out->nblocks = n;
    out->record_end = record_end;
    /* Every bitmap first, then the page regions back to back: one
     * alignment gap for the whole file, not one per block (the file stays
     * within 1 % of the RAM). */
    uint64_t pos = record_end;
    for (uint32_t i = 0; i < n; i++) {
        lm_mapped_block *b = &out->b[i];
        b->page_size = table[i].page_size;
        b->npages = table[i].length / table[i].page_size;
        b->bitmap_offset = pos;
        pos += lm_mapped_bitmap_region(b->npages);
    }
    for (uint32_t i = 0; i < n; i++) {
        out->b[i].pages_offset = align_up(pos, LM_MAPPED_ALIGN);
        pos = out->b[i].pages_offset + table[i].length;
    }
    out->resume = pos;
}

int lm_fmt_mapped_encode(const lm_mapped_layout *l, uint8_t *buf, size_t cap)
{
    size_t need = LM_MAPPED_HDR_SIZE + (size_t)l->nblocks * LM_MAPPED_ENTRY_SIZE;
    if (l->nblocks > LM_RAM_MAX_BLOCKS || cap < need)
        return -ENOSPC;
    put32(buf, l->version);
    put32(buf + 4, l->nblocks);
    put64(buf + 8, l->record_end);
    put64(buf + 16, l->resume);
    for (uint32_t i = 0; i < l->nblocks; i++) {
        uint8_t *e = buf + LM_MAPPED_HDR_SIZE + (size_t)i * LM_MAPPED_ENTRY_SIZE;
        put32(e, i);
        put32(e + 4, l->b[i].page_size);
        put64(e + 8, l->b[i].npages);
        put64(e + 16, l->b[i].bitmap_offset);
        put64(e + 24, l->b[i].pages_offset);
    }
    return (int)need;
}

int lm_fmt_mapped_decode(const uint8_t *p, size_t len, lm_mapped_layout *out, lm_error *err)
{
    if (len < LM_MAPPED_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "MAPPED_RAM: %zu bytes, shorter than its header", len);
    memset(out, 0, sizeof *out);
    out->version = get32(p);
    out->nblocks = get32(p + 4);
    out->record_end = get64(p + 8);
    out->resume = get64(p + 16);
    if (out->version != LM_MAPPED_VERSION)
        return lm_error_set(err, -EPROTONOSUPPORT,
                            "MAPPED_RAM: layout version %" PRIu32
                            " not supported (this side reads version %d)",
                            out->version, LM_MAPPED_VERSION);
    if (out->nblocks == 0 || out->nblocks > LM_RAM_MAX_BLOCKS)
        return lm_error_set(err, -EPROTO, "MAPPED_RAM: %" PRIu32 " blocks (1..%d allowed)",
                            out->nblocks, LM_RAM_MAX_BLOCKS);
    if (len != LM_MAPPED_HDR_SIZE + (size_t)out->nblocks * LM_MAPPED_ENTRY_SIZE)
        return lm_error_set(err, -EPROTO, "MAPPED_RAM: %zu bytes for %" PRIu32 " blocks", len,
                            out->nblocks);
    if (out->record_end > out->resume || out->resume > (uint64_t)INT64_MAX)
        return lm_error_set(err, -EPROTO,
                            "MAPPED_RAM: the regions [%" PRIu64 ", %" PRIu64 ") are backwards",
                            out->record_end, out->resume);
    uint64_t rs[2 * LM_RAM_MAX_BLOCKS], re[2 * LM_RAM_MAX_BLOCKS]; /* every region */
    for (uint32_t i = 0; i < out->nblocks; i++) {
        const uint8_t *e = p + LM_MAPPED_HDR_SIZE + (size_t)i * LM_MAPPED_ENTRY_SIZE;
        lm_mapped_block *b = &out->b[i];
        if (get32(e) != i)
            return lm_error_set(err, -EPROTO, "MAPPED_RAM: entry %" PRIu32 " names block %" PRIu32,
                                i, get32(e));
        b->page_size = get32(e + 4);
        b->npages = get64(e + 8);
        b->bitmap_offset = get64(e + 16);
        b->pages_offset = get64(e + 24);
        if (!page_size_ok(b->page_size))
            return lm_error_set(err, -EPROTO, "MAPPED_RAM: block %" PRIu32 ": page size %" PRIu32,
                                i, b->page_size);
        /* Bounded by the file's offsets (< 2^63): no product overflows. */
        if (b->npages == 0 || b->npages > ((uint64_t)INT64_MAX) / b->page_size)
            return lm_error_set(err, -EPROTO, "MAPPED_RAM: block %" PRIu32 ": %" PRIu64 " pages", i,
                                b->npages);
        uint64_t bm_end = b->bitmap_offset + lm_mapped_bitmap_region(b->npages);
        uint64_t pg_len = b->npages * b->page_size;
        if (b->bitmap_offset < out->record_end || b->bitmap_offset > out->resume ||
            bm_end > out->resume)
            return lm_error_set(err, -EPROTO,
                                "MAPPED_RAM: block %" PRIu32 ": bitmap at %" PRIu64
                                " outside the regions [%" PRIu64 ", %" PRIu64 ")",
                                i, b->bitmap_offset, out->record_end, out->resume);
        if (b->pages_offset % LM_MAPPED_ALIGN)
            return lm_error_set(err, -EPROTO,
                                "MAPPED_RAM: block %" PRIu32 ": pages at %" PRIu64
                                ", not a multiple of 1 MiB",
                                i, b->pages_offset);
        if (b->pages_offset < out->record_end || b->pages_offset > out->resume ||
            pg_len > out->resume - b->pages_offset)
            return lm_error_set(err, -EPROTO,
                                "MAPPED_RAM: block %" PRIu32 ": pages [%" PRIu64 ", +%" PRIu64
                                ") outside the regions [%" PRIu64 ", %" PRIu64 ")",
                                i, b->pages_offset, pg_len, out->record_end, out->resume);
        rs[2 * i] = b->bitmap_offset;
        re[2 * i] = bm_end;
        rs[2 * i + 1] = b->pages_offset;
        re[2 * i + 1] = b->pages_offset + pg_len;
    }
    /* No two regions overlap (a page or bitmap byte has one owner). */
    for (uint32_t i = 0; i < 2 * out->nblocks; i++)
        for (uint32_t k = i + 1; k < 2 * out->nblocks; k++)
            if (rs[i] < re[k] && rs[k] < re[i])
                return lm_error_set(err, -EPROTO,
                                    "MAPPED_RAM: the %s of block %" PRIu32 " and the %s of "
                                    "block %" PRIu32 " overlap",
                                    i % 2 ? "pages" : "bitmap", i / 2, k % 2 ? "pages" : "bitmap",
                                    k / 2);
    return (int)len;
}

int lm_fmt_mapped_check(const lm_mapped_layout *l, const lm_fmt_block *table, uint32_t n,
                        uint64_t file_size, lm_error *err)
{
    if (l->nblocks != n)
        return lm_error_set(err, -EPROTO,
                            "MAPPED_RAM: the file's layout has %" PRIu32
                            " blocks, its block table %" PRIu32,
                            l->nblocks, n);
    for (uint32_t i = 0; i < n; i++) {
        const lm_mapped_block *b = &l->b[i];
        if (b->page_size != table[i].page_size || b->npages * b->page_size != table[i].length)
            return lm_error_set(
                err, -EPROTO,
                "MAPPED_RAM: block %" PRIu32 " ('%s'): %" PRIu64 " pages of %" PRIu32
                " bytes in the layout, %" PRIu64 " bytes of %" PRIu32 " in the block table",
                i, table[i].name, b->npages, b->page_size, table[i].length, table[i].page_size);
    }
    if (l->resume > file_size)
        return lm_error_set(err, -EPROTO,
                            "truncated: the page regions end at byte %" PRIu64
                            ", past the end of the file (%" PRIu64 " bytes)",
                            l->resume, file_size);
    return 0;
}

/* zlib's crc32 takes at most 4 GiB at once; a bitmap of 2^35 pages is
 * 4 GiB, so it goes in pieces. */
static uint32_t crc_of(const uint8_t *p, uint64_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, k);
        p += k;
        n -= k;
    }
    return (uint32_t)crc;
}

void lm_fmt_mapped_bitmap_seal(uint8_t *bm, uint64_t npages)
{
    uint64_t bytes = lm_mapped_bitmap_bytes(npages);
    put32(bm + bytes, crc_of(bm, bytes));
    put32(bm + bytes + 4, 0);
}

int64_t lm_fmt_mapped_bitmap_check(const uint8_t *bm, uint64_t npages, uint32_t block,
                                   lm_error *err)
{
    uint64_t bytes = lm_mapped_bitmap_bytes(npages);
    if (get32(bm + bytes) != crc_of(bm, bytes) || get32(bm + bytes + 4) != 0)
        return lm_error_set(err, -EPROTO,
                            "MAPPED_RAM: block %" PRIu32 ": corrupt bitmap (its CRC does not "
                            "match; or the file was not completed)",
                            block);
    if (npages % 8 && (bm[bytes - 1] >> (npages % 8)))
        return lm_error_set(err, -EPROTO,
                            "MAPPED_RAM: block %" PRIu32
                            ": corrupt bitmap: bits set past its %" PRIu64 " pages",
                            block, npages);
    int64_t present = 0;
    for (uint64_t i = 0; i < bytes; i++)
        present += __builtin_popcount(bm[i]);
    return present;
}
