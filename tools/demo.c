/*
 * demo.c - `livemig demo`: the end-to-end job on one machine.  Starts a
 * source guest (random workload, every page pre-written) and a destination
 * guest (--incoming defer) as child processes of this binary, migrates the
 * live source with the same engine as `livemig migrate`, lets the
 * destination run, then stops and verifies every page of it.
 *
 * Nothing is left behind: the children die with us (PR_SET_PDEATHSIG), a
 * Ctrl-C or SIGTERM only sets a flag that every (bounded) wait here checks,
 * and the cleanup path kills and reaps the children by pid and removes the
 * private directory (sockets and logs) in every case.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 60000
#define QUIT_WAIT_MS 5000
#define RUN_AFTER_MS 1000 /* how long the destination runs before checking */

void usage_demo(FILE *f)
{
    fprintf(f, "usage: livemig demo [--mem SIZE] [--dirty-rate RATE] [--keep-going]\n\n"
               "Starts a source guest (random workload, every page written once) and a\n"
               "destination guest on this machine, live-migrates the source over\n"
               "tcp:127.0.0.1 with live progress, lets the destination run, then stops it\n"
               "and verifies every page.  Leaves no process, socket or file behind.\n\n"
               "options:\n"
               "  --mem SIZE             guest RAM of each guest (default 1G)\n"
               "  --dirty-rate RATE      source workload dirty rate, bytes/s (default 100M)\n"
               "  --keep-going           go on after a failed migration: verify the source\n"
               "                         (which must have kept running) instead\n\n"
               "Exit status: 0 when the migration completed and verification is ok.\n");
}

typedef struct child {
    const char *role;
    pid_t pid;
    char sock[256];
    char log[256];
    bool reaped;
} child;

typedef struct demo {
    char dir[200];
    child src, dst;
} demo;

