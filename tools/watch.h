/*
 * watch.h - what `livemig migrate` and `livemig status --watch` show and
 * record while they poll a migration: the terminal display (a block redrawn
 * in place on a terminal, kept to one screen; plain lines otherwise) with
 * the pass progress bar (progress.h), and the samples and events a --plot
 * picture is drawn from (plot.h).
 */
#ifndef LM_TOOLS_WATCH_H
#define LM_TOOLS_WATCH_H

#include "cli.h"
#include "plot.h"
#include "progress.h"

/* ------------------------------------------------------------ display */

typedef struct progress {
    bool tty;
    bool enabled;
    int lines; /* lines of the block drawn last (tty) */
    uint64_t start_ms;
    uint64_t last_plain_ms;
    pass_progress pass;
} progress;

void progress_init(progress *p, bool enabled);
/* Shows one sample: redraws the block (tty) or prints a line (at most one
 * a second unless force). */
void progress_show(progress *p, const qmpc_mig *q, bool force);
/* A line of its own (stdout) above the block, which moves down one line
 * instead of being left behind: the display stays one screen. */
void progress_note(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --------------------------------------------------------------- plot */

typedef struct mig_plot {
    bool on;
    FILE *f;
    char path[4096];
    bool png;
    bool created; /* the file did not exist before mig_plot_open */
    int w, h;
    plot_data pd;
    bool t0_set;
    uint64_t prev_hist[24]; /* destination latency histogram, last sample */
    bool has_prev_hist;
    char status[40];    /* status of the last sample (switch detection) */
    uint64_t prev_pass; /* dirty-sync-count of the last sample with RAM */
    bool has_prev_pass;
} mig_plot;

/* "--plot-size WxH": 200..8000 each. */
bool mig_plot_parse_size(const char *s, int *w, int *h);
/* Opens path for writing now, before any migration starts, so a bad path
 * fails at once; the error names it.  PNG when path ends in ".png". */
int mig_plot_open(mig_plot *mp, const char *path, int w, int h, lm_error *err);
/* x = 0 at t0_ms (CLI clock); when 0, the first sample fixes it from its
 * total-time (status --watch joins a running migration). */
void mig_plot_start(mig_plot *mp, uint64_t t0_ms);
/* One query-migrate sample at now_ms.  pc is the x-postcopy object of the
 * destination's query-migrate when it can be seen (NULL otherwise). */
void mig_plot_sample(mig_plot *mp, const qmpc_mig *q, json_t *pc, uint64_t now_ms);
/* mig_plot_sample for `livemig migrate`, which sees both sides: after the
 * switch to postcopy it asks the destination for its x-postcopy. */
void mig_plot_poll(mig_plot *mp, const qmpc_mig *src, qmpc *dst, uint64_t now_ms);
/* Another reader of the same events (e.g. a postcopy policy that wakes on
 * status changes): sees each event after the plot; true wakes the wait. */
typedef bool (*mig_event_fn)(void *arg, json_t *ev);
/* Waits until until_ms for events on c, handing each to the plot and to fn
 * (may be NULL); returns early (true) on a MIGRATION event with a final
 * status, when fn says so, or on Ctrl-C. */
bool mig_wait_events(qmpc *c, uint64_t until_ms, mig_plot *mp, mig_event_fn fn, void *arg);
/* Hands the events already queued on c to the plot and fn, without
 * waiting (at most 1000: a queue, not a stream). */
void mig_drain_events(qmpc *c, mig_plot *mp, mig_event_fn fn, void *arg);
/* One QMP event (MIGRATION_PASS, STOP, MIGRATION) received at now_ms. */
void mig_plot_event(mig_plot *mp, json_t *ev, uint64_t now_ms);
/* Writes and closes the picture; prints where on stdout unless quiet.
 * Returns 0, or -1 after printing an error that names the path (also when
 * no sample was taken: then the file is not left behind if it is new). */
int mig_plot_finish(mig_plot *mp, const char *cmd, const qmpc_mig *last, uint64_t now_ms,
                    bool quiet);
/* Closes without writing (nothing to draw), removing the file if
 * mig_plot_open created it. */
void mig_plot_close(mig_plot *mp);

#endif /* LM_TOOLS_WATCH_H */
