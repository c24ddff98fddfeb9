/* OpenCL fault injection shared by the suites that link skv statically with the linker
 * wrapping skv's OpenCL calls (-Wl,--wrap, skv_cl_fault_wrap in tests/CMakeLists.txt):
 * every wrapped call counts itself in cl_fault_calls, and the call whose index (from 0)
 * is cl_fault_at fails with cl_fault_code (clCreateBuffer: with
 * CL_MEM_OBJECT_ALLOCATION_FAILURE). Include it in one file of a test binary: it
 * defines the wrappers. */
#ifndef SKV_CL_FAULT_WRAP_H
#define SKV_CL_FAULT_WRAP_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

/* -1: no fault; else the index (from 0) of the call that fails, counted in cl_fault_calls */
static long cl_fault_at = -1, cl_fault_calls;
static cl_int cl_fault_code = CL_OUT_OF_RESOURCES;

/* called at the failing call (NULL: nothing), e.g. to print where it struck */
static void (*cl_fault_hook)(void);

static int cl_fail_now(void)
{
    if (cl_fault_calls++ != cl_fault_at)
        return 0;
    if (cl_fault_hook)
        cl_fault_hook();
    return 1;
}

#define CL_FAULT_WRAP_STATUS(name, params, args)                                                                       \
    cl_int __real_##name params;                                                                                       \
    cl_int __wrap_##name params;                                                                                       \
    cl_int __wrap_##name params { return cl_fail_now() ? cl_fault_code : __real_##name args; }

CL_FAULT_WRAP_STATUS(clEnqueueReadBuffer,
                     (cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t n, void *p, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, m, b, o, n, p, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueWriteBuffer,
                     (cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t n, const void *p, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, m, b, o, n, p, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueNDRangeKernel,
                     (cl_command_queue q, cl_kernel k, cl_uint d, const size_t *o, const size_t *g, const size_t *l,
                      cl_uint nw, const cl_event *w, cl_event *e),
                     (q, k, d, o, g, l, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueCopyBuffer,
                     (cl_command_queue q, cl_mem s, cl_mem d, size_t so, size_t dof, size_t n, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, s, d, so, dof, n, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueFillBuffer,
                     (cl_command_queue q, cl_mem m, const void *p, size_t ps, size_t o, size_t n, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, m, p, ps, o, n, nw, w, e))
CL_FAULT_WRAP_STATUS(clFinish, (cl_command_queue q), (q))
CL_FAULT_WRAP_STATUS(clSetKernelArg, (cl_kernel k, cl_uint i, size_t n, const void *v), (k, i, n, v))

cl_mem __real_clCreateBuffer(cl_context c, cl_mem_flags f, size_t n, void *p, cl_int *err);
cl_mem __wrap_clCreateBuffer(cl_context c, cl_mem_flags f, size_t n, void *p, cl_int *err);
cl_mem __wrap_clCreateBuffer(cl_context c, cl_mem_flags f, size_t n, void *p, cl_int *err)
{
    if (cl_fail_now()) {
        if (err)
            *err = CL_MEM_OBJECT_ALLOCATION_FAILURE;
        return NULL;
    }
    return __real_clCreateBuffer(c, f, n, p, err);
}

#endif
