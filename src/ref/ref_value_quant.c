/* Quantised values, the C reference (DESIGN.md §4): per token, groups of `group`
 * values as `bits`-bit codes with an fp16 scale and min, v^ = min + q * scale. Like the
 * key codes, the encoding is bit-exact with the kernels: min rounds toward -inf and
 * scale toward +inf (so the levels cover the group), and q is decided by comparing v
 * with the midpoints min + (k - 1/2) scale, whatever the first estimate. */
#include <string.h>

#include "skv_ref.h"

uint32_t skv_ref_value_bytes(uint32_t head_dim, unsigned bits, unsigned group)
{
    return head_dim * bits / 8 + head_dim / group * 4;
}

/* q in 0..levels for v: the number of midpoints at or below v. */
static unsigned quantise(float v, float mn, float sc, unsigned levels, float inv)
{
    if (sc == 0.0f)
        return 0;
    float e = (v - mn) * inv; /* estimate only; the comparisons below decide */
    int q = e <= 0.0f ? 0 : e >= (float)levels ? (int)levels : (int)(e + 0.5f);
    while (q < (int)levels && v >= mn + ((float)(q + 1) - 0.5f) * sc)
        q++;
    while (q > 0 && v < mn + ((float)q - 0.5f) * sc)
        q--;
    return (unsigned)q;
}

void skv_ref_value_encode(const float *v, uint32_t head_dim, unsigned bits, unsigned group, uint8_t *out)
{
    const unsigned levels = (1u << bits) - 1;
    uint8_t *codes = out;
    uint16_t *params = (uint16_t *)(out + head_dim * bits / 8);
    memset(codes, 0, head_dim * bits / 8);
    for (uint32_t g0 = 0; g0 < head_dim; g0 += group) {
        float mn = v[g0], mx = v[g0];
        for (uint32_t i = g0 + 1; i < g0 + group; i++) {
            mn = v[i] < mn ? v[i] : mn;
            mx = v[i] > mx ? v[i] : mx;
        }
        uint16_t mn_h = skv_ref_f32_to_f16_rtn(mn);
        float mnf = skv_ref_f16_to_f32(mn_h);
        uint16_t sc_h = skv_ref_f32_to_f16_rtp((mx - mnf) * (1.0f / (float)levels));
        float scf = skv_ref_f16_to_f32(sc_h);
        float inv = scf > 0.0f ? 1.0f / scf : 0.0f;
        for (uint32_t i = g0; i < g0 + group; i++) {
            unsigned q = quantise(v[i], mnf, scf, levels, inv);
            codes[i * bits / 8] |= (uint8_t)(q << (i * bits % 8));
        }
        params[2 * (g0 / group)] = sc_h;
        params[2 * (g0 / group) + 1] = mn_h;
    }
}

void skv_ref_value_decode(const uint8_t *in, uint32_t head_dim, unsigned bits, unsigned group, float *v)
{
    const uint16_t *params = (const uint16_t *)(in + head_dim * bits / 8);
    for (uint32_t i = 0; i < head_dim; i++) {
        unsigned q = (in[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
        float sc = skv_ref_f16_to_f32(params[2 * (i / group)]), mn = skv_ref_f16_to_f32(params[2 * (i / group) + 1]);
        v[i] = mn + (float)q * sc;
    }
}
