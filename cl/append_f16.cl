/* Appends tokens to F16 pages: keys into [D/8][P][8] halves, values into [P][D] halves,
 * positions into int32[P] (cl/layout.h; the C reference: src/ref_page.c). One work-item
 * per (dim, token, kv-head). Build defines: D, P; in_dtype is an skv_dtype. */
#define PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)

__kernel void append_f16(SKV_POOL_PARAMS, __global const uint *dest, uint pages_per_head,
                         __global const uint *first_slot, __global const uchar *k, ulong k_offset,
                         __global const uchar *v, ulong v_offset, uint in_dtype,
                         __global const int *positions)
{
    const uint dim = get_global_id(0);
    const uint t = get_global_id(1);
    const uint h = get_global_id(2);
    const uint heads = get_global_size(2);
    const uint s = first_slot[h] + t;
    const uint page_id = dest[h * pages_per_head + s / P];
    const uint slot = s % P;
    __global uchar *page = SKV_PAGE(page_id, PAGE_BYTES);
    const size_t in = ((size_t)t * heads + h) * D + dim;
    float kv = SKV_LOAD_AS_FLOAT(in_dtype, k + k_offset, in);
    float vv = SKV_LOAD_AS_FLOAT(in_dtype, v + v_offset, in);
    __global half *keys = (__global half *)page;
    __global half *values = (__global half *)(page + SKV_F16_VALUES_OFFSET(D, P));
    vstore_half_rte(kv, ((dim / 8) * P + slot) * 8 + dim % 8, keys);
    vstore_half_rte(vv, slot * D + dim, values);
    if (dim == 0)
        ((__global int *)(page + SKV_POSITIONS_OFFSET(PAGE_BYTES, P)))[slot] = positions[t];
}
