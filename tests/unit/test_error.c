/*
 * test_error.c - the caller-owned error (first error wins, the codes of
 * its fallbacks) and the names and descriptions of error codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <string.h>

#include "livemig.h"

/* Every code the library raises itself (livemig.h, "errors", and what
 * src/ passes to lm_error_set), with its errno macro's name. */
/* clang-format off */
#define C(e) {-(e), #e}
static const struct {
    int code;
    const char *name;
} raised[] = {
    C(EINVAL), C(ENOTSUP), C(EBUSY), C(EEXIST), C(ENOENT), C(ENOSPC), C(ENAMETOOLONG),
    C(ENOMEM), C(EPROTO), C(EPROTONOSUPPORT), C(EMSGSIZE), C(EPIPE), C(ECONNRESET),
    C(ETIMEDOUT), C(ECANCELED), C(EREMOTEIO), C(EIO), C(ERANGE), C(E2BIG), C(EBADF),
    C(EHOSTUNREACH), C(EADDRNOTAVAIL), C(ENOSYS), C(EPERM), C(ENOTTY), C(EAGAIN), C(EINTR),
    /* and common ones passed up from system calls */
    C(EACCES), C(ECONNREFUSED), C(EADDRINUSE), C(EMFILE), C(ENOTCONN),
};
#undef C
/* clang-format on */

static void test_names_and_messages(void **state)
{
    for (size_t i = 0; i < sizeof raised / sizeof raised[0]; i++) {
        assert_string_equal(lm_error_name(raised[i].code), raised[i].name);
        const char *msg = lm_strerror(raised[i].code);
        assert_non_null(msg);
        assert_string_not_equal(msg, "unknown error");
        assert_true(strlen(msg) > 3);
        /* messages tell the codes apart */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(msg, lm_strerror(raised[j].code));
    }
    /* The one spelling per value where errno has two. */
    assert_string_equal(lm_error_name(-EOPNOTSUPP), "ENOTSUP");
    assert_string_equal(lm_error_name(-EWOULDBLOCK), "EAGAIN");
    assert_string_equal(lm_strerror(-EPROTO), "protocol error (the peer's stream breaks the "
                                              "format)");
    assert_string_equal(lm_strerror(-ECANCELED), "cancelled");
    /* 0 is not an error */
    assert_string_equal(lm_error_name(0), "OK");
    assert_string_equal(lm_strerror(0), "success");
}

/* Total: any int gives a static, non-NULL string; not a code -> UNKNOWN. */
static void test_unknown_codes(void **state)
{
    static const int bad[] = {1, EPROTO, 4096, INT_MAX, -4096, -100000, INT_MIN, INT_MIN + 1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_string_equal(lm_error_name(bad[i]), "UNKNOWN");
        assert_string_equal(lm_strerror(bad[i]), "unknown error");
    }
    /* Every int in errno's range: a name and a message, both or neither. */
    for (int c = -4095; c <= 0; c++) {
        const char *n = lm_error_name(c), *d = lm_strerror(c);
        assert_non_null(n);
        assert_non_null(d);
        assert_int_equal(!strcmp(n, "UNKNOWN"), !strcmp(d, "unknown error"));
    }
}

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
/* Our names are the errno names glibc knows (bar one alias). */
static void test_names_match_libc(void **state)
{
    unsigned known = 0;
    for (int e = 1; e < 4096; e++) {
        const char *ours = lm_error_name(-e), *libc = strerrorname_np(e);
        if (!strcmp(ours, "UNKNOWN"))
            continue;
        known++;
        assert_non_null(libc);
        if (e == ENOTSUP)
            continue; /* == EOPNOTSUPP, glibc's name for it */
        assert_string_equal(ours, libc);
    }
    assert_true(known >= sizeof raised / sizeof raised[0]);
}
#else
static void test_names_match_libc(void **state)
{
    skip();
}
#endif

/* The fallbacks of lm_error_set and lm_error_prefix are -EIO, never -1
 * (which is -EPERM, a lie). */
static void test_fallback_codes(void **state)
{
    lm_error err = {0};
    assert_int_equal(lm_error_set(&err, 0, "no code"), -EIO);
    assert_int_equal(err.code, -EIO);
    assert_string_equal(err.msg, "no code");
    lm_error_clear(&err);
    assert_int_equal(lm_error_set(&err, 22, "positive"), -EIO);
    assert_int_equal(err.code, -EIO);
    assert_int_equal(lm_error_set(NULL, 0, "x"), -EIO);

    /* prefix on an empty error: sets it, with -EIO */
    lm_error_clear(&err);
    assert_int_equal(lm_error_prefix(&err, "ctx %d", 1), -EIO);
    assert_int_equal(err.code, -EIO);
    assert_string_equal(err.msg, "ctx 1");
    /* on a set one: keeps its code, prefixes its message */
    lm_error_clear(&err);
    assert_int_equal(lm_error_set(&err, -EPROTO, "bad record"), -EPROTO);
    assert_int_equal(lm_error_prefix(&err, "stream"), -EPROTO);
    assert_string_equal(err.msg, "stream: bad record");
    /* first error wins */
    assert_int_equal(lm_error_set(&err, -ETIMEDOUT, "later"), -ETIMEDOUT);
    assert_int_equal(err.code, -EPROTO);
    assert_string_equal(err.msg, "stream: bad record");
    /* NULL: no code known */
    assert_int_equal(lm_error_prefix(NULL, "ctx"), -EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_messages),
        cmocka_unit_test(test_unknown_codes),
        cmocka_unit_test(test_names_match_libc),
        cmocka_unit_test(test_fallback_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
