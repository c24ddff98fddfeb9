/* RDR in the cache (DESIGN.md §7): for each (layer, kv-head) of a sequence, scores ->
 * utilities -> the solver (src/rdr.c) -> packing into tier-homogeneous pages. Every list
 * whose tokens change is rebuilt into fresh pages (kept tokens copied slot by slot,
 * tokens entering an ADA tier encoded from their F16 slots), and nothing of the sequence
 * changes until every page is taken and every kernel enqueued: all or nothing.
 * Utility mapping: scores are z-scored over the candidates and u = softmax(z), an
 * estimate of each token's share of future attention (monotone in the score, so with
 * tiers {F16, drop} RDR keeps exactly the top tokens by score); the attention scorers'
 * scores (SnapKV, observed) are shares already: u = score / their sum. Distortion of tier t:
 * u (kappa/2 MSE_K,t |k|^2 / mean |k|^2 + MSE_V,t) with the measured codec errors below
 * and kappa the head's logit variance (rdr_model.c); drop costs u. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

/* Normalised key MSE (DESIGN.md §5, matched by tests/test_ada.c) and relative value MSE
 * of int8/int4/int2 groups of 32 (measured in tests/test_ada.c) per tier. */
static const double mse_k[SKV_TIER_COUNT] = {0.0, 0.0093, 0.034, 0.119};
static const double mse_v[SKV_TIER_COUNT] = {0.0, 2.0e-5, 5.9e-3, 0.149};

typedef struct src_token {
    uint8_t tier;  /* where it is */
    uint32_t page; /* device page id */
    uint32_t slot;
    int32_t pos;
} src_token;

/* What one (layer, kv-head) turns into. */
typedef struct lh_plan {
    uint32_t n;        /* held tokens */
    src_token *src;    /* [n] in cache order */
    uint8_t *final;    /* [n] tier, or SKV_RDR_DROP */
    int active;         /* RDR compresses this (layer, kv-head) */
    float *score, *ksq; /* [n], read back (plan_read) until the candidates are made */
    int32_t *pos;
    int kept;           /* the scores go to the list's kept scores once read (score_cache.c) */
    uint64_t budget;    /* its bytes */
    skv_rdr_problem pr; /* the candidates (pr.n of them) */
    skv_rdr_item *items;
    uint32_t *item_of;  /* [pr.n]: the candidate's index in src */
    uint8_t *choice;    /* [pr.n]: the solver's */
    int rc;
    int rebuild[SKV_TIER_COUNT];
    uint32_t count[SKV_TIER_COUNT];
    uint32_t keep[SKV_TIER_COUNT];       /* leading full pages kept as they are (a list that only gains) */
    uint32_t first_page[SKV_TIER_COUNT]; /* into taken[tier] */
} lh_plan;

/* A (layer, kv-head)'s scores, |k|^2 and positions, enqueued: the key-statistics scorers
 * and the positions leave their reads in flight for the wave's one wait (others wait). */
static skv_status plan_read(skv_cache *c, skv_seq_id seq, skvi_seq *s, uint32_t layer, uint32_t head, lh_plan *lp)
{
    const skv_allocator *a = c->ctx->alloc;
    size_t held = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        held += skvi_seq_list(c, s, layer, head, (skv_tier)t)->tokens;
    lp->n = (uint32_t)held;
    lp->src = skvi_calloc(a, held ? held : 1, sizeof *lp->src);
    lp->final = skvi_calloc(a, held ? held : 1, sizeof *lp->final);
    lp->score = skvi_calloc(a, held ? held : 1, sizeof *lp->score);
    lp->ksq = skvi_calloc(a, held ? held : 1, sizeof *lp->ksq);
    lp->pos = skvi_calloc(a, held ? held : 1, sizeof *lp->pos);
    lp->items = skvi_calloc(a, held ? held : 1, sizeof *lp->items);
    lp->item_of = skvi_calloc(a, held ? held : 1, sizeof *lp->item_of);
    lp->choice = skvi_calloc(a, held ? held : 1, sizeof *lp->choice);
    if (!lp->src || !lp->final || !lp->score || !lp->ksq || !lp->pos || !lp->items || !lp->item_of || !lp->choice)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    if (!held)
        return SKV_OK;
    uint32_t from[SKV_TIER_COUNT] = {0}; /* tokens with kept scores and positions, per tier list */
    skv_status st = skvi_scores_kept(c) ? skvi_kept_scores_load(c, s, layer, head, lp->score, lp->ksq, lp->pos, from)
                                        : SKV_OK;
    int deferred = 0;
    if (st == SKV_OK)
        st = skvi_scores_rdr(c, seq, layer, head, lp->score, lp->ksq, held, from, &deferred, &lp->kept);
    c->compress_waits += !deferred; /* that scorer read its scores back with a wait */
    if (st == SKV_OK)
        st = skvi_positions_enqueue(c, s, layer, head, lp->pos, held, lp->kept ? from : NULL);
    return st;
}

