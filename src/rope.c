/* RoPE's pair layout, frequencies and rotation, TriAttention's effective query (DESIGN.md
 * §7; host/score.c uploads the effective queries the score kernel reads) and its query
 * statistics from post-RoPE queries (skv_query_stats), the library's. The
 * C references of the score (the explicit mean over future offsets with RoPE inverted,
 * and the collapsed form the kernels compute) are src/ref/ref_rope.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "skv_internal.h"
#include "skv_ref.h"

void skv_ref_rope_pair(const skv_rope_desc *r, uint32_t d, uint32_t f, uint32_t *i0, uint32_t *i1)
{
    uint32_t rd = r->rotary_dims ? r->rotary_dims : d;
    if (r->interleaved) {
        *i0 = 2 * f;
        *i1 = 2 * f + 1;
    } else {
        *i0 = f;
        *i1 = f + rd / 2;
    }
}

double skv_ref_rope_omega(const skv_rope_desc *r, uint32_t d, uint32_t f)
{
    uint32_t rd = r->rotary_dims ? r->rotary_dims : d;
    return pow((double)r->theta, -2.0 * f / rd) / (r->scaling > 0 ? r->scaling : 1.0);
}

void skv_ref_triattention_query(const skv_rope_desc *r, uint32_t d, const float *q_mean, const float *q_abs,
                                int64_t t0, float *effective)
{
    for (uint32_t f = 0; f < d / 2; f++) {
        uint32_t i0, i1;
        skv_ref_rope_pair(r, d, f, &i0, &i1);
        double w = skv_ref_rope_omega(r, d, f), cr = 0, ci = 0;
        for (int o = 0; o < SKV_REF_TRI_OFFSETS; o++) { /* C_f = mean_o e^{i w o} */
            cr += cos(w * (double)(1 << o)) / SKV_REF_TRI_OFFSETS;
            ci += sin(w * (double)(1 << o)) / SKV_REF_TRI_OFFSETS;
        }
        double er = cos(w * (double)t0), ei = sin(w * (double)t0);
        double zr = q_mean[i0] * er - q_mean[i1] * ei, zi = q_mean[i0] * ei + q_mean[i1] * er; /* qbar e^{i w t0} */
        effective[3 * f] = (float)(zr * cr - zi * ci); /* Q_f = qbar e^{i w t0} C_f */
        effective[3 * f + 1] = (float)(zr * ci + zi * cr);
        effective[3 * f + 2] = (float)(q_abs[f] - hypot(q_mean[i0], q_mean[i1]));
    }
}

void skv_ref_rope_rotate(const skv_rope_desc *r, uint32_t d, double position, float *x)
{
    uint32_t rd = r->rotary_dims ? r->rotary_dims : d;
    for (uint32_t f = 0; f < rd / 2; f++) {
        uint32_t i0, i1;
        skv_ref_rope_pair(r, d, f, &i0, &i1);
        double a = skv_ref_rope_omega(r, d, f) * position, c = cos(a), s = sin(a);
        double x0 = x[i0], x1 = x[i1];
        x[i0] = (float)(x0 * c - x1 * s);
        x[i1] = (float)(x0 * s + x1 * c);
    }
}

skv_status skv_query_stats(const skv_rope_desc *rope, uint32_t q_heads, uint32_t head_dim, uint32_t n,
                           const float *q, const int32_t *positions, float *mean, float *abs_pair)
{
    if (!rope || !q || !positions || !mean || !abs_pair || n == 0 || q_heads == 0)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_query_stats: NULL argument, no queries or no heads");
    if (head_dim < 2 || head_dim > 256 || head_dim % 2)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_query_stats: head_dim %u is not even in 2..256", head_dim);
    if (!(rope->theta > 1.0f) || !(rope->scaling > 0.0f) || rope->rotary_dims != head_dim)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "skv_query_stats: needs RoPE over every dim (rotary_dims %u, head_dim %u), theta > 1 "
                         "(%g) and scaling > 0 (%g)",
                         rope->rotary_dims, head_dim, (double)rope->theta, (double)rope->scaling);
    for (uint32_t i = 0; i < n; i++)
        if (positions[i] < 0)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_query_stats: position %d of query %u is negative",
                             positions[i], i);
    for (size_t i = 0; i < (size_t)n * q_heads * head_dim; i++)
        if (!isfinite(q[i]))
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_query_stats: query value %zu is not finite", i);
    /* sums in double, then one division: the mean of n queries does not depend on their order
     * beyond rounding to float once */
    double *sum = calloc((size_t)q_heads * head_dim * 3 / 2, sizeof *sum);
    if (!sum)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_query_stats: out of memory");
    double *mag = sum + (size_t)q_heads * head_dim;
    float x[256];
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t h = 0; h < q_heads; h++) {
            memcpy(x, q + ((size_t)i * q_heads + h) * head_dim, head_dim * sizeof *x);
            skv_ref_rope_rotate(rope, head_dim, -(double)positions[i], x);
            for (uint32_t j = 0; j < head_dim; j++)
                sum[(size_t)h * head_dim + j] += x[j];
            for (uint32_t f = 0; f < head_dim / 2; f++) {
                uint32_t i0, i1;
                skv_ref_rope_pair(rope, head_dim, f, &i0, &i1);
                mag[(size_t)h * head_dim / 2 + f] += hypot(x[i0], x[i1]);
            }
        }
    for (size_t j = 0; j < (size_t)q_heads * head_dim; j++)
        mean[j] = (float)(sum[j] / n);
    for (size_t j = 0; j < (size_t)q_heads * head_dim / 2; j++)
        abs_pair[j] = (float)(mag[j] / n);
    free(sum);
    return SKV_OK;
}
