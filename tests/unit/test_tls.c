/*
 * test_tls.c - TLS channels (src/chan/tls.c, chan.c's TLS glue) over a
 * socketpair with PSK credentials written to a temp dir: the handshake of
 * both sides, the main channel's pattern (each side writing while another
 * thread reads the same session) with page-sized and small writes, a
 * read interrupted by lm_chan_shutdown from another thread, SO_RCVTIMEO
 * still bounding a read, a wrong key named, the acceptor handshaking a
 * connection in its poll loop, and authz-list rules.
 *
 * Threads: the test's, one peer thread per case, one reader thread in the
 * concurrency case.  Timing: none asserted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chan/accept.h"
#include "chan/chan.h"
#include "chan/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define KEY "00112233445566778899aabbccddeeff"
#define DATA (8u << 20)

static char dir_ok[64], dir_bad[64];

static void write_keys(char *dir, const char *key)
{
    snprintf(dir, 64, "/tmp/lm-tls-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char p[128];
    snprintf(p, sizeof p, "%s/keys.psk", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fprintf(f, "qemu:%s\n", key);
    fclose(f);
}

static int setup(void **state)
{
    write_keys(dir_ok, KEY);
    write_keys(dir_bad, "ffeeddccbbaa99887766554433221100");
    return 0;
}

static int teardown(void **state)
{
    char p[128];
    for (int i = 0; i < 2; i++) {
        const char *d = i ? dir_bad : dir_ok;
        snprintf(p, sizeof p, "%s/keys.psk", d);
        unlink(p);
        rmdir(d);
    }
    return 0;
}

typedef struct side {
    int fd;
    bool server;
    const char *dir;
    lm_chan *chan;
    int ret;
    lm_error err;
} side;

/* Handshakes one side and wraps it in a channel. */
static void *handshake(void *arg)
{
    side *s = arg;
    lm_tls_creds *cr = NULL;
    lm_tls *t = NULL;
    s->ret = lm_tls_creds_psk_new(s->dir, s->server, NULL, &cr, &s->err);
    if (s->ret == 0)
        s->ret = lm_tls_new(cr, s->fd, NULL, NULL, &t, &s->err);
    lm_tls_creds_unref(cr);
    if (s->ret == 0)
        s->ret = lm_tls_handshake(t, s->server ? "server" : "client", 10000, -1, &s->err);
    if (s->ret == 0 && lm_chan_new(s->fd, s->server ? "server" : "client", &s->chan, NULL) == 0)
        s->ret = lm_chan_set_tls(s->chan, t);
    else
        lm_tls_free(t);
    return NULL;
}

/* A handshaken pair: a[0] client, a[1] server. */
static int pair(side a[2], const char *server_dir)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a[0] = (side){.fd = sv[0], .server = false, .dir = dir_ok};
    a[1] = (side){.fd = sv[1], .server = true, .dir = server_dir};
    pthread_t th;
    pthread_create(&th, NULL, handshake, &a[1]);
    handshake(&a[0]);
    pthread_join(th, NULL);
    return a[0].ret ? a[0].ret : a[1].ret;
}

static void free_pair(side a[2])
{
    for (int i = 0; i < 2; i++) {
        if (a[i].chan)
            lm_chan_free(a[i].chan);
        else
            close(a[i].fd);
    }
}

typedef struct reader {
    lm_chan *c;
    uint8_t seed;
    int ret;
} reader;

/* Reads DATA bytes (headers of 16 bytes, then 4 KiB pages) and checks them. */
static void *read_stream(void *arg)
{
    reader *r = arg;
    uint8_t hdr[16], page[4096];
    for (size_t off = 0; off < DATA; off += sizeof page) {
        if ((r->ret = lm_chan_read_exact(r->c, hdr, sizeof hdr)) < 0)
            return NULL;
        if ((r->ret = lm_chan_read_full(r->c, page, sizeof page)) < 0)
            return NULL;
        for (size_t i = 0; i < sizeof page; i += 511)
            if (page[i] != (uint8_t)(r->seed + off / sizeof page + i) ||
                hdr[0] != (uint8_t)(off / sizeof page)) {
                r->ret = -EBADMSG;
                return NULL;
            }
    }
    return NULL;
}

static int write_stream(lm_chan *c, uint8_t seed)
{
    uint8_t hdr[16] = {0}, page[4096];
    for (size_t off = 0; off < DATA; off += sizeof page) {
        for (size_t i = 0; i < sizeof page; i++)
            page[i] = (uint8_t)(seed + off / sizeof page + i);
        hdr[0] = (uint8_t)(off / sizeof page);
        int r = lm_chan_write_ref(c, hdr, sizeof hdr, page, sizeof page);
        if (r < 0)
            return r;
    }
    return lm_chan_flush(c);
}

typedef struct writer {
    lm_chan *c;
    uint8_t seed;
    int ret;
} writer;

static void *write_thread(void *arg)
{
    writer *w = arg;
    w->ret = write_stream(w->c, w->seed);
    return NULL;
}

/* Both sides write and read at once: on each side one thread sends while
 * another receives on the same session. */
