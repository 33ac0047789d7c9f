/* error.c - the caller-owned error struct (the first error wins) and the
 * names and descriptions of error codes. */
#include "livemig.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A code >= 0 passed as an error, or an error whose cause left no code. */
#define NO_CODE (-EIO)

int lm_error_set(lm_error *err, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = NO_CODE;
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
        return NO_CODE;
    char pre[LM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    if (!err->code) {
        snprintf(err->msg, sizeof err->msg, "%s", pre);
        err->code = NO_CODE;
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

/* Every code the library raises itself (livemig.h, "errors"), described as
 * the library means it, and the errno values its system calls (sockets,
 * files, mmap, userfaultfd, threads) commonly fail with, as strerror()
 * puts them.  Our own table rather than strerror(): the strings are static,
 * the same on every libc, and say what the code means here.  Searched
 * linearly: it is short and only read when something failed.  On Linux
 * EOPNOTSUPP == ENOTSUP and EWOULDBLOCK == EAGAIN: one entry each. */
static const struct code_info {
    int errnum; /* positive */
    const char *name, *desc;
} codes[] = {
    /* raised by the library */
    {EINVAL, "EINVAL", "invalid argument"},
    {ENOTSUP, "ENOTSUP", "not supported"},
    {EBUSY, "EBUSY", "busy (a migration is in progress)"},
    {EEXIST, "EEXIST", "already exists"},
    {ENOENT, "ENOENT", "not found"},
    {ENOSPC, "ENOSPC", "no room left (a bounded table or buffer is full)"},
    {ENAMETOOLONG, "ENAMETOOLONG", "name too long"},
    {ENOMEM, "ENOMEM", "out of memory"},
    {EPROTO, "EPROTO", "protocol error (the peer's stream breaks the format)"},
    {EPROTONOSUPPORT, "EPROTONOSUPPORT", "protocol version not supported"},
    {EMSGSIZE, "EMSGSIZE", "message too long"},
    {EPIPE, "EPIPE", "the peer closed the connection"},
    {ECONNRESET, "ECONNRESET", "connection reset by the peer"},
    {ETIMEDOUT, "ETIMEDOUT", "timed out"},
    {ECANCELED, "ECANCELED", "cancelled"},
    {EREMOTEIO, "EREMOTEIO", "the peer answered with an error"},
    {EIO, "EIO", "input/output error"},
    {ERANGE, "ERANGE", "value out of range"},
    {E2BIG, "E2BIG", "too large"},
    {EBADF, "EBADF", "bad file descriptor"},
    {EHOSTUNREACH, "EHOSTUNREACH", "host unreachable"},
    {EADDRNOTAVAIL, "EADDRNOTAVAIL", "address not available"},
    {ENOSYS, "ENOSYS", "not implemented by the kernel"},
    {EPERM, "EPERM", "operation not permitted"},
    {ENOTTY, "ENOTTY", "inappropriate ioctl for device"},
    {EAGAIN, "EAGAIN", "resource temporarily unavailable"},
    {EINTR, "EINTR", "interrupted system call"},
    /* passed up from system calls */
    {EACCES, "EACCES", "permission denied"},
    {EFAULT, "EFAULT", "bad address"},
    {ENODEV, "ENODEV", "no such device"},
    {ENXIO, "ENXIO", "no such device or address"},
    {ESRCH, "ESRCH", "no such process"},
    {EMFILE, "EMFILE", "too many open files"},
    {ENFILE, "ENFILE", "too many open files in system"},
    {ENOTDIR, "ENOTDIR", "not a directory"},
    {EISDIR, "EISDIR", "is a directory"},
    {ELOOP, "ELOOP", "too many levels of symbolic links"},
    {EROFS, "EROFS", "read-only file system"},
    {EFBIG, "EFBIG", "file too large"},
    {EOVERFLOW, "EOVERFLOW", "value too large for defined data type"},
    {EDEADLK, "EDEADLK", "resource deadlock avoided"},
    {ENOTSOCK, "ENOTSOCK", "not a socket"},
    {ENOPROTOOPT, "ENOPROTOOPT", "protocol not available"},
    {EAFNOSUPPORT, "EAFNOSUPPORT", "address family not supported"},
    {EADDRINUSE, "EADDRINUSE", "address already in use"},
    {ENETDOWN, "ENETDOWN", "network is down"},
    {ENETUNREACH, "ENETUNREACH", "network is unreachable"},
    {ECONNABORTED, "ECONNABORTED", "connection aborted"},
    {ECONNREFUSED, "ECONNREFUSED", "connection refused"},
    {ENOBUFS, "ENOBUFS", "no buffer space available"},
    {EISCONN, "EISCONN", "already connected"},
    {ENOTCONN, "ENOTCONN", "not connected"},
    {ESHUTDOWN, "ESHUTDOWN", "cannot send after shutdown"},
    {EHOSTDOWN, "EHOSTDOWN", "host is down"},
    {EINPROGRESS, "EINPROGRESS", "operation now in progress"},
    {EALREADY, "EALREADY", "operation already in progress"},
};

typedef struct code_info code_info;

/* NULL for 0, a positive number or an errno missing from the table.
 * Compares code with -errnum: -code would overflow for INT_MIN. */
static const code_info *find_code(int code)
{
    for (size_t i = 0; code < 0 && i < sizeof codes / sizeof codes[0]; i++)
        if (code == -codes[i].errnum)
            return &codes[i];
    return NULL;
}

const char *lm_error_name(int code)
{
    if (code == 0)
        return "OK";
    const code_info *c = find_code(code);
    return c ? c->name : "UNKNOWN";
}

const char *lm_strerror(int code)
{
    if (code == 0)
        return "success";
    const code_info *c = find_code(code);
    return c ? c->desc : "unknown error";
}
