/*
 * wp.c - synchronous userfaultfd write-protection and its fault thread
 * "lm-wp-fault" (wp.h has the interface and the threads).
 *
 * The fault thread polls the userfaultfd and an eventfd (stop).  It reads
 * up to FAULT_BATCH messages at once and, for each write fault, calls the
 * owner's callback, then un-protects the page (UFFDIO_WRITEPROTECT without
 * DONTWAKE, which also wakes the blocked writer) unless the callback said
 * that a send in flight will do it.  A fault the kernel has already let
 * through (the page was un-protected between the fault and our read) is
 * harmless: un-protecting it again is a no-op that wakes nobody.
 *
 * Ownership: lm_wp owns its userfaultfd, its eventfd and the thread; the
 * ranges are the host's memory, borrowed.
 */
#include "mem/wp.h"
#include "mem/pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_RANGES 64
#define FAULT_BATCH 64
#define PAGE 4096u

struct wp_range {
    char name[64];
    uintptr_t base;
    uint64_t len;
    bool anon;
    bool registered;
};

struct lm_wp {
    int uffd;
    int stop_efd;
    struct wp_range ranges[MAX_RANGES];
    unsigned nranges;
    lm_wp_fault_fn fn;
    void *opaque;
    pthread_t thread;
    bool thread_running;
    bool protected_;
    uint64_t faults; /* relaxed atomic */
    int err_code;    /* fault thread's first error (atomic, then err_msg) */
    char err_msg[LM_ERROR_MSG_MAX];
};

/* A userfaultfd that reports kernel-mode faults too (a host that read()s
 * into guest memory must block, not get EFAULT); without the privilege for
 * that (vm.unprivileged_userfaultfd=0), user-mode faults only, which is
 * what a guest's own writes are. */
static int uffd_open(lm_error *err)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd >= 0)
        return fd;
    int e = errno;
    if (e == ENOSYS)
        return lm_error_set(err, -ENOSYS,
                            "background-snapshot: userfaultfd is not supported by "
                            "this kernel (CONFIG_USERFAULTFD)");
    return lm_error_set(err, -e, "background-snapshot: userfaultfd: %s", strerror(e));
}

int lm_wp_new(lm_wp **out, lm_error *err)
{
    *out = NULL;
    lm_wp *w = calloc(1, sizeof *w);
    if (!w)
        return lm_error_set(err, -ENOMEM, "out of memory");
    w->uffd = w->stop_efd = -1;
    int ret = uffd_open(err);
    if (ret < 0)
        goto fail;
    w->uffd = ret;
    /* Ask what the kernel has first, to name what is missing. */
    uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                    LM_UFFD_FEATURE_WP_UNPOPULATED;
    struct uffdio_api api = {.api = UFFD_API, .features = want};
    if (ioctl(w->uffd, UFFDIO_API, &api) < 0) {
        int e = errno;
        uint64_t have = 0;
        int probe = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        struct uffdio_api a = {.api = UFFD_API};
        if (probe >= 0 && ioctl(probe, UFFDIO_API, &a) == 0)
            have = a.features;
        if (probe >= 0)
            close(probe);
        const char *miss = !(have & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
                               ? "UFFD_FEATURE_PAGEFAULT_FLAG_WP (write-protect, Linux >= 5.7)"
                           : !(have & LM_UFFD_FEATURE_WP_UNPOPULATED)
                               ? "UFFD_FEATURE_WP_UNPOPULATED (Linux >= 6.4)"
                           : !(have & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
                               ? "UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux >= 5.19)"
                               : NULL;
        ret =
            miss ? lm_error_set(err, -EOPNOTSUPP, "background-snapshot: userfaultfd lacks %s", miss)
                 : lm_error_set(err, -e, "background-snapshot: UFFDIO_API: %s", strerror(e));
        goto fail;
    }
    w->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stop_efd < 0) {
        ret = lm_error_set(err, -errno, "eventfd: %s", strerror(errno));
        goto fail;
    }
    *out = w;
    return 0;
fail:
    lm_wp_free(w);
    return ret;
}

/* Reads /proc/self/maps: is every mapping over [base, base+len) anonymous
 * (inode 0, no file)?  1 yes, 0 no (shared memory or a file), < 0 unknown. */
static int range_is_anon(uintptr_t base, uint64_t len, bool *hugetlb)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return -errno;
    char line[512];
    int anon = 1;
    *hugetlb = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, ino;
        char perms[8], dev[16];
        unsigned long long off;
        int pos = 0;
        if (sscanf(line, "%lx-%lx %7s %llx %15s %lu %n", &lo, &hi, perms, &off, dev, &ino, &pos) <
            6)
            continue;
        if (hi <= base || lo >= base + len)
            continue;
        if (ino != 0 || perms[3] == 's')
            anon = 0;
        if (strstr(line + pos, "/anon_hugepage") || strstr(line + pos, "hugetlb"))
            *hugetlb = true;
    }
    fclose(f);
    return anon;
}

