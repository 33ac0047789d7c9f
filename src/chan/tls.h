/*
 * tls.h - TLS 1.3 (GnuTLS) for migration channels: credentials (QEMU's
 * tls-creds-x509 and tls-creds-psk objects), the authz-list that tls-authz
 * names, and sessions.  The kernel has no kTLS here, so records are
 * encrypted in user space: a session is handshaken on its own (blocking
 * with a deadline and a cancel descriptor, or one non-blocking step at a
 * time for the acceptor's poll loop), then attached to a channel
 * (lm_chan_set_tls), whose raw syscalls carry the records.
 *
 * Threads: credentials and authz lists are immutable after creation and
 * reference counted (any thread).  A session belongs to one thread while it
 * handshakes; attached, GnuTLS lets one thread send while another receives
 * (the main channel: migration thread and return-path thread).
 */
#ifndef LM_CHAN_TLS_H
#define LM_CHAN_TLS_H

#include "livemig.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct lm_tls_creds lm_tls_creds;
typedef struct lm_authz lm_authz;
typedef struct lm_tls lm_tls;

/* tls-creds-x509: dir holds ca-cert.pem and server-cert.pem/server-key.pem
 * (server) or client-cert.pem/client-key.pem (client; optional when the
 * server does not verify peers).  Loaded now: a missing or bad file is
 * named here, not at migration time. */
int lm_tls_creds_x509_new(const char *dir, bool server, bool verify_peer, lm_tls_creds **out,
                          lm_error *err);
/* tls-creds-psk: dir holds keys.psk ("username:hexkey" lines); a client
 * uses username's key (default "qemu", as QEMU). */
int lm_tls_creds_psk_new(const char *dir, bool server, const char *username, lm_tls_creds **out,
                         lm_error *err);
lm_tls_creds *lm_tls_creds_ref(lm_tls_creds *c);
void lm_tls_creds_unref(lm_tls_creds *c);
bool lm_tls_creds_is_server(const lm_tls_creds *c);
/* A client that checks the server's certificate against a name. */
bool lm_tls_creds_needs_hostname(const lm_tls_creds *c);

/* authz-list: rules tried in order, the first whose match fits the
 * client's distinguished name decides; none: the list's policy. */
typedef struct lm_authz_rule {
    const char *match;
    bool allow;
    bool glob; /* format glob (fnmatch) rather than exact */
} lm_authz_rule;
int lm_authz_new(bool allow_default, const lm_authz_rule *rules, unsigned n, lm_authz **out,
                 lm_error *err);
lm_authz *lm_authz_ref(lm_authz *a);
void lm_authz_unref(lm_authz *a);
bool lm_authz_allows(const lm_authz *a, const char *identity);

/* A session on fd (not owned).  Client: hostname is the name the server's
 * certificate must carry (NULL/"" with x509 and verify-peer: refused).
 * Server: authz (may be NULL) must allow the client's certificate DN (x509)
 * or PSK username. */
int lm_tls_new(lm_tls_creds *cr, int fd, const char *hostname, lm_authz *authz, lm_tls **out,
               lm_error *err);
void lm_tls_free(lm_tls *t);

/* One non-blocking handshake step: 0 done (and authorised), 1 more to do
 * (poll the fd for lm_tls_events()), < 0 failed with the cause in err:
 * -ENOPROTOOPT (server) when the peer's first byte starts no TLS record
 * (a source without TLS: its plaintext HELLO is still unread). */
int lm_tls_handshake_step(lm_tls *t, lm_error *err);
short lm_tls_events(const lm_tls *t);
/* The whole handshake, at most timeout_ms, abandoned with -ECANCELED when
 * cancel_fd (-1: none) is readable.  what names the channel in errors. */
int lm_tls_handshake(lm_tls *t, const char *what, int timeout_ms, int cancel_fd, lm_error *err);
/* After the handshake, before attaching: a non-blocking read of
 * application data (the acceptor reads the HELLO this way): bytes, 0 none
 * yet, < 0 error or EOF (err says which). */
ssize_t lm_tls_recv_nb(lm_tls *t, void *p, size_t n, lm_error *err);
/* The server refusing a client (tls-authz): a fatal "access denied"
 * alert, sent without blocking, before the connection is closed. */
void lm_tls_refuse(lm_tls *t);

/* ---- attached to a channel (chan.c) ----
 * The transport: pull reads up to n bytes (> 0, or -1: EOF or error, the
 * channel's sticky error says which), push writes all of iov. */
typedef ssize_t (*lm_tls_pull_fn)(void *ctx, void *p, size_t n);
typedef ssize_t (*lm_tls_push_fn)(void *ctx, const struct iovec *iov, int cnt);
void lm_tls_set_transport(lm_tls *t, void *ctx, lm_tls_pull_fn pull, lm_tls_push_fn push);
/* Like read(2)/write(2) of plaintext: bytes (> 0), 0 for the peer's
 * close_notify, < 0 a GnuTLS error code for lm_tls_describe. */
ssize_t lm_tls_recv(lm_tls *t, void *p, size_t n);
ssize_t lm_tls_send(lm_tls *t, const void *p, size_t n);
/* Decrypted bytes waiting in the session (readable without I/O). */
size_t lm_tls_pending(lm_tls *t);
/* A GnuTLS error code as text, with the alert a peer sent. */
void lm_tls_describe(lm_tls *t, ssize_t code, char *out, size_t cap);
/* The largest plaintext of one record (what a send should bring). */
size_t lm_tls_record_max(lm_tls *t);

/* A first byte that starts a TLS handshake record. */
#define LM_TLS_HANDSHAKE_BYTE 0x16

#endif /* LM_CHAN_TLS_H */
