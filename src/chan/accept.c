/*
 * accept.c - accepts every connection a listener has and reads each one's
 * greeting in one poll loop, with a deadline per connection and a cap on
 * how many may be greeting at once (accept.h).
 *
 * Why: the destination used to accept one connection and block reading its
 * HELLO; one stranger that connected and said nothing (or trickled a byte
 * now and then) held the real source out until it gave up, and a cancel
 * could not reach the half-accepted channel (issue 12, defect 1).  Here no
 * connection waits for another, the cancel descriptor is in every poll,
 * and what a silent crowd can make us hold is bounded: max_pending
 * descriptors, each for at most greeting_timeout_ms; the oldest goes first
 * when a new one comes, so a source that connects and speaks at once is
 * never the one closed.
 *
 * A process may hold several listeners at once (one per lm_mig whose
 * incoming migration or recovery is accepting: a host may run many guests
 * in one process), so the per-listener cap alone does not bound what
 * strangers make the process hold.  Each acceptor has a few slots of its
 * own (pool_own: enough for a source's channels, so a crowd at one
 * listener never keeps the real source of another out); beyond them it
 * takes slots from one process-wide pool (pool_max), and when the pool is
 * empty it closes its own oldest silent connection instead.  Connections
 * greeting in the whole process: at most pool_max + pool_own x listeners,
 * and listeners are opened by the host, never by a peer.
 *
 * Threads: an acceptor has one owner thread (accept.h); the pool is shared
 * by every acceptor's thread, guarded by pool_lock (a leaf lock: nothing
 * else is taken under it).
 */
#include "chan/accept.h"

#include "chan/chan.h"
#include "chan/tls.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Accepts taken from the listener per poll round: the greeting ones get
 * their turn between rounds even under a flood. */
#define ACCEPT_BURST 64

typedef struct pend {
    int fd;
    bool accepted; /* ours from accept (tuned when handed over), not added */
    bool done;     /* greeting complete, or the peer closed/failed after part of it */
    uint64_t deadline_ns;
    size_t got;
    uint8_t buf[LM_ACCEPT_GREETING_MAX];
    /* TLS: the session (handshaking until hs_done); plain: the peer sent
     * plaintext; fail: the handshake's error (done, nothing read) */
    lm_tls *tls;
    bool hs_done, plain;
    int fail;
    char fail_msg[LM_ERROR_MSG_MAX];
} pend;

/* The process-wide pool of greeting slots (see the top). */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned pool_own = LM_ACCEPT_OWN_SLOTS;  /* guarded by pool_lock */
static unsigned pool_max = LM_ACCEPT_POOL_SLOTS; /* guarded by pool_lock */
static unsigned pool_used;                       /* guarded by pool_lock */

struct lm_acceptor {
    int lfd, cancel_fd;
    lm_acceptor_cfg cfg;
    pend *p; /* in arrival order: p[0] is the oldest */
    unsigned n;
    unsigned own;       /* slots of its own (pool_own when created) */
    unsigned pooled;    /* slots taken from the pool: >= n - own, given back
                         * down to that by pool_settle() */
    struct pollfd *pfd; /* cancel, listener, then one per pending */
    lm_acceptor_stats st;
    /* what TLS made of the connection handed over last (take_tls) */
    lm_tls *last_tls;
    bool last_plain;
    int last_fail;
    char last_msg[LM_ERROR_MSG_MAX];
};

int lm_acceptor_new(int lfd, int cancel_fd, const lm_acceptor_cfg *cfg, lm_acceptor **out,
                    lm_error *err)
{
    *out = NULL;
    if (!cfg || cfg->greeting_len == 0 || cfg->greeting_len > LM_ACCEPT_GREETING_MAX ||
        cfg->max_pending == 0 || cfg->greeting_timeout_ms <= 0)
        return lm_error_set(err, -EINVAL, "acceptor: bad configuration");
    lm_acceptor *a = calloc(1, sizeof *a);
    if (a) {
        a->p = calloc(cfg->max_pending, sizeof *a->p);
        a->pfd = calloc(cfg->max_pending + 2, sizeof *a->pfd);
    }
    if (!a || !a->p || !a->pfd) {
        if (a) {
            free(a->p);
            free(a->pfd);
        }
        free(a);
        return lm_error_set(err, -ENOMEM, "acceptor: out of memory");
    }
    a->lfd = lfd;
    a->cancel_fd = cancel_fd;
    a->cfg = *cfg;
    pthread_mutex_lock(&pool_lock);
    a->own = pool_own;
    pthread_mutex_unlock(&pool_lock);
    *out = a;
    return 0;
}

