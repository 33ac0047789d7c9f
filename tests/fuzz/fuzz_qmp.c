/*
 * fuzz_qmp.c - libFuzzer target for QMP input decoding: the JSON framer
 * and its resynchronisation, the request shape check, the argument
 * decoders of migrate-set-parameters / migrate-set-capabilities, and the
 * argument check of every built-in command.  No socket, no thread.
 *
 * Besides "no crash, no leak", it checks properties (abort() on failure):
 *  - progress: every step of lm_qmp_parse_request consumes bytes or asks
 *    for more, never more than it was given;
 *  - split invariance: the values and errors read from the input are the
 *    same whether it arrives in one piece or in small pieces (a socket
 *    may split a request anywhere);
 *  - agreement with jansson: an input that jansson parses as one object or
 *    array gives exactly that value, and every framed value is one jansson
 *    accepts or reports as a parse error (never a crash or a loop).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmp/qmp_internal.h"

/* Small, so that the size bound is exercised too. */
#define FUZZ_MAX 512

/* FNV-1a over the outcome sequence. */
static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void decode_args(json_t *v)
{
    lm_qmp_request req;
    if (lm_qmp_request_check(json_incref(v), &req) == 0 && req.args) {
        lm_params p;
        uint64_t which = 0, mask = 0, values = 0;
        lm_error err = {0};
        lm_params_default(&p);
        if (lm_qmp_decode_params(req.args, &p, &which, &err) == 0 && (which >> LM_PARAM__MAX))
            abort();
        lm_error_clear(&err);
        if (lm_qmp_decode_caps(req.args, &mask, &values, &err) == 0 &&
            ((mask >> LM_CAP__MAX) || (values & ~mask)))
            abort();
        /* Every command's argument check: an error always says why. */
        size_t n;
        const lm_qmp_builtin *b = lm_qmp_builtins(&n);
        for (size_t i = 0; i < n; i++) {
            lm_error_clear(&err);
            if (lm_qmp_builtin_check(&b[i], req.args, &err) < 0 && !err.msg[0])
                abort();
        }
    } else if (!req.err_class && !req.execute) {
        abort(); /* invalid without saying why */
    }
    lm_qmp_request_fini(&req);
}

/* Drains the reader; returns false once it hit the fatal size bound. */
static bool drain(lm_qmp_reader *r, uint64_t *h, unsigned *nvalues, json_t **first)
{
    for (;;) {
        json_t *v = NULL;
        lm_error err = {0};
        int rc = lm_qmp_reader_next(r, &v, &err);
        if (rc == LM_QMP_READ_MORE)
            return true;
        *h = mix(*h, &rc, sizeof rc);
        if (rc == LM_QMP_READ_OVERFLOW)
            return false;
        if (rc == LM_QMP_READ_BAD) {
            if (!err.msg[0])
                abort(); /* an error must say why */
            continue;
        }
        char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
        if (t) {
            *h = mix(*h, t, strlen(t) + 1);
            free(t);
        }
        if (first && !*first)
            *first = json_incref(v);
        ++*nvalues;
        if (first)
            decode_args(v);
        json_decref(v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;

    /* 1. The one-shot parser, looped over the input as a server would. */
    size_t off = 0;
    while (off < size) {
        size_t consumed = 0;
        lm_qmp_request req;
        int rc = lm_qmp_parse_request(buf + off, size - off, &consumed, &req);
        if (consumed > size - off)
            abort();
        if (rc == 1)
            lm_qmp_request_fini(&req);
        if (rc == 0 && consumed == 0)
            break; /* the rest is an unfinished value */
        if (rc == 1 && consumed == 0)
            abort(); /* a request out of nothing */
        off += consumed;
    }

    /* 2. The reader, with the input whole and in pieces. */
    lm_qmp_reader r;
    uint64_t h1 = 1469598103934665603ull, h2 = h1;
    unsigned n1 = 0, n2 = 0;
    json_t *first = NULL;
    lm_error err = {0};

    lm_qmp_reader_init(&r, FUZZ_MAX);
    if (size <= 2 * FUZZ_MAX && lm_qmp_reader_feed(&r, data, size, &err) == 0)
        drain(&r, &h1, &n1, &first);
    else
        h1 = 0;
    lm_qmp_reader_fini(&r);

    if (h1) {
        lm_qmp_reader_init(&r, FUZZ_MAX);
        uint32_t seed = (uint32_t)size * 2654435761u;
        bool alive = true;
        for (size_t i = 0; i < size && alive;) {
            seed = seed * 1103515245u + 12345u;
            size_t n = 1 + (seed >> 16) % 7;
            if (n > size - i)
                n = size - i;
            if (lm_qmp_reader_feed(&r, data + i, n, &err) < 0)
                abort(); /* drained between feeds: cannot overflow */
            alive = drain(&r, &h2, &n2, NULL);
            i += n;
        }
        lm_qmp_reader_fini(&r);
        if (h1 != h2 || n1 != n2) {
            fprintf(stderr, "split changed the outcome: %u vs %u values\n", n1, n2);
            abort();
        }
    }

    /* 3. Agreement with jansson on well-formed input.  Not with NUL bytes:
     * jansson 2.14 skips a NUL right after a number ("[4\0]" loads as [4]),
     * where the framer, rightly, sees a syntax error. */
    if (size < FUZZ_MAX && !memchr(data, 0, size)) {
        json_error_t je;
        json_t *whole = json_loadb(buf, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
        if (whole && (json_is_object(whole) || json_is_array(whole))) {
            if (n1 != 1 || !first || !json_equal(first, whole)) {
                fprintf(stderr, "jansson parsed the input, the framer gave %u values\n", n1);
                abort();
            }
        }
        json_decref(whole);
    }
    json_decref(first);
    return 0;
}
