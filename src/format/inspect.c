/*
 * inspect.c - the stream inspector (inspect.h): lm_fmt_walk_rec decodes
 * and checks every record; this file counts what the stream carries and
 * adds the checks a loader makes over the whole stream, so that a
 * corrupt capture is refused with the offset of the first bad byte.
 * Pure, as wire.c.
 */
#include "format/inspect.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------- detection */

/* Layouts by their first bytes.  A mapped-ram file is a stream too (its
 * HELLO first, the regions inside it: on_mapped). */
static const struct {
    int kind;
    const char *name;
    uint8_t magic[4];
} formats[] = {
    {LM_INSP_STREAM, "livemig stream", {0x4c, 0x4d, 0x49, 0x47}}, /* "LMIG", HELLO */
};

const char *lm_insp_kind_name(int kind)
{
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (formats[i].kind == kind)
            return formats[i].name;
    return "unknown";
}

int lm_insp_detect(const uint8_t *buf, size_t len, lm_error *err)
{
    if (len == 0)
        return lm_error_set(err, -EPROTO, "offset 0: empty file, no HELLO (not a livemig stream)");
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (len >= 4 && memcmp(buf, formats[i].magic, 4) == 0)
            return formats[i].kind;
    char hex[3 * 8 + 1] = "";
    size_t n = len < 8 ? len : 8;
    for (size_t i = 0; i < n; i++)
        snprintf(hex + 3 * i - (i ? 1 : 0), 4, i ? " %02x" : "%02x", buf[i]);
    if (len >= 4 && memcmp(buf, "QEVM", 4) == 0)
        return lm_error_set(err, -EPROTO,
                            "offset 0: a QEMU migration stream (magic \"QEVM\"), not a livemig "
                            "one: use QEMU's scripts/analyze-migration.py");
    if (len < 4 && memcmp(buf, formats[0].magic, len) == 0)
        return lm_error_set(err, -EPROTO, "offset 0: HELLO truncated: %zu of %d bytes", len,
                            LM_HELLO_SIZE);
    return lm_error_set(err, -EPROTO,
                        "offset 0: not a livemig stream: the first bytes are %s, a HELLO "
                        "starts with 4c 4d 49 47 (\"LMIG\")",
                        hex);
}

/* ------------------------------------------------------------ accounting */

/* Records that travel destination -> source (the return path); ERROR
 * goes either way. */
static bool rec_to_src(uint8_t type)
{
    return type >= 0x80;
}

static int fail(lm_insp *s, uint64_t off, int code, const char *what)
{
    s->err_off = off;
    return lm_error_set(&s->err, code, "stream offset %" PRIu64 ": %s", off, what);
}

static lm_insp_section *section_find(lm_insp *s, uint32_t id)
{
    for (uint32_t i = 0; i < s->nsections; i++)
        if (s->sections[i].id == id)
            return &s->sections[i];
    return NULL;
}

/* START/FULL: binds an id to a device; PART/END: needs that binding. */
static int on_section(lm_insp *s, const lm_fmt_rec *r)
{
    char m[LM_ERROR_MSG_MAX];
    const lm_section_hdr *h = &r->u.section;
    uint8_t t = r->hdr.type;
    const char *tn = lm_rec_type_name(t);
    lm_insp_section *sec = section_find(s, h->section_id);
    if (t == LM_REC_SECTION_START || t == LM_REC_SECTION_FULL) {
        if (sec && (strcmp(sec->name, h->name) || sec->instance != h->instance ||
                    sec->version != h->version)) {
            snprintf(m, sizeof m,
                     "%s: section id %" PRIu32 " is bound to \"%s\" instance %" PRIu32
                     " version %" PRIu32 " already, here \"%s\" instance %" PRIu32
                     " version %" PRIu32,
                     tn, h->section_id, sec->name, sec->instance, sec->version, h->name,
                     h->instance, h->version);
            return fail(s, r->offset, -EPROTO, m);
        }
        if (sec && t == LM_REC_SECTION_START) {
            snprintf(m, sizeof m, "SECTION_START: a second one for section id %" PRIu32 " (\"%s\")",
                     h->section_id, h->name);
            return fail(s, r->offset, -EPROTO, m);
        }
        if (!sec) {
            if (s->nsections == LM_INSP_MAX_SECTIONS) {
                snprintf(m, sizeof m, "%s: more than %d device sections (inspect's limit)", tn,
                         LM_INSP_MAX_SECTIONS);
                return fail(s, r->offset, -ENOSPC, m);
            }
            sec = &s->sections[s->nsections++];
            sec->id = h->section_id;
            sec->instance = h->instance;
            sec->version = h->version;
            memcpy(sec->name, h->name, sizeof sec->name);
            sec->iterable = t == LM_REC_SECTION_START;
            sec->offset = r->offset;
        }
    } else {
        if (!sec && s->hello.kind == LM_HELLO_RESUME && s->nsections < LM_INSP_MAX_SECTIONS) {
            /* A recovery's channel goes on with sections its migration's
             * first main channel opened: bound there, not checkable here. */
            sec = &s->sections[s->nsections++];
            memset(sec, 0, sizeof *sec);
            sec->id = h->section_id;
            snprintf(sec->name, sizeof sec->name, "(opened before the recovery)");
            sec->iterable = true;
            sec->offset = r->offset;
        }
        if (!sec || !sec->iterable) {
            snprintf(m, sizeof m, "%s: section id %" PRIu32 " has no SECTION_START before it", tn,
                     h->section_id);
            return fail(s, r->offset, -EPROTO, m);
        }
        if (sec->ended) {
            snprintf(m, sizeof m, "%s: section id %" PRIu32 " (\"%s\") after its SECTION_END", tn,
                     h->section_id, sec->name);
            return fail(s, r->offset, -EPROTO, m);
        }
        if (t == LM_REC_SECTION_END)
            sec->ended = true;
    }
    sec->records++;
    sec->data_bytes += r->hdr.len - r->data_off;
    return 0;
}

