/*
 * snapshot.c - `livemig save` and `livemig restore`: a guest to a file and
 * back, over QMP with QEMU's own commands (a thin layer over the file: URI,
 * docs/format.md §9).  save is `migrate file:PATH[,offset=N]` on one host,
 * restore is `migrate-incoming file:PATH[,offset=N]` on a host started with
 * --incoming defer; both show the same progress display as `livemig
 * migrate` (watch.c) and end with its summary (mig_end.c).
 *
 * Every capability a flag stands for is set explicitly, on or off, so an
 * earlier run on the same host does not leak into this one:
 *
 *   save     background-snapshot  --background
 *            mapped-ram           --mapped-ram
 *            multifd              --multifd N (parameter multifd-channels=N)
 *            direct-io parameter  --direct-io (needs --mapped-ram)
 *            max-bandwidth=0      always, unless --param max-bandwidth=...
 *   restore  mapped-ram, multifd, multifd-channels, direct-io: as save
 *            x-lazy-restore       --lazy (set alone, only when asked)
 */
#include "cli.h"
#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define POLL_MS 100
#define CONNECT_TIMEOUT_MS 5000
#define CANCEL_WAIT_MS 10000

typedef struct snap_opts {
    mig_opts m; /* src or dst, caps, params, json, timeout */
    const char *file;
    bool restore;
    bool live, background, lazy, mapped, direct, has_offset;
    uint64_t offset;
    unsigned multifd;
    char uri[4200];
} snap_opts;

/* ---------------------------------------------------------------- usage */

static void usage_common(FILE *f)
{
    fprintf(f, "  --file PATH            the snapshot file\n"
               "  --multifd N            N channels (1..255): capability multifd=on and\n"
               "                         parameter multifd-channels=N; without it multifd=off\n"
               "  --mapped-ram           capability mapped-ram=on (every page at a fixed\n"
               "                         place in the file, docs/format.md §9); without it\n"
               "                         mapped-ram=off (the ordinary stream)\n"
               "  --direct-io            parameter direct-io=true (O_DIRECT page I/O; needs\n"
               "                         --mapped-ram); without it direct-io=false\n"
               "  --offset N             the stream starts at byte N of the file (URI\n"
               "                         file:PATH,offset=N; K/M/G allowed)\n"
               "  --cap NAME=on|off      any other capability (repeatable)\n"
               "  --param NAME=VALUE     any other parameter (repeatable)\n"
               "  --json                 print one JSON object at the end, no progress\n"
               "  --timeout SECONDS      give up after this long (default 600)\n");
}

void usage_save(FILE *f)
{
    fprintf(f, "usage: livemig save --src SOCK --file PATH [--live|--background] [options]\n\n"
               "Saves the guest behind QMP socket SOCK (a livemig guest or a QEMU) to a\n"
               "file: `migrate file:PATH`.  A running guest is saved live (--live, the\n"
               "default): the ordinary precopy passes, then the guest stops for the last\n"
               "one and stays paused (postmigrate), as QEMU leaves it.  --background\n"
               "(capability background-snapshot=on) saves the memory as it was at the\n"
               "start while the guest keeps running (paused only for device state); it\n"
               "excludes --multifd and --mapped-ram.  A stopped guest is saved as it is.  "
               "max-bandwidth is\n"
               "set to 0 (unlimited) unless --param max-bandwidth=... is given.\n\n"
               "options:\n"
               "  --src SOCK             QMP socket of the guest (unix:PATH or PATH)\n"
               "  --live                 precopy to the file (default)\n"
               "  --background           capability background-snapshot=on\n");
    usage_common(f);
    fprintf(f, "\nExit status: 0 completed, 1 failed/cancelled/timed out, 2 usage.  Ctrl-C\n"
               "cancels the save (the guest keeps running).\n");
}

