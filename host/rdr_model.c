/* RDR's key-error weight from the queries the cache sees. A key error e (|e|^2 =
 * MSE_K |k|^2, spread evenly over the head's dimensions by ADA's rotation) moves a logit
 * by scale q.e, of variance sigma^2 = scale^2 |q|^2 MSE_K |k|^2 / d. The token's weight
 * then grows by exp(sigma^2 / 2) on average: a quantised low-attention token adds
 * attention mass that belongs to no token, about u sigma^2 / 2 of it, against the u
 * lost by dropping it. So a tier's key distortion is weighted by
 *   kappa / 2,   kappa = E[scale^2 |q|^2] mean|k|^2 / d,
 * the variance of the logits of unaligned queries and keys: about 8 to 50 on SmolLM2's
 * heads, and largest where attention is peaked. Without it (kappa = 2, DESIGN.md §7's
 * model) RDR kept many tokens at 2 bits whose logit noise cost more than dropping them.
 * E[scale^2 |q|^2] is a running mean per (layer, kv-head) over the queries of decode
 * calls (host queries here; an interop call's device queries every 16th call by
 * cl/rdr.cl's q_energy, whose means the next compression reads back) and of
 * skv_seq_observe_window, primed by TriAttention's query statistics; a head that has seen
 * no query takes kappa = SKVI_KAPPA_DEFAULT. Only SKVI_KAPPA_SHARE of the inflation is
 * counted (issue 26): the softmax renormalises what the quantised tokens gain together,
 * and on SmolLM2's streaming loss the full weight kept too few tokens in the 2- and
 * 3-bit tiers (docs/rdr.md). */
#include <math.h>
#include <string.h>

#include "cache_internal.h"

skv_status skvi_rdr_model_init(skv_cache *c)
{
    if (c->desc.retention != SKV_RETENTION_RDR)
        return SKV_OK;
    const size_t n = (size_t)c->desc.layers * c->desc.kv_heads;
    c->q_energy = skvi_calloc(c->ctx->alloc, n, sizeof *c->q_energy);
    c->q_seen = skvi_calloc(c->ctx->alloc, n, sizeof *c->q_seen);
    c->q_dev_host = skvi_calloc(c->ctx->alloc, 2 * n, sizeof *c->q_dev_host);
    c->q_dev_calls = skvi_calloc(c->ctx->alloc, c->desc.layers, sizeof *c->q_dev_calls);
    if (!c->q_energy || !c->q_seen || !c->q_dev_host || !c->q_dev_calls)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
    skv_status st = skvi_kernel_create(c->ctx, "rdr.cl", NULL, "q_energy", &c->k_q_energy);
    if (st != SKV_OK)
        return st;
    if (c->desc.scorer == SKV_SCORER_TRIATTENTION && c->query_abs) {
        /* E|q|^2 >= sum over rotary pairs of (E|q_f|)^2: tight for the concentrated
         * queries TriAttention relies on; counted as one query per q-head at 1/sqrt(d) */
        const uint32_t D = c->desc.head_dim, QH = c->desc.q_heads;
        for (uint32_t l = 0; l < c->desc.layers; l++)
            for (uint32_t qh = 0; qh < QH; qh++) {
                double e = 0;
                for (uint32_t f = 0; f < D / 2; f++) {
                    const double a = c->query_abs[((size_t)l * QH + qh) * (D / 2) + f];
                    e += a * a;
                }
                const size_t i = (size_t)l * c->desc.kv_heads + qh / c->group;
                c->q_energy[i] += e / D;
                c->q_seen[i]++;
            }
    }
    return SKV_OK;
}

void skvi_rdr_model_release(skv_cache *c)
{
    if (c->k_q_energy)
        clReleaseKernel(c->k_q_energy);
    if (c->q_dev)
        clReleaseMemObject(c->q_dev);
    skvi_free(c->ctx->alloc, c->q_energy);
    skvi_free(c->ctx->alloc, c->q_seen);
    skvi_free(c->ctx->alloc, c->q_dev_host);
    skvi_free(c->ctx->alloc, c->q_dev_calls);
}

