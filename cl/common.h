/* Prepended to every skv program. Vendor and feature quirks live here, in one place;
 * the host defines SKV_VENDOR_<CLASS>, SKV_HAS_FP16, SKV_SUBGROUPS and SKV_WG_MULTIPLE
 * from the device profile, and tuning parameters from the tuning database. */
#ifndef SKV_CL_COMMON_H
#define SKV_CL_COMMON_H

#if SKV_HAS_FP16
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#endif

/* fp16 is a storage format everywhere: load with vload_half*, compute in float (NVIDIA's
 * OpenCL has no cl_khr_fp16 arithmetic, and float accumulation is what we want anyway). */
#define SKV_LOAD_HALF(p, i) vload_half((i), (p))
#define SKV_STORE_HALF(v, p, i) vstore_half_rte((v), (i), (p))

/* Full unrolling of short constant loops (clang-based compilers: PoCL, NVIDIA, AMD,
 * Intel all accept it). */
#define SKV_UNROLL _Pragma("unroll")

/* Page pools. A pool is up to 8 chunk buffers (pools grow by whole chunks without
 * moving pages); page id p lives in chunk p / pages_per_chunk at slot p % pages_per_chunk.
 * Kernels that touch pages take SKV_POOL_PARAMS and address a page with SKV_PAGE(id,
 * bytes_per_page). Unused chunk arguments alias chunk 0. */
#define SKV_POOL_PARAMS                                                                    \
    __global uchar *pool0, __global uchar *pool1, __global uchar *pool2, __global uchar *pool3, \
        __global uchar *pool4, __global uchar *pool5, __global uchar *pool6,               \
        __global uchar *pool7, uint pages_per_chunk

inline __global uchar *skv_pool_chunk(__global uchar *p0, __global uchar *p1, __global uchar *p2,
                                      __global uchar *p3, __global uchar *p4, __global uchar *p5,
                                      __global uchar *p6, __global uchar *p7, uint chunk)
{
    switch (chunk) {
    case 0: return p0;
    case 1: return p1;
    case 2: return p2;
    case 3: return p3;
    case 4: return p4;
    case 5: return p5;
    case 6: return p6;
    default: return p7;
    }
}

#define SKV_PAGE(id, page_bytes)                                                           \
    (skv_pool_chunk(pool0, pool1, pool2, pool3, pool4, pool5, pool6, pool7,                \
                    (id) / pages_per_chunk) +                                              \
     (size_t)((id) % pages_per_chunk) * (size_t)(page_bytes))

/* Inputs in any of skv_dtype (SKV_DTYPE_F32 0, F16 1, BF16 2) read as float. */
#define SKV_DTYPE_F32 0
#define SKV_DTYPE_F16 1
#define SKV_DTYPE_BF16 2
#define SKV_LOAD_AS_FLOAT(dtype, p, i)                                                     \
    ((dtype) == SKV_DTYPE_F16   ? vload_half((i), (__global const half *)(p))              \
     : (dtype) == SKV_DTYPE_BF16 ? as_float((uint)((__global const ushort *)(p))[i] << 16) \
                                 : ((__global const float *)(p))[i])

#endif /* SKV_CL_COMMON_H */
