/* Program build with device-profile options and tuning #defines, served from the
 * context's table, then the on-disk binary cache, then the compiler. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_internal.h"

/* Prepended to every program, in this order: vendor quirks and helpers, then the page
 * layouts (shared with the host's C). A program is one source file or several joined
 * by '+' ("decode_ada.h+decode_cpu.cl"), compiled as one text after these. */
static const char *const prelude[] = {"common.h", "layout.h"};
#define PRELUDE (sizeof prelude / sizeof prelude[0])
#define MAX_PARTS 4

/* Options every program of this device is built with. */
static void base_options(const skv_device_profile *p, const char *defines, char *out, size_t n)
{
    int major = p->opencl_c_major, minor = p->opencl_c_minor;
    if (major >= 3) {
        major = 3;
        minor = 0;
    } else if (major == 2) {
        minor = 0;
    }
    char vendor[32];
    snprintf(vendor, sizeof vendor, "%s", skv_vendor_class_str(p->vendor_class));
    for (char *c = vendor; *c; c++)
        if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 'a' + 'A');
    /* $SKV_BUILD_OPTIONS: extra options for every program (tests, simulators: e.g.
     * -cl-denorms-are-zero); part of the options, so of the program cache's key too */
    const char *extra = getenv("SKV_BUILD_OPTIONS");
    snprintf(out, n,
             "-cl-std=CL%d.%d -DSKV_VENDOR_%s=1 -DSKV_HAS_FP16=%d -DSKV_SUBGROUPS=%d "
             "-DSKV_WG_MULTIPLE=%zu %s%s%s",
             major, minor, vendor, p->fp16, (int)p->subgroups, p->preferred_wg_multiple,
             defines ? defines : "", extra && *extra ? " " : "", extra && *extra ? extra : "");
}

static skv_status build_log_fail(skv_context *ctx, cl_program prog, const char *name,
                                 const char *options, cl_int e)
{
    char log[SKVI_ERROR_MAX - 256] = "";
    size_t n = 0;
    if (clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS) {
        if (n <= sizeof log) {
            clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, sizeof log, log, NULL);
        } else {
            char *big = skvi_alloc(ctx->alloc, n);
            if (big && clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, n, big, NULL) ==
                           CL_SUCCESS)
                snprintf(log, sizeof log, "%s", big);
            skvi_free(ctx->alloc, big);
        }
    }
    return skvi_fail(ctx->error, SKV_ERR_BUILD, "building %s (%s) failed: %s\n%s", name, options,
                     skvi_cl_error_name(e), log);
}

/* Cache key: everything that changes the binary. */
static void cache_key(const skv_context *ctx, const skvi_kernel_source *const *srcs, size_t n, const char *options,
                      char key[33])
{
    char material[4 * SKV_NAME_MAX + 1024 + (PRELUDE + MAX_PARTS) * 66];
    int len = 0;
    for (size_t i = 0; i < n; i++)
        len += snprintf(material + len, sizeof material - (size_t)len, "%s\n", srcs[i]->sha256);
    int m = snprintf(material + len, sizeof material - (size_t)len, "%s\n%s\n%s\n%s\n%s\n%s", options,
                     ctx->profile.name, ctx->profile.driver_version, ctx->profile.platform,
                     ctx->profile.platform_version, skv_version_string());
    len = m > 0 && (size_t)(len + m) < sizeof material ? len + m : (int)sizeof material - 1;
    skvi_hash128_hex(material, (size_t)len, key);
}

/* The text a program is compiled from: each source after a #line naming it. */
static void compose(const skvi_kernel_source *const *srcs, size_t n, char lines[][160], const char **parts)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(lines[i], 160, "\n#line 1 \"%s\"\n", srcs[i]->name);
        parts[2 * i] = lines[i];
        parts[2 * i + 1] = srcs[i]->text;
    }
}

