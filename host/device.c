/* OpenCL platform/device discovery, device profiles, and device selection
 * (by API or by the SKV_DEVICE environment variable). */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_internal.h"

#define MAX_PLATFORMS 16
#define MAX_DEVICES 32

#ifndef CL_DEVICE_WARP_SIZE_NV
#define CL_DEVICE_WARP_SIZE_NV 0x4003
#endif
#ifndef CL_DEVICE_WAVEFRONT_WIDTH_AMD
#define CL_DEVICE_WAVEFRONT_WIDTH_AMD 0x4043
#endif
#ifndef CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV
#define CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV 0x4000
#define CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV 0x4001
#endif

static const char *const vendor_names[] = {"other", "nvidia", "amd", "intel",
                                           "qualcomm", "arm", "apple", "cpu"};

const char *skv_vendor_class_str(skv_vendor_class v)
{
    return (unsigned)v < sizeof vendor_names / sizeof vendor_names[0] ? vendor_names[v] : "invalid";
}

const char *skv_subgroups_str(skv_subgroups s)
{
    switch (s) {
    case SKV_SUBGROUPS_NONE: return "none";
    case SKV_SUBGROUPS_KHR: return "cl_khr_subgroups";
    case SKV_SUBGROUPS_INTEL: return "cl_intel_subgroups";
    case SKV_SUBGROUPS_NV_PTX: return "nv_ptx";
    }
    return "invalid";
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return 0;
}

