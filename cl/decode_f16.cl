/* Decode attention over F16 pages, split-K (flash-decoding). A work-group takes one
 * (sequence, kv-head) and one chunk of its tokens, and serves all G q-heads of the GQA
 * group, so each page is read once per step. Per tile of TILE tokens:
 *   1. logits: one slot per work-item, keys read 16 bytes at a time from the
 *      [D/8][P][8] layout (neighbouring work-items read neighbouring slots);
 *   2. the tile's max per q-head (segmented tree in local memory), online-softmax
 *      rescale, probabilities;
 *   3. values: work-items over pairs of dims (and PARTS groups of tokens) accumulate
 *      p * v for all G q-heads.
 * The chunk's partial (max, sum, acc[D]) per q-head goes to `partials`; decode_merge.cl
 * combines chunks by log-sum-exp. C reference: src/ref_attention.c.
 * Build defines: D, P, G, TILE (= work-group size, a power of two >= D/2
 * and >= G), SEG_POW2 (the power of two >= TILE / G). */
#define PAGE_BYTES (P * (4 * D + 4))
#define PAIRS (D / 2)
#define PARTS (TILE / PAIRS)
#define SEG (TILE / G)             /* work-items per q-head in the max reduction */
#define PARTIAL_FLOATS (G * (D + 2))

