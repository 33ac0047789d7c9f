/*
 * test_wp.c - synchronous write-protection (src/mem/wp.h) on real memory
 * with a real userfaultfd: a write blocks until the callback has seen the
 * page's old content; populated, never-populated and shared pages; a fault
 * left to the owner (LM_WP_LEAVE) waits for lm_wp_unprotect; stop wakes a
 * blocked writer.  Skipped, loudly, where the kernel lacks the features.
 *
 * Threads: each test starts one writer ("wp-writer") that writes every
 * page of the region once; the callback runs on "lm-wp-fault".  Shared
 * fields are atomics; the writer is always joined (every fault it takes is
 * resolved by the callback, lm_wp_unprotect or lm_wp_stop).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "mem/wp.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PS 4096u
#define NPAGES 64

static bool wp_ok;
static lm_error wp_why;

typedef struct ctx {
    uint8_t *mem;
    lm_wp_action action;
    int faults[NPAGES]; /* per page (atomic) */
    int seen[NPAGES];   /* first byte of the page at its fault (atomic) */
    int done;           /* the writer finished (atomic) */
} ctx;

static lm_wp_action on_fault(void *opaque, unsigned range, uint64_t page, uint64_t *first,
                             uint64_t *count)
{
    assert_int_equal(*first, page);
    assert_int_equal(*count, 1);
    ctx *c = opaque;
    assert_int_equal(range, 0);
    assert_true(page < NPAGES);
    __atomic_store_n(&c->seen[page], __atomic_load_n(&c->mem[page * PS], __ATOMIC_RELAXED),
                     __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->faults[page], 1, __ATOMIC_RELEASE);
    return c->action;
}

static void *writer(void *arg)
{
    ctx *c = arg;
    pthread_setname_np(pthread_self(), "wp-writer");
    for (unsigned i = 0; i < NPAGES; i++)
        __atomic_store_n(&c->mem[i * PS], 0xAA, __ATOMIC_RELAXED);
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Bounded: the writer's first write faults at once (10 s is a hang). */
static void wait_first_fault(ctx *c)
{
    for (int i = 0; i < 10000 && !__atomic_load_n(&c->faults[0], __ATOMIC_ACQUIRE); i++)
        usleep(1000);
    assert_int_equal(__atomic_load_n(&c->faults[0], __ATOMIC_ACQUIRE), 1);
}

static uint8_t *region(bool shared)
{
    void *p;
    if (shared) {
        int fd = memfd_create("test-wp", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, NPAGES * PS), 0);
        p = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    } else {
        p = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    assert_true(p != MAP_FAILED);
    uint8_t *m = p;
    madvise(m, NPAGES * PS, MADV_NOHUGEPAGE);
    /* pages 0..47 hold their index; 48..63 were never populated */
    for (unsigned i = 0; i < 48; i++)
        m[i * PS] = (uint8_t)i;
    return m;
}

static lm_wp *start(ctx *c, lm_wp_action action)
{
    lm_wp *w = NULL;
    lm_error err = {0};
    c->action = action;
    assert_int_equal(lm_wp_new(&w, &err), 0);
    assert_int_equal(lm_wp_add_range(w, "t", c->mem, NPAGES * PS, PS, &err), 0);
    assert_int_equal(lm_wp_start(w, on_fault, c, &err), 0);
    return w;
}

/* Every page faults once, and the callback sees its content from before
 * the write, the never-populated pages included; once un-protected the
 * pages take writes without a fault. */
static void check_copy_before_write(bool shared)
{
    if (!wp_ok) {
        print_message("SKIPPED: %s\n", wp_why.msg);
        skip();
    }
    ctx c = {.mem = region(shared)};
    lm_wp *w = start(&c, LM_WP_UNPROTECT);
    assert_int_equal(lm_wp_range_anon(w, 0), !shared);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer, &c), 0);
    pthread_join(t, NULL);
    for (unsigned i = 0; i < NPAGES; i++) {
        assert_int_equal(__atomic_load_n(&c.faults[i], __ATOMIC_ACQUIRE), 1);
        assert_int_equal(c.seen[i], i < 48 ? (int)i : 0);
        assert_int_equal(c.mem[i * PS], 0xAA);
    }
    uint64_t before = lm_wp_faults(w);
    assert_int_equal(before, NPAGES);
    c.done = 0;
    assert_int_equal(pthread_create(&t, NULL, writer, &c), 0);
    pthread_join(t, NULL);
    assert_int_equal(lm_wp_faults(w), before);
    lm_error err = {0};
    assert_int_equal(lm_wp_error(w, &err), 0);
    lm_wp_free(w);
    munmap(c.mem, NPAGES * PS);
}

