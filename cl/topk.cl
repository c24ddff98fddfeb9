/* Top-k of each row of weights (HeteroCache's head statistics): the indices of the
 * min(k, n) largest of w[row][0, n), in ascending order, ties taken by lower index (the C
 * reference: skv_ref_topk). One work-group of 256 per row: a radix select on the
 * order-preserving integer key of each float (8 bits a pass, MSB first) finds the k-th
 * largest key T; then the row is compacted in index order, taking every key above T and
 * the first (k - #above) equal to it. Reads the row 5 times; no global scratch. */
#define TOPK_WG 256

/* Floats to unsigned integers in the same order (negative below positive, -0 as +0, NaN
 * below everything: the reference ranks NaN last). */
static inline uint order_key(float f)
{
    if (isnan(f))
        return 0u;
    const uint u = as_uint(f == 0.0f ? 0.0f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Exclusive prefix sum of v over the work-group (256 items); *total gets the sum. */
static inline uint scan_exclusive(__local uint *buf, uint lid, uint v, uint *total)
{
    buf[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = 1; off < TOPK_WG; off <<= 1) { /* Hillis-Steele, inclusive */
        const uint add = lid >= off ? buf[lid - off] : 0u;
        barrier(CLK_LOCAL_MEM_FENCE);
        buf[lid] += add;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint incl = buf[lid];
    *total = buf[TOPK_WG - 1];
    barrier(CLK_LOCAL_MEM_FENCE);
    return incl - v;
}

__kernel __attribute__((reqd_work_group_size(TOPK_WG, 1, 1))) void topk_select(
    __global const float *w, uint n, uint w_stride, uint k, __global uint *out, uint out_stride,
    __global uint *counts)
{
    const uint row = get_group_id(0), lid = get_local_id(0);
    __global const float *x = w + (size_t)row * w_stride;
    __local uint hist[TOPK_WG], scan[TOPK_WG];
    __local uint sel[2]; /* the chosen prefix, and how many of the keys equal to it to take */
    const uint want = min(k, n);
    uint prefix = 0u, mask = 0u;
    if (lid == 0)
        sel[1] = want;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[lid] = 0u;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint i = lid; i < n; i += TOPK_WG) {
            const uint key = order_key(x[i]);
            if ((key & mask) == prefix)
                atomic_inc(&hist[(key >> shift) & 255u]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) { /* the bin holding the remaining k-th largest, from the top */
            uint left = sel[1], bin = 255u;
            while (bin > 0u && hist[bin] < left) {
                left -= hist[bin];
                bin--;
            }
            sel[0] = bin;
            sel[1] = left;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        prefix |= sel[0] << shift;
        mask |= 255u << shift;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint take_equal = sel[1]; /* keys == prefix to take, the lowest indices first */
    uint written = 0u, equal_seen = 0u;
    for (uint start = 0; start < n; start += TOPK_WG) {
        const uint i = start + lid;
        const uint key = i < n ? order_key(x[i]) : 0u;
        const uint above = want > 0u && i < n && key > prefix, equal = want > 0u && i < n && key == prefix;
        uint n_equal, n_flag;
        const uint eq_rank = scan_exclusive(scan, lid, equal, &n_equal);
        const uint flag = above || (equal && equal_seen + eq_rank < take_equal);
        const uint at = scan_exclusive(scan, lid, flag, &n_flag);
        if (flag)
            out[(size_t)row * out_stride + written + at] = i;
        written += n_flag;
        equal_seen += n_equal;
    }
    if (lid == 0)
        counts[row] = want;
}

/* The weights of the selected indices: wout[row][i] = w[row][sets[row][i]] for i below
 * counts[row] (HeteroCache ranks pages by the attention they hold). One work-item per
 * (i, row). */
__kernel void topk_gather(__global const float *w, uint w_stride, __global const uint *sets, uint set_stride,
                          __global const uint *counts, __global float *wout)
{
    const uint i = get_global_id(0), row = get_global_id(1);
    if (i < counts[row])
        wout[(size_t)row * set_stride + i] = w[(size_t)row * w_stride + sets[(size_t)row * set_stride + i]];
}
