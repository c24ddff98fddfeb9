/* libFuzzer harness: the key/value file reader (skv_kvfile_open_memory, include/skv/skv.h).
 * An input the reader accepts must be exactly as long as its header says, every tensor of
 * every layer must read back (whole and in part), reads past a tensor must be refused, and
 * a float32 file written again from what was read must equal the input byte for byte. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "skv/skv.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    skv_kvfile *f = NULL;
    if (skv_kvfile_open_memory(data, size, &f) != SKV_OK) {
        CHECK(f == NULL && skv_last_error()[0]);
        return 0;
    }
    skv_kvfile_info in = {.struct_size = sizeof in};
    CHECK(skv_kvfile_get_info(f, &in) == SKV_OK && in.file_bytes == size);
    const size_t es = in.dtype == SKV_F16 ? 2 : 4;
    const size_t kv_row = (size_t)in.kv_heads * in.head_dim, q_row = (size_t)in.q_heads * in.head_dim;
    const size_t kv = (size_t)in.tokens * kv_row, nq = (size_t)in.n_queries * q_row, nw = (size_t)in.n_window * q_row;
    const size_t floats = (size_t)in.layers * (2 * kv + nq + nw);
    CHECK(floats * es + 4 * (in.version == 2 ? 12 : 9) == size); /* the header's sizes are the file's */
    float *k = malloc(in.layers * kv * 4), *v = malloc(in.layers * kv * 4), *q = malloc(in.layers * nq * 4);
    float *w = nw ? malloc(in.layers * nw * 4) : NULL;
    CHECK(k && v && q && (w || !nw));
    for (uint32_t l = 0; l < in.layers; l++) {
        CHECK(skv_kvfile_read(f, SKV_KVFILE_KEYS, l, 0, in.tokens, k + l * kv) == SKV_OK);
        CHECK(skv_kvfile_read(f, SKV_KVFILE_VALUES, l, 0, in.tokens, v + l * kv) == SKV_OK);
        CHECK(skv_kvfile_read(f, SKV_KVFILE_QUERIES, l, 0, in.n_queries, q + l * nq) == SKV_OK);
        if (nw)
            CHECK(skv_kvfile_read(f, SKV_KVFILE_WINDOW, l, 0, in.n_window, w + l * nw) == SKV_OK);
        /* a part of the keys: the same floats (compared as bits: NaN payloads survive) */
        const uint32_t a = in.tokens / 2;
        float *part = malloc((in.tokens - a) * kv_row * 4 + 4);
        CHECK(part && skv_kvfile_read(f, SKV_KVFILE_KEYS, l, a, in.tokens - a, part) == SKV_OK);
        CHECK(memcmp(part, k + l * kv + a * kv_row, (in.tokens - a) * kv_row * 4) == 0);
        free(part);
        float one;
        CHECK(skv_kvfile_read(f, SKV_KVFILE_VALUES, l, in.tokens, 1, &one) == SKV_ERR_INVALID_ARG);
        CHECK(skv_kvfile_read(f, SKV_KVFILE_WINDOW, l, in.n_window, 1, &one) == SKV_ERR_INVALID_ARG);
    }
    float one;
    CHECK(skv_kvfile_read(f, SKV_KVFILE_KEYS, in.layers, 0, 1, &one) == SKV_ERR_INVALID_ARG);
    if (in.dtype == SKV_F32) {
        unsigned char *again = malloc(size);
        size_t n = 0;
        CHECK(again && skv_kvfile_write_memory(&in, k, v, q, w, again, size, &n) == SKV_OK && n == size);
        CHECK(memcmp(again, data, size) == 0);
        free(again);
    }
    free(k), free(v), free(q), free(w);
    skv_kvfile_close(f);
    return 0;
}