void usage_restore(FILE *f)
{
    fprintf(f, "usage: livemig restore --dst SOCK --file PATH [--lazy] [options]\n\n"
               "Restores a file written by `livemig save` (or `migrate file:PATH`) into the\n"
               "host behind QMP socket SOCK, which must wait with --incoming defer:\n"
               "`migrate-incoming file:PATH`.  The file's settings must be given again:\n"
               "--mapped-ram and --direct-io as it was saved (any --multifd N: the readers\n"
               "are the destination's own).  The guest runs when the load completes.\n\n"
               "options:\n"
               "  --dst SOCK             QMP socket of the waiting host\n"
               "  --lazy                 capability x-lazy-restore=on: the guest runs at\n"
               "                         once and pages come from the file on demand\n"
               "                         (destinations that offer it)\n");
    usage_common(f);
    fprintf(f, "\nExit status: 0 completed, 1 failed/timed out, 2 usage.\n");
}

/* -------------------------------------------------------------- engine */

static int set_lazy(qmpc *dst, lm_error *err)
{
    json_t *args =
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-lazy-restore", "state", 1);
    int rc = qmpc_call(dst, "migrate-set-capabilities", args, NULL, err);
    json_decref(args);
    if (rc < 0)
        lm_error_prefix(err, "--lazy: the destination refused capability x-lazy-restore");
    return rc;
}

/* The host must wait for migrate-incoming (--incoming defer). */
static int check_deferred(qmpc *dst, lm_error *err)
{
    json_t *st = NULL, *qm = NULL;
    qmpc_mig q;
    int rc = qmpc_call(dst, "query-status", NULL, &st, err);
    if (rc < 0)
        goto out;
    const char *rs = json_string_value(json_object_get(st, "status"));
    if (!rs || strcmp(rs, "inmigrate")) {
        rc = lm_error_set(err, -EINVAL,
                          "the host is not waiting for a migration (run state '%s'; start it "
                          "with --incoming defer)",
                          rs ? rs : "?");
        goto out;
    }
    if ((rc = qmpc_query_migrate(dst, &q, &qm, err)) < 0)
        goto out;
    /* Waiting: nothing started, or an earlier restore ended (a refused
     * file leaves the host waiting for another one). */
    bool waiting = !strcmp(q.status, "none") || qmpc_status_final(q.status);
    if (!waiting || json_object_get(qm, "socket-address"))
        rc = lm_error_set(err, -EBUSY,
                          "the host already has an incoming migration (status '%s'); start it "
                          "with --incoming defer",
                          q.status);
out:
    json_decref(st);
    json_decref(qm);
    return rc;
}

/* The destination's query-migrate has no RAM figures: the file's size
 * (when this machine sees it) over the load's total time says the rate. */
static void restore_summary(const snap_opts *so, const qmpc_mig *s, const char *note)
{
    char tt[32], sz[32], tp[32];
    struct stat st;
    printf("restore %s%s%s%s\n", s->status[0] ? s->status : "?", note ? " (" : "", note ? note : "",
           note ? ")" : "");
    if (s->total_time >= 0)
        printf("  total time    %s\n", cli_fmt_ms(tt, sizeof tt, (double)s->total_time));
    if (stat(so->file, &st) == 0 && (uint64_t)st.st_size >= so->offset) {
        double bytes = (double)((uint64_t)st.st_size - so->offset);
        printf("  file          %s from byte %llu\n", cli_fmt_bytes(sz, sizeof sz, bytes),
               (unsigned long long)so->offset);
        if (!strcmp(s->status, "completed") && s->total_time > 0)
            printf("  throughput    %s\n",
                   cli_fmt_rate(tp, sizeof tp, bytes * 1000.0 / (double)s->total_time));
    }
    if (s->error_desc[0])
        printf("  error         %s\n", s->error_desc);
}

