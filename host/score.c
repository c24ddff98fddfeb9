/* Retention scores (DESIGN.md §7): the running key statistics of each (sequence, layer,
 * kv-head) and skv_seq_scores. Statistics are sums over every key appended, kept in
 * double on the host; new tokens are added lazily (their keys are still the tail of the
 * F16 lists until something moves them, and everything that moves pages flushes first),
 * so an append never waits for the device. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <clblast_c.h>

#include "cache_internal.h"

int skvi_scorer_has_stats(const skv_cache *c)
{
    return c->desc.scorer == SKV_SCORER_KEYDIFF || c->desc.scorer == SKV_SCORER_MANIFOLD ||
           c->desc.scorer == SKV_SCORER_MANIFOLD_WINDOWED;
}

static size_t n_lh(const skv_cache *c) { return (size_t)c->desc.layers * c->desc.kv_heads; }

skv_status skvi_stats_alloc(skv_cache *c, skvi_seq *s)
{
    if (!skvi_scorer_has_stats(c))
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    s->stats = skvi_calloc(a, n_lh(c), sizeof *s->stats);
    s->pending_pos = skvi_calloc(a, c->desc.layers, sizeof *s->pending_pos);
    s->pending_n = skvi_calloc(a, c->desc.layers, sizeof *s->pending_n);
    s->pending_cap = skvi_calloc(a, c->desc.layers, sizeof *s->pending_cap);
    if (!s->stats || !s->pending_pos || !s->pending_n || !s->pending_cap)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "sequence statistics: out of memory");
    return SKV_OK;
}

void skvi_stats_release(skv_cache *c, skvi_seq *s)
{
    const skv_allocator *a = c->ctx->alloc;
    for (size_t i = 0; s->stats && i < n_lh(c); i++) {
        skvi_free(a, s->stats[i].sum);
        skvi_free(a, s->stats[i].sum_unit);
        skvi_free(a, s->stats[i].count);
    }
    for (uint32_t l = 0; s->pending_pos && l < c->desc.layers; l++)
        skvi_free(a, s->pending_pos[l]);
    skvi_free(a, s->stats);
    skvi_free(a, s->pending_pos);
    skvi_free(a, s->pending_n);
    skvi_free(a, s->pending_cap);
    s->stats = NULL;
    s->pending_pos = NULL;
    s->pending_n = s->pending_cap = NULL;
}

/* Grows one (layer, head)'s window arrays to n windows. */
static skv_status stats_grow(skv_cache *c, skvi_key_stats *k, uint32_t n)
{
    if (n <= k->n_windows)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    const uint32_t D = c->desc.head_dim;
    double *sum = skvi_calloc(a, (size_t)n * D, sizeof *sum), *unit = skvi_calloc(a, (size_t)n * D, sizeof *unit);
    uint64_t *count = skvi_calloc(a, n, sizeof *count);
    if (!sum || !unit || !count) {
        skvi_free(a, sum);
        skvi_free(a, unit);
        skvi_free(a, count);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    }
    if (k->n_windows) {
        memcpy(sum, k->sum, (size_t)k->n_windows * D * sizeof *sum);
        memcpy(unit, k->sum_unit, (size_t)k->n_windows * D * sizeof *unit);
        memcpy(count, k->count, k->n_windows * sizeof *count);
    }
    skvi_free(a, k->sum);
    skvi_free(a, k->sum_unit);
    skvi_free(a, k->count);
    k->sum = sum;
    k->sum_unit = unit;
    k->count = count;
    k->n_windows = n;
    return SKV_OK;
}

