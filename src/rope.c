/* RoPE's pair layout and frequencies, and TriAttention's effective query (DESIGN.md §7),
 * the library's (host/score.c uploads the effective queries the score kernel reads). The
 * C references of the score (the explicit mean over future offsets with RoPE inverted,
 * and the collapsed form the kernels compute) are src/ref/ref_rope.c. */
#include <math.h>

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
