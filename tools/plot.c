/*
 * plot.c - draws a migration's timeline (plot.h) with cairo: stacked panels
 * sharing the time axis (remaining bytes; throughput and dirty rate; with
 * postcopy, faults per second and their latency on a second y axis), the
 * pass boundaries, the switchover and the downtime across all of them.
 *
 * Why layers: cairo's SVG surface (1.16, Debian 12) cannot name what it
 * draws, and a test must find each series.  So every part is drawn on its
 * own transparent SVG surface of the full size, and the document is put
 * together here: each layer's content goes into <g id=".." class="..">,
 * with the ids cairo made inside it prefixed by the layer's id so that no
 * two layers clash.  A PNG is one image surface with the same drawing.
 */
#include "plot.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- data */

void plot_data_init(plot_data *pd, uint64_t t0_ms)
{
    memset(pd, 0, sizeof *pd);
    pd->t0_ms = t0_ms;
    pd->end_ms = -1;
    pd->downtime = -1;
    pd->total_ram = -1;
}

void plot_data_fini(plot_data *pd)
{
    free(pd->s);
    pd->s = NULL;
    pd->n = pd->cap = 0;
}

bool plot_add(plot_data *pd, const plot_sample *s)
{
    if (pd->n == PLOT_MAX_SAMPLES) {
        /* Thin out: keep every other sample, the last one included. */
        size_t k = 0;
        for (size_t i = pd->n % 2 ? 0 : 1; i < pd->n; i += 2)
            pd->s[k++] = pd->s[i];
        pd->n = k;
    }
    if (pd->n == pd->cap) {
        size_t cap = pd->cap ? pd->cap * 2 : 256;
        if (cap > PLOT_MAX_SAMPLES)
            cap = PLOT_MAX_SAMPLES;
        plot_sample *ns = realloc(pd->s, cap * sizeof *ns);
        if (!ns)
            return false;
        pd->s = ns;
        pd->cap = cap;
    }
    pd->s[pd->n++] = *s;
    return true;
}

void plot_mark_add(plot_data *pd, plot_mark_kind kind, double t_ms, uint64_t n)
{
    for (size_t i = 0; i < pd->nmarks; i++) {
        plot_mark *m = &pd->marks[i];
        if (m->kind == kind && (kind != PLOT_MARK_PASS || m->n == n)) {
            /* Seen twice (a sample, then the event): the earlier holds. */
            if (t_ms < m->t_ms)
                m->t_ms = t_ms;
            return;
        }
    }
    if (pd->nmarks < PLOT_MAX_MARKS)
        pd->marks[pd->nmarks++] = (plot_mark){kind, t_ms, n};
}

size_t plot_pass_marks(const plot_data *pd)
{
    size_t k = 0;
    for (size_t i = 0; i < pd->nmarks; i++)
        k += pd->marks[i].kind == PLOT_MARK_PASS;
    return k;
}

static const plot_mark *mark_of(const plot_data *pd, plot_mark_kind kind)
{
    for (size_t i = 0; i < pd->nmarks; i++)
        if (pd->marks[i].kind == kind)
            return &pd->marks[i];
    return NULL;
}

/* ------------------------------------------------------------ layers */

/* Bound on one layer's SVG text: a full-size series is a few hundred KiB. */
#define LAYER_MAX (64u << 20)

typedef struct canvas {
    FILE *f;
    bool png;
    int w, h;
    cairo_surface_t *img; /* png: the one surface */
    cairo_t *cr;          /* png: shared; svg: the open layer's */
    cairo_surface_t *layer;
    char id[48], cls[24];
    long points;
    char *buf; /* svg: the open layer's text */
    size_t len, cap;
    bool failed;
} canvas;

static cairo_status_t layer_write(void *closure, const unsigned char *data, unsigned int n)
{
    canvas *c = closure;
    if (c->len + n > LAYER_MAX)
        return CAIRO_STATUS_WRITE_ERROR;
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->len + n)
            cap *= 2;
        char *nb = realloc(c->buf, cap);
        if (!nb)
            return CAIRO_STATUS_NO_MEMORY;
        c->buf = nb;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    return CAIRO_STATUS_SUCCESS;
}

