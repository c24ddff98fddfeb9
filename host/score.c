/* Retention scores (DESIGN.md §7): the scorers' kernels, TriAttention, and
 * skv_seq_scores, which dispatches to the scorer's family (key_stats.c for the
 * key-statistics scorers, score_snapkv.c, score_observed.c). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

skv_status skvi_score_init(skv_cache *c)
{
    if (c->desc.scorer == SKV_SCORER_NONE)
        return SKV_OK;
    char defs[256];
    snprintf(defs, sizeof defs, "-DD=%u -DP=%u", c->desc.head_dim, c->desc.page_tokens);
    skv_status st = skvi_kernel_create(c->ctx, "score.cl", defs, "score_f16", &c->k_score[SKV_TIER_F16]);
    if (st == SKV_OK && c->desc.scorer == SKV_SCORER_TRIATTENTION)
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "tri_f16", &c->k_tri[SKV_TIER_F16]);
    if (st == SKV_OK && c->desc.scorer == SKV_SCORER_SNAPKV)
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "keys_f16", &c->k_keys[SKV_TIER_F16]);
    if (st == SKV_OK && c->desc.scorer == SKV_SCORER_SNAPKV)
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "snap_rows", &c->k_snap_rows);
    if (st == SKV_OK && c->desc.scorer == SKV_SCORER_SNAPKV)
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "snap_vote", &c->k_snap_vote);
    if (st == SKV_OK && skvi_scorer_has_stats(c))
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "key_inv_norms", &c->k_inv_norms);
    if (st == SKV_OK && skvi_scorer_has_stats(c))
        st = skvi_kernel_create(c->ctx, "score.cl", defs, "key_stats", &c->k_key_stats);
    for (int t = SKV_TIER_F16 + 1; st == SKV_OK && t < SKV_TIER_COUNT; t++)
        if (c->desc.tiers & (1u << t)) {
            char ada[256], all[512];
            skvi_ada_defines(c, (skv_tier)t, ada, sizeof ada);
            snprintf(all, sizeof all, "%s -DADA", ada);
            st = skvi_kernel_create(c->ctx, "score.cl", all, "score_ada", &c->k_score[t]);
            if (st == SKV_OK && c->desc.scorer == SKV_SCORER_TRIATTENTION)
                st = skvi_kernel_create(c->ctx, "score.cl", all, "tri_ada", &c->k_tri[t]);
            if (st == SKV_OK && c->desc.scorer == SKV_SCORER_SNAPKV)
                st = skvi_kernel_create(c->ctx, "score.cl", all, "keys_ada", &c->k_keys[t]);
        }
    return st;
}

void skvi_score_release(skv_cache *c)
{
    cl_kernel ks[4] = {c->k_inv_norms, c->k_key_stats, c->k_snap_rows, c->k_snap_vote};
    for (int i = 0; i < 4; i++)
        if (ks[i])
            clReleaseKernel(ks[i]);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        if (c->k_score[t])
            clReleaseKernel(c->k_score[t]);
        if (c->k_tri[t])
            clReleaseKernel(c->k_tri[t]);
        if (c->k_keys[t])
            clReleaseKernel(c->k_keys[t]);
    }
}

/* TriAttention: raw scores per q-head of the group from the kernels (tier by tier), then
 * z-scored per q-head over the held tokens and the maximum over the group taken. */