/* Whole-word extension test on a space-separated extension list. */
static int has_extension(const char *list, const char *ext)
{
    size_t n = strlen(ext);
    for (const char *p = strstr(list, ext); p; p = strstr(p + 1, ext))
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

static skv_vendor_class classify(cl_device_type type, cl_uint vendor_id, const char *vendor)
{
    if (type & CL_DEVICE_TYPE_CPU)
        return SKV_VENDOR_CPU;
    if (vendor_id == 0x10DE || contains_nocase(vendor, "nvidia"))
        return SKV_VENDOR_NVIDIA;
    if (vendor_id == 0x1002 || contains_nocase(vendor, "advanced micro devices") ||
        contains_nocase(vendor, "amd"))
        return SKV_VENDOR_AMD;
    if (vendor_id == 0x8086 || contains_nocase(vendor, "intel"))
        return SKV_VENDOR_INTEL;
    if (vendor_id == 0x5143 || contains_nocase(vendor, "qualcomm"))
        return SKV_VENDOR_QUALCOMM;
    if (vendor_id == 0x13B5 || contains_nocase(vendor, "arm"))
        return SKV_VENDOR_ARM;
    if (contains_nocase(vendor, "apple"))
        return SKV_VENDOR_APPLE;
    return SKV_VENDOR_OTHER;
}

/* LLVM CPU names by the float width of their widest vectors: AVX-512 (16), AVX2 (8);
 * other x86 names (AVX, SSE) and every other architecture (NEON, ...) get 4. */
static const char *const cpus_16[] = {"avx512", "cascadelake", "cooperlake", "cannonlake", "icelake",
                                      "tigerlake", "rocketlake", "sapphirerapids", "graniterapids",
                                      "emeraldrapids", "knl", "knm", "znver4", "znver5", "x86-64-v4"};
static const char *const cpus_8[] = {"haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
                                     "arrowlake", "lunarlake", "gracemont", "znver1", "znver2", "znver3",
                                     "x86-64-v3", "bdver4"};

/* Floats per vector the kernels are compiled for on a CPU device: the smaller of the
 * native width it reports and what its architecture name implies (PoCL reports the
 * host's width even when it compiles for another CPU). */
static unsigned cpu_vector_floats(const char *arch, unsigned native)
{
    unsigned implied = 0;
    for (size_t i = 0; !implied && i < sizeof cpus_16 / sizeof cpus_16[0]; i++)
        if (contains_nocase(arch, cpus_16[i]))
            implied = 16;
    for (size_t i = 0; !implied && i < sizeof cpus_8 / sizeof cpus_8[0]; i++)
        if (contains_nocase(arch, cpus_8[i]))
            implied = 8;
    if (!implied && *arch)
        implied = 4;
    unsigned w = native >= 16 ? 16 : native >= 8 ? 8 : 4;
    return implied && implied < w ? implied : w;
}

/* The architecture key: PoCL's CPU from "... HSTR: pthread-x86_64-pc-linux-gnu-haswell"
 * (after the target triple), NVIDIA's compute capability, else the device name. */
static void architecture(cl_device_id device, const char *version, const skv_device_profile *p, char *out,
                         size_t n)
{
    const char *h = strstr(version, "HSTR: ");
    if (h) {
        h += 6;
        const char *g = strstr(h, "-gnu-");
        if (g)
            h = g + 5;
        else if (strrchr(h, '-'))
            h = strrchr(h, '-') + 1;
        snprintf(out, n, "%s", h);
        return;
    }
    cl_uint major = 0, minor = 0;
    if (p->vendor_class == SKV_VENDOR_NVIDIA &&
        clGetDeviceInfo(device, CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof major, &major, NULL) == CL_SUCCESS &&
        clGetDeviceInfo(device, CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV, sizeof minor, &minor, NULL) == CL_SUCCESS) {
        snprintf(out, n, "sm_%u%u", major, minor);
        return;
    }
    snprintf(out, n, "%s", p->name);
}

/* Preferred work-group multiple from a trivial kernel, for devices without a vendor
 * query for their SIMD width. 0 when the probe cannot run. */
static size_t probe_wg_multiple(cl_device_id device)
{
    static const char *src = "__kernel void skv_probe(__global int *a) { a[get_global_id(0)] = 0; }";
    size_t multiple = 0;
    cl_int err;
    cl_context c = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    if (err != CL_SUCCESS)
        return 0;
    cl_program p = clCreateProgramWithSource(c, 1, &src, NULL, &err);
    if (err == CL_SUCCESS && clBuildProgram(p, 1, &device, "", NULL, NULL) == CL_SUCCESS) {
        cl_kernel k = clCreateKernel(p, "skv_probe", &err);
        if (err == CL_SUCCESS) {
            clGetKernelWorkGroupInfo(k, device, CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE,
                                     sizeof multiple, &multiple, NULL);
            clReleaseKernel(k);
        }
    }
    if (p)
        clReleaseProgram(p);
    clReleaseContext(c);
    return multiple;
}

skv_status skvi_device_profile_query(const skv_allocator *a, cl_platform_id platform,
                                     cl_device_id device, unsigned pi, unsigned di,
                                     skv_device_profile *out, char *err)
{
    memset(out, 0, sizeof *out);
    out->platform_index = pi;
    out->device_index = di;
    char cversion[SKV_NAME_MAX] = "", dversion[SKV_NAME_MAX] = "";
    char *ext = NULL;
    size_t ext_size = 0;
    cl_device_type type = 0;
    cl_uint vendor_id = 0, cu = 0;
    cl_ulong local = 0, global = 0, max_alloc = 0;
    cl_int e = CL_SUCCESS;
    /* Strings are truncated to SKV_NAME_MAX - 1 (clGetXInfo fails on a short buffer,
     * so query the size first). */
#define STR(getter, obj, param, dst)                                                         \
    do {                                                                                     \
        size_t n_ = 0;                                                                       \
        e = getter(obj, param, 0, NULL, &n_);                                                \
        if (e == CL_SUCCESS && n_ <= sizeof(dst))                                            \
            e = getter(obj, param, sizeof(dst), dst, NULL);                                  \
        else if (e == CL_SUCCESS) {                                                          \
            char *t_ = skvi_alloc(a, n_);                                                           \
            e = t_ ? getter(obj, param, n_, t_, NULL) : CL_OUT_OF_HOST_MEMORY;               \
            if (t_) {                                                                        \
                snprintf(dst, sizeof(dst), "%s", t_);                                        \
                skvi_free(a, t_);                                                            \
            }                                                                                \
        }                                                                                    \
        if (e != CL_SUCCESS)                                                                 \
            return skvi_cl_fail(err, e, "clGet*Info(" #param ")");                           \
    } while (0)
    STR(clGetPlatformInfo, platform, CL_PLATFORM_NAME, out->platform);
    STR(clGetPlatformInfo, platform, CL_PLATFORM_VERSION, out->platform_version);
    STR(clGetDeviceInfo, device, CL_DEVICE_NAME, out->name);
    STR(clGetDeviceInfo, device, CL_DEVICE_VENDOR, out->vendor);
    STR(clGetDeviceInfo, device, CL_DRIVER_VERSION, out->driver_version);
    STR(clGetDeviceInfo, device, CL_DEVICE_OPENCL_C_VERSION, cversion);
    STR(clGetDeviceInfo, device, CL_DEVICE_VERSION, dversion);
#undef STR
#define NUM(param, dst)                                                                      \
    do {                                                                                     \
        e = clGetDeviceInfo(device, param, sizeof(dst), &(dst), NULL);                       \
        if (e != CL_SUCCESS)                                                                 \
            return skvi_cl_fail(err, e, "clGetDeviceInfo(" #param ")");                      \
    } while (0)
    NUM(CL_DEVICE_TYPE, type);
    NUM(CL_DEVICE_VENDOR_ID, vendor_id);
    NUM(CL_DEVICE_MAX_COMPUTE_UNITS, cu);
    NUM(CL_DEVICE_LOCAL_MEM_SIZE, local);
    NUM(CL_DEVICE_GLOBAL_MEM_SIZE, global);
    NUM(CL_DEVICE_MAX_MEM_ALLOC_SIZE, max_alloc);
    NUM(CL_DEVICE_MAX_WORK_GROUP_SIZE, out->max_work_group_size);
    NUM(CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT, out->native_float_width);
#undef NUM
    e = clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, 0, NULL, &ext_size);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(err, e, "clGetDeviceInfo(CL_DEVICE_EXTENSIONS)");
    ext = skvi_alloc(a, ext_size + 1);
    if (!ext)
        return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "out of memory reading device extensions");
    e = clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, ext_size, ext, NULL);
    ext[ext_size] = '\0';
    if (e != CL_SUCCESS) {
        skvi_free(a, ext);
        return skvi_cl_fail(err, e, "clGetDeviceInfo(CL_DEVICE_EXTENSIONS)");
    }

    out->vendor_class = classify(type, vendor_id, out->vendor);
    out->is_gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
    if (sscanf(cversion, "OpenCL C %d.%d", &out->opencl_c_major, &out->opencl_c_minor) != 2) {
        out->opencl_c_major = 1; /* every OpenCL 1.x+ device compiles OpenCL C 1.1 */
        out->opencl_c_minor = 1;
    }
    out->fp16 = has_extension(ext, "cl_khr_fp16");
    out->fp64 = has_extension(ext, "cl_khr_fp64");
    if (out->vendor_class == SKV_VENDOR_NVIDIA)
        out->subgroups = SKV_SUBGROUPS_NV_PTX; /* NVIDIA's OpenCL compiles inline PTX */
    else if (has_extension(ext, "cl_intel_subgroups"))
        out->subgroups = SKV_SUBGROUPS_INTEL;
    else if (has_extension(ext, "cl_khr_subgroups"))
        out->subgroups = SKV_SUBGROUPS_KHR;
    skvi_free(a, ext);
    out->compute_units = cu;
    out->local_mem_bytes = local;
    out->global_mem_bytes = global;
    out->max_alloc_bytes = max_alloc;

    cl_uint width = 0;
    if (out->vendor_class == SKV_VENDOR_NVIDIA &&
        clGetDeviceInfo(device, CL_DEVICE_WARP_SIZE_NV, sizeof width, &width, NULL) == CL_SUCCESS)
        out->preferred_wg_multiple = width;
    else if (out->vendor_class == SKV_VENDOR_AMD &&
             clGetDeviceInfo(device, CL_DEVICE_WAVEFRONT_WIDTH_AMD, sizeof width, &width, NULL) == CL_SUCCESS)
        out->preferred_wg_multiple = width;
    if (out->preferred_wg_multiple == 0)
        out->preferred_wg_multiple = probe_wg_multiple(device);
    if (out->preferred_wg_multiple == 0)
        out->preferred_wg_multiple = 1;
    architecture(device, dversion, out, out->architecture, sizeof out->architecture);
    if (type & CL_DEVICE_TYPE_CPU)
        out->cpu_vector_floats = cpu_vector_floats(out->architecture, out->native_float_width);
    return SKV_OK;
}

