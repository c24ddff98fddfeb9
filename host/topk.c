/* HeteroCache on the device: the top-k of rows of weights (cl/topk.cl). */
#include "host_internal.h"

skv_status skvi_topk_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t n, uint32_t w_stride,
                             uint32_t top_k, cl_mem out, uint32_t out_stride, cl_mem counts)
{
    if (rows == 0)
        return SKV_OK;
    if (w_stride < n || out_stride < (top_k < n ? top_k : n))
        return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "top-k: a row stride is shorter than its row");
    skvi_args a = skvi_args_begin(k, 0);
    skvi_arg_mem(&a, w);
    skvi_arg_u32(&a, n);
    skvi_arg_u32(&a, w_stride);
    skvi_arg_u32(&a, top_k);
    skvi_arg_mem(&a, out);
    skvi_arg_u32(&a, out_stride);
    skvi_arg_mem(&a, counts);
    size_t local = SKVI_TOPK_WG, global = (size_t)rows * local;
    cl_int e = skvi_args_end(&a);
    if (e != CL_SUCCESS)
        return skvi_args_fail(ctx->error, &a, "top-k: enqueue");
    e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "top-k: enqueue");
}

skv_status skvi_topk_gather_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t w_stride,
                                    cl_mem sets, uint32_t set_stride, cl_mem counts, cl_mem wout)
{
    if (rows == 0 || set_stride == 0)
        return SKV_OK;
    skvi_args a = skvi_args_begin(k, 0);
    skvi_arg_mem(&a, w);
    skvi_arg_u32(&a, w_stride);
    skvi_arg_mem(&a, sets);
    skvi_arg_u32(&a, set_stride);
    skvi_arg_mem(&a, counts);
    skvi_arg_mem(&a, wout);
    size_t global[2] = {set_stride, rows};
    cl_int e = skvi_args_end(&a);
    if (e != CL_SUCCESS)
        return skvi_args_fail(ctx->error, &a, "top-k gather: enqueue");
    e = clEnqueueNDRangeKernel(ctx->queue, k, 2, NULL, global, NULL, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "top-k gather: enqueue");
}

skv_status skvi_topk_kernel(skv_context *ctx, cl_kernel *out)
{
    skv_status st = skvi_kernel_create(ctx, "topk.cl", NULL, "topk_select", out);
    if (st != SKV_OK || ctx->build_list)
        return st;
    size_t wg = 0;
    cl_int e = clGetKernelWorkGroupInfo(*out, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    if (e == CL_SUCCESS && wg >= SKVI_TOPK_WG)
        return SKV_OK;
    clReleaseKernel(*out);
    *out = NULL;
    return e != CL_SUCCESS ? skvi_cl_fail(ctx->error, e, "top-k: clGetKernelWorkGroupInfo")
                           : skvi_fail(ctx->error, SKV_ERR_UNSUPPORTED,
                                       "top-k: the kernel runs at most %zu work-items per group, needs %d", wg,
                                       SKVI_TOPK_WG);
}
