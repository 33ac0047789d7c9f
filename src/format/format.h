/*
 * format.h - pure encoders/decoders of the livemig wire format v1.
 *
 * docs/format.md is the normative byte-level spec; this header is its C
 * face.  Every function here is pure: no I/O, no threads, no allocation.
 * Encoders write into a caller buffer and return the bytes written, or
 * -ENOSPC when cap is too small.  Decoders return the bytes consumed (> 0),
 * 0 when more input is needed, or a negative code with a message in err
 * naming what was wrong.  Everything from the peer is hostile input: every
 * length, count and index is bounded here or by the caller's limits.
 *
 * All integers are little-endian.
 */
#ifndef LM_FORMAT_H
#define LM_FORMAT_H

#include "livemig.h"

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ HELLO */

#define LM_HELLO_MAGIC 0x47494d4cu /* "LMIG" as bytes 4c 4d 49 47 */
#define LM_FORMAT_VERSION 1
#define LM_HELLO_SIZE 48
#define LM_SESSION_ID_LEN 16

typedef enum lm_chan_role {
    LM_ROLE_MAIN = 1,    /* sections, RAM, commands; return path on the same socket */
    LM_ROLE_MULTIFD = 2, /* page batches (multifd issue) */
    LM_ROLE_PREEMPT = 3, /* urgent postcopy pages (postcopy issue) */
} lm_chan_role;

typedef enum lm_hello_kind {
    LM_HELLO_REQUEST = 0, /* source -> destination, first bytes of a connection */
    LM_HELLO_ACCEPT = 1,  /* destination -> source: go ahead */
    LM_HELLO_REJECT = 2,  /* destination -> source: an ERROR record follows */
    LM_HELLO_RESUME = 3,  /* source -> destination: reconnect the paused session */
} lm_hello_kind;

/* Feature bits that must be equal on both sides (negotiated in HELLO). */
#define LM_FEAT_MULTIFD (1ull << 0)
#define LM_FEAT_POSTCOPY (1ull << 1)
#define LM_FEAT_PREEMPT (1ull << 2)
#define LM_FEAT_SWITCHOVER_ACK (1ull << 3)
#define LM_FEAT_MAPPED_RAM (1ull << 4)
#define LM_FEAT_KNOWN_MASK 0x1full

typedef struct lm_hello {
    uint16_t version;    /* LM_FORMAT_VERSION */
    uint8_t role;        /* lm_chan_role */
    uint8_t kind;        /* lm_hello_kind */
    uint16_t chan_index; /* 0 for main; 0..count-1 for multifd */
    uint16_t chan_count; /* number of multifd channels, 0 when off */
    uint32_t page_size;  /* target page size, 4096 */
    uint8_t session[LM_SESSION_ID_LEN];
    uint64_t features; /* LM_FEAT_* */
} lm_hello;

int lm_fmt_hello_encode(const lm_hello *h, uint8_t *buf, size_t cap);
/* Rejects a bad magic ("not a livemig stream"), an unsupported version,
 * an unknown role or kind, a page size that is not a power of two in
 * [4096, 1 GiB], unknown feature bits, non-zero reserved bytes. */
int lm_fmt_hello_decode(const uint8_t *buf, size_t len, lm_hello *out, lm_error *err);

/* ---------------------------------------------------------------- records */

#define LM_REC_HDR_SIZE 8
/* Largest payload of any record: a RAM_PAGES run of 1024 4 KiB pages plus
 * its header, or a device section chunk.  Bounded so a loader can pre-size. */
#define LM_REC_MAX_PAYLOAD (16u << 20)

