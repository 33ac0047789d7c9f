/*
 * tls.c - TLS 1.3 sessions, credentials and authz lists over GnuTLS
 * (tls.h).  Why GnuTLS (docs/architecture.md, Decisions): one session may
 * be sent on by one thread while another receives, which the main channel
 * needs (migration thread writes, return-path thread reads); QEMU uses it
 * too, so its credential directories work unchanged.
 *
 * Transport: while handshaking, the session reads and writes the socket
 * itself, never blocking (MSG_DONTWAIT), so the acceptor can run many
 * handshakes in one poll loop and a blocking handshake can poll the cancel
 * descriptor beside the socket.  Attached to a channel, the channel's
 * pull/push carry the records (its timeouts, shutdown and io slices hold).
 */
#include "chan/tls.h"

#include "util/clock.h"

#include <errno.h>
#include <fnmatch.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* TLS 1.3 only; AES-128-GCM first (AES-NI makes it the cheapest). */
#define PRIO_X509                                                                                  \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
#define PRIO_PSK PRIO_X509 ":-KX-ALL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct lm_tls_creds {
    _Atomic int refs;
    bool server, psk, verify_peer;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_srv;
    gnutls_psk_client_credentials_t psk_cli;
    char dir[512];
};

struct lm_authz {
    _Atomic int refs;
    bool allow_default;
    unsigned n;
    lm_authz_rule *rules; /* match strings owned */
};

struct lm_tls {
    gnutls_session_t s;
    lm_tls_creds *cr;
    lm_authz *authz;
    int fd;
    bool server, peeked, done;
    char host[256];
    void *ctx;
    lm_tls_pull_fn pull;
    lm_tls_push_fn push;
};

static int gnutls_ready(lm_error *err)
{
    /* gnutls_global_init is reference counted and thread-safe (>= 3.3). */
    static _Atomic int done;
    if (atomic_load(&done))
        return 0;
    int r = gnutls_global_init();
    if (r < 0)
        return lm_error_set(err, -EIO, "TLS: cannot initialise GnuTLS: %s", gnutls_strerror(r));
    atomic_store(&done, 1);
    return 0;
}

/* ------------------------------------------------------------ credentials */

static bool readable(const char *path)
{
    return access(path, R_OK) == 0;
}

/* The part both kinds share: the library ready, dir given, a credentials
 * object with one reference for the endpoint and dir. */
static int creds_new(const char *kind, const char *dir, bool server, lm_tls_creds **out,
                     lm_error *err)
{
    *out = NULL;
    int r = gnutls_ready(err);
    if (r < 0)
        return r;
    if (!dir || !*dir)
        return lm_error_set(err, -EINVAL, "%s: 'dir' is required", kind);
    lm_tls_creds *c = calloc(1, sizeof *c);
    if (!c)
        return lm_error_set(err, -ENOMEM, "out of memory");
    atomic_init(&c->refs, 1);
    c->server = server;
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    *out = c;
    return 0;
}

int lm_tls_creds_x509_new(const char *dir, bool server, bool verify_peer, lm_tls_creds **out,
                          lm_error *err)
{
    *out = NULL;
    lm_tls_creds *c;
    int r = creds_new("tls-creds-x509", dir, server, &c, err);
    if (r < 0)
        return r;
    c->verify_peer = verify_peer;
    char ca[600], cert[600], key[600];
    snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir);
    snprintf(cert, sizeof cert, "%s/%s-cert.pem", dir, server ? "server" : "client");
    snprintf(key, sizeof key, "%s/%s-key.pem", dir, server ? "server" : "client");
    if ((r = gnutls_certificate_allocate_credentials(&c->x509)) < 0) {
        r = lm_error_set(err, -ENOMEM, "tls-creds-x509: %s", gnutls_strerror(r));
        goto fail;
    }
    if (readable(ca) || verify_peer || !server) {
        r = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (r <= 0) {
            r = lm_error_set(err, -EINVAL, "tls-creds-x509: cannot load CA certificate %s: %s", ca,
                             r < 0 ? gnutls_strerror(r) : "no certificate in it");
            goto fail;
        }
    }
    if (server || readable(cert) || readable(key)) {
        r = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            r = lm_error_set(err, -EINVAL, "tls-creds-x509: cannot load %s / %s: %s", cert, key,
                             gnutls_strerror(r));
            goto fail;
        }
    }
    *out = c;
    return 0;
fail:
    lm_tls_creds_unref(c);
    return r;
}