static cairo_t *layer_begin(canvas *c, const char *id, const char *cls, long points)
{
    snprintf(c->id, sizeof c->id, "%s", id);
    snprintf(c->cls, sizeof c->cls, "%s", cls);
    c->points = points;
    if (c->png) {
        cairo_save(c->cr);
        return c->cr;
    }
    c->len = 0;
    c->layer = cairo_svg_surface_create_for_stream(layer_write, c, c->w, c->h);
    c->cr = cairo_create(c->layer);
    return c->cr;
}

/* Copies s[0..n) to f with every id and reference to one prefixed. */
static void put_prefixed(FILE *f, const char *s, size_t n, const char *prefix)
{
    static const char *const keys[] = {"id=\"", "url(#", "href=\"#"};
    size_t i = 0;
    while (i < n) {
        size_t klen = 0;
        for (size_t k = 0; k < 3 && !klen; k++) {
            size_t l = strlen(keys[k]);
            if (n - i >= l && !memcmp(s + i, keys[k], l))
                klen = l;
        }
        if (klen) {
            fwrite(s + i, 1, klen, f);
            fprintf(f, "%s-", prefix);
            i += klen;
        } else {
            fputc(s[i++], f);
        }
    }
}

static void layer_end(canvas *c)
{
    if (c->png) {
        cairo_restore(c->cr);
        return;
    }
    cairo_destroy(c->cr);
    c->cr = NULL;
    cairo_surface_finish(c->layer);
    if (cairo_surface_status(c->layer) != CAIRO_STATUS_SUCCESS)
        c->failed = true;
    cairo_surface_destroy(c->layer);
    c->layer = NULL;
    /* The content of cairo's <svg> element: its own defs and drawing, in
     * the same user space as ours (viewBox 0 0 W H). */
    const char *b = c->buf ? memmem(c->buf, c->len, "<svg", 4) : NULL;
    const char *open_end = b ? memchr(b, '>', c->len - (size_t)(b - c->buf)) : NULL;
    const char *close = NULL;
    for (const char *p = c->buf ? c->buf + c->len : NULL; p && open_end && p > open_end + 6; p--)
        if (!memcmp(p - 6, "</svg>", 6)) {
            close = p - 6;
            break;
        }
    if (!open_end || !close) {
        c->failed = true;
        return;
    }
    fprintf(c->f, "<g id=\"%s\" class=\"%s\"", c->id, c->cls);
    if (c->points >= 0)
        fprintf(c->f, " data-points=\"%ld\"", c->points);
    fprintf(c->f, ">");
    put_prefixed(c->f, open_end + 1, (size_t)(close - open_end - 1), c->id);
    fprintf(c->f, "</g>\n");
}

/* ---------------------------------------------------------- geometry */

typedef struct panel {
    double x0, y0, x1, y1; /* device rect: x0 left, y0 top */
    double ymax;           /* left axis: 0..ymax */
    double rmax;           /* right axis, logarithmic: 1..rmax (0: none) */
    double unit;           /* left axis unit in data units per label unit */
    char ylabel[48], rlabel[48];
} panel;

typedef struct geom {
    double xmax_ms;
    panel p[3];
    int np;
} geom;

static double px(const panel *p, const geom *g, double t_ms)
{
    return p->x0 + (p->x1 - p->x0) * t_ms / g->xmax_ms;
}

static double py(const panel *p, double v)
{
    return p->y1 - (p->y1 - p->y0) * v / p->ymax;
}

/* Latencies span decades (a p50 of tens of us beside a p99 of ms): the
 * right axis is logarithmic from 1. */
static double pyr(const panel *p, double v)
{
    return p->y1 - (p->y1 - p->y0) * log10(fmax(v, 1)) / log10(p->rmax);
}