static skv_status tri_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held, float *scores)
{
    skv_context *ctx = c->ctx;
    const uint32_t D = c->desc.head_dim, G = c->group, QH = c->desc.q_heads;
    float *eff = skvi_calloc(ctx->alloc, (size_t)G * (D / 2) * 3, sizeof *eff);
    float *raw = skvi_calloc(ctx->alloc, (size_t)G * (held ? held : 1), sizeof *raw);
    skv_status st = SKV_OK;
    if (!eff || !raw)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    for (uint32_t g = 0; st == SKV_OK && g < G; g++) {
        size_t row = (size_t)layer * QH + head * G + g;
        skv_ref_triattention_query(&c->desc.rope, D, c->query_mean + row * D, c->query_abs + row * (D / 2),
                                   s->next_pos[layer], eff + (size_t)g * (D / 2) * 3);
    }
    size_t done = 0;
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, head, (skv_tier)t);
        if (!l->tokens)
            continue;
        cl_int e;
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        cl_mem pages = clCreateBuffer(ctx->cl, ro, l->n * sizeof *l->ids, l->ids, &e);
        cl_mem effb = e == CL_SUCCESS ? clCreateBuffer(ctx->cl, ro, (size_t)G * (D / 2) * 3 * 4, eff, &e) : NULL;
        cl_mem out = e == CL_SUCCESS ? clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, (size_t)G * l->tokens * 4, NULL, &e)
                                     : NULL;
        float *part = skvi_alloc(ctx->alloc, (size_t)G * l->tokens * sizeof *part);
        if (e == CL_SUCCESS && !part)
            st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
        if (st == SKV_OK && e == CL_SUCCESS) {
            cl_kernel k = c->k_tri[t];
            cl_uint n = l->tokens;
            skvi_args a = skvi_args_begin(k, 0);
            skvi_pool_bind(&a, &c->pools[t][SKV_MEM_DEVICE]);
            skvi_arg_mem(&a, pages);
            skvi_arg_u32(&a, n);
            skvi_arg_mem(&a, effb);
            skvi_arg_u32(&a, G);
            skvi_arg_u32(&a, c->desc.rope.interleaved != 0);
            if (t != SKV_TIER_F16) {
                skvi_arg_mem(&a, c->signs);
                skvi_arg_u32(&a, layer * c->desc.kv_heads + head);
                skvi_arg_mem(&a, c->ada_params[t]);
            }
            skvi_arg_mem(&a, out);
            size_t gsz = n;
            e = skvi_args_end(&a);
            if (e != CL_SUCCESS)
                st = skvi_args_fail(ctx->error, &a, "skv_seq_scores (triattention)");
            else
                e = skvi_enqueue_items(c->ctx->device, c->rq, k, 1, &gsz, 0, NULL, NULL);
            if (e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->rq, out, CL_TRUE, 0, (size_t)G * n * 4, part, 0, NULL, NULL);
            for (uint32_t g = 0; e == CL_SUCCESS && g < G; g++)
                memcpy(raw + (size_t)g * held + done, part + (size_t)g * n, n * sizeof *part);
        }
        if (st == SKV_OK && e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "skv_seq_scores (triattention)");
        done += l->tokens;
        skvi_free(ctx->alloc, part);
        cl_mem bufs[3] = {pages, effb, out};
        for (int i = 0; i < 3; i++)
            if (bufs[i])
                clReleaseMemObject(bufs[i]);
    }
    for (size_t i = 0; st == SKV_OK && i < held; i++)
        scores[i] = -INFINITY;
    for (uint32_t g = 0; st == SKV_OK && g < G; g++) {
        const float *x = raw + (size_t)g * held;
        double mean = 0, var = 0;
        for (size_t i = 0; i < held; i++)
            mean += x[i];
        mean /= (double)held;
        for (size_t i = 0; i < held; i++)
            var += (x[i] - mean) * (x[i] - mean);
        double sd = sqrt(var / (double)held);
        for (size_t i = 0; i < held; i++) {
            float z = sd > 0 ? (float)((x[i] - mean) / sd) : 0.0f;
            scores[i] = z > scores[i] ? z : scores[i];
        }
    }
    skvi_free(ctx->alloc, eff);
    skvi_free(ctx->alloc, raw);
    return st;
}

/* deferred (NULL: the call waits): for the key-statistics scorers with room for every
 * held token, the reads into out and energy are left in flight and *deferred set to 1;
 * the caller waits on the queue before reading them. from (NULL: all): those scorers
 * score only tokens from[t] on of each tier's list, leaving the others as they are. */
