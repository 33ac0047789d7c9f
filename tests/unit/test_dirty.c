/*
 * test_dirty.c - dirty tracking and memory probes (src/mem/dirty.h) on real
 * memory with a real userfaultfd.  Where uffd-wp async + PAGEMAP_SCAN is not
 * available the uffd tests are skipped, loudly, with the probe's reason.
 *
 * Threads: the race tests start one writer thread ("dirty-writer") that
 * writes the tracked memory while the test thread syncs.  They share a
 * struct race: `completed`, `in_sync`, `hold` and `stop` are atomics, page
 * contents are written and copied with relaxed atomics, the writer's log and
 * counters are read only after pthread_join.  The writer also serves the
 * userfaultfd of the trap page that holds a sync (see "race"), and closes it
 * when it returns, which releases a sync parked there.  The writer stops at
 * `stop`, which the test thread always reaches (no assertion between the
 * writer's start and its join), or at a full log, so no test can hang on it.
 * Probe tests fork children that are killed after a deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "mem/dirty.h"
#include "mem/pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PS 4096u
#define HPS (2u << 20)

static bool uffd_ok;
static lm_error uffd_why;

#define REQUIRE_UFFD()                                                                             \
    do {                                                                                           \
        if (!uffd_ok) {                                                                            \
            print_message("SKIPPED: uffd-wp async + PAGEMAP_SCAN unavailable: %s\n",               \
                          uffd_why.msg);                                                           \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------- helpers */

struct map {
    char *raw;
    size_t rawlen;
    char *p;
    size_t len;
};

/* Anonymous private memory, 2 MiB aligned; thp selects MADV_HUGEPAGE. */
/* Whether a read fault on untouched private memory maps the shared zero
 * page (PAGEMAP_SCAN's PFNZERO; and the huge zero page for THP).  Most
 * kernels do; this machine's VM kernel at times allocates a real zeroed
 * page instead, which is populated memory.  The expectations follow what
 * this kernel does: the scan must report exactly what is populated either
 * way, which is what these tests check. */
static bool read_maps_zero_page(void)
{
    static int known = -1;
    if (known >= 0)
        return known;
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    (void)*(volatile char *)p;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    struct lm_page_region r[1];
    struct lm_pm_scan_arg a = {.size = sizeof a, .start = (uintptr_t)p,
                               .end = (uintptr_t)p + 4096, .vec = (uintptr_t)r, .vec_len = 1,
                               .category_anyof_mask = LM_PAGE_IS_PFNZERO,
                               .return_mask = LM_PAGE_IS_PFNZERO};
    long n = fd >= 0 ? ioctl(fd, LM_PAGEMAP_SCAN, &a) : -1;
    if (fd >= 0)
        close(fd);
    munmap(p, 4096);
    known = n == 1;
    if (!known)
        print_message("  this kernel populates a page on a read fault (no shared zero page)\n");
    return known;
}

static struct map map_new(size_t len, bool thp)
{
    struct map m = {.rawlen = len + HPS, .len = len};
    m.raw = mmap(NULL, m.rawlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m.raw != MAP_FAILED);
    m.p = (char *)(((uintptr_t)m.raw + HPS - 1) & ~(uintptr_t)(HPS - 1));
    assert_int_equal(madvise(m.p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
    return m;
}

static void map_free(struct map *m)
{
    munmap(m->raw, m->rawlen);
}

static uint64_t *bm_new(uint64_t npages)
{
    uint64_t *b = calloc((npages + 63) / 64, sizeof *b);
    assert_non_null(b);
    return b;
}

static bool bm_test(const uint64_t *b, uint64_t i)
{
    return (b[i / 64] >> (i % 64)) & 1;
}

static void bm_set(uint64_t *b, uint64_t i)
{
    b[i / 64] |= 1ull << (i % 64);
}

static uint64_t bm_count(const uint64_t *b, uint64_t npages)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < npages; i++)
        n += bm_test(b, i);
    return n;
}

/* Asserts that got == want over npages bits, naming the first difference. */
static void bm_expect(const uint64_t *got, const uint64_t *want, uint64_t npages, const char *what)
{
    uint64_t bad = 0, first = UINT64_MAX;
    for (uint64_t i = 0; i < npages; i++) {
        if (bm_test(got, i) != bm_test(want, i)) {
            if (first == UINT64_MAX)
                first = i;
            bad++;
        }
    }
    if (bad)
        print_message("%s: %llu pages differ, first page %llu (got %d want %d)\n", what,
                      (unsigned long long)bad, (unsigned long long)first, bm_test(got, first),
                      bm_test(want, first));
    assert_int_equal(bad, 0);
}

static void touch(char *p, uint64_t page, char v)
{
    *(volatile char *)(p + page * PS + 17) = v;
}

static char peek(const char *p, uint64_t page)
{
    return *(const volatile char *)(p + page * PS + 100);
}

/* AnonHugePages (kB) of the mapping that contains addr, from smaps. */
static long thp_kb(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    bool in = false;
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)addr >= s && (uintptr_t)addr < e;
            continue;
        }
        if (in && !strncmp(line, "AnonHugePages:", 14)) {
            kb = atol(line + 14);
            break;
        }
    }
    fclose(f);
    return kb;
}

static lm_dirty *uffd_tracker(char *p, uint64_t len)
{
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, p, len, PS, &err), 0);
    return d;
}

