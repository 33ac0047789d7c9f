/*
 * postcopy.c - the destination's side of postcopy: guest RAM registered
 * with userfaultfd (missing mode), the fault thread that asks the source
 * for pages, atomic placement, the preempt channel's loader, and the
 * fault-latency statistics of postcopy-blocktime (digest §6.2-§6.7).
 *
 * Threads:
 *  - "lm-incoming" (incoming.c) discards owed pages, calls listen at
 *    POSTCOPY_RUN and places the pages of the main channel;
 *  - "lm-pc-fault" reads fault messages: a fault on an owed page sends one
 *    RP_REQ_PAGES (never twice for a page); a fault on a page that is not
 *    owed gets a zero page at once (such a page is zero: every page with
 *    data arrived during precopy and is present);
 *  - "lm-pc-preempt" loads the preempt channel (requested pages only);
 *  - "lm-mfd-recv/N" (multifd/recv.c) place the background pages the
 *    multifd channels carry after POSTCOPY_RUN (lm_postcopy_place).
 * Locks: m->pc.lock guards the owed/requested/fault_ns maps of every block,
 * owed_pages, the statistics and the preempt flags; it is never held
 * across an ioctl that waits or a channel read.  m->pc.rp_lock serialises
 * the writers of the return path (incoming thread, fault thread); it is
 * taken without pc.lock held.  Wake-ups: pc.cond (placements, preempt end),
 * quit_efd (fault thread).
 * Ownership: the uffd and both threads belong to m from listen until
 * lm_postcopy_end() (completion) or lm_postcopy_destroy() (lm_mig_free);
 * after a failure in postcopy they stay, so that the workload's missing
 * pages can still come after a recovery (the guest is never lost).
 */

#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

/* ----------------------------------------------------------------- probe */

static int uffd_open(uint64_t features, lm_error *err)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lm_error_set(err, -errno, "userfaultfd unavailable: %s%s", strerror(errno),
                            errno == EPERM ? " (vm.unprivileged_userfaultfd=0 and no "
                                             "CAP_SYS_PTRACE)"
                                           : "");
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int e = errno;
        close(fd);
        return lm_error_set(err, -e, "userfaultfd: UFFDIO_API failed: %s", strerror(e));
    }
    return fd;
}

/* What QEMU's postcopy_ram_supported_by_host checks: the API, and that
 * anonymous memory can be registered in missing mode with COPY, ZEROPAGE
 * and WAKE available. */
int lm_postcopy_probe(lm_error *err)
{
    int fd = uffd_open(0, err);
    if (fd < 0)
        return fd;
    int ret = 0;
    void *p = mmap(NULL, LM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) {
        ret = lm_error_set(err, -errno, "userfaultfd probe: mmap: %s", strerror(errno));
        goto out;
    }
    struct uffdio_register r = {.range = {(uintptr_t)p, LM_PAGE_SIZE},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) {
        ret = lm_error_set(err, -errno, "userfaultfd cannot register anonymous memory in "
                                        "missing mode: %s", strerror(errno));
    } else {
        uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) |
                        (1ull << _UFFDIO_WAKE);
        if ((r.ioctls & need) != need)
            ret = lm_error_set(err, -ENOTSUP, "userfaultfd lacks COPY/ZEROPAGE/WAKE on "
                                              "anonymous memory");
        ioctl(fd, UFFDIO_UNREGISTER, &r.range);
    }
    munmap(p, LM_PAGE_SIZE);
out:
    close(fd);
    return ret;
}

/* The features this kernel's userfaultfd offers (0 when it has none):
 * UFFDIO_API called with no feature reports them all. */
static uint64_t uffd_features(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return 0;
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    uint64_t f = ioctl(fd, UFFDIO_API, &api) == 0 ? api.features : 0;
    close(fd);
    return f;
}

/* ------------------------------------------------------ memory kinds */

/* How the mappings of [base, base+len) are shared, from /proc/self/maps:
 * *shared and *private count the mappings of either kind over the range. */
static int scan_mappings(const uint8_t *base, uint64_t len, unsigned *shared, unsigned *private,
                         lm_error *err)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return lm_error_set(err, -errno, "postcopy: cannot read /proc/self/maps: %s",
                            strerror(errno));
    uintptr_t lo = (uintptr_t)base, hi = lo + len;
    char line[512];
    *shared = *private = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) != 3)
            continue;
        if (e <= lo || s >= hi)
            continue;
        if (perms[3] == 's')
            (*shared)++;
        else
            (*private)++;
    }
    fclose(f);
    return 0;
}

static bool test_no_minor(void)
{
    const char *t = getenv("LIVEMIG_TEST_POSTCOPY");
    return t && strstr(t, "no-minor");
}

