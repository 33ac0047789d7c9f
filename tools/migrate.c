/*
 * migrate.c - `livemig migrate`: drive two hosts (ours or QEMU) over QMP
 * with QEMU-standard commands only, show live progress from query-migrate
 * (tools/watch.c: the display and the --plot samples) and print an honest
 * final report (mig_end.c: the postcopy switch, the completion figures,
 * the summary).  mig_run() is also the engine of `livemig demo`; `status`,
 * `cancel` and `postcopy` are in tools/status.c; --auto-recover's attempts
 * and `livemig recover` in tools/recover.c.
 */
#include "cli.h"
#include "watch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLL_MS 100
#define CONNECT_TIMEOUT_MS 5000
#define CANCEL_WAIT_MS 10000 /* bound on waiting for the end after a cancel */
#define DST_WAIT_MS 5000     /* bound on waiting for the destination's verdict */

/* ---------------------------------------------------------------- usage */

void usage_migrate(FILE *f)
{
    fprintf(f, "usage: livemig migrate --src unix:SRC --dst unix:DST --uri URI [options]\n\n"
               "Migrates the host behind QMP socket SRC to the one behind DST (livemig\n"
               "guests or QEMUs).  DST must be waiting for a migration (--incoming URI, or\n"
               "--incoming defer: then migrate-incoming URI is issued on it).  With a tcp\n"
               "port 0 the real port is read from the destination's socket-address.\n\n"
               "options:\n"
               "  --src SOCK             source QMP socket (unix:PATH or PATH)\n"
               "  --dst SOCK             destination QMP socket\n"
               "  --uri URI              migration URI: tcp:HOST:PORT, unix:PATH\n"
               "  --cap NAME=on|off      set a capability on both sides (repeatable);\n"
               "                         'events' is always turned on\n"
               "  --param NAME=VALUE     set a parameter on both sides (repeatable); VALUE\n"
               "                         is an integer (K/M/G allowed for *-bandwidth),\n"
               "                         true/false, or a string\n"
               "  --multifd N            N parallel channels: --cap multifd=on and\n"
               "                         --param multifd-channels=N (1..255)\n"
               "  --compress METHOD      multifd compression: none, zlib, zstd, lz4\n"
               "                         (implies multifd; --param multifd-compression)\n"
               "  --postcopy[=asap|after-pass:N|after:SECONDS]\n"
               "                         turn postcopy-ram on (both sides) and ask for the\n"
               "                         switch (migrate-start-postcopy) as soon as the\n"
               "                         migration starts, once N passes are done, or\n"
               "                         after SECONDS.  Default: after-pass:1 on a livemig\n"
               "                         source, asap on QEMU (whose first pass is the\n"
               "                         whole RAM: an idle guest completes right after\n"
               "                         it).  A migration that completes before the\n"
               "                         request takes effect stays precopy; the summary\n"
               "                         says which happened\n"
               "  --auto-postcopy[=SECONDS]\n"
               "                         switch to postcopy when precopy stops converging:\n"
               "                         remaining has not reached a new low for SECONDS\n"
               "                         (default 3)\n"
               "  --json                 print one JSON object at the end, no progress\n"
               "  --plot FILE            when it ends, draw the timeline to FILE (SVG, or\n"
               "                         PNG for *.png): remaining, throughput, dirty rate,\n"
               "                         passes, switchover and downtime, postcopy faults\n"
               "  --plot-size WxH        picture size in pixels (default 1000x720)\n"
               "  --auto-recover[=N]     with --postcopy: when the migration pauses in\n"
               "                         postcopy (a broken or silent link, or\n"
               "                         migrate-pause on either side), recover it, up to\n"
               "                         N attempts in all (default 3, at most 20), each\n"
               "                         on a new URI of --uri's transport: tcp:HOST:0\n"
               "                         (the destination picks the port) or\n"
               "                         unix:PATH.recoverN (see 'livemig help recover')\n"
               "  --timeout SECONDS      give up (cancel) after this long (default 600)\n\n"
               "Exit status: 0 completed, 1 failed/cancelled/postcopy-paused/timed out,\n"
               "2 usage.  Ctrl-C cancels the migration on the source (the source keeps\n"
               "running); after the switch to postcopy a migration cannot be cancelled.\n");
}

