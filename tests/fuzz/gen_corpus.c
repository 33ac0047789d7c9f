/*
 * gen_corpus.c - writes the seed corpora of fuzz_stream, fuzz_hello and
 * fuzz_inspect: valid streams and HELLOs built with the encoders, plus
 * truncated and mutated variants that each hit one of the decoders' (and
 * the inspector's) checks.  Not built
 * by CMake (it is not a fuzz target); build and run it by hand:
 *
 *   cc -D_GNU_SOURCE -I include -I src tests/fuzz/gen_corpus.c \
 *      src/format/wire.c src/format/pages.c src/util/error.c -o /tmp/gen_corpus
 *   /tmp/gen_corpus tests/fuzz/corpus
 *
 * The output is deterministic, so re-running it gives the same files.
 * Files named found-* in the corpus are not written here: they are small
 * inputs that libFuzzer runs found to reach checks the seeds did not, kept
 * by hand.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "format/format.h"

static const char *root;

static void die(const char *what)
{
    fprintf(stderr, "gen_corpus: %s\n", what);
    exit(1);
}

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

static void write_file(const char *target, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path);
}

/* ------------------------------------------------------------ a stream */

typedef struct sbuf {
    uint8_t b[60 * 1024];
    size_t len;
} sbuf;

static void raw(sbuf *s, const void *p, size_t n)
{
    if (s->len + n > sizeof s->b)
        die("stream buffer full");
    memcpy(s->b + s->len, p, n);
    s->len += n;
}

static void rec(sbuf *s, uint8_t type, const void *payload, uint32_t n)
{
    uint8_t h[LM_REC_HDR_SIZE];
    if (lm_fmt_rec_hdr_encode(type, n, h, sizeof h) != LM_REC_HDR_SIZE)
        die("rec_hdr_encode");
    raw(s, h, sizeof h);
    if (n)
        raw(s, payload, n);
}

static lm_hello hello_of(uint8_t role, uint8_t kind)
{
    lm_hello h = {
        .version = LM_FORMAT_VERSION,
        .role = role,
        .kind = kind,
        .chan_index = role == LM_ROLE_MULTIFD ? 1 : 0,
        .chan_count = role == LM_ROLE_MULTIFD ? 4 : 0,
        .page_size = 4096,
        .features = role == LM_ROLE_MULTIFD ? LM_FEAT_MULTIFD : 0,
    };
    for (int i = 0; i < LM_SESSION_ID_LEN; i++)
        h.session[i] = (uint8_t)(0x11 * i);
    return h;
}

static void hello(sbuf *s, const lm_hello *h)
{
    uint8_t b[LM_HELLO_SIZE];
    if (lm_fmt_hello_encode(h, b, sizeof b) != LM_HELLO_SIZE)
        die("hello_encode");
    raw(s, b, sizeof b);
}

static void blocks(sbuf *s, const lm_fmt_block *b, uint32_t n)
{
    static uint8_t p[8192];
    int rc = lm_fmt_ram_blocks_encode(b, n, p, sizeof p);
    if (rc < 0)
        die("ram_blocks_encode");
    rec(s, LM_REC_RAM_BLOCKS, p, (uint32_t)rc);
}

static void pages(sbuf *s, uint32_t block, uint64_t first, uint32_t count, uint32_t ps)
{
    lm_ram_run r = {.block = block, .count = count, .first_page = first};
    uint8_t h[LM_RAM_PAGES_HDR_SIZE];
    uint8_t rh[LM_REC_HDR_SIZE];
    if (lm_fmt_ram_pages_hdr_encode(&r, h, sizeof h) < 0 ||
        lm_fmt_rec_hdr_encode(LM_REC_RAM_PAGES, LM_RAM_PAGES_HDR_SIZE + count * ps, rh, sizeof rh) <
            0)
        die("pages");
    raw(s, rh, sizeof rh);
    raw(s, h, sizeof h);
    for (uint32_t i = 0; i < count * ps; i++) {
        /* a page header like the guest's, then zeros: compresses well */
        uint8_t c = i % ps < 16 ? (uint8_t)(first + i / ps) : 0;
        raw(s, &c, 1);
    }
}

static void zero(sbuf *s, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    uint8_t p[LM_RAM_ZERO_SIZE];
    if (lm_fmt_ram_zero_encode(&z, p, sizeof p) < 0)
        die("zero");
    rec(s, LM_REC_RAM_ZERO, p, sizeof p);
}

static void u32rec(sbuf *s, uint8_t type, uint32_t v)
{
    uint8_t p[4];
    lm_fmt_u32_encode(v, p, sizeof p);
    rec(s, type, p, 4);
}

static void u64rec(sbuf *s, uint8_t type, uint64_t v)
{
    uint8_t p[8];
    lm_fmt_u64_encode(v, p, sizeof p);
    rec(s, type, p, 8);
}

