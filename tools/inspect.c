/*
 * inspect.c - `livemig inspect FILE...`: what a captured migration stream
 * holds (QEMU's scripts/analyze-migration.py for livemig) and whether
 * every byte of it is valid.  Text for people, --json for scripts.
 *
 * The one tool file that uses the library's internals: the wire format is
 * not public API (docs/api.md), and the decoding must be the library's own
 * (src/format/inspect.h on lm_fmt_walk_rec), never a second parser here.
 * Compressed multifd page data is decoded with the library's codecs
 * (multifd/multifd.h), one stream per channel as a destination does.
 * What a file is comes from its first bytes (lm_insp_detect).  A file
 * saved with mapped-ram is a stream whose MAPPED_RAM record says where the
 * bitmaps and pages are: the inspector checks the bitmaps and jumps over
 * the page regions (the per-block "mapped-ram" lines).
 */
#include "cli.h"
#include "format/inspect.h"
#include "multifd/multifd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 64 /* a main channel, its multifd channels, a preempt one */
/* Largest packet inspect decompresses: 1024 pages of 64 KiB. */
#define MAX_RAW_PACKET (64u << 20)

enum { O_JSON = 1, O_RECORDS };

void usage_inspect(FILE *f)
{
    fprintf(
        f, "usage: livemig inspect [--json] FILE...\n\n"
           "Decodes livemig migration streams captured to files (one file per\n"
           "channel: the source's bytes of a connection, e.g. `socat` or `nc` in the\n"
           "middle) and validates every record.  Prints the HELLO, the RAM block\n"
           "table, per block the pages sent with data, as zero, over multifd (and\n"
           "compressed), discarded and requested, the device sections, the passes\n"
           "and the SWITCHOVER_START / POSTCOPY_RUN / EOS markers.  Several files\n"
           "of one migration (a main channel and its multifd channels) are read\n"
           "together: the main channel's block table checks the others' pages.\n\n"
           "A malformed or cut-short stream is reported with the byte offset of\n"
           "the first problem and the exit code is 1.  docs/format.md is the format.\n\n"
           "options:\n"
           "  --json                 one JSON object: {\"files\": [...], \"totals\", \"valid\"}\n");
}

typedef struct infile {
    const char *path;
    uint8_t *buf; /* mapped (or read, for a pipe) */
    size_t len;
    bool mapped;
    lm_insp *in; /* NULL: not a stream (err says what) */
    lm_error err;
    json_t *list; /* --records: one object per record */
    /* the channel's decompression stream */
    lm_mfd_codec *codec;
    uint8_t *raw;
    size_t raw_cap;
} infile;

/* Maps a regular file; reads anything else (a pipe, /dev/stdin) whole. */
static int load(infile *f, lm_error *err)
{
    int fd = strcmp(f->path, "-") ? open(f->path, O_RDONLY | O_CLOEXEC) : dup(0);
    int ret = 0;
    if (fd < 0)
        return lm_error_set(err, -errno, "%s: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        ret = lm_error_set(err, -errno, "%s: %s", f->path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        ret = lm_error_set(err, -EISDIR, "%s: is a directory", f->path);
        goto out;
    }
    if (S_ISREG(st.st_mode)) {
        f->len = (size_t)st.st_size;
        if (f->len) {
            void *p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                ret = lm_error_set(err, -errno, "%s: mmap: %s", f->path, strerror(errno));
                goto out;
            }
            f->buf = p;
            f->mapped = true;
        }
        goto out;
    }
    size_t cap = 0;
    for (;;) {
        if (f->len == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            uint8_t *nb = realloc(f->buf, cap);
            if (!nb) {
                ret = lm_error_set(err, -ENOMEM, "%s: out of memory", f->path);
                goto out;
            }
            f->buf = nb;
        }
        ssize_t n = read(fd, f->buf + f->len, cap - f->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = lm_error_set(err, -errno, "%s: %s", f->path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        f->len += (size_t)n;
    }
out:
    close(fd);
    return ret;
}

static void unload(infile *f)
{
    if (f->mapped)
        munmap(f->buf, f->len);
    else
        free(f->buf);
    free(f->in);
    json_decref(f->list);
    lm_mfd_codec_free(f->codec);
    free(f->raw);
}

/* -------------------------------------------------------------- naming */

static const char *role_name(uint8_t r)
{
    return r == LM_ROLE_MAIN ? "main" : r == LM_ROLE_MULTIFD ? "multifd" : "preempt";
}

static const char *kind_name(uint8_t k)
{
    static const char *n[] = {"REQUEST", "ACCEPT", "REJECT", "RESUME"};
    return k < 4 ? n[k] : "?";
}

static const char *comp_names[] = {"none", "zlib", "zstd", "lz4"};
static const char *feat_names[] = {"multifd", "postcopy-ram", "postcopy-preempt", "switchover-ack",
                                   "mapped-ram"};

static void session_hex(const lm_hello *h, char *out)
{
    for (int i = 0; i < LM_SESSION_ID_LEN; i++)
        sprintf(out + 2 * i, "%02x", h->session[i]);
}

static void features_text(uint64_t f, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "0x%" PRIx64, f);
    for (int i = 0; i < 5 && o < cap; i++)
        if (f & (1ull << i))
            o += (size_t)snprintf(out + o, cap - o, " %s", feat_names[i]);
    if (!f && o < cap)
        snprintf(out + o, cap - o, " (none)");
}

