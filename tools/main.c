/*
 * main.c - `livemig`: git-style dispatch to the subcommands: guest.c (with
 * its sample device in guest_bulk.c), demo.c, migrate.c and status.c for
 * the QMP drivers migrate, status, cancel and postcopy, recover.c for
 * recover and migrate --auto-recover (mig_end.c: how a migration ends, the
 * summary and the postcopy policy; their display and --plot samples in
 * watch.c, progress.c and plot.c), snapshot.c for save and restore,
 * inspect.c for inspect.  The tool uses
 * only include/livemig.h (and cairo for the pictures), except inspect.c,
 * which decodes the wire format with the library's internal decoders.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct subcmd {
    const char *name;
    int (*run)(int argc, char **argv);
    void (*usage)(FILE *f);
    const char *summary;
} subcmd;

static const subcmd subcmds[] = {
    {"guest", cmd_guest, usage_guest, "run the built-in workload host (guest RAM + QMP)"},
    {"migrate", cmd_migrate, usage_migrate, "migrate between two hosts over QMP, live progress"},
    {"status", cmd_status, usage_status, "show a host's migration status"},
    {"cancel", cmd_cancel, usage_cancel, "cancel a host's outgoing migration"},
    {"postcopy", cmd_postcopy, usage_postcopy, "switch a host's outgoing migration to postcopy"},
    {"recover", cmd_recover, usage_recover, "recover a paused postcopy migration (both sides)"},
    {"save", cmd_save, usage_save, "save a guest to a file (live or background snapshot)"},
    {"restore", cmd_restore, usage_restore, "restore a guest from a file saved by 'save'"},
    {"inspect", cmd_inspect, usage_inspect, "decode and validate a captured migration stream"},
    {"demo", cmd_demo, usage_demo, "migrate a live 1 GiB guest on this machine and verify it"},
    {NULL, NULL, NULL, NULL},
};

static void usage_main(FILE *f)
{
    fprintf(f, "usage: livemig <command> [options]\n"
               "       livemig help [<command>]\n"
               "       livemig --version\n\n"
               "commands:\n");
    for (const subcmd *s = subcmds; s->name; s++)
        fprintf(f, "  %-9s %s\n", s->name, s->summary);
    fprintf(f, "\n'livemig help <command>' or 'livemig <command> --help' shows its options.\n");
}

static const subcmd *find(const char *name)
{
    for (const subcmd *s = subcmds; s->name; s++)
        if (!strcmp(s->name, name))
            return s;
    return NULL;
}

int main(int argc, char **argv)
{
    /* Progress and results go to stdout, errors to stderr: keep their order
     * when both go to the same file. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        usage_main(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("livemig %d.%d.%d\n", LM_VERSION_MAJOR, LM_VERSION_MINOR, LM_VERSION_MICRO);
        return CLI_EXIT_OK;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        if (argc < 3) {
            usage_main(stdout);
            return CLI_EXIT_OK;
        }
        if (argc > 3) {
            cli_err("help", "unexpected argument '%s'", argv[3]);
            return CLI_EXIT_USAGE;
        }
        const subcmd *s = find(argv[2]);
        if (!s) {
            cli_err(NULL, "unknown command '%s' (see 'livemig help')", argv[2]);
            return CLI_EXIT_USAGE;
        }
        s->usage(stdout);
        return CLI_EXIT_OK;
    }
    const subcmd *s = find(cmd);
    if (!s) {
        if (cmd[0] == '-')
            cli_err(NULL, "unknown option '%s' (see 'livemig help')", cmd);
        else
            cli_err(NULL, "unknown command '%s' (see 'livemig help')", cmd);
        return CLI_EXIT_USAGE;
    }
    /* The subcommand sees argv[0] = its own name, like git. */
    return s->run(argc - 1, argv + 1);
}