skv_status skvi_stats_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    if (!src->stats)
        return SKV_OK;
    const uint32_t D = c->desc.head_dim;
    for (size_t i = 0; i < n_lh(c); i++) {
        skv_status st = stats_grow(c, &dst->stats[i], src->stats[i].n_windows);
        if (st != SKV_OK)
            return st;
        if (src->stats[i].n_windows) {
            memcpy(dst->stats[i].sum, src->stats[i].sum, (size_t)src->stats[i].n_windows * D * sizeof(double));
            memcpy(dst->stats[i].sum_unit, src->stats[i].sum_unit, (size_t)src->stats[i].n_windows * D * sizeof(double));
            memcpy(dst->stats[i].count, src->stats[i].count, src->stats[i].n_windows * sizeof(uint64_t));
        }
    }
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        skv_status st = skvi_stats_reserve(c, dst, l, src->pending_n[l]);
        if (st != SKV_OK)
            return st;
        if (src->pending_n[l])
            memcpy(dst->pending_pos[l], src->pending_pos[l], src->pending_n[l] * sizeof(int32_t));
        dst->pending_n[l] = src->pending_n[l];
    }
    return SKV_OK;
}

skv_status skvi_stats_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n)
{
    if (!s->stats || s->pending_n[layer] + n <= s->pending_cap[layer])
        return SKV_OK;
    uint32_t cap = s->pending_cap[layer] ? s->pending_cap[layer] : 256;
    while (cap < s->pending_n[layer] + n)
        cap *= 2;
    int32_t *p = skvi_calloc(c->ctx->alloc, cap, sizeof *p);
    if (!p)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    if (s->pending_n[layer])
        memcpy(p, s->pending_pos[layer], s->pending_n[layer] * sizeof *p);
    skvi_free(c->ctx->alloc, s->pending_pos[layer]);
    s->pending_pos[layer] = p;
    s->pending_cap[layer] = cap;
    return SKV_OK;
}

void skvi_stats_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n)
{
    (void)c;
    if (!s->stats)
        return;
    memcpy(s->pending_pos[layer] + s->pending_n[layer], positions, n * sizeof *positions);
    s->pending_n[layer] += n;
}

static uint32_t window_of(const skv_cache *c, int32_t position)
{
    if (c->desc.scorer != SKV_SCORER_MANIFOLD_WINDOWED || position < 0)
        return 0;
    return (uint32_t)position / c->desc.score_window;
}