int lm_wp_add_range(lm_wp *w, const char *name, void *base, uint64_t len, uint32_t page_size,
                    lm_error *err)
{
    if (w->protected_)
        return lm_error_set(err, -EBUSY, "background-snapshot: ranges are fixed once started");
    if (w->nranges >= MAX_RANGES)
        return lm_error_set(err, -ENOSPC, "background-snapshot: at most %d RAM blocks", MAX_RANGES);
    /* Copying and un-protecting work page by page, in 4 KiB units: a huge
     * page would be copied and released whole, which this engine does not
     * do (QEMU refuses such blocks too: ram_write_tracking_compatible). */
    bool hugetlb = false;
    int anon = range_is_anon((uintptr_t)base, len, &hugetlb);
    if (page_size != PAGE || hugetlb)
        return lm_error_set(err, -EOPNOTSUPP,
                            "background-snapshot: RAM block '%s' uses %" PRIu32
                            "-byte pages (hugetlbfs); only 4 KiB pages can be "
                            "write-protected page by page",
                            name, hugetlb ? 2u << 20 : page_size);
    struct wp_range *r = &w->ranges[w->nranges];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->base = (uintptr_t)base;
    r->len = len;
    r->anon = anon == 1; /* unknown: read every page, like shared memory */
    w->nranges++;
    return 0;
}

bool lm_wp_range_anon(const lm_wp *w, unsigned i)
{
    return i < w->nranges && w->ranges[i].anon;
}

