/*
 * wire.c - encoders and decoders of the livemig wire format v1 (the
 * byte-level spec is docs/format.md; the C interface is format.h).
 *
 * Everything here is pure: no I/O, no allocation, no threads, no global
 * state, so it is safe from any thread and can be fuzzed directly
 * (tests/fuzz/fuzz_stream.c, fuzz_hello.c).  Every field read from a buffer
 * is treated as hostile: each length, count and index is checked against
 * the buffer and the format's limits before it is used.
 *
 * Error codes returned by the decoders:
 *   -EBADMSG          a HELLO whose magic is not ours: not a livemig peer at
 *                     all (a loader answers a livemig peer, not a stranger)
 *   -EPROTO           malformed input (bad field, bad length...)
 *   -EPROTONOSUPPORT  a HELLO of a format version we do not speak
 *   -EMSGSIZE         a record length above the format's maximum
 *   -ENOSPC           the caller's output array is too small (RAM_BLOCKS)
 * Encoders return -ENOSPC when cap is too small and -EINVAL for values the
 * decoder would reject, so a bug in a sender is caught before it reaches
 * the wire instead of being reported by the peer.
 */
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* ------------------------------------------------------------ primitives */

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
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

/* Index of the first byte of a name that is not printable ASCII
 * (0x20..0x7e), or -1 when all are.  Names end up in error messages, QMP
 * replies and `livemig inspect` output, so control bytes are refused. */
static long bad_name_byte(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return (long)i;
    return -1;
}

/* Messages may also carry UTF-8 (bytes >= 0x80) but no control bytes. */
static bool msg_byte_ok(uint8_t c)
{
    return c >= 0x20 && c != 0x7f;
}

static bool page_size_ok(uint64_t ps)
{
    return ps >= 4096 && ps <= (1u << 30) && (ps & (ps - 1)) == 0;
}

/* ------------------------------------------------------------------ HELLO */

/* HELLO layout (48 bytes):
 *   0 u32 magic   4 u16 version   6 u8 role   7 u8 kind
 *   8 u16 chan_index   10 u16 chan_count   12 u32 page_size
 *  16 session[16]   32 u64 features   40 reserved[8] (zero) */

static const char *role_name(uint8_t role)
{
    switch (role) {
    case LM_ROLE_MAIN:
        return "main";
    case LM_ROLE_MULTIFD:
        return "multifd";
    case LM_ROLE_PREEMPT:
        return "preempt";
    }
    return "unknown";
}

/* Checks the fields after magic and version; shared by encode and decode
 * so we never emit a HELLO our own decoder refuses. */
static int hello_check(const lm_hello *h, lm_error *err)
{
    if (h->role < LM_ROLE_MAIN || h->role > LM_ROLE_PREEMPT)
        return lm_error_set(err, -EPROTO, "HELLO: role %u unknown (1 main, 2 multifd, 3 preempt)",
                            h->role);
    if (h->kind > LM_HELLO_REJECT)
        return lm_error_set(err, -EPROTO, "HELLO: kind %u unknown (0 request, 1 accept, 2 reject)",
                            h->kind);
    if (h->role == LM_ROLE_MULTIFD && h->chan_index >= h->chan_count)
        return lm_error_set(err, -EPROTO,
                            "HELLO: multifd channel index %u out of range (%u channels)",
                            h->chan_index, h->chan_count);
    if (h->role != LM_ROLE_MULTIFD && h->chan_index != 0)
        return lm_error_set(err, -EPROTO, "HELLO: %s channel has index %u, must be 0",
                            role_name(h->role), h->chan_index);
    if (!page_size_ok(h->page_size))
        return lm_error_set(err, -EPROTO,
                            "HELLO: page size %" PRIu32 " is not a power of two in 4096..1GiB",
                            h->page_size);
    if (h->features & ~(uint64_t)LM_FEAT_KNOWN_MASK)
        return lm_error_set(err, -EPROTO, "HELLO: unknown feature bits 0x%" PRIx64,
                            h->features & ~(uint64_t)LM_FEAT_KNOWN_MASK);
    return 0;
}

int lm_fmt_hello_encode(const lm_hello *h, uint8_t *buf, size_t cap)
{
    if (h->version != LM_FORMAT_VERSION || hello_check(h, NULL) < 0)
        return -EINVAL;
    if (cap < LM_HELLO_SIZE)
        return -ENOSPC;
    put32(buf, LM_HELLO_MAGIC);
    put16(buf + 4, h->version);
    buf[6] = h->role;
    buf[7] = h->kind;
    put16(buf + 8, h->chan_index);
    put16(buf + 10, h->chan_count);
    put32(buf + 12, h->page_size);
    memcpy(buf + 16, h->session, LM_SESSION_ID_LEN);
    put64(buf + 32, h->features);
    memset(buf + 40, 0, 8);
    return LM_HELLO_SIZE;
}

