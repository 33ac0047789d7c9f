/*
 * server.c - the QMP control server: QEMU's QMP protocol on a socket, for
 * several clients at once, with migration events pushed to all of them.
 * The state is in server.h; requests are dispatched in dispatch.c.
 *
 * Threads:
 *  - "lm-qmp", one per server: a poll() loop over the listening socket, an
 *    eventfd and the clients.  It alone owns the clients (sockets, input
 *    readers, output queues) and runs every command, built-in or host
 *    registered.  It never blocks: sockets are non-blocking, a slow client's
 *    replies and events wait in its own bounded output queue, and commands
 *    only call lm_mig_* functions that answer at once.
 *  - any library thread (migration, incoming, return path, the QMP thread
 *    itself, the host) calls the event listener, relay_event(), which
 *    formats the event, queues it and wakes the server through the eventfd.
 *  - the host thread calls start/register/stop.
 *
 * Locks (order: relay->lock, then s->lock):
 *  - relay->lock guards relay->s.  lm_mig_remove_listener() guarantees no
 *    late call, but the relay (the listener's opaque) still outlives the
 *    server as a second line of defence: stop() clears relay->s under this
 *    lock and any call would see NULL.  Retired relays stay on a static
 *    list (bytes each).
 *  - s->lock guards the "shared" fields of lm_qmp_server: stop request,
 *    host commands and the event queue.  Held briefly, never across I/O or
 *    a command.
 *
 * Lifetime: the host stops the server before lm_mig_free().  A host command
 * may call lm_qmp_server_stop() itself (e.g. "quit"): the thread then
 * finishes the current command, flushes replies and frees the server.
 */
#include "qmp/qmp_internal.h"

#include "chan/chan.h"

#include <pthread.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qmp/server.h"

static pthread_mutex_t retired_lock = PTHREAD_MUTEX_INITIALIZER;
static relay *retired; /* guarded by retired_lock */

/* The same version as query-version (livemig.h). */
#define V_(x) LM_VERSION_XSTR_(x)
/* clang-format off */
const char lm_qmp_greeting[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": " V_(LM_VERSION_MICRO)
    ", \"minor\": " V_(LM_VERSION_MINOR) ", \"major\": " V_(LM_VERSION_MAJOR) "}, "
    "\"package\": \"livemig " LM_VERSION_STRING "\"}, \"capabilities\": []}}\r\n";
/* clang-format on */
#undef V_

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void wake(lm_qmp_server *s)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: a wake-up is pending. */
    ssize_t n = write(s->efd, &one, sizeof one);
    (void)n;
}

/* -------------------------------------------------------------- output */

