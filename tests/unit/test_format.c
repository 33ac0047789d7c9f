/*
 * test_format.c - unit tests of the wire-format codecs (src/format/wire.c):
 * every encoder round-trips through its decoder, and every malformed input
 * the spec (docs/format.md) forbids is refused with a message naming it.
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

/* ---------------------------------------------------------------- helpers */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* Asserts that err holds code and a message containing needle. */
#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

static lm_hello good_hello(void)
{
    lm_hello h = {
        .version = LM_FORMAT_VERSION,
        .role = LM_ROLE_MAIN,
        .kind = LM_HELLO_REQUEST,
        .chan_index = 0,
        .chan_count = 2,
        .page_size = 4096,
        .features = LM_FEAT_MULTIFD | LM_FEAT_SWITCHOVER_ACK,
    };
    for (int i = 0; i < LM_SESSION_ID_LEN; i++)
        h.session[i] = (uint8_t)(0xa0 + i);
    return h;
}

/* A stream under construction: records appended with valid headers. */
typedef struct sbuf {
    uint8_t b[64 * 1024];
    size_t len;
} sbuf;

static void sb_raw(sbuf *s, const void *p, size_t n)
{
    assert_true(s->len + n <= sizeof s->b);
    memcpy(s->b + s->len, p, n);
    s->len += n;
}

static void sb_rec(sbuf *s, uint8_t type, const void *payload, uint32_t n)
{
    uint8_t h[LM_REC_HDR_SIZE];
    assert_int_equal(lm_fmt_rec_hdr_encode(type, n, h, sizeof h), LM_REC_HDR_SIZE);
    sb_raw(s, h, sizeof h);
    if (n)
        sb_raw(s, payload, n);
}

static void sb_hello(sbuf *s)
{
    lm_hello h = good_hello();
    uint8_t b[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), LM_HELLO_SIZE);
    sb_raw(s, b, sizeof b);
}

static const lm_fmt_block test_blocks[2] = {
    {.name = "pc.ram", .page_size = 4096, .length = 16 * 4096},
    {.name = "ledger", .page_size = 4096, .length = 2 * 4096},
};

#define RAM_BLOCKS_BUF 8192

static void sb_blocks(sbuf *s, const lm_fmt_block *b, uint32_t n)
{
    uint8_t p[RAM_BLOCKS_BUF];
    int rc = lm_fmt_ram_blocks_encode(b, n, p, sizeof p);
    assert_true(rc > 0);
    sb_rec(s, LM_REC_RAM_BLOCKS, p, (uint32_t)rc);
}

static void sb_pages(sbuf *s, uint32_t block, uint64_t first, uint32_t count, uint32_t ps)
{
    lm_ram_run r = {.block = block, .count = count, .first_page = first};
    uint8_t h[LM_RAM_PAGES_HDR_SIZE];
    assert_int_equal(lm_fmt_ram_pages_hdr_encode(&r, h, sizeof h), LM_RAM_PAGES_HDR_SIZE);
    uint8_t rh[LM_REC_HDR_SIZE];
    assert_int_equal(
        lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, LM_RAM_PAGES_HDR_SIZE + count * ps, rh, sizeof rh),
        LM_REC_HDR_SIZE);
    sb_raw(s, rh, sizeof rh);
    sb_raw(s, h, sizeof h);
    for (uint32_t i = 0; i < count * ps; i++) {
        uint8_t c = (uint8_t)(i * 7 + first);
        sb_raw(s, &c, 1);
    }
}

static void sb_zero(sbuf *s, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    uint8_t p[LM_RAM_ZERO_SIZE];
    assert_int_equal(lm_fmt_ram_zero_encode(&z, p, sizeof p), LM_RAM_ZERO_SIZE);
    sb_rec(s, LM_REC_RAM_ZERO, p, sizeof p);
}

static void sb_u32(sbuf *s, uint8_t type, uint32_t v)
{
    uint8_t p[4];
    assert_int_equal(lm_fmt_u32_encode(v, p, sizeof p), 4);
    sb_rec(s, type, p, 4);
}

static void sb_u64(sbuf *s, uint8_t type, uint64_t v)
{
    uint8_t p[8];
    assert_int_equal(lm_fmt_u64_encode(v, p, sizeof p), 8);
    sb_rec(s, type, p, 8);
}

static void sb_section(sbuf *s, uint8_t type, uint32_t id, const char *name, const char *data)
{
    lm_section_hdr h = {.section_id = id, .instance = 0, .version = 1};
    h.name_len = (uint8_t)strlen(name);
    memcpy(h.name, name, h.name_len + 1);
    uint8_t p[512];
    int rc = lm_fmt_section_hdr_encode(type, &h, p, sizeof p);
    assert_true(rc > 0);
    size_t dl = strlen(data);
    memcpy(p + rc, data, dl);
    sb_rec(s, type, p, (uint32_t)(rc + dl));
}

static void sb_status(sbuf *s, uint8_t type, int32_t status, const char *msg)
{
    lm_status_msg m = {.status = status};
    snprintf(m.msg, sizeof m.msg, "%s", msg);
    uint8_t p[600];
    int rc = lm_fmt_status_msg_encode(&m, p, sizeof p);
    assert_true(rc >= 6);
    sb_rec(s, type, p, (uint32_t)rc);
}

/* A complete precopy stream as docs/format.md describes it. */
static void build_precopy(sbuf *s, bool hello)
{
    s->len = 0;
    if (hello)
        sb_hello(s);
    sb_blocks(s, test_blocks, 2);
    sb_section(s, LM_REC_SECTION_START, 1, "vfio-dev", "init");
    sb_u64(s, LM_REC_RAM_PASS, 1);
    sb_zero(s, 0, 0, 16);
    sb_pages(s, 0, 3, 2, 4096);
    sb_section(s, LM_REC_SECTION_PART, 1, "", "more");
    sb_u32(s, LM_REC_PING, 7);
    sb_u64(s, LM_REC_RAM_PASS, 2);
    sb_pages(s, 1, 0, 2, 4096);
    sb_rec(s, LM_REC_SWITCHOVER_START, NULL, 0);
    sb_pages(s, 0, 15, 1, 4096);
    sb_section(s, LM_REC_SECTION_END, 1, "", "last");
    sb_section(s, LM_REC_SECTION_FULL, 2, "timer", "");
    sb_rec(s, LM_REC_EOS, NULL, 0);
}

/* ------------------------------------------------------------------ HELLO */

static void test_hello_roundtrip(void **state)
{
    for (uint8_t role = LM_ROLE_MAIN; role <= LM_ROLE_PREEMPT; role++) {
        for (uint8_t kind = LM_HELLO_REQUEST; kind <= LM_HELLO_RESUME; kind++) {
            lm_hello h = good_hello();
            h.role = role;
            h.kind = kind;
            h.chan_index = role == LM_ROLE_MULTIFD ? 1 : 0;
            h.page_size = 1u << 30;
            h.features = LM_FEAT_KNOWN_MASK;
            uint8_t b[LM_HELLO_SIZE];
            assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), LM_HELLO_SIZE);
            /* magic is "LMIG" in byte order */
            assert_memory_equal(b, "LMIG", 4);
            lm_hello o;
            memset(&o, 0x55, sizeof o);
            lm_error err = {0};
            assert_int_equal(lm_fmt_hello_decode(b, sizeof b, &o, &err), LM_HELLO_SIZE);
            assert_int_equal(err.code, 0);
            assert_int_equal(o.version, LM_FORMAT_VERSION);
            assert_int_equal(o.role, role);
            assert_int_equal(o.kind, kind);
            assert_int_equal(o.chan_index, h.chan_index);
            assert_int_equal(o.chan_count, 2);
            assert_int_equal(o.page_size, 1u << 30);
            assert_memory_equal(o.session, h.session, LM_SESSION_ID_LEN);
            assert_true(o.features == LM_FEAT_KNOWN_MASK);
        }
    }
}

