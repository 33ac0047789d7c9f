/*
 * test_migrate_inproc.c - the engine end to end inside one process: a
 * source and a destination lm_mig over a real unix socket, a writer thread
 * dirtying source memory through real userfaultfd write-protect, and a
 * byte-for-byte comparison of both memories after the switchover.  Also
 * cancel, a destination with the wrong RAM layout, a stopped source,
 * postcopy (with and without the preempt channel) with a destination
 * "vCPU" that reads random pages while they are still at the source, and
 * cancel / lm_mig_free racing the completion of a multifd migration.
 *
 * Threads: the test thread, one writer ("vCPU") thread per source, one
 * reader thread per postcopy destination, the "actors" of the completion
 * races, and the library's own threads.
 * Writer and reader park on `pause` under `mu`, and count their accesses
 * in `writes` under `mu` (signalling `cv`), so the test thread can wait for
 * them to have run.
 *
 * No test leaves to the scheduler what it needs to have happened: where the
 * workload must run during a migration, the migration is held by a trickle
 * of bandwidth (it cannot converge, or finish its postcopy push, for
 * minutes) until the test thread has seen the workload's accesses, then
 * released.  Every wait is for a condition, bounded by WAIT_MS, a bound that
 * is only reached when the condition never comes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MB (1ull << 20)
#define WAIT_MS 30000
/* Bytes/s that hold a migration: a 100 ms window carries a few pages, so
 * no bandwidth is measured (threshold 0: precopy cannot converge while the
 * workload dirties memory) and 12 MB of page data take minutes. */
#define TRICKLE (256 * 1024)
/* Batches of accesses (64 pages each) a held migration waits for. */
#define BATCHES 4

typedef struct host {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool pause, parked, quit, run_writer;
    pthread_t writer;
    uint8_t *mem[2];
    uint64_t len[2];
    uint64_t writes;  /* under mu: accesses of batches done */
    uint64_t seed;
    bool reader;      /* the "vCPU" only reads (a postcopy destination) */
    uint64_t sum;     /* what the reader read, so the reads are not elided */
} host;

static void host_stop(void *o)
{
    host *h = o;
    pthread_mutex_lock(&h->mu);
    h->pause = true;
    while (h->run_writer && !h->parked)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

static void host_start(void *o)
{
    host *h = o;
    pthread_mutex_lock(&h->mu);
    h->pause = false;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static const lm_host_ops ops = {.stop = host_stop, .start = host_start};

static uint64_t xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Writes random words into random pages until told to quit; parks between
 * writes when paused. */
static void *writer_fn(void *arg)
{
    host *h = arg;
    uint64_t done = 0;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        h->writes += done; /* the last batch, for wait_writes() */
        done = 0;
        pthread_cond_broadcast(&h->cv);
        while (h->pause && !h->quit) {
            h->parked = true;
            pthread_cond_broadcast(&h->cv);
            pthread_cond_wait(&h->cv, &h->mu);
        }
        h->parked = false;
        bool quit = h->quit;
        pthread_mutex_unlock(&h->mu);
        if (quit)
            break;
        for (int i = 0; i < 64; i++) {
            unsigned b = xs(&h->seed) % 2;
            uint64_t page = xs(&h->seed) % (h->len[b] / 4096);
            uint64_t *p = (uint64_t *)(h->mem[b] + page * 4096);
            if (h->reader) {
                /* A missing page blocks here until postcopy places it. */
                h->sum += p[xs(&h->seed) % 512];
            } else {
                for (int k = 0; k < 512; k += 37)
                    p[k] = xs(&h->seed);
            }
            done++;
        }
        usleep(200); /* pacing, not synchronisation */
    }
    return NULL;
}

static uint8_t *map(uint64_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void host_init(host *h, bool fill, uint64_t l0, uint64_t l1)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    h->len[0] = l0;
    h->len[1] = l1;
    h->mem[0] = map(l0);
    h->mem[1] = map(l1);
    h->seed = 88172645463325252ull;
    if (fill) {
        /* random pages, zero-written pages, untouched pages */
        for (int b = 0; b < 2; b++)
            for (uint64_t p = 0; p < h->len[b] / 4096; p++) {
                if (p % 3 == 0) {
                    uint64_t *w = (uint64_t *)(h->mem[b] + p * 4096);
                    for (int k = 0; k < 512; k++)
                        w[k] = xs(&h->seed);
                } else if (p % 3 == 1) {
                    memset(h->mem[b] + p * 4096, 0, 4096);
                }
            }
    }
}

static void host_fini(host *h)
{
    if (h->run_writer) {
        pthread_mutex_lock(&h->mu);
        h->quit = true;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->writer, NULL);
    }
    munmap(h->mem[0], h->len[0]);
    munmap(h->mem[1], h->len[1]);
}