typedef enum lm_rec_type {
    /* source -> destination, main channel */
    LM_REC_SECTION_START = 0x01,
    LM_REC_SECTION_PART = 0x02,
    LM_REC_SECTION_END = 0x03,
    LM_REC_SECTION_FULL = 0x04,
    LM_REC_RAM_BLOCKS = 0x10,
    LM_REC_RAM_PAGES = 0x11,
    LM_REC_RAM_ZERO = 0x12,
    LM_REC_RAM_PASS = 0x13,
    LM_REC_PING = 0x20,
    LM_REC_SWITCHOVER_START = 0x21,
    LM_REC_POSTCOPY_DISCARD = 0x22, /* postcopy: pages the destination must drop */
    LM_REC_POSTCOPY_RUN = 0x23,     /* postcopy: start the workload, serve faults */
    LM_REC_POSTCOPY_RESUME = 0x24,  /* recovery: send the received bitmap, then resume */
    LM_REC_ACK_DEVICES = 0x28,      /* switchover-ack: the source's participating devices */
    LM_REC_MAPPED_RAM = 0x14,       /* mapped-ram file: where each block's pages are */
    LM_REC_RAM_XBZRLE = 0x15,       /* one page as a delta against its last sent copy */
    LM_REC_EOS = 0x30,
    /* multifd: FLUSH on the main channel, PAGES and SYNC on multifd
     * channels (which also end with EOS) */
    LM_REC_MULTIFD_FLUSH = 0x50,
    LM_REC_MULTIFD_PAGES = 0x51,
    LM_REC_MULTIFD_SYNC = 0x52,
    /* either direction */
    LM_REC_ERROR = 0x7f,
    /* destination -> source (return path) */
    LM_REC_RP_SHUT = 0x81,
    LM_REC_RP_PONG = 0x82,
    LM_REC_RP_REQ_PAGES = 0x83,
    LM_REC_RP_SWITCHOVER_ACK = 0x86,
    LM_REC_RP_DEVICE_ACK = 0x8a,  /* switchover-ack: one device's answer */
    LM_REC_RP_RECV_BITMAP = 0x8b, /* recovery: pages a block still owes, one chunk */
    LM_REC_RP_RESUME_ACK = 0x8c,  /* recovery: bitmap sent, postcopy goes on */
} lm_rec_type;

typedef struct lm_rec_hdr {
    uint8_t type; /* lm_rec_type */
    uint32_t len; /* payload bytes following the header */
} lm_rec_hdr;

const char *lm_rec_type_name(uint8_t type); /* "RAM_PAGES", ...; "unknown" */

int lm_fmt_rec_hdr_encode(uint8_t type, uint32_t len, uint8_t *buf, size_t cap);
/* Rejects unknown types, non-zero flags/reserved, len > LM_REC_MAX_PAYLOAD,
 * and a len that is wrong for a fixed-size type (e.g. PING must be 4). */
int lm_fmt_rec_hdr_decode(const uint8_t *buf, size_t len, lm_rec_hdr *out, lm_error *err);

/* ---------------------------------------------------------------- sections */

#define LM_SECTION_NAME_MAX 255

/* START and FULL carry the identity; PART and END only the id. */
typedef struct lm_section_hdr {
    uint32_t section_id;
    uint32_t instance;
    uint32_t version;
    uint8_t name_len;
    char name[LM_SECTION_NAME_MAX + 1]; /* NUL-terminated copy */
} lm_section_hdr;

/* Encodes the section header part of a payload; device data follows it. */
int lm_fmt_section_hdr_encode(uint8_t type, const lm_section_hdr *s, uint8_t *buf, size_t cap);
/* payload/len is the whole record payload; returns the header size, so
 * device data is payload[ret .. len).  Names must be printable ASCII. */
int lm_fmt_section_hdr_decode(uint8_t type, const uint8_t *payload, size_t len, lm_section_hdr *out,
                              lm_error *err);

/* --------------------------------------------------------------------- RAM */

#define LM_RAM_NAME_MAX 63
#define LM_RAM_MAX_BLOCKS 64

typedef struct lm_fmt_block {
    char name[LM_RAM_NAME_MAX + 1]; /* NUL-terminated; 1..63 printable bytes */
    uint32_t page_size;             /* power of two, 4096..1 GiB */
    uint64_t length;                /* bytes, a non-zero multiple of page_size */
} lm_fmt_block;

/* RAM_BLOCKS payload: the block table; a block's index in it is the block
 * number used by RAM_PAGES/RAM_ZERO/REQ_PAGES. */
int lm_fmt_ram_blocks_encode(const lm_fmt_block *b, uint32_t n, uint8_t *buf, size_t cap);
/* Decodes at most max entries into out; *n gets the count.  Rejects a count
 * above max or LM_RAM_MAX_BLOCKS, bad names, duplicates, bad sizes, and
 * trailing bytes.  Consumes the whole payload. */
int lm_fmt_ram_blocks_decode(const uint8_t *payload, size_t len, lm_fmt_block *out, uint32_t max,
                             uint32_t *n, lm_error *err);

#define LM_RAM_PAGES_HDR_SIZE 16
#define LM_RAM_MAX_RUN 1024 /* pages per RAM_PAGES record */

/* RAM_PAGES: fixed header, then count pages of the block's page size. */
typedef struct lm_ram_run {
    uint32_t block;
    uint32_t count;
    uint64_t first_page;
} lm_ram_run;

