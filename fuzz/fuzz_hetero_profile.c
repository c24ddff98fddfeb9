/* libFuzzer harness: the HeteroCache profile loader (skvi_hetero_profile_parse, the bytes
 * step of skv_hetero_profile_load). A profile it accepts must hold its invariants: every
 * head in range, a satellite's pivot a pivot of its layer, every other head its own pivot,
 * stabilities in [0, 1]. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    skv_hetero_profile *p = NULL;
    if (skvi_hetero_profile_parse((const char *)data, size, "fuzz", &p) != SKV_OK) {
        CHECK(p == NULL && skv_last_error()[0]);
        return 0;
    }
    uint32_t layers = 0, heads = 0;
    CHECK(skv_hetero_profile_shape(p, &layers, &heads) == SKV_OK && layers && heads);
    for (uint32_t l = 0; l < layers; l++)
        for (uint32_t h = 0; h < heads; h++) {
            skv_head_category c, pc;
            uint32_t pv;
            float s;
            CHECK(skv_hetero_profile_head(p, l, h, &c, &pv, &s) == SKV_OK);
            CHECK((unsigned)c <= SKV_HEAD_VOLATILE && s >= 0.0f && s <= 1.0f);
            if (c == SKV_HEAD_SATELLITE)
                CHECK(skv_hetero_profile_head(p, l, pv, &pc, NULL, NULL) == SKV_OK && pc == SKV_HEAD_PIVOT);
            else
                CHECK(pv == h);
        }
    CHECK(skv_hetero_profile_head(p, layers, 0, NULL, NULL, NULL) == SKV_ERR_INVALID_ARG);
    skv_hetero_profile_free(p);
    return 0;
}