static void test_hello_layout(void **state)
{
    /* Byte-exact check against the table in docs/format.md. */
    lm_hello h = good_hello();
    h.role = LM_ROLE_MULTIFD;
    h.kind = LM_HELLO_ACCEPT;
    h.chan_index = 0x0102;
    h.chan_count = 0x0304;
    h.page_size = 0x10000;
    h.features = 0x1d;
    uint8_t b[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), LM_HELLO_SIZE);
    const uint8_t head[16] = {0x4c, 0x4d, 0x49, 0x47, 0x01, 0x00, 0x02, 0x01,
                              0x02, 0x01, 0x04, 0x03, 0x00, 0x00, 0x01, 0x00};
    assert_memory_equal(b, head, 16);
    assert_memory_equal(b + 16, h.session, 16);
    const uint8_t tail[16] = {0x1d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(b + 32, tail, 16);
}

static void hello_bytes(uint8_t *b)
{
    lm_hello h = good_hello();
    assert_int_equal(lm_fmt_hello_encode(&h, b, LM_HELLO_SIZE), LM_HELLO_SIZE);
}

static void test_hello_bad_magic(void **state)
{
    uint8_t b[LM_HELLO_SIZE];
    hello_bytes(b);
    memcpy(b, "AAAA", 4);
    lm_hello o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_hello_decode(b, sizeof b, &o, &err), -EBADMSG);
    assert_err(&err, -EBADMSG, "HELLO: bad magic 0x41414141 (not a livemig stream)");

    /* Detected from the first 4 bytes, without waiting for the rest. */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_hello_decode(b, 4, &o, &err), -EBADMSG);
    /* Fewer than 4 bytes: cannot tell yet. */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_hello_decode(b, 3, &o, &err), 0);
    assert_int_equal(err.code, 0);

    /* A QEMU stream is named as such. */
    memcpy(b, "QEVM", 4);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_hello_decode(b, sizeof b, &o, &err), -EBADMSG);
    assert_err(&err, -EBADMSG, "QEMU migration stream");
}

static void test_hello_truncated(void **state)
{
    uint8_t b[LM_HELLO_SIZE];
    hello_bytes(b);
    for (size_t n = 0; n < LM_HELLO_SIZE; n++) {
        lm_hello o;
        lm_error err = {0};
        assert_int_equal(lm_fmt_hello_decode(b, n, &o, &err), 0);
        assert_int_equal(err.code, 0);
    }
}

static void test_hello_bad_fields(void **state)
{
    struct {
        size_t off;
        uint8_t val;
        int code;
        const char *needle;
    } cases[] = {
        {4, 2, -EPROTONOSUPPORT, "HELLO: format version 2 not supported"},
        {4, 0, -EPROTONOSUPPORT, "format version 0"},
        {6, 0, -EPROTO, "HELLO: role 0 unknown"},
        {6, 4, -EPROTO, "HELLO: role 4 unknown"},
        {7, 4, -EPROTO, "HELLO: kind 4 unknown"},
        {8, 1, -EPROTO, "main channel has index 1"},
        {13, 0x18, -EPROTO, "page size 6144 is not a power of two"}, /* 0x1800 */
        {13, 0x08, -EPROTO, "page size 2048"},
        {15, 0x80, -EPROTO, "page size 2147487744"}, /* 0x80001000 */
        {32, 0x20, -EPROTO, "HELLO: unknown feature bits 0x20"},
        {39, 0x80, -EPROTO, "unknown feature bits 0x8000000000000000"},
        {40, 1, -EPROTO, "HELLO: reserved byte 40 is 0x01, must be 0"},
        {47, 0xff, -EPROTO, "reserved byte 47 is 0xff"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[LM_HELLO_SIZE];
        hello_bytes(b);
        b[cases[i].off] = cases[i].val;
        lm_hello o;
        lm_error err = {0};
        assert_int_equal(lm_fmt_hello_decode(b, sizeof b, &o, &err), cases[i].code);
        assert_err(&err, cases[i].code, cases[i].needle);
    }
}

static void test_hello_multifd_index(void **state)
{
    lm_hello h = good_hello();
    h.role = LM_ROLE_MULTIFD;
    h.chan_index = 2;
    h.chan_count = 2;
    uint8_t b[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), -EINVAL);
    h.chan_index = 1;
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), LM_HELLO_SIZE);
    b[8] = 2; /* index 2 of 2 channels */
    lm_hello o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_hello_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "multifd channel index 2 out of range (2 channels)");
}

static void test_hello_encode_errors(void **state)
{
    lm_hello h = good_hello();
    uint8_t b[LM_HELLO_SIZE];
    assert_int_equal(lm_fmt_hello_encode(&h, b, LM_HELLO_SIZE - 1), -ENOSPC);
    h.version = 2;
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), -EINVAL);
    h = good_hello();
    h.page_size = 8192 + 4096;
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), -EINVAL);
    h = good_hello();
    h.features = 1ull << 40;
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), -EINVAL);
    h = good_hello();
    h.role = 9;
    assert_int_equal(lm_fmt_hello_encode(&h, b, sizeof b), -EINVAL);
}

/* ---------------------------------------------------------- record header */

static const struct {
    uint8_t type;
    const char *name;
    uint32_t min, max; /* valid payload length range */
} rec_types[] = {
    {LM_REC_SECTION_START, "SECTION_START", 14, LM_REC_MAX_PAYLOAD},
    {LM_REC_SECTION_PART, "SECTION_PART", 4, LM_REC_MAX_PAYLOAD},
    {LM_REC_SECTION_END, "SECTION_END", 4, LM_REC_MAX_PAYLOAD},
    {LM_REC_SECTION_FULL, "SECTION_FULL", 14, LM_REC_MAX_PAYLOAD},
    {LM_REC_RAM_BLOCKS, "RAM_BLOCKS", 4, 4 + 64 * 76},
    {LM_REC_MAPPED_RAM, "MAPPED_RAM", 24 + 32, 24 + 64 * 32},
    {LM_REC_RAM_XBZRLE, "RAM_XBZRLE", 16 + 3, 16 + 4096},
    {LM_REC_RAM_PAGES, "RAM_PAGES", 16, LM_REC_MAX_PAYLOAD},
    {LM_REC_RAM_ZERO, "RAM_ZERO", 24, 24},
    {LM_REC_RAM_PASS, "RAM_PASS", 8, 8},
    {LM_REC_PING, "PING", 4, 4},
    {LM_REC_SWITCHOVER_START, "SWITCHOVER_START", 0, 0},
    {LM_REC_POSTCOPY_DISCARD, "POSTCOPY_DISCARD", 24, 24},
    {LM_REC_POSTCOPY_RUN, "POSTCOPY_RUN", 0, 0},
    {LM_REC_EOS, "EOS", 0, 0},
    {LM_REC_ERROR, "ERROR", 6, 6 + LM_ERROR_MSG_MAX - 1},
    {LM_REC_RP_SHUT, "RP_SHUT", 6, 6 + LM_ERROR_MSG_MAX - 1},
    {LM_REC_RP_PONG, "RP_PONG", 4, 4},
    {LM_REC_RP_REQ_PAGES, "RP_REQ_PAGES", 16, 16},
    {LM_REC_RP_SWITCHOVER_ACK, "RP_SWITCHOVER_ACK", 0, 0},
    {LM_REC_MULTIFD_FLUSH, "MULTIFD_FLUSH", 8, 8},
    {LM_REC_MULTIFD_PAGES, "MULTIFD_PAGES", 32, LM_REC_MAX_PAYLOAD},
    {LM_REC_MULTIFD_SYNC, "MULTIFD_SYNC", 8, 8},
    {LM_REC_ACK_DEVICES, "ACK_DEVICES", 4, 4 + 4 * 256},
    {LM_REC_RP_DEVICE_ACK, "RP_DEVICE_ACK", 8, 8},
    {LM_REC_POSTCOPY_RESUME, "POSTCOPY_RESUME", 0, 0},
    {LM_REC_RP_RECV_BITMAP, "RP_RECV_BITMAP", 17, 16 + 8192},
    {LM_REC_RP_RESUME_ACK, "RP_RESUME_ACK", 8, 8},
};
#define N_REC_TYPES (sizeof rec_types / sizeof rec_types[0])