int lm_fmt_hello_decode(const uint8_t *buf, size_t len, lm_hello *out, lm_error *err)
{
    /* The magic is checked as soon as it is here: a peer that is not
     * livemig (a QEMU, an HTTP client) may send fewer than 48 bytes and
     * then wait for us; failing on the magic stops that from hanging. */
    if (len >= 4 && get32(buf) != LM_HELLO_MAGIC) {
        uint32_t m = get32(buf);
        return lm_error_set(err, -EBADMSG, "HELLO: bad magic 0x%08" PRIx32 " (%s)", m,
                            m == 0x4d564551u ? "a QEMU migration stream, not livemig"
                                             : "not a livemig stream");
    }
    if (len < LM_HELLO_SIZE)
        return 0;
    lm_hello h;
    h.version = get16(buf + 4);
    h.role = buf[6];
    h.kind = buf[7];
    h.chan_index = get16(buf + 8);
    h.chan_count = get16(buf + 10);
    h.page_size = get32(buf + 12);
    memcpy(h.session, buf + 16, LM_SESSION_ID_LEN);
    h.features = get64(buf + 32);
    if (h.version != LM_FORMAT_VERSION)
        return lm_error_set(err, -EPROTONOSUPPORT,
                            "HELLO: format version %u not supported (this side speaks %u)",
                            h.version, LM_FORMAT_VERSION);
    int rc = hello_check(&h, err);
    if (rc < 0)
        return rc;
    for (int i = 40; i < LM_HELLO_SIZE; i++)
        if (buf[i])
            return lm_error_set(err, -EPROTO, "HELLO: reserved byte %d is 0x%02x, must be 0", i,
                                buf[i]);
    *out = h;
    return LM_HELLO_SIZE;
}

/* ---------------------------------------------------------------- records */

const char *lm_rec_type_name(uint8_t type)
{
    switch (type) {
    case LM_REC_SECTION_START:
        return "SECTION_START";
    case LM_REC_SECTION_PART:
        return "SECTION_PART";
    case LM_REC_SECTION_END:
        return "SECTION_END";
    case LM_REC_SECTION_FULL:
        return "SECTION_FULL";
    case LM_REC_RAM_BLOCKS:
        return "RAM_BLOCKS";
    case LM_REC_RAM_PAGES:
        return "RAM_PAGES";
    case LM_REC_RAM_ZERO:
        return "RAM_ZERO";
    case LM_REC_RAM_PASS:
        return "RAM_PASS";
    case LM_REC_PING:
        return "PING";
    case LM_REC_SWITCHOVER_START:
        return "SWITCHOVER_START";
    case LM_REC_POSTCOPY_DISCARD:
        return "POSTCOPY_DISCARD";
    case LM_REC_POSTCOPY_RUN:
        return "POSTCOPY_RUN";
    case LM_REC_EOS:
        return "EOS";
    case LM_REC_MULTIFD_FLUSH:
        return "MULTIFD_FLUSH";
    case LM_REC_MULTIFD_PAGES:
        return "MULTIFD_PAGES";
    case LM_REC_MULTIFD_SYNC:
        return "MULTIFD_SYNC";
    case LM_REC_ERROR:
        return "ERROR";
    case LM_REC_RP_SHUT:
        return "RP_SHUT";
    case LM_REC_RP_PONG:
        return "RP_PONG";
    case LM_REC_RP_REQ_PAGES:
        return "RP_REQ_PAGES";
    case LM_REC_RP_SWITCHOVER_ACK:
        return "RP_SWITCHOVER_ACK";
    case LM_REC_ACK_DEVICES:
        return "ACK_DEVICES";
    case LM_REC_RP_DEVICE_ACK:
        return "RP_DEVICE_ACK";
    }
    return "unknown";
}

#define SECTION_ID_SIZE 4
#define SECTION_IDENT_MIN (4 + 4 + 4 + 1 + 1) /* id, instance, version, len, 1 name byte */
#define STATUS_HDR_SIZE 6                     /* i32 status, u16 msg_len */
#define STATUS_MAX (STATUS_HDR_SIZE + LM_ERROR_MSG_MAX - 1)
#define RAM_BLOCK_ENTRY_MAX (1 + LM_RAM_NAME_MAX + 4 + 8)
#define RAM_BLOCKS_MAX (4 + LM_RAM_MAX_BLOCKS * RAM_BLOCK_ENTRY_MAX)

/* Allowed payload length range of each record type; false for an unknown
 * type.  Exact sizes for fixed records (as QEMU's mig_cmd_args does for
 * commands), so a loader can pre-size and never reads past a payload. */
static bool rec_len_range(uint8_t type, uint32_t *min, uint32_t *max)
{
    *max = LM_REC_MAX_PAYLOAD;
    switch (type) {
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_FULL:
        *min = SECTION_IDENT_MIN;
        return true;
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
        *min = SECTION_ID_SIZE;
        return true;
    case LM_REC_RAM_BLOCKS:
        *min = 4;
        *max = RAM_BLOCKS_MAX;
        return true;
    case LM_REC_RAM_PAGES:
        *min = LM_RAM_PAGES_HDR_SIZE;
        return true;
    case LM_REC_RAM_ZERO:
    case LM_REC_POSTCOPY_DISCARD:
        *min = *max = LM_RAM_ZERO_SIZE;
        return true;
    case LM_REC_RAM_PASS:
    case LM_REC_MULTIFD_FLUSH:
    case LM_REC_MULTIFD_SYNC:
        *min = *max = 8;
        return true;
    case LM_REC_MULTIFD_PAGES:
        *min = LM_MFD_HDR_SIZE + 8;
        return true;
    case LM_REC_PING:
    case LM_REC_RP_PONG:
        *min = *max = 4;
        return true;
    case LM_REC_SWITCHOVER_START:
    case LM_REC_POSTCOPY_RUN:
    case LM_REC_EOS:
    case LM_REC_RP_SWITCHOVER_ACK:
        *min = *max = 0;
        return true;
    case LM_REC_ERROR:
    case LM_REC_RP_SHUT:
        *min = STATUS_HDR_SIZE;
        *max = STATUS_MAX;
        return true;
    case LM_REC_RP_REQ_PAGES:
        *min = *max = LM_RAM_PAGES_HDR_SIZE;
        return true;
    case LM_REC_ACK_DEVICES:
        *min = 4;
        *max = 4 + 4 * LM_ACK_DEVICES_MAX;
        return true;
    case LM_REC_RP_DEVICE_ACK:
        *min = *max = LM_DEVICE_ACK_SIZE;
        return true;
    }
    return false;
}

