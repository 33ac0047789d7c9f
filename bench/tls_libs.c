/* tls_libs.c - the measurement behind choosing GnuTLS (docs/architecture.md,
 * Decisions): one TLS 1.3 AES-128-GCM stream over loopback TCP, 1 MiB
 * writes, sender in one process and receiver in another, GnuTLS against
 * OpenSSL.  Not built by CMake (it needs libssl-dev):
 *   gcc -O2 -o /tmp/tls_libs bench/tls_libs.c $(pkg-config --cflags --libs gnutls openssl)
 *   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
 *       -keyout /tmp/k.pem -out /tmp/c.pem -subj /CN=localhost -days 2
 *   /tmp/tls_libs gnutls /tmp/c.pem /tmp/k.pem 2048; /tmp/tls_libs openssl /tmp/c.pem /tmp/k.pem
 * 2048 usage: tls_libs gnutls|openssl CERT KEY MiB */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
#define BUF (1 << 20)
int main(int argc, char **argv)
{
    int gn = !strcmp(argv[1], "gnutls");
    const char *cert = argv[2], *key = argv[3];
    long mib = atol(argv[4]);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    bind(l, (void *)&a, sizeof a);
    listen(l, 1);
    socklen_t al = sizeof a;
    getsockname(l, (void *)&a, &al);
    char *buf = malloc(BUF);
    memset(buf, 0x5a, BUF);
    pid_t p = fork();
    if (p == 0) { /* server: receives */
        int s = accept(l, 0, 0);
        long got = 0;
        if (gn) {
            gnutls_certificate_credentials_t c;
            gnutls_certificate_allocate_credentials(&c);
            gnutls_certificate_set_x509_key_file(c, cert, key, GNUTLS_X509_FMT_PEM);
            gnutls_session_t ss;
            gnutls_init(&ss, GNUTLS_SERVER);
            gnutls_priority_set_direct(ss, "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
                                       0);
            gnutls_credentials_set(ss, GNUTLS_CRD_CERTIFICATE, c);
            gnutls_transport_set_int(ss, s);
            if (gnutls_handshake(ss) < 0)
                return 1;
            for (;;) {
                ssize_t n = gnutls_record_recv(ss, buf, BUF);
                if (n <= 0)
                    break;
                got += n;
            }
        } else {
            SSL_CTX *x = SSL_CTX_new(TLS_server_method());
            SSL_CTX_set_min_proto_version(x, TLS1_3_VERSION);
            SSL_CTX_set_ciphersuites(x, "TLS_AES_128_GCM_SHA256");
            SSL_CTX_use_certificate_file(x, cert, SSL_FILETYPE_PEM);
            SSL_CTX_use_PrivateKey_file(x, key, SSL_FILETYPE_PEM);
            SSL *ss = SSL_new(x);
            SSL_set_fd(ss, s);
            if (SSL_accept(ss) <= 0)
                return 1;
            for (;;) {
                int n = SSL_read(ss, buf, BUF);
                if (n <= 0)
                    break;
                got += n;
            }
        }
        _exit(got == mib * BUF ? 0 : 2);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    connect(s, (void *)&a, sizeof a);
    double t0 = 0, t1;
    if (gn) {
        gnutls_certificate_credentials_t c;
        gnutls_certificate_allocate_credentials(&c);
        gnutls_session_t ss;
        gnutls_init(&ss, GNUTLS_CLIENT);
        gnutls_priority_set_direct(ss, "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM", 0);
        gnutls_credentials_set(ss, GNUTLS_CRD_CERTIFICATE, c);
        gnutls_transport_set_int(ss, s);
        if (gnutls_handshake(ss) < 0)
            return 1;
        t0 = now();
        for (long i = 0; i < mib; i++) {
            size_t off = 0;
            while (off < BUF) {
                ssize_t n = gnutls_record_send(ss, buf + off, BUF - off);
                if (n < 0)
                    return 1;
                off += n;
            }
        }
        gnutls_bye(ss, GNUTLS_SHUT_WR);
    } else {
        SSL_CTX *x = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(x, TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(x, "TLS_AES_128_GCM_SHA256");
        SSL *ss = SSL_new(x);
        SSL_set_fd(ss, s);
        if (SSL_connect(ss) <= 0)
            return 1;
        t0 = now();
        for (long i = 0; i < mib; i++) {
            if (SSL_write(ss, buf, BUF) != BUF)
                return 1;
        }
        SSL_shutdown(ss);
    }
    shutdown(s, SHUT_WR);
    int st;
    waitpid(p, &st, 0);
    t1 = now();
    printf("%s: %ld MiB in %.3f s = %.0f MB/s (receiver %s)\n", argv[1], mib, t1 - t0,
           mib * BUF / 1e6 / (t1 - t0), WEXITSTATUS(st) == 0 ? "ok" : "BAD");
    return 0;
}