static void test_rec_hdr_roundtrip(void **state)
{
    for (size_t i = 0; i < N_REC_TYPES; i++) {
        uint32_t lens[] = {rec_types[i].min, rec_types[i].max};
        for (int k = 0; k < 2; k++) {
            uint8_t b[LM_REC_HDR_SIZE];
            assert_int_equal(lm_fmt_rec_hdr_encode(rec_types[i].type, lens[k], b, sizeof b),
                             LM_REC_HDR_SIZE);
            assert_int_equal(b[0], rec_types[i].type);
            assert_int_equal(b[1], 0);
            assert_int_equal(b[2] | b[3], 0);
            lm_rec_hdr h;
            lm_error err = {0};
            assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), LM_REC_HDR_SIZE);
            assert_int_equal(h.type, rec_types[i].type);
            assert_int_equal(h.len, lens[k]);
        }
        assert_string_equal(lm_rec_type_name(rec_types[i].type), rec_types[i].name);
    }
    assert_string_equal(lm_rec_type_name(0x55), "unknown");
    assert_string_equal(lm_rec_type_name(0), "unknown");
}

static void test_rec_hdr_lengths(void **state)
{
    for (size_t i = 0; i < N_REC_TYPES; i++) {
        uint8_t b[LM_REC_HDR_SIZE] = {rec_types[i].type};
        lm_rec_hdr h;
        lm_error err = {0};
        char needle[64];
        if (rec_types[i].min > 0) {
            put32(b + 4, rec_types[i].min - 1);
            assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EPROTO);
            snprintf(needle, sizeof needle, "record %s: length %u", rec_types[i].name,
                     rec_types[i].min - 1);
            assert_err(&err, -EPROTO, needle);
            assert_int_equal(
                lm_fmt_rec_hdr_encode(rec_types[i].type, rec_types[i].min - 1, b, sizeof b),
                -EINVAL);
        }
        lm_error_clear(&err);
        memset(b, 0, sizeof b);
        b[0] = rec_types[i].type;
        put32(b + 4, rec_types[i].max + 1);
        int expect = rec_types[i].min == rec_types[i].max ? -EPROTO : -EMSGSIZE;
        assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), expect);
        snprintf(needle, sizeof needle, "record %s: length %u", rec_types[i].name,
                 rec_types[i].max + 1);
        assert_err(&err, expect, needle);
        assert_int_equal(
            lm_fmt_rec_hdr_encode(rec_types[i].type, rec_types[i].max + 1, b, sizeof b), -EINVAL);
    }
    /* The brief's exact fixed lengths. */
    uint8_t b[LM_REC_HDR_SIZE] = {LM_REC_PING, 0, 0, 0, 8, 0, 0, 0};
    lm_rec_hdr h;
    lm_error err = {0};
    assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EPROTO);
    assert_err(&err, -EPROTO, "record PING: length 8, must be 4");
    /* A 4 GiB length is refused, not trusted. */
    lm_error_clear(&err);
    b[0] = LM_REC_SECTION_PART;
    put32(b + 4, 0xffffffffu);
    assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EMSGSIZE);
    assert_err(&err, -EMSGSIZE, "above maximum 16777216");
}

static void test_rec_hdr_bad(void **state)
{
    lm_rec_hdr h;
    lm_error err = {0};
    for (unsigned t = 0; t < 256; t++) {
        bool known = false;
        for (size_t i = 0; i < N_REC_TYPES; i++)
            known |= rec_types[i].type == t;
        if (known)
            continue;
        uint8_t b[LM_REC_HDR_SIZE] = {(uint8_t)t};
        lm_error_clear(&err);
        assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EPROTO);
        char needle[64];
        snprintf(needle, sizeof needle, "record type 0x%02x unknown", t);
        assert_err(&err, -EPROTO, needle);
        assert_int_equal(lm_fmt_rec_hdr_encode((uint8_t)t, 0, b, sizeof b), -EINVAL);
    }
    uint8_t b[LM_REC_HDR_SIZE] = {LM_REC_EOS, 1, 0, 0, 0, 0, 0, 0};
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EPROTO);
    assert_err(&err, -EPROTO, "record EOS: flags 0x01 must be 0");
    b[1] = 0;
    b[3] = 0x80;
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_rec_hdr_decode(b, sizeof b, &h, &err), -EPROTO);
    assert_err(&err, -EPROTO, "record EOS: reserved 0x8000 must be 0");
}

static void test_rec_hdr_truncated(void **state)
{
    /* Even garbage is "need more" until 8 bytes are there. */
    uint8_t b[LM_REC_HDR_SIZE] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee};
    for (size_t n = 0; n < LM_REC_HDR_SIZE; n++) {
        lm_rec_hdr h;
        lm_error err = {0};
        assert_int_equal(lm_fmt_rec_hdr_decode(b, n, &h, &err), 0);
        assert_int_equal(err.code, 0);
    }
    uint8_t e[LM_REC_HDR_SIZE];
    assert_int_equal(lm_fmt_rec_hdr_encode(LM_REC_EOS, 0, e, LM_REC_HDR_SIZE - 1), -ENOSPC);
}

/* ---------------------------------------------------------------- sections */

static void test_section_roundtrip(void **state)
{
    uint8_t types[] = {LM_REC_SECTION_START, LM_REC_SECTION_FULL};
    for (int t = 0; t < 2; t++) {
        lm_section_hdr s = {.section_id = 0x01020304, .instance = 7, .version = 0xfffffffe};
        memset(s.name, 'x', 255);
        s.name[0] = ' ';
        s.name[254] = '~';
        s.name_len = 255;
        uint8_t b[300];
        int rc = lm_fmt_section_hdr_encode(types[t], &s, b, sizeof b);
        assert_int_equal(rc, 13 + 255);
        assert_int_equal(b[0], 0x04);
        assert_int_equal(b[3], 0x01);
        assert_int_equal(b[12], 255);
        memcpy(b + rc, "DATA", 4); /* device data follows the header */
        lm_section_hdr o;
        lm_error err = {0};
        assert_int_equal(lm_fmt_section_hdr_decode(types[t], b, rc + 4, &o, &err), rc);
        assert_int_equal(o.section_id, 0x01020304);
        assert_int_equal(o.instance, 7);
        assert_int_equal(o.version, 0xfffffffe);
        assert_int_equal(o.name_len, 255);
        assert_int_equal(strlen(o.name), 255);
        assert_memory_equal(o.name, s.name, 255);
    }
    uint8_t pe[] = {LM_REC_SECTION_PART, LM_REC_SECTION_END};
    for (int t = 0; t < 2; t++) {
        lm_section_hdr s = {.section_id = 42};
        uint8_t b[8];
        assert_int_equal(lm_fmt_section_hdr_encode(pe[t], &s, b, sizeof b), 4);
        lm_section_hdr o;
        memset(&o, 0x55, sizeof o);
        lm_error err = {0};
        assert_int_equal(lm_fmt_section_hdr_decode(pe[t], b, 4, &o, &err), 4);
        assert_int_equal(o.section_id, 42);
        assert_int_equal(o.name_len, 0);
        assert_string_equal(o.name, "");
        assert_int_equal(lm_fmt_section_hdr_encode(pe[t], &s, b, 3), -ENOSPC);
    }
}