static skv_status from_source(skv_context *ctx, const skvi_kernel_source *const *srcs, size_t n, const char *options,
                              cl_program *out)
{
    char lines[PRELUDE + MAX_PARTS][160];
    const char *parts[2 * (PRELUDE + MAX_PARTS)];
    compose(srcs, n, lines, parts);
    cl_int e;
    cl_program prog = clCreateProgramWithSource(ctx->cl, (cl_uint)(2 * n), parts, NULL, &e);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "clCreateProgramWithSource");
    e = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
    if (e != CL_SUCCESS) {
        skv_status st = build_log_fail(ctx, prog, srcs[n - 1]->name, options, e);
        clReleaseProgram(prog);
        return st;
    }
    ctx->stats.programs_built++;
    *out = prog;
    return SKV_OK;
}

/* Loads a cached binary; 0 when absent or unusable (counted as rejected). */
static int from_cache(skv_context *ctx, const char *key, const char *options, cl_program *out)
{
    unsigned char *bin = NULL;
    size_t size = 0;
    skvi_cache_result r = skvi_cache_read(ctx->alloc, ctx->cache_dir, key, &bin, &size);
    if (r == SKVI_CACHE_CORRUPT)
        ctx->stats.cache_rejected++;
    if (r != SKVI_CACHE_HIT)
        return 0;
    cl_int status = CL_SUCCESS, e;
    const unsigned char *bins[1] = {bin};
    cl_program prog = clCreateProgramWithBinary(ctx->cl, 1, &ctx->device, &size, bins, &status, &e);
    skvi_free(ctx->alloc, bin);
    if (e == CL_SUCCESS && status == CL_SUCCESS)
        e = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
    if (e != CL_SUCCESS || status != CL_SUCCESS) {
        if (prog)
            clReleaseProgram(prog);
        ctx->stats.cache_rejected++; /* e.g. a driver update the key did not catch */
        return 0;
    }
    ctx->stats.programs_from_cache++;
    *out = prog;
    return 1;
}

static void to_cache(skv_context *ctx, const char *key, cl_program prog)
{
    size_t size = 0;
    int ok = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) == CL_SUCCESS &&
        size > 0) {
        unsigned char *bin = skvi_alloc(ctx->alloc, size);
        unsigned char *bins[1] = {bin};
        ok = bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS &&
             skvi_cache_write(ctx->alloc, ctx->cache_dir, key, bin, size) == 0;
        skvi_free(ctx->alloc, bin);
    }
    if (ok)
        ctx->stats.cache_written++;
    else
        ctx->stats.cache_write_failed++; /* the cache is an optimisation: not an error */
}

static skv_status table_add(skv_context *ctx, const char *name, const char *defines, cl_program prog)
{
    if (skvi_array_reserve(ctx->alloc, (void **)&ctx->programs, &ctx->program_capacity, ctx->program_count,
                           ctx->program_count + 1, sizeof *ctx->programs, 8) != 0)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "program table: out of memory");
    skvi_program *p = &ctx->programs[ctx->program_count];
    p->name = skvi_strdup(ctx->alloc, name);
    p->defines = skvi_strdup(ctx->alloc, defines);
    if (!p->name || !p->defines) {
        skvi_free(ctx->alloc, p->name);
        skvi_free(ctx->alloc, p->defines);
        p->name = p->defines = NULL;
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "program table: out of memory");
    }
    p->program = prog;
    ctx->program_count++;
    return SKV_OK;
}

/* The sources of program `name` (the prelude, then its '+'-joined parts) and the options
 * it builds with on this device. */
static skv_status program_inputs(skv_context *ctx, const char *name, const char *defines,
                                 const skvi_kernel_source **srcs, size_t *count, char *options, size_t size)
{
    size_t n = 0;
    for (; n < PRELUDE; n++)
        if (!(srcs[n] = skvi_kernel_source_find(prelude[n])))
            return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "no embedded kernel source named %s", prelude[n]);
    for (const char *part = name; *part;) {
        size_t len = strcspn(part, "+");
        char file[128];
        if (n == PRELUDE + MAX_PARTS || len >= sizeof file)
            return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "program %s: too many or too long parts", name);
        memcpy(file, part, len);
        file[len] = '\0';
        if (!(srcs[n++] = skvi_kernel_source_find(file)))
            return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "no embedded kernel source named %s", file);
        part += len + (part[len] == '+');
    }
    *count = n;
    base_options(&ctx->profile, defines, options, size);
    return SKV_OK;
}

