/* Allocation failure injected at each allocation of context creation and of program
 * preparation: a clean SKV_ERR_OUT_OF_MEMORY, nothing leaked (the hook counts live
 * blocks; ASan checks the rest), and a context that failed to prepare still works. */
#include "test_util.h"

static skv_context_desc desc_with(skv_allocator *a, const char *cache_dir)
{
    skv_context_desc d;
    skv_context_desc_init(&d);
    d.device = "cpu";
    d.allocator = a;
    d.program_cache_dir = cache_dir;
    return d;
}

static void test_create_fails_at_each_allocation(void **state)
{
    (void)state;
    counting_allocator c = {0};
    skv_allocator a = {counting_alloc, counting_free, &c};
    skv_context_desc desc = desc_with(&a, "/tmp/skv-alloc-test-cache");

    /* Count the allocations of a successful creation. */
    skv_context *ctx = NULL;
    assert_ok(skv_context_create(&desc, &ctx));
    long total = c.calls;
    assert_true(total >= 1);
    skv_context_destroy(ctx);
    assert_int_equal(c.live, 0);

    for (long k = 1; k <= total; k++) {
        c = (counting_allocator){.fail_at = k};
        ctx = (skv_context *)0x1;
        assert_int_equal(skv_context_create(&desc, &ctx), SKV_ERR_OUT_OF_MEMORY);
        assert_null(ctx);
        assert_non_null(strstr(skv_last_error(), "out of memory"));
        assert_int_equal(c.live, 0);
    }
    /* One past the last allocation: creation succeeds again. */
    c = (counting_allocator){.fail_at = total + 1};
    assert_ok(skv_context_create(&desc, &ctx));
    skv_context_destroy(ctx);
    assert_int_equal(c.live, 0);
}

static void test_prepare_fails_at_each_allocation(void **state)
{
    (void)state;
    char *dir = test_tmpdir("allocprep");
    counting_allocator c = {0};
    skv_allocator a = {counting_alloc, counting_free, &c};
    skv_context_desc desc = desc_with(&a, dir);
    skv_context *ctx = NULL;

    /* First run fills the cache, so later runs take the read path too. */
    assert_ok(skv_context_create(&desc, &ctx));
    long base = c.calls;
    assert_ok(skv_context_prepare(ctx));
    long total = c.calls - base;
    skv_context_destroy(ctx);
    assert_int_equal(c.live, 0);

    for (long k = 1; k <= total; k++) {
        c = (counting_allocator){0};
        assert_ok(skv_context_create(&desc, &ctx));
        c.fail_at = c.calls + k;
        skv_status st = skv_context_prepare(ctx);
        /* A failed cache read or write falls back to a build; only the context's own
         * tables make prepare fail. Either way, nothing leaks and a retry succeeds. */
        assert_true(st == SKV_OK || st == SKV_ERR_OUT_OF_MEMORY);
        c.fail_at = 0;
        assert_ok(skv_context_prepare(ctx));
        skv_context_destroy(ctx);
        assert_int_equal(c.live, 0);
    }
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_fails_at_each_allocation),
        cmocka_unit_test(test_prepare_fails_at_each_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
