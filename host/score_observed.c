/* Observed attention (H2O-style): the per-position attention mass decode accumulates
 * on the device (observe kernels), its accumulators grown before appends commit, copied
 * on fork, and the scores read from them: the mean attention a token received over the
 * decode steps that observed it (kvpress's ObservedAttentionPress divides by the queries
 * that saw each token, the same thing for a prefill), so a bulk prefill's tokens, all
 * observed by the same steps, rank by their attention alone and carry no age penalty.
 * Per (sequence, layer) the host counts the steps (obs_steps) and keeps, per position,
 * the count when the token arrived (obs_from). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

void skvi_obs_release(skv_cache *c, skvi_seq *s)
{
    for (uint32_t l = 0; s->obs_acc && l < c->desc.layers; l++)
        if (s->obs_acc[l])
            clReleaseMemObject(s->obs_acc[l]);
    for (uint32_t l = 0; s->obs_from && l < c->desc.layers; l++)
        skvi_free(c->ctx->alloc, s->obs_from[l]);
    skvi_free(c->ctx->alloc, s->obs_acc);
    skvi_free(c->ctx->alloc, s->obs_cap);
    skvi_free(c->ctx->alloc, s->obs_from);
    skvi_free(c->ctx->alloc, s->obs_steps);
    s->obs_acc = NULL;
    s->obs_cap = NULL;
    s->obs_from = NULL;
    s->obs_steps = NULL;
}

/* Replaces layer's accumulators by a zeroed buffer of `cap` positions holding the old
 * ones (or src's, for a fork), and its arrival counts likewise (from_arrived: the old
 * or src's, from_cap of them). */
static skv_status obs_resize(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t cap, cl_mem from, uint32_t from_cap,
                             const uint32_t *from_arrived)
{
    skv_context *ctx = c->ctx;
    const uint32_t H = c->desc.kv_heads;
    if (!s->obs_acc) {
        s->obs_acc = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_acc);
        s->obs_cap = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_cap);
        s->obs_from = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_from);
        s->obs_steps = skvi_calloc(ctx->alloc, c->desc.layers, sizeof *s->obs_steps);
        if (!s->obs_acc || !s->obs_cap || !s->obs_from || !s->obs_steps) {
            skvi_obs_release(c, s);
            return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "observed attention: out of memory");
        }
    }
    uint32_t *arrived = skvi_calloc(ctx->alloc, cap, sizeof *arrived);
    if (!arrived)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "observed attention: out of memory");
    if (from_arrived)
        memcpy(arrived, from_arrived, (size_t)from_cap * sizeof *arrived);
    cl_int e;
    cl_mem m = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * cap * sizeof(float), NULL, &e);
    if (e != CL_SUCCESS) {
        skvi_free(ctx->alloc, arrived);
        return skvi_cl_fail(ctx->error, e, "observed attention: clCreateBuffer");
    }
    float zero = 0.0f;
    e = clEnqueueFillBuffer(ctx->queue, m, &zero, sizeof zero, 0, (size_t)H * cap * sizeof(float), 0, NULL, NULL);
    for (uint32_t h = 0; from && e == CL_SUCCESS && h < H; h++) /* row h keeps its positions */
        e = clEnqueueCopyBuffer(ctx->queue, from, m, (size_t)h * from_cap * sizeof(float), (size_t)h * cap * sizeof(float),
                                (size_t)from_cap * sizeof(float), 0, NULL, NULL);
    if (e != CL_SUCCESS) {
        clReleaseMemObject(m);
        skvi_free(ctx->alloc, arrived);
        return skvi_cl_fail(ctx->error, e, "observed attention: resize");
    }
    if (s->obs_acc[layer])
        clReleaseMemObject(s->obs_acc[layer]);
    skvi_free(ctx->alloc, s->obs_from[layer]);
    s->obs_acc[layer] = m;
    s->obs_cap[layer] = cap;
    s->obs_from[layer] = arrived;
    return SKV_OK;
}

void skvi_obs_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n)
{
    if (c->desc.scorer != SKV_SCORER_OBSERVED || !s->obs_from || !s->obs_from[layer])
        return;
    for (uint32_t t = 0; t < n; t++) /* skvi_obs_reserve made room for every position */
        if (positions[t] >= 0 && (uint32_t)positions[t] < s->obs_cap[layer])
            s->obs_from[layer][positions[t]] = s->obs_steps[layer];
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
    skv_status st = obs_resize(c, s, layer, cap, old, have, s->obs_from ? s->obs_from[layer] : NULL);
    if (old)
        clReleaseMemObject(old);
    return st;
}

skv_status skvi_obs_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    for (uint32_t l = 0; src->obs_acc && l < c->desc.layers; l++)
        if (src->obs_acc[l]) {
            skv_status st = obs_resize(c, dst, l, src->obs_cap[l], src->obs_acc[l], src->obs_cap[l], src->obs_from[l]);
            if (st != SKV_OK)
                return st;
            dst->obs_steps[l] = src->obs_steps[l];
        }
    return SKV_OK;
}

/* H2O: accumulated attention / the decode steps that observed the token (0 for a token
 * none has: the newest, which RDR's recent window protects). */
skv_status skvi_observed_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held,
                                const int32_t *positions, float *scores)
{
    skv_context *ctx = c->ctx;
    uint32_t cap = s->obs_cap ? s->obs_cap[layer] : 0;
    float *acc = skvi_calloc(ctx->alloc, cap ? cap : 1, sizeof *acc);
    if (!acc)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_scores: out of memory");
    cl_int e = cap ? clEnqueueReadBuffer(c->rq, s->obs_acc[layer], CL_TRUE, (size_t)head * cap * sizeof(float),
                                         cap * sizeof(float), acc, 0, NULL, NULL)
                   : CL_SUCCESS;
    for (size_t i = 0; e == CL_SUCCESS && i < held; i++) {
        const int64_t p = positions[i];
        const int known = p >= 0 && p < cap;
        const uint32_t seen = known ? s->obs_steps[layer] - s->obs_from[layer][p] : 0;
        scores[i] = seen ? acc[p] / (float)seen : 0.0f;
    }
    skvi_free(ctx->alloc, acc);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "skv_seq_scores (observed)");
}