/* ------------------------------------------------------------- options */

bool mig_opts_add_cap(mig_opts *o, const char *cmd, const char *spec)
{
    const char *eq = strchr(spec, '=');
    bool on;
    if (!eq || eq == spec || !cli_parse_bool(eq + 1, &on)) {
        cli_err(cmd, "--cap: '%s' is not NAME=on|off", spec);
        return false;
    }
    if (o->ncaps >= MIG_MAX_CAPS) {
        cli_err(cmd, "--cap: more than %d capabilities", MIG_MAX_CAPS);
        return false;
    }
    o->cap_name[o->ncaps] = strndup(spec, (size_t)(eq - spec));
    o->cap_on[o->ncaps] = on;
    o->ncaps++;
    return true;
}

bool mig_opts_add_param(mig_opts *o, const char *cmd, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec) {
        cli_err(cmd, "--param: '%s' is not NAME=VALUE", spec);
        return false;
    }
    if (o->nparams >= MIG_MAX_PARAMS) {
        cli_err(cmd, "--param: more than %d parameters", MIG_MAX_PARAMS);
        return false;
    }
    o->param_name[o->nparams] = strndup(spec, (size_t)(eq - spec));
    o->param_value[o->nparams] = eq + 1;
    o->nparams++;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* QMP typing of a parameter value: QEMU rejects "100" for an integer. */
static json_t *param_json(const char *name, const char *value)
{
    int64_t i;
    uint64_t u;
    if (cli_parse_i64(value, &i))
        return json_integer(i);
    if ((ends_with(name, "bandwidth") || ends_with(name, "-size")) && cli_parse_size(value, &u) &&
        u <= INT64_MAX)
        return json_integer((json_int_t)u);
    if (!strcmp(value, "true"))
        return json_true();
    if (!strcmp(value, "false"))
        return json_false();
    return json_string(value);
}

/* -------------------------------------------------------------- engine */

/* "events" goes on wherever we can set capabilities: it is what lets us
 * wake on MIGRATION instead of waiting for the next poll. */
int mig_set_caps(qmpc *c, const char *side, const mig_opts *o, bool events, lm_error *err)
{
    if (!events && !o->ncaps && o->postcopy == MIG_PC_NONE)
        return 0;
    json_t *list = json_array();
    if (events)
        json_array_append_new(list, json_pack("{s:s, s:b}", "capability", "events", "state", 1));
    if (o->postcopy != MIG_PC_NONE)
        json_array_append_new(list,
                              json_pack("{s:s, s:b}", "capability", "postcopy-ram", "state", 1));
    for (int i = 0; i < o->ncaps; i++)
        json_array_append_new(
            list, json_pack("{s:s, s:b}", "capability", o->cap_name[i], "state", o->cap_on[i]));
    json_t *args = json_pack("{s:o}", "capabilities", list);
    int rc = qmpc_call(c, "migrate-set-capabilities", args, NULL, err);
    json_decref(args);
    if (rc < 0)
        lm_error_prefix(err, "%s", side);
    return rc;
}

int mig_set_params(qmpc *c, const char *side, const mig_opts *o, lm_error *err)
{
    if (!o->nparams)
        return 0;
    json_t *args = json_object();
    for (int i = 0; i < o->nparams; i++)
        json_object_set_new(args, o->param_name[i],
                            param_json(o->param_name[i], o->param_value[i]));
    int rc = qmpc_call(c, "migrate-set-parameters", args, NULL, err);
    json_decref(args);
    if (rc < 0)
        lm_error_prefix(err, "%s", side);
    return rc;
}

/* Configures the destination and makes it listen if it was started with
 * --incoming defer; returns the URI the source must use (the real port for
 * a port 0). */