/* One layer's pending tokens into the statistics. */
static skv_status flush_layer(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim, P = c->desc.page_tokens, m = s->pending_n[layer];
    const skv_allocator *a = c->ctx->alloc;
    skv_context *ctx = c->ctx;
    /* compact window indices of the new tokens */
    uint32_t w_lo = UINT32_MAX, w_hi = 0;
    for (uint32_t t = 0; t < m; t++) {
        uint32_t w = window_of(c, s->pending_pos[layer][t]);
        w_lo = w < w_lo ? w : w_lo;
        w_hi = w > w_hi ? w : w_hi;
    }
    const uint32_t nw = w_hi - w_lo + 1;
    for (uint32_t h = 0; h < H; h++) {
        skv_status st = stats_grow(c, &s->stats[(size_t)layer * H + h], w_hi + 1);
        if (st != SKV_OK)
            return st;
    }
    uint32_t pph = 0;
    for (uint32_t h = 0; h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
        if (l->tokens < m)
            return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "key statistics: pending tokens left the F16 list");
        pph = l->n > pph ? l->n : pph;
    }
    uint32_t *pages = skvi_calloc(a, (size_t)H * pph, sizeof *pages), *tokens = skvi_calloc(a, H, sizeof *tokens);
    uint32_t *win = skvi_calloc(a, m, sizeof *win);
    float *out = skvi_calloc(a, (size_t)H * nw * 2 * D, sizeof *out);
    skv_status st = SKV_OK;
    cl_mem bufs[5] = {0};
    if (!pages || !tokens || !win || !out)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    cl_int e = CL_SUCCESS;
    if (st == SKV_OK) {
        for (uint32_t h = 0; h < H; h++) {
            const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
            for (uint32_t j = 0; j < l->n; j++)
                pages[(size_t)h * pph + j] = l->ids[j]; /* device pages: offload and quantize flush first */
            tokens[h] = l->tokens;
        }
        for (uint32_t t = 0; t < m; t++)
            win[t] = window_of(c, s->pending_pos[layer][t]) - w_lo;
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        bufs[0] = clCreateBuffer(ctx->cl, ro, (size_t)H * pph * 4, pages, &e);
        if (e == CL_SUCCESS)
            bufs[1] = clCreateBuffer(ctx->cl, ro, (size_t)H * 4, tokens, &e);
        if (e == CL_SUCCESS)
            bufs[2] = clCreateBuffer(ctx->cl, ro, (size_t)m * 4, win, &e);
        if (e == CL_SUCCESS)
            bufs[3] = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * m * 4, NULL, &e);
        if (e == CL_SUCCESS)
            bufs[4] = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * nw * 2 * D * 4, NULL, &e);
        skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
        skvi_args args = skvi_args_begin(c->k_inv_norms, 0);
        if (e == CL_SUCCESS) {
            cl_kernel k = c->k_inv_norms;
            skvi_pool_bind(&args, pool);
            skvi_arg_mem(&args, bufs[0]);
            skvi_arg_u32(&args, pph);
            skvi_arg_mem(&args, bufs[1]);
            skvi_arg_u32(&args, m);
            skvi_arg_mem(&args, bufs[3]);
            size_t g[2] = {m, H};
            e = skvi_args_end(&args);
            if (e == CL_SUCCESS)
                e = clEnqueueNDRangeKernel(ctx->queue, k, 2, NULL, g, NULL, 0, NULL, NULL);
        }
        if (e == CL_SUCCESS) {
            cl_kernel k = c->k_key_stats;
            args = skvi_args_begin(k, 0);
            skvi_pool_bind(&args, pool);
            skvi_arg_mem(&args, bufs[0]);
            skvi_arg_u32(&args, pph);
            skvi_arg_mem(&args, bufs[1]);
            skvi_arg_u32(&args, m);
            skvi_arg_mem(&args, bufs[3]);
            skvi_arg_mem(&args, bufs[2]);
            skvi_arg_u32(&args, nw);
            skvi_arg_mem(&args, bufs[4]);
            size_t g[2] = {D, H};
            e = skvi_args_end(&args);
            if (e == CL_SUCCESS)
                e = clEnqueueNDRangeKernel(ctx->queue, k, 2, NULL, g, NULL, 0, NULL, NULL);
        }
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(ctx->queue, bufs[4], CL_TRUE, 0, (size_t)H * nw * 2 * D * 4, out, 0, NULL, NULL);
        if (args.err != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &args, "key statistics");
        else if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "key statistics");
    }
    if (st == SKV_OK) { /* commit */
        for (uint32_t h = 0; h < H; h++) {
            skvi_key_stats *k = &s->stats[(size_t)layer * H + h];
            for (uint32_t w = 0; w < nw; w++) {
                const float *o = out + ((size_t)h * nw + w) * 2 * D;
                for (uint32_t d = 0; d < D; d++) {
                    k->sum[(size_t)(w_lo + w) * D + d] += o[d];
                    k->sum_unit[(size_t)(w_lo + w) * D + d] += o[D + d];
                }
            }
            for (uint32_t t = 0; t < m; t++)
                k->count[w_lo + win[t]]++;
        }
        s->pending_n[layer] = 0;
    }
    for (int i = 0; i < 5; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    skvi_free(a, pages);
    skvi_free(a, tokens);
    skvi_free(a, win);
    skvi_free(a, out);
    (void)P;
    return st;
}

skv_status skvi_stats_flush(skv_cache *c, skvi_seq *s)
{
    for (uint32_t l = 0; s->stats && l < c->desc.layers; l++)
        if (s->pending_n[l]) {
            skv_status st = flush_layer(c, s, l);
            if (st != SKV_OK)
                return st;
        }
    return SKV_OK;
}

void skvi_snap_release(skv_cache *c, skvi_seq *s)
{
    for (uint32_t l = 0; s->snap_n && l < c->desc.layers; l++) {
        skvi_free(c->ctx->alloc, s->snap_q[l]);
        skvi_free(c->ctx->alloc, s->snap_pos[l]);
    }
    skvi_free(c->ctx->alloc, s->snap_q);
    skvi_free(c->ctx->alloc, s->snap_pos);
    skvi_free(c->ctx->alloc, s->snap_n);
    s->snap_q = NULL;
    s->snap_pos = NULL;
    s->snap_n = NULL;
}

