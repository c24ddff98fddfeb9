/* What every harness shares: CHECK(x) stops the run with a crash (an input libFuzzer
 * keeps) when a property of what a parser accepted does not hold; and the entry point's
 * prototype. */
#ifndef SKV_FUZZ_CHECK_H
#define SKV_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>

#define CHECK(x)                                                                                                   \
    do {                                                                                                           \
        if (!(x))                                                                                                  \
            __builtin_trap();                                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