/* Where a record may appear: direction, channel role, features, order. */
static int check_place(lm_insp *s, const lm_fmt_rec *r)
{
    char m[LM_ERROR_MSG_MAX];
    uint8_t t = r->hdr.type;
    const char *tn = lm_rec_type_name(t);
    const lm_hello *h = &s->hello;
    const char *why = NULL;

    if (s->eos_off >= 0)
        why = "after EOS (nothing follows the end of a stream)";
    else if (t != LM_REC_ERROR && rec_to_src(t) == s->to_dst)
        why = s->to_dst ? "is a return-path record, in a source-to-destination stream"
                        : "is a source record, in a destination-to-source stream";
    else if (s->to_dst && h->role != LM_ROLE_MULTIFD &&
             (t == LM_REC_MULTIFD_PAGES || t == LM_REC_MULTIFD_SYNC))
        why = "outside a multifd channel";
    else if (s->to_dst && h->role == LM_ROLE_MULTIFD && t != LM_REC_MULTIFD_PAGES &&
             t != LM_REC_MULTIFD_SYNC && t != LM_REC_EOS && t != LM_REC_ERROR)
        why = "on a multifd channel (which carries MULTIFD_PAGES, MULTIFD_SYNC, EOS)";
    else if (s->to_dst && h->role == LM_ROLE_PREEMPT && t != LM_REC_RAM_PAGES &&
             t != LM_REC_RAM_ZERO && t != LM_REC_EOS && t != LM_REC_ERROR)
        why = "on a preempt channel (which carries RAM_PAGES, RAM_ZERO, EOS)";
    else if (!s->to_dst && h->role == LM_ROLE_PREEMPT && t != LM_REC_RP_REQ_PAGES &&
             t != LM_REC_ERROR)
        why = "on a preempt channel's return direction (which carries RP_REQ_PAGES)";
    else if (t == LM_REC_POSTCOPY_RESUME && h->kind != LM_HELLO_RESUME)
        why = "outside a channel opened with HELLO RESUME (a postcopy recovery)";
    else if (t == LM_REC_MULTIFD_FLUSH && !(h->features & LM_FEAT_MULTIFD))
        why = "without the MULTIFD feature in the HELLO";
    else if ((t == LM_REC_POSTCOPY_DISCARD || t == LM_REC_POSTCOPY_RUN) &&
             !(h->features & LM_FEAT_POSTCOPY))
        why = "without the POSTCOPY feature in the HELLO";
    else if ((t == LM_REC_ACK_DEVICES || t == LM_REC_RP_DEVICE_ACK ||
              t == LM_REC_RP_SWITCHOVER_ACK) &&
             !(h->features & LM_FEAT_SWITCHOVER_ACK))
        why = "without the SWITCHOVER_ACK feature in the HELLO";
    else if (t == LM_REC_SWITCHOVER_START && s->switchover_off >= 0)
        why = "a second time";
    else if (t == LM_REC_POSTCOPY_RUN && s->postcopy_run_off >= 0)
        why = "a second time";
    else if (t == LM_REC_POSTCOPY_DISCARD && s->postcopy_run_off >= 0)
        why = "after POSTCOPY_RUN";
    else if (t == LM_REC_MAPPED_RAM && !(h->features & LM_FEAT_MAPPED_RAM))
        why = "without the MAPPED_RAM feature in the HELLO";
    else if (t == LM_REC_MAPPED_RAM && s->mapped)
        why = "a second time";
    else if ((t == LM_REC_RAM_PAGES || t == LM_REC_RAM_ZERO || t == LM_REC_RAM_XBZRLE) &&
             s->to_dst && (h->features & LM_FEAT_MAPPED_RAM))
        why = "in a mapped-ram stream (its pages have their places in the file)";
    if (!why)
        return 0;
    snprintf(m, sizeof m, "%s record %s", tn, why);
    return fail(s, r->offset, -EPROTO, m);
}

