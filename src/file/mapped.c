/*
 * mapped.c - mapped-ram files: the layout, page writes at fixed offsets,
 * the bitmaps, and the load (mapped.h has the threads and the layout).
 *
 * Threads: lm_mapped_save_pages runs on the migration thread or on the
 * multifd channels ("lm-mfd-send/N"), each with its own descriptor; the
 * present bits are set and cleared with atomic word operations (pages of
 * one word may be written by different channels); everything else is the
 * migration thread's (source) or the incoming thread's (destination).
 * No locks.
 */
#include "file/mapped.h"
#include "mem/dirty.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

/* The longest run a reader gets at once (and the largest single write):
 * big enough for disk speed, small enough to share among readers. */
#define RUN_MAX_BYTES (4u << 20)

struct lm_mapped {
    lm_mem *mem;
    char path[LM_URI_FILE_PATH_MAX];
    int main_fd; /* borrowed: the main stream's, for the bitmaps */
    unsigned nfds;
    int fds[LM_MULTIFD_MAX_CHANNELS]; /* page descriptors; own ones with direct-io */
    bool direct;
    uint64_t *bytes; /* the caller's counter (relaxed atomic) */
    lm_mapped_layout layout;
    uint64_t *present[LM_RAM_MAX_BLOCKS]; /* atomic words */
};

/* ------------------------------------------------------------ descriptors */

static const char *fs_name(long type)
{
    switch ((unsigned long)type) {
    case 0x01021994:
        return "tmpfs";
    case 0x794c7630:
        return "overlayfs";
    case 0x65735546:
        return "fuse";
    case 0x6969:
        return "nfs";
    case 0x858458f6:
        return "ramfs";
    case 0x9fa0:
        return "proc";
    case 0x62656572:
        return "sysfs";
    default:
        return NULL;
    }
}