/* Device ids of every platform, in listing order. */
typedef struct device_table {
    cl_platform_id platform[MAX_PLATFORMS * MAX_DEVICES];
    cl_device_id device[MAX_PLATFORMS * MAX_DEVICES];
    unsigned pi[MAX_PLATFORMS * MAX_DEVICES], di[MAX_PLATFORMS * MAX_DEVICES];
    size_t count;
} device_table;

/* PoCL 3.1 crashes when two threads make a process's first OpenCL calls at once: the
 * first enumeration runs once, and every other waits for it. */
static pthread_once_t first_calls_once = PTHREAD_ONCE_INIT;

static void first_calls(void)
{
    cl_platform_id platforms[MAX_PLATFORMS];
    cl_uint np = 0;
    if (clGetPlatformIDs(MAX_PLATFORMS, platforms, &np) != CL_SUCCESS)
        return;
    for (cl_uint p = 0; p < np && p < MAX_PLATFORMS; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd);
    }
}

void skvi_opencl_first_calls(void) { pthread_once(&first_calls_once, first_calls); }

static skv_status enumerate(device_table *t, char *err)
{
    cl_platform_id platforms[MAX_PLATFORMS];
    cl_uint np = 0;
    t->count = 0;
    skvi_opencl_first_calls();
    cl_int e = clGetPlatformIDs(MAX_PLATFORMS, platforms, &np);
    if (e == -1001 /* CL_PLATFORM_NOT_FOUND_KHR: no ICD installed */ || (e == CL_SUCCESS && np == 0))
        return SKV_OK;
    if (e != CL_SUCCESS)
        return skvi_cl_fail(err, e, "clGetPlatformIDs");
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        e = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd);
        if (e == CL_DEVICE_NOT_FOUND)
            continue;
        if (e != CL_SUCCESS)
            return skvi_cl_fail(err, e, "clGetDeviceIDs");
        if (nd > MAX_DEVICES)
            nd = MAX_DEVICES;
        for (cl_uint d = 0; d < nd; d++) {
            t->platform[t->count] = platforms[p];
            t->device[t->count] = devs[d];
            t->pi[t->count] = p;
            t->di[t->count] = d;
            t->count++;
        }
    }
    return SKV_OK;
}

