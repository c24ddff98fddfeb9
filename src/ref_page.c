/* C reference of the F16 page layout written by cl/append_f16.cl and read by
 * cl/decode_f16.cl: keys [D/8][P][8 halves] (vLLM's layout: a work-item per slot reads
 * 16 bytes while its neighbours read the neighbouring slots'), values [P][D] halves,
 * then the slots' original positions as int32[P]. */
#include <string.h>

#include "skv_ref.h"

size_t skv_ref_f16_key_index(uint32_t page_tokens, uint32_t slot, uint32_t dim)
{
    return ((size_t)(dim / 8) * page_tokens + slot) * 8 + dim % 8;
}

void skv_ref_f16_page_write(void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                            const float *k, const float *v, int32_t position)
{
    uint16_t *keys = page;
    uint16_t *values = keys + (size_t)page_tokens * head_dim;
    for (uint32_t d = 0; d < head_dim; d++) {
        keys[skv_ref_f16_key_index(page_tokens, slot, d)] = skv_ref_f32_to_f16(k[d]);
        values[(size_t)slot * head_dim + d] = skv_ref_f32_to_f16(v[d]);
    }
    int32_t *positions = (int32_t *)(values + (size_t)page_tokens * head_dim);
    memcpy(&positions[slot], &position, sizeof position);
}

void skv_ref_f16_page_read(const void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                           float *k, float *v, int32_t *position)
{
    const uint16_t *keys = page;
    const uint16_t *values = keys + (size_t)page_tokens * head_dim;
    for (uint32_t d = 0; d < head_dim; d++) {
        k[d] = skv_ref_f16_to_f32(keys[skv_ref_f16_key_index(page_tokens, slot, d)]);
        v[d] = skv_ref_f16_to_f32(values[(size_t)slot * head_dim + d]);
    }
    const int32_t *positions = (const int32_t *)(values + (size_t)page_tokens * head_dim);
    memcpy(position, &positions[slot], sizeof *position);
}
