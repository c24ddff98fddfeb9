/* The device's streaming-read bandwidth, measured with cl/stream_read.cl: the ceiling
 * decode attention is compared against. */
#include <stdlib.h>
#include <string.h>

#include "host_internal.h"
#include "skv_ref.h"

int skvi_stream_read_blocked(const skv_context *ctx) { return ctx->profile.vendor_class == SKV_VENDOR_CPU; }

const char *skvi_stream_read_defines(const skv_context *ctx)
{
    return skvi_stream_read_blocked(ctx) ? "-DSKV_STREAM_BLOCKED" : NULL;
}

skv_status skvi_stream_read_enqueue(skv_context *ctx, cl_command_queue q, cl_mem in, uint64_t n_words,
                                    size_t n_items, cl_mem out, cl_event *ev)
{
    cl_kernel k;
    skv_status st = skvi_kernel_create(ctx, "stream_read.cl", skvi_stream_read_defines(ctx), "stream_read", &k);
    if (st != SKV_OK)
        return st;
    skvi_args a = skvi_args_begin(k, 0);
    skvi_arg_mem(&a, in);
    skvi_arg_u64(&a, n_words);
    skvi_arg_mem(&a, out);
    cl_int e = skvi_args_end(&a);
    if (e != CL_SUCCESS)
        st = skvi_args_fail(ctx->error, &a, "stream_read");
    else if ((e = clEnqueueNDRangeKernel(q, k, 1, NULL, &n_items, NULL, 0, NULL, ev)) != CL_SUCCESS)
        st = skvi_cl_fail(ctx->error, e, "stream_read");
    clReleaseKernel(k);
    return st;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

skv_status skv_measure_read_bandwidth(skv_context *ctx, uint64_t bytes, unsigned runs, double *gbps)
{
    skvi_clear_error();
    if (!ctx || !gbps)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_measure_read_bandwidth: ctx or gbps is NULL");
    if (bytes < 16 || runs == 0 || runs > 10000)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_measure_read_bandwidth: bytes must be >= 16 and runs in 1..10000");
    if (bytes > ctx->profile.max_alloc_bytes)
        bytes = ctx->profile.max_alloc_bytes;
    uint64_t n_words = bytes / 16;
    /* Enough work-items to fill the device several times over, each reading many words. */
    size_t items = (size_t)ctx->profile.compute_units * (ctx->profile.is_gpu ? 2048 : 4);
    if (items > n_words)
        items = (size_t)n_words;
    /* The compute queue when it can time kernels, else a profiling queue of our own. */
    cl_int e = CL_SUCCESS;
    cl_command_queue q = ctx->queue;
    if (!ctx->profiling)
        q = clCreateCommandQueue(ctx->cl, ctx->device, CL_QUEUE_PROFILING_ENABLE, &e);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "clCreateCommandQueue(profiling)");
    cl_mem in = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY, n_words * 16, NULL, &e);
    cl_mem out = e == CL_SUCCESS ? clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, items * 4, NULL, &e) : NULL;
    double *times = skvi_calloc(ctx->alloc, runs, sizeof *times);
    skv_status st = e != CL_SUCCESS ? skvi_cl_fail(ctx->error, e, "clCreateBuffer")
                    : !times ? skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "out of memory")
                             : SKV_OK;
    if (st == SKV_OK) {
        unsigned pattern = 0x5a5a5a5au;
        e = clEnqueueFillBuffer(q, in, &pattern, sizeof pattern, 0, n_words * 16, 0, NULL, NULL);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "clEnqueueFillBuffer");
    }
    for (unsigned r = 0; st == SKV_OK && r < runs + 1; r++) { /* run 0 is the warm-up */
        cl_event ev;
        st = skvi_stream_read_enqueue(ctx, q, in, n_words, items, out, &ev);
        if (st != SKV_OK)
            break;
        cl_ulong t0 = 0, t1 = 0;
        e = clWaitForEvents(1, &ev);
        if (e == CL_SUCCESS)
            e = clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL);
        if (e == CL_SUCCESS)
            e = clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
        clReleaseEvent(ev);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "stream_read profiling");
        else if (r > 0)
            times[r - 1] = (double)(t1 - t0) * 1e-9;
    }
    if (st == SKV_OK) {
        qsort(times, runs, sizeof *times, cmp_double);
        double median = times[runs / 2];
        *gbps = median > 0 ? (double)(n_words * 16) / median * 1e-9 : 0.0;
    }
    skvi_free(ctx->alloc, times);
    if (out)
        clReleaseMemObject(out);
    if (in)
        clReleaseMemObject(in);
    if (q != ctx->queue)
        clReleaseCommandQueue(q);
    return st;
}