skv_status skv_devices_list(skv_device_profile *out, size_t capacity, size_t *count)
{
    skvi_clear_error();
    if (!count || (capacity > 0 && !out))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "skv_devices_list: count is NULL, or out is NULL with capacity > 0");
    *count = 0;
    device_table t;
    skv_status st = enumerate(&t, NULL);
    for (size_t i = 0; st == SKV_OK && i < t.count && i < capacity; i++)
        st = skvi_device_profile_query(NULL, t.platform[i], t.device[i], t.pi[i], t.di[i], &out[i], NULL);
    if (st == SKV_OK)
        *count = t.count;
    return st;
}

/* Index into t of the device `sel` picks, or -1. Selection looks only at device type
 * and vendor, so it needs no full profile. */
/* Reads "P:D" (decimal digits only, each below 2^32) into p and d. */
static int parse_index_pair(const char *sel, unsigned *p, unsigned *d)
{
    unsigned long long v[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        if (*sel < '0' || *sel > '9')
            return 0;
        for (; *sel >= '0' && *sel <= '9'; sel++) {
            v[i] = v[i] * 10 + (unsigned)(*sel - '0');
            if (v[i] > 0xFFFFFFFFull)
                return 0;
        }
        if (*sel++ != (i == 0 ? ':' : '\0'))
            return 0;
    }
    *p = (unsigned)v[0];
    *d = (unsigned)v[1];
    return 1;
}

