/*
 * fuzz_inspect.c - libFuzzer target for the entry of `livemig inspect`:
 * lm_insp_stream on the whole input as a captured file (the corpus files
 * are such files: `livemig inspect tests/fuzz/corpus/fuzz_inspect/X`
 * reads them the same way), once alone and once with a block table given
 * (as for a multifd channel inspected after its main channel).  Besides
 * "no crash, no sanitizer report", properties a wrong inspector breaks:
 *  - the result is err.code, and a failure names an offset inside the
 *    input, in the message and in err_off, and never follows a valid end;
 *  - the counts add up: records by type sum to the records, their bytes
 *    plus the HELLO to the valid length; a valid stream is valid to its
 *    last byte;
 *  - every counted page lies in its block; sections are bounded; a
 *    mapped-ram file's regions lie inside the input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/inspect.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #c);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const lm_fmt_block table[2] = {
    {.name = "pc.ram", .page_size = 4096, .length = 64 * 4096},
    {.name = "ledger", .page_size = 4096, .length = 4 * 4096},
};

static void run(const uint8_t *p, size_t n, const lm_fmt_block *t, uint32_t nt)
{
    static lm_insp s;
    int rc = lm_insp_stream(&s, p, n, t, nt, NULL);
    CHECK(rc == s.err.code && rc <= 0);
    CHECK(s.size == n && s.valid <= n);
    if (rc < 0) {
        CHECK(s.err.msg[0] != '\0' && memchr(s.err.msg, '\0', sizeof s.err.msg));
        CHECK(strstr(s.err.msg, "offset") != NULL);
        CHECK(s.err_off <= n);
    } else {
        CHECK(s.have_hello && s.valid == n);
        CHECK(!s.to_dst || s.eos_off >= 0 || s.have_error);
    }
    uint64_t recs = 0, bytes = 0;
    for (int i = 0; i < 256; i++) {
        recs += s.rec_count[i];
        bytes += s.rec_bytes[i];
    }
    CHECK(recs == s.records);
    /* a mapped-ram file's regions lie between two records */
    uint64_t gap = s.mapped ? s.layout.resume - s.layout.record_end : 0;
    if (s.have_hello)
        CHECK(LM_HELLO_SIZE + bytes + gap == s.valid);
    else
        CHECK(s.records == 0);
    CHECK(s.nblocks <= LM_RAM_MAX_BLOCKS && s.nsections <= LM_INSP_MAX_SECTIONS);
    for (uint32_t i = 0; i < s.nblocks; i++) {
        const lm_insp_block *b = &s.blocks[i];
        CHECK(b->b.page_size >= 4096 && b->b.length % b->b.page_size == 0);
        CHECK(b->mfd_comp_pages <= b->mfd_normal);
        CHECK(b->mapped_present <= b->b.length / b->b.page_size);
        CHECK(!b->mapped_present || s.mapped);
    }
    if (s.mapped)
        CHECK(s.mapped_off >= 0 && s.layout.record_end - s.mapped_base <= n &&
              s.layout.resume - s.mapped_base <= n);
    if (s.eos_off >= 0)
        CHECK((uint64_t)s.eos_off + LM_REC_HDR_SIZE <= s.valid);
    if (s.switchover_off >= 0)
        CHECK((uint64_t)s.switchover_off < s.valid);
    /* the dispatcher agrees with the inspector about foreign input */
    lm_error e = {0};
    int kind = lm_insp_detect(p, n, &e);
    if (kind < 0)
        CHECK(rc < 0 && !s.have_hello);
    else
        CHECK(kind == LM_INSP_STREAM);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, NULL, 0);
    run(data, size, table, 2);
    return 0;
}