/* Stores a window (q as floats) for `layer`; the old one stays on failure. */
static skv_status snap_store(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n, skv_dtype dtype, const void *q,
                             const int32_t *positions)
{
    const skv_allocator *a = c->ctx->alloc;
    if (!s->snap_n) {
        s->snap_q = skvi_calloc(a, c->desc.layers, sizeof *s->snap_q);
        s->snap_pos = skvi_calloc(a, c->desc.layers, sizeof *s->snap_pos);
        s->snap_n = skvi_calloc(a, c->desc.layers, sizeof *s->snap_n);
        if (!s->snap_q || !s->snap_pos || !s->snap_n) {
            skvi_snap_release(c, s);
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "observation window: out of memory");
        }
    }
    size_t count = (size_t)n * c->desc.q_heads * c->desc.head_dim;
    float *qf = skvi_alloc(a, count * sizeof *qf);
    int32_t *pf = skvi_alloc(a, n * sizeof *pf);
    if (!qf || !pf) {
        skvi_free(a, qf);
        skvi_free(a, pf);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "observation window: out of memory");
    }
    for (size_t i = 0; i < count; i++)
        qf[i] = skv_ref_load(dtype, q, i);
    memcpy(pf, positions, n * sizeof *pf);
    skvi_free(a, s->snap_q[layer]);
    skvi_free(a, s->snap_pos[layer]);
    s->snap_q[layer] = qf;
    s->snap_pos[layer] = pf;
    s->snap_n[layer] = n;
    return SKV_OK;
}

skv_status skvi_snap_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    for (uint32_t l = 0; src->snap_n && l < c->desc.layers; l++)
        if (src->snap_n[l]) {
            skv_status st = snap_store(c, dst, l, src->snap_n[l], SKV_F32, src->snap_q[l], src->snap_pos[l]);
            if (st != SKV_OK)
                return st;
        }
    return SKV_OK;
}

skv_status skv_seq_observe_window(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t n_queries, skv_dtype dtype,
                                  const void *q, const int32_t *positions)
{
    skvi_clear_error();
    if (!c || !q || !positions)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG,
                         "skv_seq_observe_window: cache, q or positions is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_observe_window", &s);
    if (st != SKV_OK)
        return st;
    if (layer >= c->desc.layers || n_queries == 0 || n_queries > 4096 || (unsigned)dtype > SKV_BF16)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_seq_observe_window: layer %u, n_queries %u (1..4096) or dtype %d out of range", layer,
                         n_queries, (int)dtype);
    if (c->desc.scorer != SKV_SCORER_SNAPKV)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_seq_observe_window: the cache's scorer is not snapkv");
    return snap_store(c, s, layer, n_queries, dtype, q, positions);
}

/* SnapKV for (layer, head): dense keys of every held token, S = q K^T / sqrt(d) by
 * CLBlast, masked softmax rows and votes on the device, pooling on the host. */