/* Reports (once) a child that has exited, with the end of its log. */
static bool child_gone(child *c)
{
    if (c->reaped)
        return true;
    int st;
    if (!cli_wait_child(c->pid, 0, &st))
        return false;
    c->reaped = true;
    if (WIFEXITED(st))
        cli_err("demo", "%s guest (pid %d) exited with status %d", c->role, (int)c->pid,
                WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        cli_err("demo", "%s guest (pid %d) killed by signal %d", c->role, (int)c->pid,
                WTERMSIG(st));
    cli_print_tail(c->log, 8);
    return true;
}

static int start_child(demo *d, child *c, const char *role, char *const extra[], const char *mem)
{
    lm_error err = {0};
    c->role = role;
    snprintf(c->sock, sizeof c->sock, "%s/%s.qmp", d->dir, role);
    snprintf(c->log, sizeof c->log, "%s/%s.log", d->dir, role);
    char qmp[300];
    snprintf(qmp, sizeof qmp, "unix:%s", c->sock);
    char *argv[32];
    int n = 0;
    argv[n++] = "livemig";
    argv[n++] = "guest";
    argv[n++] = "--qmp";
    argv[n++] = qmp;
    argv[n++] = "--mem";
    argv[n++] = (char *)mem;
    for (int i = 0; extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    if (cli_spawn_self(argv, c->log, &c->pid, &err) < 0) {
        cli_err("demo", "cannot start the %s guest: %s", role, err.msg);
        return -1;
    }
    return 0;
}

/* Waits (bounded) until both guests serve QMP. */
static int wait_ready(demo *d)
{
    uint64_t deadline = cli_now_ms() + READY_TIMEOUT_MS;
    child *cs[2] = {&d->src, &d->dst};
    for (int i = 0; i < 2; i++) {
        for (;;) {
            if (cli_interrupted)
                return -1;
            if (child_gone(cs[i]))
                return -1;
            struct stat sb;
            if (stat(cs[i]->sock, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
                qmpc *c = NULL;
                lm_error err = {0};
                if (qmpc_connect(cs[i]->sock, 2000, &c, &err) == 0) {
                    lm_qmp_client_close(c);
                    break;
                }
            }
            if (cli_now_ms() >= deadline) {
                cli_err("demo", "the %s guest did not serve QMP within %d s", cs[i]->role,
                        READY_TIMEOUT_MS / 1000);
                cli_print_tail(cs[i]->log, 8);
                return -1;
            }
            usleep(20 * 1000); /* a file appearing in another process: poll */
        }
    }
    return 0;
}

/* Sleeps ms, or less when interrupted. */
static void nap_ms(int ms)
{
    uint64_t end = cli_now_ms() + (uint64_t)ms;
    while (!cli_interrupted && cli_now_ms() < end)
        usleep(20 * 1000);
}

/* Lets the guest behind c run, shows its workload progress, stops it and
 * verifies every page.  Returns 0 when verification is ok. */
static int check_guest(child *c, bool expect_progress)
{
    qmpc *q = NULL;
    json_t *st = NULL, *v = NULL;
    lm_error err = {0};
    int rc = -1;
    char rate[32];

    if (qmpc_connect(c->sock, 5000, &q, &err) < 0) {
        cli_err("demo", "%s", err.msg);
        goto out;
    }
    /* Writes counted over the wait: a destination's counters continue the
     * source's (its "cpu" state moved with it), so only the difference
     * says whether the workload runs here. */
    if (qmpc_call(q, "x-guest-stats", NULL, &st, &err) < 0) {
        cli_err("demo", "%s: %s", c->role, err.msg);
        goto out;
    }
    json_int_t before = json_integer_value(json_object_get(st, "writes"));
    json_decref(st);
    st = NULL;
    nap_ms(RUN_AFTER_MS);
    if (cli_interrupted)
        goto out;
    if (qmpc_call(q, "x-guest-stats", NULL, &st, &err) < 0) {
        cli_err("demo", "%s: %s", c->role, err.msg);
        goto out;
    }
    json_int_t writes = json_integer_value(json_object_get(st, "writes")) - before;
    json_int_t r = json_integer_value(json_object_get(st, "rate"));
    bool running = json_is_true(json_object_get(st, "running"));
    printf("%s over %.1f s: %s, %lld page writes, %s\n", c->role, RUN_AFTER_MS / 1000.0,
           running ? "running" : "NOT running", (long long)writes,
           cli_fmt_rate(rate, sizeof rate, (double)r));
    if (expect_progress && (!running || writes <= 0)) {
        cli_err("demo", "the %s guest's workload made no progress", c->role);
        goto out;
    }
    if (qmpc_call(q, "stop", NULL, NULL, &err) < 0 ||
        qmpc_call(q, "x-guest-verify", NULL, &v, &err) < 0) {
        cli_err("demo", "%s: %s", c->role, err.msg);
        goto out;
    }
    bool ok = json_is_true(json_object_get(v, "ok"));
    json_int_t pages = json_integer_value(json_object_get(v, "pages"));
    json_int_t bad = json_integer_value(json_object_get(v, "bad-pages"));
    json_int_t written = json_integer_value(json_object_get(v, "written-pages"));
    json_int_t first = json_integer_value(json_object_get(v, "first-bad"));
    if (ok)
        printf("verify %s: ok, %lld pages checked (%lld written, the rest zero), 0 bad\n", c->role,
               (long long)pages, (long long)written);
    else
        printf("verify %s: FAILED, %lld of %lld pages bad, first bad page %lld\n", c->role,
               (long long)bad, (long long)pages, (long long)first);
    rc = ok ? 0 : -1;
out:
    json_decref(st);
    json_decref(v);
    lm_qmp_client_close(q);
    return rc;
}

/* Asks a guest to quit over QMP, then makes sure it is gone.  Returns false
 * when a guest asked to quit did not exit cleanly (a crash on the way out
 * is a bug too); its log is shown then. */
static bool stop_child(child *c, bool polite)
{
    if (c->pid <= 0 || c->reaped)
        return true;
    if (polite && !cli_interrupted) {
        qmpc *q = NULL;
        lm_error err = {0};
        int st;
        if (qmpc_connect(c->sock, 2000, &q, &err) == 0) {
            qmpc_call(q, "quit", NULL, NULL, &err);
            lm_qmp_client_close(q);
        }
        if (cli_wait_child(c->pid, QUIT_WAIT_MS, &st)) {
            c->reaped = true;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                return true;
            cli_err("demo", "the %s guest (pid %d) did not exit cleanly on quit (%s %d)", c->role,
                    (int)c->pid, WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            cli_print_tail(c->log, 8);
            return false;
        }
        cli_err("demo", "the %s guest (pid %d) did not quit, killing it", c->role, (int)c->pid);
        cli_print_tail(c->log, 8);
        cli_kill_child(c->pid, 3000);
        c->reaped = true;
        return false;
    }
    cli_kill_child(c->pid, 3000);
    c->reaped = true;
    return true;
}

enum { O_MEM = 1, O_RATE, O_KEEP };

int cmd_demo(int argc, char **argv)
{
    static const cli_opt opts[] = {
        {"mem", true, O_MEM},
        {"dirty-rate", true, O_RATE},
        {"keep-going", false, O_KEEP},
        {NULL, false, 0},
    };
    cli_args a;
    cli_args_init(&a, "demo", argc, argv);
    const char *v, *mem = "1G", *rate = "100M";
    bool keep_going = false;
    uint64_t n;
    int id;

    while ((id = cli_next(&a, opts, &v)) != CLI_END) {
        switch (id) {
        case CLI_ERR:
            return CLI_EXIT_USAGE;
        case CLI_HELP:
            usage_demo(stdout);
            return CLI_EXIT_OK;
        case CLI_POS:
            cli_err("demo", "unexpected argument '%s'", v);
            return CLI_EXIT_USAGE;
        case O_MEM:
            if (!cli_parse_size(v, &n) || n < (1u << 20) || n % 4096) {
                cli_err("demo", "--mem: bad size '%s' (a multiple of 4K, >= 1M)", v);
                return CLI_EXIT_USAGE;
            }
            mem = v;
            break;
        case O_RATE:
            if (!cli_parse_size(v, &n)) {
                cli_err("demo", "--dirty-rate: bad rate '%s' (bytes/s, e.g. 100M)", v);
                return CLI_EXIT_USAGE;
            }
            rate = v;
            break;
        case O_KEEP:
            keep_going = true;
            break;
        }
    }

    cli_catch_signals();
    demo d;
    memset(&d, 0, sizeof d);
    int ret = CLI_EXIT_FAIL;
    bool migrated = false, verified = false, polite = true;

    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > 60)
        tmp = "/tmp"; /* unix socket paths are limited to 107 bytes */
    snprintf(d.dir, sizeof d.dir, "%s/livemig-demo.XXXXXX", tmp);
    if (!mkdtemp(d.dir)) {
        cli_err("demo", "cannot create a directory in %s: %s", tmp, strerror(errno));
        return CLI_EXIT_FAIL;
    }

    char *src_extra[] = {"--workload", "random", "--dirty-rate", (char *)rate, "--threads",
                         "1",          "--fill", "random",       NULL};
    /* The destination runs the same workload once it resumes, continuing
     * from the migrated ledger.  Its memory is preallocated while the
     * source fills its own (QEMU's -mem-prealloc): a cold destination is
     * paced by the kernel zeroing fresh pages (docs/benchmarks.md). */
    char *dst_extra[] = {"--workload", "random",     "--dirty-rate", (char *)rate, "--threads",
                         "1",          "--incoming", "defer",        "--prealloc", NULL};
    if (start_child(&d, &d.src, "source", src_extra, mem) < 0 ||
        start_child(&d, &d.dst, "destination", dst_extra, mem) < 0)
        goto out;
    char rbuf[32];
    uint64_t rate_b = 0;
    cli_parse_size(rate, &rate_b);
    printf("demo: source guest pid %d (%s, random workload at %s, every page written), "
           "destination guest pid %d (memory preallocated)\n",
           (int)d.src.pid, mem, cli_fmt_rate(rbuf, sizeof rbuf, (double)rate_b), (int)d.dst.pid);
    fflush(stdout);
    if (wait_ready(&d) < 0)
        goto out;

    char src_q[300], dst_q[300];
    snprintf(src_q, sizeof src_q, "unix:%s", d.src.sock);
    snprintf(dst_q, sizeof dst_q, "unix:%s", d.dst.sock);
    mig_opts o;
    memset(&o, 0, sizeof o);
    o.src = src_q;
    o.dst = dst_q;
    o.uri = "tcp:127.0.0.1:0";
    o.timeout_s = 120;
    o.progress = MIG_PROGRESS_AUTO;
    o.param_name[0] = "max-bandwidth";
    o.param_value[0] = "0"; /* unlimited: loopback is the only limit */
    o.nparams = 1;
    migrated = mig_run(&o) == CLI_EXIT_OK;
    if (cli_interrupted)
        goto out;

    if (migrated) {
        verified = check_guest(&d.dst, true) == 0;
    } else if (keep_going) {
        /* A failed precopy must leave the source running and intact. */
        if (child_gone(&d.src))
            goto out;
        printf("migration failed; checking that the source kept running intact\n");
        check_guest(&d.src, true);
    }
    if (migrated && verified)
        ret = CLI_EXIT_OK;

out:
    if (cli_interrupted) {
        /* A Ctrl-C after the verdict only makes the teardown quicker. */
        if (ret != CLI_EXIT_OK)
            fprintf(stderr, "livemig demo: interrupted, stopping the guests\n");
        polite = false;
    }
    if (ret != CLI_EXIT_OK && !cli_interrupted) {
        /* Say which guest died, or show what a live one said, before the
         * logs go away with the directory. */
        for (child *c = &d.src; c <= &d.dst; c++) {
            if (c->pid <= 0 || c->reaped || child_gone(c))
                continue;
            fprintf(stderr, "%s guest log:\n", c->role);
            cli_print_tail(c->log, 8);
        }
    }
    bool clean = stop_child(&d.src, polite);
    clean = stop_child(&d.dst, polite) && clean;
    if (!clean)
        ret = CLI_EXIT_FAIL;
    cli_rm_dir(d.dir);
    if (ret == CLI_EXIT_OK)
        printf("demo: ok (migration completed, every page verified, guests gone)\n");
    else
        fprintf(stderr, "livemig demo: FAILED%s\n", cli_interrupted ? " (interrupted)" : "");
    return ret;
}
