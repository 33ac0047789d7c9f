/*
 * test_multifd.c - the multifd packet codecs (format), the compression
 * streams (one per channel: several packets in a row, corrupt input), and
 * what the sender writes for a given page order (over a socketpair).  The
 * channels are tested end to end in tests/integration/test_multifd.py.
 */
#include "core/internal.h"
#include "multifd/multifd.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define assert_err(e, c, needle)                                                                   \
    do {                                                                                           \
        assert_int_equal((e)->code, (c));                                                          \
        if (!strstr((e)->msg, (needle)))                                                           \
            fail_msg("error message \"%s\" lacks \"%s\"", (e)->msg, (needle));                     \
    } while (0)

/* ------------------------------------------------------------- packet codecs */

static void test_pages_hdr_roundtrip(void **state)
{
    lm_mfd_pages p = {.block = 3,
                      .normal = 200,
                      .zero = 56,
                      .compression = LM_MFD_COMP_NONE,
                      .data_len = 200 * 4096,
                      .packet_num = 0x0102030405060708ull};
    uint8_t b[LM_MFD_HDR_SIZE];
    assert_int_equal(lm_fmt_mfd_pages_hdr_encode(&p, b, sizeof b), LM_MFD_HDR_SIZE);
    /* Little-endian, documented offsets (docs/format.md). */
    assert_int_equal(b[0], 3);
    assert_int_equal(b[4], 200);
    assert_int_equal(b[6], 56);
    assert_int_equal(b[16], 0x08);
    uint32_t rec = LM_MFD_HDR_SIZE + 8 * 256 + 200 * 4096;
    lm_mfd_pages q;
    lm_error err = {0};
    assert_int_equal(lm_fmt_mfd_pages_hdr_decode(b, sizeof b, rec, 4096, &q, &err),
                     LM_MFD_HDR_SIZE);
    assert_int_equal(q.block, 3);
    assert_int_equal(q.normal, 200);
    assert_int_equal(q.zero, 56);
    assert_int_equal(q.data_len, 200 * 4096);
    assert_true(q.packet_num == p.packet_num);
    /* Too short: need more. */
    assert_int_equal(lm_fmt_mfd_pages_hdr_decode(b, LM_MFD_HDR_SIZE - 1, rec, 4096, &q, &err), 0);
    /* Encoder refuses what the decoder would refuse. */
    p.normal = p.zero = 0;
    assert_int_equal(lm_fmt_mfd_pages_hdr_encode(&p, b, sizeof b), -EINVAL);
    p.normal = 1;
    p.compression = 9;
    assert_int_equal(lm_fmt_mfd_pages_hdr_encode(&p, b, sizeof b), -EINVAL);
}