static int snap_run(const snap_opts *so)
{
    const mig_opts *o = &so->m;
    const char *cmd = so->restore ? "restore" : "save";
    const char *side = so->restore ? "destination" : "source";
    qmpc *c = NULL;
    json_t *raw = NULL;
    lm_error err = {0};
    int ret = CLI_EXIT_FAIL;
    qmpc_mig s;
    progress p;
    mig_plot mp = {0};
    bool cancel_sent = false, timed_out = false, interrupted = false;
    uint64_t start = cli_now_ms(), cancel_deadline = 0;
    uint64_t deadline = start + (uint64_t)o->timeout_s * 1000;

    memset(&s, 0, sizeof s);
    s.total_time = s.setup_time = s.downtime = s.expected_downtime = -1;
    if (qmpc_connect(so->restore ? o->dst : o->src, CONNECT_TIMEOUT_MS, &c, &err) < 0 ||
        (so->restore && check_deferred(c, &err) < 0) || mig_set_caps(c, side, o, true, &err) < 0 ||
        (so->lazy && set_lazy(c, &err) < 0) || mig_set_params(c, side, o, &err) < 0) {
        cli_err(cmd, "%s", err.msg);
        goto out;
    }
    json_t *args = json_pack("{s:s}", "uri", so->uri);
    int rc = qmpc_call(c, so->restore ? "migrate-incoming" : "migrate", args, NULL, &err);
    json_decref(args);
    if (rc < 0) {
        cli_err(cmd, "%s: %s", side, err.msg);
        goto out;
    }
    progress_init(&p, !o->json);
    if (p.enabled && !p.tty)
        printf("%s%s %s via %s\n", so->restore ? "restoring" : "saving", so->restore ? " into" : "",
               so->restore ? o->dst : o->src, so->uri);

    for (;;) {
        uint64_t now = cli_now_ms();
        if (!cancel_sent && (cli_interrupted || now >= deadline)) {
            interrupted = cli_interrupted;
            timed_out = !interrupted;
            if (so->restore) {
                /* QEMU has no command to stop an incoming migration. */
                cli_err(cmd, "%s; the destination goes on loading",
                        interrupted ? "interrupted"
                                    : "no final status "
                                      "before the timeout");
                break;
            }
            fprintf(stderr, "livemig save: %s, cancelling\n",
                    interrupted ? "interrupted" : "no final status before the timeout");
            lm_error_clear(&err);
            if (qmpc_call(c, "migrate_cancel", NULL, NULL, &err) < 0)
                cli_err(cmd, "source: %s", err.msg);
            cancel_sent = true;
            cancel_deadline = now + CANCEL_WAIT_MS;
        }
        if (cancel_sent && now >= cancel_deadline) {
            cli_err(cmd, "the source did not reach a final status %d s after cancel",
                    CANCEL_WAIT_MS / 1000);
            break;
        }
        json_decref(raw);
        raw = NULL;
        lm_error_clear(&err);
        if (qmpc_query_migrate(c, &s, &raw, &err) < 0) {
            cli_err(cmd, "%s: %s", side, err.msg);
            goto out;
        }
        bool final = qmpc_status_final(s.status);
        if (final && !so->restore)
            mig_wait_figures(c, &s, &raw);
        progress_show(&p, &s, final);
        if (final)
            break;
        mig_wait_events(c, now + POLL_MS, &mp, NULL, NULL);
    }
    mig_drain_events(c, &mp, NULL, NULL);

    const char *note = timed_out ? "timed out" : interrupted ? "interrupted" : NULL;
    if (o->json) {
        json_t *j = mig_summary_json(&s, so->restore ? NULL : raw, so->restore ? raw : NULL,
                                     so->uri, cli_now_ms() - start, timed_out, interrupted, NULL);
        char *txt = json_dumps(j, JSON_INDENT(2));
        if (txt)
            printf("%s\n", txt);
        free(txt);
        json_decref(j);
    } else if (so->restore) {
        restore_summary(so, &s, note);
    } else {
        mig_print_summary(&s, NULL, note, NULL, stdout);
    }
    fflush(stdout);
    if (!strcmp(s.status, "completed") && !timed_out && !interrupted)
        ret = CLI_EXIT_OK;
    else if (s.error_desc[0])
        cli_err(cmd, "%s: %s", side, s.error_desc);
    else if (!note)
        cli_err(cmd, "%s: migration %s", side, s.status);

out:
    json_decref(raw);
    lm_qmp_client_close(c);
    return ret;
}

