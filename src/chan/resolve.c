/*
 * resolve.c - a name lookup the caller can abandon (cancel, deadline):
 * getaddrinfo(3) cannot be interrupted, so it runs on a detached thread
 * "lm-resolve" and the caller waits for it, its deadline or its cancel
 * descriptor.  Whoever of the two finishes last frees the request.
 */
#include "chan/chan.h"
#include "util/clock.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Name lookup that the caller can abandon: getaddrinfo(3) runs on a
 * detached thread; the caller waits for it, its deadline or cancel_fd.
 * Whoever of the two finishes last frees the request. */
typedef struct resolve_req {
    atomic_int refs;
    atomic_int done; /* the lookup finished: gai, res are set */
    int done_efd;
    char host[256], port[8];
    struct addrinfo *res;
    int gai, gai_errno;
} resolve_req;

static void resolve_put(resolve_req *q)
{
    if (atomic_fetch_sub(&q->refs, 1) != 1)
        return;
    if (q->res)
        freeaddrinfo(q->res);
    close(q->done_efd);
    free(q);
}

static void *resolve_fn(void *arg)
{
    resolve_req *q = arg;
    pthread_setname_np(pthread_self(), "lm-resolve");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    q->gai = getaddrinfo(q->host, q->port, &hints, &q->res);
    q->gai_errno = errno;
    /* The results are published by this release store (the eventfd only
     * wakes the caller, who reads them after an acquire load of done). */
    atomic_store_explicit(&q->done, 1, memory_order_release);
    uint64_t one = 1;
    if (write(q->done_efd, &one, sizeof one) != sizeof one) {
        /* an eventfd write of 1 cannot fail */
    }
    resolve_put(q);
    return NULL;
}

/* Returns 0 (*res is the caller's), a getaddrinfo error > 0 (*gai_errno
 * set for EAI_SYSTEM), or -ECANCELED / -ETIMEDOUT / -errno. */
int lm_resolve(const char *host, const char *port, int64_t deadline, int cancel_fd,
               struct addrinfo **res, int *gai_errno)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    *res = NULL;
    if (cancel_fd < 0) {
        int g = getaddrinfo(host, port, &hints, res);
        *gai_errno = errno;
        return g;
    }
    resolve_req *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->done_efd = eventfd(0, EFD_CLOEXEC);
    if (q->done_efd < 0) {
        int e = errno;
        free(q);
        return -e;
    }
    snprintf(q->host, sizeof q->host, "%s", host);
    snprintf(q->port, sizeof q->port, "%s", port);
    atomic_init(&q->refs, 2);
    atomic_init(&q->done, 0);
    pthread_attr_t at;
    pthread_t t;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&t, &at, resolve_fn, q);
    pthread_attr_destroy(&at);
    if (e) {
        close(q->done_efd);
        free(q);
        return -e;
    }
    int ret;
    for (;;) {
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - (int64_t)(lm_now_ns() / 1000000);
            if (left <= 0) {
                ret = -ETIMEDOUT;
                break;
            }
            wait = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd pfd[2] = {{.fd = q->done_efd, .events = POLLIN},
                                {.fd = cancel_fd, .events = POLLIN}};
        int n = poll(pfd, 2, wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = -errno;
            break;
        }
        if (pfd[1].revents) {
            ret = -ECANCELED;
            break;
        }
        if (pfd[0].revents && atomic_load_explicit(&q->done, memory_order_acquire)) {
            ret = q->gai;
            *gai_errno = q->gai_errno;
            *res = q->res;
            q->res = NULL; /* now the caller's */
            break;
        }
    }
    resolve_put(q);
    return ret;
}