static skv_status snap_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held, float *scores)
{
    skv_context *ctx = c->ctx;
    const skv_allocator *al = ctx->alloc;
    const uint32_t D = c->desc.head_dim, G = c->group, QH = c->desc.q_heads;
    if (!s->snap_n || !s->snap_n[layer])
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_seq_scores: snapkv needs an observation window for layer %u (skv_seq_observe_window)",
                         layer);
    const uint32_t w = s->snap_n[layer], rows = w * G;
    float *qg = skvi_alloc(al, (size_t)rows * D * sizeof *qg), *votes = skvi_alloc(al, held * sizeof *votes);
    int32_t *kpos = skvi_alloc(al, held * sizeof *kpos);
    skv_status st = SKV_OK;
    cl_int e = CL_SUCCESS;
    cl_mem keys = NULL, pos = NULL, qb = NULL, qp = NULL, S = NULL, rm = NULL, rl = NULL, vote = NULL;
    if (!qg || !votes || !kpos)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    if (st == SKV_OK) {
        for (uint32_t i = 0; i < w; i++) /* rows: (window query i, q-head g of this kv-head) */
            for (uint32_t g = 0; g < G; g++)
                memcpy(qg + ((size_t)i * G + g) * D, s->snap_q[layer] + ((size_t)i * QH + head * G + g) * D,
                       D * sizeof *qg);
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        keys = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, held * D * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            pos = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, held * sizeof(int32_t), NULL, &e);
        if (e == CL_SUCCESS)
            qb = clCreateBuffer(ctx->cl, ro, (size_t)rows * D * sizeof(float), qg, &e);
        if (e == CL_SUCCESS)
            qp = clCreateBuffer(ctx->cl, ro, w * sizeof(int32_t), s->snap_pos[layer], &e);
        if (e == CL_SUCCESS)
            S = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)rows * held * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            rm = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, rows * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            rl = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, rows * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            vote = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, held * sizeof(float), NULL, &e);
    }
    cl_uint off = 0, row = layer * c->desc.kv_heads + head;
    for (int t = 0; st == SKV_OK && e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) { /* dense keys, tier by tier */
        const skvi_page_list *l = skvi_seq_list(c, s, layer, head, (skv_tier)t);
        if (!l->tokens)
            continue;
        cl_mem pages = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, l->n * sizeof *l->ids, l->ids, &e);
        if (e != CL_SUCCESS)
            break;
        cl_kernel k = c->k_keys[t];
        cl_uint n = l->tokens;
        skvi_args a = skvi_args_begin(k, 0);
        skvi_pool_bind(&a, &c->pools[t][SKV_MEM_DEVICE]);
        skvi_arg_mem(&a, pages);
        skvi_arg_u32(&a, n);
        skvi_arg_u32(&a, off);
        if (t != SKV_TIER_F16) {
            skvi_arg_mem(&a, c->signs);
            skvi_arg_u32(&a, row);
            skvi_arg_mem(&a, c->ada_params[t]);
        }
        skvi_arg_mem(&a, keys);
        skvi_arg_mem(&a, pos);
        size_t g = n;
        e = skvi_args_end(&a);
        if (e != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &a, "skv_seq_scores (snapkv)");
        else
            e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &g, NULL, 0, NULL, NULL);
        clReleaseMemObject(pages);
        off += n;
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        CLBlastStatusCode b = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, rows, held, D,
                                           1.0f / sqrtf((float)D), qb, 0, D, keys, 0, D, 0.0f, S, 0, held, &ctx->queue,
                                           NULL);
        if (b != CLBlastSuccess)
            st = skvi_fail(ctx->error, SKV_ERR_OPENCL, "skv_seq_scores: CLBlastSgemm failed (%d)", (int)b);
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel k = c->k_snap_rows;
        skvi_args a = skvi_args_begin(k, 0);
        skvi_arg_mem(&a, S);
        skvi_arg_u32(&a, (cl_uint)held);
        skvi_arg_mem(&a, pos);
        skvi_arg_mem(&a, qp);
        skvi_arg_u32(&a, G);
        skvi_arg_mem(&a, rm);
        skvi_arg_mem(&a, rl);
        size_t g = rows;
        e = skvi_args_end(&a);
        if (e != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &a, "skv_seq_scores (snapkv)");
        else
            e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &g, NULL, 0, NULL, NULL);
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel k = c->k_snap_vote;
        skvi_args a = skvi_args_begin(k, 0);
        skvi_arg_mem(&a, S);
        skvi_arg_u32(&a, (cl_uint)held);
        skvi_arg_u32(&a, rows);
        skvi_arg_mem(&a, pos);
        skvi_arg_mem(&a, qp);
        skvi_arg_u32(&a, G);
        skvi_arg_mem(&a, rm);
        skvi_arg_mem(&a, rl);
        skvi_arg_mem(&a, vote);
        size_t g = held;
        e = skvi_args_end(&a);
        if (e != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &a, "skv_seq_scores (snapkv)");
        else
            e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &g, NULL, 0, NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(ctx->queue, vote, CL_TRUE, 0, held * sizeof(float), votes, 0, NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(ctx->queue, pos, CL_TRUE, 0, held * sizeof(int32_t), kpos, 0, NULL, NULL);
    }
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(ctx->error, e, "skv_seq_scores (snapkv)");
    if (st == SKV_OK) {
        int32_t window_start = s->snap_pos[layer][0];
        for (uint32_t i = 1; i < w; i++)
            window_start = s->snap_pos[layer][i] < window_start ? s->snap_pos[layer][i] : window_start;
        if (skv_ref_snapkv_pool(votes, kpos, held, window_start, scores) != 0)
            st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    }
    cl_mem bufs[8] = {keys, pos, qb, qp, S, rm, rl, vote};
    for (int i = 0; i < 8; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    skvi_free(al, qg);
    skvi_free(al, votes);
    skvi_free(al, kpos);
    return st;
}

