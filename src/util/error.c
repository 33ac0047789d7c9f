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
    /* Truncation is fine: the message is for people. */
    size_t n = strnlen(pre, sizeof err->msg - 1);
    memcpy(err->msg, pre, n);
    snprintf(err->msg + n, sizeof err->msg - n, ": %s", old);
    return err->code;
}

void lm_error_clear(lm_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
