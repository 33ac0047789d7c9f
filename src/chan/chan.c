/*
 * chan.c - a buffered byte channel over one fd with a sticky first error.
 * Small writes gather in a 64 KiB buffer; page data goes out by reference
 * (one writev of buffer + header + guest memory); large reads land straight
 * in the caller's memory.
 *
 * Threads (see chan.h): at most one writer and one reader at a time, plus
 * any thread calling lm_chan_shutdown / set_error / get_error / counters.
 *   - wbuf/wlen: the writer only, no lock.
 *   - rbuf/rpos/rlen: the reader only, no lock.
 *   - err_msg: guarded by lock; err_code is written under lock (release) and
 *     read without it (acquire) so the hot paths test for an error with one
 *     load.  The message is complete before err_code becomes non-zero.
 *   - bytes_written / bytes_read / write_busy_ns: relaxed atomics, written by
 *     their one thread, read by anyone (statistics only).
 *   - fd: fixed for the channel's life; shutdown(2) on it from any thread is
 *     what unblocks the reader and the writer.
 * Only one lock; nothing is called with it held.
 *
 * Error codes: I/O errors are -errno; EOF in the middle of a read is -EPIPE
 * ("<name>: peer closed the connection"); lm_chan_shutdown gives -ECANCELED.
 */
#include "chan/chan.h"

#include "chan/tls.h"

#include <errno.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WBUF_SIZE (64u << 10)
#define RBUF_SIZE (256u << 10)
/* A read of at least this much skips the read buffer (no copy). */
#define DIRECT_READ_MIN (64u << 10)
/* write_ref copies data of less than this into the buffer instead of a
 * syscall per call; page data (>= 4 KiB) is never copied. */
#define COPY_REF_MAX 4096u
#define MAX_REF_IOV 64
#define NAME_MAX_LEN 64

struct lm_chan {
    int fd;
    char name[NAME_MAX_LEN];

    /* writer only */
    bool no_sendmsg;    /* fd is not a socket: use writev */
    bool guard_sigpipe; /* ... and it is a FIFO: writev may raise SIGPIPE */
    uint8_t *wbuf;
    size_t wlen;

    /* reader only */
    bool no_recv; /* fd is not a socket: use read */
    uint8_t *rbuf;
    size_t rpos, rlen;

    /* error: err_msg under lock, err_code see above */
    pthread_mutex_t lock;
    _Atomic int err_code;
    char err_msg[LM_ERROR_MSG_MAX];

    _Atomic uint64_t bytes_written;
    _Atomic uint64_t bytes_read;
    _Atomic uint64_t write_busy_ns;
    /* bytes one read or write syscall may move (0: no limit); see
     * lm_chan_set_io_slice */
    _Atomic size_t io_slice;

    /* TLS (lm_chan_set_tls): the session, and the ciphertext buffers its
     * transport uses so that one syscall carries many records: tout
     * (writer only), tin/tin_pos/tin_len (reader only). */
    lm_tls *tls;
    uint8_t *tout, *tstage, *tin;
    size_t tout_len, tin_pos, tin_len;
};

/* ---------------------------------------------------------------- errors */

static int sticky(const lm_chan *c)
{
    return atomic_load_explicit(&((lm_chan *)c)->err_code, memory_order_acquire);
}