static void test_section_bad(void **state)
{
    uint8_t b[64] = {0};
    lm_section_hdr o;
    lm_error err = {0};

    /* name length 0 */
    put32(b, 5);
    b[12] = 0;
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_START, b, 20, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "SECTION_START: section 5 name length 0 out of range 1..255");

    /* name past the payload */
    lm_error_clear(&err);
    b[12] = 10;
    memset(b + 13, 'a', 10);
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_FULL, b, 22, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "name of 10 bytes runs past payload of 22");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_FULL, b, 23, &o, &err), 23);

    /* non-printable name bytes */
    uint8_t bad[] = {0x00, 0x1f, 0x7f, 0x80, 0xff, '\n'};
    for (size_t i = 0; i < sizeof bad; i++) {
        b[13 + 4] = bad[i];
        lm_error_clear(&err);
        assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_START, b, 23, &o, &err), -EPROTO);
        assert_err(&err, -EPROTO, "name byte 4 is");
        assert_err(&err, -EPROTO, "not printable ASCII");
    }

    /* short payloads are malformed, not "need more": the payload is whole */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_PART, b, 3, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "SECTION_PART: payload of 3 bytes too short");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_SECTION_START, b, 12, &o, &err), -EPROTO);

    /* not a section type */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_section_hdr_decode(LM_REC_RAM_PAGES, b, 23, &o, &err), -EINVAL);
    assert_err(&err, -EINVAL, "not a section record");

    /* encoder refuses what the decoder would */
    lm_section_hdr s = {.section_id = 1, .name_len = 0};
    uint8_t e[300];
    assert_int_equal(lm_fmt_section_hdr_encode(LM_REC_SECTION_START, &s, e, sizeof e), -EINVAL);
    s.name_len = 3;
    memcpy(s.name, "a\tb", 4);
    assert_int_equal(lm_fmt_section_hdr_encode(LM_REC_SECTION_START, &s, e, sizeof e), -EINVAL);
    memcpy(s.name, "abc", 4);
    assert_int_equal(lm_fmt_section_hdr_encode(LM_REC_SECTION_START, &s, e, 15), -ENOSPC);
    assert_int_equal(lm_fmt_section_hdr_encode(LM_REC_SECTION_START, &s, e, 16), 16);
    assert_int_equal(lm_fmt_section_hdr_encode(LM_REC_EOS, &s, e, sizeof e), -EINVAL);
}

/* --------------------------------------------------------------------- RAM */

static void test_ram_blocks_roundtrip(void **state)
{
    static lm_fmt_block b[LM_RAM_MAX_BLOCKS];
    for (uint32_t i = 0; i < LM_RAM_MAX_BLOCKS; i++) {
        /* the longest names: 63 bytes, unique in the last two */
        memset(b[i].name, 'n', LM_RAM_NAME_MAX);
        b[i].name[61] = (char)('A' + i / 26);
        b[i].name[62] = (char)('a' + i % 26);
        b[i].name[LM_RAM_NAME_MAX] = '\0';
        b[i].page_size = 4096u << (i % 19);
        b[i].length = (uint64_t)b[i].page_size * (i + 1);
    }
    uint32_t ns[] = {0, 1, 3, LM_RAM_MAX_BLOCKS};
    for (int k = 0; k < 4; k++) {
        uint8_t buf[RAM_BLOCKS_BUF];
        int rc = lm_fmt_ram_blocks_encode(b, ns[k], buf, sizeof buf);
        assert_int_equal(rc, 4 + ns[k] * (1 + 63 + 4 + 8));
        static lm_fmt_block o[LM_RAM_MAX_BLOCKS];
        uint32_t n = 999;
        lm_error err = {0};
        assert_int_equal(lm_fmt_ram_blocks_decode(buf, rc, o, LM_RAM_MAX_BLOCKS, &n, &err), rc);
        assert_int_equal(n, ns[k]);
        for (uint32_t i = 0; i < n; i++) {
            assert_string_equal(o[i].name, b[i].name);
            assert_int_equal(o[i].page_size, b[i].page_size);
            assert_true(o[i].length == b[i].length);
        }
        /* one byte short of the buffer */
        assert_int_equal(lm_fmt_ram_blocks_encode(b, ns[k], buf, rc - 1), -ENOSPC);
    }
    /* exact bytes of a small table */
    uint8_t buf[64];
    lm_fmt_block one = {.name = "ab", .page_size = 4096, .length = 8192};
    assert_int_equal(lm_fmt_ram_blocks_encode(&one, 1, buf, sizeof buf), 4 + 1 + 2 + 12);
    const uint8_t want[] = {1, 0, 0, 0, 2, 'a', 'b', 0, 0x10, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(buf, want, sizeof want);
}

/* Builds a one-block RAM_BLOCKS payload with raw fields. */
static size_t raw_block(uint8_t *p, uint32_t count, const char *name, size_t nl, uint32_t ps,
                        uint64_t length)
{
    put32(p, count);
    p[4] = (uint8_t)nl;
    memcpy(p + 5, name, nl);
    put32(p + 5 + nl, ps);
    put64(p + 9 + nl, length);
    return 4 + 1 + nl + 12;
}

static void test_ram_blocks_bad(void **state)
{
    uint8_t p[8192];
    lm_fmt_block o[LM_RAM_MAX_BLOCKS];
    uint32_t n = 77;
    lm_error err = {0};
    size_t len;

#define EXPECT_BAD(code, needle)                                                                   \
    do {                                                                                           \
        lm_error_clear(&err);                                                                      \
        assert_int_equal(lm_fmt_ram_blocks_decode(p, len, o, LM_RAM_MAX_BLOCKS, &n, &err), code);  \
        assert_err(&err, code, needle);                                                            \
        assert_int_equal(n, 77); /* untouched on failure */                                        \
    } while (0)

    len = raw_block(p, 1, "ram", 3, 4096, 4096);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_blocks_decode(p, len, o, 1, &n, &err), (int)len);
    assert_int_equal(n, 1);
    n = 77;

    len = raw_block(p, 65, "ram", 3, 4096, 4096);
    EXPECT_BAD(-EPROTO, "RAM_BLOCKS: count 65 out of range 0..64");
    len = raw_block(p, 0xffffffffu, "ram", 3, 4096, 4096);
    EXPECT_BAD(-EPROTO, "count 4294967295 out of range");
    len = raw_block(p, 2, "ram", 3, 4096, 4096);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_blocks_decode(p, len, o, 1, &n, &err), -ENOSPC);
    assert_err(&err, -ENOSPC, "2 blocks but room for only 1");
    EXPECT_BAD(-EPROTO, "RAM_BLOCKS: payload ends before block 1");
    len = raw_block(p, 1, "", 0, 4096, 4096);
    EXPECT_BAD(-EPROTO, "block 0 name length 0 out of range 1..63");
    char big[64];
    memset(big, 'b', sizeof big);
    len = raw_block(p, 1, big, 64, 4096, 4096);
    EXPECT_BAD(-EPROTO, "block 0 name length 64 out of range 1..63");
    len = raw_block(p, 1, "r\x01m", 3, 4096, 4096);
    EXPECT_BAD(-EPROTO, "block 0 name byte 1 is 0x01 (not printable ASCII)");
    len = raw_block(p, 1, "r\0m", 3, 4096, 4096);
    EXPECT_BAD(-EPROTO, "name byte 1 is 0x00");
    len = raw_block(p, 1, "ram\xc3", 4, 4096, 4096);
    EXPECT_BAD(-EPROTO, "name byte 3 is 0xc3");
    uint32_t bad_ps[] = {0, 2048, 4097, 12288, 1u << 31};
    for (size_t i = 0; i < sizeof bad_ps / sizeof bad_ps[0]; i++) {
        len = raw_block(p, 1, "ram", 3, bad_ps[i], 4096);
        EXPECT_BAD(-EPROTO, "is not a power of two in 4096..1GiB");
    }
    len = raw_block(p, 1, "ram", 3, 4096, 0);
    EXPECT_BAD(-EPROTO, "block \"ram\" length 0 is not a non-zero multiple of its page size 4096");
    len = raw_block(p, 1, "ram", 3, 8192, 4096);
    EXPECT_BAD(-EPROTO, "length 4096 is not a non-zero multiple");
    len = raw_block(p, 1, "ram", 3, 4096, 4096) + 1;
    EXPECT_BAD(-EPROTO, "RAM_BLOCKS: 1 trailing bytes after 1 blocks");
    len = raw_block(p, 1, "ram", 3, 4096, 4096) - 1;
    EXPECT_BAD(-EPROTO, "payload ends inside block 0");
    len = 3;
    EXPECT_BAD(-EPROTO, "too short for a count");

    /* duplicate names */
    lm_fmt_block two[2] = {{.name = "ram", .page_size = 4096, .length = 4096},
                           {.name = "rom", .page_size = 4096, .length = 4096}};
    int rc = lm_fmt_ram_blocks_encode(two, 2, p, sizeof p);
    assert_true(rc > 0);
    p[4 + 1 + 3 + 12 + 1 + 1] = 'a'; /* "rom" -> "ram" */
    len = (size_t)rc;
    EXPECT_BAD(-EPROTO, "RAM_BLOCKS: block 1 name \"ram\" duplicates block 0");
    /* a prefix is not a duplicate */
    lm_fmt_block pre[2] = {{.name = "ram", .page_size = 4096, .length = 4096},
                           {.name = "ram2", .page_size = 4096, .length = 4096}};
    rc = lm_fmt_ram_blocks_encode(pre, 2, p, sizeof p);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_blocks_decode(p, rc, o, 2, &n, &err), rc);
