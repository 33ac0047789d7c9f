/*
 * dirty.c - dirty-page tracking behind lm_dirty (dirty.h): userfaultfd
 * write-protect in async mode read back and re-armed with PAGEMAP_SCAN,
 * "everything dirty", and bitmaps supplied by the host.
 *
 * Threads: none are started here and no lock is taken.  One lm_dirty is
 * driven by one thread at a time (the migration thread) while the workload
 * writes the tracked memory from any number of threads; what orders those
 * writes against a sync is the kernel's page-table lock (see uffd_sync).
 *
 * Ownership: the ranges are the host's memory, borrowed.  An lm_dirty owns
 * its userfaultfd, its /proc/self/pagemap fd and region vector (uffd), and
 * its scratch bitmaps (host); lm_dirty_stop releases them.
 */
#include "mem/dirty.h"
#include "mem/pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* RAM blocks are few (QEMU has tens); a bound keeps add_range honest. */
#define MAX_RANGES 4096
/* Regions per PAGEMAP_SCAN call, allocated once at start: 384 KiB.  1 GiB
 * dirtied at 10 % in scattered pages comes back as ~24 K regions (B4), so a
 * busy GiB costs two calls. */
#define SCAN_VEC_LEN 16384

struct range {
    uintptr_t base;
    uint64_t len;
    uint32_t page_size;
    unsigned page_shift;
    uint64_t npages;
    bool registered;   /* uffd: UFFDIO_REGISTER done, undo at stop */
    uint64_t *scratch; /* host: the bitmap handed to the host function */
};

struct lm_dirty {
    lm_dirty_kind kind;
    bool started;
    struct range *ranges;
    unsigned nranges;
    unsigned cap;
    /* LM_DIRTY_UFFD_WP, valid while started */
    int uffd;
    int pagemap_fd;
    struct lm_page_region *vec;
    /* LM_DIRTY_HOST */
    lm_dirty_host_fn host_fn;
    void *host_opaque;
};

static uint64_t bitmap_words(uint64_t npages)
{
    return (npages + 63) / 64;
}

/* ------------------------------------------------------------ userfaultfd */

/*
 * Opens a userfaultfd that handles user-mode faults only.  With WP_ASYNC no
 * fault ever reaches a handler: kernel-mode writes (read() into a tracked
 * page) are resolved and recorded in the kernel all the same.  User-mode-only
 * is what vm.unprivileged_userfaultfd=0 still grants everyone, so this works
 * without privileges.  When the syscall is refused (seccomp in containers),
 * /dev/userfaultfd (Linux 6.1) may still be open to us by its file mode.
 */
static int uffd_open(lm_error *err)
{
    int flags = O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY;
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd < 0 && errno == EINVAL) /* < 5.11: no user-mode-only; API will say what is missing */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0)
        return fd;
    int e = errno;
    if (e == ENOSYS)
        return lm_error_set(err, -ENOSYS,
                            "userfaultfd: not supported by this kernel (CONFIG_USERFAULTFD)");
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        close(dev);
        if (fd >= 0)
            return fd;
    }
    if (e == EPERM)
        return lm_error_set(err, -EPERM,
                            "userfaultfd: %s (vm.unprivileged_userfaultfd=0, or a seccomp/"
                            "container profile refuses it)",
                            strerror(e));
    return lm_error_set(err, -e, "userfaultfd: %s", strerror(e));
}

/* Opens a userfaultfd and does the API handshake with WP_ASYNC and
 * WP_UNPOPULATED.  Returns the fd or < 0 naming the missing piece. */
static int uffd_open_api(lm_error *err)
{
    const uint64_t want = LM_UFFD_FEATURE_WP_ASYNC | LM_UFFD_FEATURE_WP_UNPOPULATED;
    int fd = uffd_open(err);
    if (fd < 0)
        return fd;
    struct uffdio_api api = {.api = UFFD_API, .features = want};
    if (ioctl(fd, UFFDIO_API, &api) == 0)
        return fd;
    int e = errno;
    close(fd);
    /* A refused handshake zeroes what it returns, so ask a fresh fd what
     * this kernel has, to name the missing feature. */
    lm_error ignored = {0};
    uint64_t have = 0;
    bool known = false;
    int probe = uffd_open(&ignored);
    if (probe >= 0) {
        struct uffdio_api a = {.api = UFFD_API};
        if (ioctl(probe, UFFDIO_API, &a) == 0) {
            have = a.features;
            known = true;
        }
        close(probe);
    }
    if (known && !(have & LM_UFFD_FEATURE_WP_ASYNC))
        return lm_error_set(err, -EOPNOTSUPP,
                            "userfaultfd lacks UFFD_FEATURE_WP_ASYNC (Linux >= 6.7 needed)");
    if (known && !(have & LM_UFFD_FEATURE_WP_UNPOPULATED))
        return lm_error_set(err, -EOPNOTSUPP,
                            "userfaultfd lacks UFFD_FEATURE_WP_UNPOPULATED (Linux >= 6.4 needed)");
    return lm_error_set(err, -e, "userfaultfd: UFFDIO_API with WP_ASYNC|WP_UNPOPULATED: %s",
                        strerror(e));
}

