/* skv_context: one OpenCL device, its compute and transfer queues, and its programs.
 * Created on a selected device, or on the caller's own OpenCL objects (interop). */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "host_internal.h"

/* Programs that depend only on the device; a cache builds its geometry-specific ones
 * (append, decode) when it is created. */
const skvi_context_program skvi_context_programs[] = {{"stream_read.cl", skvi_stream_read_defines}};
const size_t skvi_context_program_count = sizeof skvi_context_programs / sizeof skvi_context_programs[0];

void skv_context_desc_init(skv_context_desc *desc)
{
    if (!desc)
        return;
    memset(desc, 0, sizeof *desc);
    desc->struct_size = sizeof *desc;
}

static skv_status check_desc(const skv_context_desc *desc, const char *fn)
{
    if (desc && desc->struct_size != sizeof *desc)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "%s: desc->struct_size is %zu, expected %zu (call skv_context_desc_init)",
                         fn, desc->struct_size, sizeof *desc);
    if (desc && desc->allocator && (!desc->allocator->alloc || !desc->allocator->free))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: allocator has a NULL alloc or free", fn);
    return SKV_OK;
}

/* Build-list profiles: a typical GPU of each vendor, as its OpenCL driver reports it
 * (NVIDIA: measured on an H100, ../shared/GPU.md; AMD: ROCm on an MI250X GCD, gfx90a,
 * whose runtime reports work-groups up to 256 unless told otherwise; Intel: an Arc /
 * Data Center GPU Max class device through the compute runtime). Only the fields that
 * shape kernels change; memory sizes stay the selected device's. */
static const struct build_profile {
    const char *key;
    skv_vendor_class vendor;
    const char *name, *vendor_name, *architecture;
    int cl_major, cl_minor, fp16, fp64;
    skv_subgroups subgroups;
    unsigned compute_units;
    uint64_t local_mem_bytes;
    size_t max_wg, wg_multiple;
    unsigned native_float_width;
} build_profiles[] = {
    {"nvidia", SKV_VENDOR_NVIDIA, "NVIDIA H100 80GB HBM3", "NVIDIA Corporation", "sm_90", 1, 2, 0, 1,
     SKV_SUBGROUPS_NV_PTX, 132, 48u << 10, 1024, 32, 1},
    {"amd", SKV_VENDOR_AMD, "gfx90a:sramecc+:xnack-", "Advanced Micro Devices, Inc.", "gfx90a", 2, 0, 1, 1,
     SKV_SUBGROUPS_KHR, 110, 64u << 10, 256, 64, 1},
    {"intel", SKV_VENDOR_INTEL, "Intel(R) Data Center GPU Max 1100", "Intel(R) Corporation", "Intel(R) Data Center GPU Max 1100",
     3, 0, 1, 1, SKV_SUBGROUPS_INTEL, 448, 128u << 10, 1024, 32, 1},
};

/* Makes ctx a build-list context presenting profile `key`. */
static skv_status build_list_setup(skv_context *ctx, const char *key)
{
    ctx->build_list = 1;
    skvi_tuning_release(ctx); /* the built-in entries only */
    ctx->tuning.note[0] = '\0';
    if (strcmp(key, "device") == 0)
        return SKV_OK;
    for (size_t i = 0; i < sizeof build_profiles / sizeof build_profiles[0]; i++) {
        const struct build_profile *b = &build_profiles[i];
        if (strcmp(key, b->key) != 0)
            continue;
        skv_device_profile *p = &ctx->profile;
        snprintf(p->name, sizeof p->name, "%s", b->name);
        snprintf(p->vendor, sizeof p->vendor, "%s", b->vendor_name);
        snprintf(p->driver_version, sizeof p->driver_version, "build list");
        snprintf(p->architecture, sizeof p->architecture, "%s", b->architecture);
        p->vendor_class = b->vendor;
        p->is_gpu = 1;
        p->opencl_c_major = b->cl_major;
        p->opencl_c_minor = b->cl_minor;
        p->fp16 = b->fp16;
        p->fp64 = b->fp64;
        p->subgroups = b->subgroups;
        p->compute_units = b->compute_units;
        p->local_mem_bytes = b->local_mem_bytes;
        p->max_work_group_size = b->max_wg;
        p->preferred_wg_multiple = b->wg_multiple;
        p->native_float_width = b->native_float_width;
        p->cpu_vector_floats = 0;
        return SKV_OK;
    }
    return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                     "skv_context_create: build_list is \"%.32s\", expected nvidia, amd, intel or device", key);
}

