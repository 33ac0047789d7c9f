/*
 * test_xbzrle.c - the XBZRLE codec (src/format/xbzrle.c): encode/decode
 * round trips over the shapes a re-dirtied page takes, the encoder's
 * overflow and "unchanged" answers, and every malformed encoding and
 * RAM_XBZRLE header refused with a message naming what was wrong, the
 * page left untouched.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "format/format.h"

#define PAGE 4096

#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint8_t rnd8(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint8_t)rng;
}

static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = rnd8();
}

/* Encodes cur against old, decodes onto a copy of old: must give cur. */
static int roundtrip(const uint8_t *old, const uint8_t *cur, size_t cap)
{
    static uint8_t enc[PAGE], dst[PAGE];
    int n = lm_fmt_xbzrle_encode(old, cur, PAGE, enc, cap);
    if (n <= 0)
        return n;
    memcpy(dst, old, PAGE);
    lm_error err = {0};
    int d = lm_fmt_xbzrle_decode(enc, (size_t)n, dst, PAGE, &err);
    if (d <= 0)
        fail_msg("decode of a fresh encoding failed: %s", err.msg);
    assert_memory_equal(dst, cur, PAGE);
    return n;
}

static void test_roundtrips(void **state)
{
    (void)state;
    static uint8_t old[PAGE], cur[PAGE];
    fill_random(old, PAGE);
    memcpy(cur, old, PAGE);
    /* unchanged: nothing to send */
    assert_int_equal(lm_fmt_xbzrle_encode(old, cur, PAGE, (uint8_t[PAGE]){0}, PAGE), 0);
    /* one 8-byte word (the sparse workload): 1 + 1 + 8 bytes */
    for (int k = 0; k < 8; k++)
        cur[8 + k] = (uint8_t)~old[8 + k];
    assert_int_equal(roundtrip(old, cur, PAGE), 10);
    /* the first byte: an unchanged run of 0 opens the encoding */
    memcpy(cur, old, PAGE);
    cur[0] ^= 1;
    assert_int_equal(roundtrip(old, cur, PAGE), 3);
    /* the last byte: a two-byte unchanged run (4095) */
    memcpy(cur, old, PAGE);
    cur[PAGE - 1] ^= 0x80;
    assert_int_equal(roundtrip(old, cur, PAGE), 2 + 1 + 1);
    /* a changed run of 200 bytes: a two-byte changed length */
    memcpy(cur, old, PAGE);
    for (int k = 1000; k < 1200; k++)
        cur[k] = (uint8_t)(old[k] + 1);
    assert_int_equal(roundtrip(old, cur, PAGE), 2 + 2 + 200);
    /* one word per 64 bytes: many pairs */
    memcpy(cur, old, PAGE);
    for (int k = 0; k < PAGE; k += 64)
        cur[k + 3] ^= 0x55;
    assert_true(roundtrip(old, cur, PAGE) > 0);
    /* random small changes, many times */
    for (int t = 0; t < 500; t++) {
        memcpy(cur, old, PAGE);
        int changes = 1 + rnd8() % 40;
        for (int c = 0; c < changes; c++) {
            int at = (rnd8() << 4 | rnd8() % 16) % PAGE;
            cur[at] = (uint8_t)(cur[at] ^ (1 + rnd8() % 255));
        }
        assert_true(roundtrip(old, cur, PAGE) > 0);
    }
}

static void test_overflow(void **state)
{
    (void)state;
    static uint8_t old[PAGE], cur[PAGE], enc[PAGE];
    fill_random(old, PAGE);
    for (int k = 0; k < PAGE; k++)
        cur[k] = (uint8_t)(old[k] + 1); /* every byte changed */
    /* one run of 4096 needs 1 + 2 + 4096 bytes: more than a page */
    assert_int_equal(lm_fmt_xbzrle_encode(old, cur, PAGE, enc, PAGE), -ENOSPC);
    /* a threshold: 100 bytes of changes do not fit in 64 */
    memcpy(cur, old, PAGE);
    for (int k = 0; k < 100; k++)
        cur[2 * k] ^= 0xff;
    assert_int_equal(lm_fmt_xbzrle_encode(old, cur, PAGE, enc, 64), -ENOSPC);
    assert_true(lm_fmt_xbzrle_encode(old, cur, PAGE, enc, PAGE) > 0);
    /* a page size the codec does not serve */
    assert_int_equal(lm_fmt_xbzrle_encode(old, cur, 8192, enc, PAGE), -EINVAL);
}

/* Decodes a malformed encoding onto a page: refused, page untouched. */
static void bad(const uint8_t *enc, size_t n, const char *needle)
{
    static uint8_t page[PAGE], copy[PAGE];
    fill_random(page, PAGE);
    memcpy(copy, page, PAGE);
    lm_error err = {0};
    int rc = lm_fmt_xbzrle_decode(enc, n, page, PAGE, &err);
    if (rc >= 0)
        fail_msg("malformed encoding accepted (expected \"%s\")", needle);
    assert_err(&err, -EPROTO, needle);
    assert_memory_equal(page, copy, PAGE);
}