static void plan_unread(skv_cache *c, lh_plan *lp)
{
    skvi_free(c->ctx->alloc, lp->score);
    skvi_free(c->ctx->alloc, lp->ksq);
    skvi_free(c->ctx->alloc, lp->pos);
    lp->score = lp->ksq = NULL;
    lp->pos = NULL;
}

/* A (layer, kv-head)'s candidates and their utilities from what plan_read read (the
 * queue waited on): the problem the solver takes. */
static skv_status plan_prepare(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, uint64_t budget, lh_plan *lp)
{
    const uint32_t P = c->desc.page_tokens;
    const size_t held = lp->n;
    const float *score = lp->score, *ksq = lp->ksq;
    const int32_t *pos = lp->pos;
    skv_rdr_item *items = lp->items;
    uint32_t *item_of = lp->item_of;
    skv_status st = SKV_OK;
    if (st == SKV_OK) {
        size_t i = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++) {
            const skvi_page_list *l = skvi_seq_list(c, s, layer, head, (skv_tier)t);
            for (uint32_t k = 0; k < l->tokens; k++, i++)
                lp->src[i] = (src_token){(uint8_t)t, l->ids[k / P], k % P, pos[i]};
        }
        /* candidates: all but the sinks, the recent window and +inf scores. A score of
         * -inf or NaN (a key that overflowed fp16) is a candidate of no utility, and a
         * non-finite |k|^2 weighs nothing in the key energies */
        skv_rdr_problem pr;
        memset(&pr, 0, sizeof pr);
        lp->rc = 0;
        double mean = 0, var = 0, energy = 0;
        uint32_t n = 0, n_finite = 0, n_energy = 0;
        for (size_t k = 0; k < held; k++) {
            int64_t p = lp->src[k].pos;
            int prot = p < (int64_t)c->desc.n_sink || p >= s->next_pos[layer] - (int64_t)c->desc.recent_window ||
                       score[k] == INFINITY;
            lp->final[k] = lp->src[k].tier; /* by default a token stays where it is */
            if (prot) {
                pr.fixed[lp->src[k].tier]++;
                continue;
            }
            item_of[n] = (uint32_t)k;
            items[n].current = lp->src[k].tier;
            if (isfinite(score[k]))
                mean += score[k], n_finite++;
            if (isfinite(ksq[k]))
                energy += ksq[k], n_energy++;
            n++;
        }
        mean = n_finite ? mean / n_finite : 0;
        energy = n_energy ? energy / n_energy : 1;
        for (uint32_t k = 0; k < n; k++)
            if (isfinite(score[item_of[k]]))
                var += (score[item_of[k]] - mean) * (score[item_of[k]] - mean);
        double sd = n_finite ? sqrt(var / n_finite) : 1, zmax = -INFINITY, zsum = 0;
        for (uint32_t k = 0; k < n; k++) {
            const double sk = score[item_of[k]];
            double z = !isfinite(sk) ? -INFINITY : sd > 0 ? (sk - mean) / sd : 0;
            items[k].u = (float)z;
            zmax = z > zmax ? z : zmax;
        }
        for (uint32_t k = 0; n_finite && k < n; k++)
            zsum += exp(items[k].u - zmax);
        const double w = skvi_rdr_key_weight(c, layer, head, energy); /* rdr_model.c */
        /* the attention scorers' scores are attention shares already (SnapKV's window mean,
         * H2O's mean per step): their utility is the share itself, not a softmax of
         * z-scores, which would give the few largest all of it (docs/rdr.md) */
        double share_sum = 0;
        const int shares = c->desc.scorer == SKV_SCORER_SNAPKV || c->desc.scorer == SKV_SCORER_OBSERVED;
        for (uint32_t k = 0; shares && k < n; k++) {
            const double sk = score[item_of[k]];
            share_sum += isfinite(sk) && sk > 0 ? sk : 0;
        }
        for (uint32_t k = 0; k < n; k++) {
            const double sk = score[item_of[k]];
            if (share_sum > 0)
                items[k].u = isfinite(sk) && sk > 0 ? (float)(sk / share_sum) : 0.0f;
            else
                items[k].u = n_finite ? (float)(exp(items[k].u - zmax) / zsum) : 0.0f; /* exp(-inf) = 0 */
            double e = ksq[item_of[k]];
            items[k].key_energy = isfinite(e) ? (float)(w * (energy > 0 ? e / energy : 1)) : 0.0f;
        }
        pr.items = items;
        pr.n = n;
        pr.tiers = c->desc.tiers;
        pr.page_tokens = P;
        for (int t = 0; t < SKV_TIER_COUNT; t++) {
            pr.mse_k[t] = mse_k[t];
            pr.mse_v[t] = mse_v[t];
            pr.page_bytes[t] = skvi_tier_page_bytes((skv_tier)t, c->desc.head_dim, P);
            pr.token_bytes[t] = (double)pr.page_bytes[t] / P;
        }
        /* the sinks and the recent window stay whatever the budget: a budget below them
         * (PyramidKV's last layers on a short sequence) means keeping only them */
        uint64_t floor_bytes = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            floor_bytes += (pr.fixed[t] + P - 1) / P * pr.page_bytes[t];
        pr.budget = budget > floor_bytes ? budget : floor_bytes;
        lp->pr = pr;
    }
    skvi_free(c->ctx->alloc, lp->pos); /* the scores stay for the kept scores (keep_scores) */
    lp->pos = NULL;
    return st;
}

