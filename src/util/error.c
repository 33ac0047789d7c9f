/* error.c - the caller-owned error struct: the first error wins. */
#include "livemig.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int lm_error_set(lm_error *err, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = -1;
    if (!err || err->code)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

int lm_error_prefix(lm_error *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char pre[LM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    if (!err->code) {
        snprintf(err->msg, sizeof err->msg, "%s", pre);
        err->code = -1;
        return err->code;
    }
    char old[LM_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    /* "<pre>: <old>", truncated if need be: the message is for people. */
    size_t cap = sizeof err->msg - 1;
    size_t n = strnlen(pre, cap);
    size_t m = strnlen(old, cap);
    char out[LM_ERROR_MSG_MAX];
    memcpy(out, pre, n);
    size_t k = n;
    if (k + 2 <= cap) {
        memcpy(out + k, ": ", 2);
        k += 2;
    }
    if (m > cap - k)
        m = cap - k;
    memcpy(out + k, old, m);
    k += m;
    out[k] = '\0';
    memcpy(err->msg, out, k + 1);
    return err->code;
}

void lm_error_clear(lm_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
