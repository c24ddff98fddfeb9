/* SnapKV: the observation window of each layer's last queries (skv_seq_observe_window)
 * and the scores it votes from them: a GEMM of the window's queries with the held keys
 * (CLBlast), softmax rows, pooling and the vote. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <clblast_c.h>

#include "cache_internal.h"

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
    if (c->desc.scorer != SKV_SCORER_SNAPKV && c->desc.retention != SKV_RETENTION_RDR)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_seq_observe_window: the cache's scorer is not snapkv and it runs no RDR");
    if (c->desc.scorer == SKV_SCORER_SNAPKV)
        st = snap_store(c, s, layer, n_queries, dtype, q, positions);
    if (st == SKV_OK) /* RDR's query energy (rdr_model.c), at attention's 1/sqrt(d) */
        skvi_rdr_note_queries(c, layer, dtype, q, n_queries, 1.0f / sqrtf((float)c->desc.head_dim));
    return st;
}

/* SnapKV for (layer, head): dense keys of every held token, S = q K^T / sqrt(d) by
 * CLBlast, masked softmax rows and votes on the device, pooling on the host. */
skv_status skvi_snap_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held, float *scores)
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
            e = skvi_enqueue_items(c->ctx->device, c->rq, k, 1, &g, 0, NULL, NULL);
        clReleaseMemObject(pages);
        off += n;
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        CLBlastStatusCode b = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, rows, held, D,
                                           1.0f / sqrtf((float)D), qb, 0, D, keys, 0, D, 0.0f, S, 0, held, &c->rq,
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
            e = skvi_enqueue_items(c->ctx->device, c->rq, k, 1, &g, 0, NULL, NULL);
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
            e = skvi_enqueue_items(c->ctx->device, c->rq, k, 1, &g, 0, NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(c->rq, vote, CL_TRUE, 0, held * sizeof(float), votes, 0, NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(c->rq, pos, CL_TRUE, 0, held * sizeof(int32_t), kpos, 0, NULL, NULL);
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
