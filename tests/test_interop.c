/* A context on the caller's own cl_context / device / queue: skv uses them, holds its
 * own references, and rejects objects that do not belong together. */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "test_util.h"
#include "skv/skv_cl.h"

static void cpu_device(cl_platform_id *p, cl_device_id *d)
{
    skv_device_profile prof;
    assert_ok(skv_device_select("cpu", &prof));
    cl_platform_id ps[16];
    cl_uint np = 0;
    assert_int_equal(clGetPlatformIDs(16, ps, &np), CL_SUCCESS);
    *p = ps[prof.platform_index];
    cl_device_id ds[32];
    cl_uint nd = 0;
    assert_int_equal(clGetDeviceIDs(*p, CL_DEVICE_TYPE_ALL, 32, ds, &nd), CL_SUCCESS);
    *d = ds[prof.device_index];
}

static cl_uint refcount_ctx(cl_context c)
{
    cl_uint r = 0;
    clGetContextInfo(c, CL_CONTEXT_REFERENCE_COUNT, sizeof r, &r, NULL);
    return r;
}

static cl_uint refcount_queue(cl_command_queue q)
{
    cl_uint r = 0;
    clGetCommandQueueInfo(q, CL_QUEUE_REFERENCE_COUNT, sizeof r, &r, NULL);
    return r;
}

/* The reference count once the implementation's own references settle: PoCL keeps the
 * queue referenced from finished commands until its worker frees them, a moment later
 * (the spec says reference counts are for debugging, i.e. not synchronised). */
