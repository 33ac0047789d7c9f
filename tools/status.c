/*
 * status.c - `livemig status`, `cancel` and `postcopy`: one host's
 * migration seen or steered over QMP (query-migrate, migrate_cancel,
 * migrate-start-postcopy).  `status --watch` shows the same display as
 * `livemig migrate` and can draw the same picture (tools/watch.c).
 */
#include "cli.h"
#include "watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_MS 100 /* --plot sampling, as `livemig migrate` polls */
#define CONNECT_TIMEOUT_MS 5000

enum { O_WATCH = 1, O_JSON, O_PLOT, O_PLOT_SIZE };

void usage_status(FILE *f)
{
    fprintf(f, "usage: livemig status SOCK [--watch [--plot FILE]] [--json]\n\n"
               "Shows query-migrate of the host behind QMP socket SOCK.\n\n"
               "options:\n"
               "  --watch                refresh every second until a final status\n"
               "  --json                 print query-migrate as JSON (one line per refresh)\n"
               "  --plot FILE            with --watch: sample every 100 ms and draw the\n"
               "                         timeline to FILE when it ends (see migrate)\n"
               "  --plot-size WxH        picture size in pixels (default 1000x720)\n");
}

void usage_postcopy(FILE *f)
{
    fprintf(f, "usage: livemig postcopy SOCK\n\n"
               "Asks the host behind QMP socket SOCK to switch its outgoing migration to\n"
               "postcopy (migrate-start-postcopy; needs the postcopy-ram capability on\n"
               "both sides).  The switch happens as soon as the migration thread allows.\n");
}

void usage_cancel(FILE *f)
{
    fprintf(f, "usage: livemig cancel SOCK\n\n"
               "Cancels the outgoing migration of the host behind QMP socket SOCK\n"
               "(migrate_cancel); the source keeps running.\n");
}

int cmd_status(int argc, char **argv)
{
    static const cli_opt opts[] = {
        {"watch", false, O_WATCH},        {"json", false, O_JSON}, {"plot", true, O_PLOT},
        {"plot-size", true, O_PLOT_SIZE}, {NULL, false, 0},
    };
    cli_args a;
    cli_args_init(&a, "status", argc, argv);
    const char *v, *sock = NULL, *plot = NULL;
    bool watch = false, json = false;
    int id, pw = PLOT_DEFAULT_W, ph = PLOT_DEFAULT_H;

    while ((id = cli_next(&a, opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage_status(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            if (sock) {
                cli_err("status", "unexpected argument '%s'", v);
                return CLI_EXIT_USAGE;
            }
            sock = v;
            break;
        case O_WATCH:
            watch = true;
            break;
        case O_JSON:
            json = true;
            break;
        case O_PLOT:
            plot = v;
            break;
        case O_PLOT_SIZE:
            if (!mig_plot_parse_size(v, &pw, &ph)) {
                cli_err("status", "--plot-size: '%s' is not WIDTHxHEIGHT (200..8000 each)", v);
                return CLI_EXIT_USAGE;
            }
            break;
        }
    }
    if (!sock) {
        cli_err("status", "missing SOCK (see 'livemig help status')");
        return CLI_EXIT_USAGE;
    }
    if (plot && !watch) {
        cli_err("status", "--plot needs --watch (one query is not a timeline)");
        return CLI_EXIT_USAGE;
    }
    cli_catch_signals();
    qmpc *c = NULL;
    lm_error err = {0};
    int ret = CLI_EXIT_FAIL;
    progress p;
    mig_plot mp = {0};
    qmpc_mig q;
    memset(&q, 0, sizeof q);
    progress_init(&p, !json);
    if (plot && mig_plot_open(&mp, plot, pw, ph, &err) < 0) {
        cli_err("status", "%s", err.msg);
        return CLI_EXIT_FAIL;
    }
    if (qmpc_connect(sock, CONNECT_TIMEOUT_MS, &c, &err) < 0) {
        cli_err("status", "%s", err.msg);
        goto out;
    }
    /* With --plot: a sample every poll, the display still once a second
     * off a terminal. */
    int interval_ms = plot ? POLL_MS : 1000;
    for (;;) {
        json_t *raw = NULL;
        lm_error_clear(&err);
        if (qmpc_query_migrate(c, &q, &raw, &err) < 0) {
            cli_err("status", "%s", err.msg);
            goto out;
        }
        uint64_t now = cli_now_ms();
        bool final = qmpc_status_final(q.status) || !strcmp(q.status, "none");
        if (strcmp(q.status, "none"))
            mig_plot_sample(&mp, &q, json_object_get(raw, "x-postcopy"), now);
        if (json) {
            char *txt = json_dumps(raw, JSON_COMPACT);
            printf("%s\n", txt ? txt : "null");
            fflush(stdout);
            free(txt);
        } else if (!final) {
            if (!watch)
                p.tty = false; /* one shot: one plain line, no redraw codes */
            progress_show(&p, &q, !plot);
        } else {
            mig_print_summary(&q, NULL, NULL, NULL, stdout);
        }
        json_decref(raw);
        if (!watch || final) {
            mig_drain_events(c, &mp, NULL, NULL);
            break;
        }
        /* Ctrl-C ends the watch; a final MIGRATION event ends the wait. */
        mig_wait_events(c, now + (uint64_t)interval_ms, &mp, NULL, NULL);
        if (cli_interrupted)
            break;
    }
    ret = CLI_EXIT_OK;
    if (mp.on && mig_plot_finish(&mp, "status", &q, cli_now_ms(), json) < 0)
        ret = CLI_EXIT_FAIL;
out:
    mig_plot_close(&mp);
    lm_qmp_client_close(c);
    return ret;
}

/* `livemig postcopy SOCK` and `livemig cancel SOCK`: one QMP command on the
 * host behind SOCK, then a line saying it was requested. */
static int one_command(int argc, char **argv, const char *verb, void (*usage)(FILE *),
                       const char *qmp_cmd, const char *done)
{
    cli_args a;
    cli_args_init(&a, verb, argc, argv);
    const char *v, *sock = NULL;
    int id;
    while ((id = cli_next(&a, NULL, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            if (sock) {
                cli_err(verb, "unexpected argument '%s'", v);
                return CLI_EXIT_USAGE;
            }
            sock = v;
            break;
        }
    }
    if (!sock) {
        cli_err(verb, "missing SOCK (see 'livemig help %s')", verb);
        return CLI_EXIT_USAGE;
    }
    qmpc *c = NULL;
    lm_error err = {0};
    int ret = CLI_EXIT_FAIL;
    if (qmpc_connect(sock, CONNECT_TIMEOUT_MS, &c, &err) < 0 ||
        qmpc_call(c, qmp_cmd, NULL, NULL, &err) < 0) {
        cli_err(verb, "%s", err.msg);
        goto out;
    }
    printf("%s\n", done);
    ret = CLI_EXIT_OK;
out:
    lm_qmp_client_close(c);
    return ret;
}

int cmd_postcopy(int argc, char **argv)
{
    return one_command(argc, argv, "postcopy", usage_postcopy, "migrate-start-postcopy",
                       "switch to postcopy requested");
}

int cmd_cancel(int argc, char **argv)
{
    return one_command(argc, argv, "cancel", usage_cancel, "migrate_cancel", "cancel requested");
}