static int uffd_register(int uffd, unsigned index, struct range *r, lm_error *err)
{
    struct uffdio_register reg = {
        .range = {.start = r->base, .len = r->len},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        int e = errno;
        /* With WP_ASYNC any kind of mapping can be registered; what is
         * left to go wrong is a hole or another userfaultfd. */
        const char *hint = e == EINVAL  ? " (not all of it is mapped?)"
                           : e == EBUSY ? " (registered with another userfaultfd)"
                                        : "";
        return lm_error_set(err, -e, "UFFDIO_REGISTER(WP) of range %u (%#lx+%llu): %s%s", index,
                            (unsigned long)r->base, (unsigned long long)r->len, strerror(e), hint);
    }
    r->registered = true;
    if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT)))
        return lm_error_set(err, -EOPNOTSUPP,
                            "range %u (%#lx+%llu): this memory cannot be write-protected by "
                            "userfaultfd",
                            index, (unsigned long)r->base, (unsigned long long)r->len);
    return 0;
}

static int uffd_protect(int uffd, unsigned index, const struct range *r, lm_error *err)
{
    struct uffdio_writeprotect wp = {
        .range = {.start = r->base, .len = r->len},
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) {
        int e = errno;
        return lm_error_set(err, -e, "UFFDIO_WRITEPROTECT of range %u (%#lx+%llu): %s", index,
                            (unsigned long)r->base, (unsigned long long)r->len, strerror(e));
    }
    return 0;
}

static int scan_error(int rc, const char *what, unsigned index, lm_error *err)
{
    if (rc == -ENOTTY)
        return lm_error_set(err, rc, "PAGEMAP_SCAN not supported (Linux >= 6.7 needed)");
    if (rc == -EPERM)
        return lm_error_set(err, rc,
                            "%s of range %u: part of it is not under async write-protect "
                            "(remapped by the host?)",
                            what, index);
    return lm_error_set(err, rc, "%s of range %u: PAGEMAP_SCAN: %s", what, index, strerror(-rc));
}

/* Region callback: sets the pages a region touches, rounding outwards when
 * the range's pages are larger than the kernel's. */
struct set_ctx {
    const struct range *r;
    uint64_t *bitmap;
    uint64_t newly;
    bool populated_only; /* start: keep regions that had contents */
};

static void set_region(void *opaque, uint64_t start, uint64_t end, uint64_t categories)
{
    struct set_ctx *c = opaque;
    if (c->populated_only && (!(categories & (LM_PAGE_IS_PRESENT | LM_PAGE_IS_SWAPPED)) ||
                              (categories & LM_PAGE_IS_PFNZERO)))
        return;
    uint64_t first = (start - c->r->base) >> c->r->page_shift;
    uint64_t last = (end - c->r->base + c->r->page_size - 1) >> c->r->page_shift;
    c->newly += lm_bitmap_set_range(c->bitmap, first, last);
}

/*
 * Write-protects range `index` with PAGEMAP_SCAN instead of
 * UFFDIO_WRITEPROTECT, recording in `populated` which pages had contents.
 * PM_SCAN_WP_MATCHING reads each page's state and protects it under the page
 * table lock, so the state recorded is the state at the instant tracking
 * began for that page: a page seen empty (hole, none, zero page) can only get
 * contents through a write that the next sync reports.  Everything in a
 * freshly registered range is "written" (no uffd-wp bit yet), so everything
 * gets protected; holes get WP_UNPOPULATED markers like with
 * UFFDIO_WRITEPROTECT.  Cost is about that of UFFDIO_WRITEPROTECT (B4; see
 * bench/dirty_bench.c).
 */