static int prepare_destination(qmpc *dst, const mig_opts *o, char *real, size_t cap, lm_error *err)
{
    json_t *st = NULL, *qm = NULL;
    int rc = qmpc_call(dst, "query-status", NULL, &st, err);
    if (rc < 0)
        goto out;
    const char *rs = json_string_value(json_object_get(st, "status"));
    if (!rs || strcmp(rs, "inmigrate")) {
        rc = lm_error_set(err, -EINVAL,
                          "destination is not waiting for a migration (run "
                          "state '%s'; start it with --incoming)",
                          rs ? rs : "?");
        goto out;
    }
    qmpc_mig q;
    if ((rc = qmpc_query_migrate(dst, &q, &qm, err)) < 0)
        goto out;
    /* Waiting for migrate-incoming: nothing started and no listener (QEMU
     * 7.2 keeps reporting no status while it listens). */
    bool deferred = !strcmp(q.status, "none") && !json_object_get(qm, "socket-address");
    /* A destination already listening (--incoming URI) may refuse new
     * capabilities (QEMU takes them, livemig does not once it listens).  Go
     * on with a warning: a capability that must match on both sides then
     * fails the migration at its start with a clear error anyway. */
    if (mig_set_caps(dst, "destination", o, deferred, err) < 0) {
        if (deferred) {
            rc = err->code;
            goto out;
        }
        fprintf(stderr,
                "livemig migrate: warning: %s (it is already listening; start it "
                "with --incoming defer to configure it first)\n",
                err->msg);
        lm_error_clear(err);
    }
    if ((rc = mig_set_params(dst, "destination", o, err)) < 0)
        goto out;
    if (deferred) {
        json_t *args = json_pack("{s:s}", "uri", o->uri);
        rc = qmpc_call(dst, "migrate-incoming", args, NULL, err);
        json_decref(args);
        if (rc < 0) {
            lm_error_prefix(err, "destination");
            goto out;
        }
        json_decref(qm);
        qm = NULL;
        if ((rc = qmpc_query_migrate(dst, &q, &qm, err)) < 0)
            goto out;
    }
    if (!qmpc_real_uri(qm, o->uri, real, cap))
        rc = lm_error_set(err, -EPROTO,
                          "destination's query-migrate has no socket-address "
                          "to resolve port 0 of '%s'",
                          o->uri);
out:
    json_decref(st);
    json_decref(qm);
    return rc;
}

/* The postcopy policy reads the same events as the plot (one loop feeds
 * both): any MIGRATION status change wakes the poll, as the request may be
 * due and "switched to postcopy" is reported from what the source says. */
static bool pc_event(void *arg, json_t *ev)
{
    return mig_pc_note_event(arg, ev);
}