static int set_error_fmt(lm_chan *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_error_fmt(lm_chan *c, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = -EIO;
    pthread_mutex_lock(&c->lock);
    int cur = atomic_load_explicit(&c->err_code, memory_order_relaxed);
    if (cur == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
        va_end(ap);
        atomic_store_explicit(&c->err_code, code, memory_order_release);
        cur = code;
    }
    pthread_mutex_unlock(&c->lock);
    return cur; /* the first error, which may not be this one */
}

void lm_chan_set_error(lm_chan *c, int code, const char *msg)
{
    set_error_fmt(c, code, "%s", msg ? msg : "error");
}

int lm_chan_get_error(lm_chan *c, lm_error *err)
{
    if (!sticky(c))
        return 0;
    pthread_mutex_lock(&c->lock);
    int code = atomic_load_explicit(&c->err_code, memory_order_relaxed);
    lm_error_set(err, code, "%s", c->err_msg);
    pthread_mutex_unlock(&c->lock);
    return code;
}

void lm_chan_shutdown(lm_chan *c, const char *why)
{
    set_error_fmt(c, -ECANCELED, "%s: %s", c->name, why && *why ? why : "shut down");
    /* Fails with ENOTSOCK for pipes and files: nothing to wake there. */
    shutdown(c->fd, SHUT_RDWR);
}

/* ------------------------------------------------------------ lifecycle */

int lm_chan_new(int fd, const char *name, lm_chan **out, lm_error *err)
{
    lm_chan *c = NULL;
    int r = 0;

    *out = NULL;
    if (fd < 0) {
        r = lm_error_set(err, -EBADF, "%s: invalid fd %d", name ? name : "channel", fd);
        goto out;
    }
    c = calloc(1, sizeof *c);
    if (!c || !(c->wbuf = malloc(WBUF_SIZE)) || !(c->rbuf = malloc(RBUF_SIZE))) {
        r = lm_error_set(err, -ENOMEM, "%s: out of memory", name ? name : "channel");
        goto out;
    }
    c->fd = fd;
    snprintf(c->name, sizeof c->name, "%s", name && *name ? name : "channel");
    pthread_mutex_init(&c->lock, NULL);
    *out = c; /* now owns fd */
    c = NULL;
    fd = -1;
out:
    if (c) {
        free(c->wbuf);
        free(c->rbuf);
        free(c);
    }
    /* Ownership of fd moves in on every path: the caller never closes it. */
    if (fd >= 0)
        close(fd);
    return r;
}

void lm_chan_free(lm_chan *c)
{
    if (!c)
        return;
    lm_tls_free(c->tls);
    free(c->tout);
    free(c->tstage);
    free(c->tin);
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->lock);
    free(c->wbuf);
    free(c->rbuf);
    free(c);
}

int lm_chan_fd(const lm_chan *c)
{
    return c->fd;
}

uint64_t lm_chan_bytes_written(const lm_chan *c)
{
    return atomic_load_explicit(&((lm_chan *)c)->bytes_written, memory_order_relaxed);
}

uint64_t lm_chan_queued(const lm_chan *c)
{
    int n = 0;
    if (!c || c->fd < 0 || c->no_sendmsg || ioctl(c->fd, SIOCOUTQ, &n) < 0 || n < 0)
        return 0;
    return (uint64_t)n;
}

uint64_t lm_chan_bytes_read(const lm_chan *c)
{
    return atomic_load_explicit(&((lm_chan *)c)->bytes_read, memory_order_relaxed);
}

uint64_t lm_chan_write_busy_ns(const lm_chan *c)
{
    return atomic_load_explicit(&((lm_chan *)c)->write_busy_ns, memory_order_relaxed);
}

/* The socket's SO_RCVTIMEO or SO_SNDTIMEO in ms for a poll(2), -1 when
 * none is set (or fd is no socket).  A blocking socket applies it in the
 * kernel; a non-blocking one (fd: URIs may hand one in) says EAGAIN at
 * once and this file waits in poll, which must honour the same bound: a
 * HELLO read with SO_RCVTIMEO once waited for ever there (issue 12). */
static int sock_timeout_ms(int fd, int opt)
{
    struct timeval tv = {0};
    socklen_t len = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, opt, &tv, &len) != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0))
        return -1;
    int64_t ms = (int64_t)tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* ----------------------------------------------------------------- write */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* writev on a FIFO whose reader is gone raises SIGPIPE, which would kill
 * the host: the library must not touch process-wide signal dispositions, so
 * block it in this thread for the call and swallow one that we caused. */
static ssize_t writev_nosigpipe(int fd, const struct iovec *iov, int cnt)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE);
    ssize_t n = writev(fd, iov, cnt);
    int e = errno;
    if (n < 0 && e == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return n;
}

static ssize_t write_once(lm_chan *c, struct iovec *iov, int cnt)
{
    ssize_t n;
    if (!c->no_sendmsg) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n >= 0 || errno != ENOTSOCK)
            return n;
        /* fd: URIs may be a pipe or a file. */
        struct stat st;
        c->no_sendmsg = true;
        c->guard_sigpipe = fstat(c->fd, &st) != 0 || S_ISFIFO(st.st_mode);
    }
    return c->guard_sigpipe ? writev_nosigpipe(c->fd, iov, cnt) : writev(c->fd, iov, cnt);
}

