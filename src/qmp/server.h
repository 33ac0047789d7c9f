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

typedef struct client {
    int fd;
    bool negotiated;
    bool eof; /* peer closed its write side: answer what is queued, then close */
    bool dead;
    bool more; /* complete requests may be buffered: run them next turn */
    lm_qmp_reader rd;
    char *out;
    size_t out_head, out_len, out_cap;
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
    uint64_t accept_after_ms; /* accept() back-off, see ACCEPT_BACKOFF_MS */
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
/* dispatch.c: runs the complete requests client c has buffered. */
void lm_qmp_srv_process_input(lm_qmp_server *s, client *c);

extern const char lm_qmp_greeting[];

#endif /* LM_QMP_SERVER_H */