static void on_blocks(lm_insp *s, const lm_fmt_rec *r)
{
    /* A later table replaces the first; counts stay with a block only if
     * the table is the same. */
    bool same = s->tables && r->nblocks == s->nblocks;
    for (uint32_t i = 0; same && i < r->nblocks; i++)
        same = memcmp(&s->blocks[i].b, &r->blocks[i], sizeof r->blocks[i]) == 0;
    if (!same) {
        memset(s->blocks, 0, sizeof s->blocks);
        for (uint32_t i = 0; i < r->nblocks; i++)
            s->blocks[i].b = r->blocks[i];
        s->nblocks = r->nblocks;
    }
    s->tables++;
}

/* A channel keeps one compression method (one stream per channel,
 * docs/format.md §4.14); the caller's hook checks compressed data. */
static int on_mfd_data(lm_insp *s, const lm_fmt_rec *r)
{
    char m[LM_ERROR_MSG_MAX + 64]; /* room for e.msg and a prefix */
    static const char *names[] = {"none", "zlib", "zstd", "lz4"};
    const lm_mfd_pages *p = &r->u.mfd; /* compression < 4: checked by the decoder */
    if (p->compression == LM_MFD_COMP_NONE)
        return 0;
    if (s->comp_method && s->comp_method != p->compression) {
        snprintf(m, sizeof m, "MULTIFD_PAGES: compression %s after %s on the same channel",
                 names[p->compression], names[s->comp_method]);
        return fail(s, r->offset, -EPROTO, m);
    }
    s->comp_method = p->compression;
    if (!s->hooks || !s->hooks->data || !p->normal)
        return 0;
    uint64_t ps = p->block < s->nblocks ? s->blocks[p->block].b.page_size : s->hello.page_size;
    lm_error e = {0};
    if (s->hooks->data(s->hooks->opaque, r, p->normal * ps, &e) < 0) {
        snprintf(m, sizeof m, "MULTIFD_PAGES packet %" PRIu64 ": %s", p->packet_num, e.msg);
        return fail(s, r->offset, e.code ? e.code : -EPROTO, m);
    }
    return 0;
}

/* MAPPED_RAM (the walker decoded it and checked it against the table):
 * the regions must lie in the file; every bitmap is read and checked.
 * Offsets in the record are absolute file offsets; buf[0] is at file
 * offset record_end - (the record's end in buf). */
static int on_mapped(lm_insp *s, const lm_fmt_rec *r)
{
    char m[LM_ERROR_MSG_MAX + 64];
    lm_mapped_layout *l = &s->layout;
    lm_error e = {0};
    if (lm_fmt_mapped_decode(r->payload, r->hdr.len, l, &e) < 0)
        return fail(s, r->offset, e.code, e.msg); /* the walker decoded it already */
    uint64_t end = r->offset + LM_REC_HDR_SIZE + (uint64_t)r->hdr.len;
    if (l->record_end < end) {
        snprintf(m, sizeof m,
                 "MAPPED_RAM: corrupt header: record_end %" PRIu64 " is before the record's end "
                 "(byte %" PRIu64 " of the stream)",
                 l->record_end, end);
        return fail(s, r->offset, -EPROTO, m);
    }
    s->mapped_base = l->record_end - end;
    if (l->resume - l->record_end > s->len - end) {
        snprintf(m, sizeof m,
                 "MAPPED_RAM: truncated: the page regions end at file offset %" PRIu64
                 ", past the end of the file (%" PRIu64 " bytes)",
                 l->resume, s->mapped_base + s->len);
        return fail(s, r->offset, -EPROTO, m);
    }
    for (uint32_t i = 0; i < l->nblocks; i++) {
        const lm_mapped_block *mb = &l->b[i];
        int64_t n = lm_fmt_mapped_bitmap_check(s->buf + (mb->bitmap_offset - s->mapped_base),
                                               mb->npages, i, &e);
        if (n < 0) {
            /* e.msg is "MAPPED_RAM: block N: what": add the name and where. */
            const char *what = strstr(e.msg, ": corrupt");
            snprintf(m, sizeof m,
                     "MAPPED_RAM: block %" PRIu32 " (\"%s\"), bitmap at file offset %" PRIu64
                     ": %s",
                     i, s->blocks[i].b.name, mb->bitmap_offset, what ? what + 2 : e.msg);
            s->err_off = mb->bitmap_offset - s->mapped_base;
            return lm_error_set(&s->err, e.code, "stream offset %" PRIu64 ": %s", s->err_off, m);
        }
        s->blocks[i].mapped_present = (uint64_t)n;
    }
    s->mapped = true;
    s->mapped_off = (int64_t)r->offset;
    return 0;
}

