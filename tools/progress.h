/*
 * progress.h - the progress bar of `livemig migrate` and `livemig status
 * --watch`: how much of the current pass's dirty set is sent.  Pure
 * arithmetic and formatting (no I/O), so a unit test can check it.
 *
 * Definition, from query-migrate's fields: a pass begins at a dirty sync
 * (ram.dirty-sync-count grows by one); its dirty set is what "remaining"
 * holds then, and "remaining" falls as the pass sends it (pages dirtied
 * meanwhile only show at the next sync).  So
 *
 *     pass percentage = (dirty set - remaining) / dirty set
 *
 * where the dirty set is ram.total for pass 1 (every page starts dirty) and
 * for a later pass the highest "remaining" seen since its count first
 * showed (the first sample of the pass, which comes up to one poll after
 * the sync, or a later higher one).  After the switch to postcopy the
 * "pass" is the rest of the migration: its dirty set is "remaining" at
 * the first postcopy sample.  A watch that joins mid-pass starts that
 * pass at its first sample.
 */
#ifndef LM_TOOLS_PROGRESS_H
#define LM_TOOLS_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pass_progress {
    bool started;
    uint64_t pass;
    bool postcopy;
    double dirty_set; /* bytes */
} pass_progress;

/* Feeds one sample; returns the fraction of the pass sent, 0..1, or -1
 * when it cannot be told (no remaining, or an empty dirty set). */
double pass_progress_update(pass_progress *pp, uint64_t pass, bool postcopy, bool has_remaining,
                            double remaining, double total);

/* "[#########...........]  45%" in exactly `width` columns (width >= 10;
 * the bar takes what the percentage leaves).  frac < 0 draws an empty bar
 * with "  -%" in place of the number.  Returns buf. */
const char *progress_bar(char *buf, size_t cap, double frac, int width);

#endif /* LM_TOOLS_PROGRESS_H */