/* Writes all of iov[0..cnt) to the fd (modifies iov).  Returns 0 or the
 * sticky error. */
static int raw_send_all(lm_chan *c, struct iovec *iov, int cnt)
{
    uint64_t busy = 0;
    int r = 0;

    /* Skip empty pieces so a fully sent vector is cnt == 0. */
    while (cnt > 0 && iov[0].iov_len == 0) {
        iov++;
        cnt--;
    }
    while (cnt > 0) {
        int e = 0;
        uint64_t t0 = mono_ns();
        int k = cnt > 1024 ? 1024 : cnt;
        size_t slice = atomic_load_explicit(&c->io_slice, memory_order_relaxed);
        size_t cut = 0, sum = 0;
        if (slice) {
            /* The pieces that fit in the slice, the last one shortened. */
            int i = 0;
            while (i < k && sum + iov[i].iov_len <= slice)
                sum += iov[i++].iov_len;
            if (i < k && sum < slice) {
                cut = iov[i].iov_len;
                iov[i].iov_len = slice - sum;
                i++;
            }
            k = i;
        }
        ssize_t n = write_once(c, iov, k);
        if (cut)
            iov[k - 1].iov_len = cut;
        if (n < 0)
            e = errno;
        busy += mono_ns() - t0;
        if (n < 0) {
            if (e == EINTR)
                continue;
            if ((e == EAGAIN || e == EWOULDBLOCK) && !(fcntl(c->fd, F_GETFL) & O_NONBLOCK)) {
                /* A blocking socket says EAGAIN only when its SO_SNDTIMEO
                 * ran out with nothing sent (postcopy sets it: a peer that
                 * reads nothing any more). */
                r = set_error_fmt(c, -ETIMEDOUT, "%s: write timed out", c->name);
                goto out;
            }
            if (e == EAGAIN || e == EWOULDBLOCK) {
                /* A non-blocking fd handed in through fd:.  Wait for room;
                 * shutdown(2) wakes this poll too. */
                struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
                uint64_t p0 = mono_ns();
                int pr = poll(&pfd, 1, sock_timeout_ms(c->fd, SO_SNDTIMEO));
                int pe = errno;
                busy += mono_ns() - p0; /* waiting for the wire is busy too */
                if (pr == 0) {
                    r = set_error_fmt(c, -ETIMEDOUT, "%s: write timed out", c->name);
                    goto out;
                }
                if (pr > 0 || pe == EINTR) {
                    if ((r = sticky(c)))
                        goto out;
                    continue;
                }
                e = pe;
            }
            r = set_error_fmt(c, -e, "%s: write: %s", c->name, strerror(e));
            goto out;
        }
        if (n == 0) {
            r = set_error_fmt(c, -EIO, "%s: write: wrote nothing", c->name);
            goto out;
        }
        atomic_fetch_add_explicit(&c->bytes_written, (uint64_t)n, memory_order_relaxed);
        size_t left = (size_t)n;
        while (cnt > 0 && left >= iov[0].iov_len) {
            left -= iov[0].iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov[0].iov_base = (uint8_t *)iov[0].iov_base + left;
            iov[0].iov_len -= left;
        }
    }
out:
    atomic_fetch_add_explicit(&c->write_busy_ns, busy, memory_order_relaxed);
    return r;
}

static int tls_send_all(lm_chan *c, struct iovec *iov, int cnt);

/* Writes all of iov[0..cnt) (modifies iov), encrypted on a TLS channel. */
static int send_all(lm_chan *c, struct iovec *iov, int cnt)
{
    return c->tls ? tls_send_all(c, iov, cnt) : raw_send_all(c, iov, cnt);
}

void lm_chan_set_io_slice(lm_chan *c, size_t bytes)
{
    atomic_store_explicit(&c->io_slice, bytes, memory_order_relaxed);
}

int lm_chan_flush(lm_chan *c)
{
    int r = sticky(c);
    if (r)
        return r;
    if (c->wlen == 0)
        return 0;
    struct iovec iov = {.iov_base = c->wbuf, .iov_len = c->wlen};
    r = send_all(c, &iov, 1);
    c->wlen = 0;
    return r;
}

