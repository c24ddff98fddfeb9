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

/* ADA page (cl/ada_encode.cl writes it, cl/decode_ada.h reads it; cl/layout.h): key words
 * [key_words][P] uint32 (structure of arrays), norms [P] fp16, values [P][value bytes],
 * positions int32[P]. */
void skv_ref_ada_page_write(void *page, uint32_t page_tokens, uint32_t key_words, uint32_t value_bytes,
                            uint32_t slot, const uint32_t *words, uint16_t norm, const uint8_t *values,
                            int32_t position)
{
    unsigned char *base = page;
    uint32_t *kw = page;
    for (uint32_t w = 0; w < key_words; w++)
        kw[(size_t)w * page_tokens + slot] = words[w];
    memcpy(base + (size_t)key_words * page_tokens * 4 + slot * 2, &norm, 2);
    size_t vo = (size_t)key_words * page_tokens * 4 + (size_t)page_tokens * 2;
    memcpy(base + vo + (size_t)slot * value_bytes, values, value_bytes);
    memcpy(base + vo + (size_t)page_tokens * value_bytes + slot * 4, &position, 4);
}