static int uffd_protect_populated(lm_dirty *d, unsigned index, uint64_t *populated, lm_error *err)
{
    const struct range *r = &d->ranges[index];
    struct lm_pm_scan_arg tmpl = {
        .flags = LM_PM_SCAN_WP_MATCHING | LM_PM_SCAN_CHECK_WPASYNC,
        .return_mask = LM_PAGE_IS_PRESENT | LM_PAGE_IS_SWAPPED | LM_PAGE_IS_PFNZERO,
    };
    struct set_ctx ctx = {.r = r, .bitmap = populated, .populated_only = true};
    uint64_t failed_at = 0;
    int rc = lm_pagemap_scan(d->pagemap_fd, &tmpl, d->vec, SCAN_VEC_LEN, r->base, r->base + r->len,
                             set_region, &ctx, &failed_at);
    if (rc < 0) {
        lm_bitmap_set_range(populated, (failed_at - r->base) >> r->page_shift, r->npages);
        return scan_error(rc, "write-protect", index, err);
    }
    return 0;
}

static void uffd_teardown(lm_dirty *d)
{
    for (unsigned i = 0; i < d->nranges; i++) {
        struct range *r = &d->ranges[i];
        if (r->registered && d->uffd >= 0) {
            /* Unregistering also drops the uffd-wp bits and markers.  It
             * fails only if the host unmapped the range; close() below then
             * cleans up what is left. */
            struct uffdio_range ur = {.start = r->base, .len = r->len};
            (void)ioctl(d->uffd, UFFDIO_UNREGISTER, &ur);
        }
        r->registered = false;
    }
    if (d->uffd >= 0)
        close(d->uffd);
    if (d->pagemap_fd >= 0)
        close(d->pagemap_fd);
    free(d->vec);
    d->uffd = -1;
    d->pagemap_fd = -1;
    d->vec = NULL;
}

static int uffd_start(lm_dirty *d, uint64_t *const *populated, lm_error *err)
{
    int rc = uffd_open_api(err);
    if (rc < 0)
        goto out;
    d->uffd = rc;
    d->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (d->pagemap_fd < 0) {
        rc = lm_error_set(err, -errno, "cannot open /proc/self/pagemap: %s", strerror(errno));
        goto out;
    }
    d->vec = malloc(SCAN_VEC_LEN * sizeof *d->vec);
    if (!d->vec) {
        rc = lm_error_set(err, -ENOMEM, "dirty tracking: out of memory");
        goto out;
    }
    /* Register everything first so that no range is being tracked while a
     * later one fails to register. */
    for (unsigned i = 0; i < d->nranges; i++) {
        rc = uffd_register(d->uffd, i, &d->ranges[i], err);
        if (rc < 0)
            goto out;
    }
    for (unsigned i = 0; i < d->nranges; i++) {
        if (populated)
            rc = uffd_protect_populated(d, i, populated[i], err);
        else
            rc = uffd_protect(d->uffd, i, &d->ranges[i], err);
        if (rc < 0)
            goto out;
    }
    rc = 0;
out:
    if (rc < 0)
        uffd_teardown(d);
    return rc;
}

/*
 * Why a write is never lost.  PM_SCAN_WP_MATCHING makes the kernel, page by
 * page and holding that page table's lock, read the written state (uffd-wp
 * bit clear), report the page, set the bit again, and flush the TLB for the
 * re-protected pages before dropping the lock.  A write to a protected page
 * faults, and the async-WP fault path clears the bit under the same lock.
 * So for a write W to page P:
 *  - W's fault took the lock first: the scan sees P written, reports it now;
 *  - the scan took it first: it saw P clean (or reported and re-protected
 *    it), and W's fault then marks P written for the next sync;
 *  - P was already writable (written since its last protect) and W hits a
 *    stale TLB entry between the re-protect and the flush: P is reported by
 *    this very sync, and the caller reads P's contents only after we return,
 *    after the flush, so it reads W.
 * Pages never populated carry a WP_UNPOPULATED marker that the first write
 * (fault) replaces; a page dropped with MADV_DONTNEED reads as written (its
 * contents changed to zero); a PMD-mapped THP is protected as a whole and the
 * first write splits it, so reports stay 4 KiB granular
 * (probes/wp_thp_split.c, wp_holes.c).
 * If a scan fails, the kernel may have re-protected pages of that call that
 * we never got to see: everything from the failed call on is marked dirty.
 */
