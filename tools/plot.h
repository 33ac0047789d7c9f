/*
 * plot.h - the timeline of one migration as an SVG (or PNG) picture, drawn
 * with cairo: what `livemig migrate --plot` and `livemig status --watch
 * --plot` write once the migration ends.
 *
 * The caller (tools/watch.c) fills a plot_data with plain numbers as it
 * polls query-migrate and reads events; nothing here knows QMP.  Only the
 * CLI links cairo, never the library.
 */
#ifndef LM_TOOLS_PLOT_H
#define LM_TOOLS_PLOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Bounds: samples beyond PLOT_MAX_SAMPLES thin the older ones out (every
 * other one dropped); marks beyond PLOT_MAX_MARKS are not recorded. */
#define PLOT_MAX_SAMPLES 8192
#define PLOT_MAX_MARKS 4096
#define PLOT_DEFAULT_W 1000
#define PLOT_DEFAULT_H 720

/* One query-migrate poll.  Times are ms since plot_data.t0 (CLI clock). */
typedef struct plot_sample {
    double t_ms;
    double remaining;  /* bytes; < 0 when query-migrate had none */
    double throughput; /* bytes/s */
    double dirty_rate; /* bytes/s; < 0 when unknown */
    uint64_t pass;     /* dirty-sync-count */
    bool postcopy;     /* status postcopy-* */
    /* Postcopy page requests: the destination's remote faults
     * (x-postcopy remote-faults) when it can be seen, else the source's
     * postcopy-requests; -1 unknown.  Cumulative. */
    double faults;
    /* Fault latency of the faults since the previous sample, from the
     * difference of the destination's log2 histograms (upper bucket
     * bounds, us); -1 when no fault or no histogram. */
    double lat_p50_us, lat_p99_us;
} plot_sample;

typedef enum plot_mark_kind {
    PLOT_MARK_PASS,     /* a dirty sync began pass `n` */
    PLOT_MARK_STOP,     /* the source stopped the guest: the switchover */
    PLOT_MARK_POSTCOPY, /* the status became postcopy-active */
} plot_mark_kind;

typedef struct plot_mark {
    plot_mark_kind kind;
    double t_ms;
    uint64_t n;
} plot_mark;

typedef struct plot_data {
    uint64_t t0_ms; /* CLI clock (cli_now_ms) of x = 0 */
    plot_sample *s;
    size_t n, cap;
    plot_mark marks[PLOT_MAX_MARKS];
    size_t nmarks;
    bool faults_are_dst; /* faults came from the destination's x-postcopy */
    /* The end, filled once the migration is over. */
    char status[40];
    double end_ms;     /* when the final status was seen; < 0 unknown */
    int64_t downtime;  /* ms, -1 unknown */
    int64_t total_ram; /* bytes, -1 unknown */
    uint64_t passes;   /* final dirty-sync-count */
    char title[160];
} plot_data;

void plot_data_init(plot_data *pd, uint64_t t0_ms);
void plot_data_fini(plot_data *pd);
/* Appends a sample (copied); returns false only on allocation failure. */
bool plot_add(plot_data *pd, const plot_sample *s);
/* Records a mark once (a PASS mark once per n), at the earliest time given. */
void plot_mark_add(plot_data *pd, plot_mark_kind kind, double t_ms, uint64_t n);
/* Number of distinct PASS marks. */
size_t plot_pass_marks(const plot_data *pd);

/* Writes the picture to f (not closed): SVG unless png.  Every drawn
 * element sits in a <g> with an id and a class ("series", "pass",
 * "switchover", "downtime", "frame") and data-points for a series, so a
 * test can find each part.  Returns 0, or -1 with a message in err. */
int plot_write(const plot_data *pd, FILE *f, bool png, int width, int height, char *err,
               size_t errcap);

#endif /* LM_TOOLS_PLOT_H */
