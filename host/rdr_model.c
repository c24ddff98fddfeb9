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
 * calls with host queries and of SnapKV's observation windows, primed by TriAttention's
 * query statistics; a head that has seen no query takes kappa = SKVI_KAPPA_DEFAULT. */
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
    if (!c->q_energy || !c->q_seen)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
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
    skvi_free(c->ctx->alloc, c->q_energy);
    skvi_free(c->ctx->alloc, c->q_seen);
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
                float x = dtype == SKV_F32    ? ((const float *)q)[at + d]
                          : dtype == SKV_F16 ? skv_ref_f16_to_f32(((const uint16_t *)q)[at + d])
                                             : skv_ref_bf16_to_f32(((const uint16_t *)q)[at + d]);
                e += (double)x * x;
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
    if (c->q_seen && c->q_seen[i] && mean_ksq > 0)
        kappa = c->q_energy[i] / (double)c->q_seen[i] * mean_ksq / c->desc.head_dim;
    return kappa / 2;
}
