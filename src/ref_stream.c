/* C reference of cl/stream_read.cl (same partition of words over work-items). */
#include "skv_ref.h"

void skv_ref_stream_read(const uint32_t *words, uint64_t n_words, size_t n_items, uint32_t *out)
{
    for (size_t g = 0; g < n_items; g++) {
        uint32_t acc = 0;
        for (uint64_t i = g; i < n_words; i += n_items)
            acc ^= words[4 * i] ^ words[4 * i + 1] ^ words[4 * i + 2] ^ words[4 * i + 3];
        out[g] = acc;
    }
}
