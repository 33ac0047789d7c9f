/*
 * mig_end.c - how a `livemig migrate` run ends and what it reports: the
 * postcopy switch (when to ask, and whether the source really switched),
 * the completion figures (QEMU fills them in after its `completed`
 * event), the bandwidth hint and the final summary, text or --json.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bound on waiting for total-time and downtime after `completed`.  QEMU
 * 7.2 fills them a few ms after the event (migration_calculate_complete
 * runs after migrate_set_state(COMPLETED)); a loaded host may take more. */
#define FIGURES_WAIT_MS 3000
#define FIGURES_POLL_MS 20

/* QEMU's MAX_THROTTLE: max-bandwidth when nobody set it. */
#define QEMU_DEFAULT_BANDWIDTH (128ull << 20)

/* ---------------------------------------------------- postcopy switch */

/* --postcopy[=asap|after-pass:N|after:SECONDS] */
bool mig_parse_postcopy(mig_opts *o, const char *v)
{
    uint64_t n;
    if (!v || !*v) {
        o->postcopy = MIG_PC_DEFAULT;
        o->postcopy_pass = 1;
        return true;
    }
    if (!strcmp(v, "asap")) {
        o->postcopy = MIG_PC_ASAP;
        return true;
    }
    if (!strncmp(v, "after-pass:", 11) && cli_parse_u64(v + 11, &n) && n >= 1 && n <= 1000000) {
        o->postcopy = MIG_PC_AFTER_PASS;
        o->postcopy_pass = n;
        return true;
    }
    if (!strncmp(v, "after:", 6) && cli_parse_u64(v + 6, &n) && n <= 86400 * 7) {
        o->postcopy = MIG_PC_AFTER_TIME;
        o->postcopy_after_ms = n * 1000;
        return true;
    }
    cli_err("migrate", "--postcopy: '%s' is not asap, after-pass:N (N >= 1) or after:SECONDS", v);
    return false;
}

void mig_pc_init(mig_pc *pc, const mig_opts *o, bool livemig_src)
{
    memset(pc, 0, sizeof *pc);
    pc->mode = o->postcopy;
    pc->pass = o->postcopy_pass;
    if (pc->mode == MIG_PC_DEFAULT) {
        /* QEMU's first pass is the whole RAM and an idle guest completes
         * right at its end: a request made after it comes too late, so
         * a bare --postcopy asks at once there. */
        pc->mode = livemig_src ? MIG_PC_AFTER_PASS : MIG_PC_ASAP;
        pc->pass = 1;
    }
}

static int cap_state(qmpc *c, const char *side, const char *name, bool *on, lm_error *err)
{
    json_t *caps = NULL;
    int rc = qmpc_call(c, "query-migrate-capabilities", NULL, &caps, err);
    if (rc < 0) {
        lm_error_prefix(err, "%s", side);
        return rc;
    }
    *on = false;
    size_t i;
    json_t *e;
    json_array_foreach(caps, i, e) {
        const char *n = json_string_value(json_object_get(e, "capability"));
        if (n && !strcmp(n, name))
            *on = json_is_true(json_object_get(e, "state"));
    }
    json_decref(caps);
    return 0;
}

int mig_pc_check_caps(qmpc *src, qmpc *dst, lm_error *err)
{
    bool on;
    int rc;
    if ((rc = cap_state(src, "source", "postcopy-ram", &on, err)) < 0)
        return rc;
    if (!on)
        return lm_error_set(err, -EINVAL,
                            "source: postcopy-ram is still off after "
                            "migrate-set-capabilities");
    if ((rc = cap_state(dst, "destination", "postcopy-ram", &on, err)) < 0)
        return rc;
    if (!on)
        return lm_error_set(err, -EINVAL,
                            "destination: postcopy-ram is off, so the switch to postcopy "
                            "could not happen (start the destination with --incoming "
                            "defer, or set postcopy-ram on it before it listens)");
    return 0;
}

static void history_add(char *h, size_t cap, const char *status)
{
    const char *last = strrchr(h, ' ');
    last = last ? last + 1 : h;
    if (!strcmp(last, status))
        return;
    size_t n = strlen(h);
    snprintf(h + n, cap - n, "%s%s", n ? " " : "", status);
}

void mig_pc_note_status(mig_pc *pc, const char *status)
{
    /* postcopy-active, -paused, -recover: all after the switch. */
    if (!strncmp(status, "postcopy", 8))
        pc->switched = true;
}

