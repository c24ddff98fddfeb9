/* Merges the split-K partials of decode attention by log-sum-exp: for q-head (g of
 * kv-head h) of sequence b, out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c.
 * One work-item per (dim, sequence * q-head); ml[2 bq..] receives (M, L) per q-head.
 * Build defines: D, G. */
#define PARTIAL_FLOATS (G * (D + 2))

__kernel void decode_merge(__global const float *partials, uint n_chunks, uint H,
                           __global uchar *out, ulong out_offset, uint out_dtype, __global float *ml)
{
    const uint d = get_global_id(0);
    const uint bq = get_global_id(1); /* sequence * (H * G) + q-head */
    const uint b = bq / (H * G), qh = bq % (H * G);
    const uint h = qh / G, g = qh % G;
    __global const float *p = partials + (size_t)(b * H + h) * n_chunks * PARTIAL_FLOATS;
    float m = -INFINITY;
    for (uint c = 0; c < n_chunks; c++)
        m = fmax(m, p[c * PARTIAL_FLOATS + g]);
    float l = 0.0f, o = 0.0f;
    for (uint c = 0; c < n_chunks; c++) {
        __global const float *pc = p + c * PARTIAL_FLOATS;
        float w = pc[g] == -INFINITY ? 0.0f : exp(pc[g] - m);
        l += w * pc[G + g];
        o += w * pc[2 * G + g * D + d];
    }
    float r = l > 0.0f ? o / l : 0.0f;
    if (d == 0) { /* the softmax's max and sum per q-head (observed attention reads them) */
        ml[2 * bq] = m;
        ml[2 * bq + 1] = l;
    }
    const size_t i = (size_t)bq * D + d;
    if (out_dtype == SKV_DTYPE_F16)
        vstore_half_rte(r, i, (__global half *)(out + out_offset));
    else
        ((__global float *)(out + out_offset))[i] = r;
}
