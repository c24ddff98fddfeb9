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

/* Software prefetch of global memory, a hint that never waits for the data: clang-based
 * CPU compilers (PoCL) have __builtin_prefetch, here with locality 1 (prefetcht2 on x86:
 * into L2; into L1, a 33 KB F16 page evicted the one in use), whereas PoCL's OpenCL
 * prefetch() does nothing; elsewhere the OpenCL builtin. */
#if defined(SKV_NO_PREFETCH) /* simulators without llvm.prefetch (oclgrind) */
#define SKV_PREFETCH(p) ((void)0)
#elif defined(__has_builtin)
#if __has_builtin(__builtin_prefetch)
#define SKV_PREFETCH(p) __builtin_prefetch((p), 0, 1)
#endif
#endif
#ifndef SKV_PREFETCH
#define SKV_PREFETCH(p) prefetch((__global const uchar *)(p), 64)
#endif

/* Page pools. A pool is up to 8 chunk buffers (pools grow by whole chunks without
 * moving pages); page id p lives in chunk p / per_chunk at index p % per_chunk. Kernels
 * that touch pages take SKV_POOL_PARAMS_P(name) (8 buffers + name_per_chunk) and address
 * a page with SKV_PAGE_P(name, id, bytes_per_page); SKV_POOL_PARAMS and SKV_PAGE are the
 * one-pool spelling. Unused chunk arguments alias chunk 0. */
#define SKV_POOL_PARAMS_P(x)                                                               \
    __global uchar *x##0, __global uchar *x##1, __global uchar *x##2, __global uchar *x##3, \
        __global uchar *x##4, __global uchar *x##5, __global uchar *x##6, __global uchar *x##7, \
        uint x##_per_chunk

static inline __global uchar *skv_pool_chunk(__global uchar *p0, __global uchar *p1, __global uchar *p2,
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

#define SKV_PAGE_P(x, id, page_bytes)                                                      \
    (skv_pool_chunk(x##0, x##1, x##2, x##3, x##4, x##5, x##6, x##7, (id) / x##_per_chunk) + \
     (size_t)((id) % x##_per_chunk) * (size_t)(page_bytes))
#define SKV_POOL_PARAMS SKV_POOL_PARAMS_P(pool)
#define SKV_PAGE(id, page_bytes) SKV_PAGE_P(pool, id, page_bytes)

/* fp16 bit patterns from float with integer math, identical to src/half.c (the C
 * references round exactly like this, on every device). */
static inline ushort skv_f32_to_f16_rte(float f)
{
    uint x = as_uint(f);
    uint sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xFFu, man = x & 0x7FFFFFu;
    if (exp == 0xFFu)
        return (ushort)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (ushort)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10)
            return (ushort)sign;
        man |= 0x800000u;
        uint shift = (uint)(14 - e);
        uint hm = man >> shift, rem = man & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (hm & 1u)))
            hm++;
        return (ushort)(sign | hm);
    }
    uint h = sign | ((uint)e << 10) | (man >> 13), rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (ushort)h;
}

static inline float skv_f16_to_f32(ushort h)
{
    uint sign = (uint)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0) {
        if (man == 0)
            return as_float(sign);
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        return as_float(sign | ((uint)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13));
    }
    if (exp == 31)
        return as_float(sign | 0x7F800000u | (man << 13));
    return as_float(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

/* Directed rounding (up: toward +inf, else toward -inf), as src/half.c. */
static inline ushort skv_f32_to_f16_dir(float f, int up)
{
    ushort h = skv_f32_to_f16_rte(f);
    float back = skv_f16_to_f32(h);
    if (back != back || back == f || ((back < f) != up))
        return h;
    if ((h & 0x7FFFu) == 0)
        return (ushort)(f > 0.0f ? 0x0001u : 0x8001u);
    return (ushort)(((f > 0.0f) == up) ? h + 1 : h - 1);
}

/* Inputs in any of skv_dtype (SKV_DTYPE_F32 0, F16 1, BF16 2) read as float. */
#define SKV_DTYPE_F32 0
#define SKV_DTYPE_F16 1
#define SKV_DTYPE_BF16 2
#define SKV_LOAD_AS_FLOAT(dtype, p, i)                                                     \
    ((dtype) == SKV_DTYPE_F16   ? vload_half((i), (__global const half *)(p))              \
     : (dtype) == SKV_DTYPE_BF16 ? as_float((uint)((__global const ushort *)(p))[i] << 16) \
                                 : ((__global const float *)(p))[i])

/* ADA (ada_encode.cl, score.cl): the Walsh–Hadamard butterflies over y[n] (n a power of
 * two, no scaling), in the order of the C reference (src/ada.c), so results match it
 * bit for bit. */
static inline void skv_butterflies(float *y, uint n)
{
    for (uint h = 1; h < n; h *= 2)
        for (uint i = 0; i < n; i += 2 * h)
            for (uint j = i; j < i + h; j++) {
                float a = y[j], b = y[j + h];
                y[j] = a + b;
                y[j + h] = a - b;
            }
}

/* Pair code j, `bits` wide (radius in the low bits), of a slot whose packed code words
 * are kw[0], kw[stride], ... (the page's [KW][P] layout: stride P). */
static inline uint skv_pair_code(__global const uint *kw, uint stride, uint j, uint bits)
{
    const uint bit = j * bits, wi = bit / 32, sh = bit % 32;
    uint code = kw[wi * stride] >> sh;
    if (sh + bits > 32)
        code |= kw[(wi + 1) * stride] << (32 - sh);
    return code & ((1u << bits) - 1u);
}

/* ADA tiers (build defines RB, AB): the codebook sizes and the layout of the tier's
 * params table (host/ada.c: pack_params): radius[NR] | radius_bound_sq[NR-1] |
 * bound_cos[NS/2] | bound_sin[NS/2] | centre_cos[NS] | centre_sin[NS] | transform_scale |
 * rho_scale. */
#if defined(RB) && defined(AB)
#define NR (1 << RB)
#define NS (1 << AB)
#define PRM_BOUND_SQ NR
#define PRM_BCOS (PRM_BOUND_SQ + NR - 1)
#define PRM_BSIN (PRM_BCOS + NS / 2)
#define PRM_CCOS (PRM_BSIN + NS / 2)
#define PRM_CSIN (PRM_CCOS + NS)
#define PRM_SCALE (PRM_CSIN + NS)
#endif

/* ADA query tables (cl/layout.h): decode's LANES variant looks rows up LANE_W entries
 * at a time (the build define; 16 for the GROUP schedule's programs, which read tables
 * by slot). */
#ifndef LANE_W
#define LANE_W 16u
#endif
#define ADA_JOINT SKV_SLOT_JOINT(RB, AB)
#define LANE_JOINT SKV_LANE_JOINT(RB, AB, LANE_W)
#define LANE_HALF SKV_LANE_HALF(RB, AB, LANE_W)
#define LANE_USED SKV_LANE_USED(RB, AB, LANE_W)
#define LANE_N SKV_LANE_ROW(RB, AB, LANE_W)

#endif /* SKV_CL_COMMON_H */
