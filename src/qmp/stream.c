/*
 * stream.c - QMP input: framing a byte stream into JSON values, resyncing
 * after garbage, and checking the shape of a request.  Shared by the server
 * (requests) and the client (replies and events); no I/O, no threads.
 *
 * Why our own framer in front of jansson: a socket delivers a request in
 * arbitrary pieces, and a client may send garbage, a truncated object, or
 * a string with a raw newline.  The framer sees each byte once (so a client
 * dripping one byte at a time costs linear time), knows exactly where a
 * value ends, and fails at the first byte that cannot continue a JSON value
 * so that the next request still gets through.  Its recovery rules are
 * QEMU's:
 *  - a grammar error inside an object or array (`{"execute" 1}`: every
 *    token is valid, their order is not) skips the rest of that value by
 *    counting brackets outside strings, as QEMU's json-streamer frames a
 *    value before its parser looks at it, so the value gets exactly one
 *    error and the next request is not shifted by a second one.  A
 *    control character other than whitespace, or a 0xFE/0xFF byte, ends
 *    the skip early (QEMU's lexer errors reset its streamer the same way);
 *  - any other error (top-level garbage, a stray closer, a bad byte in a
 *    string) skips to the next structural character ({ [ ] }), which starts
 *    over, or control character (newline) or 0xFE/0xFF byte, which are
 *    swallowed (json-lexer.c IN_RECOVERY).
 * One difference: an unexpected '{' or '[' where a key, ':' or ',' was due
 * (a truncated request followed by the next one) ends the bad value and
 * starts a new one, so the request after a truncated one is not lost
 * (QEMU loses it).
 */
#include "qmp/qmp_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- framer */

enum expect {
    EX_VALUE,          /* start of the top-level value, after ':' or ',' in an array */
    EX_VALUE_OR_CLOSE, /* after '[' */
    EX_KEY_OR_CLOSE,   /* after '{' */
    EX_KEY,            /* after ',' in an object */
    EX_COLON,          /* after a key */
    EX_COMMA_OR_CLOSE, /* after a value inside a container */
};

enum lex { LX_NONE, LX_STR, LX_ESC, LX_HEX, LX_NUM, LX_LIT };

/* Number sub-states, the JSON grammar of RFC 8259 section 6. */
enum num { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

void lm_qmp_scanner_init(lm_qmp_scanner *s)
{
    memset(s, 0, sizeof *s);
}

static void start_value(lm_qmp_scanner *s)
{
    bool recovering = s->recovering;
    lm_qmp_scanner_init(s);
    s->recovering = recovering;
    s->in_value = true;
    s->expect = EX_VALUE;
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Bytes at which QEMU's lexer leaves recovery, swallowing them. */
static bool is_reset(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c >= 0xfe;
}

static bool is_opener(unsigned char c)
{
    return c == '{' || c == '[';
}

static bool is_closer(unsigned char c)
{
    return c == '}' || c == ']';
}

static const char *show(unsigned char c, char *buf, size_t cap)
{
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, cap, "'%c'", c);
    else
        snprintf(buf, cap, "byte 0x%02x", c);
    return buf;
}

static bool top_is_object(const lm_qmp_scanner *s)
{
    uint32_t d = s->depth - 1;
    return (s->stack[d / 8] >> (d % 8)) & 1;
}

/* One byte of a malformed value being skipped (s->skip > 0): brackets are
 * counted outside strings until the value's own closer. */
static void skip_byte(lm_qmp_scanner *s, unsigned char c)
{
    if ((c < 0x20 && !is_ws(c)) || c >= 0xfe || (s->skip_str && c < 0x20)) {
        /* QEMU's resync bytes (and a raw control character, which cannot
         * be in a string): the skip ends here. */
        s->skip = 0;
        s->skip_str = s->skip_esc = false;
        return;
    }
    if (s->skip_str) {
        if (s->skip_esc)
            s->skip_esc = false;
        else if (c == '\\')
            s->skip_esc = true;
        else if (c == '"')
            s->skip_str = false;
        return;
    }
    if (c == '"')
        s->skip_str = true;
    else if (is_opener(c) && s->skip < UINT32_MAX)
        s->skip++;
    else if (is_closer(c))
        s->skip--;
}

/* Ends the value being scanned at byte i (bytes before base were skipped):
 * drops it, reports why, and decides how to resynchronise. */
static int fail(lm_qmp_scanner *s, size_t base, size_t i, unsigned char c, bool lookahead,
                size_t *consumed, lm_error *err, const char *what)
{
    char b[16];
    uint32_t depth = s->depth;
    bool in_str = s->lex == LX_STR || s->lex == LX_ESC || s->lex == LX_HEX;
    lm_error_set(err, -EINVAL, "JSON parse error, %s at offset %zu near %s", what, i - base,
                 show(c, b, sizeof b));
    lm_qmp_scanner_init(s);
    if (lookahead && is_opener(c) && i > 0) {
        /* The bad value ends here; c starts the next one. */
        *consumed = i;
    } else if (depth > 0 && !in_str) {
        /* The rest of this value, c included, goes without a second
         * error (see the top of the file). */
        *consumed = i + 1;
        s->skip = depth;
        skip_byte(s, c);
    } else {
        *consumed = i + 1;
        s->recovering = !is_reset(c);
    }
    return LM_QMP_SCAN_ERROR;
}

int lm_qmp_scan(lm_qmp_scanner *s, const char *buf, size_t len, size_t *vstart, size_t *consumed,
                lm_error *err)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t i = 0, base = 0;

