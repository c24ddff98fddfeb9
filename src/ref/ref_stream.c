/* C reference of cl/stream_read.cl (same partitions of words over work-items). */
#include "skv_ref.h"

void skv_ref_stream_read(const uint32_t *words, uint64_t n_words, size_t n_items, int blocked, uint32_t *out)
{
    uint64_t per = (n_words + n_items - 1) / n_items;
    for (size_t g = 0; g < n_items; g++) {
        uint32_t acc = 0;
        uint64_t begin = blocked ? g * per : g, step = blocked ? 1 : n_items;
        uint64_t end = blocked ? (g + 1) * per : n_words;
        if (end > n_words)
            end = n_words;
        for (uint64_t i = begin; i < end; i += step)
            acc ^= words[4 * i] ^ words[4 * i + 1] ^ words[4 * i + 2] ^ words[4 * i + 3];
        out[g] = acc;
    }
}
