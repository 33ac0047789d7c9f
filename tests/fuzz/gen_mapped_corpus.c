/*
 * gen_mapped_corpus.c - writes the seed corpus of fuzz_mapped: mapped-ram
 * file images (a u64 file size, then the file's first bytes) built with
 * the encoders, plus variants that each hit one of the parser's checks.
 * Not built by CMake; build and run it by hand from the repository root
 * after `make build`:
 *
 *   cc -D_GNU_SOURCE -I include -I src tests/fuzz/gen_mapped_corpus.c \
 *      build/liblivemig.a -lzstd -llz4 -lz -ljansson -lpthread -o /tmp/gen_mapped
 *   /tmp/gen_mapped tests/fuzz/corpus/fuzz_mapped
 *
 * The output is deterministic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "format/format.h"

static const char *dir;
static uint8_t buf[1 << 16];
static size_t len;

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void rec(uint8_t type, const void *payload, uint32_t n)
{
    lm_fmt_rec_hdr_encode(type, n, buf + len, LM_REC_HDR_SIZE);
    memcpy(buf + len + LM_REC_HDR_SIZE, payload, n);
    len += LM_REC_HDR_SIZE + n;
}

static void out(const char *name, uint64_t file_size, const uint8_t *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    uint8_t sz[8];
    put64(sz, file_size);
    if (!f || fwrite(sz, 1, 8, f) != 8 || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* A file: HELLO, RAM_BLOCKS, MAPPED_RAM, the bitmaps (pages half present),
 * EOS after the regions (not in the bytes: the size says where). */
static size_t image(const lm_fmt_block *t, uint32_t n, lm_mapped_layout *l, size_t *payload_at)
{
    len = 0;
    lm_hello h = {.version = LM_FORMAT_VERSION,
                  .role = LM_ROLE_MAIN,
                  .page_size = 4096,
                  .features = LM_FEAT_MAPPED_RAM};
    len += (size_t)lm_fmt_hello_encode(&h, buf, sizeof buf);
    uint8_t p[LM_MAPPED_MAX + 8192];
    int k = lm_fmt_ram_blocks_encode(t, n, p, sizeof p);
    rec(LM_REC_RAM_BLOCKS, p, (uint32_t)k);
    uint32_t mlen = LM_MAPPED_HDR_SIZE + n * LM_MAPPED_ENTRY_SIZE;
    lm_fmt_mapped_plan(t, n, len + LM_REC_HDR_SIZE + mlen, l);
    k = lm_fmt_mapped_encode(l, p, sizeof p);
    *payload_at = len + LM_REC_HDR_SIZE;
    rec(LM_REC_MAPPED_RAM, p, (uint32_t)k);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *bm = buf + l->b[i].bitmap_offset;
        uint64_t nb = lm_mapped_bitmap_bytes(l->b[i].npages);
        memset(bm, 0x5a, nb);
        if (l->b[i].npages % 8)
            bm[nb - 1] &= (uint8_t)((1u << (l->b[i].npages % 8)) - 1);
        lm_fmt_mapped_bitmap_seal(bm, l->b[i].npages);
        if (bm + lm_mapped_bitmap_region(l->b[i].npages) > buf + len)
            len = (size_t)(bm - buf) + lm_mapped_bitmap_region(l->b[i].npages);
    }
    return len;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    dir = argv[1];
    mkdir(dir, 0755);
    lm_fmt_block t[3] = {{"ram", 4096, 1 << 20}, {"ledger", 4096, 12288}, {"vga", 4096, 4096 * 5}};
    lm_mapped_layout l;
    size_t at;
    for (uint32_t n = 1; n <= 3; n++) {
        char name[32];
        size_t sz = image(t, n, &l, &at);
        snprintf(name, sizeof name, "good-%u", n);
        out(name, l.resume + 16, buf, sz);
    }
    size_t sz = image(t, 3, &l, &at);
    uint8_t keep[sizeof buf];
    memcpy(keep, buf, sz);
    out("truncated", l.resume - 1, keep, sz);
    out("layout-only", 0, keep + at, LM_MAPPED_HDR_SIZE + 3 * LM_MAPPED_ENTRY_SIZE);
    memcpy(buf, keep, sz);
    put64(buf + at + 8, l.record_end - 8);
    out("corrupt-header", l.resume, buf, sz);
    memcpy(buf, keep, sz);
    buf[at] = 7;
    out("version", l.resume, buf, sz);
    memcpy(buf, keep, sz);
    put64(buf + at + 24 + 24, l.b[0].pages_offset + 4096);
    out("misaligned", l.resume, buf, sz);
    memcpy(buf, keep, sz);
    put64(buf + at + 24 + 32 + 16, l.b[0].bitmap_offset);
    out("overlap", l.resume, buf, sz);
    memcpy(buf, keep, sz);
    buf[l.b[1].bitmap_offset] ^= 1;
    out("corrupt-bitmap", l.resume, buf, sz);
    memcpy(buf, keep, sz);
    put64(buf + at + 24 + 8, 1ull << 62);
    out("huge-block", l.resume, buf, sz);
    return 0;
}