    *vstart = 0;
    if (!s->in_value) {
        for (; i < len; i++) {
            unsigned char c = p[i];
            if (s->skip) {
                skip_byte(s, c);
                continue;
            }
            if (s->recovering) {
                if (is_opener(c) || is_closer(c)) {
                    s->recovering = false;
                    break;
                }
                if (is_reset(c))
                    s->recovering = false;
                continue;
            }
            if (!is_ws(c))
                break;
        }
        if (i == len) {
            *consumed = len;
            return LM_QMP_SCAN_MORE;
        }
        start_value(s);
        base = i;
    } else {
        i = s->off;
    }

    for (; i < len; i++) {
        unsigned char c = p[i];
    again:
        switch (s->lex) {
        case LX_STR:
            if (c == '"') {
                s->lex = LX_NONE;
                if (s->key) {
                    s->expect = EX_COLON;
                    continue;
                }
                goto value_done;
            }
            if (c == '\\')
                s->lex = LX_ESC;
            else if (c < 0x20)
                return fail(s, base, i, c, false, consumed, err, "control character in string");
            else if (c >= 0xfe)
                return fail(s, base, i, c, false, consumed, err, "invalid UTF-8 in string");
            continue;
        case LX_ESC:
            if (c == 'u') {
                s->lex = LX_HEX;
                s->sub = 0;
            } else if (c && strchr("\"\\/bfnrt", c)) {
                s->lex = LX_STR;
            } else {
                return fail(s, base, i, c, false, consumed, err, "invalid escape in string");
            }
            continue;
        case LX_HEX:
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
                return fail(s, base, i, c, false, consumed, err, "invalid \\u escape in string");
            if (++s->sub == 4)
                s->lex = LX_STR;
            continue;
        case LX_NUM: {
            bool digit = c >= '0' && c <= '9';
            switch (s->sub) {
            case N_MINUS:
                if (!digit)
                    return fail(s, base, i, c, true, consumed, err, "invalid number");
                s->sub = c == '0' ? N_ZERO : N_INT;
                continue;
            case N_ZERO:
            case N_INT:
            case N_FRAC:
                if (digit && s->sub != N_ZERO)
                    continue;
                if (c == '.' && s->sub != N_FRAC) {
                    s->sub = N_DOT;
                    continue;
                }
                if (c == 'e' || c == 'E') {
                    s->sub = N_E;
                    continue;
                }
                if (digit)
                    return fail(s, base, i, c, true, consumed, err, "invalid number");
                break; /* the number ends before c */
            case N_DOT:
                if (!digit)
                    return fail(s, base, i, c, true, consumed, err, "invalid number");
                s->sub = N_FRAC;
                continue;
            case N_E:
                if (c == '+' || c == '-') {
                    s->sub = N_ESIGN;
                    continue;
                }
                /* fall through */
            case N_ESIGN:
                if (!digit)
                    return fail(s, base, i, c, true, consumed, err, "invalid number");
                s->sub = N_EXP;
                continue;
            case N_EXP:
                if (digit)
                    continue;
                break;
            }
            /* The number ended just before c: finish it, then look at c. */
            s->lex = LX_NONE;
            if (s->depth == 0) {
                *vstart = base;
                *consumed = i;
                lm_qmp_scanner_init(s);
                return LM_QMP_SCAN_VALUE;
            }
            s->expect = EX_COMMA_OR_CLOSE;
            goto again;
        }
        case LX_LIT:
            if (c != (unsigned char)s->lit[s->sub])
                return fail(s, base, i, c, true, consumed, err, "invalid keyword");
            if (s->lit[++s->sub])
                continue;
            s->lex = LX_NONE;
            goto value_done;
        default:
            break;
        }

        /* Between tokens. */
        if (is_ws(c))
            continue;
        switch (s->expect) {
        case EX_VALUE:
        case EX_VALUE_OR_CLOSE:
            if (c == ']' && s->expect == EX_VALUE_OR_CLOSE)
                goto close;
            if (is_opener(c)) {
                if (s->depth >= LM_QMP_MAX_DEPTH)
                    return fail(s, base, i, c, false, consumed, err, "nesting too deep");
                uint32_t d = s->depth++;
                if (c == '{') {
                    s->stack[d / 8] |= (uint8_t)(1u << (d % 8));
                    s->expect = EX_KEY_OR_CLOSE;
                } else {
                    s->stack[d / 8] &= (uint8_t) ~(1u << (d % 8));
                    s->expect = EX_VALUE_OR_CLOSE;
                }
                continue;
            }
            if (c == '"') {
                s->lex = LX_STR;
                s->key = false;
                continue;
            }
            if (c == '-' || (c >= '0' && c <= '9')) {
                s->lex = LX_NUM;
                s->sub = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
                continue;
            }
            if (c == 't' || c == 'f' || c == 'n') {
                s->lex = LX_LIT;
                s->lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
                s->sub = 1;
                continue;
            }
            if (s->depth == 0 && is_closer(c))
                return fail(s, base, i, c, false, consumed, err, "stray closing bracket");
            return fail(s, base, i, c, true, consumed, err, "expecting a value");
        case EX_KEY_OR_CLOSE:
            if (c == '}')
                goto close;
            /* fall through */
        case EX_KEY:
            if (c != '"')
                return fail(s, base, i, c, true, consumed, err, "expecting a string key");
            s->lex = LX_STR;
            s->key = true;
            continue;
        case EX_COLON:
            if (c != ':')
                return fail(s, base, i, c, true, consumed, err, "expecting ':'");
            s->expect = EX_VALUE;
            continue;
        case EX_COMMA_OR_CLOSE:
            if (c == ',') {
                s->expect = top_is_object(s) ? EX_KEY : EX_VALUE;
                continue;
            }
            if (c == (top_is_object(s) ? '}' : ']'))
                goto close;
            return fail(s, base, i, c, true, consumed, err,
                        top_is_object(s) ? "expecting ',' or '}'" : "expecting ',' or ']'");
        }
        continue;

    close:
        s->depth--;
        /* fall through */
    value_done:
        if (s->depth == 0) {
            *vstart = base;
            *consumed = i + 1;
            lm_qmp_scanner_init(s);
            return LM_QMP_SCAN_VALUE;
        }
        s->expect = EX_COMMA_OR_CLOSE;
    }

