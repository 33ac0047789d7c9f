/*
 * embed.c - a program that embeds liblivemig and migrates itself live to a
 * second copy of itself:
 *
 *   embed --listen tcp:127.0.0.1:0        destination: prints the address it
 *                                         listens on, waits for the source
 *   embed --migrate tcp:127.0.0.1:PORT    source: migrates itself there
 *
 * The program owns what the library does not: its memory (one anonymous
 * mapping, registered as the RAM block "mem"), its workload (a thread that
 * rewrites the pages in order, each with its index, a generation and a
 * pattern derived from both) and its run state (lm_host_ops: stop() parks
 * the thread between two page writes, start() releases it).  Page 0 holds
 * the workload's write counter, so all of the program's state travels with
 * its memory, as a virtual machine's does.  After the migration the
 * destination checks every page against that counter, runs on, and checks
 * again.  It uses only <livemig.h> and pkg-config (Makefile, README.md here).
 */
#include <livemig.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define BATCH 16                    /* pages written per tick... */
#define TICK_NS 1000000             /* ...of 1 ms: 64 MiB/s, well below what loopback carries */
#define MIGRATE_S 120               /* bound on a migration */
#define RUN_ON 4096                 /* destination: writes to wait for after the migration */
#define MAGIC 0x6c6976656d696721ull /* "livemig!" */

typedef struct app {
    uint8_t *mem;    /* npages pages: page 0 the counter, then the data pages */
    uint64_t npages; /* data pages: npages - 1 */
    lm_mig *m;
    pthread_t writer;
    pthread_mutex_t lock; /* guards everything below; cond signals any change */
    pthread_cond_t cond;
    bool stop_req; /* stop() asked the writer to park */
    bool parked;   /* the writer is parked (or gone) */
    bool quit;
    lm_status status;  /* of the last MIGRATION event */
    uint64_t started;  /* destination: the counter when start() came (0: not yet) */
    uint64_t progress; /* writes done so far (a copy of the counter for waiters) */
} app;

typedef struct counter {
    uint64_t magic;
    uint64_t writes; /* page writes since the program first started */
} counter;

/* ------------------------------------------------------------ workload */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Word k of data page i in generation gen (gen >= 1; 0 = never written). */
static uint64_t word(uint64_t i, uint64_t gen, unsigned k)
{
    if (k == 0)
        return i;
    if (k == 1)
        return gen;
    return mix64(i * 0x9E3779B97F4A7C15ull + gen * 0xD1B54A32D192ED03ull + k);
}

static counter *ctr(app *a)
{
    return (counter *)a->mem;
}

/* Write number n: data page n % ndata, generation n / ndata + 1, then the
 * counter.  The library reads this memory while the writer changes it (that
 * is live migration: dirty pages are sent again), so ThreadSanitizer is told
 * to look away here, as a VMM does for its vCPUs. */
__attribute__((no_sanitize("thread"), noinline)) static void write_next(app *a)
{
    uint64_t ndata = a->npages - 1, n = ctr(a)->writes;
    uint64_t i = n % ndata, gen = n / ndata + 1;
    uint64_t *w = (uint64_t *)(a->mem + (1 + i) * PAGE);
    for (unsigned k = 0; k < WORDS; k++)
        w[k] = word(i, gen, k);
    ctr(a)->magic = MAGIC;
    ctr(a)->writes = n + 1;
}

static void timespec_add_ns(struct timespec *t, long ns)
{
    t->tv_nsec += ns;
    while (t->tv_nsec >= 1000000000) {
        t->tv_nsec -= 1000000000;
        t->tv_sec++;
    }
}