int mig_run(const mig_opts *o)
{
    qmpc *src = NULL, *dst = NULL;
    json_t *src_raw = NULL, *dst_raw = NULL;
    lm_error err = {0};
    int ret = CLI_EXIT_FAIL;
    char uri[512];
    qmpc_mig s, d;
    progress p;
    mig_plot mp = {0};
    bool cancel_sent = false, timed_out = false, interrupted = false;
    uint64_t start = cli_now_ms(), cancel_deadline = 0, end_ms = 0;
    uint64_t deadline = start + (uint64_t)o->timeout_s * 1000;

    memset(&s, 0, sizeof s);
    memset(&d, 0, sizeof d);
    s.total_time = s.setup_time = s.downtime = s.expected_downtime = -1;
    snprintf(uri, sizeof uri, "%s", o->uri);
    /* The picture's file is opened before anything happens: a bad path
     * fails here, not after a migration. */
    if (o->plot && mig_plot_open(&mp, o->plot, o->plot_w, o->plot_h, &err) < 0) {
        cli_err("migrate", "%s", err.msg);
        goto out;
    }

    if (qmpc_connect(o->src, CONNECT_TIMEOUT_MS, &src, &err) < 0 ||
        qmpc_connect(o->dst, CONNECT_TIMEOUT_MS, &dst, &err) < 0 ||
        mig_set_caps(src, "source", o, true, &err) < 0 ||
        mig_set_params(src, "source", o, &err) < 0 ||
        prepare_destination(dst, o, uri, sizeof uri, &err) < 0 ||
        (o->postcopy != MIG_PC_NONE && mig_pc_check_caps(src, dst, &err) < 0)) {
        cli_err("migrate", "%s", err.msg);
        goto out;
    }
    mig_bw bw = {0};
    mig_rec rec;
    mig_rec_init(&rec, o->auto_recover);
    mig_pc pc;
    mig_pc_init(&pc, o, o->postcopy == MIG_PC_DEFAULT && mig_is_livemig(src));
    json_t *args = json_pack("{s:s}", "uri", uri);
    mig_plot_start(&mp, cli_now_ms());
    int rc = qmpc_call(src, "migrate", args, NULL, &err);
    json_decref(args);
    if (rc < 0) {
        cli_err("migrate", "source: %s", err.msg);
        goto out;
    }
    progress_init(&p, !o->json && o->progress != MIG_PROGRESS_NONE);
    if (p.enabled && !p.tty)
        printf("migrating %s -> %s via %s\n", o->src, o->dst, uri);

    for (;;) {
        uint64_t now = cli_now_ms();
        if (cli_interrupted && !cancel_sent) {
            interrupted = true;
            fprintf(stderr, "livemig migrate: interrupted, cancelling the migration\n");
        } else if (now >= deadline && !cancel_sent) {
            timed_out = true;
            fprintf(stderr, "livemig migrate: no final status after %d s, cancelling\n",
                    o->timeout_s);
        }
        if ((interrupted || timed_out) && !cancel_sent) {
            lm_error_clear(&err);
            if (qmpc_call(src, "migrate_cancel", NULL, NULL, &err) < 0)
                cli_err("migrate", "source: %s", err.msg);
            cancel_sent = true;
            cancel_deadline = now + CANCEL_WAIT_MS;
        }
        if (cancel_sent && now >= cancel_deadline) {
            cli_err("migrate", "source did not reach a final status %d s after cancel",
                    CANCEL_WAIT_MS / 1000);
            break;
        }

        json_decref(src_raw);
        src_raw = NULL;
        lm_error_clear(&err);
        if (qmpc_query_migrate(src, &s, &src_raw, &err) < 0) {
            if (p.enabled && p.tty)
                p.lines = 0;
            cli_err("migrate", "source: %s", err.msg);
            goto out;
        }
        uint64_t seen = cli_now_ms(); /* the sample's time, before any wait below */
        /* postcopy-paused waits for a recovery (not a final status for
         * QMP, but nothing this command can move on). */
        bool paused = !strcmp(s.status, "postcopy-paused");
        if (paused && mig_rec_can_try(&rec) && !cancel_sent) {
            /* --auto-recover: a fresh URI on the destination, the source
             * resumes; the attempt waits (bounded) for its outcome, then
             * this loop goes on with whatever the source says. */
            progress_show(&p, &s, false);
            mig_pc_note_status(&pc, s.status);
            mig_rec_attempt(&rec, src, dst, uri, s.error_desc[0] ? s.error_desc : "no error-desc",
                            deadline, &p, !p.enabled);
            continue;
        }
        bool final = qmpc_status_final(s.status) || paused;
        if (final) /* QEMU's completion figures come after its event */
            mig_wait_figures(src, &s, &src_raw);
        progress_show(&p, &s, final);
        mig_plot_poll(&mp, &s, dst, seen);
        if (final) {
            end_ms = seen;
            break;
        }
        mig_bw_sample(&bw, &s);
        /* "postcopy requested: REASON", then "switched to postcopy" once
         * the source reports it: above the redrawn block, which moves
         * down (progress_note). */
        const char *line = mig_pc_poll(&pc, o, src, &s, now, start);
        if (line && !o->json)
            progress_note(&p, "%s", line);

        /* Sleep until the next poll, woken early by a MIGRATION event; the
         * plot takes the events it draws (passes, stop, postcopy), the
         * postcopy policy the status changes. */
        mig_wait_events(src, now + POLL_MS, &mp, pc_event, &pc);
    }

    /* The rest of the status history, and of the picture's events. */
    mig_drain_events(src, &mp, pc_event, &pc);

    /* The destination decides last (it may still be loading the end of the
     * stream): wait, bounded, for its own final status. */
    uint64_t dst_deadline = cli_now_ms() + DST_WAIT_MS;
    for (;;) {
        json_decref(dst_raw);
        dst_raw = NULL;
        lm_error_clear(&err);
        if (qmpc_query_migrate(dst, &d, &dst_raw, &err) < 0) {
            if (!strcmp(s.status, "completed"))
                cli_err("migrate", "destination: %s", err.msg);
            memset(&d, 0, sizeof d);
            break;
        }
        if (qmpc_status_final(d.status) || strcmp(s.status, "completed") ||
            cli_now_ms() >= dst_deadline || cli_interrupted)
            break;
        usleep(20 * 1000);
    }

    const char *note = timed_out ? "timed out" : interrupted ? "interrupted" : NULL;
    if (o->json) {
        json_t *j = mig_summary_json(&s, src_raw, dst_raw, uri, cli_now_ms() - start, timed_out,
                                     interrupted, &pc);
        if (o->auto_recover)
            json_object_set_new(j, "recovery", mig_rec_json(&rec));
        char *txt = json_dumps(j, JSON_INDENT(2));
        if (txt)
            printf("%s\n", txt);
        free(txt);
        json_decref(j);
    } else {
        mig_print_summary(&s, &d, note, &pc, stdout);
        mig_rec_print(&rec, stdout);
    }
    fflush(stdout);
    mig_bandwidth_hint(src, &bw);
    bool plot_ok =
        mig_plot_finish(&mp, "migrate", &s, end_ms ? end_ms : cli_now_ms(), o->json) == 0;
    if (plot_ok && !strcmp(s.status, "completed") && !timed_out && !interrupted) {
        if (!strcmp(d.status, "failed"))
            cli_err("migrate", "the source completed but the destination failed%s%s",
                    d.error_desc[0] ? ": " : "", d.error_desc);
        else
            ret = CLI_EXIT_OK;
    }

out:
    mig_plot_close(&mp);
    json_decref(src_raw);
    json_decref(dst_raw);
    lm_qmp_client_close(src);
    lm_qmp_client_close(dst);
    return ret;
}