    /* Out of input inside a value: keep it from base on. */
    *consumed = base;
    s->off = len - base;
    return LM_QMP_SCAN_MORE;
}

/* -------------------------------------------------------------- reader */

void lm_qmp_reader_init(lm_qmp_reader *r, size_t max)
{
    memset(r, 0, sizeof *r);
    lm_qmp_scanner_init(&r->sc);
    r->max = max;
}

void lm_qmp_reader_fini(lm_qmp_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->head = r->len = r->cap = 0;
}

int lm_qmp_reader_feed(lm_qmp_reader *r, const void *data, size_t n, lm_error *err)
{
    size_t pending = r->len - r->head;
    if (n == 0)
        return 0;
    if (n > 2 * r->max || pending > 2 * r->max - n)
        return lm_error_set(err, -EMSGSIZE, "QMP input exceeds %zu bytes", r->max);
    if (r->head) {
        memmove(r->buf, r->buf + r->head, pending);
        r->head = 0;
        r->len = pending;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap *= 2;
        char *nb = realloc(r->buf, cap);
        if (!nb)
            return lm_error_set(err, -ENOMEM, "out of memory");
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return 0;
}

int lm_qmp_reader_next(lm_qmp_reader *r, json_t **out, lm_error *err)
{
    *out = NULL;
    while (r->head < r->len) {
        size_t vstart = 0, consumed = 0;
        const char *b = r->buf + r->head;
        /* Never scan more than max bytes of one value, so that a value is
         * refused for its size at the same byte whether the input came in
         * one piece or in many (and not scanned further for nothing). */
        size_t avail = r->len - r->head;
        if (avail > r->max)
            avail = r->max;
        int rc = lm_qmp_scan(&r->sc, b, avail, &vstart, &consumed, err);
        if (rc == LM_QMP_SCAN_VALUE) {
            size_t vlen = consumed - vstart;
            r->head += consumed;
            if (vlen >= r->max) {
                lm_error_set(err, -EMSGSIZE, "QMP input exceeds %zu bytes", r->max);
                return LM_QMP_READ_OVERFLOW;
            }
            /* The framer checked the syntax; jansson still checks UTF-8,
             * duplicate keys (QEMU refuses them too), NUL and integer range. */
            json_error_t je;
            json_t *v =
                lm_qmp_json_loadb(b + vstart, vlen, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
            if (!v) {
                lm_error_set(err, -EINVAL, "JSON parse error, %s", je.text);
                return LM_QMP_READ_BAD;
            }
            *out = v;
            return LM_QMP_READ_VALUE;
        }
        r->head += consumed;
        if (rc == LM_QMP_SCAN_ERROR)
            return LM_QMP_READ_BAD;
        if (avail - consumed >= r->max) {
            lm_error_set(err, -EMSGSIZE, "QMP input exceeds %zu bytes", r->max);
            return LM_QMP_READ_OVERFLOW;
        }
        if (r->head - consumed + avail == r->len)
            break; /* scanned everything there is */
    }
    if (r->head == r->len)
        r->head = r->len = 0;
    return LM_QMP_READ_MORE;
}

/* ------------------------------------------------------------ requests */

static int __attribute__((format(printf, 2, 3))) bad(lm_qmp_request *req, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->err_desc, sizeof req->err_desc, fmt, ap);
    va_end(ap);
    req->err_class = "GenericError";
    req->execute = NULL;
    return -EINVAL;
}

int lm_qmp_request_check(json_t *root, lm_qmp_request *req)
{
    memset(req, 0, sizeof *req);
    req->root = root;
    if (!json_is_object(root))
        return bad(req, "QMP input must be a JSON object");
    req->id = json_object_get(root, "id");

    /* Members in input order, like QEMU's qmp_dispatch_check_obj, so the
     * first problem in the text is the one reported. */
    const char *key;
    json_t *v;
    const char *exec = NULL;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "execute") == 0) {
            if (!json_is_string(v))
                return bad(req, "QMP input member '%s' must be a string", key);
            exec = json_string_value(v);
        } else if (strcmp(key, "arguments") == 0) {
            if (!json_is_object(v))
                return bad(req, "QMP input member 'arguments' must be an object");
            req->args = v;
        } else if (strcmp(key, "id") != 0) {
            /* "exec-oob" lands here too: out-of-band execution is not
             * offered in the greeting, as in a QEMU without oob. */
            return bad(req, "QMP input member '%s' is unexpected", key);
        }
    }
    if (!exec)
        return bad(req, "QMP input lacks member 'execute'");
    req->execute = exec;
    return 0;
}

void lm_qmp_request_fini(lm_qmp_request *req)
{
    json_decref(req->root);
    memset(req, 0, sizeof *req);
}

int lm_qmp_parse_request(const char *buf, size_t len, size_t *consumed, lm_qmp_request *req)
{
    lm_qmp_scanner s;
    lm_error err = {0};
    size_t vstart = 0;

    memset(req, 0, sizeof *req);
    lm_qmp_scanner_init(&s);
    *consumed = 0;
    int rc = lm_qmp_scan(&s, buf, len, &vstart, consumed, &err);
    if (rc == LM_QMP_SCAN_MORE)
        return 0;
    if (rc == LM_QMP_SCAN_ERROR) {
        req->err_class = "GenericError";
        snprintf(req->err_desc, sizeof req->err_desc, "%s", err.msg);
        return 1;
    }
    json_error_t je;
    json_t *v = lm_qmp_json_loadb(buf + vstart, *consumed - vstart,
                                  JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        req->err_class = "GenericError";
        snprintf(req->err_desc, sizeof req->err_desc, "JSON parse error, %s", je.text);
        return 1;
    }
    lm_qmp_request_check(v, req);
    return 1;
}