/* ---------------------------------------------------------------- text */

static void print_text(const infile *f, FILE *o)
{
    const lm_insp *s = f->in;
    char b1[32], b2[32];
    fprintf(o, "%s: %s, %s (%zu bytes)\n", f->path, lm_insp_kind_name(LM_INSP_STREAM),
            cli_fmt_bytes(b1, sizeof b1, (double)f->len), f->len);
    if (s->have_hello) {
        const lm_hello *h = &s->hello;
        char sess[2 * LM_SESSION_ID_LEN + 1], feat[160];
        session_hex(h, sess);
        features_text(h->features, feat, sizeof feat);
        fprintf(o, "  HELLO      version %u, %s, %s channel", h->version, kind_name(h->kind),
                role_name(h->role));
        if (h->role == LM_ROLE_MULTIFD)
            fprintf(o, " %u of %u", h->chan_index, h->chan_count);
        fprintf(o, " (%s)\n", s->to_dst ? "source to destination" : "destination to source");
        fprintf(o, "             page size %u, multifd channels %u, session %s\n", h->page_size,
                h->chan_count, sess);
        fprintf(o, "             features %s\n", feat);
    }
    uint64_t req = 0;
    for (uint32_t i = 0; i < s->nblocks; i++)
        req += s->blocks[i].req_pages;
    /* A return path's table is its main channel's: shown when it is used. */
    if (s->nblocks && (s->to_dst || req)) {
        if (s->tables)
            fprintf(o, "  RAM blocks %u (%u RAM_BLOCKS record%s)\n", s->nblocks, s->tables,
                    s->tables == 1 ? "" : "s");
        else
            fprintf(o, "  RAM blocks %u (the main channel's table)\n", s->nblocks);
        fprintf(o, "    %-3s %-16s %9s %10s %10s %10s %10s\n", "#", "name", "page", "length",
                "pages", "data", "zero");
        for (uint32_t i = 0; i < s->nblocks; i++) {
            const lm_insp_block *b = &s->blocks[i];
            fprintf(o, "    %-3u %-16s %9u %10s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "\n", i,
                    b->b.name, b->b.page_size, cli_fmt_bytes(b1, sizeof b1, (double)b->b.length),
                    b->b.length / b->b.page_size, b->data_pages + b->mfd_normal + b->mapped_present,
                    b->zero_pages + b->mfd_zero +
                        (s->mapped ? b->b.length / b->b.page_size - b->mapped_present : 0));
            if (s->mapped && i < s->layout.nblocks) {
                const lm_mapped_block *mb = &s->layout.b[i];
                fprintf(o,
                        "        mapped-ram %" PRIu64 " pages present, %" PRIu64
                        " zero (holes); bitmap at %" PRIu64 " (%" PRIu64
                        " bytes, CRC ok), pages at %" PRIu64 "..%" PRIu64 "\n",
                        b->mapped_present, mb->npages - b->mapped_present, mb->bitmap_offset,
                        lm_mapped_bitmap_region(mb->npages), mb->pages_offset,
                        mb->pages_offset + mb->npages * mb->page_size);
            }
            if (b->data_runs || b->zero_runs)
                fprintf(o,
                        "        RAM_PAGES %" PRIu64 " pages in %" PRIu64 " runs, RAM_ZERO %" PRIu64
                        " pages in %" PRIu64 " runs\n",
                        b->data_pages, b->data_runs, b->zero_pages, b->zero_runs);
            if (b->xbzrle_pages)
                fprintf(o, "        RAM_XBZRLE %" PRIu64 " pages in %" PRIu64 " bytes of deltas\n",
                        b->xbzrle_pages, b->xbzrle_bytes);
            if (b->mfd_normal || b->mfd_zero)
                fprintf(o, "        multifd %" PRIu64 " data pages, %" PRIu64 " zero pages\n",
                        b->mfd_normal, b->mfd_zero);
            if (b->mfd_comp_pages)
                fprintf(o, "        compressed %" PRIu64 " pages (%s) into %s\n", b->mfd_comp_pages,
                        cli_fmt_bytes(b1, sizeof b1, (double)b->mfd_comp_pages * b->b.page_size),
                        cli_fmt_bytes(b2, sizeof b2, (double)b->mfd_comp_bytes));
            if (b->discard_pages || b->req_pages)
                fprintf(o, "        postcopy: %" PRIu64 " pages discarded, %" PRIu64 " requested\n",
                        b->discard_pages, b->req_pages);
        }
    } else if (s->mfd_packets) {
        fprintf(o,
                "  multifd    %" PRIu64 " data pages, %" PRIu64
                " zero pages (no block table: inspect the main channel with it)\n",
                s->mfd_normal, s->mfd_zero);
    }
    if (s->mapped)
        fprintf(o,
                "  mapped-ram MAPPED_RAM at offset %" PRId64 ", layout version %" PRIu32
                ": regions from file offset %" PRIu64 " to %" PRIu64
                " (jumped over; the stream goes on there)%s\n",
                s->mapped_off, s->layout.version, s->layout.record_end, s->layout.resume,
                s->mapped_base ? ", the stream starts at file offset" : "");
    if (s->mapped && s->mapped_base)
        fprintf(o, "             %" PRIu64 " (the URI's offset=): offsets here are the stream's\n",
                s->mapped_base);
    if (s->mfd_packets) {
        fprintf(o, "  multifd    %" PRIu64 " MULTIFD_PAGES packets, compression", s->mfd_packets);
        for (int m = 0; m < 4; m++)
            if (s->comp_seen & (1u << m))
                fprintf(o, " %s", comp_names[m]);
        fprintf(o, "\n");
    }
    if (s->rec_count[LM_REC_RAM_PASS])
        fprintf(o, "  passes     %" PRIu64 " RAM_PASS records, the last pass %" PRIu64 "\n",
                s->rec_count[LM_REC_RAM_PASS], s->last_pass);
    if (s->nsections) {
        fprintf(o, "  sections   %u\n", s->nsections);
        fprintf(o, "    %-5s %-24s %8s %7s %-9s %7s %12s\n", "id", "name", "instance", "version",
                "kind", "records", "data bytes");
        for (uint32_t i = 0; i < s->nsections; i++) {
            const lm_insp_section *c = &s->sections[i];
            fprintf(o, "    %-5u %-24s %8u %7u %-9s %7" PRIu64 " %12" PRIu64 "\n", c->id, c->name,
                    c->instance, c->version, c->iterable ? "iterable" : "full", c->records,
                    c->data_bytes);
        }
    }
    if (s->switchover_off >= 0)
        fprintf(o, "  switchover SWITCHOVER_START at offset %" PRId64 "\n", s->switchover_off);
    if (s->postcopy_run_off >= 0)
        fprintf(o, "  postcopy   POSTCOPY_RUN at offset %" PRId64 "\n", s->postcopy_run_off);
    if (s->eos_off >= 0)
        fprintf(o, "  end        EOS at offset %" PRId64 "\n", s->eos_off);
    if (s->have_error)
        fprintf(o, "  ERROR      at offset %" PRId64 ": status %d: %s\n", s->error_off,
                s->error.status, s->error.msg);
    if (s->have_shut)
        fprintf(o, "  RP_SHUT    status %d\n", s->shut_status);
    if (s->records) {
        fprintf(o, "  records    %" PRIu64 "\n", s->records);
        for (int t = 0; t < 256; t++)
            if (s->rec_count[t])
                fprintf(o, "    %-18s %10" PRIu64 " %14" PRIu64 " bytes\n", lm_rec_type_name(t),
                        s->rec_count[t], s->rec_bytes[t]);
    }
    if (f->list) {
        fprintf(o, "  %-12s %-18s %9s  %s\n", "offset", "record", "length", "detail");
        size_t i;
        json_t *r;
        json_array_foreach(f->list, i, r) {
            const char *d = json_string_value(json_object_get(r, "detail"));
            fprintf(o, "  %-12" JSON_INTEGER_FORMAT " %-18s %9" JSON_INTEGER_FORMAT "%s%s\n",
                    json_integer_value(json_object_get(r, "offset")),
                    json_string_value(json_object_get(r, "type")),
                    json_integer_value(json_object_get(r, "len")), d[0] ? "  " : "", d);
        }
    }
    if (s->err.code)
        fprintf(o, "  INVALID    %s\n", s->err.msg);
    else
        fprintf(o, "  valid      every byte: the HELLO and %" PRIu64 " records\n", s->records);
}

