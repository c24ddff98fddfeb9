/* Helpers shared by the cmocka suites. */
#ifndef SKV_TEST_UTIL_H
#define SKV_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "skv/skv.h"

#define SKV_TEST_SKIP 77 /* CTest's SKIP_RETURN_CODE */

/* Asserts a status, printing skv's message when it differs. */
#define assert_status(expr, expected)                                                        \
    do {                                                                                     \
        skv_status st_ = (expr);                                                             \
        if (st_ != (expected))                                                               \
            fail_msg("%s = %s (%s), expected %s", #expr, skv_status_str(st_), skv_last_error(), \
                     skv_status_str(expected));                                              \
    } while (0)
#define assert_ok(expr) assert_status(expr, SKV_OK)

/* The decode variants the kernel suites hold to the reference on any device: the GROUP
 * schedule, and the LANES schedule at each vector width, with awkward tiles and chunk
 * counts. */
static const skv_decode_params test_variants[] = {
    {SKV_SCHEDULE_GROUP, 16, 256, 4, 0},
    {SKV_SCHEDULE_LANES, 16, 256, 4, 0},
    {SKV_SCHEDULE_LANES, 8, 128, 3, 0},
    {SKV_SCHEDULE_LANES, 4, 64, 5, 2},
};
#define TEST_VARIANTS ((int)(sizeof test_variants / sizeof test_variants[0]))
static inline const char *test_variant_name(int i)
{
    static const char *const names[] = {"group", "lanes16", "lanes8", "lanes4"};
    return names[i];
}

/* A suite's arguments: none, "--only PATTERN" or "--skip PATTERN" (cmocka patterns, so
 * CTest can run parts of a suite, or some tests again with other build options). 0, or
 * 2 after a usage line. */
static inline int test_filter_args(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--only") == 0)
        cmocka_set_test_filter(argv[2]);
    else if (argc == 3 && strcmp(argv[1], "--skip") == 0)
        cmocka_set_skip_filter(argv[2]);
    else if (argc != 1) {
        fprintf(stderr, "usage: %s [--only PATTERN | --skip PATTERN]\n", argv[0]);
        return 2;
    }
    return 0;
}

/* Deterministic random numbers (xorshift64*), independent of libc. */
typedef struct test_rng {
    uint64_t s;
} test_rng;

static inline uint64_t rng_u64(test_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}
static inline uint32_t rng_u32(test_rng *r) { return (uint32_t)(rng_u64(r) >> 32); }
static inline double rng_uniform(test_rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

/* A standard normal number (Box-Muller). */
static inline float test_gauss(test_rng *r)
{
    double u = rng_uniform(r) + 1e-12, v = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* An allocator that counts live blocks and fails the allocation numbered fail_at
 * (1-based; 0 = never). */
typedef struct counting_allocator {
    long live;
    long calls;
    long fail_at;
} counting_allocator;

static inline void *counting_alloc(void *user, size_t size)
{
    counting_allocator *c = user;
    c->calls++;
    if (c->fail_at && c->calls == c->fail_at)
        return NULL;
    void *p = malloc(size);
    if (p)
        c->live++;
    return p;
}

static inline void counting_free(void *user, void *ptr)
{
    counting_allocator *c = user;
    if (ptr)
        c->live--;
    free(ptr);
}

/* A fresh empty folder under the build tree (or /tmp), as a malloc'ed path. */
static inline char *test_tmpdir(const char *tag)
{
    char *path = malloc(512);
    const char *base = getenv("SKV_TEST_TMP");
    snprintf(path, 512, "%s/skv-%s-XXXXXX", base && base[0] ? base : "/tmp", tag);
    extern char *mkdtemp(char *);
    return mkdtemp(path) ? path : NULL;
}


/* setup/teardown of a kernel suite: `var` is a context on $SKV_TEST_DEVICE, allocating
 * through `allocator` (NULL: malloc); teardown fails when `leaked` holds. */
#define TEST_SUITE_SETUP_WITH(var, allocator, leaked)                                      \
    static int setup(void **state)                                                         \
    {                                                                                      \
        (void)state;                                                                       \
        var = test_context_with(allocator);                                                \
        return 0;                                                                          \
    }                                                                                      \
    static int teardown(void **state)                                                      \
    {                                                                                      \
        (void)state;                                                                       \
        skv_context_destroy(var);                                                          \
        return (leaked) ? -1 : 0;                                                          \
    }
#define TEST_KERNEL_SUITE_SETUP(var) TEST_SUITE_SETUP_WITH(var, NULL, 0)

/* The device a kernel suite runs on: $SKV_TEST_DEVICE (default "cpu"). When no such
 * device exists the whole suite is skipped (exit 77), e.g. the GPU run on a CPU-only
 * machine. Returns a context with profiling on, allocating through `allocator` (NULL:
 * malloc). */
static inline skv_context *test_context_with(const skv_allocator *allocator)
{
    const char *sel = getenv("SKV_TEST_DEVICE");
    if (!sel || !sel[0])
        sel = "cpu";
    skv_device_profile p;
    if (skv_device_select(sel, &p) == SKV_ERR_NO_DEVICE) {
        printf("skipped: no '%s' device (%s)\n", sel, skv_last_error());
        exit(SKV_TEST_SKIP);
    }
    skv_context_desc d;
    skv_context_desc_init(&d);
    d.device = sel;
    d.enable_profiling = 1;
    d.allocator = allocator;
    skv_context *ctx = NULL;
    if (skv_context_create(&d, &ctx) != SKV_OK) {
        fprintf(stderr, "context on '%s' failed: %s\n", sel, skv_last_error());
        exit(1);
    }
    printf("device: %s\n", p.name);
    return ctx;
}

/* setup/teardown of a suite whose context allocates through counting_allocator `counter`
 * (fault injection): teardown fails if any allocation is still live. */
#define TEST_COUNTING_SUITE_SETUP(var, counter)                                            \
    static skv_allocator var##_counting = {counting_alloc, counting_free, &counter};       \
    TEST_SUITE_SETUP_WITH(var, &var##_counting, counter.live != 0)

#endif