void skvi_obs_release(skv_cache *c, skvi_seq *s)
{
    for (uint32_t l = 0; s->obs_acc && l < c->desc.layers; l++)
        if (s->obs_acc[l])
            clReleaseMemObject(s->obs_acc[l]);
    skvi_free(c->ctx->alloc, s->obs_acc);
    skvi_free(c->ctx->alloc, s->obs_cap);
    s->obs_acc = NULL;
    s->obs_cap = NULL;
}

/* Replaces layer's accumulators by a zeroed buffer of `cap` positions holding the old
 * ones (or src's, for a fork). */
static skv_status obs_resize(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t cap, cl_mem from, uint32_t from_cap)
{
    skv_context *ctx = c->ctx;
    const uint32_t H = c->desc.kv_heads;
    if (!s->obs_acc) {
        s->obs_acc = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_acc);
        s->obs_cap = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_cap);
        if (!s->obs_acc || !s->obs_cap) {
            skvi_obs_release(c, s);
            return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "observed attention: out of memory");
        }
    }
    cl_int e;
    cl_mem m = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * cap * sizeof(float), NULL, &e);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "observed attention: clCreateBuffer");
    float zero = 0.0f;
    e = clEnqueueFillBuffer(ctx->queue, m, &zero, sizeof zero, 0, (size_t)H * cap * sizeof(float), 0, NULL, NULL);
    for (uint32_t h = 0; from && e == CL_SUCCESS && h < H; h++) /* row h keeps its positions */
        e = clEnqueueCopyBuffer(ctx->queue, from, m, (size_t)h * from_cap * sizeof(float), (size_t)h * cap * sizeof(float),
                                (size_t)from_cap * sizeof(float), 0, NULL, NULL);
    if (e != CL_SUCCESS) {
        clReleaseMemObject(m);
        return skvi_cl_fail(ctx->error, e, "observed attention: resize");
    }
    if (s->obs_acc[layer])
        clReleaseMemObject(s->obs_acc[layer]);
    s->obs_acc[layer] = m;
    s->obs_cap[layer] = cap;
    return SKV_OK;
}

skv_status skvi_obs_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, int64_t need)
{
    if (c->desc.scorer != SKV_SCORER_OBSERVED)
        return SKV_OK;
    if (need > 0x7FFFFFFF)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "observed attention: position beyond 2^31");
    uint32_t have = s->obs_cap ? s->obs_cap[layer] : 0;
    if (need <= have && s->obs_acc && s->obs_acc[layer])
        return SKV_OK;
    uint32_t cap = have ? have : 1024;
    while (cap < need)
        cap = cap > 0x40000000u ? 0x7FFFFFFFu : cap * 2;
    cl_mem old = s->obs_acc ? s->obs_acc[layer] : NULL;
    if (old)
        clRetainMemObject(old); /* obs_resize releases the slot's buffer */
    skv_status st = obs_resize(c, s, layer, cap, old, have);
    if (old)
        clReleaseMemObject(old);
    return st;
}