int lm_chan_put(lm_chan *c, const void *p, size_t n)
{
    int r = sticky(c);
    if (r)
        return r;
    if (n <= WBUF_SIZE - c->wlen) {
        if (n)
            memcpy(c->wbuf + c->wlen, p, n);
        c->wlen += n;
        return 0;
    }
    /* Does not fit: buffer and p go out together, p is not copied. */
    struct iovec iov[2] = {{c->wbuf, c->wlen}, {(void *)p, n}};
    r = send_all(c, iov, 2);
    c->wlen = 0;
    return r;
}

int lm_chan_writev_ref(lm_chan *c, const void *hdr, size_t hlen, const struct iovec *v, int n)
{
    int r = sticky(c);
    if (r)
        return r;
    if (n < 0 || n > MAX_REF_IOV)
        return set_error_fmt(c, -EINVAL, "%s: writev_ref with %d pieces (at most %d)", c->name, n,
                             MAX_REF_IOV);

    size_t dlen = 0;
    for (int i = 0; i < n; i++)
        dlen += v[i].iov_len;
    /* Small pieces (a device blob, a zero-length page run) cost less to copy
     * than to send with a syscall of their own. */
    if (dlen < COPY_REF_MAX && hlen + dlen <= WBUF_SIZE - c->wlen) {
        if (hlen)
            memcpy(c->wbuf + c->wlen, hdr, hlen);
        c->wlen += hlen;
        for (int i = 0; i < n; i++) {
            if (v[i].iov_len)
                memcpy(c->wbuf + c->wlen, v[i].iov_base, v[i].iov_len);
            c->wlen += v[i].iov_len;
        }
        return 0;
    }

    struct iovec iov[MAX_REF_IOV + 2];
    int cnt = 0;
    iov[cnt++] = (struct iovec){c->wbuf, c->wlen};
    iov[cnt++] = (struct iovec){(void *)hdr, hlen};
    for (int i = 0; i < n; i++)
        iov[cnt++] = v[i];
    r = send_all(c, iov, cnt);
    c->wlen = 0;
    return r;
}

int lm_chan_write_ref(lm_chan *c, const void *hdr, size_t hlen, const void *data, size_t dlen)
{
    struct iovec v = {(void *)data, dlen};
    return lm_chan_writev_ref(c, hdr, hlen, &v, 1);
}

/* ------------------------------------------------------------------ read */

/* One read syscall into p (up to n bytes).  Returns bytes (> 0) or the
 * sticky error; EOF is an error here because every caller needs the bytes. */
static ssize_t raw_read_some(lm_chan *c, void *p, size_t n, bool waitall)
{
    for (;;) {
        ssize_t got;
        size_t slice = atomic_load_explicit(&c->io_slice, memory_order_relaxed);
        if (slice && n > slice)
            n = slice;
        if (!c->no_recv) {
            got = recv(c->fd, p, n, waitall ? MSG_WAITALL : 0);
            if (got < 0 && errno == ENOTSOCK) {
                c->no_recv = true;
                continue;
            }
        } else {
            got = read(c->fd, p, n);
        }
        if (got > 0) {
            atomic_fetch_add_explicit(&c->bytes_read, (uint64_t)got, memory_order_relaxed);
            return got;
        }
        /* A shutdown from another thread shows up here as EOF or an error:
         * its reason, set first, is the one reported. */
        if (got == 0)
            return set_error_fmt(c, -EPIPE, "%s: peer closed the connection", c->name);
        int e = errno;
        if (e == EINTR)
            continue;
        if ((e == EAGAIN || e == EWOULDBLOCK) && !(fcntl(c->fd, F_GETFL) & O_NONBLOCK))
            /* A blocking socket says EAGAIN only when its SO_RCVTIMEO ran out. */
            return set_error_fmt(c, -ETIMEDOUT, "%s: read timed out", c->name);
        if (e == EAGAIN || e == EWOULDBLOCK) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
            int pr = poll(&pfd, 1, sock_timeout_ms(c->fd, SO_RCVTIMEO));
            if (pr == 0)
                return set_error_fmt(c, -ETIMEDOUT, "%s: read timed out", c->name);
            if (pr > 0 || errno == EINTR) {
                int r = sticky(c);
                if (r)
                    return r;
                continue;
            }
            e = errno;
        }
        return set_error_fmt(c, -e, "%s: read: %s", c->name, strerror(e));
    }
}

