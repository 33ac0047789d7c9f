/*
 * guest.c - `livemig guest`, the built-in workload host (DESIGN §2): guest
 * RAM whose every page says what it must contain, workload threads as its
 * vCPUs, and the library's QMP server with three host commands (quit,
 * x-guest-verify, x-guest-stats).
 *
 * Memory model.  Data pages live in two RAM blocks of different sizes,
 * "ram0" (3/4 of --mem) and "ram1" (the rest); global page index i counts
 * through ram0 then ram1.  A written page starts with {u64 i, u64 version}
 * and the rest is a splitmix64 stream seeded by (i, version).  The "ledger"
 * block holds one u64 per data page: the version that page must have (0 =
 * never written, so the page must be all zero).  A workload thread writes
 * the page, then its ledger entry, and looks at the stop request only
 * between such pairs, so a stopped guest is always consistent: any lost,
 * stale, torn or misplaced page shows up in x-guest-verify.
 *
 * Threads:
 *  - main: flags, memory, fill, setup; then sleeps in poll() on a signalfd
 *    (SIGINT/SIGTERM) and an eventfd (QMP quit) and tears everything down;
 *  - "guest-w<N>" (workload, N = 0..threads-1): thread N owns the pages with
 *    i % threads == N, so no two threads ever write the same page;
 *  - "guest-stats": samples the write counters every 250 ms for "rate";
 *  - "guest-fill" / "guest-verify": short-lived helpers splitting the pages
 *    in two halves with the calling thread;
 *  - library threads ("lm-qmp", "lm-migration", "lm-incoming") call the
 *    stop/start hooks and the QMP command handlers below.
 * Locks: g->lock guards the "run control" group of struct guest (stop_req,
 * quit, parked, alive) and the sample ring.  Workload threads read stop_req
 * without the lock (atomic) between write pairs and take the lock only to
 * park or to sleep for pacing.  The per-thread write counters are relaxed
 * atomics.  Memory and ledger need no lock: each page has one writer (its
 * workload thread, or the library's loader while the workload is stopped).
 */
#include "cli.h"
#include "guest_bulk.h"
#include "guest_throttle.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define MAX_THREADS 64
#define HUGE_ALIGN (2u << 20)
#define SAMPLES 5 /* 5 samples 250 ms apart: a 1 s window */
#define SAMPLE_MS 250
#define MAX_BULK 4
#define MAX_OBJECTS 16
#define CPU_MAGIC 0x30555043u /* "CPU0" */

typedef enum workload { WL_IDLE, WL_RANDOM, WL_SEQUENTIAL, WL_HOT, WL_SPARSE } workload;
typedef enum fill { FILL_NONE, FILL_RANDOM, FILL_ZERO } fill;

static const char *const workload_names[] = {"idle", "random", "sequential", "hot", "sparse"};

typedef struct region {
    void *map; /* what mmap returned (for munmap) */
    size_t map_len;
    uint8_t *base; /* 2 MiB aligned start given to the library */
    uint64_t len;
} region;

typedef struct guest guest;

typedef struct worker {
    guest *g;
    unsigned id;
    pthread_t thread;
    /* Written by this worker only, read by stats: its own cache line. */
    uint64_t writes __attribute__((aligned(64)));
    /* The worker's "registers", migrated by the cpu device: written by the
     * worker while it runs, and by the loader only while it is parked. */
    uint64_t rng;
    uint64_t cursor;
    gthr_worker thr; /* this thread's throttle account */
} worker;

struct guest {
    /* configuration, read-only once threads run */
    uint64_t mem;
    unsigned nthreads;
    workload wl;
    uint64_t dirty_rate;
    uint64_t seed;
    fill fill;
    uint64_t hot_size;
    bool hot_size_set;
    bool prealloc; /* --prealloc: populate all memory before serving */
    bool memfd;    /* --mem-backend memfd: RAM is shared memory */
    char qmp_uri[4200];
    unsigned qmp_mode; /* --qmp-mode; 0: the library's default, 0600 */
    const char *incoming;
    const char *name, *uuid; /* --name, --uuid (QEMU's -name, -uuid) */
    bulk_cfg bulk_cfgs[MAX_BULK];
    unsigned nbulk;
    bulk *bulks[MAX_BULK];
    const char *objects[MAX_OBJECTS]; /* --object specs, in order */
    unsigned nobjects;
    /* cpu device: page writes not counted by the current workers' counters
     * (the fill, and writes made elsewhere before a migration); written
     * only with the workload stopped */
    uint64_t base_writes;
    bool cpu_loaded;  /* a cpu state was loaded (destination) */
    bool cpu_adopted; /* ... and the workers continue from it */

    /* memory */
    region ram[2];
    region ledger_r;
    uint64_t npages; /* data pages */
    uint64_t ram0_pages;
    uint64_t *ledger;

    lm_mig *m;
    lm_qmp_server *qmp;
    int quit_fd; /* eventfd: QMP quit -> main */
    uint64_t start_ms;

    worker workers[MAX_THREADS];
    gthr thr; /* the library's throttle (auto-converge, dirty-limit) */
    unsigned nstarted;
    pthread_t stats_thread;
    bool stats_started;

    pthread_mutex_t lock;
    pthread_cond_t park_cond; /* a worker parked or exited -> stop() */
    pthread_cond_t run_cond;  /* start/quit -> workers, stats (CLOCK_MONOTONIC) */
    /* --- run control, guarded by lock (stop_req also read atomically) --- */
    bool stop_req;
    bool quit;
    unsigned parked; /* workers parked or sleeping, i.e. not writing */
    unsigned alive;  /* workers that have not exited */
    uint64_t samp_ms[SAMPLES], samp_w[SAMPLES];
    unsigned nsamp;            /* samples taken so far (ring index = nsamp % SAMPLES) */
    uint64_t rate_base_writes; /* writes when the samples (re)started */
    /* --- end of lock group --- */
};

/* ---------------------------------------------------------- page content */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t page_seed(uint64_t idx, uint64_t ver)
{
    return mix64(idx * 0x9E3779B97F4A7C15ull ^ mix64(ver + 0x632BE59BD9B4E019ull));
}

/* Guest memory is shared with the migration engine by design: the engine
 * reads pages while the workers write them (that is live migration; dirty
 * tracking resends what changed), as a VMM's vCPUs race with its migration
 * thread.  The workers' writes to guest memory are therefore kept out of
 * ThreadSanitizer's view; everything else of ours stays checked. */
#define GUEST_MEMORY_WRITER __attribute__((no_sanitize("thread"), noinline))

/* --pattern text: pages that compress like program text (zstd ~4x) for
 * the compression tests and benchmarks.  Set once before any thread. */
static bool text_pattern;

/* --workload sparse: a page's body is always that of version 1 and a
 * write changes only its version word (8 bytes), so every version stays
 * exactly checkable: the re-dirtied pages XBZRLE is for.  Set once before
 * any thread. */
static bool sparse_body;