static int rec_check(uint8_t type, uint32_t len, lm_error *err)
{
    uint32_t min, max;
    if (!rec_len_range(type, &min, &max))
        return lm_error_set(err, -EPROTO, "record type 0x%02x unknown", type);
    if (min == max && len != min)
        return lm_error_set(err, -EPROTO, "record %s: length %" PRIu32 ", must be %" PRIu32,
                            lm_rec_type_name(type), len, min);
    if (len < min)
        return lm_error_set(err, -EPROTO, "record %s: length %" PRIu32 " below minimum %" PRIu32,
                            lm_rec_type_name(type), len, min);
    if (len > max)
        return lm_error_set(err, -EMSGSIZE, "record %s: length %" PRIu32 " above maximum %" PRIu32,
                            lm_rec_type_name(type), len, max);
    return 0;
}

int lm_fmt_rec_hdr_encode(uint8_t type, uint32_t len, uint8_t *buf, size_t cap)
{
    if (rec_check(type, len, NULL) < 0)
        return -EINVAL;
    if (cap < LM_REC_HDR_SIZE)
        return -ENOSPC;
    buf[0] = type;
    buf[1] = 0;
    put16(buf + 2, 0);
    put32(buf + 4, len);
    return LM_REC_HDR_SIZE;
}

int lm_fmt_rec_hdr_decode(const uint8_t *buf, size_t len, lm_rec_hdr *out, lm_error *err)
{
    if (len < LM_REC_HDR_SIZE)
        return 0;
    uint8_t type = buf[0];
    uint32_t plen = get32(buf + 4);
    int rc = rec_check(type, plen, err);
    if (rc < 0)
        return rc;
    /* Flags and reserved are zero in v1 so a later version can give them a
     * meaning; a v1 loader must not silently ignore what it cannot know. */
    if (buf[1])
        return lm_error_set(err, -EPROTO, "record %s: flags 0x%02x must be 0",
                            lm_rec_type_name(type), buf[1]);
    if (get16(buf + 2))
        return lm_error_set(err, -EPROTO, "record %s: reserved 0x%04x must be 0",
                            lm_rec_type_name(type), get16(buf + 2));
    out->type = type;
    out->len = plen;
    return LM_REC_HDR_SIZE;
}

/* ---------------------------------------------------------------- sections */

static bool is_ident_section(uint8_t type)
{
    return type == LM_REC_SECTION_START || type == LM_REC_SECTION_FULL;
}

static bool is_section(uint8_t type)
{
    return type >= LM_REC_SECTION_START && type <= LM_REC_SECTION_FULL;
}

int lm_fmt_section_hdr_encode(uint8_t type, const lm_section_hdr *s, uint8_t *buf, size_t cap)
{
    if (!is_section(type))
        return -EINVAL;
    if (!is_ident_section(type)) {
        if (cap < SECTION_ID_SIZE)
            return -ENOSPC;
        put32(buf, s->section_id);
        return SECTION_ID_SIZE;
    }
    if (s->name_len == 0 || bad_name_byte((const uint8_t *)s->name, s->name_len) >= 0)
        return -EINVAL;
    size_t need = 13 + (size_t)s->name_len;
    if (cap < need)
        return -ENOSPC;
    put32(buf, s->section_id);
    put32(buf + 4, s->instance);
    put32(buf + 8, s->version);
    buf[12] = s->name_len;
    memcpy(buf + 13, s->name, s->name_len);
    return (int)need;
}

int lm_fmt_section_hdr_decode(uint8_t type, const uint8_t *payload, size_t len, lm_section_hdr *out,
                              lm_error *err)
{
    const char *what = lm_rec_type_name(type);
    if (!is_section(type))
        return lm_error_set(err, -EINVAL, "record %s (0x%02x) is not a section record", what, type);
    if (len < SECTION_ID_SIZE)
        return lm_error_set(err, -EPROTO, "%s: payload of %zu bytes too short for a section id",
                            what, len);
    uint32_t id = get32(payload);
    if (!is_ident_section(type)) {
        out->section_id = id;
        out->instance = 0;
        out->version = 0;
        out->name_len = 0;
        out->name[0] = '\0';
        return SECTION_ID_SIZE;
    }
    if (len < 13)
        return lm_error_set(err, -EPROTO, "%s: payload of %zu bytes too short for a section header",
                            what, len);
    uint8_t nlen = payload[12];
    if (nlen == 0)
        return lm_error_set(err, -EPROTO,
                            "%s: section %" PRIu32 " name length 0 out of range 1..%d", what, id,
                            LM_SECTION_NAME_MAX);
    if (len < 13 + (size_t)nlen)
        return lm_error_set(err, -EPROTO,
                            "%s: section %" PRIu32 " name of %u bytes runs past payload of %zu",
                            what, id, nlen, len);
    long bad = bad_name_byte(payload + 13, nlen);
    if (bad >= 0)
        return lm_error_set(err, -EPROTO,
                            "%s: section %" PRIu32 " name byte %ld is 0x%02x (not printable ASCII)",
                            what, id, bad, payload[13 + bad]);
    out->section_id = id;
    out->instance = get32(payload + 4);
    out->version = get32(payload + 8);
    out->name_len = nlen;
    memcpy(out->name, payload + 13, nlen);
    out->name[nlen] = '\0';
    return 13 + nlen;
}

