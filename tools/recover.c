/*
 * recover.c - postcopy recovery from the CLI: `livemig recover` (one
 * recovery of a paused pair, by hand) and the attempts of `livemig migrate
 * --auto-recover` (mig_rec_*, called from mig_run).  Both use QEMU's
 * commands only: `migrate-recover {"uri"}` makes the paused destination
 * listen on a new URI (a tcp port 0 is read back from its socket-address),
 * then `migrate {"uri", "resume": true}` on the paused source, which goes
 * postcopy-recover-setup -> postcopy-recover -> postcopy-active, or back to
 * postcopy-paused with error-desc when the attempt fails (and may be tried
 * again).  The source sets postcopy-recover-setup before its `migrate`
 * returns, so a postcopy-paused read after that is this attempt's failure.
 */
#include "cli.h"
#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 5000
#define REC_POLL_MS 50

/* ------------------------------------------------------- the steps */

static bool is_paused(const char *status)
{
    return !strcmp(status, "postcopy-paused");
}

/* The side must be in postcopy-paused: an error naming it and its status
 * otherwise. */
static int require_paused(qmpc *c, const char *side, lm_error *err)
{
    qmpc_mig q;
    int rc = qmpc_query_migrate(c, &q, NULL, err);
    if (rc < 0)
        return lm_error_prefix(err, "%s", side), rc;
    if (!is_paused(q.status))
        return lm_error_set(err, -EINVAL,
                            "%s is not paused (status '%s'): recovery needs both sides in "
                            "postcopy-paused",
                            side, q.status);
    return 0;
}

/* migrate-recover on the destination; *real is the URI the source must use
 * (want, or with its tcp port 0 replaced by the one the destination got). */
static int dst_listen(qmpc *dst, const char *want, char *real, size_t cap, lm_error *err)
{
    json_t *args = json_pack("{s:s}", "uri", want), *qm = NULL;
    int rc = qmpc_call(dst, "migrate-recover", args, NULL, err);
    json_decref(args);
    if (rc < 0)
        return lm_error_prefix(err, "destination"), rc;
    qmpc_mig q;
    if ((rc = qmpc_query_migrate(dst, &q, &qm, err)) < 0)
        return lm_error_prefix(err, "destination"), rc;
    if (!qmpc_real_uri(qm, want, real, cap))
        rc = lm_error_set(err, -EPROTO,
                          "destination's query-migrate has no socket-address to resolve port "
                          "0 of '%s'",
                          want);
    json_decref(qm);
    return rc;
}

static int src_resume(qmpc *src, const char *uri, lm_error *err)
{
    json_t *args = json_pack("{s:s, s:b}", "uri", uri, "resume", 1);
    int rc = qmpc_call(src, "migrate", args, NULL, err);
    json_decref(args);
    if (rc < 0)
        lm_error_prefix(err, "source");
    return rc;
}

enum { REC_RECOVERED = 1, REC_PAUSED = 2, REC_ENDED = 3 };

/* After a resume: polls the source (bounded by deadline, and Ctrl-C) until
 * it leaves the recovery states.  REC_RECOVERED (postcopy-active, or
 * completed already), REC_PAUSED (the attempt failed: s->error_desc says
 * why), REC_ENDED (failed or cancelled), or -ETIMEDOUT / -EINTR / a query
 * error. */
static int wait_outcome(qmpc *src, uint64_t deadline, qmpc_mig *s, lm_error *err)
{
    for (;;) {
        int rc = qmpc_query_migrate(src, s, NULL, err);
        if (rc < 0)
            return lm_error_prefix(err, "source"), rc;
        if (!strcmp(s->status, "postcopy-active") || !strcmp(s->status, "completed"))
            return REC_RECOVERED;
        if (is_paused(s->status))
            return REC_PAUSED;
        if (qmpc_status_final(s->status))
            return REC_ENDED;
        if (cli_interrupted)
            return lm_error_set(err, -EINTR, "interrupted in %s", s->status);
        if (cli_now_ms() >= deadline)
            return lm_error_set(err, -ETIMEDOUT, "source still in %s", s->status);
        usleep(REC_POLL_MS * 1000);
    }
}

/* ------------------------------------------ migrate --auto-recover */