void skvi_rdr_note_queries_cl(skv_cache *c, uint32_t layer, skv_dtype dtype, cl_mem q, size_t q_off, uint32_t rows,
                              float scale)
{
    if (!c->k_q_energy || c->q_dev_calls[layer]++ % 16 != 0)
        return;
    const size_t n = (size_t)c->desc.layers * c->desc.kv_heads;
    cl_int e = CL_SUCCESS;
    if (!c->q_dev) { /* the first sample: zeroed means and counts */
        c->q_dev = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, 2 * n * sizeof(float), NULL, &e);
        const float zero = 0.0f;
        if (e == CL_SUCCESS)
            e = clEnqueueFillBuffer(c->ctx->queue, c->q_dev, &zero, sizeof zero, 0, 2 * n * sizeof(float), 0, NULL, NULL);
        if (e != CL_SUCCESS && c->q_dev) {
            clReleaseMemObject(c->q_dev);
            c->q_dev = NULL;
        }
        c->ws.objects += e == CL_SUCCESS; /* counted with the decode calls' objects: once per cache */
    }
    if (e != CL_SUCCESS)
        return;
    skvi_args a = skvi_args_begin(c->k_q_energy, 0);
    skvi_arg_mem(&a, q);
    skvi_arg_u64(&a, q_off);
    skvi_arg_u32(&a, dtype == SKV_F32 ? 0 : dtype == SKV_F16 ? 1 : 2);
    skvi_arg_u32(&a, rows);
    skvi_arg_u32(&a, c->desc.q_heads);
    skvi_arg_u32(&a, c->group);
    skvi_arg_u32(&a, c->desc.head_dim);
    skvi_arg_f32(&a, scale);
    skvi_arg_mem(&a, c->q_dev);
    skvi_arg_u32(&a, layer * c->desc.kv_heads);
    size_t global = c->desc.kv_heads;
    if (skvi_args_end(&a) == CL_SUCCESS)
        clEnqueueNDRangeKernel(c->ctx->queue, c->k_q_energy, 1, NULL, &global, NULL, 0, NULL, NULL);
}

skv_status skvi_rdr_model_fetch(skv_cache *c)
{
    if (!c->q_dev)
        return SKV_OK;
    const size_t n = (size_t)c->desc.layers * c->desc.kv_heads;
    cl_int e = clEnqueueReadBuffer(c->rq, c->q_dev, CL_FALSE, 0, 2 * n * sizeof(float), c->q_dev_host, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(c->ctx->error, e, "RDR: reading the query energy");
}

void skvi_rdr_note_queries(skv_cache *c, uint32_t layer, skv_dtype dtype, const void *q, uint32_t rows, float scale)
{
    if (!c->q_energy)
        return;
    const uint32_t D = c->desc.head_dim, QH = c->desc.q_heads;
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t qh = 0; qh < QH; qh++) {
            const size_t at = ((size_t)r * QH + qh) * D;
            double e = 0;
            for (uint32_t d = 0; d < D; d++) {
                const double x = skv_ref_load(dtype, q, at + d);
                e += x * x;
            }
            const size_t i = (size_t)layer * c->desc.kv_heads + qh / c->group;
            if (isfinite(e)) {
                c->q_energy[i] += e * scale * scale;
                c->q_seen[i]++;
            }
        }
}

double skvi_rdr_key_weight(const skv_cache *c, uint32_t layer, uint32_t head, double mean_ksq)
{
    const size_t i = (size_t)layer * c->desc.kv_heads + head;
    double kappa = SKVI_KAPPA_DEFAULT;
    /* the host's queries and the device's (their mean over their count) together */
    const double n_dev = c->q_dev_host ? c->q_dev_host[2 * i + 1] : 0;
    const double seen = (c->q_seen ? (double)c->q_seen[i] : 0) + n_dev;
    if (seen > 0 && mean_ksq > 0) {
        const double energy = (c->q_energy ? c->q_energy[i] : 0) + (n_dev > 0 ? c->q_dev_host[2 * i] * n_dev : 0);
        kappa = energy / seen * mean_ksq / c->desc.head_dim;
    }
    return kappa / 2 * SKVI_KAPPA_SHARE;
}