static lm_mig *mig_for(host *h, lm_runstate rs)
{
    lm_mig *m = NULL;
    lm_error err = {0};
    assert_int_equal(lm_mig_new(&ops, h, rs, &m, &err), 0);
    assert_int_equal(lm_ram_add(m, "ram0", h->mem[0], h->len[0], 4096, &err), 0);
    assert_int_equal(lm_ram_add(m, "ram1", h->mem[1], h->len[1], 4096, &err), 0);
    return m;
}

static lm_status wait_final(lm_mig *m, int timeout_ms)
{
    lm_info info;
    for (int i = 0; i < timeout_ms / 10; i++) {
        lm_mig_query(m, &info);
        if (info.status == LM_STATUS_COMPLETED || info.status == LM_STATUS_FAILED ||
            info.status == LM_STATUS_CANCELLED)
            return info.status;
        usleep(10000);
    }
    lm_mig_query(m, &info);
    return info.status;
}

static lm_status wait_for(lm_mig *m, lm_status want, int timeout_ms)
{
    lm_info info;
    for (int i = 0; i < timeout_ms / 5; i++) {
        lm_mig_query(m, &info);
        if (info.status == want)
            return want;
        usleep(5000);
    }
    return info.status;
}

static uint64_t writes_now(host *h)
{
    pthread_mutex_lock(&h->mu);
    uint64_t w = h->writes;
    pthread_mutex_unlock(&h->mu);
    return w;
}

/* Waits until h's workload has done n accesses more than `since` (it counts
 * whole batches), at most WAIT_MS; returns whether it did. */
static bool wait_writes(host *h, uint64_t since, uint64_t n)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += WAIT_MS / 1000;
    int rc = 0;
    pthread_mutex_lock(&h->mu);
    while (h->writes < since + n && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->cv, &h->mu, &dl);
    bool ok = h->writes >= since + n;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

/* Sets max-bandwidth (or max-postcopy-bandwidth) of a migration. */
static void set_bandwidth(lm_mig *m, lm_param which, uint64_t bps)
{
    lm_error err = {0};
    lm_params p;
    lm_mig_get_params(m, &p);
    if (which == LM_PARAM_MAX_POSTCOPY_BANDWIDTH)
        p.max_postcopy_bandwidth = bps;
    else
        p.max_bandwidth = bps;
    assert_int_equal(lm_mig_set_params(m, &p, 1ull << which, &err), 0);
}

static char sock[128];

