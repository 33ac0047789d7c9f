/*
 * chan.h - transports (tcp, unix, fd URIs), buffered framed I/O with a
 * sticky first error, and the bandwidth window used for max-bandwidth.
 *
 * Threads: a channel has at most one writer thread and one reader thread at
 * a time (the main channel: migration thread writes, return-path thread
 * reads).  lm_chan_shutdown() and lm_chan_get_error() may be called from any
 * thread.  The sticky error is guarded by the channel's mutex; the buffers
 * belong to their single reader / writer and need no lock.
 */
#ifndef LM_CHAN_H
#define LM_CHAN_H

#include "livemig.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ------------------------------------------------------------------- URIs */

typedef enum lm_uri_kind {
    LM_URI_TCP,  /* tcp:HOST:PORT, HOST may be [v6addr]; PORT 0 = any (listen) */
    LM_URI_UNIX, /* unix:PATH (absolute or relative; <= 107 bytes) */
    LM_URI_FD,   /* fd:N, an already connected socket (or listening one for incoming) */
    LM_URI_FILE, /* file:PATH[,offset=N]: the stream starts at byte N of a file (file.c) */
} lm_uri_kind;

#define LM_URI_FILE_PATH_MAX 1024

typedef struct lm_uri {
    lm_uri_kind kind;
    char host[256];
    char port[8];
    char path[108];
    int fd;
    char file[LM_URI_FILE_PATH_MAX]; /* file: the path */
    uint64_t offset;                 /* file: where the stream starts */
} lm_uri;

/* Pure: parses and validates; errors name what was wrong, e.g.
 * "bad URI 'tcp:host': missing ':PORT'" or "unknown URI scheme 'http'". */
int lm_uri_parse(const char *s, lm_uri *out, lm_error *err);
/* Formats back to text (for socket-address), returns out. */
const char *lm_uri_format(const lm_uri *u, char *out, size_t cap);

/* file.c: parses the rest of a file: URI ("PATH[,offset=N]", N decimal or
 * 0x hex, QEMU's syntax) into u->file / u->offset. */
int lm_uri_parse_file(const char *uri, const char *rest, lm_uri *u, lm_error *err);
/* Source: opens (creates, mode 0600) u's file for the stream: truncated to
 * u->offset (the bytes before it are left untouched), positioned there.
 * Destination: opens it read-only, positioned at u->offset, and checks the
 * offset lies inside the file.  *fd_out is owned by the caller. */
int lm_file_open_out(const lm_uri *u, int *fd_out, lm_error *err);
int lm_file_open_in(const lm_uri *u, int *fd_out, lm_error *err);

/* Connects (blocking, bounded by timeout_ms) and tunes the socket (see
 * lm_sock_tune).  For fd: returns a dup of N.  *fd_out is owned by caller. */
int lm_uri_connect(const lm_uri *u, int timeout_ms, int *fd_out, lm_error *err);
/* The same, and cancellable: when cancel_fd (an eventfd or pipe; -1 for
 * none) becomes readable, the name lookup and the connect are abandoned at
 * once with -ECANCELED.  The lookup runs on a detached helper thread
 * ("lm-resolve"), which frees its own result when abandoned, because
 * getaddrinfo(3) cannot be interrupted. */
int lm_uri_connect_cancellable(const lm_uri *u, int timeout_ms, int cancel_fd, int *fd_out,
                               lm_error *err);
/* resolve.c: getaddrinfo(host, port) abandoned at deadline_ms (monotonic
 * ms, -1 none) or when cancel_fd is readable.  Returns 0 (*res is the
 * caller's, freeaddrinfo), a getaddrinfo error > 0 (*gai_errno for
 * EAI_SYSTEM), or -ECANCELED / -ETIMEDOUT / -errno. */
struct addrinfo;
int lm_resolve(const char *host, const char *port, int64_t deadline_ms, int cancel_fd,
               struct addrinfo **res, int *gai_errno);
/* Listens (SO_REUSEADDR; unix: removes a stale socket file first).  actual
 * gets the bound address as a URI text, with the real port for port 0. */
int lm_uri_listen(const lm_uri *u, int *fd_out, char *actual, size_t cap, lm_error *err);
/* The same; a unix: socket file is created with at most unix_mode's
 * permission bits (-1: as the umask makes it), never looser in between. */
int lm_uri_listen_mode(const lm_uri *u, int unix_mode, int *fd_out, char *actual, size_t cap,
                       lm_error *err);
/* accept4 with CLOEXEC, then lm_sock_tune.  Blocks until a peer comes or
 * another thread calls shutdown(lfd, SHUT_RDWR) (then returns -ECANCELED);
 * close() does not wake it: shut down, join, then close. */
int lm_sock_accept(int lfd, int *fd_out, lm_error *err);
/* TCP: TCP_NODELAY, SO_KEEPALIVE (idle 5 s, interval 1 s, 5 probes),
 * TCP_USER_TIMEOUT 10 s, large socket buffers.  Unix: buffers only. */
int lm_sock_tune(int fd, lm_error *err);

/* --------------------------------------------------------------- channels */

typedef struct lm_chan lm_chan;

/* Takes ownership of fd.  name is used in error messages ("main channel"). */
int lm_chan_new(int fd, const char *name, lm_chan **out, lm_error *err);
/* Closes the fd.  No other thread may still use the channel. */
void lm_chan_free(lm_chan *c);
/* From here on the channel carries TLS records of t (handshaken, see
 * tls.h; owned from here, on every path), through its own raw syscalls:
 * timeouts, lm_chan_shutdown, io slices and lm_chan_queued keep working,
 * the counters count bytes on the wire.  Before the first read or write. */