static void settle(void)
{
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static cl_uint settled_queue_refs(cl_command_queue q, cl_uint want)
{
    cl_uint r = refcount_queue(q);
    for (int i = 0; i < 200 && r != want; i++, settle())
        r = refcount_queue(q);
    return r;
}

static cl_uint settled_ctx_refs(cl_context c, cl_uint want)
{
    cl_uint r = refcount_ctx(c);
    for (int i = 0; i < 200 && r != want; i++, settle())
        r = refcount_ctx(c);
    return r;
}

static void test_caller_objects(void **state)
{
    (void)state;
    cl_platform_id p;
    cl_device_id d;
    cpu_device(&p, &d);
    cl_int e;
    cl_context c = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_command_queue q = clCreateCommandQueue(c, d, CL_QUEUE_PROFILING_ENABLE, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_uint rc0 = refcount_ctx(c), rq0 = refcount_queue(q);

    skv_context *ctx = NULL;
    assert_ok(skv_context_create_cl(NULL, c, d, q, &ctx));
    cl_context gc;
    cl_device_id gd;
    cl_command_queue gq, gt;
    assert_ok(skv_context_cl_objects(ctx, &gc, &gd, &gq, &gt));
    assert_ptr_equal(gc, c);
    assert_ptr_equal(gd, d);
    assert_ptr_equal(gq, q);
    assert_non_null(gt);
    assert_ptr_not_equal(gt, q); /* transfers get a queue of their own */
    assert_true(refcount_queue(q) > rq0);
    skv_device_profile prof;
    assert_ok(skv_context_device(ctx, &prof));
    assert_int_equal(prof.vendor_class, SKV_VENDOR_CPU);
    /* skv work runs on the caller's queue. */
    double gbps = 0;
    assert_ok(skv_context_prepare(ctx));
    assert_ok(skv_measure_read_bandwidth(ctx, 1 << 20, 3, &gbps));
    assert_true(gbps > 0);
    skv_context_destroy(ctx);
    /* Every reference skv took is returned. */
    assert_int_equal(settled_queue_refs(q, rq0), rq0);
    assert_int_equal(settled_ctx_refs(c, rc0), rc0);

    /* Without a queue skv makes its own on the caller's context. */
    assert_ok(skv_context_create_cl(NULL, c, d, NULL, &ctx));
    assert_ok(skv_context_cl_objects(ctx, &gc, NULL, &gq, NULL));
    assert_ptr_equal(gc, c);
    assert_ptr_not_equal(gq, q);
    skv_context_destroy(ctx);
    assert_int_equal(settled_ctx_refs(c, rc0), rc0);

    clReleaseCommandQueue(q);
    clReleaseContext(c);
}

static void test_mismatched_objects(void **state)
{
    (void)state;
    cl_platform_id p;
    cl_device_id d;
    cpu_device(&p, &d);
    cl_int e;
    cl_context c1 = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
    cl_context c2 = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
    cl_command_queue q2 = clCreateCommandQueue(c2, d, 0, &e);
    assert_int_equal(e, CL_SUCCESS);
    skv_context *ctx = (skv_context *)0x1;
    assert_int_equal(skv_context_create_cl(NULL, c1, d, q2, &ctx), SKV_ERR_INVALID_ARG);
    assert_null(ctx);
    assert_non_null(strstr(skv_last_error(), "another context"));
    assert_int_equal(skv_context_create_cl(NULL, c1, NULL, NULL, &ctx), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_context_create_cl(NULL, NULL, d, NULL, &ctx), SKV_ERR_INVALID_ARG);
    skv_context_desc desc;
    skv_context_desc_init(&desc);
    desc.struct_size = 3;
    assert_int_equal(skv_context_create_cl(&desc, c1, d, NULL, &ctx), SKV_ERR_INVALID_ARG);
    /* a device outside cl_ctx: a sub-device, where the device can be partitioned */
    cl_device_partition_property parts[] = {CL_DEVICE_PARTITION_EQUALLY, 1, 0};
    cl_device_id sub[64];
    cl_uint n_sub = 0;
    if (clCreateSubDevices(d, parts, 64, sub, &n_sub) == CL_SUCCESS && n_sub > 0) {
        assert_int_equal(skv_context_create_cl(NULL, c1, sub[0], NULL, &ctx), SKV_ERR_INVALID_ARG);
        assert_non_null(strstr(skv_last_error(), "not one of cl_ctx's devices"));
        for (cl_uint i = 0; i < n_sub; i++)
            clReleaseDevice(sub[i]);
    }
    /* a cl_mem of another cl_context, in an append and a decode */
    assert_ok(skv_context_create_cl(NULL, c1, d, NULL, &ctx));
    skv_cache_desc cd;
    skv_cache_desc_init(&cd);
    cd.layers = 1, cd.q_heads = 2, cd.kv_heads = 1, cd.head_dim = 64, cd.page_tokens = 16;
    cd.device_budget_bytes = 1u << 20;
    skv_cache *cache;
    assert_ok(skv_cache_create(ctx, &cd, &cache));
    skv_seq_id s;
    assert_ok(skv_seq_create(cache, &s));
    cl_mem own = clCreateBuffer(c1, CL_MEM_READ_WRITE, 4096, NULL, &e), other = clCreateBuffer(c2, CL_MEM_READ_WRITE, 4096, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    int32_t pos[4] = {0, 1, 2, 3};
    assert_int_equal(skv_append_cl(cache, s, 0, 4, SKV_F32, other, 0, own, 0, pos, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "another cl_context"));
    assert_int_equal(skv_append_cl(cache, s, 0, 4, SKV_F32, own, 0, other, 0, pos, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_ok(skv_append_cl(cache, s, 0, 4, SKV_F32, own, 0, own, 0, pos, 0, NULL, NULL));
    assert_int_equal(skv_attention_decode_cl(cache, 0, &s, 1, SKV_F32, other, 0, 0.125f, SKV_F32, own, 0, 0, NULL, NULL),
                     SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "another cl_context"));
    assert_int_equal(skv_attention_decode_cl(cache, 0, &s, 1, SKV_F32, own, 0, 0.125f, SKV_F32, other, 0, 0, NULL, NULL),
                     SKV_ERR_INVALID_ARG);
    assert_ok(skv_attention_decode_cl(cache, 0, &s, 1, SKV_F32, own, 0, 0.125f, SKV_F32, own, 1024, 0, NULL, NULL));
    assert_ok(skv_context_finish(ctx));
    clReleaseMemObject(own);
    clReleaseMemObject(other);
    skv_cache_destroy(cache);
    skv_context_destroy(ctx);
    clReleaseCommandQueue(q2);
    clReleaseContext(c2);
    clReleaseContext(c1);
}

/* Decode reuses its scratch buffers from call to call and relies on queue order: an
 * out-of-order queue is refused with a message that says so, and no reference is kept. */
static void test_out_of_order_queue(void **state)
{
    (void)state;
    cl_platform_id p;
    cl_device_id d;
    cpu_device(&p, &d);
    cl_int e;
    cl_context c = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_command_queue_properties caps = 0;
    assert_int_equal(clGetDeviceInfo(d, CL_DEVICE_QUEUE_PROPERTIES, sizeof caps, &caps, NULL), CL_SUCCESS);
    if (!(caps & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)) {
        clReleaseContext(c);
        skip(); /* the device cannot make one */
    }
    cl_command_queue q = clCreateCommandQueue(c, d, CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, &e);
    assert_int_equal(e, CL_SUCCESS);
    const cl_uint queue_refs = refcount_queue(q), ctx_refs = refcount_ctx(c);
    skv_context *ctx = (skv_context *)0x1;
    assert_int_equal(skv_context_create_cl(NULL, c, d, q, &ctx), SKV_ERR_INVALID_ARG);
    assert_null(ctx);
    assert_non_null(strstr(skv_last_error(), "out-of-order"));
    assert_int_equal(refcount_queue(q), queue_refs);
    assert_int_equal(refcount_ctx(c), ctx_refs);
    clReleaseCommandQueue(q);
    clReleaseContext(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caller_objects),
        cmocka_unit_test(test_mismatched_objects),
        cmocka_unit_test(test_out_of_order_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