/* 1, 2 or 5 times a power of ten, giving about `want` steps over range. */
static double nice_step(double range, int want)
{
    double raw = range / want, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

/* A binary unit for bytes so that max reads as 1..1023 of it. */
static double bytes_unit(double max, const char **name)
{
    static const char *const names[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    double u = 1;
    while (i < 4 && max >= u * 1024) {
        u *= 1024;
        i++;
    }
    *name = names[i];
    return u;
}

static void fmt_tick(char *buf, size_t cap, double v, double step)
{
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, cap, "%.*f", dec, v);
}

/* ------------------------------------------------------------ drawing */

static void rgb(cairo_t *cr, unsigned hex)
{
    cairo_set_source_rgb(cr, ((hex >> 16) & 255) / 255.0, ((hex >> 8) & 255) / 255.0,
                         (hex & 255) / 255.0);
}

#define C_REMAINING 0x1f77b4
#define C_TPUT 0x2ca02c
#define C_DIRTY 0xff7f0e
#define C_FAULTS 0x9467bd
#define C_P50 0x8c564b
#define C_P99 0xe377c2
#define C_SWITCH 0xd62728
#define C_PASS 0x7f7f7f

/* align: 0 left, 1 centre, 2 right; valign: 0 baseline, 1 centre, 2 top */
static void text(cairo_t *cr, double x, double y, int align, int valign, double size,
                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static void text(cairo_t *cr, double x, double y, int align, int valign, double size,
                 const char *fmt, ...)
{
    char s[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    double dx = align == 1 ? -e.x_advance / 2 : align == 2 ? -e.x_advance : 0;
    double dy = valign == 1 ? size * 0.36 : valign == 2 ? size * 0.75 : 0;
    cairo_move_to(cr, x + dx, y + dy);
    cairo_show_text(cr, s);
}

static void clip_panel(cairo_t *cr, const panel *p)
{
    cairo_rectangle(cr, p->x0, p->y0 - 1, p->x1 - p->x0, p->y1 - p->y0 + 2);
    cairo_clip(cr);
}

static double v_remaining(const plot_data *pd, size_t i);
static double v_tput(const plot_data *pd, size_t i);
static long count_of(const plot_data *pd, double (*val)(const plot_data *, size_t));

static void draw_frame(cairo_t *cr, const plot_data *pd, const geom *g, int w, int h)
{
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text(cr, w / 2.0, 26, 1, 0, 16, "%s", pd->title);
    double xstep = nice_step(g->xmax_ms / 1000.0, 10);
    for (int i = 0; i < g->np; i++) {
        const panel *p = &g->p[i];
        /* grid and ticks */
        cairo_set_line_width(cr, 1);
        double ystep = nice_step(p->ymax / p->unit, 5);
        for (double v = 0; v <= p->ymax / p->unit + 1e-9; v += ystep) {
            double y = round(py(p, v * p->unit)) + 0.5;
            cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
            cairo_move_to(cr, p->x0, y);
            cairo_line_to(cr, p->x1, y);
            cairo_stroke(cr);
            char b[32];
            fmt_tick(b, sizeof b, v, ystep);
            cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
            text(cr, p->x0 - 6, y, 2, 1, 11, "%s", b);
        }
        if (p->rmax > 0) {
            for (double v = 1; v <= p->rmax * 1.0001; v *= 10) {
                cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
                if (v >= 1000)
                    text(cr, p->x1 + 6, pyr(p, v), 0, 1, 11, "%.0fk", v / 1000);
                else
                    text(cr, p->x1 + 6, pyr(p, v), 0, 1, 11, "%.0f", v);
            }
        }
        for (double t = 0; t <= g->xmax_ms / 1000.0 + 1e-9; t += xstep) {
            double x = round(px(p, g, t * 1000)) + 0.5;
            cairo_set_source_rgb(cr, 0.93, 0.93, 0.93);
            cairo_move_to(cr, x, p->y0);
            cairo_line_to(cr, x, p->y1);
            cairo_stroke(cr);
            if (i == g->np - 1) {
                char b[32];
                fmt_tick(b, sizeof b, t, xstep);
                cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
                text(cr, x, p->y1 + 6, 1, 2, 11, "%s", b);
            }
        }
        cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
        cairo_rectangle(cr, p->x0 + 0.5, p->y0 + 0.5, p->x1 - p->x0, p->y1 - p->y0);
        cairo_stroke(cr);
        /* A destination reports no RAM figures: say so, not an empty box. */
        if (i < 2 && !count_of(pd, i == 0 ? v_remaining : v_tput)) {
            cairo_set_source_rgb(cr, 0.5, 0.5, 0.5);
            text(cr, p->x0 + 12, p->y1 - 12, 0, 0, 12,
                 "not reported by this host (a destination reports no RAM figures)");
        }
        /* axis titles, rotated */
        cairo_save(cr);
        cairo_translate(cr, p->x0 - 52, (p->y0 + p->y1) / 2);
        cairo_rotate(cr, -M_PI / 2);
        text(cr, 0, 0, 1, 1, 12, "%s", p->ylabel);
        cairo_restore(cr);
        if (p->rmax > 0) {
            cairo_save(cr);
            cairo_translate(cr, p->x1 + 52, (p->y0 + p->y1) / 2);
            cairo_rotate(cr, M_PI / 2);
            text(cr, 0, 0, 1, 1, 12, "%s", p->rlabel);
            cairo_restore(cr);
        }
    }
    const panel *last = &g->p[g->np - 1];
    text(cr, (last->x0 + last->x1) / 2, h - 14, 1, 0, 12, "time since the migration started (s)");
}

/* A polyline of the samples' values; a gap where a value is < 0. */
static long draw_series(cairo_t *cr, const plot_data *pd, const geom *g, const panel *p,
                        unsigned color, bool right, double (*val)(const plot_data *, size_t),
                        bool dots)
{
    long pts = 0;
    int seg = 0; /* points in the current run without a gap */
    double lx = 0, ly = 0;
    clip_panel(cr, p);
    rgb(cr, color);
    cairo_set_line_width(cr, 2);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    for (size_t i = 0; i <= pd->n; i++) {
        double v = i < pd->n ? val(pd, i) : -1;
        if (v < 0) {
            /* a run of one point would not show as a line: a dot */
            if (seg == 1 && !dots) {
                cairo_new_sub_path(cr);
                cairo_arc(cr, lx, ly, 2.5, 0, 2 * M_PI);
                cairo_close_path(cr);
                cairo_stroke(cr);
            }
            seg = 0;
            continue;
        }
        double x = px(p, g, pd->s[i].t_ms), y = right ? pyr(p, v) : py(p, v);
        if (dots) {
            cairo_new_sub_path(cr);
            cairo_arc(cr, x, y, 2.5, 0, 2 * M_PI);
        } else if (seg) {
            cairo_line_to(cr, x, y);
        } else {
            cairo_stroke(cr);
            cairo_move_to(cr, x, y);
        }
        lx = x;
        ly = y;
        seg++;
        pts++;
    }
    if (dots)
        cairo_fill(cr);
    else
        cairo_stroke(cr);
    return pts;
}

static double v_remaining(const plot_data *pd, size_t i)
{
    return pd->s[i].remaining;
}

static double v_tput(const plot_data *pd, size_t i)
{
    return pd->s[i].throughput;
}

static double v_dirty(const plot_data *pd, size_t i)
{
    return pd->s[i].postcopy ? -1 : pd->s[i].dirty_rate;
}

/* Faults per second over the interval that ends at sample i. */
static double v_fault_rate(const plot_data *pd, size_t i)
{
    if (i == 0 || !pd->s[i].postcopy || pd->s[i].faults < 0 || pd->s[i - 1].faults < 0)
        return -1;
    double dt = pd->s[i].t_ms - pd->s[i - 1].t_ms;
    double df = pd->s[i].faults - pd->s[i - 1].faults;
    return dt > 0 && df >= 0 ? df * 1000.0 / dt : -1;
}

static double v_p50(const plot_data *pd, size_t i)
{
    return pd->s[i].lat_p50_us;
}

static double v_p99(const plot_data *pd, size_t i)
{
    return pd->s[i].lat_p99_us;
}

static long count_of(const plot_data *pd, double (*val)(const plot_data *, size_t))
{
    long k = 0;
    for (size_t i = 0; i < pd->n; i++)
        k += val(pd, i) >= 0;
    return k;
}

static double max_of(const plot_data *pd, double (*val)(const plot_data *, size_t))
{
    double m = 0;
    for (size_t i = 0; i < pd->n; i++)
        m = fmax(m, val(pd, i));
    return m;
}

/* Every series: its group id, panel, colour, axis and values. */
static const struct {
    const char *id;
    int panel;
    unsigned color;
    bool right, dots;
    double (*val)(const plot_data *, size_t);
} series[] = {
    {"remaining", 0, C_REMAINING, false, false, v_remaining},
    {"throughput", 1, C_TPUT, false, false, v_tput},
    {"dirty-rate", 1, C_DIRTY, false, false, v_dirty},
    {"faults", 2, C_FAULTS, false, false, v_fault_rate},
    {"latency-p50", 2, C_P50, true, true, v_p50},
    {"latency-p99", 2, C_P99, true, true, v_p99},
};

typedef struct legend_item {
    const char *label;
    unsigned color;
    bool dots;
} legend_item;

/* Points of panel pi's series inside the rectangle. */
static long points_in(const plot_data *pd, const geom *g, int pi, double x0, double y0, double x1,
                      double y1)
{
    const panel *p = &g->p[pi];
    long k = 0;
    for (size_t j = 0; j < sizeof series / sizeof series[0]; j++) {
        if (series[j].panel != pi)
            continue;
        for (size_t i = 0; i < pd->n; i++) {
            double v = series[j].val(pd, i);
            if (v < 0)
                continue;
            double x = px(p, g, pd->s[i].t_ms), y = series[j].right ? pyr(p, v) : py(p, v);
            k += x >= x0 && x <= x1 && y >= y0 && y <= y1;
        }
    }
    return k;
}

/* The legend goes in the top corner, right or left, that hides fewer
 * points. */
static void draw_legend(cairo_t *cr, const plot_data *pd, const geom *g, int pi,
                        const legend_item *it, int n)
{
    const panel *p = &g->p[pi];
    double wmax = 0;
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 11);
    for (int i = 0; i < n; i++) {
        cairo_text_extents_t e;
        cairo_text_extents(cr, it[i].label, &e);
        wmax = fmax(wmax, e.x_advance);
    }
    double bw = wmax + 42, bh = 18.0 * n + 8, x = p->x1 - bw - 8, y = p->y0 + 8;
    double xl = p->x0 + 8;
    if (points_in(pd, g, pi, xl, y, xl + bw, y + bh) < points_in(pd, g, pi, x, y, x + bw, y + bh))
        x = xl;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, x, y, bw, bh);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (int i = 0; i < n; i++) {
        double ly = y + 13 + 18.0 * i;
        rgb(cr, it[i].color);
        if (it[i].dots) {
            cairo_arc(cr, x + 18, ly, 3, 0, 2 * M_PI);
            cairo_fill(cr);
        } else {
            cairo_set_line_width(cr, it[i].color == C_PASS ? 1 : 2);
            if (it[i].color == C_PASS)
                cairo_set_dash(cr, (double[]){4, 3}, 2, 0);
            cairo_move_to(cr, x + 8, ly);
            cairo_line_to(cr, x + 28, ly);
            cairo_stroke(cr);
            cairo_set_dash(cr, NULL, 0, 0);
        }
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
        text(cr, x + 34, ly, 0, 1, 11, "%s", it[i].label);
    }
}

/* A vertical line through every panel. */
static void vline(cairo_t *cr, const geom *g, double t_ms)
{
    double x = round(px(&g->p[0], g, t_ms)) + 0.5;
    for (int i = 0; i < g->np; i++) {
        cairo_move_to(cr, x, g->p[i].y0);
        cairo_line_to(cr, x, g->p[i].y1);
    }
    cairo_stroke(cr);
}

static void draw_marks(canvas *c, const plot_data *pd, const geom *g)
{
    /* pass boundaries: one group each, so a test can count them */
    double last_label_x = -1e9;
    for (size_t i = 0; i < pd->nmarks; i++) {
        const plot_mark *m = &pd->marks[i];
        if (m->kind != PLOT_MARK_PASS)
            continue;
        char id[32];
        snprintf(id, sizeof id, "pass-%" PRIu64, m->n);
        cairo_t *cr = layer_begin(c, id, "pass", -1);
        rgb(cr, C_PASS);
        cairo_set_line_width(cr, 1);
        cairo_set_dash(cr, (double[]){4, 3}, 2, 0);
        vline(cr, g, m->t_ms);
        double x = px(&g->p[0], g, m->t_ms);
        if (x - last_label_x >= 22) {
            text(cr, x + 2, g->p[0].y0 - 4, 1, 0, 10, "%" PRIu64, m->n);
            last_label_x = x;
        }
        layer_end(c);
    }
    const plot_mark *stop = mark_of(pd, PLOT_MARK_STOP);
    const plot_mark *pc = mark_of(pd, PLOT_MARK_POSTCOPY);
    /* The downtime starts where the source stopped the guest; without that
     * event, at the end less the downtime (precopy's switchover ends it). */
    double sw = stop                                          ? stop->t_ms
                : pd->end_ms >= 0 && pd->downtime >= 0 && !pc ? pd->end_ms - (double)pd->downtime
                                                              : -1;
    if (sw >= 0 && pd->downtime >= 0) {
        cairo_t *cr = layer_begin(c, "downtime", "downtime", -1);
        double x0 = px(&g->p[0], g, sw), x1 = px(&g->p[0], g, sw + (double)pd->downtime);
        if (x1 - x0 < 3)
            x1 = x0 + 3; /* visible however short */
        cairo_set_source_rgba(cr, 0.84, 0.15, 0.16, 0.25);
        for (int i = 0; i < g->np; i++)
            cairo_rectangle(cr, x0, g->p[i].y0, x1 - x0, g->p[i].y1 - g->p[i].y0);
        cairo_fill(cr);
        layer_end(c);
    }
    /* The switch begins where the source stops the guest, postcopy or not;
     * without a STOP event, where the status said postcopy. */
    double swx = sw >= 0 ? sw : pc ? pc->t_ms : -1;
    if (swx >= 0) {
        cairo_t *cr = layer_begin(c, "switchover", "switchover", -1);
        rgb(cr, C_SWITCH);
        cairo_set_line_width(cr, 1.5);
        vline(cr, g, swx);
        double x = px(&g->p[0], g, swx);
        char dt[48] = "";
        if (pd->downtime >= 0)
            snprintf(dt, sizeof dt, ", downtime %" PRId64 " ms", pd->downtime);
        const char *what = pc ? "switch to postcopy" : "switchover";
        /* On a light backdrop; left of the line when it is near the right. */
        char label[96];
        snprintf(label, sizeof label, "%s%s", what, dt);
        cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                               CAIRO_FONT_WEIGHT_NORMAL);
        cairo_set_font_size(cr, 11);
        cairo_text_extents_t e;
        cairo_text_extents(cr, label, &e);
        bool left = x > (g->p[0].x0 + g->p[0].x1) / 2;
        /* below the legend's three lines, which hold the panel's top right */
        double lx = left ? x - 6 - e.x_advance : x + 6, ly = g->p[0].y0 + 92;
        cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
        cairo_rectangle(cr, lx - 3, ly - 12, e.x_advance + 6, 17);
        cairo_fill(cr);
        rgb(cr, C_SWITCH);
        text(cr, lx, ly, 0, 0, 11, "%s", label);
        layer_end(c);
    }
}