static void section(sbuf *s, uint8_t type, uint32_t id, const char *name, const char *data)
{
    lm_section_hdr h = {.section_id = id, .instance = 0, .version = 1};
    h.name_len = (uint8_t)strlen(name);
    memcpy(h.name, name, h.name_len + 1);
    uint8_t p[1024];
    int rc = lm_fmt_section_hdr_encode(type, &h, p, sizeof p);
    if (rc < 0)
        die("section");
    size_t dl = strlen(data);
    memcpy(p + rc, data, dl);
    rec(s, type, p, (uint32_t)(rc + dl));
}

static void status(sbuf *s, uint8_t type, int32_t st, const char *msg)
{
    lm_status_msg m = {.status = st};
    snprintf(m.msg, sizeof m.msg, "%s", msg);
    uint8_t p[600];
    int rc = lm_fmt_status_msg_encode(&m, p, sizeof p);
    if (rc < 0)
        die("status");
    rec(s, type, p, (uint32_t)rc);
}

static const lm_fmt_block guest_blocks[2] = {
    {.name = "pc.ram", .page_size = 4096, .length = 64 * 4096},
    {.name = "ledger", .page_size = 4096, .length = 4 * 4096},
};

static void discard(sbuf *s, uint32_t block, uint64_t first, uint64_t count)
{
    lm_ram_zero z = {.block = block, .first_page = first, .count = count};
    uint8_t p[LM_RAM_ZERO_SIZE];
    if (lm_fmt_discard_encode(&z, p, sizeof p) != LM_RAM_ZERO_SIZE)
        die("discard encode");
    rec(s, LM_REC_POSTCOPY_DISCARD, p, sizeof p);
}

static void recv_bitmap(sbuf *s, uint32_t block, uint64_t first, uint32_t npages,
                        const uint64_t *words)
{
    static uint8_t p[LM_RECV_BITMAP_MAX];
    lm_recv_bitmap b = {.block = block, .npages = npages, .first_page = first};
    int n = lm_fmt_recv_bitmap_encode(&b, words, p, sizeof p);
    if (n < 0)
        die("recv_bitmap encode");
    rec(s, LM_REC_RP_RECV_BITMAP, p, (uint32_t)n);
}

/* A postcopy recovery (docs/format.md §5.4): the main channel reopened
 * with HELLO RESUME, and the destination's answer on it. */
static void recovery(sbuf *s)
{
    s->len = 0;
    lm_hello h = hello_of(LM_ROLE_MAIN, LM_HELLO_RESUME);
    h.features = LM_FEAT_POSTCOPY;
    hello(s, &h);
    blocks(s, guest_blocks, 2); /* not on the wire here: gives the walker a table */
    u32rec(s, LM_REC_PING, 7);
    rec(s, LM_REC_POSTCOPY_RESUME, NULL, 0);
    uint64_t w0 = 0xf00000000000ff01ull, w1 = 0x9;
    recv_bitmap(s, 0, 0, 64, &w0);
    recv_bitmap(s, 1, 0, 4, &w1);
    u64rec(s, LM_REC_RP_RESUME_ACK, 15);
    pages(s, 0, 0, 1, 4096);
    zero(s, 1, 0, 1);
    rec(s, LM_REC_EOS, NULL, 0);
}

/* The main channel of a small precopy migration (docs/format.md, "shape
 * of a precopy stream"). */
static void precopy(sbuf *s, bool with_hello)
{
    s->len = 0;
    if (with_hello) {
        lm_hello h = hello_of(LM_ROLE_MAIN, LM_HELLO_REQUEST);
        hello(s, &h);
    }
    blocks(s, guest_blocks, 2);
    section(s, LM_REC_SECTION_START, 1, "vfio-dev", "initial-data");
    u64rec(s, LM_REC_RAM_PASS, 1);
    zero(s, 0, 0, 60);
    pages(s, 0, 60, 2, 4096);
    zero(s, 0, 62, 2);
    pages(s, 1, 0, 1, 4096);
    zero(s, 1, 1, 3);
    section(s, LM_REC_SECTION_PART, 1, "", "chunk");
    u32rec(s, LM_REC_PING, 1);
    u64rec(s, LM_REC_RAM_PASS, 2);
    pages(s, 0, 7, 1, 4096);
    rec(s, LM_REC_SWITCHOVER_START, NULL, 0);
    pages(s, 1, 0, 1, 4096);
    section(s, LM_REC_SECTION_END, 1, "", "final");
    section(s, LM_REC_SECTION_FULL, 2, "timer", "\x01\x02\x03\x04");
    rec(s, LM_REC_EOS, NULL, 0);
}