/* Decides b->pc_kind.  Shared memory (memfd, shmem) takes minor faults
 * when the kernel has them: its page cache then stays allocated across the
 * switch, data is received straight into it through a second mapping (the
 * alias, made with mremap(old_size 0), which duplicates a shared mapping
 * without needing its file) and UFFDIO_CONTINUE maps it.  That saves the
 * copy and the page allocation of UFFDIO_COPY, which is half of a
 * destination loader's time (perf, docs/benchmarks.md).  Dropping such a
 * page with MADV_DONTNEED would only unmap it, so without minor faults
 * shared memory is dropped with MADV_REMOVE and placed with UFFDIO_COPY. */
static int classify_block(lm_ram_block *b, bool minor_ok, lm_error *err)
{
    unsigned shared, private;
    b->pc_kind = LM_PC_ANON;
    b->alias = NULL;
    int ret = scan_mappings(b->base, b->len, &shared, &private, err);
    if (ret < 0)
        return ret;
    if (shared && private)
        return lm_error_set(err, -EINVAL, "postcopy: RAM block '%s' mixes private and shared "
                                          "mappings", b->name);
    if (!shared)
        return 0;
    b->pc_kind = LM_PC_SHARED;
    if (!minor_ok || shared != 1)
        return 0;
    void *a = mremap(b->base, 0, b->len, MREMAP_MAYMOVE);
    if (a == MAP_FAILED)
        return 0; /* e.g. a mapping that cannot be duplicated: no alias */
    b->alias = a;
    b->pc_kind = LM_PC_MINOR;
    return 0;
}

/* ---------------------------------------------------------- life cycle */

void lm_postcopy_init(lm_mig *m)
{
    pthread_mutex_init(&m->pc.lock, NULL);
    pthread_mutex_init(&m->pc.rp_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->pc.cond, &ca);
    pthread_condattr_destroy(&ca);
    m->pc.uffd = -1;
    m->pc.quit_efd = -1;
}

static void free_maps(lm_mig *m)
{
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        free(b->owed);
        free(b->requested);
        free(b->fault_ns);
        free(b->claimed);
        b->owed = b->requested = b->fault_ns = b->claimed = NULL;
    }
}

/* Decides every block's kind and maps the aliases, once per migration (from
 * lm_ram_incoming_prepare when postcopy-ram is on, so that the prefault
 * thread fills the aliases' page tables before the switch, or at the latest
 * at lm_postcopy_prepare).  Undone by lm_postcopy_release. */
int lm_postcopy_classify(lm_mig *m, lm_error *err)
{
    if (m->pc.classified)
        return 0;
    bool minor_ok = (uffd_features() & UFFD_FEATURE_MINOR_SHMEM) && !test_no_minor();
    int ret = 0;
    pthread_mutex_lock(&m->pc.lock);
    for (unsigned i = 0; i < m->nblocks && ret == 0; i++) {
        lm_ram_block *b = &m->blocks[i];
        ret = classify_block(b, minor_ok, err);
        if (ret == 0 && b->pc_kind == LM_PC_MINOR) {
            free(b->alias_ready);
            b->alias_ready = calloc(lm_ram_chunk_words(b), 8);
            if (!b->alias_ready)
                ret = lm_error_set(err, -ENOMEM, "out of memory for postcopy maps");
        }
    }
    pthread_mutex_unlock(&m->pc.lock);
    m->pc.classified = true; /* even on failure: release undoes what was done */
    return ret;
}

/* Unmaps the aliases of minor-fault blocks (idempotent).  After
 * lm_postcopy_end, or when the migration ended without a switch; never in
 * postcopy-paused (the loaders will need them after a recovery).  Unmapping
 * costs ~0.1 s per GiB of page tables: the incoming thread calls it after
 * telling the source it is done. */
void lm_postcopy_release(lm_mig *m)
{
    lm_ram_prefault_stop(m);
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        if (b->alias)
            munmap(b->alias, b->len);
        b->alias = NULL;
        free(b->alias_ready);
        b->alias_ready = NULL;
    }
    m->pc.classified = false;
}

void lm_postcopy_destroy(lm_mig *m)
{
    lm_postcopy_preempt_stop(m);
    lm_postcopy_end(m);
    lm_postcopy_release(m);
    free(m->pc.lat);
    m->pc.lat = NULL;
    free_maps(m);
    pthread_cond_destroy(&m->pc.cond);
    pthread_mutex_destroy(&m->pc.lock);
    pthread_mutex_destroy(&m->pc.rp_lock);
}

/* Called at the first POSTCOPY_DISCARD or at POSTCOPY_RUN: from then on
 * the prefault thread must not populate anything (a populated owed page
 * would never fault). */
