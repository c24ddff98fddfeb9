/* cl/stream_read.cl against its C reference (skv_ref_stream_read) on awkward sizes,
 * with poisoned outputs; and the bandwidth measurement built on it. */
#include "test_util.h"
#include "host_internal.h"
#include "skv_ref.h"

static skv_context *ctx;
TEST_KERNEL_SUITE_SETUP(ctx)

static void check_size(uint64_t n_words, size_t n_items, uint64_t seed)
{
    test_rng rng = {seed};
    uint32_t *words = malloc(n_words * 16);
    uint32_t *ref = malloc(n_items * 4), *got = malloc(n_items * 4);
    for (uint64_t i = 0; i < 4 * n_words; i++)
        words[i] = rng_u32(&rng);
    skv_ref_stream_read(words, n_words, n_items, skvi_stream_read_blocked(ctx), ref);

    cl_int e;
    cl_mem in = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n_words * 16, words, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_mem out = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, n_items * 4, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    unsigned poison = 0xDEADBEEFu;
    assert_int_equal(clEnqueueFillBuffer(ctx->queue, out, &poison, 4, 0, n_items * 4, 0, NULL, NULL), CL_SUCCESS);
    assert_ok(skvi_stream_read_enqueue(ctx, ctx->queue, in, n_words, n_items, out, NULL));
    assert_int_equal(clEnqueueReadBuffer(ctx->queue, out, CL_TRUE, 0, n_items * 4, got, 0, NULL, NULL), CL_SUCCESS);
    for (size_t g = 0; g < n_items; g++)
        if (got[g] != ref[g])
            fail_msg("n_words %llu n_items %zu: item %zu got %08x expected %08x",
                     (unsigned long long)n_words, n_items, g, got[g], ref[g]);
    clReleaseMemObject(in);
    clReleaseMemObject(out);
    free(words);
    free(ref);
    free(got);
}

static void test_kernel_equals_reference(void **state)
{
    (void)state;
    /* Word counts that are not multiples of the item count, item counts that are not
     * multiples of any work-group size, and items outnumbering words. */
    const uint64_t words[] = {1, 7, 1000, 4099, 65537};
    const size_t items[] = {1, 3, 129, 1000};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 4; j++)
            check_size(words[i], items[j], 0x9E3779B97F4A7C15ULL + i * 31 + j);
}

static void test_bandwidth(void **state)
{
    (void)state;
    double gbps = 0;
    assert_ok(skv_measure_read_bandwidth(ctx, 64u << 20, 3, &gbps));
    printf("read bandwidth: %.1f GB/s\n", gbps);
    assert_true(gbps > 0.1 && gbps < 100000.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_equals_reference),
        cmocka_unit_test(test_bandwidth),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
