/*
 * place.c - atomic placement on the destination after POSTCOPY_RUN: the
 * ops behind mem.h's placement interface while the workload runs.  Private
 * memory (and shared memory without minor faults): UFFDIO_COPY/ZEROPAGE,
 * which fill a missing page whole and wake its waiters.  Shared memory
 * with minor faults: the data goes into the page cache through the alias
 * and UFFDIO_CONTINUE maps it.  Pages no longer owed (placed by another
 * loader, or final at the switch) are skipped; a page is placed once.
 * Any loader thread; postcopy.h has the locks.
 */
#include "postcopy/postcopy.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

static unsigned block_index(const lm_pc_dst *d, const lm_ram_block *b)
{
    return (unsigned)(b - d->mem->blocks);
}

/* One ioctl over [p, q) (all owed when snapshotted); returns the pages it
 * placed from p on, 0 with *exist when p itself was present, < 0 on error. */
static int64_t place_ioctl(lm_pc_dst *d, lm_ram_block *b, uint64_t p, uint64_t q,
                           const uint8_t *src, bool *exist)
{
    uint64_t len = (q - p) * b->page_size;
    uint64_t addr = (uintptr_t)(b->base + p * b->page_size);
    *exist = false;
    for (;;) {
        int64_t done;
        int r, e;
        if (src) {
            struct uffdio_copy c = {.dst = addr, .src = (uintptr_t)src, .len = len, .mode = 0};
            r = ioctl(d->uffd, UFFDIO_COPY, &c);
            e = errno;
            done = c.copy;
        } else {
            struct uffdio_zeropage z = {.range = {addr, len}, .mode = 0};
            r = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
            e = errno;
            done = z.zeropage;
        }
        if (r == 0)
            return (int64_t)(q - p);
        if (done > 0)
            return done / b->page_size; /* partial: the caller continues */
        if (e == EEXIST || done == -EEXIST) {
            *exist = true;
            return 0;
        }
        if (e == EAGAIN || done == -EAGAIN)
            continue; /* the mm changed under us (e.g. a fork): retry */
        return -(e ? e : EIO);
    }
}

/* Marks [p, q) placed (lock taken here). */
static void mark_placed(lm_pc_dst *d, unsigned bi, uint64_t p, uint64_t q)
{
    uint64_t now = lm_now_ns();
    pthread_mutex_lock(&d->lock);
    lm_pc_dst_placed_locked(d, bi, p, q, now);
    pthread_mutex_unlock(&d->lock);
}

/* ------------------------------------------------ placement, minor faults */

/* Claims the owed, unclaimed pages of [first, first+n) (n <= LM_RAM_MAX_RUN)
 * for the caller: bit i - first of mine.  Only a claimer writes a page
 * through the alias, and only until it is mapped: a write after that would
 * overwrite what the workload wrote since (UFFDIO_COPY has that check in
 * the kernel; the alias does not). */
static void claim(lm_pc_dst *d, lm_pc_block *pb, uint64_t first, uint64_t n, uint64_t *mine)
{
    memset(mine, 0, lm_bitmap_words(n) * 8);
    pthread_mutex_lock(&d->lock);
    for (uint64_t i = first; i < first + n; i++) {
        if (lm_bit_test(pb->owed, i) && !lm_bit_test(pb->claimed, i)) {
            lm_bit_set(pb->claimed, i);
            lm_bit_set(mine, i - first);
        }
    }
    pthread_mutex_unlock(&d->lock);
}

static void unclaim(lm_pc_dst *d, lm_pc_block *pb, uint64_t first, uint64_t n, const uint64_t *mine)
{
    pthread_mutex_lock(&d->lock);
    for (uint64_t i = 0; i < n; i++)
        if (lm_bit_test(mine, i))
            lm_bit_clear(pb->claimed, first + i);
    pthread_mutex_unlock(&d->lock);
}

/* Maps [p, q) of the guest's mapping onto its page cache; waiters wake. */
static int continue_range(lm_pc_dst *d, lm_ram_block *b, uint64_t p, uint64_t q)
{
    while (p < q) {
        struct uffdio_continue c = {
            .range = {(uintptr_t)b->base + p * b->page_size, (q - p) * b->page_size}};
        if (ioctl(d->uffd, UFFDIO_CONTINUE, &c) == 0)
            return 0;
        int e = errno;
        if (c.mapped > 0) {
            p += (uint64_t)c.mapped / b->page_size;
            continue;
        }
        if (e == EAGAIN || c.mapped == -EAGAIN)
            continue;
        if (e == EEXIST || c.mapped == -EEXIST) {
            /* Mapped already: cannot happen for a claimed page, but it
             * would be the outcome wanted; wake anyone and go on. */
            struct uffdio_range r = {(uintptr_t)b->base + p * b->page_size, b->page_size};
            ioctl(d->uffd, UFFDIO_WAKE, &r);
            p++;
            continue;
        }
        return -(e ? e : EIO);
    }
    return 0;
}

