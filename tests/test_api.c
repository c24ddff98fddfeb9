/* Public API foundations: version, status strings, and every public function's answer
 * to NULL or invalid arguments (a clear status and message, never a crash). */
#include "test_util.h"
#include "skv/skv_cl.h"

static void test_version(void **state)
{
    (void)state;
    assert_int_equal(skv_version(), SKV_VERSION_NUMBER);
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", SKV_VERSION_MAJOR, SKV_VERSION_MINOR, SKV_VERSION_PATCH);
    assert_string_equal(skv_version_string(), expect);
}

static void test_status_strings(void **state)
{
    (void)state;
    /* Stable values: these numbers are ABI. */
    assert_int_equal(SKV_OK, 0);
    assert_int_equal(SKV_ERR_INVALID_ARG, 1);
    assert_int_equal(SKV_ERR_OUT_OF_MEMORY, 2);
    assert_int_equal(SKV_ERR_DEVICE_OUT_OF_MEMORY, 3);
    assert_int_equal(SKV_ERR_NO_DEVICE, 4);
    assert_int_equal(SKV_ERR_OPENCL, 5);
    assert_int_equal(SKV_ERR_BUILD, 6);
    assert_int_equal(SKV_ERR_UNSUPPORTED, 7);
    assert_int_equal(SKV_ERR_IO, 8);
    assert_int_equal(SKV_ERR_INTERNAL, 9);
    for (int s = 0; s <= SKV_ERR_INTERNAL; s++) {
        const char *str = skv_status_str((skv_status)s);
        assert_non_null(str);
        assert_true(strlen(str) > 1);
        assert_string_not_equal(str, "unknown status");
        for (int t = 0; t < s; t++)
            assert_string_not_equal(str, skv_status_str((skv_status)t));
    }
    assert_string_equal(skv_status_str((skv_status)1234), "unknown status");
    assert_string_equal(skv_vendor_class_str(SKV_VENDOR_NVIDIA), "nvidia");
    assert_string_equal(skv_vendor_class_str((skv_vendor_class)99), "invalid");
    assert_string_equal(skv_subgroups_str(SKV_SUBGROUPS_INTEL), "cl_intel_subgroups");
    assert_string_equal(skv_subgroups_str((skv_subgroups)99), "invalid");
}

/* An error names the function; success clears the thread's last error. */
static void expect_invalid(skv_status st, const char *fn)
{
    assert_int_equal(st, SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), fn));
}

static void test_null_arguments(void **state)
{
    (void)state;
    skv_device_profile prof;
    expect_invalid(skv_devices_list(NULL, 0, NULL), "skv_devices_list");
    expect_invalid(skv_devices_list(NULL, 3, &(size_t){0}), "skv_devices_list");
    expect_invalid(skv_device_select(NULL, NULL), "skv_device_select");
    expect_invalid(skv_context_create(NULL, NULL), "skv_context_create");
    expect_invalid(skv_context_create_cl(NULL, NULL, NULL, NULL, NULL), "skv_context_create_cl");
    skv_context *ctx = (skv_context *)0x1;
    expect_invalid(skv_context_create_cl(NULL, NULL, NULL, NULL, &ctx), "skv_context_create_cl");
    assert_null(ctx); /* out is cleared on failure */
    expect_invalid(skv_context_device(NULL, &prof), "skv_context_device");
    expect_invalid(skv_context_prepare(NULL), "skv_context_prepare");
    skv_context_stats stats = {.struct_size = sizeof stats};
    expect_invalid(skv_context_get_stats(NULL, &stats), "skv_context_get_stats");
    expect_invalid(skv_context_cl_objects(NULL, NULL, NULL, NULL, NULL), "skv_context_cl_objects");
    expect_invalid(skv_measure_read_bandwidth(NULL, 1 << 20, 3, &(double){0}), "skv_measure_read_bandwidth");
    assert_non_null(skv_context_last_error(NULL));
    skv_context_destroy(NULL); /* accepted */
    skv_context_desc_init(NULL); /* accepted */

    /* Success clears the last error. */
    size_t n = 0;
    assert_ok(skv_devices_list(NULL, 0, &n));
    assert_string_equal(skv_last_error(), "");
}

static void test_bad_descriptors(void **state)
{
    (void)state;
    skv_context *ctx = (skv_context *)0x1;
    skv_context_desc desc;
    skv_context_desc_init(&desc);
    assert_int_equal(desc.struct_size, sizeof desc);
    desc.struct_size = sizeof desc - 8;
    expect_invalid(skv_context_create(&desc, &ctx), "struct_size");
    assert_null(ctx);
    desc.struct_size = 0;
    expect_invalid(skv_context_create(&desc, &ctx), "skv_context_create");

    skv_allocator half = {.alloc = counting_alloc, .free = NULL};
    skv_context_desc_init(&desc);
    desc.allocator = &half;
    expect_invalid(skv_context_create(&desc, &ctx), "allocator");

    skv_context_desc_init(&desc);
    desc.device = "not-a-device";
    assert_int_equal(skv_context_create(&desc, &ctx), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "not-a-device"));
    assert_null(ctx);
}

