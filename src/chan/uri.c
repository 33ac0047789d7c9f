/*
 * uri.c - migration URIs (tcp:, unix:, fd:) and the sockets behind them:
 * parse/format (pure, fuzzed by tests/fuzz/fuzz_uri.c), connect with a
 * bound on time and a cancel descriptor, listen, accept that a shutdown(2)
 * from another thread can interrupt, and the socket options every
 * migration connection gets.
 *
 * Threads: a cancellable connect resolves the name on a detached helper
 * thread (resolve.c); nothing else starts here and no locks are taken.  lm_sock_accept() blocks the
 * calling thread; any other thread may interrupt it (see there).
 */
#include "chan/chan.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Socket buffers we ask for (best effort, see lm_sock_tune). */
#define SOCK_BUF_BYTES (4 << 20)
/* The kernel's queue of connections not accepted yet (capped by
 * net.core.somaxconn).  The destination takes them all at once and reads
 * their HELLOs together (accept.c), but a burst of strangers larger than
 * this queue would make the kernel drop the source's SYN, which it then
 * retries only after a second or more (issue 12, defect 1). */
#define LISTEN_BACKLOG 1024
/* How much of a bad URI is quoted back in an error message: a URI can be
 * arbitrary bytes from a QMP client, the message must stay readable. */
#define QUOTE_MAX 80

/* ------------------------------------------------------------- parsing */

/* Copies s (n bytes) into out as printable text: control and non-ASCII
 * bytes become '?', and long input is cut with "...". */
