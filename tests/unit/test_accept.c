/*
 * test_accept.c - the acceptor (src/chan/accept.c): connections greeting
 * at once, each with its deadline, a cap that closes the oldest silent
 * one (never one that spoke), silent closes dropped, cancel through the
 * eventfd, the connected-fd mode (no listener) timing out, and the
 * process-wide pool two listeners share.
 *
 * Threads: none besides the test's; the peers are sockets it holds.
 * Timing: deadlines are checked from below (not before their time) and
 * against LATE_MS, far above any scheduling delay.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chan/accept.h"
#include "chan/chan.h"
#include "util/clock.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define LATE_MS 20000
#define GREETING 8

static int listener_tag(char *path, size_t cap, const char *tag)
{
    snprintf(path, cap, "/tmp/lm-accept-test-%d%s.sock", (int)getpid(), tag);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 64), 0);
    return fd;
}

static int dial(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static int listener(char *path, size_t cap)
{
    return listener_tag(path, cap, "");
}

/* The acceptor closed our peer: EOF (or a reset) on our side. */
static bool closed_by_acceptor(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 1)
        return false;
    char b;
    return recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

static void test_speakers_first_silent_evicted(void **state)
{
    char path[108];
    int lfd = listener(path, sizeof path);
    lm_acceptor_cfg cfg = {
        .greeting_len = GREETING, .greeting_timeout_ms = 60000, .max_pending = 4};
    lm_acceptor *a = NULL;
    assert_int_equal(lm_acceptor_new(lfd, -1, &cfg, &a, NULL), 0);
    /* Six silent ones (two more than the cap), then one that speaks. */
    int silent[6];
    for (int i = 0; i < 6; i++)
        silent[i] = dial(path);
    int speaker = dial(path);
    assert_int_equal(write(speaker, "HELLO123", GREETING), GREETING);
    int fd = -1;
    size_t len = 0;
    uint8_t buf[GREETING];
    assert_int_equal(lm_acceptor_next(a, lm_now_ns() + LATE_MS * 1000000ull, &fd, buf, &len, NULL),
                     0);
    assert_int_equal(len, GREETING);
    assert_memory_equal(buf, "HELLO123", GREETING);
    /* It is the speaker's connection, handed over blocking and open. */
    assert_int_equal(write(fd, "x", 1), 1);
    char c;
    assert_int_equal(recv(speaker, &c, 1, 0), 1);
    close(fd);
    lm_acceptor_stats st;
    lm_acceptor_get_stats(a, &st);
    assert_int_equal(st.accepted, 7);
    assert_true(st.evicted >= 3); /* 6 silent + speaker through 4 slots */
    assert_true(lm_acceptor_pending(a) <= 4);
    /* The oldest silent ones were the ones closed. */
    assert_true(closed_by_acceptor(silent[0]));
    assert_true(closed_by_acceptor(silent[1]));
    assert_false(closed_by_acceptor(silent[5]));
    /* A partial greeting, then EOF: handed over short, for the caller to
     * name; a close before any byte: dropped silently. */
    int half = dial(path);
    assert_int_equal(write(half, "HEL", 3), 3);
    close(half);
    int mute = dial(path);
    close(mute);
    assert_int_equal(lm_acceptor_next(a, lm_now_ns() + LATE_MS * 1000000ull, &fd, buf, &len, NULL),
                     0);
    assert_int_equal(len, 3);
    close(fd);
    lm_acceptor_free(a);
    for (int i = 0; i < 6; i++)
        close(silent[i]);
    close(speaker);
    close(lfd);
    unlink(path);
}

