/*
 * faultlat.c - the machine's own floor for a postcopy remote fault, which
 * livemig's benchmark prints beside the fault latency it measured (DESIGN
 * §9: ratios against limits measured in the same run).  A remote fault is
 * a local userfaultfd round trip plus a small request / page-sized answer
 * over the wire, so both are measured:
 *
 *   faultlat uffd [--pages N]
 *       A thread touches N fresh pages of a region registered with
 *       userfaultfd (missing mode); a handler thread reads each fault and
 *       places the page with UFFDIO_COPY.  Latency of each touch.
 *   faultlat pingpong [--n N]
 *       A client sends 16 bytes over loopback TCP (TCP_NODELAY) to a
 *       forked server that answers 4096 bytes.  Latency of each round trip.
 *
 * Prints one JSON object: {"mode", "n", "p50_us", "p99_us", "max_us",
 * "avg_us"}.  Standalone (no livemig code): cc -O2 -pthread -o faultlat
 * faultlat.c.  Bounded by alarm(); the server dies with its parent.
 * Threads: main (the toucher / client) and, for uffd, one handler thread
 * that exits when the region's userfaultfd is closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define ALARM_S 120

static void die(const char *what)
{
    fprintf(stderr, "faultlat: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *mode, uint64_t *ns, size_t n)
{
    qsort(ns, n, sizeof *ns, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)ns[i];
    printf("{\"mode\": \"%s\", \"n\": %zu, \"p50_us\": %.2f, \"p99_us\": %.2f, "
           "\"max_us\": %.2f, \"avg_us\": %.2f}\n",
           mode, n, ns[(n - 1) / 2] / 1e3, ns[(n - 1) * 99 / 100] / 1e3, ns[n - 1] / 1e3,
           sum / (double)n / 1e3);
}

/* ------------------------------------------------------------------ uffd */

static int g_uffd;
static uint8_t *g_src;

static void *handler(void *arg)
{
    (void)arg;
    struct pollfd pfd = {.fd = g_uffd, .events = POLLIN};
    for (;;) {
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL))
            return NULL;
        struct uffd_msg msg;
        ssize_t n = read(g_uffd, &msg, sizeof msg);
        if (n != sizeof msg) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            return NULL;
        }
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        struct uffdio_copy c = {.dst = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1),
                                .src = (uintptr_t)g_src, .len = PAGE};
        if (ioctl(g_uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST)
            die("UFFDIO_COPY");
    }
}

static int run_uffd(size_t pages)
{
    size_t len = pages * PAGE;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_src = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *lat = malloc(pages * sizeof *lat);
    if (p == MAP_FAILED || g_src == MAP_FAILED || !lat)
        die("mmap");
    memset(g_src, 0x42, PAGE);
    madvise(p, len, MADV_NOHUGEPAGE);
    g_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (g_uffd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(g_uffd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API");
    struct uffdio_register r = {.range = {(uintptr_t)p, len},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(g_uffd, UFFDIO_REGISTER, &r) < 0)
        die("UFFDIO_REGISTER");
    pthread_t th;
    if (pthread_create(&th, NULL, handler, NULL))
        die("pthread_create");
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < pages; i++) {
        uint64_t t0 = now_ns();
        sink += p[i * PAGE];
        lat[i] = now_ns() - t0;
    }
    (void)sink;
    /* The handler only ever waits in poll(), a cancellation point. */
    pthread_cancel(th);
    pthread_join(th, NULL);
    close(g_uffd);
    report("uffd", lat, pages);
    return 0;
}

/* -------------------------------------------------------------- pingpong */

static int read_full(int fd, void *buf, size_t len)
{
    uint8_t *b = buf;
    while (len) {
        ssize_t n = read(fd, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const uint8_t *b = buf;
    while (len) {
        ssize_t n = write(fd, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static int run_pingpong(size_t n)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        die("listen");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int s = accept(ls, NULL, NULL);
        if (s < 0)
            _exit(1);
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        static uint8_t page[PAGE], req[16];
        memset(page, 0x42, sizeof page);
        while (read_full(s, req, sizeof req) == 0)
            if (write_full(s, page, sizeof page) < 0)
                break;
        _exit(0);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    close(ls);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    uint64_t *lat = malloc(n * sizeof *lat);
    static uint8_t page[PAGE], req[16];
    if (!lat)
        die("malloc");
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        if (write_full(s, req, sizeof req) < 0 || read_full(s, page, sizeof page) < 0)
            die("round trip");
        lat[i] = now_ns() - t0;
    }
    close(s);
    waitpid(pid, NULL, 0);
    report("pingpong", lat, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    long n = 20000;
    for (int i = 2; i < argc; i++) {
        char *end;
        if ((!strcmp(argv[i], "--pages") || !strcmp(argv[i], "--n")) && i + 1 < argc) {
            n = strtol(argv[++i], &end, 10);
            if (*end || n < 100 || n > 10000000)
                goto usage;
        } else {
            goto usage;
        }
    }
    alarm(ALARM_S);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[1], "uffd"))
        return run_uffd((size_t)n);
    if (!strcmp(argv[1], "pingpong"))
        return run_pingpong((size_t)n);
usage:
    fprintf(stderr, "usage: faultlat uffd [--pages N] | faultlat pingpong [--n N]\n");
    return 2;
}