void lm_acceptor_set_pool(unsigned own, unsigned max)
{
    pthread_mutex_lock(&pool_lock);
    pool_own = own;
    pool_max = max;
    pthread_mutex_unlock(&pool_lock);
}

unsigned lm_acceptor_pool_used(void)
{
    pthread_mutex_lock(&pool_lock);
    unsigned n = pool_used;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

/* One more slot from the pool for a; false when it is empty. */
static bool pool_take(lm_acceptor *a)
{
    pthread_mutex_lock(&pool_lock);
    bool ok = pool_used < pool_max;
    if (ok)
        pool_used++;
    pthread_mutex_unlock(&pool_lock);
    if (ok)
        a->pooled++;
    return ok;
}

/* Gives back the pool slots a holds beyond its connections' need. */
static void pool_settle(lm_acceptor *a)
{
    unsigned need = a->n > a->own ? a->n - a->own : 0;
    if (a->pooled <= need)
        return;
    pthread_mutex_lock(&pool_lock);
    pool_used -= a->pooled - need;
    pthread_mutex_unlock(&pool_lock);
    a->pooled = need;
}

static void drop(lm_acceptor *a, unsigned i)
{
    lm_tls_free(a->p[i].tls);
    close(a->p[i].fd);
    memmove(&a->p[i], &a->p[i + 1], (a->n - i - 1) * sizeof *a->p);
    a->n--;
}

void lm_acceptor_free(lm_acceptor *a)
{
    if (!a)
        return;
    while (a->n)
        drop(a, a->n - 1);
    lm_tls_free(a->last_tls);
    pool_settle(a);
    free(a->p);
    free(a->pfd);
    free(a);
}

unsigned lm_acceptor_pending(const lm_acceptor *a)
{
    return a->n;
}

void lm_acceptor_get_stats(const lm_acceptor *a, lm_acceptor_stats *out)
{
    *out = a->st;
}

static void read_greeting(lm_acceptor *a, unsigned i);

/* Closes the oldest connection still greeting, after taking what every
 * one has sent by now (a source's channel that already spoke is complete
 * then, and is never the one closed); true when a slot came free. */
static bool evict(lm_acceptor *a)
{
    unsigned before = a->n;
    for (unsigned i = a->n; i-- > 0;)
        if (!a->p[i].done)
            read_greeting(a, i); /* may drop one that closed */
    if (a->n < before)
        return true;
    for (unsigned i = 0; i < a->n; i++)
        if (!a->p[i].done) {
            drop(a, i);
            a->st.evicted++;
            return true;
        }
    return false;
}

/* Room for one more connection under the caps (this acceptor's, and the
 * process-wide pool beyond its own slots); false when every slot it has
 * holds a complete greeting not handed over yet.  A slot freed by evict()
 * keeps its pool slot for the newcomer (given back only by pool_settle). */
static bool make_room(lm_acceptor *a)
{
    if (a->n < a->cfg.max_pending && (a->n < a->own || a->pooled > a->n - a->own || pool_take(a)))
        return true;
    return evict(a);
}

/* A place for one more connection, NULL when every slot holds a complete
 * greeting not handed over yet. */
static pend *slot(lm_acceptor *a)
{
    if (!make_room(a))
        return NULL;
    pend *p = &a->p[a->n++];
    memset(p, 0, sizeof *p);
    p->deadline_ns = lm_now_ns() + (uint64_t)a->cfg.greeting_timeout_ms * 1000000ull;
    return p;
}

int lm_acceptor_add(lm_acceptor *a, int fd, lm_error *err)
{
    if (fd < 0)
        return lm_error_set(err, -EBADF, "acceptor: invalid fd %d", fd);
    pend *p = slot(a);
    if (!p) {
        close(fd);
        return lm_error_set(err, -EBUSY, "acceptor: every slot holds a connection not taken");
    }
    p->fd = fd; /* now ours */
    a->st.accepted++;
    return 0;
}

/* Takes what the listener has, up to a burst.  0, -ECANCELED for a
 * listener shut down, or an error (err set) when accept fails and no
 * connection can be evicted to make room. */
static int accept_some(lm_acceptor *a, lm_error *err)
{
    for (int k = 0; k < ACCEPT_BURST; k++) {
        if (k > 0) {
            /* More waiting?  Asked with a zero-timeout poll rather than a
             * non-blocking accept: an fd: listener's flags are the host's.
             * Asked before making room, so that no connection is closed
             * for a newcomer that is not there. */
            struct pollfd lp = {.fd = a->lfd, .events = POLLIN};
            if (poll(&lp, 1, 0) <= 0 || !(lp.revents & POLLIN))
                return 0;
        }
        if (!make_room(a))
            return 0; /* the listener waits until the caller took one */
        int fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            pend *p = slot(a); /* room was made above */
            p->fd = fd;
            p->accepted = true;
            a->st.accepted++;
            continue;
        }
        switch (errno) {
        case EINTR:
        case EAGAIN:
        case ECONNABORTED:
        /* Errors pending on the new connection: that peer's, not ours. */
        case ENETDOWN:
        case EPROTO:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case ENETUNREACH:
            return 0;
        case EINVAL: /* the listener was shut down (cancel) */
        case EBADF:
            return -ECANCELED;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Out of descriptors: the oldest silent connection makes room
             * (the listener stays readable, so the next round retries). */
            if (evict(a))
                return 0;
            return lm_error_set(err, -errno, "accept: %s", strerror(errno));
        default:
            return lm_error_set(err, -errno, "accept: %s", strerror(errno));
        }
    }
    return 0;
}