static const char *quote(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        if (i == QUOTE_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        out[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    out[o] = '\0';
    return out;
}

static bool is_host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

static bool is_v6_char(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
           ch == ':' || ch == '.';
}

/* Parses "HOST:PORT" (rest of a tcp: URI) into out->host / out->port. */
static int parse_tcp(const char *uri, const char *rest, lm_uri *out, lm_error *err)
{
    char q[QUOTE_MAX + 8];
    const char *host, *after;
    size_t hlen;

    if (rest[0] == '[') {
        /* [v6addr] with an optional %zone (fe80::1%eth0). */
        const char *close = strchr(rest, ']');
        if (!close)
            return lm_error_set(err, -EINVAL, "bad URI '%s': missing ']' after IPv6 host",
                                quote(uri, strlen(uri), q, sizeof q));
        host = rest + 1;
        hlen = (size_t)(close - host);
        after = close + 1;
        if (hlen == 0)
            return lm_error_set(err, -EINVAL, "bad URI '%s': empty host",
                                quote(uri, strlen(uri), q, sizeof q));
        const char *pct = memchr(host, '%', hlen);
        size_t alen = pct ? (size_t)(pct - host) : hlen;
        bool colon = false;
        for (size_t i = 0; i < alen; i++) {
            if (!is_v6_char(host[i]))
                return lm_error_set(err, -EINVAL, "bad URI '%s': invalid character in IPv6 host",
                                    quote(uri, strlen(uri), q, sizeof q));
            colon |= host[i] == ':';
        }
        if (!colon || alen == 0)
            return lm_error_set(err, -EINVAL, "bad URI '%s': brackets are only for IPv6 addresses",
                                quote(uri, strlen(uri), q, sizeof q));
        if (pct) {
            if (pct + 1 == host + hlen)
                return lm_error_set(err, -EINVAL, "bad URI '%s': empty IPv6 zone after '%%'",
                                    quote(uri, strlen(uri), q, sizeof q));
            for (const char *z = pct + 1; z < host + hlen; z++)
                if (!is_host_char(*z))
                    return lm_error_set(err, -EINVAL,
                                        "bad URI '%s': invalid character in IPv6 zone",
                                        quote(uri, strlen(uri), q, sizeof q));
        }
        if (*after != ':')
            return lm_error_set(err, -EINVAL,
                                *after ? "bad URI '%s': trailing junk after ']' (expected ':PORT')"
                                       : "bad URI '%s': missing ':PORT'",
                                quote(uri, strlen(uri), q, sizeof q));
    } else {
        const char *colon = strchr(rest, ':');
        if (!colon)
            return lm_error_set(err, -EINVAL, "bad URI '%s': missing ':PORT'",
                                quote(uri, strlen(uri), q, sizeof q));
        host = rest;
        hlen = (size_t)(colon - rest);
        after = colon;
        if (strchr(colon + 1, ':'))
            return lm_error_set(err, -EINVAL,
                                "bad URI '%s': IPv6 hosts must be in brackets, e.g. tcp:[::1]:4444",
                                quote(uri, strlen(uri), q, sizeof q));
        if (hlen == 0)
            return lm_error_set(err, -EINVAL, "bad URI '%s': empty host",
                                quote(uri, strlen(uri), q, sizeof q));
        for (size_t i = 0; i < hlen; i++)
            if (!is_host_char(host[i]))
                return lm_error_set(err, -EINVAL, "bad URI '%s': invalid character in host",
                                    quote(uri, strlen(uri), q, sizeof q));
    }
    if (hlen >= sizeof out->host)
        return lm_error_set(err, -ENAMETOOLONG, "bad URI '%s': host longer than %zu bytes",
                            quote(uri, strlen(uri), q, sizeof q), sizeof out->host - 1);

    /* after points at the ':' before the port. */
    const char *p = after + 1;
    if (*p == '\0')
        return lm_error_set(err, -EINVAL, "bad URI '%s': missing port after ':'",
                            quote(uri, strlen(uri), q, sizeof q));
    if (*p < '0' || *p > '9')
        return lm_error_set(err, -EINVAL, "bad URI '%s': port is not a number",
                            quote(uri, strlen(uri), q, sizeof q));
    unsigned long port = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        port = port * 10 + (unsigned long)(*p - '0');
        if (port > 65535)
            return lm_error_set(err, -ERANGE, "bad URI '%s': port is greater than 65535",
                                quote(uri, strlen(uri), q, sizeof q));
    }
    if (*p != '\0')
        return lm_error_set(err, -EINVAL, "bad URI '%s': trailing junk after the port",
                            quote(uri, strlen(uri), q, sizeof q));

    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    /* Normalised (no leading zeros): "00080" and "80" are the same port. */
    snprintf(out->port, sizeof out->port, "%lu", port);
    return 0;
}

int lm_uri_parse(const char *s, lm_uri *out, lm_error *err)
{
    char q[QUOTE_MAX + 8];
    lm_uri u;

    memset(&u, 0, sizeof u);
    u.fd = -1;
    if (!s || !*s)
        return lm_error_set(err, -EINVAL, "empty URI");

    const char *colon = strchr(s, ':');
    if (!colon)
        return lm_error_set(err, -EINVAL,
                            "bad URI '%s': missing scheme (expected tcp:, unix:, fd: or file:)",
                            quote(s, strlen(s), q, sizeof q));
    size_t slen = (size_t)(colon - s);
    const char *rest = colon + 1;

    if (slen == 3 && !memcmp(s, "tcp", 3)) {
        u.kind = LM_URI_TCP;
        int r = parse_tcp(s, rest, &u, err);
        if (r < 0)
            return r;
    } else if (slen == 4 && !memcmp(s, "unix", 4)) {
        u.kind = LM_URI_UNIX;
        size_t plen = strlen(rest);
        if (plen == 0)
            return lm_error_set(err, -EINVAL, "bad URI '%s': empty socket path",
                                quote(s, strlen(s), q, sizeof q));
        if (plen >= sizeof u.path)
            return lm_error_set(err, -ENAMETOOLONG,
                                "bad URI '%s': socket path is %zu bytes, at most %zu allowed",
                                quote(s, strlen(s), q, sizeof q), plen, sizeof u.path - 1);
        memcpy(u.path, rest, plen + 1);
    } else if (slen == 2 && !memcmp(s, "fd", 2)) {
        u.kind = LM_URI_FD;
        const char *p = rest;
        if (*p < '0' || *p > '9')
            return lm_error_set(err, -EINVAL, "bad URI '%s': fd is not a non-negative integer",
                                quote(s, strlen(s), q, sizeof q));
        long v = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            v = v * 10 + (*p - '0');
            if (v > INT_MAX)
                return lm_error_set(err, -ERANGE, "bad URI '%s': fd number too large",
                                    quote(s, strlen(s), q, sizeof q));
        }
        if (*p != '\0')
            return lm_error_set(err, -EINVAL, "bad URI '%s': trailing junk after the fd number",
                                quote(s, strlen(s), q, sizeof q));
        u.fd = (int)v;
    } else if (slen == 4 && !memcmp(s, "file", 4)) {
        u.kind = LM_URI_FILE;
        int r = lm_uri_parse_file(s, rest, &u, err);
        if (r < 0)
            return r;
    } else {
        return lm_error_set(err, -EINVAL,
                            "unknown URI scheme '%s' (expected tcp:, unix:, fd: or file:)",
                            quote(s, slen, q, sizeof q));
    }
    *out = u;
    return 0;
}

