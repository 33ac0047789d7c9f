/*
 * test_mapped.c - the mapped-ram layout codec (format/mapped.c): the plan
 * (bitmaps first, pages 1 MiB-aligned, bounded), the round trip and each
 * check naming what is wrong; and the direct-io refusal naming the
 * filesystem (file/mapped.c).  End to end: tests/integration/test_file.py.
 */
#include "file/mapped.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

static const lm_fmt_block table[2] = {{"ram", 4096, 256u << 20}, {"ledger", 4096, 12288}};

static void test_plan_roundtrip(void **state)
{
    lm_mapped_layout l, d;
    lm_error err = {0};
    lm_fmt_mapped_plan(table, 2, 1000, &l);
    assert_int_equal(l.b[0].bitmap_offset, 1000);
    assert_int_equal(l.b[1].bitmap_offset, 1000 + 8192 + 8);
    assert_int_equal(l.b[0].pages_offset, 1u << 20);
    assert_int_equal(l.b[1].pages_offset, (1u << 20) + (256u << 20));
    assert_int_equal(l.resume, (1u << 20) + (256u << 20) + 12288);
    /* One alignment gap: within 1 MiB of the RAM plus the bitmaps. */
    assert_true(l.resume - 1000 <= (256u << 20) + 12288 + (1u << 20));
    uint8_t b[LM_MAPPED_MAX];
    int n = lm_fmt_mapped_encode(&l, b, sizeof b);
    assert_int_equal(n, 24 + 2 * 32);
    assert_int_equal(lm_fmt_mapped_decode(b, (size_t)n, &d, &err), n);
    assert_memory_equal(&l, &d, sizeof l);
    assert_int_equal(lm_fmt_mapped_check(&d, table, 2, l.resume, &err), 0);
}

static void test_checks(void **state)
{
    lm_mapped_layout l, d;
    lm_error err = {0};
    uint8_t b[LM_MAPPED_MAX], c[LM_MAPPED_MAX];
    lm_fmt_mapped_plan(table, 2, 1000, &l);
    int n = lm_fmt_mapped_encode(&l, b, sizeof b);
    struct {
        size_t at;
        uint64_t v;
        int bytes;
        int code;
        const char *needle;
    } bad[] = {
        {0, 2, 4, -EPROTONOSUPPORT, "layout version 2 not supported"},
        {4, 0, 4, -EPROTO, "0 blocks"},
        {4, 3, 4, -EPROTO, "88 bytes for 3 blocks"},
        {24, 1, 4, -EPROTO, "entry 0 names block 1"},
        {28, 3000, 4, -EPROTO, "page size 3000"},
        {48, 4096, 8, -EPROTO, "not a multiple of 1 MiB"},
        {8, 1001, 8, -EPROTO, "outside the regions"},
        {16, 999, 8, -EPROTO, "backwards"},
        {56 + 16, 1000, 8, -EPROTO, "overlap"},
        {32, 1ull << 62, 8, -EPROTO, "pages"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(c, b, (size_t)n);
        for (int k = 0; k < bad[i].bytes; k++)
            c[bad[i].at + k] = (uint8_t)(bad[i].v >> (8 * k));
        lm_error_clear(&err);
        if (lm_fmt_mapped_decode(c, (size_t)n, &d, &err) >= 0)
            fail_msg("case %zu (%s) accepted", i, bad[i].needle);
        assert_err(&err, bad[i].code, bad[i].needle);
    }
    /* Against the block table and the file. */
    assert_int_equal(lm_fmt_mapped_decode(b, (size_t)n, &d, &err), n);
    lm_error_clear(&err);
    assert_true(lm_fmt_mapped_check(&d, table, 1, l.resume, &err) < 0);
    assert_err(&err, -EPROTO, "has 2 blocks, its block table 1");
    lm_fmt_block other[2] = {table[0], {"ledger", 4096, 16384}};
    lm_error_clear(&err);
    assert_true(lm_fmt_mapped_check(&d, other, 2, l.resume, &err) < 0);
    assert_err(&err, -EPROTO, "block 1 ('ledger')");
    lm_error_clear(&err);
    assert_true(lm_fmt_mapped_check(&d, table, 2, l.resume - 1, &err) < 0);
    assert_err(&err, -EPROTO, "past the end of the file");
}

static void test_bitmap(void **state)
{
    lm_error err = {0};
    uint8_t bm[2 + LM_MAPPED_BITMAP_TRAILER] = {0xff, 0x07};
    lm_fmt_mapped_bitmap_seal(bm, 11);
    assert_int_equal(lm_fmt_mapped_bitmap_check(bm, 11, 0, &err), 11);
    bm[1] = 0x0f; /* a bit past the 11 pages, resealed */
    lm_fmt_mapped_bitmap_seal(bm, 11);
    assert_true(lm_fmt_mapped_bitmap_check(bm, 11, 3, &err) < 0);
    assert_err(&err, -EPROTO, "block 3: corrupt bitmap: bits set past its 11 pages");
    bm[1] = 0x07; /* the CRC of the other bits */
    lm_error_clear(&err);
    assert_true(lm_fmt_mapped_bitmap_check(bm, 11, 0, &err) < 0);
    assert_err(&err, -EPROTO, "corrupt bitmap (its CRC does not match");
}

/* procfs refuses O_DIRECT (tmpfs did before Linux 6.6): the error names
 * the filesystem and the file. */
static void test_direct_refused(void **state)
{
    lm_error err = {0};
    int fds[2];
    assert_true(lm_mapped_open_direct("/proc/version", false, 2, fds, &err) < 0);
    assert_err(&err, -EINVAL, "direct-io: file '/proc/version' is on proc, which refuses O_DIRECT");
    lm_error_clear(&err);
    assert_true(lm_mapped_open_direct("/nonexistent/x", false, 1, fds, &err) < 0);
    assert_err(&err, -ENOENT, "/nonexistent/x");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_roundtrip),
        cmocka_unit_test(test_checks),
        cmocka_unit_test(test_bitmap),
        cmocka_unit_test(test_direct_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
