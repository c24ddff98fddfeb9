/* Observed attention (H2O): adds each token's attention probability, averaged over the
 * GQA group, to acc[r][position] of sequence b for the kv-heads heads[head_off + r] (all
 * of them for the observed scorer, a layer's pivots for HeteroCache's drift checks),
 * from the kept logits and the merged (max, sum) per q-head (decode_merge's ml). One
 * work-item per (token, row). */
/* Build defines: D, P, G, and the tier's (ADA, KW, VB, VG) for its page layout. */
#ifdef ADA
#define PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG)
#else
#define PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)
#endif

__kernel void observe(SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,
                      __global const uint *lens, uint H, uint b, __global const uint *heads, uint head_off,
                      __global const float *logits, uint logit_stride, __global const float *ml, __global float *acc,
                      uint acc_cap)
{
    const uint t = get_global_id(0), r = get_global_id(1), h = heads[head_off + r], bh = b * H + h;
    if (t >= lens[bh])
        return;
    __global const uchar *page = SKV_PAGE(indices[indptr[bh] + t / P], PAGE_BYTES);
    const int position = ((__global const int *)(page + SKV_POSITIONS_OFFSET(PAGE_BYTES, P)))[t % P];
    float p = 0.0f;
    for (uint g = 0; g < G; g++) {
        const uint bq = bh * G + g;
        p += exp(logits[((size_t)bh * G + g) * logit_stride + t] - ml[2 * bq]) / ml[2 * bq + 1];
    }
    if (position >= 0 && (uint)position < acc_cap)
        acc[(size_t)r * acc_cap + position] += p / (float)G;
}
