/*
 * test_chan.c - transports and channels: URI parsing (a table of good and
 * bad URIs), listen/connect/accept over tcp and unix, a 64 MiB transfer
 * with mixed write/read paths verified byte for byte, EOF and write errors,
 * shutdown from another thread unblocking reads, writes and accepts, and the
 * rate-limit window arithmetic.
 *
 * Threads: each test that needs a second party starts one helper thread
 * ("chan-test-*"), joins it with a deadline (pthread_timedjoin_np) and
 * fails instead of hanging.  No locks shared with the library.
 *
 * Timing: a test that needs a helper blocked in a call waits until the
 * kernel says it sleeps there (wait_blocked), never for a fixed time.  A
 * timeout under test is checked from below (it did not give up early) and
 * against LATE_MS, a bound no scheduling delay reaches and far below the
 * bugs it catches (a timeout taken as seconds, or ignored).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chan/chan.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Bound for "returned in time" and "a blocked helper wakes up": 20 s. */
#define LATE_MS 20000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Scheduler state of thread tid of this process ('R', 'S', ...), from
 * /proc/self/task/<tid>/stat; 0 if unreadable. */
static char task_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')'); /* the name may hold spaces and ')' */
    return rp && rp[1] == ' ' ? rp[2] : 0;
}

/* Waits until the helper whose tid is published in *tid (set just before
 * its blocking call) sleeps in the kernel: it is then inside that call,
 * since it makes no other sleeping call after publishing.  Polls, bounded
 * by LATE_MS; fails the test if it never blocks. */
static void wait_blocked(_Atomic pid_t *tid)
{
    for (int i = 0; i < LATE_MS; i++) {
        pid_t t = *tid;
        if (t > 0 && task_state(t) == 'S')
            return;
        sleep_ms(1);
    }
    fail_msg("helper thread never blocked (tid %d)", (int)*tid);
}

/* Joins t within ms milliseconds; fails the test if it does not end. */
static void join_within(pthread_t t, int ms, void **ret)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    int r = pthread_timedjoin_np(t, ret, &ts);
    if (r != 0)
        fail_msg("helper thread did not finish within %d ms (%s)", ms, strerror(r));
}

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        if (!strstr((hay), (needle)))                                                              \
            fail_msg("'%s' does not contain '%s'", (hay), (needle));                               \
    } while (0)

/* ----------------------------------------------------------- URI parsing */

struct good_uri {
    const char *in;
    lm_uri_kind kind;
    const char *host, *port, *path;
    int fd;
    const char *formatted; /* NULL = same as in */
};

static const struct good_uri good_uris[] = {
    {"tcp:127.0.0.1:4444", LM_URI_TCP, "127.0.0.1", "4444", NULL, -1, NULL},
    {"tcp:localhost:0", LM_URI_TCP, "localhost", "0", NULL, -1, NULL},
    {"tcp:host-a.example_1.org:65535", LM_URI_TCP, "host-a.example_1.org", "65535", NULL, -1, NULL},
    {"tcp:[::1]:4444", LM_URI_TCP, "::1", "4444", NULL, -1, NULL},
    {"tcp:[::]:1", LM_URI_TCP, "::", "1", NULL, -1, NULL},
    {"tcp:[fe80::1%eth0]:80", LM_URI_TCP, "fe80::1%eth0", "80", NULL, -1, NULL},
    {"tcp:[::ffff:1.2.3.4]:9", LM_URI_TCP, "::ffff:1.2.3.4", "9", NULL, -1, NULL},
    {"tcp:h:00080", LM_URI_TCP, "h", "80", NULL, -1, "tcp:h:80"},
    {"unix:/tmp/mig.sock", LM_URI_UNIX, NULL, NULL, "/tmp/mig.sock", -1, NULL},
    {"unix:rel/path:with:colons", LM_URI_UNIX, NULL, NULL, "rel/path:with:colons", -1, NULL},
    {"fd:0", LM_URI_FD, NULL, NULL, NULL, 0, NULL},
    {"fd:42", LM_URI_FD, NULL, NULL, NULL, 42, NULL},
    /* file: (fd holds the expected offset) */
    {"file:/tmp/snap", LM_URI_FILE, NULL, NULL, NULL, 0, NULL},
    {"file:rel/a:b,offset=4096", LM_URI_FILE, NULL, NULL, NULL, 4096, NULL},
    {"file:/s,offset=0x1000", LM_URI_FILE, NULL, NULL, NULL, 4096, "file:/s,offset=4096"},
    {"file:/s,offset=0", LM_URI_FILE, NULL, NULL, NULL, 0, "file:/s"},
    {"fd:2147483647", LM_URI_FD, NULL, NULL, NULL, 2147483647, NULL},
};

struct bad_uri {
    const char *in;
    const char *msg; /* expected substring */
};