static void test_deadlines_and_cancel(void **state)
{
    char path[108];
    int lfd = listener(path, sizeof path);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    lm_acceptor_cfg cfg = {.greeting_len = GREETING, .greeting_timeout_ms = 200, .max_pending = 8};
    lm_acceptor *a = NULL;
    assert_int_equal(lm_acceptor_new(lfd, efd, &cfg, &a, NULL), 0);
    int idle = dial(path);
    int fd;
    size_t len;
    uint8_t buf[GREETING];
    /* The overall deadline passes; the idle one is closed at its own. */
    uint64_t t0 = lm_now_ns();
    assert_int_equal(lm_acceptor_next(a, t0 + 500000000ull, &fd, buf, &len, NULL), -ETIMEDOUT);
    assert_true(lm_now_ns() - t0 >= 500000000ull);
    assert_true(lm_now_ns() - t0 < LATE_MS * 1000000ull);
    assert_true(closed_by_acceptor(idle));
    lm_acceptor_stats st;
    lm_acceptor_get_stats(a, &st);
    assert_int_equal(st.timed_out, 1);
    /* Cancel: the eventfd wakes it at once, whatever is pending. */
    int idle2 = dial(path);
    /* Taken in (a short overall deadline, before its own of 200 ms). */
    assert_int_equal(lm_acceptor_next(a, lm_now_ns() + 50000000ull, &fd, buf, &len, NULL),
                     -ETIMEDOUT);
    assert_int_equal(lm_acceptor_pending(a), 1);
    uint64_t one = 1;
    assert_int_equal(write(efd, &one, sizeof one), sizeof one);
    assert_int_equal(lm_acceptor_next(a, 0, &fd, buf, &len, NULL), -ECANCELED);
    lm_acceptor_free(a); /* closes idle2's peer */
    assert_true(closed_by_acceptor(idle2));
    close(idle);
    close(idle2);

    /* No listener: one connected fd; its deadline ends the wait. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(lm_acceptor_new(-1, -1, &cfg, &a, NULL), 0);
    assert_int_equal(lm_acceptor_add(a, sv[0], NULL), 0);
    t0 = lm_now_ns();
    assert_int_equal(lm_acceptor_next(a, 0, &fd, buf, &len, NULL), -ETIMEDOUT);
    assert_true(lm_now_ns() - t0 >= 190000000ull);
    lm_acceptor_free(a);
    close(sv[1]);
    close(efd);
    close(lfd);
    unlink(path);
}

/* Takes in what the listener has queued (a deadline far longer than the
 * one poll round that needs: the connections are in the backlog). */
static void take_in(lm_acceptor *a)
{
    int fd;
    size_t len;
    uint8_t buf[GREETING];
    assert_int_equal(lm_acceptor_next(a, lm_now_ns() + 300000000ull, &fd, buf, &len, NULL),
                     -ETIMEDOUT);
}

/* Two listeners in one process share the pool beyond their own slots: a
 * crowd at one cannot make the process hold more than the pool, nor keep
 * the other's source out (issue 12, item 3: a total cap). */
static void test_pool_shared_by_listeners(void **state)
{
    char pa[108], pb[108];
    int la = listener_tag(pa, sizeof pa, "a"), lb = listener_tag(pb, sizeof pb, "b");
    lm_acceptor_set_pool(2, 3);
    lm_acceptor_cfg cfg = {
        .greeting_len = GREETING, .greeting_timeout_ms = 60000, .max_pending = 100};
    lm_acceptor *a = NULL, *b = NULL;
    assert_int_equal(lm_acceptor_new(la, -1, &cfg, &a, NULL), 0);
    assert_int_equal(lm_acceptor_new(lb, -1, &cfg, &b, NULL), 0);
    /* A: six silent ones; two of its own and the three of the pool hold
     * five, the sixth closed A's oldest. */
    int sa[6], sb[6];
    for (int i = 0; i < 6; i++)
        sa[i] = dial(pa);
    take_in(a);
    assert_int_equal(lm_acceptor_pending(a), 5);
    assert_int_equal(lm_acceptor_pool_used(), 3);
    assert_true(closed_by_acceptor(sa[0]));
    assert_false(closed_by_acceptor(sa[5]));
    /* B: the pool is empty, B has its own two; a third closes B's oldest
     * (not one of A's). */
    for (int i = 0; i < 3; i++)
        sb[i] = dial(pb);
    take_in(b);
    assert_int_equal(lm_acceptor_pending(b), 2);
    assert_int_equal(lm_acceptor_pool_used(), 3);
    assert_true(closed_by_acceptor(sb[0]));
    assert_false(closed_by_acceptor(sa[1]));
    /* B's source still gets in. */
    int speaker = dial(pb);
    assert_int_equal(write(speaker, "HELLO123", GREETING), GREETING);
    int fd = -1;
    size_t len = 0;
    uint8_t buf[GREETING];
    assert_int_equal(lm_acceptor_next(b, lm_now_ns() + LATE_MS * 1000000ull, &fd, buf, &len, NULL),
                     0);
    assert_int_equal(len, GREETING);
    close(fd);
    assert_int_equal(lm_acceptor_pending(b), 1);
    /* A gone, its pool slots are B's to take. */
    lm_acceptor_free(a);
    assert_int_equal(lm_acceptor_pool_used(), 0);
    for (int i = 3; i < 6; i++)
        sb[i] = dial(pb);
    take_in(b);
    assert_int_equal(lm_acceptor_pending(b), 4);
    assert_int_equal(lm_acceptor_pool_used(), 2);
    lm_acceptor_free(b);
    assert_int_equal(lm_acceptor_pool_used(), 0);
    lm_acceptor_set_pool(LM_ACCEPT_OWN_SLOTS, LM_ACCEPT_POOL_SLOTS);
    for (int i = 0; i < 6; i++) {
        close(sa[i]);
        close(sb[i]);
    }
    close(speaker);
    close(la);
    close(lb);
    unlink(pa);
    unlink(pb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_speakers_first_silent_evicted),
        cmocka_unit_test(test_deadlines_and_cancel),
        cmocka_unit_test(test_pool_shared_by_listeners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