/* ---------------------------------------------------------- subcommands */

enum {
    O_SRC = 1,
    O_DST,
    O_FILE,
    O_LIVE,
    O_BACKGROUND,
    O_LAZY,
    O_MULTIFD,
    O_MAPPED,
    O_DIRECT,
    O_OFFSET,
    O_CAP,
    O_PARAM,
    O_JSON,
    O_TIMEOUT
};

static bool add(snap_opts *so, const char *cmd, bool cap, const char *spec)
{
    return cap ? mig_opts_add_cap(&so->m, cmd, spec) : mig_opts_add_param(&so->m, cmd, spec);
}

/* The capabilities and parameters the flags stand for, each explicitly. */
static bool snap_settings(snap_opts *so, const char *cmd, char *chan_spec, size_t cap)
{
    bool bw = false;
    for (int i = 0; i < so->m.nparams; i++)
        bw |= !strcmp(so->m.param_name[i], "max-bandwidth");
    snprintf(chan_spec, cap, "multifd-channels=%u", so->multifd);
    return add(so, cmd, true, so->mapped ? "mapped-ram=on" : "mapped-ram=off") &&
           add(so, cmd, true, so->multifd ? "multifd=on" : "multifd=off") &&
           (so->restore ||
            add(so, cmd, true,
                so->background ? "background-snapshot=on" : "background-snapshot=off")) &&
           (!so->multifd || add(so, cmd, false, chan_spec)) &&
           add(so, cmd, false, so->direct ? "direct-io=true" : "direct-io=false") &&
           (so->restore || bw || add(so, cmd, false, "max-bandwidth=0"));
}