/* TLS: the handshake's next step, then the greeting inside it.  Returns
 * true when it dealt with the connection, false when the peer turned out
 * to speak plaintext (read it as such). */
static bool tls_greeting(lm_acceptor *a, unsigned i)
{
    pend *p = &a->p[i];
    lm_error e = {0};
    if (!p->tls && lm_tls_new(a->cfg.tls, p->fd, NULL, a->cfg.authz, &p->tls, &e) < 0)
        goto failed;
    if (!p->hs_done) {
        int r = lm_tls_handshake_step(p->tls, &e);
        if (r == -ENOPROTOOPT) {
            lm_tls_free(p->tls);
            p->tls = NULL;
            p->plain = true;
            return false;
        }
        if (r < 0)
            goto failed;
        if (r > 0)
            return true;
        p->hs_done = true;
    }
    while (p->got < a->cfg.greeting_len) {
        ssize_t n = lm_tls_recv_nb(p->tls, p->buf + p->got, a->cfg.greeting_len - p->got, &e);
        if (n == 0)
            return true;
        if (n < 0) {
            if (p->got > 0) {
                p->done = true;
                return true;
            }
            drop(a, i); /* handshaken, then gone without a word */
            a->st.silent++;
            return true;
        }
        p->got += (size_t)n;
    }
    p->done = true;
    return true;
failed:
    p->fail = e.code ? e.code : -EPROTO;
    snprintf(p->fail_msg, sizeof p->fail_msg, "%s", e.msg);
    p->done = true;
    return true;
}