/* At least 512 bytes of text plus 8 for the last word of the window. */
static const char TEXT[] =
    "livemig moves the memory and device state of a running workload from "
    "one process to another while the workload keeps running, with the "
    "shortest possible pause: precopy, postcopy over userfaultfd, multifd "
    "channels with zero page detection and compression, mapped-ram file "
    "snapshots and switchover-ack, driven over QMP like QEMU. int main(void) "
    "{ for (i = 0; i < n; i++) sum += page[i]; return sum != 0; } /* pages "
    "are 4096 bytes; a header of index and version starts each one */ the "
    "quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqr";
_Static_assert(sizeof TEXT >= 520 + 1, "TEXT must cover the 512-byte window");

/* Word k of a page: splitmix64 is counter based, word k depends only on
 * (seed, k), so the loop has no carried dependency and runs at several
 * GB/s.  With the text pattern every 4th word stays random (a torn page
 * still shows) and the others are text at an offset chosen by the seed. */
static inline uint64_t page_word(uint64_t s, unsigned k)
{
    if (!text_pattern || k % 4 == 0)
        return mix64(s + k * 0x9E3779B97F4A7C15ull);
    uint64_t v;
    memcpy(&v, TEXT + (k * 8 + s % 512) % 512, 8);
    return v;
}

static GUEST_MEMORY_WRITER void page_write(uint8_t *p, uint64_t idx, uint64_t ver)
{
    uint64_t *w = (uint64_t *)p;
    uint64_t s = page_seed(idx, sparse_body ? 1 : ver);
    w[0] = idx;
    w[1] = ver;
    for (unsigned k = 2; k < WORDS; k++)
        w[k] = page_word(s, k);
}

static bool page_ok(const uint8_t *p, uint64_t idx, uint64_t ver)
{
    const uint64_t *w = (const uint64_t *)p;
    if (w[0] != idx || w[1] != ver)
        return false;
    uint64_t s = page_seed(idx, sparse_body ? 1 : ver), diff = 0;
    for (unsigned k = 2; k < WORDS; k++)
        diff |= w[k] ^ page_word(s, k);
    return diff == 0;
}

static bool page_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;
    for (unsigned k = 0; k < WORDS; k++)
        acc |= w[k];
    return acc == 0;
}

static inline uint8_t *page_ptr(guest *g, uint64_t idx)
{
    if (idx < g->ram0_pages)
        return g->ram[0].base + idx * PAGE;
    return g->ram[1].base + (idx - g->ram0_pages) * PAGE;
}

/* ------------------------------------------------------------- memory */

/* name: the memfd's name with --mem-backend memfd (NULL: anonymous). */
static int region_map(region *r, uint64_t len, const char *name, lm_error *err)
{
    r->map_len = len + HUGE_ALIGN;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        return lm_error_set(err, -errno, "cannot map %" PRIu64 " bytes: %s", len, strerror(errno));
    }
    /* Align to 2 MiB so the whole block can be backed by huge pages: a
     * first-touch 4 KiB fault costs 10-15 us here, THP makes filling and
     * loading ~10x faster (DESIGN §7). */
    uintptr_t a = ((uintptr_t)r->map + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
    r->base = (uint8_t *)a;
    r->len = len;
    if (name) {
        /* QEMU's memory-backend-memfd: shared memory mapped over the
         * aligned part of the reservation.  The mapping keeps the file
         * alive, the descriptor is not needed afterwards. */
        int fd = memfd_create(name, MFD_CLOEXEC);
        if (fd < 0)
            return lm_error_set(err, -errno, "memfd_create(%s): %s", name, strerror(errno));
        void *p = MAP_FAILED;
        if (ftruncate(fd, (off_t)len) == 0)
            p = mmap(r->base, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        int e = errno;
        close(fd);
        if (p == MAP_FAILED)
            return lm_error_set(err, -e, "cannot map a memfd of %" PRIu64 " bytes: %s", len,
                                strerror(e));
    }
    madvise(r->base, len, MADV_HUGEPAGE); /* a hint: failure is harmless */
    return 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* --prealloc: every page present before the guest serves, so that a
 * destination's load is not paced by first-touch page zeroing (0.3-1.7
 * s/GiB on this machine kind, perf-anchors B1).  Leaves the memory zero. */
static int prealloc_memory(guest *g)
{
    region *rs[] = {&g->ram[0], &g->ram[1], &g->ledger_r};
    for (unsigned i = 0; i < sizeof rs / sizeof rs[0]; i++)
        if (madvise(rs[i]->base, rs[i]->len, MADV_POPULATE_WRITE) < 0)
            return -errno;
    return 0;
}

static void region_unmap(region *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    r->map = NULL;
}

/* ----------------------------------------------- parallel page sweeps */

typedef struct sweep {
    guest *g;
    uint64_t lo, hi;
    enum { SWEEP_FILL_RANDOM, SWEEP_FILL_ZERO, SWEEP_VERIFY } op;
    const char *name;
    /* verify results */
    uint64_t bad, written, first_bad;
} sweep;

static void *sweep_run(void *arg)
{
    sweep *s = arg;
    guest *g = s->g;
    if (s->name)
        pthread_setname_np(pthread_self(), s->name);
    s->bad = s->written = 0;
    s->first_bad = UINT64_MAX;
    for (uint64_t i = s->lo; i < s->hi; i++) {
        uint8_t *p = page_ptr(g, i);
        switch (s->op) {
        case SWEEP_FILL_RANDOM:
            page_write(p, i, 1);
            g->ledger[i] = 1;
            break;
        case SWEEP_FILL_ZERO:
            memset(p, 0, PAGE);
            break;
        case SWEEP_VERIFY: {
            uint64_t v = g->ledger[i];
            bool ok = v ? page_ok(p, i, v) : page_zero(p);
            if (v)
                s->written++;
            if (!ok) {
                if (!s->bad)
                    s->first_bad = i;
                s->bad++;
            }
            break;
        }
        }
    }
    return NULL;
}

/* Splits [0, npages) in two halves: one for a helper thread, one for the
 * caller (the machine has 2 cores). */
static void sweep_all(guest *g, int op, const char *name, sweep out[2])
{
    uint64_t half = g->npages / 2;
    out[0] = (sweep){.g = g, .lo = 0, .hi = half, .op = op, .name = name};
    out[1] = (sweep){.g = g, .lo = half, .hi = g->npages, .op = op, .name = NULL};
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, sweep_run, &out[0]) == 0;
    if (!threaded)
        sweep_run(&out[0]);
    sweep_run(&out[1]);
    if (threaded)
        pthread_join(t, NULL);
}

/* --------------------------------------------------- run control (vCPUs) */

static bool stop_requested(guest *g)
{
    return __atomic_load_n(&g->stop_req, __ATOMIC_ACQUIRE);
}

/* Parks the calling worker while stop is requested.  Returns false when the
 * guest is quitting. */
static bool park(guest *g)
{
    pthread_mutex_lock(&g->lock);
    g->parked++;
    pthread_cond_broadcast(&g->park_cond);
    while (g->stop_req && !g->quit)
        pthread_cond_wait(&g->run_cond, &g->lock);
    g->parked--;
    bool quit = g->quit;
    pthread_mutex_unlock(&g->lock);
    return !quit;
}