static ssize_t tls_read_some(lm_chan *c, void *p, size_t n);

/* Up to n bytes into p (> 0), or the sticky error; decrypted on TLS. */
static ssize_t read_some(lm_chan *c, void *p, size_t n, bool waitall)
{
    return c->tls ? tls_read_some(c, p, n) : raw_read_some(c, p, n, waitall);
}

static int refill(lm_chan *c)
{
    c->rpos = c->rlen = 0;
    ssize_t got = read_some(c, c->rbuf, RBUF_SIZE, false);
    if (got < 0)
        return (int)got;
    c->rlen = (size_t)got;
    return 0;
}

/* Copies what the read buffer holds, up to n bytes; returns the count. */
static size_t take_buffered(lm_chan *c, uint8_t *dst, size_t n)
{
    size_t avail = c->rlen - c->rpos;
    size_t take = avail < n ? avail : n;
    if (take)
        memcpy(dst, c->rbuf + c->rpos, take);
    c->rpos += take;
    return take;
}

int lm_chan_read_full(lm_chan *c, void *p, size_t n)
{
    uint8_t *dst = p;
    int r = sticky(c);
    if (r)
        return r;

    size_t take = take_buffered(c, dst, n);
    dst += take;
    n -= take;

    while (n > 0) {
        if (n >= DIRECT_READ_MIN) {
            /* Straight into the destination (guest memory), no copy. */
            ssize_t got = read_some(c, dst, n, true);
            if (got < 0)
                return (int)got;
            dst += got;
            n -= (size_t)got;
        } else {
            if ((r = refill(c)) < 0)
                return r;
            take = c->rlen < n ? c->rlen : n;
            memcpy(dst, c->rbuf, take);
            c->rpos = take;
            dst += take;
            n -= take;
        }
    }
    return 0;
}

int lm_chan_read_exact(lm_chan *c, void *p, size_t n)
{
    uint8_t *dst = p;
    int r = sticky(c);
    if (r)
        return r;
    size_t take = take_buffered(c, dst, n);
    dst += take;
    n -= take;
    while (n > 0) {
        ssize_t got = read_some(c, dst, n, true);
        if (got < 0)
            return (int)got;
        dst += got;
        n -= (size_t)got;
    }
    return 0;
}

int lm_chan_skip(lm_chan *c, size_t n)
{
    int r = sticky(c);
    if (r)
        return r;
    for (;;) {
        size_t avail = c->rlen - c->rpos;
        size_t take = avail < n ? avail : n;
        c->rpos += take;
        n -= take;
        if (n == 0)
            return 0;
        if ((r = refill(c)) < 0)
            return r;
    }
}

int64_t lm_chan_read_offset(lm_chan *c)
{
    off_t pos = lseek(c->fd, 0, SEEK_CUR);
    return pos < 0 ? -errno : (int64_t)pos - (int64_t)(c->rlen - c->rpos);
}

int lm_chan_seek(lm_chan *c, uint64_t offset)
{
    int r = sticky(c);
    if (r)
        return r;
    if (lseek(c->fd, (off_t)offset, SEEK_SET) < 0)
        return set_error_fmt(c, -errno, "%s: seek to %llu: %s", c->name, (unsigned long long)offset,
                             strerror(errno));
    c->rpos = c->rlen = 0;
    return 0;
}