static uint64_t sync1(lm_dirty *d, uint64_t *bm)
{
    lm_error err = {0};
    uint64_t newly = UINT64_MAX;
    uint64_t *const bms[1] = {bm};
    int rc = lm_dirty_sync(d, bms, &newly, &err);
    if (rc)
        print_message("sync: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return newly;
}

static int group_setup(void **state)
{
    (void)state;
    if (lm_dirty_uffd_probe(&uffd_why) == 0)
        uffd_ok = true;
    else
        print_message("NOTE: uffd tests will be skipped: %s\n", uffd_why.msg);
    return 0;
}

/* -------------------------------------------------------------- probe */

static void test_probe(void **state)
{
    (void)state;
    lm_error err = {0};
    int rc = lm_dirty_uffd_probe(&err);
    /* success and an empty message go together, and so do failure and a reason */
    assert_int_equal(rc == 0, err.msg[0] == '\0');
    assert_int_equal(rc == 0, uffd_ok);
    REQUIRE_UFFD();
}

/* Runs fn in a child (bounded to 20 s); returns its exit status and copies
 * what it wrote to the pipe into msg. */
static int run_child(void (*fn)(int wfd), char *msg, size_t msglen)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        alarm(20);
        fn(pfd[1]);
        _exit(99);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t n;
    while (got + 1 < msglen && (n = read(pfd[0], msg + got, msglen - 1 - got)) > 0)
        got += (size_t)n;
    msg[got] = '\0';
    close(pfd[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void drop_privileges(int wfd)
{
    if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
        dprintf(wfd, "cannot drop privileges: %s", strerror(errno));
        _exit(2);
    }
    /* A uid change makes us non-dumpable, which makes /proc/self/ root's. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
}

static void child_probe(int wfd)
{
    lm_error err = {0};
    int rc = lm_dirty_uffd_probe(&err);
    dprintf(wfd, "%s", err.msg);
    _exit(rc == 0 ? 0 : 1);
}

static void child_unprivileged_probe(int wfd)
{
    drop_privileges(wfd);
    child_probe(wfd);
}

/* Works without privileges thanks to UFFD_USER_MODE_ONLY, even with
 * vm.unprivileged_userfaultfd=0. */
static void test_probe_unprivileged(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    if (geteuid() != 0) {
        print_message("SKIPPED: needs root to drop privileges (already unprivileged: the "
                      "probe test covers it)\n");
        skip();
    }
    char msg[LM_ERROR_MSG_MAX + 64];
    int st = run_child(child_unprivileged_probe, msg, sizeof msg);
    if (st)
        print_message("unprivileged probe: %s\n", msg);
    assert_int_equal(st, 0);
}

#if defined(__x86_64__)
/* Makes syscall nr (and, for ioctl, only request `cmd`) fail with `e`. */
static int seccomp_refuse(long nr, uint32_t cmd, int e)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, cmd, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, cmd ? SECCOMP_RET_ALLOW : SECCOMP_RET_ERRNO | (uint32_t)e),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (uint32_t)e),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static void child_no_userfaultfd(int wfd)
{
    if (geteuid() == 0)
        drop_privileges(wfd); /* else root would get in through /dev/userfaultfd */
    if (seccomp_refuse(SYS_userfaultfd, 0, EPERM)) {
        dprintf(wfd, "seccomp: %s", strerror(errno));
        _exit(2);
    }
    child_probe(wfd);
}

static void child_no_pagemap_scan(int wfd)
{
    if (seccomp_refuse(SYS_ioctl, (uint32_t)LM_PAGEMAP_SCAN, ENOTTY)) {
        dprintf(wfd, "seccomp: %s", strerror(errno));
        _exit(2);
    }
    child_probe(wfd);
}

/* The probe names the missing piece.  The missing pieces are simulated with
 * seccomp, which is also how containers refuse userfaultfd. */
static void test_probe_names_missing_piece(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    char msg[LM_ERROR_MSG_MAX + 64];
    if (geteuid() != 0 && access("/dev/userfaultfd", R_OK | W_OK) == 0) {
        print_message("SKIPPED: /dev/userfaultfd is open to us, so a refused syscall is not "
                      "an error\n");
        skip();
    }
    assert_int_equal(run_child(child_no_userfaultfd, msg, sizeof msg), 1);
    print_message("  no userfaultfd: %s\n", msg);
    assert_non_null(strstr(msg, "userfaultfd: Operation not permitted"));
    assert_non_null(strstr(msg, "vm.unprivileged_userfaultfd=0"));

    assert_int_equal(run_child(child_no_pagemap_scan, msg, sizeof msg), 1);
    print_message("  no PAGEMAP_SCAN: %s\n", msg);
    assert_string_equal(msg, "PAGEMAP_SCAN not supported (Linux >= 6.7 needed)");
}
#endif

/* ------------------------------------------------------- uffd backend */

static void test_uffd_clean_sync(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 4096;
    struct map m = map_new(np * PS, false);
    for (uint64_t i = 0; i < np; i += 2)
        touch(m.p, i, 1); /* half populated before start */
    lm_dirty *d = uffd_tracker(m.p, np * PS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);
    uint64_t *bm = bm_new(np);
    assert_int_equal(sync1(d, bm), 0);
    assert_int_equal(bm_count(bm, np), 0);
    /* reads, of populated pages and of never-populated ones, are not writes */
    long sum = 0;
    for (uint64_t i = 0; i < np; i++)
        sum += peek(m.p, i);
    assert_int_equal(sum, 0); /* offset 100 was never written */
    assert_int_equal(sync1(d, bm), 0);
    assert_int_equal(bm_count(bm, np), 0);
    lm_dirty_free(d);
    free(bm);
    map_free(&m);
}

/* Writes after start are found exactly, whether the page was populated
 * before start or never; pages written only before start are not. */
static void test_uffd_exact(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 4096;
    struct map m = map_new(np * PS, false);
    uint64_t *pre = bm_new(np), *want = bm_new(np), *bm = bm_new(np);
    for (uint64_t i = 0; i < np; i += 7) {
        touch(m.p, i, 1);
        bm_set(pre, i);
    }
    lm_dirty *d = uffd_tracker(m.p, np * PS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);

    /* first and last page, both sides of word boundaries, a run across
     * words, pages populated before start (multiples of 7) and not */
    const uint64_t singles[] = {0, 63, 64, 65, 127, 700, 701, 1234, 2048, 3000, 4094, 4095};
    for (size_t k = 0; k < sizeof singles / sizeof singles[0]; k++)
        bm_set(want, singles[k]);
    for (uint64_t i = 100; i < 300; i++)
        bm_set(want, i);
    uint64_t nwant = bm_count(want, np);
    for (uint64_t i = 0; i < np; i++)
        if (bm_test(want, i))
            touch(m.p, i, 2);
    for (uint64_t i = 1000; i < 1100; i++) /* reads of never-populated pages */
        (void)peek(m.p, i * 3 % np);
    /* OR semantics: a bit already set stays set and is not counted */
    bm_set(bm, 5);
    uint64_t newly = sync1(d, bm);
    assert_int_equal(newly, nwant);
    bm_set(want, 5);
    bm_expect(bm, want, np, "first sync");
    assert_int_equal(bm_count(pre, np) > 0, 1);

    /* re-armed: nothing new */
    uint64_t *bm2 = bm_new(np);
    assert_int_equal(sync1(d, bm2), 0);
    assert_int_equal(bm_count(bm2, np), 0);

    /* new writes, half of them on pages already in bm */
    uint64_t *want2 = bm_new(np);
    for (uint64_t i = 200; i < 400; i += 3) {
        touch(m.p, i, 3);
        bm_set(want2, i);
    }
    uint64_t expect_newly = 0;
    for (uint64_t i = 0; i < np; i++)
        expect_newly += bm_test(want2, i) && !bm_test(bm, i);
    assert_int_equal(sync1(d, bm), expect_newly);
    for (uint64_t i = 0; i < np; i++)
        if (bm_test(want2, i))
            bm_set(want, i);
    bm_expect(bm, want, np, "second sync into the same bitmap");

    /* a third round into a clean bitmap sees only its own writes */
    memset(want2, 0, np / 8);
    for (uint64_t i = 3; i < np; i += 611) {
        touch(m.p, i, 4);
        bm_set(want2, i);
    }
    memset(bm2, 0, np / 8);
    assert_int_equal(sync1(d, bm2), bm_count(want2, np));
    bm_expect(bm2, want2, np, "third sync");

    lm_dirty_free(d);
    free(pre);
    free(want);
    free(want2);
    free(bm);
    free(bm2);
    map_free(&m);
}

/* A page dropped with MADV_DONTNEED changed (to zero): it must be sent
 * again.  4 KiB pages and a whole PMD-mapped THP (probes/wp_holes.c). */
static void test_uffd_discard_is_a_write(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 1024;
    struct map m = map_new(np * PS, false);
    memset(m.p, 1, np * PS);
    lm_dirty *d = uffd_tracker(m.p, np * PS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);
    assert_int_equal(madvise(m.p + 10 * PS, 3 * PS, MADV_DONTNEED), 0);
    uint64_t *bm = bm_new(np), *want = bm_new(np);
    for (uint64_t i = 10; i < 13; i++)
        bm_set(want, i);
    assert_int_equal(sync1(d, bm), 3);
    bm_expect(bm, want, np, "4K discard");
    lm_dirty_free(d);
    map_free(&m);

    struct map h = map_new(2 * HPS, true);
    memset(h.p, 1, 2 * HPS);
    bool thp = thp_kb(h.p) > 0;
    d = uffd_tracker(h.p, 2 * HPS);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    assert_int_equal(madvise(h.p + HPS, HPS, MADV_DONTNEED), 0);
    memset(bm, 0, np / 8);
    memset(want, 0, np / 8);
    for (uint64_t i = 512; i < 1024; i++)
        bm_set(want, i);
    assert_int_equal(sync1(d, bm), 512);
    bm_expect(bm, want, np, thp ? "THP discard" : "discard (no THP here)");
    lm_dirty_free(d);
    map_free(&h);
    free(bm);
    free(want);
}

/* A write by the kernel on our behalf (read() into a tracked page) is a
 * write: user-mode-only userfaultfd must not hide it. */
static void test_uffd_kernel_write(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 64;
    struct map m = map_new(np * PS, false);
    touch(m.p, 3, 1);
    lm_dirty *d = uffd_tracker(m.p, np * PS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char buf[100];
    memset(buf, 0x5a, sizeof buf);
    assert_int_equal(write(pfd[1], buf, sizeof buf), sizeof buf);
    assert_int_equal(read(pfd[0], m.p + 3 * PS + 8, 50), 50);  /* populated page */
    assert_int_equal(read(pfd[0], m.p + 40 * PS + 8, 50), 50); /* never populated */
    close(pfd[0]);
    close(pfd[1]);
    uint64_t *bm = bm_new(np), *want = bm_new(np);
    bm_set(want, 3);
    bm_set(want, 40);
    assert_int_equal(sync1(d, bm), 2);
    bm_expect(bm, want, np, "read() into tracked pages");
    assert_int_equal((unsigned char)m.p[40 * PS + 8], 0x5a);
    lm_dirty_free(d);
    free(bm);
    free(want);
    map_free(&m);
}

static void test_uffd_thp(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 4 * HPS / PS;
    struct map m = map_new(4 * HPS, true);
    memset(m.p, 1, 4 * HPS);
    long kb = thp_kb(m.p);
    if (kb <= 0) {
        print_message("SKIPPED: no transparent huge pages here (AnonHugePages=%ld)\n", kb);
        map_free(&m);
        skip();
    }
    lm_dirty *d = uffd_tracker(m.p, 4 * HPS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);
    assert_true(thp_kb(m.p) > 0); /* protecting does not split */
    uint64_t *bm = bm_new(np), *want = bm_new(np);
    const uint64_t pages[] = {5, 512, 1023, 1536 + 100, 1536 + 101};
    for (size_t k = 0; k < sizeof pages / sizeof pages[0]; k++) {
        touch(m.p, pages[k], 2);
        bm_set(want, pages[k]);
    }
    assert_int_equal(sync1(d, bm), 5);
    bm_expect(bm, want, np, "THP writes");
    /* huge page 2 was never written: still a THP; the written ones split */
    print_message("  AnonHugePages %ld kB before, %ld kB after writes\n", kb, thp_kb(m.p));
    memset(bm, 0, np / 8);
    assert_int_equal(sync1(d, bm), 0);
    touch(m.p, 1024 + 7, 3); /* first write into huge page 2 */
    memset(want, 0, np / 8);
    bm_set(want, 1024 + 7);
    assert_int_equal(sync1(d, bm), 1);
    bm_expect(bm, want, np, "THP second round");
    lm_dirty_free(d);
    map_free(&m);

    /* THP-eligible but never populated before start */
    struct map u = map_new(4 * HPS, true);
    d = uffd_tracker(u.p, 4 * HPS);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    memset(bm, 0, np / 8);
    memset(want, 0, np / 8);
    for (uint64_t i = 1; i < np; i += 300) {
        touch(u.p, i, 9);
        bm_set(want, i);
    }
    assert_int_equal(sync1(d, bm), bm_count(want, np));
    bm_expect(bm, want, np, "THP-eligible, unpopulated");
    lm_dirty_free(d);
    map_free(&u);
    free(bm);
    free(want);
}

static void test_uffd_ranges(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    struct map a = map_new(1 << 20, false), b = map_new(2 << 20, false), c = map_new(4 << 20, true),
               outside = map_new(1 << 20, false);
    memset(c.p, 1, 4 << 20);
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, a.p, 1 << 20, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, b.p, 2 << 20, 16384, &err), 0); /* 16 KiB pages */
    assert_int_equal(lm_dirty_add_range(d, c.p, 4 << 20, PS, &err), 0);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    uint64_t na = 256, nb = 128, nc = 1024;
    uint64_t *ba = bm_new(na), *bb = bm_new(nb), *bc = bm_new(nc);
    uint64_t *wa = bm_new(na), *wb = bm_new(nb), *wc = bm_new(nc);
    touch(a.p, 0, 1), bm_set(wa, 0);
    touch(a.p, 255, 1), bm_set(wa, 255);
    touch(b.p, 4, 1), touch(b.p, 7, 1), bm_set(wb, 1); /* both in 16 KiB page 1 */
    touch(b.p, 511, 1), bm_set(wb, 127);
    touch(c.p, 600, 1), bm_set(wc, 600);
    memset(outside.p, 1, 1 << 20);
    uint64_t *const bms[3] = {ba, bb, bc};
    uint64_t newly = 0;
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(newly, 2 + 2 + 1);
    bm_expect(ba, wa, na, "range 0");
    bm_expect(bb, wb, nb, "range 1 (16 KiB pages)");
    bm_expect(bc, wc, nc, "range 2 (THP)");
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(newly, 0);
    lm_dirty_free(d);
    map_free(&a);
    map_free(&b);
    map_free(&c);
    map_free(&outside);
    free(ba), free(bb), free(bc), free(wa), free(wb), free(wc);
}