const char *lm_uri_format(const lm_uri *u, char *out, size_t cap)
{
    if (!out || cap == 0)
        return out;
    switch (u->kind) {
    case LM_URI_TCP:
        if (strchr(u->host, ':'))
            snprintf(out, cap, "tcp:[%s]:%s", u->host, u->port);
        else
            snprintf(out, cap, "tcp:%s:%s", u->host, u->port);
        break;
    case LM_URI_UNIX:
        snprintf(out, cap, "unix:%s", u->path);
        break;
    case LM_URI_FD:
        snprintf(out, cap, "fd:%d", u->fd);
        break;
    case LM_URI_FILE:
        if (u->offset)
            snprintf(out, cap, "file:%s,offset=%llu", u->file, (unsigned long long)u->offset);
        else
            snprintf(out, cap, "file:%s", u->file);
        break;
    default:
        snprintf(out, cap, "?");
        break;
    }
    return out;
}

/* -------------------------------------------------------------- sockets */

static int setopt_int(int fd, int level, int name, int val)
{
    return setsockopt(fd, level, name, &val, sizeof val) == 0 ? 0 : -errno;
}

/* Reads a numeric sysctl; false when it cannot be read. */
static bool sysctl_at_least(const char *path, long want)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return strtol(buf, NULL, 10) >= want;
}

int lm_sock_tune(int fd, lm_error *err)
{
    int domain = 0, type = 0, r;
    socklen_t len = sizeof domain;

    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) {
        /* fd: URIs may name a pipe or a file: nothing to tune there. */
        if (errno == ENOTSOCK)
            return 0;
        return lm_error_set(err, -errno, "socket options: %s", strerror(errno));
    }
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return lm_error_set(err, -errno, "socket options: %s", strerror(errno));

    if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM) {
        /* Small records (commands, return-path messages, page requests) must
         * not wait for Nagle: postcopy fault latency rides on them. */
        if ((r = setopt_int(fd, IPPROTO_TCP, TCP_NODELAY, 1)) < 0)
            return lm_error_set(err, r, "TCP_NODELAY: %s", strerror(-r));
        /* A peer that vanished (host died, cable cut) must be noticed in
         * seconds, not after the kernel's 2 h default: postcopy pauses on
         * it and recovery can start (digest section 9). */
        if ((r = setopt_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1)) < 0 ||
            (r = setopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 5)) < 0 ||
            (r = setopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 1)) < 0 ||
            (r = setopt_int(fd, IPPROTO_TCP, TCP_KEEPCNT, 5)) < 0)
            return lm_error_set(err, r, "TCP keepalive: %s", strerror(-r));
        /* Unacknowledged data for 10 s fails the connection too (keepalive
         * alone does not fire while there is data in flight). */
        if ((r = setopt_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 10000)) < 0)
            return lm_error_set(err, r, "TCP_USER_TIMEOUT: %s", strerror(-r));
    } else if (domain != AF_UNIX) {
        return 0;
    }
    /* Best effort.  For TCP, setting a buffer size turns off the kernel's
     * autotuning (up to net.ipv4.tcp_{w,r}mem, MiBs) and is capped at
     * net.core.{w,r}mem_max, 208 KiB by default: measured on loopback, a
     * capped buffer ran at 1.7 GB/s against 2.8 GB/s autotuned.  So TCP
     * gets the large buffers only where the cap allows them; unix sockets
     * have no autotuning and always gain. */
    bool tcp = domain != AF_UNIX;
    if (!tcp || sysctl_at_least("/proc/sys/net/core/wmem_max", SOCK_BUF_BYTES))
        (void)setopt_int(fd, SOL_SOCKET, SO_SNDBUF, SOCK_BUF_BYTES);
    if (!tcp || sysctl_at_least("/proc/sys/net/core/rmem_max", SOCK_BUF_BYTES))
        (void)setopt_int(fd, SOL_SOCKET, SO_RCVBUF, SOCK_BUF_BYTES);
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Non-blocking connect of fd to sa, waiting at most until deadline (ms on
 * CLOCK_MONOTONIC, < 0 = no limit).  Returns 0 or -errno (-ETIMEDOUT). */