/* Runs of the claimed (mine set) or unclaimed pages of [0, n) from i. */
static uint64_t run_end(const uint64_t *mine, uint64_t n, uint64_t i, bool set)
{
    while (i < n && lm_bit_test(mine, i) == set)
        i++;
    return i;
}

/* The next run [*i, *j) of claimed pages of [0, n) at or after *i; false
 * when there is none.  for (i = 0; next_mine(mine, n, &i, &j); i = j). */
static bool next_mine(const uint64_t *mine, uint64_t n, uint64_t *i, uint64_t *j)
{
    *i = run_end(mine, n, *i, false);
    *j = run_end(mine, n, *i, true);
    return *i < n;
}

/* Pages of a minor block from a buffer (data: a multifd packet, read or
 * decompressed by its channel thread) or zero pages (data NULL), at most
 * LM_RAM_MAX_RUN at a time: the owed pages this thread claims are written
 * into the page cache through the alias and mapped; the others are left to
 * whoever claimed them, or were placed already.  Long zero runs are
 * punched out of the page cache instead and their waiters woken: a hole
 * that is touched later takes a missing fault, answered with a zero page
 * locally (nothing is owed there any more); short ones are cleared in
 * place, so that a requested zero page wakes its waiter at once. */
#define ZERO_CLEAR_MAX 64

static int place_minor(lm_pc_dst *d, lm_ram_block *b, uint64_t first, uint64_t count,
                       const uint8_t *data, lm_error *err)
{
    unsigned bi = block_index(d, b);
    lm_pc_block *pb = &d->blk[bi];
    uint64_t mine[LM_RAM_MAX_RUN / 64];
    uint64_t ps = b->page_size;
    for (uint64_t at = first; at < first + count;) {
        uint64_t n = first + count - at < LM_RAM_MAX_RUN ? first + count - at : LM_RAM_MAX_RUN;
        claim(d, pb, at, n, mine);
        for (uint64_t i = 0, j; next_mine(mine, n, &i, &j); i = j) {
            uint8_t *a = b->alias + (at + i) * ps;
            bool punch = !data && j - i > ZERO_CLEAR_MAX;
            int rc = 0;
            if (punch) {
                rc = madvise(a, (j - i) * ps, MADV_REMOVE) < 0 ? -errno : 0;
            } else {
                lm_mem_prefault_view(b, b->alias, b->alias_ready, at + i, j - i);
                if (data)
                    memcpy(a, data + (at - first + i) * ps, (j - i) * ps);
                else
                    memset(a, 0, (j - i) * ps);
                rc = continue_range(d, b, at + i, at + j);
            }
            if (rc < 0) {
                unclaim(d, pb, at, n, mine); /* placed pages are unclaimed already */
                return lm_error_set(err, rc, "placing %spages %llu+%llu of '%s': %s",
                                    data ? "" : "zero ", (unsigned long long)(at + i),
                                    (unsigned long long)(j - i), b->name, strerror(-rc));
            }
            mark_placed(d, bi, at + i, at + j);
            if (punch) {
                struct uffdio_range r = {(uintptr_t)b->base + (at + i) * ps, (j - i) * ps};
                ioctl(d->uffd, UFFDIO_WAKE, &r);
            }
        }
        at += n;
    }
    return 0;
}

/* LM_PC_MINOR blocks: reads count pages from c straight into the page
 * cache of the owed pages this thread claims (the others into scratch) and
 * maps them. */