static int uffd_sync(lm_dirty *d, uint64_t *const *bitmaps, uint64_t *newly, lm_error *err)
{
    const struct lm_pm_scan_arg tmpl = {
        .flags = LM_PM_SCAN_WP_MATCHING | LM_PM_SCAN_CHECK_WPASYNC,
        /* Only these masks: the kernel's cheapest path, and the one that
         * reports zapped pages right on every kernel with WP_ASYNC (gVisor
         * learned that the hard way, A10). */
        .category_mask = LM_PAGE_IS_WRITTEN,
        .return_mask = LM_PAGE_IS_WRITTEN,
    };
    for (unsigned i = 0; i < d->nranges; i++) {
        const struct range *r = &d->ranges[i];
        struct set_ctx ctx = {.r = r, .bitmap = bitmaps[i]};
        uint64_t failed_at = 0;
        int rc = lm_pagemap_scan(d->pagemap_fd, &tmpl, d->vec, SCAN_VEC_LEN, r->base,
                                 r->base + r->len, set_region, &ctx, &failed_at);
        if (rc < 0) {
            ctx.newly +=
                lm_bitmap_set_range(bitmaps[i], (failed_at - r->base) >> r->page_shift, r->npages);
            *newly += ctx.newly;
            return scan_error(rc, "dirty sync", i, err);
        }
        *newly += ctx.newly;
    }
    return 0;
}

int lm_dirty_uffd_probe(lm_error *err)
{
    long sys = sysconf(_SC_PAGESIZE);
    size_t ps = sys > 0 ? (size_t)sys : 4096, len = 4 * ps;
    int uffd = -1, pm = -1;
    char *mem = MAP_FAILED;
    struct lm_page_region vec[8];
    int rc = uffd_open_api(err);
    if (rc < 0)
        goto out;
    uffd = rc;
    pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) {
        rc = lm_error_set(err, -errno, "cannot open /proc/self/pagemap: %s", strerror(errno));
        goto out;
    }
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        rc = lm_error_set(err, -errno, "mmap of a test page: %s", strerror(errno));
        goto out;
    }
    (void)madvise(mem, len, MADV_NOHUGEPAGE);
    /* pages 0, 1 populated before protection; 2, 3 never populated */
    mem[0] = 1;
    mem[ps] = 1;
    struct range r = {.base = (uintptr_t)mem,
                      .len = len,
                      .page_size = (uint32_t)ps,
                      .page_shift = (unsigned)__builtin_ctzl(ps),
                      .npages = 4};
    rc = uffd_register(uffd, 0, &r, err);
    if (rc < 0)
        goto out;
    rc = uffd_protect(uffd, 0, &r, err);
    if (rc < 0)
        goto out;
    *(volatile char *)(mem + ps) = 2;       /* populated, written */
    *(volatile char *)(mem + 3 * ps) = 2;   /* never populated, written (WP_UNPOPULATED) */
    (void)*(volatile char *)(mem + 2 * ps); /* read only: maps the zero page, not a write */

    const struct lm_pm_scan_arg tmpl = {
        .flags = LM_PM_SCAN_WP_MATCHING | LM_PM_SCAN_CHECK_WPASYNC,
        .category_mask = LM_PAGE_IS_WRITTEN,
        .return_mask = LM_PAGE_IS_WRITTEN,
    };
    for (int pass = 0; pass < 2; pass++) {
        uint64_t bm = 0, failed_at = 0;
        struct set_ctx ctx = {.r = &r, .bitmap = &bm};
        rc = lm_pagemap_scan(pm, &tmpl, vec, 8, r.base, r.base + len, set_region, &ctx, &failed_at);
        if (rc < 0) {
            rc = scan_error(rc, "probe scan", 0, err);
            goto out;
        }
        /* first pass: pages 1 and 3; second: nothing (re-protected) */
        uint64_t expect = pass == 0 ? 0xa : 0;
        if (bm != expect) {
            rc = lm_error_set(err, -EOPNOTSUPP,
                              "uffd-wp + PAGEMAP_SCAN %s: reported page mask %#llx, expected "
                              "%#llx (kernel bug?)",
                              pass == 0 ? "after two writes" : "right after re-protecting",
                              (unsigned long long)bm, (unsigned long long)expect);
            goto out;
        }
    }
    rc = 0;
out:
    if (uffd >= 0)
        close(uffd); /* also unregisters */
    if (mem != MAP_FAILED)
        munmap(mem, len);
    if (pm >= 0)
        close(pm);
    return rc;
}

/* ------------------------------------------------------------ public API */

