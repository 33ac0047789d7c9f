/*
 * codec.c - multifd compression: one stream per channel (digest §5.9).
 *
 * zlib and zstd keep their stream across packets (what the previous
 * packets taught the dictionary helps the next) and end every packet with
 * a sync flush, so the receiver decodes each packet as it arrives, in the
 * channel's order.  lz4, which QEMU lacks, compresses each packet on its
 * own with a per-channel state: its streaming mode needs the previous
 * output to stay where it was decoded, which scattered guest pages do not.
 *
 * Threads: a codec belongs to one channel thread.
 */
#include "multifd/multifd.h"

#include <errno.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

struct lm_mfd_codec {
    lm_mfd_comp method;
    bool compress;
    z_stream z;
    bool z_ready;
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
    void *lz_state;  /* LZ4_stream_t for compression */
    uint8_t *gather; /* lz4: the packet's pages, contiguous */
    size_t gather_cap;
};

int lm_mfd_codec_new(lm_mfd_comp method, int level, bool compress, lm_mfd_codec **out,
                     lm_error *err)
{
    lm_mfd_codec *c = calloc(1, sizeof *c);
    if (!c)
        return lm_error_set(err, -ENOMEM, "out of memory");
    c->method = method;
    c->compress = compress;
    int ret = 0;
    switch (method) {
    case LM_MFD_COMP_ZLIB:
        if ((compress ? deflateInit(&c->z, level) : inflateInit(&c->z)) != Z_OK) {
            ret = lm_error_set(err, -ENOMEM, "zlib: cannot initialise a %s stream",
                               compress ? "deflate" : "inflate");
            break;
        }
        c->z_ready = true;
        break;
    case LM_MFD_COMP_ZSTD:
        if (compress) {
            c->zc = ZSTD_createCCtx();
            if (!c->zc ||
                ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, level)))
                ret = lm_error_set(err, -ENOMEM, "zstd: cannot create a compression context");
        } else {
            c->zd = ZSTD_createDCtx();
            if (!c->zd)
                ret = lm_error_set(err, -ENOMEM, "zstd: cannot create a decompression context");
        }
        break;
    case LM_MFD_COMP_LZ4:
        if (compress) {
            c->lz_state = malloc((size_t)LZ4_sizeofState());
            c->gather_cap = (size_t)LM_MFD_BATCH_PAGES * LM_PAGE_SIZE;
            c->gather = malloc(c->gather_cap);
            if (!c->lz_state || !c->gather)
                ret = lm_error_set(err, -ENOMEM, "out of memory");
        }
        break;
    case LM_MFD_COMP_NONE:
        break;
    default:
        ret = lm_error_set(err, -EINVAL, "unknown compression method %d", (int)method);
    }
    if (ret < 0) {
        lm_mfd_codec_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

void lm_mfd_codec_free(lm_mfd_codec *c)
{
    if (!c)
        return;
    if (c->z_ready)
        c->compress ? deflateEnd(&c->z) : inflateEnd(&c->z);
    ZSTD_freeCCtx(c->zc);
    ZSTD_freeDCtx(c->zd);
    free(c->lz_state);
    free(c->gather);
    free(c);
}

size_t lm_mfd_compress_bound(lm_mfd_comp method, size_t in_len)
{
    switch (method) {
    case LM_MFD_COMP_ZLIB:
        /* deflateBound does not cover the sync-flush marker (5 bytes) nor
         * the per-call block overhead of feeding page by page. */
        return in_len + in_len / 1000 + 64 * 1024;
    case LM_MFD_COMP_ZSTD:
        return ZSTD_compressBound(in_len) + 64 * 1024;
    case LM_MFD_COMP_LZ4:
        return (size_t)LZ4_compressBound((int)in_len);
    default:
        return in_len;
    }
}

static long zlib_compress(lm_mfd_codec *c, const struct iovec *in, unsigned n, uint8_t *out,
                          size_t cap, lm_error *err)
{
    z_stream *z = &c->z;
    z->next_out = out;
    z->avail_out = (uInt)cap;
    for (unsigned i = 0; i <= n; i++) {
        bool last = i == n;
        z->next_in = last ? NULL : in[i].iov_base;
        z->avail_in = last ? 0 : (uInt)in[i].iov_len;
        int r = deflate(z, last ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        if (r != Z_OK && r != Z_BUF_ERROR)
            return lm_error_set(err, -EIO, "zlib: deflate failed (%d)", r);
        if (z->avail_in || z->avail_out == 0)
            return lm_error_set(err, -ENOSPC, "zlib: compressed packet exceeds %zu bytes", cap);
    }
    return (long)(cap - z->avail_out);
}

static long zstd_compress(lm_mfd_codec *c, const struct iovec *in, unsigned n, uint8_t *out,
                          size_t cap, lm_error *err)
{
    ZSTD_outBuffer ob = {out, cap, 0};
    for (unsigned i = 0; i < n; i++) {
        ZSTD_inBuffer ib = {in[i].iov_base, in[i].iov_len, 0};
        while (ib.pos < ib.size) {
            size_t r = ZSTD_compressStream2(c->zc, &ob, &ib, ZSTD_e_continue);
            if (ZSTD_isError(r))
                return lm_error_set(err, -EIO, "zstd: %s", ZSTD_getErrorName(r));
            if (ob.pos == ob.size)
                return lm_error_set(err, -ENOSPC, "zstd: compressed packet exceeds %zu bytes", cap);
        }
    }
    ZSTD_inBuffer empty = {NULL, 0, 0};
    for (;;) {
        size_t r = ZSTD_compressStream2(c->zc, &ob, &empty, ZSTD_e_flush);
        if (ZSTD_isError(r))
            return lm_error_set(err, -EIO, "zstd: %s", ZSTD_getErrorName(r));
        if (r == 0)
            break;
        if (ob.pos == ob.size)
            return lm_error_set(err, -ENOSPC, "zstd: compressed packet exceeds %zu bytes", cap);
    }
    return (long)ob.pos;
}

static long lz4_compress(lm_mfd_codec *c, const struct iovec *in, unsigned n, uint8_t *out,
                         size_t cap, lm_error *err)
{
    size_t len = 0;
    for (unsigned i = 0; i < n; i++) {
        if (in[i].iov_len > c->gather_cap - len)
            return lm_error_set(err, -E2BIG, "lz4: packet larger than %zu bytes", c->gather_cap);
        memcpy(c->gather + len, in[i].iov_base, in[i].iov_len);
        len += in[i].iov_len;
    }
    int r = LZ4_compress_fast_extState(c->lz_state, (const char *)c->gather, (char *)out, (int)len,
                                       (int)(cap > INT32_MAX ? INT32_MAX : cap), 1);
    if (r <= 0)
        return lm_error_set(err, -ENOSPC, "lz4: compressed packet exceeds %zu bytes", cap);
    return r;
}

long lm_mfd_compress(lm_mfd_codec *c, const struct iovec *in, unsigned n, uint8_t *out, size_t cap,
                     lm_error *err)
{
    switch (c->method) {
    case LM_MFD_COMP_ZLIB:
        return zlib_compress(c, in, n, out, cap, err);
    case LM_MFD_COMP_ZSTD:
        return zstd_compress(c, in, n, out, cap, err);
    case LM_MFD_COMP_LZ4:
        return lz4_compress(c, in, n, out, cap, err);
    default:
        return lm_error_set(err, -EINVAL, "no compression configured");
    }
}

static int zlib_decompress(lm_mfd_codec *c, const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_len, lm_error *err)
{
    z_stream *z = &c->z;
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)in_len;
    z->next_out = out;
    z->avail_out = (uInt)out_len;
    int r = inflate(z, Z_SYNC_FLUSH);
    if (r != Z_OK && r != Z_BUF_ERROR)
        return lm_error_set(err, -EPROTO, "zlib: corrupt packet (%s)",
                            z->msg ? z->msg : "inflate failed");
    if (z->avail_out)
        return lm_error_set(err, -EPROTO, "zlib: packet decodes to %zu bytes, header says %zu",
                            out_len - z->avail_out, out_len);
    if (z->avail_in) {
        /* Output full: only the flush marker may remain. */
        uint8_t spare;
        z->next_out = &spare;
        z->avail_out = 1;
        r = inflate(z, Z_SYNC_FLUSH);
        if (z->avail_out == 0 || z->avail_in)
            return lm_error_set(err, -EPROTO,
                                "zlib: packet holds more than the %zu bytes its "
                                "header says",
                                out_len);
    }
    return 0;
}

static int zstd_decompress(lm_mfd_codec *c, const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_len, lm_error *err)
{
    ZSTD_inBuffer ib = {in, in_len, 0};
    ZSTD_outBuffer ob = {out, out_len, 0};
    while (ib.pos < ib.size) {
        size_t before_in = ib.pos, before_out = ob.pos;
        size_t r = ZSTD_decompressStream(c->zd, &ob, &ib);
        if (ZSTD_isError(r))
            return lm_error_set(err, -EPROTO, "zstd: corrupt packet (%s)", ZSTD_getErrorName(r));
        if (ob.pos == ob.size && ib.pos < ib.size) {
            /* Output full: the rest must decode to nothing (block ends). */
            uint8_t spare;
            ZSTD_outBuffer sb = {&spare, 1, 0};
            r = ZSTD_decompressStream(c->zd, &sb, &ib);
            if (ZSTD_isError(r) || sb.pos)
                return lm_error_set(err, -EPROTO,
                                    "zstd: packet holds more than the %zu bytes "
                                    "its header says",
                                    out_len);
            continue;
        }
        if (ib.pos == before_in && ob.pos == before_out)
            return lm_error_set(err, -EPROTO, "zstd: packet does not decode");
    }
    if (ob.pos != out_len)
        return lm_error_set(err, -EPROTO, "zstd: packet decodes to %zu bytes, header says %zu",
                            ob.pos, out_len);
    return 0;
}

int lm_mfd_decompress(lm_mfd_codec *c, const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t out_len, lm_error *err)
{
    switch (c->method) {
    case LM_MFD_COMP_ZLIB:
        return zlib_decompress(c, in, in_len, out, out_len, err);
    case LM_MFD_COMP_ZSTD:
        return zstd_decompress(c, in, in_len, out, out_len, err);
    case LM_MFD_COMP_LZ4: {
        if (in_len > INT32_MAX || out_len > INT32_MAX)
            return lm_error_set(err, -EPROTO, "lz4: packet too large");
        int r = LZ4_decompress_safe((const char *)in, (char *)out, (int)in_len, (int)out_len);
        if (r < 0)
            return lm_error_set(err, -EPROTO, "lz4: corrupt packet");
        if ((size_t)r != out_len)
            return lm_error_set(err, -EPROTO, "lz4: packet decodes to %d bytes, header says %zu", r,
                                out_len);
        return 0;
    }
    default:
        return lm_error_set(err, -EPROTO, "compression %d is not known", (int)c->method);
    }
}