static skv_status scores_impl(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, skv_scorer scorer,
                              float *out, size_t capacity, size_t *count, float *energy, int *deferred,
                              const uint32_t *from)
{
    if (deferred)
        *deferred = 0;
    if (!c || !count || (capacity && !out))
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG,
                         "skv_seq_scores: cache or count is NULL, or out is NULL with capacity > 0");
    skv_context *ctx = c->ctx;
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_scores", &s);
    if (st != SKV_OK)
        return st;
    if (layer >= c->desc.layers || kv_head >= c->desc.kv_heads)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_scores: layer %u / kv_head %u out of range", layer,
                         kv_head);
    if (scorer == SKV_SCORER_NONE)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_scores: the cache was created without a scorer");
    size_t held = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, kv_head, (skv_tier)t);
        held += l->tokens;
        for (uint32_t j = 0; j < l->n; j++)
            if (l->ids[j] & SKVI_HOST_BIT)
                return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                                 "skv_seq_scores: pages in host memory: skv_seq_fetch them first");
    }
    st = skvi_wait_moves(c, seq); /* pages fetched a moment ago may still be arriving */
    if (st != SKV_OK)
        return st;
    *count = held;
    if (scorer == SKV_SCORER_OBSERVED) {
        float *scores = skvi_calloc(ctx->alloc, held ? held : 1, sizeof *scores);
        int32_t *pos = skvi_calloc(ctx->alloc, held ? held : 1, sizeof *pos);
        size_t n = 0;
        st = scores && pos ? SKV_OK : skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
        if (st == SKV_OK && held)
            st = skv_seq_positions(c, seq, layer, kv_head, pos, held, &n);
        if (st == SKV_OK && held)
            st = skvi_observed_scores(c, s, layer, kv_head, held, pos, scores);
        if (st == SKV_OK && capacity)
            memcpy(out, scores, (held < capacity ? held : capacity) * sizeof *out);
        skvi_free(ctx->alloc, scores);
        skvi_free(ctx->alloc, pos);
        return st;
    }
    if (scorer == SKV_SCORER_TRIATTENTION || scorer == SKV_SCORER_SNAPKV) {
        float *scores = skvi_calloc(ctx->alloc, held ? held : 1, sizeof *scores);
        if (!scores)
            return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
        if (held)
            st = scorer == SKV_SCORER_SNAPKV ? skvi_snap_scores(c, s, layer, kv_head, held, scores)
                                                     : tri_scores(c, s, layer, kv_head, held, scores);
        if (st == SKV_OK && capacity)
            memcpy(out, scores, (held < capacity ? held : capacity) * sizeof *out);
        skvi_free(ctx->alloc, scores);
        return st;
    }
    st = skvi_stats_flush(c, s, layer);
    if (st != SKV_OK)
        return st;
    const uint32_t D = c->desc.head_dim;
    uint32_t nw = 1, *wins = NULL;
    float *vecs = skvi_stats_vectors(c, s, layer, kv_head, &nw, &wins);
    const int defer = deferred && capacity >= held && held > 0; /* read straight into out, no wait */
    if (from && !defer && held) { /* kept scores are in out already: only a deferred call reads there */
        skvi_free(ctx->alloc, vecs);
        skvi_free(ctx->alloc, wins);
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_scores: kept scores need a deferred call");
    }
    float *scores = defer ? out : skvi_calloc(ctx->alloc, held ? held : 1, sizeof *scores);
    float *tables = NULL, *norms2 = NULL;
    if (!vecs || !scores) {
        skvi_free(ctx->alloc, vecs);
        skvi_free(ctx->alloc, wins);
        if (!defer)
            skvi_free(ctx->alloc, scores);
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    }
    size_t done = 0;
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, kv_head, (skv_tier)t);
        if (!l->tokens || (from && from[t] >= l->tokens)) { /* nothing, or every score kept */
            done += l->tokens;
            continue;
        }
        cl_int e;
        cl_mem bufs[6] = {0}; /* pages, scores, vectors or tables, norms2 (ADA), |k|^2, windows */
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        bufs[0] = clCreateBuffer(ctx->cl, ro, l->n * sizeof *l->ids, l->ids, &e);
        if (e == CL_SUCCESS)
            bufs[1] = clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, l->tokens * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            bufs[4] = clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, l->tokens * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            bufs[5] = clCreateBuffer(ctx->cl, ro, nw * sizeof *wins, wins, &e);
        if (e == CL_SUCCESS && t == SKV_TIER_F16) {
            bufs[2] = clCreateBuffer(ctx->cl, ro, (size_t)(nw + 1) * D * sizeof(float), vecs, &e);
        } else if (e == CL_SUCCESS) { /* ADA: the vectors enter as query tables, as in decode */
            const unsigned S = 1u << c->ada[t].angle_bits;
            tables = skvi_calloc(ctx->alloc, (size_t)(nw + 1) * (D / 2) * S, sizeof *tables);
            norms2 = skvi_calloc(ctx->alloc, nw + 1, sizeof *norms2);
            if (!tables || !norms2) {
                st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
            } else {
                int8_t signs[256];
                skv_ref_ada_signs_seeded(c->desc.rotation_seed, layer, kv_head, D, signs);
                for (uint32_t r = 0; r <= nw; r++) {
                    skv_ref_ada_query_table(&c->ada[t], signs, vecs + (size_t)r * D, tables + (size_t)r * (D / 2) * S);
                    double n2 = 0;
                    for (uint32_t d = 0; d < D; d++)
                        n2 += (double)vecs[(size_t)r * D + d] * vecs[(size_t)r * D + d];
                    norms2[r] = (float)n2;
                }
                bufs[2] = clCreateBuffer(ctx->cl, ro, (size_t)(nw + 1) * (D / 2) * S * sizeof(float), tables, &e);
                if (e == CL_SUCCESS)
                    bufs[3] = clCreateBuffer(ctx->cl, ro, (nw + 1) * sizeof(float), norms2, &e);
            }
        }
        const cl_uint first = from ? from[t] : 0, n = l->tokens - first;
        if (st == SKV_OK && e == CL_SUCCESS && n) {
            cl_kernel k = c->k_score[t];
            skvi_args a = skvi_args_begin(k, 0);
            skvi_pool_bind(&a, &c->pools[t][SKV_MEM_DEVICE]);
            skvi_arg_mem(&a, bufs[0]);
            skvi_arg_u32(&a, first);
            skvi_arg_u32(&a, n);
            skvi_arg_u32(&a, (cl_uint)scorer);
            skvi_arg_mem(&a, bufs[2]);
            if (t != SKV_TIER_F16)
                skvi_arg_mem(&a, bufs[3]);
            skvi_arg_u32(&a, nw);
            skvi_arg_mem(&a, bufs[5]);
            skvi_arg_u32(&a, c->desc.score_window);
            skvi_arg_u32(&a, c->desc.n_sink);
            if (t != SKV_TIER_F16)
                skvi_arg_mem(&a, c->ada_params[t]);
            skvi_arg_mem(&a, bufs[1]);
            skvi_arg_mem(&a, bufs[4]);
            size_t g = n;
            e = skvi_args_end(&a);
            if (e != CL_SUCCESS)
                st = skvi_args_fail(ctx->error, &a, "skv_seq_scores");
            else
                e = skvi_enqueue_items(c->ctx->device, c->rq, k, 1, &g, 0, NULL, NULL);
            if (e == CL_SUCCESS && energy && done + first < capacity)
                e = clEnqueueReadBuffer(c->rq, bufs[4], CL_FALSE, 0,
                                        (n < capacity - done - first ? n : capacity - done - first) * sizeof(float),
                                        energy + done + first, 0, NULL,
                                        NULL); /* in order: complete with the blocking read below */
            if (e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->rq, bufs[1], defer ? CL_FALSE : CL_TRUE, 0, n * sizeof(float),
                                        scores + done + first, 0, NULL, NULL);
        }
        if (st == SKV_OK && e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "skv_seq_scores");
        done += l->tokens;
        for (int i = 0; i < 6; i++)
            if (bufs[i])
                clReleaseMemObject(bufs[i]);
        skvi_free(ctx->alloc, tables);
        skvi_free(ctx->alloc, norms2);
        tables = norms2 = NULL;
    }
    if (defer && st != SKV_OK)
        skvi_drain(c->rq); /* no read is left writing into the caller's arrays */
    else if (defer)
        *deferred = 1;
    else if (st == SKV_OK && capacity)
        memcpy(out, scores, (held < capacity ? held : capacity) * sizeof *out);
    skvi_free(ctx->alloc, vecs);
    skvi_free(ctx->alloc, wins);
    if (!defer)
        skvi_free(ctx->alloc, scores);
    return st;
}

