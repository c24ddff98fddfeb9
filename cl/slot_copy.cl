/* Copies token slots between pages of one tier (RDR's compaction: kept tokens into fresh
 * pages), everything a slot holds: keys, values, position. One work-item per job (src
 * page, src slot, dst page, dst slot). The C reference is a byte copy of the same slot
 * regions (skv_ref_f16_page_read/write, skv_ref_ada_page_write layouts).
 * Build defines: D, P; ADA tiers also KW, VB, VG and -DADA. */
#ifdef ADA
#define VBYTES (D * VB / 8 + D / VG * 4)
#define PAGE_BYTES (P * (KW * 4 + 2 + VBYTES + 4))
#else
#define PAGE_BYTES (P * (4 * D + 4))
#endif

__kernel void slot_copy(SKV_POOL_PARAMS, __global const uint4 *jobs)
{
    const uint4 j = jobs[get_global_id(0)];
    __global const uchar *src = SKV_PAGE(j.x, PAGE_BYTES);
    __global uchar *dst = SKV_PAGE(j.z, PAGE_BYTES);
    const uint s = j.y, d = j.w;
#ifdef ADA
    for (uint w = 0; w < KW; w++)
        ((__global uint *)dst)[w * P + d] = ((__global const uint *)src)[w * P + s];
    ((__global ushort *)(dst + KW * P * 4))[d] = ((__global const ushort *)(src + KW * P * 4))[s];
    for (uint b = 0; b < VBYTES; b++)
        dst[KW * P * 4 + P * 2 + d * VBYTES + b] = src[KW * P * 4 + P * 2 + s * VBYTES + b];
#else
    __global const ushort *sk = (__global const ushort *)src;
    __global ushort *dk = (__global ushort *)dst;
    for (uint i = 0; i < D; i++) {
        dk[((i / 8) * P + d) * 8 + i % 8] = sk[((i / 8) * P + s) * 8 + i % 8];
        dk[P * D + d * D + i] = sk[P * D + s * D + i];
    }
#endif
    ((__global int *)(dst + PAGE_BYTES - 4 * P))[d] = ((__global const int *)(src + PAGE_BYTES - 4 * P))[s];
}