/* ---- build-list mode: programs recorded, kernels stood in for --------------------------- */

/* The record of program `name` built with `defines` (its sources and options as
 * program_inputs makes them), added with its source text when new. */
static skv_status record_program(skv_context *ctx, const char *name, const char *defines, skvi_build_record **out)
{
    const skvi_kernel_source *srcs[PRELUDE + MAX_PARTS];
    size_t n;
    char options[1024];
    skv_status st = program_inputs(ctx, name, defines, srcs, &n, options, sizeof options);
    if (st != SKV_OK)
        return st;
    for (size_t i = 0; i < ctx->record_count; i++)
        if (strcmp(ctx->records[i].name, name) == 0 && strcmp(ctx->records[i].options, options) == 0) {
            *out = &ctx->records[i];
            return SKV_OK;
        }
    if (skvi_array_reserve(ctx->alloc, (void **)&ctx->records, &ctx->record_capacity, ctx->record_count,
                           ctx->record_count + 1, sizeof *ctx->records, 16) != 0)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "build list: out of memory");
    char lines[PRELUDE + MAX_PARTS][160];
    const char *parts[2 * (PRELUDE + MAX_PARTS)];
    compose(srcs, n, lines, parts);
    size_t len = 1;
    for (size_t i = 0; i < 2 * n; i++)
        len += strlen(parts[i]);
    skvi_build_record *r = &ctx->records[ctx->record_count];
    r->name = skvi_strdup(ctx->alloc, name);
    r->options = skvi_strdup(ctx->alloc, options);
    r->kernels = skvi_strdup(ctx->alloc, "");
    r->source = skvi_alloc(ctx->alloc, len);
    if (!r->name || !r->options || !r->kernels || !r->source) {
        skvi_build_record_free(ctx, r);
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "build list: out of memory");
    }
    r->source[0] = '\0';
    for (size_t i = 0, at = 0; i < 2 * n; i++) {
        size_t m = strlen(parts[i]);
        memcpy(r->source + at, parts[i], m + 1);
        at += m;
    }
    ctx->record_count++;
    *out = r;
    return SKV_OK;
}

/* Adds `kernel` to the record's kernels (once). */
static skv_status record_kernel(skv_context *ctx, skvi_build_record *r, const char *kernel)
{
    size_t have = strlen(r->kernels), klen = strlen(kernel);
    for (const char *k = r->kernels; *k;) { /* space-separated names */
        size_t len = strcspn(k, " ");
        if (len == klen && strncmp(k, kernel, len) == 0)
            return SKV_OK;
        k += len + (k[len] == ' ');
    }
    char *grown = skvi_alloc(ctx->alloc, have + klen + 2);
    if (!grown)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "build list: out of memory");
    snprintf(grown, have + klen + 2, "%s%s%s", r->kernels, have ? " " : "", kernel);
    skvi_free(ctx->alloc, r->kernels);
    r->kernels = grown;
    return SKV_OK;
}

void skvi_build_record_free(skv_context *ctx, skvi_build_record *r)
{
    skvi_free(ctx->alloc, r->name);
    skvi_free(ctx->alloc, r->options);
    skvi_free(ctx->alloc, r->kernels);
    skvi_free(ctx->alloc, r->source);
    memset(r, 0, sizeof *r);
}

/* A stand-in kernel named `kernel` (no arguments, no body) from a program of its own, so
 * the host's kernel checks and releases run as usual while nothing real is compiled. */
