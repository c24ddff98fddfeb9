/* Device discovery, profiles, and selection by API and by SKV_DEVICE (on PoCL here,
 * on whatever devices exist elsewhere). */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

static size_t list_all(skv_device_profile **out)
{
    size_t n = 0;
    assert_ok(skv_devices_list(NULL, 0, &n));
    *out = calloc(n ? n : 1, sizeof **out);
    size_t again = 0;
    assert_ok(skv_devices_list(*out, n, &again));
    assert_int_equal(again, n);
    return n;
}

static void test_discovery_and_profile(void **state)
{
    (void)state;
    skv_device_profile *devs;
    size_t n = list_all(&devs);
    assert_true(n >= 1); /* PoCL is a dependency: there is always a CPU device */
    int cpus = 0;
    for (size_t i = 0; i < n; i++) {
        const skv_device_profile *p = &devs[i];
        assert_true(strlen(p->name) > 0);
        assert_true(strlen(p->platform) > 0);
        assert_true(p->opencl_c_major >= 1);
        assert_true(p->compute_units >= 1);
        assert_true(p->local_mem_bytes >= 16 * 1024); /* OpenCL's minimum for a full profile */
        assert_true(p->global_mem_bytes > 0);
        assert_true(p->max_alloc_bytes > 0 && p->max_alloc_bytes <= p->global_mem_bytes);
        assert_true(p->max_work_group_size >= 1);
        assert_true(p->preferred_wg_multiple >= 1 && p->preferred_wg_multiple <= p->max_work_group_size);
        assert_true((unsigned)p->vendor_class <= SKV_VENDOR_CPU);
        if (p->vendor_class == SKV_VENDOR_CPU) {
            cpus++;
            assert_false(p->is_gpu);
        }
        if (strstr(p->platform, "Portable Computing Language")) {
            assert_int_equal(p->vendor_class, SKV_VENDOR_CPU);
            assert_true(p->fp64);
        }
        if (p->vendor_class == SKV_VENDOR_NVIDIA)
            assert_int_equal(p->subgroups, SKV_SUBGROUPS_NV_PTX);
        printf("device %u:%u %s [%s] OpenCL C %d.%d fp16=%d subgroups=%s cu=%u multiple=%zu\n",
               p->platform_index, p->device_index, p->name, skv_vendor_class_str(p->vendor_class),
               p->opencl_c_major, p->opencl_c_minor, p->fp16, skv_subgroups_str(p->subgroups),
               p->compute_units, p->preferred_wg_multiple);
    }
    assert_true(cpus >= 1);
    /* A short buffer gets the first profiles and the full count. */
    skv_device_profile one;
    size_t count = 0;
    assert_ok(skv_devices_list(&one, 1, &count));
    assert_int_equal(count, n);
    assert_string_equal(one.name, devs[0].name);
    free(devs);
}

static int same_device(const skv_device_profile *a, const skv_device_profile *b)
{
    return a->platform_index == b->platform_index && a->device_index == b->device_index;
}

static void test_selection(void **state)
{
    (void)state;
    skv_device_profile *devs;
    size_t n = list_all(&devs);
    skv_device_profile p;

    unsetenv("SKV_DEVICE");
    assert_ok(skv_device_select(NULL, &p));
    int any_gpu = 0;
    for (size_t i = 0; i < n; i++)
        any_gpu |= devs[i].is_gpu;
    assert_int_equal(p.is_gpu, any_gpu); /* default: a GPU when there is one */

    assert_ok(skv_device_select("cpu", &p));
    assert_int_equal(p.vendor_class, SKV_VENDOR_CPU);

    char idx[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(idx, sizeof idx, "%u:%u", devs[i].platform_index, devs[i].device_index);
        assert_ok(skv_device_select(idx, &p));
        assert_true(same_device(&p, &devs[i]));
        assert_string_equal(p.name, devs[i].name);
    }

    /* Vendor selectors pick a device of that class or report none. */
    const char *vendors[] = {"nvidia", "amd", "intel", "gpu"};
    for (size_t v = 0; v < 4; v++) {
        skv_status st = skv_device_select(vendors[v], &p);
        int exists = 0;
        for (size_t i = 0; i < n; i++)
            exists |= v == 3 ? devs[i].is_gpu : strcmp(skv_vendor_class_str(devs[i].vendor_class), vendors[v]) == 0;
        assert_int_equal(st, exists ? SKV_OK : SKV_ERR_NO_DEVICE);
        if (!exists)
            assert_non_null(strstr(skv_last_error(), "matches no OpenCL device"));
    }

    /* A selector that matches nothing: a clear error listing what exists. */
    assert_int_equal(skv_device_select("99:0", &p), SKV_ERR_NO_DEVICE);
    assert_non_null(strstr(skv_last_error(), "'99:0'"));
    assert_non_null(strstr(skv_last_error(), devs[0].name));
    assert_int_equal(skv_device_select("0:99", &p), SKV_ERR_NO_DEVICE);
    assert_int_equal(skv_device_select("fastest", &p), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "not a device selector"));
    assert_int_equal(skv_device_select("0:0x", &p), SKV_ERR_INVALID_ARG);
    /* indices past 2^32 - 1 or with signs and spaces are not indices (2^32 wrapped to 0) */
    const char *bad[] = {"0:4294967296", "4294967296:0", "0:18446744073709551616", "0:-0", " 0:0", "0: 0", "0:+0", ":0", "0:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(skv_device_select(bad[i], &p), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_device_select("0:4294967295", &p), SKV_ERR_NO_DEVICE);
    free(devs);
}

static void test_env_selection(void **state)
{
    (void)state;
    skv_device_profile p, cpu;
    assert_ok(skv_device_select("cpu", &cpu));

    setenv("SKV_DEVICE", "cpu", 1);
    assert_ok(skv_device_select(NULL, &p));
    assert_true(same_device(&p, &cpu));
    /* An explicit selector wins over the environment. */
    char idx[32];
    snprintf(idx, sizeof idx, "%u:%u", cpu.platform_index, cpu.device_index);
    assert_ok(skv_device_select(idx, &p));

    /* A context follows SKV_DEVICE too. */
    skv_context *ctx = NULL;
    assert_ok(skv_context_create(NULL, &ctx));
    skv_device_profile got;
    assert_ok(skv_context_device(ctx, &got));
    assert_true(same_device(&got, &cpu));
    skv_context_destroy(ctx);

    setenv("SKV_DEVICE", "42:7", 1);
    assert_int_equal(skv_device_select(NULL, &p), SKV_ERR_NO_DEVICE);
    assert_non_null(strstr(skv_last_error(), "SKV_DEVICE"));
    ctx = (skv_context *)0x1;
    assert_int_equal(skv_context_create(NULL, &ctx), SKV_ERR_NO_DEVICE);
    assert_null(ctx);
    assert_non_null(strstr(skv_last_error(), "SKV_DEVICE '42:7'"));

    setenv("SKV_DEVICE", "", 1); /* empty means unset */
    assert_ok(skv_device_select(NULL, &p));
    unsetenv("SKV_DEVICE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discovery_and_profile),
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_env_selection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
