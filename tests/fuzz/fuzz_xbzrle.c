/*
 * fuzz_xbzrle.c - libFuzzer target for the XBZRLE codec (format/xbzrle.c)
 * and the RAM_XBZRLE header.  The input's first 16 bytes are a RAM_XBZRLE
 * header, the rest the encoding, applied to a fixed page.  Properties
 * besides "no crash, no sanitizer report":
 *  - a failure carries its code and a non-empty message and leaves the
 *    page untouched;
 *  - an accepted encoding changes nothing past the offset it returns, and
 *    re-encoding the result against the old page and decoding that gives
 *    the same page (the encoder's output is always accepted);
 *  - an accepted header encodes back to the same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #c);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define PAGE LM_XBZRLE_PAGE_MAX

static uint8_t old[PAGE], page[PAGE], again[PAGE], enc[PAGE];

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n)
{
    for (unsigned i = 0; i < PAGE; i++)
        old[i] = (uint8_t)(i * 131 + (i >> 8));
    if (n >= LM_XBZRLE_HDR_SIZE) {
        lm_error err = {0};
        lm_xbzrle_hdr h;
        int rc = lm_fmt_xbzrle_hdr_decode(p, n, (uint32_t)n, &h, &err);
        if (rc < 0) {
            CHECK(err.code == rc && err.msg[0]);
        } else {
            uint8_t b[LM_XBZRLE_HDR_SIZE];
            CHECK(lm_fmt_xbzrle_hdr_encode(&h, b, sizeof b) == LM_XBZRLE_HDR_SIZE);
            CHECK(memcmp(b, p, sizeof b) == 0);
            CHECK(h.data_len == n - LM_XBZRLE_HDR_SIZE);
        }
        p += LM_XBZRLE_HDR_SIZE;
        n -= LM_XBZRLE_HDR_SIZE;
    }
    memcpy(page, old, PAGE);
    lm_error err = {0};
    int rc = lm_fmt_xbzrle_decode(p, n, page, PAGE, &err);
    if (rc < 0) {
        CHECK(err.code == rc && err.msg[0]);
        CHECK(memcmp(page, old, PAGE) == 0);
        return 0;
    }
    CHECK(rc > 0 && rc <= PAGE);
    CHECK(memcmp(page + rc, old + rc, PAGE - (size_t)rc) == 0);
    int m = lm_fmt_xbzrle_encode(old, page, PAGE, enc, sizeof enc);
    if (m > 0) {
        memcpy(again, old, PAGE);
        lm_error e2 = {0};
        CHECK(lm_fmt_xbzrle_decode(enc, (size_t)m, again, PAGE, &e2) > 0);
        CHECK(memcmp(again, page, PAGE) == 0);
    } else {
        /* unchanged (the literal bytes equal the old ones) or too large */
        CHECK(m == 0 ? memcmp(page, old, PAGE) == 0 : m == -ENOSPC);
    }
    return 0;
}
