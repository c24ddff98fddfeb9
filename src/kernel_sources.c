/* Lookup of the kernel sources embedded from cl/ at build time. */
#include <string.h>

#include "skv_internal.h"

const skvi_kernel_source *skvi_kernel_source_find(const char *name)
{
    for (size_t i = 0; i < skvi_kernel_source_count; i++)
        if (strcmp(skvi_kernel_sources[i].name, name) == 0)
            return &skvi_kernel_sources[i];
    return NULL;
}