static const struct bad_uri bad_uris[] = {
    {"", "empty URI"},
    {"hello", "missing scheme"},
    {"http://x:80", "unknown URI scheme 'http'"},
    {"TCP:h:1", "unknown URI scheme 'TCP'"},
    {"ftp:/tmp/x", "unknown URI scheme 'ftp'"},
    {"file:", "empty path"},
    {"file:,offset=4", "empty path"},
    {"file:/x,offset=", "offset is not a number"},
    {"file:/x,offset=12k", "offset is not a number"},
    {"file:/x,offset=99999999999999999999", "offset is too large"},
    {"file:/x,offset=0x8000000000000000", "offset is too large"},
    {"file:/x,size=4", "unknown option after ','"},
    /* Found by fuzz_uri: it formatted back as "file:/a,b", another URI. */
    {"file:/a,b,offset=0", "',' in the path"},
    {"file:/a,b,offset=16", "',' in the path"},
    {"tcp:host", "bad URI 'tcp:host': missing ':PORT'"},
    {"tcp:host:", "missing port"},
    {"tcp::4444", "empty host"},
    {"tcp:[]:4444", "empty host"},
    {"tcp:h:http", "port is not a number"},
    {"tcp:h:-1", "port is not a number"},
    {"tcp:h:65536", "greater than 65535"},
    {"tcp:h:99999999999999999999", "greater than 65535"},
    {"tcp:h:80x", "trailing junk after the port"},
    {"tcp:h:80 ", "trailing junk after the port"},
    {"tcp:::1:4444", "IPv6 hosts must be in brackets"},
    {"tcp:[::1:4444", "missing ']'"},
    {"tcp:[::1]4444", "trailing junk after ']'"},
    {"tcp:[::1]", "missing ':PORT'"},
    {"tcp:[1.2.3.4]:80", "brackets are only for IPv6"},
    {"tcp:[::g]:80", "invalid character in IPv6 host"},
    {"tcp:[fe80::1%]:80", "empty IPv6 zone"},
    {"tcp:ho st:80", "invalid character in host"},
    {"tcp:h/x:80", "invalid character in host"},
    {"unix:", "empty socket path"},
#define A20 "aaaaaaaaaaaaaaaaaaaa"
    {"unix:/" A20 A20 A20 A20 A20 A20 A20, "141 bytes, at most 107 allowed"},
#undef A20
    {"fd:", "fd is not a non-negative integer"},
    {"fd:-1", "fd is not a non-negative integer"},
    {"fd:abc", "fd is not a non-negative integer"},
    {"fd:3x", "trailing junk after the fd number"},
    {"fd:2147483648", "fd number too large"},
};

static void test_uri_parse_good(void **state)
{
    for (size_t i = 0; i < sizeof good_uris / sizeof good_uris[0]; i++) {
        const struct good_uri *g = &good_uris[i];
        lm_uri u;
        lm_error err = {0};
        memset(&u, 0x5a, sizeof u);
        int r = lm_uri_parse(g->in, &u, &err);
        if (r != 0)
            fail_msg("'%s' rejected: %s", g->in, err.msg);
        assert_int_equal(err.code, 0);
        assert_int_equal(u.kind, g->kind);
        if (g->host)
            assert_string_equal(u.host, g->host);
        if (g->port)
            assert_string_equal(u.port, g->port);
        if (g->path)
            assert_string_equal(u.path, g->path);
        if (g->kind == LM_URI_FD)
            assert_int_equal(u.fd, g->fd);
        if (g->kind == LM_URI_FILE)
            assert_int_equal(u.offset, (uint64_t)g->fd);
        char out[512];
        assert_ptr_equal(lm_uri_format(&u, out, sizeof out), out);
        assert_string_equal(out, g->formatted ? g->formatted : g->in);
        /* Formatting is truncated, never overflows. */
        char small[6];
        lm_uri_format(&u, small, sizeof small);
        assert_true(strlen(small) < sizeof small);
    }
}

static void test_uri_parse_bad(void **state)
{
    char path_107[200] = "unix:/";
    memset(path_107 + 6, 'p', 106); /* "/" + 106 = 107 bytes: the limit */
    lm_uri u;
    lm_error err = {0};
    assert_int_equal(lm_uri_parse(path_107, &u, &err), 0);
    assert_int_equal(strlen(u.path), 107);
    strcat(path_107, "p");
    assert_true(lm_uri_parse(path_107, &u, &err) < 0);
    assert_contains(err.msg, "108 bytes, at most 107 allowed");

    for (size_t i = 0; i < sizeof bad_uris / sizeof bad_uris[0]; i++) {
        const struct bad_uri *b = &bad_uris[i];
        lm_error e = {0};
        lm_uri before, after;
        memset(&before, 0x33, sizeof before);
        after = before;
        int r = lm_uri_parse(b->in, &after, &e);
        if (r >= 0)
            fail_msg("'%s' was accepted", b->in);
        assert_int_equal(r, e.code);
        if (!strstr(e.msg, b->msg))
            fail_msg("'%s': message '%s' lacks '%s'", b->in, e.msg, b->msg);
        /* out is left alone on failure */
        assert_memory_equal(&before, &after, sizeof before);
    }

    /* Non-printable and very long input is quoted readably. */
    char junk[600];
    memset(junk, 'x', sizeof junk - 1);
    junk[sizeof junk - 1] = 0;
    memcpy(junk, "ssh\x01\x7f", 5);
    lm_error e = {0};
    assert_true(lm_uri_parse(junk, &u, &e) < 0);
    assert_contains(e.msg, "ssh??");
    assert_contains(e.msg, "...");
    assert_true(strlen(e.msg) < 200);

    /* NULL err is allowed */
    assert_true(lm_uri_parse("nope", &u, NULL) < 0);
}

/* ---------------------------------------------------- listen / connect */

static int get_int_opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

static void check_tcp_tuned(int fd)
{
    assert_int_equal(get_int_opt(fd, IPPROTO_TCP, TCP_NODELAY) != 0, 1);
    assert_int_equal(get_int_opt(fd, SOL_SOCKET, SO_KEEPALIVE) != 0, 1);
    assert_int_equal(get_int_opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 5);
    assert_int_equal(get_int_opt(fd, IPPROTO_TCP, TCP_KEEPINTVL), 1);
    assert_int_equal(get_int_opt(fd, IPPROTO_TCP, TCP_KEEPCNT), 5);
    assert_int_equal(get_int_opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 10000);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
}

/* Listens on uri, connects to the actual address, accepts, and checks that
 * bytes flow both ways through two channels. */