/* Sleeps until *deadline (CLOCK_MONOTONIC) for pacing.  A sleeping worker
 * is not writing, so it counts as parked and stop() need not wait for it;
 * a stop request during the sleep holds it until start().  Returns false
 * when the guest is quitting. */
static bool nap(guest *g, const struct timespec *deadline)
{
    pthread_mutex_lock(&g->lock);
    g->parked++;
    pthread_cond_broadcast(&g->park_cond);
    while (!g->quit) {
        if (g->stop_req) {
            pthread_cond_wait(&g->run_cond, &g->lock);
            continue;
        }
        if (pthread_cond_timedwait(&g->run_cond, &g->lock, deadline) == ETIMEDOUT)
            break;
    }
    g->parked--;
    bool quit = g->quit;
    pthread_mutex_unlock(&g->lock);
    return !quit;
}

/* lm_host_ops.stop: returns once every worker is between write pairs. */
static void host_stop(void *opaque)
{
    guest *g = opaque;
    pthread_mutex_lock(&g->lock);
    __atomic_store_n(&g->stop_req, true, __ATOMIC_RELEASE);
    while (g->parked < g->alive)
        pthread_cond_wait(&g->park_cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    for (unsigned i = 0; i < g->nbulk; i++)
        if (g->bulks[i])
            bulk_stop(g->bulks[i]);
}

/* lm_host_ops.start: releases the workers (they continue from the ledger,
 * which a destination has just received). */
static void host_start(void *opaque)
{
    guest *g = opaque;
    for (unsigned i = 0; i < g->nbulk; i++)
        if (g->bulks[i])
            bulk_start(g->bulks[i]);
    pthread_mutex_lock(&g->lock);
    if (!g->quit) {
        __atomic_store_n(&g->stop_req, false, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&g->run_cond);
    }
    pthread_mutex_unlock(&g->lock);
}

static void timespec_add_ns(struct timespec *t, uint64_t ns)
{
    ns += (uint64_t)t->tv_nsec;
    t->tv_sec += (time_t)(ns / 1000000000u);
    t->tv_nsec = (long)(ns % 1000000000u);
}

static int64_t timespec_diff_ns(const struct timespec *a, const struct timespec *b)
{
    return (int64_t)(a->tv_sec - b->tv_sec) * 1000000000 + (a->tv_nsec - b->tv_nsec);
}

/* One write pair: the page, then its ledger entry, so the pair is complete
 * before the caller's next stop check.  The version continues from the
 * ledger, which on a destination is the migrated one. */
static GUEST_MEMORY_WRITER void write_pair(guest *g, uint64_t idx)
{
    uint64_t ver = g->ledger[idx] + 1;
    if (sparse_body && ver > 1)
        ((uint64_t *)page_ptr(g, idx))[1] = ver; /* the one word that changes */
    else
        page_write(page_ptr(g, idx), idx, ver);
    g->ledger[idx] = ver;
}

/* xorshift64 step of a random worker: one per write. */
static inline uint64_t rng_next(uint64_t r)
{
    r ^= r >> 12;
    r ^= r << 25;
    r ^= r >> 27;
    return r;
}

static uint64_t rng_first(uint64_t seed, unsigned id)
{
    return mix64(seed ^ ((uint64_t)(id + 1) * 0xD1B54A32D192ED03ull)) | 1;
}

static uint64_t worker_owned(guest *g, unsigned id)
{
    uint64_t limit = g->wl == WL_HOT ? g->hot_size / PAGE : g->npages;
    return limit > id ? (limit - id + g->nthreads - 1) / g->nthreads : 0;
}

static void *worker_run(void *arg)
{
    worker *w = arg;
    guest *g = w->g;
    char name[16];
    snprintf(name, sizeof name, "guest-w%u", w->id);
    pthread_setname_np(pthread_self(), name);

    uint64_t limit = g->wl == WL_HOT ? g->hot_size / PAGE : g->npages;
    uint64_t step = g->nthreads;
    uint64_t owned = limit > w->id ? (limit - w->id + step - 1) / step : 0;

    /* Pacing (random): batches of ~1 ms worth of pages, then an absolute
     * sleep to the batch's deadline, so the rate holds without spinning. */
    bool paced = (g->wl == WL_RANDOM || g->wl == WL_SPARSE) && g->dirty_rate > 0;
    double pps = (double)g->dirty_rate / PAGE / g->nthreads;
    uint64_t batch = paced ? (uint64_t)(pps / 1000) : 0;
    if (paced && batch < 1)
        batch = 1;
    uint64_t period_ns = paced ? (uint64_t)((double)batch * 1e9 / pps) : 0;
    uint64_t left = batch;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);

    for (;;) {
        if (stop_requested(g) || owned == 0) {
            if (owned == 0) {
                /* Nothing to write (more threads than pages): just wait. */
                pthread_mutex_lock(&g->lock);
                g->parked++;
                pthread_cond_broadcast(&g->park_cond);
                while (!g->quit)
                    pthread_cond_wait(&g->run_cond, &g->lock);
                g->parked--;
                pthread_mutex_unlock(&g->lock);
                break;
            }
            if (!park(g))
                break;
            clock_gettime(CLOCK_MONOTONIC, &deadline);
            left = batch;
        }
        uint64_t k;
        if (g->wl == WL_RANDOM) {
            w->rng = rng_next(w->rng);
            k = (w->rng * 0x2545F4914F6CDD1Dull) % owned;
        } else {
            k = w->cursor;
            if (++w->cursor == owned)
                w->cursor = 0;
        }
        write_pair(g, w->id + k * step);
        __atomic_store_n(&w->writes, w->writes + 1, __ATOMIC_RELAXED);

        /* The library's throttle: sleep where it says, and do not catch
         * up afterwards (the pacing restarts from now). */
        if (g->thr.pct || g->thr.limit_bps) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
            uint64_t ns = gthr_step(&g->thr, &w->thr, now_ns, PAGE);
            if (ns) {
                struct timespec until = now;
                timespec_add_ns(&until, ns);
                if (!nap(g, &until))
                    break;
                gthr_slept(&g->thr, &w->thr, ns);
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                left = batch;
            }
        }

        if (paced && --left == 0) {
            left = batch;
            timespec_add_ns(&deadline, period_ns);
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            /* Far behind (a stop, a slow period): do not burst to catch up. */
            if (timespec_diff_ns(&now, &deadline) > 100 * 1000000)
                deadline = now;
            if (timespec_diff_ns(&deadline, &now) > 0 && !nap(g, &deadline))
                break;
        }
    }

    pthread_mutex_lock(&g->lock);
    g->alive--;
    pthread_cond_broadcast(&g->park_cond);
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

static uint64_t total_writes(guest *g)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < g->nstarted; i++)
        n += __atomic_load_n(&g->workers[i].writes, __ATOMIC_RELAXED);
    return n;
}