int lm_mapped_open_direct(const char *path, bool write, unsigned n, int *fds, lm_error *err)
{
    for (unsigned i = 0; i < n; i++)
        fds[i] = -1;
    for (unsigned i = 0; i < n; i++) {
        fds[i] = open(path, (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
        if (fds[i] >= 0)
            continue;
        int e = errno;
        for (unsigned k = 0; k < i; k++)
            close(fds[k]);
        if (e != EINVAL)
            return lm_error_set(err, -e, "direct-io: file '%s': %s", path, strerror(e));
        struct statfs sf;
        char fs[32] = "its filesystem";
        if (statfs(path, &sf) == 0) {
            const char *name = fs_name((long)sf.f_type);
            if (name)
                snprintf(fs, sizeof fs, "%s", name);
            else
                snprintf(fs, sizeof fs, "filesystem 0x%lx", (unsigned long)sf.f_type);
        }
        return lm_error_set(err, -EINVAL,
                            "direct-io: file '%s' is on %s, which refuses O_DIRECT (set "
                            "direct-io off, or use a file on a disk filesystem)",
                            path, fs);
    }
    return 0;
}

int lm_mapped_pread(int fd, void *p, size_t n, uint64_t off, const char *path, const char *what,
                    lm_error *err)
{
    uint8_t *d = p;
    while (n) {
        ssize_t got = pread(fd, d, n, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return lm_error_set(err, -errno, "file '%s': reading %s at %llu: %s", path, what,
                                (unsigned long long)off, strerror(errno));
        if (got == 0)
            return lm_error_set(err, -EPROTO,
                                "file '%s': truncated: %s at byte %llu is past the end of the "
                                "file",
                                path, what, (unsigned long long)off);
        d += got;
        n -= (size_t)got;
        off += (uint64_t)got;
    }
    return 0;
}

int lm_mapped_read_run(int fd, lm_ram_block *b, uint64_t first, uint64_t count, uint64_t off,
                       const char *path, lm_error *err)
{
    char what[LM_RAM_NAME_MAX + 32];
    lm_mem_prefault_view(b, b->base, b->prefaulted, first, count);
    snprintf(what, sizeof what, "block '%s' pages", b->name);
    return lm_mapped_pread(fd, b->base + first * b->page_size, count * b->page_size, off, path,
                           what, err);
}

static int pwrite_full(lm_mapped *mr, int fd, const void *p, size_t n, uint64_t off, bool pages,
                       lm_error *err)
{
    const uint8_t *s = p;
    while (n) {
        struct iovec v = {(void *)s, n};
        ssize_t w = pwritev(fd, &v, 1, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return lm_error_set(err, w < 0 ? -errno : -EIO, "file '%s': writing at %llu: %s",
                                mr->path, (unsigned long long)off,
                                w < 0 ? strerror(errno) : "nothing written");
        s += w;
        n -= (size_t)w;
        off += (uint64_t)w;
        if (pages)
            LM_ATOMIC_ADD(mr->bytes, (uint64_t)w);
    }
    return 0;
}

/* ------------------------------------------------------------------ source */

int lm_mapped_new(lm_mem *mem, const char *path, int main_fd, bool direct, unsigned nwriters,
                  uint64_t *bytes, lm_mapped **out, lm_error *err)
{
    *out = NULL;
    if (nwriters < 1 || nwriters > LM_MULTIFD_MAX_CHANNELS)
        return lm_error_set(err, -EINVAL, "mapped-ram: %u writers", nwriters);
    lm_mapped *mr = calloc(1, sizeof *mr);
    if (!mr)
        return lm_error_set(err, -ENOMEM, "out of memory");
    mr->mem = mem;
    snprintf(mr->path, sizeof mr->path, "%s", path);
    mr->main_fd = main_fd;
    mr->nfds = nwriters;
    mr->direct = direct;
    mr->bytes = bytes;
    int ret = 0;
    if (direct) {
        ret = lm_mapped_open_direct(path, true, nwriters, mr->fds, err);
    } else {
        for (unsigned i = 0; i < nwriters; i++)
            mr->fds[i] = main_fd; /* pwrite does not move the stream's offset */
    }
    for (unsigned i = 0; ret == 0 && i < mem->nblocks; i++) {
        mr->present[i] = calloc(lm_bitmap_words(mem->blocks[i].npages), 8);
        if (!mr->present[i])
            ret = lm_error_set(err, -ENOMEM, "out of memory for the mapped-ram bitmaps");
    }
    if (ret < 0) {
        if (!direct)
            mr->nfds = 0;
        lm_mapped_free(mr);
        return ret;
    }
    *out = mr;
    return 0;
}

void lm_mapped_free(lm_mapped *mr)
{
    if (!mr)
        return;
    for (unsigned i = 0; mr->direct && i < mr->nfds; i++)
        if (mr->fds[i] >= 0)
            close(mr->fds[i]);
    for (unsigned i = 0; i < LM_RAM_MAX_BLOCKS; i++)
        free(mr->present[i]);
    free(mr);
}

int lm_mapped_fd(const lm_mapped *mr, unsigned i)
{
    return mr->fds[i < mr->nfds ? i : 0];
}

int lm_mapped_save_setup(lm_mapped *mr, lm_chan *main, lm_error *err)
{
    lm_mem *mem = mr->mem;
    lm_fmt_block table[LM_RAM_MAX_BLOCKS];
    for (unsigned i = 0; i < mem->nblocks; i++) {
        snprintf(table[i].name, sizeof table[i].name, "%s", mem->blocks[i].name);
        table[i].page_size = mem->blocks[i].page_size;
        table[i].length = mem->blocks[i].len;
    }
    /* Where the record ends: the stream's offset once flushed, plus it. */
    int ret = lm_chan_flush(main);
    if (ret < 0)
        return lm_chan_get_error(main, err);
    off_t pos = lseek(mr->main_fd, 0, SEEK_CUR);
    if (pos < 0)
        return lm_error_set(err, -errno, "file '%s': %s", mr->path, strerror(errno));
    uint32_t len = LM_MAPPED_HDR_SIZE + mem->nblocks * LM_MAPPED_ENTRY_SIZE;
    lm_fmt_mapped_plan(table, mem->nblocks, (uint64_t)pos + LM_REC_HDR_SIZE + len, &mr->layout);
    uint8_t buf[LM_MAPPED_MAX];
    int n = lm_fmt_mapped_encode(&mr->layout, buf, sizeof buf);
    if (n < 0)
        return lm_error_set(err, n, "mapped-ram: encoding the layout failed");
    if ((ret = lm_rec_send(main, LM_REC_MAPPED_RAM, buf, (uint32_t)n)) < 0)
        return lm_chan_get_error(main, err);
    /* The main stream goes on after the regions; what lies between is
     * written by the page writers, or stays a hole. */
    if (lseek(mr->main_fd, (off_t)mr->layout.resume, SEEK_SET) < 0)
        return lm_error_set(err, -errno, "file '%s': %s", mr->path, strerror(errno));
    return 0;
}

static void clear_bit(uint64_t *b, uint64_t i)
{
    __atomic_fetch_and(&b[i / 64], ~(1ull << (i % 64)), __ATOMIC_RELAXED);
}

int lm_mapped_save_pages(lm_mapped *mr, int fd, unsigned bi, const uint64_t *pages, uint32_t n,
                         bool detect, uint32_t *normal, uint32_t *zero, lm_error *err)
{
    lm_ram_block *b = &mr->mem->blocks[bi];
    const lm_mapped_block *l = &mr->layout.b[bi];
    uint64_t ps = b->page_size, *bits = mr->present[bi];
    uint32_t nn = 0, nz = 0;
    uint64_t run = 0, count = 0; /* the run being gathered: [run, run + count) */
    int ret = 0;
    for (uint32_t i = 0; i < n && ret == 0; i++) {
        uint64_t p = pages[i];
        bool data = !(detect && lm_page_is_zero(b->base + p * ps, ps));
        if (!data) {
            clear_bit(bits, p);
            nz++;
        } else {
            lm_bit_set_atomic(bits, p);
            nn++;
            if (count && p == run + count && (count + 1) * ps <= RUN_MAX_BYTES) {
                count++;
                continue;
            }
        }
        if (count)
            ret = pwrite_full(mr, fd, b->base + run * ps, count * ps, l->pages_offset + run * ps,
                              true, err);
        count = 0;
        if (data) {
            run = p;
            count = 1;
        }
    }
    if (ret == 0 && count)
        ret = pwrite_full(mr, fd, b->base + run * ps, count * ps, l->pages_offset + run * ps, true,
                          err);
    if (ret < 0)
        return ret;
    if (normal)
        *normal = nn;
    if (zero)
        *zero = nz;
    return 0;
}

int lm_mapped_save_run(lm_mapped *mr, unsigned bi, uint64_t first, uint64_t count, lm_error *err)
{
    lm_ram_block *b = &mr->mem->blocks[bi];
    uint64_t ps = b->page_size;
    for (uint64_t i = first; i < first + count; i++)
        lm_bit_set_atomic(mr->present[bi], i);
    return pwrite_full(mr, mr->fds[0], b->base + first * ps, count * ps,
                       mr->layout.b[bi].pages_offset + first * ps, true, err);
}

void lm_mapped_save_zero(lm_mapped *mr, unsigned bi, uint64_t first, uint64_t count)
{
    for (uint64_t i = first; i < first + count; i++)
        clear_bit(mr->present[bi], i);
}

int lm_mapped_save_complete(lm_mapped *mr, lm_error *err)
{
    for (unsigned i = 0; i < mr->mem->nblocks; i++) {
        const lm_mapped_block *l = &mr->layout.b[i];
        uint64_t nbytes = lm_mapped_bitmap_region(l->npages);
        uint8_t *bm = malloc(nbytes);
        if (!bm)
            return lm_error_set(err, -ENOMEM, "out of memory");
        /* Bytes, bit i of the block in byte i / 8 at bit i % 8 (format.md §1). */
        for (uint64_t k = 0; k < lm_mapped_bitmap_bytes(l->npages); k++)
            bm[k] = (uint8_t)(__atomic_load_n(&mr->present[i][k / 8], __ATOMIC_RELAXED) >>
                              (8 * (k % 8)));
        lm_fmt_mapped_bitmap_seal(bm, l->npages);
        int ret = pwrite_full(mr, mr->main_fd, bm, nbytes, l->bitmap_offset, false, err);
        free(bm);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* ------------------------------------------------------------- destination */

int lm_mapped_read_layout(lm_mem *mem, lm_chan *main, const lm_rec_hdr *h, const char *path,
                          lm_mapped_layout *l, lm_error *err)
{
    const lm_mem_stream_map *sm = &mem->smap;
    uint8_t buf[LM_MAPPED_MAX];
    int ret = lm_rec_read_payload(main, h, buf, sizeof buf, "mapped-ram layout", err);
    if (ret < 0)
        return ret;
    if (lm_fmt_mapped_decode(buf, h->len, l, err) < 0)
        return err && err->code ? err->code : -EPROTO;
    int64_t here = lm_chan_read_offset(main);
    if (here < 0 || (uint64_t)here != l->record_end)
        return lm_error_set(err, -EPROTO,
                            "MAPPED_RAM: corrupt header: it says it ends at byte %llu of the "
                            "file, but it ends at byte %lld",
                            (unsigned long long)l->record_end, (long long)here);
    struct stat st;
    if (fstat(lm_chan_fd(main), &st) < 0)
        return lm_error_set(err, -errno, "file '%s': %s", path, strerror(errno));
    return lm_fmt_mapped_check(l, sm->blocks, sm->nblocks, (uint64_t)st.st_size, err);
}

int64_t lm_mapped_read_bitmap(int fd, const lm_mapped_layout *l, uint32_t i, const char *name,
                              const char *path, uint8_t **out, lm_error *err)
{
    const lm_mapped_block *lb = &l->b[i];
    uint64_t nbytes = lm_mapped_bitmap_region(lb->npages);
    char what[LM_RAM_NAME_MAX + 32];
    uint8_t *bm = malloc(nbytes);
    *out = NULL;
    if (!bm)
        return lm_error_set(err, -ENOMEM, "out of memory");
    snprintf(what, sizeof what, "block '%s' bitmap", name);
    int64_t np = lm_mapped_pread(fd, bm, nbytes, lb->bitmap_offset, path, what, err);
    if (np == 0)
        np = lm_fmt_mapped_bitmap_check(bm, lb->npages, i, err);
    if (np < 0)
        free(bm);
    else
        *out = bm;
    return np;
}

int lm_mapped_load(lm_mem *mem, lm_place *pl, lm_chan *main, const lm_rec_hdr *h, const char *path,
                   const lm_mapped_reader *rd, uint64_t *pages, lm_error *err)
{
    const lm_mem_stream_map *sm = &mem->smap;
    lm_mapped_layout l;
    uint8_t *bm = NULL;
    int ret = lm_mapped_read_layout(mem, main, h, path, &l, err);
    if (ret < 0)
        return ret;
    uint64_t present = 0;
    for (uint32_t i = 0; i < l.nblocks && ret == 0; i++) {
        lm_ram_block *b = &mem->blocks[sm->map[i]];
        const lm_mapped_block *lb = &l.b[i];
        uint64_t ps = lb->page_size;
        free(bm);
        int64_t np = lm_mapped_read_bitmap(lm_chan_fd(main), &l, i, b->name, path, &bm, err);
        if (np < 0) {
            ret = (int)np;
            break;
        }
        present += (uint64_t)np;
        /* Runs of present pages to the reader, runs of zero ones through
         * the placement (a no-op where no stream wrote before). */
        for (uint64_t p = 0; p < lb->npages && ret == 0;) {
            bool set = (bm[p / 8] >> (p % 8)) & 1;
            uint64_t q = p + 1;
            while (q < lb->npages && (bool)((bm[q / 8] >> (q % 8)) & 1) == set &&
                   (!set || (q - p + 1) * ps <= RUN_MAX_BYTES))
                q++;
            if (set) {
                ret = rd->read(rd->opaque, b, p, q - p, lb->pages_offset + p * ps, err);
                if (ret == 0)
                    lm_mem_mark_received(b, p, q - p);
            } else {
                ret = lm_place_pages(pl, b, p, q - p, NULL, err);
            }
            if (ret == 0 && lm_chan_get_error(main, err))
                ret = err->code; /* cancelled, or a reader failed */
            p = q;
        }
    }
    free(bm);
    /* One sync after the block list (seed 004): every read is done. */
    int sret = rd->sync(rd->opaque, err);
    if (ret == 0)
        ret = sret;
    if (ret == 0)
        ret = lm_chan_seek(main, l.resume) < 0 ? lm_chan_get_error(main, err) : 0;
    if (ret == 0 && pages)
        *pages = present;
    return ret;
}