static int on_record(void *opaque, const lm_fmt_rec *r)
{
    lm_insp *s = opaque;
    uint8_t t = r->hdr.type;
    int rc = check_place(s, r);
    if (rc < 0)
        return rc;
    lm_insp_block *b = NULL;
    switch (t) {
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
    case LM_REC_SECTION_FULL:
        rc = on_section(s, r);
        break;
    case LM_REC_RAM_BLOCKS:
        on_blocks(s, r);
        break;
    case LM_REC_RAM_PAGES:
        b = &s->blocks[r->u.run.block]; /* checked against the table */
        b->data_pages += r->u.run.count;
        b->data_runs++;
        break;
    case LM_REC_RP_REQ_PAGES:
        if (r->u.run.block < s->nblocks)
            s->blocks[r->u.run.block].req_pages += r->u.run.count;
        break;
    case LM_REC_RAM_XBZRLE:
        b = &s->blocks[r->u.xbzrle.block]; /* checked against the table */
        b->xbzrle_pages++;
        b->xbzrle_bytes += r->u.xbzrle.data_len;
        break;
    case LM_REC_RAM_ZERO:
        b = &s->blocks[r->u.zero.block];
        b->zero_pages += r->u.zero.count;
        b->zero_runs++;
        break;
    case LM_REC_POSTCOPY_DISCARD:
        s->blocks[r->u.zero.block].discard_pages += r->u.zero.count;
        break;
    case LM_REC_MULTIFD_PAGES: {
        const lm_mfd_pages *p = &r->u.mfd;
        rc = on_mfd_data(s, r);
        if (rc < 0)
            return rc;
        s->mfd_packets++;
        s->comp_seen |= 1u << p->compression;
        s->mfd_normal += p->normal;
        s->mfd_zero += p->zero;
        if (p->block >= s->nblocks)
            break; /* a channel inspected without its main channel's table */
        b = &s->blocks[p->block];
        b->mfd_normal += p->normal;
        b->mfd_zero += p->zero;
        if (p->compression != LM_MFD_COMP_NONE) {
            b->mfd_comp_pages += p->normal;
            b->mfd_comp_bytes += p->data_len;
        }
        break;
    }
    case LM_REC_MAPPED_RAM:
        rc = on_mapped(s, r);
        break;
    case LM_REC_RAM_PASS:
        s->last_pass = r->u.u64;
        break;
    case LM_REC_SWITCHOVER_START:
        s->switchover_off = (int64_t)r->offset;
        break;
    case LM_REC_POSTCOPY_RUN:
        s->postcopy_run_off = (int64_t)r->offset;
        break;
    case LM_REC_EOS:
        for (uint32_t i = 0; i < s->nsections; i++) {
            const lm_insp_section *sec = &s->sections[i];
            if (sec->iterable && !sec->ended) {
                char m[LM_ERROR_MSG_MAX];
                snprintf(m, sizeof m,
                         "EOS while section id %" PRIu32 " (\"%s\") has no SECTION_END", sec->id,
                         sec->name);
                return fail(s, r->offset, -EPROTO, m);
            }
        }
        if (s->to_dst && s->hello.role == LM_ROLE_MAIN &&
            (s->hello.features & LM_FEAT_MAPPED_RAM) && !s->mapped)
            return fail(s, r->offset, -EPROTO,
                        "EOS without a MAPPED_RAM record, although the HELLO has the "
                        "MAPPED_RAM feature (the pages are nowhere)");
        s->eos_off = (int64_t)r->offset;
        break;
    case LM_REC_ERROR:
        if (!s->have_error) {
            s->have_error = true;
            s->error = r->u.status;
            s->error_off = (int64_t)r->offset;
        }
        break;
    case LM_REC_RP_SHUT:
        s->have_shut = true;
        s->shut_status = r->u.status.status;
        break;
    default:
        break;
    }
    if (rc < 0)
        return rc;
    if (s->hooks && s->hooks->record) {
        lm_error e = {0};
        if (s->hooks->record(s->hooks->opaque, r, &e) < 0)
            return fail(s, r->offset, e.code ? e.code : -EIO, e.msg);
    }
    s->records++;
    s->rec_count[t]++;
    s->rec_bytes[t] += LM_REC_HDR_SIZE + (uint64_t)r->hdr.len;
    s->valid = r->offset + LM_REC_HDR_SIZE + r->hdr.len;
    return 0;
}