static void roundtrip_via(const char *uri_text, char *actual_out, size_t cap)
{
    lm_uri u, a;
    lm_error err = {0};
    int lfd = -1, cfd = -1, sfd = -1;
    char actual[300];

    assert_int_equal(lm_uri_parse(uri_text, &u, &err), 0);
    if (lm_uri_listen(&u, &lfd, actual, sizeof actual, &err) != 0)
        fail_msg("listen %s: %s", uri_text, err.msg);
    assert_true(get_int_opt(lfd, SOL_SOCKET, SO_ACCEPTCONN));
    assert_true(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
    if (lm_uri_parse(actual, &a, &err) != 0)
        fail_msg("actual address '%s' does not parse: %s", actual, err.msg);
    if (a.kind == LM_URI_TCP)
        assert_string_not_equal(a.port, "0");
    if (lm_uri_connect(&a, 2000, &cfd, &err) != 0)
        fail_msg("connect %s: %s", actual, err.msg);
    if (lm_sock_accept(lfd, &sfd, &err) != 0)
        fail_msg("accept: %s", err.msg);
    if (a.kind == LM_URI_TCP) {
        check_tcp_tuned(cfd);
        check_tcp_tuned(sfd);
    }
    assert_true(fcntl(sfd, F_GETFD) & FD_CLOEXEC);
    if (a.kind == LM_URI_UNIX) /* above the 208 KiB default, whatever the cap */
        assert_true(get_int_opt(cfd, SOL_SOCKET, SO_SNDBUF) > 300000);

    lm_chan *c = NULL, *s = NULL;
    assert_int_equal(lm_chan_new(cfd, "client channel", &c, &err), 0);
    assert_int_equal(lm_chan_new(sfd, "server channel", &s, &err), 0);
    assert_int_equal(lm_chan_fd(c), cfd);
    const char ping[] = "ping", pong[] = "pong!";
    char buf[16] = {0};
    assert_int_equal(lm_chan_put(c, ping, sizeof ping), 0);
    assert_int_equal(lm_chan_flush(c), 0);
    assert_int_equal(lm_chan_read_full(s, buf, sizeof ping), 0);
    assert_string_equal(buf, ping);
    assert_int_equal(lm_chan_write_ref(s, "hd", 2, pong, sizeof pong), 0);
    assert_int_equal(lm_chan_flush(s), 0);
    assert_int_equal(lm_chan_read_full(c, buf, 2 + sizeof pong), 0);
    assert_memory_equal(buf, "hdpong!", 2 + sizeof pong);
    assert_int_equal(lm_chan_bytes_written(c), sizeof ping);
    assert_int_equal(lm_chan_bytes_read(s), sizeof ping);
    lm_chan_free(c);
    lm_chan_free(s);
    close(lfd);
    if (actual_out)
        snprintf(actual_out, cap, "%s", actual);
}

static void test_tcp_listen_connect_accept(void **state)
{
    char actual[300];
    roundtrip_via("tcp:127.0.0.1:0", actual, sizeof actual);
    assert_contains(actual, "tcp:127.0.0.1:");

    /* IPv6 loopback, when this machine has it. */
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&sin6, sizeof sin6) == 0;
    if (probe >= 0)
        close(probe);
    if (have_v6) {
        roundtrip_via("tcp:[::1]:0", actual, sizeof actual);
        assert_contains(actual, "tcp:[::1]:");
    }
}

static void test_tcp_listen_port_in_use(void **state)
{
    lm_uri u, a;
    lm_error err = {0};
    int lfd = -1, lfd2 = -1;
    char actual[300];
    assert_int_equal(lm_uri_parse("tcp:127.0.0.1:0", &u, &err), 0);
    assert_int_equal(lm_uri_listen(&u, &lfd, actual, sizeof actual, &err), 0);
    assert_int_equal(lm_uri_parse(actual, &a, &err), 0);
    assert_true(lm_uri_listen(&a, &lfd2, NULL, 0, &err) < 0);
    assert_int_equal(lfd2, -1);
    assert_contains(err.msg, "listen on tcp:127.0.0.1:");
    assert_contains(err.msg, "Address already in use");
    close(lfd);
}

static char tmpdir[64];