/* The workload: BATCH pages per tick, parked whenever stop() asks. */
static void *writer_run(void *arg)
{
    app *a = arg;
    struct timespec tick;
    clock_gettime(CLOCK_MONOTONIC, &tick);
    pthread_mutex_lock(&a->lock);
    while (!a->quit) {
        if (a->stop_req) {
            a->parked = true;
            pthread_cond_broadcast(&a->cond);
            while (a->stop_req && !a->quit)
                pthread_cond_wait(&a->cond, &a->lock);
            a->parked = false;
            clock_gettime(CLOCK_MONOTONIC, &tick);
            continue;
        }
        pthread_mutex_unlock(&a->lock);
        for (int b = 0; b < BATCH; b++)
            write_next(a);
        pthread_mutex_lock(&a->lock);
        a->progress = ctr(a)->writes;
        pthread_cond_broadcast(&a->cond);
        timespec_add_ns(&tick, TICK_NS);
        while (!a->stop_req && !a->quit)
            if (pthread_cond_timedwait(&a->cond, &a->lock, &tick) == ETIMEDOUT)
                break;
    }
    a->parked = true; /* for good: a late stop() must not wait for us */
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---------------------------------------------- what the library calls */

/* lm_host_ops.stop: returns once no write to the memory can happen. */
static void host_stop(void *opaque)
{
    app *a = opaque;
    pthread_mutex_lock(&a->lock);
    a->stop_req = true;
    pthread_cond_broadcast(&a->cond);
    while (!a->parked)
        pthread_cond_wait(&a->cond, &a->lock);
    pthread_mutex_unlock(&a->lock);
}

/* lm_host_ops.start: the writer continues from the counter in memory,
 * which on a destination has just arrived. */
static void host_start(void *opaque)
{
    app *a = opaque;
    pthread_mutex_lock(&a->lock);
    if (!a->started)
        a->started = ctr(a)->writes;
    a->stop_req = false;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

/* A listener: called on library threads, must not block for long. */
static void on_event(void *opaque, const lm_event *ev)
{
    app *a = opaque;
    if (ev->type != LM_EVENT_MIGRATION)
        return;
    pthread_mutex_lock(&a->lock);
    a->status = ev->status;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

/* Waits (at most MIGRATE_S) for completed, failed or cancelled. */
static lm_status wait_migration(app *a)
{
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += MIGRATE_S;
    pthread_mutex_lock(&a->lock);
    while (a->status != LM_STATUS_COMPLETED && a->status != LM_STATUS_FAILED &&
           a->status != LM_STATUS_CANCELLED)
        if (pthread_cond_timedwait(&a->cond, &a->lock, &end) == ETIMEDOUT)
            break;
    lm_status s = a->status;
    pthread_mutex_unlock(&a->lock);
    return s;
}

/* ---------------------------------------------------------- verifying */

/* With the program stopped: every data page must hold what its last write
 * put there (after n writes, page i was last written in generation
 * (n - 1 - i) / ndata + 1), and a page never written must be zero.
 * Returns the number of bad pages; *first_bad is the first one. */
static uint64_t verify(app *a, uint64_t *first_bad)
{
    uint64_t ndata = a->npages - 1, n = ctr(a)->writes, bad = 0;
    if (ctr(a)->magic != MAGIC) {
        *first_bad = 0;
        return a->npages; /* the counter page itself is lost */
    }
    for (uint64_t i = 0; i < ndata; i++) {
        uint64_t gen = n > i ? (n - 1 - i) / ndata + 1 : 0;
        const uint64_t *w = (const uint64_t *)(a->mem + (1 + i) * PAGE);
        for (unsigned k = 0; k < WORDS; k++) {
            if (w[k] != (gen ? word(i, gen, k) : 0)) {
                if (!bad++)
                    *first_bad = 1 + i;
                break;
            }
        }
    }
    return bad;
}

/* ------------------------------------------------------- the two roles */

static int fail(const char *what, const lm_error *err)
{
    fprintf(stderr, "embed: %s: %s (%s)\n", what, err->msg, lm_error_name(err->code));
    return 1;
}

/* Source: migrate to uri while the workload runs; done at "completed". */
static int run_source(app *a, const char *uri)
{
    lm_error err = {0};
    lm_params p;
    lm_info info;
    lm_params_default(&p);
    p.max_bandwidth = 0; /* QEMU's default is 128 MiB/s; unlimited here */
    if (lm_mig_set_params(a->m, &p, 1ull << LM_PARAM_MAX_BANDWIDTH, &err) < 0 ||
        lm_mig_start(a->m, uri, false, &err) < 0)
        return fail(uri, &err);
    lm_status s = wait_migration(a);
    lm_mig_query(a->m, &info);
    if (s != LM_STATUS_COMPLETED) {
        fprintf(stderr, "embed: migration %s: %s\n", lm_status_name(s), info.error_desc);
        return 1;
    }
    /* Stopped for good now (postmigrate): the counter is final. */
    printf("source: completed at write %" PRIu64 ", %" PRIu64 " MiB sent in %" PRId64
           " ms, downtime %" PRId64 " ms\n",
           ctr(a)->writes, info.transferred >> 20, info.total_time, info.downtime);
    return 0;
}

/* Lets the destination run until its workload made RUN_ON more writes
 * (bounded), then stops it again. */
static int run_on(app *a, uint64_t from, lm_error *err)
{
    struct timespec end;
    if (lm_vm_cont(a->m, err) < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += MIGRATE_S;
    pthread_mutex_lock(&a->lock);
    while (a->progress < from + RUN_ON)
        if (pthread_cond_timedwait(&a->cond, &a->lock, &end) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&a->lock);
    return lm_vm_stop(a->m, err);
}

/* Destination: listen on uri, wait for "completed" (the program runs here
 * from then on), then stop, check every page, run on, check again. */
static int run_destination(app *a, const char *uri)
{
    lm_error err = {0};
    lm_info info;
    uint64_t first = 0, bad, at, again;
    if (lm_mig_incoming(a->m, uri, &err) < 0)
        return fail(uri, &err);
    lm_mig_query(a->m, &info);
    printf("listening on %s\n", info.socket_address);
    fflush(stdout);
    lm_status s = wait_migration(a);
    if (s != LM_STATUS_COMPLETED) {
        lm_mig_query(a->m, &info);
        fprintf(stderr, "embed: incoming migration %s: %s\n", lm_status_name(s), info.error_desc);
        return 1;
    }
    if (lm_vm_stop(a->m, &err) < 0)
        return fail("stop", &err);
    at = ctr(a)->writes;
    if ((bad = verify(a, &first)) != 0) {
        printf("destination: FAILED, %" PRIu64 " bad pages of %" PRIu64 " at write %" PRIu64
               ", first bad page %" PRIu64 "\n",
               bad, a->npages, at, first);
        return 1;
    }
    if (run_on(a, at, &err) < 0)
        return fail("running on", &err);
    again = ctr(a)->writes;
    if (again < at + RUN_ON || (bad = verify(a, &first)) != 0) {
        printf("destination: FAILED after running on: %" PRIu64 " writes, %" PRIu64
               " bad pages, first bad page %" PRIu64 "\n",
               again - at, bad, first);
        return 1;
    }
    printf("destination: ok, arrived at write %" PRIu64 ", %" PRIu64
           " pages verified at write %" PRIu64 " and again at write %" PRIu64 "\n",
           a->started, a->npages, at, again);
    return 0;
}

/* -------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: embed --listen URI [--mem MIB]     (destination)\n"
                    "       embed --migrate URI [--mem MIB]    (source)\n"
                    "URI: tcp:HOST:PORT (port 0: any) or unix:PATH; MIB: 1..65536, default 64,\n"
                    "the same on both sides.\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *listen = NULL, *migrate = NULL;
    unsigned long mib = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        char *end;
        if (!strcmp(argv[i], "--listen")) {
            listen = argv[i + 1];
        } else if (!strcmp(argv[i], "--migrate")) {
            migrate = argv[i + 1];
        } else if (!strcmp(argv[i], "--mem")) {
            mib = strtoul(argv[i + 1], &end, 10);
            if (*end || mib < 1 || mib > 65536)
                return usage();
        } else {
            return usage();
        }
    }
    if (argc % 2 == 0 || !listen == !migrate)
        return usage();

    /* The program's own memory, workload and run state. */
    app a = {.npages = (uint64_t)mib << 20 >> 12, .stop_req = listen != NULL};
    lm_error err = {0};
    int ret = 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a.cond, &ca);
    pthread_mutex_init(&a.lock, NULL);
    a.mem = mmap(NULL, a.npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a.mem == MAP_FAILED) {
        fprintf(stderr, "embed: mmap %lu MiB: %s\n", mib, strerror(errno));
        return 1;
    }
    if (migrate) /* the source's first sweep: every page holds data */
        while (ctr(&a)->writes < a.npages - 1)
            write_next(&a);
    /* A destination's writer starts parked: the library calls start() once
     * the memory has arrived. */
    int e = pthread_create(&a.writer, NULL, writer_run, &a);
    if (e) {
        fprintf(stderr, "embed: cannot start the workload: %s\n", strerror(e));
        munmap(a.mem, a.npages * PAGE);
        return 1;
    }

    /* The library's side: the memory as RAM block "mem", the run-state
     * hooks, and MIGRATION events (capability "events") for the waits. */
    static const lm_host_ops ops = {.stop = host_stop, .start = host_start};
    if (lm_mig_new(&ops, &a, listen ? LM_RUN_INMIGRATE : LM_RUN_RUNNING, &a.m, &err) < 0 ||
        lm_ram_add(a.m, "mem", a.mem, a.npages * PAGE, PAGE, &err) < 0 ||
        lm_mig_add_listener(a.m, on_event, &a, &err) < 0 ||
        lm_mig_set_capabilities(a.m, 1ull << LM_CAP_EVENTS, 1ull << LM_CAP_EVENTS, &err) < 0)
        ret = fail("setup", &err);
    else
        ret = migrate ? run_source(&a, migrate) : run_destination(&a, listen);

    /* lm_mig_free joins the library's threads: no hook or listener runs
     * after it.  Then the workload, then the memory. */
    lm_mig_free(a.m);
    pthread_mutex_lock(&a.lock);
    a.quit = true;
    pthread_cond_broadcast(&a.cond);
    pthread_mutex_unlock(&a.lock);
    pthread_join(a.writer, NULL);
    munmap(a.mem, a.npages * PAGE);
    pthread_cond_destroy(&a.cond);
    pthread_mutex_destroy(&a.lock);
    pthread_condattr_destroy(&ca);
    return ret;
}