bool mig_is_livemig(qmpc *c)
{
    json_t *v = NULL;
    lm_error err = {0};
    if (qmpc_call(c, "query-version", NULL, &v, &err) < 0)
        return false;
    const char *pkg = json_string_value(json_object_get(v, "package"));
    /* "livemig 0.1.0" (query-version's package names the version). */
    bool ours = pkg && !strncmp(pkg, "livemig", 7) && (pkg[7] == '\0' || pkg[7] == ' ');
    json_decref(v);
    return ours;
}

bool mig_pc_note_event(mig_pc *pc, json_t *ev)
{
    const char *name = json_string_value(json_object_get(ev, "event"));
    const char *st = json_string_value(json_object_get(json_object_get(ev, "data"), "status"));
    if (!name || strcmp(name, "MIGRATION") || !st)
        return false;
    history_add(pc->history, sizeof pc->history, st);
    mig_pc_note_status(pc, st);
    return true;
}

static const char *pc_due(mig_pc *pc, const mig_opts *o, const qmpc_mig *s, uint64_t now,
                          uint64_t start)
{
    char *buf = pc->reason;
    size_t cap = sizeof pc->reason;
    if (pc->asked || pc->mode == MIG_PC_NONE)
        return NULL;
    /* QEMU and livemig both take the request in setup: the flag is read
     * at the first iteration. */
    if (pc->mode == MIG_PC_ASAP && (!strcmp(s->status, "setup") || !strcmp(s->status, "active"))) {
        snprintf(buf, cap, "as soon as the migration started");
        return buf;
    }
    if (strcmp(s->status, "active"))
        return NULL;
    switch (pc->mode) {
    case MIG_PC_AFTER_PASS:
        /* dirty-sync-count N+1 = the sync that ended pass N */
        if (s->dirty_sync_count > pc->pass) {
            snprintf(buf, cap, "%" PRIu64 " pass%s done", pc->pass, pc->pass == 1 ? "" : "es");
            return buf;
        }
        return NULL;
    case MIG_PC_AFTER_TIME:
        if (now - start >= o->postcopy_after_ms) {
            snprintf(buf, cap, "%" PRIu64 " s elapsed", o->postcopy_after_ms / 1000);
            return buf;
        }
        return NULL;
    case MIG_PC_AUTO:
        /* Beyond QEMU: precopy that stopped converging will not finish;
         * postcopy will.  What a pass must carry is the remaining seen
         * first in that pass (closest to its dirty sync; later samples
         * only show the pass being worked off).  No new low of that for
         * a window: switch. */
        if (!s->has_remaining || s->dirty_sync_count < 2 || s->dirty_sync_count == pc->last_pass)
            return NULL;
        pc->last_pass = s->dirty_sync_count;
        if (!pc->best_ms || s->remaining < pc->best_remaining) {
            pc->best_remaining = s->remaining;
            pc->best_ms = now;
            return NULL;
        }
        if (now - pc->best_ms >= o->postcopy_window_ms) {
            char b[32];
            snprintf(buf, cap,
                     "precopy stopped converging: no pass started below %s in "
                     "%" PRIu64 " s",
                     cli_fmt_bytes(b, sizeof b, (double)pc->best_remaining),
                     o->postcopy_window_ms / 1000);
            return buf;
        }
        return NULL;
    default:
        return NULL;
    }
}

const char *mig_pc_poll(mig_pc *pc, const mig_opts *o, qmpc *src, const qmpc_mig *s, uint64_t now,
                        uint64_t start)
{
    mig_pc_note_status(pc, s->status);
    if (pc->switched && !pc->announced) {
        pc->announced = true;
        return "switched to postcopy";
    }
    const char *reason = pc_due(pc, o, s, now, start);
    if (!reason)
        return NULL;
    lm_error err = {0};
    if (qmpc_call(src, "migrate-start-postcopy", NULL, NULL, &err) < 0) {
        cli_err("migrate", "source: %s", err.msg);
        pc->mode = MIG_PC_NONE;
        return NULL;
    }
    pc->asked = true;
    /* Only a request: QEMU switches at its next iteration, or never if
     * the migration completes first (the summary says which). */
    snprintf(pc->line, sizeof pc->line, "postcopy requested: %s", reason);
    return pc->line;
}

const char *mig_pc_outcome(const mig_pc *pc, const qmpc_mig *s)
{
    if (pc->mode == MIG_PC_NONE)
        return NULL;
    /* What went after the switch proves it even when both the polls and
     * the events missed postcopy-active. */
    bool switched = pc->switched || s->postcopy_bytes > 0;
    if (switched)
        return "switched to postcopy";
    if (!pc->asked)
        return !strcmp(s->status, "completed")
                   ? "completed in precopy before the switch was due (not requested)"
                   : "the switch was never requested";
    if (!strcmp(s->status, "completed"))
        return "completed in precopy before the switch took effect";
    return "the switch was requested but never took effect";
}