static void *stats_run(void *arg)
{
    guest *g = arg;
    pthread_setname_np(pthread_self(), "guest-stats");
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    pthread_mutex_lock(&g->lock);
    while (!g->quit) {
        unsigned slot = g->nsamp % SAMPLES;
        g->samp_ms[slot] = cli_now_ms();
        g->samp_w[slot] = total_writes(g);
        g->nsamp++;
        timespec_add_ns(&next, SAMPLE_MS * 1000000ull);
        while (!g->quit && pthread_cond_timedwait(&g->run_cond, &g->lock, &next) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

/* Bytes/s written over the last second (the oldest sample of the ring). */
static double recent_rate(guest *g)
{
    uint64_t now = cli_now_ms(), w = total_writes(g), t0, w0;
    pthread_mutex_lock(&g->lock);
    if (g->nsamp == 0) {
        t0 = g->start_ms;
        w0 = g->rate_base_writes;
    } else {
        unsigned oldest = g->nsamp < SAMPLES ? 0 : g->nsamp % SAMPLES;
        t0 = g->samp_ms[oldest];
        w0 = g->samp_w[oldest];
    }
    pthread_mutex_unlock(&g->lock);
    if (now <= t0 || w < w0)
        return 0;
    return (double)(w - w0) * PAGE * 1000.0 / (double)(now - t0);
}

/* Sets quit, wakes and joins every thread of ours. */
static void workload_quit(guest *g)
{
    pthread_mutex_lock(&g->lock);
    g->quit = true;
    /* Workers look only at stop_req between write pairs: raise it so that
     * they go to park(), which sees quit. */
    __atomic_store_n(&g->stop_req, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&g->run_cond);
    pthread_mutex_unlock(&g->lock);
    for (unsigned i = 0; i < g->nstarted; i++)
        pthread_join(g->workers[i].thread, NULL);
    if (g->stats_started)
        pthread_join(g->stats_thread, NULL);
    g->stats_started = false;
}

/* ---------------------------------------------------------- cpu device */

/* The workload's "vCPU state", a non-iterable device sent once at
 * switchover: {u32 magic, u32 workload, u32 threads, u32 0, u64 seed,
 * u64 base_writes} then per thread {u64 writes, u64 rng, u64 cursor}.
 * x-guest-verify checks it against memory: the ledger's versions add up
 * to base_writes + the writes counters, and each random worker's RNG is
 * exactly `writes` steps from its seed, so a lost or stale cpu state is
 * found.  Runs with the workload stopped (library contract). */
#define CPU_HDR 32
#define CPU_PER_THREAD 24

static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8); /* little-endian hosts, like the rest of livemig */
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The workers wrote their registers before parking under g->lock:
 * taking it orders this thread after those writes. */
static void sync_with_parked_workers(guest *g)
{
    pthread_mutex_lock(&g->lock);
    pthread_mutex_unlock(&g->lock);
}

static int cpu_save_state(void *opaque, lm_device_out *out, lm_error *err)
{
    guest *g = opaque;
    sync_with_parked_workers(g);
    uint8_t buf[CPU_HDR + MAX_THREADS * CPU_PER_THREAD];
    uint32_t hdr[4] = {CPU_MAGIC, (uint32_t)g->wl, g->nthreads, 0};
    memcpy(buf, hdr, sizeof hdr);
    put64(buf + 16, g->seed);
    put64(buf + 24, g->base_writes);
    for (unsigned i = 0; i < g->nthreads; i++) {
        uint8_t *p = buf + CPU_HDR + i * CPU_PER_THREAD;
        worker *w = &g->workers[i];
        bool started = i < g->nstarted;
        put64(p, started ? __atomic_load_n(&w->writes, __ATOMIC_RELAXED) : 0);
        put64(p + 8, w->rng);
        put64(p + 16, w->cursor);
    }
    return lm_device_put(out, buf, CPU_HDR + g->nthreads * CPU_PER_THREAD, err);
}

static int cpu_load_state(void *opaque, uint32_t version, const uint8_t *d, size_t len,
                          lm_error *err)
{
    guest *g = opaque;
    (void)version;
    /* Test knob (never set in production): a device whose load fails at
     * the switchover, the only time this non-iterable state is sent. */
    const char *knob = getenv("LIVEMIG_TEST_CPU_LOAD");
    if (knob && !strcmp(knob, "fail"))
        return lm_error_set(err, -EIO, "cpu: load refused (test knob LIVEMIG_TEST_CPU_LOAD=fail)");
    uint32_t hdr[4];
    if (len < CPU_HDR)
        return lm_error_set(err, -EPROTO, "cpu: state of %zu bytes, header needs %d", len, CPU_HDR);
    memcpy(hdr, d, sizeof hdr);
    if (hdr[0] != CPU_MAGIC || hdr[3] != 0)
        return lm_error_set(err, -EPROTO, "cpu: bad magic 0x%08x", hdr[0]);
    if (hdr[1] > WL_SPARSE || hdr[2] < 1 || hdr[2] > MAX_THREADS)
        return lm_error_set(err, -EPROTO, "cpu: workload %u / %u threads out of range", hdr[1],
                            hdr[2]);
    if (len != CPU_HDR + (size_t)hdr[2] * CPU_PER_THREAD)
        return lm_error_set(err, -EPROTO, "cpu: %zu bytes for %u threads", len, hdr[2]);
    uint64_t base = get64(d + 24), total = base;
    for (unsigned i = 0; i < hdr[2]; i++)
        total += get64(d + CPU_HDR + i * CPU_PER_THREAD);
    /* Our workers continue the source's only when they are the same
     * vCPUs (same workload and thread count); otherwise they keep their
     * own registers and all the source's writes become base writes. */
    bool same = hdr[1] == (uint32_t)g->wl && hdr[2] == g->nthreads &&
                (g->wl == WL_IDLE || g->nstarted == g->nthreads);
    sync_with_parked_workers(g);
    /* Sparse pages keep version 1's body: check (and write) them so from
     * now on, whatever this guest's own workload (its workers are parked,
     * the lock above orders this before their next write). */
    if (hdr[1] == WL_SPARSE)
        sparse_body = true;
    if (same) {
        g->seed = get64(d + 16);
        __atomic_store_n(&g->base_writes, base, __ATOMIC_RELAXED);
        for (unsigned i = 0; i < hdr[2]; i++) {
            const uint8_t *p = d + CPU_HDR + i * CPU_PER_THREAD;
            worker *w = &g->workers[i];
            __atomic_store_n(&w->writes, get64(p), __ATOMIC_RELAXED);
            w->rng = get64(p + 8);
            w->cursor = get64(p + 16);
            uint64_t owned = worker_owned(g, i);
            if (g->wl != WL_RANDOM && g->wl != WL_IDLE && owned && w->cursor >= owned)
                return lm_error_set(
                    err, -EPROTO, "cpu: thread %u cursor %" PRIu64 " beyond its %" PRIu64 " pages",
                    i, w->cursor, owned);
        }
    } else {
        uint64_t ours = total_writes(g);
        __atomic_store_n(&g->base_writes, total - ours, __ATOMIC_RELAXED);
    }
    g->cpu_loaded = true;
    g->cpu_adopted = same;
    /* The counters jumped to the source's: the write rate starts anew
     * from here, or it would count the source's writes as this second's. */
    uint64_t now_writes = total_writes(g);
    pthread_mutex_lock(&g->lock);
    g->nsamp = 0;
    g->start_ms = cli_now_ms();
    g->rate_base_writes = now_writes;
    pthread_mutex_unlock(&g->lock);
    return 0;
}

static const lm_device_ops cpu_ops = {
    .save_state = cpu_save_state,
    .load_state = cpu_load_state,
};

/* Checks the cpu state against memory (workload stopped); fills why. */
static bool cpu_verify(guest *g, char *why, size_t n)
{
    /* A guest started as a destination leaves inmigrate only through a
     * migration (cont is refused there), and verify is refused in
     * inmigrate: so it came in by migration, and a stream that never
     * carried the vCPUs' state must not pass for a complete one (issue 12,
     * defect 2), even when the ledger happens to agree (an idle guest). */
    if (g->incoming && !g->cpu_loaded) {
        snprintf(why, n,
                 "the guest came in by migration but its cpu state was never loaded (an "
                 "incomplete stream)");
        return false;
    }
    sync_with_parked_workers(g);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < g->npages; i++)
        sum += g->ledger[i];
    uint64_t writes = total_writes(g);
    if (sum != g->base_writes + writes) {
        snprintf(why, n,
                 "ledger versions add up to %" PRIu64 ", cpu state says %" PRIu64 " + %" PRIu64
                 " writes",
                 sum, g->base_writes, writes);
        return false;
    }
    for (unsigned i = 0; i < g->nstarted; i++) {
        worker *w = &g->workers[i];
        uint64_t wr = __atomic_load_n(&w->writes, __ATOMIC_RELAXED);
        if (g->wl == WL_RANDOM) {
            uint64_t r = rng_first(g->seed, i);
            for (uint64_t k = 0; k < wr; k++)
                r = rng_next(r);
            if (r != w->rng) {
                snprintf(why, n, "thread %u: RNG state is not %" PRIu64 " steps from its seed", i,
                         wr);
                return false;
            }
        } else if (g->wl != WL_IDLE) {
            uint64_t owned = worker_owned(g, i);
            if (owned && w->cursor != wr % owned) {
                snprintf(why, n, "thread %u: cursor %" PRIu64 " after %" PRIu64 " writes", i,
                         w->cursor, wr);
                return false;
            }
        }
    }
    snprintf(why, n, "ok");
    return true;
}

/* ---------------------------------------------------------- QMP commands */

static int reply(json_t *obj, char **ret_json, lm_error *err)
{
    if (!obj)
        return lm_error_set(err, -ENOMEM, "out of memory");
    *ret_json = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!*ret_json)
        return lm_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

/* The guest's commands take no arguments: the server refuses any
 * (QEMU's "Parameter 'x' is unexpected"), so a mistyped request is not
 * run as if it were right (issue 12, defect 3: quit took {"bogus": 1}). */
static const lm_qmp_arg_spec no_args[] = {{NULL}};

static int qmp_quit(void *opaque, const char *args, char **ret_json, lm_error *err)
{
    guest *g = opaque;
    uint64_t one = 1;
    /* The main thread tears down; this thread must return so that the
     * reply {} goes out first. */
    if (write(g->quit_fd, &one, sizeof one) != sizeof one)
        return lm_error_set(err, -errno, "quit: %s", strerror(errno));
    *ret_json = NULL;
    return 0;
}

static int qmp_verify(void *opaque, const char *args, char **ret_json, lm_error *err)
{
    guest *g = opaque;
    lm_runstate rs = lm_vm_runstate(g->m);
    if (rs == LM_RUN_RUNNING)
        return lm_error_set(err, -EBUSY,
                            "x-guest-verify: the guest is running; stop it "
                            "first (QMP 'stop')");
    /* While a stream is loading, the loader writes guest memory: a check now
     * would race with it and report pages that are merely not there yet. */
    if (rs == LM_RUN_INMIGRATE)
        return lm_error_set(err, -EBUSY,
                            "x-guest-verify: an incoming migration is in "
                            "progress (run state inmigrate)");
    sweep s[2];
    sweep_all(g, SWEEP_VERIFY, "guest-verify", s);
    uint64_t bad = s[0].bad + s[1].bad;
    uint64_t first = s[0].bad ? s[0].first_bad : s[1].bad ? s[1].first_bad : UINT64_MAX;
    char why[256];
    bool cpu_ok = cpu_verify(g, why, sizeof why);
    bool all = bad == 0 && cpu_ok;
    json_t *devs = json_array();
    for (unsigned i = 0; devs && i < g->nbulk; i++) {
        uint64_t bb;
        int64_t fb;
        bool ok = bulk_verify(g->bulks[i], &bb, &fb);
        all = all && ok;
        json_array_append_new(devs, json_pack("{s:s, s:i, s:b, s:I, s:I}", "name", "bulk",
                                              "instance", (int)i, "ok", ok, "bad-chunks",
                                              (json_int_t)bb, "first-bad", (json_int_t)fb));
    }
    if (!devs)
        return lm_error_set(err, -ENOMEM, "out of memory");
    return reply(json_pack("{s:b, s:I, s:I, s:I, s:I, s:{s:b, s:s, s:b}, s:o}", "ok", all, "pages",
                           (json_int_t)g->npages, "bad-pages", (json_int_t)bad, "first-bad",
                           (json_int_t)(bad ? (int64_t)first : -1), "written-pages",
                           (json_int_t)(s[0].written + s[1].written), "cpu", "ok", cpu_ok, "detail",
                           why, "loaded", g->cpu_loaded, "devices", devs),
                 ret_json, err);
}

static int qmp_stats(void *opaque, const char *args, char **ret_json, lm_error *err)
{
    guest *g = opaque;
    pthread_mutex_lock(&g->lock);
    bool running = !g->stop_req;
    pthread_mutex_unlock(&g->lock);
    json_t *devs = json_array();
    for (unsigned i = 0; devs && i < g->nbulk; i++) {
        const bulk_cfg *c = bulk_config(g->bulks[i]);
        json_array_append_new(devs, json_pack("{s:s, s:i, s:I, s:I, s:b, s:I, s:b}", "name", "bulk",
                                              "instance", (int)i, "size", (json_int_t)c->size,
                                              "initial", (json_int_t)c->initial, "ack", c->ack,
                                              "writes", (json_int_t)bulk_writes(g->bulks[i]),
                                              "initial-loaded", bulk_initial_loaded(g->bulks[i])));
    }
    if (!devs)
        return lm_error_set(err, -ENOMEM, "out of memory");
    /* What the library's throttle asks now, and how long the workload
     * threads slept for it in all. */
    json_t *thr = json_pack("{s:i, s:I, s:I}", "cpu-percent", (int)g->thr.pct, "dirty-limit-bps",
                            (json_int_t)g->thr.limit_bps, "slept-ns", (json_int_t)g->thr.slept_ns);
    if (!thr) {
        json_decref(devs);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    /* total-writes: every write in this memory's history (the fill's and
     * a source's, which the cpu state brought, plus ours): on a stopped
     * guest, the sum of the ledger's versions. */
    uint64_t writes = total_writes(g);
    uint64_t all = __atomic_load_n(&g->base_writes, __ATOMIC_RELAXED) + writes;
    return reply(json_pack("{s:I, s:I, s:I, s:b, s:I, s:s, s:i, s:o, s:o}", "writes",
                           (json_int_t)writes, "total-writes", (json_int_t)all, "rate",
                           (json_int_t)recent_rate(g), "running", running, "mem",
                           (json_int_t)g->mem, "workload", workload_names[g->wl], "threads",
                           (int)g->nthreads, "devices", devs, "throttle", thr),
                 ret_json, err);
}

/* ---------------------------------------------------------------- flags */

void usage_guest(FILE *f)
{
    fprintf(f, "usage: livemig guest --qmp unix:PATH [options]\n\n"
               "Runs the built-in workload host: guest RAM (blocks ram0, ram1 and ledger)\n"
               "written by workload threads, served over QMP.  Every page carries its index\n"
               "and version, so x-guest-verify finds any lost, stale or torn page.\n\n"
               "options:\n"
               "  --qmp unix:PATH        QMP socket to serve (required)\n"
               "  --qmp-mode OCTAL       its permissions (default 0600, whatever the umask)\n"
               "  --mem SIZE             guest RAM, K/M/G suffixes, multiple of 4K, >= 1M\n"
               "                         (default 256M)\n"
               "  --incoming URI|defer   start as a migration destination: listen on URI\n"
               "                         (tcp:HOST:PORT, unix:PATH), or wait for QMP\n"
               "                         migrate-incoming with 'defer'\n"
               "  --name NAME            the guest's name (QMP query-name; QEMU's -name)\n"
               "  --uuid UUID            its UUID (QMP query-uuid; default all zeros)\n"
               "  --object TYPE,id=ID,...  QEMU's -object: tls-creds-x509, tls-creds-psk or\n"
               "                         authz-list for migration TLS (repeatable)\n"
               "  --workload KIND        idle | random | sequential | hot | sparse (default\n"
               "                         idle); sparse: sequential, each write changes one\n"
               "                         8-byte word of a page (its version)\n"
               "  --dirty-rate RATE      random, sparse: pages dirtied per second x 4096\n"
               "                         (bytes/s) over all threads, K/M/G suffixes,\n"
               "                         0 = as fast as possible (default 64M)\n"
               "  --threads N            workload threads, 1..64 (default 1)\n"
               "  --seed N               random workload seed (default: from the clock)\n"
               "  --fill none|random|zero  pre-fill every page before serving: random =\n"
               "                         written once (version 1), zero = populated zero\n"
               "                         (default none)\n"
               "  --hot-size SIZE        hot: bytes of the hot set at the start of RAM\n"
               "                         (default 64M, at most --mem)\n"
               "  --pattern random|text  what written pages hold besides their header:\n"
               "                         random (default) or text, which compresses ~4x\n"
               "  --prealloc             populate all guest memory before serving (QEMU's\n"
               "                         -mem-prealloc): a destination then loads at wire\n"
               "                         speed instead of paying the kernel's page zeroing\n"
               "  --mem-backend anon|memfd  guest RAM as private anonymous memory (default)\n"
               "                         or shared memory (QEMU's memory-backend-memfd);\n"
               "                         postcopy places memfd pages without a copy\n"
               "  --device bulk,size=SIZE,initial=SIZE,dirty-rate=RATE[,ack=on|off][,version=N]\n"
               "                         a VFIO-like device with its own memory, whose initial\n"
               "                         data the destination loads before the switch when\n"
               "                         switchover-ack is on (ack=off: an older device);\n"
               "                         repeatable (instances 0..3)\n\n"
               "Every guest also has a non-iterable \"cpu\" device (workload counters and\n"
               "RNG state), checked by x-guest-verify like memory and bulk devices.\n"
               "QMP commands besides QEMU's: quit, x-guest-verify (guest stopped),\n"
               "x-guest-stats.  SIGINT/SIGTERM exit cleanly like quit.\n");
}

enum {
    O_MEM = 1,
    O_QMP,
    O_QMP_MODE,
    O_INCOMING,
    O_WORKLOAD,
    O_RATE,
    O_THREADS,
    O_SEED,
    O_FILL,
    O_HOT,
    O_PREALLOC,
    O_PATTERN,
    O_DEVICE,
    O_BACKEND,
    O_NAME,
    O_UUID,
    O_OBJECT,
};

static const cli_opt guest_opts[] = {
    {"mem", true, O_MEM},
    {"qmp", true, O_QMP},
    {"qmp-mode", true, O_QMP_MODE},
    {"incoming", true, O_INCOMING},
    {"workload", true, O_WORKLOAD},
    {"dirty-rate", true, O_RATE},
    {"threads", true, O_THREADS},
    {"seed", true, O_SEED},
    {"fill", true, O_FILL},
    {"hot-size", true, O_HOT},
    {"prealloc", false, O_PREALLOC},
    {"pattern", true, O_PATTERN},
    {"device", true, O_DEVICE},
    {"mem-backend", true, O_BACKEND},
    {"name", true, O_NAME},
    {"uuid", true, O_UUID},
    {"object", true, O_OBJECT},
    {NULL, false, 0},
};

static int parse_flags(guest *g, int argc, char **argv)
{
    cli_args a;
    cli_args_init(&a, "guest", argc, argv);
    const char *v;
    int id;
    bool have_qmp = false;
    uint64_t n;

    while ((id = cli_next(&a, guest_opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage_guest(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            cli_err("guest", "unexpected argument '%s'", v);
            return CLI_EXIT_USAGE;
        case O_MEM:
            if (!cli_parse_size(v, &g->mem)) {
                cli_err("guest", "--mem: bad size '%s' (e.g. 256M, 1G)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_QMP:
            if (!strncmp(v, "unix:", 5) && v[5]) {
                snprintf(g->qmp_uri, sizeof g->qmp_uri, "%s", v);
            } else if (v[0] == '/' || v[0] == '.') {
                snprintf(g->qmp_uri, sizeof g->qmp_uri, "unix:%s", v);
            } else {
                cli_err("guest", "--qmp: '%s' is not unix:PATH", v);
                return CLI_EXIT_USAGE;
            }
            have_qmp = true;
            break;
        case O_QMP_MODE: {
            char *end = NULL;
            unsigned long mode = strtoul(v, &end, 8);
            if (!*v || *end || mode == 0 || mode > 0777) {
                cli_err("guest", "--qmp-mode: '%s' is not an octal mode in 1..0777 (e.g. 0660)", v);
                return CLI_EXIT_USAGE;
            }
            g->qmp_mode = (unsigned)mode;
            break;
        }
        case O_INCOMING:
            if (!v[0]) {
                cli_err("guest", "--incoming: empty URI (use a URI or 'defer')");
                return CLI_EXIT_USAGE;
            }
            g->incoming = v;
            break;
        case O_NAME:
            g->name = v;
            break;
        case O_UUID:
            g->uuid = v;
            break;
        case O_WORKLOAD: {
            int w = -1;
            for (int i = 0; i < (int)(sizeof workload_names / sizeof workload_names[0]); i++)
                if (!strcmp(v, workload_names[i]))
                    w = i;
            if (w < 0) {
                cli_err("guest",
                        "--workload: unknown workload '%s' (idle, random, "
                        "sequential, hot, sparse)",
                        v);
                return CLI_EXIT_USAGE;
            }
            g->wl = (workload)w;
            sparse_body = g->wl == WL_SPARSE;
            break;
        }
        case O_RATE:
            if (!cli_parse_size(v, &g->dirty_rate)) {
                cli_err("guest", "--dirty-rate: bad rate '%s' (bytes/s, e.g. 64M)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_THREADS:
            if (!cli_parse_u64(v, &n) || n < 1 || n > MAX_THREADS) {
                cli_err("guest", "--threads: '%s' is not a number in 1..%d", v, MAX_THREADS);
                return CLI_EXIT_USAGE;
            }
            g->nthreads = (unsigned)n;
            break;
        case O_SEED:
            if (!cli_parse_u64(v, &g->seed)) {
                cli_err("guest", "--seed: '%s' is not an unsigned integer", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_FILL:
            if (!strcmp(v, "none"))
                g->fill = FILL_NONE;
            else if (!strcmp(v, "random"))
                g->fill = FILL_RANDOM;
            else if (!strcmp(v, "zero"))
                g->fill = FILL_ZERO;
            else {
                cli_err("guest", "--fill: unknown mode '%s' (none, random, zero)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_HOT:
            if (!cli_parse_size(v, &g->hot_size) || g->hot_size < PAGE || g->hot_size % PAGE) {
                cli_err("guest", "--hot-size: bad size '%s' (a multiple of 4K, >= 4K)", v);
                return CLI_EXIT_USAGE;
            }
            g->hot_size_set = true;
            break;
        case O_PREALLOC:
            g->prealloc = true;
            break;
        case O_BACKEND:
            if (!strcmp(v, "anon") || !strcmp(v, "memfd")) {
                g->memfd = !strcmp(v, "memfd");
            } else {
                cli_err("guest", "--mem-backend: unknown backend '%s' (anon, memfd)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_PATTERN:
            if (!strcmp(v, "text") || !strcmp(v, "random")) {
                text_pattern = !strcmp(v, "text");
            } else {
                cli_err("guest", "--pattern: unknown pattern '%s' (random, text)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_OBJECT:
            if (g->nobjects >= MAX_OBJECTS) {
                cli_err("guest", "--object: at most %d objects", MAX_OBJECTS);
                return CLI_EXIT_USAGE;
            }
            g->objects[g->nobjects++] = v;
            break;
        case O_DEVICE: {
            lm_error e = {0};
            if (strncmp(v, "bulk,", 5) && strcmp(v, "bulk")) {
                cli_err("guest", "--device: unknown device '%s' (bulk,size=SIZE,...)", v);
                return CLI_EXIT_USAGE;
            }
            if (g->nbulk >= MAX_BULK) {
                cli_err("guest", "--device: at most %d bulk devices", MAX_BULK);
                return CLI_EXIT_USAGE;
            }
            if (!bulk_parse(v[4] ? v + 5 : "", &g->bulk_cfgs[g->nbulk], &e)) {
                cli_err("guest", "--device: %s", e.msg);
                return CLI_EXIT_USAGE;
            }
            g->nbulk++;
            break;
        }
        }
    }
    if (!have_qmp) {
        cli_err("guest", "--qmp unix:PATH is required");
        return CLI_EXIT_USAGE;
    }
    if (g->mem < (1u << 20) || g->mem % PAGE) {
        cli_err("guest", "--mem: %" PRIu64 " bytes: must be a multiple of 4K and at least 1M",
                g->mem);
        return CLI_EXIT_USAGE;
    }
    if (g->hot_size > g->mem) {
        if (g->hot_size_set && g->wl == WL_HOT) {
            cli_err("guest", "--hot-size: %" PRIu64 " bytes exceeds --mem (%" PRIu64 ")",
                    g->hot_size, g->mem);
            return CLI_EXIT_USAGE;
        }
        g->hot_size = g->mem;
    }
    return -1; /* go on */
}

/* ------------------------------------------------------------------ main */

static int setup_memory(guest *g, lm_error *err)
{
    g->npages = g->mem / PAGE;
    g->ram0_pages = g->npages * 3 / 4;
    uint64_t ram1_pages = g->npages - g->ram0_pages;
    uint64_t ledger_len = (g->npages * 8 + PAGE - 1) / PAGE * PAGE;
    int rc;
    if ((rc = region_map(&g->ram[0], g->ram0_pages * PAGE, g->memfd ? "ram0" : NULL, err)) < 0 ||
        (rc = region_map(&g->ram[1], ram1_pages * PAGE, g->memfd ? "ram1" : NULL, err)) < 0 ||
        (rc = region_map(&g->ledger_r, ledger_len, g->memfd ? "ledger" : NULL, err)) < 0)
        return rc;
    g->ledger = (uint64_t *)g->ledger_r.base;
    return 0;
}

int cmd_guest(int argc, char **argv)
{
    /* aligned_alloc: the per-worker counters sit on their own cache lines. */
    guest *g = aligned_alloc(64, (sizeof(guest) + 63) / 64 * 64);
    lm_error err = {0};
    int ret = CLI_EXIT_FAIL, sfd = -1;
    bool locks_ready = false;

    if (!g) {
        cli_err("guest", "out of memory");
        return CLI_EXIT_FAIL;
    }
    memset(g, 0, sizeof *g);
    g->mem = 256u << 20;
    g->nthreads = 1;
    g->dirty_rate = 64u << 20;
    g->hot_size = 64u << 20;
    g->quit_fd = -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    g->seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    int prc = parse_flags(g, argc, argv);
    if (prc >= 0) {
        free(g);
        return prc;
    }
    g->start_ms = cli_now_ms();

    /* Signals are taken synchronously through a signalfd by the main
     * thread; block them before any thread exists so all inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    g->quit_fd = eventfd(0, EFD_CLOEXEC);
    if (sfd < 0 || g->quit_fd < 0) {
        cli_err("guest", "signalfd/eventfd: %s", strerror(errno));
        goto out;
    }

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->park_cond, NULL);
    pthread_cond_init(&g->run_cond, &ca);
    pthread_condattr_destroy(&ca);
    locks_ready = true;

    if (setup_memory(g, &err) < 0) {
        cli_err("guest", "%s", err.msg);
        goto out;
    }
    if (g->fill != FILL_NONE) {
        sweep s[2];
        sweep_all(g, g->fill == FILL_RANDOM ? SWEEP_FILL_RANDOM : SWEEP_FILL_ZERO, "guest-fill", s);
        if (g->fill == FILL_RANDOM)
            g->base_writes = g->npages; /* version 1 of every page */
    } else if (g->prealloc && prealloc_memory(g) < 0) {
        /* Kernels before 5.14 lack MADV_POPULATE_WRITE: write the zeros. */
        sweep s[2];
        sweep_all(g, SWEEP_FILL_ZERO, "guest-fill", s);
    }

    static const lm_host_ops ops = {.stop = host_stop, .start = host_start};
    bool incoming = g->incoming != NULL;
    if (lm_mig_new(&ops, g, incoming ? LM_RUN_INMIGRATE : LM_RUN_RUNNING, &g->m, &err) < 0 ||
        lm_ram_add(g->m, "ram0", g->ram[0].base, g->ram[0].len, PAGE, &err) < 0 ||
        lm_ram_add(g->m, "ram1", g->ram[1].base, g->ram[1].len, PAGE, &err) < 0 ||
        lm_ram_add(g->m, "ledger", g->ledger_r.base, g->ledger_r.len, PAGE, &err) < 0 ||
        lm_device_register(g->m, "cpu", 0, 1, &cpu_ops, g, &err) < 0) {
        cli_err("guest", "%s", err.msg);
        goto out;
    }
    gthr_init(&g->thr, g->m);
    if (lm_mig_set_throttle(g->m, gthr_set, &g->thr, &err) < 0) {
        cli_err("guest", "%s", err.msg);
        goto out;
    }
    if (lm_mig_set_identity(g->m, g->name, g->uuid, &err) < 0) {
        cli_err("guest", "--name/--uuid: %s", err.msg);
        goto out;
    }
    for (unsigned i = 0; i < g->nobjects; i++)
        if (cli_object_add(g->m, g->objects[i], &err) < 0) {
            cli_err("guest", "--object %s: %s", g->objects[i], err.msg);
            goto out;
        }
    for (unsigned i = 0; i < g->nbulk; i++) {
        if (bulk_new(&g->bulk_cfgs[i], i, incoming, g->seed, &g->bulks[i], &err) < 0 ||
            bulk_register(g->bulks[i], g->m, &err) < 0) {
            cli_err("guest", "--device bulk (instance %u): %s", i, err.msg);
            goto out;
        }
    }

    /* A destination's workers exist from the start but stay parked until
     * the library calls start() after loading. */
    g->stop_req = incoming;
    if (g->wl != WL_IDLE) {
        for (unsigned i = 0; i < g->nthreads; i++) {
            worker *w = &g->workers[i];
            w->g = g;
            w->id = i;
            w->rng = rng_first(g->seed, i);
            w->cursor = 0;
            pthread_mutex_lock(&g->lock);
            g->alive++;
            pthread_mutex_unlock(&g->lock);
            int e = pthread_create(&w->thread, NULL, worker_run, w);
            if (e) {
                pthread_mutex_lock(&g->lock);
                g->alive--;
                pthread_mutex_unlock(&g->lock);
                cli_err("guest", "cannot start workload thread: %s", strerror(e));
                goto out;
            }
            g->nstarted++;
        }
    }
    if (pthread_create(&g->stats_thread, NULL, stats_run, g) == 0)
        g->stats_started = true;

    if (lm_qmp_server_start_mode(g->m, g->qmp_uri, g->qmp_mode, &g->qmp, &err) < 0 ||
        lm_qmp_server_register_args(g->qmp, "quit", no_args, qmp_quit, g, &err) < 0 ||
        lm_qmp_server_register_args(g->qmp, "x-guest-verify", no_args, qmp_verify, g, &err) < 0 ||
        lm_qmp_server_register_args(g->qmp, "x-guest-stats", no_args, qmp_stats, g, &err) < 0) {
        cli_err("guest", "--qmp %s: %s", g->qmp_uri, err.msg);
        goto out;
    }
    if (incoming && strcmp(g->incoming, "defer") && lm_mig_incoming(g->m, g->incoming, &err) < 0) {
        cli_err("guest", "--incoming %s: %s", g->incoming, err.msg);
        goto out;
    }
    fprintf(stderr, "livemig guest: ready, qmp %s\n", g->qmp_uri);

    struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN}, {.fd = g->quit_fd, .events = POLLIN}};
    for (;;) {
        int n = poll(pfd, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            cli_err("guest", "poll: %s", strerror(errno));
            goto out;
        }
        if (pfd[0].revents || pfd[1].revents)
            break;
    }
    ret = CLI_EXIT_OK;

out:
    /* Teardown order: workload first (its start() hook becomes a no-op), then
     * the control server (no command runs any more), then the migration
     * object (cancels and joins the library's threads), then the memory. */
    lm_qmp_server_stop(g->qmp);
    g->qmp = NULL;
    /* A destination in postcopy (paused, say) that still owes pages has
     * workload threads blocked on pages that will never come now, and
     * freeing the migration object makes the blocks that owe pages
     * inaccessible (an access is SIGSEGV, never a zero or stale page:
     * postcopy/uffd.c).  So, as QEMU does, the process just exits: the
     * threads blocked on owed pages end with it and none ever reads guest
     * memory the source did not send. */
    if (g->m) {
        lm_info info;
        lm_mig_query(g->m, &info);
        bool pc = info.status == LM_STATUS_POSTCOPY_DEVICE ||
                  info.status == LM_STATUS_POSTCOPY_ACTIVE ||
                  info.status == LM_STATUS_POSTCOPY_PAUSED ||
                  info.status == LM_STATUS_POSTCOPY_RECOVER_SETUP ||
                  info.status == LM_STATUS_POSTCOPY_RECOVER;
        if (pc && info.pc_owed_pages) {
            fprintf(stderr,
                    "livemig guest: quitting in %s with %" PRIu64 " pages still owed by the "
                    "source: exiting without stopping the workload\n",
                    lm_status_name(info.status), info.pc_owed_pages);
            fflush(NULL);
            /* exit_group(2) itself: those threads cannot be joined by
             * design, and a sanitizer's _exit hook would report them as
             * leaked threads. */
            syscall(SYS_exit_group, ret);
        }
    }
    if (locks_ready)
        workload_quit(g);
    lm_qmp_server_stop(g->qmp);
    lm_mig_free(g->m); /* no device callback runs after this */
    for (unsigned i = 0; i < g->nbulk; i++)
        bulk_free(g->bulks[i]);
    region_unmap(&g->ram[0]);
    region_unmap(&g->ram[1]);
    region_unmap(&g->ledger_r);
    if (sfd >= 0)
        close(sfd);
    if (g->quit_fd >= 0)
        close(g->quit_fd);
    if (locks_ready) {
        pthread_mutex_destroy(&g->lock);
        pthread_cond_destroy(&g->park_cond);
        pthread_cond_destroy(&g->run_cond);
    }
    free(g);
    return ret;
}