/* The walk stopped before the end of buf: a record (or its header) the
 * capture cut short. */
static int truncated(lm_insp *s, const uint8_t *buf, size_t len, size_t off)
{
    char m[LM_ERROR_MSG_MAX];
    size_t have = len - off;
    lm_rec_hdr h;
    lm_error e = {0};
    if (have < LM_REC_HDR_SIZE || lm_fmt_rec_hdr_decode(buf + off, have, &h, &e) <= 0)
        snprintf(m, sizeof m, "record header truncated: %zu of %d bytes (the file ends there)",
                 have, LM_REC_HDR_SIZE);
    else
        snprintf(m, sizeof m,
                 "%s record truncated: %d + %" PRIu32 " bytes announced, %zu in the file",
                 lm_rec_type_name(h.type), LM_REC_HDR_SIZE, h.len, have);
    return fail(s, off, -EPROTO, m);
}

/* The stream ended on a record boundary: did it end as a stream does? */
static int check_end(lm_insp *s)
{
    char m[LM_ERROR_MSG_MAX];
    if (s->have_error || !s->to_dst || s->eos_off >= 0)
        return 0;
    snprintf(m, sizeof m,
             "the stream ends without EOS (%" PRIu64 " records): the capture stopped early, or "
             "the migration stopped before its end",
             s->records);
    return fail(s, s->valid, -EPROTO, m);
}

int lm_insp_stream(lm_insp *s, const uint8_t *buf, size_t len, const lm_fmt_block *blocks,
                   uint32_t nblocks, const lm_insp_hooks *hooks)
{
    memset(s, 0, sizeof *s);
    s->hooks = hooks;
    s->buf = buf;
    s->len = len;
    s->size = len;
    s->mapped_off = -1;
    s->switchover_off = s->postcopy_run_off = s->eos_off = s->error_off = -1;
    if (blocks && nblocks <= LM_RAM_MAX_BLOCKS) {
        for (uint32_t i = 0; i < nblocks; i++)
            s->blocks[i].b = blocks[i];
        s->nblocks = nblocks;
    }
    int kind = lm_insp_detect(buf, len, &s->err);
    if (kind < 0)
        return kind;
    if (len < LM_HELLO_SIZE) {
        s->err_off = 0;
        return lm_error_set(&s->err, -EPROTO,
                            "stream offset 0: HELLO truncated: %zu of %d bytes (the file ends "
                            "there)",
                            len, LM_HELLO_SIZE);
    }
    lm_error e = {0};
    if (lm_fmt_hello_decode(buf, len, &s->hello, &e) < 0) {
        s->err_off = 0;
        return lm_error_set(&s->err, e.code, "stream offset 0: %s", e.msg);
    }
    s->have_hello = true;
    s->to_dst = s->hello.kind == LM_HELLO_REQUEST || s->hello.kind == LM_HELLO_RESUME;
    s->valid = LM_HELLO_SIZE;

    lm_fmt_walk_cfg cfg = {
        .expect_hello = true,
        .blocks = nblocks ? blocks : NULL,
        .nblocks = nblocks,
        .cb = on_record,
        .opaque = s,
    };
    long rc = lm_fmt_walk_rec(buf, len, &cfg, &e);
    if (rc < 0) {
        if (s->err.code) /* ours, from the callback */
            return s->err.code;
        s->err_off = s->valid; /* the walker stops at the record after the last good one */
        bool own_table = s->hello.role == LM_ROLE_MAIN && s->hello.kind != LM_HELLO_RESUME;
        return lm_error_set(&s->err, e.code, "%s%s", e.msg,
                            !s->nblocks && !own_table && strstr(e.msg, "before any RAM_BLOCKS")
                                ? " (this channel has no block table of its own: inspect it "
                                  "together with its migration's main channel)"
                                : "");
    }
    if ((size_t)rc < len)
        return truncated(s, buf, len, (size_t)rc);
    return check_end(s);
}
