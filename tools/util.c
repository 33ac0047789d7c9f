/*
 * util.c - option parsing, number parsing, human units, signals: the small
 * things every subcommand of the CLI shares.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------ messages */

void cli_err(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "livemig %s: %s\n", cmd, msg);
    else
        fprintf(stderr, "livemig: %s\n", msg);
}

/* ------------------------------------------------------ option parsing */

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv)
{
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
    a->i = 1; /* argv[0] is the subcommand name */
    a->no_more_opts = false;
}

int cli_next(cli_args *a, const cli_opt *opts, const char **val)
{
    *val = NULL;
    if (a->i >= a->argc)
        return CLI_END;
    const char *arg = a->argv[a->i++];
    if (a->no_more_opts || arg[0] != '-' || arg[1] == '\0') {
        *val = arg;
        return CLI_POS;
    }
    if (!strcmp(arg, "--")) {
        a->no_more_opts = true;
        return cli_next(a, opts, val);
    }
    if (!strcmp(arg, "-h") || !strcmp(arg, "--help"))
        return CLI_HELP;
    if (arg[1] != '-') {
        cli_err(a->cmd, "unknown option '%s' (try 'livemig help %s')", arg, a->cmd);
        return CLI_ERR;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    for (const cli_opt *o = opts; o && o->name; o++) {
        if (strlen(o->name) != nlen || strncmp(o->name, name, nlen))
            continue;
        if (!o->has_arg) {
            if (eq && o->opt_arg) {
                *val = eq + 1;
                return o->id;
            }
            if (eq) {
                cli_err(a->cmd, "option '--%s' takes no value", o->name);
                return CLI_ERR;
            }
            return o->id;
        }
        if (eq) {
            *val = eq + 1;
        } else {
            if (a->i >= a->argc) {
                cli_err(a->cmd, "option '--%s' needs a value", o->name);
                return CLI_ERR;
            }
            *val = a->argv[a->i++];
        }
        return o->id;
    }
    cli_err(a->cmd, "unknown option '--%.*s' (try 'livemig help %s')", (int)nlen, name, a->cmd);
    return CLI_ERR;
}

/* ------------------------------------------------- numbers and units */

bool cli_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

bool cli_parse_i64(const char *s, int64_t *out)
{
    if (!s || !(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]))))
        return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

bool cli_parse_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return false;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0':
        break;
    case 'K':
        shift = 10;
        end++;
        break;
    case 'M':
        shift = 20;
        end++;
        break;
    case 'G':
        shift = 30;
        end++;
        break;
    case 'T':
        shift = 40;
        end++;
        break;
    case 'B':
        break;
    default:
        return false;
    }
    /* Accept "64M", "64MB", "64MiB" and "4096B" alike. */
    if (shift && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return false;
    if (shift && v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

bool cli_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

const char *cli_fmt_bytes(char *buf, size_t cap, double b)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    if (b < 0)
        b = 0;
    while (b >= 1024 && u < 5) {
        b /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%.0f B", b);
    else
        snprintf(buf, cap, "%.*f %s", b < 10 ? 2 : b < 100 ? 1 : 0, b, unit[u]);
    return buf;
}

const char *cli_fmt_rate(char *buf, size_t cap, double bps)
{
    char tmp[32];
    snprintf(buf, cap, "%s/s", cli_fmt_bytes(tmp, sizeof tmp, bps));
    return buf;
}

const char *cli_fmt_ms(char *buf, size_t cap, double ms)
{
    if (ms < 0)
        snprintf(buf, cap, "-");
    else if (ms < 10)
        snprintf(buf, cap, "%.1f ms", ms);
    else if (ms < 1000)
        snprintf(buf, cap, "%.0f ms", ms);
    else if (ms < 60000)
        snprintf(buf, cap, "%.1f s", ms / 1000);
    else if (ms < 3600e3)
        snprintf(buf, cap, "%dm%02ds", (int)(ms / 60000), (int)(ms / 1000) % 60);
    else
        snprintf(buf, cap, "%dh%02dm", (int)(ms / 3600e3), (int)(ms / 60000) % 60);
    return buf;
}

uint64_t cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------- signals */

volatile sig_atomic_t cli_interrupted;

static void on_signal(int sig)
{
    cli_interrupted = sig;
}

void cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: let sleeps and waits see EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
