/*
 * test_jsonu64.c - uint64 numbers above INT64_MAX through the QMP JSON
 * layer (src/qmp/jsonu64.c, issue 12 defect 4): read exactly, written back
 * exactly, never forged by a client string, and everything else decoded
 * as jansson decodes it.  Pure functions: no threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "qmp/qmp_internal.h"

#include <stdlib.h>
#include <string.h>

static json_t *load(const char *s)
{
    json_error_t je;
    json_t *v = lm_qmp_json_loads(s, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!v)
        print_message("  (%s: %s)\n", s, je.text);
    return v;
}

static void test_exact_roundtrip(void **state)
{
    static const struct {
        const char *text;
        uint64_t want;
    } cases[] = {
        {"9223372036854775807", 9223372036854775807ull}, /* INT64_MAX: a plain integer */
        {"9223372036854775808", 9223372036854775808ull},
        {"9223372036854775809", 9223372036854775809ull},
        {"18446744073709551614", 18446744073709551614ull},
        {"18446744073709551615", UINT64_MAX},
        {"0", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char in[128], want_out[128];
        snprintf(in, sizeof in, "{\"a\": [%s, \"%s\"], \"b\": %s}", cases[i].text, cases[i].text,
                 cases[i].text);
        json_t *v = load(in);
        assert_non_null(v);
        uint64_t got = 1;
        assert_true(lm_qmp_json_u64(json_object_get(v, "b"), &got));
        assert_true(got == cases[i].want);
        /* A string that looks like the number stays a string. */
        json_t *s = json_array_get(json_object_get(v, "a"), 1);
        assert_true(json_is_string(s));
        assert_string_equal(json_string_value(s), cases[i].text);
        assert_false(lm_qmp_json_u64(s, &got));
        char *out = lm_qmp_json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(want_out, sizeof want_out, "{\"a\":[%s,\"%s\"],\"b\":%s}", cases[i].text,
                 cases[i].text, cases[i].text);
        assert_string_equal(out, want_out);
        free(out);
        json_decref(v);
        /* And made by the library. */
        json_t *j = lm_qmp_ju64(cases[i].want);
        out = lm_qmp_json_dumps(j, JSON_ENCODE_ANY);
        assert_string_equal(out, cases[i].text);
        free(out);
        json_decref(j);
    }
}

static void test_refused_and_untouched(void **state)
{
    /* Above 2^64-1, negative beyond int64, and a client's NUL: refused
     * as jansson refuses them. */
    assert_null(load("18446744073709551616"));
    assert_null(load("-9223372036854775809"));
    assert_null(load("{\"a\": \"\\u0000u64:18446744073709551615\"}"));
    /* ... even beside a big number (no JSON_ALLOW_NUL for it then). */
    assert_null(load("[18446744073709551615, \"\\u0000u64:1\"]"));
    /* Reals, exponents, negative numbers and escaped quotes are left to
     * jansson as they were. */
    json_t *v = load("[1e19, 18446744073709551615.0, -5, \"x\\\"18446744073709551615\"]");
    assert_non_null(v);
    assert_true(json_is_real(json_array_get(v, 0)));
    assert_true(json_is_real(json_array_get(v, 1)));
    assert_int_equal(json_integer_value(json_array_get(v, 2)), -5);
    assert_string_equal(json_string_value(json_array_get(v, 3)), "x\"18446744073709551615");
    uint64_t got;
    assert_false(lm_qmp_json_u64(json_array_get(v, 2), &got)); /* negative */
    assert_false(lm_qmp_json_u64(json_array_get(v, 0), &got)); /* a real */
    json_decref(v);
    /* A string that starts with a literal backslash-u0000 is not a marker. */
    v = load("\"\\\\u0000u64:18446744073709551615\"");
    assert_non_null(v);
    char *out = lm_qmp_json_dumps(v, JSON_ENCODE_ANY);
    assert_string_equal(out, "\"\\\\u0000u64:18446744073709551615\"");
    free(out);
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_roundtrip),
        cmocka_unit_test(test_refused_and_untouched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