/* More regions than the scan vector holds (16 K for sync, 4 K for the
 * populated scan): the walk_end loop must stitch the calls exactly. */
static void test_uffd_many_regions(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 40960; /* 160 MiB */
    struct map m = map_new(np * PS, false);
    uint64_t *want = bm_new(np), *bm = bm_new(np);
    for (uint64_t i = 1; i < np; i += 2) {
        touch(m.p, i, 1);
        bm_set(want, i);
    }
    lm_error err = {0};
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    bm_expect(bm, want, np, "populated scan, 20480 regions");

    lm_dirty *d = uffd_tracker(m.p, np * PS);
    memset(bm, 0, np / 8);
    uint64_t *const pops[1] = {bm};
    assert_int_equal(lm_dirty_start_populated(d, pops, &err), 0);
    bm_expect(bm, want, np, "populated at start, 40960 regions");

    memset(bm, 0, np / 8);
    memset(want, 0, np / 8);
    for (uint64_t i = 0; i < np; i += 2) { /* the other half, never populated */
        touch(m.p, i, 2);
        bm_set(want, i);
    }
    assert_int_equal(sync1(d, bm), np / 2);
    bm_expect(bm, want, np, "sync, 20480 regions");
    memset(bm, 0, np / 8);
    assert_int_equal(sync1(d, bm), 0);
    lm_dirty_free(d);
    free(want);
    free(bm);
    map_free(&m);
}