bool mig_rec_fresh_uri(const char *orig, int n, char *out, size_t cap)
{
    if (!strncmp(orig, "tcp:", 4)) {
        /* The same host, a port the destination picks (migrate-recover
         * takes port 0; its socket-address says which). */
        const char *colon = strrchr(orig + 4, ':');
        if (!colon || colon == orig + 4)
            return false;
        int len = (int)(colon - orig);
        return snprintf(out, cap, "%.*s:0", len, orig) < (int)cap;
    }
    if (!strncmp(orig, "unix:", 5) && orig[5]) {
        int w = snprintf(out, cap, "%s.recover%d", orig, n);
        if (w < 0 || w >= (int)cap)
            return false;
        /* A socket left by an earlier run of this command would make the
         * bind fail; anything else at that path is not ours. */
        struct stat st;
        if (lstat(out + 5, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(out + 5);
        return true;
    }
    return false;
}

void mig_rec_init(mig_rec *r, int max)
{
    memset(r, 0, sizeof *r);
    r->max = max;
}

bool mig_rec_can_try(const mig_rec *r)
{
    return r->max > 0 && r->n < r->max && !cli_interrupted;
}

/* The destination pauses on its own (EOF, silence, or its migrate-pause)
 * and may do so after the source: wait for it, bounded. */
static int dst_wait_paused(qmpc *dst, uint64_t deadline, lm_error *err)
{
    for (;;) {
        qmpc_mig q;
        int rc = qmpc_query_migrate(dst, &q, NULL, err);
        if (rc < 0)
            return lm_error_prefix(err, "destination"), rc;
        if (is_paused(q.status))
            return 0;
        if (qmpc_status_final(q.status))
            return lm_error_set(err, -EINVAL, "destination ended in %s%s%s", q.status,
                                q.error_desc[0] ? ": " : "", q.error_desc);
        if (cli_interrupted)
            return lm_error_set(err, -EINTR, "interrupted");
        if (cli_now_ms() >= deadline)
            return lm_error_set(err, -ETIMEDOUT,
                                "destination did not reach postcopy-paused (status '%s')",
                                q.status);
        usleep(REC_POLL_MS * 1000);
    }
}

int mig_rec_attempt(mig_rec *r, qmpc *src, qmpc *dst, const char *orig_uri, const char *why,
                    uint64_t deadline, progress *p, bool quiet)
{
    rec_attempt *a = &r->a[r->n++];
    char want[512];
    lm_error err = {0};
    qmpc_mig s;
    bool shown = false; /* the "recovery attempt K of N via URI" line */
    int rc;
    snprintf(a->error, sizeof a->error, "%s", why);
    if (!mig_rec_fresh_uri(orig_uri, r->n, want, sizeof want)) {
        rc = lm_error_set(&err, -EINVAL, "no fresh URI can be made from '%s'", orig_uri);
        goto failed;
    }
    if ((rc = dst_wait_paused(dst, deadline, &err)) < 0)
        goto failed;
    rc = dst_listen(dst, want, a->uri, sizeof a->uri, &err);
    if (rc < 0 && r->listening[0]) {
        /* A failed resume leaves the destination listening from the last
         * attempt's migrate-recover (it refuses a second one): use that. */
        if (!quiet)
            progress_note(p, "destination still listens on %s (%s)", r->listening, err.msg);
        snprintf(a->uri, sizeof a->uri, "%s", r->listening);
        lm_error_clear(&err);
        rc = 0;
    }
    if (rc < 0)
        goto failed;
    snprintf(r->listening, sizeof r->listening, "%s", a->uri);
    if (!quiet)
        progress_note(p, "postcopy paused: %s; recovery attempt %d of %d via %s", why, r->n, r->max,
                      a->uri);
    shown = true;
    if ((rc = src_resume(src, a->uri, &err)) < 0)
        goto failed;
    rc = wait_outcome(src, deadline, &s, &err);
    if (rc == REC_RECOVERED) {
        a->ok = true;
        a->error[0] = '\0';
        r->listening[0] = '\0';
        r->recovered++;
        if (!quiet)
            progress_note(p, "recovered: source %s again (attempt %d of %d)", s.status, r->n,
                          r->max);
        return 0;
    }
    if (rc == REC_PAUSED)
        lm_error_set(&err, -EIO, "%s", s.error_desc[0] ? s.error_desc : "back in postcopy-paused");
    else if (rc == REC_ENDED)
        lm_error_set(&err, -EIO, "the migration ended in %s%s%s", s.status,
                     s.error_desc[0] ? ": " : "", s.error_desc);
failed:
    snprintf(a->error, sizeof a->error, "%s", err.msg);
    if (!quiet && shown)
        progress_note(p, "recovery attempt %d of %d failed: %s", r->n, r->max, err.msg);
    else if (!quiet)
        progress_note(p, "postcopy paused: %s; recovery attempt %d of %d failed: %s", why, r->n,
                      r->max, err.msg);
    return -1;
}

json_t *mig_rec_json(const mig_rec *r)
{
    json_t *o = json_object(), *list = json_array();
    json_object_set_new(o, "max-attempts", json_integer(r->max));
    for (int i = 0; i < r->n; i++) {
        const rec_attempt *a = &r->a[i];
        json_t *e = json_pack("{s:i, s:s, s:s}", "attempt", i + 1, "uri", a->uri, "outcome",
                              a->ok ? "recovered" : "failed");
        if (!a->ok)
            json_object_set_new(e, "error", json_string(a->error));
        json_array_append_new(list, e);
    }
    json_object_set_new(o, "attempts", list);
    return o;
}

void mig_rec_print(const mig_rec *r, FILE *f)
{
    if (!r->max)
        return;
    if (!r->n) {
        fprintf(f, "  recovery      not needed (up to %d attempts)\n", r->max);
        return;
    }
    for (int i = 0; i < r->n; i++) {
        const rec_attempt *a = &r->a[i];
        fprintf(f, "  recovery      attempt %d of %d via %s: %s%s%s\n", i + 1, r->max,
                a->uri[0] ? a->uri : "-", a->ok ? "recovered" : "failed", a->ok ? "" : ": ",
                a->ok ? "" : a->error);
    }
}

/* ---------------------------------------------------- livemig recover */

void usage_recover(FILE *f)
{
    fprintf(f, "usage: livemig recover --src SRC --dst DST --uri URI [--timeout SECONDS]\n\n"
               "Recovers a paused postcopy migration (both sides in postcopy-paused after\n"
               "a broken or silent link, or migrate-pause): migrate-recover URI on the\n"
               "destination, then migrate URI with resume=true on the source, and waits\n"
               "until the source is postcopy-active again or back in postcopy-paused.\n"
               "With a tcp port 0 the real port is read from the destination's\n"
               "socket-address.\n\n"
               "options:\n"
               "  --src SOCK             source QMP socket (unix:PATH or PATH)\n"
               "  --dst SOCK             destination QMP socket\n"
               "  --uri URI              the new URI: tcp:HOST:PORT, unix:PATH\n"
               "  --timeout SECONDS      wait this long for the outcome (default 60)\n\n"
               "Exit status: 0 recovered (postcopy-active again, or completed), 1 a side\n"
               "not paused, the attempt failed (back in postcopy-paused: error-desc is\n"
               "printed; it may be tried again) or no outcome in time, 2 usage.\n");
}

enum { O_SRC = 1, O_DST, O_URI, O_TIMEOUT };

static int recover(const char *srcs, const char *dsts, const char *uri, int timeout_s)
{
    qmpc *src = NULL, *dst = NULL;
    lm_error err = {0};
    char real[512];
    qmpc_mig s;
    int ret = CLI_EXIT_FAIL;
    uint64_t start = cli_now_ms();
    if (qmpc_connect(srcs, CONNECT_TIMEOUT_MS, &src, &err) < 0 ||
        qmpc_connect(dsts, CONNECT_TIMEOUT_MS, &dst, &err) < 0 ||
        require_paused(src, "source", &err) < 0 || require_paused(dst, "destination", &err) < 0 ||
        dst_listen(dst, uri, real, sizeof real, &err) < 0) {
        cli_err("recover", "%s", err.msg);
        goto out;
    }
    printf("destination listening on %s\n", real);
    if (src_resume(src, real, &err) < 0) {
        cli_err("recover", "%s", err.msg);
        goto out;
    }
    printf("source resuming via %s\n", real);
    int rc = wait_outcome(src, start + (uint64_t)timeout_s * 1000, &s, &err);
    char t[32];
    cli_fmt_ms(t, sizeof t, (double)(cli_now_ms() - start));
    if (rc == REC_RECOVERED) {
        printf("recovered: source %s again after %s\n", s.status, t);
        ret = CLI_EXIT_OK;
    } else if (rc == REC_PAUSED) {
        cli_err("recover", "recovery failed, source back in postcopy-paused: %s",
                s.error_desc[0] ? s.error_desc : "(no error-desc)");
    } else if (rc == REC_ENDED) {
        cli_err("recover", "the migration ended in %s%s%s", s.status, s.error_desc[0] ? ": " : "",
                s.error_desc);
    } else if (rc == -ETIMEDOUT) {
        cli_err("recover", "no outcome after %d s: %s", timeout_s, err.msg);
    } else {
        cli_err("recover", "%s", err.msg);
    }
out:
    lm_qmp_client_close(src);
    lm_qmp_client_close(dst);
    return ret;
}

int cmd_recover(int argc, char **argv)
{
    static const cli_opt opts[] = {
        {"src", true, O_SRC},         {"dst", true, O_DST}, {"uri", true, O_URI},
        {"timeout", true, O_TIMEOUT}, {NULL, false, 0},
    };
    cli_args a;
    cli_args_init(&a, "recover", argc, argv);
    const char *v, *src = NULL, *dst = NULL, *uri = NULL;
    int id, timeout_s = 60;
    uint64_t n;
    while ((id = cli_next(&a, opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage_recover(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            cli_err("recover", "unexpected argument '%s'", v);
            return CLI_EXIT_USAGE;
        case O_SRC:
            src = v;
            break;
        case O_DST:
            dst = v;
            break;
        case O_URI:
            uri = v;
            break;
        case O_TIMEOUT:
            if (!cli_parse_u64(v, &n) || n < 1 || n > 86400) {
                cli_err("recover", "--timeout: '%s' is not a number of seconds >= 1", v);
                return CLI_EXIT_USAGE;
            }
            timeout_s = (int)n;
            break;
        }
    }
    if (!src || !dst || !uri) {
        cli_err("recover", "missing %s (see 'livemig help recover')",
                !src   ? "--src"
                : !dst ? "--dst"
                       : "--uri");
        return CLI_EXIT_USAGE;
    }
    cli_catch_signals();
    return recover(src, dst, uri, timeout_s);
}
