/* Decode's GROUP schedule (GPUs; decode.h has the program's structure): a work-group of
 * TILE work-items takes one (sequence, kv-head) and one chunk of its tokens in this tier
 * and serves all G q-heads of the GQA group, so each page is read once per step; a slot
 * per work-item for the logits, the tile's max and probabilities in local memory, each
 * work-item then accumulates a value pair over a share of the tile's slots. */

#define PARTS (TILE / PAIRS)
#define SEG (TILE / G) /* work-items per q-head in the max reduction */

__kernel __attribute__((reqd_work_group_size(TILE, 1, 1))) void decode_gpu(DECODE_PARAMS)
{
    const uint lid = get_local_id(0);
    const uint chunk = get_group_id(0);
    const uint bh = get_group_id(1); /* sequence * H + kv-head */
    const uint b = bh / H, h = bh % H;

    __local float qs[G * D];   /* the group's queries (F16); the final reduction */
    __local float s[G * TILE]; /* logits, then probabilities */
    __local float red[TILE];
    __local float m_run[G], alpha[G], l_red[G];

    const uint len = lens[bh];
    const uint first_page = indptr[bh];
    const uint tok_begin = chunk * tiles_per_chunk * TILE;
    const uint tok_end = min(len, tok_begin + tiles_per_chunk * TILE);
    __global const float *tab = tables + (size_t)bh * TIER_TABLE_FLOATS;
    if (TIER_LOCAL_QUERY)
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
            __global const uchar *page = SKV_PAGE(indices[first_page + t / P], PAGE_BYTES);
            float dot_g[G];
            slot_logits(page, t % P, qs, tab, params, dot_g);
            for (uint g = 0; g < G; g++) {
                s[g * TILE + lid] = dot_g[g] * scale;
                KEEP_LOGIT(bh, g, t, s[g * TILE + lid]);
            }
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
            float2 v2 = load_v2(SKV_PAGE(indices[first_page + tt / P], PAGE_BYTES), tt % P, pair);
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

    __global float *out = partials + ((size_t)bh * total_chunks + chunk_offset + chunk) * PARTIAL_FLOATS;
    if (lid < G) {
        out[lid] = tok_begin < tok_end ? m_run[lid] : -INFINITY;
        out[G + lid] = tok_begin < tok_end ? l_red[lid] : 0.0f;
    }
    for (uint i = lid; i < G * D; i += TILE)
        out[2 * G + i] = tok_begin < tok_end ? qs[i] : 0.0f;
}