int lm_fmt_ram_pages_hdr_encode(const lm_ram_run *r, uint8_t *buf, size_t cap);
/* Decodes the 16-byte header only (the page data is read separately,
 * straight into guest memory).  Checks count in 1..LM_RAM_MAX_RUN. */
int lm_fmt_ram_pages_hdr_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err);

/* RAM_ZERO: a run of zero pages, count >= 1 (no upper bound but the
 * block's size, which the loader checks). */
typedef struct lm_ram_zero {
    uint32_t block;
    uint64_t first_page;
    uint64_t count;
} lm_ram_zero;
#define LM_RAM_ZERO_SIZE 24
int lm_fmt_ram_zero_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap);
int lm_fmt_ram_zero_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err);

/* POSTCOPY_DISCARD: a run of pages the source still owes at the switch to
 * postcopy (never sent, or dirtied after they were sent); same 24-byte
 * layout as RAM_ZERO (docs/format.md §4.11). */
int lm_fmt_discard_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap);
int lm_fmt_discard_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err);

/* Validates a run against the block table: block index known, range inside
 * the block without overflow.  Pure; used by every loader.  The record
 * length (header + count * page_size) is the loader's to check. */
int lm_fmt_ram_run_check(uint32_t block, uint64_t first_page, uint64_t count,
                         const lm_fmt_block *blocks, uint32_t nblocks, lm_error *err);

/* ----------------------------------------------------------------- XBZRLE */

/* RAM_XBZRLE payload (docs/format.md §4.16): a 16-byte header {u32 block,
 * u16 data_len, u16 reserved 0, u64 page}, then data_len bytes: the page
 * as a delta against the copy the destination holds, pairs of
 * [ULEB128 unchanged-run][ULEB128 changed-run][changed-run bytes], each
 * length one or two bytes (< 2^14, minimal), an unchanged run of 0 only
 * in the first pair, a changed run never 0, the runs inside the page; the
 * bytes after the last pair are unchanged.  Only for blocks of 4 KiB
 * pages. */
#define LM_XBZRLE_HDR_SIZE 16
#define LM_XBZRLE_PAGE_MAX 4096 /* the only page size XBZRLE serves */
#define LM_XBZRLE_DATA_MAX 4096 /* an encoding is at most a page (QEMU) */

typedef struct lm_xbzrle_hdr {
    uint32_t block;
    uint16_t data_len;
    uint64_t page;
} lm_xbzrle_hdr;

int lm_fmt_xbzrle_hdr_encode(const lm_xbzrle_hdr *h, uint8_t *buf, size_t cap);
/* Checks data_len in 1..LM_XBZRLE_DATA_MAX, reserved zero, and that the
 * record's payload length rec_len is exactly header + data_len. */
int lm_fmt_xbzrle_hdr_decode(const uint8_t *buf, size_t len, uint32_t rec_len, lm_xbzrle_hdr *out,
                             lm_error *err);
/* Encodes cur against old (page_size bytes each, <= LM_XBZRLE_PAGE_MAX)
 * into dst.  Returns the encoding's length, 0 when the page is unchanged
 * (nothing to send), -ENOSPC as soon as the encoding would exceed dlen
 * (the caller sends the page whole: an "overflow"). */
int lm_fmt_xbzrle_encode(const uint8_t *old, const uint8_t *cur, uint32_t page_size, uint8_t *dst,
                         size_t dlen);
/* Checks the whole encoding src[0..slen) against a page of page_size
 * bytes, then, when dst is not NULL, applies it to dst in place (a bad
 * encoding leaves dst untouched).  Returns the page offset where the last
 * changed run ended (> 0), or < 0 with err naming the byte and the rule
 * broken. */
int lm_fmt_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, uint32_t page_size,
                         lm_error *err);

/* ---------------------------------------------------------------- multifd */

/* MULTIFD_PAGES payload: a 24-byte header, (normal + zero) u64 page indices
 * (the normal pages first, then the zero pages, each list strictly
 * ascending, no page in both), then data_len bytes of page data: the
 * normal pages in index order, raw or as one compressed blob. */
#define LM_MFD_HDR_SIZE 24
#define LM_MFD_MAX_PAGES 1024 /* pages per packet (the source sends <= 256) */

