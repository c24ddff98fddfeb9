/* HeteroCache's head statistics and categories (DESIGN.md §7b), in C: the calibration's
 * arithmetic (stability, similarity, greedy star clustering, per-head budgets). The
 * reference the device top-k is held to is src/ref/ref_topk.c. */
#include <stdlib.h>
#include <string.h>

#include "skv_internal.h"
#include "skv_ref.h"

uint32_t skv_ref_set_overlap(const uint32_t *a, uint32_t na, const uint32_t *b, uint32_t nb)
{
    uint32_t i = 0, j = 0, both = 0;
    while (i < na && j < nb) {
        if (a[i] == b[j]) {
            both++;
            i++;
            j++;
        } else if (a[i] < b[j]) {
            i++;
        } else {
            j++;
        }
    }
    return both;
}

static int by_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

float skv_ref_hetero_stability(const uint32_t *sets, const uint32_t *counts, uint32_t steps, uint32_t stride,
                               const uint32_t *ref, uint32_t ref_count, uint32_t k)
{
    if (steps == 0 || k == 0)
        return 0.0f;
    float *f = malloc(steps * sizeof *f);
    if (!f)
        return 0.0f;
    for (uint32_t t = 0; t < steps; t++)
        f[t] = (float)skv_ref_set_overlap(sets + (size_t)t * stride, counts[t], ref, ref_count) / (float)k;
    qsort(f, steps, sizeof *f, by_float);
    /* the median; of an even count, the mean of the middle two */
    float s = steps % 2 ? f[steps / 2] : 0.5f * (f[steps / 2 - 1] + f[steps / 2]);
    free(f);
    return s;
}

skv_status skv_ref_hetero_classify(uint32_t heads, const float *stability, const float *similarity, float tau_sim,
                                   float tau_stable, skv_head_category *category, uint32_t *pivot)
{
    if (heads == 0 || !stability || !similarity || !category || !pivot)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "hetero classify: heads is 0 or an array is NULL");
    if (!(tau_sim >= 0.0f && tau_sim <= 1.0f) || !(tau_stable >= 0.0f && tau_stable <= 1.0f))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "hetero classify: tau_sim %g and tau_stable %g must be in [0, 1]",
                         (double)tau_sim, (double)tau_stable);
    uint8_t *done = calloc(heads, 1);
    if (!done)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "hetero classify: out of memory");
    for (;;) {
        /* the unassigned head with the most unassigned similar heads becomes a pivot
         * (ties: the more stable, then the lower index): a star of it and them */
        uint32_t best = heads, best_deg = 0;
        for (uint32_t h = 0; h < heads; h++) {
            if (done[h])
                continue;
            uint32_t deg = 0;
            for (uint32_t o = 0; o < heads; o++)
                deg += o != h && !done[o] && similarity[(size_t)h * heads + o] >= tau_sim;
            if (deg > best_deg || (deg == best_deg && deg > 0 && best < heads && stability[h] > stability[best])) {
                best = h;
                best_deg = deg;
            }
        }
        if (best == heads)
            break;
        category[best] = SKV_HEAD_PIVOT;
        pivot[best] = best;
        done[best] = 1;
        for (uint32_t o = 0; o < heads; o++)
            if (!done[o] && similarity[(size_t)best * heads + o] >= tau_sim) {
                category[o] = SKV_HEAD_SATELLITE;
                pivot[o] = best;
                done[o] = 1;
            }
    }
    for (uint32_t h = 0; h < heads; h++)
        if (!done[h]) {
            category[h] = stability[h] >= tau_stable ? SKV_HEAD_ANCHOR : SKV_HEAD_VOLATILE;
            pivot[h] = h;
        }
    free(done);
    return SKV_OK;
}

skv_status skv_ref_hetero_budgets(uint32_t heads, const skv_head_category *category, const float *stability,
                                  const uint64_t *length, uint64_t budget, float eps, uint64_t *out)
{
    if (heads == 0 || !category || !stability || !length || !out || !(eps > 0.0f))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "hetero budgets: heads is 0, an array is NULL or eps <= 0");
    uint64_t full = 0;
    for (uint32_t h = 0; h < heads; h++) {
        if ((unsigned)category[h] > SKV_HEAD_VOLATILE)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "hetero budgets: head %u has category %d", h,
                             (int)category[h]);
        out[h] = 0;
        if (category[h] == SKV_HEAD_PIVOT || category[h] == SKV_HEAD_VOLATILE) {
            out[h] = length[h]; /* whole cache on the device */
            full += length[h];
        }
    }
    if (full > budget)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "hetero budgets: the pivots and volatile heads hold %llu tokens, more than the budget %llu",
                         (unsigned long long)full, (unsigned long long)budget);
    /* the rest to anchors and satellites in proportion to 1 / (S + eps), none above its
     * length: water-filling, a capped head's surplus going to the others */
    uint64_t left = budget - full;
    uint8_t *capped = calloc(heads, 1);
    if (!capped)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "hetero budgets: out of memory");
    for (int changed = 1; changed;) {
        changed = 0;
        double wsum = 0.0;
        uint64_t room = left;
        for (uint32_t h = 0; h < heads; h++) {
            const int weighted = category[h] == SKV_HEAD_ANCHOR || category[h] == SKV_HEAD_SATELLITE;
            if (weighted && !capped[h])
                wsum += 1.0 / ((double)stability[h] + eps);
            else if (weighted)
                room -= length[h];
        }
        for (uint32_t h = 0; h < heads; h++) {
            if (!(category[h] == SKV_HEAD_ANCHOR || category[h] == SKV_HEAD_SATELLITE))
                continue;
            if (capped[h]) {
                out[h] = length[h];
                continue;
            }
            const double share = wsum > 0.0 ? (double)room / ((double)stability[h] + eps) / wsum : 0.0;
            out[h] = (uint64_t)share; /* rounded down: the total never exceeds the budget */
            if (out[h] >= length[h]) {
                out[h] = length[h];
                capped[h] = 1;
                changed = 1;
            }
        }
    }
    free(capped);
    return SKV_OK;
}

const char *skv_head_category_str(skv_head_category c)
{
    switch (c) {
    case SKV_HEAD_PIVOT: return "pivot";
    case SKV_HEAD_SATELLITE: return "satellite";
    case SKV_HEAD_ANCHOR: return "anchor";
    case SKV_HEAD_VOLATILE: return "volatile";
    }
    return "invalid";
}