/* ---------------------------------------------------------- subcommands */

enum {
    O_SRC = 1,
    O_DST,
    O_URI,
    O_CAP,
    O_PARAM,
    O_JSON,
    O_TIMEOUT,
    O_MULTIFD,
    O_COMPRESS,
    O_POSTCOPY,
    O_AUTO_POSTCOPY,
    O_PLOT,
    O_PLOT_SIZE,
    O_AUTO_RECOVER
};

static void mig_opts_free(mig_opts *o)
{
    for (int i = 0; i < o->ncaps; i++)
        free((char *)o->cap_name[i]);
    for (int i = 0; i < o->nparams; i++)
        free((char *)o->param_name[i]);
}

int cmd_migrate(int argc, char **argv)
{
    static const cli_opt opts[] = {
        {"src", true, O_SRC},
        {"dst", true, O_DST},
        {"uri", true, O_URI},
        {"cap", true, O_CAP},
        {"param", true, O_PARAM},
        {"json", false, O_JSON},
        {"timeout", true, O_TIMEOUT},
        {"multifd", true, O_MULTIFD},
        {"compress", true, O_COMPRESS},
        {"postcopy", false, O_POSTCOPY, true},
        {"auto-postcopy", false, O_AUTO_POSTCOPY, true},
        {"plot", true, O_PLOT},
        {"plot-size", true, O_PLOT_SIZE},
        {"auto-recover", false, O_AUTO_RECOVER, true},
        {NULL, false, 0},
    };
    static const char *const methods[] = {"none", "zlib", "zstd", "lz4"};
    char mfd_spec[2][64];
    bool mfd = false;
    mig_opts o;
    memset(&o, 0, sizeof o);
    o.timeout_s = 600;
    o.plot_w = PLOT_DEFAULT_W;
    o.plot_h = PLOT_DEFAULT_H;
    cli_args a;
    cli_args_init(&a, "migrate", argc, argv);
    const char *v;
    int id, ret = CLI_EXIT_USAGE;
    uint64_t n;

    while ((id = cli_next(&a, opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            goto out;
        case CLI_HELP:
            usage_migrate(stdout);
            ret = CLI_EXIT_OK;
            goto out;
        case CLI_POS:
            cli_err("migrate", "unexpected argument '%s'", v);
            goto out;
        case O_SRC:
            o.src = v;
            break;
        case O_DST:
            o.dst = v;
            break;
        case O_URI:
            o.uri = v;
            break;
        case O_CAP:
            if (!mig_opts_add_cap(&o, "migrate", v))
                goto out;
            break;
        case O_PARAM:
            if (!mig_opts_add_param(&o, "migrate", v))
                goto out;
            break;
        case O_MULTIFD:
            if (!cli_parse_u64(v, &n) || n < 1 || n > 255) {
                cli_err("migrate", "--multifd: '%s' is not a number of channels in 1..255", v);
                goto out;
            }
            snprintf(mfd_spec[0], sizeof mfd_spec[0], "multifd-channels=%s", v);
            if (!mig_opts_add_param(&o, "migrate", mfd_spec[0]))
                goto out;
            mfd = true;
            break;
        case O_COMPRESS: {
            bool known = false;
            for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
                known |= !strcmp(v, methods[i]);
            if (!known) {
                cli_err("migrate", "--compress: unknown method '%s' (none, zlib, zstd, lz4)", v);
                goto out;
            }
            snprintf(mfd_spec[1], sizeof mfd_spec[1], "multifd-compression=%s", v);
            if (!mig_opts_add_param(&o, "migrate", mfd_spec[1]))
                goto out;
            mfd = true;
            break;
        }
        case O_JSON:
            o.json = true;
            break;
        case O_PLOT:
            o.plot = v;
            break;
        case O_PLOT_SIZE:
            if (!mig_plot_parse_size(v, &o.plot_w, &o.plot_h)) {
                cli_err("migrate", "--plot-size: '%s' is not WIDTHxHEIGHT (200..8000 each)", v);
                goto out;
            }
            break;
        case O_TIMEOUT:
            if (!cli_parse_u64(v, &n) || n < 1 || n > 86400 * 7) {
                cli_err("migrate", "--timeout: '%s' is not a number of seconds >= 1", v);
                goto out;
            }
            o.timeout_s = (int)n;
            break;
        case O_POSTCOPY:
            if (o.postcopy != MIG_PC_NONE) {
                cli_err("migrate", "--postcopy given twice or with --auto-postcopy");
                goto out;
            }
            if (!mig_parse_postcopy(&o, v))
                goto out;
            break;
        case O_AUTO_RECOVER:
            o.auto_recover = MIG_REC_DEFAULT;
            if (v && *v) {
                if (!cli_parse_u64(v, &n) || n < 1 || n > MIG_REC_MAX) {
                    cli_err("migrate", "--auto-recover: '%s' is not a number of attempts in 1..%d",
                            v, MIG_REC_MAX);
                    goto out;
                }
                o.auto_recover = (int)n;
            }
            break;
        case O_AUTO_POSTCOPY:
            if (o.postcopy != MIG_PC_NONE) {
                cli_err("migrate", "--auto-postcopy given twice or with --postcopy");
                goto out;
            }
            o.postcopy = MIG_PC_AUTO;
            o.postcopy_window_ms = 3000;
            if (v && *v) {
                if (!cli_parse_u64(v, &n) || n < 1 || n > 3600) {
                    cli_err("migrate",
                            "--auto-postcopy: '%s' is not a number of seconds "
                            "in 1..3600",
                            v);
                    goto out;
                }
                o.postcopy_window_ms = n * 1000;
            }
            break;
        }
    }
    for (int i = 0; i < o.ncaps && o.postcopy != MIG_PC_NONE; i++) {
        if (!strcmp(o.cap_name[i], "postcopy-ram") && !o.cap_on[i]) {
            cli_err("migrate", "--cap postcopy-ram=off contradicts --postcopy/--auto-postcopy");
            goto out;
        }
    }
    if (mfd && !mig_opts_add_cap(&o, "migrate", "multifd=on"))
        goto out;
    if (!o.src || !o.dst || !o.uri) {
        cli_err("migrate", "missing %s (see 'livemig help migrate')",
                !o.src   ? "--src"
                : !o.dst ? "--dst"
                         : "--uri");
        goto out;
    }
    if (o.auto_recover && o.postcopy == MIG_PC_NONE) {
        cli_err("migrate", "--auto-recover needs --postcopy or --auto-postcopy (only a postcopy "
                           "migration pauses)");
        goto out;
    }
    if (o.auto_recover && strncmp(o.uri, "tcp:", 4) && strncmp(o.uri, "unix:", 5)) {
        cli_err("migrate",
                "--auto-recover needs a tcp: or unix: --uri (its attempts use a new "
                "URI of the same transport), not '%s'",
                o.uri);
        goto out;
    }
    cli_catch_signals();
    ret = mig_run(&o);
out:
    mig_opts_free(&o);
    return ret;
}
