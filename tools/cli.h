/*
 * cli.h - shared pieces of the `livemig` command-line tool: option parsing,
 * size/unit formatting, the QMP helpers built on lm_qmp_client + jansson,
 * child-process management, and the entry points of the subcommands.
 *
 * The tool uses only the public header (include/livemig.h), like curl's tool
 * uses only libcurl; inspect.c alone also reads src/format/inspect.h (the
 * wire format is not public API, and inspect must decode it with the
 * library's own decoders).  Exit codes: 0 success, 1 failure, 2 usage error.
 */
#ifndef LM_TOOLS_CLI_H
#define LM_TOOLS_CLI_H

#include "livemig.h"

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* Default bound of one QMP command round trip, ms.  The control server
 * answers every command at once (DESIGN §3), so this is generous. */
#define CLI_QMP_TIMEOUT_MS 10000

/* ------------------------------------------------------------ messages */

/* "livemig: <msg>" / "livemig <cmd>: <msg>" on stderr. */
void cli_err(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------ option parsing */

/* One long option.  Every subcommand also accepts -h/--help. */
typedef struct cli_opt {
    const char *name; /* without the leading "--" */
    bool has_arg;
    int id;       /* > 0 */
    bool opt_arg; /* with has_arg false: "--name=VALUE" is allowed too */
} cli_opt;

enum {
    CLI_END = 0,   /* no more arguments */
    CLI_POS = -1,  /* a positional argument, in *val */
    CLI_HELP = -2, /* -h / --help */
    CLI_ERR = -3,  /* error already printed (unknown flag, missing value) */
};

typedef struct cli_args {
    const char *cmd; /* "guest", "migrate", ... for messages */
    int argc;
    char **argv;
    int i;             /* next argv index */
    bool no_more_opts; /* after "--" */
} cli_args;

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv);
/* Accepts "--name value" and "--name=value".  opts ends with a zero entry. */
int cli_next(cli_args *a, const cli_opt *opts, const char **val);

/* ------------------------------------------------- numbers and units */

/* "64M", "1G", "4096", "2KiB", "1.5G"? (no: integers only).  Suffixes K, M,
 * G, T (powers of 1024), case-insensitive, optionally followed by "B" or
 * "iB".  Returns false on garbage or overflow. */
bool cli_parse_size(const char *s, uint64_t *out);
/* A plain unsigned decimal integer (no sign, no suffix). */
bool cli_parse_u64(const char *s, uint64_t *out);
/* A signed decimal integer. */
bool cli_parse_i64(const char *s, int64_t *out);
/* on/off, true/false, yes/no, 1/0. */
bool cli_parse_bool(const char *s, bool *out);

/* "1.50 GiB", "812 B"; returns buf. */
const char *cli_fmt_bytes(char *buf, size_t cap, double bytes);
/* "2.41 GiB/s". */
const char *cli_fmt_rate(char *buf, size_t cap, double bytes_per_s);
/* "12 ms", "3.4 s", "2m05s". */
const char *cli_fmt_ms(char *buf, size_t cap, double ms);

uint64_t cli_now_ms(void); /* CLOCK_MONOTONIC */

/* ------------------------------------------------------------- signals */

/* Set by the SIGINT/SIGTERM handler that cli_catch_signals() installs. */
extern volatile sig_atomic_t cli_interrupted;
/* Installs a flag-setting handler for SIGINT and SIGTERM (no SA_RESTART, so
 * blocking calls return EINTR) and ignores SIGPIPE. */
void cli_catch_signals(void);

/* object_opt.c: `--object TYPE,id=ID,key=value,...` (QEMU's -object, ",,"
 * escapes a comma) through lm_mig_object_add. */
int cli_object_add(lm_mig *m, const char *spec, lm_error *err);

/* --------------------------------------------------------------- QMP */

typedef struct lm_qmp_client qmpc;

int qmpc_connect(const char *sock, int timeout_ms, qmpc **out, lm_error *err);
/* Executes cmd with args (borrowed; NULL for none).  On success *ret (if
 * ret is non-NULL) is the parsed "return" value, owned by the caller. */
