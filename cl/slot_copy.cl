/* Copies token slots between pages of one tier (RDR's compaction: kept tokens into fresh
 * pages), everything a slot holds: keys, values, position. One work-item per job (src
 * page, src slot, dst page, dst slot). The C reference is a byte copy of the same slot
 * regions (skv_ref_f16_page_read/write, skv_ref_ada_page_write layouts).
 * Build defines: D, P; ADA tiers also KW, VB, VG and -DADA. */
#ifdef ADA
#define VBYTES SKV_ADA_VROW_BYTES(D, VB, VG)
#define PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG)
#else
#define PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)
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
    ((__global ushort *)(dst + SKV_ADA_NORMS_OFFSET(P, KW)))[d] =
        ((__global const ushort *)(src + SKV_ADA_NORMS_OFFSET(P, KW)))[s];
    for (uint b = 0; b < VBYTES; b++)
        dst[SKV_ADA_VALUES_OFFSET(P, KW) + d * VBYTES + b] = src[SKV_ADA_VALUES_OFFSET(P, KW) + s * VBYTES + b];
#else
    __global const ushort *sk = (__global const ushort *)src;
    __global ushort *dk = (__global ushort *)dst;
    for (uint i = 0; i < D; i++) {
        dk[((i / 8) * P + d) * 8 + i % 8] = sk[((i / 8) * P + s) * 8 + i % 8];
        dk[P * D + d * D + i] = sk[P * D + s * D + i];
    }
#endif
    ((__global int *)(dst + SKV_POSITIONS_OFFSET(PAGE_BYTES, P)))[d] =
        ((__global const int *)(src + SKV_POSITIONS_OFFSET(PAGE_BYTES, P)))[s];
}
