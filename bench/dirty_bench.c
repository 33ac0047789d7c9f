/*
 * dirty_bench.c - micro-benchmark of dirty tracking and the memory probes
 * (src/mem/dirty.h) on one range, 1 GiB by default: start (write-protect),
 * sync when clean and at 1 % / 10 % scattered dirty pages, populated scan,
 * zero check.  Prints a Markdown table for docs/benchmarks.md.
 *
 * Build (standalone, from the repo root):
 *   gcc -O2 -D_GNU_SOURCE -I include -I src bench/dirty_bench.c \
 *       src/ram/dirty.c src/ram/mem.c src/util/error.c -o dirty_bench
 * Run:  ./dirty_bench [MiB=1024] [thp=0|1] [reps=5]
 *
 * Single-threaded; the "workload" writes happen in this thread between
 * syncs, so sync times contain no contention with a writer.
 */
#include "mem/dirty.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PS 4096ull
#define HPS (2ull << 20)
#define MAXREPS 32

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void row(const char *what, double *v, int n, const char *unit, const char *note)
{
    qsort(v, n, sizeof *v, cmp_d);
    printf("| %-52s | %10.3f | %10.3f | %10.3f | %-6s | %s |\n", what, v[0], v[n / 2], v[n - 1],
           unit, note ? note : "");
    fflush(stdout);
}

static void die(const char *what, const lm_error *err)
{
    fprintf(stderr, "dirty_bench: %s: %s\n", what, err && err->msg[0] ? err->msg : strerror(errno));
    exit(1);
}

static char *map_range(size_t len, int thp, char **raw)
{
    *raw = mmap(NULL, len + HPS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*raw == MAP_FAILED)
        die("mmap", NULL);
    char *p = (char *)(((uintptr_t)*raw + HPS - 1) & ~(uintptr_t)(HPS - 1));
    madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    return p;
}

static uint64_t xrand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return *s = x;
}

/* `want` distinct random pages out of np. */
static uint64_t *pick(uint64_t np, uint64_t want, uint64_t seed)
{
    uint8_t *used = calloc(np, 1);
    uint64_t *l = malloc((want + 1) * sizeof *l), k = 0;
    if (!used || !l)
        die("malloc", NULL);
    while (k < want) {
        uint64_t p = xrand(&seed) % np;
        if (!used[p]) {
            used[p] = 1;
            l[k++] = p;
        }
    }
    free(used);
    return l;
}