static int connect_bounded(int fd, const struct sockaddr *sa, socklen_t salen, int64_t deadline,
                           int cancel_fd)
{
    if (connect(fd, sa, salen) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    for (;;) {
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            wait = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLOUT}, {.fd = cancel_fd, .events = POLLIN}};
        int n = poll(pfd, cancel_fd >= 0 ? 2 : 1, wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            continue; /* the deadline check above decides */
        if (cancel_fd >= 0 && pfd[1].revents)
            return -ECANCELED;
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            return -errno;
        return soerr ? -soerr : 0;
    }
}

static int set_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

static int fill_sun(const lm_uri *u, struct sockaddr_un *sun, socklen_t *len)
{
    size_t plen = strlen(u->path);
    if (plen == 0 || plen >= sizeof sun->sun_path)
        return -ENAMETOOLONG;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, u->path, plen + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + 1);
    return 0;
}

/*
 * timeout_ms <= 0 waits without a limit.  Name resolution (getaddrinfo) is
 * not covered by the bound; numeric hosts resolve at once.
 */
int lm_uri_connect(const lm_uri *u, int timeout_ms, int *fd_out, lm_error *err)
{
    return lm_uri_connect_cancellable(u, timeout_ms, -1, fd_out, err);
}

int lm_uri_connect_cancellable(const lm_uri *u, int timeout_ms, int cancel_fd, int *fd_out,
                               lm_error *err)
{
    char text[512];
    int fd = -1, r = 0;
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : -1;
    struct addrinfo *res = NULL;

    lm_uri_format(u, text, sizeof text);
    *fd_out = -1;

    switch (u->kind) {
    case LM_URI_FILE:
        r = lm_error_set(err, -EINVAL, "%s is a file, not a peer to connect to", text);
        goto out;
    case LM_URI_FD:
        if (u->fd < 0) {
            r = lm_error_set(err, -EBADF, "connect to %s: %s", text, strerror(EBADF));
            goto out;
        }
        fd = fcntl(u->fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            r = lm_error_set(err, -errno, "connect to %s: %s", text, strerror(errno));
            goto out;
        }
        break;

    case LM_URI_UNIX: {
        struct sockaddr_un sun;
        socklen_t slen;
        if ((r = fill_sun(u, &sun, &slen)) < 0) {
            r = lm_error_set(err, r, "connect to %s: %s", text, strerror(-r));
            goto out;
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            r = lm_error_set(err, -errno, "connect to %s: socket: %s", text, strerror(errno));
            goto out;
        }
        /* AF_UNIX connect never returns EINPROGRESS: a non-blocking one
         * fails with EAGAIN when the listener's backlog is full.  A
         * blocking one waits for room, bounded by SO_SNDTIMEO. */
        if (deadline >= 0) {
            struct timeval tv = {.tv_sec = timeout_ms / 1000,
                                 .tv_usec = (timeout_ms % 1000) * 1000};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        }
        /* Cancellable: a non-blocking connect, retried while the backlog
         * is full (the kernel offers no wake-up for room in a unix
         * listener's backlog), watching cancel_fd between tries. */
        if (cancel_fd >= 0)
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        while (connect(fd, (struct sockaddr *)&sun, slen) != 0) {
            if (cancel_fd >= 0 && errno == EAGAIN && (deadline < 0 || now_ms() < deadline)) {
                struct pollfd cp = {.fd = cancel_fd, .events = POLLIN};
                if (poll(&cp, 1, 10) > 0) {
                    r = lm_error_set(err, -ECANCELED, "connect to %s: cancelled", text);
                    goto out;
                }
                continue;
            }
            if (errno == EINTR && (deadline < 0 || now_ms() < deadline))
                continue;
            r = errno == EAGAIN || errno == EINTR ? -ETIMEDOUT : -errno;
            if (r == -ETIMEDOUT)
                r = lm_error_set(err, r, "connect to %s: timed out after %d ms", text, timeout_ms);
            else
                r = lm_error_set(err, r, "connect to %s: %s", text, strerror(-r));
            goto out;
        }
        if (deadline >= 0) {
            struct timeval zero = {0};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
        }
        if (cancel_fd >= 0 && (r = set_blocking(fd)) < 0) {
            r = lm_error_set(err, r, "connect to %s: %s", text, strerror(-r));
            goto out;
        }
        break;
    }

    case LM_URI_TCP: {
        int gerr = 0;
        int g = lm_resolve(u->host, u->port, deadline, cancel_fd, &res, &gerr);
        if (g < 0) {
            r = lm_error_set(err, g, "connect to %s: resolving '%s': %s", text, u->host,
                             g == -ECANCELED ? "cancelled" : strerror(-g));
            goto out;
        }
        if (g != 0) {
            r = lm_error_set(err, -EHOSTUNREACH, "connect to %s: cannot resolve '%s': %s", text,
                             u->host, g == EAI_SYSTEM ? strerror(gerr) : gai_strerror(g));
            goto out;
        }
        /* Try every address in turn (localhost is ::1 and 127.0.0.1); the
         * last failure is the one reported. */
        r = -EHOSTUNREACH;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
            if (fd < 0) {
                r = -errno;
                continue;
            }
            r = connect_bounded(fd, ai->ai_addr, ai->ai_addrlen, deadline, cancel_fd);
            if (r == 0)
                r = set_blocking(fd);
            if (r == 0)
                break;
            close(fd);
            fd = -1;
            if (r == -ETIMEDOUT || r == -ECANCELED)
                break;
        }
        if (r == -ECANCELED) {
            r = lm_error_set(err, r, "connect to %s: cancelled", text);
            goto out;
        }
        if (r == -ETIMEDOUT) {
            r = lm_error_set(err, r, "connect to %s: timed out after %d ms", text, timeout_ms);
            goto out;
        }
        if (r < 0) {
            r = lm_error_set(err, r, "connect to %s: %s", text, strerror(-r));
            goto out;
        }
        break;
    }

    default:
        r = lm_error_set(err, -EINVAL, "connect: bad URI kind %d", (int)u->kind);
        goto out;
    }

    if ((r = lm_sock_tune(fd, err)) < 0) {
        lm_error_prefix(err, "connect to %s", text);
        goto out;
    }
    *fd_out = fd; /* now owned by the caller */
    fd = -1;
    r = 0;