int lm_postcopy_prepare(lm_mig *m, lm_error *err)
{
    if (m->pc.prepared)
        return 0;
    lm_ram_prefault_stop(m);
    pthread_mutex_lock(&m->lock);
    bool blocktime = m->caps & (1ull << LM_CAP_POSTCOPY_BLOCKTIME);
    pthread_mutex_unlock(&m->lock);
    int ret = lm_postcopy_classify(m, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&m->pc.lock);
    free_maps(m);
    for (unsigned i = 0; i < m->nblocks && ret == 0; i++) {
        lm_ram_block *b = &m->blocks[i];
        b->owed = calloc(lm_bitmap_words(b->npages), 8);
        b->requested = calloc(lm_bitmap_words(b->npages), 8);
        b->fault_ns = blocktime ? calloc(b->npages, 8) : NULL;
        b->claimed = b->pc_kind == LM_PC_MINOR ? calloc(lm_bitmap_words(b->npages), 8) : NULL;
        if (!b->owed || !b->requested || (blocktime && !b->fault_ns) ||
            (b->pc_kind == LM_PC_MINOR && !b->claimed))
            ret = lm_error_set(err, -ENOMEM, "out of memory for postcopy maps");
    }
    m->pc.owed_pages = 0;
    m->pc.requests = m->pc.faults = m->pc.local_zero_faults = 0;
    LM_ATOMIC_SET(&m->pc.mfd_pages, 0);
    memset(m->pc.hist, 0, sizeof m->pc.hist);
    m->pc.lat_max_us = m->pc.lat_count = 0;
    m->pc.lat_n = 0;
    m->pc.blocktime = blocktime;
    m->pc.preempt_eos = false;
    m->pc.rp_broken = false;
    m->pc.prepared = ret == 0;
    pthread_mutex_unlock(&m->pc.lock);
    /* Small pages from here on: khugepaged must not refill what a discard
     * drops, and a missing page is requested and placed as 4 KiB. */
    for (unsigned i = 0; i < m->nblocks && ret == 0; i++)
        madvise(m->blocks[i].base, m->blocks[i].len, MADV_NOHUGEPAGE);
    return ret;
}

int lm_postcopy_discard(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                        lm_error *err)
{
    int ret = lm_postcopy_prepare(m, err);
    if (ret < 0)
        return ret;
    /* Shared memory without minor faults: only a hole faults (MADV_REMOVE
     * punches one); otherwise unmapping is enough (a minor fault comes
     * from an unmapped page-cache page, a missing fault from a hole). */
    int advice = b->pc_kind == LM_PC_SHARED ? MADV_REMOVE : MADV_DONTNEED;
    if (madvise(b->base + first * b->page_size, count * b->page_size, advice) < 0)
        return lm_error_set(err, -errno, "POSTCOPY_DISCARD: madvise(%s) of '%s' pages "
                                         "%llu+%llu: %s",
                            advice == MADV_REMOVE ? "REMOVE" : "DONTNEED", b->name,
                            (unsigned long long)first, (unsigned long long)count,
                            strerror(errno));
    pthread_mutex_lock(&m->pc.lock);
    for (uint64_t p = first; p < first + count; p++) {
        if (!lm_bit_test(b->owed, p)) {
            lm_bit_set(b->owed, p);
            m->pc.owed_pages++;
        }
        /* received = "may hold data": a later precopy stream must not
         * take a dropped page for a present one. */
        lm_bit_clear(b->received, p);
    }
    pthread_mutex_unlock(&m->pc.lock);
    return 0;
}

/* ------------------------------------------------------------ placement */