/* The solver's choices into the plan: the final tier of every token, which lists change,
 * and the leading pages a list that only gains keeps. */
static skv_status plan_finish(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, uint64_t budget, lh_plan *lp)
{
    const uint32_t P = c->desc.page_tokens;
    if (lp->rc != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_compress: layer %u head %u: %llu bytes cannot hold the protected tokens", layer, head,
                         (unsigned long long)budget);
    if (lp->pr.n && skv_rdr_uniform_check(&lp->pr, lp->choice) == -2)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    for (uint64_t k = 0; k < lp->pr.n; k++)
        lp->final[lp->item_of[k]] = lp->choice[k];
    int loses[SKV_TIER_COUNT] = {0};
    for (size_t k = 0; k < lp->n; k++) {
        if (lp->final[k] != SKV_RDR_DROP)
            lp->count[lp->final[k]]++;
        if (lp->final[k] != lp->src[k].tier) {
            lp->rebuild[lp->src[k].tier] = 1;
            loses[lp->src[k].tier] = 1;
            if (lp->final[k] != SKV_RDR_DROP)
                lp->rebuild[lp->final[k]] = 1;
        }
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (lp->rebuild[t] && !loses[t])
            lp->keep[t] = skvi_seq_list(c, s, layer, head, (skv_tier)t)->tokens / P;
    return SKV_OK;
}

/* Whether token k of a plan goes to tier t's list on pass `pass` of the packing order:
 * the tokens already in the list (pass 0), then those coming in (pass 1), each in cache
 * order. */
static int packed_in(const lh_plan *lp, uint32_t k, int t, int pass)
{
    return lp->final[k] == t && (lp->src[k].tier == t) == (pass == 0);
}

/* The scores of (layer, head)'s lists as packed: a list that was not rebuilt holds its
 * tokens as they were; a rebuilt one those already in it, then those coming in, each in
 * cache order (the order of the packing jobs). A token that changed tier keeps the score
 * its old code gave until the sequence's next refresh. */
static skv_status keep_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, const lh_plan *lp)
{
    const skv_allocator *a = c->ctx->alloc;
    float *sc = skvi_alloc(a, (lp->n ? lp->n : 1) * sizeof *sc), *kq = skvi_alloc(a, (lp->n ? lp->n : 1) * sizeof *kq);
    int32_t *ps = skvi_alloc(a, (lp->n ? lp->n : 1) * sizeof *ps);
    skv_status st =
        sc && kq && ps ? SKV_OK : skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        uint32_t d = 0;
        for (int pass = 0; pass < 2; pass++)
            for (uint32_t k = 0; k < lp->n; k++) {
                if (!packed_in(lp, k, t, pass)) /* a list not rebuilt: its own tokens, as they were */
                    continue;
                sc[d] = lp->score[k];
                ps[d] = lp->src[k].pos;
                kq[d++] = lp->ksq[k];
            }
        st = skvi_kept_scores_set(c, s, layer, head, (skv_tier)t, sc, kq, ps, d);
    }
    skvi_free(a, sc);
    skvi_free(a, kq);
    skvi_free(a, ps);
    return st;
}

