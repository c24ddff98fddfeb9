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

#ifdef SKV_VENDOR_NVIDIA
#define SKV_UNROLL _Pragma("unroll")
#else
#define SKV_UNROLL
#endif

#endif /* SKV_CL_COMMON_H */