/* ---------------------------------------------------------------- JSON */

static json_t *j_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *j_off(int64_t off)
{
    return off >= 0 ? json_integer(off) : json_null();
}

static json_t *file_json(const infile *f)
{
    json_t *j = json_object();
    json_object_set_new(j, "file", json_string(f->path));
    json_object_set_new(j, "size", j_u64(f->len));
    const lm_insp *s = f->in;
    if (!s) {
        json_object_set_new(j, "format", json_null());
        json_object_set_new(j, "valid", json_false());
        json_object_set_new(j, "error",
                            json_pack("{s:i, s:s}", "offset", 0, "message", f->err.msg));
        return j;
    }
    json_object_set_new(j, "format", json_string(lm_insp_kind_name(LM_INSP_STREAM)));
    json_object_set_new(j, "valid", json_boolean(!s->err.code));
    json_object_set_new(j, "error",
                        s->err.code ? json_pack("{s:I, s:s}", "offset", (json_int_t)s->err_off,
                                                "message", s->err.msg)
                                    : json_null());
    json_object_set_new(j, "valid_bytes", j_u64(s->valid));
    if (s->have_hello) {
        const lm_hello *h = &s->hello;
        char sess[2 * LM_SESSION_ID_LEN + 1];
        session_hex(h, sess);
        json_t *fn = json_array();
        for (int i = 0; i < 5; i++)
            if (h->features & (1ull << i))
                json_array_append_new(fn, json_string(feat_names[i]));
        json_object_set_new(j, "hello",
                            json_pack("{s:i, s:s, s:s, s:i, s:i, s:i, s:s, s:I, s:o, s:s}",
                                      "version", h->version, "kind", kind_name(h->kind), "role",
                                      role_name(h->role), "chan_index", h->chan_index, "chan_count",
                                      h->chan_count, "page_size", h->page_size, "session", sess,
                                      "features", (json_int_t)h->features, "feature_names", fn,
                                      "direction", s->to_dst ? "to-destination" : "to-source"));
    }
    json_t *blocks = json_array();
    for (uint32_t i = 0; i < s->nblocks; i++) {
        const lm_insp_block *b = &s->blocks[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(b->b.name));
        json_object_set_new(o, "page_size", j_u64(b->b.page_size));
        json_object_set_new(o, "length", j_u64(b->b.length));
        json_object_set_new(o, "pages", j_u64(b->b.length / b->b.page_size));
        json_object_set_new(o, "data_pages", j_u64(b->data_pages));
        json_object_set_new(o, "data_runs", j_u64(b->data_runs));
        json_object_set_new(o, "zero_pages", j_u64(b->zero_pages));
        json_object_set_new(o, "zero_runs", j_u64(b->zero_runs));
        json_object_set_new(o, "xbzrle_pages", j_u64(b->xbzrle_pages));
        json_object_set_new(o, "xbzrle_bytes", j_u64(b->xbzrle_bytes));
        json_object_set_new(o, "multifd_data_pages", j_u64(b->mfd_normal));
        json_object_set_new(o, "multifd_zero_pages", j_u64(b->mfd_zero));
        json_object_set_new(o, "compressed_pages", j_u64(b->mfd_comp_pages));
        json_object_set_new(o, "compressed_bytes", j_u64(b->mfd_comp_bytes));
        json_object_set_new(o, "discarded_pages", j_u64(b->discard_pages));
        json_object_set_new(o, "requested_pages", j_u64(b->req_pages));
        if (s->mapped && i < s->layout.nblocks) {
            const lm_mapped_block *mb = &s->layout.b[i];
            json_object_set_new(
                o, "mapped_ram",
                json_pack("{s:o, s:o, s:o, s:o}", "present_pages", j_u64(b->mapped_present),
                          "zero_pages", j_u64(mb->npages - b->mapped_present), "bitmap_offset",
                          j_u64(mb->bitmap_offset), "pages_offset", j_u64(mb->pages_offset)));
        }
        json_array_append_new(blocks, o);
    }
    json_object_set_new(j, "blocks", blocks);
    json_object_set_new(j, "ram_blocks_records", j_u64(s->tables));
    if (s->mapped)
        json_object_set_new(
            j, "mapped_ram",
            json_pack("{s:o, s:I, s:o, s:o, s:o}", "offset", j_off(s->mapped_off), "version",
                      (json_int_t)s->layout.version, "record_end", j_u64(s->layout.record_end),
                      "resume", j_u64(s->layout.resume), "stream_base", j_u64(s->mapped_base)));
    json_t *secs = json_array();
    for (uint32_t i = 0; i < s->nsections; i++) {
        const lm_insp_section *c = &s->sections[i];
        json_array_append_new(
            secs,
            json_pack("{s:I, s:s, s:I, s:I, s:s, s:b, s:I, s:I, s:I}", "id", (json_int_t)c->id,
                      "name", c->name, "instance", (json_int_t)c->instance, "version",
                      (json_int_t)c->version, "kind", c->iterable ? "iterable" : "full", "ended",
                      c->ended, "records", (json_int_t)c->records, "data_bytes",
                      (json_int_t)c->data_bytes, "offset", (json_int_t)c->offset));
    }
    json_object_set_new(j, "sections", secs);
    json_t *comp = json_array();
    for (int m = 0; m < 4; m++)
        if (s->comp_seen & (1u << m))
            json_array_append_new(comp, json_string(comp_names[m]));
    json_object_set_new(j, "multifd",
                        json_pack("{s:I, s:I, s:I, s:o}", "packets", (json_int_t)s->mfd_packets,
                                  "data_pages", (json_int_t)s->mfd_normal, "zero_pages",
                                  (json_int_t)s->mfd_zero, "compression", comp));
    json_object_set_new(j, "passes", j_u64(s->rec_count[LM_REC_RAM_PASS]));
    json_object_set_new(j, "last_pass", j_u64(s->last_pass));
    json_object_set_new(j, "switchover_offset", j_off(s->switchover_off));
    json_object_set_new(j, "postcopy_run_offset", j_off(s->postcopy_run_off));
    json_object_set_new(j, "eos_offset", j_off(s->eos_off));
    json_object_set_new(j, "error_record",
                        s->have_error
                            ? json_pack("{s:I, s:i, s:s}", "offset", (json_int_t)s->error_off,
                                        "status", s->error.status, "message", s->error.msg)
                            : json_null());
    json_object_set_new(j, "shut_status",
                        s->have_shut ? json_integer(s->shut_status) : json_null());
    json_object_set_new(j, "record_count", j_u64(s->records));
    json_t *recs = json_object();
    for (int t = 0; t < 256; t++)
        if (s->rec_count[t])
            json_object_set_new(recs, lm_rec_type_name(t),
                                json_pack("{s:I, s:I}", "count", (json_int_t)s->rec_count[t],
                                          "bytes", (json_int_t)s->rec_bytes[t]));
    json_object_set_new(j, "records", recs);
    if (f->list)
        json_object_set(j, "record_list", f->list);
    return j;
}

