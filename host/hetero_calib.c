/* HeteroCache's calibration: each decode step's top-k sets kept on the device per layer,
 * then stability, similarity and the star clustering into head categories. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"

/* ---- calibration ---- */

void skvi_calib_release(skv_cache *c, skvi_seq *s)
{
    skvi_calib *k = s->calib;
    if (!k)
        return;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        if (k->sets && k->sets[l])
            clReleaseMemObject(k->sets[l]);
        if (k->counts && k->counts[l])
            clReleaseMemObject(k->counts[l]);
    }
    skvi_free(c->ctx->alloc, k->sets);
    skvi_free(c->ctx->alloc, k->counts);
    skvi_free(c->ctx->alloc, k->steps);
    skvi_free(c->ctx->alloc, k->extra);
    skvi_free(c->ctx->alloc, k);
    s->calib = NULL;
}

skv_status skv_hetero_calibrate_begin(skv_cache *c, skv_seq_id seq, const skv_hetero_desc *desc)
{
    static const char fn[] = "skv_hetero_calibrate_begin";
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st == SKV_OK)
        st = skvi_hetero_check_desc(c->ctx->error, desc, fn);
    if (st != SKV_OK)
        return st;
    if (s->calib)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u is calibrating already", fn, seq);
    st = skvi_hetero_kernels(c);
    if (st != SKV_OK)
        return st;
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads;
    const skv_allocator *a = c->ctx->alloc;
    skvi_calib *k = skvi_calloc(a, 1, sizeof *k);
    if (k) {
        s->calib = k;
        k->desc = *desc;
        k->sets = skvi_calloc(a, L, sizeof *k->sets);
        k->counts = skvi_calloc(a, L, sizeof *k->counts);
        k->steps = skvi_calloc(a, L, sizeof *k->steps);
        k->extra = skvi_calloc(a, L, sizeof *k->extra);
    }
    if (!k || !k->sets || !k->counts || !k->steps || !k->extra) {
        skvi_calib_release(c, s);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    cl_int e = CL_SUCCESS;
    const size_t set_bytes = (size_t)desc->max_steps * H * desc->top_k * sizeof(cl_uint);
    for (uint32_t l = 0; e == CL_SUCCESS && l < L; l++) {
        k->sets[l] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, set_bytes, NULL, &e);
        if (e == CL_SUCCESS)
            k->counts[l] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, (size_t)desc->max_steps * H * sizeof(cl_uint),
                                          NULL, &e);
    }
    if (e != CL_SUCCESS) {
        skvi_calib_release(c, s);
        return skvi_cl_fail(c->ctx->error, e, "skv_hetero_calibrate_begin: clCreateBuffer");
    }
    return SKV_OK;
}

skv_status skv_hetero_calibrate_abort(skv_cache *c, skv_seq_id seq)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_calibrate_abort: cache is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_hetero_calibrate_abort", &s);
    if (st != SKV_OK)
        return st;
    if (!s->calib)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_hetero_calibrate_abort: sequence %u is not calibrating",
                         seq);
    st = skvi_finish(c->ctx); /* enqueued steps write into the buffers */
    skvi_calib_release(c, s);
    return st;
}

/* One layer's categories from its recorded sets (host copies). */
static skv_status classify_layer(skv_cache *c, const skvi_calib *k, uint32_t l, const uint32_t *sets,
                                 const uint32_t *counts, skv_hetero_profile *p)
{
    const uint32_t H = c->desc.kv_heads, K = k->desc.top_k, T = k->steps[l];
    float *sim = skvi_calloc(c->ctx->alloc, (size_t)H * H, sizeof *sim);
    uint32_t *head_counts = skvi_calloc(c->ctx->alloc, T, sizeof *head_counts);
    if (!sim || !head_counts) {
        skvi_free(c->ctx->alloc, sim);
        skvi_free(c->ctx->alloc, head_counts);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_calibrate_end: out of memory");
    }
    float *stab = p->stability + (size_t)l * H;
    for (uint32_t h = 0; h < H; h++) {
        const uint32_t *ref = sets + (size_t)h * K; /* step 0 */
        const uint32_t ref_n = counts[h];
        /* set t of head h: sets + (t * H + h) * K */
        const uint32_t first = T > 1 ? 1 : 0; /* the steps after the reference */
        for (uint32_t t = first; t < T; t++)
            head_counts[t - first] = counts[(size_t)t * H + h];
        stab[h] = skv_ref_hetero_stability(sets + ((size_t)first * H + h) * K, head_counts, T - first, H * K, ref,
                                           ref_n, ref_n ? ref_n : 1);
        for (uint32_t g = h + 1; g < H; g++) {
            double sum = 0;
            for (uint32_t t = 0; t < T; t++) {
                const size_t a = (size_t)t * H + h, b = (size_t)t * H + g;
                const uint32_t n = counts[a] > counts[b] ? counts[a] : counts[b];
                sum += n ? (double)skv_ref_set_overlap(sets + a * K, counts[a], sets + b * K, counts[b]) / n : 1.0;
            }
            sim[(size_t)h * H + g] = sim[(size_t)g * H + h] = (float)(sum / T);
        }
        sim[(size_t)h * H + h] = 1.0f;
    }
    skv_status st = skv_ref_hetero_classify(H, stab, sim, k->desc.tau_sim, k->desc.tau_stable,
                                            p->category + (size_t)l * H, p->pivot + (size_t)l * H);
    skvi_free(c->ctx->alloc, sim);
    skvi_free(c->ctx->alloc, head_counts);
    return st;
}

skv_status skv_hetero_calibrate_end(skv_cache *c, skv_seq_id seq, skv_hetero_profile **out)
{
    static const char fn[] = "skv_hetero_calibrate_end";
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache or out is NULL", fn);
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st != SKV_OK)
        return st;
    skvi_calib *k = s->calib;
    if (!k)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u is not calibrating", fn, seq);
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads, K = k->desc.top_k;
    for (uint32_t l = 0; l < L; l++)
        if (k->steps[l] == 0)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: layer %u saw no decode step of sequence %u", fn, l,
                             seq);
    skv_hetero_profile *p = skvi_hetero_profile_new(L, H);
    uint32_t *sets = skvi_alloc(c->ctx->alloc, (size_t)k->desc.max_steps * H * K * sizeof *sets);
    uint32_t *counts = skvi_alloc(c->ctx->alloc, (size_t)k->desc.max_steps * H * sizeof *counts);
    if (!p || !sets || !counts)
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (uint32_t l = 0; st == SKV_OK && l < L; l++) {
        const uint32_t T = k->steps[l];
        cl_int e = clEnqueueReadBuffer(c->ctx->queue, k->sets[l], CL_TRUE, 0, (size_t)T * H * K * sizeof *sets, sets, 0,
                                       NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(c->ctx->queue, k->counts[l], CL_TRUE, 0, (size_t)T * H * sizeof *counts, counts, 0,
                                    NULL, NULL);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "skv_hetero_calibrate_end: clEnqueueReadBuffer");
        if (st == SKV_OK)
            st = classify_layer(c, k, l, sets, counts, p);
    }
    skvi_free(c->ctx->alloc, sets);
    skvi_free(c->ctx->alloc, counts);
    if (st != SKV_OK) {
        skv_hetero_profile_free(p);
        return st;
    }
    skvi_calib_release(c, s);
    *out = p;
    return SKV_OK;
}