struct lm_tls;
int lm_chan_set_tls(lm_chan *c, struct lm_tls *t);

/* Write side.  Small writes are buffered (64 KiB); lm_chan_write_ref()
 * sends the buffered bytes, hdr and the caller's data in one writev without
 * copying data (page data straight from guest memory).  All return 0 or the
 * sticky error (negative); after the first error every call fails at once. */
int lm_chan_put(lm_chan *c, const void *p, size_t n);
int lm_chan_write_ref(lm_chan *c, const void *hdr, size_t hlen, const void *data, size_t dlen);
/* Like write_ref with several data pieces (iov[0..n), n <= 64). */
int lm_chan_writev_ref(lm_chan *c, const void *hdr, size_t hlen, const struct iovec *iov, int n);
int lm_chan_flush(lm_chan *c);

/* Read side.  Reads exactly n bytes: from the read buffer first, then,
 * for large reads, straight into p (guest memory) with no copy.  EOF in the
 * middle is an error ("main channel: peer closed the connection"). */
int lm_chan_read_full(lm_chan *c, void *p, size_t n);
/* Like lm_chan_read_full, but never reads ahead into the read buffer:
 * for the headers in front of page data, so that the data that follows
 * lands in guest memory with no copy (a read-ahead would take up to 256 KiB
 * of it through the buffer: a second copy of a quarter of every 1 MiB run,
 * measured as 17 % of a multifd receiver's time). */
int lm_chan_read_exact(lm_chan *c, void *p, size_t n);
/* Discards n bytes. */
int lm_chan_skip(lm_chan *c, size_t n);
/* Files only (file: URIs, mapped-ram), reader side: the offset in the
 * file of the next byte a read returns (-errno if the fd cannot seek), and
 * a jump of the reader to offset (the read buffer is dropped). */
int64_t lm_chan_read_offset(lm_chan *c);
int lm_chan_seek(lm_chan *c, uint64_t offset);
/* Waits up to timeout_ms for readable data (buffered or on the socket);
 * returns 1 readable, 0 timeout, < 0 error. */
int lm_chan_wait_readable(lm_chan *c, int timeout_ms);

/* Any thread: records "<name>: shut down" as the error unless one is set,
 * and shutdown(2)s the socket so blocked reads/writes return at once. */
void lm_chan_shutdown(lm_chan *c, const char *why);
/* Any thread: sets the sticky error (first wins) without shutting down. */
void lm_chan_set_error(lm_chan *c, int code, const char *msg);
/* Any thread: copies the sticky error into err (if any); returns its code
 * (0 when none). */
int lm_chan_get_error(lm_chan *c, lm_error *err);

uint64_t lm_chan_bytes_written(const lm_chan *c); /* relaxed atomic reads */
/* Bytes written but not yet delivered: what the kernel still holds for
 * the socket (SIOCOUTQ: TCP's unsent and unacknowledged bytes, a unix
 * socket's bytes the peer has not read yet), 0 for a pipe or file.  On a
 * shaped or slow link this is tens of milliseconds of data that a pause
 * must still drain.  Any thread; a snapshot; NULL (a multifd channel
 * writing a file with pwritev) has none. */
uint64_t lm_chan_queued(const lm_chan *c);
/* Caps the bytes one read or write syscall moves (0: no cap; any thread).
 * This kernel kind runs without kernel preemption: a 1 MiB copy in one
 * syscall keeps the CPU from a woken thread for its whole length, so
 * postcopy's bulk channel moves at most 128 KiB per call while urgent
 * threads share the CPUs. */
void lm_chan_set_io_slice(lm_chan *c, size_t bytes);
uint64_t lm_chan_bytes_read(const lm_chan *c);
int lm_chan_fd(const lm_chan *c);
/* Nanoseconds the writer spent inside write syscalls (for wire bandwidth). */
uint64_t lm_chan_write_busy_ns(const lm_chan *c);

/* ------------------------------------------------------------- rate limit */

/* max-bandwidth in 100 ms windows (QEMU's BUFFER_DELAY).  Not thread-safe:
 * owned by the migration thread; a new limit is passed in by it. */
#define LM_RATE_WINDOW_NS 100000000ull

typedef struct lm_ratelimit {
    uint64_t bytes_per_sec; /* 0 = unlimited */
    uint64_t window_start_ns;
    uint64_t window_bytes;
} lm_ratelimit;

void lm_rl_init(lm_ratelimit *rl, uint64_t bytes_per_sec, uint64_t now_ns);
/* Changing the limit takes effect in the current window. */
void lm_rl_set(lm_ratelimit *rl, uint64_t bytes_per_sec);
void lm_rl_account(lm_ratelimit *rl, uint64_t bytes);
/* Starts a new window when the current one is over. */
void lm_rl_tick(lm_ratelimit *rl, uint64_t now_ns);
bool lm_rl_exceeded(const lm_ratelimit *rl);
/* Bytes still allowed in this window (UINT64_MAX when unlimited). */
uint64_t lm_rl_budget(const lm_ratelimit *rl);
/* ns until the current window ends. */
uint64_t lm_rl_wait_ns(const lm_ratelimit *rl, uint64_t now_ns);

#endif /* LM_CHAN_H */