/* -------------------------------------------------- completion figures */

static bool figures_filled(const qmpc_mig *s, json_t *raw)
{
    /* livemig fills everything before `completed` and keeps the exact
     * pause in x-downtime-us, so a 0 ms downtime is a real one there. */
    return s->total_time > 0 && (s->downtime > 0 || json_object_get(raw, "x-downtime-us"));
}

void mig_wait_figures(qmpc *src, qmpc_mig *s, json_t **raw)
{
    if (strcmp(s->status, "completed") || figures_filled(s, *raw))
        return;
    uint64_t deadline = cli_now_ms() + FIGURES_WAIT_MS;
    /* QEMU fills both at once: a downtime still 0 a few polls after the
     * total-time came is a real one, under a millisecond (-machine none). */
    int zero_downtime_polls = 0;
    while (cli_now_ms() < deadline && !cli_interrupted && zero_downtime_polls < 5) {
        usleep(FIGURES_POLL_MS * 1000);
        qmpc_mig q;
        json_t *r = NULL;
        lm_error err = {0};
        if (qmpc_query_migrate(src, &q, &r, &err) < 0)
            return; /* keep what we have; the summary says what is missing */
        *s = q;
        json_decref(*raw);
        *raw = r;
        if (figures_filled(s, r))
            return;
        if (s->total_time > 0)
            zero_downtime_polls++;
    }
}

/* A completed run's total-time and downtime as the source reported them:
 * <0 when missing (absent, or still the 0 QEMU reads before filling it). */
static int64_t final_total(const qmpc_mig *s)
{
    if (!strcmp(s->status, "completed") && s->total_time == 0)
        return -1;
    return s->total_time;
}

static int64_t final_downtime(const qmpc_mig *s)
{
    if (!strcmp(s->status, "completed") && s->downtime == 0 && s->total_time <= 0)
        return -1;
    return s->downtime;
}

/* ----------------------------------------------------- bandwidth hint */

double mig_throughput(const qmpc_mig *q, bool final)
{
    if (final && strcmp(q->status, "completed") && q->total_time > 0)
        return (double)q->transferred * 1000.0 / (double)q->total_time;
    if (q->has_mbps)
        return (double)q->mbps_x1000 / 1000.0 * 1e6 / 8;
    if (q->total_time > 0)
        return (double)q->transferred * 1000.0 / (double)q->total_time;
    return 0;
}

void mig_bw_sample(mig_bw *bw, const qmpc_mig *s)
{
    if (strcmp(s->status, "active") || !s->has_mbps || !s->mbps_x1000)
        return;
    double r = mig_throughput(s, false);
    bw->samples++;
    if (r >= 0.8 * (double)QEMU_DEFAULT_BANDWIDTH && r <= 1.1 * (double)QEMU_DEFAULT_BANDWIDTH)
        bw->at_default++;
}

void mig_bandwidth_hint(qmpc *src, const mig_bw *bw)
{
    if (!bw->at_default || bw->at_default * 2 < bw->samples)
        return;
    json_t *p = NULL;
    lm_error err = {0};
    if (qmpc_call(src, "query-migrate-parameters", NULL, &p, &err) < 0)
        return;
    json_t *limit = json_object_get(p, "max-bandwidth");
    bool at_default =
        json_is_integer(limit) && (uint64_t)json_integer_value(limit) == QEMU_DEFAULT_BANDWIDTH;
    json_decref(p);
    if (!at_default)
        return;
    fprintf(stderr,
            "livemig migrate: hint: precopy ran at the source's max-bandwidth, QEMU's "
            "default of 128 MiB/s (%u of %u samples); --param max-bandwidth=0 lifts "
            "the limit, --param max-bandwidth=RATE sets another\n",
            bw->at_default, bw->samples);
}

/* ------------------------------------------------------------ summary */