static int setup_tmpdir(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lm-chan-test-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_unix_listen_connect_accept(void **state)
{
    char uri[200], actual[300];
    snprintf(uri, sizeof uri, "unix:%s/mig.sock", tmpdir);
    roundtrip_via(uri, actual, sizeof actual);
    assert_string_equal(actual, uri);

    /* The listener is closed, its socket file stays: listening again
     * removes the stale file. */
    struct stat st;
    assert_int_equal(stat(uri + 5, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    roundtrip_via(uri, NULL, 0);

    /* A live listener is not stolen. */
    lm_uri u;
    lm_error err = {0};
    int lfd = -1, lfd2 = -1;
    assert_int_equal(lm_uri_parse(uri, &u, &err), 0);
    assert_int_equal(lm_uri_listen(&u, &lfd, NULL, 0, &err), 0);
    assert_true(lm_uri_listen(&u, &lfd2, NULL, 0, &err) < 0);
    assert_int_equal(err.code, -EADDRINUSE);
    assert_contains(err.msg, "another process is listening");
    close(lfd);

    /* Something that is not a socket is never removed. */
    char fpath[160];
    snprintf(fpath, sizeof fpath, "%s/regular", tmpdir);
    int f = open(fpath, O_CREAT | O_WRONLY, 0600);
    assert_true(f >= 0);
    close(f);
    snprintf(uri, sizeof uri, "unix:%s", fpath);
    assert_int_equal(lm_uri_parse(uri, &u, &err), 0);
    lm_error_clear(&err);
    assert_true(lm_uri_listen(&u, &lfd2, NULL, 0, &err) < 0);
    assert_contains(err.msg, "exists and is not a socket");
    assert_int_equal(stat(fpath, &st), 0);
    assert_true(S_ISREG(st.st_mode));
}

static void test_fd_uri(void **state)
{
    int sv[2];
    lm_uri u;
    lm_error err = {0};
    char text[32];
    int fd = -1;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    snprintf(text, sizeof text, "fd:%d", sv[0]);
    assert_int_equal(lm_uri_parse(text, &u, &err), 0);
    assert_int_equal(lm_uri_connect(&u, 1000, &fd, &err), 0);
    assert_true(fd >= 0 && fd != sv[0]);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    /* the dup is the same socket */
    assert_int_equal(write(fd, "x", 1), 1);
    char ch = 0;
    assert_int_equal(read(sv[1], &ch, 1), 1);
    assert_int_equal(ch, 'x');
    close(fd);

    char actual[32];
    assert_int_equal(lm_uri_listen(&u, &fd, actual, sizeof actual, &err), 0);
    assert_string_equal(actual, text);
    close(fd);
    close(sv[0]);
    close(sv[1]);

    /* a closed fd */
    assert_int_equal(lm_uri_connect(&u, 1000, &fd, &err), -EBADF);
    assert_int_equal(fd, -1);
    assert_contains(err.msg, "connect to fd:");
    assert_contains(err.msg, "Bad file descriptor");

    /* tuning a pipe is a no-op, not an error */
    int p[2];
    assert_int_equal(pipe(p), 0);
    lm_error_clear(&err);
    assert_int_equal(lm_sock_tune(p[1], &err), 0);
    close(p[0]);
    close(p[1]);
}

/* A port that nobody listens on: bound (so nobody else gets it) but not
 * listening, so a SYN to it is answered by RST. */
static void test_connect_refused(void **state)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &len), 0);

    char text[64], expect[96];
    snprintf(text, sizeof text, "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
    snprintf(expect, sizeof expect, "connect to %s: Connection refused", text);
    lm_uri u;
    lm_error err = {0};
    int fd = 123;
    assert_int_equal(lm_uri_parse(text, &u, &err), 0);
    assert_int_equal(lm_uri_connect(&u, 2000, &fd, &err), -ECONNREFUSED);
    assert_int_equal(fd, -1);
    assert_string_equal(err.msg, expect);
    close(s);

    /* unix socket path with nothing there */
    char uri[200];
    snprintf(uri, sizeof uri, "unix:%s/nobody.sock", tmpdir);
    assert_int_equal(lm_uri_parse(uri, &u, &err), 0);
    lm_error_clear(&err);
    assert_int_equal(lm_uri_connect(&u, 2000, &fd, &err), -ENOENT);
    assert_contains(err.msg, "No such file or directory");
}

/* A listener whose accept queue is full drops SYNs (tcp) or makes
 * connectors wait for room (unix): connect must give up at the deadline. */
static void connect_times_out(int lfd, const char *text)
{
    lm_uri u;
    lm_error err = {0};
    int fds[8], nfds = 0, fd = -1;
    assert_int_equal(lm_uri_parse(text, &u, &err), 0);
    for (;;) {
        if (nfds == 8)
            fail_msg("%s: accept queue never filled", text);
        lm_error_clear(&err);
        uint64_t t0 = now_ns();
        int r = lm_uri_connect(&u, 300, &fd, &err);
        uint64_t ms = (now_ns() - t0) / 1000000;
        if (r == 0) {
            fds[nfds++] = fd;
            continue;
        }
        assert_int_equal(r, -ETIMEDOUT);
        assert_int_equal(fd, -1);
        assert_contains(err.msg, "timed out after 300 ms");
        assert_contains(err.msg, text);
        if (ms < 250 || ms > LATE_MS)
            fail_msg("%s: connect timed out after %llu ms, expected 300 (at most %d)", text,
                     (unsigned long long)ms, LATE_MS);
        break;
    }
    while (nfds)
        close(fds[--nfds]);
    close(lfd);
}

static void test_connect_timeout(void **state)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(l, 0), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);
    char text[64];
    snprintf(text, sizeof text, "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
    connect_times_out(l, text);

    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s/full.sock", tmpdir);
    l = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(l, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(l, 0), 0);
    char utext[200];
    snprintf(utext, sizeof utext, "unix:%s", sun.sun_path);
    connect_times_out(l, utext);
}

/* ------------------------------------------------ accept and shutdown */

struct accept_arg {
    int lfd;
    int r;
    lm_error err;
    _Atomic pid_t tid;
    _Atomic uint64_t returned_ns;
};

