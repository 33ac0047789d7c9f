/*
 * inspect.h - the inspector behind `livemig inspect` (QEMU's
 * scripts/analyze-migration.py for livemig): what a file holds, from its
 * first bytes, and for a captured stream its HELLO, block table, per-block
 * page counts, device sections, markers, and whether every byte of it is
 * valid, with the offset of the first problem.
 *
 * Internal: the wire format is not part of the public API, so the CLI's
 * tools/inspect.c is the one tool file that includes this header (and
 * format.h).  Pure like the rest of format/: no I/O, no allocation, no
 * threads; the decoding is lm_fmt_walk_rec's, this only accounts and adds
 * the checks that need the whole stream (sections bound to an id, nothing
 * after EOS, a complete ending).  Fuzzed by tests/fuzz/fuzz_inspect.c.
 */
#ifndef LM_FORMAT_INSPECT_H
#define LM_FORMAT_INSPECT_H

#include "format/format.h"

/* What a file is, from its first bytes (lm_insp_detect).  A new layout
 * (mapped-ram snapshot files) adds a kind and a magic to the table in
 * inspect.c, and the tool a branch for it. */
typedef enum lm_insp_kind {
    LM_INSP_STREAM = 1, /* a livemig channel stream: HELLO "LMIG", then records */
} lm_insp_kind;

/* The kind of buf (its first bytes), or -EPROTO with a message that names
 * what was found instead (empty, too short, a QEMU stream, other bytes). */
int lm_insp_detect(const uint8_t *buf, size_t len, lm_error *err);
const char *lm_insp_kind_name(int kind);

/* Device sections the inspector keeps apart; more is an error (of the
 * inspector, said so), far above what a source registers. */
#define LM_INSP_MAX_SECTIONS 256

typedef struct lm_insp_block {
    lm_fmt_block b;
    uint64_t data_pages, data_runs;      /* RAM_PAGES */
    uint64_t zero_pages, zero_runs;      /* RAM_ZERO */
    uint64_t xbzrle_pages, xbzrle_bytes; /* RAM_XBZRLE: pages, bytes of encoding */
    uint64_t mfd_normal, mfd_zero;       /* MULTIFD_PAGES */
    uint64_t mfd_comp_pages;             /* of mfd_normal: sent compressed ... */
    uint64_t mfd_comp_bytes;             /* ... in that many bytes */
    uint64_t discard_pages, req_pages;   /* POSTCOPY_DISCARD, RP_REQ_PAGES */
    uint64_t mapped_present;             /* mapped-ram: bits set in its bitmap */
} lm_insp_block;

typedef struct lm_insp_section {
    uint32_t id, instance, version;
    char name[LM_SECTION_NAME_MAX + 1];
    bool iterable;       /* opened by SECTION_START (else SECTION_FULL) */
    bool ended;          /* SECTION_END seen */
    uint64_t records;    /* START/PART/END/FULL records of this id */
    uint64_t data_bytes; /* device data in them (without section headers) */
    uint64_t offset;     /* of its first record */
} lm_insp_section;

/* The caller's hooks (each may be NULL), called in stream order:
 *  - data: checks the page data of a compressed MULTIFD_PAGES packet.
 *    format/ has no codecs (it sits below multifd/), so the caller decodes
 *    it with the channel's stream; raw_len = normal pages x page size.
 *  - record: sees every valid record (`livemig inspect --records`).
 * Each returns 0, or < 0 with err naming what was wrong. */
typedef struct lm_insp_hooks {
    int (*data)(void *opaque, const lm_fmt_rec *r, uint64_t raw_len, lm_error *err);
    int (*record)(void *opaque, const lm_fmt_rec *r, lm_error *err);
    void *opaque;
} lm_insp_hooks;

typedef struct lm_insp {
    uint64_t size;  /* bytes inspected */
    uint64_t valid; /* end of the last complete, valid record */
    lm_hello hello; /* the channel's HELLO */
    bool have_hello;
    bool to_dst; /* source -> destination (HELLO REQUEST/RESUME) */
    uint64_t records;
    uint64_t rec_count[256], rec_bytes[256]; /* by type; bytes with headers */
    uint32_t tables;                         /* RAM_BLOCKS records */
    uint32_t nblocks;
    lm_insp_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nsections;
    lm_insp_section sections[LM_INSP_MAX_SECTIONS];
    uint64_t last_pass;                                /* value of the last RAM_PASS */
    int64_t switchover_off, postcopy_run_off, eos_off; /* -1: none */
    uint32_t comp_seen;  /* bit m: a MULTIFD_PAGES used compression m */
    uint8_t comp_method; /* the channel's compression (0 until one is seen) */
    uint64_t mfd_packets;
    uint64_t mfd_normal, mfd_zero; /* over all blocks (known or not) */
    bool have_error;               /* an ERROR record */
    lm_status_msg error;
    int64_t error_off;
    bool have_shut; /* an RP_SHUT record */
    int32_t shut_status;
    const lm_insp_hooks *hooks; /* lm_insp_stream's argument */
    const uint8_t *buf;         /* ... and the stream, for the mapped-ram regions */
    size_t len;
    /* A mapped-ram file (docs/format.md §9.2): its MAPPED_RAM record, the
     * layout (absolute file offsets), and the file offset of buf[0] (the
     * migration URI's offset=, when the caller passed the stream from
     * there).  Every bitmap is checked (CRC, no bit past the block) and
     * counted into blocks[].mapped_present; the page regions are jumped
     * over, the stream goes on at layout.resume. */
    bool mapped;
    int64_t mapped_off;
    uint64_t mapped_base;
    lm_mapped_layout layout;
    /* The first problem (err.code 0: none) and where it is. */
    lm_error err;
    uint64_t err_off;
} lm_insp;

/* Inspects one channel stream (buf, len: the whole capture) into *s,
 * which it initialises.  blocks/nblocks: the table of the migration's main
 * channel for a multifd channel's stream (NULL otherwise).  hooks may be
 * NULL.  Returns 0 when the whole stream is valid and complete, or the
 * first problem's negative code (also in s->err, with the byte offset in
 * s->err_off and in the message); the counts cover everything before the
 * problem. */
int lm_insp_stream(lm_insp *s, const uint8_t *buf, size_t len, const lm_fmt_block *blocks,
                   uint32_t nblocks, const lm_insp_hooks *hooks);

#endif /* LM_FORMAT_INSPECT_H */
