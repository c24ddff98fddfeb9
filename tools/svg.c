/* SVG line charts: axes with ticks, one polyline and marker set per series, a legend. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svg.h"

typedef struct buf {
    char *s;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int w = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->n + (size_t)w < b->cap) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)w;
        char *g = realloc(b->s, cap);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
}

static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                     "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static double tr(double v, int lg) { return lg ? log10(v > 0 ? v : 1e-12) : v; }

static void panel(buf *b, const svg_panel *p, double ox, double oy, double w, double h)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (size_t s = 0; s < p->n_series; s++)
        for (size_t i = 0; i < p->series[s].n; i++) {
            double x = tr(p->series[s].x[i], p->log_x), y = tr(p->series[s].y[i], p->log_y);
            if (!isfinite(x) || !isfinite(y))
                continue;
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
        }
    if (!(x1 >= x0)) { /* nothing to draw */
        x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    }
    if (x1 == x0)
        x1 = x0 + 1;
    if (y1 == y0)
        y1 = y0 + 1;
    if (!p->log_y && y0 > 0)
        y0 = 0;
    const double L = ox + 70, R = ox + w - 200, T = oy + 40, B = oy + h - 50;
#define PX(x) (L + ((x) - x0) / (x1 - x0) * (R - L))
#define PY(y) (B - ((y) - y0) / (y1 - y0) * (B - T))
    put(b, "<text x='%.1f' y='%.1f' font-size='15' font-weight='bold'>%s</text>\n", L, oy + 22, p->title);
    put(b, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", L, T, R - L, B - T);
    for (int k = 0; k <= 4; k++) { /* ticks */
        double xv = x0 + (x1 - x0) * k / 4, yv = y0 + (y1 - y0) * k / 4;
        double xs = p->log_x ? pow(10, xv) : xv, ys = p->log_y ? pow(10, yv) : yv;
        put(b, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", PX(xv), T, PX(xv), B);
        put(b, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", L, PY(yv), R, PY(yv));
        put(b, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%.3g</text>\n", PX(xv), B + 16, xs);
        put(b, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%.3g</text>\n", L - 6, PY(yv) + 4, ys);
    }
    put(b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>%s</text>\n", (L + R) / 2, B + 36, p->xlabel);
    put(b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle' transform='rotate(-90 %.1f %.1f)'>%s</text>\n",
        ox + 18, (T + B) / 2, ox + 18, (T + B) / 2, p->ylabel);
    for (size_t s = 0; s < p->n_series; s++) {
        const svg_series *se = &p->series[s];
        const char *col = colors[(se->color >= 0 ? (size_t)se->color : s) % (sizeof colors / sizeof colors[0])];
        const char *dash = se->dash == 1 ? "6,4" : se->dash == 2 ? "2,3" : "none";
        put(b, "<polyline fill='none' stroke='%s' stroke-width='2' stroke-dasharray='%s' points='", col, dash);
        for (size_t i = 0; i < se->n; i++) {
            double x = tr(se->x[i], p->log_x), y = tr(se->y[i], p->log_y);
            if (isfinite(x) && isfinite(y))
                put(b, "%.1f,%.1f ", PX(x), PY(y));
        }
        put(b, "'/>\n");
        for (size_t i = 0; i < se->n; i++) {
            double x = tr(se->x[i], p->log_x), y = tr(se->y[i], p->log_y);
            if (isfinite(x) && isfinite(y))
                put(b, "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'/>\n", PX(x), PY(y), col);
        }
        put(b, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='3' stroke-dasharray='%s'/>\n",
            R + 12, T + 8 + 16.0 * s, R + 32, T + 8 + 16.0 * s, col, dash);
        put(b, "<text x='%.1f' y='%.1f' font-size='11'>%s</text>\n", R + 38, T + 12 + 16.0 * s, se->name);
    }
#undef PX
#undef PY
}

char *svg_chart(const char *heading, const svg_panel *panels, size_t n_panels)
{
    buf b = {0};
    size_t most = 0; /* the legend (16 px a line) sets the height when it is long */
    for (size_t i = 0; i < n_panels; i++)
        most = panels[i].n_series > most ? panels[i].n_series : most;
    const double w = 680, h = fmax(380, 40 + 16.0 * (double)most + 60);
    put(&b, "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' font-family='sans-serif'>\n",
        w * n_panels, h + 30);
    put(&b, "<rect width='100%%' height='100%%' fill='white'/>\n");
    put(&b, "<text x='10' y='20' font-size='13' fill='#333'>%s</text>\n", heading);
    for (size_t i = 0; i < n_panels; i++)
        panel(&b, &panels[i], w * i, 30, w, h);
    put(&b, "</svg>\n");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* red (0) -> yellow (0.5) -> green (1) */
static void heat_color(double v, char *out, size_t n)
{
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    int r = v < 0.5 ? 215 : (int)(215 - (v - 0.5) * 2 * (215 - 40));
    int g = v < 0.5 ? (int)(48 + v * 2 * (190 - 48)) : (int)(190 - (v - 0.5) * 2 * (190 - 160));
    int b = v < 0.5 ? 39 : (int)(39 + (v - 0.5) * 2 * (80 - 39));
    snprintf(out, n, "#%02x%02x%02x", r, g, b);
}

static void put_escaped(buf *b, const char *s)
{
    for (; s && *s; s++)
        if (*s == '<')
            put(b, "&lt;");
        else if (*s == '>')
            put(b, "&gt;");
        else if (*s == '&')
            put(b, "&amp;");
        else if (*s == '\'')
            put(b, "&apos;");
        else
            put(b, "%c", *s);
}

char *svg_heatmap(const char *heading, const svg_heat *h)
{
    buf b = {0};
    const double cw = 84, ch = 48, L = 110, T = 70;
    const double w = L + cw * (double)h->nx + 40, ht = T + ch * (double)h->ny + 60;
    const double wh = 20 + 6.8 * (double)strlen(heading), wt = 20 + 8.5 * (double)strlen(h->title);
    put(&b, "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' font-family='sans-serif'>\n",
        fmax(fmax(w, 420), fmax(wh, wt)), ht);
    put(&b, "<rect width='100%%' height='100%%' fill='white'/>\n");
    put(&b, "<text x='10' y='20' font-size='13' fill='#333'>");
    put_escaped(&b, heading);
    put(&b, "</text>\n<text x='10' y='44' font-size='15' font-weight='bold'>");
    put_escaped(&b, h->title);
    put(&b, "</text>\n");
    for (size_t y = 0; y < h->ny; y++) {
        put(&b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='end'>", L - 8, T + ch * (double)y + ch / 2 + 4);
        put_escaped(&b, h->yticks[y]);
        put(&b, "</text>\n");
        for (size_t x = 0; x < h->nx; x++) {
            const double v = h->value[y * h->nx + x], cx = L + cw * (double)x, cy = T + ch * (double)y;
            char col[8] = "#cccccc";
            if (v == v)
                heat_color(v, col, sizeof col);
            put(&b, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%s' stroke='white'/>\n", cx, cy, cw,
                ch, col);
            if (v == v)
                put(&b, "<text x='%.1f' y='%.1f' font-size='13' text-anchor='middle'>%.2f</text>\n", cx + cw / 2,
                    cy + ch / 2 + (h->count ? 0 : 5), v);
            else
                put(&b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>n/a</text>\n", cx + cw / 2,
                    cy + ch / 2 + (h->count ? 0 : 5));
            if (h->count)
                put(&b, "<text x='%.1f' y='%.1f' font-size='10' text-anchor='middle' fill='#333'>n=%d</text>\n",
                    cx + cw / 2, cy + ch / 2 + 14, h->count[y * h->nx + x]);
        }
    }
    for (size_t x = 0; x < h->nx; x++) {
        put(&b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>", L + cw * (double)x + cw / 2,
            T + ch * (double)h->ny + 18);
        put_escaped(&b, h->xticks[x]);
        put(&b, "</text>\n");
    }
    put(&b, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>", L + cw * (double)h->nx / 2,
        T + ch * (double)h->ny + 40);
    put_escaped(&b, h->xlabel);
    put(&b, "</text>\n<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle' transform='rotate(-90 %.1f %.1f)'>",
        20.0, T + ch * (double)h->ny / 2, 20.0, T + ch * (double)h->ny / 2);
    put_escaped(&b, h->ylabel);
    put(&b, "</text>\n</svg>\n");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
