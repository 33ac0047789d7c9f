/*
 * fuzz_stream.c - libFuzzer target for the record decoders of the wire
 * format: the stream walker (lm_fmt_walk) and every payload decoder fed
 * directly.  Input: byte 0 bit 0 selects expect_hello, the rest is the
 * stream.  Besides "no crash, no sanitizer report", it checks properties
 * that a wrong decoder would break:
 *  - a failure always carries its code and a non-empty message in err;
 *  - whatever a decoder accepts, the matching encoder writes back to the
 *    same bytes (the format has one encoding per value);
 *  - the walker's result is a record boundary: walking that prefix again
 *    gives the same length and the same records.
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

/* A decoder's failure must say why, in err, with the code it returned. */
static void check_err(long rc, const lm_error *err)
{
    if (rc < 0) {
        CHECK(err->code == rc);
        CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL);
        CHECK(err->msg[0] != '\0');
    } else {
        CHECK(err->code == 0);
    }
}

typedef struct walk_ctx {
    const uint8_t *base;
    size_t len;
    unsigned records;
    uint64_t sum; /* of types and lengths, to compare two walks */
} walk_ctx;

static int walk_cb(void *opaque, const lm_rec_hdr *h, const uint8_t *payload)
{
    walk_ctx *c = opaque;
    /* the payload the walker hands out lies inside the input */
    CHECK(payload >= c->base + LM_REC_HDR_SIZE);
    CHECK((size_t)(payload - c->base) + h->len <= c->len);
    CHECK(h->len <= LM_REC_MAX_PAYLOAD);
    c->records++;
    c->sum += h->type * 0x100000001ull + h->len;
    return 0;
}

static void fuzz_walk(const uint8_t *p, size_t n, bool hello)
{
    walk_ctx c = {.base = p, .len = n};
    lm_error err = {0};
    long rc = lm_fmt_walk(p, n, hello, walk_cb, &c, &err);
    check_err(rc, &err);
    if (rc < 0)
        return;
    CHECK((size_t)rc <= n);
    walk_ctx c2 = {.base = p, .len = (size_t)rc};
    lm_error err2 = {0};
    CHECK(lm_fmt_walk(p, (size_t)rc, hello, walk_cb, &c2, &err2) == rc);
    CHECK(c2.records == c.records && c2.sum == c.sum);
}