static long pick(const device_table *t, const char *sel)
{
    unsigned p, d;
    if (parse_index_pair(sel, &p, &d)) {
        for (size_t i = 0; i < t->count; i++)
            if (t->pi[i] == p && t->di[i] == d)
                return (long)i;
        return -1;
    }
    int want_default = strcmp(sel, "default") == 0;
    cl_device_type want_type = 0;
    if (strcmp(sel, "cpu") == 0)
        want_type = CL_DEVICE_TYPE_CPU;
    else if (strcmp(sel, "gpu") == 0)
        want_type = CL_DEVICE_TYPE_GPU;
    long want_class = -1;
    for (size_t v = 1; v < sizeof vendor_names / sizeof vendor_names[0]; v++)
        if (strcmp(sel, vendor_names[v]) == 0)
            want_class = (long)v;
    if (!want_default && !want_type && want_class < 0)
        return -2; /* not a selector at all */

    long first_cpu = -1;
    for (size_t i = 0; i < t->count; i++) {
        cl_device_type type = 0;
        cl_uint vid = 0;
        char vendor[SKV_NAME_MAX] = "";
        clGetDeviceInfo(t->device[i], CL_DEVICE_TYPE, sizeof type, &type, NULL);
        clGetDeviceInfo(t->device[i], CL_DEVICE_VENDOR_ID, sizeof vid, &vid, NULL);
        if (clGetDeviceInfo(t->device[i], CL_DEVICE_VENDOR, sizeof vendor, vendor, NULL) != CL_SUCCESS)
            vendor[0] = '\0';
        if (want_default) {
            if (type & CL_DEVICE_TYPE_GPU)
                return (long)i;
            if ((type & CL_DEVICE_TYPE_CPU) && first_cpu < 0)
                first_cpu = (long)i;
        } else if ((want_type && (type & want_type)) ||
                   (want_class >= 0 && (long)classify(type, vid, vendor) == want_class)) {
            return (long)i;
        }
    }
    if (want_default)
        return first_cpu >= 0 ? first_cpu : (t->count > 0 ? 0 : -1);
    return -1;
}

skv_status skvi_device_resolve(const skv_allocator *a, const char *selector,
                               skv_device_profile *prof, cl_platform_id *platform,
                               cl_device_id *device, char *err)
{
    const char *source = "selector";
    if (!selector || !selector[0]) {
        const char *env = getenv("SKV_DEVICE");
        if (env && env[0]) {
            selector = env;
            source = "SKV_DEVICE";
        } else {
            selector = "default";
        }
    }
    device_table table, *t = &table;
    skv_status st = enumerate(t, err);
    if (st != SKV_OK)
        return st;
    long i = pick(t, selector);
    if (i < 0) {
        char names[1024] = "";
        size_t used = 0;
        for (size_t k = 0; k < t->count && used < sizeof names - 1; k++) {
            char name[SKV_NAME_MAX] = "?";
            clGetDeviceInfo(t->device[k], CL_DEVICE_NAME, sizeof name, name, NULL);
            int w = snprintf(names + used, sizeof names - used, "%s%u:%u %s", k ? ", " : "",
                             t->pi[k], t->di[k], name);
            used += w > 0 ? (size_t)w : 0;
        }
        st = skvi_fail(err, i == -2 ? SKV_ERR_INVALID_ARG : SKV_ERR_NO_DEVICE,
                       "%s '%s' %s (use default, cpu, gpu, nvidia, amd, intel, qualcomm, arm, "
                       "apple, or P:D); devices: %s",
                       source, selector, i == -2 ? "is not a device selector" : "matches no OpenCL device",
                       t->count ? names : "none");
        return st;
    }
    *platform = t->platform[i];
    *device = t->device[i];
    return skvi_device_profile_query(a, t->platform[i], t->device[i], t->pi[i], t->di[i], prof, err);
}

skv_status skv_device_select(const char *selector, skv_device_profile *out)
{
    skvi_clear_error();
    if (!out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_device_select: out is NULL");
    cl_platform_id p;
    cl_device_id d;
    return skvi_device_resolve(NULL, selector, out, &p, &d, NULL);
}