static void *accept_thread(void *p)
{
    struct accept_arg *a = p;
    pthread_setname_np(pthread_self(), "chan-test-acc");
    int fd = -1;
    a->tid = gettid();
    a->r = lm_sock_accept(a->lfd, &fd, &a->err);
    a->returned_ns = now_ns();
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void accept_is_cancelled(const char *uri_text)
{
    lm_uri u;
    lm_error err = {0};
    struct accept_arg a = {.lfd = -1};
    pthread_t t;
    assert_int_equal(lm_uri_parse(uri_text, &u, &err), 0);
    assert_int_equal(lm_uri_listen(&u, &a.lfd, NULL, 0, &err), 0);
    assert_int_equal(pthread_create(&t, NULL, accept_thread, &a), 0);
    wait_blocked(&a.tid); /* blocked in accept, not about to call it */
    assert_int_equal(a.returned_ns, 0);
    uint64_t t0 = now_ns();
    assert_int_equal(shutdown(a.lfd, SHUT_RDWR), 0);
    join_within(t, LATE_MS, NULL);
    assert_int_equal(a.r, -ECANCELED);
    assert_contains(a.err.msg, "shut down");
    assert_true(a.returned_ns >= t0); /* woken by the shutdown */
    close(a.lfd);
}

static void test_accept_shutdown_tcp(void **state)
{
    accept_is_cancelled("tcp:127.0.0.1:0");
}

static void test_accept_shutdown_unix(void **state)
{
    char uri[200];
    snprintf(uri, sizeof uri, "unix:%s/acc.sock", tmpdir);
    accept_is_cancelled(uri);
}

struct io_arg {
    lm_chan *c;
    int r;
    _Atomic pid_t tid;
    _Atomic uint64_t returned_ns;
    size_t n;
    char *buf;
};

static void *blocked_reader(void *p)
{
    struct io_arg *a = p;
    pthread_setname_np(pthread_self(), "chan-test-rd");
    a->tid = gettid();
    a->r = lm_chan_read_full(a->c, a->buf, a->n);
    a->returned_ns = now_ns();
    return NULL;
}

static void *blocked_writer(void *p)
{
    struct io_arg *a = p;
    pthread_setname_np(pthread_self(), "chan-test-wr");
    /* The peer never reads: this fills both socket buffers and blocks. */
    a->tid = gettid();
    for (int i = 0; i < 1024; i++) {
        a->r = lm_chan_write_ref(a->c, "h", 1, a->buf, a->n);
        if (a->r < 0)
            break;
    }
    a->returned_ns = now_ns();
    return NULL;
}

static void shutdown_unblocks(void *(*fn)(void *), size_t n)
{
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    pthread_t t;
    struct io_arg a = {.n = n, .buf = calloc(1, n)};
    assert_non_null(a.buf);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "main channel", &c, &err), 0);
    a.c = c;
    /* a little data first, so a reader is blocked mid-read, not at start */
    assert_int_equal(write(sv[1], "abc", 3), 3);
    assert_int_equal(pthread_create(&t, NULL, fn, &a), 0);
    wait_blocked(&a.tid);
    assert_int_equal(a.returned_ns, 0); /* still blocked */
    uint64_t t0 = now_ns();
    lm_chan_shutdown(c, "migration cancelled");
    join_within(t, LATE_MS, NULL);
    assert_true(a.returned_ns >= t0); /* woken by the shutdown */
    assert_int_equal(a.r, -ECANCELED);
    lm_error_clear(&err);
    assert_int_equal(lm_chan_get_error(c, &err), -ECANCELED);
    assert_string_equal(err.msg, "main channel: migration cancelled");
    /* sticky: every later call fails at once */
    char b[4];
    assert_int_equal(lm_chan_read_full(c, b, 1), -ECANCELED);
    assert_int_equal(lm_chan_put(c, b, 1), -ECANCELED);
    assert_int_equal(lm_chan_flush(c), -ECANCELED);
    assert_int_equal(lm_chan_wait_readable(c, 0), -ECANCELED);
    lm_chan_free(c);
    close(sv[1]);
    free(a.buf);
}

static void test_shutdown_unblocks_read(void **state)
{
    shutdown_unblocks(blocked_reader, 1 << 20);
}

static void test_shutdown_unblocks_write(void **state)
{
    shutdown_unblocks(blocked_writer, 1 << 20);
}

/* A non-blocking socket (fd: URIs may hand one in) with SO_RCVTIMEO /
 * SO_SNDTIMEO: the channel waits in poll(2) there, and must give up after
 * the socket's own timeout as a blocking one does (issue 12, defect 1:
 * it waited for ever).  The helper thread is joined with a deadline, so
 * the old behaviour fails here instead of hanging. */
static void timeout_nonblocking(void *(*fn)(void *), int opt)
{
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    pthread_t t;
    struct io_arg a = {.n = 1 << 20, .buf = calloc(1, 1 << 20)};
    assert_non_null(a.buf);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    assert_int_equal(setsockopt(sv[0], SOL_SOCKET, opt, &tv, sizeof tv), 0);
    assert_int_equal(lm_chan_new(sv[0], "main channel", &c, &err), 0);
    a.c = c;
    uint64_t t0 = now_ns();
    assert_int_equal(pthread_create(&t, NULL, fn, &a), 0);
    join_within(t, LATE_MS, NULL);
    assert_true(a.returned_ns - t0 >= 190000000ull); /* not before its time */
    assert_int_equal(a.r, -ETIMEDOUT);
    lm_error_clear(&err);
    assert_int_equal(lm_chan_get_error(c, &err), -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "timed out"));
    lm_chan_free(c);
    close(sv[1]);
    free(a.buf);
}

static void test_read_timeout_nonblocking(void **state)
{
    timeout_nonblocking(blocked_reader, SO_RCVTIMEO);
}

static void test_write_timeout_nonblocking(void **state)
{
    timeout_nonblocking(blocked_writer, SO_SNDTIMEO);
}

/* --------------------------------------------------------- errors */

/* read_exact takes what the buffer holds, then reads exactly the rest, so
 * after it the socket still holds what follows (no read-ahead). */
static void test_read_exact(void **state)
{
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "main channel", &c, &err), 0);
    assert_int_equal(write(sv[1], "hdr1", 4), 4);
    char buf[16];
    /* buffered: read_full of 2 bytes reads ahead "hdr1" */
    assert_int_equal(lm_chan_read_full(c, buf, 2), 0);
    assert_int_equal(write(sv[1], "payload", 7), 7);
    /* 2 bytes from the buffer, 3 from the socket, nothing more */
    assert_int_equal(lm_chan_read_exact(c, buf, 5), 0);
    assert_memory_equal(buf, "r1pay", 5);
    int queued = 0;
    assert_int_equal(ioctl(sv[0], FIONREAD, &queued), 0);
    assert_int_equal(queued, 4); /* "load" still in the socket */
    assert_int_equal(lm_chan_read_exact(c, buf, 4), 0);
    assert_memory_equal(buf, "load", 4);
    close(sv[1]);
    assert_int_equal(lm_chan_read_exact(c, buf, 1), -EPIPE);
    lm_chan_free(c);
}