#undef EXPECT_BAD

    /* the encoder refuses the same things */
    lm_fmt_block e[2] = {{.name = "x", .page_size = 4096, .length = 4096}};
    e[1] = e[0];
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), -EINVAL);
    e[1].name[0] = 'y';
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), 4 + 2 * 14);
    e[1].page_size = 3000;
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), -EINVAL);
    e[1].page_size = 4096;
    e[1].length = 100;
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), -EINVAL);
    e[1].length = 4096;
    e[1].name[0] = '\0';
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), -EINVAL);
    memset(e[1].name, 'z', sizeof e[1].name); /* no NUL: 64 bytes */
    assert_int_equal(lm_fmt_ram_blocks_encode(e, 2, p, sizeof p), -EINVAL);
    static lm_fmt_block many[LM_RAM_MAX_BLOCKS + 1];
    assert_int_equal(lm_fmt_ram_blocks_encode(many, LM_RAM_MAX_BLOCKS + 1, p, sizeof p), -EINVAL);
}

static void test_ram_pages_hdr(void **state)
{
    lm_ram_run r = {.block = 3, .count = LM_RAM_MAX_RUN, .first_page = 0x0102030405060708ull};
    uint8_t b[LM_RAM_PAGES_HDR_SIZE];
    assert_int_equal(lm_fmt_ram_pages_hdr_encode(&r, b, sizeof b), 16);
    const uint8_t want[16] = {3, 0, 0, 0, 0, 4, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(b, want, 16);
    lm_ram_run o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_ram_pages_hdr_decode(b, sizeof b, &o, &err), 16);
    assert_int_equal(o.block, 3);
    assert_int_equal(o.count, LM_RAM_MAX_RUN);
    assert_true(o.first_page == r.first_page);
    /* REQ_PAGES shares the layout */
    assert_int_equal(lm_fmt_req_pages_decode(b, sizeof b, &o, &err), 16);

    /* only the header is consumed: page data may follow in the buffer */
    uint8_t big[64] = {0};
    memcpy(big, b, 16);
    assert_int_equal(lm_fmt_ram_pages_hdr_decode(big, sizeof big, &o, &err), 16);

    for (size_t n = 0; n < 16; n++)
        assert_int_equal(lm_fmt_ram_pages_hdr_decode(b, n, &o, &err), 0);
    assert_int_equal(err.code, 0);

    put32(b + 4, 0);
    assert_int_equal(lm_fmt_ram_pages_hdr_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_string_equal(err.msg, "RAM_PAGES: count 0 out of range 1..1024");
    lm_error_clear(&err);
    put32(b + 4, 1025);
    assert_int_equal(lm_fmt_ram_pages_hdr_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_string_equal(err.msg, "RAM_PAGES: count 1025 out of range 1..1024");

    r.count = 0;
    assert_int_equal(lm_fmt_ram_pages_hdr_encode(&r, b, sizeof b), -EINVAL);
    r.count = 1025;
    assert_int_equal(lm_fmt_ram_pages_hdr_encode(&r, b, sizeof b), -EINVAL);
    r.count = 1;
    assert_int_equal(lm_fmt_ram_pages_hdr_encode(&r, b, 15), -ENOSPC);
}

static void test_ram_zero(void **state)
{
    lm_ram_zero z = {.block = 1, .first_page = 5, .count = 1ull << 40};
    uint8_t b[LM_RAM_ZERO_SIZE];
    assert_int_equal(lm_fmt_ram_zero_encode(&z, b, sizeof b), 24);
    lm_ram_zero o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_ram_zero_decode(b, sizeof b, &o, &err), 24);
    assert_int_equal(o.block, 1);
    assert_true(o.first_page == 5);
    assert_true(o.count == 1ull << 40);
    assert_int_equal(b[4] | b[5] | b[6] | b[7], 0);

    b[6] = 1;
    assert_int_equal(lm_fmt_ram_zero_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM_ZERO: reserved 0x00010000 must be 0");
    b[6] = 0;
    put64(b + 16, 0);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_zero_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM_ZERO: count 0");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_zero_decode(b, 23, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM_ZERO: payload of 23 bytes, must be 24");

    z.count = 0;
    assert_int_equal(lm_fmt_ram_zero_encode(&z, b, sizeof b), -EINVAL);
    z.count = 1;
    assert_int_equal(lm_fmt_ram_zero_encode(&z, b, 23), -ENOSPC);
}

static void test_ram_run_check(void **state)
{
    lm_error err = {0};
    /* pc.ram has 16 pages, ledger 2 */
    assert_int_equal(lm_fmt_ram_run_check(0, 0, 16, test_blocks, 2, &err), 0);
    assert_int_equal(lm_fmt_ram_run_check(0, 15, 1, test_blocks, 2, &err), 0);
    assert_int_equal(lm_fmt_ram_run_check(1, 1, 1, test_blocks, 2, &err), 0);
    assert_int_equal(err.code, 0);

    assert_int_equal(lm_fmt_ram_run_check(2, 0, 1, test_blocks, 2, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM run: block 2 out of range (2 blocks)");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, 0, 1, test_blocks, 0, &err), -EPROTO);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, 3, 0, test_blocks, 2, &err), -EPROTO);
    assert_err(&err, -EPROTO, "count 0");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, 15, 2, test_blocks, 2, &err), -EPROTO);
    assert_err(&err, -EPROTO, "pages 15+2 past the end of block \"pc.ram\" (16 pages)");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(1, 17, 1, test_blocks, 2, &err), -EPROTO);
    /* first_page + count would wrap to a small number */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, UINT64_MAX, 2, test_blocks, 2, &err), -EPROTO);
    assert_err(&err, -EPROTO, "past the end");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, 1, UINT64_MAX, test_blocks, 2, &err), -EPROTO);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ram_run_check(0, 16, 1, test_blocks, 2, &err), -EPROTO);
}

/* ------------------------------------------------------- small fixed records */

