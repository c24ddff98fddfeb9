/* A small SVG line-chart writer for `skv eval --svg` and `skv bench decode --svg`. */
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

#endif