/* The solver of every planned (layer, kv-head) with candidates, on the device at once. */
static skv_status solve_plans(skv_cache *c, lh_plan *plans, size_t n)
{
    const skv_allocator *a = c->ctx->alloc;
    const skv_rdr_problem **probs = skvi_calloc(a, n ? n : 1, sizeof *probs);
    uint8_t **choices = skvi_calloc(a, n ? n : 1, sizeof *choices);
    int *rcs = skvi_calloc(a, n ? n : 1, sizeof *rcs);
    size_t m = 0;
    skv_status st = probs && choices && rcs ? SKV_OK
                                            : skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    for (size_t i = 0; st == SKV_OK && i < n; i++)
        if (plans[i].active && plans[i].pr.n) {
            probs[m] = &plans[i].pr;
            choices[m++] = plans[i].choice;
        }
    if (st == SKV_OK)
        st = skvi_rdr_solve_many(c, probs, choices, rcs, m);
    for (size_t i = 0, k = 0; st == SKV_OK && i < n; i++)
        if (plans[i].active && plans[i].pr.n)
            plans[i].rc = rcs[k++];
    skvi_free(a, probs);
    skvi_free(a, choices);
    skvi_free(a, rcs);
    return st;
}

/* AdaKV: the layer's budget (tokens over all heads) split by skv_budget_adakv on the
 * heads' scores (shorter heads padded with -inf). */
static skv_status adakv_budgets(skv_cache *c, skv_seq_id seq, skvi_seq *s, uint32_t layer, uint64_t layer_tokens,
                                uint64_t *per_head)
{
    const uint32_t H = c->desc.kv_heads;
    const skv_allocator *a = c->ctx->alloc;
    size_t most = 0;
    for (uint32_t h = 0; h < H; h++) {
        size_t held = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            held += skvi_seq_list(c, s, layer, h, (skv_tier)t)->tokens;
        most = held > most ? held : most;
    }
    float *m = skvi_alloc(a, (size_t)H * (most ? most : 1) * sizeof *m);
    if (!m)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    skv_status st = SKV_OK;
    for (uint32_t h = 0; st == SKV_OK && h < H; h++) {
        size_t cnt = 0;
        st = skvi_scores(c, seq, layer, h, c->desc.scorer, m + (size_t)h * most, most, &cnt, NULL, NULL);
        for (size_t i = cnt; i < most; i++)
            m[(size_t)h * most + i] = -INFINITY;
    }
    if (st == SKV_OK)
        st = skv_budget_adakv(m, H, most, layer_tokens, 0.2f, per_head);
    skvi_free(a, m);
    return st;
}

/* The budget is a ceiling between compressions too. After one at length N a head holds
 * X bytes; k tokens later (k <= slack, when the next one is due) it holds at most X plus
 * ceil(k / P) F16 pages, while its budget has grown by growth * k F16 tokens (its share
 * of each appended token, <= 1; 0 under an absolute cap). So X leaves room for the worst
 * k, one token into a fresh page, k = 1 + j P: (j + 1) P - growth (1 + j P) F16 tokens,
 * largest at the last such k (growth <= 1), j = (slack - 1) / P. */
static double ceiling_reserve(const skv_cache *c, double growth)
{
    const uint64_t P = c->desc.page_tokens, S = c->desc.slack ? c->desc.slack : 1;
    if (S >= SKVI_SLACK_AUTO) /* compression when asked: nothing to leave room for */
        return 0;
    const uint64_t j = (S - 1) / P;
    return (double)((j + 1) * P) - growth * (double)(1 + j * P);
}