out:
    if (res)
        freeaddrinfo(res);
    if (fd >= 0)
        close(fd);
    return r;
}

/* A socket file left behind by a dead listener is removed; one that a live
 * process still listens on, or anything that is not a socket, is not. */
static int remove_stale_unix(const char *path, const char *text, lm_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return lm_error_set(err, -errno, "listen on %s: %s", text, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return lm_error_set(err, -EEXIST, "listen on %s: '%s' exists and is not a socket", text,
                            path);

    struct sockaddr_un sun;
    socklen_t slen;
    lm_uri tmp = {.kind = LM_URI_UNIX};
    snprintf(tmp.path, sizeof tmp.path, "%s", path);
    if (fill_sun(&tmp, &sun, &slen) < 0)
        return lm_error_set(err, -ENAMETOOLONG, "listen on %s: path too long", text);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return lm_error_set(err, -errno, "listen on %s: socket: %s", text, strerror(errno));
    int c = connect(fd, (struct sockaddr *)&sun, slen);
    int e = errno;
    close(fd);
    if (c == 0 || e == EAGAIN)
        return lm_error_set(err, -EADDRINUSE, "listen on %s: another process is listening there",
                            text);
    if (unlink(path) != 0 && errno != ENOENT)
        return lm_error_set(err, -errno, "listen on %s: removing stale socket: %s", text,
                            strerror(errno));
    return 0;
}

/*
 * fd: returns a dup of N as it is: for a listening socket the caller
 * accepts on it, for a connected one (QEMU's usual fd: incoming) the caller
 * uses it directly; getsockopt(SO_ACCEPTCONN) tells which.
 */
int lm_uri_listen(const lm_uri *u, int *fd_out, char *actual, size_t cap, lm_error *err)
{
    return lm_uri_listen_mode(u, -1, fd_out, actual, cap, err);
}

int lm_uri_listen_mode(const lm_uri *u, int unix_mode, int *fd_out, char *actual, size_t cap,
                       lm_error *err)
{
    char text[512];
    int fd = -1, r = 0;
    struct addrinfo *res = NULL;

    lm_uri_format(u, text, sizeof text);
    *fd_out = -1;

    switch (u->kind) {
    case LM_URI_FILE:
        r = lm_error_set(err, -EINVAL, "%s is a file: there is no socket to listen on", text);
        goto out;
    case LM_URI_FD:
        fd = u->fd >= 0 ? fcntl(u->fd, F_DUPFD_CLOEXEC, 0) : (errno = EBADF, -1);
        if (fd < 0) {
            r = lm_error_set(err, -errno, "listen on %s: %s", text, strerror(errno));
            goto out;
        }
        if (actual && cap)
            snprintf(actual, cap, "%s", text);
        break;

    case LM_URI_UNIX: {
        struct sockaddr_un sun;
        socklen_t slen;
        if ((r = fill_sun(u, &sun, &slen)) < 0) {
            r = lm_error_set(err, r, "listen on %s: %s", text, strerror(-r));
            goto out;
        }
        if ((r = remove_stale_unix(u->path, text, err)) < 0)
            goto out;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            r = lm_error_set(err, -errno, "listen on %s: socket: %s", text, strerror(errno));
            goto out;
        }
        /* Linux creates the socket file with the socket inode's mode minus
         * the umask (unix_bind): set before bind, the file is never
         * created looser than asked, whatever the umask (issue 12). */
        if (unix_mode >= 0 && fchmod(fd, (mode_t)unix_mode) != 0) {
            r = lm_error_set(err, -errno, "listen on %s: fchmod: %s", text, strerror(errno));
            goto out;
        }
        if (bind(fd, (struct sockaddr *)&sun, slen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
            r = lm_error_set(err, -errno, "listen on %s: %s", text, strerror(errno));
            goto out;
        }
        if (actual && cap)
            snprintf(actual, cap, "%s", text);
        break;
    }

    case LM_URI_TCP: {
        struct addrinfo hints = {
            .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
        int g = getaddrinfo(u->host, u->port, &hints, &res);
        if (g != 0) {
            r = lm_error_set(err, -EADDRNOTAVAIL, "listen on %s: cannot resolve '%s': %s", text,
                             u->host, g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
            goto out;
        }
        r = -EADDRNOTAVAIL;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) {
                r = -errno;
                continue;
            }
            /* A restarted destination must be able to listen again on the
             * port a dead one used (TIME_WAIT leftovers). */
            if ((r = setopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)) == 0) {
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
                    break;
                r = -errno;
            }
            close(fd);
            fd = -1;
        }
        if (fd < 0) {
            r = lm_error_set(err, r, "listen on %s: %s", text, strerror(-r));
            goto out;
        }
        r = 0;
        if (actual && cap) {
            struct sockaddr_storage ss;
            socklen_t sslen = sizeof ss;
            lm_uri a = {.kind = LM_URI_TCP, .fd = -1};
            if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
                r = lm_error_set(err, -errno, "listen on %s: getsockname: %s", text,
                                 strerror(errno));
                goto out;
            }
            int g2 = getnameinfo((struct sockaddr *)&ss, sslen, a.host, sizeof a.host, a.port,
                                 sizeof a.port, NI_NUMERICHOST | NI_NUMERICSERV);
            if (g2 != 0) {
                r = lm_error_set(err, -EINVAL, "listen on %s: getnameinfo: %s", text,
                                 gai_strerror(g2));
                goto out;
            }
            lm_uri_format(&a, actual, cap);
        }
        break;
    }

    default:
        r = lm_error_set(err, -EINVAL, "listen: bad URI kind %d", (int)u->kind);
        goto out;
    }

    *fd_out = fd; /* now owned by the caller */
    fd = -1;
    r = 0;
