/*
 * netbw.c - the machine's own limits that livemig's benchmark compares
 * against (DESIGN §9: ratios measured in the same run):
 *
 *   netbw tcp [--size MIB] [--reps N] [--thp] [--conns N]
 *       Raw loopback TCP throughput between two processes: the sender
 *       mmaps SIZE MiB filled with random data and write()s it in 1 MiB
 *       chunks; the receiver (a forked process) read()s it into its own
 *       pre-faulted SIZE MiB region.  One connection, like livemig's main
 *       channel, or with --conns N the region in N slices over N
 *       connections by N threads each side (N multifd channels).  Each
 *       repetition moves the whole region once.
 *   netbw zerocheck [--size MIB] [--reps N] [--thp]
 *       Zero-page check speed: an OR over every 8-byte word of each 4 KiB
 *       page of a populated, all-zero SIZE MiB region (what a sender does
 *       to find zero pages).
 *
 * Prints one JSON object on stdout: {"mode", "size", "reps": [GB/s...],
 * "median", "min", "max"} with GB = 1e9 bytes.  Standalone: no livemig
 * code.  Build: cc -O2 -o netbw netbw.c.  Every run is bounded by an
 * alarm(); the receiver dies with its parent (PR_SET_PDEATHSIG).
 *
 * Both regions are populated (MADV_POPULATE_WRITE) before any timing: a 4 KiB
 * first-touch fault costs 10-15 us on this machine kind, which would
 * measure the page-fault path instead of the wire (perf-anchors B2 note).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define PAGE 4096u
#define MAX_REPS 50
#define ALARM_S 300

static void die(const char *what)
{
    fprintf(stderr, "netbw: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MAX_CONNS 16
static int use_thp; /* --thp: 2 MiB-aligned regions with MADV_HUGEPAGE */

/* A populated region.  With --thp it is backed by huge pages where the
 * kernel can, like the guest RAM of `livemig guest` (which asks for THP). */
static uint8_t *region(size_t len)
{
    size_t extra = use_thp ? (2u << 20) : 0;
    uint8_t *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    if (use_thp) {
        p = (uint8_t *)(((uintptr_t)p + extra - 1) & ~(uintptr_t)(extra - 1));
        madvise(p, len, MADV_HUGEPAGE);
    }
    if (madvise(p, len, MADV_POPULATE_WRITE) < 0)
        memset(p, 0, len);
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *mode, size_t size, const double *gbps, int n)
{
    double s[MAX_REPS];
    memcpy(s, gbps, sizeof(double) * (size_t)n);
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    double median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    printf("{\"mode\": \"%s\", \"size\": %zu, \"thp\": %s, \"reps\": [", mode, size,
           use_thp ? "true" : "false");
    for (int i = 0; i < n; i++)
        printf("%s%.4f", i ? ", " : "", gbps[i]);
    printf("], \"median\": %.4f, \"min\": %.4f, \"max\": %.4f}\n", median, s[0], s[n - 1]);
}

static int write_full(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ------------------------------------------------------------------ tcp */

/* --conns N: the region is cut in N slices, each moved over its own
 * connection by its own thread on both sides (what N multifd channels
 * do).  One connection is the main channel's limit. */
static int conns = 1;

typedef struct slice {
    int fd;
    uint8_t *p;
    size_t len;
    int failed;
} slice;

static void *recv_slice(void *arg)
{
    slice *s = arg;
    size_t off = 0;
    while (off < s->len) {
        size_t want = s->len - off < CHUNK ? s->len - off : CHUNK;
        ssize_t n = read(s->fd, s->p + off, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            s->failed = 1;
            break;
        }
        off += (size_t)n;
    }
    return NULL;
}

static void *send_slice(void *arg)
{
    slice *s = arg;
    for (size_t off = 0; off < s->len; off += CHUNK) {
        size_t n = s->len - off < CHUNK ? s->len - off : CHUNK;
        if (write_full(s->fd, s->p + off, n) < 0) {
            s->failed = 1;
            break;
        }
    }
    return NULL;
}

static void cut(slice *sl, const int *fds, uint8_t *base, size_t size)
{
    size_t per = size / (size_t)conns / CHUNK * CHUNK;
    for (int c = 0; c < conns; c++) {
        sl[c].fd = fds[c];
        sl[c].p = base + per * (size_t)c;
        sl[c].len = c == conns - 1 ? size - per * (size_t)c : per;
        sl[c].failed = 0;
    }
}

/* Receiver (child): per repetition, sends a 'g' on connection 0 and times
 * until every slice has arrived; then sends the times back (as doubles). */
static void receiver(int port, size_t size, int reps)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    uint8_t *dst = region(size);
    int fds[MAX_CONNS];
    for (int c = 0; c < conns; c++) {
        fds[c] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (fds[c] < 0 || connect(fds[c], (struct sockaddr *)&a, sizeof a) < 0)
            die("receiver connect");
    }
    double secs[MAX_REPS];
    for (int r = 0; r < reps; r++) {
        slice sl[MAX_CONNS];
        pthread_t th[MAX_CONNS];
        cut(sl, fds, dst, size);
        char go = 'g';
        double t0 = now_s();
        if (write_full(fds[0], &go, 1) < 0)
            die("receiver go");
        for (int c = 0; c < conns; c++)
            if (pthread_create(&th[c], NULL, recv_slice, &sl[c]))
                die("receiver thread");
        for (int c = 0; c < conns; c++) {
            pthread_join(th[c], NULL);
            if (sl[c].failed)
                die("receiver read");
        }
        secs[r] = now_s() - t0;
    }
    if (write_full(fds[0], secs, sizeof(double) * (size_t)reps) < 0)
        die("receiver report");
    for (int c = 0; c < conns; c++)
        close(fds[c]);
    _exit(0);
}

