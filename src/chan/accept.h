/*
 * accept.h - a listener's connections accepted concurrently, each held
 * until it has sent its greeting (the HELLO) or run out of time.  A
 * stranger that connects and says nothing costs one slot for a bounded
 * time; it never delays the connections that do speak (issue 12, defect 1).
 * With TLS (cfg.tls) each connection's handshake runs in the same poll
 * loop, one non-blocking step at a time, within the same deadline, and
 * the greeting is read inside TLS.
 *
 * Threads: an acceptor belongs to the one thread that calls it (the pool
 * of greeting slots it shares with every other acceptor of the process
 * has a lock of its own, accept.c).  Another
 * thread interrupts lm_acceptor_next() by making cancel_fd readable (an
 * eventfd written once) or by shutdown(2) of the listening socket.
 */
#ifndef LM_CHAN_ACCEPT_H
#define LM_CHAN_ACCEPT_H

#include "livemig.h"

#include <stddef.h>
#include <stdint.h>

/* The most a greeting may be (bytes). */
#define LM_ACCEPT_GREETING_MAX 64
/* Process-wide bound on connections greeting across every acceptor
 * (accept.c): each has LM_ACCEPT_OWN_SLOTS of its own (a source's main,
 * multifd and preempt channels fit), the rest of its max_pending comes
 * from one pool of LM_ACCEPT_POOL_SLOTS shared by the whole process. */
#define LM_ACCEPT_OWN_SLOTS 32
#define LM_ACCEPT_POOL_SLOTS 1024

struct lm_tls;
struct lm_tls_creds;
struct lm_authz;

typedef struct lm_acceptor_cfg {
    size_t greeting_len;     /* bytes every connection must send first, <= LM_ACCEPT_GREETING_MAX */
    int greeting_timeout_ms; /* each connection's time for it, from its accept */
    unsigned max_pending;    /* connections still greeting at once (>= 1): a new one
                              * closes the oldest (the one silent for longest) */
    /* TLS (NULL: none): every connection is a TLS server session with
     * these credentials, handshaken in the same poll loop within the
     * greeting's time, the client checked against authz (NULL: any); the
     * greeting is read inside TLS.  Referenced, not owned. */
    struct lm_tls_creds *tls;
    struct lm_authz *authz;
} lm_acceptor_cfg;

typedef struct lm_acceptor_stats {
    uint64_t accepted;  /* connections accepted (or added) */
    uint64_t timed_out; /* closed: no greeting within greeting_timeout_ms */
    uint64_t evicted;   /* closed: max_pending reached, a newer one came */
    uint64_t silent;    /* closed by the peer before its first byte */
} lm_acceptor_stats;

typedef struct lm_acceptor lm_acceptor;

/* lfd: a listening socket, not owned (-1: only connections added with
 * lm_acceptor_add); cancel_fd: -1 or a descriptor whose readability means
 * "stop" (not read here).  The acceptor never changes lfd's file status
 * flags (an fd: listener is shared with the host). */
int lm_acceptor_new(int lfd, int cancel_fd, const lm_acceptor_cfg *cfg, lm_acceptor **out,
                    lm_error *err);
/* Closes every connection still greeting. */
void lm_acceptor_free(lm_acceptor *a);
/* Adds an already connected fd (owned from here, on every path). */
int lm_acceptor_add(lm_acceptor *a, int fd, lm_error *err);

/* Waits until a connection has sent its whole greeting, or closed after
 * sending part of it, and hands it over: *fd_out (blocking, CLOEXEC,
 * lm_sock_tune'd when accepted here; the caller's), greeting in buf
 * (cfg.greeting_len bytes of room), *len the bytes received (less than
 * greeting_len only for a peer that closed or failed mid-way).  A peer that
 * closes before its first byte is dropped here (a port scan, not a peer).
 * Returns 0; -ETIMEDOUT when deadline_ns (monotonic, 0: none) passes, or,
 * without a listener, when the last connection's time ran out; -ECANCELED
 * when cancel_fd is readable or the listener was shut down; -EMFILE etc.
 * for an accept that fails with nothing to evict.  Only the last kind sets
 * err: the caller names timeouts and cancels in its own words. */
int lm_acceptor_next(lm_acceptor *a, uint64_t deadline_ns, int *fd_out, uint8_t *buf, size_t *len,
                     lm_error *err);

/* After lm_acceptor_next handed a connection over, what TLS made of it:
 * 0 with *tls the handshaken session (the caller's; NULL without TLS), 1
 * when TLS was wanted and the peer sent plaintext (its greeting was read
 * as such), < 0 when its handshake or authorisation failed (err says why;
 * len was 0, the fd is still the caller's to close). */
int lm_acceptor_take_tls(lm_acceptor *a, struct lm_tls **tls, lm_error *err);

/* Changes the pool's sizes (tests; acceptors created later get `own`);
 * and the pool slots taken now, by every acceptor of the process. */
void lm_acceptor_set_pool(unsigned own, unsigned max);
unsigned lm_acceptor_pool_used(void);

/* Connections greeting now, and the counters so far. */
unsigned lm_acceptor_pending(const lm_acceptor *a);
void lm_acceptor_get_stats(const lm_acceptor *a, lm_acceptor_stats *out);

#endif /* LM_CHAN_ACCEPT_H */