static int snap_main(int argc, char **argv, bool restore)
{
    static const cli_opt save_opts[] = {
        {"src", true, O_SRC},
        {"file", true, O_FILE},
        {"live", false, O_LIVE},
        {"background", false, O_BACKGROUND},
        {"multifd", true, O_MULTIFD},
        {"mapped-ram", false, O_MAPPED},
        {"direct-io", false, O_DIRECT},
        {"offset", true, O_OFFSET},
        {"cap", true, O_CAP},
        {"param", true, O_PARAM},
        {"json", false, O_JSON},
        {"timeout", true, O_TIMEOUT},
        {NULL, false, 0},
    };
    static const cli_opt restore_opts[] = {
        {"dst", true, O_DST},
        {"file", true, O_FILE},
        {"lazy", false, O_LAZY},
        {"multifd", true, O_MULTIFD},
        {"mapped-ram", false, O_MAPPED},
        {"direct-io", false, O_DIRECT},
        {"offset", true, O_OFFSET},
        {"cap", true, O_CAP},
        {"param", true, O_PARAM},
        {"json", false, O_JSON},
        {"timeout", true, O_TIMEOUT},
        {NULL, false, 0},
    };
    const char *cmd = restore ? "restore" : "save";
    snap_opts so;
    memset(&so, 0, sizeof so);
    so.restore = restore;
    so.m.timeout_s = 600;
    so.m.progress = MIG_PROGRESS_AUTO;
    char chan_spec[64];
    cli_args a;
    cli_args_init(&a, cmd, argc, argv);
    const char *v;
    int id, ret = CLI_EXIT_USAGE;
    uint64_t n;

    while ((id = cli_next(&a, restore ? restore_opts : save_opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            goto out;
        case CLI_HELP:
            (restore ? usage_restore : usage_save)(stdout);
            ret = CLI_EXIT_OK;
            goto out;
        case CLI_POS:
            cli_err(cmd, "unexpected argument '%s'", v);
            goto out;
        case O_SRC:
            so.m.src = v;
            break;
        case O_DST:
            so.m.dst = v;
            break;
        case O_FILE:
            if (!*v || strchr(v, ',')) {
                cli_err(cmd, "--file: '%s' is %s", v,
                        *v ? "a path with a ',' (the file: URI cannot carry it)" : "empty");
                goto out;
            }
            so.file = v;
            break;
        case O_LIVE:
            so.live = true;
            break;
        case O_BACKGROUND:
            so.background = true;
            break;
        case O_LAZY:
            so.lazy = true;
            break;
        case O_MAPPED:
            so.mapped = true;
            break;
        case O_DIRECT:
            so.direct = true;
            break;
        case O_MULTIFD:
            if (!cli_parse_u64(v, &n) || n < 1 || n > 255) {
                cli_err(cmd, "--multifd: '%s' is not a number of channels in 1..255", v);
                goto out;
            }
            so.multifd = (unsigned)n;
            break;
        case O_OFFSET:
            if (!cli_parse_size(v, &n) || n > INT64_MAX) {
                cli_err(cmd, "--offset: '%s' is not a byte offset (K/M/G allowed)", v);
                goto out;
            }
            so.offset = n;
            so.has_offset = true;
            break;
        case O_CAP:
            if (!mig_opts_add_cap(&so.m, cmd, v))
                goto out;
            break;
        case O_PARAM:
            if (!mig_opts_add_param(&so.m, cmd, v))
                goto out;
            break;
        case O_JSON:
            so.m.json = true;
            break;
        case O_TIMEOUT:
            if (!cli_parse_u64(v, &n) || n < 1 || n > 86400 * 7) {
                cli_err(cmd, "--timeout: '%s' is not a number of seconds >= 1", v);
                goto out;
            }
            so.m.timeout_s = (int)n;
            break;
        }
    }
    if (!(restore ? so.m.dst : so.m.src) || !so.file) {
        cli_err(cmd, "missing %s (see 'livemig help %s')",
                !so.file  ? "--file"
                : restore ? "--dst"
                          : "--src",
                cmd);
        goto out;
    }
    if (so.live && so.background) {
        cli_err(cmd, "--live and --background exclude each other");
        goto out;
    }
    if (so.background && so.multifd) {
        cli_err(cmd, "--background excludes --multifd (a background snapshot writes from one "
                     "thread: capability background-snapshot is not compatible with multifd)");
        goto out;
    }
    if (so.background && so.mapped) {
        cli_err(cmd, "--background excludes --mapped-ram (a background snapshot writes the "
                     "ordinary stream)");
        goto out;
    }
    if (so.direct && !so.mapped) {
        cli_err(cmd, "--direct-io needs --mapped-ram (only its page I/O is aligned for "
                     "O_DIRECT)");
        goto out;
    }
    if (!snap_settings(&so, cmd, chan_spec, sizeof chan_spec))
        goto out;
    if (so.has_offset)
        snprintf(so.uri, sizeof so.uri, "file:%s,offset=%llu", so.file,
                 (unsigned long long)so.offset);
    else
        snprintf(so.uri, sizeof so.uri, "file:%s", so.file);
    cli_catch_signals();
    ret = snap_run(&so);
out:
    for (int i = 0; i < so.m.ncaps; i++)
        free((char *)so.m.cap_name[i]);
    for (int i = 0; i < so.m.nparams; i++)
        free((char *)so.m.param_name[i]);
    return ret;
}

int cmd_save(int argc, char **argv)
{
    return snap_main(argc, argv, false);
}

int cmd_restore(int argc, char **argv)
{
    return snap_main(argc, argv, true);
}