static void test_concurrent_both_ways(void **state)
{
    side a[2];
    assert_int_equal(pair(a, dir_ok), 0);
    reader r[2] = {{a[0].chan, 7, 0}, {a[1].chan, 99, 0}};
    pthread_t rt[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&rt[i], NULL, read_stream, &r[i]);
    pthread_t wt;
    writer w = {a[1].chan, 7, 0};
    pthread_create(&wt, NULL, write_thread, &w);
    assert_int_equal(write_stream(a[0].chan, 99), 0);
    pthread_join(wt, NULL);
    assert_int_equal(w.ret, 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(rt[i], NULL);
        assert_int_equal(r[i].ret, 0);
    }
    assert_true(lm_chan_bytes_written(a[0].chan) > DATA); /* ciphertext: records cost */
    free_pair(a);
}

static void *shut_later(void *arg)
{
    usleep(50000);
    lm_chan_shutdown(arg, "cancelled by the test");
    return NULL;
}

/* A blocked TLS read returns the shutdown's reason; a read timeout is
 * still "read timed out". */
static void test_shutdown_and_timeout(void **state)
{
    side a[2];
    assert_int_equal(pair(a, dir_ok), 0);
    pthread_t th;
    pthread_create(&th, NULL, shut_later, a[1].chan);
    uint8_t b[8];
    lm_error e = {0};
    assert_int_equal(lm_chan_read_full(a[1].chan, b, sizeof b), -ECANCELED);
    lm_chan_get_error(a[1].chan, &e);
    assert_non_null(strstr(e.msg, "cancelled by the test"));
    pthread_join(th, NULL);

    free_pair(a);

    assert_int_equal(pair(a, dir_ok), 0);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(lm_chan_fd(a[0].chan), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(lm_chan_read_full(a[0].chan, b, sizeof b), -ETIMEDOUT);
    lm_error_clear(&e);
    lm_chan_get_error(a[0].chan, &e);
    assert_non_null(strstr(e.msg, "read timed out"));
    free_pair(a);
}

static void test_wrong_key(void **state)
{
    side a[2];
    assert_true(pair(a, dir_bad) < 0);
    assert_non_null(strstr(a[1].err.msg, "wrong PSK"));
    assert_non_null(strstr(a[0].err.msg, "wrong PSK"));
    free_pair(a);
}

static void *handshake_and_greet(void *arg)
{
    side *s = arg;
    handshake(s);
    if (s->ret == 0 && (s->ret = lm_chan_put(s->chan, "GREETING", 8)) == 0)
        s->ret = lm_chan_flush(s->chan);
    return NULL;
}

/* The acceptor handshakes a connection in its poll loop and reads the
 * greeting inside TLS; a plaintext one is told apart. */
static void test_acceptor(void **state)
{
    lm_tls_creds *srv = NULL;
    assert_int_equal(lm_tls_creds_psk_new(dir_ok, true, NULL, &srv, NULL), 0);
    lm_acceptor_cfg cfg = {
        .greeting_len = 8, .greeting_timeout_ms = 10000, .max_pending = 4, .tls = srv};
    lm_acceptor *acc = NULL;
    assert_int_equal(lm_acceptor_new(-1, -1, &cfg, &acc, NULL), 0);
    int sv[2], pv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pv), 0);
    assert_int_equal(lm_acceptor_add(acc, sv[1], NULL), 0);
    assert_int_equal(lm_acceptor_add(acc, pv[1], NULL), 0);
    assert_int_equal(write(pv[0], "PLAINTXT", 8), 8);
    side c = {.fd = sv[0], .server = false, .dir = dir_ok};
    pthread_t th;
    pthread_create(&th, NULL, handshake_and_greet, &c);
    int fd, seen = 0;
    uint8_t buf[8];
    size_t len;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(lm_acceptor_next(acc, 0, &fd, buf, &len, NULL), 0);
        lm_tls *t = NULL;
        int tr = lm_acceptor_take_tls(acc, &t, NULL);
        assert_int_equal(len, 8);
        if (tr == 1) {
            assert_memory_equal(buf, "PLAINTXT", 8);
            assert_null(t);
            seen |= 1;
        } else {
            assert_int_equal(tr, 0);
            assert_non_null(t);
            assert_memory_equal(buf, "GREETING", 8);
            seen |= 2;
        }
        lm_tls_free(t);
        close(fd);
    }
    assert_int_equal(seen, 3);
    pthread_join(th, NULL);
    assert_int_equal(c.ret, 0);
    lm_acceptor_free(acc);
    lm_chan_free(c.chan);
    close(pv[0]);
    lm_tls_creds_unref(srv);
}

static void test_authz_rules(void **state)
{
    lm_authz_rule rules[] = {{"CN=bad,O=x", false, false}, {"CN=*,O=x", true, true}};
    lm_authz *a = NULL;
    assert_int_equal(lm_authz_new(false, rules, 2, &a, NULL), 0);
    assert_false(lm_authz_allows(a, "CN=bad,O=x")); /* first match wins */
    assert_true(lm_authz_allows(a, "CN=good,O=x"));
    assert_false(lm_authz_allows(a, "CN=good,O=y")); /* the list's policy */
    lm_authz_unref(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_both_ways),
        cmocka_unit_test(test_shutdown_and_timeout),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_acceptor),
        cmocka_unit_test(test_authz_rules),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