static void test_eof_mid_read(void **state)
{
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "main channel", &c, &err), 0);
    assert_int_equal(write(sv[1], "0123456789", 10), 10);
    close(sv[1]);
    char buf[20];
    assert_int_equal(lm_chan_read_full(c, buf, 4), 0);
    assert_memory_equal(buf, "0123", 4);
    assert_int_equal(lm_chan_read_full(c, buf, 20), -EPIPE);
    assert_int_equal(lm_chan_get_error(c, &err), -EPIPE);
    assert_string_equal(err.msg, "main channel: peer closed the connection");
    /* first error wins */
    lm_chan_set_error(c, -EPROTO, "later symptom");
    lm_chan_shutdown(c, "cancel");
    lm_error e2 = {0};
    assert_int_equal(lm_chan_get_error(c, &e2), -EPIPE);
    assert_string_equal(e2.msg, "main channel: peer closed the connection");
    assert_int_equal(lm_chan_skip(c, 1), -EPIPE);
    lm_chan_free(c);

    /* a large (direct) read cut short */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "multifd 3", &c, &err), 0);
    char *big = calloc(1, 1 << 20);
    assert_int_equal(write(sv[1], big, 100000), 100000);
    close(sv[1]);
    assert_int_equal(lm_chan_read_full(c, big, 1 << 20), -EPIPE);
    lm_error_clear(&err);
    lm_chan_get_error(c, &err);
    assert_string_equal(err.msg, "multifd 3: peer closed the connection");
    assert_int_equal(lm_chan_bytes_read(c), 100000);
    free(big);
    lm_chan_free(c);
}

static void test_write_to_closed_peer(void **state)
{
    /* SIGPIPE must not kill us: make sure it would if it were raised. */
    signal(SIGPIPE, SIG_DFL);
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    char *page = calloc(1, 1 << 16);

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "main channel", &c, &err), 0);
    close(sv[1]);
    assert_int_equal(lm_chan_write_ref(c, "hdr", 3, page, 1 << 16), -EPIPE);
    assert_int_equal(lm_chan_get_error(c, &err), -EPIPE);
    assert_string_equal(err.msg, "main channel: write: Broken pipe");
    assert_int_equal(lm_chan_put(c, "x", 1), -EPIPE);
    assert_int_equal(lm_chan_flush(c), -EPIPE);
    lm_chan_free(c);

    /* buffered bytes fail at flush */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "rp", &c, &err), 0);
    close(sv[1]);
    assert_int_equal(lm_chan_put(c, "x", 1), 0);
    assert_int_equal(lm_chan_flush(c), -EPIPE);
    lm_chan_free(c);

    /* a pipe (fd: URI): writev path, SIGPIPE blocked and swallowed */
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(lm_chan_new(p[1], "pipe channel", &c, &err), 0);
    close(p[0]);
    assert_int_equal(lm_chan_write_ref(c, "hdr", 3, page, 1 << 16), -EPIPE);
    lm_error_clear(&err);
    lm_chan_get_error(c, &err);
    assert_string_equal(err.msg, "pipe channel: write: Broken pipe");
    sigset_t pend;
    sigpending(&pend);
    assert_false(sigismember(&pend, SIGPIPE));
    lm_chan_free(c);
    free(page);
}

static void test_pipe_and_file_channels(void **state)
{
    /* writev/read fallback for non-sockets: a pipe both ways */
    int p[2];
    lm_chan *w = NULL, *r = NULL;
    lm_error err = {0};
    assert_int_equal(pipe(p), 0);
    assert_int_equal(lm_chan_new(p[1], "w", &w, &err), 0);
    assert_int_equal(lm_chan_new(p[0], "r", &r, &err), 0);
    assert_int_equal(lm_chan_put(w, "hello", 5), 0);
    assert_int_equal(lm_chan_write_ref(w, " ", 1, "world", 5), 0);
    assert_int_equal(lm_chan_flush(w), 0);
    char buf[16] = {0};
    assert_int_equal(lm_chan_wait_readable(r, 1000), 1);
    assert_int_equal(lm_chan_read_full(r, buf, 11), 0);
    assert_string_equal(buf, "hello world");
    lm_chan_free(w);
    lm_chan_free(r);

    /* lm_chan_new takes the fd even when it fails */
    lm_chan *c = (lm_chan *)1;
    assert_int_equal(lm_chan_new(-1, "x", &c, &err), -EBADF);
    assert_null(c);
}

static void test_wait_readable(void **state)
{
    int sv[2];
    lm_chan *c = NULL;
    lm_error err = {0};
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(lm_chan_new(sv[0], "rp", &c, &err), 0);
    uint64_t t0 = now_ns();
    assert_int_equal(lm_chan_wait_readable(c, 100), 0);
    uint64_t ms = (now_ns() - t0) / 1000000;
    assert_true(ms >= 90 && ms < LATE_MS); /* waited its 100 ms, and no more than "in time" */
    assert_int_equal(lm_chan_wait_readable(c, 0), 0);
    assert_int_equal(write(sv[1], "ab", 2), 2);
    assert_int_equal(lm_chan_wait_readable(c, 1000), 1);
    char ch;
    assert_int_equal(lm_chan_read_full(c, &ch, 1), 0);
    assert_int_equal(ch, 'a');
    /* 'b' is buffered now, nothing left on the socket */
    assert_int_equal(lm_chan_wait_readable(c, 0), 1);
    assert_int_equal(lm_chan_read_full(c, &ch, 1), 0);
    assert_int_equal(ch, 'b');
    assert_int_equal(lm_chan_wait_readable(c, 0), 0);
    /* EOF is "readable": the read reports it */
    close(sv[1]);
    assert_int_equal(lm_chan_wait_readable(c, 1000), 1);
    assert_int_equal(lm_chan_read_full(c, &ch, 1), -EPIPE);
    lm_chan_free(c);
}

/* -------------------------------------------------- large transfer */

#define XFER_BYTES (64u << 20)

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: deterministic sizes for both sides */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

struct xfer {
    lm_chan *c;
    const uint8_t *src;
    int r;
    int puts, refs, vrefs;
};

