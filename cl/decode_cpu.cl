/* Decode's LANES schedule (CPUs: PoCL and other CPU runtimes; decode.h has the program's
 * structure): one work-item per work-group owns a (sequence, kv-head, chunk) and walks it
 * in blocks of TB slots with private vector accumulators, no local memory and no
 * barriers (which a CPU runtime turns into loops over spilled work-item state). The tier
 * gives a block's logits (F16: KB slots per key pass; ADA: a slot per vector lane) and
 * accumulates its values; the softmax max is taken per block, so the accumulators are
 * rescaled at most once per block. Same partials as the GROUP schedule. */

#if TILE % TB || P % TB
#error "chunks and pages hold whole blocks"
#endif

static inline float hmax_tb(floatTB x)
{
#if TB == 16
    const float8 m8 = fmax(x.lo, x.hi);
#elif TB == 8
    const float8 m8 = x;
#endif
#if TB >= 8
    const float4 m4 = fmax(m8.lo, m8.hi);
#else
    const float4 m4 = x;
#endif
    const float2 m2 = fmax(m4.lo, m4.hi);
    return fmax(m2.x, m2.y);
}

static inline float hsum_tb(floatTB x)
{
#if TB == 16
    const float8 s8 = x.lo + x.hi;
#elif TB == 8
    const float8 s8 = x;
#endif
#if TB >= 8
    const float4 s4 = s8.lo + s8.hi;
#else
    const float4 s4 = x;
#endif
    const float2 s2 = s4.lo + s4.hi;
    return s2.x + s2.y;
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1))) void decode_cpu(DECODE_PARAMS)
{
    /* The (sequence, kv-head) varies fastest and each splits its own tokens into the
     * n_chunks chunks: work-groups taken in index order, or in contiguous blocks of it,
     * carry a fair share of every head, however unequal the heads' lengths (a
     * HeteroCache pivot beside its satellites, per-head budgets). tiles_per_chunk, the
     * longest head's, bounds every head's. */
    const uint bh = get_group_id(0);
    const uint chunk = get_group_id(1);
    const uint b = bh / H, h = bh % H;
    const uint len = lens[bh];
    const uint first_page = indptr[bh];
    const uint tpc = min(tiles_per_chunk, ((len + TILE - 1) / TILE + n_chunks - 1) / n_chunks);
    const uint tok_begin = min(len, chunk * tpc * TILE);
    const uint tok_end = min(len, tok_begin + tpc * TILE);

    cpu_query cq;
    query_init(&cq, q, q_offset, q_dtype, H, b, h, scale, tables, bh);
    cpu_acc acc[G];
    float m[G], l[G];
    for (uint g = 0; g < G; g++) {
        acc_zero(&acc[g]);
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }

    for (uint t0 = tok_begin; t0 < tok_end; t0 += TB) { /* t0 % TB == 0: a block stays in one page */
        __global const uchar *page = SKV_PAGE(indices[first_page + t0 / P], PAGE_BYTES);
        const uint slot0 = t0 % P;
        /* the next page's cache lines, a share per block: the F16 key walk runs 16 streams
         * of 1 KB, ADA keys KW streams of 4P bytes, too short for a hardware prefetcher */
        if (t0 - slot0 + P < tok_end) {
            __global const uchar *nx = SKV_PAGE(indices[first_page + t0 / P + 1], PAGE_BYTES);
            const uint lines = (PAGE_BYTES + 63) / 64, share = (lines + P / TB - 1) / (P / TB);
            /* a chunk that starts inside a page also takes the shares of the blocks before it */
            const uint first = t0 == tok_begin ? 0 : slot0 / TB * share, last = min(lines, slot0 / TB * share + share);
            for (uint o = first; o < last; o++)
                SKV_PREFETCH(nx + 64 * o);
        }
        const uint n = min((uint)TB, tok_end - t0);
        floatTB s[G]; /* the block's logits per q-head, slot j in lane j */
        block_logits(page, slot0, n, &cq, params, s);
        /* online softmax once per block (one vector exp per q-head): at most one rescale
         * of the accumulators */
        float p[G][TB];
        SKV_UNROLL for (uint g = 0; g < G; g++) {
            floatTB x = s[g];
            if (n < TB) /* slots past the block's end take no weight */
                x = select(x, (floatTB)(-INFINITY), TB_LANES >= (intTB)((int)n));
            for (uint j = 0; j < n; j++)
                KEEP_LOGIT(bh, g, t0 + j, x[j]);
            const float mb = hmax_tb(x);
            if (mb > m[g]) {
                float alpha = exp(m[g] - mb);
                l[g] *= alpha;
                acc_scale(&acc[g], alpha);
                m[g] = mb;
            }
            const floatTB e = exp(x - (floatTB)(m[g]));
            l[g] += hsum_tb(e);
            vstoreTB(e, 0, p[g]);
        }
        block_values(page, slot0, n, p, acc);
    }

    __global float *out = partials + ((size_t)bh * total_chunks + chunk_offset + chunk) * PARTIAL_FLOATS;
    for (uint g = 0; g < G; g++) {
        out[g] = m[g];
        out[G + g] = l[g];
        acc_store(&acc[g], out + 2 * G + g * D);
    }
}
