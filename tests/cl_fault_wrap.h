/* OpenCL fault injection shared by the suites that link skv statically with the linker
 * wrapping skv's OpenCL calls (-Wl,--wrap, skv_cl_fault_wrap in tests/CMakeLists.txt):
 * every wrapped call counts itself in cl_fault_calls, and the call whose index (from 0)
 * is cl_fault_at fails with cl_fault_code (clCreateBuffer: with
 * CL_MEM_OBJECT_ALLOCATION_FAILURE). Builds fail apart (cl_build_fault_at), and the
 * memory objects, kernels and programs skv holds are counted (cl_live_*). Include it in
 * one file of a test binary: it defines the wrappers. */
#ifndef SKV_CL_FAULT_WRAP_H
#define SKV_CL_FAULT_WRAP_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <string.h>

/* -1: no fault; else the index (from 0) of the call that fails, counted in cl_fault_calls */
static long cl_fault_at = -1, cl_fault_calls;
static cl_int cl_fault_code = CL_OUT_OF_RESOURCES;

/* called at the failing call (NULL: nothing), e.g. to print where it struck */
static void (*cl_fault_hook)(void);

/* The call that failed last (its name), and whether skv may absorb its failure: a flush
 * is a hint (the commands stay queued and a later wait submits them), and a status
 * query that fails is answered by waiting for the command. */
static const char *cl_fault_name = "";

static int cl_fault_absorbable(void)
{
    return !strcmp(cl_fault_name, "clFlush") || !strcmp(cl_fault_name, "clGetEventInfo");
}

static int cl_fail_now(const char *name)
{
    if (cl_fault_calls++ != cl_fault_at)
        return 0;
    cl_fault_name = name;
    if (cl_fault_hook)
        cl_fault_hook();
    return 1;
}

#define CL_FAULT_WRAP_STATUS(name, params, args)                                                                       \
    cl_int __real_##name params;                                                                                       \
    cl_int __wrap_##name params;                                                                                       \
    cl_int __wrap_##name params { return cl_fail_now(#name) ? cl_fault_code : __real_##name args; }