/* Compresses `layer` (or every layer when layer == ~0u) of a sequence. */
skv_status skvi_compress(skv_cache *c, skv_seq_id seq, skvi_seq *s, uint32_t only_layer)
{
    skv_context *ctx = c->ctx;
    const skv_allocator *a = ctx->alloc;
    const uint32_t P = c->desc.page_tokens, H = c->desc.kv_heads, L = c->desc.layers;
    /* RDR reads every page of its heads on the device: with pages in host memory it does
     * not run (before any work: an append that makes it due pays nothing) */
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; (only_layer == ~0u || l == only_layer) && h < H; h++)
            for (int t = 0; skvi_hetero_rdr_head(s, c, l, h) && t < SKV_TIER_COUNT; t++) {
                const skvi_page_list *pl = skvi_seq_list(c, s, l, h, (skv_tier)t);
                for (uint32_t k = 0; k < pl->n; k++)
                    if (pl->ids[k] & SKVI_HOST_BIT)
                        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                                         "skv_compress: pages in host memory: skv_seq_fetch them first");
            }
    int flush = 0; /* the flush reads the pending keys' sums back: one wait */
    for (uint32_t l = 0; s->stats && l < L; l++)
        flush |= s->pending_n[l] != 0 && (only_layer == ~0u || l == only_layer);
    c->compress_waits += flush;
    /* pending statistics read F16 pages that may move: those of the layers compressed */
    skv_status st = skvi_stats_flush(c, s, only_layer);
    if (st == SKV_OK) /* the interop queries' energy, read with the first wave */
        st = skvi_rdr_model_fetch(c);
    if (st != SKV_OK)
        return st;
    lh_plan *plans = skvi_calloc(a, (size_t)L * H, sizeof *plans);
    uint64_t *per_layer = skvi_calloc(a, L, sizeof *per_layer);
    if (!plans || !per_layer) {
        skvi_free(a, plans);
        skvi_free(a, per_layer);
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    }
    const double f16_token = (double)skvi_tier_page_bytes(SKV_TIER_F16, c->desc.head_dim, P) / P;
    /* the budget is a share of every token appended at F16 (not of those a previous
     * compression kept: that would tighten the budget at every compression); the
     * layer rule splits the mean over the layers compressed, and each layer's share
     * then follows its own length (layers may hold different counts) */
    uint64_t appended = 0, n_layers = 0;
    for (uint32_t l = 0; l < L; l++)
        if (only_layer == ~0u || l == only_layer)
            appended += s->len[l], n_layers++;
    const double mean_len = (double)appended / (double)n_layers;
    uint64_t mean_tokens = (uint64_t)(c->desc.budget_ratio * mean_len); /* per (layer, head), at F16 */
    int capped = 0; /* the absolute cap binds: the budget does not grow with the length */
    if (c->desc.budget_bytes) { /* the absolute cap, in the same F16 token equivalents */
        const uint64_t cap = (uint64_t)((double)c->desc.budget_bytes / (f16_token * L * H));
        capped = cap < mean_tokens;
        mean_tokens = capped ? cap : mean_tokens;
    }
    int pyramid = c->desc.budget_rule == SKV_BUDGET_PYRAMID;
    st = skv_budget_layers(pyramid ? SKV_BUDGET_PYRAMID : SKV_BUDGET_UNIFORM, L, mean_tokens, per_layer);
    for (uint32_t l = 0; st == SKV_OK && pyramid && l < L; l++) /* kvpress: a pyramid whose base cannot hold */
        pyramid = per_layer[l] >= (uint64_t)c->desc.n_sink + c->desc.recent_window; /* the window is uniform */
    if (st == SKV_OK && c->desc.budget_rule == SKV_BUDGET_PYRAMID && !pyramid)
        st = skv_budget_layers(SKV_BUDGET_UNIFORM, L, mean_tokens, per_layer);
    for (uint32_t l = 0; st == SKV_OK && mean_len > 0 && l < L; l++) /* exact when the lengths are equal */
        per_layer[l] = (uint64_t)((double)per_layer[l] * (double)s->len[l] / mean_len);
    if (st == SKV_OK) /* no layer's budget above what it holds: the excess to the others */
        skvi_budget_fit(per_layer, s->len, L);
    uint64_t *per_head = skvi_calloc(a, H, sizeof *per_head);
    if (st == SKV_OK && !per_head)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    uint64_t wave_tokens = 0;
    uint32_t wave_first = 0;
    for (uint32_t l = 0; st == SKV_OK && l < L; l++) {
        if (only_layer != ~0u && l != only_layer)
            continue;
        for (uint32_t h = 0; h < H; h++)
            per_head[h] = per_layer[l];
        if (s->hetero) /* HeteroCache: by head category and stability; RDR runs on anchors */
            st = skvi_hetero_budgets(c, s, l, per_layer[l] * H, per_head);
        else if (c->desc.budget_rule == SKV_BUDGET_ADAKV)
            st = adakv_budgets(c, seq, s, l, per_layer[l] * H, per_head);
        for (uint32_t h = 0; st == SKV_OK && h < H; h++)
            if (skvi_hetero_rdr_head(s, c, l, h)) {
                lh_plan *lp = &plans[(size_t)l * H + h];
                lp->active = 1;
                const double growth = capped || !s->len[l] ? 0.0 : (double)per_head[h] / (double)s->len[l];
                const double room = (double)per_head[h] - ceiling_reserve(c, growth);
                lp->budget = room > 0 ? (uint64_t)(room * f16_token) : 0; /* 0: the floor */
                st = plan_read(c, seq, s, l, h, lp);
                wave_tokens += lp->n;
            }
        /* a wave of layers read back with one wait, its candidates made (the reads'
         * arrays of about 4M tokens at most held at once) */
        const int last = only_layer != ~0u ? l == only_layer : l + 1 == L;
        if (st == SKV_OK && (wave_tokens >= (1u << 22) || last) && wave_tokens) {
            cl_int e = clFinish(c->rq);
            c->compress_waits++;
            if (e != CL_SUCCESS)
                st = skvi_cl_fail(ctx->error, e, "skv_compress: clFinish");
            for (; st == SKV_OK && wave_first <= l; wave_first++)
                for (uint32_t h = 0; st == SKV_OK && h < H; h++) {
                    lh_plan *lp = &plans[(size_t)wave_first * H + h];
                    if (lp->active)
                        st = plan_prepare(c, s, wave_first, h, lp->budget, lp);
                }
            wave_tokens = 0;
        }
    }
    if (st != SKV_OK) /* reads may still be writing into the plans' arrays */
        skvi_drain(c->rq);
    skvi_free(a, per_head);
    if (st == SKV_OK) /* every (layer, kv-head)'s solver together */
        st = solve_plans(c, plans, (size_t)L * H);
    for (size_t i = 0; st == SKV_OK && i < (size_t)L * H; i++)
        if (plans[i].active)
            st = plan_finish(c, s, (uint32_t)(i / H), (uint32_t)(i % H), plans[i].budget, &plans[i]);
    /* pages for every rebuilt list, per tier, before anything changes */
    uint32_t need[SKV_TIER_COUNT] = {0}, n_taken[SKV_TIER_COUNT] = {0};
    uint32_t *taken[SKV_TIER_COUNT] = {0};
    for (size_t i = 0; st == SKV_OK && i < (size_t)L * H; i++)
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            if (plans[i].rebuild[t]) {
                plans[i].first_page[t] = need[t];
                need[t] += (plans[i].count[t] + P - 1) / P - plans[i].keep[t];
            }
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        if (!need[t])
            continue;
        taken[t] = skvi_calloc(a, need[t], sizeof *taken[t]);
        if (!taken[t])
            st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
        if (st == SKV_OK)
            st = skvi_pool_reserve(c, &c->pools[t][SKV_MEM_DEVICE], need[t]);
        for (size_t i = 0; st == SKV_OK && i < (size_t)L * H; i++)
            if (plans[i].rebuild[t]) /* list capacity too: it changes no content */
                st = skvi_list_reserve(c, skvi_seq_list(c, s, (uint32_t)(i / H), (uint32_t)(i % H), (skv_tier)t),
                                       (plans[i].count[t] + P - 1) / P);
    }
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++)
        for (uint32_t k = 0; k < need[t]; k++)
            taken[t][n_taken[t]++] = skvi_pool_take(&c->pools[t][SKV_MEM_DEVICE]);
    /* jobs per (destination tier, source tier): copies within a tier, encodes from F16,
     * transcodes from a higher ADA tier; all in the same (src page, src slot [| dst slot
     * << 16], dst page, dst slot or layer*H + head) form their kernels read */
    uint32_t *jobs[SKV_TIER_COUNT][SKV_TIER_COUNT] = {{0}}, n_jobs[SKV_TIER_COUNT][SKV_TIER_COUNT] = {{0}};
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        uint64_t total = 0;
        for (size_t i = 0; i < (size_t)L * H; i++)
            total += plans[i].rebuild[t] ? plans[i].count[t] : 0;
        if (!total)
            continue;
        for (int f = 0; f < SKV_TIER_COUNT && st == SKV_OK; f++) {
            jobs[t][f] = skvi_calloc(a, total * 4, sizeof(uint32_t));
            if (!jobs[t][f])
                st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
        }
        for (size_t i = 0; st == SKV_OK && i < (size_t)L * H; i++) {
            if (!plans[i].rebuild[t])
                continue;
            /* the new list: the tokens already in it (in order), then those coming in;
             * the kept leading pages need no job */
            uint32_t d = 0, skip = plans[i].keep[t] * P;
            for (int pass = 0; pass < 2; pass++)
                for (uint32_t k = 0; k < plans[i].n; k++) {
                    const src_token *sr = &plans[i].src[k];
                    if (!packed_in(&plans[i], k, t, pass))
                        continue;
                    if (d < skip) {
                        d++;
                        continue;
                    }
                    uint32_t dst_page = taken[t][plans[i].first_page[t] + d / P - plans[i].keep[t]], dst_slot = d % P;
                    uint32_t *j = &jobs[t][sr->tier][4 * n_jobs[t][sr->tier]++];
                    if (sr->tier == t) /* slot_copy */
                        j[0] = sr->page, j[1] = sr->slot, j[2] = dst_page, j[3] = dst_slot;
                    else /* ada_encode / ada_transcode */
                        j[0] = sr->page, j[1] = sr->slot | dst_slot << 16, j[2] = dst_page, j[3] = (uint32_t)i;
                    d++;
                }
        }
    }
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    if (st == SKV_OK)
        st = skvi_compute_waits(c, NULL, 0, 0, NULL, &n_waits, &waits, &owned);
    cl_int e = CL_SUCCESS;
    for (int t = 0; st == SKV_OK && e == CL_SUCCESS && t < SKV_TIER_COUNT; t++)
        for (int f = 0; f < SKV_TIER_COUNT && e == CL_SUCCESS; f++) {
            uint32_t n = n_jobs[t][f];
            if (!n)
                continue;
            cl_mem jb = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)n * 16, jobs[t][f], &e);
            if (e != CL_SUCCESS)
                break;
            cl_kernel k = f == t ? c->k_slot_copy[t] : f == SKV_TIER_F16 ? c->k_encode[t] : c->k_transcode[f][t];
            skvi_args args = skvi_args_begin(k, 0);
            if (f == t) { /* slot_copy(pool, jobs) */
                skvi_pool_bind(&args, &c->pools[t][SKV_MEM_DEVICE]);
                skvi_arg_mem(&args, jb);
            } else { /* ada_encode / ada_transcode(src pool, dst pool, jobs, signs, [src params,] params) */
                skvi_pool_bind(&args, &c->pools[f][SKV_MEM_DEVICE]);
                skvi_pool_bind(&args, &c->pools[t][SKV_MEM_DEVICE]);
                skvi_arg_mem(&args, jb);
                skvi_arg_mem(&args, c->signs);
                if (f != SKV_TIER_F16)
                    skvi_arg_mem(&args, c->ada_params[f]);
                skvi_arg_mem(&args, c->ada_params[t]);
            }
            size_t g = n;
            e = skvi_args_end(&args);
            if (e != CL_SUCCESS)
                st = skvi_args_fail(ctx->error, &args, "skv_compress: enqueue");
            else
                e = skvi_enqueue_items(ctx->device, ctx->queue, k, 1, &g, n_waits, waits, NULL);
            n_waits = 0;
            waits = NULL;
            clReleaseMemObject(jb);
        }
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(ctx->error, e, "skv_compress: enqueue");
    if (st == SKV_OK) { /* commit */
        for (size_t i = 0; i < (size_t)L * H; i++)
            for (int t = 0; t < SKV_TIER_COUNT; t++) {
                if (!plans[i].rebuild[t])
                    continue;
                skvi_page_list *l = skvi_seq_list(c, s, (uint32_t)(i / H), (uint32_t)(i % H), (skv_tier)t);
                const uint32_t keep = plans[i].keep[t];
                for (uint32_t k = keep; k < l->n; k++)
                    skvi_pool_unref(skvi_entry_pool(c, (skv_tier)t, l->ids[k]), l->ids[k] & ~SKVI_HOST_BIT);
                l->n = (plans[i].count[t] + P - 1) / P;
                for (uint32_t k = keep; k < l->n; k++)
                    l->ids[k] = taken[t][plans[i].first_page[t] + k - keep];
                l->tokens = plans[i].count[t];
            }
        for (uint32_t l = 0; l < L; l++)
            if (only_layer == ~0u || l == only_layer)
                s->rdr_mark[l] = s->len[l];
        /* the scores stay with the packed lists (kept scores; a failure only means
         * scoring every token next time) */
        for (size_t i = 0; i < (size_t)L * H; i++)
            if (plans[i].active && plans[i].kept && plans[i].n &&
                keep_scores(c, s, (uint32_t)(i / H), (uint32_t)(i % H), &plans[i]) != SKV_OK)
                skvi_kept_scores_release(c, s);
        c->compressions++;
        s->rdr_runs++;
        /* HeteroCache: satellites to their device shares (a failed move changes nothing
         * and is retried at the next compression) */
        for (uint32_t l = 0; s->hetero && l < L; l++)
            if (only_layer == ~0u || l == only_layer) {
                char saved[SKVI_ERROR_MAX];
                memcpy(saved, ctx->error, sizeof saved);
                if (skvi_hetero_place(c, s, l) != SKV_OK)
                    memcpy(ctx->error, saved, sizeof saved);
            }
    } else {
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            for (uint32_t k = 0; k < n_taken[t]; k++)
                skvi_pool_unref(&c->pools[t][SKV_MEM_DEVICE], taken[t][k]);
    }
    skvi_free(a, owned);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        skvi_free(a, taken[t]);
        for (int f = 0; f < SKV_TIER_COUNT; f++)
            skvi_free(a, jobs[t][f]);
    }
    for (size_t i = 0; i < (size_t)L * H; i++) {
        skvi_free(a, plans[i].src);
        skvi_free(a, plans[i].final);
        skvi_free(a, plans[i].items);
        skvi_free(a, plans[i].item_of);
        skvi_free(a, plans[i].choice);
        plan_unread(c, &plans[i]);
    }
    skvi_free(a, plans);
    skvi_free(a, per_layer);
    return st;
}