/* lm_dirty_start_populated: the populated set at the instant of protection,
 * without the uffd-wp markers that fool a later lm_mem_populated_scan. */
static void test_uffd_start_populated(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 2048;
    struct map m = map_new(np * PS, false);
    uint64_t *want = bm_new(np), *pop = bm_new(np), *bm = bm_new(np);
    for (uint64_t i = 0; i < np; i += 5) {
        touch(m.p, i, 1);
        bm_set(want, i);
    }
    for (uint64_t i = 1; i < np; i += 5) {
        (void)peek(m.p, i); /* zero page: not populated */
        if (!read_maps_zero_page())
            bm_set(want, i); /* a real (zeroed) page: populated */
    }
    assert_int_equal(madvise(m.p + 100 * PS, 10 * PS, MADV_DONTNEED), 0);
    for (uint64_t i = 100; i < 110; i++)
        want[i / 64] &= ~(1ull << (i % 64));
    lm_error err = {0};
    lm_dirty *d = uffd_tracker(m.p, np * PS);
    uint64_t *const pops[1] = {pop};
    assert_int_equal(lm_dirty_start_populated(d, pops, &err), 0);
    bm_expect(pop, want, np, "populated at start");

    /* after start a plain populated scan sees the markers as swapped
     * pages: documented to over-report, never to under-report */
    memset(bm, 0, np / 8);
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    for (uint64_t i = 0; i < np; i++)
        if (bm_test(want, i))
            assert_true(bm_test(bm, i));
    print_message("  populated scan after start: %llu pages (exact: %llu)\n",
                  (unsigned long long)bm_count(bm, np), (unsigned long long)bm_count(want, np));

    /* tracking works the same as after lm_dirty_start */
    memset(bm, 0, np / 8);
    assert_int_equal(sync1(d, bm), 0);
    touch(m.p, 1, 2);   /* zero page before */
    touch(m.p, 5, 2);   /* populated */
    touch(m.p, 101, 2); /* discarded */
    touch(m.p, 2047, 2);
    assert_int_equal(sync1(d, bm), 4);
    assert_true(bm_test(bm, 1) && bm_test(bm, 5) && bm_test(bm, 101) && bm_test(bm, 2047));
    lm_dirty_free(d);
    map_free(&m);

    /* THP: a populated huge page, a huge zero page, an empty one */
    struct map h = map_new(3 * HPS, true);
    memset(h.p, 1, HPS);
    (void)peek(h.p, 512);
    memset(want, 0, np / 8);
    memset(pop, 0, np / 8);
    for (uint64_t i = 0; i < 512; i++)
        bm_set(want, i);
    for (uint64_t i = 512; !read_maps_zero_page() && i < 1024; i++)
        bm_set(want, i); /* the read populated a real huge page */
    d = uffd_tracker(h.p, 3 * HPS);
    assert_int_equal(lm_dirty_start_populated(d, pops, &err), 0);
    bm_expect(pop, want, 3 * 512, "THP populated at start");
    memset(bm, 0, np / 8);
    touch(h.p, 600, 1);
    assert_int_equal(sync1(d, bm), 1);
    assert_true(bm_test(bm, 600));
    lm_dirty_free(d);
    map_free(&h);
    free(want);
    free(pop);
    free(bm);
}

/* After stop the memory is no longer registered: protection bits are gone
 * (pagemap bit 57) and another tracker can take the range. */
static void test_uffd_stop(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 16;
    struct map m = map_new(np * PS, false);
    memset(m.p, 1, np * PS);
    lm_error err = {0};
    lm_dirty *d = uffd_tracker(m.p, np * PS), *d2 = uffd_tracker(m.p, np * PS);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    int pm = open("/proc/self/pagemap", O_RDONLY);
    assert_true(pm >= 0);
    uint64_t e = 0;
    assert_int_equal(pread(pm, &e, 8, (uintptr_t)m.p / PS * 8), 8);
    assert_true(e >> 57 & 1);
    assert_int_not_equal(lm_dirty_start(d2, &err), 0); /* EBUSY: d holds it */
    print_message("  second tracker while the first runs: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "UFFDIO_REGISTER"));
    lm_dirty_stop(d);
    assert_int_equal(pread(pm, &e, 8, (uintptr_t)m.p / PS * 8), 8);
    assert_false(e >> 57 & 1);
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_start(d2, &err), 0);
    /* stop then start again on the same tracker is allowed too */
    lm_dirty_stop(d2);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    uint64_t *bm = bm_new(np);
    touch(m.p, 9, 3);
    assert_int_equal(sync1(d, bm), 1);
    assert_true(bm_test(bm, 9));
    close(pm);
    lm_dirty_free(d);
    lm_dirty_free(d2);
    free(bm);
    map_free(&m);
}

/* -------------------------------------------------------------- race */

/*
 * The writer writes random pages while the test thread syncs in a loop.
 * `completed` is the number of syncs finished.  For each write the writer
 * logs the page and a = completed before the write, b = completed after it
 * (with a full fence between the store and that load).  Sync a had finished
 * before the write, and sync b+2 started after it, so the first scan of the
 * page after the write belongs to a sync in [a+1, b+2], and that sync must
 * report the page (or, if the write slipped in before a TLB flush, the sync
 * that re-protected it, also in the window).  The check is therefore: every
 * logged write is reported by some sync in its window.  Independently the
 * test thread keeps a shadow copy, refreshed from each sync's pages after
 * the sync (what a migration does), which must equal the memory at the end.
 *
 * Writes that land inside a sync are what the test is about, so they are not
 * left to the scheduler (on a loaded 2-CPU machine the two threads can take
 * turns on one CPU for thousands of syncs, and a thread inside the scan
 * ioctl is not preempted).  Every RACE_HOLD_EVERY-th sync is *held*: its
 * report bitmap is a trap page, registered with a userfaultfd in missing
 * mode, so the sync parks on its first report (after its PAGEMAP_SCAN read
 * and re-armed the range, before it returns).  The writer reads that fault,
 * makes RACE_HOLD_WRITES writes while the sync is parked, and only then
 * resolves it.  A sync that read the written state and re-protected in two
 * steps would lose those writes every time.  So that a held sync always has
 * something to report, the test thread first writes a *seed* page, one of
 * RACE_SEEDS pages the writer never touches; a seed is reported by its held
 * sync and by no other one, which also gives the checker a write it must
 * find lost when that sync's report is dropped.
 */