static void test_pages_hdr_bad(void **state)
{
    struct {
        lm_mfd_pages p;
        uint32_t rec_len;
        uint8_t poke_at, poke;
        const char *needle;
    } cases[] = {
        {{.normal = 1, .data_len = 4096}, 24 + 8 + 4095, 0, 0, "record of 4127 bytes"},
        {{.normal = 2, .data_len = 4096}, 24 + 16 + 4096, 0, 0, "4096 data bytes for 2 pages"},
        {{.normal = 1, .zero = 1, .compression = LM_MFD_COMP_ZSTD, .data_len = 0},
         24 + 16,
         0,
         0,
         "0 compressed bytes for 1 normal pages"},
        {{.zero = 1, .compression = LM_MFD_COMP_LZ4, .data_len = 5},
         24 + 8 + 5,
         0,
         0,
         "5 compressed bytes for 0 normal pages"},
        {{.normal = 1, .data_len = 4096}, 24 + 8 + 4096, 8, 4, "unknown compression 4"},
        {{.normal = 1, .data_len = 4096}, 24 + 8 + 4096, 10, 1, "reserved byte 10"},
        {{.normal = 1, .data_len = 4096}, 24 + 8 + 4096, 5, 0x08, "pages, must be 1..1024"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[LM_MFD_HDR_SIZE];
        assert_int_equal(lm_fmt_mfd_pages_hdr_encode(&cases[i].p, b, sizeof b), LM_MFD_HDR_SIZE);
        if (cases[i].poke_at)
            b[cases[i].poke_at] = cases[i].poke;
        lm_mfd_pages q;
        lm_error err = {0};
        assert_int_equal(lm_fmt_mfd_pages_hdr_decode(b, sizeof b, cases[i].rec_len, 4096, &q, &err),
                         -EPROTO);
        assert_err(&err, -EPROTO, cases[i].needle);
    }
}

static void test_index_list(void **state)
{
    lm_mfd_pages p = {.normal = 3, .zero = 2};
    uint64_t in[5] = {4, 5, 9, 1, 6}, out[5];
    uint8_t b[40];
    lm_error err = {0};
    assert_int_equal(lm_fmt_mfd_index_encode(in, 5, b, sizeof b), 40);
    assert_int_equal(lm_fmt_mfd_index_encode(in, 5, b, 39), -ENOSPC);
    assert_int_equal(lm_fmt_mfd_index_decode(b, sizeof b, &p, 10, out, &err), 40);
    assert_memory_equal(in, out, sizeof in);

    struct {
        uint64_t idx[5];
        uint64_t pages;
        const char *needle;
    } bad[] = {
        {{4, 5, 10, 1, 6}, 10, "page 10 past the end of block"},
        {{4, 4, 9, 1, 6}, 10, "page index 4 after 4"},
        {{4, 5, 9, 6, 1}, 10, "page index 1 after 6"},
        {{4, 5, 9, 1, 5}, 10, "page 5 is both normal and zero"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lm_error_clear(&err);
        lm_fmt_mfd_index_encode(bad[i].idx, 5, b, sizeof b);
        assert_int_equal(lm_fmt_mfd_index_decode(b, sizeof b, &p, bad[i].pages, out, &err),
                         -EPROTO);
        assert_err(&err, -EPROTO, bad[i].needle);
    }
    lm_error_clear(&err);
    assert_int_equal(lm_fmt_mfd_index_decode(b, 39, &p, 10, out, &err), -EPROTO);
    assert_err(&err, -EPROTO, "index list cut short");
}

/* ------------------------------------------------------------- compression */

static void fill_pages(uint8_t *p, unsigned n, unsigned seed)
{
    /* Compressible but not trivial: text-like runs with a varying byte. */
    for (size_t i = 0; i < (size_t)n * 4096; i++)
        p[i] = (uint8_t)("livemig multifd "[i % 16] + ((i / 512 + seed) % 7));
}

static void roundtrip_method(lm_mfd_comp method)
{
    lm_mfd_codec *tx = NULL, *rx = NULL;
    lm_error err = {0};
    assert_int_equal(lm_mfd_codec_new(method, 1, true, &tx, &err), 0);
    assert_int_equal(lm_mfd_codec_new(method, 0, false, &rx, &err), 0);
    unsigned n = 64;
    uint8_t *pages = malloc((size_t)n * 4096), *back = malloc((size_t)n * 4096);
    size_t cap = lm_mfd_compress_bound(method, (size_t)n * 4096);
    uint8_t *c = malloc(cap);
    /* Several packets through the same pair of streams, each decodable on
     * its own arrival (sync flush), pieces of different lengths. */
    for (unsigned k = 0; k < 4; k++) {
        fill_pages(pages, n, k);
        struct iovec iov[3] = {
            {pages, 4096}, {pages + 4096, 10 * 4096}, {pages + 11 * 4096, (size_t)(n - 11) * 4096}};
        long len = lm_mfd_compress(tx, iov, 3, c, cap, &err);
        assert_true(len > 0);
        assert_true((size_t)len < (size_t)n * 4096 / 2); /* it did compress */
        memset(back, 0xee, (size_t)n * 4096);
        assert_int_equal(lm_mfd_decompress(rx, c, (size_t)len, back, (size_t)n * 4096, &err), 0);
        assert_memory_equal(pages, back, (size_t)n * 4096);
    }
    lm_mfd_codec_free(rx);
    rx = NULL;
    assert_int_equal(lm_mfd_codec_new(method, 0, false, &rx, &err), 0);
    /* Garbage is refused with a message naming the method, never a crash. */
    uint8_t junk[256];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    lm_error_clear(&err);
    assert_true(lm_mfd_decompress(rx, junk, sizeof junk, back, 4096, &err) < 0);
    assert_int_equal(err.code, -EPROTO);
    assert_non_null(strstr(err.msg, method == LM_MFD_COMP_ZLIB   ? "zlib"
                                    : method == LM_MFD_COMP_ZSTD ? "zstd"
                                                                 : "lz4"));
    lm_mfd_codec_free(tx);
    lm_mfd_codec_free(rx);
    free(pages);
    free(back);
    free(c);
}

static void test_zlib(void **state)
{
    roundtrip_method(LM_MFD_COMP_ZLIB);
}

static void test_zstd(void **state)
{
    roundtrip_method(LM_MFD_COMP_ZSTD);
}

static void test_lz4(void **state)
{
    roundtrip_method(LM_MFD_COMP_LZ4);
}

/* A packet that decodes to fewer or more bytes than its header says. */
static void test_length_mismatch(void **state)
{
    lm_mfd_comp methods[] = {LM_MFD_COMP_ZLIB, LM_MFD_COMP_ZSTD, LM_MFD_COMP_LZ4};
    for (size_t i = 0; i < 3; i++) {
        lm_mfd_codec *tx = NULL, *rx = NULL;
        lm_error err = {0};
        assert_int_equal(lm_mfd_codec_new(methods[i], 1, true, &tx, &err), 0);
        assert_int_equal(lm_mfd_codec_new(methods[i], 0, false, &rx, &err), 0);
        uint8_t *pages = malloc(2 * 4096), *back = malloc(3 * 4096);
        size_t cap = lm_mfd_compress_bound(methods[i], 2 * 4096);
        uint8_t *c = malloc(cap);
        fill_pages(pages, 2, 1);
        struct iovec v = {pages, 2 * 4096};
        long len = lm_mfd_compress(tx, &v, 1, c, cap, &err);
        assert_true(len > 0);
        assert_true(lm_mfd_decompress(rx, c, (size_t)len, back, 3 * 4096, &err) < 0);
        assert_non_null(strstr(err.msg, "header says"));
        lm_mfd_codec_free(tx);
        lm_mfd_codec_free(rx);
        free(pages);
        free(back);
        free(c);
    }
}

static void nop(void *o)
{
}

/* The page scan may come back to the start of a block with nothing queued
 * from the other blocks in between: the sender must not put the pages of
 * both sweeps in one packet, whose index list must ascend (the receiver
 * refuses it otherwise: a failure seen once in 25 integration runs). */
static void test_sender_keeps_packets_ascending(void **state)
{
    static const lm_host_ops ops = {.stop = nop, .start = nop};
    lm_mig *m = NULL;
    lm_error err = {0};
    size_t len = 64 * 4096;
    uint8_t *mem = aligned_alloc(4096, len);
    memset(mem, 0x5a, len); /* no zero pages: every page goes as data */
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_RUNNING, &m, &err), 0);
    assert_int_equal(lm_ram_add(m, "ram0", mem, len, 4096, &err), 0);

    int main_sv[2], ch_sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, main_sv), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, ch_sv), 0);
    lm_chan *main_c = NULL, *ch = NULL;
    assert_int_equal(lm_chan_new(main_sv[0], "main channel", &main_c, &err), 0);
    assert_int_equal(lm_chan_new(ch_sv[0], "multifd channel 0", &ch, &err), 0);
    lm_mfd_send_cfg cfg = {.compression = LM_COMPRESS_NONE, .zpd = LM_ZPD_MULTIFD};
    lm_mfd_send *s = NULL;
    assert_int_equal(lm_mfd_send_new(&m->mem, &m->stats.mfd, main_c, &ch, 1, &cfg, &s, &err), 0);

    /* One sweep ends at pages 40, 41; the next starts again at 3, 4. */
    uint64_t order[] = {40, 41, 3, 4};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(lm_mfd_queue_page(s, 0, order[i], &err), 0);
    assert_int_equal(lm_mfd_send_sync(s, &err), 0);
    assert_int_equal(lm_mfd_send_finish(s, &err), 0);
    lm_mfd_send_free(s);

    /* Read back what the channel carried: every packet must decode. */
    static uint8_t buf[64 * 4096 + 4096];
    size_t got = 0;
    ssize_t n;
    shutdown(ch_sv[1], SHUT_WR);
    while ((n = read(ch_sv[1], buf + got, sizeof buf - got)) > 0)
        got += (size_t)n;
    size_t off = 0;
    unsigned packets = 0, pages = 0;
    while (off + LM_REC_HDR_SIZE <= got) {
        lm_rec_hdr h;
        assert_true(lm_fmt_rec_hdr_decode(buf + off, got - off, &h, &err) > 0);
        const uint8_t *pl = buf + off + LM_REC_HDR_SIZE;
        off += LM_REC_HDR_SIZE + h.len;
        if (h.type != LM_REC_MULTIFD_PAGES)
            continue;
        lm_mfd_pages p;
        uint64_t idx[LM_MFD_MAX_PAGES];
        assert_int_equal(lm_fmt_mfd_pages_hdr_decode(pl, h.len, h.len, 4096, &p, &err),
                         LM_MFD_HDR_SIZE);
        lm_error_clear(&err);
        int rc = lm_fmt_mfd_index_decode(pl + LM_MFD_HDR_SIZE, h.len - LM_MFD_HDR_SIZE, &p, 64, idx,
                                         &err);
        if (rc < 0)
            fail_msg("packet %u refused: %s", packets, err.msg);
        packets++;
        pages += p.normal + p.zero;
    }
    assert_int_equal(off, got);
    assert_int_equal(pages, 4);
    assert_int_equal(packets, 2);
    close(ch_sv[1]);
    close(main_sv[1]);
    lm_chan_free(main_c);
    lm_mig_free(m);
    free(mem);
}