static void test_u32_u64(void **state)
{
    uint8_t b[8];
    lm_error err = {0};
    uint32_t v32;
    uint64_t v64;
    assert_int_equal(lm_fmt_u32_encode(0xdeadbeef, b, sizeof b), 4);
    assert_int_equal(b[0], 0xef);
    assert_int_equal(lm_fmt_u32_decode(b, 4, &v32, &err), 4);
    assert_int_equal(v32, 0xdeadbeef);
    assert_int_equal(lm_fmt_u64_encode(0x1122334455667788ull, b, sizeof b), 8);
    assert_int_equal(b[0], 0x88);
    assert_int_equal(b[7], 0x11);
    assert_int_equal(lm_fmt_u64_decode(b, 8, &v64, &err), 8);
    assert_true(v64 == 0x1122334455667788ull);
    assert_int_equal(err.code, 0);

    assert_int_equal(lm_fmt_u32_decode(b, 3, &v32, &err), -EPROTO);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_u32_decode(b, 5, &v32, &err), -EPROTO);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_u64_decode(b, 7, &v64, &err), -EPROTO);
    assert_err(&err, -EPROTO, "u64 payload of 7 bytes, must be 8");
    assert_int_equal(lm_fmt_u32_encode(1, b, 3), -ENOSPC);
    assert_int_equal(lm_fmt_u64_encode(1, b, 7), -ENOSPC);
}

static void test_status_msg(void **state)
{
    lm_status_msg m = {.status = -EPIPE};
    snprintf(m.msg, sizeof m.msg, "destination: block \"pc.ram\" size mismatch \xc3\xa9");
    uint8_t b[600];
    int rc = lm_fmt_status_msg_encode(&m, b, sizeof b);
    assert_int_equal(rc, 6 + (int)strlen(m.msg));
    lm_status_msg o;
    lm_error err = {0};
    assert_int_equal(lm_fmt_status_msg_decode(b, rc, &o, &err), rc);
    assert_int_equal(o.status, -EPIPE);
    assert_string_equal(o.msg, m.msg);

    /* empty message, status 0: the RP_SHUT "all loaded" */
    lm_status_msg ok = {.status = 0};
    assert_int_equal(lm_fmt_status_msg_encode(&ok, b, sizeof b), 6);
    assert_int_equal(lm_fmt_status_msg_decode(b, 6, &o, &err), 6);
    assert_int_equal(o.status, 0);
    assert_string_equal(o.msg, "");

    /* longest message */
    memset(m.msg, 'm', sizeof m.msg);
    m.msg[LM_ERROR_MSG_MAX - 1] = '\0';
    rc = lm_fmt_status_msg_encode(&m, b, sizeof b);
    assert_int_equal(rc, 6 + LM_ERROR_MSG_MAX - 1);
    assert_int_equal(lm_fmt_status_msg_decode(b, rc, &o, &err), rc);
    assert_int_equal(strlen(o.msg), LM_ERROR_MSG_MAX - 1);
    assert_int_equal(lm_fmt_status_msg_encode(&m, b, rc - 1), -ENOSPC);

    /* the encoder replaces control bytes instead of failing */
    snprintf(m.msg, sizeof m.msg, "a\nb\tc\x7f");
    rc = lm_fmt_status_msg_encode(&m, b, sizeof b);
    assert_int_equal(rc, 6 + 6);
    assert_memory_equal(b + 6, "a?b?c?", 6);
    assert_int_equal(lm_fmt_status_msg_decode(b, rc, &o, &err), rc);
    assert_int_equal(err.code, 0);

    /* the decoder refuses them */
    uint8_t bad[] = {0x00, 0x0a, 0x1f, 0x7f};
    for (size_t i = 0; i < sizeof bad; i++) {
        b[6 + 2] = bad[i];
        lm_error_clear(&err);
        assert_int_equal(lm_fmt_status_msg_decode(b, rc, &o, &err), -EPROTO);
        assert_err(&err, -EPROTO, "text byte 2 is");
    }
    b[8] = 'b';
    /* declared length vs payload */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_status_msg_decode(b, rc + 1, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "must be 6 + text length 6");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_status_msg_decode(b, rc - 1, &o, &err), -EPROTO);
    lm_error_clear(&err);
    b[4] = 0x00;
    b[5] = 0x02; /* 512 */
    assert_int_equal(lm_fmt_status_msg_decode(b, 6 + 512, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "text length 512 above maximum 511");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_status_msg_decode(b, 5, &o, &err), -EPROTO);
}

/* ----------------------------------------------------------- stream walker */

typedef struct walk_log {
    int count[256];
    int total;
    int refuse_at; /* refuse the n-th record (1-based), 0 = never */
    size_t last_len;
} walk_log;

static int log_cb(void *opaque, const lm_rec_hdr *h, const uint8_t *payload)
{
    walk_log *l = opaque;
    l->count[h->type]++;
    l->total++;
    l->last_len = h->len;
    assert_non_null(payload);
    if (l->refuse_at && l->total == l->refuse_at)
        return -ECANCELED;
    return 0;
}

static void test_walk_precopy(void **state)
{
    static sbuf s;
    for (int hello = 0; hello < 2; hello++) {
        build_precopy(&s, hello);
        walk_log l = {0};
        lm_error err = {0};
        assert_int_equal(lm_fmt_walk(s.b, s.len, hello, log_cb, &l, &err), (long)s.len);
        assert_int_equal(err.code, 0);
        assert_int_equal(l.total, 14);
        assert_int_equal(l.count[LM_REC_RAM_BLOCKS], 1);
        assert_int_equal(l.count[LM_REC_RAM_PAGES], 3);
        assert_int_equal(l.count[LM_REC_RAM_ZERO], 1);
        assert_int_equal(l.count[LM_REC_RAM_PASS], 2);
        assert_int_equal(l.count[LM_REC_SECTION_START], 1);
        assert_int_equal(l.count[LM_REC_SECTION_PART], 1);
        assert_int_equal(l.count[LM_REC_SECTION_END], 1);
        assert_int_equal(l.count[LM_REC_SECTION_FULL], 1);
        assert_int_equal(l.count[LM_REC_EOS], 1);
        /* NULL callback */
        assert_int_equal(lm_fmt_walk(s.b, s.len, hello, NULL, NULL, &err), (long)s.len);
    }
    /* with the HELLO present but not expected, it is an unknown record */
    build_precopy(&s, true);
    lm_error err = {0};
    assert_true(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err) < 0);
    assert_err(&err, -EPROTO, "stream offset 0: record type 0x4c unknown");
}

static void test_walk_truncated(void **state)
{
    /* Every prefix walks to the end of its last complete record. */
    static sbuf s;
    build_precopy(&s, true);
    size_t ends[32];
    int nends = 0;
    size_t off = LM_HELLO_SIZE;
    ends[nends++] = off;
    while (off < s.len) {
        uint32_t plen = (uint32_t)s.b[off + 4] | (uint32_t)s.b[off + 5] << 8 |
                        (uint32_t)s.b[off + 6] << 16 | (uint32_t)s.b[off + 7] << 24;
        off += LM_REC_HDR_SIZE + plen;
        ends[nends++] = off;
    }
    assert_int_equal(off, s.len);
    int e = 0;
    for (size_t n = 0; n <= s.len; n++) {
        lm_error err = {0};
        long want = n < LM_HELLO_SIZE ? 0 : (long)ends[e];
        if (e + 1 < nends && n >= ends[e + 1]) {
            e++;
            want = (long)ends[e];
        }
        long rc = lm_fmt_walk(s.b, n, true, NULL, NULL, &err);
        if (rc != want)
            fail_msg("prefix %zu: walk returned %ld, want %ld (%s)", n, rc, want, err.msg);
        assert_int_equal(err.code, 0);
    }
}