static void *xfer_writer(void *p)
{
    struct xfer *x = p;
    pthread_setname_np(pthread_self(), "chan-test-xw");
    uint64_t seed = 0x1234567;
    size_t off = 0;
    x->r = 0;
    while (off < XFER_BYTES && x->r == 0) {
        uint64_t k = rng_next(&seed);
        size_t left = XFER_BYTES - off, n;
        switch (k % 8) {
        case 0:
        case 1:
        case 2: /* small puts */
            n = 1 + (k >> 8) % 300;
            n = n < left ? n : left;
            x->r = lm_chan_put(x->c, x->src + off, n);
            x->puts++;
            break;
        case 3: /* a put larger than the write buffer */
            n = 1 + (k >> 8) % 200000;
            n = n < left ? n : left;
            x->r = lm_chan_put(x->c, x->src + off, n);
            x->puts++;
            break;
        case 4:
        case 5: { /* header + data by reference */
            size_t h = (k >> 8) % 33;
            h = h < left ? h : left;
            size_t d = (k >> 16) % (1u << 20);
            d = d < left - h ? d : left - h;
            x->r = lm_chan_write_ref(x->c, x->src + off, h, x->src + off + h, d);
            n = h + d;
            x->refs++;
            break;
        }
        case 6: { /* several pieces */
            struct iovec v[64];
            int cnt = 1 + (int)((k >> 8) % 64);
            size_t h = (k >> 16) % 17;
            h = h < left ? h : left;
            n = h;
            for (int i = 0; i < cnt; i++) {
                size_t d = (rng_next(&seed) >> 20) % 9000;
                d = d < left - n ? d : left - n;
                v[i].iov_base = (void *)(x->src + off + n);
                v[i].iov_len = d;
                n += d;
            }
            x->r = lm_chan_writev_ref(x->c, x->src + off, h, v, cnt);
            x->vrefs++;
            break;
        }
        default:
            n = 0;
            x->r = lm_chan_flush(x->c);
            break;
        }
        off += n;
    }
    if (x->r == 0)
        x->r = lm_chan_flush(x->c);
    return NULL;
}

/* slice: lm_chan_set_io_slice() on both ends (0: none). */
static void transfer_through(int wfd, int rfd, size_t slice)
{
    lm_chan *w = NULL, *r = NULL;
    lm_error err = {0};
    uint8_t *src = malloc(XFER_BYTES), *dst = malloc(XFER_BYTES);
    assert_non_null(src);
    assert_non_null(dst);
    uint64_t s = 42;
    for (size_t i = 0; i < XFER_BYTES; i += 8) {
        uint64_t v = rng_next(&s);
        memcpy(src + i, &v, 8);
    }
    memset(dst, 0xee, XFER_BYTES);
    assert_int_equal(lm_chan_new(wfd, "xfer out", &w, &err), 0);
    assert_int_equal(lm_chan_new(rfd, "xfer in", &r, &err), 0);
    lm_chan_set_io_slice(w, slice);
    lm_chan_set_io_slice(r, slice);

    struct xfer x = {.c = w, .src = src};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, xfer_writer, &x), 0);

    uint64_t seed = 99;
    size_t off = 0;
    int skips = 0, larges = 0;
    while (off < XFER_BYTES) {
        uint64_t k = rng_next(&seed);
        size_t left = XFER_BYTES - off, n;
        switch (k % 6) {
        case 0:
        case 1:
            n = 1 + (k >> 8) % 100;
            break;
        case 2: /* below DIRECT_READ_MIN: through the read buffer */
            n = 1 + (k >> 8) % 65535;
            break;
        case 3:
        case 4: /* straight into dst */
            n = 65536 + (k >> 8) % (3u << 20);
            larges++;
            break;
        default:
            n = 1 + (k >> 8) % 5000;
            break;
        }
        n = n < left ? n : left;
        if (k % 97 == 0) {
            /* skip: the following reads land at the right offset only if
             * exactly n bytes were dropped */
            if (lm_chan_skip(r, n) != 0)
                break;
            memcpy(dst + off, src + off, n);
            skips++;
        } else {
            if (lm_chan_read_full(r, dst + off, n) != 0)
                break;
            if (memcmp(dst + off, src + off, n) != 0)
                fail_msg("mismatch in bytes [%zu, %zu)", off, off + n);
        }
        off += n;
    }
    join_within(t, 60000, NULL);
    lm_error_clear(&err);
    if (lm_chan_get_error(r, &err))
        fail_msg("reader: %s", err.msg);
    assert_int_equal(x.r, 0);
    assert_int_equal(off, XFER_BYTES);
    assert_memory_equal(dst, src, XFER_BYTES);
    assert_true(x.puts > 100 && x.refs > 10 && x.vrefs > 10 && larges > 10 && skips > 0);
    assert_int_equal(lm_chan_bytes_written(w), XFER_BYTES);
    assert_int_equal(lm_chan_bytes_read(r), XFER_BYTES);
    assert_true(lm_chan_write_busy_ns(w) > 0);
    /* nothing more: the reader sees EOF once the writer is gone */
    lm_chan_free(w);
    char ch;
    assert_int_equal(lm_chan_read_full(r, &ch, 1), -EPIPE);
    lm_chan_free(r);
    free(src);
    free(dst);
}

static void test_large_transfer_socketpair(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    transfer_through(sv[0], sv[1], 0);
}

/* Non-blocking fds (an fd: URI may hand one in) make the kernel accept
 * partial writes and return EAGAIN: the resume-after-partial-write and
 * wait-for-room paths run here, for sockets and for pipes. */
