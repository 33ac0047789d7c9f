/*
 * test_inspect.c - unit tests of the stream inspector (src/format/inspect.c)
 * and of lm_fmt_walk_rec under it: a stream built with the encoders is
 * counted exactly (pages per block, sections, markers, records by type),
 * and each whole-stream check refuses its input with the record's offset.
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

#include "format/inspect.h"

typedef struct sbuf {
    uint8_t b[3 << 20]; /* a mapped-ram file's regions start at 1 MiB */
    size_t len;
} sbuf;

static void raw(sbuf *s, const void *p, size_t n)
{
    assert_true(s->len + n <= sizeof s->b);
    memcpy(s->b + s->len, p, n);
    s->len += n;
}

/* Appends a record; returns its offset. */
static size_t rec(sbuf *s, uint8_t type, const void *payload, uint32_t n)
{
    size_t off = s->len;
    uint8_t h[LM_REC_HDR_SIZE];
    assert_int_equal(lm_fmt_rec_hdr_encode(type, n, h, sizeof h), LM_REC_HDR_SIZE);
    raw(s, h, sizeof h);
    if (n)
        raw(s, payload, n);
    return off;
}

static void hello(sbuf *s, uint8_t role, uint8_t kind, uint64_t features)
{
    lm_hello h = {.version = LM_FORMAT_VERSION,
                  .role = role,
                  .kind = kind,
                  .chan_count = role == LM_ROLE_MULTIFD ? 1 : 0,
                  .page_size = 4096,
                  .features = features};
    uint8_t b[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), LM_HELLO_SIZE);
    s->len = 0;
    raw(s, b, sizeof b);
}

static const lm_fmt_block table[2] = {
    {.name = "ram", .page_size = 4096, .length = 64 * 4096},
    {.name = "ledger", .page_size = 4096, .length = 4 * 4096},
};

static void blocks(sbuf *s)
{
    uint8_t p[256];
    int n = lm_fmt_ram_blocks_encode(table, 2, p, sizeof p);
    assert_true(n > 0);
    rec(s, LM_REC_RAM_BLOCKS, p, (uint32_t)n);
}

static size_t pages(sbuf *s, uint32_t block, uint64_t first, uint32_t count)
{
    static uint8_t p[LM_RAM_PAGES_HDR_SIZE + 8 * 4096];
    lm_ram_run r = {.block = block, .count = count, .first_page = first};
    lm_fmt_ram_pages_hdr_encode(&r, p, LM_RAM_PAGES_HDR_SIZE);
    return rec(s, LM_REC_RAM_PAGES, p, LM_RAM_PAGES_HDR_SIZE + count * 4096);
}

static size_t zero(sbuf *s, uint8_t type, uint32_t block, uint64_t first, uint64_t count)
{
    uint8_t p[LM_RAM_ZERO_SIZE];
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    lm_fmt_ram_zero_encode(&z, p, sizeof p);
    return rec(s, type, p, sizeof p);
}

static size_t section(sbuf *s, uint8_t type, uint32_t id, const char *name, uint32_t data)
{
    uint8_t p[512] = {0};
    lm_section_hdr h = {.section_id = id, .version = 1, .name_len = (uint8_t)strlen(name)};
    memcpy(h.name, name, h.name_len + 1);
    int n = lm_fmt_section_hdr_encode(type, &h, p, sizeof p);
    assert_true(n > 0);
    return rec(s, type, p, (uint32_t)n + data);
}

static lm_insp in; /* large: not on the stack */

#define assert_refused(s, off, needle)                                                             \
    do {                                                                                           \
        assert_true(lm_insp_stream(&in, (s)->b, (s)->len, NULL, 0, NULL) < 0);                     \
        assert_int_equal(in.err_off, (off));                                                       \
        if (!strstr(in.err.msg, (needle)))                                                         \
            fail_msg("error \"%s\" lacks \"%s\"", in.err.msg, (needle));                           \
        char where[40];                                                                            \
        snprintf(where, sizeof where, "offset %zu:", (size_t)(off));                               \
        if (!strstr(in.err.msg, where))                                                            \
            fail_msg("error \"%s\" lacks \"%s\"", in.err.msg, where);                              \
    } while (0)