skv_status skv_compress(skv_cache *c, skv_seq_id seq)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_compress: cache is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_compress", &s);
    if (st != SKV_OK)
        return st;
    if (c->desc.retention != SKV_RETENTION_RDR)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_compress: the cache has no retention policy");
    st = skvi_compress(c, seq, s, ~0u);
    if (st == SKV_OK) /* it did what the sequence's deferred compressions would */
        skvi_rdr_ungate(c, s, ~0u);
    return st;
}

/* RDR's kernels: the solver (rdr_search, work-groups of 256 where the device allows)
 * and the transcodes between ADA tiers. */
skv_status skvi_rdr_init(skv_cache *c)
{
    skv_status st = SKV_OK;
    if (st == SKV_OK && c->desc.retention == SKV_RETENTION_RDR)
        st = skvi_kernel_create(c->ctx, "rdr.cl", NULL, "rdr_search", &c->k_rdr_search);
    if (st == SKV_OK && c->desc.retention == SKV_RETENTION_RDR) { /* work-groups of 256 where the kernel allows */
        size_t wg = 0;
        cl_int e = clGetKernelWorkGroupInfo(c->k_rdr_search, c->ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
        c->rdr_wg = 256;
        while (c->rdr_wg > wg && c->rdr_wg > 8)
            c->rdr_wg /= 2;
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "skv_cache_create: clGetKernelWorkGroupInfo(rdr_search)");
        else if (c->rdr_wg > wg) /* its per-group counts need 5 work-items, 8 as a power of two */
            st = skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED,
                           "skv_cache_create: rdr_search runs at most %zu work-items per group on this device, needs 8",
                           wg);
    }
    for (int f = SKV_TIER_F16 + 1; st == SKV_OK && c->desc.retention == SKV_RETENTION_RDR && f < SKV_TIER_COUNT; f++)
        for (int t = f + 1; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
            if (!(c->desc.tiers & (1u << f)) || !(c->desc.tiers & (1u << t)))
                continue;
            char to[256], all[512];
            const skvi_tier_desc *fd = &skvi_tiers[f];
            skvi_ada_defines(c, (skv_tier)t, to, sizeof to);
            snprintf(all, sizeof all, "%s -DSRC_RB=%u -DSRC_AB=%u -DSRC_KW=%u -DSRC_VB=%u -DSRC_VG=%u", to,
                     fd->radius_bits, fd->angle_bits, c->ada[f].key_words, fd->value_bits, fd->value_group);
            st = skvi_kernel_create(c->ctx, "ada_encode.cl", all, "ada_transcode", &c->k_transcode[f][t]);
        }
    return st;
}

void skvi_rdr_release(skv_cache *c)
{
    if (c->k_rdr_search)
        clReleaseKernel(c->k_rdr_search);
    for (int f = 0; f < SKV_TIER_COUNT; f++)
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            if (c->k_transcode[f][t])
                clReleaseKernel(c->k_transcode[f][t]);
}