CL_FAULT_WRAP_STATUS(clEnqueueReadBuffer,
                     (cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t n, void *p, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, m, b, o, n, p, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueWriteBuffer,
                     (cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t n, const void *p, cl_uint nw,
                      const cl_event *w, cl_event *e),
                     (q, m, b, o, n, p, nw, w, e))
/* Every kernel launch skv makes, seen before it is passed on (NULL: none). */
static void (*cl_launch_hook)(cl_kernel k, cl_uint dims, const size_t *offset, const size_t *global,
                              const size_t *local);

cl_int __real_clEnqueueNDRangeKernel(cl_command_queue q, cl_kernel k, cl_uint d, const size_t *o, const size_t *g,
                                     const size_t *l, cl_uint nw, const cl_event *w, cl_event *e);
cl_int __wrap_clEnqueueNDRangeKernel(cl_command_queue q, cl_kernel k, cl_uint d, const size_t *o, const size_t *g,
                                     const size_t *l, cl_uint nw, const cl_event *w, cl_event *e);
cl_int __wrap_clEnqueueNDRangeKernel(cl_command_queue q, cl_kernel k, cl_uint d, const size_t *o, const size_t *g,
                                     const size_t *l, cl_uint nw, const cl_event *w, cl_event *e)
{
    if (cl_fail_now("clEnqueueNDRangeKernel"))
        return cl_fault_code;
    if (cl_launch_hook)
        cl_launch_hook(k, d, o, g, l);
    return __real_clEnqueueNDRangeKernel(q, k, d, o, g, l, nw, w, e);
}
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

CL_FAULT_WRAP_STATUS(clEnqueueMarkerWithWaitList, (cl_command_queue q, cl_uint nw, const cl_event *w, cl_event *e),
                     (q, nw, w, e))
CL_FAULT_WRAP_STATUS(clEnqueueBarrierWithWaitList, (cl_command_queue q, cl_uint nw, const cl_event *w, cl_event *e),
                     (q, nw, w, e))
CL_FAULT_WRAP_STATUS(clWaitForEvents, (cl_uint n, const cl_event *w), (n, w))
CL_FAULT_WRAP_STATUS(clFlush, (cl_command_queue q), (q))
CL_FAULT_WRAP_STATUS(clGetEventInfo, (cl_event ev, cl_event_info i, size_t n, void *v, size_t *r), (ev, i, n, v, r))

/* Objects skv holds, counted: made (created or retained) minus released. A call that
 * fails makes nothing. After a cache (or context) is destroyed the counts return to
 * what they were before it was made: nothing leaked. */
static long cl_live_mem, cl_live_kernel, cl_live_program;

/* Builds: a failure of the N-th build call (program creation, build, kernel creation)
 * of those counted in cl_build_calls, when cl_build_fault_at is N. They are counted
 * apart from the calls above, so that the suites that fail every call of an operation
 * do not rebuild programs. */
static long cl_build_fault_at = -1, cl_build_calls;

static int cl_build_fail_now(const char *name)
{
    if (cl_build_calls++ != cl_build_fault_at)
        return 0;
    cl_fault_name = name;
    if (cl_fault_hook)
        cl_fault_hook();
    return 1;
}

/* A constructor returning an object: on a fault, NULL and `code` in *err. */
#define CL_FAULT_WRAP_MAKE(type, name, fail, counter, code, params, args)                                               \
    type __real_##name params;                                                                                         \
    type __wrap_##name params;                                                                                         \
    type __wrap_##name params                                                                                          \
    {                                                                                                                  \
        if (fail(#name)) {                                                                                             \
            if (err)                                                                                                   \
                *err = code;                                                                                           \
            return NULL;                                                                                               \
        }                                                                                                              \
        type made = __real_##name args;                                                                                \
        counter += made != NULL;                                                                                       \
        return made;                                                                                                   \
    }

CL_FAULT_WRAP_MAKE(cl_mem, clCreateBuffer, cl_fail_now, cl_live_mem, CL_MEM_OBJECT_ALLOCATION_FAILURE,
                   (cl_context c, cl_mem_flags f, size_t n, void *p, cl_int *err), (c, f, n, p, err))
CL_FAULT_WRAP_MAKE(cl_mem, clCreateSubBuffer, cl_fail_now, cl_live_mem, CL_MEM_OBJECT_ALLOCATION_FAILURE,
                   (cl_mem m, cl_mem_flags f, cl_buffer_create_type t, const void *i, cl_int *err), (m, f, t, i, err))
CL_FAULT_WRAP_MAKE(cl_kernel, clCreateKernel, cl_build_fail_now, cl_live_kernel, CL_OUT_OF_RESOURCES,
                   (cl_program p, const char *name, cl_int *err), (p, name, err))
CL_FAULT_WRAP_MAKE(cl_program, clCreateProgramWithSource, cl_build_fail_now, cl_live_program, CL_OUT_OF_HOST_MEMORY,
                   (cl_context c, cl_uint n, const char **s, const size_t *l, cl_int *err), (c, n, s, l, err))
CL_FAULT_WRAP_MAKE(cl_program, clCreateProgramWithBinary, cl_build_fail_now, cl_live_program, CL_INVALID_BINARY,
                   (cl_context c, cl_uint n, const cl_device_id *d, const size_t *l, const unsigned char **b,
                    cl_int *bs, cl_int *err),
                   (c, n, d, l, b, bs, err))

cl_int __real_clBuildProgram(cl_program p, cl_uint n, const cl_device_id *d, const char *o,
                             void(CL_CALLBACK *f)(cl_program, void *), void *u);
cl_int __wrap_clBuildProgram(cl_program p, cl_uint n, const cl_device_id *d, const char *o,
                             void(CL_CALLBACK *f)(cl_program, void *), void *u);
cl_int __wrap_clBuildProgram(cl_program p, cl_uint n, const cl_device_id *d, const char *o,
                             void(CL_CALLBACK *f)(cl_program, void *), void *u)
{
    return cl_build_fail_now("clBuildProgram") ? CL_BUILD_PROGRAM_FAILURE : __real_clBuildProgram(p, n, d, o, f, u);
}

/* Retains and releases: counted, never failed. */
#define CL_FAULT_WRAP_COUNT(name, type, counter, delta)                                                                 \
    cl_int __real_##name(type x);                                                                                      \
    cl_int __wrap_##name(type x);                                                                                      \
    cl_int __wrap_##name(type x)                                                                                       \
    {                                                                                                                  \
        cl_int e = __real_##name(x);                                                                                   \
        counter += e == CL_SUCCESS ? (delta) : 0;                                                                      \
        return e;                                                                                                      \
    }

CL_FAULT_WRAP_COUNT(clRetainMemObject, cl_mem, cl_live_mem, 1)
CL_FAULT_WRAP_COUNT(clReleaseMemObject, cl_mem, cl_live_mem, -1)
CL_FAULT_WRAP_COUNT(clReleaseKernel, cl_kernel, cl_live_kernel, -1)
CL_FAULT_WRAP_COUNT(clReleaseProgram, cl_program, cl_live_program, -1)

#endif