/* A precopy stream: counts, sections and markers exactly. */
static void test_counts(void **state)
{
    static sbuf s;
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    section(&s, LM_REC_SECTION_START, 1, "bulk", 0);
    section(&s, LM_REC_SECTION_PART, 1, "", 100);
    zero(&s, LM_REC_RAM_ZERO, 0, 0, 60);
    pages(&s, 0, 60, 4);
    pages(&s, 1, 0, 4);
    pages(&s, 0, 61, 1); /* a page again */
    size_t sw = rec(&s, LM_REC_SWITCHOVER_START, NULL, 0);
    section(&s, LM_REC_SECTION_END, 1, "", 0);
    section(&s, LM_REC_SECTION_FULL, 0, "cpu", 56);
    size_t eos = rec(&s, LM_REC_EOS, NULL, 0);

    assert_int_equal(lm_insp_stream(&in, s.b, s.len, NULL, 0, NULL), 0);
    assert_int_equal(in.err.code, 0);
    assert_true(in.have_hello && in.to_dst);
    assert_int_equal(in.valid, s.len);
    assert_int_equal(in.nblocks, 2);
    assert_string_equal(in.blocks[1].b.name, "ledger");
    assert_int_equal(in.blocks[0].data_pages, 5);
    assert_int_equal(in.blocks[0].data_runs, 2);
    assert_int_equal(in.blocks[0].zero_pages, 60);
    assert_int_equal(in.blocks[1].data_pages, 4);
    assert_int_equal(in.nsections, 2);
    assert_string_equal(in.sections[0].name, "bulk");
    assert_true(in.sections[0].iterable && in.sections[0].ended);
    assert_int_equal(in.sections[0].records, 3);
    assert_int_equal(in.sections[0].data_bytes, 100);
    assert_string_equal(in.sections[1].name, "cpu");
    assert_false(in.sections[1].iterable);
    assert_int_equal(in.sections[1].data_bytes, 56);
    assert_int_equal(in.switchover_off, sw);
    assert_int_equal(in.eos_off, eos);
    assert_int_equal(in.rec_count[LM_REC_RAM_PAGES], 3);
    assert_int_equal(in.records, 11);
}

/* A multifd or preempt channel gets its main channel's table. */
static void test_given_table(void **state)
{
    static sbuf s;
    hello(&s, LM_ROLE_PREEMPT, LM_HELLO_REQUEST, LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT);
    pages(&s, 1, 3, 1);
    rec(&s, LM_REC_EOS, NULL, 0);
    /* alone: no table, the pages cannot be checked */
    assert_refused(&s, LM_HELLO_SIZE, "RAM_PAGES before any RAM_BLOCKS");
    assert_int_equal(lm_insp_stream(&in, s.b, s.len, table, 2, NULL), 0);
    assert_int_equal(in.blocks[1].data_pages, 1);
    /* and the table bounds them */
    s.len = LM_HELLO_SIZE;
    pages(&s, 1, 4, 1);
    assert_true(lm_insp_stream(&in, s.b, s.len, table, 2, NULL) < 0);
    assert_int_equal(in.err_off, LM_HELLO_SIZE);
}

/* A recovery's main channel and a preempt channel, with the table of
 * their migration's first main channel. */
static void test_recovery_preempt(void **state)
{
    static sbuf s;
    size_t off;
    uint8_t v[4] = {7, 0, 0, 0};
    hello(&s, LM_ROLE_MAIN, LM_HELLO_RESUME, LM_FEAT_POSTCOPY);
    rec(&s, LM_REC_PING, v, 4);
    rec(&s, LM_REC_POSTCOPY_RESUME, NULL, 0);
    pages(&s, 0, 1, 1);
    section(&s, LM_REC_SECTION_END, 3, "", 0); /* opened on the first channel */
    rec(&s, LM_REC_EOS, NULL, 0);
    assert_int_equal(lm_insp_stream(&in, s.b, s.len, table, 2, NULL), 0);
    assert_int_equal(in.nsections, 1);
    assert_int_equal(in.sections[0].id, 3);

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, LM_FEAT_POSTCOPY);
    off = rec(&s, LM_REC_POSTCOPY_RESUME, NULL, 0);
    assert_refused(&s, off, "outside a channel opened with HELLO RESUME");

    hello(&s, LM_ROLE_PREEMPT, LM_HELLO_REQUEST, LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT);
    off = rec(&s, LM_REC_PING, v, 4);
    assert_refused(&s, off, "on a preempt channel");
}

