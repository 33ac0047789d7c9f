/*
 * server.h - the QMP server's state, shared by the server thread
 * (server.c: sockets, clients, output, events) and the command dispatch
 * (dispatch.c: negotiation, built-in and host commands).  Internal to qmp/.
 * The threads and locks are described at the top of server.c.
 */
#ifndef LM_QMP_SERVER_H
#define LM_QMP_SERVER_H

#include "qmp/qmp_internal.h"

#include <pthread.h>
#include <sys/types.h>

#define MAX_CLIENTS 32
#define MAX_HOST_CMDS 128
#define CMD_NAME_MAX 63
#define READ_CHUNK 65536
/* A client whose queued output passes OUT_HIGH is not read from until it
 * catches up (back-pressure for pipelined commands); one whose queue passes
 * OUT_MAX (it does not read its events) is dropped. */
#define OUT_HIGH (1u << 20)
#define OUT_MAX (4u << 20)
/* Events waiting for the server thread; the oldest go first past this. */
#define EVQ_MAX 4096
/* How long stop() keeps flushing replies already queued (e.g. to "quit"). */
#define FINAL_FLUSH_MS 200
/* Requests run per client per loop turn, so one client pipelining many
 * commands cannot delay the others' replies for long. */
#define TURN_REQUESTS 64
/* After accept() fails for lack of descriptors or memory, the pending
 * connection keeps the listener readable: look again only after this. */
#define ACCEPT_BACKOFF_MS 100

/* Descriptors passed with SCM_RIGHTS (fds.c).  A client holds at most
 * CLIENT_FDS of them, received and not yet claimed or named by getfd;
 * more are closed on arrival and the getfd that would take one is told
 * so.  One message brings at most MSG_FDS (the rest are closed by the
 * kernel: MSG_CTRUNC).  The fd sets of add-fd belong to the server, as
 * QEMU's belong to the process: FDSET_FDS descriptors in all. */
#define CLIENT_FDS 32
#define MSG_FDS 16
#define FDSET_FDS 64
#define FDNAME_MAX 127

typedef struct pending_fd {
    int fd;
    uint64_t anchor; /* stream offset of the last non-blank byte it came with */
} pending_fd;

typedef struct named_fd {
    char name[FDNAME_MAX + 1];
    int fd;
} named_fd;

typedef struct fdset_fd {
    int64_t id;
    int fd;
    char *opaque; /* or NULL */
} fdset_fd;

typedef struct client {
    int fd;
    bool negotiated;
    bool eof; /* peer closed its write side: answer what is queued, then close */
    bool dead;
    bool more; /* complete requests may be buffered: run them next turn */
    lm_qmp_reader rd;
    char *out;
    size_t out_head, out_len, out_cap;
    /* descriptors (fds.c); rx is the stream offset of the input's end */
    uint64_t rx;
    pending_fd pend[CLIENT_FDS]; /* oldest first */
    unsigned npend;
    named_fd named[CLIENT_FDS];
    unsigned nnamed;
    uint64_t dropped; /* anchor + 1 of the last descriptor dropped, or 0 */
} client;

typedef struct evnode {
    struct evnode *next;
    size_t len;
    char text[]; /* JSON + "\r\n" */
} evnode;

typedef struct relay {
    pthread_mutex_t lock;
    lm_qmp_server *s; /* guarded by lock; NULL once stopped */
    struct relay *retired_next;
} relay;

typedef struct hostcmd {
    char name[CMD_NAME_MAX + 1];
    lm_qmp_cmd_fn fn;
    void *opaque;
    /* hostcmd.c: the argument list the server checks (ends with a NULL
     * name), or NULL for a command registered without one (unchecked).
     * Owned by the server, freed by destroy; never changes once set, so
     * a copy of the row taken under s->lock may use it after. */
    lm_qmp_arg *args;
} hostcmd;

struct lm_qmp_server {
    lm_mig *m;
    int lfd;
    int efd;
    char unix_path[108]; /* socket file to remove at stop, or "" */
    dev_t sock_dev;      /* ... if it is still the one we created */
    ino_t sock_ino;
    pthread_t thread;
    relay *relay;

    pthread_mutex_t lock;
    /* --- shared, guarded by lock --- */
    bool stop;
    bool self_free; /* stop() was called by a command on our thread */
    hostcmd cmds[MAX_HOST_CMDS];
    unsigned ncmds;
    evnode *ev_head, *ev_tail;
    unsigned nev;
    /* --- end of shared --- */

    /* server thread only */
    client clients[MAX_CLIENTS];
    unsigned nclients;
    uint64_t accept_after_ms;   /* accept() back-off, see ACCEPT_BACKOFF_MS */
    fdset_fd fdsets[FDSET_FDS]; /* add-fd's sets, in add order */
    unsigned nfdset;
};

/* server.c, server thread only */
void lm_qmp_srv_reply_error(client *c, json_t *id, const char *cls, const char *desc);
void lm_qmp_srv_reply_return(client *c, json_t *id, json_t *ret);
size_t lm_qmp_srv_out_queued(const client *c);
void lm_qmp_srv_out_flush(client *c);
void lm_qmp_srv_drain_events(lm_qmp_server *s);
bool lm_qmp_srv_stopping(lm_qmp_server *s);
/* dispatch.c: a host command's index, or -1 (s->lock held). */
int lm_qmp_srv_find_host_cmd(lm_qmp_server *s, const char *name);
/* hostcmd.c: frees the host commands' argument lists (destroy). */
void lm_qmp_srv_host_cmds_fini(lm_qmp_server *s);
/* dispatch.c: runs the complete requests client c has buffered. */
void lm_qmp_srv_process_input(lm_qmp_server *s, client *c);
/* One checked request of c: built-in, descriptor or host command, or
 * CommandNotFound; exactly one reply is queued (fuzz_qmpcmd.c calls it
 * directly, without a socket). */
void lm_qmp_srv_dispatch(lm_qmp_server *s, client *c, lm_qmp_request *req);

/* fds.c, server thread only. */
/* Takes the n descriptors of one recvmsg() that brought nbytes of input,
 * after they were fed to c->rd and counted in c->rx; truncated: the
 * kernel dropped more (MSG_CTRUNC). */
void lm_qmp_fds_received(client *c, const int *fds, unsigned n, size_t nbytes, bool truncated);
/* Runs getfd, closefd, add-fd, remove-fd, query-fdsets, and migrate /
 * migrate-incoming with an fd:NAME URI; returns false for anything else
 * (the caller runs it). */
bool lm_qmp_fds_dispatch(lm_qmp_server *s, client *c, lm_qmp_request *req);
/* After each request or malformed input: closes what came with it and was
 * not claimed. */
void lm_qmp_fds_settle(client *c);
/* Closes every descriptor the client holds. */
void lm_qmp_fds_client_fini(client *c);
/* Closes every descriptor in the fd sets. */
void lm_qmp_fds_sets_fini(lm_qmp_server *s);

extern const char lm_qmp_greeting[];

#endif /* LM_QMP_SERVER_H */
