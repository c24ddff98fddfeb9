/* The scores RDR keeps between compressions (skvi_list_scores), with the tokens' |k|^2
 * and positions: a compression scores and reads only the tokens new since the last one.
 * A kept score stays valid while its list still starts with the same page allocations: page contents never change while a page is held
 * (appends fill slots past the list's tokens; compaction, transcoding and moves write
 * fresh pages, and a page taken again gets a new generation). Every score_refresh-th
 * compression of the sequence moves its epoch on, and everything is scored again against
 * the statistics of the moment. */
#include <string.h>

#include "cache_internal.h"

static uint64_t epoch(const skv_cache *c, const skvi_seq *s)
{
    return s->rdr_runs / c->desc.score_refresh;
}

/* How many leading tokens of list l keep valid scores in k. */
static uint32_t valid_prefix(const skv_cache *c, const skvi_seq *s, const skvi_page_list *l, skv_tier tier,
                             const skvi_list_scores *k)
{
    if (k->tokens == 0 || k->epoch != epoch(c, s))
        return 0;
    const skvi_pool *pool = &c->pools[tier][SKV_MEM_DEVICE];
    uint32_t j = 0;
    while (j < l->n && j < k->n_pages && !(l->ids[j] & SKVI_HOST_BIT) && l->ids[j] == k->page[j] &&
           pool->gen[l->ids[j]] == k->gen[j])
        j++;
    uint64_t n = (uint64_t)j * c->desc.page_tokens;
    n = n < k->tokens ? n : k->tokens;
    return (uint32_t)(n < l->tokens ? n : l->tokens);
}

skv_status skvi_kept_scores_load(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, float *out, float *ksq,
                                 int32_t *pos, uint32_t *from)
{
    size_t done = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, head, (skv_tier)t);
        const size_t i = ((size_t)layer * c->desc.kv_heads + head) * SKV_TIER_COUNT + (size_t)t;
        from[t] = s->kept_scores ? valid_prefix(c, s, l, (skv_tier)t, &s->kept_scores[i]) : 0;
        if (from[t]) {
            memcpy(out + done, s->kept_scores[i].score, from[t] * sizeof *out);
            memcpy(ksq + done, s->kept_scores[i].ksq, from[t] * sizeof *ksq);
            memcpy(pos + done, s->kept_scores[i].pos, from[t] * sizeof *pos);
        }
        done += l->tokens;
    }
    return SKV_OK;
}

/* Room in k for `tokens` values and `n_pages` pages, the values copied in; k keeps
 * nothing (tokens 0) until the caller has set its pages. -1: out of memory. */
static int keep_values(const skv_allocator *a, skvi_list_scores *k, const float *score, const float *ksq,
                       const int32_t *pos, uint32_t tokens, uint32_t n_pages)
{
    k->tokens = 0;
    if (skvi_array_reserve(a, (void **)&k->score, &k->cap_score, 0, tokens, sizeof *k->score, 64) != 0 ||
        skvi_array_reserve(a, (void **)&k->ksq, &k->cap_ksq, 0, tokens, sizeof *k->ksq, 64) != 0 ||
        skvi_array_reserve(a, (void **)&k->pos, &k->cap_pos, 0, tokens, sizeof *k->pos, 64) != 0 ||
        skvi_array_reserve(a, (void **)&k->page, &k->cap_page, 0, n_pages, sizeof *k->page, 16) != 0 ||
        skvi_array_reserve(a, (void **)&k->gen, &k->cap_gen, 0, n_pages, sizeof *k->gen, 16) != 0)
        return -1;
    if (tokens) {
        memcpy(k->score, score, tokens * sizeof *score);
        memcpy(k->ksq, ksq, tokens * sizeof *ksq);
        memcpy(k->pos, pos, tokens * sizeof *pos);
    }
    k->n_pages = n_pages;
    return 0;
}