int lm_chan_wait_readable(lm_chan *c, int timeout_ms)
{
    int r = sticky(c);
    if (r)
        return r;
    if (c->rpos < c->rlen)
        return 1;
    if (c->tls && (c->tin_pos < c->tin_len || lm_tls_pending(c->tls)))
        return 1;

    uint64_t deadline = timeout_ms >= 0 ? mono_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
    for (;;) {
        int wait = -1;
        if (timeout_ms >= 0) {
            uint64_t now = mono_ns();
            wait = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int n = poll(&pfd, 1, wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            return set_error_fmt(c, -e, "%s: poll: %s", c->name, strerror(e));
        }
        if ((r = sticky(c)))
            return r;
        /* POLLHUP/POLLERR count as readable: the read reports what it is. */
        return n > 0 ? 1 : 0;
    }
}

/* ------------------------------------------------------------------- TLS */

#define TLS_BUF (256u << 10)

/* The session's transport, reader side: ciphertext from tin, refilled by
 * one raw read of up to 256 KiB (a record is read in one piece, not as a
 * header and a body). */
static ssize_t tls_pull(void *ctx, void *p, size_t n)
{
    lm_chan *c = ctx;
    if (c->tin_pos == c->tin_len) {
        ssize_t got = raw_read_some(c, c->tin, TLS_BUF, false);
        if (got < 0)
            return -1; /* the sticky error says why */
        c->tin_pos = 0;
        c->tin_len = (size_t)got;
    }
    size_t take = c->tin_len - c->tin_pos < n ? c->tin_len - c->tin_pos : n;
    memcpy(p, c->tin + c->tin_pos, take);
    c->tin_pos += take;
    return (ssize_t)take;
}

static int tls_flush_out(lm_chan *c)
{
    if (!c->tout_len)
        return 0;
    struct iovec v = {c->tout, c->tout_len};
    c->tout_len = 0;
    return raw_send_all(c, &v, 1);
}

/* Writer side: records gather in tout and go out in one syscall when it
 * is full or the send is over (tls_send_all). */
static ssize_t tls_push(void *ctx, const struct iovec *iov, int cnt)
{
    lm_chan *c = ctx;
    ssize_t total = 0;
    for (int i = 0; i < cnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        while (n) {
            if (c->tout_len == TLS_BUF && tls_flush_out(c) < 0)
                return -1;
            size_t k = TLS_BUF - c->tout_len < n ? TLS_BUF - c->tout_len : n;
            memcpy(c->tout + c->tout_len, p, k);
            c->tout_len += k;
            p += k;
            n -= k;
            total += (ssize_t)k;
        }
    }
    return total;
}

static int tls_error(lm_chan *c, ssize_t code, const char *op)
{
    int r = sticky(c);
    if (r)
        return r; /* the transport's own error (EOF, timeout, shutdown) */
    char why[200];
    lm_tls_describe(c->tls, code, why, sizeof why);
    return set_error_fmt(c, -EPROTO, "%s: %s: %s", c->name, op, why);
}

static int tls_send(lm_chan *c, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = lm_tls_send(c->tls, p, n);
        if (k <= 0)
            return tls_error(c, k, "write");
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Full records: a piece of a record's size or more is encrypted from
 * where it is; small pieces (headers) are staged into one record first. */
static int tls_send_all(lm_chan *c, struct iovec *iov, int cnt)
{
    size_t rec = lm_tls_record_max(c->tls), sl = 0;
    if (rec > TLS_BUF)
        rec = TLS_BUF;
    int r = 0;
    for (int i = 0; i < cnt && !r; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left && !r) {
            if (sl == 0 && left >= rec) {
                size_t k = left - left % rec;
                r = tls_send(c, p, k);
                p += k;
                left -= k;
                continue;
            }
            size_t k = rec - sl < left ? rec - sl : left;
            memcpy(c->tstage + sl, p, k);
            sl += k;
            p += k;
            left -= k;
            if (sl == rec) {
                r = tls_send(c, c->tstage, sl);
                sl = 0;
            }
        }
    }
    if (!r && sl)
        r = tls_send(c, c->tstage, sl);
    if (!r)
        r = tls_flush_out(c);
    c->tout_len = 0;
    return r ? r : sticky(c);
}

static ssize_t tls_read_some(lm_chan *c, void *p, size_t n)
{
    ssize_t got = lm_tls_recv(c->tls, p, n);
    if (got > 0) {
        return got;
    }
    if (got == 0)
        return set_error_fmt(c, -EPIPE, "%s: peer closed the connection", c->name);
    return tls_error(c, got, "read");
}

int lm_chan_set_tls(lm_chan *c, lm_tls *t)
{
    if (!(c->tout = malloc(TLS_BUF)) || !(c->tin = malloc(TLS_BUF)) ||
        !(c->tstage = malloc(TLS_BUF))) {
        lm_tls_free(t);
        return set_error_fmt(c, -ENOMEM, "%s: out of memory", c->name);
    }
    c->tls = t;
    lm_tls_set_transport(t, c, tls_pull, tls_push);
    return 0;
}
