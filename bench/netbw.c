/*
 * netbw.c - the machine's own limits that livemig's benchmark compares
 * against (DESIGN §9: ratios measured in the same run):
 *
 *   netbw tcp [--size MIB] [--reps N] [--thp] [--conns N] [--pattern NAME]
 *       The best loopback TCP throughput this machine gives one connection
 *       between two processes (with --conns N: N connections by N threads
 *       each side, the region cut in N slices, as N multifd channels).  The
 *       sender mmaps SIZE MiB of random data, the receiver (a forked
 *       process) receives it into its own populated SIZE MiB region.  A
 *       limit must be a limit: a migration channel moving the same bytes
 *       must not beat it, so netbw measures a few send/receive patterns,
 *       the engine's own among them, and reports the best:
 *         engine  livemig's own socket use: SO_SNDBUF/SO_RCVBUF 4 MiB (where
 *                 net.core.{w,r}mem_max allow, as lm_sock_tune), TCP_NODELAY;
 *                 one sendmsg() of a 24-byte record header + 1 MiB of data
 *                 per record (ram.c's RAM_PAGES run of 256 pages); the
 *                 receiver recv()s the header, then the 1 MiB with
 *                 MSG_WAITALL straight into its region (chan.c).
 *         auto    autotuned socket buffers; write() of 1 MiB, recv() of
 *                 1 MiB with MSG_WAITALL.
 *         lowat   autotuned buffers; write() of 4 MiB; the receiver sets
 *                 SO_RCVLOWAT (up to 1 MiB) and each recv() takes all that
 *                 is queued (recv_lowat).  The kernel then wakes it once per
 *                 MiB instead of as segments arrive: measured here, both
 *                 ends spend ~0.09 s of CPU per GB instead of ~0.2 (the
 *                 copies themselves take half the time: perf), and one
 *                 connection moves 2-4 GB/s where the two others move 1-1.7
 *                 on a busy machine (interleaved runs, load 5-10).
 *       Each pattern has its own connection(s) and moves the region once
 *       untimed first: the kernel's first copy into or out of each page is
 *       slow here (first pass 0.1-0.3 GB/s with 4 KiB pages, 1-3 GB/s with
 *       THP); that pass is a warm-up, not the wire.  Then the timed
 *       repetitions of the patterns are interleaved (A B C A B C ...) so that
 *       load from other work falls on each alike; each moves the whole
 *       region once, timed by the receiver from its "go" to the last byte.
 *       --pattern NAME measures one pattern only.
 *       --thp: both regions 2 MiB-aligned with MADV_HUGEPAGE, as the guest
 *       RAM of `livemig guest` is.  Without it the regions are 4 KiB pages,
 *       which on this PVM guest (shadow paging) make the kernel's copies
 *       slower: not the best the machine can do, and not the engine's case.
 *       Tried and left out (slower): MSG_ZEROCOPY (loopback copies anyway,
 *       and reaping completions costs: 0.7-0.8 GB/s), sender and receiver
 *       pinned to different CPUs, SO_RCVLOWAT of 2 MiB or more (no faster,
 *       and it can stall: see recv_lowat).
 *   netbw zerocheck [--size MIB] [--reps N] [--thp]
 *       Zero-page check speed: an OR over every 8-byte word of each 4 KiB
 *       page of a populated, all-zero SIZE MiB region (what a sender does
 *       to find zero pages).
 *
 * Prints one JSON object on stdout: {"mode", "size", "thp", "reps":
 * [GB/s...], "median", "min", "max"} with GB = 1e9 bytes; for tcp the reps
 * are the best pattern's (highest median), "pattern" names it and
 * "patterns" holds every pattern's reps.  Standalone: no livemig code.
 * Build: cc -O2 -o netbw netbw.c -lpthread.  Every run is bounded by an
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
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
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
    uint8_t *p =
        mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
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

static double median_of(const double *v, int n)
{
    double s[MAX_REPS];
    memcpy(s, v, sizeof(double) * (size_t)n);
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* The JSON object up to its closing brace, which the caller prints (after
 * keys of its own). */