void mig_print_summary(const qmpc_mig *s, const qmpc_mig *d, const char *note, const mig_pc *pc,
                       FILE *f)
{
    char tt[32], dt[32], tr[32], tp[32], st[32];
    int64_t total = final_total(s), down = final_downtime(s);
    bool done = !strcmp(s->status, "completed");
    fprintf(f, "migration %s", s->status[0] ? s->status : "?");
    if (note)
        fprintf(f, " (%s)", note);
    fprintf(f, "\n");
    if (total >= 0)
        fprintf(f, "  total time    %s\n", cli_fmt_ms(tt, sizeof tt, (double)total));
    else if (done)
        fprintf(f, "  total time    not reported by the source\n");
    if (down > 0)
        fprintf(f, "  downtime      %s\n", cli_fmt_ms(dt, sizeof dt, (double)down));
    else if (down == 0)
        fprintf(f, "  downtime      < 1 ms\n"); /* counted in whole ms */
    else if (done)
        fprintf(f, "  downtime      not reported by the source\n");
    if (s->has_ram) {
        fprintf(f, "  transferred   %s\n", cli_fmt_bytes(tr, sizeof tr, (double)s->transferred));
        fprintf(f, "  throughput    %s\n", cli_fmt_rate(tp, sizeof tp, mig_throughput(s, true)));
        fprintf(f, "  passes        %" PRIu64 "\n", s->dirty_sync_count);
    }
    const char *outcome = pc ? mig_pc_outcome(pc, s) : NULL;
    if (outcome) {
        fprintf(f, "  switch        %s", outcome);
        if (pc->asked)
            fprintf(f, " (requested: %s)", pc->reason);
        fprintf(f, "\n");
        if (pc->history[0])
            fprintf(f, "  statuses      %s\n", pc->history);
    }
    if (s->postcopy_bytes || s->postcopy_requests) {
        char pb[32];
        fprintf(f, "  postcopy      %s, %" PRIu64 " page requests\n",
                cli_fmt_bytes(pb, sizeof pb, (double)s->postcopy_bytes), s->postcopy_requests);
    }
    if (s->setup_time >= 0)
        fprintf(f, "  setup time    %s\n", cli_fmt_ms(st, sizeof st, (double)s->setup_time));
    if (d && d->status[0])
        fprintf(f, "  destination   %s\n", d->status);
    if (s->error_desc[0])
        fprintf(f, "  error         %s\n", s->error_desc);
    if (d && d->error_desc[0])
        fprintf(f, "  dest error    %s\n", d->error_desc);
}

static json_t *history_json(const char *h)
{
    json_t *a = json_array();
    char buf[256];
    snprintf(buf, sizeof buf, "%s", h);
    char *save = NULL;
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save))
        json_array_append_new(a, json_string(t));
    return a;
}

json_t *mig_summary_json(const qmpc_mig *s, json_t *src_raw, json_t *dst_raw, const char *uri,
                         uint64_t wall_ms, bool timed_out, bool interrupted, const mig_pc *pc)
{
    json_t *o = json_object();
    int64_t total = final_total(s), down = final_downtime(s);
    bool done = !strcmp(s->status, "completed");
    json_object_set_new(o, "status", json_string(s->status));
    json_object_set_new(o, "uri", json_string(uri ? uri : ""));
    json_object_set_new(o, "wall-time", json_integer((json_int_t)wall_ms));
    /* A completed run always has both keys: null when the source never
     * reported the figure (never a made-up 0). */
    if (total >= 0)
        json_object_set_new(o, "total-time", json_integer(total));
    else if (done)
        json_object_set_new(o, "total-time", json_null());
    if (down >= 0)
        json_object_set_new(o, "downtime", json_integer(down));
    else if (done)
        json_object_set_new(o, "downtime", json_null());
    if (s->setup_time >= 0)
        json_object_set_new(o, "setup-time", json_integer(s->setup_time));
    if (s->has_ram) {
        json_object_set_new(o, "transferred", json_integer((json_int_t)s->transferred));
        json_object_set_new(o, "throughput", json_integer((json_int_t)mig_throughput(s, true)));
        json_object_set_new(o, "passes", json_integer((json_int_t)s->dirty_sync_count));
    }
    const char *outcome = pc ? mig_pc_outcome(pc, s) : NULL;
    if (outcome) {
        json_t *p = json_object();
        json_object_set_new(p, "requested", json_boolean(pc->asked));
        json_object_set_new(p, "reason", pc->asked ? json_string(pc->reason) : json_null());
        json_object_set_new(p, "switched", json_boolean(pc->switched || s->postcopy_bytes > 0));
        json_object_set_new(p, "outcome", json_string(outcome));
        json_object_set_new(p, "statuses", history_json(pc->history));
        json_object_set_new(o, "postcopy", p);
    }
    if (s->error_desc[0])
        json_object_set_new(o, "error-desc", json_string(s->error_desc));
    json_object_set_new(o, "timed-out", json_boolean(timed_out));
    json_object_set_new(o, "interrupted", json_boolean(interrupted));
    json_object_set(o, "source", src_raw ? src_raw : json_null());
    json_object_set(o, "destination", dst_raw ? dst_raw : json_null());
    return o;
}