skv_status skvi_obs_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    for (uint32_t l = 0; src->obs_acc && l < c->desc.layers; l++)
        if (src->obs_acc[l]) {
            skv_status st = obs_resize(c, dst, l, src->obs_cap[l], src->obs_acc[l], src->obs_cap[l]);
            if (st != SKV_OK)
                return st;
        }
    return SKV_OK;
}

/* H2O: accumulated attention / steps since arrival (t0 - position, at least 1). */
static skv_status observed_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held,
                                  const int32_t *positions, float *scores)
{
    skv_context *ctx = c->ctx;
    uint32_t cap = s->obs_cap ? s->obs_cap[layer] : 0;
    float *acc = skvi_calloc(ctx->alloc, cap ? cap : 1, sizeof *acc);
    if (!acc)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    cl_int e = cap ? clEnqueueReadBuffer(ctx->queue, s->obs_acc[layer], CL_TRUE, (size_t)head * cap * sizeof(float),
                                         cap * sizeof(float), acc, 0, NULL, NULL)
                   : CL_SUCCESS;
    for (size_t i = 0; e == CL_SUCCESS && i < held; i++) {
        int64_t p = positions[i], age = s->next_pos[layer] - p;
        float a = p >= 0 && p < cap ? acc[p] : 0.0f;
        scores[i] = a / (float)(age > 1 ? age : 1);
    }
    skvi_free(ctx->alloc, acc);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "skv_seq_scores (observed)");
}

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

/* The statistics vectors of (layer, head) as floats: rows 0..nw-1 the means (one row,
 * the global mean, unless windowed), row nw the unit mean. */
static float *stats_vectors(skv_cache *c, const skvi_seq *s, uint32_t layer, uint32_t head, uint32_t *nw_out)
{
    const uint32_t D = c->desc.head_dim;
    const skvi_key_stats *k = s->stats ? &s->stats[(size_t)layer * c->desc.kv_heads + head] : NULL;
    int windowed = c->desc.scorer == SKV_SCORER_MANIFOLD_WINDOWED;
    uint32_t nw = windowed && k && k->n_windows ? k->n_windows : 1;
    float *v = skvi_calloc(c->ctx->alloc, (size_t)(nw + 1) * D, sizeof *v);
    if (!v)
        return NULL;
    if (k && k->n_windows) {
        uint64_t total = 0;
        for (uint32_t w = 0; w < k->n_windows; w++)
            total += k->count[w];
        for (uint32_t d = 0; d < D; d++) {
            double all = 0, unit = 0;
            for (uint32_t w = 0; w < k->n_windows; w++) {
                all += k->sum[(size_t)w * D + d];
                unit += k->sum_unit[(size_t)w * D + d];
                if (windowed)
                    v[(size_t)w * D + d] = k->count[w] ? (float)(k->sum[(size_t)w * D + d] / k->count[w]) : 0.0f;
            }
            if (!windowed)
                v[d] = total ? (float)(all / total) : 0.0f;
            v[(size_t)nw * D + d] = total ? (float)(unit / total) : 0.0f;
        }
    }
    *nw_out = nw;
    return v;
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
                e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &gsz, NULL, 0, NULL, NULL);
            if (e == CL_SUCCESS)
                e = clEnqueueReadBuffer(ctx->queue, out, CL_TRUE, 0, (size_t)G * n * 4, part, 0, NULL, NULL);
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

