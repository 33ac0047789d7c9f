/*
 * xbzrle.c - the XBZRLE delta of a page against the copy the destination
 * already holds (docs/format.md §4.16, digest §5.8, QEMU's scheme): pairs
 * of [ULEB128 unchanged-run][ULEB128 changed-run][changed bytes of the new
 * page].  Pure: no I/O, no allocation; the decoder checks every length
 * against the page and the input before it writes a byte, and is fuzzed
 * (tests/fuzz/fuzz_xbzrle.c).
 */
#include "format/format.h"

#include <errno.h>
#include <string.h>

/* Writes v (< 2^14, two bytes at most) as ULEB128; returns its size. */
static size_t uleb_put(uint8_t *p, uint32_t v)
{
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        return 1;
    }
    p[0] = (uint8_t)(v & 0x7f) | 0x80;
    p[1] = (uint8_t)(v >> 7);
    return 2;
}

static size_t uleb_size(uint32_t v)
{
    return v < 0x80 ? 1 : 2;
}

static uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

int lm_fmt_xbzrle_encode(const uint8_t *old, const uint8_t *cur, uint32_t page_size, uint8_t *dst,
                         size_t dlen)
{
    if (page_size == 0 || page_size > LM_XBZRLE_PAGE_MAX)
        return -EINVAL;
    size_t i = 0, d = 0;
    while (i < page_size) {
        /* unchanged run: a word at a time, then bytes */
        size_t z = i;
        while (z + 8 <= page_size && load64(old + z) == load64(cur + z))
            z += 8;
        while (z < page_size && old[z] == cur[z])
            z++;
        if (z == page_size) /* the rest is unchanged: no trailing pair */
            return (int)d;
        /* changed run: ends at the first unchanged byte.  A word at a time
         * while all 8 bytes differ (no zero byte in the XOR), giving up as
         * soon as the pair cannot fit: a rewritten page costs a few hundred
         * word compares, not a byte loop. */
        size_t n = z;
        size_t zl = uleb_size((uint32_t)(z - i));
        while (n < page_size) {
            if (n + 8 <= page_size) {
                uint64_t x = load64(old + n) ^ load64(cur + n);
                uint64_t zero = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
                if (!zero) {
                    n += 8;
                } else { /* the lowest flagged byte is the first equal one */
                    n += (size_t)__builtin_ctzll(zero) / 8;
                    break;
                }
            } else if (old[n] != cur[n]) {
                n++;
            } else {
                break;
            }
            if (d + zl + uleb_size((uint32_t)(n - z)) + (n - z) > dlen)
                return -ENOSPC;
        }
        uint32_t zr = (uint32_t)(z - i), nr = (uint32_t)(n - z);
        if (d + uleb_size(zr) + uleb_size(nr) + nr > dlen)
            return -ENOSPC;
        d += uleb_put(dst + d, zr);
        d += uleb_put(dst + d, nr);
        memcpy(dst + d, cur + z, nr);
        d += nr;
        i = n;
    }
    return (int)d;
}

/* Reads one length at src[*i]: one or two bytes, canonical, < 2^14. */
static int uleb_get(const uint8_t *src, size_t slen, size_t *i, uint32_t *out, const char *what,
                    lm_error *err)
{
    if (*i >= slen)
        return lm_error_set(err, -EPROTO, "xbzrle: %s length missing at byte %zu of %zu", what, *i,
                            slen);
    uint8_t b0 = src[*i];
    if (!(b0 & 0x80)) {
        *out = b0;
        *i += 1;
        return 0;
    }
    if (*i + 1 >= slen)
        return lm_error_set(err, -EPROTO, "xbzrle: %s length truncated at byte %zu of %zu", what,
                            *i, slen);
    uint8_t b1 = src[*i + 1];
    if (b1 & 0x80)
        return lm_error_set(err, -EPROTO, "xbzrle: %s length at byte %zu longer than two bytes",
                            what, *i);
    if (b1 == 0)
        return lm_error_set(err, -EPROTO, "xbzrle: %s length at byte %zu is not minimal", what, *i);
    *out = (uint32_t)(b0 & 0x7f) | (uint32_t)b1 << 7;
    *i += 2;
    return 0;
}

