/* ggml's reference quantisers for one block of 32 values, as the tests write GGUF files
 * with them (test_gguf, test_llama): blk receives the block's bytes, expect the values it
 * dequantises to. */
#ifndef SKV_TESTS_GGUF_QUANT_H
#define SKV_TESTS_GGUF_QUANT_H

#include <math.h>
#include <stdint.h>

#include "gguf.h"

/* Expected dequantised values, block by block as ggml's reference quantisers would make them. */
static inline void quant_q8_0(const float *x, uint8_t *blk, float *expect)
{
    float amax = 0;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const uint16_t dh = gguf_f32_to_f16(amax / 127.0f);
    const float d = gguf_f16_to_f32(dh), id = d ? 1.0f / d : 0;
    blk[0] = (uint8_t)dh, blk[1] = (uint8_t)(dh >> 8);
    for (int j = 0; j < 32; j++) {
        const int q = (int)lrintf(x[j] * id);
        blk[2 + j] = (uint8_t)(int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
        expect[j] = d * (float)(int8_t)blk[2 + j];
    }
}

static inline void quant_q4_1(const float *x, uint8_t *blk, float *expect)
{
    float lo = x[0], hi = x[0];
    for (int j = 1; j < 32; j++)
        lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
    const uint16_t dh = gguf_f32_to_f16((hi - lo) / 15.0f), mh = gguf_f32_to_f16(lo);
    const float d = gguf_f16_to_f32(dh), m = gguf_f16_to_f32(mh), id = d ? 1.0f / d : 0;
    blk[0] = (uint8_t)dh, blk[1] = (uint8_t)(dh >> 8), blk[2] = (uint8_t)mh, blk[3] = (uint8_t)(mh >> 8);
    int q[32];
    for (int j = 0; j < 32; j++) {
        int v = (int)lrintf((x[j] - m) * id);
        q[j] = v < 0 ? 0 : v > 15 ? 15 : v;
        expect[j] = d * (float)q[j] + m;
    }
    for (int j = 0; j < 16; j++) /* value j in the low nibble, value j + 16 in the high one */
        blk[4 + j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

#endif
