/*
 * test_recv_bitmap.c - unit tests of postcopy recovery's wire records
 * (docs/format.md §4.12a): RP_RECV_BITMAP round-trips, its byte order is
 * the spec's (bit i of byte i / 8), and every malformed chunk is refused
 * with a message naming what was wrong; HELLO kind RESUME is known.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "format/format.h"

#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

static uint8_t buf[LM_RECV_BITMAP_MAX];

static void test_roundtrip(void **state)
{
    (void)state;
    uint64_t words[2] = {0x8000000000000301ull, 0x5};
    lm_recv_bitmap b = {.block = 3, .npages = 67, .first_page = 128};
    int n = lm_fmt_recv_bitmap_encode(&b, words, buf, sizeof buf);
    assert_int_equal(n, 16 + 9);
    /* bit i of the chunk is bit i % 8 of byte i / 8 */
    assert_int_equal(buf[16], 0x01);
    assert_int_equal(buf[17], 0x03);
    assert_int_equal(buf[23], 0x80);
    assert_int_equal(buf[24], 0x05);
    lm_recv_bitmap o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, (size_t)n, &o, &err), n);
    assert_int_equal(o.block, 3);
    assert_int_equal(o.npages, 67);
    assert_int_equal(o.first_page, 128);
    assert_true(lm_fmt_recv_bitmap_word(&o, 0) == words[0]);
    assert_true(lm_fmt_recv_bitmap_word(&o, 1) == 0x5);
    /* the encoder drops bits past npages */
    words[1] = 0xff;
    n = lm_fmt_recv_bitmap_encode(&b, words, buf, sizeof buf);
    assert_int_equal(buf[24], 0x07);
}

static void test_largest(void **state)
{
    (void)state;
    static uint64_t words[LM_RECV_BITMAP_MAX_PAGES / 64];
    memset(words, 0xa5, sizeof words);
    lm_recv_bitmap b = {.npages = LM_RECV_BITMAP_MAX_PAGES, .first_page = 1ull << 40};
    int n = lm_fmt_recv_bitmap_encode(&b, words, buf, sizeof buf);
    assert_int_equal(n, LM_RECV_BITMAP_MAX);
    lm_recv_bitmap o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, (size_t)n, &o, &err), n);
    assert_true(lm_fmt_recv_bitmap_word(&o, 1023) == words[1023]);
    b.npages++;
    assert_int_equal(lm_fmt_recv_bitmap_encode(&b, words, buf, sizeof buf), -EINVAL);
    b.npages = 1;
    b.first_page = 63;
    assert_int_equal(lm_fmt_recv_bitmap_encode(&b, words, buf, sizeof buf), -EINVAL);
    b.first_page = 0;
    assert_int_equal(lm_fmt_recv_bitmap_encode(&b, words, buf, 16), -ENOSPC);
}

static void test_bad(void **state)
{
    (void)state;
    uint64_t w = 1;
    lm_recv_bitmap b = {.block = 0, .npages = 12, .first_page = 64};
    int n = lm_fmt_recv_bitmap_encode(&b, &w, buf, sizeof buf);
    assert_int_equal(n, 18);
    lm_recv_bitmap o;
    lm_error err = {0};

    buf[8] = 65; /* first page 65 */
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, 18, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "first page 65 is not a multiple of 64");
    buf[8] = 64;

    buf[17] = 0x10; /* page 12 of 12 */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, 18, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "bits past page 12 are set");
    buf[17] = 0;

    lm_error_clear(&err);
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, 19, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "length 19, must be 18 for 12 pages");

    buf[4] = 0; /* 0 pages */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, 18, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "0 pages, must be 1..65536");

    lm_error_clear(&err);
    assert_int_equal(lm_fmt_recv_bitmap_decode(buf, 16, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RP_RECV_BITMAP: length 16 out of range");
}

static void test_records(void **state)
{
    (void)state;
    uint8_t h[LM_REC_HDR_SIZE] = {LM_REC_RP_RECV_BITMAP, 0, 0, 0, 0x11, 0x20}; /* 8209 bytes */
    lm_rec_hdr rh;
    lm_error err = {0};
    assert_int_equal(lm_fmt_rec_hdr_encode(LM_REC_RP_RECV_BITMAP, LM_RECV_BITMAP_MAX + 1, h, 8),
                     -EINVAL);
    assert_int_equal(lm_fmt_rec_hdr_decode(h, 8, &rh, &err), -EMSGSIZE);
    assert_err(&err, -EMSGSIZE, "RP_RECV_BITMAP");
    assert_string_equal(lm_rec_type_name(LM_REC_POSTCOPY_RESUME), "POSTCOPY_RESUME");
    assert_string_equal(lm_rec_type_name(LM_REC_RP_RESUME_ACK), "RP_RESUME_ACK");

    lm_hello hl = {.version = LM_FORMAT_VERSION,
                   .role = LM_ROLE_MAIN,
                   .kind = LM_HELLO_RESUME,
                   .page_size = 4096,
                   .features = LM_FEAT_POSTCOPY};
    uint8_t hb[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&hl, hb, sizeof hb), LM_HELLO_SIZE);
    lm_hello o;
    assert_int_equal(lm_fmt_hello_decode(hb, sizeof hb, &o, &err), LM_HELLO_SIZE);
    assert_int_equal(o.kind, LM_HELLO_RESUME);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_largest),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
