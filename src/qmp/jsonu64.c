/*
 * jsonu64.c - unsigned 64-bit integers above INT64_MAX through jansson,
 * exactly (issue 12, defect 4).
 *
 * QEMU takes uint64 parameters up to 2^64-1 (max-bandwidth and friends);
 * jansson's integers are int64 and refuse such a number as "too big
 * integer", and JSON_DECODE_INT_AS_REAL would round it (2^64-1 becomes
 * 2^64).  So the text is pre-scanned: each unsigned integer token in
 * (INT64_MAX, UINT64_MAX] outside strings becomes a string that no client
 * can send, NUL + "u64:" + its digits, and the tree is decoded from that;
 * lm_qmp_json_u64() reads either form.  On the way out lm_qmp_json_dumps()
 * turns such strings back into bare digits.  A client string cannot
 * contain NUL: jansson refuses \u0000 unless told otherwise, and it is
 * told otherwise (JSON_ALLOW_NUL) only for a text whose strings hold no
 * \u0000 escape, i.e. only our own markers carry a NUL.
 *
 * Pure functions, any thread.
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARK "\0u64:"
#define MARK_LEN 5                /* NUL, 'u', '6', '4', ':' */
#define MARK_JSON "\"\\u0000u64:" /* how json_dumps writes it, with the quote */
#define MARK_JSON_LEN 11

/* The digits [p, p+n) as a uint64 when they are in (INT64_MAX, UINT64_MAX]. */
static bool big_u64(const char *p, size_t n, uint64_t *out)
{
    if (n < 19 || n > 20 || p[0] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false; /* above 2^64-1: jansson names it "too big" */
        v = v * 10 + d;
    }
    if (v <= (uint64_t)INT64_MAX)
        return false;
    *out = v;
    return true;
}

/* One pass over the text: counts the big tokens, notes a \u0000 escape in
 * a string, and when out is given writes the rewritten text there. */
static size_t rewrite(const char *in, size_t len, char *out, bool *has_nul_escape)
{
    size_t nbig = 0, o = 0;
    bool str = false;
    for (size_t i = 0; i < len;) {
        char ch = in[i];
        if (str) {
            if (ch == '\\' && i + 1 < len) {
                if (in[i + 1] == 'u' && i + 5 < len && !memcmp(in + i + 2, "0000", 4))
                    *has_nul_escape = true;
                if (out) {
                    out[o++] = ch;
                    out[o++] = in[i + 1];
                }
                i += 2;
                continue;
            }
            if (ch == '"')
                str = false;
        } else if (ch == '"') {
            str = true;
        } else if ((ch >= '0' && ch <= '9') || ch == '-') {
            size_t j = i + (ch == '-');
            while (j < len && in[j] >= '0' && in[j] <= '9')
                j++;
            bool plain = ch != '-' && (j == len || (in[j] != '.' && in[j] != 'e' && in[j] != 'E'));
            uint64_t v;
            if (plain && big_u64(in + i, j - i, &v)) {
                nbig++;
                if (out) {
                    memcpy(out + o, MARK_JSON, MARK_JSON_LEN);
                    o += MARK_JSON_LEN;
                    memcpy(out + o, in + i, j - i);
                    o += j - i;
                    out[o++] = '"';
                }
            } else if (out) {
                memcpy(out + o, in + i, j - i);
                o += j - i;
            }
            i = j;
            continue;
        }
        if (out)
            out[o++] = ch;
        i++;
    }
    return out ? o : nbig;
}

json_t *lm_qmp_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *je)
{
    bool nul_escape = false;
    size_t nbig = rewrite(buf, len, NULL, &nul_escape);
    if (nbig == 0 || nul_escape)
        return json_loadb(buf, len, flags, je); /* as before: jansson decides */
    /* Each token grows by the marker and a closing quote. */
    size_t cap = len + nbig * (MARK_JSON_LEN + 1);
    char *t = malloc(cap);
    if (!t) {
        snprintf(je->text, sizeof je->text, "out of memory");
        return NULL;
    }
    size_t n = rewrite(buf, len, t, &nul_escape);
    json_t *v = json_loadb(t, n, flags | JSON_ALLOW_NUL, je);
    free(t);
    return v;
}

json_t *lm_qmp_json_loads(const char *s, size_t flags, json_error_t *je)
{
    return lm_qmp_json_loadb(s, strlen(s), flags, je);
}

bool lm_qmp_json_u64(const json_t *v, uint64_t *out)
{
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return false;
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    if (!json_is_string(v) || json_string_length(v) <= MARK_LEN ||
        memcmp(json_string_value(v), MARK, MARK_LEN) != 0)
        return false;
    const char *d = json_string_value(v) + MARK_LEN;
    return big_u64(d, json_string_length(v) - MARK_LEN, out);
}

json_t *lm_qmp_ju64(uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)v);
    char s[MARK_LEN + 21];
    memcpy(s, MARK, MARK_LEN);
    int n = snprintf(s + MARK_LEN, sizeof s - MARK_LEN, "%" PRIu64, v);
    return json_stringn(s, MARK_LEN + (size_t)n);
}

char *lm_qmp_json_dumps(const json_t *v, size_t flags)
{
    char *t = json_dumps(v, flags);
    if (!t || !strstr(t, MARK_JSON))
        return t;
    /* "\u0000u64:DIGITS" -> DIGITS, in place (the text only shrinks). */
    char *w = t;
    for (const char *r = t; *r;) {
        if (!strncmp(r, MARK_JSON, MARK_JSON_LEN)) {
            const char *d = r + MARK_JSON_LEN, *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            uint64_t ignored;
            if (*e == '"' && big_u64(d, (size_t)(e - d), &ignored)) {
                memmove(w, d, (size_t)(e - d));
                w += e - d;
                r = e + 1;
                continue;
            }
        }
        *w++ = *r++;
    }
    *w = '\0';
    return t;
}