/* The first error wins; err_code is -1 while its message is written. */
static void set_thread_error(lm_wp *w, int code, const char *what, uint64_t addr)
{
    int none = 0;
    if (__atomic_compare_exchange_n(&w->err_code, &none, -1, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        if (addr)
            snprintf(w->err_msg, sizeof w->err_msg, "%s 0x%llx: %s", what, (unsigned long long)addr,
                     strerror(-code));
        else
            snprintf(w->err_msg, sizeof w->err_msg, "%s: %s", what, strerror(-code));
        __atomic_store_n(&w->err_code, code, __ATOMIC_RELEASE);
    }
}

static int writeprotect(lm_wp *w, uintptr_t start, uint64_t len, bool wp)
{
    struct uffdio_writeprotect p = {.range = {.start = start, .len = len},
                                    .mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    for (;;) {
        if (ioctl(w->uffd, UFFDIO_WRITEPROTECT, &p) == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR) /* EAGAIN: the mm is changing */
            return -errno;
    }
}

int lm_wp_unprotect(lm_wp *w, unsigned i, uint64_t first, uint64_t count, lm_error *err)
{
    struct wp_range *r = &w->ranges[i];
    int rc = writeprotect(w, r->base + first * PAGE, count * PAGE, false);
    if (rc < 0)
        return lm_error_set(err, rc, "background-snapshot: un-protecting pages of '%s': %s",
                            r->name, strerror(-rc));
    return 0;
}

static void handle_fault(lm_wp *w, uint64_t addr)
{
    addr &= ~(uint64_t)(PAGE - 1);
    lm_wp_action act = LM_WP_UNPROTECT;
    uint64_t start = addr, len = PAGE;
    for (unsigned i = 0; i < w->nranges; i++) {
        struct wp_range *r = &w->ranges[i];
        if (addr >= r->base && addr < r->base + r->len) {
            uint64_t page = (addr - r->base) / PAGE, first = page, count = 1;
            act = w->fn(w->opaque, i, page, &first, &count);
            if (first <= page && page < first + count && (first + count) * PAGE <= r->len) {
                start = r->base + first * PAGE;
                len = count * PAGE;
            }
            break;
        }
    }
    __atomic_fetch_add(&w->faults, 1, __ATOMIC_RELAXED);
    if (act == LM_WP_UNPROTECT) {
        int rc = writeprotect(w, start, len, false);
        if (rc < 0)
            set_thread_error(w, rc, "un-protecting the page at", addr);
    }
}

static void *fault_thread(void *arg)
{
    lm_wp *w = arg;
    pthread_setname_np(pthread_self(), "lm-wp-fault");
    struct uffd_msg msgs[FAULT_BATCH];
    for (;;) {
        struct pollfd p[2] = {{.fd = w->uffd, .events = POLLIN},
                              {.fd = w->stop_efd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            set_thread_error(w, -errno, "poll of the userfaultfd", 0);
            break;
        }
        if (p[1].revents)
            break;
        ssize_t n = read(w->uffd, msgs, sizeof msgs);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            set_thread_error(w, -errno, "reading the userfaultfd", 0);
            break;
        }
        for (size_t k = 0; k < (size_t)n / sizeof msgs[0]; k++)
            if (msgs[k].event == UFFD_EVENT_PAGEFAULT)
                handle_fault(w, msgs[k].arg.pagefault.address);
    }
    return NULL;
}

int lm_wp_start(lm_wp *w, lm_wp_fault_fn fn, void *opaque, lm_error *err)
{
    w->fn = fn;
    w->opaque = opaque;
    for (unsigned i = 0; i < w->nranges; i++) {
        struct wp_range *r = &w->ranges[i];
        struct uffdio_register reg = {.range = {.start = r->base, .len = r->len},
                                      .mode = UFFDIO_REGISTER_MODE_WP};
        if (ioctl(w->uffd, UFFDIO_REGISTER, &reg) < 0)
            return lm_error_set(err, -errno,
                                "background-snapshot: cannot write-protect RAM block '%s' "
                                "(UFFDIO_REGISTER mode WP: %s)",
                                r->name, strerror(errno));
        r->registered = true;
        if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT)))
            return lm_error_set(err, -EOPNOTSUPP,
                                "background-snapshot: RAM block '%s': this memory kind offers "
                                "no UFFDIO_WRITEPROTECT",
                                r->name);
    }
    w->protected_ = true;
    for (unsigned i = 0; i < w->nranges; i++) {
        struct wp_range *r = &w->ranges[i];
        int rc = writeprotect(w, r->base, r->len, true);
        if (rc < 0)
            return lm_error_set(err, rc, "background-snapshot: write-protecting '%s': %s", r->name,
                                strerror(-rc));
    }
    int rc = -pthread_create(&w->thread, NULL, fault_thread, w);
    if (rc < 0)
        return lm_error_set(err, rc, "cannot start the write-fault thread");
    w->thread_running = true;
    return 0;
}

int lm_wp_error(lm_wp *w, lm_error *err)
{
    int code = __atomic_load_n(&w->err_code, __ATOMIC_ACQUIRE);
    if (code == 0 || code == -1)
        return 0;
    return lm_error_set(err, code, "background-snapshot: write-fault thread: %s", w->err_msg);
}

uint64_t lm_wp_faults(const lm_wp *w)
{
    return __atomic_load_n(&w->faults, __ATOMIC_RELAXED);
}

void lm_wp_stop(lm_wp *w)
{
    if (!w)
        return;
    /* Un-protect first: every blocked writer wakes, and no new fault can
     * come; then the thread drains what it read and ends. */
    if (w->protected_)
        for (unsigned i = 0; i < w->nranges; i++)
            writeprotect(w, w->ranges[i].base, w->ranges[i].len, false);
    w->protected_ = false;
    if (w->thread_running) {
        uint64_t one = 1;
        if (write(w->stop_efd, &one, sizeof one) != sizeof one) {
            /* an eventfd write of 1 cannot fail short of overflow */
        }
        pthread_join(w->thread, NULL);
        w->thread_running = false;
    }
    for (unsigned i = 0; i < w->nranges; i++) {
        struct wp_range *r = &w->ranges[i];
        if (!r->registered)
            continue;
        struct uffdio_range range = {.start = r->base, .len = r->len};
        ioctl(w->uffd, UFFDIO_UNREGISTER, &range); /* also wakes any writer left */
        r->registered = false;
    }
}

void lm_wp_free(lm_wp *w)
{
    if (!w)
        return;
    lm_wp_stop(w);
    if (w->uffd >= 0)
        close(w->uffd);
    if (w->stop_efd >= 0)
        close(w->stop_efd);
    free(w);
}