/* Sums over the files of the source's direction: what query-migrate
 * counts (ram normal / duplicate pages, bytes transferred). */
static json_t *totals_json(const infile *fs, int n)
{
    uint64_t data = 0, zero = 0, bytes = 0, comp = 0, compb = 0;
    for (int i = 0; i < n; i++) {
        const lm_insp *s = fs[i].in;
        if (!s || !s->to_dst)
            continue;
        bytes += fs[i].len;
        data += s->mfd_normal;
        zero += s->mfd_zero;
        for (uint32_t k = 0; k < s->nblocks; k++) {
            data += s->blocks[k].data_pages;
            zero += s->blocks[k].zero_pages;
            comp += s->blocks[k].mfd_comp_pages;
            compb += s->blocks[k].mfd_comp_bytes;
        }
    }
    return json_pack("{s:I, s:I, s:I, s:I, s:I}", "data_pages", (json_int_t)data, "zero_pages",
                     (json_int_t)zero, "bytes", (json_int_t)bytes, "compressed_pages",
                     (json_int_t)comp, "compressed_bytes", (json_int_t)compb);
}

/* ---------------------------------------------------------------- hooks */

/* Decodes a compressed packet's data with the channel's stream: it must
 * give exactly its pages (a destination checks the same). */
static int check_data(void *opaque, const lm_fmt_rec *r, uint64_t raw_len, lm_error *err)
{
    infile *f = opaque;
    const lm_mfd_pages *p = &r->u.mfd;
    if (raw_len > MAX_RAW_PACKET)
        return lm_error_set(err, -EFBIG, "%" PRIu64 " bytes of pages, more than inspect decodes",
                            raw_len);
    if (!f->codec) {
        int rc = lm_mfd_codec_new((lm_mfd_comp)p->compression, 0, false, &f->codec, err);
        if (rc < 0)
            return rc;
    }
    if (f->raw_cap < raw_len) {
        uint8_t *nb = realloc(f->raw, raw_len);
        if (!nb)
            return lm_error_set(err, -ENOMEM, "out of memory");
        f->raw = nb;
        f->raw_cap = raw_len;
    }
    const uint8_t *data = r->payload + LM_MFD_HDR_SIZE + 8 * ((size_t)p->normal + p->zero);
    return lm_mfd_decompress(f->codec, data, p->data_len, f->raw, raw_len, err);
}

