/* Content hashes for program-cache keys and cache-entry checksums (xxHash's XXH3). */
#include <stdio.h>
#include <xxhash.h>

#include "skv_internal.h"

void skvi_hash128_hex(const void *data, size_t len, char out[33])
{
    XXH128_hash_t d = XXH3_128bits(data, len);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)d.high64, (unsigned long long)d.low64);
}

uint64_t skvi_hash64(const void *data, size_t len) { return XXH3_64bits(data, len); }