static void layout(geom *g, const plot_data *pd, bool pc, int w, int h)
{
    double top = 52, bottom = h - 48, gap = 22, left = 86, right = w - (pc ? 86 : 30);
    static const double frac2[] = {0.55, 0.45}, frac3[] = {0.38, 0.31, 0.31};
    g->np = pc ? 3 : 2;
    const double *fr = pc ? frac3 : frac2;
    double avail = bottom - top - gap * (g->np - 1), y = top;
    for (int i = 0; i < g->np; i++) {
        panel *p = &g->p[i];
        p->x0 = left;
        p->x1 = right;
        p->y0 = round(y);
        p->y1 = round(y + avail * fr[i]);
        y += avail * fr[i] + gap;
    }
    const char *u;
    double rmax = fmax(max_of(pd, v_remaining), pd->total_ram > 0 ? 0 : 1);
    g->p[0].unit = bytes_unit(fmax(rmax, 1), &u);
    g->p[0].ymax = fmax(rmax * 1.05, g->p[0].unit);
    snprintf(g->p[0].ylabel, sizeof g->p[0].ylabel, "remaining (%s)", u);
    double rate = fmax(max_of(pd, v_tput), max_of(pd, v_dirty));
    g->p[1].unit = bytes_unit(fmax(rate, 1), &u);
    g->p[1].ymax = fmax(rate * 1.1, g->p[1].unit);
    snprintf(g->p[1].ylabel, sizeof g->p[1].ylabel, "rate (%s/s)", u);
    if (pc) {
        g->p[2].unit = 1;
        g->p[2].ymax = fmax(max_of(pd, v_fault_rate) * 1.1, 10);
        /* the next power of ten above the highest latency */
        double lmax = fmax(fmax(max_of(pd, v_p50), max_of(pd, v_p99)), 10);
        g->p[2].rmax = pow(10, ceil(log10(lmax) + 1e-9));
        snprintf(g->p[2].ylabel, sizeof g->p[2].ylabel,
                 pd->faults_are_dst ? "remote faults / s" : "page requests / s");
        snprintf(g->p[2].rlabel, sizeof g->p[2].rlabel, "fault latency (\xc2\xb5s, log)");
    }
    g->xmax_ms = 1;
    for (size_t i = 0; i < pd->n; i++)
        g->xmax_ms = fmax(g->xmax_ms, pd->s[i].t_ms);
    for (size_t i = 0; i < pd->nmarks; i++)
        g->xmax_ms = fmax(g->xmax_ms, pd->marks[i].t_ms);
    g->xmax_ms = fmax(g->xmax_ms, pd->end_ms);
}

