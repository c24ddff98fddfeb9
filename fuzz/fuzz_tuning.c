/* libFuzzer harness: the tuning database parser (skvi_tuning_parse, host/tuning.c), for a
 * CPU device whose name, driver and architecture the seeds name. Every entry it keeps must
 * name the device and hold parameters that pass the partial check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host_internal.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static skv_device_profile prof;
    if (!prof.name[0]) {
        strcpy(prof.name, "pthread-haswell");
        strcpy(prof.driver_version, "3.1");
        strcpy(prof.architecture, "haswell");
        prof.vendor_class = SKV_VENDOR_CPU;
        prof.cpu_vector_floats = 8;
    }
    char *text = malloc(size + 1); /* the parser terminates it */
    CHECK(text);
    memcpy(text, data, size);
    skvi_tuning_entry *entries = NULL;
    size_t count = 0;
    char why[240] = "";
    if (skvi_tuning_parse(NULL, &prof, text, size, &entries, &count, why, sizeof why)) {
        CHECK(count == 0 || entries);
        for (size_t i = 0; i < count; i++) {
            char w[160];
            CHECK(entries[i].level >= SKV_TUNING_VENDOR && entries[i].level <= SKV_TUNING_EXACT);
            CHECK(entries[i].tier >= -1 && entries[i].tier < SKV_TIER_COUNT);
            CHECK(skvi_decode_params_check(&entries[i].p, 1, w, sizeof w));
            CHECK(memchr(entries[i].name, 0, sizeof entries[i].name));
        }
    } else {
        CHECK(!entries && count == 0 && why[0]);
    }
    skvi_free(NULL, entries);
    free(text);
    return 0;
}