typedef enum lm_mfd_comp {
    LM_MFD_COMP_NONE = 0,
    LM_MFD_COMP_ZLIB = 1,
    LM_MFD_COMP_ZSTD = 2,
    LM_MFD_COMP_LZ4 = 3,
} lm_mfd_comp;

typedef struct lm_mfd_pages {
    uint32_t block;      /* index in the RAM_BLOCKS table */
    uint16_t normal;     /* pages with data */
    uint16_t zero;       /* zero pages (no data) */
    uint8_t compression; /* lm_mfd_comp */
    uint32_t data_len;   /* bytes of page data after the index list */
    uint64_t packet_num; /* per channel, from 1, +1 each packet */
} lm_mfd_pages;

int lm_fmt_mfd_pages_hdr_encode(const lm_mfd_pages *p, uint8_t *buf, size_t cap);
/* Decodes the header and checks it against the record's payload length
 * (rec_len) and the block's page size: 1 <= normal + zero <= LM_MFD_MAX_PAGES,
 * a known compression, data_len = normal * page_size uncompressed, and
 * 0 < data_len (only with normal > 0) compressed, the whole length adding
 * up.  page_size 0 skips the checks that need it (no block table). */
int lm_fmt_mfd_pages_hdr_decode(const uint8_t *buf, size_t len, uint32_t rec_len,
                                uint32_t page_size, lm_mfd_pages *out, lm_error *err);
/* Decodes the index list of p (8 * (normal + zero) bytes of buf) into
 * out[], checking every index < block_pages, each list strictly ascending
 * and no page in both lists. */
int lm_fmt_mfd_index_decode(const uint8_t *buf, size_t len, const lm_mfd_pages *p,
                            uint64_t block_pages, uint64_t *out, lm_error *err);
/* Encodes n page indices (u64 LE). */
int lm_fmt_mfd_index_encode(const uint64_t *idx, uint32_t n, uint8_t *buf, size_t cap);

/* ------------------------------------------------------- small fixed records */

/* PING / PONG / RAM_PASS / MULTIFD_FLUSH / MULTIFD_SYNC payloads: one u32
 * (PING, PONG) or u64 (the others). */
int lm_fmt_u32_encode(uint32_t v, uint8_t *buf, size_t cap);
int lm_fmt_u32_decode(const uint8_t *payload, size_t len, uint32_t *out, lm_error *err);
int lm_fmt_u64_encode(uint64_t v, uint8_t *buf, size_t cap);
int lm_fmt_u64_decode(const uint8_t *payload, size_t len, uint64_t *out, lm_error *err);

/* ERROR and RP_SHUT: i32 status (0 = ok for SHUT), u16 message length,
 * message bytes (<= LM_ERROR_MSG_MAX - 1, printable, no NUL). */
typedef struct lm_status_msg {
    int32_t status;
    char msg[LM_ERROR_MSG_MAX]; /* NUL-terminated */
} lm_status_msg;
int lm_fmt_status_msg_encode(const lm_status_msg *s, uint8_t *buf, size_t cap);
int lm_fmt_status_msg_decode(const uint8_t *payload, size_t len, lm_status_msg *out, lm_error *err);

/* RP_REQ_PAGES: {u32 block, u32 count, u64 first_page}, same layout as a
 * RAM_PAGES header. */
#define lm_fmt_req_pages_encode lm_fmt_ram_pages_hdr_encode
/* Same checks as the RAM_PAGES header; messages name RP_REQ_PAGES. */
int lm_fmt_req_pages_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err);

/* RP_RECV_BITMAP (recovery): {u32 block, u32 npages, u64 first_page}
 * then a bitmap of npages bits (ceil(npages / 8) bytes, docs/format.md
 * §1); bit i is page first_page + i, set when the destination has not
 * received it (it is still owed).  first_page is a multiple of 64,
 * 1 <= npages <= LM_RECV_BITMAP_MAX_PAGES, unused bits of the last byte
 * are zero.  The block and range are checked against the stream's table
 * by the caller. */
#define LM_RECV_BITMAP_HDR_SIZE 16
#define LM_RECV_BITMAP_MAX_PAGES 65536u
#define LM_RECV_BITMAP_MAX (LM_RECV_BITMAP_HDR_SIZE + LM_RECV_BITMAP_MAX_PAGES / 8)
typedef struct lm_recv_bitmap {
    uint32_t block;
    uint32_t npages;
    uint64_t first_page;
    const uint8_t *words; /* decode: points into the payload */
} lm_recv_bitmap;
/* Encodes the header and the bitmap from words (host u64s, bit i of word
 * w is page first_page + 64 w + i); returns the payload length or < 0. */