#define RACE_NP 2048
#define RACE_MAX_SYNCS 5000
#define RACE_LOG_CAP (1u << 21)
#define RACE_MIN_SYNCS 200
/* The writer writes only the first RACE_WORDS words of a page, so a sync's
 * copy stays cheap enough for TSan on a busy 2-CPU machine. */
#define RACE_WORDS 8
#define RACE_HOLD_EVERY 4
#define RACE_HOLD_WRITES 64
#define RACE_SEEDS 16
#define RACE_WRITER_NP (RACE_NP - RACE_SEEDS) /* the seeds are the last pages */
#define RACE_MAX_HOLDS (RACE_MAX_SYNCS / RACE_HOLD_EVERY + 1)

struct wlog {
    uint32_t page, a, b;
};

struct race {
    char *mem;
    uint64_t completed; /* atomic */
    int in_sync;        /* atomic: lm_dirty_sync is running */
    int hold;           /* atomic: a held sync is running, parked or about to */
    int stop;           /* atomic */
    int trap_uffd;      /* the writer's from its start: it closes it when it returns */
    struct wlog *log;
    size_t nlog;
    uint32_t last_a[RACE_NP], last_b[RACE_NP];
    uint64_t writes, racing, during;
    uint64_t holds_served, held_writes; /* the writer's; read after pthread_join */
    int trap_errno;                     /* the writer's: a trap ioctl that failed */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One step of the writer: a random page, sometimes a short run of pages
 * (multi-page regions), each write logged with its window. */
static void race_write(struct race *r, uint64_t *x, uint64_t *value)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    uint32_t first = (uint32_t)(*x % RACE_WRITER_NP);
    uint32_t run = (*x >> 40) % 8 == 0 ? 1 + (*x >> 50) % 16 : 1;
    for (uint32_t k = 0; k < run && first + k < RACE_WRITER_NP && r->nlog < RACE_LOG_CAP; k++) {
        uint32_t page = first + k, word = (uint32_t)(*x >> 20) % RACE_WORDS;
        uint32_t a = (uint32_t)__atomic_load_n(&r->completed, __ATOMIC_ACQUIRE);
        __atomic_store_n((uint64_t *)(r->mem + (size_t)page * PS) + word, ++*value,
                         __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t b = (uint32_t)__atomic_load_n(&r->completed, __ATOMIC_ACQUIRE);
        __atomic_fetch_add(&r->writes, 1, __ATOMIC_RELAXED);
        r->racing += a != b;
        r->during += __atomic_load_n(&r->in_sync, __ATOMIC_RELAXED);
        if (r->last_a[page] != a || r->last_b[page] != b) {
            r->log[r->nlog++] = (struct wlog){page, a, b};
            r->last_a[page] = a;
            r->last_b[page] = b;
        }
    }
}

/* If a held sync is parked on the trap page: writes while it is parked,
 * then lets it go on.  Returns false when there is no fault to serve. */
static bool race_serve_hold(struct race *r, uint64_t *x, uint64_t *value)
{
    struct uffd_msg msg;
    if (r->trap_uffd < 0 || read(r->trap_uffd, &msg, sizeof msg) != (ssize_t)sizeof msg)
        return false; /* EAGAIN: the sync has not reached its first report yet */
    if (msg.event != UFFD_EVENT_PAGEFAULT)
        return true;
    for (int i = 0; i < RACE_HOLD_WRITES; i++)
        race_write(r, x, value);
    r->held_writes += RACE_HOLD_WRITES;
    struct uffdio_zeropage zp = {
        .range = {.start = msg.arg.pagefault.address & ~(uint64_t)(PS - 1), .len = PS},
    };
    if (ioctl(r->trap_uffd, UFFDIO_ZEROPAGE, &zp)) {
        r->trap_errno = errno;
        close(r->trap_uffd); /* releases the parked sync: it faults in a plain page */
        r->trap_uffd = -1;
        return true;
    }
    r->holds_served++;
    return true;
}

static void *race_writer(void *arg)
{
    struct race *r = arg;
    pthread_setname_np(pthread_self(), "dirty-writer");
    uint64_t x = 0x9e3779b97f4a7c15ull, value = 0;
    for (uint32_t i = 0; i < RACE_NP; i++)
        r->last_a[i] = r->last_b[i] = UINT32_MAX;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) && r->nlog < RACE_LOG_CAP) {
        if (__atomic_load_n(&r->hold, __ATOMIC_ACQUIRE) && race_serve_hold(r, &x, &value))
            continue;
        race_write(r, &x, &value);
    }
    /* A full log ends us early: without the userfaultfd the test thread's
     * held syncs fault in plain pages instead of waiting for us. */
    if (r->trap_uffd >= 0)
        close(r->trap_uffd);
    r->trap_uffd = -1;
    return NULL;
}

/* The trap page: one page of anonymous memory registered in missing mode
 * with its own userfaultfd (user-mode faults only: the sync touches it from
 * user space).  Returns the fd. */
static int trap_new(void *page)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        print_message("trap userfaultfd: %s\n", strerror(errno));
    assert_true(fd >= 0);
    struct uffdio_api api = {.api = UFFD_API};
    assert_int_equal(ioctl(fd, UFFDIO_API, &api), 0);
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)page, .len = PS},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    assert_int_equal(ioctl(fd, UFFDIO_REGISTER, &reg), 0);
    assert_true(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE));
    return fd;
}

/* Counts logged writes that no sync in their window reported. */
static size_t race_violations(const struct race *r, uint64_t *const *reports, uint32_t nsyncs,
                              bool verbose)
{
    size_t bad = 0;
    for (size_t i = 0; i < r->nlog; i++) {
        const struct wlog *w = &r->log[i];
        uint32_t hi = w->b + 2 < nsyncs ? w->b + 2 : nsyncs;
        bool found = false;
        for (uint32_t k = w->a + 1; k <= hi && !found; k++)
            found = bm_test(reports[k], w->page);
        if (!found && verbose && bad < 5)
            print_message("LOST: page %u written between syncs %u and %u, not reported by "
                          "syncs %u..%u\n",
                          w->page, w->a, w->b, w->a + 1, hi);
        bad += !found;
    }
    return bad;
}

/* Nothing writes past the first RACE_WORDS words of a page after start, so
 * the first-pass copy still holds the rest (the final memcmp checks that). */
static void copy_page(char *dst, const char *src)
{
    for (size_t i = 0; i < RACE_WORDS; i++)
        ((uint64_t *)dst)[i] = __atomic_load_n((const uint64_t *)src + i, __ATOMIC_RELAXED);
}

