/*
 * test_pc_fence.c - the teardown of a postcopy destination that still owes
 * pages, with real userfaultfd: a "vCPU" thread blocked on an owed page
 * must never read what the source did not send (a fresh zero page here)
 * once the destination is torn down.  postcopy/uffd.c makes every block
 * that still owes a page inaccessible before it unregisters, so the
 * blocked reader gets SIGSEGV; the test catches it (sigsetjmp) and checks
 * that the read never completed.  And a destination that owes nothing is
 * torn down as before: its memory stays readable.
 *
 * Threads: the test thread, one reader, the library's fault thread.  The
 * test waits for the fault thread to have seen the reader's fault (a
 * counter under d.lock), never for a time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/internal.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define BLOCK (2u << 20)
#define OWED_PAGE 3
#define DATA_PAGE 5
#define WAIT_NS (20ull * 1000000000ull)

static lm_mem mem;
static lm_place place;
static lm_pc_dst d;
static uint8_t *area, *base;

enum { PENDING, READ_DONE, SEGV };
static int result = PENDING; /* reader's outcome (atomic) */
static uint8_t value_read;
static __thread sigjmp_buf probe_jmp;
static __thread volatile sig_atomic_t probing;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)si;
    (void)uc;
    if (probing) {
        probing = 0;
        siglongjmp(probe_jmp, 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Reads one byte; SEGV when the read faulted with SIGSEGV. */
static int probe(const volatile uint8_t *p, uint8_t *out)
{
    if (sigsetjmp(probe_jmp, 1)) {
        return SEGV;
    }
    probing = 1;
    uint8_t v = *p;
    probing = 0;
    *out = v;
    return READ_DONE;
}

static void *reader_fn(void *arg)
{
    (void)arg;
    uint8_t v = 0;
    int r = probe(base + OWED_PAGE * LM_PAGE_SIZE, &v);
    value_read = v;
    __atomic_store_n(&result, r, __ATOMIC_RELEASE);
    return NULL;
}

/* In the test body: cmocka installs its own SIGSEGV handler around it. */
static void catch_segv(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
}

static int setup(void **state)
{
    (void)state;
    area = mmap(NULL, 2 * BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(area != MAP_FAILED);
    base = (uint8_t *)(((uintptr_t)area + BLOCK - 1) & ~(uintptr_t)(BLOCK - 1));
    memset(&mem, 0, sizeof mem);
    lm_error err = {0};
    assert_int_equal(lm_mem_block_add(&mem, "ram0", base, BLOCK, LM_PAGE_SIZE, &err), 0);
    lm_place_reset(&place);
    lm_pc_dst_init(&d, &mem, &place);
    memset(base + DATA_PAGE * LM_PAGE_SIZE, 0xa5, LM_PAGE_SIZE);
    __atomic_store_n(&result, PENDING, __ATOMIC_RELAXED);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lm_pc_dst_destroy(&d);
    lm_mem_fini(&mem);
    munmap(area, 2 * BLOCK);
    return 0;
}

/* Switched with page OWED_PAGE owed and not placed (no return path: the
 * request cannot go out, the page stays owed). */
static void switch_owing(bool owe)
{
    lm_error err = {0};
    assert_int_equal(lm_pc_dst_prepare(&d, false, &err), 0);
    if (owe) {
        assert_int_equal(madvise(base + OWED_PAGE * LM_PAGE_SIZE, LM_PAGE_SIZE, MADV_DONTNEED), 0);
        pthread_mutex_lock(&d.lock);
        lm_bit_set(d.blk[0].owed, OWED_PAGE);
        d.owed_pages = 1;
        pthread_mutex_unlock(&d.lock);
    }
    assert_int_equal(lm_pc_dst_listen(&d, NULL, false, &err), 0);
}

static bool wait_fault_seen(void)
{
    uint64_t deadline = lm_now_ns() + WAIT_NS;
    for (;;) {
        pthread_mutex_lock(&d.lock);
        uint64_t f = d.faults;
        pthread_mutex_unlock(&d.lock);
        if (f)
            return true;
        if (lm_now_ns() > deadline)
            return false;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static void test_owed_page_never_reads_zero(void **state)
{
    (void)state;
    catch_segv();
    switch_owing(true);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_fn, NULL), 0);
    /* The reader faulted on the owed page and waits for it. */
    assert_true(wait_fault_seen());
    assert_int_equal(__atomic_load_n(&result, __ATOMIC_ACQUIRE), PENDING);
    /* Teardown while it waits: the block is fenced, the woken reader's
     * retry is a SIGSEGV, not a read of a zero page. */
    lm_pc_dst_end(&d);
    pthread_join(t, NULL);
    assert_int_equal(__atomic_load_n(&result, __ATOMIC_ACQUIRE), SEGV);
    assert_int_equal(d.fenced_blocks, 1);
    assert_false(d.fence_failed);
    /* Any later access to that block too (the page is still not there). */
    uint8_t v;
    assert_int_equal(probe(base + OWED_PAGE * LM_PAGE_SIZE, &v), SEGV);
    assert_int_equal(probe(base + DATA_PAGE * LM_PAGE_SIZE, &v), SEGV);
    /* The host may unmap it as usual (teardown). */
    assert_int_equal(mprotect(base, BLOCK, PROT_READ | PROT_WRITE), 0);
}

static void test_nothing_owed_stays_readable(void **state)
{
    (void)state;
    catch_segv();
    switch_owing(false);
    lm_pc_dst_end(&d);
    assert_int_equal(d.fenced_blocks, 0);
    uint8_t v = 0;
    assert_int_equal(probe(base + DATA_PAGE * LM_PAGE_SIZE, &v), READ_DONE);
    assert_int_equal(v, 0xa5);
    /* A page never written and not owed is zero, as it was. */
    assert_int_equal(probe(base + OWED_PAGE * LM_PAGE_SIZE, &v), READ_DONE);
    assert_int_equal(v, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_owed_page_never_reads_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_owed_stays_readable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