/* ------------------------------------------- the re-entrant receive sync */

/* The same lm_mfd_recv_sync serves sockets and files (seed 004): called
 * again for a sequence already reached, or with an older one, it returns
 * at once; a newer one waits for every channel again. */
static void test_recv_sync_file(void **state)
{
    static const lm_host_ops ops = {.stop = nop, .start = nop};
    lm_mig *m = NULL;
    lm_error err = {0};
    size_t len = 8 * 4096;
    uint8_t *mem = aligned_alloc(4096, len);
    memset(mem, 0, len);
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_INMIGRATE, &m, &err), 0);
    assert_int_equal(lm_ram_add(m, "ram0", mem, len, 4096, &err), 0);
    assert_int_equal(lm_mem_incoming_prepare(&m->mem, &err), 0);
    lm_ram_block *b = &m->mem.blocks[0];

    char path[] = "/tmp/lm-test-recv-sync-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    uint8_t page[4096];
    for (unsigned i = 0; i < 8; i++) {
        memset(page, 0x10 + i, sizeof page);
        assert_int_equal(pwrite(fd, page, sizeof page, (off_t)i * 4096), 4096);
    }
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    lm_chan *main_c = NULL;
    assert_int_equal(lm_chan_new(pfd[0], "file", &main_c, &err), 0);
    int fds[3] = {fd, fd, fd};
    lm_mfd_recv *r = NULL;
    assert_int_equal(lm_mfd_recv_new_file(&m->stats.mfd, main_c, fds, 3, false, path, &r, &err), 0);
    /* Round 1: pages 0..3, spread over the readers. */
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(lm_mfd_recv_file_read(r, b, i, 1, (uint64_t)i * 4096, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(mem[i * 4096 + 17], 0x10 + i);
    assert_int_equal(mem[4 * 4096], 0);
    /* Again, and older: at once. */
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 0, &err), 0);
    /* Round 2: pages 4..7 in one run, then a newer sync. */
    assert_int_equal(lm_mfd_recv_file_read(r, b, 4, 4, 4 * 4096, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 2, &err), 0);
    for (unsigned i = 4; i < 8; i++)
        assert_int_equal(mem[i * 4096 + 4095], 0x10 + i);
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 2, &err), 0);
    /* A read past the end of the file: the reader fails, and says so. */
    assert_int_equal(lm_mfd_recv_file_read(r, b, 0, 1, 64 * 4096, &err), 0);
    assert_true(lm_mfd_recv_sync(r, 3, &err) < 0);
    if (!strstr(err.msg, "truncated"))
        fail_msg("error \"%s\" lacks \"truncated\"", err.msg);
    lm_mfd_recv_shutdown(r, "test over");
    lm_mfd_recv_free(r);
    lm_chan_free(main_c);
    close(pfd[1]);
    close(fd);
    lm_mig_free(m);
    free(mem);
}