int lm_fmt_recv_bitmap_encode(const lm_recv_bitmap *b, const uint64_t *words, uint8_t *buf,
                              size_t cap);
int lm_fmt_recv_bitmap_decode(const uint8_t *payload, size_t len, lm_recv_bitmap *out,
                              lm_error *err);
/* Word i (pages 64 i .. 64 i + 63 of the chunk) of a decoded chunk. */
uint64_t lm_fmt_recv_bitmap_word(const lm_recv_bitmap *b, uint32_t i);

/* ---------------------------------------------------------- switchover-ack */

/* ACK_DEVICES payload: u32 count, then count u32 section ids in strictly
 * increasing order (so no duplicates), count <= LM_ACK_DEVICES_MAX. */
#define LM_ACK_DEVICES_MAX 256
int lm_fmt_ack_devices_encode(const uint32_t *ids, uint32_t n, uint8_t *buf, size_t cap);
/* Decodes into ids[0..max); *n gets the count.  Rejects a count above max
 * or LM_ACK_DEVICES_MAX, a length other than 4 + 4 * count, and ids that
 * are not strictly increasing. */
int lm_fmt_ack_devices_decode(const uint8_t *payload, size_t len, uint32_t *ids, uint32_t max,
                              uint32_t *n, lm_error *err);

/* RP_DEVICE_ACK payload (8 bytes): u32 section_id, u8 state, 3 reserved
 * zero bytes. */
typedef enum lm_dev_ack {
    LM_DEV_ACK_READY = 1,    /* the device's initial data is loaded */
    LM_DEV_ACK_DECLINED = 2, /* the destination device does not take part */
} lm_dev_ack;
#define LM_DEVICE_ACK_SIZE 8
int lm_fmt_device_ack_encode(uint32_t section_id, uint8_t state, uint8_t *buf, size_t cap);
int lm_fmt_device_ack_decode(const uint8_t *payload, size_t len, uint32_t *section_id,
                             uint8_t *state, lm_error *err);

/* -------------------------------------------------------------- mapped-ram */

/* MAPPED_RAM payload (docs/format.md §9), right after RAM_BLOCKS in a file
 * saved with mapped-ram: u32 version, u32 nblocks, u64 record_end (file
 * offset of the byte after this record), u64 resume (file offset where the
 * main stream goes on, after every block's region), then per block (in the
 * table's order) u32 block, u32 page_size, u64 npages, u64 bitmap_offset,
 * u64 pages_offset.  A block's present-page bitmap (ceil(npages / 8)
 * bytes, bit i = byte i / 8, bit i % 8: page i has data; then its CRC-32
 * and 4 zero bytes) and its pages
 * (page i at pages_offset + i * page_size, pages_offset a multiple of
 * 1 MiB) lie in [record_end, resume) without overlap (the source puts
 * every bitmap first, then the page regions). */
#define LM_MAPPED_VERSION 1
#define LM_MAPPED_ALIGN (1u << 20)
#define LM_MAPPED_HDR_SIZE 24
#define LM_MAPPED_ENTRY_SIZE 32
#define LM_MAPPED_MAX (LM_MAPPED_HDR_SIZE + LM_RAM_MAX_BLOCKS * LM_MAPPED_ENTRY_SIZE)

typedef struct lm_mapped_block {
    uint32_t page_size;
    uint64_t npages;
    uint64_t bitmap_offset;
    uint64_t pages_offset;
} lm_mapped_block;

typedef struct lm_mapped_layout {
    uint32_t version;
    uint32_t nblocks;
    uint64_t record_end;
    uint64_t resume;
    lm_mapped_block b[LM_RAM_MAX_BLOCKS];
} lm_mapped_layout;

/* A block's bitmap region: the bits, then a u32 CRC-32 (zlib's) of them
 * and a u32 of zero, so a corrupt bitmap is told from a sparse one. */
#define LM_MAPPED_BITMAP_TRAILER 8
static inline uint64_t lm_mapped_bitmap_bytes(uint64_t npages)
{
    return (npages + 7) / 8;
}
static inline uint64_t lm_mapped_bitmap_region(uint64_t npages)
{
    return lm_mapped_bitmap_bytes(npages) + LM_MAPPED_BITMAP_TRAILER;
}

/* Plans the regions of table[0..n) from record_end (the source's layout):
 * each block's bitmap, then its pages at the next 1 MiB boundary. */