/* Arguments a valid context still rejects. */
static void test_context_arguments(void **state)
{
    (void)state;
    skv_context *ctx = NULL;
    assert_ok(skv_context_create(NULL, &ctx));
    skv_context_stats stats;
    memset(&stats, 0, sizeof stats); /* struct_size 0 */
    expect_invalid(skv_context_get_stats(ctx, &stats), "struct_size");
    assert_non_null(strstr(skv_context_last_error(ctx), "struct_size"));
    expect_invalid(skv_context_get_stats(ctx, NULL), "skv_context_get_stats");
    expect_invalid(skv_context_device(ctx, NULL), "skv_context_device");
    double gbps;
    expect_invalid(skv_measure_read_bandwidth(ctx, 1 << 20, 3, NULL), "skv_measure_read_bandwidth");
    expect_invalid(skv_measure_read_bandwidth(ctx, 8, 3, &gbps), "skv_measure_read_bandwidth");
    expect_invalid(skv_measure_read_bandwidth(ctx, 1 << 20, 0, &gbps), "skv_measure_read_bandwidth");
    /* A NULL out-pointer in skv_context_cl_objects means "not wanted". */
    cl_command_queue q = NULL;
    assert_ok(skv_context_cl_objects(ctx, NULL, NULL, &q, NULL));
    assert_non_null(q);
    skv_context_destroy(ctx);
}

/* A build-list context records what a cache would build for a GPU profile, compiles
 * none of it, and hands the records out whole. */
static void test_build_list(void **state)
{
    (void)state;
    skv_context *ctx = NULL;
    size_t count = 1;
    assert_ok(skv_context_create(NULL, &ctx));
    assert_ok(skv_context_build_list(ctx, &count));
    assert_int_equal(count, 0); /* a normal context records nothing */
    skv_context_destroy(ctx);

    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.build_list = "tpu";
    ctx = (skv_context *)0x1;
    expect_invalid(skv_context_create(&cd, &ctx), "expected nvidia, amd, intel or device");
    assert_null(ctx);

    cd.build_list = "amd";
    cd.disable_program_cache = 1;
    assert_ok(skv_context_create(&cd, &ctx));
    skv_device_profile prof;
    assert_ok(skv_context_device(ctx, &prof));
    assert_int_equal(prof.vendor_class, SKV_VENDOR_AMD);
    assert_true(prof.is_gpu);
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1;
    d.kv_heads = 2;
    d.q_heads = 6;
    d.head_dim = 128;
    d.page_tokens = 32;
    d.device_budget_bytes = 16u << 20;
    d.tiers = (1u << SKV_TIER_COUNT) - 1;
    d.retention = SKV_RETENTION_RDR;
    d.scorer = SKV_SCORER_KEYDIFF;
    d.budget_ratio = 0.5f;
    skv_cache *c = NULL;
    assert_ok(skv_cache_create(ctx, &d, &c));
    assert_ok(skv_context_build_list(ctx, &count));
    assert_true(count >= 10);
    int decode_ada = 0, encode = 0;
    for (size_t i = 0; i < count; i++) {
        skv_program_record r = {.struct_size = sizeof r};
        assert_ok(skv_context_build_record(ctx, i, &r));
        assert_non_null(strstr(r.options, "-cl-std=CL2.0 -DSKV_VENDOR_AMD=1"));
        assert_non_null(strstr(r.source, "#line 1 \"common.h\""));
        assert_non_null(strstr(r.source, "__kernel"));
        for (size_t j = 0; j < i; j++) { /* each (program, options) once */
            skv_program_record o = {.struct_size = sizeof o};
            assert_ok(skv_context_build_record(ctx, j, &o));
            assert_false(strcmp(o.name, r.name) == 0 && strcmp(o.options, r.options) == 0);
        }
        if (strcmp(r.name, "decode.h+decode_ada.h+decode_gpu.cl") == 0) {
            decode_ada++;
            assert_string_equal(r.kernels, "decode_gpu");
            assert_non_null(strstr(r.options, "-DD=128 -DP=32 -DG=3 -DTILE="));
        }
        if (strcmp(r.name, "ada_encode.cl") == 0 && strstr(r.kernels, "ada_encode"))
            encode++;
    }
    assert_int_equal(decode_ada, 3); /* a4v8, a3v4, a2v2 on the GPU schedule */
    assert_int_equal(encode, 3);
    skv_context_stats st = {.struct_size = sizeof st};
    assert_ok(skv_context_get_stats(ctx, &st));
    assert_int_equal(st.programs_built, 0);
    skv_program_record r = {.struct_size = sizeof r};
    expect_invalid(skv_context_build_record(ctx, count, &r), "the list holds");
    r.struct_size = 1;
    expect_invalid(skv_context_build_record(ctx, 0, &r), "struct_size");
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_list),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_bad_descriptors),
        cmocka_unit_test(test_context_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