static void out_append(client *c, const char *data, size_t n)
{
    if (c->dead)
        return;
    size_t queued = c->out_len - c->out_head;
    if (queued + n > OUT_MAX) {
        /* It does not read what it asked for: drop it rather than grow
         * without bound or block everyone else. */
        c->dead = true;
        return;
    }
    if (c->out_head && c->out_len + n > c->out_cap) {
        memmove(c->out, c->out + c->out_head, queued);
        c->out_len = queued;
        c->out_head = 0;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *nb = realloc(c->out, cap);
        if (!nb) {
            c->dead = true;
            return;
        }
        c->out = nb;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static void out_json(client *c, json_t *v)
{
    char *t = lm_qmp_json_dumps(v, JSON_ENCODE_ANY);
    if (!t) {
        c->dead = true;
        return;
    }
    out_append(c, t, strlen(t));
    out_append(c, "\r\n", 2);
    free(t);
}

size_t lm_qmp_srv_out_queued(const client *c)
{
    return c->out_len - c->out_head;
}

/* Writes what the socket takes now. */
void lm_qmp_srv_out_flush(client *c)
{
    while (!c->dead && lm_qmp_srv_out_queued(c)) {
        ssize_t n = send(c->fd, c->out + c->out_head, lm_qmp_srv_out_queued(c),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->dead = true;
            return;
        }
        c->out_head += (size_t)n;
    }
    if (c->out_head == c->out_len)
        c->out_head = c->out_len = 0;
}

void lm_qmp_srv_reply_error(client *c, json_t *id, const char *cls, const char *desc)
{
    json_t *r = json_pack("{s:{s:s, s:s}}", "error", "class", cls, "desc", desc);
    if (!r) {
        c->dead = true;
        return;
    }
    if (id)
        json_object_set(r, "id", id);
    out_json(c, r);
    json_decref(r);
}

void lm_qmp_srv_reply_return(client *c, json_t *id, json_t *ret)
{
    json_t *r = json_object();
    if (!r || json_object_set_new(r, "return", ret ? ret : json_object()) < 0) {
        json_decref(r);
        c->dead = true;
        return;
    }
    if (id)
        json_object_set(r, "id", id);
    out_json(c, r);
    json_decref(r);
}

/* -------------------------------------------------------------- events */

static void relay_event(void *opaque, const lm_event *ev)
{
    relay *r = opaque;
    json_t *o = lm_qmp_event_json(ev);
    char *t = o ? lm_qmp_json_dumps(o, 0) : NULL;
    json_decref(o);
    if (!t)
        return;
    size_t len = strlen(t);
    evnode *n = malloc(sizeof *n + len + 3);
    if (n) {
        n->next = NULL;
        n->len = len + 2;
        memcpy(n->text, t, len);
        memcpy(n->text + len, "\r\n", 3);
    }
    free(t);
    if (!n)
        return;

    pthread_mutex_lock(&r->lock);
    lm_qmp_server *s = r->s;
    if (s) {
        pthread_mutex_lock(&s->lock);
        if (s->nev >= EVQ_MAX) {
            evnode *old = s->ev_head;
            s->ev_head = old->next;
            if (!s->ev_head)
                s->ev_tail = NULL;
            s->nev--;
            free(old);
        }
        if (s->ev_tail)
            s->ev_tail->next = n;
        else
            s->ev_head = n;
        s->ev_tail = n;
        s->nev++;
        n = NULL;
        pthread_mutex_unlock(&s->lock);
        wake(s);
    }
    pthread_mutex_unlock(&r->lock);
    free(n);
}

/* Server thread: hands queued events to every negotiated client. */
void lm_qmp_srv_drain_events(lm_qmp_server *s)
{
    pthread_mutex_lock(&s->lock);
    evnode *n = s->ev_head;
    s->ev_head = s->ev_tail = NULL;
    s->nev = 0;
    pthread_mutex_unlock(&s->lock);
    while (n) {
        evnode *next = n->next;
        for (unsigned i = 0; i < s->nclients; i++)
            if (s->clients[i].negotiated)
                out_append(&s->clients[i], n->text, n->len);
        free(n);
        n = next;
    }
}

/* Removes our listener from the migration object (called with no lock of
 * ours held: the library may be delivering an event that takes them). */
static void detach_listener(lm_qmp_server *s)
{
    relay *r = s->relay;
    if (!r)
        return;
    lm_mig_remove_listener(s->m, relay_event, r);
    pthread_mutex_lock(&r->lock);
    r->s = NULL;
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&retired_lock);
    r->retired_next = retired;
    retired = r;
    pthread_mutex_unlock(&retired_lock);
    s->relay = NULL;
}

/* --------------------------------------------------------------- clients */

static void client_close(client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    lm_qmp_fds_client_fini(c);
    lm_qmp_reader_fini(&c->rd);
    free(c->out);
    c->out = NULL;
    c->out_head = c->out_len = c->out_cap = 0;
}

static void accept_clients(lm_qmp_server *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* EAGAIN: all taken; ECONNABORTED and the like concern one
             * attempt.  Out of descriptors or memory, the connection
             * stays queued and would wake poll() at once: back off. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS)
                s->accept_after_ms = now_ms() + ACCEPT_BACKOFF_MS;
            return;
        }
        if (s->nclients >= MAX_CLIENTS) {
            static const char full[] = "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                                       "\"too many QMP clients\"}}\r\n";
            ssize_t n = send(fd, full, sizeof full - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
            close(fd);
            continue;
        }
        client *c = &s->clients[s->nclients++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        lm_qmp_reader_init(&c->rd, LM_QMP_MAX_REQUEST);
        out_append(c, lm_qmp_greeting, sizeof lm_qmp_greeting - 1);
        lm_qmp_srv_out_flush(c);
    }
}

/* The descriptors of a control message (received close-on-exec). */
static unsigned cmsg_fds(struct msghdr *msg, int *fds, unsigned cap)
{
    unsigned n = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (n < cap)
                fds[n++] = fd;
            else
                close(fd);
        }
    }
    return n;
}

/* Reads with recvmsg() so that descriptors passed with SCM_RIGHTS (on a
 * unix socket) are received too (fds.c keeps them). */