/* Allocates the context and sets what does not depend on OpenCL. */
static skv_status context_new(const skv_context_desc *desc, skv_context **out)
{
    const skv_allocator *a = desc ? desc->allocator : NULL;
    skv_context *ctx = skvi_calloc(a, 1, sizeof *ctx);
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_context_create: out of memory");
    if (a) {
        ctx->allocator_copy = *a;
        ctx->alloc = &ctx->allocator_copy;
    }
    ctx->stats.struct_size = sizeof ctx->stats;
    ctx->profiling = desc ? desc->enable_profiling != 0 : 0;
    const char *poison = getenv("SKV_DEBUG_POISON");
    ctx->poison = poison && strcmp(poison, "1") == 0;
    const char *no_cache = getenv("SKV_NO_CACHE");
    int disabled = (desc && desc->disable_program_cache) || (no_cache && strcmp(no_cache, "1") == 0);
    if (!disabled) {
        /* No resolvable folder (no HOME) just means no cache; only OOM is an error. */
        ctx->cache_dir = skvi_cache_dir_resolve(ctx->alloc, desc ? desc->program_cache_dir : NULL);
        if (!ctx->cache_dir && (desc && desc->program_cache_dir && desc->program_cache_dir[0])) {
            skv_context_destroy(ctx);
            return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_context_create: out of memory");
        }
    }
    *out = ctx;
    return SKV_OK;
}

static skv_status make_queue(skv_context *ctx, cl_command_queue *q)
{
    cl_int e;
    cl_command_queue_properties props = ctx->profiling ? CL_QUEUE_PROFILING_ENABLE : 0;
    *q = clCreateCommandQueue(ctx->cl, ctx->device, props, &e);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(NULL, e, "clCreateCommandQueue");
}

skv_status skv_context_create(const skv_context_desc *desc, skv_context **out)
{
    skvi_clear_error();
    if (!out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create: out is NULL");
    *out = NULL;
    skv_status st = check_desc(desc, "skv_context_create");
    skv_context *ctx = NULL;
    if (st == SKV_OK)
        st = context_new(desc, &ctx);
    if (st == SKV_OK)
        st = skvi_device_resolve(ctx->alloc, desc ? desc->device : NULL, &ctx->profile,
                                 &ctx->platform, &ctx->device, NULL);
    if (st == SKV_OK) {
        cl_int e;
        cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)ctx->platform, 0};
        ctx->cl = clCreateContext(props, 1, &ctx->device, NULL, NULL, &e);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(NULL, e, "clCreateContext");
    }
    if (st == SKV_OK)
        st = make_queue(ctx, &ctx->queue);
    if (st == SKV_OK)
        st = make_queue(ctx, &ctx->transfer);
    if (st == SKV_OK)
        st = make_queue(ctx, &ctx->background);
    if (st == SKV_OK)
        st = skvi_tuning_load(ctx);
    if (st == SKV_OK && desc && desc->build_list)
        st = build_list_setup(ctx, desc->build_list);
    if (st != SKV_OK) {
        skv_context_destroy(ctx);
        return st;
    }
    *out = ctx;
    return SKV_OK;
}

cl_int skvi_poison_enqueue(skv_context *ctx, cl_mem buf, size_t bytes)
{
    const cl_uint pattern = 0xFFFFFFFFu; /* copied at enqueue time */
    return clEnqueueFillBuffer(ctx->queue, buf, &pattern, sizeof pattern, 0, bytes & ~(size_t)3, 0, NULL, NULL);
}

cl_int skvi_poison(skv_context *ctx, cl_mem buf, size_t bytes)
{
    cl_int e = skvi_poison_enqueue(ctx, buf, bytes);
    return e == CL_SUCCESS ? clFinish(ctx->queue) : e;
}

skv_status skv_context_build_list(const skv_context *ctx, size_t *count)
{
    skvi_clear_error();
    if (!ctx || !count)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_build_list: ctx or count is NULL");
    *count = ctx->record_count;
    return SKV_OK;
}

