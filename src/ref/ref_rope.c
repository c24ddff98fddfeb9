/* RoPE as the model applied it, and TriAttention's score (DESIGN.md §7), the C
 * references: the explicit mean over future offsets with RoPE inverted, and the collapsed
 * form cl/score.cl computes (one "effective query" dot product with the post-RoPE key;
 * the effective query is the library's, src/rope.c). */
#include <math.h>

#include "skv_ref.h"

double skv_ref_triattention_explicit(const skv_rope_desc *r, uint32_t d, const float *q_mean, const float *q_abs,
                                     const float *k_post, int32_t position, int64_t t0)
{
    float k[256];
    for (uint32_t i = 0; i < d; i++)
        k[i] = k_post[i];
    skv_ref_rope_rotate(r, d, -(double)position, k); /* pre-RoPE key */
    double sum = 0;
    for (int o = 0; o < SKV_REF_TRI_OFFSETS; o++) {
        double off = (double)(1 << o), s = 0;
        for (uint32_t f = 0; f < d / 2; f++) {
            uint32_t i0, i1;
            skv_ref_rope_pair(r, d, f, &i0, &i1);
            double qa = hypot(q_mean[i0], q_mean[i1]), ka = hypot(k[i0], k[i1]);
            double phase = skv_ref_rope_omega(r, d, f) * ((double)t0 + off - position) + atan2(q_mean[i1], q_mean[i0]) -
                           atan2(k[i1], k[i0]);
            s += qa * ka * cos(phase);
        }
        sum += s;
    }
    double norm_term = 0;
    for (uint32_t f = 0; f < d / 2; f++) {
        uint32_t i0, i1;
        skv_ref_rope_pair(r, d, f, &i0, &i1);
        norm_term += (q_abs[f] - hypot(q_mean[i0], q_mean[i1])) * hypot(k[i0], k[i1]);
    }
    return sum / SKV_REF_TRI_OFFSETS + norm_term;
}

double skv_ref_triattention(const skv_rope_desc *r, uint32_t d, const float *effective, const float *k_post)
{
    double s = 0;
    for (uint32_t f = 0; f < d / 2; f++) {
        uint32_t i0, i1;
        skv_ref_rope_pair(r, d, f, &i0, &i1);
        double kr = k_post[i0], ki = k_post[i1];
        /* Re(Q_f conj(k_f)) + (a_f - |qbar_f|) |k_f| */
        s += effective[3 * f] * kr + effective[3 * f + 1] * ki + effective[3 * f + 2] * sqrt(kr * kr + ki * ki);
    }
    return s;
}