static void test_walk_return_path(void **state)
{
    static sbuf s;
    s.len = 0;
    sb_u32(&s, LM_REC_RP_PONG, 7);
    lm_ram_run r = {.block = 0, .count = 4, .first_page = 100};
    uint8_t p[16];
    assert_int_equal(lm_fmt_req_pages_encode(&r, p, sizeof p), 16);
    sb_rec(&s, LM_REC_RP_REQ_PAGES, p, 16);
    sb_rec(&s, LM_REC_RP_SWITCHOVER_ACK, NULL, 0);
    sb_status(&s, LM_REC_ERROR, -EIO, "cannot load device \"timer\"");
    sb_status(&s, LM_REC_RP_SHUT, 0, "");
    walk_log l = {0};
    lm_error err = {0};
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, log_cb, &l, &err), (long)s.len);
    assert_int_equal(l.total, 5);
    assert_int_equal(l.count[LM_REC_RP_SHUT], 1);

    /* REQ_PAGES errors name REQ_PAGES, not RAM_PAGES */
    s.len = 0;
    put32(p + 4, 0);
    sb_rec(&s, LM_REC_RP_REQ_PAGES, p, 16);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "stream offset 0: RP_REQ_PAGES: count 0 out of range 1..1024");
}

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t get64(const uint8_t *b)
{
    return get32(b) | (uint64_t)get32(b + 4) << 32;
}

static void sb_discard(sbuf *s, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    uint8_t p[LM_RAM_ZERO_SIZE];
    assert_int_equal(lm_fmt_discard_encode(&z, p, sizeof p), LM_RAM_ZERO_SIZE);
    sb_rec(s, LM_REC_POSTCOPY_DISCARD, p, sizeof p);
}

/* docs/format.md §4.11: same bytes as RAM_ZERO, errors name the record. */
static void test_discard_codec(void **state)
{
    lm_ram_zero z = {.block = 2, .first_page = 7, .count = 3}, o;
    uint8_t b[LM_RAM_ZERO_SIZE];
    lm_error err = {0};
    assert_int_equal(lm_fmt_discard_encode(&z, b, sizeof b), 24);
    assert_int_equal(get32(b), 2);
    assert_int_equal(get32(b + 4), 0);
    assert_true(get64(b + 8) == 7 && get64(b + 16) == 3);
    assert_int_equal(lm_fmt_discard_decode(b, sizeof b, &o, &err), 24);
    assert_true(o.block == 2 && o.first_page == 7 && o.count == 3);
    put64(b + 16, 0);
    assert_int_equal(lm_fmt_discard_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "POSTCOPY_DISCARD: count 0");
    lm_error_clear(&err);
    put64(b + 16, 1);
    b[5] = 1;
    assert_int_equal(lm_fmt_discard_decode(b, sizeof b, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "POSTCOPY_DISCARD: reserved");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_discard_decode(b, 25, &o, &err), -EPROTO);
    assert_err(&err, -EPROTO, "POSTCOPY_DISCARD: payload of 25 bytes");
    z.count = 0;
    assert_int_equal(lm_fmt_discard_encode(&z, b, sizeof b), -EINVAL);
}

/* The postcopy part of a stream (docs/format.md §5.1.1) walks; a discard
 * past a block or before the table, and a request past a block, do not. */
static void test_walk_postcopy(void **state)
{
    static sbuf s;
    lm_error err = {0};
    build_precopy(&s, true);
    s.len -= LM_REC_HDR_SIZE; /* drop EOS */
    sb_discard(&s, 0, 0, 3);
    sb_discard(&s, 1, 1, 1);
    sb_rec(&s, LM_REC_POSTCOPY_RUN, NULL, 0);
    sb_u32(&s, LM_REC_PING, 0x80000001u);
    sb_pages(&s, 0, 1, 1, 4096);
    sb_zero(&s, 0, 0, 1);
    lm_ram_run r = {.block = 1, .count = 1, .first_page = 1};
    uint8_t p[16];
    lm_fmt_req_pages_encode(&r, p, sizeof p);
    sb_rec(&s, LM_REC_RP_REQ_PAGES, p, 16);
    sb_rec(&s, LM_REC_EOS, NULL, 0);
    walk_log l = {0};
    assert_int_equal(lm_fmt_walk(s.b, s.len, true, log_cb, &l, &err), (long)s.len);
    assert_int_equal(l.count[LM_REC_POSTCOPY_DISCARD], 2);
    assert_int_equal(l.count[LM_REC_POSTCOPY_RUN], 1);

    s.len = 0;
    sb_discard(&s, 0, 0, 1);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "POSTCOPY_DISCARD before any RAM_BLOCKS");

    lm_error_clear(&err);
    s.len = 0;
    sb_blocks(&s, test_blocks, 2);
    sb_discard(&s, 0, test_blocks[0].length / 4096, 1);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "past the end of block");

    lm_error_clear(&err);
    s.len = 0;
    sb_blocks(&s, test_blocks, 2);
    r.block = 2;
    lm_fmt_req_pages_encode(&r, p, sizeof p);
    sb_rec(&s, LM_REC_RP_REQ_PAGES, p, 16);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM run: block 2 out of range");
}

static void test_walk_ram_errors(void **state)
{
    static sbuf s;
    lm_error err = {0};

    s.len = 0;
    sb_pages(&s, 0, 0, 1, 4096);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "stream offset 0: RAM_PAGES before any RAM_BLOCKS");

    s.len = 0;
    sb_zero(&s, 0, 0, 1);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM_ZERO before any RAM_BLOCKS");

    /* a run past the block's end, with the offset of the bad record */
    s.len = 0;
    sb_blocks(&s, test_blocks, 2);
    size_t at = s.len;
    sb_zero(&s, 1, 1, 2);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    char needle[128];
    snprintf(needle, sizeof needle,
             "stream offset %zu: RAM run: pages 1+2 past the end of block \"ledger\"", at);
    assert_err(&err, -EPROTO, needle);

    /* unknown block index */
    s.len = 0;
    sb_blocks(&s, test_blocks, 2);
    sb_pages(&s, 2, 0, 1, 4096);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "block 2 out of range (2 blocks)");

    /* page data length must match count * page size of *that* block */
    lm_fmt_block huge[2] = {{.name = "small", .page_size = 4096, .length = 1 << 20},
                            {.name = "huge", .page_size = 8192, .length = 1 << 20}};
    s.len = 0;
    sb_blocks(&s, huge, 2);
    sb_pages(&s, 1, 0, 2, 8192);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), (long)s.len);
    sb_pages(&s, 1, 0, 2, 4096); /* 4 KiB pages announced in an 8 KiB block */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RAM_PAGES: length 8208 is not 16 + 2 pages of 8192 bytes");

    /* a later RAM_BLOCKS replaces the table */
    s.len = 0;
    sb_blocks(&s, huge, 2);
    sb_blocks(&s, test_blocks, 1);
    sb_zero(&s, 0, 0, 16);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), (long)s.len);
    sb_zero(&s, 1, 0, 1);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "block 1 out of range (1 blocks)");

    /* a bad RAM_BLOCKS stops the walk */
    s.len = 0;
    uint8_t p[64];
    size_t n = raw_block(p, 1, "r\x01m", 3, 4096, 4096);
    sb_rec(&s, LM_REC_RAM_BLOCKS, p, (uint32_t)n);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "not printable ASCII");
}