static int run_tcp(size_t size, int reps)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, MAX_CONNS) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) < 0)
        die("listen");
    int port = ntohs(a.sin_port);

    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(lfd);
        receiver(port, size, reps);
    }

    /* Sender: random (incompressible, non-zero) data, xorshift64*. */
    uint8_t *src = region(size);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    for (size_t i = 0; i < size / 8; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        ((uint64_t *)src)[i] = x * 0x2545F4914F6CDD1Dull;
    }
    /* The receiver connects in order, so accept order is connection order. */
    int fds[MAX_CONNS];
    for (int c = 0; c < conns; c++) {
        fds[c] = accept(lfd, NULL, NULL);
        if (fds[c] < 0)
            die("accept");
    }
    close(lfd);
    for (int r = 0; r < reps; r++) {
        char go;
        if (read_full(fds[0], &go, 1) < 0)
            die("sender go");
        slice sl[MAX_CONNS];
        pthread_t th[MAX_CONNS];
        cut(sl, fds, src, size);
        for (int c = 0; c < conns; c++)
            if (pthread_create(&th[c], NULL, send_slice, &sl[c]))
                die("sender thread");
        for (int c = 0; c < conns; c++) {
            pthread_join(th[c], NULL);
            if (sl[c].failed)
                die("sender write");
        }
    }
    double secs[MAX_REPS], gbps[MAX_REPS];
    if (read_full(fds[0], secs, sizeof(double) * (size_t)reps) < 0)
        die("sender results");
    for (int c = 0; c < conns; c++)
        close(fds[c]);
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        fprintf(stderr, "netbw: receiver ended badly (status %d)\n", st);
    for (int r = 0; r < reps; r++)
        gbps[r] = (double)size / secs[r] / 1e9;
    report("tcp", size, gbps, reps);
    return 0;
}

/* ------------------------------------------------------------ zerocheck */

/* Returns true when the 4 KiB page is all zero.  Four accumulators, no
 * early exit: the speed of a sender scanning zero pages. */
static inline int page_is_zero(const uint64_t *w)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (unsigned k = 0; k < PAGE / 8; k += 4) {
        a |= w[k];
        b |= w[k + 1];
        c |= w[k + 2];
        d |= w[k + 3];
    }
    return (a | b | c | d) == 0;
}

static int run_zerocheck(size_t size, int reps)
{
    uint8_t *mem = region(size);
    memset(mem, 0, size); /* populated, real (not the shared zero page) */
    double gbps[MAX_REPS];
    volatile size_t sink = 0;
    for (int r = 0; r < reps; r++) {
        size_t zero = 0;
        double t0 = now_s();
        for (size_t off = 0; off < size; off += PAGE)
            zero += page_is_zero((const uint64_t *)(mem + off));
        double dt = now_s() - t0;
        sink += zero;
        if (zero != size / PAGE) {
            fprintf(stderr, "netbw: zerocheck found %zu of %zu zero pages\n", zero, size / PAGE);
            return 1;
        }
        gbps[r] = (double)size / dt / 1e9;
    }
    (void)sink;
    report("zerocheck", size, gbps, reps);
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage: netbw tcp|zerocheck [--size MIB] [--reps N] [--thp] [--conns N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    long size_mib = 1024, reps = 5;
    for (int i = 2; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--size") && i + 1 < argc) {
            size_mib = strtol(argv[++i], &end, 10);
            if (*end || size_mib < 1 || size_mib > (1L << 20))
                usage();
        } else if (!strcmp(argv[i], "--thp")) {
            use_thp = 1;
        } else if (!strcmp(argv[i], "--conns") && i + 1 < argc) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > MAX_CONNS)
                usage();
            conns = (int)v;
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = strtol(argv[++i], &end, 10);
            if (*end || reps < 1 || reps > MAX_REPS)
                usage();
        } else {
            usage();
        }
    }
    alarm(ALARM_S); /* bounded: a stuck peer ends the run */
    signal(SIGPIPE, SIG_IGN);
    size_t size = (size_t)size_mib << 20;
    if (!strcmp(mode, "tcp"))
        return run_tcp(size, (int)reps);
    if (!strcmp(mode, "zerocheck"))
        return run_zerocheck(size, (int)reps);
    usage();
    return 2;
}
