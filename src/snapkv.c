/* SnapKV's pooling step (kvpress SnapKVPress), the library's (host/score.c pools the
 * device's window votes with it): the votes of the tokens before the window are
 * average-pooled (kernel 5, zero padding) in position order, over those tokens only, as
 * kvpress pools the non-window part of the scores (the window's tokens, always kept, lend
 * their votes to no neighbour). The neighbours are the held tokens adjacent in position:
 * after evictions they may be farther apart than one position, since an evicted token
 * has no vote to give. The whole score's C reference is src/ref/ref_snapkv.c. */
#include <math.h>
#include <stdlib.h>

#include "skv_ref.h"

typedef struct pos_index {
    int32_t pos;
    uint64_t index;
} pos_index;

static int by_position(const void *a, const void *b)
{
    const pos_index *x = a, *y = b;
    if (x->pos != y->pos)
        return (x->pos > y->pos) - (x->pos < y->pos);
    return (x->index > y->index) - (x->index < y->index);
}

int skv_ref_snapkv_pool(const float *votes, const int32_t *kpos, uint64_t n, int32_t window_start, float *out)
{
    pos_index *order = malloc((n ? n : 1) * sizeof *order);
    if (!order)
        return -1;
    for (uint64_t i = 0; i < n; i++)
        order[i] = (pos_index){kpos[i], i};
    qsort(order, n, sizeof *order, by_position);
    uint64_t before = 0; /* the tokens before the window: the first `before` in position order */
    while (before < n && order[before].pos < window_start)
        before++;
    for (uint64_t r = 0; r < n; r++) {
        double s = 0;
        for (int64_t o = -2; o <= 2; o++) {
            int64_t j = (int64_t)r + o;
            if (j >= 0 && (uint64_t)j < before)
                s += votes[order[j].index];
        }
        uint64_t t = order[r].index;
        out[t] = r >= before ? INFINITY : (float)(s / 5.0);
    }
    free(order);
    return 0;
}