static void race_run(bool thp)
{
    struct map m = map_new(RACE_NP * PS, thp);
    memset(m.p, 0, RACE_NP * PS); /* populated (THPs if thp) */
    if (thp)
        print_message("  AnonHugePages before start: %ld kB\n", thp_kb(m.p));
    struct race *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->mem = m.p;
    /* the writer's entries, then the seeds' */
    r->log = malloc((RACE_LOG_CAP + RACE_MAX_HOLDS) * sizeof *r->log);
    assert_non_null(r->log);
    struct wlog seeds[RACE_MAX_HOLDS];
    uint32_t seeded[RACE_MAX_HOLDS], nseeds = 0; /* seeded[i]: the held sync of seeds[i] */
    uint64_t **reports = calloc(RACE_MAX_SYNCS + 3, sizeof *reports);
    assert_non_null(reports);
    for (int k = 0; k < RACE_MAX_SYNCS + 3; k++)
        reports[k] = bm_new(RACE_NP);
    char *shadow = malloc(RACE_NP * PS);
    assert_non_null(shadow);
    uint64_t *trap = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(trap != MAP_FAILED);
    r->trap_uffd = trap_new(trap);

    lm_dirty *d = uffd_tracker(m.p, RACE_NP * PS);
    lm_error err = {0};
    assert_int_equal(lm_dirty_start(d, &err), 0);
    memcpy(shadow, m.p, RACE_NP * PS); /* the "first pass" */

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, race_writer, r), 0);
    /* No assertion from here to pthread_join: a failing one would leave the
     * writer running.  The first held sync waits for the writer to run. */
    double t0 = now_s();
    uint32_t k = 0;
    int trap_rearm_errno = 0;
    /* at least RACE_MIN_SYNCS syncs, more for about a second where syncs are
     * cheap; the time only adds rounds, it never decides the verdict */
    while (k < RACE_MAX_SYNCS && (k < RACE_MIN_SYNCS || now_s() - t0 < 1.0)) {
        k++;
        bool hold = k % RACE_HOLD_EVERY == 1;
        uint64_t *const bms[1] = {hold ? trap : reports[k]};
        if (hold) {
            uint32_t page = RACE_WRITER_NP + nseeds % RACE_SEEDS;
            __atomic_store_n((uint64_t *)(m.p + (size_t)page * PS), (1ull << 63) | k,
                             __ATOMIC_RELAXED);
            seeds[nseeds] = (struct wlog){page, k - 1, k - 1};
            seeded[nseeds++] = k;
            __atomic_store_n(&r->hold, 1, __ATOMIC_RELEASE);
        }
        uint64_t newly = 0;
        __atomic_store_n(&r->in_sync, 1, __ATOMIC_RELAXED);
        int rc = lm_dirty_sync(d, bms, &newly, &err);
        __atomic_store_n(&r->in_sync, 0, __ATOMIC_RELAXED);
        if (hold) {
            __atomic_store_n(&r->hold, 0, __ATOMIC_RELAXED);
            /* newly > 0: the sync set bits in the (zero) trap page, so it is
             * mapped and reading it cannot fault; then unmap it to re-arm */
            if (newly)
                memcpy(reports[k], trap, RACE_NP / 8);
            if (madvise(trap, PS, MADV_DONTNEED) && !trap_rearm_errno)
                trap_rearm_errno = errno;
        }
        if (rc)
            break;
        for (uint64_t p = 0; p < RACE_NP; p++)
            if (bm_test(reports[k], p))
                copy_page(shadow + p * PS, m.p + p * PS);
        __atomic_store_n(&r->completed, k, __ATOMIC_SEQ_CST);
    }
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (err.code)
        print_message("sync %u: %s\n", k, err.msg);
    assert_int_equal(err.code, 0);
    assert_int_equal(trap_rearm_errno, 0);
    /* final sync with the writer stopped: the downtime pass */
    k++;
    uint64_t *const fin[1] = {reports[k]};
    uint64_t newly = 0;
    assert_int_equal(lm_dirty_sync(d, fin, &newly, &err), 0);
    for (uint64_t p = 0; p < RACE_NP; p++)
        if (bm_test(reports[k], p))
            copy_page(shadow + p * PS, m.p + p * PS);
    uint64_t *const after[1] = {reports[k + 1]};
    assert_int_equal(lm_dirty_sync(d, after, &newly, &err), 0);
    assert_int_equal(newly, 0); /* nobody writes any more */

    size_t nwriter = r->nlog;
    memcpy(r->log + r->nlog, seeds, nseeds * sizeof *seeds);
    r->nlog += nseeds;
    uint64_t reported = 0;
    for (uint32_t i = 1; i <= k; i++)
        reported += bm_count(reports[i], RACE_NP);
    print_message("  %u syncs (%u held), %llu writes (%llu during a sync, %llu of them while one "
                  "was held; %llu across a sync's end), %zu logged, %llu pages reported\n",
                  k, nseeds, (unsigned long long)r->writes, (unsigned long long)r->during,
                  (unsigned long long)r->held_writes, (unsigned long long)r->racing, nwriter,
                  (unsigned long long)reported);
    /* the test did real work, and writes landed inside syncs */
    if (r->trap_errno)
        print_message("trap: UFFDIO_ZEROPAGE: %s\n", strerror(r->trap_errno));
    assert_int_equal(r->trap_errno, 0);
    assert_true(k >= RACE_MIN_SYNCS);
    assert_true(r->holds_served > 0);
    /* every held sync was served by the writer, unless its log filled up */
    assert_true(r->holds_served == nseeds || nwriter >= RACE_LOG_CAP);
    assert_int_equal(r->held_writes, r->holds_served * RACE_HOLD_WRITES);
    assert_true(r->writes >= r->held_writes);

    assert_int_equal(race_violations(r, reports, k, true), 0);
    size_t diff = 0;
    for (uint64_t p = 0; p < RACE_NP; p++)
        diff += memcmp(shadow + p * PS, m.p + p * PS, PS) != 0;
    if (diff)
        print_message("shadow copy differs from memory in %zu pages\n", diff);
    assert_int_equal(diff, 0);

    /* The checker can fail: drop the report of the busiest held sync and it
     * must find writes that nothing else reported, at least that sync's
     * seed. */
    uint32_t busiest = seeded[0];
    for (uint32_t i = 1; i < nseeds; i++)
        if (bm_count(reports[seeded[i]], RACE_NP) > bm_count(reports[busiest], RACE_NP))
            busiest = seeded[i];
    memset(reports[busiest], 0, RACE_NP / 8);
    size_t lost = race_violations(r, reports, k, false);
    print_message("  checker sensitivity: dropping sync %u's report loses %zu writes\n", busiest,
                  lost);
    assert_true(lost > 0);

    lm_dirty_free(d);
    for (int i = 0; i < RACE_MAX_SYNCS + 3; i++)
        free(reports[i]);
    free(reports);
    free(shadow);
    free(r->log);
    free(r);
    munmap(trap, PS);
    map_free(&m);
}

static void test_uffd_race(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    race_run(false);
}

static void test_uffd_race_thp(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    race_run(true);
}