static const char *block_name(const lm_fmt_rec *r, uint32_t b)
{
    return r->blocks && b < r->nblocks ? r->blocks[b].name : "?";
}

/* What one record says, in a line. */
static void rec_detail(const lm_fmt_rec *r, char *o, size_t cap)
{
    uint8_t t = r->hdr.type;
    o[0] = '\0';
    switch (t) {
    case LM_REC_SECTION_START:
    case LM_REC_SECTION_FULL:
        snprintf(o, cap, "section %u \"%s\" instance %u version %u, %u data bytes",
                 r->u.section.section_id, r->u.section.name, r->u.section.instance,
                 r->u.section.version, r->hdr.len - r->data_off);
        break;
    case LM_REC_SECTION_PART:
    case LM_REC_SECTION_END:
        snprintf(o, cap, "section %u, %u data bytes", r->u.section.section_id,
                 r->hdr.len - r->data_off);
        break;
    case LM_REC_RAM_BLOCKS:
        snprintf(o, cap, "%u blocks", r->nblocks);
        break;
    case LM_REC_RAM_PAGES:
    case LM_REC_RP_REQ_PAGES:
        snprintf(o, cap, "block %u (%s) pages %" PRIu64 "+%u", r->u.run.block,
                 block_name(r, r->u.run.block), r->u.run.first_page, r->u.run.count);
        break;
    case LM_REC_RAM_ZERO:
    case LM_REC_POSTCOPY_DISCARD:
        snprintf(o, cap, "block %u (%s) pages %" PRIu64 "+%" PRIu64, r->u.zero.block,
                 block_name(r, r->u.zero.block), r->u.zero.first_page, r->u.zero.count);
        break;
    case LM_REC_MULTIFD_PAGES:
        snprintf(o, cap, "packet %" PRIu64 " block %u (%s): %u data, %u zero, %s, %u data bytes",
                 r->u.mfd.packet_num, r->u.mfd.block, block_name(r, r->u.mfd.block),
                 r->u.mfd.normal, r->u.mfd.zero, comp_names[r->u.mfd.compression & 3],
                 r->u.mfd.data_len);
        break;
    case LM_REC_RAM_PASS:
    case LM_REC_MULTIFD_FLUSH:
    case LM_REC_MULTIFD_SYNC:
    case LM_REC_RP_RESUME_ACK:
        snprintf(o, cap, "%" PRIu64, r->u.u64);
        break;
    case LM_REC_PING:
    case LM_REC_RP_PONG:
        snprintf(o, cap, "%u", r->u.u32);
        break;
    case LM_REC_ERROR:
    case LM_REC_RP_SHUT:
        snprintf(o, cap, "status %d%s%s", r->u.status.status, r->u.status.msg[0] ? ": " : "",
                 r->u.status.msg);
        break;
    case LM_REC_ACK_DEVICES:
        snprintf(o, cap, "%u devices", r->u.ack.count);
        break;
    case LM_REC_RP_DEVICE_ACK:
        snprintf(o, cap, "section %u %s", r->u.dev_ack.section_id,
                 r->u.dev_ack.state == LM_DEV_ACK_READY ? "READY" : "DECLINED");
        break;
    case LM_REC_RP_RECV_BITMAP:
        snprintf(o, cap, "block %u (%s) pages %" PRIu64 "+%u", r->u.bitmap.block,
                 block_name(r, r->u.bitmap.block), r->u.bitmap.first_page, r->u.bitmap.npages);
        break;
    default:
        break;
    }
}

