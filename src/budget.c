/* Budget rules across layers and heads (DESIGN.md §7): uniform, PyramidKV (linear in
 * layer) and AdaKV (a guaranteed share per head, the rest to the best scores across the
 * layer's heads). They turn one mean budget into the per-layer and per-head budgets RDR
 * solves under. */
#include <stdlib.h>
#include <string.h>

#include "skv_internal.h"

skv_status skv_budget_layers(skv_budget_rule rule, uint32_t layers, uint64_t mean_tokens, uint64_t *per_layer)
{
    skvi_clear_error();
    if (!per_layer || layers == 0)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_layers: per_layer is NULL or layers is 0");
    if (mean_tokens > (UINT64_MAX / 4) / layers)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_layers: mean_tokens too large");
    if (rule == SKV_BUDGET_UNIFORM || rule == SKV_BUDGET_ADAKV || layers == 1) {
        for (uint32_t l = 0; l < layers; l++)
            per_layer[l] = mean_tokens;
        return SKV_OK;
    }
    if (rule != SKV_BUDGET_PYRAMID)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_layers: rule %d is not a layer rule", (int)rule);
    /* PyramidKV: from 2B - B/20 at the first layer down to B/20 at the last, linearly;
     * rounded so the layers add up to exactly layers * B. */
    const double b = (double)mean_tokens, top = 2.0 * b - b / 20.0, bottom = b / 20.0;
    uint64_t total = 0, want = (uint64_t)layers * mean_tokens;
    for (uint32_t l = 0; l < layers; l++) {
        double x = top + (bottom - top) * l / (layers - 1);
        per_layer[l] = (uint64_t)(x + 0.5);
        total += per_layer[l];
    }
    for (uint32_t l = 0; total != want; l = (l + 1) % layers) { /* spread the rounding */
        if (total < want) {
            per_layer[l]++;
            total++;
        } else if (per_layer[l] > 0) {
            per_layer[l]--;
            total--;
        }
    }
    return SKV_OK;
}

void skvi_budget_fit(uint64_t *per_layer, const uint64_t *held, uint32_t layers)
{
    uint64_t excess = 0;
    for (uint32_t l = 0; l < layers; l++)
        if (per_layer[l] > held[l]) {
            excess += per_layer[l] - held[l];
            per_layer[l] = held[l];
        }
    while (excess > 0) { /* water-filling: in proportion to room, the remainder a token at a time */
        uint64_t room = 0;
        for (uint32_t l = 0; l < layers; l++)
            room += held[l] - per_layer[l];
        if (room == 0)
            return; /* every layer full: the rest of the budget has nothing to hold */
        uint64_t given = 0;
        for (uint32_t l = 0; l < layers; l++) {
            const uint64_t r = held[l] - per_layer[l];
            const uint64_t add = (uint64_t)((double)excess * (double)r / (double)room);
            const uint64_t take = add < r ? add : r;
            per_layer[l] += take;
            given += take;
        }
        for (uint32_t l = 0; given < excess && l < layers; l++)
            if (per_layer[l] < held[l]) {
                per_layer[l]++;
                given++;
            }
        excess -= given;
    }
}

typedef struct scored {
    float score;
    uint32_t head;
    uint64_t index;
} scored;

/* Higher score first; ties by head, then index (deterministic). */
static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    if (x->head != y->head)
        return x->head < y->head ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

skv_status skv_budget_adakv(const float *scores, uint32_t heads, uint64_t tokens, uint64_t layer_budget,
                            float safeguard, uint64_t *per_head)
{
    skvi_clear_error();
    if (!scores || !per_head || heads == 0)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_adakv: scores or per_head is NULL, or heads is 0");
    if (!(safeguard >= 0.0f && safeguard <= 1.0f))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_adakv: safeguard %g is not in [0, 1]", safeguard);
    if (tokens > SIZE_MAX / sizeof(scored) / heads)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_budget_adakv: too many tokens");
    uint64_t capacity = (uint64_t)heads * tokens;
    if (layer_budget >= capacity) { /* everything fits */
        for (uint32_t h = 0; h < heads; h++)
            per_head[h] = tokens;
        return SKV_OK;
    }
    /* The guaranteed share: the top `floor` tokens of every head. */
    uint64_t floor = (uint64_t)((double)safeguard * (double)layer_budget / heads);
    if (floor > tokens)
        floor = tokens;
    scored *all = malloc((size_t)capacity * sizeof *all);
    scored *row = malloc((size_t)tokens * sizeof *row);
    if (!all || !row) {
        free(all);
        free(row);
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_budget_adakv: out of memory");
    }
    size_t n = 0;
    for (uint32_t h = 0; h < heads; h++) {
        for (uint64_t t = 0; t < tokens; t++)
            row[t] = (scored){scores[(size_t)h * tokens + t], h, t};
        qsort(row, (size_t)tokens, sizeof *row, by_score);
        per_head[h] = floor;
        for (uint64_t r = floor; r < tokens; r++) /* the rest compete across heads */
            all[n++] = row[r];
    }
    uint64_t rest = layer_budget - floor * heads;
    qsort(all, n, sizeof *all, by_score);
    for (uint64_t i = 0; i < rest && i < n; i++)
        per_head[all[i].head]++;
    free(all);
    free(row);
    return SKV_OK;
}