static void test_decode_malformed(void **state)
{
    (void)state;
    static uint8_t big[PAGE + 8];
    bad(NULL, 0, "empty encoding");
    bad((const uint8_t[]){5}, 1, "changed-run length missing");
    bad((const uint8_t[]){0x80}, 1, "unchanged-run length truncated");
    bad((const uint8_t[]){5, 0x81}, 2, "changed-run length truncated");
    bad((const uint8_t[]){0x80, 0x80, 0x01}, 3, "longer than two bytes");
    bad((const uint8_t[]){0x85, 0x00, 1, 7}, 4, "not minimal");
    bad((const uint8_t[]){5, 0}, 2, "changed run of 0 bytes");
    bad((const uint8_t[]){5, 1, 9, 0, 1, 9}, 6, "unchanged run of 0 bytes at byte 3");
    /* 4097 unchanged bytes: 0x81 0x20 */
    bad((const uint8_t[]){0x81, 0x20, 1, 9}, 4, "unchanged run of 4097 bytes");
    /* 4090 unchanged, then 7 changed: past the end */
    bad((const uint8_t[]){0xfa, 0x1f, 7, 1, 2, 3, 4, 5, 6, 7}, 10, "changed run of 7 bytes");
    /* the changed bytes are not all there */
    bad((const uint8_t[]){5, 4, 1, 2}, 4, "only 2 bytes of input left");
    /* a valid pair followed by a lone byte */
    bad((const uint8_t[]){5, 1, 9, 3}, 4, "changed-run length missing");
    /* two halves that each fit but not together */
    big[0] = 0;
    big[1] = 0x80 | (2048 & 0x7f);
    big[2] = 2048 >> 7;
    big[3 + 2048] = 1; /* unchanged 1 */
    big[3 + 2049] = 0x80 | (2048 & 0x7f);
    big[3 + 2050] = 2048 >> 7;
    bad(big, 3 + 2051 + 2048, "changed run of 2048 bytes at page offset 2049");
    /* a page size the codec does not serve */
    lm_error err = {0};
    assert_int_equal(lm_fmt_xbzrle_decode((const uint8_t[]){0, 1, 1}, 3, NULL, 8192, &err),
                     -EINVAL);
    /* a check without a page: the end of the last changed run */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_xbzrle_decode((const uint8_t[]){5, 1, 9}, 3, NULL, PAGE, &err), 6);
}

static void test_hdr(void **state)
{
    (void)state;
    uint8_t b[LM_XBZRLE_HDR_SIZE];
    lm_xbzrle_hdr h = {.block = 2, .data_len = 10, .page = 0x123456789ull}, o;
    assert_int_equal(lm_fmt_xbzrle_hdr_encode(&h, b, sizeof b), LM_XBZRLE_HDR_SIZE);
    assert_int_equal(lm_fmt_xbzrle_hdr_encode(&h, b, 4), -ENOSPC);
    lm_error err = {0};
    assert_int_equal(lm_fmt_xbzrle_hdr_decode(b, sizeof b, 26, &o, &err), LM_XBZRLE_HDR_SIZE);
    assert_int_equal(o.block, 2);
    assert_int_equal(o.data_len, 10);
    assert_true(o.page == 0x123456789ull);
    assert_true(lm_fmt_xbzrle_hdr_decode(b, sizeof b, 27, &o, &err) < 0);
    assert_err(&err, -EPROTO, "does not match");
    lm_error_clear(&err);
    assert_true(lm_fmt_xbzrle_hdr_decode(b, 8, 26, &o, &err) < 0);
    assert_err(&err, -EPROTO, "header of 8 bytes");
    lm_error_clear(&err);
    b[6] = 1;
    assert_true(lm_fmt_xbzrle_hdr_decode(b, sizeof b, 26, &o, &err) < 0);
    assert_err(&err, -EPROTO, "reserved");
    b[6] = 0;
    lm_error_clear(&err);
    h.data_len = 0;
    lm_fmt_xbzrle_hdr_encode(&h, b, sizeof b);
    assert_true(lm_fmt_xbzrle_hdr_decode(b, sizeof b, 16, &o, &err) < 0);
    assert_err(&err, -EPROTO, "encoding of 0 bytes");
    lm_error_clear(&err);
    h.data_len = 4097;
    lm_fmt_xbzrle_hdr_encode(&h, b, sizeof b);
    assert_true(lm_fmt_xbzrle_hdr_decode(b, sizeof b, 16 + 4097, &o, &err) < 0);
    assert_err(&err, -EPROTO, "encoding of 4097 bytes");
    /* the record layer's bounds */
    uint8_t rh[LM_REC_HDR_SIZE];
    assert_true(lm_fmt_rec_hdr_encode(LM_REC_RAM_XBZRLE, 16 + 3, rh, sizeof rh) > 0);
    assert_true(lm_fmt_rec_hdr_encode(LM_REC_RAM_XBZRLE, 16 + 2, rh, sizeof rh) < 0);
    assert_true(lm_fmt_rec_hdr_encode(LM_REC_RAM_XBZRLE, 16 + 4097, rh, sizeof rh) < 0);
    assert_string_equal(lm_rec_type_name(LM_REC_RAM_XBZRLE), "RAM_XBZRLE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_hdr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