static void test_copy_before_write_anon(void **state)
{
    check_copy_before_write(false);
}

static void test_copy_before_write_shared(void **state)
{
    check_copy_before_write(true);
}

/* LM_WP_LEAVE: the writer stays blocked on page 0 until the owner
 * un-protects it (a send in flight). */
static void test_leave_until_unprotect(void **state)
{
    if (!wp_ok) {
        print_message("SKIPPED: %s\n", wp_why.msg);
        skip();
    }
    ctx c = {.mem = region(false)};
    lm_wp *w = start(&c, LM_WP_LEAVE);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer, &c), 0);
    wait_first_fault(&c);
    /* The fault was handed over and left: the write cannot have happened. */
    assert_int_equal(c.seen[0], 0);
    assert_int_equal(__atomic_load_n(&c.done, __ATOMIC_ACQUIRE), 0);
    lm_error err = {0};
    assert_int_equal(lm_wp_unprotect(w, 0, 0, NPAGES, &err), 0);
    pthread_join(t, NULL);
    assert_int_equal(c.mem[0], 0xAA);
    assert_int_equal(c.faults[1], 0); /* un-protected before the writer got there */
    lm_wp_free(w);
    munmap(c.mem, NPAGES * PS);
}

/* Stop un-protects everything and wakes a writer whose fault was left. */
static void test_stop_wakes_writer(void **state)
{
    if (!wp_ok) {
        print_message("SKIPPED: %s\n", wp_why.msg);
        skip();
    }
    ctx c = {.mem = region(false)};
    lm_wp *w = start(&c, LM_WP_LEAVE);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer, &c), 0);
    wait_first_fault(&c);
    lm_wp_stop(w);
    pthread_join(t, NULL);
    for (unsigned i = 0; i < NPAGES; i++)
        assert_int_equal(c.mem[i * PS], 0xAA);
    lm_wp_stop(w); /* idempotent */
    lm_wp_free(w);
    munmap(c.mem, NPAGES * PS);
}

/* Memory that cannot be protected page by page is refused by name. */
static void test_page_size_refused(void **state)
{
    if (!wp_ok) {
        print_message("SKIPPED: %s\n", wp_why.msg);
        skip();
    }
    uint8_t *m = region(false);
    lm_wp *w = NULL;
    lm_error err = {0};
    assert_int_equal(lm_wp_new(&w, &err), 0);
    assert_true(lm_wp_add_range(w, "big", m, NPAGES * PS, 2u << 20, &err) < 0);
    assert_non_null(strstr(err.msg, "'big'"));
    assert_non_null(strstr(err.msg, "4 KiB"));
    lm_wp_free(w);
    munmap(m, NPAGES * PS);
}

int main(void)
{
    lm_wp *w = NULL;
    wp_ok = lm_wp_new(&w, &wp_why) == 0;
    lm_wp_free(w);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_before_write_anon),
        cmocka_unit_test(test_copy_before_write_shared),
        cmocka_unit_test(test_leave_until_unprotect),
        cmocka_unit_test(test_stop_wakes_writer),
        cmocka_unit_test(test_page_size_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