static void fuzz_payloads(const uint8_t *p, size_t n)
{
    static uint8_t out[LM_RECV_BITMAP_MAX + 64];
    lm_error err = {0};
    int rc;

    lm_rec_hdr rh;
    rc = lm_fmt_rec_hdr_decode(p, n, &rh, &err);
    check_err(rc, &err);
    CHECK(rc == 0 ? n < LM_REC_HDR_SIZE : 1);
    if (rc > 0) {
        CHECK(lm_fmt_rec_hdr_encode(rh.type, rh.len, out, sizeof out) == rc);
        CHECK(memcmp(out, p, (size_t)rc) == 0);
        CHECK(strcmp(lm_rec_type_name(rh.type), "unknown") != 0);
    }

    for (uint8_t t = LM_REC_SECTION_START; t <= LM_REC_SECTION_FULL; t++) {
        lm_section_hdr s;
        lm_error_clear(&err);
        rc = lm_fmt_section_hdr_decode(t, p, n, &s, &err);
        check_err(rc, &err);
        CHECK(rc != 0);
        if (rc > 0) {
            CHECK((size_t)rc <= n);
            CHECK(strlen(s.name) == s.name_len);
            CHECK(lm_fmt_section_hdr_encode(t, &s, out, sizeof out) == rc);
            CHECK(memcmp(out, p, (size_t)rc) == 0);
        }
    }

    static lm_fmt_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nb = 0;
    lm_error_clear(&err);
    rc = lm_fmt_ram_blocks_decode(p, n, blocks, LM_RAM_MAX_BLOCKS, &nb, &err);
    check_err(rc, &err);
    CHECK(rc != 0); /* a whole payload: never "need more" */
    uint32_t nvalid = 0;
    if (rc > 0) {
        CHECK((size_t)rc == n && nb <= LM_RAM_MAX_BLOCKS);
        nvalid = nb;
        CHECK(lm_fmt_ram_blocks_encode(blocks, nb, out, sizeof out) == rc);
        CHECK(memcmp(out, p, n) == 0);
    }
    /* Again into a smaller array: fits iff the table is no larger. */
    static lm_fmt_block small[LM_RAM_MAX_BLOCKS];
    uint32_t max = n ? p[n - 1] % (LM_RAM_MAX_BLOCKS + 1) : 0;
    uint32_t nb2 = 0;
    lm_error_clear(&err);
    int rc2 = lm_fmt_ram_blocks_decode(p, n, small, max, &nb2, &err);
    check_err(rc2, &err);
    if (rc > 0 && nb <= max)
        CHECK(rc2 == rc && nb2 == nb);
    else if (rc > 0)
        CHECK(rc2 == -ENOSPC);
    else
        CHECK(rc2 < 0);

    lm_ram_run run;
    lm_error_clear(&err);
    rc = lm_fmt_ram_pages_hdr_decode(p, n, &run, &err);
    check_err(rc, &err);
    if (rc > 0) {
        CHECK(lm_fmt_ram_pages_hdr_encode(&run, out, sizeof out) == rc);
        CHECK(memcmp(out, p, (size_t)rc) == 0);
        /* check the run against the table decoded above, if any */
        lm_error_clear(&err);
        int c = lm_fmt_ram_run_check(run.block, run.first_page, run.count, blocks, nvalid, &err);
        check_err(c, &err);
    }

    lm_ram_zero z;
    lm_error_clear(&err);
    rc = lm_fmt_ram_zero_decode(p, n, &z, &err);
    check_err(rc, &err);
    CHECK(rc != 0);
    if (rc > 0) {
        CHECK(lm_fmt_ram_zero_encode(&z, out, sizeof out) == rc);
        CHECK(memcmp(out, p, (size_t)rc) == 0);
    }

    uint32_t v32;
    lm_error_clear(&err);
    rc = lm_fmt_u32_decode(p, n, &v32, &err);
    check_err(rc, &err);
    CHECK(rc < 0 || n == 4);
    uint64_t v64;
    lm_error_clear(&err);
    rc = lm_fmt_u64_decode(p, n, &v64, &err);
    check_err(rc, &err);
    CHECK(rc < 0 || n == 8);

    static lm_status_msg m;
    lm_error_clear(&err);
    rc = lm_fmt_status_msg_decode(p, n, &m, &err);
    check_err(rc, &err);
    CHECK(rc != 0);
    if (rc > 0) {
        CHECK((size_t)rc == n);
        CHECK(lm_fmt_status_msg_encode(&m, out, sizeof out) == rc);
        CHECK(memcmp(out, p, n) == 0);
    }

    /* recovery: the received bitmap */
    lm_recv_bitmap rb;
    lm_error_clear(&err);
    rc = lm_fmt_recv_bitmap_decode(p, n, &rb, &err);
    check_err(rc, &err);
    CHECK(rc != 0);
    if (rc > 0) {
        static uint64_t words[LM_RECV_BITMAP_MAX_PAGES / 64];
        CHECK((size_t)rc == n && n == LM_RECV_BITMAP_HDR_SIZE + (rb.npages + 7) / 8);
        CHECK(rb.first_page % 64 == 0 && rb.npages >= 1 && rb.npages <= LM_RECV_BITMAP_MAX_PAGES);
        uint32_t nw = (rb.npages + 63) / 64;
        for (uint32_t i = 0; i < nw; i++)
            words[i] = lm_fmt_recv_bitmap_word(&rb, i);
        if (rb.npages % 64) /* nothing past the last page */
            CHECK((words[nw - 1] >> (rb.npages % 64)) == 0);
        CHECK(lm_fmt_recv_bitmap_encode(&rb, words, out, sizeof out) == rc);
        CHECK(memcmp(out, p, n) == 0);
        lm_error_clear(&err);
        int c = lm_fmt_ram_run_check(rb.block, rb.first_page, rb.npages, blocks, nvalid, &err);
        check_err(c, &err);
    }

    /* switchover-ack records */
    static uint32_t ids[LM_ACK_DEVICES_MAX];
    uint32_t nids = 0;
    lm_error_clear(&err);
    rc = lm_fmt_ack_devices_decode(p, n, ids, LM_ACK_DEVICES_MAX, &nids, &err);
    check_err(rc, &err);
    CHECK(rc != 0);
    if (rc > 0) {
        CHECK((size_t)rc == n && n == 4 + 4 * (size_t)nids);
        for (uint32_t i = 1; i < nids; i++)
            CHECK(ids[i] > ids[i - 1]);
        CHECK(lm_fmt_ack_devices_encode(ids, nids, out, sizeof out) == rc);
        CHECK(memcmp(out, p, n) == 0);
    }
    uint32_t sid;
    uint8_t st;
    lm_error_clear(&err);
    rc = lm_fmt_device_ack_decode(p, n, &sid, &st, &err);
    check_err(rc, &err);
    CHECK(rc != 0);
    if (rc > 0) {
        CHECK(n == LM_DEVICE_ACK_SIZE && (st == LM_DEV_ACK_READY || st == LM_DEV_ACK_DECLINED));
        CHECK(lm_fmt_device_ack_encode(sid, st, out, sizeof out) == rc);
        CHECK(memcmp(out, p, n) == 0);
    }

    /* run checks against a fixed table, with values from the input */
    if (n >= 20) {
        static const lm_fmt_block t[2] = {
            {.name = "ram", .page_size = 4096, .length = 1ull << 30},
            {.name = "big", .page_size = 1u << 30, .length = 1ull << 62},
        };
        uint64_t first, count;
        memcpy(&first, p + 4, 8);
        memcpy(&count, p + 12, 8);
        lm_error_clear(&err);
        rc = lm_fmt_ram_run_check(p[0] % 3, first, count, t, 2, &err);
        check_err(rc, &err);
        if (rc == 0) {
            uint64_t pages = t[p[0] % 3].length / t[p[0] % 3].page_size;
            CHECK(count >= 1 && first < pages && first + count <= pages);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fuzz_walk(data + 1, size - 1, data[0] & 1);
    fuzz_payloads(data + 1, size - 1);
    return 0;
}