__kernel __attribute__((reqd_work_group_size(TILE, 1, 1)))
void decode_f16(SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,
                __global const uint *lens, uint H, __global const uchar *q, ulong q_offset,
                uint q_dtype, float scale,
                uint tiles_per_chunk, uint n_chunks, __global float *partials)
{
    const uint lid = get_local_id(0);
    const uint chunk = get_group_id(0);
    const uint bh = get_group_id(1); /* sequence * H + kv-head */
    const uint b = bh / H, h = bh % H;

    __local float qs[G * D];   /* the group's queries; reused for the final reduction */
    __local float s[G * TILE]; /* logits, then probabilities */
    __local float red[TILE];
    __local float m_run[G], alpha[G], l_red[G];

    const uint len = lens[bh];
    const uint first_page = indptr[bh];
    const uint tok_begin = chunk * tiles_per_chunk * TILE;
    const uint tok_end = min(len, tok_begin + tiles_per_chunk * TILE);

    for (uint i = lid; i < G * D; i += TILE)
        qs[i] = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, ((size_t)b * H * G + h * G) * D + i);
    if (lid < G)
        m_run[lid] = -INFINITY;

    const uint pair = lid % PAIRS, part = lid / PAIRS;
    float2 acc[G];
    float l_sum[G];
    for (uint g = 0; g < G; g++) {
        acc[g] = (float2)(0.0f);
        l_sum[g] = 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    for (uint t0 = tok_begin; t0 < tok_end; t0 += TILE) {
        /* 1. logits */
        const uint t = t0 + lid;
        if (t < tok_end) {
            __global const half *kp =
                (__global const half *)SKV_PAGE(indices[first_page + t / P], PAGE_BYTES) + (t % P) * 8;
            float dot_g[G];
            for (uint g = 0; g < G; g++)
                dot_g[g] = 0.0f;
            for (uint i = 0; i < D / 8; i++) {
                float8 k8 = vload_half8(0, kp + i * P * 8);
                for (uint g = 0; g < G; g++) {
                    __local const float *qg = qs + g * D + i * 8;
                    dot_g[g] += dot(k8.lo, vload4(0, qg)) + dot(k8.hi, vload4(1, qg));
                }
            }
            for (uint g = 0; g < G; g++)
                s[g * TILE + lid] = dot_g[g] * scale;
        } else {
            for (uint g = 0; g < G; g++)
                s[g * TILE + lid] = -INFINITY;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* 2. tile max per q-head: SEG work-items per head, then a tree */
        const uint rg = lid / SEG, rs = lid % SEG;
        if (rg < G) {
            float m = -INFINITY;
            for (uint i = rs; i < TILE; i += SEG)
                m = fmax(m, s[rg * TILE + i]);
            red[lid] = m;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint w = SEG_POW2 / 2; w > 0; w >>= 1) { /* any SEG: fold [w, 2w) into [0, w) */
            if (rg < G && rs < w && rs + w < SEG)
                red[lid] = fmax(red[lid], red[lid + w]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (lid < G) {
            float m_new = fmax(m_run[lid], red[lid * SEG]);
            alpha[lid] = exp(m_run[lid] - m_new); /* exp(-inf) = 0 on the first tile */
            m_run[lid] = m_new;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint g = 0; g < G; g++)
            s[g * TILE + lid] = exp(s[g * TILE + lid] - m_run[g]);
        barrier(CLK_LOCAL_MEM_FENCE);

        /* 3. values */
        for (uint g = 0; g < G; g++) {
            acc[g] *= alpha[g];
            l_sum[g] *= alpha[g];
        }
        const uint n = min((uint)TILE, tok_end - t0);
        for (uint i = part; i < n; i += PARTS) {
            const uint tt = t0 + i;
            __global const half *vp = (__global const half *)SKV_PAGE(indices[first_page + tt / P], PAGE_BYTES) +
                                      P * D + (tt % P) * D;
            float2 v2 = vload_half2(pair, vp);
            for (uint g = 0; g < G; g++) {
                float p = s[g * TILE + i];
                acc[g] += p * v2;
                l_sum[g] += p;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* Sum the PARTS token groups: part by part into local memory (qs is free now). */
    for (uint p = 0; p < PARTS; p++) {
        if (part == p) {
            for (uint g = 0; g < G; g++) {
                __local float *dst = qs + g * D + 2 * pair;
                dst[0] = (p == 0 ? 0.0f : dst[0]) + acc[g].x;
                dst[1] = (p == 0 ? 0.0f : dst[1]) + acc[g].y;
                if (pair == 0)
                    l_red[g] = (p == 0 ? 0.0f : l_red[g]) + l_sum[g];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    __global float *out = partials + ((size_t)bh * n_chunks + chunk) * PARTIAL_FLOATS;
    if (lid < G) {
        out[lid] = tok_begin < tok_end ? m_run[lid] : -INFINITY;
        out[G + lid] = tok_begin < tok_end ? l_red[lid] : 0.0f;
    }
    for (uint i = lid; i < G * D; i += TILE)
        out[2 * G + i] = tok_begin < tok_end ? qs[i] : 0.0f;
}

/* The CPU variant (PoCL and other CPU runtimes): one work-item per work-group owns a
 * (sequence, kv-head, chunk) and walks it in blocks of TB slots with private vector
 * accumulators, no local memory and no barriers (which a CPU runtime turns into loops
 * over spilled work-item state). The 8 slots of a block share each key line of the
 * [D/8][P][8] layout, so every 64-byte line read is used whole; the softmax max is taken
 * per block, so the accumulators are rescaled at most once per block. Same partials. */
#define TB 8
#define KB (G >= 16 ? 1 : (G >= 8 ? 2 : (G >= 4 ? 4 : 8))) /* slots per key pass */

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void decode_f16_cpu(SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,
                    __global const uint *lens, uint H, __global const uchar *q, ulong q_offset,
                    uint q_dtype, float scale, uint tiles_per_chunk, uint n_chunks,
                    __global float *partials)
{
    const uint chunk = get_group_id(0);
    const uint bh = get_group_id(1);
    const uint b = bh / H, h = bh % H;
    const uint len = lens[bh];
    const uint first_page = indptr[bh];
    const uint tok_begin = chunk * tiles_per_chunk * TILE;
    const uint tok_end = min(len, tok_begin + tiles_per_chunk * TILE);

    float8 q8[G][D / 8], acc[G][D / 8];
    float m[G], l[G];
    SKV_UNROLL for (uint g = 0; g < G; g++) {
        for (uint i = 0; i < D / 8; i++) {
            const size_t base = ((size_t)b * H * G + h * G + g) * D + i * 8;
            float8 x;
            x.s0 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 0);
            x.s1 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 1);
            x.s2 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 2);
            x.s3 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 3);
            x.s4 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 4);
            x.s5 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 5);
            x.s6 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 6);
            x.s7 = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, base + 7);
            q8[g][i] = x * scale; /* fold the softmax scale into the query */
            acc[g][i] = (float8)(0.0f);
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }

    for (uint t0 = tok_begin; t0 < tok_end; t0 += TB) { /* t0 % TB == 0: a block stays in one page */
        __global const half *page = (__global const half *)SKV_PAGE(indices[first_page + t0 / P], PAGE_BYTES);
        const uint slot0 = t0 % P;
        const uint n = min((uint)TB, tok_end - t0);
        /* logits, KB slots at a time: those slots' 16-byte pieces of a key row are one
         * contiguous run, read in order, and KB * G vector accumulators fit in registers */
        float s[TB][G];
        for (uint j0 = 0; j0 < n; j0 += KB) {
            float8 a[KB][G];
            SKV_UNROLL for (uint j = 0; j < KB; j++)
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[j][g] = (float8)(0.0f);
            __global const half *kp = page + (slot0 + j0) * 8;
            for (uint i = 0; i < D / 8; i++) {
                SKV_UNROLL for (uint j = 0; j < KB; j++) { /* slots past the fill are allocated: read, then ignored */
                    float8 k8 = vload_half8(j, kp + i * P * 8);
                    SKV_UNROLL for (uint g = 0; g < G; g++)
                        a[j][g] = fma(k8, q8[g][i], a[j][g]);
                }
            }
            SKV_UNROLL for (uint j = 0; j < KB; j++)
                SKV_UNROLL for (uint g = 0; g < G; g++) {
                    float4 y = a[j][g].lo + a[j][g].hi;
                    s[j0 + j][g] = (y.x + y.y) + (y.z + y.w);
                }
        }
        /* online softmax once per block: at most one rescale of the accumulators */
        float p[TB][G];
        SKV_UNROLL for (uint g = 0; g < G; g++) {
            float mb = s[0][g];
            for (uint j = 1; j < n; j++)
                mb = fmax(mb, s[j][g]);
            if (mb > m[g]) {
                float alpha = exp(m[g] - mb);
                l[g] *= alpha;
                for (uint i = 0; i < D / 8; i++)
                    acc[g][i] *= alpha;
                m[g] = mb;
            }
            for (uint j = 0; j < n; j++) {
                p[j][g] = exp(s[j][g] - m[g]);
                l[g] += p[j][g];
            }
        }
        /* values: each accumulator vector is loaded and stored once per block */
        __global const half *vp = page + P * D + slot0 * D;
        for (uint i = 0; i < D / 8; i++) {
            float8 a[G];
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[g] = acc[g][i];
            for (uint j = 0; j < n; j++) {
                float8 v8 = vload_half8(i, vp + j * D);
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[g] = fma((float8)(p[j][g]), v8, a[g]);
            }
            SKV_UNROLL for (uint g = 0; g < G; g++)
                acc[g][i] = a[g];
        }
    }

    __global float *out = partials + ((size_t)bh * n_chunks + chunk) * PARTIAL_FLOATS;
    SKV_UNROLL for (uint g = 0; g < G; g++) {
        out[g] = m[g];
        out[G + g] = l[g];
        for (uint i = 0; i < D / 8; i++)
            vstore8(acc[g][i], i, out + 2 * G + g * D);
    }
}