/* The hex key of username in a keys.psk file ("user:hexkey" lines). */
static int psk_lookup(const char *path, const char *user, char *hex, size_t cap, lm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return lm_error_set(err, -errno, "tls-creds-psk: cannot open %s: %s", path,
                            strerror(errno));
    char line[1024];
    int r = lm_error_set(err, -ENOENT, "tls-creds-psk: no key for username '%s' in %s", user, path);
    size_t ul = strlen(user);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, user, ul) == 0 && line[ul] == ':' && strlen(line + ul + 1) < cap) {
            snprintf(hex, cap, "%s", line + ul + 1);
            lm_error_clear(err);
            r = 0;
            break;
        }
    }
    fclose(f);
    return r;
}

int lm_tls_creds_psk_new(const char *dir, bool server, const char *username, lm_tls_creds **out,
                         lm_error *err)
{
    *out = NULL;
    lm_tls_creds *c;
    int r = creds_new("tls-creds-psk", dir, server, &c, err);
    if (r < 0)
        return r;
    c->psk = true;
    char path[600];
    snprintf(path, sizeof path, "%s/keys.psk", dir);
    if (server) {
        if (!readable(path)) {
            r = lm_error_set(err, -ENOENT, "tls-creds-psk: cannot read %s", path);
            goto fail;
        }
        if ((r = gnutls_psk_allocate_server_credentials(&c->psk_srv)) < 0 ||
            (r = gnutls_psk_set_server_credentials_file(c->psk_srv, path)) < 0) {
            r = lm_error_set(err, -EINVAL, "tls-creds-psk: %s: %s", path, gnutls_strerror(r));
            goto fail;
        }
    } else {
        const char *user = username && *username ? username : "qemu";
        char hex[512];
        if ((r = psk_lookup(path, user, hex, sizeof hex, err)) < 0)
            goto fail;
        gnutls_datum_t key = {(unsigned char *)hex, (unsigned)strlen(hex)};
        if ((r = gnutls_psk_allocate_client_credentials(&c->psk_cli)) < 0 ||
            (r = gnutls_psk_set_client_credentials(c->psk_cli, user, &key, GNUTLS_PSK_KEY_HEX)) <
                0) {
            r = lm_error_set(err, -EINVAL, "tls-creds-psk: key of '%s' in %s: %s", user, path,
                             gnutls_strerror(r));
            goto fail;
        }
    }
    *out = c;
    return 0;
fail:
    lm_tls_creds_unref(c);
    return r;
}