/* The whole-stream checks, each at its record's offset. */
static void test_refusals(void **state)
{
    static sbuf s;
    size_t off;

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    off = section(&s, LM_REC_SECTION_PART, 7, "", 1);
    assert_refused(&s, off, "section id 7 has no SECTION_START");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    section(&s, LM_REC_SECTION_START, 1, "nic", 0);
    off = section(&s, LM_REC_SECTION_START, 1, "nic", 0);
    assert_refused(&s, off, "a second one for section id 1");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    section(&s, LM_REC_SECTION_START, 1, "nic", 0);
    section(&s, LM_REC_SECTION_END, 1, "", 0);
    off = section(&s, LM_REC_SECTION_PART, 1, "", 0);
    assert_refused(&s, off, "after its SECTION_END");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    section(&s, LM_REC_SECTION_START, 1, "nic", 0);
    off = rec(&s, LM_REC_EOS, NULL, 0);
    assert_refused(&s, off, "EOS while section id 1 (\"nic\") has no SECTION_END");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    rec(&s, LM_REC_EOS, NULL, 0);
    off = rec(&s, LM_REC_SWITCHOVER_START, NULL, 0);
    assert_refused(&s, off, "after EOS");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    rec(&s, LM_REC_SWITCHOVER_START, NULL, 0);
    off = rec(&s, LM_REC_SWITCHOVER_START, NULL, 0);
    assert_refused(&s, off, "a second time");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    off = rec(&s, LM_REC_RP_SWITCHOVER_ACK, NULL, 0);
    assert_refused(&s, off, "return-path record, in a source-to-destination stream");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_ACCEPT, 0);
    off = rec(&s, LM_REC_EOS, NULL, 0);
    assert_refused(&s, off, "source record, in a destination-to-source stream");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    off = zero(&s, LM_REC_POSTCOPY_DISCARD, 0, 0, 1);
    assert_refused(&s, off, "without the POSTCOPY feature");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, LM_FEAT_POSTCOPY);
    blocks(&s);
    rec(&s, LM_REC_POSTCOPY_RUN, NULL, 0);
    off = zero(&s, LM_REC_POSTCOPY_DISCARD, 0, 0, 1);
    assert_refused(&s, off, "POSTCOPY_DISCARD record after POSTCOPY_RUN");

    hello(&s, LM_ROLE_MULTIFD, LM_HELLO_REQUEST, LM_FEAT_MULTIFD);
    blocks(&s);
    assert_refused(&s, (size_t)LM_HELLO_SIZE, "on a multifd channel");

    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    size_t end = s.len;
    assert_refused(&s, end, "without EOS");

    /* truncation: inside a payload, inside a header */
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    off = pages(&s, 0, 0, 2);
    rec(&s, LM_REC_EOS, NULL, 0);
    s.len = off + 100;
    assert_refused(&s, off,
                   "RAM_PAGES record truncated: 8 + 8208 bytes announced, 100 in the file");
    s.len = off + 5;
    assert_refused(&s, off, "record header truncated: 5 of 8 bytes");
    s.len = 40;
    assert_refused(&s, 0, "HELLO truncated: 40 of 48 bytes");

    /* the walker's own errors keep their offset too */
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    off = pages(&s, 0, 63, 2);
    assert_refused(&s, off, "past the end");
}

/* What a file is, from its first bytes. */
static void test_detect(void **state)
{
    lm_error e = {0};
    static sbuf s;
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    assert_int_equal(lm_insp_detect(s.b, s.len, &e), LM_INSP_STREAM);
    assert_string_equal(lm_insp_kind_name(LM_INSP_STREAM), "livemig stream");
    assert_true(lm_insp_detect(s.b, 0, &e) < 0);
    assert_non_null(strstr(e.msg, "empty file"));
    lm_error_clear(&e);
    assert_true(lm_insp_detect((const uint8_t *)"QEVM\0\0\0\3", 8, &e) < 0);
    assert_non_null(strstr(e.msg, "QEMU migration stream"));
    lm_error_clear(&e);
    assert_true(lm_insp_detect((const uint8_t *)"\x7f"
                                                "ELF\2\1\1",
                               7, &e) < 0);
    assert_non_null(strstr(e.msg, "the first bytes are 7f 45 4c 46 02 01 01,"));
}

/* The hooks: every record seen, a data check's refusal at its offset. */
static int count_rec(void *opaque, const lm_fmt_rec *r, lm_error *err)
{
    (*(int *)opaque)++;
    return r->hdr.type == LM_REC_PING ? lm_error_set(err, -EINVAL, "no PING wanted") : 0;
}

static void test_hooks(void **state)
{
    static sbuf s;
    int n = 0;
    lm_insp_hooks hk = {.record = count_rec, .opaque = &n};
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    blocks(&s);
    rec(&s, LM_REC_EOS, NULL, 0);
    assert_int_equal(lm_insp_stream(&in, s.b, s.len, NULL, 0, &hk), 0);
    assert_int_equal(n, 2);
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, 0);
    uint8_t v[4] = {1, 0, 0, 0};
    size_t off = rec(&s, LM_REC_PING, v, 4);
    assert_true(lm_insp_stream(&in, s.b, s.len, NULL, 0, &hk) < 0);
    assert_int_equal(in.err_off, off);
    assert_non_null(strstr(in.err.msg, "no PING wanted"));
}

