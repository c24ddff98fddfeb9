/* Host allocation through the user's allocator hook (malloc/free when none is given). */
#include <stdlib.h>
#include <string.h>

#include "skv_internal.h"

void *skvi_alloc(const skv_allocator *a, size_t size)
{
    if (size == 0)
        size = 1;
    return a ? a->alloc(a->user, size) : malloc(size);
}

void *skvi_calloc(const skv_allocator *a, size_t count, size_t size)
{
    size_t bytes;
    if (!skvi_mul_ok(count, size, &bytes))
        return NULL;
    void *p = skvi_alloc(a, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void skvi_free(const skv_allocator *a, void *ptr)
{
    if (!ptr)
        return;
    if (a)
        a->free(a->user, ptr);
    else
        free(ptr);
}

char *skvi_strdup(const skv_allocator *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = skvi_alloc(a, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

int skvi_array_reserve(const skv_allocator *a, void **array, size_t *cap, size_t used, size_t need, size_t size,
                       size_t first)
{
    if (need <= *cap)
        return 0;
    size_t grown = *cap ? *cap : first;
    while (grown < need)
        grown = grown > SIZE_MAX / 2 ? need : 2 * grown;
    void *p = skvi_calloc(a, grown, size);
    if (!p)
        return -1;
    if (used)
        memcpy(p, *array, used * size);
    skvi_free(a, *array);
    *array = p;
    *cap = grown;
    return 0;
}

int skvi_mul_ok(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}