/* --------------------------------------------------------------------- RAM */

/* Validates one block table entry; name is name_len bytes, not
 * necessarily NUL-terminated.  idx is for the message. */
static int block_check(uint32_t idx, const uint8_t *name, size_t name_len, uint64_t page_size,
                       uint64_t length, lm_error *err)
{
    if (name_len == 0 || name_len > LM_RAM_NAME_MAX)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block %" PRIu32 " name length %zu out of range 1..%d", idx,
                            name_len, LM_RAM_NAME_MAX);
    long bad = bad_name_byte(name, name_len);
    if (bad >= 0)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block %" PRIu32
                            " name byte %ld is 0x%02x (not printable ASCII)",
                            idx, bad, name[bad]);
    if (!page_size_ok(page_size))
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block \"%.*s\" page size %" PRIu64
                            " is not a power of two in 4096..1GiB",
                            (int)name_len, (const char *)name, page_size);
    if (length == 0 || length % page_size)
        return lm_error_set(err, -EPROTO,
                            "RAM_BLOCKS: block \"%.*s\" length %" PRIu64
                            " is not a non-zero multiple of its page size %" PRIu64,
                            (int)name_len, (const char *)name, length, page_size);
    return 0;
}

int lm_fmt_ram_blocks_encode(const lm_fmt_block *b, uint32_t n, uint8_t *buf, size_t cap)
{
    if (n > LM_RAM_MAX_BLOCKS)
        return -EINVAL;
    size_t need = 4;
    for (uint32_t i = 0; i < n; i++) {
        size_t nl = strnlen(b[i].name, sizeof b[i].name);
        if (nl == sizeof b[i].name ||
            block_check(i, (const uint8_t *)b[i].name, nl, b[i].page_size, b[i].length, NULL) < 0)
            return -EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(b[i].name, b[j].name) == 0)
                return -EINVAL;
        need += 1 + nl + 4 + 8;
    }
    if (cap < need)
        return -ENOSPC;
    uint8_t *p = buf;
    put32(p, n);
    p += 4;
    for (uint32_t i = 0; i < n; i++) {
        size_t nl = strlen(b[i].name);
        *p++ = (uint8_t)nl;
        memcpy(p, b[i].name, nl);
        p += nl;
        put32(p, b[i].page_size);
        p += 4;
        put64(p, b[i].length);
        p += 8;
    }
    return (int)need;
}

int lm_fmt_ram_blocks_decode(const uint8_t *payload, size_t len, lm_fmt_block *out, uint32_t max,
                             uint32_t *n, lm_error *err)
{
    if (len < 4)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload of %zu bytes too short for a count",
                            len);
    uint32_t count = get32(payload);
    if (count > LM_RAM_MAX_BLOCKS)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: count %" PRIu32 " out of range 0..%d", count,
                            LM_RAM_MAX_BLOCKS);
    if (count > max)
        return lm_error_set(
            err, -ENOSPC, "RAM_BLOCKS: %" PRIu32 " blocks but room for only %" PRIu32, count, max);
    size_t off = 4;
    for (uint32_t i = 0; i < count; i++) {
        if (len - off < 1)
            return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload ends before block %" PRIu32, i);
        size_t nl = payload[off];
        if (nl == 0 || nl > LM_RAM_NAME_MAX)
            return lm_error_set(err, -EPROTO,
                                "RAM_BLOCKS: block %" PRIu32 " name length %zu out of range 1..%d",
                                i, nl, LM_RAM_NAME_MAX);
        if (len - off - 1 < nl + 12)
            return lm_error_set(err, -EPROTO, "RAM_BLOCKS: payload ends inside block %" PRIu32, i);
        const uint8_t *name = payload + off + 1;
        uint32_t ps = get32(name + nl);
        uint64_t length = get64(name + nl + 4);
        int rc = block_check(i, name, nl, ps, length, err);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < i; j++)
            if (strlen(out[j].name) == nl && memcmp(out[j].name, name, nl) == 0)
                return lm_error_set(err, -EPROTO,
                                    "RAM_BLOCKS: block %" PRIu32
                                    " name \"%.*s\" duplicates block %" PRIu32,
                                    i, (int)nl, (const char *)name, j);
        memcpy(out[i].name, name, nl);
        out[i].name[nl] = '\0';
        out[i].page_size = ps;
        out[i].length = length;
        off += 1 + nl + 12;
    }
    if (off != len)
        return lm_error_set(err, -EPROTO, "RAM_BLOCKS: %zu trailing bytes after %" PRIu32 " blocks",
                            len - off, count);
    *n = count;
    return (int)len;
}

/* The run header is shared by RAM_PAGES and RP_REQ_PAGES; what names the
 * record in messages. */
static int run_hdr_decode(const char *what, const uint8_t *buf, size_t len, lm_ram_run *out,
                          lm_error *err)
{
    if (len < LM_RAM_PAGES_HDR_SIZE)
        return 0;
    uint32_t count = get32(buf + 4);
    if (count < 1 || count > LM_RAM_MAX_RUN)
        return lm_error_set(err, -EPROTO, "%s: count %" PRIu32 " out of range 1..%d", what, count,
                            LM_RAM_MAX_RUN);
    out->block = get32(buf);
    out->count = count;
    out->first_page = get64(buf + 8);
    return LM_RAM_PAGES_HDR_SIZE;
}