static void send_u64_rec(int fd, uint8_t type, uint64_t v)
{
    uint8_t b[LM_REC_HDR_SIZE + 8];
    lm_fmt_rec_hdr_encode(type, 8, b, LM_REC_HDR_SIZE);
    lm_fmt_u64_encode(v, b + LM_REC_HDR_SIZE, 8);
    assert_int_equal(write(fd, b, sizeof b), sizeof b);
}

static void test_recv_sync_socket(void **state)
{
    static const lm_host_ops ops = {.stop = nop, .start = nop};
    lm_mig *m = NULL;
    lm_error err = {0};
    assert_int_equal(lm_mig_new(&ops, NULL, LM_RUN_INMIGRATE, &m, &err), 0);
    int main_sv[2], sv[2][2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, main_sv), 0);
    lm_chan *main_c = NULL, *ch[2];
    assert_int_equal(lm_chan_new(main_sv[0], "main channel", &main_c, &err), 0);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]), 0);
        assert_int_equal(lm_chan_new(sv[i][0], "multifd channel", &ch[i], &err), 0);
    }
    lm_mfd_recv *r = NULL;
    assert_int_equal(lm_mfd_recv_new(&m->mem, &m->place, &m->stats.mfd, main_c, ch, 2, &r, &err),
                     0);
    for (unsigned i = 0; i < 2; i++)
        send_u64_rec(sv[i][1], LM_REC_MULTIFD_SYNC, 1);
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0); /* again: at once */
    for (unsigned i = 0; i < 2; i++)
        send_u64_rec(sv[i][1], LM_REC_MULTIFD_SYNC, 2);
    assert_int_equal(lm_mfd_recv_sync(r, 2, &err), 0);
    assert_int_equal(lm_mfd_recv_sync(r, 1, &err), 0); /* older: at once */
    for (unsigned i = 0; i < 2; i++) {
        uint8_t b[LM_REC_HDR_SIZE];
        lm_fmt_rec_hdr_encode(LM_REC_EOS, 0, b, sizeof b);
        assert_int_equal(write(sv[i][1], b, sizeof b), sizeof b);
    }
    assert_int_equal(lm_mfd_recv_finish(r, &err), 0);
    lm_mfd_recv_free(r);
    for (unsigned i = 0; i < 2; i++)
        close(sv[i][1]);
    close(main_sv[1]);
    lm_chan_free(main_c);
    lm_mig_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pages_hdr_roundtrip),
        cmocka_unit_test(test_pages_hdr_bad),
        cmocka_unit_test(test_index_list),
        cmocka_unit_test(test_zlib),
        cmocka_unit_test(test_zstd),
        cmocka_unit_test(test_lz4),
        cmocka_unit_test(test_length_mismatch),
        cmocka_unit_test(test_sender_keeps_packets_ascending),
        cmocka_unit_test(test_recv_sync_file),
        cmocka_unit_test(test_recv_sync_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