/* A mapped-ram file (docs/format.md §9.2) whose stream starts at file
 * offset base (the URI's offset=): HELLO, RAM_BLOCKS, MAPPED_RAM, the
 * bitmaps (block 0: pages 0..9 present; block 1: page 2), the page
 * regions, a device section, EOS.  *l gets the layout. */
static void mapped_file(sbuf *s, uint64_t base, uint64_t features, lm_mapped_layout *l)
{
    hello(s, LM_ROLE_MAIN, LM_HELLO_REQUEST, features);
    blocks(s);
    uint32_t plen = LM_MAPPED_HDR_SIZE + 2 * LM_MAPPED_ENTRY_SIZE;
    lm_fmt_mapped_plan(table, 2, base + s->len + LM_REC_HDR_SIZE + plen, l);
    uint8_t p[LM_MAPPED_MAX];
    assert_int_equal(lm_fmt_mapped_encode(l, p, sizeof p), (int)plen);
    rec(s, LM_REC_MAPPED_RAM, p, plen);
    assert_int_equal(base + s->len, l->record_end);
    memset(s->b + s->len, 0, l->resume - l->record_end);
    uint8_t *bm0 = s->b + (l->b[0].bitmap_offset - base);
    uint8_t *bm1 = s->b + (l->b[1].bitmap_offset - base);
    bm0[0] = 0xff;
    bm0[1] = 0x03;
    bm1[0] = 0x04;
    lm_fmt_mapped_bitmap_seal(bm0, l->b[0].npages);
    lm_fmt_mapped_bitmap_seal(bm1, l->b[1].npages);
    memset(s->b + (l->b[0].pages_offset - base), 0xa5, 10 * 4096);
    s->len = l->resume - base;
    section(s, LM_REC_SECTION_FULL, 0, "cpu", 56);
    rec(s, LM_REC_EOS, NULL, 0);
}

static void test_mapped(void **state)
{
    static sbuf s;
    lm_mapped_layout l;
    for (uint64_t base = 0; base <= 8192; base += 8192) {
        mapped_file(&s, base, LM_FEAT_MAPPED_RAM, &l);
        assert_int_equal(lm_insp_stream(&in, s.b, s.len, NULL, 0, NULL), 0);
        assert_true(in.mapped);
        assert_int_equal(in.mapped_base, base);
        assert_int_equal(in.layout.resume, l.resume);
        assert_int_equal(in.blocks[0].mapped_present, 10);
        assert_int_equal(in.blocks[1].mapped_present, 1);
        assert_int_equal(in.nsections, 1); /* the stream goes on after the regions */
        assert_int_equal(in.eos_off, (int64_t)s.len - LM_REC_HDR_SIZE);
        assert_int_equal(in.valid, s.len);
    }
    /* A corrupt bitmap: refused at the bitmap, naming the block. */
    mapped_file(&s, 0, LM_FEAT_MAPPED_RAM, &l);
    s.b[l.b[1].bitmap_offset] ^= 0x10;
    assert_refused(&s, l.b[1].bitmap_offset, "block 1 (\"ledger\")");
    assert_non_null(strstr(in.err.msg, "corrupt bitmap"));
    /* The page regions past the end of the file. */
    mapped_file(&s, 0, LM_FEAT_MAPPED_RAM, &l);
    s.len = l.resume - 1;
    size_t moff = l.record_end - LM_REC_HDR_SIZE - (LM_MAPPED_HDR_SIZE + 2 * LM_MAPPED_ENTRY_SIZE);
    assert_refused(&s, moff, "past the end of the file");
    /* MAPPED_RAM without the feature; the feature without MAPPED_RAM. */
    mapped_file(&s, 0, 0, &l);
    assert_refused(&s, moff, "without the MAPPED_RAM feature");
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, LM_FEAT_MAPPED_RAM);
    blocks(&s);
    size_t eos = rec(&s, LM_REC_EOS, NULL, 0);
    assert_refused(&s, eos, "EOS without a MAPPED_RAM record");
    /* RAM_PAGES in a mapped-ram stream. */
    hello(&s, LM_ROLE_MAIN, LM_HELLO_REQUEST, LM_FEAT_MAPPED_RAM);
    blocks(&s);
    size_t pg = pages(&s, 0, 0, 1);
    assert_refused(&s, pg, "in a mapped-ram stream");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts),   cmocka_unit_test(test_given_table),
        cmocka_unit_test(test_refusals), cmocka_unit_test(test_detect),
        cmocka_unit_test(test_hooks),    cmocka_unit_test(test_recovery_preempt),
        cmocka_unit_test(test_mapped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