out:
    if (res)
        freeaddrinfo(res);
    if (fd >= 0)
        close(fd);
    return r;
}

/*
 * To interrupt a blocked lm_sock_accept(), another thread calls
 * shutdown(lfd, SHUT_RDWR): on Linux that wakes accept with EINVAL for both
 * TCP and unix listeners (tested in tests/unit/test_chan.c).  close(lfd)
 * does NOT wake a thread blocked in accept, and closing an fd another
 * thread still uses races with fd reuse: shut down, join, then close.
 */
int lm_sock_accept(int lfd, int *fd_out, lm_error *err)
{
    int fd, r;

    *fd_out = -1;
    for (;;) {
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        switch (errno) {
        case EINTR:
        case ECONNABORTED:
        /* accept(2): errors already pending on the new connection are
         * reported by accept; they concern that peer, not the listener. */
        case ENETDOWN:
        case EPROTO:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case ENETUNREACH:
            continue;
        case EINVAL: /* listener shut down */
        case EBADF:
            return lm_error_set(err, -ECANCELED, "accept: listening socket was shut down");
        default:
            return lm_error_set(err, -errno, "accept: %s", strerror(errno));
        }
    }
    if ((r = lm_sock_tune(fd, err)) < 0) {
        close(fd);
        return r;
    }
    *fd_out = fd; /* now owned by the caller */
    return 0;
}
