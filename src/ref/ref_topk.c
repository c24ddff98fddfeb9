/* Top-k of a weight row, the C reference of cl/topk.cl (HeteroCache, DESIGN.md §7b). */
#include <stdlib.h>

#include "skv_ref.h"

typedef struct ranked {
    float w;
    uint32_t i;
} ranked;

/* Larger weight first; ties by lower index. NaN ranks last. */
static int by_weight(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    const int xn = x->w != x->w, yn = y->w != y->w;
    if (xn != yn)
        return xn - yn;
    if (!xn && x->w != y->w)
        return x->w > y->w ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static int by_index(const void *a, const void *b)
{
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

uint32_t skv_ref_topk(const float *w, uint32_t n, uint32_t k, uint32_t *out)
{
    const uint32_t m = k < n ? k : n;
    if (m == 0)
        return 0;
    ranked *r = malloc((size_t)n * sizeof *r);
    if (!r)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        r[i].w = w[i];
        r[i].i = i;
    }
    qsort(r, n, sizeof *r, by_weight);
    for (uint32_t i = 0; i < m; i++)
        out[i] = r[i].i;
    free(r);
    qsort(out, m, sizeof *out, by_index);
    return m;
}