int qmpc_call(qmpc *c, const char *cmd, json_t *args, json_t **ret, lm_error *err);
/* Next event as a parsed object, -ETIMEDOUT when none within timeout_ms. */
int qmpc_next_event(qmpc *c, int timeout_ms, json_t **ev, lm_error *err);

/* QEMU's query-migrate, tolerant of missing fields (a QEMU, or our own
 * server, may omit any of them). */
typedef struct qmpc_mig {
    char status[40]; /* "none" when absent, as QEMU omits it then */
    bool has_ram;
    uint64_t transferred, remaining, total, mbps_x1000, dirty_pages_rate;
    uint64_t page_size, dirty_sync_count, duplicate, normal;
    uint64_t postcopy_requests, postcopy_bytes;
    bool has_remaining, has_mbps, has_dirty_rate;
    int64_t total_time, setup_time, downtime, expected_downtime; /* -1 absent */
    char error_desc[LM_ERROR_MSG_MAX];
} qmpc_mig;

void qmpc_mig_parse(json_t *ret, qmpc_mig *out);
/* query-migrate: parses into *out and (if raw) hands over the raw object. */
int qmpc_query_migrate(qmpc *c, qmpc_mig *out, json_t **raw, lm_error *err);
/* completed, failed, cancelled. */
bool qmpc_status_final(const char *status);

/* Builds the URI the source must connect to from the destination's
 * query-migrate "socket-address" (QEMU: a list of SocketAddress objects,
 * port as a string; a plain "tcp:H:P" string is accepted too).  want is
 * the URI given by the user: its scheme and host are kept, only a port 0
 * is replaced.  Returns false when no matching address is found. */
bool qmpc_real_uri(json_t *qm_ret, const char *want, char *out, size_t cap);

/* ------------------------------------------------------- processes */

/* Starts `/proc/self/exe argv...` with stdin from /dev/null and stdout and
 * stderr appended to logpath (or inherited when NULL).  The child gets
 * SIGTERM if this process dies (PR_SET_PDEATHSIG), so nothing outlives us. */
int cli_spawn_self(char *const argv[], const char *logpath, pid_t *pid, lm_error *err);
/* waitpid with a bound.  Returns 1 when reaped (*status set), 0 when it is
 * still running after timeout_ms. */
int cli_wait_child(pid_t pid, int timeout_ms, int *status);
/* SIGTERM, wait up to grace_ms, then SIGKILL and reap.  pid <= 0 no-op. */
void cli_kill_child(pid_t pid, int grace_ms);
/* Removes a directory of plain files / sockets (not recursive beyond one
 * level: the demo's private dir has no subdirectories). */
void cli_rm_dir(const char *dir);
/* Prints the last `lines` lines of a file to stderr, indented. */
void cli_print_tail(const char *path, int lines);

/* ------------------------------------------------------- subcommands */