/* --------------------------------------------------- other backends */

static void test_all(void **state)
{
    (void)state;
    struct map m = map_new(1 << 20, false);
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new(LM_DIRTY_ALL, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p, 100 * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p + 128 * PS, 64 * PS, PS, &err), 0);
    uint64_t *b0 = bm_new(100), *b1 = bm_new(64);
    uint64_t *const bms[2] = {b0, b1};
    uint64_t newly = 0;
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), -EINVAL); /* not started */
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p + 256 * PS, PS, PS, &err), -EBUSY);
    lm_error_clear(&err);
    b0[0] = 0xf0; /* already dirty pages are not "newly" dirty */
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(newly, 100 + 64 - 4);
    assert_int_equal(b0[0], ~0ull);
    assert_int_equal(b0[1], (1ull << 36) - 1); /* no bit past page 99 */
    assert_int_equal(b1[0], ~0ull);
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(newly, 0);
    lm_dirty_free(d);
    free(b0);
    free(b1);
    map_free(&m);
}

struct host_state {
    unsigned calls[2];
    uint64_t npages[2];
    uint64_t set0[4];
    int fail;
};

static int host_fn(void *opaque, unsigned index, uint64_t *bitmap, uint64_t npages, lm_error *err)
{
    struct host_state *h = opaque;
    assert_true(index < 2);
    h->calls[index]++;
    h->npages[index] = npages;
    for (uint64_t w = 0; w < (npages + 63) / 64; w++)
        assert_int_equal(bitmap[w], 0); /* handed over clean */
    if (h->fail)
        return lm_error_set(err, -EIO, "KVM_GET_DIRTY_LOG: slot gone");
    if (index == 0)
        for (int i = 0; i < 4; i++)
            if (h->set0[i] != UINT64_MAX)
                bitmap[h->set0[i] / 64] |= 1ull << (h->set0[i] % 64);
    return 0;
}

static void test_host(void **state)
{
    (void)state;
    struct map m = map_new(1 << 20, false);
    struct host_state h = {.set0 = {3, 70, 120 /* past npages: dropped */, UINT64_MAX}};
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new_host(NULL, &h, &d, &err), -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_new(LM_DIRTY_HOST, &d, &err), -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_new_host(host_fn, &h, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p, 100 * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p + 128 * PS, 64 * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    uint64_t *b0 = bm_new(100), *b1 = bm_new(64);
    uint64_t *const bms[2] = {b0, b1};
    uint64_t newly = 0;
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(h.calls[0], 1);
    assert_int_equal(h.calls[1], 1);
    assert_int_equal(h.npages[0], 100);
    assert_int_equal(h.npages[1], 64);
    assert_int_equal(newly, 2);
    assert_int_equal(b0[0], 1ull << 3);
    assert_int_equal(b0[1], 1ull << (70 - 64));
    assert_int_equal(b1[0], 0);
    h.set0[1] = 5; /* 3 again (not new) and 5 (new) */
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), 0);
    assert_int_equal(newly, 1);
    assert_int_equal(b0[0], (1ull << 3) | (1ull << 5));

    /* a failing host: error passed up with the range, and everything dirty */
    h.fail = 1;
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), -EIO);
    print_message("  host failure: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "range 0"));
    assert_non_null(strstr(err.msg, "KVM_GET_DIRTY_LOG: slot gone"));
    assert_int_equal(bm_count(b0, 100), 100);
    assert_int_equal(b0[1], (1ull << 36) - 1);
    lm_dirty_free(d);
    free(b0);
    free(b1);
    map_free(&m);
}

static void test_add_range_checks(void **state)
{
    (void)state;
    struct map m = map_new(1 << 20, false);
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new((lm_dirty_kind)42, &d, &err), -EINVAL);
    assert_null(d);
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err), 0);
    struct {
        char *base;
        uint64_t len;
        uint32_t ps;
    } bad[] = {
        {m.p + 512, PS, PS},          /* unaligned base */
        {m.p, 0, PS},                 /* empty */
        {m.p, PS + 1, PS},            /* not whole pages */
        {m.p, 3 * 4000, 4000},        /* page size not a power of two */
        {m.p, 2048, 2048},            /* smaller than the system page */
        {m.p, 0, 0},                  /* no page size */
        {m.p + PS, 2 * 16384, 16384}, /* base not aligned to its page size */
        {(char *)(uintptr_t)(UINT64_MAX - PS + 1), 2 * PS, PS}, /* wraps */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lm_error_clear(&err);
        assert_int_equal(lm_dirty_add_range(d, bad[i].base, bad[i].len, bad[i].ps, &err), -EINVAL);
        assert_true(err.msg[0] != '\0');
    }
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_add_range(d, m.p, 64 * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, m.p + 63 * PS, 2 * PS, PS, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "overlaps range 0"));
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_add_range(d, m.p + 64 * PS, 2 * PS, PS, &err), 0); /* adjacent */
    uint64_t newly;
    uint64_t *bms[2] = {NULL, NULL};
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), -EINVAL);
    lm_dirty_free(d);
    lm_dirty_free(NULL);
    map_free(&m);
}

/* A start that fails on range 1 (held by another tracker) names it and
 * releases range 0 again. */
static void test_uffd_start_fails_cleanly(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    struct map x = map_new(1 << 20, false), y = map_new(1 << 20, false);
    lm_error err = {0};
    lm_dirty *holder = uffd_tracker(y.p, 1 << 20), *d = NULL;
    assert_int_equal(lm_dirty_start(holder, &err), 0);
    assert_int_equal(lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, x.p, 1 << 20, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, y.p, 1 << 20, PS, &err), 0);
    assert_int_equal(lm_dirty_start(d, &err), -EBUSY);
    print_message("  range held elsewhere: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "range 1"));
    lm_dirty *d2 = uffd_tracker(x.p, 1 << 20);
    lm_error_clear(&err);
    assert_int_equal(lm_dirty_start(d2, &err), 0);
    uint64_t *bm = bm_new(256);
    assert_int_equal(lm_dirty_sync(d, (uint64_t *const[]){bm, bm}, NULL, &err), -EINVAL);
    lm_dirty_free(d2);
    lm_dirty_free(d);
    lm_dirty_free(holder);
    free(bm);
    map_free(&x);
    map_free(&y);
}

/* The host replaces part of a tracked range behind our back (mmap
 * MAP_FIXED): tracking is broken there, so sync fails, says why, and marks
 * the range dirty from the failed scan on, so a caller that carries on
 * (e.g. with LM_DIRTY_ALL) loses nothing. */
