/*
 * fuzz_mapped.c - libFuzzer target for the mapped-ram file parser: what a
 * destination checks in a file before it reads a page (docs/format.md §9).
 * Input: a u64 (LE) file size, then the file's first bytes (so a tiny input
 * stands for a file of GiBs: regions past the bytes given are not read).
 * The bytes are parsed as the loader does: the HELLO, the records (the
 * walker jumps over each MAPPED_RAM record's regions), every MAPPED_RAM
 * payload checked against the block table before it and the file size,
 * every bitmap inside the bytes given checked.  Beyond "no crash": errors
 * carry their code and a message; an accepted layout re-encodes to the same
 * bytes, its regions lie inside the file, do not overlap and its pages are
 * 1 MiB-aligned.
 */
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

static void check_err(long rc, const lm_error *err)
{
    if (rc < 0) {
        CHECK(err->code == rc);
        CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL);
        CHECK(err->msg[0] != '\0');
    }
}

typedef struct file {
    const uint8_t *base; /* the file's first bytes */
    size_t have;
    uint64_t size; /* the file's size */
    lm_fmt_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nblocks;
    bool have_blocks;
} file;

static void check_layout(const lm_mapped_layout *l, const uint8_t *payload, size_t len)
{
    uint8_t out[LM_MAPPED_MAX];
    CHECK(lm_fmt_mapped_encode(l, out, sizeof out) == (int)len);
    CHECK(memcmp(out, payload, len) == 0);
    CHECK(l->version == LM_MAPPED_VERSION);
    for (uint32_t i = 0; i < l->nblocks; i++) {
        const lm_mapped_block *b = &l->b[i];
        CHECK(b->pages_offset % LM_MAPPED_ALIGN == 0);
        CHECK(b->bitmap_offset >= l->record_end);
        CHECK(b->bitmap_offset + lm_mapped_bitmap_region(b->npages) <= l->resume);
        CHECK(b->pages_offset >= l->record_end);
        CHECK(b->npages * b->page_size <= l->resume - b->pages_offset);
    }
}

/* What the loader does at a MAPPED_RAM record (file/mapped.c). */
static int on_record(void *opaque, const lm_rec_hdr *h, const uint8_t *payload)
{
    file *f = opaque;
    if (h->type == LM_REC_RAM_BLOCKS) {
        lm_error e = {0};
        uint32_t n = 0;
        if (lm_fmt_ram_blocks_decode(payload, h->len, f->blocks, LM_RAM_MAX_BLOCKS, &n, &e) > 0) {
            f->nblocks = n;
            f->have_blocks = true;
        }
        return 0;
    }
    if (h->type != LM_REC_MAPPED_RAM || !f->have_blocks)
        return 0;
    lm_mapped_layout l;
    lm_error e = {0};
    int rc = lm_fmt_mapped_decode(payload, h->len, &l, &e);
    CHECK(rc == (int)h->len); /* the walker decoded it already */
    check_layout(&l, payload, h->len);
    uint64_t here = (uint64_t)(payload - f->base) + h->len;
    if (l.record_end != here)
        return 0; /* the loader's "corrupt header" */
    rc = lm_fmt_mapped_check(&l, f->blocks, f->nblocks, f->size, &e);
    check_err(rc, &e);
    if (rc < 0)
        return 0;
    CHECK(l.resume <= f->size);
    for (uint32_t i = 0; i < l.nblocks; i++) {
        const lm_mapped_block *b = &l.b[i];
        uint64_t n = lm_mapped_bitmap_region(b->npages);
        if (b->bitmap_offset > f->have || n > f->have - b->bitmap_offset)
            continue; /* beyond the bytes given */
        lm_error e2 = {0};
        int64_t present = lm_fmt_mapped_bitmap_check(f->base + b->bitmap_offset, b->npages, i, &e2);
        check_err(present, &e2);
        CHECK(present < 0 || (uint64_t)present <= b->npages);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    file f = {.base = data + 8, .have = size - 8};
    for (int i = 0; i < 8; i++)
        f.size |= (uint64_t)data[i] << (8 * i);
    if (f.size < f.have)
        f.size = f.have;

    /* The layout decoder alone, on the bytes after the size. */
    lm_mapped_layout l;
    lm_error err = {0};
    int rc = lm_fmt_mapped_decode(f.base, f.have, &l, &err);
    check_err(rc, &err);
    if (rc > 0)
        check_layout(&l, f.base, f.have);

    /* The whole file as the destination reads it. */
    lm_error_clear(&err);
    long w = lm_fmt_walk(f.base, f.have, true, on_record, &f, &err);
    check_err(w, &err);
    CHECK(w <= (long)f.have);
    return 0;
}