static skv_status stand_in_kernel(skv_context *ctx, const char *kernel, cl_kernel *out)
{
    cl_program prog = NULL;
    for (size_t i = 0; i < ctx->program_count && !prog; i++)
        if (strcmp(ctx->programs[i].name, "@stand-in") == 0 && strcmp(ctx->programs[i].defines, kernel) == 0)
            prog = ctx->programs[i].program;
    cl_int e = CL_SUCCESS;
    if (!prog) {
        char text[192];
        snprintf(text, sizeof text, "__kernel void %.128s(void) {}\n", kernel);
        const char *t = text;
        prog = clCreateProgramWithSource(ctx->cl, 1, &t, NULL, &e);
        if (e != CL_SUCCESS)
            return skvi_cl_fail(ctx->error, e, "build list: clCreateProgramWithSource");
        e = clBuildProgram(prog, 1, &ctx->device, "", NULL, NULL);
        skv_status st = e == CL_SUCCESS ? table_add(ctx, "@stand-in", kernel, prog)
                                        : skvi_cl_fail(ctx->error, e, "build list: clBuildProgram");
        if (st != SKV_OK) {
            clReleaseProgram(prog);
            return st;
        }
    }
    *out = clCreateKernel(prog, kernel, &e);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "build list: clCreateKernel");
}

/* ---- programs ------------------------------------------------------------------------------ */

skv_status skvi_program_get(skv_context *ctx, const char *name, const char *defines, cl_program *out)
{
    if (!defines)
        defines = "";
    if (ctx->build_list) {
        skvi_build_record *r;
        *out = NULL;
        return record_program(ctx, name, defines, &r);
    }
    for (size_t i = 0; i < ctx->program_count; i++)
        if (strcmp(ctx->programs[i].name, name) == 0 && strcmp(ctx->programs[i].defines, defines) == 0) {
            *out = ctx->programs[i].program;
            return SKV_OK;
        }
    const skvi_kernel_source *srcs[PRELUDE + MAX_PARTS];
    size_t n;
    char options[1024];
    skv_status st = program_inputs(ctx, name, defines, srcs, &n, options, sizeof options);
    if (st != SKV_OK)
        return st;
    char key[33];
    cache_key(ctx, srcs, n, options, key);

    cl_program prog = NULL;
    if (!ctx->cache_dir || !from_cache(ctx, key, options, &prog)) {
        st = from_source(ctx, srcs, n, options, &prog);
        if (st != SKV_OK)
            return st;
        if (ctx->cache_dir)
            to_cache(ctx, key, prog);
    }
    st = table_add(ctx, name, defines, prog);
    if (st != SKV_OK) {
        clReleaseProgram(prog);
        return st;
    }
    *out = prog;
    return SKV_OK;
}

skv_status skvi_kernel_create(skv_context *ctx, const char *source, const char *defines,
                              const char *kernel, cl_kernel *out)
{
    if (ctx->build_list) {
        skvi_build_record *r;
        skv_status st = record_program(ctx, source, defines ? defines : "", &r);
        if (st == SKV_OK)
            st = record_kernel(ctx, r, kernel);
        return st == SKV_OK ? stand_in_kernel(ctx, kernel, out) : st;
    }
    cl_program prog;
    skv_status st = skvi_program_get(ctx, source, defines, &prog);
    if (st != SKV_OK)
        return st;
    cl_int e;
    *out = clCreateKernel(prog, kernel, &e);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "clCreateKernel");
    return SKV_OK;
}

void skvi_programs_release(skv_context *ctx)
{
    for (size_t i = 0; i < ctx->program_count; i++) {
        clReleaseProgram(ctx->programs[i].program);
        skvi_free(ctx->alloc, ctx->programs[i].name);
        skvi_free(ctx->alloc, ctx->programs[i].defines);
    }
    skvi_free(ctx->alloc, ctx->programs);
    ctx->programs = NULL;
    ctx->program_count = ctx->program_capacity = 0;
    for (size_t i = 0; i < ctx->record_count; i++)
        skvi_build_record_free(ctx, &ctx->records[i]);
    skvi_free(ctx->alloc, ctx->records);
    ctx->records = NULL;
    ctx->record_count = ctx->record_capacity = 0;
}
