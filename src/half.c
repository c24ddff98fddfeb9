/* fp16 and bf16 conversions on the host, rounding as the kernels do (to nearest even;
 * vstore_half_rte), so C references are bit-identical to device pages. */
#include <string.h>

#include "skv_ref.h"

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t skv_ref_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xFFu;
    uint32_t man = x & 0x7FFFFFu;
    if (exp == 0xFFu) /* inf or NaN (NaN stays quiet NaN) */
        return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7C00u); /* overflow to inf */
    if (e <= 0) {                          /* subnormal half, or zero */
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half_man = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_man & 1u)))
            half_man++;
        return (uint16_t)(sign | half_man);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent: correct, up to inf */
    return (uint16_t)h;
}

/* Directed rounding: the half nearest to f on the side of `up` (1: toward +inf, 0:
 * toward -inf), from the round-to-nearest result and an exact comparison. */
static uint16_t f16_directed(float f, int up)
{
    uint16_t h = skv_ref_f32_to_f16(f);
    float back = skv_ref_f16_to_f32(h);
    if (back != back || back == f)
        return h;
    int away = (back < f) == up; /* step in the wanted direction */
    if (!away)
        return h;
    if ((h & 0x7FFFu) == 0) /* +-0 -> smallest subnormal of f's sign */
        return (uint16_t)(f > 0 ? 0x0001u : 0x8001u);
    /* one step away from zero when moving with the sign, toward zero otherwise */
    int with_sign = (f > 0) == up;
    return (uint16_t)(with_sign ? h + 1 : h - 1);
}

uint16_t skv_ref_f32_to_f16_rtn(float f) { return f16_directed(f, 0); }
uint16_t skv_ref_f32_to_f16_rtp(float f) { return f16_directed(f, 1); }

float skv_ref_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0) {
        if (man == 0)
            return bits_f32(sign);
        /* subnormal: normalise */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        return bits_f32(sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13));
    }
    if (exp == 31)
        return bits_f32(sign | 0x7F800000u | (man << 13));
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

float skv_ref_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t skv_ref_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7F800000u) == 0x7F800000u && (x & 0x7FFFFFu))
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float skv_ref_load(skv_dtype dtype, const void *base, size_t index)
{
    switch (dtype) {
    case SKV_F16: return skv_ref_f16_to_f32(((const uint16_t *)base)[index]);
    case SKV_BF16: return skv_ref_bf16_to_f32(((const uint16_t *)base)[index]);
    case SKV_F32: break;
    }
    return ((const float *)base)[index];
}