skv_status skv_context_build_record(const skv_context *ctx, size_t i, skv_program_record *out)
{
    skvi_clear_error();
    if (!ctx || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_build_record: ctx or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_build_record: out->struct_size is %zu, expected %zu",
                         out->struct_size, sizeof *out);
    if (i >= ctx->record_count)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_build_record: index %zu, the list holds %zu", i,
                         ctx->record_count);
    const skvi_build_record *r = &ctx->records[i];
    out->name = r->name;
    out->options = r->options;
    out->kernels = r->kernels;
    out->source = r->source;
    return SKV_OK;
}

/* Platform and device indices of `device` in listing order (for the profile). */
static void locate(cl_platform_id platform, cl_device_id device, unsigned *pi, unsigned *di)
{
    cl_platform_id ps[16];
    cl_uint np = 0;
    *pi = *di = ~0u;
    if (clGetPlatformIDs(16, ps, &np) != CL_SUCCESS)
        return;
    for (cl_uint p = 0; p < np && p < 16; p++) {
        cl_device_id ds[32];
        cl_uint nd = 0;
        if (ps[p] != platform || clGetDeviceIDs(ps[p], CL_DEVICE_TYPE_ALL, 32, ds, &nd) != CL_SUCCESS)
            continue;
        *pi = p;
        for (cl_uint d = 0; d < nd && d < 32; d++)
            if (ds[d] == device)
                *di = d;
    }
}

skv_status skv_context_create_cl(const skv_context_desc *desc, cl_context cl_ctx,
                                 cl_device_id device, cl_command_queue queue, skv_context **out)
{
    skvi_clear_error();
    if (!out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: out is NULL");
    *out = NULL;
    if (!cl_ctx || !device)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: cl_ctx and device are required");
    skv_status st = check_desc(desc, "skv_context_create_cl");
    if (st != SKV_OK)
        return st;
    /* Check the objects belong together before taking references. */
    cl_platform_id platform;
    cl_int e = clGetDeviceInfo(device, CL_DEVICE_PLATFORM, sizeof platform, &platform, NULL);
    if (e != CL_SUCCESS)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: device is not a valid cl_device_id (%s)",
                         skvi_cl_error_name(e));
    cl_uint ndev = 0;
    e = clGetContextInfo(cl_ctx, CL_CONTEXT_NUM_DEVICES, sizeof ndev, &ndev, NULL);
    if (e != CL_SUCCESS)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: cl_ctx is not a valid cl_context (%s)",
                         skvi_cl_error_name(e));
    cl_device_id *devs = ndev ? calloc(ndev, sizeof *devs) : NULL;
    e = devs ? clGetContextInfo(cl_ctx, CL_CONTEXT_DEVICES, ndev * sizeof *devs, devs, NULL) : CL_OUT_OF_HOST_MEMORY;
    int member = 0;
    for (cl_uint i = 0; e == CL_SUCCESS && i < ndev; i++)
        member |= devs[i] == device;
    free(devs);
    if (e != CL_SUCCESS)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: clGetContextInfo(CL_CONTEXT_DEVICES) failed (%s)",
                         skvi_cl_error_name(e));
    if (!member)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: device is not one of cl_ctx's devices");
    if (queue) {
        cl_context qc;
        cl_device_id qd;
        e = clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof qc, &qc, NULL);
        if (e == CL_SUCCESS)
            e = clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof qd, &qd, NULL);
        if (e != CL_SUCCESS)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: queue is not a valid cl_command_queue (%s)",
                             skvi_cl_error_name(e));
        if (qc != cl_ctx || qd != device)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                             "skv_context_create_cl: queue belongs to another context or device");
        cl_command_queue_properties qp = 0;
        e = clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL);
        if (e != CL_SUCCESS)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_create_cl: clGetCommandQueueInfo(queue) failed (%s)",
                             skvi_cl_error_name(e));
        /* decode's scratch buffers (query tables, partials) are reused from call to call
         * and rely on commands running in the order they were enqueued */
        if (qp & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
            return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                             "skv_context_create_cl: queue is out-of-order (CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE); "
                             "skv needs an in-order queue");
    }

    skv_context *ctx = NULL;
    st = context_new(desc, &ctx);
    if (st != SKV_OK)
        return st;
    clRetainContext(cl_ctx);
    ctx->cl = cl_ctx;
    ctx->device = device;
    ctx->platform = platform;
    unsigned pi, di;
    locate(platform, device, &pi, &di);
    st = skvi_device_profile_query(ctx->alloc, platform, device, pi, di, &ctx->profile, NULL);
    if (st == SKV_OK && queue) {
        cl_command_queue_properties qp = 0;
        clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL);
        ctx->profiling = (qp & CL_QUEUE_PROFILING_ENABLE) != 0;
        clRetainCommandQueue(queue);
        ctx->queue = queue;
    } else if (st == SKV_OK) {
        st = make_queue(ctx, &ctx->queue);
    }
    if (st == SKV_OK)
        st = make_queue(ctx, &ctx->transfer);
    if (st == SKV_OK)
        st = make_queue(ctx, &ctx->background);
    if (st == SKV_OK)
        st = skvi_tuning_load(ctx);
    if (st == SKV_OK && desc && desc->build_list)
        st = build_list_setup(ctx, desc->build_list);
    if (st != SKV_OK) {
        skv_context_destroy(ctx);
        return st;
    }
    *out = ctx;
    return SKV_OK;
}

