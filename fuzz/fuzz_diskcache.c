/* libFuzzer harness: the program binary cache's entry reader (skvi_cache_entry_parse, the
 * validation skvi_cache_read applies to a file). An entry it accepts must carry the key it
 * was asked for and a payload inside the input whose hash the header names. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "skv_internal.h"
#include "fuzz_check.h"

#define KEY "0123456789abcdef0123456789abcdef"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly `size` bytes at an arbitrary alignment (the header is read with memcpy) */
    unsigned char *copy = malloc(size + 1);
    CHECK(copy);
    memcpy(copy + 1, data, size);
    const unsigned char *payload = NULL;
    size_t n = 0;
    if (skvi_cache_entry_parse(copy + 1, size, KEY, &payload, &n)) {
        CHECK(n > 0 && payload > copy + 1 && payload + n == copy + 1 + size);
        CHECK(memcmp(copy + 1 + 16, KEY, 32) == 0);
    }
    free(copy);
    return 0;
}