static void xml_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

static cairo_status_t layer_write_png(void *closure, const unsigned char *data, unsigned int n)
{
    return fwrite(data, 1, n, closure) == n ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

int plot_write(const plot_data *pd, FILE *f, bool png, int width, int height, char *err,
               size_t errcap)
{
    canvas c = {.f = f, .png = png, .w = width, .h = height};
    bool pc = mark_of(pd, PLOT_MARK_POSTCOPY) != NULL;
    for (size_t i = 0; i < pd->n && !pc; i++)
        pc = pd->s[i].postcopy;
    geom g;
    memset(&g, 0, sizeof g);
    layout(&g, pd, pc, width, height);
    if (png) {
        c.img = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, width, height);
        c.cr = cairo_create(c.img);
    } else {
        fprintf(f,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" "
                "xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"%d\" height=\"%d\" "
                "viewBox=\"0 0 %d %d\" version=\"1.1\">\n<title>",
                width, height, width, height);
        xml_escaped(f, pd->title);
        fprintf(f, "</title>\n");
    }

    draw_frame(layer_begin(&c, "frame", "frame", -1), pd, &g, width, height);
    layer_end(&c);
    draw_marks(&c, pd, &g);
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++) {
        if (series[i].panel >= g.np)
            continue;
        cairo_t *cr = layer_begin(&c, series[i].id, "series", count_of(pd, series[i].val));
        draw_series(cr, pd, &g, &g.p[series[i].panel], series[i].color, series[i].right,
                    series[i].val, series[i].dots);
        layer_end(&c);
    }
    cairo_t *cr = layer_begin(&c, "legend", "legend", -1);
    draw_legend(cr, pd, &g, 0,
                (legend_item[]){{"remaining", C_REMAINING, false},
                                {"pass boundary (dirty sync)", C_PASS, false},
                                {pc ? "switch to postcopy" : "switchover", C_SWITCH, false}},
                3);
    draw_legend(cr, pd, &g, 1,
                (legend_item[]){{"throughput", C_TPUT, false}, {"dirty rate", C_DIRTY, false}}, 2);
    if (pc)
        draw_legend(cr, pd, &g, 2,
                    (legend_item[]){
                        {pd->faults_are_dst ? "remote faults" : "page requests", C_FAULTS, false},
                        {"latency p50 (right)", C_P50, true},
                        {"latency p99 (right)", C_P99, true}},
                    3);
    layer_end(&c);

    int rc = 0;
    if (png) {
        cairo_destroy(c.cr);
        if (cairo_surface_write_to_png_stream(c.img, layer_write_png, f) != CAIRO_STATUS_SUCCESS)
            c.failed = true;
        cairo_surface_destroy(c.img);
    } else {
        fprintf(f, "</svg>\n");
        free(c.buf);
    }
    /* cairo keeps its fonts (and fontconfig's patterns) for later drawings;
     * the CLI draws one picture and exits: give them back, so that a leak
     * checker sees none. */
    cairo_debug_reset_static_data();
    FcFini();
    if (c.failed || fflush(f) || ferror(f)) {
        snprintf(err, errcap, "could not draw or write the picture");
        rc = -1;
    }
    return rc;
}