static int setup(void **state)
{
    snprintf(sock, sizeof sock, "unix:/tmp/lm-inproc-%d.sock", getpid());
    lm_error err = {0};
    if (lm_dirty_uffd_probe(&err) < 0) {
        fprintf(stderr, "userfaultfd write-protect unavailable: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Live migration with a dirtying writer, then a byte-for-byte compare. */
static void test_live(void **state)
{
    host src, dst;
    host_init(&src, true, 24 * MB, 8 * MB);
    host_init(&dst, false, 24 * MB, 8 * MB);
    src.run_writer = true;
    pthread_create(&src.writer, NULL, writer_fn, &src);
    lm_mig *ms = mig_for(&src, LM_RUN_RUNNING);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    /* held in precopy until the writer has dirtied tracked memory */
    set_bandwidth(ms, LM_PARAM_MAX_BANDWIDTH, TRICKLE);
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    /* tracking starts in setup, so every write from here on is tracked */
    assert_int_equal(wait_for(ms, LM_STATUS_ACTIVE, WAIT_MS), LM_STATUS_ACTIVE);
    uint64_t w0 = writes_now(&src);
    assert_true(wait_writes(&src, w0, BATCHES * 64));
    set_bandwidth(ms, LM_PARAM_MAX_BANDWIDTH, 0); /* converge */
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(wait_final(md, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(lm_vm_runstate(ms), LM_RUN_POSTMIGRATE);
    assert_int_equal(lm_vm_runstate(md), LM_RUN_RUNNING);
    lm_info info;
    lm_mig_query(ms, &info);
    assert_true(info.dirty_sync_count >= 2);
    assert_true(info.downtime >= 0);
    assert_true(src.writes >= w0 + BATCHES * 64);
    /* The source writer is parked (postmigrate); compare. */
    assert_memory_equal(src.mem[0], dst.mem[0], src.len[0]);
    assert_memory_equal(src.mem[1], dst.mem[1], src.len[1]);
    lm_mig_free(ms);
    lm_mig_free(md);
    host_fini(&src);
    host_fini(&dst);
}

/* Cancel while active: the source keeps running, then a new migration to
 * a fresh destination completes. */
static void test_cancel_then_retry(void **state)
{
    host src, dst, dst2;
    host_init(&src, true, 24 * MB, 8 * MB);
    host_init(&dst, false, 24 * MB, 8 * MB);
    host_init(&dst2, false, 24 * MB, 8 * MB);
    src.run_writer = true;
    pthread_create(&src.writer, NULL, writer_fn, &src);
    lm_mig *ms = mig_for(&src, LM_RUN_RUNNING);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    set_bandwidth(ms, LM_PARAM_MAX_BANDWIDTH, TRICKLE); /* held active until cancelled */
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(wait_for(ms, LM_STATUS_ACTIVE, WAIT_MS), LM_STATUS_ACTIVE);
    assert_int_equal(lm_mig_cancel(ms, &err), 0);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_CANCELLED);
    assert_int_equal(lm_vm_runstate(ms), LM_RUN_RUNNING);
    /* the destination learns it failed; it stays up */
    lm_status ds = wait_final(md, WAIT_MS);
    assert_true(ds == LM_STATUS_FAILED || ds == LM_STATUS_CANCELLED);
    /* still running: the writer does another batch (a parked one never would) */
    assert_true(wait_writes(&src, writes_now(&src), 64));

    lm_mig *md2 = mig_for(&dst2, LM_RUN_INMIGRATE);
    set_bandwidth(ms, LM_PARAM_MAX_BANDWIDTH, 0);
    assert_int_equal(lm_mig_incoming(md2, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(wait_final(md2, WAIT_MS), LM_STATUS_COMPLETED);
    assert_memory_equal(src.mem[0], dst2.mem[0], src.len[0]);
    assert_memory_equal(src.mem[1], dst2.mem[1], src.len[1]);
    lm_mig_free(ms);
    lm_mig_free(md);
    lm_mig_free(md2);
    host_fini(&src);
    host_fini(&dst);
    host_fini(&dst2);
}

/* A destination whose RAM does not match fails with a message naming the
 * block, and the source fails with the destination's reason, running. */
static void test_layout_mismatch(void **state)
{
    host src, dst;
    host_init(&src, true, 8 * MB, 4 * MB);
    host_init(&dst, false, 8 * MB, 8 * MB);
    lm_mig *ms = mig_for(&src, LM_RUN_RUNNING);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_FAILED);
    assert_int_equal(wait_final(md, WAIT_MS), LM_STATUS_FAILED);
    lm_info info;
    lm_mig_query(md, &info);
    assert_non_null(strstr(info.error_desc, "ram1"));
    lm_mig_query(ms, &info);
    assert_non_null(strstr(info.error_desc, "ram1"));
    assert_int_equal(lm_vm_runstate(ms), LM_RUN_RUNNING);
    lm_mig_free(ms);
    lm_mig_free(md);
    host_fini(&src);
    host_fini(&dst);
}

/* Pause before switchover, then continue. */
static void test_pause_before_switchover(void **state)
{
    host src, dst;
    host_init(&src, true, 8 * MB, 4 * MB);
    host_init(&dst, false, 8 * MB, 4 * MB);
    lm_mig *ms = mig_for(&src, LM_RUN_RUNNING);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    uint64_t c = 1ull << LM_CAP_PAUSE_BEFORE_SWITCHOVER;
    assert_int_equal(lm_mig_set_capabilities(ms, c, c, &err), 0);
    lm_params p;
    lm_params_default(&p);
    p.max_bandwidth = 0;
    assert_int_equal(lm_mig_set_params(ms, &p, 1ull << LM_PARAM_MAX_BANDWIDTH, &err), 0);
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(wait_for(ms, LM_STATUS_PRE_SWITCHOVER, WAIT_MS), LM_STATUS_PRE_SWITCHOVER);
    assert_int_equal(lm_vm_runstate(ms), LM_RUN_FINISH_MIGRATE);
    assert_true(lm_mig_continue(ms, LM_STATUS_ACTIVE, &err) < 0);
    assert_int_equal(lm_mig_continue(ms, LM_STATUS_PRE_SWITCHOVER, NULL), 0);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_COMPLETED);
    assert_memory_equal(src.mem[0], dst.mem[0], src.len[0]);
    lm_mig_free(ms);
    lm_mig_free(md);
    host_fini(&src);
    host_fini(&dst);
}

/* A stopped source needs no dirty tracking: one exact pass. */
static void test_stopped_source(void **state)
{
    host src, dst;
    host_init(&src, true, 8 * MB, 4 * MB);
    host_init(&dst, false, 8 * MB, 4 * MB);
    lm_mig *ms = mig_for(&src, LM_RUN_PAUSED);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    lm_params p;
    lm_params_default(&p);
    p.max_bandwidth = 0;
    assert_int_equal(lm_mig_set_params(ms, &p, 1ull << LM_PARAM_MAX_BANDWIDTH, &err), 0);
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(wait_final(md, WAIT_MS), LM_STATUS_COMPLETED);
    assert_memory_equal(src.mem[0], dst.mem[0], src.len[0]);
    assert_memory_equal(src.mem[1], dst.mem[1], src.len[1]);
    lm_info info;
    lm_mig_query(ms, &info);
    /* two thirds of the pages are zero (written or never touched) */
    assert_true(info.duplicate >= (12 * MB / 4096) * 6 / 10);
    lm_mig_free(ms);
    lm_mig_free(md);
    host_fini(&src);
    host_fini(&dst);
}

/* Postcopy: the source is switched at once, so most pages are owed; the
 * destination's reader faults on them; both memories match at the end
 * (the reader only reads, the source is frozen since the switch).  The
 * background push is held to a trickle until the reader has read, so the
 * reads happen while pages are still owed. */
static void postcopy_run(bool preempt)
{
    host src, dst;
    host_init(&src, true, 24 * MB, 8 * MB);
    host_init(&dst, false, 24 * MB, 8 * MB);
    src.run_writer = true;
    pthread_create(&src.writer, NULL, writer_fn, &src);
    dst.reader = true;
    dst.pause = true; /* parked until the library starts the destination */
    dst.run_writer = true;
    dst.seed = 12345;
    pthread_create(&dst.writer, NULL, writer_fn, &dst);
    lm_mig *ms = mig_for(&src, LM_RUN_RUNNING);
    lm_mig *md = mig_for(&dst, LM_RUN_INMIGRATE);
    lm_error err = {0};
    uint64_t c = (1ull << LM_CAP_POSTCOPY_RAM) | (1ull << LM_CAP_POSTCOPY_BLOCKTIME) |
                 (preempt ? 1ull << LM_CAP_POSTCOPY_PREEMPT : 0);
    assert_int_equal(lm_mig_set_capabilities(ms, c, c, &err), 0);
    assert_int_equal(lm_mig_set_capabilities(md, c, c, &err), 0);
    set_bandwidth(ms, LM_PARAM_MAX_BANDWIDTH, 8 * MB);
    set_bandwidth(ms, LM_PARAM_MAX_POSTCOPY_BANDWIDTH, TRICKLE);
    assert_int_equal(lm_mig_incoming(md, sock, &err), 0);
    assert_int_equal(lm_mig_start(ms, sock, false, &err), 0);
    assert_int_equal(lm_mig_start_postcopy(ms, &err), 0);
    /* the reader starts when the destination runs, i.e. in postcopy */
    assert_true(wait_writes(&dst, 0, BATCHES * 64));
    /* postcopy lasts a while: faults go on happening */
    set_bandwidth(ms, LM_PARAM_MAX_POSTCOPY_BANDWIDTH, 16 * MB);
    assert_int_equal(wait_final(ms, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(wait_final(md, WAIT_MS), LM_STATUS_COMPLETED);
    assert_int_equal(lm_vm_runstate(ms), LM_RUN_POSTMIGRATE);
    assert_int_equal(lm_vm_runstate(md), LM_RUN_RUNNING);
    lm_info si, di;
    lm_mig_query(ms, &si);
    lm_mig_query(md, &di);
    assert_true(di.has_postcopy && di.has_blocktime);
    assert_int_equal(di.pc_owed_pages, 0);
    assert_true(si.postcopy_bytes > 0);
    assert_int_equal(si.postcopy_requests, di.postcopy_requests);
    assert_true(di.pc_lat_count <= di.pc_faults);
    host_stop(&dst);
    assert_true(dst.writes >= BATCHES * 64); /* the destination ran during postcopy */
    assert_memory_equal(src.mem[0], dst.mem[0], src.len[0]);
    assert_memory_equal(src.mem[1], dst.mem[1], src.len[1]);
    lm_mig_free(ms);
    lm_mig_free(md);
    host_fini(&src);
    host_fini(&dst);
}

static void test_postcopy(void **state)
{
    postcopy_run(false);
}

static void test_postcopy_preempt(void **state)
{
    postcopy_run(true);
}

/* ------------------------------------------- cancel / free racing completion
 *
 * finish() on either side frees the multifd channels before it removes
 * them from m->aux_chans, while migrate_cancel and lm_mig_free shut down
 * every channel of m->aux_chans under m->lock: one that runs between the
 * two touches freed channels (ASan: heap-use-after-free in
 * lm_chan_shutdown).  The moment is forced, not waited for:
 *  - the destination's start hook (its load succeeded, its confirmation
 *    RP_SHUT goes out when the hook returns) is the barrier: it holds the
 *    destination until the actors are in place;
 *  - the actors act as soon as the source reaches a point of its
 *    completion (its end of stream is out, or the confirmation came), and the
 *    source-side cancels are repeated back to back by two threads until
 *    the source is final, so they cover all of its finish().  After the end
 *    of stream a cancel changes no state (it only shuts the channels down),
 *    so every one of them walks m->aux_chans.
 * The window itself is microseconds wide, so the rounds repeat, each with
 * a small guest.
 */

enum race_action {
    RACE_CANCEL_SRC_AFTER_SHUT, /* cancels on the source once the confirmation came */
    RACE_CANCEL_SRC_AFTER_EOS,  /* ... once its end of stream is out (a failed finish) */
    RACE_FREE_SRC_AFTER_SHUT,   /* lm_mig_free(source) once the confirmation came */
    RACE_CANCEL_DST_AT_START,   /* cancel on the destination after its load succeeded */
    RACE_FREE_DST_AT_START,     /* lm_mig_free(destination) from then on */
};

#define RACE_ACTORS 2

typedef struct race {
    host src, dst;
    lm_mig *ms, *md;
    enum race_action action;
    unsigned nactors;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool dst_started; /* the destination's start hook runs */
    unsigned ready;   /* actors watching the source */
    bool acted;       /* the first action returned */
    pthread_t actor[RACE_ACTORS];
} race;

typedef struct actor_arg {
    race *r;
    unsigned idx;
} actor_arg;

static race *cur_race;

static bool final_status(lm_status s)
{
    return s == LM_STATUS_COMPLETED || s == LM_STATUS_FAILED || s == LM_STATUS_CANCELLED;
}

static lm_status status_of(lm_mig *m)
{
    pthread_mutex_lock(&m->lock);
    lm_status s = m->status;
    pthread_mutex_unlock(&m->lock);
    return s;
}

static struct timespec deadline_in(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* Waits (bounded) on r->cv until *flag, or *count reaches want. */
static void race_wait(race *r, const bool *flag, const unsigned *count, unsigned want)
{
    struct timespec ts = deadline_in(10000);
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    while (!(flag ? *flag : *count >= want) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    pthread_mutex_unlock(&r->mu);
}

static void race_set(race *r, bool *flag, unsigned *count)
{
    pthread_mutex_lock(&r->mu);
    if (flag)
        *flag = true;
    else
        (*count)++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Waits (bounded) until the source's end of stream is out (eos_sent) or
 * the destination's verdict came (shut_received: its migration thread is
 * about to run finish()).  Neither is signalled, so it looks every 20 µs;
 * sleeping in between (rather than spinning) keeps the actor first in line
 * for a CPU when the moment comes. */
static bool wait_source(lm_mig *m, bool shut)
{
    uint64_t end = lm_now_ns() + 20000000000ull;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        bool ok = shut ? m->shut_received : m->eos_sent;
        bool over = final_status(m->status);
        pthread_mutex_unlock(&m->lock);
        if (ok || over || lm_now_ns() > end)
            return ok;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

/* The destination's start hook: the barrier, see above. */
static void race_dst_start(void *o)
{
    host_start(o);
    race *r = cur_race;
    race_set(r, &r->dst_started, NULL);
    switch (r->action) {
    case RACE_CANCEL_SRC_AFTER_SHUT:
    case RACE_FREE_SRC_AFTER_SHUT:
        race_wait(r, NULL, &r->ready, r->nactors); /* they watch for the confirmation */
        break;
    case RACE_CANCEL_SRC_AFTER_EOS:
    case RACE_CANCEL_DST_AT_START:
        race_wait(r, &r->acted, NULL, 0); /* the cancel came before the confirmation */
        break;
    case RACE_FREE_DST_AT_START:
        break; /* lm_mig_free joins this thread: do not wait for it */
    }
}

static const lm_host_ops race_dst_ops = {.stop = host_stop, .start = race_dst_start};

static void *race_actor(void *arg)
{
    race *r = ((actor_arg *)arg)->r;
    unsigned idx = ((actor_arg *)arg)->idx;
    switch (r->action) {
    case RACE_CANCEL_SRC_AFTER_SHUT:
    case RACE_FREE_SRC_AFTER_SHUT:
        race_wait(r, &r->dst_started, NULL, 0);
        race_set(r, NULL, &r->ready);
        wait_source(r->ms, true);
        break;
    case RACE_CANCEL_SRC_AFTER_EOS:
        race_wait(r, &r->dst_started, NULL, 0);
        wait_source(r->ms, false);
        break;
    case RACE_CANCEL_DST_AT_START:
    case RACE_FREE_DST_AT_START:
        race_wait(r, &r->dst_started, NULL, 0);
        break;
    }
    bool spin = false;
    switch (r->action) {
    case RACE_CANCEL_SRC_AFTER_SHUT:
    case RACE_CANCEL_SRC_AFTER_EOS:
        lm_mig_cancel(r->ms, NULL);
        spin = true;
        break;
    case RACE_FREE_SRC_AFTER_SHUT:
        lm_mig_free(r->ms);
        break;
    case RACE_CANCEL_DST_AT_START:
        lm_mig_cancel(r->md, NULL);
        break;
    case RACE_FREE_DST_AT_START:
        lm_mig_free(r->md);
        break;
    }
    if (idx == 0)
        race_set(r, &r->acted, NULL);
    /* Back to back until the source is final (bounded): each cancel walks
     * m->aux_chans under m->lock. */
    uint64_t end = lm_now_ns() + 10000000000ull;
    while (spin && !final_status(status_of(r->ms)) && lm_now_ns() < end)
        lm_mig_cancel(r->ms, NULL);
    return NULL;
}

static void race_round(enum race_action action, int round)
{
    race *r = calloc(1, sizeof *r);
    actor_arg args[RACE_ACTORS];
    assert_non_null(r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    r->action = action;
    r->nactors = action == RACE_CANCEL_SRC_AFTER_SHUT || action == RACE_CANCEL_SRC_AFTER_EOS
                     ? RACE_ACTORS
                     : 1;
    cur_race = r;
    host_init(&r->src, true, 2 * MB, 1 * MB);
    host_init(&r->dst, false, 2 * MB, 1 * MB);
    lm_error err = {0};
    r->ms = mig_for(&r->src, LM_RUN_RUNNING);
    assert_int_equal(lm_mig_new(&race_dst_ops, &r->dst, LM_RUN_INMIGRATE, &r->md, &err), 0);
    assert_int_equal(lm_ram_add(r->md, "ram0", r->dst.mem[0], r->dst.len[0], 4096, &err), 0);
    assert_int_equal(lm_ram_add(r->md, "ram1", r->dst.mem[1], r->dst.len[1], 4096, &err), 0);
    uint64_t c = (1ull << LM_CAP_MULTIFD) | (1ull << LM_CAP_EVENTS);
    assert_int_equal(lm_mig_set_capabilities(r->ms, c, c, &err), 0);
    assert_int_equal(lm_mig_set_capabilities(r->md, c, c, &err), 0);
    lm_params p;
    lm_params_default(&p);
    p.max_bandwidth = 0;
    p.multifd_channels = 2;
    uint64_t which = (1ull << LM_PARAM_MAX_BANDWIDTH) | (1ull << LM_PARAM_MULTIFD_CHANNELS);
    assert_int_equal(lm_mig_set_params(r->ms, &p, which, &err), 0);
    assert_int_equal(lm_mig_set_params(r->md, &p, 1ull << LM_PARAM_MULTIFD_CHANNELS, &err), 0);
    for (unsigned i = 0; i < r->nactors; i++) {
        args[i] = (actor_arg){.r = r, .idx = i};
        assert_int_equal(pthread_create(&r->actor[i], NULL, race_actor, &args[i]), 0);
    }
    assert_int_equal(lm_mig_incoming(r->md, sock, &err), 0);
    assert_int_equal(lm_mig_start(r->ms, sock, false, &err), 0);
    for (unsigned i = 0; i < r->nactors; i++)
        assert_int_equal(pthread_join(r->actor[i], NULL), 0);
    bool freed_src = action == RACE_FREE_SRC_AFTER_SHUT;
    bool freed_dst = action == RACE_FREE_DST_AT_START;
    lm_status ss = freed_src ? LM_STATUS_COMPLETED : wait_final(r->ms, 20000);
    lm_status ds = freed_dst ? LM_STATUS_COMPLETED : wait_final(r->md, 20000);
    if (!final_status(ss) || !final_status(ds))
        fail_msg("round %d, action %d: source '%s', destination '%s': not a final state", round,
                 (int)action, lm_status_name(ss), lm_status_name(ds));
    /* A destination that completed holds the source's memory (the source
     * has no writer: it did not change since). */
    if (!freed_dst && ds == LM_STATUS_COMPLETED) {
        assert_memory_equal(r->src.mem[0], r->dst.mem[0], r->src.len[0]);
        assert_memory_equal(r->src.mem[1], r->dst.mem[1], r->src.len[1]);
    }
    if (!freed_src)
        lm_mig_free(r->ms);
    if (!freed_dst)
        lm_mig_free(r->md);
    cur_race = NULL;
    host_fini(&r->src);
    host_fini(&r->dst);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

#define RACE_ROUNDS 40

/* The source: cancels from the moment the destination confirmed (finish
 * of a completed migration) or from its end of stream on (finish of a
 * failed one), and lm_mig_free once confirmed, in turn. */
static void test_cancel_races_completion_multifd(void **state)
{
    static const enum race_action actions[] = {RACE_CANCEL_SRC_AFTER_SHUT,
                                               RACE_CANCEL_SRC_AFTER_EOS, RACE_FREE_SRC_AFTER_SHUT};
    for (int i = 0; i < RACE_ROUNDS; i++)
        race_round(actions[i % 3], i);
}

/* The destination: migrate_cancel, or lm_mig_free, once its load
 * succeeded and before it is final (from its start hook on).  Both
 * objects must still end in a final state.  (Only one cancel walks the
 * destination's channels, the first one moves it to cancelling, so these
 * rounds cannot cover its finish() the way the source's do.) */
static void test_dst_cancel_races_completion_multifd(void **state)
{
    for (int i = 0; i < RACE_ROUNDS / 2; i++)
        race_round(i % 2 ? RACE_FREE_DST_AT_START : RACE_CANCEL_DST_AT_START, i);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live),
        cmocka_unit_test(test_cancel_then_retry),
        cmocka_unit_test(test_layout_mismatch),
        cmocka_unit_test(test_pause_before_switchover),
        cmocka_unit_test(test_stopped_source),
        cmocka_unit_test(test_postcopy),
        cmocka_unit_test(test_postcopy_preempt),
        cmocka_unit_test(test_cancel_races_completion_multifd),
        cmocka_unit_test(test_dst_cancel_races_completion_multifd),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
