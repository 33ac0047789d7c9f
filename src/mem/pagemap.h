/*
 * pagemap.h - internal to src/ram: the PAGEMAP_SCAN ioctl (Linux >= 6.7) and
 * the userfaultfd constants newer than Debian 12's kernel headers, the scan
 * loop shared by dirty.c and mem.c, and a bitmap run setter.
 *
 * Kernel facts this code relies on (checked on 6.18, see tests/unit/test_dirty.c
 * and /work/shared/reference/probes/):
 *  - a scan fills at most vec_len regions and stops early only when the vector
 *    is full (or max_pages is reached; we never set it), so a call that
 *    returns fewer than vec_len regions has walked the whole [start, end);
 *  - walk_end can be stale (measured on 6.18): when the kernel's internal
 *    bounce buffer, smaller than a big vector, filled during the call but its
 *    last internal pass finished the walk, walk_end keeps the address of that
 *    earlier stop.  Resuming there would re-walk pages already handled: no
 *    loss for a dirty sync (they are re-protected, reported only if written
 *    again), but a populated capture would see their fresh uffd-wp markers as
 *    "swapped".  So a short vector ends the loop, and a full one resumes from
 *    max(walk_end, end of the last region).
 *  - regions are returned in address order, page granular, never overlapping.
 */
#ifndef LM_RAM_PAGEMAP_H
#define LM_RAM_PAGEMAP_H

#include <stdint.h>
#include <sys/ioctl.h>

/* ---- include/uapi/linux/fs.h (6.7+) */
struct lm_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct lm_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

#define LM_PAGEMAP_SCAN _IOWR('f', 16, struct lm_pm_scan_arg)

#define LM_PM_SCAN_WP_MATCHING (1u << 0)
#define LM_PM_SCAN_CHECK_WPASYNC (1u << 1)

#define LM_PAGE_IS_WPALLOWED (1u << 0)
#define LM_PAGE_IS_WRITTEN (1u << 1)
#define LM_PAGE_IS_FILE (1u << 2)
#define LM_PAGE_IS_PRESENT (1u << 3)
#define LM_PAGE_IS_SWAPPED (1u << 4)
#define LM_PAGE_IS_PFNZERO (1u << 5)
#define LM_PAGE_IS_HUGE (1u << 6)

/* ---- include/uapi/linux/userfaultfd.h (6.4 / 6.7) */
#define LM_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define LM_UFFD_FEATURE_WP_ASYNC (1ull << 15)
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Called for every returned region, clipped to the scanned range. */
typedef void (*lm_pagemap_region_fn)(void *opaque, uint64_t start, uint64_t end,
                                     uint64_t categories);

/* Runs PAGEMAP_SCAN over [start, end) (page aligned) with the flags and masks
 * of `tmpl` (size/start/end/vec/vec_len/walk_end are filled here), in as many
 * calls as the vector needs.  Returns 0, or -errno of the failing call with
 * *failed_at set to the first address that call covered: the kernel may have
 * acted on (e.g. re-protected) pages from there on without telling us. */
int lm_pagemap_scan(int pagemap_fd, const struct lm_pm_scan_arg *tmpl, struct lm_page_region *vec,
                    uint64_t vec_len, uint64_t start, uint64_t end, lm_pagemap_region_fn fn,
                    void *opaque, uint64_t *failed_at);

/* Sets bits [first, end) of bm; returns how many went from 0 to 1. */
static inline uint64_t lm_bitmap_set_range(uint64_t *bm, uint64_t first, uint64_t end)
{
    if (first >= end)
        return 0;
    uint64_t w = first / 64, lw = (end - 1) / 64;
    uint64_t fmask = ~0ull << (first % 64);
    uint64_t lmask = ~0ull >> (63 - (end - 1) % 64);
    uint64_t newly;
    if (w == lw) {
        uint64_t m = fmask & lmask;
        newly = (uint64_t)__builtin_popcountll(m & ~bm[w]);
        bm[w] |= m;
        return newly;
    }
    newly = (uint64_t)__builtin_popcountll(fmask & ~bm[w]);
    bm[w] |= fmask;
    for (w++; w < lw; w++) {
        newly += 64 - (uint64_t)__builtin_popcountll(bm[w]);
        bm[w] = ~0ull;
    }
    newly += (uint64_t)__builtin_popcountll(lmask & ~bm[lw]);
    bm[lw] |= lmask;
    return newly;
}

#endif /* LM_RAM_PAGEMAP_H */
