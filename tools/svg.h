/* A small SVG writer: line charts for `skv eval --svg` and `skv bench decode --svg`, heat
 * maps for `skv longeval --svg`. */
#ifndef SKV_SVG_H
#define SKV_SVG_H

#include <stddef.h>

typedef struct svg_series {
    const char *name;
    const double *x, *y;
    size_t n;
    int color; /* index into the palette; -1: the series' own index */
    int dash;  /* 0 solid, 1 dashed, 2 dotted */
} svg_series;

typedef struct svg_panel {
    const char *title, *xlabel, *ylabel;
    int log_x, log_y;
    const svg_series *series;
    size_t n_series;
} svg_panel;

/* Panels side by side, with a legend per panel; a malloc'ed string (NULL on OOM). */
char *svg_chart(const char *heading, const svg_panel *panels, size_t n_panels);

/* A heat map: ny rows (y ticks, top to bottom) by nx columns of values in [0, 1]
 * coloured red (0) through yellow to green (1), each cell labelled with its value and,
 * with counts, the samples behind it; a NaN value is a grey "n/a" cell. */
typedef struct svg_heat {
    const char *title, *xlabel, *ylabel;
    const char *const *xticks;
    size_t nx;
    const char *const *yticks;
    size_t ny;
    const double *value; /* [ny][nx] */
    const int *count;    /* [ny][nx], or NULL */
} svg_heat;

/* One heat map under a heading; a malloc'ed string (NULL on OOM). */
char *svg_heatmap(const char *heading, const svg_heat *h);

#endif