static void test_walk_other_errors(void **state)
{
    static sbuf s;
    lm_error err = {0};

    /* bad HELLO, incomplete HELLO */
    build_precopy(&s, true);
    s.b[4] = 9;
    assert_int_equal(lm_fmt_walk(s.b, s.len, true, NULL, NULL, &err), -EPROTONOSUPPORT);
    assert_err(&err, -EPROTONOSUPPORT, "HELLO: format version 9");
    s.b[4] = 1;
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, 20, true, NULL, NULL, &err), 0);
    assert_int_equal(err.code, 0);

    /* unknown type in the middle of a stream */
    s.len = 0;
    sb_u32(&s, LM_REC_PING, 1);
    uint8_t junk[8] = {0x55};
    sb_raw(&s, junk, sizeof junk);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "stream offset 12: record type 0x55 unknown");

    /* bad section payload */
    s.len = 0;
    uint8_t sec[20] = {0};
    sb_rec(&s, LM_REC_SECTION_FULL, sec, sizeof sec);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "name length 0");

    /* bad status message */
    s.len = 0;
    uint8_t st[8] = {0, 0, 0, 0, 2, 0, 'o', 0};
    sb_rec(&s, LM_REC_ERROR, st, sizeof st);
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "text byte 1 is 0x00");

    /* callback refusal: its code is returned, the walk stops there */
    build_precopy(&s, false);
    walk_log l = {.refuse_at = 3};
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, log_cb, &l, &err), -ECANCELED);
    assert_int_equal(l.total, 3);
    assert_err(&err, -ECANCELED, "RAM_PASS record refused by the caller");

    /* empty input */
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_walk(s.b, 0, false, NULL, NULL, &err), 0);
    assert_int_equal(lm_fmt_walk(s.b, 0, true, NULL, NULL, &err), 0);
    assert_int_equal(err.code, 0);
}

/* ---------------------------------------------------------- switchover-ack */

static void test_ack_devices(void **state)
{
    uint32_t ids[3] = {0, 5, 0xffffffffu}, out[4], n = 99;
    uint8_t b[64];
    lm_error err = {0};
    assert_int_equal(lm_fmt_ack_devices_encode(ids, 3, b, sizeof b), 16);
    /* layout: count then ids, little-endian */
    static const uint8_t want[16] = {3, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff};
    assert_memory_equal(b, want, 16);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 16, out, 4, &n, &err), 16);
    assert_int_equal(n, 3);
    assert_memory_equal(out, ids, sizeof ids);
    /* empty list: "no device takes part" */
    assert_int_equal(lm_fmt_ack_devices_encode(NULL, 0, b, sizeof b), 4);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 4, out, 4, &n, &err), 4);
    assert_int_equal(n, 0);
    /* encoder refuses what the decoder would reject */
    uint32_t dup[2] = {4, 4};
    assert_int_equal(lm_fmt_ack_devices_encode(dup, 2, b, sizeof b), -EINVAL);
    assert_int_equal(lm_fmt_ack_devices_encode(ids, 3, b, 15), -ENOSPC);
    assert_int_equal(lm_fmt_ack_devices_encode(ids, 257, b, sizeof b), -EINVAL);

    /* decoder errors */
    lm_fmt_ack_devices_encode(ids, 3, b, sizeof b);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 12, out, 4, &n, &err), -EPROTO);
    assert_err(&err, -EPROTO, "ACK_DEVICES: length 12 is not 4 + 4 x 3");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 2, out, 4, &n, &err), -EPROTO);
    assert_err(&err, -EPROTO, "too short");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 16, out, 2, &n, &err), -ENOSPC);
    lm_error_clear(&err);
    put32(b + 8, 0); /* 0, 0: not increasing */
    assert_int_equal(lm_fmt_ack_devices_decode(b, 16, out, 4, &n, &err), -EPROTO);
    assert_err(&err, -EPROTO, "section id 0 at 1 not above the previous 0");
    lm_error_clear(&err);
    put32(b, 257);
    assert_int_equal(lm_fmt_ack_devices_decode(b, 16, out, 4, &n, &err), -EPROTO);
    assert_err(&err, -EPROTO, "count 257 above maximum 256");
}

static void test_device_ack(void **state)
{
    uint8_t b[LM_DEVICE_ACK_SIZE];
    uint32_t id;
    uint8_t st;
    lm_error err = {0};
    assert_int_equal(lm_fmt_device_ack_encode(7, LM_DEV_ACK_DECLINED, b, sizeof b), 8);
    static const uint8_t want[8] = {7, 0, 0, 0, 2, 0, 0, 0};
    assert_memory_equal(b, want, 8);
    assert_int_equal(lm_fmt_device_ack_decode(b, 8, &id, &st, &err), 8);
    assert_int_equal(id, 7);
    assert_int_equal(st, LM_DEV_ACK_DECLINED);
    assert_int_equal(lm_fmt_device_ack_encode(7, 0, b, sizeof b), -EINVAL);
    assert_int_equal(lm_fmt_device_ack_encode(7, 1, b, 7), -ENOSPC);
    b[4] = 3;
    assert_int_equal(lm_fmt_device_ack_decode(b, 8, &id, &st, &err), -EPROTO);
    assert_err(&err, -EPROTO, "RP_DEVICE_ACK: state 3 unknown");
    lm_error_clear(&err);
    b[4] = 1;
    b[6] = 1;
    assert_int_equal(lm_fmt_device_ack_decode(b, 8, &id, &st, &err), -EPROTO);
    assert_err(&err, -EPROTO, "reserved");
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_device_ack_decode(b, 9, &id, &st, &err), -EPROTO);
    assert_err(&err, -EPROTO, "length 9, must be 8");
}

static void test_walk_switchover_ack(void **state)
{
    static sbuf s;
    s.len = 0;
    uint32_t ids[2] = {1, 2};
    uint8_t p[16];
    int n = lm_fmt_ack_devices_encode(ids, 2, p, sizeof p);
    sb_rec(&s, LM_REC_ACK_DEVICES, p, (uint32_t)n);
    lm_fmt_device_ack_encode(2, LM_DEV_ACK_READY, p, sizeof p);
    sb_rec(&s, LM_REC_RP_DEVICE_ACK, p, LM_DEVICE_ACK_SIZE);
    walk_log l = {0};
    lm_error err = {0};
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, log_cb, &l, &err), (long)s.len);
    assert_int_equal(l.count[LM_REC_ACK_DEVICES], 1);
    assert_int_equal(l.count[LM_REC_RP_DEVICE_ACK], 1);
    /* a bad payload is reported with its offset */
    s.b[s.len - 4] = 9;
    assert_int_equal(lm_fmt_walk(s.b, s.len, false, NULL, NULL, &err), -EPROTO);
    assert_err(&err, -EPROTO, "stream offset 20: RP_DEVICE_ACK: state 9 unknown");
    assert_string_equal(lm_rec_type_name(LM_REC_ACK_DEVICES), "ACK_DEVICES");
    assert_string_equal(lm_rec_type_name(LM_REC_RP_DEVICE_ACK), "RP_DEVICE_ACK");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_roundtrip),
        cmocka_unit_test(test_hello_layout),
        cmocka_unit_test(test_hello_bad_magic),
        cmocka_unit_test(test_hello_truncated),
        cmocka_unit_test(test_hello_bad_fields),
        cmocka_unit_test(test_hello_multifd_index),
        cmocka_unit_test(test_hello_encode_errors),
        cmocka_unit_test(test_rec_hdr_roundtrip),
        cmocka_unit_test(test_rec_hdr_lengths),
        cmocka_unit_test(test_rec_hdr_bad),
        cmocka_unit_test(test_rec_hdr_truncated),
        cmocka_unit_test(test_section_roundtrip),
        cmocka_unit_test(test_section_bad),
        cmocka_unit_test(test_ram_blocks_roundtrip),
        cmocka_unit_test(test_ram_blocks_bad),
        cmocka_unit_test(test_ram_pages_hdr),
        cmocka_unit_test(test_ram_zero),
        cmocka_unit_test(test_ram_run_check),
        cmocka_unit_test(test_u32_u64),
        cmocka_unit_test(test_status_msg),
        cmocka_unit_test(test_walk_precopy),
        cmocka_unit_test(test_walk_truncated),
        cmocka_unit_test(test_walk_return_path),
        cmocka_unit_test(test_walk_ram_errors),
        cmocka_unit_test(test_discard_codec),
        cmocka_unit_test(test_walk_postcopy),
        cmocka_unit_test(test_walk_other_errors),
        cmocka_unit_test(test_ack_devices),
        cmocka_unit_test(test_device_ack),
        cmocka_unit_test(test_walk_switchover_ack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