/* One pass over the encoding; applies it to dst when dst is not NULL. */
static int walk(const uint8_t *src, size_t slen, uint8_t *dst, uint32_t page_size, lm_error *err)
{
    size_t i = 0, d = 0;
    if (slen == 0)
        return lm_error_set(err, -EPROTO, "xbzrle: empty encoding");
    while (i < slen) {
        uint32_t zr, nr;
        size_t at = i;
        int ret = uleb_get(src, slen, &i, &zr, "unchanged-run", err);
        if (ret < 0)
            return ret;
        if (zr == 0 && at != 0)
            return lm_error_set(err, -EPROTO,
                                "xbzrle: unchanged run of 0 bytes at byte %zu (only the first "
                                "pair may start with a change)",
                                at);
        if (zr > page_size - d)
            return lm_error_set(err, -EPROTO,
                                "xbzrle: unchanged run of %u bytes at page offset %zu goes past "
                                "the page (%u bytes)",
                                zr, d, page_size);
        d += zr;
        at = i;
        if ((ret = uleb_get(src, slen, &i, &nr, "changed-run", err)) < 0)
            return ret;
        if (nr == 0)
            return lm_error_set(err, -EPROTO, "xbzrle: changed run of 0 bytes at byte %zu", at);
        if (nr > page_size - d)
            return lm_error_set(err, -EPROTO,
                                "xbzrle: changed run of %u bytes at page offset %zu goes past "
                                "the page (%u bytes)",
                                nr, d, page_size);
        if (nr > slen - i)
            return lm_error_set(err, -EPROTO,
                                "xbzrle: changed run of %u bytes at byte %zu, only %zu bytes of "
                                "input left",
                                nr, i, slen - i);
        if (dst)
            memcpy(dst + d, src + i, nr);
        d += nr;
        i += nr;
    }
    return (int)d;
}

int lm_fmt_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, uint32_t page_size,
                         lm_error *err)
{
    if (page_size == 0 || page_size > LM_XBZRLE_PAGE_MAX)
        return lm_error_set(err, -EINVAL, "xbzrle: page size %u not supported", page_size);
    /* Checked whole before a byte of the page changes: a bad delta leaves
     * the page as it was. */
    int ret = walk(src, slen, NULL, page_size, err);
    if (ret < 0 || !dst)
        return ret;
    return walk(src, slen, dst, page_size, err);
}

int lm_fmt_xbzrle_hdr_encode(const lm_xbzrle_hdr *h, uint8_t *buf, size_t cap)
{
    if (cap < LM_XBZRLE_HDR_SIZE)
        return -ENOSPC;
    for (int k = 0; k < 4; k++)
        buf[k] = (uint8_t)(h->block >> (8 * k));
    buf[4] = (uint8_t)h->data_len;
    buf[5] = (uint8_t)(h->data_len >> 8);
    buf[6] = buf[7] = 0;
    for (int k = 0; k < 8; k++)
        buf[8 + k] = (uint8_t)(h->page >> (8 * k));
    return LM_XBZRLE_HDR_SIZE;
}

int lm_fmt_xbzrle_hdr_decode(const uint8_t *buf, size_t len, uint32_t rec_len, lm_xbzrle_hdr *out,
                             lm_error *err)
{
    if (len < LM_XBZRLE_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "RAM_XBZRLE: header of %zu bytes, expected %d", len,
                            LM_XBZRLE_HDR_SIZE);
    lm_xbzrle_hdr h;
    h.block =
        (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 24;
    h.data_len = (uint16_t)(buf[4] | buf[5] << 8);
    h.page = 0;
    for (int k = 7; k >= 0; k--)
        h.page = h.page << 8 | buf[8 + k];
    if (buf[6] || buf[7])
        return lm_error_set(err, -EPROTO, "RAM_XBZRLE: reserved bytes not zero");
    if (h.data_len == 0 || h.data_len > LM_XBZRLE_DATA_MAX)
        return lm_error_set(err, -EPROTO, "RAM_XBZRLE: encoding of %u bytes, must be 1..%d",
                            h.data_len, LM_XBZRLE_DATA_MAX);
    if ((uint64_t)rec_len != LM_XBZRLE_HDR_SIZE + (uint64_t)h.data_len)
        return lm_error_set(err, -EPROTO,
                            "RAM_XBZRLE: record length %u does not match %d + %u bytes of "
                            "encoding",
                            rec_len, LM_XBZRLE_HDR_SIZE, h.data_len);
    *out = h;
    return LM_XBZRLE_HDR_SIZE;
}