static void set_nonblock(int fd)
{
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

static void test_large_transfer_nonblocking(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    transfer_through(sv[0], sv[1], 0);

    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    transfer_through(p[1], p[0], 0);
}

/* Postcopy's bulk channel moves at most a slice per syscall: a slice that
 * is no multiple of anything cuts header/page vectors and reads at every
 * kind of place; the bytes must arrive whole and in order.  Blocking and
 * non-blocking (partial writes on top of the cuts). */
static void test_large_transfer_sliced(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    transfer_through(sv[0], sv[1], 12345);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    transfer_through(sv[0], sv[1], 4097);
}

static void test_large_transfer_tcp(void **state)
{
    lm_uri u, a;
    lm_error err = {0};
    int lfd, cfd, sfd;
    char actual[300];
    assert_int_equal(lm_uri_parse("tcp:127.0.0.1:0", &u, &err), 0);
    assert_int_equal(lm_uri_listen(&u, &lfd, actual, sizeof actual, &err), 0);
    assert_int_equal(lm_uri_parse(actual, &a, &err), 0);
    assert_int_equal(lm_uri_connect(&a, 2000, &cfd, &err), 0);
    assert_int_equal(lm_sock_accept(lfd, &sfd, &err), 0);
    close(lfd);
    transfer_through(cfd, sfd, 0);
}

/* ------------------------------------------------------- rate limit */

static void test_ratelimit(void **state)
{
    lm_ratelimit rl;
    const uint64_t T = 1000000000000ull; /* arbitrary clock origin */
    const uint64_t W = LM_RATE_WINDOW_NS;

    lm_rl_init(&rl, 10000, T); /* 1000 bytes per 100 ms window */
    assert_int_equal(lm_rl_budget(&rl), 1000);
    assert_false(lm_rl_exceeded(&rl));
    lm_rl_account(&rl, 600);
    assert_int_equal(lm_rl_budget(&rl), 400);
    assert_false(lm_rl_exceeded(&rl));
    /* a new limit counts in this window at once */
    lm_rl_set(&rl, 5000);
    assert_int_equal(lm_rl_budget(&rl), 0);
    assert_true(lm_rl_exceeded(&rl));
    lm_rl_set(&rl, 20000);
    assert_int_equal(lm_rl_budget(&rl), 1400);
    lm_rl_account(&rl, 1400);
    assert_true(lm_rl_exceeded(&rl));
    assert_int_equal(lm_rl_budget(&rl), 0);

    assert_int_equal(lm_rl_wait_ns(&rl, T), W);
    assert_int_equal(lm_rl_wait_ns(&rl, T + 30000000), W - 30000000);
    assert_int_equal(lm_rl_wait_ns(&rl, T + W), 0);
    assert_int_equal(lm_rl_wait_ns(&rl, T + 5 * W), 0);

    /* not over yet: nothing changes */
    lm_rl_tick(&rl, T + W - 1);
    assert_true(lm_rl_exceeded(&rl));
    assert_int_equal(rl.window_start_ns, T);
    /* over: a fresh window starting now */
    lm_rl_tick(&rl, T + W + 5);
    assert_int_equal(rl.window_start_ns, T + W + 5);
    assert_false(lm_rl_exceeded(&rl));
    assert_int_equal(lm_rl_budget(&rl), 2000);
    assert_int_equal(lm_rl_wait_ns(&rl, T + W + 5), W);

    /* overshoot (a record cannot be split) is carried over as debt... */
    uint64_t t = T + W + 5;
    lm_rl_account(&rl, 2500);
    lm_rl_tick(&rl, t + W);
    assert_int_equal(lm_rl_budget(&rl), 1500);
    /* ...paid off by elapsed time, at most one window's worth */
    lm_rl_account(&rl, 100000);
    lm_rl_tick(&rl, t + 2 * W);
    assert_true(lm_rl_exceeded(&rl));
    lm_rl_tick(&rl, t + 3 * W);
    assert_int_equal(lm_rl_budget(&rl), 2000);
    /* an idle stretch does not save up budget */
    lm_rl_tick(&rl, t + 50 * W);
    assert_int_equal(lm_rl_budget(&rl), 2000);

    /* unlimited */
    lm_rl_set(&rl, 0);
    assert_int_equal(lm_rl_budget(&rl), UINT64_MAX);
    lm_rl_account(&rl, UINT64_MAX);
    lm_rl_account(&rl, 5); /* saturates */
    assert_false(lm_rl_exceeded(&rl));
    assert_int_equal(rl.window_bytes, UINT64_MAX);
    lm_rl_tick(&rl, t + 51 * W);
    assert_int_equal(rl.window_bytes, 0);

    /* extremes: tiny limits still let bytes through, huge ones don't wrap */
    lm_rl_init(&rl, 5, T);
    assert_int_equal(lm_rl_budget(&rl), 1);
    lm_rl_init(&rl, UINT64_MAX, T);
    lm_rl_account(&rl, UINT64_MAX / 20);
    assert_false(lm_rl_exceeded(&rl));
    lm_rl_tick(&rl, T + 1000 * W);
    assert_int_equal(rl.window_bytes, 0);
    /* a clock that goes backwards is ignored */
    lm_rl_init(&rl, 10000, T);
    lm_rl_account(&rl, 1000);
    lm_rl_tick(&rl, T - 5 * W);
    assert_true(lm_rl_exceeded(&rl));
    assert_int_equal(lm_rl_wait_ns(&rl, T - 1), W);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_exact),
        cmocka_unit_test(test_uri_parse_good),
        cmocka_unit_test(test_uri_parse_bad),
        cmocka_unit_test(test_tcp_listen_connect_accept),
        cmocka_unit_test(test_tcp_listen_port_in_use),
        cmocka_unit_test(test_unix_listen_connect_accept),
        cmocka_unit_test(test_fd_uri),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_accept_shutdown_tcp),
        cmocka_unit_test(test_accept_shutdown_unix),
        cmocka_unit_test(test_shutdown_unblocks_read),
        cmocka_unit_test(test_shutdown_unblocks_write),
        cmocka_unit_test(test_read_timeout_nonblocking),
        cmocka_unit_test(test_write_timeout_nonblocking),
        cmocka_unit_test(test_eof_mid_read),
        cmocka_unit_test(test_write_to_closed_peer),
        cmocka_unit_test(test_pipe_and_file_channels),
        cmocka_unit_test(test_wait_readable),
        cmocka_unit_test(test_large_transfer_socketpair),
        cmocka_unit_test(test_large_transfer_tcp),
        cmocka_unit_test(test_large_transfer_sliced),
        cmocka_unit_test(test_large_transfer_nonblocking),
        cmocka_unit_test(test_ratelimit),
    };
    return cmocka_run_group_tests_name("chan", tests, setup_tmpdir, teardown_tmpdir);
}