int lm_fmt_ram_pages_hdr_encode(const lm_ram_run *r, uint8_t *buf, size_t cap)
{
    if (r->count < 1 || r->count > LM_RAM_MAX_RUN)
        return -EINVAL;
    if (cap < LM_RAM_PAGES_HDR_SIZE)
        return -ENOSPC;
    put32(buf, r->block);
    put32(buf + 4, r->count);
    put64(buf + 8, r->first_page);
    return LM_RAM_PAGES_HDR_SIZE;
}

int lm_fmt_ram_pages_hdr_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err)
{
    return run_hdr_decode("RAM_PAGES", buf, len, out, err);
}

int lm_fmt_req_pages_decode(const uint8_t *buf, size_t len, lm_ram_run *out, lm_error *err)
{
    return run_hdr_decode("RP_REQ_PAGES", buf, len, out, err);
}

int lm_fmt_ram_zero_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap)
{
    if (z->count < 1)
        return -EINVAL;
    if (cap < LM_RAM_ZERO_SIZE)
        return -ENOSPC;
    put32(buf, z->block);
    put32(buf + 4, 0);
    put64(buf + 8, z->first_page);
    put64(buf + 16, z->count);
    return LM_RAM_ZERO_SIZE;
}

/* RAM_ZERO and POSTCOPY_DISCARD share a layout; `what` names the record. */
static int range_decode(const char *what, const uint8_t *payload, size_t len, lm_ram_zero *out,
                        lm_error *err)
{
    if (len != LM_RAM_ZERO_SIZE)
        return lm_error_set(err, -EPROTO, "%s: payload of %zu bytes, must be %d", what, len,
                            LM_RAM_ZERO_SIZE);
    if (get32(payload + 4))
        return lm_error_set(err, -EPROTO, "%s: reserved 0x%08" PRIx32 " must be 0", what,
                            get32(payload + 4));
    uint64_t count = get64(payload + 16);
    if (count < 1)
        return lm_error_set(err, -EPROTO, "%s: count 0, must be at least 1", what);
    out->block = get32(payload);
    out->first_page = get64(payload + 8);
    out->count = count;
    return LM_RAM_ZERO_SIZE;
}

int lm_fmt_ram_zero_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err)
{
    return range_decode("RAM_ZERO", payload, len, out, err);
}

int lm_fmt_discard_encode(const lm_ram_zero *z, uint8_t *buf, size_t cap)
{
    return lm_fmt_ram_zero_encode(z, buf, cap);
}

int lm_fmt_discard_decode(const uint8_t *payload, size_t len, lm_ram_zero *out, lm_error *err)
{
    return range_decode("POSTCOPY_DISCARD", payload, len, out, err);
}

int lm_fmt_ram_run_check(uint32_t block, uint64_t first_page, uint64_t count,
                         const lm_fmt_block *blocks, uint32_t nblocks, lm_error *err)
{
    if (block >= nblocks)
        return lm_error_set(err, -EPROTO,
                            "RAM run: block %" PRIu32 " out of range (%" PRIu32 " blocks)", block,
                            nblocks);
    const lm_fmt_block *b = &blocks[block];
    if (b->page_size == 0)
        return lm_error_set(err, -EINVAL, "RAM run: block \"%s\" has page size 0", b->name);
    if (count < 1)
        return lm_error_set(err, -EPROTO, "RAM run: count 0 in block \"%s\"", b->name);
    uint64_t pages = b->length / b->page_size;
    /* Written as two comparisons so first_page + count cannot wrap. */
    if (first_page > pages || count > pages - first_page)
        return lm_error_set(err, -EPROTO,
                            "RAM run: pages %" PRIu64 "+%" PRIu64
                            " past the end of block \"%s\" (%" PRIu64 " pages)",
                            first_page, count, b->name, pages);
    return 0;
}

/* ---------------------------------------------------------------- multifd */

int lm_fmt_mfd_pages_hdr_encode(const lm_mfd_pages *p, uint8_t *buf, size_t cap)
{
    if ((uint32_t)p->normal + p->zero < 1 || (uint32_t)p->normal + p->zero > LM_MFD_MAX_PAGES ||
        p->compression > LM_MFD_COMP_LZ4)
        return -EINVAL;
    if (cap < LM_MFD_HDR_SIZE)
        return -ENOSPC;
    put32(buf, p->block);
    put16(buf + 4, p->normal);
    put16(buf + 6, p->zero);
    buf[8] = p->compression;
    buf[9] = buf[10] = buf[11] = 0;
    put32(buf + 12, p->data_len);
    put64(buf + 16, p->packet_num);
    return LM_MFD_HDR_SIZE;
}

int lm_fmt_mfd_pages_hdr_decode(const uint8_t *buf, size_t len, uint32_t rec_len,
                                uint32_t page_size, lm_mfd_pages *out, lm_error *err)
{
    if (len < LM_MFD_HDR_SIZE)
        return 0;
    lm_mfd_pages p = {.block = get32(buf), .normal = get16(buf + 4), .zero = get16(buf + 6),
                      .compression = buf[8], .data_len = get32(buf + 12),
                      .packet_num = get64(buf + 16)};
    uint32_t n = (uint32_t)p.normal + p.zero;
    if (n < 1 || n > LM_MFD_MAX_PAGES)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: %" PRIu32 " pages, must be 1..%d", n,
                            LM_MFD_MAX_PAGES);
    if (p.compression > LM_MFD_COMP_LZ4)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: unknown compression %u", p.compression);
    for (int i = 9; i < 12; i++)
        if (buf[i])
            return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: reserved byte %d is 0x%02x, must "
                                              "be 0", i, buf[i]);
    uint64_t want = LM_MFD_HDR_SIZE + 8ull * n + p.data_len;
    if (want != rec_len)
        return lm_error_set(err, -EPROTO,
                            "MULTIFD_PAGES: record of %" PRIu32 " bytes, header says %" PRIu64
                            " (%u + %" PRIu32 " indices + %" PRIu32 " data bytes)",
                            rec_len, want, LM_MFD_HDR_SIZE, n, p.data_len);
    if (p.compression == LM_MFD_COMP_NONE) {
        if (page_size && (uint64_t)p.data_len != (uint64_t)p.normal * page_size)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: %" PRIu32 " data bytes for %u pages of %" PRIu32
                                " bytes",
                                p.data_len, p.normal, page_size);
    } else if ((p.normal == 0) != (p.data_len == 0)) {
        return lm_error_set(err, -EPROTO,
                            "MULTIFD_PAGES: %" PRIu32 " compressed bytes for %u normal pages",
                            p.data_len, p.normal);
    }
    *out = p;
    return LM_MFD_HDR_SIZE;
}