static void test_uffd_sync_fails_safe(void **state)
{
    (void)state;
    REQUIRE_UFFD();
    const uint64_t np = 256;
    struct map a = map_new(np * PS, false), b = map_new(np * PS, false);
    lm_error err = {0};
    lm_dirty *d = NULL;
    assert_int_equal(lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, a.p, np * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_add_range(d, b.p, np * PS, PS, &err), 0);
    assert_int_equal(lm_dirty_start(d, &err), 0);
    touch(b.p, 3, 1);
    void *r = mmap(b.p + 100 * PS, 10 * PS, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    assert_true(r == b.p + 100 * PS);
    uint64_t *ba = bm_new(np), *bb = bm_new(np), newly = 0;
    uint64_t *const bms[2] = {ba, bb};
    assert_int_equal(lm_dirty_sync(d, bms, &newly, &err), -EPERM);
    print_message("  range remapped: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "range 1"));
    assert_int_equal(bm_count(ba, np), 0);
    assert_int_equal(bm_count(bb, np), np);
    assert_int_equal(newly, np);
    lm_dirty_free(d);
    free(ba);
    free(bb);
    map_free(&a);
    map_free(&b);
}

/* ------------------------------------------------------ memory probes */

static void test_populated_scan(void **state)
{
    (void)state;
    const uint64_t np = 1024;
    struct map m = map_new(np * PS, false);
    uint64_t *bm = bm_new(np), *want = bm_new(np);
    lm_error err = {0};
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    assert_int_equal(bm_count(bm, np), 0); /* untouched */

    const uint64_t pages[] = {0, 1, 63, 64, 500, 1022, 1023};
    for (size_t k = 0; k < sizeof pages / sizeof pages[0]; k++) {
        touch(m.p, pages[k], 1);
        bm_set(want, pages[k]);
    }
    for (uint64_t i = 200; i < 300; i++) /* written then discarded */
        touch(m.p, i, 1);
    assert_int_equal(madvise(m.p + 200 * PS, 100 * PS, MADV_DONTNEED), 0);
    for (uint64_t i = 300; i < 400; i++) { /* read only: the shared zero page */
        (void)peek(m.p, i);
        if (!read_maps_zero_page())
            bm_set(want, i); /* a real (zeroed) page: populated */
    }
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    bm_expect(bm, want, np, "populated scan");

    /* OR semantics */
    memset(bm, 0, np / 8);
    bm_set(bm, 700);
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    bm_set(want, 700);
    bm_expect(bm, want, np, "populated scan ORs");

    /* 16 KiB pages: a page counts if any 4 KiB in it is populated */
    uint64_t b16[1] = {0};
    assert_int_equal(lm_mem_populated_scan(m.p, 128 * PS, 16384, b16, &err), 0);
    assert_int_equal(b16[0], (1ull << 0) | (1ull << 15) | (1ull << 16));

    /* bad geometry */
    assert_int_equal(lm_mem_populated_scan(m.p + 1, PS, PS, bm, &err), -EINVAL);
    lm_error_clear(&err);
    assert_int_equal(lm_mem_populated_scan(m.p, PS, 3000, bm, &err), -EINVAL);
    map_free(&m);

    /* THP: populated huge page, huge zero page */
    struct map h = map_new(2 * HPS, true);
    assert_int_equal(lm_mem_populate(h.p, HPS), 0);
    (void)peek(h.p, 512 + 3);
    memset(bm, 0, np / 8);
    memset(want, 0, np / 8);
    for (uint64_t i = 0; i < 512; i++)
        bm_set(want, i);
    for (uint64_t i = 512; !read_maps_zero_page() && i < 1024; i++)
        bm_set(want, i); /* the read populated a real huge page */
    lm_error_clear(&err);
    assert_int_equal(lm_mem_populated_scan(h.p, 2 * HPS, PS, bm, &err), 0);
    bm_expect(bm, want, 1024, "THP populated scan");
    map_free(&h);
    free(bm);
    free(want);
}

static void test_page_is_zero(void **state)
{
    (void)state;
    const size_t lens[] = {64, 128, 192, 4096, 8192, 65536};
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        size_t len = lens[l];
        /* exactly len bytes, so ASan catches any read past the end */
        unsigned char *p = aligned_alloc(64, len);
        assert_non_null(p);
        memset(p, 0, len);
        assert_true(lm_page_is_zero(p, len));
        for (size_t i = 0; i < len; i++) {
            p[i] = (i & 1) ? 0x80 : 0x01;
            if (lm_page_is_zero(p, len))
                fail_msg("len %zu: non-zero byte at offset %zu not seen", len, i);
            p[i] = 0;
        }
        assert_true(lm_page_is_zero(p, len));
        free(p);
    }
    /* 8-byte aligned but not 16: the contract's minimum */
    uint64_t *q = aligned_alloc(64, 4096 + 64);
    assert_non_null(q);
    memset(q, 0, 4096 + 64);
    assert_true(lm_page_is_zero(q + 1, 4096));
    ((unsigned char *)(q + 1))[4095] = 7;
    assert_false(lm_page_is_zero(q + 1, 4096));
    free(q);
}

static void test_populate(void **state)
{
    (void)state;
    const uint64_t np = 1024;
    struct map m = map_new(np * PS, false);
    uint64_t *bm = bm_new(np);
    lm_error err = {0};
    assert_int_equal(lm_mem_populate(m.p, np * PS), 0);
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    assert_int_equal(bm_count(bm, np), np);
    for (uint64_t i = 0; i < np; i++)
        assert_true(lm_page_is_zero(m.p + i * PS, PS));
    map_free(&m);

    /* unaligned start and length cover their pages, and no more */
    m = map_new(np * PS, false);
    memset(bm, 0, np / 8);
    assert_int_equal(lm_mem_populate(m.p + 10 * PS + 100, PS), 0); /* pages 10, 11 */
    assert_int_equal(lm_mem_populate(m.p, 0), 0);
    assert_int_equal(lm_mem_populated_scan(m.p, np * PS, PS, bm, &err), 0);
    assert_int_equal(bm_count(bm, np), 2);
    assert_true(bm_test(bm, 10) && bm_test(bm, 11));
    map_free(&m);

    /* unmapped memory: refused, not crashed */
    m = map_new(np * PS, false);
    char *p = m.p;
    map_free(&m);
    assert_true(lm_mem_populate(p, PS) < 0);
    free(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_probe_unprivileged),
#if defined(__x86_64__)
        cmocka_unit_test(test_probe_names_missing_piece),
#endif
        cmocka_unit_test(test_uffd_clean_sync),
        cmocka_unit_test(test_uffd_exact),
        cmocka_unit_test(test_uffd_discard_is_a_write),
        cmocka_unit_test(test_uffd_kernel_write),
        cmocka_unit_test(test_uffd_thp),
        cmocka_unit_test(test_uffd_ranges),
        cmocka_unit_test(test_uffd_many_regions),
        cmocka_unit_test(test_uffd_start_populated),
        cmocka_unit_test(test_uffd_stop),
        cmocka_unit_test(test_uffd_start_fails_cleanly),
        cmocka_unit_test(test_uffd_sync_fails_safe),
        cmocka_unit_test(test_uffd_race),
        cmocka_unit_test(test_uffd_race_thp),
        cmocka_unit_test(test_all),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_add_range_checks),
        cmocka_unit_test(test_populated_scan),
        cmocka_unit_test(test_page_is_zero),
        cmocka_unit_test(test_populate),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