static void record_latency(lm_mig *m, lm_ram_block *b, uint64_t p, uint64_t now)
{
    if (!b->fault_ns || !b->fault_ns[p])
        return;
    uint64_t us = (now - b->fault_ns[p]) / 1000;
    b->fault_ns[p] = 0;
    unsigned bucket = 0;
    while (bucket + 1 < LM_PC_HIST_BUCKETS && (us >> (bucket + 1)))
        bucket++;
    m->pc.hist[bucket]++;
    m->pc.lat_count++;
    if (us > m->pc.lat_max_us)
        m->pc.lat_max_us = us;
    if (m->pc.lat && m->pc.lat_n < m->pc.lat_cap)
        m->pc.lat[m->pc.lat_n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* One ioctl over [p, q) (all owed when claimed); returns the pages it
 * placed from p on, 0 with *exist when p itself was present, < 0 on error. */
static int64_t place_ioctl(lm_mig *m, lm_ram_block *b, uint64_t p, uint64_t q,
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
            r = ioctl(m->pc.uffd, UFFDIO_COPY, &c);
            e = errno;
            done = c.copy;
        } else {
            struct uffdio_zeropage z = {.range = {addr, len}, .mode = 0};
            r = ioctl(m->pc.uffd, UFFDIO_ZEROPAGE, &z);
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

/* ------------------------------------------------ placement, minor faults */

/* Marks [p, q) placed: no longer owed nor claimed; wakes the waiters of
 * lm_postcopy_wait_placed.  With pc.lock held. */
static void placed_locked(lm_mig *m, lm_ram_block *b, uint64_t p, uint64_t q, uint64_t now)
{
    for (uint64_t i = p; i < q; i++) {
        if (lm_bit_test(b->owed, i)) {
            lm_bit_clear(b->owed, i);
            m->pc.owed_pages--;
        }
        if (b->claimed)
            lm_bit_clear(b->claimed, i);
        record_latency(m, b, i, now);
    }
    pthread_cond_broadcast(&m->pc.cond);
}

/* Claims the owed, unclaimed pages of [first, first+n) (n <= LM_RAM_MAX_RUN)
 * for the caller: bit i - first of mine.  Only a claimer writes a page
 * through the alias, and only until it is mapped: a write after that would
 * overwrite what the workload wrote since (UFFDIO_COPY has that check in
 * the kernel; the alias does not). */
static void claim(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t n, uint64_t *mine)
{
    memset(mine, 0, lm_bitmap_words(n) * 8);
    pthread_mutex_lock(&m->pc.lock);
    for (uint64_t i = first; i < first + n; i++) {
        if (lm_bit_test(b->owed, i) && !lm_bit_test(b->claimed, i)) {
            lm_bit_set(b->claimed, i);
            lm_bit_set(mine, i - first);
        }
    }
    pthread_mutex_unlock(&m->pc.lock);
}

static void unclaim(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t n,
                    const uint64_t *mine)
{
    pthread_mutex_lock(&m->pc.lock);
    for (uint64_t i = 0; i < n; i++)
        if (lm_bit_test(mine, i))
            lm_bit_clear(b->claimed, first + i);
    pthread_mutex_unlock(&m->pc.lock);
}

/* Maps [p, q) of the guest's mapping onto its page cache; waiters wake. */
static int continue_range(lm_mig *m, lm_ram_block *b, uint64_t p, uint64_t q)
{
    while (p < q) {
        struct uffdio_continue c = {
            .range = {(uintptr_t)b->base + p * b->page_size, (q - p) * b->page_size}};
        if (ioctl(m->pc.uffd, UFFDIO_CONTINUE, &c) == 0)
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
            ioctl(m->pc.uffd, UFFDIO_WAKE, &r);
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

/* Marks [p, q) placed (pc.lock taken here). */
static void mark_placed(lm_mig *m, lm_ram_block *b, uint64_t p, uint64_t q)
{
    uint64_t now = lm_now_ns();
    pthread_mutex_lock(&m->pc.lock);
    placed_locked(m, b, p, q, now);
    pthread_mutex_unlock(&m->pc.lock);
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

static int place_minor(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                       const uint8_t *data, lm_error *err)
{
    uint64_t mine[LM_RAM_MAX_RUN / 64];
    uint64_t ps = b->page_size;
    for (uint64_t at = first; at < first + count;) {
        uint64_t n = first + count - at < LM_RAM_MAX_RUN ? first + count - at : LM_RAM_MAX_RUN;
        claim(m, b, at, n, mine);
        for (uint64_t i = 0, j; next_mine(mine, n, &i, &j); i = j) {
            uint8_t *a = b->alias + (at + i) * ps;
            bool punch = !data && j - i > ZERO_CLEAR_MAX;
            int rc = 0;
            if (punch) {
                rc = madvise(a, (j - i) * ps, MADV_REMOVE) < 0 ? -errno : 0;
            } else {
                lm_ram_prefault_view(b, b->alias, b->alias_ready, at + i, j - i);
                if (data)
                    memcpy(a, data + (at - first + i) * ps, (j - i) * ps);
                else
                    memset(a, 0, (j - i) * ps);
                rc = continue_range(m, b, at + i, at + j);
            }
            if (rc < 0) {
                unclaim(m, b, at, n, mine); /* placed pages are unclaimed already */
                return lm_error_set(err, rc, "placing %spages %llu+%llu of '%s': %s",
                                    data ? "" : "zero ", (unsigned long long)(at + i),
                                    (unsigned long long)(j - i), b->name, strerror(-rc));
            }
            mark_placed(m, b, at + i, at + j);
            if (punch) {
                struct uffdio_range r = {(uintptr_t)b->base + (at + i) * ps, (j - i) * ps};
                ioctl(m->pc.uffd, UFFDIO_WAKE, &r);
            }
        }
        at += n;
    }
    return 0;
}

int lm_postcopy_recv_place(lm_mig *m, lm_chan *c, lm_ram_block *b, uint64_t first,
                           uint64_t count, uint8_t *scratch, lm_error *err)
{
    uint64_t mine[LM_RAM_MAX_RUN / 64];
    uint64_t ps = b->page_size;
    if (count > LM_RAM_MAX_RUN)
        return lm_error_set(err, -EPROTO, "postcopy: run of %llu pages",
                            (unsigned long long)count);
    claim(m, b, first, count, mine);
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
            lm_ram_prefault_view(b, b->alias, b->alias_ready, first + i, j - i);
        }
        if (lm_chan_read_full(c, dst, (j - i) * ps) < 0)
            rc = lm_chan_get_error(c, err);
        i = j;
    }
    for (uint64_t i = 0, j; rc == 0 && next_mine(mine, count, &i, &j); i = j) {
        rc = continue_range(m, b, first + i, first + j);
        if (rc < 0)
            lm_error_set(err, rc, "placing page %llu of '%s' (userfaultfd continue): %s",
                         (unsigned long long)(first + i), b->name, strerror(-rc));
        else
            mark_placed(m, b, first + i, first + j);
    }
    if (rc < 0)
        unclaim(m, b, first, count, mine); /* placed pages are unclaimed already */
    return rc;
}

/* ---------------------------------------------- placement, missing faults */

int lm_postcopy_place(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                      const uint8_t *data, lm_error *err)
{
    if (b->pc_kind == LM_PC_MINOR)
        return place_minor(m, b, first, count, data, err);
    uint64_t end = first + count;
    uint64_t p = first;
    while (p < end) {
        /* Snapshot the next run of owed pages; pages not owed were final
         * at the switch (or are placed already) and are skipped. */
        pthread_mutex_lock(&m->pc.lock);
        p = lm_bitmap_next_set(b->owed, end, p);
        uint64_t q = p < end ? lm_bitmap_next_clear(b->owed, end, p) : end;
        pthread_mutex_unlock(&m->pc.lock);
        if (p >= end)
            break;
        /* Zero runs can be huge: place at most 2 MiB at a time so faults
         * in between are not held back long. */
        if (!data && q - p > 512)
            q = p + 512;
        bool exist;
        int64_t n = place_ioctl(m, b, p, q, data ? data + (p - first) * b->page_size : NULL,
                                &exist);
        if (n < 0)
            return lm_error_set(err, (int)n, "placing page %llu of '%s' (userfaultfd): %s",
                                (unsigned long long)p, b->name, strerror((int)-n));
        mark_placed(m, b, p, p + (uint64_t)n);
        /* Present already: placed by another channel at the same time. */
        p += (uint64_t)n + (exist ? 1 : 0);
    }
    return 0;
}

/* --------------------------------------------------------- return path */

/* One record to the source on c (NULL: gone, -EPIPE), with pc.rp_lock held. */
static int rp_write_locked(lm_chan *c, uint8_t type, const void *p, uint32_t len)
{
    uint8_t h[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(type, len, h, sizeof h);
    if (!c)
        return -EPIPE;
    int ret = lm_chan_put(c, h, sizeof h);
    if (ret == 0 && len)
        ret = lm_chan_put(c, p, len);
    return ret ? ret : lm_chan_flush(c);
}

int lm_postcopy_rp_write(lm_mig *m, lm_chan *c, uint8_t type, const void *p, uint32_t len)
{
    pthread_mutex_lock(&m->pc.rp_lock);
    int ret = rp_write_locked(c, type, p, len);
    pthread_mutex_unlock(&m->pc.rp_lock);
    return ret;
}

/* ---------------------------------------------------------- fault thread */

static lm_ram_block *find_block(lm_mig *m, uint64_t addr, unsigned *idx)
{
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        if (addr >= (uintptr_t)b->base && addr < (uintptr_t)b->base + b->len) {
            *idx = i;
            return b;
        }
    }
    return NULL;
}

static void handle_fault(lm_mig *m, uint64_t addr, uint64_t flags)
{
    unsigned bi;
    lm_ram_block *b = find_block(m, addr, &bi);
    if (!b)
        return; /* not ours (cannot happen: only guest RAM is registered) */
    uint64_t p = (addr - (uintptr_t)b->base) / b->page_size;
    pthread_mutex_lock(&m->pc.lock);
    bool owed = lm_bit_test(b->owed, p);
    bool ask = owed && !lm_bit_test(b->requested, p);
    if (owed) {
        m->pc.faults++;
        if (b->fault_ns && !b->fault_ns[p])
            b->fault_ns[p] = lm_now_ns();
    } else {
        m->pc.local_zero_faults++;
    }
    if (ask) {
        lm_bit_set(b->requested, p);
        m->pc.requests++;
    }
    pthread_mutex_unlock(&m->pc.lock);
    if (!owed) {
        /* Not owed.  A minor fault: the page cache holds the page's final
         * contents (kept at the switch, or placed meanwhile), map it.  A
         * missing fault: never written by anyone, so zero.  EEXIST means
         * it was mapped meanwhile: the waker was the placer. */
        struct uffdio_range rg = {(uintptr_t)b->base + p * b->page_size, b->page_size};
        int r;
        if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
            struct uffdio_continue c = {.range = rg};
            r = ioctl(m->pc.uffd, UFFDIO_CONTINUE, &c);
        } else {
            struct uffdio_zeropage z = {.range = rg};
            r = ioctl(m->pc.uffd, UFFDIO_ZEROPAGE, &z);
        }
        if (r < 0 && errno != EEXIST)
            ioctl(m->pc.uffd, UFFDIO_WAKE, &rg);
        return;
    }
    if (!ask)
        return; /* asked once already: the page is on its way */
    uint8_t pl[LM_RAM_PAGES_HDR_SIZE];
    lm_ram_run r = {.block = m->in.rmap[bi], .count = 1, .first_page = p};
    lm_fmt_req_pages_encode(&r, pl, sizeof pl);
    /* With postcopy-preempt the request goes on the preempt channel, where
     * the source's reader waits for nothing else (on the main channel it
     * would queue behind the loader's reads of the background push, and on
     * the source behind the sender's writes: lock_sock on both ends).  With
     * the return path gone (paused), the request stays marked and the
     * faulting thread waits: recovery re-sends marked requests. */
    pthread_mutex_lock(&m->pc.rp_lock);
    int wr = rp_write_locked(m->pc.req ? m->pc.req : m->pc.rp, LM_REC_RP_REQ_PAGES, pl,
                             sizeof pl);
    pthread_mutex_unlock(&m->pc.rp_lock);
    if (wr < 0) {
        pthread_mutex_lock(&m->pc.lock);
        m->pc.rp_broken = true;
        pthread_mutex_unlock(&m->pc.lock);
    }
}

static void *fault_thread_fn(void *arg)
{
    lm_mig *m = arg;
    pthread_setname_np(pthread_self(), "lm-pc-fault");
    struct pollfd pfd[2] = {{.fd = m->pc.uffd, .events = POLLIN},
                            {.fd = m->pc.quit_efd, .events = POLLIN}};
    for (;;) {
        int n = poll(pfd, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || pfd[1].revents)
            break;
        struct uffd_msg msgs[16];
        ssize_t got = read(m->pc.uffd, msgs, sizeof msgs);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            break;
        }
        for (ssize_t i = 0; i < got / (ssize_t)sizeof msgs[0]; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                handle_fault(m, msgs[i].arg.pagefault.address, msgs[i].arg.pagefault.flags);
    }
    return NULL;
}

int lm_postcopy_listen(lm_mig *m, lm_chan *rp, lm_error *err)
{
    int ret = lm_postcopy_prepare(m, err);
    if (ret < 0)
        return ret;
    if (m->pc.listening)
        return lm_error_set(err, -EPROTO, "POSTCOPY_RUN received twice");
    bool minor = false;
    for (unsigned i = 0; i < m->nblocks; i++)
        minor |= m->blocks[i].pc_kind == LM_PC_MINOR;
    int fd = uffd_open(minor ? UFFD_FEATURE_MINOR_SHMEM : 0, err);
    if (fd < 0)
        return lm_error_prefix(err, "postcopy");
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        /* Minor blocks take missing faults too: an owed page that was
         * never in the page cache (a hole) faults that way. */
        struct uffdio_register r = {
            .range = {(uintptr_t)b->base, b->len},
            .mode = UFFDIO_REGISTER_MODE_MISSING |
                    (b->pc_kind == LM_PC_MINOR ? UFFDIO_REGISTER_MODE_MINOR : 0)};
        if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) {
            ret = lm_error_set(err, -errno, "postcopy: registering RAM block '%s' (%s memory) "
                                            "with userfaultfd: %s", b->name,
                               b->pc_kind == LM_PC_ANON ? "private" : "shared",
                               strerror(errno));
            close(fd);
            return ret;
        }
    }
    int efd = eventfd(0, EFD_CLOEXEC);
    if (efd < 0) {
        close(fd);
        return lm_error_set(err, -errno, "postcopy: eventfd: %s", strerror(errno));
    }
    pthread_mutex_lock(&m->pc.lock);
    m->pc.switched = true;
    if (m->pc.blocktime) {
        m->pc.lat_cap = m->pc.owed_pages < (1u << 20) ? (uint32_t)m->pc.owed_pages : 1u << 20;
        free(m->pc.lat);
        m->pc.lat = m->pc.lat_cap ? calloc(m->pc.lat_cap, sizeof *m->pc.lat) : NULL;
    }
    pthread_mutex_unlock(&m->pc.lock);
    pthread_mutex_lock(&m->pc.rp_lock);
    m->pc.rp = rp;
    pthread_mutex_unlock(&m->pc.rp_lock);
    m->pc.uffd = fd;
    m->pc.quit_efd = efd;
    ret = -pthread_create(&m->pc.fault_thread, NULL, fault_thread_fn, m);
    if (ret < 0) {
        close(fd);
        close(efd);
        m->pc.uffd = m->pc.quit_efd = -1;
        return lm_error_set(err, ret, "postcopy: cannot start the fault thread");
    }
    m->pc.fault_running = true;
    __atomic_store_n(&m->pc.listening, true, __ATOMIC_RELEASE);
    return 0;
}

void lm_postcopy_detach_rp(lm_mig *m)
{
    pthread_mutex_lock(&m->pc.rp_lock);
    m->pc.rp = NULL;
    pthread_mutex_unlock(&m->pc.rp_lock);
}

void lm_postcopy_end(lm_mig *m)
{
    if (m->pc.fault_running) {
        uint64_t one = 1;
        if (write(m->pc.quit_efd, &one, sizeof one) != sizeof one) {
            /* an eventfd write of 1 cannot fail short of a bug */
        }
        pthread_join(m->pc.fault_thread, NULL);
        m->pc.fault_running = false;
    }
    lm_postcopy_detach_rp(m);
    if (m->pc.uffd >= 0) {
        /* Unregistering keeps every placed page; closing wakes any thread
         * still blocked on a fault, which then retries normally. */
        for (unsigned i = 0; i < m->nblocks; i++) {
            struct uffdio_range r = {(uintptr_t)m->blocks[i].base, m->blocks[i].len};
            ioctl(m->pc.uffd, UFFDIO_UNREGISTER, &r);
        }
        close(m->pc.uffd);
        m->pc.uffd = -1;
    }
    if (m->pc.quit_efd >= 0) {
        close(m->pc.quit_efd);
        m->pc.quit_efd = -1;
    }
    __atomic_store_n(&m->pc.listening, false, __ATOMIC_RELEASE);
    m->pc.prepared = false;
}

/* ------------------------------------------------------ preempt channel */

static void *preempt_thread_fn(void *arg)
{
    lm_mig *m = arg;
    lm_chan *c = m->pc.preempt;
    lm_error err = {0};
    int ret = 0;
    pthread_setname_np(pthread_self(), "lm-pc-preempt");
    uint8_t *tmp = malloc((size_t)LM_RAM_MAX_RUN * LM_PAGE_SIZE);
    if (!tmp)
        ret = lm_error_set(&err, -ENOMEM, "out of memory");
    while (ret == 0) {
        uint8_t hb[LM_REC_HDR_SIZE];
        lm_rec_hdr h;
        if (lm_chan_read_full(c, hb, sizeof hb) < 0) {
            ret = lm_chan_get_error(c, &err);
            break;
        }
        if (lm_fmt_rec_hdr_decode(hb, sizeof hb, &h, &err) <= 0) {
            ret = err.code ? err.code : -EPROTO;
            break;
        }
        if (h.type == LM_REC_EOS)
            break;
        /* Only requested pages travel here, and only once the workload
         * runs: the main channel's loader has the block table by then. */
        if ((h.type != LM_REC_RAM_PAGES && h.type != LM_REC_RAM_ZERO) ||
            !__atomic_load_n(&m->pc.listening, __ATOMIC_ACQUIRE)) {
            ret = lm_error_set(&err, -EPROTO, "preempt channel: unexpected %s record%s",
                               lm_rec_type_name(h.type),
                               h.type == LM_REC_RAM_PAGES || h.type == LM_REC_RAM_ZERO
                                   ? " before POSTCOPY_RUN"
                                   : "");
            break;
        }
        ret = lm_ram_postcopy_load_record(m, c, &h, tmp, &err);
    }
    free(tmp);
    if (ret < 0)
        lm_error_prefix(&err, "preempt channel");
    pthread_mutex_lock(&m->pc.lock);
    m->pc.preempt_ret = ret;
    m->pc.preempt_err = err;
    m->pc.preempt_eos = true;
    pthread_cond_broadcast(&m->pc.cond);
    pthread_mutex_unlock(&m->pc.lock);
    return NULL;
}

int lm_postcopy_preempt_start(lm_mig *m, lm_chan *c, lm_error *err)
{
    pthread_mutex_lock(&m->pc.rp_lock);
    m->pc.req = c;
    pthread_mutex_unlock(&m->pc.rp_lock);
    m->pc.preempt = c;
    m->pc.preempt_eos = false;
    m->pc.preempt_ret = 0;
    int ret = -pthread_create(&m->pc.preempt_thread, NULL, preempt_thread_fn, m);
    if (ret < 0) {
        pthread_mutex_lock(&m->pc.rp_lock);
        m->pc.req = NULL;
        pthread_mutex_unlock(&m->pc.rp_lock);
        m->pc.preempt = NULL;
        lm_chan_free(c);
        return lm_error_set(err, ret, "cannot start the preempt channel thread");
    }
    m->pc.preempt_running = true;
    return 0;
}

void lm_postcopy_preempt_stop(lm_mig *m)
{
    if (!m->pc.preempt_running)
        return;
    /* Shut down first: a request write blocked on it (rp_lock held) fails. */
    lm_chan_shutdown(m->pc.preempt, "preempt channel closed");
    pthread_mutex_lock(&m->pc.rp_lock);
    m->pc.req = NULL; /* no request writes from here on */
    pthread_mutex_unlock(&m->pc.rp_lock);
    pthread_join(m->pc.preempt_thread, NULL);
    m->pc.preempt_running = false;
    lm_chan_free(m->pc.preempt);
    m->pc.preempt = NULL;
}

/* EOS on the main channel: the source owes nothing any more, but pages of
 * the preempt channel may still be in flight; they end with its EOS. */
int lm_postcopy_wait_placed(lm_mig *m, lm_error *err)
{
    pthread_mutex_lock(&m->pc.lock);
    while (m->pc.owed_pages && m->pc.preempt_running && !m->pc.preempt_eos)
        pthread_cond_wait(&m->pc.cond, &m->pc.lock);
    uint64_t owed = m->pc.owed_pages;
    int pret = m->pc.preempt_running ? m->pc.preempt_ret : 0;
    lm_error perr = m->pc.preempt_err;
    pthread_mutex_unlock(&m->pc.lock);
    if (pret < 0)
        return lm_error_set(err, pret, "%s", perr.msg);
    if (owed)
        return lm_error_set(err, -EPROTO, "end of stream with %llu pages still owed by the "
                                          "source", (unsigned long long)owed);
    return 0;
}

/* A faulting workload thread waits on four wake-ups (fault thread, the
 * source's return path, the preempt loader, the placement) while the
 * background push keeps a sender and a loader busy.  On a machine with
 * few cores the bulk threads then delay the urgent ones by whole
 * scheduler slices.  Raising the bulk threads' nice value is always
 * allowed, needs no privilege and only matters under contention; the
 * thread ends with the migration, so it is never lowered again. */
void lm_postcopy_background_thread(void)
{
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
}

/* --------------------------------------------------------------- stats */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void lm_postcopy_query(lm_mig *m, lm_info *out)
{
    pthread_mutex_lock(&m->pc.lock);
    out->has_postcopy = m->pc.switched;
    out->postcopy_requests = m->pc.requests;
    out->pc_faults = m->pc.faults;
    out->pc_local_faults = m->pc.local_zero_faults;
    out->pc_owed_pages = m->pc.owed_pages;
    out->pc_mfd_pages = LM_ATOMIC_GET(&m->pc.mfd_pages);
    for (unsigned i = 0; m->pc.switched && i < m->nblocks; i++) {
        if (m->blocks[i].pc_kind == LM_PC_MINOR)
            out->pc_minor_blocks++;
        else
            out->pc_copy_blocks++;
    }
    out->has_blocktime = m->pc.blocktime;
    memcpy(out->pc_lat_hist, m->pc.hist, sizeof out->pc_lat_hist);
    out->pc_lat_count = m->pc.lat_count;
    out->pc_lat_max_us = m->pc.lat_max_us;
    uint32_t n = m->pc.lat_n;
    uint32_t *copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, m->pc.lat, n * sizeof *copy);
    pthread_mutex_unlock(&m->pc.lock);
    if (copy) {
        qsort(copy, n, sizeof *copy, cmp_u32);
        out->pc_lat_p50_us = copy[(n - 1) / 2];
        out->pc_lat_p99_us = copy[(uint64_t)(n - 1) * 99 / 100];
        free(copy);
    }
}
