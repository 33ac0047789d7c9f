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
 *  - "lm-pc-preempt" loads the preempt channel (requested pages only).
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

static int uffd_open(lm_error *err)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lm_error_set(err, -errno, "userfaultfd unavailable: %s%s", strerror(errno),
                            errno == EPERM ? " (vm.unprivileged_userfaultfd=0 and no "
                                             "CAP_SYS_PTRACE)"
                                           : "");
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
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
    int fd = uffd_open(err);
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
        b->owed = b->requested = b->fault_ns = NULL;
    }
}

void lm_postcopy_destroy(lm_mig *m)
{
    lm_postcopy_preempt_stop(m);
    lm_postcopy_end(m);
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
    pthread_mutex_lock(&m->pc.lock);
    free_maps(m);
    int ret = 0;
    for (unsigned i = 0; i < m->nblocks && ret == 0; i++) {
        lm_ram_block *b = &m->blocks[i];
        b->owed = calloc(lm_bitmap_words(b->npages), 8);
        b->requested = calloc(lm_bitmap_words(b->npages), 8);
        b->fault_ns = blocktime ? calloc(b->npages, 8) : NULL;
        if (!b->owed || !b->requested || (blocktime && !b->fault_ns))
            ret = lm_error_set(err, -ENOMEM, "out of memory for postcopy maps");
    }
    m->pc.owed_pages = 0;
    m->pc.requests = m->pc.faults = m->pc.local_zero_faults = 0;
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
    if (madvise(b->base + first * b->page_size, count * b->page_size, MADV_DONTNEED) < 0)
        return lm_error_set(err, -errno, "POSTCOPY_DISCARD: madvise(DONTNEED) of '%s' pages "
                                         "%llu+%llu: %s", b->name, (unsigned long long)first,
                            (unsigned long long)count, strerror(errno));
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

int lm_postcopy_place(lm_mig *m, lm_ram_block *b, uint64_t first, uint64_t count,
                      const uint8_t *data, lm_error *err)
{
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
        uint64_t now = lm_now_ns();
        pthread_mutex_lock(&m->pc.lock);
        for (uint64_t i = p; i < p + (uint64_t)n; i++) {
            if (lm_bit_test(b->owed, i)) {
                lm_bit_clear(b->owed, i);
                m->pc.owed_pages--;
            }
            record_latency(m, b, i, now);
        }
        pthread_cond_broadcast(&m->pc.cond);
        pthread_mutex_unlock(&m->pc.lock);
        /* Present already: placed by another channel at the same time. */
        p += (uint64_t)n + (exist ? 1 : 0);
    }
    return 0;
}

/* --------------------------------------------------------- return path */

int lm_postcopy_rp_write(lm_mig *m, lm_chan *c, uint8_t type, const void *p, uint32_t len)
{
    uint8_t h[LM_REC_HDR_SIZE];
    lm_fmt_rec_hdr_encode(type, len, h, sizeof h);
    pthread_mutex_lock(&m->pc.rp_lock);
    int ret = -EPIPE;
    if (c) {
        ret = lm_chan_put(c, h, sizeof h);
        if (ret == 0 && len)
            ret = lm_chan_put(c, p, len);
        if (ret == 0)
            ret = lm_chan_flush(c);
    }
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

static void handle_fault(lm_mig *m, uint64_t addr)
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
        /* Not owed and not present: never written by anyone, so zero.
         * EEXIST means it was placed meanwhile: the waker was the placer. */
        struct uffdio_zeropage z = {.range = {(uintptr_t)b->base + p * b->page_size,
                                              b->page_size}};
        if (ioctl(m->pc.uffd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST) {
            struct uffdio_range r = z.range;
            ioctl(m->pc.uffd, UFFDIO_WAKE, &r);
        }
        return;
    }
    if (!ask)
        return; /* asked once already: the page is on its way */
    uint8_t pl[LM_RAM_PAGES_HDR_SIZE];
    lm_ram_run r = {.block = m->in.rmap[bi], .count = 1, .first_page = p};
    lm_fmt_req_pages_encode(&r, pl, sizeof pl);
    pthread_mutex_lock(&m->pc.rp_lock);
    lm_chan *c = m->pc.rp;
    pthread_mutex_unlock(&m->pc.rp_lock);
    /* With the return path gone (paused), the request stays marked and
     * the faulting thread waits: recovery re-sends marked requests. */
    if (lm_postcopy_rp_write(m, c, LM_REC_RP_REQ_PAGES, pl, sizeof pl) < 0) {
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
                handle_fault(m, msgs[i].arg.pagefault.address);
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
    int fd = uffd_open(err);
    if (fd < 0)
        return lm_error_prefix(err, "postcopy");
    for (unsigned i = 0; i < m->nblocks; i++) {
        lm_ram_block *b = &m->blocks[i];
        struct uffdio_register r = {.range = {(uintptr_t)b->base, b->len},
                                    .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) {
            ret = lm_error_set(err, -errno, "postcopy: registering RAM block '%s' with "
                                            "userfaultfd: %s", b->name, strerror(errno));
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
    m->pc.preempt = c;
    m->pc.preempt_eos = false;
    m->pc.preempt_ret = 0;
    int ret = -pthread_create(&m->pc.preempt_thread, NULL, preempt_thread_fn, m);
    if (ret < 0) {
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
    lm_chan_shutdown(m->pc.preempt, "preempt channel closed");
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