/* fuzz_stream input: one flag byte (bit 0 = expect HELLO), then the stream. */
static void stream_file(const char *name, const sbuf *s, bool with_hello, size_t len)
{
    static uint8_t b[sizeof((sbuf *)0)->b + 1];
    b[0] = with_hello ? 1 : 0;
    memcpy(b + 1, s->b, len);
    write_file("fuzz_stream", name, b, len + 1);
}

static void gen_stream(void)
{
    static sbuf s;

    /* valid streams */
    precopy(&s, true);
    stream_file("precopy-hello", &s, true, s.len);
    size_t full = s.len;
    precopy(&s, false);
    stream_file("precopy-nohello", &s, false, s.len);

    s.len = 0;
    u32rec(&s, LM_REC_RP_PONG, 1);
    lm_ram_run r = {.block = 0, .count = 8, .first_page = 16};
    uint8_t rp[16];
    lm_fmt_req_pages_encode(&r, rp, sizeof rp);
    rec(&s, LM_REC_RP_REQ_PAGES, rp, 16);
    rec(&s, LM_REC_RP_SWITCHOVER_ACK, NULL, 0);
    status(&s, LM_REC_RP_SHUT, 0, "");
    stream_file("return-path", &s, false, s.len);

    s.len = 0;
    lm_hello rej = hello_of(LM_ROLE_MAIN, LM_HELLO_REJECT);
    rej.features = LM_FEAT_POSTCOPY;
    hello(&s, &rej);
    status(&s, LM_REC_ERROR, -EPROTO,
           "HELLO: features differ: source 0x2, destination 0x0 (postcopy-ram)");
    stream_file("reject-error", &s, true, s.len);

    s.len = 0;
    lm_hello mf = hello_of(LM_ROLE_MULTIFD, LM_HELLO_REQUEST);
    hello(&s, &mf);
    blocks(&s, guest_blocks, 2);
    pages(&s, 0, 0, 3, 4096);
    stream_file("multifd-pages", &s, true, s.len);

    s.len = 0;
    lm_fmt_block mixed[3] = {
        {.name = "small", .page_size = 4096, .length = 1 << 20},
        {.name = "huge8k", .page_size = 8192, .length = 1 << 20},
        {.name = "giant", .page_size = 1u << 30, .length = 4ull << 30},
    };
    blocks(&s, mixed, 3);
    pages(&s, 1, 127, 1, 8192);
    zero(&s, 2, 0, 4);
    zero(&s, 0, 0, 256);
    blocks(&s, guest_blocks, 1); /* a later table replaces the first */
    zero(&s, 0, 63, 1);
    stream_file("page-sizes", &s, false, s.len);

    s.len = 0;
    static lm_fmt_block many[LM_RAM_MAX_BLOCKS];
    for (int i = 0; i < LM_RAM_MAX_BLOCKS; i++) {
        snprintf(many[i].name, sizeof many[i].name, "block-%02d", i);
        many[i].page_size = 4096;
        many[i].length = 4096ull * (i + 1);
    }
    blocks(&s, many, LM_RAM_MAX_BLOCKS);
    zero(&s, 63, 0, 64);
    stream_file("blocks-64", &s, false, s.len);

    s.len = 0;
    char name[256];
    memset(name, 'd', 255);
    name[255] = '\0';
    section(&s, LM_REC_SECTION_FULL, 0xffffffff, name, "");
    char msg[LM_ERROR_MSG_MAX];
    memset(msg, 'e', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    status(&s, LM_REC_ERROR, -1, msg);
    stream_file("long-names", &s, false, s.len);

    /* switchover-ack: a handshake on the main channel, and the return path */
    {
        s.len = 0;
        lm_hello h = hello_of(LM_ROLE_MAIN, LM_HELLO_REQUEST);
        h.features = LM_FEAT_SWITCHOVER_ACK;
        hello(&s, &h);
        blocks(&s, guest_blocks, 2);
        section(&s, LM_REC_SECTION_START, 1, "bulk", "");
        section(&s, LM_REC_SECTION_START, 2, "nic", "");
        section(&s, LM_REC_SECTION_PART, 1, "", "config");
        uint32_t ids[2] = {1, 2};
        uint8_t p[12];
        int n = lm_fmt_ack_devices_encode(ids, 2, p, sizeof p);
        rec(&s, LM_REC_ACK_DEVICES, p, (uint32_t)n);
        section(&s, LM_REC_SECTION_PART, 2, "", "initial-done");
        rec(&s, LM_REC_SWITCHOVER_START, NULL, 0);
        section(&s, LM_REC_SECTION_END, 1, "", "");
        section(&s, LM_REC_SECTION_END, 2, "", "");
        section(&s, LM_REC_SECTION_FULL, 3, "cpu", "regs");
        rec(&s, LM_REC_EOS, NULL, 0);
        stream_file("switchover-ack", &s, true, s.len);
        size_t ack_at = LM_HELLO_SIZE;
        while (s.b[ack_at] != LM_REC_ACK_DEVICES) { /* find the record */
            uint32_t l = s.b[ack_at + 4] | s.b[ack_at + 5] << 8 | s.b[ack_at + 6] << 16;
            ack_at += LM_REC_HDR_SIZE + l;
        }
        sbuf m = s;
        put32(m.b + ack_at + LM_REC_HDR_SIZE + 8, 1); /* ids 1, 1: not increasing */
        stream_file("ack-devices-dup", &m, true, m.len);
        m = s;
        put32(m.b + ack_at + LM_REC_HDR_SIZE, 3); /* count 3 in 12 bytes */
        stream_file("ack-devices-count", &m, true, m.len);

        s.len = 0;
        uint8_t a[LM_DEVICE_ACK_SIZE];
        lm_fmt_device_ack_encode(2, LM_DEV_ACK_DECLINED, a, sizeof a);
        rec(&s, LM_REC_RP_DEVICE_ACK, a, sizeof a);
        lm_fmt_device_ack_encode(1, LM_DEV_ACK_READY, a, sizeof a);
        rec(&s, LM_REC_RP_DEVICE_ACK, a, sizeof a);
        rec(&s, LM_REC_RP_SWITCHOVER_ACK, NULL, 0);
        stream_file("device-acks", &s, false, s.len);
        m = s;
        m.b[LM_REC_HDR_SIZE + 4] = 3; /* unknown state */
        stream_file("device-ack-state", &m, false, m.len);
        m = s;
        m.b[LM_REC_HDR_SIZE + 7] = 1; /* reserved */
        stream_file("device-ack-reserved", &m, false, m.len);
    }

    /* one record of each kind, alone */
    struct {
        const char *name;
        uint8_t type;
    } singles[] = {
        {"one-ping", LM_REC_PING},
        {"one-eos", LM_REC_EOS},
        {"one-switchover", LM_REC_SWITCHOVER_START},
        {"one-pass", LM_REC_RAM_PASS},
        {"one-sw-ack", LM_REC_RP_SWITCHOVER_ACK},
    };
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++) {
        s.len = 0;
        if (singles[i].type == LM_REC_PING)
            u32rec(&s, LM_REC_PING, 0xffffffffu);
        else if (singles[i].type == LM_REC_RAM_PASS)
            u64rec(&s, LM_REC_RAM_PASS, 1ull << 63);
        else
            rec(&s, singles[i].type, NULL, 0);
        stream_file(singles[i].name, &s, false, s.len);
    }
    s.len = 0;
    status(&s, LM_REC_ERROR, -ECANCELED, "migration cancelled by the source \xe2\x9c\x97");
    stream_file("one-error-utf8", &s, false, s.len);

    /* postcopy (docs/format.md §5.1.1): the precopy stream without its
     * EOS, the switch, requested and background pages, EOS */
    precopy(&s, true);
    s.len -= LM_REC_HDR_SIZE;
    discard(&s, 0, 3, 5);
    discard(&s, 1, 1, 3);
    rec(&s, LM_REC_POSTCOPY_RUN, NULL, 0);
    u32rec(&s, LM_REC_PING, 0x80000002u);
    pages(&s, 0, 4, 1, 4096);
    pages(&s, 0, 3, 1, 4096);
    zero(&s, 0, 5, 3);
    zero(&s, 1, 1, 3);
    rec(&s, LM_REC_EOS, NULL, 0);
    stream_file("postcopy-hello", &s, true, s.len);

    s.len = 0;
    rec(&s, LM_REC_POSTCOPY_RUN, NULL, 0);
    stream_file("one-postcopy-run", &s, false, s.len);

    s.len = 0;
    discard(&s, 0, 0, 1);
    stream_file("discard-before-blocks", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    discard(&s, 1, 2, 0xfffffffffffffff0ull);
    stream_file("discard-overflow", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    uint8_t db[LM_RAM_ZERO_SIZE] = {0};
    put32(db + 4, 2);
    put64(db + 16, 1);
    rec(&s, LM_REC_POSTCOPY_DISCARD, db, sizeof db);
    stream_file("discard-reserved", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    lm_ram_run rq = {.block = 1, .count = 2, .first_page = 3};
    uint8_t rqb[16];
    lm_fmt_req_pages_encode(&rq, rqb, sizeof rqb);
    rec(&s, LM_REC_RP_REQ_PAGES, rqb, 16);
    stream_file("req-pages-past-end", &s, false, s.len);

    /* truncated: inside the HELLO, inside a header, inside a payload */
    precopy(&s, true);
    stream_file("trunc-hello", &s, true, 30);
    stream_file("trunc-rec-hdr", &s, true, LM_HELLO_SIZE + 5);
    stream_file("trunc-blocks", &s, true, LM_HELLO_SIZE + 20);
    stream_file("trunc-mid", &s, true, full / 2);
    stream_file("trunc-last", &s, true, full - 1);

    /* mutations of the valid precopy stream (offsets inside it) */
    size_t blocks_at = LM_HELLO_SIZE; /* RAM_BLOCKS record header */
    size_t blocks_pl = blocks_at + LM_REC_HDR_SIZE;
    struct {
        const char *name;
        size_t off;
        uint8_t val;
    } muts[] = {
        {"bad-magic", 0, 'X'},
        {"bad-version", 4, 7},
        {"bad-role", 6, 9},
        {"bad-kind", 7, 5},
        {"bad-page-size", 13, 0x30},
        {"bad-feature", 38, 1},
        {"bad-hello-reserved", 44, 1},
        {"bad-type", blocks_at, 0x55},
        {"bad-flags", blocks_at + 1, 0x80},
        {"bad-rec-reserved", blocks_at + 2, 1},
        {"bad-len-huge", blocks_at + 7, 0x40},
        {"bad-block-count", blocks_pl, 65},
        {"bad-block-name-len", blocks_pl + 4, 0},
        {"bad-block-name-byte", blocks_pl + 6, 0x07},
        {"bad-block-page-size", blocks_pl + 4 + 1 + 6 + 1, 0x18},
        {"bad-block-length", blocks_pl + 4 + 1 + 6 + 4, 1},
    };
    for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
        precopy(&s, true);
        s.b[muts[i].off] = muts[i].val;
        stream_file(muts[i].name, &s, true, s.len);
    }
    /* block 1 "ledger" renamed to block 0's "pc.ram" */
    precopy(&s, true);
    memcpy(s.b + blocks_pl + 4 + 1 + 6 + 12 + 1, "pc.ram", 6);
    stream_file("dup-block-name", &s, true, s.len);

    /* semantic errors built directly */
    s.len = 0;
    pages(&s, 0, 0, 1, 4096);
    stream_file("pages-before-blocks", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    zero(&s, 0, 0xffffffffffffffffull, 2);
    stream_file("zero-overflow", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    pages(&s, 1, 3, 2, 4096);
    stream_file("pages-past-end", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    uint8_t ph[LM_RAM_PAGES_HDR_SIZE];
    put32(ph, 0);
    put32(ph + 4, 0);
    put64(ph + 8, 0);
    rec(&s, LM_REC_RAM_PAGES, ph, sizeof ph);
    stream_file("pages-count0", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    put32(ph + 4, 2);
    uint8_t pb[LM_RAM_PAGES_HDR_SIZE + 4096];
    memset(pb, 0, sizeof pb);
    memcpy(pb, ph, sizeof ph);
    rec(&s, LM_REC_RAM_PAGES, pb, sizeof pb); /* says 2 pages, carries 1 */
    stream_file("pages-len-mismatch", &s, false, s.len);

    s.len = 0;
    blocks(&s, guest_blocks, 2);
    uint8_t zb[LM_RAM_ZERO_SIZE] = {0};
    put32(zb + 4, 1);
    put64(zb + 16, 1);
    rec(&s, LM_REC_RAM_ZERO, zb, sizeof zb);
    stream_file("zero-reserved", &s, false, s.len);

    s.len = 0;
    uint8_t st[10] = {0, 0, 0, 0, 4, 0, 'o', 'k', 0, '!'};
    rec(&s, LM_REC_RP_SHUT, st, sizeof st);
    stream_file("status-nul", &s, false, s.len);

    s.len = 0;
    uint8_t st2[8] = {0, 0, 0, 0, 9, 0, 'o', 'k'};
    rec(&s, LM_REC_ERROR, st2, sizeof st2);
    stream_file("status-len", &s, false, s.len);

    s.len = 0;
    uint8_t sec[20] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7, 'a', 'b', '\n', 'd', 'e', 'f', 'g'};
    rec(&s, LM_REC_SECTION_START, sec, sizeof sec);
    stream_file("section-bad-name", &s, false, s.len);

    s.len = 0;
    uint8_t ping8[LM_REC_HDR_SIZE + 8] = {LM_REC_PING, 0, 0, 0, 8};
    raw(&s, ping8, sizeof ping8);
    stream_file("ping-wrong-len", &s, false, s.len);

    /* postcopy recovery */
    recovery(&s);
    stream_file("recovery", &s, true, s.len);
    uint64_t w = 1;
    s.len = 0;
    recv_bitmap(&s, 0, 0, 64, &w);
    s.b[LM_REC_HDR_SIZE + 8] = 3; /* first page 3: not a multiple of 64 */
    stream_file("recv-bitmap-first", &s, false, s.len);
    s.len = 0;
    recv_bitmap(&s, 1, 0, 4, &w);
    s.b[LM_REC_HDR_SIZE + 16] = 0x30; /* bits past the 4 pages */
    stream_file("recv-bitmap-bits", &s, false, s.len);
    s.len = 0;
    recv_bitmap(&s, 1, 0, 4, &w);
    s.b[LM_REC_HDR_SIZE + 4] = 9; /* 9 pages need 2 bytes, the payload has 1 */
    stream_file("recv-bitmap-len", &s, false, s.len);
    s.len = 0;
    blocks(&s, guest_blocks, 2);
    recv_bitmap(&s, 1, 64, 4, &w); /* block 1 has 4 pages */
    stream_file("recv-bitmap-range", &s, false, s.len);
    s.len = 0;
    uint8_t ack7[LM_REC_HDR_SIZE + 7] = {LM_REC_RP_RESUME_ACK, 0, 0, 0, 7};
    raw(&s, ack7, sizeof ack7);
    stream_file("resume-ack-len", &s, false, s.len);

    /* bare payloads, for the direct decoder calls of fuzz_stream */
    uint8_t bp[8192];
    int n = lm_fmt_ram_blocks_encode(guest_blocks, 2, bp + 1, sizeof bp - 1);
    bp[0] = 0x40; /* walker: 0x00 type is unknown; payload decoders see blocks */
    write_file("fuzz_stream", "payload-blocks", bp, (size_t)n + 1);
    lm_ram_zero z = {.block = 1, .first_page = 2, .count = 3};
    bp[0] = 0;
    n = lm_fmt_ram_zero_encode(&z, bp + 1, sizeof bp - 1);
    write_file("fuzz_stream", "payload-zero", bp, (size_t)n + 1);
    lm_status_msg sm = {.status = -5};
    snprintf(sm.msg, sizeof sm.msg, "load failed");
    n = lm_fmt_status_msg_encode(&sm, bp + 1, sizeof bp - 1);
    write_file("fuzz_stream", "payload-status", bp, (size_t)n + 1);
    lm_section_hdr sh = {.section_id = 3, .instance = 1, .version = 2, .name_len = 3};
    memcpy(sh.name, "rtc", 4);
    n = lm_fmt_section_hdr_encode(LM_REC_SECTION_START, &sh, bp + 1, sizeof bp - 1);
    write_file("fuzz_stream", "payload-section", bp, (size_t)n + 1);
    uint64_t words[2] = {0x8000000000000001ull, 0x7f};
    lm_recv_bitmap rb = {.block = 1, .npages = 71, .first_page = 128};
    n = lm_fmt_recv_bitmap_encode(&rb, words, bp + 1, sizeof bp - 1);
    write_file("fuzz_stream", "payload-recv-bitmap", bp, (size_t)n + 1);
}

/* ----------------------------------------------------------------- HELLO */

static void gen_hello(void)
{
    uint8_t b[256];
    struct {
        const char *name;
        uint8_t role, kind;
    } valid[] = {
        {"req-main", LM_ROLE_MAIN, LM_HELLO_REQUEST},
        {"req-multifd", LM_ROLE_MULTIFD, LM_HELLO_REQUEST},
        {"req-preempt", LM_ROLE_PREEMPT, LM_HELLO_REQUEST},
        {"accept-main", LM_ROLE_MAIN, LM_HELLO_ACCEPT},
        {"reject-main", LM_ROLE_MAIN, LM_HELLO_REJECT},
        {"resume-main", LM_ROLE_MAIN, LM_HELLO_RESUME},
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        lm_hello h = hello_of(valid[i].role, valid[i].kind);
        if (lm_fmt_hello_encode(&h, b, sizeof b) != LM_HELLO_SIZE)
            die("hello");
        write_file("fuzz_hello", valid[i].name, b, LM_HELLO_SIZE);
    }
    lm_hello h = hello_of(LM_ROLE_MULTIFD, LM_HELLO_ACCEPT);
    h.page_size = 1u << 30;
    h.features = LM_FEAT_KNOWN_MASK;
    h.chan_count = 0xffff;
    h.chan_index = 0xfffe;
    lm_fmt_hello_encode(&h, b, sizeof b);
    write_file("fuzz_hello", "extremes", b, LM_HELLO_SIZE);

    /* a HELLO followed by records (the walker runs on it too) */
    static sbuf s;
    precopy(&s, true);
    write_file("fuzz_hello", "with-stream", s.b, 2048);
    s.len = 0;
    lm_hello rej = hello_of(LM_ROLE_MAIN, LM_HELLO_REJECT);
    hello(&s, &rej);
    status(&s, LM_REC_ERROR, -EPROTO, "session id unknown");
    write_file("fuzz_hello", "reject-then-error", s.b, s.len);

    /* malformed */
    struct {
        const char *name;
        size_t off;
        uint8_t val;
    } muts[] = {
        {"bad-magic", 1, 'X'},    {"bad-version-0", 4, 0}, {"bad-version-2", 4, 2},
        {"bad-version-hi", 5, 1}, {"bad-role-0", 6, 0},    {"bad-role-4", 6, 4},
        {"bad-kind", 7, 4},       {"main-index", 8, 1},    {"page-2k", 13, 0x08},
        {"page-6k", 13, 0x18},    {"page-2g", 15, 0x80},   {"feature-5", 32, 0x20},
        {"feature-63", 39, 0x80}, {"reserved-40", 40, 1},  {"reserved-47", 47, 0xff},
    };
    for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
        lm_hello g = hello_of(LM_ROLE_MAIN, LM_HELLO_REQUEST);
        lm_fmt_hello_encode(&g, b, sizeof b);
        b[muts[i].off] = muts[i].val;
        write_file("fuzz_hello", muts[i].name, b, LM_HELLO_SIZE);
    }
    lm_hello g = hello_of(LM_ROLE_MULTIFD, LM_HELLO_REQUEST);
    lm_fmt_hello_encode(&g, b, sizeof b);
    b[8] = 4; /* index 4 of 4 */
    write_file("fuzz_hello", "multifd-index", b, LM_HELLO_SIZE);
    g = hello_of(LM_ROLE_PREEMPT, LM_HELLO_REQUEST);
    lm_fmt_hello_encode(&g, b, sizeof b);
    b[9] = 1; /* index 256 on a preempt channel */
    write_file("fuzz_hello", "preempt-index", b, LM_HELLO_SIZE);
    write_file("fuzz_hello", "qemu-stream", "QEVM\0\0\0\3", 8);
    write_file("fuzz_hello", "http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);

    g = hello_of(LM_ROLE_MAIN, LM_HELLO_REQUEST);
    lm_fmt_hello_encode(&g, b, sizeof b);
    write_file("fuzz_hello", "trunc-3", b, 3);
    write_file("fuzz_hello", "trunc-4", b, 4);
    write_file("fuzz_hello", "trunc-47", b, 47);
}

/* ------------------------------------------------ inspect (whole files) */

static void insp(const char *name, const sbuf *s, size_t len)
{
    write_file("fuzz_inspect", name, s->b, len);
}

/* A multifd channel: HELLO, uncompressed MULTIFD_PAGES, SYNC, EOS. */
static void multifd_chan(sbuf *s)
{
    s->len = 0;
    lm_hello h = hello_of(LM_ROLE_MULTIFD, LM_HELLO_REQUEST);
    hello(s, &h);
    lm_mfd_pages p = {.block = 0,
                      .normal = 2,
                      .zero = 1,
                      .compression = LM_MFD_COMP_NONE,
                      .data_len = 2 * 4096,
                      .packet_num = 1};
    uint64_t idx[3] = {4, 9, 10};
    uint8_t b[LM_MFD_HDR_SIZE + 24];
    lm_fmt_mfd_pages_hdr_encode(&p, b, sizeof b);
    lm_fmt_mfd_index_encode(idx, 3, b + LM_MFD_HDR_SIZE, 24);
    uint8_t rh[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(LM_REC_MULTIFD_PAGES, sizeof b + 2 * 4096, rh, sizeof rh);
    raw(s, rh, sizeof rh);
    raw(s, b, sizeof b);
    static uint8_t data[2 * 4096];
    data[0] = 4;
    data[4096] = 9;
    raw(s, data, sizeof data);
    u64rec(s, LM_REC_MULTIFD_SYNC, 1);
    rec(s, LM_REC_EOS, NULL, 0);
}

static void gen_inspect(void)
{
    static sbuf s;
    precopy(&s, true);
    size_t full = s.len;
    insp("precopy", &s, full);
    insp("trunc-hello", &s, 30);
    insp("trunc-rec-hdr", &s, LM_HELLO_SIZE + 5);
    insp("trunc-mid", &s, full / 2);
    insp("no-eos", &s, full - LM_REC_HDR_SIZE);
    sbuf m = s;
    m.b[LM_HELLO_SIZE] = 0x55; /* record type */
    insp("flip-type", &m, full);
    m = s;
    m.b[LM_HELLO_SIZE + 6] = 0x7f; /* RAM_BLOCKS length: far past the end */
    insp("flip-len", &m, full);
    m = s;
    m.b[2] = 'X';
    insp("flip-magic", &m, full);
    m = s;
    m.b[34] = 0x40; /* feature bit 14 */
    insp("flip-feature", &m, full);
    rec(&s, LM_REC_EOS, NULL, 0);
    insp("after-eos", &s, s.len);

    /* postcopy, with the feature */
    precopy(&s, true);
    s.len -= LM_REC_HDR_SIZE;
    put64(s.b + 32, LM_FEAT_POSTCOPY);
    discard(&s, 0, 3, 5);
    rec(&s, LM_REC_POSTCOPY_RUN, NULL, 0);
    u32rec(&s, LM_REC_PING, 2);
    pages(&s, 0, 3, 1, 4096);
    zero(&s, 0, 4, 4);
    rec(&s, LM_REC_EOS, NULL, 0);
    insp("postcopy", &s, s.len);
    put64(s.b + 32, 0);
    insp("postcopy-no-feature", &s, s.len);

    /* sections out of order */
    s.len = 0;
    lm_hello h = hello_of(LM_ROLE_MAIN, LM_HELLO_REQUEST);
    hello(&s, &h);
    blocks(&s, guest_blocks, 2);
    section(&s, LM_REC_SECTION_PART, 4, "", "orphan");
    insp("section-orphan", &s, s.len);
    s.len = LM_HELLO_SIZE;
    blocks(&s, guest_blocks, 2);
    section(&s, LM_REC_SECTION_START, 1, "nic", "");
    section(&s, LM_REC_SECTION_START, 1, "disk", "");
    insp("section-rebound", &s, s.len);
    s.len = LM_HELLO_SIZE;
    section(&s, LM_REC_SECTION_START, 1, "nic", "");
    rec(&s, LM_REC_EOS, NULL, 0);
    insp("section-no-end", &s, s.len);
    s.len = LM_HELLO_SIZE;
    u32rec(&s, LM_REC_RP_PONG, 1);
    insp("rp-in-source-stream", &s, s.len);

    /* the destination's direction */
    s.len = 0;
    lm_hello acc = hello_of(LM_ROLE_MAIN, LM_HELLO_ACCEPT);
    hello(&s, &acc);
    u32rec(&s, LM_REC_RP_PONG, 1);
    status(&s, LM_REC_RP_SHUT, 0, "");
    insp("return-path", &s, s.len);
    s.len = 0;
    lm_hello rej = hello_of(LM_ROLE_MAIN, LM_HELLO_REJECT);
    hello(&s, &rej);
    status(&s, LM_REC_ERROR, -EPROTO, "HELLO: features differ");
    insp("reject", &s, s.len);

    multifd_chan(&s);
    insp("multifd-chan", &s, s.len);
    s.b[LM_HELLO_SIZE + LM_REC_HDR_SIZE + 8] = 9; /* compression 9 */
    insp("multifd-bad-comp", &s, s.len);

    /* a recovery's main channel (the table is its first main channel's:
     * the fuzz target passes one) and a preempt channel */
    s.len = 0;
    lm_hello rs = hello_of(LM_ROLE_MAIN, LM_HELLO_RESUME);
    rs.features = LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT;
    hello(&s, &rs);
    u32rec(&s, LM_REC_PING, 9);
    rec(&s, LM_REC_POSTCOPY_RESUME, NULL, 0);
    pages(&s, 0, 5, 1, 4096);
    zero(&s, 1, 0, 1);
    section(&s, LM_REC_SECTION_END, 1, "", "");
    rec(&s, LM_REC_EOS, NULL, 0);
    insp("resume", &s, s.len);
    s.len = 0;
    lm_hello pre = hello_of(LM_ROLE_PREEMPT, LM_HELLO_REQUEST);
    pre.features = LM_FEAT_POSTCOPY | LM_FEAT_PREEMPT;
    hello(&s, &pre);
    pages(&s, 0, 9, 1, 4096);
    zero(&s, 0, 10, 2);
    rec(&s, LM_REC_EOS, NULL, 0);
    insp("preempt", &s, s.len);
    s.len = 0;
    pre.kind = LM_HELLO_ACCEPT;
    hello(&s, &pre);
    lm_ram_run rq = {.block = 0, .count = 1, .first_page = 9};
    uint8_t rqb[16];
    lm_fmt_req_pages_encode(&rq, rqb, sizeof rqb);
    rec(&s, LM_REC_RP_REQ_PAGES, rqb, 16);
    insp("preempt-requests", &s, s.len);

    write_file("fuzz_inspect", "foreign-elf",
               "\x7f"
               "ELF\x02\x01\x01\0\0\0",
               10);
    write_file("fuzz_inspect", "foreign-qemu", "QEVM\0\0\0\x03", 8);
    write_file("fuzz_inspect", "short-magic", "LMI", 3);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus <corpus root, e.g. tests/fuzz/corpus>\n");
        return 2;
    }
    root = argv[1];
    mkdir(root, 0755);
    gen_stream();
    gen_hello();
    gen_inspect();
    return 0;
}
