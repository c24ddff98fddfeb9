/* C references of the OpenCL kernels: each kernel in cl/ has its twin here, and a test
 * holds the two equal. Internal, but exported from the library for the test suites
 * (prefix skv_ref_). */
#ifndef SKV_REF_H
#define SKV_REF_H

#include <stddef.h>
#include <stdint.h>

#include "skv/skv.h"

/* cl/stream_read.cl: out[g] = XOR of the 16-byte words g, g + n_items, ... folded to
 * 32 bits. `words` holds 4 * n_words uint32. */
SKV_API void skv_ref_stream_read(const uint32_t *words, uint64_t n_words, size_t n_items, uint32_t *out);

#endif /* SKV_REF_H */