int lm_fmt_mfd_index_encode(const uint64_t *idx, uint32_t n, uint8_t *buf, size_t cap)
{
    if (cap < 8ull * n)
        return -ENOSPC;
    for (uint32_t i = 0; i < n; i++)
        put64(buf + 8 * i, idx[i]);
    return (int)(8 * n);
}

int lm_fmt_mfd_index_decode(const uint8_t *buf, size_t len, const lm_mfd_pages *p,
                            uint64_t block_pages, uint64_t *out, lm_error *err)
{
    uint32_t n = (uint32_t)p->normal + p->zero;
    if (len < 8ull * n)
        return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: index list cut short");
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = get64(buf + 8 * i);
        if (v >= block_pages)
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page %" PRIu64 " past the end of block %" PRIu32
                                " (%" PRIu64 " pages)",
                                v, p->block, block_pages);
        if (i != 0 && i != p->normal && v <= out[i - 1])
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page index %" PRIu64 " after %" PRIu64
                                " (lists must be strictly ascending)",
                                v, out[i - 1]);
        out[i] = v;
    }
    /* No page in both lists: a merge walk over the two sorted lists. */
    uint32_t a = 0, b = p->normal;
    while (a < p->normal && b < n) {
        if (out[a] == out[b])
            return lm_error_set(err, -EPROTO,
                                "MULTIFD_PAGES: page %" PRIu64 " is both normal and zero", out[a]);
        if (out[a] < out[b])
            a++;
        else
            b++;
    }
    return (int)(8 * n);
}

/* ------------------------------------------------------- small fixed records */

int lm_fmt_u32_encode(uint32_t v, uint8_t *buf, size_t cap)
{
    if (cap < 4)
        return -ENOSPC;
    put32(buf, v);
    return 4;
}

int lm_fmt_u32_decode(const uint8_t *payload, size_t len, uint32_t *out, lm_error *err)
{
    if (len != 4)
        return lm_error_set(err, -EPROTO, "u32 payload of %zu bytes, must be 4", len);
    *out = get32(payload);
    return 4;
}

int lm_fmt_u64_encode(uint64_t v, uint8_t *buf, size_t cap)
{
    if (cap < 8)
        return -ENOSPC;
    put64(buf, v);
    return 8;
}

int lm_fmt_u64_decode(const uint8_t *payload, size_t len, uint64_t *out, lm_error *err)
{
    if (len != 8)
        return lm_error_set(err, -EPROTO, "u64 payload of %zu bytes, must be 8", len);
    *out = get64(payload);
    return 8;
}

/* The encoder replaces bytes the decoder refuses (newlines, tabs, DEL in an
 * lm_error message) with '?' instead of failing: an ERROR record exists to
 * tell the peer why we abort, and losing it over a stray '\n' would be
 * worse than a changed character. */
int lm_fmt_status_msg_encode(const lm_status_msg *s, uint8_t *buf, size_t cap)
{
    size_t n = strnlen(s->msg, sizeof s->msg - 1);
    if (cap < STATUS_HDR_SIZE + n)
        return -ENOSPC;
    put32(buf, (uint32_t)s->status);
    put16(buf + 4, (uint16_t)n);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s->msg[i];
        buf[STATUS_HDR_SIZE + i] = msg_byte_ok(c) ? c : '?';
    }
    return (int)(STATUS_HDR_SIZE + n);
}

int lm_fmt_status_msg_decode(const uint8_t *payload, size_t len, lm_status_msg *out, lm_error *err)
{
    if (len < STATUS_HDR_SIZE)
        return lm_error_set(err, -EPROTO, "status message: payload of %zu bytes, need at least %d",
                            len, STATUS_HDR_SIZE);
    uint16_t n = get16(payload + 4);
    if (n > LM_ERROR_MSG_MAX - 1)
        return lm_error_set(err, -EPROTO, "status message: text length %u above maximum %d", n,
                            LM_ERROR_MSG_MAX - 1);
    if (len != STATUS_HDR_SIZE + (size_t)n)
        return lm_error_set(err, -EPROTO,
                            "status message: payload of %zu bytes, must be %d + text length %u",
                            len, STATUS_HDR_SIZE, n);
    for (size_t i = 0; i < n; i++)
        if (!msg_byte_ok(payload[STATUS_HDR_SIZE + i]))
            return lm_error_set(err, -EPROTO,
                                "status message: text byte %zu is 0x%02x (control character)", i,
                                payload[STATUS_HDR_SIZE + i]);
    out->status = (int32_t)get32(payload);
    memcpy(out->msg, payload + STATUS_HDR_SIZE, n);
    out->msg[n] = '\0';
    return (int)len;
}