static void read_client(lm_qmp_server *s, client *c)
{
    char buf[READ_CHUNK];
    union {
        char b[CMSG_SPACE(MSG_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            c->dead = true;
        return;
    }
    int fds[MSG_FDS];
    unsigned nfds = cmsg_fds(&msg, fds, MSG_FDS);
    if (n == 0) {
        for (unsigned i = 0; i < nfds; i++)
            close(fds[i]);
        c->eof = true;
        return;
    }
    lm_error err = {0};
    if (lm_qmp_reader_feed(&c->rd, buf, (size_t)n, &err) < 0) {
        for (unsigned i = 0; i < nfds; i++)
            close(fds[i]);
        lm_qmp_srv_reply_error(c, NULL, "GenericError", err.msg);
        lm_qmp_srv_out_flush(c);
        c->dead = true;
        return;
    }
    c->rx += (uint64_t)n;
    if (nfds || (msg.msg_flags & MSG_CTRUNC))
        lm_qmp_fds_received(c, fds, nfds, (size_t)n, msg.msg_flags & MSG_CTRUNC);
}

static void reap_clients(lm_qmp_server *s)
{
    unsigned j = 0;
    for (unsigned i = 0; i < s->nclients; i++) {
        client *c = &s->clients[i];
        bool done = c->eof && !c->more && !lm_qmp_srv_out_queued(c);
        if (c->dead || done) {
            client_close(c);
            continue;
        }
        if (i != j)
            s->clients[j] = *c;
        j++;
    }
    /* With no client left, nobody can use or remove the fd sets: QEMU
     * closes unused sets when its last monitor disconnects, too. */
    if (j == 0 && s->nclients)
        lm_qmp_fds_sets_fini(s);
    s->nclients = j;
}

/* ------------------------------------------------------------ the thread */

static void destroy(lm_qmp_server *s);

/* Best effort, bounded: replies already queued (to "quit", say) reach
 * clients that are reading. */
static void final_flush(lm_qmp_server *s)
{
    uint64_t deadline = now_ms() + FINAL_FLUSH_MS;
    for (;;) {
        struct pollfd pfd[MAX_CLIENTS];
        unsigned n = 0;
        for (unsigned i = 0; i < s->nclients; i++) {
            client *c = &s->clients[i];
            lm_qmp_srv_out_flush(c);
            if (!c->dead && lm_qmp_srv_out_queued(c))
                pfd[n++] = (struct pollfd){.fd = c->fd, .events = POLLOUT};
        }
        uint64_t now = now_ms();
        if (!n || now >= deadline)
            return;
        if (poll(pfd, n, (int)(deadline - now)) <= 0)
            return;
    }
}

static void *server_main(void *arg)
{
    lm_qmp_server *s = arg;
    struct pollfd pfd[2 + MAX_CLIENTS];

    pthread_setname_np(pthread_self(), "lm-qmp");
    while (!lm_qmp_srv_stopping(s)) {

        int timeout = -1;
        uint64_t now = now_ms();
        bool accepting = now >= s->accept_after_ms;
        if (!accepting)
            timeout = (int)(s->accept_after_ms - now);
        pfd[0] = (struct pollfd){.fd = s->efd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = accepting ? s->lfd : -1, .events = POLLIN};
        for (unsigned i = 0; i < s->nclients; i++) {
            client *c = &s->clients[i];
            short ev = 0;
            if (c->more && lm_qmp_srv_out_queued(c) < OUT_HIGH)
                timeout = 0;
            if (!c->eof && !c->more && lm_qmp_srv_out_queued(c) < OUT_HIGH)
                ev |= POLLIN;
            if (lm_qmp_srv_out_queued(c))
                ev |= POLLOUT;
            pfd[2 + i] = (struct pollfd){.fd = c->fd, .events = ev};
        }
        unsigned npfd = 2 + s->nclients;
        int n = poll(pfd, npfd, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* Cannot happen with valid descriptors; do not spin. */
            break;
        }
        if (pfd[0].revents & POLLIN) {
            uint64_t cnt;
            ssize_t r = read(s->efd, &cnt, sizeof cnt);
            (void)r;
        }
        unsigned old = s->nclients;
        for (unsigned i = 0; i < old; i++) {
            client *c = &s->clients[i];
            short re = pfd[2 + i].revents;
            if (re & POLLOUT)
                lm_qmp_srv_out_flush(c);
            if (re & POLLIN)
                read_client(s, c);
            else if (re & (POLLERR | POLLHUP | POLLNVAL))
                c->dead = true;
            /* Also after POLLOUT alone: input held back by a full output
             * queue may run now. */
            lm_qmp_srv_process_input(s, c);
        }
        lm_qmp_srv_drain_events(s);
        if (pfd[1].revents & POLLIN)
            accept_clients(s);
        for (unsigned i = 0; i < s->nclients; i++)
            lm_qmp_srv_out_flush(&s->clients[i]);
        reap_clients(s);
    }

    lm_qmp_srv_drain_events(s);
    final_flush(s);
    for (unsigned i = 0; i < s->nclients; i++)
        client_close(&s->clients[i]);
    s->nclients = 0;

    pthread_mutex_lock(&s->lock);
    bool self_free = s->self_free;
    pthread_mutex_unlock(&s->lock);
    if (self_free)
        destroy(s);
    return NULL;
}

/* ------------------------------------------------------------- public */

static void destroy(lm_qmp_server *s)
{
    detach_listener(s);
    if (s->lfd >= 0)
        close(s->lfd);
    struct stat st;
    if (s->unix_path[0] && stat(s->unix_path, &st) == 0 && st.st_dev == s->sock_dev &&
        st.st_ino == s->sock_ino)
        unlink(s->unix_path);
    if (s->efd >= 0)
        close(s->efd);
    lm_qmp_fds_sets_fini(s);
    lm_qmp_srv_host_cmds_fini(s);
    evnode *n = s->ev_head;
    while (n) {
        evnode *next = n->next;
        free(n);
        n = next;
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int lm_qmp_server_start(lm_mig *m, const char *uri, lm_qmp_server **out, lm_error *err)
{
    return lm_qmp_server_start_mode(m, uri, 0, out, err);
}

int lm_qmp_server_start_mode(lm_mig *m, const char *uri, unsigned mode, lm_qmp_server **out,
                             lm_error *err)
{
    lm_qmp_server *s = NULL;
    relay *r = NULL;
    lm_uri u;
    int rc = 0;
    bool listening = false;

    *out = NULL;
    if (!m || !uri)
        return lm_error_set(err, -EINVAL, "QMP server: missing migration object or URI");
    if (mode & ~0777u)
        return lm_error_set(err, -EINVAL, "QMP server: socket mode %#o has bits beyond 0777", mode);
    if (!mode)
        mode = LM_QMP_SOCKET_MODE_DEFAULT;
    if (uri[0] == '/' || uri[0] == '.') {
        /* A bare path, as QEMU's -qmp accepts with unix: omitted by some
         * tools. */
        memset(&u, 0, sizeof u);
        u.kind = LM_URI_UNIX;
        u.fd = -1;
        if (strlen(uri) >= sizeof u.path)
            return lm_error_set(err, -ENAMETOOLONG, "QMP server: socket path '%s' is too long",
                                uri);
        snprintf(u.path, sizeof u.path, "%s", uri);
    } else if ((rc = lm_uri_parse(uri, &u, err)) < 0) {
        lm_error_prefix(err, "QMP server");
        return rc; /* not prefix's: err may be NULL */
    }

    s = calloc(1, sizeof *s);
    r = calloc(1, sizeof *r);
    if (!s || !r) {
        free(s);
        free(r);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    s->m = m;
    s->lfd = -1;
    s->efd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&r->lock, NULL);
    r->s = s;

    char actual[256];
    /* Created with at most `mode` (the umask may take bits away), then
     * given exactly `mode`: never looser than asked at any moment. */
    if ((rc = lm_uri_listen_mode(&u, (int)mode, &s->lfd, actual, sizeof actual, err)) < 0) {
        lm_error_prefix(err, "QMP server");
        goto fail;
    }
    listening = true;
    struct stat st;
    if (u.kind == LM_URI_UNIX && stat(u.path, &st) == 0) {
        snprintf(s->unix_path, sizeof s->unix_path, "%s", u.path);
        s->sock_dev = st.st_dev;
        s->sock_ino = st.st_ino;
        if ((st.st_mode & 0777) != mode && chmod(u.path, (mode_t)mode) != 0) {
            rc = lm_error_set(err, -errno, "QMP server: chmod %s %#o: %s", u.path, mode,
                              strerror(errno));
            goto fail;
        }
    }
    int fl = fcntl(s->lfd, F_GETFL);
    if (fl < 0 || fcntl(s->lfd, F_SETFL, fl | O_NONBLOCK) < 0) {
        rc = lm_error_set(err, -errno, "QMP server: %s", strerror(errno));
        goto fail;
    }
    s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->efd < 0) {
        rc = lm_error_set(err, -errno, "QMP server: eventfd: %s", strerror(errno));
        goto fail;
    }
    if ((rc = lm_mig_add_listener(m, relay_event, r, err)) < 0) {
        lm_error_prefix(err, "QMP server");
        goto fail;
    }
    s->relay = r;
    r = NULL; /* now owned by s (retired at destroy) */
    int e = pthread_create(&s->thread, NULL, server_main, s);
    if (e) {
        rc = lm_error_set(err, -e, "QMP server: cannot start thread: %s", strerror(e));
        goto fail;
    }
    *out = s;
    return 0;

fail:
    if (!listening)
        s->unix_path[0] = '\0'; /* never remove a file we did not create */
    if (r)
        pthread_mutex_destroy(&r->lock);
    free(r);
    destroy(s);
    return rc;
}

void lm_qmp_server_stop(lm_qmp_server *s)
{
    if (!s)
        return;
    bool own_thread = pthread_equal(pthread_self(), s->thread);
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    s->self_free = own_thread;
    pthread_mutex_unlock(&s->lock);
    if (own_thread) {
        /* Called from a command: the thread frees the server when the
         * command returns (it cannot join itself). */
        pthread_detach(pthread_self());
        return;
    }
    wake(s);
    pthread_join(s->thread, NULL);
    destroy(s);
}