lm_tls_creds *lm_tls_creds_ref(lm_tls_creds *c)
{
    if (c)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

void lm_tls_creds_unref(lm_tls_creds *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    if (c->psk_srv)
        gnutls_psk_free_server_credentials(c->psk_srv);
    if (c->psk_cli)
        gnutls_psk_free_client_credentials(c->psk_cli);
    free(c);
}

bool lm_tls_creds_is_server(const lm_tls_creds *c)
{
    return c->server;
}

bool lm_tls_creds_needs_hostname(const lm_tls_creds *c)
{
    return !c->server && !c->psk && c->verify_peer;
}

/* ------------------------------------------------------------------ authz */

int lm_authz_new(bool allow_default, const lm_authz_rule *rules, unsigned n, lm_authz **out,
                 lm_error *err)
{
    lm_authz *a = calloc(1, sizeof *a);
    if (!a || (n && !(a->rules = calloc(n, sizeof *a->rules)))) {
        free(a);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    atomic_init(&a->refs, 1);
    a->allow_default = allow_default;
    for (unsigned i = 0; i < n; i++) {
        a->rules[i] = rules[i];
        a->rules[i].match = strdup(rules[i].match ? rules[i].match : "");
        a->n = i + 1;
        if (!a->rules[i].match) {
            lm_authz_unref(a);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    *out = a;
    return 0;
}

lm_authz *lm_authz_ref(lm_authz *a)
{
    if (a)
        atomic_fetch_add(&a->refs, 1);
    return a;
}

void lm_authz_unref(lm_authz *a)
{
    if (!a || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    for (unsigned i = 0; i < a->n; i++)
        free((char *)a->rules[i].match);
    free(a->rules);
    free(a);
}

bool lm_authz_allows(const lm_authz *a, const char *id)
{
    for (unsigned i = 0; i < a->n; i++) {
        const lm_authz_rule *r = &a->rules[i];
        if (r->glob ? fnmatch(r->match, id, 0) == 0 : strcmp(r->match, id) == 0)
            return r->allow;
    }
    return a->allow_default;
}

/* ---------------------------------------------------------------- session */

static ssize_t hs_pull(gnutls_transport_ptr_t p, void *buf, size_t n)
{
    lm_tls *t = p;
    ssize_t r = recv(t->fd, buf, n, MSG_DONTWAIT);
    if (r < 0 && errno == ENOTSOCK)
        r = read(t->fd, buf, n);
    if (r < 0)
        gnutls_transport_set_errno(t->s, errno);
    return r;
}

static ssize_t hs_push(gnutls_transport_ptr_t p, const giovec_t *iov, int cnt)
{
    lm_tls *t = p;
    struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt};
    ssize_t r = sendmsg(t->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0 && errno == ENOTSOCK)
        r = writev(t->fd, (const struct iovec *)iov, cnt);
    if (r < 0)
        gnutls_transport_set_errno(t->s, errno);
    return r;
}

static ssize_t ch_pull(gnutls_transport_ptr_t p, void *buf, size_t n)
{
    lm_tls *t = p;
    ssize_t r = t->pull(t->ctx, buf, n);
    if (r < 0) {
        gnutls_transport_set_errno(t->s, EIO);
        return -1;
    }
    return r;
}

static ssize_t ch_push(gnutls_transport_ptr_t p, const giovec_t *iov, int cnt)
{
    lm_tls *t = p;
    ssize_t r = t->push(t->ctx, (const struct iovec *)iov, cnt);
    if (r < 0) {
        gnutls_transport_set_errno(t->s, EIO);
        return -1;
    }
    return r;
}

int lm_tls_new(lm_tls_creds *cr, int fd, const char *hostname, lm_authz *authz, lm_tls **out,
               lm_error *err)
{
    *out = NULL;
    if (!cr->server && !cr->psk && cr->verify_peer && (!hostname || !*hostname))
        return lm_error_set(err, -EINVAL,
                            "TLS: no name to check the destination's certificate against: set "
                            "tls-hostname (needed with unix: and fd: URIs)");
    lm_tls *t = calloc(1, sizeof *t);
    if (!t)
        return lm_error_set(err, -ENOMEM, "out of memory");
    t->cr = lm_tls_creds_ref(cr);
    t->authz = lm_authz_ref(authz);
    t->fd = fd;
    t->server = cr->server;
    snprintf(t->host, sizeof t->host, "%s", hostname ? hostname : "");
    int r = gnutls_init(&t->s, (cr->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS);
    const char *errpos = NULL;
    if (r == 0)
        r = gnutls_priority_set_direct(t->s, cr->psk ? PRIO_PSK : PRIO_X509, &errpos);
    if (r == 0 && cr->psk)
        r = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK,
                                   cr->server ? (void *)cr->psk_srv : (void *)cr->psk_cli);
    else if (r == 0)
        r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, cr->x509);
    if (r == 0 && !cr->psk && cr->server && cr->verify_peer) {
        gnutls_certificate_server_set_request(t->s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(t->s, NULL, 0);
    }
    if (r == 0 && !cr->psk && !cr->server && cr->verify_peer)
        gnutls_session_set_verify_cert(t->s, t->host, 0);
    if (r == 0 && !cr->server && !cr->psk && *t->host)
        r = gnutls_server_name_set(t->s, GNUTLS_NAME_DNS, t->host, strlen(t->host));
    if (r < 0) {
        lm_error_set(err, -EIO, "TLS: session setup: %s", gnutls_strerror(r));
        lm_tls_free(t);
        return -EIO;
    }
    gnutls_transport_set_ptr(t->s, t);
    gnutls_transport_set_pull_function(t->s, hs_pull);
    gnutls_transport_set_vec_push_function(t->s, hs_push);
    *out = t;
    return 0;
}

void lm_tls_free(lm_tls *t)
{
    if (!t)
        return;
    if (t->s)
        gnutls_deinit(t->s);
    lm_tls_creds_unref(t->cr);
    lm_authz_unref(t->authz);
    free(t);
}

/* What went wrong in a handshake, in words that name the cause. */
static int handshake_error(lm_tls *t, int r, lm_error *err)
{
    const char *side = t->server ? "the source" : "the destination";
    /* The peer hears why too (best effort: the socket never blocks). */
    if (r != GNUTLS_E_FATAL_ALERT_RECEIVED && r != GNUTLS_E_PREMATURE_TERMINATION &&
        r != GNUTLS_E_PULL_ERROR && r != GNUTLS_E_PUSH_ERROR)
        gnutls_alert_send_appropriate(t->s, r);
    if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        unsigned st = gnutls_session_get_verify_cert_status(t->s);
        char why[256] = "";
        size_t k = 0;
#define WHY(flag, text)                                                                            \
    if ((st & (flag)) && k < sizeof why)                                                           \
        k += (size_t)snprintf(why + k, sizeof why - k, "%s%s", k ? "; " : "", text);
        WHY(GNUTLS_CERT_SIGNER_NOT_FOUND, "unknown CA (not signed by our ca-cert.pem)");
        WHY(GNUTLS_CERT_EXPIRED, "certificate expired");
        WHY(GNUTLS_CERT_NOT_ACTIVATED, "certificate not yet valid");
        WHY(GNUTLS_CERT_REVOKED, "certificate revoked");
        WHY(GNUTLS_CERT_INSECURE_ALGORITHM, "insecure signature algorithm");
        WHY(GNUTLS_CERT_SIGNATURE_FAILURE, "bad signature");
        if ((st & GNUTLS_CERT_UNEXPECTED_OWNER) && k < sizeof why)
            k += (size_t)snprintf(why + k, sizeof why - k,
                                  "%shostname mismatch (the certificate is not for '%s')",
                                  k ? "; " : "", t->host);
#undef WHY
        if (!k)
            snprintf(why, sizeof why, "status 0x%x", st);
        return lm_error_set(err, -EACCES, "TLS: %s's certificate was refused: %s", side, why);
    }
    if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        gnutls_alert_description_t a = gnutls_alert_get(t->s);
        const char *name = gnutls_alert_get_name(a);
        const char *hint = "";
        if (a == GNUTLS_A_UNKNOWN_CA || a == GNUTLS_A_BAD_CERTIFICATE)
            hint = ": it does not trust our certificate";
        else if (a == GNUTLS_A_CERTIFICATE_EXPIRED)
            hint = ": our certificate expired";
        else if (a == GNUTLS_A_ACCESS_DENIED)
            hint = ": not authorised by its tls-authz";
        else if (a == GNUTLS_A_CERTIFICATE_REQUIRED)
            hint = ": it wants a client certificate (client-cert.pem)";
        else if (t->cr->psk && (a == GNUTLS_A_DECRYPT_ERROR || a == GNUTLS_A_ILLEGAL_PARAMETER ||
                                a == GNUTLS_A_UNKNOWN_PSK_IDENTITY))
            hint = ": wrong PSK (keys.psk differs)";
        return lm_error_set(err, -EACCES, "TLS: %s refused the handshake (alert '%s')%s", side,
                            name ? name : "?", hint);
    }
    if (r == GNUTLS_E_PREMATURE_TERMINATION || r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PUSH_ERROR)
        return lm_error_set(err, -EPIPE,
                            "TLS: %s closed the connection during the handshake (does it have "
                            "tls-creds set?)",
                            side);
    /* TLS 1.3 PSK: a binder made with another key is an illegal parameter */
    if (t->cr->psk &&
        (r == GNUTLS_E_DECRYPTION_FAILED || r == GNUTLS_E_KEY_USAGE_VIOLATION ||
         r == GNUTLS_E_INSUFFICIENT_CREDENTIALS || r == GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER))
        return lm_error_set(err, -EACCES, "TLS: wrong PSK (%s's key differs): %s", side,
                            gnutls_strerror(r));
    if (r == GNUTLS_E_UNEXPECTED_PACKET_LENGTH || r == GNUTLS_E_UNSUPPORTED_VERSION_PACKET ||
        r == GNUTLS_E_UNEXPECTED_PACKET)
        return lm_error_set(err, -EPROTO, "TLS: %s did not start TLS (%s)", side,
                            gnutls_strerror(r));
    return lm_error_set(err, -EPROTO, "TLS handshake with %s failed: %s", side, gnutls_strerror(r));
}

/* Server, handshake done: the client's identity against tls-authz. */
static int authorise(lm_tls *t, lm_error *err)
{
    if (!t->server || !t->authz)
        return 0;
    char id[1024] = "";
    if (t->cr->psk) {
        const char *u = gnutls_psk_server_get_username(t->s);
        snprintf(id, sizeof id, "%s", u ? u : "");
    } else {
        unsigned n = 0;
        const gnutls_datum_t *certs = gnutls_certificate_get_peers(t->s, &n);
        gnutls_x509_crt_t crt;
        gnutls_datum_t dn = {0};
        if (n && gnutls_x509_crt_init(&crt) == 0) {
            if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
                gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
                snprintf(id, sizeof id, "%s", (const char *)dn.data);
                gnutls_free(dn.data);
            }
            gnutls_x509_crt_deinit(crt);
        }
        if (!*id) {
            lm_tls_refuse(t);
            return lm_error_set(err, -EACCES,
                                "TLS: tls-authz needs the client's certificate, and it sent none "
                                "(set verify-peer on)");
        }
    }
    if (lm_authz_allows(t->authz, id))
        return 0;
    lm_tls_refuse(t);
    return lm_error_set(err, -EACCES, "TLS: client '%s' is not authorised by tls-authz", id);
}

int lm_tls_handshake_step(lm_tls *t, lm_error *err)
{
    if (t->done)
        return 0;
    if (t->server && !t->peeked) {
        unsigned char b;
        ssize_t n = recv(t->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 1;
        if (n == 1 && b != LM_TLS_HANDSHAKE_BYTE)
            return lm_error_set(err, -ENOPROTOOPT,
                                "peer did not start TLS (it sent plaintext, a source without "
                                "tls-creds?)");
        t->peeked = true; /* EOF and errors: the handshake names them */
    }
    int r = gnutls_handshake(t->s);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return 1;
    if (r < 0 && !gnutls_error_is_fatal(r))
        return 1;
    if (r < 0)
        return handshake_error(t, r, err);
    if ((r = authorise(t, err)) < 0)
        return r;
    t->done = true;
    return 0;
}

short lm_tls_events(const lm_tls *t)
{
    if (!t->peeked && t->server)
        return POLLIN;
    return gnutls_record_get_direction(t->s) ? POLLOUT : POLLIN;
}

int lm_tls_handshake(lm_tls *t, const char *what, int timeout_ms, int cancel_fd, lm_error *err)
{
    uint64_t deadline = lm_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int r = lm_tls_handshake_step(t, err);
        if (r <= 0)
            return r < 0 ? lm_error_prefix(err, "%s", what) : 0;
        uint64_t now = lm_now_ns();
        if (now >= deadline)
            return lm_error_set(err, -ETIMEDOUT, "%s: TLS handshake not done within %d ms", what,
                                timeout_ms);
        struct pollfd p[2] = {{.fd = t->fd, .events = lm_tls_events(t)},
                              {.fd = cancel_fd, .events = POLLIN}};
        int n = poll(p, 2, (int)((deadline - now + 999999) / 1000000));
        if (n < 0 && errno != EINTR)
            return lm_error_set(err, -errno, "%s: TLS handshake: poll: %s", what, strerror(errno));
        if (n > 0 && cancel_fd >= 0 && p[1].revents)
            return lm_error_set(err, -ECANCELED, "migration cancelled");
    }
}

ssize_t lm_tls_recv_nb(lm_tls *t, void *p, size_t n, lm_error *err)
{
    ssize_t r = gnutls_record_recv(t->s, p, n);
    if (r > 0)
        return r;
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        return 0;
    if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION)
        return lm_error_set(err, -EPIPE, "the peer closed the connection");
    return lm_error_set(err, -EPROTO, "TLS: %s", gnutls_strerror((int)r));
}