skv_status skv_seq_scores(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, float *out, size_t capacity,
                          size_t *count)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_seq_scores: cache is NULL");
    return scores_impl(c, seq, layer, kv_head, c->desc.scorer, out, capacity, count, NULL, NULL, NULL);
}

skv_status skvi_scores(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, skv_scorer scorer, float *out,
                       size_t capacity, size_t *count, float *energy, int *deferred)
{
    const int one_pass = scorer >= SKV_SCORER_KNORM && scorer <= SKV_SCORER_STREAMING;
    skv_status st =
        scores_impl(c, seq, layer, kv_head, scorer, out, capacity, count, one_pass ? energy : NULL, one_pass ? deferred : NULL,
                    NULL);
    if (deferred && !one_pass)
        *deferred = 0;
    if (st == SKV_OK && energy && !one_pass) { /* knorm = -|k| */
        size_t n = 0;
        st = scores_impl(c, seq, layer, kv_head, SKV_SCORER_KNORM, energy, capacity, &n, NULL, NULL, NULL);
        for (size_t i = 0; st == SKV_OK && i < n && i < capacity; i++)
            energy[i] *= energy[i];
    }
    return st;
}

int skvi_scores_kept(const skv_cache *c)
{
    return c->desc.scorer >= SKV_SCORER_KNORM && c->desc.scorer <= SKV_SCORER_STREAMING;
}

skv_status skvi_scores_rdr(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, float *out, float *ksq,
                           size_t held, const uint32_t *from, int *deferred, int *kept)
{
    *kept = 0;
    if (!skvi_scores_kept(c)) /* the others score everything, waiting */
        return skvi_scores(c, seq, layer, kv_head, c->desc.scorer, out, held, &(size_t){0}, ksq, deferred);
    size_t count = 0;
    skv_status st = scores_impl(c, seq, layer, kv_head, c->desc.scorer, out, held, &count, ksq, deferred, from);
    *kept = st == SKV_OK;
    return st;
}
