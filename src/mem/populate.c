/*
 * mem.c - memory probes for the RAM code: which pages of a block are
 * populated (PAGEMAP_SCAN), whether a page is all zero, pre-population for
 * writing; plus the PAGEMAP_SCAN loop that dirty.c shares (pagemap.h).
 *
 * No threads, no locks, no global state: every function may be called from
 * any thread.
 */
#include "mem/dirty.h"
#include "mem/pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Region vector of one populated scan: 96 KiB.  The kernel walks in chunks
 * through a smaller buffer of its own; a bigger vector only saves syscalls. */
#define POPULATED_VEC_LEN 4096
/* MADV_POPULATE_WRITE retries on EINTR/EAGAIN before giving up. */
#define POPULATE_RETRIES 64

int lm_pagemap_scan(int pagemap_fd, const struct lm_pm_scan_arg *tmpl, struct lm_page_region *vec,
                    uint64_t vec_len, uint64_t start, uint64_t end, lm_pagemap_region_fn fn,
                    void *opaque, uint64_t *failed_at)
{
    while (start < end) {
        struct lm_pm_scan_arg a = *tmpl;
        a.size = sizeof a;
        a.start = start;
        a.end = end;
        a.walk_end = 0;
        a.vec = (uintptr_t)vec;
        a.vec_len = vec_len;
        a.max_pages = 0;
        long n = ioctl(pagemap_fd, LM_PAGEMAP_SCAN, &a);
        if (n < 0) {
            *failed_at = start;
            return -errno;
        }
        if ((uint64_t)n > vec_len) { /* cannot happen; do not read past vec */
            *failed_at = start;
            return -EIO;
        }
        uint64_t last_end = start;
        for (long i = 0; i < n; i++) {
            uint64_t s = vec[i].start < start ? start : vec[i].start;
            uint64_t e = vec[i].end > end ? end : vec[i].end;
            if (s < e)
                fn(opaque, s, e, vec[i].categories);
            if (vec[i].end > last_end)
                last_end = vec[i].end;
        }
        /* A short vector means the kernel walked the whole range (see
         * pagemap.h: walk_end alone can be stale then). */
        if ((uint64_t)n < vec_len)
            return 0;
        uint64_t next = a.walk_end > last_end ? a.walk_end : last_end;
        if (next <= start) {
            *failed_at = start;
            return -EIO;
        }
        start = next;
    }
    return 0;
}

/* ------------------------------------------------------- populated scan */

struct populated_ctx {
    uint64_t base;
    unsigned page_shift;
    uint64_t *bitmap;
};

static void populated_region(void *opaque, uint64_t start, uint64_t end, uint64_t categories)
{
    struct populated_ctx *c = opaque;
    (void)categories; /* the masks selected the regions; see below */
    uint64_t ps = 1ull << c->page_shift;
    lm_bitmap_set_range(c->bitmap, (start - c->base) >> c->page_shift,
                        (end - c->base + ps - 1) >> c->page_shift);
}

static int check_geometry(const void *base, uint64_t len, uint32_t page_size, lm_error *err)
{
    long sys = sysconf(_SC_PAGESIZE);
    if (page_size == 0 || (page_size & (page_size - 1)) || (sys > 0 && page_size < (uint64_t)sys))
        return lm_error_set(err, -EINVAL, "page size %u is not a power of two >= %ld", page_size,
                            sys);
    if ((uintptr_t)base % page_size || len == 0 || len % page_size)
        return lm_error_set(err, -EINVAL, "range %p+%llu is not a whole number of %u-byte pages",
                            base, (unsigned long long)len, page_size);
    if ((uintptr_t)base + len < (uintptr_t)base)
        return lm_error_set(err, -EINVAL, "range %p+%llu wraps around", base,
                            (unsigned long long)len);
    return 0;
}

/*
 * Which pages count as populated, and why:
 *  - PAGE_IS_PRESENT or PAGE_IS_SWAPPED: the page has (or had, if it was
 *    swapped out) its own contents;
 *  - except PAGE_IS_PFNZERO: a page that was only read maps the shared zero
 *    page (4 KiB, or the huge zero page for THP: 6.18 reports PFNZERO for
 *    both), which reads as zero exactly like a hole.  Selected with
 *    category_inverted = category_mask = PFNZERO ("PFNZERO must be clear").
 * Caveat: in a range write-protected by uffd-wp with WP_UNPOPULATED (an
 * lm_dirty of kind LM_DIRTY_UFFD_WP after start), never-populated pages hold
 * a PTE marker that the kernel reports as PAGE_IS_SWAPPED and that nothing
 * unprivileged tells apart from a write-protected swapped-out page; they
 * count as populated here (safe, but they then get read).  Use
 * lm_dirty_start_populated() for the exact set of such a range.
 */