int cmd_guest(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_postcopy(int argc, char **argv);
void usage_postcopy(FILE *f);
int cmd_recover(int argc, char **argv);
void usage_recover(FILE *f);
int cmd_demo(int argc, char **argv);
/* snapshot.c: save a guest to a file: URI, restore one from it. */
int cmd_save(int argc, char **argv);
void usage_save(FILE *f);
int cmd_restore(int argc, char **argv);
void usage_restore(FILE *f);
/* inspect.c: the one tool file on the library's internal format/ headers. */
int cmd_inspect(int argc, char **argv);
void usage_inspect(FILE *f);

void usage_guest(FILE *f);
void usage_migrate(FILE *f);
void usage_status(FILE *f);
void usage_cancel(FILE *f);
void usage_demo(FILE *f);

/* The engine of `livemig migrate`, shared with `livemig demo`. */
#define MIG_MAX_CAPS 32
#define MIG_MAX_PARAMS 32

typedef enum mig_progress { MIG_PROGRESS_AUTO, MIG_PROGRESS_NONE } mig_progress;

typedef struct mig_opts {
    const char *src, *dst, *uri;
    const char *cap_name[MIG_MAX_CAPS];
    bool cap_on[MIG_MAX_CAPS];
    int ncaps;
    const char *param_name[MIG_MAX_PARAMS];
    const char *param_value[MIG_MAX_PARAMS];
    int nparams;
    bool json;
    int timeout_s;
    mig_progress progress;
    /* Postcopy (the CLI turns postcopy-ram on both sides): switch after
     * `postcopy_pass` passes, after `postcopy_after_ms`, as soon as the
     * migration has started (asap), or (auto) when remaining has not
     * reached a new low for `postcopy_window_ms`.  DEFAULT (a bare
     * --postcopy) is after-pass:1 on a livemig source, asap on others
     * (QEMU: its first pass is the whole RAM, and an idle guest completes
     * right after it, before a request could take effect). */
    enum {
        MIG_PC_NONE,
        MIG_PC_DEFAULT,
        MIG_PC_AFTER_PASS,
        MIG_PC_AFTER_TIME,
        MIG_PC_ASAP,
        MIG_PC_AUTO
    } postcopy;
    uint64_t postcopy_pass, postcopy_after_ms, postcopy_window_ms;
    /* --plot FILE (.svg, or .png): the timeline drawn once it ends. */
    const char *plot;
    int plot_w, plot_h;
    /* --auto-recover[=N]: recovery attempts after a postcopy-paused (0:
     * off; at most MIG_REC_MAX). */
    int auto_recover;
} mig_opts;

/* Adds "NAME=on|off" / "NAME=VALUE"; prints an error and returns false on
 * a malformed one. */
bool mig_opts_add_cap(mig_opts *o, const char *cmd, const char *spec);
bool mig_opts_add_param(mig_opts *o, const char *cmd, const char *spec);
/* Runs a migration end to end and prints progress and the summary.
 * Returns the exit code (0 only when completed).  Honours cli_interrupted:
 * cancels the migration on the source and waits (bounded) for the end. */
int mig_run(const mig_opts *o);
/* migrate-set-capabilities with o's capabilities (and "events" when
 * events; postcopy-ram with a postcopy option), migrate-set-parameters with
 * its parameters; nothing is sent when there is nothing to set.  The error
 * is prefixed with side ("source", "destination"). */
int mig_set_caps(qmpc *c, const char *side, const mig_opts *o, bool events, lm_error *err);
int mig_set_params(qmpc *c, const char *side, const mig_opts *o, lm_error *err);

/* ---------------------------------------- end of a migration (mig_end.c) */

/* The postcopy switch: when to ask for it, whether it was asked, and what
 * the source did with the request.  QEMU's migrate-start-postcopy only sets
 * a flag that the migration thread reads at its next iteration; a
 * migration that completes first stays precopy and the command still
 * succeeds.  So the truth comes from the statuses the source went through
 * (MIGRATION events and polls), never from the request. */
typedef struct mig_pc {
    int mode;                /* mig_opts.postcopy, DEFAULT resolved */
    uint64_t pass;           /* after-pass: N */
    bool asked;              /* migrate-start-postcopy was accepted */
    char reason[160];        /* why it was asked */
    bool switched;           /* postcopy-* status seen, or postcopy bytes */
    bool announced;          /* "switched to postcopy" printed live */
    uint64_t best_remaining; /* auto: lowest remaining seen ... */
    uint64_t best_ms;        /* ... and when */
    uint64_t last_pass;      /* auto: dirty-sync-count of the last sample */
    char history[256];       /* statuses of the MIGRATION events, in order */
    char line[200];          /* mig_pc_poll's log line */
} mig_pc;

/* --postcopy's value (NULL or "" when bare) into o; prints the error. */
bool mig_parse_postcopy(mig_opts *o, const char *v);
/* Resolves the policy; `livemig_src`: the source's query-version says
 * package "livemig". */
void mig_pc_init(mig_pc *pc, const mig_opts *o, bool livemig_src);
/* With a postcopy option: postcopy-ram must be on on both sides, or the
 * switch can never happen.  0 or an error naming the side. */
int mig_pc_check_caps(qmpc *src, qmpc *dst, lm_error *err);
/* Records a status seen by a poll. */
void mig_pc_note_status(mig_pc *pc, const char *status);
/* The peer's query-version says package "livemig". */
bool mig_is_livemig(qmpc *c);
/* Records a MIGRATION event's status; true when ev is a MIGRATION event
 * (the caller polls at once: the status changed).  mig_run hands it every
 * event of the source through watch.h's mig_wait_events and, once the
 * migration ended, mig_drain_events (the history of a migration that
 * ended between two polls). */
bool mig_pc_note_event(mig_pc *pc, json_t *ev);
/* At every poll while the migration runs (s: its query-migrate; start:
 * when `migrate` was issued): records the status, asks the source for the
 * switch when the policy says so.  Returns a line for the log ("postcopy
 * requested: ...", "switched to postcopy") or NULL; a refused request is
 * reported on stderr and not retried. */
const char *mig_pc_poll(mig_pc *pc, const mig_opts *o, qmpc *src, const qmpc_mig *s, uint64_t now,
                        uint64_t start);
/* What became of the request, for the summary; NULL when none was made. */
const char *mig_pc_outcome(const mig_pc *pc, const qmpc_mig *s);

/* QEMU emits `completed` before it fills total-time and downtime in
 * query-migrate (both read 0 until then).  Polls the source, bounded
 * (3 s), until both are non-zero, or the total-time is and the downtime
 * stayed 0 for 5 more polls (a real sub-ms pause); s and *raw are
 * replaced by the last reply. */
void mig_wait_figures(qmpc *src, qmpc_mig *s, json_t **raw);
/* The live throughput samples of precopy (QEMU's mbps is the last 100 ms
 * window there): how many, and how many sat at QEMU's default limit. */
typedef struct mig_bw {
    unsigned samples, at_default;
} mig_bw;
void mig_bw_sample(mig_bw *bw, const qmpc_mig *s);
/* Prints a hint on stderr when the source's max-bandwidth is QEMU's
 * default (128 MiB/s) and precopy ran at it (most live samples within a
 * few percent of it; QEMU's final average is no guide: it lifts the limit
 * for the pause and counts from the end of setup). */
void mig_bandwidth_hint(qmpc *src, const mig_bw *bw);
/* Live: QEMU's mbps is the last 100 ms window.  Final: the average. */
double mig_throughput(const qmpc_mig *q, bool final);
/* The final report: text, or the --json object (d, the destination's,
 * and pc may be NULL: `livemig status` has neither). */
void mig_print_summary(const qmpc_mig *s, const qmpc_mig *d, const char *note, const mig_pc *pc,
                       FILE *f);
json_t *mig_summary_json(const qmpc_mig *s, json_t *src_raw, json_t *dst_raw, const char *uri,
                         uint64_t wall_ms, bool timed_out, bool interrupted, const mig_pc *pc);

/* ------------------------------- postcopy recovery (recover.c) */

/* `livemig migrate --auto-recover`: each attempt's URI and outcome, for
 * the display, the summary and --json. */
#define MIG_REC_DEFAULT 3
#define MIG_REC_MAX 20

typedef struct rec_attempt {
    char uri[512];
    bool ok;
    char error[LM_ERROR_MSG_MAX];
} rec_attempt;

typedef struct mig_rec {
    int max, n, recovered;
    char listening[512]; /* the destination's URI after a failed resume */
    rec_attempt a[MIG_REC_MAX];
} mig_rec;

struct progress;
/* A new URI of orig's transport for attempt n: tcp:HOST:0 (the destination
 * picks the port), unix:PATH.recoverN beside the original (a stale socket
 * there is removed).  False for other transports. */
bool mig_rec_fresh_uri(const char *orig, int n, char *out, size_t cap);
void mig_rec_init(mig_rec *r, int max);
/* Attempts left, and no Ctrl-C. */
bool mig_rec_can_try(const mig_rec *r);
/* One attempt after the source paused (why: its error-desc): waits for the
 * destination's postcopy-paused, migrate-recover on it with a fresh URI,
 * migrate resume on the source, and waits (until deadline) for the
 * source's postcopy-active (0) or its failure (-1, recorded).  Notes go
 * to the display unless quiet. */
int mig_rec_attempt(mig_rec *r, qmpc *src, qmpc *dst, const char *orig_uri, const char *why,
                    uint64_t deadline, struct progress *p, bool quiet);
json_t *mig_rec_json(const mig_rec *r);
/* The summary's "recovery" lines (nothing when --auto-recover is off). */
void mig_rec_print(const mig_rec *r, FILE *f);

#endif /* LM_TOOLS_CLI_H */
