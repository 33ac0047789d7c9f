/*
 * uffd.c - the destination's userfaultfd: the probe, the memory kind of
 * each block (and the alias of shared memory), registration at
 * POSTCOPY_RUN, the fault thread "lm-pc-fault", and the end (postcopy.h
 * has the threads and locks).
 */
#include "postcopy/postcopy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
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
 * and WAKE available.  It maps a page and opens a descriptor: callers do
 * not hold locks around it. */
int lm_postcopy_probe(lm_error *err)
{
    int fd = uffd_open(0, err);
    if (fd < 0)
        return fd;
    int ret = 0;
    void *p = mmap(NULL, LM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        ret = lm_error_set(err, -errno, "userfaultfd probe: mmap: %s", strerror(errno));
        goto out;
    }
    struct uffdio_register r = {.range = {(uintptr_t)p, LM_PAGE_SIZE},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) {
        ret = lm_error_set(err, -errno,
                           "userfaultfd cannot register anonymous memory in "
                           "missing mode: %s",
                           strerror(errno));
    } else {
        uint64_t need =
            (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
        if ((r.ioctls & need) != need)
            ret = lm_error_set(err, -ENOTSUP,
                               "userfaultfd lacks COPY/ZEROPAGE/WAKE on "
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

/* Decides a block's kind.  Shared memory (memfd, shmem) takes minor faults
 * when the kernel has them: its page cache then stays allocated across the
 * switch, data is received straight into it through a second mapping (the
 * alias, made with mremap(old_size 0), which duplicates a shared mapping
 * without needing its file) and UFFDIO_CONTINUE maps it.  That saves the
 * copy and the page allocation of UFFDIO_COPY, which is half of a
 * destination loader's time (perf, docs/benchmarks.md).  Dropping such a
 * page with MADV_DONTNEED would only unmap it, so without minor faults
 * shared memory is dropped with MADV_REMOVE and placed with UFFDIO_COPY. */
static int classify_block(lm_ram_block *b, lm_pc_block *pb, bool minor_ok, lm_error *err)
{
    unsigned shared, private;
    pb->kind = LM_PC_ANON;
    b->alias = NULL;
    int ret = scan_mappings(b->base, b->len, &shared, &private, err);
    if (ret < 0)
        return ret;
    if (shared && private)
        return lm_error_set(err, -EINVAL,
                            "postcopy: RAM block '%s' mixes private and shared "
                            "mappings",
                            b->name);
    if (!shared)
        return 0;
    pb->kind = LM_PC_SHARED;
    if (!minor_ok || shared != 1)
        return 0;
    void *a = mremap(b->base, 0, b->len, MREMAP_MAYMOVE);
    if (a == MAP_FAILED)
        return 0; /* e.g. a mapping that cannot be duplicated: no alias */
    b->alias = a;
    pb->kind = LM_PC_MINOR;
    return 0;
}

/* Once per migration (from migrate-incoming when postcopy-ram is on, so
 * that the prefault thread fills the aliases' page tables before the
 * switch, or at the latest at lm_pc_dst_prepare).  Undone by
 * lm_pc_dst_release. */
int lm_pc_dst_classify(lm_pc_dst *d, lm_error *err)
{
    if (d->classified)
        return 0;
    bool minor_ok = (uffd_features() & UFFD_FEATURE_MINOR_SHMEM) && !test_no_minor();
    int ret = 0;
    for (unsigned i = 0; i < d->mem->nblocks && ret == 0; i++) {
        lm_ram_block *b = &d->mem->blocks[i];
        ret = classify_block(b, &d->blk[i], minor_ok, err);
        if (ret == 0 && d->blk[i].kind == LM_PC_MINOR) {
            free(b->alias_ready);
            b->alias_ready = calloc(lm_mem_chunk_words(b), 8);
            if (!b->alias_ready)
                ret = lm_error_set(err, -ENOMEM, "out of memory for postcopy maps");
        }
    }
    d->classified = true; /* even on failure: release undoes what was done */
    return ret;
}

/* Unmaps the aliases of minor-fault blocks (idempotent).  Never in
 * postcopy-paused (the loaders will need them after a recovery).
 * Unmapping costs ~0.1 s per GiB of page tables: the incoming thread calls
 * it after telling the source it is done. */
void lm_pc_dst_release(lm_pc_dst *d)
{
    lm_mem_prefault_stop(d->mem);
    for (unsigned i = 0; i < d->mem->nblocks; i++) {
        lm_ram_block *b = &d->mem->blocks[i];
        if (b->alias)
            munmap(b->alias, b->len);
        b->alias = NULL;
        free(b->alias_ready);
        b->alias_ready = NULL;
    }
    d->classified = false;
}

/* ---------------------------------------------------------- fault thread */

static void handle_fault(lm_pc_dst *d, uint64_t addr, uint64_t flags)
{
    unsigned bi;
    lm_ram_block *b = lm_mem_find(d->mem, addr, &bi);
    if (!b)
        return; /* not ours (cannot happen: only guest RAM is registered) */
    lm_pc_block *pb = &d->blk[bi];
    uint64_t p = (addr - (uintptr_t)b->base) / b->page_size;
    pthread_mutex_lock(&d->lock);
    bool owed = lm_bit_test(pb->owed, p);
    bool ask = owed && !lm_bit_test(pb->requested, p);
    if (owed) {
        d->faults++;
        if (pb->fault_ns && !pb->fault_ns[p])
            pb->fault_ns[p] = lm_now_ns();
    } else {
        d->local_zero_faults++;
    }
    if (ask) {
        lm_bit_set(pb->requested, p);
        d->requests++;
    }
    pthread_mutex_unlock(&d->lock);
    if (!owed) {
        /* Not owed.  A minor fault: the page cache holds the page's final
         * contents (kept at the switch, or placed meanwhile), map it.  A
         * missing fault: never written by anyone, so zero.  EEXIST means
         * it was mapped meanwhile: the waker was the placer. */
        struct uffdio_range rg = {(uintptr_t)b->base + p * b->page_size, b->page_size};
        int r;
        if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
            struct uffdio_continue c = {.range = rg};
            r = ioctl(d->uffd, UFFDIO_CONTINUE, &c);
        } else {
            struct uffdio_zeropage z = {.range = rg};
            r = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
        }
        if (r < 0 && errno != EEXIST)
            ioctl(d->uffd, UFFDIO_WAKE, &rg);
        return;
    }
    if (!ask)
        return; /* asked once already: the page is on its way */
    if (d->serve) {
        /* Lazy restore: the page comes from the file now.  A failure is
         * the serve's owner's to report; the page stays owed and its
         * thread waits until the fence (lm_pc_dst_end). */
        lm_error e = {0};
        d->serve(d->serve_opaque, bi, p, &e);
        return;
    }
    uint8_t pl[LM_RAM_PAGES_HDR_SIZE];
    lm_ram_run r = {.block = d->mem->smap.rmap[bi], .count = 1, .first_page = p};
    lm_fmt_req_pages_encode(&r, pl, sizeof pl);
    /* With postcopy-preempt the request goes on the preempt channel, where
     * the source's reader waits for nothing else (on the main channel it
     * would queue behind the loader's reads of the background push, and on
     * the source behind the sender's writes: lock_sock on both ends).  With
     * the return path gone (paused), the request stays marked and the
     * faulting thread waits: recovery re-sends marked requests. */
    pthread_mutex_lock(&d->rp_lock);
    lm_chan *c = d->req ? d->req : d->rp;
    int wr = c ? lm_rec_send(c, LM_REC_RP_REQ_PAGES, pl, sizeof pl) : -EPIPE;
    pthread_mutex_unlock(&d->rp_lock);
    if (wr < 0) {
        pthread_mutex_lock(&d->lock);
        d->rp_broken = true;
        pthread_mutex_unlock(&d->lock);
    }
}

/* The watchdog of a silent link (x-postcopy-timeout-ms): the source sends
 * a PING every 100 ms window besides its pages, so a main channel that
 * reads nothing for timeout_ms is a link that is gone without an error (a
 * black hole).  Checked by the fault thread between faults; its own
 * request writes are bounded by SO_SNDTIMEO (listen), so it cannot be
 * stuck in one.  It fires once per return path: a recovery attaches a new
 * one (rp_gen), and the count starts over from then. */
typedef struct watch {
    uint64_t gen, last_bytes, last_ns;
    bool fired;
} watch;

static void watch_link(lm_pc_dst *d, watch *w)
{
    uint64_t now = lm_now_ns();
    uint64_t all = d->link_bytes ? d->link_bytes(d->link_opaque) : 0;
    pthread_mutex_lock(&d->rp_lock);
    bool fire = false;
    if (d->rp) {
        uint64_t r = lm_chan_bytes_read(d->rp) + all;
        if (d->rp_gen != w->gen) {
            w->gen = d->rp_gen;
            w->fired = false;
            w->last_bytes = r;
            w->last_ns = now;
        } else if (r != w->last_bytes) {
            w->last_bytes = r;
            w->last_ns = now;
        } else if (!w->fired && now - w->last_ns >= d->timeout_ms * 1000000ull) {
            fire = w->fired = true;
        }
    }
    pthread_mutex_unlock(&d->rp_lock);
    if (fire && d->link_down) {
        char why[160];
        snprintf(why, sizeof why,
                 "main channel: no data from the source for %llu ms "
                 "(x-postcopy-timeout-ms)",
                 (unsigned long long)d->timeout_ms);
        d->link_down(d->link_opaque, -ETIMEDOUT, why);
    }
}

static void *fault_thread_fn(void *arg)
{
    lm_pc_dst *d = arg;
    pthread_setname_np(pthread_self(), "lm-pc-fault");
    struct pollfd pfd[2] = {{.fd = d->uffd, .events = POLLIN},
                            {.fd = d->quit_efd, .events = POLLIN}};
    bool watching = d->timeout_ms != 0;
    pthread_mutex_lock(&d->rp_lock);
    watch w = {.gen = d->rp_gen, .last_ns = lm_now_ns()};
    pthread_mutex_unlock(&d->rp_lock);
    for (;;) {
        int n = poll(pfd, 2, watching ? 100 : -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || pfd[1].revents)
            break;
        if (watching)
            watch_link(d, &w);
        if (n == 0)
            continue;
        struct uffd_msg msgs[16];
        ssize_t got = read(d->uffd, msgs, sizeof msgs);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            break;
        }
        for (ssize_t i = 0; i < got / (ssize_t)sizeof msgs[0]; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                handle_fault(d, msgs[i].arg.pagefault.address, msgs[i].arg.pagefault.flags);
    }
    return NULL;
}

int lm_pc_dst_listen(lm_pc_dst *d, lm_chan *rp, bool blocktime, lm_error *err)
{
    int ret = lm_pc_dst_prepare(d, blocktime, err);
    if (ret < 0)
        return ret;
    if (d->listening)
        return lm_error_set(err, -EPROTO, "POSTCOPY_RUN received twice");
    lm_mem *mem = d->mem;
    bool minor = false;
    for (unsigned i = 0; i < mem->nblocks; i++)
        minor |= d->blk[i].kind == LM_PC_MINOR;
    int fd = uffd_open(minor ? UFFD_FEATURE_MINOR_SHMEM : 0, err);
    if (fd < 0)
        return lm_error_prefix(err, "postcopy");
    for (unsigned i = 0; i < mem->nblocks; i++) {
        lm_ram_block *b = &mem->blocks[i];
        /* Minor blocks take missing faults too: an owed page that was
         * never in the page cache (a hole) faults that way. */
        struct uffdio_register r = {
            .range = {(uintptr_t)b->base, b->len},
            .mode = UFFDIO_REGISTER_MODE_MISSING |
                    (d->blk[i].kind == LM_PC_MINOR ? UFFDIO_REGISTER_MODE_MINOR : 0)};
        if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) {
            ret = lm_error_set(err, -errno,
                               "postcopy: registering RAM block '%s' (%s memory) "
                               "with userfaultfd: %s",
                               b->name, d->blk[i].kind == LM_PC_ANON ? "private" : "shared",
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
    pthread_mutex_lock(&d->lock);
    d->switched = true;
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_lock(&d->rp_lock);
    d->rp = rp;
    if (d->timeout_ms) {
        /* A request or PONG that cannot be written within the silence
         * bound fails (chan.c), rather than hold rp_lock forever. */
        struct timeval tv = {.tv_sec = (time_t)(d->timeout_ms / 1000),
                             .tv_usec = (suseconds_t)(d->timeout_ms % 1000) * 1000};
        if (rp)
            setsockopt(lm_chan_fd(rp), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (d->req)
            setsockopt(lm_chan_fd(d->req), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    pthread_mutex_unlock(&d->rp_lock);
    d->uffd = fd;
    d->quit_efd = efd;
    /* From here every loader places atomically (mem.h). */
    lm_place_set_atomic(d->place, &lm_pc_place_ops, d);
    ret = -pthread_create(&d->fault_thread, NULL, fault_thread_fn, d);
    if (ret < 0) {
        lm_place_reset(d->place);
        close(fd);
        close(efd);
        d->uffd = d->quit_efd = -1;
        return lm_error_set(err, ret, "postcopy: cannot start the fault thread");
    }
    d->fault_running = true;
    __atomic_store_n(&d->listening, true, __ATOMIC_RELEASE);
    return 0;
}

void lm_pc_dst_detach_rp(lm_pc_dst *d)
{
    pthread_mutex_lock(&d->rp_lock);
    d->rp = NULL;
    pthread_mutex_unlock(&d->rp_lock);
}

/* Teardown of a destination that still owes pages (paused, or freed in
 * postcopy): unregistering userfaultfd would let the next access to an
 * owed page read a fresh zero page (private memory) or the stale page
 * cache (shared memory), i.e. a guest silently corrupted.  Every block
 * that still has an owed page is made inaccessible (PROT_NONE) first,
 * while it is still registered, so there is no window: a thread blocked
 * on an owed page is woken by the unregistration, faults again and gets
 * SIGSEGV, and so does any later access to that block.  Nothing is ever
 * read from a page the source did not send.  (UFFD_FEATURE_SIGBUS would
 * need a userfaultfd open for as long as the host keeps the mapping,
 * which outlives the migration object.)  Other mappings of a shared
 * block (another process's) are the host's: they are not ours to fence.
 * Returns the number of blocks fenced. */
static unsigned fence_owed(lm_pc_dst *d)
{
    unsigned fenced = 0;
    for (unsigned i = 0; i < d->mem->nblocks; i++) {
        lm_ram_block *b = &d->mem->blocks[i];
        pthread_mutex_lock(&d->lock);
        bool owes = d->blk[i].owed && lm_bitmap_next_set(d->blk[i].owed, b->npages, 0) < b->npages;
        pthread_mutex_unlock(&d->lock);
        if (!owes)
            continue;
        if (mprotect(b->base, b->len, PROT_NONE) < 0) {
            /* Cannot happen for a mapping we registered; if it did, the
             * registration must stay so that owed pages never read as
             * something else: the descriptor is leaked on purpose. */
            fprintf(stderr,
                    "livemig: postcopy: cannot fence RAM block '%s' (%s): its "
                    "userfaultfd stays registered\n",
                    b->name, strerror(errno));
            d->fence_failed = true;
            continue;
        }
        fenced++;
    }
    return fenced;
}

void lm_pc_dst_end(lm_pc_dst *d)
{
    if (d->fault_running) {
        uint64_t one = 1;
        if (write(d->quit_efd, &one, sizeof one) != sizeof one) {
            /* an eventfd write of 1 cannot fail short of a bug */
        }
        pthread_join(d->fault_thread, NULL);
        d->fault_running = false;
    }
    lm_pc_dst_detach_rp(d);
    if (d->uffd >= 0)
        d->fenced_blocks = fence_owed(d);
    if (d->uffd >= 0 && d->fence_failed) {
        d->uffd = -1; /* leaked: see fence_owed */
    } else if (d->uffd >= 0) {
        /* Unregistering keeps every placed page; closing wakes any thread
         * still blocked on a fault, which then retries normally (or, in a
         * fenced block, gets SIGSEGV). */
        for (unsigned i = 0; i < d->mem->nblocks; i++) {
            struct uffdio_range r = {(uintptr_t)d->mem->blocks[i].base, d->mem->blocks[i].len};
            ioctl(d->uffd, UFFDIO_UNREGISTER, &r);
        }
        close(d->uffd);
        d->uffd = -1;
    }
    if (d->quit_efd >= 0) {
        close(d->quit_efd);
        d->quit_efd = -1;
    }
    lm_place_reset(d->place);
    __atomic_store_n(&d->listening, false, __ATOMIC_RELEASE);
    d->prepared = false;
}
