/* C references of the OpenCL kernels: each kernel in cl/ has its twin here, and a test
 * holds the two equal. Internal, but exported from the library for the test suites
 * (prefix skv_ref_). */
#ifndef SKV_REF_H
#define SKV_REF_H

#include <stddef.h>
#include <stdint.h>

#include "skv/skv.h"

/* cl/stream_read.cl: out[g] = XOR of work-item g's 16-byte words folded to 32 bits;
 * item g reads words g, g + n_items, ... (strided) or the g-th run of
 * ceil(n_words / n_items) words (blocked). `words` holds 4 * n_words uint32. */
SKV_API void skv_ref_stream_read(const uint32_t *words, uint64_t n_words, size_t n_items, int blocked,
                                 uint32_t *out);

/* Conversions with the kernels' rounding (round to nearest even). */
SKV_API uint16_t skv_ref_f32_to_f16(float f);
SKV_API float skv_ref_f16_to_f32(uint16_t h);
SKV_API uint16_t skv_ref_f32_to_bf16(float f);
SKV_API float skv_ref_bf16_to_f32(uint16_t b);
/* Element `index` of an array of `dtype`, as float. */
SKV_API float skv_ref_load(skv_dtype dtype, const void *base, size_t index);

/* The F16 page (cl/append_f16.cl writes it, cl/decode_f16.cl reads it): keys
 * [D/8][P][8] halves, values [P][D] halves, positions int32[P]. */
SKV_API size_t skv_ref_f16_key_index(uint32_t page_tokens, uint32_t slot, uint32_t dim);
SKV_API void skv_ref_f16_page_write(void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                                    const float *k, const float *v, int32_t position);
SKV_API void skv_ref_f16_page_read(const void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                                   float *k, float *v, int32_t *position);

/* Exact decode attention for one query: q[q_heads][D], k and v [n_tokens][kv_heads][D],
 * out[q_heads][D] in double. Returns 0, or -1 on bad sizes or out of memory. */
SKV_API int skv_ref_attention_decode(const float *q, const float *k, const float *v, uint64_t n_tokens,
                                     uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, float scale,
                                     double *out);

#endif /* SKV_REF_H */