/* Reads what connection i has of its greeting (poll said readable). */
static void read_greeting(lm_acceptor *a, unsigned i)
{
    pend *p = &a->p[i];
    if (a->cfg.tls && !p->plain && tls_greeting(a, i))
        return;
    size_t want = a->cfg.greeting_len - p->got;
    ssize_t n = recv(p->fd, p->buf + p->got, want, MSG_DONTWAIT);
    if (n < 0 && errno == ENOTSOCK)
        n = read(p->fd, p->buf + p->got, want); /* fd: a pipe; poll said readable */
    if (n > 0) {
        p->got += (size_t)n;
        p->done = p->got == a->cfg.greeting_len;
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    /* EOF or an error: after part of a greeting the caller names it; before
     * the first byte nobody spoke, nothing to report. */
    if (p->got > 0) {
        p->done = true;
        return;
    }
    drop(a, i);
    a->st.silent++;
}

/* Hands connection i over (removed from the set, not closed). */
static void hand_over(lm_acceptor *a, unsigned i, int *fd_out, uint8_t *buf, size_t *len)
{
    pend *p = &a->p[i];
    if (p->accepted) {
        /* Best effort: a socket that refuses its options still works. */
        lm_sock_tune(p->fd, NULL);
    }
    *fd_out = p->fd;
    memcpy(buf, p->buf, p->got);
    *len = p->got;
    lm_tls_free(a->last_tls);
    a->last_tls = p->tls;
    a->last_plain = p->plain;
    a->last_fail = p->fail;
    memcpy(a->last_msg, p->fail_msg, sizeof a->last_msg);
    memmove(&a->p[i], &a->p[i + 1], (a->n - i - 1) * sizeof *a->p);
    a->n--;
    pool_settle(a);
}

int lm_acceptor_next(lm_acceptor *a, uint64_t deadline_ns, int *fd_out, uint8_t *buf, size_t *len,
                     lm_error *err)
{
    *fd_out = -1;
    *len = 0;
    for (;;) {
        for (unsigned i = 0; i < a->n; i++)
            if (a->p[i].done) {
                hand_over(a, i, fd_out, buf, len);
                return 0;
            }
        uint64_t now = lm_now_ns();
        bool expired = false;
        for (unsigned i = 0; i < a->n;) {
            if (now >= a->p[i].deadline_ns) {
                drop(a, i);
                a->st.timed_out++;
                expired = true;
            } else {
                i++;
            }
        }
        pool_settle(a); /* after timeouts, drops, evictions */
        if (a->lfd < 0 && a->n == 0 && expired)
            return -ETIMEDOUT;
        if (deadline_ns && now >= deadline_ns)
            return -ETIMEDOUT;
        uint64_t wake = deadline_ns;
        for (unsigned i = 0; i < a->n; i++)
            if (!wake || a->p[i].deadline_ns < wake)
                wake = a->p[i].deadline_ns;
        int timeout = -1;
        if (wake)
            timeout = (int)((wake - now + 999999) / 1000000);

        nfds_t nf = 0;
        a->pfd[nf++] = (struct pollfd){.fd = a->cancel_fd, .events = POLLIN};
        a->pfd[nf++] = (struct pollfd){.fd = a->lfd, .events = POLLIN};
        for (unsigned i = 0; i < a->n; i++)
            a->pfd[nf++] = (struct pollfd){
                .fd = a->p[i].fd,
                .events = a->p[i].tls && !a->p[i].hs_done ? lm_tls_events(a->p[i].tls) : POLLIN};
        int r = poll(a->pfd, nf, timeout); /* negative fds are ignored by poll */
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return lm_error_set(err, -errno, "accept: poll: %s", strerror(errno));
        if (a->cancel_fd >= 0 && a->pfd[0].revents)
            return -ECANCELED;
        /* Greetings first (indexes shift when one is dropped: walk back). */
        for (unsigned i = a->n; i-- > 0;)
            if (a->pfd[2 + i].revents)
                read_greeting(a, i);
        if (a->lfd >= 0 && a->pfd[1].revents) {
            int ret = accept_some(a, err);
            if (ret < 0)
                return ret;
        }
    }
}

int lm_acceptor_take_tls(lm_acceptor *a, lm_tls **tls, lm_error *err)
{
    *tls = a->last_tls;
    a->last_tls = NULL;
    if (a->last_fail) {
        lm_tls_free(*tls); /* its handshake failed: nothing to carry */
        *tls = NULL;
        return lm_error_set(err, a->last_fail, "%s", a->last_msg);
    }
    return a->last_plain ? 1 : 0;
}