static int dirty_alloc(lm_dirty_kind kind, lm_dirty **out, lm_error *err)
{
    lm_dirty *d = calloc(1, sizeof *d);
    if (!d)
        return lm_error_set(err, -ENOMEM, "dirty tracking: out of memory");
    d->kind = kind;
    d->uffd = -1;
    d->pagemap_fd = -1;
    *out = d;
    return 0;
}

int lm_dirty_new(lm_dirty_kind kind, lm_dirty **out, lm_error *err)
{
    if (!out)
        return lm_error_set(err, -EINVAL, "lm_dirty_new: no output pointer");
    *out = NULL;
    if (kind == LM_DIRTY_HOST)
        return lm_error_set(err, -EINVAL, "host dirty tracking needs lm_dirty_new_host()");
    if (kind != LM_DIRTY_UFFD_WP && kind != LM_DIRTY_ALL)
        return lm_error_set(err, -EINVAL, "unknown dirty tracking kind %d", (int)kind);
    return dirty_alloc(kind, out, err);
}

int lm_dirty_new_host(lm_dirty_host_fn fn, void *opaque, lm_dirty **out, lm_error *err)
{
    if (!out)
        return lm_error_set(err, -EINVAL, "lm_dirty_new_host: no output pointer");
    *out = NULL;
    if (!fn)
        return lm_error_set(err, -EINVAL, "host dirty tracking without a host function");
    int rc = dirty_alloc(LM_DIRTY_HOST, out, err);
    if (rc < 0)
        return rc;
    (*out)->host_fn = fn;
    (*out)->host_opaque = opaque;
    return 0;
}

int lm_dirty_add_range(lm_dirty *d, void *base, uint64_t len, uint32_t page_size, lm_error *err)
{
    long sys = sysconf(_SC_PAGESIZE);
    uintptr_t b = (uintptr_t)base;
    if (!d)
        return lm_error_set(err, -EINVAL, "lm_dirty_add_range: no tracker");
    if (d->started)
        return lm_error_set(err, -EBUSY, "dirty tracking: ranges cannot be added once started");
    if (page_size == 0 || (page_size & (page_size - 1)) || (sys > 0 && page_size < (uint64_t)sys))
        return lm_error_set(err, -EINVAL,
                            "dirty tracking: page size %u is not a power of two >= %ld", page_size,
                            sys);
    if (b % page_size || len == 0 || len % page_size || b + len < b)
        return lm_error_set(err, -EINVAL,
                            "dirty tracking: range %p+%llu is not a whole number of %u-byte pages",
                            base, (unsigned long long)len, page_size);
    for (unsigned i = 0; i < d->nranges; i++) {
        const struct range *o = &d->ranges[i];
        /* Overlap would make one range's scan eat the other's reports. */
        if (b < o->base + o->len && o->base < b + len)
            return lm_error_set(err, -EINVAL, "dirty tracking: range %p+%llu overlaps range %u",
                                base, (unsigned long long)len, i);
    }
    if (d->nranges >= MAX_RANGES)
        return lm_error_set(err, -E2BIG, "dirty tracking: more than %d ranges", MAX_RANGES);
    if (d->nranges == d->cap) {
        unsigned cap = d->cap ? d->cap * 2 : 8;
        struct range *n = realloc(d->ranges, cap * sizeof *n);
        if (!n)
            return lm_error_set(err, -ENOMEM, "dirty tracking: out of memory");
        d->ranges = n;
        d->cap = cap;
    }
    d->ranges[d->nranges++] = (struct range){
        .base = b,
        .len = len,
        .page_size = page_size,
        .page_shift = (unsigned)__builtin_ctz(page_size),
        .npages = len / page_size,
    };
    return 0;
}

static int host_start(lm_dirty *d, lm_error *err)
{
    for (unsigned i = 0; i < d->nranges; i++) {
        struct range *r = &d->ranges[i];
        r->scratch = calloc(bitmap_words(r->npages), sizeof *r->scratch);
        if (!r->scratch) {
            for (unsigned j = 0; j < i; j++) {
                free(d->ranges[j].scratch);
                d->ranges[j].scratch = NULL;
            }
            return lm_error_set(err, -ENOMEM, "dirty tracking: out of memory");
        }
    }
    return 0;
}

