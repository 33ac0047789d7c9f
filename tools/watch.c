/*
 * watch.c - the terminal display of a migration being polled, and the
 * samples a --plot picture is drawn from (watch.h).  Used by migrate.c's
 * mig_run() and status.c's cmd_status(); single-threaded like the rest of
 * the CLI.
 */
#include "watch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ display */

void progress_init(progress *p, bool enabled)
{
    memset(p, 0, sizeof *p);
    p->enabled = enabled;
    p->tty = isatty(STDOUT_FILENO);
    p->start_ms = cli_now_ms();
}

static int term_cols(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        return ws.ws_col;
    return 80;
}

void progress_note(progress *p, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (p->enabled && p->tty && p->lines) {
        /* In the block's place; the next sample redraws it below. */
        printf("\033[%dA\r\033[J", p->lines);
        p->lines = 0;
    }
    printf("%s\n", line);
    fflush(stdout);
}

/* One line of the block: cleared, cut to the terminal's width so that it
 * never wraps (a wrapped line would make the redraw scroll). */
static void block_line(int cols, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void block_line(int cols, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    printf("\r\033[K%.*s\n", cols - 1, line);
}

void progress_show(progress *p, const qmpc_mig *q, bool force)
{
    if (!p->enabled)
        return;
    uint64_t now = cli_now_ms();
    double elapsed = q->total_time >= 0 ? (double)q->total_time : (double)(now - p->start_ms);
    double tput = mig_throughput(q, false);
    double dirty = (double)q->dirty_pages_rate * (double)q->page_size;
    double eta = q->has_remaining && tput > 0 ? (double)q->remaining / tput * 1000 : -1;
    bool pc = !strncmp(q->status, "postcopy", 8);
    double frac = pass_progress_update(&p->pass, q->dirty_sync_count, pc, q->has_remaining,
                                       (double)q->remaining, (double)q->total);
    bool done = !strcmp(q->status, "completed");
    if (done)
        frac = 1; /* every pass, postcopy's too, is sent */
    char el[32], tr[32], rem[32], tot[32], tp[32], dr[32], ed[32], et[32], phase[32];
    cli_fmt_ms(el, sizeof el, elapsed);
    cli_fmt_bytes(tr, sizeof tr, (double)q->transferred);
    if (q->has_remaining)
        cli_fmt_bytes(rem, sizeof rem, (double)q->remaining);
    else
        snprintf(rem, sizeof rem, "-");
    cli_fmt_bytes(tot, sizeof tot, (double)q->total);
    cli_fmt_rate(tp, sizeof tp, tput);
    if (q->has_dirty_rate)
        cli_fmt_rate(dr, sizeof dr, dirty);
    else
        snprintf(dr, sizeof dr, "-");
    cli_fmt_ms(ed, sizeof ed, (double)q->expected_downtime);
    cli_fmt_ms(et, sizeof et, eta);
    const char *st = q->status[0] ? q->status : "?";
    if (done)
        snprintf(phase, sizeof phase, "done");
    else if (pc)
        snprintf(phase, sizeof phase, "postcopy");
    else
        snprintf(phase, sizeof phase, "pass %" PRIu64, q->dirty_sync_count);

    if (p->tty) {
        /* A block redrawn in place: cursor up over the last one. */
        int cols = term_cols();
        if (p->lines)
            printf("\033[%dA", p->lines);
        block_line(cols, "  status       %-12s pass %-6" PRIu64 " elapsed %s", st,
                   q->dirty_sync_count, el);
        if (q->has_ram) {
            char bar[96];
            int bw = cols - 16 < 60 ? cols - 16 : 60;
            block_line(cols, "  %-12s %s", phase, progress_bar(bar, sizeof bar, frac, bw));
            block_line(cols, "  transferred  %-10s   remaining %-10s  total %s", tr, rem, tot);
            block_line(cols, "  throughput   %-12s dirty rate %s", tp, dr);
            block_line(cols, "  downtime     expected %-9s ETA %s", ed, et);
            p->lines = 5;
        } else {
            p->lines = 1;
        }
        fflush(stdout);
        return;
    }
    if (!force && p->last_plain_ms && now - p->last_plain_ms < 1000)
        return;
    p->last_plain_ms = now;
    char pct[16] = "-";
    if (frac >= 0)
        snprintf(pct, sizeof pct, "%d%%", (int)floor(frac * 100 + 1e-9));
    if (q->has_ram)
        printf("[%8s] %s %s %s: transferred %s, remaining %s of %s, %s, dirty %s, "
               "expected downtime %s, ETA %s\n",
               el, st, phase, pct, tr, rem, tot, tp, dr, ed, et);
    else
        printf("[%8s] %s\n", el, st);
    fflush(stdout);
}

/* --------------------------------------------------------------- plot */

bool mig_plot_parse_size(const char *s, int *w, int *h)
{
    char *end;
    errno = 0;
    long a = strtol(s, &end, 10);
    if (errno || end == s || (*end != 'x' && *end != 'X'))
        return false;
    const char *t = end + 1;
    long b = strtol(t, &end, 10);
    if (errno || end == t || *end || a < 200 || a > 8000 || b < 200 || b > 8000)
        return false;
    *w = (int)a;
    *h = (int)b;
    return true;
}

int mig_plot_open(mig_plot *mp, const char *path, int w, int h, lm_error *err)
{
    memset(mp, 0, sizeof *mp);
    size_t n = strlen(path);
    if (n >= sizeof mp->path)
        return lm_error_set(err, -ENAMETOOLONG, "--plot: path too long");
    memcpy(mp->path, path, n + 1);
    mp->png = n > 4 && !strcasecmp(path + n - 4, ".png");
    mp->w = w;
    mp->h = h;
    mp->created = access(path, F_OK) != 0;
    mp->f = fopen(path, "w");
    if (!mp->f)
        return lm_error_set(err, -errno, "--plot: cannot write '%s': %s", path, strerror(errno));
    mp->on = true;
    plot_data_init(&mp->pd, 0);
    return 0;
}

void mig_plot_start(mig_plot *mp, uint64_t t0_ms)
{
    if (!mp->on)
        return;
    mp->pd.t0_ms = t0_ms;
    mp->t0_set = t0_ms != 0;
}

static double t_of(mig_plot *mp, uint64_t now_ms)
{
    return now_ms >= mp->pd.t0_ms ? (double)(now_ms - mp->pd.t0_ms) : 0;
}

/* The p-th fraction of the latency histogram's growth since the last
 * sample, as the upper end of its log2 bucket (us); -1 without faults. */
static double hist_pct(const uint64_t *d, uint64_t total, double p)
{
    if (!total)
        return -1;
    uint64_t rank = (uint64_t)ceil(p * (double)total), seen = 0;
    for (unsigned i = 0; i < 24; i++) {
        seen += d[i];
        if (seen >= rank && seen)
            return ldexp(1.0, (int)i + 1);
    }
    return ldexp(1.0, 24);
}

void mig_plot_sample(mig_plot *mp, const qmpc_mig *q, json_t *pc, uint64_t now_ms)
{
    if (!mp->on)
        return;
    if (!mp->t0_set) {
        mp->pd.t0_ms = q->total_time >= 0 && (uint64_t)q->total_time < now_ms
                           ? now_ms - (uint64_t)q->total_time
                           : now_ms;
        mp->t0_set = true;
    }
    plot_sample s = {.t_ms = t_of(mp, now_ms), .faults = -1, .lat_p50_us = -1, .lat_p99_us = -1};
    s.remaining = q->has_ram && q->has_remaining ? (double)q->remaining : -1;
    /* Rates of a migration under way only: once it has ended, QEMU's mbps
     * is the average and the dirty rate the last one measured. */
    bool running = !qmpc_status_final(q->status) && strcmp(q->status, "postcopy-paused");
    s.throughput = q->has_ram && running ? mig_throughput(q, false) : -1;
    /* The dirty rate is measured between syncs: none before the second. */
    s.dirty_rate = q->has_dirty_rate && q->dirty_sync_count >= 2 && !strcmp(q->status, "active")
                       ? (double)q->dirty_pages_rate * (double)q->page_size
                       : -1;
    s.pass = q->dirty_sync_count;
    s.postcopy = !strncmp(q->status, "postcopy", 8);
    if (s.postcopy && strncmp(mp->status, "postcopy", 8))
        plot_mark_add(&mp->pd, PLOT_MARK_POSTCOPY, s.t_ms, 0);
    snprintf(mp->status, sizeof mp->status, "%s", q->status);
    if (q->total > 0)
        mp->pd.total_ram = (int64_t)q->total;
    /* A pass whose MIGRATION_PASS event was not seen (no events on this
     * monitor) still gets its boundary, at the first sample that shows it;
     * passes that began before a watch joined are not drawn. */
    uint64_t from = mp->has_prev_pass ? mp->prev_pass + 1 : 1;
    if (!mp->has_prev_pass && q->dirty_sync_count > 1)
        from = q->dirty_sync_count + 1;
    for (uint64_t n = from; n <= q->dirty_sync_count && n - from < 64; n++)
        plot_mark_add(&mp->pd, PLOT_MARK_PASS, s.t_ms, n);
    if (q->has_ram) {
        mp->prev_pass = q->dirty_sync_count;
        mp->has_prev_pass = true;
    }
    json_t *faults = json_object_get(pc, "remote-faults");
    json_t *hist = json_object_get(pc, "latency-histogram-log2-us");
    if (s.postcopy && json_is_integer(faults)) {
        s.faults = (double)json_integer_value(faults);
        mp->pd.faults_are_dst = true;
    } else if (s.postcopy) {
        s.faults = (double)q->postcopy_requests;
    }
    if (json_is_array(hist) && json_array_size(hist) <= 24) {
        uint64_t cur[24] = {0}, d[24] = {0}, total = 0;
        for (size_t i = 0; i < json_array_size(hist); i++) {
            json_int_t v = json_integer_value(json_array_get(hist, i));
            cur[i] = v > 0 ? (uint64_t)v : 0;
            d[i] = mp->has_prev_hist && cur[i] >= mp->prev_hist[i] ? cur[i] - mp->prev_hist[i]
                                                                   : cur[i];
            total += d[i];
        }
        s.lat_p50_us = hist_pct(d, total, 0.50);
        s.lat_p99_us = hist_pct(d, total, 0.99);
        memcpy(mp->prev_hist, cur, sizeof cur);
        mp->has_prev_hist = true;
    }
    plot_add(&mp->pd, &s);
}

void mig_plot_poll(mig_plot *mp, const qmpc_mig *src, qmpc *dst, uint64_t now_ms)
{
    if (!mp->on)
        return;
    json_t *raw = NULL;
    qmpc_mig d;
    lm_error err = {0};
    /* A failed query only costs this sample its fault figures. */
    if (!strncmp(src->status, "postcopy", 8) && qmpc_query_migrate(dst, &d, &raw, &err) < 0)
        raw = NULL;
    mig_plot_sample(mp, src, json_object_get(raw, "x-postcopy"), now_ms);
    json_decref(raw);
}

bool mig_wait_events(qmpc *c, uint64_t until_ms, mig_plot *mp, mig_event_fn fn, void *arg)
{
    while (!cli_interrupted) {
        uint64_t t = cli_now_ms();
        if (t >= until_ms)
            return false;
        json_t *ev = NULL;
        lm_error err = {0};
        int rc = qmpc_next_event(c, (int)(until_ms - t), &ev, &err);
        if (rc == -ETIMEDOUT)
            return false;
        if (rc < 0) {
            if (rc == -EINTR)
                continue;
            return false; /* the next query reports a dead connection */
        }
        mig_plot_event(mp, ev, cli_now_ms());
        const char *name = json_string_value(json_object_get(ev, "event"));
        const char *st = json_string_value(json_object_get(json_object_get(ev, "data"), "status"));
        bool wake = name && !strcmp(name, "MIGRATION") && st && qmpc_status_final(st);
        if (fn && fn(arg, ev))
            wake = true;
        json_decref(ev);
        if (wake)
            return true;
    }
    return true;
}

void mig_drain_events(qmpc *c, mig_plot *mp, mig_event_fn fn, void *arg)
{
    json_t *ev = NULL;
    lm_error err = {0};
    for (int i = 0; i < 1000 && (mp->on || fn) && qmpc_next_event(c, 0, &ev, &err) == 0; i++) {
        mig_plot_event(mp, ev, cli_now_ms());
        if (fn)
            fn(arg, ev);
        json_decref(ev);
    }
}

void mig_plot_event(mig_plot *mp, json_t *ev, uint64_t now_ms)
{
    if (!mp->on || !mp->t0_set)
        return;
    const char *name = json_string_value(json_object_get(ev, "event"));
    json_t *data = json_object_get(ev, "data");
    /* When it happened, not when it was read (events queue up behind a
     * query): the event's wall-clock timestamp, moved onto our clock. */
    json_t *ts = json_object_get(ev, "timestamp");
    json_t *sec = json_object_get(ts, "seconds"), *usec = json_object_get(ts, "microseconds");
    struct timespec rt;
    if (json_is_integer(sec) && json_is_integer(usec) && !clock_gettime(CLOCK_REALTIME, &rt)) {
        double ev_ms =
            (double)json_integer_value(sec) * 1000.0 + (double)json_integer_value(usec) / 1000.0;
        double ago = (double)rt.tv_sec * 1000.0 + (double)rt.tv_nsec / 1e6 - ev_ms;
        if (ago > 0 && ago < (double)(now_ms - mp->pd.t0_ms))
            now_ms -= (uint64_t)ago;
    }
    double t = t_of(mp, now_ms);
    if (!name)
        return;
    if (!strcmp(name, "MIGRATION_PASS")) {
        json_int_t n = json_integer_value(json_object_get(data, "pass"));
        if (n > 0)
            plot_mark_add(&mp->pd, PLOT_MARK_PASS, t, (uint64_t)n);
    } else if (!strcmp(name, "STOP")) {
        plot_mark_add(&mp->pd, PLOT_MARK_STOP, t, 0);
    } else if (!strcmp(name, "MIGRATION")) {
        const char *st = json_string_value(json_object_get(data, "status"));
        if (st && !strcmp(st, "postcopy-active"))
            plot_mark_add(&mp->pd, PLOT_MARK_POSTCOPY, t, 0);
    }
}

void mig_plot_close(mig_plot *mp)
{
    if (mp->f) {
        /* Nothing was drawn (the run ended before it began): leave no
         * empty file behind that was not there before. */
        fclose(mp->f);
        if (mp->created)
            unlink(mp->path);
    }
    mp->f = NULL;
    if (mp->on)
        plot_data_fini(&mp->pd);
    mp->on = false;
}

int mig_plot_finish(mig_plot *mp, const char *cmd, const qmpc_mig *last, uint64_t now_ms,
                    bool quiet)
{
    if (!mp->on)
        return 0;
    plot_data *pd = &mp->pd;
    if (!pd->n) {
        cli_err(cmd, "--plot '%s': no migration was seen (status %s), nothing drawn", mp->path,
                last->status[0] ? last->status : "none");
        mig_plot_close(mp);
        return -1;
    }
    snprintf(pd->status, sizeof pd->status, "%s", last->status);
    pd->end_ms = mp->t0_set ? t_of(mp, now_ms) : -1;
    pd->downtime = last->downtime;
    pd->passes = last->dirty_sync_count;
    /* "migration completed: 1.00 GiB of RAM, total 7.5 s, downtime 8 ms,
     * 11 passes", each part only when the host reported it. */
    char b[32];
    size_t n = (size_t)snprintf(pd->title, sizeof pd->title, "migration %s",
                                last->status[0] ? last->status : "?");
    const char *sep = ": ";
    if (pd->total_ram > 0 && n < sizeof pd->title) {
        n += (size_t)snprintf(pd->title + n, sizeof pd->title - n, "%s%s of RAM", sep,
                              cli_fmt_bytes(b, sizeof b, (double)pd->total_ram));
        sep = ", ";
    }
    if (last->total_time >= 0 && n < sizeof pd->title) {
        n += (size_t)snprintf(pd->title + n, sizeof pd->title - n, "%stotal %s", sep,
                              cli_fmt_ms(b, sizeof b, (double)last->total_time));
        sep = ", ";
    }
    if (last->downtime >= 0 && n < sizeof pd->title) {
        n += (size_t)snprintf(pd->title + n, sizeof pd->title - n, "%sdowntime %" PRId64 " ms", sep,
                              last->downtime);
        sep = ", ";
    }
    if (pd->passes && n < sizeof pd->title)
        snprintf(pd->title + n, sizeof pd->title - n, "%s%" PRIu64 " pass%s", sep, pd->passes,
                 pd->passes == 1 ? "" : "es");
    char msg[160];
    int rc = plot_write(pd, mp->f, mp->png, mp->w, mp->h, msg, sizeof msg);
    if (fclose(mp->f) && !rc) {
        snprintf(msg, sizeof msg, "%s", strerror(errno));
        rc = -1;
    }
    mp->f = NULL;
    if (rc < 0)
        cli_err(cmd, "--plot '%s': %s", mp->path, msg);
    else if (!quiet)
        printf("plot written to %s (%zu samples, %zu pass boundaries)\n", mp->path, pd->n,
               plot_pass_marks(pd));
    plot_data_fini(pd);
    mp->on = false;
    return rc;
}