void lm_fmt_mapped_plan(const lm_fmt_block *table, uint32_t n, uint64_t record_end,
                        lm_mapped_layout *out);
int lm_fmt_mapped_encode(const lm_mapped_layout *l, uint8_t *buf, size_t cap);
/* Decodes and checks everything the payload alone can say: the version
 * (another one is named), counts, the length, each block's index, page
 * size and regions (aligned, in order, no overlap or overflow, inside
 * [record_end, resume)). */
int lm_fmt_mapped_decode(const uint8_t *payload, size_t len, lm_mapped_layout *out, lm_error *err);
/* Checks a decoded layout against the stream's block table and the file:
 * same blocks (count, page size, length), resume <= file_size. */
int lm_fmt_mapped_check(const lm_mapped_layout *l, const lm_fmt_block *table, uint32_t n,
                        uint64_t file_size, lm_error *err);
/* Checks one block's bitmap region (lm_mapped_bitmap_region bytes as read
 * from the file): its CRC, no bit set past npages.  Returns the number of
 * present pages, or < 0.  lm_fmt_mapped_bitmap_seal writes the trailer. */
void lm_fmt_mapped_bitmap_seal(uint8_t *bm, uint64_t npages);
int64_t lm_fmt_mapped_bitmap_check(const uint8_t *bm, uint64_t npages, uint32_t block,
                                   lm_error *err);

/* ----------------------------------------------------------- stream walker */

/* Decodes a whole byte stream as the destination sees it: an optional HELLO
 * request, then records; every payload goes through its decoder.  Used by
 * `livemig inspect`, the fuzz target and the tests.  Calls cb (may be NULL)
 * for each record with its decoded header and payload; returns the bytes
 * consumed up to the last complete record, or < 0 on malformed input. */
typedef int (*lm_fmt_walk_fn)(void *opaque, const lm_rec_hdr *h, const uint8_t *payload);
long lm_fmt_walk(const uint8_t *buf, size_t len, bool expect_hello, lm_fmt_walk_fn cb, void *opaque,
                 lm_error *err);

/* One record as the walker decoded it: where it is, its header, and its
 * payload through the type's decoder (valid only during the callback). */
typedef struct lm_fmt_rec {
    size_t offset; /* of the record header, from the start of the buffer */
    lm_rec_hdr hdr;
    const uint8_t *payload; /* hdr.len bytes */
    union {
        lm_section_hdr section; /* SECTION_*: data is payload[data_off .. len) */
        lm_ram_run run;         /* RAM_PAGES, RP_REQ_PAGES */
        lm_ram_zero zero;       /* RAM_ZERO, POSTCOPY_DISCARD */
        lm_xbzrle_hdr xbzrle;   /* RAM_XBZRLE */
        lm_mfd_pages mfd;       /* MULTIFD_PAGES */
        lm_recv_bitmap bitmap;  /* RP_RECV_BITMAP */
        lm_status_msg status;   /* ERROR, RP_SHUT */
        uint64_t u64;           /* RAM_PASS, MULTIFD_FLUSH/SYNC, RP_RESUME_ACK */
        uint32_t u32;           /* PING, RP_PONG */
        struct {
            uint32_t count;
        } ack; /* ACK_DEVICES */
        struct {
            uint32_t section_id;
            uint8_t state;
        } dev_ack; /* RP_DEVICE_ACK */
    } u;
    uint32_t data_off; /* SECTION_*: the section header's size */
    /* The block table in force after this record (NULL before any). */
    const lm_fmt_block *blocks;
    uint32_t nblocks;
} lm_fmt_rec;

typedef int (*lm_fmt_walk_rec_fn)(void *opaque, const lm_fmt_rec *r);

typedef struct lm_fmt_walk_cfg {
    bool expect_hello;
    lm_hello *hello; /* when non-NULL, gets the decoded HELLO */
    /* A table to start with (a multifd channel's stream carries none: its
     * main channel's), or NULL; a RAM_BLOCKS record replaces it. */
    const lm_fmt_block *blocks;
    uint32_t nblocks;
    lm_fmt_walk_rec_fn cb; /* may be NULL */
    void *opaque;
} lm_fmt_walk_cfg;

/* lm_fmt_walk with every record handed out decoded (`livemig inspect`).
 * Same return values; a callback's negative value stops the walk. */
long lm_fmt_walk_rec(const uint8_t *buf, size_t len, const lm_fmt_walk_cfg *cfg, lm_error *err);

#endif /* LM_FORMAT_H */