skv_status skvi_kept_scores_set(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, skv_tier tier,
                                const float *score, const float *ksq, const int32_t *pos, uint32_t n)
{
    const skv_allocator *a = c->ctx->alloc;
    if (!s->kept_scores && !(s->kept_scores = skvi_calloc(a, skvi_list_count(c), sizeof *s->kept_scores)))
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    const skvi_page_list *l = skvi_seq_list(c, s, layer, head, tier);
    skvi_list_scores *k = &s->kept_scores[((size_t)layer * c->desc.kv_heads + head) * SKV_TIER_COUNT + (size_t)tier];
    k->tokens = 0; /* nothing kept unless all of it is */
    if (n != l->tokens)
        return SKV_OK; /* not this list's scores: keep none */
    if (keep_values(a, k, score, ksq, pos, l->tokens, l->n) != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    const skvi_pool *pool = &c->pools[tier][SKV_MEM_DEVICE];
    for (uint32_t j = 0; j < l->n; j++) {
        k->page[j] = l->ids[j];
        k->gen[j] = l->ids[j] & SKVI_HOST_BIT ? 0 : pool->gen[l->ids[j]];
    }
    k->tokens = l->tokens;
    k->epoch = epoch(c, s);
    return SKV_OK;
}

skv_status skvi_kept_scores_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    const skv_allocator *a = c->ctx->alloc;
    if (!src->kept_scores)
        return SKV_OK;
    /* the hooks run before the child's lists are filled: a plain copy, checked against
     * the lists when it is loaded */
    if (!(dst->kept_scores = skvi_calloc(a, skvi_list_count(c), sizeof *dst->kept_scores)))
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_fork: out of memory");
    dst->rdr_runs = src->rdr_runs;
    for (size_t i = 0; i < skvi_list_count(c); i++) {
        const skvi_list_scores *from = &src->kept_scores[i];
        skvi_list_scores *to = &dst->kept_scores[i];
        if (!from->tokens || from->epoch != epoch(c, src)) /* the child's statistics are the parent's */
            continue;
        if (keep_values(a, to, from->score, from->ksq, from->pos, from->tokens, from->n_pages) != 0)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_fork: out of memory");
        if (from->n_pages) {
            memcpy(to->page, from->page, from->n_pages * sizeof *to->page);
            memcpy(to->gen, from->gen, from->n_pages * sizeof *to->gen);
        }
        to->tokens = from->tokens;
        to->epoch = from->epoch;
    }
    return SKV_OK;
}

void skvi_kept_scores_release(skv_cache *c, skvi_seq *s)
{
    for (size_t i = 0; s->kept_scores && i < skvi_list_count(c); i++) {
        skvi_list_scores *k = &s->kept_scores[i];
        skvi_free(c->ctx->alloc, k->score);
        skvi_free(c->ctx->alloc, k->ksq);
        skvi_free(c->ctx->alloc, k->pos);
        skvi_free(c->ctx->alloc, k->page);
        skvi_free(c->ctx->alloc, k->gen);
    }
    skvi_free(c->ctx->alloc, s->kept_scores);
    s->kept_scores = NULL;
}

uint32_t skvi_kept_scores_valid(const skv_cache *c, const skvi_seq *s, size_t i)
{
    if (!s->kept_scores)
        return 0;
    return valid_prefix(c, s, &s->lists[i], SKVI_LIST_TIER(i), &s->kept_scores[i]);
}

skv_status skvi_kept_scores_put(skv_cache *c, skvi_seq *s, size_t i, const void *score, const void *ksq,
                                const void *pos, uint32_t n)
{
    const skv_allocator *a = c->ctx->alloc;
    if (!s->kept_scores && !(s->kept_scores = skvi_calloc(a, skvi_list_count(c), sizeof *s->kept_scores)))
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_import: out of memory");
    const skvi_page_list *l = &s->lists[i];
    skvi_list_scores *k = &s->kept_scores[i];
    if (keep_values(a, k, NULL, NULL, NULL, 0, l->n) != 0 ||
        skvi_array_reserve(a, (void **)&k->score, &k->cap_score, 0, n, sizeof *k->score, 64) != 0 ||
        skvi_array_reserve(a, (void **)&k->ksq, &k->cap_ksq, 0, n, sizeof *k->ksq, 64) != 0 ||
        skvi_array_reserve(a, (void **)&k->pos, &k->cap_pos, 0, n, sizeof *k->pos, 64) != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_import: out of memory");
    memcpy(k->score, score, (size_t)n * sizeof *k->score);
    memcpy(k->ksq, ksq, (size_t)n * sizeof *k->ksq);
    memcpy(k->pos, pos, (size_t)n * sizeof *k->pos);
    const skvi_pool *pool = &c->pools[SKVI_LIST_TIER(i)][SKV_MEM_DEVICE];
    for (uint32_t j = 0; j < l->n; j++) {
        k->page[j] = l->ids[j];
        k->gen[j] = l->ids[j] & SKVI_HOST_BIT ? 0 : pool->gen[l->ids[j]];
    }
    k->tokens = n;
    k->epoch = epoch(c, s);
    return SKV_OK;
}
