/* HeteroCache on the device: the top-k of rows of weights (cl/topk.cl). */
#include "host_internal.h"

skv_status skvi_topk_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t n, uint32_t w_stride,
                             uint32_t top_k, cl_mem out, uint32_t out_stride, cl_mem counts)
{
    if (rows == 0)
        return SKV_OK;
    if (w_stride < n || out_stride < (top_k < n ? top_k : n))
        return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "top-k: a row stride is shorter than its row");
    cl_uint a = 0, nn = n, ws = w_stride, kk = top_k, os = out_stride;
    cl_int e = clSetKernelArg(k, a++, sizeof w, &w);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof nn, &nn);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof ws, &ws);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof kk, &kk);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof out, &out);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof os, &os);
    if (e == CL_SUCCESS)
        e = clSetKernelArg(k, a++, sizeof counts, &counts);
    size_t local = SKVI_TOPK_WG, global = (size_t)rows * local;
    if (e == CL_SUCCESS)
        e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "top-k: enqueue");
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
