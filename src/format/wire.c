/*
 * wire.c - encoders and decoders of the livemig wire format v1 (the
 * byte-level spec is docs/format.md; the C interface is format.h): HELLO,
 * record headers, sections, small fixed records, switchover-ack.  RAM and
 * multifd payloads are in pages.c, the stream walker in walk.c.
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
#include "format/bytes.h"
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
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
    if (h->kind > LM_HELLO_RESUME)
        return lm_error_set(err, -EPROTO,
                            "HELLO: kind %u unknown (0 request, 1 accept, 2 reject, 3 resume)",
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
    case LM_REC_POSTCOPY_RESUME:
        return "POSTCOPY_RESUME";
    case LM_REC_RP_RECV_BITMAP:
        return "RP_RECV_BITMAP";
    case LM_REC_RP_RESUME_ACK:
        return "RP_RESUME_ACK";
    case LM_REC_MAPPED_RAM:
        return "MAPPED_RAM";
    case LM_REC_RAM_XBZRLE:
        return "RAM_XBZRLE";
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
    case LM_REC_RAM_XBZRLE: /* the smallest pair: two lengths and one byte */
        *min = LM_XBZRLE_HDR_SIZE + 3;
        *max = LM_XBZRLE_HDR_SIZE + LM_XBZRLE_DATA_MAX;
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
    case LM_REC_POSTCOPY_RESUME:
    case LM_REC_EOS:
    case LM_REC_RP_SWITCHOVER_ACK:
        *min = *max = 0;
        return true;
    case LM_REC_RP_RESUME_ACK:
        *min = *max = 8;
        return true;
    case LM_REC_RP_RECV_BITMAP:
        *min = LM_RECV_BITMAP_HDR_SIZE + 1;
        *max = LM_RECV_BITMAP_MAX;
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
    case LM_REC_MAPPED_RAM:
        *min = LM_MAPPED_HDR_SIZE + LM_MAPPED_ENTRY_SIZE;
        *max = LM_MAPPED_MAX;
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
        return lm_error_set(err, -EPROTO, "ACK_DEVICES: count %" PRIu32 " above maximum %d", count,
                            LM_ACK_DEVICES_MAX);
    /* count <= 256: no overflow. */
    if (len != 4 + 4 * (size_t)count)
        return lm_error_set(err, -EPROTO, "ACK_DEVICES: length %zu is not 4 + 4 x %" PRIu32, len,
                            count);
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

/* ------------------------------------------------------ recovery bitmap */

int lm_fmt_recv_bitmap_encode(const lm_recv_bitmap *b, const uint64_t *words, uint8_t *buf,
                              size_t cap)
{
    if (b->npages < 1 || b->npages > LM_RECV_BITMAP_MAX_PAGES || b->first_page % 64)
        return -EINVAL;
    size_t nbytes = (b->npages + 7) / 8;
    if (cap < LM_RECV_BITMAP_HDR_SIZE + nbytes)
        return -ENOSPC;
    put32(buf, b->block);
    put32(buf + 4, b->npages);
    put64(buf + 8, b->first_page);
    uint8_t *p = buf + LM_RECV_BITMAP_HDR_SIZE;
    for (size_t i = 0; i < nbytes; i++)
        p[i] = (uint8_t)(words[i / 8] >> (8 * (i % 8)));
    if (b->npages % 8)
        p[nbytes - 1] &= (uint8_t)((1u << (b->npages % 8)) - 1);
    return (int)(LM_RECV_BITMAP_HDR_SIZE + nbytes);
}

int lm_fmt_recv_bitmap_decode(const uint8_t *payload, size_t len, lm_recv_bitmap *out,
                              lm_error *err)
{
    if (len < LM_RECV_BITMAP_HDR_SIZE + 1 || len > LM_RECV_BITMAP_MAX)
        return lm_error_set(err, -EPROTO, "RP_RECV_BITMAP: length %zu out of range %d..%d", len,
                            LM_RECV_BITMAP_HDR_SIZE + 1, LM_RECV_BITMAP_MAX);
    lm_recv_bitmap b = {.block = get32(payload),
                        .npages = get32(payload + 4),
                        .first_page = get64(payload + 8),
                        .words = payload + LM_RECV_BITMAP_HDR_SIZE};
    if (b.npages < 1 || b.npages > LM_RECV_BITMAP_MAX_PAGES)
        return lm_error_set(err, -EPROTO, "RP_RECV_BITMAP: %" PRIu32 " pages, must be 1..%u",
                            b.npages, LM_RECV_BITMAP_MAX_PAGES);
    if (b.first_page % 64)
        return lm_error_set(err, -EPROTO,
                            "RP_RECV_BITMAP: first page %" PRIu64 " is not a multiple of 64",
                            b.first_page);
    size_t nbytes = (b.npages + 7) / 8;
    if (len != LM_RECV_BITMAP_HDR_SIZE + nbytes)
        return lm_error_set(err, -EPROTO,
                            "RP_RECV_BITMAP: length %zu, must be %zu for %" PRIu32 " pages", len,
                            (size_t)LM_RECV_BITMAP_HDR_SIZE + nbytes, b.npages);
    if (b.npages % 8 && (b.words[nbytes - 1] >> (b.npages % 8)))
        return lm_error_set(err, -EPROTO, "RP_RECV_BITMAP: bits past page %" PRIu32 " are set",
                            b.npages);
    *out = b;
    return (int)len;
}

uint64_t lm_fmt_recv_bitmap_word(const lm_recv_bitmap *b, uint32_t i)
{
    size_t nbytes = (b->npages + 7) / 8, at = (size_t)i * 8;
    uint64_t w = 0;
    for (size_t k = 0; k < 8 && at + k < nbytes; k++)
        w |= (uint64_t)b->words[at + k] << (8 * k);
    return w;
}
