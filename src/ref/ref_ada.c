/* ADA key codes (DESIGN.md §5), the C reference of cl/ada_encode.cl and the ADA decode:
 * an fp16 norm, and per pair of coordinates a Lloyd–Max radius code and a uniform angle
 * code; keys encoded and decoded; logits from codes and a query's lookup table. The
 * codebook, the transform and the tables are the library's (src/ada.c).
 *
 * Bit-exactness with the kernels: every coding decision is a comparison of exactly
 * rounded products and sums against the constant tables of skv_ref_ada_params (no atan2,
 * sqrt or division): the angle sector by signs of cross products with the sector
 * boundaries, the radius by rho^2 * d/2 against t_k^2 * n^2, the fp16 norm by the exact
 * squares of fp16 midpoints. Both sides build with contraction off (-ffp-contract=off
 * here, #pragma OPENCL FP_CONTRACT OFF in the kernels). */
#include <math.h>
#include <string.h>

#include "skv_ref.h"

/* fp16 code of sqrt(n2), rounded to nearest (ties to even) by exact comparisons. */
uint16_t skv_ref_ada_norm_code(float n2)
{
    uint16_t h = skv_ref_f32_to_f16(sqrtf(n2));
    if (h >= 0x7BFF)
        return 0x7BFF; /* clamp to the largest finite half */
    for (;;) { /* up while n2 is past the midpoint with the next half */
        float lo = skv_ref_f16_to_f32(h), hi = skv_ref_f16_to_f32((uint16_t)(h + 1));
        float mid = 0.5f * (lo + hi), mid2 = mid * mid; /* both exact */
        if (n2 > mid2 || (n2 == mid2 && (h & 1)))
            h++;
        else
            break;
    }
    while (h > 0) { /* down while n2 is before the midpoint with the previous half */
        float lo = skv_ref_f16_to_f32((uint16_t)(h - 1)), hi = skv_ref_f16_to_f32(h);
        float mid = 0.5f * (lo + hi), mid2 = mid * mid;
        if (n2 < mid2 || (n2 == mid2 && (h & 1)))
            h--;
        else
            break;
    }
    return h;
}

unsigned skv_ref_ada_angle_code(const skv_ref_ada_params *p, float x, float y)
{
    /* theta + pi is the angle of (-x, -y); the upper half-plane [0, pi) counts boundaries
     * directly, the lower one after another half turn, offset by S/2 sectors */
    const unsigned half = 1u << (p->angle_bits - 1);
    float u = -x, v = -y;
    unsigned base = 0;
    if (!(v > 0.0f || (v == 0.0f && u >= 0.0f))) {
        u = x;
        v = y;
        base = half;
    }
    unsigned count = 0;
    for (unsigned k = 1; k < half; k++) {
        float cross = p->bound_cos[k] * v - p->bound_sin[k] * u;
        count += cross >= 0.0f;
    }
    return base + count;
}

unsigned skv_ref_ada_radius_code(const skv_ref_ada_params *p, float x, float y, float norm2)
{
    float lhs = (x * x + y * y) * (float)(p->head_dim / 2); /* d/2 is a power of two: exact */
    unsigned r = 0;
    for (unsigned k = 0; k + 1 < (1u << p->radius_bits); k++)
        r += lhs >= p->radius_bound_sq[k] * norm2;
    return r;
}

void skv_ref_ada_encode_key(const skv_ref_ada_params *p, const int8_t *signs, const float *k, uint32_t *words,
                            uint16_t *norm_code)
{
    float y[256];
    skv_ref_ada_transform(p, signs, k, y);
    float n2 = 0.0f;
    for (uint32_t i = 0; i < p->head_dim; i++)
        n2 = n2 + y[i] * y[i];
    uint16_t nh = skv_ref_ada_norm_code(n2);
    float nf = skv_ref_f16_to_f32(nh), nf2 = nf * nf; /* exact */
    memset(words, 0, p->key_words * sizeof *words);
    for (uint32_t j = 0; j < p->head_dim / 2; j++) {
        unsigned code = skv_ref_ada_radius_code(p, y[2 * j], y[2 * j + 1], nf2) |
                        skv_ref_ada_angle_code(p, y[2 * j], y[2 * j + 1]) << p->radius_bits;
        uint32_t bit = j * p->pair_bits, w = bit / 32, sh = bit % 32;
        words[w] |= code << sh;
        if (sh + p->pair_bits > 32)
            words[w + 1] |= code >> (32 - sh);
    }
    *norm_code = nh;
}

unsigned skv_ref_ada_pair_code(const skv_ref_ada_params *p, const uint32_t *words, uint32_t j)
{
    uint32_t bit = j * p->pair_bits, w = bit / 32, sh = bit % 32;
    uint64_t two = words[w] | (sh + p->pair_bits > 32 ? (uint64_t)words[w + 1] << 32 : 0);
    return (unsigned)(two >> sh) & ((1u << p->pair_bits) - 1);
}

void skv_ref_ada_decode_key(const skv_ref_ada_params *p, const int8_t *signs, const uint32_t *words,
                            uint16_t norm_code, float *k)
{
    const uint32_t d = p->head_dim;
    float y[256];
    float n = skv_ref_f16_to_f32(norm_code), rho_scale = n * p->rho_scale;
    for (uint32_t j = 0; j < d / 2; j++) {
        unsigned code = skv_ref_ada_pair_code(p, words, j);
        unsigned r = code & ((1u << p->radius_bits) - 1), c = code >> p->radius_bits;
        float rho = p->radius[r] * rho_scale;
        y[2 * j] = rho * p->centre_cos[c];
        y[2 * j + 1] = rho * p->centre_sin[c];
    }
    /* the transform is its own inverse up to the signs: x = diag(s) H y / sqrt(d) */
    int8_t ones[256];
    memset(ones, 1, sizeof ones);
    float x[256];
    skv_ref_ada_transform(p, ones, y, x);
    for (uint32_t i = 0; i < d; i++)
        k[i] = signs[i] < 0 ? -x[i] : x[i];
}

float skv_ref_ada_logit(const skv_ref_ada_params *p, const float *table, const uint32_t *words, uint16_t norm_code)
{
    const unsigned S = 1u << p->angle_bits;
    float sum = 0.0f;
    for (uint32_t j = 0; j < p->head_dim / 2; j++) {
        unsigned code = skv_ref_ada_pair_code(p, words, j);
        sum += p->radius[code & ((1u << p->radius_bits) - 1)] * table[j * S + (code >> p->radius_bits)];
    }
    return skv_ref_f16_to_f32(norm_code) * sqrtf(2.0f / (float)p->head_dim) * sum;
}
