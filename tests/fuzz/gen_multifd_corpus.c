/*
 * gen_multifd_corpus.c - writes the seed corpus of fuzz_multifd: multifd
 * channel streams built with the encoders and the compressors (plain,
 * zero-only, mixed, zlib, zstd, lz4 packets, SYNC, EOS) plus variants that
 * hit the decoders' checks.  Not built by CMake; build and run it by hand
 * from the repository root after `make build`:
 *
 *   cc -D_GNU_SOURCE -I include -I src tests/fuzz/gen_multifd_corpus.c \
 *      build/liblivemig.a -lzstd -llz4 -lz -ljansson -lpthread -o /tmp/gen_mfd
 *   /tmp/gen_mfd tests/fuzz/corpus/fuzz_multifd
 *
 * The output is deterministic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "multifd/multifd.h"

static const char *dir;
static uint8_t buf[8 << 20];
static size_t len;

static void rec(uint8_t type, const void *payload, uint32_t n)
{
    lm_fmt_rec_hdr_encode(type, n, buf + len, LM_REC_HDR_SIZE);
    memcpy(buf + len + LM_REC_HDR_SIZE, payload, n);
    len += LM_REC_HDR_SIZE + n;
}

static void packet(lm_mfd_codec *c, uint32_t block, const uint64_t *idx, uint16_t normal,
                   uint16_t zero, uint8_t comp, uint64_t num, unsigned seed)
{
    static uint8_t pl[LM_MFD_HDR_SIZE + 8 * LM_MFD_MAX_PAGES + (2 << 20)];
    static uint8_t pages[256 * 4096];
    for (size_t i = 0; i < (size_t)normal * 4096; i++)
        pages[i] = (uint8_t)("corpus text page "[i % 17] + (i / 999 + seed) % 5);
    lm_mfd_pages h = {.block = block, .normal = normal, .zero = zero, .compression = comp,
                      .packet_num = num};
    uint8_t *data = pl + LM_MFD_HDR_SIZE + 8 * (normal + zero);
    if (comp && normal) {
        struct iovec v = {pages, (size_t)normal * 4096};
        long n = lm_mfd_compress(c, &v, 1, data, 2 << 20, NULL);
        if (n < 0)
            exit(1);
        h.data_len = (uint32_t)n;
    } else {
        h.data_len = (uint32_t)normal * 4096;
        memcpy(data, pages, h.data_len);
    }
    lm_fmt_mfd_pages_hdr_encode(&h, pl, LM_MFD_HDR_SIZE);
    lm_fmt_mfd_index_encode(idx, normal + zero, pl + LM_MFD_HDR_SIZE, 8 * (normal + zero));
    rec(LM_REC_MULTIFD_PAGES, pl, LM_MFD_HDR_SIZE + 8 * (normal + zero) + h.data_len);
}

static void sync_rec(uint64_t seq)
{
    uint8_t p[8];
    lm_fmt_u64_encode(seq, p, 8);
    rec(LM_REC_MULTIFD_SYNC, p, 8);
}

static void out(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f))
        exit(1);
    len = 0;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    dir = argv[1];
    mkdir(dir, 0755);
    uint64_t idx[16] = {1, 2, 3, 7, 0, 5, 9};
    packet(NULL, 0, idx, 4, 0, 0, 1, 0);
    sync_rec(1);
    packet(NULL, 1, idx, 3, 1, 0, 2, 1);
    rec(LM_REC_EOS, NULL, 0);
    out("plain");
    uint64_t z[3] = {0, 4, 7};
    packet(NULL, 2, z, 0, 3, 0, 1, 0);
    out("zero-only");
    for (uint8_t m = LM_MFD_COMP_ZLIB; m <= LM_MFD_COMP_LZ4; m++) {
        lm_mfd_codec *c;
        if (lm_mfd_codec_new((lm_mfd_comp)m, 1, true, &c, NULL) < 0)
            return 1;
        packet(c, 0, idx, 4, 0, m, 1, 0);
        packet(c, 0, idx, 3, 1, m, 2, 1);
        sync_rec(1);
        lm_mfd_codec_free(c);
        static const char *names[] = {"", "zlib", "zstd", "lz4"};
        out(names[m]);
    }
    uint64_t past[1] = {3072};
    packet(NULL, 0, past, 1, 0, 0, 1, 0);
    out("page-past-end");
    uint64_t dup[2] = {5, 5};
    packet(NULL, 0, dup, 1, 1, 0, 1, 0);
    out("normal-and-zero");
    return 0;
}
