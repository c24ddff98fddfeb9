/* The Llama example's kernels (examples/llama/llama.c): weight dequantisation on the
 * device, the token embedding, RMSNorm, RoPE, SwiGLU and the next-token loss. Matrix
 * products are CLBlast's; attention is skv's. Activations are float32, rows contiguous.
 * Tunables have in-kernel defaults. */

#ifndef WG
#define WG 64 /* work-items per row of the row reductions (a power of two) */
#endif

/* ggml block layouts (gguf.h): Q4_1 = half d, half m, 16 bytes of nibbles (low nibble of
 * byte j is value j, high nibble value j + 16), value d*q + m; Q8_0 = half d, 32 int8,
 * value d*q. Blocks are 20 and 34 bytes, so their halves are 2-byte aligned. */
__kernel void dequant_q4_1(__global const uchar *src, __global float *dst, ulong dst_offset, uint n_blocks)
{
    uint b = get_global_id(0);
    if (b >= n_blocks)
        return;
    __global const uchar *p = src + (size_t)b * 20;
    float d = vload_half(0, (__global const half *)p);
    float m = vload_half(1, (__global const half *)p);
    __global float *o = dst + dst_offset + (size_t)b * 32;
    for (int j = 0; j < 16; j++) {
        uint q = p[4 + j];
        o[j] = d * (float)(q & 15u) + m;
        o[j + 16] = d * (float)(q >> 4) + m;
    }
}

__kernel void dequant_q8_0(__global const uchar *src, __global float *dst, ulong dst_offset, uint n_blocks)
{
    uint b = get_global_id(0);
    if (b >= n_blocks)
        return;
    __global const uchar *p = src + (size_t)b * 34;
    float d = vload_half(0, (__global const half *)p);
    __global const char *q = (__global const char *)(p + 2);
    __global float *o = dst + dst_offset + (size_t)b * 32;
    for (int j = 0; j < 32; j++)
        o[j] = d * (float)q[j];
}

__kernel void dequant_f16(__global const half *src, __global float *dst, ulong dst_offset, uint n)
{
    uint i = get_global_id(0);
    if (i < n)
        dst[dst_offset + i] = vload_half(i, src);
}

/* x[t][:] = emb[ids[t]][:]; ids were checked against the vocabulary on the host. */
__kernel void embed(__global const int *ids, __global const float *emb, __global float *x, uint d)
{
    uint i = get_global_id(0), t = get_global_id(1);
    if (i < d)
        x[(size_t)t * d + i] = emb[(size_t)ids[t] * d + i];
}