/* ----------------------------------------------------------- stream walker */

/* ---------------------------------------------------------- switchover-ack */

int lm_fmt_ack_devices_encode(const uint32_t *ids, uint32_t n, uint8_t *buf, size_t cap)
{
    if (n > LM_ACK_DEVICES_MAX)
        return -EINVAL;
    for (uint32_t i = 1; i < n; i++)
        if (ids[i] <= ids[i - 1])
            return -EINVAL;
    size_t need = 4 + 4 * (size_t)n;
    if (cap < need)
        return -ENOSPC;
    put32(buf, n);
    for (uint32_t i = 0; i < n; i++)
        put32(buf + 4 + 4 * i, ids[i]);
    return (int)need;
}

int lm_fmt_ack_devices_decode(const uint8_t *payload, size_t len, uint32_t *ids, uint32_t max,
                              uint32_t *n, lm_error *err)
{
    if (len < 4)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES: payload of %zu bytes too short", len);
    uint32_t count = get32(payload);
    if (count > LM_ACK_DEVICES_MAX)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES: count %" PRIu32 " above maximum %d",
                            count, LM_ACK_DEVICES_MAX);
    /* count <= 256: no overflow. */
    if (len != 4 + 4 * (size_t)count)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES: length %zu is not 4 + 4 x %" PRIu32,
                            len, count);
    if (count > max)
        return lm_error_set(err, -ENOSPC, "ACK_DEVICES: %" PRIu32 " devices, room for %" PRIu32,
                            count, max);
    for (uint32_t i = 0; i < count; i++) {
        ids[i] = get32(payload + 4 + 4 * i);
        if (i && ids[i] <= ids[i - 1])
            return lm_error_set(err, -EPROTO,
                                "ACK_DEVICES: section id %" PRIu32 " at %" PRIu32
                                " not above the previous %" PRIu32,
                                ids[i], i, ids[i - 1]);
    }
    *n = count;
    return (int)len;
}

int lm_fmt_device_ack_encode(uint32_t section_id, uint8_t state, uint8_t *buf, size_t cap)
{
    if (state != LM_DEV_ACK_READY && state != LM_DEV_ACK_DECLINED)
        return -EINVAL;
    if (cap < LM_DEVICE_ACK_SIZE)
        return -ENOSPC;
    put32(buf, section_id);
    buf[4] = state;
    buf[5] = buf[6] = buf[7] = 0;
    return LM_DEVICE_ACK_SIZE;
}

int lm_fmt_device_ack_decode(const uint8_t *payload, size_t len, uint32_t *section_id,
                             uint8_t *state, lm_error *err)
{
    if (len != LM_DEVICE_ACK_SIZE)
        return lm_error_set(err, -EPROTO, "RP_DEVICE_ACK: length %zu, must be %d", len,
                            LM_DEVICE_ACK_SIZE);
    uint8_t st = payload[4];
    if (st != LM_DEV_ACK_READY && st != LM_DEV_ACK_DECLINED)
        return lm_error_set(err, -EPROTO, "RP_DEVICE_ACK: state %u unknown (1 ready, 2 declined)",
                            st);
    if (payload[5] || payload[6] || payload[7])
        return lm_error_set(err, -EPROTO, "RP_DEVICE_ACK: reserved bytes must be 0");
    *section_id = get32(payload);
    *state = st;
    return LM_DEVICE_ACK_SIZE;
}

/* Walk state: the block table of the most recent RAM_BLOCKS record, which
 * gives RAM_PAGES/RAM_ZERO runs their bounds and page size. */
typedef struct walk_state {
    lm_fmt_block blocks[LM_RAM_MAX_BLOCKS];
    uint32_t nblocks;
    bool have_blocks;
} walk_state;

/* Decodes and checks one record payload (its length already fits its
 * type, per lm_fmt_rec_hdr_decode). */