static void report_begin(const char *mode, size_t size, const double *gbps, int n)
{
    double lo = gbps[0], hi = gbps[0];
    for (int i = 1; i < n; i++) {
        lo = gbps[i] < lo ? gbps[i] : lo;
        hi = gbps[i] > hi ? gbps[i] : hi;
    }
    printf("{\"mode\": \"%s\", \"size\": %zu, \"thp\": %s, \"reps\": [", mode, size,
           use_thp ? "true" : "false");
    for (int i = 0; i < n; i++)
        printf("%s%.4f", i ? ", " : "", gbps[i]);
    printf("], \"median\": %.4f, \"min\": %.4f, \"max\": %.4f", median_of(gbps, n), lo, hi);
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

/* The engine pattern's record header: LM_REC_HDR_SIZE + LM_RAM_PAGES_HDR_SIZE. */
#define REC_HDR 24
#define SOCK_BUF (4 << 20) /* uri.c SOCK_BUF_BYTES */
/* lowat pattern (recv_lowat): the receive low mark, and the longest wait in
 * one recv() before the next call goes without it. */
#define LOWAT (1 << 20)
#define LOWAT_GUARD_US 20000

typedef struct pattern {
    const char *name;
    int fixed_bufs; /* SO_SNDBUF/SO_RCVBUF SOCK_BUF where the sysctl cap allows */
    int nodelay;    /* TCP_NODELAY */
    int hdr;        /* a REC_HDR header before each write, in one sendmsg */
    size_t wsize;   /* bytes per write (per record) */
    int lowat;      /* receiver: SO_RCVLOWAT LOWAT and greedy recv() instead of
                       recv(MSG_WAITALL) per record */
} pattern;

static const pattern patterns[] = {
    {"engine", 1, 1, 1, CHUNK, 0},
    {"auto", 0, 0, 0, CHUNK, 0},
    {"lowat", 0, 0, 0, 4 * CHUNK, 1},
};
#define NPAT ((int)(sizeof patterns / sizeof patterns[0]))

/* --conns N: the region is cut in N slices, each moved over its own
 * connection by its own thread on both sides (what N multifd channels
 * do).  One connection is the main channel's limit. */
static int conns = 1;
static int only_pat = -1; /* --pattern */

static int sysctl_at_least(const char *path, long want)
{
    char buf[32] = "";
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(buf, sizeof buf, f) != NULL && strtol(buf, NULL, 10) >= want;
    fclose(f);
    return ok;
}

/* Socket options of pattern p.  fixed_bufs as lm_sock_tune: a size above
 * the sysctl cap would turn autotuning off for a smaller buffer. */
static void tune(int fd, const pattern *p, int receiver)
{
    int one = 1, sz = SOCK_BUF;
    if (p->nodelay)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (p->fixed_bufs && sysctl_at_least("/proc/sys/net/core/wmem_max", SOCK_BUF))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    if (p->fixed_bufs && sysctl_at_least("/proc/sys/net/core/rmem_max", SOCK_BUF))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    if (p->lowat && receiver) {
        struct timeval tv = {0, LOWAT_GUARD_US};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
}

typedef struct slice {
    int fd;
    const pattern *pat;
    uint8_t *p;
    size_t len;
    int failed;
} slice;

static int recv_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, MSG_WAITALL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The lowat pattern's receiver: each recv() asks for all that is left and
 * returns once at least the low mark was copied, and the kernel wakes the
 * receiver only when that much is queued (tcp_data_ready), not as segments
 * arrive.  Measured here: a third of the context switches per GB (~250
 * against ~700) and half the CPU per byte on both ends (~0.09 against ~0.2
 * s/GB; perf: the copies themselves run twice as fast).  The mark is at
 * most half of what is still to come: a recv() that copied less than the
 * mark and sleeps is woken only when a whole mark more is queued, so that
 * much must still be on its way (a mark of the whole rest can wait
 * forever: seen with 1 MiB reads).  SO_RCVTIMEO (tune) guards the rest:
 * after a wait of LOWAT_GUARD_US the next call runs without a mark (it
 * also fires while the sender has not started, which costs nothing). */
static int recv_lowat(int fd, uint8_t *p, size_t len)
{
    int cur = -1, unmarked = 0;
    size_t off = 0;
    while (off < len) {
        size_t rem = len - off;
        int mark = rem / 2 < LOWAT ? (int)(rem / 2) : LOWAT;
        if (mark < 1 || unmarked)
            mark = 1;
        if (mark != cur) {
            if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof mark) < 0)
                return -1;
            cur = mark;
        }
        ssize_t n = recv(fd, p + off, rem, 0);
        unmarked = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        if (unmarked || (n < 0 && errno == EINTR))
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

static void *recv_slice(void *arg)
{
    slice *s = arg;
    const pattern *pat = s->pat;
    uint8_t hdr[REC_HDR];
    if (pat->lowat) {
        s->failed = recv_lowat(s->fd, s->p, s->len) < 0;
        return NULL;
    }
    for (size_t off = 0; off < s->len; off += pat->wsize) {
        size_t n = s->len - off < pat->wsize ? s->len - off : pat->wsize;
        if ((pat->hdr && recv_full(s->fd, hdr, sizeof hdr) < 0) ||
            recv_full(s->fd, s->p + off, n) < 0) {
            s->failed = 1;
            break;
        }
    }
    return NULL;
}

/* One sendmsg of header + data, resumed after a short write. */
static int send_record(int fd, const uint8_t *hdr, size_t hlen, const uint8_t *p, size_t len)
{
    struct iovec iov[2] = {{(void *)hdr, hlen}, {(void *)p, len}};
    struct iovec *v = iov;
    int cnt = 2;
    while (cnt) {
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)cnt};
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        size_t left = (size_t)n;
        while (cnt && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            cnt--;
        }
        if (cnt) {
            v->iov_base = (uint8_t *)v->iov_base + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

static void *send_slice(void *arg)
{
    slice *s = arg;
    const pattern *pat = s->pat;
    uint8_t hdr[REC_HDR] = {1}; /* contents do not matter */
    for (size_t off = 0; off < s->len; off += pat->wsize) {
        size_t n = s->len - off < pat->wsize ? s->len - off : pat->wsize;
        int r = pat->hdr ? send_record(s->fd, hdr, sizeof hdr, s->p + off, n)
                         : write_full(s->fd, s->p + off, n);
        if (r < 0) {
            s->failed = 1;
            break;
        }
    }
    return NULL;
}

static void cut(slice *sl, const int *fds, const pattern *pat, uint8_t *base, size_t size)
{
    size_t per = size / (size_t)conns / CHUNK * CHUNK;
    for (int c = 0; c < conns; c++) {
        sl[c].fd = fds[c];
        sl[c].pat = pat;
        sl[c].p = base + per * (size_t)c;
        sl[c].len = c == conns - 1 ? size - per * (size_t)c : per;
        sl[c].failed = 0;
    }
}

/* Moves the region once over pattern pat's connections fds, one thread per
 * connection; fn is recv_slice or send_slice.  Returns 0 or -1. */
static int move_once(void *(*fn)(void *), const int *fds, const pattern *pat, uint8_t *base,
                     size_t size)
{
    slice sl[MAX_CONNS];
    pthread_t th[MAX_CONNS];
    int failed = 0;
    cut(sl, fds, pat, base, size);
    for (int c = 0; c < conns; c++)
        if (pthread_create(&th[c], NULL, fn, &sl[c]))
            die("thread");
    for (int c = 0; c < conns; c++) {
        pthread_join(th[c], NULL);
        failed |= sl[c].failed;
    }
    return failed ? -1 : 0;
}

/* The patterns measured (all, or --pattern's), in order, and their count. */
static int chosen(const pattern **out)
{
    int n = 0;
    for (int i = 0; i < NPAT; i++)
        if (only_pat < 0 || only_pat == i)
            out[n++] = &patterns[i];
    return n;
}

/* Receiver (child): connects every pattern's connections (options set
 * before connect, so the window scale fits the buffer); per pass and
 * pattern, sends a 'g' on that pattern's connection 0 and times until
 * every slice has arrived; pass 0 is the untimed warm-up.  Then sends the
 * times back (as doubles, pass-major) on the first connection. */
static void receiver(int port, size_t size, int reps)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const pattern *pat[NPAT];
    int np = chosen(pat);
    uint8_t *dst = region(size);
    int fds[NPAT][MAX_CONNS];
    for (int i = 0; i < np; i++)
        for (int c = 0; c < conns; c++) {
            fds[i][c] = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (fds[i][c] < 0)
                die("receiver socket");
            tune(fds[i][c], pat[i], 1);
            if (connect(fds[i][c], (struct sockaddr *)&a, sizeof a) < 0)
                die("receiver connect");
        }
    double secs[MAX_REPS * NPAT];
    for (int r = 0; r <= reps; r++)
        for (int i = 0; i < np; i++) {
            char go = 'g';
            double t0 = now_s();
            if (write_full(fds[i][0], &go, 1) < 0)
                die("receiver go");
            if (move_once(recv_slice, fds[i], pat[i], dst, size) < 0)
                die("receiver read");
            if (r > 0)
                secs[(r - 1) * np + i] = now_s() - t0;
        }
    if (write_full(fds[0][0], secs, sizeof(double) * (size_t)(reps * np)) < 0)
        die("receiver report");
    _exit(0);
}

static void print_reps(const double *v, int n)
{
    printf("[");
    for (int i = 0; i < n; i++)
        printf("%s%.4f", i ? ", " : "", v[i]);
    printf("]");
}

static int run_tcp(size_t size, int reps)
{
    const pattern *pat[NPAT];
    int np = chosen(pat);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(lfd, NPAT * MAX_CONNS) < 0 || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0)
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
    int fds[NPAT][MAX_CONNS];
    for (int i = 0; i < np; i++)
        for (int c = 0; c < conns; c++) {
            fds[i][c] = accept(lfd, NULL, NULL);
            if (fds[i][c] < 0)
                die("accept");
            tune(fds[i][c], pat[i], 0);
        }
    close(lfd);
    for (int r = 0; r <= reps; r++)
        for (int i = 0; i < np; i++) {
            char go;
            if (read_full(fds[i][0], &go, 1) < 0)
                die("sender go");
            if (move_once(send_slice, fds[i], pat[i], src, size) < 0)
                die("sender write");
        }
    double secs[MAX_REPS * NPAT];
    if (read_full(fds[0][0], secs, sizeof(double) * (size_t)(reps * np)) < 0)
        die("sender results");
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        fprintf(stderr, "netbw: receiver ended badly (status %d)\n", st);

    /* Per pattern: GB/s per repetition and the median; the best median wins. */
    double gbps[NPAT][MAX_REPS], med[NPAT];
    int best = 0;
    for (int i = 0; i < np; i++) {
        for (int r = 0; r < reps; r++)
            gbps[i][r] = (double)size / secs[r * np + i] / 1e9;
        med[i] = median_of(gbps[i], reps);
        if (med[i] > med[best])
            best = i;
    }
    report_begin("tcp", size, gbps[best], reps);
    printf(", \"pattern\": \"%s\", \"patterns\": {", pat[best]->name);
    for (int i = 0; i < np; i++) {
        printf("%s\"%s\": ", i ? ", " : "", pat[i]->name);
        print_reps(gbps[i], reps);
    }
    printf("}}\n");
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
    report_begin("zerocheck", size, gbps, reps);
    printf("}\n");
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage: netbw tcp|zerocheck [--size MIB] [--reps N] [--thp] [--conns N] "
                    "[--pattern engine|auto]\n");
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
        } else if (!strcmp(argv[i], "--pattern") && i + 1 < argc) {
            const char *name = argv[++i];
            for (int k = 0; k < NPAT; k++)
                if (!strcmp(name, patterns[k].name))
                    only_pat = k;
            if (only_pat < 0)
                usage();
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