/* One work-group per row from row0 on: y = x / sqrt(mean(x^2) + eps) * w. */
__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void rms_norm(__global const float *x,
                                                                        __global const float *w,
                                                                        __global float *y, uint d, float eps,
                                                                        uint row0)
{
    __local float part[WG];
    size_t row = row0 + get_group_id(0);
    uint lid = get_local_id(0);
    __global const float *xr = x + row * d;
    float s = 0.0f;
    for (uint i = lid; i < d; i += WG)
        s += xr[i] * xr[i];
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = WG / 2; h > 0; h /= 2) {
        if (lid < h)
            part[lid] += part[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float scale = rsqrt(part[0] / (float)d + eps);
    for (uint i = lid; i < d; i += WG)
        y[row * d + i] = xr[i] * scale * w[i];
}

/* Splits the fused projection qkv[t] = [q (n_q dims) | k (n_kv) | v (n_kv)] into q, k, v,
 * rotating q and k by RoPE at position pos0 + t. The GGUF's q/k rows are in llama.cpp's
 * order, which rotates adjacent pairs (2i, 2i+1) by pos * theta^(-2i/head_dim): the
 * interleaved layout (skv_rope_desc.interleaved = 1). One work-item per pair. */
__kernel void rope_split(__global const float *qkv, __global float *q, __global float *k, __global float *v,
                         uint n_q, uint n_kv, uint head_dim, int pos0, float log_theta)
{
    uint p = get_global_id(0), t = get_global_id(1);
    uint pairs = (n_q + 2 * n_kv) / 2;
    if (p >= pairs)
        return;
    __global const float *src = qkv + (size_t)t * (n_q + 2 * n_kv) + 2 * p;
    float x0 = src[0], x1 = src[1];
    uint c = 2 * p; /* column in the fused row */
    if (c >= n_q + n_kv) {
        __global float *o = v + (size_t)t * n_kv + (c - n_q - n_kv);
        o[0] = x0;
        o[1] = x1;
        return;
    }
    uint i = (c % head_dim) / 2;
    float freq = exp(-log_theta * (float)(2 * i) / (float)head_dim);
    float angle = (float)(pos0 + (int)t) * freq;
    float cs, sn = sincos(angle, &cs);
    __global float *o = c < n_q ? q + (size_t)t * n_q + c : k + (size_t)t * n_kv + (c - n_q);
    o[0] = x0 * cs - x1 * sn;
    o[1] = x0 * sn + x1 * cs;
}

/* SwiGLU: h = silu(gate) * up, from gu[t] = [gate (ff) | up (ff)]. */
__kernel void silu_mul(__global const float *gu, __global float *h, uint ff)
{
    uint i = get_global_id(0), t = get_global_id(1);
    if (i >= ff)
        return;
    float g = gu[(size_t)t * 2 * ff + i], u = gu[(size_t)t * 2 * ff + ff + i];
    h[(size_t)t * ff + i] = g / (1.0f + exp(-g)) * u;
}

/* One work-group per row of logits: loss[t] = logsumexp(row) - row[target[t]] (NaN when
 * target < 0) and top[t] = the argmax (the lowest index among equal maxima). */
__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void next_token_loss(__global const float *logits,
                                                                               __global const int *target,
                                                                               __global float *loss,
                                                                               __global int *top, uint vocab)
{
    __local float best[WG];
    __local int best_i[WG];
    __local float sum[WG];
    size_t row = get_group_id(0);
    uint lid = get_local_id(0);
    __global const float *r = logits + row * vocab;
    float m = -INFINITY;
    int mi = 0x7fffffff;
    for (uint i = lid; i < vocab; i += WG)
        if (r[i] > m) /* ascending i: the first maximum of this work-item's share */
            m = r[i], mi = (int)i;
    best[lid] = m, best_i[lid] = mi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = WG / 2; h > 0; h /= 2) {
        if (lid < h && (best[lid + h] > best[lid] || (best[lid + h] == best[lid] && best_i[lid + h] < best_i[lid])))
            best[lid] = best[lid + h], best_i[lid] = best_i[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float mx = best[0];
    float s = 0.0f;
    for (uint i = lid; i < vocab; i += WG)
        s += exp(r[i] - mx);
    sum[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = WG / 2; h > 0; h /= 2) {
        if (lid < h)
            sum[lid] += sum[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        int tg = target[row];
        loss[row] = tg >= 0 ? mx + log(sum[0]) - r[tg] : NAN;
        top[row] = best_i[0];
    }
}

/* Decode's matrix-vector products (one token: CLBlast's GEMM is slow for a single row on
 * some devices): y[r] = W[r] . x + beta y[r], W [rows][k] row-major. One work-group per
 * row; each work-item sums a strided share of float4s, then a tree. */
__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void gemv(__global const float *w,
                                                                    __global const float *x, uint x_off,
                                                                    __global float *y, uint y_off, uint k,
                                                                    float beta)
{
    __local float part[WG];
    size_t row = get_group_id(0);
    uint lid = get_local_id(0);
    __global const float *wr = w + row * k;
    __global const float *xv = x + x_off;
    float s = 0.0f;
    uint k4 = k / 4;
    for (uint i = lid; i < k4; i += WG) {
        float4 a = vload4(i, wr), b = vload4(i, xv);
        s += dot(a, b);
    }
    for (uint i = 4 * k4 + lid; i < k; i += WG)
        s += wr[i] * xv[i];
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = WG / 2; h > 0; h /= 2) {
        if (lid < h)
            part[lid] += part[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        y[y_off + row] = part[0] + (beta != 0.0f ? beta * y[y_off + row] : 0.0f);
}

/* gemv for CPUs: one work-item per row, no local memory or barriers (a work-group's rows
 * stream side by side; the dot product is float4-wide). */
__kernel void gemv_rows(__global const float *w, __global const float *x, uint x_off, __global float *y,
                        uint y_off, uint k, float beta, uint rows)
{
    size_t row = get_global_id(0);
    if (row >= rows)
        return;
    __global const float *wr = w + row * k;
    __global const float *xv = x + x_off;
    float4 s4 = (float4)(0.0f);
    uint k4 = k / 4;
    for (uint i = 0; i < k4; i++)
        s4 += vload4(i, wr) * vload4(i, xv);
    float s = s4.x + s4.y + s4.z + s4.w;
    for (uint i = 4 * k4; i < k; i++)
        s += wr[i] * xv[i];
    y[y_off + row] = s + (beta != 0.0f ? beta * y[y_off + row] : 0.0f);
}