int lm_dirty_start_populated(lm_dirty *d, uint64_t *const *populated, lm_error *err)
{
    int rc = 0;
    if (!d)
        return lm_error_set(err, -EINVAL, "lm_dirty_start: no tracker");
    if (d->started)
        return lm_error_set(err, -EBUSY, "dirty tracking already started");
    for (unsigned i = 0; populated && i < d->nranges; i++)
        if (!populated[i])
            return lm_error_set(err, -EINVAL, "dirty tracking: no populated bitmap for range %u",
                                i);

    switch (d->kind) {
    case LM_DIRTY_UFFD_WP:
        rc = uffd_start(d, populated, err);
        break;
    case LM_DIRTY_HOST:
        rc = host_start(d, err);
        break;
    case LM_DIRTY_ALL:
        break;
    }
    if (rc < 0)
        return rc;
    d->started = true;
    if (populated && d->kind != LM_DIRTY_UFFD_WP) {
        /* The host's tracking (or a stopped source) already covers every
         * write from here on, so a scan now is exact and race free. */
        for (unsigned i = 0; i < d->nranges; i++) {
            const struct range *r = &d->ranges[i];
            rc = lm_mem_populated_scan((void *)r->base, r->len, r->page_size, populated[i], err);
            if (rc < 0) {
                lm_error_prefix(err, "dirty tracking: range %u", i);
                lm_dirty_stop(d);
                return rc;
            }
        }
    }
    return 0;
}

int lm_dirty_start(lm_dirty *d, lm_error *err)
{
    return lm_dirty_start_populated(d, NULL, err);
}

static int host_sync(lm_dirty *d, uint64_t *const *bitmaps, uint64_t *newly, lm_error *err)
{
    for (unsigned i = 0; i < d->nranges; i++) {
        struct range *r = &d->ranges[i];
        uint64_t words = bitmap_words(r->npages);
        uint64_t *bm = bitmaps[i];
        memset(r->scratch, 0, words * sizeof *r->scratch);
        int rc = d->host_fn(d->host_opaque, i, r->scratch, r->npages, err);
        if (rc < 0) {
            /* The host's log is in an unknown state: whatever it had
             * collected is gone, so all of the range is dirty. */
            *newly += lm_bitmap_set_range(bm, 0, r->npages);
            if (!err || !err->code)
                lm_error_set(err, rc, "host dirty bitmap of range %u failed (%d)", i, rc);
            else
                lm_error_prefix(err, "host dirty bitmap of range %u", i);
            return rc;
        }
        /* Bits past npages belong to no page: never let them through. */
        if (r->npages % 64)
            r->scratch[words - 1] &= ~0ull >> (64 - r->npages % 64);
        uint64_t n = 0;
        for (uint64_t w = 0; w < words; w++) {
            n += (uint64_t)__builtin_popcountll(r->scratch[w] & ~bm[w]);
            bm[w] |= r->scratch[w];
        }
        *newly += n;
    }
    return 0;
}

int lm_dirty_sync(lm_dirty *d, uint64_t *const *bitmaps, uint64_t *newly, lm_error *err)
{
    uint64_t count = 0;
    int rc = 0;
    if (!d || !bitmaps)
        return lm_error_set(err, -EINVAL, "lm_dirty_sync: no tracker or bitmaps");
    if (!d->started)
        return lm_error_set(err, -EINVAL, "dirty sync before lm_dirty_start()");
    for (unsigned i = 0; i < d->nranges; i++)
        if (!bitmaps[i])
            return lm_error_set(err, -EINVAL, "dirty sync: no bitmap for range %u", i);

    switch (d->kind) {
    case LM_DIRTY_UFFD_WP:
        rc = uffd_sync(d, bitmaps, &count, err);
        break;
    case LM_DIRTY_ALL:
        for (unsigned i = 0; i < d->nranges; i++)
            count += lm_bitmap_set_range(bitmaps[i], 0, d->ranges[i].npages);
        break;
    case LM_DIRTY_HOST:
        rc = host_sync(d, bitmaps, &count, err);
        break;
    }
    if (newly)
        *newly = count;
    return rc;
}

void lm_dirty_stop(lm_dirty *d)
{
    if (!d || !d->started)
        return;
    if (d->kind == LM_DIRTY_UFFD_WP)
        uffd_teardown(d);
    for (unsigned i = 0; i < d->nranges; i++) {
        free(d->ranges[i].scratch);
        d->ranges[i].scratch = NULL;
    }
    d->started = false;
}

void lm_dirty_free(lm_dirty *d)
{
    if (!d)
        return;
    lm_dirty_stop(d);
    free(d->ranges);
    free(d);
}