skv_status skvi_check_mem(skv_context *ctx, cl_mem m, size_t offset, size_t bytes, const char *fn, const char *what)
{
    size_t size = 0;
    cl_context owner = NULL;
    cl_int e = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (e == CL_SUCCESS)
        e = clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof owner, &owner, NULL);
    if (e != CL_SUCCESS)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "%s: %s is not a valid cl_mem (%s)", fn, what,
                         skvi_cl_error_name(e));
    if (owner != ctx->cl)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "%s: %s belongs to another cl_context than the skv context's",
                         fn, what);
    if (offset > size || size - offset < bytes)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "%s: %s holds %zu bytes, the call uses %zu from offset %zu", fn,
                         what, size, bytes, offset);
    return SKV_OK;
}

void skv_context_destroy(skv_context *ctx)
{
    if (!ctx)
        return;
    if (ctx->queue)
        clFinish(ctx->queue);
    if (ctx->transfer)
        clFinish(ctx->transfer);
    if (ctx->background)
        clFinish(ctx->background);
    skvi_programs_release(ctx);
    skvi_tuning_release(ctx);
    if (ctx->transfer)
        clReleaseCommandQueue(ctx->transfer);
    if (ctx->background)
        clReleaseCommandQueue(ctx->background);
    if (ctx->queue)
        clReleaseCommandQueue(ctx->queue);
    if (ctx->cl)
        clReleaseContext(ctx->cl);
    const skv_allocator *a = ctx->alloc;
    skv_allocator copy = ctx->allocator_copy; /* the hook lives inside ctx */
    if (a)
        a = &copy;
    skvi_free(a, ctx->cache_dir);
    skvi_free(a, ctx);
}

const char *skv_context_last_error(const skv_context *ctx)
{
    return ctx ? ctx->error : "skv_context_last_error: ctx is NULL";
}

skv_status skv_context_device(const skv_context *ctx, skv_device_profile *out)
{
    skvi_clear_error();
    if (!ctx || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_device: ctx or out is NULL");
    *out = ctx->profile;
    return SKV_OK;
}

skv_status skv_context_get_stats(const skv_context *ctx, skv_context_stats *out)
{
    skvi_clear_error();
    if (!ctx || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_get_stats: ctx or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail((char *)ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_context_get_stats: out->struct_size is %zu, expected %zu",
                         out->struct_size, sizeof *out);
    *out = ctx->stats;
    return SKV_OK;
}

skv_status skv_context_cl_objects(const skv_context *ctx, cl_context *cl_ctx, cl_device_id *device,
                                  cl_command_queue *compute_queue, cl_command_queue *transfer_queue)
{
    skvi_clear_error();
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_cl_objects: ctx is NULL");
    if (cl_ctx)
        *cl_ctx = ctx->cl;
    if (device)
        *device = ctx->device;
    if (compute_queue)
        *compute_queue = ctx->queue;
    if (transfer_queue)
        *transfer_queue = ctx->transfer;
    return SKV_OK;
}

skv_status skv_context_prepare(skv_context *ctx)
{
    skvi_clear_error();
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_prepare: ctx is NULL");
    for (size_t i = 0; i < skvi_context_program_count; i++) {
        cl_program p;
        skv_status st = skvi_program_get(ctx, skvi_context_programs[i].name,
                                         skvi_context_programs[i].defines(ctx), &p);
        if (st != SKV_OK)
            return st;
    }
    return SKV_OK;
}