static skv_status scores_impl(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, skv_scorer scorer,
                              float *out, size_t capacity, size_t *count, float *energy)
{
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
            st = observed_scores(c, s, layer, kv_head, held, pos, scores);
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
            st = scorer == SKV_SCORER_SNAPKV ? snap_scores(c, s, layer, kv_head, held, scores)
                                                     : tri_scores(c, s, layer, kv_head, held, scores);
        if (st == SKV_OK && capacity)
            memcpy(out, scores, (held < capacity ? held : capacity) * sizeof *out);
        skvi_free(ctx->alloc, scores);
        return st;
    }
    st = skvi_stats_flush(c, s);
    if (st != SKV_OK)
        return st;
    const uint32_t D = c->desc.head_dim;
    uint32_t nw = 1;
    float *vecs = stats_vectors(c, s, layer, kv_head, &nw);
    float *scores = skvi_calloc(ctx->alloc, held ? held : 1, sizeof *scores);
    float *tables = NULL, *norms2 = NULL;
    if (!vecs || !scores) {
        skvi_free(ctx->alloc, vecs);
        skvi_free(ctx->alloc, scores);
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    }
    size_t done = 0;
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, kv_head, (skv_tier)t);
        if (!l->tokens)
            continue;
        cl_int e;
        cl_mem bufs[5] = {0}; /* pages, scores, vectors or tables, norms2 (ADA), |k|^2 */
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        bufs[0] = clCreateBuffer(ctx->cl, ro, l->n * sizeof *l->ids, l->ids, &e);
        if (e == CL_SUCCESS)
            bufs[1] = clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, l->tokens * sizeof(float), NULL, &e);
        if (e == CL_SUCCESS)
            bufs[4] = clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, l->tokens * sizeof(float), NULL, &e);
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
                skv_ref_ada_signs(layer, kv_head, D, signs);
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
        if (st == SKV_OK && e == CL_SUCCESS) {
            cl_kernel k = c->k_score[t];
            cl_uint n = l->tokens;
            skvi_args a = skvi_args_begin(k, 0);
            skvi_pool_bind(&a, &c->pools[t][SKV_MEM_DEVICE]);
            skvi_arg_mem(&a, bufs[0]);
            skvi_arg_u32(&a, n);
            skvi_arg_u32(&a, (cl_uint)scorer);
            skvi_arg_mem(&a, bufs[2]);
            if (t != SKV_TIER_F16)
                skvi_arg_mem(&a, bufs[3]);
            skvi_arg_u32(&a, nw);
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
                e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &g, NULL, 0, NULL, NULL);
            if (e == CL_SUCCESS && energy && done < capacity)
                e = clEnqueueReadBuffer(ctx->queue, bufs[4], CL_FALSE, 0,
                                        (n < capacity - done ? n : capacity - done) * sizeof(float), energy + done, 0,
                                        NULL, NULL); /* in order: complete with the blocking read below */
            if (e == CL_SUCCESS)
                e = clEnqueueReadBuffer(ctx->queue, bufs[1], CL_TRUE, 0, n * sizeof(float), scores + done, 0, NULL,
                                        NULL);
        }
        if (st == SKV_OK && e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "skv_seq_scores");
        done += l->tokens;
        for (int i = 0; i < 5; i++)
            if (bufs[i])
                clReleaseMemObject(bufs[i]);
        skvi_free(ctx->alloc, tables);
        skvi_free(ctx->alloc, norms2);
        tables = norms2 = NULL;
    }
    if (st == SKV_OK && capacity)
        memcpy(out, scores, (held < capacity ? held : capacity) * sizeof *out);
    skvi_free(ctx->alloc, vecs);
    skvi_free(ctx->alloc, scores);
    return st;
}

skv_status skv_seq_scores(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, float *out, size_t capacity,
                          size_t *count)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_seq_scores: cache is NULL");
    return scores_impl(c, seq, layer, kv_head, c->desc.scorer, out, capacity, count, NULL);
}

skv_status skvi_scores(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, skv_scorer scorer, float *out,
                       size_t capacity, size_t *count, float *energy)
{
    const int one_pass = scorer >= SKV_SCORER_KNORM && scorer <= SKV_SCORER_STREAMING;
    skv_status st = scores_impl(c, seq, layer, kv_head, scorer, out, capacity, count, one_pass ? energy : NULL);
    if (st == SKV_OK && energy && !one_pass) { /* knorm = -|k| */
        size_t n = 0;
        st = scores_impl(c, seq, layer, kv_head, SKV_SCORER_KNORM, energy, capacity, &n, NULL);
        for (size_t i = 0; st == SKV_OK && i < n && i < capacity; i++)
            energy[i] *= energy[i];
    }
    return st;
}