static uint64_t popcount_bm(const uint64_t *b, uint64_t words)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < words; i++)
        n += (uint64_t)__builtin_popcountll(b[i]);
    return n;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 1024;
    int thp = argc > 2 ? atoi(argv[2]) : 0;
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    if (reps < 1 || reps > MAXREPS || mib < 4) {
        fprintf(stderr, "usage: %s [MiB>=4] [thp 0|1] [reps 1..%d]\n", argv[0], MAXREPS);
        return 2;
    }
    size_t len = mib << 20;
    uint64_t np = len / PS, words = (np + 63) / 64;
    double v[MAXREPS];
    lm_error err = {0};
    char *raw, *p = map_range(len, thp, &raw);
    uint64_t *bm = calloc(words, 8);
    uint64_t *const bms[1] = {bm};
    if (!bm)
        die("malloc", NULL);

    if (lm_dirty_uffd_probe(&err))
        die("uffd-wp probe", &err);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double load[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(la);
    }
    printf("dirty_bench: %zu MiB, %s pages, %d reps, %ld CPUs, loadavg %.2f\n\n", mib,
           thp ? "THP (MADV_HUGEPAGE)" : "4 KiB (MADV_NOHUGEPAGE)", reps, ncpu, load[0]);
    printf("| %-52s | %10s | %10s | %10s | %-6s | %s |\n", "measure", "min", "median", "max",
           "unit", "note");
    printf("|%s|-----------:|-----------:|-----------:|--------|------|\n",
           "------------------------------------------------------");

    /* populate: what the destination pays instead of first-touch faults */
    double t = now_s();
    if (lm_mem_populate(p, len))
        die("lm_mem_populate", NULL);
    v[0] = (now_s() - t) / np * 1e9;
    row("lm_mem_populate (MADV_POPULATE_WRITE)", v, 1, "ns/page", "once");

    /* zero check over populated zero memory (memory bandwidth bound) */
    for (int r = 0; r < reps; r++) {
        uint64_t z = 0;
        t = now_s();
        for (uint64_t o = 0; o < len; o += PS)
            z += lm_page_is_zero(p + o, PS);
        v[r] = len / (now_s() - t) / 1e9;
        if (z != np)
            die("zero check found non-zero pages", NULL);
    }
    row("lm_page_is_zero, all-zero pages", v, reps, "GB/s", NULL);
    for (int r = 0; r < reps; r++) {
        /* the machine's limit, measured the way probes/membw.c does */
        uint64_t z = 0;
        t = now_s();
        for (uint64_t o = 0; o < len; o += PS) {
            const uint64_t *q = (const uint64_t *)(p + o);
            uint64_t acc = 0;
            for (int i = 0; i < 512; i++)
                acc |= q[i];
            z += acc == 0;
        }
        v[r] = len / (now_s() - t) / 1e9;
        if (z != np)
            die("baseline zero check", NULL);
    }
    row("  baseline: plain OR loop over 4 KiB (membw.c)", v, reps, "GB/s", "no early exit");
    {
        /* the same pages, cache hot: the function's own speed */
        static char hot[64 * 1024] __attribute__((aligned(64)));
        for (int r = 0; r < reps; r++) {
            uint64_t z = 0, bytes = 0;
            t = now_s();
            for (int it = 0; it < 4096; it++)
                for (size_t o = 0; o < sizeof hot; o += PS, bytes += PS)
                    z += lm_page_is_zero(hot + o, PS);
            v[r] = bytes / (now_s() - t) / 1e9;
            if (z != bytes / PS)
                die("zero check", NULL);
        }
        row("lm_page_is_zero, cache-hot 64 KiB", v, reps, "GB/s", "no memory traffic");
    }
    for (int r = 0; r < reps; r++) {
        for (uint64_t o = 0; o < len; o += PS)
            p[o + PS / 2] = 1; /* non-zero in the middle: early exit after 2 KiB */
        uint64_t z = 0;
        t = now_s();
        for (uint64_t o = 0; o < len; o += PS)
            z += lm_page_is_zero(p + o, PS);
        v[r] = (now_s() - t) / np * 1e9;
        if (z)
            die("zero check missed a byte", NULL);
    }
    row("lm_page_is_zero, non-zero byte at offset 2048", v, reps, "ns/page", NULL);

    /* populated scans */
    for (int r = 0; r < reps; r++) {
        memset(bm, 0, words * 8);
        t = now_s();
        if (lm_mem_populated_scan(p, len, PS, bm, &err) != 0)
            die("populated scan", &err);
        v[r] = (now_s() - t) * 1e3;
    }
    row("lm_mem_populated_scan, all populated", v, reps, "ms", NULL);
    {
        char *raw2, *q = map_range(len, thp, &raw2);
        for (int r = 0; r < reps; r++) {
            memset(bm, 0, words * 8);
            t = now_s();
            if (lm_mem_populated_scan(q, len, PS, bm, &err) != 0)
                die("populated scan", &err);
            v[r] = (now_s() - t) * 1e3;
        }
        row("lm_mem_populated_scan, nothing populated", v, reps, "ms", NULL);
        for (int pass = 0; pass < 2; pass++) {
            for (int r = 0; r < reps; r++) {
                lm_dirty *d = NULL;
                lm_error_clear(&err);
                if (lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err) ||
                    lm_dirty_add_range(d, q, len, PS, &err))
                    die("tracker", &err);
                memset(bm, 0, words * 8);
                t = now_s();
                if (pass ? lm_dirty_start_populated(d, bms, &err) : lm_dirty_start(d, &err))
                    die("start", &err);
                v[r] = (now_s() - t) * 1e3;
                lm_dirty_free(d);
            }
            row(pass ? "lm_dirty_start_populated, nothing populated"
                     : "lm_dirty_start, nothing populated",
                v, reps, "ms", NULL);
        }
        uint64_t cnt = np / 10, *l = pick(np, cnt, 42);
        for (uint64_t i = 0; i < cnt; i++)
            q[l[i] * PS] = 1;
        for (int r = 0; r < reps; r++) {
            memset(bm, 0, words * 8);
            t = now_s();
            if (lm_mem_populated_scan(q, len, PS, bm, &err) != 0)
                die("populated scan", &err);
            v[r] = (now_s() - t) * 1e3;
        }
        uint64_t got = popcount_bm(bm, words);
        char note[96];
        snprintf(note, sizeof note, "found %llu of %llu", (unsigned long long)got,
                 (unsigned long long)cnt);
        if (!thp && got != cnt)
            die("populated scan miscounted", NULL);
        row("lm_mem_populated_scan, 10 % scattered populated", v, reps, "ms", note);

        /* start_populated on that half-empty range */
        for (int r = 0; r < reps; r++) {
            lm_dirty *d = NULL;
            lm_error_clear(&err);
            if (lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err) || lm_dirty_add_range(d, q, len, PS, &err))
                die("tracker", &err);
            memset(bm, 0, words * 8);
            t = now_s();
            if (lm_dirty_start_populated(d, bms, &err))
                die("start_populated", &err);
            v[r] = (now_s() - t) * 1e3;
            lm_dirty_free(d);
        }
        snprintf(note, sizeof note, "populated %llu", (unsigned long long)popcount_bm(bm, words));
        row("lm_dirty_start_populated, 10 % scattered populated", v, reps, "ms", note);
        free(l);
        munmap(raw2, len + HPS);
    }

    /* start: write-protect the whole (populated) range */
    for (int r = 0; r < reps; r++) {
        lm_dirty *d = NULL;
        if (lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err) || lm_dirty_add_range(d, p, len, PS, &err))
            die("tracker", &err);
        t = now_s();
        if (lm_dirty_start(d, &err))
            die("start", &err);
        v[r] = (now_s() - t) * 1e3;
        t = now_s();
        lm_dirty_free(d);
        (void)t;
    }
    row("lm_dirty_start (register + UFFDIO_WRITEPROTECT)", v, reps, "ms", "populated range");
    for (int r = 0; r < reps; r++) {
        lm_dirty *d = NULL;
        if (lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err) || lm_dirty_add_range(d, p, len, PS, &err))
            die("tracker", &err);
        memset(bm, 0, words * 8);
        t = now_s();
        if (lm_dirty_start_populated(d, bms, &err))
            die("start_populated", &err);
        v[r] = (now_s() - t) * 1e3;
        lm_dirty_free(d);
    }
    row("lm_dirty_start_populated (PAGEMAP_SCAN protect)", v, reps, "ms", "populated range");

    lm_dirty *d = NULL;
    if (lm_dirty_new(LM_DIRTY_UFFD_WP, &d, &err) || lm_dirty_add_range(d, p, len, PS, &err) ||
        lm_dirty_start(d, &err))
        die("tracker", &err);
    uint64_t newly = 0;
    for (int r = 0; r < reps; r++) {
        memset(bm, 0, words * 8);
        t = now_s();
        if (lm_dirty_sync(d, bms, &newly, &err))
            die("sync", &err);
        v[r] = (now_s() - t) * 1e3;
        if (newly)
            die("clean sync found pages", NULL);
    }
    row("lm_dirty_sync, nothing dirty", v, reps, "ms", NULL);

    static const double fracs[] = {0.01, 0.10, 1.0};
    for (int f = 0; f < 3; f++) {
        uint64_t cnt = (uint64_t)(np * fracs[f]), *l = pick(np, cnt, 1234567 + f);
        double fault[MAXREPS];
        for (int r = 0; r < reps; r++) {
            t = now_s();
            for (uint64_t i = 0; i < cnt; i++)
                *(volatile uint64_t *)(p + l[i] * PS + 64) = (uint64_t)r + 7;
            fault[r] = (now_s() - t) / cnt * 1e9;
            memset(bm, 0, words * 8);
            t = now_s();
            if (lm_dirty_sync(d, bms, &newly, &err))
                die("sync", &err);
            v[r] = (now_s() - t) * 1e3;
            if (newly != cnt) {
                fprintf(stderr, "sync found %llu of %llu\n", (unsigned long long)newly,
                        (unsigned long long)cnt);
                die("sync miscounted", NULL);
            }
        }
        char what[96];
        snprintf(what, sizeof what, "lm_dirty_sync, %.0f %% scattered dirty (%llu pages)",
                 fracs[f] * 100, (unsigned long long)cnt);
        row(what, v, reps, "ms", "found all");
        snprintf(what, sizeof what, "  workload: first write after re-arm, %.0f %%",
                 fracs[f] * 100);
        row(what, fault, reps, "ns/page", "WP-async fault");
        free(l);
    }
    lm_dirty_free(d);
    free(bm);
    munmap(raw, len + HPS);
    return 0;
}
