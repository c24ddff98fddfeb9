/* Kernel arguments bound in order: the first failure is kept with its argument index
 * (OR-ing cl_int codes would name a wrong error), and in debug builds a binding that
 * starts at argument 0 is checked against the kernel's CL_KERNEL_NUM_ARGS. */
#include <stdio.h>

#include "host_internal.h"

skvi_args skvi_args_begin(cl_kernel k, cl_uint first)
{
    return (skvi_args){k, first, first, CL_SUCCESS, 0};
}

void skvi_arg(skvi_args *a, size_t size, const void *value)
{
    cl_int e = clSetKernelArg(a->k, a->next, size, value);
    if (e != CL_SUCCESS && a->err == CL_SUCCESS) {
        a->err = e;
        a->err_arg = a->next;
    }
    a->next++;
}

void skvi_arg_mem(skvi_args *a, cl_mem m)
{
    skvi_arg(a, sizeof m, &m);
}

void skvi_arg_u32(skvi_args *a, cl_uint v)
{
    skvi_arg(a, sizeof v, &v);
}

void skvi_arg_u64(skvi_args *a, cl_ulong v)
{
    skvi_arg(a, sizeof v, &v);
}

void skvi_arg_f32(skvi_args *a, cl_float v)
{
    skvi_arg(a, sizeof v, &v);
}

cl_int skvi_args_end(skvi_args *a)
{
#ifndef NDEBUG
    cl_uint n = 0;
    if (a->err == CL_SUCCESS && a->first == 0 &&
        clGetKernelInfo(a->k, CL_KERNEL_NUM_ARGS, sizeof n, &n, NULL) == CL_SUCCESS && n != a->next) {
        a->err = CL_INVALID_KERNEL_ARGS; /* a binding that missed or added an argument */
        a->err_arg = a->next;
    }
#endif
    return a->err;
}

skv_status skvi_args_fail(char *ctx_error, const skvi_args *a, const char *what)
{
    char name[64] = "?";
    if (clGetKernelInfo(a->k, CL_KERNEL_FUNCTION_NAME, sizeof name, name, NULL) != CL_SUCCESS)
        name[0] = '?', name[1] = '\0';
    char buf[SKVI_ERROR_MAX / 2];
    snprintf(buf, sizeof buf, "%s: clSetKernelArg(%s, argument %u)", what, name, a->err_arg);
    return skvi_cl_fail(ctx_error, a->err, buf);
}

cl_int skvi_enqueue_items(cl_device_id dev, cl_command_queue q, cl_kernel k, cl_uint dims, const size_t *global,
                          cl_uint n_waits, const cl_event *waits, cl_event *done)
{
    size_t wg = SKVI_ITEMS_WG, most = 0;
    if (clGetKernelWorkGroupInfo(k, dev, CL_KERNEL_WORK_GROUP_SIZE, sizeof most, &most, NULL) == CL_SUCCESS)
        while (wg > most && wg > 1)
            wg /= 2;
    size_t main[3] = {1, 1, 1}, rest[3] = {1, 1, 1}, offset[3] = {0, 0, 0};
    const size_t local[3] = {wg, 1, 1}, one[3] = {1, 1, 1};
    for (cl_uint d = 0; d < dims && d < 3; d++)
        main[d] = rest[d] = global[d];
    main[0] = global[0] / wg * wg;
    rest[0] = global[0] - main[0];
    offset[0] = main[0];
    cl_int e = CL_SUCCESS;
    if (main[0])
        e = clEnqueueNDRangeKernel(q, k, dims, NULL, main, local, n_waits, waits, rest[0] ? NULL : done);
    if (e == CL_SUCCESS && (rest[0] || !main[0])) /* the waits went with the first launch */
        e = clEnqueueNDRangeKernel(q, k, dims, main[0] ? offset : NULL, rest[0] ? rest : global, one,
                                   main[0] ? 0 : n_waits, main[0] ? NULL : waits, done);
    return e;
}

cl_int skvi_enqueue_padded(cl_command_queue q, cl_kernel k, cl_uint dims, const size_t *global, cl_uint n_waits,
                           const cl_event *waits, cl_event *done)
{
    size_t g[3] = {1, 1, 1};
    const size_t local[3] = {SKVI_ITEMS_WG, 1, 1};
    for (cl_uint d = 0; d < dims && d < 3; d++)
        g[d] = global[d];
    g[0] = (g[0] + SKVI_ITEMS_WG - 1) / SKVI_ITEMS_WG * SKVI_ITEMS_WG;
    return clEnqueueNDRangeKernel(q, k, dims, NULL, g, local, n_waits, waits, done);
}