static int walk_payload(walk_state *w, const lm_rec_hdr *h, const uint8_t *p, lm_error *err)
{
    int rc = 0;
    switch (h->type) {
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
    case LM_REC_SECTION_FULL: {
        lm_section_hdr s;
        rc = lm_fmt_section_hdr_decode(h->type, p, h->len, &s, err);
        break;
    }
    case LM_REC_RAM_BLOCKS: {
        uint32_t n = 0;
        rc = lm_fmt_ram_blocks_decode(p, h->len, w->blocks, LM_RAM_MAX_BLOCKS, &n, err);
        if (rc >= 0) {
            w->nblocks = n;
            w->have_blocks = true;
        }
        break;
    }
    case LM_REC_RAM_PAGES: {
        lm_ram_run r;
        rc = run_hdr_decode("RAM_PAGES", p, h->len, &r, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "RAM_PAGES before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(r.block, r.first_page, r.count, w->blocks, w->nblocks, err);
        if (rc < 0)
            break;
        /* count <= 1024 and page_size <= 1 GiB: the product fits in 64 bits. */
        uint64_t ps = w->blocks[r.block].page_size;
        if ((uint64_t)h->len != LM_RAM_PAGES_HDR_SIZE + (uint64_t)r.count * ps)
            return lm_error_set(err, -EPROTO,
                                "RAM_PAGES: length %" PRIu32 " is not %d + %" PRIu32
                                " pages of %" PRIu64 " bytes",
                                h->len, LM_RAM_PAGES_HDR_SIZE, r.count, ps);
        break;
    }
    case LM_REC_RAM_ZERO: {
        lm_ram_zero z;
        rc = lm_fmt_ram_zero_decode(p, h->len, &z, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "RAM_ZERO before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(z.block, z.first_page, z.count, w->blocks, w->nblocks, err);
        break;
    }
    case LM_REC_POSTCOPY_DISCARD: {
        lm_ram_zero z;
        rc = lm_fmt_discard_decode(p, h->len, &z, err);
        if (rc < 0)
            break;
        if (!w->have_blocks)
            return lm_error_set(err, -EPROTO, "POSTCOPY_DISCARD before any RAM_BLOCKS");
        rc = lm_fmt_ram_run_check(z.block, z.first_page, z.count, w->blocks, w->nblocks, err);
        break;
    }
    case LM_REC_RAM_PASS:
    case LM_REC_MULTIFD_FLUSH:
    case LM_REC_MULTIFD_SYNC: {
        uint64_t v;
        rc = lm_fmt_u64_decode(p, h->len, &v, err);
        break;
    }
    case LM_REC_MULTIFD_PAGES: {
        /* A multifd channel's stream has no block table of its own: the
         * index bounds are checked when one was seen in the same walk. */
        lm_mfd_pages mp;
        uint32_t ps = 0;
        uint64_t pages = UINT64_MAX;
        rc = lm_fmt_mfd_pages_hdr_decode(p, h->len, h->len, 0, &mp, err);
        if (rc < 0)
            break;
        if (w->have_blocks) {
            if (mp.block >= w->nblocks)
                return lm_error_set(err, -EPROTO, "MULTIFD_PAGES: block %" PRIu32
                                                  " out of range (%" PRIu32 " blocks)",
                                    mp.block, w->nblocks);
            ps = w->blocks[mp.block].page_size;
            pages = w->blocks[mp.block].length / ps;
            rc = lm_fmt_mfd_pages_hdr_decode(p, h->len, h->len, ps, &mp, err);
            if (rc < 0)
                break;
        }
        uint64_t idx[LM_MFD_MAX_PAGES];
        rc = lm_fmt_mfd_index_decode(p + LM_MFD_HDR_SIZE, h->len - LM_MFD_HDR_SIZE, &mp, pages,
                                     idx, err);
        break;
    }
    case LM_REC_PING:
    case LM_REC_RP_PONG: {
        uint32_t v;
        rc = lm_fmt_u32_decode(p, h->len, &v, err);
        break;
    }
    case LM_REC_SWITCHOVER_START:
    case LM_REC_POSTCOPY_RUN:
    case LM_REC_EOS:
    case LM_REC_RP_SWITCHOVER_ACK:
        break;
    case LM_REC_ERROR:
    case LM_REC_RP_SHUT: {
        lm_status_msg m;
        rc = lm_fmt_status_msg_decode(p, h->len, &m, err);
        break;
    }
    case LM_REC_RP_REQ_PAGES: {
        lm_ram_run r;
        rc = run_hdr_decode("RP_REQ_PAGES", p, h->len, &r, err);
        if (rc < 0)
            break;
        /* Bounds-checked against the table when one was seen (a capture
         * of the return path alone has none). */
        if (w->have_blocks)
            rc = lm_fmt_ram_run_check(r.block, r.first_page, r.count, w->blocks, w->nblocks,
                                      err);
        break;
    }
    case LM_REC_ACK_DEVICES: {
        uint32_t ids[LM_ACK_DEVICES_MAX], n;
        rc = lm_fmt_ack_devices_decode(p, h->len, ids, LM_ACK_DEVICES_MAX, &n, err);
        break;
    }
    case LM_REC_RP_DEVICE_ACK: {
        uint32_t id;
        uint8_t st;
        rc = lm_fmt_device_ack_decode(p, h->len, &id, &st, err);
        break;
    }
    default:
        /* Unreachable: lm_fmt_rec_hdr_decode refuses unknown types. */
        return lm_error_set(err, -EPROTO, "record type 0x%02x unknown", h->type);
    }
    return rc < 0 ? rc : 0;
}

long lm_fmt_walk(const uint8_t *buf, size_t len, bool expect_hello, lm_fmt_walk_fn cb, void *opaque,
                 lm_error *err)
{
    walk_state w;
    w.nblocks = 0;
    w.have_blocks = false;
    size_t off = 0;
    long ret;

    if (expect_hello) {
        lm_hello h;
        int rc = lm_fmt_hello_decode(buf, len, &h, err);
        if (rc <= 0) {
            ret = rc; /* 0: the HELLO itself is incomplete */
            goto out;
        }
        off = (size_t)rc;
    }
    while (off < len) {
        lm_rec_hdr h;
        int rc = lm_fmt_rec_hdr_decode(buf + off, len - off, &h, err);
        if (rc < 0) {
            lm_error_prefix(err, "stream offset %zu", off);
            ret = rc;
            goto out;
        }
        if (rc == 0 || len - off - LM_REC_HDR_SIZE < h.len)
            break; /* incomplete record: stop at the last complete one */
        const uint8_t *payload = buf + off + LM_REC_HDR_SIZE;
        rc = walk_payload(&w, &h, payload, err);
        if (rc < 0) {
            lm_error_prefix(err, "stream offset %zu", off);
            ret = rc;
            goto out;
        }
        if (cb) {
            rc = cb(opaque, &h, payload);
            if (rc < 0) {
                /* No-op if the callback already filled err (first wins). */
                lm_error_set(err, rc, "stream offset %zu: %s record refused by the caller", off,
                             lm_rec_type_name(h.type));
                ret = rc;
                goto out;
            }
        }
        off += LM_REC_HDR_SIZE + h.len;
    }
    ret = (long)off;
out:
    return ret;
}