static int recv_minor(lm_pc_dst *d, lm_chan *c, lm_ram_block *b, uint64_t first, uint64_t count,
                      uint8_t *scratch, lm_error *err)
{
    unsigned bi = block_index(d, b);
    lm_pc_block *pb = &d->blk[bi];
    uint64_t mine[LM_RAM_MAX_RUN / 64];
    uint64_t ps = b->page_size;
    claim(d, pb, first, count, mine);
    /* The stream's order: claimed runs go to the page cache (populated in
     * the alias first: a fault per 4 KiB page inside recv would cost more
     * than the copy), the rest to scratch. */
    int rc = 0;
    for (uint64_t i = 0; i < count && rc == 0;) {
        bool set = lm_bit_test(mine, i);
        uint64_t j = run_end(mine, count, i, set);
        uint8_t *dst = scratch;
        if (set) {
            dst = b->alias + (first + i) * ps;
            lm_mem_prefault_view(b, b->alias, b->alias_ready, first + i, j - i);
        }
        if (lm_chan_read_full(c, dst, (j - i) * ps) < 0)
            rc = lm_chan_get_error(c, err);
        i = j;
    }
    for (uint64_t i = 0, j; rc == 0 && next_mine(mine, count, &i, &j); i = j) {
        rc = continue_range(d, b, first + i, first + j);
        if (rc < 0)
            lm_error_set(err, rc, "placing page %llu of '%s' (userfaultfd continue): %s",
                         (unsigned long long)(first + i), b->name, strerror(-rc));
        else
            mark_placed(d, bi, first + i, first + j);
    }
    if (rc < 0)
        unclaim(d, pb, first, count, mine); /* placed pages are unclaimed already */
    return rc;
}

/* ---------------------------------------------- placement, missing faults */

static int check_block(const lm_ram_block *b, uint64_t count, lm_error *err)
{
    if (b->page_size != LM_PAGE_SIZE)
        return lm_error_set(err, -EPROTO,
                            "postcopy: block '%s' has %u-byte pages, only %u "
                            "supported",
                            b->name, b->page_size, LM_PAGE_SIZE);
    if (count > LM_MFD_MAX_PAGES)
        return lm_error_set(err, -EPROTO, "postcopy: run of %llu pages", (unsigned long long)count);
    return 0;
}

static int pc_pages(void *opaque, lm_ram_block *b, uint64_t first, uint64_t count,
                    const uint8_t *data, lm_error *err)
{
    lm_pc_dst *d = opaque;
    unsigned bi = block_index(d, b);
    lm_pc_block *pb = &d->blk[bi];
    if (b->page_size != LM_PAGE_SIZE)
        return check_block(b, count, err);
    if (pb->kind == LM_PC_MINOR)
        return place_minor(d, b, first, count, data, err);
    uint64_t end = first + count;
    uint64_t p = first;
    while (p < end) {
        /* Snapshot the next run of owed pages; pages not owed were final
         * at the switch (or are placed already) and are skipped. */
        pthread_mutex_lock(&d->lock);
        p = lm_bitmap_next_set(pb->owed, end, p);
        uint64_t q = p < end ? lm_bitmap_next_clear(pb->owed, end, p) : end;
        pthread_mutex_unlock(&d->lock);
        if (p >= end)
            break;
        /* Zero runs can be huge: place at most 2 MiB at a time so faults
         * in between are not held back long. */
        if (!data && q - p > 512)
            q = p + 512;
        bool exist;
        int64_t n =
            place_ioctl(d, b, p, q, data ? data + (p - first) * b->page_size : NULL, &exist);
        if (n < 0)
            return lm_error_set(err, (int)n, "placing page %llu of '%s' (userfaultfd): %s",
                                (unsigned long long)p, b->name, strerror((int)-n));
        mark_placed(d, bi, p, p + (uint64_t)n);
        /* Present already: placed by another channel at the same time. */
        p += (uint64_t)n + (exist ? 1 : 0);
    }
    return 0;
}

/* RAM_PAGES after POSTCOPY_RUN: private memory reads into scratch first,
 * then UFFDIO_COPY places (and wakes whoever waits); shared memory with
 * minor faults receives straight into the page cache. */
static int pc_recv(void *opaque, lm_chan *c, lm_ram_block *b, uint64_t first, uint64_t count,
                   uint8_t *scratch, lm_error *err)
{
    lm_pc_dst *d = opaque;
    int ret = check_block(b, count, err);
    if (ret < 0)
        return ret;
    if (d->blk[block_index(d, b)].kind == LM_PC_MINOR)
        return recv_minor(d, c, b, first, count, scratch, err);
    if (lm_chan_read_full(c, scratch, count * b->page_size) < 0)
        return lm_chan_get_error(c, err);
    return pc_pages(d, b, first, count, scratch, err);
}

const lm_place_ops lm_pc_place_ops = {
    .pages = pc_pages,
    .recv = pc_recv,
};