void lm_tls_refuse(lm_tls *t)
{
    gnutls_alert_send(t->s, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
}

void lm_tls_set_transport(lm_tls *t, void *ctx, lm_tls_pull_fn pull, lm_tls_push_fn push)
{
    t->ctx = ctx;
    t->pull = pull;
    t->push = push;
    gnutls_transport_set_pull_function(t->s, ch_pull);
    gnutls_transport_set_vec_push_function(t->s, ch_push);
}

ssize_t lm_tls_recv(lm_tls *t, void *p, size_t n)
{
    for (;;) {
        ssize_t r = gnutls_record_recv(t->s, p, n);
        if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED)
            return r;
    }
}

ssize_t lm_tls_send(lm_tls *t, const void *p, size_t n)
{
    for (;;) {
        ssize_t r = gnutls_record_send(t->s, p, n);
        if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED)
            return r;
    }
}

size_t lm_tls_pending(lm_tls *t)
{
    return gnutls_record_check_pending(t->s);
}

size_t lm_tls_record_max(lm_tls *t)
{
    return gnutls_record_get_max_size(t->s);
}

void lm_tls_describe(lm_tls *t, ssize_t code, char *out, size_t cap)
{
    if (code == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        gnutls_alert_description_t a = gnutls_alert_get(t->s);
        const char *name = gnutls_alert_get_name(a);
        snprintf(out, cap, "the peer sent TLS alert '%s'%s", name ? name : "?",
                 a == GNUTLS_A_ACCESS_DENIED ? ": not authorised by its tls-authz" : "");
        return;
    }
    snprintf(out, cap, "TLS: %s", gnutls_strerror((int)code));
}
