/*
 * fuzz_hello.c - libFuzzer target for the HELLO decoder, the first bytes
 * any connection reads from an unauthenticated peer.  Checks, beyond "no
 * crash": a failure carries its code and message; an accepted HELLO
 * re-encodes to the same 48 bytes; "need more" (0) is returned only for
 * fewer than 48 bytes, and a prefix never succeeds or fails differently
 * from the whole (a bad magic may fail early, nothing else may).  The
 * input is also walked as a stream opening with a HELLO.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #c);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_err(long rc, const lm_error *err)
{
    if (rc < 0) {
        CHECK(err->code == rc);
        CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL);
        CHECK(err->msg[0] != '\0');
    } else {
        CHECK(err->code == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_hello h;
    lm_error err = {0};
    int rc = lm_fmt_hello_decode(data, size, &h, &err);
    check_err(rc, &err);
    CHECK(rc == 0 || rc == LM_HELLO_SIZE || rc < 0);
    CHECK((rc == 0) == (size < LM_HELLO_SIZE && !(size >= 4 && rc < 0)));
    if (rc > 0) {
        uint8_t out[LM_HELLO_SIZE];
        CHECK(lm_fmt_hello_encode(&h, out, sizeof out) == LM_HELLO_SIZE);
        CHECK(memcmp(out, data, LM_HELLO_SIZE) == 0);
        CHECK(h.version == LM_FORMAT_VERSION);
        CHECK(h.role >= LM_ROLE_MAIN && h.role <= LM_ROLE_PREEMPT);
        CHECK(h.kind <= LM_HELLO_RESUME);
        CHECK((h.features & ~(uint64_t)LM_FEAT_KNOWN_MASK) == 0);
        CHECK(h.page_size >= 4096 && (h.page_size & (h.page_size - 1)) == 0);
    }

    /* Prefixes: need-more, or the same early magic failure. */
    size_t lim = size < LM_HELLO_SIZE ? size : LM_HELLO_SIZE;
    for (size_t n = 0; n < lim; n++) {
        lm_error e2 = {0};
        int r2 = lm_fmt_hello_decode(data, n, &h, &e2);
        check_err(r2, &e2);
        if (r2 < 0)
            CHECK(n >= 4 && rc == r2 && strcmp(e2.msg, err.msg) == 0);
        else
            CHECK(r2 == 0);
    }

    /* The same bytes as a stream that opens with a HELLO. */
    lm_error_clear(&err);
    long w = lm_fmt_walk(data, size, true, NULL, NULL, &err);
    check_err(w, &err);
    if (rc < 0)
        CHECK(w == rc);
    else if (rc == 0)
        CHECK(w == 0);
    else
        CHECK(w < 0 || (w >= LM_HELLO_SIZE && (size_t)w <= size));
    return 0;
}