int lm_mem_populated_scan(void *base, uint64_t len, uint32_t page_size, uint64_t *bitmap,
                          lm_error *err)
{
    int rc = check_geometry(base, len, page_size, err);
    int fd = -1;
    struct lm_page_region *vec = NULL;
    uint64_t npages = len / page_size;
    if (rc < 0)
        goto out;
    if (!bitmap) {
        rc = lm_error_set(err, -EINVAL, "populated scan: no bitmap");
        goto out;
    }

    fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = 1; /* no procfs: treat as "scan missing" */
        goto all;
    }
    vec = malloc(POPULATED_VEC_LEN * sizeof *vec);
    if (!vec) {
        rc = lm_error_set(err, -ENOMEM, "populated scan: out of memory");
        goto out;
    }
    struct lm_pm_scan_arg tmpl = {
        .category_inverted = LM_PAGE_IS_PFNZERO,
        .category_mask = LM_PAGE_IS_PFNZERO,
        .category_anyof_mask = LM_PAGE_IS_PRESENT | LM_PAGE_IS_SWAPPED,
        .return_mask = LM_PAGE_IS_PRESENT | LM_PAGE_IS_SWAPPED,
    };
    struct populated_ctx ctx = {
        .base = (uintptr_t)base,
        .page_shift = (unsigned)__builtin_ctz(page_size),
        .bitmap = bitmap,
    };
    uint64_t failed_at = 0;
    rc = lm_pagemap_scan(fd, &tmpl, vec, POPULATED_VEC_LEN, (uintptr_t)base, (uintptr_t)base + len,
                         populated_region, &ctx, &failed_at);
    if (rc == -ENOTTY && failed_at == (uintptr_t)base) {
        rc = 1; /* kernel < 6.7: no PAGEMAP_SCAN */
        goto all;
    }
    if (rc < 0) {
        /* Bits set so far are right; the rest is unknown, so populated. */
        lm_bitmap_set_range(bitmap, (failed_at - (uintptr_t)base) / page_size, npages);
        rc = lm_error_set(err, rc, "PAGEMAP_SCAN of %p+%llu: %s", base, (unsigned long long)len,
                          strerror(-rc));
    }
    goto out;

all:
    lm_bitmap_set_range(bitmap, 0, npages);
out:
    free(vec);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ------------------------------------------------------------ zero check */

/* 16-byte vectors compile to SSE2 on x86-64 (NEON on arm64); may_alias
 * because the memory is typed by its owner, aligned(8) because that is all
 * the contract promises. */
typedef uint64_t zvec __attribute__((vector_size(16), may_alias, aligned(8)));

/* The source reads guest pages while the guest writes them: that race is
 * the design (a page written meanwhile is re-dirtied and sent again), so
 * ThreadSanitizer is told not to instrument this read. */
__attribute__((no_sanitize("thread"))) bool lm_page_is_zero(const void *p, size_t len)
{
    const zvec *v = p;
    const zvec *end = (const zvec *)((const char *)p + len);
    /* One branch per 64-byte chunk: a dirty page usually fails in its first
     * chunk, a zero page runs at memory bandwidth (~20 GB/s here, B1). */
    for (; v < end; v += 4) {
        zvec o = (v[0] | v[1]) | (v[2] | v[3]);
        if (o[0] | o[1])
            return false;
    }
    return true;
}

/* ------------------------------------------------------------- populate */

int lm_mem_populate(void *p, size_t len)
{
    if (len == 0)
        return 0;
    long sys = sysconf(_SC_PAGESIZE);
    uintptr_t ps = sys > 0 ? (uintptr_t)sys : 4096;
    /* The pages containing p and p+len-1 are mapped (they are the caller's),
     * so widening to them never touches memory that is not. */
    uintptr_t start = (uintptr_t)p & ~(ps - 1);
    uintptr_t end = ((uintptr_t)p + len + ps - 1) & ~(ps - 1);
    if (end < start)
        return -EINVAL;
    for (int i = 0; i < POPULATE_RETRIES; i++) {
        if (madvise((void *)start, end - start, MADV_POPULATE_WRITE) == 0)
            return 0;
        if (errno != EINTR && errno != EAGAIN)
            return -errno;
    }
    return -EAGAIN;
}