static int list_record(void *opaque, const lm_fmt_rec *r, lm_error *err)
{
    infile *f = opaque;
    char d[LM_ERROR_MSG_MAX + 64];
    rec_detail(r, d, sizeof d);
    json_t *o =
        json_pack("{s:I, s:s, s:I, s:s}", "offset", (json_int_t)r->offset, "type",
                  lm_rec_type_name(r->hdr.type), "len", (json_int_t)r->hdr.len, "detail", d);
    if (!o || json_array_append_new(f->list, o) < 0)
        return lm_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

/* --------------------------------------------------------------- driver */

/* Main channels first: their block table checks the multifd channels'. */
static int role_rank(const infile *f)
{
    lm_hello h;
    lm_error e = {0};
    if (f->len < LM_HELLO_SIZE || lm_fmt_hello_decode(f->buf, f->len, &h, &e) <= 0)
        return 4;
    if (h.role == LM_ROLE_MAIN) /* a recovery's main channel (RESUME) after the first */
        return h.kind == LM_HELLO_RESUME || h.kind == LM_HELLO_ACCEPT ? 1 : 0;
    return h.role == LM_ROLE_PREEMPT ? 2 : 3;
}

static void inspect_file(infile *f, const lm_insp *main_ch, bool records)
{
    int kind = lm_insp_detect(f->buf, f->len, &f->err);
    if (kind < 0)
        return;
    /* kind == LM_INSP_STREAM: the only layout (a mapped-ram file is one,
     * its regions are checked by lm_insp_stream). */
    f->in = calloc(1, sizeof *f->in);
    if (!f->in) {
        lm_error_set(&f->err, -ENOMEM, "out of memory");
        return;
    }
    lm_fmt_block table[LM_RAM_MAX_BLOCKS];
    uint32_t nb = main_ch ? main_ch->nblocks : 0;
    for (uint32_t i = 0; i < nb; i++)
        table[i] = main_ch->blocks[i].b;
    lm_insp_hooks hooks = {.data = check_data, .opaque = f};
    if (records) {
        f->list = json_array();
        hooks.record = list_record;
    }
    lm_insp_stream(f->in, f->buf, f->len, nb ? table : NULL, nb, &hooks);
    /* The channels of one migration agree on what their HELLOs negotiate
     * (a destination refuses a channel that does not). */
    const lm_hello *h = &f->in->hello, *mh = main_ch ? &main_ch->hello : NULL;
    if (!mh || !f->in->have_hello || f->in->err.code)
        return;
    if (memcmp(h->session, mh->session, LM_SESSION_ID_LEN) != 0) {
        f->in->err_off = 16;
        lm_error_set(&f->in->err, -EPROTO,
                     "stream offset 16: HELLO session differs from the main channel's (another "
                     "migration's capture?)");
    } else if (h->features != mh->features) {
        f->in->err_off = 32;
        lm_error_set(&f->in->err, -EPROTO,
                     "stream offset 32: HELLO features 0x%" PRIx64
                     " differ from the main channel's 0x%" PRIx64,
                     h->features, mh->features);
    } else if (h->chan_count != mh->chan_count) {
        f->in->err_off = 10;
        lm_error_set(&f->in->err, -EPROTO,
                     "stream offset 10: HELLO multifd channel count %u differs from the main "
                     "channel's %u",
                     h->chan_count, mh->chan_count);
    }
}

int cmd_inspect(int argc, char **argv)
{
    static const cli_opt opts[] = {
        {"json", false, O_JSON}, {"records", false, O_RECORDS}, {NULL, false, 0}};
    cli_args a;
    cli_args_init(&a, "inspect", argc, argv);
    const char *v;
    bool json = false, records = false;
    int id, n = 0, ret = CLI_EXIT_OK;
    static infile fs[MAX_FILES];

    while ((id = cli_next(&a, opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage_inspect(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            if (n == MAX_FILES) {
                cli_err("inspect", "more than %d files", MAX_FILES);
                return CLI_EXIT_USAGE;
            }
            fs[n++].path = v;
            break;
        case O_JSON:
            json = true;
            break;
        case O_RECORDS:
            records = true;
            break;
        }
    }
    if (!n) {
        cli_err("inspect", "no FILE given (see 'livemig inspect --help')");
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < n; i++) {
        lm_error err = {0};
        if (load(&fs[i], &err) < 0) {
            cli_err("inspect", "%s", err.msg);
            for (int k = 0; k < i; k++)
                unload(&fs[k]);
            return CLI_EXIT_FAIL;
        }
    }
    /* Output keeps the command line's order; inspection goes main first. */
    int order[MAX_FILES];
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && role_rank(&fs[order[k]]) < role_rank(&fs[order[k - 1]]); k--) {
            int t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    const lm_insp *main_ch = NULL;
    for (int i = 0; i < n; i++) {
        infile *f = &fs[order[i]];
        inspect_file(f, main_ch, records);
        if (!main_ch && f->in && f->in->have_hello && f->in->hello.role == LM_ROLE_MAIN)
            main_ch = f->in;
    }
    bool valid = true;
    for (int i = 0; i < n; i++)
        if (!fs[i].in || fs[i].in->err.code)
            valid = false;

    if (json) {
        json_t *files = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(files, file_json(&fs[i]));
        json_t *top = json_pack("{s:o, s:o, s:b}", "files", files, "totals", totals_json(fs, n),
                                "valid", valid);
        json_dumpf(top, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(top);
    } else {
        for (int i = 0; i < n; i++) {
            if (fs[i].in)
                print_text(&fs[i], stdout);
            else
                printf("%s: not a livemig stream\n", fs[i].path);
        }
    }
    for (int i = 0; i < n; i++) {
        const lm_error *e = fs[i].in ? &fs[i].in->err : &fs[i].err;
        if (e->code)
            cli_err("inspect", "%s: %s", fs[i].path, e->msg);
    }
    if (!valid)
        ret = CLI_EXIT_FAIL;
    for (int i = 0; i < n; i++)
        unload(&fs[i]);
    return ret;
}
